/* cli: `diffusiond generate` (one generation to PNG files, like sd.cpp's
 * CLI) and `diffusiond info` (what a model file was recognised as). */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/device.h"
#include "server/image.h"
#include "server/infotext.h"
#include "models/model.h"
#include "models/pipeline.h"

#define MAX_INIT_PIXELS (4096 * 4096)

struct cli_args {
    struct model_options model;
    struct dev_config device;
    struct pipe_request req;
    const char *out, *init_image;
};

bool cli_component_option(const char *opt, const char *value, struct model_options *mo) {
    for (int c = 0; c < COMP_COUNT; c++) {
        char name[64];
        snprintf(name, sizeof name, "--%s", comp_table[c].name);
        for (char *p = name + 2; *p; p++) *p = *p == '_' ? '-' : *p;
        if (strcmp(opt, name) == 0) {
            mo->component[c] = value;
            return true;
        }
    }
    return false;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: diffusiond generate --model PATH --prompt TEXT [options] -o OUT.png\n"
            "       diffusiond info MODEL [--unet F] [--vae F] [--text-encoder F] ...\n\n"
            "model:   --model PATH            single-file checkpoint or diffusers folder\n"
            "         --unet F --vae F --text-encoder F --text-encoder-2 F   components given separately\n"
            "         --family sd1|sd2|sdxl   for component files that do not say\n"
            "         --fp32                  fp32 weights on the device (default fp16)\n"
            "         --device NAME|INDEX     Vulkan device (default: best available)\n"
            "request: --prompt TEXT --negative TEXT\n"
            "         --width N --height N    (512 x 512)\n"
            "         --steps N (20) --cfg X (7) --batch N (1) --clip-skip N (1)\n"
            "         --sampler euler|euler_a|heun|ddim|dpmpp_2m|lcm (euler_a)\n"
            "         --schedule default|karras|exponential|sgm_uniform (default)\n"
            "         --seed N (-1: random) --rng torch|a1111 (torch)\n"
            "         --init-image PNG --strength X (0.75)   image-to-image\n"
            "output:  -o OUT.png              batch > 1 writes OUT-1.png, OUT-2.png, ...\n");
}

static void log_line(void *ctx, const char *message) {
    (void)ctx;
    fprintf(stderr, "diffusiond: %s\n", message);
}

