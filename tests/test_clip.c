/* CLIP text towers as original single files store them: the fixtures'
 * CLIP-L (transformers names) and CLIP-G (OpenCLIP names: packed q/k/v,
 * transposed text_projection) under SDXL's conditioner prefixes, written
 * by tools/clip_to_openclip.py (make tiny-model), must reproduce the
 * clip_l_tiny / clip_g_tiny outputs through check_clip's own comparison,
 * in fp32 and fp16; the config read from shapes matches the manifest's;
 * layout detection, and what an unknown prefix or hostile layer says. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../models/clip.h"
#include "../tools/check.h"
#include "testutil.h"

#define L_PREFIX "conditioner.embedders.0.transformer."
#define G_PREFIX "conditioner.embedders.1.model."

static json_t *manifest;
static struct st_file *sdxl; /* the converted file */

static const char *fixtures(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

static const json_t *case_json(const char *name) {
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "cases"), i, c) {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0) return c;
    }
    fail_msg("no case %s in the manifest", name);
    return NULL;
}

static int setup(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", fixtures());
    json_error_t err;
    manifest = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!manifest) {
        fprintf(stderr, "%s: %s\n", path, err.text);
        return -1;
    }
    const char *tiny = getenv("DF_TEST_TINY_MODEL");
    snprintf(path, sizeof path, "%s/sdxl-conditioner-tiny.safetensors", tiny && *tiny ? tiny : "build/tiny-model");
    if (st_open(path, &sdxl) != DF_OK) {
        fprintf(stderr, "%s (make tiny-model writes it): %s\n", path, df_errmsg());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    st_close(sdxl);
    json_decref(manifest);
    tu_release_devices();
    return 0;
}

static int cfg_int(const json_t *cfg, const char *key) {
    const json_t *v = json_object_get(cfg, key);
    if (!json_is_integer(v)) fail_msg("manifest config lacks %s", key);
    return (int)json_integer_value(v);
}

/* Loads the tower under `prefix` of the converted file (layout detected),
 * checks its shape-read config against the case's, then runs check_clip's
 * comparison with the case's inputs and outputs. */
static void tower_matches(const char *name, const char *prefix, enum clip_layout want, bool fp16) {
    const json_t *j = case_json(name);
    const json_t *jc = json_object_get(j, "config");
    struct check_ctx ctx = {.dir = fixtures(), .dev = tu_device(), .fp16 = fp16, .tolerance = fp16 ? 1e-2 : 1e-4};
    struct check_case c = {.name = name, .json = j};
    if (check_open(&ctx, json_string_value(json_object_get(j, "file")), &c.file) != DF_OK) fail_msg("%s", df_errmsg());

    enum clip_layout layout;
    if (clip_detect_layout(sdxl, prefix, &layout) != DF_OK) fail_msg("%s", df_errmsg());
    assert_int_equal(layout, want);
    struct weights *w;
    assert_int_equal(wts_create(ctx.dev, fp16 ? WTS_F16 : WTS_F32, &w), DF_OK);
    if (clip_load_weights(w, sdxl, prefix, layout) != DF_OK) fail_msg("%s", df_errmsg());
    struct clip_config cfg;
    int heads = cfg_int(jc, "num_attention_heads");
    if (clip_config_from_weights(w, layout, heads, &cfg) != DF_OK) fail_msg("%s", df_errmsg());
    assert_int_equal(cfg.vocab_size, cfg_int(jc, "vocab_size"));
    assert_int_equal(cfg.hidden_size, cfg_int(jc, "hidden_size"));
    assert_int_equal(cfg.intermediate_size, cfg_int(jc, "intermediate_size"));
    assert_int_equal(cfg.num_hidden_layers, cfg_int(jc, "num_hidden_layers"));
    assert_int_equal(cfg.num_attention_heads, heads);
    assert_int_equal(cfg.max_position_embeddings, cfg_int(jc, "max_position_embeddings"));
    assert_true(cfg.has_projection);
    assert_int_equal(cfg.projection_dim, cfg_int(jc, "projection_dim"));
    const char *act = json_string_value(json_object_get(jc, "hidden_act"));
    assert_non_null(act);
    assert_int_equal(cfg.hidden_act, strcmp(act, "gelu") == 0 ? CLIP_GELU : CLIP_QUICK_GELU);

    struct clip_model m;
    if (clip_load(w, &cfg, &m) != DF_OK) fail_msg("%s", df_errmsg());
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    if (check_clip_model(&ctx, &c, &m) != DF_OK) fail_msg("%s", df_errmsg());
    print_message("%s via %s (%s): %s\n", name, prefix, fp16 ? "fp16" : "fp32", c.detail);
    if (c.failed) fail_msg("%s: %s", name, c.detail);
    assert_non_null(strstr(c.detail, "out.text_embeds="));
    assert_non_null(strstr(c.detail, "out.penultimate_hidden_state="));
    clip_free(&m);
    wts_destroy(w);
    st_close(c.file);
    tu_check_validation(ctx.dev);
}

