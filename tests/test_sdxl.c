/* SDXL through the daemon: two daemons in-process on the oracle's tiny SDXL
 * (`make tiny-model` assembles it with tests/make_tiny_sdxl.py): one on the
 * diffusers folder, one on the same weights as an original single file
 * (with the config.json files its shapes cannot replace). Both reproduce
 * pipeline_sdxl_tiny's image for its seed, prompts and micro-conditioning
 * within one 8-bit level; the A1111 endpoints serve it; a folder whose
 * config contradicts its weights fails to load with the key named. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../models/model.h"
#include "../models/safetensors.h"
#include "../server/image.h"
#include "serverutil.h"
#include "testutil.h"

static struct su_daemon folder_d, single_d;
static char tiny[1024], fixtures[1024];
static json_t *manifest, *sdxl_case;

static int setup(void **state) {
    (void)state;
    const char *t = getenv("DF_TEST_TINY_MODEL"), *f = getenv("DF_TEST_FIXTURES");
    snprintf(tiny, sizeof tiny, "%s", t && *t ? t : "build/tiny-model");
    snprintf(fixtures, sizeof fixtures, "%s", f && *f ? f : "../shared/fixtures");
    char path[1200];
    snprintf(path, sizeof path, "%s/manifest.json", fixtures);
    manifest = json_load_file(path, JSON_ALLOW_NUL, NULL);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "cases"), i, c)
        if (strcmp(su_str(c, "name"), "pipeline_sdxl_tiny") == 0) sdxl_case = c;
    if (!sdxl_case) return -1;
    char folder[1100], single[1100], cfgs[4][1200];
    snprintf(folder, sizeof folder, "%s/tiny-sdxl-diffusers", tiny);
    snprintf(single, sizeof single, "%s/tiny-sdxl.safetensors", tiny);
    static const char *const names[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    for (int k = 0; k < 4; k++) snprintf(cfgs[k], sizeof cfgs[k], "%s/tiny-sdxl-configs/%s.json", tiny, names[k]);
    if (access(folder, R_OK) || access(single, R_OK)) {
        fprintf(stderr, "%s: the tiny SDXL is missing: run make tiny-model\n", tiny);
        return -1;
    }
    char *a[] = {"serve", "--model", folder, "--precision", "fp32", "--port", "0", "--log-level", "warn",
                 "--max-width", "512", "--max-height", "512", "--http-threads", "2"};
    char *b[] = {"serve", "--model", single, "--unet-config", cfgs[0], "--vae-config", cfgs[1],
                 "--text-encoder-config", cfgs[2], "--text-encoder-2-config", cfgs[3], "--precision", "fp32",
                 "--port", "0", "--log-level", "warn", "--http-threads", "2"};
    if (su_daemon_start(&folder_d, sizeof a / sizeof a[0], a) || su_daemon_start(&single_d, sizeof b / sizeof b[0], b))
        return -1;
    su_pin_libraries();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    su_daemon_stop(&folder_d);
    su_daemon_stop(&single_d);
    json_decref(manifest);
    return 0;
}

/* pipeline_sdxl_tiny's request, micro-conditioning included. */
static char *oracle_request(int *w, int *h) {
    json_t *c = sdxl_case, *shape = json_object_get(json_object_get(json_object_get(c, "outputs"), "out.image"),
                                                   "shape");
    *h = (int)json_integer_value(json_array_get(shape, 1));
    *w = (int)json_integer_value(json_array_get(shape, 2));
    json_t *req = json_pack("{s:O, s:O, s:O, s:O, s:s, s:i, s:i, s:s, s:O, s:O, s:O}", "prompt",
                            json_object_get(c, "prompt"), "negative_prompt", json_object_get(c, "negative_prompt"),
                            "cfg_scale", json_object_get(c, "guidance_scale"), "steps",
                            json_object_get(c, "num_inference_steps"), "sampler", "euler", "width", *w, "height", *h,
                            "rng", "torch", "original_size", json_object_get(c, "original_size"),
                            "crops_coords_top_left", json_object_get(c, "crops_coords_top_left"), "target_size",
                            json_object_get(c, "target_size"));
    json_object_set(req, "seed", json_object_get(c, "latents_seed"));
    char *body = json_dumps(req, 0);
    json_decref(req);
    return body;
}

