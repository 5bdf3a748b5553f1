/* The SDXL-shaped UNet (added conditioning "text_time", per-level heads and
 * transformer depths, linear projections) against the diffusers oracle in
 * both key layouts: every intermediate, config inference from the sgm
 * layout's shapes, its renames, load errors for missing and misshapen
 * tensors and for configs that contradict the weights, and the added
 * conditioning's input checks. Reads the manifest's config, so it holds for
 * fixture sets of other shapes. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../models/unet.h"
#include "../models/unet_config.h"
#include "testutil.h"

#define LDM_PREFIX "model.diffusion_model."
#define NAN_BITS 0x7fc00000u
#define CASE "sdxl_unet_tiny"
#define LDM_CASE "sdxl_unet_tiny_ldm_layout"

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

/* The config of manifest case `name` (a deep copy the caller frees). */
static json_t *manifest_config(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", fixtures());
    json_error_t err;
    json_t *manifest = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!manifest) fail_msg("%s: %s", path, err.text);
    size_t i;
    json_t *c, *config = NULL;
    json_array_foreach(json_object_get(manifest, "cases"), i, c) {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0) config = json_deep_copy(json_object_get(c, "config"));
    }
    json_decref(manifest);
    if (!config) fail_msg("manifest has no case %s with a config", name);
    return config;
}

static void config_of(const json_t *j, struct unet_config *c) {
    if (unet_config_from_json(j, c) != DF_OK) fail_msg("config: %s", df_errmsg());
}

static bool is_io(const char *name) {
    return strncmp(name, "in.", 3) == 0 || strncmp(name, "out.", 4) == 0 || strncmp(name, "dbg.", 4) == 0;
}

/* ---- an edited in-memory copy of a fixture's weights -------------------- */

/* Drops tensor `name`, or (new_last > 0) cuts its last dimension to
 * new_last, keeping the leading data. */
struct edit {
    const char *name;
    int64_t new_last;
};

static void *edited_weights(const struct st_file *f, const struct edit *e, size_t *len) {
    size_t data = 0;
    json_t *hdr = json_object();
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        bool hit = strcmp(t->name, e->name) == 0;
        if (is_io(t->name) || (hit && e->new_last <= 0)) continue;
        json_t *shape = json_array();
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            int64_t n = hit && d == t->ndim - 1 ? e->new_last : t->shape[d];
            json_array_append_new(shape, json_integer(n));
            numel *= n;
        }
        size_t bytes = (size_t)numel * 4;
        json_object_set_new(hdr, t->name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape, "data_offsets",
                                      (json_int_t)data, (json_int_t)(data + bytes)));
        data += bytes;
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    size_t hlen = (strlen(text) + 7) & ~(size_t)7;
    *len = 8 + hlen + data;
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    uint64_t h = hlen;
    memcpy(buf, &h, 8);
    memset(buf + 8, ' ', hlen);
    memcpy(buf + 8, text, strlen(text));
    /* data in header order */
    const char *key;
    json_t *v;
    json_object_foreach(hdr, key, v) {
        const struct st_tensor *t = st_find(f, key);
        float *x = malloc((size_t)t->numel * sizeof *x);
        assert_non_null(x);
        assert_int_equal(st_to_f32(t, x), DF_OK);
        json_int_t off = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 0));
        json_int_t end = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 1));
        memcpy(buf + 8 + hlen + off, x, (size_t)(end - off));
        free(x);
    }
    free(text);
    json_decref(hdr);
    return buf;
}

/* ---- loading ------------------------------------------------------------ */

static const char *const prefixes[] = {"conv_in.",  "time_embedding.", "add_embedding.", "down_blocks.",
                                       "mid_block.", "up_blocks.",     "conv_norm_out.", "conv_out."};

