/* Tests for models/sampler.c + models/schedule.c: the twelve sched_* oracle
 * cases (diffusers 0.29.2 schedulers driven by an analytic stand-in model)
 * are replayed through the sampler and every recorded tensor compared;
 * plus img2img noising, config parsing, names and step-count edges.
 * Fixtures come from $DF_TEST_FIXTURES (default ../shared/fixtures).
 * Every helper is static: `make test` links this file with the library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../models/safetensors.h"
#include "../models/sampler.h"

/* Tolerances: schedules are compared at float32 rounding level, trajectories
 * at the brief's 1e-5 (they land near 1e-7). */
#define TOL_SCHED 1e-6
#define TOL_TRACE 1e-5

static const char *ts_fixture_dir(void) {
    const char *d = getenv("DF_TEST_FIXTURES");
    return d && *d ? d : "../shared/fixtures";
}

static json_t *ts_manifest;

static int ts_setup(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest.json", ts_fixture_dir());
    json_error_t err;
    ts_manifest = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!ts_manifest) fprintf(stderr, "cannot load %s: %s\n", path, err.text);
    return ts_manifest ? 0 : -1;
}

static int ts_teardown(void **state) {
    (void)state;
    json_decref(ts_manifest);
    return 0;
}

static const json_t *ts_case(const char *name) {
    const json_t *cases = json_object_get(ts_manifest, "cases");
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *n = json_object_get(c, "name");
        if (json_is_string(n) && !strcmp(json_string_value(n), name)) return c;
    }
    fail_msg("case %s not in the manifest", name);
    return NULL;
}

/* A tensor of the case file as a malloc'd float array. */
static float *ts_tensor(struct st_file *f, const char *name, int64_t *numel) {
    const struct st_tensor *t = st_find(f, name);
    if (!t) return NULL;
    float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    assert_non_null(v);
    assert_int_equal(st_to_f32(t, v), DF_OK);
    if (numel) *numel = t->numel;
    return v;
}

