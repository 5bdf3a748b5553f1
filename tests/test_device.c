/* Device, buffers (direct and staged), the >128 MiB tensor, the arena
 * planner and program replay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

static void test_caps(void **state) {
    (void)state;
    struct device *d = tu_device();
    const struct dev_caps *c = dev_caps(d);
    assert_true(c->buffer_device_address);
    assert_true(c->subgroup_size >= 1);
    assert_true(c->max_storage_buffer_range > 0);
    assert_true(c->max_allocation_size >= (uint64_t)1 << 30); /* the minimum Vulkan 1.1 requires; NVIDIA reports less than its storage range */
    struct dev_caps list[8];
    bool usable[8];
    int n = 0;
    assert_int_equal(dev_list(list, usable, 8, &n), DF_OK);
    assert_true(n >= 1);
}

static void roundtrip(struct device *d) {
    size_t n = 1000003;  /* odd, and larger than one page */
    float *x = tu_random(n, 7, -3, 3), *y = malloc(n * sizeof *y);
    struct buf *b;
    assert_int_equal(buf_create(d, n * 4 + 64, &b), DF_OK);
    assert_int_equal(buf_write(b, 64, x, n * 4), DF_OK);
    memset(y, 0, n * 4);
    assert_int_equal(buf_read(b, 64, y, n * 4), DF_OK);
    assert_memory_equal(x, y, n * 4);
    /* out-of-range access is refused, not performed */
    assert_int_equal(buf_write(b, n * 4, x, 128), DF_EINVAL);
    assert_int_equal(buf_fill(b, 0, 16, 0x3f800000u), DF_OK);
    assert_int_equal(buf_read(b, 0, y, 16), DF_OK);
    for (int i = 0; i < 4; i++) assert_true(y[i] == 1.0f);
    buf_destroy(b);
    free(x);
    free(y);
    tu_check_validation(d);
}

static void test_buffers_direct(void **state) {
    (void)state;
    roundtrip(tu_device());
}

static void test_buffers_staging(void **state) {
    (void)state;
    roundtrip(tu_device_staging());
}

/* A kernel chain over a tensor larger than maxStorageBufferRange (128 MiB
 * on lavapipe): buffer device addresses mean no descriptor ever binds it. */
static void big_tensor(struct device *d) {
    int64_t n = (140ll << 20) / 4 + 7;
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *x = cg_input(g, "x", 1, &n);
    struct cg_tensor *y = cg_scale(g, x, 2.0f);
    float *in = tu_random((size_t)n, 3, -1, 1), *out = malloc((size_t)n * 4);
    assert_true(cg_nbytes(x) > dev_caps(d)->max_storage_buffer_range || dev_caps(d)->max_storage_buffer_range > (1ull << 30));
    const float *data[] = {in};
    tu_run(d, g, 1, &x, data, y, out);
    for (int64_t i = 0; i < n; i++)
        if (out[i] != 2.0f * in[i]) fail_msg("element %lld: %g != %g", (long long)i, out[i], 2.0f * in[i]);
    free(in);
    free(out);
    cg_destroy(g);
}

static void test_big_tensor(void **state) {
    (void)state;
    big_tensor(tu_device());
}

static void test_big_tensor_staging(void **state) {
    (void)state;
    big_tensor(tu_device_staging());
}

/* The planner reuses dead memory: a chain of n same-size ops needs about
 * three live tensors, not n. */
static void test_plan_reuse(void **state) {
    (void)state;
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t ne = 1000;
    struct cg_tensor *x = cg_input(g, "x", 1, &ne), *h = x;
    for (int i = 0; i < 50; i++) h = cg_silu(g, h);
    cg_output(g, h);
    uint64_t bytes = 0;
    assert_int_equal(cg_plan(g, &bytes), DF_OK);
    assert_true(bytes <= 3 * 4096);
    assert_true(bytes >= 3 * 4000);
    cg_destroy(g);
}

/* Shape errors are reported once, at the end, with both shapes. */
static void test_graph_errors(void **state) {
    (void)state;
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *a = cg_input(g, "a", 2, (int64_t[]){3, 5});
    struct cg_tensor *b = cg_input(g, "b", 2, (int64_t[]){4, 5});
    assert_null(cg_add(g, a, b));
    assert_null(cg_silu(g, NULL));
    assert_int_equal(cg_status(g), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "[3, 5]"));
    assert_non_null(strstr(df_errmsg(), "[4, 5]"));
    uint64_t bytes;
    assert_int_equal(cg_plan(g, &bytes), DF_EINVAL);
    cg_destroy(g);
}

