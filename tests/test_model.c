/* Model loading: families refused with a clear message, bf16 files, missing
 * and mis-shaped tensors, components from fixture files, and the whole
 * request path through the CLI's code. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "models/model.h"
#include "models/pipeline.h"
#include "testutil.h"

static const char *fixtures(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

static void fixture_path(char *out, size_t n, const char *file) { snprintf(out, n, "%s/%s", fixtures(), file); }

/* A safetensors file from (name, dtype, shape, bytes) entries. */
struct entry {
    const char *name;
    const char *dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t bytes;
};

static void write_safetensors(const char *path, const struct entry *e, int n) {
    char header[65536];
    size_t used = (size_t)snprintf(header, sizeof header, "{");
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        used += (size_t)snprintf(header + used, sizeof header - used, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                 i ? "," : "", e[i].name, e[i].dtype);
        for (int d = 0; d < e[i].ndim; d++)
            used += (size_t)snprintf(header + used, sizeof header - used, d ? ",%lld" : "%lld", (long long)e[i].shape[d]);
        used += (size_t)snprintf(header + used, sizeof header - used, "],\"data_offsets\":[%zu,%zu]}", offset,
                                 offset + e[i].bytes);
        offset += e[i].bytes;
    }
    used += (size_t)snprintf(header + used, sizeof header - used, "}");
    assert_true(used < sizeof header);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t len = used;
    assert_int_equal(fwrite(&len, 8, 1, f), 1);
    assert_int_equal(fwrite(header, 1, used, f), used);
    for (int i = 0; i < n; i++)
        if (e[i].bytes) assert_int_equal(fwrite(e[i].data, 1, e[i].bytes, f), e[i].bytes);
    assert_int_equal(fclose(f), 0);
}

/* A file with one characteristic key: `want` is the status its load gives
 * (refused families, or a family whose tensors are missing), `expect` a
 * word the message must hold. */
static void refused(const char *key, df_status want, const char *expect) {
    char path[] = "/tmp/df_test_family_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    float v[4] = {1, 2, 3, 4};
    struct entry e[] = {
        {key, "F32", 2, {2, 2}, v, sizeof v},
        {"model.diffusion_model.input_blocks.0.0.weight", "F32", 2, {2, 2}, v, sizeof v},
    };
    write_safetensors(path, e, 2);
    struct model *m = NULL;
    struct model_options opt = {.path = path, .precision = WTS_F32};
    df_status st = model_load(tu_device(), &opt, &m);
    if (st != want) fail_msg("%s: status %s, not %s: %s", key, df_status_name(st), df_status_name(want), df_errmsg());
    assert_null(m);
    if (!strstr(df_errmsg(), expect)) fail_msg("message \"%s\" lacks \"%s\"", df_errmsg(), expect);
    unlink(path);
}

static void test_other_families(void **state) {
    (void)state;
    refused("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", DF_EUNSUPPORTED, "MMDiT");
    refused("double_blocks.0.img_attn.qkv.weight", DF_EUNSUPPORTED, "Flux");
    /* SDXL and SD2.x load, so a file of theirs with nothing in it names
     * what is missing */
    refused("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", DF_EFORMAT,
            "first_stage_model.");
    refused("model.diffusion_model.label_emb.0.0.weight", DF_EFORMAT, "first_stage_model.");
    refused("cond_stage_model.model.token_embedding.weight", DF_EFORMAT, "first_stage_model.");
}

static struct model_options fixture_components(char *unet, char *vae, char *clip, size_t n) {
    fixture_path(unet, n, "unet_sd15_tiny.safetensors");
    fixture_path(vae, n, "vae_tiny.safetensors");
    fixture_path(clip, n, "clip_text_tiny.safetensors");
    struct model_options o = {.precision = WTS_F32};
    o.component[COMP_UNET] = unet;
    o.component[COMP_VAE] = vae;
    o.component[COMP_TEXT_ENCODER] = clip;
    return o;
}