static df_status load_diffusers(const struct st_file *f, const struct unet_config *cfg, struct weights **w,
                                struct unet_model *m) {
    assert_int_equal(wts_create(tu_device(), WTS_F32, w), DF_OK);
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (wts_load(*w, f, prefixes[i], NULL, 0) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
    return unet_load(*w, cfg, m);
}

/* As a single-file loader would: config from the shapes, heads and groups
 * (what shapes cannot tell) from `manifest`, the pooled width given. */
static df_status load_ldm(const struct st_file *f, const struct unet_config *manifest, int pooled, int n_ids,
                          struct weights **w, struct unet_model *m) {
    struct unet_config cfg;
    df_status st = unet_infer_config_file(f, LDM_PREFIX, &cfg);
    if (st != DF_OK) return st;
    memcpy(cfg.num_attention_heads, manifest->num_attention_heads, sizeof cfg.num_attention_heads);
    cfg.norm_num_groups = manifest->norm_num_groups;
    if ((st = unet_config_set_pooled_dim(&cfg, pooled, n_ids)) != DF_OK) return st;
    struct wts_rename *t;
    int n;
    assert_int_equal(unet_ldm_renames(&cfg, LDM_PREFIX, &t, &n), DF_OK);
    assert_int_equal(wts_create(tu_device(), WTS_F32, w), DF_OK);
    st = wts_load(*w, f, LDM_PREFIX, t, n);
    free(t);
    return st == DF_OK ? unet_load(*w, &cfg, m) : st;
}

/* Width of the fixture's pooled text embedding and count of time ids. */
static void added_widths(const struct st_file *io, int *pooled, int *n_ids) {
    const struct st_tensor *te = st_find(io, "in.text_embeds"), *ti = st_find(io, "in.time_ids");
    assert_non_null(te);
    assert_non_null(ti);
    *pooled = (int)te->shape[1];
    *n_ids = (int)ti->shape[1];
}

/* ---- the forward pass and its intermediates ----------------------------- */

static const char *const in_names[] = {"in.sample", "in.timestep", "in.encoder_hidden_states", "in.text_embeds",
                                       "in.time_ids"};
enum { N_IN = 5 };

struct named { char name[48]; struct cg_tensor *t; };

/* Every dbg.* hook output and out.sample of `m` on the fixture inputs;
 * returns the worst relative error. */
static double run_all(const struct unet_model *m, const struct st_file *io, bool print) {
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *in[N_IN];
    float *data[N_IN];
    for (int i = 0; i < N_IN; i++) {
        const struct st_tensor *t = st_find(io, in_names[i]);
        assert_non_null(t);
        in[i] = cg_input(g, in_names[i], t->ndim, t->shape);
        data[i] = read_tensor(io, in_names[i], NULL);
    }
    struct unet_added_cond added = {.text_embeds = in[3], .time_ids = in[4]};
    struct unet_outputs o;
    if (unet_forward(g, m, in[0], in[1], in[2], &added, NULL, &o) != DF_OK) fail_msg("forward: %s", df_errmsg());
    struct named out[8 + 2 * UNET_MAX_LEVELS];
    int n = 0;
#define OUT(str, tensor) (snprintf(out[n].name, sizeof out[n].name, "%s", str), out[n++].t = (tensor))
    OUT("out.sample", o.sample);
    OUT("dbg.time_proj", o.time_proj);
    OUT("dbg.time_embedding", o.time_embedding);
    OUT("dbg.add_time_proj", o.add_time_proj);
    OUT("dbg.add_embedding", o.add_embedding);
    OUT("dbg.conv_in", o.conv_in);
    OUT("dbg.mid_block", o.mid_block);
    for (int i = 0; i < m->cfg.levels; i++) {
        OUT("", o.down_blocks[i]);
        snprintf(out[n - 1].name, sizeof out[n - 1].name, "dbg.down_blocks.%d", i);
        OUT("", o.up_blocks[i]);
        snprintf(out[n - 1].name, sizeof out[n - 1].name, "dbg.up_blocks.%d", i);
    }
#undef OUT
    for (int i = 0; i < n; i++) cg_output(g, out[i].t);
    struct program *p;
    if (prog_create(tu_device(), g, NULL, &p) != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    assert_int_equal(buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, NAN_BITS), DF_OK);
    for (int i = 0; i < N_IN; i++) assert_int_equal(prog_write(p, in[i], data[i]), DF_OK);
    if (prog_run(p) != DF_OK) fail_msg("prog_run: %s", df_errmsg());
    double worst = 0;
    for (int i = 0; i < n; i++) {
        if (!st_find(io, out[i].name)) continue; /* fixture sets may hook fewer modules */
        int64_t rn;
        float *ref = read_tensor(io, out[i].name, &rn), *got = malloc(cg_nbytes(out[i].t));
        assert_non_null(got);
        assert_int_equal(rn, cg_numel(out[i].t));
        assert_int_equal(prog_read(p, out[i].t, got), DF_OK);
        double e = tu_rel_l2f(got, ref, (size_t)rn);
        if (print) print_message("  %-20s %.2e\n", out[i].name, e);
        if (!(e <= worst)) worst = e; /* NaN sticks */
        free(ref);
        free(got);
    }
    for (int i = 0; i < N_IN; i++) free(data[i]);
    prog_destroy(p);
    cg_destroy(g);
    return worst;
}

static void test_intermediates(void **state) {
    (void)state;
    json_t *j = manifest_config(CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    assert_int_equal(cfg.addition_embed_type, UNET_ADD_TEXT_TIME);
    struct st_file *io = open_fixture(CASE ".safetensors");
    struct weights *w;
    struct unet_model m;
    if (load_diffusers(io, &cfg, &w, &m) != DF_OK) fail_msg("unet_load: %s", df_errmsg());
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    double e = run_all(&m, io, true);
    assert_true(e <= 1e-5);
    unet_free(&m);
    wts_destroy(w);
    st_close(io);
    json_decref(j);
    tu_check_validation(tu_device());
}

/* The sgm single file through inference and renames: the same numbers. */
static void test_ldm_layout(void **state) {
    (void)state;
    json_t *j = manifest_config(LDM_CASE);
    struct unet_config want;
    config_of(j, &want);
    struct st_file *io = open_fixture(CASE ".safetensors"), *f = open_fixture("sdxl_unet_tiny.ldm.safetensors");
    int pooled, n_ids;
    added_widths(io, &pooled, &n_ids);
    struct weights *w;
    struct unet_model m;
    if (load_ldm(f, &want, pooled, n_ids, &w, &m) != DF_OK) fail_msg("load: %s", df_errmsg());
    assert_int_equal(wts_report_unused(w, NULL, NULL), 0);
    assert_true(run_all(&m, io, false) <= 1e-5);
    unet_free(&m);
    wts_destroy(w);
    st_close(f);
    st_close(io);
    json_decref(j);
    tu_check_validation(tu_device());
}

/* ---- config inference and renames --------------------------------------- */

static int depth_up(const struct unet_config *c, int i) {
    int d = c->up_transformer_layers_per_block[i];
    return d > 0 ? d : c->transformer_layers_per_block[c->levels - 1 - i];
}

/* Everything shapes can tell equals the manifest's config. */
static void expect_shape_fields(const struct unet_config *got, const struct unet_config *want) {
    assert_int_equal(got->levels, want->levels);
    assert_int_equal(got->in_channels, want->in_channels);
    assert_int_equal(got->out_channels, want->out_channels);
    for (int i = 0; i < want->levels; i++) {
        assert_int_equal(got->block_out_channels[i], want->block_out_channels[i]);
        assert_int_equal(got->layers_per_block[i], want->layers_per_block[i]);
        assert_int_equal(got->down_block_types[i], want->down_block_types[i]);
        assert_int_equal(got->up_block_types[i], want->up_block_types[i]);
        if (want->down_block_types[i] == UNET_CROSS_ATTN)
            assert_int_equal(got->transformer_layers_per_block[i], want->transformer_layers_per_block[i]);
        if (want->up_block_types[i] == UNET_CROSS_ATTN) assert_int_equal(depth_up(got, i), depth_up(want, i));
    }
    assert_int_equal(got->mid_block, want->mid_block);
    if (want->mid_block)
        assert_int_equal(got->transformer_layers_per_block[want->levels - 1],
                         want->transformer_layers_per_block[want->levels - 1]);
    assert_int_equal(got->cross_attention_dim, want->cross_attention_dim);
    assert_int_equal(got->use_linear_projection, want->use_linear_projection);
    assert_int_equal(got->addition_embed_type, want->addition_embed_type);
    assert_int_equal(got->projection_class_embeddings_input_dim, want->projection_class_embeddings_input_dim);
}

static void test_infer_config(void **state) {
    (void)state;
    json_t *j = manifest_config(LDM_CASE);
    struct unet_config want, c;
    config_of(j, &want);
    struct st_file *io = open_fixture(CASE ".safetensors"), *f = open_fixture("sdxl_unet_tiny.ldm.safetensors");
    int pooled, n_ids;
    added_widths(io, &pooled, &n_ids);
    const struct st_file *files[] = {f, io};
    const char *prefix[] = {LDM_PREFIX, ""};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(unet_infer_config_file(files[k], prefix[k], &c), DF_OK);
        expect_shape_fields(&c, &want);
        /* label_emb's width alone cannot split into pooled + time ids */
        int sdxl = want.projection_class_embeddings_input_dim == 2816 ? 256 : 0;
        assert_int_equal(c.addition_time_embed_dim, sdxl);
        assert_int_equal(unet_config_set_pooled_dim(&c, pooled, n_ids), DF_OK);
        assert_int_equal(c.addition_time_embed_dim, want.addition_time_embed_dim);
        assert_int_equal(unet_config_set_pooled_dim(&c, pooled + 1, n_ids), DF_EINVAL);
        assert_non_null(strstr(df_errmsg(), "projection_class_embeddings_input_dim"));
    }
    /* from the uploaded weights too */
    struct weights *w;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    assert_int_equal(wts_load(w, f, LDM_PREFIX, NULL, 0), DF_OK);
    assert_int_equal(unet_infer_config(w, LDM_PREFIX, &c), DF_OK);
    expect_shape_fields(&c, &want);
    wts_destroy(w);
    /* an SD1 UNet has no pooled width to take */
    struct st_file *sd = open_fixture("unet_sd15_tiny.safetensors");
    assert_int_equal(unet_infer_config_file(sd, "", &c), DF_OK);
    assert_int_equal(c.addition_embed_type, UNET_ADD_NONE);
    assert_int_equal(unet_config_set_pooled_dim(&c, pooled, n_ids), DF_EINVAL);
    st_close(sd);
    st_close(f);
    st_close(io);
    json_decref(j);
}

/* Entries the sgm layout pins down: label_emb, the upsampler after an
 * attention, attention only from level 1, the last up level's resnets. */
static void test_ldm_renames(void **state) {
    (void)state;
    json_t *j = manifest_config(LDM_CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    struct wts_rename *t;
    int n;
    assert_int_equal(unet_ldm_renames(&cfg, LDM_PREFIX, &t, &n), DF_OK);
    /* indices from the config: k counts input_blocks, u output_blocks */
    char want[8][2][96];
    int np = 0;
#define PAIR(to, ...) (snprintf(want[np][0], 96, LDM_PREFIX __VA_ARGS__), snprintf(want[np][1], 96, "%s", to), np++)
    PAIR("add_embedding.linear_1.", "label_emb.0.0.");
    PAIR("add_embedding.linear_2.", "label_emb.0.2.");
    int l0 = cfg.layers_per_block[0], top = cfg.levels - 1, lt = cfg.layers_per_block[top] + 1;
    PAIR("up_blocks.0.resnets.0.", "output_blocks.0.0.");
    if (cfg.levels > 1) {
        PAIR("down_blocks.0.downsamplers.0.conv.", "input_blocks.%d.0.op.", l0 + 1);
        if (cfg.down_block_types[1] == UNET_CROSS_ATTN)
            PAIR("down_blocks.1.attentions.0.", "input_blocks.%d.1.", l0 + 2);
        /* after the attention if the level has one */
        PAIR("up_blocks.0.upsamplers.0.conv.", "output_blocks.%d.%d.conv.", lt - 1,
             cfg.up_block_types[0] == UNET_CROSS_ATTN ? 2 : 1);
    }
#undef PAIR
    for (int p = 0; p < np; p++) {
        int hit = -1;
        for (int i = 0; i < n; i++)
            if (strcmp(t[i].from, want[p][0]) == 0) hit = i;
        if (hit < 0) fail_msg("no rename from %s", want[p][0]);
        assert_string_equal(t[hit].to, want[p][1]);
    }
    free(t);
    json_decref(j);
}

/* ---- load errors -------------------------------------------------------- */

static df_status load_edited_diffusers(const struct edit *e, const json_t *j) {
    struct st_file *f = open_fixture(CASE ".safetensors");
    size_t len;
    void *image = edited_weights(f, e, &len);
    struct st_file *ef;
    assert_int_equal(st_open_memory(image, len, &ef), DF_OK);
    struct unet_config cfg;
    config_of(j, &cfg);
    struct weights *w;
    struct unet_model m;
    df_status st = load_diffusers(ef, &cfg, &w, &m);
    print_message("  %s\n", st == DF_OK ? "(loaded)" : df_errmsg());
    unet_free(&m);
    wts_destroy(w);
    st_close(ef);
    free(image);
    st_close(f);
    return st;
}

static df_status load_edited_ldm(const struct edit *e, const json_t *j) {
    struct st_file *io = open_fixture(CASE ".safetensors"), *f = open_fixture("sdxl_unet_tiny.ldm.safetensors");
    size_t len;
    void *image = edited_weights(f, e, &len);
    struct st_file *ef;
    assert_int_equal(st_open_memory(image, len, &ef), DF_OK);
    struct unet_config manifest;
    config_of(j, &manifest);
    int pooled, n_ids;
    added_widths(io, &pooled, &n_ids);
    struct weights *w = NULL;
    struct unet_model m = {0};
    df_status st = load_ldm(ef, &manifest, pooled, n_ids, &w, &m);
    print_message("  %s\n", st == DF_OK ? "(loaded)" : df_errmsg());
    unet_free(&m);
    wts_destroy(w);
    st_close(ef);
    free(image);
    st_close(f);
    st_close(io);
    return st;
}

/* The first up level with attention, and the index of its first
 * output_blocks entry in the LDM layout. */
static int first_attn_up(const struct unet_config *c, int *ldm_index) {
    int k = 0;
    for (int i = 0; i < c->levels; i++) {
        if (c->up_block_types[i] == UNET_CROSS_ATTN) {
            if (ldm_index) *ldm_index = k;
            return i;
        }
        k += c->layers_per_block[c->levels - 1 - i] + 1;
    }
    fail_msg("the config has no up level with attention");
    return -1;
}

static void test_missing_tensor(void **state) {
    (void)state;
    json_t *j = manifest_config(CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    /* the deepest transformer block of the last attention of an up level */
    int u = first_attn_up(&cfg, NULL);
    char name[160], quoted[170];
    snprintf(name, sizeof name, "up_blocks.%d.attentions.%d.transformer_blocks.%d.attn2.to_v.weight", u,
             cfg.layers_per_block[cfg.levels - 1 - u], depth_up(&cfg, u) - 1);
    snprintf(quoted, sizeof quoted, "\"%s\"", name);
    assert_int_equal(load_edited_diffusers(&(struct edit){name, 0}, j), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), quoted));
    assert_non_null(strstr(df_errmsg(), "missing"));
    /* the sgm file without label_emb's second linear */
    assert_int_equal(load_edited_ldm(&(struct edit){LDM_PREFIX "label_emb.0.2.weight", 0}, j), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "\"add_embedding.linear_2.weight\""));
    json_decref(j);
}

