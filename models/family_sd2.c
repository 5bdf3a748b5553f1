/* family_sd2: Stable Diffusion 2.x — SD1.x's pipeline with an OpenCLIP-H
 * text encoder read at its penultimate layer (then final_layer_norm), pad
 * id 0, and v-prediction for the 768-v models.
 *
 * diffusers folders store the encoder already cut to 23 layers; the
 * original single file (cond_stage_model.model.*, OpenCLIP names) has all
 * 24, and the last is dropped at load exactly as diffusers' conversion
 * does, so both read "the last layer" from then on and A1111's clip skip
 * means the same on both.
 *
 * A text encoder config given for a single file may describe the tower as
 * stored (num_hidden_layers 24) or as diffusers keeps it (23, a folder's
 * text_encoder/config.json): the file's own resblocks decide, and the
 * encoder always runs all of them but the last. Any other count is refused
 * by name.
 *
 * Prediction type: a folder's scheduler_config.json says it; for a single
 * file, a scheduler config given for it, else A1111's test on the UNet
 * (detect_v); a configured `prediction` overrides either (model.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/program.h"
#include "family_unet.h"

#define OPENCLIP_PREFIX "cond_stage_model.model."

static const bool sd2_components[COMP_COUNT] = {[COMP_UNET] = true, [COMP_VAE] = true, [COMP_TEXT_ENCODER] = true};

/* A1111's test for single files (is_using_v_parameterization_for_sd2):
 * run the UNet on x = 0.5 everywhere at t = 999 with a 2-token context of
 * 0.5 and look at mean(out - x): an epsilon model predicts noise around
 * x's scale, a v model predicts far below (A1111's threshold: < -1). */
static df_status detect_v(struct model *m, struct device *dev, double *mean_out) {
    const struct unet_config *c = &m->unet.cfg;
    struct cg_graph *g = NULL;
    struct program *p = NULL;
    df_status st = cg_create(&g);
    if (st != DF_OK) return st;
    int64_t n = (int64_t)c->in_channels * 8 * 8, ctx = 2 * (int64_t)c->cross_attention_dim;
    struct cg_tensor *x = cg_input(g, "x", 4, (int64_t[]){1, c->in_channels, 8, 8});
    struct cg_tensor *t = cg_input(g, "t", 1, (int64_t[]){1});
    struct cg_tensor *cond = cg_input(g, "cond", 3, (int64_t[]){1, 2, c->cross_attention_dim});
    struct unet_outputs o;
    float *buf = malloc((size_t)(n > ctx ? n : ctx) * sizeof *buf);
    if (!buf) st = df_error(DF_ENOMEM, "out of memory");
    if (st == DF_OK) st = unet_forward(g, &m->unet, x, t, cond, NULL, NULL, &o);
    if (st == DF_OK) {
        cg_output(g, o.sample);
        st = prog_create(dev, g, &(struct prog_options){0}, &p);
    }
    for (int64_t i = 0; buf && i < (n > ctx ? n : ctx); i++) buf[i] = 0.5f;
    if (st == DF_OK) st = prog_write(p, x, buf);
    if (st == DF_OK) st = prog_write(p, cond, buf);
    if (st == DF_OK) st = prog_write(p, t, (float[]){999.0f});
    if (st == DF_OK) st = prog_run(p);
    if (st == DF_OK) st = prog_read(p, o.sample, buf);
    if (st == DF_OK) {
        double mean = 0;
        for (int64_t i = 0; i < n; i++) mean += (double)buf[i] - 0.5;
        *mean_out = mean / (double)n;
    }
    free(buf);
    prog_destroy(p);
    cg_destroy(g);
    return st;
}

/* The number of OpenCLIP resblocks under `prefix` (highest index + 1). */
static int openclip_layers(const struct st_file *f, const char *prefix) {
    char head[256];
    snprintf(head, sizeof head, "%stransformer.resblocks.", prefix);
    size_t len = strlen(head);
    int layers = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        if (strncmp(name, head, len) != 0) continue;
        long k = strtol(name + len, NULL, 10);
        if (k >= 0 && k < 1000 && k + 1 > layers) layers = (int)k + 1;
    }
    return layers;
}

/* What the tower must hold (the last layer's are not needed: dropped), by
 * the file's own names: a message names the key the file lacks, not the
 * transformers name it would have become. */
static const char *const openclip_top[] = {"token_embedding.weight", "positional_embedding", "ln_final.weight",
                                           "ln_final.bias"};
static const char *const openclip_block[] = {
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
    "mlp.c_proj.bias",
};

