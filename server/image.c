/* image: PNG encode/decode through libpng in memory, and PIL's Lanczos.
 *
 * libpng reports errors by longjmp to the setjmp in the calling function.
 * Everything the error path must free lives in a heap context (struct
 * png_ctx) whose pointer is set before setjmp and never changed after it, so
 * no automatic variable is read after a longjmp with an indeterminate value. */
#include "image.h"

#include <limits.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMG_PARAMETERS_KEY "parameters"

/* ------------------------------------------------------------------------ */
/* text encodings                                                             */

/* Decodes one UTF-8 sequence at s[*i] (n bytes total); -1 if malformed
 * (overlong, surrogate, > U+10FFFF, truncated), as Python's strict codec. */
static long img_utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned c = s[*i];
    int len;
    unsigned long cp;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return -1;
    }
    if (n - *i < (size_t)len)
        return -1;
    for (int k = 1; k < len; k++) {
        unsigned cc = s[*i + (size_t)k];
        if ((cc & 0xC0) != 0x80)
            return -1;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    *i += (size_t)len;
    return (long)cp;
}

static int img_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n)
        if (img_utf8_next((const unsigned char *)s, n, &i) < 0)
            return 0;
    return 1;
}

/* PIL's add_text: latin-1 if every code point fits. Returns 1 with *out a
 * malloc'd latin-1 string, 0 if some code point does not fit, -1 if `s` is
 * not valid UTF-8, -2 out of memory. */
static int img_utf8_to_latin1(const char *s, char **out, size_t *out_len)
{
    size_t n = strlen(s), i = 0, k = 0;
    char *buf = malloc(n + 1);
    if (!buf)
        return -2;
    while (i < n) {
        long cp = img_utf8_next((const unsigned char *)s, n, &i);
        if (cp < 0 || cp > 0xFF) {
            free(buf);
            return cp < 0 ? -1 : (img_utf8_valid(s, n) ? 0 : -1);
        }
        buf[k++] = (char)(unsigned char)cp;
    }
    buf[k] = '\0';
    *out = buf;
    *out_len = k;
    return 1;
}

