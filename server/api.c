/* api: see api.h. */
#include "api.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "image.h"
#include "log.h"

#define API_SSE_KEEPALIVE_S 15.0
#define API_LIST_MAX 1000

/* ---- errors and typed fields ---------------------------------------------- */

df_status api_fail(struct api_error *e, int status, const char *code, const char *field, const char *fmt, ...) {
    e->status = status;
    e->code = code;
    e->field = field;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status >= 500 ? DF_ENOMEM : DF_EINVAL; /* our only 5xx here: memory */
}

void api_send_error(struct http_request *req, const struct api_error *e) {
    http_respond_error(req, e->status, e->code, e->field, "%s", e->message);
}

static const json_t *field(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static df_status wrong_type(struct api_error *e, const char *key, const char *want) {
    return api_fail(e, 400, "invalid_type", key, "%s must be %s", key, want);
}

/* Integers, and integral reals (512.0). */
static bool as_int(const json_t *v, long long *out) {
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    double d = json_is_real(v) ? json_real_value(v) : 0.5;
    if (d != floor(d) || fabs(d) >= 9e15) return false;
    *out = (long long)d;
    return true;
}

df_status api_int(const json_t *obj, const char *key, long long *out, struct api_error *e) {
    const json_t *v = field(obj, key);
    if (!v || as_int(v, out)) return DF_OK;
    return wrong_type(e, key, "an integer");
}

/* [a, b] of integers (SDXL's sizes and crop coordinates), each clamped to
 * what an int holds so the range check names the field. */
static df_status api_int_pair(const json_t *obj, const char *key, int out[2], struct api_error *e) {
    const json_t *v = field(obj, key);
    if (!v) return DF_OK;
    if (!json_is_array(v) || json_array_size(v) != 2) return wrong_type(e, key, "an array of two integers");
    for (int k = 0; k < 2; k++) {
        long long x;
        if (!as_int(json_array_get(v, (size_t)k), &x)) return wrong_type(e, key, "an array of two integers");
        out[k] = x < -1000000 ? -1000000 : x > 1000000 ? 1000000 : (int)x;
    }
    return DF_OK;
}

df_status api_number(const json_t *obj, const char *key, double *out, struct api_error *e) {
    const json_t *v = field(obj, key);
    if (!v) return DF_OK;
    if (!json_is_number(v)) return wrong_type(e, key, "a number");
    *out = json_number_value(v);
    return DF_OK;
}

df_status api_string(const json_t *obj, const char *key, const char **out, struct api_error *e) {
    const json_t *v = field(obj, key);
    if (!v) return DF_OK;
    if (!json_is_string(v)) return wrong_type(e, key, "a string");
    *out = json_string_value(v);
    return DF_OK;
}

df_status api_bool(const json_t *obj, const char *key, bool *out, struct api_error *e) {
    const json_t *v = field(obj, key);
    if (!v) return DF_OK;
    if (!json_is_boolean(v)) return wrong_type(e, key, "true or false");
    *out = json_is_true(v);
    return DF_OK;
}

json_t *api_time(double t) {
    if (t <= 0) return json_null();
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[40];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03dZ", (int)((t - (double)s) * 1000));
    return json_string(buf);
}

/* ---- request -> job_params -------------------------------------------------- */

df_status api_model_lookup(const struct api_ctx *app, const char *name, const char *fld, int *index,
                           struct api_error *e) {
    if (!*name || strstr(name, "..") || strchr(name, '/') || strchr(name, '\\') || name[0] == '~')
        return api_fail(e, 400, "invalid_model_name", fld, "model names are plain names, not paths: \"%.100s\"", name);
    for (int i = 0; i < app->n_models; i++) {
        const struct api_model *m = &app->models[i];
        const char *base = strrchr(m->filename, '/');
        base = base ? base + 1 : m->filename;
        size_t nl = strlen(m->m->name);
        if (strcmp(name, m->m->name) == 0 || strcmp(name, m->title) == 0 || strcmp(name, base) == 0 ||
            (m->m->hash[0] && strcmp(name, m->m->hash) == 0) ||
            (strncmp(name, m->m->name, nl) == 0 && name[nl] == '.')) { /* "name.safetensors" */
            *index = i;
            return DF_OK;
        }
    }
    return api_fail(e, 404, "model_not_found", fld, "no model \"%.100s\" is loaded (GET /models lists them)", name);
}

df_status api_sampler(const char *sampler, const char *schedule, const char *sfield, const char *schfield,
                 enum smp_kind *kind, enum smp_schedule *sched, struct api_error *e) {
    char name[64];
    snprintf(name, sizeof name, "%s", sampler);
    if (smp_kind_from_name(name, kind) != DF_OK) {
        /* A1111 < 1.9 spelled the schedule into the sampler: "DPM++ 2M Karras" */
        static const char *suffixes[] = {" Karras", " Exponential", " SGM Uniform"};
        bool found = false;
        for (int i = 0; i < 3 && !found; i++) {
            size_t n = strlen(name), k = strlen(suffixes[i]);
            if (n > k && strcasecmp(name + n - k, suffixes[i]) == 0) {
                name[n - k] = 0;
                if (smp_kind_from_name(name, kind) == DF_OK) {
                    found = true;
                    if (!schedule) smp_schedule_from_name(suffixes[i] + 1, sched);
                }
            }
        }
        if (!found) return api_fail(e, 422, "unknown_sampler", sfield, "unknown sampler \"%.60s\"", sampler);
    }
    if (schedule && smp_schedule_from_name(schedule, sched) != DF_OK)
        return api_fail(e, 422, "unknown_schedule", schfield, "unknown schedule \"%.60s\"", schedule);
    return DF_OK;
}

df_status api_init_image(const struct api_ctx *app, const char *b64, int w, int h, const char *fld, float **out,
                    struct api_error *e) {
    if (strncmp(b64, "data:", 5) == 0) { /* data:image/png;base64,.... */
        const char *comma = strchr(b64, ',');
        if (!comma) return api_fail(e, 400, "invalid_base64", fld, "%s: a data: URL without a comma", fld);
        b64 = comma + 1;
    }
    uint8_t *png = NULL;
    size_t len = 0;
    if (http_base64_decode(b64, strlen(b64), &png, &len) != DF_OK)
        return api_fail(e, 400, "invalid_base64", fld, "%s is not valid base64", fld);
    df_status st = api_init_png(app, png, len, w, h, fld, out, e);
    free(png);
    return st;
}

df_status api_init_png(const struct api_ctx *app, const uint8_t *png, size_t len, int w, int h, const char *fld,
                       float **out, struct api_error *e) {
    float *rgb = NULL;
    int iw = 0, ih = 0;
    df_status st = img_decode_png(png, len, app->cfg->max_image_pixels, &rgb, &iw, &ih, NULL);
    if (st == DF_EINVAL)
        return api_fail(e, 413, "image_too_large", fld, "%s: %s (max_image_pixels %zu)", fld, df_errmsg(),
                        app->cfg->max_image_pixels);
    if (st != DF_OK) return api_fail(e, 422, "invalid_image", fld, "%s is not a readable PNG: %s", fld, df_errmsg());
    if (iw == w && ih == h) {
        *out = rgb;
        return DF_OK;
    }
    float *resized = malloc((size_t)w * (size_t)h * 3 * sizeof *resized);
    st = resized ? img_resize(rgb, iw, ih, resized, w, h) : DF_ENOMEM;
    free(rgb);
    if (st != DF_OK) {
        free(resized);
        return api_fail(e, 500, "out_of_memory", fld, "cannot resize %s", fld);
    }
    *out = resized;
    return DF_OK;
}

df_status api_check_params(const struct api_ctx *app, const struct job_params *p, bool img2img, struct api_error *e) {
    const struct pipe_request *r = &p->req;
    const struct config *c = app->cfg;
    const struct model *m = app->models[p->model].m;
    int align = m->family->size_align(m), max_skip = m->family->max_clip_skip(m);
    if (r->width < align || r->width > c->max_width || r->width % align)
        return api_fail(e, 422, "out_of_range", "width", "width %d: must be a multiple of %d in %d..%d", r->width,
                        align, align, c->max_width);
    if (r->height < align || r->height > c->max_height || r->height % align)
        return api_fail(e, 422, "out_of_range", "height", "height %d: must be a multiple of %d in %d..%d",
                        r->height, align, align, c->max_height);
    if (r->steps < 1 || r->steps > c->max_steps)
        return api_fail(e, 422, "out_of_range", "steps", "steps %d: must be in 1..%d", r->steps, c->max_steps);
    if (r->batch < 1 || r->batch > c->max_batch)
        return api_fail(e, 422, "out_of_range", "n", "%d images: must be in 1..%d", r->batch, c->max_batch);
    if (!isfinite(r->cfg_scale) || r->cfg_scale < 0 || r->cfg_scale > 100)
        return api_fail(e, 422, "out_of_range", "cfg_scale", "cfg_scale %g: must be in 0..100", r->cfg_scale);
    if (r->clip_skip < 1 || r->clip_skip > max_skip)
        return api_fail(e, 422, "out_of_range", "clip_skip", "clip_skip %d: must be in 1..%d", r->clip_skip, max_skip);
    static const struct {
        const char *name;
        size_t offset;
        int min;
    } sizes[] = {{"original_size", offsetof(struct pipe_request, original_size), 1},
                 {"crops_coords_top_left", offsetof(struct pipe_request, crops_coords_top_left), 0},
                 {"target_size", offsetof(struct pipe_request, target_size), 1}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) { /* 0 = the default */
        const int *v = (const int *)((const char *)r + sizes[i].offset);
        for (int k = 0; k < 2; k++)
            if (v[k] && (v[k] < sizes[i].min || v[k] > 16384))
                return api_fail(e, 422, "out_of_range", sizes[i].name, "%s[%d] %d: must be in %d..16384",
                                sizes[i].name, k, v[k], sizes[i].min);
    }
    if (r->seed < -1) return api_fail(e, 422, "out_of_range", "seed", "seed must be >= 0, or -1 for a random one");
    /* image i uses seed + i (A1111): the last must still be a 64-bit signed
     * integer, the type of every seed in our answers (A1111 itself fails past
     * its Philox key's 2^64) */
    if (r->seed > INT64_MAX - (r->batch - 1))
        return api_fail(e, 422, "out_of_range", "seed",
                        "seed %lld with %d images: the last image's seed (seed + %d) would pass 2^63 - 1",
                        (long long)r->seed, r->batch, r->batch - 1);
    if (img2img && !(r->strength > 0 && r->strength <= 1))
        return api_fail(e, 422, "out_of_range", "strength", "strength %g: must be in (0, 1]", r->strength);
    /* the sampler refuses some schedules (karras with DDIM) and step counts (LCM) */
    struct smp_config sc = m->scheduler;
    if (r->schedule != SMP_SCHEDULE_DEFAULT) sc.schedule = r->schedule;
    struct smp_sampler *s = NULL;
    if (smp_create(r->sampler, &sc, r->steps, &s) != DF_OK)
        return api_fail(e, 422, "unsupported", "sampler", "%s", df_errmsg());
    smp_destroy(s);
    return DF_OK;
}

const char *const api_json_types[] = {"application/json", NULL};

bool api_body_type_ok(struct http_request *req, const char *const *accepted) {
    const char *ct = http_header(req, "Content-Type");
    if (!ct) return true;
    while (*ct == ' ' || *ct == '\t') ct++;
    size_t n = strcspn(ct, "; \t");
    for (int i = 0; accepted[i]; i++) {
        if (strlen(accepted[i]) == n && strncasecmp(ct, accepted[i], n) == 0) return true;
        /* application/problem+json, application/vnd.x+json: JSON too */
        if (strcmp(accepted[i], "application/json") == 0 && n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0)
            return true;
    }
    char list[256] = "";
    for (int i = 0; accepted[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", accepted[i]);
    http_respond_error(req, 415, "unsupported_media_type", NULL, "Content-Type %.*s: this endpoint takes %s",
                       (int)(n < 100 ? n : 100), ct, list);
    return false;
}

/* ---- submitting and waiting ---------------------------------------------------- */

struct job *api_submit(struct api_ctx *app, struct http_request *req, struct job_params *p) {
    struct job *j = NULL;
    df_status st = jobs_submit(app->jobs, p, &j);
    if (st == DF_OK) {
        http_set_job(req, job_id(j));
        return j;
    }
    char retry[16];
    if (st == DF_ENOMEM && strstr(df_errmsg(), "queue")) {
        snprintf(retry, sizeof retry, "%d", jobs_retry_after(app->jobs));
        http_add_header(req, "Retry-After", retry);
        http_respond_error(req, 429, "queue_full", NULL, "%s; retry later", df_errmsg());
    } else if (st == DF_ECANCELLED) {
        http_respond_error(req, 503, "shutting_down", NULL, "%s", df_errmsg());
    } else {
        http_respond_error(req, 500, "internal_error", NULL, "%s", df_errmsg());
    }
    return NULL;
}

/* http_user() of a request is one of these two; the tag tells which. */
enum { API_WAIT = 0x57414954, API_SSE = 0x53534520 };

struct wait {
    int tag;
    struct api_ctx *app;
    struct http_request *req;
    struct job *job;
    struct job_watch watch;
    api_done_fn done;
    void *arg;
    void (*free_arg)(void *);
};

static void wait_watch(void *ctx, struct job *j, const struct job_status *st) {
    (void)j;
    struct wait *w = ctx;
    if (job_state_final(st->state)) http_wake(w->req);
}

static void wait_release(void *user, bool completed) {
    struct wait *w = user;
    jobs_unwatch(w->app->jobs, w->job, &w->watch);
    if (!completed) jobs_cancel(w->app->jobs, w->job, JOB_STOP_DISCONNECT); /* no-op once final */
    job_unref(w->job);
    if (w->free_arg) w->free_arg(w->arg);
    free(w);
}

static void wait_continue(struct wait *w) {
    struct job_status st;
    jobs_status(w->app->jobs, w->job, &st);
    if (job_state_final(st.state)) w->done(w->app, w->req, w->job, &st, w->arg);
    else http_suspend(w->req);
}

void api_wait(struct api_ctx *app, struct http_request *req, struct job *job, api_done_fn done, void *arg,
              void (*free_arg)(void *)) {
    struct wait *w = calloc(1, sizeof *w);
    if (!w) {
        jobs_cancel(app->jobs, job, JOB_STOP_DISCONNECT);
        job_unref(job);
        if (free_arg) free_arg(arg);
        http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    *w = (struct wait){API_WAIT, app, req, job, {wait_watch, NULL, NULL}, done, arg, free_arg};
    w->watch.ctx = w;
    http_set_user(req, w, wait_release);
    jobs_watch(app->jobs, job, &w->watch);
    wait_continue(w);
}

void api_job_error(struct http_request *req, const struct job_status *st) {
    static const struct { const char *code; int status; } map[] = {
        {"timeout", 504}, {"invalid_request", 422}, {"invalid_input", 422}, {"unsupported", 422},
        {"cancelled", 409}, {"interrupted", 409}, {"shutdown", 503}, {"client_disconnected", 499},
    };
    int status = 500;
    const char *code = st->error_code ? st->error_code : "internal_error";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(code, map[i].code) == 0) status = map[i].status;
    http_respond_error(req, status, code, NULL, "job %s: %s", job_state_name(st->state),
                       st->error_message ? st->error_message : code);
}

/* ---- job JSON ------------------------------------------------------------------ */

static json_t *job_json(const struct api_ctx *app, const struct job *j, const struct job_status *st) {
    const struct job_params *p = job_params(j);
    const struct pipe_request *r = &p->req;
    char url[128];
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(job_id(j)));
    json_object_set_new(o, "state", json_string(job_state_name(st->state)));
    if (st->state == JOB_QUEUED) json_object_set_new(o, "position", json_integer(st->position));
    if (st->state == JOB_RUNNING || st->state == JOB_DONE) {
        json_object_set_new(o, "stage", json_string(pipe_stage_name(st->stage)));
        json_object_set_new(o, "step", json_integer(st->step));
        json_object_set_new(o, "steps", json_integer(st->steps));
    }
    if (st->state == JOB_RUNNING && st->stop != JOB_STOP_NONE) json_object_set_new(o, "cancel_requested", json_true());
    if (st->error_code)
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", st->error_code, "message",
                                                  st->error_message ? st->error_message : ""));
    json_object_set_new(o, "model", json_string(app->models[p->model].m->name));
    json_t *params = json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:s, s:s, s:I, s:i, s:i, s:s}", "prompt",
                               r->prompt, "negative_prompt", r->negative_prompt ? r->negative_prompt : "", "width",
                               r->width, "height", r->height, "steps", r->steps, "cfg_scale", (double)r->cfg_scale,
                               "sampler", smp_kind_name(r->sampler), "schedule", smp_schedule_name(r->schedule),
                               "seed", (json_int_t)r->seed, "n", r->batch, "clip_skip", r->clip_skip, "rng",
                               r->rng == RNG_TORCH_CPU ? "torch" : "philox");
    if (params && r->init_image) json_object_set_new(params, "strength", json_real(r->strength));
    json_object_set_new(o, "parameters", params ? params : json_null());
    if (st->state == JOB_DONE) {
        json_t *imgs = json_array(), *seeds = json_array();
        for (int i = 0; i < st->n_images; i++) {
            snprintf(url, sizeof url, "/jobs/%s/images/%d", job_id(j), i);
            json_array_append_new(imgs, json_pack("{s:i, s:I, s:s}", "index", i, "seed",
                                                  (json_int_t)st->images[i].seed, "url", url));
            json_array_append_new(seeds, json_integer((json_int_t)st->images[i].seed));
        }
        json_object_set_new(o, "images", imgs);
        json_object_set_new(o, "seeds", seeds);
        if (st->n_images > 0) json_object_set_new(o, "infotext", json_string(st->images[0].infotext));
    }
    json_t *t = json_object();
    json_object_set_new(t, "created", api_time(st->created));
    json_object_set_new(t, "started", api_time(st->started));
    json_object_set_new(t, "finished", api_time(st->finished));
    json_object_set_new(t, "queue_seconds", json_real(st->queue_seconds));
    json_object_set_new(t, "run_seconds", json_real(st->run_seconds));
    if (st->state == JOB_DONE) {
        json_object_set_new(t, "text_seconds", json_real(st->seconds_text));
        if (r->init_image) json_object_set_new(t, "encode_seconds", json_real(st->seconds_encode));
        json_object_set_new(t, "denoise_seconds", json_real(st->seconds_denoise));
        json_object_set_new(t, "decode_seconds", json_real(st->seconds_decode));
    }
    json_object_set_new(o, "timings", t);
    json_t *urls = json_object();
    snprintf(url, sizeof url, "/jobs/%s", job_id(j));
    json_object_set_new(urls, "self", json_string(url));
    snprintf(url, sizeof url, "/jobs/%s/events", job_id(j));
    json_object_set_new(urls, "events", json_string(url));
    json_object_set_new(o, "urls", urls);
    return o;
}

