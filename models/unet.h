/* unet: the diffusers UNet2DConditionModel as SD1.x, SD2.x and SDXL use
 * it, for any level count, channel list, head count, group count and
 * transformer depth the config gives, with SDXL's added conditioning
 * (addition_embed_type "text_time"). Weights are taken under diffusers
 * names; unet_ldm_renames maps the CompVis/LDM and SDXL (sgm) single-file
 * layout to them. Configs come from config.json or from tensor shapes
 * (unet_config.h). */
#ifndef DF_UNET_H
#define DF_UNET_H

#include <stdbool.h>

#include "compute/graph.h"
#include "safetensors.h"
#include "weights.h"

#define UNET_MAX_LEVELS 8
#define UNET_MAX_LAYERS 16 /* resnets per down level */
#define UNET_MAX_DEPTH 64  /* transformer blocks per attention */
#define UNET_MAX_SKIPS (1 + UNET_MAX_LEVELS * (UNET_MAX_LAYERS + 1))

enum unet_block_type {
    UNET_PLAIN,      /* DownBlock2D / UpBlock2D: resnets only */
    UNET_CROSS_ATTN, /* CrossAttnDownBlock2D / CrossAttnUpBlock2D */
};

enum unet_addition { UNET_ADD_NONE, UNET_ADD_TEXT_TIME /* SDXL */ };

/* Per-level lists are indexed by down level (0 = full resolution) unless
 * named up_*, which are indexed in up-path order (0 = lowest resolution). */
struct unet_config {
    int in_channels, out_channels;              /* 4, 4 */
    int levels;                                 /* len(block_out_channels) */
    int block_out_channels[UNET_MAX_LEVELS];    /* 320, 640, 1280, 1280 */
    enum unet_block_type down_block_types[UNET_MAX_LEVELS];
    enum unet_block_type up_block_types[UNET_MAX_LEVELS];
    bool mid_block;                             /* UNetMidBlock2DCrossAttn (false: none) */
    int layers_per_block[UNET_MAX_LEVELS];      /* resnets per down level (2); up levels have one more */
    /* Heads per level. diffusers reads the config key "attention_head_dim"
     * as the NUMBER of heads (num_attention_heads or attention_head_dim);
     * head_dim = channels / heads. The mid block uses the last level's. */
    int num_attention_heads[UNET_MAX_LEVELS];
    int transformer_layers_per_block[UNET_MAX_LEVELS]; /* 1; the mid block uses the last */
    int up_transformer_layers_per_block[UNET_MAX_LEVELS]; /* 0: the down list reversed */
    int cross_attention_dim;                    /* 768 (SD1), 1024 (SD2) */
    int norm_num_groups;                        /* 32 */
    float norm_eps;                             /* 1e-5 (resnets, conv_norm_out) */
    bool use_linear_projection;                 /* SD2: proj_in/out are Linear */
    bool flip_sin_to_cos;                       /* true */
    float freq_shift;                           /* 0 */
    int time_embedding_dim;                     /* 0: 4 * block_out_channels[0] */
    int downsample_padding;                     /* 1 (0: pad right/bottom by one) */
    int conv_in_kernel, conv_out_kernel;        /* 3 */
    float resnet_out_scale_factor;              /* 1: down/up block resnets divide by it */
    float mid_block_scale_factor;               /* 1: mid block resnets divide by it */
    bool center_input_sample;                   /* false: sample -> 2*sample - 1 */
    enum unet_addition addition_embed_type;     /* SDXL micro-conditioning */
    int addition_time_embed_dim;                /* SDXL: 256 (sinusoid width per time id) */
    int projection_class_embeddings_input_dim;  /* SDXL: 2816 = pooled 1280 + 6 time ids x 256 */
};

/* diffusers' defaults (levels = 0; per-level lists: 2 layers, 8 heads,
 * depth 1; time_embedding_dim and up_transformer_layers_per_block 0,
 * meaning 4 * block_out_channels[0] and the down list reversed). */
