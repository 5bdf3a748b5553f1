/* Tests for models/tokenizer.c: every prompt of the "clip_tokenizer" oracle
 * case (transformers CLIPTokenizer + ftfy) id for id, then edge cases the
 * oracle does not cover: empty and invalid UTF-8 input, truncation of a
 * 2000-word prompt, pad id 0, ftfy's cleaning rules, bad vocabularies;
 * token ids by spelling and the pad id of diffusers tokenizer folders.
 * Every helper is static: this file is linked with the whole library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../models/safetensors.h"
#include "../models/tokenizer.h"

#define VOCAB "models/data/bpe_simple_vocab_16e6.txt.gz"
#define BOS 49406
#define EOS 49407
#define CTX 77

static struct tokenizer *tt_tok;

static double tt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int tt_setup(void **state) {
    (void)state;
    double t0 = tt_now();
    df_status st = tok_create_from_file(VOCAB, &tt_tok);
    if (st != DF_OK) {
        fprintf(stderr, "tok_create_from_file(%s): %s\n", VOCAB, df_errmsg());
        return -1;
    }
    print_message("tokenizer created in %.1f ms\n", (tt_now() - t0) * 1e3);
    return 0;
}

static int tt_teardown(void **state) {
    (void)state;
    tok_destroy(tt_tok);
    return 0;
}

static const char *tt_fixtures(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

/* Encodes with max_len CTX and the SD1.x pad; returns n_tokens. */
static int tt_encode(const char *s, int32_t *ids) {
    int n = -1;
    assert_int_equal(tok_encode(tt_tok, s, CTX, EOS, ids, &n), DF_OK);
    return n;
}

static void tt_assert_same(const char *a, const char *b) {
    int32_t x[CTX], y[CTX];
    int nx = tt_encode(a, x), ny = tt_encode(b, y);
    if (nx != ny || memcmp(x, y, sizeof x)) {
        print_error("\"%s\" and \"%s\" tokenize differently\n", a, b);
        fail();
    }
}

static const int64_t *tt_i64(const struct st_file *f, const char *name, int64_t numel) {
    const struct st_tensor *t = st_find(f, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I64);
    assert_int_equal(t->numel, numel);
    return t->data;
}

/* The oracle: out.input_ids [40,77], out.n_bpe_tokens [40] and the
 * untruncated ids, checked on every prompt; mismatches are listed before
 * the test fails so one run shows them all. */
static void test_oracle(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", tt_fixtures());
    json_error_t jerr;
    json_t *man = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!man)
        fail_msg("%s: %s", path, jerr.text);
    json_t *cases = json_object_get(man, "cases"), *c, *prompts = NULL;
    size_t ci;
    json_array_foreach(cases, ci, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        if (name && !strcmp(name, "clip_tokenizer"))
            prompts = json_object_get(c, "prompts");
    }
    assert_true(json_is_array(prompts));
    int64_t np = (int64_t)json_array_size(prompts);
    assert_int_equal(np, 40);

    snprintf(path, sizeof path, "%s/clip_tokenizer.safetensors", tt_fixtures());
    struct st_file *f;
    if (st_open(path, &f) != DF_OK)
        fail_msg("%s: %s", path, df_errmsg());
    const int64_t *want = tt_i64(f, "out.input_ids", np * CTX);
    const int64_t *nbpe = tt_i64(f, "out.n_bpe_tokens", np);
    const int64_t *off = tt_i64(f, "out.bpe_ids_offsets", np + 1);
    const int64_t *full = tt_i64(f, "out.bpe_ids_untruncated", off[np]);

    int ok = 0;
    double t_total = 0;
    for (int64_t i = 0; i < np; i++) {
        const char *p = json_string_value(json_array_get(prompts, (size_t)i));
        assert_non_null(p);
        int32_t ids[CTX];
        double t0 = tt_now();
        int n = tt_encode(p, ids);
        t_total += tt_now() - t0;
        bool same = n == nbpe[i] + 2;
        for (int k = 0; k < CTX; k++)
            same &= ids[k] == want[i * CTX + k];
        /* the untruncated sequence too, with room for all of it */
        int32_t *big = malloc(sizeof *big * (size_t)(nbpe[i] + 2));
        assert_non_null(big);
        assert_int_equal(tok_encode(tt_tok, p, (int)nbpe[i] + 2, EOS, big, &n), DF_OK);
        for (int64_t k = 0; k < nbpe[i]; k++)
            same &= big[1 + k] == full[off[i] + k];
        free(big);
        if (same) {
            ok++;
            continue;
        }
        print_error("prompt %d \"%s\": n_tokens %d (want %d)\n  got ", (int)i, p, n,
                    (int)nbpe[i] + 2);
        for (int k = 0; k < 12; k++)
            print_error(" %d", ids[k]);
        print_error("\n want");
        for (int k = 0; k < 12; k++)
            print_error(" %d", (int)want[i * CTX + k]);
        print_error("\n");
    }
    print_message("%d of %d oracle prompts match; %.3f ms per prompt\n", ok, (int)np,
                  t_total / (double)np * 1e3);
    st_close(f);
    json_decref(man);
    assert_int_equal(ok, np);
}

