/* clip: CLIP text transformer: pre-LN, causal self-attention, MLP. */
#include "clip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static df_status take(struct weights *w, struct wt *out, const char *fmt, int layer, int ndim, int64_t a, int64_t b) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    int64_t ne[2] = {a, b};
    return wts_take(w, name, ndim, ne, out);
}

static int cfg_int(const json_t *j, const char *key, int def) {
    const json_t *v = json_object_get(j, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

df_status clip_config_from_json(const json_t *j, struct clip_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = cfg_int(j, "vocab_size", 49408);
    c->hidden_size = cfg_int(j, "hidden_size", 768);
    c->intermediate_size = cfg_int(j, "intermediate_size", 3072);
    c->num_hidden_layers = cfg_int(j, "num_hidden_layers", 12);
    c->num_attention_heads = cfg_int(j, "num_attention_heads", 12);
    c->max_position_embeddings = cfg_int(j, "max_position_embeddings", 77);
    const json_t *eps = json_object_get(j, "layer_norm_eps");
    c->layer_norm_eps = json_is_number(eps) ? (float)json_number_value(eps) : 1e-5f;
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (!act || strcmp(act, "quick_gelu") == 0) c->hidden_act = CLIP_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) c->hidden_act = CLIP_GELU;
    else return df_error(DF_EUNSUPPORTED, "CLIP activation %s", act);
    c->projection_dim = cfg_int(j, "projection_dim", 0);
    return DF_OK;
}

/* OpenCLIP text-tower names, relative to the tower's prefix, and the
 * transformers names they become. */
static const struct {
    const char *from, *to;
} openclip_names[] = {
    {"token_embedding.", "text_model.embeddings.token_embedding."},
    {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
    {"ln_final.", "text_model.final_layer_norm."},
    /* [D, P], transposed by openclip_derive; a "text_projection.weight"
     * (a Linear's [P, D], as some converters write it) keeps name and layout */
    {"text_projection", "text_projection"},
    /* CLIP-training buffers, not weights of the text tower */
    {"logit_scale", "logit_scale"},
    {"attn_mask", "attn_mask"},
};
#define OPENCLIP_LAYERS "transformer.resblocks."

/* transformer.resblocks.N.* -> text_model.encoder.layers.N.* */
static const struct wts_rename openclip_layer_tail[] = {
    {"ln_1.", "layer_norm1.", NULL},
    {"ln_2.", "layer_norm2.", NULL},
    {"attn.in_proj_weight", "self_attn.in_proj.weight", NULL},
    {"attn.in_proj_bias", "self_attn.in_proj.bias", NULL},
    {"attn.out_proj.", "self_attn.out_proj.", NULL},
    {"mlp.c_fc.", "mlp.fc1.", NULL},
    {"mlp.c_proj.", "mlp.fc2.", NULL},
    {NULL, NULL, NULL},
};

/* nn.MultiheadAttention packs [q; k; v] along the output rows; OpenCLIP
 * multiplies by text_projection ([D, P]) where a Linear stores [P, D]. */
static const struct wts_derive openclip_derive[] = {
    {".self_attn.in_proj.weight", ".self_attn.q_proj.weight", WTS_ROWS, 0, 3},
    {".self_attn.in_proj.weight", ".self_attn.k_proj.weight", WTS_ROWS, 1, 3},
    {".self_attn.in_proj.weight", ".self_attn.v_proj.weight", WTS_ROWS, 2, 3},
    {".self_attn.in_proj.bias", ".self_attn.q_proj.bias", WTS_ROWS, 0, 3},
    {".self_attn.in_proj.bias", ".self_attn.k_proj.bias", WTS_ROWS, 1, 3},
    {".self_attn.in_proj.bias", ".self_attn.v_proj.bias", WTS_ROWS, 2, 3},
    {"text_projection", "text_projection.weight", WTS_TRANSPOSE, 0, 0},
};

#define N_OPENCLIP_NAMES ((int)(sizeof openclip_names / sizeof openclip_names[0]))
#define N_OPENCLIP_DERIVE ((int)(sizeof openclip_derive / sizeof openclip_derive[0]))
#define NAME_LEN 96 /* longest relative name above, with a layer number */

static bool has_prefixed(const struct st_file *f, const char *prefix, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    return st_find(f, key) != NULL;
}

df_status clip_detect_layout(const struct st_file *f, const char *prefix, enum clip_layout *out) {
    if (!prefix) prefix = "";
    if (has_prefixed(f, prefix, "token_embedding.weight")) *out = CLIP_LAYOUT_OPENCLIP;
    else if (has_prefixed(f, prefix, "text_model.embeddings.token_embedding.weight") ||
             has_prefixed(f, prefix, "embeddings.token_embedding.weight"))
        *out = CLIP_LAYOUT_TRANSFORMERS;
    else
        return df_error(DF_EFORMAT, "no CLIP text tower under \"%s\": neither \"%stoken_embedding.weight\" "
                        "(OpenCLIP) nor \"%stext_model.embeddings.token_embedding.weight\" (transformers)",
                        prefix, prefix, prefix);
    return DF_OK;
}

/* The OpenCLIP rename table for the tower under `prefix`: one allocation
 * (entries, then their strings) the caller frees. */
static df_status openclip_renames(const struct st_file *f, const char *prefix, struct wts_rename **table, int *n) {
    size_t plen = strlen(prefix), llen = strlen(OPENCLIP_LAYERS);
    int layers = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        if (strncmp(name, prefix, plen) != 0 || strncmp(name + plen, OPENCLIP_LAYERS, llen) != 0) continue;
        char *end;
        long k = strtol(name + plen + llen, &end, 10);
        if (end == name + plen + llen || *end != '.' || k < 0 || k >= CLIP_MAX_LAYERS)
            return df_error(DF_EFORMAT, "tensor \"%s\": layer number not in 0..%d", name, CLIP_MAX_LAYERS - 1);
        if (k + 1 > layers) layers = (int)k + 1;
    }
    int cap = N_OPENCLIP_NAMES + layers;
    size_t bytes = (size_t)cap * (sizeof **table + plen + 2 * NAME_LEN);
    struct wts_rename *t = malloc(bytes);
    if (!t) return df_error(DF_ENOMEM, "out of memory");
    char *s = (char *)(t + cap), *end = (char *)t + bytes;
    for (int i = 0; i < cap; i++) {
        char from[NAME_LEN], to[NAME_LEN];
        if (i < N_OPENCLIP_NAMES) {
            snprintf(from, sizeof from, "%s", openclip_names[i].from);
            snprintf(to, sizeof to, "%s", openclip_names[i].to);
        } else {
            snprintf(from, sizeof from, OPENCLIP_LAYERS "%d.", i - N_OPENCLIP_NAMES);
            snprintf(to, sizeof to, "text_model.encoder.layers.%d.", i - N_OPENCLIP_NAMES);
        }
        t[i].from = s;
        s += snprintf(s, (size_t)(end - s), "%s%s", prefix, from) + 1;
        t[i].to = s;
        s += snprintf(s, (size_t)(end - s), "%s", to) + 1;
        t[i].tail = i < N_OPENCLIP_NAMES ? NULL : openclip_layer_tail;
    }
    *table = t;
    *n = cap;
    return DF_OK;
}

static df_status load_transformers(struct weights *w, const struct st_file *f, const char *prefix) {
    char from[2][512];
    snprintf(from[0], sizeof from[0], "%stext_model.", prefix);
    snprintf(from[1], sizeof from[1], "%stext_projection.", prefix);
    const struct wts_rename r[] = {
        {from[0], "text_model.", NULL},
        {from[1], "text_projection.", NULL},
        {prefix, "text_model.", NULL}, /* early SD1.x files lack the text_model level */
    };
    bool level = false;
    for (size_t i = 0; i < st_count(f) && !level; i++)
        level = strncmp(st_at(f, i)->name, from[0], strlen(from[0])) == 0;
    if (!level) return wts_load(w, f, prefix, r, 3);
    df_status st = wts_load(w, f, from[0], r, 2);
    return st != DF_OK ? st : wts_load(w, f, from[1], r, 2);
}

df_status clip_load_weights(struct weights *w, const struct st_file *f, const char *prefix, enum clip_layout layout) {
    if (!prefix) prefix = "";
    if (layout == CLIP_LAYOUT_TRANSFORMERS) return load_transformers(w, f, prefix);
    struct wts_rename *r = NULL;
    int n = 0;
    df_status st = openclip_renames(f, prefix, &r, &n);
    if (st != DF_OK) return st;
    st = wts_load_derived(w, f, prefix, r, n, openclip_derive, N_OPENCLIP_DERIVE);
    free(r);
    wts_ignore(w, "logit_scale");
    wts_ignore(w, "attn_mask");
    return st;
}

df_status clip_config_from_weights(const struct weights *w, enum clip_layout layout, int heads,
                                   struct clip_config *cfg) {
    int nd;
    int64_t ne[CG_MAX_DIMS];
    memset(cfg, 0, sizeof *cfg);
    if (!wts_has(w, "text_model.embeddings.token_embedding.weight", &nd, ne) || nd != 2)
        return df_error(DF_EFORMAT, "missing tensor \"text_model.embeddings.token_embedding.weight\"");
    cfg->vocab_size = (int)ne[0];
    cfg->hidden_size = (int)ne[1];
    if (!wts_has(w, "text_model.embeddings.position_embedding.weight", &nd, ne) || nd != 2)
        return df_error(DF_EFORMAT, "missing tensor \"text_model.embeddings.position_embedding.weight\"");
    cfg->max_position_embeddings = (int)ne[0];
    if (!wts_has(w, "text_model.encoder.layers.0.mlp.fc1.weight", &nd, ne) || nd != 2)
        return df_error(DF_EFORMAT, "missing tensor \"text_model.encoder.layers.0.mlp.fc1.weight\"");
    cfg->intermediate_size = (int)ne[0];
    char name[128];
    for (;; cfg->num_hidden_layers++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1.weight", cfg->num_hidden_layers);
        if (!wts_has(w, name, NULL, NULL)) break;
    }
    cfg->num_attention_heads = heads > 0 ? heads : cfg->hidden_size >= 64 ? cfg->hidden_size / 64 : 1;
    if (layout == CLIP_LAYOUT_OPENCLIP) cfg->hidden_act = CLIP_GELU;
    else cfg->hidden_act = cfg->hidden_size == 1280 ? CLIP_GELU : CLIP_QUICK_GELU;
    cfg->layer_norm_eps = 1e-5f;
    if (wts_has(w, "text_projection.weight", &nd, ne) && nd == 2) {
        cfg->has_projection = true;
        cfg->projection_dim = (int)ne[0];
    }
    return DF_OK;
}

df_status clip_infer_config(const struct weights *w, struct clip_config *cfg) {
    return clip_config_from_weights(w, CLIP_LAYOUT_TRANSFORMERS, 0, cfg);
}

#define TRY(x) do { df_status st_ = (x); if (st_ != DF_OK) return st_; } while (0)

static df_status load_layer(struct weights *w, const struct clip_config *c, int i, struct clip_layer_weights *l) {
    int64_t d = c->hidden_size, f = c->intermediate_size;
    const char *p = "text_model.encoder.layers.%d.";
    char fmt[160];
#define T(field, suffix, nd, a, b) \
    (snprintf(fmt, sizeof fmt, "%s%s", p, suffix), take(w, &l->field, fmt, i, nd, a, b))
    TRY(T(layer_norm1_weight, "layer_norm1.weight", 1, d, 0));
    TRY(T(layer_norm1_bias, "layer_norm1.bias", 1, d, 0));
    TRY(T(self_attn.q_proj_weight, "self_attn.q_proj.weight", 2, d, d));
    TRY(T(self_attn.q_proj_bias, "self_attn.q_proj.bias", 1, d, 0));
    TRY(T(self_attn.k_proj_weight, "self_attn.k_proj.weight", 2, d, d));
    TRY(T(self_attn.k_proj_bias, "self_attn.k_proj.bias", 1, d, 0));
    TRY(T(self_attn.v_proj_weight, "self_attn.v_proj.weight", 2, d, d));
    TRY(T(self_attn.v_proj_bias, "self_attn.v_proj.bias", 1, d, 0));
    TRY(T(self_attn.out_proj_weight, "self_attn.out_proj.weight", 2, d, d));
    TRY(T(self_attn.out_proj_bias, "self_attn.out_proj.bias", 1, d, 0));
    TRY(T(layer_norm2_weight, "layer_norm2.weight", 1, d, 0));
    TRY(T(layer_norm2_bias, "layer_norm2.bias", 1, d, 0));
    TRY(T(mlp.fc1_weight, "mlp.fc1.weight", 2, f, d));
    TRY(T(mlp.fc1_bias, "mlp.fc1.bias", 1, f, 0));
    TRY(T(mlp.fc2_weight, "mlp.fc2.weight", 2, d, f));
    TRY(T(mlp.fc2_bias, "mlp.fc2.bias", 1, d, 0));
#undef T
    return DF_OK;
}

df_status clip_load(struct weights *w, const struct clip_config *cfg, struct clip_model *out) {
    memset(out, 0, sizeof *out);
    out->cfg = *cfg;
    if (cfg->hidden_size <= 0 || cfg->num_attention_heads <= 0 || cfg->hidden_size % cfg->num_attention_heads ||
        cfg->num_hidden_layers <= 0 || cfg->num_hidden_layers > CLIP_MAX_LAYERS)
        return df_error(DF_EINVAL, "CLIP config: hidden %d, heads %d, layers %d", cfg->hidden_size,
                        cfg->num_attention_heads, cfg->num_hidden_layers);
    int64_t d = cfg->hidden_size;
    TRY(take(w, &out->token_embedding, "text_model.embeddings.token_embedding.weight", 0, 2, cfg->vocab_size, d));
    TRY(take(w, &out->position_embedding, "text_model.embeddings.position_embedding.weight", 0, 2,
             cfg->max_position_embeddings, d));
    /* positions are 0..T-1 by construction; the checkpoint's copy is unused */
    wts_ignore(w, "text_model.embeddings.position_ids");
    out->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *out->layers);
    if (!out->layers) return df_error(DF_ENOMEM, "out of memory");
    for (int i = 0; i < cfg->num_hidden_layers; i++) TRY(load_layer(w, cfg, i, &out->layers[i]));
    TRY(take(w, &out->final_layer_norm_weight, "text_model.final_layer_norm.weight", 0, 1, d, 0));
    TRY(take(w, &out->final_layer_norm_bias, "text_model.final_layer_norm.bias", 0, 1, d, 0));
    if (cfg->has_projection) TRY(take(w, &out->text_projection, "text_projection.weight", 0, 2, cfg->projection_dim, d));
    return DF_OK;
}

