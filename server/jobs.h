/* jobs: the job queue, the worker threads that run the pipeline, and the
 * registry of recent jobs.
 *
 * A job is refcounted. The registry holds one reference from submission
 * until its result has been kept result_ttl_s (then the reaper drops it);
 * the queue and the worker running it hold theirs; every HTTP request or
 * SSE stream looking at it holds one. So a client that disconnects, a
 * DELETE and a worker finishing can happen in any order: the last
 * job_unref frees it.
 *
 * One lock (the registry's) guards every job's mutable state; watchers are
 * called with it held, on every change, so they see each step. A job's
 * parameters never change after submission, and its images never change
 * once it is done.
 *
 * Workers: each owns a pipe_worker on one device and takes jobs in FIFO
 * order. A job that fails (bad input found late, device out of memory)
 * fails alone; the worker goes on with the next. */
#ifndef DF_JOBS_H
#define DF_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../compute/device.h"
#include "../models/model.h"
#include "../models/pipeline.h"

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED };

/* Why a job was stopped; decides its final state and error code. */
enum job_stop {
    JOB_STOP_NONE,
    JOB_STOP_USER,        /* DELETE /jobs/{id}       -> cancelled "cancelled" */
    JOB_STOP_INTERRUPT,   /* /sdapi/v1/interrupt     -> cancelled "interrupted" */
    JOB_STOP_DISCONNECT,  /* its waiting client left -> cancelled "client_disconnected" */
    JOB_STOP_SHUTDOWN,    /* SIGTERM                 -> cancelled "shutdown" */
    JOB_STOP_TIMEOUT,     /* job_timeout_s passed    -> failed "timeout" */
};

enum job_origin { JOB_ORIGIN_NATIVE, JOB_ORIGIN_SDAPI };

/* What to generate: the pipeline's request as the HTTP layer parsed it,
 * and where it goes. The request's strings and init_image are owned by the
 * job once submitted (jobs_submit takes them even when it fails). */
struct job_params {
    struct pipe_request req;
    int model;                   /* index into the model table */
    enum job_origin origin;
};

/* Frees what a job_params owns and zeroes it (for requests that fail before
 * they are submitted). */
void job_params_free(struct job_params *p);

struct job_image {
    uint8_t *png;
    size_t png_len;
    uint64_t seed;
    char *infotext;              /* A1111 parameters text, also in the PNG */
};

/* A consistent snapshot of a job (jobs_status). Pointers into the job stay
 * valid while the caller holds a reference. */
struct job_status {
    enum job_state state;
    int position;                /* queued: 1 = next to run */
    enum pipe_stage stage;
    int step, steps;             /* running: model evaluations done / total */
    double created, started, finished; /* Unix time; 0 = not yet */
    double queue_seconds, run_seconds;
    double seconds_text, seconds_encode, seconds_denoise, seconds_decode;
    enum job_stop stop;
    const char *error_code;      /* failed / cancelled: stable code */
    const char *error_message;
    int n_images;
    const struct job_image *images; /* done only */
    int worker;                  /* -1 until started */
    uint64_t version;            /* bumps on every change */
};

struct job;
struct jobs;

/* Called with the registry lock held on every change of `j`: it must be
 * quick and must not call back into this module. */
struct job_watch {
    void (*fn)(void *ctx, struct job *j, const struct job_status *st);
    void *ctx;
    struct job_watch *next;
};

struct jobs_worker_spec {
    struct device *dev;
    struct model **models;       /* the model table on this device */
};

struct jobs_config {
    int queue_max;
    double job_timeout_s;        /* 0 = none */
    double result_ttl_s;
    int n_models;
    uint64_t vae_tile_budget;    /* 0 = the pipeline's default */
};

df_status jobs_create(const struct jobs_config *cfg, const struct jobs_worker_spec *workers, int n_workers,
                      struct jobs **out);
/* After jobs_shutdown. Frees the registry; jobs still referenced elsewhere
 * must be released before (the HTTP server is stopped first). */
void jobs_destroy(struct jobs *js);

/* Queues a job. DF_ENOMEM "queue full" when queue_max jobs wait (answer
 * 429), DF_ECANCELLED when shutting down (503). On DF_OK *out is a new
 * reference for the caller. */
df_status jobs_submit(struct jobs *js, struct job_params *params, struct job **out);

/* A new reference to the job with this id, or NULL (unknown or expired). */
struct job *jobs_find(struct jobs *js, const char *id);
/* Up to `max` references to registry jobs, newest first; returns the count. */
int jobs_list(struct jobs *js, struct job **out, int max);
/* The longest-running job of `origin` (A1111's "current job"), or NULL. */
struct job *jobs_current(struct jobs *js, enum job_origin origin);

/* Stops a queued job now, a running one at its next step; no-op when it
 * has finished. Returns the state it had. */
enum job_state jobs_cancel(struct jobs *js, struct job *j, enum job_stop why);
/* Cancels every running job of `origin`; returns how many. */
int jobs_interrupt(struct jobs *js, enum job_origin origin);
/* Forgets a finished job (its images go with the last reference). */
void jobs_forget(struct jobs *js, struct job *j);

void jobs_status(struct jobs *js, struct job *j, struct job_status *out);
void jobs_watch(struct jobs *js, struct job *j, struct job_watch *w);
void jobs_unwatch(struct jobs *js, struct job *j, struct job_watch *w);

/* Stops taking jobs, cancels the queued ones (JOB_STOP_SHUTDOWN), lets the
 * running ones finish for up to grace_s, then cancels them, and joins the
 * workers. */
void jobs_shutdown(struct jobs *js, double grace_s);
/* From another thread during jobs_shutdown: ends the grace period now (the
 * running jobs are cancelled at their next step). Also before it: then
 * jobs_shutdown waits for nothing. */
void jobs_cut_grace(struct jobs *js);

const char *job_id(const struct job *j);
const struct job_params *job_params(const struct job *j);
void job_ref(struct job *j);
void job_unref(struct job *j);

const char *job_state_name(enum job_state s);
bool job_state_final(enum job_state s);

/* Metrics. Histograms are cumulative, Prometheus style. */
#define JOBS_HIST_BUCKETS 12
struct jobs_histogram {
    double le[JOBS_HIST_BUCKETS];
    uint64_t count[JOBS_HIST_BUCKETS]; /* observations <= le[i] */
    uint64_t total;
    double sum;
};

struct jobs_stats {
    int queued, running, workers, workers_healthy;
    uint64_t submitted, rejected_full, done, failed, cancelled;
    struct jobs_histogram step_seconds;  /* one model evaluation */
    struct jobs_histogram job_seconds;   /* start to finish, done jobs */
    struct jobs_histogram wait_seconds;  /* queued time of started jobs */
};

void jobs_stats(struct jobs *js, struct jobs_stats *out);
/* Seconds a new job would likely wait: for Retry-After. */
int jobs_retry_after(struct jobs *js);

/* A1111's names, for infotexts and /sdapi/v1/samplers. */
const char *job_sampler_label(enum smp_kind k);
const char *job_schedule_label(enum smp_schedule s); /* NULL for the default */

#endif
