/* sampler: config, names and the per-evaluation step arithmetic of the
 * diffusers 0.29.2 schedulers. The schedules themselves are schedule.c.
 *
 * Step arithmetic mirrors torch on the CPU: the scheduler's scalars are
 * float32 0-d tensors, Python floats enter as float32, and each tensor op
 * rounds to float32, so every expression below is written as the same
 * sequence of float operations as the Python source (x0 is formed and then
 * differenced again rather than simplified away, because that is what
 * rounds like the reference). */
#include "sampler.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bit-exactness needs every a*b + c rounded twice, as torch and numpy do;
 * GCC in -std=c11 mode never contracts, clang would within an expression. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "schedule.h"

struct smp_sampler {
    enum smp_kind kind;
    struct smp_config cfg; /* resolved: no AUTO left */
    int steps;             /* num_inference_steps */
    struct smp_plan plan;
    float *acp;            /* alphas_cumprod [num_train_timesteps] */
    float final_acp;       /* DDIM/LCM alpha_prod past the end */
    int begin;             /* first evaluation (img2img) */
    int index;             /* next evaluation, absolute */
    size_t n;              /* latent size, fixed by the first step */
    float *state_a;        /* Heun: derivative of the Euler sub-step; DPM++: previous x0 */
    float *state_b;        /* Heun: sample before the Euler sub-step */
    float heun_dt;
    bool heun_second;      /* Heun: next call is the correction (self.dt is not None) */
    int lower_order_nums;  /* DPM++: steps taken, capped at the order */
};

/* ---- names ------------------------------------------------------------- */

static const struct {
    const char *ours, *a1111;
} kind_names[SMP_KIND_COUNT] = {
    [SMP_EULER] = {"euler", "Euler"},       [SMP_EULER_A] = {"euler_a", "Euler a"},
    [SMP_HEUN] = {"heun", "Heun"},          [SMP_DDIM] = {"ddim", "DDIM"},
    [SMP_DPMPP_2M] = {"dpmpp_2m", "DPM++ 2M"}, [SMP_LCM] = {"lcm", "LCM"},
    [SMP_FLOW_EULER] = {"flow_euler", NULL}, /* A1111/Forge call it "Euler" on SD3 */
};

static const struct {
    const char *ours, *a1111;
} schedule_names[] = {
    [SMP_SCHEDULE_DEFAULT] = {"default", "Automatic"},
    [SMP_SCHEDULE_KARRAS] = {"karras", "Karras"},
    [SMP_SCHEDULE_EXPONENTIAL] = {"exponential", "Exponential"},
    [SMP_SCHEDULE_SGM_UNIFORM] = {"sgm_uniform", "SGM Uniform"},
};

df_status smp_kind_from_name(const char *name, enum smp_kind *out) {
    for (int k = 0; name && k < SMP_KIND_COUNT; k++)
        if (!strcmp(name, kind_names[k].ours) || (kind_names[k].a1111 && !strcmp(name, kind_names[k].a1111))) {
            *out = (enum smp_kind)k;
            return DF_OK;
        }
    return df_error(DF_EINVAL, "unknown sampler '%s'", name ? name : "(null)");
}

const char *smp_kind_name(enum smp_kind kind) {
    return (unsigned)kind < SMP_KIND_COUNT ? kind_names[kind].ours : "unknown";
}

const char *smp_kind_a1111_name(enum smp_kind kind) {
    if ((unsigned)kind >= SMP_KIND_COUNT) return "unknown";
    return kind_names[kind].a1111 ? kind_names[kind].a1111 : "Euler";
}

const char *smp_schedule_a1111_name(enum smp_schedule sched) {
    return (unsigned)sched <= SMP_SCHEDULE_SGM_UNIFORM ? schedule_names[sched].a1111 : "unknown";
}

df_status smp_schedule_from_name(const char *name, enum smp_schedule *out) {
    const int count = (int)(sizeof schedule_names / sizeof schedule_names[0]);
    for (int k = 0; name && k < count; k++)
        if (!strcmp(name, schedule_names[k].ours) || !strcmp(name, schedule_names[k].a1111)) {
            *out = (enum smp_schedule)k;
            return DF_OK;
        }
    return df_error(DF_EINVAL, "unknown schedule '%s'", name ? name : "(null)");
}

const char *smp_schedule_name(enum smp_schedule sched) {
    return (unsigned)sched <= SMP_SCHEDULE_SGM_UNIFORM ? schedule_names[sched].ours : "unknown";
}

/* ---- config ------------------------------------------------------------ */

static struct smp_config config_base(void) {
    return (struct smp_config){
        .num_train_timesteps = 1000,
        .beta_start = 0.0001,
        .beta_end = 0.02,
        .beta_schedule = SMP_BETA_LINEAR,
        .prediction_type = SMP_PRED_AUTO,
        .timestep_spacing = SMP_SPACING_AUTO,
        .steps_offset = 0,
        .schedule = SMP_SCHEDULE_DEFAULT,
        .final_sigmas_type = SMP_FINAL_ZERO,
        .set_alpha_to_one = SMP_AUTO,
        .clip_sample = SMP_AUTO,
        .clip_sample_range = 1.0,
        .lambda_min_clipped = -INFINITY,
        .lower_order_final = true,
        .shift = 1.0,
        .original_inference_steps = 50,
        .timestep_scaling = 10.0,
    };
}

