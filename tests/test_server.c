/* Tests for the daemon (server/serve, api, sdapi, http, jobs) in-process:
 * one daemon on 127.0.0.1 with an ephemeral port (queue_max 2, fp32, the
 * validation layer on) and the tiny SD1.x model from ../shared/fixtures.
 * Every endpoint's happy path, the pipeline_sd15_tiny image reproduced over
 * HTTP, bad inputs, queue full, cancel of queued and running jobs, SSE,
 * client disconnect, A1111 interrupt and 8 concurrent clients. Generations
 * are 64x64 (8x8 latents) with 1-4 steps: lavapipe is slow. test_serve.c
 * runs `diffusiond serve` itself (auth, CORS, SIGTERM).
 *
 * Nothing here depends on the machine's speed: a job that must still be
 * running when the next request arrives is a held one (holdutil.h); counters
 * are read as differences; every test leaves the daemon idle, so each one
 * runs alone (`test_server NAME`) and in any order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../models/safetensors.h"
#include "../server/config.h"
#include "../server/http.h"
#include "../server/image.h"
#include "../server/serve.h"
#include "serverutil.h"

static struct su_model fx;

static struct su_daemon g_d;
static int g_port;

static int group1_setup(void **state) {
    (void)state;
    char *argv[] = {"serve", "--unet", fx.unet, "--vae", fx.vae, "--text-encoder", fx.clip, "--unet-config",
                    fx.unet_config, "--vae-config", fx.vae_config, "--text-encoder-config", fx.clip_config,
                    "--scheduler-config", fx.scheduler_config, "--precision", "fp32", "--host", "127.0.0.1",
                    "--port", "0", "--queue-max", "2", "--validation", "--log-level", "warn", "--max-body-bytes",
                    "1M", "--max-image-pixels", "16384", "--max-width", "512", "--max-height", "512", "--max-steps",
                    "60", "--max-batch", "4", "--http-threads", "2"};
    if (su_daemon_start(&g_d, sizeof argv / sizeof argv[0], argv) != 0) return -1;
    g_port = g_d.port;
    return 0;
}

static int group1_teardown(void **state) {
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

/* Reads `fd`'s answer, without taking it, until it holds `needle`. */
static void peek_until(int fd, const char *needle) {
    for (char peek[8192];;) {
        ssize_t k = recv(fd, peek, sizeof peek - 1, MSG_PEEK);
        if (k <= 0) fail_msg("connection ended before \"%s\"", needle);
        peek[k] = 0;
        if (strstr(peek, needle)) return;
        usleep(10000); /* more is on its way */
    }
}

