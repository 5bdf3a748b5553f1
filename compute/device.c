/* device: Vulkan instance and device selection, capabilities, buffers with
 * direct-mapped and staged transfers, and the pipeline cache. */
#include "vk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "selftest.h"
#include "shaders.h"

#define STAGING_BYTES (32u << 20)

struct pipeline_entry {
    struct pipeline_entry *next;
    char shader[64];
    uint32_t spec[16];
    int nspec;
    VkShaderModule module;
    VkPipeline pipeline;
};

df_status vk_check(VkResult r, const char *what) {
    switch (r) {
    case VK_SUCCESS: return DF_OK;
    case VK_ERROR_OUT_OF_HOST_MEMORY:
        return df_error(DF_ENOMEM, "%s: out of host memory", what);
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
        return df_error(DF_ENOMEM, "%s: out of device memory", what);
    case VK_ERROR_DEVICE_LOST:
        return df_error(DF_EDEVICE, "%s: device lost", what);
    default:
        return df_error(DF_EDEVICE, "%s failed (VkResult %d)", what, (int)r);
    }
}

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT type,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
    (void)type;
    struct device *dev = user;
    if (severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) {
        __atomic_add_fetch(&dev->validation_messages, 1, __ATOMIC_RELAXED);
        fprintf(stderr, "vulkan validation: %s\n", data->pMessage);
    }
    return VK_FALSE;
}

static bool has_layer(const char *name) {
    uint32_t n = 0;
    vkEnumerateInstanceLayerProperties(&n, NULL);
    VkLayerProperties *props = calloc(n ? n : 1, sizeof *props);
    if (!props) return false;
    vkEnumerateInstanceLayerProperties(&n, props);
    bool found = false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(props[i].layerName, name) == 0) found = true;
    free(props);
    return found;
}

/* The debug messenger is created with the instance so that instance-level
 * problems are counted too; `dev` may be NULL (dev_list). */
static df_status create_instance(bool validation, struct device *dev, VkInstance *out,
                                 VkDebugUtilsMessengerEXT *messenger) {
    const char *layer = "VK_LAYER_KHRONOS_validation";
    if (validation && !has_layer(layer))
        return df_error(DF_EDEVICE, "validation requested but %s is not installed "
                        "(Debian: vulkan-validationlayers)", layer);
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "diffusiond",
        .apiVersion = VK_API_VERSION_1_2,
    };
    const char *exts[] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME};
    VkDebugUtilsMessengerCreateInfoEXT dbg = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_validation,
        .pUserData = dev,
    };
    bool want_dbg = validation && dev;
    VkInstanceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pNext = want_dbg ? &dbg : NULL,
        .pApplicationInfo = &app,
        .enabledLayerCount = validation ? 1 : 0,
        .ppEnabledLayerNames = validation ? &layer : NULL,
        .enabledExtensionCount = want_dbg ? 1 : 0,
        .ppEnabledExtensionNames = want_dbg ? exts : NULL,
    };
    VkResult r = vkCreateInstance(&ci, NULL, out);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER || r == VK_ERROR_INITIALIZATION_FAILED)
        return df_error(DF_EDEVICE, "no Vulkan driver found (install a GPU driver or "
                        "mesa-vulkan-drivers for the CPU fallback)");
    df_status st = vk_check(r, "vkCreateInstance");
    if (st != DF_OK) return st;
    *messenger = VK_NULL_HANDLE;
    if (want_dbg) {
        PFN_vkCreateDebugUtilsMessengerEXT create = (PFN_vkCreateDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(*out, "vkCreateDebugUtilsMessengerEXT");
        if (create) create(*out, &dbg, NULL, messenger);
    }
    return DF_OK;
}

static int compute_queue_family(VkPhysicalDevice phys) {
    uint32_t n = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, NULL);
    VkQueueFamilyProperties props[16];
    if (n > 16) n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, props);
    int any = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (!(props[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
        /* a compute-only family is the GPU's async compute queue: prefer the
         * general one, whose timestamps are always valid */
        if (props[i].queueFlags & VK_QUEUE_GRAPHICS_BIT) return (int)i;
        if (any < 0) any = (int)i;
    }
    return any;
}

static bool has_extension(const VkExtensionProperties *ext, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(ext[i].extensionName, name) == 0) return true;
    return false;
}

