/* matmul / linear and conv2d (implicit GEMM) against double-precision C
 * references: fp32 and fp16 weights, every layout flag, odd shapes, shapes
 * spanning several tiles, both GEMM paths (subgroup, tiled), the default
 * tile shapes of each and some unusual ones, and every fp16 read path
 * (forced through kern_gemm_override). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../compute/kern_gemm.h"
#include "../compute/selftest.h"
#include "testutil.h"

#define TOL_F32 1e-5
#define TOL_F16 2e-3

enum bias_kind { NO_BIAS, BIAS_F32, BIAS_F16 };

struct mm_case {
    int batch, m, k, n;
    bool trans_b, bcast_b, a3d;
    enum dtype wdt;
    enum bias_kind bias;
    float alpha;
};

static void report(const char *what, double err, double tol) {
    print_message("  %-58s rel L2 %.3g\n", what, err);
    if (!(err <= tol)) fail_msg("%s: relative L2 error %g > %g", what, err, tol);
}

/* Weights as the GPU sees them: fp16-rounded when stored as fp16. */
static float *weights(size_t n, uint32_t seed, float scale, enum dtype dt) {
    float *w = tu_random(n, seed, -scale, scale);
    if (dt == DT_F16) tu_round_f16(w, n);
    return w;
}

static void run_matmul(const struct mm_case *c, const char *label) {
    struct device *d = tu_device();
    int64_t wn = c->bcast_b ? 1 : c->batch;
    size_t na = (size_t)c->batch * c->m * c->k, nw = (size_t)wn * c->n * c->k, ny = (size_t)c->batch * c->m * c->n;
    float *a = tu_random(na, 1 + c->m, -1, 1);
    float *w = weights(nw, 2 + c->n, 1.0f / sqrtf((float)c->k), c->wdt);
    enum dtype bdt = c->bias == BIAS_F16 ? DT_F16 : DT_F32;
    float *b = c->bias ? weights((size_t)c->n, 3 + c->k, 0.5f, bdt) : NULL;

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *ta = c->a3d ? cg_input(g, "a", 3, (int64_t[]){c->batch, c->m, c->k})
                                  : cg_input(g, "a", 2, (int64_t[]){c->m, c->k});
    int64_t wshape[3] = {wn, c->trans_b ? c->n : c->k, c->trans_b ? c->k : c->n};
    struct buf *wbuf = NULL, *bbuf = NULL;
    struct cg_tensor *tw = c->bcast_b ? tu_weight(g, d, w, c->wdt, 2, wshape + 1, &wbuf)
                                      : tu_weight(g, d, w, c->wdt, 3, wshape, &wbuf);
    struct cg_tensor *tb = b ? tu_weight(g, d, b, bdt, 1, (int64_t[]){c->n}, &bbuf) : NULL;
    struct cg_tensor *ty = cg_matmul(g, ta, tw, tb, c->trans_b, c->alpha);
    float *y = malloc(ny * sizeof *y);
    const float *in[] = {a};
    tu_run(d, g, 1, &ta, in, ty, y);

    double *ref = malloc(ny * sizeof *ref);
    for (int bi = 0; bi < c->batch; bi++) {
        const float *wb = w + (c->bcast_b ? 0 : (size_t)bi * c->n * c->k);
        for (int i = 0; i < c->m; i++)
            for (int j = 0; j < c->n; j++) {
                double s = 0;
                for (int kk = 0; kk < c->k; kk++) {
                    double wv = c->trans_b ? wb[(size_t)j * c->k + kk] : wb[(size_t)kk * c->n + j];
                    s += (double)a[((size_t)bi * c->m + i) * c->k + kk] * wv;
                }
                ref[((size_t)bi * c->m + i) * c->n + j] = c->alpha * s + (b ? b[j] : 0.0);
            }
    }
    char what[160];
    snprintf(what, sizeof what, "%s b%d %dx%dx%d %s%s%s%s a=%g", label, c->batch, c->m, c->k, c->n,
             c->wdt == DT_F16 ? "w16" : "w32", c->trans_b ? " T" : " N", c->bcast_b ? " bcast" : "",
             c->bias == BIAS_F16 ? " bias16" : c->bias ? " bias32" : "", c->alpha);
    report(what, tu_rel_l2(y, ref, ny), c->wdt == DT_F16 ? TOL_F16 : TOL_F32);
    free(a), free(w), free(b), free(y), free(ref);
    buf_destroy(wbuf);
    buf_destroy(bbuf);
    cg_destroy(g);
}

