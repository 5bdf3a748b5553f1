/* check_unet: UNet2DConditionModel cases (SD1.x-shaped and SDXL-shaped,
 * with added conditioning), diffusers or LDM / sgm key layout. An
 * LDM-layout case is loaded as a single-file loader does: config inferred
 * from its shapes, plus what shapes cannot tell; its inputs and references
 * come from the case "uses_io_from" names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compute/program.h"
#include "models/unet.h"
#include "models/unet_config.h"
#include "models/weights.h"

#define LDM_PREFIX "model.diffusion_model."

/* diffusers top-level modules: loading by these prefixes leaves the
 * fixture's in.* / out.* / dbg.* tensors on the host. */
static const char *const diffusers_prefixes[] = {
    "conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks.", "conv_norm_out.", "conv_out.",
    "add_embedding.",
};

/* Inputs in unet_forward's order; the added conditioning only for
 * addition_embed_type "text_time". */
enum { IN_SAMPLE, IN_TIMESTEP, IN_CONTEXT, IN_TEXT_EMBEDS, IN_TIME_IDS, N_IN };
static const char *const in_names[N_IN] = {
    "in.sample", "in.timestep", "in.encoder_hidden_states", "in.text_embeds", "in.time_ids",
};

static void log_unused(const char *name, void *ctx) {
    char *first = ctx;
    if (!*first) snprintf(first, 256, "%s", name);
}

/* LDM keys, with the usual prefix or bare; NULL for diffusers names. */
static const char *ldm_prefix(const struct st_file *f) {
    return st_find(f, LDM_PREFIX "input_blocks.0.0.weight") ? LDM_PREFIX
           : st_find(f, "input_blocks.0.0.weight")       ? ""
                                                           : NULL;
}

/* The config a single-file loader would have: shapes, then from the
 * manifest what they cannot tell (unet_config.h), the pooled width from
 * the inputs. Loading by it makes the oracle check the inference too. */
static df_status infer_config(const struct st_file *f, const char *prefix, const struct unet_config *manifest,
                              const struct st_file *io, struct unet_config *cfg) {
    df_status st = unet_infer_config_file(f, prefix, cfg);
    if (st != DF_OK) return st;
    memcpy(cfg->num_attention_heads, manifest->num_attention_heads, sizeof cfg->num_attention_heads);
    cfg->norm_num_groups = manifest->norm_num_groups;
    cfg->norm_eps = manifest->norm_eps;
    cfg->flip_sin_to_cos = manifest->flip_sin_to_cos;
    cfg->freq_shift = manifest->freq_shift;
    cfg->downsample_padding = manifest->downsample_padding;
    cfg->resnet_out_scale_factor = manifest->resnet_out_scale_factor;
    cfg->mid_block_scale_factor = manifest->mid_block_scale_factor;
    cfg->center_input_sample = manifest->center_input_sample;
    if (cfg->addition_embed_type != manifest->addition_embed_type)
        return df_error(DF_EFORMAT, "UNet: the file %s label_emb (added conditioning), the manifest's "
                                    "addition_embed_type says the opposite",
                        cfg->addition_embed_type == UNET_ADD_NONE ? "lacks" : "has");
    if (cfg->addition_embed_type == UNET_ADD_NONE) return DF_OK;
    const struct st_tensor *te = st_find(io, in_names[IN_TEXT_EMBEDS]), *ti = st_find(io, in_names[IN_TIME_IDS]);
    if (!te || te->ndim != 2 || !ti || ti->ndim != 2)
        return df_error(DF_EFORMAT, "no [B, P] \"%s\" / [B, n] \"%s\" for the pooled width", in_names[IN_TEXT_EMBEDS],
                        in_names[IN_TIME_IDS]);
    return unet_config_set_pooled_dim(cfg, (int)te->shape[1], (int)ti->shape[1]);
}

static df_status load_weights(struct check_ctx *ctx, struct check_case *c, const char *ldm,
                              const struct unet_config *cfg, struct weights **wp) {
    df_status st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, wp);
    if (st != DF_OK) return st;
    if (ldm) {
        struct wts_rename *table;
        int n;
        if ((st = unet_ldm_renames(cfg, ldm, &table, &n)) != DF_OK) return st;
        st = wts_load(*wp, c->file, ldm, table, n);
        free(table);
        return st;
    }
    for (size_t i = 0; i < sizeof diffusers_prefixes / sizeof diffusers_prefixes[0]; i++)
        if ((st = wts_load(*wp, c->file, diffusers_prefixes[i], NULL, 0)) != DF_OK) return st;
    return DF_OK;
}

