/* selftest: a GEMM and a convolution with fp16 weights on odd shapes (edges
 * in M, N and K), random inputs, outputs poisoned with NaN, compared with a
 * double-precision CPU loop over the same fp16-rounded weights. */
#include "selftest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "program.h"
#include "vk.h"

#define POISON 0x7fc00000u

static float next_rand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f;
}

/* IEEE half bits of f, rounded to nearest even (no _Float16: not every
 * compiler has it on x86-64), and the value of half bits. */
static uint16_t half_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* 65520 and up round to infinity */
    if (ax < 0x38800000u) {                                  /* below 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &ax, sizeof a);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
    }
    uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13)), rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static float half_value(uint16_t h) {
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 0x400u), (int)e - 25);
    return (h & 0x8000u) ? -v : v;
}

/* n fp16 values from the generator, and the same values as floats. */
static df_status upload_f16(struct device *dev, size_t n, uint32_t *seed, struct buf **out, float *values) {
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) return df_error(DF_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        h[i] = half_bits(next_rand(seed));
        values[i] = half_value(h[i]);
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

/* y[m][n] = a[m][:] . w[n][:] + bias[n]; the large one fills 17 x 17
 * tiles of 128 (the matrix path's big tiles), checked every 33rd row */
enum { MM_M = 133, MM_N = 141, MM_K = 200 };
enum { BIG_M = 2100, BIG_N = 2070, BIG_K = 72, BIG_STEP = 33 };
/* x [2, C, H, W] * w [O, C, 3, 3], padding 1 */
enum { CV_B = 2, CV_C = 37, CV_H = 19, CV_W = 23, CV_O = 45 };

struct data {
    float *a, *w, *bias, *x, *cw, *cb, *y1, *y2, *ba, *bw, *y3;
    double *r1, *r2, *r3;
    struct buf *wb, *bb, *cwb, *cbb, *bwb;
};

static void data_free(struct data *d) {
    free(d->a); free(d->w); free(d->bias); free(d->x); free(d->cw); free(d->cb);
    free(d->y1); free(d->y2); free(d->r1); free(d->r2); free(d->ba); free(d->bw); free(d->y3); free(d->r3);
    buf_destroy(d->wb); buf_destroy(d->bb); buf_destroy(d->cwb); buf_destroy(d->cbb); buf_destroy(d->bwb);
}

static void reference(struct data *d) {
    for (int i = 0, m = 0; m < BIG_M; m += BIG_STEP, i++)
        for (int n = 0; n < BIG_N; n++) {
            double acc = 0;
            for (int k = 0; k < BIG_K; k++) acc += (double)d->ba[(size_t)m * BIG_K + k] * d->bw[(size_t)n * BIG_K + k];
            d->r3[(size_t)i * BIG_N + n] = acc;
        }
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
    struct cg_tensor *ba = cg_input(g, "selftest.big_a", 2, (int64_t[]){BIG_M, BIG_K});
    struct cg_tensor *bw = cg_external(g, "selftest.big_w", d->bwb, 0, DT_F16, 2, (int64_t[]){BIG_N, BIG_K});
    struct cg_tensor *y3 = cg_matmul(g, ba, bw, NULL, true, 1.0f);
    cg_output(g, y1);
    cg_output(g, y2);
    cg_output(g, y3);
    struct program *p = NULL;
    if ((st = cg_status(g)) == DF_OK) st = prog_create(dev, g, &(struct prog_options){0}, &p);
    if (st == DF_OK) st = buf_fill(prog_arena(p), 0, buf_size(prog_arena(p)) & ~(uint64_t)3, POISON);
    if (st == DF_OK) st = prog_write(p, a, d->a);
    if (st == DF_OK) st = prog_write(p, x, d->x);
    if (st == DF_OK) st = prog_write(p, ba, d->ba);
    if (st == DF_OK) st = prog_run(p);
    if (st == DF_OK) st = prog_read(p, y1, d->y1);
    if (st == DF_OK) st = prog_read(p, y2, d->y2);
    if (st == DF_OK) st = prog_read(p, y3, d->y3);
    prog_destroy(p);
    cg_destroy(g);
    return st;
}

df_status selftest_gemm(struct device *dev, struct selftest_result *out) {
    size_t n_mm = (size_t)MM_M * MM_N, n_cv = (size_t)CV_B * CV_O * CV_H * CV_W;
    size_t big_rows = (BIG_M + BIG_STEP - 1) / BIG_STEP, n_big = big_rows * BIG_N;
    struct data d = {
        .a = malloc(sizeof(float) * MM_M * MM_K), .w = malloc(sizeof(float) * MM_N * MM_K),
        .bias = malloc(sizeof(float) * MM_N), .x = malloc(sizeof(float) * CV_B * CV_C * CV_H * CV_W),
        .cw = malloc(sizeof(float) * CV_O * CV_C * 9), .cb = malloc(sizeof(float) * CV_O),
        .y1 = malloc(sizeof(float) * n_mm), .y2 = malloc(sizeof(float) * n_cv),
        .r1 = malloc(sizeof(double) * n_mm), .r2 = malloc(sizeof(double) * n_cv),
        .ba = malloc(sizeof(float) * BIG_M * BIG_K), .bw = malloc(sizeof(float) * BIG_N * BIG_K),
        .y3 = malloc(sizeof(float) * BIG_M * BIG_N), .r3 = malloc(sizeof(double) * n_big),
    };
    df_status st = DF_OK;
    if (!d.a || !d.w || !d.bias || !d.x || !d.cw || !d.cb || !d.y1 || !d.y2 || !d.r1 || !d.r2 || !d.ba || !d.bw ||
        !d.y3 || !d.r3)
        st = df_error(DF_ENOMEM, "out of memory");
    uint32_t seed = 0x5eed1234u;
    for (size_t i = 0; st == DF_OK && i < (size_t)MM_M * MM_K; i++) d.a[i] = next_rand(&seed);
    for (size_t i = 0; st == DF_OK && i < (size_t)CV_B * CV_C * CV_H * CV_W; i++) d.x[i] = next_rand(&seed);
    if (st == DF_OK) st = upload_f16(dev, (size_t)MM_N * MM_K, &seed, &d.wb, d.w);
    if (st == DF_OK) st = upload_f16(dev, MM_N, &seed, &d.bb, d.bias);
    if (st == DF_OK) st = upload_f16(dev, (size_t)CV_O * CV_C * 9, &seed, &d.cwb, d.cw);
    if (st == DF_OK) st = upload_f16(dev, CV_O, &seed, &d.cbb, d.cb);
    for (size_t i = 0; st == DF_OK && i < (size_t)BIG_M * BIG_K; i++) d.ba[i] = next_rand(&seed);
    if (st == DF_OK) st = upload_f16(dev, (size_t)BIG_N * BIG_K, &seed, &d.bwb, d.bw);
    if (st == DF_OK) st = run(dev, &d);
    if (st == DF_OK) {
        reference(&d);
        /* every element of the big output written (no NaN poison left), sampled rows compared */
        double big = INFINITY;
        float *rows = malloc(sizeof(float) * n_big);
        bool written = true;
        for (size_t i = 0; i < (size_t)BIG_M * BIG_N; i++) written = written && !isnan(d.y3[i]);
        for (size_t i = 0; rows && i < big_rows; i++)
            memcpy(rows + i * BIG_N, d.y3 + i * BIG_STEP * BIG_N, sizeof(float) * BIG_N);
        if (rows && written) big = rel_err(rows, d.r3, n_big);
        free(rows);
        *out = (struct selftest_result){{rel_err(d.y1, d.r1, n_mm), rel_err(d.y2, d.r2, n_cv), big},
                                        {"matmul", "conv2d", "matmul 2100x2070"}, false};
        out->passed = out->err[0] <= SELFTEST_TOLERANCE && out->err[1] <= SELFTEST_TOLERANCE &&
                      out->err[2] <= SELFTEST_TOLERANCE;
    }
    data_free(&d);
    return st;
}

/* ---- attention ------------------------------------------------------------ */

struct attn_case { int b, nq, nk, heads, d; };
static const struct attn_case attn_cases[2] = {{2, 130, 130, 3, 40}, {2, 100, 77, 2, 80}};

static void attn_reference(const struct attn_case *c, const float *q, const float *k, const float *v, double *out) {
    int hd = c->heads * c->d;
    double scale = 1.0 / sqrt((double)c->d), *s = malloc(sizeof(double) * (size_t)c->nk);
    if (!s) return;
    for (int b = 0; b < c->b; b++)
        for (int h = 0; h < c->heads; h++)
            for (int i = 0; i < c->nq; i++) {
                const float *qi = q + ((size_t)b * c->nq + i) * hd + h * c->d;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < c->nk; j++) {
                    const float *kj = k + ((size_t)b * c->nk + j) * hd + h * c->d;
                    double dot = 0;
                    for (int e = 0; e < c->d; e++) dot += (double)qi[e] * kj[e];
                    s[j] = dot * scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < c->nk; j++) sum += s[j] = exp(s[j] - mx);
                for (int e = 0; e < c->d; e++) {
                    double o = 0;
                    for (int j = 0; j < c->nk; j++) o += s[j] * v[((size_t)b * c->nk + j) * hd + h * c->d + e];
                    out[((size_t)b * c->nq + i) * hd + h * c->d + e] = o / sum;
                }
            }
    free(s);
}

df_status selftest_attention(struct device *dev, struct selftest_result *out) {
    *out = (struct selftest_result){{INFINITY, INFINITY, 0}, {"self-attention", "cross-attention", NULL}, false};
    df_status st = DF_OK;
    uint32_t seed = 0xa77e5eedu;
    for (int ci = 0; ci < 2 && st == DF_OK; ci++) {
        const struct attn_case *c = &attn_cases[ci];
        size_t hd = (size_t)c->heads * c->d, nq = (size_t)c->b * c->nq * hd, nk = (size_t)c->b * c->nk * hd;
        float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nk);
        float *y = malloc(sizeof(float) * nq);
        double *ref = calloc(nq, sizeof(double));
        struct cg_graph *g = NULL;
        struct program *p = NULL;
        if (!q || !k || !v || !y || !ref) st = df_error(DF_ENOMEM, "out of memory");
        for (size_t i = 0; st == DF_OK && i < nq; i++) q[i] = 2.0f * next_rand(&seed);
        for (size_t i = 0; st == DF_OK && i < nk; i++) k[i] = 2.0f * next_rand(&seed);
        for (size_t i = 0; st == DF_OK && i < nk; i++) v[i] = next_rand(&seed);
        if (st == DF_OK) st = cg_create(&g);
        if (st == DF_OK) {
            struct cg_tensor *tq = cg_input(g, "selftest.q", 3, (int64_t[]){c->b, c->nq, (int64_t)hd});
            struct cg_tensor *tk = cg_input(g, "selftest.k", 3, (int64_t[]){c->b, c->nk, (int64_t)hd});
            struct cg_tensor *tv = cg_input(g, "selftest.v", 3, (int64_t[]){c->b, c->nk, (int64_t)hd});
            struct cg_tensor *ty = cg_attention(g, tq, tk, tv, c->heads, 1.0f / sqrtf((float)c->d), false);
            cg_output(g, ty);
            if ((st = cg_status(g)) == DF_OK) st = prog_create(dev, g, &(struct prog_options){0}, &p);
            if (st == DF_OK) st = buf_fill(prog_arena(p), 0, buf_size(prog_arena(p)) & ~(uint64_t)3, POISON);
            if (st == DF_OK) st = prog_write(p, tq, q);
            if (st == DF_OK) st = prog_write(p, tk, k);
            if (st == DF_OK) st = prog_write(p, tv, v);
            if (st == DF_OK) st = prog_run(p);
            if (st == DF_OK) st = prog_read(p, ty, y);
        }
        if (st == DF_OK) {
            attn_reference(c, q, k, v, ref);
            out->err[ci] = rel_err(y, ref, nq);
        }
        prog_destroy(p);
        cg_destroy(g);
        free(q); free(k); free(v); free(y); free(ref);
    }
    out->passed = st == DF_OK && out->err[0] <= SELFTEST_TOLERANCE && out->err[1] <= SELFTEST_TOLERANCE;
    return st;
}

