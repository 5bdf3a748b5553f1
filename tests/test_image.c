/* Tests for server/image.c, server/infotext.c and server/sha256.c: PNG round
 * trips with the parameters chunk (tEXt and iTXt), numpy's half-to-even
 * rounding, hostile PNGs (every truncation, corruption) failing cleanly, the
 * pixel limit, every PNG colour type written with libpng here, PIL's Lanczos
 * against an independent reference, A1111 infotexts as literal strings and
 * parsed back, and the SHA-256 test vectors. Every helper is static: `make
 * test` links this file with the whole library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../server/image.h"
#include "../server/infotext.h"
#include "../models/sha256.h"

#define TIMG_NO_LIMIT ((size_t)1 << 40)

/* ------------------------------------------------------------------------ */
/* helpers                                                                    */

struct timg_mem {
    uint8_t *data;
    size_t len, cap;
};

static void timg_write_fn(png_structp png, png_bytep d, size_t n)
{
    struct timg_mem *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->data = realloc(m->data, m->cap);
        assert_non_null(m->data);
    }
    memcpy(m->data + m->len, d, n);
    m->len += n;
}

static void timg_flush_fn(png_structp png)
{
    (void)png;
}

/* Writes a PNG of any colour type straight from packed rows (libpng's own
 * layout: 16-bit samples big-endian, sub-byte depths packed MSB first). */
static uint8_t *timg_png(int w, int h, int color_type, int depth, const uint8_t *rows,
                         const png_color *palette, int npalette, const uint8_t *trns, int ntrns,
                         int interlace, size_t *len)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    assert_non_null(png);
    png_infop info = png_create_info_struct(png);
    assert_non_null(info);
    struct timg_mem m = {0};
    png_set_write_fn(png, &m, timg_write_fn, timg_flush_fn);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (palette)
        png_set_PLTE(png, info, palette, npalette);
    if (trns)
        png_set_tRNS(png, info, trns, ntrns, NULL);
    png_write_info(png, info);
    size_t rb = png_get_rowbytes(png, info);
    png_bytep *rp = malloc((size_t)h * sizeof *rp);
    assert_non_null(rp);
    for (int y = 0; y < h; y++)
        rp[y] = (png_bytep)rows + (size_t)y * rb;
    png_write_image(png, rp);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(rp);
    *len = m.len;
    return m.data;
}

static int timg_has_chunk(const uint8_t *png, size_t len, const char *type, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + 4 + kl + 1 <= len; i++)
        if (memcmp(png + i, type, 4) == 0 && memcmp(png + i + 4, key, kl) == 0 &&
            png[i + 4 + kl] == 0)
            return 1;
    return 0;
}

static void timg_decode_ok(const uint8_t *png, size_t len, int ew, int eh, float **rgb)
{
    int w, h;
    df_status st = img_decode_png(png, len, TIMG_NO_LIMIT, rgb, &w, &h, NULL);
    if (st != DF_OK)
        fail_msg("decode failed: %s", df_errmsg());
    assert_int_equal(w, ew);
    assert_int_equal(h, eh);
}

static void timg_expect_rgb(const float *px, float r, float g, float b)
{
    if (px[0] != r || px[1] != g || px[2] != b)
        fail_msg("pixel (%.9g %.9g %.9g), want (%.9g %.9g %.9g)", (double)px[0], (double)px[1],
                 (double)px[2], (double)r, (double)g, (double)b);
}

/* ------------------------------------------------------------------------ */
/* PNG                                                                        */

static void test_png_round_trip(void **state)
{
    (void)state;
    const int w = 7, h = 5;
    float img[7 * 5 * 3];
    for (int i = 0; i < w * h * 3; i++)
        img[i] = (float)((i * 37) % 256) / 255.0f; /* exactly representable levels */
    const char *text = "a cat, oil painting\nSteps: 20, Sampler: Euler a, CFG scale: 7";
    uint8_t *png;
    size_t len;
    assert_int_equal(img_encode_png(img, w, h, text, &png, &len), DF_OK);
    assert_true(timg_has_chunk(png, len, "tEXt", "parameters"));
    float *back;
    int bw, bh;
    char *got_text;
    assert_int_equal(img_decode_png(png, len, TIMG_NO_LIMIT, &back, &bw, &bh, &got_text), DF_OK);
    assert_int_equal(bw, w);
    assert_int_equal(bh, h);
    assert_memory_equal(back, img, sizeof img);
    assert_string_equal(got_text, text);
    free(back);
    free(got_text);
    free(png);

    /* no text: no chunk, NULL back */
    assert_int_equal(img_encode_png(img, w, h, NULL, &png, &len), DF_OK);
    assert_false(timg_has_chunk(png, len, "tEXt", "parameters"));
    assert_int_equal(img_decode_png(png, len, TIMG_NO_LIMIT, &back, &bw, &bh, &got_text), DF_OK);
    assert_null(got_text);
    free(back);
    free(png);
}