static df_status check_tower(const struct comp_source *te, const char *prefix, int used_layers) {
    char key[512];
    for (size_t i = 0; i < sizeof openclip_top / sizeof openclip_top[0]; i++) {
        snprintf(key, sizeof key, "%s%s", prefix, openclip_top[i]);
        if (!st_find(te->file, key))
            return df_error(DF_EFORMAT, "text encoder (OpenCLIP) from %s: missing tensor \"%s\"", te->path, key);
    }
    for (int l = 0; l < used_layers; l++)
        for (size_t i = 0; i < sizeof openclip_block / sizeof openclip_block[0]; i++) {
            snprintf(key, sizeof key, "%stransformer.resblocks.%d.%s", prefix, l, openclip_block[i]);
            if (!st_find(te->file, key))
                return df_error(DF_EFORMAT, "text encoder (OpenCLIP) from %s: missing tensor \"%s\"", te->path, key);
        }
    return DF_OK;
}

/* The original single file's text encoder, its last layer dropped; a
 * config of either count (see the top of this file) is read as the file's. */
static df_status load_original_clip(struct model *m, struct device *dev, const struct comp_source *te) {
    const char *prefix = te->prefix ? te->prefix : OPENCLIP_PREFIX;
    int stored = openclip_layers(te->file, prefix);
    if (stored < 2)
        return df_error(DF_EFORMAT, "text encoder (OpenCLIP) from %s: %d layers under \"%stransformer.resblocks.\"; "
                        "SD2 reads the penultimate, so it needs at least 2", te->path, stored, prefix);
    df_status st = check_tower(te, prefix, stored - 1);
    if (st != DF_OK) return st;
    if (!te->config) return fu_load_clip(m, dev, 0, te, OPENCLIP_PREFIX, false, 1);
    const json_t *n = json_object_get(te->config, "num_hidden_layers");
    if (n && !json_is_integer(n))
        return df_error(DF_EFORMAT, "text encoder config for %s: num_hidden_layers is not an integer", te->path);
    if (n && json_integer_value(n) != stored && json_integer_value(n) != stored - 1)
        return df_error(DF_EINVAL, "text encoder config for %s: num_hidden_layers %lld, but the file's OpenCLIP tower "
                        "has %d layers: give %d (as stored) or %d (as diffusers keeps it, the last dropped)",
                        te->path, (long long)json_integer_value(n), stored, stored, stored - 1);
    json_t *cfg = json_deep_copy(te->config);
    if (!cfg || json_object_set_new(cfg, "num_hidden_layers", json_integer(stored)) != 0) {
        json_decref(cfg);
        return df_error(DF_ENOMEM, "out of memory");
    }
    struct comp_source *copy = malloc(sizeof *copy);
    if (!copy) {
        json_decref(cfg);
        return df_error(DF_ENOMEM, "out of memory");
    }
    *copy = *te;
    copy->config = cfg;
    st = fu_load_clip(m, dev, 0, copy, OPENCLIP_PREFIX, false, 1);
    free(copy);
    json_decref(cfg);
    return st;
}

static df_status sd2_load(struct model *m, struct device *dev, const struct model_sources *src) {
    const struct comp_source *te = &src->comp[COMP_TEXT_ENCODER];
    bool original = te->kind.family == CKPT_SD2; /* OpenCLIP-H with all 24 layers */
    df_status st = fu_load_unet(m, dev, &src->comp[COMP_UNET], 0);
    if (st == DF_OK) st = original ? load_original_clip(m, dev, te) : fu_load_clip(m, dev, 0, te, NULL, false, 0);
    if (st == DF_OK) st = fu_tokenizer(m);
    if (st == DF_OK) st = fu_pad_id(m, src, 0, 0, &m->pad_id[0]); /* OpenCLIP pads with "!" */
    if (st == DF_OK) st = fu_check_context(m);
    /* model.c has set "default" unless a scheduler config was given for
     * this file: that one is the model's own word, the test a guess */
    if (st == DF_OK && src->single_file && !src->folder && strcmp(m->prediction_source, "default") == 0) {
        double mean = 0;
        if ((st = detect_v(m, dev, &mean)) != DF_OK) return df_error(st, "v-prediction test: %s", df_errmsg());
        bool v = mean < -1.0; /* A1111's threshold */
        m->scheduler.prediction_type = v ? SMP_PRED_V : SMP_PRED_EPSILON;
        snprintf(m->prediction_source, sizeof m->prediction_source,
                 "A1111's test on the UNet: mean(out - x) = %.4f %s -1, %s", mean, v ? "<" : ">=",
                 v ? "v-prediction" : "epsilon");
    }
    return st;
}

const struct model_family family_sd2 = {
    .name = "sd2",
    .label = "SD2.x",
    .components = sd2_components,
    .scheduler = smp_config_default_sd15,
    .load = sd2_load,
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