static void test_misshapen_tensor(void **state) {
    (void)state;
    json_t *j = manifest_config(CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    int adm = cfg.projection_class_embeddings_input_dim;
    assert_int_equal(load_edited_diffusers(&(struct edit){"add_embedding.linear_1.weight", adm - 1}, j), DF_EFORMAT);
    char shape[64];
    snprintf(shape, sizeof shape, ", %d]", adm);
    assert_non_null(strstr(df_errmsg(), "\"add_embedding.linear_1.weight\""));
    assert_non_null(strstr(df_errmsg(), shape));
    /* sgm layout: an up level's second attention's proj_out */
    int k = 0, u = first_attn_up(&cfg, &k), c = cfg.block_out_channels[cfg.levels - 1 - u];
    char ldm[128], want[96];
    snprintf(ldm, sizeof ldm, LDM_PREFIX "output_blocks.%d.1.proj_out.weight", k + 1);
    snprintf(want, sizeof want, "\"up_blocks.%d.attentions.1.proj_out.weight\"", u);
    assert_int_equal(load_edited_ldm(&(struct edit){ldm, c - 1}, j), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), want));
    json_decref(j);
}

/* Config keys that contradict the weights are named. */
static df_status load_with(json_t *j, const char *key, json_t *value) {
    json_t *bad = json_deep_copy(j);
    json_object_set_new(bad, key, value);
    struct unet_config cfg;
    df_status st = unet_config_from_json(bad, &cfg);
    json_decref(bad);
    if (st != DF_OK) return st;
    struct st_file *f = open_fixture(CASE ".safetensors");
    struct weights *w;
    struct unet_model m;
    st = load_diffusers(f, &cfg, &w, &m);
    print_message("  %s: %s\n", key, st == DF_OK ? "(loaded)" : df_errmsg());
    unet_free(&m);
    wts_destroy(w);
    st_close(f);
    return st;
}

