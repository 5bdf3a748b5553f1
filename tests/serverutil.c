/* serverutil: see serverutil.h. */
#include "serverutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../server/http.h"
#include "../server/image.h"

double su_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the tiny model ------------------------------------------------------ */

int su_model_init(struct su_model *m) {
    const char *d = getenv("DF_TEST_FIXTURES");
    snprintf(m->dir, sizeof m->dir, "%s", d && *d ? d : "../shared/fixtures");
    snprintf(m->unet, sizeof m->unet, "%s/unet_sd15_tiny.safetensors", m->dir);
    snprintf(m->vae, sizeof m->vae, "%s/vae_tiny.safetensors", m->dir);
    snprintf(m->clip, sizeof m->clip, "%s/clip_text_tiny.safetensors", m->dir);
    char path[1200];
    snprintf(path, sizeof path, "%s/manifest.json", m->dir);
    json_t *man = json_load_file(path, JSON_ALLOW_NUL, NULL), *c;
    if (!man) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    const struct {
        const char *name, *key;
        char *out;
    } want[] = {{"unet_sd15_tiny", "config", m->unet_config}, {"vae_tiny", "config", m->vae_config},
                {"clip_text_tiny", "config", m->clip_config},
                {"pipeline_sd15_tiny", "scheduler_config", m->scheduler_config}};
    int found = 0;
    for (size_t k = 0; k < 4; k++) {
        size_t i;
        snprintf(want[k].out, sizeof m->unet_config, "/tmp/diffusiond-test-%d-%s.json", (int)getpid(), want[k].name);
        json_array_foreach(json_object_get(man, "cases"), i, c) {
            const char *name = json_string_value(json_object_get(c, "name"));
            if (name && strcmp(name, want[k].name) == 0 &&
                json_dump_file(json_object_get(c, want[k].key), want[k].out, 0) == 0)
                found++;
        }
    }
    json_decref(man);
    if (found != 4) fprintf(stderr, "%s lacks the tiny model's configs\n", path);
    return found == 4 ? 0 : -1;
}

void su_model_cleanup(const struct su_model *m) {
    unlink(m->unet_config);
    unlink(m->vae_config);
    unlink(m->clip_config);
    unlink(m->scheduler_config);
}

static int pin_library(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    (void)arg;
    if (info->dlpi_name && *info->dlpi_name) dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
    return 0;
}

void su_pin_libraries(void) { dl_iterate_phdr(pin_library, NULL); }

int su_daemon_start(struct su_daemon *d, int argc, char **argv) {
    memset(d, 0, sizeof *d);
    bool help;
    if (cfg_load(argc, argv, &d->cfg, &help) != DF_OK) {
        fprintf(stderr, "config: %s\n", df_errmsg());
        return -1;
    }
    if (serve_create(&d->cfg, &d->srv) != DF_OK) {
        fprintf(stderr, "serve_create: %s\n", df_errmsg());
        cfg_free(&d->cfg);
        return -1;
    }
    d->port = serve_port(d->srv);
    su_pin_libraries();
    return d->port > 0 ? 0 : -1;
}

void su_daemon_stop(struct su_daemon *d) {
    if (!d->srv) return;
    serve_destroy(d->srv);
    cfg_free(&d->cfg);
    d->srv = NULL;
}

void su_filter(int argc, char **argv) {
    if (argc > 1) cmocka_set_test_filter(argv[1]);
}

static double test_t0;

int su_test_start(void **state) {
    (void)state;
    hu_set_holding(true);
    test_t0 = su_now();
    return 0;
}

int su_test_end(void **state) {
    (void)state;
    hu_set_holding(false);
    fprintf(stderr, "    (%.1f s)\n", su_now() - test_t0);
    return 0;
}

/* ---- the HTTP client ------------------------------------------------------ */
int su_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = (time_t)SU_PATIENCE_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void su_send(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0) return; /* the server may answer early and close: read that answer */
        c += k;
        n -= (size_t)k;
    }
}

void su_send_request(int fd, const char *method, const char *path, const char *headers, const void *body,
                          size_t len) {
    char head[4096];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method,
                     path, headers ? headers : "");
    if (body)
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                      len);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    su_send(fd, head, (size_t)n);
    if (body && len) su_send(fd, body, len);
}

