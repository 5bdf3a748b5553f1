/* GEMM-shaped kernels: matmul / linear, and conv2d as an implicit GEMM.
 * Both run the tiled loop of shaders/gemm_core.glsl; tile sizes are
 * specialization constants chosen here from the device and the shape. */
#include "kern_gemm.h"

#include <stddef.h>

#include "kernels.h"

static struct gemm_override override = {.storage16 = -1};

void kern_gemm_override(const struct gemm_override *o) {
    if (o) override = *o;
    else override = (struct gemm_override){.storage16 = -1};
}

static uint32_t wg_size(const struct gemm_tiles *t) {
    return (uint32_t)((t->bm / t->tm) * (t->bn / t->tn));
}

/* The layout rules gemm_core.glsl relies on (see its header). */
bool kern_gemm_tiles_valid(const struct dev_caps *caps, const struct gemm_tiles *t) {
    if (t->bm <= 0 || t->bn <= 0 || t->bk <= 0 || t->tm <= 0 || t->tn <= 0) return false;
    if (t->bm % t->tm || t->bn % t->tn) return false;
    uint32_t wg = wg_size(t);
    if (wg == 0 || wg > caps->max_workgroup_invocations) return false;
    if ((uint32_t)(t->bm * t->bk) % wg || (uint32_t)(t->bk * t->bn) % wg) return false;
    if (wg % (uint32_t)t->bk || wg % (uint32_t)t->bn) return false;
    uint64_t shared = 4ull * (uint64_t)t->bk * (uint64_t)(t->bm + 1 + t->bn + 1);
    return shared <= caps->max_shared_memory;
}

struct gemm_tiles kern_gemm_tiles(const struct dev_caps *caps, long long m, long long n, long long k) {
    (void)k;
    if (override.tiles.bm) return override.tiles;
    /* Big register blocks win everywhere (fewer shared loads per FMA);
     * tall-skinny problems get a short tile so few rows are wasted. */
    struct gemm_tiles t = {64, 64, 16, 8, 8};
    if (m <= 8) t = (struct gemm_tiles){8, 128, 16, 1, 8};
    else if (m <= 32) t = (struct gemm_tiles){32, 64, 16, 4, 8};
    else if (caps->type != DEV_CPU && m >= 256 && n >= 256) t = (struct gemm_tiles){128, 128, 16, 8, 8};
    return t;
}

static df_status pick(const struct enc *e, const char *what, int64_t m, int64_t n, int64_t k,
                      struct gemm_tiles *t) {
    *t = kern_gemm_tiles(enc_caps(e), m, n, k);
    if (!kern_gemm_tiles_valid(enc_caps(e), t))
        return df_error(DF_EINVAL, "%s: tiles %dx%dx%d / %dx%d invalid on this device", what, t->bm, t->bn,
                        t->bk, t->tm, t->tn);
    return DF_OK;
}

static bool use_storage16(const struct enc *e) {
    if (override.storage16 >= 0) return override.storage16 && enc_caps(e)->storage_16bit;
    return enc_caps(e)->storage_16bit;
}

/* fp16 tensors may start at 2 mod 4 (a view at an odd element): the shader
 * reads through 4-byte words, so pass the word address and an element offset. */
static uint64_t half_addr(const struct enc *e, const struct cg_tensor *t, uint32_t *off) {
    uint64_t a = enc_addr(e, t);
    *off = t->dtype == DT_F16 ? (uint32_t)((a & 3) / 2) : 0;
    return t->dtype == DT_F16 ? a & ~(uint64_t)3 : a;
}

static bool fits_u32(int64_t a, int64_t b, int64_t c) {
    /* indices are 32-bit in the shaders (plus the woff slack) */
    return (double)a * (double)b * (double)c < 4294967040.0;
}

static uint32_t spec_bias(const struct cg_tensor *bias) {
    return !bias ? 0u : bias->dtype == DT_F16 ? 2u : 1u;
}

