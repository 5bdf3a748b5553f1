/* openai: see openai.h. */
#include "openai.h"

#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "log.h"
#include "multipart.h"

#define OA_STEPS 20          /* the native API's defaults */
#define OA_CFG_SCALE 7.0
#define OA_STRENGTH 0.75     /* edits: A1111's and diffusers' img2img default */

/* OpenAI's own model names: clients send them unchanged, so they mean the
 * default model (a loaded model of that name wins). */
static const char *const openai_model_prefixes[] = {"dall-e-", "gpt-image-"};

/* A model's natural size, for requests without `size` (OpenAI's default,
 * 1024x1024, would be a poor and slow image on SD1.x); 512 for the rest.
 * SD2.x's 768 models are its v-prediction ones (SD2 base is 512). */
static const struct {
    const char *family;
    bool v_only;
    int size;
} native_sizes[] = {{"sd2", true, 768}, {"sdxl", false, 1024}};

/* The request fields, typed: JSON bodies are read by type; form fields
 * (text) are turned into this type first. */
enum oa_type { OA_STRING, OA_INT, OA_NUMBER };

struct oa_fields {
    const char *prompt, *negative_prompt, *model, *size, *response_format, *user, *quality, *style, *sampler,
        *schedule;
    long long n, steps, seed;
    double cfg_scale, strength;
};

static const struct {
    const char *name;
    enum oa_type type;
    size_t offset;
} fields[] = {
    {"prompt", OA_STRING, offsetof(struct oa_fields, prompt)},
    {"negative_prompt", OA_STRING, offsetof(struct oa_fields, negative_prompt)},
    {"model", OA_STRING, offsetof(struct oa_fields, model)},
    {"size", OA_STRING, offsetof(struct oa_fields, size)},
    {"response_format", OA_STRING, offsetof(struct oa_fields, response_format)},
    {"user", OA_STRING, offsetof(struct oa_fields, user)},
    {"quality", OA_STRING, offsetof(struct oa_fields, quality)},  /* accepted, ignored */
    {"style", OA_STRING, offsetof(struct oa_fields, style)},      /* accepted, ignored */
    {"sampler", OA_STRING, offsetof(struct oa_fields, sampler)},
    {"schedule", OA_STRING, offsetof(struct oa_fields, schedule)},
    {"n", OA_INT, offsetof(struct oa_fields, n)},
    {"steps", OA_INT, offsetof(struct oa_fields, steps)},
    {"seed", OA_INT, offsetof(struct oa_fields, seed)},
    {"cfg_scale", OA_NUMBER, offsetof(struct oa_fields, cfg_scale)},
    {"strength", OA_NUMBER, offsetof(struct oa_fields, strength)},
};

enum oa_format { OA_B64_JSON, OA_URL };

/* ---- errors ------------------------------------------------------------------ */

json_t *openai_error_body(int *status, const char *code, const char *field, const char *message) {
    if (*status == 422) *status = 400; /* OpenAI refuses a value with 400 */
    const char *type = *status == 429 ? "rate_limit_error" : *status >= 500 ? "server_error" : "invalid_request_error";
    return json_pack("{s:{s:s, s:s, s:s?, s:s}}", "error", "message", message, "type", type, "param", field, "code",
                     code);
}

/* ---- request -> job_params ------------------------------------------------------ */

/* A model name: a loaded model, else one of OpenAI's (the default model). */
static df_status lookup_model(const struct api_ctx *app, const char *name, int *index, struct api_error *e) {
    if (api_model_lookup(app, name, "model", index, e) == DF_OK) return DF_OK;
    if (e->status != 404) return DF_EINVAL;
    for (size_t i = 0; i < sizeof openai_model_prefixes / sizeof openai_model_prefixes[0]; i++)
        if (strncmp(name, openai_model_prefixes[i], strlen(openai_model_prefixes[i])) == 0) {
            *index = 0;
            return DF_OK;
        }
    return api_fail(e, 404, "model_not_found", "model", "no model \"%.100s\" is loaded (GET /v1/models lists them)",
                    name);
}

