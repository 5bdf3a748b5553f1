/* vae: the diffusers AutoencoderKL (SD1.x, SD2.x, SDXL, SD3): Encoder,
 * Decoder, quant_conv / post_quant_conv. Weights are taken under diffusers
 * names; vae_ldm_renames maps the CompVis/LDM single-file layout to them. */
#ifndef DF_VAE_H
#define DF_VAE_H

#include <jansson.h>
#include <stdbool.h>

#include "compute/graph.h"
#include "weights.h"

#define VAE_MAX_BLOCKS 8

struct vae_config {
    int in_channels;              /* 3 */
    int out_channels;             /* 3 */
    int latent_channels;          /* 4 (SD1/SDXL), 16 (SD3) */
    int n_blocks;                 /* len(block_out_channels) */
    int block_out_channels[VAE_MAX_BLOCKS]; /* 128, 256, 512, 512 */
    int layers_per_block;         /* 2; the decoder's up blocks have one more */
    int norm_num_groups;          /* 32 */
    float scaling_factor;         /* 0.18215 (SD1), 0.13025 (SDXL), 1.5305 (SD3) */
    float shift_factor;           /* 0, or 0.0609 (SD3) */
    bool use_quant_conv;          /* false for SD3 */
    bool use_post_quant_conv;     /* false for SD3 */
    bool mid_block_add_attention; /* true for every released VAE */
    int sample_size;              /* image size it was trained at (diffusers' default tile); 0: unknown */
    bool force_upcast;            /* fp16 overflows: decode in fp32 (SD1, SDXL; not the fp16-fix VAEs) */
};

struct vae_resnet_weights { /* ResnetBlock2D without time embedding */
    int in_channels, out_channels;
    struct wt norm1_weight, norm1_bias, conv1_weight, conv1_bias;
    struct wt norm2_weight, norm2_bias, conv2_weight, conv2_bias;
    struct wt conv_shortcut_weight, conv_shortcut_bias; /* absent when in == out */
};

struct vae_attention_weights { /* Attention, one head, with GroupNorm */
    struct wt group_norm_weight, group_norm_bias;
    struct wt to_q_weight, to_q_bias, to_k_weight, to_k_bias, to_v_weight, to_v_bias;
    struct wt to_out_0_weight, to_out_0_bias;
};

struct vae_mid_block_weights { /* UNetMidBlock2D: resnet, attention, resnet */
    struct vae_resnet_weights resnets[2];
    struct vae_attention_weights attention; /* absent unless mid_block_add_attention */
};

struct vae_down_block_weights { /* DownEncoderBlock2D */
    int n_resnets;
    struct vae_resnet_weights *resnets;
    struct wt downsamplers_0_conv_weight, downsamplers_0_conv_bias; /* absent in the last block */
};

struct vae_up_block_weights { /* UpDecoderBlock2D */
    int n_resnets;
    struct vae_resnet_weights *resnets;
    struct wt upsamplers_0_conv_weight, upsamplers_0_conv_bias; /* absent in the last block */
};

struct vae_encoder_weights {
    struct wt conv_in_weight, conv_in_bias;
    struct vae_down_block_weights down_blocks[VAE_MAX_BLOCKS];
    struct vae_mid_block_weights mid_block;
    struct wt conv_norm_out_weight, conv_norm_out_bias, conv_out_weight, conv_out_bias;
};

struct vae_decoder_weights {
    struct wt conv_in_weight, conv_in_bias;
    struct vae_mid_block_weights mid_block;
    struct vae_up_block_weights up_blocks[VAE_MAX_BLOCKS];
    struct wt conv_norm_out_weight, conv_norm_out_bias, conv_out_weight, conv_out_bias;
};

struct vae_model {
    struct vae_config cfg;
    struct vae_encoder_weights encoder;
    struct vae_decoder_weights decoder;
    struct wt quant_conv_weight, quant_conv_bias;           /* if use_quant_conv */
    struct wt post_quant_conv_weight, post_quant_conv_bias; /* if use_post_quant_conv */
};

