/* unicode_tables: lookups over the generated tables, plus NFC and
 * str.lower(), written to match CPython's unicodedata / unicodeobject.c. */
#include "unicode_tables.h"

#include <string.h>

struct uc_range { uint32_t lo, hi; };
struct uc_rval { uint32_t lo, hi, val; };
struct uc_pair { uint32_t from, to; };
/* cp in [lo, hi] with (cp - lo) % stride == 0 maps to cp + delta. */
struct uc_delta { uint32_t lo, hi; int32_t delta; uint32_t stride; };
struct uc_decomp { uint32_t a, b, c; };
struct uc_map { uint32_t cp; uint32_t to[3]; }; /* to: 0-terminated */
struct uc_entity { const char *name, *utf8; };

#include "data/unicode_data.inc"

_Static_assert(MAX_DECOMP <= TOK_UC_NFC_GROWTH, "regenerate: decompositions grew");
_Static_assert(sizeof(struct uc_range) == 8 && sizeof(struct uc_rval) == 12 &&
                   sizeof(struct uc_delta) == 16 && sizeof(struct uc_decomp) == 12 &&
                   sizeof(struct uc_map) == 16,
               "tables must be plain uint32 records");

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Every table is sorted, with records of `words` uint32 starting with lo
 * (and hi when `ranged`); returns the index of the record holding c or -1. */
static long lookup(const void *table, size_t n, size_t words, bool ranged, uint32_t c) {
    const uint32_t *t = table;
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = t + mid * words;
        if (c < e[0])
            hi = mid;
        else if (c > e[ranged])
            lo = mid + 1;
        else
            return (long)mid;
    }
    return -1;
}

#define IN_RANGES(tab, c) (lookup((tab), COUNT(tab), 2, true, (c)) >= 0)

static uint32_t delta_map(const struct uc_delta *r, size_t n, uint32_t c) {
    long i = lookup(r, n, 4, true, c);
    return i < 0 || (c - r[i].lo) % r[i].stride ? c : (uint32_t)((int32_t)c + r[i].delta);
}

static const struct uc_map *map_find(const struct uc_map *m, size_t n, uint32_t c) {
    long i = lookup(m, n, 4, false, c);
    return i < 0 ? NULL : &m[i];
}

uint32_t tok_uc_class(uint32_t c) {
    long i = lookup(uc_class, COUNT(uc_class), 3, true, c);
    return i < 0 ? TOK_UC_OTHER : uc_class[i].val;
}

uint32_t tok_uc_fold(uint32_t c) {
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    long i = lookup(uc_fold, COUNT(uc_fold), 2, false, c);
    return i < 0 ? c : uc_fold[i].to;
}

bool tok_uc_re_space(uint32_t c) { return IN_RANGES(uc_re_space, c); }
bool tok_uc_py_space(uint32_t c) { return IN_RANGES(uc_py_space, c); }
bool tok_uc_decimal(uint32_t c) { return IN_RANGES(uc_decimal, c); }

uint32_t tok_uc_cp1252(uint32_t b) {
    return b >= 0x80 && b <= 0x9F ? uc_cp1252[b - 0x80] : b;
}

size_t tok_uc_fix_char(uint32_t c, uint32_t out[9]) {
    uint32_t lig[3] = {tok_uc_cp1252(c), 0, 0};
    const struct uc_map *m = map_find(uc_ligature, COUNT(uc_ligature), lig[0]);
    if (m)
        memcpy(lig, m->to, sizeof lig);
    size_t n = 0;
    for (int k = 0; k < 3 && lig[k]; k++) {
        uint32_t w[3] = {delta_map(uc_width, COUNT(uc_width), lig[k]), 0, 0};
        const struct uc_map *wm = map_find(uc_width_multi, COUNT(uc_width_multi), lig[k]);
        if (wm)
            memcpy(w, wm->to, sizeof w);
        for (int q = 0; q < 3 && w[q]; q++) {
            uint32_t e = w[q];
            if (e == 0x2BC || (e >= 0x2018 && e <= 0x201B))
                e = '\'';
            else if (e >= 0x201C && e <= 0x201F)
                e = '"';
            out[n++] = e;
        }
    }
    return n;
}

const char *tok_uc_entity(const char *name) {
    size_t lo = 0, hi = COUNT(uc_entity);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, uc_entity[mid].name);
        if (c == 0)
            return uc_entity[mid].utf8;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static bool case_ignorable(uint32_t c) { return IN_RANGES(uc_case_ignorable, c); }

/* CPython's handle_capital_sigma: final form when preceded by a cased
 * letter and not followed by one, skipping case-ignorable characters. */
