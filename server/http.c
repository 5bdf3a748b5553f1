/* http: see http.h. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../models/sha256.h"
#include "log.h"
#include "../common/clock.h"

#define HTTP_CONNECTION_LIMIT 1024
#define HTTP_IDLE_TIMEOUT_S 60     /* idle keep-alive and slow clients; suspended ones never time out */
#define HTTP_MAX_HEADERS 16
/* The gate (below) reads each connection's request head before MHD does:
 * the largest head it accepts, how long a client may take to send it, and
 * how long an error answer waits for the client to close. MHD's own memory
 * pool per connection must hold a head of HTTP_HEAD_MAX and the answer's
 * headers, with room to spare. */
#define HTTP_HEAD_MAX (32 * 1024)
#define HTTP_HEAD_TIMEOUT_S 30.0
#define HTTP_LINGER_S 2.0
#define HTTP_MHD_MEMORY (128 * 1024)

/* A connection the gate holds until its request head is complete (or,
 * `closing`, after an error answer until the client has read it). */
struct gate_conn {
    int fd;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    double deadline;
    bool closing;
};

struct http_server {
    struct http_config cfg;
    struct MHD_Daemon *d;
    int port;
    int listen_fd;
    atomic_bool draining;          /* http_quiesce: answers close their connection */
    /* the gate: accepts, checks request heads, hands connections to MHD */
    pthread_t gate;
    bool gate_started;
    atomic_bool gate_quit;
    int gate_wake_fd;
    struct gate_conn *pending;
    int n_pending;
    bool have_key;
    uint8_t key_digest[SHA256_DIGEST_SIZE];
    atomic_int active;             /* requests between first call and completion */
    atomic_uint_fast64_t seq;
    /* suspension state of every request, and the watcher */
    pthread_mutex_t wait_mu;
    struct http_request *susp;     /* suspended requests */
    uint64_t next_token;
    bool closing;
    int wake_fd;                   /* eventfd: the suspended set changed */
    pthread_t watcher;
    bool watcher_started;
};

struct hdr {
    char *name, *value;
};

struct http_request {
    struct http_server *s;
    struct MHD_Connection *conn;
    const char *method, *url;      /* MHD's, valid for the whole request */
    int fd;
    double t0;
    uint64_t seq;
    char *body;
    size_t body_len, body_cap, discarded;
    bool too_large, responded;
    int status;
    const char *cors;              /* the Access-Control-Allow-Origin value, or NULL */
    struct hdr hdrs[HTTP_MAX_HEADERS];
    int n_hdrs;
    void *user;
    void (*release)(void *user, bool completed);
    char job[40];
    bool want_suspend;
    /* stream */
    http_stream_fn stream;
    void *stream_ctx;
    double keepalive_s;
    /* guarded by s->wait_mu */
    bool suspended, wake_pending, disconnected, keepalive_due;
    uint64_t token;
    double suspended_at;
    struct http_request *wnext, *wprev;
};

static void poke_watcher(struct http_server *s) {
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof one) < 0) { /* the counter is saturated: it wakes anyway */ }
}

/* ---- suspension (s->wait_mu held) ------------------------------------------ */

static void suspend_locked(struct http_request *r) {
    struct http_server *s = r->s;
    r->suspended = true;
    r->token = ++s->next_token;
    r->suspended_at = clock_now();
    r->wprev = NULL;
    r->wnext = s->susp;
    if (s->susp) s->susp->wprev = r;
    s->susp = r;
    MHD_suspend_connection(r->conn);
    poke_watcher(s);
}

static void resume_locked(struct http_request *r) {
    struct http_server *s = r->s;
    if (!r->suspended) return;
    r->suspended = false;
    if (r->wprev) r->wprev->wnext = r->wnext;
    else s->susp = r->wnext;
    if (r->wnext) r->wnext->wprev = r->wprev;
    r->wnext = r->wprev = NULL;
    MHD_resume_connection(r->conn);
}

void http_wake(struct http_request *r) {
    struct http_server *s = r->s;
    pthread_mutex_lock(&s->wait_mu);
    if (r->suspended) resume_locked(r);
    else r->wake_pending = true;
    pthread_mutex_unlock(&s->wait_mu);
}

void http_suspend(struct http_request *r) { r->want_suspend = true; }