/* w x h scaled to fit the limits (keeping its aspect), each side rounded to
 * the model's alignment. */
static void fit_size(const struct api_ctx *app, int align, double w, double h, int *ow, int *oh) {
    double s = fmin(1.0, fmin(app->cfg->max_width / w, app->cfg->max_height / h));
    int iw = (int)lround(w * s / align) * align, ih = (int)lround(h * s / align) * align;
    *ow = iw < align ? align : iw > app->cfg->max_width ? app->cfg->max_width / align * align : iw;
    *oh = ih < align ? align : ih > app->cfg->max_height ? app->cfg->max_height / align * align : ih;
}

/* "WxH" (OpenAI's "1024x1024", "1792x1024", ...) or "auto" (leaves *w, *h). */
static df_status parse_size(const struct api_ctx *app, int align, const char *s, int *w, int *h,
                            struct api_error *e) {
    if (strcmp(s, "auto") == 0) return DF_OK;
    char *x = NULL, *end = NULL;
    long a = isdigit((unsigned char)s[0]) ? strtol(s, &x, 10) : -1;
    long b = a >= 0 && *x == 'x' && isdigit((unsigned char)x[1]) ? strtol(x + 1, &end, 10) : -1;
    if (b < 0 || *end)
        return api_fail(e, 400, "invalid_value", "size", "size \"%.40s\": use WIDTHxHEIGHT (e.g. 512x512) or auto", s);
    const struct config *c = app->cfg;
    if (a < align || a > c->max_width || a % align || b < align || b > c->max_height || b % align)
        return api_fail(e, 400, "out_of_range", "size",
                        "size %.40s: width and height must be multiples of %d, up to %dx%d for this model", s, align,
                        c->max_width, c->max_height);
    *w = (int)a;
    *h = (int)b;
    return DF_OK;
}

/* A PNG's size from its IHDR chunk (bytes 16..23), to default an edit's
 * size to its image's; false when these bytes are no PNG header (the
 * decoder then says what is wrong). */
static bool png_size(const uint8_t *p, size_t len, double *w, double *h) {
    if (len < 24 || memcmp(p, "\x89PNG\r\n\x1a\n", 8) != 0 || memcmp(p + 12, "IHDR", 4) != 0) return false;
    uint32_t pw = (uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 | (uint32_t)p[18] << 8 | p[19];
    uint32_t ph = (uint32_t)p[20] << 24 | (uint32_t)p[21] << 16 | (uint32_t)p[22] << 8 | p[23];
    if (pw == 0 || ph == 0) return false;
    *w = pw;
    *h = ph;
    return true;
}

static df_status read_fields(const json_t *o, struct oa_fields *f, struct api_error *e) {
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        void *at = (char *)f + fields[i].offset;
        df_status st = fields[i].type == OA_STRING ? api_string(o, fields[i].name, at, e)
                     : fields[i].type == OA_INT    ? api_int(o, fields[i].name, at, e)
                                                   : api_number(o, fields[i].name, at, e);
        if (st != DF_OK) return st;
    }
    return DF_OK;
}

/* A generation (image == NULL) or an edit of image's PNG bytes into *p;
 * *format and *user (NULL: none; points into o) for the answer and the log. */
