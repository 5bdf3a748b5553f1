/* Fused attention against a double-precision reference: self and cross
 * attention (Nk = 77, not a multiple of any tile or chunk), head dims 8 to
 * 160 and odd ones (scalar, zero-padded path), wide heads (200 to 1024:
 * the VAE's single 512-wide head), causal masking, peaky softmax from q, k
 * in [-3, 3], on every loop that serves the head dim (shared-memory tiles,
 * subgroup shuffles, wide heads with subgroupAdd or shared-memory sums,
 * the CPU drivers' GEMM-like loop; forced through kern_attn_force_path),
 * and 4096 x 4096 attention that must run with no N x N buffer (arena
 * checked, sampled rows compared). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../compute/kern_attn.h"
#include "../compute/selftest.h"
#include "testutil.h"

#define TOL_F32 1e-5

struct attn_case {
    int b, nq, nk, heads, d;
    bool causal;
};

/* Reference for query row i of (batch bi, head h): out[0..d). */
static void ref_row(const struct attn_case *c, const float *q, const float *k, const float *v, float scale,
                    int bi, int h, int i, double *out) {
    int64_t hd = (int64_t)c->heads * c->d;
    double *s = malloc((size_t)c->nk * sizeof *s);
    assert_non_null(s);
    const float *qr = q + ((int64_t)bi * c->nq + i) * hd + h * c->d;
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < c->nk; j++) {
        if (c->causal && j > i) {
            s[j] = -INFINITY;
            continue;
        }
        const float *kr = k + ((int64_t)bi * c->nk + j) * hd + h * c->d;
        double dot = 0;
        for (int e = 0; e < c->d; e++) dot += (double)qr[e] * kr[e];
        s[j] = scale * dot;
        mx = fmax(mx, s[j]);
    }
    for (int j = 0; j < c->nk; j++) {
        s[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx);
        sum += s[j];
    }
    for (int e = 0; e < c->d; e++) out[e] = 0;
    for (int j = 0; j < c->nk; j++) {
        const float *vr = v + ((int64_t)bi * c->nk + j) * hd + h * c->d;
        for (int e = 0; e < c->d; e++) out[e] += s[j] / sum * vr[e];
    }
    free(s);
}

/* Runs one case; compares every row, or `samples` rows spread over the
 * queries of every (batch, head) when samples > 0 (then it also runs twice:
 * a CPU driver compiles the pipeline at its first dispatch). Returns the
 * time of the (last) run alone. */
