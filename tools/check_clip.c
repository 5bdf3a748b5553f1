/* check_clip: CLIPTextModel(WithProjection) cases. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compute/program.h"
#include "models/clip.h"
#include "models/weights.h"

#define EOS_ID 49407

df_status check_clip_text(struct check_ctx *ctx, struct check_case *c) {
    struct clip_config cfg;
    df_status st = clip_config_from_json(json_object_get(c->json, "config"), &cfg);
    if (st != DF_OK) return st;
    cfg.has_projection = st_find(c->file, "text_projection.weight") != NULL;
    struct weights *w = NULL;
    struct clip_model m = {0};
    struct cg_graph *g = NULL;
    struct program *p = NULL;
    float *ids = NULL, *out = NULL;
    if ((st = wts_create(ctx->dev, ctx->fp16 ? WTS_F16 : WTS_F32, &w)) != DF_OK) goto done;
    if ((st = wts_load(w, c->file, "text_model.", NULL, 0)) != DF_OK) goto done;
    if ((st = wts_load(w, c->file, "text_projection.", NULL, 0)) != DF_OK) goto done;
    if ((st = clip_load(w, &cfg, &m)) != DF_OK) goto done;
    int64_t n;
    if ((st = check_tensor(c, "in.input_ids", &ids, &n)) != DF_OK) goto done;
    int64_t t = cfg.max_position_embeddings, b = n / t;
    float eos[64];
    if (b > 64) {
        st = df_error(DF_EINVAL, "batch %lld too large", (long long)b);
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
    if ((st = clip_forward(g, &m, in_ids, in_eos, &o)) != DF_OK) goto done;
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
        if (!outs[i].t || !st_find(c->file, outs[i].name)) continue;
        out = realloc(out, cg_nbytes(outs[i].t));
        if ((st = prog_read(p, outs[i].t, out)) != DF_OK) goto done;
        if ((st = check_compare(ctx, c, outs[i].name, out, cg_numel(outs[i].t))) != DF_OK) goto done;
    }
done:
    prog_destroy(p);
    cg_destroy(g);
    clip_free(&m);
    wts_destroy(w);
    free(ids);
    free(out);
    return st;
}
