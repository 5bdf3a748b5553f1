/* image: PNG in and out of memory (libpng), and the img2img resize.
 *
 * Pixels are float RGB, row-major HWC, values in [0, 1] - what the VAE
 * consumes and produces. The conversions match what diffusers and A1111 do
 * with PIL, so a decoded/resized init image equals theirs bit for bit:
 *
 *   encode: u8 = round_half_even(clamp(x, 0, 1) * 255) in float32 (diffusers'
 *           numpy_to_pil: (images * 255).round().astype("uint8")). A1111
 *           itself truncates instead ((255. * x).astype(np.uint8)); we follow
 *           diffusers, the oracle.
 *   decode: x = u8 / 255.0f (diffusers' pil_to_numpy); 16-bit samples keep
 *           their precision (x = u16 / 65535.0f) where PIL would keep only
 *           the high byte.
 *   alpha:  composited on white, as A1111's img2img does (images.flatten with
 *           the default img2img_background_color #ffffff, PIL's integer
 *           blend, exact for 8-bit RGBA). A1111 only flattens RGBA; for
 *           gray+alpha and palette transparency, which PIL's convert("RGB")
 *           would simply drop, we composite on white too.
 *
 * The generation parameters travel in the PNG like A1111 writes them: a
 * "parameters" tEXt chunk when the text is latin-1-encodable, else an
 * uncompressed iTXt chunk in UTF-8 (PIL's PngInfo.add_text). */
#ifndef DF_IMAGE_H
#define DF_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

/* Encodes a w x h RGB image as an 8-bit RGB PNG in memory. `parameters_text`
 * (UTF-8, may be NULL for none) becomes the "parameters" text chunk. On
 * success *png is malloc'd (free() it) and *len its size. */
df_status img_encode_png(const float *rgb_hwc, int w, int h, const char *parameters_text,
                         uint8_t **png, size_t *len);

/* Decodes any PNG libpng reads (gray, gray+alpha, palette, RGB, RGBA; 1-16
 * bits; interlaced) into malloc'd float RGB. Images of more than max_pixels
 * pixels are refused with DF_EINVAL before any pixel memory is allocated.
 * A malformed or truncated file is DF_EFORMAT with libpng's message.
 * *parameters_text receives the "parameters" text chunk as UTF-8 (malloc'd)
 * or NULL when there is none; pass NULL to skip it. */
df_status img_decode_png(const uint8_t *png, size_t len, size_t max_pixels, float **rgb_hwc,
                         int *w, int *h, char **parameters_text);

/* Resizes RGB (sw x sh) to (dw x dh) exactly as PIL's
 * Image.resize((dw, dh), Image.LANCZOS) does on an 8-bit RGB image, which is
 * what both diffusers (VaeImageProcessor.resize, resample="lanczos") and
 * A1111 ("Just resize" with no img2img upscaler) run on an init image whose
 * size differs from the request. PIL resizes 8-bit images with 22-bit
 * fixed-point Lanczos-3 coefficients, horizontal pass first, rounding and
 * clipping to 8 bits after each pass; so does this: the input is quantised to
 * 8 bits first (exact for images decoded from 8-bit PNGs) and the output is
 * u8 / 255.0f. Equal sizes copy. */
df_status img_resize(const float *src, int sw, int sh, float *dst, int dw, int dh);

#endif