static int parse_int(const char *opt, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < -2147483647L || v > 2147483647L) {
        fprintf(stderr, "diffusiond: %s expects an integer, got \"%s\"\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, struct cli_args *a, bool generate) {
    a->model.precision = WTS_F16;
    a->model.log = log_line;
    a->device.index = -1;
    a->req = (struct pipe_request){.width = 512, .height = 512, .steps = 20, .batch = 1, .cfg_scale = 7,
                                   .sampler = SMP_EULER_A, .seed = -1, .clip_skip = 1, .strength = 0.75f};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE do { if (!v) { fprintf(stderr, "diffusiond: %s needs a value\n", o); return -1; } i++; } while (0)
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) { usage(stdout); return 1; }
        else if (!strcmp(o, "--fp32")) a->model.precision = WTS_F32;
        else if (!strcmp(o, "--fp16")) a->model.precision = WTS_F16;
        else if (!strcmp(o, "--model")) { NEED_VALUE; a->model.path = v; }
        else if (cli_component_option(o, v, &a->model)) { NEED_VALUE; }
        else if (!strcmp(o, "--family")) { NEED_VALUE; a->model.family = v; }
        else if (!strcmp(o, "--device")) {
            NEED_VALUE;
            char *end;
            long idx = strtol(v, &end, 10);
            if (*end == 0 && end != v) a->device.index = (int)idx;
            else a->device.name_contains = v;
        } else if (generate && !strcmp(o, "--prompt")) { NEED_VALUE; a->req.prompt = (char *)v; }
        else if (generate && !strcmp(o, "--negative")) { NEED_VALUE; a->req.negative_prompt = (char *)v; }
        else if (generate && !strcmp(o, "--width")) { NEED_VALUE; if (parse_int(o, v, &a->req.width)) return -1; }
        else if (generate && !strcmp(o, "--height")) { NEED_VALUE; if (parse_int(o, v, &a->req.height)) return -1; }
        else if (generate && !strcmp(o, "--steps")) { NEED_VALUE; if (parse_int(o, v, &a->req.steps)) return -1; }
        else if (generate && !strcmp(o, "--batch")) { NEED_VALUE; if (parse_int(o, v, &a->req.batch)) return -1; }
        else if (generate && !strcmp(o, "--clip-skip")) { NEED_VALUE; if (parse_int(o, v, &a->req.clip_skip)) return -1; }
        else if (generate && !strcmp(o, "--cfg")) { NEED_VALUE; a->req.cfg_scale = strtof(v, NULL); }
        else if (generate && !strcmp(o, "--strength")) { NEED_VALUE; a->req.strength = strtof(v, NULL); }
        else if (generate && !strcmp(o, "--seed")) {
            NEED_VALUE;
            char *end;
            errno = 0;
            long long s = strtoll(v, &end, 10);
            if (errno || *end || end == v) { fprintf(stderr, "diffusiond: --seed expects an integer\n"); return -1; }
            a->req.seed = s;
        } else if (generate && !strcmp(o, "--sampler")) {
            NEED_VALUE;
            if (smp_kind_from_name(v, &a->req.sampler) != DF_OK) { fprintf(stderr, "diffusiond: %s\n", df_errmsg()); return -1; }
        } else if (generate && !strcmp(o, "--schedule")) {
            NEED_VALUE;
            if (smp_schedule_from_name(v, &a->req.schedule) != DF_OK) { fprintf(stderr, "diffusiond: %s\n", df_errmsg()); return -1; }
        } else if (generate && !strcmp(o, "--rng")) {
            NEED_VALUE;
            if (rng_kind_from_name(v, &a->req.rng) != DF_OK) { fprintf(stderr, "diffusiond: %s\n", df_errmsg()); return -1; }
        } else if (generate && !strcmp(o, "--init-image")) { NEED_VALUE; a->init_image = v; }
        else if (generate && (!strcmp(o, "-o") || !strcmp(o, "--output"))) { NEED_VALUE; a->out = v; }
        else if (!generate && o[0] != '-' && !a->model.path) a->model.path = o;
        else {
            fprintf(stderr, "diffusiond: unknown option \"%s\"\n", o);
            usage(stderr);
            return -1;
        }
#undef NEED_VALUE
    }
    if (!a->model.path && !a->model.component[COMP_UNET]) {
        fprintf(stderr, "diffusiond: no model: give --model PATH (or --unet, --vae, --text-encoder, ...)\n");
        return -1;
    }
    if (generate && (!a->req.prompt || !a->out)) {
        fprintf(stderr, "diffusiond: generate needs --prompt and -o\n");
        return -1;
    }
    return 0;
}

static int load(struct cli_args *a, struct device **dev, struct model **m) {
    if (dev_create(&a->device, dev) != DF_OK) {
        fprintf(stderr, "diffusiond: %s\n", df_errmsg());
        return -1;
    }
    if (model_load(*dev, &a->model, m) != DF_OK) {
        fprintf(stderr, "diffusiond: %s\n", df_errmsg());
        dev_destroy(*dev);
        return -1;
    }
    return 0;
}

int cli_info_main(int argc, char **argv) {
    struct cli_args a = {0};
    int r = parse_args(argc, argv, &a, false);
    if (r) return r < 0 ? 2 : 0;
    struct device *dev;
    struct model *m;
    if (load(&a, &dev, &m)) return 1;
    char *text = model_describe(m);
    fputs(text ? text : "out of memory\n", stdout);
    free(text);
    model_destroy(m);
    dev_destroy(dev);
    return 0;
}

static int read_file(const char *path, uint8_t **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            uint8_t *bigger = cap < (256u << 20) ? realloc(buf, cap *= 2) : NULL;
            if (!bigger) { free(buf); buf = NULL; }
            else buf = bigger;
        }
    }
    fclose(f);
    if (!buf) return -1;
    *data = buf;
    *len = n;
    return 0;
}

/* Decodes the init image and resizes it (PIL Lanczos, as diffusers' and
 * A1111's img2img do) to the requested size. */
static int load_init_image(struct cli_args *a, float **pixels) {
    uint8_t *png;
    size_t len;
    if (read_file(a->init_image, &png, &len)) {
        fprintf(stderr, "diffusiond: cannot read %s: %s\n", a->init_image, strerror(errno));
        return -1;
    }
    float *rgb = NULL;
    int w, h;
    df_status st = img_decode_png(png, len, MAX_INIT_PIXELS, &rgb, &w, &h, NULL);
    free(png);
    if (st != DF_OK) {
        fprintf(stderr, "diffusiond: %s: %s\n", a->init_image, df_errmsg());
        return -1;
    }
    if (w != a->req.width || h != a->req.height) {
        float *resized = malloc((size_t)a->req.width * a->req.height * 3 * sizeof *resized);
        if (!resized || img_resize(rgb, w, h, resized, a->req.width, a->req.height) != DF_OK) {
            fprintf(stderr, "diffusiond: resizing %s: %s\n", a->init_image, resized ? df_errmsg() : "out of memory");
            free(resized);
            free(rgb);
            return -1;
        }
        free(rgb);
        rgb = resized;
    }
    *pixels = rgb;
    return 0;
}

