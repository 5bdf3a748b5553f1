/* model: find a model's components (the family's component table says
 * which), load the VAE every family shares, hand the rest to the family.
 * Weights are read through mmap and released page by page as they reach the
 * device, so loading never holds a second full copy in RAM. */
#include "model.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sha256.h"

static void say(const struct model_options *opt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const struct model_options *opt, const char *fmt, ...) {
    if (!opt->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    opt->log(opt->log_ctx, line);
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static void source_close(struct comp_source *s) {
    st_close(s->file);
    json_decref(s->config);
    memset(s, 0, sizeof *s);
}

static df_status source_open(struct comp_source *s, const char *path, const char *config_path, const char *prefix) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    s->prefix = prefix;
    if (access(path, R_OK) != 0) return df_error(DF_EIO, "%s: %s", path, strerror(errno));
    df_status st = st_open(path, &s->file);
    if (st != DF_OK) return st;
    ckpt_identify(s->file, &s->kind);
    if (s->kind.family == CKPT_UNKNOWN && !prefix) { /* a prefixed part is probed by its loader */
        source_close(s);
        return df_error(DF_EUNSUPPORTED, "%s: not a Stable Diffusion checkpoint or component (no known keys)", path);
    }
    if (config_path && is_file(config_path)) {
        json_error_t err;
        s->config = json_load_file(config_path, 0, &err);
        if (!s->config) {
            source_close(s);
            return df_error(DF_EFORMAT, "%s: %s (line %d)", config_path, err.text, err.line);
        }
    }
    return DF_OK;
}

/* diffusers folders name the weights with or without a ".fp16" variant. */
static df_status folder_component(const char *dir, enum comp_id c, struct comp_source *s) {
    char path[4096], config[4096];
    const char *sub = comp_table[c].name;
    snprintf(config, sizeof config, "%s/%s/config.json", dir, sub);
    const char *variants[] = {"", ".fp16"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/%s%s.safetensors", dir, sub, comp_table[c].stem, variants[i]);
        if (is_file(path)) return source_open(s, path, config, NULL);
    }
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (is_dir(path) && access(path, R_OK | X_OK) != 0) return df_error(DF_EIO, "%s: %s", path, strerror(errno));
    return df_error(DF_EIO, "%s: no %s/%s.safetensors in this diffusers folder", dir, sub, comp_table[c].stem);
}

static void collect_unused(const char *name, void *ctx) {
    char *list = ctx;
    size_t used = strlen(list);
    if (used < 400) snprintf(list + used, 512 - used, "%s%s", used ? ", " : "", name);
}

/* Tensors of a single-file checkpoint that no component took (DDPM
 * buffers, EMA copies, ...) are never uploaded; say so once. */
static void report_outside(const struct model_options *opt, const struct st_file *f) {
    static const char *const parts[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                                        "conditioner.embedders."};
    char list[512] = "";
    int n = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        bool inside = false;
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++)
            inside = inside || strncmp(name, parts[k], strlen(parts[k])) == 0;
        if (!inside) {
            n++;
            collect_unused(name, list);
        }
    }
    if (n) say(opt, "checkpoint: %d tensor%s outside the model's components, not loaded: %s%s", n, n == 1 ? "" : "s",
               list, strlen(list) >= 400 ? ", ..." : "");
}

static void report_unused(const struct model_options *opt, struct weights *w, const char *what) {
    char list[512] = "";
    int n = wts_report_unused(w, collect_unused, list);
    if (n) say(opt, "%s: %d unused tensor%s: %s%s", what, n, n == 1 ? "" : "s", list, strlen(list) >= 400 ? ", ..." : "");
}

/* The tensor `name` under `prefix` (NULL = none). */
static const struct st_tensor *st_find_prefixed(const struct st_file *f, const char *prefix, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", prefix ? prefix : "", name);
    return st_find(f, key);
}

#define TRY(x) do { if ((st = (x)) != DF_OK) goto done; } while (0)

/* The VAE every family has: original layout (first_stage_model.* or bare)
 * or diffusers names with its config.json. */
