/* check_sched: the sched_* cases — diffusers 0.29.2 schedulers driven by the
 * oracle's analytic stand-in model instead of a UNet, so the sampler's
 * arithmetic is checked alone. The schedule (timesteps, sigmas,
 * init_noise_sigma) is compared first, then the trajectory is replayed from
 * in.x_init: every model input and every latent after a step against
 * out.model_inputs / out.trace, and the result against out.final.
 *
 * The sampler runs on the host in float32 whatever --fp16 says, so it is
 * held to its own bounds (schedules at float32 rounding, trajectories at
 * 1e-5) rather than to the device tolerance: a verdict that changed with
 * --fp16 would mean nothing here. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/sampler.h"

#define TOL_SCHED 1e-6 /* timesteps, sigmas, x_init: float32 rounding level */
#define TOL_TRACE 1e-5 /* model inputs and latents: they land near 1e-7 */

/* Manifest "component" -> sampler. Prefix match: variants append a note
 * ("EulerDiscreteScheduler + CFG", "... (use_karras_sigmas=True)"), and the
 * config of the case says what the note means. */
static const struct {
    const char *component;
    enum smp_kind kind;
} kinds[] = {
    {"EulerDiscreteScheduler", SMP_EULER},
    {"EulerAncestralDiscreteScheduler", SMP_EULER_A},
    {"HeunDiscreteScheduler", SMP_HEUN},
    {"DDIMScheduler", SMP_DDIM},
    {"DPMSolverMultistepScheduler", SMP_DPMPP_2M},
    {"LCMScheduler", SMP_LCM},
    {"FlowMatchEulerDiscreteScheduler", SMP_FLOW_EULER},
};

static df_status kind_of(const struct check_case *c, enum smp_kind *out) {
    const char *component = json_string_value(json_object_get(c->json, "component"));
    for (size_t i = 0; component && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strncmp(component, kinds[i].component, strlen(kinds[i].component)) == 0) {
            *out = kinds[i].kind;
            return DF_OK;
        }
    return df_error(DF_EUNSUPPORTED, "no sampler for component %s", component ? component : "?");
}

/* The oracle's stand-in model: 0.5*tanh(x_in) + 0.1*(t/1000), in float32 as
 * torch evaluates it. With guidance g it is evaluated twice as the pipeline
 * would (unconditional 0.4*tanh, conditional 0.5*tanh + 0.02) and combined
 * e_u + g*(e_c - e_u), so CFG's rounding is reproduced too. */
static void standin(const float *x_in, float t, bool cfg, float g, float *eps, size_t n) {
    const float bias = 0.1f * (t / 1000.0f);
    for (size_t i = 0; i < n; i++) {
        const float th = tanhf(x_in[i]);
        if (!cfg) {
            eps[i] = 0.5f * th + bias;
            continue;
        }
        const float eu = 0.4f * th + bias;
        const float ec = 0.5f * th + bias + 0.02f;
        eps[i] = eu + g * (ec - eu);
    }
}

/* Relative L2 of one step's slice; check_compare only takes whole tensors,
 * and a late step's error would drown in the large early latents there. */
