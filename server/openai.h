/* openai: OpenAI's images API, for the many clients that speak only it
 * (the openai SDKs, LangChain, chat front-ends). An api_extension under
 * "/v1/":
 *
 *   POST /v1/images/generations  JSON {prompt, n, size, response_format,
 *                                model, ...} -> {created, data: [{b64_json |
 *                                url, revised_prompt}]}
 *   POST /v1/images/edits        multipart/form-data: image (a PNG file),
 *                                prompt, ... -> img2img, the same answer
 *   GET  /v1/models              {object: "list", data: [{id, object,
 *                                created, owned_by}]}
 *   GET  /v1/models/{id}         one of them
 *
 * OpenAI's model names (dall-e-2, dall-e-3, gpt-image-1, ...) are served by
 * the default model unless a loaded model has that name. quality, style
 * and user are accepted (user is logged); steps, seed, negative_prompt,
 * cfg_scale, sampler, schedule and strength are diffusiond's additions.
 * Every error under /v1/ - this module's, the daemon's 401/404/413/429/503
 * and failed jobs - has OpenAI's shape, {"error": {"message", "type",
 * "param", "code"}}, and a value refused is 400 (not 422) as OpenAI
 * answers. The calls are synchronous: the answer comes when the job is
 * done, and a client that leaves cancels it. docs/API.md has the details. */
#ifndef DF_OPENAI_H
#define DF_OPENAI_H

#include <jansson.h>
#include <stdbool.h>

#include "api.h"

/* Handles /v1/... paths; false when the path is not one of them. */
bool openai_handle(struct api_ctx *app, struct http_request *req);

/* api_extension.error_body: OpenAI's error object. */
json_t *openai_error_body(int *status, const char *code, const char *field, const char *message);

#endif