static uint8_t component_bits(VkComponentTypeNV t) {
    return t == VK_COMPONENT_TYPE_FLOAT16_NV ? 16 : t == VK_COMPONENT_TYPE_FLOAT32_NV ? 32 : 0;
}

/* Extensions that are only reported, and the cooperative-matrix shapes. */
static void query_extensions(VkInstance inst, VkPhysicalDevice phys, struct dev_caps *c) {
    uint32_t n = 0;
    vkEnumerateDeviceExtensionProperties(phys, NULL, &n, NULL);
    VkExtensionProperties *ext = calloc(n ? n : 1, sizeof *ext);
    if (!ext) return;
    vkEnumerateDeviceExtensionProperties(phys, NULL, &n, ext);
    c->coopmat_khr_ext = has_extension(ext, n, "VK_KHR_cooperative_matrix");
    c->coopmat2_nv_ext = has_extension(ext, n, "VK_NV_cooperative_matrix2");
    bool sgsc = has_extension(ext, n, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME) ||
                c->api_version >= VK_API_VERSION_1_3;
    bool nv = has_extension(ext, n, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME);
    free(ext);
    VkPhysicalDeviceSubgroupSizeControlFeatures fsc = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES};
    VkPhysicalDeviceCooperativeMatrixFeaturesNV fcm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV, .pNext = sgsc ? &fsc : NULL};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                   .pNext = nv ? (void *)&fcm : sgsc ? (void *)&fsc : NULL};
    vkGetPhysicalDeviceFeatures2(phys, &f);
    if (sgsc && fsc.subgroupSizeControl && fsc.computeFullSubgroups) {
        VkPhysicalDeviceSubgroupSizeControlProperties psc = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES};
        VkPhysicalDeviceProperties2 p = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &psc};
        vkGetPhysicalDeviceProperties2(phys, &p);
        c->subgroup_size_control = (psc.requiredSubgroupSizeStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
        c->min_subgroup_size = psc.minSubgroupSize;
        c->max_subgroup_size = psc.maxSubgroupSize;
    }
    if (!nv || !fcm.cooperativeMatrix) return;
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV get = (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)
        vkGetInstanceProcAddr(inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    if (!get) return;
    uint32_t np = 0;
    get(phys, &np, NULL);
    VkCooperativeMatrixPropertiesNV *props = calloc(np ? np : 1, sizeof *props);
    if (!props) return;
    for (uint32_t i = 0; i < np; i++) props[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
    get(phys, &np, props);
    for (uint32_t i = 0; i < np && c->ncoopmat < 16; i++) {
        if (props[i].scope != VK_SCOPE_SUBGROUP_NV) continue;
        c->coopmat[c->ncoopmat++] = (struct dev_coopmat){
            props[i].MSize, props[i].NSize, props[i].KSize, component_bits(props[i].AType),
            component_bits(props[i].BType), component_bits(props[i].CType), component_bits(props[i].DType)};
    }
    free(props);
    c->coopmat_nv = c->ncoopmat > 0;
    for (int i = 0; i < c->ncoopmat; i++) {
        const struct dev_coopmat *m = &c->coopmat[i];
        if (m->m == 16 && m->n == 16 && m->k == 16 && m->a == 16 && m->b == 16 && m->c == 32 && m->d == 32)
            c->gemm_coop_available = c->subgroup_size == 32 && c->shader_float16 && c->storage_16bit &&
                                     c->vulkan_memory_model &&
                                     c->max_shared_memory >= 32768 && c->max_workgroup_invocations >= 256;
    }
}

static void query_caps(VkInstance inst, VkPhysicalDevice phys, struct dev_caps *c, bool *usable) {
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12};
    VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f11};
    VkPhysicalDeviceVulkan12Properties p12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_PROPERTIES};
    VkPhysicalDeviceVulkan11Properties p11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES, .pNext = &p12};
    VkPhysicalDeviceProperties2 p = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &p11};
    VkPhysicalDeviceProperties base;
    vkGetPhysicalDeviceProperties(phys, &base);
    bool v12 = base.apiVersion >= VK_API_VERSION_1_2;
    memset(c, 0, sizeof *c);
    if (v12) {
        vkGetPhysicalDeviceFeatures2(phys, &f);
        vkGetPhysicalDeviceProperties2(phys, &p);
    } else {
        p.properties = base;
    }
    const VkPhysicalDeviceProperties *pp = &p.properties;
    snprintf(c->name, sizeof c->name, "%s", pp->deviceName);
    switch (pp->deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: c->type = DEV_DISCRETE; break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: c->type = DEV_INTEGRATED; break;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: c->type = DEV_VIRTUAL; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: c->type = DEV_CPU; break;
    default: c->type = DEV_OTHER; break;
    }
    c->vendor_id = pp->vendorID;
    c->device_id = pp->deviceID;
    c->api_version = pp->apiVersion;
    if (v12) snprintf(c->driver, sizeof c->driver, "%s %s", p12.driverName, p12.driverInfo);
    c->storage_16bit = v12 && f11.storageBuffer16BitAccess;
    c->storage_8bit = v12 && f12.storageBuffer8BitAccess;
    c->shader_float16 = v12 && f12.shaderFloat16;
    c->vulkan_memory_model = v12 && f12.vulkanMemoryModel;
    c->shader_int64 = f.features.shaderInt64;
    c->buffer_device_address = v12 && f12.bufferDeviceAddress;
    c->subgroup_size = v12 ? p11.subgroupSize : 1;
    bool compute_sg = v12 && (p11.subgroupSupportedStages & VK_SHADER_STAGE_COMPUTE_BIT);
    c->subgroup_arithmetic = compute_sg && (p11.subgroupSupportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
    c->subgroup_shuffle = compute_sg && (p11.subgroupSupportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
    c->max_shared_memory = pp->limits.maxComputeSharedMemorySize;
    c->max_workgroup_invocations = pp->limits.maxComputeWorkGroupInvocations;
    for (int i = 0; i < 3; i++) c->max_workgroup_count[i] = pp->limits.maxComputeWorkGroupCount[i];
    c->max_storage_buffer_range = pp->limits.maxStorageBufferRange;
    c->max_allocation_size = v12 ? p11.maxMemoryAllocationSize : 1ull << 30;
    c->timestamp_period_ns = pp->limits.timestampPeriod;

    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(phys, &mp);
    for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
        if ((mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            mp.memoryHeaps[i].size > c->device_local_bytes)
            c->device_local_bytes = mp.memoryHeaps[i].size;
    VkMemoryPropertyFlags direct = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT |
                                   VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                   VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++)
        if ((mp.memoryTypes[i].propertyFlags & direct) == direct) c->host_visible_device_local = true;

    int qf = compute_queue_family(phys);
    if (qf >= 0) {
        uint32_t n = 0;
        vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, NULL);
        VkQueueFamilyProperties props[16];
        if (n > 16) n = 16;
        vkGetPhysicalDeviceQueueFamilyProperties(phys, &n, props);
        c->timestamps = props[qf].timestampValidBits > 0 && pp->limits.timestampPeriod > 0;
    }
    if (v12) query_extensions(inst, phys, c);
    if (usable) *usable = v12 && c->buffer_device_address && qf >= 0;
}

