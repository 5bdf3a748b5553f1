/* sampler: the diffusion samplers and their noise schedules, reproducing
 * Hugging Face diffusers 0.29.2 (EulerDiscrete, EulerAncestralDiscrete,
 * HeunDiscrete, DDIM, DPMSolverMultistep "dpmsolver++" order 2, LCM,
 * FlowMatchEulerDiscrete) to float32 precision.
 *
 * The model is evaluated elsewhere (on the GPU); the sampler only does the
 * per-element arithmetic between evaluations. A run is:
 *
 *     smp_create(kind, &cfg, steps, &s);
 *     smp_set_strength(s, 0.6);                 (img2img only)
 *     x = noise * smp_init_noise_sigma(s)       (txt2img)
 *     or smp_add_noise(s, x0, noise, x, n)      (img2img)
 *     while (!smp_done(s)) {
 *         smp_model_input(s, x, x_in, n);
 *         eps = model(x_in, smp_timestep(s));   (CFG combined by the caller)
 *         smp_step(s, eps, x, smp_needs_noise(s) ? randn : NULL, n);
 *     }
 *     smp_destroy(s);
 *
 * One smp_step per model evaluation: Heun evaluates twice per step, so its
 * smp_n_evals is 2*steps - 1 (diffusers interleaves its timesteps).
 * Timesteps and sigmas are computed in float64 and stored in float32 with
 * the same order of operations as diffusers/numpy/torch, so they match the
 * reference bit for bit; step arithmetic is float32 like torch's. */
#ifndef DF_SAMPLER_H
#define DF_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/status.h"

struct json_t; /* jansson */

enum smp_kind {
    SMP_EULER,      /* "euler"      EulerDiscreteScheduler            A1111 "Euler"    */
    SMP_EULER_A,    /* "euler_a"    EulerAncestralDiscreteScheduler   "Euler a"        */
    SMP_HEUN,       /* "heun"       HeunDiscreteScheduler             "Heun"           */
    SMP_DDIM,       /* "ddim"       DDIMScheduler, eta = 0            "DDIM"           */
    SMP_DPMPP_2M,   /* "dpmpp_2m"   DPMSolverMultistepScheduler       "DPM++ 2M"       */
    SMP_LCM,        /* "lcm"        LCMScheduler                      "LCM"            */
    SMP_FLOW_EULER, /* "flow_euler" FlowMatchEulerDiscreteScheduler (SD3)              */
    SMP_KIND_COUNT
};

/* Sigma spacing over the steps. DEFAULT is the scheduler's own (its
 * timestep_spacing); SGM_UNIFORM is diffusers' counterpart of the A1111 /
 * ComfyUI name, timestep_spacing = "trailing" (not bit-identical to
 * k-diffusion's sgm_uniform, which diffusers 0.29.2 does not have). */
enum smp_schedule {
    SMP_SCHEDULE_DEFAULT,
    SMP_SCHEDULE_KARRAS,      /* use_karras_sigmas: rho = 7 between sigma_min/max */
    SMP_SCHEDULE_EXPONENTIAL, /* use_exponential_sigmas (later diffusers' formula) */
    SMP_SCHEDULE_SGM_UNIFORM,
};

enum smp_beta_schedule { SMP_BETA_LINEAR, SMP_BETA_SCALED_LINEAR, SMP_BETA_SQUAREDCOS_CAP_V2 };

/* AUTO members take the scheduler class's own default, because diffusers'
 * from_config fills keys a model's scheduler_config.json lacks with the
 * defaults of the class it builds (DDIM and LCM default to "leading" spacing
 * and clip_sample/set_alpha_to_one differ per class). */
enum smp_prediction {
    SMP_PRED_AUTO,    /* epsilon; flow for SMP_FLOW_EULER */
    SMP_PRED_EPSILON,
    SMP_PRED_V,       /* "v_prediction" */
    SMP_PRED_SAMPLE,  /* "sample" (x0) */
    SMP_PRED_FLOW,    /* velocity, the only one SMP_FLOW_EULER takes */
};

enum smp_spacing {
    SMP_SPACING_AUTO, /* "leading" for DDIM and LCM, "linspace" otherwise */
    SMP_SPACING_LINSPACE,
    SMP_SPACING_LEADING,
    SMP_SPACING_TRAILING,
};

enum smp_final_sigma { SMP_FINAL_ZERO, SMP_FINAL_SIGMA_MIN };

/* Tri-state for booleans whose default depends on the class. */
enum { SMP_AUTO = -1 };

struct smp_config {
    int num_train_timesteps;      /* 1000 */
    double beta_start, beta_end;  /* 0.00085, 0.012 for SD */
    enum smp_beta_schedule beta_schedule;
    enum smp_prediction prediction_type;
    enum smp_spacing timestep_spacing;
    int steps_offset;             /* 1 for SD1.x/SDXL ("leading" adds it) */
    enum smp_schedule schedule;   /* a request may override it */
    enum smp_final_sigma final_sigmas_type; /* Euler, DPM++ */
    double sigma_min, sigma_max;  /* karras/exponential bounds; 0 = the table's */
    int set_alpha_to_one;         /* DDIM/LCM, SMP_AUTO = true */
    int clip_sample;              /* DDIM (AUTO = true)/Heun/LCM (AUTO = false) */
    double clip_sample_range;     /* 1.0 */
    bool rescale_betas_zero_snr;
    double lambda_min_clipped;    /* DPM++: -INFINITY unless a cosine config sets it */
    bool lower_order_final;       /* DPM++: true */
    bool euler_at_final;          /* DPM++: false */
    double shift;                 /* flow matching: SD3 uses 3.0 */
    int original_inference_steps; /* LCM: 50 */
    double timestep_scaling;      /* LCM: 10.0 */
};

