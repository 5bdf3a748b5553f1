/* AutoencoderKL against the fixtures (both key layouts, fp32 and fp16,
 * through check_vae itself), plus: both layouts load to bit-identical
 * weights and decode to bit-identical images; one decode's device memory;
 * a missing, a mis-shaped and an extra tensor are errors that name them;
 * config inference from shapes reproduces the manifest's config;
 * config.json reading (every key, defaults, refusals naming the key), a
 * diffusers folder with SDXL's 8-group VAE, SD3's VAE without quant convs,
 * and configs contradicting the weights. Tiling: test_vae_tiles.c. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../models/model.h"
#include "../models/vae.h"
#include "../tools/check.h"
#include "testutil.h"

static json_t *manifest;

static const char *fixtures(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

static const json_t *case_json(const char *name) {
    if (!manifest) {
        char path[4096];
        snprintf(path, sizeof path, "%s/manifest.json", fixtures());
        json_error_t err;
        manifest = json_load_file(path, JSON_ALLOW_NUL, &err);
        if (!manifest) fail_msg("%s: %s", path, err.text);
    }
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(manifest, "cases"), i, c) {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0) return c;
    }
    fail_msg("no case %s in the manifest", name);
    return NULL;
}

static struct check_ctx make_ctx(bool fp16) {
    return (struct check_ctx){.dir = fixtures(), .dev = tu_device(), .fp16 = fp16, .tolerance = fp16 ? 1e-2 : 1e-4};
}

static struct st_file *open_fixture(const char *file) {
    struct check_ctx ctx = make_ctx(false);
    struct st_file *f = NULL;
    if (check_open(&ctx, file, &f) != DF_OK) fail_msg("%s: %s", file, df_errmsg());
    return f;
}

/* check_vae on a case, with its own file or `file` in its place; returns
 * the status, fills *c. */
static df_status run_check(const char *name, bool fp16, struct st_file *file, struct check_case *c) {
    struct check_ctx ctx = make_ctx(fp16);
    const json_t *j = case_json(name);
    *c = (struct check_case){.name = name, .json = j, .file = file};
    if (!file) c->file = open_fixture(json_string_value(json_object_get(j, "file")));
    df_status st = check_vae(&ctx, c);
    if (!file) st_close(c->file);
    tu_check_validation(ctx.dev);
    return st;
}

static void pass_case(const char *name, bool fp16) {
    double t0 = tu_seconds();
    struct check_case c;
    df_status st = run_check(name, fp16, NULL, &c);
    if (st != DF_OK) fail_msg("%s: %s", name, df_errmsg());
    print_message("  %s %s: rel_err %.3e (%s) %.2f s\n", name, fp16 ? "fp16" : "fp32", c.max_err, c.detail,
                  tu_seconds() - t0);
    assert_false(c.failed);
}

static void test_vae_tiny(void **state) {
    (void)state;
    pass_case("vae_tiny", false);
}

static void test_vae_tiny_ldm_layout(void **state) {
    (void)state;
    pass_case("vae_tiny_ldm_layout", false);
}

static void test_vae_tiny_fp16(void **state) {
    (void)state;
    pass_case("vae_tiny", true);
    pass_case("vae_tiny_ldm_layout", true);
}

/* ---- weights in either layout, as the checkpoint loader will load them --- */

static const char *const parts[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};

