/* Tests for models/safetensors.c: valid files read back exactly, hostile
 * headers give DF_EFORMAT naming the tensor, and the fuzz corpus replays
 * without crashing. Every helper is static: this file is linked with the
 * whole library by `make test`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../models/safetensors.h"

#define CORPUS_DIR "tests/corpus/safetensors"

/* header length (LE u64) + header + data, in an exactly-sized heap buffer so
 * ASan catches any read past the end. */
static uint8_t *stt_image(const char *header, const void *data, size_t dlen,
                          size_t *len) {
    size_t hl = strlen(header);
    *len = 8 + hl + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (dlen)
        memcpy(b + 8 + hl, data, dlen);
    return b;
}

static char *stt_write_tmp(const void *bytes, size_t len) {
    char *path = strdup("/tmp/test_safetensors_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    close(fd);
    return path;
}

static void stt_put_f32(uint8_t *p, float v) { memcpy(p, &v, 4); }
static void stt_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void stt_put_f64(uint8_t *p, double v) { memcpy(p, &v, 8); }

/* A file mixing dtypes, with F32 data at an odd (unaligned) offset and a
 * zero-sized tensor. */
static const char stt_valid_header[] =
    "{\"mask\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
    "\"w.f32\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[1,25]},"
    "\"w.f16\":{\"dtype\":\"F16\",\"shape\":[12],\"data_offsets\":[25,49]},"
    "\"w.bf16\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[49,55]},"
    "\"steps\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[55,71]},"
    "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[71,71]},"
    "\"w.f64\":{\"dtype\":\"F64\",\"shape\":[4],\"data_offsets\":[71,103]},"
    "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[103,107]},"
    "\"__metadata__\":{\"format\":\"pt\",\"note\":\"hi\"}}    ";

static const uint16_t stt_f16_bits[12] = {
    0x3c00, 0xc000, 0x0001, 0x03ff, 0x7c00, 0xfc00,
    0x7e00, 0x7bff, 0x8000, 0x0400, 0x3555, 0x8001,
};

static uint8_t *stt_valid_image(size_t *len) {
    uint8_t d[107] = {0};
    d[0] = 7;
    for (int i = 0; i < 6; i++)
        stt_put_f32(d + 1 + 4 * i, (float)i * 1.5f - 2.0f);
    for (int i = 0; i < 12; i++)
        stt_put_u16(d + 25 + 2 * i, stt_f16_bits[i]);
    stt_put_u16(d + 49, 0x3f80); /* 1.0 */
    stt_put_u16(d + 51, 0xc040); /* -3.0 */
    stt_put_u16(d + 53, 0x7f80); /* inf */
    int64_t s[2] = {1000, -5};
    memcpy(d + 55, s, sizeof s);
    stt_put_f64(d + 71, 0.25);
    stt_put_f64(d + 79, -1e300);
    stt_put_f64(d + 87, 1e300);
    stt_put_f64(d + 95, 1e-50);
    stt_put_f32(d + 103, 42.0f);
    return stt_image(stt_valid_header, d, sizeof d, len);
}

static void stt_check_valid(const struct st_file *f) {
    static const char *order[] = {"mask", "w.f32", "w.f16", "w.bf16",
                                  "steps", "empty", "w.f64", "scalar"};
    assert_int_equal(st_count(f), 8);
    for (size_t i = 0; i < 8; i++) {
        assert_string_equal(st_at(f, i)->name, order[i]);
        assert_ptr_equal(st_find(f, order[i]), st_at(f, i));
    }
    assert_null(st_at(f, 8));
    assert_null(st_find(f, "missing"));
    assert_null(st_find(f, "__metadata__"));
    assert_string_equal(st_metadata(f, "format"), "pt");
    assert_string_equal(st_metadata(f, "note"), "hi");
    assert_null(st_metadata(f, "nope"));

    float out[12];
    const struct st_tensor *t = st_find(f, "w.f32");
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 6);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal(st_to_f32(t, out), DF_OK);
    for (int i = 0; i < 6; i++)
        assert_true(out[i] == (float)i * 1.5f - 2.0f);

    t = st_find(f, "w.f16");
    assert_int_equal(st_to_f32(t, out), DF_OK);
    assert_true(out[0] == 1.0f);
    assert_true(out[1] == -2.0f);
    assert_true(out[2] == 0x1p-24f);            /* smallest subnormal */
    assert_true(out[3] == 1023 * 0x1p-24f);     /* largest subnormal */
    assert_true(isinf(out[4]) && out[4] > 0);
    assert_true(isinf(out[5]) && out[5] < 0);
    assert_true(isnan(out[6]));
    assert_true(out[7] == 65504.0f);
    assert_true(out[8] == 0.0f && signbit(out[8]));
    assert_true(out[9] == 0x1p-14f);            /* smallest normal */
    assert_true(out[10] == 0x1.554p-2f);        /* ~1/3 */
    assert_true(out[11] == -0x1p-24f);

    t = st_find(f, "w.bf16");
    assert_int_equal(st_to_f32(t, out), DF_OK);
    assert_true(out[0] == 1.0f && out[1] == -3.0f && isinf(out[2]));

    t = st_find(f, "w.f64");
    assert_int_equal(st_to_f32(t, out), DF_OK);
    assert_true(out[0] == 0.25f);
    assert_true(isinf(out[1]) && out[1] < 0);
    assert_true(isinf(out[2]) && out[2] > 0);
    assert_true(out[3] == 0.0f);

    t = st_find(f, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(st_to_f32(t, out), DF_OK);
    assert_true(out[0] == 42.0f);

    t = st_find(f, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_ptr_equal(t->data, (const uint8_t *)st_find(f, "w.f64")->data);
    assert_int_equal(st_to_f32(t, out), DF_OK);

    t = st_find(f, "steps");
    int64_t s[2];
    memcpy(s, t->data, sizeof s);
    assert_int_equal(s[0], 1000);
    assert_int_equal(s[1], -5);
    assert_int_equal(st_to_f32(t, out), DF_EUNSUPPORTED);
    assert_non_null(strstr(df_errmsg(), "steps"));
    assert_int_equal(*(const uint8_t *)st_find(f, "mask")->data, 7);
}

static void test_valid_memory(void **state) {
    (void)state;
    size_t len;
    uint8_t *img = stt_valid_image(&len);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, len, &f), DF_OK);
    stt_check_valid(f);
    st_release(f, st_find(f, "w.f32")); /* no-op without a mapping */
    st_close(f);
    free(img);
}

