/* check: `diffusiond check-fixtures DIR`, the oracle comparison. Reads
 * DIR/manifest.json, runs every case whose component is supported on the
 * Vulkan device and prints PASS/FAIL/SKIP lines. Each component's check
 * lives in check_<component>.c and is listed in check.c's table. */
#ifndef DF_CHECK_H
#define DF_CHECK_H

#include <jansson.h>
#include <stdbool.h>

#include "compute/device.h"
#include "models/clip.h"
#include "models/safetensors.h"

struct check_ctx {
    const char *dir;
    const json_t *manifest;
    struct device *dev;
    bool fp16;
    double tolerance;       /* relative L2: 1e-4 fp32, 1e-2 fp16 */
};

/* One case being checked: its manifest entry, its open file, and the
 * worst error and verdict so far. */
struct check_case {
    const char *name;
    const json_t *json;
    struct st_file *file;
    double max_err;
    char detail[512];
    bool failed;
};

typedef df_status (*check_fn)(struct check_ctx *ctx, struct check_case *c);

df_status check_clip_text(struct check_ctx *ctx, struct check_case *c);
df_status check_tokenizer(struct check_ctx *ctx, struct check_case *c);
df_status check_unet(struct check_ctx *ctx, struct check_case *c);
df_status check_vae(struct check_ctx *ctx, struct check_case *c);
df_status check_pipeline(struct check_ctx *ctx, struct check_case *c);
df_status check_sched(struct check_ctx *ctx, struct check_case *c);
df_status check_rng(struct check_ctx *ctx, struct check_case *c);
/* Runs m on case c's in.input_ids and compares every out.* the case holds
 * (tests reuse it for other storage layouts of the same weights). */
df_status check_clip_model(struct check_ctx *ctx, struct check_case *c, const struct clip_model *m);

/* Helpers for check_*.c */
/* Tensor `name` of the case file as fp32 (integers converted); caller frees. */
df_status check_tensor(struct check_case *c, const char *name, float **out, int64_t *numel);
/* Opens another fixture file of the same directory (uses_weights_from,
 * ldm_layout_file). */
df_status check_open(struct check_ctx *ctx, const char *file, struct st_file **out);
/* Compares got with the reference tensor `name`; records the error. */
df_status check_compare(struct check_ctx *ctx, struct check_case *c, const char *name, const float *got,
                        int64_t numel);
/* Integer config value, or `def` when absent or null. */
int check_config_int(const json_t *config, const char *key, int def);
double check_config_real(const json_t *config, const char *key, double def);

int check_fixtures_main(int argc, char **argv);

#endif
