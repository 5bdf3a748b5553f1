/* Fused multi-head attention (shaders/attention.comp): one workgroup per
 * block of queries of one (batch, head), keys and values streamed with an
 * online softmax; nothing of size Nq x Nk exists. GPUs stage K/V tiles in
 * shared memory (attn_tiled.glsl, D <= 160) or, for wider heads, split the
 * head dim over a subgroup (attn_wide.glsl, scores summed by subgroupAdd
 * or in shared memory). CPU drivers, where every load is paid lane by
 * lane, pass K/V rows between subgroup lanes (attn_sg.glsl, D < 32) or run
 * the scores as a small GEMM per key chunk (attn_wsg.glsl). */
#include "kern_attn.h"

#include "kernels.h"

static enum attn_path forced = ATTN_AUTO;

void kern_attn_force_path(enum attn_path path) { forced = path; }

/* Must match attn_tiled.glsl's shared arrays: a K and a V tile. */
static uint32_t tile_bytes(int d, uint32_t bk) { return 2u * bk * ((uint32_t)(d + 3) / 4) * 16; }

static bool pow2(uint32_t x) { return x && !(x & (x - 1)); }

/* A subgroup size the one-subgroup workgroups can use. */
static bool sg_usable(const struct dev_caps *caps) {
    uint32_t sg = caps->subgroup_size;
    return pow2(sg) && sg >= 4 && sg <= 64 && sg <= caps->max_workgroup_invocations;
}

static bool plan_tiled(const struct dev_caps *caps, int d, struct attn_plan *out) {
    if (d > ATTN_TILED_MAX_D) return false;
    /* One query per invocation. Tiles within 16 KiB leave room for several
     * workgroups per GPU core and fit every device (lavapipe: 32 KiB);
     * bigger tiles mean fewer barriers. */
    uint32_t wg = caps->max_workgroup_invocations < 64 ? caps->max_workgroup_invocations : 64;
    uint32_t budget = caps->max_shared_memory < 16384 ? caps->max_shared_memory : 16384;
    uint32_t bk = 64;
    while (bk > 4 && tile_bytes(d, bk) > budget) bk /= 2;
    if (tile_bytes(d, bk) > caps->max_shared_memory) return false;
    *out = (struct attn_plan){.path = ATTN_TILED, .wg = wg, .rows = wg, .bk = bk, .shared_bytes = tile_bytes(d, bk)};
    return true;
}

static bool plan_subgroup(const struct dev_caps *caps, int d, struct attn_plan *out) {
    if (!caps->subgroup_shuffle || !sg_usable(caps) || d > ATTN_SG_MAX_D) return false;
    /* RQ rows per lane reuse each shuffled K/V value RQ times; the body
     * unrolled over RQ x KG x D/4 grows the CPU driver's compile time, so
     * bigger heads take fewer (measured on lavapipe) */
    uint32_t sg = caps->subgroup_size, rq = d <= 48 ? 4 : 2, kg = d <= 48 ? 4 : 2;
    *out = (struct attn_plan){.path = ATTN_SUBGROUP, .wg = sg, .rows = sg * rq, .rq = rq, .kg = kg};
    return true;
}

/* attn_wide.glsl: WG invocations split the head dim and share BQ rows. */
static bool plan_wide(const struct dev_caps *caps, int d, bool smem, struct attn_plan *out) {
    if (!smem && !(caps->subgroup_arithmetic && sg_usable(caps))) return false;
    /* subgroupAdd sums exactly one subgroup; the shared-memory sum serves
     * any size (CPU drivers: still one subgroup, the cheapest there) */
    uint32_t maxwg = caps->max_workgroup_invocations;
    uint32_t wg = !smem || (caps->type == DEV_CPU && sg_usable(caps)) ? caps->subgroup_size : maxwg < 64 ? maxwg : 64;
    uint32_t d4 = ((uint32_t)d + 3) / 4, dl = (d4 + wg - 1) / wg;
    /* q rows and accumulators: 2 x BQ x DL vec4 per invocation, ~128
     * registers at most */
    uint32_t bq = 16 / dl, kg = 4;
    bq = bq < 1 ? 1 : bq > 8 ? 8 : bq;
    uint32_t shared = smem ? 4 * (wg * (bq * kg + 1) + bq * kg) : 0; /* attn_wide.glsl's arrays */
    if (shared > caps->max_shared_memory) return false;
    *out = (struct attn_plan){.path = smem ? ATTN_WIDE_SMEM : ATTN_WIDE, .wg = wg, .rows = bq, .kg = kg,
                              .shared_bytes = shared};
    return true;
}

/* attn_wsg.glsl: one subgroup, BQ rows, scores as a GEMM over chunks of
 * subgroup size x TN keys. */
static bool plan_wide_sg(const struct dev_caps *caps, int d, struct attn_plan *out) {
    if (!caps->subgroup_shuffle || !caps->subgroup_arithmetic || !caps->shader_int64 || !sg_usable(caps))
        return false;
    uint32_t sg = caps->subgroup_size, d4 = ((uint32_t)d + 3) / 4, dl = (d4 + sg - 1) / sg;
    /* BQ rows share each loaded K/V value; the BQ x DL vec4 accumulators
     * per lane set the CPU compile time, which grows steeply with them
     * (lavapipe, N = 1024, CPU seconds / cold compile seconds: D 512, BQ 8
     * 0.69 / 3, BQ 16 0.45 / 9; D 256, BQ 16 0.23 / 6, BQ 32 0.19 / 20;
     * D 160, BQ 16 0.14 / 2, BQ 32 0.11 / 7; D 40, BQ 32 0.035 / 2) */
    uint32_t bq = dl <= 4 ? 32 : 16;
    *out = (struct attn_plan){.path = ATTN_WIDE_SG, .wg = sg, .rows = bq, .kg = 4};
    return true;
}