/* Latin-1 text goes in tEXt (é is U+00E9), anything beyond in iTXt UTF-8,
 * both read back as the same UTF-8. */
static void test_png_text_encodings(void **state)
{
    (void)state;
    float px[3] = {0.25f, 0.5f, 0.75f};
    static const char *const texts[] = {"caf\xc3\xa9 au lait, \xc2\xbd price",
                                        "\xe7\x8c\xab, \xe2\x9c\x93 emoji \xf0\x9f\x90\x88"};
    static const char *const types[] = {"tEXt", "iTXt"};
    for (int i = 0; i < 2; i++) {
        uint8_t *png;
        size_t len;
        assert_int_equal(img_encode_png(px, 1, 1, texts[i], &png, &len), DF_OK);
        assert_true(timg_has_chunk(png, len, types[i], "parameters"));
        assert_false(timg_has_chunk(png, len, types[1 - i], "parameters"));
        float *back;
        int w, h;
        char *got;
        assert_int_equal(img_decode_png(png, len, TIMG_NO_LIMIT, &back, &w, &h, &got), DF_OK);
        assert_string_equal(got, texts[i]);
        free(got);
        free(back);
        free(png);
    }
    /* invalid UTF-8 is refused, not written */
    uint8_t *png = NULL;
    size_t len = 0;
    assert_int_equal(img_encode_png(px, 1, 1, "bad \xff byte", &png, &len), DF_EINVAL);
    assert_null(png);
}

/* numpy: (x * 255).round() in float32, half to even; clamp first. */
static void test_png_rounding_half_even(void **state)
{
    (void)state;
    /* values whose float32 product with 255 is exactly k + 0.5 */
    int checked = 0;
    for (int k = 0; k < 255; k++) {
        float x = ((float)k + 0.5f) / 255.0f;
        if (x * 255.0f != (float)k + 0.5f)
            continue;
        float px[3] = {x, x, x};
        uint8_t *png;
        size_t len;
        assert_int_equal(img_encode_png(px, 1, 1, NULL, &png, &len), DF_OK);
        float *back;
        timg_decode_ok(png, len, 1, 1, &back);
        int want = (k % 2 == 0) ? k : k + 1;
        assert_int_equal((int)lrintf(back[0] * 255.0f), want);
        free(back);
        free(png);
        checked++;
    }
    assert_true(checked > 50);

    /* clamping, NaN, and plain rounding */
    float px[8 * 3];
    const float vals[8] = {-0.5f, 0.0f, 1.0f, 7.0f, NAN, 0.0019f, 0.0021f, 254.4f / 255.0f};
    const int want[8] = {0, 0, 255, 255, 0, 0, 1, 254};
    for (int i = 0; i < 8; i++)
        px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = vals[i];
    uint8_t *png;
    size_t len;
    assert_int_equal(img_encode_png(px, 8, 1, NULL, &png, &len), DF_OK);
    float *back;
    timg_decode_ok(png, len, 8, 1, &back);
    for (int i = 0; i < 8; i++)
        assert_int_equal((int)lrintf(back[3 * i] * 255.0f), want[i]);
    free(back);
    free(png);
}

