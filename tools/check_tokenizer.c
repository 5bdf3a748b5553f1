/* check_tokenizer: the CLIPTokenizer case — every prompt's 77 ids exact. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/tokenizer.h"
#include "models/vocab.h"

#define CONTEXT 77
#define PAD 49407 /* SD1.x pads with the end token */

df_status check_tokenizer(struct check_ctx *ctx, struct check_case *c) {
    (void)ctx;
    const json_t *prompts = json_object_get(c->json, "prompts");
    if (!json_is_array(prompts)) return df_error(DF_EFORMAT, "case %s has no prompts list", c->name);
    size_t np = json_array_size(prompts);
    float *want = NULL;
    int64_t n = 0;
    df_status st = check_tensor(c, "out.input_ids", &want, &n);
    if (st != DF_OK) return st;
    if (n != (int64_t)np * CONTEXT) {
        free(want);
        return df_error(DF_EFORMAT, "out.input_ids holds %lld ids for %zu prompts", (long long)n, np);
    }
    struct tokenizer *tok = NULL;
    if ((st = tok_create(clip_vocab_gz, CLIP_VOCAB_GZ_SIZE, &tok)) != DF_OK) {
        free(want);
        return st;
    }
    int mismatched = 0;
    for (size_t i = 0; i < np && st == DF_OK; i++) {
        int32_t ids[CONTEXT];
        int count;
        st = tok_encode(tok, json_string_value(json_array_get(prompts, i)), CONTEXT, PAD, ids, &count);
        for (int j = 0; st == DF_OK && j < CONTEXT; j++)
            if ((float)ids[j] != want[i * CONTEXT + (size_t)j]) {
                if (!mismatched++)
                    snprintf(c->detail, sizeof c->detail, "prompt %zu differs at position %d", i, j);
                break;
            }
    }
    if (st == DF_OK) {
        if (mismatched) c->failed = true;
        c->max_err = mismatched;
        if (!mismatched) snprintf(c->detail, sizeof c->detail, "%zu prompts, all ids exact", np);
    }
    tok_destroy(tok);
    free(want);
    return st;
}