/* The layouts and flags on odd shapes, for both weight types: every shape
 * when full, else the first and last (each new shape class costs a JIT of
 * a second or more on a CPU driver, so the matrix stays small). */
static void matmul_matrix(const char *label, bool full) {
    static const int shapes[][3] = {{7, 13, 33}, {1, 5, 3}, {130, 70, 150}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s += full ? 1 : 2)
        for (int wdt = 0; wdt < 2; wdt++)
            for (int tb = 0; tb < 2; tb++) {
                if (s == 1 && wdt != tb) continue; /* the 1x5x3 corner: two runs */
                struct mm_case c = {1, shapes[s][0], shapes[s][1], shapes[s][2], tb, true, false,
                                    (enum dtype)wdt, (enum bias_kind)((s + tb + wdt) % 3), 1.0f};
                run_matmul(&c, label);
            }
}

/* The automatic choice (the subgroup path on a CPU device), then each
 * path forced: tiled with the GPU default tiles, subgroup with small tiles
 * (several row groups and columns per lane, quick to JIT; the production
 * shapes run in the forced-tile tests). */
static void for_each_path(void (*fn)(const char *, bool)) {
    const struct dev_caps *caps = dev_caps(tu_device());
    fn("auto", true);
    kern_gemm_override(&(struct gemm_override){.tiles = {GEMM_TILED, 64, 64, 16, 8, 8}, .storage16 = -1});
    fn("tiled", false);
    struct gemm_tiles sg = kern_gemm_subgroup_tiles(caps, 16, 2);
    if (kern_gemm_tiles_valid(caps, &sg)) {
        kern_gemm_override(&(struct gemm_override){.tiles = sg, .storage16 = -1});
        fn("subgroup", false);
    } else {
        print_message("  no subgroup shuffles: subgroup path skipped\n");
    }
    kern_gemm_override(NULL);
}

static void test_matmul_layouts(void **state) {
    (void)state;
    for_each_path(matmul_matrix);
}

static void test_matmul_batched(void **state) {
    (void)state;
    for (int wdt = 0; wdt < 2; wdt++)
        for (int tb = 0; tb < 2; tb++)
            for (int bc = 0; bc < 2; bc++) {
                struct mm_case c = {3, 19, 21, 37, tb, bc, true, (enum dtype)wdt,
                                    bc ? BIAS_F32 : NO_BIAS, tb ? 0.125f : -1.5f};
                run_matmul(&c, "batched");
            }
    /* batch 1 with a 3-D a and a 3-D weight (leading dim 1) */
    struct mm_case one = {1, 9, 11, 70, false, false, true, DT_F16, BIAS_F16, 2.0f};
    run_matmul(&one, "batch1-3d");
}

static void test_matmul_alpha_bias(void **state) {
    (void)state;
    struct mm_case c = {2, 33, 17, 65, true, true, true, DT_F32, BIAS_F32, 0.3f};
    run_matmul(&c, "alpha");
    c.wdt = DT_F16;
    c.bias = BIAS_F16;
    c.alpha = -2.5f;
    run_matmul(&c, "alpha");
}

/* Every tile shape the encoders may choose, plus unusual but valid ones:
 * tiled shapes, then subgroup shapes (rows x columns per lane), including
 * row counts that are not a multiple of the subgroup size. The big
 * subgroup shapes take the longest to JIT: 64x8 runs once per op here. */
static const struct gemm_tiles forced_tiles[] = {
    {GEMM_TILED, 64, 64, 16, 8, 8}, {GEMM_TILED, 32, 64, 16, 4, 8}, {GEMM_TILED, 8, 64, 32, 1, 8},
    {GEMM_TILED, 128, 128, 16, 8, 8}, {GEMM_TILED, 32, 32, 8, 4, 4}, {GEMM_TILED, 16, 64, 16, 2, 8},
    {GEMM_TILED, 64, 32, 32, 8, 4},
};
static const int forced_sg[][2] = {{64, 8}, {16, 4}, {12, 3}, {1, 1}};
#define NFORCED (sizeof forced_tiles / sizeof forced_tiles[0] + sizeof forced_sg / sizeof forced_sg[0])