/* Stable Diffusion 1.x/2.x/XL scheduler_config.json (a PNDM config:
 * scaled_linear 0.00085..0.012, steps_offset 1, set_alpha_to_one false,
 * clip_sample false); every AUTO field left to the sampler's class. */
struct smp_config smp_config_default_sd15(void);
/* SD3: FlowMatchEulerDiscreteScheduler(shift = 3.0). */
struct smp_config smp_config_default_sd3(void);
/* Overlays the keys present in a diffusers scheduler_config.json dict on
 * `cfg` (start from smp_config_default_*). Keys of other scheduler classes
 * are ignored; a value we cannot reproduce (trained_betas, an unknown
 * beta_schedule, interpolation_type "log_linear", ...) is DF_EUNSUPPORTED,
 * a malformed one DF_EFORMAT. */
df_status smp_config_from_json(const struct json_t *obj, struct smp_config *cfg);
/* Same, from a scheduler_config.json file, which must also give a usable
 * sampler (one Euler can be made from): errors name the file and the key.
 * On error *cfg is unchanged. */
df_status smp_config_load(const char *path, struct smp_config *cfg);

/* Names: ours ("euler", "euler_a", "heun", "ddim", "dpmpp_2m", "lcm",
 * "flow_euler") and A1111's ("Euler", "Euler a", "Heun", "DDIM", "DPM++ 2M",
 * "LCM"); schedules "default"/"Automatic", "karras"/"Karras",
 * "exponential"/"Exponential", "sgm_uniform"/"SGM Uniform". Unknown names
 * are DF_EINVAL. */
df_status smp_kind_from_name(const char *name, enum smp_kind *out);
const char *smp_kind_name(enum smp_kind kind);
df_status smp_schedule_from_name(const char *name, enum smp_schedule *out);
const char *smp_schedule_name(enum smp_schedule sched);
/* AUTOMATIC1111's labels ("Euler a", "DPM++ 2M"; "Automatic", "Karras"),
 * for infotext and the A1111-compatible API. */
const char *smp_kind_a1111_name(enum smp_kind kind);
const char *smp_schedule_a1111_name(enum smp_schedule sched);

struct smp_sampler;

/* Builds the schedule for `steps` inference steps (1..num_train_timesteps;
 * LCM also <= original_inference_steps). DF_EINVAL for a bad step count or
 * config, DF_EUNSUPPORTED for a schedule the sampler does not have (karras
 * with DDIM, LCM or flow). */
df_status smp_create(enum smp_kind kind, const struct smp_config *cfg, int steps,
                     struct smp_sampler **out);
void smp_destroy(struct smp_sampler *s);

/* img2img, before the first step: diffusers' get_timesteps, i.e.
 * init = min(int(steps*strength), steps), start at step max(steps - init, 0)
 * (times the order for Heun). LCM instead rebuilds its schedule from
 * int(original_inference_steps*strength) training steps, as its img2img
 * pipeline does. DF_EINVAL if no step would be left. */
df_status smp_set_strength(struct smp_sampler *s, double strength);
/* Starts at model evaluation `index` of the full schedule (set_begin_index). */
df_status smp_set_begin_index(struct smp_sampler *s, int index);

int smp_order(const struct smp_sampler *s);      /* 2 for Heun, else 1 */
int smp_n_evals(const struct smp_sampler *s);    /* evaluations from the begin index on */
int smp_eval_index(const struct smp_sampler *s); /* evaluations done, 0..smp_n_evals */
bool smp_done(const struct smp_sampler *s);
/* What the initial noise is multiplied by for txt2img. */
float smp_init_noise_sigma(const struct smp_sampler *s);
/* The timestep handed to the model for the next evaluation (fractional for
 * Euler "linspace"/karras, integral for DDIM/LCM/DPM++, sigma*1000 for flow). */
float smp_timestep(const struct smp_sampler *s);
/* The sigma of the next evaluation (for DDIM/LCM sqrt((1-acp)/acp)). */
float smp_sigma(const struct smp_sampler *s);
/* Whether the next smp_step consumes a standard-normal draw of n elements
 * (Euler a every step, LCM every step but the last). The draws must come
 * from the generator diffusers would use, in this order. */
bool smp_needs_noise(const struct smp_sampler *s);

/* scale_model_input: x_in = x / sqrt(sigma^2 + 1) for the Euler family,
 * a copy otherwise. x_in may equal x. */
df_status smp_model_input(struct smp_sampler *s, const float *x, float *x_in, size_t n);
/* Advances one model evaluation: x (n floats, in place) from the model's
 * output (after CFG). `noise` as smp_needs_noise says, else ignored. The
 * first call fixes n for the run. */
df_status smp_step(struct smp_sampler *s, const float *model_output, float *x,
                   const float *noise, size_t n);
/* Noises a clean latent to the begin index (img2img's first latent):
 * Euler/Heun: x0 + noise*sigma; DDIM/LCM: sqrt(acp)*x0 + sqrt(1-acp)*noise;
 * DPM++: alpha_t*x0 + sigma_t*noise; flow: sigma*noise + (1-sigma)*x0.
 * out may equal x0. */
df_status smp_add_noise(const struct smp_sampler *s, const float *x0, const float *noise,
                        float *out, size_t n);

/* The scheduler's arrays as diffusers holds them: timesteps (one per model
 * evaluation, the full schedule) and sigmas (timesteps + 1 entries; NULL
 * for DDIM and LCM). */
const float *smp_timesteps(const struct smp_sampler *s, int *count);
const float *smp_sigmas(const struct smp_sampler *s, int *count);

#endif