static double run_attn(const struct attn_case *c, enum attn_path path, int samples, uint64_t *arena_bytes) {
    struct device *d = tu_device();
    struct attn_plan pl;
    kern_attn_force_path(path);
    assert_true(kern_attn_plan(dev_caps(d), c->d, c->causal, &pl));
    int64_t hd = (int64_t)c->heads * c->d;
    size_t nq = (size_t)c->b * c->nq * hd, nk = (size_t)c->b * c->nk * hd;
    float *q = tu_random(nq, 100 + c->d, -3, 3), *k = tu_random(nk, 200 + c->nk, -3, 3);
    float *v = tu_random(nk, 300 + c->heads, -1, 1);
    float scale = 1.0f / sqrtf((float)c->d);

    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *tq = cg_input(g, "q", 3, (int64_t[]){c->b, c->nq, hd});
    struct cg_tensor *tk = cg_input(g, "k", 3, (int64_t[]){c->b, c->nk, hd});
    struct cg_tensor *tv = cg_input(g, "v", 3, (int64_t[]){c->b, c->nk, hd});
    struct cg_tensor *to = cg_attention(g, tq, tk, tv, c->heads, scale, c->causal);
    assert_non_null(to);
    cg_output(g, to);
    struct program *p = NULL;
    df_status st = prog_create(d, g, NULL, &p);
    kern_attn_force_path(ATTN_AUTO);
    if (st != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    if (arena_bytes) *arena_bytes = prog_arena_bytes(p);
    struct buf *arena = prog_arena(p);
    assert_int_equal(buf_fill(arena, 0, buf_size(arena) & ~(uint64_t)3, 0x7fc00000u), DF_OK);
    assert_int_equal(prog_write(p, tq, q), DF_OK);
    assert_int_equal(prog_write(p, tk, k), DF_OK);
    assert_int_equal(prog_write(p, tv, v), DF_OK);
    double secs = 0;
    for (int run = 0; run < (samples > 0 ? 2 : 1); run++) {
        double t0 = tu_seconds();
        if (prog_run(p) != DF_OK) fail_msg("prog_run: %s", df_errmsg());
        secs = tu_seconds() - t0;
    }
    float *o = malloc(nq * sizeof *o);
    assert_int_equal(prog_read(p, to, o), DF_OK);
    prog_destroy(p);
    tu_check_validation(d);

    int rows = samples > 0 && samples < c->nq ? samples : c->nq;
    size_t nref = (size_t)c->b * c->heads * rows * c->d;
    double *ref = malloc(nref * sizeof *ref);
    float *got = malloc(nref * sizeof *got);
    size_t at = 0;
    for (int bi = 0; bi < c->b; bi++)
        for (int h = 0; h < c->heads; h++)
            for (int ri = 0; ri < rows; ri++) {
                /* sampled rows: both ends and a spread in between */
                int i = rows == c->nq ? ri : (int)((int64_t)ri * (c->nq - 1) / (rows - 1));
                ref_row(c, q, k, v, scale, bi, h, i, ref + at);
                memcpy(got + at, o + ((int64_t)bi * c->nq + i) * hd + h * c->d, (size_t)c->d * sizeof *got);
                at += (size_t)c->d;
            }
    /* every output element, sampled or not, was written */
    for (size_t i = 0; i < nq; i++)
        if (isnan(o[i])) fail_msg("output element %zu not written (NaN poison)", i);
    double err = tu_rel_l2(got, ref, nref);
    char how[64];
    if (pl.path == ATTN_TILED) snprintf(how, sizeof how, "tiled %ux%u, %u B shared", pl.rows, pl.bk, pl.shared_bytes);
    else if (pl.path == ATTN_SUBGROUP) snprintf(how, sizeof how, "subgroup %u lanes x %u rows, %u keys/step", pl.wg, pl.rq, pl.kg);
    else if (pl.path == ATTN_WIDE_SG) snprintf(how, sizeof how, "wide_sg %u lanes, %u rows, %u keys/lane", pl.wg, pl.rows, pl.kg);
    else if (pl.path == ATTN_COOP) snprintf(how, sizeof how, "matrix %u subgroups, %u B shared", pl.rq, pl.shared_bytes);
    else snprintf(how, sizeof how, "wide %u lanes, %u rows, %u keys/step, %s", pl.wg, pl.rows, pl.kg,
                  pl.path == ATTN_WIDE ? "subgroupAdd" : "shared sums");
    print_message("  attention b%d nq%d nk%d h%d d%-4d%s %-44s%s: rel L2 %.3g, run %.3f s (%.2f GFLOP/s)\n", c->b,
                  c->nq, c->nk, c->heads, c->d, c->causal ? " causal" : "", how, rows < c->nq ? " sampled" : "", err,
                  secs, 4.0 * c->b * c->heads * c->nq * c->nk * c->d / (secs > 0 ? secs : 1e-9) * 1e-9);
    /* the matrix path multiplies fp16 operands: the project's fp16 bound */
    double tol = pl.path == ATTN_COOP ? 1e-2 : TOL_F32;
    if (!(err <= tol)) fail_msg("attention: relative L2 error %g > %g", err, tol);
    free(q);
    free(k);
    free(v);
    free(o);
    free(ref);
    free(got);
    cg_destroy(g);
    return secs;
}

/* Whether a forced path serves head dim d on the test device. */
static bool serves(enum attn_path path, int d) {
    struct attn_plan pl;
    kern_attn_force_path(path);
    bool ok = kern_attn_plan(dev_caps(tu_device()), d, false, &pl) && pl.path == path;
    kern_attn_force_path(ATTN_AUTO);
    return ok;
}

/* A case on each of `paths` that serves its head dim here. */
static void run_paths(const struct attn_case *c, int n, const enum attn_path *paths) {
    for (int i = 0; i < n; i++)
        if (serves(paths[i], c->d)) run_attn(c, paths[i], 0, NULL);
}

/* The loops small heads take: tiles (GPUs), subgroup shuffles and the
 * GEMM-like wide loop (CPU drivers). The wide GPU loops run on a few small
 * and odd cases here and on the wide heads (every CPU pipeline compile
 * costs seconds). */
static const enum attn_path small_paths[] = {ATTN_TILED, ATTN_SUBGROUP, ATTN_WIDE_SG};
static const enum attn_path tiled_sg_paths[] = {ATTN_TILED, ATTN_SUBGROUP};
static const enum attn_path all_paths[] = {ATTN_TILED, ATTN_SUBGROUP, ATTN_WIDE, ATTN_WIDE_SMEM, ATTN_WIDE_SG};
static const enum attn_path wide_paths[] = {ATTN_WIDE, ATTN_WIDE_SMEM, ATTN_WIDE_SG};
static void run_small(const struct attn_case *c) { run_paths(c, 3, small_paths); }
/* where the GEMM-like loop adds nothing another case does not test */
static void run_tiled_sg(const struct attn_case *c) { run_paths(c, 2, tiled_sg_paths); }
static void run_all(const struct attn_case *c) { run_paths(c, 5, all_paths); }
static void run_wide(const struct attn_case *c) { run_paths(c, 3, wide_paths); }

/* Every loop that serves the head dim of the case must serve it here: the
 * test device (lavapipe) has subgroup shuffles and arithmetic and int64;
 * a device without either runs what it can. */
static void require_paths(int d, int n, const enum attn_path *paths) {
    if (!dev_caps(tu_device())->shader_int64 || !dev_caps(tu_device())->subgroup_arithmetic) return;
    for (int i = 0; i < n; i++)
        if (!serves(paths[i], d)) fail_msg("attention path %d does not serve head dim %d on this device", paths[i], d);
}

/* The matrix path (where the device offers cooperative matrices; not
 * lavapipe) on odd lengths, padded head dims and several key steps. */
static void test_coop_attention(void **state) {
    (void)state;
    if (!serves(ATTN_COOP, 40)) {
        print_message("  no cooperative matrices on %s: matrix attention not run here\n", dev_caps(tu_device())->name);
        return;
    }
    static const struct attn_case cases[] = {
        {2, 33, 33, 3, 8, false}, {1, 150, 150, 2, 40, false}, {2, 37, 77, 2, 40, false},
        {1, 41, 29, 2, 80, false}, {1, 23, 31, 3, 13, false}, {1, 300, 4096, 1, 40, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attn(&cases[i], ATTN_COOP, 0, NULL);
}

/* The start-up check of attention paths (compute/selftest.c) passes the
 * device's own choice, and the matrix path where the device offers it. */
static void test_selftest(void **state) {
    (void)state;
    struct selftest_result r;
    assert_int_equal(selftest_attention(tu_device(), &r), DF_OK);
    print_message("  self-test, device's choice: %s %.2e, %s %.2e\n", r.what[0], r.err[0], r.what[1], r.err[1]);
    assert_true(r.passed);
    if (!serves(ATTN_COOP, 40)) return;
    kern_attn_force_path(ATTN_COOP);
    assert_int_equal(selftest_attention(tu_device(), &r), DF_OK);
    kern_attn_force_path(ATTN_AUTO);
    print_message("  self-test, matrix path: %s %.2e, %s %.2e\n", r.what[0], r.err[0], r.what[1], r.err[1]);
    assert_true(r.passed);
}

static void test_self_attention(void **state) {
    (void)state;
    run_tiled_sg(&(struct attn_case){2, 33, 33, 3, 8, false});
    run_tiled_sg(&(struct attn_case){1, 150, 150, 2, 8, false}); /* several query blocks and key tiles */
}

static void test_cross_attention(void **state) {
    (void)state;
    run_small(&(struct attn_case){2, 37, 77, 2, 40, false});
    run_tiled_sg(&(struct attn_case){1, 5, 77, 3, 8, false}); /* fewer queries than a block */
}

static void test_head_dims(void **state) {
    (void)state;
    run_small(&(struct attn_case){1, 19, 19, 2, 160, false});
    run_small(&(struct attn_case){2, 45, 50, 2, 64, false});
    run_tiled_sg(&(struct attn_case){1, 41, 29, 2, 80, false});
    run_all(&(struct attn_case){1, 23, 31, 3, 13, false}); /* odd: scalar loads, zero-padded vec4 */
}

/* Wide heads: the VAE mid-block's single 512-wide head at odd lengths on
 * every wide loop, two 256-wide heads (the device's loop) and 200 (not a
 * multiple of the lanes' columns: padded, clamped loads) cross attention
 * on every wide loop. Scalar loads and causal masking of the wide loops:
 * the head dim 13 cases above. */
static void test_wide_heads(void **state) {
    (void)state;
    require_paths(512, 3, wide_paths);
    run_wide(&(struct attn_case){1, 67, 67, 1, 512, false});
    run_attn(&(struct attn_case){1, 300, 300, 1, 512, false}, ATTN_AUTO, 0, NULL);
    run_attn(&(struct attn_case){1, 75, 75, 2, 256, false}, ATTN_AUTO, 0, NULL);
    run_wide(&(struct attn_case){2, 37, 53, 1, 200, false});
}

/* The VAE mid-block attention at a 256 x 256 image (1024 tokens, one
 * 512-wide head) on the device's own loop, sampled rows compared. */
static void test_vae_mid_block(void **state) {
    (void)state;
    run_attn(&(struct attn_case){1, 1024, 1024, 1, 512, false}, ATTN_AUTO, 24, NULL);
}

static void test_causal(void **state) {
    (void)state;
    run_small(&(struct attn_case){1, 77, 77, 2, 32, true});
    run_all(&(struct attn_case){2, 77, 77, 3, 13, true});
}

/* Every head dim up to the widest gets a plan on every loop (or, where a
 * forced loop cannot serve it, on the device's choice) within the device's
 * shared memory and lavapipe's 32 KiB, with each loop's invariants. */
static void test_plans(void **state) {
    (void)state;
    const struct dev_caps *caps = dev_caps(tu_device());
    for (int path = ATTN_AUTO; path <= ATTN_COOP; path++) {
        for (int d = 1; d <= ATTN_MAX_D; d++) {
            struct attn_plan pl, own;
            kern_attn_force_path(ATTN_AUTO);
            assert_true(kern_attn_plan(caps, d, false, &own));
            kern_attn_force_path((enum attn_path)path);
            assert_true(kern_attn_plan(caps, d, false, &pl));
            assert_true(pl.shared_bytes <= caps->max_shared_memory && pl.shared_bytes <= 32768);
            assert_true(pl.wg >= 1 && pl.wg <= caps->max_workgroup_invocations && pl.rows >= 1);
            switch (pl.path) {
            case ATTN_TILED: assert_true(d <= ATTN_TILED_MAX_D && pl.bk >= 4 && pl.rows == pl.wg); break;
            case ATTN_SUBGROUP:
                assert_true(d <= ATTN_SG_MAX_D && pl.wg == caps->subgroup_size && pl.wg % pl.kg == 0);
                assert_true(pl.rows == pl.wg * pl.rq);
                break;
            case ATTN_WIDE: assert_true(pl.wg == caps->subgroup_size && pl.shared_bytes == 0 && pl.kg >= 1); break;
            case ATTN_WIDE_SMEM: assert_true(pl.shared_bytes > 0 && pl.kg >= 1); break;
            case ATTN_WIDE_SG: assert_true(pl.wg == caps->subgroup_size && pl.kg >= 1 && pl.shared_bytes == 0); break;
            case ATTN_COOP: assert_true(d <= ATTN_TILED_MAX_D && pl.wg == 32 * pl.rq && pl.rows == 16 * pl.rq); break;
            default: fail_msg("unknown path %d", pl.path);
            }
            /* a forced loop that cannot serve d leaves the device's choice */
            if (path != ATTN_AUTO && pl.path != path) assert_int_equal(pl.path, own.path);
            /* tiled and subgroup fall back only past their head dims */
            if (path == ATTN_TILED) assert_true(d > ATTN_TILED_MAX_D || pl.path == ATTN_TILED);
            /* the device's own choice on a CPU driver: the measured fastest */
            if (path == ATTN_AUTO && caps->type == DEV_CPU)
                assert_int_equal(pl.path, d >= ATTN_WSG_MIN_D ? ATTN_WIDE_SG : ATTN_SUBGROUP);
        }
    }
    kern_attn_force_path(ATTN_AUTO);
    struct attn_plan pl;
    assert_false(kern_attn_plan(caps, ATTN_MAX_D + 1, false, &pl));
    assert_false(kern_attn_plan(caps, 0, false, &pl));
    /* causal masks never take the matrix path */
    kern_attn_force_path(ATTN_COOP);
    assert_true(kern_attn_plan(caps, 40, true, &pl));
    assert_int_not_equal(pl.path, ATTN_COOP);
    kern_attn_force_path(ATTN_AUTO);
}

/* 4096 queries x 4096 keys on the device's own choice of loop: the score
 * matrix alone would be 64 MiB. */
static void test_attention_4096(void **state) {
    (void)state;
    uint64_t arena = 0;
    double secs = run_attn(&(struct attn_case){1, 4096, 4096, 1, 40, false}, ATTN_AUTO, 48, &arena);
    print_message("  arena %llu bytes (the score matrix alone: %llu), run %.2f s\n", (unsigned long long)arena,
                  4096ull * 4096 * 4, secs);
    assert_true(arena < 4096ull * 4096 * 4 / 8);
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_self_attention),
        cmocka_unit_test(test_cross_attention),
        cmocka_unit_test(test_head_dims),
        cmocka_unit_test(test_causal),
        cmocka_unit_test(test_wide_heads),
        cmocka_unit_test(test_vae_mid_block),
        cmocka_unit_test(test_plans),
        cmocka_unit_test(test_coop_attention),
        cmocka_unit_test(test_selftest),
        cmocka_unit_test(test_attention_4096),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