static void test_health_ready_models(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g_port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(su_header(&r, "Content-Type"), "application/json"));
    assert_null(su_header(&r, "Access-Control-Allow-Origin")); /* CORS off by default */
    su_free(&r);
    su_req(g_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = su_json(&r);
    assert_true(json_is_true(json_object_get(j, "ready")));
    json_decref(j);
    su_free(&r);
    su_req(g_port, "GET", "/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    j = su_json(&r);
    assert_string_equal(su_str(j, "default"), "unet_sd15_tiny");
    json_t *m = json_array_get(json_object_get(j, "models"), 0);
    assert_int_equal(strlen(su_str(m, "hash")), 10);
    json_decref(j);
    su_free(&r);
    su_req(g_port, "GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(su_header(&r, "Content-Type"), "text/plain"));
    assert_non_null(strstr(r.body, "diffusiond_queue_depth 0"));
    assert_non_null(strstr(r.body, "# TYPE diffusiond_step_seconds histogram"));
    assert_non_null(strstr(r.body, "diffusiond_device_memory_bytes{device=\"0\""));
    su_free(&r);
    su_req(g_port, "GET", "/jobs", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
}

static void test_bad_inputs(void **state) {
    (void)state;
    static const struct {
        const char *method, *path, *body;
        int status;
        const char *code, *field;
    } cases[] = {
        {"POST", "/generate", "{\"prompt\": \"x\",", 400, "invalid_json", NULL},
        {"POST", "/generate", "[1, 2]", 400, "invalid_json", NULL},
        {"POST", "/generate", "", 400, "invalid_json", NULL},
        {"POST", "/generate", "{\"prompt\": 5}", 400, "invalid_type", "prompt"},
        {"POST", "/generate", "{\"width\": \"64\"}", 400, "invalid_type", "width"},
        {"POST", "/generate", "{\"steps\": 2.5}", 400, "invalid_type", "steps"},
        {"POST", "/generate", "{\"seed\": true}", 400, "invalid_type", "seed"},
        {"POST", "/generate", "{\"width\": 100000, \"height\": 64}", 422, "out_of_range", "width"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 9999999999999}", 422, "out_of_range", "height"},
        {"POST", "/generate", "{\"width\": 60, \"height\": 64}", 422, "out_of_range", "width"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"steps\": -3}", 422, "out_of_range", "steps"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"steps\": 1000}", 422, "out_of_range", "steps"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"n\": 50}", 422, "out_of_range", "n"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"cfg_scale\": -1}", 422, "out_of_range", "cfg_scale"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"seed\": -7}", 422, "out_of_range", "seed"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"seed\": 9223372036854775807, \"n\": 2}", 422, "out_of_range", "seed"},
        {"POST", "/jobs", "{\"width\": 64, \"height\": 64, \"seed\": 9223372036854775806, \"n\": 3}", 422, "out_of_range", "seed"},
        {"POST", "/sdapi/v1/txt2img", "{\"width\": 64, \"height\": 64, \"seed\": 9223372036854775807, \"batch_size\": 2}", 422, "out_of_range", "seed"},
        {"POST", "/sdapi/v1/txt2img", "{\"width\": 64, \"height\": 64, \"seed\": 9223372036854775806, \"n_iter\": 2, \"batch_size\": 2}", 422, "out_of_range", "seed"},
        {"POST", "/sdapi/v1/options", "{\"CLIP_stop_at_last_layers\": 4}", 422, "out_of_range", "CLIP_stop_at_last_layers"},
        {"POST", "/sdapi/v1/options", "{\"CLIP_stop_at_last_layers\": 12}", 422, "out_of_range", "CLIP_stop_at_last_layers"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"sampler\": \"warp\"}", 422, "unknown_sampler", "sampler"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"schedule\": \"zigzag\"}", 422, "unknown_schedule", "schedule"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"sampler\": \"ddim\", \"schedule\": \"karras\"}", 422, "unsupported", "sampler"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"rng\": \"dice\"}", 422, "unknown_rng", "rng"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"model\": \"sd-xl-9000\"}", 404, "model_not_found", "model"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"model\": \"../../etc/passwd\"}", 400, "invalid_model_name", "model"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"model\": \"/etc/passwd\"}", 400, "invalid_model_name", "model"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"init_image\": \"@@not base64@@\"}", 400, "invalid_base64", "init_image"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"init_image\": \"aGVsbG8sIG5vdCBhIFBORw==\"}", 422, "invalid_image", "init_image"},
        {"POST", "/generate", "{\"width\": 64, \"height\": 64, \"init_image\": \"data:image/png;base64,aGVsbG8=\"}", 422, "invalid_image", "init_image"},
        {"POST", "/jobs", "{\"width\": 64, \"height\": 64, \"steps\": 0}", 422, "out_of_range", "steps"},
        {"POST", "/sdapi/v1/txt2img", "{\"steps\": \"many\"}", 422, "invalid_type", "steps"},
        {"POST", "/sdapi/v1/txt2img", "{\"width\": 64, \"height\": 64, \"sampler_name\": \"Warp 9\"}", 404, "unknown_sampler", "sampler_name"},
        {"POST", "/sdapi/v1/txt2img", "{\"width\": 64, \"height\": 64, \"override_settings\": {\"sd_model_checkpoint\": \"nope\"}}", 404, "model_not_found", NULL},
        {"POST", "/sdapi/v1/img2img", "{\"width\": 64, \"height\": 64}", 422, "missing_field", "init_images"},
        {"POST", "/sdapi/v1/img2img", "{\"width\": 64, \"height\": 64, \"init_images\": [\"%%%\"]}", 400, "invalid_base64", "init_images"},
        {"POST", "/sdapi/v1/options", "{\"sd_model_checkpoint\": \"../x\"}", 400, "invalid_model_name", "sd_model_checkpoint"},
        {"GET", "/nowhere", NULL, 404, "not_found", NULL},
        {"GET", "/generate", NULL, 405, "method_not_allowed", NULL},
        {"PUT", "/jobs", "{}", 405, "method_not_allowed", NULL},
        {"GET", "/jobs/0123456789abcdef0123456789abcdef", NULL, 404, "job_not_found", NULL},
        {"GET", "/jobs/..%2F..%2Fetc", NULL, 404, "job_not_found", NULL},
        {"DELETE", "/jobs/nope", NULL, 404, "job_not_found", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct su_resp r;
        su_req(g_port, cases[i].method, cases[i].path, NULL, cases[i].body, &r);
        if (r.status != cases[i].status)
            fail_msg("case %zu (%s %s %s): %d %.300s", i, cases[i].method, cases[i].path,
                     cases[i].body ? cases[i].body : "", r.status, r.body);
        su_expect_error(&r, cases[i].status, cases[i].code, cases[i].field);
        su_free(&r);
    }
    /* A1111 errors also carry "detail" */
    struct su_resp r;
    su_req(g_port, "POST", "/sdapi/v1/txt2img", NULL, "{\"cfg_scale\": []}", &r);
    json_t *j = su_json(&r);
    assert_non_null(json_string_value(json_object_get(j, "detail")));
    json_decref(j);
    su_free(&r);

    /* an init image larger than max_image_pixels (16384 here) */
    char *big = su_png_b64(256, 256), *body = malloc(strlen(big) + 128);
    sprintf(body, "{\"width\": 64, \"height\": 64, \"init_image\": \"%s\"}", big);
    su_req(g_port, "POST", "/generate", NULL, body, &r);
    su_expect_error(&r, 413, "image_too_large", "init_image");
    su_free(&r);
    free(big);
    free(body);

    /* a giant body: refused from its Content-Length before it is sent */
    int fd = su_connect(g_port);
    const char *h = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 2000000000\r\n\r\n";
    su_send(fd, h, strlen(h));
    su_read(fd, &r);
    close(fd);
    su_expect_error(&r, 413, "body_too_large", NULL);
    su_free(&r);
    /* ... and a chunked one with no length, counted while it is read */
    fd = su_connect(g_port);
    h = "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    su_send(fd, h, strlen(h));
    static char chunk[65536 + 16];
    int hl = sprintf(chunk, "%x\r\n", 65536);
    memset(chunk + hl, ' ', 65536);
    memcpy(chunk + hl + 65536, "\r\n", 2);
    for (int i = 0; i < 20; i++) su_send(fd, chunk, (size_t)hl + 65536 + 2); /* 1.25 MiB > 1 MiB */
    su_send(fd, "0\r\n\r\n", 5);
    su_read(fd, &r);
    close(fd);
    su_expect_error(&r, 413, "body_too_large", NULL);
    su_free(&r);

    /* the limits' edges are accepted: the last seed 2^63 - 1, all 3 layers of the tiny text encoder */
    su_req(g_port, "POST", "/generate", "Accept: application/json\r\n",
           "{\"prompt\": \"edge\", \"width\": 64, \"height\": 64, \"steps\": 1, \"cfg_scale\": 1, \"n\": 2,"
           " \"seed\": 9223372036854775806}", &r);
    if (r.status != 200) fail_msg("seed 2^63 - 2, n 2: %d %.300s", r.status, r.body);
    j = su_json(&r);
    assert_true(json_integer_value(json_array_get(json_object_get(j, "seeds"), 1)) == INT64_MAX);
    json_decref(j);
    su_free(&r);
    for (int clip = 3; clip >= 1; clip -= 2) {
        char body[64];
        snprintf(body, sizeof body, "{\"CLIP_stop_at_last_layers\": %d}", clip);
        su_req(g_port, "POST", "/sdapi/v1/options", NULL, body, &r);
        assert_int_equal(r.status, 200);
        su_free(&r);
        su_req(g_port, "GET", "/sdapi/v1/options", NULL, NULL, &r);
        j = su_json(&r);
        assert_int_equal(json_integer_value(json_object_get(j, "CLIP_stop_at_last_layers")), clip);
        json_decref(j);
        su_free(&r);
    }

    /* unknown fields are ignored; the daemon is unaffected by all of the above */
    su_req(g_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
}

/* Sends `n` raw bytes on a connection of its own and reads the answer. */
static void raw_req(const void *data, size_t n, struct su_resp *r) {
    int fd = su_connect(g_port);
    assert_true(fd >= 0);
    su_send(fd, data, n);
    su_read(fd, r);
    close(fd);
}

/* What libmicrohttpd would answer with its own HTML page - a malformed
 * request line, a header block too large, a Content-Length that does not
 * parse or overflows, another HTTP version - is the daemon's JSON error;
 * a body of another media type is 415 on the JSON endpoints. The daemon
 * serves on after each. */
static void test_protocol_errors_are_json(void **state) {
    (void)state;
    static const struct {
        const char *head;
        int status;
        const char *code;
    } cases[] = {
        {"GARBAGE\r\n\r\n", 400, "bad_request"},
        {"GET /health\r\n\r\n", 400, "bad_request"},
        {"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"},
        {"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad_request"},
        {"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"},
        {"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", 400, "bad_request"},
        {"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
         "bad_request"},
        {"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413,
         "body_too_large"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct su_resp r;
        raw_req(cases[i].head, strlen(cases[i].head), &r);
        if (r.status != cases[i].status) fail_msg("case %zu: %d %.300s", i, r.status, r.body);
        su_expect_error(&r, cases[i].status, cases[i].code, NULL);
        assert_non_null(strstr(su_header(&r, "Content-Type"), "application/json"));
        su_free(&r);
    }
    /* a header block beyond 32 KiB, in the request line and in a header */
    static char big[48 * 1024];
    for (int k = 0; k < 2; k++) {
        int n = k == 0 ? sprintf(big, "GET /") : sprintf(big, "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ");
        memset(big + n, 'a', 40000);
        n += 40000;
        n += sprintf(big + n, k == 0 ? " HTTP/1.1\r\nHost: x\r\n\r\n" : "\r\n\r\n");
        struct su_resp r;
        raw_req(big, (size_t)n, &r);
        su_expect_error(&r, 431, "headers_too_large", NULL);
        su_free(&r);
    }
    /* half a request head, then the client stops sending: closed without an
     * answer (there is no request to answer), not held until the head timeout */
    int fd = su_connect(g_port);
    assert_true(fd >= 0);
    su_send(fd, "GET /hea", 8);
    shutdown(fd, SHUT_WR);
    char c;
    assert_int_equal(recv(fd, &c, 1, 0), 0);
    close(fd);
    /* not JSON: 415 naming what the endpoint takes; JSON with a charset,
     * and no Content-Type at all, are fine (a 422 from the values) */
    static const char *posts[] = {"/generate", "/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options"};
    for (size_t i = 0; i < sizeof posts / sizeof posts[0]; i++) {
        char head[512];
        const char *types[] = {"text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8",
                               NULL};
        for (int t = 0; t < 4; t++) {
            int n = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s%s"
                             "Content-Length: 14\r\n\r\n{\"steps\": -1 }", posts[i], types[t] ? "Content-Type: " : "",
                             types[t] ? types[t] : "", types[t] ? "\r\n" : "");
            struct su_resp r;
            raw_req(head, (size_t)n, &r);
            if (t < 2) {
                su_expect_error(&r, 415, "unsupported_media_type", NULL);
                json_t *j = su_json(&r);
                assert_non_null(strstr(su_str(json_object_get(j, "error"), "message"), "application/json"));
                json_decref(j);
            } else if (r.status == 415) {
                fail_msg("%s with %s: %.300s", posts[i], types[t] ? types[t] : "no Content-Type", r.body);
            }
            su_free(&r);
        }
    }
    struct su_resp r;
    su_req(g_port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
}

/* The pipeline_sd15_tiny case over HTTP: same prompt, settings and seed give
 * diffusers' image within one 8-bit level. */
static void test_generate_reproduces_oracle(void **state) {
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/manifest.json", fx.dir);
    json_error_t je;
    json_t *man = json_load_file(path, JSON_ALLOW_NUL, &je), *c = NULL, *v;
    assert_non_null(man);
    size_t i;
    json_array_foreach(json_object_get(man, "cases"), i, v) {
        if (strcmp(su_str(v, "name"), "pipeline_sd15_tiny") == 0) c = v;
    }
    assert_non_null(c);
    json_t *shape = json_object_get(json_object_get(json_object_get(c, "outputs"), "out.image"), "shape");
    int h = (int)json_integer_value(json_array_get(shape, 1)), w = (int)json_integer_value(json_array_get(shape, 2));
    json_int_t seed = json_integer_value(json_object_get(c, "latents_seed"));
    int steps = (int)json_integer_value(json_object_get(c, "num_inference_steps"));
    json_t *req = json_pack("{s:O, s:O, s:O, s:i, s:I, s:s, s:i, s:i, s:s}", "prompt", json_object_get(c, "prompt"),
                            "negative_prompt", json_object_get(c, "negative_prompt"), "cfg_scale",
                            json_object_get(c, "guidance_scale"), "steps", steps, "seed", seed, "sampler", "euler",
                            "width", w, "height", h, "rng", "torch");
    char *body = json_dumps(req, 0);
    json_decref(req);

    struct su_resp r;
    su_req(g_port, "POST", "/generate", NULL, body, &r);
    free(body);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    assert_string_equal(su_header(&r, "Content-Type"), "image/png");
    char want_seed[32];
    snprintf(want_seed, sizeof want_seed, "%lld", (long long)seed);
    assert_string_equal(su_header(&r, "X-Seed"), want_seed);
    assert_int_equal(strlen(su_header(&r, "X-Job-Id")), 32);
    float *img = NULL;
    int iw, ih;
    char *text = NULL;
    assert_int_equal(img_decode_png((uint8_t *)r.body, r.len, 1 << 20, &img, &iw, &ih, &text), DF_OK);
    assert_int_equal(iw, w);
    assert_int_equal(ih, h);
    assert_non_null(text);
    assert_non_null(strstr(text, "Sampler: Euler"));
    char want[64];
    snprintf(want, sizeof want, "Seed: %lld", (long long)seed);
    assert_non_null(strstr(text, want));

    snprintf(path, sizeof path, "%s/pipeline_sd15_tiny.safetensors", fx.dir);
    struct st_file *f;
    assert_int_equal(st_open(path, &f), DF_OK);
    const struct st_tensor *t = st_find(f, "out.image");
    assert_non_null(t);
    assert_int_equal(t->numel, (int64_t)w * h * 3);
    float *ref = malloc((size_t)t->numel * sizeof *ref);
    assert_int_equal(st_to_f32(t, ref), DF_OK);
    int worst = 0;
    for (int64_t k = 0; k < t->numel; k++) {
        int got = (int)lrintf(img[k] * 255.0f), exp = (int)rint((double)ref[k] * 255.0); /* numpy: half to even */
        if (abs(got - exp) > worst) worst = abs(got - exp);
    }
    if (worst > 1) fail_msg("pixels differ from diffusers' by up to %d/255", worst);
    free(ref);
    st_close(f);
    free(img);
    free(text);
    su_free(&r);
    json_decref(man);
}

static void test_generate_json_batch(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g_port, "POST", "/generate", "Accept: application/json\r\n",
         "{\"prompt\": \"a red cube\", \"width\": 64, \"height\": 64, \"steps\": 1, \"cfg_scale\": 1, \"n\": 2,"
         " \"seed\": 4000000000, \"sampler\": \"Euler a\", \"unknown_field\": {\"ignored\": true}}",
         &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r), *imgs = json_object_get(j, "images");
    assert_string_equal(su_str(j, "state"), "done");
    assert_int_equal(json_array_size(imgs), 2);
    for (size_t k = 0; k < 2; k++) {
        json_t *im = json_array_get(imgs, k);
        assert_int_equal(json_integer_value(json_object_get(im, "seed")), 4000000000LL + (long long)k);
        size_t n;
        uint8_t *png = su_b64dec(su_str(im, "png_base64"), &n);
        float *px;
        int w, h;
        char *text;
        assert_int_equal(img_decode_png(png, n, 1 << 20, &px, &w, &h, &text), DF_OK);
        assert_int_equal(w, 64);
        char want[64];
        snprintf(want, sizeof want, "Seed: %lld", 4000000000LL + (long long)k);
        assert_non_null(strstr(text, want));
        assert_non_null(strstr(text, "Sampler: Euler a"));
        free(png);
        free(px);
        free(text);
    }
    json_decref(j);
    su_free(&r);
}

/* POST /jobs, GET /jobs/{id}, SSE events, GET images, DELETE. The job is
 * held before its first step until its event stream is open, so the stream
 * sees every step. */
static void test_jobs_async_and_events(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g_port, "POST", "/jobs", NULL,
           "{\"prompt\": \"" HU_HOLD " boat\", \"width\": 64, \"height\": 64, \"steps\": 3, \"cfg_scale\": 1,"
           " \"seed\": 11}",
           &r);
    if (r.status != 202) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r);
    char id[40], path[128];
    snprintf(id, sizeof id, "%s", su_str(j, "id"));
    snprintf(path, sizeof path, "/jobs/%s", id);
    assert_string_equal(su_header(&r, "Location"), path);
    const char *st = su_str(j, "state");
    assert_true(strcmp(st, "queued") == 0 || strcmp(st, "running") == 0);
    snprintf(path, sizeof path, "/jobs/%s/events", id);
    assert_string_equal(su_str(json_object_get(j, "urls"), "events"), path);
    json_decref(j);
    su_free(&r);

    hu_wait_held(1, SU_PATIENCE_S);
    int sse = su_connect(g_port);
    assert_true(sse >= 0);
    su_send_request(sse, "GET", path, NULL, NULL, 0);
    peek_until(sse, "event: "); /* the job as it is now: the stream is open */
    hu_release();
    su_read(sse, &r); /* the stream ends after the final event */
    close(sse);
    assert_int_equal(r.status, 200);
    assert_string_equal(su_header(&r, "Content-Type"), "text/event-stream");
    int last_step = 0, progress = 0;
    bool done = false;
    for (char *ev = r.body; ev && *ev;) {
        char *next = strstr(ev, "\n\n");
        if (next) *next = 0;
        char *name = strstr(ev, "event: "), *data = strstr(ev, "data: ");
        if (name && data) {
            name += 7;
            json_t *d = json_loads(data + 6, 0, NULL);
            assert_non_null(d);
            if (strncmp(name, "progress", 8) == 0 && strcmp(su_str(d, "stage"), "denoising") == 0) {
                int step = (int)json_integer_value(json_object_get(d, "step"));
                assert_true(step >= last_step);
                if (step > last_step) progress++;
                last_step = step;
                assert_int_equal(json_integer_value(json_object_get(d, "steps")), 3);
            }
            if (strncmp(name, "done", 4) == 0) {
                done = true;
                assert_string_equal(su_str(d, "state"), "done");
            }
            json_decref(d);
        }
        ev = next ? next + 2 : NULL;
    }
    assert_true(done);
    assert_int_equal(last_step, 3);
    assert_int_equal(progress, 3); /* one event per step */
    su_free(&r);

    snprintf(path, sizeof path, "/jobs/%s", id);
    su_req(g_port, "GET", path, NULL, NULL, &r);
    j = su_json(&r);
    assert_string_equal(su_str(j, "state"), "done");
    json_t *im = json_array_get(json_object_get(j, "images"), 0);
    assert_int_equal(json_integer_value(json_object_get(im, "seed")), 11);
    assert_true(json_real_value(json_object_get(json_object_get(j, "timings"), "run_seconds")) > 0);
    char img_url[160];
    snprintf(img_url, sizeof img_url, "%s", su_str(im, "url"));
    json_decref(j);
    su_free(&r);

    su_req(g_port, "GET", img_url, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(su_header(&r, "Content-Type"), "image/png");
    assert_int_equal(memcmp(r.body, "\x89PNG", 4), 0);
    su_free(&r);
    snprintf(img_url, sizeof img_url, "/jobs/%s/images/1", id);
    su_req(g_port, "GET", img_url, NULL, NULL, &r);
    su_expect_error(&r, 404, "image_not_found", NULL);
    su_free(&r);

    su_req(g_port, "DELETE", path, NULL, NULL, &r); /* a finished job is forgotten */
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(g_port, "GET", path, NULL, NULL, &r);
    su_expect_error(&r, 404, "job_not_found", NULL);
    su_free(&r);
}

static void test_sdapi(void **state) {
    (void)state;
    struct su_resp r;
    su_req(g_port, "POST", "/sdapi/v1/txt2img", NULL,
         "{\"prompt\": \"a castle\", \"negative_prompt\": \"fog\", \"width\": 64, \"height\": 64, \"steps\": 1,"
         " \"cfg_scale\": 1, \"seed\": 77, \"sampler_name\": \"DPM++ 2M Karras\", \"styles\": [], \"n_iter\": 1}",
         &r);
    if (r.status != 200) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r);
    json_t *imgs = json_object_get(j, "images"), *params = json_object_get(j, "parameters");
    assert_int_equal(json_array_size(imgs), 1);
    assert_int_equal(json_integer_value(json_object_get(params, "steps")), 1);
    assert_true(json_is_null(json_object_get(params, "scheduler")));
    assert_int_equal(json_integer_value(json_object_get(params, "batch_size")), 1); /* a default, echoed */
    json_t *info = json_loads(su_str(j, "info"), 0, NULL);                           /* a JSON string */
    assert_non_null(info);
    assert_int_equal(json_integer_value(json_object_get(info, "seed")), 77);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(info, "all_seeds"), 0)), 77);
    assert_string_equal(su_str(info, "sampler_name"), "DPM++ 2M");
    const char *infotext = json_string_value(json_array_get(json_object_get(info, "infotexts"), 0));
    assert_non_null(strstr(infotext, "Schedule type: Karras"));
    assert_non_null(strstr(infotext, "Negative prompt: fog"));
    size_t n;
    uint8_t *png = su_b64dec(json_string_value(json_array_get(imgs, 0)), &n);
    float *px;
    int w, h;
    char *text;
    assert_int_equal(img_decode_png(png, n, 1 << 20, &px, &w, &h, &text), DF_OK);
    assert_string_equal(text, infotext); /* the PNG carries the infotext */
    free(px);
    free(text);
    char *init = http_base64_encode(png, n);
    free(png);
    json_decref(info);
    json_decref(j);
    su_free(&r);

    /* img2img from that image as a data: URL, and from a 48x48 one (resized) */
    const char *inits[2] = {init, NULL};
    char *small = su_png_b64(48, 48);
    inits[1] = small;
    for (int k = 0; k < 2; k++) {
        char *body = malloc(strlen(inits[k]) + 512);
        sprintf(body, "{\"prompt\": \"a castle\", \"init_images\": [\"%s%s\"], \"denoising_strength\": 0.5,"
                      " \"width\": 64,"
                      " \"height\": 64, \"steps\": 2, \"cfg_scale\": 1, \"seed\": 5, \"sampler_name\": \"Euler\"}",
                k == 0 ? "data:image/png;base64," : "", inits[k]);
        su_req(g_port, "POST", "/sdapi/v1/img2img", NULL, body, &r);
        free(body);
        if (r.status != 200) fail_msg("img2img %d: %d %.300s", k, r.status, r.body);
        j = su_json(&r);
        assert_int_equal(json_array_size(json_object_get(j, "images")), 1);
        assert_true(json_is_null(json_object_get(json_object_get(j, "parameters"), "init_images")));
        info = json_loads(su_str(j, "info"), 0, NULL);
        assert_true(fabs(json_real_value(json_object_get(info, "denoising_strength")) - 0.5) < 1e-6);
        infotext = json_string_value(json_array_get(json_object_get(info, "infotexts"), 0));
        assert_non_null(strstr(infotext, "Denoising strength: 0.5"));
        json_decref(info);
        json_decref(j);
        su_free(&r);
    }
    free(init);
    free(small);

    static const char *lists[] = {"/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/sd-models"};
    for (int k = 0; k < 3; k++) {
        su_req(g_port, "GET", lists[k], NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        j = su_json(&r);
        assert_true(json_array_size(j) >= 1);
        if (k == 0) {
            bool euler_a = false;
            size_t i;
            json_t *v;
            json_array_foreach(j, i, v) euler_a |= strcmp(su_str(v, "name"), "Euler a") == 0;
            assert_true(euler_a);
        }
        json_decref(j);
        su_free(&r);
    }
    su_req(g_port, "GET", "/sdapi/v1/options", NULL, NULL, &r);
    j = su_json(&r);
    char title[300];
    snprintf(title, sizeof title, "%s", su_str(j, "sd_model_checkpoint"));
    assert_non_null(strstr(title, "unet_sd15_tiny"));
    json_decref(j);
    su_free(&r);
    char body[400];
    snprintf(body, sizeof body,
             "{\"sd_model_checkpoint\": \"%s\", \"CLIP_stop_at_last_layers\": 1, \"some_ui_option\": 3}",
             title);
    su_req(g_port, "POST", "/sdapi/v1/options", NULL, body, &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_req(g_port, "POST", "/sdapi/v1/options", NULL, "{\"sd_model_checkpoint\": \"missing.ckpt\"}", &r);
    su_expect_error(&r, 404, "model_not_found", NULL);
    su_free(&r);
    su_req(g_port, "GET", "/sdapi/v1/progress", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    j = su_json(&r);
    assert_non_null(json_object_get(json_object_get(j, "state"), "sampling_steps"));
    json_decref(j);
    su_free(&r);
}

/* queue_max is 2: one running (held) + two queued fill it. */
static void test_queue_full_and_cancel(void **state) {
    (void)state;
    struct su_resp r;
    char a[40], b[40], c[40], path[128];
    su_req(g_port, "POST", "/jobs", NULL, SU_HELD_JOB, &r);
    assert_int_equal(r.status, 202);
    json_t *j = su_json(&r);
    snprintf(a, sizeof a, "%s", su_str(j, "id"));
    json_decref(j);
    su_free(&r);
    hu_wait_held(1, SU_PATIENCE_S);
    char *ids[2] = {b, c};
    for (int k = 0; k < 2; k++) {
        su_req(g_port, "POST", "/jobs", NULL, SU_SHORT_JOB, &r);
        assert_int_equal(r.status, 202);
        j = su_json(&r);
        assert_string_equal(su_str(j, "state"), "queued");
        assert_int_equal(json_integer_value(json_object_get(j, "position")), k + 1);
        snprintf(ids[k], 40, "%s", su_str(j, "id"));
        json_decref(j);
        su_free(&r);
    }
    su_req(g_port, "POST", "/jobs", NULL, SU_SHORT_JOB, &r);
    su_expect_error(&r, 429, "queue_full", NULL);
    assert_true(atoi(su_header(&r, "Retry-After")) >= 1);
    su_free(&r);
    su_req(g_port, "POST", "/generate", NULL, SU_SHORT_JOB, &r);
    su_expect_error(&r, 429, "queue_full", NULL);
    su_free(&r);

    /* C's event stream sees it move up the queue, start and finish */
    char events[128];
    snprintf(events, sizeof events, "/jobs/%s/events", c);
    int sse = su_connect(g_port);
    su_send_request(sse, "GET", events, NULL, NULL, 0);
    peek_until(sse, "\"position\":2"); /* its first event; the stream is read whole below */

    /* cancel the queued B: at once */
    snprintf(path, sizeof path, "/jobs/%s", b);
    su_req(g_port, "DELETE", path, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    j = su_json(&r);
    assert_string_equal(su_str(j, "state"), "cancelled");
    assert_string_equal(su_str(json_object_get(j, "error"), "code"), "cancelled");
    json_decref(j);
    su_free(&r);
    snprintf(path, sizeof path, "/jobs/%s", c);
    su_req(g_port, "GET", path, NULL, NULL, &r);
    j = su_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "position")), 1); /* moved up */
    json_decref(j);
    su_free(&r);

    /* cancel the running A: at its next step */
    snprintf(path, sizeof path, "/jobs/%s", a);
    su_req(g_port, "DELETE", path, NULL, NULL, &r);
    assert_int_equal(r.status, 202); /* accepted: it stops at its next step */
    su_free(&r);
    j = su_wait_final(g_port, a, NULL, SU_PATIENCE_S);
    assert_string_equal(su_str(j, "state"), "cancelled");
    assert_string_equal(su_str(json_object_get(j, "error"), "code"), "cancelled");
    assert_true(json_integer_value(json_object_get(j, "step")) < 4);
    json_decref(j);
    su_req(g_port, "GET", "/jobs/x", NULL, NULL, &r); /* still serving */
    assert_int_equal(r.status, 404);
    su_free(&r);

    /* C runs (or ran) now */
    j = su_wait_final(g_port, c, NULL, SU_PATIENCE_S);
    assert_string_equal(su_str(j, "state"), "done");
    json_decref(j);
    su_read(sse, &r);
    close(sse);
    assert_int_equal(r.status, 200);
    const char *p2 = strstr(r.body, "\"position\":2"), *p1 = strstr(r.body, "\"position\":1"),
               *done = strstr(r.body, "event: done");
    if (!p2 || !p1 || !done || p1 < p2 || done < p1) fail_msg("events of C: %.600s", r.body);
    su_free(&r);
    snprintf(path, sizeof path, "/jobs/%s/images/0", b);
    su_req(g_port, "GET", path, NULL, NULL, &r);
    su_expect_error(&r, 409, "job_not_done", NULL);
    su_free(&r);
}

/* A synchronous client that goes away cancels its (held, running) job. */
static void test_disconnect_cancels(void **state) {
    (void)state;
    int fd = su_connect(g_port);
    assert_true(fd >= 0);
    su_send_request(fd, "POST", "/generate", NULL, SU_HELD_JOB, strlen(SU_HELD_JOB));
    hu_wait_held(1, SU_PATIENCE_S);
    char id[40];
    su_wait_jobs(g_port, NULL, "running", 1, id, SU_PATIENCE_S);
    close(fd);
    json_t *j = su_wait_final(g_port, id, NULL, SU_PATIENCE_S);
    assert_string_equal(su_str(j, "state"), "cancelled");
    assert_string_equal(su_str(json_object_get(j, "error"), "code"), "client_disconnected");
    assert_true(json_integer_value(json_object_get(j, "step")) < 4);
    json_decref(j);
}

/* A1111's interrupt stops the running txt2img (held, so it is running). */
static void test_sdapi_interrupt(void **state) {
    (void)state;
    struct su_call c = {g_port, "POST", "/sdapi/v1/txt2img", NULL, SU_HELD_JOB, {0}, 0};
    su_call_start(&c);
    hu_wait_held(1, SU_PATIENCE_S);
    struct su_resp r;
    su_req(g_port, "GET", "/sdapi/v1/progress", NULL, NULL, &r); /* it is sampling */
    json_t *pj = su_json(&r), *st = json_object_get(pj, "state");
    assert_int_equal(json_integer_value(json_object_get(st, "sampling_steps")), 4);
    assert_true(*su_str(st, "job"));
    json_decref(pj);
    su_free(&r);
    su_req(g_port, "POST", "/sdapi/v1/interrupt", NULL, "", &r);
    assert_int_equal(r.status, 200);
    su_free(&r);
    su_call_join(&c);
    if (c.r.status != 200) fail_msg("%d %.300s", c.r.status, c.r.body);
    json_t *j = su_json(&c.r); /* A1111: an interrupted call answers with what it has */
    assert_int_equal(json_array_size(json_object_get(j, "images")), 0);
    json_decref(j);
    su_free(&c.r);
}

/* 8 clients x 25 requests with no pause: generations (sync, async, A1111)
 * mixed with status reads. Every request is answered, refusals are 429 with
 * Retry-After, accepted generations finish, the counters agree. Twice:
 * first with the queue full by construction (a held job on the worker, two
 * queued), so every generation is refused; then with the queue open, where
 * at least one is accepted (the queue starts empty) and how many depends on
 * the machine. A client stops asking for more after two were accepted,
 * which bounds the suite's time. */
#define CLIENTS 8
#define REQUESTS 25
struct client {
    int index, ok, refused, reads;
    bool queue_full;  /* every generation must be refused */
    char failure[512];
    pthread_t t;
};

static void *client_main(void *arg) {
    struct client *cl = arg;
    static const char *reads[] = {"/sdapi/v1/progress", "/jobs", "/health"};
    for (int k = 0; k < REQUESTS; k++) {
        int kind = (cl->index + k) % 6;
        if (kind < 3 && cl->ok >= 2) kind += 3;
        struct su_resp r;
        if (kind >= 3) {
            su_req(g_port, "GET", reads[kind - 3], NULL, NULL, &r);
            if (r.status != 200) snprintf(cl->failure, sizeof cl->failure, "GET %s: %d", reads[kind - 3], r.status);
            cl->reads++;
            su_free(&r);
            continue;
        }
        const char *path = kind == 0 ? "/generate" : kind == 1 ? "/jobs" : "/sdapi/v1/txt2img";
        su_req(g_port, "POST", path, NULL, SU_SHORT_JOB, &r);
        if (r.status == 429) {
            if (!su_header(&r, "Retry-After")) snprintf(cl->failure, sizeof cl->failure, "429 without Retry-After");
            cl->refused++;
        } else if (cl->queue_full) {
            snprintf(cl->failure, sizeof cl->failure, "%s with the queue full: %d %.300s", path, r.status, r.body);
        } else if (kind == 1 && r.status == 202) {
            json_t *j = json_loadb(r.body, r.len, 0, NULL);
            json_t *f = su_wait_final(g_port, su_str(j, "id"), NULL, SU_PATIENCE_S);
            if (strcmp(su_str(f, "state"), "done") != 0) snprintf(cl->failure, sizeof cl->failure, "async job %s",
                                                                su_str(f, "state"));
            else cl->ok++;
            json_decref(f);
            json_decref(j);
        } else if (r.status == 200) {
            cl->ok++;
        } else {
            snprintf(cl->failure, sizeof cl->failure, "%s: %d %.300s", path, r.status, r.body);
        }
        su_free(&r);
    }
    return NULL;
}

/* All clients at once; sums their counts into `sum`. */
static void run_clients(bool queue_full, struct client *sum) {
    struct client cl[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        cl[i] = (struct client){.index = i, .queue_full = queue_full};
        assert_int_equal(pthread_create(&cl[i].t, NULL, client_main, &cl[i]), 0);
    }
    *sum = (struct client){0};
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(cl[i].t, NULL);
        if (cl[i].failure[0]) fail_msg("client %d: %s", i, cl[i].failure);
        sum->ok += cl[i].ok;
        sum->refused += cl[i].refused;
        sum->reads += cl[i].reads;
    }
    assert_int_equal(sum->ok + sum->refused + sum->reads, CLIENTS * REQUESTS);
}