df_status dev_list(struct dev_caps *caps, bool *usable, int max, int *count) {
    VkInstance inst;
    VkDebugUtilsMessengerEXT m;
    df_status st = create_instance(false, NULL, &inst, &m);
    if (st != DF_OK) return st;
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    VkPhysicalDevice phys[32];
    if (n > 32) n = 32;
    vkEnumeratePhysicalDevices(inst, &n, phys);
    int k = 0;
    for (uint32_t i = 0; i < n && k < max; i++, k++)
        query_caps(inst, phys[i], &caps[k], usable ? &usable[k] : NULL);
    *count = (int)n;
    vkDestroyInstance(inst, NULL);
    return DF_OK;
}

static int type_rank(enum dev_type t) {
    switch (t) {
    case DEV_DISCRETE: return 4;
    case DEV_INTEGRATED: return 3;
    case DEV_VIRTUAL: return 2;
    case DEV_CPU: return 1;
    default: return 0;
    }
}

static df_status pick_device(struct device *d, VkPhysicalDevice *phys, uint32_t n) {
    const struct dev_config *cfg = &d->cfg;
    int best = -1, best_rank = -1;
    for (uint32_t i = 0; i < n; i++) {
        struct dev_caps c;
        bool usable;
        query_caps(d->instance, phys[i], &c, &usable);
        if (cfg->index >= 0 && (int)i != cfg->index) continue;
        if (cfg->name_contains && *cfg->name_contains && !strstr(c.name, cfg->name_contains))
            continue;
        if (!usable) {
            if (cfg->index >= 0 || (cfg->name_contains && *cfg->name_contains))
                return df_error(DF_EDEVICE, "device %u (%s) lacks Vulkan 1.2 with "
                                "bufferDeviceAddress and a compute queue", i, c.name);
            continue;
        }
        if (type_rank(c.type) > best_rank) {
            best = (int)i;
            best_rank = type_rank(c.type);
            d->caps = c;
        }
    }
    if (best < 0) {
        if (cfg->index >= 0)
            return df_error(DF_EDEVICE, "no Vulkan device with index %d (%u present)", cfg->index, n);
        if (cfg->name_contains && *cfg->name_contains)
            return df_error(DF_EDEVICE, "no Vulkan device whose name contains \"%s\"", cfg->name_contains);
        return df_error(DF_EDEVICE, "no usable Vulkan device (%u present; need Vulkan 1.2 "
                        "with bufferDeviceAddress)", n);
    }
    d->phys = phys[best];
    return DF_OK;
}

