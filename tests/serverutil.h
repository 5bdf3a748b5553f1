/* serverutil: what the daemon's tests share - a small HTTP/1.1 client on
 * plain sockets (one connection per request, Connection: close), JSON and
 * error checks, job polling, metrics, a daemon inside the test process,
 * and the tiny SD1.x model assembled from ../shared/fixtures. Assertion
 * failures are cmocka failures. */
#ifndef DF_SERVERUTIL_H
#define DF_SERVERUTIL_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../server/config.h"
#include "../server/serve.h"
#include "holdutil.h"

/* Generations small enough for lavapipe: 64x64 (8x8 latents), no CFG. A
 * held one stays running at step 0 of 4 until released or cancelled
 * (holdutil.h): no test relies on a job being slow. */
#define SU_HELD_JOB "{\"prompt\": \"" HU_HOLD "\", \"width\": 64, \"height\": 64, \"steps\": 4, \"cfg_scale\": 1}"
#define SU_SHORT_JOB "{\"prompt\": \"short\", \"width\": 64, \"height\": 64, \"steps\": 1, \"cfg_scale\": 1}"

/* How long any wait in these tests may last before it counts as a hang: a
 * guard against a stuck daemon, not an expectation of speed. No test passes
 * or fails by how long something took; what must still be running when the
 * next request comes is held (holdutil.h). */
#define SU_PATIENCE_S 600.0

/* The tiny model: component files from $DF_TEST_FIXTURES (default
 * ../shared/fixtures) and their config.json files, written from the
 * manifest to /tmp (shapes alone cannot tell the head counts). */
struct su_model {
    char dir[1024], unet[1100], vae[1100], clip[1100];
    char unet_config[96], vae_config[96], clip_config[96], scheduler_config[96];
};
int su_model_init(struct su_model *m); /* 0, or -1 with a message */
void su_model_cleanup(const struct su_model *m);

/* The Vulkan loader dlcloses the driver with the last device; its leaks
 * would then show as "<unknown module>", which tests/lsan.supp cannot
 * name. Call once a device exists (as testutil.c does). */
void su_pin_libraries(void);

/* A daemon inside the test process (serve_create), configured by a
 * `diffusiond serve` command line. */
struct su_daemon {
    struct config cfg;
    struct server *srv;
    int port;
};
int su_daemon_start(struct su_daemon *d, int argc, char **argv); /* 0, or -1 with a message */
void su_daemon_stop(struct su_daemon *d);

/* `suite NAME-PATTERN`: run only the matching tests (cmocka's filter, * and
 * ? wildcards), e.g. build/tests/test_server 'test_sdapi*'. */
void su_filter(int argc, char **argv);

double su_now(void);
/* cmocka setup/teardown: holding generations is on during a test, and off
 * after it (every held one let go, even when the test failed); each
 * test's time is printed, the suite has a budget. */
int su_test_start(void **state);
int su_test_end(void **state);
#define SU_TEST(t) cmocka_unit_test_setup_teardown(t, su_test_start, su_test_end)

struct su_resp {
    int status;
    char *raw;          /* everything received */
    size_t raw_len;
    char *head;         /* the header block, NUL-terminated (inside raw) */
    char *body;         /* de-chunked, NUL-terminated */
    size_t len;
};

int su_connect(int port); /* -1 when refused */
void su_send(int fd, const void *p, size_t n);
void su_send_request(int fd, const char *method, const char *path, const char *headers, const void *body,
                     size_t len);
void su_read(int fd, struct su_resp *r); /* until the server closes */
void su_free(struct su_resp *r);
/* One request on its own connection; `headers` are whole "Name: v\r\n" lines. */
void su_req(int port, const char *method, const char *path, const char *headers, const char *body,
            struct su_resp *r);
const char *su_header(const struct su_resp *r, const char *name); /* NULL if absent */
json_t *su_json(const struct su_resp *r);
/* A JSON error answer with this status, code and (when not NULL) field. */
void su_expect_error(const struct su_resp *r, int status, const char *code, const char *field);
const char *su_str(const json_t *o, const char *key);
/* GET /jobs/{id} until final; returns its JSON. */
json_t *su_wait_final(int port, const char *id, const char *headers, double timeout);
/* GET /jobs until `count` jobs are in `state`; `id` (40 bytes, may be NULL)
 * gets the newest one's id. */
void su_wait_jobs(int port, const char *headers, const char *state, int count, char *id, double timeout);
/* The value of one sample of GET /metrics, named as Prometheus prints it:
 * "diffusiond_jobs_finished_total{state=\"failed\"}". Counters only grow
 * and other tests move them too: assert on differences. */
double su_metric(int port, const char *headers, const char *sample);
/* Until no job is queued or running; false (with a message) after `timeout` s. */
bool su_wait_idle(int port, const char *headers, double timeout);
uint8_t *su_b64dec(const char *s, size_t *n);
char *su_png_b64(int w, int h); /* a test pattern PNG, base64 */

/* A request on its own thread. */
struct su_call {
    int port;
    const char *method, *path, *headers, *body;
    struct su_resp r;
    pthread_t t;
};
void su_call_start(struct su_call *c);
void su_call_join(struct su_call *c);

#endif
