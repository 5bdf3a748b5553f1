/* rng: torch CPU randn and A1111 Philox randn, bit-exact in float32.
 *
 * Bit-exactness means reproducing not just the algorithms but the exact
 * float operations the references run, including which of them are fused
 * multiply-adds. Every such step below is therefore its own statement (so
 * no compiler may contract two of them: GCC does not under -std=c11, clang
 * only contracts within one expression) and every fused step is an explicit
 * fmaf(), which is correctly rounded with or without hardware FMA. */
#include "rng.h"

/* The Makefile's -std=c11 already stops GCC contracting; these keep the
 * file exact when built in GNU mode (GCC's default contraction is "fast")
 * or by clang. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "../common/npmath.h"

/* ------------------------------------------------------------------------ */
/* mt19937, as at::mt19937 (standard MT19937, 32-bit seed)                   */

#define MT_N 624
#define MT_M 397

struct mt19937 {
    uint32_t state[MT_N];
    int left; /* words left before the next twist */
};

static void mt_seed(struct mt19937 *mt, uint32_t seed)
{
    mt->state[0] = seed;
    for (uint32_t j = 1; j < MT_N; j++) {
        uint32_t prev = mt->state[j - 1];
        mt->state[j] = 1812433253u * (prev ^ (prev >> 30)) + j;
    }
    mt->left = 0;
}

static void mt_twist(struct mt19937 *mt)
{
    for (int k = 0; k < MT_N; k++) {
        uint32_t y = (mt->state[k] & 0x80000000u) |
                     (mt->state[(k + 1) % MT_N] & 0x7fffffffu);
        uint32_t v = mt->state[(k + MT_M) % MT_N] ^ (y >> 1);
        mt->state[k] = (y & 1u) ? v ^ 0x9908b0dfu : v;
    }
    mt->left = MT_N;
}

static uint32_t mt_next(struct mt19937 *mt)
{
    if (mt->left == 0)
        mt_twist(mt);
    uint32_t y = mt->state[MT_N - mt->left--];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* at::uniform_real_distribution<float>(0, 1): 24 random bits * 2^-24 (exact). */
static float mt_uniform_f32(struct mt19937 *mt)
{
    return (float)(mt_next(mt) & 0xFFFFFFu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): random64() is two draws,
 * first one high, masked to 53 bits. */
static double mt_uniform_f64(struct mt19937 *mt)
{
    uint64_t hi = mt_next(mt);
    uint64_t lo = mt_next(mt);
    uint64_t bits = ((hi << 32) | lo) & ((UINT64_C(1) << 53) - 1);
    return (double)bits * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------------ */
/* torch's vectorised normal fill (numel >= 16).                              */
/*
 * torch (x86-64 builds) runs normal_fill_16_AVX2: Cephes-style log256_ps and
 * sincos256_ps from avx_mathfun.h, compiled with -mfma, where GCC contracts
 * every "mul then add" of those intrinsics into an FMA. These scalar copies
 * reproduce one lane, fusing exactly the pairs that build fuses (verified on
 * every fixture tensor; leaving any of them unfused changes ~1% of values). */

static float cephes_logf(float x) /* x in (0, 1] here */
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int32_t)(bits >> 23) - 0x7f);
    e = e + 1.0f;
    bits = (bits & ~0x7f800000u) | 0x3f000000u; /* mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    if (m < 0.707106781186547524f) {
        e = e - 1.0f;
        float t = m - 1.0f;
        m = t + m;
    } else {
        m = m - 1.0f;
    }
    float z = m * m;
    float y = fmaf(7.0376836292E-2f, m, -1.1514610310E-1f);
    y = fmaf(y, m, 1.1676998740E-1f);
    y = fmaf(y, m, -1.2420140846E-1f);
    y = fmaf(y, m, 1.4249322787E-1f);
    y = fmaf(y, m, -1.6668057665E-1f);
    y = fmaf(y, m, 2.0000714765E-1f);
    y = fmaf(y, m, -2.4999993993E-1f);
    y = fmaf(y, m, 3.3333331174E-1f);
    y = y * m;
    float eq1 = e * -2.12194440e-4f;
    y = fmaf(y, z, eq1);         /* y*z + e*q1: the y*z product is fused */
    y = fmaf(z, -0.5f, y);       /* y - z/2 */
    float r = m + y;
    r = fmaf(e, 0.693359375f, r);
    return r;
}