struct smp_config smp_config_default_sd15(void) {
    struct smp_config c = config_base();
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.beta_schedule = SMP_BETA_SCALED_LINEAR;
    c.steps_offset = 1;
    c.set_alpha_to_one = 0;
    c.clip_sample = 0;
    return c;
}

struct smp_config smp_config_default_sd3(void) {
    struct smp_config c = config_base();
    c.prediction_type = SMP_PRED_FLOW;
    c.shift = 3.0;
    return c;
}

/* Looks `key` up; absent and null both leave the field alone. */
static const json_t *jget(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

static df_status jnumber(const json_t *obj, const char *key, double *out) {
    const json_t *v = jget(obj, key);
    if (!v) return DF_OK;
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return DF_OK;
    }
    /* Python's json writes float('-inf') as -Infinity, which smp_config_load
     * turns into this string form. */
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "-inf") || !strcmp(s, "-Infinity")) return *out = -INFINITY, DF_OK;
        if (!strcmp(s, "inf") || !strcmp(s, "Infinity")) return *out = INFINITY, DF_OK;
    }
    return df_error(DF_EFORMAT, "scheduler config: '%s' is not a number", key);
}

static df_status jint(const json_t *obj, const char *key, int *out) {
    double d = *out;
    df_status st = jnumber(obj, key, &d);
    if (st) return st;
    if (!(d >= -1e9 && d <= 1e9) || d != floor(d))
        return df_error(DF_EFORMAT, "scheduler config: '%s' is not an integer", key);
    *out = (int)d;
    return DF_OK;
}

static df_status jbool(const json_t *obj, const char *key, bool *out) {
    const json_t *v = jget(obj, key);
    if (!v) return DF_OK;
    if (!json_is_boolean(v)) return df_error(DF_EFORMAT, "scheduler config: '%s' is not a boolean", key);
    *out = json_is_true(v);
    return DF_OK;
}

static df_status jtri(const json_t *obj, const char *key, int *out) {
    bool b = false;
    if (!jget(obj, key)) return DF_OK;
    df_status st = jbool(obj, key, &b);
    if (!st) *out = b;
    return st;
}

/* String key mapped through `names` (NULL-terminated); index into *out. */
static df_status jenum(const json_t *obj, const char *key, const char *const *names, const int *values,
                       int *out) {
    const json_t *v = jget(obj, key);
    if (!v) return DF_OK;
    if (!json_is_string(v)) return df_error(DF_EFORMAT, "scheduler config: '%s' is not a string", key);
    for (int i = 0; names[i]; i++)
        if (!strcmp(json_string_value(v), names[i])) {
            *out = values[i];
            return DF_OK;
        }
    return df_error(DF_EUNSUPPORTED, "scheduler config: %s '%s' is not supported", key,
                    json_string_value(v));
}

