/* serve: see serve.h. */
#include "serve.h"

#include <ctype.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "openai.h"
#include "sdapi.h"
#include "../common/clock.h"

#define SERVE_DRAIN_ANSWERS_S 10.0 /* after the jobs end: time to send their answers */

struct server {
    const struct config *cfg;
    struct http_server *http;
    struct jobs *jobs;
    struct device **devices;
    int n_devices;
    struct model **models;       /* [device * n_models + model] */
    struct api_ctx app;
    bool stopped;
};

static void model_log(void *ctx, const char *message) {
    log_write(LOGL_INFO, NULL, "model %s: %s", (const char *)ctx, message);
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    if (b && b[1] == 0) { /* "folder/" */
        while (b > path && b[-1] != '/') b--;
        return b;
    }
    return b ? b + 1 : path;
}

static df_status open_devices(struct server *s) {
    const struct config *c = s->cfg;
    int n = c->n_devices ? c->n_devices : 1;
    s->devices = calloc((size_t)n, sizeof *s->devices);
    if (!s->devices) return df_error(DF_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        struct dev_config dc = {.index = -1, .validation = c->validation};
        if (c->n_devices) {
            const char *spec = c->devices[i];
            bool digits = *spec != 0;
            for (const char *p = spec; *p; p++) digits &= isdigit((unsigned char)*p) != 0;
            if (digits) dc.index = atoi(spec);
            else dc.name_contains = spec;
        }
        df_status st = dev_create(&dc, &s->devices[i]);
        if (st != DF_OK) return df_error(st, "device %s: %s", c->n_devices ? c->devices[i] : "(auto)", df_errmsg());
        s->n_devices++;
        log_write(LOGL_INFO, NULL, "device %d: %s", i, dev_caps(s->devices[i])->name);
    }
    return DF_OK;
}

static df_status load_models(struct server *s) {
    const struct config *c = s->cfg;
    s->models = calloc((size_t)s->n_devices * (size_t)c->n_models, sizeof *s->models);
    s->app.models = calloc((size_t)c->n_models, sizeof *s->app.models);
    if (!s->models || !s->app.models) return df_error(DF_ENOMEM, "out of memory");
    for (int d = 0; d < s->n_devices; d++)
        for (int i = 0; i < c->n_models; i++) {
            const struct cfg_model *cm = &c->models[i];
            const char *what = cm->path ? cm->path : cm->component[COMP_UNET] ? cm->component[COMP_UNET] : "(components)";
            struct model_options opt = {
                .path = cm->path, .family = cm->family, .scheduler_config = cm->scheduler_config,
                .prediction = cm->prediction, .precision = c->precision, .log = model_log, .log_ctx = (void *)what,
            };
            json_t *cfgs[COMP_COUNT] = {NULL};
            df_status st = DF_OK;
            for (int k = 0; k < COMP_COUNT && st == DF_OK; k++) {
                json_error_t je;
                const char *file = cm->component_config[k];
                opt.component[k] = cm->component[k];
                if (file && !(cfgs[k] = json_load_file(file, 0, &je)))
                    st = df_error(DF_EFORMAT, "%s: %s (line %d)", file, je.text, je.line);
                opt.component_config[k] = cfgs[k];
            }
            double t = clock_now();
            struct model **slot = &s->models[d * c->n_models + i];
            if (st == DF_OK) st = model_load(s->devices[d], &opt, slot);
            for (int k = 0; k < COMP_COUNT; k++) json_decref(cfgs[k]);
            if (st != DF_OK) return df_error(st, "model %s: %s", what, df_errmsg());
            const struct model *m = *slot;
            log_write(LOGL_INFO, NULL, "model %s loaded on device %d in %.2f s (%s, %s)", m->name, d, clock_now() - t,
                      m->family->label, m->layout ? m->layout : "?");
        }
    for (int i = 0; i < c->n_models; i++) { /* the table requests name models by */
        struct api_model *am = &s->app.models[i];
        const struct cfg_model *cm = &c->models[i];
        const char *path = cm->path ? cm->path : cm->component[COMP_UNET] ? cm->component[COMP_UNET] : "";
        am->m = s->models[i];
        snprintf(am->filename, sizeof am->filename, "%s", path);
        if (am->m->hash[0]) snprintf(am->title, sizeof am->title, "%s [%s]", base_name(path), am->m->hash);
        else snprintf(am->title, sizeof am->title, "%s", base_name(path));
    }
    s->app.n_models = c->n_models;
    return DF_OK;
}

