/* jobs: see jobs.h. */
#include "jobs.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "image.h"
#include "infotext.h"
#include "log.h"
#include "../common/clock.h"

struct job {
    atomic_int refs;
    char id[33];
    struct job_params p;
    atomic_bool cancel;          /* read by the pipeline between steps */
    /* everything below is guarded by jobs.mu */
    enum job_state state;
    enum pipe_stage stage;
    int step, steps, worker;
    double created, started, finished;      /* Unix time */
    double t_created, t_started, t_finished, t_step; /* monotonic */
    double sec_text, sec_encode, sec_denoise, sec_decode;
    enum job_stop stop;
    const char *error_code;
    char error_message[512];
    struct job_image *images;
    int n_images;
    uint64_t version;
    struct job_watch *watches;
    struct job *qnext;           /* queue */
    struct job *prev, *next;     /* registry, oldest first */
    bool registered;
};

struct worker {
    struct jobs *js;
    int index;
    struct jobs_worker_spec spec;
    struct pipe_worker *pw;
    pthread_t thread;
    bool started, healthy;
    struct job *current;
};

struct jobs {
    struct jobs_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;      /* a job was queued, or quit */
    pthread_cond_t idle_cv;      /* a running job finished */
    pthread_cond_t reaper_cv;
    struct job *qhead, *qtail;
    int queued, running;
    struct job *first, *last;    /* registry */
    bool stopping, quit;
    bool grace_cut;              /* jobs_cut_grace: stop waiting for running jobs */
    struct worker *workers;
    int n_workers;
    pthread_t reaper;
    bool reaper_started;
    uint64_t submitted, rejected_full, done, failed, cancelled;
    struct jobs_histogram step_h, job_h, wait_h;
};

static const double step_buckets[JOBS_HIST_BUCKETS] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double job_buckets[JOBS_HIST_BUCKETS] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};

static double unix_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void hist_init(struct jobs_histogram *h, const double *le) {
    memset(h, 0, sizeof *h);
    memcpy(h->le, le, sizeof h->le);
}

static void hist_add(struct jobs_histogram *h, double v) {
    for (int i = 0; i < JOBS_HIST_BUCKETS; i++)
        if (v <= h->le[i]) h->count[i]++;
    h->total++;
    h->sum += v;
}

/* ---- names -------------------------------------------------------------- */

const char *job_state_name(enum job_state s) {
    switch (s) {
    case JOB_QUEUED: return "queued";
    case JOB_RUNNING: return "running";
    case JOB_DONE: return "done";
    case JOB_FAILED: return "failed";
    case JOB_CANCELLED: return "cancelled";
    }
    return "?";
}

bool job_state_final(enum job_state s) { return s == JOB_DONE || s == JOB_FAILED || s == JOB_CANCELLED; }

const char *job_sampler_label(enum smp_kind k) {
    switch (k) {
    case SMP_EULER: return "Euler";
    case SMP_EULER_A: return "Euler a";
    case SMP_HEUN: return "Heun";
    case SMP_DDIM: return "DDIM";
    case SMP_DPMPP_2M: return "DPM++ 2M";
    case SMP_LCM: return "LCM";
    case SMP_FLOW_EULER: return "Euler"; /* A1111 calls SD3's flow sampler Euler too */
    default: return "Euler";
    }
}

const char *job_schedule_label(enum smp_schedule s) {
    switch (s) {
    case SMP_SCHEDULE_KARRAS: return "Karras";
    case SMP_SCHEDULE_EXPONENTIAL: return "Exponential";
    case SMP_SCHEDULE_SGM_UNIFORM: return "SGM Uniform";
    default: return NULL;
    }
}

static const char *stop_code(enum job_stop s) {
    switch (s) {
    case JOB_STOP_USER: return "cancelled";
    case JOB_STOP_INTERRUPT: return "interrupted";
    case JOB_STOP_DISCONNECT: return "client_disconnected";
    case JOB_STOP_SHUTDOWN: return "shutdown";
    case JOB_STOP_TIMEOUT: return "timeout";
    default: return "cancelled";
    }
}

