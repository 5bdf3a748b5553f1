/* GEMM-shaped kernels: matmul / linear, and conv2d as an implicit GEMM.
 * Both run one of two GEMM loops, chosen here by device: shared-memory
 * tiles for GPUs (shaders/gemm_core.glsl) or one subgroup per tile for CPU
 * drivers (shaders/gemm_sg.glsl); tile sizes are specialization constants
 * chosen from the device and the shape. */
#include "kern_gemm.h"

#include <stddef.h>

#include "kernels.h"

static struct gemm_override override = {.storage16 = -1};

void kern_gemm_override(const struct gemm_override *o) {
    if (o) override = *o;
    else override = (struct gemm_override){.storage16 = -1};
}

static bool pow2(uint32_t x) { return x && !(x & (x - 1)); }

static uint32_t wg_size(const struct dev_caps *caps, const struct gemm_tiles *t) {
    if (t->path == GEMM_SUBGROUP) return caps->subgroup_size;
    if (t->path == GEMM_COOP) return t->bm == 128 ? 256 : 128;
    return (uint32_t)((t->bm / t->tm) * (t->bn / t->tn));
}

/* The layout rules gemm_core.glsl / gemm_sg.glsl rely on (see their headers). */
bool kern_gemm_tiles_valid(const struct dev_caps *caps, const struct gemm_tiles *t) {
    if (t->bm <= 0 || t->bn <= 0 || t->bk <= 0 || t->tm <= 0 || t->tn <= 0) return false;
    if (t->path == GEMM_SUBGROUP) {
        /* tm <= 64: lavapipe 22.3 computed wrong rows with 80 or more rows
         * per tile (72 was fine); keep a margin. */
        uint32_t sg = caps->subgroup_size;
        return caps->subgroup_shuffle && pow2(sg) && sg <= 128 && sg <= caps->max_workgroup_invocations &&
               t->bm == t->tm && t->bn == (int)sg * t->tn && t->tm <= 64 && t->tn <= 16 &&
               (t->tn % 4 || 4ull * (uint64_t)t->bm * (uint64_t)t->bn <= caps->max_shared_memory);
    }
    if (t->path == GEMM_COOP) {
        struct gemm_tiles c = kern_gemm_coop_tiles(t->bm != 128);
        return caps->gemm_coop_available && t->bm == c.bm && t->bn == c.bn && (t->bk == 32 || t->bk == 64) &&
               t->tm == c.tm && t->tn == c.tn;
    }
    if (t->path != GEMM_TILED) return false;
    if (t->bm % t->tm || t->bn % t->tn || t->bk % 4) return false;
    uint32_t wg = wg_size(caps, t);
    if (wg == 0 || wg > caps->max_workgroup_invocations) return false;
    if ((uint32_t)(t->bm * t->bk / 4) % wg || (uint32_t)(t->bn * t->bk / 4) % wg) return false;
    /* vec4 rows of BK/4 + 1 (padding) for both tiles */
    uint64_t shared = 16ull * (uint64_t)(t->bk / 4 + 1) * (uint64_t)(t->bm + t->bn);
    return shared <= caps->max_shared_memory;
}

struct gemm_tiles kern_gemm_coop_tiles(bool small) {
    return small ? (struct gemm_tiles){GEMM_COOP, 64, 64, 32, 32, 32} : (struct gemm_tiles){GEMM_COOP, 128, 128, 32, 64, 32};
}

struct gemm_tiles kern_gemm_subgroup_tiles(const struct dev_caps *caps, int tm, int tn) {
    return (struct gemm_tiles){GEMM_SUBGROUP, tm, (int)caps->subgroup_size * tn, 4, tm, tn};
}

struct gemm_tiles kern_gemm_tiles(const struct dev_caps *caps, long long m, long long n, long long k) {
    if (override.tiles.bm) return override.tiles;
    /* CPU drivers: the subgroup path. 64 rows x 8 columns per lane ran
     * best on lavapipe (~5x the tiled path), but its JIT takes ~10 s
     * (once per shape class; Mesa caches it on disk): small GEMMs, whose
     * run time is milliseconds, get smaller tiles that compile in ~1 s. */
    if (caps->type == DEV_CPU) {
        double work = (double)m * (double)n * (double)k;
        int tm = work < (1 << 24) ? 16 : work < (1 << 28) ? 32 : 64;
        int tn = work < (1 << 24) ? 4 : 8;
        long long sg = caps->subgroup_size;
        if (m <= 16) tm = 16;
        else if (m <= 32 && tm > 32) tm = 32;
        if (n <= 2 * sg) tn = 2;
        else if (n <= 4 * sg && tn > 4) tn = 4;
        struct gemm_tiles t = kern_gemm_subgroup_tiles(caps, tm, tn);
        if (kern_gemm_tiles_valid(caps, &t)) return t;
    }
    /* GPUs: big register blocks (fewer shared loads per FMA); tall-skinny
     * problems get a short tile so few rows are wasted. */
    struct gemm_tiles t = {GEMM_TILED, 64, 64, 16, 8, 8};
    if (m <= 8) t = (struct gemm_tiles){GEMM_TILED, 8, 64, 32, 1, 8};
    else if (m <= 32) t = (struct gemm_tiles){GEMM_TILED, 32, 64, 16, 4, 8};
    else if (m >= 256 && n >= 256) t = (struct gemm_tiles){GEMM_TILED, 128, 128, 16, 8, 8};
    return t;
}