static struct weights *load_diffusers(const struct st_file *f) {
    struct weights *w = NULL;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (wts_load(w, f, parts[i], NULL, 0) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
    return w;
}

/* Single-file flow: config from the LDM keys, then the rename table. */
static struct weights *load_ldm(const struct st_file *f, const char *prefix, struct vae_config *cfg) {
    if (vae_ldm_infer_config(f, prefix, cfg) != DF_OK) fail_msg("vae_ldm_infer_config: %s", df_errmsg());
    struct wts_rename *r = NULL;
    int n = 0;
    if (vae_ldm_renames(cfg, prefix, &r, &n) != DF_OK) fail_msg("vae_ldm_renames: %s", df_errmsg());
    struct weights *w = NULL;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    if (wts_load(w, f, prefix, r, n) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
    free(r);
    return w;
}

/* Decodes in.latent of the vae_tiny fixture; returns the image. */
static float *decode(struct weights *w, const struct vae_config *cfg, int64_t *numel, uint64_t *arena) {
    struct vae_model m;
    if (vae_load(w, cfg, &m) != DF_OK) fail_msg("vae_load: %s", df_errmsg());
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    struct st_file *io = open_fixture("vae_tiny.safetensors");
    const struct st_tensor *t = st_find(io, "in.latent");
    assert_non_null(t);
    float *x = malloc((size_t)t->numel * sizeof *x);
    assert_non_null(x);
    assert_int_equal(st_to_f32(t, x), DF_OK);
    struct cg_graph *g = NULL;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *in = cg_input(g, "latent", 4, t->shape), *out = NULL;
    if (vae_decode(g, &m, in, &out) != DF_OK) fail_msg("vae_decode: %s", df_errmsg());
    assert_int_equal(out->ne[2], t->shape[2] * vae_scale(cfg));
    *numel = cg_numel(out);
    float *y = malloc((size_t)*numel * sizeof *y);
    assert_non_null(y);
    cg_output(g, out);
    struct program *p = NULL;
    if (prog_create(tu_device(), g, NULL, &p) != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    *arena = prog_arena_bytes(p);
    assert_int_equal(buf_fill(prog_arena(p), 0, *arena & ~3ull, 0x7fc00000u), DF_OK);
    assert_int_equal(prog_write(p, in, x), DF_OK);
    if (prog_run(p) != DF_OK) fail_msg("prog_run: %s", df_errmsg());
    assert_int_equal(prog_read(p, out, y), DF_OK);
    prog_destroy(p);
    tu_check_validation(tu_device());
    cg_destroy(g);
    st_close(io);
    free(x);
    vae_free(&m);
    return y;
}

static void test_layouts_identical(void **state) {
    (void)state;
    struct device *dev = tu_device();
    struct st_file *fd = open_fixture("vae_tiny.safetensors"), *fl = open_fixture("vae_tiny.ldm.safetensors");
    uint64_t base = dev_memory_in_use(dev);
    dev_memory_reset_peak(dev);
    struct weights *wd = load_diffusers(fd);
    struct vae_config cd, cl;
    assert_int_equal(vae_infer_config(wd, &cd), DF_OK);
    int64_t n1, n2;
    uint64_t arena;
    double t0 = tu_seconds();
    float *y1 = decode(wd, &cd, &n1, &arena);
    print_message("  one 64x64 decode: weights %llu B, arena %llu B, device peak %llu B (%llu before), %.2f s\n",
                  (unsigned long long)wts_device_bytes(wd), (unsigned long long)arena,
                  (unsigned long long)dev_memory_peak(dev), (unsigned long long)base, tu_seconds() - t0);

    struct weights *wl = load_ldm(fl, "first_stage_model.", &cl);
    /* every diffusers tensor exists under the renamed LDM key, same bytes */
    int count = 0;
    for (size_t i = 0; i < st_count(fd); i++) {
        const struct st_tensor *t = st_at(fd, i);
        if (strncmp(t->name, "in.", 3) == 0 || strncmp(t->name, "out.", 4) == 0) continue;
        struct wt a, b;
        assert_int_equal(wts_take(wd, t->name, t->ndim, t->shape, &a), DF_OK);
        if (wts_take(wl, t->name, t->ndim, t->shape, &b) != DF_OK) fail_msg("LDM layout: %s", df_errmsg());
        size_t bytes = (size_t)t->numel * 4;
        float *ha = malloc(bytes), *hb = malloc(bytes);
        assert_int_equal(buf_read(a.buf, a.offset, ha, bytes), DF_OK);
        assert_int_equal(buf_read(b.buf, b.offset, hb, bytes), DF_OK);
        if (memcmp(ha, hb, bytes) != 0) fail_msg("%s differs between the layouts", t->name);
        free(ha);
        free(hb);
        count++;
    }
    assert_int_equal(wts_report_unused(wl, NULL, NULL), 0);
    print_message("  %d tensors identical in both layouts\n", count);
    float *y2 = decode(wl, &cl, &n2, &arena);
    assert_int_equal(n1, n2);
    assert_memory_equal(y1, y2, (size_t)n1 * sizeof *y1);
    free(y1);
    free(y2);
    wts_destroy(wd);
    wts_destroy(wl);
    st_close(fd);
    st_close(fl);
}

/* Non-square, batched, odd-sized: shapes follow, batch items stay apart. */
static void test_shapes(void **state) {
    (void)state;
    struct st_file *f = open_fixture("vae_tiny.safetensors");
    struct weights *w = load_diffusers(f);
    struct vae_config cfg;
    struct vae_model m;
    assert_int_equal(vae_infer_config(w, &cfg), DF_OK);
    assert_int_equal(vae_load(w, &cfg, &m), DF_OK);
    int s = vae_scale(&cfg), lc = cfg.latent_channels;
    struct cg_graph *g = NULL;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t zn[4] = {2, lc, 3, 5};
    struct cg_tensor *z = cg_input(g, "latent", 4, zn), *img = NULL;
    assert_int_equal(vae_decode(g, &m, z, &img), DF_OK);
    assert_memory_equal(img->ne, ((int64_t[]){2, cfg.out_channels, 3 * s, 5 * s}), 4 * sizeof(int64_t));
    size_t half = (size_t)(lc * 3 * 5), out_half = (size_t)cg_numel(img) / 2;
    float *zd = tu_random(2 * half, 7, -2, 2), *y = malloc(2 * out_half * sizeof *y);
    memcpy(zd + half, zd, half * sizeof *zd);
    tu_run(tu_device(), g, 1, &z, (const float *[]){zd}, img, y);
    for (size_t i = 0; i < 2 * out_half; i++) assert_true(isfinite(y[i]));
    assert_memory_equal(y, y + out_half, out_half * sizeof *y);
    cg_destroy(g);
    free(zd);
    free(y);

    /* odd sizes: each stride-2 conv pads right/bottom by one, floor((n-2)/2)+1 */
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *x = cg_input(g, "image", 4, (int64_t[]){1, cfg.in_channels, 37, 20}), *mom = NULL;
    assert_int_equal(vae_encode(g, &m, x, &mom), DF_OK);
    int64_t h = 37, wd = 20;
    for (int i = 0; i < cfg.n_blocks - 1; i++) h = (h - 2) / 2 + 1, wd = (wd - 2) / 2 + 1;
    assert_memory_equal(mom->ne, ((int64_t[]){1, 2 * lc, h, wd}), 4 * sizeof(int64_t));
    /* the wrong channel count is refused up front */
    struct cg_tensor *bad = cg_input(g, "bad", 4, (int64_t[]){1, lc + 1, 4, 4}), *o = NULL;
    assert_int_equal(vae_decode(g, &m, bad, &o), DF_EINVAL);
    cg_destroy(g);
    vae_free(&m);
    wts_destroy(w);
    st_close(f);
}

/* ---- broken files, built in memory from the fixtures --------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void put(struct sbuf *s, const void *data, size_t n) {
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2 + 256;
        s->p = realloc(s->p, s->cap);
        assert_non_null(s->p);
    }
    memcpy(s->p + s->len, data, n);
    s->len += n;
}

static void putf(struct sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct sbuf *s, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof tmp);
    put(s, tmp, (size_t)n);
}

struct edit {
    const char *drop;        /* leave this tensor out */
    const char *reshape;     /* give this tensor `shape` (same byte count) */
    int ndim;
    int64_t shape[4];
    const char *add;         /* an extra 1-element F32 tensor */
    const char *only;        /* keep only the tensors under this prefix, without it */
};

/* A safetensors image of fixture `file` with one edit; caller frees. */
static char *image_of(const char *file, const struct edit *e, size_t *len) {
    struct st_file *src = open_fixture(file);
    struct sbuf hdr = {0}, data = {0};
    putf(&hdr, "{");
    for (size_t i = 0; i < st_count(src); i++) {
        const struct st_tensor *t = st_at(src, i);
        if (e->drop && strcmp(t->name, e->drop) == 0) continue;
        if (e->only && strncmp(t->name, e->only, strlen(e->only)) != 0) continue;
        bool re = e->reshape && strcmp(t->name, e->reshape) == 0;
        int nd = re ? e->ndim : t->ndim;
        const int64_t *shape = re ? e->shape : t->shape;
        putf(&hdr, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", hdr.len > 1 ? "," : "",
             t->name + (e->only ? strlen(e->only) : 0), st_dtype_name(t->dtype));
        for (int d = 0; d < nd; d++) putf(&hdr, d ? ",%lld" : "%lld", (long long)shape[d]);
        putf(&hdr, "],\"data_offsets\":[%zu,%zu]}", data.len, data.len + (size_t)t->nbytes);
        put(&data, t->data, (size_t)t->nbytes);
    }
    if (e->add) {
        float one = 1;
        putf(&hdr, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}", e->add, data.len,
             data.len + 4);
        put(&data, &one, 4);
    }
    putf(&hdr, "}");
    while (hdr.len % 8) put(&hdr, " ", 1);
    struct sbuf img = {0};
    uint64_t n = hdr.len; /* little-endian hosts only, like the reader */
    put(&img, &n, 8);
    put(&img, hdr.p, hdr.len);
    put(&img, data.p, data.len);
    free(hdr.p);
    free(data.p);
    st_close(src);
    *len = img.len;
    return img.p;
}

/* The same as an open file; *out_buf must outlive it. */
static struct st_file *rewrite(const char *file, const struct edit *e, char **out_buf) {
    size_t len;
    *out_buf = image_of(file, e, &len);
    struct st_file *f = NULL;
    if (st_open_memory(*out_buf, len, &f) != DF_OK) fail_msg("rewritten %s: %s", file, df_errmsg());
    return f;
}

/* check_vae on case `name` with its weights file edited: must fail with a
 * message containing every string of `want` (NULL-terminated). */
static void expect_error(const char *name, const struct edit *e, const char *const *want) {
    const char *file = json_string_value(json_object_get(case_json(name), "file"));
    char *buf;
    struct st_file *f = rewrite(file, e, &buf);
    struct check_case c;
    df_status st = run_check(name, false, f, &c);
    print_message("  %s: %s: %s\n", name, df_status_name(st), df_errmsg());
    assert_int_equal(st, DF_EFORMAT);
    for (; *want; want++)
        if (!strstr(df_errmsg(), *want)) fail_msg("error \"%s\" lacks \"%s\"", df_errmsg(), *want);
    st_close(f);
    free(buf);
}

static void test_missing_tensor(void **state) {
    (void)state;
    expect_error("vae_tiny", &(struct edit){.drop = "decoder.up_blocks.1.resnets.0.norm2.bias"},
                 (const char *[]){"missing tensor", "\"decoder.up_blocks.1.resnets.0.norm2.bias\"", NULL});
    /* LDM: named by its diffusers name (nin_shortcut -> conv_shortcut) */
    expect_error("vae_tiny_ldm_layout",
                 &(struct edit){.drop = "first_stage_model.encoder.down.2.block.0.nin_shortcut.bias"},
                 (const char *[]){"missing tensor", "\"encoder.down_blocks.2.resnets.0.conv_shortcut.bias\"", NULL});
}

static void test_wrong_shape(void **state) {
    (void)state;
    expect_error("vae_tiny",
                 &(struct edit){.reshape = "encoder.down_blocks.2.resnets.0.conv_shortcut.weight", .ndim = 4,
                                .shape = {32, 64, 1, 1}},
                 (const char *[]){"\"encoder.down_blocks.2.resnets.0.conv_shortcut.weight\"", "[32, 64, 1, 1]",
                                  "[64, 32, 1, 1]", NULL});
    /* LDM attention convs are [C, C, 1, 1]; anything else is not a linear */
    expect_error("vae_tiny_ldm_layout",
                 &(struct edit){.reshape = "first_stage_model.decoder.mid.attn_1.q.weight", .ndim = 4,
                                .shape = {64, 32, 2, 1}},
                 (const char *[]){"\"decoder.mid_block.attentions.0.to_q.weight\"", "[64, 32, 2, 1]", "[64, 64]",
                                  NULL});
}

static void test_extra_tensor(void **state) {
    (void)state;
    expect_error("vae_tiny", &(struct edit){.add = "decoder.up_blocks.0.resnets.9.conv1.bias"},
                 (const char *[]){"\"decoder.up_blocks.0.resnets.9.conv1.bias\"", NULL});
}

/* ---- config inference ------------------------------------------------------ */

static void assert_manifest_config(const struct vae_config *c, const json_t *j) {
    json_t *boc = json_object_get(j, "block_out_channels");
    assert_int_equal(c->n_blocks, (int)json_array_size(boc));
    for (int i = 0; i < c->n_blocks; i++)
        assert_int_equal(c->block_out_channels[i], (int)json_integer_value(json_array_get(boc, (size_t)i)));
    assert_int_equal(c->layers_per_block, check_config_int(j, "layers_per_block", -1));
    assert_int_equal(c->latent_channels, check_config_int(j, "latent_channels", -1));
    assert_int_equal(c->in_channels, check_config_int(j, "in_channels", 3));
    assert_int_equal(c->out_channels, check_config_int(j, "out_channels", 3));
    json_t *q = json_object_get(j, "use_quant_conv"), *pq = json_object_get(j, "use_post_quant_conv");
    assert_int_equal(c->use_quant_conv, !json_is_false(q));
    assert_int_equal(c->use_post_quant_conv, !json_is_false(pq));
    assert_true(c->mid_block_add_attention);
    /* not in the shapes: the default of every released VAE */
    assert_int_equal(c->norm_num_groups, 32);
    assert_true(c->scaling_factor > 0);
}

static void test_infer_config(void **state) {
    (void)state;
    const json_t *j = json_object_get(case_json("vae_tiny"), "config");
    struct st_file *f = open_fixture("vae_tiny.safetensors");
    struct weights *w = load_diffusers(f);
    struct vae_config c;
    assert_int_equal(vae_infer_config(w, &c), DF_OK);
    assert_manifest_config(&c, j);
    wts_destroy(w);
    st_close(f);

    f = open_fixture("vae_tiny.ldm.safetensors");
    assert_int_equal(vae_ldm_infer_config(f, "first_stage_model.", &c), DF_OK);
    assert_manifest_config(&c, json_object_get(case_json("vae_tiny_ldm_layout"), "config"));
    /* wrong prefix: an error naming what it looked for */
    assert_int_equal(vae_ldm_infer_config(f, "model.", &c), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "model.encoder.conv_in.weight"));
    st_close(f);
}

