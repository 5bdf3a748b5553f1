/* checkpoint: file identification by characteristic keys. */
#include "checkpoint.h"

#include <stdio.h>
#include <string.h>

/* Probes in order: the first key found decides. Families that contain
 * another's keys (SDXL files have model.diffusion_model.* too) come first. */
static const struct {
    const char *key;
    enum ckpt_family family;
    const char *vae_prefix;
} probes[] = {
    {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", CKPT_SDXL, NULL},
    {"conditioner.embedders.1.model.token_embedding.weight", CKPT_SDXL, NULL},
    {"model.diffusion_model.label_emb.0.0.weight", CKPT_SDXL, NULL},
    {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", CKPT_SD3, NULL},
    {"joint_blocks.0.x_block.attn.qkv.weight", CKPT_SD3, NULL},
    {"transformer_blocks.0.attn.add_q_proj.weight", CKPT_SD3, NULL},
    {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight", CKPT_FLUX, NULL},
    {"double_blocks.0.img_attn.qkv.weight", CKPT_FLUX, NULL},
    {"single_transformer_blocks.0.attn.to_q.weight", CKPT_FLUX, NULL},
    {"cond_stage_model.model.token_embedding.weight", CKPT_SD2, NULL},
    {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", CKPT_SD1, "first_stage_model."},
    {"model.diffusion_model.input_blocks.0.0.weight", CKPT_UNET_LDM, NULL},
    {"add_embedding.linear_1.weight", CKPT_SDXL, NULL},
    {"down_blocks.0.resnets.0.conv1.weight", CKPT_UNET, NULL},
    {"first_stage_model.decoder.conv_in.weight", CKPT_VAE_LDM, "first_stage_model."},
    {"decoder.up.0.block.0.conv1.weight", CKPT_VAE_LDM, ""},
    {"decoder.up_blocks.0.resnets.0.conv1.weight", CKPT_VAE, NULL},
    {"text_model.embeddings.token_embedding.weight", CKPT_CLIP, NULL},
};

void ckpt_identify(const struct st_file *f, struct ckpt_kind *kind) {
    memset(kind, 0, sizeof *kind);
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        if (!st_find(f, probes[i].key)) continue;
        kind->family = probes[i].family;
        kind->vae_prefix = probes[i].vae_prefix;
        snprintf(kind->evidence, sizeof kind->evidence, "%s", probes[i].key);
        return;
    }
}

const char *ckpt_family_name(enum ckpt_family f) {
    switch (f) {
    case CKPT_SD1: return "Stable Diffusion 1.x checkpoint";
    case CKPT_SD2: return "Stable Diffusion 2.x checkpoint (OpenCLIP text encoder)";
    case CKPT_SDXL: return "SDXL checkpoint";
    case CKPT_SD3: return "Stable Diffusion 3 (MMDiT) checkpoint";
    case CKPT_FLUX: return "Flux checkpoint";
    case CKPT_UNET: return "UNet (diffusers layout)";
    case CKPT_UNET_LDM: return "UNet (original LDM layout)";
    case CKPT_VAE: return "VAE (diffusers layout)";
    case CKPT_VAE_LDM: return "VAE (original LDM layout)";
    case CKPT_CLIP: return "CLIP text encoder";
    case CKPT_UNKNOWN: break;
    }
    return "unrecognised weight file";
}