static uint32_t find_memory(VkPhysicalDevice phys, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) {
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(phys, &mp);
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mp.memoryTypes[i].propertyFlags;
        if ((f & want) == want && !(f & avoid)) return i;
    }
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++)
        if ((mp.memoryTypes[i].propertyFlags & want) == want) return i;
    return UINT32_MAX;
}

static df_status create_logical(struct device *d) {
    int qf = compute_queue_family(d->phys);
    d->queue_family = (uint32_t)qf;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = d->queue_family, .queueCount = 1, .pQueuePriorities = &prio,
    };
    /* enable only what the kernels may use; each is optional but BDA */
    VkPhysicalDeviceVulkan12Features f12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
        .bufferDeviceAddress = VK_TRUE,
        .shaderFloat16 = d->caps.shader_float16,
        .storageBuffer8BitAccess = d->caps.storage_8bit,
        /* the matrix shaders' scopes (GL_KHR_memory_scope_semantics) */
        .vulkanMemoryModel = d->caps.gemm_coop_available,
    };
    VkPhysicalDeviceVulkan11Features f11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12,
        .storageBuffer16BitAccess = d->caps.storage_16bit,
    };
    VkPhysicalDeviceCooperativeMatrixFeaturesNV fcm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV, .pNext = &f11,
        .cooperativeMatrix = VK_TRUE,
    };
    bool coop = d->caps.gemm_coop_available;
    VkPhysicalDeviceFeatures2 f = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = coop ? (void *)&fcm : (void *)&f11,
        .features = {.shaderInt64 = d->caps.shader_int64},
    };
    const char *exts[] = {VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME};
    VkDeviceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &f,
        .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci,
        .enabledExtensionCount = coop ? 1 : 0, .ppEnabledExtensionNames = coop ? exts : NULL,
    };
    df_status st = vk_check(vkCreateDevice(d->phys, &ci, NULL, &d->dev), "vkCreateDevice");
    if (st != DF_OK) return st;
    vkGetDeviceQueue(d->dev, d->queue_family, 0, &d->queue);

    d->mem_device = find_memory(d->phys, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT);
    d->mem_staging = find_memory(d->phys, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                 VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    d->mem_direct = d->cfg.force_staging ? UINT32_MAX :
        find_memory(d->phys, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                    VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, 0);
    if (d->mem_device == UINT32_MAX || d->mem_staging == UINT32_MAX)
        return df_error(DF_EDEVICE, "device %s has no usable memory types", d->caps.name);

    VkCommandPoolCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, .queueFamilyIndex = d->queue_family,
    };
    if ((st = vk_check(vkCreateCommandPool(d->dev, &pci, NULL, &d->xfer_pool), "vkCreateCommandPool"))) return st;
    VkCommandBufferAllocateInfo cai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = d->xfer_pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1,
    };
    if ((st = vk_check(vkAllocateCommandBuffers(d->dev, &cai, &d->xfer_cmd), "vkAllocateCommandBuffers"))) return st;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((st = vk_check(vkCreateFence(d->dev, &fci, NULL, &d->xfer_fence), "vkCreateFence"))) return st;

    VkPipelineCacheCreateInfo cci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    if ((st = vk_check(vkCreatePipelineCache(d->dev, &cci, NULL, &d->pipeline_cache), "vkCreatePipelineCache"))) return st;
    VkPushConstantRange range = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo lci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .pushConstantRangeCount = 1, .pPushConstantRanges = &range,
    };
    return vk_check(vkCreatePipelineLayout(d->dev, &lci, NULL, &d->layout), "vkCreatePipelineLayout");
}

