/* SD2.x end to end on a tiny SD2 (`make tiny-model` assembles it with
 * tests/make_tiny_sd2.py from the oracle's tiny SD1.x parts): the original
 * single file (OpenCLIP tower with all its layers, no scheduler) and the
 * diffusers folder (encoder already cut, tokenizer pad "!", a v_prediction
 * scheduler). The single file is detected as SD2 by its keys, drops its
 * last layer, pads with 0 and decides its prediction by A1111's test;
 * configured as v it gives the folder's image for the same request, over
 * HTTP. A1111's test is checked against outputs known by arithmetic, and
 * broken towers and configs are refused by name. */
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
#include "../models/pipeline.h"
#include "../models/safetensors.h"
#include "../server/image.h"
#include "serverutil.h"
#include "testutil.h"

#define ODIR "cond_stage_model.model."
#define OUT_W "model.diffusion_model.out.2.weight" /* the UNet's last conv, LDM names */
#define OUT_B "model.diffusion_model.out.2.bias"

static struct su_daemon pair_d, plain_d; /* folder + single file as v; the single file as it is */
static char tiny[1024], folder[1100], single[1100], cfgs[3][1200], tmpdir[64];
static json_t *configs[3]; /* unet, vae, text_encoder */

static int setup(void **state) {
    (void)state;
    const char *t = getenv("DF_TEST_TINY_MODEL");
    snprintf(tiny, sizeof tiny, "%s", t && *t ? t : "build/tiny-model");
    snprintf(folder, sizeof folder, "%s/tiny-sd2-diffusers", tiny);
    snprintf(single, sizeof single, "%s/tiny-sd2.safetensors", tiny);
    static const char *const names[] = {"unet", "vae", "text_encoder"};
    for (int k = 0; k < 3; k++) {
        snprintf(cfgs[k], sizeof cfgs[k], "%s/tiny-sd2-configs/%s.json", tiny, names[k]);
        configs[k] = json_load_file(cfgs[k], 0, NULL);
        if (!configs[k]) {
            fprintf(stderr, "%s: the tiny SD2 is missing: run make tiny-model\n", cfgs[k]);
            return -1;
        }
    }
    if (access(folder, R_OK) || access(single, R_OK)) {
        fprintf(stderr, "%s: the tiny SD2 is missing: run make tiny-model\n", tiny);
        return -1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/df_test_sd2_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    char *a[] = {"serve", "--model", folder, "--model", single, "--unet-config", cfgs[0], "--vae-config", cfgs[1],
                 "--text-encoder-config", cfgs[2], "--prediction", "v", "--precision", "fp32", "--port", "0",
                 "--log-level", "warn", "--http-threads", "2"};
    char *b[] = {"serve", "--model", single, "--unet-config", cfgs[0], "--vae-config", cfgs[1],
                 "--text-encoder-config", cfgs[2], "--precision", "fp32", "--port", "0", "--log-level", "warn",
                 "--http-threads", "2"};
    if (su_daemon_start(&pair_d, sizeof a / sizeof a[0], a) || su_daemon_start(&plain_d, sizeof b / sizeof b[0], b))
        return -1;
    su_pin_libraries();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    su_daemon_stop(&pair_d);
    su_daemon_stop(&plain_d);
    for (int k = 0; k < 3; k++) json_decref(configs[k]);
    rmdir(tmpdir);
    return 0;
}

/* ---- files for the cases: copies of the single file with tensors edited or left out ---- */

/* Called per tensor with a float copy of its data (F32 files only);
 * returns false to leave the tensor out. */
typedef bool (*edit_fn)(const char *name, float *data, int64_t n, void *ctx);

static void write_variant(const char *src, const char *dst, edit_fn edit, void *ctx) {
    struct st_file *f;
    assert_int_equal(st_open(src, &f), DF_OK);
    size_t n = st_count(f);
    float **data = calloc(n, sizeof *data);
    bool *keep = calloc(n, sizeof *keep);
    json_t *header = json_object();
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_at(f, i);
        assert_int_equal(t->dtype, ST_F32);
        data[i] = malloc(t->nbytes ? t->nbytes : 1);
        memcpy(data[i], t->data, t->nbytes);
        keep[i] = edit(t->name, data[i], t->numel, ctx);
        if (!keep[i]) continue;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(header, t->name, json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape,
                                                       "data_offsets", (json_int_t)offset,
                                                       (json_int_t)(offset + t->nbytes)));
        offset += t->nbytes;
    }
    char *h = json_dumps(header, JSON_COMPACT);
    size_t len = strlen(h), padded = (len + 7) / 8 * 8; /* keeps the data aligned for the mmap */
    FILE *out = fopen(dst, "wb");
    assert_non_null(out);
    uint64_t hl = padded;
    assert_int_equal(fwrite(&hl, 8, 1, out), 1);
    assert_int_equal(fwrite(h, 1, len, out), len);
    for (size_t k = len; k < padded; k++) fputc(' ', out);
    for (size_t i = 0; i < n; i++) {
        if (keep[i] && st_at(f, i)->nbytes)
            assert_int_equal(fwrite(data[i], 1, st_at(f, i)->nbytes, out), st_at(f, i)->nbytes);
        free(data[i]);
    }
    assert_int_equal(fclose(out), 0);
    free(h);
    json_decref(header);
    free(data);
    free(keep);
    st_close(f);
}