static void test_valid_file(void **state) {
    (void)state;
    size_t len;
    uint8_t *img = stt_valid_image(&len);
    char *path = stt_write_tmp(img, len);
    struct st_file *f;
    assert_int_equal(st_open(path, &f), DF_OK);
    stt_check_valid(f);
    st_close(f);
    unlink(path);
    free(path);
    free(img);
}

static void test_dtype_names(void **state) {
    (void)state;
    assert_string_equal(st_dtype_name(ST_BF16), "BF16");
    assert_string_equal(st_dtype_name(ST_BOOL), "BOOL");
    assert_int_equal(st_dtype_size(ST_F64), 8);
    assert_int_equal(st_dtype_size(ST_F16), 2);
    assert_int_equal(st_dtype_size(ST_U8), 1);
}

/* Releasing a multi-page tensor drops its pages; reading it again faults the
 * bytes back from the file, and a neighbour sharing a page is untouched. */
static void test_release(void **state) {
    (void)state;
    enum { N = 4096 };
    char hdr[256];
    snprintf(hdr, sizeof hdr,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
             "\"big\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[12,%d]}}",
             N, 12 + 4 * N);
    uint8_t *d = malloc(12 + 4 * N);
    assert_non_null(d);
    for (int i = 0; i < 3 + N; i++)
        stt_put_f32(d + 4 * i, (float)i);
    size_t len;
    uint8_t *img = stt_image(hdr, d, 12 + 4 * N, &len);
    char *path = stt_write_tmp(img, len);
    struct st_file *f;
    assert_int_equal(st_open(path, &f), DF_OK);
    float *out = malloc(4 * N);
    assert_non_null(out);
    st_release(f, st_find(f, "big"));
    assert_int_equal(st_to_f32(st_find(f, "big"), out), DF_OK);
    for (int i = 0; i < N; i++)
        assert_true(out[i] == (float)(i + 3));
    assert_int_equal(st_to_f32(st_find(f, "a"), out), DF_OK);
    assert_true(out[0] == 0.0f && out[2] == 2.0f);
    struct st_tensor fake = *st_find(f, "big");
    st_release(f, &fake); /* not one of f's tensors: ignored */
    st_release(f, NULL);
    st_close(f);
    unlink(path);
    free(path);
    free(out);
    free(img);
    free(d);
}