static void submit_async(const char *body, char *id) {
    struct su_resp r;
    su_req(g_port, "POST", "/jobs", NULL, body, &r);
    if (r.status != 202) fail_msg("%d %.300s", r.status, r.body);
    json_t *j = su_json(&r);
    snprintf(id, 40, "%s", su_str(j, "id"));
    json_decref(j);
    su_free(&r);
}

static void test_concurrent_clients(void **state) {
    (void)state;
    const char *rejected = "diffusiond_jobs_rejected_total{reason=\"queue_full\"}",
               *done = "diffusiond_jobs_finished_total{state=\"done\"}";
    double rejected0 = su_metric(g_port, NULL, rejected), done0 = su_metric(g_port, NULL, done);

    char ids[3][40];
    submit_async(SU_HELD_JOB, ids[0]);
    hu_wait_held(1, SU_PATIENCE_S);
    submit_async(SU_SHORT_JOB, ids[1]);
    submit_async(SU_SHORT_JOB, ids[2]);
    struct client full, open;
    run_clients(true, &full);
    assert_int_equal(full.ok, 0);
    int generations = 0; /* what the clients asked for: kinds 0-2 of (index + k) % 6 */
    for (int i = 0; i < CLIENTS; i++)
        for (int k = 0; k < REQUESTS; k++) generations += (i + k) % 6 < 3;
    assert_int_equal(full.refused, generations);
    hu_release();
    for (int k = 0; k < 3; k++) {
        json_t *j = su_wait_final(g_port, ids[k], NULL, SU_PATIENCE_S);
        assert_string_equal(su_str(j, "state"), "done");
        json_decref(j);
    }

    run_clients(false, &open);
    assert_true(open.ok >= 1);
    assert_true(su_wait_idle(g_port, NULL, SU_PATIENCE_S));
    struct su_resp r;
    su_req(g_port, "GET", "/metrics", NULL, NULL, &r);
    assert_non_null(strstr(r.body, "diffusiond_vulkan_validation_messages_total{device=\"0\"} 0\n"));
    su_free(&r);
    assert_int_equal((int)(su_metric(g_port, NULL, rejected) - rejected0), full.refused + open.refused);
    assert_int_equal((int)(su_metric(g_port, NULL, done) - done0), 3 + open.ok);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    su_filter(argc, argv);
    if (su_model_init(&fx) != 0) return 1;
    const struct CMUnitTest tests[] = {
        TEST(test_health_ready_models),
        TEST(test_bad_inputs),
        TEST(test_protocol_errors_are_json),
        TEST(test_generate_reproduces_oracle),
        TEST(test_generate_json_batch),
        TEST(test_jobs_async_and_events),
        TEST(test_sdapi),
        TEST(test_queue_full_and_cancel),
        TEST(test_disconnect_cancels),
        TEST(test_sdapi_interrupt),
        TEST(test_concurrent_clients),
    };
    int failed = cmocka_run_group_tests_name("daemon", tests, group1_setup, group1_teardown);
    su_model_cleanup(&fx);
    return failed;
}
