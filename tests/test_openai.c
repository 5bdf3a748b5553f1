/* Tests for OpenAI's images API (server/openai.c) in-process: one daemon on
 * 127.0.0.1 with an ephemeral port (queue_max 2, fp32, the validation layer
 * on, sizes up to 512) and the tiny SD1.x model from ../shared/fixtures,
 * plus one with an API key for the auth test. Generations (b64_json: the
 * PNG decoded, its size and infotext checked; url: the image fetched and
 * compared), n = 2, sizes and their defaults, OpenAI's model names, edits
 * through multipart/form-data, malformed requests and bodies (each an
 * OpenAI-shaped error, nothing queued), a full queue, a cancelled job,
 * /v1/models, and the API key on /v1/. Generations are 64x64-ish with 1-2
 * steps; a job that must be running when the next request comes is held
 * (holdutil.h), so nothing depends on the machine's speed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../server/http.h"
#include "../server/image.h"
#include "../server/multipart.h"
#include "serverutil.h"

static struct su_model fx;
static struct su_daemon g_d;
static int g_port;

#define TINY_MODEL "--unet", fx.unet, "--vae", fx.vae, "--text-encoder", fx.clip, "--unet-config", fx.unet_config, \
                   "--vae-config", fx.vae_config, "--text-encoder-config", fx.clip_config, "--scheduler-config",   \
                   fx.scheduler_config, "--precision", "fp32"
#define SUBMITTED "diffusiond_jobs_submitted_total"
#define BOUNDARY "----oaTestBoundary7MA4YWxkTrZu0gW"
#define FORM_TYPE "multipart/form-data; boundary=" BOUNDARY

static int group_setup(void **state) {
    (void)state;
    char *argv[] = {"serve", TINY_MODEL, "--host", "127.0.0.1", "--port", "0", "--queue-max", "2", "--validation",
                    "--log-level", "warn", "--max-body-bytes", "1M", "--max-image-pixels", "16384", "--max-width",
                    "512", "--max-height", "512", "--max-steps", "60", "--max-batch", "4", "--http-threads", "2"};
    if (su_daemon_start(&g_d, sizeof argv / sizeof argv[0], argv) != 0) return -1;
    g_port = g_d.port;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    su_daemon_stop(&g_d);
    return 0;
}

/* After each test, passed or failed: no job held, queued or running. */
static int test_end(void **state) {
    su_test_end(state);
    return su_wait_idle(g_port, NULL, SU_PATIENCE_S) ? 0 : -1;
}
#define TEST(t) cmocka_unit_test_setup_teardown(t, su_test_start, test_end)

/* ---- helpers ----------------------------------------------------------------- */

/* OpenAI's error object and nothing else: {"error": {message, type, param,
 * code}}, param null when the error is about no one field. */
static void oa_expect_error(const struct su_resp *r, int status, const char *code, const char *param) {
    if (r->status != status) fail_msg("expected %d %s, got %d: %.300s", status, code, r->status, r->body);
    assert_non_null(strstr(su_header(r, "Content-Type"), "application/json"));
    json_t *j = su_json(r), *e = json_object_get(j, "error");
    if (!json_is_object(e) || json_object_size(j) != 1 || json_object_size(e) != 4)
        fail_msg("not OpenAI's error shape: %.300s", r->body);
    assert_true(strlen(su_str(e, "message")) > 0);
    const char *type = status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
    assert_string_equal(su_str(e, "type"), type);
    if (strcmp(su_str(e, "code"), code) != 0) fail_msg("expected code %s: %.300s", code, r->body);
    json_t *p = json_object_get(e, "param");
    if (param ? !json_is_string(p) || strcmp(json_string_value(p), param) != 0 : !json_is_null(p))
        fail_msg("expected param %s: %.300s", param ? param : "null", r->body);
    json_decref(j);
}

struct part {
    const char *name, *filename, *type; /* filename, type: NULL = none */
    const void *data;
    size_t len;                         /* 0: data is a string */
};