df_status smp_config_from_json(const struct json_t *obj, struct smp_config *cfg) {
    if (!json_is_object(obj)) return df_error(DF_EFORMAT, "scheduler config is not an object");
    struct smp_config c = *cfg;
    df_status st;
    int e;
    static const char *const beta_n[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
    static const int beta_v[] = {SMP_BETA_LINEAR, SMP_BETA_SCALED_LINEAR, SMP_BETA_SQUAREDCOS_CAP_V2};
    static const char *const pred_n[] = {"epsilon", "v_prediction", "sample", "original_sample", NULL};
    static const int pred_v[] = {SMP_PRED_EPSILON, SMP_PRED_V, SMP_PRED_SAMPLE, SMP_PRED_SAMPLE};
    static const char *const sp_n[] = {"linspace", "leading", "trailing", NULL};
    static const int sp_v[] = {SMP_SPACING_LINSPACE, SMP_SPACING_LEADING, SMP_SPACING_TRAILING};
    static const char *const fin_n[] = {"zero", "sigma_min", NULL};
    static const int fin_v[] = {SMP_FINAL_ZERO, SMP_FINAL_SIGMA_MIN};
    static const char *const interp_n[] = {"linear", NULL};
    static const char *const ttype_n[] = {"discrete", "continuous", NULL};
    static const int zero_one[] = {0, 1};

    if (jget(obj, "trained_betas"))
        return df_error(DF_EUNSUPPORTED, "scheduler config: trained_betas is not supported");
    if ((st = jint(obj, "num_train_timesteps", &c.num_train_timesteps)) ||
        (st = jnumber(obj, "beta_start", &c.beta_start)) || (st = jnumber(obj, "beta_end", &c.beta_end)) ||
        (st = jint(obj, "steps_offset", &c.steps_offset)) ||
        (st = jnumber(obj, "sigma_min", &c.sigma_min)) || (st = jnumber(obj, "sigma_max", &c.sigma_max)) ||
        (st = jtri(obj, "set_alpha_to_one", &c.set_alpha_to_one)) ||
        (st = jtri(obj, "clip_sample", &c.clip_sample)) ||
        (st = jnumber(obj, "clip_sample_range", &c.clip_sample_range)) ||
        (st = jbool(obj, "rescale_betas_zero_snr", &c.rescale_betas_zero_snr)) ||
        (st = jnumber(obj, "lambda_min_clipped", &c.lambda_min_clipped)) ||
        (st = jbool(obj, "lower_order_final", &c.lower_order_final)) ||
        (st = jbool(obj, "euler_at_final", &c.euler_at_final)) ||
        (st = jnumber(obj, "shift", &c.shift)) ||
        (st = jint(obj, "original_inference_steps", &c.original_inference_steps)) ||
        (st = jnumber(obj, "timestep_scaling", &c.timestep_scaling)))
        return st;
    e = (int)c.beta_schedule;
    if ((st = jenum(obj, "beta_schedule", beta_n, beta_v, &e))) return st;
    c.beta_schedule = (enum smp_beta_schedule)e;
    e = (int)c.prediction_type;
    if ((st = jenum(obj, "prediction_type", pred_n, pred_v, &e))) return st;
    c.prediction_type = (enum smp_prediction)e;
    e = (int)c.timestep_spacing;
    if ((st = jenum(obj, "timestep_spacing", sp_n, sp_v, &e))) return st;
    c.timestep_spacing = (enum smp_spacing)e;
    e = (int)c.final_sigmas_type;
    if ((st = jenum(obj, "final_sigmas_type", fin_n, fin_v, &e))) return st;
    c.final_sigmas_type = (enum smp_final_sigma)e;
    e = 0;
    if ((st = jenum(obj, "interpolation_type", interp_n, zero_one, &e))) return st;
    if ((st = jenum(obj, "timestep_type", ttype_n, zero_one, &e))) return st;
    if (e == 1 && c.prediction_type == SMP_PRED_V)
        return df_error(DF_EUNSUPPORTED, "scheduler config: continuous v-prediction timesteps are not supported");

    bool karras = false, expo = false, flag = false;
    if ((st = jbool(obj, "use_karras_sigmas", &karras)) || (st = jbool(obj, "use_exponential_sigmas", &expo)))
        return st;
    if (karras && expo)
        return df_error(DF_EINVAL, "scheduler config: both karras and exponential sigmas");
    if (karras) c.schedule = SMP_SCHEDULE_KARRAS;
    if (expo) c.schedule = SMP_SCHEDULE_EXPONENTIAL;
    static const char *const unsupported[] = {"thresholding", "use_beta_sigmas", "use_lu_lambdas",
                                              "use_dynamic_shifting"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        flag = false;
        if ((st = jbool(obj, unsupported[i], &flag))) return st;
        if (flag) return df_error(DF_EUNSUPPORTED, "scheduler config: %s is not supported", unsupported[i]);
    }
    *cfg = c;
    return DF_OK;
}

/* Python's json module writes non-finite floats as bare -Infinity, Infinity
 * and NaN, which are not JSON: quote them outside strings so jansson parses
 * the file and jnumber reads them. `text` is NUL-terminated. */
static char *quote_nonfinite(const char *text, size_t len) {
    static const char *const toks[] = {"-Infinity", "Infinity", "NaN"};
    char *out = malloc(len * 2 + 1);
    if (!out) return NULL;
    size_t o = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        const char ch = text[i];
        if (in_str) {
            out[o++] = ch;
            if (ch == '\\' && i + 1 < len) out[o++] = text[++i];
            else if (ch == '"') in_str = false;
            continue;
        }
        const char *tok = NULL;
        for (int t = 0; t < 3 && !tok; t++)
            if (len - i >= strlen(toks[t]) && !memcmp(text + i, toks[t], strlen(toks[t]))) tok = toks[t];
        if (tok) {
            const size_t tl = strlen(tok);
            out[o++] = '"';
            memcpy(out + o, tok, tl);
            o += tl;
            out[o++] = '"';
            i += tl - 1;
            continue;
        }
        if (ch == '"') in_str = true;
        out[o++] = ch;
    }
    out[o] = 0;
    return out;
}

static df_status resolve_config(enum smp_kind kind, const struct smp_config *in, struct smp_config *c);

/* A config every generation would fail with (num_train_timesteps 0, betas
 * outside (0, 1), ...) is refused when it is read, so the model does not
 * load instead of loading and then failing each request: a sampler of the
 * config's own kind (Euler, or flow Euler) must be creatable from it. */
static df_status check_usable(const struct smp_config *c) {
    if (c->beta_schedule != SMP_BETA_SQUAREDCOS_CAP_V2 && c->beta_start > c->beta_end)
        return df_error(DF_EINVAL, "beta_start %g is above beta_end %g", c->beta_start, c->beta_end);
    enum smp_kind kind = c->prediction_type == SMP_PRED_FLOW ? SMP_FLOW_EULER : SMP_EULER;
    int steps = c->num_train_timesteps >= 20 ? 20 : c->num_train_timesteps >= 1 ? c->num_train_timesteps : 1;
    struct smp_sampler *s = NULL;
    df_status st = smp_create(kind, c, steps, &s);
    smp_destroy(s);
    return st;
}