/* ---- config.json ------------------------------------------------------------ */

static void assert_config_equal(const struct vae_config *a, const struct vae_config *b) {
    assert_int_equal(a->in_channels, b->in_channels);
    assert_int_equal(a->out_channels, b->out_channels);
    assert_int_equal(a->latent_channels, b->latent_channels);
    assert_int_equal(a->n_blocks, b->n_blocks);
    for (int i = 0; i < a->n_blocks; i++) assert_int_equal(a->block_out_channels[i], b->block_out_channels[i]);
    assert_int_equal(a->layers_per_block, b->layers_per_block);
    assert_int_equal(a->norm_num_groups, b->norm_num_groups);
    assert_true(a->scaling_factor == b->scaling_factor);
    assert_true(a->shift_factor == b->shift_factor);
    assert_int_equal(a->use_quant_conv, b->use_quant_conv);
    assert_int_equal(a->use_post_quant_conv, b->use_post_quant_conv);
    assert_int_equal(a->mid_block_add_attention, b->mid_block_add_attention);
    assert_int_equal(a->sample_size, b->sample_size);
    assert_int_equal(a->force_upcast, b->force_upcast);
}

/* pipeline_sdxl_tiny's VAE config, written out in C. */
static struct vae_config sdxl_tiny_config(void) {
    struct vae_config c;
    memset(&c, 0, sizeof c);
    c.in_channels = 3;
    c.out_channels = 3;
    c.latent_channels = 4;
    c.n_blocks = 4;
    memcpy(c.block_out_channels, (int[]){16, 16, 32, 32}, 4 * sizeof(int));
    c.layers_per_block = 1;
    c.norm_num_groups = 8;
    c.scaling_factor = 0.13025f;
    c.use_quant_conv = c.use_post_quant_conv = c.mid_block_add_attention = true;
    c.sample_size = 64;
    c.force_upcast = true;
    return c;
}

