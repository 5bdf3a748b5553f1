/* family_sd2: Stable Diffusion 2.x — SD1.x's pipeline with an OpenCLIP-H
 * text encoder read at its penultimate layer (then final_layer_norm), pad
 * id 0, and v-prediction for the 768-v models.
 *
 * diffusers folders store the encoder already cut to 23 layers; the
 * original single file (cond_stage_model.model.*, OpenCLIP names) has all
 * 24, and the last is dropped at load exactly as diffusers' conversion
 * does, so both read "the last layer" from then on and A1111's clip skip
 * means the same on both. */
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
static df_status detect_v(struct model *m, struct device *dev, bool *is_v) {
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
        *is_v = mean / (double)n < -1.0;
    }
    free(buf);
    prog_destroy(p);
    cg_destroy(g);
    return st;
}

static df_status sd2_load(struct model *m, struct device *dev, const struct model_sources *src) {
    const struct comp_source *te = &src->comp[COMP_TEXT_ENCODER];
    bool original = te->kind.family == CKPT_SD2; /* OpenCLIP-H with all 24 layers */
    df_status st = fu_load_unet(m, dev, &src->comp[COMP_UNET], 0);
    if (st == DF_OK) st = fu_load_clip(m, dev, 0, te, original ? OPENCLIP_PREFIX : NULL, false, original ? 1 : 0);
    if (st == DF_OK) st = fu_tokenizer(m);
    if (st == DF_OK) st = fu_pad_id(m, src, 0, 0, &m->pad_id[0]); /* OpenCLIP pads with "!" */
    if (st == DF_OK && m->clip[0].cfg.hidden_size != m->unet.cfg.cross_attention_dim)
        st = df_error(DF_EINVAL, "text encoder width %d does not match the UNet's cross_attention_dim %d",
                      m->clip[0].cfg.hidden_size, m->unet.cfg.cross_attention_dim);
    if (st == DF_OK && src->single_file && !src->folder) {
        bool v = false;
        if ((st = detect_v(m, dev, &v)) != DF_OK) return df_error(st, "v-prediction test: %s", df_errmsg());
        m->scheduler.prediction_type = v ? SMP_PRED_V : SMP_PRED_EPSILON;
        snprintf(m->prediction_source, sizeof m->prediction_source, "A1111's test on the UNet (%s)",
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
