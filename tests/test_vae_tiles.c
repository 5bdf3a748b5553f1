/* vae_tiles: the blend against a plain reference on a synthetic per-pixel
 * pass (tiles that agree give the whole exactly where one tile covers;
 * tiles that disagree blend with the documented ramps), odd sizes, three
 * tiles meeting, encode's down-scaling; the tile-size picker against brute
 * force; the tiny VAE (vae_tiny fixture) decoded and encoded in tiles on
 * the device against the whole pass: bounded by the worst tile, no seams. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../models/vae.h"
#include "../models/vae_tiles.h"
#include "testutil.h"

static struct st_file *open_fixture(const char *file) {
    const char *d = getenv("DF_TEST_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", d && *d ? d : "../shared/fixtures", file);
    struct st_file *f = NULL;
    if (st_open(path, &f) != DF_OK) fail_msg("%s: %s", path, df_errmsg());
    return f;
}

static struct weights *load_diffusers(const struct st_file *f) {
    static const char *const parts[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    struct weights *w = NULL;
    assert_int_equal(wts_create(tu_device(), WTS_F32, &w), DF_OK);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (wts_load(w, f, parts[i], NULL, 0) != DF_OK) fail_msg("wts_load: %s", df_errmsg());
    return w;
}

/* ---- tiles: the blend on a synthetic per-pixel "VAE" ------------------------ */

/* out[o][Y][X] = b[o] + sum_c A[o][c] * (mean of the input pixels output
 * pixel (Y, X) comes from: nearest-upsampled by `up`, box-averaged by
 * `down`), plus the tile's own offset (k-th call: k * off_step). With
 * off_step 0 every tile agrees with the whole. */
struct fake_vae {
    int cin, cout, up, down;
    int64_t h, w; /* of what it is given */
    float off_step;
    int calls;
};

static float fake_pixel(const struct fake_vae *f, const float *in, int o, int64_t Y, int64_t X) {
    double acc = 0.1 * o;
    for (int c = 0; c < f->cin; c++) {
        double a = 0.5 + 0.25 * o - 0.125 * c, m = 0;
        for (int i = 0; i < f->down; i++)
            for (int j = 0; j < f->down; j++)
                m += in[((int64_t)c * f->h + (Y * f->down + i) / f->up) * f->w + (X * f->down + j) / f->up];
        acc += a * m / (f->down * f->down);
    }
    return (float)acc;
}

static void fake_run(struct fake_vae *f, const float *in, float *out) {
    int64_t oh = f->h * f->up / f->down, ow = f->w * f->up / f->down;
    for (int o = 0; o < f->cout; o++)
        for (int64_t y = 0; y < oh; y++)
            for (int64_t x = 0; x < ow; x++)
                out[((int64_t)o * oh + y) * ow + x] = fake_pixel(f, in, o, y, x) + f->calls * f->off_step;
    f->calls++;
}

static df_status fake_tile(void *ctx, const float *in, float *out) {
    fake_run(ctx, in, out);
    return DF_OK;
}

/* Reference weight of tile k along an axis at output px v, straight from
 * the definition: 1 inside, (d + 0.5) / overlap into an overlap. */
static double ref_weight(const struct vae_tiles *t, bool rows, int k, int64_t v) {
    int n = rows ? t->rows : t->cols;
    int64_t tile = (rows ? t->tile_h : t->tile_w) * t->up / t->down;
    int64_t start[64];
    for (int i = 0; i < n; i++) {
        int64_t y, x;
        vae_tiles_origin(t, rows ? i : 0, rows ? 0 : i, &y, &x);
        start[i] = (rows ? y : x) * t->up / t->down;
    }
    if (v < start[k] || v >= start[k] + tile) return 0;
    double wgt = 1;
    if (k > 0) wgt = fmin(wgt, (v - start[k] + 0.5) / (double)(start[k - 1] + tile - start[k]));
    if (k < n - 1) wgt = fmin(wgt, (start[k] + tile - v - 0.5) / (double)(start[k] + tile - start[k + 1]));
    return wgt;
}

