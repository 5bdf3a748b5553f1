/* checkpoint: what a weight file is, by its characteristic keys (model.c
 * then asks the families which of them loads it). */
#ifndef DF_CHECKPOINT_H
#define DF_CHECKPOINT_H

#include <stdbool.h>

#include "safetensors.h"

enum ckpt_family {
    CKPT_UNKNOWN,
    CKPT_SD1,          /* SD1.x single file: UNet + VAE + CLIP-L (LDM keys) */
    CKPT_SD2,          /* SD2.x: OpenCLIP-H text encoder */
    CKPT_SDXL,         /* conditioner.* / label_emb */
    CKPT_SD3,          /* MMDiT joint_blocks */
    CKPT_FLUX,         /* double_blocks / single_blocks */
    CKPT_UNET,         /* a lone UNet (diffusers keys) */
    CKPT_UNET_LDM,     /* a lone UNet (LDM keys, model.diffusion_model.*) */
    CKPT_VAE,          /* a lone VAE (diffusers keys) */
    CKPT_VAE_LDM,      /* a lone VAE (LDM keys, with or without first_stage_model.) */
    CKPT_CLIP,         /* a lone CLIP text encoder (transformers keys) */
};

struct ckpt_kind {
    enum ckpt_family family;
    char evidence[160];   /* the key that decided it, for messages */
    const char *vae_prefix; /* LDM VAE key prefix ("first_stage_model." or "") */
};

/* Classifies a file by its keys. Never fails: unknown files are CKPT_UNKNOWN. */
void ckpt_identify(const struct st_file *f, struct ckpt_kind *kind);
const char *ckpt_family_name(enum ckpt_family f);

#endif
