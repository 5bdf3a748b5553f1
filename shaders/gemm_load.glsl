// gemm_load.glsl: bounds-checked vec4 loads along k for the GEMM cores.
// Out-of-range elements are read from a clamped in-range index and then
// replaced by zero with a select: no branches, no out-of-bounds access.
// Needs the includer's a_elem/b_elem/a_vec4/b_vec4, A_VEC/B_VEC, PC_M/N/K.

vec4 load_a4(uint m, uint k) {
#ifdef TEST_BROKEN
    // the deliberately wrong variants (*_bad) behind the self-test's own
    // test: A's last 4 columns read as zero
    if (k + 4u >= PC_K) return vec4(0.0);
#endif
    bool min = m < PC_M;
    uint mc = min ? m : PC_M - 1u;
    vec4 v;
    if (A_VEC) {
        bool ok = min && k < PC_K;
        vec4 x = a_vec4(mc, ok ? k : 0u);
        v = ok ? x : vec4(0.0);
    } else {
        [[unroll]] for (uint c = 0; c < 4u; c++) {
            bool ok = min && k + c < PC_K;
            float x = a_elem(mc, ok ? k + c : 0u);
            v[c] = ok ? x : 0.0;
        }
    }
    return v;
}

vec4 load_b4(uint k, uint n) {
    bool nin = n < PC_N;
    uint nc = nin ? n : PC_N - 1u;
    vec4 v;
    if (B_VEC) {
        bool ok = nin && k < PC_K;
        vec4 x = b_vec4(ok ? k : 0u, nc);
        v = ok ? x : vec4(0.0);
    } else {
        [[unroll]] for (uint c = 0; c < 4u; c++) {
            bool ok = nin && k + c < PC_K;
            float x = b_elem(ok ? k + c : 0u, nc);
            v[c] = ok ? x : 0.0;
        }
    }
    return v;
}