struct tile_case {
    int64_t h, w;
    int tile, overlap, up, down;
};

static void check_tile_case(const struct tile_case *tc) {
    struct vae_tiles t;
    int cin = 3, cout = 2;
    if (tc->down == 1)
        assert_int_equal(vae_tiles_decode_plan(cin, cout, tc->up, tc->h, tc->w, tc->tile, tc->overlap, &t), DF_OK);
    else
        assert_int_equal(vae_tiles_encode_plan(cin, cout, tc->down, tc->h, tc->w, tc->tile, tc->overlap, &t), DF_OK);
    int64_t oh = vae_tiles_out_h(&t), ow = vae_tiles_out_w(&t), n = cout * oh * ow;
    assert_int_equal(oh, tc->h * tc->up / tc->down);
    float *in = tu_random((size_t)(cin * tc->h * tc->w), 11, -2, 2);
    float *whole = malloc((size_t)n * sizeof *whole), *tiled = tu_random((size_t)n, 12, -9, 9);
    struct fake_vae all = {cin, cout, tc->up, tc->down, tc->h, tc->w, 0, 0};
    fake_run(&all, in, whole);
    /* tiles that agree: the whole, exactly where one tile covers */
    struct fake_vae f = {cin, cout, tc->up, tc->down, t.tile_h, t.tile_w, 0, 0};
    assert_int_equal(vae_tiles_run(&t, in, fake_tile, &f, tiled), DF_OK);
    assert_int_equal(f.calls, t.rows * t.cols);
    int64_t single = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t y = i / ow % oh, x = i % ow;
        int cover = 0;
        for (int r = 0; r < t.rows; r++)
            for (int c = 0; c < t.cols; c++) cover += ref_weight(&t, true, r, y) > 0 && ref_weight(&t, false, c, x) > 0;
        assert_true(cover >= 1);
        if (cover == 1) {
            single++;
            if (tiled[i] != whole[i]) fail_msg("pixel %lld: %g, whole %g", (long long)i, tiled[i], whole[i]);
        } else if (fabsf(tiled[i] - whole[i]) > 1e-6f * (1 + fabsf(whole[i]))) {
            fail_msg("pixel %lld (in an overlap): %g, whole %g", (long long)i, tiled[i], whole[i]);
        }
    }
    /* tiles that disagree by a constant each: the reference blend of those */
    f.calls = 0;
    f.off_step = 1;
    assert_int_equal(vae_tiles_run(&t, in, fake_tile, &f, tiled), DF_OK);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t y = i / ow % oh, x = i % ow;
        double num = 0, den = 0;
        for (int r = 0; r < t.rows; r++)
            for (int c = 0; c < t.cols; c++) {
                double wgt = ref_weight(&t, true, r, y) * ref_weight(&t, false, c, x);
                num += wgt * (r * t.cols + c);
                den += wgt;
            }
        worst = fmax(worst, fabs(tiled[i] - whole[i] - num / den));
    }
    print_message("  %lldx%lld, tile %d overlap %d, x%d/%d: %dx%d tiles of %lldx%lld, %lld of %lld px from one tile, "
                  "blend vs reference %.1e\n", (long long)tc->h, (long long)tc->w, tc->tile, tc->overlap, tc->up,
                  tc->down, t.rows, t.cols, (long long)t.tile_h, (long long)t.tile_w, (long long)single, (long long)n,
                  worst);
    assert_true(worst < 1e-5);
    free(in);
    free(whole);
    free(tiled);
}

/* Fails on the third 16x16 -> 128x128 one-channel tile, as a cancelled
 * job would. */
static df_status failing_tile(void *ctx, const float *in, float *out) {
    (void)in;
    int *calls = ctx;
    memset(out, 0, 128 * 128 * sizeof *out);
    return ++*calls == 3 ? df_error(DF_ECANCELLED, "cancelled at tile %d", *calls) : DF_OK;
}