static const json_t *vae_config_of(const char *pipeline_case) {
    return json_object_get(json_object_get(case_json(pipeline_case), "config"), "vae");
}

/* `base` with key = value (value given as JSON text); caller decrefs. */
static json_t *with(const json_t *base, const char *key, const char *value) {
    json_t *j = json_deep_copy(base);
    json_error_t err;
    json_t *v = json_loads(value, JSON_DECODE_ANY, &err);
    assert_non_null(v);
    assert_int_equal(json_object_set_new(j, key, v), 0);
    return j;
}

static void test_config_from_json(void **state) {
    (void)state;
    const json_t *sdxl = vae_config_of("pipeline_sdxl_tiny");
    struct vae_config c, want = sdxl_tiny_config();
    assert_int_equal(vae_config_from_json(sdxl, &c), DF_OK);
    assert_config_equal(&c, &want);
    /* SD3: shift, no quant convs, 16 latent channels */
    assert_int_equal(vae_config_from_json(vae_config_of("pipeline_sd3_tiny"), &c), DF_OK);
    assert_int_equal(c.latent_channels, 16);
    assert_false(c.use_quant_conv);
    assert_false(c.use_post_quant_conv);
    assert_true(c.shift_factor == 0.0609f && c.scaling_factor == 1.5305f);
    /* every key absent: AutoencoderKL's defaults */
    json_t *empty = json_object();
    assert_int_equal(vae_config_from_json(empty, &c), DF_OK);
    assert_int_equal(c.n_blocks, 1);
    assert_int_equal(c.block_out_channels[0], 64);
    assert_int_equal(c.layers_per_block, 1);
    assert_int_equal(c.norm_num_groups, 32);
    assert_int_equal(c.sample_size, 32);
    assert_true(c.scaling_factor == 0.18215f && c.shift_factor == 0);
    assert_true(c.use_quant_conv && c.use_post_quant_conv && c.mid_block_add_attention && c.force_upcast);
    json_decref(empty);
    /* sample_size as [h, w]; unknown keys ignored */
    json_t *j = with(sdxl, "sample_size", "[96, 128]");
    json_object_set_new(j, "_class_name", json_string("AutoencoderKL"));
    assert_int_equal(vae_config_from_json(j, &c), DF_OK);
    assert_int_equal(c.sample_size, 96);
    json_decref(j);

    /* refused, naming the key */
    static const struct { const char *key, *value; df_status st; } bad[] = {
        {"norm_num_groups", "12", DF_EINVAL},          /* does not divide 16 */
        {"norm_num_groups", "0", DF_EINVAL},
        {"layers_per_block", "\"2\"", DF_EINVAL},
        {"latent_channels", "-4", DF_EINVAL},
        {"block_out_channels", "[16, 16, 32]", DF_EINVAL}, /* block types list 4 */
        {"block_out_channels", "[]", DF_EINVAL},
        {"block_out_channels", "[16, 16, 32, 32, 32, 32, 32, 32, 32]", DF_EUNSUPPORTED},
        {"down_block_types", "[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
                             "\"AttnDownEncoderBlock2D\"]", DF_EUNSUPPORTED},
        {"up_block_types", "[\"UpDecoderBlock2D\"]", DF_EINVAL},
        {"act_fn", "\"gelu\"", DF_EUNSUPPORTED},
        {"latents_mean", "[0.1, 0.2, 0.3, 0.4]", DF_EUNSUPPORTED},
        {"latents_std", "[1, 1, 1, 1]", DF_EUNSUPPORTED},
        {"scaling_factor", "0", DF_EINVAL},
        {"shift_factor", "\"0.1\"", DF_EINVAL},
        {"force_upcast", "1", DF_EINVAL},
        {"use_quant_conv", "\"no\"", DF_EINVAL},
        {"sample_size", "-64", DF_EINVAL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = with(sdxl, bad[i].key, bad[i].value);
        df_status st = vae_config_from_json(j, &c);
        print_message("  %s = %s: %s: %s\n", bad[i].key, bad[i].value, df_status_name(st), df_errmsg());
        assert_int_equal(st, bad[i].st);
        if (!strstr(df_errmsg(), bad[i].key)) fail_msg("error \"%s\" does not name %s", df_errmsg(), bad[i].key);
        json_decref(j);
    }
    /* block types absent with more than one block: diffusers would build one */
    j = json_deep_copy(sdxl);
    json_object_del(j, "down_block_types");
    assert_int_equal(vae_config_from_json(j, &c), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "down_block_types"));
    json_decref(j);
}

