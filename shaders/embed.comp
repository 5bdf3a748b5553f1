#version 450
#extension GL_GOOGLE_include_directive : require
// y[i, :] = table[ids[i], :]; ids are integers carried as floats.
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const bool TABLE_F16 = false;
layout(push_constant) uniform Push { uvec2 table, ids, y; uint rows, dim, vocab; } pc;

void main() {
    uint i = flat_group() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.rows * pc.dim) return;
    uint row = i / pc.dim, col = i % pc.dim;
    float id = Floats(pc.ids).v[row];
    float v = 0.0;
    if (id >= 0.0 && id < float(pc.vocab)) {
        uint src = uint(id) * pc.dim + col;
        v = TABLE_F16 ? load_half(Words(pc.table), src) : Floats(pc.table).v[src];
    }
    Floats(pc.y).v[i] = v;
}
