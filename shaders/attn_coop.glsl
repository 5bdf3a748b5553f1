// attn_coop.glsl: attention.comp on the matrix units (variant
// "attention_cm", -DATTN_COOP; GL_NV_cooperative_matrix, fp16 operands,
// fp32 sums). Chosen only where the device's start-up self-test passed
// (compute/selftest.c), and not for causal masks.
//
// A workgroup of NSG subgroups owns 16 * NSG queries of one (batch, head);
// each subgroup 16 of them. The head dim is padded with zeros to DP (a
// multiple of 16). Per step of 32 keys (K and V staged in shared memory as
// fp16 rows, zero past nk):
//   S = q k^T        16 x 32, matrix units (q, pre-scaled, kept as DP/16
//                    fp16 fragments for the whole pass)
//   online softmax   S goes through shared memory: two lanes per query row
//                    take 16 keys each, the row max and sum meet by a
//                    shuffle; P = exp2(S - m) is written back as fp16, and
//                    the row's output is rescaled by exp2(m_old - m_new)
//   O += P v         matrix units; O (16 x DP fp32 per subgroup) lives in
//                    shared memory, so the rescale can touch it per row
// Constants: 0 workgroup size (32 * NSG), 1 D, 2 NSG.
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

layout(constant_id = 2) const uint NSG = 4;
const uint DP = (D + 15u) / 16u * 16u;
const uint DC = DP / 16u;          // 16-wide chunks of the head dim
const uint BKV = 32u;              // keys per step
const uint SKD = DP + 8u;          // padded fp16 row stride of K, V (and q staging)
const uint SP = BKV + 8u;          // padded fp16 row stride of P

#define MAT16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define MAT32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

shared float16_t sKV[2u * BKV * SKD]; // K rows then V rows; q staging first (16 * NSG <= 64 rows)
shared float sO[NSG * 16u * DP];
shared float sS[NSG * 16u * BKV];
shared float16_t sP[NSG * 16u * SP];

// element d of row `at` of a [., heads * D] tensor, zero past D
float elem(uvec2 src, uint at, uint d) { return d < D ? Floats(src).v[at + d] : 0.0; }

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return;
    uint lid = gl_LocalInvocationIndex, sg = lid / 32u, lane = lid % 32u;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * (16u * NSG);

    // q tile (pre-scaled, fp16) through shared memory into fragments
    for (uint e = lid; e < 16u * NSG * DP; e += WG) {
        uint r = e / DP, d = e % DP, qi = q0 + r;
        float v = qi < pc.nq ? elem(pc.q, (b * pc.nq + qi) * hd + hoff, d) * pc.scale_log2 : 0.0;
        sKV[r * SKD + d] = float16_t(v);
    }
    for (uint e = lid; e < NSG * 16u * DP; e += WG) sO[e] = 0.0;
    barrier();
    MAT16 qf[DC];
    [[unroll]] for (uint c = 0u; c < DC; c++) coopMatLoadNV(qf[c], sKV, (sg * 16u) * SKD + 16u * c, SKD, false);
    barrier();

    // two lanes per query row: row r, keys hf * 16 .. + 16
    uint r = lane / 2u, hf = lane % 2u;
    float m = NEG_BIG, l = 0.0;
    uint sbase = sg * 16u * BKV, pbase = sg * 16u * SP, obase = sg * 16u * DP;

    for (uint k0 = 0u; k0 < pc.nk; k0 += BKV) {
        barrier();  // the previous K/V tile is consumed
        for (uint e = lid; e < BKV * DP; e += WG) {
            uint j = e / DP, d = e % DP, kj = k0 + j;
            uint at = (b * pc.nk + kj) * hd + hoff;
            bool in_k = kj < pc.nk;
            sKV[j * SKD + d] = float16_t(in_k ? elem(pc.k, at, d) : 0.0);
            sKV[(BKV + j) * SKD + d] = float16_t(in_k ? elem(pc.v, at, d) : 0.0);
        }
        barrier();
        // S = q k^T: B is k^T (D x keys), read column-major from the K rows
        [[unroll]] for (uint jb = 0u; jb < BKV / 16u; jb++) {
            MAT32 s = MAT32(0.0);
            [[unroll]] for (uint c = 0u; c < DC; c++) {
                MAT16 kf;
                coopMatLoadNV(kf, sKV, (16u * jb) * SKD + 16u * c, SKD, true);
                s = coopMatMulAddNV(qf[c], kf, s);
            }
            coopMatStoreNV(s, sS, sbase + 16u * jb, BKV, false);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        // online softmax over this step's keys, row r, keys hf*16 ..
        float mx = NEG_BIG;
        for (uint j = hf * 16u; j < hf * 16u + 16u; j++)
            if (k0 + j < pc.nk) mx = max(mx, sS[sbase + r * BKV + j]);
        mx = max(mx, subgroupShuffleXor(mx, 1u));
        float mnew = max(m, mx);
        float alpha = exp2(m - mnew);
        float sum = 0.0;
        for (uint j = hf * 16u; j < hf * 16u + 16u; j++) {
            float p = k0 + j < pc.nk ? exp2(sS[sbase + r * BKV + j] - mnew) : 0.0;
            // the sum counts the fp16 value the product uses
            float16_t ph = float16_t(p);
            sP[pbase + r * SP + j] = ph;
            sum += float(ph);
        }
        sum += subgroupShuffleXor(sum, 1u);
        l = l * alpha + sum;
        m = mnew;
        for (uint d = hf; d < DP; d += 2u) sO[obase + r * DP + d] *= alpha;
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        // O += P v
        MAT16 pf[BKV / 16u];
        [[unroll]] for (uint jb = 0u; jb < BKV / 16u; jb++) coopMatLoadNV(pf[jb], sP, pbase + 16u * jb, SP, false);
        [[unroll]] for (uint c = 0u; c < DC; c++) {
            MAT32 o;
            coopMatLoadNV(o, sO, obase + 16u * c, DP, false);
            [[unroll]] for (uint jb = 0u; jb < BKV / 16u; jb++) {
                MAT16 vf;
                coopMatLoadNV(vf, sKV, (BKV + 16u * jb) * SKD + 16u * c, SKD, false);
                o = coopMatMulAddNV(pf[jb], vf, o);
            }
            coopMatStoreNV(o, sO, obase + 16u * c, DP, false);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();
    }
    // out = O / l, both lanes of a row hold the same l
    uint qi = q0 + sg * 16u + r;
    if (qi < pc.nq) {
        uint at = (b * pc.nq + qi) * hd + hoff;
        float inv = 1.0 / l;
        for (uint d = hf; d < D; d += 2u) Floats(pc.o).v[at + d] = sO[obase + r * DP + d] * inv;
    }
}