/* ---- /generate, /jobs ----------------------------------------------------------- */

static char *dup_str(const char *s) {
    char *d = strdup(s ? s : "");
    if (!d) abort(); /* a few bytes; the body that holds them was allocated */
    return d;
}

/* Reads a native request body into *p (fields and defaults in docs/API.md). */
static df_status parse_native(struct api_ctx *app, struct http_request *req, struct job_params *p,
                              struct api_error *e) {
    struct pipe_request *r = &p->req;
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body, len, 0, &jerr);
    if (!o) return api_fail(e, 400, "invalid_json", NULL, "malformed JSON: %s (line %d, column %d)", jerr.text,
                            jerr.line, jerr.column);
    df_status st = DF_EINVAL;
    memset(p, 0, sizeof *p);
    const char *prompt = "", *neg = NULL, *sampler = "euler", *schedule = NULL, *rng = "torch", *model = NULL,
               *init = NULL;
    long long width = 512, height = 512, steps = 20, seed = -1, n = 1, clip_skip = 1;
    double cfg_scale = 7.0, strength = 0.75;
    if (!json_is_object(o)) {
        api_fail(e, 400, "invalid_json", NULL, "the body must be a JSON object");
        goto done;
    }
    if (api_string(o, "prompt", &prompt, e) || api_string(o, "negative_prompt", &neg, e) ||
        api_int(o, "width", &width, e) || api_int(o, "height", &height, e) || api_int(o, "steps", &steps, e) ||
        api_number(o, "cfg_scale", &cfg_scale, e) || api_string(o, "sampler", &sampler, e) ||
        api_string(o, "schedule", &schedule, e) || api_string(o, "scheduler", &schedule, e) ||
        api_int(o, "seed", &seed, e) || api_int(o, "n", &n, e) || api_int(o, "batch_size", &n, e) ||
        api_int(o, "clip_skip", &clip_skip, e) || api_string(o, "rng", &rng, e) || api_string(o, "model", &model, e) ||
        api_string(o, "init_image", &init, e) || api_number(o, "strength", &strength, e) ||
        api_int_pair(o, "original_size", r->original_size, e) ||
        api_int_pair(o, "crops_coords_top_left", r->crops_coords_top_left, e) ||
        api_int_pair(o, "target_size", r->target_size, e)) /* any != DF_OK */
        goto done;
    /* clamp before narrowing to int; the range checks then name the field */
