/* pipeline: prompt -> the family's conditioning -> sampler loop over one
 * replayed denoiser program -> VAE decode, with diffusers' order of random
 * draws. Nothing here knows which family runs. */
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/program.h"
#include "vae_tiles.h"
#include "../common/clock.h"

/* One recorded pass and the tensors the host talks to. */
struct pass {
    struct cg_graph *g;
    struct program *p;
    struct cg_tensor *in[1], *out;         /* VAE passes */
    struct fam_text_pass text;
    struct fam_denoise_pass denoise;
    uint64_t bytes;
};

/* What the recorded passes were built for; a request with the same key
 * reuses them, so a steady stream of same-size requests records nothing. */
struct pass_key {
    const struct model *model;
    uint64_t model_serial;       /* another model can be loaded at a freed one's address */
    int text_batch, unet_batch, latent_h, latent_w, clip_skip;
    int encode;                  /* int: no padding, the key is compared with memcmp */
};

struct pipe_worker {
    struct device *dev;
    struct buf *arena;
    uint64_t vae_budget;         /* 0: 3/4 of the device's largest allocation */
    struct pass_key key;
    struct pass text, denoise, decode, encode;
    /* the VAE passes run over tiles of these plans (one tile when the
     * whole image fits the budget) */
    struct vae_tiles decode_tiles, encode_tiles;
    /* an fp32 copy of a model's fp16 VAE, made when a decode overflowed,
     * and the decode pass recorded on it */
    uint64_t vae32_serial;
    struct weights *vae32_weights;
    struct vae_model vae32;
    struct pass decode32;
};

const char *pipe_stage_name(enum pipe_stage s) {
    switch (s) {
    case PIPE_QUEUED: return "queued";
    case PIPE_TEXT: return "text_encoding";
    case PIPE_ENCODE: return "image_encoding";
    case PIPE_DENOISE: return "denoising";
    case PIPE_DECODE: return "decoding";
    case PIPE_DONE: return "done";
    }
    return "?";
}

static void pass_free(struct pass *p) {
    prog_destroy(p->p);
    cg_destroy(p->g);
    memset(p, 0, sizeof *p);
}

static void passes_free(struct pipe_worker *w) {
    pass_free(&w->text);
    pass_free(&w->denoise);
    pass_free(&w->decode);
    pass_free(&w->encode);
    pass_free(&w->decode32);
    memset(&w->key, 0, sizeof w->key);
}

static void vae32_free(struct pipe_worker *w) {
    pass_free(&w->decode32);
    vae_free(&w->vae32);
    wts_destroy(w->vae32_weights);
    w->vae32_weights = NULL;
    w->vae32_serial = 0;
}

void pipe_worker_set_vae_budget(struct pipe_worker *w, uint64_t bytes) {
    w->vae_budget = bytes;
    memset(&w->key, 0, sizeof w->key); /* re-plan the VAE passes */
}

df_status pipe_worker_create(struct device *dev, struct pipe_worker **out) {
    struct pipe_worker *w = calloc(1, sizeof *w);
    if (!w) return df_error(DF_ENOMEM, "out of memory");
    w->dev = dev;
    *out = w;
    return DF_OK;
}

void pipe_worker_destroy(struct pipe_worker *w) {
    if (!w) return;
    passes_free(w);
    vae32_free(w);
    buf_destroy(w->arena);
    free(w);
}

/* ---- recording ---------------------------------------------------------- */

static df_status record_text(struct pass *p, const struct model *m, int batch, int clip_skip) {
    df_status st = cg_create(&p->g);
    if (st != DF_OK) return st;
    if ((st = m->family->record_text(p->g, m, batch, clip_skip, &p->text)) != DF_OK) return st;
    cg_output(p->g, p->text.context);
    if (p->text.pooled) cg_output(p->g, p->text.pooled);
    return cg_plan(p->g, &p->bytes);
}

static df_status record_denoiser(struct pass *p, const struct model *m, int batch, int h, int w) {
    df_status st = cg_create(&p->g);
    if (st != DF_OK) return st;
    if ((st = m->family->record_denoiser(p->g, m, batch, h, w, &p->denoise)) != DF_OK) return st;
    cg_output(p->g, p->denoise.out);
    return cg_plan(p->g, &p->bytes);
}