/* The i-th forced shape; false if the device cannot run it. */
static bool forced(size_t i, struct gemm_tiles *t, char *label, size_t n) {
    const struct dev_caps *caps = dev_caps(tu_device());
    size_t nt = sizeof forced_tiles / sizeof forced_tiles[0];
    *t = i < nt ? forced_tiles[i] : kern_gemm_subgroup_tiles(caps, forced_sg[i - nt][0], forced_sg[i - nt][1]);
    if (t->path == GEMM_TILED) snprintf(label, n, "t%dx%dx%d/%dx%d", t->bm, t->bn, t->bk, t->tm, t->tn);
    else snprintf(label, n, "sg%dx%d", t->tm, t->tn);
    if (kern_gemm_tiles_valid(caps, t)) return true;
    print_message("  %s not valid on this device: skipped\n", label);
    return false;
}

static void test_matmul_forced_tiles(void **state) {
    (void)state;
    for (size_t i = 0; i < NFORCED; i++) {
        struct gemm_tiles t;
        char label[64];
        if (!forced(i, &t, label, sizeof label)) continue;
        kern_gemm_override(&(struct gemm_override){.tiles = t, .storage16 = -1});
        struct mm_case c1 = {1, 67, 40, 129, true, true, false, DT_F32, BIAS_F32, 1.0f};
        struct mm_case c2 = {2, 140, 37, 131, false, false, true, DT_F16, BIAS_F16, 0.5f};
        if (t.path == GEMM_TILED || t.tm < 64) run_matmul(&c1, label);
        run_matmul(&c2, label);
    }
    kern_gemm_override(NULL);
}

/* The fp16 read paths: packed words and 16-bit storage (tiled), packed
 * words (subgroup). Returns false if the device lacks that path. */
static bool fp16_mode(int mode, const char **label) {
    const struct dev_caps *caps = dev_caps(tu_device());
    static const char *const names[] = {"tiled packed16", "tiled storage16", "subgroup packed16"};
    *label = names[mode];
    struct gemm_override o = {.tiles = {GEMM_TILED, 64, 64, 16, 8, 8}, .storage16 = mode == 1};
    if (mode == 2) o.tiles = kern_gemm_subgroup_tiles(caps, 16, 2);
    if ((mode == 1 && !caps->storage_16bit) || !kern_gemm_tiles_valid(caps, &o.tiles)) {
        print_message("  %s: not available on this device, skipped\n", *label);
        return false;
    }
    kern_gemm_override(&o);
    return true;
}

static void test_matmul_fp16_paths(void **state) {
    (void)state;
    for (int mode = 0; mode < 3; mode++) {
        const char *label;
        if (!fp16_mode(mode, &label)) continue;
        for (int tb = 0; tb < 2; tb++) {
            struct mm_case c = {2, 7, 13, 33, tb, !tb, true, DT_F16, BIAS_F16, 1.0f};
            run_matmul(&c, label);
            struct mm_case v = {1, 20, 36, 40, tb, true, false, DT_F16, BIAS_F16, 1.0f}; /* vec4 loads */
            run_matmul(&v, label);
        }
    }
    kern_gemm_override(NULL);
}

/* fp16 weight and bias views starting at 2 mod 4 bytes (an odd element):
 * the encoder passes the word address plus an element offset. */
