/* vae: AutoencoderKL. ResNet blocks without time embedding, a single-head
 * self-attention in the mid block, GroupNorm eps 1e-6 throughout. */
#include "vae.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f

#define TRY(x) do { df_status st_ = (x); if (st_ != DF_OK) return st_; } while (0)

/* ---- config ------------------------------------------------------------- */

static df_status check_config(const struct vae_config *c) {
    if (c->n_blocks < 1 || c->n_blocks > VAE_MAX_BLOCKS)
        return df_error(DF_EUNSUPPORTED, "VAE config block_out_channels: %d blocks (1..%d supported)", c->n_blocks,
                        VAE_MAX_BLOCKS);
    const struct { const char *key; int value; } positive[] = {
        {"in_channels", c->in_channels},         {"out_channels", c->out_channels},
        {"latent_channels", c->latent_channels}, {"layers_per_block", c->layers_per_block},
        {"norm_num_groups", c->norm_num_groups},
    };
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (positive[i].value < 1)
            return df_error(DF_EINVAL, "VAE config %s = %d (must be positive)", positive[i].key, positive[i].value);
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return df_error(DF_EINVAL, "VAE config norm_num_groups = %d does not divide block_out_channels[%d] = %d",
                            c->norm_num_groups, i, c->block_out_channels[i]);
    return DF_OK;
}

/* ---- config.json ---------------------------------------------------------- */

/* Each reader leaves *out alone when the key is absent or null. */
static df_status json_int(const json_t *j, const char *key, int *out) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return DF_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 20)
        return df_error(DF_EINVAL, "VAE config %s: expected a non-negative integer", key);
    *out = (int)json_integer_value(v);
    return DF_OK;
}

static df_status json_float(const json_t *j, const char *key, float *out) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return DF_OK;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return df_error(DF_EINVAL, "VAE config %s: expected a number", key);
    *out = (float)json_number_value(v);
    return DF_OK;
}

static df_status json_bool(const json_t *j, const char *key, bool *out) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return DF_OK;
    if (!json_is_boolean(v)) return df_error(DF_EINVAL, "VAE config %s: expected true or false", key);
    *out = json_is_true(v);
    return DF_OK;
}

/* A list of block type names, each `want` (absent: diffusers' default of
 * one block); its length must match block_out_channels. */
static df_status block_types(const json_t *j, const char *key, const char *want, int n_blocks) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (n_blocks != 1)
            return df_error(DF_EINVAL, "VAE config %s absent (diffusers: one block) but block_out_channels has %d",
                            key, n_blocks);
        return DF_OK;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != n_blocks)
        return df_error(DF_EINVAL, "VAE config %s: expected a list of %d block types, one per block_out_channels",
                        key, n_blocks);
    for (int i = 0; i < n_blocks; i++) {
        const char *s = json_string_value(json_array_get(v, (size_t)i));
        if (!s || strcmp(s, want) != 0)
            return df_error(DF_EUNSUPPORTED, "VAE config %s[%d] = %s (only %s)", key, i, s ? s : "(not a string)",
                            want);
    }
    return DF_OK;
}