static df_status record_decode(struct pass *p, const struct vae_model *vae, int h, int w) {
    df_status st = cg_create(&p->g);
    if (st != DF_OK) return st;
    p->in[0] = cg_input(p->g, "latent", 4, (int64_t[]){1, vae->cfg.latent_channels, h, w});
    if ((st = vae_decode(p->g, vae, p->in[0], &p->out)) != DF_OK) return st;
    cg_output(p->g, p->out);
    return cg_plan(p->g, &p->bytes);
}

static df_status record_encode(struct pass *p, const struct model *m, int h, int w) {
    df_status st = cg_create(&p->g);
    if (st != DF_OK) return st;
    p->in[0] = cg_input(p->g, "image", 4, (int64_t[]){1, m->vae.cfg.in_channels, h, w}); /* image px */
    if ((st = vae_encode(p->g, &m->vae, p->in[0], &p->out)) != DF_OK) return st;
    cg_output(p->g, p->out);
    return cg_plan(p->g, &p->bytes);
}

/* The VAE's tile plans for a latent of lh x lw: the largest tiles whose
 * activations fit the budget (whole images when they fit), so a 1024^2
 * SDXL decode runs on a device whose allocations stop at 2 GiB. */
static df_status plan_vae(struct pipe_worker *w, const struct model *m, int lh, int lw, bool encode) {
    const struct vae_config *v = &m->vae.cfg;
    uint64_t budget = w->vae_budget ? w->vae_budget : dev_caps(w->dev)->max_allocation_size / 4 * 3;
    int s = vae_scale(v), tile, overlap;
    df_status st = vae_tiles_pick(lh, lw, 8, budget, vae_decode_bytes, (void *)&m->vae, &tile, &overlap);
    if (st == DF_OK)
        st = vae_tiles_decode_plan(v->latent_channels, v->out_channels, s, lh, lw, tile, overlap, &w->decode_tiles);
    if (st != DF_OK || !encode) return st;
    st = vae_tiles_pick((int64_t)lh * s, (int64_t)lw * s, 8 * s, budget, vae_encode_bytes, (void *)&m->vae, &tile,
                        &overlap);
    if (st == DF_OK)
        st = vae_tiles_encode_plan(v->in_channels, 2 * v->latent_channels, s, (int64_t)lh * s, (int64_t)lw * s, tile,
                                   overlap, &w->encode_tiles);
    return st;
}

/* Records (or reuses) every pass the request needs and sizes the arena for
 * the largest: all device memory a job needs is claimed here, before any
 * step runs, and a pass too large for the device fails here. */
static df_status prepare(struct pipe_worker *w, const struct pass_key *key) {
    if (memcmp(&w->key, key, sizeof *key) == 0 && w->denoise.p) return DF_OK;
    passes_free(w);
    const struct model *m = key->model;
    df_status st = record_text(&w->text, m, key->text_batch, key->clip_skip);
    if (st == DF_OK) st = record_denoiser(&w->denoise, m, key->unet_batch, key->latent_h, key->latent_w);
    if (st == DF_OK) st = plan_vae(w, m, key->latent_h, key->latent_w, key->encode);
    if (st == DF_OK)
        st = record_decode(&w->decode, &m->vae, (int)w->decode_tiles.tile_h, (int)w->decode_tiles.tile_w);
    if (st == DF_OK && key->encode)
        st = record_encode(&w->encode, m, (int)w->encode_tiles.tile_h, (int)w->encode_tiles.tile_w);
    if (st != DF_OK) goto fail;
    uint64_t need = w->text.bytes;
    struct pass *all[] = {&w->denoise, &w->decode, &w->encode};
    for (int i = 0; i < 3; i++)
        if (all[i]->bytes > need) need = all[i]->bytes;
    if (!w->arena || buf_size(w->arena) < need) {
        buf_destroy(w->arena);
        w->arena = NULL;
        if ((st = buf_create(w->dev, need, &w->arena)) != DF_OK) {
            st = df_error(st, "activations for %dx%d need %.1f MiB of device memory: %s", key->latent_w * 8,
                          key->latent_h * 8, (double)need / (1 << 20), df_errmsg());
            goto fail;
        }
    }
    struct prog_options opt = {.arena = w->arena};
    struct pass *passes[] = {&w->text, &w->denoise, &w->decode, &w->encode};
    for (int i = 0; i < 4; i++)
        if (passes[i]->g && (st = prog_create(w->dev, passes[i]->g, &opt, &passes[i]->p)) != DF_OK) goto fail;
    w->key = *key;
    return DF_OK;
fail:
    passes_free(w);
    return st;
}

