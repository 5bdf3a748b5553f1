/* pipeline: text-to-image and image-to-image on a loaded model.
 *
 * A worker owns the device-side state of one generation at a time: the
 * activation arena and the recorded programs (text encoder, UNet, VAE),
 * rebuilt only when the model or the image size changes. The UNet program is
 * recorded once per request and replayed every sampler step. */
#ifndef DF_PIPELINE_H
#define DF_PIPELINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "rng.h"
#include "sampler.h"

enum pipe_stage { PIPE_QUEUED, PIPE_TEXT, PIPE_ENCODE, PIPE_DENOISE, PIPE_DECODE, PIPE_DONE };

struct pipe_request {
    const char *prompt;          /* taken literally, as diffusers does */
    const char *negative_prompt; /* NULL = "" */
    int width, height;           /* multiples of 8 */
    int steps;
    int batch;                   /* images; image i uses seed + i (A1111) */
    float cfg_scale;             /* <= 1: no classifier-free guidance */
    enum smp_kind sampler;
    enum smp_schedule schedule;
    int64_t seed;                /* -1 = random; the used seed is reported */
    int clip_skip;               /* A1111 meaning: 1 = last layer, 2 = penultimate */
    enum rng_kind rng;
    /* img2img: init image HWC RGB in [0,1] (resized to width x height if
     * needed), and strength in (0, 1] */
    const float *init_image;
    int init_width, init_height;
    float strength;
    /* called after every model evaluation and at stage changes */
    void (*progress)(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed);
    void *progress_ctx;
    atomic_bool *cancel;         /* checked between steps and stages; NULL = never */
};

struct pipe_result {
    int count, width, height;
    float *images;               /* count * height * width * 3, HWC, [0,1] */
    uint64_t *seeds;             /* per image */
    float *latents;              /* count * 4 * h/8 * w/8, final latents */
    double seconds_text, seconds_encode, seconds_denoise, seconds_decode, seconds_total;
    uint64_t device_peak_bytes;
};

struct pipe_worker;

df_status pipe_worker_create(struct device *dev, struct pipe_worker **out);
void pipe_worker_destroy(struct pipe_worker *w);

/* Runs one request. DF_ECANCELLED when *cancel was set; DF_ENOMEM when the
 * device cannot hold the pass (the worker stays usable); DF_EINVAL for a bad
 * request (message names the field). */
df_status pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                        struct pipe_result *out);
void pipe_result_free(struct pipe_result *r);

const char *pipe_stage_name(enum pipe_stage s);

#endif
