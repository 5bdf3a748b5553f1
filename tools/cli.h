/* cli: the one-shot sub-commands `generate` and `info`. */
#ifndef DF_CLI_H
#define DF_CLI_H

#include <stdbool.h>

#include "models/model.h"

int cli_generate_main(int argc, char **argv);
int cli_info_main(int argc, char **argv);

/* --unet, --vae, --text-encoder, ... (comp_table's names): sets that
 * component of *mo to `value` (may be NULL: the caller checks) and returns
 * true; false for any other option. */
bool cli_component_option(const char *opt, const char *value, struct model_options *mo);

#endif
