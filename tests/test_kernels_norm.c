/* group norm, layer norm and softmax against double-precision C references:
 * with and without (fp32 / fp16) affine parameters, fused SiLU, odd shapes,
 * a large group around 50 +- 1 (catches E[x^2] - E[x]^2 cancellation), and
 * both reduction paths (subgroup arithmetic and the shared-memory tree,
 * forced through kern_norm_force_fallback). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../compute/kern_norm.h"
#include "testutil.h"

#define TOL_F32 1e-5
#define TOL_F16 2e-3

enum affine { AFF_NONE, AFF_F32, AFF_F16, AFF_GAMMA_ONLY, AFF_BETA_ONLY };

static const char *affine_name[] = {"no affine", "affine f32", "affine f16", "gamma only", "beta only"};

/* Which reduction a run used: the tree when forced or when the device has
 * no subgroup arithmetic. */
static const char *path_name(bool fallback) {
    return fallback ? "tree" : dev_caps(tu_device())->subgroup_arithmetic ? "subgroup" : "tree (no subgroup ops)";
}

static void report(const char *what, double err, double tol) {
    print_message("  %-64s rel L2 %.3g\n", what, err);
    if (!(err <= tol)) fail_msg("%s: relative L2 error %g > %g", what, err, tol);
}

/* gamma / beta as the GPU sees them (fp16-rounded when stored as fp16);
 * NULL where absent. */
static void make_affine(enum affine a, size_t c, uint32_t seed, float **gamma, float **beta) {
    *gamma = *beta = NULL;
    if (a == AFF_NONE) return;
    if (a != AFF_BETA_ONLY) *gamma = tu_random(c, seed, 0.5f, 1.5f);
    if (a != AFF_GAMMA_ONLY) *beta = tu_random(c, seed + 1, -0.5f, 0.5f);
    if (a == AFF_F16) {
        tu_round_f16(*gamma, c);
        tu_round_f16(*beta, c);
    }
}

static void upload_affine(struct cg_graph *g, struct device *d, enum affine a, const float *gamma,
                          const float *beta, int64_t c, struct cg_tensor **tg, struct cg_tensor **tb,
                          struct buf **bg, struct buf **bb) {
    enum dtype dt = a == AFF_F16 ? DT_F16 : DT_F32;
    *tg = gamma ? tu_weight(g, d, gamma, dt, 1, &c, bg) : NULL;
    *tb = beta ? tu_weight(g, d, beta, dt, 1, &c, bb) : NULL;
}

/* ---- group norm ------------------------------------------------------------ */

struct gn_case {
    int ndim;
    int64_t ne[4];
    int groups;
    enum affine affine;
    bool silu;
    float lo, hi; /* input range */
};

static void run_groupnorm(const struct gn_case *c, bool fallback) {
    struct device *d = tu_device();
    int64_t n = c->ne[0], ch = c->ne[1], s = 1;
    for (int i = 2; i < c->ndim; i++) s *= c->ne[i];
    size_t numel = (size_t)(n * ch * s);
    float *x = tu_random(numel, 11 + (uint32_t)numel, c->lo, c->hi);
    float *gamma, *beta;
    make_affine(c->affine, (size_t)ch, 5 + (uint32_t)ch, &gamma, &beta);
    const float eps = 1e-5f;

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *tx = cg_input(g, "x", c->ndim, c->ne), *tg, *tb;
    struct buf *bg = NULL, *bb = NULL;
    upload_affine(g, d, c->affine, gamma, beta, ch, &tg, &tb, &bg, &bb);
    struct cg_tensor *ty = cg_groupnorm(g, tx, tg, tb, c->groups, eps, c->silu);
    float *y = malloc(numel * sizeof *y);
    const float *in[] = {x};
    kern_norm_force_fallback(fallback);
    tu_run(d, g, 1, &tx, in, ty, y);
    kern_norm_force_fallback(false);

    double *ref = malloc(numel * sizeof *ref);
    int64_t cg = ch / c->groups, m = cg * s;
    for (int64_t gi = 0; gi < n * c->groups; gi++) {
        const float *xg = x + gi * m;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < m; i++) mean += xg[i];
        mean /= (double)m;
        for (int64_t i = 0; i < m; i++) var += (xg[i] - mean) * (xg[i] - mean);
        var /= (double)m;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (int64_t i = 0; i < m; i++) {
            int64_t cc = (gi % c->groups) * cg + i / s;
            double v = (xg[i] - mean) * rstd;
            if (gamma) v *= gamma[cc];
            if (beta) v += beta[cc];
            if (c->silu) v = v / (1.0 + exp(-v));
            ref[gi * m + i] = v;
        }
    }
    char what[200];
    int len = snprintf(what, sizeof what, "groupnorm [");
    for (int i = 0; i < c->ndim; i++) len += snprintf(what + len, sizeof what - (size_t)len, "%s%lld", i ? "," : "", (long long)c->ne[i]);
    snprintf(what + len, sizeof what - (size_t)len, "] g%d %s%s x~[%g,%g) %s", c->groups, affine_name[c->affine],
             c->silu ? " silu" : "", c->lo, c->hi, path_name(fallback));
    report(what, tu_rel_l2(y, ref, numel), c->affine == AFF_F16 ? TOL_F16 : TOL_F32);

    free(x);
    free(y);
    free(ref);
    free(gamma);
    free(beta);
    cg_destroy(g);
    buf_destroy(bg);
    buf_destroy(bb);
}

