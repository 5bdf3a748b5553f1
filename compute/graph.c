/* graph: op recording with shape checks, and the activation arena planner. */
#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 256

struct cg_graph {
    struct cg_tensor **tensors;
    int ntensors, cap_tensors;
    struct cg_op *ops;
    int nops, cap_ops;
    df_status status;
    char message[512];
    bool planned;
    uint64_t arena_bytes; /* valid once planned */
};

df_status cg_create(struct cg_graph **out) {
    struct cg_graph *g = calloc(1, sizeof *g);
    if (!g) return df_error(DF_ENOMEM, "out of memory");
    *out = g;
    return DF_OK;
}

void cg_destroy(struct cg_graph *g) {
    if (!g) return;
    for (int i = 0; i < g->ntensors; i++) {
        free((char *)g->tensors[i]->name);
        free(g->tensors[i]);
    }
    free(g->tensors);
    free(g->ops);
    free(g);
}

df_status cg_status(const struct cg_graph *g) {
    if (g->status != DF_OK) return df_error(g->status, "%s", g->message);
    return DF_OK;
}

/* Records the first failure; every later call sees g->status and bails. */
static void *fail(struct cg_graph *g, df_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void *fail(struct cg_graph *g, df_status st, const char *fmt, ...) {
    if (g->status == DF_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->message, sizeof g->message, fmt, ap);
        va_end(ap);
        g->status = st;
    }
    return NULL;
}

