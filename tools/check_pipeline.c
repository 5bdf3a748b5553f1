/* check_pipeline: StableDiffusionPipeline / Img2ImgPipeline cases — the
 * whole request path from prompt and seed to latents and image. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/pipeline.h"

static df_status component_path(struct check_ctx *ctx, const json_t *uses, const char *key, char *out, size_t n) {
    const char *file = json_string_value(json_object_get(uses, key));
    if (!file) return df_error(DF_EFORMAT, "uses_weights_from has no %s", key);
    snprintf(out, n, "%s/%s", ctx->dir, file);
    return DF_OK;
}

/* The config of the case whose weights live in `file` (the component's own
 * case: shapes alone cannot give a tiny model's head counts). */
static const json_t *config_of(struct check_ctx *ctx, const char *path) {
    const char *file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    size_t i;
    const json_t *cs;
    json_array_foreach(json_object_get(ctx->manifest, "cases"), i, cs) {
        const char *f = json_string_value(json_object_get(cs, "file"));
        if (f && strcmp(f, file) == 0) return json_object_get(cs, "config");
    }
    return NULL;
}

/* The pair [a, b] under `key` of a case, into out (0s when absent). */
static void int_pair(const json_t *j, const char *key, int out[2]) {
    const json_t *v = json_object_get(j, key);
    for (int k = 0; k < 2; k++) out[k] = (int)json_integer_value(json_array_get(v, (size_t)k));
}

df_status check_pipeline(struct check_ctx *ctx, struct check_case *c) {
    const json_t *j = c->json;
    if (json_object_get(j, "controlnet_conditioning_scale") || strstr(c->name, "controlnet"))
        return df_error(DF_EUNSUPPORTED, "ControlNet pipelines come with the ControlNet issue");
    const json_t *uses = json_object_get(j, "uses_weights_from"), *configs = json_object_get(j, "config");
    const json_t *prefixes = json_object_get(j, "weight_prefixes");
    char paths[COMP_COUNT][4096], prefix[COMP_COUNT][64];
    struct model_options mo = {.precision = ctx->fp16 ? WTS_F16 : WTS_F32};
    df_status st = DF_OK;
    /* each component from its own case's file, or from this case's file
     * under a prefix ("vae." for SDXL's); configs from this case, else from
     * the component's case (shapes alone cannot give a tiny model's heads) */
    for (int k = 0; k < COMP_COUNT; k++) {
        const char *name = comp_table[k].name;
        snprintf(prefix[k], sizeof prefix[k], "%s.", name);
        if (json_object_get(uses, name)) {
            if ((st = component_path(ctx, uses, name, paths[k], sizeof paths[k])) != DF_OK) return st;
            char *space = strchr(paths[k], ' '); /* "clip_l_tiny.safetensors (text_projection.weight UNUSED ...)" */
            if (space) *space = 0;
        } else if (json_object_get(prefixes, prefix[k])) {
            snprintf(paths[k], sizeof paths[k], "%s/%s", ctx->dir, json_string_value(json_object_get(j, "file")));
            mo.component_prefix[k] = prefix[k];
        } else {
            continue;
        }
        mo.component[k] = paths[k];
        const json_t *cfg = json_object_get(configs, name);
        mo.component_config[k] = json_is_object(cfg) ? cfg : config_of(ctx, paths[k]);
    }
    mo.family = mo.component[COMP_TEXT_ENCODER_2] ? "sdxl" : "sd1";
    struct model *m = NULL;
    struct pipe_worker *w = NULL;
    struct pipe_result res = {0};
    float *init = NULL, *chw = NULL;
    if ((st = model_load(ctx->dev, &mo, &m)) != DF_OK) goto done;
    const json_t *sched = json_object_get(j, "scheduler_config");
    if (sched && (st = smp_config_from_json(sched, &m->scheduler)) != DF_OK) goto done;
    const struct st_tensor *image = st_find(c->file, "out.image");
    if (!image || image->ndim != 4) {
        st = df_error(DF_EFORMAT, "case %s has no out.image [B, H, W, 3]", c->name);
        goto done;
    }
    struct pipe_request req = {
        .prompt = (char *)json_string_value(json_object_get(j, "prompt")),
        .negative_prompt = (char *)json_string_value(json_object_get(j, "negative_prompt")),
        .height = (int)image->shape[1],
        .width = (int)image->shape[2],
        .steps = check_config_int(j, "num_inference_steps", 0),
        .batch = 1,
        .cfg_scale = (float)check_config_real(j, "guidance_scale", 7.5),
        .sampler = SMP_EULER,
        .seed = (int64_t)check_config_real(j, "latents_seed", -2),
        .clip_skip = 1,
        .rng = RNG_TORCH_CPU,
    };
    int_pair(j, "original_size", req.original_size);
    int_pair(j, "crops_coords_top_left", req.crops_coords_top_left);
    int_pair(j, "target_size", req.target_size);
    if (st_find(c->file, "in.init_image")) {
        int64_t n;
        if ((st = check_tensor(c, "in.init_image", &chw, &n)) != DF_OK) goto done;
        int64_t hw = (int64_t)req.width * req.height;
        if (n != 3 * hw) {
            st = df_error(DF_EFORMAT, "in.init_image has %lld values for %dx%d", (long long)n, req.width, req.height);
            goto done;
        }
        init = malloc((size_t)n * sizeof *init);
        if (!init) { st = df_error(DF_ENOMEM, "out of memory"); goto done; }
        for (int64_t i = 0; i < hw; i++)
            for (int ch = 0; ch < 3; ch++) init[i * 3 + ch] = chw[ch * hw + i]; /* NCHW -> HWC */
        req.init_image = init;
        req.strength = (float)check_config_real(j, "strength", 0);
    }
    int s = vae_scale(&m->vae.cfg);
    if ((st = pipe_worker_create(ctx->dev, &w)) != DF_OK) goto done;
    if ((st = pipe_generate(w, m, &req, NULL, &res)) != DF_OK) goto done;
    if ((st = check_compare(ctx, c, "out.latents", res.latents,
                            (int64_t)m->family->latent_channels(m) * (req.height / s) * (req.width / s))) != DF_OK)
        goto done;
    st = check_compare(ctx, c, "out.image", res.images, (int64_t)req.width * req.height * 3);
done:
    pipe_result_free(&res);
    pipe_worker_destroy(w);
    model_destroy(m);
    free(init);
    free(chw);
    return st;
}