/* Polls suspended sockets for hang-ups, and wakes idle streams for their
 * keep-alive line. A socket is identified by its suspension token, never by
 * its fd number alone: an fd can be closed and reused between poll and
 * check, a token cannot. */
static void *watcher_main(void *arg) {
    struct http_server *s = arg;
    struct pollfd *pfd = NULL;
    uint64_t *tok = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&s->wait_mu);
    while (!s->closing) {
        size_t n = 0;
        for (struct http_request *r = s->susp; r; r = r->wnext) n++;
        if (n + 1 > cap) {
            size_t nc = (n + 1) * 2;
            struct pollfd *np = realloc(pfd, nc * sizeof *np);
            if (np) pfd = np;
            uint64_t *nt = np ? realloc(tok, nc * sizeof *nt) : NULL;
            if (nt) {
                tok = nt;
                cap = nc;
            }
        }
        if (n + 1 > cap) n = cap ? cap - 1 : 0; /* out of memory: poll what fits, grow next round */
        if (!pfd || !tok) {
            pthread_mutex_unlock(&s->wait_mu);
            usleep(100000);
            pthread_mutex_lock(&s->wait_mu);
            continue;
        }
        pfd[0] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        size_t k = 1;
        for (struct http_request *r = s->susp; r && k < n + 1; r = r->wnext, k++) {
            pfd[k] = (struct pollfd){.fd = r->fd, .events = POLLRDHUP};
            tok[k] = r->token;
        }
        pthread_mutex_unlock(&s->wait_mu);
        int ready = poll(pfd, k, 1000);
        if (ready > 0 && (pfd[0].revents & POLLIN)) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof v) < 0) { /* nothing to drain */ }
        }
        pthread_mutex_lock(&s->wait_mu);
        for (size_t i = 1; ready > 0 && i < k; i++) {
            if (!(pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) continue;
            for (struct http_request *r = s->susp; r; r = r->wnext)
                if (r->token == tok[i]) {
                    r->disconnected = true;
                    resume_locked(r);
                    break;
                }
        }
        double now = clock_now();
        for (struct http_request *r = s->susp, *next; r; r = next) {
            next = r->wnext;
            if (r->stream && r->keepalive_s > 0 && now - r->suspended_at >= r->keepalive_s) {
                r->keepalive_due = true;
                resume_locked(r);
            }
        }
    }
    pthread_mutex_unlock(&s->wait_mu);
    free(pfd);
    free(tok);
    return NULL;
}

/* ---- answers ---------------------------------------------------------------- */

void http_add_header(struct http_request *r, const char *name, const char *value) {
    if (r->n_hdrs >= HTTP_MAX_HEADERS) return;
    struct hdr *h = &r->hdrs[r->n_hdrs];
    h->name = strdup(name);
    h->value = strdup(value);
    if (!h->name || !h->value) {
        free(h->name);
        free(h->value);
        return;
    }
    r->n_hdrs++;
}

static void queue(struct http_request *r, int status, const char *content_type, struct MHD_Response *resp) {
    if (!resp) {
        log_write(LOGL_ERROR, r->job, "out of memory building a response");
        r->responded = true;
        return;
    }
    if (content_type) MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (atomic_load(&r->s->draining)) MHD_add_response_header(resp, "Connection", "close");
    if (r->s->cfg.n_cors_origins > 0) {
        MHD_add_response_header(resp, "Vary", "Origin");
        if (r->cors) {
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors);
            MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Seed, X-Job-Id, Retry-After, Location");
        }
    }
    for (int i = 0; i < r->n_hdrs; i++) MHD_add_response_header(resp, r->hdrs[i].name, r->hdrs[i].value);
    if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES)
        log_write(LOGL_ERROR, r->job, "could not queue a %d answer to %s %s", status, r->method, r->url);
    MHD_destroy_response(resp);
    r->status = status;
    r->responded = true;
}

void http_respond(struct http_request *r, int status, const char *content_type, void *body, size_t len) {
    if (r->responded) {
        free(body);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(body);
    queue(r, status, content_type, resp);
}

void http_respond_json(struct http_request *r, int status, json_t *body) {
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}";
        char *copy = strdup(oom);
        http_respond(r, copy ? 500 : status, "application/json", copy, copy ? strlen(copy) : 0);
        return;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* the NUL becomes the final newline; the body needs no terminator */
    http_respond(r, status, "application/json", text, n + 1);
}