#define CLAMP(v) ((v) < -1000000 ? -1000000 : (v) > 1000000 ? 1000000 : (int)(v))
    r->width = CLAMP(width);
    r->height = CLAMP(height);
    r->steps = CLAMP(steps);
    r->batch = CLAMP(n);
    r->clip_skip = CLAMP(clip_skip);
#undef CLAMP
    r->cfg_scale = (float)cfg_scale;
    r->seed = seed;
    r->strength = (float)strength;
    p->origin = JOB_ORIGIN_NATIVE;
    if (model && api_model_lookup(app, model, "model", &p->model, e) != DF_OK) goto done;
    if (api_sampler(sampler, schedule, "sampler", "schedule", &r->sampler, &r->schedule, e) != DF_OK) goto done;
    if (rng_kind_from_name(rng, &r->rng) != DF_OK) {
        api_fail(e, 422, "unknown_rng", "rng", "rng \"%.40s\": use torch (cpu) or philox (gpu, A1111's default)", rng);
        goto done;
    }
    if (api_check_params(app, p, init != NULL, e) != DF_OK) goto done;
    r->prompt = dup_str(prompt);
    r->negative_prompt = neg ? dup_str(neg) : NULL; /* none given: SDXL may use zeros */
    if (init && api_init_image(app, init, r->width, r->height, "init_image", &r->init_image, e) != DF_OK) goto done;
    st = DF_OK;
