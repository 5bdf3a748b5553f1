/* vae_tiles: equal, overlapping tiles blended with linear ramps. */
#include "vae_tiles.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- plan ------------------------------------------------------------------ */

/* Tiles along an axis of n input px: the first at 0, then every stride,
 * the last aligned to the end (overlapping its neighbour more). */
static int axis_count(int64_t n, int64_t tile, int64_t stride) {
    return n <= tile ? 1 : (int)((n - tile + stride - 1) / stride) + 1;
}

static int64_t axis_origin(int64_t n, int64_t tile, int64_t stride, int count, int k) {
    return k < count - 1 ? k * stride : n - tile;
}

static df_status plan(int cin, int cout, int64_t h, int64_t w, int tile, int overlap, int up, int down,
                      struct vae_tiles *t) {
    memset(t, 0, sizeof *t);
    if (cin < 1 || cout < 1 || up < 1 || down < 1)
        return df_error(DF_EINVAL, "VAE tiles: %d -> %d channels, scale %d/%d", cin, cout, up, down);
    if (h < 1 || w < 1) return df_error(DF_EINVAL, "VAE tiles: empty input %lldx%lld", (long long)h, (long long)w);
    if (tile < 1 || overlap < 0 || overlap >= tile)
        return df_error(DF_EINVAL, "VAE tiles: tile %d with overlap %d (need 0 <= overlap < tile)", tile, overlap);
    *t = (struct vae_tiles){
        .in_channels = cin, .out_channels = cout, .h = h, .w = w,
        .tile_h = h < tile ? h : tile, .tile_w = w < tile ? w : tile, .stride = tile - overlap,
        .up = up, .down = down,
    };
    t->rows = axis_count(h, t->tile_h, t->stride);
    t->cols = axis_count(w, t->tile_w, t->stride);
    return DF_OK;
}

df_status vae_tiles_decode_plan(int latent_channels, int image_channels, int scale, int64_t h, int64_t w, int tile,
                                int overlap, struct vae_tiles *t) {
    return plan(latent_channels, image_channels, h, w, tile, overlap, scale, 1, t);
}

df_status vae_tiles_encode_plan(int image_channels, int moment_channels, int scale, int64_t h, int64_t w, int tile,
                                int overlap, struct vae_tiles *t) {
    memset(t, 0, sizeof *t);
    if (scale < 1 || h % scale || w % scale || tile % scale || overlap % scale)
        return df_error(DF_EINVAL, "VAE tiled encode: image %lldx%lld, tile %d, overlap %d must be multiples of %d",
                        (long long)h, (long long)w, tile, overlap, scale);
    return plan(image_channels, moment_channels, h, w, tile, overlap, 1, scale, t);
}

void vae_tiles_origin(const struct vae_tiles *t, int row, int col, int64_t *y, int64_t *x) {
    *y = axis_origin(t->h, t->tile_h, t->stride, t->rows, row);
    *x = axis_origin(t->w, t->tile_w, t->stride, t->cols, col);
}

int64_t vae_tiles_out_h(const struct vae_tiles *t) { return t->h * t->up / t->down; }
int64_t vae_tiles_out_w(const struct vae_tiles *t) { return t->w * t->up / t->down; }

/* ---- blend ------------------------------------------------------------------ */

/* Weights of every tile along one axis, over its `len` output px
 * (wt[k * len + u]), and their sum at each output px. */
static void axis_weights(int64_t n, int64_t tile, int64_t stride, int count, int up, int down, double *wt,
                         double *sum) {
    int64_t len = tile * up / down;
    memset(sum, 0, (size_t)(n * up / down) * sizeof *sum);
    for (int k = 0; k < count; k++) {
        int64_t p = axis_origin(n, tile, stride, count, k);
        /* overlaps with the neighbours, in output px */
        int64_t lo = k > 0 ? (axis_origin(n, tile, stride, count, k - 1) + tile - p) * up / down : 0;
        int64_t hi = k < count - 1 ? (p + tile - axis_origin(n, tile, stride, count, k + 1)) * up / down : 0;
        for (int64_t u = 0; u < len; u++) {
            double v = 1;
            if (lo > 0 && (u + 0.5) / (double)lo < v) v = (u + 0.5) / (double)lo;
            if (hi > 0 && (len - u - 0.5) / (double)hi < v) v = (len - u - 0.5) / (double)hi;
            wt[k * len + u] = v;
            sum[p * up / down + u] += v;
        }
    }
}