static bool final_sigma(const uint32_t *s, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && case_ignorable(s[j - 1]))
        j--;
    if (j == 0 || !IN_RANGES(uc_cased, s[j - 1]))
        return false;
    for (j = i + 1; j < n && case_ignorable(s[j]); j++)
        ;
    return j == n || !IN_RANGES(uc_cased, s[j]);
}

size_t tok_uc_lower(const uint32_t *s, size_t n, size_t i, uint32_t out[2]) {
    uint32_t c = s[i];
    if (c < 0x80) {
        out[0] = c >= 'A' && c <= 'Z' ? c + 32 : c;
    } else if (c == 0x130) { /* the one multi-character lowercase */
        out[0] = 'i';
        out[1] = 0x307;
        return 2;
    } else if (c == 0x3A3) {
        out[0] = final_sigma(s, n, i) ? 0x3C2 : 0x3C3;
    } else {
        out[0] = delta_map(uc_lower, COUNT(uc_lower), c);
    }
    return 1;
}

/* ------------------------------------------------------------------ NFC */

#define H_SBASE 0xAC00u
#define H_LBASE 0x1100u
#define H_VBASE 0x1161u
#define H_TBASE 0x11A7u
#define H_LCOUNT 19u
#define H_VCOUNT 21u
#define H_TCOUNT 28u
#define H_SCOUNT (H_LCOUNT * H_VCOUNT * H_TCOUNT)

static uint32_t ccc(uint32_t c) {
    long i = c < 0x300 ? -1 : lookup(uc_ccc, COUNT(uc_ccc), 3, true, c);
    return i < 0 ? 0 : uc_ccc[i].val;
}

static size_t decompose(uint32_t c, uint32_t *out) {
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE;
        out[0] = H_LBASE + s / (H_VCOUNT * H_TCOUNT);
        out[1] = H_VBASE + s % (H_VCOUNT * H_TCOUNT) / H_TCOUNT;
        out[2] = H_TBASE + s % H_TCOUNT;
        return s % H_TCOUNT ? 3 : 2;
    }
    long i = lookup(uc_decomp, COUNT(uc_decomp), 3, false, c);
    if (i < 0) {
        out[0] = c;
        return 1;
    }
    size_t n = decompose(uc_decomp[i].b, out);
    return uc_decomp[i].c ? n + decompose(uc_decomp[i].c, out + n) : n;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 &&
        b > H_TBASE && b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    uint64_t key = (uint64_t)a << 32 | b;
    size_t lo = 0, hi = COUNT(uc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t k = (uint64_t)uc_comp[mid].a << 32 | uc_comp[mid].b;
        if (k == key)
            return uc_comp[mid].c;
        if (k < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Canonical ordering of one run of non-starters: a stable sort by class.
 * Counting sort for long runs keeps hostile input (thousands of marks)
 * linear; `scratch` holds n entries. */
static void sort_marks(uint32_t *v, size_t n, uint32_t *scratch) {
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && ccc(v[j - 1]) > ccc(v[j]); j--) {
                uint32_t t = v[j];
                v[j] = v[j - 1];
                v[j - 1] = t;
            }
        return;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++)
        start[ccc(v[i]) + 1]++;
    for (int k = 1; k <= 256; k++)
        start[k] += start[k - 1];
    for (size_t i = 0; i < n; i++)
        scratch[start[ccc(v[i])]++] = v[i];
    memcpy(v, scratch, n * sizeof *v);
}

size_t tok_uc_nfc(const uint32_t *in, size_t n, uint32_t *out, uint32_t *tmp) {
    bool plain = true; /* nothing below U+0300 decomposes or combines */
    for (size_t i = 0; i < n && plain; i++)
        plain = in[i] < 0x300;
    if (plain) {
        memmove(out, in, n * sizeof *in);
        return n;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += decompose(in[i], tmp + m);
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && ccc(tmp[j]))
            j++;
        if (j - i > 1)
            sort_marks(tmp + i, j - i, out); /* out is free until composition */
        i = j > i ? j : i + 1;
    }
    /* Canonical composition: a character joins the last starter unless a
     * character in between has class 0 or >= its own. */
    size_t o = 0, starter = SIZE_MAX;
    uint32_t last_cc = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = tmp[i], cc = ccc(c);
        if (starter != SIZE_MAX && (o - 1 == starter || (last_cc != 0 && last_cc < cc))) {
            uint32_t comp = compose(out[starter], c);
            if (comp) {
                out[starter] = comp;
                continue;
            }
        }
        if (cc == 0)
            starter = o;
        out[o++] = c;
        last_cc = cc;
    }
    return o;
}