/* ---- request ------------------------------------------------------------ */

static df_status check_request(const struct model *m, const struct pipe_request *r) {
    int s = vae_scale(&m->vae.cfg), max_skip = m->family->max_clip_skip(m);
    if (!r->prompt) return df_error(DF_EINVAL, "prompt: missing");
    if (r->width < s || r->height < s || r->width % s || r->height % s)
        return df_error(DF_EINVAL, "width/height: %dx%d is not a positive multiple of %d", r->width, r->height, s);
    if (r->steps < 1 || r->steps > 1000) return df_error(DF_EINVAL, "steps: %d is outside 1..1000", r->steps);
    if (r->batch < 1 || r->batch > 64) return df_error(DF_EINVAL, "n: %d is outside 1..64", r->batch);
    if (!isfinite(r->cfg_scale) || r->cfg_scale < 0 || r->cfg_scale > 100)
        return df_error(DF_EINVAL, "cfg_scale: %g is outside 0..100", r->cfg_scale);
    if (r->clip_skip < 0 || r->clip_skip > max_skip)
        return df_error(DF_EINVAL, "clip_skip: %d is outside 1..%d", r->clip_skip, max_skip);
    if (r->seed < -1) return df_error(DF_EINVAL, "seed: %lld (use -1 for a random seed)", (long long)r->seed);
    if (r->init_image && !(r->strength > 0 && r->strength <= 1))
        return df_error(DF_EINVAL, "strength: %g is outside (0, 1]", r->strength);
    return DF_OK;
}

static bool cancelled(const struct pipe_hooks *h) { return h && h->cancel && atomic_load(h->cancel); }

static void progress(const struct pipe_hooks *h, enum pipe_stage stage, int step, int steps, double t0) {
    if (h && h->progress) h->progress(h->progress_ctx, stage, step, steps, clock_now() - t0);
}

/* Conditioning for the prompts [negative, prompt] (only the prompt without
 * CFG): context [n_texts, context_len, context_dim], pooled [n_texts, P]. */
static df_status encode_text(struct pipe_worker *w, const struct model *m, const struct pipe_request *r, bool cfg,
                             const struct fam_cond *fc, float *context, float *pooled) {
    const struct fam_text_pass *io = &w->text.text;
    const char *texts[2] = {r->negative_prompt ? r->negative_prompt : "", r->prompt};
    int first = cfg ? 0 : 1;
    df_status st = DF_OK;
    enum { MAX_SEQ = 512 };
    if (fc->seq_len > MAX_SEQ)
        return df_error(DF_EUNSUPPORTED, "text encoders of %d tokens (at most %d)", fc->seq_len, MAX_SEQ);
    for (int k = 0; k < fc->n_encoders && st == DF_OK; k++) {
        float ids[2 * MAX_SEQ], rows[2];
        for (int i = first; i < 2 && st == DF_OK; i++) {
            int32_t tok[MAX_SEQ];
            int eos;
            if ((st = m->family->tokenize(m, k, texts[i], tok, &eos)) != DF_OK)
                return df_error(st, "%s: %s", i ? "prompt" : "negative_prompt", df_errmsg());
            for (int j = 0; j < fc->seq_len; j++) ids[(i - first) * fc->seq_len + j] = (float)tok[j];
            rows[i - first] = (float)((i - first) * fc->seq_len + eos);
        }
        st = prog_write(w->text.p, io->ids[k], ids);
        if (st == DF_OK && io->eos_rows[k]) st = prog_write(w->text.p, io->eos_rows[k], rows);
    }
    if (st == DF_OK) st = prog_run(w->text.p);
    if (st == DF_OK) st = prog_read(w->text.p, io->context, context);
    if (st == DF_OK && io->pooled) st = prog_read(w->text.p, io->pooled, pooled);
    /* diffusers' force_zeros_for_empty_prompt: no negative prompt given
     * means zero conditioning, not the encoding of "" */
    if (st == DF_OK && cfg && !r->negative_prompt && m->family->zero_empty_negative(m)) {
        memset(context, 0, (size_t)fc->context_len * fc->context_dim * sizeof *context);
        if (io->pooled) memset(pooled, 0, (size_t)fc->pooled_dim * sizeof *pooled);
    }
    return st;
}

