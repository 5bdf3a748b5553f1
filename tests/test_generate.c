/* `diffusiond generate` end to end: PNG files whose infotext parses back
 * the way A1111's parse_generation_parameters reads it, batch naming, and
 * image-to-image from the written PNG at another size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "tools/cli.h"
#include "server/image.h"
#include "server/infotext.h"
#include "testutil.h"

static char unet[4096], vae[4096], clip[4096];

static int setup(void **state) {
    (void)state;
    const char *d = getenv("DF_TEST_FIXTURES");
    if (!d || !*d) d = "../shared/fixtures";
    snprintf(unet, sizeof unet, "%s/unet_sd15_tiny.safetensors", d);
    snprintf(vae, sizeof vae, "%s/vae_tiny.safetensors", d);
    snprintf(clip, sizeof clip, "%s/clip_text_tiny.safetensors", d);
    /* the CLI makes its own devices; the test device pins the driver's
     * libraries so LeakSanitizer can attribute (and suppress) their leaks */
    tu_device();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tu_release_devices();
    return 0;
}

static int run(int argc, char **argv) {
    fflush(stdout);
    return cli_generate_main(argc, argv);
}

static struct info_parsed *read_png(const char *path, int *w, int *h) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    float *rgb;
    char *text = NULL;
    assert_int_equal(img_decode_png(buf, n, 1 << 20, &rgb, w, h, &text), DF_OK);
    free(rgb);
    assert_non_null(text);
    struct info_parsed *p;
    assert_int_equal(info_parse(text, &p), DF_OK);
    free(text);
    return p;
}

static void test_txt2img_infotext(void **state) {
    (void)state;
    char *argv[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "--fp32",
                    "--prompt", "a red fox, (snow:1.2)", "--negative", "blurry",
                    "--width", "64", "--height", "64", "--steps", "2", "--cfg", "6.5",
                    "--sampler", "dpmpp_2m", "--schedule", "karras", "--seed", "1234", "--batch", "2",
                    "-o", "/tmp/df_test_gen.png"};
    assert_int_equal(run((int)(sizeof argv / sizeof argv[0]), argv), 0);
    for (int i = 0; i < 2; i++) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/df_test_gen-%d.png", i + 1);
        int w, h;
        struct info_parsed *p = read_png(path, &w, &h);
        assert_int_equal(w, 64);
        assert_int_equal(h, 64);
        assert_string_equal(p->prompt, "a red fox, (snow:1.2)");
        assert_string_equal(p->negative_prompt, "blurry");
        assert_string_equal(info_get(p, "Steps"), "2");
        assert_string_equal(info_get(p, "Sampler"), "DPM++ 2M");
        assert_string_equal(info_get(p, "Schedule type"), "Karras");
        assert_string_equal(info_get(p, "CFG scale"), "6.5");
        assert_string_equal(info_get(p, "Seed"), i ? "1235" : "1234");
        assert_string_equal(info_get(p, "Size"), "64x64");
        assert_string_equal(info_get(p, "Model"), "unet_sd15_tiny");
        assert_int_equal(strlen(info_get(p, "Model hash")), 10);
        info_parsed_destroy(p);
        unlink(path);
    }
}

/* img2img from a 64x64 PNG into a 128x64 request: the init image is
 * resized, and the infotext carries the denoising strength. */
static void test_img2img_resized(void **state) {
    (void)state;
    char *first[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "--prompt", "a fox",
                     "--width", "64", "--height", "64", "--steps", "1", "--seed", "5", "-o", "/tmp/df_test_init.png"};
    assert_int_equal(run((int)(sizeof first / sizeof first[0]), first), 0);
    char *argv[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "--prompt", "a fox",
                    "--width", "128", "--height", "64", "--steps", "4", "--strength", "0.5", "--seed", "6",
                    "--sampler", "euler", "--init-image", "/tmp/df_test_init.png", "-o", "/tmp/df_test_i2i.png"};
    assert_int_equal(run((int)(sizeof argv / sizeof argv[0]), argv), 0);
    int w, h;
    struct info_parsed *p = read_png("/tmp/df_test_i2i.png", &w, &h);
    assert_int_equal(w, 128);
    assert_int_equal(h, 64);
    assert_string_equal(info_get(p, "Denoising strength"), "0.5");
    assert_string_equal(info_get(p, "Sampler"), "Euler");
    info_parsed_destroy(p);
    unlink("/tmp/df_test_init.png");
    unlink("/tmp/df_test_i2i.png");
}

static void test_bad_arguments(void **state) {
    (void)state;
    char *no_prompt[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "-o", "/tmp/x.png"};
    assert_int_equal(run(9, no_prompt), 2);
    char *bad_sampler[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "--prompt", "x",
                           "--sampler", "nope", "-o", "/tmp/x.png"};
    assert_int_equal(run(13, bad_sampler), 2);
    char *bad_size[] = {"generate", "--unet", unet, "--vae", vae, "--text-encoder", clip, "--prompt", "x",
                        "--width", "100", "-o", "/tmp/df_test_bad.png"};
    assert_int_equal(run(13, bad_size), 1);
    assert_int_equal(access("/tmp/df_test_bad.png", F_OK), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt2img_infotext),
        cmocka_unit_test(test_img2img_resized),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