done:
    json_decref(o);
    if (st != DF_OK) job_params_free(p);
    return st;
}

static bool wants_json(struct http_request *req) {
    const char *accept = http_header(req, "Accept");
    return accept && strstr(accept, "application/json") && !strstr(accept, "image/png");
}

static void generate_done(struct api_ctx *app, struct http_request *req, struct job *job,
                          const struct job_status *st, void *arg) {
    (void)arg;
    if (st->state != JOB_DONE) {
        api_job_error(req, st);
        return;
    }
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)st->images[0].seed);
    http_add_header(req, "X-Job-Id", job_id(job));
    http_add_header(req, "X-Seed", seed);
    if (st->n_images == 1 && !wants_json(req)) {
        void *png = malloc(st->images[0].png_len);
        if (!png) {
            http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
            return;
        }
        memcpy(png, st->images[0].png, st->images[0].png_len);
        http_respond(req, 200, "image/png", png, st->images[0].png_len);
        return;
    }
    json_t *o = job_json(app, job, st), *imgs = json_object_get(o, "images");
    for (int i = 0; i < st->n_images; i++) {
        char *b64 = http_base64_encode(st->images[i].png, st->images[i].png_len);
        json_object_set_new(json_array_get(imgs, (size_t)i), "png_base64", b64 ? json_string(b64) : json_null());
        free(b64);
    }
    http_respond_json(req, 200, o);
}