/* Replay: the same recorded program, new inputs, new results. */
static void test_replay(void **state) {
    (void)state;
    struct device *d = tu_device();
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t ne[2] = {5, 33};
    struct cg_tensor *x = cg_input(g, "x", 2, ne), *t = cg_input(g, "t", 1, ne + 1);
    struct cg_tensor *y = cg_add(g, cg_silu(g, x), t);
    cg_output(g, y);
    struct program *p;
    assert_int_equal(prog_create(d, g, &(struct prog_options){.profile = true}, &p), DF_OK);
    float *out = malloc(165 * 4);
    for (int step = 0; step < 3; step++) {
        float *xin = tu_random(165, 10 + step, -4, 4), *tin = tu_random(33, 20 + step, -1, 1);
        assert_int_equal(prog_write(p, x, xin), DF_OK);
        assert_int_equal(prog_write(p, t, tin), DF_OK);
        assert_int_equal(prog_run(p), DF_OK);
        assert_int_equal(prog_read(p, y, out), DF_OK);
        for (int i = 0; i < 165; i++) {
            double v = xin[i] / (1.0 + exp(-(double)xin[i])) + tin[i % 33];
            assert_true(fabs(out[i] - v) <= 1e-5 * (1 + fabs(v)));
        }
        free(xin);
        free(tin);
    }
    struct prog_timing tm[8];
    int nd = prog_profile(p, tm, 8);
    if (dev_caps(d)->timestamps) {
        assert_int_equal(nd, 2);
        assert_string_equal(tm[0].kernel, "unary");
        assert_true(tm[1].ms >= 0);
    }
    free(out);
    prog_destroy(p);
    cg_destroy(g);
    tu_check_validation(d);
}

/* An arena too small for the pass fails before anything runs. */
static void test_arena_too_small(void **state) {
    (void)state;
    struct device *d = tu_device();
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t ne = 100000;
    struct cg_tensor *x = cg_input(g, "x", 1, &ne);
    cg_output(g, cg_silu(g, x));
    struct buf *arena;
    assert_int_equal(buf_create(d, 4096, &arena), DF_OK);
    struct program *p = NULL;
    assert_int_equal(prog_create(d, g, &(struct prog_options){.arena = arena}, &p), DF_ENOMEM);
    assert_null(p);
    assert_non_null(strstr(df_errmsg(), "activations"));
    buf_destroy(arena);
    cg_destroy(g);
}

/* A buffer beyond the allocation limit is an error, not a crash. */
static void test_alloc_limit(void **state) {
    (void)state;
    struct device *d = tu_device();
    struct buf *b = NULL;
    assert_int_equal(buf_create(d, dev_caps(d)->max_allocation_size + 1, &b), DF_ENOMEM);
    assert_null(b);
    tu_check_validation(d);
}

/* Embedding lookup, fp32 and fp16 tables, with an out-of-range id. */
static void embed(enum dtype dt) {
    struct device *d = tu_device();
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t v = 53, dim = 37;
    float *table = tu_random((size_t)(v * dim), 5, -2, 2);
    if (dt == DT_F16) tu_round_f16(table, (size_t)(v * dim));
    struct buf *tb;
    struct cg_tensor *t = tu_weight(g, d, table, dt, 2, (int64_t[]){v, dim}, &tb);
    int64_t ne[2] = {3, 7};
    struct cg_tensor *ids = cg_input(g, "ids", 2, ne);
    struct cg_tensor *y = cg_embed(g, t, ids);
    float idv[21], *out = malloc(21 * (size_t)dim * 4);
    for (int i = 0; i < 21; i++) idv[i] = (float)((i * 17) % v);
    idv[20] = (float)v; /* out of range: zero row */
    const float *data[] = {idv};
    tu_run(d, g, 1, &ids, data, y, out);
    for (int i = 0; i < 21; i++)
        for (int j = 0; j < dim; j++) {
            float want = i == 20 ? 0.0f : table[(int)idv[i] * dim + j];
            assert_true(out[i * dim + j] == want);
        }
    free(table);
    free(out);
    buf_destroy(tb);
    cg_destroy(g);
}

static void test_embed_f32(void **state) {
    (void)state;
    embed(DT_F32);
}

static void test_embed_f16(void **state) {
    (void)state;
    embed(DT_F16);
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_buffers_direct),
        cmocka_unit_test(test_buffers_staging),
        cmocka_unit_test(test_big_tensor),
        cmocka_unit_test(test_big_tensor_staging),
        cmocka_unit_test(test_plan_reuse),
        cmocka_unit_test(test_graph_errors),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_arena_too_small),
        cmocka_unit_test(test_alloc_limit),
        cmocka_unit_test(test_embed_f32),
        cmocka_unit_test(test_embed_f16),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
