// gemm_coop.glsl: the GEMM on the matrix units (GL_NV_cooperative_matrix),
// with the interface of gemm_core.glsl (a_elem/b_elem/a_vec4/b_vec4 through
// gemm_load.glsl, store_c, PC_*). Chosen only for fp16 weights on a device
// whose start-up self-test passed (compute/selftest.c): operands are rounded
// to fp16 as they are staged, products are summed in fp32.
//
// A workgroup of 8 subgroups of 32 lanes computes a 128 x 128 tile of C,
// stepping through K in slices of 32. Each subgroup owns a 64 x 32 block:
// 4 x 2 accumulators of 16 x 16 fp32. COOP_SMALL (variants *_cms): 64 x 64
// tiles, 4 subgroups of 32 x 32 blocks, for grids too small to fill the GPU
// with big tiles (the UNet's low-resolution layers). PREFETCH: the next K
// slice is loaded into registers while the current one multiplies (on
// the H200 it sped the convolution's gathers up and slowed the matmul). Shared tiles are k-contiguous fp16
// rows (As[m][k], Bs[n][k]; B is loaded column-major), padded to 40 halfs
// (80 bytes: rows stay 16-byte aligned for the matrix loads and neighbouring
// rows start in other banks). The epilogue goes through a 16 x 16 fp32
// staging block per subgroup so store_c sees plain (m, n, value) triples:
// bias, alpha, bounds and the caller's output layout stay the caller's.
// Tile constants 0..5 of gemm_core.glsl are accepted and ignored. The
// includer defines B_KFAST (B is k-contiguous in memory) as well.
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require

#ifdef COOP_SMALL
#define WG_SIZE 128
const uint BM = 64u, BN = 64u;
const uint SM = 2u, SN = 2u;              // 16 x 16 blocks per subgroup along M, N
#else
#define WG_SIZE 256
const uint BM = 128u, BN = 128u;
const uint SM = 4u, SN = 2u;
#endif
#ifdef COOP_BK64
const uint BK = 64u;                      // variants *64: K slices of 64 (half the barriers)
#else
const uint BK = 32u;
#endif
const uint SGN = BN / (16u * SN);         // subgroups along N
const uint NSG = (BM / (16u * SM)) * SGN; // subgroups of 32
const uint WG = 32u * NSG;
const uint K4 = BK / 4u;
const uint SK = BK + 8u;                  // padded row stride, in halfs

layout(local_size_x = WG_SIZE) in;

#include "gemm_load.glsl"

shared float16_t As[BM * SK];
shared float16_t Bs[BN * SK];
shared float Cs[NSG * 256u];

#define MAT16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define MAT32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

// A K slice goes through registers (PA + PB vec4 per invocation), fetched
// one step ahead with PREFETCH.
const uint PA = BM * K4 / WG, PB = BN * K4 / WG;

// Which tile row (m or n) and vec4 along k the p-th load of an invocation
// covers. B k-contiguous (nn.Linear weights): lanes along k; otherwise (the
// convolution's gathered patches, n-contiguous) lanes along n, so a
// subgroup reads 32 neighbouring pixels of one input row.
uvec2 a_slot(uint p) { uint e = gl_LocalInvocationIndex + p * WG; return uvec2(e / K4, e % K4); }
uvec2 b_slot(uint p) {
    uint e = gl_LocalInvocationIndex + p * WG;
    return B_KFAST ? uvec2(e / K4, e % K4) : uvec2(e % BN, e / BN);
}

void fetch(uint m0, uint n0, uint k0, out vec4 ra[PA], out vec4 rb[PB]) {
    [[unroll]] for (uint p = 0u; p < PA; p++) {
        uvec2 s = a_slot(p);
        ra[p] = load_a4(m0 + s.x, k0 + 4u * s.y);
    }
    [[unroll]] for (uint p = 0u; p < PB; p++) {
        uvec2 s = b_slot(p);
        rb[p] = load_b4(k0 + 4u * s.y, n0 + s.x);
    }
}

void put(vec4 ra[PA], vec4 rb[PB]) {
    [[unroll]] for (uint p = 0u; p < PA; p++) {
        uvec2 s = a_slot(p);
        uint o = s.x * SK + 4u * s.y;
        As[o] = float16_t(ra[p].x); As[o + 1u] = float16_t(ra[p].y);
        As[o + 2u] = float16_t(ra[p].z); As[o + 3u] = float16_t(ra[p].w);
    }
    [[unroll]] for (uint p = 0u; p < PB; p++) {
        uvec2 s = b_slot(p);
        uint o = s.x * SK + 4u * s.y;
        Bs[o] = float16_t(rb[p].x); Bs[o + 1u] = float16_t(rb[p].y);
        Bs[o + 2u] = float16_t(rb[p].z); Bs[o + 3u] = float16_t(rb[p].w);
    }
}

void gemm_tile(uint tile) {
    uint m0 = (tile / PC_TILES_N) * BM, n0 = (tile % PC_TILES_N) * BN;
    uint lid = gl_LocalInvocationIndex;
    uint sg = lid / 32u, lane = lid % 32u;
    uint bm = (sg / SGN) * (16u * SM), bn = (sg % SGN) * (16u * SN);
    MAT32 acc[SM][SN];
    [[unroll]] for (uint i = 0u; i < SM; i++)
        [[unroll]] for (uint j = 0u; j < SN; j++) acc[i][j] = MAT32(0.0);
    vec4 ra[PA], rb[PB];
#ifdef PREFETCH
    fetch(m0, n0, 0u, ra, rb);
#endif
    for (uint k0 = 0u; k0 < PC_K; k0 += BK) {
        barrier();  // the previous slice is consumed
#ifdef PREFETCH
        put(ra, rb);
        barrier();
        if (k0 + BK < PC_K) fetch(m0, n0, k0 + BK, ra, rb);
#else
        fetch(m0, n0, k0, ra, rb);
        put(ra, rb);
        barrier();
#endif
        [[unroll]] for (uint kk = 0u; kk < BK; kk += 16u) {
            MAT16 a[SM], b[SN];
            [[unroll]] for (uint i = 0u; i < SM; i++)
                coopMatLoadNV(a[i], As, (bm + 16u * i) * SK + kk, SK, false);
            [[unroll]] for (uint j = 0u; j < SN; j++)
                coopMatLoadNV(b[j], Bs, (bn + 16u * j) * SK + kk, SK, true);
            [[unroll]] for (uint i = 0u; i < SM; i++)
                [[unroll]] for (uint j = 0u; j < SN; j++) acc[i][j] = coopMatMulAddNV(a[i], b[j], acc[i][j]);
        }
    }
    [[unroll]] for (uint i = 0u; i < SM; i++)
        [[unroll]] for (uint j = 0u; j < SN; j++) {
            coopMatStoreNV(acc[i][j], Cs, sg * 256u, 16u, false);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            for (uint e = lane; e < 256u; e += 32u) {
                uint m = m0 + bm + 16u * i + e / 16u, n = n0 + bn + 16u * j + e % 16u;
                if (m < PC_M && n < PC_N) store_c(m, n, Cs[sg * 256u + e]);
            }
            subgroupBarrier();  // read before the next block overwrites
        }
}
