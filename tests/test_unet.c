/* UNet2DConditionModel against the diffusers oracle (both key layouts, fp32
 * and fp16), its intermediates, error paths (missing tensor, wrong shape,
 * bad config), config inference from LDM shapes, replay with new timesteps
 * (as a sampler does every step), ControlNet residual inputs, and
 * non-square latents (transposition equivariance). */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../models/unet.h"
#include "../models/unet_config.h"
#include "../tools/check.h"
#include "testutil.h"

#define LDM_PREFIX "model.diffusion_model."
#define NAN_BITS 0x7fc00000u

static const char *fixtures(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

static struct st_file *open_fixture(const char *file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", fixtures(), file);
    struct st_file *f = NULL;
    if (st_open(path, &f) != DF_OK) fail_msg("%s: %s", path, df_errmsg());
    return f;
}

static float *read_tensor(const struct st_file *f, const char *name, int64_t *numel) {
    const struct st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks %s", name);
    float *x = malloc((size_t)t->numel * sizeof *x);
    assert_non_null(x);
    assert_int_equal(st_to_f32(t, x), DF_OK);
    if (numel) *numel = t->numel;
    return x;
}

static json_t *manifest_case(json_t **manifest, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", fixtures());
    json_error_t err;
    *manifest = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!*manifest) fail_msg("%s: %s", path, err.text);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(*manifest, "cases"), i, c) {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0) return c;
    }
    fail_msg("manifest has no case %s", name);
    return NULL;
}

/* ---- the check, in-process ---------------------------------------------- */

static df_status run_check(const char *name, bool fp16, struct check_case *c, json_t **manifest) {
    struct check_ctx ctx = {.dir = fixtures(), .dev = tu_device(), .fp16 = fp16, .tolerance = fp16 ? 1e-2 : 1e-4};
    memset(c, 0, sizeof *c);
    c->name = name;
    c->json = manifest_case(manifest, name);
    assert_int_equal(check_open(&ctx, json_string_value(json_object_get(c->json, "file")), &c->file), DF_OK);
    df_status st = check_unet(&ctx, c);
    st_close(c->file);
    return st;
}

static void expect_pass(const char *name, bool fp16) {
    struct check_case c;
    json_t *manifest;
    df_status st = run_check(name, fp16, &c, &manifest);
    if (st != DF_OK) fail_msg("%s: %s", name, df_errmsg());
    print_message("  %s%s: %s\n", name, fp16 ? " (fp16)" : "", c.detail);
    assert_false(c.failed);
    assert_true(c.max_err <= (fp16 ? 1e-2 : 1e-4));
    json_decref(manifest);
    tu_check_validation(tu_device());
}

static void test_check_diffusers(void **state) {
    (void)state;
    expect_pass("unet_sd15_tiny", false);
    expect_pass("unet_sd15_tiny", true);
}

static void test_check_ldm(void **state) {
    (void)state;
    expect_pass("unet_sd15_tiny_ldm_layout", false);
    expect_pass("unet_sd15_tiny_ldm_layout", true);
}

/* SDXL-shaped: added conditioning, per-level heads and depths, linear
 * projections; the sgm layout through inferred config and renames. */
static void test_check_sdxl(void **state) {
    (void)state;
    expect_pass("sdxl_unet_tiny", false);
    expect_pass("sdxl_unet_tiny", true);
    expect_pass("sdxl_unet_tiny_ldm_layout", false);
    expect_pass("sdxl_unet_tiny_ldm_layout", true);
}

/* ---- a model on the device ---------------------------------------------- */

struct fixture {
    struct st_file *io;      /* unet_sd15_tiny.safetensors: inputs, outputs, dbg */
    struct weights *w;
    struct unet_config cfg;
    struct unet_model m;
    float *in[3];
    int64_t n[3];
};

static const char *const in_names[3] = {"in.sample", "in.timestep", "in.encoder_hidden_states"};