df_status vae_config_from_json(const json_t *j, struct vae_config *c) {
    /* AutoencoderKL.__init__'s defaults */
    *c = (struct vae_config){
        .in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_blocks = 1, .block_out_channels = {64},
        .layers_per_block = 1, .norm_num_groups = 32, .scaling_factor = 0.18215f, .shift_factor = 0,
        .use_quant_conv = true, .use_post_quant_conv = true, .mid_block_add_attention = true, .sample_size = 32,
        .force_upcast = true,
    };
    if (!json_is_object(j)) return df_error(DF_EINVAL, "VAE config: not a JSON object");
    const json_t *boc = json_object_get(j, "block_out_channels");
    if (boc && !json_is_null(boc)) {
        if (!json_is_array(boc) || json_array_size(boc) < 1)
            return df_error(DF_EINVAL, "VAE config block_out_channels: expected a non-empty list");
        if (json_array_size(boc) > VAE_MAX_BLOCKS)
            return df_error(DF_EUNSUPPORTED, "VAE config block_out_channels: %zu blocks (at most %d)",
                            json_array_size(boc), VAE_MAX_BLOCKS);
        c->n_blocks = (int)json_array_size(boc);
        for (int i = 0; i < c->n_blocks; i++) {
            const json_t *e = json_array_get(boc, (size_t)i);
            if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 1 << 20)
                return df_error(DF_EINVAL, "VAE config block_out_channels[%d]: expected a positive integer", i);
            c->block_out_channels[i] = (int)json_integer_value(e);
        }
    }
    TRY(block_types(j, "down_block_types", "DownEncoderBlock2D", c->n_blocks));
    TRY(block_types(j, "up_block_types", "UpDecoderBlock2D", c->n_blocks));
    const json_t *act = json_object_get(j, "act_fn");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
        return df_error(DF_EUNSUPPORTED, "VAE config act_fn = %s (only silu)",
                        json_is_string(act) ? json_string_value(act) : "(not a string)");
    static const struct { const char *key; size_t offset; } ints[] = {
        {"in_channels", offsetof(struct vae_config, in_channels)},
        {"out_channels", offsetof(struct vae_config, out_channels)},
        {"latent_channels", offsetof(struct vae_config, latent_channels)},
        {"layers_per_block", offsetof(struct vae_config, layers_per_block)},
        {"norm_num_groups", offsetof(struct vae_config, norm_num_groups)},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        TRY(json_int(j, ints[i].key, (int *)((char *)c + ints[i].offset)));
    /* sample_size: an int or [height, width]; diffusers' tiling takes the first */
    const json_t *ss = json_object_get(j, "sample_size");
    if (json_is_array(ss)) ss = json_array_get(ss, 0);
    if (ss && !json_is_null(ss)) {
        if (!json_is_integer(ss) || json_integer_value(ss) < 1 || json_integer_value(ss) > 1 << 20)
            return df_error(DF_EINVAL, "VAE config sample_size: expected a positive integer or a list of two");
        c->sample_size = (int)json_integer_value(ss);
    }
    TRY(json_float(j, "scaling_factor", &c->scaling_factor));
    TRY(json_float(j, "shift_factor", &c->shift_factor)); /* null: no shift */
    if (!(c->scaling_factor > 0)) return df_error(DF_EINVAL, "VAE config scaling_factor = %g", c->scaling_factor);
    static const char *const stats[] = {"latents_mean", "latents_std"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(j, stats[i]);
        if (v && !json_is_null(v))
            return df_error(DF_EUNSUPPORTED, "VAE config %s is set (per-channel latent statistics are not "
                            "implemented)", stats[i]);
    }
    static const struct { const char *key; size_t offset; } bools[] = {
        {"force_upcast", offsetof(struct vae_config, force_upcast)},
        {"use_quant_conv", offsetof(struct vae_config, use_quant_conv)},
        {"use_post_quant_conv", offsetof(struct vae_config, use_post_quant_conv)},
        {"mid_block_add_attention", offsetof(struct vae_config, mid_block_add_attention)},
    };
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++)
        TRY(json_bool(j, bools[i].key, (bool *)((char *)c + bools[i].offset)));
    return check_config(c);
}

int vae_scale(const struct vae_config *cfg) { return 1 << (cfg->n_blocks - 1); }

/* Where config inference finds each shape, in one key layout. */
struct infer_names {
    const char *conv_in, *resnet_conv1 /* %d block, %d resnet */, *conv_out, *decoder_conv_in, *decoder_conv_out;
    const char *quant_conv, *post_quant_conv, *encoder_attn_q, *decoder_attn_q;
};

static const struct infer_names diffusers_names = {
    "encoder.conv_in.weight", "encoder.down_blocks.%d.resnets.%d.conv1.weight", "encoder.conv_out.weight",
    "decoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
    "encoder.mid_block.attentions.0.to_q.weight", "decoder.mid_block.attentions.0.to_q.weight",
};
static const struct infer_names ldm_names = {
    "encoder.conv_in.weight", "encoder.down.%d.block.%d.conv1.weight", "encoder.conv_out.weight",
    "decoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
    "encoder.mid.attn_1.q.weight", "decoder.mid.attn_1.q.weight",
};

/* Shape of a tensor by name, from loaded weights or from a file. */
struct shape_source {
    const struct weights *w;
    const struct st_file *f;
    const char *prefix; /* f only */
};

static bool shape_of(const struct shape_source *s, const char *name, int64_t ne[CG_MAX_DIMS]) {
    int64_t tmp[CG_MAX_DIMS];
    if (!ne) ne = tmp;
    memset(ne, 0, CG_MAX_DIMS * sizeof *ne);
    if (s->w) {
        int nd;
        return wts_has(s->w, name, &nd, ne);
    }
    char full[512];
    snprintf(full, sizeof full, "%s%s", s->prefix, name);
    const struct st_tensor *t = st_find(s->f, full);
    if (!t || t->ndim > CG_MAX_DIMS) return false;
    for (int d = 0; d < t->ndim; d++) ne[d] = t->shape[d];
    return true;
}

