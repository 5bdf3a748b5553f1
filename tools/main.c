/* diffusiond: entry point and sub-commands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/device.h"
#include "check.h"
#include "bench.h"
#include "cli.h"
#include "server/serve.h"

static const char *type_name(enum dev_type t) {
    switch (t) {
    case DEV_DISCRETE: return "discrete GPU";
    case DEV_INTEGRATED: return "integrated GPU";
    case DEV_VIRTUAL: return "virtual GPU";
    case DEV_CPU: return "CPU";
    default: return "other";
    }
}

static int cmd_devices(void) {
    struct dev_caps caps[16];
    bool usable[16];
    int n = 0;
    if (dev_list(caps, usable, 16, &n) != DF_OK) {
        fprintf(stderr, "diffusiond: %s\n", df_errmsg());
        return 1;
    }
    if (n == 0) {
        fprintf(stderr, "diffusiond: no Vulkan devices\n");
        return 1;
    }
    for (int i = 0; i < n && i < 16; i++) {
        const struct dev_caps *c = &caps[i];
        printf("device %d: %s (%s)%s\n", i, c->name, type_name(c->type), usable[i] ? "" : " [unusable]");
        printf("  vulkan %u.%u.%u, driver %s\n", c->api_version >> 22, (c->api_version >> 12) & 0x3ff,
               c->api_version & 0xfff, c->driver);
        printf("  fp16 storage %s, 8-bit storage %s, shaderFloat16 %s, shaderInt64 %s, buffer device address %s\n",
               c->storage_16bit ? "yes" : "no", c->storage_8bit ? "yes" : "no", c->shader_float16 ? "yes" : "no",
               c->shader_int64 ? "yes" : "no", c->buffer_device_address ? "yes" : "no");
        printf("  subgroup size %u, arithmetic %s, shuffle %s\n", c->subgroup_size,
               c->subgroup_arithmetic ? "yes" : "no", c->subgroup_shuffle ? "yes" : "no");
        printf("  shared memory %u bytes, workgroup invocations %u\n", c->max_shared_memory,
               c->max_workgroup_invocations);
        printf("  maxStorageBufferRange %llu, maxMemoryAllocationSize %llu, device-local heap %llu\n",
               (unsigned long long)c->max_storage_buffer_range, (unsigned long long)c->max_allocation_size,
               (unsigned long long)c->device_local_bytes);
        printf("  host-visible device-local memory %s, timestamps %s (%.3g ns/tick)\n",
               c->host_visible_device_local ? "yes" : "no", c->timestamps ? "yes" : "no", c->timestamp_period_ns);
    }
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: diffusiond <command> [options]\n\n"
               "commands:\n"
               "  serve           the HTTP daemon (serve --help lists every option)\n"
               "  generate        one generation to PNG (see generate --help)\n"
               "  info MODEL      what a model was recognised as: family, layout, config, size\n"
               "  devices         list Vulkan devices and their capabilities\n"
               "  bench --model PATH [--size N]   time text encoder, one UNet step, VAE decode\n"
               "  check-fixtures DIR [--case NAME] [--fp16] [--validation]\n"
               "                  compare every supported model with the reference outputs in DIR\n"
               );
}



int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "devices") == 0) return cmd_devices();
    if (strcmp(argv[1], "serve") == 0) return serve_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "generate") == 0) return cli_generate_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "info") == 0) return cli_info_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "bench") == 0) return bench_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "check-fixtures") == 0) return check_fixtures_main(argc - 1, argv + 1);

    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "diffusiond: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