static void load_weights(struct weights *w, const struct st_file *f, const struct wts_rename *r, int n) {
    static const char *const prefixes[] = {"conv_in.",  "time_embedding.", "down_blocks.",
                                           "mid_block.", "up_blocks.",     "conv_norm_out.", "conv_out."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (wts_load(w, f, prefixes[i], r, n) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
}

/* The tiny SD1.5 UNet (config inferred from its shapes: test_infer_config
 * checks that inference against the manifest). */
static void fixture_open(struct fixture *f, const struct st_file *weights_from) {
    memset(f, 0, sizeof *f);
    f->io = open_fixture("unet_sd15_tiny.safetensors");
    const struct st_file *src = weights_from ? weights_from : f->io;
    assert_int_equal(unet_infer_config_file(src, "", &f->cfg), DF_OK);
    assert_int_equal(wts_create(tu_device(), WTS_F32, &f->w), DF_OK);
    load_weights(f->w, src, NULL, 0);
    if (unet_load(f->w, &f->cfg, &f->m) != DF_OK) fail_msg("unet_load: %s", df_errmsg());
    for (int i = 0; i < 3; i++) f->in[i] = read_tensor(f->io, in_names[i], &f->n[i]);
}

static void fixture_close(struct fixture *f) {
    unet_free(&f->m);
    wts_destroy(f->w);
    st_close(f->io);
    for (int i = 0; i < 3; i++) free(f->in[i]);
}

struct pass {
    struct cg_graph *g;
    struct cg_tensor *in[3];
    struct unet_outputs o;
    struct program *p;
};

/* Records one pass for inputs shaped like the fixture's, or with a sample
 * of h x w when given. */
static void pass_record(struct pass *ps, const struct unet_model *m, int64_t h, int64_t w,
                        const struct unet_control *control, struct cg_graph *g) {
    memset(ps, 0, sizeof *ps);
    ps->g = g;
    if (!ps->g) assert_int_equal(cg_create(&ps->g), DF_OK);
    int64_t b = 2, c = m->cfg.in_channels;
    ps->in[0] = cg_input(ps->g, in_names[0], 4, (int64_t[]){b, c, h, w});
    ps->in[1] = cg_input(ps->g, in_names[1], 1, &b);
    ps->in[2] = cg_input(ps->g, in_names[2], 3, (int64_t[]){b, 77, m->cfg.cross_attention_dim});
    if (unet_forward(ps->g, m, ps->in[0], ps->in[1], ps->in[2], NULL, control, &ps->o) != DF_OK)
        fail_msg("unet_forward: %s", df_errmsg());
    cg_output(ps->g, ps->o.sample);
}

static void pass_create(struct pass *ps) {
    if (prog_create(tu_device(), ps->g, NULL, &ps->p) != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    assert_int_equal(buf_fill(prog_arena(ps->p), 0, prog_arena_bytes(ps->p) & ~3ull, NAN_BITS), DF_OK);
}

static void pass_run(struct pass *ps, const float *sample, const float *t, const float *ctx, float *out) {
    assert_int_equal(prog_write(ps->p, ps->in[0], sample), DF_OK);
    assert_int_equal(prog_write(ps->p, ps->in[1], t), DF_OK);
    assert_int_equal(prog_write(ps->p, ps->in[2], ctx), DF_OK);
    if (prog_run(ps->p) != DF_OK) fail_msg("prog_run: %s", df_errmsg());
    assert_int_equal(prog_read(ps->p, ps->o.sample, out), DF_OK);
}

static void pass_destroy(struct pass *ps) {
    prog_destroy(ps->p);
    cg_destroy(ps->g);
}

static double compare(const struct st_file *f, const char *name, const float *got, int64_t n) {
    int64_t rn;
    float *ref = read_tensor(f, name, &rn);
    assert_int_equal(rn, n);
    double e = tu_rel_l2f(got, ref, (size_t)n);
    free(ref);
    return e;
}

/* Every dbg.* hook output, then the time and memory of one evaluation. */
static void test_intermediates(void **state) {
    (void)state;
    struct device *dev = tu_device();
    dev_memory_reset_peak(dev);
    struct fixture f;
    fixture_open(&f, NULL);
    struct pass ps;
    pass_record(&ps, &f.m, 8, 8, NULL, NULL);
    struct { char name[48]; struct cg_tensor *t; } dbg[4 + 2 * UNET_MAX_LEVELS];
    int nd = 0;
#define DBG(n, tensor) (snprintf(dbg[nd].name, sizeof dbg[nd].name, "%s", n), dbg[nd++].t = (tensor))
    DBG("dbg.time_proj", ps.o.time_proj);
    DBG("dbg.time_embedding", ps.o.time_embedding);
    DBG("dbg.conv_in", ps.o.conv_in);
    DBG("dbg.mid_block", ps.o.mid_block);
    for (int i = 0; i < f.cfg.levels; i++) {
        DBG("", ps.o.down_blocks[i]);
        snprintf(dbg[nd - 1].name, sizeof dbg[nd - 1].name, "dbg.down_blocks.%d", i);
        DBG("", ps.o.up_blocks[i]);
        snprintf(dbg[nd - 1].name, sizeof dbg[nd - 1].name, "dbg.up_blocks.%d", i);
    }
#undef DBG
    for (int i = 0; i < nd; i++) cg_output(ps.g, dbg[i].t);
    pass_create(&ps);
    float *out = malloc(cg_nbytes(ps.o.sample));
    assert_non_null(out);
    double t0 = tu_seconds();
    pass_run(&ps, f.in[0], f.in[1], f.in[2], out);
    double first = tu_seconds() - t0;
    assert_true(compare(f.io, "out.sample", out, cg_numel(ps.o.sample)) <= 1e-5);
    for (int i = 0; i < nd; i++) {
        float *x = malloc(cg_nbytes(dbg[i].t));
        assert_non_null(x);
        assert_int_equal(prog_read(ps.p, dbg[i].t, x), DF_OK);
        double e = compare(f.io, dbg[i].name, x, cg_numel(dbg[i].t));
        if (!(e <= 1e-5)) fail_msg("%s: rel err %.3e", dbg[i].name, e);
        free(x);
    }
    /* steady state: prog_run alone, as a sampler step pays it */
    double best = INFINITY;
    for (int r = 0; r < 3; r++) {
        t0 = tu_seconds();
        assert_int_equal(prog_run(ps.p), DF_OK);
        double s = tu_seconds() - t0;
        if (s < best) best = s;
    }
    print_message("  prog_run: first %.1f ms, best of 3 %.1f ms; arena %llu bytes, weights %llu bytes, "
                  "device peak %llu bytes\n",
                  first * 1e3, best * 1e3, (unsigned long long)prog_arena_bytes(ps.p),
                  (unsigned long long)wts_device_bytes(f.w), (unsigned long long)dev_memory_peak(dev));
    free(out);
    pass_destroy(&ps);
    fixture_close(&f);
    tu_check_validation(dev);
}

/* ---- error paths -------------------------------------------------------- */

static void test_missing_tensor(void **state) {
    (void)state;
    struct st_file *f = open_fixture("unet_sd15_tiny.safetensors");
    struct unet_config cfg;
    assert_int_equal(unet_infer_config_file(f, "", &cfg), DF_OK);
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    /* hide one tensor under another name */
    const struct wts_rename hide[] = {{"mid_block.resnets.1.conv2.weight", "hidden.conv2.weight", NULL}};
    load_weights(w, f, hide, 1);
    struct unet_model m;
    assert_int_equal(unet_load(w, &cfg, &m), DF_EFORMAT);
    print_message("  %s\n", df_errmsg());
    assert_non_null(strstr(df_errmsg(), "\"mid_block.resnets.1.conv2.weight\""));
    unet_free(&m);
    wts_destroy(w);
    st_close(f);
}

static void test_wrong_shape(void **state) {
    (void)state;
    struct st_file *f = open_fixture("unet_sd15_tiny.safetensors");
    struct unet_config cfg;
    assert_int_equal(unet_infer_config_file(f, "", &cfg), DF_OK);
    cfg.cross_attention_dim = 48; /* the checkpoint's context is 32 wide */
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    load_weights(w, f, NULL, 0);
    struct unet_model m;
    assert_int_equal(unet_load(w, &cfg, &m), DF_EFORMAT);
    const char *msg = df_errmsg();
    print_message("  %s\n", msg);
    assert_non_null(strstr(msg, "\"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight\""));
    assert_non_null(strstr(msg, "[32, 32]"));
    assert_non_null(strstr(msg, "[32, 48]"));
    unet_free(&m);
    wts_destroy(w);
    st_close(f);
}

static void test_bad_config(void **state) {
    (void)state;
    struct st_file *f = open_fixture("unet_sd15_tiny.safetensors");
    struct unet_config cfg, bad;
    assert_int_equal(unet_infer_config_file(f, "", &cfg), DF_OK);
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    struct unet_model m;
    bad = cfg;
    bad.num_attention_heads[0] = 5; /* 32 channels */
    assert_int_equal(unet_load(w, &bad, &m), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "5 heads for 32 channels"));
    bad = cfg;
    bad.levels = 0;
    assert_int_equal(unet_load(w, &bad, &m), DF_EINVAL);
    bad = cfg;
    bad.norm_num_groups = 24;
    assert_int_equal(unet_load(w, &bad, &m), DF_EINVAL);
    bad = cfg;
    bad.addition_embed_type = UNET_ADD_TEXT_TIME; /* widths unknown */
    assert_int_equal(unet_load(w, &bad, &m), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "addition_time_embed_dim"));
    wts_destroy(w);
    st_close(f);
}

/* ---- config inference --------------------------------------------------- */

static void expect_manifest_config(const struct unet_config *c, const json_t *j) {
    const json_t *boc = json_object_get(j, "block_out_channels");
    assert_int_equal(c->levels, (int)json_array_size(boc));
    for (int i = 0; i < c->levels; i++) {
        assert_int_equal(c->block_out_channels[i], json_integer_value(json_array_get(boc, (size_t)i)));
        assert_int_equal(c->layers_per_block[i], json_integer_value(json_object_get(j, "layers_per_block")));
        const char *down = json_string_value(json_array_get(json_object_get(j, "down_block_types"), (size_t)i));
        const char *up = json_string_value(json_array_get(json_object_get(j, "up_block_types"), (size_t)i));
        assert_int_equal(c->down_block_types[i] == UNET_CROSS_ATTN, strncmp(down, "CrossAttn", 9) == 0);
        assert_int_equal(c->up_block_types[i] == UNET_CROSS_ATTN, strncmp(up, "CrossAttn", 9) == 0);
        /* SD1.x-style: the key is a head count, 8 here, as inference assumes */
        assert_int_equal(c->num_attention_heads[i], json_integer_value(json_object_get(j, "attention_head_dim")));
    }
    assert_int_equal(c->cross_attention_dim, json_integer_value(json_object_get(j, "cross_attention_dim")));
    assert_int_equal(c->in_channels, json_integer_value(json_object_get(j, "in_channels")));
    assert_int_equal(c->out_channels, json_integer_value(json_object_get(j, "out_channels")));
    assert_true(c->mid_block);
    assert_false(c->use_linear_projection);
    assert_int_equal(c->addition_embed_type, UNET_ADD_NONE);
}

static void test_infer_config(void **state) {
    (void)state;
    json_t *manifest;
    const json_t *j = json_object_get(manifest_case(&manifest, "unet_sd15_tiny_ldm_layout"), "config");
    struct st_file *ldm = open_fixture("unet_sd15_tiny.ldm.safetensors");
    struct unet_config c;
    /* from the header alone */
    assert_int_equal(unet_infer_config_file(ldm, LDM_PREFIX, &c), DF_OK);
    expect_manifest_config(&c, j);
    /* from LDM-named weights, and from the diffusers file */
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    assert_int_equal(wts_load(w, ldm, LDM_PREFIX, NULL, 0), DF_OK);
    assert_int_equal(unet_infer_config(w, LDM_PREFIX, &c), DF_OK);
    expect_manifest_config(&c, j);
    wts_destroy(w);
    struct st_file *dif = open_fixture("unet_sd15_tiny.safetensors");
    assert_int_equal(unet_infer_config_file(dif, "", &c), DF_OK);
    expect_manifest_config(&c, j);
    /* not a UNet */
    assert_int_equal(unet_infer_config_file(dif, "first_stage_model.", &c), DF_EFORMAT);
    st_close(dif);
    st_close(ldm);
    json_decref(manifest);
}

/* The rename table alone: a few entries diffusers' converter pins down. */
static void test_ldm_renames(void **state) {
    (void)state;
    struct st_file *f = open_fixture("unet_sd15_tiny.ldm.safetensors");
    struct unet_config cfg;
    assert_int_equal(unet_infer_config_file(f, LDM_PREFIX, &cfg), DF_OK);
    struct wts_rename *t;
    int n;
    assert_int_equal(unet_ldm_renames(&cfg, LDM_PREFIX, &t, &n), DF_OK);
    static const char *const pairs[][2] = {
        {LDM_PREFIX "input_blocks.0.0.", "conv_in."},
        {LDM_PREFIX "input_blocks.2.1.", "down_blocks.0.attentions.1."},
        {LDM_PREFIX "input_blocks.3.0.op.", "down_blocks.0.downsamplers.0.conv."},
        {LDM_PREFIX "input_blocks.5.0.", "down_blocks.1.resnets.1."},
        {LDM_PREFIX "middle_block.2.", "mid_block.resnets.1."},
        {LDM_PREFIX "output_blocks.2.1.conv.", "up_blocks.0.upsamplers.0.conv."},
        {LDM_PREFIX "output_blocks.3.1.", "up_blocks.1.attentions.0."},
        {LDM_PREFIX "out.2.", "conv_out."},
    };
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        int hit = -1;
        for (int i = 0; i < n; i++)
            if (strcmp(t[i].from, pairs[p][0]) == 0) hit = i;
        if (hit < 0) fail_msg("no rename from %s", pairs[p][0]);
        assert_string_equal(t[hit].to, pairs[p][1]);
    }
    free(t);
    st_close(f);
}

