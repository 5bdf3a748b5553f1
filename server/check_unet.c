/* check_unet: UNet2DConditionModel cases, diffusers or LDM key layout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compute/program.h"
#include "models/unet.h"
#include "models/weights.h"

#define LDM_PREFIX "model.diffusion_model."

/* diffusers top-level modules: loading by these prefixes leaves the
 * fixture's in.* / out.* / dbg.* tensors on the host. */
static const char *const diffusers_prefixes[] = {
    "conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks.", "conv_norm_out.", "conv_out.",
    "add_embedding.",
};

static bool is_set(const json_t *j, const char *key) {
    const json_t *v = json_object_get(j, key);
    return v && !json_is_null(v);
}

/* An int or a per-level list of ints (missing or null: `def`). */
static df_status int_list(const json_t *j, const char *key, int levels, int def, int *out) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        for (int i = 0; i < levels; i++) out[i] = def;
    } else if (json_is_integer(v)) {
        for (int i = 0; i < levels; i++) out[i] = (int)json_integer_value(v);
    } else if (json_is_array(v) && (int)json_array_size(v) == levels) {
        for (int i = 0; i < levels; i++) {
            const json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_integer(e)) return df_error(DF_EUNSUPPORTED, "UNet config %s: nested or non-integer list", key);
            out[i] = (int)json_integer_value(e);
        }
    } else {
        return df_error(DF_EINVAL, "UNet config %s: expected an int or a list of %d", key, levels);
    }
    return DF_OK;
}

static df_status block_types(const json_t *j, const char *key, int levels, const char *plain, const char *cross,
                             enum unet_block_type *out) {
    const json_t *v = json_object_get(j, key);
    if (!json_is_array(v) || (int)json_array_size(v) != levels)
        return df_error(DF_EINVAL, "UNet config %s: expected %d block types", key, levels);
    for (int i = 0; i < levels; i++) {
        const char *s = json_string_value(json_array_get(v, (size_t)i));
        if (s && strcmp(s, plain) == 0) out[i] = UNET_PLAIN;
        else if (s && strcmp(s, cross) == 0) out[i] = UNET_CROSS_ATTN;
        else return df_error(DF_EUNSUPPORTED, "UNet block type %s", s ? s : "(not a string)");
    }
    return DF_OK;
}

/* Config keys whose non-default values select code we do not have. */
static df_status refuse_unsupported(const json_t *j) {
    if (is_set(j, "addition_embed_type"))
        return df_error(DF_EUNSUPPORTED, "SDXL added conditioning (addition_embed_type \"%s\") is not implemented yet",
                        json_string_value(json_object_get(j, "addition_embed_type")));
    static const char *const must_be_null[] = {
        "class_embed_type", "encoder_hid_dim", "encoder_hid_dim_type", "time_cond_proj_dim", "num_class_embeds",
        "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
    };
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        if (is_set(j, must_be_null[i])) return df_error(DF_EUNSUPPORTED, "UNet config %s is set", must_be_null[i]);
    static const char *const must_be_false[] = {
        "only_cross_attention", "dual_cross_attention", "resnet_skip_time_act", "class_embeddings_concat",
        "mid_block_only_cross_attention",
    };
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
        const json_t *v = json_object_get(j, must_be_false[i]), *e;
        bool any = json_is_true(v);
        size_t k;
        json_array_foreach(v, k, e) any = any || json_is_true(e); /* per-level lists */
        if (any) return df_error(DF_EUNSUPPORTED, "UNet config %s is true", must_be_false[i]);
    }
    static const struct { const char *key, *value; } strings[] = {
        {"act_fn", "silu"},
        {"resnet_time_scale_shift", "default"},
        {"time_embedding_type", "positional"},
        {"attention_type", "default"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        const char *s = json_string_value(json_object_get(j, strings[i].key));
        if (s && strcmp(s, strings[i].value) != 0)
            return df_error(DF_EUNSUPPORTED, "UNet config %s = \"%s\"", strings[i].key, s);
    }
    if (is_set(j, "cross_attention_dim") && !json_is_integer(json_object_get(j, "cross_attention_dim")))
        return df_error(DF_EUNSUPPORTED, "UNet config cross_attention_dim per level");
    return DF_OK;
}