static void test_empty(void **state) {
    (void)state;
    int32_t ids[CTX];
    assert_int_equal(tt_encode("", ids), 2);
    assert_int_equal(ids[0], BOS);
    for (int k = 1; k < CTX; k++)
        assert_int_equal(ids[k], EOS);
    tt_assert_same("", " \t\n\r  ");
    tt_assert_same("", "\x01\x7f\xef\xbb\xbf"); /* control chars and a BOM vanish */
}

/* Chosen behaviour: never an error; each maximal ill-formed subsequence
 * becomes U+FFFD, like Python's decode("utf-8", "replace"). */
static void test_invalid_utf8(void **state) {
    (void)state;
    tt_assert_same("a\xff" "b", "a\xef\xbf\xbd" "b");
    tt_assert_same("\xe2\x82", "\xef\xbf\xbd");                       /* truncated */
    tt_assert_same("\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd");           /* overlong */
    tt_assert_same("\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"); /* surrogate */
    tt_assert_same("\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    int32_t a[CTX], b[CTX];
    tt_encode("cat \xf0\x9f\x90", a); /* cut-off emoji at the end */
    tt_encode("cat \xef\xbf\xbd", b);
    assert_memory_equal(a, b, sizeof a);
    /* random bytes: must not crash or fail */
    unsigned seed = 12345;
    char s[257];
    for (int r = 0; r < 2000; r++) {
        int len = (int)(seed % 256);
        for (int k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            s[k] = (char)(1 + (seed >> 16) % 255);
        }
        s[len] = 0;
        int n = tt_encode(s, a);
        assert_true(n >= 2);
        assert_int_equal(a[0], BOS);
    }
}

static void test_long_prompt(void **state) {
    (void)state;
    size_t len = 2000 * 5;
    char *s = malloc(len + 1);
    assert_non_null(s);
    for (size_t i = 0; i < 2000; i++)
        memcpy(s + 5 * i, "word ", 5);
    s[len - 1] = 0;
    int32_t one[CTX], ids[CTX];
    tt_encode("word", one);
    int32_t word = one[1];
    double t0 = tt_now();
    assert_int_equal(tt_encode(s, ids), 2002);
    print_message("2000-word prompt: %.3f ms\n", (tt_now() - t0) * 1e3);
    assert_int_equal(ids[0], BOS);
    for (int k = 1; k < CTX - 1; k++)
        assert_int_equal(ids[k], word);
    assert_int_equal(ids[CTX - 1], EOS); /* EOS survives truncation */

    /* the same with CLIP-G's pad: nothing to pad, EOS still last */
    int n = 0;
    assert_int_equal(tok_encode(tt_tok, s, CTX, 0, ids, &n), DF_OK);
    assert_int_equal(n, 2002);
    assert_int_equal(ids[CTX - 1], EOS);
    free(s);

    /* over the input limit: refused, not truncated silently */
    char *huge = malloc(TOK_MAX_INPUT + 2);
    assert_non_null(huge);
    memset(huge, 'a', TOK_MAX_INPUT + 1);
    huge[TOK_MAX_INPUT + 1] = 0;
    assert_int_equal(tok_encode(tt_tok, huge, CTX, EOS, ids, &n), DF_EINVAL);
    free(huge);
}

static void test_pad_and_lengths(void **state) {
    (void)state;
    const char *p = "a photograph of an astronaut riding a horse";
    int32_t sd[CTX], g[CTX];
    int n1 = tt_encode(p, sd), n2 = 0;
    assert_int_equal(tok_encode(tt_tok, p, CTX, 0, g, &n2), DF_OK);
    assert_int_equal(n1, n2);
    assert_int_equal(n1, 10);
    assert_memory_equal(sd, g, (size_t)n1 * sizeof *sd);
    assert_int_equal(g[n1 - 1], EOS);
    for (int k = n1; k < CTX; k++) {
        assert_int_equal(g[k], 0);
        assert_int_equal(sd[k], EOS);
    }
    /* max_len 2 keeps only BOS, EOS; n_tokens may be NULL */
    int32_t two[2];
    assert_int_equal(tok_encode(tt_tok, p, 2, 0, two, NULL), DF_OK);
    assert_int_equal(two[0], BOS);
    assert_int_equal(two[1], EOS);
    assert_int_equal(tok_encode(tt_tok, p, 1, 0, two, NULL), DF_EINVAL);
    assert_int_equal(tok_encode(tt_tok, NULL, CTX, 0, sd, NULL), DF_EINVAL);
    assert_int_equal(tok_encode(NULL, p, CTX, 0, sd, NULL), DF_EINVAL);
    assert_int_equal(tok_bos(tt_tok), BOS);
    assert_int_equal(tok_eos(tt_tok), EOS);
}

/* ftfy and CLIPTokenizer cleaning rules, as equalities between spellings. */
static void test_cleaning(void **state) {
    (void)state;
    tt_assert_same("Tom &amp; Jerry", "tom & jerry");
    tt_assert_same("&amp;amp;lt;", "<");         /* repeated until stable */
    tt_assert_same("&EACUTE;t&#xE9; &#233;", "été é");
    tt_assert_same("&#128;&#x92;", "\xe2\x82\xac'"); /* Windows-1252 references */
    tt_assert_same("x&bogus;", "x &bogus;");
    int32_t a[CTX], b[CTX];
    tt_encode("<b>&amp;</b>", a); /* a '<' turns unescaping off for the line */
    tt_encode("<b>&</b>", b);
    assert_memory_not_equal(a, b, sizeof a);
    tt_assert_same("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3\xe3\x80\x80x", "abc x"); /* full width */
    tt_assert_same("\xef\xac\x81ne", "fine");                               /* ligature */
    tt_assert_same("\xe2\x80\x9chi\xe2\x80\x9d \xe2\x80\x98s\xe2\x80\x99", "\"hi\" 's'");
    tt_assert_same("caf" "e\xcc\x81", "caf\xc3\xa9");                        /* NFC */
    tt_assert_same("\xc2\x93quoted\xc2\x94", "\"quoted\"");                  /* C1 controls */
    tt_assert_same("\x1b[1;31mred\x1b[0m", "red");                           /* ANSI escapes */
    tt_assert_same("A\r\nB\xe2\x80\xa8" "C", "a b c");
    tt_assert_same("\xce\x9f\xce\x94\xce\x9f\xce\xa3", "\xce\xbf\xce\xb4\xce\xbf\xcf\x82"); /* final sigma */
    tt_assert_same("DON'T", "don't");
    /* the literal special strings are specials, wherever they are */
    tt_encode("a<|endoftext|>b", a);
    assert_int_equal(a[2], EOS);
    tt_encode("<|startoftext|>", a);
    assert_int_equal(a[0], BOS);
    assert_int_equal(a[1], BOS);
    assert_int_equal(a[2], EOS);
}

static void test_bad_vocab(void **state) {
    (void)state;
    struct tokenizer *t = (struct tokenizer *)1;
    static const char junk[] = "not a gzip file";
    assert_int_equal(tok_create(junk, sizeof junk, &t), DF_EFORMAT);
    assert_null(t);
    assert_int_equal(tok_create_from_file("/nonexistent/vocab.gz", &t), DF_EIO);
    assert_int_equal(tok_create(NULL, 0, &t), DF_EINVAL);

    FILE *f = fopen(VOCAB, "rb");
    assert_non_null(f);
    static unsigned char gz[1 << 21];
    size_t n = fread(gz, 1, sizeof gz, f);
    fclose(f);
    /* cut inside the merges: truncated stream */
    assert_int_equal(tok_create(gz, 100000, &t), DF_EFORMAT);
    /* the whole file, from memory, and creation time */
    double t0 = tt_now();
    assert_int_equal(tok_create(gz, n, &t), DF_OK);
    double ms = (tt_now() - t0) * 1e3;
    print_message("tok_create from memory: %.1f ms\n", ms);
    assert_true(ms < 2000); /* 100 ms budget; slack for sanitizers and load */
    int32_t a[CTX], b[CTX];
    tt_encode("same vocabulary", a);
    assert_int_equal(tok_encode(t, "same vocabulary", CTX, EOS, b, NULL), DF_OK);
    assert_memory_equal(a, b, sizeof a);
    tok_destroy(t);
    tok_destroy(NULL);
}

/* tok_token_id against ids computed from the vocabulary file in Python
 * (CLIP's bytes_to_unicode + merges order), and against tok_encode. */
static void test_token_id(void **state) {
    (void)state;
    static const struct {
        const char *token;
        int32_t id;
    } known[] = {
        {"!", 0}, {"!</w>", 256}, {"a</w>", 320}, {"\xc4\xa0", 220} /* U+0120 = byte ' ' */,
        {"ing", 653}, {"photograph</w>", 8853}, {"astronaut</w>", 18376},
        {"\xc3\xb0\xc5\x81\xc4\xba\xc4\xac</w>", 3020} /* the bytes of U+1F60A */,
        {"<|startoftext|>", BOS}, {"<|endoftext|>", EOS},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        int32_t id = -1;
        if (tok_token_id(tt_tok, known[i].token, &id) != DF_OK) fail_msg("%s: %s", known[i].token, df_errmsg());
        assert_int_equal(id, known[i].id);
    }
    int32_t ids[CTX], id;
    tt_encode("photograph", ids);
    assert_int_equal(tok_token_id(tt_tok, "photograph</w>", &id), DF_OK);
    assert_int_equal(id, ids[1]);
    const char *bad[] = {"", "</w>", "zqxjkvw</w>", "<|pad|>", "\xe6\x9d\xb1" /* not bytes_to_unicode text */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tok_token_id(tt_tok, bad[i], &id), DF_EINVAL);
        assert_non_null(strstr(df_errmsg(), "is not in the CLIP vocabulary"));
    }
}