/* ---- replay and ControlNet inputs --------------------------------------- */

/* One recorded pass replayed with other timesteps gives what a pass
 * recorded for those timesteps gives, and the oracle again after. */
static void test_replay_timesteps(void **state) {
    (void)state;
    struct fixture f;
    fixture_open(&f, NULL);
    struct pass a, b;
    pass_record(&a, &f.m, 8, 8, NULL, NULL);
    pass_create(&a);
    pass_record(&b, &f.m, 8, 8, NULL, NULL);
    pass_create(&b);
    int64_t n = cg_numel(a.o.sample);
    float *oa = malloc((size_t)n * sizeof *oa), *ob = malloc((size_t)n * sizeof *ob);
    assert_non_null(oa);
    assert_non_null(ob);
    float t2[2] = {f.in[1][1] * 0.5f + 3.25f, f.in[1][0] + 101.5f};
    pass_run(&a, f.in[0], f.in[1], f.in[2], oa);
    double e1 = compare(f.io, "out.sample", oa, n);
    pass_run(&a, f.in[0], t2, f.in[2], oa);
    double moved = compare(f.io, "out.sample", oa, n);
    pass_run(&b, f.in[0], t2, f.in[2], ob);
    double e2 = tu_rel_l2f(oa, ob, (size_t)n);
    pass_run(&a, f.in[0], f.in[1], f.in[2], oa);
    double e3 = compare(f.io, "out.sample", oa, n);
    print_message("  t=(%g, %g): %.2e; t=(%g, %g): %.2e vs fresh pass (%.2e from the first); back: %.2e\n",
                  (double)f.in[1][0], (double)f.in[1][1], e1, (double)t2[0], (double)t2[1], e2, moved, e3);
    assert_true(e1 <= 1e-5 && e3 <= 1e-5);
    assert_true(e2 <= 1e-6);
    assert_true(moved > 1e-3);
    free(oa);
    free(ob);
    pass_destroy(&a);
    pass_destroy(&b);
    fixture_close(&f);
    tu_check_validation(tu_device());
}