static df_status infer(const struct shape_source *s, const struct infer_names *nm, struct vae_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    int64_t ne[CG_MAX_DIMS];
    char name[256];
    if (!shape_of(s, nm->conv_in, ne))
        return df_error(DF_EFORMAT, "missing tensor \"%s%s\" (not a VAE?)", s->w ? "" : s->prefix, nm->conv_in);
    cfg->in_channels = (int)ne[1];
    for (;; cfg->n_blocks++) {
        snprintf(name, sizeof name, nm->resnet_conv1, cfg->n_blocks, 0);
        if (!shape_of(s, name, ne)) break;
        if (cfg->n_blocks == VAE_MAX_BLOCKS)
            return df_error(DF_EUNSUPPORTED, "VAE with more than %d blocks", VAE_MAX_BLOCKS);
        cfg->block_out_channels[cfg->n_blocks] = (int)ne[0];
    }
    if (cfg->n_blocks == 0) {
        snprintf(name, sizeof name, nm->resnet_conv1, 0, 0);
        return df_error(DF_EFORMAT, "missing tensor \"%s%s\"", s->w ? "" : s->prefix, name);
    }
    for (;; cfg->layers_per_block++) {
        snprintf(name, sizeof name, nm->resnet_conv1, 0, cfg->layers_per_block);
        if (!shape_of(s, name, NULL)) break;
    }
    if (shape_of(s, nm->decoder_conv_in, ne)) cfg->latent_channels = (int)ne[1];
    else if (shape_of(s, nm->conv_out, ne)) cfg->latent_channels = (int)ne[0] / 2; /* mean and logvar */
    cfg->out_channels = shape_of(s, nm->decoder_conv_out, ne) ? (int)ne[0] : cfg->in_channels;
    cfg->use_quant_conv = shape_of(s, nm->quant_conv, NULL);
    cfg->use_post_quant_conv = shape_of(s, nm->post_quant_conv, NULL);
    cfg->mid_block_add_attention = shape_of(s, nm->encoder_attn_q, NULL) || shape_of(s, nm->decoder_attn_q, NULL);
    cfg->norm_num_groups = 32; /* every released VAE; shapes cannot tell */
    cfg->force_upcast = true;  /* diffusers' default */
    if (cfg->latent_channels == 16) {
        cfg->scaling_factor = 1.5305f; /* SD3 */
        cfg->shift_factor = 0.0609f;
    } else {
        cfg->scaling_factor = 0.18215f; /* SD1.x (SDXL: 0.13025, same shapes) */
    }
    return DF_OK;
}

df_status vae_infer_config(const struct weights *w, struct vae_config *cfg) {
    return infer(&(struct shape_source){.w = w}, &diffusers_names, cfg);
}

df_status vae_ldm_infer_config(const struct st_file *f, const char *prefix, struct vae_config *cfg) {
    return infer(&(struct shape_source){.f = f, .prefix = prefix}, &ldm_names, cfg);
}

/* ---- loading ------------------------------------------------------------ */