/* One VAE pass over one tile: the vae_tile_fn of both VAE passes. */
static df_status run_tile(void *ctx, const float *in, float *out) {
    struct pass *p = ctx;
    df_status st = prog_write(p->p, p->in[0], in);
    if (st == DF_OK) st = prog_run(p->p);
    if (st == DF_OK) st = prog_read(p->p, p->out, out);
    return st;
}

/* VAE encode of the init image -> posterior mean and log-variance. */
static df_status encode_image(struct pipe_worker *w, const struct model *m, const struct pipe_request *r,
                              float *mean, float *logvar) {
    const struct vae_tiles *t = &w->encode_tiles;
    int64_t hw = (int64_t)r->width * r->height, c = m->vae.cfg.latent_channels;
    int64_t oh = vae_tiles_out_h(t), ow = vae_tiles_out_w(t);
    float *chw = malloc((size_t)hw * 3 * sizeof *chw), *moments = malloc((size_t)(2 * c * oh * ow) * sizeof *moments);
    df_status st = DF_OK;
    if (!chw || !moments) st = df_error(DF_ENOMEM, "out of memory");
    for (int64_t i = 0; st == DF_OK && i < hw; i++)
        for (int ch = 0; ch < 3; ch++) chw[ch * hw + i] = 2.0f * r->init_image[i * 3 + ch] - 1.0f; /* [0,1] -> [-1,1] */
    if (st == DF_OK) st = vae_tiles_run(t, chw, run_tile, &w->encode, moments);
    if (st == DF_OK) vae_split_moments(moments, 1, c, oh, ow, mean, logvar);
    free(chw);
    free(moments);
    return st;
}

static df_status decode_with(struct pipe_worker *w, struct pass *pass, const struct vae_config *v, const float *x,
                             size_t n, float *hwc) {
    const struct vae_tiles *t = &w->decode_tiles;
    int64_t hw = vae_tiles_out_h(t) * vae_tiles_out_w(t);
    float *z = malloc(n * sizeof *z), *img = malloc((size_t)(v->out_channels * hw) * sizeof *img);
    df_status st = DF_OK;
    if (!z || !img) st = df_error(DF_ENOMEM, "out of memory");
    for (size_t i = 0; st == DF_OK && i < n; i++) z[i] = x[i] / v->scaling_factor + v->shift_factor;
    if (st == DF_OK) st = vae_tiles_run(t, z, run_tile, pass, img);
    if (st == DF_OK) {
        /* VaeImageProcessor.postprocess: (x/2 + 0.5) clamped, NCHW -> NHWC.
         * A non-finite pixel is never an image. */
        for (int64_t i = 0; i < hw && st == DF_OK; i++)
            for (int ch = 0; ch < 3; ch++) {
                float p = img[ch * hw + i] / 2 + 0.5f;
                if (!isfinite(p)) {
                    st = df_error(DF_ENUMERIC, "the VAE decoded a non-finite value");
                    break;
                }
                hwc[i * 3 + ch] = p < 0 ? 0 : p > 1 ? 1 : p;
            }
    }
    free(z);
    free(img);
    return st;
}

/* A decode that overflows with fp16 VAE weights is done once more with the
 * VAE reloaded in fp32 (kept by the worker for later requests); one that
 * overflows in fp32 too fails the job. */