static const char *stop_message(enum job_stop s) {
    switch (s) {
    case JOB_STOP_USER: return "cancelled by a DELETE request";
    case JOB_STOP_INTERRUPT: return "interrupted by /sdapi/v1/interrupt";
    case JOB_STOP_DISCONNECT: return "the client that was waiting for it disconnected";
    case JOB_STOP_SHUTDOWN: return "the server is shutting down";
    case JOB_STOP_TIMEOUT: return "the job ran longer than job_timeout_s";
    default: return "cancelled";
    }
}

static const char *status_code(df_status st) {
    switch (st) {
    case DF_EINVAL: return "invalid_request";
    case DF_ENOMEM: return "out_of_memory";
    case DF_EDEVICE: return "device_error";
    case DF_EIO: return "io_error";
    case DF_EFORMAT: return "invalid_input";
    case DF_EUNSUPPORTED: return "unsupported";
    case DF_ENUMERIC: return "numeric_error";
    default: return "internal_error";
    }
}

/* ---- job objects -------------------------------------------------------- */

void job_params_free(struct job_params *p) {
    free(p->req.prompt);
    free(p->req.negative_prompt);
    free(p->req.init_image);
    memset(p, 0, sizeof *p);
}

const char *job_id(const struct job *j) { return j->id; }
const struct job_params *job_params(const struct job *j) { return &j->p; }

void job_ref(struct job *j) { atomic_fetch_add(&j->refs, 1); }

void job_unref(struct job *j) {
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    job_params_free(&j->p);
    for (int i = 0; i < j->n_images; i++) {
        free(j->images[i].png);
        free(j->images[i].infotext);
    }
    free(j->images);
    free(j);
}

static void fill_status(const struct jobs *js, const struct job *j, struct job_status *st) {
    memset(st, 0, sizeof *st);
    st->state = j->state;
    st->stage = j->stage;
    st->step = j->step;
    st->steps = j->steps;
    st->created = j->created;
    st->started = j->started;
    st->finished = j->finished;
    double now = clock_now();
    if (j->state == JOB_QUEUED) {
        st->queue_seconds = now - j->t_created;
        int pos = 1;
        for (const struct job *q = js->qhead; q && q != j; q = q->qnext) pos++;
        st->position = pos;
    } else if (j->t_started > 0) {
        st->queue_seconds = j->t_started - j->t_created;
        st->run_seconds = (j->t_finished > 0 ? j->t_finished : now) - j->t_started;
    } else {
        st->queue_seconds = j->t_finished - j->t_created; /* cancelled while queued */
    }
    st->seconds_text = j->sec_text;
    st->seconds_encode = j->sec_encode;
    st->seconds_denoise = j->sec_denoise;
    st->seconds_decode = j->sec_decode;
    st->stop = j->stop;
    st->error_code = j->error_code;
    st->error_message = j->error_code ? j->error_message : NULL;
    st->n_images = j->state == JOB_DONE ? j->n_images : 0;
    st->images = j->state == JOB_DONE ? j->images : NULL;
    st->worker = j->worker;
    st->version = j->version;
}

/* With js->mu held: a change every watcher must see. */
static void changed(struct jobs *js, struct job *j) {
    j->version++;
    if (!j->watches) return;
    struct job_status st;
    fill_status(js, j, &st);
    for (struct job_watch *w = j->watches; w; w = w->next) w->fn(w->ctx, j, &st);
}

static void finish(struct jobs *js, struct job *j, enum job_state state) {
    j->state = state;
    j->finished = unix_now();
    j->t_finished = clock_now();
    if (state == JOB_DONE) js->done++;
    else if (state == JOB_FAILED) js->failed++;
    else js->cancelled++;
    if (state == JOB_DONE && j->t_started > 0) hist_add(&js->job_h, j->t_finished - j->t_started);
    changed(js, j);
    pthread_cond_signal(&js->reaper_cv);
}

