#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// y = f(x) elementwise; the function is a specialization constant.
// Both GELUs are written so neither tail cancels: 1 + erf(x) and
// 1 + tanh(x) lose all precision for x << 0 when formed as 1 + (~-1).
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint OP = 0; // 0 silu, 1 gelu erf, 2 gelu tanh, 3 quick gelu, 4 scale
layout(push_constant) uniform Push { uvec2 x, y; uint n; float alpha, beta; } pc;

// erfc(z) for z >= 0, relative error below 1.2e-7 (the fit erf_accurate uses)
float erfc_pos(float z) {
    float t = 1.0 / (1.0 + 0.5 * z);
    return t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
           t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
           t * (-0.82215223 + t * 0.17087277)))))))));
}

// 0.5 v (1 + erf(v / sqrt 2)) = 0.5 v erfc(-v / sqrt 2)
float gelu_erf(float v) {
    float r = erfc_pos(abs(v) * 0.70710678118654752);
    return 0.5 * v * (v >= 0.0 ? 2.0 - r : r);
}

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    float v = Floats(pc.x).v[i];
    float r;
    if (OP == 0u) r = v * sigmoid(v);
    else if (OP == 1u) r = gelu_erf(v);
    // 0.5 v (1 + tanh u) = v sigmoid(2u); exp overflow to inf gives -0, not NaN
    else if (OP == 2u) r = v * sigmoid(1.5957691216057308 * (v + 0.044715 * v * v * v));
    else if (OP == 3u) r = v * sigmoid(1.702 * v);
    else r = v * pc.alpha + pc.beta;
    Floats(pc.y).v[i] = r;
}