/* Copies a fixture file, rewriting tensors through `edit`. */
typedef void (*edit_fn)(const struct st_tensor *t, struct entry *e, void **owned);

static void rewrite(const char *src, const char *dst, edit_fn edit) {
    struct st_file *f;
    assert_int_equal(st_open(src, &f), DF_OK);
    int n = (int)st_count(f);
    struct entry *e = calloc((size_t)n, sizeof *e);
    void **owned = calloc((size_t)n, sizeof *owned);
    char **names = calloc((size_t)n, sizeof *names);
    int k = 0;
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = st_at(f, (size_t)i);
        names[i] = strdup(t->name);
        e[k] = (struct entry){names[i], st_dtype_name(t->dtype), t->ndim, {0}, t->data, t->nbytes};
        for (int d = 0; d < t->ndim && d < 4; d++) e[k].shape[d] = t->shape[d];
        edit(t, &e[k], &owned[i]);
        if (e[k].name) k++;
    }
    write_safetensors(dst, e, k);
    for (int i = 0; i < n; i++) {
        free(owned[i]);
        free(names[i]);
    }
    free(e);
    free(owned);
    free(names);
    st_close(f);
}

/* float -> bf16 with round to nearest even, as torch's .to(bfloat16) */
static void to_bf16(const struct st_tensor *t, struct entry *e, void **owned) {
    if (t->dtype != ST_F32) return;
    uint16_t *h = malloc((size_t)t->numel * 2 + 2);
    for (int64_t i = 0; i < t->numel; i++) {
        uint32_t x;
        memcpy(&x, (const char *)t->data + i * 4, 4);
        x += 0x7fffu + ((x >> 16) & 1);
        h[i] = (uint16_t)(x >> 16);
    }
    *owned = h;
    e->data = h;
    e->dtype = "BF16";
    e->bytes = (size_t)t->numel * 2;
}

static void drop_conv_in(const struct st_tensor *t, struct entry *e, void **owned) {
    (void)owned;
    if (!strcmp(t->name, "conv_in.weight")) e->name = NULL;
}

static void reshape_conv_out(const struct st_tensor *t, struct entry *e, void **owned) {
    (void)owned;
    /* same bytes, another shape: [4, 32, 3, 3] -> [4, 32, 9, 1] */
    if (!strcmp(t->name, "conv_out.weight")) {
        e->shape[2] = 9;
        e->shape[3] = 1;
    }
}

/* An overflowing VAE: the decoder's last bias is +inf, so every pixel is. */
static void infinite_conv_out_bias(const struct st_tensor *t, struct entry *e, void **owned) {
    if (strcmp(t->name, "decoder.conv_out.bias") || t->dtype != ST_F32) return;
    float *b = malloc((size_t)t->numel * sizeof *b);
    for (int64_t i = 0; i < t->numel; i++) b[i] = INFINITY;
    *owned = b;
    e->data = b;
}

/* A VAE weight beyond fp16's range (65504): inf once stored in fp16,
 * finite in fp32 - the overflow SDXL's VAE is known for, made small. */
static void huge_conv_out_weight(const struct st_tensor *t, struct entry *e, void **owned) {
    if (strcmp(t->name, "decoder.conv_out.weight") || t->dtype != ST_F32) return;
    float *w = malloc((size_t)t->numel * sizeof *w);
    memcpy(w, t->data, (size_t)t->numel * sizeof *w);
    w[0] = 1e5f;
    *owned = w;
    e->data = w;
}

static struct pipe_request small_request(void) {
    return (struct pipe_request){.prompt = "a cat", .negative_prompt = "blurry", .width = 64, .height = 64,
                                 .steps = 2, .batch = 1, .cfg_scale = 7.5f, .sampler = SMP_EULER, .seed = 7,
                                 .clip_skip = 1, .rng = RNG_TORCH_CPU};
}