/* The worst difference from the oracle's image, in 8-bit levels. */
static int worst_level(const float *img, int64_t n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/pipeline_sdxl_tiny.safetensors", fixtures);
    struct st_file *f;
    assert_int_equal(st_open(path, &f), DF_OK);
    const struct st_tensor *t = st_find(f, "out.image");
    assert_non_null(t);
    assert_int_equal(t->numel, n);
    float *ref = malloc((size_t)n * sizeof *ref);
    assert_int_equal(st_to_f32(t, ref), DF_OK);
    int worst = 0;
    for (int64_t k = 0; k < n; k++) {
        int d = abs((int)lrintf(img[k] * 255.0f) - (int)rint((double)ref[k] * 255.0));
        if (d > worst) worst = d;
    }
    free(ref);
    st_close(f);
    return worst;
}

static float *generate(int port, int *w, int *h, char **infotext) {
    char *body = oracle_request(w, h);
    struct su_resp r;
    su_req(port, "POST", "/generate", NULL, body, &r);
    free(body);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    float *img = NULL;
    int iw, ih;
    assert_int_equal(img_decode_png((uint8_t *)r.body, r.len, 1 << 20, &img, &iw, &ih, infotext), DF_OK);
    assert_int_equal(iw, *w);
    assert_int_equal(ih, *h);
    su_free(&r);
    return img;
}

static void test_folder_reproduces_oracle(void **state) {
    (void)state;
    int w, h;
    char *text = NULL;
    float *img = generate(folder_d.port, &w, &h, &text);
    int worst = worst_level(img, (int64_t)w * h * 3);
    print_message("SDXL diffusers folder over HTTP vs diffusers: worst pixel %d/255\n", worst);
    assert_true(worst <= 1);
    assert_non_null(strstr(text, "Model: tiny-sdxl-diffusers"));
    free(img);
    free(text);
}

static void test_single_file_reproduces_oracle(void **state) {
    (void)state;
    int w, h;
    char *text = NULL;
    float *img = generate(single_d.port, &w, &h, &text);
    int worst = worst_level(img, (int64_t)w * h * 3);
    print_message("SDXL single file over HTTP vs diffusers: worst pixel %d/255\n", worst);
    assert_true(worst <= 1);
    assert_non_null(strstr(text, "Model: tiny-sdxl,"));
    free(img);
    free(text);
}

/* The micro-conditioning reaches the UNet: other sizes, another image. */
static void test_micro_conditioning_matters(void **state) {
    (void)state;
    int w, h;
    float *a = generate(folder_d.port, &w, &h, NULL);
    json_t *req = json_loads(oracle_request(&w, &h), 0, NULL);
    json_object_set_new(req, "original_size", json_pack("[i, i]", 1024, 1024));
    char *body = json_dumps(req, 0);
    struct su_resp r;
    su_req(folder_d.port, "POST", "/generate", NULL, body, &r);
    assert_int_equal(r.status, 200);
    float *b = NULL;
    int iw, ih;
    assert_int_equal(img_decode_png((uint8_t *)r.body, r.len, 1 << 20, &b, &iw, &ih, NULL), DF_OK);
    assert_true(memcmp(a, b, (size_t)w * h * 3 * sizeof *a) != 0);
    /* bad values name the field, before anything is queued */
    json_object_set_new(req, "target_size", json_pack("[i]", 64));
    free(body);
    body = json_dumps(req, 0);
    su_free(&r);
    su_req(folder_d.port, "POST", "/generate", NULL, body, &r);
    su_expect_error(&r, 400, "invalid_type", "target_size");
    json_object_set_new(req, "target_size", json_pack("[i, i]", 64, -3));
    free(body);
    body = json_dumps(req, 0);
    su_free(&r);
    su_req(folder_d.port, "POST", "/generate", NULL, body, &r);
    su_expect_error(&r, 422, "out_of_range", "target_size");
    su_free(&r);
    free(body);
    json_decref(req);
    free(a);
    free(b);
}