/* fp16 weights on a device whose matrix path passed its self-test: the
 * matrix units (fp32 weights keep the fp32 tiles: --fp32 is the exact mode),
 * in 64 x 64 tiles where 128 x 128 ones would leave the GPU short of
 * workgroups (fewer than 256: two per core of a big GPU). K slices of 64
 * for matmuls, 32 for convolutions: on the H200 (SD1.5 512^2, run 5) 64
 * took the UNet's matmuls from 11.7 to 10.9 ms and the text encoder's from
 * 12.9 to 10.6, but its convolutions from 37.0 to 42.6. */
#define COOP_MIN_GROUPS 256
static df_status pick(const struct enc *e, const char *what, int64_t m, int64_t n, int64_t k, int64_t batch,
                      bool w16, bool is_conv, struct gemm_tiles *t) {
    if (!override.tiles.bm && w16 && enc_caps(e)->gemm_coop) {
        *t = kern_gemm_coop_tiles((m + 127) / 128 * ((n + 127) / 128) * batch < COOP_MIN_GROUPS);
        t->bk = override.coop_bk ? override.coop_bk : is_conv ? 32 : 64;
    } else {
        *t = kern_gemm_tiles(enc_caps(e), m, n, k);
    }
    if (!kern_gemm_tiles_valid(enc_caps(e), t))
        return df_error(DF_EINVAL, "%s: %s tiles %dx%dx%d / %dx%d invalid on this device", what,
                        t->path == GEMM_SUBGROUP ? "subgroup" : t->path == GEMM_COOP ? "matrix" : "tiled", t->bm, t->bn, t->bk, t->tm, t->tn);
    return DF_OK;
}

/* The shader variant: "<op>_sg" for the subgroup path (fp16 as packed
 * words: on a CPU driver a 16-bit load costs as much as a 32-bit one),
 * "<op>_s16" for tiles over fp16 data when 16-bit storage is there,
 * "<op>_cm" / "<op>_cms" on the matrix units (big / small tiles);
 * names[4], [5], [7]: the deliberately broken tiled, matrix and small
 * matrix variants (override.broken; NULL: none); "<op>_cm64" / "_cms64":
 * K slices of 64. */
enum { V_PLAIN, V_SG, V_S16, V_CM, V_BAD, V_CMBAD, V_CMS, V_CMSBAD, V_CM64, V_CMS64, V_COUNT };
static const char *variant(const struct enc *e, const struct gemm_tiles *t, bool f16,
                           const char *const names[V_COUNT]) {
    bool small = t->bm != 128;
    if (override.broken && names[V_BAD])
        return t->path != GEMM_COOP ? names[V_BAD] : small ? names[V_CMSBAD] : names[V_CMBAD];
    if (t->path == GEMM_SUBGROUP) return names[V_SG];
    if (t->path == GEMM_COOP && t->bk == 64) return small ? names[V_CMS64] : names[V_CM64];
    if (t->path == GEMM_COOP) return small ? names[V_CMS] : names[V_CM];
    bool s16 = enc_caps(e)->storage_16bit && (override.storage16 < 0 || override.storage16);
    return f16 && s16 ? names[2] : names[0];
}

/* fp16 tensors may start at 2 mod 4 (a view at an odd element): the shader
 * reads through 4-byte words, so pass the word address and an element offset. */
static uint64_t half_addr(const struct enc *e, const struct cg_tensor *t, uint32_t *off) {
    uint64_t a = enc_addr(e, t);
    *off = t->dtype == DT_F16 ? (uint32_t)((a & 3) / 2) : 0;
    return t->dtype == DT_F16 ? a & ~(uint64_t)3 : a;
}

