/* selftest: a GEMM and a convolution with fp16 weights on odd shapes (edges
 * in M, N and K), random inputs, outputs poisoned with NaN, compared with a
 * double-precision CPU loop over the same fp16-rounded weights. */
#include "selftest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "program.h"
#include "vk.h"

#define POISON 0x7fc00000u

static float next_rand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f;
}

/* n fp16 values from the generator, and the same values as floats. */
static df_status upload_f16(struct device *dev, size_t n, uint32_t *seed, struct buf **out, float *values) {
    _Float16 *h = malloc(n * sizeof *h);
    if (!h) return df_error(DF_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        h[i] = (_Float16)next_rand(seed);
        values[i] = (float)h[i];
    }
    df_status st = buf_create(dev, n * sizeof *h, out);
    if (st == DF_OK) st = buf_write(*out, 0, h, n * sizeof *h);
    free(h);
    return st;
}

static double rel_err(const float *y, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(y[i])) return INFINITY;
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : INFINITY;
}

/* y[m][n] = a[m][:] . w[n][:] + bias[n] */
enum { MM_M = 133, MM_N = 141, MM_K = 200 };
/* x [2, C, H, W] * w [O, C, 3, 3], padding 1 */
enum { CV_B = 2, CV_C = 37, CV_H = 19, CV_W = 23, CV_O = 45 };

struct data {
    float *a, *w, *bias, *x, *cw, *cb, *y1, *y2;
    double *r1, *r2;
    struct buf *wb, *bb, *cwb, *cbb;
};

static void data_free(struct data *d) {
    free(d->a); free(d->w); free(d->bias); free(d->x); free(d->cw); free(d->cb);
    free(d->y1); free(d->y2); free(d->r1); free(d->r2);
    buf_destroy(d->wb); buf_destroy(d->bb); buf_destroy(d->cwb); buf_destroy(d->cbb);
}

static void reference(struct data *d) {
    for (int m = 0; m < MM_M; m++)
        for (int n = 0; n < MM_N; n++) {
            double s = d->bias[n];
            for (int k = 0; k < MM_K; k++) s += (double)d->a[m * MM_K + k] * d->w[n * MM_K + k];
            d->r1[m * MM_N + n] = s;
        }
    for (int b = 0; b < CV_B; b++)
        for (int o = 0; o < CV_O; o++)
            for (int y = 0; y < CV_H; y++)
                for (int x = 0; x < CV_W; x++) {
                    double s = d->cb[o];
                    for (int c = 0; c < CV_C; c++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int iy = y + ky - 1, ix = x + kx - 1;
                                if (iy < 0 || iy >= CV_H || ix < 0 || ix >= CV_W) continue;
                                s += (double)d->x[((b * CV_C + c) * CV_H + iy) * CV_W + ix] *
                                     d->cw[((o * CV_C + c) * 3 + ky) * 3 + kx];
                            }
                    d->r2[((b * CV_O + o) * CV_H + y) * CV_W + x] = s;
                }
}

static df_status run(struct device *dev, struct data *d) {
    struct cg_graph *g = NULL;
    df_status st = cg_create(&g);
    if (st != DF_OK) return st;
    struct cg_tensor *a = cg_input(g, "selftest.a", 2, (int64_t[]){MM_M, MM_K});
    struct cg_tensor *w = cg_external(g, "selftest.w", d->wb, 0, DT_F16, 2, (int64_t[]){MM_N, MM_K});
    struct cg_tensor *bias = cg_external(g, "selftest.bias", d->bb, 0, DT_F16, 1, (int64_t[]){MM_N});
    struct cg_tensor *y1 = cg_matmul(g, a, w, bias, true, 1.0f);
    struct cg_tensor *x = cg_input(g, "selftest.x", 4, (int64_t[]){CV_B, CV_C, CV_H, CV_W});
    struct cg_tensor *cw = cg_external(g, "selftest.cw", d->cwb, 0, DT_F16, 4, (int64_t[]){CV_O, CV_C, 3, 3});
    struct cg_tensor *cb = cg_external(g, "selftest.cb", d->cbb, 0, DT_F16, 1, (int64_t[]){CV_O});
    struct cg_tensor *y2 = cg_conv2d(g, x, cw, cb, 1, 1, 1, 1, 1);
    cg_output(g, y1);
    cg_output(g, y2);
    struct program *p = NULL;
    if ((st = cg_status(g)) == DF_OK) st = prog_create(dev, g, &(struct prog_options){0}, &p);
    if (st == DF_OK) st = buf_fill(prog_arena(p), 0, buf_size(prog_arena(p)) & ~(uint64_t)3, POISON);
    if (st == DF_OK) st = prog_write(p, a, d->a);
    if (st == DF_OK) st = prog_write(p, x, d->x);
    if (st == DF_OK) st = prog_run(p);
    if (st == DF_OK) st = prog_read(p, y1, d->y1);
    if (st == DF_OK) st = prog_read(p, y2, d->y2);
    prog_destroy(p);
    cg_destroy(g);
    return st;
}