static df_status load_vae(struct device *dev, const struct comp_source *s, enum wts_precision prec,
                          struct weights **weights, struct vae_model *vae) {
    struct vae_config cfg;
    struct wts_rename *renames = NULL;
    int n = 0;
    df_status st = DF_OK;
    TRY(wts_create(dev, prec, weights));
    if (family_for_checkpoint(s->kind.family) || s->kind.family == CKPT_VAE_LDM) { /* original layout */
        const char *prefix = s->kind.family == CKPT_VAE_LDM ? s->kind.vae_prefix : "first_stage_model.";
        if (s->config) TRY(vae_config_from_json(s->config, &cfg));
        else TRY(vae_ldm_infer_config(s->file, prefix, &cfg));
        TRY(vae_ldm_renames(&cfg, prefix, &renames, &n));
        TRY(wts_load(*weights, s->file, prefix, renames, n));
    } else if (st_find_prefixed(s->file, s->prefix, "decoder.conv_in.weight")) {
        const struct wts_rename strip = {s->prefix ? s->prefix : "", "", NULL};
        TRY(wts_load(*weights, s->file, strip.from, &strip, 1));
        if (s->config) TRY(vae_config_from_json(s->config, &cfg));
        else TRY(vae_infer_config(*weights, &cfg));
    } else {
        st = df_error(DF_EINVAL, "%s is a %s, not a VAE", s->path, ckpt_family_name(s->kind.family));
        goto done;
    }
    TRY(vae_load(*weights, &cfg, vae));
done:
    free(renames);
    if (st != DF_OK) return df_error(st, "VAE from %s: %s", s->path, df_errmsg());
    return st;
}

/* The file or folder stem: "v1-5-pruned-emaonly", "sdxl-base" for "sdxl-base/". */
static void set_name(struct model *m, const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    const char *base = strrchr(buf, '/');
    snprintf(m->name, sizeof m->name, "%.127s", base ? base + 1 : buf);
    char *dot = strrchr(m->name, '.');
    if (dot && strcmp(dot, ".safetensors") == 0) *dot = 0;
}

/* A1111's "Model hash": the first 10 hex digits of the file's SHA-256. */
static df_status set_hash(struct model *m, const char *path) {
    uint8_t digest[SHA256_DIGEST_SIZE];
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    df_status st = sha256_file(path, digest);
    if (st != DF_OK) return st;
    sha256_hex(digest, hex);
    snprintf(m->hash, sizeof m->hash, "%.10s", hex);
    return DF_OK;
}

/* The family of a model given as component files only: asked for, or the
 * UNet's own keys (SDXL's add_embedding). */
static df_status family_of_components(const struct model_options *opt, const struct comp_source *comp,
                                      const struct model_family **out) {
    if (opt->family) {
        *out = family_by_name(opt->family);
        if (!*out) return df_error(DF_EINVAL, "family \"%.40s\": use sd1, sd2 or sdxl", opt->family);
        return DF_OK;
    }
    enum ckpt_family k = comp[COMP_UNET].file ? comp[COMP_UNET].kind.family : CKPT_UNKNOWN;
    *out = family_for_checkpoint(k);
    if (!*out) *out = comp[COMP_TEXT_ENCODER_2].file ? &family_sdxl : &family_sd1;
    return DF_OK;
}

/* Prediction type: the scheduler config says it for folders; a request to
 * override (config `prediction`) wins. */
static df_status set_prediction(struct model *m, const struct model_options *opt) {
    if (!opt->prediction) return DF_OK;
    if (strcmp(opt->prediction, "v") == 0 || strcmp(opt->prediction, "v_prediction") == 0)
        m->scheduler.prediction_type = SMP_PRED_V;
    else if (strcmp(opt->prediction, "epsilon") == 0 || strcmp(opt->prediction, "eps") == 0)
        m->scheduler.prediction_type = SMP_PRED_EPSILON;
    else return df_error(DF_EINVAL, "prediction \"%.40s\": use epsilon or v", opt->prediction);
    snprintf(m->prediction_source, sizeof m->prediction_source, "configured");
    return DF_OK;
}

