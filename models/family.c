/* family: the component table and the family registry (family.h). */
#include "family.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const struct comp_info comp_table[COMP_COUNT] = {
    [COMP_UNET] = {"unet", "diffusion_pytorch_model", "UNet"},
    [COMP_VAE] = {"vae", "diffusion_pytorch_model", "VAE"},
    [COMP_TEXT_ENCODER] = {"text_encoder", "model", "text encoder (CLIP)"},
    [COMP_TEXT_ENCODER_2] = {"text_encoder_2", "model", "second text encoder (OpenCLIP-G, SDXL)"},
};

static const struct model_family *const families[] = {&family_sd1, &family_sd2, &family_sdxl};

static const struct {
    enum ckpt_family kind;
    const struct model_family *family;
} by_checkpoint[] = {
    {CKPT_SD1, &family_sd1},
    {CKPT_SD2, &family_sd2},
    {CKPT_SDXL, &family_sdxl},
};

/* diffusers pipelines (model_index.json _class_name) per family */
static const struct {
    const char *class_name;
    const struct model_family *family;
} by_pipeline[] = {
    {"StableDiffusionPipeline", &family_sd1}, /* SD2 folders too: the text encoder tells (sd1_or_sd2) */
    {"StableDiffusionImg2ImgPipeline", &family_sd1},
    {"StableDiffusionXLPipeline", &family_sdxl},
    {"StableDiffusionXLImg2ImgPipeline", &family_sdxl},
};

const struct model_family *family_for_checkpoint(enum ckpt_family kind) {
    for (size_t i = 0; i < sizeof by_checkpoint / sizeof by_checkpoint[0]; i++)
        if (by_checkpoint[i].kind == kind) return by_checkpoint[i].family;
    return NULL;
}

const struct model_family *family_by_name(const char *name) {
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strcmp(families[i]->name, name) == 0) return families[i];
    return NULL;
}

static bool exists(const char *dir, const char *sub) {
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    return stat(path, &sb) == 0;
}

/* SD2.x folders use StableDiffusionPipeline like SD1.x; their text encoder
 * (OpenCLIP-H converted) is what sets them apart: GELU, where OpenAI's
 * CLIP-L (every SD1.x) is quick_gelu. The activation is the architecture,
 * so it holds for any width (a pruned or tiny SD2 too); width 1024 alone
 * also says OpenCLIP-H. Only the label and the pad id used when there is
 * no tokenizer/ folder depend on the answer. */
static const struct model_family *sd1_or_sd2(const char *folder) {
    char path[4200];
    snprintf(path, sizeof path, "%s/text_encoder/config.json", folder);
    json_t *j = json_load_file(path, 0, NULL);
    const json_t *h = json_object_get(j, "hidden_size");
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    bool openclip = (act && strcmp(act, "gelu") == 0) || (json_is_integer(h) && json_integer_value(h) == 1024);
    json_decref(j);
    return openclip ? &family_sd2 : &family_sd1;
}

df_status family_for_folder(const char *folder, const struct model_family **out) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model_index.json", folder);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j && exists(folder, "model_index.json"))
        return df_error(DF_EFORMAT, "%s: %s (line %d)", path, err.text, err.line);
    const json_t *cls = json_object_get(j, "_class_name");
    if (json_is_string(cls)) {
        const char *name = json_string_value(cls);
        for (size_t i = 0; i < sizeof by_pipeline / sizeof by_pipeline[0]; i++)
            if (strcmp(by_pipeline[i].class_name, name) == 0) {
                *out = by_pipeline[i].family == &family_sd1 ? sd1_or_sd2(folder) : by_pipeline[i].family;
                json_decref(j);
                return DF_OK;
            }
        df_status st = df_error(DF_EUNSUPPORTED, "%s: pipeline \"%.80s\" is not supported (SD1.x, SD2.x and SDXL "
                                                 "pipelines are)", path, name);
        json_decref(j);
        return st;
    }
    json_decref(j);
    /* no model_index.json: the subfolders tell */
    *out = exists(folder, "text_encoder_2") ? &family_sdxl : sd1_or_sd2(folder);
    return DF_OK;
}
