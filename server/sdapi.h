/* sdapi: AUTOMATIC1111-compatible endpoints, for the many clients that
 * speak its API (field names, defaults and response shapes of A1111 v1.10,
 * see shared/research/anchors.md section 2.1):
 *
 *   POST /sdapi/v1/txt2img, /sdapi/v1/img2img
 *        -> {images: [base64 PNG with infotext], parameters: {...},
 *            info: "<JSON string: seed, all_seeds, infotexts, ...>"}
 *   GET  /sdapi/v1/progress, POST /sdapi/v1/interrupt
 *   GET  /sdapi/v1/samplers, /schedulers, /sd-models
 *   GET/POST /sdapi/v1/options (sd_model_checkpoint, CLIP_stop_at_last_layers,
 *        randn_source)
 *
 * Unknown fields are ignored as A1111 does; a wrong type is 422 naming the
 * field (FastAPI's validation status); unknown samplers and checkpoints are
 * 404 as in A1111. Errors carry A1111's "detail" next to our "error". */
#ifndef DF_SDAPI_H
#define DF_SDAPI_H

#include <stdbool.h>

#include "api.h"

/* Handles /sdapi/v1/... paths; false when the path is not one of them. */
bool sdapi_handle(struct api_ctx *app, struct http_request *req);

#endif
