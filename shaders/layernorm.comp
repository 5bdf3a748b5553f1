#version 450
#extension GL_GOOGLE_include_directive : require
// nn.LayerNorm over the last dim: one workgroup per row, two reduction
// passes (mean, then variance of x - mean) on values shifted by the row's
// first element, so a large common offset does not cancel precision.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint GAMMA = 0; // 0 none, 1 fp32, 2 fp16
layout(constant_id = 2) const uint BETA = 0;  // 0 none, 1 fp32, 2 fp16
#define WG gl_WorkGroupSize.x
#include "reduce.glsl"

layout(push_constant) uniform Push {
    uvec2 x, y, gamma, beta;
    uint d;          // row length
    uint rows;
    uint goff, boff; // fp16 element offsets of gamma / beta
    float eps;
} pc;

float param(uint mode, uvec2 addr, uint off, uint c) {
    return mode == 1u ? Floats(addr).v[c] : load_half(Words(addr), c + off);
}

void main() {
    uint row = flat_group();
    if (row >= pc.rows) return;
    uint t = gl_LocalInvocationID.x;
    Floats X = Floats(pc.x), Y = Floats(pc.y);
    uint base = row * pc.d;
    float x0 = X.v[base];
    float acc = 0.0;
    for (uint i = t; i < pc.d; i += WG) acc += X.v[base + i] - x0;
    float dm = wg_sum(acc) / float(pc.d);
    acc = 0.0;
    for (uint i = t; i < pc.d; i += WG) {
        float u = (X.v[base + i] - x0) - dm;
        acc += u * u;
    }
    float rstd = inversesqrt(wg_sum(acc) / float(pc.d) + pc.eps);
    for (uint i = t; i < pc.d; i += WG) {
        float u = ((X.v[base + i] - x0) - dm) * rstd;
        if (GAMMA != 0u) u *= param(GAMMA, pc.gamma, pc.goff, i);
        if (BETA != 0u) u += param(BETA, pc.beta, pc.boff, i);
        Y.v[base + i] = u;
    }
}