df_status dev_create(const struct dev_config *cfg, struct device **out) {
    struct device *d = calloc(1, sizeof *d);
    if (!d) return df_error(DF_ENOMEM, "out of memory");
    d->cfg = *cfg;
    d->cfg.name_contains = NULL; /* not owned; only used during creation */
    pthread_mutex_init(&d->queue_lock, NULL);
    pthread_mutex_init(&d->xfer_lock, NULL);
    pthread_mutex_init(&d->pipeline_lock, NULL);
    pthread_mutex_init(&d->mem_lock, NULL);
    df_status st = create_instance(cfg->validation, d, &d->instance, &d->messenger);
    if (st != DF_OK) {
        d->instance = VK_NULL_HANDLE;
        dev_destroy(d);
        return st;
    }
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(d->instance, &n, NULL);
    VkPhysicalDevice phys[32];
    if (n > 32) n = 32;
    vkEnumeratePhysicalDevices(d->instance, &n, phys);
    d->cfg.name_contains = cfg->name_contains;
    st = pick_device(d, phys, n);
    d->cfg.name_contains = NULL;
    if (st == DF_OK) st = create_logical(d);
    if (st != DF_OK) {
        dev_destroy(d);
        return st;
    }
    selftest_device(d);
    *out = d;
    return DF_OK;
}

void dev_destroy(struct device *d) {
    if (!d) return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev);
        buf_destroy(d->staging);
        for (struct pipeline_entry *e = d->pipelines, *next; e; e = next) {
            next = e->next;
            vkDestroyPipeline(d->dev, e->pipeline, NULL);
            vkDestroyShaderModule(d->dev, e->module, NULL);
            free(e);
        }
        vkDestroyPipelineLayout(d->dev, d->layout, NULL);
        vkDestroyPipelineCache(d->dev, d->pipeline_cache, NULL);
        vkDestroyFence(d->dev, d->xfer_fence, NULL);
        vkDestroyCommandPool(d->dev, d->xfer_pool, NULL);
        vkDestroyDevice(d->dev, NULL);
    }
    if (d->instance) {
        if (d->messenger) {
            PFN_vkDestroyDebugUtilsMessengerEXT destroy = (PFN_vkDestroyDebugUtilsMessengerEXT)
                vkGetInstanceProcAddr(d->instance, "vkDestroyDebugUtilsMessengerEXT");
            if (destroy) destroy(d->instance, d->messenger, NULL);
        }
        vkDestroyInstance(d->instance, NULL);
    }
    pthread_mutex_destroy(&d->queue_lock);
    pthread_mutex_destroy(&d->xfer_lock);
    pthread_mutex_destroy(&d->pipeline_lock);
    pthread_mutex_destroy(&d->mem_lock);
    free(d);
}

