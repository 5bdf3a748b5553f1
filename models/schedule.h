/* schedule: the noise tables and timestep/sigma schedules behind sampler.c,
 * each reproducing the exact float64/float32 arithmetic of diffusers 0.29.2
 * (numpy linspace/arange/interp/round, torch float32 linspace/cumprod).
 * Internal to the sampler; the public API is sampler.h. */
#ifndef DF_SCHEDULE_H
#define DF_SCHEDULE_H

#include "sampler.h"

/* alphas_cumprod (num_train_timesteps floats) as the schedulers' __init__
 * computes it in float32 torch, from the config's betas. */
df_status smp_alphas_cumprod(const struct smp_config *cfg, float **out);

/* A built schedule: `count` model evaluations. */
struct smp_plan {
    int count;
    float *timesteps;        /* count */
    float *sigmas;           /* count + 1; NULL for DDIM/LCM */
    float init_noise_sigma;
};

/* set_timesteps(steps) of the `kind`'s scheduler. `cfg` is resolved (no
 * AUTO left); `strength` is only used by LCM (1.0 otherwise). */
df_status smp_plan_build(enum smp_kind kind, const struct smp_config *cfg, int steps,
                         double strength, const float *acp, struct smp_plan *out);
void smp_plan_free(struct smp_plan *p);

#endif
