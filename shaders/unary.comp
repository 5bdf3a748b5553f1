#version 450
#extension GL_GOOGLE_include_directive : require
// y = f(x) elementwise; the function is a specialization constant.
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint OP = 0; // 0 silu, 1 gelu erf, 2 gelu tanh, 3 quick gelu, 4 scale
layout(push_constant) uniform Push { uvec2 x, y; uint n; float alpha, beta; } pc;

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    float v = Floats(pc.x).v[i];
    float r;
    if (OP == 0u) r = v * sigmoid(v);
    else if (OP == 1u) r = 0.5 * v * (1.0 + erf_accurate(v * 0.70710678118654752));
    else if (OP == 2u) r = 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    else if (OP == 3u) r = v * sigmoid(1.702 * v);
    else r = v * pc.alpha + pc.beta;
    Floats(pc.y).v[i] = r;
}
