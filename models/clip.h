/* clip: the CLIP text transformer (transformers CLIPTextModel /
 * CLIPTextModelWithProjection), as SD1.x, SDXL and SD3 use it. */
#ifndef DF_CLIP_H
#define DF_CLIP_H

#include <jansson.h>

#include "compute/graph.h"
#include "weights.h"

#define CLIP_MAX_LAYERS 64

enum clip_act { CLIP_QUICK_GELU, CLIP_GELU };

struct clip_config {
    int vocab_size;          /* 49408 */
    int hidden_size;         /* 768 (L), 1280 (G) */
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int max_position_embeddings; /* 77 */
    enum clip_act hidden_act;
    float layer_norm_eps;
    bool has_projection;     /* text_projection (CLIPTextModelWithProjection) */
    int projection_dim;
};

struct clip_attention_weights { /* CLIPAttention */
    struct wt q_proj_weight, q_proj_bias, k_proj_weight, k_proj_bias;
    struct wt v_proj_weight, v_proj_bias, out_proj_weight, out_proj_bias;
};

struct clip_mlp_weights { /* CLIPMLP */
    struct wt fc1_weight, fc1_bias, fc2_weight, fc2_bias;
};

struct clip_layer_weights { /* CLIPEncoderLayer */
    struct wt layer_norm1_weight, layer_norm1_bias;
    struct clip_attention_weights self_attn;
    struct wt layer_norm2_weight, layer_norm2_bias;
    struct clip_mlp_weights mlp;
};

struct clip_model {
    struct clip_config cfg;
    struct wt token_embedding, position_embedding;
    struct clip_layer_weights *layers;
    struct wt final_layer_norm_weight, final_layer_norm_bias;
    struct wt text_projection;
};

/* How a checkpoint stores a CLIP text tower under its key prefix. */
enum clip_layout {
    /* transformers' names: text_model.*, text_projection.weight (SD1.x,
     * SDXL's CLIP-L "conditioner.embedders.0.transformer.", diffusers) */
    CLIP_LAYOUT_TRANSFORMERS,
    /* OpenCLIP's: token_embedding, positional_embedding,
     * transformer.resblocks.N.{ln_1, attn.in_proj_* (packed q, k, v),
     * attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final, text_projection
     * ([D, P], the transpose of a Linear weight) (SD2.x
     * "cond_stage_model.model.", SDXL's bigG "conditioner.embedders.1.model.") */
    CLIP_LAYOUT_OPENCLIP,
};

/* Which layout the tower under `prefix` of f has (by its token embedding);
 * DF_EFORMAT naming the keys looked for when neither. */
df_status clip_detect_layout(const struct st_file *f, const char *prefix, enum clip_layout *out);
/* Uploads the tower under `prefix` of f ("" for a bare text-encoder file)
 * into w under transformers' names, what clip_load takes: OpenCLIP's packed
 * q/k/v are split and text_projection transposed once, here; its
 * logit_scale / attn_mask buffers are loaded as ignored. Transformers
 * layout without the "text_model." level (early SD1.x files) is accepted. */
df_status clip_load_weights(struct weights *w, const struct st_file *f, const char *prefix, enum clip_layout layout);
/* Config from the weights' shapes (as clip_load_weights names them), for
 * checkpoints that come without a config: vocab, width, layers, MLP width,
 * positions, projection. Heads: `heads` when the caller knows it (> 0),
 * else width/64, the head width of every released CLIP. Activation: erf
 * GELU for OpenCLIP towers; for transformers names, erf GELU only at width
 * 1280 (bigG, the one released transformers-named CLIP with it). */
df_status clip_config_from_weights(const struct weights *w, enum clip_layout layout, int heads,
                                   struct clip_config *cfg);
/* clip_config_from_weights(w, CLIP_LAYOUT_TRANSFORMERS, 0, cfg) */
df_status clip_infer_config(const struct weights *w, struct clip_config *cfg);
/* Config from a transformers CLIPTextConfig dict (text_encoder/config.json);
 * missing keys take CLIP ViT-L/14's values. */
df_status clip_config_from_json(const json_t *j, struct clip_config *cfg);
/* Takes the weights named as transformers does ("text_model.*",
 * "text_projection.weight"). */
df_status clip_load(struct weights *w, const struct clip_config *cfg, struct clip_model *out);
void clip_free(struct clip_model *m);

struct clip_outputs {
    struct cg_tensor *last_hidden_state; /* final_layer_norm(last layer) [B, T, D] */
    struct cg_tensor *penultimate;       /* output of layer N-1, no norm [B, T, D] */
    struct cg_tensor *pooled;            /* last_hidden_state at eos_rows [B, D] */
    struct cg_tensor *text_embeds;       /* text_projection(pooled) [B, P], or NULL */
    /* hidden_states[k]: output of layer k (0 = embeddings), no final norm;
     * A1111's "clip skip" n uses final_layer_norm(hidden_states[N+1-n]) */
    struct cg_tensor *hidden_states[CLIP_MAX_LAYERS + 1];
};

/* input_ids [B, T] (ids as floats); eos_rows [B] = b*T + position of the
 * first end-of-text token (argmax of the ids), computed by the caller. */
df_status clip_forward(struct cg_graph *g, const struct clip_model *m, struct cg_tensor *input_ids,
                       struct cg_tensor *eos_rows, struct clip_outputs *out);
/* final_layer_norm(x): SD1.x "clip skip" applies it to the penultimate. */
struct cg_tensor *clip_final_norm(struct cg_graph *g, const struct clip_model *m, struct cg_tensor *x);

#endif
