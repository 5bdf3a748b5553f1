/* unet_config: UNet2DConditionModel config.json -> struct unet_config. */
#include "unet_config.h"

#include <string.h>

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
    return DF_OK;
}

#undef TRY
