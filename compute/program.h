/* program: a planned graph recorded once into a Vulkan command buffer and
 * replayed. Between runs only inputs change (prog_write), so a sampler loop
 * costs one submit per step, whatever the number of kernels.
 *
 * The graph must outlive the program. Activations live in an arena buffer
 * the caller may share between programs that never run at the same time
 * (a worker's text encoder, UNet and VAE). */
#ifndef DF_PROGRAM_H
#define DF_PROGRAM_H

#include <stdbool.h>
#include <stdint.h>

#include "device.h"
#include "graph.h"

struct program;

struct prog_options {
    struct buf *arena;      /* NULL: the program allocates its own */
    uint64_t arena_offset;  /* where this program's activations start */
    bool profile;           /* timestamp every dispatch */
};

/* Plans the graph if not yet planned, creates the pipelines and records
 * the command buffer. Fails up front (DF_ENOMEM) if the arena cannot hold
 * the pass. */
df_status prog_create(struct device *dev, struct cg_graph *g, const struct prog_options *opt,
                      struct program **out);
void prog_destroy(struct program *p);

uint64_t prog_arena_bytes(const struct program *p);
struct buf *prog_arena(const struct program *p);

/* Host <-> tensor copies for input and output tensors (any arena tensor). */
df_status prog_write(struct program *p, const struct cg_tensor *t, const float *src);
df_status prog_read(struct program *p, const struct cg_tensor *t, float *dst);

df_status prog_run(struct program *p);

struct prog_timing {
    int op;             /* index of the op in the graph */
    const char *kernel; /* op name */
    double ms;
};
/* Per-dispatch GPU times of the last run (profile must be on). Returns the
 * number of dispatches, writing at most max entries. */
int prog_profile(const struct program *p, struct prog_timing *out, int max);

#endif