/* diffusers' AutoencoderKL config.json (vae/config.json). Reads every
 * key AutoencoderKL takes; absent or null keys take diffusers' defaults
 * (so block_out_channels [64], layers_per_block 1, norm_num_groups 32,
 * scaling_factor 0.18215, shift_factor 0, sample_size 32, quant convs and
 * mid attention on). Refuses, naming the key: a block type other than
 * DownEncoderBlock2D / UpDecoderBlock2D, act_fn other than "silu", non-null
 * latents_mean / latents_std (DF_EUNSUPPORTED); a wrongly typed or out-of-
 * range value, block type lists whose length differs from
 * block_out_channels, norm_num_groups not dividing every channel count
 * (DF_EINVAL). Keys diffusers does not know (_class_name, ...) are ignored.
 * Whether the config matches the weights is vae_load's to check. */
df_status vae_config_from_json(const json_t *j, struct vae_config *cfg);

/* Config from the weights' shapes (diffusers names; the encoder must be
 * there), for checkpoints that come without a config: block_out_channels
 * and layers_per_block from the encoder's resnets, latent channels from
 * decoder.conv_in, the quant convs and mid attention from their presence.
 * Shapes cannot tell the rest, set to the released VAEs' values:
 * norm_num_groups 32; scaling_factor 0.18215 for 4 latent channels (SD1.x;
 * SDXL's VAE has identical shapes but 0.13025, so the checkpoint loader must
 * set it from the model family), 1.5305 with shift 0.0609 for 16 (SD3). */
df_status vae_infer_config(const struct weights *w, struct vae_config *cfg);
/* The same from the LDM keys of a single-file checkpoint (`prefix` as for
 * vae_ldm_renames), whose rename table needs the config first. */
df_status vae_ldm_infer_config(const struct st_file *f, const char *prefix, struct vae_config *cfg);

/* Takes the weights under diffusers names ("encoder.*", "decoder.*",
 * "quant_conv.*", "post_quant_conv.*"). A config that contradicts the
 * weights fails (DF_EFORMAT) naming the tensor: one missing, one whose
 * shape differs (both shapes in the message), or one under those names
 * left over (too few layers_per_block or blocks, use_quant_conv false
 * for a file that has quant_conv, ...). Tensors under other names are
 * the caller's business. */
df_status vae_load(struct weights *w, const struct vae_config *cfg, struct vae_model *out);
void vae_free(struct vae_model *m);

/* Rename table from the LDM single-file layout (keys `prefix`encoder.down.0.
 * block.0..., usually prefix "first_stage_model.", or "" for a standalone
 * VAE file) to diffusers names, for wts_load. One allocation: the caller
 * frees *table with free(). */
df_status vae_ldm_renames(const struct vae_config *cfg, const char *prefix, struct wts_rename **table, int *n);

/* Spatial factor between latent and image: 2^(n_blocks-1) (8). */
int vae_scale(const struct vae_config *cfg);

/* latent [B, latent_channels, h, w], already divided by scaling_factor (and
 * shifted): post_quant_conv (if any), then the decoder
 * -> *image [B, out_channels, h*s, w*s], unclamped. */
df_status vae_decode(struct cg_graph *g, const struct vae_model *m, struct cg_tensor *latent,
                     struct cg_tensor **image);
/* image [B, in_channels, H, W] -> *moments [B, 2*latent_channels, H/s, W/s]
 * (sizes rounded as the strided convs do): the encoder then quant_conv. */
df_status vae_encode(struct cg_graph *g, const struct vae_model *m, struct cg_tensor *image,
                     struct cg_tensor **moments);

/* Activation arena bytes of one decode of a latent [1, latent_channels,
 * h, w] / one encode of an image [1, in_channels, h, w] (image px): plans
 * the graph, runs nothing. `vae` is a const struct vae_model *; the
 * signature is vae_tile_bytes_fn's, for vae_tiles_pick. */
df_status vae_decode_bytes(void *vae, int64_t h, int64_t w, uint64_t *bytes);
df_status vae_encode_bytes(void *vae, int64_t h, int64_t w, uint64_t *bytes);

/* Host side of DiagonalGaussianDistribution: moments [B, 2C, h, w] -> mean
 * [B, C, h, w] and logvar clamped to [-30, 20]. */
void vae_split_moments(const float *moments, int64_t b, int64_t c, int64_t h, int64_t w, float *mean_out,
                       float *logvar_out);

#endif