/* Weight named by fmt with shape: ndim 1 [a], 2 [a, b], 4 [a, b, k, k]. */
static df_status take(struct weights *w, struct wt *out, int ndim, int64_t a, int64_t b, int64_t k,
                      const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static df_status take(struct weights *w, struct wt *out, int ndim, int64_t a, int64_t b, int64_t k,
                      const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t ne[4] = {a, b, k, k};
    return wts_take(w, name, ndim, ne, out);
}

#define VEC(c) 1, (c), 0, 0
#define LIN(o, i) 2, (o), (i), 0
#define CONV(o, i, k) 4, (o), (i), (k)

static df_status load_resnet(struct weights *w, const char *p, int64_t cin, int64_t cout,
                             struct vae_resnet_weights *r) {
    r->in_channels = (int)cin;
    r->out_channels = (int)cout;
    TRY(take(w, &r->norm1_weight, VEC(cin), "%snorm1.weight", p));
    TRY(take(w, &r->norm1_bias, VEC(cin), "%snorm1.bias", p));
    TRY(take(w, &r->conv1_weight, CONV(cout, cin, 3), "%sconv1.weight", p));
    TRY(take(w, &r->conv1_bias, VEC(cout), "%sconv1.bias", p));
    TRY(take(w, &r->norm2_weight, VEC(cout), "%snorm2.weight", p));
    TRY(take(w, &r->norm2_bias, VEC(cout), "%snorm2.bias", p));
    TRY(take(w, &r->conv2_weight, CONV(cout, cout, 3), "%sconv2.weight", p));
    TRY(take(w, &r->conv2_bias, VEC(cout), "%sconv2.bias", p));
    if (cin != cout) {
        TRY(take(w, &r->conv_shortcut_weight, CONV(cout, cin, 1), "%sconv_shortcut.weight", p));
        TRY(take(w, &r->conv_shortcut_bias, VEC(cout), "%sconv_shortcut.bias", p));
    }
    return DF_OK;
}

static df_status load_attention(struct weights *w, const char *p, int64_t c, struct vae_attention_weights *a) {
    TRY(take(w, &a->group_norm_weight, VEC(c), "%sgroup_norm.weight", p));
    TRY(take(w, &a->group_norm_bias, VEC(c), "%sgroup_norm.bias", p));
    /* LDM files hold these as [C, C, 1, 1] convs: wts_take accepts them */
    TRY(take(w, &a->to_q_weight, LIN(c, c), "%sto_q.weight", p));
    TRY(take(w, &a->to_q_bias, VEC(c), "%sto_q.bias", p));
    TRY(take(w, &a->to_k_weight, LIN(c, c), "%sto_k.weight", p));
    TRY(take(w, &a->to_k_bias, VEC(c), "%sto_k.bias", p));
    TRY(take(w, &a->to_v_weight, LIN(c, c), "%sto_v.weight", p));
    TRY(take(w, &a->to_v_bias, VEC(c), "%sto_v.bias", p));
    TRY(take(w, &a->to_out_0_weight, LIN(c, c), "%sto_out.0.weight", p));
    TRY(take(w, &a->to_out_0_bias, VEC(c), "%sto_out.0.bias", p));
    return DF_OK;
}

static df_status load_mid(struct weights *w, const struct vae_config *cfg, const char *part, int64_t c,
                          struct vae_mid_block_weights *m) {
    char p[128];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s.mid_block.resnets.%d.", part, i);
        TRY(load_resnet(w, p, c, c, &m->resnets[i]));
    }
    if (cfg->mid_block_add_attention) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0.", part);
        TRY(load_attention(w, p, c, &m->attention));
    }
    return DF_OK;
}

static df_status alloc_resnets(int n, struct vae_resnet_weights **out) {
    *out = calloc((size_t)n, sizeof **out);
    return *out ? DF_OK : df_error(DF_ENOMEM, "out of memory");
}

static df_status load_encoder(struct weights *w, const struct vae_config *cfg, struct vae_encoder_weights *e) {
    const int *boc = cfg->block_out_channels;
    int n = cfg->n_blocks;
    int64_t top = boc[n - 1];
    char p[128];
    TRY(take(w, &e->conv_in_weight, CONV(boc[0], cfg->in_channels, 3), "encoder.conv_in.weight"));
    TRY(take(w, &e->conv_in_bias, VEC(boc[0]), "encoder.conv_in.bias"));
    int64_t cin = boc[0];
    for (int i = 0; i < n; i++) {
        struct vae_down_block_weights *d = &e->down_blocks[i];
        int64_t cout = boc[i];
        d->n_resnets = cfg->layers_per_block;
        TRY(alloc_resnets(d->n_resnets, &d->resnets));
        for (int j = 0; j < d->n_resnets; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d.", i, j);
            TRY(load_resnet(w, p, j == 0 ? cin : cout, cout, &d->resnets[j]));
        }
        if (i < n - 1) {
            TRY(take(w, &d->downsamplers_0_conv_weight, CONV(cout, cout, 3),
                     "encoder.down_blocks.%d.downsamplers.0.conv.weight", i));
            TRY(take(w, &d->downsamplers_0_conv_bias, VEC(cout), "encoder.down_blocks.%d.downsamplers.0.conv.bias", i));
        }
        cin = cout;
    }
    TRY(load_mid(w, cfg, "encoder", top, &e->mid_block));
    TRY(take(w, &e->conv_norm_out_weight, VEC(top), "encoder.conv_norm_out.weight"));
    TRY(take(w, &e->conv_norm_out_bias, VEC(top), "encoder.conv_norm_out.bias"));
    /* double_z: mean and logvar */
    TRY(take(w, &e->conv_out_weight, CONV(2 * cfg->latent_channels, top, 3), "encoder.conv_out.weight"));
    TRY(take(w, &e->conv_out_bias, VEC(2 * cfg->latent_channels), "encoder.conv_out.bias"));
    return DF_OK;
}