static void route_generate(struct api_ctx *app, struct http_request *req, bool async) {
    struct job_params p;
    struct api_error e;
    if (!api_body_type_ok(req, api_json_types)) return;
    if (parse_native(app, req, &p, &e) != DF_OK) {
        api_send_error(req, &e);
        return;
    }
    struct job *job = api_submit(app, req, &p);
    if (!job) return;
    if (!async) {
        api_wait(app, req, job, generate_done, NULL, NULL);
        return;
    }
    struct job_status st;
    jobs_status(app->jobs, job, &st);
    json_t *o = job_json(app, job, &st);
    char url[64];
    snprintf(url, sizeof url, "/jobs/%s", job_id(job));
    http_add_header(req, "Location", url);
    job_unref(job);
    http_respond_json(req, 202, o);
}

/* ---- SSE -------------------------------------------------------------------------- */

struct sse {
    int tag;
    struct api_ctx *app;
    struct http_request *req;
    struct job *job;
    struct job_watch watch;
    pthread_mutex_t mu;
    char *buf;
    size_t len, cap, off;
    uint64_t seen;               /* last job version turned into an event */
    uint64_t event_id;
    bool ended;
};

static void sse_append(struct sse *s, const char *event, json_t *data) {
    char *text = json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(data);
    if (!text) return;
    size_t need = strlen(event) + strlen(text) + 64;
    if (s->len + need > s->cap) {
        size_t cap = (s->len + need) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) {
            free(text);
            return;
        }
        s->buf = b;
        s->cap = cap;
    }
    s->len += (size_t)snprintf(s->buf + s->len, s->cap - s->len, "id: %llu\nevent: %s\ndata: %s\n\n",
                               (unsigned long long)++s->event_id, event, text);
    free(text);
}

