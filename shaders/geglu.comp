#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// GEGLU: x [rows, 2D] -> y [rows, D] = x[:, :D] * gelu_erf(x[:, D:]) (diffusers
// chunks the projection into value, then gate). One thread per output.
layout(local_size_x = 256) in;
layout(push_constant) uniform Push { uvec2 x, y; uint n, d; } pc;

// erfc(z) for z >= 0, relative error below 1.2e-7 (the fit erf_accurate uses)
float erfc_pos(float z) {
    float t = 1.0 / (1.0 + 0.5 * z);
    return t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
           t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
           t * (-0.82215223 + t * 0.17087277)))))))));
}

// 0.5 v (1 + erf(v / sqrt 2)) without cancellation in the negative tail
float gelu_erf(float v) {
    float r = erfc_pos(abs(v) * 0.70710678118654752);
    return 0.5 * v * (v >= 0.0 ? 2.0 - r : r);
}

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    uint row = i / pc.d, c = i - row * pc.d;
    uint base = row * 2u * pc.d + c;
    Floats x = Floats(pc.x);
    Floats(pc.y).v[i] = x.v[base] * gelu_erf(x.v[base + pc.d]);
}
