/* bench_kernels: GEMM-shaped kernels on the Vulkan device against a plain C
 * loop (i-k-j order, single thread), same inputs, same run.
 *
 *   build/bench_kernels                         the encoders' own choice
 *   build/bench_kernels tiled BM BN BK TM TN    force the shared-memory tiles
 *   build/bench_kernels sg TM TN                force the subgroup path
 *
 * Times are the median of 3 runs after a warm-up: host wall time around
 * prog_run (submit + wait) and the GPU time of the kernel's dispatches from
 * timestamps. Validation is off: the layer costs time per dispatch. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../compute/kern_gemm.h"
#include "testutil.h"

#define RUNS 3

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void die(const char *what) {
    fprintf(stderr, "bench_kernels: %s: %s\n", what, df_errmsg());
    exit(1);
}

struct result {
    const char *name, *shape;
    double flops;
    double gpu_ms, gpu_ts_ms, c_ms, rel;
};

/* Runs the program RUNS+1 times; fills host and timestamp medians. */
static void time_gpu(struct program *p, struct cg_tensor *in, const float *data, struct result *r) {
    double host[RUNS], ts[RUNS];
    struct prog_timing tm[8];
    if (prog_write(p, in, data) != DF_OK) die("prog_write");
    for (int i = -1; i < RUNS; i++) {
        double t0 = tu_seconds();
        if (prog_run(p) != DF_OK) die("prog_run");
        double t1 = tu_seconds();
        if (i < 0) continue;
        host[i] = (t1 - t0) * 1e3;
        int nd = prog_profile(p, tm, 8);
        ts[i] = 0;
        for (int k = 0; k < nd && k < 8; k++) ts[i] += tm[k].ms;
        if (nd == 0) ts[i] = NAN;
    }
    r->gpu_ms = median(host, RUNS);
    r->gpu_ts_ms = median(ts, RUNS);
}

/* Times fn(ctx) RUNS times after a warm-up; returns the median in ms. */
static double time_c(void (*fn)(void *), void *ctx) {
    double t[RUNS];
    fn(ctx);
    for (int i = 0; i < RUNS; i++) {
        double t0 = tu_seconds();
        fn(ctx);
        t[i] = (tu_seconds() - t0) * 1e3;
    }
    return median(t, RUNS);
}

/* ---- matmul: y[M,N] = a[M,K] @ w[N,K]^T (nn.Linear) ---------------------- */

struct mm_ctx {
    int m, k, n;
    const float *a, *wt; /* wt: w transposed to [K, N] for the i-k-j loop */
    float *y;
};

static void c_matmul(void *p) {
    struct mm_ctx *c = p;
    for (int i = 0; i < c->m; i++) {
        float *yr = c->y + (size_t)i * c->n;
        memset(yr, 0, (size_t)c->n * sizeof *yr);
        for (int kk = 0; kk < c->k; kk++) {
            float av = c->a[(size_t)i * c->k + kk];
            const float *wr = c->wt + (size_t)kk * c->n;
            for (int j = 0; j < c->n; j++) yr[j] += av * wr[j];
        }
    }
}

static void bench_matmul(struct device *d, int m, int k, int n, enum dtype wdt, struct result *r) {
    float *a = tu_random((size_t)m * k, 1, -1, 1);
    float *w = tu_random((size_t)n * k, 2, -0.1f, 0.1f);
    if (wdt == DT_F16) tu_round_f16(w, (size_t)n * k);
    float *wt = malloc((size_t)n * k * sizeof *wt);
    for (int j = 0; j < n; j++)
        for (int kk = 0; kk < k; kk++) wt[(size_t)kk * n + j] = w[(size_t)j * k + kk];

    struct cg_graph *g;
    if (cg_create(&g) != DF_OK) die("cg_create");
    struct cg_tensor *ta = cg_input(g, "a", 2, (int64_t[]){m, k});
    struct buf *wbuf;
    struct cg_tensor *tw = tu_weight(g, d, w, wdt, 2, (int64_t[]){n, k}, &wbuf);
    struct cg_tensor *ty = cg_linear(g, ta, tw, NULL);
    cg_output(g, ty);
    struct program *p;
    if (prog_create(d, g, &(struct prog_options){.profile = true}, &p) != DF_OK) die("prog_create");
    time_gpu(p, ta, a, r);
    float *y = malloc((size_t)m * n * sizeof *y), *yc = malloc((size_t)m * n * sizeof *yc);
    if (prog_read(p, ty, y) != DF_OK) die("prog_read");

    struct mm_ctx c = {m, k, n, a, wt, yc};
    r->c_ms = time_c(c_matmul, &c);
    r->rel = tu_rel_l2f(y, yc, (size_t)m * n);
    r->flops = 2.0 * m * n * k;
    prog_destroy(p);
    cg_destroy(g);
    buf_destroy(wbuf);
    free(a), free(w), free(wt), free(y), free(yc);
}

