/* graph: the kernel interface model code calls. Free of Vulkan types.
 *
 * A forward pass is recorded, not run: each cg_<op>() call appends an op and
 * returns its (not yet computed) output tensor. cg_plan() then assigns every
 * intermediate tensor a place in one activation arena, reusing memory whose
 * tensor is dead, so the arena's size is known before anything runs. A
 * backend (program.h for Vulkan) turns the planned graph into dispatches once
 * and replays them as often as needed, with only the inputs rewritten.
 *
 * Shapes are PyTorch's: outermost dimension first, contiguous row-major.
 * Activations are fp32; weights (external tensors) may be fp16. */
#ifndef DF_GRAPH_H
#define DF_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/status.h"

#define CG_MAX_DIMS 4
#define CG_MAX_SRC 4

enum dtype { DT_F32, DT_F16 };

enum cg_kind {
    CG_INPUT,        /* written by the host before a run, lives in the arena */
    CG_EXTERNAL,     /* lives in a caller-owned buffer (weights) */
    CG_INTERMEDIATE, /* produced by an op, lives in the arena */
    CG_VIEW,         /* a contiguous window of another tensor */
};

struct buf;

struct cg_tensor {
    int id;
    enum cg_kind kind;
    enum dtype dtype;
    int ndim;
    int64_t ne[CG_MAX_DIMS];  /* shape, outermost first */
    const char *name;         /* for profiles and errors; may be NULL */
    bool is_output;           /* kept alive to the end of the pass */
    struct cg_tensor *base;   /* CG_VIEW: the viewed tensor */
    uint64_t view_offset;     /* CG_VIEW: byte offset into base */
    struct buf *ext_buf;      /* CG_EXTERNAL */
    uint64_t ext_offset;      /* CG_EXTERNAL */
    /* set by cg_plan */
    uint64_t arena_offset;
    int first_op, last_op;
};

enum cg_op_type {
    CG_OP_MATMUL,
    CG_OP_CONV2D,
    CG_OP_GROUPNORM,
    CG_OP_LAYERNORM,
    CG_OP_ATTENTION,
    CG_OP_BINARY,
    CG_OP_UNARY,
    CG_OP_GEGLU,
    CG_OP_UPSAMPLE2X,
    CG_OP_CONCAT,
    CG_OP_TIMESTEP_EMBED,
    CG_OP_SOFTMAX,
    CG_OP_TRANSPOSE,
    CG_OP_EMBED,
    CG_OP_COUNT
};

enum cg_binary { CG_ADD, CG_SUB, CG_MUL, CG_DIV };
enum cg_unary { CG_SILU, CG_GELU_ERF, CG_GELU_TANH, CG_QUICK_GELU, CG_SCALE };

/* Op parameters; which fields mean what is documented at each cg_ call. */
struct cg_op {
    enum cg_op_type type;
    struct cg_tensor *dst;
    struct cg_tensor *src[CG_MAX_SRC]; /* NULL where absent */
    union {
        struct { int64_t batch, m, n, k; bool trans_b; bool bcast_b; float alpha; } matmul;
        struct { int stride_y, stride_x, pad_top, pad_left, pad_bottom, pad_right; } conv;
        struct { int groups; float eps; bool silu; } norm;
        struct { int heads; float scale; bool causal; } attn;
        struct { enum cg_binary op; int64_t a_stride[CG_MAX_DIMS], b_stride[CG_MAX_DIMS]; } binary;
        struct { enum cg_unary op; float alpha, beta; } unary;
        struct { int64_t outer, a_inner, b_inner; } concat; /* per outer row */
        struct { bool flip_sin_to_cos; float freq_shift; float max_period; } temb;
        struct { float scale; } softmax;
    } p;
};

struct cg_graph;

df_status cg_create(struct cg_graph **out);
void cg_destroy(struct cg_graph *g);

/* Sticky error: the first failing cg_ call (bad shapes, out of memory)
 * makes it and every later call return NULL; cg_status reports it once at
 * the end, so model code need not check each call. */
df_status cg_status(const struct cg_graph *g);

/* ---- tensors ------------------------------------------------------------ */
struct cg_tensor *cg_input(struct cg_graph *g, const char *name, int ndim, const int64_t *ne);
struct cg_tensor *cg_external(struct cg_graph *g, const char *name, struct buf *b, uint64_t offset,
                              enum dtype dt, int ndim, const int64_t *ne);
/* Marks t as a result the host reads after the run (never reused). */
void cg_output(struct cg_graph *g, struct cg_tensor *t);
/* Same bytes, another shape (numel must match). */
struct cg_tensor *cg_reshape(struct cg_graph *g, struct cg_tensor *t, int ndim, const int64_t *ne);
/* Contiguous slice along dim 0: rows [start, start+count). */
struct cg_tensor *cg_slice0(struct cg_graph *g, struct cg_tensor *t, int64_t start, int64_t count);
int64_t cg_numel(const struct cg_tensor *t);
uint64_t cg_nbytes(const struct cg_tensor *t);

