/* unet: UNet2DConditionModel. Time embedding, a down path of ResNet and
 * Transformer2D blocks whose outputs are kept as skips, a cross-attention
 * mid block, an up path that concatenates the skips back LIFO. */
#include "unet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRANSFORMER_GN_EPS 1e-6f /* Transformer2DModel's input GroupNorm */
#define LAYERNORM_EPS 1e-5f      /* BasicTransformerBlock norm1..3 */
#define MAX_LAYERS UNET_MAX_LAYERS
#define MAX_DEPTH UNET_MAX_DEPTH
#define MAX_SKIPS UNET_MAX_SKIPS
#define NAME_LEN 160

#define TRY(x) do { df_status st_ = (x); if (st_ != DF_OK) return st_; } while (0)

/* ---- config ------------------------------------------------------------- */

void unet_config_defaults(struct unet_config *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 4;
    c->out_channels = 4;
    c->mid_block = true;
    c->cross_attention_dim = 1280;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = true;
    c->downsample_padding = 1;
    c->conv_in_kernel = 3;
    c->conv_out_kernel = 3;
    c->resnet_out_scale_factor = 1;
    c->mid_block_scale_factor = 1;
    for (int i = 0; i < UNET_MAX_LEVELS; i++) {
        c->layers_per_block[i] = 2;
        c->num_attention_heads[i] = 8;
        c->transformer_layers_per_block[i] = 1;
    }
}

static int time_embed_dim(const struct unet_config *c) {
    return c->time_embedding_dim > 0 ? c->time_embedding_dim : 4 * c->block_out_channels[0];
}

/* Down level whose settings up level i mirrors. */
static int mirror(const struct unet_config *c, int i) { return c->levels - 1 - i; }

static int up_depth(const struct unet_config *c, int i) {
    int d = c->up_transformer_layers_per_block[i];
    return d > 0 ? d : c->transformer_layers_per_block[mirror(c, i)];
}

static bool any_attention(const struct unet_config *c) {
    for (int i = 0; i < c->levels; i++)
        if (c->down_block_types[i] == UNET_CROSS_ATTN || c->up_block_types[i] == UNET_CROSS_ATTN) return true;
    return c->mid_block;
}

static df_status check_heads(const struct unet_config *c, int level, int depth, const char *where) {
    int ch = c->block_out_channels[level], heads = c->num_attention_heads[level];
    if (heads < 1 || ch % heads)
        return df_error(DF_EINVAL, "UNet config: %s: %d heads for %d channels", where, heads, ch);
    if (depth < 1 || depth > MAX_DEPTH)
        return df_error(DF_EINVAL, "UNet config: %s: transformer depth %d (1..%d)", where, depth, MAX_DEPTH);
    return DF_OK;
}

static df_status check_config(const struct unet_config *c) {
    if (c->levels < 1 || c->levels > UNET_MAX_LEVELS)
        return df_error(DF_EINVAL, "UNet config: %d levels (1..%d supported)", c->levels, UNET_MAX_LEVELS);
    if (c->addition_embed_type == UNET_ADD_TEXT_TIME) {
        if (c->addition_time_embed_dim < 1)
            return df_error(DF_EINVAL, "UNet config addition_time_embed_dim is unknown (label_emb / add_embedding "
                                       "takes %d = pooled text + time ids x it): give it, or the pooled width",
                            c->projection_class_embeddings_input_dim);
        if (c->addition_time_embed_dim % 2)
            return df_error(DF_EUNSUPPORTED, "UNet config addition_time_embed_dim %d is odd",
                            c->addition_time_embed_dim);
        if (c->projection_class_embeddings_input_dim <= c->addition_time_embed_dim)
            return df_error(DF_EINVAL, "UNet config projection_class_embeddings_input_dim %d for "
                                       "addition_time_embed_dim %d",
                            c->projection_class_embeddings_input_dim, c->addition_time_embed_dim);
    }
    if (c->in_channels < 1 || c->out_channels < 1 || c->norm_num_groups < 1 || !(c->norm_eps > 0))
        return df_error(DF_EINVAL, "UNet config: in %d, out %d channels, %d groups, eps %g", c->in_channels,
                        c->out_channels, c->norm_num_groups, (double)c->norm_eps);
    if (c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 || c->conv_out_kernel < 1 || c->conv_out_kernel % 2 == 0)
        return df_error(DF_EUNSUPPORTED, "UNet config: conv_in_kernel %d, conv_out_kernel %d (odd sizes only)",
                        c->conv_in_kernel, c->conv_out_kernel);
    if (c->downsample_padding < 0 || c->downsample_padding > 1)
        return df_error(DF_EUNSUPPORTED, "UNet config: downsample_padding %d", c->downsample_padding);
    if (!(c->resnet_out_scale_factor > 0) || !(c->mid_block_scale_factor > 0))
        return df_error(DF_EINVAL, "UNet config: output scale factors %g, %g", (double)c->resnet_out_scale_factor,
                        (double)c->mid_block_scale_factor);
    for (int i = 0; i < c->levels; i++) {
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return df_error(DF_EINVAL, "UNet config: block_out_channels[%d] = %d is not a multiple of %d groups", i,
                            c->block_out_channels[i], c->norm_num_groups);
        if (c->layers_per_block[i] < 1 || c->layers_per_block[i] > MAX_LAYERS)
            return df_error(DF_EINVAL, "UNet config: layers_per_block[%d] = %d (1..%d)", i, c->layers_per_block[i],
                            MAX_LAYERS);
        char where[64];
        if (c->down_block_types[i] == UNET_CROSS_ATTN) {
            snprintf(where, sizeof where, "down level %d", i);
            TRY(check_heads(c, i, c->transformer_layers_per_block[i], where));
        }
        if (c->up_block_types[i] == UNET_CROSS_ATTN) {
            snprintf(where, sizeof where, "up level %d", i);
            TRY(check_heads(c, mirror(c, i), up_depth(c, i), where));
        }
    }
    if (c->mid_block) TRY(check_heads(c, c->levels - 1, c->transformer_layers_per_block[c->levels - 1], "mid block"));
    if (any_attention(c) && c->cross_attention_dim < 1)
        return df_error(DF_EINVAL, "UNet config: cross_attention_dim %d", c->cross_attention_dim);
    if (time_embed_dim(c) < 1)
        return df_error(DF_EINVAL, "UNet config: time embedding dim %d", time_embed_dim(c));
    if (c->block_out_channels[0] % 2)
        return df_error(DF_EINVAL, "UNet config: block_out_channels[0] = %d is odd (sinusoid width)",
                        c->block_out_channels[0]);
    return DF_OK;
}

