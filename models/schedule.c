/* schedule: noise tables and timestep/sigma schedules, bit-exact with
 * diffusers 0.29.2. Every helper names the numpy/torch call it stands for;
 * the order of operations and the float32/float64 boundaries are theirs,
 * because timesteps and sigmas are compared (and fed to the model) exactly. */
#include "schedule.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/npmath.h"

/* Bit-exactness needs every a*b + c rounded twice, as torch and numpy do;
 * GCC in -std=c11 mode never contracts, clang would within an expression. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ((1 - acp) / acp) ** 0.5 as the schedulers compute it in float32. */
static float sigma_of(float acp) { return sqrtf((1.0f - acp) / acp); }

/* ---- numpy / torch primitives --------------------------------------- */

/* np.linspace(start, stop, num, endpoint) in float64: i*step + start, the
 * endpoint stored exactly. */
static void np_linspace(double start, double stop, int num, bool endpoint, double *out) {
    const int div = endpoint ? num - 1 : num;
    const double delta = stop - start;
    if (div > 0) {
        const double step = delta / div;
        for (int i = 0; i < num; i++)
            out[i] = step == 0 ? (double)i / div * delta + start : (double)i * step + start;
    } else {
        for (int i = 0; i < num; i++) out[i] = (double)i * delta + start;
    }
    if (endpoint && num > 1) out[num - 1] = stop;
}

/* len(np.arange(start, stop, step)) for a float step: ceil((stop-start)/step).
 * It can exceed the intended count by one (e.g. arange(1000, 0, -1000/61)
 * has 62 entries, the last ~1e-13), and diffusers keeps that entry. */
static int np_arange_len(double start, double stop, double step) {
    double v = ceil((stop - start) / step);
    return v > 0 ? (int)v : 0;
}

/* np.arange(start, stop, step) values: numpy stores start and start+step
 * and fills the rest as start + i*(second - first). */
static void np_arange(double start, double step, int len, double *out) {
    if (len > 0) out[0] = start;
    if (len > 1) out[1] = start + step;
    const double delta = len > 1 ? out[1] - out[0] : 0;
    for (int i = 2; i < len; i++) out[i] = start + i * delta;
}

/* np.interp(x, arange(n), fp) with fp a float32 table (numpy's
 * arr_interp: slope*(x - xp[j]) + fp[j], exact hits return fp[j]). */
static double np_interp(double x, const float *fp, int n) {
    if (isnan(x)) return x;
    if (x < 0) return fp[0];
    if (x >= n - 1) return fp[n - 1];
    int j = (int)floor(x);
    if ((double)j == x) return fp[j];
    const double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    double r = slope * (x - (double)j) + (double)fp[j];
    if (isnan(r)) r = slope * (x - (double)(j + 1)) + (double)fp[j + 1];
    return r;
}

/* The sigma table and its float32 logs (np.log(sigmas)). */
static void sigma_table(const float *acp, int n, float *table, float *log_sigmas) {
    for (int i = 0; i < n; i++) {
        table[i] = sigma_of(acp[i]);
        log_sigmas[i] = isnormal(table[i]) ? np_logf(table[i]) : logf(table[i]);
    }
}

/* EulerDiscreteScheduler._sigma_to_t(sigma, log_sigmas): invert the
 * log-sigma table piecewise linearly. Under numpy 1.x value-based casting
 * (the oracle's numpy) the float64 log_sigma meets float32 arrays, so the
 * distances and the weight w are float32; t itself is float64. */
static double sigma_to_t(double sigma, const float *log_sigmas, int n) {
    const double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    const float ls = (float)log_sigma;
    int low = 0;
    for (int i = 0; i < n; i++)
        if (ls - log_sigmas[i] >= 0.0f) low = i; /* argmax(cumsum(dists >= 0)) */
    if (low > n - 2) low = n - 2;
    const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    float w = (lo - ls) / (lo - hi);
    w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w); /* np.clip keeps NaN */
    return (double)(1.0f - w) * (double)low + (double)w * (double)(low + 1);
}

