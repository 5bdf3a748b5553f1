/* Tests for server/multipart: the Content-Type boundary, well-formed bodies
 * (preamble, epilogue, binary data with boundary look-alikes, quoted and
 * escaped parameters, transport padding), and hostile ones: every strict
 * prefix of a valid body (each one truncated, each in an allocation of its
 * own size so ASan sees any over-read), corrupted bytes, a missing or
 * foreign disposition, over-long names and header blocks, too many parts.
 * No device needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../server/multipart.h"

#define CT "multipart/form-data; boundary=XyZ"

static df_status parse(const char *ct, const char *body, struct multipart *mp) {
    return multipart_parse(ct, body, strlen(body), mp);
}

/* A part's data as a string, for comparisons. */
static void expect_data(const struct multipart_part *p, const void *want, size_t n) {
    assert_non_null(p);
    assert_int_equal(p->len, n);
    assert_memory_equal(p->data, want, n);
}

static void test_boundary(void **state) {
    (void)state;
    static const struct {
        const char *ct, *want; /* want NULL: refused */
    } cases[] = {
        {"multipart/form-data; boundary=abc", "abc"},
        {"Multipart/Form-Data;BOUNDARY=abc", "abc"},
        {"multipart/form-data; charset=utf-8; boundary=\"a b'()+_,-./:=?\"", "a b'()+_,-./:=?"},
        {"  multipart/form-data ;  boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW ;", "----WebKitFormBoundary7MA4YWxkTrZu0gW"},
        {"multipart/form-data; boundary=\"q\\\"x\"", NULL}, /* '"' is no bchar */
        {"multipart/form-data; boundary=1234567890123456789012345678901234567890123456789012345678901234567890",
         "1234567890123456789012345678901234567890123456789012345678901234567890"},
        {"multipart/form-data; boundary=12345678901234567890123456789012345678901234567890123456789012345678901", NULL},
        {NULL, NULL},
        {"", NULL},
        {"application/json", NULL},
        {"multipart/mixed; boundary=abc", NULL},
        {"multipart/form-dataX; boundary=abc", NULL},
        {"multipart/form-data", NULL},
        {"multipart/form-data; charset=utf-8", NULL},
        {"multipart/form-data; boundary=", NULL},
        {"multipart/form-data; boundary=\"\"", NULL},
        {"multipart/form-data; boundary=\"abc", NULL},
        {"multipart/form-data; boundary=\"ab \"", NULL},
        {"multipart/form-data; boundary=\"a\tb\"", NULL},
        {"multipart/form-data; boundary=\"a\x01\"", NULL},
        {"multipart/form-data; boundary", NULL},
        {"multipart/form-data boundary=abc", NULL},
        {"multipart/form-data; =abc", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char b[MULTIPART_BOUNDARY_MAX + 1] = "untouched";
        df_status st = multipart_boundary(cases[i].ct, b);
        if (cases[i].want && st != DF_OK) fail_msg("case %zu refused: %s", i, df_errmsg());
        if (!cases[i].want && st == DF_OK) fail_msg("case %zu accepted: boundary \"%s\"", i, b);
        if (cases[i].want) assert_string_equal(b, cases[i].want);
        else assert_true(*df_errmsg() != 0);
    }
}

static void test_well_formed(void **state) {
    (void)state;
    /* data with what looks like a delimiter but is not one (followed by
     * other bytes), NULs, bare CRs and LFs */
    static const char bin[] = "\x89PNG\r\n\x1a\n\0\0\r\n--XyZ-\r\n--XyZa\r\n--Xy\r\r\n\n--XyZ\tx\0";
    size_t bl = sizeof bin - 1;
    char body[1024];
    size_t n = 0;
    n += (size_t)sprintf(body + n, "preamble, ignored\r\n--XyZ\r\n"
                                   "content-disposition: form-data; name=prompt\r\n\r\n"
                                   "a cat\r\nin a hat\r\n--XyZ  \t\r\n"
                                   "Content-Disposition: form-data; name=\"image\"; filename=\"my \\\"cat\\\".png\"\r\n"
                                   "Content-Type: image/png\r\nX-Other: ignored\r\n\r\n");
    memcpy(body + n, bin, bl);
    n += bl;
    n += (size_t)sprintf(body + n, "\r\n--XyZ\r\nContent-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n"
                                   "\r\n--XyZ\r\nContent-Disposition: FORM-DATA; name=\"prompt\"\r\n\r\nsecond\r\n"
                                   "--XyZ--\r\nepilogue, ignored \r\n--XyZ\r\n");
    struct multipart mp;
    df_status st = multipart_parse(CT, body, n, &mp);
    if (st != DF_OK) fail_msg("%s", df_errmsg());
    assert_int_equal(mp.n, 4);
    const struct multipart_part *p = multipart_find(&mp, "prompt");
    assert_ptr_equal(p, &mp.parts[0]); /* the first of two */
    expect_data(p, "a cat\r\nin a hat", 15);
    assert_false(p->is_file);
    assert_string_equal(p->content_type, "");
    p = multipart_find(&mp, "image");
    expect_data(p, bin, bl);
    assert_true(p->is_file);
    assert_string_equal(p->filename, "my \"cat\".png");
    assert_string_equal(p->content_type, "image/png");
    p = multipart_find(&mp, "empty");
    expect_data(p, "", 0);
    assert_true(p->is_file);
    assert_string_equal(p->filename, "");
    expect_data(&mp.parts[3], "second", 6);
    assert_null(multipart_find(&mp, "mask"));
    multipart_free(&mp);
    assert_null(mp.parts);

    /* no preamble; a close delimiter right away is an empty form */
    assert_int_equal(parse(CT, "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ--", &mp), DF_OK);
    assert_int_equal(mp.n, 1);
    expect_data(&mp.parts[0], "1", 1);
    multipart_free(&mp);
    assert_int_equal(parse(CT, "--XyZ--\r\n", &mp), DF_OK);
    assert_int_equal(mp.n, 0);
    multipart_free(&mp);
    /* "--XyZX" is no delimiter: a preamble, then the close delimiter */
    assert_int_equal(parse(CT, "--XyZX\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ--", &mp), DF_OK);
    assert_int_equal(mp.n, 0);
    multipart_free(&mp);

    /* a long file name is cut, the part still a file */
    char name[600];
    memset(name, 'f', sizeof name);
    name[sizeof name - 1] = 0;
    snprintf(body, sizeof body, "--XyZ\r\nContent-Disposition: form-data; name=a; filename=\"%s\"\r\n\r\nx\r\n--XyZ--",
             name);
    assert_int_equal(parse(CT, body, &mp), DF_OK);
    assert_true(mp.parts[0].is_file);
    assert_int_equal(strlen(mp.parts[0].filename), sizeof mp.parts[0].filename - 1);
    multipart_free(&mp);
}

static void test_malformed(void **state) {
    (void)state;
    static const struct {
        const char *body, *why; /* why: a word the message must have */
    } cases[] = {
        {"", "no boundary"},
        {"no delimiter at all", "no boundary"},
        {"--XyZ", "no boundary"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1", "truncated"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ", "truncated"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ-", "truncated"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\n", "truncated headers"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\n\n1\r\n--XyZ--", "truncated headers"},
        {"--XyZ\r\n\r\n1\r\n--XyZ--", "no headers"},
        {"--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--", "Content-Disposition"},
        {"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\n1\r\n--XyZ--", "form-data"},
        {"--XyZ\r\nContent-Disposition: form-data\r\n\r\n1\r\n--XyZ--", "no name"},
        {"--XyZ\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n1\r\n--XyZ--", "no name"},
        {"--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\n1\r\n--XyZ--", "quoted"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a b\r\n\r\n1\r\n--XyZ--", "expected ';'"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\n1\r\n--XyZ--",
         "two"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Type: text/plain;\r\n charset=x\r\n\r\n1\r\n--XyZ--",
         "folded"},
        {"--XyZ\r\nContent-Disposition form-data; name=a\r\n\r\n1\r\n--XyZ--", "malformed header"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\x01\r\n\r\n1\r\n--XyZ--", "control"},
        {"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ\r\n", "truncated headers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct multipart mp;
        df_status st = parse(CT, cases[i].body, &mp);
        if (st != DF_EINVAL) fail_msg("case %zu: %d (%d parts), not refused", i, st, mp.n);
        if (!strstr(df_errmsg(), cases[i].why)) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, df_errmsg(), cases[i].why);
        multipart_free(&mp);
    }
    struct multipart mp;
    /* a NUL inside a header block */
    static const char nul[] = "--XyZ\r\nContent-Disposition: form-data; name=a\0b\r\n\r\n1\r\n--XyZ--";
    assert_int_equal(multipart_parse(CT, nul, sizeof nul - 1, &mp), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "NUL"));
    multipart_free(&mp);
    /* a body that is fine, under a Content-Type that is not */
    assert_int_equal(parse("multipart/form-data", "--XyZ--", &mp), DF_EINVAL);
    multipart_free(&mp);
}

static void test_limits(void **state) {
    (void)state;
    size_t cap = 100 * (MULTIPART_MAX_PARTS + 1) + MULTIPART_HEADERS_MAX + 200, n = 0;
    char *body = malloc(cap);
    assert_non_null(body);
    for (int i = 0; i < MULTIPART_MAX_PARTS; i++)
        n += (size_t)sprintf(body + n, "--XyZ\r\nContent-Disposition: form-data; name=p%d\r\n\r\n%d\r\n", i, i);
    sprintf(body + n, "--XyZ--");
    struct multipart mp;
    assert_int_equal(parse(CT, body, &mp), DF_OK);
    assert_int_equal(mp.n, MULTIPART_MAX_PARTS);
    expect_data(multipart_find(&mp, "p63"), "63", 2);
    multipart_free(&mp);
    sprintf(body + n, "--XyZ\r\nContent-Disposition: form-data; name=one-more\r\n\r\nx\r\n--XyZ--");
    assert_int_equal(parse(CT, body, &mp), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "more than"));
    multipart_free(&mp);

    /* a header block of exactly the limit passes; one byte more does not */
    for (int extra = 0; extra < 2; extra++) {
        n = (size_t)sprintf(body, "--XyZ\r\nContent-Disposition: form-data; name=a\r\nX-Pad: ");
        /* the block: what follows the delimiter line (7 bytes) up to CRLF CRLF */
        size_t fill = MULTIPART_HEADERS_MAX - (n - 7) + (size_t)extra;
        memset(body + n, 'p', fill);
        n += fill;
        n += (size_t)sprintf(body + n, "\r\n\r\nv\r\n--XyZ--");
        df_status st = multipart_parse(CT, body, n, &mp);
        if (extra == 0 && st != DF_OK) fail_msg("%s", df_errmsg());
        if (extra == 1) {
            assert_int_equal(st, DF_EINVAL);
            assert_non_null(strstr(df_errmsg(), "longer than"));
        } else {
            expect_data(multipart_find(&mp, "a"), "v", 1);
        }
        multipart_free(&mp);
    }

    /* a part name at and over its limit */
    char name[MULTIPART_NAME_MAX + 1];
    for (int over = 0; over < 2; over++) {
        memset(name, 'n', sizeof name);
        name[MULTIPART_NAME_MAX - 1 + over] = 0;
        sprintf(body, "--XyZ\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\nv\r\n--XyZ--", name);
        assert_int_equal(parse(CT, body, &mp), over ? DF_EINVAL : DF_OK);
        if (!over) assert_string_equal(mp.parts[0].name, name);
        multipart_free(&mp);
    }
    free(body);
}

/* Every strict prefix of a valid body is refused (its close delimiter is
 * its last byte), and single corrupted bytes never crash or over-read:
 * each variant lives in an allocation of exactly its size. */
static void test_truncations_and_corruptions(void **state) {
    (void)state;
    static const char body[] = "pre\r\n--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhello\r\n"
                               "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                               "Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\0data\r\n--XyZ--";
    size_t len = sizeof body - 1;
    struct multipart mp;
    assert_int_equal(multipart_parse(CT, body, len, &mp), DF_OK);
    assert_int_equal(mp.n, 2);
    multipart_free(&mp);
    for (size_t k = 0; k < len; k++) {
        char *copy = malloc(k ? k : 1);
        assert_non_null(copy);
        memcpy(copy, body, k);
        df_status st = multipart_parse(CT, copy, k, &mp);
        if (st != DF_EINVAL) fail_msg("prefix of %zu bytes: %d, not refused", k, st);
        multipart_free(&mp);
        free(copy);
    }
    int accepted = 0, refused = 0;
    static const char bytes[] = {'\r', '\n', '-', '"', ';', '\0', 'X', ':', ' ', '\\'};
    for (size_t k = 0; k < len; k++)
        for (size_t b = 0; b < sizeof bytes; b++) {
            char *copy = malloc(len);
            assert_non_null(copy);
            memcpy(copy, body, len);
            copy[k] = bytes[b];
            df_status st = multipart_parse(CT, copy, len, &mp);
            assert_true(st == DF_OK || st == DF_EINVAL);
            if (st == DF_OK) {
                accepted++;
                for (int i = 0; i < mp.n; i++) /* every part inside the body */
                    assert_true((const char *)mp.parts[i].data >= copy &&
                                (const char *)mp.parts[i].data + mp.parts[i].len <= copy + len);
            } else {
                refused++;
            }
            multipart_free(&mp);
            free(copy);
        }
    assert_true(accepted > 0 && refused > 0); /* both kinds of change were made */
}

int main(int argc, char **argv) {
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary),
        cmocka_unit_test(test_well_formed),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_truncations_and_corruptions),
    };
    return cmocka_run_group_tests_name("multipart", tests, NULL, NULL);
}