void clip_free(struct clip_model *m) {
    free(m->layers);
    m->layers = NULL;
}

static struct cg_tensor *linear(struct cg_graph *g, struct cg_tensor *x, const struct wt *w, const struct wt *b) {
    return cg_linear(g, x, wt_tensor(g, w), wt_tensor(g, b));
}

/* CLIPAttention: causal self-attention, q scaled by head_dim^-0.5. */
static struct cg_tensor *attention(struct cg_graph *g, const struct clip_config *c,
                                   const struct clip_attention_weights *w, struct cg_tensor *x) {
    struct cg_tensor *q = linear(g, x, &w->q_proj_weight, &w->q_proj_bias); /* [B, T, D] */
    struct cg_tensor *k = linear(g, x, &w->k_proj_weight, &w->k_proj_bias);
    struct cg_tensor *v = linear(g, x, &w->v_proj_weight, &w->v_proj_bias);
    float scale = 1.0f / sqrtf((float)(c->hidden_size / c->num_attention_heads));
    struct cg_tensor *a = cg_attention(g, q, k, v, c->num_attention_heads, scale, true); /* [B, T, D] */
    return linear(g, a, &w->out_proj_weight, &w->out_proj_bias);
}

/* CLIPMLP: fc1 -> activation -> fc2. */
static struct cg_tensor *mlp(struct cg_graph *g, const struct clip_config *c, const struct clip_mlp_weights *w,
                             struct cg_tensor *x) {
    struct cg_tensor *h = linear(g, x, &w->fc1_weight, &w->fc1_bias); /* [B, T, F] */
    h = cg_unary(g, c->hidden_act == CLIP_GELU ? CG_GELU_ERF : CG_QUICK_GELU, h, 1, 0);
    return linear(g, h, &w->fc2_weight, &w->fc2_bias); /* [B, T, D] */
}

