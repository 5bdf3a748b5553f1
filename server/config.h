/* config: the daemon's whole configuration, one struct, read-only once
 * `diffusiond serve` has started.
 *
 * Layers, each overriding the one before: built-in defaults <- config file
 * (--config FILE or DIFFUSIOND_CONFIG; "key = value" lines, # comments) <-
 * environment (DIFFUSIOND_<KEY>, e.g. DIFFUSIOND_PORT) <- command line
 * (--key value or --key=value; '-' and '_' are the same in key names).
 * `diffusiond serve --help` prints every key with its default (cfg_usage).
 *
 * Models: `model` may repeat; the first one is the default. A layer that
 * names a model replaces the model list of the layers below it. Each
 * component of comp_table (`unet`, `vae`, `text_encoder`, ...) and its
 * `*_config` JSON file override that component of the model named last (or,
 * with no model named at all, make a model from component files).
 * Relative model paths are taken inside model_dir when it is set.
 *
 * This is the only module that reads the environment. */
#ifndef DF_CONFIG_H
#define DF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "../common/status.h"
#include "../models/family.h"
#include "../models/weights.h"
#include "log.h"

struct cfg_model {
    char *path;          /* single file or diffusers folder; NULL = components only */
    char *component[COMP_COUNT]; /* per comp_table: overriding weight files */
    /* config.json files for component files, whose shapes cannot tell
     * everything (head counts), and a scheduler_config.json */
    char *component_config[COMP_COUNT], *scheduler_config;
    char *family;        /* sd1, sd2, sdxl: for component files */
    char *prediction;    /* epsilon or v: overrides the model's */
};

struct config {
    char *host;
    int port;                    /* 0 = any free port (tests) */
    struct cfg_model *models;
    int n_models;
    char *model_dir;             /* NULL = none */
    enum wts_precision precision;
    char **devices;              /* index or name substring each; none = auto */
    int n_devices;
    int workers;                 /* per device */
    int queue_max;
    double job_timeout_s;        /* 0 = no limit */
    double result_ttl_s;
    char *api_key;               /* NULL = no authentication */
    char **cors_origins;         /* none = CORS off */
    int n_cors_origins;
    size_t max_body_bytes;
    int max_width, max_height, max_steps, max_batch;
    size_t max_image_pixels;
    size_t vae_tile_budget;      /* 0 = the pipeline's default */
    enum log_level log_level;
    double shutdown_grace_s;
    int http_threads;
    bool validation;             /* Vulkan validation layer (debugging, tests) */
    /* not keys: what the environment says about the service manager */
    char *notify_socket;         /* $NOTIFY_SOCKET (systemd Type=notify) */
};

/* Builds the configuration from defaults, the file, the environment and
 * argv (argv[0] is the sub-command name and skipped). *help is set when
 * --help was given (the caller prints cfg_usage). DF_EINVAL with a message
 * naming the key for anything malformed; DF_EIO for an unreadable file. */
df_status cfg_load(int argc, char **argv, struct config *out, bool *help);
void cfg_free(struct config *c);

void cfg_usage(FILE *f);

#endif