const struct dev_caps *dev_caps(const struct device *d) { return &d->caps; }
uint64_t dev_validation_messages(const struct device *d) {
    return __atomic_load_n(&d->validation_messages, __ATOMIC_RELAXED);
}
uint64_t dev_memory_in_use(const struct device *d) { return d->mem_in_use; }
uint64_t dev_memory_peak(const struct device *d) { return d->mem_peak; }
void dev_memory_reset_peak(struct device *d) {
    pthread_mutex_lock(&d->mem_lock);
    d->mem_peak = d->mem_in_use;
    pthread_mutex_unlock(&d->mem_lock);
}

/* ---- buffers ------------------------------------------------------------ */

static df_status buffer_alloc(struct device *d, uint64_t size, uint32_t mem_type, bool staging, struct buf **out) {
    if (size == 0) size = 4;
    if (size > d->caps.max_allocation_size)
        return df_error(DF_ENOMEM, "buffer of %llu bytes exceeds the device's %llu-byte allocation limit",
                        (unsigned long long)size, (unsigned long long)d->caps.max_allocation_size);
    struct buf *b = calloc(1, sizeof *b);
    if (!b) return df_error(DF_ENOMEM, "out of memory");
    b->dev = d;
    b->size = size;
    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
        .usage = staging ? VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT
                         : VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                           VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    df_status st = vk_check(vkCreateBuffer(d->dev, &bci, NULL, &b->buffer), "vkCreateBuffer");
    if (st != DF_OK) { free(b); return st; }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buffer, &req);
    if (!(req.memoryTypeBits & (1u << mem_type))) {
        vkDestroyBuffer(d->dev, b->buffer, NULL);
        free(b);
        return df_error(DF_EDEVICE, "buffer cannot live in memory type %u", mem_type);
    }
    VkMemoryAllocateFlagsInfo flags = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
        .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT,
    };
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .pNext = staging ? NULL : &flags,
        .allocationSize = req.size, .memoryTypeIndex = mem_type,
    };
    st = vk_check(vkAllocateMemory(d->dev, &mai, NULL, &b->memory), "vkAllocateMemory");
    if (st != DF_OK) {
        vkDestroyBuffer(d->dev, b->buffer, NULL);
        free(b);
        return df_error(st, "allocating %llu bytes of device memory: %s",
                        (unsigned long long)size, df_errmsg());
    }
    vkBindBufferMemory(d->dev, b->buffer, b->memory, 0);
    if (!staging) {
        VkBufferDeviceAddressInfo ai = {.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO, .buffer = b->buffer};
        b->address = vkGetBufferDeviceAddress(d->dev, &ai);
    }
    if (staging || mem_type == d->mem_direct) {
        st = vk_check(vkMapMemory(d->dev, b->memory, 0, VK_WHOLE_SIZE, 0, &b->mapped), "vkMapMemory");
        if (st != DF_OK) { buf_destroy(b); return st; }
    }
    pthread_mutex_lock(&d->mem_lock);
    d->mem_in_use += req.size;
    if (d->mem_in_use > d->mem_peak) d->mem_peak = d->mem_in_use;
    pthread_mutex_unlock(&d->mem_lock);
    *out = b;
    return DF_OK;
}

df_status buf_create(struct device *d, uint64_t size, struct buf **out) {
    uint32_t type = d->mem_direct != UINT32_MAX ? d->mem_direct : d->mem_device;
    return buffer_alloc(d, size, type, false, out);
}

void buf_destroy(struct buf *b) {
    if (!b) return;
    struct device *d = b->dev;
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buffer, &req);
    if (b->mapped) vkUnmapMemory(d->dev, b->memory);
    vkDestroyBuffer(d->dev, b->buffer, NULL);
    vkFreeMemory(d->dev, b->memory, NULL);
    pthread_mutex_lock(&d->mem_lock);
    d->mem_in_use -= req.size;
    pthread_mutex_unlock(&d->mem_lock);
    free(b);
}