static void cephes_sincosf(float x, float *s, float *c) /* x in [0, 2pi) */
{
    float y = x * 1.27323954473516f; /* 4/pi */
    int32_t j = (int32_t)y;          /* cvttps: truncation */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    int use_sin_poly = (j & 2) == 0;

    /* extended precision modular arithmetic: x - y*pi/4 in three parts */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);

    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    float half_z = z * 0.5f;
    yc = fmaf(yc, z, -half_z);  /* y*z - z/2, the y*z product fused */
    yc = yc + 1.0f;

    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    float sv = use_sin_poly ? ys : yc;
    float cv = use_sin_poly ? yc : ys;
    uint32_t b;
    memcpy(&b, &sv, sizeof b);
    b ^= sign_sin;
    memcpy(s, &b, sizeof b);
    memcpy(&b, &cv, sizeof b);
    b ^= sign_cos;
    memcpy(c, &b, sizeof b);
}

/* normal_fill_16: d[0..7] are u1 (radius), d[8..15] u2 (angle); cosines go
 * to the first half, sines to the second. mean 0 / std 1 make torch's final
 * fmadd(n, std, mean) exact, so it is omitted. */
static void torch_fill16(float *d)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int k = 0; k < 8; k++) {
        float u1 = 1.0f - d[k]; /* [0,1) -> (0,1] for log */
        float u2 = d[k + 8];
        float lg = cephes_logf(u1);
        float radius = sqrtf(-2.0f * lg);
        float theta = two_pi * u2;
        float s, c;
        cephes_sincosf(theta, &s, &c);
        d[k] = radius * c;
        d[k + 8] = radius * s;
    }
}

/* ------------------------------------------------------------------------ */
/* A1111 Philox ("GPU" RNG source)                                           */
/*
 * The oracle evaluates rng_philox.py's Box-Muller in float32 with numpy's
 * own SIMD kernels (the AVX2+FMA3 simd_log_FLOAT and simd_sincos_f32), not
 * libm: correctly rounded logf/sinf disagree with it on ~20% of values, these
 * copies on none. Note that A1111's own numpy code promotes uint32*float32 to
 * float64, so stock A1111 noise can differ from this in the last bit or two. */

static float numpy_sinf(float x) /* |x| small (here [0, 2pi]) */
{
    const float magic = 0x1.800000p+23f; /* round to nearest integer */
    float q = x * 0x1.45f306p-1f;       /* 2/pi */
    q = q + magic;
    q = q - magic;
    float r = fmaf(q, -0x1.921fb0p+00f, x); /* Cody-Waite pi/2 */
    r = fmaf(q, -0x1.5110b4p-22f, r);
    r = fmaf(q, -0x1.846988p-48f, r);
    float r2 = r * r;
    float c = fmaf(0x1.98e616p-16f, r2, -0x1.6c06dcp-10f);
    c = fmaf(c, r2, 0x1.55553cp-05f);
    c = fmaf(c, r2, -0x1.000000p-01f);
    c = fmaf(c, r2, 1.0f);
    float s = fmaf(0x1.7d3bbcp-19f, r2, -0x1.a06bbap-13f);
    s = fmaf(s, r2, 0x1.11119ap-07f);
    s = fmaf(s, r2, -0x1.555556p-03f);
    s = s * r2;
    s = fmaf(s, r, r);
    int32_t iq = (int32_t)q;
    float v = (iq & 1) == 0 ? s : c;
    if (iq & 2)
        v = 0.0f - v;
    return v;
}

static void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)ctr[0] * 0xD2511F53u;
        uint64_t p1 = (uint64_t)ctr[2] * 0xCD9E8D57u;
        uint32_t c0 = (uint32_t)(p1 >> 32) ^ ctr[1] ^ k0;
        uint32_t c1 = (uint32_t)p1;
        uint32_t c2 = (uint32_t)(p0 >> 32) ^ ctr[3] ^ k1;
        uint32_t c3 = (uint32_t)p0;
        ctr[0] = c0;
        ctr[1] = c1;
        ctr[2] = c2;
        ctr[3] = c3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

