#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// torch.cat([a, b], dim) as rows: each of the outer rows of y is a's row
// (a_inner elements) followed by b's row (b_inner elements).
layout(local_size_x = 256) in;
layout(push_constant) uniform Push { uvec2 a, b, y; uint n, a_inner, b_inner; } pc;

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    uint w = pc.a_inner + pc.b_inner;
    uint row = i / w, c = i - row * w;
    float v = c < pc.a_inner ? Floats(pc.a).v[row * pc.a_inner + c]
                             : Floats(pc.b).v[row * pc.b_inner + (c - pc.a_inner)];
    Floats(pc.y).v[i] = v;
}
