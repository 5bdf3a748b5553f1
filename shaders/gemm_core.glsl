// gemm_core.glsl: the tiled GEMM loop shared by matmul.comp and conv2d.comp.
//
// C[M, N] = A[M, K] * B[K, N] for one batch item. A workgroup computes one
// BM x BN tile of C, stepping through K in BK slices staged in shared
// memory; each invocation keeps a TM x TN block of C in registers. The rows
// and columns an invocation owns are interleaved (ty + i*(BM/TM)), so that
// neighbouring invocations touch neighbouring addresses: conflict-free
// shared reads on GPUs, coalesced stores, contiguous SIMD lanes on CPUs.
//
// The including shader defines, before including this file:
//   float a_elem(uint m, uint k)     element of A (called in bounds only)
//   float b_elem(uint k, uint n)     element of B (called in bounds only)
//   B_KFAST                          true if B is contiguous along k
//   void store_c(uint m, uint n, float acc)   epilogue, in bounds only
//   PC_M, PC_N, PC_K, PC_TILES_N, PC_TILES    push-constant sizes
// Tile sizes are specialization constants 0..5; the includer's own start
// at 6. The host guarantees: TM | BM, TN | BN, WG = (BM/TM)*(BN/TN), and WG
// divides BM*BK and BK*BN, and BK divides WG when loading k-fast, BN
// divides WG otherwise (so each invocation's load column is fixed).

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint BM = 64;
layout(constant_id = 2) const uint BN = 64;
layout(constant_id = 3) const uint BK = 16;
layout(constant_id = 4) const uint TM = 8;
layout(constant_id = 5) const uint TN = 8;

const uint WM = BM / TM;     // invocations along M
const uint WN = BN / TN;     // invocations along N
const uint SA = BM + 1;      // padded strides: fewer bank conflicts on stores
const uint SB = BN + 1;

shared float As[BK * SA];    // A tile, k-major: As[k * SA + m]
shared float Bs[BK * SB];    // B tile, k-major: Bs[k * SB + n]

void load_tiles(uint m0, uint n0, uint k0) {
    uint lid = gl_LocalInvocationIndex;
    // A: consecutive invocations read consecutive k (A is k-contiguous)
    {
        uint c = lid % BK, r = lid / BK;
        bool kin = k0 + c < PC_K;
        [[unroll]] for (uint p = 0; p < BM * BK / WG; p++) {
            uint m = r + p * (WG / BK);
            As[c * SA + m] = (kin && m0 + m < PC_M) ? a_elem(m0 + m, k0 + c) : 0.0;
        }
    }
    if (B_KFAST) {
        uint c = lid % BK, r = lid / BK;
        bool kin = k0 + c < PC_K;
        [[unroll]] for (uint p = 0; p < BK * BN / WG; p++) {
            uint n = r + p * (WG / BK);
            Bs[c * SB + n] = (kin && n0 + n < PC_N) ? b_elem(k0 + c, n0 + n) : 0.0;
        }
    } else {
        uint c = lid % BN, r = lid / BN;
        bool nin = n0 + c < PC_N;
        [[unroll]] for (uint p = 0; p < BK * BN / WG; p++) {
            uint k = r + p * (WG / BN);
            Bs[k * SB + c] = (nin && k0 + k < PC_K) ? b_elem(k0 + k, n0 + c) : 0.0;
        }
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
        for (uint k = 0; k < BK; k++) {
            float av[TM], bv[TN];
            [[unroll]] for (uint i = 0; i < TM; i++) av[i] = As[k * SA + ty + i * WM];
            [[unroll]] for (uint j = 0; j < TN; j++) bv[j] = Bs[k * SB + tx + j * WN];
            [[unroll]] for (uint i = 0; i < TM; i++)
                [[unroll]] for (uint j = 0; j < TN; j++)
                    acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
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