void unet_config_defaults(struct unet_config *cfg);

struct unet_resnet_weights { /* ResnetBlock2D */
    int in_channels, out_channels;
    struct wt norm1_weight, norm1_bias, conv1_weight, conv1_bias;
    struct wt time_emb_proj_weight, time_emb_proj_bias;
    struct wt norm2_weight, norm2_bias, conv2_weight, conv2_bias;
    struct wt conv_shortcut_weight, conv_shortcut_bias; /* absent when in == out */
};

struct unet_attention_weights { /* Attention (no q/k/v bias) */
    struct wt to_q_weight, to_k_weight, to_v_weight;
    struct wt to_out_0_weight, to_out_0_bias;
};

struct unet_transformer_block_weights { /* BasicTransformerBlock */
    struct wt norm1_weight, norm1_bias;
    struct unet_attention_weights attn1; /* self */
    struct wt norm2_weight, norm2_bias;
    struct unet_attention_weights attn2; /* cross */
    struct wt norm3_weight, norm3_bias;
    struct wt ff_net_0_proj_weight, ff_net_0_proj_bias, ff_net_2_weight, ff_net_2_bias; /* GEGLU FeedForward */
};

struct unet_transformer_weights { /* Transformer2DModel */
    int channels, heads, n_blocks;
    struct wt norm_weight, norm_bias;
    struct wt proj_in_weight, proj_in_bias;   /* [C, C, 1, 1] conv, or [C, C] linear */
    struct unet_transformer_block_weights *transformer_blocks;
    struct wt proj_out_weight, proj_out_bias;
};

struct unet_down_block_weights { /* CrossAttnDownBlock2D / DownBlock2D */
    int n_layers;
    struct unet_resnet_weights *resnets;
    struct unet_transformer_weights *attentions; /* NULL for DownBlock2D */
    struct wt downsamplers_0_conv_weight, downsamplers_0_conv_bias; /* absent in the last level */
};

struct unet_mid_block_weights { /* UNetMidBlock2DCrossAttn: resnet, attention, resnet */
    struct unet_resnet_weights resnets[2];
    struct unet_transformer_weights attention;
};

struct unet_up_block_weights { /* CrossAttnUpBlock2D / UpBlock2D */
    int n_layers;
    struct unet_resnet_weights *resnets;
    struct unet_transformer_weights *attentions; /* NULL for UpBlock2D */
    struct wt upsamplers_0_conv_weight, upsamplers_0_conv_bias; /* absent in the last level */
};

struct unet_model {
    struct unet_config cfg;
    struct wt conv_in_weight, conv_in_bias;
    struct wt time_embedding_linear_1_weight, time_embedding_linear_1_bias;
    struct wt time_embedding_linear_2_weight, time_embedding_linear_2_bias;
    struct wt add_embedding_linear_1_weight, add_embedding_linear_1_bias; /* text_time only */
    struct wt add_embedding_linear_2_weight, add_embedding_linear_2_bias;
    struct unet_down_block_weights down_blocks[UNET_MAX_LEVELS];
    struct unet_mid_block_weights mid_block;
    struct unet_up_block_weights up_blocks[UNET_MAX_LEVELS];
    struct wt conv_norm_out_weight, conv_norm_out_bias, conv_out_weight, conv_out_bias;
};

/* Checks the config (DF_EINVAL for inconsistent values, DF_EUNSUPPORTED for
 * features not implemented) and takes every weight under diffusers names;
 * a missing or mis-shaped tensor is an error naming it. */
df_status unet_load(struct weights *w, const struct unet_config *cfg, struct unet_model *out);
void unet_free(struct unet_model *m);

/* ControlNetModel's copy of the UNet: conv_in, time_embedding, down_blocks
 * and mid_block only, under the same names (the up path stays absent). */
df_status unet_load_down(struct weights *w, const struct unet_config *cfg, struct unet_model *out);

