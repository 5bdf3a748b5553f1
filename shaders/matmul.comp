#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#extension GL_EXT_control_flow_attributes : require
#ifdef STORAGE16
#extension GL_EXT_shader_16bit_storage : require
#endif
#ifdef SUBGROUP
#extension GL_KHR_shader_subgroup_shuffle : require
#endif
// y[b] = alpha * a[b] @ op(w[b]) + bias: a [batch, M, K] fp32; w fp32 or
// fp16, [N, K] if TRANS_B (nn.Linear) else [K, N], batch stride 0 when
// shared; bias [N] or absent. The GEMM loop is gemm_core.glsl (shared-memory
// tiles, GPUs) or, with SUBGROUP (variant matmul_sg), gemm_sg.glsl (CPU
// drivers). STORAGE16 (variant matmul_s16): fp16 tensors read through
// 16-bit storage instead of packed words.

layout(constant_id = 6) const bool TRANS_B = true;
layout(constant_id = 7) const bool W_F16 = false;
layout(constant_id = 8) const uint BIAS = 0;   // 0 none, 1 fp32, 2 fp16
// vec4 global loads: K % 4 == 0 and the tensor aligned (16 bytes fp32, 8 fp16)
layout(constant_id = 9) const bool A_VEC = false;
layout(constant_id = 10) const bool B_VEC = false;  // only with TRANS_B

layout(buffer_reference, std430, buffer_reference_align = 8) buffer Uvec2s { uvec2 v[]; };

#ifdef STORAGE16
layout(buffer_reference, std430, buffer_reference_align = 2) buffer Halfs { float16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer Half4s { f16vec4 v[]; };
#endif

layout(push_constant) uniform Push {
    uvec2 a, w, bias, y;
    uint m, n, k;
    uint tiles_n, tiles;  // tiles along N, tiles per batch item
    uint sa, sw;          // batch strides of a and w, in elements
    uint woff, boff;      // element offsets into w and bias (fp16 at 2 mod 4)
    uint z0;              // first batch item of this dispatch
    float alpha;
} pc;

#define PC_M pc.m
#define PC_N pc.n
#define PC_K pc.k
#define PC_TILES_N pc.tiles_n
#define PC_TILES pc.tiles
#define B_KFAST TRANS_B

uint batch() { return gl_WorkGroupID.z + pc.z0; }

float a_elem(uint m, uint k) { return Floats(pc.a).v[batch() * pc.sa + m * pc.k + k]; }
vec4 a_vec4(uint m, uint k) { return Float4s(pc.a).v[(batch() * pc.sa + m * pc.k + k) >> 2]; }

float w_at(uint i) {
    i += batch() * pc.sw + pc.woff;
    if (!W_F16) return Floats(pc.w).v[i];
#ifdef STORAGE16
    return float(Halfs(pc.w).v[i]);
#else
    return load_half(Words(pc.w), i);
#endif
}

float b_elem(uint k, uint n) { return TRANS_B ? w_at(n * pc.k + k) : w_at(k * pc.n + n); }

// w[n][k..k+3] (TRANS_B only; woff is 0 when B_VEC)
vec4 b_vec4(uint k, uint n) {
    uint i = (batch() * pc.sw + n * pc.k + k) >> 2;
    if (!W_F16) return Float4s(pc.w).v[i];
#ifdef STORAGE16
    return vec4(Half4s(pc.w).v[i]);
#else
    uvec2 h = Uvec2s(pc.w).v[i];
    return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
#endif
}

void store_c(uint m, uint n, float acc) {
    float v = pc.alpha * acc;
    if (BIAS == 1u) v += Floats(pc.bias).v[n];
#ifdef STORAGE16
    else if (BIAS == 2u) v += float(Halfs(pc.bias).v[n + pc.boff]);
#else
    else if (BIAS == 2u) v += load_half(Words(pc.bias), n + pc.boff);
#endif
    Floats(pc.y).v[(batch() * pc.m + m) * pc.n + n] = v;
}

#if defined(SUBGROUP)
#include "gemm_sg.glsl"
#elif defined(COOP)
#include "gemm_coop.glsl"
#else
#include "gemm_core.glsl"
#endif

void main() {
    uint tile = flat_group();
    if (tile >= pc.tiles) return;
    gemm_tile(tile);
}