static void test_matmul_fp16_odd_view(void **state) {
    (void)state;
    struct device *d = tu_device();
    const int m = 5, k = 7, n = 9, rows = n + 1;
    for (int mode = 0; mode < 3; mode++) {
        const char *label;
        if (!fp16_mode(mode, &label)) continue;
        float *a = tu_random((size_t)m * k, 11, -1, 1);
        float *w = weights((size_t)rows * k, 12, 0.4f, DT_F16);
        float *b = weights((size_t)rows, 13, 0.5f, DT_F16);
        struct cg_graph *g;
        assert_int_equal(cg_create(&g), DF_OK);
        struct cg_tensor *ta = cg_input(g, "a", 2, (int64_t[]){m, k});
        struct buf *wbuf, *bbuf;
        struct cg_tensor *tw = tu_weight(g, d, w, DT_F16, 2, (int64_t[]){rows, k}, &wbuf);
        struct cg_tensor *tb = tu_weight(g, d, b, DT_F16, 1, (int64_t[]){rows}, &bbuf);
        /* rows 1..n: byte offset 2*k = 14 (2 mod 4); bias from element 1 */
        struct cg_tensor *wv = cg_slice0(g, tw, 1, n), *bv = cg_slice0(g, tb, 1, n);
        struct cg_tensor *ty = cg_linear(g, ta, wv, bv);
        float y[5 * 9];
        double ref[5 * 9];
        const float *in[] = {a};
        tu_run(d, g, 1, &ta, in, ty, y);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = b[j + 1];
                for (int kk = 0; kk < k; kk++) s += (double)a[i * k + kk] * w[(size_t)(j + 1) * k + kk];
                ref[i * n + j] = s;
            }
        char what[96];
        snprintf(what, sizeof what, "fp16 view at odd element, %s", label);
        report(what, tu_rel_l2(y, ref, (size_t)m * n), TOL_F16);
        free(a), free(w), free(b);
        buf_destroy(wbuf);
        buf_destroy(bbuf);
        cg_destroy(g);
    }
    kern_gemm_override(NULL);
}

/* cg_linear on [B, T, K]: flattened to one GEMM, reshaped back. */
static void test_linear_3d(void **state) {
    (void)state;
    struct device *d = tu_device();
    const int bt = 2, t = 11, k = 24, n = 45;
    for (int wdt = 0; wdt < 2; wdt++) {
        float *x = tu_random((size_t)bt * t * k, 21, -2, 2);
        float *w = weights((size_t)n * k, 22, 0.2f, (enum dtype)wdt);
        float *b = tu_random((size_t)n, 23, -1, 1);
        struct cg_graph *g;
        assert_int_equal(cg_create(&g), DF_OK);
        struct cg_tensor *tx = cg_input(g, "x", 3, (int64_t[]){bt, t, k});
        struct buf *wbuf, *bbuf;
        struct cg_tensor *tw = tu_weight(g, d, w, (enum dtype)wdt, 2, (int64_t[]){n, k}, &wbuf);
        struct cg_tensor *tb = tu_weight(g, d, b, DT_F32, 1, (int64_t[]){n}, &bbuf);
        struct cg_tensor *ty = cg_linear(g, tx, tw, tb);
        assert_non_null(ty);
        assert_int_equal(ty->ndim, 3);
        assert_int_equal(ty->ne[0], bt);
        assert_int_equal(ty->ne[1], t);
        assert_int_equal(ty->ne[2], n);
        size_t ny = (size_t)bt * t * n;
        float *y = malloc(ny * sizeof *y);
        double *ref = malloc(ny * sizeof *ref);
        const float *in[] = {x};
        tu_run(d, g, 1, &tx, in, ty, y);
        for (int r = 0; r < bt * t; r++)
            for (int j = 0; j < n; j++) {
                double s = b[j];
                for (int kk = 0; kk < k; kk++) s += (double)x[(size_t)r * k + kk] * w[(size_t)j * k + kk];
                ref[(size_t)r * n + j] = s;
            }
        report(wdt ? "linear 3-D [2,11,24] -> 45, w16" : "linear 3-D [2,11,24] -> 45, w32", tu_rel_l2(y, ref, ny),
               wdt ? TOL_F16 : TOL_F32);
        free(x), free(w), free(b), free(y), free(ref);
        buf_destroy(wbuf);
        buf_destroy(bbuf);
        cg_destroy(g);
    }
}

/* ---- conv2d -------------------------------------------------------------- */

struct conv_case {
    int n, c, h, w, o, kh, kw, stride, pt, pl, pb, pr;
    enum dtype wdt;
    enum bias_kind bias;
};

