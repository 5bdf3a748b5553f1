/* unet_config: a diffusers UNet config.json (UNet2DConditionModel) as a
 * struct unet_config, refusing the features unet.c does not implement. */
#ifndef DF_UNET_CONFIG_H
#define DF_UNET_CONFIG_H

#include <jansson.h>

#include "unet.h"

/* Missing or null keys take diffusers' defaults. DF_EUNSUPPORTED names the
 * key whose value selects code we do not have (SDXL's addition_embed_type,
 * class embeddings, ...). */
df_status unet_config_from_json(const json_t *j, struct unet_config *c);

#endif
