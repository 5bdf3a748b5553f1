#version 450
#extension GL_GOOGLE_include_directive : require
// Fused multi-head attention, flash style: out = softmax(scale q k^T) v per
// (batch, head), never forming the score matrix.
//
// A workgroup owns BQ consecutive queries of one (batch, head), one query
// row per invocation: its q row (pre-scaled by scale * log2 e, so exp is
// exp2) and its output accumulator live in registers as ceil(D/4) vec4s.
// Keys and values stream through shared memory in tiles of BK rows; every
// invocation walks the same tile row at the same time, so shared reads are
// broadcasts (no bank conflicts on GPUs; one scalar load per SIMD group on
// CPU drivers). Online softmax per tile: scores of the tile, then the
// running max m grows, the accumulator and running sum l are rescaled by
// exp2(m_old - m_new) once, and the tile's probabilities are accumulated.
//
// Shared memory: 2 * BK * ceil(D/4) * 16 bytes (kern_attn.c picks BK).
#include "common.glsl"
layout(local_size_x_id = 0) in;                    // BQ
layout(constant_id = 1) const uint D = 64;         // head dim
layout(constant_id = 2) const uint BK = 32;        // keys per tile
layout(constant_id = 3) const bool CAUSAL = false; // mask key j > query i
layout(constant_id = 4) const bool VEC4 = false;   // D % 4 == 0 and 16-byte aligned tensors

#define BQ gl_WorkGroupSize.x
const uint D4 = (D + 3u) / 4u; // head dim in vec4s, zero padded

layout(push_constant) uniform Push {
    uvec2 q, k, v, o;
    uint heads, nq, nk;
    uint qblocks;     // ceil(nq / BQ)
    uint total;       // batch * heads * qblocks workgroups
    float scale_log2; // scale * log2(e)
} pc;

shared vec4 sK[BK * D4];
shared vec4 sV[BK * D4];

const float NEG_BIG = -3.0e38; // finite "minus infinity": exp2(NEG_BIG - m) == 0

// Element e (< D) of a row's vec4 c; zero in the padding past D.
vec4 load4(uvec2 src, uint at, uint c) {
    if (VEC4) return Float4s(src).v[(at >> 2) + c];
    vec4 val = vec4(0.0);
    for (uint e = 0u; e < 4u; e++)
        if (c * 4u + e < D) val[e] = Floats(src).v[at + c * 4u + e];
    return val;
}

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return; // whole workgroup: barriers stay uniform
    uint tid = gl_LocalInvocationID.x;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * BQ, qi = q0 + tid;
    uint qlast = min(q0 + BQ, pc.nq) - 1u;

    vec4 qv[D4], acc[D4];
    uint qat = (b * pc.nq + qi) * hd + hoff;
    for (uint d = 0u; d < D4; d++) {
        qv[d] = qi < pc.nq ? load4(pc.q, qat, d) * pc.scale_log2 : vec4(0.0);
        acc[d] = vec4(0.0);
    }
    float m = NEG_BIG, l = 0.0;

    uint ntiles = (pc.nk + BK - 1u) / BK;
    // causal: tiles wholly past the block's last query are fully masked
    if (CAUSAL) ntiles = min(ntiles, qlast / BK + 1u);

    for (uint t = 0u; t < ntiles; t++) {
        uint k0 = t * BK;
        uint kvalid = min(BK, pc.nk - k0);
        barrier(); // the previous tile's readers are done
        // rows past kvalid are zero: their p is 0, and 0 * NaN poison must not happen
        for (uint idx = tid; idx < BK * D4; idx += BQ) {
            uint rr = idx / D4, cc = idx % D4;
            uint at = (b * pc.nk + k0 + rr) * hd + hoff;
            bool ok = rr < kvalid;
            sK[idx] = ok ? load4(pc.k, at, cc) : vec4(0.0);
            sV[idx] = ok ? load4(pc.v, at, cc) : vec4(0.0);
        }
        barrier();

        float s[BK];
        float mt = NEG_BIG;
        for (uint c = 0u; c < BK; c++) {
            vec4 a = vec4(0.0);
            for (uint d = 0u; d < D4; d++) a += qv[d] * sK[c * D4 + d];
            bool masked = c >= kvalid || (CAUSAL && k0 + c > qi);
            s[c] = masked ? NEG_BIG : (a.x + a.y) + (a.z + a.w);
            mt = max(mt, s[c]);
        }
        // Key 0 (tile 0) is never masked, so m is finite from tile 0 on and
        // masked scores give exp2(NEG_BIG - m) == 0.
        float mn = max(m, mt);
        float alpha = exp2(m - mn);
        m = mn;
        l *= alpha;
        for (uint d = 0u; d < D4; d++) acc[d] *= alpha;
        for (uint c = 0u; c < BK; c++) {
            float p = exp2(s[c] - m);
            l += p;
            for (uint d = 0u; d < D4; d++) acc[d] += p * sV[c * D4 + d];
        }
    }

    if (qi >= pc.nq) return;
    float inv = 1.0 / l;
    uint oat = (b * pc.nq + qi) * hd + hoff;
    for (uint d = 0u; d < D4; d++) {
        vec4 o = acc[d] * inv;
        if (VEC4) {
            Float4s(pc.o).v[(oat >> 2) + d] = o;
        } else {
            for (uint e = 0u; e < 4u; e++)
                if (d * 4u + e < D) Floats(pc.o).v[oat + d * 4u + e] = o[e];
        }
    }
}