struct io {
    float *data;
    struct cg_tensor *t;
};

df_status check_unet(struct check_ctx *ctx, struct check_case *c) {
    struct unet_config cfg;
    df_status st = unet_config_from_json(json_object_get(c->json, "config"), &cfg);
    if (st != DF_OK) return st;
    struct weights *w = NULL;
    struct unet_model m = {0};
    struct cg_graph *g = NULL;
    struct program *p = NULL;
    struct st_file *io_file = NULL;
    float *out = NULL;
    struct io in[N_IN] = {{0}};
    int n_in = cfg.addition_embed_type == UNET_ADD_NONE ? IN_TEXT_EMBEDS : N_IN;
    /* the LDM-layout case holds weights only: inputs and outputs come from
     * the diffusers case it names */
    struct check_case io = *c;
    const char *io_name = json_string_value(json_object_get(c->json, "uses_io_from"));
    if (io_name) {
        if ((st = check_open(ctx, io_name, &io_file)) != DF_OK) goto done;
        io.file = io_file;
    }
    const char *ldm = ldm_prefix(c->file);
    if (ldm) {
        struct unet_config manifest = cfg;
        if ((st = infer_config(c->file, ldm, &manifest, io.file, &cfg)) != DF_OK) goto done;
    }
    if ((st = load_weights(ctx, c, ldm, &cfg, &w)) != DF_OK) goto done;
    if ((st = unet_load(w, &cfg, &m)) != DF_OK) goto done;
    char first[256] = "";
    int unused = wts_report_unused(w, log_unused, first);
    if (unused) {
        st = df_error(DF_EFORMAT, "%d weight tensors the UNet did not use, e.g. \"%s\"", unused, first);
        goto done;
    }
    if ((st = cg_create(&g)) != DF_OK) goto done;
    for (int i = 0; i < n_in; i++) {
        const struct st_tensor *t = st_find(io.file, in_names[i]);
        if (!t || t->ndim > CG_MAX_DIMS) {
            st = df_error(DF_EFORMAT, "case %s: no usable tensor \"%s\"", c->name, in_names[i]);
            goto done;
        }
        if ((st = check_tensor(&io, in_names[i], &in[i].data, NULL)) != DF_OK) goto done;
        in[i].t = cg_input(g, in_names[i], t->ndim, t->shape);
    }
    struct unet_added_cond added = {.text_embeds = in[IN_TEXT_EMBEDS].t, .time_ids = in[IN_TIME_IDS].t};
    struct unet_outputs o;
    st = unet_forward(g, &m, in[IN_SAMPLE].t, in[IN_TIMESTEP].t, in[IN_CONTEXT].t,
                      n_in == N_IN ? &added : NULL, NULL, &o);
    if (st != DF_OK) goto done;
    cg_output(g, o.sample);
    if ((st = prog_create(ctx->dev, g, NULL, &p)) != DF_OK) goto done;
    if ((st = buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, 0x7fc00000u)) != DF_OK) goto done;
    for (int i = 0; i < n_in; i++)
        if ((st = prog_write(p, in[i].t, in[i].data)) != DF_OK) goto done;
    if ((st = prog_run(p)) != DF_OK) goto done;
    out = malloc(cg_nbytes(o.sample));
    if (!out) {
        st = df_error(DF_ENOMEM, "out of memory");
        goto done;
    }
    if ((st = prog_read(p, o.sample, out)) != DF_OK) goto done;
    st = check_compare(ctx, &io, "out.sample", out, cg_numel(o.sample));
    c->max_err = io.max_err;
    c->failed = io.failed;
    memcpy(c->detail, io.detail, sizeof c->detail);
done:
    prog_destroy(p);
    cg_destroy(g);
    unet_free(&m);
    wts_destroy(w);
    st_close(io_file);
    for (int i = 0; i < N_IN; i++) free(in[i].data);
    free(out);
    return st;
}