static df_status load_decoder(struct weights *w, const struct vae_config *cfg, struct vae_decoder_weights *d) {
    const int *boc = cfg->block_out_channels;
    int n = cfg->n_blocks;
    int64_t top = boc[n - 1];
    char p[128];
    TRY(take(w, &d->conv_in_weight, CONV(top, cfg->latent_channels, 3), "decoder.conv_in.weight"));
    TRY(take(w, &d->conv_in_bias, VEC(top), "decoder.conv_in.bias"));
    TRY(load_mid(w, cfg, "decoder", top, &d->mid_block));
    int64_t cin = top;
    for (int i = 0; i < n; i++) {
        struct vae_up_block_weights *u = &d->up_blocks[i];
        int64_t cout = boc[n - 1 - i]; /* up blocks walk the channel list backwards */
        u->n_resnets = cfg->layers_per_block + 1;
        TRY(alloc_resnets(u->n_resnets, &u->resnets));
        for (int j = 0; j < u->n_resnets; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d.", i, j);
            TRY(load_resnet(w, p, j == 0 ? cin : cout, cout, &u->resnets[j]));
        }
        if (i < n - 1) {
            TRY(take(w, &u->upsamplers_0_conv_weight, CONV(cout, cout, 3),
                     "decoder.up_blocks.%d.upsamplers.0.conv.weight", i));
            TRY(take(w, &u->upsamplers_0_conv_bias, VEC(cout), "decoder.up_blocks.%d.upsamplers.0.conv.bias", i));
        }
        cin = cout;
    }
    TRY(take(w, &d->conv_norm_out_weight, VEC(boc[0]), "decoder.conv_norm_out.weight"));
    TRY(take(w, &d->conv_norm_out_bias, VEC(boc[0]), "decoder.conv_norm_out.bias"));
    TRY(take(w, &d->conv_out_weight, CONV(cfg->out_channels, boc[0], 3), "decoder.conv_out.weight"));
    TRY(take(w, &d->conv_out_bias, VEC(cfg->out_channels), "decoder.conv_out.bias"));
    return DF_OK;
}

static df_status load_all(struct weights *w, const struct vae_config *cfg, struct vae_model *m) {
    int64_t lc = cfg->latent_channels;
    TRY(load_encoder(w, cfg, &m->encoder));
    if (cfg->use_quant_conv) {
        TRY(take(w, &m->quant_conv_weight, CONV(2 * lc, 2 * lc, 1), "quant_conv.weight"));
        TRY(take(w, &m->quant_conv_bias, VEC(2 * lc), "quant_conv.bias"));
    }
    if (cfg->use_post_quant_conv) {
        TRY(take(w, &m->post_quant_conv_weight, CONV(lc, lc, 1), "post_quant_conv.weight"));
        TRY(take(w, &m->post_quant_conv_bias, VEC(lc), "post_quant_conv.bias"));
    }
    return load_decoder(w, cfg, &m->decoder);
}

static void first_leftover(const char *name, void *ctx) {
    static const char *const parts[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    const char **first = ctx;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && !*first; i++)
        if (strncmp(name, parts[i], strlen(parts[i])) == 0) *first = name;
}

df_status vae_load(struct weights *w, const struct vae_config *cfg, struct vae_model *out) {
    memset(out, 0, sizeof *out);
    out->cfg = *cfg;
    TRY(check_config(cfg));
    df_status st = load_all(w, cfg, out);
    const char *left = NULL;
    if (st == DF_OK) wts_report_unused(w, first_leftover, &left);
    if (left)
        /* the file holds more than the config describes */
        st = df_error(DF_EFORMAT, "tensor \"%s\" is not part of the VAE as configured (%d blocks, layers_per_block "
                      "%d, use_quant_conv %s, use_post_quant_conv %s, mid_block_add_attention %s)", left,
                      cfg->n_blocks, cfg->layers_per_block, cfg->use_quant_conv ? "true" : "false",
                      cfg->use_post_quant_conv ? "true" : "false", cfg->mid_block_add_attention ? "true" : "false");
    if (st != DF_OK) vae_free(out);
    return st;
}

void vae_free(struct vae_model *m) {
    for (int i = 0; i < VAE_MAX_BLOCKS; i++) {
        free(m->encoder.down_blocks[i].resnets);
        free(m->decoder.up_blocks[i].resnets);
        m->encoder.down_blocks[i].resnets = NULL;
        m->decoder.up_blocks[i].resnets = NULL;
    }
}

/* ---- LDM key layout ------------------------------------------------------ */