static char *img_latin1_to_utf8(const char *s, size_t n)
{
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            out[k++] = (char)c;
        } else {
            out[k++] = (char)(0xC0 | (c >> 6));
            out[k++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[k] = '\0';
    return out;
}

/* ------------------------------------------------------------------------ */
/* libpng plumbing                                                            */

struct png_ctx {
    char msg[256];          /* libpng's error message */
    int oom;                /* the failure was our allocation */
    /* writing */
    uint8_t *out;
    size_t out_len, out_cap;
    /* reading */
    const uint8_t *in;
    size_t in_len, in_pos;
    /* buffers the error path frees */
    uint8_t *pixels;
    png_bytep *rows;
    float *rgb;
    char *text;
};

static void img_png_error(png_structp png, png_const_charp msg)
{
    struct png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

static void img_png_warning(png_structp png, png_const_charp msg)
{
    (void)png; /* ancillary-chunk problems: libpng recovers, so do we */
    (void)msg;
}

static void img_png_write(png_structp png, png_bytep data, size_t n)
{
    struct png_ctx *c = png_get_io_ptr(png);
    if (n > c->out_cap - c->out_len) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (n > cap - c->out_len) {
            if (cap > SIZE_MAX / 2) {
                c->oom = 1;
                png_error(png, "PNG too large");
            }
            cap *= 2;
        }
        uint8_t *p = realloc(c->out, cap);
        if (!p) {
            c->oom = 1;
            png_error(png, "out of memory");
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static void img_png_flush(png_structp png)
{
    (void)png;
}

static void img_png_read(png_structp png, png_bytep data, size_t n)
{
    struct png_ctx *c = png_get_io_ptr(png);
    if (n > c->in_len - c->in_pos)
        png_error(png, "PNG file is truncated");
    memcpy(data, c->in + c->in_pos, n);
    c->in_pos += n;
}

static void img_ctx_free(struct png_ctx *c)
{
    if (!c)
        return;
    free(c->out);
    free(c->pixels);
    free(c->rows);
    free(c->rgb);
    free(c->text);
    free(c);
}

/* diffusers' numpy_to_pil: (x * 255).round() in float32, half to even
 * (rintf in the default rounding mode), after the pipeline's clamp to [0,1]. */
static uint8_t img_to_u8(float x)
{
    if (!(x > 0.0f)) /* also NaN */
        return 0;
    if (x > 1.0f)
        x = 1.0f;
    float v = x * 255.0f;
    return (uint8_t)rintf(v);
}

/* ------------------------------------------------------------------------ */
/* encode                                                                     */

df_status img_encode_png(const float *rgb_hwc, int w, int h, const char *parameters_text,
                         uint8_t **png_out, size_t *len_out)
{
    *png_out = NULL;
    *len_out = 0;
    if (!rgb_hwc || w <= 0 || h <= 0 || w > 1000000 || h > 1000000)
        return df_error(DF_EINVAL, "img_encode_png: bad image %dx%d", w, h);
    if ((size_t)w * (size_t)h > SIZE_MAX / 3 / sizeof(float))
        return df_error(DF_EINVAL, "img_encode_png: image %dx%d too large", w, h);

    struct png_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return df_error(DF_ENOMEM, "img_encode_png: out of memory");

    /* the text chunk: tEXt if latin-1 fits, else iTXt (PIL's add_text) */
    int latin1 = 0;
    size_t text_len = 0;
    if (parameters_text) {
        latin1 = img_utf8_to_latin1(parameters_text, &c->text, &text_len);
        if (latin1 == -2) {
            img_ctx_free(c);
            return df_error(DF_ENOMEM, "img_encode_png: out of memory");
        }
        if (latin1 == -1) {
            img_ctx_free(c);
            return df_error(DF_EINVAL, "img_encode_png: parameters text is not valid UTF-8");
        }
    }

    size_t row_bytes = (size_t)w * 3;
    c->pixels = malloc(row_bytes * (size_t)h);
    c->rows = malloc((size_t)h * sizeof *c->rows);
    if (!c->pixels || !c->rows) {
        img_ctx_free(c);
        return df_error(DF_ENOMEM, "img_encode_png: out of memory");
    }
    for (size_t i = 0; i < row_bytes * (size_t)h; i++)
        c->pixels[i] = img_to_u8(rgb_hwc[i]);
    for (int y = 0; y < h; y++)
        c->rows[y] = c->pixels + (size_t)y * row_bytes;

    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, img_png_error,
                                              img_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        img_ctx_free(c);
        return df_error(DF_ENOMEM, "img_encode_png: cannot create libpng structures");
    }
    if (setjmp(png_jmpbuf(png))) {
        df_status st = c->oom ? DF_ENOMEM : DF_EINVAL;
        df_error(st, "img_encode_png: libpng: %s", c->msg);
        png_destroy_write_struct(&png, &info);
        img_ctx_free(c);
        return st;
    }
    png_set_write_fn(png, c, img_png_write, img_png_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (parameters_text) {
        char key[] = IMG_PARAMETERS_KEY;
        char empty[] = "";
        png_text t;
        memset(&t, 0, sizeof t);
        t.key = key;
        if (latin1 == 1) {
            t.compression = PNG_TEXT_COMPRESSION_NONE;
            t.text = c->text;
            t.text_length = text_len;
        } else {
            /* PIL's add_itxt(zip=False): no compression, empty language and
             * translated keyword, UTF-8 text */
            t.compression = PNG_ITXT_COMPRESSION_NONE;
            t.text = (char *)parameters_text;
            t.itxt_length = strlen(parameters_text);
            t.lang = empty;
            t.lang_key = empty;
        }
        png_set_text(png, info, &t, 1);
    }
    png_write_info(png, info);
    png_write_image(png, c->rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);

    *png_out = c->out;
    *len_out = c->out_len;
    c->out = NULL;
    img_ctx_free(c);
    return DF_OK;
}

/* ------------------------------------------------------------------------ */
/* decode                                                                     */

/* PIL's paste-with-mask blend onto white, bit for bit (Paste.c BLEND and
 * DIV255: a rounded division by 255). */
static uint8_t img_blend_white_u8(unsigned c, unsigned a)
{
    unsigned v = 255u * (255u - a) + c * a;
    unsigned tmp = v + 128u;
    return (uint8_t)(((tmp >> 8) + tmp) >> 8);
}

/* The last "parameters" chunk wins, as in PIL's im.info dictionary. tEXt and
 * zTXt are latin-1, iTXt UTF-8 (skipped when invalid, as PIL skips it). */
static char *img_find_parameters(png_structp png, png_infop info, int *oom)
{
    png_textp texts = NULL;
    int num = 0;
    png_get_text(png, info, &texts, &num);
    char *found = NULL;
    for (int i = 0; i < num; i++) {
        if (!texts[i].key || strcmp(texts[i].key, IMG_PARAMETERS_KEY) != 0)
            continue;
        const char *t = texts[i].text ? texts[i].text : "";
        char *s;
        if (texts[i].compression >= PNG_ITXT_COMPRESSION_NONE) {
            size_t n = texts[i].itxt_length;
            if (memchr(t, '\0', n) || !img_utf8_valid(t, n))
                continue;
            s = malloc(n + 1);
            if (s) {
                memcpy(s, t, n);
                s[n] = '\0';
            }
        } else {
            s = img_latin1_to_utf8(t, texts[i].text_length);
        }
        if (!s) {
            *oom = 1;
            break;
        }
        free(found);
        found = s;
    }
    return found;
}

df_status img_decode_png(const uint8_t *data, size_t len, size_t max_pixels, float **rgb_hwc,
                         int *w_out, int *h_out, char **parameters_text)
{
    *rgb_hwc = NULL;
    *w_out = *h_out = 0;
    if (parameters_text)
        *parameters_text = NULL;
    if (!data || len < 8 || png_sig_cmp(data, 0, 8) != 0)
        return df_error(DF_EFORMAT, "not a PNG file (bad signature)");

    struct png_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return df_error(DF_ENOMEM, "img_decode_png: out of memory");
    c->in = data;
    c->in_len = len;

    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, img_png_error,
                                             img_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        img_ctx_free(c);
        return df_error(DF_ENOMEM, "img_decode_png: cannot create libpng structures");
    }
    if (setjmp(png_jmpbuf(png))) {
        df_status st = c->oom ? DF_ENOMEM : DF_EFORMAT;
        df_error(st, "bad PNG: %s", c->msg);
        png_destroy_read_struct(&png, &info, NULL);
        img_ctx_free(c);
        return st;
    }
    png_set_read_fn(png, c, img_png_read);
    png_read_info(png, info);

    png_uint_32 w = 0, h = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, &interlace, NULL, NULL);
    /* the limit is checked on the header alone, before any pixel memory */
    if (w == 0 || h == 0 || w > INT_MAX || h > INT_MAX ||
        (uint64_t)w * (uint64_t)h > (uint64_t)max_pixels) {
        df_error(DF_EINVAL, "image %lux%lu exceeds the limit of %zu pixels", (unsigned long)w,
                 (unsigned long)h, max_pixels);
        png_destroy_read_struct(&png, &info, NULL);
        img_ctx_free(c);
        return DF_EINVAL;
    }

    /* normalise every format to RGBA at 8 or 16 bits */
    int has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    if (color_type == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (has_trns)
        png_set_tRNS_to_alpha(png);
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    if (!(color_type & PNG_COLOR_MASK_ALPHA) && !has_trns)
        png_set_add_alpha(png, bit_depth == 16 ? 0xffff : 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int depth = png_get_bit_depth(png, info);
    size_t row_bytes = png_get_rowbytes(png, info);
    size_t bps = depth == 16 ? 2 : 1;
    if (png_get_channels(png, info) != 4 || (depth != 8 && depth != 16) ||
        row_bytes != (size_t)w * 4 * bps) {
        df_error(DF_EUNSUPPORTED, "img_decode_png: unexpected PNG layout after conversion");
        png_destroy_read_struct(&png, &info, NULL);
        img_ctx_free(c);
        return DF_EUNSUPPORTED;
    }
    c->pixels = malloc(row_bytes * h);
    c->rows = malloc(h * sizeof *c->rows);
    c->rgb = malloc((size_t)w * h * 3 * sizeof *c->rgb);
    if (!c->pixels || !c->rows || !c->rgb) {
        c->oom = 1;
        png_error(png, "out of memory");
    }
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = c->pixels + (size_t)y * row_bytes;
    png_read_image(png, c->rows);
    png_read_end(png, info); /* text chunks may follow the image data */

    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = c->pixels + i * 4 * bps;
        float *o = c->rgb + i * 3;
        if (bps == 1) {
            unsigned a = p[3];
            for (int k = 0; k < 3; k++) {
                uint8_t v = a == 255 ? p[k] : img_blend_white_u8(p[k], a);
                o[k] = (float)v / 255.0f;
            }
        } else {
            float a = (float)((p[6] << 8) | p[7]) / 65535.0f;
            for (int k = 0; k < 3; k++) {
                float v = (float)((p[2 * k] << 8) | p[2 * k + 1]) / 65535.0f;
                o[k] = v * a + (1.0f - a);
            }
        }
    }

    if (parameters_text) {
        int oom = 0;
        char *t = img_find_parameters(png, info, &oom);
        if (oom) {
            free(t);
            c->oom = 1;
            png_error(png, "out of memory");
        }
        *parameters_text = t;
    }
    png_destroy_read_struct(&png, &info, NULL);
    *rgb_hwc = c->rgb;
    *w_out = (int)w;
    *h_out = (int)h;
    c->rgb = NULL;
    img_ctx_free(c);
    return DF_OK;
}

/* ------------------------------------------------------------------------ */
/* resize: Pillow's Resample.c, LANCZOS, 8 bits per channel                  */

#define IMG_PRECISION_BITS (32 - 8 - 2)

static double img_sinc(double x)
{
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double img_lanczos(double x)
{
    if (-3.0 <= x && x < 3.0)
        return img_sinc(x) * img_sinc(x / 3.0);
    return 0.0;
}

/* Per output pixel: the first input index, the tap count and ksize fixed-point
 * coefficients, computed and rounded exactly as Pillow's precompute_coeffs and
 * normalize_coeffs_8bpc. Returns ksize, 0 when out of memory. */
static int img_coeffs(int in_size, float in0, float in1, int out_size, int **bounds_out,
                      int32_t **kk_out)
{
    const double support_base = 3.0;
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support_base * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = malloc((size_t)ksize * sizeof *k);
    int32_t *kk = malloc((size_t)out_size * (size_t)ksize * sizeof *kk);
    int *bounds = malloc((size_t)out_size * 2 * sizeof *bounds);
    if (!k || !kk || !bounds) {
        free(k);
        free(kk);
        free(bounds);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            double wgt = img_lanczos(((double)(x + xmin) - center + 0.5) * ss);
            k[x] = wgt;
            ww += wgt;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0)
                k[x] /= ww;
        for (; x < ksize; x++)
            k[x] = 0;
        for (x = 0; x < ksize; x++) {
            double v = k[x] * (1 << IMG_PRECISION_BITS);
            kk[(size_t)xx * (size_t)ksize + (size_t)x] = (int32_t)(k[x] < 0 ? -0.5 + v : 0.5 + v);
        }
        bounds[xx * 2 + 0] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    free(k);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static uint8_t img_clip8(int64_t acc)
{
    if (acc < 0)
        return 0;
    acc >>= IMG_PRECISION_BITS;
    return acc > 255 ? 255 : (uint8_t)acc;
}

/* One pass along x (stride 3 between taps) or y (stride 3*width): out has
 * n_lines lines of out_len pixels; taps read from `in` starting at line
 * `offset`. */
static void img_pass(const uint8_t *in, int in_w, uint8_t *out, int out_w, int out_h,
                     int horizontal, int offset, int ksize, const int *bounds, const int32_t *kk)
{
    for (int yy = 0; yy < out_h; yy++) {
        for (int xx = 0; xx < out_w; xx++) {
            int pos = horizontal ? xx : yy;
            int xmin = bounds[pos * 2 + 0];
            int xmax = bounds[pos * 2 + 1];
            const int32_t *k = kk + (size_t)pos * (size_t)ksize;
            int64_t s[3] = {1 << (IMG_PRECISION_BITS - 1), 1 << (IMG_PRECISION_BITS - 1),
                            1 << (IMG_PRECISION_BITS - 1)};
            for (int x = 0; x < xmax; x++) {
                const uint8_t *p = horizontal
                    ? in + ((size_t)(yy + offset) * (size_t)in_w + (size_t)(x + xmin)) * 3
                    : in + ((size_t)(x + xmin) * (size_t)in_w + (size_t)xx) * 3;
                s[0] += (int64_t)p[0] * k[x];
                s[1] += (int64_t)p[1] * k[x];
                s[2] += (int64_t)p[2] * k[x];
            }
            uint8_t *o = out + ((size_t)yy * (size_t)out_w + (size_t)xx) * 3;
            o[0] = img_clip8(s[0]);
            o[1] = img_clip8(s[1]);
            o[2] = img_clip8(s[2]);
        }
    }
}

df_status img_resize(const float *src, int sw, int sh, float *dst, int dw, int dh)
{
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0 || sw > 1000000 ||
        sh > 1000000 || dw > 1000000 || dh > 1000000)
        return df_error(DF_EINVAL, "img_resize: bad sizes %dx%d -> %dx%d", sw, sh, dw, dh);
    if (sw == dw && sh == dh) { /* PIL: same size and box is a copy */
        memmove(dst, src, (size_t)sw * (size_t)sh * 3 * sizeof *dst);
        return DF_OK;
    }
    df_status st = DF_OK;
    uint8_t *in = malloc((size_t)sw * (size_t)sh * 3);
    uint8_t *tmp = NULL, *out = NULL;
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL;
    int ksh = 0, ksv = 0;
    if (in) {
        ksh = img_coeffs(sw, 0.0f, (float)sw, dw, &bh, &kh);
        ksv = img_coeffs(sh, 0.0f, (float)sh, dh, &bv, &kv);
    }
    if (!in || !ksh || !ksv) {
        st = df_error(DF_ENOMEM, "img_resize: out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)sw * (size_t)sh * 3; i++)
        in[i] = img_to_u8(src[i]);

    /* horizontal pass first, over the rows the vertical pass will read */
    const uint8_t *cur = in;
    int cur_w = sw;
    int need_h = dw != sw, need_v = dh != sh;
    if (need_h) {
        int first = bv[0];
        int last = bv[dh * 2 - 2] + bv[dh * 2 - 1];
        for (int i = 0; i < dh; i++)
            bv[i * 2] -= first;
        tmp = malloc((size_t)dw * (size_t)(last - first) * 3 + 1);
        if (!tmp) {
            st = df_error(DF_ENOMEM, "img_resize: out of memory");
            goto done;
        }
        img_pass(in, sw, tmp, dw, last - first, 1, first, ksh, bh, kh);
        cur = tmp;
        cur_w = dw;
    }
    if (need_v) {
        out = malloc((size_t)dw * (size_t)dh * 3);
        if (!out) {
            st = df_error(DF_ENOMEM, "img_resize: out of memory");
            goto done;
        }
        img_pass(cur, cur_w, out, cur_w, dh, 0, 0, ksv, bv, kv);
        cur = out;
    }
    for (size_t i = 0; i < (size_t)dw * (size_t)dh * 3; i++)
        dst[i] = (float)cur[i] / 255.0f;
done:
    free(in);
    free(tmp);
    free(out);
    free(bh);
    free(bv);
    free(kh);
    free(kv);
    return st;
}