/* _convert_to_karras: rho = 7 ramp between sigma_max and sigma_min. */
static void karras_sigmas(double smin, double smax, int n, double *out) {
    const double rho = 7.0;
    np_linspace(0, 1, n, true, out); /* the ramp, overwritten in place */
    const double min_inv_rho = pow(smin, 1 / rho), max_inv_rho = pow(smax, 1 / rho);
    for (int i = 0; i < n; i++) out[i] = pow(max_inv_rho + out[i] * (min_inv_rho - max_inv_rho), rho);
}

/* _convert_to_exponential (diffusers >= 0.30; 0.29.2 has none): sigmas
 * evenly spaced in log. */
static void exponential_sigmas(double smin, double smax, int n, double *out) {
    np_linspace(log(smax), log(smin), n, true, out);
    for (int i = 0; i < n; i++) out[i] = exp(out[i]);
}

/* ---- noise tables ------------------------------------------------------ */

df_status smp_alphas_cumprod(const struct smp_config *cfg, float **out) {
    const int n = cfg->num_train_timesteps;
    float *b = malloc(sizeof(float) * (size_t)n);
    float *acp = malloc(sizeof(float) * (size_t)n);
    if (!b || !acp) {
        free(b);
        free(acp);
        return df_error(DF_ENOMEM, "sampler: alphas_cumprod");
    }
    /* The oracle's betas are torch.linspace(start, end, n, float32) with
     * the ends rounded to float32 but the ramp (and, for scaled_linear, its
     * square) formed in float64 and rounded once: this reproduces every
     * sigma-table entry the fixtures pin down exactly, where a float32 ramp
     * squared in float32 misses by 1-4 ulp at large t. */
    double *ramp = malloc(sizeof(double) * (size_t)n);
    if (!ramp) {
        free(b);
        free(acp);
        return df_error(DF_ENOMEM, "sampler: alphas_cumprod");
    }
    switch (cfg->beta_schedule) {
    case SMP_BETA_LINEAR:
        np_linspace((float)cfg->beta_start, (float)cfg->beta_end, n, true, ramp);
        for (int i = 0; i < n; i++) b[i] = (float)ramp[i];
        break;
    case SMP_BETA_SCALED_LINEAR: /* torch.linspace(beta_start**0.5, beta_end**0.5, n) ** 2 */
        np_linspace((float)pow(cfg->beta_start, 0.5), (float)pow(cfg->beta_end, 0.5), n, true, ramp);
        for (int i = 0; i < n; i++) b[i] = (float)(ramp[i] * ramp[i]);
        break;
    case SMP_BETA_SQUAREDCOS_CAP_V2: /* betas_for_alpha_bar, cosine, in float64 */
        for (int i = 0; i < n; i++) {
            const double t1 = (double)i / n, t2 = (double)(i + 1) / n;
            const double a1 = pow(cos((t1 + 0.008) / 1.008 * M_PI / 2), 2);
            const double a2 = pow(cos((t2 + 0.008) / 1.008 * M_PI / 2), 2);
            const double beta = 1 - a2 / a1;
            b[i] = (float)(beta < 0.999 ? beta : 0.999);
        }
        break;
    }
    free(ramp);
    /* torch.cumprod on the CPU accumulates float32 in double. */
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        acc *= (double)(1.0f - b[i]);
        acp[i] = (float)acc;
    }
    if (cfg->rescale_betas_zero_snr) {
        /* rescale_zero_terminal_snr, float32 like torch; then recompute. */
        float *s = b;
        for (int i = 0; i < n; i++) s[i] = sqrtf(acp[i]);
        const float s0 = s[0], sT = s[n - 1];
        const float scale = s0 / (s0 - sT);
        for (int i = 0; i < n; i++) {
            s[i] = (s[i] - sT) * scale;
            s[i] = s[i] * s[i]; /* alphas_bar */
        }
        acc = 1.0;
        float prev = s[0];
        for (int i = 0; i < n; i++) {
            const float alpha = i == 0 ? s[0] : s[i] / prev; /* cat([ab[0:1], ab[1:]/ab[:-1]]) */
            prev = s[i];
            const float beta = 1.0f - alpha;
            acc *= (double)(1.0f - beta);
            acp[i] = (float)acc;
        }
    }
    free(b);
    *out = acp;
    return DF_OK;
}

