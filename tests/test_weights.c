/* models/weights.c: renames and derived tensors (row blocks, transposes)
 * on small in-memory files, read back from the device in fp32 and fp16;
 * shapes that do not allow the operation are errors naming the tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../models/weights.h"
#include "testutil.h"

/* An in-memory safetensors image of F32 tensors given as (name, shape). */
struct tw_tensor {
    const char *name;
    int ndim;
    int64_t shape[2];
};

/* Values: tensor k, element i holds 100*k + i. */
static uint8_t *tw_image(const struct tw_tensor *t, int n, size_t *len) {
    char header[4096];
    size_t used = (size_t)snprintf(header, sizeof header, "{"), data = 0;
    for (int k = 0; k < n; k++) {
        int64_t numel = 1;
        for (int d = 0; d < t[k].ndim; d++) numel *= t[k].shape[d];
        used += (size_t)snprintf(header + used, sizeof header - used, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                                 k ? "," : "", t[k].name);
        for (int d = 0; d < t[k].ndim; d++)
            used += (size_t)snprintf(header + used, sizeof header - used, d ? ",%lld" : "%lld",
                                     (long long)t[k].shape[d]);
        used += (size_t)snprintf(header + used, sizeof header - used, "],\"data_offsets\":[%zu,%zu]}", data,
                                 data + (size_t)numel * 4);
        data += (size_t)numel * 4;
    }
    used += (size_t)snprintf(header + used, sizeof header - used, "}");
    while (used % 8 && used + 1 < sizeof header) header[used++] = ' '; /* aligned data, as writers pad */
    assert_true(used < sizeof header);
    *len = 8 + used + data;
    uint8_t *img = malloc(*len);
    assert_non_null(img);
    uint64_t hl = used;
    memcpy(img, &hl, 8);
    memcpy(img + 8, header, used);
    float *v = (float *)(img + 8 + used);
    for (int k = 0; k < n; k++) {
        int64_t numel = 1;
        for (int d = 0; d < t[k].ndim; d++) numel *= t[k].shape[d];
        for (int64_t i = 0; i < numel; i++) *v++ = (float)(100 * k + i);
    }
    return img;
}

/* Weight `name` read back as floats (n values). */
static void tw_read(struct weights *w, const char *name, int ndim, const int64_t *ne, float *out, int n) {
    struct wt t;
    if (wts_take(w, name, ndim, ne, &t) != DF_OK) fail_msg("%s", df_errmsg());
    if (t.dtype == DT_F16) {
        uint16_t h[64];
        assert_true(n <= 64);
        assert_int_equal(buf_read(t.buf, t.offset, h, (uint64_t)(n + 1) / 2 * 4), DF_OK);
        for (int i = 0; i < n; i++) out[i] = st_half_to_float(h[i]);
    } else {
        assert_int_equal(t.dtype, DT_F32);
        assert_int_equal(buf_read(t.buf, t.offset, out, (uint64_t)n * 4), DF_OK);
    }
}

/* Renamed first, derived by the new name: packed rows split in three, a
 * matrix transposed, a vector split; the stored names are gone. */
static void derive_in(enum wts_precision prec) {
    const struct tw_tensor t[] = {
        {"m.l0.packed.weight", 2, {6, 2}}, /* tensor 0: 0..11 */
        {"m.proj", 2, {2, 3}},             /* tensor 1: 100..105 */
        {"m.l0.packed.bias", 1, {6}},      /* tensor 2: 200..205 */
        {"m.other", 1, {2}},               /* tensor 3: 300, 301 */
    };
    size_t len;
    uint8_t *img = tw_image(t, 4, &len);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, len, &f), DF_OK);
    const struct wts_rename r[] = {{"m.", "n.", NULL}};
    const struct wts_derive d[] = {
        {".packed.weight", ".q.weight", WTS_ROWS, 0, 3},
        {".packed.weight", ".k.weight", WTS_ROWS, 1, 3},
        {".packed.weight", ".v.weight", WTS_ROWS, 2, 3},
        {".packed.bias", ".k.bias", WTS_ROWS, 1, 3},
        {"n.proj", "n.proj.weight", WTS_TRANSPOSE, 0, 0},
    };
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), prec, &w), DF_OK);
    if (wts_load_derived(w, f, "m.", r, 1, d, 5) != DF_OK) fail_msg("%s", df_errmsg());
    float got[8];
    const char *qkv[] = {"n.l0.q.weight", "n.l0.k.weight", "n.l0.v.weight"};
    for (int p = 0; p < 3; p++) {
        tw_read(w, qkv[p], 2, (int64_t[]){2, 2}, got, 4);
        for (int i = 0; i < 4; i++) assert_float_equal(got[i], (float)(4 * p + i), 0);
    }
    tw_read(w, "n.proj.weight", 2, (int64_t[]){3, 2}, got, 6);
    const float tr[] = {100, 103, 101, 104, 102, 105};
    for (int i = 0; i < 6; i++) assert_float_equal(got[i], tr[i], 0);
    tw_read(w, "n.l0.k.bias", 1, (int64_t[]){2}, got, 2);
    assert_float_equal(got[0], 202, 0);
    assert_float_equal(got[1], 203, 0);
    tw_read(w, "n.other", 1, (int64_t[]){2}, got, 2);
    assert_float_equal(got[1], 301, 0);
    assert_false(wts_has(w, "n.l0.packed.weight", NULL, NULL));
    assert_false(wts_has(w, "n.proj", NULL, NULL));
    assert_false(wts_has(w, "n.l0.q.bias", NULL, NULL));
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    assert_int_equal(wts_parameter_count(w), 12 + 6 + 2 + 2);
    wts_destroy(w);
    st_close(f);
    free(img);
    tu_check_validation(tu_device());
}

static void test_derive_f32(void **state) {
    (void)state;
    derive_in(WTS_F32);
}

static void test_derive_f16(void **state) {
    (void)state;
    derive_in(WTS_F16);
}

static void expect_error(const struct tw_tensor *t, int n, const struct wts_derive *d, int nd, const char *needle) {
    size_t len;
    uint8_t *img = tw_image(t, n, &len);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, len, &f), DF_OK);
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    assert_int_equal(wts_load_derived(w, f, "", NULL, 0, d, nd), DF_EFORMAT);
    if (!strstr(df_errmsg(), needle)) fail_msg("message \"%s\" lacks \"%s\"", df_errmsg(), needle);
    wts_destroy(w);
    st_close(f);
    free(img);
}

static void test_derive_errors(void **state) {
    (void)state;
    const struct wts_derive thirds[] = {{".in_proj", ".q", WTS_ROWS, 0, 3}};
    expect_error((const struct tw_tensor[]){{"a.in_proj", 2, {7, 2}}}, 1, thirds, 1, "\"a.in_proj\": 7 rows");
    const struct wts_derive tr[] = {{"proj", "proj.weight", WTS_TRANSPOSE, 0, 0}};
    expect_error((const struct tw_tensor[]){{"proj", 1, {4}}}, 1, tr, 1, "\"proj\" has 1 dims");
    /* a derived name that a stored tensor already has */
    const struct tw_tensor clash[] = {{"x.in_proj", 2, {6, 2}}, {"x.q", 2, {2, 2}}};
    expect_error(clash, 2, thirds, 1, "\"x.q\"");
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derive_f32),
        cmocka_unit_test(test_derive_f16),
        cmocka_unit_test(test_derive_errors),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
