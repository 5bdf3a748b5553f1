/* testutil: what every GPU test needs — a validated device, random data,
 * double-precision references and error measures. */
#ifndef DF_TESTUTIL_H
#define DF_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../compute/device.h"
#include "../compute/graph.h"
#include "../compute/program.h"

/* The test device: the first usable Vulkan device, validation layer on.
 * No device is a test failure, never a skip. */
struct device *tu_device(void);
struct device *tu_device_staging(void); /* same, forced staging transfers */
/* Fails the test if the validation layer said anything so far. */
void tu_check_validation(struct device *dev);
void tu_release_devices(void);

/* Uniform random floats in [lo, hi), deterministic per seed. */
float *tu_random(size_t n, uint32_t seed, float lo, float hi);
/* Rounds each value to fp16 and back, for fp16-weight references. */
void tu_round_f16(float *x, size_t n);
/* Packs floats into IEEE halves. */
void tu_to_f16(const float *x, uint16_t *h, size_t n);

/* ||got - ref|| / ||ref||; NaN anywhere in got gives +inf. */
double tu_rel_l2(const float *got, const double *ref, size_t n);
double tu_rel_l2f(const float *got, const float *ref, size_t n);

/* Uploads host data as an external (weight-like) tensor of the graph. */
struct cg_tensor *tu_weight(struct cg_graph *g, struct device *dev, const float *data, enum dtype dt,
                            int ndim, const int64_t *ne, struct buf **owned);

/* Builds the program, poisons the whole arena with NaN, writes the inputs,
 * runs, reads `out` into `result`. Inputs are pairs (tensor, data). */
void tu_run(struct device *dev, struct cg_graph *g, int ninputs, struct cg_tensor **inputs,
            const float **data, struct cg_tensor *out, float *result);

double tu_seconds(void);

#endif