/* Decodes latent z [1, C, h, w] on a NaN-poisoned arena. */
static float *decode_host(const struct vae_model *m, const float *z, const int64_t ne[4], int64_t *numel) {
    struct cg_graph *g = NULL;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *in = cg_input(g, "latent", 4, ne), *out = NULL;
    if (vae_decode(g, m, in, &out) != DF_OK) fail_msg("vae_decode: %s", df_errmsg());
    *numel = cg_numel(out);
    float *y = malloc((size_t)*numel * sizeof *y);
    assert_non_null(y);
    tu_run(tu_device(), g, 1, &in, (const float *[]){z}, out, y);
    cg_destroy(g);
    return y;
}

/* A pipeline fixture's VAE on its recorded decode: out.vae_input ->
 * dbg.vae_decode_raw; returns the image, checks the error. */
static float *decode_pipeline_case(const char *pipeline_case, const struct vae_model *m, int64_t *numel) {
    struct st_file *f = open_fixture(json_string_value(json_object_get(case_json(pipeline_case), "file")));
    const struct st_tensor *zt = st_find(f, "out.vae_input"), *rt = st_find(f, "dbg.vae_decode_raw");
    assert_non_null(zt);
    assert_non_null(rt);
    float *z = malloc((size_t)zt->numel * sizeof *z), *ref = malloc((size_t)rt->numel * sizeof *ref);
    assert_int_equal(st_to_f32(zt, z), DF_OK);
    assert_int_equal(st_to_f32(rt, ref), DF_OK);
    float *y = decode_host(m, z, zt->shape, numel);
    assert_int_equal(*numel, rt->numel);
    double err = tu_rel_l2f(y, ref, (size_t)*numel);
    print_message("  %s VAE decode vs dbg.vae_decode_raw: rel L2 %.2e\n", pipeline_case, err);
    assert_true(err <= 1e-4);
    free(z);
    free(ref);
    st_close(f);
    return y;
}