/* ---- conv2d 3x3, pad 1, stride 1, batch 1 -------------------------------- */

struct conv_ctx {
    int c, h, w, o;
    const float *x, *wt;
    float *y;
};

/* Direct convolution, i-k-j shaped: for each output channel and each
 * weight tap, one scaled input row is added along the contiguous x axis. */
static void c_conv3x3(void *p) {
    struct conv_ctx *c = p;
    int h = c->h, w = c->w;
    memset(c->y, 0, (size_t)c->o * h * w * sizeof *c->y);
    for (int o = 0; o < c->o; o++) {
        float *yo = c->y + (size_t)o * h * w;
        for (int ci = 0; ci < c->c; ci++) {
            const float *xc = c->x + (size_t)ci * h * w;
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    float wv = c->wt[(((size_t)o * c->c + ci) * 3 + ky) * 3 + kx];
                    int x0 = kx == 0 ? 1 : 0, x1 = kx == 2 ? w - 1 : w;
                    for (int oy = 0; oy < h; oy++) {
                        int iy = oy + ky - 1;
                        if (iy < 0 || iy >= h) continue;
                        const float *xr = xc + (size_t)iy * w + (kx - 1);
                        float *yr = yo + (size_t)oy * w;
                        for (int ox = x0; ox < x1; ox++) yr[ox] += wv * xr[ox];
                    }
                }
        }
    }
}

/* c_ms >= 0: the C loop's time is known from the same shape with fp32
 * weights (same arithmetic): run it once for the reference only. */
static void bench_conv(struct device *d, int ch, int hw, int o, enum dtype wdt, double c_ms, struct result *r) {
    size_t nx = (size_t)ch * hw * hw, nw = (size_t)o * ch * 9, ny = (size_t)o * hw * hw;
    float *x = tu_random(nx, 3, -1, 1);
    float *w = tu_random(nw, 4, -0.05f, 0.05f);
    if (wdt == DT_F16) tu_round_f16(w, nw);
    struct cg_graph *g;
    if (cg_create(&g) != DF_OK) die("cg_create");
    struct cg_tensor *tx = cg_input(g, "x", 4, (int64_t[]){1, ch, hw, hw});
    struct buf *wbuf;
    struct cg_tensor *tw = tu_weight(g, d, w, wdt, 4, (int64_t[]){o, ch, 3, 3}, &wbuf);
    struct cg_tensor *ty = cg_conv2d(g, tx, tw, NULL, 1, 1, 1, 1, 1);
    cg_output(g, ty);
    struct program *p;
    if (prog_create(d, g, &(struct prog_options){.profile = true}, &p) != DF_OK) die("prog_create");
    time_gpu(p, tx, x, r);
    float *y = malloc(ny * sizeof *y), *yc = malloc(ny * sizeof *yc);
    if (prog_read(p, ty, y) != DF_OK) die("prog_read");

    struct conv_ctx c = {ch, hw, hw, o, x, w, yc};
    if (c_ms >= 0) {
        c_conv3x3(&c);
        r->c_ms = c_ms;
    } else {
        r->c_ms = time_c(c_conv3x3, &c);
    }
    r->rel = tu_rel_l2f(y, yc, ny);
    r->flops = 2.0 * o * (double)hw * hw * ch * 9;
    prog_destroy(p);
    cg_destroy(g);
    buf_destroy(wbuf);
    free(x), free(w), free(y), free(yc);
}