static df_status parse_request(struct api_ctx *app, const json_t *o, const struct multipart_part *image,
                               struct job_params *p, enum oa_format *format, const char **user,
                               struct api_error *e) {
    struct pipe_request *r = &p->req;
    memset(p, 0, sizeof *p);
    struct oa_fields f = {.response_format = "b64_json", .sampler = "euler", .n = 1, .steps = OA_STEPS, .seed = -1,
                          .cfg_scale = OA_CFG_SCALE, .strength = OA_STRENGTH};
    if (read_fields(o, &f, e) != DF_OK) return DF_EINVAL;
    if (!f.prompt) return api_fail(e, 400, "missing_field", "prompt", "prompt is required");
    if (strcmp(f.response_format, "b64_json") == 0) *format = OA_B64_JSON;
    else if (strcmp(f.response_format, "url") == 0) *format = OA_URL;
    else return api_fail(e, 400, "invalid_value", "response_format",
                         "response_format \"%.40s\": use b64_json or url", f.response_format);
    *user = f.user;
    p->origin = JOB_ORIGIN_NATIVE;
    if (f.model && lookup_model(app, f.model, &p->model, e) != DF_OK) return DF_EINVAL;
    const struct model *m = app->models[p->model].m;
    int align = m->family->size_align(m), native = 512;
    for (size_t i = 0; i < sizeof native_sizes / sizeof native_sizes[0]; i++)
        if (strcmp(m->family->name, native_sizes[i].family) == 0 &&
            (!native_sizes[i].v_only || m->scheduler.prediction_type == SMP_PRED_V))
            native = native_sizes[i].size;
    double iw = native, ih = native;
    if (image) png_size(image->data, image->len, &iw, &ih); /* an edit keeps its image's size */
    fit_size(app, align, iw, ih, &r->width, &r->height);
    if (f.size && parse_size(app, align, f.size, &r->width, &r->height, e) != DF_OK) return DF_EINVAL;
    if (api_sampler(f.sampler, f.schedule, "sampler", "schedule", &r->sampler, &r->schedule, e) != DF_OK)
        return DF_EINVAL;
#define CLAMP(v) ((v) < -1000000 ? -1000000 : (v) > 1000000 ? 1000000 : (int)(v))
    r->batch = CLAMP(f.n);
    r->steps = CLAMP(f.steps);
#undef CLAMP
    r->seed = f.seed;
    r->cfg_scale = (float)f.cfg_scale;
    r->strength = (float)f.strength;
    r->clip_skip = 1;
    r->rng = RNG_TORCH_CPU;
    if (api_check_params(app, p, image != NULL, e) != DF_OK) {
        if (e->field && (strcmp(e->field, "width") == 0 || strcmp(e->field, "height") == 0)) e->field = "size";
        return DF_EINVAL;
    }
    r->prompt = strdup(f.prompt);
    r->negative_prompt = f.negative_prompt ? strdup(f.negative_prompt) : NULL;
    if (!r->prompt || (f.negative_prompt && !r->negative_prompt))
        return api_fail(e, 500, "out_of_memory", NULL, "out of memory");
    /* decoded here, on the HTTP thread, as the native and A1111 APIs do:
     * a bad image is a 400 before anything is queued, and max_image_pixels
     * bounds the work */
    if (image && api_init_png(app, image->data, image->len, r->width, r->height, "image", &r->init_image, e) != DF_OK)
        return DF_EINVAL;
    return DF_OK;
}

/* ---- answers ---------------------------------------------------------------- */

/* "http://host:port" from the Host header (what the client reached), https
 * when a proxy in front says so; "" (relative URLs) when the header is
 * missing or holds what no host name has. */
static void url_base(struct http_request *req, char *out, size_t cap) {
    const char *host = http_header(req, "Host"), *proto = http_header(req, "X-Forwarded-Proto");
    *out = 0;
    if (!host || !*host || strlen(host) > 255) return;
    for (const char *c = host; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr(".-_:[]", *c)) return;
    snprintf(out, cap, "%s://%s", proto && strcasecmp(proto, "https") == 0 ? "https" : "http", host);
}

struct oa_call {
    enum oa_format format;
};

static void oa_done(struct api_ctx *app, struct http_request *req, struct job *job, const struct job_status *st,
                    void *arg) {
    (void)app;
    const struct oa_call *c = arg;
    if (st->state != JOB_DONE) {
        api_job_error(req, st);
        return;
    }
    const char *prompt = job_params(job)->req.prompt;
    char base[300], url[400];
    url_base(req, base, sizeof base);
    json_t *data = json_array();
    for (int i = 0; i < st->n_images; i++) {
        json_t *item;
        if (c->format == OA_URL) {
            snprintf(url, sizeof url, "%s/jobs/%s/images/%d", base, job_id(job), i);
            item = json_pack("{s:s, s:s}", "url", url, "revised_prompt", prompt);
        } else {
            char *b64 = http_base64_encode(st->images[i].png, st->images[i].png_len);
            item = b64 ? json_pack("{s:s, s:s}", "b64_json", b64, "revised_prompt", prompt) : NULL;
            free(b64);
        }
        if (!item || json_array_append_new(data, item) != 0) {
            json_decref(data);
            http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
            return;
        }
    }
    http_add_header(req, "X-Job-Id", job_id(job));
    http_respond_json(req, 200, json_pack("{s:I, s:o}", "created", (json_int_t)st->created, "data", data));
}

