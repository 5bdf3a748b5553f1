/* Tests for `diffusiond serve` as a whole: a daemon in this process with an
 * API key and a CORS allow-list; a job the device cannot hold failing alone;
 * a job that times out, on a daemon of its own whose time limit is far below
 * any possible run time; and serve_main itself (server/serve.c), the
 * sub-command run in a thread: sd_notify READY=1 (the port is read from its
 * STATUS=) and STOPPING=1 over a test socket, and a real SIGTERM with one
 * job running (held, holdutil.h) and two queued. Nothing depends on the
 * machine's speed; each test runs alone (`test_serve NAME`) and in any
 * order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../server/serve.h"
#include "serverutil.h"

static struct su_model fx;

/* The daemon most tests share (no signals: test_sigterm_drain has its own). */
static struct su_daemon g_d;
static int g2_port;
#define KEY "X-API-Key: s3cret\r\n"
#define TINY_MODEL "--unet", fx.unet, "--vae", fx.vae, "--text-encoder", fx.clip, "--unet-config", fx.unet_config, \
                   "--vae-config", fx.vae_config, "--text-encoder-config", fx.clip_config, "--precision", "fp32"

static int group2_setup(void **state) {
    (void)state;
    char *argv[] = {"serve", TINY_MODEL, "--port", "0", "--api-key", "s3cret", "--cors-origins", "https://ok.example",
                    "--max-width", "16384", "--max-height", "16384", "--max-batch", "64", "--queue-max", "4",
                    "--log-level", "info", "--http-threads", "1"};
    if (su_daemon_start(&g_d, sizeof argv / sizeof argv[0], argv) != 0) return -1;
    g2_port = g_d.port;
    return 0;
}

static int group2_teardown(void **state) {
    (void)state;
    su_daemon_stop(&g_d);
    return 0;
}