uint64_t buf_size(const struct buf *b) { return b->size; }

static df_status check_range(const struct buf *b, uint64_t offset, uint64_t n) {
    if (offset > b->size || n > b->size - offset)
        return df_error(DF_EINVAL, "range [%llu, +%llu) outside a %llu-byte buffer",
                        (unsigned long long)offset, (unsigned long long)n, (unsigned long long)b->size);
    return DF_OK;
}

/* Records `record` into the transfer command buffer and waits for it. The
 * trailing barrier makes transfer writes visible to later compute work and
 * to the host, whichever comes next in submission order. */
static df_status xfer_submit(struct device *d, void (*record)(VkCommandBuffer, void *), void *arg) {
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    vkResetCommandBuffer(d->xfer_cmd, 0);
    vkBeginCommandBuffer(d->xfer_cmd, &bi);
    VkMemoryBarrier before = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_HOST_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
    };
    vkCmdPipelineBarrier(d->xfer_cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                         VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &before, 0, NULL, 0, NULL);
    record(d->xfer_cmd, arg);
    VkMemoryBarrier after = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT,
    };
    vkCmdPipelineBarrier(d->xfer_cmd, VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                         0, 1, &after, 0, NULL, 0, NULL);
    vkEndCommandBuffer(d->xfer_cmd);
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &d->xfer_cmd,
    };
    vkResetFences(d->dev, 1, &d->xfer_fence);
    pthread_mutex_lock(&d->queue_lock);
    VkResult r = vkQueueSubmit(d->queue, 1, &si, d->xfer_fence);
    pthread_mutex_unlock(&d->queue_lock);
    df_status st = vk_check(r, "vkQueueSubmit (transfer)");
    if (st != DF_OK) return st;
    return vk_check(vkWaitForFences(d->dev, 1, &d->xfer_fence, VK_TRUE, UINT64_MAX), "vkWaitForFences (transfer)");
}

struct copy_args { VkBuffer src, dst; VkBufferCopy region; };
static void record_copy(VkCommandBuffer cb, void *arg) {
    struct copy_args *a = arg;
    vkCmdCopyBuffer(cb, a->src, a->dst, 1, &a->region);
}

struct fill_args { VkBuffer dst; uint64_t offset, n; uint32_t pattern; };
static void record_fill(VkCommandBuffer cb, void *arg) {
    struct fill_args *a = arg;
    vkCmdFillBuffer(cb, a->dst, a->offset, a->n, a->pattern);
}

static df_status staging_get(struct device *d) {
    if (d->staging) return DF_OK;
    return buffer_alloc(d, STAGING_BYTES, d->mem_staging, true, &d->staging);
}

df_status buf_write(struct buf *b, uint64_t offset, const void *src, uint64_t n) {
    df_status st = check_range(b, offset, n);
    if (st != DF_OK || n == 0) return st;
    if (b->mapped) {
        memcpy((char *)b->mapped + offset, src, n);
        return DF_OK;
    }
    struct device *d = b->dev;
    pthread_mutex_lock(&d->xfer_lock);
    st = staging_get(d);
    for (uint64_t done = 0; st == DF_OK && done < n;) {
        uint64_t chunk = n - done < STAGING_BYTES ? n - done : STAGING_BYTES;
        memcpy(d->staging->mapped, (const char *)src + done, chunk);
        struct copy_args a = {d->staging->buffer, b->buffer, {0, offset + done, chunk}};
        st = xfer_submit(d, record_copy, &a);
        done += chunk;
    }
    pthread_mutex_unlock(&d->xfer_lock);
    return st;
}