/* Channels of every skip the down path pushes, in push order. */
static int skip_channels(const struct unet_config *c, int *ch) {
    int n = 0;
    ch[n++] = c->block_out_channels[0]; /* conv_in */
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j < c->layers_per_block[i]; j++) ch[n++] = c->block_out_channels[i];
        if (i < c->levels - 1) ch[n++] = c->block_out_channels[i]; /* downsampler */
    }
    return n;
}

int unet_skip_count(const struct unet_config *cfg) {
    int ch[MAX_SKIPS];
    if (cfg->levels < 1 || cfg->levels > UNET_MAX_LEVELS) return 0;
    for (int i = 0; i < cfg->levels; i++)
        if (cfg->layers_per_block[i] < 1 || cfg->layers_per_block[i] > MAX_LAYERS) return 0;
    return skip_channels(cfg, ch);
}

/* Downsample2D's output size: 3x3 stride 2 with the configured padding
 * (padding 0 pads right/bottom by one). */
static int64_t down_size(const struct unet_config *c, int64_t n) {
    int pad = c->downsample_padding ? 2 * c->downsample_padding : 1;
    return (n + pad - 3) / 2 + 1;
}

void unet_skip_shape(const struct unet_config *cfg, int i, int64_t batch, int64_t h, int64_t w, int64_t ne[4]) {
    int ch[MAX_SKIPS];
    int n = unet_skip_count(cfg) ? skip_channels(cfg, ch) : 0;
    ne[0] = batch;
    ne[1] = n ? cfg->block_out_channels[cfg->levels - 1] : 0;
    ne[2] = h;
    ne[3] = w;
    if (!n) return;
    /* walk the push order, halving after each downsampler */
    int k = 1;
    for (int l = 0; l < cfg->levels && k <= i; l++) {
        k += cfg->layers_per_block[l];
        if (l < cfg->levels - 1 && k <= i) {
            ne[2] = down_size(cfg, ne[2]);
            ne[3] = down_size(cfg, ne[3]);
            k++;
        }
    }
    if (i < n) ne[1] = ch[i];
}

/* ---- loading ------------------------------------------------------------ */

static df_status take(struct weights *w, struct wt *out, const char *at, const char *what, int ndim, int64_t a,
                      int64_t b, int64_t c, int64_t d) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", at, what);
    int64_t ne[4] = {a, b, c, d};
    return wts_take(w, name, ndim, ne, out);
}

#define VEC(field, what, n) take(w, &(field), at, what, 1, n, 0, 0, 0)
#define MAT(field, what, o, i) take(w, &(field), at, what, 2, o, i, 0, 0)
#define CONV(field, what, o, i, k) take(w, &(field), at, what, 4, o, i, k, k)

/* A config that says less than the weights hold (fewer layers, no
 * attention, no added conditioning) would silently drop tensors: refuse it,
 * naming the first tensor beyond the config and the key that contradicts. */
static df_status refuse_extra(const struct weights *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static df_status refuse_extra(const struct weights *w, const char *key, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!wts_has(w, name, NULL, NULL)) return DF_OK;
    return df_error(DF_EFORMAT, "UNet weights have \"%s\", which the config's %s leaves out", name, key);
}

static df_status load_resnet(struct weights *w, const char *at, int cin, int cout, int temb,
                             struct unet_resnet_weights *r) {
    r->in_channels = cin;
    r->out_channels = cout;
    TRY(VEC(r->norm1_weight, "norm1.weight", cin));
    TRY(VEC(r->norm1_bias, "norm1.bias", cin));
    TRY(CONV(r->conv1_weight, "conv1.weight", cout, cin, 3));
    TRY(VEC(r->conv1_bias, "conv1.bias", cout));
    TRY(MAT(r->time_emb_proj_weight, "time_emb_proj.weight", cout, temb));
    TRY(VEC(r->time_emb_proj_bias, "time_emb_proj.bias", cout));
    TRY(VEC(r->norm2_weight, "norm2.weight", cout));
    TRY(VEC(r->norm2_bias, "norm2.bias", cout));
    TRY(CONV(r->conv2_weight, "conv2.weight", cout, cout, 3));
    TRY(VEC(r->conv2_bias, "conv2.bias", cout));
    if (cin != cout) {
        TRY(CONV(r->conv_shortcut_weight, "conv_shortcut.weight", cout, cin, 1));
        TRY(VEC(r->conv_shortcut_bias, "conv_shortcut.bias", cout));
    }
    return DF_OK;
}

static df_status load_attention(struct weights *w, const char *block, const char *name, int c, int kv,
                                struct unet_attention_weights *a) {
    char at[NAME_LEN];
    snprintf(at, sizeof at, "%s%s.", block, name);
    TRY(MAT(a->to_q_weight, "to_q.weight", c, c));
    TRY(MAT(a->to_k_weight, "to_k.weight", c, kv));
    TRY(MAT(a->to_v_weight, "to_v.weight", c, kv));
    TRY(MAT(a->to_out_0_weight, "to_out.0.weight", c, c));
    return VEC(a->to_out_0_bias, "to_out.0.bias", c);
}

static df_status load_block(struct weights *w, const char *at, int c, int ctx,
                            struct unet_transformer_block_weights *b) {
    TRY(VEC(b->norm1_weight, "norm1.weight", c));
    TRY(VEC(b->norm1_bias, "norm1.bias", c));
    TRY(load_attention(w, at, "attn1", c, c, &b->attn1));
    TRY(VEC(b->norm2_weight, "norm2.weight", c));
    TRY(VEC(b->norm2_bias, "norm2.bias", c));
    TRY(load_attention(w, at, "attn2", c, ctx, &b->attn2));
    TRY(VEC(b->norm3_weight, "norm3.weight", c));
    TRY(VEC(b->norm3_bias, "norm3.bias", c));
    TRY(MAT(b->ff_net_0_proj_weight, "ff.net.0.proj.weight", 8 * c, c)); /* GEGLU: value and gate, 4c each */
    TRY(VEC(b->ff_net_0_proj_bias, "ff.net.0.proj.bias", 8 * c));
    TRY(MAT(b->ff_net_2_weight, "ff.net.2.weight", c, 4 * c));
    return VEC(b->ff_net_2_bias, "ff.net.2.bias", c);
}