static void on_progress(void *ctx, enum pipe_stage stage, int step, int steps, double elapsed) {
    (void)ctx;
    if (stage == PIPE_DENOISE && steps > 0)
        fprintf(stderr, "\rdiffusiond: step %d/%d  %.1fs", step, steps, elapsed);
    if (stage == PIPE_DENOISE && step == steps) fputc('\n', stderr);
}

static void output_name(const char *out, int i, int n, char *name, size_t cap) {
    if (n == 1) {
        snprintf(name, cap, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(name, cap, "%.*s-%d%s", (int)(dot - out), out, i + 1, dot);
}

static int write_pngs(struct cli_args *a, const struct model *m, const struct pipe_result *res) {
    for (int i = 0; i < res->count; i++) {
        struct info_params ip = {
            .prompt = a->req.prompt, .negative_prompt = a->req.negative_prompt, .steps = a->req.steps,
            .sampler = smp_kind_a1111_name(a->req.sampler),
            .schedule_type = a->req.schedule == SMP_SCHEDULE_DEFAULT ? NULL : smp_schedule_a1111_name(a->req.schedule),
            .cfg_scale = a->req.cfg_scale, .seed = (int64_t)res->seeds[i], .width = res->width, .height = res->height,
            .model_hash = m->hash, .model_name = m->name,
            .denoising_strength = a->req.init_image ? a->req.strength : -1, .clip_skip = a->req.clip_skip,
            .rng = a->req.rng == RNG_TORCH_CPU ? "CPU" : NULL, .version = "diffusiond",
        };
        char *text = NULL, name[4096];
        uint8_t *png = NULL;
        size_t len = 0;
        df_status st = info_format(&ip, &text);
        if (st == DF_OK)
            st = img_encode_png(res->images + (size_t)i * res->width * res->height * 3, res->width, res->height, text,
                                &png, &len);
        free(text);
        if (st != DF_OK) {
            fprintf(stderr, "diffusiond: encoding PNG: %s\n", df_errmsg());
            return -1;
        }
        output_name(a->out, i, res->count, name, sizeof name);
        FILE *f = fopen(name, "wb");
        bool ok = f && fwrite(png, 1, len, f) == len;
        if (f && fclose(f)) ok = false;
        free(png);
        if (!ok) {
            fprintf(stderr, "diffusiond: writing %s: %s\n", name, strerror(errno));
            return -1;
        }
        printf("wrote %s (seed %llu)\n", name, (unsigned long long)res->seeds[i]);
    }
    return 0;
}

int cli_generate_main(int argc, char **argv) {
    struct cli_args a = {0};
    int r = parse_args(argc, argv, &a, true);
    if (r) return r < 0 ? 2 : 0;
    float *init = NULL;
    if (a.init_image) {
        if (load_init_image(&a, &init)) return 1;
        a.req.init_image = init;
    }
    struct pipe_hooks hooks = {.progress = on_progress};
    struct device *dev;
    struct model *m;
    if (load(&a, &dev, &m)) {
        free(init);
        return 1;
    }
    struct pipe_worker *w = NULL;
    struct pipe_result res = {0};
    int rc = 1;
    if (pipe_worker_create(dev, &w) != DF_OK || pipe_generate(w, m, &a.req, &hooks, &res) != DF_OK) {
        fprintf(stderr, "diffusiond: %s\n", df_errmsg());
        goto done;
    }
    if (write_pngs(&a, m, &res)) goto done;
    printf("text encoder %.2fs, image encoder %.2fs, denoising %.2fs, VAE decode %.2fs, total %.2fs; "
           "device memory peak %.1f MiB\n",
           res.seconds_text, res.seconds_encode, res.seconds_denoise, res.seconds_decode, res.seconds_total,
           (double)res.device_peak_bytes / (1 << 20));
    rc = 0;
done:
    pipe_result_free(&res);
    pipe_worker_destroy(w);
    model_destroy(m);
    dev_destroy(dev);
    free(init);
    return rc;
}