df_status smp_config_load(const char *path, struct smp_config *cfg) {
    enum { MAX_CONFIG = 1 << 20 }; /* a scheduler config is a few hundred bytes */
    FILE *f = fopen(path, "rb");
    if (!f) return df_error(DF_EIO, "cannot open scheduler config %s", path);
    char *text = malloc(MAX_CONFIG + 1);
    if (!text) {
        fclose(f);
        return df_error(DF_ENOMEM, "scheduler config %s", path);
    }
    const size_t len = fread(text, 1, MAX_CONFIG + 1, f);
    const bool bad = ferror(f) != 0;
    fclose(f);
    if (bad || len > MAX_CONFIG) {
        free(text);
        return df_error(bad ? DF_EIO : DF_EFORMAT, "scheduler config %s: %s", path,
                        bad ? "read error" : "too large");
    }
    text[len] = 0;
    char *clean = quote_nonfinite(text, len);
    free(text);
    if (!clean) return df_error(DF_ENOMEM, "scheduler config %s", path);
    json_error_t err;
    json_t *root = json_loads(clean, 0, &err);
    free(clean);
    if (!root) return df_error(DF_EFORMAT, "scheduler config %s: %s (line %d)", path, err.text, err.line);
    struct smp_config c = *cfg;
    df_status st = smp_config_from_json(root, &c);
    json_decref(root);
    if (st == DF_OK) st = check_usable(&c);
    if (st != DF_OK) {
        const char *why = df_errmsg(), *prefix = "scheduler config: ";
        if (strncmp(why, prefix, strlen(prefix)) == 0) why += strlen(prefix);
        char msg[512];
        snprintf(msg, sizeof msg, "%s", why);
        return df_error(st, "scheduler config %s: %s", path, msg);
    }
    *cfg = c;
    return DF_OK;
}

/* Fills the AUTO fields with the class defaults of `kind` and checks the
 * combination. */
static df_status resolve_config(enum smp_kind kind, const struct smp_config *in, struct smp_config *c) {
    *c = *in;
    const bool flow = kind == SMP_FLOW_EULER;
    if (c->prediction_type == SMP_PRED_AUTO) c->prediction_type = flow ? SMP_PRED_FLOW : SMP_PRED_EPSILON;
    if (flow != (c->prediction_type == SMP_PRED_FLOW))
        return df_error(DF_EUNSUPPORTED, "sampler %s: prediction type does not fit (flow models need flow_euler)",
                        smp_kind_name(kind));
    if (c->timestep_spacing == SMP_SPACING_AUTO)
        c->timestep_spacing = kind == SMP_DDIM || kind == SMP_LCM ? SMP_SPACING_LEADING : SMP_SPACING_LINSPACE;
    if (c->set_alpha_to_one == SMP_AUTO) c->set_alpha_to_one = 1;
    if (c->clip_sample == SMP_AUTO) c->clip_sample = kind == SMP_DDIM;
    switch (c->schedule) {
    case SMP_SCHEDULE_DEFAULT: break;
    case SMP_SCHEDULE_SGM_UNIFORM:
        if (kind == SMP_LCM || flow)
            return df_error(DF_EUNSUPPORTED, "sampler %s has no sgm_uniform schedule", smp_kind_name(kind));
        c->timestep_spacing = SMP_SPACING_TRAILING;
        break;
    case SMP_SCHEDULE_KARRAS:
    case SMP_SCHEDULE_EXPONENTIAL:
        if (kind == SMP_DDIM || kind == SMP_LCM || flow)
            return df_error(DF_EUNSUPPORTED, "sampler %s has no %s schedule", smp_kind_name(kind),
                            smp_schedule_name(c->schedule));
        break;
    default: return df_error(DF_EINVAL, "unknown schedule %d", (int)c->schedule);
    }
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
        return df_error(DF_EINVAL, "num_train_timesteps %d out of range", c->num_train_timesteps);
    if ((unsigned)c->beta_schedule > SMP_BETA_SQUAREDCOS_CAP_V2 || (unsigned)c->timestep_spacing > SMP_SPACING_TRAILING ||
        (unsigned)c->final_sigmas_type > SMP_FINAL_SIGMA_MIN || (unsigned)c->prediction_type > SMP_PRED_FLOW)
        return df_error(DF_EINVAL, "sampler config: bad enum value");
    if (c->beta_schedule != SMP_BETA_SQUAREDCOS_CAP_V2 &&
        !(c->beta_start > 0 && c->beta_end > 0 && c->beta_start < 1 && c->beta_end < 1))
        return df_error(DF_EINVAL, "betas %g..%g out of (0, 1)", c->beta_start, c->beta_end);
    if (flow && !(c->shift > 0 && c->shift < 1e6)) return df_error(DF_EINVAL, "flow shift %g", c->shift);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return df_error(DF_EINVAL, "steps_offset %d out of range", c->steps_offset);
    if (!(c->sigma_min >= 0) || !(c->sigma_max >= 0) || c->sigma_min > 1e6 || c->sigma_max > 1e6)
        return df_error(DF_EINVAL, "sigma_min/sigma_max must be positive");
    if (!(c->timestep_scaling >= 0) || !(c->clip_sample_range > 0))
        return df_error(DF_EINVAL, "sampler config: bad timestep_scaling or clip_sample_range");
    return DF_OK;
}

/* ---- the sampler ------------------------------------------------------- */

static bool sigma_based(enum smp_kind k) { return k != SMP_DDIM && k != SMP_LCM; }

/* alphas_cumprod[t] with Python's negative indexing (a "trailing" count
 * like 61 steps ends at t = -1 in diffusers, which torch wraps). */
static float acp_at(const struct smp_sampler *s, int64_t t) {
    const int N = s->cfg.num_train_timesteps;
    return s->acp[t < 0 ? t + N : t];
}