/* The UNet's output made a constant: last conv weights 0, bias c. */
static bool constant_out(const char *name, float *data, int64_t n, void *ctx) {
    float c = *(const float *)ctx;
    for (int64_t i = 0; strcmp(name, OUT_W) == 0 && i < n; i++) data[i] = 0;
    for (int64_t i = 0; strcmp(name, OUT_B) == 0 && i < n; i++) data[i] = c;
    return true;
}

/* The UNet's output shifted by a constant: bias + c. */
static bool shifted_out(const char *name, float *data, int64_t n, void *ctx) {
    float c = *(const float *)ctx;
    for (int64_t i = 0; strcmp(name, OUT_B) == 0 && i < n; i++) data[i] += c;
    return true;
}

static bool without(const char *name, float *data, int64_t n, void *ctx) {
    (void)data;
    (void)n;
    return strcmp(name, (const char *)ctx) != 0;
}

static struct model_options single_options(const char *path) {
    struct model_options o = {.path = path, .precision = WTS_F32};
    o.component_config[COMP_UNET] = configs[0];
    o.component_config[COMP_VAE] = configs[1];
    o.component_config[COMP_TEXT_ENCODER] = configs[2];
    return o;
}

static struct model *load(const struct model_options *o) {
    struct model *m = NULL;
    if (model_load(tu_device(), o, &m) != DF_OK) fail_msg("%s: %s", o->path, df_errmsg());
    return m;
}

/* The mean A1111's test reports, from the stated source. */
static double stated_mean(const struct model *m) {
    double mean = NAN;
    if (sscanf(m->prediction_source, "A1111's test on the UNet: mean(out - x) = %lf", &mean) != 1)
        fail_msg("prediction source \"%s\" does not state A1111's test", m->prediction_source);
    return mean;
}

static void collect(void *ctx, const char *message) {
    char *log = ctx;
    size_t used = strlen(log);
    snprintf(log + used, 4096 - used, "%s\n", message);
}

/* ---- the single file as it is ---- */

static void test_single_file_is_sd2(void **state) {
    (void)state;
    char log[4096] = "";
    struct model_options o = single_options(single);
    o.log = collect;
    o.log_ctx = log;
    struct model *m = load(&o);
    assert_ptr_equal(m->family, &family_sd2); /* by its cond_stage_model.model.* keys: no family given */
    assert_int_equal(m->pad_id[0], 0);
    assert_int_equal(m->clip[0].cfg.num_hidden_layers, 2); /* 3 stored, the last dropped */
    assert_int_equal(m->clip[0].cfg.num_attention_heads, 4);
    /* the dropped layer, text_projection and logit_scale are no surprise;
     * only the DDPM buffers are reported */
    print_message("load log: %s", log);
    assert_null(strstr(log, "unused"));
    assert_non_null(strstr(log, "12 tensors outside the model's components"));
    /* "!" pads: every id after the end token is 0 */
    int32_t ids[77];
    int eos;
    assert_int_equal(m->family->tokenize(m, 0, "a lighthouse", ids, &eos), DF_OK);
    assert_true(eos > 1 && eos < 10);
    assert_int_equal(ids[eos], 49407);
    for (int i = eos + 1; i < 77; i++) assert_int_equal(ids[i], 0);
    /* the decision and its evidence are stated */
    double mean = stated_mean(m);
    print_message("%s\n", m->prediction_source);
    assert_int_equal(m->scheduler.prediction_type, mean < -1 ? SMP_PRED_V : SMP_PRED_EPSILON);
    char *info = model_describe(m);
    assert_non_null(strstr(info, "family: SD2.x"));
    assert_non_null(strstr(info, m->prediction_source));
    free(info);
    model_destroy(m);
}