static const char *shape_str(const struct cg_tensor *t, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->ne[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}
#define SHAPE(t) shape_str((t), (char[96]){0}, 96)

int64_t cg_numel(const struct cg_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

uint64_t cg_nbytes(const struct cg_tensor *t) {
    return (uint64_t)cg_numel(t) * (t->dtype == DT_F16 ? 2 : 4);
}

static struct cg_tensor *new_tensor(struct cg_graph *g, enum cg_kind kind, enum dtype dt, int ndim,
                                    const int64_t *ne, const char *name) {
    if (g->status != DF_OK) return NULL;
    if (ndim < 1 || ndim > CG_MAX_DIMS) return fail(g, DF_EINVAL, "tensor %s: %d dims", name ? name : "?", ndim);
    for (int i = 0; i < ndim; i++)
        if (ne[i] <= 0 || ne[i] > (1ll << 40))
            return fail(g, DF_EINVAL, "tensor %s: dim %d is %lld", name ? name : "?", i, (long long)ne[i]);
    if (g->ntensors == g->cap_tensors) {
        int cap = g->cap_tensors ? g->cap_tensors * 2 : 64;
        struct cg_tensor **p = realloc(g->tensors, (size_t)cap * sizeof *p);
        if (!p) return fail(g, DF_ENOMEM, "out of memory");
        g->tensors = p;
        g->cap_tensors = cap;
    }
    struct cg_tensor *t = calloc(1, sizeof *t);
    if (!t) return fail(g, DF_ENOMEM, "out of memory");
    t->id = g->ntensors;
    t->kind = kind;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->ne, ne, (size_t)ndim * sizeof *ne);
    t->name = name ? strdup(name) : NULL;
    t->first_op = t->last_op = -1;
    g->tensors[g->ntensors++] = t;
    return t;
}

static struct cg_op *new_op(struct cg_graph *g, enum cg_op_type type, struct cg_tensor *dst) {
    if (g->status != DF_OK || !dst) return NULL;
    if (g->planned) return fail(g, DF_EINVAL, "op %s recorded after cg_plan", cg_op_name(type));
    if (g->nops == g->cap_ops) {
        int cap = g->cap_ops ? g->cap_ops * 2 : 64;
        struct cg_op *p = realloc(g->ops, (size_t)cap * sizeof *p);
        if (!p) return fail(g, DF_ENOMEM, "out of memory");
        g->ops = p;
        g->cap_ops = cap;
    }
    struct cg_op *op = &g->ops[g->nops++];
    memset(op, 0, sizeof *op);
    op->type = type;
    op->dst = dst;
    return op;
}

/* Every op argument goes through here: NULL means an earlier failure. */
static bool ok_args(struct cg_graph *g, int n, ...) {
    if (g->status != DF_OK) return false;
    va_list ap;
    va_start(ap, n);
    bool ok = true;
    for (int i = 0; i < n; i++)
        if (!va_arg(ap, struct cg_tensor *)) ok = false;
    va_end(ap);
    if (!ok) fail(g, DF_EINVAL, "NULL tensor passed to an op");
    return ok;
}

static struct cg_tensor *activation(struct cg_graph *g, int ndim, const int64_t *ne) {
    return new_tensor(g, CG_INTERMEDIATE, DT_F32, ndim, ne, NULL);
}

static bool is_f32(struct cg_graph *g, const struct cg_tensor *t, const char *op) {
    if (t->dtype == DT_F32) return true;
    fail(g, DF_EINVAL, "%s: activation %s must be fp32", op, t->name ? t->name : "");
    return false;
}

/* ---- tensors ------------------------------------------------------------ */

struct cg_tensor *cg_input(struct cg_graph *g, const char *name, int ndim, const int64_t *ne) {
    return new_tensor(g, CG_INPUT, DT_F32, ndim, ne, name);
}

struct cg_tensor *cg_external(struct cg_graph *g, const char *name, struct buf *b, uint64_t offset,
                              enum dtype dt, int ndim, const int64_t *ne) {
    if (!b) return fail(g, DF_EINVAL, "external tensor %s without a buffer", name ? name : "");
    if (offset % 4) return fail(g, DF_EINVAL, "external tensor %s: offset %llu not 4-byte aligned",
                                name ? name : "", (unsigned long long)offset);
    struct cg_tensor *t = new_tensor(g, CG_EXTERNAL, dt, ndim, ne, name);
    if (t) {
        t->ext_buf = b;
        t->ext_offset = offset;
    }
    return t;
}

void cg_output(struct cg_graph *g, struct cg_tensor *t) {
    if (!ok_args(g, 1, t)) return;
    while (t->kind == CG_VIEW) t = t->base;
    t->is_output = true;
}

static struct cg_tensor *view(struct cg_graph *g, struct cg_tensor *t, uint64_t offset, int ndim, const int64_t *ne) {
    struct cg_tensor *v = new_tensor(g, CG_VIEW, t->dtype, ndim, ne, t->name);
    if (!v) return NULL;
    while (t->kind == CG_VIEW) {
        offset += t->view_offset;
        t = t->base;
    }
    v->base = t;
    v->view_offset = offset;
    return v;
}

struct cg_tensor *cg_reshape(struct cg_graph *g, struct cg_tensor *t, int ndim, const int64_t *ne) {
    if (!ok_args(g, 1, t)) return NULL;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    if (n != cg_numel(t)) return fail(g, DF_EINVAL, "reshape of %s: %lld elements into %lld", SHAPE(t),
                                      (long long)cg_numel(t), (long long)n);
    return view(g, t, 0, ndim, ne);
}

struct cg_tensor *cg_slice0(struct cg_graph *g, struct cg_tensor *t, int64_t start, int64_t count) {
    if (!ok_args(g, 1, t)) return NULL;
    if (start < 0 || count <= 0 || start + count > t->ne[0])
        return fail(g, DF_EINVAL, "slice [%lld, +%lld) of %s", (long long)start, (long long)count, SHAPE(t));
    int64_t ne[CG_MAX_DIMS];
    memcpy(ne, t->ne, sizeof ne);
    ne[0] = count;
    uint64_t row = cg_nbytes(t) / (uint64_t)t->ne[0];
    return view(g, t, row * (uint64_t)start, t->ndim, ne);
}

/* ---- ops ---------------------------------------------------------------- */

struct cg_tensor *cg_matmul(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *w,
                            struct cg_tensor *bias, bool trans_b, float alpha) {
    if (!ok_args(g, 2, a, w) || !is_f32(g, a, "matmul")) return NULL;
    if (a->ndim < 2 || a->ndim > 3 || w->ndim < 2 || w->ndim > 3)
        return fail(g, DF_EINVAL, "matmul: a %s, w %s must be 2-D or 3-D", SHAPE(a), SHAPE(w));
    int64_t batch = a->ndim == 3 ? a->ne[0] : 1;
    int64_t m = a->ne[a->ndim - 2], k = a->ne[a->ndim - 1];
    int64_t wk = trans_b ? w->ne[w->ndim - 1] : w->ne[w->ndim - 2];
    int64_t n = trans_b ? w->ne[w->ndim - 2] : w->ne[w->ndim - 1];
    bool bcast = w->ndim == 2;
    if (wk != k || (!bcast && w->ne[0] != batch))
        return fail(g, DF_EINVAL, "matmul: a %s does not fit w %s%s", SHAPE(a), SHAPE(w),
                    trans_b ? " (transposed)" : "");
    if (bias && (bias->ndim != 1 || bias->ne[0] != n))
        return fail(g, DF_EINVAL, "matmul: bias %s for %lld outputs", SHAPE(bias), (long long)n);
    int64_t ne[3] = {batch, m, n};
    struct cg_tensor *y = a->ndim == 3 ? activation(g, 3, ne) : activation(g, 2, ne + 1);
    struct cg_op *op = new_op(g, CG_OP_MATMUL, y);
    if (!op) return NULL;
    op->src[0] = a;
    op->src[1] = w;
    op->src[2] = bias;
    op->p.matmul.batch = batch;
    op->p.matmul.m = m;
    op->p.matmul.n = n;
    op->p.matmul.k = k;
    op->p.matmul.trans_b = trans_b;
    op->p.matmul.bcast_b = bcast;
    op->p.matmul.alpha = alpha;
    return y;
}

struct cg_tensor *cg_linear(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *w, struct cg_tensor *bias) {
    if (!ok_args(g, 2, x, w)) return NULL;
    if (w->ndim != 2) return fail(g, DF_EINVAL, "linear: weight %s is not 2-D", SHAPE(w));
    int64_t k = x->ne[x->ndim - 1];
    int64_t rows = cg_numel(x) / k;
    struct cg_tensor *x2 = cg_reshape(g, x, 2, (int64_t[]){rows, k});
    struct cg_tensor *y2 = cg_matmul(g, x2, w, bias, true, 1.0f);
    if (!y2) return NULL;
    int64_t ne[CG_MAX_DIMS];
    memcpy(ne, x->ne, sizeof ne);
    ne[x->ndim - 1] = w->ne[0];
    return cg_reshape(g, y2, x->ndim, ne);
}

struct cg_tensor *cg_conv2d(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *w, struct cg_tensor *bias,
                            int stride, int pt, int pl, int pb, int pr) {
    if (!ok_args(g, 2, x, w) || !is_f32(g, x, "conv2d")) return NULL;
    if (x->ndim != 4 || w->ndim != 4 || w->ne[1] != x->ne[1])
        return fail(g, DF_EINVAL, "conv2d: input %s does not fit weight %s", SHAPE(x), SHAPE(w));
    if (stride < 1 || pt < 0 || pl < 0 || pb < 0 || pr < 0)
        return fail(g, DF_EINVAL, "conv2d: stride %d, padding %d %d %d %d", stride, pt, pl, pb, pr);
    if (bias && (bias->ndim != 1 || bias->ne[0] != w->ne[0]))
        return fail(g, DF_EINVAL, "conv2d: bias %s for weight %s", SHAPE(bias), SHAPE(w));
    int64_t ho = (x->ne[2] + pt + pb - w->ne[2]) / stride + 1;
    int64_t wo = (x->ne[3] + pl + pr - w->ne[3]) / stride + 1;
    if (x->ne[2] + pt + pb < w->ne[2] || x->ne[3] + pl + pr < w->ne[3])
        return fail(g, DF_EINVAL, "conv2d: kernel %s larger than padded input %s", SHAPE(w), SHAPE(x));
    struct cg_tensor *y = activation(g, 4, (int64_t[]){x->ne[0], w->ne[0], ho, wo});
    struct cg_op *op = new_op(g, CG_OP_CONV2D, y);
    if (!op) return NULL;
    op->src[0] = x;
    op->src[1] = w;
    op->src[2] = bias;
    op->p.conv.stride_y = op->p.conv.stride_x = stride;
    op->p.conv.pad_top = pt;
    op->p.conv.pad_left = pl;
    op->p.conv.pad_bottom = pb;
    op->p.conv.pad_right = pr;
    return y;
}

static bool affine_ok(struct cg_graph *g, struct cg_tensor *gamma, struct cg_tensor *beta, int64_t c, const char *op) {
    struct cg_tensor *p[2] = {gamma, beta};
    for (int i = 0; i < 2; i++)
        if (p[i] && (p[i]->ndim != 1 || p[i]->ne[0] != c)) {
            fail(g, DF_EINVAL, "%s: affine parameter %s for %lld channels", op, SHAPE(p[i]), (long long)c);
            return false;
        }
    return true;
}

struct cg_tensor *cg_groupnorm(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *gamma,
                               struct cg_tensor *beta, int groups, float eps, bool silu) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "groupnorm")) return NULL;
    if (x->ndim < 2 || groups < 1 || x->ne[1] % groups)
        return fail(g, DF_EINVAL, "groupnorm: %d groups for input %s", groups, SHAPE(x));
    if (!affine_ok(g, gamma, beta, x->ne[1], "groupnorm")) return NULL;
    struct cg_tensor *y = activation(g, x->ndim, x->ne);
    struct cg_op *op = new_op(g, CG_OP_GROUPNORM, y);
    if (!op) return NULL;
    op->src[0] = x;
    op->src[1] = gamma;
    op->src[2] = beta;
    op->p.norm.groups = groups;
    op->p.norm.eps = eps;
    op->p.norm.silu = silu;
    return y;
}