df_status vae_tiles_run(const struct vae_tiles *t, const float *in, vae_tile_fn fn, void *ctx, float *out) {
    int64_t oh = vae_tiles_out_h(t), ow = vae_tiles_out_w(t);
    int64_t th = t->tile_h * t->up / t->down, tw = t->tile_w * t->up / t->down;
    size_t in_n = (size_t)(t->in_channels * t->tile_h * t->tile_w), out_n = (size_t)(t->out_channels * th * tw);
    float *tin = malloc(in_n * sizeof *tin), *tout = malloc(out_n * sizeof *tout);
    double *wy = malloc((size_t)(t->rows * th) * sizeof *wy), *wx = malloc((size_t)(t->cols * tw) * sizeof *wx);
    double *sy = malloc((size_t)oh * sizeof *sy), *sx = malloc((size_t)ow * sizeof *sx);
    df_status st = DF_OK;
    if (!tin || !tout || !wy || !wx || !sy || !sx) {
        st = df_error(DF_ENOMEM, "VAE tiles: out of host memory");
        goto done;
    }
    axis_weights(t->h, t->tile_h, t->stride, t->rows, t->up, t->down, wy, sy);
    axis_weights(t->w, t->tile_w, t->stride, t->cols, t->up, t->down, wx, sx);
    memset(out, 0, (size_t)(t->out_channels * oh * ow) * sizeof *out);
    for (int r = 0; r < t->rows; r++) {
        for (int c = 0; c < t->cols; c++) {
            int64_t y0, x0;
            vae_tiles_origin(t, r, c, &y0, &x0);
            for (int64_t ch = 0; ch < t->in_channels; ch++)
                for (int64_t y = 0; y < t->tile_h; y++)
                    memcpy(tin + (ch * t->tile_h + y) * t->tile_w, in + (ch * t->h + y0 + y) * t->w + x0,
                           (size_t)t->tile_w * sizeof *tin);
            if ((st = fn(ctx, tin, tout)) != DF_OK) goto done;
            int64_t oy = y0 * t->up / t->down, ox = x0 * t->up / t->down;
            for (int64_t ch = 0; ch < t->out_channels; ch++)
                for (int64_t y = 0; y < th; y++) {
                    const float *src = tout + (ch * th + y) * tw;
                    float *dst = out + (ch * oh + oy + y) * ow + ox;
                    const double *wr = wx + c * tw;
                    double a = wy[r * th + y];
                    for (int64_t x = 0; x < tw; x++) dst[x] += (float)(a * wr[x] * src[x]);
                }
        }
    }
    for (int64_t ch = 0; ch < t->out_channels; ch++)
        for (int64_t y = 0; y < oh; y++)
            for (int64_t x = 0; x < ow; x++) out[(ch * oh + y) * ow + x] /= (float)(sy[y] * sx[x]);
done:
    free(tin);
    free(tout);
    free(wy);
    free(wx);
    free(sy);
    free(sx);
    return st;
}

/* ---- tile size --------------------------------------------------------------- */

static df_status fits(int64_t h, int64_t w, int64_t tile, uint64_t budget, vae_tile_bytes_fn bytes, void *ctx,
                      bool *ok, uint64_t *need) {
    df_status st = bytes(ctx, h < tile ? h : tile, w < tile ? w : tile, need);
    *ok = st == DF_OK && *need <= budget;
    return st;
}

df_status vae_tiles_pick(int64_t h, int64_t w, int unit, uint64_t budget, vae_tile_bytes_fn bytes, void *ctx,
                         int *tile, int *overlap) {
    *tile = *overlap = 0;
    if (h < 1 || w < 1 || unit < 1)
        return df_error(DF_EINVAL, "VAE tiles: input %lldx%lld, unit %d", (long long)h, (long long)w, unit);
    int64_t big = h > w ? h : w;
    int64_t hi = (big + unit - 1) / unit, lo = 2; /* in units */
    if (hi < lo) hi = lo;
    bool ok;
    uint64_t need;
    df_status st;
    if ((st = fits(h, w, hi * unit, budget, bytes, ctx, &ok, &need)) != DF_OK) return st;
    if (ok) {
        lo = hi;
    } else {
        if ((st = fits(h, w, lo * unit, budget, bytes, ctx, &ok, &need)) != DF_OK) return st;
        if (!ok)
            return df_error(DF_ENOMEM, "VAE: even a %lld px tile needs %llu bytes of activations, more than the "
                            "budget of %llu", (long long)(lo * unit), (unsigned long long)need,
                            (unsigned long long)budget);
        while (hi - lo > 1) { /* lo fits, hi does not */
            int64_t mid = (lo + hi) / 2;
            if ((st = fits(h, w, mid * unit, budget, bytes, ctx, &ok, &need)) != DF_OK) return st;
            *(ok ? &lo : &hi) = mid;
        }
    }
    *tile = (int)(lo * unit);
    *overlap = *tile / 4;
    return DF_OK;
}
