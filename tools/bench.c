/* bench: times the stages of the real pipeline on a model — text encoding,
 * one UNet evaluation at batch 2 (one CFG step), VAE decode — with
 * per-kernel GPU time from timestamps, achieved GFLOP/s against the UNet's
 * FLOP count, peak device memory and peak RSS. With --runs N each stage is
 * replayed N times after the first run and the median host time is
 * reported (the profile is the last run's): what a GPU needs, where the
 * first run pays pipeline and driver warm-up. A benchmark, not a test. */
#include "bench.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "compute/kern_gemm.h"
#include "compute/program.h"
#include "models/model.h"
#include "models/vae_tiles.h"
#include "../common/clock.h"

#define MAX_SIZES 8

static void log_line(void *ctx, const char *message) {
    (void)ctx;
    fprintf(stderr, "bench: %s\n", message);
}

/* Per op-type GPU time and FLOPs of one profiled run. */
struct breakdown {
    double ms[CG_OP_COUNT];
    double flops[CG_OP_COUNT];
    int dispatches[CG_OP_COUNT];
};

struct stage {
    const char *name;
    double host_s;       /* prog_run wall time (median of the replays) */
    double first_s;      /* the first run, when replayed */
    double gpu_ms;       /* sum of dispatch timestamps */
    double flops;
    uint64_t arena;
    struct breakdown kinds;
};

static int runs = 1; /* timed replays after the first run (1: the first run alone) */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static df_status time_pass(struct device *dev, struct cg_graph *g, struct cg_tensor **inputs, int ninputs,
                           struct stage *s) {
    struct program *p = NULL;
    struct prog_options opt = {.profile = true};
    df_status st = prog_create(dev, g, &opt, &p);
    if (st != DF_OK) return st;
    s->arena = prog_arena_bytes(p);
    /* inputs: small values; a random-weight model's numbers do not matter */
    for (int i = 0; i < ninputs && st == DF_OK; i++) {
        size_t n = (size_t)cg_numel(inputs[i]);
        float *x = malloc(n * sizeof *x);
        if (!x) st = df_error(DF_ENOMEM, "out of memory");
        for (size_t k = 0; x && k < n; k++) x[k] = (float)((k * 2654435761u) % 1000) / 1000.0f - 0.5f;
        if (x && !strncmp(inputs[i]->name, "input_ids", 9))
            for (size_t k = 0; k < n; k++) x[k] = (float)(k % 77 == 0 ? 49406 : 320 + k % 1000);
        if (x && !strncmp(inputs[i]->name, "eos_rows", 8)) /* row b: the last token of prompt b */
            for (size_t k = 0; k < n; k++) x[k] = (float)(k * 77 + 76);
        if (x && !strcmp(inputs[i]->name, "timestep"))
            for (size_t k = 0; k < n; k++) x[k] = 500;
        if (st == DF_OK) st = prog_write(p, inputs[i], x);
        free(x);
    }
    double t = clock_now();
    if (st == DF_OK) st = prog_run(p);
    s->host_s = clock_now() - t;
    if (runs > 1) {
        double times[64];
        int n = runs < 64 ? runs : 64;
        for (int i = 0; i < n && st == DF_OK; i++) {
            t = clock_now();
            st = prog_run(p);
            times[i] = clock_now() - t;
        }
        qsort(times, (size_t)n, sizeof *times, cmp_double);
        s->first_s = s->host_s;
        s->host_s = times[n / 2];
    }
    int n = prog_profile(p, NULL, 0);
    struct prog_timing *tm = n > 0 ? calloc((size_t)n, sizeof *tm) : NULL;
    if (tm) prog_profile(p, tm, n);
    for (int i = 0; tm && i < n; i++) {
        enum cg_op_type type = cg_op_at(g, tm[i].op)->type;
        s->kinds.ms[type] += tm[i].ms;
        s->kinds.dispatches[type]++;
        s->gpu_ms += tm[i].ms;
    }
    for (int i = 0; i < cg_op_count(g); i++) {
        const struct cg_op *op = cg_op_at(g, i);
        double f = cg_op_flops(op);
        s->kinds.flops[op->type] += f;
        s->flops += f;
    }
    free(tm);
    prog_destroy(p);
    return st;
}

/* A stage run n times over equal inputs (VAE tiles): n times the cost. */
static void stage_scale(struct stage *s, int n) {
    s->host_s *= n;
    s->first_s *= n;
    s->gpu_ms *= n;
    s->flops *= n;
    for (int k = 0; k < CG_OP_COUNT; k++) {
        s->kinds.ms[k] *= n;
        s->kinds.flops[k] *= n;
        s->kinds.dispatches[k] *= n;
    }
}

