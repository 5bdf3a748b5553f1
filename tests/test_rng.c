/* Tests for models/rng.c: every out.* tensor of the torch_randn and
 * philox_randn oracle files, bit-exact (float bits compared, not values),
 * including the multi-call sequences that prove generator state carries over.
 * Fixtures come from $DF_TEST_FIXTURES (default ../shared/fixtures, run from
 * the repo root). Every helper is static: `make test` links this file with
 * the whole library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../models/rng.h"
#include "../models/safetensors.h"

static struct st_file *trng_open(const char *file)
{
    const char *dir = getenv("DF_TEST_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "../shared/fixtures", file);
    struct st_file *f = NULL;
    df_status st = st_open(path, &f);
    if (st != DF_OK)
        fail_msg("cannot open fixture %s: %s", path, df_errmsg());
    return f;
}

static float *trng_expected(const struct st_tensor *t)
{
    float *v = malloc((size_t)t->numel * sizeof *v + 1);
    assert_non_null(v);
    assert_int_equal(st_to_f32(t, v), DF_OK);
    return v;
}

/* Compares float bits and names the first differing element. */
static void trng_check_bits(const char *name, const float *got, const float *want, size_t n)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(got + i, want + i, sizeof(float)) != 0) {
            if (bad++ == 0)
                first = i;
        }
    }
    if (bad)
        fail_msg("%s: %zu of %zu values differ; first at %zu: got %.9g want %.9g", name, bad, n,
                 first, (double)got[first], (double)want[first]);
}

/* Draws `ncalls` tensors in order from one generator and checks the last. */
static void trng_check_sequence(enum rng_kind kind, uint64_t seed, const struct st_tensor **calls,
                                int ncalls)
{
    struct rng *r;
    assert_int_equal(rng_create(kind, seed, &r), DF_OK);
    for (int k = 0; k < ncalls; k++) {
        size_t n = (size_t)calls[k]->numel;
        float *got = malloc(n * sizeof *got + 1);
        assert_non_null(got);
        assert_int_equal(rng_randn(r, got, n), DF_OK);
        if (k == ncalls - 1) {
            float *want = trng_expected(calls[k]);
            trng_check_bits(calls[k]->name, got, want, n);
            free(want);
        }
        free(got);
    }
    rng_destroy(r);
}

/* out.randn.seed{S}.shape{..}: fresh generator, one call.
 * out.randn_sequence.seed{S}.{first,second,third}_{shape}: one generator. */
static void test_torch_fixture(void **state)
{
    (void)state;
    struct st_file *f = trng_open("torch_randn.safetensors");
    static const char *const order[] = {"first_", "second_", "third_"};
    int checked = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (strncmp(t->name, "out.", 4) != 0)
            continue;
        uint64_t seed;
        int pos = 0;
        if (sscanf(t->name, "out.randn.seed%" SCNu64 ".shape%n", &seed, &pos) == 1 && pos > 0) {
            trng_check_sequence(RNG_TORCH_CPU, seed, &t, 1);
            checked++;
        } else if (sscanf(t->name, "out.randn_sequence.seed%" SCNu64 ".%n", &seed, &pos) == 1 &&
                   pos > 0) {
            const char *rest = t->name + pos;
            int k = -1;
            for (int j = 0; j < 3; j++)
                if (strncmp(rest, order[j], strlen(order[j])) == 0)
                    k = j;
            if (k < 0)
                fail_msg("unrecognised fixture tensor %s", t->name);
            /* the earlier calls of this sequence, found by their prefix */
            const struct st_tensor *calls[3] = {NULL, NULL, NULL};
            char prefix[128];
            for (int j = 0; j <= k; j++) {
                snprintf(prefix, sizeof prefix, "out.randn_sequence.seed%" PRIu64 ".%s", seed,
                         order[j]);
                for (size_t m = 0; m < st_count(f); m++)
                    if (strncmp(st_at(f, m)->name, prefix, strlen(prefix)) == 0)
                        calls[j] = st_at(f, m);
                assert_non_null(calls[j]);
            }
            trng_check_sequence(RNG_TORCH_CPU, seed, calls, k + 1);
            checked++;
        } else {
            fail_msg("unrecognised fixture tensor %s", t->name);
        }
    }
    assert_int_equal(checked, 23); /* 5 seeds x 4 shapes + a 3-call sequence */
    st_close(f);
}

/* out.philox.seed{S}.shape{..}: fresh generator, one call.
 * out.philox_sequence.seed{S}.call{k}.shape{..}: the k-th call of one. */