/* Rename table from the LDM single-file layout (keys `prefix`input_blocks.*,
 * prefix usually "model.diffusion_model.") to diffusers names, generated
 * from the config as diffusers' convert_ldm_unet_checkpoint indexes blocks.
 * One allocation: the caller frees *table with free(). */
df_status unet_ldm_renames(const struct unet_config *cfg, const char *prefix, struct wts_rename **table, int *n);

/* The skip tensors the down path keeps (conv_in output, each resnet or
 * attention output, each downsampler output): ControlNet's down residuals
 * come in this order, one per skip. */
int unet_skip_count(const struct unet_config *cfg);
/* Shape [B, C, h, w] of skip i for a latent of h x w; i == unet_skip_count
 * gives the mid block output's (ControlNet's mid residual). */
void unet_skip_shape(const struct unet_config *cfg, int i, int64_t batch, int64_t h, int64_t w, int64_t ne[4]);

/* ControlNet residuals, added as diffusers does with
 * down_block_additional_residuals / mid_block_additional_residual: each
 * down residual to its skip (not to the tensor the down path carries on),
 * the mid residual to the mid block output. */
struct unet_control {
    struct cg_tensor **down; /* unet_skip_count tensors, shapes per unet_skip_shape */
    int n_down;
    struct cg_tensor *mid;   /* or NULL */
};

/* SDXL's added conditioning (diffusers' added_cond_kwargs), for configs
 * with addition_embed_type "text_time"; P + n * addition_time_embed_dim
 * must equal projection_class_embeddings_input_dim (SDXL: n = 6 time ids
 * [orig_h, orig_w, crop_top, crop_left, target_h, target_w]). */
struct unet_added_cond {
    struct cg_tensor *text_embeds; /* [B, P] pooled text embedding */
    struct cg_tensor *time_ids;    /* [B, n] */
};

struct unet_outputs {
    struct cg_tensor *sample; /* [B, out_channels, h, w] */
    /* Intermediates as the fixtures' dbg.* forward hooks see them, for
     * debugging (mark with cg_output before planning to read them). */
    struct cg_tensor *time_proj, *time_embedding, *conv_in, *mid_block;
    struct cg_tensor *add_time_proj, *add_embedding; /* text_time: [B n, dim], [B, temb] */
    struct cg_tensor *down_blocks[UNET_MAX_LEVELS], *up_blocks[UNET_MAX_LEVELS];
};

/* The down half, as ControlNetModel runs it: conv_in (plus `conv_in_add`,
 * ControlNet's conditioning embedding [B, C0, h, w], unless NULL), time
 * embedding (with `added` as unet_forward), down blocks, mid block. */
struct unet_down {
    struct cg_tensor *skips[UNET_MAX_SKIPS]; /* in push order, per unet_skip_shape */
    int n_skips;
    struct cg_tensor *mid; /* mid block output, NULL without a mid block */
};
df_status unet_forward_down(struct cg_graph *g, const struct unet_model *m, struct cg_tensor *sample,
                            struct cg_tensor *timestep, struct cg_tensor *encoder_hidden_states,
                            const struct unet_added_cond *added, struct cg_tensor *conv_in_add,
                            struct unet_down *down, struct unet_outputs *dbg);

/* sample [B, in_channels, h, w]; timestep [B] (float, one per batch item,
 * may be fractional); encoder_hidden_states [B, T, cross_attention_dim];
 * added: NULL unless the config has addition_embed_type (then required);
 * control NULL or the residuals. A latent size that does not halve evenly
 * is upsampled back to the skips' sizes, as diffusers does. */
df_status unet_forward(struct cg_graph *g, const struct unet_model *m, struct cg_tensor *sample,
                       struct cg_tensor *timestep, struct cg_tensor *encoder_hidden_states,
                       const struct unet_added_cond *added, const struct unet_control *control,
                       struct unet_outputs *out);

#endif
