/* sdapi: see sdapi.h. */
#include "sdapi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

static const struct {
    enum smp_kind kind;
    const char *aliases[3];
} samplers[] = {
    {SMP_EULER_A, {"k_euler_a", "k_euler_ancestral", "euler_a"}},
    {SMP_EULER, {"k_euler", "euler", NULL}},
    {SMP_HEUN, {"k_heun", "heun", NULL}},
    {SMP_DPMPP_2M, {"k_dpmpp_2m", "dpmpp_2m", NULL}},
    {SMP_DDIM, {"ddim", NULL, NULL}},
    {SMP_LCM, {"k_lcm", "lcm", NULL}},
};

/* {"error": {...}, "detail": "..."}: our shape plus the field A1111 clients read. */
static void sd_error(struct http_request *req, struct api_error *e) {
    if (strcmp(e->code, "invalid_type") == 0) e->status = 422; /* FastAPI's validation status */
    json_t *err = json_pack("{s:s, s:s}", "code", e->code, "message", e->message);
    if (e->field) json_object_set_new(err, "field", json_string(e->field));
    http_respond_json(req, e->status, json_pack("{s:o, s:s}", "error", err, "detail", e->message));
}

static void timestamp(char out[16]) {
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

/* ---- txt2img / img2img ------------------------------------------------------ */

/* The request as A1111 echoes it in "parameters": every field with its
 * default, overlaid with what was sent. */
static json_t *echo(const json_t *req, bool img2img) {
    json_t *d = json_pack(
        "{s:s, s:s, s:n, s:i, s:i, s:i, s:i, s:i, s:n, s:n, s:i, s:i, s:i, s:f, s:i, s:i, s:n, s:n, s:b, s:b, s:n,"
        " s:f, s:n, s:n, s:n, s:n, s:n, s:{}, s:b, s:n, s:n, s:b, s:n, s:n, s:s, s:n, s:[], s:b, s:b, s:{}, s:n}",
        "prompt", "", "negative_prompt", "", "styles", "seed", -1, "subseed", -1, "subseed_strength", 0,
        "seed_resize_from_h", -1, "seed_resize_from_w", -1, "sampler_name", "scheduler", "batch_size", 1, "n_iter", 1,
        "steps", 50, "cfg_scale", 7.0, "width", 512, "height", 512, "restore_faces", "tiling", "do_not_save_samples",
        0, "do_not_save_grid", 0, "eta", "denoising_strength", 0.75, "s_min_uncond", "s_churn", "s_tmax", "s_tmin",
        "s_noise", "override_settings", "override_settings_restore_afterwards", 1, "refiner_checkpoint",
        "refiner_switch_at", "disable_extra_networks", 0, "firstpass_image", "comments", "sampler_index", "Euler",
        "script_name", "script_args", "send_images", 1, "save_images", 0, "alwayson_scripts", "infotext");
    if (!d) return json_object();
    if (img2img) {
        json_object_set_new(d, "init_images", json_null());
        json_object_set_new(d, "resize_mode", json_integer(0));
        json_object_set_new(d, "image_cfg_scale", json_null());
        json_object_set_new(d, "mask", json_null());
        json_object_set_new(d, "include_init_images", json_false());
    } else {
        json_object_set_new(d, "enable_hr", json_false());
        json_object_set_new(d, "hr_scale", json_real(2.0));
        json_object_set_new(d, "hr_upscaler", json_null());
        json_object_set_new(d, "hr_second_pass_steps", json_integer(0));
        json_object_set_new(d, "firstphase_width", json_integer(0));
        json_object_set_new(d, "firstphase_height", json_integer(0));
        json_object_set_new(d, "force_task_id", json_null());
    }
    json_object_update_existing(d, (json_t *)req);
    if (img2img) json_object_set_new(d, "init_images", json_null()); /* A1111 does not send them back */
    return d;
}

struct sd_call {
    json_t *req;
    bool img2img, send_images;
};

static void call_free(void *arg) {
    struct sd_call *c = arg;
    json_decref(c->req);
    free(c);
}

static json_t *info_json(const struct api_ctx *app, const struct job *job, const struct job_status *st,
                         int n_seeds) {
    const struct job_params *p = job_params(job);
    const struct pipe_request *r = &p->req;
    const struct model *m = app->models[p->model].m;
    json_t *prompts = json_array(), *negs = json_array(), *seeds = json_array(), *subseeds = json_array(),
           *infotexts = json_array();
    uint64_t seed0 = st->n_images ? st->images[0].seed : (uint64_t)(r->seed < 0 ? 0 : r->seed);
    for (int i = 0; i < n_seeds; i++) {
        json_array_append_new(prompts, json_string(r->prompt));
        json_array_append_new(negs, json_string(r->negative_prompt ? r->negative_prompt : ""));
        json_array_append_new(seeds, json_integer((json_int_t)(seed0 + (uint64_t)i)));
        json_array_append_new(subseeds, json_integer(-1));
    }
    for (int i = 0; i < st->n_images; i++) json_array_append_new(infotexts, json_string(st->images[i].infotext));
    json_t *extra = json_object();
    const char *sched = job_schedule_label(r->schedule);
    json_object_set_new(extra, "Schedule type", json_string(sched ? sched : "Automatic"));
    char ts[16];
    timestamp(ts);
    json_t *o = json_pack("{s:s, s:o, s:s, s:o, s:I, s:o, s:i, s:o, s:i, s:i, s:i, s:s, s:f, s:i, s:i, s:b, s:n,"
                          " s:s, s:s, s:n, s:n, s:i, s:i, s:o, s:i, s:o, s:[], s:s, s:i, s:b, s:s}",
                          "prompt", r->prompt, "all_prompts", prompts, "negative_prompt",
                          r->negative_prompt ? r->negative_prompt : "", "all_negative_prompts", negs, "seed",
                          (json_int_t)seed0, "all_seeds", seeds, "subseed", -1, "all_subseeds", subseeds,
                          "subseed_strength", 0, "width", r->width, "height", r->height, "sampler_name",
                          job_sampler_label(r->sampler), "cfg_scale", (double)r->cfg_scale, "steps", r->steps,
                          "batch_size", r->batch, "restore_faces", 0, "face_restoration_model", "sd_model_name",
                          m->name, "sd_model_hash", m->hash, "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", -1,
                          "seed_resize_from_h", -1, "extra_generation_params", extra, "index_of_first_image", 0,
                          "infotexts", infotexts, "styles", "job_timestamp", ts, "clip_skip", r->clip_skip,
                          "is_using_inpainting_conditioning", 0, "version", "diffusiond");
    if (o) json_object_set_new(o, "denoising_strength", r->init_image ? json_real(r->strength) : json_null());
    return o;
}

static void sd_done(struct api_ctx *app, struct http_request *req, struct job *job, const struct job_status *st,
                    void *arg) {
    struct sd_call *c = arg;
    /* A1111 answers an interrupted generation with 200 and what it has: here, nothing */
    bool interrupted = st->state == JOB_CANCELLED && st->stop == JOB_STOP_INTERRUPT;
    if (st->state != JOB_DONE && !interrupted) {
        api_job_error(req, st);
        return;
    }
    json_t *images = json_array();
    for (int i = 0; c->send_images && i < st->n_images; i++) {
        char *b64 = http_base64_encode(st->images[i].png, st->images[i].png_len);
        if (!b64) {
            json_decref(images);
            http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
            return;
        }
        json_array_append_new(images, json_string(b64));
        free(b64);
    }
    json_t *info = info_json(app, job, st, job_params(job)->req.batch);
    char *info_text = info ? json_dumps(info, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(info);
    http_add_header(req, "X-Job-Id", job_id(job));
    http_respond_json(req, 200, json_pack("{s:o, s:o, s:s}", "images", images, "parameters", echo(c->req, c->img2img),
                                          "info", info_text ? info_text : "{}"));
    free(info_text);
}

static df_status parse_sd(struct api_ctx *app, const json_t *o, bool img2img, struct job_params *p,
                          struct api_error *e) {
    struct pipe_request *r = &p->req;
    const char *prompt = "", *neg = "", *sampler = NULL, *sampler_index = "Euler", *scheduler = NULL,
               *checkpoint = NULL, *randn = NULL;
    long long seed = -1, batch = 1, iters = 1, steps = 50, width = 512, height = 512;
    long long clip_skip = atomic_load(&app->sd_clip_skip);
    double cfg = 7.0, strength = 0.75;
    bool enable_hr = false;
    if (api_string(o, "prompt", &prompt, e) || api_string(o, "negative_prompt", &neg, e) ||
        api_int(o, "seed", &seed, e) || api_string(o, "sampler_name", &sampler, e) ||
        api_string(o, "sampler_index", &sampler_index, e) || api_string(o, "scheduler", &scheduler, e) ||
        api_int(o, "batch_size", &batch, e) || api_int(o, "n_iter", &iters, e) || api_int(o, "steps", &steps, e) ||
        api_number(o, "cfg_scale", &cfg, e) || api_int(o, "width", &width, e) || api_int(o, "height", &height, e) ||
        api_number(o, "denoising_strength", &strength, e) || api_int(o, "clip_skip", &clip_skip, e) ||
        api_bool(o, "enable_hr", &enable_hr, e)) /* any != DF_OK */
        return DF_EINVAL;
    const json_t *ov = json_object_get(o, "override_settings");
    if (ov && !json_is_null(ov)) {
        if (!json_is_object(ov))
            return api_fail(e, 422, "invalid_type", "override_settings", "override_settings must be an object");
        if (api_string(ov, "sd_model_checkpoint", &checkpoint, e) ||
            api_int(ov, "CLIP_stop_at_last_layers", &clip_skip, e) || api_string(ov, "randn_source", &randn, e))
            return DF_EINVAL;
    }
    if (enable_hr) log_write(LOGL_WARN, NULL, "sdapi: enable_hr (hires fix) is not supported; ignored");
    memset(p, 0, sizeof *p);
    p->origin = JOB_ORIGIN_SDAPI;
    p->model = atomic_load(&app->sd_model);
    r->rng = (enum rng_kind)atomic_load(&app->sd_rng);
    if (checkpoint && api_model_lookup(app, checkpoint, "override_settings.sd_model_checkpoint", &p->model, e) != DF_OK)
        return DF_EINVAL;
    if (randn) {
        if (strcasecmp(randn, "CPU") == 0) r->rng = RNG_TORCH_CPU;
        else if (strcasecmp(randn, "GPU") == 0) r->rng = RNG_PHILOX;
        else return api_fail(e, 422, "unsupported", "override_settings.randn_source",
                             "randn_source \"%.20s\": GPU and CPU are supported", randn);
    }
    if (api_sampler(sampler ? sampler : sampler_index, scheduler, sampler ? "sampler_name" : "sampler_index",
                     "scheduler", &r->sampler, &r->schedule, e) != DF_OK) {
        if (e->status == 422) e->status = 404; /* A1111: "Sampler not found" */
        return DF_EINVAL;
    }
#define CLAMP(v) ((v) < -1000000 ? -1000000 : (v) > 1000000 ? 1000000 : (int)(v))
    r->width = CLAMP(width);
    r->height = CLAMP(height);
    r->steps = CLAMP(steps);
    /* A1111: one image per seed, seed .. seed + batch_size * n_iter - 1 */
    r->batch = batch < 1 || iters < 1 ? 0 : CLAMP((long long)CLAMP(batch) * CLAMP(iters));
    r->clip_skip = clip_skip < 1 ? 1 : CLAMP(clip_skip); /* A1111 treats 0 as 1 */
#undef CLAMP
    r->cfg_scale = (float)cfg;
    r->seed = seed;
    r->strength = img2img ? (float)strength : 0;
    if (api_check_params(app, p, img2img, e) != DF_OK) {
        if (e->field && strcmp(e->field, "n") == 0) e->field = "batch_size";
        if (e->field && strcmp(e->field, "strength") == 0) e->field = "denoising_strength";
        return DF_EINVAL;
    }
    r->prompt = strdup(prompt);
    r->negative_prompt = strdup(neg);
    if (!r->prompt || !r->negative_prompt) return api_fail(e, 500, "out_of_memory", NULL, "out of memory");
    if (img2img) {
        const json_t *imgs = json_object_get(o, "init_images");
        if (!json_is_array(imgs) || json_array_size(imgs) == 0)
            return api_fail(e, 422, "missing_field", "init_images", "init_images must be a list of base64 images");
        const json_t *first = json_array_get(imgs, 0);
        if (!json_is_string(first))
            return api_fail(e, 422, "invalid_type", "init_images", "init_images[0] must be a string");
        const char *b64 = json_string_value(first);
        if (api_init_image(app, b64, r->width, r->height, "init_images", &r->init_image, e) != DF_OK) return DF_EINVAL;
    }
    return DF_OK;
}

static void route_generate(struct api_ctx *app, struct http_request *req, bool img2img) {
    if (!api_body_type_ok(req, api_json_types)) return;
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body, len, 0, &jerr);
    struct api_error e;
    if (!o || !json_is_object(o)) {
        if (o) api_fail(&e, 400, "invalid_json", NULL, "the body must be a JSON object");
        else api_fail(&e, 400, "invalid_json", NULL, "malformed JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                      jerr.column);
        json_decref(o);
        sd_error(req, &e);
        return;
    }
    struct job_params p;
    memset(&p, 0, sizeof p);
    bool send = true;
    if (api_bool(o, "send_images", &send, &e) != DF_OK || parse_sd(app, o, img2img, &p, &e) != DF_OK) {
        job_params_free(&p);
        json_decref(o);
        sd_error(req, &e);
        return;
    }
    struct job *job = api_submit(app, req, &p);
    struct sd_call *c = job ? malloc(sizeof *c) : NULL;
    if (!c) {
        json_decref(o);
        if (job) {
            jobs_cancel(app->jobs, job, JOB_STOP_DISCONNECT);
            job_unref(job);
            http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        }
        return;
    }
    *c = (struct sd_call){o, img2img, send};
    api_wait(app, req, job, sd_done, c, call_free);
}

/* ---- progress, interrupt ------------------------------------------------------- */

static void route_progress(struct api_ctx *app, struct http_request *req) {
    struct jobs_stats s;
    jobs_stats(app->jobs, &s);
    struct job *j = jobs_current(app->jobs, JOB_ORIGIN_SDAPI);
    double progress = 0, eta = 0;
    int step = 0, steps = 0;
    bool interrupted = false;
    char ts[16] = "0";
    if (j) {
        struct job_status st;
        jobs_status(app->jobs, j, &st);
        step = st.step;
        steps = st.steps;
        if (st.stage == PIPE_DENOISE && steps > 0) progress = (double)step / steps;
        else if (st.stage >= PIPE_DECODE) progress = 1;
        if (progress > 0.01) eta = st.run_seconds / progress - st.run_seconds;
        interrupted = st.stop != JOB_STOP_NONE;
        time_t t = (time_t)st.started;
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(ts, sizeof ts, "%Y%m%d%H%M%S", &tm);
    }
    json_t *state = json_pack("{s:b, s:b, s:b, s:s, s:i, s:s, s:i, s:i, s:i}", "skipped", 0, "interrupted",
                              interrupted, "stopping_generation", 0, "job", j ? job_id(j) : "", "job_count",
                              s.queued + s.running, "job_timestamp", ts, "job_no", 0, "sampling_step", step,
                              "sampling_steps", steps);
    job_unref(j);
    http_respond_json(req, 200, json_pack("{s:f, s:f, s:o, s:n, s:n}", "progress", progress, "eta_relative", eta,
                                          "state", state, "current_image", "textinfo"));
}

/* ---- lists and options -------------------------------------------------------------- */

static json_t *sampler_list(void) {
    json_t *arr = json_array();
    for (size_t i = 0; i < sizeof samplers / sizeof samplers[0]; i++) {
        json_t *aliases = json_array();
        for (int k = 0; k < 3 && samplers[i].aliases[k]; k++)
            json_array_append_new(aliases, json_string(samplers[i].aliases[k]));
        json_t *opts = json_object();
        if (samplers[i].kind == SMP_DPMPP_2M) json_object_set_new(opts, "scheduler", json_string("karras"));
        json_array_append_new(arr, json_pack("{s:s, s:o, s:o}", "name", job_sampler_label(samplers[i].kind),
                                             "aliases", aliases, "options", opts));
    }
    return arr;
}

static json_t *scheduler_list(void) {
    return json_pack("[{s:s, s:s, s:n, s:f, s:b}, {s:s, s:s, s:n, s:f, s:b}, {s:s, s:s, s:n, s:f, s:b},"
                     " {s:s, s:s, s:[s], s:f, s:b}]",
                     "name", "automatic", "label", "Automatic", "aliases", "default_rho", -1.0, "need_inner_model", 0,
                     "name", "karras", "label", "Karras", "aliases", "default_rho", 7.0, "need_inner_model", 0,
                     "name", "exponential", "label", "Exponential", "aliases", "default_rho", -1.0,
                     "need_inner_model", 0, "name", "sgm_uniform", "label", "SGM Uniform", "aliases", "SGMUniform",
                     "default_rho", -1.0, "need_inner_model", 1);
}

static json_t *model_list(const struct api_ctx *app) {
    json_t *arr = json_array();
    for (int i = 0; i < app->n_models; i++) {
        const struct api_model *m = &app->models[i];
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:n, s:s, s:n}", "title", m->title, "model_name",
                                             m->m->name, "hash", m->m->hash, "sha256", "filename", m->filename,
                                             "config"));
    }
    return arr;
}