/* Residual inputs: random ones change the output; the same inputs scaled
 * by 0 in the graph reproduce out.sample. */
static void run_control(struct fixture *f, bool zero, float *out) {
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int n = unet_skip_count(&f->cfg);
    assert_int_equal(n, 1 + 2 + 1 + 2); /* conv_in, 2 + downsampler, 2 */
    struct cg_tensor *res[64], *down[64];
    float *data[64];
    for (int i = 0; i <= n; i++) {
        int64_t ne[4];
        unet_skip_shape(&f->cfg, i, 2, 8, 8, ne);
        char name[32];
        snprintf(name, sizeof name, "residual.%d", i);
        res[i] = cg_input(g, name, 4, ne);
        down[i] = zero ? cg_scale(g, res[i], 0.0f) : res[i];
        data[i] = tu_random((size_t)(ne[0] * ne[1] * ne[2] * ne[3]), 70 + (uint32_t)i, -1, 1);
    }
    /* skip 3 is the downsampler's output: half size */
    int64_t ne[4];
    unet_skip_shape(&f->cfg, 3, 2, 8, 8, ne);
    assert_true(ne[1] == 32 && ne[2] == 4 && ne[3] == 4);
    struct unet_control ctl = {.down = down, .n_down = n, .mid = down[n]};
    struct pass ps;
    pass_record(&ps, &f->m, 8, 8, &ctl, g);
    pass_create(&ps);
    for (int i = 0; i <= n; i++) assert_int_equal(prog_write(ps.p, res[i], data[i]), DF_OK);
    pass_run(&ps, f->in[0], f->in[1], f->in[2], out);
    for (int i = 0; i <= n; i++) free(data[i]);
    pass_destroy(&ps);
}