static void print_stage(const struct stage *s) {
    printf("  %-14s %9.4f s  gpu %9.2f ms  %8.2f GFLOP  %8.2f GFLOP/s  arena %7.1f MiB", s->name, s->host_s,
           s->gpu_ms, s->flops * 1e-9, s->host_s > 0 ? s->flops * 1e-9 / s->host_s : 0, (double)s->arena / (1 << 20));
    if (s->first_s > 0) printf("  (first run %.3f s)", s->first_s);
    printf("\n");
    for (int k = 0; k < CG_OP_COUNT; k++) {
        if (!s->kinds.dispatches[k]) continue;
        double ms = s->kinds.ms[k];
        printf("      %-16s %5d dispatches %10.3f ms (%4.1f%%)  %8.2f GFLOP/s\n", cg_op_name((enum cg_op_type)k),
               s->kinds.dispatches[k], ms, s->gpu_ms > 0 ? 100 * ms / s->gpu_ms : 0,
               ms > 0 ? s->kinds.flops[k] * 1e-6 / ms : 0);
    }
}

/* The family's passes as a CFG step runs them: text encoders and one
 * denoiser evaluation at batch 2 (negative + positive) at `size`, one VAE
 * decode at `decode_size`. */
static df_status bench_size(struct device *dev, struct model *m, int size, int decode_size) {
    int s = vae_scale(&m->vae.cfg), lh = size / s, lw = size / s;
    struct stage text = {.name = "text encoders"}, unet = {.name = "denoiser (B=2)"}, vae = {.name = "VAE decode"};
    struct cg_graph *g = NULL;
    df_status st;
    if ((st = cg_create(&g)) != DF_OK) return st;
    struct fam_text_pass tp = {0};
    if ((st = m->family->record_text(g, m, 2, 1, &tp)) == DF_OK) {
        struct cg_tensor *in[2 * FAM_MAX_ENCODERS];
        int n = 0;
        for (int k = 0; k < FAM_MAX_ENCODERS; k++) {
            if (tp.ids[k]) in[n++] = tp.ids[k];
            if (tp.eos_rows[k]) in[n++] = tp.eos_rows[k];
        }
        cg_output(g, tp.context);
        if (tp.pooled) cg_output(g, tp.pooled);
        st = time_pass(dev, g, in, n, &text);
    }
    cg_destroy(g);
    if (st != DF_OK) return st;
    if ((st = cg_create(&g)) != DF_OK) return st;
    struct fam_denoise_pass dp = {0};
    if ((st = m->family->record_denoiser(g, m, 2, lh, lw, &dp)) == DF_OK) {
        struct cg_tensor *in[5] = {dp.sample, dp.timestep, dp.context, dp.pooled, dp.time_ids};
        cg_output(g, dp.out);
        st = time_pass(dev, g, in, dp.time_ids ? 5 : 3, &unet);
    }
    cg_destroy(g);
    if (st != DF_OK) return st;
    /* the decode as the pipeline runs it: in tiles when a whole pass would
     * not fit 3/4 of the device's largest allocation; one tile is timed,
     * every tile costs the same */
    struct vae_tiles tiles;
    int tile, overlap, dh = decode_size / s;
    uint64_t budget = dev_caps(dev)->max_allocation_size / 4 * 3;
    if ((st = vae_tiles_pick(dh, dh, 8, budget, vae_decode_bytes, &m->vae, &tile, &overlap)) != DF_OK ||
        (st = vae_tiles_decode_plan(m->vae.cfg.latent_channels, m->vae.cfg.out_channels, s, dh, dh, tile, overlap,
                                    &tiles)) != DF_OK)
        return st;
    if ((st = cg_create(&g)) != DF_OK) return st;
    struct cg_tensor *z = cg_input(g, "latent", 4, (int64_t[]){1, m->vae.cfg.latent_channels, tiles.tile_h,
                                                              tiles.tile_w}),
                     *img;
    if ((st = vae_decode(g, &m->vae, z, &img)) == DF_OK) {
        cg_output(g, img);
        st = time_pass(dev, g, &z, 1, &vae);
    }
    cg_destroy(g);
    if (st != DF_OK) return st;
    int n_tiles = tiles.rows * tiles.cols;
    stage_scale(&vae, n_tiles);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\n%s, %dx%d (latent %dx%d), VAE decode at %dx%d, weights %s\n", m->family->label, size, size, lw, lh,
           decode_size, decode_size, m->precision == WTS_F16 ? "fp16" : "fp32");
    print_stage(&text);
    print_stage(&unet);
    if (n_tiles > 1)
        printf("  (VAE decode in %d tiles of %lldx%lld latent px, overlap %d: one tile timed, times %d)\n", n_tiles,
               (long long)tiles.tile_h, (long long)tiles.tile_w, overlap, n_tiles);
    print_stage(&vae);
    double image_s = text.host_s + 20 * unet.host_s + vae.host_s;
    printf("  one 20-step CFG image ~ %.3f s (text + 20 denoiser evals + decode); %.2f it/s (CFG steps); "
           "denoiser %.2f TFLOP/s effective (host time), %.2f (GPU time)\n",
           image_s, unet.host_s > 0 ? 1 / unet.host_s : 0, unet.host_s > 0 ? unet.flops * 1e-12 / unet.host_s : 0,
           unet.gpu_ms > 0 ? unet.flops * 1e-9 / unet.gpu_ms : 0);
    printf("  peak device memory %.1f MiB, peak RSS %.1f MiB\n", (double)dev_memory_peak(dev) / (1 << 20),
           (double)ru.ru_maxrss / 1024);
    fflush(stdout);
    return DF_OK;
}