/* With s->mu held. */
static void sse_event(struct sse *s, const struct job_status *st) {
    if (s->ended || st->version <= s->seen) return;
    s->seen = st->version;
    if (job_state_final(st->state)) {
        sse_append(s, job_state_name(st->state), job_json(s->app, s->job, st));
        s->ended = true;
        return;
    }
    json_t *d = json_pack("{s:s, s:s}", "id", job_id(s->job), "state", job_state_name(st->state));
    if (st->state == JOB_QUEUED) {
        json_object_set_new(d, "position", json_integer(st->position));
        sse_append(s, "state", d);
        return;
    }
    json_object_set_new(d, "stage", json_string(pipe_stage_name(st->stage)));
    json_object_set_new(d, "step", json_integer(st->step));
    json_object_set_new(d, "steps", json_integer(st->steps));
    json_object_set_new(d, "elapsed", json_real(st->run_seconds));
    sse_append(s, "progress", d);
}

static void sse_watch(void *ctx, struct job *j, const struct job_status *st) {
    (void)j;
    struct sse *s = ctx;
    pthread_mutex_lock(&s->mu);
    sse_event(s, st);
    pthread_mutex_unlock(&s->mu);
    http_wake(s->req);
}

static long sse_read(void *ctx, char *buf, size_t max) {
    struct sse *s = ctx;
    pthread_mutex_lock(&s->mu);
    long n = 0;
    if (s->off < s->len) {
        size_t k = s->len - s->off < max ? s->len - s->off : max;
        memcpy(buf, s->buf + s->off, k);
        s->off += k;
        n = (long)k;
    } else if (s->ended) {
        n = -1;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void sse_release(void *user, bool completed) {
    (void)completed;
    struct sse *s = user;
    jobs_unwatch(s->app->jobs, s->job, &s->watch);
    job_unref(s->job);
    pthread_mutex_destroy(&s->mu);
    free(s->buf);
    free(s);
}

static void route_events(struct api_ctx *app, struct http_request *req, struct job *job) {
    struct sse *s = calloc(1, sizeof *s);
    if (!s) {
        job_unref(job);
        http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    s->tag = API_SSE;
    s->app = app;
    s->req = req;
    s->job = job;
    s->watch = (struct job_watch){sse_watch, s, NULL};
    pthread_mutex_init(&s->mu, NULL);
    http_set_user(req, s, sse_release);
    jobs_watch(app->jobs, job, &s->watch);
    struct job_status st;
    jobs_status(app->jobs, job, &st);
    pthread_mutex_lock(&s->mu);
    sse_event(s, &st); /* the state now; a newer one seen by the watch wins */
    pthread_mutex_unlock(&s->mu);
    http_add_header(req, "X-Accel-Buffering", "no"); /* nginx: do not buffer the stream */
    http_respond_stream(req, 200, "text/event-stream", sse_read, s, API_SSE_KEEPALIVE_S);
}

/* ---- /jobs/{id}... ------------------------------------------------------------------ */

static void route_job(struct api_ctx *app, struct http_request *req, const char *rest) {
    char id[40];
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof id) {
        http_respond_error(req, 404, "job_not_found", NULL, "no such job");
        return;
    }
    memcpy(id, rest, n);
    id[n] = 0;
    const char *sub = rest + n, *method = http_method(req);
    struct job *job = jobs_find(app->jobs, id);
    if (!job) {
        http_respond_error(req, 404, "job_not_found", NULL, "no job %s (unknown, or expired after result_ttl_s)", id);
        return;
    }
    http_set_job(req, id);
    struct job_status st;
    jobs_status(app->jobs, job, &st);
    if (*sub == 0 && strcmp(method, "GET") == 0) {
        http_respond_json(req, 200, job_json(app, job, &st));
    } else if (*sub == 0 && strcmp(method, "DELETE") == 0) {
        enum job_state was = jobs_cancel(app->jobs, job, JOB_STOP_USER);
        if (job_state_final(was)) {
            jobs_forget(app->jobs, job);
            http_respond_json(req, 200, json_pack("{s:s, s:b}", "id", id, "deleted", 1));
        } else {
            jobs_status(app->jobs, job, &st);
            http_respond_json(req, was == JOB_QUEUED ? 200 : 202, job_json(app, job, &st));
        }
    } else if (strcmp(sub, "/events") == 0 && strcmp(method, "GET") == 0) {
        route_events(app, req, job);
        return; /* the stream keeps the reference */
    } else if (strncmp(sub, "/images/", 8) == 0 && strcmp(method, "GET") == 0) {
        char *end;
        long k = strtol(sub + 8, &end, 10);
        if (st.state != JOB_DONE) {
            http_respond_error(req, 409, "job_not_done", NULL, "job %s is %s", id, job_state_name(st.state));
        } else if (end == sub + 8 || *end || k < 0 || k >= st.n_images) {
            http_respond_error(req, 404, "image_not_found", NULL, "job %s has %d image(s)", id, st.n_images);
        } else {
            void *png = malloc(st.images[k].png_len);
            if (png) memcpy(png, st.images[k].png, st.images[k].png_len);
            char seed[32];
            snprintf(seed, sizeof seed, "%llu", (unsigned long long)st.images[k].seed);
            http_add_header(req, "X-Seed", seed);
            if (png) http_respond(req, 200, "image/png", png, st.images[k].png_len);
            else http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        }
    } else if (*sub == 0 || strcmp(sub, "/events") == 0 || strncmp(sub, "/images/", 8) == 0) {
        http_add_header(req, "Allow", *sub == 0 ? "GET, DELETE" : "GET");
        http_respond_error(req, 405, "method_not_allowed", NULL, "%s is not allowed here", method);
    } else {
        http_respond_error(req, 404, "not_found", NULL, "no such resource");
    }
    job_unref(job);
}

static void route_list(struct api_ctx *app, struct http_request *req) {
    struct job **jobs = malloc(API_LIST_MAX * sizeof *jobs);
    if (!jobs) {
        http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    int n = jobs_list(app->jobs, jobs, API_LIST_MAX);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        struct job_status st;
        jobs_status(app->jobs, jobs[i], &st);
        json_t *o = json_pack("{s:s, s:s}", "id", job_id(jobs[i]), "state", job_state_name(st.state));
        if (st.state == JOB_QUEUED) json_object_set_new(o, "position", json_integer(st.position));
        json_object_set_new(o, "created", api_time(st.created));
        json_array_append_new(arr, o);
        job_unref(jobs[i]);
    }
    free(jobs);
    http_respond_json(req, 200, json_pack("{s:o}", "jobs", arr));
}

/* ---- health, readiness, metrics, models ----------------------------------------- */

static void route_ready(struct api_ctx *app, struct http_request *req) {
    const char *why = NULL;
    struct jobs_stats js = {0};
    if (atomic_load(&app->stopping)) why = "shutting down";
    else if (!atomic_load(&app->ready)) why = "loading models";
    else {
        jobs_stats(app->jobs, &js);
        if (js.workers_healthy == 0) why = "no usable device (the last job on every worker hit a device error)";
    }
    if (why) {
        http_add_header(req, "Retry-After", "5");
        http_respond_json(req, 503, json_pack("{s:b, s:s}", "ready", 0, "reason", why));
        return;
    }
    http_respond_json(req, 200, json_pack("{s:b, s:i, s:i, s:i}", "ready", 1, "models", app->n_models, "workers",
                                          js.workers, "queued", js.queued));
}

struct text {
    char *buf;
    size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = t->buf ? vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 8192;
        char *b = realloc(t->buf, cap);
        if (!b) return;
        t->buf = b;
        t->cap = cap;
    }
}

static void put_hist(struct text *t, const char *name, const char *help, const struct jobs_histogram *h) {
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < JOBS_HIST_BUCKETS; i++) put(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i],
                                                    (unsigned long long)h->count[i]);
    put(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)h->total, name,
        h->sum, name, (unsigned long long)h->total);
}