/* Queues the parsed request and answers when its job is final. */
static void submit_and_wait(struct api_ctx *app, struct http_request *req, struct job_params *p,
                            enum oa_format format, const char *user) {
    struct job *job = api_submit(app, req, p);
    if (!job) return;
    if (user) log_write(LOGL_INFO, job_id(job), "openai: user \"%.100s\"", user);
    struct oa_call *c = malloc(sizeof *c);
    if (!c) {
        jobs_cancel(app->jobs, job, JOB_STOP_DISCONNECT);
        job_unref(job);
        http_respond_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    c->format = format;
    api_wait(app, req, job, oa_done, c, free);
}

/* ---- the endpoints -------------------------------------------------------------- */

static void route_generations(struct api_ctx *app, struct http_request *req, const char *rest) {
    (void)rest;
    if (!api_body_type_ok(req, api_json_types)) return;
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body, len, 0, &jerr);
    struct api_error e;
    struct job_params p;
    enum oa_format format;
    const char *user = NULL;
    if (!o || !json_is_object(o)) {
        if (o) api_fail(&e, 400, "invalid_json", NULL, "the body must be a JSON object");
        else api_fail(&e, 400, "invalid_json", NULL, "malformed JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                      jerr.column);
        json_decref(o);
        api_send_error(req, &e);
        return;
    }
    if (parse_request(app, o, NULL, &p, &format, &user, &e) != DF_OK) {
        job_params_free(&p);
        json_decref(o);
        api_send_error(req, &e);
        return;
    }
    submit_and_wait(app, req, &p, format, user);
    json_decref(o);
}

/* A form's text fields as the JSON a generation request would have: values
 * of numeric fields that read as numbers become numbers, anything else
 * stays a string (and the typed readers then name the field). */
static df_status form_json(const struct multipart *mp, json_t **out, struct api_error *e) {
    json_t *o = json_object();
    if (!o) return api_fail(e, 500, "out_of_memory", NULL, "out of memory");
    for (int i = 0; i < mp->n; i++) {
        const struct multipart_part *pt = &mp->parts[i];
        size_t k = 0;
        while (k < sizeof fields / sizeof fields[0] && strcmp(fields[k].name, pt->name) != 0) k++;
        if (k == sizeof fields / sizeof fields[0] || json_object_get(o, pt->name)) continue; /* unknown, repeated */
        char *text = malloc(pt->len + 1);
        if (!text) {
            json_decref(o);
            return api_fail(e, 500, "out_of_memory", NULL, "out of memory");
        }
        memcpy(text, pt->data, pt->len);
        text[pt->len] = 0;
        /* decimal numbers only: strtod would also take " 5", "0x10" and "inf" */
        char *end = NULL;
        bool numeric = fields[k].type != OA_STRING && pt->len && strspn(text, "0123456789+-.eE") == pt->len;
        double d = numeric ? strtod(text, &end) : NAN;
        json_t *v = numeric && isfinite(d) && *end == 0
                        ? (fields[k].type == OA_INT && d == floor(d) && fabs(d) < 9e15 ? json_integer((json_int_t)d)
                                                                                         : json_real(d))
                        : json_stringn(text, pt->len);
        free(text);
        if (!v) {
            json_decref(o);
            return api_fail(e, 400, "invalid_value", fields[k].name, "%s is not UTF-8 text", fields[k].name);
        }
        json_object_set_new(o, pt->name, v);
    }
    *out = o;
    return DF_OK;
}

static void route_edits(struct api_ctx *app, struct http_request *req, const char *rest) {
    (void)rest;
    static const char *const form_types[] = {"multipart/form-data", NULL};
    if (!api_body_type_ok(req, form_types)) return;
    size_t len;
    const char *body = http_body(req, &len), *ct = http_header(req, "Content-Type");
    struct api_error e;
    struct multipart mp;
    struct job_params p;
    memset(&p, 0, sizeof p);
    json_t *o = NULL;
    enum oa_format format;
    const char *user = NULL;
    df_status st = multipart_parse(ct, body, len, &mp);
    if (st != DF_OK) {
        /* no Content-Type at all (api_body_type_ok lets it pass) is 415 too:
         * a form has no boundary without one */
        if (st == DF_ENOMEM) api_fail(&e, 500, "out_of_memory", NULL, "out of memory");
        else if (!ct) api_fail(&e, 415, "unsupported_media_type", NULL, "%s", df_errmsg());
        else api_fail(&e, 400, "invalid_multipart", NULL, "malformed multipart/form-data: %s", df_errmsg());
        goto fail;
    }
    const struct multipart_part *image = multipart_find(&mp, "image");
    if (!image) image = multipart_find(&mp, "image[]"); /* gpt-image-1 takes a list; the first is used */
    if (!image) {
        api_fail(&e, 400, "missing_field", "image", "image (a PNG file) is required");
        goto fail;
    }
    if (form_json(&mp, &o, &e) != DF_OK) goto fail;
    if (parse_request(app, o, image, &p, &format, &user, &e) != DF_OK) goto fail;
    if (multipart_find(&mp, "mask"))
        log_write(LOGL_WARN, NULL, "openai: images/edits mask ignored (no inpainting): the whole image is redrawn");
    submit_and_wait(app, req, &p, format, user);
    json_decref(o);
    multipart_free(&mp);
    return;
fail:
    job_params_free(&p);
    json_decref(o);
    multipart_free(&mp);
    api_send_error(req, &e);
}

/* The file's modification time: the nearest thing a local model has to
 * OpenAI's "created". */
static json_t *model_json(const struct api_model *am) {
    struct stat sb;
    json_int_t created = stat(am->filename, &sb) == 0 ? (json_int_t)sb.st_mtime : 0;
    return json_pack("{s:s, s:s, s:I, s:s}", "id", am->m->name, "object", "model", "created", created, "owned_by",
                     "diffusiond");
}

static void route_models(struct api_ctx *app, struct http_request *req, const char *rest) {
    (void)rest;
    json_t *data = json_array();
    for (int i = 0; i < app->n_models; i++) json_array_append_new(data, model_json(&app->models[i]));
    http_respond_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void route_model(struct api_ctx *app, struct http_request *req, const char *id) {
    struct api_error e;
    int index;
    if (api_model_lookup(app, id, NULL, &index, &e) != DF_OK) {
        api_send_error(req, &e);
        return;
    }
    http_respond_json(req, 200, model_json(&app->models[index]));
}

/* ---- routing ---------------------------------------------------------------------- */

static const struct {
    const char *path;            /* under /v1/ */
    bool prefix;                 /* path is a prefix: the rest goes to fn */
    const char *method;
    void (*fn)(struct api_ctx *app, struct http_request *req, const char *rest);
} routes[] = {
    {"images/generations", false, "POST", route_generations},
    {"images/edits", false, "POST", route_edits},
    {"models", false, "GET", route_models},
    {"models/", true, "GET", route_model},
};

bool openai_handle(struct api_ctx *app, struct http_request *req) {
    const char *path = http_path(req) + strlen("/v1/"), *method = http_method(req);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        size_t n = strlen(routes[i].path);
        if (strncmp(path, routes[i].path, n) != 0 || (routes[i].prefix ? !path[n] : path[n] != 0)) continue;
        bool ok = strcmp(method, routes[i].method) == 0 ||
                  (strcmp(routes[i].method, "GET") == 0 && strcmp(method, "HEAD") == 0);
        if (ok) {
            routes[i].fn(app, req, path + n);
        } else {
            http_add_header(req, "Allow", routes[i].method);
            http_respond_error(req, 405, "method_not_allowed", NULL, "use %s here", routes[i].method);
        }
        return true;
    }
    return false;
}