/* ~2000 tensors: lookups stay exact (and the index is not quadratic). */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 2000 };
    size_t cap = (size_t)N * 100 + 16, n = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    n += (size_t)snprintf(h + n, cap - n, "{");
    for (int i = 0; i < N; i++) /* reverse name order vs. data order */
        n += (size_t)snprintf(h + n, cap - n,
                              "%s\"blk.%04d.w\":{\"dtype\":\"F16\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}", i ? "," : "",
                              N - 1 - i, 2 * i, 2 * i + 2);
    snprintf(h + n, cap - n, "}");
    uint8_t *d = calloc(N, 2);
    assert_non_null(d);
    size_t len;
    uint8_t *img = stt_image(h, d, 2 * N, &len);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, len, &f), DF_OK);
    assert_int_equal(st_count(f), N);
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%04d.w", i);
        const struct st_tensor *t = st_find(f, name);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        assert_ptr_equal(t, st_at(f, (size_t)(N - 1 - i)));
    }
    st_close(f);
    free(img);
    free(d);
    free(h);
}

static void test_edge_valid(void **state) {
    (void)state;
    static const struct {
        const char *header;
        size_t dlen;
        size_t count;
    } cases[] = {
        {"{}", 0, 0},
        {"{\"__metadata__\":{}}", 0, 0},
        {"  {}  \n", 0, 0},
        /* holes between tensors and trailing bytes are tolerated */
        {"{\"a\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 10, 1},
        /* an empty tensor inside another's bytes overlaps nothing */
        {"{\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"z\":{\"dtype\":\"F16\",\"shape\":[4,0],\"data_offsets\":[4,4]}}", 8, 2},
        /* a zero dim makes huge other dims harmless */
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807,0,"
         "9223372036854775807],\"data_offsets\":[0,0]}}", 0, 1},
        /* extra fields in an entry are ignored */
        {"{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":[]}}",
         1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t data[16] = {0};
        size_t len;
        uint8_t *img = stt_image(cases[i].header, data, cases[i].dlen, &len);
        struct st_file *f = NULL;
        df_status st = st_open_memory(img, len, &f);
        if (st != DF_OK)
            fail_msg("case %zu: %s", i, df_errmsg());
        assert_int_equal(st_count(f), cases[i].count);
        st_close(f);
        free(img);
    }
}

struct stt_bad {
    const char *header;
    size_t dlen;
    const char *want[2]; /* substrings expected in the message */
};