static void registry_remove(struct jobs *js, struct job *j) {
    if (!j->registered) return;
    if (j->prev) j->prev->next = j->next;
    else js->first = j->next;
    if (j->next) j->next->prev = j->prev;
    else js->last = j->prev;
    j->prev = j->next = NULL;
    j->registered = false;
}

/* With js->mu held: the queue moved, so waiting jobs have new positions. */
static void queue_moved(struct jobs *js) {
    for (struct job *q = js->qhead; q; q = q->qnext)
        if (q->watches) changed(js, q);
}

static void queue_remove(struct jobs *js, struct job *j) {
    struct job **pp = &js->qhead, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (!*pp) return;
    *pp = j->qnext;
    if (js->qtail == j) js->qtail = prev;
    j->qnext = NULL;
    js->queued--;
    queue_moved(js);
}

/* ---- the worker --------------------------------------------------------- */

struct run_ctx {
    struct jobs *js;
    struct job *job;
};

static void on_progress(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed) {
    (void)elapsed;
    struct run_ctx *rc = ctx;
    struct jobs *js = rc->js;
    struct job *j = rc->job;
    double now = clock_now();
    pthread_mutex_lock(&js->mu);
    if (stage == PIPE_DENOISE && step > 0 && j->t_step > 0) hist_add(&js->step_h, now - j->t_step);
    if (stage == PIPE_DENOISE) j->t_step = now;
    /* step/steps report the sampler; the decode stage counts images, not shown */
    bool news = j->stage != stage || (stage == PIPE_DENOISE && (j->step != step || j->steps != steps));
    j->stage = stage;
    if (stage == PIPE_DENOISE) {
        j->step = step;
        j->steps = steps;
    }
    if (js->cfg.job_timeout_s > 0 && now - j->t_started > js->cfg.job_timeout_s && !atomic_load(&j->cancel)) {
        j->stop = JOB_STOP_TIMEOUT;
        atomic_store(&j->cancel, true);
    }
    if (news) changed(js, j);
    pthread_mutex_unlock(&js->mu);
}

/* PNGs with the A1111 infotext, as A1111 writes them. */
static df_status encode_images(const struct job *j, const struct model *m, const struct pipe_result *res,
                               struct job_image **out) {
    struct job_image *imgs = calloc((size_t)res->count, sizeof *imgs);
    if (!imgs) return df_error(DF_ENOMEM, "out of memory");
    df_status st = DF_OK;
    size_t px = (size_t)res->width * (size_t)res->height * 3;
    for (int i = 0; st == DF_OK && i < res->count; i++) {
        const struct pipe_request *r = &j->p.req;
        struct info_params ip = {
            .prompt = r->prompt,
            .negative_prompt = r->negative_prompt,
            .steps = r->steps,
            .sampler = job_sampler_label(r->sampler),
            .schedule_type = job_schedule_label(r->schedule),
            .cfg_scale = r->cfg_scale,
            .seed = (int64_t)res->seeds[i],
            .width = res->width,
            .height = res->height,
            .model_hash = m->hash[0] ? m->hash : NULL,
            .model_name = m->name,
            .denoising_strength = r->init_image ? r->strength : -1,
            .clip_skip = r->clip_skip,
            .rng = r->rng == RNG_TORCH_CPU ? "CPU" : NULL,
            .version = "diffusiond",
        };
        imgs[i].seed = res->seeds[i];
        st = info_format(&ip, &imgs[i].infotext);
        if (st == DF_OK)
            st = img_encode_png(res->images + px * (size_t)i, res->width, res->height, imgs[i].infotext,
                                &imgs[i].png, &imgs[i].png_len);
    }
    if (st != DF_OK) {
        for (int i = 0; i < res->count; i++) {
            free(imgs[i].png);
            free(imgs[i].infotext);
        }
        free(imgs);
        return st;
    }
    *out = imgs;
    return DF_OK;
}