static void test_control_residuals(void **state) {
    (void)state;
    struct fixture f;
    fixture_open(&f, NULL);
    int64_t n = f.n[0];
    float *out = malloc((size_t)n * sizeof *out);
    assert_non_null(out);
    run_control(&f, true, out);
    double zero = compare(f.io, "out.sample", out, n);
    run_control(&f, false, out);
    double random = compare(f.io, "out.sample", out, n);
    print_message("  zero residuals: %.2e, random residuals: %.2e from out.sample\n", zero, random);
    assert_true(zero <= 1e-5);
    assert_true(random > 1e-2);
    /* a residual of the wrong shape is refused */
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *s = cg_input(g, "s", 4, (int64_t[]){2, 4, 8, 8}), *t = cg_input(g, "t", 1, (int64_t[]){2});
    struct cg_tensor *c = cg_input(g, "c", 3, (int64_t[]){2, 77, 32});
    struct cg_tensor *bad = cg_input(g, "r", 4, (int64_t[]){2, 32, 8, 8});
    struct unet_control ctl = {.mid = bad};
    struct unet_outputs o;
    assert_int_equal(unet_forward(g, &f.m, s, t, c, NULL, &ctl, &o), DF_EINVAL);
    cg_destroy(g);
    free(out);
    fixture_close(&f);
    tu_check_validation(tu_device());
}