static void test_tiles_blend(void **state) {
    (void)state;
    static const struct tile_case cases[] = {
        {21, 37, 16, 4, 8, 1},  /* odd sizes, the last tiles overlap more */
        {16, 16, 16, 4, 8, 1},  /* exactly one tile */
        {10, 50, 16, 4, 2, 1},  /* smaller than a tile in one direction */
        {29, 30, 16, 4, 1, 1},  /* three tiles meet: 0, 12, 13 */
        {40, 40, 16, 0, 2, 1},  /* no overlap */
        {48, 80, 32, 8, 1, 8},  /* encode: image px to latent px */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_tile_case(&cases[i]);

    /* the ramp itself, across the overlap of tile columns 0 and 1 in the
     * first case (latent 12..16 -> image 96..128), where one tile row covers */
    struct vae_tiles t;
    assert_int_equal(vae_tiles_decode_plan(1, 1, 8, 21, 37, 16, 4, &t), DF_OK);
    assert_int_equal(t.rows, 2);
    assert_int_equal(t.cols, 3);
    int64_t y, x;
    vae_tiles_origin(&t, 1, 2, &y, &x);
    assert_true(y == 5 && x == 21);
    float *z = calloc(21 * 37, sizeof *z), *img = malloc(168 * 296 * sizeof *img);
    struct fake_vae f = {1, 1, 8, 1, 16, 16, 1, 0}; /* zero input: each tile is its index, b = 0 */
    assert_int_equal(vae_tiles_run(&t, z, fake_tile, &f, img), DF_OK);
    for (int64_t X = 90; X < 134; X++) {
        double want = X < 96 ? 0 : X >= 128 ? 1 : (X - 96 + 0.5) / 32;
        assert_true(fabs(img[X] - want) < 1e-6);
    }
    free(z);
    free(img);

    /* bad plans; a failing tile's error comes back */
    assert_int_equal(vae_tiles_decode_plan(4, 3, 8, 21, 37, 16, 16, &t), DF_EINVAL);
    assert_int_equal(vae_tiles_encode_plan(3, 8, 8, 60, 64, 32, 8, &t), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "multiples of 8"));
    assert_int_equal(vae_tiles_decode_plan(1, 1, 8, 21, 37, 16, 4, &t), DF_OK);
    int calls = 0;
    z = calloc(21 * 37, sizeof *z);
    img = malloc(168 * 296 * sizeof *img);
    assert_int_equal(vae_tiles_run(&t, z, failing_tile, &calls, img), DF_ECANCELLED);
    assert_int_equal(calls, 3);
    assert_string_equal(df_errmsg(), "cancelled at tile 3");
    free(z);
    free(img);
}

/* Activation bytes that grow with the tile, counting calls. */
struct fake_bytes {
    int calls;
};

static df_status fake_bytes(void *ctx, int64_t h, int64_t w, uint64_t *bytes) {
    ((struct fake_bytes *)ctx)->calls++;
    *bytes = 1000 + (uint64_t)(h * w) * 100;
    return DF_OK;
}

static void test_tiles_pick(void **state) {
    (void)state;
    static const int64_t sizes[][2] = {{128, 96}, {37, 21}, {10, 12}, {300, 17}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t h = sizes[s][0], w = sizes[s][1];
        for (uint64_t budget = 1000; budget < 4000000; budget = budget * 3 / 2) {
            /* brute force: the largest multiple of 8, from 16, that fits */
            int want = 0;
            for (int k = 2; k == 2 || (k - 1) * 8 < (h > w ? h : w); k++) {
                uint64_t b;
                fake_bytes(&(struct fake_bytes){0}, h < k * 8 ? h : k * 8, w < k * 8 ? w : k * 8, &b);
                if (b <= budget) want = k * 8;
            }
            struct fake_bytes fb = {0};
            int tile, overlap;
            df_status st = vae_tiles_pick(h, w, 8, budget, fake_bytes, &fb, &tile, &overlap);
            if (!want) {
                assert_int_equal(st, DF_ENOMEM);
                assert_non_null(strstr(df_errmsg(), "16 px tile"));
                continue;
            }
            assert_int_equal(st, DF_OK);
            assert_int_equal(overlap, tile / 4);
            assert_true(fb.calls <= 2 + 6);
            assert_int_equal(tile, want);
        }
    }
}

