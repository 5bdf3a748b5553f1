/* Embedding lookup (token and position tables). */
#include "kernels.h"

df_status kern_embed(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *table = op->src[0];
    struct {
        uint64_t table, ids, y;
        uint32_t rows, dim, vocab;
    } pc = {enc_addr(e, table), enc_addr(e, op->src[1]), enc_addr(e, op->dst), (uint32_t)cg_numel(op->src[1]),
            (uint32_t)table->ne[1], (uint32_t)table->ne[0]};
    uint32_t spec[1] = {table->dtype == DT_F16};
    uint32_t gx, gy;
    enc_grid(e, ((uint64_t)pc.rows * pc.dim + 255) / 256, &gx, &gy);
    return enc_dispatch(e, "embed", spec, 1, &pc, sizeof pc, gx, gy, 1);
}
