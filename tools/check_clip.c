/* check_clip: CLIPTextModel(WithProjection) cases. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compute/program.h"
#include "models/weights.h"

df_status check_clip_model(struct check_ctx *ctx, struct check_case *c, const struct clip_model *m) {
    const struct clip_config *cfg = &m->cfg;
    struct cg_graph *g = NULL;
    struct program *p = NULL;
    float *ids = NULL, *out = NULL;
    int64_t n;
    df_status st = check_tensor(c, "in.input_ids", &ids, &n);
    if (st != DF_OK) return st;
    int64_t t = cfg->max_position_embeddings, b = n / t;
    float eos[64];
    if (b > 64 || b * t != n) {
        st = df_error(DF_EINVAL, "in.input_ids: %lld ids are not a batch (<= 64) of %lld", (long long)n, (long long)t);
        goto done;
    }
    /* pooled output: the row of the first highest id (the end token) */
    for (int64_t i = 0; i < b; i++) {
        int64_t best = 0;
        for (int64_t j = 1; j < t; j++)
            if (ids[i * t + j] > ids[i * t + best]) best = j;
        eos[i] = (float)(i * t + best);
    }
    if ((st = cg_create(&g)) != DF_OK) goto done;
    struct cg_tensor *in_ids = cg_input(g, "input_ids", 2, (int64_t[]){b, t});
    struct cg_tensor *in_eos = cg_input(g, "eos_rows", 1, &b);
    struct clip_outputs o;
    if ((st = clip_forward(g, m, in_ids, in_eos, &o)) != DF_OK) goto done;
    struct { const char *name; struct cg_tensor *t; } outs[] = {
        {"out.last_hidden_state", o.last_hidden_state},
        {"out.penultimate_hidden_state", o.penultimate},
        {"out.pooler_output", o.pooled},
        {"out.text_embeds", o.text_embeds},
    };
    int nouts = sizeof outs / sizeof outs[0];
    for (int i = 0; i < nouts; i++)
        if (outs[i].t && st_find(c->file, outs[i].name)) cg_output(g, outs[i].t);
    if ((st = prog_create(ctx->dev, g, NULL, &p)) != DF_OK) goto done;
    buf_fill(prog_arena(p), 0, prog_arena_bytes(p) & ~3ull, 0x7fc00000u);
    if ((st = prog_write(p, in_ids, ids)) != DF_OK || (st = prog_write(p, in_eos, eos)) != DF_OK) goto done;
    if ((st = prog_run(p)) != DF_OK) goto done;
    for (int i = 0; i < nouts; i++) {
        if (!st_find(c->file, outs[i].name)) continue;
        if (!outs[i].t) {
            st = df_error(DF_EINVAL, "the model computes no %s", outs[i].name);
            goto done;
        }
        out = realloc(out, cg_nbytes(outs[i].t));
        if ((st = prog_read(p, outs[i].t, out)) != DF_OK) goto done;
        if ((st = check_compare(ctx, c, outs[i].name, out, cg_numel(outs[i].t))) != DF_OK) goto done;
    }
done:
    prog_destroy(p);
    cg_destroy(g);
    free(ids);
    free(out);
    return st;
}

df_status check_clip_text(struct check_ctx *ctx, struct check_case *c) {
    struct clip_config cfg;
    df_status st = clip_config_from_json(json_object_get(c->json, "config"), &cfg);
    if (st != DF_OK) return st;
    cfg.has_projection = st_find(c->file, "text_projection.weight") != NULL;
    struct weights *w = NULL;
    struct clip_model m = {0};
    if ((st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, &w)) != DF_OK) goto done;
    if ((st = clip_load_weights(w, c->file, "", CLIP_LAYOUT_TRANSFORMERS)) != DF_OK) goto done;
    if ((st = clip_load(w, &cfg, &m)) != DF_OK) goto done;
    st = check_clip_model(ctx, c, &m);
done:
    clip_free(&m);
    wts_destroy(w);
    return st;
}