/* Replaces bytes that are not well-formed UTF-8 (RFC 3629) with '?':
 * messages quote what clients sent, cut at a byte count ("%.100s"), and
 * jansson refuses a string that is not UTF-8. */
static void utf8_clean(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80                  ? 1
              : *p >= 0xC2 && *p <= 0xDF ? 2
              : *p >= 0xE0 && *p <= 0xEF ? 3
              : *p >= 0xF0 && *p <= 0xF4 ? 4
                                         : 0;
        bool ok = n > 0;
        for (int i = 1; ok && i < n; i++) ok = (p[i] & 0xC0) == 0x80; /* stops at the NUL */
        /* overlong forms, surrogates, beyond U+10FFFF */
        if (ok && n == 3) ok = !(p[0] == 0xE0 && p[1] < 0xA0) && !(p[0] == 0xED && p[1] >= 0xA0);
        if (ok && n == 4) ok = !(p[0] == 0xF0 && p[1] < 0x90) && !(p[0] == 0xF4 && p[1] >= 0x90);
        if (!ok) *p++ = '?';
        else p += n;
    }
}

void http_respond_error(struct http_request *r, int status, const char *code, const char *field, const char *fmt,
                        ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_clean(msg);
    if (r->s->cfg.error_body) {
        json_t *other = r->s->cfg.error_body(r->s->cfg.ctx, r->url, &status, code, field, msg);
        if (other) {
            http_respond_json(r, status, other);
            return;
        }
    }
    json_t *err = json_pack("{s:s, s:s}", "code", code, "message", msg);
    if (err && field) json_object_set_new(err, "field", json_string(field));
    http_respond_json(r, status, err ? json_pack("{s:o}", "error", err) : NULL);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct http_request *r = cls;
    struct http_server *s = r->s;
    for (;;) {
        long n = r->stream(r->stream_ctx, buf, max);
        if (n > 0) return n;
        if (n < 0) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&s->wait_mu);
        if (r->disconnected || s->closing) {
            pthread_mutex_unlock(&s->wait_mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        static const char ka[] = ": keepalive\n\n"; /* an SSE comment: clients ignore it */
        if (r->keepalive_due && max >= sizeof ka - 1) {
            r->keepalive_due = false;
            pthread_mutex_unlock(&s->wait_mu);
            memcpy(buf, ka, sizeof ka - 1);
            return (ssize_t)(sizeof ka - 1);
        }
        if (r->wake_pending) {
            r->wake_pending = false;
            pthread_mutex_unlock(&s->wait_mu);
            continue;
        }
        suspend_locked(r);
        pthread_mutex_unlock(&s->wait_mu);
        return 0;
    }
}

void http_respond_stream(struct http_request *r, int status, const char *content_type, http_stream_fn read,
                         void *ctx, double keepalive_s) {
    if (r->responded) return;
    r->stream = read;
    r->stream_ctx = ctx;
    r->keepalive_s = keepalive_s;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r, NULL);
    queue(r, status, content_type, resp);
}

/* ---- requests ----------------------------------------------------------------- */

const char *http_method(const struct http_request *r) { return r->method; }
const char *http_path(const struct http_request *r) { return r->url; }

const char *http_header(const struct http_request *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_query(const struct http_request *r, const char *key) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *http_body(const struct http_request *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body ? r->body : "";
}

void *http_user(const struct http_request *r) { return r->user; }

void http_set_user(struct http_request *r, void *user, void (*release)(void *user, bool completed)) {
    r->user = user;
    r->release = release;
}

void http_set_job(struct http_request *r, const char *job_id) { snprintf(r->job, sizeof r->job, "%s", job_id); }

static bool path_in(const char *path, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(path, list[i]) == 0) return true;
    return false;
}

static const char *cors_origin(const struct http_server *s, const struct http_request *r) {
    const char *origin = http_header(r, "Origin");
    if (!origin || s->cfg.n_cors_origins == 0) return NULL;
    for (int i = 0; i < s->cfg.n_cors_origins; i++) {
        const char *o = s->cfg.cors_origins[i];
        if (strcmp(o, "*") == 0) return "*";
        if (strcmp(o, origin) == 0) return o; /* the configured string, not the client's */
    }
    return NULL;
}