static void parse(struct su_resp *r) {
    assert_non_null(r->raw);
    char *end = strstr(r->raw, "\r\n\r\n");
    if (!end) fail_msg("no complete response header in %zu bytes: %.200s", r->raw_len, r->raw);
    *end = 0;
    r->head = r->raw;
    assert_int_equal(sscanf(r->raw, "HTTP/1.%*d %d", &r->status), 1);
    char *b = end + 4;
    size_t avail = r->raw_len - (size_t)(b - r->raw);
    bool chunked = false;
    for (char *h = strstr(r->head, "\r\n"); h; h = strstr(h + 2, "\r\n"))
        if (strncasecmp(h + 2, "Transfer-Encoding: chunked", 26) == 0) chunked = true;
    r->body = malloc(avail + 1);
    assert_non_null(r->body);
    if (!chunked) {
        memcpy(r->body, b, avail);
        r->len = avail;
    } else {
        r->len = 0;
        char *p = b, *lim = b + avail;
        while (p < lim) {
            unsigned long n = strtoul(p, NULL, 16);
            char *nl = strstr(p, "\r\n");
            if (!nl || n == 0) break;
            p = nl + 2;
            if (p + n > lim) n = (unsigned long)(lim - p);
            memcpy(r->body + r->len, p, n);
            r->len += n;
            p += n + 2;
        }
    }
    r->body[r->len] = 0;
}

void su_read(int fd, struct su_resp *r) {
    memset(r, 0, sizeof *r);
    size_t cap = 65536;
    r->raw = malloc(cap + 1);
    assert_non_null(r->raw);
    for (;;) {
        if (r->raw_len == cap) {
            cap *= 2;
            r->raw = realloc(r->raw, cap + 1);
            assert_non_null(r->raw);
        }
        ssize_t k = recv(fd, r->raw + r->raw_len, cap - r->raw_len, 0);
        if (k <= 0) break;
        r->raw_len += (size_t)k;
    }
    r->raw[r->raw_len] = 0;
    parse(r);
}

void su_free(struct su_resp *r) {
    free(r->raw);
    free(r->body);
    memset(r, 0, sizeof *r);
}

void su_req(int port, const char *method, const char *path, const char *headers, const char *body,
                 struct su_resp *r) {
    int fd = su_connect(port);
    if (fd < 0) fail_msg("cannot connect to port %d: %s", port, strerror(errno));
    su_send_request(fd, method, path, headers, body, body ? strlen(body) : 0);
    su_read(fd, r);
    close(fd);
}

/* The value of header `name`, or NULL (copied to a static buffer). */
const char *su_header(const struct su_resp *r, const char *name) {
    static _Thread_local char val[512];
    size_t n = strlen(name);
    for (const char *h = strstr(r->head, "\r\n"); h; h = strstr(h + 2, "\r\n"))
        if (strncasecmp(h + 2, name, n) == 0 && h[2 + n] == ':') {
            const char *v = h + 3 + n;
            while (*v == ' ') v++;
            size_t k = strcspn(v, "\r");
            snprintf(val, sizeof val, "%.*s", (int)k, v);
            return val;
        }
    return NULL;
}

json_t *su_json(const struct su_resp *r) {
    json_error_t e;
    json_t *j = json_loadb(r->body, r->len, 0, &e);
    if (!j) fail_msg("not JSON (%s): %.300s", e.text, r->body);
    return j;
}

/* Asserts a JSON error answer: status, code and (when given) field. */
void su_expect_error(const struct su_resp *r, int status, const char *code, const char *field) {
    if (r->status != status) fail_msg("expected %d %s, got %d: %.300s", status, code, r->status, r->body);
    json_t *j = su_json(r);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    const char *c = json_string_value(json_object_get(e, "code"));
    if (!c || strcmp(c, code) != 0) fail_msg("expected code %s: %.300s", code, r->body);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    if (field) {
        const char *f = json_string_value(json_object_get(e, "field"));
        if (!f || strcmp(f, field) != 0) fail_msg("expected field %s: %.300s", field, r->body);
    }
    json_decref(j);
}