df_status serve_create(const struct config *cfg, struct server **out) {
    if (cfg->n_models == 0)
        return df_error(DF_EINVAL, "no model: give --model PATH (a checkpoint file or diffusers folder), or "
                                   "component files (--unet, --vae, --text-encoder, ...)");
    log_set_level(cfg->log_level);
    struct server *s = calloc(1, sizeof *s);
    if (!s) return df_error(DF_ENOMEM, "out of memory");
    s->cfg = cfg;
    s->app.cfg = cfg;
    atomic_init(&s->app.ready, false);
    atomic_init(&s->app.stopping, false);
    atomic_init(&s->app.sd_model, 0);
    atomic_init(&s->app.sd_clip_skip, 1);
    atomic_init(&s->app.sd_rng, RNG_PHILOX); /* A1111's default randn_source is "GPU" */
    static const struct api_extension extensions[] = {{"/sdapi/v1/", sdapi_handle, NULL},
                                                      {"/v1/", openai_handle, openai_error_body}};
    s->app.extensions = extensions;
    s->app.n_extensions = sizeof extensions / sizeof extensions[0];

    static const char *const open_paths[] = {"/health", "/ready"};
    static const char *const quiet_paths[] = {"/health", "/ready", "/metrics", "/sdapi/v1/progress"};
    struct http_config hc = {
        .host = cfg->host, .port = cfg->port, .threads = cfg->http_threads, .max_body_bytes = cfg->max_body_bytes,
        .api_key = cfg->api_key, .cors_origins = cfg->cors_origins, .n_cors_origins = cfg->n_cors_origins,
        .open_paths = open_paths, .n_open_paths = 2, .quiet_paths = quiet_paths, .n_quiet_paths = 4,
        .handler = api_handle, .ctx = &s->app, .error_body = api_error_body,
    };
    double t0 = clock_now();
    df_status st = http_create(&hc, &s->http);
    if (st == DF_OK) {
        log_write(LOGL_INFO, NULL, "listening on %s:%d%s%s", cfg->host, http_port(s->http),
                  cfg->api_key ? ", API key required" : "", cfg->n_cors_origins ? ", CORS on" : "");
        st = open_devices(s);
    }
    if (st == DF_OK) {
        s->app.devices = s->devices;
        s->app.n_devices = s->n_devices;
        st = load_models(s);
    }
    if (st == DF_OK) {
        int n = s->n_devices * cfg->workers;
        struct jobs_worker_spec *specs = calloc((size_t)n, sizeof *specs);
        if (!specs) st = df_error(DF_ENOMEM, "out of memory");
        for (int i = 0; specs && i < n; i++) {
            int d = i / cfg->workers;
            specs[i] = (struct jobs_worker_spec){s->devices[d], &s->models[d * cfg->n_models]};
        }
        struct jobs_config jc = {cfg->queue_max, cfg->job_timeout_s, cfg->result_ttl_s, cfg->n_models,
                                 cfg->vae_tile_budget};
        if (st == DF_OK) st = jobs_create(&jc, specs, n, &s->jobs);
        free(specs);
    }
    if (st != DF_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", df_errmsg());
        serve_destroy(s);
        return df_error(st, "%s", msg);
    }
    s->app.jobs = s->jobs;
    atomic_store(&s->app.ready, true); /* publishes app.jobs to the HTTP threads */
    log_write(LOGL_INFO, NULL, "ready in %.2f s: %d model(s), %d device(s), %d worker(s), queue of %d", clock_now() - t0,
              cfg->n_models, s->n_devices, s->n_devices * cfg->workers, cfg->queue_max);
    *out = s;
    return DF_OK;
}

int serve_port(const struct server *s) { return http_port(s->http); }

void serve_stop(struct server *s) {
    if (s->stopped) return;
    s->stopped = true;
    atomic_store(&s->app.stopping, true);
    if (s->http) http_quiesce(s->http);
    if (s->jobs) jobs_shutdown(s->jobs, s->cfg->shutdown_grace_s);
    /* the jobs are final now; let their waiting clients and streams get
     * their answers before the connections close */
    if (s->http && !http_drain(s->http, SERVE_DRAIN_ANSWERS_S))
        log_write(LOGL_WARN, NULL, "shutdown: some answers were still being sent");
}

void serve_cut_grace(struct server *s) {
    if (s->jobs) jobs_cut_grace(s->jobs);
}

