/* config: see config.h. Every key is one row of `keys`; defaults go
 * through the same parser as user values, so --help shows the truth. */
#include "config.h"

#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum ktype { K_STR, K_INT, K_SECONDS, K_SIZE, K_LIST, K_PRECISION, K_LOGLEVEL, K_BOOL, K_MODEL, K_COMPONENT,
             K_KEYFILE };

struct key {
    const char *name;
    enum ktype type;
    size_t offset;        /* into struct config; component: which one */
    const char *def;      /* NULL = unset */
    long long min, max;   /* K_INT, K_SIZE; K_SECONDS uses min only */
    const char *arg, *help;
};

#define OFF(f) offsetof(struct config, f)
#define COMP(f) offsetof(struct cfg_model, f)

static const struct key keys[] = {
    {"host", K_STR, OFF(host), "127.0.0.1", 0, 0, "ADDR", "address to listen on (IPv4 or IPv6 literal, or a name)"},
    {"port", K_INT, OFF(port), "7860", 0, 65535, "N",
     "TCP port (7860 is A1111's, so its clients find us; 0 = any free port)"},
    {"model", K_MODEL, 0, NULL, 0, 0, "PATH",
     "model: single-file checkpoint or diffusers folder; repeat for more, the first is the default"},
    /* here: one row per component of comp_table and one for its config.json
     * (--unet FILE, --unet-config FILE, ...), made by all_keys() */
    {"scheduler_config", K_COMPONENT, COMP(scheduler_config), NULL, 0, 0, "FILE",
     "scheduler_config.json for the model named last"},
    {"family", K_COMPONENT, COMP(family), NULL, 0, 0, "NAME",
     "model family of the model named last when its files do not say: sd1, sd2 or sdxl"},
    {"prediction", K_COMPONENT, COMP(prediction), NULL, 0, 0, "TYPE",
     "prediction type of the model named last: epsilon or v (default: what the model says or implies)"},
    {"model_dir", K_STR, OFF(model_dir), NULL, 0, 0, "DIR", "directory relative model paths are taken from"},
    {"precision", K_PRECISION, OFF(precision), "fp16", 0, 0, "fp16|fp32", "weight precision on the device"},
    {"device", K_LIST, OFF(devices), NULL, 0, 0, "LIST",
     "Vulkan devices by index or name substring, comma-separated (default: the first usable)"},
    {"workers", K_INT, OFF(workers), "1", 1, 64, "N", "worker threads per device (each has its own activations)"},
    {"queue_max", K_INT, OFF(queue_max), "32", 1, 100000, "N", "queued jobs before new ones get 429 Too Many Requests"},
    {"job_timeout_s", K_SECONDS, OFF(job_timeout_s), "600", 0, 0, "S",
     "a running job is stopped after this long (0 = never)"},
    {"result_ttl_s", K_SECONDS, OFF(result_ttl_s), "600", 0, 0, "S",
     "finished jobs and their images are kept this long"},
    {"api_key", K_STR, OFF(api_key), NULL, 0, 0, "KEY",
     "require this key (Authorization: Bearer KEY or X-API-Key: KEY); /health and /ready stay open"},
    {"api_key_file", K_KEYFILE, OFF(api_key), NULL, 0, 0, "FILE",
     "read api_key from this file (keeps it out of the process list)"},
    {"cors_origins", K_LIST, OFF(cors_origins), NULL, 0, 0, "LIST",
     "origins allowed to call from a browser, comma-separated (default: CORS off)"},
    {"max_body_bytes", K_SIZE, OFF(max_body_bytes), "32M", 1024, (long long)1 << 40, "BYTES",
     "largest request body (K, M, G suffixes)"},
    {"max_width", K_INT, OFF(max_width), "2048", 8, 16384, "N", "largest image width"},
    {"max_height", K_INT, OFF(max_height), "2048", 8, 16384, "N", "largest image height"},
    {"max_steps", K_INT, OFF(max_steps), "150", 1, 1000, "N", "most sampler steps per image"},
    {"max_batch", K_INT, OFF(max_batch), "8", 1, 64, "N", "most images per request"},
    {"vae_tile_budget", K_SIZE, OFF(vae_tile_budget), "0", 0, (long long)1 << 50, "BYTES",
     "activation memory a VAE pass may use before images are decoded in overlapping tiles (0 = 3/4 of the device's "
     "largest allocation)"},
    {"max_image_pixels", K_SIZE, OFF(max_image_pixels), "16M", 64, (long long)1 << 32, "N",
     "largest init image a request may send, in pixels"},
    {"log_level", K_LOGLEVEL, OFF(log_level), "info", 0, 0, "LEVEL", "debug, info, warn or error"},
    {"shutdown_grace_s", K_SECONDS, OFF(shutdown_grace_s), "30", 0, 0, "S",
     "on SIGTERM, running jobs may finish for this long"},
    {"http_threads", K_INT, OFF(http_threads), "4", 1, 256, "N", "HTTP event-loop threads"},
    {"validation", K_BOOL, OFF(validation), "false", 0, 0, "BOOL", "Vulkan validation layer (slow; for debugging)"},
};
#define NSTATIC (sizeof keys / sizeof keys[0])
#define NKEYS (NSTATIC + 2 * COMP_COUNT)

