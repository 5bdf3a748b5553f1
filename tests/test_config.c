/* Tests for server/config.c: defaults, the file <- environment <- command
 * line layering, the model list rules, model_dir, the key file, and errors
 * that name the key. No device needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../server/config.h"

static char conf_path[64], key_path[64];

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(conf_path, sizeof conf_path, "/tmp/diffusiond-test-%d.conf", (int)getpid());
    snprintf(key_path, sizeof key_path, "/tmp/diffusiond-test-%d.key", (int)getpid());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(conf_path);
    unlink(key_path);
    unsetenv("DIFFUSIOND_CONFIG");
    unsetenv("DIFFUSIOND_PORT");
    unsetenv("DIFFUSIOND_MODEL");
    unsetenv("DIFFUSIOND_VAE");
    unsetenv("NOTIFY_SOCKET");
    return 0;
}

static df_status load(int argc, char **argv, struct config *c) {
    bool help = false;
    df_status st = cfg_load(argc, argv, c, &help);
    assert_false(help);
    return st;
}

static void test_defaults(void **state) {
    (void)state;
    struct config c;
    char *argv[] = {"serve"};
    assert_int_equal(load(1, argv, &c), DF_OK);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 7860);
    assert_int_equal(c.n_models, 0);
    assert_int_equal(c.precision, WTS_F16);
    assert_int_equal(c.workers, 1);
    assert_int_equal(c.queue_max, 32);
    assert_null(c.api_key);
    assert_int_equal(c.n_cors_origins, 0);
    assert_int_equal(c.max_body_bytes, 32u << 20);
    assert_int_equal(c.max_image_pixels, 16u << 20);
    assert_int_equal(c.log_level, LOGL_INFO);
    assert_false(c.validation);
    cfg_free(&c);
}

static void test_layers(void **state) {
    (void)state;
    write_file(conf_path, "# a comment\n"
                          "port = 1000\n"
                          "host = 0.0.0.0\n"
                          "model = file-a.safetensors\n"
                          "model = file-b\n"
                          "vae = \"vae-b.safetensors\"\n"
                          "queue-max = 5\n"
                          "cors_origins = https://a.example, https://b.example\n"
                          "max_body_bytes = 2M\n");
    setenv("DIFFUSIOND_CONFIG", conf_path, 1);
    setenv("DIFFUSIOND_PORT", "2000", 1);
    struct config c;
    char *argv[] = {"serve", "--port", "3000", "--workers=2", "--validation", "--log-level", "debug"};
    assert_int_equal(load(7, argv, &c), DF_OK);
    assert_int_equal(c.port, 3000);          /* command line over environment over file */
    assert_string_equal(c.host, "0.0.0.0"); /* file over default */
    assert_int_equal(c.queue_max, 5);
    assert_int_equal(c.workers, 2);
    assert_true(c.validation);
    assert_int_equal(c.log_level, LOGL_DEBUG);
    assert_int_equal(c.max_body_bytes, 2u << 20);
    assert_int_equal(c.n_cors_origins, 2);
    assert_string_equal(c.cors_origins[1], "https://b.example");
    assert_int_equal(c.n_models, 2);
    assert_string_equal(c.models[0].path, "file-a.safetensors");
    assert_null(c.models[0].component[COMP_VAE]);
    assert_string_equal(c.models[1].component[COMP_VAE], "vae-b.safetensors"); /* components follow the model named last */
    cfg_free(&c);

    /* a layer that names models replaces the list below it */
    setenv("DIFFUSIOND_MODEL", "env-1,env-2", 1);
    char *argv2[] = {"serve", "--model", "cli.safetensors", "--unet", "u.safetensors", "--model-dir", "/models"};
    assert_int_equal(load(7, argv2, &c), DF_OK);
    assert_int_equal(c.n_models, 1);
    assert_string_equal(c.models[0].path, "/models/cli.safetensors"); /* relative paths live in model_dir */
    assert_string_equal(c.models[0].component[COMP_UNET], "/models/u.safetensors");
    cfg_free(&c);

    char *argv3[] = {"serve"};
    assert_int_equal(load(1, argv3, &c), DF_OK);
    assert_int_equal(c.n_models, 2);
    assert_string_equal(c.models[1].path, "env-2");
    cfg_free(&c);
    unsetenv("DIFFUSIOND_MODEL");
    unsetenv("DIFFUSIOND_PORT");
    unsetenv("DIFFUSIOND_CONFIG");
}

