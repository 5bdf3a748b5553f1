/* family_unet: what the UNet families (SD1.x, SD2.x, SDXL) share — loading
 * a UNet or a CLIP text encoder from any layout, CLIP tokenization with a
 * family's pad token, and recording a UNet denoiser pass. Used by the
 * family_*.c files only. */
#ifndef DF_FAMILY_UNET_H
#define DF_FAMILY_UNET_H

#include "model.h"

#define FU_CONTEXT 77 /* CLIP's max_position_embeddings in every SD model */

/* The UNet of `s`: original single-file (LDM/sgm) keys under
 * "model.diffusion_model." or diffusers names; config.json when the source
 * has one, else from shapes. `pooled_dim` tells an SDXL-style UNet without
 * a config the width of the pooled text embedding (0 = unknown). */
df_status fu_load_unet(struct model *m, struct device *dev, const struct comp_source *s, int pooled_dim);

/* Text encoder k from `s`: transformers or OpenCLIP names, under
 * `single_prefix` in a single file (NULL: none, or the source's own), with
 * the text projection when `projection`; the last `drop_layers` layers are
 * left out (SD2 single files: diffusers' conversion drops the last). */
df_status fu_load_clip(struct model *m, struct device *dev, int k, const struct comp_source *s,
                       const char *single_prefix, bool projection, int drop_layers);

/* The embedded CLIP BPE tokenizer, shared by every encoder (before
 * fu_pad_id). */
df_status fu_tokenizer(struct model *m);

/* Pad id for encoder k: the tokenizer files of a diffusers folder say it
 * (`tokenizer`, `tokenizer_2`), else `fallback`. */
df_status fu_pad_id(const struct model *m, const struct model_sources *src, int k, int32_t fallback, int32_t *out);

/* CLIP tokenization for encoder k (77 ids, BOS/EOS, the family's pad). */
df_status fu_tokenize(const struct model *m, int k, const char *text, int32_t *ids, int *eos_pos);

/* A1111's clip skip n on encoder k: final_layer_norm of the output n-1
 * layers from the end (n <= 1: last_hidden_state). */
struct cg_tensor *fu_clip_skip(struct cg_graph *g, const struct model *m, int k, const struct clip_outputs *o,
                               int clip_skip);

/* The UNet on a graph: inputs per the pass's non-NULL conditioning. */
df_status fu_record_unet(struct cg_graph *g, const struct model *m, int batch, int h, int w, bool added,
                         struct fam_denoise_pass *io);

/* SD1.x and SD2.x: one encoder's hidden states (clip skip applied) as the
 * context, a UNet without added conditioning. */
void fu_cond_single(const struct model *m, struct fam_cond *out);
/* The encoder's width is the UNet's cross_attention_dim (after loading). */
df_status fu_check_context(const struct model *m);
df_status fu_record_text_single(struct cg_graph *g, const struct model *m, int batch, int clip_skip,
                                struct fam_text_pass *io);
df_status fu_record_unet_plain(struct cg_graph *g, const struct model *m, int batch, int h, int w,
                               struct fam_denoise_pass *io);
bool fu_never(const struct model *m);

int fu_latent_channels(const struct model *m);
int fu_size_align(const struct model *m);
int fu_max_clip_skip(const struct model *m);

/* Reports the UNet, the text encoders and the scheduler (model_describe). */
void fu_describe(const struct model *m, FILE *f);

void fu_free(struct model *m);

#endif