/* ControlNet's half: the down path alone, with and without an addend to
 * conv_in's output. */
static void test_forward_down(void **state) {
    (void)state;
    struct fixture f;
    fixture_open(&f, NULL);
    struct unet_model half;
    assert_int_equal(unet_load_down(f.w, &f.cfg, &half), DF_OK);
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *in[3], *add = cg_input(g, "add", 4, (int64_t[]){2, 32, 8, 8});
    for (int i = 0; i < 3; i++) {
        const struct st_tensor *t = st_find(f.io, in_names[i]);
        in[i] = cg_input(g, in_names[i], t->ndim, t->shape);
    }
    struct unet_down d0, d1;
    struct unet_outputs dbg;
    assert_int_equal(unet_forward_down(g, &half, in[0], in[1], in[2], NULL, NULL, &d0, &dbg), DF_OK);
    assert_int_equal(unet_forward_down(g, &half, in[0], in[1], in[2], NULL, add, &d1, NULL), DF_OK);
    assert_int_equal(d0.n_skips, unet_skip_count(&f.cfg));
    for (int i = 0; i <= d0.n_skips; i++) {
        int64_t ne[4];
        unet_skip_shape(&f.cfg, i, 2, 8, 8, ne);
        struct cg_tensor *t = i < d0.n_skips ? d0.skips[i] : d0.mid;
        assert_memory_equal(t->ne, ne, sizeof ne);
    }
    struct cg_tensor *outs[] = {d0.mid, d0.skips[d0.n_skips - 1], d0.skips[0], d1.skips[0], d1.mid};
    for (int i = 0; i < 5; i++) cg_output(g, outs[i]);
    struct unet_outputs o; /* the full model refuses a model without its up path */
    assert_int_equal(unet_forward(g, &half, in[0], in[1], in[2], NULL, NULL, &o), DF_EINVAL);
    struct program *p;
    if (prog_create(tu_device(), g, NULL, &p) != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    assert_int_equal(buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, NAN_BITS), DF_OK);
    float *r = tu_random(2 * 32 * 8 * 8, 9, -1, 1);
    for (int i = 0; i < 3; i++) assert_int_equal(prog_write(p, in[i], f.in[i]), DF_OK);
    assert_int_equal(prog_write(p, add, r), DF_OK);
    assert_int_equal(prog_run(p), DF_OK);
    float *x[5];
    for (int i = 0; i < 5; i++) {
        x[i] = malloc(cg_nbytes(outs[i]));
        assert_non_null(x[i]);
        assert_int_equal(prog_read(p, outs[i], x[i]), DF_OK);
    }
    int64_t nm = cg_numel(d0.mid), nc = cg_numel(d0.skips[0]);
    assert_true(compare(f.io, "dbg.mid_block", x[0], nm) <= 1e-5);
    assert_true(compare(f.io, "dbg.down_blocks.1", x[1], cg_numel(outs[1])) <= 1e-5);
    assert_true(compare(f.io, "dbg.conv_in", x[2], nc) <= 1e-5);
    for (int64_t i = 0; i < nc; i++) x[2][i] += r[i];
    assert_true(tu_rel_l2f(x[3], x[2], (size_t)nc) <= 1e-6);
    assert_true(tu_rel_l2f(x[4], x[0], (size_t)nm) > 1e-3);
    for (int i = 0; i < 5; i++) free(x[i]);
    free(r);
    prog_destroy(p);
    cg_destroy(g);
    unet_free(&half);
    fixture_close(&f);
    tu_check_validation(tu_device());
}