/* CLIPEncoderLayer: pre-LN residual blocks. */
static struct cg_tensor *encoder_layer(struct cg_graph *g, const struct clip_config *c,
                                       const struct clip_layer_weights *l, struct cg_tensor *x) {
    struct cg_tensor *h = cg_layernorm(g, x, wt_tensor(g, &l->layer_norm1_weight), wt_tensor(g, &l->layer_norm1_bias),
                                       c->layer_norm_eps);
    x = cg_add(g, x, attention(g, c, &l->self_attn, h));
    h = cg_layernorm(g, x, wt_tensor(g, &l->layer_norm2_weight), wt_tensor(g, &l->layer_norm2_bias), c->layer_norm_eps);
    return cg_add(g, x, mlp(g, c, &l->mlp, h));
}

struct cg_tensor *clip_final_norm(struct cg_graph *g, const struct clip_model *m, struct cg_tensor *x) {
    return cg_layernorm(g, x, wt_tensor(g, &m->final_layer_norm_weight), wt_tensor(g, &m->final_layer_norm_bias),
                        m->cfg.layer_norm_eps);
}

df_status clip_forward(struct cg_graph *g, const struct clip_model *m, struct cg_tensor *input_ids,
                       struct cg_tensor *eos_rows, struct clip_outputs *out) {
    const struct clip_config *c = &m->cfg;
    memset(out, 0, sizeof *out);
    if (!input_ids || input_ids->ndim != 2 || input_ids->ne[1] > c->max_position_embeddings)
        return df_error(DF_EINVAL, "CLIP input ids must be [B, T<=%d]", c->max_position_embeddings);
    int64_t b = input_ids->ne[0], t = input_ids->ne[1], d = c->hidden_size;
    struct cg_tensor *x = cg_embed(g, wt_tensor(g, &m->token_embedding), input_ids); /* [B, T, D] */
    struct cg_tensor *pos = cg_slice0(g, wt_tensor(g, &m->position_embedding), 0, t); /* [T, D] */
    x = cg_add(g, x, pos);
    out->hidden_states[0] = x;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (i == c->num_hidden_layers - 1) out->penultimate = x;
        x = encoder_layer(g, c, &m->layers[i], x);
        out->hidden_states[i + 1] = x;
    }
    if (c->num_hidden_layers == 1) out->penultimate = NULL;
    out->last_hidden_state = clip_final_norm(g, m, x);
    if (eos_rows) {
        struct cg_tensor *flat = cg_reshape(g, out->last_hidden_state, 2, (int64_t[]){b * t, d});
        out->pooled = cg_embed(g, flat, eos_rows); /* [B, D] */
        if (c->has_projection)
            out->text_embeds = cg_linear(g, out->pooled, wt_tensor(g, &m->text_projection), NULL); /* [B, P] */
    }
    return cg_status(g);
}
