/* http: the HTTP/1.1 server under the API, on libmicrohttpd.
 *
 * Threading: MHD's internal event loop (epoll) on a small pool of threads,
 * with suspend/resume. No request ever blocks an event-loop thread: a
 * handler that must wait for a job (synchronous /generate, an SSE stream
 * between events) suspends its connection and is resumed by http_wake from
 * the worker thread. So a thousand clients waiting on long generations cost
 * a thousand sockets, not a thousand threads, and connection timeouts keep
 * working for everybody else. Because MHD does not watch a suspended
 * socket, a watcher thread polls the suspended ones for hang-ups
 * (POLLRDHUP): a client that goes away while waiting is noticed at once,
 * its request is closed and its job released (and cancelled, see api.c).
 *
 * The daemon owns the listening socket: a gate thread accepts, checks each
 * connection's first request head (request line, header block <= 32 KiB,
 * Content-Length) and answers what libmicrohttpd would refuse with its own
 * HTML page with our JSON error, then hands the connection to MHD. A port
 * another socket listens on is an error (no SO_REUSEPORT).
 *
 * Before any handler runs, this layer enforces the API key (constant-time
 * compare of SHA-256 digests), answers CORS preflights from the allow-list
 * (an origin is echoed only when it is on the list), and reads the body up
 * to max_body_bytes (413 as soon as Content-Length says more, or when a
 * chunked body passes the limit). Errors are JSON:
 * {"error": {"code": "...", "message": "...", "field": "..."}}. */
#ifndef DF_HTTP_H
#define DF_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

struct http_server;
struct http_request;

/* Called on the event-loop thread once the body is complete, and again
 * after every http_wake while suspended. It must answer (http_respond*) or
 * call http_suspend before returning, and never block. */
typedef void (*http_handler)(void *ctx, struct http_request *req);

/* Stream producer: copies up to max bytes into buf and returns how many;
 * 0 = nothing yet (the connection sleeps until http_wake); -1 = the end. */
typedef long (*http_stream_fn)(void *ctx, char *buf, size_t max);

/* Another API's error shape: the JSON body of an error answer to `path`
 * (and its status, which it may change), or NULL for this layer's own
 * shape. Every error goes through it, those of this layer (401, 413) too. */
typedef json_t *(*http_error_fn)(void *ctx, const char *path, int *status, const char *code, const char *field,
                                 const char *message);

struct http_config {
    const char *host;
    int port;                      /* 0 = any free port */
    int threads;
    size_t max_body_bytes;
    const char *api_key;           /* NULL or "" = no authentication */
    char *const *cors_origins;     /* exact origins, or "*" */
    int n_cors_origins;
    const char *const *open_paths; /* no API key needed (health checks) */
    int n_open_paths;
    const char *const *quiet_paths; /* logged at debug level (probes, scrapes) */
    int n_quiet_paths;
    http_handler handler;
    void *ctx;
    http_error_fn error_body;      /* NULL = every error in this layer's shape; gets ctx */
};

/* Binds and starts serving. DF_EIO when the address cannot be bound. */
df_status http_create(const struct http_config *cfg, struct http_server **out);
int http_port(const struct http_server *s);
/* Shutdown has begun: connections are still accepted (the API answers them
 * 503 at once), and every answer closes its connection. */
void http_quiesce(struct http_server *s);
/* Waits until no request is in progress (idle keep-alive connections do not
 * count), up to timeout_s; false on timeout. */
bool http_drain(struct http_server *s, double timeout_s);
/* Closes every connection and stops. */
void http_destroy(struct http_server *s);

/* ---- for handlers --------------------------------------------------------- */
const char *http_method(const struct http_request *r);
const char *http_path(const struct http_request *r);     /* without the query */
const char *http_header(const struct http_request *r, const char *name);
const char *http_query(const struct http_request *r, const char *key);
const char *http_body(const struct http_request *r, size_t *len); /* NUL-terminated */

/* Per-request state of the handler; `release` runs when the request ends,
 * with completed = false when the client went away before the answer. */
void *http_user(const struct http_request *r);
void http_set_user(struct http_request *r, void *user, void (*release)(void *user, bool completed));
/* Tags the request's log line with a job id. */
void http_set_job(struct http_request *r, const char *job_id);

/* Adds a header to the answer about to be given. */
void http_add_header(struct http_request *r, const char *name, const char *value);
/* Answers with `body` (malloc'd; taken, freed by the server). */
void http_respond(struct http_request *r, int status, const char *content_type, void *body, size_t len);
/* Answers with a JSON document (reference stolen). */
void http_respond_json(struct http_request *r, int status, json_t *body);
/* {"error": {"code", "message", "field"}}; field may be NULL. Unless
 * the config's error_body gives another shape for this path. */
void http_respond_error(struct http_request *r, int status, const char *code, const char *field, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));
/* Answers with a body produced by `read` (chunked); keepalive_s > 0 sends
 * an SSE comment line when the stream has been idle that long. */
void http_respond_stream(struct http_request *r, int status, const char *content_type, http_stream_fn read,
                         void *ctx, double keepalive_s);
/* The handler returns without answering; it runs again after http_wake. */
void http_suspend(struct http_request *r);
/* From any thread: runs the handler (or the stream) again. If the request
 * is not suspended yet, the next suspension returns at once. */
void http_wake(struct http_request *r);

/* Base64 (RFC 4648, standard alphabet). encode: malloc'd string or NULL. */
char *http_base64_encode(const void *data, size_t len);
/* decode: ignores whitespace, padding optional; DF_EINVAL on any other
 * character. *out is malloc'd. */
df_status http_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len);

#endif