/* ---- non-square latents ------------------------------------------------- */

/* An in-memory safetensors copy of the UNet weights with every k x k conv
 * kernel transposed (kh <-> kw). */
static void *transposed_weights(const struct st_file *f, size_t *len) {
    size_t data = 0;
    json_t *hdr = json_object();
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (strncmp(t->name, "in.", 3) == 0 || strncmp(t->name, "out.", 4) == 0 || strncmp(t->name, "dbg.", 4) == 0)
            continue;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        size_t bytes = (size_t)t->numel * 4;
        json_object_set_new(hdr, t->name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape, "data_offsets",
                                      (json_int_t)data, (json_int_t)(data + bytes)));
        data += bytes;
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    size_t hlen = (strlen(text) + 7) & ~(size_t)7;
    *len = 8 + hlen + data;
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    uint64_t h = hlen;
    memcpy(buf, &h, 8);
    memset(buf + 8, ' ', hlen);
    memcpy(buf + 8, text, strlen(text));
    float *out = (float *)(buf + 8 + hlen);
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (!json_object_get(hdr, t->name)) continue;
        float *x = malloc((size_t)t->numel * sizeof *x);
        assert_non_null(x);
        assert_int_equal(st_to_f32(t, x), DF_OK);
        if (t->ndim == 4 && t->shape[2] == t->shape[3] && t->shape[2] > 1) {
            int64_t k = t->shape[2], planes = t->shape[0] * t->shape[1];
            for (int64_t p = 0; p < planes; p++)
                for (int64_t y = 0; y < k; y++)
                    for (int64_t xx = 0; xx < k; xx++) out[p * k * k + xx * k + y] = x[p * k * k + y * k + xx];
        } else {
            memcpy(out, x, (size_t)t->numel * sizeof *x);
        }
        out += t->numel;
        free(x);
    }
    free(text);
    json_decref(hdr);
    return buf;
}