static double ts_rel_l2(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        const double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The oracle's stand-in model: 0.5*tanh(x_in) + 0.1*(t/1000), in float32
 * as torch evaluates it. */
static void ts_standin(const float *x_in, float t, float *eps, size_t n) {
    const float bias = 0.1f * (t / 1000.0f);
    for (size_t i = 0; i < n; i++) eps[i] = 0.5f * tanhf(x_in[i]) + bias;
}

/* sched_euler_cfg: e_u = 0.4*tanh + 0.1*t/1000, e_c = 0.5*tanh + 0.1*t/1000
 * + 0.02, combined as the pipeline does: eps = e_u + g*(e_c - e_u). */
static void ts_standin_cfg(const float *x_in, float t, float g, float *eps, size_t n) {
    const float bias = 0.1f * (t / 1000.0f);
    for (size_t i = 0; i < n; i++) {
        const float th = tanhf(x_in[i]);
        const float eu = 0.4f * th + bias;
        const float ec = 0.5f * th + bias + 0.02f;
        eps[i] = eu + g * (ec - eu);
    }
}

struct ts_result {
    double ts, sig, init, inputs, trace, final;
};

/* Replays one sched_* case; fails if any error exceeds its tolerance. */
static void ts_run_case(const char *name, enum smp_kind kind, struct ts_result *r) {
    const json_t *c = ts_case(name);
    struct smp_config cfg = kind == SMP_FLOW_EULER ? smp_config_default_sd3() : smp_config_default_sd15();
    assert_int_equal(smp_config_from_json(json_object_get(c, "config"), &cfg), DF_OK);
    const int steps = (int)json_integer_value(json_object_get(c, "num_inference_steps"));
    const json_t *gs = json_object_get(c, "guidance_scale");

    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", ts_fixture_dir(), name);
    struct st_file *f = NULL;
    assert_int_equal(st_open(path, &f), DF_OK);
    int64_t n64 = 0, nts = 0, nsig = 0;
    float *noise = ts_tensor(f, "in.noise", &n64);
    float *x_init = ts_tensor(f, "in.x_init", NULL);
    float *step_noise = ts_tensor(f, "in.step_noise", NULL);
    float *ref_ts = ts_tensor(f, "out.timesteps", &nts);
    float *ref_sig = ts_tensor(f, "out.sigmas", &nsig);
    float *ref_in = ts_tensor(f, "out.model_inputs", NULL);
    float *ref_trace = ts_tensor(f, "out.trace", NULL);
    float *ref_final = ts_tensor(f, "out.final", NULL);
    assert_non_null(noise);
    assert_non_null(x_init);
    assert_non_null(ref_ts);
    assert_non_null(ref_in);
    assert_non_null(ref_trace);
    assert_non_null(ref_final);
    const size_t n = (size_t)n64;

    struct smp_sampler *s = NULL;
    assert_int_equal(smp_create(kind, &cfg, steps, &s), DF_OK);
    memset(r, 0, sizeof *r);

    int count = 0;
    const float *ts = smp_timesteps(s, &count);
    assert_int_equal(count, (int)nts);
    assert_int_equal(smp_n_evals(s), (int)nts);
    r->ts = ts_rel_l2(ts, ref_ts, (size_t)nts);
    if (ref_sig) {
        int scount = 0;
        const float *sig = smp_sigmas(s, &scount);
        assert_non_null(sig);
        assert_int_equal(scount, (int)nsig);
        r->sig = ts_rel_l2(sig, ref_sig, (size_t)nsig);
    }
    const double want_init = json_number_value(json_object_get(c, "init_noise_sigma"));
    assert_true(fabs(smp_init_noise_sigma(s) - want_init) <= 1e-7 * want_init);

    /* x = noise * init_noise_sigma is how the pipeline starts */
    float *x = malloc(n * sizeof(float)), *x_in = malloc(n * sizeof(float)), *eps = malloc(n * sizeof(float));
    assert_true(x && x_in && eps);
    for (size_t i = 0; i < n; i++) x[i] = noise[i] * smp_init_noise_sigma(s);
    r->init = ts_rel_l2(x, x_init, n);
    memcpy(x, x_init, n * sizeof(float));
    assert_true(ts_rel_l2(x, ref_trace, n) == 0);

    int k = 0, step_draw = 0;
    while (!smp_done(s)) {
        assert_int_equal(smp_eval_index(s), k);
        assert_int_equal(smp_model_input(s, x, x_in, n), DF_OK);
        const double ein = ts_rel_l2(x_in, ref_in + (size_t)k * n, n);
        if (ein > r->inputs) r->inputs = ein;
        const float t = smp_timestep(s);
        if (gs)
            ts_standin_cfg(x_in, t, (float)json_number_value(gs), eps, n);
        else
            ts_standin(x_in, t, eps, n);
        const float *z = NULL;
        if (smp_needs_noise(s)) {
            assert_non_null(step_noise);
            z = step_noise + (size_t)step_draw++ * n;
            assert_int_equal(smp_step(s, eps, x, NULL, n), DF_EINVAL); /* noise is required */
        }
        assert_int_equal(smp_step(s, eps, x, z, n), DF_OK);
        const double etr = ts_rel_l2(x, ref_trace + (size_t)(k + 1) * n, n);
        if (etr > r->trace) r->trace = etr;
        k++;
    }
    assert_int_equal(k, (int)nts);
    r->final = ts_rel_l2(x, ref_final, n);
    assert_int_equal(smp_step(s, eps, x, NULL, n), DF_EINVAL); /* past the end */

    printf("  %-22s timesteps %.2e  sigmas %.2e  x_init %.2e  model_inputs %.2e  trace %.2e  final %.2e\n",
           name, r->ts, r->sig, r->init, r->inputs, r->trace, r->final);
    assert_true(r->ts <= TOL_SCHED);
    assert_true(r->sig <= TOL_SCHED);
    assert_true(r->init <= TOL_SCHED);
    assert_true(r->inputs <= TOL_TRACE);
    assert_true(r->trace <= TOL_TRACE);
    assert_true(r->final <= TOL_TRACE);

    smp_destroy(s);
    st_close(f);
    free(x);
    free(x_in);
    free(eps);
    free(noise);
    free(x_init);
    free(step_noise);
    free(ref_ts);
    free(ref_sig);
    free(ref_in);
    free(ref_trace);
    free(ref_final);
}

#define TS_CASE(fn, name, kind)                                                                    \
    static void fn(void **state) {                                                                 \
        (void)state;                                                                               \
        struct ts_result r;                                                                        \
        ts_run_case(name, kind, &r);                                                               \
    }
TS_CASE(test_sched_euler, "sched_euler", SMP_EULER)
TS_CASE(test_sched_euler_cfg, "sched_euler_cfg", SMP_EULER)
TS_CASE(test_sched_euler_a, "sched_euler_a", SMP_EULER_A)
TS_CASE(test_sched_dpmpp_2m_karras, "sched_dpmpp_2m_karras", SMP_DPMPP_2M)
TS_CASE(test_sched_ddim, "sched_ddim", SMP_DDIM)
TS_CASE(test_sched_lcm, "sched_lcm", SMP_LCM)
TS_CASE(test_sched_flow_euler, "sched_flow_euler", SMP_FLOW_EULER)
TS_CASE(test_sched_heun, "sched_heun", SMP_HEUN)
TS_CASE(test_sched_euler_karras, "sched_euler_karras", SMP_EULER)
TS_CASE(test_sched_euler_trailing, "sched_euler_trailing", SMP_EULER)
TS_CASE(test_sched_euler_vpred, "sched_euler_vpred", SMP_EULER)
TS_CASE(test_sched_dpmpp_2m, "sched_dpmpp_2m", SMP_DPMPP_2M)

/* The oracle's integer timesteps are exact, not merely close. */
static void test_exact_schedules(void **state) {
    (void)state;
    static const struct {
        const char *name;
        enum smp_kind kind;
    } exact[] = {
        {"sched_ddim", SMP_DDIM},   {"sched_lcm", SMP_LCM}, {"sched_dpmpp_2m", SMP_DPMPP_2M},
        {"sched_dpmpp_2m_karras", SMP_DPMPP_2M}, {"sched_euler_trailing", SMP_EULER},
    };
    for (size_t e = 0; e < sizeof exact / sizeof exact[0]; e++) {
        const json_t *c = ts_case(exact[e].name);
        struct smp_config cfg = smp_config_default_sd15();
        assert_int_equal(smp_config_from_json(json_object_get(c, "config"), &cfg), DF_OK);
        struct smp_sampler *s = NULL;
        assert_int_equal(smp_create(exact[e].kind, &cfg,
                                    (int)json_integer_value(json_object_get(c, "num_inference_steps")), &s),
                         DF_OK);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.safetensors", ts_fixture_dir(), exact[e].name);
        struct st_file *f = NULL;
        assert_int_equal(st_open(path, &f), DF_OK);
        int64_t nts = 0;
        float *ref = ts_tensor(f, "out.timesteps", &nts);
        int count = 0;
        const float *ts = smp_timesteps(s, &count);
        assert_int_equal(count, (int)nts);
        for (int i = 0; i < count; i++) assert_true(ts[i] == ref[i]);
        free(ref);
        st_close(f);
        smp_destroy(s);
    }
}

/* Betas of SD1.x in float64, independent of the float32 table, to check
 * alphas_cumprod through DDIM's add_noise. */
static double ts_acp_f64(int t) {
    double acc = 1;
    for (int i = 0; i <= t; i++) {
        const double b = sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * i / 999.0;
        acc *= 1 - b * b;
    }
    return acc;
}

static void test_add_noise(void **state) {
    (void)state;
    enum { N = 64 };
    float x0[N], z[N], out[N];
    for (int i = 0; i < N; i++) {
        x0[i] = sinf((float)i * 0.37f);
        z[i] = cosf((float)i * 0.91f) * 1.3f;
    }
    const struct smp_config sd = smp_config_default_sd15(), sd3 = smp_config_default_sd3();
    for (int kind = 0; kind < SMP_KIND_COUNT; kind++) {
        struct smp_sampler *s = NULL;
        const int steps = kind == SMP_LCM ? 4 : 10;
        assert_int_equal(smp_create((enum smp_kind)kind, kind == SMP_FLOW_EULER ? &sd3 : &sd, steps, &s), DF_OK);
        assert_int_equal(smp_set_strength(s, 0.5), DF_OK);
        int count = 0;
        const float *ts = smp_timesteps(s, &count);
        const int b = count - smp_n_evals(s); /* the begin index */
        assert_int_equal(smp_eval_index(s), 0);
        assert_int_equal(smp_add_noise(s, x0, z, out, N), DF_OK);
        switch (kind) {
        case SMP_EULER:
        case SMP_EULER_A:
        case SMP_DPMPP_2M:
        case SMP_DDIM:
            /* get_timesteps(10, 0.5): t_start = 5 */
            assert_int_equal(smp_n_evals(s), 5);
            break;
        case SMP_HEUN: /* order 2: begins at evaluation 10 of 19 */
            assert_int_equal(b, 10);
            assert_int_equal(smp_n_evals(s), 9);
            break;
        case SMP_LCM: /* rebuilt from 25 training steps: 499, 379, 259, 139 */
            assert_int_equal(smp_n_evals(s), 4);
            assert_true(ts[0] == 499 && ts[1] == 379 && ts[2] == 259 && ts[3] == 139);
            break;
        case SMP_FLOW_EULER:
            assert_int_equal(smp_n_evals(s), 5);
            break;
        }
        const float sigma = smp_sigma(s);
        for (int i = 0; i < N; i++) {
            double want;
            switch (kind) {
            case SMP_DDIM:
            case SMP_LCM: {
                const double a = ts_acp_f64((int)smp_timestep(s));
                want = sqrt(a) * x0[i] + sqrt(1 - a) * z[i];
                break;
            }
            case SMP_DPMPP_2M: {
                const double a = 1 / sqrt((double)sigma * sigma + 1);
                want = a * x0[i] + sigma * a * z[i];
                break;
            }
            case SMP_FLOW_EULER: want = sigma * (double)z[i] + (1 - (double)sigma) * x0[i]; break;
            default: want = x0[i] + (double)z[i] * sigma; break;
            }
            assert_true(fabs(out[i] - want) <= 2e-6 * (1 + fabs(want)));
        }
        /* in place works too */
        float inplace[N];
        memcpy(inplace, x0, sizeof inplace);
        assert_int_equal(smp_add_noise(s, inplace, z, inplace, N), DF_OK);
        assert_memory_equal(inplace, out, sizeof out);
        smp_destroy(s);
    }
    /* DDIM at t_start 5 of "leading" 10 steps is t = 401 */
    struct smp_sampler *s = NULL;
    assert_int_equal(smp_create(SMP_DDIM, &sd, 10, &s), DF_OK);
    assert_int_equal(smp_set_strength(s, 0.5), DF_OK);
    assert_true(smp_timestep(s) == 401.0f);
    /* strength that leaves no step, or out of range */
    assert_int_equal(smp_set_strength(s, 0.05), DF_EINVAL);
    assert_int_equal(smp_set_strength(s, 0.0), DF_EINVAL);
    assert_int_equal(smp_set_strength(s, 1.5), DF_EINVAL);
    assert_int_equal(smp_set_strength(s, 1.0), DF_OK);
    assert_int_equal(smp_n_evals(s), 10);
    smp_destroy(s);
    /* LCM: 4 steps need int(50*strength) >= 4; a rejected strength keeps
     * the previous schedule */
    assert_int_equal(smp_create(SMP_LCM, &sd, 4, &s), DF_OK);
    assert_int_equal(smp_set_strength(s, 0.07), DF_EINVAL);
    assert_int_equal(smp_n_evals(s), 4);
    assert_true(smp_timestep(s) == 999.0f);
    assert_int_equal(smp_set_strength(s, 0.08), DF_OK); /* 4 training steps: 79, 59, 39, 19 */
    assert_true(smp_timestep(s) == 79.0f);
    smp_destroy(s);
    /* Heun cannot begin on a correction call */
    assert_int_equal(smp_create(SMP_HEUN, &sd, 10, &s), DF_OK);
    assert_int_equal(smp_set_begin_index(s, 3), DF_EINVAL);
    assert_int_equal(smp_set_begin_index(s, 4), DF_OK);
    assert_int_equal(smp_n_evals(s), 15);
    smp_destroy(s);
}

/* img2img run from a begin index: steps from the middle match a full run's
 * step arithmetic (Euler is memoryless) and DPM++ restarts first order. */
static void test_img2img_run(void **state) {
    (void)state;
    enum { N = 32 };
    const struct smp_config sd = smp_config_default_sd15();
    for (int kind = 0; kind < SMP_KIND_COUNT; kind++) {
        if (kind == SMP_FLOW_EULER) continue;
        struct smp_sampler *s = NULL;
        assert_int_equal(smp_create((enum smp_kind)kind, &sd, 8, &s), DF_OK);
        assert_int_equal(smp_set_strength(s, 0.75), DF_OK);
        float x[N], xin[N], e[N], z[N];
        for (int i = 0; i < N; i++) {
            x[i] = 0.1f * (float)(i - 16);
            z[i] = 0.05f * (float)(i % 7) - 0.1f;
        }
        assert_int_equal(smp_add_noise(s, x, z, x, N), DF_OK);
        int evals = 0;
        while (!smp_done(s)) {
            assert_int_equal(smp_model_input(s, x, xin, N), DF_OK);
            ts_standin(xin, smp_timestep(s), e, N);
            assert_int_equal(smp_step(s, e, x, smp_needs_noise(s) ? z : NULL, N), DF_OK);
            evals++;
        }
        assert_int_equal(evals, smp_n_evals(s));
        for (int i = 0; i < N; i++) assert_true(isfinite(x[i]));
        /* the begin index cannot move once running */
        assert_int_equal(smp_set_begin_index(s, 0), DF_EINVAL);
        smp_destroy(s);
    }
}

static char *ts_write_tmp(const char *text) {
    char *path = strdup("/tmp/test_sampler_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_config_json(void **state) {
    (void)state;
    /* SD1.5's scheduler_config.json is a PNDM one: DDIM fills the rest with
     * its own defaults ("leading"), Euler with its own ("linspace"). */
    static const char pndm[] =
        "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\", \"beta_end\": 0.012,"
        " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"num_train_timesteps\": 1000,"
        " \"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null,"
        " \"clip_sample\": false}";
    char *path = ts_write_tmp(pndm);
    struct smp_config cfg = smp_config_default_sd15();
    cfg.beta_end = 0.5; /* overwritten by the file */
    assert_int_equal(smp_config_load(path, &cfg), DF_OK);
    unlink(path);
    free(path);
    assert_true(cfg.beta_end == 0.012 && cfg.beta_start == 0.00085);
    assert_int_equal(cfg.beta_schedule, SMP_BETA_SCALED_LINEAR);
    assert_int_equal(cfg.steps_offset, 1);
    assert_int_equal(cfg.set_alpha_to_one, 0);
    assert_int_equal(cfg.clip_sample, 0);
    assert_int_equal(cfg.timestep_spacing, SMP_SPACING_AUTO);
    struct smp_sampler *s = NULL;
    int count;
    assert_int_equal(smp_create(SMP_DDIM, &cfg, 10, &s), DF_OK);
    assert_true(smp_timesteps(s, &count)[0] == 901.0f);
    smp_destroy(s);
    assert_int_equal(smp_create(SMP_EULER, &cfg, 10, &s), DF_OK);
    assert_true(smp_timesteps(s, &count)[1] == 888.0f);
    smp_destroy(s);

    /* A DPM++ config as Python writes it: -Infinity, karras, v-prediction. */
    static const char dpm[] =
        "{\"_class_name\": \"DPMSolverMultistepScheduler\", \"algorithm_type\": \"dpmsolver++\","
        " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
        " \"lambda_min_clipped\": -Infinity, \"prediction_type\": \"v_prediction\","
        " \"timestep_spacing\": \"trailing\", \"use_karras_sigmas\": true, \"final_sigmas_type\": \"sigma_min\","
        " \"note\": \"-Infinity stays a string\", \"variance_type\": null, \"sigma_min\": null}";
    path = ts_write_tmp(dpm);
    cfg = smp_config_default_sd15();
    assert_int_equal(smp_config_load(path, &cfg), DF_OK);
    unlink(path);
    free(path);
    assert_true(isinf(cfg.lambda_min_clipped) && cfg.lambda_min_clipped < 0);
    assert_int_equal(cfg.prediction_type, SMP_PRED_V);
    assert_int_equal(cfg.timestep_spacing, SMP_SPACING_TRAILING);
    assert_int_equal(cfg.schedule, SMP_SCHEDULE_KARRAS);
    assert_int_equal(cfg.final_sigmas_type, SMP_FINAL_SIGMA_MIN);
    assert_true(cfg.sigma_min == 0);

    /* SD3's FlowMatchEulerDiscreteScheduler config */
    json_t *o = json_loads("{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"num_train_timesteps\": 1000,"
                           " \"shift\": 3.0}", 0, NULL);
    assert_non_null(o);
    cfg = smp_config_default_sd3();
    cfg.shift = 1.0;
    assert_int_equal(smp_config_from_json(o, &cfg), DF_OK);
    assert_true(cfg.shift == 3.0);
    json_decref(o);

    /* what we cannot reproduce, and what is malformed */
    static const struct {
        const char *json;
        df_status want;
    } bad[] = {
        {"{\"beta_schedule\": \"sigmoid\"}", DF_EUNSUPPORTED},
        {"{\"trained_betas\": [0.1, 0.2]}", DF_EUNSUPPORTED},
        {"{\"prediction_type\": \"what\"}", DF_EUNSUPPORTED},
        {"{\"interpolation_type\": \"log_linear\"}", DF_EUNSUPPORTED},
        {"{\"thresholding\": true}", DF_EUNSUPPORTED},
        {"{\"timestep_type\": \"continuous\", \"prediction_type\": \"v_prediction\"}", DF_EUNSUPPORTED},
        {"{\"num_train_timesteps\": \"many\"}", DF_EFORMAT},
        {"{\"steps_offset\": 1.5}", DF_EFORMAT},
        {"{\"clip_sample\": 3}", DF_EFORMAT},
        {"{\"beta_schedule\": 7}", DF_EFORMAT},
        {"[1, 2]", DF_EFORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = json_loads(bad[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(o);
        struct smp_config before = smp_config_default_sd15(), c = before;
        assert_int_equal(smp_config_from_json(o, &c), bad[i].want);
        assert_memory_equal(&c, &before, sizeof c); /* untouched on failure */
        json_decref(o);
    }
    assert_int_equal(smp_config_load("/nonexistent/scheduler_config.json", &cfg), DF_EIO);
    path = ts_write_tmp("{\"beta_start\": ");
    assert_int_equal(smp_config_load(path, &cfg), DF_EFORMAT);
    unlink(path);
    free(path);
}

static void test_names(void **state) {
    (void)state;
    static const struct {
        const char *name;
        enum smp_kind kind;
    } kinds[] = {
        {"euler", SMP_EULER},     {"Euler", SMP_EULER},       {"euler_a", SMP_EULER_A},
        {"Euler a", SMP_EULER_A}, {"heun", SMP_HEUN},         {"Heun", SMP_HEUN},
        {"ddim", SMP_DDIM},       {"DDIM", SMP_DDIM},         {"dpmpp_2m", SMP_DPMPP_2M},
        {"DPM++ 2M", SMP_DPMPP_2M}, {"lcm", SMP_LCM},         {"LCM", SMP_LCM},
        {"flow_euler", SMP_FLOW_EULER},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        enum smp_kind k = SMP_KIND_COUNT;
        assert_int_equal(smp_kind_from_name(kinds[i].name, &k), DF_OK);
        assert_int_equal(k, kinds[i].kind);
    }
    for (int k = 0; k < SMP_KIND_COUNT; k++) {
        enum smp_kind back;
        assert_int_equal(smp_kind_from_name(smp_kind_name((enum smp_kind)k), &back), DF_OK);
        assert_int_equal(back, k);
    }
    static const struct {
        const char *name;
        enum smp_schedule sched;
    } scheds[] = {
        {"default", SMP_SCHEDULE_DEFAULT},         {"Automatic", SMP_SCHEDULE_DEFAULT},
        {"karras", SMP_SCHEDULE_KARRAS},           {"Karras", SMP_SCHEDULE_KARRAS},
        {"exponential", SMP_SCHEDULE_EXPONENTIAL}, {"Exponential", SMP_SCHEDULE_EXPONENTIAL},
        {"sgm_uniform", SMP_SCHEDULE_SGM_UNIFORM}, {"SGM Uniform", SMP_SCHEDULE_SGM_UNIFORM},
    };
    for (size_t i = 0; i < sizeof scheds / sizeof scheds[0]; i++) {
        enum smp_schedule sc = SMP_SCHEDULE_DEFAULT;
        assert_int_equal(smp_schedule_from_name(scheds[i].name, &sc), DF_OK);
        assert_int_equal(sc, scheds[i].sched);
        assert_int_equal(smp_schedule_from_name(smp_schedule_name(sc), &sc), DF_OK);
    }
    enum smp_kind k;
    enum smp_schedule sc;
    assert_int_equal(smp_kind_from_name("DPM++ 2M Karras", &k), DF_EINVAL);
    assert_int_equal(smp_kind_from_name("", &k), DF_EINVAL);
    assert_int_equal(smp_kind_from_name("EULER", &k), DF_EINVAL);
    assert_int_equal(smp_kind_from_name(NULL, &k), DF_EINVAL);
    assert_int_equal(smp_schedule_from_name("linear", &sc), DF_EINVAL);
    assert_int_equal(smp_schedule_from_name(NULL, &sc), DF_EINVAL);
    assert_string_equal(smp_kind_name(SMP_KIND_COUNT), "unknown");
}

/* Every sampler and schedule for 1 and 50 steps (and a few more) builds,
 * has finite decreasing sigmas and carries a latent to a finite result. */
static void test_step_counts(void **state) {
    (void)state;
    enum { N = 16 };
    static const int counts[] = {1, 2, 3, 7, 25, 50, 61, 150};
    for (int kind = 0; kind < SMP_KIND_COUNT; kind++)
        for (int sched = SMP_SCHEDULE_DEFAULT; sched <= SMP_SCHEDULE_SGM_UNIFORM; sched++)
            for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
                struct smp_config cfg = kind == SMP_FLOW_EULER ? smp_config_default_sd3() : smp_config_default_sd15();
                cfg.schedule = (enum smp_schedule)sched;
                struct smp_sampler *s = NULL;
                df_status st = smp_create((enum smp_kind)kind, &cfg, counts[ci], &s);
                const bool ramp = sched == SMP_SCHEDULE_KARRAS || sched == SMP_SCHEDULE_EXPONENTIAL;
                if ((ramp && (kind == SMP_DDIM || kind == SMP_LCM || kind == SMP_FLOW_EULER)) ||
                    (sched == SMP_SCHEDULE_SGM_UNIFORM && (kind == SMP_LCM || kind == SMP_FLOW_EULER))) {
                    assert_int_equal(st, DF_EUNSUPPORTED);
                    continue;
                }
                if (kind == SMP_LCM && counts[ci] > 50) { /* original_inference_steps */
                    assert_int_equal(st, DF_EINVAL);
                    continue;
                }
                assert_int_equal(st, DF_OK);
                int count = 0, scount = 0;
                const float *ts = smp_timesteps(s, &count);
                const float *sig = smp_sigmas(s, &scount);
                assert_true(count >= 1);
                for (int i = 0; i < count; i++) assert_true(isfinite(ts[i]));
                if (sig) {
                    assert_int_equal(scount, count + 1);
                    for (int i = 0; i < scount; i++) {
                        assert_true(isfinite(sig[i]) && sig[i] >= 0);
                        if (i) assert_true(sig[i] <= sig[i - 1]);
                    }
                }
                assert_true(isfinite(smp_init_noise_sigma(s)) && smp_init_noise_sigma(s) > 0);
                float x[N], xin[N], e[N], z[N];
                for (int i = 0; i < N; i++) {
                    z[i] = 0.1f * (float)(i - 8);
                    x[i] = z[i] * smp_init_noise_sigma(s);
                }
                int evals = 0;
                while (!smp_done(s)) {
                    assert_int_equal(smp_model_input(s, x, xin, N), DF_OK);
                    ts_standin(xin, smp_timestep(s), e, N);
                    assert_int_equal(smp_step(s, e, x, z, N), DF_OK);
                    evals++;
                }
                assert_int_equal(evals, count);
                assert_int_equal(smp_eval_index(s), count);
                for (int i = 0; i < N; i++) assert_true(isfinite(x[i]));
                smp_destroy(s);
            }
    /* diffusers' "trailing" arange(1000, 0, -1000/61) has 62 entries: kept */
    struct smp_config cfg = smp_config_default_sd15();
    cfg.timestep_spacing = SMP_SPACING_TRAILING;
    struct smp_sampler *s = NULL;
    int count = 0;
    assert_int_equal(smp_create(SMP_EULER, &cfg, 61, &s), DF_OK);
    const float *ts = smp_timesteps(s, &count);
    assert_int_equal(count, 62);
    assert_true(ts[0] == 999 && ts[61] == -1);
    smp_destroy(s);
    /* Heun evaluates 2n-1 times */
    cfg = smp_config_default_sd15();
    assert_int_equal(smp_create(SMP_HEUN, &cfg, 1, &s), DF_OK);
    assert_int_equal(smp_n_evals(s), 1);
    assert_int_equal(smp_order(s), 2);
    smp_destroy(s);
}

static void test_invalid(void **state) {
    (void)state;
    struct smp_config cfg = smp_config_default_sd15();
    struct smp_sampler *s = (struct smp_sampler *)&cfg;
    for (int kind = 0; kind < SMP_KIND_COUNT; kind++) {
        struct smp_config c = kind == SMP_FLOW_EULER ? smp_config_default_sd3() : cfg;
        assert_int_equal(smp_create((enum smp_kind)kind, &c, 0, &s), DF_EINVAL);
        assert_null(s);
        assert_int_equal(smp_create((enum smp_kind)kind, &c, 1001, &s), DF_EINVAL);
        assert_int_equal(smp_create((enum smp_kind)kind, &c, -5, &s), DF_EINVAL);
    }
    assert_int_equal(smp_create(SMP_KIND_COUNT, &cfg, 10, &s), DF_EINVAL);
    assert_int_equal(smp_create(SMP_LCM, &cfg, 51, &s), DF_EINVAL);
    /* prediction types that do not fit the sampler */
    struct smp_config c = cfg;
    c.prediction_type = SMP_PRED_FLOW;
    assert_int_equal(smp_create(SMP_EULER, &c, 10, &s), DF_EUNSUPPORTED);
    c = smp_config_default_sd3();
    c.prediction_type = SMP_PRED_EPSILON;
    assert_int_equal(smp_create(SMP_FLOW_EULER, &c, 10, &s), DF_EUNSUPPORTED);
    c = cfg;
    c.beta_start = -1;
    assert_int_equal(smp_create(SMP_EULER, &c, 10, &s), DF_EINVAL);
    c = cfg;
    c.num_train_timesteps = 1;
    assert_int_equal(smp_create(SMP_EULER, &c, 1, &s), DF_EINVAL);
    /* a latent whose size changes mid-run */
    assert_int_equal(smp_create(SMP_DPMPP_2M, &cfg, 4, &s), DF_OK);
    float x[8] = {0}, e[8] = {0};
    assert_int_equal(smp_step(s, e, x, NULL, 8), DF_OK);
    assert_int_equal(smp_step(s, e, x, NULL, 4), DF_EINVAL);
    assert_int_equal(smp_set_strength(s, 0.5), DF_EINVAL); /* after the first step */
    smp_destroy(s);
    smp_destroy(NULL);
}

/* Other configs the oracle does not cover still give sane schedules:
 * v-prediction DDIM/DPM++/Heun/LCM, leading Euler, zero-SNR, cosine betas,
 * clip_sample, final sigma_min. */
static void test_variants(void **state) {
    (void)state;
    enum { N = 16 };
    for (int variant = 0; variant < 6; variant++)
        for (int kind = 0; kind < SMP_FLOW_EULER; kind++) {
            struct smp_config cfg = smp_config_default_sd15();
            switch (variant) {
            case 0: cfg.prediction_type = SMP_PRED_V; break;
            case 1: cfg.timestep_spacing = SMP_SPACING_LEADING; break;
            case 2: cfg.rescale_betas_zero_snr = true; cfg.prediction_type = SMP_PRED_V; break;
            case 3: cfg.beta_schedule = SMP_BETA_SQUAREDCOS_CAP_V2; cfg.lambda_min_clipped = -5.1; break;
            case 4: cfg.clip_sample = 1; cfg.prediction_type = SMP_PRED_SAMPLE; break;
            case 5: cfg.final_sigmas_type = SMP_FINAL_SIGMA_MIN; cfg.beta_schedule = SMP_BETA_LINEAR; break;
            }
            struct smp_sampler *s = NULL;
            assert_int_equal(smp_create((enum smp_kind)kind, &cfg, 12, &s), DF_OK);
            float x[N], xin[N], e[N], z[N];
            for (int i = 0; i < N; i++) {
                z[i] = 0.1f * (float)(i - 8);
                x[i] = z[i] * smp_init_noise_sigma(s);
            }
            while (!smp_done(s)) {
                /* zero-SNR leaves DDIM/LCM an infinite sigma at t = 999 */
                assert_true(isfinite(smp_sigma(s)) || (variant == 2 && (kind == SMP_DDIM || kind == SMP_LCM)));
                assert_int_equal(smp_model_input(s, x, xin, N), DF_OK);
                ts_standin(xin, smp_timestep(s), e, N);
                assert_int_equal(smp_step(s, e, x, z, N), DF_OK);
            }
            for (int i = 0; i < N; i++) assert_true(isfinite(x[i]));
            if (variant == 1 && kind == SMP_EULER) { /* leading: sqrt(sigma_max^2 + 1) */
                int sc = 0;
                const float *sg = smp_sigmas(s, &sc);
                assert_true(smp_init_noise_sigma(s) == sqrtf(sg[0] * sg[0] + 1.0f));
                assert_true(smp_timesteps(s, &sc)[0] == 11 * 83 + 1); /* (n-1)*(1000//n) + offset */
            }
            smp_destroy(s);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_euler),
        cmocka_unit_test(test_sched_euler_cfg),
        cmocka_unit_test(test_sched_euler_a),
        cmocka_unit_test(test_sched_dpmpp_2m_karras),
        cmocka_unit_test(test_sched_ddim),
        cmocka_unit_test(test_sched_lcm),
        cmocka_unit_test(test_sched_flow_euler),
        cmocka_unit_test(test_sched_heun),
        cmocka_unit_test(test_sched_euler_karras),
        cmocka_unit_test(test_sched_euler_trailing),
        cmocka_unit_test(test_sched_euler_vpred),
        cmocka_unit_test(test_sched_dpmpp_2m),
        cmocka_unit_test(test_exact_schedules),
        cmocka_unit_test(test_add_noise),
        cmocka_unit_test(test_img2img_run),
        cmocka_unit_test(test_config_json),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_step_counts),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_variants),
    };
    return cmocka_run_group_tests(tests, ts_setup, ts_teardown);
}
