// common.glsl: what every kernel shares. Tensors are reached through buffer
// device addresses passed in push constants (uvec2 = low, high word), so no
// descriptor limits apply: a tensor may be larger than maxStorageBufferRange.
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Floats { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer Float4s { vec4 v[]; };
// fp16 tensors read as packed pairs: unpackHalf2x16 needs no device feature
layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint v[]; };

float load_half(Words w, uint i) {
    vec2 pair = unpackHalf2x16(w.v[i >> 1]);
    return (i & 1u) != 0u ? pair.y : pair.x;
}

// Flat workgroup index of a grid split by enc_grid() into x and y.
uint flat_group() { return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x; }

// erf with relative error below 1.2e-7 everywhere (Chebyshev fit of erfc);
// GLSL has no erf and GELU needs it exactly as torch computes it.
float erf_accurate(float x) {
    float z = abs(x);
    float t = 1.0 / (1.0 + 0.5 * z);
    float r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
              t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
              t * (-0.82215223 + t * 0.17087277)))))))));
    return x >= 0.0 ? 1.0 - r : r - 1.0;
}

// tanh without overflow for large |x|
float tanh_safe(float x) {
    float e = exp(-2.0 * abs(x));
    float t = (1.0 - e) / (1.0 + e);
    return x >= 0.0 ? t : -t;
}

float sigmoid(float x) { return 1.0 / (1.0 + exp(-x)); }
