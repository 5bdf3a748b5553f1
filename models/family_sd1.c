/* family_sd1: Stable Diffusion 1.x — one CLIP-L text encoder (last hidden
 * state, A1111's clip skip), a UNet conditioned on its hidden states, the
 * 4-channel VAE; pads with the end token. */
#include "family_unet.h"

#define LDM_CLIP_PREFIX "cond_stage_model.transformer."

static const bool sd1_components[COMP_COUNT] = {[COMP_UNET] = true, [COMP_VAE] = true, [COMP_TEXT_ENCODER] = true};

static df_status sd1_load(struct model *m, struct device *dev, const struct model_sources *src) {
    const struct comp_source *te = &src->comp[COMP_TEXT_ENCODER];
    df_status st = fu_load_unet(m, dev, &src->comp[COMP_UNET], 0);
    if (st == DF_OK) st = fu_load_clip(m, dev, 0, te, te->kind.family == CKPT_SD1 ? LDM_CLIP_PREFIX : NULL, false, 0);
    if (st == DF_OK) st = fu_tokenizer(m);
    if (st == DF_OK) st = fu_pad_id(m, src, 0, 49407, &m->pad_id[0]); /* SD1.x pads with the end token */
    if (st == DF_OK) st = fu_check_context(m);
    return st;
}

const struct model_family family_sd1 = {
    .name = "sd1",
    .label = "SD1.x",
    .components = sd1_components,
    .scheduler = smp_config_default_sd15,
    .load = sd1_load,
    .free = fu_free,
    .cond = fu_cond_single,
    .tokenize = fu_tokenize,
    .record_text = fu_record_text_single,
    .record_denoiser = fu_record_unet_plain,
    .latent_channels = fu_latent_channels,
    .size_align = fu_size_align,
    .max_clip_skip = fu_max_clip_skip,
    .zero_empty_negative = fu_never,
    .describe = fu_describe,
};