static void run_conv(const struct conv_case *c, const char *label) {
    struct device *d = tu_device();
    int ho = (c->h + c->pt + c->pb - c->kh) / c->stride + 1, wo = (c->w + c->pl + c->pr - c->kw) / c->stride + 1;
    size_t nx = (size_t)c->n * c->c * c->h * c->w, nw = (size_t)c->o * c->c * c->kh * c->kw;
    size_t ny = (size_t)c->n * c->o * ho * wo;
    float *x = tu_random(nx, 31 + c->c, -1, 1);
    float *w = weights(nw, 32 + c->o, 1.0f / sqrtf((float)(c->c * c->kh * c->kw)), c->wdt);
    enum dtype bdt = c->bias == BIAS_F16 ? DT_F16 : DT_F32;
    float *b = c->bias ? weights((size_t)c->o, 33, 0.5f, bdt) : NULL;

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *tx = cg_input(g, "x", 4, (int64_t[]){c->n, c->c, c->h, c->w});
    struct buf *wbuf = NULL, *bbuf = NULL;
    struct cg_tensor *tw = tu_weight(g, d, w, c->wdt, 4, (int64_t[]){c->o, c->c, c->kh, c->kw}, &wbuf);
    struct cg_tensor *tb = b ? tu_weight(g, d, b, bdt, 1, (int64_t[]){c->o}, &bbuf) : NULL;
    struct cg_tensor *ty = cg_conv2d(g, tx, tw, tb, c->stride, c->pt, c->pl, c->pb, c->pr);
    assert_non_null(ty);
    assert_int_equal(ty->ne[2], ho);
    assert_int_equal(ty->ne[3], wo);
    float *y = malloc(ny * sizeof *y);
    const float *in[] = {x};
    tu_run(d, g, 1, &tx, in, ty, y);

    double *ref = malloc(ny * sizeof *ref);
    for (int im = 0; im < c->n; im++)
        for (int o = 0; o < c->o; o++)
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    double s = b ? b[o] : 0.0;
                    for (int ci = 0; ci < c->c; ci++)
                        for (int ky = 0; ky < c->kh; ky++)
                            for (int kx = 0; kx < c->kw; kx++) {
                                int iy = oy * c->stride + ky - c->pt, ix = ox * c->stride + kx - c->pl;
                                if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w) continue;
                                s += (double)x[(((size_t)im * c->c + ci) * c->h + iy) * c->w + ix] *
                                     w[(((size_t)o * c->c + ci) * c->kh + ky) * c->kw + kx];
                            }
                    ref[(((size_t)im * c->o + o) * ho + oy) * wo + ox] = s;
                }
    char what[160];
    snprintf(what, sizeof what, "%s %dx%dx%dx%d o%d k%dx%d s%d p%d,%d,%d,%d %s%s", label, c->n, c->c, c->h, c->w,
             c->o, c->kh, c->kw, c->stride, c->pt, c->pl, c->pb, c->pr, c->wdt == DT_F16 ? "w16" : "w32",
             c->bias == BIAS_F16 ? " bias16" : c->bias ? " bias32" : "");
    report(what, tu_rel_l2(y, ref, ny), c->wdt == DT_F16 ? TOL_F16 : TOL_F32);
    free(x), free(w), free(b), free(y), free(ref);
    buf_destroy(wbuf);
    buf_destroy(bbuf);
    cg_destroy(g);
}

static const struct conv_case conv_shapes[] = {
    /* n  c   h   w   o kh kw s pt pl pb pr */
    {2, 5, 9, 11, 7, 1, 1, 1, 0, 0, 0, 0, DT_F32, NO_BIAS},   /* 1x1 */
    {2, 5, 9, 11, 7, 3, 3, 1, 1, 1, 1, 1, DT_F32, NO_BIAS},   /* 3x3 pad 1 */
    {2, 5, 9, 11, 7, 3, 3, 2, 1, 1, 1, 1, DT_F32, NO_BIAS},   /* 3x3 stride 2 pad 1 */
    {2, 5, 9, 11, 7, 3, 3, 2, 0, 0, 1, 1, DT_F32, NO_BIAS},   /* VAE downsample */
    {2, 5, 10, 12, 7, 2, 2, 2, 0, 0, 0, 0, DT_F32, NO_BIAS},  /* SD3 patchify */
    {1, 3, 7, 6, 4, 3, 2, 1, 2, 0, 1, 3, DT_F32, NO_BIAS},    /* any kernel, any padding */
    {1, 6, 11, 13, 5, 5, 5, 3, 2, 2, 2, 2, DT_F32, NO_BIAS},  /* 5x5 stride 3 */
};

