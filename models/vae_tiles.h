/* vae_tiles: a VAE decode (or encode) too large for one pass, done as
 * overlapping tiles blended with linear ramps over the overlaps, as
 * diffusers' AutoencoderKL.tiled_decode / tiled_encode do (blend_v,
 * blend_h), so no seams show. Unlike diffusers every tile has the same
 * size (the last row and column are aligned to the image's edge and
 * overlap more), so the caller records one pass of the tile size and
 * replays it per tile. Pure C on host memory, one batch item at a time;
 * the pass is a callback.
 *
 *   struct vae_tiles t;
 *   vae_tiles_pick(h, w, 8, budget, vae_decode_bytes, model, &tile, &overlap);
 *   vae_tiles_decode_plan(lc, 3, vae_scale(cfg), h, w, tile, overlap, &t);
 *   record a decode of [1, lc, t.tile_h, t.tile_w]
 *   vae_tiles_run(&t, latent, decode_one_tile, ctx, image);
 *
 * Each tile's GroupNorms see only that tile, so a tiled result is close
 * to, not equal to, the whole decode (the price diffusers pays too). */
#ifndef DF_VAE_TILES_H
#define DF_VAE_TILES_H

#include <stdint.h>

#include "common/status.h"

/* One pass: tile_in [in_channels, tile_h, tile_w] -> tile_out
 * [out_channels, tile_h*up/down, tile_w*up/down], both contiguous fp32. */
typedef df_status (*vae_tile_fn)(void *ctx, const float *tile_in, float *tile_out);

struct vae_tiles {
    int in_channels, out_channels;
    int64_t h, w;           /* whole input (latent px to decode, image px to encode) */
    int64_t tile_h, tile_w; /* every tile: min(tile, h) x min(tile, w) */
    int64_t stride;         /* tile - overlap: between tile starts but the last */
    int rows, cols;
    int up, down;           /* output px per input px = up / down */
};

/* Decode: latent [latent_channels, h, w] -> image [image_channels, h*scale,
 * w*scale]. tile and overlap in latent px, 0 <= overlap < tile. An input
 * no larger than a tile is one tile. */
df_status vae_tiles_decode_plan(int latent_channels, int image_channels, int scale, int64_t h, int64_t w, int tile,
                                int overlap, struct vae_tiles *t);
/* Encode: image [image_channels, h, w] -> moments [moment_channels,
 * h/scale, w/scale]. h, w, tile and overlap in image px, all multiples of
 * scale (so every tile starts on a latent pixel). */
df_status vae_tiles_encode_plan(int image_channels, int moment_channels, int scale, int64_t h, int64_t w, int tile,
                                int overlap, struct vae_tiles *t);

/* Where tile (row, col) starts, input px. */
void vae_tiles_origin(const struct vae_tiles *t, int row, int col, int64_t *y, int64_t *x);
int64_t vae_tiles_out_h(const struct vae_tiles *t);
int64_t vae_tiles_out_w(const struct vae_tiles *t);

/* Calls fn on every tile of `in` (row by row) and blends the results into
 * out [out_channels, out_h, out_w]: along each axis a tile's weight ramps
 * linearly from ~0 to 1 across its overlap with the previous tile and back
 * across the next (pixel centres: (i + 0.5) / overlap), the two ramps of
 * an overlap summing to one; where three tiles meet the weights are
 * normalised. Pixels only one tile covers are that tile's values exactly.
 * fn's error is returned as is. */
df_status vae_tiles_run(const struct vae_tiles *t, const float *in, vae_tile_fn fn, void *ctx, float *out);

/* Activation bytes of one pass over an input of h x w (input px). */
typedef df_status (*vae_tile_bytes_fn)(void *ctx, int64_t h, int64_t w, uint64_t *bytes);

/* The largest square tile, a multiple of `unit` input px and at least two
 * units, whose pass over min(tile, h) x min(tile, w) needs at most `budget`
 * bytes; overlap tile/4. Decode: unit 8 (latent px); encode: 8*scale.
 * *tile >= max(h, w) means no tiling is needed. Assumes the bytes grow
 * with the tile (binary search: log2(max(h, w)/unit) calls). DF_ENOMEM,
 * with both numbers, if even the smallest tile does not fit. */
df_status vae_tiles_pick(int64_t h, int64_t w, int unit, uint64_t budget, vae_tile_bytes_fn bytes, void *ctx,
                         int *tile, int *overlap);

#endif
