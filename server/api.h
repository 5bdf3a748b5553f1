/* api: the native HTTP API and the pieces the A1111 endpoints (sdapi.c)
 * share with it.
 *
 *   POST   /generate               one request, one answer: image/png (one
 *                                  image; X-Seed, X-Job-Id) or JSON (n > 1
 *                                  or Accept: application/json). A client
 *                                  that disconnects cancels its job.
 *   POST   /jobs                   202 {id, state, position, urls}
 *   GET    /jobs                   recent jobs
 *   GET    /jobs/{id}              state, position / stage, step, steps,
 *                                  error, images, timings
 *   GET    /jobs/{id}/images/{k}   image/png
 *   GET    /jobs/{id}/events       Server-Sent Events: one per change (every
 *                                  step), then a final done/failed/cancelled
 *   DELETE /jobs/{id}              cancels (queued: now; running: at the next
 *                                  step) or forgets a finished job
 *   GET    /health /ready /metrics /models
 *
 * Status codes: 400 malformed JSON or a wrong type, 401 missing or wrong API
 * key, 404 unknown path / job / model, 405 wrong method, 409 job not in the
 * right state (or cancelled while a client waited), 413 body or image too
 * large, 422 a value out of range or unknown (sampler, schedule), 429 queue
 * full (Retry-After), 500 the job failed (out_of_memory, device_error), 503
 * not ready or shutting down (queued jobs cancelled by SIGTERM: "shutdown"),
 * 504 job_timeout_s passed. DELETE answers 200 (queued: cancelled now;
 * finished: forgotten) or 202 (running: stops at its next step). */
#ifndef DF_API_H
#define DF_API_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "http.h"
#include "jobs.h"

struct api_ctx;

/* Another API served beside the native one (the A1111 endpoints): every
 * path under `prefix` goes to `handle` once the models are ready; it returns
 * false for a path it does not know (404). `error_body`, when not NULL,
 * gives every error answer under `prefix` (401, 404, 429, a failed job,
 * ...) that API's shape, as http_error_fn does. */
struct api_extension {
    const char *prefix;
    bool (*handle)(struct api_ctx *app, struct http_request *req);
    json_t *(*error_body)(int *status, const char *code, const char *field, const char *message);
};

struct api_model {
    const struct model *m;       /* the copy on the first device: name, hash, config */
    char title[300];             /* A1111's "name.safetensors [hash]" */
    char filename[1024];         /* the configured path */
};

/* Everything the handlers see. Set up by serve.c; `jobs` and `ready` are
 * published once the models are loaded. */
struct api_ctx {
    const struct config *cfg;
    struct jobs *jobs;
    struct api_model *models;
    int n_models;
    struct device **devices;
    int n_devices;
    atomic_bool ready, stopping;
    /* A1111 options a client may change (POST /sdapi/v1/options) */
    atomic_int sd_model, sd_clip_skip, sd_rng;
    const struct api_extension *extensions;
    int n_extensions;
};

/* The http_handler of the whole API. */
void api_handle(void *ctx, struct http_request *req);
/* Its http_error_fn: the shape of the extension whose prefix `path` has. */
json_t *api_error_body(void *ctx, const char *path, int *status, const char *code, const char *field,
                       const char *message);

/* ---- shared with sdapi.c ------------------------------------------------ */

struct api_error {
    int status;
    const char *code;
    const char *field;           /* NULL = not about one field */
    char message[512];
};

/* Fills *e and returns DF_EINVAL (DF_ENOMEM for a 5xx), so checks read
 * if (bad) return api_fail(...). */
df_status api_fail(struct api_error *e, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void api_send_error(struct http_request *req, const struct api_error *e);

/* The request helpers below return DF_OK, or an error with *e filled in
 * (the answer to give). Typed fields of a JSON object: absent or null
 * leaves *out unchanged; a wrong type is 400 "invalid_type" naming the
 * field. Integers accept integral reals (512.0). */
df_status api_int(const json_t *obj, const char *key, long long *out, struct api_error *e);
df_status api_number(const json_t *obj, const char *key, double *out, struct api_error *e);
df_status api_string(const json_t *obj, const char *key, const char **out, struct api_error *e);
df_status api_bool(const json_t *obj, const char *key, bool *out, struct api_error *e);

/* A model named by a request: its name, file name, A1111 title or hash.
 * Names that could leave model_dir (/, \, ..) are 400; unknown ones 404. */
df_status api_model_lookup(const struct api_ctx *app, const char *name, const char *field, int *index,
                      struct api_error *e);
/* Sampler and schedule by our or A1111's names; A1111's old combined names
 * ("DPM++ 2M Karras") set the schedule when `schedule` is NULL. */
df_status api_sampler(const char *sampler, const char *schedule, const char *sampler_field, const char *schedule_field,
                 enum smp_kind *kind, enum smp_schedule *sched, struct api_error *e);
/* Base64 PNG (a data: URL too) -> RGB floats resized to w x h as A1111's
 * "Just resize" does. */
df_status api_init_image(const struct api_ctx *app, const char *b64, int w, int h, const char *field, float **out,
                    struct api_error *e);
/* The same from the PNG file's bytes (a multipart upload). */
df_status api_init_png(const struct api_ctx *app, const uint8_t *png, size_t len, int w, int h, const char *field,
                       float **out, struct api_error *e);
/* Limits from the config and what the model can do (strength too when
 * img2img; the init image itself is checked by api_init_image). */
df_status api_check_params(const struct api_ctx *app, const struct job_params *p, bool img2img, struct api_error *e);

/* The media types a route's body may have: every POST route passes its
 * own list (JSON here; a multipart upload route passes
 * {"multipart/form-data", NULL}). A Content-Type not on it (parameters
 * such as "; charset=utf-8" aside) is answered 415 unsupported_media_type
 * and false is returned; no Content-Type at all counts as the list's first
 * type. "application/json" also admits the "+json" types. */
bool api_body_type_ok(struct http_request *req, const char *const *accepted);
extern const char *const api_json_types[];

/* Queues the job; on failure answers the request (429 + Retry-After, 503)
 * and returns NULL. */
struct job *api_submit(struct api_ctx *app, struct http_request *req, struct job_params *p);

/* Suspends `req` until `job` is final, then calls done (on the HTTP
 * thread). The job reference is taken over. If the client leaves first,
 * the job is cancelled. `arg` is freed with free_arg when the request ends. */
typedef void (*api_done_fn)(struct api_ctx *app, struct http_request *req, struct job *job,
                            const struct job_status *st, void *arg);
void api_wait(struct api_ctx *app, struct http_request *req, struct job *job, api_done_fn done, void *arg,
              void (*free_arg)(void *));
/* The error answer for a failed or cancelled job. */
void api_job_error(struct http_request *req, const struct job_status *st);

/* ISO 8601 UTC with milliseconds, or JSON null for 0. */
json_t *api_time(double unix_seconds);

#endif