/* ---- per-scheduler set_timesteps -------------------------------------- */

/* Timesteps of the Euler family ("linspace" is float32 in numpy there,
 * "leading"/"trailing" integers), as float64 values of float32 numbers. */
static df_status euler_timesteps(const struct smp_config *cfg, int steps, double **out, int *count) {
    const int N = cfg->num_train_timesteps;
    int len = steps;
    if (cfg->timestep_spacing == SMP_SPACING_TRAILING) len = np_arange_len(N, 0, -((double)N / steps));
    double *t = malloc(sizeof(double) * (size_t)(len > 0 ? len : 1));
    if (!t) return df_error(DF_ENOMEM, "sampler: timesteps");
    switch (cfg->timestep_spacing) {
    case SMP_SPACING_LINSPACE:
        np_linspace(0, N - 1, steps, true, t);
        for (int i = 0; i < len; i++) t[i] = (float)t[i]; /* dtype=np.float32 */
        break;
    case SMP_SPACING_LEADING: {
        const int ratio = N / steps;
        for (int i = 0; i < len; i++) t[i] = (float)((int64_t)i * ratio) + (float)cfg->steps_offset;
        break;
    }
    case SMP_SPACING_TRAILING:
        np_arange(N, -((double)N / steps), len, t);
        for (int i = 0; i < len; i++) t[i] = (float)rint(t[i]) - 1.0f;
        break;
    default:
        free(t);
        return df_error(DF_EINVAL, "sampler: unresolved timestep spacing");
    }
    if (cfg->timestep_spacing != SMP_SPACING_TRAILING) /* [::-1] */
        for (int i = 0; i < len / 2; i++) {
            double tmp = t[i];
            t[i] = t[len - 1 - i];
            t[len - 1 - i] = tmp;
        }
    *out = t;
    *count = len;
    return DF_OK;
}

/* Fills `sig` with the karras/exponential ramp of `steps` sigmas between
 * the bounds (in_max/in_min unless the config sets them) and `t` with the
 * matching fractional timesteps. The ramp always has num_inference_steps
 * entries, whatever the count of the spacing it replaces. */
static void convert_sigmas(const struct smp_config *cfg, const float *log_sigmas, int N,
                           double in_max, double in_min, double *sig, double *t, int steps) {
    const double smin = cfg->sigma_min > 0 ? cfg->sigma_min : in_min;
    const double smax = cfg->sigma_max > 0 ? cfg->sigma_max : in_max;
    if (cfg->schedule == SMP_SCHEDULE_KARRAS)
        karras_sigmas(smin, smax, steps, sig);
    else
        exponential_sigmas(smin, smax, steps, sig);
    for (int i = 0; i < steps; i++) t[i] = sigma_to_t(sig[i], log_sigmas, N);
}

static bool ramp_schedule(const struct smp_config *cfg) {
    return cfg->schedule == SMP_SCHEDULE_KARRAS || cfg->schedule == SMP_SCHEDULE_EXPONENTIAL;
}

static df_status plan_alloc(struct smp_plan *p, int count, bool with_sigmas) {
    p->count = count;
    p->timesteps = malloc(sizeof(float) * (size_t)count);
    p->sigmas = with_sigmas ? malloc(sizeof(float) * (size_t)(count + 1)) : NULL;
    if (!p->timesteps || (with_sigmas && !p->sigmas)) {
        smp_plan_free(p);
        return df_error(DF_ENOMEM, "sampler: schedule");
    }
    return DF_OK;
}