static bool authorized(const struct http_server *s, const struct http_request *r) {
    if (!s->have_key || path_in(r->url, s->cfg.open_paths, s->cfg.n_open_paths)) return true;
    const char *given = http_header(r, "X-API-Key");
    const char *auth = http_header(r, "Authorization");
    if (!given && auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        given = auth + 7;
        while (*given == ' ') given++;
    }
    if (!given) return false;
    /* comparing digests takes the same time whatever the key's length or
     * how much of it matches */
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(given, strlen(given), d);
    volatile uint8_t diff = 0;
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) diff |= (uint8_t)(d[i] ^ s->key_digest[i]);
    return diff == 0;
}

static void preflight(struct http_request *r) {
    http_add_header(r, "Allow", "GET, POST, DELETE, OPTIONS");
    if (r->cors) {
        http_add_header(r, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
        http_add_header(r, "Access-Control-Allow-Headers",
                        "Authorization, X-API-Key, Content-Type, Accept, Last-Event-ID");
        http_add_header(r, "Access-Control-Max-Age", "600");
    }
    http_respond(r, 204, NULL, NULL, 0);
}

static bool append_body(struct http_request *r, const char *data, size_t n) {
    size_t max = r->s->cfg.max_body_bytes;
    if (r->too_large || r->body_len + n > max) {
        r->too_large = true;
        r->discarded += n;
        return r->discarded <= max; /* a client streaming forever is cut off */
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) cap *= 2;
        if (cap > max + 1) cap = max + 1;
        char *b = realloc(r->body, cap);
        if (!b) return false;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return true;
}

/* Runs the handler until it answers or sleeps. */
static void dispatch(struct http_request *r) {
    struct http_server *s = r->s;
    for (;;) {
        r->want_suspend = false;
        s->cfg.handler(s->cfg.ctx, r);
        if (r->responded) return;
        if (!r->want_suspend) {
            http_respond_error(r, 500, "internal_error", NULL, "the handler gave no answer");
            return;
        }
        pthread_mutex_lock(&s->wait_mu);
        if (s->closing) {
            pthread_mutex_unlock(&s->wait_mu);
            http_respond_error(r, 503, "shutting_down", NULL, "the server is shutting down");
            return;
        }
        if (r->wake_pending) {
            r->wake_pending = false;
            pthread_mutex_unlock(&s->wait_mu);
            continue;
        }
        suspend_locked(r);
        pthread_mutex_unlock(&s->wait_mu);
        return;
    }
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    struct http_server *s = cls;
    struct http_request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->s = s;
        r->conn = c;
        r->method = method;
        r->url = url;
        r->t0 = clock_now();
        r->seq = atomic_fetch_add(&s->seq, 1);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->fd = ci ? ci->connect_fd : -1;
        *con_cls = r;
        atomic_fetch_add(&s->active, 1);
        r->cors = cors_origin(s, r);
        if (strcmp(method, "OPTIONS") == 0) {
            preflight(r);
            return MHD_YES;
        }
        if (!authorized(s, r)) {
            http_add_header(r, "WWW-Authenticate", "Bearer realm=\"diffusiond\"");
            bool given = http_header(r, "X-API-Key") || http_header(r, "Authorization");
            http_respond_error(r, 401, "unauthorized", NULL, "%s",
                               given ? "invalid API key"
                                     : "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)");
            return MHD_YES;
        }
        const char *cl = http_header(r, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || n > s->cfg.max_body_bytes) {
                http_respond_error(r, 413, "body_too_large", NULL, "the request body is larger than %zu bytes",
                                   s->cfg.max_body_bytes);
                return MHD_YES;
            }
        }
        return MHD_YES;
    }
    if (r->responded) { /* answered early (401, 413): the rest of the body is dropped */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        bool ok = append_body(r, upload, *upload_size);
        *upload_size = 0;
        return ok ? MHD_YES : MHD_NO;
    }
    pthread_mutex_lock(&s->wait_mu);
    bool gone = r->disconnected;
    pthread_mutex_unlock(&s->wait_mu);
    if (gone) return MHD_NO; /* close it; the completion callback releases it */
    if (r->too_large) {
        http_respond_error(r, 413, "body_too_large", NULL, "the request body is larger than %zu bytes",
                           s->cfg.max_body_bytes);
        return MHD_YES;
    }
    dispatch(r);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    struct http_server *s = cls;
    struct http_request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    bool ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (r->release) r->release(r->user, ok);
    double secs = clock_now() - r->t0;
    enum log_level lv = !ok ? LOGL_INFO
                        : r->status >= 500 ? LOGL_WARN
                        : path_in(r->url, s->cfg.quiet_paths, s->cfg.n_quiet_paths) ? LOGL_DEBUG
                                                                                     : LOGL_INFO;
    if (ok) log_write(lv, r->job, "%s %s %d %.3f s", r->method, r->url, r->status, secs);
    else log_write(lv, r->job, "%s %s closed before the answer was sent (%.3f s)", r->method, r->url, secs);
    for (int i = 0; i < r->n_hdrs; i++) {
        free(r->hdrs[i].name);
        free(r->hdrs[i].value);
    }
    free(r->body);
    free(r);
    atomic_fetch_sub(&s->active, 1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    log_write(LOGL_DEBUG, NULL, "libmicrohttpd: %s", msg);
}