static json_t *options(const struct api_ctx *app) {
    const struct api_model *m = &app->models[atomic_load(&app->sd_model)];
    return json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:i, s:b}", "sd_model_checkpoint", m->title,
                     "sd_checkpoint_hash", m->m->hash, "CLIP_stop_at_last_layers", atomic_load(&app->sd_clip_skip),
                     "randn_source", atomic_load(&app->sd_rng) == RNG_TORCH_CPU ? "CPU" : "GPU", "samples_format",
                     "png", "sd_vae", "Automatic", "eta_noise_seed_delta", 0, "enable_pnginfo", 1);
}

static void route_set_options(struct api_ctx *app, struct http_request *req) {
    if (!api_body_type_ok(req, api_json_types)) return;
    size_t len;
    const char *body = http_body(req, &len);
    json_t *o = json_loadb(body, len, 0, NULL);
    struct api_error e;
    const char *ckpt = NULL, *randn = NULL;
    long long clip = atomic_load(&app->sd_clip_skip);
    int model = atomic_load(&app->sd_model);
    if (!o || !json_is_object(o)) {
        api_fail(&e, 400, "invalid_json", NULL, "the body must be a JSON object");
        goto fail;
    }
    if (api_string(o, "sd_model_checkpoint", &ckpt, &e) || api_int(o, "CLIP_stop_at_last_layers", &clip, &e) ||
        api_string(o, "randn_source", &randn, &e)) /* any != DF_OK */
        goto fail;
    if (ckpt && api_model_lookup(app, ckpt, "sd_model_checkpoint", &model, &e) != DF_OK) goto fail;
    /* checked against the model it will apply to: a value beyond its text
     * encoder's depth would make every later generation fail */
    const struct model *m = app->models[model].m;
    int max_skip = m->family->max_clip_skip(m);
    if (clip < 1 || clip > max_skip) {
        api_fail(&e, 422, "out_of_range", "CLIP_stop_at_last_layers",
                 "CLIP_stop_at_last_layers %lld: must be in 1..%d (the text encoder of %s has %d layers)", clip,
                 max_skip, m->name, max_skip);
        goto fail;
    }
    int rng = atomic_load(&app->sd_rng);
    if (randn && strcasecmp(randn, "CPU") == 0) rng = RNG_TORCH_CPU;
    else if (randn && strcasecmp(randn, "GPU") == 0) rng = RNG_PHILOX;
    else if (randn) {
        api_fail(&e, 422, "unsupported", "randn_source", "randn_source: GPU and CPU are supported");
        goto fail;
    }
    atomic_store(&app->sd_model, model);
    atomic_store(&app->sd_clip_skip, (int)clip);
    atomic_store(&app->sd_rng, rng);
    if (ckpt) log_write(LOGL_INFO, NULL, "sdapi: default model is now %s", app->models[model].m->name);
    json_decref(o);
    http_respond_json(req, 200, json_null()); /* A1111 answers null */
    return;
fail:
    json_decref(o);
    sd_error(req, &e);
}