/* Every shape with both weight types, bias on for one and off for the
 * other, alternating (!full: the strided, asymmetric and odd-kernel
 * shapes only). */
static void conv_matrix(const char *label, bool full) {
    for (size_t i = full ? 0 : 3; i < sizeof conv_shapes / sizeof conv_shapes[0]; i++)
        for (int wdt = 0; wdt < 2; wdt++) {
            struct conv_case c = conv_shapes[i];
            c.wdt = (enum dtype)wdt;
            c.bias = (i + wdt) % 2 == 0 ? NO_BIAS : wdt ? BIAS_F16 : BIAS_F32;
            run_conv(&c, label);
        }
}

static void test_conv_shapes(void **state) {
    (void)state;
    for_each_path(conv_matrix);
}

/* Several tiles in every GEMM dimension: O = 70 (M), 20x20 outputs (N),
 * C*9 = 171 (K). */
static void conv_multi_tile(const char *label, bool full) {
    (void)full;
    struct conv_case c = {2, 19, 20, 20, 70, 3, 3, 1, 1, 1, 1, 1, DT_F32, BIAS_F32};
    run_conv(&c, label);
    c.wdt = DT_F16;
    c.bias = BIAS_F16;
    run_conv(&c, label);
    /* K = 16*9 = 144, a multiple of 4: vec4 weight loads */
    struct conv_case v = {1, 16, 12, 10, 66, 3, 3, 1, 1, 1, 1, 1, DT_F16, NO_BIAS};
    run_conv(&v, label);
    v.wdt = DT_F32;
    run_conv(&v, label);
}

static void test_conv_multi_tile(void **state) {
    (void)state;
    for_each_path(conv_multi_tile);
}

/* Each forced shape with fp32 weights; the fp16 read paths (packed words,
 * 16-bit storage) on the default tiles of each path. */
static void test_conv_forced(void **state) {
    (void)state;
    for (size_t i = 0; i < NFORCED; i++) {
        struct gemm_tiles t;
        char label[64];
        if (!forced(i, &t, label, sizeof label)) continue;
        bool fp16 = (t.path == GEMM_TILED && t.bm == 64 && t.bn == 64) || (t.path == GEMM_SUBGROUP && t.tm == 64);
        for (int mode = 0; mode < 3; mode++) {
            if (mode > 0 && !fp16) break;
            if (mode == 2 && (!dev_caps(tu_device())->storage_16bit || t.path != GEMM_TILED)) continue;
            if (mode == 0 && t.path == GEMM_SUBGROUP && t.tm == 64) continue; /* one 64-row JIT */
            kern_gemm_override(&(struct gemm_override){.tiles = t, .storage16 = mode == 2});
            char what[80];
            snprintf(what, sizeof what, "%s%s", label, mode == 1 ? " packed" : mode == 2 ? " s16" : "");
            struct conv_case c = {2, 5, 9, 11, 7, 3, 3, 2, 0, 0, 1, 1, mode ? DT_F16 : DT_F32,
                                  mode ? BIAS_F16 : BIAS_F32};
            run_conv(&c, what);
        }
    }
    kern_gemm_override(NULL);
}

/* Whatever shape comes in, the automatic choice is a valid tile on this
 * device and on a GPU-like device with its limits (the tiled path). */
