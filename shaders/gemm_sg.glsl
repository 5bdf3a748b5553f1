// gemm_sg.glsl: GEMM without shared memory for CPU Vulkan drivers
// (lavapipe), behind matmul.comp and conv2d.comp with gemm_core.glsl's
// interface (see there).
//
// Why a second path: a CPU driver runs a workgroup as SIMD lanes and
// performs every load from memory (global or shared alike) lane by lane,
// so what costs is the number of per-lane values loaded, not bandwidth;
// arithmetic and subgroup shuffles with a constant lane are cheap. Here the
// workgroup is one subgroup of WG lanes computing a BM x BN tile with
// BM = TM rows shared by all lanes and BN = WG*TN columns, TN per lane
// (columns lane + j*WG). Per 4 k values each lane loads its TN columns of B
// once and one row of A per WG rows; the A values every lane needs are
// shuffled from the lane that loaded them. That is ~5x fewer loaded values
// per FMA than the shared-memory tiling on lavapipe.
//
// The host guarantees WG == the subgroup size (one subgroup per
// workgroup), BM == TM, BN == WG * TN, and TM*BN*4 bytes of shared memory
// when TN % 4 == 0 (the epilogue's staging).

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 8;
layout(constant_id = 1) const uint BM = 64;
layout(constant_id = 2) const uint BN = 64;
layout(constant_id = 3) const uint BK = 4;   // unused: k advances by 4
layout(constant_id = 4) const uint TM = 64;
layout(constant_id = 5) const uint TN = 8;

#include "gemm_load.glsl"

const uint CV = TM * TN / 4u * WG;  // results staged as vec4, see below
shared vec4 Cs[TN % 4u == 0u ? CV : 1u];

void gemm_tile(uint tile) {
    uint m0 = (tile / PC_TILES_N) * BM, n0 = (tile % PC_TILES_N) * BN;
    uint lane = gl_SubgroupInvocationID;
    float acc[TM * TN];
    [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;
    for (uint k = 0; k < PC_K; k += 4u) {
        vec4 av[TM], bv[TN];
        [[unroll]] for (uint j = 0; j < TN; j++) bv[j] = load_b4(k, n0 + lane + j * WG);
        [[unroll]] for (uint r = 0; r < (TM + WG - 1u) / WG; r++) {
            vec4 mine = load_a4(m0 + r * WG + lane, k);
            [[unroll]] for (uint i = r * WG; i < min(TM, r * WG + WG); i++)
                av[i] = subgroupShuffle(mine, i - r * WG);
        }
        [[unroll]] for (uint i = 0; i < TM; i++)
            [[unroll]] for (uint j = 0; j < TN; j++) {
                float s = acc[i * TN + j];
                s = fma(av[i].x, bv[j].x, s);
                s = fma(av[i].y, bv[j].y, s);
                s = fma(av[i].z, bv[j].z, s);
                acc[i * TN + j] = fma(av[i].w, bv[j].w, s);
            }
    }
    if (TN % 4u == 0u) {
        // The epilogue through shared memory: TM*TN/4 vec4 stores and one
        // store site in a loop, instead of TM*TN unrolled global stores
        // (most of the JIT time on lavapipe).
        [[unroll]] for (uint i = 0; i < TM; i++)
            [[unroll]] for (uint q = 0; q < TN / 4u; q++)
                Cs[(i * (TN / 4u) + q) * WG + lane] = vec4(acc[i * TN + 4u * q], acc[i * TN + 4u * q + 1u],
                                                          acc[i * TN + 4u * q + 2u], acc[i * TN + 4u * q + 3u]);
        barrier();
        for (uint e = lane; e < TM * BN; e += WG) {
            uint i = e / BN, c = e % BN, l = c % WG, j = c / WG;
            uint m = m0 + i, n = n0 + c;
            float v = Cs[(i * (TN / 4u) + j / 4u) * WG + l][j % 4u];
            if (m < PC_M && n < PC_N) store_c(m, n, v);
        }
        return;
    }
    [[unroll]] for (uint i = 0; i < TM; i++) {
        uint m = m0 + i;
        if (m >= PC_M) break;
        [[unroll]] for (uint j = 0; j < TN; j++) {
            uint n = n0 + lane + j * WG;
            if (n < PC_N) store_c(m, n, acc[i * TN + j]);
        }
    }
}
