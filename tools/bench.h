/* bench: `diffusiond bench`, the pipeline benchmark behind `make bench`. */
#ifndef DF_BENCH_H
#define DF_BENCH_H

int bench_main(int argc, char **argv);

#endif
