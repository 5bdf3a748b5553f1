/* Tests for `diffusiond serve` as a whole (server/serve.c serve_main): the
 * sub-command run in a thread of this process, with an API key, a CORS
 * allow-list and a job time limit; sd_notify READY=1 (the port is read
 * from its STATUS=) and STOPPING=1 over a test socket; a job that times
 * out and one the device cannot hold, both failing alone; and a real
 * SIGTERM with one job running and two queued. */
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

static pthread_t g2_thread;
static int g2_exit = -1, g2_port, g2_notify = -1;
static char g2_sock[108];
static bool g2_running;
#define KEY "X-API-Key: s3cret\r\n"

static void *g2_main(void *arg) {
    (void)arg;
    char *argv[] = {"serve", "--unet", fx.unet, "--vae", fx.vae, "--text-encoder", fx.clip, "--unet-config",
                    fx.unet_config, "--vae-config", fx.vae_config, "--text-encoder-config", fx.clip_config,
                    "--precision", "fp32", "--port", "0", "--api-key", "s3cret", "--cors-origins",
                    "https://ok.example", "--job-timeout-s", "6", "--max-width", "16384", "--max-height", "16384",
                    "--shutdown-grace-s", "60", "--queue-max", "4", "--log-level", "info", "--http-threads", "1"};
    g2_exit = serve_main(sizeof argv / sizeof argv[0], argv);
    return NULL;
}

/* One sd_notify datagram, or "" after the timeout. */
static void notify_recv(char *buf, size_t n, int timeout_ms) {
    struct pollfd p = {.fd = g2_notify, .events = POLLIN};
    buf[0] = 0;
    if (poll(&p, 1, timeout_ms) != 1) return;
    ssize_t k = recv(g2_notify, buf, n - 1, 0);
    buf[k > 0 ? k : 0] = 0;
}

static int group2_setup(void **state) {
    (void)state;
    g2_notify = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(g2_sock, sizeof g2_sock, "/tmp/diffusiond-test-notify-%d", (int)getpid());
    unlink(g2_sock);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g2_sock);
    if (bind(g2_notify, (struct sockaddr *)&sa, sizeof sa) != 0) return -1;
    setenv("NOTIFY_SOCKET", g2_sock, 1);
    if (pthread_create(&g2_thread, NULL, g2_main, NULL) != 0) return -1;
    g2_running = true;
    char msg[512];
    notify_recv(msg, sizeof msg, 120000);
    unsetenv("NOTIFY_SOCKET");
    const char *at = strstr(msg, "STATUS=listening on 127.0.0.1:");
    if (!strstr(msg, "READY=1") || !at) {
        fprintf(stderr, "no READY=1 from the daemon: \"%s\"\n", msg);
        return -1;
    }
    g2_port = atoi(at + strlen("STATUS=listening on 127.0.0.1:"));
    su_pin_libraries();
    return g2_port > 0 ? 0 : -1;
}

static int group2_teardown(void **state) {
    (void)state;
    if (g2_running) { /* a test failed before the SIGTERM one */
        kill(getpid(), SIGTERM);
        pthread_join(g2_thread, NULL);
    }
    close(g2_notify);
    unlink(g2_sock);
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

static void test_job_timeout(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g2_port, "POST", "/generate", KEY, SU_LONG_JOB, &r);
    su_expect_error(&r, 504, "timeout", NULL);
    su_free(&r);
    su_req(g2_port, "GET", "/ready", NULL, NULL, &r); /* the worker goes on */
    assert_int_equal(r.status, 200);
    su_free(&r);
}

/* A job the device cannot hold fails alone, with a clear error; the worker
 * and the daemon go on (the drain below generates on the same worker). */
static void test_out_of_memory_fails_alone(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g2_port, "POST", "/generate", KEY,
           "{\"prompt\": \"huge\", \"width\": 8192, \"height\": 8192, \"steps\": 1, \"cfg_scale\": 1}", &r);
    su_expect_error(&r, 500, "out_of_memory", NULL);
    su_free(&r);
    su_req(g2_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(g2_port, "GET", "/metrics", KEY, NULL, &r);
    assert_non_null(strstr(r.body, "diffusiond_jobs_finished_total{state=\"failed\"} 2")); /* + the timeout */
    su_free(&r);
}

/* SIGTERM with one job running and two queued: the running one finishes and
 * is answered, the queued ones are cancelled with a clear state, exit 0. */
static void test_sigterm_drain(void **state) {
    (void)state;
    struct su_call a = {g2_port, "POST", "/generate", KEY,
                     "{\"prompt\": \"last\", \"width\": 64, \"height\": 64, \"steps\": 2, \"cfg_scale\": 1}", {0}, 0};
    struct su_call b = {g2_port, "POST", "/generate", KEY, SU_SHORT_JOB, {0}, 0}, c = b;
    su_call_start(&a);
    su_wait_jobs(g2_port, KEY, "running", 1, NULL, 60);
    su_call_start(&b);
    su_call_start(&c);
    su_wait_jobs(g2_port, KEY, "queued", 2, NULL, 60);
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    char msg[512];
    notify_recv(msg, sizeof msg, 30000);
    assert_non_null(strstr(msg, "STOPPING=1"));
    su_call_join(&a);
    su_call_join(&b);
    su_call_join(&c);
    if (a.r.status != 200) fail_msg("running job: %d %.300s", a.r.status, a.r.body);
    assert_string_equal(su_header(&a.r, "Content-Type"), "image/png");
    su_expect_error(&b.r, 503, "shutdown", NULL);
    su_expect_error(&c.r, 503, "shutdown", NULL);
    su_free(&a.r);
    su_free(&b.r);
    su_free(&c.r);
    pthread_join(g2_thread, NULL);
    g2_running = false;
    assert_int_equal(g2_exit, 0);
    int fd = su_connect(g2_port); /* nobody listens any more */
    assert_true(fd < 0);
}

int main(void) {
    /* SIGTERM goes to serve_main's sigwait, never to a test thread: block it
     * before any thread exists, so they all inherit the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (su_model_init(&fx) != 0) return 1;
    const struct CMUnitTest tests[] = {
        SU_TIMED(test_auth),
        SU_TIMED(test_cors),
        SU_TIMED(test_job_timeout),
        SU_TIMED(test_out_of_memory_fails_alone),
        SU_TIMED(test_sigterm_drain),
    };
    int failed = cmocka_run_group_tests_name("serve", tests, group2_setup, group2_teardown);
    su_model_cleanup(&fx);
    return failed;
}