/* A multipart/form-data body (BOUNDARY) of these parts. */
static char *form(const struct part *parts, size_t n, size_t *len) {
    size_t cap = 64;
    for (size_t i = 0; i < n; i++) cap += 256 + (parts[i].len ? parts[i].len : strlen(parts[i].data));
    char *b = malloc(cap);
    assert_non_null(b);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct part *p = &parts[i];
        k += (size_t)snprintf(b + k, cap - k, "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"%s\"", p->name);
        if (p->filename) k += (size_t)snprintf(b + k, cap - k, "; filename=\"%s\"", p->filename);
        if (p->type) k += (size_t)snprintf(b + k, cap - k, "\r\nContent-Type: %s", p->type);
        k += (size_t)snprintf(b + k, cap - k, "\r\n\r\n");
        size_t dl = p->len ? p->len : strlen(p->data);
        memcpy(b + k, p->data, dl);
        k += dl;
        k += (size_t)snprintf(b + k, cap - k, "\r\n");
    }
    k += (size_t)snprintf(b + k, cap - k, "--" BOUNDARY "--\r\n");
    *len = k;
    return b;
}

/* POST with any Content-Type (NULL: none) and a raw body; `head` replaces
 * the request line and Host when not NULL. */
static void post_raw(int port, const char *path, const char *headers, const char *type, const void *body, size_t len,
                     struct su_resp *r) {
    int fd = su_connect(port);
    assert_true(fd >= 0);
    char head[2048];
    int n = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", path,
                     headers ? headers : "");
    if (type) n += snprintf(head + n, sizeof head - (size_t)n, "Content-Type: %s\r\n", type);
    snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n\r\n", len);
    su_send(fd, head, strlen(head));
    su_send(fd, body, len);
    su_read(fd, r);
    close(fd);
}

struct png {
    int w, h;
    float *px;
    char *text;
};

static void png_decode(const void *data, size_t n, struct png *p) {
    if (img_decode_png(data, n, 1 << 22, &p->px, &p->w, &p->h, &p->text) != DF_OK) fail_msg("PNG: %s", df_errmsg());
    assert_non_null(p->text);
    /* a real image, not a flat one */
    bool varied = false;
    for (int i = 3; i < p->w * p->h * 3 && !varied; i++) varied = p->px[i] != p->px[i % 3];
    assert_true(varied);
}

static void png_free(struct png *p) {
    free(p->px);
    free(p->text);
}

static void expect_text(const struct png *p, const char *needle) {
    if (!strstr(p->text, needle)) fail_msg("infotext lacks \"%s\": %s", needle, p->text);
}