static void run_job(struct worker *w, struct job *j) {
    struct jobs *js = w->js;
    struct model *m = w->spec.models[j->p.model];
    struct run_ctx rc = {js, j};
    struct pipe_hooks hooks = {.progress = on_progress, .progress_ctx = &rc, .cancel = &j->cancel};
    const struct pipe_request *req = &j->p.req;
    log_write(LOGL_INFO, j->id, "started on worker %d: %dx%d, %d steps, %d image(s), sampler %s, model %s", w->index,
              req->width, req->height, req->steps, req->batch, smp_kind_name(req->sampler), m->name);
    struct pipe_result res;
    df_status st = pipe_generate(w->pw, m, req, &hooks, &res);
    struct job_image *imgs = NULL;
    if (st == DF_OK) st = encode_images(j, m, &res, &imgs);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", st == DF_OK ? "" : df_errmsg());

    pthread_mutex_lock(&js->mu);
    w->healthy = st != DF_EDEVICE;
    if (st == DF_OK) {
        j->images = imgs;
        j->n_images = res.count;
        j->sec_text = res.seconds_text;
        j->sec_encode = res.seconds_encode;
        j->sec_denoise = res.seconds_denoise;
        j->sec_decode = res.seconds_decode;
        j->stage = PIPE_DONE;
        finish(js, j, JOB_DONE);
    } else if (st == DF_ECANCELLED) {
        enum job_stop why = j->stop == JOB_STOP_NONE ? JOB_STOP_USER : j->stop;
        j->error_code = stop_code(why);
        snprintf(j->error_message, sizeof j->error_message, "%s", stop_message(why));
        finish(js, j, why == JOB_STOP_TIMEOUT ? JOB_FAILED : JOB_CANCELLED);
    } else {
        j->error_code = status_code(st);
        snprintf(j->error_message, sizeof j->error_message, "%s", msg[0] ? msg : df_status_name(st));
        finish(js, j, JOB_FAILED);
    }
    double secs = j->t_finished - j->t_started;
    enum job_state final = j->state;
    pthread_mutex_unlock(&js->mu);
    if (final == JOB_DONE && res.vae_fp32_retry)
        log_write(LOGL_WARN, j->id, "the VAE overflowed with fp16 weights: decoded again in fp32");
    pipe_result_free(&res);
    if (final == JOB_DONE) log_write(LOGL_INFO, j->id, "done in %.2f s", secs);
    else log_write(final == JOB_FAILED ? LOGL_WARN : LOGL_INFO, j->id, "%s after %.2f s: %s: %s",
                   job_state_name(final), secs, j->error_code, j->error_message);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct jobs *js = w->js;
    pthread_mutex_lock(&js->mu);
    for (;;) {
        while (!js->quit && !js->qhead) pthread_cond_wait(&js->work_cv, &js->mu);
        if (!js->qhead) break; /* quit with nothing queued */
        struct job *j = js->qhead;
        js->qhead = j->qnext;
        if (!js->qhead) js->qtail = NULL;
        j->qnext = NULL;
        js->queued--;
        js->running++;
        w->current = j;
        j->state = JOB_RUNNING;
        j->worker = w->index;
        j->started = unix_now();
        j->t_started = clock_now();
        j->stage = PIPE_TEXT;
        hist_add(&js->wait_h, j->t_started - j->t_created);
        changed(js, j);
        queue_moved(js);
        pthread_mutex_unlock(&js->mu);

        run_job(w, j);

        pthread_mutex_lock(&js->mu);
        w->current = NULL;
        js->running--;
        pthread_cond_broadcast(&js->idle_cv);
        job_unref(j); /* the queue's reference, carried by the worker */
    }
    pthread_mutex_unlock(&js->mu);
    return NULL;
}

/* ---- the reaper: results live result_ttl_s after they finish -------------- */

static void *reaper_main(void *arg) {
    struct jobs *js = arg;
    pthread_mutex_lock(&js->mu);
    while (!js->quit) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&js->reaper_cv, &js->mu, &until);
        double now = clock_now();
        struct job *j = js->first;
        while (j) {
            struct job *next = j->next;
            if (job_state_final(j->state) && now - j->t_finished >= js->cfg.result_ttl_s) {
                registry_remove(js, j);
                log_write(LOGL_DEBUG, j->id, "expired");
                job_unref(j); /* frees it unless a request still looks at it */
            }
            j = next;
        }
    }
    pthread_mutex_unlock(&js->mu);
    return NULL;
}