df_status selftest_gemm(struct device *dev, struct selftest_result *out) {
    size_t n_mm = (size_t)MM_M * MM_N, n_cv = (size_t)CV_B * CV_O * CV_H * CV_W;
    struct data d = {
        .a = malloc(sizeof(float) * MM_M * MM_K), .w = malloc(sizeof(float) * MM_N * MM_K),
        .bias = malloc(sizeof(float) * MM_N), .x = malloc(sizeof(float) * CV_B * CV_C * CV_H * CV_W),
        .cw = malloc(sizeof(float) * CV_O * CV_C * 9), .cb = malloc(sizeof(float) * CV_O),
        .y1 = malloc(sizeof(float) * n_mm), .y2 = malloc(sizeof(float) * n_cv),
        .r1 = malloc(sizeof(double) * n_mm), .r2 = malloc(sizeof(double) * n_cv),
    };
    df_status st = DF_OK;
    if (!d.a || !d.w || !d.bias || !d.x || !d.cw || !d.cb || !d.y1 || !d.y2 || !d.r1 || !d.r2)
        st = df_error(DF_ENOMEM, "out of memory");
    uint32_t seed = 0x5eed1234u;
    for (size_t i = 0; st == DF_OK && i < (size_t)MM_M * MM_K; i++) d.a[i] = next_rand(&seed);
    for (size_t i = 0; st == DF_OK && i < (size_t)CV_B * CV_C * CV_H * CV_W; i++) d.x[i] = next_rand(&seed);
    if (st == DF_OK) st = upload_f16(dev, (size_t)MM_N * MM_K, &seed, &d.wb, d.w);
    if (st == DF_OK) st = upload_f16(dev, MM_N, &seed, &d.bb, d.bias);
    if (st == DF_OK) st = upload_f16(dev, (size_t)CV_O * CV_C * 9, &seed, &d.cwb, d.cw);
    if (st == DF_OK) st = upload_f16(dev, CV_O, &seed, &d.cbb, d.cb);
    if (st == DF_OK) st = run(dev, &d);
    if (st == DF_OK) {
        reference(&d);
        out->matmul_err = rel_err(d.y1, d.r1, n_mm);
        out->conv_err = rel_err(d.y2, d.r2, n_cv);
        out->passed = out->matmul_err <= SELFTEST_TOLERANCE && out->conv_err <= SELFTEST_TOLERANCE;
    }
    data_free(&d);
    return st;
}

void selftest_gate(struct device *dev, const char *path, void (*enable)(struct device *, bool), bool *passed) {
    struct selftest_result r = {0};
    enable(dev, true);
    df_status st = selftest_gemm(dev, &r);
    *passed = st == DF_OK && r.passed;
    if (*passed) return;
    enable(dev, false);
    if (st != DF_OK)
        fprintf(stderr, "diffusiond: %s: %s could not run its start-up self-test (%s): disabled\n",
                dev->caps.name, path, df_errmsg());
    else
        fprintf(stderr, "diffusiond: %s: %s failed its start-up self-test (relative error matmul %.2e, "
                "conv2d %.2e, bound %.0e): disabled\n", dev->caps.name, path, r.matmul_err, r.conv_err,
                SELFTEST_TOLERANCE);
}

static void enable_coop(struct device *dev, bool on) { dev->caps.gemm_coop = on; }

void selftest_device(struct device *dev) {
    if (dev->caps.gemm_coop_available && !dev->cfg.no_matrix_units) {
        bool ok;
        selftest_gate(dev, "the cooperative-matrix GEMM", enable_coop, &ok);
    }
}
