/* model: a whole model on the device — its family's components (text
 * encoders, denoiser, VAE), tokenizer and scheduler config — from a
 * single-file checkpoint, a diffusers folder, or separate component files. */
#ifndef DF_MODEL_H
#define DF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "checkpoint.h"
#include "clip.h"
#include "family.h"
#include "sampler.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"
#include "weights.h"

struct model_options {
    const char *path;          /* single file or diffusers folder (may be NULL
                                  when the components are given) */
    const char *family;        /* "sd1", "sdxl", ...: for component files
                                  that do not say (NULL = detect) */
    const char *component[COMP_COUNT]; /* overrides, as sd.cpp's CLI allows */
    /* "vae.": that component's tensors sit under this key prefix of its file
     * (a file holding several components); NULL = none */
    const char *component_prefix[COMP_COUNT];
    /* config.json dicts for component files, whose shapes cannot tell
     * everything (head counts) */
    const json_t *component_config[COMP_COUNT];
    const char *scheduler_config; /* scheduler_config.json file, or NULL */
    const char *prediction;    /* "epsilon" / "v": overrides what the
                                  checkpoint says or implies (NULL = detect) */
    enum wts_precision precision;
    /* unused tensors are reported through this, once per load (NULL: quiet) */
    void (*log)(void *ctx, const char *message);
    void *log_ctx;
};

struct model {
    char name[128];            /* file or folder stem: "v1-5-pruned-emaonly" */
    char hash[16];             /* A1111 "Model hash": sha256[:10] of the file */
    uint64_t serial;           /* unique per load: what a worker's recorded passes were made for */
    const struct model_family *family;
    const char *layout;        /* "single-file (LDM keys)", "diffusers folder", ... */
    enum wts_precision precision;
    struct smp_config scheduler;  /* from scheduler_config.json, or the family's defaults */
    char prediction_source[96];   /* where the prediction type came from */
    struct weights *weights[COMP_COUNT];
    struct vae_model vae;         /* every family's */
    struct model_vae_source {     /* where the VAE came from, to reload it in fp32 */
        char path[4096];
        char prefix[64];
        json_t *config;
    } vae_source;
    bool vae_fp32;                /* VAE kept fp32 (force_upcast: SDXL's overflows fp16) */
    /* the parts the UNet families share; a family uses what it needs */
    struct unet_model unet;
    struct clip_model clip[FAM_MAX_ENCODERS];
    struct tokenizer *tokenizer;
    int32_t pad_id[FAM_MAX_ENCODERS];
    bool force_zeros_for_empty_prompt;
};

df_status model_load(struct device *dev, const struct model_options *opt, struct model **out);
void model_destroy(struct model *m);

/* The model's VAE again, with fp32 weights, from its file (for a decode
 * whose fp16 weights overflowed). The caller frees both with vae_free and
 * wts_destroy. */
df_status model_load_vae_fp32(const struct model *m, struct device *dev, struct weights **weights,
                              struct vae_model *vae);

/* Human-readable summary for `diffusiond info` (family, layout, config,
 * parameter counts, dtype, device memory). Caller frees. */
char *model_describe(const struct model *m);

#endif