static const struct stt_bad stt_bad_cases[] = {
    {"", 0, {"not valid JSON", NULL}},
    {"{", 0, {"not valid JSON", NULL}},
    {"{\"a\":1,}", 0, {"not valid JSON", NULL}},
    {"[]", 0, {"not a JSON object", NULL}},
    {"\"x\"", 0, {"JSON", NULL}},
    {"{\"w.bad\":3}", 0, {"\"w.bad\"", "not an object"}},
    {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, {"\"w\"", "missing dtype"}},
    {"{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     {"\"w\"", "dtype is not a string"}},
    {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     {"\"w\"", "unknown dtype \"F8_E4M3\""}},
    {"{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     {"\"w\"", "unknown dtype"}},
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, {"\"w\"", "missing shape"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4,
     {"\"w\"", "shape is not an array"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     {"\"w\"", "shape[0]"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4,
     {"\"w\"", "shape[1]"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8,
     {"\"w\"", "shape[1]"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
     4, {"\"w\"", "9 dims"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
     "\"data_offsets\":[0,4]}}", 4, {"\"w\"", "overflow"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
     "\"data_offsets\":[0,4]}}", 4, {"\"w\"", "overflows"}},
    {"{\"down.0.weight\":{\"dtype\":\"F32\",\"shape\":[4,7],\"data_offsets\":[0,96]}}",
     112, {"tensor \"down.0.weight\": data_offsets [0, 96] hold 96 bytes but "
           "shape [4, 7] of F32 needs 112", NULL}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
     {"\"w\"", "[8, 4]: end before begin"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7,
     {"\"w\"", "beyond the 7-byte data section"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, {"\"w\"", "missing data_offsets"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
     {"\"w\"", "data_offsets"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
     {"\"w\"", "data_offsets"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", 8,
     {"\"w\"", "data_offsets"}},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e3]}}", 8,
     {"\"w\"", "data_offsets"}},
    {"{\"first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"second\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
     {"\"second\"", "overlap tensor \"first\""}},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
     {"overlap", NULL}},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
     "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[8,9]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}", 9,
     {"\"b\"", "overlap tensor \"a\""}},
    {"{\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
     {"duplicate", "\"dup\""}},
    {"{\"model.diffusion.very.long.name.weight\":{\"dtype\":\"U8\",\"shape\":[1],"
     "\"data_offsets\":[0,1]},\"model.diffusion.very.long.name.weight\":"
     "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
     {"duplicate", "\"model.diffusion.very.long.name.weight\""}},
    {"{\"__metadata__\":[\"x\"]}", 0, {"__metadata__", "not an object"}},
    {"{\"__metadata__\":{\"epoch\":3}}", 0, {"__metadata__", "\"epoch\""}},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, {"duplicate", "__metadata__"}},
};

static void stt_expect_bad(size_t i, df_status st, const struct stt_bad *c) {
    if (st != DF_EFORMAT)
        fail_msg("case %zu (%s): status %s", i, c->header, df_status_name(st));
    for (int k = 0; k < 2; k++)
        if (c->want[k] && !strstr(df_errmsg(), c->want[k]))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, df_errmsg(),
                     c->want[k]);
}

static void test_hostile_headers(void **state) {
    (void)state;
    uint8_t data[128] = {0};
    for (size_t i = 0; i < sizeof stt_bad_cases / sizeof stt_bad_cases[0]; i++) {
        const struct stt_bad *c = &stt_bad_cases[i];
        size_t len;
        uint8_t *img = stt_image(c->header, data, c->dlen, &len);
        struct st_file *f = (struct st_file *)&f; /* must be reset to NULL */
        stt_expect_bad(i, st_open_memory(img, len, &f), c);
        assert_null(f);
        /* the same through st_open, which prefixes the path */
        char *path = stt_write_tmp(img, len);
        f = (struct st_file *)&f;
        stt_expect_bad(i, st_open(path, &f), c);
        assert_null(f);
        assert_non_null(strstr(df_errmsg(), path));
        unlink(path);
        free(path);
        free(img);
    }
}

/* 1 if s is well-formed UTF-8 (no truncated sequences). */
static int stt_utf8_ok(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
              : (*p & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0)
            return 0;
        for (p++; n > 0; n--, p++)
            if ((*p & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

/* Long names are clipped in messages on a character boundary, so the message
 * can still go into a JSON reply. */
static void test_long_names(void **state) {
    (void)state;
    char name[256] = "a";
    for (int i = 0; i < 100; i++)
        strcat(name, "\xc3\xa9"); /* U+00E9, 2 bytes: byte 128 is mid-char */
    char hdr[1024], prefix[128];
    snprintf(hdr, sizeof hdr, "{\"%s\":7}", name);
    size_t len;
    uint8_t *img = stt_image(hdr, NULL, 0, &len);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, len, &f), DF_EFORMAT);
    memcpy(prefix, name, 127);
    prefix[127] = '\0';
    assert_non_null(strstr(df_errmsg(), prefix));
    assert_true(stt_utf8_ok(df_errmsg()));
    free(img);

    snprintf(hdr, sizeof hdr, "{\"%s\":{},\"%s\":{}}", name, name);
    img = stt_image(hdr, NULL, 0, &len);
    assert_int_equal(st_open_memory(img, len, &f), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "duplicate"));
    assert_non_null(strstr(df_errmsg(), prefix));
    assert_true(stt_utf8_ok(df_errmsg()));
    free(img);
}

static void test_bad_lengths(void **state) {
    (void)state;
    struct st_file *f;
    uint8_t b[16] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    for (size_t n = 0; n < 8; n++) { /* shorter than the length prefix */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b, n);
        assert_int_equal(st_open_memory(p, n, &f), DF_EFORMAT);
        assert_non_null(strstr(df_errmsg(), "shorter"));
        free(p);
    }
    assert_int_equal(st_open_memory(b, 10, &f), DF_OK); /* "{}" exactly */
    st_close(f);
    assert_int_equal(st_open_memory(b, 9, &f), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "beyond the end"));

    uint8_t huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(st_open_memory(huge, 8, &f), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "limit"));

    /* A real 200 MiB (sparse) file claiming a 200 MiB header: refused for
     * its size before jansson ever sees it. */
    uint64_t hl = (uint64_t)200 << 20;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hl >> (8 * i));
    char *path = stt_write_tmp(le, 8);
    assert_int_equal(truncate(path, (off_t)(8 + hl)), 0);
    assert_int_equal(st_open(path, &f), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "limit"));
    unlink(path);
    free(path);

    path = stt_write_tmp(b, 5);
    assert_int_equal(st_open(path, &f), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "shorter"));
    unlink(path);
    free(path);
}

