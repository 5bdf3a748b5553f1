/* device: one Vulkan device picked by config, its capabilities, and device
 * memory buffers. This header is free of Vulkan types: models/ and server/
 * see devices and buffers only through it. */
#ifndef DF_DEVICE_H
#define DF_DEVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/status.h"

enum dev_type { DEV_OTHER, DEV_INTEGRATED, DEV_DISCRETE, DEV_VIRTUAL, DEV_CPU };

/* What kernels choose variants by, queried once at start-up. */
struct dev_caps {
    char name[256];
    enum dev_type type;
    uint32_t vendor_id, device_id;
    uint32_t api_version;         /* VK_MAKE_API_VERSION packed */
    char driver[520];             /* driver name and info */
    bool storage_16bit;           /* storageBuffer16BitAccess */
    bool storage_8bit;            /* storageBuffer8BitAccess */
    bool shader_float16;          /* fp16 arithmetic */
    bool vulkan_memory_model;     /* vulkanMemoryModel (the matrix shaders declare it) */
    bool shader_int64;
    bool buffer_device_address;   /* required by diffusiond's kernels */
    uint32_t subgroup_size;
    bool subgroup_arithmetic;     /* subgroupAdd/Max in compute shaders */
    bool subgroup_shuffle;
    uint32_t max_shared_memory;   /* bytes per workgroup */
    uint32_t max_workgroup_invocations;
    uint32_t max_workgroup_count[3];
    uint64_t max_storage_buffer_range;
    uint64_t max_allocation_size;
    uint64_t device_local_bytes;  /* largest device-local heap */
    bool host_visible_device_local; /* a memory type that maps directly */
    bool timestamps;              /* compute queue timestamps usable */
    double timestamp_period_ns;
    /* subgroup size control (VK_EXT_subgroup_size_control / 1.3) */
    bool subgroup_size_control;
    uint32_t min_subgroup_size, max_subgroup_size;
    /* matrix units: VK_NV_cooperative_matrix and the shapes it reports
     * (subgroup scope); the KHR and NV2 extensions are only noted */
    bool coopmat_nv;
    bool coopmat_khr_ext, coopmat2_nv_ext;
    int ncoopmat;
    struct dev_coopmat {
        uint32_t m, n, k;
        uint8_t a, b, c, d;       /* component types: 16 = fp16, 32 = fp32, other = 0 */
    } coopmat[16];
    /* the cooperative-matrix GEMM: offered by the device (16x16x16 fp16
     * operands with fp32 sums, subgroups of 32), and in use (its start-up
     * self-test passed) */
    bool gemm_coop_available;
    bool gemm_coop;
};

struct dev_config {
    int index;                  /* physical device index, -1 = choose */
    const char *name_contains;  /* substring of the device name, or NULL */
    bool validation;            /* enable VK_LAYER_KHRONOS_validation */
    bool force_staging;         /* never map device memory directly */
    bool no_matrix_units;       /* never use cooperative matrices (A/B timing) */
};

struct device;

/* Fills caps for up to `max` devices (only those diffusiond can use are
 * marked usable through *usable, which may be NULL). */
df_status dev_list(struct dev_caps *caps, bool *usable, int max, int *count);

df_status dev_create(const struct dev_config *cfg, struct device **out);
void dev_destroy(struct device *dev);

const struct dev_caps *dev_caps(const struct device *dev);
/* Number of validation-layer warnings and errors seen so far (0 unless
 * validation is on). Tests fail on any. */
uint64_t dev_validation_messages(const struct device *dev);
/* Device memory currently allocated through this device, and its peak. */
uint64_t dev_memory_in_use(const struct device *dev);
uint64_t dev_memory_peak(const struct device *dev);
void dev_memory_reset_peak(struct device *dev);

/* Buffers: device memory that kernels read and write. Written and read by
 * direct mapping when the device has host-visible device-local memory,
 * through a staging copy otherwise (or when force_staging is set). */
struct buf;

df_status buf_create(struct device *dev, uint64_t size, struct buf **out);
void buf_destroy(struct buf *b);
uint64_t buf_size(const struct buf *b);
df_status buf_write(struct buf *b, uint64_t offset, const void *src, uint64_t n);
df_status buf_read(struct buf *b, uint64_t offset, void *dst, uint64_t n);
/* Fills n bytes with a repeated 32-bit pattern (e.g. a NaN to poison). */
df_status buf_fill(struct buf *b, uint64_t offset, uint64_t n, uint32_t pattern);

#endif
