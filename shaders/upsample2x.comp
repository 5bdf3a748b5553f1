#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Nearest 2x upsampling: x [N*C, H, W] -> y [N*C, 2H, 2W], y[p, i, j] = x[p, i/2, j/2].
// One thread per output element keeps the writes coalesced; each input is
// read four times, from cache.
layout(local_size_x = 256) in;
layout(push_constant) uniform Push { uvec2 x, y; uint n, h, w; } pc;

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    uint w2 = 2u * pc.w, h2 = 2u * pc.h;
    uint j = i % w2, r = i / w2;
    uint ii = r % h2, p = r / h2;
    Floats(pc.y).v[i] = Floats(pc.x).v[(p * pc.h + (ii >> 1)) * pc.w + (j >> 1)];
}
