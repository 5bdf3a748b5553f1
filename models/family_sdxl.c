/* family_sdxl: Stable Diffusion XL — CLIP-L and OpenCLIP-G, their
 * penultimate hidden states concatenated as the context, G's projected
 * pooled output and six micro-conditioning ids as the UNet's added
 * conditioning (addition_embed_type "text_time"); the VAE decodes in fp32
 * (it overflows fp16). As diffusers' StableDiffusionXLPipeline. */
#include <stdlib.h>
#include <string.h>

#include "family_unet.h"

#define SGM_CLIP_L_PREFIX "conditioner.embedders.0.transformer."
#define SGM_CLIP_G_PREFIX "conditioner.embedders.1.model."

static const bool sdxl_components[COMP_COUNT] = {
    [COMP_UNET] = true, [COMP_VAE] = true, [COMP_TEXT_ENCODER] = true, [COMP_TEXT_ENCODER_2] = true};

/* model_index.json's force_zeros_for_empty_prompt (diffusers: true for
 * SDXL base, absent means true too). */
static bool force_zeros(const struct model_sources *src) {
    if (!src->folder) return true;
    char path[4200];
    snprintf(path, sizeof path, "%s/model_index.json", src->folder);
    json_t *j = json_load_file(path, 0, NULL);
    const json_t *v = json_object_get(j, "force_zeros_for_empty_prompt");
    bool on = !json_is_boolean(v) || json_is_true(v);
    json_decref(j);
    return on;
}

/* sd_xl_base_1.0's scheduler_config.json: SD's betas, "leading" spacing. */
static struct smp_config sdxl_scheduler(void) {
    struct smp_config c = smp_config_default_sd15();
    c.timestep_spacing = SMP_SPACING_LEADING;
    return c;
}

static df_status sdxl_load(struct model *m, struct device *dev, const struct model_sources *src) {
    const struct comp_source *l = &src->comp[COMP_TEXT_ENCODER], *g = &src->comp[COMP_TEXT_ENCODER_2];
    /* the original single file keeps L in transformers names and bigG in
     * OpenCLIP's, each under its conditioner prefix */
    df_status st = fu_load_clip(m, dev, 0, l, l->kind.family == CKPT_SDXL ? SGM_CLIP_L_PREFIX : NULL, false, 0);
    if (st == DF_OK) st = fu_load_clip(m, dev, 1, g, g->kind.family == CKPT_SDXL ? SGM_CLIP_G_PREFIX : NULL, true, 0);
    if (st == DF_OK) st = fu_load_unet(m, dev, &src->comp[COMP_UNET], m->clip[1].cfg.projection_dim);
    if (st == DF_OK) st = fu_tokenizer(m);
    if (st == DF_OK) st = fu_pad_id(m, src, 0, 49407, &m->pad_id[0]);
    if (st == DF_OK) st = fu_pad_id(m, src, 1, 0, &m->pad_id[1]); /* OpenCLIP's tokenizer pads with "!" */
    if (st != DF_OK) return st;
    const struct unet_config *u = &m->unet.cfg;
    int context = m->clip[0].cfg.hidden_size + m->clip[1].cfg.hidden_size;
    if (u->addition_embed_type != UNET_ADD_TEXT_TIME)
        return df_error(DF_EINVAL, "%s: an SDXL UNet needs addition_embed_type \"text_time\"",
                        src->comp[COMP_UNET].path);
    if (u->cross_attention_dim != context)
        return df_error(DF_EINVAL, "text encoders give %d + %d = %d channels, the UNet's cross_attention_dim is %d",
                        m->clip[0].cfg.hidden_size, m->clip[1].cfg.hidden_size, context, u->cross_attention_dim);
    if (u->projection_class_embeddings_input_dim != m->clip[1].cfg.projection_dim + 6 * u->addition_time_embed_dim)
        return df_error(DF_EINVAL, "UNet projection_class_embeddings_input_dim %d is not the pooled width %d + 6 x "
                                   "addition_time_embed_dim %d", u->projection_class_embeddings_input_dim,
                        m->clip[1].cfg.projection_dim, u->addition_time_embed_dim);
    m->force_zeros_for_empty_prompt = force_zeros(src);
    return DF_OK;
}

