/* Elementwise and data-movement kernels: unary, binary with broadcasting,
 * GEGLU, 2x nearest upsampling, concat, transpose, timestep embedding.
 *
 * All are memory-bound one-thread-per-output kernels (transpose aside,
 * which tiles through shared memory). Shaders index elements with 32-bit
 * uints, and compilers may sign-extend a 32-bit array index into the
 * 64-bit address (Mesa's NIR does), so tensors stay below 2^31 elements:
 * checked here rather than left to wrap silently. */
#include <math.h>
#include <string.h>

#include "kernels.h"

#define WG 256
#define MAX_INDEX ((int64_t)1 << 31)

static uint32_t groups_for(uint64_t n) { return (uint32_t)((n + WG - 1) / WG); }

static df_status check_index(const char *op, int64_t n) {
    if (n >= MAX_INDEX)
        return df_error(DF_EUNSUPPORTED, "%s: %lld elements exceed the 32-bit index range", op, (long long)n);
    return DF_OK;
}

/* One thread per element over a flat 2-D grid (unary.comp's scheme). */
static df_status flat_dispatch(struct enc *e, const char *shader, const uint32_t *spec, int nspec,
                               const void *push, uint32_t push_size, int64_t n) {
    static const uint32_t none[1] = {0};
    if (!spec) spec = none; /* vk_pipeline memcmp()s spec even when nspec is 0 */
    uint32_t gx, gy;
    enc_grid(e, groups_for((uint64_t)n), &gx, &gy);
    return enc_dispatch(e, shader, spec, nspec, push, push_size, gx, gy, 1);
}

df_status kern_unary(struct enc *e, const struct cg_op *op) {
    int64_t n = cg_numel(op->dst);
    df_status st = check_index("unary", n);
    if (st != DF_OK) return st;
    struct {
        uint64_t x, y;
        uint32_t n;
        float alpha, beta;
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, op->dst), (uint32_t)n, op->p.unary.alpha, op->p.unary.beta};
    uint32_t spec[1] = {(uint32_t)op->p.unary.op};
    return flat_dispatch(e, "unary", spec, 1, &pc, sizeof pc, n);
}

df_status kern_binary(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *y = op->dst;
    int64_t n = cg_numel(y);
    df_status st = check_index("binary", n);
    if (st != DF_OK) return st;
    int64_t ne[CG_MAX_DIMS] = {1, 1, 1, 1};
    for (int i = 0; i < y->ndim; i++) ne[CG_MAX_DIMS - y->ndim + i] = y->ne[i];
    struct {
        uint64_t a, b, y;
        uint32_t n, ne1, ne2, ne3;
        uint32_t sa[4], sb[4];
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, op->src[1]), enc_addr(e, y), (uint32_t)n,
            (uint32_t)ne[1], (uint32_t)ne[2], (uint32_t)ne[3], {0}, {0}};
    /* FLAT: both operands are the output's shape, so index = element */
    bool flat = true;
    int64_t s = 1;
    for (int i = CG_MAX_DIMS - 1; i >= 0; i--) {
        pc.sa[i] = (uint32_t)op->p.binary.a_stride[i];
        pc.sb[i] = (uint32_t)op->p.binary.b_stride[i];
        if (ne[i] > 1 && (op->p.binary.a_stride[i] != s || op->p.binary.b_stride[i] != s)) flat = false;
        s *= ne[i];
    }
    bool b_f16 = op->src[1]->dtype == DT_F16;
    if (b_f16 && pc.b % 4)
        return df_error(DF_EINVAL, "binary: fp16 operand %s is not 4-byte aligned",
                        op->src[1]->name ? op->src[1]->name : "");
    uint32_t spec[3] = {(uint32_t)op->p.binary.op, flat, b_f16};
    return flat_dispatch(e, "binary", spec, 3, &pc, sizeof pc, n);
}

