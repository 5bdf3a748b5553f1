/* vk: Vulkan objects shared by the compute/ modules (device.c, program.c).
 * Internal to compute/: nothing outside compute/ includes this header. */
#ifndef DF_VK_H
#define DF_VK_H

#include <pthread.h>
#include <vulkan/vulkan.h>

#include "device.h"

struct device {
    struct dev_caps caps;
    struct dev_config cfg;
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t queue_family;
    pthread_mutex_t queue_lock;   /* vkQueueSubmit needs external sync */
    uint32_t mem_direct;          /* host-visible device-local type, or UINT32_MAX */
    uint32_t mem_device;          /* device-local type */
    uint32_t mem_staging;         /* host-visible coherent type */
    /* transfer commands (staging copies, fills), guarded by xfer_lock */
    pthread_mutex_t xfer_lock;
    VkCommandPool xfer_pool;
    VkCommandBuffer xfer_cmd;
    VkFence xfer_fence;
    struct buf *staging;          /* lazily made staging buffer */
    VkPipelineCache pipeline_cache;
    struct pipeline_entry *pipelines; /* cache of created pipelines */
    pthread_mutex_t pipeline_lock;
    VkPipelineLayout layout;      /* one layout: push constants only */
    uint64_t validation_messages;
    uint64_t mem_in_use, mem_peak;
    pthread_mutex_t mem_lock;
};

struct buf {
    struct device *dev;
    VkBuffer buffer;
    VkDeviceMemory memory;
    uint64_t size;
    VkDeviceAddress address;
    void *mapped;                 /* non-NULL when written directly */
};

/* Largest push-constant block any kernel uses (the guaranteed minimum). */
#define VK_PUSH_BYTES 128

/* Pipeline for (shader, specialization constants), created once and cached
 * on the device. The returned handle lives as long as the device. */
df_status vk_pipeline(struct device *dev, const char *shader,
                      const uint32_t *spec, int nspec, VkPipeline *out);

df_status vk_check(VkResult r, const char *what);

#endif
