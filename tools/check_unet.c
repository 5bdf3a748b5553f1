/* check_unet: UNet2DConditionModel cases, diffusers or LDM key layout. */
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


static void log_unused(const char *name, void *ctx) {
    char *first = ctx;
    if (!*first) snprintf(first, 256, "%s", name);
}

static df_status load_weights(struct check_ctx *ctx, struct check_case *c, const struct unet_config *cfg,
                              struct weights **wp) {
    df_status st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, wp);
    if (st != DF_OK) return st;
    /* LDM keys, with the usual prefix or bare */
    const char *ldm = st_find(c->file, LDM_PREFIX "input_blocks.0.0.weight") ? LDM_PREFIX
                      : st_find(c->file, "input_blocks.0.0.weight")       ? ""
                                                                            : NULL;
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
    const char *name;
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
    struct io in[3] = {{"in.sample", NULL, NULL}, {"in.timestep", NULL, NULL}, {"in.encoder_hidden_states", NULL, NULL}};
    /* the LDM-layout case holds weights only: inputs and outputs come from
     * the diffusers case it names */
    struct check_case io = *c;
    const char *io_name = json_string_value(json_object_get(c->json, "uses_io_from"));
    if (io_name) {
        if ((st = check_open(ctx, io_name, &io_file)) != DF_OK) goto done;
        io.file = io_file;
    }
    if ((st = load_weights(ctx, c, &cfg, &w)) != DF_OK) goto done;
    if ((st = unet_load(w, &cfg, &m)) != DF_OK) goto done;
    char first[256] = "";
    int unused = wts_report_unused(w, log_unused, first);
    if (unused) {
        st = df_error(DF_EFORMAT, "%d weight tensors the UNet did not use, e.g. \"%s\"", unused, first);
        goto done;
    }
    if ((st = cg_create(&g)) != DF_OK) goto done;
    for (int i = 0; i < 3; i++) {
        const struct st_tensor *t = st_find(io.file, in[i].name);
        if (!t || t->ndim > CG_MAX_DIMS) {
            st = df_error(DF_EFORMAT, "case %s: no usable tensor \"%s\"", c->name, in[i].name);
            goto done;
        }
        if ((st = check_tensor(&io, in[i].name, &in[i].data, NULL)) != DF_OK) goto done;
        in[i].t = cg_input(g, in[i].name, t->ndim, t->shape);
    }
    struct unet_outputs o;
    if ((st = unet_forward(g, &m, in[0].t, in[1].t, in[2].t, NULL, &o)) != DF_OK) goto done;
    cg_output(g, o.sample);
    if ((st = prog_create(ctx->dev, g, NULL, &p)) != DF_OK) goto done;
    if ((st = buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, 0x7fc00000u)) != DF_OK) goto done;
    for (int i = 0; i < 3; i++)
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
    for (int i = 0; i < 3; i++) free(in[i].data);
    free(out);
    return st;
}
