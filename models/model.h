/* model: a whole Stable Diffusion model on the device — text encoder, UNet,
 * VAE, tokenizer and scheduler config — from a single-file checkpoint, a
 * diffusers folder, or separate component files. */
#ifndef DF_MODEL_H
#define DF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "checkpoint.h"
#include "clip.h"
#include "sampler.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"
#include "weights.h"

struct model_options {
    const char *path;          /* single file or diffusers folder (may be NULL
                                  when all three components are given) */
    const char *unet;          /* component overrides, as sd.cpp's CLI allows */
    const char *vae;
    const char *text_encoder;
    /* component configs (diffusers/transformers config.json dicts) for
     * component files, whose shapes cannot tell everything (head counts) */
    const json_t *unet_config, *vae_config, *text_encoder_config;
    enum wts_precision precision;
    /* unused tensors are reported through this, once per load (NULL: quiet) */
    void (*log)(void *ctx, const char *message);
    void *log_ctx;
};

struct model {
    char name[128];            /* file or folder stem: "v1-5-pruned-emaonly" */
    char hash[16];             /* A1111 "Model hash": sha256[:10] of the file */
    enum ckpt_family family;
    const char *layout;        /* "single-file (LDM keys)", "diffusers folder", ... */
    struct weights *unet_weights, *vae_weights, *clip_weights;
    struct unet_model unet;
    struct vae_model vae;
    struct clip_model clip;
    struct tokenizer *tokenizer;
    struct smp_config scheduler;  /* from scheduler_config.json, or SD1.x defaults */
    enum wts_precision precision;
};

df_status model_load(struct device *dev, const struct model_options *opt, struct model **out);
void model_destroy(struct model *m);

/* Human-readable summary for `diffusiond info` (family, layout, config,
 * parameter counts, dtype, device memory). Caller frees. */
char *model_describe(const struct model *m);

#endif