static df_status load_transformer(struct weights *w, const struct unet_config *cfg, const char *at, int c,
                                  int heads, int depth, struct unet_transformer_weights *t) {
    t->channels = c;
    t->heads = heads;
    t->transformer_blocks = calloc((size_t)depth, sizeof *t->transformer_blocks);
    if (!t->transformer_blocks) return df_error(DF_ENOMEM, "out of memory");
    t->n_blocks = depth;
    TRY(VEC(t->norm_weight, "norm.weight", c));
    TRY(VEC(t->norm_bias, "norm.bias", c));
    if (cfg->use_linear_projection) {
        TRY(MAT(t->proj_in_weight, "proj_in.weight", c, c));
        TRY(MAT(t->proj_out_weight, "proj_out.weight", c, c));
    } else {
        TRY(CONV(t->proj_in_weight, "proj_in.weight", c, c, 1));
        TRY(CONV(t->proj_out_weight, "proj_out.weight", c, c, 1));
    }
    TRY(VEC(t->proj_in_bias, "proj_in.bias", c));
    TRY(VEC(t->proj_out_bias, "proj_out.bias", c));
    for (int d = 0; d < depth; d++) {
        char bt[NAME_LEN];
        snprintf(bt, sizeof bt, "%stransformer_blocks.%d.", at, d);
        TRY(load_block(w, bt, c, cfg->cross_attention_dim, &t->transformer_blocks[d]));
    }
    return refuse_extra(w, "transformer_layers_per_block", "%stransformer_blocks.%d.norm1.weight", at, depth);
}

static df_status load_down(struct weights *w, const struct unet_config *cfg, int i, int cin,
                           struct unet_down_block_weights *d) {
    int c = cfg->block_out_channels[i], n = cfg->layers_per_block[i];
    bool attn = cfg->down_block_types[i] == UNET_CROSS_ATTN;
    d->n_layers = n;
    d->resnets = calloc((size_t)n, sizeof *d->resnets);
    if (attn) d->attentions = calloc((size_t)n, sizeof *d->attentions);
    if (!d->resnets || (attn && !d->attentions)) return df_error(DF_ENOMEM, "out of memory");
    char at[NAME_LEN];
    for (int j = 0; j < n; j++) {
        snprintf(at, sizeof at, "down_blocks.%d.resnets.%d.", i, j);
        TRY(load_resnet(w, at, j ? c : cin, c, time_embed_dim(cfg), &d->resnets[j]));
        if (!attn) continue;
        snprintf(at, sizeof at, "down_blocks.%d.attentions.%d.", i, j);
        TRY(load_transformer(w, cfg, at, c, cfg->num_attention_heads[i], cfg->transformer_layers_per_block[i],
                             &d->attentions[j]));
    }
    TRY(refuse_extra(w, "layers_per_block", "down_blocks.%d.resnets.%d.conv1.weight", i, n));
    if (!attn) TRY(refuse_extra(w, "down_block_types", "down_blocks.%d.attentions.0.proj_in.weight", i));
    if (i < cfg->levels - 1) {
        snprintf(at, sizeof at, "down_blocks.%d.downsamplers.0.conv.", i);
        TRY(CONV(d->downsamplers_0_conv_weight, "weight", c, c, 3));
        TRY(VEC(d->downsamplers_0_conv_bias, "bias", c));
    }
    return DF_OK;
}

/* Up level i pops n skips (channels from the end of `skips`, *nskips). */
static df_status load_up(struct weights *w, const struct unet_config *cfg, int i, int cin, const int *skips,
                         int *nskips, struct unet_up_block_weights *u) {
    int m = mirror(cfg, i), c = cfg->block_out_channels[m], n = cfg->layers_per_block[m] + 1;
    bool attn = cfg->up_block_types[i] == UNET_CROSS_ATTN;
    u->n_layers = n;
    u->resnets = calloc((size_t)n, sizeof *u->resnets);
    if (attn) u->attentions = calloc((size_t)n, sizeof *u->attentions);
    if (!u->resnets || (attn && !u->attentions)) return df_error(DF_ENOMEM, "out of memory");
    char at[NAME_LEN];
    for (int j = 0; j < n; j++) {
        if (*nskips < 1) return df_error(DF_EINVAL, "UNet config: the up path pops more skips than the down path keeps");
        int skip = skips[--*nskips];
        snprintf(at, sizeof at, "up_blocks.%d.resnets.%d.", i, j);
        TRY(load_resnet(w, at, (j ? c : cin) + skip, c, time_embed_dim(cfg), &u->resnets[j]));
        if (!attn) continue;
        snprintf(at, sizeof at, "up_blocks.%d.attentions.%d.", i, j);
        TRY(load_transformer(w, cfg, at, c, cfg->num_attention_heads[m], up_depth(cfg, i), &u->attentions[j]));
    }
    TRY(refuse_extra(w, "layers_per_block", "up_blocks.%d.resnets.%d.conv1.weight", i, n));
    if (!attn) TRY(refuse_extra(w, "up_block_types", "up_blocks.%d.attentions.0.proj_in.weight", i));
    if (i < cfg->levels - 1) {
        snprintf(at, sizeof at, "up_blocks.%d.upsamplers.0.conv.", i);
        TRY(CONV(u->upsamplers_0_conv_weight, "weight", c, c, 3));
        TRY(VEC(u->upsamplers_0_conv_bias, "bias", c));
    }
    return DF_OK;
}

