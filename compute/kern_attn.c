/* Fused multi-head attention (shaders/attention.comp): one workgroup per
 * block of queries of one (batch, head), keys and values streamed through
 * shared memory with an online softmax; nothing of size Nq x Nk exists. */
#include "kern_attn.h"

#include "kernels.h"

/* Must match the shared arrays of attention.comp: a K and a V tile. */
static uint32_t attn_shared_bytes(int d, int bk) { return 2u * (uint32_t)bk * ((uint32_t)(d + 3) / 4) * 16; }

bool kern_attn_tiles(int d, int nq, uint32_t max_shared, struct attn_tiles *out) {
    /* BK scores per invocation stay in registers next to q and the
     * accumulator (2 * ceil(D/4) vec4s), so big heads take smaller tiles;
     * 16 KiB of tiles leaves room for several workgroups per GPU core and
     * fits every device (lavapipe: 32 KiB). */
    uint32_t budget = max_shared < 16384 ? max_shared : 16384;
    if (d < 1 || d > 1024) return false;
    int bk = d <= 64 ? 32 : d <= 128 ? 16 : 8;
    while (bk >= 4 && attn_shared_bytes(d, bk) > budget) bk /= 2;
    if (bk < 4) return false;
    /* one query per invocation; short sequences (CLIP's 77) waste less with 32 */
    *out = (struct attn_tiles){nq > 32 ? 64 : 32, bk, attn_shared_bytes(d, bk)};
    return true;
}

df_status kern_attention(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *q = op->src[0], *k = op->src[1], *v = op->src[2];
    int64_t batch = q->ne[0], nq = q->ne[1], nk = k->ne[1], hd = q->ne[2], heads = op->p.attn.heads;
    int64_t d = hd / heads;
    if (batch == 0 || nq == 0 || d == 0) return DF_OK;
    if (nk == 0) return df_error(DF_EINVAL, "attention: no keys");
    if ((uint64_t)(batch * (nq > nk ? nq : nk) * hd) >= (1ull << 32))
        return df_error(DF_EUNSUPPORTED, "attention: tensors exceed 32-bit indexing");
    struct attn_tiles t;
    if (!kern_attn_tiles((int)(d < 4096 ? d : 4096), (int)(nq < 64 ? nq : 64), enc_caps(e)->max_shared_memory, &t))
        return df_error(DF_EUNSUPPORTED, "attention: head dim %lld does not fit %u bytes of shared memory",
                        (long long)d, enc_caps(e)->max_shared_memory);
    int64_t qblocks = (nq + t.bq - 1) / t.bq;
    struct {
        uint64_t q, k, v, o;
        uint32_t heads, nq, nk, qblocks, total;
        float scale_log2;
    } pc = {enc_addr(e, q), enc_addr(e, k), enc_addr(e, v), enc_addr(e, op->dst), (uint32_t)heads,
            (uint32_t)nq, (uint32_t)nk, (uint32_t)qblocks, (uint32_t)(batch * heads * qblocks),
            (float)(op->p.attn.scale * 1.4426950408889634)};
    bool vec4 = d % 4 == 0 && (pc.q | pc.k | pc.v | pc.o) % 16 == 0;
    uint32_t spec[5] = {(uint32_t)t.bq, (uint32_t)d, (uint32_t)t.bk, op->p.attn.causal, vec4};
    uint32_t gx, gy;
    enc_grid(e, pc.total, &gx, &gy);
    return enc_dispatch(e, "attention", spec, 5, &pc, sizeof pc, gx, gy, 1);
}