static void generate(struct model *m, float **image) {
    struct pipe_worker *w;
    struct pipe_result r;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    struct pipe_request req = small_request();
    if (pipe_generate(w, m, &req, NULL, &r) != DF_OK) fail_msg("generate: %s", df_errmsg());
    *image = malloc(64 * 64 * 3 * sizeof **image);
    memcpy(*image, r.images, 64 * 64 * 3 * sizeof **image);
    pipe_result_free(&r);
    pipe_worker_destroy(w);
}

/* A bf16 checkpoint loads (converted on upload) and gives the fp32
 * model's image up to bf16 rounding. */
static void test_bf16_file(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    struct model *m32, *m16;
    assert_int_equal(model_load(tu_device(), &opt, &m32), DF_OK);
    char bf16[] = "/tmp/df_test_bf16_unet_XXXXXX";
    close(mkstemp(bf16));
    rewrite(unet, bf16, to_bf16);
    opt.component[COMP_UNET] = bf16;
    opt.component_config[COMP_UNET] = NULL;
    if (model_load(tu_device(), &opt, &m16) != DF_OK) fail_msg("bf16 load: %s", df_errmsg());
    float *a, *b;
    generate(m32, &a);
    generate(m16, &b);
    double err = tu_rel_l2f(b, a, 64 * 64 * 3);
    print_message("bf16 UNet vs fp32: image rel L2 %.2e\n", err);
    assert_true(err > 0 && err < 2e-2);
    free(a);
    free(b);
    model_destroy(m32);
    model_destroy(m16);
    unlink(bf16);
    tu_check_validation(tu_device());
}

static void expect_load_error(edit_fn edit, const char *tensor, const char *more) {
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    char broken[] = "/tmp/df_test_broken_XXXXXX";
    close(mkstemp(broken));
    rewrite(unet, broken, edit);
    opt.component[COMP_UNET] = broken;
    struct model *m = NULL;
    assert_int_equal(model_load(tu_device(), &opt, &m), DF_EFORMAT);
    assert_null(m);
    if (!strstr(df_errmsg(), tensor) || (more && !strstr(df_errmsg(), more)))
        fail_msg("message \"%s\" should name %s%s%s", df_errmsg(), tensor, more ? " and " : "", more ? more : "");
    unlink(broken);
}

static void test_missing_tensor(void **state) {
    (void)state;
    expect_load_error(drop_conv_in, "conv_in.weight", NULL);
}

static void test_wrong_shape(void **state) {
    (void)state;
    expect_load_error(reshape_conv_out, "conv_out.weight", "[4, 32, 9, 1]");
}

/* The same request twice on one worker reuses the recorded passes and
 * gives the same image; another seed gives another. */
static void test_reproducible(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    struct model *m;
    assert_int_equal(model_load(tu_device(), &opt, &m), DF_OK);
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    struct pipe_request req = small_request();
    struct pipe_result r1, r2, r3;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &r1), DF_OK);
    assert_int_equal(pipe_generate(w, m, &req, NULL, &r2), DF_OK);
    assert_memory_equal(r1.images, r2.images, 64 * 64 * 3 * sizeof(float));
    req.seed = 8;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &r3), DF_OK);
    assert_true(memcmp(r1.images, r3.images, 64 * 64 * 3 * sizeof(float)) != 0);
    assert_int_equal(r3.seeds[0], 8);
    /* bad requests name the field and leave the worker usable */
    req.width = 60;
    struct pipe_result bad;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &bad), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "width"));
    req.width = 64;
    req.steps = 0;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &bad), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "steps"));
    pipe_result_free(&r1);
    pipe_result_free(&r2);
    pipe_result_free(&r3);
    pipe_worker_destroy(w);
    model_destroy(m);
}

static void cancel_on_first_step(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed) {
    (void)steps;
    (void)elapsed;
    if (stage == PIPE_DENOISE && step == 1) atomic_store((atomic_bool *)ctx, true);
}