df_status model_load(struct device *dev, const struct model_options *opt, struct model **out) {
    struct model *m = calloc(1, sizeof *m);
    if (!m) return df_error(DF_ENOMEM, "out of memory");
    m->precision = opt->precision;
    static atomic_uint_fast64_t serials;
    m->serial = atomic_fetch_add(&serials, 1) + 1;
    struct comp_source main_src, own[COMP_COUNT];
    struct model_sources src;
    memset(&main_src, 0, sizeof main_src);
    memset(own, 0, sizeof own);
    memset(&src, 0, sizeof src);
    const struct model_family *fam = NULL;
    df_status st = DF_OK;
    const char *hash_path = NULL;
    char sched[4200] = "";
    for (int c = 0; c < COMP_COUNT; c++)
        if (opt->component[c]) {
            TRY(source_open(&own[c], opt->component[c], NULL, opt->component_prefix[c]));
            if (opt->component_config[c]) own[c].config = json_incref((json_t *)opt->component_config[c]);
        }
    if (opt->path && is_dir(opt->path)) {
        m->layout = "diffusers folder";
        src.folder = opt->path;
        if (access(opt->path, R_OK | X_OK) != 0) {
            st = df_error(DF_EIO, "%s: %s", opt->path, strerror(errno));
            goto done;
        }
        TRY(family_for_folder(opt->path, &fam));
        for (int c = 0; c < COMP_COUNT; c++)
            if (fam->components[c] && !own[c].file) TRY(folder_component(opt->path, c, &own[c]));
        snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", opt->path);
        hash_path = own[COMP_UNET].path[0] ? own[COMP_UNET].path : NULL;
    } else if (opt->path) {
        TRY(source_open(&main_src, opt->path, NULL, NULL));
        src.single_file = true;
        fam = family_for_checkpoint(main_src.kind.family);
        if (main_src.kind.family == CKPT_SD3 || main_src.kind.family == CKPT_FLUX) {
            st = df_error(DF_EUNSUPPORTED, "%s: recognised as %s (key \"%s\"); SD1.x, SD2.x and SDXL are supported so far",
                          opt->path, ckpt_family_name(main_src.kind.family), main_src.kind.evidence);
            goto done;
        }
        m->layout = fam ? "single file (original LDM keys)" : "component files";
        hash_path = opt->path;
        if (!fam) { /* a lone component as `path` fills the slot it is */
            static const struct {
                enum ckpt_family kind;
                enum comp_id slot;
            } lone[] = {{CKPT_UNET, COMP_UNET}, {CKPT_UNET_LDM, COMP_UNET}, {CKPT_VAE, COMP_VAE},
                        {CKPT_VAE_LDM, COMP_VAE}, {CKPT_CLIP, COMP_TEXT_ENCODER}};
            for (size_t i = 0; i < sizeof lone / sizeof lone[0]; i++)
                if (main_src.kind.family == lone[i].kind && !own[lone[i].slot].file) src.comp[lone[i].slot] = main_src;
        }
    } else {
        m->layout = "component files";
    }
    for (int c = 0; c < COMP_COUNT; c++)
        if (own[c].file) src.comp[c] = own[c];
    if (!fam) TRY(family_of_components(opt, src.comp, &fam));
    if (main_src.file && family_for_checkpoint(main_src.kind.family) == fam) /* the whole model in one file */
        for (int c = 0; c < COMP_COUNT; c++)
            if (fam->components[c] && !src.comp[c].file) {
                src.comp[c] = main_src;
                /* what its shapes cannot say, a config given for it can */
                src.comp[c].config = (json_t *)opt->component_config[c];
            }
    for (int c = 0; c < COMP_COUNT; c++)
        if (fam->components[c] && !src.comp[c].file) {
            st = df_error(DF_EINVAL, "%s model is missing its %s (give --%s FILE)", fam->label, comp_table[c].what,
                          comp_table[c].name);
            goto done;
        }
    m->family = fam;
    if (!hash_path) hash_path = src.comp[COMP_UNET].path;
    set_name(m, opt->path ? opt->path : src.comp[COMP_UNET].path);
    /* scheduler: the family's, then the folder's file, then the configured one */
    m->scheduler = fam->scheduler();
    snprintf(m->prediction_source, sizeof m->prediction_source, "default");
    if (sched[0] && is_file(sched)) {
        TRY(smp_config_load(sched, &m->scheduler));
        snprintf(m->prediction_source, sizeof m->prediction_source, "scheduler_config.json");
    }
    if (opt->scheduler_config) {
        TRY(smp_config_load(opt->scheduler_config, &m->scheduler));
        snprintf(m->prediction_source, sizeof m->prediction_source, "scheduler_config.json");
    }
    const json_t *vc = src.comp[COMP_VAE].config;
    m->vae_fp32 = fam->vae_force_upcast && !json_is_false(json_object_get(vc, "force_upcast")); /* default: true */
    TRY(load_vae(dev, &src.comp[COMP_VAE], m->vae_fp32 ? WTS_F32 : m->precision, &m->weights[COMP_VAE], &m->vae));
    /* kept to reload the VAE in fp32 should an fp16 decode overflow */
    snprintf(m->vae_source.path, sizeof m->vae_source.path, "%s", src.comp[COMP_VAE].path);
    snprintf(m->vae_source.prefix, sizeof m->vae_source.prefix, "%s", src.comp[COMP_VAE].prefix ? src.comp[COMP_VAE].prefix : "");
    m->vae_source.config = json_incref(src.comp[COMP_VAE].config);
    TRY(set_prediction(m, opt)); /* before the family: a configured type spares SD2's test */
    TRY(fam->load(m, dev, &src));
    if (fam->latent_channels(m) != m->vae.cfg.latent_channels) {
        st = df_error(DF_EINVAL, "the VAE's %d latent channels do not match the denoiser's %d",
                      m->vae.cfg.latent_channels, fam->latent_channels(m));
        goto done;
    }
    TRY(set_hash(m, hash_path));
    if (main_src.file && src.single_file && family_for_checkpoint(main_src.kind.family))
        report_outside(opt, main_src.file);
    for (int c = 0; c < COMP_COUNT; c++)
        if (m->weights[c]) report_unused(opt, m->weights[c], comp_table[c].what);
done:
    source_close(&main_src);
    for (int c = 0; c < COMP_COUNT; c++) source_close(&own[c]);
    if (st != DF_OK) {
        model_destroy(m);
        return st;
    }
    *out = m;
    return DF_OK;
}