static void philox_randn(uint64_t seed, uint64_t offset, float *out, size_t n)
{
    /* numpy float32 constants, exactly as rng_philox.py builds them */
    const float inv32 = 2.3283064e-10f;
    const float inv32_2pi = (float)(2.3283064e-10 * 6.2831855);
    const float half_inv32 = inv32 / 2.0f;
    const float half_inv32_2pi = inv32_2pi / 2.0f;
    for (size_t i = 0; i < n; i++) {
        /* rng_philox.py keeps the element index in a uint32 counter word,
         * so it wraps past 2^32 elements: so do we */
        uint32_t ctr[4] = {(uint32_t)offset, 0, (uint32_t)i, 0};
        philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
        float u = (float)ctr[0] * inv32;
        u = u + half_inv32;
        float v = (float)ctr[1] * inv32_2pi;
        v = v + half_inv32_2pi;
        float lg = np_logf(u);
        float s = sqrtf(-2.0f * lg);
        out[i] = s * numpy_sinf(v);
    }
}

/* ------------------------------------------------------------------------ */

struct rng {
    enum rng_kind kind;
    uint64_t seed;
    uint64_t offset;        /* Philox: calls so far */
    struct mt19937 mt;      /* torch */
    int have_next_normal;   /* torch: the cached second Box-Muller value */
    double next_normal;
};

df_status rng_create(enum rng_kind kind, uint64_t seed, struct rng **out)
{
    *out = NULL;
    if (kind != RNG_TORCH_CPU && kind != RNG_PHILOX)
        return df_error(DF_EINVAL, "rng: unknown kind %d", (int)kind);
    struct rng *r = calloc(1, sizeof *r);
    if (!r)
        return df_error(DF_ENOMEM, "rng: out of memory");
    r->kind = kind;
    r->seed = seed;
    if (kind == RNG_TORCH_CPU)
        mt_seed(&r->mt, (uint32_t)seed); /* torch keeps only the low 32 bits */
    *out = r;
    return DF_OK;
}

void rng_destroy(struct rng *r)
{
    free(r);
}

/* at::normal_distribution<double>: one Box-Muller pair per two calls, the
 * sine half cached in the generator and handed out by the next call (torch
 * keeps that cache across randn calls, so do we). */
static float torch_scalar_normal(struct rng *r)
{
    if (r->have_next_normal) {
        r->have_next_normal = 0;
        return (float)r->next_normal;
    }
    double u1 = mt_uniform_f64(&r->mt);
    double u2 = mt_uniform_f64(&r->mt);
    double radius = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    r->next_normal = radius * sin(theta);
    r->have_next_normal = 1;
    return (float)(radius * cos(theta));
}

static void torch_randn(struct rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = torch_scalar_normal(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = mt_uniform_f32(&r->mt);
    for (size_t i = 0; i + 16 <= n; i += 16)
        torch_fill16(out + i);
    if (n % 16 != 0) {
        /* torch redraws the last 16 slots (overlapping finished values)
         * with fresh uniforms and transforms them as one more block */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = mt_uniform_f32(&r->mt);
        torch_fill16(tail);
    }
}

df_status rng_randn(struct rng *r, float *out, size_t n)
{
    if (!r || (!out && n))
        return df_error(DF_EINVAL, "rng_randn: null argument");
    if (r->kind == RNG_TORCH_CPU) {
        torch_randn(r, out, n);
    } else {
        philox_randn(r->seed, r->offset, out, n);
        r->offset++;
    }
    return DF_OK;
}

uint64_t rng_random_seed(void)
{
    const uint64_t range = 4294967294u; /* random.randrange(4294967294) */
    /* rejection sampling keeps the seeds uniform over the range */
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    for (;;) {
        uint64_t x;
        ssize_t got = getrandom(&x, sizeof x, 0);
        if (got != (ssize_t)sizeof x) {
            if (got < 0 && errno == EINTR)
                continue;
            /* no getrandom (old kernel, seccomp): a seed need not be secret,
             * only different between requests */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            x = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec;
            x ^= x >> 33;
            x *= UINT64_C(0xff51afd7ed558ccd);
            x ^= x >> 33;
            return x % range;
        }
        if (x < limit)
            return x % range;
    }
}

df_status rng_kind_from_name(const char *name, enum rng_kind *out)
{
    static const struct { const char *name; enum rng_kind kind; } names[] = {
        {"torch", RNG_TORCH_CPU}, {"cpu", RNG_TORCH_CPU},
        {"a1111", RNG_PHILOX},    {"philox", RNG_PHILOX}, {"gpu", RNG_PHILOX},
    };
    if (name) {
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strcasecmp(name, names[i].name) == 0) {
                *out = names[i].kind;
                return DF_OK;
            }
        }
    }
    return df_error(DF_EINVAL, "unknown RNG source '%s' (torch, cpu, a1111, philox, gpu)",
                    name ? name : "(null)");
}