/* The PNG a data item's URL points at (an absolute URL on this daemon). */
static void fetch_url(int port, const char *url, const char *prefix, struct png *p) {
    size_t n = strlen(prefix);
    if (strncmp(url, prefix, n) != 0) fail_msg("url %s does not start with %s", url, prefix);
    struct su_resp r;
    su_req(port, "GET", url + n, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(su_header(&r, "Content-Type"), "image/png");
    png_decode(r.body, r.len, p);
    su_free(&r);
}

/* A request whose prompt is held: once its job runs, *params gets the
 * job's parameters (GET /jobs/{id}), the job is cancelled, and the call
 * must end in OpenAI's error for a cancelled job. */
static json_t *held_params(int port, const char *headers, const char *body) {
    struct su_call c = {.port = port, .method = "POST", .path = "/v1/images/generations", .headers = headers,
                        .body = body};
    su_call_start(&c);
    hu_wait_held(1, SU_PATIENCE_S);
    char id[40], path[128];
    su_wait_jobs(port, headers, "running", 1, id, SU_PATIENCE_S);
    snprintf(path, sizeof path, "/jobs/%s", id);
    struct su_resp r;
    su_req(port, "GET", path, headers, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = su_json(&r), *params = json_incref(json_object_get(j, "parameters"));
    json_decref(j);
    su_free(&r);
    su_req(port, "DELETE", path, headers, NULL, &r);
    assert_int_equal(r.status, 202); /* running: stops at its next step */
    su_free(&r);
    su_call_join(&c);
    oa_expect_error(&c.r, 409, "cancelled", NULL);
    su_free(&c.r);
    assert_non_null(params);
    return params;
}

static void expect_size(const json_t *params, int w, int h) {
    assert_int_equal(json_integer_value(json_object_get(params, "width")), w);
    assert_int_equal(json_integer_value(json_object_get(params, "height")), h);
}

/* ---- generations ----------------------------------------------------------- */

static void test_generations_b64(void **state) {
    (void)state;
    time_t t0 = time(NULL);
    struct su_resp r;
    su_req(g_port, "POST", "/v1/images/generations", NULL,
           "{\"prompt\": \"a red cube\", \"size\": \"64x64\", \"steps\": 1, \"cfg_scale\": 1, \"seed\": 42,"
           " \"model\": \"dall-e-3\", \"quality\": \"hd\", \"style\": \"vivid\", \"user\": \"user-1234\"}",
           &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    assert_non_null(strstr(su_header(&r, "Content-Type"), "application/json"));
    assert_int_equal(strlen(su_header(&r, "X-Job-Id")), 32);
    json_t *j = su_json(&r), *data = json_object_get(j, "data");
    json_int_t created = json_integer_value(json_object_get(j, "created"));
    assert_true(created >= (json_int_t)t0 - 1 && created <= (json_int_t)time(NULL) + 1);
    assert_int_equal(json_array_size(data), 1);
    json_t *item = json_array_get(data, 0);
    assert_string_equal(su_str(item, "revised_prompt"), "a red cube");
    assert_null(json_object_get(item, "url"));
    size_t n;
    uint8_t *bytes = su_b64dec(su_str(item, "b64_json"), &n);
    struct png p;
    png_decode(bytes, n, &p);
    assert_int_equal(p.w, 64);
    assert_int_equal(p.h, 64);
    assert_int_equal(strncmp(p.text, "a red cube\n", 11), 0);
    expect_text(&p, "Steps: 1,");
    expect_text(&p, "Seed: 42,");
    expect_text(&p, "Size: 64x64");
    expect_text(&p, "Model: unet_sd15_tiny"); /* dall-e-3: the default model */
    png_free(&p);
    free(bytes);
    json_decref(j);
    su_free(&r);
}

/* n = 2 as URLs: absolute, from the Host header; fetched, they are the
 * images b64_json gives for the same request. */
static void test_generations_url(void **state) {
    (void)state;
    static const char body[] = "{\"prompt\": \"two boats\", \"size\": \"80x48\", \"steps\": 1, \"cfg_scale\": 1,"
                               " \"seed\": 7, \"n\": 2, \"response_format\": \"%s\"}";
    char req[256];
    snprintf(req, sizeof req, body, "url");
    struct su_resp r;
    su_req(g_port, "POST", "/v1/images/generations", NULL, req, &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "http://127.0.0.1/jobs/%s/images/", su_header(&r, "X-Job-Id"));
    json_t *j = su_json(&r), *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    struct png via_url[2];
    for (size_t k = 0; k < 2; k++) {
        json_t *item = json_array_get(data, k);
        assert_null(json_object_get(item, "b64_json"));
        assert_string_equal(su_str(item, "revised_prompt"), "two boats");
        char want[160];
        snprintf(want, sizeof want, "%s%zu", prefix, k);
        assert_string_equal(su_str(item, "url"), want);
        fetch_url(g_port, want, "http://127.0.0.1", &via_url[k]);
        assert_int_equal(via_url[k].w, 80);
        assert_int_equal(via_url[k].h, 48);
        expect_text(&via_url[k], k ? "Seed: 8," : "Seed: 7,");
    }
    json_decref(j);
    su_free(&r);

    snprintf(req, sizeof req, body, "b64_json");
    su_req(g_port, "POST", "/v1/images/generations", NULL, req, &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    j = su_json(&r);
    data = json_object_get(j, "data");
    for (size_t k = 0; k < 2; k++) {
        size_t n;
        uint8_t *bytes = su_b64dec(su_str(json_array_get(data, k), "b64_json"), &n);
        struct png p;
        png_decode(bytes, n, &p);
        assert_int_equal(p.w, 80);
        assert_memory_equal(p.px, via_url[k].px, (size_t)80 * 48 * 3 * sizeof(float));
        assert_string_equal(p.text, via_url[k].text);
        png_free(&p);
        png_free(&via_url[k]);
        free(bytes);
    }
    json_decref(j);
    su_free(&r);

    /* behind a TLS proxy the URL is https; without a Host header, relative */
    static const char small[] = "{\"prompt\": \"p\", \"size\": \"64x64\", \"steps\": 1, \"cfg_scale\": 1,"
                                " \"response_format\": \"url\"}";
    post_raw(g_port, "/v1/images/generations", "X-Forwarded-Proto: https\r\n", "application/json", small,
             strlen(small), &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    j = su_json(&r);
    const char *https = su_str(json_array_get(json_object_get(j, "data"), 0), "url");
    assert_int_equal(strncmp(https, "https://127.0.0.1/jobs/", 23), 0);
    json_decref(j);
    su_free(&r);
    int fd = su_connect(g_port);
    char one_oh[512];
    snprintf(one_oh, sizeof one_oh, "POST /v1/images/generations HTTP/1.0\r\nContent-Type: application/json\r\n"
                                    "Content-Length: %zu\r\n\r\n%s", strlen(small), small);
    su_send(fd, one_oh, strlen(one_oh));
    su_read(fd, &r);
    close(fd);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    j = su_json(&r);
    struct png p;
    const char *url = su_str(json_array_get(json_object_get(j, "data"), 0), "url");
    assert_int_equal(strncmp(url, "/jobs/", 6), 0);
    fetch_url(g_port, url, "", &p);
    png_free(&p);
    json_decref(j);
    su_free(&r);
}

static void test_generations_errors(void **state) {
    (void)state;
    static const struct {
        const char *body;
        int status;
        const char *code, *param;
    } cases[] = {
        {"{\"size\": \"64x64\"}", 400, "missing_field", "prompt"},
        {"{\"prompt\": null}", 400, "missing_field", "prompt"},
        {"{\"prompt\": 5}", 400, "invalid_type", "prompt"},
        {"{\"prompt\": \"x\", \"n\": \"2\"}", 400, "invalid_type", "n"},
        {"{\"prompt\": \"x\", \"n\": 1.5}", 400, "invalid_type", "n"},
        {"{\"prompt\": \"x\", \"size\": 512}", 400, "invalid_type", "size"},
        {"{\"prompt\": \"x\", \"quality\": 5}", 400, "invalid_type", "quality"},
        {"{\"prompt\": \"x\", \"user\": []}", 400, "invalid_type", "user"},
        {"{\"prompt\": \"x\", \"cfg_scale\": \"high\"}", 400, "invalid_type", "cfg_scale"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"n\": 0}", 400, "out_of_range", "n"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"n\": 99}", 400, "out_of_range", "n"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"steps\": 1000}", 400, "out_of_range", "steps"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"seed\": -5}", 400, "out_of_range", "seed"},
        {"{\"prompt\": \"x\", \"size\": \"big\"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"64x\"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"x64\"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"64X64\"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"-64x64\"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"64x64 \"}", 400, "invalid_value", "size"},
        {"{\"prompt\": \"x\", \"size\": \"60x64\"}", 400, "out_of_range", "size"},
        {"{\"prompt\": \"x\", \"size\": \"64x0\"}", 400, "out_of_range", "size"},
        {"{\"prompt\": \"x\", \"size\": \"1024x1024\"}", 400, "out_of_range", "size"}, /* max 512 here */
        {"{\"prompt\": \"x\", \"size\": \"99999999999999999999x64\"}", 400, "out_of_range", "size"},
        {"{\"prompt\": \"x\", \"response_format\": \"png\"}", 400, "invalid_value", "response_format"},
        {"{\"prompt\": \"x\", \"model\": \"sd-xl-9000\"}", 404, "model_not_found", "model"},
        {"{\"prompt\": \"x\", \"model\": \"dall-e\"}", 404, "model_not_found", "model"},
        {"{\"prompt\": \"x\", \"model\": \"../etc/passwd\"}", 400, "invalid_model_name", "model"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"sampler\": \"warp\"}", 400, "unknown_sampler", "sampler"},
        {"{\"prompt\": \"x\", \"size\": \"64x64\", \"sampler\": \"ddim\", \"schedule\": \"karras\"}", 400,
         "unsupported", "sampler"},
        {"{\"prompt\": \"x\",", 400, "invalid_json", NULL},
        {"[\"prompt\"]", 400, "invalid_json", NULL},
        {"", 400, "invalid_json", NULL},
    };
    double submitted = su_metric(g_port, NULL, SUBMITTED);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct su_resp r;
        su_req(g_port, "POST", "/v1/images/generations", NULL, cases[i].body, &r);
        if (r.status != cases[i].status) fail_msg("case %zu (%s): %d %.300s", i, cases[i].body, r.status, r.body);
        oa_expect_error(&r, cases[i].status, cases[i].code, cases[i].param);
        su_free(&r);
    }
    /* a message quoting a name cut inside a UTF-8 character is still JSON */
    char body[256] = "{\"prompt\": \"x\", \"model\": \"";
    size_t n = strlen(body);
    memset(body + n, 'a', 99);
    snprintf(body + n + 99, sizeof body - n - 99, "\xc3\xa9\xc3\xa9\"}");
    struct su_resp r;
    su_req(g_port, "POST", "/v1/images/generations", NULL, body, &r);
    oa_expect_error(&r, 404, "model_not_found", "model");
    su_free(&r);
    assert_true(su_metric(g_port, NULL, SUBMITTED) == submitted); /* nothing was queued */

    su_req(g_port, "GET", "/v1/images/generations", NULL, NULL, &r);
    oa_expect_error(&r, 405, "method_not_allowed", NULL);
    assert_string_equal(su_header(&r, "Allow"), "POST");
    su_free(&r);
    su_req(g_port, "POST", "/v1/images/variations", NULL, "{}", &r);
    oa_expect_error(&r, 404, "not_found", NULL);
    su_free(&r);
    su_req(g_port, "POST", "/v1/images/generations/", NULL, "{}", &r);
    oa_expect_error(&r, 404, "not_found", NULL);
    su_free(&r);
    static const char json[] = "{\"prompt\": \"x\", \"size\": \"64x64\"}";
    post_raw(g_port, "/v1/images/generations", NULL, "text/plain", json, strlen(json), &r);
    oa_expect_error(&r, 415, "unsupported_media_type", NULL);
    su_free(&r);
    /* the daemon's own errors before a handler runs: a head the gate refuses */
    int fd = su_connect(g_port);
    static const char bad_cl[] = "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n";
    su_send(fd, bad_cl, strlen(bad_cl));
    su_read(fd, &r);
    close(fd);
    oa_expect_error(&r, 400, "bad_request", NULL);
    su_free(&r);
    /* the native API keeps its own error shape */
    su_req(g_port, "POST", "/generate", NULL, "{\"steps\": \"x\"}", &r);
    su_expect_error(&r, 400, "invalid_type", "steps");
    su_free(&r);
}

/* Sizes the request leaves out, a full queue and a cancelled job, on held
 * jobs (nothing is generated at 512x512). */
static void test_defaults_queue_cancel(void **state) {
    (void)state;
    json_t *params = held_params(g_port, NULL, "{\"prompt\": \"" HU_HOLD " default\", \"steps\": 2, \"cfg_scale\": 1}");
    expect_size(params, 512, 512); /* SD1.x's own size */
    assert_int_equal(json_integer_value(json_object_get(params, "steps")), 2);
    json_decref(params);
    params = held_params(g_port, NULL, "{\"prompt\": \"" HU_HOLD " auto\", \"size\": \"auto\", \"steps\": 1}");
    expect_size(params, 512, 512);
    assert_true(json_real_value(json_object_get(params, "cfg_scale")) == 7.0);
    json_decref(params);

    /* one running, queue_max (2) waiting: the next is OpenAI's 429 */
    struct su_resp r;
    char ids[3][40];
    for (int k = 0; k < 3; k++) {
        su_req(g_port, "POST", "/jobs", NULL, SU_HELD_JOB, &r);
        assert_int_equal(r.status, 202);
        json_t *j = su_json(&r);
        snprintf(ids[k], sizeof ids[k], "%s", su_str(j, "id"));
        json_decref(j);
        su_free(&r);
        if (k == 0) hu_wait_held(1, SU_PATIENCE_S);
    }
    su_req(g_port, "POST", "/v1/images/generations", NULL, "{\"prompt\": \"x\", \"size\": \"64x64\"}", &r);
    oa_expect_error(&r, 429, "queue_full", NULL);
    assert_non_null(su_header(&r, "Retry-After"));
    su_free(&r);
    for (int k = 2; k >= 0; k--) {
        char path[80];
        snprintf(path, sizeof path, "/jobs/%s", ids[k]);
        su_req(g_port, "DELETE", path, NULL, NULL, &r);
        assert_int_equal(r.status, k ? 200 : 202);
        su_free(&r);
    }
}

/* ---- edits ------------------------------------------------------------------ */

static uint8_t *test_png(int w, int h, size_t *n) {
    char *b64 = su_png_b64(w, h);
    uint8_t *png = su_b64dec(b64, n);
    free(b64);
    return png;
}

static void test_edits(void **state) {
    (void)state;
    size_t pn, len;
    uint8_t *png = test_png(96, 64, &pn);
    struct part parts[] = {
        {"image", "in.png", "image/png", png, pn},
        {"prompt", NULL, NULL, "a watercolour", 0},
        {"steps", NULL, NULL, "2", 0},
        {"strength", NULL, NULL, "0.5", 0},
        {"seed", NULL, NULL, "9", 0},
        {"cfg_scale", NULL, NULL, "1", 0},
        {"model", NULL, NULL, "gpt-image-1", 0},
        {"user", NULL, NULL, "user-5678", 0},
        {"mask", "mask.png", "image/png", png, pn}, /* ignored: no inpainting */
    };
    char *body = form(parts, sizeof parts / sizeof parts[0], &len);
    struct su_resp r;
    post_raw(g_port, "/v1/images/edits", NULL, FORM_TYPE, body, len, &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r), *item = json_array_get(json_object_get(j, "data"), 0);
    assert_int_equal(json_array_size(json_object_get(j, "data")), 1);
    assert_true(json_integer_value(json_object_get(j, "created")) > 0);
    assert_string_equal(su_str(item, "revised_prompt"), "a watercolour");
    size_t n;
    uint8_t *bytes = su_b64dec(su_str(item, "b64_json"), &n);
    struct png p;
    png_decode(bytes, n, &p);
    assert_int_equal(p.w, 96); /* no size: the image's own */
    assert_int_equal(p.h, 64);
    assert_int_equal(strncmp(p.text, "a watercolour\n", 14), 0);
    expect_text(&p, "Denoising strength: 0.5");
    expect_text(&p, "Seed: 9,");
    expect_text(&p, "Steps: 2,");
    png_free(&p);
    free(bytes);
    json_decref(j);
    su_free(&r);
    free(body);

    /* gpt-image-1's image[], a size, n = 2, URLs, the default strength */
    struct part parts2[] = {
        {"prompt", NULL, NULL, "an etching", 0},     {"image[]", "in.png", "image/png", png, pn},
        {"size", NULL, NULL, "64x64", 0},           {"n", NULL, NULL, "2", 0},
        {"steps", NULL, NULL, "4", 0},              {"cfg_scale", NULL, NULL, "1.0", 0},
        {"response_format", NULL, NULL, "url", 0},  {"unknown", NULL, NULL, "ignored", 0},
    };
    body = form(parts2, sizeof parts2 / sizeof parts2[0], &len);
    post_raw(g_port, "/v1/images/edits", NULL, FORM_TYPE, body, len, &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    j = su_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "data")), 2);
    fetch_url(g_port, su_str(json_array_get(json_object_get(j, "data"), 1), "url"), "http://127.0.0.1", &p);
    assert_int_equal(p.w, 64);
    assert_int_equal(p.h, 64);
    expect_text(&p, "Denoising strength: 0.75");
    png_free(&p);
    json_decref(j);
    su_free(&r);
    free(body);
    free(png);
}

static void test_edits_malformed(void **state) {
    (void)state;
    size_t pn, bn;
    uint8_t *png = test_png(32, 32, &pn), *big = test_png(256, 256, &bn); /* over max_image_pixels */
#define P "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n" /* a prompt part */
    static const struct {
        const char *type, *body;
        int status;
        const char *code, *param;
    } raw[] = {
        {NULL, P "--" BOUNDARY "--", 415, "unsupported_media_type", NULL},
        {"application/json", "{\"prompt\": \"x\"}", 415, "unsupported_media_type", NULL},
        {"multipart/form-data", P "--" BOUNDARY "--", 400, "invalid_multipart", NULL},
        {"multipart/form-data; boundary=\"unterminated", P "--" BOUNDARY "--", 400, "invalid_multipart", NULL},
        {FORM_TYPE, "", 400, "invalid_multipart", NULL},
        {FORM_TYPE, "prompt=x&image=y", 400, "invalid_multipart", NULL},
        {FORM_TYPE, P, 400, "invalid_multipart", NULL},                        /* no close delimiter */
        {FORM_TYPE, P "--" BOUNDARY "\r\nContent-Disp", 400, "invalid_multipart", NULL},
        {FORM_TYPE, "--" BOUNDARY "\r\nContent-Type: text/plain\r\n\r\nx\r\n--" BOUNDARY "--", 400, "invalid_multipart",
         NULL},
        {FORM_TYPE, P "--" BOUNDARY "--", 400, "missing_field", "image"},
        {"multipart/form-data; boundary=other", P "--" BOUNDARY "--", 400, "invalid_multipart", NULL},
    };
#undef P
    double submitted = su_metric(g_port, NULL, SUBMITTED);
    struct su_resp r;
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        post_raw(g_port, "/v1/images/edits", NULL, raw[i].type, raw[i].body, strlen(raw[i].body), &r);
        if (r.status != raw[i].status) fail_msg("case %zu: %d %.300s", i, r.status, r.body);
        oa_expect_error(&r, raw[i].status, raw[i].code, raw[i].param);
        su_free(&r);
    }

    /* well-formed forms with bad fields */
    static const char not_png[] = "GIF89a, not a PNG";
    const struct {
        struct part parts[3];
        int status;
        const char *code, *param;
    } forms[] = {
        {{{"image", "a.png", "image/png", png, pn}, {"size", NULL, NULL, "64x64", 0}}, 400, "missing_field", "prompt"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", "image/png", not_png, 0}}, 400, "invalid_image", "image"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", "image/png", big, bn}}, 413, "image_too_large", "image"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"n", NULL, NULL, "two", 0}}, 400,
         "invalid_type", "n"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"n", NULL, NULL, "0x2", 0}}, 400,
         "invalid_type", "n"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"steps", NULL, NULL, " 2", 0}}, 400,
         "invalid_type", "steps"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"strength", NULL, NULL, "1.5", 0}}, 400,
         "out_of_range", "strength"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"strength", NULL, NULL, "lots", 0}}, 400,
         "invalid_type", "strength"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"size", NULL, NULL, "63x64", 0}}, 400,
         "out_of_range", "size"},
        {{{"prompt", NULL, NULL, "\xff\xfe", 0}, {"image", "a.png", NULL, png, pn}}, 400, "invalid_value", "prompt"},
        {{{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", NULL, png, pn}, {"model", NULL, NULL, "nope", 0}}, 404,
         "model_not_found", "model"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        size_t np = 0, len;
        while (np < 3 && forms[i].parts[np].name) np++;
        char *body = form(forms[i].parts, np, &len);
        post_raw(g_port, "/v1/images/edits", NULL, FORM_TYPE, body, len, &r);
        free(body);
        if (r.status != forms[i].status) fail_msg("form %zu: %d %.300s", i, r.status, r.body);
        oa_expect_error(&r, forms[i].status, forms[i].code, forms[i].param);
        su_free(&r);
    }

    /* more parts than the parser takes */
    struct part many[MULTIPART_MAX_PARTS + 1];
    for (size_t i = 0; i < sizeof many / sizeof many[0]; i++) many[i] = (struct part){"x", NULL, NULL, "1", 0};
    many[0] = (struct part){"image", "a.png", NULL, png, pn};
    size_t len;
    char *body = form(many, sizeof many / sizeof many[0], &len);
    post_raw(g_port, "/v1/images/edits", NULL, FORM_TYPE, body, len, &r);
    oa_expect_error(&r, 400, "invalid_multipart", NULL);
    su_free(&r);
    free(body);

    /* the daemon's own 413, refused from Content-Length, in OpenAI's shape too */
    int fd = su_connect(g_port);
    const char *h = "POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: " FORM_TYPE "\r\n"
                    "Content-Length: 2000000000\r\n\r\n";
    su_send(fd, h, strlen(h));
    su_read(fd, &r);
    close(fd);
    oa_expect_error(&r, 413, "body_too_large", NULL);
    su_free(&r);
    su_req(g_port, "GET", "/v1/images/edits", NULL, NULL, &r);
    oa_expect_error(&r, 405, "method_not_allowed", NULL);
    su_free(&r);

    assert_true(su_metric(g_port, NULL, SUBMITTED) == submitted); /* nothing was queued */
    free(png);
    free(big);
}

/* ---- models, auth ------------------------------------------------------------- */

static void test_models(void **state) {
    (void)state;
    struct su_resp r;
    /* no key configured: an Authorization header is not even looked at */
    su_req(g_port, "GET", "/v1/models", "Authorization: Bearer anything\r\n", NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = su_json(&r), *data = json_object_get(j, "data"), *m = json_array_get(data, 0);
    assert_string_equal(su_str(j, "object"), "list");
    assert_int_equal(json_array_size(data), 1);
    assert_string_equal(su_str(m, "id"), "unet_sd15_tiny");
    assert_string_equal(su_str(m, "object"), "model");
    assert_string_equal(su_str(m, "owned_by"), "diffusiond");
    json_int_t created = json_integer_value(json_object_get(m, "created"));
    assert_true(created > 1600000000 && created <= (json_int_t)time(NULL)); /* the file's time */
    json_decref(j);
    su_free(&r);

    su_req(g_port, "GET", "/v1/models/unet_sd15_tiny", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    j = su_json(&r);
    assert_string_equal(su_str(j, "id"), "unet_sd15_tiny");
    assert_int_equal(json_integer_value(json_object_get(j, "created")), created);
    json_decref(j);
    su_free(&r);
    su_req(g_port, "GET", "/v1/models/dall-e-9", NULL, NULL, &r);
    oa_expect_error(&r, 404, "model_not_found", NULL);
    su_free(&r);
    su_req(g_port, "POST", "/v1/models", NULL, "{}", &r);
    oa_expect_error(&r, 405, "method_not_allowed", NULL);
    assert_string_equal(su_header(&r, "Allow"), "GET");
    su_free(&r);
}

/* An API key applies to /v1/ as to everything else; its 401 is OpenAI's.
 * This daemon allows 1024x1024, which OpenAI clients ask for. */
static void test_auth(void **state) {
    (void)state;
    struct su_daemon d;
    char *argv[] = {"serve", TINY_MODEL, "--host", "127.0.0.1", "--port", "0", "--api-key", "s3cret", "--max-width",
                    "1024", "--max-height", "1024", "--log-level", "warn", "--http-threads", "2"};
    assert_int_equal(su_daemon_start(&d, sizeof argv / sizeof argv[0], argv), 0);
    static const char key[] = "Authorization: Bearer s3cret\r\n";
    static const char *refused[] = {NULL, "Authorization: Bearer s3cre\r\n", "Authorization: Bearer s3cret2\r\n",
                                    "Authorization: Basic czNjcmV0\r\n", "X-API-Key: wrong\r\n"};
    struct su_resp r;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        su_req(d.port, "GET", "/v1/models", refused[i], NULL, &r);
        oa_expect_error(&r, 401, "unauthorized", NULL);
        assert_non_null(su_header(&r, "WWW-Authenticate"));
        su_free(&r);
    }
    double submitted = su_metric(d.port, key, SUBMITTED);
    su_req(d.port, "POST", "/v1/images/generations", NULL, "{\"prompt\": \"x\", \"size\": \"64x64\"}", &r);
    oa_expect_error(&r, 401, "unauthorized", NULL);
    su_free(&r);
    size_t pn, len;
    uint8_t *png = test_png(32, 32, &pn);
    struct part parts[] = {{"prompt", NULL, NULL, "x", 0}, {"image", "a.png", "image/png", png, pn}};
    char *body = form(parts, 2, &len);
    post_raw(d.port, "/v1/images/edits", "Authorization: Bearer nope\r\n", FORM_TYPE, body, len, &r);
    oa_expect_error(&r, 401, "unauthorized", NULL);
    su_free(&r);
    free(body);
    free(png);
    assert_true(su_metric(d.port, key, SUBMITTED) == submitted);

    su_req(d.port, "GET", "/v1/models", key, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(d.port, "GET", "/v1/models", "X-API-Key: s3cret\r\n", NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    json_t *params = held_params(d.port, key, "{\"prompt\": \"" HU_HOLD " big\", \"size\": \"1024x1024\", \"steps\": 1,"
                                              " \"model\": \"dall-e-2\"}");
    expect_size(params, 1024, 1024);
    json_decref(params);
    assert_true(su_wait_idle(d.port, key, SU_PATIENCE_S));
    su_daemon_stop(&d);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    su_filter(argc, argv);
    if (su_model_init(&fx) != 0) return 1;
    const struct CMUnitTest tests[] = {
        TEST(test_generations_b64),
        TEST(test_generations_url),
        TEST(test_generations_errors),
        TEST(test_defaults_queue_cancel),
        TEST(test_edits),
        TEST(test_edits_malformed),
        TEST(test_models),
        TEST(test_auth),
    };
    int failed = cmocka_run_group_tests_name("openai", tests, group_setup, group_teardown);
    su_model_cleanup(&fx);
    return failed;
}