static void label(char *out, size_t n, const char *s) { /* Prometheus label value escaping */
    size_t k = 0;
    for (; *s && k + 3 < n; s++) {
        if (*s == '"' || *s == '\\') out[k++] = '\\';
        if (*s == '\n') { out[k++] = '\\'; out[k++] = 'n'; continue; }
        out[k++] = *s;
    }
    out[k] = 0;
}

static void route_metrics(struct api_ctx *app, struct http_request *req) {
    struct text t = {0};
    bool ready = atomic_load(&app->ready);
    put(&t, "# HELP diffusiond_ready 1 when models are loaded and a device is usable.\n"
            "# TYPE diffusiond_ready gauge\ndiffusiond_ready %d\n", ready && !atomic_load(&app->stopping));
    if (ready) {
        struct jobs_stats s;
        jobs_stats(app->jobs, &s);
        put(&t, "# HELP diffusiond_queue_depth Jobs waiting for a worker.\n# TYPE diffusiond_queue_depth gauge\n"
                "diffusiond_queue_depth %d\n", s.queued);
        put(&t, "# HELP diffusiond_queue_capacity queue_max.\n# TYPE diffusiond_queue_capacity gauge\n"
                "diffusiond_queue_capacity %d\n", app->cfg->queue_max);
        put(&t, "# HELP diffusiond_jobs_running Jobs on a worker now.\n# TYPE diffusiond_jobs_running gauge\n"
                "diffusiond_jobs_running %d\n", s.running);
        put(&t, "# HELP diffusiond_workers Worker threads.\n# TYPE diffusiond_workers gauge\n"
                "diffusiond_workers{state=\"healthy\"} %d\ndiffusiond_workers{state=\"device_error\"} %d\n",
            s.workers_healthy, s.workers - s.workers_healthy);
        put(&t, "# HELP diffusiond_jobs_submitted_total Jobs accepted into the queue.\n"
                "# TYPE diffusiond_jobs_submitted_total counter\ndiffusiond_jobs_submitted_total %llu\n",
            (unsigned long long)s.submitted);
        put(&t, "# HELP diffusiond_jobs_rejected_total Jobs refused.\n# TYPE diffusiond_jobs_rejected_total counter\n"
                "diffusiond_jobs_rejected_total{reason=\"queue_full\"} %llu\n", (unsigned long long)s.rejected_full);
        put(&t, "# HELP diffusiond_jobs_finished_total Jobs by final state.\n"
                "# TYPE diffusiond_jobs_finished_total counter\n"
                "diffusiond_jobs_finished_total{state=\"done\"} %llu\n"
                "diffusiond_jobs_finished_total{state=\"failed\"} %llu\n"
                "diffusiond_jobs_finished_total{state=\"cancelled\"} %llu\n",
            (unsigned long long)s.done, (unsigned long long)s.failed, (unsigned long long)s.cancelled);
        put_hist(&t, "diffusiond_step_seconds", "Time of one sampler step (one model evaluation).", &s.step_seconds);
        put_hist(&t, "diffusiond_job_seconds", "Run time of finished jobs.", &s.job_seconds);
        put_hist(&t, "diffusiond_queue_wait_seconds", "Time jobs waited in the queue.", &s.wait_seconds);
    }
    put(&t, "# HELP diffusiond_device_memory_bytes Device memory allocated now.\n"
            "# TYPE diffusiond_device_memory_bytes gauge\n");
    for (int i = 0; i < app->n_devices; i++) {
        char name[300];
        label(name, sizeof name, dev_caps(app->devices[i])->name);
        put(&t, "diffusiond_device_memory_bytes{device=\"%d\",name=\"%s\"} %llu\n", i, name,
            (unsigned long long)dev_memory_in_use(app->devices[i]));
    }
    if (app->cfg->validation) {
        put(&t, "# HELP diffusiond_vulkan_validation_messages_total Validation-layer messages (validation on).\n"
                "# TYPE diffusiond_vulkan_validation_messages_total counter\n");
        for (int i = 0; i < app->n_devices; i++)
            put(&t, "diffusiond_vulkan_validation_messages_total{device=\"%d\"} %llu\n", i,
                (unsigned long long)dev_validation_messages(app->devices[i]));
    }
    if (!t.buf) {
        http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
}

static void route_models(struct api_ctx *app, struct http_request *req) {
    json_t *arr = json_array();
    for (int i = 0; i < app->n_models; i++) {
        const struct model *m = app->models[i].m;
        enum smp_prediction p = m->scheduler.prediction_type;
        /* scheduler_config.json's words; AUTO is the samplers' epsilon */
        const char *pred = p == SMP_PRED_V ? "v_prediction" : p == SMP_PRED_SAMPLE ? "sample"
                         : p == SMP_PRED_FLOW ? "flow" : "epsilon";
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:b}", "name", m->name, "title",
                                             app->models[i].title, "hash", m->hash, "family",
                                             m->family->name, "layout", m->layout ? m->layout : "",
                                             "prediction", pred, "prediction_source", m->prediction_source,
                                             "default", i == 0));
    }
    http_respond_json(req, 200, json_pack("{s:s, s:o}", "default", app->models[0].m->name, "models", arr));
}

