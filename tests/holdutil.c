/* holdutil: see holdutil.h. */
#include "holdutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "../models/pipeline.h"

/* The linker's names for the wrapped function and the real one. */
df_status __real_pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                               const struct pipe_hooks *hooks, struct pipe_result *out);
df_status __wrap_pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                               const struct pipe_hooks *hooks, struct pipe_result *out);

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool holding = true;
static int held;        /* generations waiting now */
static unsigned epoch;  /* bumped by every release */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A timed wait on cv of `ms` milliseconds (the condition uses CLOCK_REALTIME). */
static void wait_ms(long ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&cv, &mu, &until);
}

static bool cancelled(const struct pipe_hooks *h) { return h->cancel && atomic_load(h->cancel); }

/* The caller's progress callback first (the job records the stage), then
 * the hold at the start of denoising. */
static void held_progress(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed) {
    const struct pipe_hooks *h = *(const struct pipe_hooks **)ctx;
    if (h->progress) h->progress(h->progress_ctx, stage, step, steps, elapsed);
    if (stage != PIPE_DENOISE || step != 0) return;
    pthread_mutex_lock(&mu);
    unsigned e = epoch;
    held++;
    pthread_cond_broadcast(&cv);
    /* the cancel flag is set by the job module, which tells nobody: look
     * at it every millisecond */
    while (holding && epoch == e && !cancelled(h)) wait_ms(1);
    held--;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

df_status __wrap_pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                               const struct pipe_hooks *hooks, struct pipe_result *out) {
    if (!hooks || !req->prompt || strncmp(req->prompt, HU_HOLD, strlen(HU_HOLD)) != 0)
        return __real_pipe_generate(w, m, req, hooks, out);
    const struct pipe_hooks *orig = hooks;
    struct pipe_hooks h = *hooks;
    h.progress = held_progress;
    h.progress_ctx = &orig;
    return __real_pipe_generate(w, m, req, &h, out);
}

void hu_set_holding(bool on) {
    pthread_mutex_lock(&mu);
    holding = on;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

void hu_wait_held(int n, double timeout) {
    double end = now() + timeout;
    pthread_mutex_lock(&mu);
    while (held < n && now() < end) wait_ms(10);
    int got = held;
    pthread_mutex_unlock(&mu);
    if (got < n) fail_msg("%d generation(s) held after %.0f s, not %d", got, timeout, n);
}

void hu_release(void) {
    pthread_mutex_lock(&mu);
    epoch++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}