/* ---- tiles: the tiny VAE on the device ---------------------------------------- */

/* A decode or an encode of [1, C, h, w] on graph g. */
static struct cg_tensor *pass(struct cg_graph *g, const struct vae_model *m, bool decode, int64_t c, int64_t h,
                              int64_t w, struct cg_tensor **in) {
    struct cg_tensor *out = NULL;
    *in = cg_input(g, "input", 4, (int64_t[]){1, c, h, w});
    df_status st = decode ? vae_decode(g, m, *in, &out) : vae_encode(g, m, *in, &out);
    if (st != DF_OK) fail_msg("VAE pass: %s", df_errmsg());
    return out;
}

/* One recorded pass of the tile size, replayed per tile on a freshly
 * poisoned arena; keeps every tile's result. */
struct device_tile {
    struct cg_graph *g;
    struct cg_tensor *in, *out;
    struct program *p;
    float *kept[16];
    int calls;
};

static df_status device_tile(void *ctx, const float *in, float *out) {
    struct device_tile *d = ctx;
    df_status st = buf_fill(prog_arena(d->p), 0, prog_arena_bytes(d->p) & ~3ull, 0x7fc00000u);
    if (st == DF_OK) st = prog_write(d->p, d->in, in);
    if (st == DF_OK) st = prog_run(d->p);
    if (st == DF_OK) st = prog_read(d->p, d->out, out);
    assert_true(d->calls < 16);
    d->kept[d->calls] = malloc((size_t)cg_nbytes(d->out));
    memcpy(d->kept[d->calls++], out, (size_t)cg_nbytes(d->out));
    return st;
}

/* Largest mean |step| between neighbouring columns (or rows) k-1 and k of
 * d [C, H, W], over the k with at[k] == marked (at NULL: every k). */
static double max_step(const float *d, int64_t c, int64_t h, int64_t w, bool rows, const bool *at, bool marked) {
    double worst = 0;
    int64_t n = rows ? h : w, len = rows ? w : h;
    for (int64_t k = 1; k < n; k++) {
        if (at && at[k] != marked) continue;
        double s = 0;
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t i = 0; i < len; i++) {
                int64_t a = rows ? (ch * h + k) * w + i : (ch * h + i) * w + k, b = rows ? a - w : a - 1;
                s += fabs(d[a] - d[b]);
            }
        worst = fmax(worst, s / (double)(c * len));
    }
    return worst;
}

/* The tiled pass of input x [C, h, w] against the whole one. The blend is
 * a convex combination of the tiles at every pixel, so it is never further
 * from the whole than the worst tile covering the pixel: the tiles differ
 * from the whole by their own GroupNorm statistics, mid-block attention
 * over the tile only and zero padding at their borders, and nothing else
 * may. No seams: the difference from the whole steps no more across tile
 * edges than anywhere else; a hard cut at the middle of each overlap
 * (built from the same tiles) shows that the measure sees seams. */
