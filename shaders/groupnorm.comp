#version 450
#extension GL_GOOGLE_include_directive : require
// nn.GroupNorm (+ optional SiLU): one workgroup per (sample, group), looping
// over the whole group (contiguous: Cg channels x S spatial) in three passes:
// mean, variance of (x - mean), normalise. Values are shifted by the group's
// first element before summing, and the mean is never formed in fp32 either:
// y = ((x - x0) - d) * rstd with d = mean - x0 — so data like 50 +- 1 keeps
// full precision instead of cancelling.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint GAMMA = 0; // 0 none, 1 fp32, 2 fp16
layout(constant_id = 2) const uint BETA = 0;  // 0 none, 1 fp32, 2 fp16
layout(constant_id = 3) const bool SILU = false;
#define WG gl_WorkGroupSize.x
#include "reduce.glsl"

layout(push_constant) uniform Push {
    uvec2 x, y, gamma, beta;
    uint m;          // elements per group: Cg * S
    uint s;          // spatial size
    uint cg;         // channels per group
    uint groups;     // groups per sample
    uint total;      // N * groups workgroups
    uint goff, boff; // fp16 element offsets of gamma / beta (address rounded down to 4 bytes)
    float eps;
} pc;

float param(uint mode, uvec2 addr, uint off, uint c) {
    return mode == 1u ? Floats(addr).v[c] : load_half(Words(addr), c + off);
}

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return;
    uint t = gl_LocalInvocationID.x;
    Floats X = Floats(pc.x), Y = Floats(pc.y);
    uint base = wg * pc.m;
    float x0 = X.v[base];
    float acc = 0.0;
    for (uint i = t; i < pc.m; i += WG) acc += X.v[base + i] - x0;
    float d = wg_sum(acc) / float(pc.m);
    acc = 0.0;
    for (uint i = t; i < pc.m; i += WG) {
        float u = (X.v[base + i] - x0) - d;
        acc += u * u;
    }
    float rstd = inversesqrt(wg_sum(acc) / float(pc.m) + pc.eps);
    uint c0 = (wg % pc.groups) * pc.cg;
    for (uint i = t; i < pc.m; i += WG) {
        float u = ((X.v[base + i] - x0) - d) * rstd;
        uint c = c0 + i / pc.s;
        if (GAMMA != 0u) u *= param(GAMMA, pc.gamma, pc.goff, c);
        if (BETA != 0u) u += param(BETA, pc.beta, pc.boff, c);
        if (SILU) u *= sigmoid(u);
        Y.v[base + i] = u;
    }
}
