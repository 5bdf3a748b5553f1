/* Elementwise and data-movement kernels against double-precision references:
 * unary, binary broadcasting, GEGLU, upsample2x, concat, timestep
 * embedding, transpose, and the 2-D grid split of a >16M-element op. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

static size_t numel(int ndim, const int64_t *ne) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)ne[i];
    return n;
}

static struct cg_graph *graph(void) {
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    return g;
}

/* Data movement is exact: every element must match bit for bit. */
static void assert_exact(const float *got, const double *ref, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == (float)ref[i])) fail_msg("%s: element %zu is %g, want %g", what, i, got[i], ref[i]);
}

/* ---- unary ------------------------------------------------------------- */

static double ref_unary(enum cg_unary op, double v, double alpha, double beta) {
    switch (op) {
    case CG_SILU: return v / (1.0 + exp(-v));
    case CG_GELU_ERF: return 0.5 * v * erfc(-v / sqrt(2.0));
    /* 0.5 v (1 + tanh u) = v / (1 + exp(-2u)): the left side cancels even in double */
    case CG_GELU_TANH: return v / (1.0 + exp(-2.0 * sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    case CG_QUICK_GELU: return v / (1.0 + exp(-1.702 * v));
    case CG_SCALE: return v * alpha + beta;
    }
    return NAN;
}

static void test_unary(void **state) {
    (void)state;
    static const char *names[] = {"silu", "gelu_erf", "gelu_tanh", "quick_gelu", "scale"};
    struct device *d = tu_device();
    int64_t ne[3] = {7, 13, 33};
    size_t n = numel(3, ne);
    float *x = tu_random(n, 1, -8, 8), *out = malloc(n * sizeof *out);
    double *ref = malloc(n * sizeof *ref);
    /* the exact tails and zero neighbourhood, not left to chance */
    x[0] = -8.0f, x[1] = 8.0f, x[2] = -7.99f, x[3] = 1e-3f, x[4] = -1e-3f, x[5] = -5.5f;
    for (int op = CG_SILU; op <= CG_SCALE; op++) {
        float alpha = op == CG_SCALE ? 0.37f : 1.0f, beta = op == CG_SCALE ? -1.25f : 0.0f;
        struct cg_graph *g = graph();
        struct cg_tensor *in = cg_input(g, "x", 3, ne);
        struct cg_tensor *y = cg_unary(g, (enum cg_unary)op, in, alpha, beta);
        const float *data[] = {x};
        tu_run(d, g, 1, &in, data, y, out);
        double tail = 0; /* worst per-element relative error: the tails must not cancel */
        for (size_t i = 0; i < n; i++) {
            ref[i] = ref_unary((enum cg_unary)op, x[i], alpha, beta);
            if (op != CG_SCALE && ref[i] != 0) tail = fmax(tail, fabs(out[i] - ref[i]) / fabs(ref[i]));
        }
        double err = tu_rel_l2(out, ref, n);
        print_message("unary %-10s rel L2 %.2e, max elementwise rel %.2e (f(-8) = %.4e, ref %.4e)\n",
                      names[op], err, tail, out[0], ref[0]);
        assert_true(err <= 1e-5);
        if (op != CG_SCALE) assert_true(tail <= 1e-4);
        cg_destroy(g);
    }
    free(x);
    free(out);
    free(ref);
}

/* ---- binary ------------------------------------------------------------ */

static double ref_binary(enum cg_binary op, double a, double b) {
    switch (op) {
    case CG_ADD: return a + b;
    case CG_SUB: return a - b;
    case CG_MUL: return a * b;
    case CG_DIV: return a / b;
    }
    return NAN;
}

/* Index into a right-aligned, broadcast operand from the output's 4-D index. */
static size_t bcast_index(int ndim, const int64_t *ne, const int64_t *idx4) {
    size_t off = 0;
    for (int i = 0; i < ndim; i++) {
        int64_t k = ne[i] == 1 ? 0 : idx4[CG_MAX_DIMS - ndim + i];
        off = off * (size_t)ne[i] + (size_t)k;
    }
    return off;
}

static void binary_case(int na, const int64_t *ea, int nb, const int64_t *eb, uint32_t seed) {
    static const char *names[] = {"add", "sub", "mul", "div"};
    struct device *d = tu_device();
    size_t sa = numel(na, ea), sb = numel(nb, eb);
    float *a = tu_random(sa, seed, -3, 3), *b = tu_random(sb, seed + 1, 0.5f, 2.0f);
    for (size_t i = 0; i < sb; i += 2) b[i] = -b[i]; /* both signs, never near zero */
    int64_t ne[CG_MAX_DIMS];
    int nd = na > nb ? na : nb;
    for (int i = 0; i < CG_MAX_DIMS; i++) {
        int ia = i - (CG_MAX_DIMS - na), ib = i - (CG_MAX_DIMS - nb);
        int64_t x = ia >= 0 ? ea[ia] : 1, y = ib >= 0 ? eb[ib] : 1;
        ne[i] = x > y ? x : y;
    }
    size_t n = numel(CG_MAX_DIMS, ne);
    float *out = malloc(n * sizeof *out);
    double *ref = malloc(n * sizeof *ref);
    for (int op = CG_ADD; op <= CG_DIV; op++) {
        struct cg_graph *g = graph();
        struct cg_tensor *ta = cg_input(g, "a", na, ea), *tb = cg_input(g, "b", nb, eb);
        struct cg_tensor *y = cg_binary(g, (enum cg_binary)op, ta, tb);
        assert_non_null(y);
        assert_int_equal(y->ndim, nd);
        assert_int_equal(cg_numel(y), (int64_t)n);
        struct cg_tensor *ins[] = {ta, tb};
        const float *data[] = {a, b};
        tu_run(d, g, 2, ins, data, y, out);
        int64_t idx[CG_MAX_DIMS];
        for (size_t i = 0; i < n; i++) {
            size_t r = i;
            for (int k = CG_MAX_DIMS - 1; k >= 0; k--) {
                idx[k] = (int64_t)(r % (size_t)ne[k]);
                r /= (size_t)ne[k];
            }
            ref[i] = ref_binary((enum cg_binary)op, a[bcast_index(na, ea, idx)], b[bcast_index(nb, eb, idx)]);
        }
        double err = tu_rel_l2(out, ref, n);
        print_message("binary %s %zu (+) %zu elements -> %zu: rel L2 %.2e\n", names[op], sa, sb, n, err);
        assert_true(err <= 1e-5);
        cg_destroy(g);
    }
    free(a);
    free(b);
    free(out);
    free(ref);
}

static void test_binary_same_shape(void **state) {
    (void)state;
    binary_case(3, (int64_t[]){7, 13, 33}, 3, (int64_t[]){7, 13, 33}, 10);
}

static void test_binary_channel_bias(void **state) {
    (void)state;
    binary_case(4, (int64_t[]){2, 5, 7, 9}, 3, (int64_t[]){5, 1, 1}, 20);
}

static void test_binary_per_sample(void **state) {
    (void)state;
    binary_case(4, (int64_t[]){2, 5, 7, 9}, 4, (int64_t[]){2, 5, 1, 1}, 30);
}

static void test_binary_both_broadcast(void **state) {
    (void)state;
    binary_case(2, (int64_t[]){3, 1}, 2, (int64_t[]){1, 4}, 40);
}

static void test_binary_scalar(void **state) {
    (void)state;
    binary_case(4, (int64_t[]){2, 5, 7, 9}, 1, (int64_t[]){1}, 50);
    binary_case(1, (int64_t[]){1}, 3, (int64_t[]){3, 7, 11}, 60); /* a is the broadcast side */
    binary_case(3, (int64_t[]){3, 7, 11}, 1, (int64_t[]){11}, 70); /* [.., C] + [C] (linear bias) */
}

/* ---- GEGLU, upsample, concat, transpose -------------------------------- */

/* b as an fp16 weight (a position table or bias added to activations). */
static void test_binary_f16_operand(void **state) {
    (void)state;
    struct device *d = tu_device();
    int64_t ea[3] = {3, 7, 13}, eb[2] = {7, 13};
    float *a = tu_random(273, 31, -3, 3), *b = tu_random(91, 32, -2, 2);
    tu_round_f16(b, 91);
    struct cg_graph *g = graph();
    struct buf *wb;
    struct cg_tensor *ta = cg_input(g, "a", 3, ea), *tb = tu_weight(g, d, b, DT_F16, 2, eb, &wb);
    struct cg_tensor *y = cg_add(g, ta, tb);
    float out[273];
    double ref[273];
    const float *data[] = {a};
    tu_run(d, g, 1, &ta, data, y, out);
    for (int i = 0; i < 273; i++) ref[i] = (double)a[i] + b[i % 91];
    assert_true(tu_rel_l2(out, ref, 273) <= 1e-6);
    cg_destroy(g);
    buf_destroy(wb);
    free(a);
    free(b);
}

static void test_geglu(void **state) {
    (void)state;
    struct device *d = tu_device();
    int64_t ne[3] = {3, 7, 2 * 13};
    size_t n = numel(3, ne), m = n / 2;
    float *x = tu_random(n, 80, -6, 6), *out = malloc(m * sizeof *out);
    double *ref = malloc(m * sizeof *ref);
    struct cg_graph *g = graph();
    struct cg_tensor *in = cg_input(g, "x", 3, ne), *y = cg_geglu(g, in);
    assert_int_equal(y->ne[2], 13);
    const float *data[] = {x};
    tu_run(d, g, 1, &in, data, y, out);
    for (size_t r = 0; r < 21; r++)
        for (size_t c = 0; c < 13; c++) {
            double v = x[r * 26 + c], gate = x[r * 26 + 13 + c];
            ref[r * 13 + c] = v * 0.5 * gate * erfc(-gate / sqrt(2.0));
        }
    double err = tu_rel_l2(out, ref, m);
    print_message("geglu [3, 7, 26]: rel L2 %.2e\n", err);
    assert_true(err <= 1e-5);
    free(x);
    free(out);
    free(ref);
    cg_destroy(g);
}

static void test_upsample2x(void **state) {
    (void)state;
    struct device *d = tu_device();
    int64_t ne[4] = {2, 3, 5, 7};
    size_t n = numel(4, ne), m = 4 * n;
    float *x = tu_random(n, 90, -2, 2), *out = malloc(m * sizeof *out);
    double *ref = malloc(m * sizeof *ref);
    struct cg_graph *g = graph();
    struct cg_tensor *in = cg_input(g, "x", 4, ne), *y = cg_upsample2x(g, in);
    const float *data[] = {x};
    tu_run(d, g, 1, &in, data, y, out);
    for (size_t p = 0; p < 6; p++)
        for (size_t i = 0; i < 10; i++)
            for (size_t j = 0; j < 14; j++) ref[(p * 10 + i) * 14 + j] = x[(p * 5 + i / 2) * 7 + j / 2];
    assert_exact(out, ref, m, "upsample2x");
    free(x);
    free(out);
    free(ref);
    cg_destroy(g);
}

/* F.interpolate(size=...) nearest, sizes that are not 2x: torch's
 * min(floor(dst * (float)in/out), in-1). */
static void test_upsample_to_size(void **state) {
    (void)state;
    struct device *d = tu_device();
    int64_t ne[4] = {1, 3, 4, 3}, oh = 7, ow = 8;
    size_t n = numel(4, ne), m = 3 * (size_t)(oh * ow);
    float *x = tu_random(n, 91, -2, 2), *out = malloc(m * sizeof *out);
    double *ref = malloc(m * sizeof *ref);
    struct cg_graph *g = graph();
    struct cg_tensor *in = cg_input(g, "x", 4, ne), *y = cg_upsample_nearest(g, in, oh, ow);
    const float *data[] = {x};
    tu_run(d, g, 1, &in, data, y, out);
    float sh = 4.0f / 7.0f, sw = 3.0f / 8.0f;
    for (size_t p = 0; p < 3; p++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                int64_t si = (int64_t)floorf((float)i * sh), sj = (int64_t)floorf((float)j * sw);
                if (si > 3) si = 3;
                if (sj > 2) sj = 2;
                ref[(p * (size_t)oh + (size_t)i) * (size_t)ow + (size_t)j] = x[(p * 4 + (size_t)si) * 3 + (size_t)sj];
            }
    assert_exact(out, ref, m, "upsample to 7x8");
    free(x);
    free(out);
    free(ref);
    cg_destroy(g);
}

static void concat_case(int nd, const int64_t *ea, const int64_t *eb, int dim) {
    struct device *d = tu_device();
    size_t sa = numel(nd, ea), sb = numel(nd, eb), n = sa + sb;
    float *a = tu_random(sa, 100 + (uint32_t)dim, -2, 2), *b = tu_random(sb, 200 + (uint32_t)dim, 3, 5);
    float *out = malloc(n * sizeof *out);
    double *ref = malloc(n * sizeof *ref);
    struct cg_graph *g = graph();
    struct cg_tensor *ta = cg_input(g, "a", nd, ea), *tb = cg_input(g, "b", nd, eb);
    struct cg_tensor *y = cg_concat(g, ta, tb, dim);
    assert_non_null(y);
    assert_int_equal(y->ne[dim], ea[dim] + eb[dim]);
    struct cg_tensor *ins[] = {ta, tb};
    const float *data[] = {a, b};
    tu_run(d, g, 2, ins, data, y, out);
    /* reference by the definition: walk y's index space */
    size_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= (size_t)ea[i];
    for (int i = dim + 1; i < nd; i++) inner *= (size_t)ea[i];
    size_t ka = (size_t)ea[dim], kb = (size_t)eb[dim], k = 0;
    for (size_t o = 0; o < outer; o++)
        for (size_t c = 0; c < ka + kb; c++)
            for (size_t i = 0; i < inner; i++, k++)
                ref[k] = c < ka ? a[(o * ka + c) * inner + i] : b[(o * kb + c - ka) * inner + i];
    assert_exact(out, ref, n, "concat");
    free(a);
    free(b);
    free(out);
    free(ref);
    cg_destroy(g);
}

static void test_concat(void **state) {
    (void)state;
    concat_case(3, (int64_t[]){2, 3, 5}, (int64_t[]){3, 3, 5}, 0);
    concat_case(4, (int64_t[]){2, 3, 5, 7}, (int64_t[]){2, 4, 5, 7}, 1); /* UNet skip concat */
    concat_case(3, (int64_t[]){3, 4, 5}, (int64_t[]){3, 4, 6}, 2);
    concat_case(4, (int64_t[]){2, 3, 5, 7}, (int64_t[]){2, 3, 5, 2}, 3);
    concat_case(2, (int64_t[]){1, 1}, (int64_t[]){1, 3}, 1);
}

static void transpose_case(int64_t b, int64_t m, int64_t n) {
    struct device *d = tu_device();
    int64_t ne[3] = {b, m, n};
    size_t sz = numel(3, ne);
    float *x = tu_random(sz, 300 + (uint32_t)m, -2, 2), *out = malloc(sz * sizeof *out);
    double *ref = malloc(sz * sizeof *ref);
    struct cg_graph *g = graph();
    struct cg_tensor *in = cg_input(g, "x", 3, ne), *y = cg_transpose(g, in);
    const float *data[] = {x};
    tu_run(d, g, 1, &in, data, y, out);
    for (int64_t p = 0; p < b; p++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) ref[(p * n + j) * m + i] = x[(p * m + i) * n + j];
    assert_exact(out, ref, sz, "transpose");
    free(x);
    free(out);
    free(ref);
    cg_destroy(g);
}

static void test_transpose(void **state) {
    (void)state;
    transpose_case(3, 37, 65);
    transpose_case(1, 64, 64);
    transpose_case(2, 1, 33);
    transpose_case(1, 70, 1);
}

/* ---- timestep embedding ------------------------------------------------ */

/* torch's fp32 arithmetic step by step (this file is built without
 * contraction: -std=c11 turns -ffp-contract off), then sin/cos of the fp32
 * argument in double. */
static void ref_temb(const float *t, int nb, int dim, bool flip, float shift, float period, double *ref) {
    int half = dim / 2;
    float c = (float)-log((double)period), den = (float)((double)half - (double)shift);
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < half; i++) {
            float e1 = c * (float)i;
            float e2 = e1 / den;
            float freq = (float)exp((double)e2); /* correctly rounded fp32 exp */
            float arg = t[b] * freq;
            double s = sin((double)arg), co = cos((double)arg);
            ref[b * dim + i] = flip ? co : s;
            ref[b * dim + half + i] = flip ? s : co;
        }
}

static void test_timestep_embed(void **state) {
    (void)state;
    struct device *d = tu_device();
    const float t[] = {0.0f, 1.0f, 0.5f, 999.0f, 999.0249f, 1000.0f, 500.25f};
    enum { NB = sizeof t / sizeof t[0] };
    const int dims[] = {8, 320};
    double worst = 0, worst1000 = 0;
    for (int di = 0; di < 2; di++)
        for (int flip = 0; flip < 2; flip++)
            for (int shift = 0; shift < 2; shift++) {
                int dim = dims[di];
                size_t n = (size_t)NB * (size_t)dim;
                float *out = malloc(n * sizeof *out);
                double *ref = malloc(n * sizeof *ref);
                struct cg_graph *g = graph();
                int64_t nb = NB;
                struct cg_tensor *in = cg_input(g, "t", 1, &nb);
                struct cg_tensor *y = cg_timestep_embed(g, in, dim, flip, (float)shift, 10000.0f);
                const float *data[] = {t};
                tu_run(d, g, 1, &in, data, y, out);
                ref_temb(t, NB, dim, flip, (float)shift, 10000.0f, ref);
                double maxabs = 0, max1000 = 0;
                for (size_t i = 0; i < n; i++) {
                    double e = fabs(out[i] - ref[i]);
                    maxabs = fmax(maxabs, e);
                    if (i / (size_t)dim == 5) max1000 = fmax(max1000, e);
                }
                double err = tu_rel_l2(out, ref, n);
                print_message("timestep_embed dim %d flip %d shift %d: rel L2 %.2e, max abs %.2e (t=1000: %.2e)\n",
                              dim, flip, shift, err, maxabs, max1000);
                assert_true(err <= 1e-5);
                assert_true(maxabs <= 1e-6);
                worst = fmax(worst, maxabs);
                worst1000 = fmax(worst1000, max1000);
                free(out);
                free(ref);
                cg_destroy(g);
            }
    print_message("timestep_embed: worst max abs %.2e, at t=1000 %.2e\n", worst, worst1000);
}

/* SDXL's size conditioning embeds values up to ~4096 with 256 dims; the
 * reduction stays exact there too. */
static void test_timestep_embed_large(void **state) {
    (void)state;
    struct device *d = tu_device();
    const float t[] = {1024.0f, 4096.0f, 3.0f, 2048.0f, 1344.0f};
    enum { NB = sizeof t / sizeof t[0], DIM = 256 };
    float *out = malloc(NB * DIM * sizeof *out);
    double *ref = malloc(NB * DIM * sizeof *ref);
    struct cg_graph *g = graph();
    int64_t nb = NB;
    struct cg_tensor *in = cg_input(g, "t", 1, &nb);
    struct cg_tensor *y = cg_timestep_embed(g, in, DIM, true, 0.0f, 10000.0f);
    const float *data[] = {t};
    tu_run(d, g, 1, &in, data, y, out);
    ref_temb(t, NB, DIM, true, 0.0f, 10000.0f, ref);
    double maxabs = 0;
    for (int i = 0; i < NB * DIM; i++) maxabs = fmax(maxabs, fabs(out[i] - ref[i]));
    print_message("timestep_embed dim 256, t up to 4096: max abs %.2e\n", maxabs);
    assert_true(maxabs <= 1e-6);
    free(out);
    free(ref);
    cg_destroy(g);
}

/* ---- the 2-D grid ------------------------------------------------------ */

/* More than 65535 * 256 elements: the flat index spans a second grid row,
 * for the unary and the (broadcasting) binary kernel. */
static void test_grid_split(void **state) {
    (void)state;
    struct device *d = tu_device();
    int64_t n = 17000003;
    assert_true(n > 65535ll * 256);
    float *x = tu_random((size_t)n, 400, -4, 4), *out = malloc((size_t)n * sizeof *out);
    const float bias = 0.375f;
    struct cg_graph *g = graph();
    int64_t one = 1;
    struct cg_tensor *in = cg_input(g, "x", 1, &n), *tb = cg_input(g, "b", 1, &one);
    /* 2x is exact, so x*2 + 0.25 rounds the same fused or not */
    struct cg_tensor *y = cg_add(g, cg_unary(g, CG_SCALE, in, 2.0f, 0.25f), tb);
    struct cg_tensor *ins[] = {in, tb};
    const float *data[] = {x, &bias};
    tu_run(d, g, 2, ins, data, y, out);
    for (int64_t i = 0; i < n; i++) {
        float want = (x[i] * 2.0f + 0.25f) + bias;
        if (out[i] != want) fail_msg("element %lld: %g != %g", (long long)i, out[i], want);
    }
    free(x);
    free(out);
    cg_destroy(g);
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary),
        cmocka_unit_test(test_binary_same_shape),
        cmocka_unit_test(test_binary_channel_bias),
        cmocka_unit_test(test_binary_per_sample),
        cmocka_unit_test(test_binary_both_broadcast),
        cmocka_unit_test(test_binary_scalar),
        cmocka_unit_test(test_binary_f16_operand),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_upsample2x),
        cmocka_unit_test(test_upsample_to_size),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_transpose),
        cmocka_unit_test(test_timestep_embed),
        cmocka_unit_test(test_timestep_embed_large),
        cmocka_unit_test(test_grid_split),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
