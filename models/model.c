/* model: find a model's components, upload their weights, build the
 * modules. Weights are read through mmap and released page by page as they
 * reach the device, so loading never holds a second full copy in RAM. */
#include "model.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sha256.h"
#include "unet_config.h"
#include "vocab.h"

#define LDM_UNET_PREFIX "model.diffusion_model."
#define LDM_CLIP_PREFIX "cond_stage_model.transformer."

/* CLIP in SD1.x single files: transformers names under a prefix; some
 * early checkpoints lack the "text_model." level. */
static const struct wts_rename clip_ldm_renames[] = {
    {"cond_stage_model.transformer.text_model.", "text_model.", NULL},
    {"cond_stage_model.transformer.", "text_model.", NULL},
};

/* One weight file of a component and, for diffusers folders, its config. */
struct source {
    char path[4096];
    struct st_file *file;
    struct ckpt_kind kind;
    json_t *config;
};

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

static void source_close(struct source *s) {
    st_close(s->file);
    json_decref(s->config);
    memset(s, 0, sizeof *s);
}

static df_status source_open(struct source *s, const char *path, const char *config_path) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    df_status st = st_open(path, &s->file);
    if (st != DF_OK) return st;
    ckpt_identify(s->file, &s->kind);
    if ((st = ckpt_supported(&s->kind, path)) != DF_OK) {
        source_close(s);
        return st;
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
static df_status folder_component(const char *dir, const char *sub, const char *stem, struct source *s) {
    char path[4096], config[4096];
    snprintf(config, sizeof config, "%s/%s/config.json", dir, sub);
    const char *variants[] = {"", ".fp16"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/%s%s.safetensors", dir, sub, stem, variants[i]);
        if (is_file(path)) return source_open(s, path, config);
    }
    return df_error(DF_EIO, "%s: no %s/%s.safetensors in this diffusers folder", dir, sub, stem);
}

static void collect_unused(const char *name, void *ctx) {
    char *list = ctx;
    size_t used = strlen(list);
    if (used < 400) snprintf(list + used, 512 - used, "%s%s", used ? ", " : "", name);
}

/* Tensors of a single-file checkpoint outside the three components
 * (DDPM buffers, EMA copies, ...) are never uploaded; say so once. */
static void report_outside(const struct model_options *opt, const struct st_file *f) {
    static const char *const parts[] = {LDM_UNET_PREFIX, "first_stage_model.", "cond_stage_model."};
    char list[512] = "";
    int n = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        bool inside = false;
        for (int k = 0; k < 3; k++) inside = inside || strncmp(name, parts[k], strlen(parts[k])) == 0;
        if (!inside) {
            n++;
            collect_unused(name, list);
        }
    }
    if (n) say(opt, "checkpoint: %d tensor%s outside the UNet, VAE and text encoder, not loaded: %s%s", n,
               n == 1 ? "" : "s", list, strlen(list) >= 400 ? ", ..." : "");
}

static void report_unused(const struct model_options *opt, struct weights *w, const char *what) {
    char list[512] = "";
    int n = wts_report_unused(w, collect_unused, list);
    if (n) say(opt, "%s: %d unused tensor%s: %s%s", what, n, n == 1 ? "" : "s", list, strlen(list) >= 400 ? ", ..." : "");
}

#define TRY(x) do { if ((st = (x)) != DF_OK) goto done; } while (0)

static df_status load_unet(struct model *m, struct device *dev, const struct source *s) {
    struct unet_config cfg;
    struct wts_rename *renames = NULL;
    int n = 0;
    const char *prefix = "";
    df_status st = DF_OK;
    switch (s->kind.family) {
    case CKPT_SD1:
    case CKPT_UNET_LDM:
        prefix = LDM_UNET_PREFIX;
        TRY(unet_infer_config_file(s->file, prefix, &cfg));
        TRY(unet_ldm_renames(&cfg, prefix, &renames, &n));
        break;
    case CKPT_UNET:
        if (s->config) TRY(unet_config_from_json(s->config, &cfg));
        else TRY(unet_infer_config_file(s->file, "", &cfg));
        break;
    default:
        st = df_error(DF_EINVAL, "%s is a %s, not a UNet", s->path, ckpt_family_name(s->kind.family));
        goto done;
    }
    TRY(wts_create(dev, m->precision, &m->unet_weights));
    TRY(wts_load(m->unet_weights, s->file, prefix, renames, n));
    TRY(unet_load(m->unet_weights, &cfg, &m->unet));
done:
    free(renames);
    if (st != DF_OK) return df_error(st, "UNet from %s: %s", s->path, df_errmsg());
    return st;
}