static void test_png_broken_inputs(void **state)
{
    (void)state;
    float img[16 * 16 * 3];
    for (int i = 0; i < 16 * 16 * 3; i++)
        img[i] = (float)(i % 97) / 96.0f;
    uint8_t *png;
    size_t len;
    assert_int_equal(img_encode_png(img, 16, 16, "Steps: 1, Seed: 2, Size: 16x16", &png, &len),
                     DF_OK);

    float *rgb;
    int w, h;
    char *text;
    /* every strict prefix is a clean DF_EFORMAT (exact-size heap copies so
     * ASan sees any over-read) */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *part = malloc(cut ? cut : 1);
        assert_non_null(part);
        memcpy(part, png, cut);
        df_status st = img_decode_png(part, cut, TIMG_NO_LIMIT, &rgb, &w, &h, &text);
        if (st != DF_EFORMAT)
            fail_msg("prefix of %zu bytes: status %s", cut, df_status_name(st));
        assert_null(rgb);
        assert_true(strlen(df_errmsg()) > 0);
        free(part);
    }
    /* not a PNG at all */
    static const uint8_t junk[] = "GIF89a this is not a png file at all";
    assert_int_equal(img_decode_png(junk, sizeof junk, TIMG_NO_LIMIT, &rgb, &w, &h, &text),
                     DF_EFORMAT);
    /* a corrupted IHDR (bad CRC on a critical chunk) names the problem */
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    memcpy(bad, png, len);
    bad[16 + 3] ^= 0x40; /* width byte inside IHDR */
    assert_int_equal(img_decode_png(bad, len, TIMG_NO_LIMIT, &rgb, &w, &h, &text), DF_EFORMAT);
    assert_non_null(strstr(df_errmsg(), "CRC"));
    /* random byte flips anywhere: never a crash, only OK or EFORMAT */
    uint32_t x = 12345;
    for (int trial = 0; trial < 300; trial++) {
        memcpy(bad, png, len);
        for (int k = 0; k < 3; k++) {
            x = x * 1664525u + 1013904223u;
            bad[8 + (x >> 8) % (len - 8)] ^= (uint8_t)(1u << (x & 7));
        }
        df_status st = img_decode_png(bad, len, TIMG_NO_LIMIT, &rgb, &w, &h, &text);
        assert_true(st == DF_OK || st == DF_EFORMAT);
        if (st == DF_OK) {
            free(rgb);
            free(text);
        }
    }
    free(bad);
    free(png);
}

static void test_png_pixel_limit(void **state)
{
    (void)state;
    float img[20 * 10 * 3] = {0};
    uint8_t *png;
    size_t len;
    assert_int_equal(img_encode_png(img, 20, 10, NULL, &png, &len), DF_OK);
    float *rgb = (float *)1;
    int w, h;
    assert_int_equal(img_decode_png(png, len, 199, &rgb, &w, &h, NULL), DF_EINVAL);
    assert_null(rgb);
    assert_int_equal(img_decode_png(png, len, 200, &rgb, &w, &h, NULL), DF_OK);
    free(rgb);
    free(png);
}

