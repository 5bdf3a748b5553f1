/* selftest: start-up checks of kernel paths that CI's CPU driver cannot run
 * (the cooperative-matrix GEMM and attention). A path is switched on, small
 * problems on odd shapes run through it against a CPU reference, and a
 * path that fails is switched off again with a log line: never used.
 * Internal to compute/ and tests/. */
#ifndef DF_SELFTEST_H
#define DF_SELFTEST_H

#include <stdbool.h>

#include "device.h"

#define SELFTEST_CASES 3
struct selftest_result {
    double err[SELFTEST_CASES];      /* relative L2 errors of the cases against the reference */
    const char *what[SELFTEST_CASES]; /* NULL past the last case */
    bool passed;                     /* all within SELFTEST_TOLERANCE, no NaN */
};

/* fp16 operands, fp32 sums: the project's fp16 bound */
#define SELFTEST_TOLERANCE 1e-2

typedef df_status (*selftest_fn)(struct device *dev, struct selftest_result *out);

/* Two matmuls (one big enough for the matrix path's big tiles, checked on
 * sampled rows) and a conv2d through whatever path the GEMM encoders
 * choose now. */
df_status selftest_gemm(struct device *dev, struct selftest_result *out);
/* A self-attention (head dim 40, padded on the matrix path) and a
 * cross-attention (77 keys, head dim 80) through the attention encoder's
 * choice now. */
df_status selftest_attention(struct device *dev, struct selftest_result *out);

/* Turns a path on with enable(dev, true), runs check, and turns it off with
 * enable(dev, false) and a line on stderr naming `path` when the check
 * fails or cannot run. *passed says which. */
void selftest_gate(struct device *dev, const char *path, void (*enable)(struct device *, bool), selftest_fn check,
                   bool *passed);

/* dev_create's hook: gates every optional path the device offers. */
void selftest_device(struct device *dev);

#endif