struct cg_tensor *cg_layernorm(struct cg_graph *g, struct cg_tensor *x, struct cg_tensor *gamma,
                               struct cg_tensor *beta, float eps) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "layernorm")) return NULL;
    if (!affine_ok(g, gamma, beta, x->ne[x->ndim - 1], "layernorm")) return NULL;
    struct cg_tensor *y = activation(g, x->ndim, x->ne);
    struct cg_op *op = new_op(g, CG_OP_LAYERNORM, y);
    if (!op) return NULL;
    op->src[0] = x;
    op->src[1] = gamma;
    op->src[2] = beta;
    op->p.norm.eps = eps;
    return y;
}

struct cg_tensor *cg_attention(struct cg_graph *g, struct cg_tensor *q, struct cg_tensor *k,
                               struct cg_tensor *v, int heads, float scale, bool causal) {
    if (!ok_args(g, 3, q, k, v) || !is_f32(g, q, "attention") || !is_f32(g, k, "attention") ||
        !is_f32(g, v, "attention"))
        return NULL;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || heads < 1 || q->ne[2] % heads ||
        k->ne[0] != q->ne[0] || v->ne[0] != q->ne[0] || k->ne[2] != q->ne[2] || v->ne[2] != q->ne[2] ||
        v->ne[1] != k->ne[1])
        return fail(g, DF_EINVAL, "attention: q %s, k %s, v %s, %d heads", SHAPE(q), SHAPE(k), SHAPE(v), heads);
    struct cg_tensor *y = activation(g, 3, q->ne);
    struct cg_op *op = new_op(g, CG_OP_ATTENTION, y);
    if (!op) return NULL;
    op->src[0] = q;
    op->src[1] = k;
    op->src[2] = v;
    op->p.attn.heads = heads;
    op->p.attn.scale = scale;
    op->p.attn.causal = causal;
    return y;
}