/* EulerDiscrete / EulerAncestralDiscrete / HeunDiscrete set_timesteps. */
static df_status plan_euler(enum smp_kind kind, const struct smp_config *cfg, int steps,
                            const float *acp, struct smp_plan *p) {
    const int N = cfg->num_train_timesteps;
    double *t = NULL;
    int n = 0;
    df_status st = euler_timesteps(cfg, steps, &t, &n);
    if (st) return st;
    const int cap = n > steps ? n : steps;
    float *table = malloc(sizeof(float) * (size_t)N * 2);
    double *sig = malloc(sizeof(double) * (size_t)(cap + 1));
    if (!table || !sig || (ramp_schedule(cfg) && n < 1)) {
        st = table && sig ? df_error(DF_EINVAL, "sampler: empty schedule")
                          : df_error(DF_ENOMEM, "sampler: sigmas");
        goto out;
    }
    float *log_sigmas = table + N;
    sigma_table(acp, N, table, log_sigmas);
    for (int i = 0; i < n; i++) sig[i] = np_interp(t[i], table, N);
    if (ramp_schedule(cfg)) {
        /* the bounds are the ends of the interpolated sigmas, so "leading"
         * ends at sigma(steps_offset), not at the table's minimum */
        if (steps > n) {
            double *grown = realloc(t, sizeof(double) * (size_t)steps);
            if (!grown) {
                st = df_error(DF_ENOMEM, "sampler: sigmas");
                goto out;
            }
            t = grown;
        }
        convert_sigmas(cfg, log_sigmas, N, sig[0], sig[n - 1], sig, t, steps);
        n = steps;
    }
    /* final_sigmas_type exists on EulerDiscrete only (Heun and Euler a
     * always end at 0). */
    sig[n] = kind == SMP_EULER && cfg->final_sigmas_type == SMP_FINAL_SIGMA_MIN ? sigma_of(acp[0]) : 0.0;

    /* Heun interleaves: [t0, t1, t1, ..., t_{n-1}, t_{n-1}] and
     * [s0, s1, s1, ..., s_{n-1}, s_{n-1}, s_n]. */
    const int count = kind == SMP_HEUN ? 2 * n - 1 : n;
    if ((st = plan_alloc(p, count, true))) goto out;
    for (int k = 0; k < count; k++) {
        const int i = kind == SMP_HEUN ? (k + 1) / 2 : k;
        p->timesteps[k] = (float)t[i];
        p->sigmas[k] = (float)sig[i];
    }
    p->sigmas[count] = (float)sig[n];
    /* init_noise_sigma: sigmas.max() for "linspace"/"trailing", else
     * (max^2 + 1)^0.5 in float32. */
    float mx = p->sigmas[0];
    for (int k = 1; k <= count; k++) mx = p->sigmas[k] > mx ? p->sigmas[k] : mx;
    p->init_noise_sigma =
        cfg->timestep_spacing == SMP_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
out:
    free(t);
    free(table);
    free(sig);
    return st;
}

/* DPMSolverMultistepScheduler.set_timesteps: integer timesteps over
 * [0, last_timestep), karras timesteps rounded. */