/* keys[] with the component rows inserted after "model": built once, then
 * read-only like the table it extends. */
static struct key key_rows[NKEYS];
static char key_names[2 * COMP_COUNT][48], key_helps[2 * COMP_COUNT][128];
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void build_keys(void) {
    size_t n = 0;
    for (size_t i = 0; i < NSTATIC; i++) {
        key_rows[n++] = keys[i];
        if (keys[i].type != K_MODEL) continue;
        for (int c = 0; c < COMP_COUNT; c++)
            for (int cfg = 0; cfg < 2; cfg++) {
                int r = 2 * c + cfg;
                snprintf(key_names[r], sizeof key_names[r], "%s%s", comp_table[c].name, cfg ? "_config" : "");
                if (cfg) snprintf(key_helps[r], sizeof key_helps[r], "config.json of that %s file", comp_table[c].what);
                else snprintf(key_helps[r], sizeof key_helps[r], "%s weights for the model named last (overrides its own)",
                              comp_table[c].what);
                key_rows[n++] = (struct key){key_names[r], K_COMPONENT,
                                             (cfg ? COMP(component_config) : COMP(component)) + (size_t)c * sizeof(char *),
                                             NULL, 0, 0, "FILE", key_helps[r]};
            }
    }
}

static const struct key *all_keys(void) {
    pthread_once(&key_once, build_keys);
    return key_rows;
}

/* Where a value comes from, for messages and the model-list rule. */
struct layer {
    struct config *c;
    const char *where;      /* "--port", "DIFFUSIOND_PORT", "file.conf:3" */
    bool models_replaced;   /* this layer has started its own model list */
};

static char *xstrdup(const char *s) {
    char *d = strdup(s);
    if (!d) abort(); /* tiny start-up allocations; no daemon to protect yet */
    return d;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

static void free_list(char ***list, int *n) {
    for (int i = 0; i < *n; i++) free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
}

static void free_model(struct cfg_model *m) {
    free(m->path);
    for (int c = 0; c < COMP_COUNT; c++) {
        free(m->component[c]);
        free(m->component_config[c]);
    }
    free(m->scheduler_config);
    free(m->family);
    free(m->prediction);
}

static void free_models(struct config *c) {
    for (int i = 0; i < c->n_models; i++) free_model(&c->models[i]);
    free(c->models);
    c->models = NULL;
    c->n_models = 0;
}

static struct cfg_model *add_model(struct config *c) {
    struct cfg_model *m = realloc(c->models, (size_t)(c->n_models + 1) * sizeof *m);
    if (!m) abort();
    c->models = m;
    memset(&m[c->n_models], 0, sizeof *m);
    return &m[c->n_models++];
}

static const struct key *find_key(const char *name, size_t len) {
    char norm[64];
    if (len >= sizeof norm) return NULL;
    for (size_t i = 0; i < len; i++) norm[i] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
    norm[len] = 0;
    const struct key *all = all_keys();
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(all[i].name, norm) == 0) return &all[i];
    return NULL;
}

static df_status bad(const struct layer *l, const struct key *k, const char *v, const char *why) {
    return df_error(DF_EINVAL, "%s: %s \"%s\": %s", l->where, k->name, v, why);
}

static df_status parse_size(const char *v, long long *out) {
    errno = 0;
    char *end;
    double x = strtod(v, &end);
    if (end == v || errno || !isfinite(x) || x < 0) return DF_EINVAL;
    while (*end == ' ') end++;
    double mult = 1;
    switch (tolower((unsigned char)*end)) {
    case 'k': mult = 1024.0; end++; break;
    case 'm': mult = 1024.0 * 1024; end++; break;
    case 'g': mult = 1024.0 * 1024 * 1024; end++; break;
    default: break;
    }
    if (mult > 1 && (strcasecmp(end, "ib") == 0 || strcasecmp(end, "b") == 0)) end += strlen(end);
    if (*end) return DF_EINVAL;
    x *= mult;
    if (x > 9e18) return DF_EINVAL;
    *out = (long long)x;
    return DF_OK;
}

static df_status parse_bool(const char *v, bool *out) {
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = true; return DF_OK; }
        if (strcasecmp(v, no[i]) == 0) { *out = false; return DF_OK; }
    }
    return DF_EINVAL;
}