struct cg_tensor *cg_binary(struct cg_graph *g, enum cg_binary kind, struct cg_tensor *a, struct cg_tensor *b) {
    if (!ok_args(g, 2, a, b) || !is_f32(g, a, "binary")) return NULL;
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t ea[CG_MAX_DIMS], eb[CG_MAX_DIMS], ne[CG_MAX_DIMS];
    /* right-align both shapes into 4 dims, as numpy does */
    for (int i = 0; i < CG_MAX_DIMS; i++) {
        int ia = i - (CG_MAX_DIMS - a->ndim), ib = i - (CG_MAX_DIMS - b->ndim);
        ea[i] = ia >= 0 ? a->ne[ia] : 1;
        eb[i] = ib >= 0 ? b->ne[ib] : 1;
        if (ea[i] != eb[i] && ea[i] != 1 && eb[i] != 1)
            return fail(g, DF_EINVAL, "binary op: shapes %s and %s do not broadcast", SHAPE(a), SHAPE(b));
        ne[i] = ea[i] > eb[i] ? ea[i] : eb[i];
    }
    struct cg_tensor *y = activation(g, nd, ne + CG_MAX_DIMS - nd);
    struct cg_op *op = new_op(g, CG_OP_BINARY, y);
    if (!op) return NULL;
    op->src[0] = a;
    op->src[1] = b;
    op->p.binary.op = kind;
    int64_t sa = 1, sb = 1;
    for (int i = CG_MAX_DIMS - 1; i >= 0; i--) {
        op->p.binary.a_stride[i] = ea[i] == 1 ? 0 : sa;
        op->p.binary.b_stride[i] = eb[i] == 1 ? 0 : sb;
        sa *= ea[i];
        sb *= eb[i];
    }
    return y;
}

