#version 450
#extension GL_GOOGLE_include_directive : require
// softmax(scale * x) over the last dim: one workgroup per row. Each
// invocation keeps a running (max, sum of exp) over its elements, rescaling
// the sum when the max grows; the workgroup then merges them, so the row is
// read twice (statistics, output) and exp never overflows.
#include "common.glsl"
layout(local_size_x_id = 0) in;
#define WG gl_WorkGroupSize.x
#include "reduce.glsl"

layout(push_constant) uniform Push { uvec2 x, y; uint n, rows; float scale; } pc;

const float NEG_BIG = -3.0e38; // finite "minus infinity": exp(NEG_BIG - m) == 0

void main() {
    uint row = flat_group();
    if (row >= pc.rows) return;
    uint t = gl_LocalInvocationID.x;
    Floats X = Floats(pc.x), Y = Floats(pc.y);
    uint base = row * pc.n;
    float m = NEG_BIG, s = 0.0;
    for (uint i = t; i < pc.n; i += WG) {
        float v = X.v[base + i] * pc.scale;
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    float mx = wg_max(m);
    float inv = 1.0 / wg_sum(s * exp(m - mx));
    for (uint i = t; i < pc.n; i += WG) Y.v[base + i] = exp(X.v[base + i] * pc.scale - mx) * inv;
}