static void test_philox_fixture(void **state)
{
    (void)state;
    struct st_file *f = trng_open("philox_randn.safetensors");
    int checked = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (strncmp(t->name, "out.", 4) != 0)
            continue;
        uint64_t seed;
        int k, pos = 0;
        if (sscanf(t->name, "out.philox.seed%" SCNu64 ".shape%n", &seed, &pos) == 1 && pos > 0) {
            trng_check_sequence(RNG_PHILOX, seed, &t, 1);
            checked++;
        } else if (sscanf(t->name, "out.philox_sequence.seed%" SCNu64 ".call%d.%n", &seed, &k,
                          &pos) == 2 && pos > 0 && k >= 0 && k < 8) {
            const struct st_tensor *calls[8] = {NULL};
            char prefix[128];
            for (int j = 0; j <= k; j++) {
                snprintf(prefix, sizeof prefix, "out.philox_sequence.seed%" PRIu64 ".call%d.",
                         seed, j);
                for (size_t m = 0; m < st_count(f); m++)
                    if (strncmp(st_at(f, m)->name, prefix, strlen(prefix)) == 0)
                        calls[j] = st_at(f, m);
                assert_non_null(calls[j]);
            }
            trng_check_sequence(RNG_PHILOX, seed, calls, k + 1);
            checked++;
        } else {
            fail_msg("unrecognised fixture tensor %s", t->name);
        }
    }
    assert_int_equal(checked, 30); /* 5 seeds x (3 shapes + 3 sequence calls) */
    st_close(f);
}

/* The scalar path (n < 16) caches the second Box-Muller value in the
 * generator, so two odd-sized calls continue one stream: randn(3) then
 * randn(3) must equal randn(6). The block path (n >= 16) does not touch
 * that cache. */
static void test_torch_scalar_cache_carries_over(void **state)
{
    (void)state;
    struct rng *a, *b;
    float x[6], y[6];
    assert_int_equal(rng_create(RNG_TORCH_CPU, 1234, &a), DF_OK);
    assert_int_equal(rng_create(RNG_TORCH_CPU, 1234, &b), DF_OK);
    assert_int_equal(rng_randn(a, x, 3), DF_OK);
    assert_int_equal(rng_randn(a, x + 3, 3), DF_OK);
    assert_int_equal(rng_randn(b, y, 6), DF_OK);
    assert_memory_equal(x, y, sizeof x);
    rng_destroy(a);
    rng_destroy(b);
}

/* The torch generator keeps the low 32 bits of the seed, as torch does. */
static void test_torch_seed_low_32_bits(void **state)
{
    (void)state;
    struct rng *a, *b;
    float x[32], y[32];
    assert_int_equal(rng_create(RNG_TORCH_CPU, 7, &a), DF_OK);
    assert_int_equal(rng_create(RNG_TORCH_CPU, (UINT64_C(1) << 32) + 7, &b), DF_OK);
    assert_int_equal(rng_randn(a, x, 32), DF_OK);
    assert_int_equal(rng_randn(b, y, 32), DF_OK);
    assert_memory_equal(x, y, sizeof x);
    rng_destroy(a);
    rng_destroy(b);
}

static void test_empty_draw_and_errors(void **state)
{
    (void)state;
    struct rng *r;
    assert_int_equal(rng_create(RNG_PHILOX, 1, &r), DF_OK);
    assert_int_equal(rng_randn(r, NULL, 0), DF_OK);
    assert_int_equal(rng_randn(NULL, NULL, 0), DF_EINVAL);
    rng_destroy(r);
    assert_int_equal(rng_create((enum rng_kind)99, 1, &r), DF_EINVAL);
    assert_null(r);
}

static void test_kind_names(void **state)
{
    (void)state;
    enum rng_kind k;
    assert_int_equal(rng_kind_from_name("torch", &k), DF_OK);
    assert_int_equal(k, RNG_TORCH_CPU);
    assert_int_equal(rng_kind_from_name("CPU", &k), DF_OK);
    assert_int_equal(k, RNG_TORCH_CPU);
    assert_int_equal(rng_kind_from_name("a1111", &k), DF_OK);
    assert_int_equal(k, RNG_PHILOX);
    assert_int_equal(rng_kind_from_name("philox", &k), DF_OK);
    assert_int_equal(k, RNG_PHILOX);
    assert_int_equal(rng_kind_from_name("GPU", &k), DF_OK);
    assert_int_equal(k, RNG_PHILOX);
    assert_int_equal(rng_kind_from_name("nv", &k), DF_EINVAL);
    assert_int_equal(rng_kind_from_name(NULL, &k), DF_EINVAL);
}

static void test_random_seed_range(void **state)
{
    (void)state;
    uint64_t prev = rng_random_seed();
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        uint64_t s = rng_random_seed();
        assert_true(s < UINT64_C(4294967294));
        differ |= s != prev;
        prev = s;
    }
    assert_true(differ);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torch_fixture),
        cmocka_unit_test(test_philox_fixture),
        cmocka_unit_test(test_torch_scalar_cache_carries_over),
        cmocka_unit_test(test_torch_seed_low_32_bits),
        cmocka_unit_test(test_empty_draw_and_errors),
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_random_seed_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