static void test_components_only_and_key_file(void **state) {
    (void)state;
    write_file(key_path, "  s3cret-key \n");
    setenv("NOTIFY_SOCKET", "@/org/test", 1);
    struct config c;
    char *argv[] = {"serve", "--unet", "/u", "--vae", "/v", "--text-encoder", "/t", "--api-key-file", key_path,
                    "--precision", "fp32"};
    assert_int_equal(load(11, argv, &c), DF_OK);
    assert_int_equal(c.n_models, 1);
    assert_null(c.models[0].path);
    assert_string_equal(c.models[0].component[COMP_UNET], "/u");
    assert_string_equal(c.models[0].component[COMP_VAE], "/v");
    assert_string_equal(c.models[0].component[COMP_TEXT_ENCODER], "/t");
    assert_string_equal(c.api_key, "s3cret-key");
    assert_int_equal(c.precision, WTS_F32);
    assert_string_equal(c.notify_socket, "@/org/test");
    cfg_free(&c);
    unsetenv("NOTIFY_SOCKET");
}

static void test_errors(void **state) {
    (void)state;
    struct config c;
    static const struct {
        const char *arg, *value, *expect;
    } bad[] = {
        {"--port", "70000", "port"},         {"--port", "12x", "port"},
        {"--workers", "0", "workers"},       {"--precision", "fp8", "precision"},
        {"--log-level", "loud", "log_level"}, {"--max-body-bytes", "lots", "max_body_bytes"},
        {"--job-timeout-s", "-1", "job_timeout_s"}, {"--no-such-key", "1", "no-such-key"},
        {"--validation=maybe", NULL, "validation"}, {"--api-key-file", "/nonexistent/key", "api_key_file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"serve", (char *)bad[i].arg, (char *)bad[i].value};
        df_status st = load(bad[i].value ? 3 : 2, argv, &c);
        assert_int_not_equal(st, DF_OK);
        if (!strstr(df_errmsg(), bad[i].expect)) fail_msg("%s: message \"%s\" does not name %s", bad[i].arg,
                                                          df_errmsg(), bad[i].expect);
    }
    char *missing[] = {"serve", "--port"};
    assert_int_equal(load(2, missing, &c), DF_EINVAL);
    char *stray[] = {"serve", "model.safetensors"};
    assert_int_equal(load(2, stray, &c), DF_EINVAL);

    write_file(conf_path, "port 80\n");
    setenv("DIFFUSIOND_CONFIG", conf_path, 1);
    char *none[] = {"serve"};
    assert_int_equal(load(1, none, &c), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), ":1"));
    write_file(conf_path, "colour = blue\n");
    assert_int_equal(load(1, none, &c), DF_EINVAL);
    assert_non_null(strstr(df_errmsg(), "colour"));
    unsetenv("DIFFUSIOND_CONFIG");
}

static void test_help(void **state) {
    (void)state;
    struct config c;
    bool help = false;
    char *argv[] = {"serve", "--help"};
    assert_int_equal(cfg_load(2, argv, &c, &help), DF_OK);
    assert_true(help);
    cfg_free(&c);
    char buf[16384] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    assert_non_null(f);
    cfg_usage(f);
    fclose(f);
    static const char *keys[] = {"--host", "--port", "--model ", "--model-dir", "--precision", "--device",
                                 "--workers", "--queue-max", "--job-timeout-s", "--result-ttl-s", "--api-key ",
                                 "--cors-origins", "--max-body-bytes", "--max-width", "--max-height", "--max-steps",
                                 "--max-batch", "--max-image-pixels", "--log-level", "--shutdown-grace-s", "--unet",
                                 "--vae", "--text-encoder"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(buf, keys[i])) fail_msg("--help does not document %s", keys[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_components_only_and_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