static df_status decode_latent(struct pipe_worker *w, const struct model *m, const float *x, size_t n, float *hwc,
                               bool *retried) {
    df_status st = decode_with(w, &w->decode, &m->vae.cfg, x, n, hwc);
    if (st != DF_ENUMERIC || m->vae_fp32 || m->precision == WTS_F32) goto out;
    *retried = true;
    if (w->vae32_serial != m->serial) {
        vae32_free(w);
        if ((st = model_load_vae_fp32(m, w->dev, &w->vae32_weights, &w->vae32)) != DF_OK)
            return df_error(st, "reloading the VAE in fp32 after an fp16 overflow: %s", df_errmsg());
        w->vae32_serial = m->serial;
    }
    if (!w->decode32.p) {
        struct prog_options opt = {.arena = w->arena};
        st = record_decode(&w->decode32, &w->vae32, (int)w->decode_tiles.tile_h, (int)w->decode_tiles.tile_w);
        if (st == DF_OK) st = prog_create(w->dev, w->decode32.g, &opt, &w->decode32.p);
        if (st != DF_OK) {
            pass_free(&w->decode32);
            return st;
        }
    }
    st = decode_with(w, &w->decode32, &w->vae32.cfg, x, n, hwc);
out:
    if (st == DF_ENUMERIC)
        return df_error(st, "the VAE decoded a non-finite value%s (the latent diverged: try fewer steps, a lower "
                            "cfg_scale or another sampler)", *retried ? ", with fp32 weights too" : "");
    return st;
}

struct run {
    int n;                       /* images */
    size_t latent;               /* floats per image latent */
    struct rng **rng;
    struct smp_sampler **smp;
    float *x, *xin, *eps, *noise, *out;
    float *embeds, *pooled_embeds; /* per text: [negative, prompt] */
    float *context, *pooled, *time_ids, *timesteps; /* per denoiser batch row */
    float *mean, *logvar;
};

static void run_free(struct run *r) {
    for (int i = 0; i < r->n; i++) {
        if (r->rng) rng_destroy(r->rng[i]);
        if (r->smp) smp_destroy(r->smp[i]);
    }
    float *bufs[] = {r->x, r->xin, r->eps, r->noise, r->out, r->embeds, r->pooled_embeds, r->context, r->pooled,
                     r->time_ids, r->timesteps, r->mean, r->logvar};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(r->rng);
    free(r->smp);
}

static df_status run_alloc(struct run *r, const struct fam_cond *fc, size_t ub) {
    size_t ctx = (size_t)fc->context_len * fc->context_dim, pd = (size_t)fc->pooled_dim + 1;
    size_t ids = (size_t)fc->n_time_ids + 1;
    r->rng = calloc((size_t)r->n, sizeof *r->rng);
    r->smp = calloc((size_t)r->n, sizeof *r->smp);
    r->x = malloc((size_t)r->n * r->latent * sizeof(float));
    r->xin = malloc(ub * r->latent * sizeof(float));
    r->eps = malloc(r->latent * sizeof(float));
    r->noise = malloc(r->latent * sizeof(float));
    r->out = malloc(ub * r->latent * sizeof(float));
    r->embeds = malloc(2 * ctx * sizeof(float));
    r->pooled_embeds = malloc(2 * pd * sizeof(float));
    r->context = malloc(ub * ctx * sizeof(float));
    r->pooled = malloc(ub * pd * sizeof(float));
    r->time_ids = malloc(ub * ids * sizeof(float));
    r->timesteps = malloc(ub * sizeof(float));
    r->mean = malloc(r->latent * sizeof(float));
    r->logvar = malloc(r->latent * sizeof(float));
    if (!r->rng || !r->smp || !r->x || !r->xin || !r->eps || !r->noise || !r->out || !r->embeds ||
        !r->pooled_embeds || !r->context || !r->pooled || !r->time_ids || !r->timesteps || !r->mean || !r->logvar)
        return df_error(DF_ENOMEM, "out of host memory");
    return DF_OK;
}