/* (Re)builds the schedule; on failure the previous one is kept, so a
 * rejected LCM strength leaves a usable sampler. */
static df_status build(struct smp_sampler *s, double strength) {
    struct smp_plan plan;
    df_status st = smp_plan_build(s->kind, &s->cfg, s->steps, strength, s->acp, &plan);
    if (st) return st;
    if (plan.count < 1) st = df_error(DF_EINVAL, "sampler: empty schedule");
    for (int i = 0; !st && i < plan.count; i++) {
        const float t = plan.timesteps[i];
        if (!isfinite(t)) st = df_error(DF_EINVAL, "sampler: non-finite timestep");
        else if (!sigma_based(s->kind) && (t < -s->cfg.num_train_timesteps || t >= s->cfg.num_train_timesteps))
            st = df_error(DF_EINVAL, "sampler: timestep %g outside the training range", t);
    }
    for (int i = 0; !st && plan.sigmas && i <= plan.count; i++)
        if (!isfinite(plan.sigmas[i])) st = df_error(DF_EINVAL, "sampler: non-finite sigma");
    if (st) {
        smp_plan_free(&plan);
        return st;
    }
    smp_plan_free(&s->plan);
    s->plan = plan;
    return DF_OK;
}

df_status smp_create(enum smp_kind kind, const struct smp_config *cfg, int steps, struct smp_sampler **out) {
    *out = NULL;
    if ((unsigned)kind >= SMP_KIND_COUNT) return df_error(DF_EINVAL, "unknown sampler kind %d", (int)kind);
    struct smp_config c;
    df_status st = resolve_config(kind, cfg, &c);
    if (st) return st;
    if (steps < 1 || steps > c.num_train_timesteps)
        return df_error(DF_EINVAL, "steps %d not in 1..%d", steps, c.num_train_timesteps);
    struct smp_sampler *s = calloc(1, sizeof *s);
    if (!s) return df_error(DF_ENOMEM, "sampler");
    s->kind = kind;
    s->cfg = c;
    s->steps = steps;
    if (kind != SMP_FLOW_EULER) {
        if ((st = smp_alphas_cumprod(&c, &s->acp))) goto fail;
        /* Euler/Heun/DPM++ set the last alphas_cumprod to 2^-24 after a
         * zero-SNR rescale so the largest sigma stays finite. */
        if (c.rescale_betas_zero_snr && sigma_based(kind)) s->acp[c.num_train_timesteps - 1] = 0x1p-24f;
        s->final_acp = c.set_alpha_to_one ? 1.0f : s->acp[0];
    }
    if ((st = build(s, 1.0))) goto fail;
    *out = s;
    return DF_OK;
fail:
    smp_destroy(s);
    return st;
}

void smp_destroy(struct smp_sampler *s) {
    if (!s) return;
    smp_plan_free(&s->plan);
    free(s->acp);
    free(s->state_a);
    free(s->state_b);
    free(s);
}

static bool started(const struct smp_sampler *s) { return s->index != s->begin || s->n != 0; }

df_status smp_set_begin_index(struct smp_sampler *s, int index) {
    if (started(s)) return df_error(DF_EINVAL, "sampler: begin index set after the first step");
    if (index < 0 || index >= s->plan.count)
        return df_error(DF_EINVAL, "sampler: begin index %d not in 0..%d", index, s->plan.count - 1);
    if (s->kind == SMP_HEUN && index % 2)
        return df_error(DF_EINVAL, "sampler: Heun must begin on a first-order evaluation (even index)");
    s->begin = s->index = index;
    return DF_OK;
}

df_status smp_set_strength(struct smp_sampler *s, double strength) {
    if (!(strength > 0 && strength <= 1)) return df_error(DF_EINVAL, "strength %g not in (0, 1]", strength);
    if (started(s)) return df_error(DF_EINVAL, "sampler: strength set after the first step");
    if (s->kind == SMP_LCM) {
        df_status st = build(s, strength);
        if (!st) s->begin = s->index = 0;
        return st;
    }
    /* get_timesteps: init_timestep = min(int(steps*strength), steps) */
    int init = (int)(s->steps * strength);
    if (init > s->steps) init = s->steps;
    const int t_start = s->steps - init > 0 ? s->steps - init : 0;
    if (init < 1) return df_error(DF_EINVAL, "strength %g leaves no step of %d", strength, s->steps);
    return smp_set_begin_index(s, t_start * smp_order(s));
}

int smp_order(const struct smp_sampler *s) { return s->kind == SMP_HEUN ? 2 : 1; }
int smp_n_evals(const struct smp_sampler *s) { return s->plan.count - s->begin; }
int smp_eval_index(const struct smp_sampler *s) { return s->index - s->begin; }
bool smp_done(const struct smp_sampler *s) { return s->index >= s->plan.count; }
float smp_init_noise_sigma(const struct smp_sampler *s) { return s->plan.init_noise_sigma; }

float smp_timestep(const struct smp_sampler *s) {
    return smp_done(s) ? 0.0f : s->plan.timesteps[s->index];
}

float smp_sigma(const struct smp_sampler *s) {
    if (smp_done(s)) return s->plan.sigmas ? s->plan.sigmas[s->plan.count] : 0.0f;
    if (s->plan.sigmas) return s->plan.sigmas[s->index];
    const float a = acp_at(s, (int64_t)s->plan.timesteps[s->index]);
    return sqrtf((1.0f - a) / a);
}