df_status kern_matmul(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *a = op->src[0], *w = op->src[1], *bias = op->src[2];
    int64_t batch = op->p.matmul.batch, m = op->p.matmul.m, n = op->p.matmul.n, k = op->p.matmul.k;
    if (!fits_u32(batch, m, k) || !fits_u32(batch, m, n) || !fits_u32(op->p.matmul.bcast_b ? 1 : batch, n, k))
        return df_error(DF_EUNSUPPORTED, "matmul: %lldx%lldx%lld (batch %lld) exceeds 32-bit indexing",
                        (long long)m, (long long)n, (long long)k, (long long)batch);
    struct gemm_tiles t;
    df_status st = pick(e, "matmul", m, n, k, &t);
    if (st != DF_OK) return st;
    struct {
        uint64_t a, w, bias, y;
        uint32_t m, n, k, tiles_n, tiles, sa, sw, woff, boff, z0;
        float alpha;
    } pc = {0};
    pc.a = enc_addr(e, a);
    pc.w = half_addr(e, w, &pc.woff);
    if (bias) pc.bias = half_addr(e, bias, &pc.boff);
    pc.y = enc_addr(e, op->dst);
    pc.m = (uint32_t)m;
    pc.n = (uint32_t)n;
    pc.k = (uint32_t)k;
    pc.tiles_n = (uint32_t)((n + t.bn - 1) / t.bn);
    uint64_t tiles = (uint64_t)((m + t.bm - 1) / t.bm) * pc.tiles_n;
    pc.tiles = (uint32_t)tiles;
    pc.sa = (uint32_t)(m * k);
    pc.sw = op->p.matmul.bcast_b ? 0 : (uint32_t)(n * k);
    pc.alpha = op->p.matmul.alpha;
    uint32_t spec[9] = {wg_size(&t), (uint32_t)t.bm, (uint32_t)t.bn, (uint32_t)t.bk, (uint32_t)t.tm,
                        (uint32_t)t.tn, op->p.matmul.trans_b, w->dtype == DT_F16, spec_bias(bias)};
    bool f16 = w->dtype == DT_F16 || (bias && bias->dtype == DT_F16);
    const char *shader = f16 && use_storage16(e) ? "matmul_s16" : "matmul";
    uint32_t gx, gy, zmax = enc_caps(e)->max_workgroup_count[2];
    enc_grid(e, tiles, &gx, &gy);
    for (int64_t z0 = 0; z0 < batch; z0 += zmax) {
        pc.z0 = (uint32_t)z0;
        uint32_t gz = (uint32_t)(batch - z0 < zmax ? batch - z0 : zmax);
        if ((st = enc_dispatch(e, shader, spec, 9, &pc, sizeof pc, gx, gy, gz)) != DF_OK) return st;
    }
    return DF_OK;
}

df_status kern_conv2d(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *x = op->src[0], *w = op->src[1], *bias = op->src[2], *y = op->dst;
    int64_t images = x->ne[0], c = x->ne[1], h = x->ne[2], wi = x->ne[3];
    int64_t o = w->ne[0], kh = w->ne[2], kw = w->ne[3], ho = y->ne[2], wo = y->ne[3];
    int64_t m = o, n = ho * wo, k = c * kh * kw;
    if (op->p.conv.stride_x != op->p.conv.stride_y)
        return df_error(DF_EUNSUPPORTED, "conv2d: stride %d x %d", op->p.conv.stride_y, op->p.conv.stride_x);
    if (!fits_u32(images, c, h * wi) || !fits_u32(images, o, n) || !fits_u32(1, o, k))
        return df_error(DF_EUNSUPPORTED, "conv2d: input or output exceeds 32-bit indexing");
    struct gemm_tiles t;
    df_status st = pick(e, "conv2d", m, n, k, &t);
    if (st != DF_OK) return st;
    struct {
        uint64_t x, w, bias, y;
        uint32_t o, p, k, tiles_n, tiles, h, wi, wo, pad_top, pad_left, woff, boff, z0;
    } pc = {0};
    pc.x = enc_addr(e, x);
    pc.w = half_addr(e, w, &pc.woff);
    if (bias) pc.bias = half_addr(e, bias, &pc.boff);
    pc.y = enc_addr(e, y);
    pc.o = (uint32_t)m;
    pc.p = (uint32_t)n;
    pc.k = (uint32_t)k;
    pc.tiles_n = (uint32_t)((n + t.bn - 1) / t.bn);
    uint64_t tiles = (uint64_t)((m + t.bm - 1) / t.bm) * pc.tiles_n;
    pc.tiles = (uint32_t)tiles;
    pc.h = (uint32_t)h;
    pc.wi = (uint32_t)wi;
    pc.wo = (uint32_t)wo;
    pc.pad_top = (uint32_t)op->p.conv.pad_top;
    pc.pad_left = (uint32_t)op->p.conv.pad_left;
    uint32_t spec[11] = {wg_size(&t), (uint32_t)t.bm, (uint32_t)t.bn, (uint32_t)t.bk, (uint32_t)t.tm,
                         (uint32_t)t.tn, (uint32_t)kh, (uint32_t)kw, (uint32_t)op->p.conv.stride_y,
                         w->dtype == DT_F16, spec_bias(bias)};
    bool f16 = w->dtype == DT_F16 || (bias && bias->dtype == DT_F16);
    const char *shader = f16 && use_storage16(e) ? "conv2d_s16" : "conv2d";
    uint32_t gx, gy, zmax = enc_caps(e)->max_workgroup_count[2];
    enc_grid(e, tiles, &gx, &gy);
    for (int64_t z0 = 0; z0 < images; z0 += zmax) {
        pc.z0 = (uint32_t)z0;
        uint32_t gz = (uint32_t)(images - z0 < zmax ? images - z0 : zmax);
        if ((st = enc_dispatch(e, shader, spec, 11, &pc, sizeof pc, gx, gy, gz)) != DF_OK) return st;
    }
    return DF_OK;
}