/* ---- the gate ------------------------------------------------------------------
 *
 * libmicrohttpd answers a request it cannot parse (a malformed request line,
 * a header block beyond its memory pool, a Content-Length that does not
 * parse or overflows) itself, with an HTML page, and offers no hook to
 * change that. So the daemon owns the listening socket: this thread
 * accepts, peeks at each connection's request head (MSG_PEEK: the bytes
 * stay for MHD), answers what MHD would refuse with our JSON error, and
 * hands the rest to MHD (MHD_add_connection). It waits for a head without
 * spinning: SO_RCVLOWAT makes poll report the socket only once more bytes
 * than already seen have arrived. Later requests on a kept-alive connection
 * are MHD's alone (docs/API.md says so). */

static bool is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void gate_close(struct http_server *s, int i) {
    close(s->pending[i].fd);
    s->pending[i] = s->pending[--s->n_pending];
}

static void set_lowat(int fd, int n) {
    if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &n, sizeof n) != 0) { /* poll then wakes early: harmless */ }
}

/* Sends a JSON error and half-closes; the connection lingers (closing)
 * until the client has read it, so unread request bytes cannot turn the
 * close into a reset that loses the answer. `path` (the request target,
 * NULL when the request line is unreadable) picks the error's shape. */
static void gate_reply(struct http_server *s, struct gate_conn *c, const char *path, int status, const char *reason,
                       const char *code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static void gate_reply(struct http_server *s, struct gate_conn *c, const char *path, int status, const char *reason,
                       const char *code, const char *fmt, ...) {
    char msg[256], out[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_clean(msg);
    int shaped_status = status; /* the status line keeps its reason phrase: a changed status is not taken */
    json_t *body = path && s->cfg.error_body ? s->cfg.error_body(s->cfg.ctx, path, &shaped_status, code, NULL, msg)
                                             : NULL;
    if (!body) body = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n%s\n",
                     status, reason, text ? strlen(text) + 1 : 1, text ? text : "");
    free(text);
    log_write(LOGL_INFO, NULL, "refused a request before reading it: %d %s", status, msg);
    if (n > 0 && send(c->fd, out, (size_t)n < sizeof out ? (size_t)n : sizeof out, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* the client is gone: the linger below ends at once */
    }
    shutdown(c->fd, SHUT_WR);
    set_lowat(c->fd, 1);
    c->closing = true;
    c->deadline = clock_now() + HTTP_LINGER_S;
}

/* The head's Content-Length: true when absent or valid (*n set). */
static bool content_length(const char *v, const char *end, unsigned long long *n) {
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) end--;
    if (v == end) return false;
    unsigned long long x = 0;
    for (; v < end; v++) {
        if (*v < '0' || *v > '9') return false;
        x = x > ULLONG_MAX / 10 - 9 ? ULLONG_MAX : x * 10 + (unsigned)(*v - '0'); /* saturates: too large */
    }
    *n = x;
    return true;
}

/* Checks a complete head (len bytes, up to and with its blank line); false
 * after answering it. */
static bool gate_check_head(struct http_server *s, struct gate_conn *c, const char *h, size_t len) {
    const char *p = h, *end = h + len, *eol = memchr(p, '\n', len);
    const char *m = p;
    while (p < eol && is_tchar((unsigned char)*p)) p++;
    bool ok = p > m && p < eol && *p == ' ';
    const char *t = ++p;
    while (ok && p < eol && (unsigned char)*p > ' ' && *p != 0x7f) p++;
    ok = ok && p > t && p < eol && *p == ' ';
    const char *v = p + 1, *ve = eol > v && eol[-1] == '\r' ? eol - 1 : eol;
    bool http = ok && ve - v == 8 && strncmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' &&
                v[7] >= '0' && v[7] <= '9';
    if (!http) {
        gate_reply(s, c, NULL, 400, "Bad Request", "bad_request",
                   "malformed request line (expected METHOD TARGET HTTP/1.1)");
        return false;
    }
    char path[256]; /* enough to match an API's prefix */
    snprintf(path, sizeof path, "%.*s", (int)(p - t), t);
    if (strncmp(v, "HTTP/1.1", 8) != 0 && strncmp(v, "HTTP/1.0", 8) != 0) {
        gate_reply(s, c, path, 505, "HTTP Version Not Supported", "http_version_not_supported",
                   "%.8s is not supported: use HTTP/1.1", v);
        return false;
    }
    bool have_cl = false;
    unsigned long long cl = 0;
    for (const char *line = eol + 1; line < end; line = eol + 1) {
        eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) break;
        if (eol == line || (eol == line + 1 && *line == '\r')) break; /* the blank line */
        const char *colon = line;
        while (colon < eol && is_tchar((unsigned char)*colon)) colon++;
        if (colon == line || colon == eol || *colon != ':') {
            gate_reply(s, c, path, 400, "Bad Request", "bad_request", "malformed header line");
            return false;
        }
        if (colon - line == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            unsigned long long n = 0;
            if (!content_length(colon + 1, eol, &n) || (have_cl && n != cl)) {
                gate_reply(s, c, path, 400, "Bad Request", "bad_request", "invalid Content-Length");
                return false;
            }
            have_cl = true;
            cl = n;
        }
    }
    if (have_cl && cl > s->cfg.max_body_bytes) {
        gate_reply(s, c, path, 413, "Content Too Large", "body_too_large",
                   "the request body is larger than %zu bytes", s->cfg.max_body_bytes);
        return false;
    }
    return true;
}