/* Remainders inside an LDM resnet / attention block. */
static const struct wts_rename ldm_resnet_tail[] = {
    {"nin_shortcut.", "conv_shortcut.", NULL},
    {NULL, NULL, NULL},
};
static const struct wts_rename ldm_attention_tail[] = {
    {"norm.", "group_norm.", NULL}, {"q.", "to_q.", NULL}, {"k.", "to_k.", NULL},
    {"v.", "to_v.", NULL},          {"proj_out.", "to_out.0.", NULL}, {NULL, NULL, NULL},
};

#define VAE_NAME_LEN 96 /* longest generated name, past the prefix */

struct rename_builder {
    struct wts_rename *table;
    int n;
    char *strings, *end;
    const char *prefix;
};

/* Appends prefix+from -> to; the caller sized the block, so no overflow. */
static void add(struct rename_builder *b, const struct wts_rename *tail, const char *to, const char *from_fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add(struct rename_builder *b, const struct wts_rename *tail, const char *to, const char *from_fmt, ...) {
    struct wts_rename *r = &b->table[b->n++];
    char *from = b->strings;
    int len = snprintf(from, (size_t)(b->end - from), "%s", b->prefix);
    va_list ap;
    va_start(ap, from_fmt);
    len += vsnprintf(from + len, (size_t)(b->end - from - len), from_fmt, ap);
    va_end(ap);
    char *dst = from + len + 1;
    int tlen = snprintf(dst, (size_t)(b->end - dst), "%s", to);
    b->strings = dst + tlen + 1;
    *r = (struct wts_rename){from, dst, tail};
}

/* The LDM names of one side's mid block and norm_out. */
static void add_mid(struct rename_builder *b, const char *part) {
    char to[VAE_NAME_LEN];
    snprintf(to, sizeof to, "%s.mid_block.resnets.0.", part);
    add(b, ldm_resnet_tail, to, "%s.mid.block_1.", part);
    snprintf(to, sizeof to, "%s.mid_block.resnets.1.", part);
    add(b, ldm_resnet_tail, to, "%s.mid.block_2.", part);
    snprintf(to, sizeof to, "%s.mid_block.attentions.0.", part);
    add(b, ldm_attention_tail, to, "%s.mid.attn_1.", part);
    snprintf(to, sizeof to, "%s.conv_norm_out.", part);
    add(b, NULL, to, "%s.norm_out.", part);
}

df_status vae_ldm_renames(const struct vae_config *cfg, const char *prefix, struct wts_rename **table, int *n) {
    *table = NULL;
    *n = 0;
    TRY(check_config(cfg));
    int nb = cfg->n_blocks, l = cfg->layers_per_block;
    /* prefix alone, then per side: resnets, down/upsamplers, mid (3), norm_out */
    int cap = 1 + (nb * l + nb - 1 + 4) + (nb * (l + 1) + nb - 1 + 4);
    size_t per = 2 * (strlen(prefix) + VAE_NAME_LEN);
    size_t bytes = (size_t)cap * (sizeof **table + per);
    struct rename_builder b = {.table = malloc(bytes), .prefix = prefix};
    if (!b.table) return df_error(DF_ENOMEM, "out of memory");
    b.strings = (char *)(b.table + cap);
    b.end = (char *)b.table + bytes;
    char to[VAE_NAME_LEN];
    /* conv_in, conv_out, quant_conv, post_quant_conv keep their names */
    add(&b, NULL, "", "%s", "");
    for (int i = 0; i < nb; i++) {
        for (int j = 0; j < l; j++) {
            snprintf(to, sizeof to, "encoder.down_blocks.%d.resnets.%d.", i, j);
            add(&b, ldm_resnet_tail, to, "encoder.down.%d.block.%d.", i, j);
        }
        if (i < nb - 1) {
            snprintf(to, sizeof to, "encoder.down_blocks.%d.downsamplers.0.", i);
            add(&b, NULL, to, "encoder.down.%d.downsample.", i);
        }
    }
    add_mid(&b, "encoder");
    /* LDM numbers the decoder's levels from the lowest resolution up
     * (up.0 is the last block to run); diffusers in running order */
    for (int i = 0; i < nb; i++) {
        int k = nb - 1 - i;
        for (int j = 0; j < l + 1; j++) {
            snprintf(to, sizeof to, "decoder.up_blocks.%d.resnets.%d.", i, j);
            add(&b, ldm_resnet_tail, to, "decoder.up.%d.block.%d.", k, j);
        }
        if (i < nb - 1) {
            snprintf(to, sizeof to, "decoder.up_blocks.%d.upsamplers.0.", i);
            add(&b, NULL, to, "decoder.up.%d.upsample.", k);
        }
    }
    add_mid(&b, "decoder");
    *table = b.table;
    *n = b.n;
    return DF_OK;
}

/* ---- forward ------------------------------------------------------------ */

static struct cg_tensor *W(struct cg_graph *g, const struct wt *w) { return wt_tensor(g, w); }

static struct cg_tensor *conv(struct cg_graph *g, struct cg_tensor *x, const struct wt *w, const struct wt *b,
                              int pad) {
    return cg_conv2d(g, x, W(g, w), W(g, b), 1, pad, pad, pad, pad);
}

static struct cg_tensor *norm(struct cg_graph *g, const struct vae_config *c, struct cg_tensor *x,
                              const struct wt *gamma, const struct wt *beta, bool silu) {
    return cg_groupnorm(g, x, W(g, gamma), W(g, beta), c->norm_num_groups, VAE_EPS, silu);
}

/* ResnetBlock2D, temb None, output_scale_factor 1. */
static struct cg_tensor *resnet(struct cg_graph *g, const struct vae_config *c, const struct vae_resnet_weights *r,
                                struct cg_tensor *x) {
    struct cg_tensor *h = norm(g, c, x, &r->norm1_weight, &r->norm1_bias, true);
    h = conv(g, h, &r->conv1_weight, &r->conv1_bias, 1); /* [B, out, H, W] */
    h = norm(g, c, h, &r->norm2_weight, &r->norm2_bias, true);
    h = conv(g, h, &r->conv2_weight, &r->conv2_bias, 1);
    struct cg_tensor *sc = r->in_channels != r->out_channels
                               ? conv(g, x, &r->conv_shortcut_weight, &r->conv_shortcut_bias, 0) /* [B, out, H, W] */
                               : x;
    return cg_add(g, sc, h);
}

/* Attention (from the old AttnBlock): GroupNorm, one head over all C
 * channels with scale C^-0.5, to_out, residual. */
static struct cg_tensor *attention(struct cg_graph *g, const struct vae_config *c,
                                   const struct vae_attention_weights *a, struct cg_tensor *x) {
    if (!x) return NULL;
    int64_t b = x->ne[0], ch = x->ne[1], h = x->ne[2], w = x->ne[3];
    struct cg_tensor *t = norm(g, c, x, &a->group_norm_weight, &a->group_norm_bias, false);
    t = cg_reshape(g, t, 3, (int64_t[]){b, ch, h * w});
    t = cg_transpose(g, t); /* [B, HW, C] */
    struct cg_tensor *q = cg_linear(g, t, W(g, &a->to_q_weight), W(g, &a->to_q_bias));
    struct cg_tensor *k = cg_linear(g, t, W(g, &a->to_k_weight), W(g, &a->to_k_bias));
    struct cg_tensor *v = cg_linear(g, t, W(g, &a->to_v_weight), W(g, &a->to_v_bias));
    t = cg_attention(g, q, k, v, 1, 1.0f / sqrtf((float)ch), false); /* [B, HW, C] */
    t = cg_linear(g, t, W(g, &a->to_out_0_weight), W(g, &a->to_out_0_bias));
    t = cg_transpose(g, t); /* [B, C, HW] */
    t = cg_reshape(g, t, 4, (int64_t[]){b, ch, h, w});
    return cg_add(g, t, x);
}

/* UNetMidBlock2D */
static struct cg_tensor *mid_block(struct cg_graph *g, const struct vae_config *c,
                                   const struct vae_mid_block_weights *m, struct cg_tensor *x) {
    x = resnet(g, c, &m->resnets[0], x);
    if (c->mid_block_add_attention) x = attention(g, c, &m->attention, x);
    return resnet(g, c, &m->resnets[1], x);
}

static struct cg_tensor *encoder(struct cg_graph *g, const struct vae_config *c, const struct vae_encoder_weights *e,
                                 struct cg_tensor *x) {
    x = conv(g, x, &e->conv_in_weight, &e->conv_in_bias, 1); /* [B, boc0, H, W] */
    for (int i = 0; i < c->n_blocks; i++) {
        const struct vae_down_block_weights *d = &e->down_blocks[i];
        for (int j = 0; j < d->n_resnets; j++) x = resnet(g, c, &d->resnets[j], x);
        if (i < c->n_blocks - 1)
            /* Downsample2D(padding=0): zero-pad right and bottom by one, 3x3 stride 2 */
            x = cg_conv2d(g, x, W(g, &d->downsamplers_0_conv_weight), W(g, &d->downsamplers_0_conv_bias), 2, 0, 0,
                          1, 1); /* [B, C, H/2, W/2] */
    }
    x = mid_block(g, c, &e->mid_block, x);
    x = norm(g, c, x, &e->conv_norm_out_weight, &e->conv_norm_out_bias, true);
    return conv(g, x, &e->conv_out_weight, &e->conv_out_bias, 1); /* [B, 2L, h, w] */
}

static struct cg_tensor *decoder(struct cg_graph *g, const struct vae_config *c, const struct vae_decoder_weights *d,
                                 struct cg_tensor *z) {
    struct cg_tensor *x = conv(g, z, &d->conv_in_weight, &d->conv_in_bias, 1); /* [B, top, h, w] */
    x = mid_block(g, c, &d->mid_block, x);
    for (int i = 0; i < c->n_blocks; i++) {
        const struct vae_up_block_weights *u = &d->up_blocks[i];
        for (int j = 0; j < u->n_resnets; j++) x = resnet(g, c, &u->resnets[j], x);
        if (i < c->n_blocks - 1) {
            x = cg_upsample2x(g, x); /* [B, C, 2h, 2w] */
            x = conv(g, x, &u->upsamplers_0_conv_weight, &u->upsamplers_0_conv_bias, 1);
        }
    }
    x = norm(g, c, x, &d->conv_norm_out_weight, &d->conv_norm_out_bias, true);
    return conv(g, x, &d->conv_out_weight, &d->conv_out_bias, 1); /* [B, out, H, W] */
}

df_status vae_decode(struct cg_graph *g, const struct vae_model *m, struct cg_tensor *latent,
                     struct cg_tensor **image) {
    const struct vae_config *c = &m->cfg;
    *image = NULL;
    if (!latent || latent->ndim != 4 || latent->ne[1] != c->latent_channels)
        return df_error(DF_EINVAL, "VAE decode: latent must be [B, %d, h, w]", c->latent_channels);
    struct cg_tensor *z = latent;
    if (c->use_post_quant_conv) z = conv(g, z, &m->post_quant_conv_weight, &m->post_quant_conv_bias, 0);
    *image = decoder(g, c, &m->decoder, z);
    return cg_status(g);
}

df_status vae_encode(struct cg_graph *g, const struct vae_model *m, struct cg_tensor *image,
                     struct cg_tensor **moments) {
    const struct vae_config *c = &m->cfg;
    *moments = NULL;
    if (!image || image->ndim != 4 || image->ne[1] != c->in_channels)
        return df_error(DF_EINVAL, "VAE encode: image must be [B, %d, H, W]", c->in_channels);
    struct cg_tensor *x = encoder(g, c, &m->encoder, image);
    if (c->use_quant_conv) x = conv(g, x, &m->quant_conv_weight, &m->quant_conv_bias, 0);
    *moments = x;
    return cg_status(g);
}

/* Plans one pass over a [1, C, h, w] input without running it. */
static df_status pass_bytes(const struct vae_model *m, bool decode, int64_t h, int64_t w, uint64_t *bytes) {
    struct cg_graph *g = NULL;
    *bytes = 0;
    TRY(cg_create(&g));
    int64_t ne[4] = {1, decode ? m->cfg.latent_channels : m->cfg.in_channels, h, w};
    struct cg_tensor *in = cg_input(g, "input", 4, ne), *out = NULL;
    df_status st = decode ? vae_decode(g, m, in, &out) : vae_encode(g, m, in, &out);
    if (st == DF_OK) {
        cg_output(g, out);
        st = cg_plan(g, bytes);
    }
    cg_destroy(g);
    return st;
}

df_status vae_decode_bytes(void *vae, int64_t h, int64_t w, uint64_t *bytes) {
    return pass_bytes(vae, true, h, w, bytes);
}

df_status vae_encode_bytes(void *vae, int64_t h, int64_t w, uint64_t *bytes) {
    return pass_bytes(vae, false, h, w, bytes);
}

void vae_split_moments(const float *moments, int64_t b, int64_t c, int64_t h, int64_t w, float *mean_out,
                       float *logvar_out) {
    int64_t plane = c * h * w;
    for (int64_t i = 0; i < b; i++) {
        const float *src = moments + i * 2 * plane;
        memcpy(mean_out + i * plane, src, (size_t)plane * sizeof *src);
        for (int64_t j = 0; j < plane; j++) {
            float v = src[plane + j];
            logvar_out[i * plane + j] = v < -30.0f ? -30.0f : v > 20.0f ? 20.0f : v;
        }
    }
}