static void set_list(char ***list, int *n, const char *v) {
    free_list(list, n);
    char *copy = xstrdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = trim(tok);
        if (!*t) continue;
        char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
        if (!grown) abort();
        *list = grown;
        (*list)[(*n)++] = xstrdup(t);
    }
    free(copy);
}

static df_status read_key_file(const struct layer *l, const struct key *k, const char *path, char **out) {
    FILE *f = fopen(path, "r");
    if (!f) return df_error(DF_EIO, "%s: %s \"%s\": %s", l->where, k->name, path, strerror(errno));
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *t = trim(buf);
    if (!*t) return bad(l, k, path, "the file is empty");
    free(*out);
    *out = xstrdup(t);
    return DF_OK;
}

static df_status set_key(struct layer *l, const struct key *k, const char *v) {
    struct config *c = l->c;
    void *field = (char *)c + k->offset;
    switch (k->type) {
    case K_STR:
        free(*(char **)field);
        *(char **)field = *v ? xstrdup(v) : NULL;
        return DF_OK;
    case K_KEYFILE:
        return read_key_file(l, k, v, (char **)field);
    case K_INT: {
        errno = 0;
        char *end;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno) return bad(l, k, v, "not an integer");
        if (x < k->min || x > k->max) {
            char why[96];
            snprintf(why, sizeof why, "outside %lld..%lld", k->min, k->max);
            return bad(l, k, v, why);
        }
        *(int *)field = (int)x;
        return DF_OK;
    }
    case K_SECONDS: {
        errno = 0;
        char *end;
        double x = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(x) || x < 0) return bad(l, k, v, "not a number of seconds >= 0");
        *(double *)field = x;
        return DF_OK;
    }
    case K_SIZE: {
        long long x;
        if (parse_size(v, &x) != DF_OK) return bad(l, k, v, "not a size (e.g. 4096, 64K, 32M, 1G)");
        if (x < k->min || x > k->max) return bad(l, k, v, "out of range");
        *(size_t *)field = (size_t)x;
        return DF_OK;
    }
    case K_LIST:
        set_list((char ***)field, (int *)((char *)field + (k->offset == OFF(devices)
                                                               ? OFF(n_devices) - OFF(devices)
                                                               : OFF(n_cors_origins) - OFF(cors_origins))),
                 v);
        return DF_OK;
    case K_PRECISION:
        if (strcasecmp(v, "fp16") == 0 || strcasecmp(v, "f16") == 0) c->precision = WTS_F16;
        else if (strcasecmp(v, "fp32") == 0 || strcasecmp(v, "f32") == 0) c->precision = WTS_F32;
        else return bad(l, k, v, "expected fp16 or fp32");
        return DF_OK;
    case K_LOGLEVEL:
        if (log_level_from_name(v, &c->log_level) != DF_OK) return bad(l, k, v, "expected debug, info, warn or error");
        return DF_OK;
    case K_BOOL:
        if (parse_bool(v, (bool *)field) != DF_OK) return bad(l, k, v, "expected true or false");
        return DF_OK;
    case K_MODEL:
        if (!*v) return bad(l, k, v, "empty path");
        if (!l->models_replaced) {
            free_models(c);
            l->models_replaced = true;
        }
        add_model(c)->path = xstrdup(v);
        return DF_OK;
    case K_COMPONENT: {
        if (!*v) return bad(l, k, v, "empty path");
        if (c->n_models == 0) {
            add_model(c);
            l->models_replaced = true;
        }
        char **slot = (char **)((char *)&c->models[c->n_models - 1] + k->offset);
        free(*slot);
        *slot = xstrdup(v);
        return DF_OK;
    }
    }
    return DF_OK;
}

/* ---- layers ------------------------------------------------------------- */

static df_status load_file(struct config *c, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return df_error(DF_EIO, "config file %s: %s", path, strerror(errno));
    char line[8192], where[512];
    struct layer l = {.c = c, .where = where};
    df_status st = DF_OK;
    for (int lineno = 1; st == DF_OK && fgets(line, sizeof line, f); lineno++) {
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            st = df_error(DF_EINVAL, "%s: expected \"key = value\"", where);
            break;
        }
        *eq = 0;
        char *name = trim(s), *value = trim(eq + 1);
        size_t vn = strlen(value);
        if (vn >= 2 && value[0] == '"' && value[vn - 1] == '"') { /* optional quotes */
            value[vn - 1] = 0;
            value++;
        }
        const struct key *k = find_key(name, strlen(name));
        if (!k) st = df_error(DF_EINVAL, "%s: unknown key \"%s\" (see diffusiond serve --help)", where, name);
        else st = set_key(&l, k, value);
    }
    fclose(f);
    return st;
}