static void sdxl_cond(const struct model *m, struct fam_cond *out) {
    *out = (struct fam_cond){.n_encoders = 2, .seq_len = FU_CONTEXT, .context_len = FU_CONTEXT,
                             .context_dim = m->clip[0].cfg.hidden_size + m->clip[1].cfg.hidden_size,
                             .pooled_dim = m->clip[1].cfg.projection_dim, .n_time_ids = 6};
}

/* diffusers' clip_skip c (A1111's n = c + 1) takes hidden_states[-(c + 2)]
 * of both encoders, without the final norm: the penultimate by default. */
static df_status sdxl_record_text(struct cg_graph *g, const struct model *m, int batch, int clip_skip,
                                  struct fam_text_pass *io) {
    struct clip_outputs o[2];
    struct cg_tensor *hidden[2];
    int n = clip_skip < 1 ? 1 : clip_skip;
    for (int k = 0; k < 2; k++) {
        io->ids[k] = cg_input(g, k ? "input_ids_2" : "input_ids", 2, (int64_t[]){batch, FU_CONTEXT});
        if (k == 1) io->eos_rows[k] = cg_input(g, "eos_rows_2", 1, (int64_t[]){batch});
        df_status st = clip_forward(g, &m->clip[k], io->ids[k], io->eos_rows[k], &o[k]);
        if (st != DF_OK) return st;
        hidden[k] = o[k].hidden_states[m->clip[k].cfg.num_hidden_layers - n]; /* [B, 77, D_k] */
    }
    io->context = cg_concat(g, hidden[0], hidden[1], 2); /* [B, 77, D_l + D_g] */
    io->pooled = o[1].text_embeds;                         /* [B, projection_dim] */
    return DF_OK;
}

static df_status sdxl_record_denoiser(struct cg_graph *g, const struct model *m, int batch, int h, int w,
                                      struct fam_denoise_pass *io) {
    return fu_record_unet(g, m, batch, h, w, true, io);
}

/* [original h, w, crop top, left, target h, w] with diffusers' defaults. */
static void sdxl_time_ids(const struct model *m, const struct pipe_request *r, float *ids) {
    (void)m;
    const int *o = r->original_size, *c = r->crops_coords_top_left, *t = r->target_size;
    ids[0] = (float)(o[0] ? o[0] : r->height);
    ids[1] = (float)(o[1] ? o[1] : r->width);
    ids[2] = (float)c[0];
    ids[3] = (float)c[1];
    ids[4] = (float)(t[0] ? t[0] : r->height);
    ids[5] = (float)(t[1] ? t[1] : r->width);
}

static int sdxl_max_clip_skip(const struct model *m) {
    int a = m->clip[0].cfg.num_hidden_layers, b = m->clip[1].cfg.num_hidden_layers;
    return a < b ? a : b;
}

static bool sdxl_zero_empty_negative(const struct model *m) { return m->force_zeros_for_empty_prompt; }

const struct model_family family_sdxl = {
    .name = "sdxl",
    .label = "SDXL",
    .components = sdxl_components,
    .vae_force_upcast = true,
    .scheduler = sdxl_scheduler,
    .load = sdxl_load,
    .free = fu_free,
    .cond = sdxl_cond,
    .tokenize = fu_tokenize,
    .record_text = sdxl_record_text,
    .record_denoiser = sdxl_record_denoiser,
    .time_ids = sdxl_time_ids,
    .latent_channels = fu_latent_channels,
    .size_align = fu_size_align,
    .max_clip_skip = sdxl_max_clip_skip,
    .zero_empty_negative = sdxl_zero_empty_negative,
    .describe = fu_describe,
};
