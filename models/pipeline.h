/* pipeline: text-to-image and image-to-image on a loaded model.
 *
 * A worker owns the device-side state of one generation at a time: the
 * activation arena and the recorded programs (the family's text encoders
 * and denoiser, the VAE), rebuilt only when the model or the image size
 * changes. The denoiser program is replayed every sampler step. */
#ifndef DF_PIPELINE_H
#define DF_PIPELINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "pipe_request.h"
#include "rng.h"
#include "sampler.h"

enum pipe_stage { PIPE_QUEUED, PIPE_TEXT, PIPE_ENCODE, PIPE_DENOISE, PIPE_DECODE, PIPE_DONE };

/* What a caller watches and controls while a request runs. */
struct pipe_hooks {
    /* called after every model evaluation and at stage changes */
    void (*progress)(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed);
    void *progress_ctx;
    atomic_bool *cancel;         /* checked between steps and stages; NULL = never */
};

struct pipe_result {
    int count, width, height;
    float *images;               /* count * height * width * 3, HWC, [0,1] */
    uint64_t *seeds;             /* per image */
    float *latents;              /* count * C * h/s * w/s, final latents */
    double seconds_text, seconds_encode, seconds_denoise, seconds_decode, seconds_total;
    uint64_t device_peak_bytes;
    bool vae_fp32_retry;         /* the fp16 VAE overflowed: decoded again in fp32 */
};

struct pipe_worker;

df_status pipe_worker_create(struct device *dev, struct pipe_worker **out);
void pipe_worker_destroy(struct pipe_worker *w);
/* Activation bytes a VAE pass may use before the image is decoded (and
 * encoded) in tiles; 0 (the default): 3/4 of the device's largest
 * allocation. */
void pipe_worker_set_vae_budget(struct pipe_worker *w, uint64_t bytes);

/* Runs one request. DF_ECANCELLED when *cancel was set; DF_ENOMEM when the
 * device cannot hold the pass (the worker stays usable); DF_EINVAL for a bad
 * request (message names the field). */
df_status pipe_generate(struct pipe_worker *w, struct model *m, const struct pipe_request *req,
                        const struct pipe_hooks *hooks, struct pipe_result *out);
void pipe_result_free(struct pipe_result *r);

const char *pipe_stage_name(enum pipe_stage s);

#endif