static double rel_l2(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        const double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The larger error; NaN wins (fmax would drop it and hide a broken step). */
static double worse(double a, double b) {
    return b <= a ? a : b;
}

/* Records an error computed here the way check_compare records its own. */
static void record(struct check_case *c, const char *what, double err, double tol) {
    if (!(err <= tol)) c->failed = true;
    if (!(err <= c->max_err)) c->max_err = err;
    size_t used = strlen(c->detail);
    snprintf(c->detail + used, sizeof c->detail - used, "%s%s=%.2e", used ? " " : "", what, err);
}

/* A failure that is not an error measure (a count, a missing array). */
__attribute__((format(printf, 2, 3))) static void fail_note(struct check_case *c, const char *fmt, ...) {
    c->failed = true;
    size_t used = strlen(c->detail);
    if (used && used + 1 < sizeof c->detail) {
        c->detail[used++] = ' ';
        c->detail[used] = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail + used, sizeof c->detail - used, fmt, ap);
    va_end(ap);
}

/* The schedule as built by smp_create against out.timesteps/out.sigmas and
 * the manifest's init_noise_sigma. */
static df_status check_schedule(struct check_ctx *sctx, struct check_case *c, const struct smp_sampler *s,
                                int *count) {
    const float *ts = smp_timesteps(s, count);
    df_status st = check_compare(sctx, c, "out.timesteps", ts, *count);
    if (st != DF_OK) return st;
    if (smp_n_evals(s) != *count)
        fail_note(c, "%d evaluations for %d timesteps", smp_n_evals(s), *count);

    /* integral timesteps (DDIM, LCM, DPM++, trailing) go to the model as
     * they are: they must be exact, not merely close */
    float *ref;
    int64_t n;
    if ((st = check_tensor(c, "out.timesteps", &ref, &n)) != DF_OK) return st;
    bool integral = true;
    int differ = 0;
    for (int64_t i = 0; i < n; i++) integral = integral && ref[i] == floorf(ref[i]);
    for (int64_t i = 0; integral && i < n; i++) differ += ts[i] != ref[i];
    free(ref);
    if (differ) fail_note(c, "out.timesteps: %d of %lld integral timesteps inexact", differ, (long long)n);

    if (st_find(c->file, "out.sigmas")) {
        int scount = 0;
        const float *sig = smp_sigmas(s, &scount);
        if (!sig) fail_note(c, "out.sigmas: the sampler has none");
        else if ((st = check_compare(sctx, c, "out.sigmas", sig, scount)) != DF_OK) return st;
    }
    const json_t *want = json_object_get(c->json, "init_noise_sigma");
    if (json_is_number(want)) {
        const double w = json_number_value(want), got = smp_init_noise_sigma(s);
        record(c, "init_noise_sigma", w != 0 ? fabs(got - w) / fabs(w) : fabs(got), TOL_SCHED);
    }
    return DF_OK;
}

df_status check_sched(struct check_ctx *ctx, struct check_case *c) {
    enum smp_kind kind = SMP_KIND_COUNT; /* set by kind_of on success */
    df_status st = kind_of(c, &kind);
    if (st != DF_OK) return st;
    const json_t *config = json_object_get(c->json, "config");
    if (!json_is_object(config)) return df_error(DF_EFORMAT, "case %s has no scheduler config", c->name);
    /* from_config fills what the dict lacks with the class defaults: SD3's
     * for flow matching, the SD1.x PNDM config's otherwise */
    struct smp_config cfg = kind == SMP_FLOW_EULER ? smp_config_default_sd3() : smp_config_default_sd15();
    if ((st = smp_config_from_json(config, &cfg)) != DF_OK) return st;
    const int steps = check_config_int(c->json, "num_inference_steps", 0);
    if (steps <= 0) return df_error(DF_EFORMAT, "case %s has no num_inference_steps", c->name);
    const json_t *gs = json_object_get(c->json, "guidance_scale");
    const bool cfg_on = json_is_number(gs);
    const float g = cfg_on ? (float)json_number_value(gs) : 0;

    /* host-side bounds, never looser than what the checker was asked for */
    struct check_ctx sctx = *ctx, tctx = *ctx;
    sctx.tolerance = fmin(ctx->tolerance, TOL_SCHED);
    tctx.tolerance = fmin(ctx->tolerance, TOL_TRACE);

    struct smp_sampler *s = NULL;
    float *noise = NULL, *x_init = NULL, *step_noise = NULL, *ref_in = NULL, *ref_trace = NULL;
    float *x = NULL, *inputs = NULL, *eps = NULL;
    int64_t n64 = 0, nx = 0, nstep = 0, nin = 0, ntrace = 0;
    if ((st = check_tensor(c, "in.noise", &noise, &n64)) != DF_OK ||
        (st = check_tensor(c, "in.x_init", &x_init, &nx)) != DF_OK ||
        (st = check_tensor(c, "out.model_inputs", &ref_in, &nin)) != DF_OK ||
        (st = check_tensor(c, "out.trace", &ref_trace, &ntrace)) != DF_OK)
        goto done;
    if (st_find(c->file, "in.step_noise") && (st = check_tensor(c, "in.step_noise", &step_noise, &nstep)) != DF_OK)
        goto done;
    const size_t n = (size_t)n64;
    if (n == 0 || nx != n64) {
        st = df_error(DF_EFORMAT, "case %s: in.noise has %lld values, in.x_init %lld", c->name, (long long)n64,
                      (long long)nx);
        goto done;
    }
    if ((st = smp_create(kind, &cfg, steps, &s)) != DF_OK) goto done;

    int count = 0;
    if ((st = check_schedule(&sctx, c, s, &count)) != DF_OK) goto done;
    if (nin != (int64_t)count * n64 || ntrace != (int64_t)(count + 1) * n64) {
        st = df_error(DF_EFORMAT, "case %s: out.model_inputs/out.trace hold %lld/%lld values for %d evaluations",
                      c->name, (long long)nin, (long long)ntrace, count);
        goto done;
    }

    /* the pipeline starts from noise * init_noise_sigma; the replay starts
     * from the reference's own x_init so a schedule error is not counted
     * twice */
    x = malloc(n * sizeof *x);
    inputs = malloc(n * sizeof *inputs);
    eps = malloc(n * sizeof *eps);
    if (!x || !inputs || !eps) {
        st = df_error(DF_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) x[i] = noise[i] * smp_init_noise_sigma(s);
    if ((st = check_compare(&sctx, c, "in.x_init", x, n64)) != DF_OK) goto done;
    memcpy(x, x_init, n * sizeof *x);

    double worst_in = 0, worst_trace = rel_l2(x, ref_trace, n);
    int k = 0;
    int64_t draws = 0;
    while (!smp_done(s)) {
        if (k >= count) {
            st = df_error(DF_EFORMAT, "case %s: sampler runs past %d evaluations", c->name, count);
            goto done;
        }
        if ((st = smp_model_input(s, x, inputs, n)) != DF_OK) goto done;
        worst_in = worse(worst_in, rel_l2(inputs, ref_in + (size_t)k * n, n));
        standin(inputs, smp_timestep(s), cfg_on, g, eps, n);
        /* ancestral/LCM steps replay the scheduler's own recorded draws */
        const float *z = NULL;
        if (smp_needs_noise(s)) {
            if ((draws + 1) * n64 > nstep) {
                st = df_error(DF_EFORMAT, "case %s: in.step_noise lacks draw %lld", c->name, (long long)draws);
                goto done;
            }
            z = step_noise + draws++ * n64;
        }
        if ((st = smp_step(s, eps, x, z, n)) != DF_OK) goto done;
        worst_trace = worse(worst_trace, rel_l2(x, ref_trace + (size_t)(k + 1) * n, n));
        k++;
    }
    if (k != count) fail_note(c, "%d evaluations, expected %d", k, count);
    record(c, "out.model_inputs(worst step)", worst_in, tctx.tolerance);
    record(c, "out.trace(worst step)", worst_trace, tctx.tolerance);
    st = check_compare(&tctx, c, "out.final", x, n64);
done:
    smp_destroy(s);
    free(noise);
    free(x_init);
    free(step_noise);
    free(ref_in);
    free(ref_trace);
    free(x);
    free(inputs);
    free(eps);
    return st;
}
