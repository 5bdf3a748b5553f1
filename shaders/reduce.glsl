// reduce.glsl: workgroup-wide sum and max of one float per invocation.
// Define WG (the workgroup size, a power of two) before including. Uses
// subgroup arithmetic unless NO_SUBGROUP is defined: the _nosg variants,
// for devices without it, reduce through a shared-memory tree instead.
// Every invocation gets the same bits back (same order of operations), so
// all of them agree on a mean or a max.
#ifndef NO_SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

shared float red_sh[WG];

#ifndef NO_SUBGROUP
float wg_sum(float v) {
    v = subgroupAdd(v);
    if (gl_SubgroupInvocationID == 0u) red_sh[gl_SubgroupID] = v;
    barrier();
    float s = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) s += red_sh[i];
    barrier(); // red_sh is reused by the next reduction
    return s;
}

float wg_max(float v) {
    v = subgroupMax(v);
    if (gl_SubgroupInvocationID == 0u) red_sh[gl_SubgroupID] = v;
    barrier();
    float s = red_sh[0];
    for (uint i = 1u; i < gl_NumSubgroups; i++) s = max(s, red_sh[i]);
    barrier();
    return s;
}
#else
float wg_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    red_sh[t] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (t < s) red_sh[t] += red_sh[t + s];
        barrier();
    }
    float r = red_sh[0];
    barrier();
    return r;
}

float wg_max(float v) {
    uint t = gl_LocalInvocationID.x;
    red_sh[t] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (t < s) red_sh[t] = max(red_sh[t], red_sh[t + s]);
        barrier();
    }
    float r = red_sh[0];
    barrier();
    return r;
}
#endif
