#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// diffusers get_timestep_embedding: t [B] -> y [B, 2*half]. Per column i < half:
//   e1 = fp32(-ln max_period) * i, e2 = e1 / fp32(half - shift),
//   freq = exp(e2), arg = t * freq     (each step rounded to fp32, as torch)
//   y = [sin(arg) | cos(arg)], halves swapped when flip_sin_to_cos.
// arg reaches ~1000 rad at t = 1000, so a 1-ulp error in freq moves sin by
// ~6e-5: freq must be the correctly rounded fp32 exp, and sin/cos need an
// exact range reduction. Neither GLSL exp, division nor sin is accurate
// enough, so: division with an exact residual correction, exp in
// float-float ("double-single") arithmetic, sin/cos by a Cody-Waite
// reduction plus minimax polynomials. All of it is `precise` so the
// compiler neither fuses nor reassociates the error-free transformations.
layout(local_size_x = 256) in;
layout(push_constant) uniform Push {
    uvec2 t, y;
    uint n, half_dim, flip;
    float neg_log_period; // fp32(-ln max_period)
    float denom;          // fp32(half - freq_shift), nonzero
} pc;

// ---- float-float arithmetic: a value is hi + lo with |lo| <= ulp(hi)/2 ----
vec2 two_sum(float a, float b) {
    precise float s = a + b;
    precise float bb = s - a;
    precise float e = (a - (s - bb)) + (b - bb);
    return vec2(s, e);
}

vec2 quick_two_sum(float a, float b) { // needs |a| >= |b|
    precise float s = a + b;
    precise float e = b - (s - a);
    return vec2(s, e);
}

// Dekker's split (no fma: GLSL does not promise that fma() fuses)
vec2 split(float a) {
    precise float c = 4097.0 * a;
    precise float hi = c - (c - a);
    precise float lo = a - hi;
    return vec2(hi, lo);
}

vec2 two_prod(float a, float b) {
    precise float p = a * b;
    vec2 as_ = split(a), bs = split(b);
    precise float e = ((as_.x * bs.x - p) + as_.x * bs.y + as_.y * bs.x) + as_.y * bs.y;
    return vec2(p, e);
}

vec2 dd_add(vec2 a, vec2 b) {
    vec2 s = two_sum(a.x, b.x);
    precise float lo = s.y + (a.y + b.y);
    return quick_two_sum(s.x, lo);
}

vec2 dd_mul(vec2 a, vec2 b) {
    vec2 p = two_prod(a.x, b.x);
    precise float lo = p.y + (a.x * b.y + a.y * b.x);
    return quick_two_sum(p.x, lo);
}

// Correctly rounded a / b (Vulkan allows 2.5 ulp for '/'): the residual
// a - q*b is exact, its quotient corrects q to ~2^-45 relative.
float div_rn(float a, float b) {
    precise float q = a / b;
    vec2 p = two_prod(q, b);
    precise float r = (a - p.x) - p.y;  // a - p.x is exact (Sterbenz)
    precise float res = q + r / b;
    return res;
}

// 1/n! as float-float, n = 0..13: Taylor terms of exp on |r| <= ln2/2
const vec2 INV_FACT[14] = vec2[](
    vec2(1.0, 0.0), vec2(1.0, 0.0), vec2(0.5, 0.0),
    vec2(1.666666716e-01, -4.967053879e-09), vec2(4.166666791e-02, -1.241763470e-09),
    vec2(8.333333768e-03, -4.346172033e-10), vec2(1.388888923e-03, -3.363109444e-11),
    vec2(1.984127011e-04, -2.725596875e-12), vec2(2.480158764e-05, -3.406996094e-13),
    vec2(2.755731884e-06, 3.793571224e-14), vec2(2.755731998e-07, -7.575112209e-15),
    vec2(2.505210794e-08, 4.417623045e-16), vec2(2.087675588e-09, 1.108283981e-16),
    vec2(1.605904437e-10, -5.352526512e-18));

// exp(x) rounded to fp32, from a ~2^-45-accurate float-float value, for
// -80 < x < 80: x = k ln2 + r, exp(r) by Horner in float-float, times 2^k.
float exp_rn(float x) {
    float k = round(x * 1.44269504);
    vec2 kl = two_prod(k, 6.931471825e-01);     // k * ln2_hi, exactly
    precise float klo = k * -1.904654212e-09;   // k * ln2_lo
    vec2 s = two_sum(x, -kl.x);
    precise float rl = (s.y - kl.y) - klo;
    vec2 r = two_sum(s.x, rl);
    vec2 p = INV_FACT[13];
    for (int j = 12; j >= 0; j--) p = dd_add(dd_mul(p, r), INV_FACT[j]);
    // p.x is hi + lo rounded to nearest; scaling by 2^k is exact
    precise float res = p.x * uintBitsToFloat(uint(127 + int(k)) << 23);
    return res;
}

// sin(a) (cosine = 0) or cos(a) (cosine = 1) to ~1e-7 absolute for
// |a| < ~6000: a = k pi/2 + r, pi/2 in three parts (Cody-Waite) so k*P1 and
// k*P2 are exact, then Cephes' sinf/cosf polynomials on |r| <= pi/4.
float sincos_reduced(float a, uint cosine) {
    float k = round(a * 0.636619772);
    precise float r = ((a - k * 1.5703125) - k * 4.837512970e-04) - k * 7.549790126e-08;
    uint q = (uint(int(k)) + cosine) & 3u;
    precise float z = r * r;
    precise float s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    precise float c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
                      - 0.5 * z + 1.0;
    float v = (q & 1u) != 0u ? c : s;
    return (q & 2u) != 0u ? -v : v;
}

void main() {
    uint idx = flat_group() * 256u + gl_LocalInvocationID.x;
    if (idx >= pc.n) return;
    uint dim = 2u * pc.half_dim;
    uint b = idx / dim, j = idx - b * dim;
    uint i = j < pc.half_dim ? j : j - pc.half_dim;
    bool first = j < pc.half_dim;
    uint cosine = (first == (pc.flip != 0u)) ? 1u : 0u; // first half is sin unless flipped

    precise float e1 = pc.neg_log_period * float(i);
    float freq = exp_rn(div_rn(e1, pc.denom));
    precise float arg = Floats(pc.t).v[b] * freq;
    Floats(pc.y).v[idx] = sincos_reduced(arg, cosine);
}