const char *su_str(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    if (!s) fail_msg("no string \"%s\"", key);
    return s ? s : ""; /* fail_msg returns as far as the compiler knows */
}

/* GET /jobs/{id} until its state is final; returns the JSON. */
json_t *su_wait_final(int port, const char *id, const char *headers, double timeout) {
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s", id);
    double end = su_now() + timeout;
    for (;;) {
        struct su_resp r;
        su_req(port, "GET", path, headers, NULL, &r);
        assert_int_equal(r.status, 200);
        json_t *j = su_json(&r);
        su_free(&r);
        const char *st = su_str(j, "state");
        if (strcmp(st, "done") == 0 || strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0) return j;
        json_decref(j);
        if (su_now() > end) fail_msg("job %s not final after %.0f s", id, timeout);
        usleep(50000);
    }
}

/* GET /jobs (newest first) until `count` jobs are in `state`; copies the
 * newest one's id. */
void su_wait_jobs(int port, const char *headers, const char *state, int count, char *id, double timeout) {
    double end = su_now() + timeout;
    for (;;) {
        struct su_resp r;
        su_req(port, "GET", "/jobs", headers, NULL, &r);
        assert_int_equal(r.status, 200);
        json_t *j = su_json(&r), *arr = json_object_get(j, "jobs");
        su_free(&r);
        int n = 0;
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) if (strcmp(su_str(v, "state"), state) == 0) {
            if (id && n == 0) snprintf(id, 40, "%s", su_str(v, "id"));
            n++;
        }
        json_decref(j);
        if (n >= count) return;
        if (su_now() > end) fail_msg("not %d job(s) %s after %.0f s", count, state, timeout);
        usleep(20000);
    }
}

double su_metric(int port, const char *headers, const char *sample) {
    struct su_resp r;
    su_req(port, "GET", "/metrics", headers, NULL, &r);
    if (r.status != 200) fail_msg("GET /metrics: %d %.300s", r.status, r.body);
    size_t n = strlen(sample);
    double v = -1;
    bool found = false;
    for (const char *line = r.body; line && !found;) {
        if (strncmp(line, sample, n) == 0 && line[n] == ' ') {
            v = strtod(line + n + 1, NULL);
            found = true;
        }
        line = strchr(line, '\n');
        if (line) line++;
    }
    su_free(&r);
    if (!found) fail_msg("no sample %s in /metrics", sample);
    return v;
}

bool su_wait_idle(int port, const char *headers, double timeout) {
    double end = su_now() + timeout;
    for (;;) {
        double queued = su_metric(port, headers, "diffusiond_queue_depth"),
               running = su_metric(port, headers, "diffusiond_jobs_running");
        if (queued == 0 && running == 0) return true;
        if (su_now() > end) {
            fprintf(stderr, "daemon not idle after %.0f s: %g queued, %g running\n", timeout, queued, running);
            return false;
        }
        usleep(20000);
    }
}

uint8_t *su_b64dec(const char *s, size_t *n) {
    uint8_t *out = NULL;
    assert_int_equal(http_base64_decode(s, strlen(s), &out, n), DF_OK);
    return out;
}

/* A flat-ish test PNG of w x h, base64. */
char *su_png_b64(int w, int h) {
    float *px = malloc((size_t)w * h * 3 * sizeof *px);
    assert_non_null(px);
    for (int i = 0; i < w * h * 3; i++) px[i] = (float)((i * 37) % 255) / 255.0f;
    uint8_t *png;
    size_t len;
    assert_int_equal(img_encode_png(px, w, h, NULL, &png, &len), DF_OK);
    char *b64 = http_base64_encode(png, len);
    free(png);
    free(px);
    return b64;
}

static void *call_main(void *arg) {
    struct su_call *c = arg;
    su_req(c->port, c->method, c->path, c->headers, c->body, &c->r);
    return NULL;
}

void su_call_start(struct su_call *c) { assert_int_equal(pthread_create(&c->t, NULL, call_main, c), 0); }
void su_call_join(struct su_call *c) { pthread_join(c->t, NULL); }