df_status model_load_vae_fp32(const struct model *m, struct device *dev, struct weights **weights,
                              struct vae_model *vae) {
    struct comp_source s;
    const struct model_vae_source *v = &m->vae_source;
    df_status st = source_open(&s, v->path, NULL, v->prefix[0] ? v->prefix : NULL);
    if (st != DF_OK) return st;
    s.config = json_incref(v->config);
    st = load_vae(dev, &s, WTS_F32, weights, vae);
    source_close(&s);
    if (st != DF_OK) {
        wts_destroy(*weights);
        *weights = NULL;
    }
    return st;
}

void model_destroy(struct model *m) {
    if (!m) return;
    json_decref(m->vae_source.config);
    if (m->family) m->family->free(m);
    vae_free(&m->vae);
    for (int c = 0; c < COMP_COUNT; c++) wts_destroy(m->weights[c]);
    free(m);
}

char *model_describe(const struct model *m) {
    const struct vae_config *v = &m->vae.cfg;
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    if (!f) return NULL;
    fprintf(f, "model: %s\nfamily: %s\nlayout: %s\nhash: %s\ndtype on device: %s\n", m->name, m->family->label,
            m->layout, m->hash, m->precision == WTS_F16 ? "fp16" : "fp32");
    m->family->describe(m, f);
    fprintf(f, "vae: %lld parameters, %d blocks, %d groups, latent channels %d, scaling factor %g, shift %g%s\n",
            (long long)wts_parameter_count(m->weights[COMP_VAE]), v->n_blocks, v->norm_num_groups, v->latent_channels,
            v->scaling_factor, v->shift_factor, m->vae_fp32 ? ", fp32 (force_upcast)" : "");
    fprintf(f, "scheduler: betas %g..%g, prediction %s (%s)\n", m->scheduler.beta_start, m->scheduler.beta_end,
            m->scheduler.prediction_type == SMP_PRED_V ? "v_prediction" : "epsilon", m->prediction_source);
    uint64_t bytes = 0;
    for (int c = 0; c < COMP_COUNT; c++)
        if (m->weights[c]) bytes += wts_device_bytes(m->weights[c]);
    fprintf(f, "device memory for weights: %.1f MiB\n", (double)bytes / (1 << 20));
    fclose(f);
    return s;
}