/* ---- API ---------------------------------------------------------------- */

df_status jobs_create(const struct jobs_config *cfg, const struct jobs_worker_spec *workers, int n_workers,
                      struct jobs **out) {
    struct jobs *js = calloc(1, sizeof *js);
    if (!js) return df_error(DF_ENOMEM, "out of memory");
    js->cfg = *cfg;
    pthread_mutex_init(&js->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&js->work_cv, &ca);
    pthread_cond_init(&js->idle_cv, &ca);
    pthread_cond_init(&js->reaper_cv, &ca);
    pthread_condattr_destroy(&ca);
    hist_init(&js->step_h, step_buckets);
    hist_init(&js->job_h, job_buckets);
    hist_init(&js->wait_h, job_buckets);
    js->workers = calloc((size_t)n_workers, sizeof *js->workers);
    if (!js->workers) {
        jobs_destroy(js);
        return df_error(DF_ENOMEM, "out of memory");
    }
    js->n_workers = n_workers;
    df_status st = DF_OK;
    for (int i = 0; st == DF_OK && i < n_workers; i++) {
        struct worker *w = &js->workers[i];
        w->js = js;
        w->index = i;
        w->spec = workers[i];
        w->healthy = true;
        st = pipe_worker_create(w->spec.dev, &w->pw);
        if (st == DF_OK && cfg->vae_tile_budget) pipe_worker_set_vae_budget(w->pw, cfg->vae_tile_budget);
        if (st == DF_OK && pthread_create(&w->thread, NULL, worker_main, w) != 0)
            st = df_error(DF_ENOMEM, "cannot start a worker thread");
        w->started = st == DF_OK;
    }
    if (st == DF_OK) {
        if (pthread_create(&js->reaper, NULL, reaper_main, js) != 0)
            st = df_error(DF_ENOMEM, "cannot start the reaper thread");
        js->reaper_started = st == DF_OK;
    }
    if (st != DF_OK) {
        jobs_shutdown(js, 0);
        jobs_destroy(js);
        return st;
    }
    *out = js;
    return DF_OK;
}

void jobs_shutdown(struct jobs *js, double grace_s) {
    pthread_mutex_lock(&js->mu);
    js->stopping = true;
    int dropped = 0;
    while (js->qhead) {
        struct job *j = js->qhead;
        queue_remove(js, j);
        j->stop = JOB_STOP_SHUTDOWN;
        j->error_code = stop_code(JOB_STOP_SHUTDOWN);
        snprintf(j->error_message, sizeof j->error_message, "%s", stop_message(JOB_STOP_SHUTDOWN));
        finish(js, j, JOB_CANCELLED);
        job_unref(j);
        dropped++;
    }
    if (dropped) log_write(LOGL_INFO, NULL, "shutdown: %d queued job(s) cancelled", dropped);
    if (js->running) log_write(LOGL_INFO, NULL, "shutdown: waiting up to %.0f s for %d running job(s)", grace_s,
                               js->running);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    double t = (double)until.tv_sec + (double)until.tv_nsec * 1e-9 + grace_s;
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    while (js->running > 0 && !js->grace_cut && pthread_cond_timedwait(&js->idle_cv, &js->mu, &until) == 0) {}
    if (js->running > 0) {
        log_write(LOGL_WARN, NULL, "shutdown: grace period over, cancelling %d running job(s)", js->running);
        for (int i = 0; i < js->n_workers; i++) {
            struct job *j = js->workers[i].current;
            if (!j) continue;
            if (j->stop == JOB_STOP_NONE) j->stop = JOB_STOP_SHUTDOWN;
            atomic_store(&j->cancel, true);
        }
    }
    js->quit = true;
    pthread_cond_broadcast(&js->work_cv);
    pthread_cond_broadcast(&js->reaper_cv);
    pthread_mutex_unlock(&js->mu);
    for (int i = 0; i < js->n_workers; i++)
        if (js->workers[i].started) {
            pthread_join(js->workers[i].thread, NULL);
            js->workers[i].started = false;
        }
    if (js->reaper_started) {
        pthread_join(js->reaper, NULL);
        js->reaper_started = false;
    }
}

