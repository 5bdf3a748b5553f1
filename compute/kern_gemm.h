/* kern_gemm: tile-shape and variant overrides for the matmul and conv2d
 * encoders, so tests can reach every branch and the benchmark can compare
 * shapes. Normal code never calls this: the encoders choose by device and
 * problem shape. Internal to compute/ and tests/. */
#ifndef DF_KERN_GEMM_H
#define DF_KERN_GEMM_H

#include <stdbool.h>

struct gemm_tiles {
    int bm, bn, bk;   /* workgroup tile of C and the K slice */
    int tm, tn;       /* register block per invocation */
};

struct gemm_override {
    struct gemm_tiles tiles; /* bm == 0: automatic */
    int storage16;           /* fp16 reads: -1 automatic, 0 packed words, 1 16-bit storage */
};

/* Applies to every later kern_matmul / kern_conv2d call in the process;
 * NULL restores the automatic choice. Not thread-safe: tests only. */
void kern_gemm_override(const struct gemm_override *o);

/* The tiles kern_matmul would choose now for an M x N x K problem (after
 * any override), and whether they are valid for the device. */
struct dev_caps;
struct gemm_tiles kern_gemm_tiles(const struct dev_caps *caps, long long m, long long n, long long k);
bool kern_gemm_tiles_valid(const struct dev_caps *caps, const struct gemm_tiles *t);

#endif
