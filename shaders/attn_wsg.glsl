// attn_wsg.glsl: the CPU drivers' loop for head dims from 32 on (variant
// attention_wide_sg, -DATTN_WIDE_SG): one subgroup of WG lanes per
// workgroup, BQ queries.
//
// On a CPU driver (lavapipe) every lane's load from memory is a scalar
// load in a loop over the lanes (~15 cycles a lane): loads, not FMAs, set
// the time, and each loaded K/V value serves the workgroup's BQ rows once.
// attn_wide.glsl keeps both the q rows and the accumulators in registers,
// and the CPU compiler's time grows steeply with that state; here only the
// accumulators stay (BQ x DL vec4 per lane), so BQ can double. Per chunk
// of WG * TN keys:
//   scores  a small GEMM: lane owns keys k0 + t * WG + lane (t < TN) and
//           walks the head dim loading its keys' vec4s; the BQ q rows are
//           loaded once per subgroup (lane i loads rows i, i + WG, ...) and
//           passed to every lane by shuffles (cheap on a CPU driver).
//   softmax the row max over the chunk by subgroupMax (the same in every
//           lane), accumulators rescaled once per chunk, p = exp2(s - m);
//           each lane sums its own keys' p (added across lanes at the end).
//   p V     lane owns vec4 columns lane, lane + WG, ... of the head dim; for
//           each key, every lane loads its columns of the V row and gets the
//           key's BQ weights from the owning lane by shuffle.
// Loops run over the head dim and over the keys of a chunk, never unrolled
// (small code, quick compiles); rows, TN and the DL columns are unrolled.
// Tensors are read as 64-bit words: half the per-lane loads of 32-bit
// ones (the host selects this variant only with shaderInt64).
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
layout(constant_id = 2) const uint BQ = 16; // query rows per workgroup
layout(constant_id = 5) const uint TN = 4;  // keys per lane per chunk

const uint DL = (D4 + WG - 1u) / WG; // vec4 columns per lane (p V)
const uint RB = (BQ + WG - 1u) / WG; // q rows loaded per lane (scores)
const uint KC = WG * TN;             // keys per chunk

layout(buffer_reference, std430, buffer_reference_align = 16) buffer U64x2s { u64vec2 v[]; };

vec4 load4w(uvec2 src, uint at, uint c) {
    if (!VEC4) return load4(src, at, c);
    u64vec2 w = U64x2s(src).v[(at >> 2) + c];
    return vec4(uintBitsToFloat(unpackUint2x32(w.x)), uintBitsToFloat(unpackUint2x32(w.y)));
}

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return;
    uint lane = gl_SubgroupInvocationID;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * BQ;
    uint qlast = min(q0 + BQ, pc.nq) - 1u;

    vec4 acc[BQ][DL];
    float m[BQ], l[BQ];
    [[unroll]] for (uint r = 0u; r < BQ; r++) {
        [[unroll]] for (uint c = 0u; c < DL; c++) acc[r][c] = vec4(0.0);
        m[r] = NEG_BIG;
        l[r] = 0.0;
    }
    // q rows this lane loads (past nq: the last row again, never stored)
    uint qat[RB];
    [[unroll]] for (uint i = 0u; i < RB; i++) qat[i] = (b * pc.nq + min(q0 + i * WG + lane, qlast)) * hd + hoff;

    uint kend = CAUSAL ? min(pc.nk, qlast + 1u) : pc.nk;
    for (uint k0 = 0u; k0 < kend; k0 += KC) {
        float s[BQ][TN];
        uint kat[TN];
        [[unroll]] for (uint t = 0u; t < TN; t++) {
            kat[t] = (b * pc.nk + min(k0 + t * WG + lane, pc.nk - 1u)) * hd + hoff;
            [[unroll]] for (uint r = 0u; r < BQ; r++) s[r][t] = 0.0;
        }
        for (uint d = 0u; d < D4; d++) {
            vec4 kv[TN], qm[RB];
            [[unroll]] for (uint t = 0u; t < TN; t++) kv[t] = load4w(pc.k, kat[t], d);
            [[unroll]] for (uint i = 0u; i < RB; i++) qm[i] = load4w(pc.q, qat[i], d);
            [[unroll]] for (uint r = 0u; r < BQ; r++) {
                vec4 qr = subgroupShuffle(qm[r / WG], r % WG);
                [[unroll]] for (uint t = 0u; t < TN; t++) s[r][t] += dot(qr, kv[t]);
            }
        }

        // Key 0 (first chunk) is masked for no row: m is finite from then on.
        [[unroll]] for (uint r = 0u; r < BQ; r++) {
            float mx = NEG_BIG;
            [[unroll]] for (uint t = 0u; t < TN; t++) {
                uint key = k0 + t * WG + lane;
                bool masked = key >= pc.nk || (CAUSAL && key > q0 + r);
                s[r][t] = masked ? NEG_BIG : s[r][t] * pc.scale_log2;
                mx = max(mx, s[r][t]);
            }
            float mn = max(m[r], subgroupMax(mx));
            float alpha = exp2(m[r] - mn);
            m[r] = mn;
            l[r] *= alpha;
            [[unroll]] for (uint c = 0u; c < DL; c++) acc[r][c] *= alpha;
            [[unroll]] for (uint t = 0u; t < TN; t++) {
                s[r][t] = exp2(s[r][t] - mn);
                l[r] += s[r][t];
            }
        }

        uint kc = min(KC, kend - k0);
        for (uint kk = 0u; kk < kc; kk++) {
            uint t = kk / WG, src = kk % WG;
            uint at = (b * pc.nk + k0 + kk) * hd + hoff;
            vec4 vv[DL];
            [[unroll]] for (uint c = 0u; c < DL; c++) {
                uint col = c * WG + lane;
                bool ok = D4 % WG == 0u || col < D4;
                vec4 x = load4w(pc.v, at, ok ? col : D4 - 1u);
                vv[c] = ok ? x : vec4(0.0);
            }
            [[unroll]] for (uint r = 0u; r < BQ; r++) {
                float pt = s[r][0]; // s[r][t] without a dynamic index
                [[unroll]] for (uint u = 1u; u < TN; u++) pt = t == u ? s[r][u] : pt;
                vec4 p = vec4(subgroupShuffle(pt, src));
                [[unroll]] for (uint c = 0u; c < DL; c++) acc[r][c] = fma(p, vv[c], acc[r][c]);
            }
        }
    }

    [[unroll]] for (uint r = 0u; r < BQ; r++) {
        float inv = 1.0 / subgroupAdd(l[r]);
        uint qi = q0 + r;
        if (qi >= pc.nq) break;
        uint at = (b * pc.nq + qi) * hd + hoff;
        [[unroll]] for (uint c = 0u; c < DL; c++)
            if (c * WG + lane < D4) store4(at, c * WG + lane, acc[r][c] * inv);
    }
}