static void test_auto_tiles_valid(void **state) {
    (void)state;
    struct dev_caps caps = *dev_caps(tu_device()), gpu = caps;
    gpu.type = DEV_DISCRETE;
    static const long long sizes[] = {1, 3, 8, 9, 31, 32, 33, 64, 77, 255, 256, 320, 4096, 1 << 20};
    size_t ns = sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < ns; i++)
        for (size_t j = 0; j < ns; j++) {
            struct gemm_tiles a = kern_gemm_tiles(&caps, sizes[i], sizes[j], 320);
            struct gemm_tiles b = kern_gemm_tiles(&gpu, sizes[i], sizes[j], 320);
            assert_true(kern_gemm_tiles_valid(&caps, &a));
            assert_true(kern_gemm_tiles_valid(&gpu, &b));
            assert_int_equal(b.path, GEMM_TILED);
            if (caps.type == DEV_CPU && caps.subgroup_shuffle) assert_int_equal(a.path, GEMM_SUBGROUP);
        }
}

/* The start-up gate (compute/selftest.c): a path is switched on, checked,
 * and switched off again when it fails. A deliberately broken variant
 * (A's last columns dropped) must fail and end up off; the same check must
 * pass the correct variant. The tiled path runs on every driver; the
 * matrix path where the device offers it (not lavapipe). */
static struct gemm_override gate_path;
static bool gate_on;

static void gate_enable(struct device *dev, bool on) {
    (void)dev;
    gate_on = on;
    kern_gemm_override(on ? &gate_path : NULL);
}

static void gate(struct gemm_tiles t, bool broken, const char *label) {
    gate_path = (struct gemm_override){.tiles = t, .storage16 = -1, .broken = broken};
    kern_gemm_override(&gate_path);
    struct selftest_result r;
    assert_int_equal(selftest_gemm(tu_device(), &r), DF_OK);
    print_message("  %-32s %s rel L2 %.2e, %s %.2e, %s %.2e: %s\n", label, r.what[0], r.err[0], r.what[1], r.err[1],
                  r.what[2], r.err[2], r.passed ? "passes" : "rejected");
    bool passed;
    selftest_gate(tu_device(), label, gate_enable, selftest_gemm, &passed);
    kern_gemm_override(NULL);
    assert_int_equal(passed, !broken);
    assert_int_equal(r.passed, !broken);
    assert_int_equal(gate_on, !broken);  /* a failing path is switched off */
}

static void test_selftest_gate(void **state) {
    (void)state;
    struct gemm_tiles tiled = {GEMM_TILED, 64, 64, 16, 8, 8};
    gate(tiled, false, "tiled GEMM");
    gate(tiled, true, "tiled GEMM, deliberately broken");
    const struct dev_caps *caps = dev_caps(tu_device());
    if (!caps->gemm_coop_available) {
        print_message("  no cooperative matrices on %s: matrix-path gate not run here\n", caps->name);
        return;
    }
    print_message("  matrix GEMM in use after start-up: %s\n", caps->gemm_coop ? "yes" : "no (self-test failed)");
    gate(kern_gemm_coop_tiles(false), false, "matrix GEMM");
    gate(kern_gemm_coop_tiles(false), true, "matrix GEMM, deliberately broken");
    gate(kern_gemm_coop_tiles(true), false, "matrix GEMM, small tiles");
    gate(kern_gemm_coop_tiles(true), true, "matrix GEMM, small, broken");
    /* K slices of 64 (bench --matrix-bk 64) */
    struct gemm_tiles big64 = kern_gemm_coop_tiles(false), small64 = kern_gemm_coop_tiles(true);
    big64.bk = small64.bk = 64;
    gate(big64, false, "matrix GEMM, K slices of 64");
    gate(small64, false, "matrix GEMM, small, K 64");
}

static int teardown(void **state) {
    (void)state;
    kern_gemm_override(NULL);
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_tiles_valid),
        cmocka_unit_test(test_matmul_layouts),
        cmocka_unit_test(test_matmul_batched),
        cmocka_unit_test(test_matmul_alpha_bias),
        cmocka_unit_test(test_matmul_forced_tiles),
        cmocka_unit_test(test_matmul_fp16_paths),
        cmocka_unit_test(test_matmul_fp16_odd_view),
        cmocka_unit_test(test_linear_3d),
        cmocka_unit_test(test_conv_shapes),
        cmocka_unit_test(test_conv_multi_tile),
        cmocka_unit_test(test_conv_forced),
        cmocka_unit_test(test_selftest_gate),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