/* The "vae." tensors of a pipeline fixture, under diffusers names. */
static struct weights *load_prefixed(const struct st_file *f, const char *prefix) {
    struct weights *w = NULL;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    struct wts_rename strip = {prefix, "", NULL};
    if (wts_load(w, f, prefix, &strip, 1) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
    return w;
}

/* SD3's VAE: no quant convs, 16 channels, 8 groups; config given, and the
 * quant convs' absence inferred from a config-less file. */
static void test_sd3_vae(void **state) {
    (void)state;
    struct st_file *f = open_fixture("pipeline_sd3_tiny.safetensors");
    struct weights *w = load_prefixed(f, "vae.");
    struct vae_config c, inferred;
    assert_int_equal(vae_config_from_json(vae_config_of("pipeline_sd3_tiny"), &c), DF_OK);
    assert_int_equal(vae_infer_config(w, &inferred), DF_OK);
    assert_false(inferred.use_quant_conv);
    assert_false(inferred.use_post_quant_conv);
    assert_int_equal(inferred.latent_channels, 16);
    struct vae_model m;
    if (vae_load(w, &c, &m) != DF_OK) fail_msg("vae_load: %s", df_errmsg());
    int64_t n;
    free(decode_pipeline_case("pipeline_sd3_tiny", &m, &n));
    vae_free(&m);
    wts_destroy(w);
    /* a config claiming quant convs the file lacks names the tensor */
    w = load_prefixed(f, "vae.");
    c.use_post_quant_conv = true;
    assert_int_equal(vae_load(w, &c, &m), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "\"post_quant_conv.weight\""));
    wts_destroy(w);
    st_close(f);
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) fail_msg("%s: cannot write", path);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* A diffusers folder: the tiny SD1.x model's other parts (links into
 * `make tiny-model`'s folder) with pipeline_sdxl_tiny's VAE and `config`
 * as vae/config.json. */
