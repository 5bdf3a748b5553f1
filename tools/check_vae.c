/* check_vae: AutoencoderKL cases, in the diffusers and the LDM key layout.
 * Decode in.latent -> out.image; encode in.image -> out.latent_mean and
 * out.latent_logvar. An LDM-layout case takes its inputs and references
 * from the file named by "uses_io_from". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compute/program.h"
#include "models/vae.h"
#include "models/weights.h"

/* Where the VAE's keys start in `f` ("first_stage_model." in a full LDM
 * checkpoint, "" in a VAE file) and whether they use the LDM layout. */
static df_status find_layout(const struct st_file *f, char *prefix, size_t cap, bool *ldm) {
    static const char anchor[] = "encoder.conv_in.weight";
    size_t alen = strlen(anchor);
    for (size_t i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        size_t len = strlen(name);
        if (len < alen || strcmp(name + len - alen, anchor) != 0) continue;
        size_t plen = len - alen;
        if ((plen && name[plen - 1] != '.') || plen >= cap) continue; /* "decoder.conv_in" is not it */
        memcpy(prefix, name, plen);
        prefix[plen] = '\0';
        char probe[512];
        snprintf(probe, sizeof probe, "%sencoder.down.0.block.0.conv1.weight", prefix);
        *ldm = st_find(f, probe) != NULL;
        return DF_OK;
    }
    return df_error(DF_EFORMAT, "no tensor named \"encoder.conv_in.weight\" (or with a prefix)");
}

static df_status load_weights(struct weights *w, const struct st_file *f, const struct vae_config *cfg) {
    char prefix[256];
    bool ldm = false;
    df_status st = find_layout(f, prefix, sizeof prefix, &ldm);
    if (st != DF_OK) return st;
    struct wts_rename strip = {prefix, "", NULL}, *renames = &strip;
    int n = 1;
    if (ldm && (st = vae_ldm_renames(cfg, prefix, &renames, &n)) != DF_OK) return st;
    /* only the VAE's own tensors, not in.* / out.* or other components */
    static const char *const parts[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && st == DF_OK; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s%s", prefix, parts[i]);
        st = wts_load(w, f, p, renames, n);
    }
    if (renames != &strip) free(renames);
    return st;
}

/* Builds, poisons (NaN), runs one single-input graph and reads its output. */
static df_status run(struct check_ctx *ctx, struct cg_graph *g, struct cg_tensor *in, const float *x,
                     struct cg_tensor *out, float **result) {
    struct program *p = NULL;
    cg_output(g, out);
    df_status st = prog_create(ctx->dev, g, NULL, &p);
    if (st == DF_OK) st = buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, 0x7fc00000u);
    if (st == DF_OK) st = prog_write(p, in, x);
    if (st == DF_OK) st = prog_run(p);
    if (st == DF_OK && !(*result = malloc(cg_nbytes(out)))) st = df_error(DF_ENOMEM, "out of memory");
    if (st == DF_OK) st = prog_read(p, out, *result);
    prog_destroy(p);
    return st;
}

/* The io file's tensor `name` as fp32 with its 4-D shape. */
static df_status input4(struct check_case *io, const char *name, float **x, int64_t ne[4]) {
    const struct st_tensor *t = st_find(io->file, name);
    if (!t || t->ndim != 4) return df_error(DF_EFORMAT, "case %s: %s must be a 4-D tensor", io->name, name);
    for (int d = 0; d < 4; d++) ne[d] = t->shape[d];
    return check_tensor(io, name, x, NULL);
}

static df_status decode(struct check_ctx *ctx, const struct vae_model *m, struct check_case *io) {
    struct cg_graph *g = NULL;
    float *x = NULL, *y = NULL;
    int64_t ne[4];
    struct cg_tensor *out;
    df_status st = input4(io, "in.latent", &x, ne);
    if (st == DF_OK) st = cg_create(&g);
    if (st == DF_OK) {
        struct cg_tensor *in = cg_input(g, "latent", 4, ne);
        st = vae_decode(g, m, in, &out);
        if (st == DF_OK) st = run(ctx, g, in, x, out, &y);
    }
    if (st == DF_OK) st = check_compare(ctx, io, "out.image", y, cg_numel(out));
    cg_destroy(g);
    free(x);
    free(y);
    return st;
}

static df_status encode(struct check_ctx *ctx, const struct vae_model *m, struct check_case *io) {
    struct cg_graph *g = NULL;
    float *x = NULL, *y = NULL, *mean = NULL, *logvar = NULL;
    int64_t ne[4];
    struct cg_tensor *out = NULL;
    df_status st = input4(io, "in.image", &x, ne);
    if (st == DF_OK) st = cg_create(&g);
    if (st == DF_OK) {
        struct cg_tensor *in = cg_input(g, "image", 4, ne);
        st = vae_encode(g, m, in, &out);
        if (st == DF_OK) st = run(ctx, g, in, x, out, &y);
    }
    if (st == DF_OK) {
        int64_t b = out->ne[0], c = out->ne[1] / 2, h = out->ne[2], w = out->ne[3], n = b * c * h * w;
        mean = malloc((size_t)n * sizeof *mean);
        logvar = malloc((size_t)n * sizeof *logvar);
        if (!mean || !logvar) st = df_error(DF_ENOMEM, "out of memory");
        else vae_split_moments(y, b, c, h, w, mean, logvar);
        if (st == DF_OK) st = check_compare(ctx, io, "out.latent_mean", mean, n);
        if (st == DF_OK) st = check_compare(ctx, io, "out.latent_logvar", logvar, n);
    }
    cg_destroy(g);
    free(x);
    free(y);
    free(mean);
    free(logvar);
    return st;
}

df_status check_vae(struct check_ctx *ctx, struct check_case *c) {
    struct vae_config cfg;
    df_status st = vae_config_from_json(json_object_get(c->json, "config"), &cfg);
    if (st != DF_OK) return st;
    /* references live in c->file or in the file the case names; check_compare
     * reads and records through a case, so compare through a copy */
    struct check_case io = *c;
    const char *io_name = json_string_value(json_object_get(c->json, "uses_io_from"));
    if (io_name && (st = check_open(ctx, io_name, &io.file)) != DF_OK) return st;
    struct weights *w = NULL;
    struct vae_model m = {0};
    if ((st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, &w)) != DF_OK) goto done;
    if ((st = load_weights(w, c->file, &cfg)) != DF_OK) goto done;
    if ((st = vae_load(w, &cfg, &m)) != DF_OK) goto done;
    if (st_find(io.file, "in.latent") && (st = decode(ctx, &m, &io)) != DF_OK) goto done;
    if (st_find(io.file, "in.image") && (st = encode(ctx, &m, &io)) != DF_OK) goto done;
    if (!st_find(io.file, "in.latent") && !st_find(io.file, "in.image"))
        st = df_error(DF_EFORMAT, "case %s: neither in.latent nor in.image", c->name);
done:
    c->max_err = io.max_err;
    c->failed = io.failed;
    memcpy(c->detail, io.detail, sizeof c->detail);
    if (io.file != c->file) st_close(io.file);
    vae_free(&m);
    wts_destroy(w);
    return st;
}
