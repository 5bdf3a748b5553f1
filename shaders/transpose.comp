#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// [B, M, N] -> [B, N, M] through a 32x32 shared-memory tile (+1 column of
// padding so the column-wise reads hit distinct banks): both the global
// reads and the global writes are row-contiguous. 32x8 threads, 4 rows each.
// The tiles are numbered flat (batch, tile row, tile column) over a grid
// split by enc_grid.
layout(local_size_x = 32, local_size_y = 8) in;
layout(push_constant) uniform Push { uvec2 x, y; uint m, n, tiles_m, tiles_n, tiles; } pc;

shared float tile[32][33];

void main() {
    uint t = flat_group();
    if (t >= pc.tiles) return; // uniform per workgroup, so no barrier is skipped by half of it
    uint tn = t % pc.tiles_n, r = t / pc.tiles_n;
    uint tm = r % pc.tiles_m, b = r / pc.tiles_m;
    uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;
    uint plane = b * pc.m * pc.n;
    Floats x = Floats(pc.x), y = Floats(pc.y);

    uint col = tn * 32u + lx;
    for (uint k = 0u; k < 32u; k += 8u) {
        uint row = tm * 32u + ly + k;
        if (row < pc.m && col < pc.n) tile[ly + k][lx] = x.v[plane + row * pc.n + col];
    }
    barrier();
    // y[b, n', m'] with n' from the tile's columns, m' from its rows
    uint ocol = tm * 32u + lx;
    for (uint k = 0u; k < 32u; k += 8u) {
        uint orow = tn * 32u + ly + k;
        if (orow < pc.n && ocol < pc.m) y.v[plane + orow * pc.m + ocol] = tile[lx][ly + k];
    }
}