void jobs_cut_grace(struct jobs *js) {
    pthread_mutex_lock(&js->mu);
    js->grace_cut = true;
    pthread_cond_broadcast(&js->idle_cv);
    pthread_mutex_unlock(&js->mu);
}

void jobs_destroy(struct jobs *js) {
    if (!js) return;
    if (!js->quit) jobs_shutdown(js, 0);
    while (js->first) {
        struct job *j = js->first;
        registry_remove(js, j);
        job_unref(j);
    }
    for (int i = 0; i < js->n_workers; i++) pipe_worker_destroy(js->workers[i].pw);
    free(js->workers);
    pthread_cond_destroy(&js->work_cv);
    pthread_cond_destroy(&js->idle_cv);
    pthread_cond_destroy(&js->reaper_cv);
    pthread_mutex_destroy(&js->mu);
    free(js);
}

df_status jobs_submit(struct jobs *js, struct job_params *params, struct job **out) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        job_params_free(params);
        return df_error(DF_ENOMEM, "out of memory");
    }
    uint8_t rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        /* never expected on Linux >= 3.17; ids must still be unique */
        static atomic_uint_fast64_t fallback;
        uint64_t v = atomic_fetch_add(&fallback, 1) ^ (uint64_t)(clock_now() * 1e9);
        memcpy(rnd, &v, 8);
        memcpy(rnd + 8, &v, 8);
    }
    for (int i = 0; i < 16; i++) snprintf(j->id + 2 * i, 3, "%02x", rnd[i]);
    j->p = *params;
    memset(params, 0, sizeof *params);
    atomic_init(&j->refs, 3); /* registry, queue, caller */
    atomic_init(&j->cancel, false);
    j->state = JOB_QUEUED;
    j->stage = PIPE_QUEUED;
    j->worker = -1;
    j->version = 1; /* a watcher that has seen nothing has seen version 0 */
    j->created = unix_now();
    j->t_created = clock_now();

    pthread_mutex_lock(&js->mu);
    if (js->stopping || js->queued >= js->cfg.queue_max) {
        bool full = !js->stopping;
        if (full) js->rejected_full++;
        int queued = js->queued;
        pthread_mutex_unlock(&js->mu);
        job_params_free(&j->p);
        free(j);
        if (full) return df_error(DF_ENOMEM, "the queue is full (%d jobs waiting)", queued);
        return df_error(DF_ECANCELLED, "the server is shutting down");
    }
    j->prev = js->last;
    if (js->last) js->last->next = j;
    else js->first = j;
    js->last = j;
    j->registered = true;
    if (js->qtail) js->qtail->qnext = j;
    else js->qhead = j;
    js->qtail = j;
    js->queued++;
    js->submitted++;
    pthread_cond_signal(&js->work_cv);
    pthread_mutex_unlock(&js->mu);
    log_write(LOGL_DEBUG, j->id, "queued");
    *out = j;
    return DF_OK;
}

struct job *jobs_find(struct jobs *js, const char *id) {
    struct job *found = NULL;
    pthread_mutex_lock(&js->mu);
    for (struct job *j = js->last; j; j = j->prev) /* recent ones are asked about most */
        if (strcmp(j->id, id) == 0) {
            found = j;
            job_ref(j);
            break;
        }
    pthread_mutex_unlock(&js->mu);
    return found;
}

int jobs_list(struct jobs *js, struct job **out, int max) {
    int n = 0;
    pthread_mutex_lock(&js->mu);
    for (struct job *j = js->last; j && n < max; j = j->prev) {
        job_ref(j);
        out[n++] = j;
    }
    pthread_mutex_unlock(&js->mu);
    return n;
}

