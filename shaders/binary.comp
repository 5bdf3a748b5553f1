#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// y = a (op) b with broadcasting: per-dimension element strides (0 where a
// dimension is broadcast) over a 4-D output index space. FLAT is set when
// both operands already have the output's shape (residual adds), which
// skips the index arithmetic.
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint OP = 0; // 0 add, 1 sub, 2 mul, 3 div
layout(constant_id = 1) const bool FLAT = false;
// b may be an fp16 weight (a bias or position table added to activations)
layout(constant_id = 2) const bool B_F16 = false;
layout(push_constant) uniform Push {
    uvec2 a, b, y;
    uint n;
    uint ne1, ne2, ne3;     // output dims 1..3 (dim 0 is implied by n)
    uint sa0, sa1, sa2, sa3;
    uint sb0, sb1, sb2, sb3;
} pc;

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    uint ia = i, ib = i;
    if (!FLAT) {
        uint i3 = i % pc.ne3, r = i / pc.ne3;
        uint i2 = r % pc.ne2; r /= pc.ne2;
        uint i1 = r % pc.ne1, i0 = r / pc.ne1;
        ia = i0 * pc.sa0 + i1 * pc.sa1 + i2 * pc.sa2 + i3 * pc.sa3;
        ib = i0 * pc.sb0 + i1 * pc.sb1 + i2 * pc.sb2 + i3 * pc.sb3;
    }
    float va = Floats(pc.a).v[ia];
    float vb = B_F16 ? load_half(Words(pc.b), ib) : Floats(pc.b).v[ib];
    float v;
    if (OP == 0u) v = va + vb;
    else if (OP == 1u) v = va - vb;
    else if (OP == 2u) v = va * vb;
    else v = va / vb;
    Floats(pc.y).v[i] = v;
}