struct cg_tensor *cg_add(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b) {
    return cg_binary(g, CG_ADD, a, b);
}
struct cg_tensor *cg_mul(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b) {
    return cg_binary(g, CG_MUL, a, b);
}

struct cg_tensor *cg_unary(struct cg_graph *g, enum cg_unary kind, struct cg_tensor *x, float alpha, float beta) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "unary")) return NULL;
    struct cg_tensor *y = activation(g, x->ndim, x->ne);
    struct cg_op *op = new_op(g, CG_OP_UNARY, y);
    if (!op) return NULL;
    op->src[0] = x;
    op->p.unary.op = kind;
    op->p.unary.alpha = alpha;
    op->p.unary.beta = beta;
    return y;
}
struct cg_tensor *cg_silu(struct cg_graph *g, struct cg_tensor *x) { return cg_unary(g, CG_SILU, x, 1, 0); }
struct cg_tensor *cg_scale(struct cg_graph *g, struct cg_tensor *x, float a) { return cg_unary(g, CG_SCALE, x, a, 0); }

struct cg_tensor *cg_geglu(struct cg_graph *g, struct cg_tensor *x) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "geglu")) return NULL;
    if (x->ne[x->ndim - 1] % 2) return fail(g, DF_EINVAL, "geglu: odd last dim in %s", SHAPE(x));
    int64_t ne[CG_MAX_DIMS];
    memcpy(ne, x->ne, sizeof ne);
    ne[x->ndim - 1] /= 2;
    struct cg_tensor *y = activation(g, x->ndim, ne);
    struct cg_op *op = new_op(g, CG_OP_GEGLU, y);
    if (!op) return NULL;
    op->src[0] = x;
    return y;
}

struct cg_tensor *cg_upsample2x(struct cg_graph *g, struct cg_tensor *x) {
    if (!ok_args(g, 1, x)) return NULL;
    return cg_upsample_nearest(g, x, 2 * x->ne[2], x->ndim == 4 ? 2 * x->ne[3] : 0);
}

struct cg_tensor *cg_upsample_nearest(struct cg_graph *g, struct cg_tensor *x, int64_t oh, int64_t ow) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "upsample")) return NULL;
    if (x->ndim != 4) return fail(g, DF_EINVAL, "upsample: input %s is not NCHW", SHAPE(x));
    if (oh < 1 || ow < 1) return fail(g, DF_EINVAL, "upsample of %s to %lldx%lld", SHAPE(x), (long long)oh, (long long)ow);
    struct cg_tensor *y = activation(g, 4, (int64_t[]){x->ne[0], x->ne[1], oh, ow});
    struct cg_op *op = new_op(g, CG_OP_UPSAMPLE2X, y);
    if (!op) return NULL;
    op->src[0] = x;
    return y;
}

struct cg_tensor *cg_concat(struct cg_graph *g, struct cg_tensor *a, struct cg_tensor *b, int dim) {
    if (!ok_args(g, 2, a, b) || !is_f32(g, a, "concat") || !is_f32(g, b, "concat")) return NULL;
    if (a->ndim != b->ndim || dim < 0 || dim >= a->ndim)
        return fail(g, DF_EINVAL, "concat of %s and %s along %d", SHAPE(a), SHAPE(b), dim);
    int64_t ne[CG_MAX_DIMS], outer = 1, inner = 1;
    for (int i = 0; i < a->ndim; i++) {
        if (i != dim && a->ne[i] != b->ne[i])
            return fail(g, DF_EINVAL, "concat of %s and %s along %d", SHAPE(a), SHAPE(b), dim);
        ne[i] = i == dim ? a->ne[i] + b->ne[i] : a->ne[i];
        if (i < dim) outer *= a->ne[i];
        if (i > dim) inner *= a->ne[i];
    }
    struct cg_tensor *y = activation(g, a->ndim, ne);
    struct cg_op *op = new_op(g, CG_OP_CONCAT, y);
    if (!op) return NULL;
    op->src[0] = a;
    op->src[1] = b;
    op->p.concat.outer = outer;
    op->p.concat.a_inner = a->ne[dim] * inner;
    op->p.concat.b_inner = b->ne[dim] * inner;
    return y;
}

