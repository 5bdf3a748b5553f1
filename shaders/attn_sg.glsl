// attn_sg.glsl: the CPU-driver loop of attention.comp (variant attention_sg).
//
// A CPU driver runs a subgroup as SIMD lanes and performs every memory load
// lane by lane, so what costs is the number of values loaded per lane, not
// bandwidth; arithmetic and subgroup shuffles are cheap. So the workgroup
// is one subgroup of WG lanes, each owning RQ query rows (q and accumulator
// in registers); the subgroup walks the keys in chunks of WG: lane j loads
// key row k0 + j and value row k0 + j once, and every lane gets them from
// lane j by shuffle, KG keys at a time (the running max is updated once per
// KG keys). No shared memory, no barriers. Loops are unrolled only over the
// head dim, RQ and KG: CPU drivers compile huge unrolled bodies slowly.
//
// The host guarantees WG == the subgroup size (one subgroup per workgroup)
// and KG | WG.
#extension GL_KHR_shader_subgroup_shuffle : require
layout(constant_id = 2) const uint RQ = 4; // query rows per lane
layout(constant_id = 5) const uint KG = 4; // keys per online-softmax step

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return;
    uint lane = gl_SubgroupInvocationID;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * WG * RQ;
    uint qlast = min(q0 + WG * RQ, pc.nq) - 1u;

    vec4 qv[RQ][D4], acc[RQ][D4];
    float m[RQ], l[RQ];
    [[unroll]] for (uint r = 0u; r < RQ; r++) {
        uint qi = q0 + r * WG + lane;
        uint at = (b * pc.nq + qi) * hd + hoff;
        [[unroll]] for (uint d = 0u; d < D4; d++) {
            qv[r][d] = qi < pc.nq ? load4(pc.q, at, d) * pc.scale_log2 : vec4(0.0);
            acc[r][d] = vec4(0.0);
        }
        m[r] = NEG_BIG;
        l[r] = 0.0;
    }

    uint nchunks = (pc.nk + WG - 1u) / WG;
    if (CAUSAL) nchunks = min(nchunks, qlast / WG + 1u);
    for (uint ch = 0u; ch < nchunks; ch++) {
        uint k0 = ch * WG, kj = k0 + lane;
        vec4 kr[D4], vr[D4];
        uint at = (b * pc.nk + kj) * hd + hoff;
        [[unroll]] for (uint d = 0u; d < D4; d++) {
            kr[d] = kj < pc.nk ? load4(pc.k, at, d) : vec4(0.0);
            vr[d] = kj < pc.nk ? load4(pc.v, at, d) : vec4(0.0);
        }
        [[dont_unroll]] for (uint c0 = 0u; c0 < WG; c0 += KG) {
            float s[RQ][KG];
            [[unroll]] for (uint j = 0u; j < KG; j++) {
                vec4 kc[D4];
                [[unroll]] for (uint d = 0u; d < D4; d++) kc[d] = subgroupShuffle(kr[d], c0 + j);
                [[unroll]] for (uint r = 0u; r < RQ; r++) {
                    vec4 a = vec4(0.0);
                    [[unroll]] for (uint d = 0u; d < D4; d++) a += qv[r][d] * kc[d];
                    uint key = k0 + c0 + j;
                    bool masked = key >= pc.nk || (CAUSAL && key > q0 + r * WG + lane);
                    s[r][j] = masked ? NEG_BIG : (a.x + a.y) + (a.z + a.w);
                }
            }
            // Key 0 (first step) is masked for no row: m is finite from then on.
            [[unroll]] for (uint r = 0u; r < RQ; r++) {
                float mn = m[r];
                [[unroll]] for (uint j = 0u; j < KG; j++) mn = max(mn, s[r][j]);
                float alpha = exp2(m[r] - mn);
                m[r] = mn;
                l[r] *= alpha;
                [[unroll]] for (uint d = 0u; d < D4; d++) acc[r][d] *= alpha;
            }
            [[unroll]] for (uint j = 0u; j < KG; j++) {
                vec4 vc[D4];
                [[unroll]] for (uint d = 0u; d < D4; d++) vc[d] = subgroupShuffle(vr[d], c0 + j);
                [[unroll]] for (uint r = 0u; r < RQ; r++) {
                    float p = exp2(s[r][j] - m[r]);
                    l[r] += p;
                    [[unroll]] for (uint d = 0u; d < D4; d++) acc[r][d] += p * vc[d];
                }
            }
        }
    }

    [[unroll]] for (uint r = 0u; r < RQ; r++) {
        uint qi = q0 + r * WG + lane;
        if (qi >= pc.nq) break;
        float inv = 1.0 / l[r];
        uint at = (b * pc.nq + qi) * hd + hoff;
        [[unroll]] for (uint d = 0u; d < D4; d++) store4(at, d, acc[r][d] * inv);
    }
}
