/* family_unet: see family_unet.h. */
#include "family_unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "unet_config.h"
#include "vocab.h"

#define LDM_UNET_PREFIX "model.diffusion_model."

#define TRY(x) do { if ((st = (x)) != DF_OK) goto done; } while (0)

df_status fu_load_unet(struct model *m, struct device *dev, const struct comp_source *s, int pooled_dim) {
    struct unet_config cfg;
    struct wts_rename *renames = NULL;
    int n = 0;
    const char *prefix = "";
    df_status st = DF_OK;
    if (st_find(s->file, LDM_UNET_PREFIX "input_blocks.0.0.weight")) { /* original layout */
        prefix = LDM_UNET_PREFIX;
        if (s->config) TRY(unet_config_from_json(s->config, &cfg));
        else TRY(unet_infer_config_file(s->file, prefix, &cfg));
        TRY(unet_ldm_renames(&cfg, prefix, &renames, &n));
    } else if (s->kind.family == CKPT_UNET || s->kind.family == CKPT_SDXL) { /* diffusers names */
        if (s->config) TRY(unet_config_from_json(s->config, &cfg));
        else TRY(unet_infer_config_file(s->file, "", &cfg));
    } else {
        st = df_error(DF_EINVAL, "%s is a %s, not a UNet", s->path, ckpt_family_name(s->kind.family));
        goto done;
    }
    /* shapes give pooled + 6 time-id widths together; the text encoder
     * tells the pooled part */
    if (cfg.addition_embed_type == UNET_ADD_TEXT_TIME && !cfg.addition_time_embed_dim && pooled_dim > 0)
        TRY(unet_config_set_pooled_dim(&cfg, pooled_dim, 6));
    TRY(wts_create(dev, m->precision, &m->weights[COMP_UNET]));
    TRY(wts_load(m->weights[COMP_UNET], s->file, prefix, renames, n));
    TRY(unet_load(m->weights[COMP_UNET], &cfg, &m->unet));
done:
    free(renames);
    if (st != DF_OK) return df_error(st, "UNet from %s: %s", s->path, df_errmsg());
    return st;
}

/* Layer k's tensors, for dropping a layer at load (SD2's single files). */
static const char *const clip_layer_tensors[] = {
    "layer_norm1.weight", "layer_norm1.bias", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.out_proj.weight", "self_attn.out_proj.bias", "layer_norm2.weight", "layer_norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
};

df_status fu_load_clip(struct model *m, struct device *dev, int k, const struct comp_source *s,
                       const char *single_prefix, bool projection, int drop_layers) {
    struct clip_config cfg;
    enum clip_layout layout;
    df_status st = DF_OK;
    enum comp_id id = k == 0 ? COMP_TEXT_ENCODER : COMP_TEXT_ENCODER_2;
    const char *prefix = s->prefix ? s->prefix : single_prefix ? single_prefix : "";
    TRY(clip_detect_layout(s->file, prefix, &layout));
    TRY(wts_create(dev, m->precision, &m->weights[id]));
    TRY(clip_load_weights(m->weights[id], s->file, prefix, layout));
    if (s->config) TRY(clip_config_from_json(s->config, &cfg));
    else TRY(clip_config_from_weights(m->weights[id], layout, 0, &cfg));
    cfg.has_projection = projection;
    if (!projection) wts_ignore(m->weights[id], "text_projection.weight");
    for (int d = 0; d < drop_layers && cfg.num_hidden_layers > 1; d++) {
        cfg.num_hidden_layers--;
        for (size_t i = 0; i < sizeof clip_layer_tensors / sizeof clip_layer_tensors[0]; i++) {
            char name[128];
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", cfg.num_hidden_layers, clip_layer_tensors[i]);
            wts_ignore(m->weights[id], name);
        }
    }
    TRY(clip_load(m->weights[id], &cfg, &m->clip[k]));
done:
    if (st != DF_OK) return df_error(st, "%s from %s: %s", comp_table[id].what, s->path, df_errmsg());
    return st;
}

df_status fu_pad_id(const struct model *m, const struct model_sources *src, int k, int32_t fallback, int32_t *out) {
    *out = fallback;
    if (!src->folder) return DF_OK;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", src->folder, k == 0 ? "tokenizer" : "tokenizer_2");
    struct stat sb;
    if (stat(dir, &sb) != 0) return DF_OK; /* no tokenizer files: the family's pad */
    return tok_pad_id_from_folder(m->tokenizer, dir, out);
}

df_status fu_tokenizer(struct model *m) { return tok_create(clip_vocab_gz, CLIP_VOCAB_GZ_SIZE, &m->tokenizer); }

df_status fu_tokenize(const struct model *m, int k, const char *text, int32_t *ids, int *eos_pos) {
    df_status st = tok_encode(m->tokenizer, text, FU_CONTEXT, m->pad_id[k], ids, NULL);
    if (st != DF_OK) return st;
    int32_t eos = tok_eos(m->tokenizer);
    *eos_pos = FU_CONTEXT - 1;
    for (int i = 0; i < FU_CONTEXT; i++)
        if (ids[i] == eos) {
            *eos_pos = i;
            break;
        }
    return DF_OK;
}

struct cg_tensor *fu_clip_skip(struct cg_graph *g, const struct model *m, int k, const struct clip_outputs *o,
                               int clip_skip) {
    int layers = m->clip[k].cfg.num_hidden_layers;
    if (clip_skip <= 1) return o->last_hidden_state;
    return clip_final_norm(g, &m->clip[k], o->hidden_states[layers + 1 - clip_skip]);
}

