/* unet_config: UNet2DConditionModel config.json, or a checkpoint's tensor
 * shapes -> struct unet_config. */
#include "unet_config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NAME_LEN 160

/* Down level whose settings up level i mirrors. */
static int mirror(const struct unet_config *c, int i) { return c->levels - 1 - i; }

static int cfg_int(const json_t *j, const char *key, int def) {
    const json_t *v = json_object_get(j, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static double cfg_real(const json_t *j, const char *key, double def) {
    const json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

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

/* addition_embed_type: none, or SDXL's "text_time" (its widths are
 * checked by unet_load; "text", "image", "text_image", "image_hint" are
 * other models' and not implemented). */
static df_status addition(const json_t *j, struct unet_config *c) {
    const json_t *v = json_object_get(j, "addition_embed_type");
    if (!v || json_is_null(v)) return DF_OK;
    const char *s = json_string_value(v);
    if (!s || strcmp(s, "text_time") != 0)
        return df_error(DF_EUNSUPPORTED, "UNet config addition_embed_type \"%s\" (only \"text_time\")",
                        s ? s : "(not a string)");
    c->addition_embed_type = UNET_ADD_TEXT_TIME;
    c->addition_time_embed_dim = cfg_int(j, "addition_time_embed_dim", 0);
    c->projection_class_embeddings_input_dim = cfg_int(j, "projection_class_embeddings_input_dim", 0);
    return DF_OK;
}

df_status unet_config_from_json(const json_t *j, struct unet_config *c) {
    unet_config_defaults(c);
    TRY(refuse_unsupported(j));
    const json_t *boc = json_object_get(j, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > UNET_MAX_LEVELS)
        return df_error(DF_EINVAL, "UNet config block_out_channels: expected a list of 1..%d", UNET_MAX_LEVELS);
    c->levels = (int)json_array_size(boc);
    for (int i = 0; i < c->levels; i++) c->block_out_channels[i] = (int)json_integer_value(json_array_get(boc, (size_t)i));
    c->in_channels = cfg_int(j, "in_channels", 4);
    c->out_channels = cfg_int(j, "out_channels", 4);
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
    c->cross_attention_dim = cfg_int(j, "cross_attention_dim", 1280);
    c->norm_num_groups = cfg_int(j, "norm_num_groups", 32);
    c->norm_eps = (float)cfg_real(j, "norm_eps", 1e-5);
    c->use_linear_projection = json_is_true(json_object_get(j, "use_linear_projection"));
    c->flip_sin_to_cos = !json_is_false(json_object_get(j, "flip_sin_to_cos"));
    c->freq_shift = (float)cfg_real(j, "freq_shift", 0);
    c->time_embedding_dim = cfg_int(j, "time_embedding_dim", 0);
    c->downsample_padding = cfg_int(j, "downsample_padding", 1);
    c->conv_in_kernel = cfg_int(j, "conv_in_kernel", 3);
    c->conv_out_kernel = cfg_int(j, "conv_out_kernel", 3);
    c->resnet_out_scale_factor = (float)cfg_real(j, "resnet_out_scale_factor", 1);
    c->mid_block_scale_factor = (float)cfg_real(j, "mid_block_scale_factor", 1);
    c->center_input_sample = json_is_true(json_object_get(j, "center_input_sample"));
    TRY(addition(j, c));
    return DF_OK;
}

/* ---- from tensor shapes ------------------------------------------------ */

/* Where tensor shapes come from: a weights object or a file header. */
struct shapes {
    const struct weights *w;
    const struct st_file *f;
    const char *prefix;
};

static bool has(const struct shapes *s, int *ndim, int64_t *ne, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool has(const struct shapes *s, int *ndim, int64_t *ne, const char *fmt, ...) {
    char name[256];
    int used = snprintf(name, sizeof name, "%s", s->prefix);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + used, sizeof name - (size_t)used, fmt, ap);
    va_end(ap);
    int nd = 0;
    int64_t shape[CG_MAX_DIMS] = {0};
    if (s->w) {
        if (!wts_has(s->w, name, &nd, shape)) return false;
    } else {
        const struct st_tensor *t = st_find(s->f, name);
        if (!t) return false;
        nd = t->ndim < CG_MAX_DIMS ? t->ndim : CG_MAX_DIMS;
        for (int d = 0; d < nd; d++) shape[d] = t->shape[d];
    }
    if (ndim) *ndim = nd;
    if (ne) memcpy(ne, shape, sizeof shape);
    return true;
}

/* One attention (Transformer2DModel) at `at` (a formatted prefix): depth,
 * projection kind and context width. Returns false if there is none. */
static bool infer_attention(const struct shapes *s, const char *at, struct unet_config *c, int *depth) {
    int nd;
    int64_t ne[CG_MAX_DIMS];
    if (!has(s, &nd, ne, "%sproj_in.weight", at)) return false;
    c->use_linear_projection = nd == 2; /* Linear [C, C]; the conv is [C, C, 1, 1] */
    *depth = 0;
    while (*depth < UNET_MAX_DEPTH && has(s, NULL, NULL, "%stransformer_blocks.%d.norm1.weight", at, *depth)) (*depth)++;
    if (has(s, NULL, ne, "%stransformer_blocks.0.attn2.to_k.weight", at)) c->cross_attention_dim = (int)ne[1];
    return true;
}

static df_status infer_ldm(const struct shapes *s, struct unet_config *c) {
    char at[NAME_LEN];
    int64_t ne[CG_MAX_DIMS];
    int layers = 0, depth = 0;
    for (int k = 1;; k++) {
        if (has(s, NULL, NULL, "input_blocks.%d.0.op.weight", k)) { /* downsampler closes a level */
            c->layers_per_block[c->levels++] = layers;
            layers = 0;
            continue;
        }
        if (!has(s, NULL, ne, "input_blocks.%d.0.in_layers.2.weight", k)) break;
        if (c->levels == UNET_MAX_LEVELS || layers == UNET_MAX_LAYERS)
            return df_error(DF_EUNSUPPORTED, "UNet with more than %d levels or %d resnets per level",
                            UNET_MAX_LEVELS, UNET_MAX_LAYERS);
        c->block_out_channels[c->levels] = (int)ne[0];
        layers++;
        snprintf(at, sizeof at, "input_blocks.%d.1.", k);
        if (infer_attention(s, at, c, &depth)) {
            c->down_block_types[c->levels] = UNET_CROSS_ATTN;
            c->transformer_layers_per_block[c->levels] = depth;
        }
    }
    if (!layers) return df_error(DF_EFORMAT, "UNet: no resnet after the last downsampler");
    c->layers_per_block[c->levels++] = layers;
    for (int i = 0, k = 0; i < c->levels; i++) {
        snprintf(at, sizeof at, "output_blocks.%d.1.", k);
        if (infer_attention(s, at, c, &depth)) {
            c->up_block_types[i] = UNET_CROSS_ATTN;
            c->up_transformer_layers_per_block[i] = depth;
        }
        k += c->layers_per_block[mirror(c, i)] + 1;
    }
    c->mid_block = infer_attention(s, "middle_block.1.", c, &depth);
    if (c->mid_block) c->transformer_layers_per_block[c->levels - 1] = depth;
    else if (has(s, NULL, NULL, "middle_block.0.in_layers.2.weight"))
        return df_error(DF_EUNSUPPORTED, "UNet mid block without attention (UNetMidBlock2D)");
    if (!has(s, NULL, ne, "out.2.weight")) return df_error(DF_EFORMAT, "missing tensor \"%sout.2.weight\"", s->prefix);
    c->out_channels = (int)ne[0];
    c->conv_out_kernel = (int)ne[2];
    if (has(s, NULL, ne, "label_emb.0.0.weight")) {
        c->addition_embed_type = UNET_ADD_TEXT_TIME;
        c->projection_class_embeddings_input_dim = (int)ne[1];
    }
    return DF_OK;
}

static df_status infer_diffusers(const struct shapes *s, struct unet_config *c) {
    char at[NAME_LEN];
    int64_t ne[CG_MAX_DIMS];
    int depth = 0;
    while (has(s, NULL, ne, "down_blocks.%d.resnets.0.conv1.weight", c->levels)) {
        if (c->levels == UNET_MAX_LEVELS)
            return df_error(DF_EUNSUPPORTED, "UNet with more than %d levels", UNET_MAX_LEVELS);
        int i = c->levels++;
        c->block_out_channels[i] = (int)ne[0];
        while (c->layers_per_block[i] < UNET_MAX_LAYERS &&
               has(s, NULL, NULL, "down_blocks.%d.resnets.%d.conv1.weight", i, c->layers_per_block[i]))
            c->layers_per_block[i]++;
        snprintf(at, sizeof at, "down_blocks.%d.attentions.0.", i);
        if (infer_attention(s, at, c, &depth)) {
            c->down_block_types[i] = UNET_CROSS_ATTN;
            c->transformer_layers_per_block[i] = depth;
        }
    }
    if (!c->levels) return df_error(DF_EFORMAT, "missing tensor \"%sdown_blocks.0.resnets.0.conv1.weight\"", s->prefix);
    for (int i = 0; i < c->levels; i++) {
        snprintf(at, sizeof at, "up_blocks.%d.attentions.0.", i);
        if (infer_attention(s, at, c, &depth)) {
            c->up_block_types[i] = UNET_CROSS_ATTN;
            c->up_transformer_layers_per_block[i] = depth;
        }
    }
    c->mid_block = infer_attention(s, "mid_block.attentions.0.", c, &depth);
    if (c->mid_block) c->transformer_layers_per_block[c->levels - 1] = depth;
    else if (has(s, NULL, NULL, "mid_block.resnets.0.conv1.weight"))
        return df_error(DF_EUNSUPPORTED, "UNet mid block without attention (UNetMidBlock2D)");
    if (!has(s, NULL, ne, "conv_out.weight"))
        return df_error(DF_EFORMAT, "missing tensor \"%sconv_out.weight\"", s->prefix);
    c->out_channels = (int)ne[0];
    c->conv_out_kernel = (int)ne[2];
    if (has(s, NULL, ne, "add_embedding.linear_1.weight")) {
        c->addition_embed_type = UNET_ADD_TEXT_TIME;
        c->projection_class_embeddings_input_dim = (int)ne[1];
    }
    return DF_OK;
}

/* label_emb widths of the released SDXL UNets: pooled 1280 + n x 256. */
static const struct { int adm_in, time_embed_dim; } sdxl_adm[] = {
    {2816, 256}, /* base: 6 time ids */
    {2560, 256}, /* refiner: 5 (the aesthetic score replaces the target size) */
};

static int sdxl_time_embed_dim(const struct unet_config *c) {
    for (size_t i = 0; i < sizeof sdxl_adm / sizeof sdxl_adm[0]; i++)
        if (c->projection_class_embeddings_input_dim == sdxl_adm[i].adm_in) return sdxl_adm[i].time_embed_dim;
    return 0; /* unknown: unet_config_set_pooled_dim */
}

static df_status infer(const struct shapes *s, struct unet_config *c) {
    unet_config_defaults(c);
    memset(c->layers_per_block, 0, sizeof c->layers_per_block); /* counted below */
    int64_t ne[CG_MAX_DIMS], te[CG_MAX_DIMS];
    bool ldm = has(s, NULL, ne, "input_blocks.0.0.weight");
    if (!ldm && !has(s, NULL, ne, "conv_in.weight"))
        return df_error(DF_EFORMAT, "no UNet tensors under \"%s\" (neither input_blocks.0.0.weight nor conv_in.weight)",
                        s->prefix);
    c->in_channels = (int)ne[1];
    c->conv_in_kernel = (int)ne[2];
    if (has(s, NULL, te, ldm ? "time_embed.0.weight" : "time_embedding.linear_1.weight"))
        c->time_embedding_dim = (int)te[0];
    TRY(ldm ? infer_ldm(s, c) : infer_diffusers(s, c));
    if (c->block_out_channels[0] != ne[0])
        return df_error(DF_EFORMAT, "UNet: conv_in has %lld channels, the first level %d", (long long)ne[0],
                        c->block_out_channels[0]);
    if (c->addition_embed_type == UNET_ADD_TEXT_TIME) c->addition_time_embed_dim = sdxl_time_embed_dim(c);
    /* SD1.x: 8 heads everywhere; SD2.x / SDXL: 64-wide heads (header) */
    bool wide = c->cross_attention_dim >= 1024 || c->addition_embed_type != UNET_ADD_NONE;
    for (int i = 0; i < c->levels; i++) {
        int ch = c->block_out_channels[i];
        c->num_attention_heads[i] = wide && ch % 64 == 0 ? ch / 64 : 8;
    }
    return DF_OK;
}

df_status unet_infer_config(const struct weights *w, const char *prefix, struct unet_config *cfg) {
    struct shapes s = {.w = w, .prefix = prefix ? prefix : ""};
    return infer(&s, cfg);
}

df_status unet_infer_config_file(const struct st_file *f, const char *prefix, struct unet_config *cfg) {
    struct shapes s = {.f = f, .prefix = prefix ? prefix : ""};
    return infer(&s, cfg);
}

df_status unet_config_set_pooled_dim(struct unet_config *cfg, int pooled_dim, int n_time_ids) {
    int rest = cfg->projection_class_embeddings_input_dim - pooled_dim;
    if (cfg->addition_embed_type != UNET_ADD_TEXT_TIME)
        return df_error(DF_EINVAL, "UNet config: a pooled width for a UNet without added conditioning");
    if (n_time_ids < 1 || rest < n_time_ids || rest % n_time_ids || (rest / n_time_ids) % 2)
        return df_error(DF_EINVAL,
                        "UNet: projection_class_embeddings_input_dim %d is not pooled %d + %d time ids x an even "
                        "addition_time_embed_dim",
                        cfg->projection_class_embeddings_input_dim, pooled_dim, n_time_ids);
    cfg->addition_time_embed_dim = rest / n_time_ids;
    return DF_OK;
}

#undef TRY