static void tiled_vs_whole(const struct vae_model *m, bool decode, const struct vae_tiles *t, const float *x) {
    struct device_tile d = {0};
    assert_int_equal(cg_create(&d.g), DF_OK);
    d.out = pass(d.g, m, decode, t->in_channels, t->tile_h, t->tile_w, &d.in);
    cg_output(d.g, d.out);
    if (prog_create(tu_device(), d.g, NULL, &d.p) != DF_OK) fail_msg("prog_create: %s", df_errmsg());
    int64_t oh = vae_tiles_out_h(t), ow = vae_tiles_out_w(t), c = t->out_channels, n = c * oh * ow;
    int64_t th = d.out->ne[2], tw = d.out->ne[3];
    assert_int_equal(th, t->tile_h * t->up / t->down);
    float *tiled = malloc((size_t)n * sizeof *tiled), *cut = malloc((size_t)n * sizeof *cut);
    double t0 = tu_seconds();
    assert_int_equal(vae_tiles_run(t, x, device_tile, &d, tiled), DF_OK);
    double t_tiled = tu_seconds() - t0;
    assert_int_equal(d.calls, t->rows * t->cols);

    struct cg_graph *g = NULL;
    struct cg_tensor *in;
    assert_int_equal(cg_create(&g), DF_OK);
    struct cg_tensor *out = pass(g, m, decode, t->in_channels, t->h, t->w, &in);
    assert_int_equal(cg_numel(out), n);
    float *whole = malloc((size_t)n * sizeof *whole);
    t0 = tu_seconds();
    tu_run(tu_device(), g, 1, &in, (const float *[]){x}, out, whole);
    double t_whole = tu_seconds() - t0;
    cg_destroy(g);

    double max_diff = 0, max_ref = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t ch = i / (oh * ow), y = i / ow % oh, xx = i % ow;
        double bound = 0, best = -1;
        for (int r = 0; r < t->rows; r++)
            for (int k = 0; k < t->cols; k++) {
                double wgt = ref_weight(t, true, r, y) * ref_weight(t, false, k, xx);
                if (wgt <= 0) continue;
                int64_t y0, x0;
                vae_tiles_origin(t, r, k, &y0, &x0);
                y0 = y0 * t->up / t->down;
                x0 = x0 * t->up / t->down;
                float v = d.kept[r * t->cols + k][(ch * th + y - y0) * tw + xx - x0];
                bound = fmax(bound, fabs(v - whole[i]));
                if (wgt > best) best = wgt, cut[i] = v;
            }
        assert_true(isfinite(tiled[i]));
        if (fabs(tiled[i] - whole[i]) > bound * (1 + 1e-5) + 1e-6)
            fail_msg("pixel %lld: tiled %g, whole %g, worst tile only %g off", (long long)i, tiled[i], whole[i], bound);
        max_diff = fmax(max_diff, fabs(tiled[i] - whole[i]));
        max_ref = fmax(max_ref, fabs(whole[i]));
    }
    double rel = tu_rel_l2f(tiled, whole, (size_t)n);

    /* tile edges in output px, per axis */
    bool *edge_y = calloc((size_t)oh + 1, 1), *edge_x = calloc((size_t)ow + 1, 1);
    for (int r = 0; r < t->rows; r++)
        for (int k = 0; k < t->cols; k++) {
            int64_t y0, x0;
            vae_tiles_origin(t, r, k, &y0, &x0);
            y0 = y0 * t->up / t->down;
            x0 = x0 * t->up / t->down;
            edge_y[y0] = edge_y[y0 + th] = edge_x[x0] = edge_x[x0 + tw] = true;
        }
    for (int64_t i = 0; i < n; i++) {
        tiled[i] -= whole[i];
        cut[i] -= whole[i];
    }
    double edge = fmax(max_step(tiled, c, oh, ow, true, edge_y, true), max_step(tiled, c, oh, ow, false, edge_x, true));
    double inner =
        fmax(max_step(tiled, c, oh, ow, true, edge_y, false), max_step(tiled, c, oh, ow, false, edge_x, false));
    double hard = fmax(max_step(cut, c, oh, ow, true, NULL, false), max_step(cut, c, oh, ow, false, NULL, false));
    print_message("  %s %lldx%lld in %dx%d tiles of %lldx%lld: tiled vs whole rel L2 %.3e, max |diff| %.3e (max |whole| "
                  "%.3e); steps of the difference: across tile edges <= %.3e, elsewhere <= %.3e, with hard cuts %.3e; "
                  "%.2f s tiled, %.2f s whole\n", decode ? "decode" : "encode", (long long)t->h, (long long)t->w,
                  t->rows, t->cols, (long long)t->tile_h, (long long)t->tile_w, rel, max_diff, max_ref, edge, inner,
                  hard, t_tiled, t_whole);
    assert_true(edge <= inner);
    assert_true(hard > inner);
    tu_check_validation(tu_device());
    for (int i = 0; i < d.calls; i++) free(d.kept[i]);
    free(edge_y);
    free(edge_x);
    free(tiled);
    free(cut);
    free(whole);
    prog_destroy(d.p);
    cg_destroy(d.g);
}