static void test_io_errors(void **state) {
    (void)state;
    struct st_file *f = (struct st_file *)&f;
    assert_int_equal(st_open("/nonexistent/dir/model.safetensors", &f), DF_EIO);
    assert_null(f);
    assert_non_null(strstr(df_errmsg(), "/nonexistent/dir/model.safetensors"));
    assert_int_equal(st_open("/tmp", &f), DF_EIO);
    assert_null(f);
}

/* Every file the fuzzer kept must still parse (or fail) cleanly. */
static void test_corpus(void **state) {
    (void)state;
    DIR *dir = opendir(CORPUS_DIR);
    if (!dir)
        fail_msg("cannot open %s (run from the repo root)", CORPUS_DIR);
    size_t files = 0, ok = 0;
    static float buf[1 << 16];
    struct dirent *de;
    while ((de = readdir(dir))) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", CORPUS_DIR, de->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        size_t n = (size_t)sb.st_size;
        uint8_t *img = malloc(n ? n : 1);
        assert_non_null(img);
        assert_int_equal(fread(img, 1, n, fp), n);
        fclose(fp);
        struct st_file *f = NULL;
        if (st_open_memory(img, n, &f) == DF_OK) {
            ok++;
            for (size_t i = 0; i < st_count(f); i++) {
                const struct st_tensor *t = st_at(f, i);
                assert_ptr_equal(st_find(f, t->name), t);
                if (t->numel <= (int64_t)(sizeof buf / sizeof buf[0]))
                    st_to_f32(t, buf);
            }
            st_close(f);
        } else {
            assert_null(f);
        }
        free(img);
        files++;
    }
    closedir(dir);
    assert_true(files > 0);
    assert_true(ok > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_memory),
        cmocka_unit_test(test_valid_file),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_edge_valid),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_long_names),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