/* A VAE budget below a whole decode makes the pipeline decode (and, for
 * img2img, encode) in overlapping tiles: the job succeeds, the image is
 * the untiled one up to what per-tile GroupNorm statistics change
 * (test_vae_tiles bounds that per pixel and checks for seams), and a
 * budget no tile fits fails the job alone with the sizes in the message. */
static void test_tiled_vae(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    struct model *m;
    assert_int_equal(model_load(tu_device(), &opt, &m), DF_OK);
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    struct pipe_request req = small_request();
    req.width = 256;
    req.height = 192;
    struct pipe_result whole, tiled;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &whole), DF_OK);
    uint64_t tile_bytes;
    assert_int_equal(vae_decode_bytes(&m->vae, 16, 16, &tile_bytes), DF_OK); /* 16x16 latent tiles: 2x3 of them */
    pipe_worker_set_vae_budget(w, tile_bytes);
    if (pipe_generate(w, m, &req, NULL, &tiled) != DF_OK) fail_msg("tiled: %s", df_errmsg());
    size_t n = (size_t)req.width * req.height * 3;
    assert_memory_equal(whole.latents, tiled.latents, (size_t)4 * 24 * 32 * sizeof(float)); /* only the VAE differs */
    double err = tu_rel_l2f(tiled.images, whole.images, n);
    print_message("tiled VAE decode vs whole: image rel L2 %.3f\n", err);
    assert_true(err > 0 && err < 0.35);
    /* img2img: the init image is encoded in tiles too */
    float *init = malloc(n * sizeof *init);
    for (size_t i = 0; i < n; i++) init[i] = (float)((i * 7919) % 251) / 250.0f;
    req.init_image = init;
    req.strength = 0.5f;
    struct pipe_result i2i;
    if (pipe_generate(w, m, &req, NULL, &i2i) != DF_OK) fail_msg("tiled img2img: %s", df_errmsg());
    pipe_result_free(&i2i);
    pipe_worker_set_vae_budget(w, 1024);
    assert_int_equal(pipe_generate(w, m, &req, NULL, &i2i), DF_ENOMEM);
    print_message("budget too small: %s\n", df_errmsg());
    free(init);
    pipe_result_free(&whole);
    pipe_result_free(&tiled);
    pipe_worker_destroy(w);
    model_destroy(m);
}

/* A decode that overflows is never an image: the job fails with a clear
 * error, and the worker serves the next model. */
static void test_non_finite_decode_fails(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    char broken[] = "/tmp/df_test_inf_vae_XXXXXX";
    close(mkstemp(broken));
    rewrite(vae, broken, infinite_conv_out_bias);
    opt.component[COMP_VAE] = broken;
    struct model *m;
    if (model_load(tu_device(), &opt, &m) != DF_OK) fail_msg("load: %s", df_errmsg());
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    struct pipe_request req = small_request();
    struct pipe_result r;
    assert_int_equal(pipe_generate(w, m, &req, NULL, &r), DF_ENUMERIC);
    assert_non_null(strstr(df_errmsg(), "non-finite"));
    assert_null(r.images);
    model_destroy(m);
    unlink(broken);
    opt = fixture_components(unet, vae, clip, sizeof unet);
    assert_int_equal(model_load(tu_device(), &opt, &m), DF_OK);
    assert_int_equal(pipe_generate(w, m, &req, NULL, &r), DF_OK);
    pipe_result_free(&r);
    pipe_worker_destroy(w);
    model_destroy(m);
}

/* fp16 VAE weights that overflow: the decode is retried once with the VAE
 * in fp32 and gives the fp32 model's image (up to the fp16 UNet's rounding). */