df_status fu_record_unet(struct cg_graph *g, const struct model *m, int batch, int h, int w, bool added,
                         struct fam_denoise_pass *io) {
    const struct unet_config *c = &m->unet.cfg;
    io->sample = cg_input(g, "sample", 4, (int64_t[]){batch, c->in_channels, h, w});
    io->timestep = cg_input(g, "timestep", 1, (int64_t[]){batch});
    io->context = cg_input(g, "encoder_hidden_states", 3, (int64_t[]){batch, FU_CONTEXT, c->cross_attention_dim});
    struct unet_added_cond cond = {0}, *add = NULL;
    if (added) {
        int pooled = c->projection_class_embeddings_input_dim - 6 * c->addition_time_embed_dim;
        io->pooled = cg_input(g, "text_embeds", 2, (int64_t[]){batch, pooled});
        io->time_ids = cg_input(g, "time_ids", 2, (int64_t[]){batch, 6});
        cond = (struct unet_added_cond){io->pooled, io->time_ids};
        add = &cond;
    }
    struct unet_outputs o;
    df_status st = unet_forward(g, &m->unet, io->sample, io->timestep, io->context, add, NULL, &o);
    if (st != DF_OK) return st;
    io->out = o.sample;
    return DF_OK;
}

/* ---- the single-encoder families (SD1.x, SD2.x) --------------------------- */

df_status fu_check_context(const struct model *m) {
    if (m->clip[0].cfg.hidden_size == m->unet.cfg.cross_attention_dim) return DF_OK;
    return df_error(DF_EINVAL, "text encoder width %d does not match the UNet's cross_attention_dim %d",
                    m->clip[0].cfg.hidden_size, m->unet.cfg.cross_attention_dim);
}

void fu_cond_single(const struct model *m, struct fam_cond *out) {
    *out = (struct fam_cond){.n_encoders = 1, .seq_len = FU_CONTEXT, .context_len = FU_CONTEXT,
                             .context_dim = m->clip[0].cfg.hidden_size};
}

df_status fu_record_text_single(struct cg_graph *g, const struct model *m, int batch, int clip_skip,
                                struct fam_text_pass *io) {
    io->ids[0] = cg_input(g, "input_ids", 2, (int64_t[]){batch, FU_CONTEXT});
    struct clip_outputs o;
    df_status st = clip_forward(g, &m->clip[0], io->ids[0], NULL, &o);
    if (st != DF_OK) return st;
    io->context = fu_clip_skip(g, m, 0, &o, clip_skip); /* [B, 77, D] */
    return DF_OK;
}

df_status fu_record_unet_plain(struct cg_graph *g, const struct model *m, int batch, int h, int w,
                               struct fam_denoise_pass *io) {
    return fu_record_unet(g, m, batch, h, w, false, io);
}

bool fu_never(const struct model *m) {
    (void)m;
    return false;
}

int fu_latent_channels(const struct model *m) { return m->unet.cfg.in_channels; }

int fu_size_align(const struct model *m) { return vae_scale(&m->vae.cfg) << (m->unet.cfg.levels - 1); }

int fu_max_clip_skip(const struct model *m) { return m->clip[0].cfg.num_hidden_layers; }

void fu_describe(const struct model *m, FILE *f) {
    const struct unet_config *u = &m->unet.cfg;
    char ch[128] = "", heads[128] = "", depth[128] = "";
    for (int i = 0; i < u->levels; i++) {
        size_t a = strlen(ch), b = strlen(heads), d = strlen(depth);
        snprintf(ch + a, sizeof ch - a, "%s%d", i ? ", " : "", u->block_out_channels[i]);
        snprintf(heads + b, sizeof heads - b, "%s%d", i ? ", " : "", u->num_attention_heads[i]);
        snprintf(depth + d, sizeof depth - d, "%s%d", i ? ", " : "", u->transformer_layers_per_block[i]);
    }
    fprintf(f, "unet: %lld parameters, block_out_channels [%s], heads [%s], transformer depth [%s], "
               "layers_per_block %d, cross_attention_dim %d, linear projection %s%s\n",
            (long long)wts_parameter_count(m->weights[COMP_UNET]), ch, heads, depth, u->layers_per_block[0],
            u->cross_attention_dim, u->use_linear_projection ? "yes" : "no",
            u->addition_embed_type == UNET_ADD_TEXT_TIME ? ", added conditioning text_time" : "");
    for (int k = 0; k < FAM_MAX_ENCODERS; k++) {
        enum comp_id id = k == 0 ? COMP_TEXT_ENCODER : COMP_TEXT_ENCODER_2;
        if (!m->weights[id]) continue;
        const struct clip_config *c = &m->clip[k].cfg;
        fprintf(f, "%s: %lld parameters, width %d, %d layers, %d heads, %s, pad id %d%s\n", comp_table[id].name,
                (long long)wts_parameter_count(m->weights[id]), c->hidden_size, c->num_hidden_layers,
                c->num_attention_heads, c->hidden_act == CLIP_GELU ? "gelu" : "quick_gelu", (int)m->pad_id[k],
                c->has_projection ? ", with projection" : "");
    }
}

void fu_free(struct model *m) {
    unet_free(&m->unet);
    for (int k = 0; k < FAM_MAX_ENCODERS; k++) clip_free(&m->clip[k]);
    tok_destroy(m->tokenizer);
    m->tokenizer = NULL;
}