df_status buf_read(struct buf *b, uint64_t offset, void *dst, uint64_t n) {
    df_status st = check_range(b, offset, n);
    if (st != DF_OK || n == 0) return st;
    if (b->mapped) {
        memcpy(dst, (const char *)b->mapped + offset, n);
        return DF_OK;
    }
    struct device *d = b->dev;
    pthread_mutex_lock(&d->xfer_lock);
    st = staging_get(d);
    for (uint64_t done = 0; st == DF_OK && done < n;) {
        uint64_t chunk = n - done < STAGING_BYTES ? n - done : STAGING_BYTES;
        struct copy_args a = {b->buffer, d->staging->buffer, {offset + done, 0, chunk}};
        st = xfer_submit(d, record_copy, &a);
        if (st == DF_OK) memcpy((char *)dst + done, d->staging->mapped, chunk);
        done += chunk;
    }
    pthread_mutex_unlock(&d->xfer_lock);
    return st;
}

df_status buf_fill(struct buf *b, uint64_t offset, uint64_t n, uint32_t pattern) {
    df_status st = check_range(b, offset, n);
    if (st != DF_OK || n == 0) return st;
    if (offset % 4 || n % 4)
        return df_error(DF_EINVAL, "buf_fill needs 4-byte aligned offset and size");
    struct device *d = b->dev;
    pthread_mutex_lock(&d->xfer_lock);
    struct fill_args a = {b->buffer, offset, n, pattern};
    st = xfer_submit(d, record_fill, &a);
    pthread_mutex_unlock(&d->xfer_lock);
    return st;
}

/* ---- pipelines ---------------------------------------------------------- */

df_status vk_pipeline(struct device *d, const char *shader, const uint32_t *spec, int nspec, VkPipeline *out) {
    if (nspec > 16 || strlen(shader) >= 64)
        return df_error(DF_EINVAL, "pipeline %s: too many specialization constants", shader);
    pthread_mutex_lock(&d->pipeline_lock);
    for (struct pipeline_entry *e = d->pipelines; e; e = e->next) {
        if (e->nspec == nspec && strcmp(e->shader, shader) == 0 &&
            (nspec == 0 || memcmp(e->spec, spec, (size_t)nspec * sizeof *spec) == 0)) {
            *out = e->pipeline;
            pthread_mutex_unlock(&d->pipeline_lock);
            return DF_OK;
        }
    }
    df_status st = DF_OK;
    const struct shader_blob *blob = shader_find(shader);
    struct pipeline_entry *e = calloc(1, sizeof *e);
    if (!blob) st = df_error(DF_EDEVICE, "shader %s is not embedded in this binary", shader);
    else if (!e) st = df_error(DF_ENOMEM, "out of memory");
    if (st != DF_OK) goto fail;
    snprintf(e->shader, sizeof e->shader, "%s", shader);
    if (nspec) memcpy(e->spec, spec, (size_t)nspec * sizeof *spec);
    e->nspec = nspec;
    VkShaderModuleCreateInfo smi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = blob->size, .pCode = blob->code,
    };
    if ((st = vk_check(vkCreateShaderModule(d->dev, &smi, NULL, &e->module), shader))) goto fail;
    VkSpecializationMapEntry map[16];
    for (int i = 0; i < nspec; i++)
        map[i] = (VkSpecializationMapEntry){.constantID = (uint32_t)i, .offset = (uint32_t)(i * 4), .size = 4};
    VkSpecializationInfo si = {
        .mapEntryCount = (uint32_t)nspec, .pMapEntries = map,
        .dataSize = (size_t)nspec * 4, .pData = e->spec,
    };
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = e->module, .pName = "main",
            .pSpecializationInfo = nspec ? &si : NULL,
        },
        .layout = d->layout,
    };
    st = vk_check(vkCreateComputePipelines(d->dev, d->pipeline_cache, 1, &ci, NULL, &e->pipeline), shader);
    if (st != DF_OK) {
        vkDestroyShaderModule(d->dev, e->module, NULL);
        goto fail;
    }
    e->next = d->pipelines;
    d->pipelines = e;
    *out = e->pipeline;
    pthread_mutex_unlock(&d->pipeline_lock);
    return DF_OK;
fail:
    free(e);
    pthread_mutex_unlock(&d->pipeline_lock);
    return st;
}