static void test_png_color_types(void **state)
{
    (void)state;
    size_t len;
    float *rgb;

    /* 8-bit gray */
    const uint8_t gray[4] = {0, 85, 170, 255};
    uint8_t *png = timg_png(4, 1, PNG_COLOR_TYPE_GRAY, 8, gray, NULL, 0, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 4, 1, &rgb);
    for (int i = 0; i < 4; i++)
        timg_expect_rgb(rgb + 3 * i, gray[i] / 255.0f, gray[i] / 255.0f, gray[i] / 255.0f);
    free(rgb);
    free(png);

    /* 1-bit gray, 10 pixels packed MSB first: 1011001110 */
    const uint8_t bits[2] = {0xB3, 0x80};
    png = timg_png(10, 1, PNG_COLOR_TYPE_GRAY, 1, bits, NULL, 0, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 10, 1, &rgb);
    const int on[10] = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0};
    for (int i = 0; i < 10; i++)
        timg_expect_rgb(rgb + 3 * i, (float)on[i], (float)on[i], (float)on[i]);
    free(rgb);
    free(png);

    /* 4-bit palette, with a transparent entry composited on white */
    const png_color pal[3] = {{255, 0, 0}, {0, 128, 255}, {10, 20, 30}};
    const uint8_t trns[3] = {255, 255, 0};
    const uint8_t idx[2] = {0x01, 0x20}; /* pixels 0, 1, 2, 0 */
    png = timg_png(4, 1, PNG_COLOR_TYPE_PALETTE, 4, idx, pal, 3, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 4, 1, &rgb);
    timg_expect_rgb(rgb, 1.0f, 0.0f, 0.0f);
    timg_expect_rgb(rgb + 3, 0.0f, 128 / 255.0f, 1.0f);
    timg_expect_rgb(rgb + 6, 10 / 255.0f, 20 / 255.0f, 30 / 255.0f);
    free(rgb);
    free(png);
    png = timg_png(4, 1, PNG_COLOR_TYPE_PALETTE, 4, idx, pal, 3, trns, 3, 0, &len);
    timg_decode_ok(png, len, 4, 1, &rgb);
    timg_expect_rgb(rgb + 3, 0.0f, 128 / 255.0f, 1.0f);
    timg_expect_rgb(rgb + 6, 1.0f, 1.0f, 1.0f); /* fully transparent -> white */
    free(rgb);
    free(png);

    /* 8-bit RGBA: PIL's paste blend on white, DIV255 rounding */
    const uint8_t rgba[8] = {100, 0, 255, 128, 10, 20, 30, 255};
    png = timg_png(2, 1, PNG_COLOR_TYPE_RGBA, 8, rgba, NULL, 0, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 2, 1, &rgb);
    /* 255*(255-128) + c*128, +128, (t + (t >> 8)) >> 8 */
    timg_expect_rgb(rgb, 177 / 255.0f, 127 / 255.0f, 1.0f);
    timg_expect_rgb(rgb + 3, 10 / 255.0f, 20 / 255.0f, 30 / 255.0f);
    free(rgb);
    free(png);

    /* gray + alpha */
    const uint8_t ga[4] = {0, 0, 200, 255};
    png = timg_png(2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, ga, NULL, 0, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 2, 1, &rgb);
    timg_expect_rgb(rgb, 1.0f, 1.0f, 1.0f);
    timg_expect_rgb(rgb + 3, 200 / 255.0f, 200 / 255.0f, 200 / 255.0f);
    free(rgb);
    free(png);

    /* 16-bit RGB keeps its precision */
    const uint8_t rgb16[6] = {0x80, 0x00, 0x00, 0x01, 0xFF, 0xFF};
    png = timg_png(1, 1, PNG_COLOR_TYPE_RGB, 16, rgb16, NULL, 0, NULL, 0, 0, &len);
    timg_decode_ok(png, len, 1, 1, &rgb);
    timg_expect_rgb(rgb, 32768 / 65535.0f, 1 / 65535.0f, 1.0f);
    free(rgb);
    free(png);

    /* 16-bit gray, interlaced (Adam7) 9x9 ramp */
    uint8_t g16[9 * 9 * 2];
    for (int i = 0; i < 81; i++) {
        g16[2 * i] = (uint8_t)(i * 800 >> 8);
        g16[2 * i + 1] = (uint8_t)(i * 800);
    }
    png = timg_png(9, 9, PNG_COLOR_TYPE_GRAY, 16, g16, NULL, 0, NULL, 0, 1, &len);
    timg_decode_ok(png, len, 9, 9, &rgb);
    for (int i = 0; i < 81; i++) {
        float v = (float)(i * 800) / 65535.0f;
        timg_expect_rgb(rgb + 3 * i, v, v, v);
    }
    free(rgb);
    free(png);
}

/* ------------------------------------------------------------------------ */
/* resize                                                                     */

/* Pillow's resampling with plain double coefficients (no 22-bit fixed
 * point), rounding and clipping to 8 bits after each pass as Pillow does:
 * the reference our result must stay within one level of. */
static double timg_lanczos(double x)
{
    if (x == 0.0)
        return 1.0;
    if (x <= -3.0 || x >= 3.0)
        return 0.0;
    double a = M_PI * x, b = M_PI * x / 3.0;
    return (sin(a) / a) * (sin(b) / b);
}