/* The config's transformer_layers_per_block with level `at` changed by d. */
static json_t *depths(const struct unet_config *c, int at, int d) {
    json_t *a = json_array();
    for (int i = 0; i < c->levels; i++) json_array_append_new(a, json_integer(c->transformer_layers_per_block[i] + (i == at ? d : 0)));
    return a;
}

static void test_config_contradicts_weights(void **state) {
    (void)state;
    json_t *j = manifest_config(CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    int top = cfg.levels - 1;
    assert_int_equal(cfg.down_block_types[top], UNET_CROSS_ATTN);
    char name[96];
    if (cfg.transformer_layers_per_block[top] > 1) {
        /* one transformer block fewer at the last level than the weights hold */
        assert_int_equal(load_with(j, "transformer_layers_per_block", depths(&cfg, top, -1)), DF_EFORMAT);
        assert_non_null(strstr(df_errmsg(), "transformer_layers_per_block"));
        snprintf(name, sizeof name, "\"down_blocks.%d.attentions.0.transformer_blocks.%d.", top,
                 cfg.transformer_layers_per_block[top] - 1);
        assert_non_null(strstr(df_errmsg(), name));
    }
    /* one more */
    assert_int_equal(load_with(j, "transformer_layers_per_block", depths(&cfg, top, +1)), DF_EFORMAT);
    snprintf(name, sizeof name, "missing tensor \"down_blocks.%d.attentions.0.transformer_blocks.%d.", top,
             cfg.transformer_layers_per_block[top]);
    assert_non_null(strstr(df_errmsg(), name));
    /* one resnet more or fewer per level */
    json_t *more = json_array(), *fewer = json_array();
    bool can_drop = true;
    for (int i = 0; i < cfg.levels; i++) {
        json_array_append_new(more, json_integer(cfg.layers_per_block[i] + 1));
        json_array_append_new(fewer, json_integer(cfg.layers_per_block[i] - 1));
        can_drop = can_drop && cfg.layers_per_block[i] > 1;
    }
    assert_int_equal(load_with(j, "layers_per_block", more), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "missing tensor \"down_blocks.0.resnets."));
    if (can_drop) {
        assert_int_equal(load_with(j, "layers_per_block", fewer), DF_EFORMAT);
        assert_non_null(strstr(df_errmsg(), "layers_per_block"));
    } else {
        json_decref(fewer);
    }
    /* no added conditioning, or a wrong width for it */
    assert_int_equal(load_with(j, "addition_embed_type", json_null()), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "\"add_embedding.linear_1.weight\""));
    assert_non_null(strstr(df_errmsg(), "addition_embed_type"));
    assert_int_equal(load_with(j, "projection_class_embeddings_input_dim",
                               json_integer(cfg.projection_class_embeddings_input_dim + 2)),
                     DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "\"add_embedding.linear_1.weight\""));
    assert_int_equal(load_with(j, "addition_time_embed_dim", json_null()), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "addition_time_embed_dim"));
    /* what the code does not have is refused by key */
    assert_int_equal(load_with(j, "addition_embed_type", json_string("text_image")), DF_EUNSUPPORTED);
    assert_non_null(strstr(df_errmsg(), "addition_embed_type"));
    static const char *const unsupported[][2] = {
        {"class_embed_type", "timestep"},        {"encoder_hid_dim_type", "text_proj"},
        {"resnet_time_scale_shift", "scale_shift"}, {"attention_type", "gated"},
    };
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        assert_int_equal(load_with(j, unsupported[i][0], json_string(unsupported[i][1])), DF_EUNSUPPORTED);
        assert_non_null(strstr(df_errmsg(), unsupported[i][0]));
    }
    assert_int_equal(load_with(j, "time_cond_proj_dim", json_integer(32)), DF_EUNSUPPORTED);
    assert_non_null(strstr(df_errmsg(), "time_cond_proj_dim"));
    json_decref(j);
}