/* ---- the gate --------------------------------------------------------------- */

void selftest_gate(struct device *dev, const char *path, void (*enable)(struct device *, bool), selftest_fn check,
                   bool *passed) {
    struct selftest_result r = {0};
    enable(dev, true);
    df_status st = check(dev, &r);
    *passed = st == DF_OK && r.passed;
    if (*passed) return;
    enable(dev, false);
    if (st != DF_OK)
        fprintf(stderr, "diffusiond: %s: %s could not run its start-up self-test (%s): disabled\n",
                dev->caps.name, path, df_errmsg());
    else {
        char errs[256] = "";
        for (int i = 0; i < SELFTEST_CASES && r.what[i]; i++) {
            size_t used = strlen(errs);
            snprintf(errs + used, sizeof errs - used, "%s%s %.2e", i ? ", " : "", r.what[i], r.err[i]);
        }
        fprintf(stderr, "diffusiond: %s: %s failed its start-up self-test (relative error %s; bound %.0e): "
                "disabled\n", dev->caps.name, path, errs, SELFTEST_TOLERANCE);
    }
}

static void enable_coop(struct device *dev, bool on) { dev->caps.gemm_coop = on; }

/* The matrix attention (kern_attn.c, ATTN_COOP) is not gated on: on the
 * H200 it ran 2.2x slower than the fp32 tiled loop, so only tests force it. */
void selftest_device(struct device *dev) {
    if (!dev->caps.gemm_coop_available || dev->cfg.no_matrix_units) return;
    bool ok;
    selftest_gate(dev, "the cooperative-matrix GEMM", enable_coop, selftest_gemm, &ok);
}