bool smp_needs_noise(const struct smp_sampler *s) {
    if (smp_done(s)) return false;
    if (s->kind == SMP_EULER_A) return true; /* drawn on the last step too */
    return s->kind == SMP_LCM && s->index != s->plan.count - 1;
}

const float *smp_timesteps(const struct smp_sampler *s, int *count) {
    *count = s->plan.count;
    return s->plan.timesteps;
}

const float *smp_sigmas(const struct smp_sampler *s, int *count) {
    *count = s->plan.sigmas ? s->plan.count + 1 : 0;
    return s->plan.sigmas;
}

df_status smp_model_input(struct smp_sampler *s, const float *x, float *x_in, size_t n) {
    if (smp_done(s)) return df_error(DF_EINVAL, "sampler: no evaluation left");
    if (s->kind == SMP_EULER || s->kind == SMP_EULER_A || s->kind == SMP_HEUN) {
        /* sample / ((sigma**2 + 1) ** 0.5) */
        const float sigma = s->plan.sigmas[s->index];
        const float den = sqrtf(sigma * sigma + 1.0f);
        for (size_t i = 0; i < n; i++) x_in[i] = x[i] / den;
    } else if (x_in != x) {
        memcpy(x_in, x, n * sizeof(float));
    }
    return DF_OK;
}

/* x0 from the model output in the k-diffusion parameterisation (Euler,
 * Euler a, Heun): epsilon x - sigma*eps; v: eps*c_out + x/(sigma^2+1). */
static float kdiff_x0(enum smp_prediction p, float x, float m, float sigma, float c_out, float c_in_den) {
    switch (p) {
    case SMP_PRED_V: return m * c_out + x / c_in_den;
    case SMP_PRED_SAMPLE: return m;
    default: return x - sigma * m;
    }
}

static float clampf(float v, float r) { return v < -r ? -r : (v > r ? r : v); }

static void step_euler(struct smp_sampler *s, const float *m, float *x, size_t n) {
    const float sigma = s->plan.sigmas[s->index], next = s->plan.sigmas[s->index + 1];
    const float sigma_hat = sigma; /* sigma * (gamma + 1), s_churn = 0 */
    const float den = sigma * sigma + 1.0f, c_out = -sigma / sqrtf(den);
    const float dt = next - sigma_hat;
    for (size_t i = 0; i < n; i++) {
        const float x0 = kdiff_x0(s->cfg.prediction_type, x[i], m[i], sigma_hat, c_out, den);
        const float d = (x[i] - x0) / sigma_hat;
        x[i] = x[i] + d * dt;
    }
}

static void step_euler_a(struct smp_sampler *s, const float *m, float *x, const float *noise, size_t n) {
    const float sigma = s->plan.sigmas[s->index], to = s->plan.sigmas[s->index + 1];
    const float den = sigma * sigma + 1.0f, c_out = -sigma / sqrtf(den);
    /* sigma_up = (to^2 * (from^2 - to^2) / from^2) ** 0.5 */
    const float up = sqrtf(to * to * (sigma * sigma - to * to) / (sigma * sigma));
    const float down = sqrtf(to * to - up * up);
    const float dt = down - sigma;
    for (size_t i = 0; i < n; i++) {
        const float x0 = kdiff_x0(s->cfg.prediction_type, x[i], m[i], sigma, c_out, den);
        const float d = (x[i] - x0) / sigma;
        const float prev = x[i] + d * dt;
        x[i] = prev + noise[i] * up;
    }
}

/* HeunDiscreteScheduler.step: even calls are the Euler sub-step (which
 * remembers derivative, dt and sample), odd calls the correction that
 * averages the derivatives and restarts from the remembered sample. */
static void step_heun(struct smp_sampler *s, const float *m, float *x, size_t n) {
    const float *sg = s->plan.sigmas;
    const bool second = s->heun_second;
    const float sigma = second ? sg[s->index - 1] : sg[s->index];
    const float next = second ? sg[s->index] : sg[s->index + 1];
    const float sigma_hat = sigma;
    const float sin = second ? next : sigma_hat; /* sigma_input */
    const float den = sin * sin + 1.0f, c_out = -sin / sqrtf(den);
    const bool clip = s->cfg.clip_sample;
    const float range = (float)s->cfg.clip_sample_range;
    if (!second) {
        const float dt = next - sigma_hat;
        for (size_t i = 0; i < n; i++) {
            float x0 = kdiff_x0(s->cfg.prediction_type, x[i], m[i], sin, c_out, den);
            if (clip) x0 = clampf(x0, range);
            const float d = (x[i] - x0) / sigma_hat;
            s->state_a[i] = d;
            s->state_b[i] = x[i];
            x[i] = x[i] + d * dt;
        }
        s->heun_dt = dt;
        s->heun_second = true;
    } else {
        const float dt = s->heun_dt;
        for (size_t i = 0; i < n; i++) {
            float x0 = kdiff_x0(s->cfg.prediction_type, x[i], m[i], sin, c_out, den);
            if (clip) x0 = clampf(x0, range);
            const float d2 = (x[i] - x0) / next;
            const float d = (s->state_a[i] + d2) / 2.0f;
            x[i] = s->state_b[i] + d * dt;
        }
        s->heun_second = false;
    }
}

