#version 450
#extension GL_GOOGLE_include_directive : require
// Fused multi-head attention, flash style: out = softmax(scale q k^T) v per
// (batch, head), never forming the score matrix: keys are visited once in
// chunks while each query row keeps a running max m, a running sum l of
// exp2(s - m) and an accumulator of the weighted values, rescaled by
// exp2(m_old - m_new) when the max grows (online softmax). Scores are in
// the log2 domain (q is pre-scaled by scale * log2 e), so exp is exp2.
//
// Four loops share this prologue (kern_attn.c picks):
//   attn_tiled.glsl  GPUs (module "attention"): K/V tiles staged in shared
//                    memory, one query row per invocation
//   attn_sg.glsl     CPU drivers, D < 32 (variant "attention_sg", -DATTN_SG):
//                    no shared memory, K/V rows passed between the lanes of
//                    one subgroup with shuffles
//   attn_wide.glsl   GPUs, wide heads (variants "attention_wide", -DATTN_WIDE,
//                    and "attention_wide_smem", -DATTN_WIDE_SMEM): the
//                    invocations of a workgroup share query rows, each
//                    owning a slice of the head dim; partial scores summed
//                    by subgroupAdd or in shared memory
//   attn_wsg.glsl    CPU drivers, D >= 32 (variant "attention_wide_sg",
//                    -DATTN_WIDE_SG): one subgroup, scores of a key chunk
//                    as a small GEMM with q passed by shuffles
//   attn_coop.glsl   GPUs with matrix units (variant "attention_cm",
//                    -DATTN_COOP): scores and P v on cooperative matrices
// Specialization constants: 0 workgroup size, 1 head dim D, 2 BK keys per
// tile / RQ rows per lane / BQ rows per workgroup, 3 causal, 4 vec4 access,
// 5 KG keys per softmax step (attn_sg, attn_wide) / TN keys per lane and
// chunk (attn_wsg). In the first two loops the q row and accumulator of a
// query are ceil(D/4) vec4s of registers per invocation, so they serve
// small heads (D <= 160, D <= 64); the wide loops split them over lanes.
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;         // head dim
layout(constant_id = 3) const bool CAUSAL = false; // mask key j > query i
layout(constant_id = 4) const bool VEC4 = false;   // D % 4 == 0 and 16-byte aligned tensors

#define WG gl_WorkGroupSize.x
const uint D4 = (D + 3u) / 4u; // head dim in vec4s, zero padded

layout(push_constant) uniform Push {
    uvec2 q, k, v, o;
    uint heads, nq, nk;
    uint qblocks;     // ceil(nq / queries per workgroup)
    uint total;       // batch * heads * qblocks workgroups
    float scale_log2; // scale * log2(e)
} pc;

const float NEG_BIG = -3.0e38; // finite "minus infinity": exp2(NEG_BIG - m) == 0

// vec4 c of the row starting at element `at`; zero in the padding past D.
vec4 load4(uvec2 src, uint at, uint c) {
    if (VEC4) return Float4s(src).v[(at >> 2) + c];
    vec4 val = vec4(0.0);
    for (uint e = 0u; e < 4u; e++)
        if (c * 4u + e < D) val[e] = Floats(src).v[at + c * 4u + e];
    return val;
}

void store4(uint at, uint c, vec4 val) {
    if (VEC4) {
        Float4s(pc.o).v[(at >> 2) + c] = val;
    } else {
        for (uint e = 0u; e < 4u; e++)
            if (c * 4u + e < D) Floats(pc.o).v[at + c * 4u + e] = val[e];
    }
}

#if defined(ATTN_COOP)
#include "attn_coop.glsl"
#elif defined(ATTN_SG)
#include "attn_sg.glsl"
#elif defined(ATTN_WIDE) || defined(ATTN_WIDE_SMEM)
#include "attn_wide.glsl"
#elif defined(ATTN_WIDE_SG)
#include "attn_wsg.glsl"
#else
#include "attn_tiled.glsl"
#endif
