// attn_wide.glsl: the GPU loop of attention.comp for wide heads (variants
// attention_wide, -DATTN_WIDE, and attention_wide_smem, -DATTN_WIDE_SMEM;
// CPU drivers take attn_wsg.glsl).
//
// One query row per invocation cannot hold a 512-wide q row and
// accumulator in registers, so here the WG invocations of a workgroup
// cooperate on BQ query rows: invocation `lane` owns the vec4 columns
// lane, lane + WG, lane + 2 WG, ... (DL of them) of the q rows and of the
// accumulators, BQ x DL vec4 each. For each group of KG keys every lane
// loads its columns of the K rows (adjacent lanes read adjacent vec4s: one
// coalesced row read), forms partial dot products for the BQ x KG scores
// and the workgroup sums them (attention_wide: subgroupAdd, the workgroup
// being one subgroup; attention_wide_smem: shared memory, any WG). Every
// lane then holds the same scores, so the online softmax (running max m,
// sum l, rescale when m grows) is the same in every lane, and each lane
// adds p * V to its own columns of the accumulators. No K/V staging: each
// K/V element is read by exactly one invocation of the workgroup, and K/V
// loads amortise over BQ rows (BQ vec4 FMAs per loaded vec4).
//
// Out-of-range rows, keys and padding columns (past D4) read a clamped
// in-range element and are zeroed by a select (no branches around loads).
// Specialization constants beyond attention.comp's: 2 BQ, 5 KG.
layout(constant_id = 2) const uint BQ = 8; // query rows per workgroup
layout(constant_id = 5) const uint KG = 4; // keys per online-softmax step

const uint DL = (D4 + WG - 1u) / WG; // vec4 columns per invocation
const uint NS = BQ * KG;             // scores per step

#ifdef ATTN_WIDE_SMEM
// partial scores of every invocation (row stride padded against bank
// conflicts), then the sums
shared float sPart[WG * (NS + 1u)];
shared float sSum[NS];
#else
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

// Column c of the invocation (vec4 index c * WG + lane) of the row at `at`.
vec4 load_col(uvec2 src, uint at, uint c, uint lane) {
    uint col = c * WG + lane;
    if (D4 % WG == 0u) return load4(src, at, col);
    bool ok = col < D4;
    vec4 x = load4(src, at, ok ? col : D4 - 1u);
    return ok ? x : vec4(0.0);
}

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return; // whole workgroup: barriers stay uniform
    uint lane = gl_LocalInvocationID.x;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * BQ;
    uint qlast = min(q0 + BQ, pc.nq) - 1u;

    vec4 qv[BQ][DL], acc[BQ][DL];
    float m[BQ], l[BQ];
    [[unroll]] for (uint r = 0u; r < BQ; r++) {
        // rows past nq repeat the last one: finite, never stored
        uint at = (b * pc.nq + min(q0 + r, qlast)) * hd + hoff;
        [[unroll]] for (uint c = 0u; c < DL; c++) {
            qv[r][c] = load_col(pc.q, at, c, lane) * pc.scale_log2;
            acc[r][c] = vec4(0.0);
        }
        m[r] = NEG_BIG;
        l[r] = 0.0;
    }

    // causal: keys past the block's last query are masked for every row
    uint kend = CAUSAL ? min(pc.nk, qlast + 1u) : pc.nk;
    for (uint k0 = 0u; k0 < kend; k0 += KG) {
        float s[BQ][KG];
        [[unroll]] for (uint j = 0u; j < KG; j++) {
            uint at = (b * pc.nk + min(k0 + j, pc.nk - 1u)) * hd + hoff;
            vec4 kv[DL];
            [[unroll]] for (uint c = 0u; c < DL; c++) kv[c] = load_col(pc.k, at, c, lane);
            [[unroll]] for (uint r = 0u; r < BQ; r++) {
                vec4 a = vec4(0.0);
                [[unroll]] for (uint c = 0u; c < DL; c++) a = fma(qv[r][c], kv[c], a);
                s[r][j] = (a.x + a.y) + (a.z + a.w);
            }
        }

#ifdef ATTN_WIDE_SMEM
        const uint STRIDE = NS + 1u;
        [[unroll]] for (uint r = 0u; r < BQ; r++)
            [[unroll]] for (uint j = 0u; j < KG; j++) sPart[lane * STRIDE + r * KG + j] = s[r][j];
        barrier();
        for (uint i = lane; i < NS; i += WG) {
            float t = 0.0;
            for (uint w = 0u; w < WG; w++) t += sPart[w * STRIDE + i];
            sSum[i] = t;
        }
        barrier();
        [[unroll]] for (uint r = 0u; r < BQ; r++)
            [[unroll]] for (uint j = 0u; j < KG; j++) s[r][j] = sSum[r * KG + j];
        // the next step's writes of sPart follow the barrier above, its
        // writes of sSum the next step's first barrier: both after all reads
#else
        [[unroll]] for (uint r = 0u; r < BQ; r++)
            [[unroll]] for (uint j = 0u; j < KG; j++) s[r][j] = subgroupAdd(s[r][j]);
#endif

        // Key 0 (first step) is masked for no row: m is finite from then on.
        [[unroll]] for (uint r = 0u; r < BQ; r++) {
            float mn = m[r];
            [[unroll]] for (uint j = 0u; j < KG; j++) {
                uint key = k0 + j;
                bool masked = key >= pc.nk || (CAUSAL && key > q0 + r);
                s[r][j] = masked ? NEG_BIG : s[r][j];
                mn = max(mn, s[r][j]);
            }
            if (mn > m[r]) { // the same in every lane: a uniform branch
                float alpha = exp2(m[r] - mn);
                l[r] *= alpha;
                [[unroll]] for (uint c = 0u; c < DL; c++) acc[r][c] *= alpha;
                m[r] = mn;
            }
            [[unroll]] for (uint j = 0u; j < KG; j++) {
                s[r][j] = exp2(s[r][j] - m[r]);
                l[r] += s[r][j];
            }
        }

        [[unroll]] for (uint j = 0u; j < KG; j++) {
            uint at = (b * pc.nk + min(k0 + j, pc.nk - 1u)) * hd + hoff;
            [[unroll]] for (uint c = 0u; c < DL; c++) {
                vec4 vv = load_col(pc.v, at, c, lane);
                [[unroll]] for (uint r = 0u; r < BQ; r++) acc[r][c] = fma(vec4(s[r][j]), vv, acc[r][c]);
            }
        }
    }

    [[unroll]] for (uint r = 0u; r < BQ; r++) {
        uint qi = q0 + r;
        if (qi >= pc.nq) break;
        float inv = 1.0 / l[r];
        uint at = (b * pc.nq + qi) * hd + hoff;
        [[unroll]] for (uint c = 0u; c < DL; c++)
            if (c * WG + lane < D4) store4(at, c * WG + lane, acc[r][c] * inv);
    }
}