/* A temporary tokenizer folder with the given files (NULL: absent). */
static void tt_folder(char *dir, const char *map, const char *config, const char *vocab) {
    strcpy(dir, "/tmp/df_tok_XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *names[] = {"special_tokens_map.json", "tokenizer_config.json", "vocab.json"};
    const char *texts[] = {map, config, vocab};
    for (int i = 0; i < 3; i++) {
        if (!texts[i]) continue;
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(texts[i], f);
        fclose(f);
    }
}

static void tt_rmfolder(const char *dir) {
    const char *names[] = {"special_tokens_map.json", "tokenizer_config.json", "vocab.json"};
    char path[256];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The pad id of a folder, or the status with *msg naming the error. */
static df_status tt_pad(const char *map, const char *config, const char *vocab, int32_t *id) {
    char dir[64];
    tt_folder(dir, map, config, vocab);
    *id = -1;
    df_status st = tok_pad_id_from_folder(tt_tok, dir, id);
    tt_rmfolder(dir);
    return st;
}

static void test_pad_from_folder(void **state) {
    (void)state;
    int32_t id;
    /* SDXL tokenizer_2 / SD2.x: "!" through vocab.json, which wins over the embedded vocabulary */
    assert_int_equal(tt_pad("{\"pad_token\": \"!\"}", NULL, "{\"!\": 7, \"<|endoftext|>\": 49407}", &id), DF_OK);
    assert_int_equal(id, 7);
    /* SD1.x: an AddedToken dict, no vocab.json: the embedded vocabulary */
    assert_int_equal(tt_pad("{\"pad_token\": {\"content\": \"<|endoftext|>\", \"lstrip\": false}}", NULL, NULL, &id),
                     DF_OK);
    assert_int_equal(id, EOS);
    assert_int_equal(tt_pad(NULL, "{\"pad_token\": \"!\"}", NULL, &id), DF_OK);
    assert_int_equal(id, 0);
    /* special_tokens_map.json overrides tokenizer_config.json */
    assert_int_equal(tt_pad("{\"pad_token\": \"!\"}", "{\"pad_token\": \"<|endoftext|>\"}", NULL, &id), DF_OK);
    assert_int_equal(id, 0);
    /* no pad_token anywhere: CLIPTokenizer's default */
    assert_int_equal(tt_pad("{\"bos_token\": \"<|startoftext|>\"}", "{}", NULL, &id), DF_OK);
    assert_int_equal(id, EOS);
    /* an added token */
    assert_int_equal(tt_pad(NULL, "{\"pad_token\": \"<pad>\", \"added_tokens_decoder\": "
                            "{\"49406\": {\"content\": \"<|startoftext|>\"}, \"12\": {\"content\": \"<pad>\"}}}",
                            "{\"!\": 0}", &id), DF_OK);
    assert_int_equal(id, 12);

    assert_int_equal(tt_pad("{\"pad_token\": \"<|pad|>\"}", NULL, "{\"!\": 0}", &id), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "pad_token \"<|pad|>\" is not a token of"));
    assert_non_null(strstr(df_errmsg(), "vocab.json"));
    assert_int_equal(tt_pad(NULL, "{\"pad_token\": \"zqxjkvw</w>\"}", NULL, &id), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "tokenizer_config.json: pad_token \"zqxjkvw</w>\""));
    assert_int_equal(tt_pad(NULL, "{\"pad_token\": null}", NULL, &id), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "pad_token is null"));
    assert_int_equal(tt_pad("{\"pad_token\": 3}", NULL, NULL, &id), DF_EFORMAT);
    assert_int_equal(tt_pad("{\"pad_token\": \"<pad>\"}", NULL, "{\"<pad>\": 50000}", &id), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "outside the CLIP vocabulary"));
    assert_int_equal(tt_pad("{\"pad_token\": ", NULL, NULL, &id), DF_EFORMAT);
    assert_int_equal(tt_pad(NULL, NULL, "{\"!\": 0}", &id), DF_EIO);
    assert_int_equal(id, -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oracle),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_long_prompt),
        cmocka_unit_test(test_pad_and_lengths),
        cmocka_unit_test(test_cleaning),
        cmocka_unit_test(test_bad_vocab),
        cmocka_unit_test(test_token_id),
        cmocka_unit_test(test_pad_from_folder),
    };
    return cmocka_run_group_tests(tests, tt_setup, tt_teardown);
}