/* No attention position encoding and symmetric padding: the UNet with
 * transposed kernels on the transposed latent gives the transposed output.
 * That pins H and W apart for an 8 x 16 latent. */
static void test_non_square(void **state) {
    (void)state;
    struct fixture f;
    fixture_open(&f, NULL);
    size_t len;
    void *image = transposed_weights(f.io, &len);
    struct st_file *tf;
    assert_int_equal(st_open_memory(image, len, &tf), DF_OK);
    struct fixture ft;
    fixture_open(&ft, tf);
    int64_t b = 2, c = 4, h = 8, w = 16, n = b * c * h * w;
    float *x = tu_random((size_t)n, 5, -1.5f, 1.5f), *xt = malloc((size_t)n * sizeof *xt);
    float *y = malloc((size_t)n * sizeof *y), *yt = malloc((size_t)n * sizeof *yt), *back = malloc((size_t)n * 4);
    assert_true(xt && y && yt && back);
    for (int64_t p = 0; p < b * c; p++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) xt[p * h * w + j * h + i] = x[p * h * w + i * w + j];
    struct pass pa, pb;
    pass_record(&pa, &f.m, h, w, NULL, NULL);
    pass_create(&pa);
    pass_run(&pa, x, f.in[1], f.in[2], y);
    pass_record(&pb, &ft.m, w, h, NULL, NULL);
    pass_create(&pb);
    pass_run(&pb, xt, f.in[1], f.in[2], yt);
    for (int64_t p = 0; p < b * c; p++)
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) back[p * h * w + i * w + j] = yt[p * h * w + j * h + i];
    double e = tu_rel_l2f(back, y, (size_t)n);
    print_message("  8x16 vs transposed 16x8: %.2e\n", e);
    assert_true(e <= 1e-5);
    /* a size the down path cannot halve evenly: upsampled to the skips'
     * sizes, as diffusers' forward_upsample_size does */
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *s = cg_input(g, "s", 4, (int64_t[]){2, 4, 8, 7}), *t = cg_input(g, "t", 1, (int64_t[]){2});
    struct cg_tensor *ctx = cg_input(g, "c", 3, (int64_t[]){2, 77, 32});
    struct unet_outputs o;
    assert_int_equal(unet_forward(g, &f.m, s, t, ctx, NULL, NULL, &o), DF_OK);
    assert_int_equal(o.sample->ne[2], 8);
    assert_int_equal(o.sample->ne[3], 7);
    cg_destroy(g);
    pass_destroy(&pa);
    pass_destroy(&pb);
    free(x);
    free(xt);
    free(y);
    free(yt);
    free(back);
    fixture_close(&ft);
    st_close(tf);
    free(image);
    fixture_close(&f);
    tu_check_validation(tu_device());
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_diffusers),
        cmocka_unit_test(test_check_ldm),
        cmocka_unit_test(test_check_sdxl),
        cmocka_unit_test(test_intermediates),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_infer_config),
        cmocka_unit_test(test_ldm_renames),
        cmocka_unit_test(test_replay_timesteps),
        cmocka_unit_test(test_control_residuals),
        cmocka_unit_test(test_forward_down),
        cmocka_unit_test(test_non_square),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