/* A1111's test on UNets whose output is known: a constant c gives
 * mean(out - x) = c - 0.5 exactly (x = 0.5), on either side of -1; the real
 * UNet shifted by s reports its own mean + s. A configured prediction and
 * a given scheduler config win over the test. */
static void test_a1111_detection(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/variant.safetensors", tmpdir);
    static const float consts[] = {-0.45f, -0.55f}; /* -0.95: epsilon, -1.05: v */
    for (int k = 0; k < 2; k++) {
        float c = consts[k];
        write_variant(single, path, constant_out, &c);
        struct model_options o = single_options(path);
        struct model *m = load(&o);
        double mean = stated_mean(m);
        print_message("constant %.2f: %s\n", (double)c, m->prediction_source);
        assert_true(fabs(mean - ((double)c - 0.5)) < 1e-6);
        assert_int_equal(m->scheduler.prediction_type, k == 0 ? SMP_PRED_EPSILON : SMP_PRED_V);
        model_destroy(m);
        /* configured: no test decides */
        o.prediction = k == 0 ? "v" : "epsilon";
        m = load(&o);
        assert_int_equal(m->scheduler.prediction_type, k == 0 ? SMP_PRED_V : SMP_PRED_EPSILON);
        assert_string_equal(m->prediction_source, "configured");
        model_destroy(m);
    }
    /* the real UNet, then shifted across the threshold the other way */
    struct model_options o = single_options(single);
    struct model *m = load(&o);
    double m0 = stated_mean(m);
    model_destroy(m);
    float shift = (float)(m0 < -1 ? -1 - m0 + 0.25 : -1 - m0 - 0.25);
    write_variant(single, path, shifted_out, &shift);
    o = single_options(path);
    m = load(&o);
    double m1 = stated_mean(m);
    print_message("real UNet %.4f, shifted by %.4f: %.4f\n", m0, (double)shift, m1);
    assert_true(fabs(m1 - (m0 + (double)shift)) < 1e-4);
    assert_int_equal(m->scheduler.prediction_type, m0 < -1 ? SMP_PRED_EPSILON : SMP_PRED_V);
    model_destroy(m);
    /* a scheduler config given for the file is its own word: no test */
    char sched[1200];
    snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", folder);
    float c = -0.45f; /* the test would say epsilon */
    write_variant(single, path, constant_out, &c);
    o = single_options(path);
    o.scheduler_config = sched;
    m = load(&o);
    assert_int_equal(m->scheduler.prediction_type, SMP_PRED_V);
    assert_string_equal(m->prediction_source, "scheduler_config.json");
    model_destroy(m);
    unlink(path);
}

/* A tower without ln_final (or a layer's tensor) is refused naming the
 * file's key; a config's num_hidden_layers must be the stored or the cut
 * count. */