struct job *jobs_current(struct jobs *js, enum job_origin origin) {
    struct job *best = NULL;
    pthread_mutex_lock(&js->mu);
    for (int i = 0; i < js->n_workers; i++) {
        struct job *j = js->workers[i].current;
        if (j && j->p.origin == origin && (!best || j->t_started < best->t_started)) best = j;
    }
    if (best) job_ref(best);
    pthread_mutex_unlock(&js->mu);
    return best;
}

enum job_state jobs_cancel(struct jobs *js, struct job *j, enum job_stop why) {
    pthread_mutex_lock(&js->mu);
    enum job_state was = j->state;
    if (was == JOB_QUEUED) {
        queue_remove(js, j);
        j->stop = why;
        j->error_code = stop_code(why);
        snprintf(j->error_message, sizeof j->error_message, "%s", stop_message(why));
        finish(js, j, why == JOB_STOP_TIMEOUT ? JOB_FAILED : JOB_CANCELLED);
        job_unref(j); /* the queue's reference */
    } else if (was == JOB_RUNNING && !atomic_load(&j->cancel)) {
        j->stop = why;
        atomic_store(&j->cancel, true);
        changed(js, j);
    }
    pthread_mutex_unlock(&js->mu);
    if (was == JOB_QUEUED || was == JOB_RUNNING)
        log_write(LOGL_INFO, j->id, "cancel requested (%s) while %s", stop_code(why), job_state_name(was));
    return was;
}

int jobs_interrupt(struct jobs *js, enum job_origin origin) {
    int n = 0;
    pthread_mutex_lock(&js->mu);
    for (int i = 0; i < js->n_workers; i++) {
        struct job *j = js->workers[i].current;
        if (!j || j->p.origin != origin || atomic_load(&j->cancel)) continue;
        j->stop = JOB_STOP_INTERRUPT;
        atomic_store(&j->cancel, true);
        changed(js, j);
        n++;
    }
    pthread_mutex_unlock(&js->mu);
    return n;
}

void jobs_forget(struct jobs *js, struct job *j) {
    pthread_mutex_lock(&js->mu);
    bool drop = j->registered && job_state_final(j->state);
    if (drop) registry_remove(js, j);
    pthread_mutex_unlock(&js->mu);
    if (drop) job_unref(j);
}

void jobs_status(struct jobs *js, struct job *j, struct job_status *out) {
    pthread_mutex_lock(&js->mu);
    fill_status(js, j, out);
    pthread_mutex_unlock(&js->mu);
}

void jobs_watch(struct jobs *js, struct job *j, struct job_watch *w) {
    pthread_mutex_lock(&js->mu);
    w->next = j->watches;
    j->watches = w;
    pthread_mutex_unlock(&js->mu);
}

void jobs_unwatch(struct jobs *js, struct job *j, struct job_watch *w) {
    pthread_mutex_lock(&js->mu);
    for (struct job_watch **pp = &j->watches; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    pthread_mutex_unlock(&js->mu);
}

void jobs_stats(struct jobs *js, struct jobs_stats *out) {
    pthread_mutex_lock(&js->mu);
    out->queued = js->queued;
    out->running = js->running;
    out->workers = js->n_workers;
    out->workers_healthy = 0;
    for (int i = 0; i < js->n_workers; i++) out->workers_healthy += js->workers[i].healthy;
    out->submitted = js->submitted;
    out->rejected_full = js->rejected_full;
    out->done = js->done;
    out->failed = js->failed;
    out->cancelled = js->cancelled;
    out->step_seconds = js->step_h;
    out->job_seconds = js->job_h;
    out->wait_seconds = js->wait_h;
    pthread_mutex_unlock(&js->mu);
}

int jobs_retry_after(struct jobs *js) {
    pthread_mutex_lock(&js->mu);
    double per_job = js->job_h.total ? js->job_h.sum / (double)js->job_h.total : 10.0;
    double s = per_job * (double)(js->queued + 1) / (double)(js->n_workers ? js->n_workers : 1);
    pthread_mutex_unlock(&js->mu);
    if (s < 1) s = 1;
    if (s > 3600) s = 3600;
    return (int)(s + 0.999);
}