struct cg_tensor *cg_timestep_embed(struct cg_graph *g, struct cg_tensor *t, int dim, bool flip,
                                    float freq_shift, float max_period) {
    if (!ok_args(g, 1, t) || !is_f32(g, t, "timestep_embed")) return NULL;
    if (t->ndim != 1 || dim < 2 || dim % 2)
        return fail(g, DF_EINVAL, "timestep_embed: t %s, dim %d", SHAPE(t), dim);
    struct cg_tensor *y = activation(g, 2, (int64_t[]){t->ne[0], dim});
    struct cg_op *op = new_op(g, CG_OP_TIMESTEP_EMBED, y);
    if (!op) return NULL;
    op->src[0] = t;
    op->p.temb.flip_sin_to_cos = flip;
    op->p.temb.freq_shift = freq_shift;
    op->p.temb.max_period = max_period;
    return y;
}

struct cg_tensor *cg_softmax(struct cg_graph *g, struct cg_tensor *x, float scale) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "softmax")) return NULL;
    struct cg_tensor *y = activation(g, x->ndim, x->ne);
    struct cg_op *op = new_op(g, CG_OP_SOFTMAX, y);
    if (!op) return NULL;
    op->src[0] = x;
    op->p.softmax.scale = scale;
    return y;
}

struct cg_tensor *cg_transpose(struct cg_graph *g, struct cg_tensor *x) {
    if (!ok_args(g, 1, x) || !is_f32(g, x, "transpose")) return NULL;
    if (x->ndim != 3) return fail(g, DF_EINVAL, "transpose: input %s is not [B, M, N]", SHAPE(x));
    struct cg_tensor *y = activation(g, 3, (int64_t[]){x->ne[0], x->ne[2], x->ne[1]});
    struct cg_op *op = new_op(g, CG_OP_TRANSPOSE, y);
    if (!op) return NULL;
    op->src[0] = x;
    return y;
}

struct cg_tensor *cg_embed(struct cg_graph *g, struct cg_tensor *table, struct cg_tensor *ids) {
    if (!ok_args(g, 2, table, ids) || !is_f32(g, ids, "embed")) return NULL;
    if (table->ndim != 2 || ids->ndim >= CG_MAX_DIMS)
        return fail(g, DF_EINVAL, "embed: table %s, ids %s", SHAPE(table), SHAPE(ids));
    int64_t ne[CG_MAX_DIMS];
    memcpy(ne, ids->ne, sizeof ne);
    ne[ids->ndim] = table->ne[1];
    struct cg_tensor *y = activation(g, ids->ndim + 1, ne);
    struct cg_op *op = new_op(g, CG_OP_EMBED, y);
    if (!op) return NULL;
    op->src[0] = table;
    op->src[1] = ids;
    return y;
}

/* ---- planning ----------------------------------------------------------- */

static struct cg_tensor *root(struct cg_tensor *t) {
    while (t->kind == CG_VIEW) t = t->base;
    return t;
}

struct block { uint64_t offset, size; int last_op; };

/* First fit into the gaps between live blocks (kept sorted by offset). */
static uint64_t place(struct block *live, int *nlive, uint64_t size, int last_op, uint64_t *peak) {
    uint64_t at = 0;
    int pos = 0;
    for (; pos < *nlive; pos++) {
        if (live[pos].offset >= at + size) break;
        uint64_t end = live[pos].offset + live[pos].size;
        if (end > at) at = end;
    }
    memmove(&live[pos + 1], &live[pos], (size_t)(*nlive - pos) * sizeof *live);
    live[pos] = (struct block){at, size, last_op};
    (*nlive)++;
    if (at + size > *peak) *peak = at + size;
    return at;
}