/* ---- routing ------------------------------------------------------------------------ */

static const struct api_extension *extension_of(const struct api_ctx *app, const char *path) {
    for (int i = 0; i < app->n_extensions; i++)
        if (strncmp(path, app->extensions[i].prefix, strlen(app->extensions[i].prefix)) == 0)
            return &app->extensions[i];
    return NULL;
}

json_t *api_error_body(void *ctx, const char *path, int *status, const char *code, const char *field,
                       const char *message) {
    const struct api_extension *ext = extension_of(ctx, path);
    return ext && ext->error_body ? ext->error_body(status, code, field, message) : NULL;
}

static bool method_is(struct http_request *req, const char *allowed) {
    if (strcmp(http_method(req), allowed) == 0) return true;
    if (strcmp(allowed, "GET") == 0 && strcmp(http_method(req), "HEAD") == 0) return true;
    http_add_header(req, "Allow", allowed);
    http_respond_error(req, 405, "method_not_allowed", NULL, "use %s here", allowed);
    return false;
}

void api_handle(void *ctx, struct http_request *req) {
    struct api_ctx *app = ctx;
    struct wait *w = http_user(req);
    if (w && w->tag == API_WAIT) { /* woken: the job it waits for has changed */
        wait_continue(w);
        return;
    }
    const char *path = http_path(req);
    if (strcmp(path, "/health") == 0) {
        if (method_is(req, "GET")) http_respond_json(req, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strcmp(path, "/ready") == 0) {
        if (method_is(req, "GET")) route_ready(app, req);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (method_is(req, "GET")) route_metrics(app, req);
        return;
    }
    const struct api_extension *ext = extension_of(app, path);
    bool known = strcmp(path, "/generate") == 0 || strcmp(path, "/jobs") == 0 || strncmp(path, "/jobs/", 6) == 0 ||
                 strcmp(path, "/models") == 0 || ext;
    if (!known) {
        http_respond_error(req, 404, "not_found", NULL, "no such endpoint: %.100s", path);
        return;
    }
    if (!atomic_load(&app->ready) || atomic_load(&app->stopping)) {
        bool stopping = atomic_load(&app->stopping);
        http_add_header(req, "Retry-After", "5");
        http_respond_error(req, 503, stopping ? "shutting_down" : "not_ready", NULL, "%s",
                           stopping ? "the server is shutting down" : "models are still loading");
        return;
    }
    if (ext) {
        if (!ext->handle(app, req)) http_respond_error(req, 404, "not_found", NULL, "no such endpoint: %.100s", path);
    } else if (strcmp(path, "/generate") == 0) {
        if (method_is(req, "POST")) route_generate(app, req, false);
    } else if (strcmp(path, "/jobs") == 0) {
        if (strcmp(http_method(req), "GET") == 0) route_list(app, req);
        else if (strcmp(http_method(req), "POST") == 0) route_generate(app, req, true);
        else {
            http_add_header(req, "Allow", "GET, POST");
            http_respond_error(req, 405, "method_not_allowed", NULL, "use GET or POST here");
        }
    } else if (strncmp(path, "/jobs/", 6) == 0) {
        route_job(app, req, path + 6);
    } else if (method_is(req, "GET")) {
        route_models(app, req);
    }
}
