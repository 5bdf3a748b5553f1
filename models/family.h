/* family: a model family (SD1.x, SD2.x, SDXL, ...) behind one interface.
 *
 * model.c finds a model's component files (single file, diffusers folder,
 * separate files), loads the VAE every family shares, and hands the rest to
 * the family; the pipeline asks the family to tokenize, to record its text
 * encoders (prompt -> conditioning) and its denoiser (latent, timestep,
 * conditioning -> prediction) on a graph. Nothing outside a family's files
 * knows how many text encoders it has or what its denoiser is.
 *
 * Adding a family: a family_<name>.c defining one `struct model_family`,
 * listed in family.c's table. */
#ifndef DF_FAMILY_H
#define DF_FAMILY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "checkpoint.h"
#include "compute/graph.h"
#include "pipe_request.h"
#include "sampler.h"

/* Every component any family has, listed once: config keys and `serve`
 * options (--unet, --unet-config, ...), diffusers subfolders, /models and
 * loading all read comp_table. */
enum comp_id { COMP_UNET, COMP_VAE, COMP_TEXT_ENCODER, COMP_TEXT_ENCODER_2, COMP_COUNT };

struct comp_info {
    const char *name;            /* "text_encoder_2": key, option, subfolder */
    const char *stem;            /* weight file stem inside its subfolder */
    const char *what;            /* "second text encoder (OpenCLIP-G)" */
};
extern const struct comp_info comp_table[COMP_COUNT];

/* One weight file of a component and its config.json, if any. */
struct comp_source {
    char path[4096];
    struct st_file *file;        /* NULL = the component is absent */
    struct ckpt_kind kind;
    json_t *config;              /* diffusers / transformers config, or NULL */
    const char *prefix;          /* single-file key prefix of this component ("" = none) */
};

/* What model.c found for a model, before any weight is uploaded. */
struct model_sources {
    struct comp_source comp[COMP_COUNT];
    const char *folder;          /* diffusers folder, or NULL */
    bool single_file;            /* comp[] entries share one checkpoint file */
};

#define FAM_MAX_ENCODERS 2

/* The conditioning a family's text encoders give its denoiser, per prompt. */
struct fam_cond {
    int n_encoders;
    int seq_len;                 /* tokens per encoder (77) */
    int context_len, context_dim; /* encoder_hidden_states [context_len, context_dim] */
    int pooled_dim;              /* pooled text embedding, 0 = none */
    int n_time_ids;              /* added conditioning ids (SDXL: 6), 0 = none */
};

/* A recorded text pass: inputs per encoder, outputs for the denoiser. */
struct fam_text_pass {
    struct cg_tensor *ids[FAM_MAX_ENCODERS];      /* [B, seq_len] token ids (floats) */
    struct cg_tensor *eos_rows[FAM_MAX_ENCODERS]; /* [B] rows of the end tokens, or NULL: unused */
    struct cg_tensor *context;                    /* [B, context_len, context_dim] */
    struct cg_tensor *pooled;                     /* [B, pooled_dim], or NULL */
};

/* A recorded denoiser pass; pooled and time_ids are NULL unless used. */
struct fam_denoise_pass {
    struct cg_tensor *sample;    /* [B, C, h, w] */
    struct cg_tensor *timestep;  /* [B] */
    struct cg_tensor *context;   /* [B, context_len, context_dim] */
    struct cg_tensor *pooled;    /* [B, pooled_dim] */
    struct cg_tensor *time_ids;  /* [B, n_time_ids] */
    struct cg_tensor *out;       /* prediction [B, C, h, w] */
};

struct model;
struct device;

struct model_family {
    const char *name;            /* "sdxl": config, /models, messages */
    const char *label;           /* "SDXL" */
    const bool *components;      /* [COMP_COUNT]: which components it has */
    /* honours the VAE config's force_upcast (fp32 VAE weights): diffusers'
     * SDXL pipelines do, SD1.x's ignore it */
    bool vae_force_upcast;
    /* The scheduler config its checkpoints ship with (a folder's own
     * scheduler_config.json overrides it). */
    struct smp_config (*scheduler)(void);
    /* Uploads and builds everything but the VAE (model.c loads that). */
    df_status (*load)(struct model *m, struct device *dev, const struct model_sources *src);
    void (*free)(struct model *m);
    void (*cond)(const struct model *m, struct fam_cond *out);
    /* Token ids of `text` for encoder k: seq_len ids, padded as it pads;
     * *eos_pos = the position of its end token (for pooled outputs). */
    df_status (*tokenize)(const struct model *m, int k, const char *text, int32_t *ids, int *eos_pos);
    df_status (*record_text)(struct cg_graph *g, const struct model *m, int batch, int clip_skip,
                             struct fam_text_pass *io);
    df_status (*record_denoiser)(struct cg_graph *g, const struct model *m, int batch, int h, int w,
                                 struct fam_denoise_pass *io);
    /* Added conditioning ids for a request (n_time_ids values); NULL when
     * the family has none. */
    void (*time_ids)(const struct model *m, const struct pipe_request *r, float *ids);
    int (*latent_channels)(const struct model *m);
    /* Image sizes must be multiples of this (the VAE's scale times what the
     * denoiser halves). */
    int (*size_align)(const struct model *m);
    int (*max_clip_skip)(const struct model *m);
    /* An empty negative prompt gives zero conditioning (diffusers'
     * force_zeros_for_empty_prompt). */
    bool (*zero_empty_negative)(const struct model *m);
    void (*describe)(const struct model *m, FILE *f);
};

/* The families, in the order single-file detection asks them. */
extern const struct model_family family_sd1, family_sd2, family_sdxl;

/* The family of a single-file checkpoint kind, or of a diffusers folder
 * (model_index.json's _class_name, else its subfolders). NULL: none. */
const struct model_family *family_for_checkpoint(enum ckpt_family kind);
df_status family_for_folder(const char *folder, const struct model_family **out);
const struct model_family *family_by_name(const char *name);

#endif