static df_status load_vae(struct model *m, struct device *dev, const struct source *s) {
    struct vae_config cfg;
    struct wts_rename *renames = NULL;
    int n = 0;
    df_status st = DF_OK;
    TRY(wts_create(dev, m->precision, &m->vae_weights));
    switch (s->kind.family) {
    case CKPT_SD1:
    case CKPT_VAE_LDM: {
        const char *prefix = s->kind.vae_prefix ? s->kind.vae_prefix : "first_stage_model.";
        TRY(vae_ldm_infer_config(s->file, prefix, &cfg));
        TRY(vae_ldm_renames(&cfg, prefix, &renames, &n));
        TRY(wts_load(m->vae_weights, s->file, prefix, renames, n));
        break;
    }
    case CKPT_VAE:
        TRY(wts_load(m->vae_weights, s->file, "", NULL, 0));
        if (s->config) TRY(vae_config_from_json(s->config, &cfg));
        else TRY(vae_infer_config(m->vae_weights, &cfg));
        break;
    default:
        st = df_error(DF_EINVAL, "%s is a %s, not a VAE", s->path, ckpt_family_name(s->kind.family));
        goto done;
    }
    TRY(vae_load(m->vae_weights, &cfg, &m->vae));
done:
    free(renames);
    if (st != DF_OK) return df_error(st, "VAE from %s: %s", s->path, df_errmsg());
    return st;
}

static df_status load_clip(struct model *m, struct device *dev, const struct source *s) {
    struct clip_config cfg;
    df_status st = DF_OK;
    TRY(wts_create(dev, m->precision, &m->clip_weights));
    switch (s->kind.family) {
    case CKPT_SD1:
        TRY(wts_load(m->clip_weights, s->file, LDM_CLIP_PREFIX, clip_ldm_renames, 2));
        TRY(clip_infer_config(m->clip_weights, &cfg));
        break;
    case CKPT_CLIP:
        TRY(wts_load(m->clip_weights, s->file, "text_model.", NULL, 0));
        if (s->config) TRY(clip_config_from_json(s->config, &cfg));
        else TRY(clip_infer_config(m->clip_weights, &cfg));
        break;
    default:
        st = df_error(DF_EINVAL, "%s is a %s, not a CLIP text encoder", s->path, ckpt_family_name(s->kind.family));
        goto done;
    }
    cfg.has_projection = false; /* SD1.x uses the hidden states only */
    TRY(clip_load(m->clip_weights, &cfg, &m->clip));
done:
    if (st != DF_OK) return df_error(st, "text encoder from %s: %s", s->path, df_errmsg());
    return st;
}