/* ---- ops (each returns the new output tensor, fp32) ---------------------- */
/* y[b] = alpha * a[b] @ op(w[b]) (+ bias): a [batch, M, K] (or [M, K]);
 * w [N, K] if trans_b (nn.Linear layout) else [K, N], with a leading batch
 * dim unless shared by every batch item; bias [N] or NULL. */
struct cg_tensor *cg_matmul(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *w,
                            struct cg_tensor *bias, bool trans_b, float alpha);
/* nn.Linear: x [..., K], w [N, K], bias [N] or NULL -> [..., N]. */
struct cg_tensor *cg_linear(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *w,
                            struct cg_tensor *bias);
/* nn.Conv2d: x [N, C, H, W], w [O, C, KH, KW], bias [O] or NULL; zero
 * padding given per side (top, left, bottom, right). */
struct cg_tensor *cg_conv2d(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *w,
                            struct cg_tensor *bias, int stride, int pad_top, int pad_left,
                            int pad_bottom, int pad_right);
/* nn.GroupNorm over x [N, C, ...]; gamma/beta [C] or NULL; optional SiLU. */
struct cg_tensor *cg_groupnorm(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *gamma,
                               struct cg_tensor *beta, int groups, float eps, bool silu);
/* nn.LayerNorm over the last dim; gamma/beta [D] or NULL. */
struct cg_tensor *cg_layernorm(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *gamma,
                               struct cg_tensor *beta, float eps);
/* Multi-head attention, softmax(scale * q k^T) v per head, never forming
 * the score matrix: q [B, Nq, H*D], k and v [B, Nk, H*D] -> [B, Nq, H*D].
 * causal masks key j > query i. */
struct cg_tensor *cg_attention(struct cg_graph *g, struct cg_tensor *q, struct cg_tensor *k,
                               struct cg_tensor *v, int heads, float scale, bool causal);
/* a (op) b with numpy broadcasting of b (and a) to the common shape. */
struct cg_tensor *cg_binary(struct cg_graph *g, enum cg_binary op, struct cg_tensor *a, struct cg_tensor *b);
struct cg_tensor *cg_add(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b);
struct cg_tensor *cg_mul(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b);
/* Elementwise; CG_SCALE computes x*alpha + beta. */
struct cg_tensor *cg_unary(struct cg_graph *g, enum cg_unary op, struct cg_tensor *x, float alpha, float beta);
struct cg_tensor *cg_silu(struct cg_graph *g, struct cg_tensor *x);
struct cg_tensor *cg_scale(struct cg_graph *g, struct cg_tensor *x, float alpha);
/* GEGLU: x [..., 2D] -> x[..., :D] * gelu_erf(x[..., D:]). */
struct cg_tensor *cg_geglu(struct cg_graph *g, struct cg_tensor *x);
/* Nearest-neighbour 2x upsampling of x [N, C, H, W]. */
struct cg_tensor *cg_upsample2x(struct cg_graph *g, struct cg_tensor *x);
/* F.interpolate(x, size=(oh, ow), mode="nearest"): source index
 * min(floor(dst * (float)in/out), in - 1), as torch computes it. */
struct cg_tensor *cg_upsample_nearest(struct cg_graph *g, struct cg_tensor *x, int64_t oh, int64_t ow);
/* torch.cat([a, b], dim): shapes equal except along dim. */
struct cg_tensor *cg_concat(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b, int dim);
/* diffusers get_timestep_embedding: t [B] -> [B, dim]. */
struct cg_tensor *cg_timestep_embed(struct cg_graph *g, struct cg_tensor *t, int dim,
                                    bool flip_sin_to_cos, float freq_shift, float max_period);
/* softmax(scale * x) over the last dim. */
struct cg_tensor *cg_softmax(struct cg_graph *g, struct cg_tensor *x, float scale);
/* [B, M, N] -> [B, N, M] (NCHW <-> tokens). */
struct cg_tensor *cg_transpose(struct cg_graph *g, struct cg_tensor *x);
/* nn.Embedding: rows of table [V, D] picked by ids (integers stored as
 * fp32, exact below 2^24) of any shape -> [..., D]. An id outside [0, V)
 * yields a zero row. */
struct cg_tensor *cg_embed(struct cg_graph *g, struct cg_tensor *table, struct cg_tensor *ids);

/* ---- planning ----------------------------------------------------------- */
/* Assigns arena offsets to inputs and intermediates; *arena_bytes is the
 * activation memory the pass needs. Call after recording; a second call
 * returns the same size (recording more ops after planning is an error). */
df_status cg_plan(struct cg_graph *g, uint64_t *arena_bytes);

int cg_op_count(const struct cg_graph *g);
const struct cg_op *cg_op_at(const struct cg_graph *g, int i);
const char *cg_op_name(enum cg_op_type t);
/* Floating-point operations of one op (multiply-add = 2), for benchmarks:
 * matmul, conv2d and attention; elementwise and norms count one per
 * element they write. */
double cg_op_flops(const struct cg_op *op);

#endif