static void timg_ref_resize(const float *src, int sw, int sh, double *dst, int dw, int dh)
{
    double *tmp = malloc((size_t)dw * (size_t)sh * 3 * sizeof *tmp);
    assert_non_null(tmp);
    for (int pass = 0; pass < 2; pass++) {
        int in_n = pass ? sh : sw, out_n = pass ? dh : dw, lines = pass ? dw : sh;
        double scale = (double)in_n / out_n, fs = scale < 1 ? 1 : scale, support = 3 * fs;
        for (int o = 0; o < out_n; o++) {
            double center = (o + 0.5) * scale, ww = 0, wts[64];
            int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
            if (lo < 0)
                lo = 0;
            if (hi > in_n)
                hi = in_n;
            assert_true(hi - lo <= 64);
            for (int i = lo; i < hi; i++)
                ww += wts[i - lo] = timg_lanczos((i - center + 0.5) / fs);
            for (int l = 0; l < lines; l++)
                for (int c = 0; c < 3; c++) {
                    double s = 0;
                    for (int i = lo; i < hi; i++) {
                        double v = pass ? tmp[((size_t)i * dw + l) * 3 + c]
                                        : src[((size_t)l * sw + i) * 3 + c];
                        s += v * wts[i - lo] / ww;
                    }
                    s = floor(s * 255.0 + 0.5);
                    s = (s < 0 ? 0 : s > 255 ? 255 : s) / 255.0;
                    if (pass)
                        dst[((size_t)o * dw + l) * 3 + c] = s;
                    else
                        tmp[((size_t)l * dw + o) * 3 + c] = s;
                }
        }
    }
    free(tmp);
}

