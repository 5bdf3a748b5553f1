/* check: drives the fixture cases and prints one verdict line per case. */
#include "check.h"
#include "../common/clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Which check runs a manifest "component". Prefix match: the LDM-layout
 * variants say "UNet2DConditionModel (CompVis/LDM ...)". */
static const struct {
    const char *component;
    check_fn fn;
} checks[] = {
    {"CLIPTokenizer", check_tokenizer},
    {"CLIPTextModel", check_clip_text},
    {"UNet2DConditionModel", check_unet},
    {"AutoencoderKL", check_vae},
    {"StableDiffusionPipeline", check_pipeline},
    {"StableDiffusionImg2ImgPipeline", check_pipeline},
    {"StableDiffusionXLPipeline", check_pipeline},
    {"StableDiffusionControlNetPipeline", check_pipeline},
    {"EulerDiscreteScheduler", check_sched},
    {"EulerAncestralDiscreteScheduler", check_sched},
    {"HeunDiscreteScheduler", check_sched},
    {"DDIMScheduler", check_sched},
    {"DPMSolverMultistepScheduler", check_sched},
    {"LCMScheduler", check_sched},
    {"FlowMatchEulerDiscreteScheduler", check_sched},
    {"torch.randn", check_rng},
    {"A1111 GPU seed noise", check_rng},
};

int check_config_int(const json_t *config, const char *key, int def) {
    json_t *v = json_object_get(config, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

double check_config_real(const json_t *config, const char *key, double def) {
    json_t *v = json_object_get(config, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

df_status check_open(struct check_ctx *ctx, const char *file, struct st_file **out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", ctx->dir, file);
    return st_open(path, out);
}

df_status check_tensor(struct check_case *c, const char *name, float **out, int64_t *numel) {
    const struct st_tensor *t = st_find(c->file, name);
    if (!t) return df_error(DF_EFORMAT, "case %s: no tensor \"%s\"", c->name, name);
    float *x = malloc(t->numel ? (size_t)t->numel * sizeof *x : 1);
    if (!x) return df_error(DF_ENOMEM, "out of memory");
    if (t->dtype == ST_I64 || t->dtype == ST_I32) {
        for (int64_t i = 0; i < t->numel; i++) {
            int64_t v;
            if (t->dtype == ST_I64) memcpy(&v, (const char *)t->data + i * 8, 8);
            else {
                int32_t v32;
                memcpy(&v32, (const char *)t->data + i * 4, 4);
                v = v32;
            }
            x[i] = (float)v;
        }
    } else {
        df_status st = st_to_f32(t, x);
        if (st != DF_OK) {
            free(x);
            return st;
        }
    }
    *out = x;
    if (numel) *numel = t->numel;
    return DF_OK;
}

df_status check_compare(struct check_ctx *ctx, struct check_case *c, const char *name, const float *got,
                        int64_t numel) {
    float *ref;
    int64_t n;
    df_status st = check_tensor(c, name, &ref, &n);
    if (st != DF_OK) return st;
    if (n != numel) {
        free(ref);
        return df_error(DF_EINVAL, "%s: %lld values computed, reference has %lld", name, (long long)numel,
                        (long long)n);
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += isfinite(got[i]) ? d * d : INFINITY;
        den += (double)ref[i] * ref[i];
    }
    free(ref);
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(err <= ctx->tolerance)) c->failed = true;
    if (!(err <= c->max_err)) c->max_err = err;
    size_t used = strlen(c->detail);
    snprintf(c->detail + used, sizeof c->detail - used, "%s%s=%.2e", used ? " " : "", name, err);
    return DF_OK;
}

static check_fn find_check(const char *component) {
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++)
        if (strncmp(component, checks[i].component, strlen(checks[i].component)) == 0) return checks[i].fn;
    return NULL;
}

int check_fixtures_main(int argc, char **argv) {
    const char *dir = NULL, *only = NULL;
    struct dev_config cfg = {.index = -1};
    bool fp16 = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--case") == 0 && i + 1 < argc) only = argv[++i];
        else if (strcmp(argv[i], "--fp16") == 0) fp16 = true;
        else if (strcmp(argv[i], "--validation") == 0) cfg.validation = true;
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) cfg.name_contains = argv[++i];
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, "usage: diffusiond check-fixtures DIR [--case NAME] [--fp16] [--validation] "
                            "[--device NAME]\n");
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "check-fixtures: no fixture directory given\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_error_t jerr;
    json_t *manifest = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!manifest) {
        fprintf(stderr, "check-fixtures: %s: %s (line %d)\n", path, jerr.text, jerr.line);
        return 1;
    }
    struct check_ctx ctx = {.dir = dir, .manifest = manifest, .fp16 = fp16, .tolerance = fp16 ? 1e-2 : 1e-4};
    if (dev_create(&cfg, &ctx.dev) != DF_OK) {
        fprintf(stderr, "check-fixtures: %s\n", df_errmsg());
        json_decref(manifest);
        return 1;
    }
    int failures = 0, passes = 0, ran = 0;
    json_t *cases = json_object_get(manifest, "cases");
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        const char *name = json_string_value(json_object_get(cs, "name"));
        const char *component = json_string_value(json_object_get(cs, "component"));
        const char *file = json_string_value(json_object_get(cs, "file"));
        if (!name || !component || !file) {
            printf("FAIL case %zu: manifest entry lacks name, component or file\n", i);
            failures++;
            continue;
        }
        if (only && strcmp(only, name) != 0) continue;
        ran++;
        check_fn fn = find_check(component);
        if (!fn) {
            printf("SKIP %s (unsupported component: %s)\n", name, component);
            continue;
        }
        struct check_case c = {.name = name, .json = cs};
        double t0 = clock_now();
        df_status st = check_open(&ctx, file, &c.file);
        if (st == DF_OK) st = fn(&ctx, &c);
        if (st == DF_EUNSUPPORTED) {
            printf("SKIP %s (%s)\n", name, df_errmsg());
        } else if (st != DF_OK) {
            printf("FAIL %s error: %s\n", name, df_errmsg());
            failures++;
        } else {
            printf("%s %s rel_err=%.3e (%s) %.2fs\n", c.failed ? "FAIL" : "PASS", name, c.max_err, c.detail,
                   clock_now() - t0);
            if (c.failed) failures++;
            else passes++;
        }
        fflush(stdout);
        st_close(c.file);
    }
    if (only && ran == 0) {
        fprintf(stderr, "check-fixtures: no case named %s\n", only);
        failures++;
    }
    if (dev_validation_messages(ctx.dev)) {
        printf("FAIL validation layer reported %llu messages\n", (unsigned long long)dev_validation_messages(ctx.dev));
        failures++;
    }
    printf("%d passed, %d failed (tolerance %.0e)\n", passes, failures, ctx.tolerance);
    dev_destroy(ctx.dev);
    json_decref(manifest);
    return failures ? 1 : 0;
}