static df_status load_env(struct config *c) {
    char name[96];
    struct layer l = {.c = c, .where = name};
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &all_keys()[i];
        size_t n = (size_t)snprintf(name, sizeof name, "DIFFUSIOND_");
        for (const char *p = k->name; *p && n + 1 < sizeof name; p++) name[n++] = (char)toupper((unsigned char)*p);
        name[n] = 0;
        const char *v = getenv(name);
        if (!v) continue;
        df_status st = DF_OK;
        if (k->type == K_MODEL) { /* a list: DIFFUSIOND_MODEL=a.safetensors,b */
            char *copy = xstrdup(v), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok && st == DF_OK; tok = strtok_r(NULL, ",", &save))
                if (*trim(tok)) st = set_key(&l, k, trim(tok));
            free(copy);
        } else {
            st = set_key(&l, k, v);
        }
        if (st != DF_OK) return st;
    }
    return DF_OK;
}

static df_status load_args(struct config *c, int argc, char **argv, bool *help) {
    char where[96];
    struct layer l = {.c = c, .where = where};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *help = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            return df_error(DF_EINVAL, "unexpected argument \"%s\" (options are --key value)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        snprintf(where, sizeof where, "--%.*s", (int)len, name);
        if (len == 6 && strncmp(name, "config", 6) == 0) { /* already read */
            if (!eq) i++;
            continue;
        }
        const struct key *k = find_key(name, len);
        if (!k) return df_error(DF_EINVAL, "unknown option %s (see diffusiond serve --help)", where);
        const char *value;
        if (eq) value = eq + 1;
        else if (k->type == K_BOOL) value = "true";
        else if (i + 1 < argc) value = argv[++i];
        else return df_error(DF_EINVAL, "%s needs a value", where);
        df_status st = set_key(&l, k, value);
        if (st != DF_OK) return st;
    }
    return DF_OK;
}

/* Relative model paths live in model_dir. */
static void resolve(const struct config *c, char **path) {
    if (!*path || !c->model_dir || (*path)[0] == '/') return;
    size_t n = strlen(c->model_dir) + strlen(*path) + 2;
    char *full = malloc(n);
    if (!full) abort();
    snprintf(full, n, "%s/%s", c->model_dir, *path);
    free(*path);
    *path = full;
}

df_status cfg_load(int argc, char **argv, struct config *out, bool *help) {
    memset(out, 0, sizeof *out);
    *help = false;
    struct layer def = {.c = out, .where = "default"};
    for (size_t i = 0; i < NSTATIC; i++)
        if (keys[i].def && set_key(&def, &keys[i], keys[i].def) != DF_OK) abort(); /* a bad table row */

    const char *file = getenv("DIFFUSIOND_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) file = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0) file = argv[i] + 9;
    }
    df_status st = DF_OK;
    if (file && *file) st = load_file(out, file);
    if (st == DF_OK) st = load_env(out);
    if (st == DF_OK) st = load_args(out, argc, argv, help);
    if (st != DF_OK) {
        cfg_free(out);
        return st;
    }
    for (int i = 0; i < out->n_models; i++) {
        struct cfg_model *m = &out->models[i];
        resolve(out, &m->path);
        for (int c = 0; c < COMP_COUNT; c++) {
            resolve(out, &m->component[c]);
            resolve(out, &m->component_config[c]);
        }
        resolve(out, &m->scheduler_config);
    }
    const char *ns = getenv("NOTIFY_SOCKET");
    if (ns && *ns) out->notify_socket = xstrdup(ns);
    return DF_OK;
}

void cfg_free(struct config *c) {
    free(c->host);
    free_models(c);
    free(c->model_dir);
    free_list(&c->devices, &c->n_devices);
    free(c->api_key);
    free_list(&c->cors_origins, &c->n_cors_origins);
    free(c->notify_socket);
    memset(c, 0, sizeof *c);
}

void cfg_usage(FILE *f) {
    fprintf(f, "usage: diffusiond serve [--config FILE] [--key value ...]\n\n"
               "Runs the HTTP daemon. Every key below can also be set in the config file\n"
               "(\"key = value\" lines) or as DIFFUSIOND_<KEY> in the environment; the command\n"
               "line wins over the environment, which wins over the file.\n\n"
               "  --config FILE             config file (env DIFFUSIOND_CONFIG)\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &all_keys()[i];
        char opt[64];
        snprintf(opt, sizeof opt, "--%s %s", k->name, k->arg);
        for (char *p = opt + 2; *p && *p != ' '; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %-25s %s", opt, k->help);
        if (k->def) fprintf(f, " [%s]", k->def);
        fputc('\n', f);
    }
    fprintf(f, "\nExample: diffusiond serve --model /models/v1-5-pruned-emaonly.safetensors --port 7860\n");
}