static void groupnorm_both(const struct gn_case *c) {
    run_groupnorm(c, false);
    run_groupnorm(c, true);
}

static void test_groupnorm_plain(void **state) {
    (void)state;
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 3, AFF_NONE, false, -2, 3});
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 12, AFF_NONE, false, -2, 3});
    groupnorm_both(&(struct gn_case){3, {3, 10, 33}, 5, AFF_NONE, false, -1, 1});
    groupnorm_both(&(struct gn_case){2, {5, 12}, 4, AFF_NONE, false, -1, 1}); /* no spatial dims */
}

static void test_groupnorm_affine(void **state) {
    (void)state;
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 4, AFF_F32, false, -2, 3});
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 3, AFF_GAMMA_ONLY, false, -2, 3});
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 12, AFF_BETA_ONLY, false, -2, 3});
}

static void test_groupnorm_f16_affine(void **state) {
    (void)state;
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 12, AFF_F16, false, -2, 3});
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 4, AFF_F16, true, -2, 3});
}

static void test_groupnorm_silu(void **state) {
    (void)state;
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 4, AFF_F32, true, -2, 3});
    groupnorm_both(&(struct gn_case){4, {2, 12, 7, 9}, 3, AFF_NONE, true, -2, 3});
}

/* 4 channels x 256 x 256 = 262144 elements per group around 50: the mean
 * is 100x the spread, so E[x^2] - E[x]^2 would lose ~4 digits. */
static void test_groupnorm_large_offset(void **state) {
    (void)state;
    groupnorm_both(&(struct gn_case){4, {1, 8, 256, 256}, 2, AFF_F32, false, 49, 51});
}

/* ---- layer norm ------------------------------------------------------------ */

static void run_layernorm(int ndim, const int64_t *ne, enum affine a, float lo, float hi, bool fallback) {
    struct device *d = tu_device();
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)ne[i];
    int64_t dd = ne[ndim - 1];
    size_t rows = numel / (size_t)dd;
    float *x = tu_random(numel, 21 + (uint32_t)numel, lo, hi);
    float *gamma, *beta;
    make_affine(a, (size_t)dd, 7 + (uint32_t)dd, &gamma, &beta);
    const float eps = 1e-6f;

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *tx = cg_input(g, "x", ndim, ne), *tg, *tb;
    struct buf *bg = NULL, *bb = NULL;
    upload_affine(g, d, a, gamma, beta, dd, &tg, &tb, &bg, &bb);
    struct cg_tensor *ty = cg_layernorm(g, tx, tg, tb, eps);
    float *y = malloc(numel * sizeof *y);
    const float *in[] = {x};
    kern_norm_force_fallback(fallback);
    tu_run(d, g, 1, &tx, in, ty, y);
    kern_norm_force_fallback(false);

    double *ref = malloc(numel * sizeof *ref);
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * (size_t)dd;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < dd; i++) mean += xr[i];
        mean /= (double)dd;
        for (int64_t i = 0; i < dd; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)dd;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (int64_t i = 0; i < dd; i++) {
            double v = (xr[i] - mean) * rstd;
            if (gamma) v *= gamma[i];
            if (beta) v += beta[i];
            ref[r * (size_t)dd + i] = v;
        }
    }
    char what[200];
    int len = snprintf(what, sizeof what, "layernorm [");
    for (int i = 0; i < ndim; i++) len += snprintf(what + len, sizeof what - (size_t)len, "%s%lld", i ? "," : "", (long long)ne[i]);
    snprintf(what + len, sizeof what - (size_t)len, "] %s x~[%g,%g) %s", affine_name[a], lo, hi,
             path_name(fallback));
    report(what, tu_rel_l2(y, ref, numel), a == AFF_F16 ? TOL_F16 : TOL_F32);

    free(x);
    free(y);
    free(ref);
    free(gamma);
    free(beta);
    cg_destroy(g);
    buf_destroy(bg);
    buf_destroy(bb);
}