#define TRY(x) do { df_status st_ = (x); if (st_ != DF_OK) return st_; } while (0)

static df_status config_from_json(const json_t *j, struct unet_config *c) {
    unet_config_defaults(c);
    TRY(refuse_unsupported(j));
    const json_t *boc = json_object_get(j, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > UNET_MAX_LEVELS)
        return df_error(DF_EINVAL, "UNet config block_out_channels: expected a list of 1..%d", UNET_MAX_LEVELS);
    c->levels = (int)json_array_size(boc);
    for (int i = 0; i < c->levels; i++) c->block_out_channels[i] = (int)json_integer_value(json_array_get(boc, (size_t)i));
    c->in_channels = check_config_int(j, "in_channels", 4);
    c->out_channels = check_config_int(j, "out_channels", 4);
    TRY(block_types(j, "down_block_types", c->levels, "DownBlock2D", "CrossAttnDownBlock2D", c->down_block_types));
    TRY(block_types(j, "up_block_types", c->levels, "UpBlock2D", "CrossAttnUpBlock2D", c->up_block_types));
    const json_t *mid = json_object_get(j, "mid_block_type");
    const char *mid_s = json_string_value(mid);
    if (json_is_null(mid)) c->mid_block = false;
    else if (!mid || (mid_s && strcmp(mid_s, "UNetMidBlock2DCrossAttn") == 0)) c->mid_block = true;
    else return df_error(DF_EUNSUPPORTED, "UNet mid block type %s", mid_s ? mid_s : "(not a string)");
    TRY(int_list(j, "layers_per_block", c->levels, 2, c->layers_per_block));
    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim */
    TRY(int_list(j, is_set(j, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim", c->levels, 8,
                 c->num_attention_heads));
    TRY(int_list(j, "transformer_layers_per_block", c->levels, 1, c->transformer_layers_per_block));
    TRY(int_list(j, "reverse_transformer_layers_per_block", c->levels, 0, c->up_transformer_layers_per_block));
    c->cross_attention_dim = check_config_int(j, "cross_attention_dim", 1280);
    c->norm_num_groups = check_config_int(j, "norm_num_groups", 32);
    c->norm_eps = (float)check_config_real(j, "norm_eps", 1e-5);
    c->use_linear_projection = json_is_true(json_object_get(j, "use_linear_projection"));
    c->flip_sin_to_cos = !json_is_false(json_object_get(j, "flip_sin_to_cos"));
    c->freq_shift = (float)check_config_real(j, "freq_shift", 0);
    c->time_embedding_dim = check_config_int(j, "time_embedding_dim", 0);
    c->downsample_padding = check_config_int(j, "downsample_padding", 1);
    c->conv_in_kernel = check_config_int(j, "conv_in_kernel", 3);
    c->conv_out_kernel = check_config_int(j, "conv_out_kernel", 3);
    c->resnet_out_scale_factor = (float)check_config_real(j, "resnet_out_scale_factor", 1);
    c->mid_block_scale_factor = (float)check_config_real(j, "mid_block_scale_factor", 1);
    c->center_input_sample = json_is_true(json_object_get(j, "center_input_sample"));
    return DF_OK;
}

#undef TRY

static void log_unused(const char *name, void *ctx) {
    char *first = ctx;
    if (!*first) snprintf(first, 256, "%s", name);
}

static df_status load_weights(struct check_ctx *ctx, struct check_case *c, const struct unet_config *cfg,
                              struct weights **wp) {
    df_status st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, wp);
    if (st != DF_OK) return st;
    /* LDM keys, with the usual prefix or bare */
    const char *ldm = st_find(c->file, LDM_PREFIX "input_blocks.0.0.weight") ? LDM_PREFIX
                      : st_find(c->file, "input_blocks.0.0.weight")       ? ""
                                                                            : NULL;
    if (ldm) {
        struct wts_rename *table;
        int n;
        if ((st = unet_ldm_renames(cfg, ldm, &table, &n)) != DF_OK) return st;
        st = wts_load(*wp, c->file, ldm, table, n);
        free(table);
        return st;
    }
    for (size_t i = 0; i < sizeof diffusers_prefixes / sizeof diffusers_prefixes[0]; i++)
        if ((st = wts_load(*wp, c->file, diffusers_prefixes[i], NULL, 0)) != DF_OK) return st;
    return DF_OK;
}