static df_status plan_dpm(const struct smp_config *cfg, int steps, const float *acp,
                          struct smp_plan *p) {
    const int N = cfg->num_train_timesteps;
    /* clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped): the
     * count of the smallest lambdas (largest t) below the clip. */
    int clipped = 0;
    for (int i = N - 1; i >= 0; i--) {
        const float lambda = logf(sqrtf(acp[i])) - logf(sqrtf(1.0f - acp[i]));
        if (!((double)lambda < cfg->lambda_min_clipped)) break;
        clipped++;
    }
    const int last = N - clipped;
    int n = steps;
    if (cfg->timestep_spacing == SMP_SPACING_TRAILING) n = np_arange_len(last, 0, -((double)N / steps));
    const int cap = (n > steps ? n : steps) + 1;
    double *t = malloc(sizeof(double) * (size_t)cap);
    double *sig = malloc(sizeof(double) * (size_t)cap);
    double *y = malloc(sizeof(double) * (size_t)cap);
    float *table = malloc(sizeof(float) * (size_t)N * 2);
    df_status st = DF_OK;
    if (!t || !sig || !y || !table) {
        st = df_error(DF_ENOMEM, "sampler: dpm schedule");
        goto out;
    }
    switch (cfg->timestep_spacing) {
    case SMP_SPACING_LINSPACE: /* linspace(0, last-1, n+1).round()[::-1][:-1] */
        np_linspace(0, last - 1, steps + 1, true, y);
        for (int i = 0; i < steps; i++) t[i] = rint(y[steps - i]);
        break;
    case SMP_SPACING_LEADING: { /* (arange(n+1)*(last//(n+1))).round()[::-1][:-1] + offset */
        const int ratio = last / (steps + 1);
        for (int i = 0; i < steps; i++) t[i] = (double)((int64_t)(steps - i) * ratio + cfg->steps_offset);
        break;
    }
    case SMP_SPACING_TRAILING: /* arange(last, 0, -N/n).round() - 1 */
        np_arange(last, -((double)N / steps), n, t);
        for (int i = 0; i < n; i++) t[i] = rint(t[i]) - 1;
        break;
    default:
        st = df_error(DF_EINVAL, "sampler: unresolved timestep spacing");
        goto out;
    }
    float *log_sigmas = table + N;
    sigma_table(acp, N, table, log_sigmas);
    if (ramp_schedule(cfg)) {
        /* in_sigmas = np.flip(table): the whole training range, and the
         * timesteps of the ramp rounded to integers */
        convert_sigmas(cfg, log_sigmas, N, table[N - 1], table[0], sig, t, steps);
        n = steps;
        for (int i = 0; i < n; i++) t[i] = rint(t[i]);
    } else {
        for (int i = 0; i < n; i++) sig[i] = np_interp(t[i], table, N);
    }
    sig[n] = cfg->final_sigmas_type == SMP_FINAL_SIGMA_MIN ? sigma_of(acp[0]) : 0.0;
    if ((st = plan_alloc(p, n, true))) goto out;
    for (int i = 0; i < n; i++) {
        p->timesteps[i] = (float)(int64_t)t[i];
        p->sigmas[i] = (float)sig[i];
    }
    p->sigmas[n] = (float)sig[n];
    p->init_noise_sigma = 1.0f;
out:
    free(t);
    free(sig);
    free(y);
    free(table);
    return st;
}

/* DDIMScheduler.set_timesteps: integers. */
static df_status plan_ddim(const struct smp_config *cfg, int steps, struct smp_plan *p) {
    const int N = cfg->num_train_timesteps;
    int n = steps;
    if (cfg->timestep_spacing == SMP_SPACING_TRAILING) n = np_arange_len(N, 0, -((double)N / steps));
    double *t = malloc(sizeof(double) * (size_t)(n > steps ? n : steps));
    if (!t) return df_error(DF_ENOMEM, "sampler: ddim schedule");
    switch (cfg->timestep_spacing) {
    case SMP_SPACING_LINSPACE: /* linspace(0, N-1, n).round()[::-1] */
        np_linspace(0, N - 1, steps, true, t);
        for (int i = 0; i < steps / 2; i++) {
            double tmp = t[i];
            t[i] = t[steps - 1 - i];
            t[steps - 1 - i] = tmp;
        }
        for (int i = 0; i < steps; i++) t[i] = rint(t[i]);
        break;
    case SMP_SPACING_LEADING: {
        const int ratio = N / steps;
        for (int i = 0; i < steps; i++) t[i] = (double)((int64_t)(steps - 1 - i) * ratio + cfg->steps_offset);
        break;
    }
    case SMP_SPACING_TRAILING:
        np_arange(N, -((double)N / steps), n, t);
        for (int i = 0; i < n; i++) t[i] = rint(t[i]) - 1;
        break;
    default:
        free(t);
        return df_error(DF_EINVAL, "sampler: unresolved timestep spacing");
    }
    df_status st = plan_alloc(p, n, false);
    if (!st) {
        for (int i = 0; i < n; i++) p->timesteps[i] = (float)t[i];
        p->init_noise_sigma = 1.0f;
    }
    free(t);
    return st;
}