int bench_main(int argc, char **argv) {
    struct model_options mo = {.precision = WTS_F16, .log = log_line};
    struct dev_config dc = {.index = -1};
    int sizes[MAX_SIZES], nsizes = 0, decode_size = 0, matrix_bk = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && cli_component_option(argv[i], argv[i + 1], &mo)) i++;
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) mo.path = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc && nsizes < MAX_SIZES) sizes[nsizes++] = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode-size") && i + 1 < argc) decode_size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--fp32")) mo.precision = WTS_F32;
        else if (!strcmp(argv[i], "--no-matrix")) dc.no_matrix_units = true;
        else if (!strcmp(argv[i], "--matrix-bk") && i + 1 < argc) {
            i++;
            matrix_bk = !strcmp(argv[i], "32") ? 32 : !strcmp(argv[i], "64") ? 64 : -1;
        }
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]) > 0 ? atoi(argv[i]) : 1;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) dc.name_contains = argv[++i];
        else {
            fprintf(stderr, "usage: diffusiond bench --model PATH | --unet F --vae F --text-encoder F ...\n"
                            "                       [--size N]... [--decode-size N] [--fp32] [--device NAME]\n"
                            "                       [--runs N] [--no-matrix] [--matrix-bk 32|64]\n");
            return 2;
        }
    }
    if (!mo.path && !mo.component[COMP_UNET]) {
        fprintf(stderr, "bench: --model PATH (or the component files) is required\n");
        return 2;
    }
    if (!nsizes) sizes[nsizes++] = 128;
    /* the matrix GEMM's K slice for every GEMM, for A/B runs (the encoders'
     * own choice: 64 for matmuls, 32 for convolutions) */
    if (matrix_bk < 0) {
        fprintf(stderr, "bench: --matrix-bk takes 32 or 64\n");
        return 2;
    }
    if (matrix_bk) kern_gemm_override(&(struct gemm_override){.storage16 = -1, .coop_bk = matrix_bk});
    struct device *dev;
    if (dev_create(&dc, &dev) != DF_OK) {
        fprintf(stderr, "bench: %s\n", df_errmsg());
        return 1;
    }
    double t = clock_now();
    struct model *m;
    if (model_load(dev, &mo, &m) != DF_OK) {
        fprintf(stderr, "bench: %s\n", df_errmsg());
        dev_destroy(dev);
        return 1;
    }
    const struct dev_caps *c = dev_caps(dev);
    printf("device: %s (%s)\n  fp16 storage %d, shaderFloat16 %d, subgroup %u (%u..%u, control %d), "
           "shared memory %u, coopmat NV %d (KHR ext %d, NV2 ext %d), matrix GEMM %s\n",
           c->name, c->driver, c->storage_16bit, c->shader_float16, c->subgroup_size, c->min_subgroup_size,
           c->max_subgroup_size, c->subgroup_size_control, c->max_shared_memory, c->coopmat_nv, c->coopmat_khr_ext,
           c->coopmat2_nv_ext, c->gemm_coop ? "in use" : c->gemm_coop_available ? "off" : "not offered");
    for (int i = 0; i < c->ncoopmat; i++)
        printf("  coopmat %ux%ux%u A%u B%u C%u D%u\n", c->coopmat[i].m, c->coopmat[i].n, c->coopmat[i].k,
               c->coopmat[i].a, c->coopmat[i].b, c->coopmat[i].c, c->coopmat[i].d);
    printf("model: %s (%s), loaded in %.1f s\n", m->name, m->layout, clock_now() - t);
    int rc = 0;
    for (int i = 0; i < nsizes && !rc; i++) {
        dev_memory_reset_peak(dev);
        if (sizes[i] < 64 || sizes[i] % 64) {
            fprintf(stderr, "bench: size %d is not a multiple of 64\n", sizes[i]);
            rc = 2;
        } else if (bench_size(dev, m, sizes[i], decode_size ? decode_size : sizes[i]) != DF_OK) {
            fprintf(stderr, "bench: %dx%d: %s\n", sizes[i], sizes[i], df_errmsg());
            rc = 1;
        }
    }
    model_destroy(m);
    dev_destroy(dev);
    kern_gemm_override(NULL);
    return rc;
}