static df_status load_all(struct weights *w, const struct unet_config *cfg, bool up_path, struct unet_model *m) {
    int c0 = cfg->block_out_channels[0], last = cfg->block_out_channels[cfg->levels - 1];
    int temb = time_embed_dim(cfg);
    const char *at = "";
    TRY(CONV(m->conv_in_weight, "conv_in.weight", c0, cfg->in_channels, cfg->conv_in_kernel));
    TRY(VEC(m->conv_in_bias, "conv_in.bias", c0));
    TRY(MAT(m->time_embedding_linear_1_weight, "time_embedding.linear_1.weight", temb, c0));
    TRY(VEC(m->time_embedding_linear_1_bias, "time_embedding.linear_1.bias", temb));
    TRY(MAT(m->time_embedding_linear_2_weight, "time_embedding.linear_2.weight", temb, temb));
    TRY(VEC(m->time_embedding_linear_2_bias, "time_embedding.linear_2.bias", temb));
    if (cfg->addition_embed_type == UNET_ADD_TEXT_TIME) { /* TimestepEmbedding(adm_in, temb) */
        int adm = cfg->projection_class_embeddings_input_dim;
        TRY(MAT(m->add_embedding_linear_1_weight, "add_embedding.linear_1.weight", temb, adm));
        TRY(VEC(m->add_embedding_linear_1_bias, "add_embedding.linear_1.bias", temb));
        TRY(MAT(m->add_embedding_linear_2_weight, "add_embedding.linear_2.weight", temb, temb));
        TRY(VEC(m->add_embedding_linear_2_bias, "add_embedding.linear_2.bias", temb));
    } else {
        TRY(refuse_extra(w, "addition_embed_type", "add_embedding.linear_1.weight"));
    }
    int skips[MAX_SKIPS];
    int nskips = skip_channels(cfg, skips);
    for (int i = 0, cin = c0; i < cfg->levels; i++) {
        TRY(load_down(w, cfg, i, cin, &m->down_blocks[i]));
        cin = cfg->block_out_channels[i];
    }
    if (cfg->mid_block) {
        int depth = cfg->transformer_layers_per_block[cfg->levels - 1];
        TRY(load_resnet(w, "mid_block.resnets.0.", last, last, temb, &m->mid_block.resnets[0]));
        TRY(load_transformer(w, cfg, "mid_block.attentions.0.", last, cfg->num_attention_heads[cfg->levels - 1],
                             depth, &m->mid_block.attention));
        TRY(load_resnet(w, "mid_block.resnets.1.", last, last, temb, &m->mid_block.resnets[1]));
    }
    if (!up_path) return DF_OK;
    for (int i = 0, cin = last; i < cfg->levels; i++) {
        TRY(load_up(w, cfg, i, cin, skips, &nskips, &m->up_blocks[i]));
        cin = cfg->block_out_channels[mirror(cfg, i)];
    }
    TRY(VEC(m->conv_norm_out_weight, "conv_norm_out.weight", c0));
    TRY(VEC(m->conv_norm_out_bias, "conv_norm_out.bias", c0));
    TRY(CONV(m->conv_out_weight, "conv_out.weight", cfg->out_channels, c0, cfg->conv_out_kernel));
    return VEC(m->conv_out_bias, "conv_out.bias", cfg->out_channels);
}

static df_status load(struct weights *w, const struct unet_config *cfg, bool up_path, struct unet_model *out) {
    memset(out, 0, sizeof *out);
    out->cfg = *cfg;
    TRY(check_config(cfg));
    df_status st = load_all(w, cfg, up_path, out);
    if (st != DF_OK) unet_free(out);
    return st;
}

df_status unet_load(struct weights *w, const struct unet_config *cfg, struct unet_model *out) {
    return load(w, cfg, true, out);
}

df_status unet_load_down(struct weights *w, const struct unet_config *cfg, struct unet_model *out) {
    return load(w, cfg, false, out);
}

static void free_transformer(struct unet_transformer_weights *t) {
    free(t->transformer_blocks);
    t->transformer_blocks = NULL;
}

void unet_free(struct unet_model *m) {
    for (int i = 0; i < UNET_MAX_LEVELS; i++) {
        struct unet_down_block_weights *d = &m->down_blocks[i];
        struct unet_up_block_weights *u = &m->up_blocks[i];
        for (int j = 0; d->attentions && j < d->n_layers; j++) free_transformer(&d->attentions[j]);
        for (int j = 0; u->attentions && j < u->n_layers; j++) free_transformer(&u->attentions[j]);
        free(d->resnets);
        free(d->attentions);
        free(u->resnets);
        free(u->attentions);
        d->resnets = u->resnets = NULL;
        d->attentions = u->attentions = NULL;
    }
    free_transformer(&m->mid_block.attention);
}

#undef VEC
#undef MAT
#undef CONV

/* ---- LDM key layout ----------------------------------------------------- */

/* ResBlock parts (LDM) -> ResnetBlock2D names. */
static const struct wts_rename ldm_resnet_tail[] = {
    {"in_layers.0.", "norm1.", NULL},          {"in_layers.2.", "conv1.", NULL},
    {"emb_layers.1.", "time_emb_proj.", NULL}, {"out_layers.0.", "norm2.", NULL},
    {"out_layers.3.", "conv2.", NULL},         {"skip_connection.", "conv_shortcut.", NULL},
    {NULL, NULL, NULL},
};

struct rename_builder {
    struct wts_rename *table;
    int n, cap;
    char *strings, *end;
    const char *prefix;
};