/* attn_coop.glsl, only when forced (tests): on the H200 (SD1.5 512^2 UNet,
 * 2026-12-04) it took 32.4 ms against the fp32 tiled loop's 14.9: the
 * output's round trip through shared memory per 32 keys costs more than
 * the matrix units save. NSG subgroups of 16 queries; its shared arrays (K and V
 * fp16 rows of DP + 8, per subgroup O fp32, S fp32 and P fp16 rows of 40)
 * must fit, so wide heads get fewer subgroups. */
static bool plan_coop(const struct dev_caps *caps, int d, bool causal, struct attn_plan *out) {
    if (!caps->gemm_coop_available || !caps->subgroup_shuffle || causal || d > ATTN_TILED_MAX_D) return false;
    uint32_t dp = ((uint32_t)d + 15) / 16 * 16;
    for (uint32_t nsg = 4; nsg >= 1; nsg /= 2) {
        uint32_t shared = 2 * 32 * (dp + 8) * 2 + nsg * 16 * (dp * 4 + 32 * 4 + 40 * 2);
        /* within 32 KiB like every plan: several workgroups per GPU core */
        if (shared <= caps->max_shared_memory && shared <= 32768 && 32 * nsg <= caps->max_workgroup_invocations) {
            *out = (struct attn_plan){.path = ATTN_COOP, .wg = 32 * nsg, .rows = 16 * nsg, .rq = nsg,
                                      .shared_bytes = shared};
            return true;
        }
    }
    return false;
}

static bool plan_path(enum attn_path path, const struct dev_caps *caps, int d, bool causal, struct attn_plan *out) {
    switch (path) {
    case ATTN_COOP: return plan_coop(caps, d, causal, out);
    case ATTN_TILED: return plan_tiled(caps, d, out);
    case ATTN_SUBGROUP: return plan_subgroup(caps, d, out);
    case ATTN_WIDE: return plan_wide(caps, d, false, out);
    case ATTN_WIDE_SMEM: return plan_wide(caps, d, true, out);
    case ATTN_WIDE_SG: return plan_wide_sg(caps, d, out);
    default: return false;
    }
}

bool kern_attn_plan(const struct dev_caps *caps, int d, bool causal, struct attn_plan *out) {
    if (d < 1 || d > ATTN_MAX_D) return false;
    if (forced != ATTN_AUTO && plan_path(forced, caps, d, causal, out)) return true;
    /* CPU drivers (lavapipe, N = 2048, CPU seconds): the GEMM-like wide
     * loop beats the subgroup loop from D = 32 on (D 32: 0.10 vs 0.14, D
     * 64: 0.20 vs 0.39) and loses below (D 16: 0.074 vs 0.063); the tiled
     * loop runs at ~0.25 GFLOP/s there, 20x slower than either. */
    if (caps->type == DEV_CPU) {
        if (d >= ATTN_WSG_MIN_D && plan_wide_sg(caps, d, out)) return true;
        if (plan_subgroup(caps, d, out)) return true;
    }
    return plan_tiled(caps, d, out) || plan_wide(caps, d, false, out) || plan_wide(caps, d, true, out);
}

df_status kern_attention(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *q = op->src[0], *k = op->src[1], *v = op->src[2];
    int64_t batch = q->ne[0], nq = q->ne[1], nk = k->ne[1], hd = q->ne[2], heads = op->p.attn.heads;
    int64_t d = hd / heads;
    if (batch == 0 || nq == 0 || d == 0) return DF_OK;
    if (nk == 0) return df_error(DF_EINVAL, "attention: no keys");
    if ((double)batch * (double)(nq > nk ? nq : nk) * (double)hd >= 4294967040.0)
        return df_error(DF_EUNSUPPORTED, "attention: tensors exceed 32-bit indexing");
    struct attn_plan pl;
    if (!kern_attn_plan(enc_caps(e), (int)(d < ATTN_MAX_D + 1 ? d : ATTN_MAX_D + 1), op->p.attn.causal, &pl))
        return df_error(DF_EUNSUPPORTED, "attention: head dim %lld not supported on this device", (long long)d);
    int64_t qblocks = (nq + pl.rows - 1) / pl.rows;
    struct {
        uint64_t q, k, v, o;
        uint32_t heads, nq, nk, qblocks, total;
        float scale_log2;
    } pc = {enc_addr(e, q), enc_addr(e, k), enc_addr(e, v), enc_addr(e, op->dst), (uint32_t)heads,
            (uint32_t)nq, (uint32_t)nk, (uint32_t)qblocks, (uint32_t)(batch * heads * qblocks),
            (float)(op->p.attn.scale * 1.4426950408889634)};
    bool vec4 = d % 4 == 0 && (pc.q | pc.k | pc.v | pc.o) % 16 == 0;
    static const char *const names[] = {"attention", "attention_sg", "attention_wide", "attention_wide_smem",
                                        "attention_wide_sg", "attention_cm"};
    /* constant 2: BK, RQ, BQ or NSG (coop); 5: KG (TN for wide_sg); see attention.comp */
    uint32_t c2 = pl.path == ATTN_TILED ? pl.bk : pl.path == ATTN_SUBGROUP || pl.path == ATTN_COOP ? pl.rq : pl.rows;
    uint32_t spec[6] = {pl.wg, (uint32_t)d, c2, op->p.attn.causal, vec4, pl.kg};
    uint32_t gx, gy;
    enc_grid(e, pc.total, &gx, &gy);
    int nspec = pl.path == ATTN_TILED || pl.path == ATTN_COOP ? 5 : 6;
    return enc_dispatch(e, names[pl.path], spec, nspec, &pc, sizeof pc, gx, gy, 1);
}