static void test_openclip_g(void **state) {
    (void)state;
    tower_matches("clip_g_tiny", G_PREFIX, CLIP_LAYOUT_OPENCLIP, false);
    tower_matches("clip_g_tiny", G_PREFIX, CLIP_LAYOUT_OPENCLIP, true);
}

static void test_prefixed_l(void **state) {
    (void)state;
    tower_matches("clip_l_tiny", L_PREFIX, CLIP_LAYOUT_TRANSFORMERS, false);
    tower_matches("clip_l_tiny", L_PREFIX, CLIP_LAYOUT_TRANSFORMERS, true);
}

/* Without a head count, shapes give width/64 (1 for the 24-wide tiny G);
 * logit_scale is loaded but never reported as unused. */
static void test_default_heads(void **state) {
    (void)state;
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    if (clip_load_weights(w, sdxl, G_PREFIX, CLIP_LAYOUT_OPENCLIP) != DF_OK) fail_msg("%s", df_errmsg());
    assert_true(wts_has(w, "logit_scale", NULL, NULL));
    struct clip_config cfg;
    assert_int_equal(clip_config_from_weights(w, CLIP_LAYOUT_OPENCLIP, 0, &cfg), DF_OK);
    assert_int_equal(cfg.num_attention_heads, 1);
    assert_int_equal(cfg.hidden_act, CLIP_GELU);
    struct clip_model m;
    assert_int_equal(clip_load(w, &cfg, &m), DF_OK);
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    clip_free(&m);
    wts_destroy(w);
}

static void test_bad_input(void **state) {
    (void)state;
    enum clip_layout layout;
    assert_int_equal(clip_detect_layout(sdxl, "cond_stage_model.model.", &layout), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "cond_stage_model.model.token_embedding.weight"));
    /* a layer number past CLIP_MAX_LAYERS is refused before any table is sized by it */
    static const char hdr[] = "{\"p.transformer.resblocks.99999999999.ln_1.weight\":"
                              "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    uint8_t img[8 + sizeof hdr - 1 + 4] = {0};
    uint64_t hl = sizeof hdr - 1;
    memcpy(img, &hl, 8);
    memcpy(img + 8, hdr, sizeof hdr - 1);
    struct st_file *f;
    assert_int_equal(st_open_memory(img, sizeof img, &f), DF_OK);
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    assert_int_equal(clip_load_weights(w, f, "p.", CLIP_LAYOUT_OPENCLIP), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "p.transformer.resblocks.99999999999.ln_1.weight"));
    wts_destroy(w);
    st_close(f);
}

/* text_projection ([D, P]) is transposed; text_projection.weight, a
 * Linear's [P, D] as some converters store it, is taken as it is. */
static void test_projection_forms(void **state) {
    (void)state;
    static const char hdr[] = "{\"p.text_projection\":"
                              "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                              "\"q.text_projection.weight\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[24,48]}}";
    uint8_t img[8 + sizeof hdr - 1 + 48] = {0};
    uint64_t hl = sizeof hdr - 1;
    memcpy(img, &hl, 8);
    memcpy(img + 8, hdr, sizeof hdr - 1);
    const char *prefixes[] = {"p.", "q."};
    for (int i = 0; i < 2; i++) {
        struct st_file *f;
        assert_int_equal(st_open_memory(img, sizeof img, &f), DF_OK);
        struct weights *w;
        assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
        if (clip_load_weights(w, f, prefixes[i], CLIP_LAYOUT_OPENCLIP) != DF_OK) fail_msg("%s", df_errmsg());
        int nd = 0;
        int64_t ne[CG_MAX_DIMS];
        assert_true(wts_has(w, "text_projection.weight", &nd, ne));
        assert_int_equal(nd, 2);
        assert_int_equal(ne[0], 3);
        assert_int_equal(ne[1], 2);
        wts_destroy(w);
        st_close(f);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openclip_g),
        cmocka_unit_test(test_prefixed_l),
        cmocka_unit_test(test_default_heads),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_projection_forms),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