static void test_fp16_overflow_retried_in_fp32(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    char huge[] = "/tmp/df_test_huge_vae_XXXXXX";
    close(mkstemp(huge));
    rewrite(vae, huge, huge_conv_out_weight);
    opt.component[COMP_VAE] = huge;
    struct model *m32, *m16;
    assert_int_equal(model_load(tu_device(), &opt, &m32), DF_OK);
    opt.precision = WTS_F16;
    assert_int_equal(model_load(tu_device(), &opt, &m16), DF_OK);
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    struct pipe_request req = small_request();
    struct pipe_result a, b, c;
    assert_int_equal(pipe_generate(w, m32, &req, NULL, &a), DF_OK);
    assert_false(a.vae_fp32_retry);
    if (pipe_generate(w, m16, &req, NULL, &b) != DF_OK) fail_msg("fp16: %s", df_errmsg());
    assert_true(b.vae_fp32_retry);
    double err = tu_rel_l2f(b.images, a.images, 64 * 64 * 3);
    print_message("fp16 model, VAE retried in fp32, vs fp32 model: image rel L2 %.2e\n", err);
    assert_true(err < 1e-2);
    assert_int_equal(pipe_generate(w, m16, &req, NULL, &c), DF_OK); /* the fp32 copy is kept */
    assert_memory_equal(b.images, c.images, 64 * 64 * 3 * sizeof(float));
    pipe_result_free(&a);
    pipe_result_free(&b);
    pipe_result_free(&c);
    pipe_worker_destroy(w);
    model_destroy(m32);
    model_destroy(m16);
    unlink(huge);
}

static void test_cancel(void **state) {
    (void)state;
    char unet[4096], vae[4096], clip[4096];
    struct model_options opt = fixture_components(unet, vae, clip, sizeof unet);
    struct model *m;
    assert_int_equal(model_load(tu_device(), &opt, &m), DF_OK);
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    atomic_bool cancel = false;
    struct pipe_request req = small_request();
    req.steps = 4;
    struct pipe_hooks hooks = {.progress = cancel_on_first_step, .progress_ctx = &cancel, .cancel = &cancel};
    struct pipe_result r;
    assert_int_equal(pipe_generate(w, m, &req, &hooks, &r), DF_ECANCELLED);
    /* the worker serves the next request */
    atomic_store(&cancel, false);
    hooks.progress = NULL;
    req.steps = 1;
    assert_int_equal(pipe_generate(w, m, &req, &hooks, &r), DF_OK);
    pipe_result_free(&r);
    pipe_worker_destroy(w);
    model_destroy(m);
}

/* `make tiny-model` writes the same random weights as a diffusers folder
 * and as an LDM single file: both load and give the same image. */
static void test_single_file_and_folder(void **state) {
    (void)state;
    const char *dir = getenv("DF_TEST_TINY_MODEL");
    if (!dir || !*dir) dir = "build/tiny-model";
    char single[4096], folder[4096];
    snprintf(single, sizeof single, "%s/tiny-sd15.safetensors", dir);
    snprintf(folder, sizeof folder, "%s/tiny-sd15-diffusers", dir);
    if (access(single, R_OK) || access(folder, R_OK)) fail_msg("%s missing: run make tiny-model", dir);
    struct model *a, *b;
    struct model_options opt = {.path = single, .precision = WTS_F32};
    if (model_load(tu_device(), &opt, &a) != DF_OK) fail_msg("%s: %s", single, df_errmsg());
    assert_string_equal(a->layout, "single file (original LDM keys)");
    opt.path = folder;
    if (model_load(tu_device(), &opt, &b) != DF_OK) fail_msg("%s: %s", folder, df_errmsg());
    assert_string_equal(b->layout, "diffusers folder");
    float *ia, *ib;
    generate(a, &ia);
    generate(b, &ib);
    double err = tu_rel_l2f(ia, ib, 64 * 64 * 3);
    print_message("single file vs diffusers folder: rel L2 %.2e\n", err);
    assert_true(err == 0);
    free(ia);
    free(ib);
    model_destroy(a);
    model_destroy(b);
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_other_families),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_bf16_file),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_tiled_vae),
        cmocka_unit_test(test_non_finite_decode_fails),
        cmocka_unit_test(test_fp16_overflow_retried_in_fp32),
        cmocka_unit_test(test_single_file_and_folder),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