/* vec4 loads need K % 4 == 0 and a 16-byte (fp32) or 8-byte (fp16)
 * aligned start with no element offset. */
static bool vec_ok(const struct enc *e, const struct cg_tensor *t, int64_t k) {
    uint64_t a = enc_addr(e, t);
    return k % 4 == 0 && a % (t->dtype == DT_F16 ? 8 : 16) == 0;
}

static bool fits_u32(int64_t a, int64_t b, int64_t c) {
    /* indices are 32-bit in the shaders (plus the woff slack) */
    return (double)a * (double)b * (double)c < 4294967040.0;
}

static uint32_t spec_bias(const struct cg_tensor *bias) {
    return !bias ? 0u : bias->dtype == DT_F16 ? 2u : 1u;
}

/* Tiles on a 2-D grid, batch items on z: more than the device's z limit
 * go out as several dispatches, each told its first item through *z0 (a
 * field of the push-constant block pc). */
static df_status dispatch_batched(struct enc *e, const char *shader, const uint32_t *spec, int nspec, void *pc,
                                  uint32_t pc_size, uint32_t *z0, uint64_t tiles, int64_t batch) {
    uint32_t gx, gy, zmax = enc_caps(e)->max_workgroup_count[2];
    enc_grid(e, tiles, &gx, &gy);
    for (int64_t z = 0; z < batch; z += zmax) {
        *z0 = (uint32_t)z;
        uint32_t gz = (uint32_t)(batch - z < zmax ? batch - z : zmax);
        df_status st = enc_dispatch(e, shader, spec, nspec, pc, pc_size, gx, gy, gz);
        if (st != DF_OK) return st;
    }
    return DF_OK;
}

df_status kern_matmul(struct enc *e, const struct cg_op *op) {
    const struct cg_tensor *a = op->src[0], *w = op->src[1], *bias = op->src[2];
    int64_t batch = op->p.matmul.batch, m = op->p.matmul.m, n = op->p.matmul.n, k = op->p.matmul.k;
    if (!fits_u32(batch, m, k) || !fits_u32(batch, m, n) || !fits_u32(op->p.matmul.bcast_b ? 1 : batch, n, k))
        return df_error(DF_EUNSUPPORTED, "matmul: %lldx%lldx%lld (batch %lld) exceeds 32-bit indexing",
                        (long long)m, (long long)n, (long long)k, (long long)batch);
    bool f16 = w->dtype == DT_F16 || (bias && bias->dtype == DT_F16);
    struct gemm_tiles t;
    df_status st = pick(e, "matmul", m, n, k, batch, w->dtype == DT_F16, false, &t);
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
    uint32_t spec[11] = {wg_size(enc_caps(e), &t), (uint32_t)t.bm, (uint32_t)t.bn, (uint32_t)t.bk, (uint32_t)t.tm,
                         (uint32_t)t.tn, op->p.matmul.trans_b, w->dtype == DT_F16, spec_bias(bias),
                         vec_ok(e, a, k), op->p.matmul.trans_b && vec_ok(e, w, k)};
    static const char *const names[V_COUNT] = {"matmul", "matmul_sg", "matmul_s16", "matmul_cm", "matmul_bad",
                                               "matmul_cmbad", "matmul_cms", "matmul_cmsbad", "matmul_cm64",
                                               "matmul_cms64"};
    const char *shader = variant(e, &t, f16, names);
    return dispatch_batched(e, shader, spec, 11, &pc, sizeof pc, &pc.z0, tiles, batch);
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
    bool f16 = w->dtype == DT_F16 || (bias && bias->dtype == DT_F16);
    struct gemm_tiles t;
    df_status st = pick(e, "conv2d", m, n, k, images, w->dtype == DT_F16, true, &t);
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
    uint32_t spec[12] = {wg_size(enc_caps(e), &t), (uint32_t)t.bm, (uint32_t)t.bn, (uint32_t)t.bk, (uint32_t)t.tm,
                         (uint32_t)t.tn, (uint32_t)kh, (uint32_t)kw, (uint32_t)op->p.conv.stride_y,
                         w->dtype == DT_F16, spec_bias(bias), vec_ok(e, w, k)};
    static const char *const names[V_COUNT] = {"conv2d", "conv2d_sg", "conv2d_s16", "conv2d_cm", NULL, NULL,
                                               "conv2d_cms", NULL, "conv2d_cm64", "conv2d_cms64"};
    const char *shader = variant(e, &t, f16, names);
    return dispatch_batched(e, shader, spec, 12, &pc, sizeof pc, &pc.z0, tiles, images);
}