static void test_layernorm(void **state) {
    (void)state;
    const int64_t ne[3] = {3, 17, 33};
    for (int fb = 0; fb < 2; fb++) {
        run_layernorm(3, ne, AFF_NONE, -2, 3, fb);
        run_layernorm(3, ne, AFF_F32, -2, 3, fb);
        run_layernorm(3, ne, AFF_F16, -2, 3, fb);
        run_layernorm(3, ne, AFF_GAMMA_ONLY, -2, 3, fb);
        run_layernorm(3, ne, AFF_BETA_ONLY, -2, 3, fb);
    }
}

/* Rows longer than the workgroup (several elements per invocation, the
 * 256-wide workgroup), and a large common offset. */
static void test_layernorm_long_rows(void **state) {
    (void)state;
    for (int fb = 0; fb < 2; fb++) {
        run_layernorm(2, (int64_t[]){5, 3001}, AFF_F32, -1, 1, fb);
        run_layernorm(2, (int64_t[]){7, 1537}, AFF_NONE, 99, 101, fb);
    }
}

/* ---- softmax --------------------------------------------------------------- */

static void run_softmax(int ndim, const int64_t *ne, float scale, float lo, float hi, bool fallback) {
    struct device *d = tu_device();
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)ne[i];
    int64_t n = ne[ndim - 1];
    size_t rows = numel / (size_t)n;
    float *x = tu_random(numel, 31 + (uint32_t)numel, lo, hi);

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *tx = cg_input(g, "x", ndim, ne);
    struct cg_tensor *ty = cg_softmax(g, tx, scale);
    float *y = malloc(numel * sizeof *y);
    const float *in[] = {x};
    kern_norm_force_fallback(fallback);
    tu_run(d, g, 1, &tx, in, ty, y);
    kern_norm_force_fallback(false);

    double *ref = malloc(numel * sizeof *ref);
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * (size_t)n;
        double mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, (double)scale * xr[i]);
        for (int64_t i = 0; i < n; i++) sum += exp((double)scale * xr[i] - mx);
        for (int64_t i = 0; i < n; i++) ref[r * (size_t)n + i] = exp((double)scale * xr[i] - mx) / sum;
    }
    char what[200];
    int len = snprintf(what, sizeof what, "softmax [");
    for (int i = 0; i < ndim; i++) len += snprintf(what + len, sizeof what - (size_t)len, "%s%lld", i ? "," : "", (long long)ne[i]);
    snprintf(what + len, sizeof what - (size_t)len, "] scale %g x~[%g,%g) %s", scale, lo, hi,
             path_name(fallback));
    report(what, tu_rel_l2(y, ref, numel), TOL_F32);
    free(x);
    free(y);
    free(ref);
    cg_destroy(g);
}

static void test_softmax(void **state) {
    (void)state;
    for (int fb = 0; fb < 2; fb++) {
        run_softmax(3, (int64_t[]){5, 7, 77}, 0.37f, -4, 4, fb);
        run_softmax(3, (int64_t[]){5, 7, 77}, -1.5f, -4, 4, fb); /* negative scale flips the max */
        run_softmax(2, (int64_t[]){3, 4099}, 1.0f, -30, 30, fb); /* peaky, many elements per invocation */
        run_softmax(1, (int64_t[]){1}, 2.0f, 200, 300, fb);      /* one element: exactly 1, no overflow */
    }
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groupnorm_plain),
        cmocka_unit_test(test_groupnorm_affine),
        cmocka_unit_test(test_groupnorm_f16_affine),
        cmocka_unit_test(test_groupnorm_silu),
        cmocka_unit_test(test_groupnorm_large_offset),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_layernorm_long_rows),
        cmocka_unit_test(test_softmax),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
