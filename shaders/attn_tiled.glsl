// attn_tiled.glsl: the GPU loop of attention.comp.
//
// A workgroup of WG (= BQ) invocations owns BQ consecutive queries of one
// (batch, head), one query row per invocation: its pre-scaled q row and its
// accumulator live in registers as ceil(D/4) vec4s each. Keys and values
// stream through shared memory in tiles of BK rows, loaded cooperatively;
// then every invocation walks the tile's rows in the same order, so every
// shared read is a broadcast (one address per warp: no bank conflicts).
// The running max is updated per key; the rescale runs only when it grows
// (rarely after the first keys).
//
// Shared memory: 2 * BK * ceil(D/4) * 16 bytes (kern_attn.c picks BK).
layout(constant_id = 2) const uint BK = 32; // keys per tile

shared vec4 sK[BK * D4];
shared vec4 sV[BK * D4];

void main() {
    uint wg = flat_group();
    if (wg >= pc.total) return; // whole workgroup: barriers stay uniform
    uint tid = gl_LocalInvocationID.x;
    uint qb = wg % pc.qblocks, bh = wg / pc.qblocks;
    uint h = bh % pc.heads, b = bh / pc.heads;
    uint hd = pc.heads * D, hoff = h * D;
    uint q0 = qb * WG, qi = q0 + tid;
    uint qlast = min(q0 + WG, pc.nq) - 1u;

    vec4 qv[D4], acc[D4];
    uint qat = (b * pc.nq + qi) * hd + hoff;
    [[unroll]] for (uint d = 0u; d < D4; d++) {
        qv[d] = qi < pc.nq ? load4(pc.q, qat, d) * pc.scale_log2 : vec4(0.0);
        acc[d] = vec4(0.0);
    }
    float m = NEG_BIG, l = 0.0;

    uint ntiles = (pc.nk + BK - 1u) / BK;
    // causal: tiles wholly past the block's last query are fully masked
    if (CAUSAL) ntiles = min(ntiles, qlast / BK + 1u);

    for (uint t = 0u; t < ntiles; t++) {
        uint k0 = t * BK;
        uint kvalid = min(BK, pc.nk - k0);
        barrier(); // the previous tile's readers are done
        [[dont_unroll]] for (uint idx = tid; idx < kvalid * D4; idx += WG) {
            uint at = (b * pc.nk + k0 + idx / D4) * hd + hoff;
            sK[idx] = load4(pc.k, at, idx % D4);
            sV[idx] = load4(pc.v, at, idx % D4);
        }
        barrier();

        // causal: this row's keys end at its query (key 0 always counts, so
        // the first score of every row is finite)
        uint kend = CAUSAL ? min(kvalid, qi + 1u > k0 ? qi + 1u - k0 : 0u) : kvalid;
        [[dont_unroll]] for (uint c = 0u; c < kend; c++) {
            vec4 a = vec4(0.0);
            [[unroll]] for (uint d = 0u; d < D4; d++) a += qv[d] * sK[c * D4 + d];
            float s = (a.x + a.y) + (a.z + a.w);
            if (s > m) { // the running max grows: rescale what was summed so far
                float alpha = exp2(m - s);
                l *= alpha;
                [[unroll]] for (uint d = 0u; d < D4; d++) acc[d] *= alpha;
                m = s;
            }
            float p = exp2(s - m);
            l += p;
            [[unroll]] for (uint d = 0u; d < D4; d++) acc[d] += p * sV[c * D4 + d];
        }
    }

    if (qi >= pc.nq) return;
    float inv = 1.0 / l;
    [[unroll]] for (uint d = 0u; d < D4; d++) store4(qat, d, acc[d] * inv);
}