static void test_tiles_tiny_vae(void **state) {
    (void)state;
    struct st_file *f = open_fixture("vae_tiny.safetensors");
    struct weights *w = load_diffusers(f);
    struct vae_config cfg;
    struct vae_model m;
    assert_int_equal(vae_infer_config(w, &cfg), DF_OK);
    assert_int_equal(vae_load(w, &cfg, &m), DF_OK);
    int s = vae_scale(&cfg), lc = cfg.latent_channels;
    int64_t h = 21, wd = 37; /* odd, not a multiple of the tile */
    /* the picker on real plans: a budget below a 24 px tile gives 16 */
    uint64_t b16, b24, whole_bytes;
    assert_int_equal(vae_decode_bytes(&m, 16, 16, &b16), DF_OK);
    assert_int_equal(vae_decode_bytes(&m, 21, 24, &b24), DF_OK);
    assert_int_equal(vae_decode_bytes(&m, h, wd, &whole_bytes), DF_OK);
    assert_true(b16 < b24 && b24 < whole_bytes);
    int tile, overlap;
    assert_int_equal(vae_tiles_pick(h, wd, 8, b24 - 1, vae_decode_bytes, &m, &tile, &overlap), DF_OK);
    assert_int_equal(tile, 16);
    assert_int_equal(overlap, 4);
    assert_int_equal(vae_tiles_pick(h, wd, 8, whole_bytes, vae_decode_bytes, &m, &tile, &overlap), DF_OK);
    assert_true(tile >= wd);
    assert_int_equal(vae_tiles_pick(h, wd, 8, b16 - 1, vae_decode_bytes, &m, &tile, &overlap), DF_ENOMEM);
    print_message("  decode activations: 16x16 tile %llu B, 21x24 %llu B, whole 21x37 %llu B\n",
                  (unsigned long long)b16, (unsigned long long)b24, (unsigned long long)whole_bytes);

    struct vae_tiles t;
    assert_int_equal(vae_tiles_decode_plan(lc, cfg.out_channels, s, h, wd, 16, 4, &t), DF_OK);
    float *z = tu_random((size_t)(lc * h * wd), 5, -2, 2);
    tiled_vs_whole(&m, true, &t, z);
    free(z);

    /* encode (img2img): image px, tiles of 96 overlapping by 24 */
    int64_t ih = 20 * s, iw = 28 * s;
    uint64_t e64;
    /* encode tiles come in units of 8 latent px: 128 image px at least */
    assert_int_equal(vae_encode_bytes(&m, 64, 64, &e64), DF_OK);
    assert_int_equal(vae_tiles_pick(ih, iw, 8 * s, e64, vae_encode_bytes, &m, &tile, &overlap), DF_ENOMEM);
    assert_non_null(strstr(df_errmsg(), "128 px tile"));
    assert_int_equal(vae_tiles_encode_plan(cfg.in_channels, 2 * lc, s, ih, iw, 96, 24, &t), DF_OK);
    float *img = tu_random((size_t)(cfg.in_channels * ih * iw), 6, -1, 1);
    tiled_vs_whole(&m, false, &t, img);
    free(img);
    vae_free(&m);
    wts_destroy(w);
    st_close(f);
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiles_blend),
        cmocka_unit_test(test_tiles_pick),
        cmocka_unit_test(test_tiles_tiny_vae),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