df_status cg_plan(struct cg_graph *g, uint64_t *arena_bytes) {
    if (g->status != DF_OK) return cg_status(g);
    if (g->planned) {
        /* recording ended at the first plan; later calls just report it */
        *arena_bytes = g->arena_bytes;
        return DF_OK;
    }
    int end = g->nops;
    for (int i = 0; i < g->ntensors; i++) {
        struct cg_tensor *t = g->tensors[i];
        t->first_op = t->last_op = t->kind == CG_INPUT ? -1 : end;
    }
    for (int i = 0; i < g->nops; i++) {
        struct cg_op *op = &g->ops[i];
        struct cg_tensor *d = root(op->dst);
        if (d->first_op > i) d->first_op = d->last_op = i;
        for (int s = 0; s < CG_MAX_SRC; s++) {
            if (!op->src[s]) continue;
            struct cg_tensor *r = root(op->src[s]);
            if (r->kind == CG_INTERMEDIATE && r->first_op > i)
                return df_error(DF_EINVAL, "op %d (%s) reads a tensor before it is computed", i,
                                cg_op_name(op->type));
            if (r->last_op < i || r->last_op == end) r->last_op = i;
        }
    }
    struct block *live = calloc((size_t)g->ntensors + 1, sizeof *live);
    if (!live) return df_error(DF_ENOMEM, "out of memory");
    int nlive = 0;
    uint64_t peak = 0;
    for (int i = 0; i < g->ntensors; i++) {
        struct cg_tensor *t = g->tensors[i];
        if (t->kind == CG_INPUT || t->is_output) t->last_op = end;
        if (t->kind == CG_INPUT)
            t->arena_offset = place(live, &nlive, (cg_nbytes(t) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN,
                                    end, &peak);
    }
    for (int i = 0; i < g->nops; i++) {
        /* memory of tensors last read before op i is free again; op i's own
         * sources stay live, since kernels do not run in place */
        int keep = 0;
        for (int j = 0; j < nlive; j++)
            if (live[j].last_op >= i) live[keep++] = live[j];
        nlive = keep;
        struct cg_tensor *d = root(g->ops[i].dst);
        if (d->kind != CG_INTERMEDIATE || d->first_op != i) continue;
        uint64_t size = (cg_nbytes(d) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
        d->arena_offset = place(live, &nlive, size, d->last_op, &peak);
    }
    free(live);
    g->planned = true;
    g->arena_bytes = peak;
    *arena_bytes = peak;
    return DF_OK;
}

int cg_op_count(const struct cg_graph *g) { return g->nops; }
const struct cg_op *cg_op_at(const struct cg_graph *g, int i) { return &g->ops[i]; }

const char *cg_op_name(enum cg_op_type t) {
    static const char *names[CG_OP_COUNT] = {
        [CG_OP_MATMUL] = "matmul", [CG_OP_CONV2D] = "conv2d", [CG_OP_GROUPNORM] = "groupnorm",
        [CG_OP_LAYERNORM] = "layernorm", [CG_OP_ATTENTION] = "attention", [CG_OP_BINARY] = "binary",
        [CG_OP_UNARY] = "unary", [CG_OP_GEGLU] = "geglu", [CG_OP_UPSAMPLE2X] = "upsample2x",
        [CG_OP_CONCAT] = "concat", [CG_OP_TIMESTEP_EMBED] = "timestep_embed",
        [CG_OP_SOFTMAX] = "softmax", [CG_OP_TRANSPOSE] = "transpose", [CG_OP_EMBED] = "embed",
    };
    return (unsigned)t < CG_OP_COUNT ? names[t] : "?";
}

double cg_op_flops(const struct cg_op *op) {
    const struct cg_tensor *y = op->dst;
    switch (op->type) {
    case CG_OP_MATMUL:
        return 2.0 * (double)op->p.matmul.batch * (double)op->p.matmul.m * (double)op->p.matmul.n *
               (double)op->p.matmul.k;
    case CG_OP_CONV2D: {
        const struct cg_tensor *w = op->src[1];
        return 2.0 * (double)cg_numel(y) * (double)(w->ne[1] * w->ne[2] * w->ne[3]);
    }
    case CG_OP_ATTENTION: {
        const struct cg_tensor *q = op->src[0], *k = op->src[1];
        /* q k^T and p v: 2 * 2 * B * Nq * Nk * (H * D) */
        return 4.0 * (double)q->ne[0] * (double)q->ne[1] * (double)k->ne[1] * (double)q->ne[2];
    }
    default:
        return (double)cg_numel(y);
    }
}
