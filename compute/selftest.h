/* selftest: start-up checks of kernel paths that CI's CPU driver cannot run
 * (the cooperative-matrix GEMM). A path is switched on, a small GEMM and
 * convolution on odd shapes run through it against a CPU reference, and a
 * path that fails is switched off again with a log line: never used.
 * Internal to compute/ and tests/. */
#ifndef DF_SELFTEST_H
#define DF_SELFTEST_H

#include <stdbool.h>

#include "device.h"

struct selftest_result {
    double matmul_err, conv_err;  /* relative L2 errors against the reference */
    bool passed;                  /* both within SELFTEST_TOLERANCE, no NaN */
};

/* fp16 operands, fp32 sums: the project's fp16 bound */
#define SELFTEST_TOLERANCE 1e-2

/* Runs the check through whatever path the GEMM encoders choose now. */
df_status selftest_gemm(struct device *dev, struct selftest_result *out);

/* Turns a path on with enable(dev, true), runs selftest_gemm, and turns it
 * off with enable(dev, false) and a line on stderr naming `path` when the
 * check fails or cannot run. *passed says which. */
void selftest_gate(struct device *dev, const char *path, void (*enable)(struct device *, bool), bool *passed);

/* dev_create's hook: gates every optional path the device offers. */
void selftest_device(struct device *dev);

#endif
