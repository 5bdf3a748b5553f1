/* pipe_request: what one generation asks for. The one request struct: the
 * HTTP layer (native and A1111 APIs) and the CLI fill it, the job queue
 * keeps it, the pipeline and the model families read it. */
#ifndef DF_PIPE_REQUEST_H
#define DF_PIPE_REQUEST_H

#include <stdint.h>

#include "rng.h"
#include "sampler.h"

struct pipe_request {
    char *prompt;                /* taken literally, as diffusers does */
    char *negative_prompt;       /* NULL = none given (SDXL may then use zeros) */
    int width, height;           /* multiples of the model's size alignment */
    int steps;
    int batch;                   /* images; image i uses seed + i (A1111) */
    float cfg_scale;             /* <= 1: no classifier-free guidance */
    enum smp_kind sampler;
    enum smp_schedule schedule;
    int64_t seed;                /* -1 = random; the used seed is reported */
    int clip_skip;               /* A1111 meaning: 1 = last layer, 2 = penultimate */
    enum rng_kind rng;
    /* img2img: init image HWC RGB in [0,1], already width x height, and
     * strength in (0, 1]; NULL = txt2img */
    float *init_image;
    float strength;
    /* SDXL micro-conditioning, diffusers' names; 0 = diffusers' default
     * ((height, width), (0, 0), (height, width)) */
    int original_size[2];        /* [h, w] */
    int crops_coords_top_left[2]; /* [top, left] */
    int target_size[2];          /* [h, w] */
};

#endif
