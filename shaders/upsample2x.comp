#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Nearest upsampling x [N*C, H, W] -> y [N*C, OH, OW] as torch's "nearest":
// source row = OH == 2H ? i/2 : min(floor(i * (float)H/OH), H-1), same for
// columns. One thread per output element keeps the writes coalesced.
layout(local_size_x = 256) in;
layout(push_constant) uniform Push { uvec2 x, y; uint n, h, w, oh, ow; float scale_h, scale_w; } pc;

uint source(uint i, uint in_size, uint out_size, float scale) {
    if (out_size == 2u * in_size) return i >> 1;
    return min(uint(floor(float(i) * scale)), in_size - 1u);
}

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n) return;
    uint j = i % pc.ow, r = i / pc.ow;
    uint ii = r % pc.oh, p = r / pc.oh;
    uint si = source(ii, pc.h, pc.oh, pc.scale_h), sj = source(j, pc.w, pc.ow, pc.scale_w);
    Floats(pc.y).v[i] = Floats(pc.x).v[(p * pc.h + si) * pc.w + sj];
}
