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
// nn.Conv2d as an implicit GEMM, one image per gl_WorkGroupID.z:
//   y[o, p] = sum_k w[o, k] * patch[k, p] + bias[o]
// with M = O, N = Ho*Wo, K = C*KH*KW. The patch matrix is never stored:
// b_elem gathers it from x on the fly (zero outside the padded border)
// as the GEMM loads B. w fp32 or fp16, bias [O] or absent. GEMM loop and
// variants as in matmul.comp: conv2d_sg (SUBGROUP, CPU drivers), conv2d_s16
// (fp16 through 16-bit storage).

layout(constant_id = 6) const uint KH = 3;
layout(constant_id = 7) const uint KW = 3;
layout(constant_id = 8) const uint STRIDE = 1;
layout(constant_id = 9) const bool W_F16 = false;
layout(constant_id = 10) const uint BIAS = 0;  // 0 none, 1 fp32, 2 fp16
// vec4 weight loads: K % 4 == 0 and w aligned (16 bytes fp32, 8 fp16)
layout(constant_id = 11) const bool A_VEC = false;
const bool B_VEC = false;  // patches are gathered element by element

layout(buffer_reference, std430, buffer_reference_align = 8) buffer Uvec2s { uvec2 v[]; };

#ifdef STORAGE16
layout(buffer_reference, std430, buffer_reference_align = 2) buffer Halfs { float16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer Half4s { f16vec4 v[]; };
#endif

layout(push_constant) uniform Push {
    uvec2 x, w, bias, y;
    uint o, p, k;          // GEMM M = O, N = Ho*Wo, K = C*KH*KW
    uint tiles_n, tiles;
    uint h, wi, wo;        // input height and width, output width
    uint pad_top, pad_left;
    uint woff, boff;       // element offsets into w and bias (fp16 at 2 mod 4)
    uint z0;               // first image of this dispatch
} pc;

#define PC_M pc.o
#define PC_N pc.p
#define PC_K pc.k
#define PC_TILES_N pc.tiles_n
#define PC_TILES pc.tiles
#define B_KFAST false

uint image() { return gl_WorkGroupID.z + pc.z0; }

float half_at(uvec2 t, uint i) {
#ifdef STORAGE16
    return float(Halfs(t).v[i]);
#else
    return load_half(Words(t), i);
#endif
}

float a_elem(uint m, uint k) {
    uint i = m * pc.k + k + pc.woff;
    return W_F16 ? half_at(pc.w, i) : Floats(pc.w).v[i];
}

// w[m][k..k+3] (A_VEC only; woff is 0 then)
vec4 a_vec4(uint m, uint k) {
    uint i = (m * pc.k + k) >> 2;
    if (!W_F16) return Float4s(pc.w).v[i];
#ifdef STORAGE16
    return vec4(Half4s(pc.w).v[i]);
#else
    uvec2 h = Uvec2s(pc.w).v[i];
    return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
#endif
}

float b_elem(uint k, uint n) {
    uint c = k / (KH * KW), r = k % (KH * KW);
    uint ky = r / KW, kx = r % KW;
    uint oy = n / pc.wo, ox = n % pc.wo;
    // unsigned wrap-around makes "above/left of the border" fail the < test
    uint iy = oy * STRIDE + ky - pc.pad_top, ix = ox * STRIDE + kx - pc.pad_left;
    bool in_img = iy < pc.h && ix < pc.wi;
    uint C = pc.k / (KH * KW);
    // load from a clamped index and select: no branch per element
    float v = Floats(pc.x).v[((image() * C + c) * pc.h + (in_img ? iy : 0u)) * pc.wi + (in_img ? ix : 0u)];
    return in_img ? v : 0.0;
}

vec4 b_vec4(uint k, uint n) { return vec4(0.0); }  // unused: B_VEC is false

void store_c(uint m, uint n, float acc) {
    float v = acc;
    if (BIAS == 1u) v += Floats(pc.bias).v[m];
    else if (BIAS == 2u) v += half_at(pc.bias, m + pc.boff);
    Floats(pc.y).v[(image() * pc.o + m) * pc.p + n] = v;
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
