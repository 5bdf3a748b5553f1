/* kern_gemm: the shape and variant choice of the matmul and conv2d
 * encoders, exposed so tests can force every path and the benchmark can
 * compare them. Normal code never calls the override: the encoders choose
 * by device and problem shape. Internal to compute/ and tests/. */
#ifndef DF_KERN_GEMM_H
#define DF_KERN_GEMM_H

#include <stdbool.h>

struct dev_caps;

enum gemm_path {
    GEMM_TILED,    /* shared-memory tiles (gemm_core.glsl): GPUs */
    GEMM_SUBGROUP, /* one subgroup per tile, no shared memory (gemm_sg.glsl): CPU drivers */
    GEMM_COOP,     /* matrix units, fp16 operands (gemm_coop.glsl): 128x128x32 tiles in
                      subgroups of 64x32, or 64x64x32 in 32x32; only after the device's
                      start-up self-test */
};

struct gemm_tiles {
    enum gemm_path path;
    int bm, bn, bk;   /* workgroup tile of C and the K slice */
    int tm, tn;       /* register block per invocation */
};

struct gemm_override {
    struct gemm_tiles tiles; /* bm == 0: automatic */
    int storage16;           /* tiled fp16 reads: -1 automatic, 0 packed words, 1 16-bit storage */
    bool broken;             /* matmul through its deliberately wrong variant (self-test tests) */
    int coop_bk;             /* matrix path K slice: 0 automatic (matmul 64, conv2d 32), or 32 / 64
                                for both (benchmark A/B) */
};

/* Applies to every later kern_matmul / kern_conv2d call in the process;
 * NULL restores the automatic choice. Not thread-safe: tests and the
 * benchmark only. */
void kern_gemm_override(const struct gemm_override *o);

/* The tiles the encoders choose for an M x N x K GEMM on this device (the
 * override if one is set), and whether a tile shape is valid here.
 * GEMM_SUBGROUP tiles have bm == tm, bn == subgroup size * tn. */
struct gemm_tiles kern_gemm_tiles(const struct dev_caps *caps, long long m, long long n, long long k);
bool kern_gemm_tiles_valid(const struct dev_caps *caps, const struct gemm_tiles *t);
/* The GEMM_COOP tiles, big or small, K slices of 32 (valid where the
 * device offers the matrix path; bk 64 is valid too). */
struct gemm_tiles kern_gemm_coop_tiles(bool small);
/* A GEMM_SUBGROUP tile of tm rows and tn columns per lane for this device. */
struct gemm_tiles kern_gemm_subgroup_tiles(const struct dev_caps *caps, int tm, int tn);

#endif