/* One look at a pending connection (`revents` from poll); false when it
 * left the gate. */
static bool gate_step(struct http_server *s, int i, short revents) {
    bool readable = revents != 0;
    struct gate_conn *c = &s->pending[i];
    static _Thread_local char buf[HTTP_HEAD_MAX + 1];
    double now = clock_now();
    if (c->closing) {
        ssize_t k = 1;
        while (readable && (k = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {}
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) || now >= c->deadline) {
            gate_close(s, i);
            return false;
        }
        return true;
    }
    ssize_t k = recv(c->fd, buf, HTTP_HEAD_MAX, MSG_PEEK | MSG_DONTWAIT);
    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) { /* gone before a whole head */
        gate_close(s, i);
        return false;
    }
    size_t n = k > 0 ? (size_t)k : 0;
    const char *e = memmem(buf, n, "\r\n\r\n", 4), *lf = memmem(buf, n, "\n\n", 2);
    size_t head = e ? (size_t)(e - buf) + 4 : 0;
    if (lf && (!e || lf < e)) head = (size_t)(lf - buf) + 2; /* bare LF line ends, as MHD allows */
    if (!head) {
        if (revents & (POLLRDHUP | POLLHUP)) { /* half a head, then the client stopped sending: nothing to answer */
            while (recv(c->fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {} /* read: a close with unread bytes resets */
            gate_close(s, i);
        }
        else if (n >= HTTP_HEAD_MAX)
            gate_reply(s, c, NULL, 431, "Request Header Fields Too Large", "headers_too_large",
                       "the request line and headers are larger than %d bytes", HTTP_HEAD_MAX);
        else if (now >= c->deadline)
            gate_reply(s, c, NULL, 408, "Request Timeout", "request_timeout", "no complete request head within %.0f s",
                       HTTP_HEAD_TIMEOUT_S);
        else
            set_lowat(c->fd, (int)n + 1);
        return !(revents & (POLLRDHUP | POLLHUP));
    }
    if (!gate_check_head(s, c, buf, head)) return true; /* answered; lingers */
    set_lowat(c->fd, 1);
    struct gate_conn taken = *c;
    s->pending[i] = s->pending[--s->n_pending];
    /* MHD closes the socket itself when it cannot take it */
    if (MHD_add_connection(s->d, taken.fd, (const struct sockaddr *)&taken.addr, taken.addr_len) != MHD_YES)
        log_write(LOGL_WARN, NULL, "libmicrohttpd refused a connection: %s", strerror(errno));
    return false;
}

static void *gate_main(void *arg) {
    struct http_server *s = arg;
    struct pollfd *pfd = malloc((HTTP_CONNECTION_LIMIT + 2) * sizeof *pfd);
    int *idx = malloc((HTTP_CONNECTION_LIMIT + 2) * sizeof *idx);
    while (pfd && idx && !atomic_load(&s->gate_quit)) {
        double now = clock_now(), next = now + 1.0;
        pfd[0] = (struct pollfd){.fd = s->gate_wake_fd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = s->n_pending < HTTP_CONNECTION_LIMIT ? s->listen_fd : -1, .events = POLLIN};
        int n = 2;
        for (int i = 0; i < s->n_pending; i++, n++) {
            pfd[n] = (struct pollfd){.fd = s->pending[i].fd, .events = POLLIN | POLLRDHUP};
            idx[n] = i;
            if (s->pending[i].deadline < next) next = s->pending[i].deadline;
        }
        int ms = next > now ? (int)((next - now) * 1000) + 1 : 0;
        if (poll(pfd, (nfds_t)n, ms) < 0 && errno != EINTR) break;
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            if (read(s->gate_wake_fd, &v, sizeof v) < 0) { /* nothing to drain */ }
        }
        /* from the last: gate_step moves the last entry into a freed slot */
        now = clock_now();
        for (int k = n - 1; k >= 2; k--) {
            int i = idx[k];
            if (pfd[k].revents || s->pending[i].deadline <= now) gate_step(s, i, pfd[k].revents);
        }
        while ((pfd[1].revents & POLLIN) && s->n_pending < HTTP_CONNECTION_LIMIT) {
            struct gate_conn c = {.addr_len = sizeof c.addr};
            c.fd = accept4(s->listen_fd, (struct sockaddr *)&c.addr, &c.addr_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c.fd < 0) break; /* EAGAIN, or out of descriptors: poll again */
            c.deadline = clock_now() + HTTP_HEAD_TIMEOUT_S;
            s->pending[s->n_pending] = c;
            /* most heads are in already: look now rather than after a poll */
            gate_step(s, s->n_pending++, POLLIN);
        }
    }
    if (!pfd || !idx) log_write(LOGL_ERROR, NULL, "out of memory: the HTTP gate stopped accepting");
    free(pfd);
    free(idx);
    return NULL;
}

