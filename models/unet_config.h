/* unet_config: where a struct unet_config comes from. A diffusers
 * config.json (UNet2DConditionModel), refusing the features unet.c does not
 * implement, or the tensor shapes of a single-file checkpoint. */
#ifndef DF_UNET_CONFIG_H
#define DF_UNET_CONFIG_H

#include <jansson.h>

#include "safetensors.h"
#include "unet.h"
#include "weights.h"

/* Missing or null keys take diffusers' defaults. DF_EUNSUPPORTED names the
 * key whose value selects code we do not have (class embeddings, other
 * addition_embed_types, ...). */
df_status unet_config_from_json(const json_t *j, struct unet_config *c);

/* Config from tensor shapes, for single-file checkpoints. Reads either the
 * LDM / SDXL (sgm) layout (`prefix`input_blocks.0.0.weight, prefix usually
 * "model.diffusion_model.") or diffusers names (`prefix`conv_in.weight).
 * Shapes give channels, levels, resnets per level, which levels attend,
 * transformer depth per level (up levels and the mid block separately),
 * cross_attention_dim, linear projections and SDXL's label_emb /
 * add_embedding (projection_class_embeddings_input_dim).
 * They cannot give:
 *  - the head count: SD1.x uses 8 heads at every level, SD2.x and SDXL a
 *    head width of 64, so heads = channels/64 when cross_attention_dim >=
 *    1024 (SD2: 1024, SDXL: 2048) or the UNet has added conditioning, else 8;
 *  - addition_time_embed_dim: label_emb takes pooled + n x that width;
 *    SDXL's 256 when the sum is one of SDXL's (2816 base, 2560 refiner),
 *    else 0 (unknown: unet_config_set_pooled_dim, or unet_load refuses);
 *  - norm_num_groups: 32 (every released UNet). The rest: diffusers
 *    defaults.
 * unet_infer_config_file reads the file's header only, so a loader can
 * infer, build the rename table and upload once. */
df_status unet_infer_config(const struct weights *w, const char *prefix, struct unet_config *cfg);
df_status unet_infer_config_file(const struct st_file *f, const char *prefix, struct unet_config *cfg);

/* For a loader that knows the pooled text width (the second text
 * encoder's projection_dim) and the number of time ids (SDXL: 6):
 * addition_time_embed_dim = (projection_class_embeddings_input_dim -
 * pooled_dim) / n_time_ids. DF_EINVAL when that does not divide into an
 * even width. */
df_status unet_config_set_pooled_dim(struct unet_config *cfg, int pooled_dim, int n_time_ids);

#endif