bool sdapi_handle(struct api_ctx *app, struct http_request *req) {
    const char *path = http_path(req) + strlen("/sdapi/v1/"), *method = http_method(req);
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, post = strcmp(method, "POST") == 0;
    const char *allow = NULL;
    if (strcmp(path, "txt2img") == 0 || strcmp(path, "img2img") == 0) {
        if (post) route_generate(app, req, path[0] == 'i');
        else allow = "POST";
    } else if (strcmp(path, "progress") == 0) {
        if (get) route_progress(app, req);
        else allow = "GET";
    } else if (strcmp(path, "interrupt") == 0) {
        if (post) {
            int n = jobs_interrupt(app->jobs, JOB_ORIGIN_SDAPI);
            log_write(LOGL_INFO, NULL, "sdapi: interrupt (%d running job(s))", n);
            http_respond_json(req, 200, json_object());
        } else {
            allow = "POST";
        }
    } else if (strcmp(path, "samplers") == 0) {
        if (get) http_respond_json(req, 200, sampler_list());
        else allow = "GET";
    } else if (strcmp(path, "schedulers") == 0) {
        if (get) http_respond_json(req, 200, scheduler_list());
        else allow = "GET";
    } else if (strcmp(path, "sd-models") == 0) {
        if (get) http_respond_json(req, 200, model_list(app));
        else allow = "GET";
    } else if (strcmp(path, "options") == 0) {
        if (get) http_respond_json(req, 200, options(app));
        else if (post) route_set_options(app, req);
        else allow = "GET, POST";
    } else {
        return false;
    }
    if (allow) {
        http_add_header(req, "Allow", allow);
        http_respond_error(req, 405, "method_not_allowed", NULL, "use %s here", allow);
    }
    return true;
}