/* Appends prefix+`from` -> `to` (strings copied into the table's block). */
static void add(struct rename_builder *b, const struct wts_rename *tail, const char *to, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add(struct rename_builder *b, const struct wts_rename *tail, const char *to, const char *fmt, ...) {
    if (b->n == b->cap) return; /* cannot happen: cap counts every entry */
    char from[NAME_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(from, sizeof from, fmt, ap);
    va_end(ap);
    struct wts_rename *r = &b->table[b->n++];
    r->from = b->strings;
    b->strings += snprintf(b->strings, (size_t)(b->end - b->strings), "%s%s", b->prefix, from) + 1;
    r->to = b->strings;
    b->strings += snprintf(b->strings, (size_t)(b->end - b->strings), "%s", to) + 1;
    r->tail = tail;
}

df_status unet_ldm_renames(const struct unet_config *cfg, const char *prefix, struct wts_rename **table, int *n) {
    *table = NULL;
    *n = 0;
    if (!prefix) prefix = "";
    if (cfg->levels < 1 || cfg->levels > UNET_MAX_LEVELS)
        return df_error(DF_EINVAL, "UNet config: %d levels (1..%d supported)", cfg->levels, UNET_MAX_LEVELS);
    int cap = 10; /* conv_in, time_embed x2, label_emb x2, middle x3, out x2 */
    for (int i = 0; i < cfg->levels; i++) {
        if (cfg->layers_per_block[i] < 1 || cfg->layers_per_block[i] > MAX_LAYERS)
            return df_error(DF_EINVAL, "UNet config: layers_per_block[%d] = %d", i, cfg->layers_per_block[i]);
        cap += 2 * cfg->layers_per_block[i] + 1 + 2 * (cfg->layers_per_block[i] + 1) + 1;
    }
    size_t per = 2 * (strlen(prefix) + NAME_LEN);
    size_t bytes = (size_t)cap * (sizeof **table + per);
    struct rename_builder b = {.table = malloc(bytes), .cap = cap, .prefix = prefix};
    if (!b.table) return df_error(DF_ENOMEM, "out of memory");
    b.strings = (char *)(b.table + cap);
    b.end = (char *)b.table + bytes;
    char to[NAME_LEN];
    add(&b, NULL, "conv_in.", "input_blocks.0.0.");
    add(&b, NULL, "time_embedding.linear_1.", "time_embed.0.");
    add(&b, NULL, "time_embedding.linear_2.", "time_embed.2.");
    add(&b, NULL, "add_embedding.linear_1.", "label_emb.0.0.");
    add(&b, NULL, "add_embedding.linear_2.", "label_emb.0.2.");
    /* input_blocks: conv_in, then per level its layers and a downsampler */
    int k = 1;
    for (int i = 0; i < cfg->levels; i++) {
        for (int j = 0; j < cfg->layers_per_block[i]; j++, k++) {
            snprintf(to, sizeof to, "down_blocks.%d.resnets.%d.", i, j);
            add(&b, ldm_resnet_tail, to, "input_blocks.%d.0.", k);
            if (cfg->down_block_types[i] != UNET_CROSS_ATTN) continue;
            snprintf(to, sizeof to, "down_blocks.%d.attentions.%d.", i, j);
            add(&b, NULL, to, "input_blocks.%d.1.", k);
        }
        if (i < cfg->levels - 1) {
            snprintf(to, sizeof to, "down_blocks.%d.downsamplers.0.conv.", i);
            add(&b, NULL, to, "input_blocks.%d.0.op.", k++);
        }
    }
    add(&b, ldm_resnet_tail, "mid_block.resnets.0.", "middle_block.0.");
    add(&b, NULL, "mid_block.attentions.0.", "middle_block.1.");
    add(&b, ldm_resnet_tail, "mid_block.resnets.1.", "middle_block.2.");
    /* output_blocks: per up level, layers+1 blocks of resnet [attention]
     * [upsampler], the upsampler after the attention if there is one */
    k = 0;
    for (int i = 0; i < cfg->levels; i++) {
        int n = cfg->layers_per_block[mirror(cfg, i)] + 1;
        bool attn = cfg->up_block_types[i] == UNET_CROSS_ATTN;
        for (int j = 0; j < n; j++, k++) {
            snprintf(to, sizeof to, "up_blocks.%d.resnets.%d.", i, j);
            add(&b, ldm_resnet_tail, to, "output_blocks.%d.0.", k);
            if (attn) {
                snprintf(to, sizeof to, "up_blocks.%d.attentions.%d.", i, j);
                add(&b, NULL, to, "output_blocks.%d.1.", k);
            }
        }
        if (i < cfg->levels - 1) {
            snprintf(to, sizeof to, "up_blocks.%d.upsamplers.0.conv.", i);
            add(&b, NULL, to, "output_blocks.%d.%d.conv.", k - 1, attn ? 2 : 1);
        }
    }
    add(&b, NULL, "conv_norm_out.", "out.0.");
    add(&b, NULL, "conv_out.", "out.2.");
    *table = b.table;
    *n = b.n;
    return DF_OK;
}

/* ---- forward ------------------------------------------------------------ */

static struct cg_tensor *W(struct cg_graph *g, const struct wt *w) { return wt_tensor(g, w); }

static struct cg_tensor *linear(struct cg_graph *g, struct cg_tensor *x, const struct wt *w, const struct wt *b) {
    return cg_linear(g, x, W(g, w), W(g, b));
}

static struct cg_tensor *conv(struct cg_graph *g, struct cg_tensor *x, const struct wt *w, const struct wt *b,
                              int stride, int pad) {
    return cg_conv2d(g, x, W(g, w), W(g, b), stride, pad, pad, pad, pad);
}

/* ResnetBlock2D; temb_act = silu(temb), which every resnet would compute
 * alike, so it is computed once. */
static struct cg_tensor *resnet(struct cg_graph *g, const struct unet_config *c, const struct unet_resnet_weights *r,
                                struct cg_tensor *x, struct cg_tensor *temb_act, float out_scale) {
    if (!x || !temb_act) return NULL;
    int64_t b = x->ne[0];
    struct cg_tensor *h = cg_groupnorm(g, x, W(g, &r->norm1_weight), W(g, &r->norm1_bias), c->norm_num_groups,
                                       c->norm_eps, true);
    h = conv(g, h, &r->conv1_weight, &r->conv1_bias, 1, 1);                       /* [B, Co, H, W] */
    struct cg_tensor *t = linear(g, temb_act, &r->time_emb_proj_weight, &r->time_emb_proj_bias); /* [B, Co] */
    h = cg_add(g, h, cg_reshape(g, t, 4, (int64_t[]){b, r->out_channels, 1, 1}));
    h = cg_groupnorm(g, h, W(g, &r->norm2_weight), W(g, &r->norm2_bias), c->norm_num_groups, c->norm_eps, true);
    h = conv(g, h, &r->conv2_weight, &r->conv2_bias, 1, 1);
    struct cg_tensor *sc = r->conv_shortcut_weight.ndim ? conv(g, x, &r->conv_shortcut_weight,
                                                               &r->conv_shortcut_bias, 1, 0) : x;
    struct cg_tensor *y = cg_add(g, sc, h);
    return out_scale != 1.0f ? cg_scale(g, y, 1.0f / out_scale) : y;
}

/* Attention: q from x, k and v from ctx, head_dim^-0.5 scaling. */
static struct cg_tensor *attention(struct cg_graph *g, const struct unet_attention_weights *a, int channels,
                                   int heads, struct cg_tensor *x, struct cg_tensor *ctx) {
    struct cg_tensor *q = cg_linear(g, x, W(g, &a->to_q_weight), NULL);   /* [B, N, C] */
    struct cg_tensor *k = cg_linear(g, ctx, W(g, &a->to_k_weight), NULL); /* [B, T, C] */
    struct cg_tensor *v = cg_linear(g, ctx, W(g, &a->to_v_weight), NULL); /* [B, T, C] */
    float scale = 1.0f / sqrtf((float)(channels / heads));
    struct cg_tensor *o = cg_attention(g, q, k, v, heads, scale, false); /* [B, N, C] */
    return linear(g, o, &a->to_out_0_weight, &a->to_out_0_bias);
}

/* BasicTransformerBlock: pre-LN self-attention, cross-attention, GEGLU FF. */
static struct cg_tensor *transformer_block(struct cg_graph *g, const struct unet_transformer_weights *t,
                                           const struct unet_transformer_block_weights *b, struct cg_tensor *x,
                                           struct cg_tensor *ctx) {
    struct cg_tensor *n = cg_layernorm(g, x, W(g, &b->norm1_weight), W(g, &b->norm1_bias), LAYERNORM_EPS);
    x = cg_add(g, x, attention(g, &b->attn1, t->channels, t->heads, n, n));
    n = cg_layernorm(g, x, W(g, &b->norm2_weight), W(g, &b->norm2_bias), LAYERNORM_EPS);
    x = cg_add(g, x, attention(g, &b->attn2, t->channels, t->heads, n, ctx));
    n = cg_layernorm(g, x, W(g, &b->norm3_weight), W(g, &b->norm3_bias), LAYERNORM_EPS);
    struct cg_tensor *h = linear(g, n, &b->ff_net_0_proj_weight, &b->ff_net_0_proj_bias); /* [B, N, 8C] */
    h = cg_geglu(g, h);                                                                   /* [B, N, 4C] */
    return cg_add(g, x, linear(g, h, &b->ff_net_2_weight, &b->ff_net_2_bias));
}

/* Transformer2DModel: GroupNorm, proj_in, tokens through the blocks,
 * proj_out, residual. The conv variant projects before going to tokens,
 * the linear variant (SD2) after, as diffusers does. */
static struct cg_tensor *transformer(struct cg_graph *g, const struct unet_config *c,
                                     const struct unet_transformer_weights *t, struct cg_tensor *x,
                                     struct cg_tensor *ctx) {
    if (!x) return NULL;
    int64_t b = x->ne[0], ch = x->ne[1], hh = x->ne[2], ww = x->ne[3];
    int64_t flat[3] = {b, ch, hh * ww};
    struct cg_tensor *h = cg_groupnorm(g, x, W(g, &t->norm_weight), W(g, &t->norm_bias), c->norm_num_groups,
                                       TRANSFORMER_GN_EPS, false);
    if (c->use_linear_projection) {
        h = cg_transpose(g, cg_reshape(g, h, 3, flat)); /* [B, HW, C] */
        h = linear(g, h, &t->proj_in_weight, &t->proj_in_bias);
    } else {
        h = conv(g, h, &t->proj_in_weight, &t->proj_in_bias, 1, 0);
        h = cg_transpose(g, cg_reshape(g, h, 3, flat)); /* [B, HW, C] */
    }
    for (int i = 0; i < t->n_blocks; i++) h = transformer_block(g, t, &t->transformer_blocks[i], h, ctx);
    if (c->use_linear_projection) {
        h = linear(g, h, &t->proj_out_weight, &t->proj_out_bias);
        h = cg_reshape(g, cg_transpose(g, h), 4, x->ne); /* [B, C, H, W] */
    } else {
        h = cg_reshape(g, cg_transpose(g, h), 4, x->ne); /* [B, C, H, W] */
        h = conv(g, h, &t->proj_out_weight, &t->proj_out_bias, 1, 0);
    }
    return cg_add(g, h, x);
}

static void push(struct unet_down *d, struct cg_tensor *t) {
    if (d->n_skips < MAX_SKIPS) d->skips[d->n_skips++] = t;
}

/* CrossAttnDownBlock2D / DownBlock2D; every layer's output and the
 * downsampler's are skips. */
static struct cg_tensor *down_block(struct cg_graph *g, const struct unet_config *c,
                                    const struct unet_down_block_weights *d, struct cg_tensor *x,
                                    struct cg_tensor *temb_act, struct cg_tensor *ctx, struct unet_down *skips) {
    for (int j = 0; j < d->n_layers; j++) {
        x = resnet(g, c, &d->resnets[j], x, temb_act, c->resnet_out_scale_factor);
        if (d->attentions) x = transformer(g, c, &d->attentions[j], x, ctx);
        push(skips, x);
    }
    if (d->downsamplers_0_conv_weight.ndim) {
        struct cg_tensor *w = W(g, &d->downsamplers_0_conv_weight), *b = W(g, &d->downsamplers_0_conv_bias);
        int p = c->downsample_padding;
        /* padding 0: diffusers pads right and bottom by one first */
        x = p ? cg_conv2d(g, x, w, b, 2, p, p, p, p) : cg_conv2d(g, x, w, b, 2, 0, 0, 1, 1); /* [B, C, H/2, W/2] */
        push(skips, x);
    }
    return x;
}

/* UNetMidBlock2DCrossAttn. */
static struct cg_tensor *mid_block(struct cg_graph *g, const struct unet_config *c,
                                   const struct unet_mid_block_weights *m, struct cg_tensor *x,
                                   struct cg_tensor *temb_act, struct cg_tensor *ctx) {
    x = resnet(g, c, &m->resnets[0], x, temb_act, c->mid_block_scale_factor);
    x = transformer(g, c, &m->attention, x, ctx);
    return resnet(g, c, &m->resnets[1], x, temb_act, c->mid_block_scale_factor);
}

/* CrossAttnUpBlock2D / UpBlock2D: cat([hidden, skip], dim=1) per layer. */
static df_status up_block(struct cg_graph *g, const struct unet_config *c, const struct unet_up_block_weights *u,
                          struct cg_tensor **xp, struct cg_tensor *temb_act, struct cg_tensor *ctx,
                          struct unet_down *skips) {
    struct cg_tensor *x = *xp;
    for (int j = 0; j < u->n_layers; j++) {
        struct cg_tensor *skip = skips->skips[--skips->n_skips];
        if (x && skip && (x->ne[2] != skip->ne[2] || x->ne[3] != skip->ne[3]))
            return df_error(DF_EUNSUPPORTED,
                            "UNet: latent size does not halve evenly at every level (up path %lldx%lld, skip "
                            "%lldx%lld); use a size divisible by %d",
                            (long long)x->ne[2], (long long)x->ne[3], (long long)skip->ne[2], (long long)skip->ne[3],
                            1 << (c->levels - 1));
        x = cg_concat(g, x, skip, 1); /* [B, C + Cskip, H, W] */
        x = resnet(g, c, &u->resnets[j], x, temb_act, c->resnet_out_scale_factor);
        if (u->attentions) x = transformer(g, c, &u->attentions[j], x, ctx);
    }
    if (u->upsamplers_0_conv_weight.ndim) {
        /* diffusers upsamples to the next skip's size, which is 2H, 2W
         * unless a level's size was odd (forward_upsample_size) */
        const struct cg_tensor *next = skips->n_skips ? skips->skips[skips->n_skips - 1] : NULL;
        if (x && next) x = cg_upsample_nearest(g, x, next->ne[2], next->ne[3]); /* [B, C, H', W'] */
        else x = cg_upsample2x(g, x); /* [B, C, 2H, 2W] */
        x = conv(g, x, &u->upsamplers_0_conv_weight, &u->upsamplers_0_conv_bias, 1, 1);
    }
    *xp = x;
    return DF_OK;
}

static bool same_shape(const struct cg_tensor *a, const int64_t *ne) {
    if (a->ndim != 4) return false;
    for (int i = 0; i < 4; i++)
        if (a->ne[i] != ne[i]) return false;
    return true;
}

static df_status check_added(const struct unet_config *c, int64_t b, const struct unet_added_cond *a) {
    if (c->addition_embed_type == UNET_ADD_NONE) {
        if (a) return df_error(DF_EINVAL, "UNet: added conditioning given to a UNet without addition_embed_type");
        return DF_OK;
    }
    if (!a || !a->text_embeds || !a->time_ids)
        return df_error(DF_EINVAL, "UNet: addition_embed_type \"text_time\" needs added conditioning "
                                   "(text_embeds and time_ids)");
    const struct cg_tensor *te = a->text_embeds, *ti = a->time_ids;
    if (te->ndim != 2 || te->ne[0] != b || ti->ndim != 2 || ti->ne[0] != b ||
        te->ne[1] + ti->ne[1] * c->addition_time_embed_dim != c->projection_class_embeddings_input_dim)
        return df_error(DF_EINVAL, "UNet: text_embeds [%lld, P] and time_ids [%lld, n] need P + n x %d = %d "
                                   "(projection_class_embeddings_input_dim)",
                        (long long)b, (long long)b, c->addition_time_embed_dim,
                        c->projection_class_embeddings_input_dim);
    return DF_OK;
}

static df_status check_inputs(const struct unet_model *m, struct cg_tensor *sample, struct cg_tensor *timestep,
                              struct cg_tensor *ctx, const struct unet_added_cond *added,
                              const struct unet_control *control) {
    const struct unet_config *c = &m->cfg;
    if (!sample || !timestep || !ctx) return df_error(DF_EINVAL, "UNet: NULL input");
    if (sample->ndim != 4 || sample->ne[1] != c->in_channels)
        return df_error(DF_EINVAL, "UNet: sample must be [B, %d, h, w]", c->in_channels);
    int64_t b = sample->ne[0];
    if (timestep->ndim != 1 || timestep->ne[0] != b)
        return df_error(DF_EINVAL, "UNet: timestep must be [%lld] (one per batch item)", (long long)b);
    if (ctx->ndim != 3 || ctx->ne[0] != b || ctx->ne[2] != c->cross_attention_dim)
        return df_error(DF_EINVAL, "UNet: encoder_hidden_states must be [%lld, T, %d]", (long long)b,
                        c->cross_attention_dim);
    TRY(check_added(c, b, added));
    if (!control) return DF_OK;
    int n = unet_skip_count(c);
    if (control->n_down && control->n_down != n)
        return df_error(DF_EINVAL, "UNet: %d ControlNet down residuals for %d skips", control->n_down, n);
    int64_t ne[4];
    for (int i = 0; i <= n; i++) {
        struct cg_tensor *r = i < n ? (control->n_down ? control->down[i] : NULL) : control->mid;
        if (!r) {
            if (i < n && control->n_down) return df_error(DF_EINVAL, "UNet: ControlNet residual %d is NULL", i);
            continue;
        }
        unet_skip_shape(c, i, b, sample->ne[2], sample->ne[3], ne);
        if (!same_shape(r, ne))
            return df_error(DF_EINVAL, "UNet: ControlNet %s residual %d must be [%lld, %lld, %lld, %lld]",
                            i < n ? "down" : "mid", i, (long long)ne[0], (long long)ne[1], (long long)ne[2],
                            (long long)ne[3]);
    }
    if (control->mid && !c->mid_block) return df_error(DF_EINVAL, "UNet: mid residual without a mid block");
    return DF_OK;
}

/* SDXL's aug embedding: add_embedding(cat([text_embeds, add_time_proj(time
 * ids) flattened per item])), the time ids' sinusoids back to back. */
static struct cg_tensor *add_embedding(struct cg_graph *g, const struct unet_model *m,
                                       const struct unet_added_cond *a, struct unet_outputs *out) {
    const struct unet_config *c = &m->cfg;
    int64_t b = a->time_ids->ne[0], n = a->time_ids->ne[1], dim = c->addition_time_embed_dim;
    struct cg_tensor *ids = cg_reshape(g, a->time_ids, 1, (int64_t[]){b * n}); /* [B n] */
    out->add_time_proj = cg_timestep_embed(g, ids, (int)dim, c->flip_sin_to_cos, c->freq_shift,
                                           10000.0f);                              /* [B n, dim] */
    struct cg_tensor *t = cg_reshape(g, out->add_time_proj, 2, (int64_t[]){b, n * dim}); /* [B, n dim] */
    struct cg_tensor *x = cg_concat(g, a->text_embeds, t, 1);                           /* [B, P + n dim] */
    x = linear(g, x, &m->add_embedding_linear_1_weight, &m->add_embedding_linear_1_bias); /* [B, temb] */
    x = linear(g, cg_silu(g, x), &m->add_embedding_linear_2_weight, &m->add_embedding_linear_2_bias);
    out->add_embedding = x;
    return x;
}

/* conv_in (+ conv_in_add), time embedding (+ added conditioning), down
 * blocks, mid block. */
static df_status down_path(struct cg_graph *g, const struct unet_model *m, struct cg_tensor *sample,
                           struct cg_tensor *timestep, struct cg_tensor *ctx, const struct unet_added_cond *added,
                           struct cg_tensor *conv_in_add, struct unet_down *d, struct unet_outputs *out,
                           struct cg_tensor **temb_act) {
    const struct unet_config *c = &m->cfg;
    int64_t ne[4] = {sample->ne[0], c->block_out_channels[0], sample->ne[2], sample->ne[3]};
    if (conv_in_add && !same_shape(conv_in_add, ne))
        return df_error(DF_EINVAL, "UNet: conv_in addend must be [%lld, %lld, %lld, %lld]", (long long)ne[0],
                        (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    if (c->center_input_sample) sample = cg_unary(g, CG_SCALE, sample, 2.0f, -1.0f);

    /* Timesteps + TimestepEmbedding */
    out->time_proj = cg_timestep_embed(g, timestep, c->block_out_channels[0], c->flip_sin_to_cos, c->freq_shift,
                                       10000.0f); /* [B, C0] */
    struct cg_tensor *emb = linear(g, out->time_proj, &m->time_embedding_linear_1_weight,
                                   &m->time_embedding_linear_1_bias); /* [B, 4 C0] */
    emb = linear(g, cg_silu(g, emb), &m->time_embedding_linear_2_weight, &m->time_embedding_linear_2_bias);
    out->time_embedding = emb;
    if (c->addition_embed_type == UNET_ADD_TEXT_TIME) emb = cg_add(g, emb, add_embedding(g, m, added, out));
    *temb_act = cg_silu(g, emb);

    int kin = c->conv_in_kernel / 2;
    struct cg_tensor *x = conv(g, sample, &m->conv_in_weight, &m->conv_in_bias, 1, kin); /* [B, C0, h, w] */
    if (conv_in_add) x = cg_add(g, x, conv_in_add);
    out->conv_in = x;
    push(d, x);
    for (int i = 0; i < c->levels; i++) {
        x = down_block(g, c, &m->down_blocks[i], x, *temb_act, ctx, d);
        out->down_blocks[i] = x;
    }
    if (c->mid_block) d->mid = mid_block(g, c, &m->mid_block, x, *temb_act, ctx);
    else d->mid = x;
    return cg_status(g);
}

df_status unet_forward_down(struct cg_graph *g, const struct unet_model *m, struct cg_tensor *sample,
                            struct cg_tensor *timestep, struct cg_tensor *encoder_hidden_states,
                            const struct unet_added_cond *added, struct cg_tensor *conv_in_add,
                            struct unet_down *down, struct unet_outputs *dbg) {
    struct unet_outputs scratch;
    if (!dbg) dbg = &scratch;
    memset(down, 0, sizeof *down);
    memset(dbg, 0, sizeof *dbg);
    TRY(cg_status(g));
    TRY(check_inputs(m, sample, timestep, encoder_hidden_states, added, NULL));
    struct cg_tensor *temb_act;
    TRY(down_path(g, m, sample, timestep, encoder_hidden_states, added, conv_in_add, down, dbg, &temb_act));
    if (!m->cfg.mid_block) down->mid = NULL;
    dbg->mid_block = down->mid;
    return DF_OK;
}

df_status unet_forward(struct cg_graph *g, const struct unet_model *m, struct cg_tensor *sample,
                       struct cg_tensor *timestep, struct cg_tensor *encoder_hidden_states,
                       const struct unet_added_cond *added, const struct unet_control *control,
                       struct unet_outputs *out) {
    const struct unet_config *c = &m->cfg;
    memset(out, 0, sizeof *out);
    TRY(cg_status(g));
    TRY(check_inputs(m, sample, timestep, encoder_hidden_states, added, control));
    if (!m->up_blocks[0].resnets) return df_error(DF_EINVAL, "UNet: model loaded without its up path");
    struct cg_tensor *ctx = encoder_hidden_states, *temb_act;
    struct unet_down d = {.n_skips = 0};
    TRY(down_path(g, m, sample, timestep, ctx, added, NULL, &d, out, &temb_act));
    /* ControlNet: residuals join the skips only, not the tensor the down
     * path hands to the mid block */
    if (control && control->n_down)
        for (int i = 0; i < d.n_skips; i++) d.skips[i] = cg_add(g, d.skips[i], control->down[i]);
    struct cg_tensor *x = d.mid;
    if (c->mid_block) {
        if (control && control->mid) x = cg_add(g, x, control->mid);
        out->mid_block = x;
    }
    for (int i = 0; i < c->levels; i++) {
        TRY(up_block(g, c, &m->up_blocks[i], &x, temb_act, ctx, &d));
        out->up_blocks[i] = x;
    }
    x = cg_groupnorm(g, x, W(g, &m->conv_norm_out_weight), W(g, &m->conv_norm_out_bias), c->norm_num_groups,
                     c->norm_eps, true);
    int kout = c->conv_out_kernel / 2;
    out->sample = conv(g, x, &m->conv_out_weight, &m->conv_out_bias, 1, kout); /* [B, out, h, w] */
    return cg_status(g);
}