static const char *describe(const struct gemm_tiles *t, char *buf, size_t n) {
    if (t->path == GEMM_SUBGROUP)
        snprintf(buf, n, "subgroup path, %d rows x %d columns (%d per lane)", t->bm, t->bn, t->tn);
    else
        snprintf(buf, n, "tiled path, %dx%d tiles, BK %d, %dx%d per invocation", t->bm, t->bn, t->bk, t->tm, t->tn);
    return buf;
}

int main(int argc, char **argv) {
    struct dev_config cfg = {.index = -1, .validation = false};
    struct device *d;
    if (dev_create(&cfg, &d) != DF_OK) die("no Vulkan device");
    const struct dev_caps *caps = dev_caps(d);
    struct gemm_override o = {.storage16 = -1};
    if (argc == 7 && !strcmp(argv[1], "tiled"))
        o.tiles = (struct gemm_tiles){GEMM_TILED, atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6])};
    else if (argc == 4 && !strcmp(argv[1], "sg"))
        o.tiles = kern_gemm_subgroup_tiles(caps, atoi(argv[2]), atoi(argv[3]));
    else if (argc != 1) {
        fprintf(stderr, "usage: %s [tiled BM BN BK TM TN | sg TM TN]\n", argv[0]);
        return 2;
    }
    if (o.tiles.bm) {
        if (!kern_gemm_tiles_valid(caps, &o.tiles)) {
            fprintf(stderr, "bench_kernels: those tiles are not valid on this device\n");
            return 2;
        }
        kern_gemm_override(&o);
    }
    char what[128];
    struct gemm_tiles mt = kern_gemm_tiles(caps, 4096, 320, 320), ct = kern_gemm_tiles(caps, 320, 4096, 2880);
    printf("device: %s (%s)\n", caps->name, caps->driver);
    printf("matmul: %s\n", describe(&mt, what, sizeof what));
    printf("conv:   %s\n", describe(&ct, what, sizeof what));
    printf("fp16 weights via %s\n", mt.path == GEMM_TILED && caps->storage_16bit ? "16-bit storage" : "packed words");
    printf("C loop: i-k-j, single thread, this binary's CFLAGS. Median of %d after a warm-up;\n"
           "disp ms = GPU time of the dispatches from timestamps.\n\n", RUNS);

    struct result res[4] = {
        {.name = "matmul fp32 w", .shape = "4096x320x320"},
        {.name = "matmul fp16 w", .shape = "4096x320x320"},
        {.name = "conv3x3 fp32 w", .shape = "320->320 64x64"},
        {.name = "conv3x3 fp16 w", .shape = "320->320 64x64"},
    };
    bench_matmul(d, 4096, 320, 320, DT_F32, &res[0]);
    bench_matmul(d, 4096, 320, 320, DT_F16, &res[1]);
    bench_conv(d, 320, 64, 320, DT_F32, -1, &res[2]);
    bench_conv(d, 320, 64, 320, DT_F16, res[2].c_ms, &res[3]);

    printf("%-15s %-15s %9s %9s %9s %9s %9s %9s\n", "kernel", "shape", "GPU ms", "GPU GF/s", "disp ms",
           "C ms", "C GF/s", "rel L2");
    for (int i = 0; i < 4; i++) {
        const struct result *r = &res[i];
        printf("%-15s %-15s %9.1f %9.2f %9.1f %9.1f %9.2f %9.2e\n", r->name, r->shape, r->gpu_ms,
               r->flops / (r->gpu_ms * 1e6), r->gpu_ts_ms, r->c_ms, r->flops / (r->c_ms * 1e6), r->rel);
    }
    dev_destroy(d);
    int bad = 0;
    for (int i = 0; i < 4; i++) bad |= !(res[i].rel <= 1e-4);
    if (bad) fprintf(stderr, "bench_kernels: GPU and C loop disagree\n");
    return bad;
}
