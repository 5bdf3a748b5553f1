/* cli: the one-shot sub-commands `generate` and `info`. */
#ifndef DF_CLI_H
#define DF_CLI_H

int cli_generate_main(int argc, char **argv);
int cli_info_main(int argc, char **argv);

#endif