/* The listening socket, ours so that a port in use is an error (MHD's
 * SO_REUSEPORT would let a second daemon share it) and the gate can accept. */
static df_status listen_on(struct http_server *s, const struct addrinfo *ai, const char *host, int port) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return df_error(DF_EIO, "socket: %s", strerror(errno));
    int one = 1;
    /* SO_REUSEADDR only allows a restart while old connections linger in
     * TIME_WAIT; on Linux it never lets two sockets listen on one port */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int err = errno;
        close(fd);
        if (err == EADDRINUSE)
            return df_error(DF_EIO, "port %d is in use: another diffusiond, or another program, listens on %s:%d",
                            port, host, port);
        return df_error(DF_EIO, "cannot listen on %s:%d: %s", host, port, strerror(err));
    }
    if (listen(fd, SOMAXCONN) != 0) {
        int err = errno;
        close(fd);
        return df_error(DF_EIO, "cannot listen on %s:%d: %s", host, port, strerror(err));
    }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    s->port = port;
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        s->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    s->listen_fd = fd;
    return DF_OK;
}

/* ---- server ----------------------------------------------------------------- */

df_status http_create(const struct http_config *cfg, struct http_server **out) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai != 0) return df_error(DF_EINVAL, "host \"%s\": %s", cfg->host, gai_strerror(gai));
    struct http_server *s = calloc(1, sizeof *s);
    struct gate_conn *pending = calloc(HTTP_CONNECTION_LIMIT, sizeof *pending);
    if (!s || !pending) {
        free(s);
        free(pending);
        freeaddrinfo(ai);
        return df_error(DF_ENOMEM, "out of memory");
    }
    s->cfg = *cfg;
    s->listen_fd = -1;
    s->gate_wake_fd = -1;
    s->pending = pending;
    s->have_key = cfg->api_key && *cfg->api_key;
    if (s->have_key) sha256_digest(cfg->api_key, strlen(cfg->api_key), s->key_digest);
    pthread_mutex_init(&s->wait_mu, NULL);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->gate_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0 || s->gate_wake_fd < 0) {
        freeaddrinfo(ai);
        http_destroy(s);
        return df_error(DF_EIO, "eventfd: %s", strerror(errno));
    }
    df_status st = listen_on(s, ai, cfg->host, cfg->port);
    freeaddrinfo(ai);
    if (st != DF_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", df_errmsg());
        http_destroy(s);
        return df_error(st, "%s", msg);
    }
    /* no listening socket of MHD's own: the gate adds every connection, and
     * the inter-thread channel wakes MHD's threads for them */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    struct MHD_OptionItem pool[] = {
        {cfg->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, cfg->threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTION_LIMIT,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MHD_MEMORY,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                            MHD_OPTION_ARRAY, pool,
                            MHD_OPTION_END);
    if (!s->d) {
        http_destroy(s);
        return df_error(DF_EIO, "cannot start libmicrohttpd on %s:%d", cfg->host, cfg->port);
    }
    if (pthread_create(&s->watcher, NULL, watcher_main, s) != 0) {
        http_destroy(s);
        return df_error(DF_ENOMEM, "cannot start the HTTP watcher thread");
    }
    s->watcher_started = true;
    if (pthread_create(&s->gate, NULL, gate_main, s) != 0) {
        http_destroy(s);
        return df_error(DF_ENOMEM, "cannot start the HTTP gate thread");
    }
    s->gate_started = true;
    *out = s;
    return DF_OK;
}