/* LCMScheduler.set_timesteps(steps, strength): evenly spaced picks from the
 * distillation schedule (original_inference_steps*strength of them). */
static df_status plan_lcm(const struct smp_config *cfg, int steps, double strength, struct smp_plan *p) {
    const int N = cfg->num_train_timesteps, orig = cfg->original_inference_steps;
    if (orig < 1 || orig > N)
        return df_error(DF_EINVAL, "sampler: original_inference_steps %d not in 1..%d", orig, N);
    const int k = N / orig;
    const int m = (int)(orig * strength); /* int(original_steps * strength) */
    if (m / steps < 1)
        return df_error(DF_EINVAL, "sampler: LCM takes at most %d steps (original_inference_steps %d x strength %g)",
                        m, orig, strength);
    double *idx = malloc(sizeof(double) * (size_t)steps);
    if (!idx) return df_error(DF_ENOMEM, "sampler: lcm schedule");
    np_linspace(0, m, steps, false, idx);
    df_status st = plan_alloc(p, steps, false);
    if (!st) {
        for (int i = 0; i < steps; i++) {
            const int j = (int)floor(idx[i]);   /* into the reversed schedule */
            p->timesteps[i] = (float)((int64_t)(m - j) * k - 1);
        }
        p->init_noise_sigma = 1.0f;
    }
    free(idx);
    return st;
}

/* FlowMatchEulerDiscreteScheduler (0.29.2): __init__ stores the shifted
 * float32 sigma table, set_timesteps spaces float64 timesteps between its
 * ends and shifts again. */
static df_status plan_flow(const struct smp_config *cfg, int steps, struct smp_plan *p) {
    const int N = cfg->num_train_timesteps;
    const float shift = (float)cfg->shift, shift_m1 = (float)(cfg->shift - 1);
    /* __init__: t = linspace(1, N, N, float32)[::-1]; s = t/N shifted, in
     * float32 torch. Only the ends are kept (sigma_max, sigma_min). */
    float ends[2];
    const float tt[2] = {(float)N, 1.0f};
    for (int i = 0; i < 2; i++) {
        const float s = tt[i] / (float)N;
        ends[i] = shift * s / (1.0f + shift_m1 * s);
    }
    const double smax = ends[0], smin = ends[1];
    double *t = malloc(sizeof(double) * (size_t)steps);
    if (!t) return df_error(DF_ENOMEM, "sampler: flow schedule");
    np_linspace(smax * N, smin * N, steps, true, t);
    df_status st = plan_alloc(p, steps, true);
    if (!st) {
        for (int i = 0; i < steps; i++) {
            const double s = t[i] / N;
            const float sf = (float)(cfg->shift * s / (1 + (cfg->shift - 1) * s));
            p->sigmas[i] = sf;
            p->timesteps[i] = sf * (float)N;
        }
        p->sigmas[steps] = 0.0f;
        p->init_noise_sigma = 1.0f;
    }
    free(t);
    return st;
}

df_status smp_plan_build(enum smp_kind kind, const struct smp_config *cfg, int steps,
                         double strength, const float *acp, struct smp_plan *out) {
    memset(out, 0, sizeof *out);
    switch (kind) {
    case SMP_EULER:
    case SMP_EULER_A:
    case SMP_HEUN: return plan_euler(kind, cfg, steps, acp, out);
    case SMP_DPMPP_2M: return plan_dpm(cfg, steps, acp, out);
    case SMP_DDIM: return plan_ddim(cfg, steps, out);
    case SMP_LCM: return plan_lcm(cfg, steps, strength, out);
    case SMP_FLOW_EULER: return plan_flow(cfg, steps, out);
    case SMP_KIND_COUNT: break;
    }
    return df_error(DF_EINVAL, "sampler: unknown kind %d", (int)kind);
}

void smp_plan_free(struct smp_plan *p) {
    free(p->timesteps);
    free(p->sigmas);
    p->timesteps = p->sigmas = NULL;
    p->count = 0;
}