static const char *const folder_links[] = {"model_index.json", "scheduler", "unet", "text_encoder"};
#define N_LINKS (sizeof folder_links / sizeof folder_links[0])

struct folder {
    char dir[64], link[N_LINKS][256], vae[256], weights[256], config[256];
};

/* a/b into out, which must hold it */
static void join(char *out, size_t cap, const char *a, const char *b) {
    int n = snprintf(out, cap, "%s/%s", a, b);
    assert_true(n > 0 && (size_t)n < cap);
}

static void folder_create(struct folder *fo) {
    const char *tiny = getenv("DF_TEST_TINY_MODEL");
    if (!tiny || !*tiny) tiny = "build/tiny-model";
    char src[4096], abs[4096];
    snprintf(src, sizeof src, "%s/tiny-sd15-diffusers", tiny);
    if (!realpath(src, abs)) fail_msg("%s missing: run make tiny-model", src);
    snprintf(fo->dir, sizeof fo->dir, "/tmp/df_test_vae_XXXXXX");
    assert_non_null(mkdtemp(fo->dir));
    for (size_t i = 0; i < N_LINKS; i++) {
        join(fo->link[i], sizeof fo->link[i], fo->dir, folder_links[i]);
        join(src, sizeof src, abs, folder_links[i]);
        assert_int_equal(symlink(src, fo->link[i]), 0);
    }
    join(fo->vae, sizeof fo->vae, fo->dir, "vae");
    assert_int_equal(mkdir(fo->vae, 0700), 0);
    size_t len;
    char *img = image_of("pipeline_sdxl_tiny.safetensors", &(struct edit){.only = "vae."}, &len);
    join(fo->weights, sizeof fo->weights, fo->vae, "diffusion_pytorch_model.safetensors");
    write_file(fo->weights, img, len);
    free(img);
    join(fo->config, sizeof fo->config, fo->vae, "config.json");
}

static df_status folder_load(struct folder *fo, const json_t *config, struct model **m) {
    assert_int_equal(json_dump_file(config, fo->config, 0), 0);
    struct model_options opt = {.path = fo->dir, .precision = WTS_F32};
    return model_load(tu_device(), &opt, m);
}

static void folder_destroy(struct folder *fo) {
    if (!fo->dir[0]) return;
    unlink(fo->weights);
    unlink(fo->config);
    rmdir(fo->vae);
    for (size_t i = 0; i < N_LINKS; i++) unlink(fo->link[i]);
    rmdir(fo->dir);
    fo->dir[0] = 0;
}

static struct folder folder; /* removed by teardown if a test fails */

/* norm_num_groups 8 from vae/config.json: the folder's VAE decodes like
 * the same weights with the config written in C, and like diffusers. */