df_status kern_geglu(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *y = op->dst;
    int64_t n = cg_numel(y);
    df_status st = check_index("geglu", 2 * n);
    if (st != DF_OK) return st;
    struct {
        uint64_t x, y;
        uint32_t n, d;
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, y), (uint32_t)n, (uint32_t)y->ne[y->ndim - 1]};
    return flat_dispatch(e, "geglu", NULL, 0, &pc, sizeof pc, n);
}

df_status kern_upsample2x(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0];
    int64_t n = cg_numel(op->dst);
    df_status st = check_index("upsample2x", n);
    if (st != DF_OK) return st;
    const struct cg_tensor *y = op->dst;
    /* torch's nearest: exact halving for 2x, else a float scale in/out */
    struct {
        uint64_t x, y;
        uint32_t n, h, w, oh, ow;
        float scale_h, scale_w;
    } pc = {enc_addr(e, x), enc_addr(e, y), (uint32_t)n, (uint32_t)x->ne[2], (uint32_t)x->ne[3],
            (uint32_t)y->ne[2], (uint32_t)y->ne[3], (float)x->ne[2] / (float)y->ne[2],
            (float)x->ne[3] / (float)y->ne[3]};
    return flat_dispatch(e, "upsample2x", NULL, 0, &pc, sizeof pc, n);
}

df_status kern_concat(struct enc *e, const struct cg_op *op) {
    int64_t n = cg_numel(op->dst);
    df_status st = check_index("concat", n);
    if (st != DF_OK) return st;
    struct {
        uint64_t a, b, y;
        uint32_t n, a_inner, b_inner;
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, op->src[1]), enc_addr(e, op->dst), (uint32_t)n,
            (uint32_t)op->p.concat.a_inner, (uint32_t)op->p.concat.b_inner};
    return flat_dispatch(e, "concat", NULL, 0, &pc, sizeof pc, n);
}

df_status kern_transpose(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0];
    int64_t n = cg_numel(x);
    df_status st = check_index("transpose", n);
    if (st != DF_OK) return st;
    uint32_t m = (uint32_t)x->ne[1], nn = (uint32_t)x->ne[2];
    uint32_t tiles_m = (m + 31) / 32, tiles_n = (nn + 31) / 32;
    uint64_t tiles = (uint64_t)x->ne[0] * tiles_m * tiles_n;
    struct {
        uint64_t x, y;
        uint32_t m, n, tiles_m, tiles_n, tiles;
    } pc = {enc_addr(e, x), enc_addr(e, op->dst), m, nn, tiles_m, tiles_n, (uint32_t)tiles};
    uint32_t gx, gy;
    enc_grid(e, tiles, &gx, &gy);
    static const uint32_t none[1] = {0}; /* vk_pipeline memcmp()s spec even when nspec is 0 */
    return enc_dispatch(e, "transpose", none, 0, &pc, sizeof pc, gx, gy, 1);
}

/* The host supplies the two fp32 constants torch forms from Python floats;
 * the shader reproduces the rest of torch's fp32 arithmetic exactly. */
df_status kern_timestep_embed(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *y = op->dst;
    int64_t n = cg_numel(y);
    df_status st = check_index("timestep_embed", n);
    if (st != DF_OK) return st;
    int64_t half = y->ne[1] / 2;
    float denom = (float)((double)half - (double)op->p.temb.freq_shift);
    if (denom == 0.0f || !isfinite(denom) || !(op->p.temb.max_period > 0.0f))
        return df_error(DF_EINVAL, "timestep_embed: half %lld, freq_shift %g, max_period %g", (long long)half,
                        (double)op->p.temb.freq_shift, (double)op->p.temb.max_period);
    struct {
        uint64_t t, y;
        uint32_t n, half_dim, flip;
        float neg_log_period, denom;
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, y), (uint32_t)n, (uint32_t)half, op->p.temb.flip_sin_to_cos,
            (float)-log((double)op->p.temb.max_period), denom};
    return flat_dispatch(e, "timestep_embed", NULL, 0, &pc, sizeof pc, n);
}