static void test_resize(void **state)
{
    (void)state;
    enum { SW = 24, SH = 18 };
    float src[SW * SH * 3];
    for (int y = 0; y < SH; y++)
        for (int x = 0; x < SW; x++)
            for (int c = 0; c < 3; c++)
                src[(y * SW + x) * 3 + c] =
                    (float)((x * 29 + y * 13 + c * 71 + (x * y) % 7 * 9) % 256) / 255.0f;

    /* equal size: a copy */
    float same[SW * SH * 3];
    assert_int_equal(img_resize(src, SW, SH, same, SW, SH), DF_OK);
    assert_memory_equal(same, src, sizeof src);

    /* a constant image stays exactly constant, down and up */
    float flat[SW * SH * 3], out[48 * 36 * 3];
    for (int i = 0; i < SW * SH * 3; i++)
        flat[i] = 77 / 255.0f;
    assert_int_equal(img_resize(flat, SW, SH, out, SW / 2, SH / 2), DF_OK);
    for (int i = 0; i < SW / 2 * SH / 2 * 3; i++)
        assert_true(out[i] == 77 / 255.0f);
    assert_int_equal(img_resize(flat, SW, SH, out, 48, 36), DF_OK);
    for (int i = 0; i < 48 * 36 * 3; i++)
        assert_true(out[i] == 77 / 255.0f);

    /* 2x down, up, and mixed (one axis only) against the double reference:
     * within one 8-bit level (Pillow rounds after each pass) */
    static const int sizes[][2] = {{12, 9}, {48, 36}, {13, 18}, {24, 7}, {31, 25}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int dw = sizes[s][0], dh = sizes[s][1];
        double ref[48 * 36 * 3];
        assert_int_equal(img_resize(src, SW, SH, out, dw, dh), DF_OK);
        timg_ref_resize(src, SW, SH, ref, dw, dh);
        for (int i = 0; i < dw * dh * 3; i++) {
            double r = ref[i];
            if (fabs(out[i] - r) > 1.01 / 255.0)
                fail_msg("%dx%d: value %d is %.6f, reference %.6f", dw, dh, i, (double)out[i],
                         r);
            /* output is 8-bit quantised, like PIL's */
            float q = out[i] * 255.0f;
            assert_true(q == rintf(q));
        }
    }
    assert_int_equal(img_resize(src, 0, SH, out, 4, 4), DF_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* infotext                                                                   */

static void timg_check_infotext(const struct info_params *p, const char *want)
{
    char *got;
    assert_int_equal(info_format(p, &got), DF_OK);
    assert_string_equal(got, want);
    free(got);
}

static void test_infotext_format(void **state)
{
    (void)state;
    struct info_params p = {
        .prompt = "a photograph of an astronaut riding a horse",
        .negative_prompt = "blurry, low quality",
        .steps = 20,
        .sampler = "Euler a",
        .cfg_scale = 7.0,
        .seed = 1234,
        .width = 512,
        .height = 512,
        .model_hash = "6ce0161689",
        .model_name = "v1-5-pruned-emaonly",
        .denoising_strength = -1,
        .clip_skip = 1,
        .version = "v1.10.1",
    };
    timg_check_infotext(&p, "a photograph of an astronaut riding a horse\n"
                            "Negative prompt: blurry, low quality\n"
                            "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
                            "Seed: 1234, Size: 512x512, Model hash: 6ce0161689, "
                            "Model: v1-5-pruned-emaonly, Version: v1.10.1");

    struct info_params q = {
        .prompt = "masterpiece, 1girl",
        .steps = 30,
        .sampler = "DPM++ 2M",
        .schedule_type = "Karras",
        .cfg_scale = 7.5,
        .seed = 3456789012,
        .width = 768,
        .height = 512,
        .model_hash = "c35782bad8",
        .model_name = "anything-v3",
        .denoising_strength = 0.75,
        .clip_skip = 2,
        .rng = "CPU",
    };
    timg_check_infotext(&q, "masterpiece, 1girl\n"
                            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, "
                            "Seed: 3456789012, Size: 768x512, Model hash: c35782bad8, "
                            "Model: anything-v3, Denoising strength: 0.75, Clip skip: 2, RNG: CPU");

    /* quoting (, : and newlines -> JSON), omitted schedule, extras, k == v */
    static const struct info_kv extra[] = {
        {"ControlNet 0", "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0"},
        {"Note", "say \"hi\"\\ok"},
        {"Skipped", NULL},
        {"Comment", "two\nlines\tand \"quotes\""},
        {"Hires fix", "Hires fix"},
    };
    struct info_params r = {
        .prompt = "line one\nline two  ",
        .negative_prompt = "",
        .steps = 4,
        .sampler = "LCM",
        .schedule_type = "",
        .cfg_scale = 1.25,
        .seed = 0,
        .width = 512,
        .height = 768,
        .model_name = "my:model, v2",
        .denoising_strength = 1.0,
        .extra = extra,
        .n_extra = sizeof extra / sizeof extra[0],
    };
    timg_check_infotext(&r, "line one\nline two  \n"
                            "Steps: 4, Sampler: LCM, CFG scale: 1.25, Seed: 0, Size: 512x768, "
                            "Model: \"my:model, v2\", Denoising strength: 1, "
                            "ControlNet 0: \"Module: canny, Model: control_v11p_sd15_canny "
                            "[d14c016b], Weight: 1.0\", Note: say \"hi\"\\ok, "
                            "Comment: \"two\\nlines\\tand \\\"quotes\\\"\", Hires fix");
}

static void timg_check_parse_back(const struct info_params *p)
{
    char *text;
    assert_int_equal(info_format(p, &text), DF_OK);
    struct info_parsed *r;
    assert_int_equal(info_parse(text, &r), DF_OK);
    assert_string_equal(r->prompt, p->prompt);
    assert_string_equal(r->negative_prompt, p->negative_prompt ? p->negative_prompt : "");
    char num[64];
    snprintf(num, sizeof num, "%d", p->steps);
    assert_string_equal(info_get(r, "Steps"), num);
    assert_string_equal(info_get(r, "Sampler"), p->sampler);
    snprintf(num, sizeof num, "%lld", (long long)p->seed);
    assert_string_equal(info_get(r, "Seed"), num);
    snprintf(num, sizeof num, "%dx%d", p->width, p->height);
    assert_string_equal(info_get(r, "Size"), num);
    if (p->model_name)
        assert_string_equal(info_get(r, "Model"), p->model_name);
    for (size_t i = 0; i < p->n_extra; i++)
        if (p->extra[i].value && strcmp(p->extra[i].key, p->extra[i].value) != 0)
            assert_string_equal(info_get(r, p->extra[i].key), p->extra[i].value);
    info_parsed_destroy(r);
    free(text);
}

static void test_infotext_parse(void **state)
{
    (void)state;
    /* A1111's own docstring example */
    struct info_parsed *r;
    assert_int_equal(
        info_parse("girl with an artist's beret, determined, blue eyes, desert scene\n"
                   "Negative prompt: ugly, fat, obese, (((deformed))), [blurry]\n"
                   "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
                   "Model hash: 45dee52b\n",
                   &r),
        DF_OK);
    assert_string_equal(r->prompt, "girl with an artist's beret, determined, blue eyes, desert scene");
    assert_string_equal(r->negative_prompt, "ugly, fat, obese, (((deformed))), [blurry]");
    assert_int_equal(r->count, 6);
    assert_string_equal(r->pairs[0].key, "Steps");
    assert_string_equal(r->pairs[0].value, "20");
    assert_string_equal(info_get(r, "Sampler"), "Euler a");
    assert_string_equal(info_get(r, "CFG scale"), "7");
    assert_string_equal(info_get(r, "Model hash"), "45dee52b");
    assert_null(info_get(r, "Clip skip"));
    info_parsed_destroy(r);

    /* fewer than 3 pairs on the last line: it is all prompt */
    assert_int_equal(info_parse("  a: b, c: d\n", &r), DF_OK);
    assert_string_equal(r->prompt, "a: b, c: d");
    assert_int_equal(r->count, 0);
    info_parsed_destroy(r);

    /* multi-line negative prompt; a quoted value that fails to decode stays
     * raw; an empty value is dropped, as in A1111 */
    assert_int_equal(info_parse("p1\n  p2\nNegative prompt:  n1\nn2\n"
                                "Steps: 5, Bad: \"x\\q\", Empty: , Sampler: DDIM, Seed: 1",
                                &r),
                     DF_OK);
    assert_string_equal(r->prompt, "p1\np2");
    assert_string_equal(r->negative_prompt, "n1\nn2");
    assert_string_equal(info_get(r, "Bad"), "\"x\\q\"");
    assert_null(info_get(r, "Empty"));
    assert_string_equal(info_get(r, "Sampler"), "DDIM");
    info_parsed_destroy(r);

    /* our own output parses back to the same values */
    static const struct info_kv extra[] = {
        {"ControlNet 0", "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0"},
        {"Comment", "two\nlines \xe2\x9c\x93 and \"quotes\", \\ backslash"},
        {"Plain", "no specials \xc3\xa9"},
    };
    struct info_params p = {
        .prompt = "a \xe7\x8c\xab cat, (masterpiece:1.2)\nsecond line",
        .negative_prompt = "blurry, low quality",
        .steps = 25,
        .sampler = "Heun",
        .schedule_type = "SGM Uniform",
        .cfg_scale = 4.5,
        .seed = 4294967293,
        .width = 640,
        .height = 448,
        .model_hash = "0123456789",
        .model_name = "weird:name, with comma",
        .denoising_strength = 0.4,
        .clip_skip = 2,
        .rng = "CPU",
        .extra = extra,
        .n_extra = 3,
        .version = "diffusiond",
    };
    timg_check_parse_back(&p);
    p.negative_prompt = NULL;
    p.prompt = "";
    timg_check_parse_back(&p);
}

/* ------------------------------------------------------------------------ */
/* SHA-256                                                                    */

static void timg_expect_hash(const uint8_t d[SHA256_DIGEST_SIZE], const char *want)
{
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    sha256_hex(d, hex);
    assert_string_equal(hex, want);
}

static void test_sha256(void **state)
{
    (void)state;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest("", 0, d);
    timg_expect_hash(d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_digest("abc", 3, d);
    timg_expect_hash(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_digest(two, strlen(two), d);
    timg_expect_hash(d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    /* a million 'a's, fed in awkward pieces, and from a file */
    static const char *const million =
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    struct sha256 s;
    sha256_init(&s);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t n = step < 1000000 - off ? step : 1000000 - off;
        sha256_update(&s, a + off, n);
        off += n;
        step = step * 7 % 1000 + 1;
    }
    sha256_final(&s, d);
    timg_expect_hash(d, million);

    char path[] = "/tmp/test_sha256_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, a, 1000000), 1000000);
    close(fd);
    assert_int_equal(sha256_file(path, d), DF_OK);
    timg_expect_hash(d, million);
    unlink(path);
    free(a);
    assert_int_equal(sha256_file("/nonexistent/model.safetensors", d), DF_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_round_trip),
        cmocka_unit_test(test_png_text_encodings),
        cmocka_unit_test(test_png_rounding_half_even),
        cmocka_unit_test(test_png_broken_inputs),
        cmocka_unit_test(test_png_pixel_limit),
        cmocka_unit_test(test_png_color_types),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_infotext_format),
        cmocka_unit_test(test_infotext_parse),
        cmocka_unit_test(test_sha256),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