void serve_destroy(struct server *s) {
    if (!s) return;
    serve_stop(s);
    http_destroy(s->http); /* first: requests hold job references */
    jobs_destroy(s->jobs);
    for (int i = 0; s->models && i < s->n_devices * s->cfg->n_models; i++) model_destroy(s->models[i]);
    free(s->models);
    free(s->app.models);
    for (int i = 0; i < s->n_devices; i++) dev_destroy(s->devices[i]);
    free(s->devices);
    free(s);
}

/* sd_notify(3)'s datagram protocol, without libsystemd. */
static void notify(const char *socket_path, const char *msg) {
    if (!socket_path) return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(socket_path);
    if (n == 0 || n >= sizeof sa.sun_path) return;
    memcpy(sa.sun_path, socket_path, n);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        log_write(LOGL_WARN, NULL, "sd_notify to %s failed", socket_path);
    close(fd);
}

/* serve_stop on its own thread, so the main thread can still take signals
 * during the grace period; it wakes the main thread when done. */
struct stopper {
    struct server *s;
    pthread_t main;
    atomic_bool done;
};

static void *stopper_main(void *arg) {
    struct stopper *st = arg;
    serve_stop(st->s);
    atomic_store(&st->done, true);
    pthread_kill(st->main, SIGHUP); /* SIGHUP: the one signal whose arrival changes nothing */
    return NULL;
}

/* The next SIGTERM or SIGINT. SIGHUP asks daemons to re-open their log
 * files; ours go to stderr (journald, docker), so there is nothing to
 * re-open and it is only logged - never the default action, which would
 * kill the daemon and every running job. Returns 0 when `stopped` turns
 * true instead (the stopper's wake-up). */
static int next_signal(const sigset_t *set, const atomic_bool *stopped) {
    for (;;) {
        int sig = 0;
        if (sigwait(set, &sig) != 0) continue;
        if (stopped && atomic_load(stopped)) return 0;
        if (sig != SIGHUP) return sig;
        log_write(LOGL_INFO, NULL, "SIGHUP: ignored (the log goes to stderr: there is no log file to re-open)");
    }
}

int serve_main(int argc, char **argv) {
    struct config cfg;
    bool help = false;
    if (cfg_load(argc, argv, &cfg, &help) != DF_OK) {
        fprintf(stderr, "diffusiond serve: %s\n", df_errmsg());
        return 2;
    }
    if (help) {
        cfg_usage(stdout);
        cfg_free(&cfg);
        return 0;
    }
    /* every thread started from here on inherits the mask, so only sigwait
     * below sees SIGTERM/SIGINT/SIGHUP */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    signal(SIGPIPE, SIG_IGN);
    struct server *s = NULL;
    if (serve_create(&cfg, &s) != DF_OK) {
        log_write(LOGL_ERROR, NULL, "start-up failed: %s", df_errmsg());
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        cfg_free(&cfg);
        return 1;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=listening on %s:%d\nMAINPID=%d", cfg.host, serve_port(s),
             (int)getpid());
    notify(cfg.notify_socket, msg);
    int sig = next_signal(&set, NULL);
    log_write(LOGL_INFO, NULL, "%s: shutting down (grace %.0f s; a second SIGTERM or SIGINT cancels the running jobs)",
              sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.shutdown_grace_s);
    /* refuse new work before STOPPING=1 says so (serve_stop, on its thread,
     * would set it a moment later) */
    atomic_store(&s->app.stopping, true);
    notify(cfg.notify_socket, "STOPPING=1\nSTATUS=draining");
    struct stopper st = {.s = s, .main = pthread_self()};
    atomic_init(&st.done, false);
    bool cut = false;
    pthread_t stopper;
    if (pthread_create(&stopper, NULL, stopper_main, &st) != 0) { /* no thread: drain here, one signal only */
        serve_stop(s);
    } else {
        while ((sig = next_signal(&set, &st.done)) != 0) {
            if (cut) continue;
            log_write(LOGL_WARN, NULL, "%s again: grace period cut short, cancelling the running jobs",
                      sig == SIGINT ? "SIGINT" : "SIGTERM");
            cut = true;
            serve_cut_grace(s);
        }
        pthread_join(stopper, NULL);
    }
    serve_destroy(s);
    log_write(LOGL_INFO, NULL, "stopped%s", cut ? " (running jobs cancelled)" : "");
    /* a signal that came after the last sigwait (or the stopper's wake-up,
     * when a real SIGHUP was taken for it) must not get its default action
     * once unblocked */
    while (sigtimedwait(&set, NULL, &(struct timespec){0, 0}) > 0) {}
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    cfg_free(&cfg);
    return cut ? 1 : 0;
}