static void set_name(struct model *m, const char *path) {
    const char *base = strrchr(path, '/');
    base = base && base[1] ? base + 1 : path;
    snprintf(m->name, sizeof m->name, "%.127s", base);
    size_t len = strlen(m->name);
    while (len > 1 && m->name[len - 1] == '/') m->name[--len] = 0;
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

df_status model_load(struct device *dev, const struct model_options *opt, struct model **out) {
    struct model *m = calloc(1, sizeof *m);
    if (!m) return df_error(DF_ENOMEM, "out of memory");
    m->precision = opt->precision;
    m->scheduler = smp_config_default_sd15();
    struct source main_src = {0}, unet_src = {0}, vae_src = {0}, clip_src = {0};
    const struct source *unet = NULL, *vae = NULL, *clip = NULL;
    df_status st = DF_OK;
    const char *hash_path = NULL;
    if (opt->path && is_dir(opt->path)) {
        m->layout = "diffusers folder";
        if (!opt->unet) TRY(folder_component(opt->path, "unet", "diffusion_pytorch_model", &unet_src));
        if (!opt->vae) TRY(folder_component(opt->path, "vae", "diffusion_pytorch_model", &vae_src));
        if (!opt->text_encoder) TRY(folder_component(opt->path, "text_encoder", "model", &clip_src));
        char sched[4096];
        snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", opt->path);
        if (is_file(sched)) TRY(smp_config_load(sched, &m->scheduler));
        hash_path = unet_src.path[0] ? unet_src.path : NULL;
        m->family = CKPT_SD1;
    } else if (opt->path) {
        TRY(source_open(&main_src, opt->path, NULL));
        m->family = main_src.kind.family;
        if (m->family != CKPT_SD1 && !(opt->unet || opt->vae || opt->text_encoder)) {
            st = df_error(DF_EUNSUPPORTED, "%s is a %s, not a whole model: give the other components "
                          "(unet, vae, text encoder) as well", opt->path, ckpt_family_name(m->family));
            goto done;
        }
        m->layout = m->family == CKPT_SD1 ? "single file (original LDM keys)" : "component files";
        hash_path = opt->path;
    } else {
        m->layout = "component files";
    }
    if (opt->unet) TRY(source_open(&unet_src, opt->unet, NULL));
    if (opt->vae) TRY(source_open(&vae_src, opt->vae, NULL));
    if (opt->text_encoder) TRY(source_open(&clip_src, opt->text_encoder, NULL));
    if (opt->unet_config && unet_src.file) unet_src.config = json_incref((json_t *)opt->unet_config);
    if (opt->vae_config && vae_src.file) vae_src.config = json_incref((json_t *)opt->vae_config);
    if (opt->text_encoder_config && clip_src.file) clip_src.config = json_incref((json_t *)opt->text_encoder_config);
    /* a lone component as `path` fills the slot it is */
    if (main_src.file) {
        enum ckpt_family f = main_src.kind.family;
        bool all = f == CKPT_SD1;
        if ((all || f == CKPT_UNET || f == CKPT_UNET_LDM) && !unet_src.file) unet = &main_src;
        if ((all || f == CKPT_VAE || f == CKPT_VAE_LDM) && !vae_src.file) vae = &main_src;
        if ((all || f == CKPT_CLIP) && !clip_src.file) clip = &main_src;
    }
    if (unet_src.file) unet = &unet_src;
    if (vae_src.file) vae = &vae_src;
    if (clip_src.file) clip = &clip_src;
    if (!unet || !vae || !clip) {
        st = df_error(DF_EINVAL, "model is missing its %s", !unet ? "UNet" : !vae ? "VAE" : "text encoder");
        goto done;
    }
    if (!hash_path) hash_path = unet->path;
    if (m->family == CKPT_UNKNOWN || m->family == CKPT_UNET || m->family == CKPT_UNET_LDM ||
        m->family == CKPT_VAE || m->family == CKPT_VAE_LDM || m->family == CKPT_CLIP)
        m->family = CKPT_SD1; /* assembled from SD1.x-family components */
    set_name(m, opt->path ? opt->path : unet->path);
    TRY(load_unet(m, dev, unet));
    TRY(load_vae(m, dev, vae));
    TRY(load_clip(m, dev, clip));
    if (m->clip.cfg.hidden_size != m->unet.cfg.cross_attention_dim) {
        st = df_error(DF_EINVAL, "text encoder width %d does not match the UNet's cross-attention width %d",
                      m->clip.cfg.hidden_size, m->unet.cfg.cross_attention_dim);
        goto done;
    }
    TRY(tok_create(clip_vocab_gz, CLIP_VOCAB_GZ_SIZE, &m->tokenizer));
    TRY(set_hash(m, hash_path));
    if (main_src.file && main_src.kind.family == CKPT_SD1) report_outside(opt, main_src.file);
    report_unused(opt, m->unet_weights, "UNet");
    report_unused(opt, m->vae_weights, "VAE");
    report_unused(opt, m->clip_weights, "text encoder");
done:
    source_close(&main_src);
    source_close(&unet_src);
    source_close(&vae_src);
    source_close(&clip_src);
    if (st != DF_OK) {
        model_destroy(m);
        return st;
    }
    *out = m;
    return DF_OK;
}

void model_destroy(struct model *m) {
    if (!m) return;
    unet_free(&m->unet);
    vae_free(&m->vae);
    clip_free(&m->clip);
    wts_destroy(m->unet_weights);
    wts_destroy(m->vae_weights);
    wts_destroy(m->clip_weights);
    tok_destroy(m->tokenizer);
    free(m);
}

char *model_describe(const struct model *m) {
    const struct unet_config *u = &m->unet.cfg;
    const struct vae_config *v = &m->vae.cfg;
    const struct clip_config *c = &m->clip.cfg;
    char ch[128] = "", heads[128] = "";
    for (int i = 0; i < u->levels; i++) {
        size_t a = strlen(ch), b = strlen(heads);
        snprintf(ch + a, sizeof ch - a, "%s%d", i ? ", " : "", u->block_out_channels[i]);
        snprintf(heads + b, sizeof heads - b, "%s%d", i ? ", " : "", u->num_attention_heads[i]);
    }
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    if (!f) return NULL;
    fprintf(f, "model: %s\nfamily: %s\nlayout: %s\nhash: %s\ndtype on device: %s\n", m->name,
            ckpt_family_name(m->family), m->layout, m->hash, m->precision == WTS_F16 ? "fp16" : "fp32");
    fprintf(f, "unet: %lld parameters, block_out_channels [%s], heads [%s], layers_per_block %d, "
               "cross_attention_dim %d, linear projection %s\n",
            (long long)wts_parameter_count(m->unet_weights), ch, heads, u->layers_per_block[0], u->cross_attention_dim,
            u->use_linear_projection ? "yes" : "no");
    fprintf(f, "vae: %lld parameters, %d blocks, latent channels %d, scaling factor %g\n",
            (long long)wts_parameter_count(m->vae_weights), v->n_blocks, v->latent_channels, v->scaling_factor);
    fprintf(f, "text encoder: %lld parameters, width %d, %d layers, %d heads\n",
            (long long)wts_parameter_count(m->clip_weights), c->hidden_size, c->num_hidden_layers,
            c->num_attention_heads);
    fprintf(f, "scheduler: %s betas %g..%g, prediction %s\n", "diffusers config", m->scheduler.beta_start,
            m->scheduler.beta_end, m->scheduler.prediction_type == SMP_PRED_V ? "v_prediction" : "epsilon");
    fprintf(f, "device memory for weights: %.1f MiB\n",
            (double)(wts_device_bytes(m->unet_weights) + wts_device_bytes(m->vae_weights) +
                     wts_device_bytes(m->clip_weights)) / (1 << 20));
    fclose(f);
    return s;
}
