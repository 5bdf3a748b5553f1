// gemm_core.glsl: the shared-memory tiled GEMM (the GPU path) behind
// matmul.comp and conv2d.comp; gemm_sg.glsl is the CPU-driver path with the
// same interface.
//
// C[M, N] = A[M, K] * B[K, N] for one batch item. A workgroup computes one
// BM x BN tile of C, stepping through K in BK slices staged in shared
// memory; each invocation keeps a TM x TN block of C in registers.
// Both shared tiles are k-contiguous rows of vec4 (As[m][k/4], Bs[n][k/4],
// padded by one vec4 per row so lanes reading neighbouring rows hit other
// banks): every shared access is a vec4, and so is every global load when
// the source is k-contiguous and aligned (A_VEC / B_VEC). Rows and columns
// an invocation owns are interleaved (ty + i*(BM/TM)): neighbouring
// invocations read neighbouring rows and store coalesced.
//
// The including shader defines, before including this file:
//   float a_elem(uint m, uint k), float b_elem(uint k, uint n)
//       one element, indices in range
//   vec4 a_vec4(uint m, uint k), vec4 b_vec4(uint k, uint n)
//       A[m][k..k+3] / B[k..k+3][n], used only when A_VEC / B_VEC are true;
//       k is a multiple of 4 and k+3 < K
//   A_VEC, B_VEC        bool constants (K % 4 == 0 and the data aligned)
//   void store_c(uint m, uint n, float acc)   epilogue, in bounds only
//   PC_M, PC_N, PC_K, PC_TILES_N               push-constant sizes
// Tile sizes are specialization constants 0..5, the includer's own start
// at 6. The host guarantees (kern_gemm_tiles_valid): BK % 4 == 0, TM | BM,
// TN | BN, WG = (BM/TM)*(BN/TN), and WG divides BM*BK/4 and BN*BK/4.

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint BM = 64;
layout(constant_id = 2) const uint BN = 64;
layout(constant_id = 3) const uint BK = 16;
layout(constant_id = 4) const uint TM = 8;
layout(constant_id = 5) const uint TN = 8;

const uint WM = BM / TM;     // invocations along M
const uint WN = BN / TN;     // invocations along N
const uint K4 = BK / 4;      // vec4 per tile row
const uint SK = K4 + 1;      // padded row stride, in vec4

#include "gemm_load.glsl"

shared vec4 As[BM * SK];
shared vec4 Bs[BN * SK];

void load_tiles(uint m0, uint n0, uint k0) {
    uint lid = gl_LocalInvocationIndex;
    [[unroll]] for (uint p = 0; p < BM * K4 / WG; p++) {
        uint e = lid + p * WG, r = e / K4, q = e % K4;
        As[r * SK + q] = load_a4(m0 + r, k0 + 4u * q);
    }
    [[unroll]] for (uint p = 0; p < BN * K4 / WG; p++) {
        uint e = lid + p * WG, r = e / K4, q = e % K4;
        Bs[r * SK + q] = load_b4(k0 + 4u * q, n0 + r);
    }
}

// Computes the tile at flat index `tile` (row-major over tiles) and hands
// every in-bounds result to store_c.
void gemm_tile(uint tile) {
    uint m0 = (tile / PC_TILES_N) * BM, n0 = (tile % PC_TILES_N) * BN;
    uint lid = gl_LocalInvocationIndex;
    uint tx = lid % WN, ty = lid / WN;
    float acc[TM * TN];
    [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;
    for (uint k0 = 0; k0 < PC_K; k0 += BK) {
        barrier();  // the previous slice is consumed
        load_tiles(m0, n0, k0);
        barrier();
        for (uint q = 0; q < K4; q++) {
            vec4 av[TM], bv[TN];
            [[unroll]] for (uint i = 0; i < TM; i++) av[i] = As[(ty + i * WM) * SK + q];
            [[unroll]] for (uint j = 0; j < TN; j++) bv[j] = Bs[(tx + j * WN) * SK + q];
            [[unroll]] for (uint i = 0; i < TM; i++)
                [[unroll]] for (uint j = 0; j < TN; j++) {
                    float s = acc[i * TN + j];
                    s = fma(av[i].x, bv[j].x, s);
                    s = fma(av[i].y, bv[j].y, s);
                    s = fma(av[i].z, bv[j].z, s);
                    acc[i * TN + j] = fma(av[i].w, bv[j].w, s);
                }
        }
    }
    [[unroll]] for (uint i = 0; i < TM; i++) {
        uint m = m0 + ty + i * WM;
        if (m >= PC_M) break;
        [[unroll]] for (uint j = 0; j < TN; j++) {
            uint n = n0 + tx + j * WN;
            if (n < PC_N) store_c(m, n, acc[i * TN + j]);
        }
    }
}