struct io {
    const char *name;
    float *data;
    struct cg_tensor *t;
};

df_status check_unet(struct check_ctx *ctx, struct check_case *c) {
    struct unet_config cfg;
    df_status st = config_from_json(json_object_get(c->json, "config"), &cfg);
    if (st != DF_OK) return st;
    struct weights *w = NULL;
    struct unet_model m = {0};
    struct cg_graph *g = NULL;
    struct program *p = NULL;
    struct st_file *io_file = NULL;
    float *out = NULL;
    struct io in[3] = {{"in.sample", NULL, NULL}, {"in.timestep", NULL, NULL}, {"in.encoder_hidden_states", NULL, NULL}};
    /* the LDM-layout case holds weights only: inputs and outputs come from
     * the diffusers case it names */
    struct check_case io = *c;
    const char *io_name = json_string_value(json_object_get(c->json, "uses_io_from"));
    if (io_name) {
        if ((st = check_open(ctx, io_name, &io_file)) != DF_OK) goto done;
        io.file = io_file;
    }
    if ((st = load_weights(ctx, c, &cfg, &w)) != DF_OK) goto done;
    if ((st = unet_load(w, &cfg, &m)) != DF_OK) goto done;
    char first[256] = "";
    int unused = wts_report_unused(w, log_unused, first);
    if (unused) {
        st = df_error(DF_EFORMAT, "%d weight tensors the UNet did not use, e.g. \"%s\"", unused, first);
        goto done;
    }
    if ((st = cg_create(&g)) != DF_OK) goto done;
    for (int i = 0; i < 3; i++) {
        const struct st_tensor *t = st_find(io.file, in[i].name);
        if (!t || t->ndim > CG_MAX_DIMS) {
            st = df_error(DF_EFORMAT, "case %s: no usable tensor \"%s\"", c->name, in[i].name);
            goto done;
        }
        if ((st = check_tensor(&io, in[i].name, &in[i].data, NULL)) != DF_OK) goto done;
        in[i].t = cg_input(g, in[i].name, t->ndim, t->shape);
    }
    struct unet_outputs o;
    if ((st = unet_forward(g, &m, in[0].t, in[1].t, in[2].t, NULL, &o)) != DF_OK) goto done;
    cg_output(g, o.sample);
    if ((st = prog_create(ctx->dev, g, NULL, &p)) != DF_OK) goto done;
    if ((st = buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, 0x7fc00000u)) != DF_OK) goto done;
    for (int i = 0; i < 3; i++)
        if ((st = prog_write(p, in[i].t, in[i].data)) != DF_OK) goto done;
    if ((st = prog_run(p)) != DF_OK) goto done;
    out = malloc(cg_nbytes(o.sample));
    if (!out) {
        st = df_error(DF_ENOMEM, "out of memory");
        goto done;
    }
    if ((st = prog_read(p, o.sample, out)) != DF_OK) goto done;
    st = check_compare(ctx, &io, "out.sample", out, cg_numel(o.sample));
    c->max_err = io.max_err;
    c->failed = io.failed;
    memcpy(c->detail, io.detail, sizeof c->detail);
done:
    prog_destroy(p);
    cg_destroy(g);
    unet_free(&m);
    wts_destroy(w);
    st_close(io_file);
    for (int i = 0; i < 3; i++) free(in[i].data);
    free(out);
    return st;
}
