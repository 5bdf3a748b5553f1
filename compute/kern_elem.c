/* Elementwise and data-movement kernels: unary, binary with broadcasting,
 * GEGLU, 2x nearest upsampling, concat, transpose, timestep embedding. */
#include <string.h>

#include "kernels.h"

#define WG 256

static uint32_t groups_for(uint64_t n) { return (uint32_t)((n + WG - 1) / WG); }

df_status kern_unary(struct enc *e, const struct cg_op *op) {
    struct {
        uint64_t x, y;
        uint32_t n;
        float alpha, beta;
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, op->dst), (uint32_t)cg_numel(op->dst),
            op->p.unary.alpha, op->p.unary.beta};
    uint32_t spec[1] = {(uint32_t)op->p.unary.op};
    uint32_t gx, gy;
    enc_grid(e, groups_for(pc.n), &gx, &gy);
    return enc_dispatch(e, "unary", spec, 1, &pc, sizeof pc, gx, gy, 1);
}

df_status kern_binary(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *y = op->dst;
    int64_t ne[CG_MAX_DIMS] = {1, 1, 1, 1};
    for (int i = 0; i < y->ndim; i++) ne[CG_MAX_DIMS - y->ndim + i] = y->ne[i];
    struct {
        uint64_t a, b, y;
        uint32_t n, ne1, ne2, ne3;
        uint32_t sa[4], sb[4];
    } pc = {enc_addr(e, op->src[0]), enc_addr(e, op->src[1]), enc_addr(e, y), (uint32_t)cg_numel(y),
            (uint32_t)ne[1], (uint32_t)ne[2], (uint32_t)ne[3], {0}, {0}};
    for (int i = 0; i < 4; i++) {
        pc.sa[i] = (uint32_t)op->p.binary.a_stride[i];
        pc.sb[i] = (uint32_t)op->p.binary.b_stride[i];
    }
    uint32_t spec[1] = {(uint32_t)op->p.binary.op};
    uint32_t gx, gy;
    enc_grid(e, groups_for(pc.n), &gx, &gy);
    return enc_dispatch(e, "binary", spec, 1, &pc, sizeof pc, gx, gy, 1);
}
