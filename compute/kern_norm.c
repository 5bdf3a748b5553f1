/* Group norm, layer norm and softmax: one workgroup per group / row, with
 * workgroup reductions through subgroup arithmetic where the device has it
 * and a shared-memory tree otherwise (the *_nosg shader variants). */
#include "kern_norm.h"

#include "kernels.h"

static bool force_fallback;

void kern_norm_force_fallback(bool on) { force_fallback = on; }

/* The variant without subgroup operations must be a separate module: a
 * module declaring GroupNonUniformArithmetic is invalid on devices that
 * lack it, even if a specialization constant skips the code. */
static const char *variant(const struct enc *e, const char *sg, const char *nosg) {
    return !force_fallback && enc_caps(e)->subgroup_arithmetic ? sg : nosg;
}

/* Power-of-two workgroup size for rows of n elements (a 32-lane minimum
 * keeps short rows cheap, 256 saturates long ones). */
static uint32_t row_wg(const struct enc *e, int64_t n) {
    uint32_t want = n <= 512 ? 64 : n <= 2048 ? 128 : 256, lim = enc_caps(e)->max_workgroup_invocations;
    while (want > lim && want > 32) want /= 2;
    return want;
}

/* Affine parameter: spec mode (0 absent, 1 fp32, 2 fp16), address and, for
 * fp16, the element offset of an address rounded down to 4 bytes (the
 * shader reads halves in pairs). */
struct param { uint32_t mode, off; uint64_t addr; };

static struct param affine(const struct enc *e, const struct cg_tensor *t) {
    struct param p = {0, 0, 0};
    if (!t) return p;
    p.addr = enc_addr(e, t);
    if (t->dtype == DT_F16) {
        p.mode = 2;
        p.off = (uint32_t)((p.addr & 3) / 2);
        p.addr &= ~(uint64_t)3;
    } else {
        p.mode = 1;
    }
    return p;
}

static df_status check_size(const struct cg_tensor *t, const char *what) {
    if ((uint64_t)cg_numel(t) >= (1ull << 32))
        return df_error(DF_EUNSUPPORTED, "%s: %lld elements exceed 32-bit indexing", what, (long long)cg_numel(t));
    return DF_OK;
}

df_status kern_groupnorm(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0];
    df_status st = check_size(x, "groupnorm");
    if (st != DF_OK) return st;
    int64_t n = x->ne[0], c = x->ne[1], s = 1;
    for (int i = 2; i < x->ndim; i++) s *= x->ne[i];
    int64_t groups = op->p.norm.groups, cg = c / groups;
    if (n * groups == 0 || cg * s == 0) return DF_OK;
    struct param g = affine(e, op->src[1]), b = affine(e, op->src[2]);
    struct {
        uint64_t x, y, gamma, beta;
        uint32_t m, s, cg, groups, total, goff, boff;
        float eps;
    } pc = {enc_addr(e, x), enc_addr(e, op->dst), g.addr, b.addr, (uint32_t)(cg * s), (uint32_t)s,
            (uint32_t)cg, (uint32_t)groups, (uint32_t)(n * groups), g.off, b.off, op->p.norm.eps};
    uint32_t wg = row_wg(e, 1 << 20);
    uint32_t spec[4] = {wg, g.mode, b.mode, op->p.norm.silu};
    uint32_t gx, gy;
    enc_grid(e, (uint64_t)pc.total, &gx, &gy);
    return enc_dispatch(e, variant(e, "groupnorm", "groupnorm_nosg"), spec, 4, &pc, sizeof pc, gx, gy, 1);
}

df_status kern_layernorm(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0];
    df_status st = check_size(x, "layernorm");
    if (st != DF_OK) return st;
    int64_t d = x->ne[x->ndim - 1], rows = d ? cg_numel(x) / d : 0;
    if (rows == 0) return DF_OK;
    struct param g = affine(e, op->src[1]), b = affine(e, op->src[2]);
    struct {
        uint64_t x, y, gamma, beta;
        uint32_t d, rows, goff, boff;
        float eps;
    } pc = {enc_addr(e, x), enc_addr(e, op->dst), g.addr, b.addr, (uint32_t)d, (uint32_t)rows, g.off, b.off,
            op->p.norm.eps};
    uint32_t spec[3] = {row_wg(e, d), g.mode, b.mode};
    uint32_t gx, gy;
    enc_grid(e, (uint64_t)rows, &gx, &gy);
    return enc_dispatch(e, variant(e, "layernorm", "layernorm_nosg"), spec, 3, &pc, sizeof pc, gx, gy, 1);
}

df_status kern_softmax(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0];
    df_status st = check_size(x, "softmax");
    if (st != DF_OK) return st;
    int64_t n = x->ne[x->ndim - 1], rows = n ? cg_numel(x) / n : 0;
    if (rows == 0) return DF_OK;
    struct {
        uint64_t x, y;
        uint32_t n, rows;
        float scale;
    } pc = {enc_addr(e, x), enc_addr(e, op->dst), (uint32_t)n, (uint32_t)rows, op->p.softmax.scale};
    uint32_t spec[1] = {row_wg(e, n)};
    uint32_t gx, gy;
    enc_grid(e, (uint64_t)rows, &gx, &gy);
    return enc_dispatch(e, variant(e, "softmax", "softmax_nosg"), spec, 1, &pc, sizeof pc, gx, gy, 1);
}