static void test_auth(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g2_port, "GET", "/health", NULL, NULL, &r); /* probes need no key */
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(g2_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    static const char *refused[] = {NULL, "X-API-Key: wrong\r\n", "Authorization: Bearer s3cre\r\n",
                                    "Authorization: Bearer s3cret2\r\n", "Authorization: Basic czNjcmV0\r\n"};
    for (int i = 0; i < 5; i++) {
        su_req(g2_port, "GET", "/models", refused[i], NULL, &r);
        su_expect_error(&r, 401, "unauthorized", NULL);
        assert_non_null(su_header(&r, "WWW-Authenticate"));
        su_free(&r);
    }
    su_req(g2_port, "POST", "/generate", NULL, SU_SHORT_JOB, &r); /* refused before the body is looked at */
    su_expect_error(&r, 401, "unauthorized", NULL);
    su_free(&r);
    su_req(g2_port, "GET", "/metrics", NULL, NULL, &r);
    su_expect_error(&r, 401, "unauthorized", NULL);
    su_free(&r);
    su_req(g2_port, "GET", "/models", KEY, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(g2_port, "GET", "/sdapi/v1/sd-models", "Authorization: bearer s3cret\r\n", NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
}

static void test_cors(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g2_port, "GET", "/health", "Origin: https://evil.example\r\n", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_null(su_header(&r, "Access-Control-Allow-Origin")); /* never reflected */
    su_free(&r);
    su_req(g2_port, "GET", "/models", "Origin: https://ok.example\r\n" KEY, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(su_header(&r, "Access-Control-Allow-Origin"), "https://ok.example");
    assert_string_equal(su_header(&r, "Vary"), "Origin");
    su_free(&r);
    su_req(g2_port, "OPTIONS", "/generate",
         "Origin: https://ok.example\r\nAccess-Control-Request-Method: POST\r\n"
         "Access-Control-Request-Headers: authorization, content-type\r\n",
         NULL, &r);
    assert_int_equal(r.status, 204); /* a preflight carries no key */
    assert_string_equal(su_header(&r, "Access-Control-Allow-Origin"), "https://ok.example");
    assert_non_null(strstr(su_header(&r, "Access-Control-Allow-Methods"), "POST"));
    assert_non_null(strcasestr(su_header(&r, "Access-Control-Allow-Headers"), "authorization"));
    su_free(&r);
    su_req(g2_port, "OPTIONS", "/generate",
           "Origin: https://ok.example.evil.com\r\nAccess-Control-Request-Method: POST\r\n",
         NULL, &r);
    assert_null(su_header(&r, "Access-Control-Allow-Origin"));
    assert_null(su_header(&r, "Access-Control-Allow-Methods"));
    su_free(&r);
}

/* A second daemon on the shared daemon's port is refused, saying so (no
 * SO_REUSEPORT: the kernel would split connections between the two); the
 * first serves on. */
static void test_port_in_use(void **state) {
    (void)state;
    char port[16], want[64];
    snprintf(port, sizeof port, "%d", g2_port);
    char *argv[] = {"serve", TINY_MODEL, "--port", port, "--log-level", "error", "--http-threads", "1"};
    struct config cfg;
    bool help;
    assert_int_equal(cfg_load(sizeof argv / sizeof argv[0], argv, &cfg, &help), DF_OK);
    struct server *srv = NULL;
    df_status st = serve_create(&cfg, &srv);
    if (st == DF_OK) serve_destroy(srv);
    cfg_free(&cfg);
    assert_int_not_equal(st, DF_OK);
    snprintf(want, sizeof want, "port %d is in use", g2_port);
    if (!strstr(df_errmsg(), want)) fail_msg("expected \"%s\": %s", want, df_errmsg());
    struct su_resp r;
    su_req(g2_port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
}

/* A scheduler_config.json the samplers cannot use stops start-up with an
 * error naming the file and the key, instead of a daemon that is ready and
 * fails every generation. */
static void test_bad_scheduler_config(void **state) {
    (void)state;
    static const struct {
        const char *json, *key;
    } cases[] = {
        {"{\"num_train_timesteps\": 0}", "num_train_timesteps"},
        {"{\"beta_start\": -1}", "betas"},
        {"{\"beta_start\": 0.5, \"beta_end\": 0.0001}", "beta_start"},
        {"{\"steps_offset\": 5000}", "steps_offset"},
        {"{\"beta_schedule\": \"foo\"}", "beta_schedule"},
        {"{\"beta_end\": \"high\"}", "beta_end"},
    };
    char path[96];
    snprintf(path, sizeof path, "/tmp/diffusiond-test-%d-bad-scheduler.json", (int)getpid());
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(cases[i].json, f);
        fclose(f);
        char *argv[] = {"serve", TINY_MODEL, "--scheduler-config", path, "--port", "0", "--log-level", "error",
                        "--http-threads", "1"};
        struct config cfg;
        bool help;
        assert_int_equal(cfg_load(sizeof argv / sizeof argv[0], argv, &cfg, &help), DF_OK);
        struct server *srv = NULL;
        df_status st = serve_create(&cfg, &srv);
        if (st == DF_OK) serve_destroy(srv);
        cfg_free(&cfg);
        if (st == DF_OK) fail_msg("%s: the daemon started", cases[i].json);
        if (!strstr(df_errmsg(), path) || !strstr(df_errmsg(), cases[i].key))
            fail_msg("%s: the error names neither %s nor %s: %s", cases[i].json, path, cases[i].key, df_errmsg());
    }
    unlink(path);
}

/* A job time limit of a microsecond: less than any generation needs before
 * its first sampler step (tokenizing, a text-encoder pass through the
 * Vulkan queue), and the limit is checked at every step boundary, so every
 * job fails with "timeout" by construction, on any machine. The daemon is
 * this test's own: the shared one must finish jobs. It goes on: ready, and
 * the next job is taken and times out too, each counted once. */
static struct su_daemon timeout_d;

static void test_job_timeout(void **state) {
    (void)state;
    char *argv[] = {"serve", TINY_MODEL, "--port", "0", "--job-timeout-s", "0.000001", "--log-level", "warn",
                    "--http-threads", "1"};
    struct su_daemon *d = &timeout_d;
    assert_int_equal(su_daemon_start(d, sizeof argv / sizeof argv[0], argv), 0);
    const char *failed = "diffusiond_jobs_finished_total{state=\"failed\"}";
    double failed0 = su_metric(d->port, NULL, failed);
    struct su_resp r;
    su_req(d->port, "POST", "/generate", NULL, SU_SHORT_JOB, &r);
    su_expect_error(&r, 504, "timeout", NULL);
    su_free(&r);
    su_req(d->port, "GET", "/ready", NULL, NULL, &r); /* the worker goes on */
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(d->port, "POST", "/jobs", NULL, SU_SHORT_JOB, &r);
    assert_int_equal(r.status, 202);
    json_t *j = su_json(&r);
    su_free(&r);
    json_t *f = su_wait_final(d->port, su_str(j, "id"), NULL, SU_PATIENCE_S);
    assert_string_equal(su_str(f, "state"), "failed");
    assert_string_equal(su_str(json_object_get(f, "error"), "code"), "timeout");
    assert_int_equal(json_integer_value(json_object_get(f, "step")), 0); /* stopped before its one step */
    json_decref(f);
    json_decref(j);
    assert_true(su_metric(d->port, NULL, failed) - failed0 == 2);
}

static int timeout_end(void **state) {
    su_test_end(state);
    su_daemon_stop(&timeout_d);
    return 0;
}

/* A job no device can hold fails alone, with a clear error; the worker and
 * the daemon go on: the next job on the same worker is done. 64 images of
 * 16384x16384 with CFG need 1.2 TiB of activations with the tiny model:
 * more than any device has, not just more than this one's limit. */
static void test_out_of_memory_fails_alone(void **state) {
    (void)state;
    const char *failed = "diffusiond_jobs_finished_total{state=\"failed\"}";
    double failed0 = su_metric(g2_port, KEY, failed);
    struct su_resp r;
    su_req(g2_port, "POST", "/generate", KEY,
           "{\"prompt\": \"huge\", \"width\": 16384, \"height\": 16384, \"n\": 64, \"steps\": 1,"
           " \"cfg_scale\": 7.5}",
           &r);
    su_expect_error(&r, 500, "out_of_memory", NULL);
    su_free(&r);
    su_req(g2_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    assert_true(su_metric(g2_port, KEY, failed) - failed0 == 1);
    su_req(g2_port, "POST", "/generate", KEY, SU_SHORT_JOB, &r);
    if (r.status != 200) fail_msg("after the failed job: %d %.300s", r.status, r.body);
    su_free(&r);
}

/* serve_main in a thread, reporting to a test sd_notify socket. */
static struct serve_thread {
    pthread_t t;
    bool running, signalled;
    int exit, notify;
    char sock[108];
    struct su_call calls[3]; /* the running job and two queued */
    int n_calls;             /* started, not joined */
} g_st = {.notify = -1};

static void *serve_thread_main(void *arg) {
    struct serve_thread *st = arg;
    char *argv[] = {"serve", TINY_MODEL, "--port", "0", "--api-key", "s3cret", "--shutdown-grace-s", "600",
                    "--queue-max", "4", "--log-level", "info", "--http-threads", "1"};
    st->exit = serve_main(sizeof argv / sizeof argv[0], argv);
    return NULL;
}

/* One sd_notify datagram, or "" after `timeout` s. */
static void notify_recv(int fd, char *buf, size_t n, double timeout) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    buf[0] = 0;
    if (poll(&p, 1, (int)(timeout * 1000)) != 1) return;
    ssize_t k = recv(fd, buf, n - 1, 0);
    buf[k > 0 ? k : 0] = 0;
}

/* SIGTERM with one job running and two queued: the running one finishes and
 * is answered, the queued ones are cancelled with a clear state, exit 0.
 * The running job is held until the queued ones have their answers, so it
 * is running when the signal comes and finishes after, by construction; the
 * grace period (600 s) only bounds a daemon that would hang. */
/* Starts serve_main on its thread; returns the port from READY=1's STATUS=. */
static int serve_thread_start(void) {
    g_st = (struct serve_thread){.exit = -1};
    g_st.notify = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(g_st.notify >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(g_st.sock, sizeof g_st.sock, "/tmp/diffusiond-test-notify-%d", (int)getpid());
    unlink(g_st.sock);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_st.sock);
    assert_int_equal(bind(g_st.notify, (struct sockaddr *)&sa, sizeof sa), 0);
    setenv("NOTIFY_SOCKET", g_st.sock, 1);
    assert_int_equal(pthread_create(&g_st.t, NULL, serve_thread_main, &g_st), 0);
    g_st.running = true;
    char msg[512];
    notify_recv(g_st.notify, msg, sizeof msg, SU_PATIENCE_S);
    unsetenv("NOTIFY_SOCKET");
    const char *at = strstr(msg, "STATUS=listening on 127.0.0.1:");
    if (!strstr(msg, "READY=1") || !at) fail_msg("no READY=1 from the daemon: \"%s\"", msg);
    su_pin_libraries();
    return atoi(at + strlen("STATUS=listening on 127.0.0.1:"));
}

/* SIGTERM (process-directed, as systemd sends it), then STOPPING=1. */
static void sigterm_and_wait_stopping(void) {
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    g_st.signalled = true;
    char msg[512];
    notify_recv(g_st.notify, msg, sizeof msg, SU_PATIENCE_S);
    assert_non_null(strstr(msg, "STOPPING=1"));
}

/* Starts calls[0]: a synchronous generation held running. */
static struct su_call *start_held_call(int port) {
    struct su_call *a = &g_st.calls[0];
    *a = (struct su_call){port, "POST", "/generate", KEY,
                          "{\"prompt\": \"" HU_HOLD " last\", \"width\": 64, \"height\": 64, \"steps\": 2,"
                          " \"cfg_scale\": 1}",
                          {0}, 0};
    su_call_start(a);
    g_st.n_calls = 1;
    hu_wait_held(1, SU_PATIENCE_S);
    return a;
}

/* One request on a new connection whose answer must come while a held job
 * keeps the daemon busy: the receive timeout is only a guard against a
 * daemon that never answers (the job is released after, not before). */
static void req_while_held(int port, const char *method, const char *path, const char *body, struct su_resp *r) {
    int fd = su_connect(port);
    if (fd < 0) fail_msg("connection refused during the grace period");
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    su_send_request(fd, method, path, KEY, body, body ? strlen(body) : 0);
    su_read(fd, r);
    close(fd);
}

static void test_sigterm_drain(void **state) {
    (void)state;
    int port = serve_thread_start();
    struct su_call *a = start_held_call(port), *b = &g_st.calls[1], *c = &g_st.calls[2];
    *b = (struct su_call){port, "POST", "/generate", KEY, SU_SHORT_JOB, {0}, 0};
    *c = *b;
    su_call_start(b);
    g_st.n_calls = 2;
    su_call_start(c);
    g_st.n_calls = 3;
    su_wait_jobs(port, KEY, "queued", 2, NULL, SU_PATIENCE_S);
    sigterm_and_wait_stopping();
    su_call_join(b);
    su_call_join(c);
    hu_release(); /* the queued ones are answered: now the running one finishes */
    su_call_join(a);
    g_st.n_calls = 0;
    if (a->r.status != 200) fail_msg("running job: %d %.300s", a->r.status, a->r.body);
    assert_string_equal(su_header(&a->r, "Content-Type"), "image/png");
    su_expect_error(&b->r, 503, "shutdown", NULL);
    su_expect_error(&c->r, 503, "shutdown", NULL);
    pthread_join(g_st.t, NULL);
    g_st.running = false;
    assert_int_equal(g_st.exit, 0);
    int fd = su_connect(port); /* nobody listens any more */
    assert_true(fd < 0);
}

/* During the grace period (a held job keeps it going) a new connection is
 * answered at once: 503 shutting_down with Retry-After for the API, /ready
 * 503, /health 200 - not left hanging in the listen queue. */
static void test_sigterm_new_connections_503(void **state) {
    (void)state;
    int port = serve_thread_start();
    struct su_call *a = start_held_call(port);
    sigterm_and_wait_stopping();
    struct su_resp r;
    req_while_held(port, "POST", "/generate", SU_SHORT_JOB, &r);
    su_expect_error(&r, 503, "shutting_down", NULL);
    assert_non_null(su_header(&r, "Retry-After"));
    su_free(&r);
    req_while_held(port, "GET", "/ready", NULL, &r);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "shutting down"));
    su_free(&r);
    req_while_held(port, "GET", "/health", NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    hu_release();
    su_call_join(a);
    g_st.n_calls = 0;
    if (a->r.status != 200) fail_msg("running job: %d %.300s", a->r.status, a->r.body);
    pthread_join(g_st.t, NULL);
    g_st.running = false;
    assert_int_equal(g_st.exit, 0);
}

/* A second SIGTERM during the grace period (600 s, kept going by a held
 * job that is never released) ends it: the running job is cancelled, its
 * client answered 503 shutdown, serve_main returns 1. */
static void test_second_sigterm_exits(void **state) {
    (void)state;
    int port = serve_thread_start();
    struct su_call *a = start_held_call(port);
    sigterm_and_wait_stopping();
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    pthread_join(g_st.t, NULL); /* no hu_release: only the second signal can end the grace */
    g_st.running = false;
    assert_int_equal(g_st.exit, 1);
    su_call_join(a);
    g_st.n_calls = 0;
    su_expect_error(&a->r, 503, "shutdown", NULL);
}

/* SIGHUP (sent to serve_main's thread: the test's own threads keep the
 * default action, which kills the process) is logged and ignored: the held
 * job goes on and is answered, and SIGTERM later stops the daemon cleanly.
 * SIGHUP is taken before the SIGTERM sent after it (pending signals are
 * delivered lowest number first). */
static void test_sighup_ignored(void **state) {
    (void)state;
    int port = serve_thread_start();
    struct su_call *a = start_held_call(port);
    assert_int_equal(pthread_kill(g_st.t, SIGHUP), 0);
    struct su_resp r;
    req_while_held(port, "GET", "/ready", NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    sigterm_and_wait_stopping();
    hu_release();
    su_call_join(a);
    g_st.n_calls = 0;
    if (a->r.status != 200) fail_msg("running job after SIGHUP: %d %.300s", a->r.status, a->r.body);
    pthread_join(g_st.t, NULL);
    g_st.running = false;
    assert_int_equal(g_st.exit, 0);
}

/* Whatever the test did: the daemon stopped, its clients answered, the
 * socket gone. */
static int sigterm_end(void **state) {
    su_test_end(state); /* lets the held job go */
    if (g_st.running) {
        if (!g_st.signalled) kill(getpid(), SIGTERM); /* one sent before sigwait waits for it */
        pthread_join(g_st.t, NULL);
        g_st.running = false;
    }
    for (int i = 0; i < g_st.n_calls; i++) su_call_join(&g_st.calls[i]);
    for (int i = 0; i < 3; i++) su_free(&g_st.calls[i].r);
    g_st.n_calls = 0;
    if (g_st.notify >= 0) close(g_st.notify);
    g_st.notify = -1;
    unlink(g_st.sock);
    return 0;
}

int main(int argc, char **argv) {
    /* SIGTERM goes to serve_main's sigwait, never to a test thread: block it
     * before any thread exists, so they all inherit the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    su_filter(argc, argv);
    if (su_model_init(&fx) != 0) return 1;
    const struct CMUnitTest tests[] = {
        SU_TEST(test_auth),
        SU_TEST(test_cors),
        SU_TEST(test_port_in_use),
        SU_TEST(test_bad_scheduler_config),
        cmocka_unit_test_setup_teardown(test_job_timeout, su_test_start, timeout_end),
        SU_TEST(test_out_of_memory_fails_alone),
        cmocka_unit_test_setup_teardown(test_sigterm_drain, su_test_start, sigterm_end),
        cmocka_unit_test_setup_teardown(test_sigterm_new_connections_503, su_test_start, sigterm_end),
        cmocka_unit_test_setup_teardown(test_second_sigterm_exits, su_test_start, sigterm_end),
        cmocka_unit_test_setup_teardown(test_sighup_ignored, su_test_start, sigterm_end),
    };
    int failed = cmocka_run_group_tests_name("serve", tests, group2_setup, group2_teardown);
    su_model_cleanup(&fx);
    return failed;
}