/* ---- added conditioning inputs ------------------------------------------ */

static void test_added_inputs(void **state) {
    (void)state;
    json_t *j = manifest_config(CASE);
    struct unet_config cfg;
    config_of(j, &cfg);
    struct st_file *io = open_fixture(CASE ".safetensors");
    struct weights *w;
    struct unet_model m;
    assert_int_equal(load_diffusers(io, &cfg, &w, &m), DF_OK);
    int pooled, n_ids;
    added_widths(io, &pooled, &n_ids);
    struct cg_graph *g;
    assert_int_equal(cg_create(&g), DF_OK);
    int64_t b = 2;
    struct cg_tensor *s = cg_input(g, "s", 4, (int64_t[]){b, cfg.in_channels, 8, 8});
    struct cg_tensor *t = cg_input(g, "t", 1, &b);
    struct cg_tensor *c = cg_input(g, "c", 3, (int64_t[]){b, 7, cfg.cross_attention_dim});
    struct cg_tensor *te = cg_input(g, "te", 2, (int64_t[]){b, pooled});
    struct cg_tensor *ti = cg_input(g, "ti", 2, (int64_t[]){b, n_ids});
    struct cg_tensor *wide = cg_input(g, "wide", 2, (int64_t[]){b, pooled + 1});
    struct cg_tensor *te1 = cg_input(g, "te1", 2, (int64_t[]){1, pooled});
    struct unet_outputs o;
    struct unet_down d;
    /* required, and both parts of it */
    assert_int_equal(unet_forward(g, &m, s, t, c, NULL, NULL, &o), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "text_time"));
    assert_int_equal(unet_forward_down(g, &m, s, t, c, NULL, NULL, &d, NULL), DF_EINVAL);
    assert_int_equal(unet_forward(g, &m, s, t, c, &(struct unet_added_cond){te, NULL}, NULL, &o), DF_EINVAL);
    /* widths and batch */
    assert_int_equal(unet_forward(g, &m, s, t, c, &(struct unet_added_cond){wide, ti}, NULL, &o), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "projection_class_embeddings_input_dim"));
    assert_int_equal(unet_forward(g, &m, s, t, c, &(struct unet_added_cond){te1, ti}, NULL, &o), DF_EINVAL);
    /* right, for the whole model and its down half */
    assert_int_equal(unet_forward(g, &m, s, t, c, &(struct unet_added_cond){te, ti}, NULL, &o), DF_OK);
    assert_int_equal(unet_forward_down(g, &m, s, t, c, &(struct unet_added_cond){te, ti}, NULL, &d, NULL), DF_OK);
    assert_int_equal(cg_status(g), DF_OK);
    cg_destroy(g);
    /* an SD1 UNet refuses added conditioning */
    struct st_file *sd = open_fixture("unet_sd15_tiny.safetensors");
    struct unet_config sc;
    assert_int_equal(unet_infer_config_file(sd, "", &sc), DF_OK);
    struct weights *sw;
    struct unet_model sm;
    assert_int_equal(load_diffusers(sd, &sc, &sw, &sm), DF_OK);
    assert_int_equal(cg_create(&g), DF_OK);
    s = cg_input(g, "s", 4, (int64_t[]){b, sc.in_channels, 8, 8});
    t = cg_input(g, "t", 1, &b);
    c = cg_input(g, "c", 3, (int64_t[]){b, 7, sc.cross_attention_dim});
    te = cg_input(g, "te", 2, (int64_t[]){b, pooled});
    ti = cg_input(g, "ti", 2, (int64_t[]){b, n_ids});
    assert_int_equal(unet_forward(g, &sm, s, t, c, &(struct unet_added_cond){te, ti}, NULL, &o), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "addition_embed_type"));
    cg_destroy(g);
    unet_free(&sm);
    wts_destroy(sw);
    st_close(sd);
    unet_free(&m);
    wts_destroy(w);
    st_close(io);
    json_decref(j);
    tu_check_validation(tu_device());
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intermediates),
        cmocka_unit_test(test_ldm_layout),
        cmocka_unit_test(test_infer_config),
        cmocka_unit_test(test_ldm_renames),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_misshapen_tensor),
        cmocka_unit_test(test_config_contradicts_weights),
        cmocka_unit_test(test_added_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
