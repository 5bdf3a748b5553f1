#include "testutil.h"

#include "models/safetensors.h"

#include <dlfcn.h>
#include <link.h>

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

static struct device *shared_dev, *shared_staging;

/* The loader dlcloses the driver and layers at vkDestroyInstance; their
 * leaks then show as "<unknown module>" and tests/lsan.supp cannot name
 * them. Pinning every loaded library keeps their names for LeakSanitizer. */
static int pin_library(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    (void)arg;
    if (info->dlpi_name && *info->dlpi_name) dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
    return 0;
}

static struct device *make(bool staging) {
    struct dev_config cfg = {.index = -1, .validation = true, .force_staging = staging};
    struct device *d = NULL;
    df_status st = dev_create(&cfg, &d);
    if (st != DF_OK) fail_msg("no usable Vulkan device: %s", df_errmsg());
    dl_iterate_phdr(pin_library, NULL);
    return d;
}

struct device *tu_device(void) {
    if (!shared_dev) shared_dev = make(false);
    return shared_dev;
}

struct device *tu_device_staging(void) {
    if (!shared_staging) shared_staging = make(true);
    return shared_staging;
}

void tu_check_validation(struct device *dev) {
    assert_int_equal(dev_validation_messages(dev), 0);
}

void tu_release_devices(void) {
    if (shared_dev) tu_check_validation(shared_dev);
    if (shared_staging) tu_check_validation(shared_staging);
    dev_destroy(shared_dev);
    dev_destroy(shared_staging);
    shared_dev = shared_staging = NULL;
}

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

float *tu_random(size_t n, uint32_t seed, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    uint32_t s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)(xorshift(&s) >> 8) / 16777216.0f;
    return x;
}

void tu_to_f16(const float *x, uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = st_float_to_half(x[i]);
}

void tu_round_f16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = st_half_to_float(st_float_to_half(x[i]));
}

double tu_rel_l2(const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isinf(got[i])) return INFINITY;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double tu_rel_l2f(const float *got, const float *ref, size_t n) {
    double *r = malloc((n ? n : 1) * sizeof *r);
    assert_non_null(r);
    for (size_t i = 0; i < n; i++) r[i] = ref[i];
    double e = tu_rel_l2(got, r, n);
    free(r);
    return e;
}

struct cg_tensor *tu_weight(struct cg_graph *g, struct device *dev, const float *data, enum dtype dt,
                            int ndim, const int64_t *ne, struct buf **owned) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)ne[i];
    size_t bytes = n * (dt == DT_F16 ? 2 : 4);
    assert_int_equal(buf_create(dev, (bytes + 3) & ~(size_t)3, owned), DF_OK);
    if (dt == DT_F16) {
        uint16_t *h = calloc(n + 1, sizeof *h);
        assert_non_null(h);
        tu_to_f16(data, h, n);
        assert_int_equal(buf_write(*owned, 0, h, (bytes + 3) & ~(size_t)3), DF_OK);
        free(h);
    } else {
        assert_int_equal(buf_write(*owned, 0, data, bytes), DF_OK);
    }
    struct cg_tensor *t = cg_external(g, "weight", *owned, 0, dt, ndim, ne);
    assert_non_null(t);
    return t;
}

void tu_run(struct device *dev, struct cg_graph *g, int ninputs, struct cg_tensor **inputs,
            const float **data, struct cg_tensor *out, float *result) {
    assert_non_null(out);
    cg_output(g, out);
    struct program *p = NULL;
    df_status st = prog_create(dev, g, NULL, &p);
    if (st != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    struct buf *arena = prog_arena(p);
    /* NaN poison: an output element a kernel forgets to write shows up */
    assert_int_equal(buf_fill(arena, 0, buf_size(arena) & ~(uint64_t)3, 0x7fc00000u), DF_OK);
    for (int i = 0; i < ninputs; i++) assert_int_equal(prog_write(p, inputs[i], data[i]), DF_OK);
    st = prog_run(p);
    if (st != DF_OK) fail_msg("prog_run: %s", df_errmsg());
    assert_int_equal(prog_read(p, out, result), DF_OK);
    prog_destroy(p);
    tu_check_validation(dev);
}

double tu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