df_status pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                        const struct pipe_hooks *hooks, struct pipe_result *res) {
    memset(res, 0, sizeof *res);
    df_status st = check_request(m, req);
    if (st != DF_OK) return st;
    double t0 = clock_now(), t;
    dev_memory_reset_peak(w->dev);
    bool cfg = req->cfg_scale > 1.0f;
    int n = req->batch, s = vae_scale(&m->vae.cfg);
    int lh = req->height / s, lw = req->width / s, lc = m->family->latent_channels(m);
    struct pass_key key = {m, m->serial, cfg ? 2 : 1, cfg ? 2 * n : n, lh, lw, req->clip_skip, req->init_image != NULL};
    if ((st = prepare(w, &key)) != DF_OK) return st;
    struct fam_cond fc;
    m->family->cond(m, &fc);

    struct run r = {.n = n, .latent = (size_t)lc * lh * lw};
    size_t ub = (size_t)key.unet_batch, ctx = (size_t)fc.context_len * fc.context_dim;
    size_t pd = (size_t)fc.pooled_dim, nid = (size_t)fc.n_time_ids;
    if ((st = run_alloc(&r, &fc, ub)) != DF_OK) goto done;
    res->count = n;
    res->width = req->width;
    res->height = req->height;
    res->seeds = calloc((size_t)n, sizeof *res->seeds);
    res->images = malloc((size_t)n * req->width * req->height * 3 * sizeof(float));
    res->latents = malloc((size_t)n * r.latent * sizeof(float));
    if (!res->seeds || !res->images || !res->latents) {
        st = df_error(DF_ENOMEM, "out of host memory");
        goto done;
    }
    uint64_t seed = req->seed < 0 ? rng_random_seed() : (uint64_t)req->seed;

    /* text: denoiser rows are [uncond x n, cond x n] */
    progress(hooks, PIPE_TEXT, 0, 0, t0);
    t = clock_now();
    if ((st = encode_text(w, m, req, cfg, &fc, r.embeds, r.pooled_embeds)) != DF_OK) goto done;
    if (fc.n_time_ids) m->family->time_ids(m, req, r.time_ids);
    for (size_t b = 0; b < ub; b++) {
        size_t which = cfg ? (b < (size_t)n ? 0 : 1) : 0;
        memcpy(r.context + b * ctx, r.embeds + which * ctx, ctx * sizeof(float));
        memcpy(r.pooled + b * pd, r.pooled_embeds + which * pd, pd * sizeof(float));
        if (b) memcpy(r.time_ids + b * nid, r.time_ids, nid * sizeof(float)); /* the same for both halves */
    }
    res->seconds_text = clock_now() - t;
    if (cancelled(hooks)) { st = df_error(DF_ECANCELLED, "cancelled"); goto done; }

    /* samplers and generators: image i has its own, seeded seed + i */
    struct smp_config sc = m->scheduler;
    if (req->schedule != SMP_SCHEDULE_DEFAULT) sc.schedule = req->schedule;
    for (int i = 0; i < n; i++) {
        res->seeds[i] = seed + (uint64_t)i;
        if ((st = rng_create(req->rng, res->seeds[i], &r.rng[i])) != DF_OK) goto done;
        if ((st = smp_create(req->sampler, &sc, req->steps, &r.smp[i])) != DF_OK) goto done;
    }
    if (req->init_image) {
        progress(hooks, PIPE_ENCODE, 0, 0, t0);
        t = clock_now();
        if ((st = encode_image(w, m, req, r.mean, r.logvar)) != DF_OK) goto done;
        const struct vae_config *v = &m->vae.cfg;
        for (int i = 0; i < n; i++) {
            float *x = r.x + (size_t)i * r.latent;
            /* draw 1: the posterior sample; draw 2: the noise to add */
            if ((st = rng_randn(r.rng[i], r.noise, r.latent)) != DF_OK) goto done;
            for (size_t k = 0; k < r.latent; k++)
                x[k] = ((r.mean[k] + expf(0.5f * r.logvar[k]) * r.noise[k]) - v->shift_factor) * v->scaling_factor;
            if ((st = smp_set_strength(r.smp[i], req->strength)) != DF_OK) goto done;
            if ((st = rng_randn(r.rng[i], r.noise, r.latent)) != DF_OK) goto done;
            if ((st = smp_add_noise(r.smp[i], x, r.noise, x, r.latent)) != DF_OK) goto done;
        }
        res->seconds_encode = clock_now() - t;
    } else {
        for (int i = 0; i < n; i++) {
            float *x = r.x + (size_t)i * r.latent, sigma = smp_init_noise_sigma(r.smp[i]);
            if ((st = rng_randn(r.rng[i], x, r.latent)) != DF_OK) goto done;
            for (size_t k = 0; k < r.latent; k++) x[k] *= sigma;
        }
    }

    /* denoise: one replay of the recorded denoiser pass per evaluation.
     * The passes share one arena, so the denoiser's conditioning is written
     * only now, after the text and image encoders have run. */
    t = clock_now();
    const struct fam_denoise_pass *dn = &w->denoise.denoise;
    struct program *dp = w->denoise.p;
    if ((st = prog_write(dp, dn->context, r.context)) != DF_OK) goto done;
    if (dn->pooled && (st = prog_write(dp, dn->pooled, r.pooled)) != DF_OK) goto done;
    if (dn->time_ids && (st = prog_write(dp, dn->time_ids, r.time_ids)) != DF_OK) goto done;
    int evals = smp_n_evals(r.smp[0]);
    progress(hooks, PIPE_DENOISE, 0, evals, t0);
    while (!smp_done(r.smp[0])) {
        if (cancelled(hooks)) { st = df_error(DF_ECANCELLED, "cancelled"); goto done; }
        for (int i = 0; i < n; i++) {
            float *xin = r.xin + (size_t)i * r.latent;
            if ((st = smp_model_input(r.smp[i], r.x + (size_t)i * r.latent, xin, r.latent)) != DF_OK) goto done;
            if (cfg) memcpy(r.xin + (size_t)(n + i) * r.latent, xin, r.latent * sizeof(float));
        }
        for (size_t b = 0; b < ub; b++) r.timesteps[b] = smp_timestep(r.smp[0]);
        if ((st = prog_write(dp, dn->sample, r.xin)) != DF_OK) goto done;
        if ((st = prog_write(dp, dn->timestep, r.timesteps)) != DF_OK) goto done;
        if ((st = prog_run(dp)) != DF_OK) goto done;
        if ((st = prog_read(dp, dn->out, r.out)) != DF_OK) goto done;
        for (int i = 0; i < n; i++) {
            const float *u = r.out + (size_t)i * r.latent, *c = r.out + (size_t)(n + i) * r.latent;
            for (size_t k = 0; k < r.latent; k++) r.eps[k] = cfg ? u[k] + req->cfg_scale * (c[k] - u[k]) : u[k];
            const float *noise = NULL;
            if (smp_needs_noise(r.smp[i])) {
                if ((st = rng_randn(r.rng[i], r.noise, r.latent)) != DF_OK) goto done;
                noise = r.noise;
            }
            if ((st = smp_step(r.smp[i], r.eps, r.x + (size_t)i * r.latent, noise, r.latent)) != DF_OK) goto done;
        }
        progress(hooks, PIPE_DENOISE, smp_eval_index(r.smp[0]), evals, t0);
    }
    res->seconds_denoise = clock_now() - t;
    memcpy(res->latents, r.x, (size_t)n * r.latent * sizeof(float));

    /* decode, one image at a time: the VAE's activations dominate memory */
    t = clock_now();
    for (int i = 0; i < n; i++) {
        if (cancelled(hooks)) { st = df_error(DF_ECANCELLED, "cancelled"); goto done; }
        progress(hooks, PIPE_DECODE, i, n, t0);
        if ((st = decode_latent(w, m, r.x + (size_t)i * r.latent, r.latent,
                                res->images + (size_t)i * req->width * req->height * 3, &res->vae_fp32_retry)) != DF_OK)
            goto done;
    }
    res->seconds_decode = clock_now() - t;
    res->seconds_total = clock_now() - t0;
    res->device_peak_bytes = dev_memory_peak(w->dev);
    progress(hooks, PIPE_DONE, n, n, t0);
done:
    run_free(&r);
    if (st != DF_OK) pipe_result_free(res);
    return st;
}

void pipe_result_free(struct pipe_result *r) {
    free(r->images);
    free(r->seeds);
    free(r->latents);
    memset(r, 0, sizeof *r);
}
