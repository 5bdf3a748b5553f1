/* weights: a model component's tensors, uploaded to the device once.
 *
 * Loading reads safetensors files (mmap), renames keys to the canonical
 * (diffusers / transformers) names through a rename table, converts dtypes
 * (bf16/f32 -> f16 or f32) and uploads into a few large device blocks; the
 * mapped file pages are released as each tensor is uploaded. Model code then
 * takes each tensor by canonical name with its expected shape: a missing or
 * mis-shaped tensor is an error that names it, and whatever no model code
 * took is reported once as unused. */
#ifndef DF_WEIGHTS_H
#define DF_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/device.h"
#include "compute/graph.h"
#include "safetensors.h"

/* One weight on the device; ndim == 0 means absent (optional weight). */
struct wt {
    struct buf *buf;
    uint64_t offset;
    enum dtype dtype;
    int ndim;
    int64_t ne[CG_MAX_DIMS];
    const char *name;
};

enum wts_precision {
    WTS_F32,  /* everything fp32: exact checks against the oracle */
    WTS_F16,  /* matrices and conv kernels fp16, vectors fp32 */
};

/* A key rename: names starting with `from` are renamed to start with `to`
 * (longest `from` wins). `tail` optionally renames the remainder by an exact
 * prefix match against a second table (e.g. LDM resnet parts). */
struct wts_rename {
    const char *from;
    const char *to;
    const struct wts_rename *tail; /* NULL-terminated table, or NULL */
};

/* A weight stored in another form than model code takes it, made once at
 * load: a stored tensor whose (renamed) name ends in `from` is replaced by
 * the tensor named with `to` in place of that ending. Several entries with
 * the same `from` split one stored tensor into several (OpenCLIP packs the
 * q, k and v projections into one [3D, D] matrix). */
enum wts_op {
    WTS_ROWS,      /* rows [part*R/parts, (part+1)*R/parts) of dim 0, R rows */
    WTS_TRANSPOSE, /* the transpose of a 2-D tensor */
};

struct wts_derive {
    const char *from;
    const char *to;
    enum wts_op op;
    int part, parts; /* WTS_ROWS only */
};

struct weights;

df_status wts_create(struct device *dev, enum wts_precision prec, struct weights **out);
void wts_destroy(struct weights *w);

/* Uploads the tensors of `f` whose names start with `prefix` ("" = all),
 * renamed by `renames` (count n; a name no entry matches is kept as is). */
df_status wts_load(struct weights *w, const struct st_file *f, const char *prefix,
                   const struct wts_rename *renames, int n);
/* wts_load, with stored tensors reshaped through `derive` (count nd) after
 * renaming. A tensor whose shape does not allow the operation (rows that
 * do not split evenly, a transpose of a non-matrix) is an error naming it. */
df_status wts_load_derived(struct weights *w, const struct st_file *f, const char *prefix,
                           const struct wts_rename *renames, int n, const struct wts_derive *derive, int nd);

/* Required weight `name` with the given shape (a trailing run of 1s is
 * ignored, so LDM's [C, C, 1, 1] attention convs fit [C, C] linears). */
df_status wts_take(struct weights *w, const char *name, int ndim, const int64_t *ne, struct wt *out);
/* Same, but absence is not an error (out->ndim == 0). */
df_status wts_take_optional(struct weights *w, const char *name, int ndim, const int64_t *ne, struct wt *out);
/* Marks `name` as deliberately unused (a buffer the model recomputes, such
 * as CLIP's position_ids), so it is not reported. Absent names are fine. */
void wts_ignore(struct weights *w, const char *name);
/* Whether `name` exists (for config inference). Shape through ne/ndim. */
bool wts_has(const struct weights *w, const char *name, int *ndim, int64_t *ne);

/* Names no wts_take asked for; prints them to `log` once as one line each
 * (NULL: just counts). Returns the count. */
int wts_report_unused(struct weights *w, void (*log)(const char *name, void *ctx), void *ctx);

uint64_t wts_device_bytes(const struct weights *w);
int64_t wts_parameter_count(const struct weights *w);

/* The weight as an external tensor of graph g (NULL if absent). */
struct cg_tensor *wt_tensor(struct cg_graph *g, const struct wt *w);

#endif