static void test_sdapi(void **state) {
    (void)state;
    struct su_resp r;
    su_req(folder_d.port, "GET", "/sdapi/v1/sd-models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "tiny-sdxl-diffusers"));
    su_free(&r);
    su_req(folder_d.port, "GET", "/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *models = su_json(&r);
    assert_string_equal(su_str(json_array_get(json_object_get(models, "models"), 0), "family"), "sdxl");
    json_decref(models);
    su_free(&r);
    su_req(folder_d.port, "POST", "/sdapi/v1/txt2img", NULL,
           "{\"prompt\": \"a lighthouse\", \"negative_prompt\": \"\", \"width\": 64, \"height\": 64, \"steps\": 2, "
           "\"cfg_scale\": 5, \"seed\": 3, \"sampler_name\": \"Euler\"}",
           &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r), *info = json_loads(su_str(j, "info"), 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "images")), 1);
    assert_string_equal(su_str(info, "sd_model_name"), "tiny-sdxl-diffusers");
    assert_non_null(strstr(json_string_value(json_array_get(json_object_get(info, "infotexts"), 0)),
                           "Model: tiny-sdxl-diffusers"));
    json_decref(info);
    json_decref(j);
    su_free(&r);
}

/* A folder whose unet/config.json contradicts its weights: the load fails
 * naming what disagrees. */
static void test_contradicting_config(void **state) {
    (void)state;
    char dir[] = "/tmp/df_test_sdxl_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const subs[] = {"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                       "scheduler", "model_index.json"};
    char src[1400], dst[1400];
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(src, sizeof src, "%s/tiny-sdxl-diffusers/%s", tiny, subs[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, subs[i]);
        char *real = realpath(src, NULL);
        assert_non_null(real);
        assert_int_equal(symlink(real, dst), 0);
        free(real);
    }
    snprintf(dst, sizeof dst, "%s/unet", dir);
    assert_int_equal(mkdir(dst, 0700), 0);
    snprintf(src, sizeof src, "%s/tiny-sdxl-diffusers/unet/diffusion_pytorch_model.safetensors", tiny);
    snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    char *real = realpath(src, NULL);
    assert_int_equal(symlink(real, dst), 0);
    free(real);
    struct {
        const char *key;
        json_t *value;
        const char *expect;
    } lies[] = {
        {"transformer_layers_per_block", json_pack("[i, i, i]", 1, 1, 1), "transformer_blocks.1"},
        {"cross_attention_dim", json_integer(48), "48"},
        {"addition_time_embed_dim", json_integer(4), "addition_time_embed_dim"},
    };
    snprintf(dst, sizeof dst, "%s/unet/config.json", dir);
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        json_t *cfg = NULL, *c;
        size_t k;
        json_array_foreach(json_object_get(manifest, "cases"), k, c)
            if (strcmp(su_str(c, "name"), "sdxl_unet_tiny") == 0) cfg = json_deep_copy(json_object_get(c, "config"));
        assert_non_null(cfg);
        json_object_set_new(cfg, lies[i].key, lies[i].value);
        assert_int_equal(json_dump_file(cfg, dst, 0), 0);
        json_decref(cfg);
        struct model_options opt = {.path = dir, .precision = WTS_F32};
        struct model *m = NULL;
        df_status st = model_load(tu_device(), &opt, &m);
        assert_int_not_equal(st, DF_OK);
        assert_null(m);
        print_message("%s: %s\n", lies[i].key, df_errmsg());
        if (!strstr(df_errmsg(), lies[i].expect)) fail_msg("\"%s\" does not name %s", df_errmsg(), lies[i].expect);
    }
    unlink(dst);
    snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    unlink(dst);
    snprintf(dst, sizeof dst, "%s/unet", dir);
    rmdir(dst);
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(dst, sizeof dst, "%s/%s", dir, subs[i]);
        unlink(dst);
    }
    rmdir(dir);
}

int main(int argc, char **argv) {
    su_filter(argc, argv);
    const struct CMUnitTest tests[] = {
        SU_TEST(test_folder_reproduces_oracle), SU_TEST(test_single_file_reproduces_oracle),
        SU_TEST(test_micro_conditioning_matters), SU_TEST(test_sdapi), SU_TEST(test_contradicting_config),
    };
    return cmocka_run_group_tests_name("sdxl", tests, setup, teardown);
}