/* torch.exp on a float32 CPU tensor: SLEEF's expf_u10 (Cody-Waite
 * reduction, degree-6 polynomial, fused multiply-adds), which is not always
 * correctly rounded: for DPM++'s exp(-h) it is 1 ulp off glibc's expf at
 * the oracle's first step, and the multistep update amplifies that to
 * ~1e-7 of the latent. With it DPM++ lands at the stand-in's noise floor. */
static float sleef_expf(float d) {
    if (isnan(d)) return d;
    if (d < -104) return 0; /* (the final step's exp(-inf)) */
    if (d > 100) return INFINITY;
    const int q = (int)rintf(d * 1.442695040888963407359924681001892137426645954152985934135449406931f);
    float s = fmaf((float)q, -0.693145751953125f, d);
    s = fmaf((float)q, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    return ldexpf(u, q);
}

/* DPMSolverMultistepScheduler._sigma_to_alpha_sigma_t and lambda. */
static void dpm_alpha_sigma(float sigma, float *alpha_t, float *sigma_t, float *lambda) {
    *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha_t;
    *lambda = logf(*alpha_t) - logf(*sigma_t);
}

/* dpmsolver++ (data prediction), midpoint, order 2; the first step and the
 * last (lower_order_final, final sigma 0) are first order. */
static void step_dpm(struct smp_sampler *s, const float *m, float *x, size_t n) {
    const float *sg = s->plan.sigmas;
    const int i = s->index, count = s->plan.count;
    const bool lower_final = i == count - 1 &&
                             (s->cfg.euler_at_final || (s->cfg.lower_order_final && count < 15) ||
                              s->cfg.final_sigmas_type == SMP_FINAL_ZERO);
    const bool first = s->lower_order_nums < 1 || lower_final;
    float a_s0, s_s0, l_s0, a_t, s_t, l_t;
    dpm_alpha_sigma(sg[i], &a_s0, &s_s0, &l_s0);
    dpm_alpha_sigma(sg[i + 1], &a_t, &s_t, &l_t);
    const float h = l_t - l_s0;
    const float ratio = s_t / s_s0;
    const float coef = a_t * (sleef_expf(-h) - 1.0f);
    float r_inv = 0, half_coef = 0;
    if (!first) {
        float a_s1, s_s1, l_s1;
        dpm_alpha_sigma(sg[i - 1], &a_s1, &s_s1, &l_s1);
        const float h0 = l_s0 - l_s1;
        const float r0 = h0 / h;
        r_inv = 1.0f / r0;
        half_coef = 0.5f * coef;
    }
    float *prev = s->state_a;
    for (size_t j = 0; j < n; j++) {
        float x0; /* convert_model_output */
        switch (s->cfg.prediction_type) {
        case SMP_PRED_V: x0 = a_s0 * x[j] - s_s0 * m[j]; break;
        case SMP_PRED_SAMPLE: x0 = m[j]; break;
        default: x0 = (x[j] - s_s0 * m[j]) / a_s0; break;
        }
        if (first) {
            x[j] = ratio * x[j] - coef * x0;
        } else {
            const float d1 = r_inv * (x0 - prev[j]);
            x[j] = ratio * x[j] - coef * x0 - half_coef * d1;
        }
        prev[j] = x0;
    }
    if (s->lower_order_nums < 2) s->lower_order_nums++;
}

/* DDIMScheduler.step, eta = 0. */
static void step_ddim(struct smp_sampler *s, const float *m, float *x, size_t n) {
    const int64_t t = (int64_t)s->plan.timesteps[s->index];
    const int64_t prev_t = t - s->cfg.num_train_timesteps / s->steps;
    const float a_t = acp_at(s, t);
    const float a_prev = prev_t >= 0 ? acp_at(s, prev_t) : s->final_acp;
    const float b_t = 1.0f - a_t;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float dir = sqrtf(1.0f - a_prev - 0.0f); /* std_dev_t = 0 */
    const float sa_prev = sqrtf(a_prev);
    const bool clip = s->cfg.clip_sample;
    const float range = (float)s->cfg.clip_sample_range;
    for (size_t i = 0; i < n; i++) {
        float x0, eps;
        switch (s->cfg.prediction_type) {
        case SMP_PRED_V:
            x0 = sa * x[i] - sb * m[i];
            eps = sa * m[i] + sb * x[i];
            break;
        case SMP_PRED_SAMPLE:
            x0 = m[i];
            eps = (x[i] - sa * x0) / sb;
            break;
        default:
            x0 = (x[i] - sb * m[i]) / sa;
            eps = m[i];
            break;
        }
        if (clip) x0 = clampf(x0, range);
        x[i] = sa_prev * x0 + dir * eps;
    }
}

/* LCMScheduler.step: boundary-condition scalings, then re-noise to the
 * next timestep with the caller's draw (none on the last step). */
static void step_lcm(struct smp_sampler *s, const float *m, float *x, const float *noise, size_t n) {
    const int i = s->index, count = s->plan.count;
    const int64_t t = (int64_t)s->plan.timesteps[i];
    const int64_t prev_t = i + 1 < count ? (int64_t)s->plan.timesteps[i + 1] : t;
    const float a_t = acp_at(s, t);
    const float a_prev = prev_t >= 0 ? acp_at(s, prev_t) : s->final_acp;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    /* get_scalings_for_boundary_condition_discrete, sigma_data = 0.5 */
    const float scaled = (float)t * (float)s->cfg.timestep_scaling;
    const float c_skip = 0.25f / (scaled * scaled + 0.25f);
    const float c_out = scaled / sqrtf(scaled * scaled + 0.25f);
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float sa_prev = sqrtf(a_prev), sb_prev = sqrtf(b_prev);
    const bool last = i == count - 1;
    const bool clip = s->cfg.clip_sample;
    const float range = (float)s->cfg.clip_sample_range;
    for (size_t j = 0; j < n; j++) {
        float x0;
        switch (s->cfg.prediction_type) {
        case SMP_PRED_V: x0 = sa * x[j] - sb * m[j]; break;
        case SMP_PRED_SAMPLE: x0 = m[j]; break;
        default: x0 = (x[j] - sb * m[j]) / sa; break;
        }
        if (clip) x0 = clampf(x0, range);
        const float denoised = c_out * x0 + c_skip * x[j];
        x[j] = last ? denoised : sa_prev * denoised + sb_prev * noise[j];
    }
}

/* FlowMatchEulerDiscreteScheduler.step (0.29.2 form): denoised = x - v*sigma,
 * derivative (x - denoised)/sigma, x += derivative*dt. */
static void step_flow(struct smp_sampler *s, const float *m, float *x, size_t n) {
    const float sigma = s->plan.sigmas[s->index], next = s->plan.sigmas[s->index + 1];
    const float sigma_hat = sigma;
    const float dt = next - sigma_hat;
    for (size_t i = 0; i < n; i++) {
        const float denoised = x[i] - m[i] * sigma;
        const float d = (x[i] - denoised) / sigma_hat;
        x[i] = x[i] + d * dt;
    }
}

df_status smp_step(struct smp_sampler *s, const float *model_output, float *x, const float *noise, size_t n) {
    if (smp_done(s)) return df_error(DF_EINVAL, "sampler: no evaluation left");
    if (n == 0) return df_error(DF_EINVAL, "sampler: empty latent");
    if (s->n == 0) {
        /* first step: fixes the latent size and the state buffers */
        if (s->kind == SMP_HEUN || s->kind == SMP_DPMPP_2M) {
            s->state_a = malloc(n * sizeof(float));
            s->state_b = s->kind == SMP_HEUN ? malloc(n * sizeof(float)) : NULL;
            if (!s->state_a || (s->kind == SMP_HEUN && !s->state_b)) {
                free(s->state_a);
                free(s->state_b);
                s->state_a = s->state_b = NULL;
                return df_error(DF_ENOMEM, "sampler state");
            }
        }
        s->n = n;
    } else if (n != s->n) {
        return df_error(DF_EINVAL, "sampler: latent size changed from %zu to %zu", s->n, n);
    }
    if (smp_needs_noise(s) && !noise) return df_error(DF_EINVAL, "sampler %s: step needs noise", smp_kind_name(s->kind));
    switch (s->kind) {
    case SMP_EULER: step_euler(s, model_output, x, n); break;
    case SMP_EULER_A: step_euler_a(s, model_output, x, noise, n); break;
    case SMP_HEUN: step_heun(s, model_output, x, n); break;
    case SMP_DPMPP_2M: step_dpm(s, model_output, x, n); break;
    case SMP_DDIM: step_ddim(s, model_output, x, n); break;
    case SMP_LCM: step_lcm(s, model_output, x, noise, n); break;
    case SMP_FLOW_EULER: step_flow(s, model_output, x, n); break;
    case SMP_KIND_COUNT: break;
    }
    s->index++;
    return DF_OK;
}

df_status smp_add_noise(const struct smp_sampler *s, const float *x0, const float *noise, float *out, size_t n) {
    const int b = s->begin;
    switch (s->kind) {
    case SMP_EULER:
    case SMP_EULER_A:
    case SMP_HEUN: { /* original + noise * sigma */
        const float sigma = s->plan.sigmas[b];
        for (size_t i = 0; i < n; i++) out[i] = x0[i] + noise[i] * sigma;
        break;
    }
    case SMP_DPMPP_2M: { /* alpha_t * original + sigma_t * noise */
        float a, sg, l;
        dpm_alpha_sigma(s->plan.sigmas[b], &a, &sg, &l);
        for (size_t i = 0; i < n; i++) out[i] = a * x0[i] + sg * noise[i];
        break;
    }
    case SMP_DDIM:
    case SMP_LCM: { /* DDPMScheduler.add_noise */
        const float a = acp_at(s, (int64_t)s->plan.timesteps[b]);
        const float sa = sqrtf(a), sb = sqrtf(1.0f - a);
        for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + sb * noise[i];
        break;
    }
    case SMP_FLOW_EULER: { /* scale_noise: sigma * noise + (1 - sigma) * sample */
        const float sigma = s->plan.sigmas[b], keep = 1.0f - sigma;
        for (size_t i = 0; i < n; i++) out[i] = sigma * noise[i] + keep * x0[i];
        break;
    }
    case SMP_KIND_COUNT: return df_error(DF_EINVAL, "sampler: bad kind");
    }
    return DF_OK;
}