static void test_broken_tower(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/broken.safetensors", tmpdir);
    static const char *const gone[] = {ODIR "ln_final.weight", ODIR "transformer.resblocks.1.attn.in_proj_bias"};
    for (size_t k = 0; k < 2; k++) {
        write_variant(single, path, without, (void *)gone[k]);
        struct model_options o = single_options(path);
        struct model *m = NULL;
        assert_int_equal(model_load(tu_device(), &o, &m), DF_EFORMAT);
        assert_null(m);
        print_message("%s\n", df_errmsg());
        if (!strstr(df_errmsg(), gone[k])) fail_msg("\"%s\" does not name %s", df_errmsg(), gone[k]);
    }
    /* the dropped layer's tensors are not needed */
    write_variant(single, path, without, (void *)(ODIR "transformer.resblocks.2.attn.in_proj_bias"));
    struct model_options o = single_options(path);
    struct model *m = load(&o);
    assert_int_equal(m->clip[0].cfg.num_hidden_layers, 2);
    model_destroy(m);
    unlink(path);
    /* configs: 3 (as stored) and 2 (as diffusers keeps it) mean the same; 5 is refused */
    json_t *te = json_deep_copy(configs[2]);
    json_object_set_new(te, "num_hidden_layers", json_integer(2));
    o = single_options(single);
    o.component_config[COMP_TEXT_ENCODER] = te;
    m = load(&o);
    assert_int_equal(m->clip[0].cfg.num_hidden_layers, 2);
    model_destroy(m);
    json_object_set_new(te, "num_hidden_layers", json_integer(5));
    m = NULL;
    assert_int_equal(model_load(tu_device(), &o, &m), DF_EINVAL);
    assert_null(m);
    print_message("%s\n", df_errmsg());
    assert_non_null(strstr(df_errmsg(), "num_hidden_layers 5"));
    json_decref(te);
}

/* ---- single file (prediction = v) and folder, over HTTP ---- */

#define REQUEST(model)                                                                                             \
    "{\"model\": \"" model "\", \"prompt\": \"a lighthouse on a cliff, (masterpiece:1.2)\", \"negative_prompt\": " \
    "\"blurry, low quality\", \"width\": 64, \"height\": 64, \"steps\": 4, \"cfg_scale\": 7.5, \"sampler\": "      \
    "\"euler\", \"seed\": 1051, \"rng\": \"torch\"}"