int http_port(const struct http_server *s) { return s->port; }

void http_quiesce(struct http_server *s) { atomic_store(&s->draining, true); }

bool http_drain(struct http_server *s, double timeout_s) {
    double end = clock_now() + timeout_s;
    while (atomic_load(&s->active) > 0) {
        if (clock_now() >= end) return false;
        usleep(10000);
    }
    return true;
}

void http_destroy(struct http_server *s) {
    if (!s) return;
    if (s->gate_started) { /* first: no new connection reaches MHD */
        atomic_store(&s->gate_quit, true);
        uint64_t one = 1;
        if (write(s->gate_wake_fd, &one, sizeof one) < 0) { /* saturated: it wakes anyway */ }
        pthread_join(s->gate, NULL);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    while (s->n_pending > 0) gate_close(s, s->n_pending - 1);
    free(s->pending);
    pthread_mutex_lock(&s->wait_mu);
    s->closing = true;
    /* MHD refuses to stop with suspended connections: wake them all; they
     * see `closing` and end */
    while (s->susp) {
        s->susp->disconnected = true;
        resume_locked(s->susp);
    }
    pthread_mutex_unlock(&s->wait_mu);
    if (s->watcher_started) {
        poke_watcher(s);
        pthread_join(s->watcher, NULL);
    }
    if (s->d) MHD_stop_daemon(s->d);
    if (s->wake_fd >= 0) close(s->wake_fd);
    if (s->gate_wake_fd >= 0) close(s->gate_wake_fd);
    pthread_mutex_destroy(&s->wait_mu);
    free(s);
}

/* ---- base64 ------------------------------------------------------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *http_base64_encode(const void *data, size_t len) {
    const uint8_t *p = data;
    size_t n = (len + 2) / 3 * 4;
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = b64[(v >> 6) & 63];
        *o++ = b64[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

df_status http_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len) {
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf) return df_error(DF_ENOMEM, "out of memory");
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int v;
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad) goto bad; /* data after padding */
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+' || c == '-') v = 62; /* and the URL-safe alphabet */
        else if (c == '/' || c == '_') v = 63;
        else goto bad;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits >= 6 || pad > 2) goto bad; /* a lone trailing character */
    *out = buf;
    *out_len = n;
    return DF_OK;
bad:
    free(buf);
    return df_error(DF_EINVAL, "not valid base64");
}