static void test_sdxl_vae_folder(void **state) {
    (void)state;
    const json_t *cfg = vae_config_of("pipeline_sdxl_tiny");
    struct folder *fo = &folder;
    folder_create(fo);
    struct model *m = NULL;
    if (folder_load(fo, cfg, &m) != DF_OK) fail_msg("%s: %s", fo->dir, df_errmsg());
    struct vae_config want = sdxl_tiny_config();
    assert_config_equal(&m->vae.cfg, &want);
    int64_t n1, n2;
    float *y1 = decode_pipeline_case("pipeline_sdxl_tiny", &m->vae, &n1);
    model_destroy(m);

    struct st_file *f = open_fixture("pipeline_sdxl_tiny.safetensors");
    struct weights *w = load_prefixed(f, "vae.");
    struct vae_model vm;
    if (vae_load(w, &want, &vm) != DF_OK) fail_msg("vae_load: %s", df_errmsg());
    float *y2 = decode_pipeline_case("pipeline_sdxl_tiny", &vm, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(y1, y2, (size_t)n1 * sizeof *y1);
    vae_free(&vm);
    wts_destroy(w);
    st_close(f);

    /* another group count the channels allow is honoured: a different image */
    json_t *j = with(cfg, "norm_num_groups", "16");
    if (folder_load(fo, j, &m) != DF_OK) fail_msg("%s: %s", fo->dir, df_errmsg());
    json_decref(j);
    struct st_file *io = open_fixture("pipeline_sdxl_tiny.safetensors");
    const struct st_tensor *zt = st_find(io, "out.vae_input");
    float *z = malloc((size_t)zt->numel * sizeof *z);
    assert_int_equal(st_to_f32(zt, z), DF_OK);
    float *y3 = decode_host(&m->vae, z, zt->shape, &n2);
    double diff = tu_rel_l2f(y3, y1, (size_t)n1);
    print_message("  norm_num_groups 16 instead of 8: rel L2 %.2e from the right image\n", diff);
    assert_true(diff > 1e-2);
    free(z);
    free(y3);
    st_close(io);
    model_destroy(m);

    /* configs contradicting the weights: the error names the key or tensor */
    static const struct { const char *key, *value, *want[3]; } bad[] = {
        {"norm_num_groups", "32", {"norm_num_groups", "block_out_channels[0] = 16", NULL}},
        {"block_out_channels", "[16, 16, 32, 64]",
         {"\"encoder.down_blocks.3.resnets.0.conv1.weight\"", "[32, 32, 3, 3]", "[64, 32, 3, 3]"}},
        {"layers_per_block", "2", {"missing tensor", "\"encoder.down_blocks.0.resnets.1.norm1.weight\"", NULL}},
        {"latent_channels", "16", {"\"encoder.conv_out.weight\"", "[8, 32, 3, 3]", "[32, 32, 3, 3]"}},
        {"use_quant_conv", "false", {"\"quant_conv.", "use_quant_conv false", NULL}},
        {"mid_block_add_attention", "false", {".mid_block.attentions.0.", "mid_block_add_attention", NULL}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = with(cfg, bad[i].key, bad[i].value);
        df_status st = folder_load(fo, j, &m);
        json_decref(j);
        print_message("  %s = %s: %s: %s\n", bad[i].key, bad[i].value, df_status_name(st), df_errmsg());
        assert_int_not_equal(st, DF_OK);
        for (int k = 0; k < 3 && bad[i].want[k]; k++)
            if (!strstr(df_errmsg(), bad[i].want[k]))
                fail_msg("error \"%s\" lacks \"%s\"", df_errmsg(), bad[i].want[k]);
    }
    folder_destroy(fo);
    free(y1);
    free(y2);
}

static void test_split_moments(void **state) {
    (void)state;
    /* B=2, C=1, 1x2: per batch [mean | logvar] */
    float m[8] = {1, 2, -40, 5, 3, 4, 25, -1}, mean[4], logvar[4];
    vae_split_moments(m, 2, 1, 1, 2, mean, logvar);
    assert_memory_equal(mean, ((float[]){1, 2, 3, 4}), sizeof mean);
    assert_memory_equal(logvar, ((float[]){-30, 5, 20, -1}), sizeof logvar);
}

static int teardown(void **state) {
    (void)state;
    json_decref(manifest);
    manifest = NULL;
    folder_destroy(&folder);
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_moments),
        cmocka_unit_test(test_infer_config),
        cmocka_unit_test(test_config_from_json),
        cmocka_unit_test(test_sd3_vae),
        cmocka_unit_test(test_sdxl_vae_folder),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_extra_tensor),
        cmocka_unit_test(test_layouts_identical),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_vae_tiny),
        cmocka_unit_test(test_vae_tiny_ldm_layout),
        cmocka_unit_test(test_vae_tiny_fp16),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
