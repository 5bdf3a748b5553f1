/* kern_attn: the attention encoder's choices, exposed for tests. */
#ifndef DF_KERN_ATTN_H
#define DF_KERN_ATTN_H

#include <stdbool.h>
#include <stdint.h>

#include "device.h"

enum attn_path {
    ATTN_AUTO = -1,
    ATTN_TILED,     /* GPUs: K/V tiles in shared memory, one query per invocation */
    ATTN_SUBGROUP,  /* CPU drivers, small heads: one subgroup, K/V passed by shuffles */
    ATTN_WIDE,      /* GPUs, wide heads: lanes split the head dim, scores by subgroupAdd */
    ATTN_WIDE_SMEM, /* the same, scores summed in shared memory */
    ATTN_WIDE_SG,   /* CPU drivers: one subgroup, scores as a GEMM by shuffles */
    ATTN_COOP,      /* matrix units (after the start-up self-test), no causal mask, D <= 160 */
};

struct attn_plan {
    enum attn_path path;
    uint32_t wg;            /* invocations per workgroup */
    uint32_t rows;          /* queries per workgroup */
    uint32_t bk;            /* tiled: keys per shared tile */
    uint32_t rq;            /* subgroup: query rows per lane; coop: subgroups */
    uint32_t kg;            /* subgroup, wide: keys per online-softmax step;
                               wide_sg: keys per lane per chunk */
    uint32_t shared_bytes;  /* shared memory per workgroup */
};

/* Head dims the subgroup path serves (its registers and unrolled code make
 * CPU compiles slow beyond). */
#define ATTN_SG_MAX_D 64
/* CPU drivers take the wide_sg path from this head dim on (faster there). */
#define ATTN_WSG_MIN_D 32
/* Head dims the tiled path serves (a q row and an accumulator per
 * invocation); wider heads take the wide paths. */
#define ATTN_TILED_MAX_D 160
/* The widest head dim served (by the wide paths): the VAEs' single head. */
#define ATTN_MAX_D 512

/* The plan for head dim d on a device (honouring a forced path where it
 * can serve d, else the device's choice); false if the head dim cannot be
 * served. Causal masks never take the matrix path. */
bool kern_attn_plan(const struct dev_caps *caps, int d, bool causal, struct attn_plan *out);

/* Forces a path for programs created afterwards (tests); ATTN_AUTO undoes. */
void kern_attn_force_path(enum attn_path path);

#endif