static float *http_image(int port, const char *body, char **infotext) {
    struct su_resp r;
    su_req(port, "POST", "/generate", NULL, body, &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    float *img = NULL;
    int w, h;
    assert_int_equal(img_decode_png((uint8_t *)r.body, r.len, 1 << 20, &img, &w, &h, infotext), DF_OK);
    assert_int_equal(w, 64);
    assert_int_equal(h, 64);
    su_free(&r);
    return img;
}

static int worst_level(const float *a, const float *b, int64_t n) {
    int worst = 0;
    for (int64_t k = 0; k < n; k++) {
        int d = abs((int)lrintf(a[k] * 255.0f) - (int)lrintf(b[k] * 255.0f));
        if (d > worst) worst = d;
    }
    return worst;
}

static double spread(const float *a, int64_t n) {
    double s = 0, s2 = 0;
    for (int64_t k = 0; k < n; k++) {
        s += a[k];
        s2 += (double)a[k] * a[k];
    }
    return sqrt(s2 / (double)n - (s / (double)n) * (s / (double)n));
}

static void test_single_file_equals_folder(void **state) {
    (void)state;
    const int64_t n = 64 * 64 * 3;
    char *ti = NULL, *tf = NULL;
    float *a = http_image(pair_d.port, REQUEST("tiny-sd2"), &ti);
    float *b = http_image(pair_d.port, REQUEST("tiny-sd2-diffusers"), &tf);
    int worst = worst_level(a, b, n);
    print_message("SD2 single file (prediction = v) vs diffusers folder: worst pixel %d/255, image std %.3f\n",
                  worst, spread(a, n));
    assert_true(worst <= 1);
    assert_true(spread(a, n) > 0.02); /* an image, not a flat field */
    assert_non_null(strstr(ti, "Model: tiny-sd2,"));
    assert_non_null(strstr(tf, "Model: tiny-sd2-diffusers,"));
    free(ti);
    free(tf);
    free(a);
    free(b);
}

/* /models says each model's prediction and where it came from. */
static void test_models_state_prediction(void **state) {
    (void)state;
    struct su_resp r;
    su_req(pair_d.port, "GET", "/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = su_json(&r), *models = json_object_get(j, "models");
    assert_int_equal(json_array_size(models), 2);
    const json_t *f = json_array_get(models, 0), *s = json_array_get(models, 1);
    assert_string_equal(su_str(f, "name"), "tiny-sd2-diffusers");
    assert_string_equal(su_str(f, "family"), "sd2");
    assert_string_equal(su_str(f, "prediction"), "v_prediction");
    assert_string_equal(su_str(f, "prediction_source"), "scheduler_config.json");
    assert_string_equal(su_str(s, "name"), "tiny-sd2");
    assert_string_equal(su_str(s, "family"), "sd2");
    assert_string_equal(su_str(s, "prediction"), "v_prediction");
    assert_string_equal(su_str(s, "prediction_source"), "configured");
    json_decref(j);
    su_free(&r);
    /* the plain single file: A1111's test decided, and /models says so */
    struct model_options o = single_options(single);
    struct model *m = load(&o);
    su_req(plain_d.port, "GET", "/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    j = su_json(&r);
    s = json_array_get(json_object_get(j, "models"), 0);
    print_message("%s\n", r.body);
    assert_string_equal(su_str(s, "family"), "sd2");
    assert_string_equal(su_str(s, "prediction_source"), m->prediction_source);
    assert_string_equal(su_str(s, "prediction"), m->scheduler.prediction_type == SMP_PRED_V ? "v_prediction"
                                                                                               : "epsilon");
    json_decref(j);
    su_free(&r);
    model_destroy(m);
}

/* ---- what makes the two layouts agree: each ingredient changes the image ---- */

/* A worker of its own: a worker keeps its programs keyed by the model's
 * address, which a model loaded after another was destroyed may reuse. */
static float *direct_image(struct model *m) {
    struct pipe_request req = {.prompt = "a lighthouse on a cliff, (masterpiece:1.2)",
                               .negative_prompt = "blurry, low quality", .width = 64, .height = 64, .steps = 4,
                               .batch = 1, .cfg_scale = 7.5f, .sampler = SMP_EULER, .seed = 1051, .clip_skip = 1,
                               .rng = RNG_TORCH_CPU};
    struct pipe_result r;
    struct pipe_worker *w;
    assert_int_equal(pipe_worker_create(tu_device(), &w), DF_OK);
    if (pipe_generate(w, m, &req, NULL, &r) != DF_OK) fail_msg("generate: %s", df_errmsg());
    pipe_worker_destroy(w);
    float *img = malloc(64 * 64 * 3 * sizeof *img);
    memcpy(img, r.images, 64 * 64 * 3 * sizeof *img);
    pipe_result_free(&r);
    return img;
}

/* A folder sharing the tiny SD2's files but for `replace` (a subfolder
 * file), written with `content`. */
static void variant_folder(char *dir, size_t n, const char *replace, const char *content) {
    snprintf(dir, n, "%s/folder", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    static const char *const files[] = {"model_index.json", "unet/config.json",
                                        "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                                        "text_encoder/model.safetensors", "tokenizer/special_tokens_map.json",
                                        "scheduler/scheduler_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[1400], dst[1400], sub[1400];
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        snprintf(sub, sizeof sub, "%s", dst);
        char *slash = strrchr(sub, '/');
        *slash = 0;
        mkdir(sub, 0700);
        if (strcmp(files[i], replace) == 0) {
            FILE *f = fopen(dst, "w");
            assert_non_null(f);
            fputs(content, f);
            assert_int_equal(fclose(f), 0);
            continue;
        }
        snprintf(src, sizeof src, "%s/%s", folder, files[i]);
        char *real = realpath(src, NULL);
        assert_non_null(real);
        assert_int_equal(symlink(real, dst), 0);
        free(real);
    }
}

static void remove_folder(const char *dir) {
    static const char *const subs[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    char cmd[1200];
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s/%s", dir, subs[i]);
        char path[1400];
        static const char *const names[] = {"config.json", "diffusion_pytorch_model.safetensors", "model.safetensors",
                                            "special_tokens_map.json", "scheduler_config.json"};
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            snprintf(path, sizeof path, "%s/%s", cmd, names[k]);
            unlink(path);
        }
        rmdir(cmd);
    }
    snprintf(cmd, sizeof cmd, "%s/model_index.json", dir);
    unlink(cmd);
    rmdir(dir);
}

static void test_ingredients_matter(void **state) {
    (void)state;
    const int64_t n = 64 * 64 * 3;
    struct model_options fo = {.path = folder, .precision = WTS_F32};
    struct model *mf = load(&fo);
    assert_ptr_equal(mf->family, &family_sd2); /* StableDiffusionPipeline with a GELU text encoder */
    assert_int_equal(mf->pad_id[0], 0);
    float *ref = direct_image(mf);
    /* the single file as v: the folder's image (the same check as over HTTP, unquantised) */
    struct model_options so = single_options(single);
    so.prediction = "v";
    struct model *ms = load(&so);
    float *same = direct_image(ms);
    int w_same = worst_level(same, ref, n);
    model_destroy(ms);
    /* as epsilon: another image */
    so.prediction = "epsilon";
    ms = load(&so);
    float *eps = direct_image(ms);
    int w_eps = worst_level(eps, ref, n);
    model_destroy(ms);
    /* the folder with all three layers (nothing dropped): another image */
    char clip[1200];
    const char *fx = getenv("DF_TEST_FIXTURES");
    snprintf(clip, sizeof clip, "%s/clip_text_tiny.safetensors", fx && *fx ? fx : "../shared/fixtures");
    fo.component[COMP_TEXT_ENCODER] = clip;
    fo.component_config[COMP_TEXT_ENCODER] = configs[2];
    struct model *m3 = load(&fo);
    assert_int_equal(m3->clip[0].cfg.num_hidden_layers, 3);
    float *full = direct_image(m3);
    int w_full = worst_level(full, ref, n);
    model_destroy(m3);
    /* a folder whose tokenizer pads with the end token: read, and another image */
    char dir[128];
    variant_folder(dir, sizeof dir, "tokenizer/special_tokens_map.json", "{\"pad_token\": \"<|endoftext|>\"}");
    struct model_options po = {.path = dir, .precision = WTS_F32};
    struct model *mp = load(&po);
    assert_ptr_equal(mp->family, &family_sd2);
    assert_int_equal(mp->pad_id[0], 49407); /* the file's word over the family's 0 */
    float *eos_pad = direct_image(mp);
    int w_pad = worst_level(eos_pad, ref, n);
    model_destroy(mp);
    remove_folder(dir);
    print_message("vs the folder's image: single file as v %d/255; as epsilon %d/255; 3 layers %d/255; "
                  "pad <|endoftext|> %d/255\n", w_same, w_eps, w_full, w_pad);
    assert_true(w_same <= 1);
    assert_true(w_eps > 8 && w_full > 8 && w_pad > 8);
    free(ref);
    free(same);
    free(eps);
    free(full);
    free(eos_pad);
    model_destroy(mf);
}

/* A quick_gelu text encoder of width 32 reads as SD1.x (OpenAI CLIP's
 * activation): the folder's tokenizer still gives its pad "!" = 0, which
 * SD1.x's default (the end token) would not. */
static void test_folder_pad_read_whatever_family(void **state) {
    (void)state;
    json_t *te = json_deep_copy(configs[2]);
    json_object_set_new(te, "hidden_act", json_string("quick_gelu"));
    json_object_set_new(te, "num_hidden_layers", json_integer(2));
    char *text = json_dumps(te, 0);
    json_decref(te);
    char dir[128];
    variant_folder(dir, sizeof dir, "text_encoder/config.json", text);
    free(text);
    struct model_options o = {.path = dir, .precision = WTS_F32};
    struct model *m = load(&o);
    assert_ptr_equal(m->family, &family_sd1);
    assert_int_equal(m->pad_id[0], 0);
    assert_int_equal(m->clip[0].cfg.hidden_act, CLIP_QUICK_GELU);
    model_destroy(m);
    remove_folder(dir);
}

int main(int argc, char **argv) {
    su_filter(argc, argv);
    const struct CMUnitTest tests[] = {
        SU_TEST(test_single_file_is_sd2),      SU_TEST(test_a1111_detection),
        SU_TEST(test_broken_tower),            SU_TEST(test_single_file_equals_folder),
        SU_TEST(test_models_state_prediction), SU_TEST(test_ingredients_matter),
        SU_TEST(test_folder_pad_read_whatever_family),
    };
    return cmocka_run_group_tests_name("sd2", tests, setup, teardown);
}
