/* infotext: A1111's generation-parameters text ("infotext"), written into
 * every PNG's "parameters" chunk and read back by A1111, Civitai and most
 * galleries. The format is A1111 v1.10's create_infotext:
 *
 *   <prompt>
 *   Negative prompt: <negative prompt>        (line omitted when empty)
 *   Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234,
 *   Size: 512x512, Model hash: 6ce0161689, Model: v1-5, Denoising strength: 0.75,
 *   Clip skip: 2, RNG: CPU, <extra pairs>, Version: v1.10.1
 *
 * (the last part is one line). Keys come in that fixed order; absent values
 * are skipped; a value containing ',', ':' or a newline is written as a JSON
 * string (infotext_utils.quote: json.dumps(ensure_ascii=False)); numbers are
 * written as Python prints the UI's values (7, 7.5, 0.75: integral values
 * without ".0"). The whole text is stripped of surrounding whitespace. */
#ifndef DF_INFOTEXT_H
#define DF_INFOTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

struct info_kv {
    const char *key;
    const char *value; /* NULL: skipped, like A1111's None */
};

struct info_params {
    const char *prompt;
    const char *negative_prompt; /* NULL or "": no "Negative prompt:" line */
    int steps;
    const char *sampler;         /* A1111 label: "Euler a", "Euler", "DPM++ 2M", "Heun", "DDIM", "LCM" */
    /* A1111 label ("Karras", "Exponential", "SGM Uniform", ...). NULL writes
     * "Schedule type: Automatic", as A1111 >= 1.9 does for the sampler's own
     * default schedule (it also reverts a schedule equal to the sampler's
     * default to "Automatic": that is the caller's choice to make); "" omits
     * the key, as A1111 < 1.9 did. */
    const char *schedule_type;
    double cfg_scale;
    int64_t seed;
    int width, height;
    const char *model_hash;       /* A1111's short hash: sha256(file)[:10]; NULL omits */
    const char *model_name;       /* file name without extension; NULL omits */
    double denoising_strength;    /* img2img / hires; negative omits */
    int clip_skip;                /* written only when > 1 */
    const char *rng;              /* "CPU" for the torch CPU generator; NULL (GPU/Philox) omits */
    const struct info_kv *extra;  /* extension pairs (ControlNet ...), before Version */
    size_t n_extra;
    const char *version;          /* NULL omits */
};

/* Formats the infotext into a malloc'd UTF-8 string. */
df_status info_format(const struct info_params *p, char **out);

/* A1111's parse_generation_parameters, core part: the prompt is the lines
 * before "Negative prompt:", the negative prompt the lines from it up to the
 * last line, and the last line's "key: value" pairs are found with A1111's
 * regex \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$) (the last line
 * only counts as parameters if it has at least 3 pairs). Quoted values are
 * JSON-decoded. Unlike A1111 this returns the pairs as written: "Size" stays
 * "512x512" (not Size-1/Size-2) and no defaults (Clip skip 1, RNG GPU, ...)
 * are added. Non-ASCII bytes count as \w, i.e. as letters. */
struct info_pair {
    char *key;
    char *value;
};

struct info_parsed {
    char *prompt;
    char *negative_prompt;
    size_t count;
    struct info_pair *pairs; /* in text order; a repeated key appears twice */
};

df_status info_parse(const char *text, struct info_parsed **out);
void info_parsed_destroy(struct info_parsed *p);
/* The value of `key` (the last one, as a Python dict keeps), or NULL. */
const char *info_get(const struct info_parsed *p, const char *key);

#endif
