/* tokenizer: CLIP BPE, reproducing transformers' CLIPTokenizer + ftfy.
 * See tokenizer.h for the pipeline; each step below names the Python code it
 * mirrors, because exactness (not plausibility) is the goal. */
#include "tokenizer.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <jansson.h>

#include "unicode_tables.h"

/* simple_tokenizer.py: merges[1:49152-256-2+1] */
#define N_MERGES (49152 - 256 - 2)
#define N_VOCAB (512 + N_MERGES + 2)
#define MAX_INFLATE (64u << 20) /* the real file inflates to 3.2 MB */
/* ftfy repeats its fixers until nothing changes; nested escapes like
 * "&amp;amp;amp;" need one pass per level. Capped so a hostile prompt
 * cannot make it quadratic. */
#define MAX_FIX_PASSES 16
#define PAIR_BITS 17

_Static_assert(N_VOCAB <= 0xFFFF, "pair keys pack two ids in 16 bits each");

struct pair_slot {
    uint32_t key; /* a << 16 | b, UINT32_MAX when empty */
    int32_t rank;
    int32_t id;
};

struct tokenizer {
    int32_t byte_id[2][256]; /* byte -> id of its bytes_to_unicode char, [1]: + "</w>" */
    int32_t bos, eos;
    struct pair_slot *pairs; /* 1 << PAIR_BITS open-addressed slots */
};

/* ------------------------------------------------------ code point buffers */

struct cpbuf {
    uint32_t *v;
    size_t n, cap;
    bool oom;
};

static void cb_reserve(struct cpbuf *b, size_t extra) {
    if (b->oom || b->n + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra)
        cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) {
        b->oom = true;
        return;
    }
    b->v = v;
    b->cap = cap;
}

static void cb_push(struct cpbuf *b, uint32_t c) {
    cb_reserve(b, 1);
    if (!b->oom)
        b->v[b->n++] = c;
}

static void cb_push_n(struct cpbuf *b, const uint32_t *v, size_t n) {
    cb_reserve(b, n);
    if (!b->oom && n) {
        memcpy(b->v + b->n, v, n * sizeof *v);
        b->n += n;
    }
}

static void cb_swap(struct cpbuf *a, struct cpbuf *b) {
    struct cpbuf t = *a;
    *a = *b;
    *b = t;
}

static bool cb_equal(const struct cpbuf *a, const struct cpbuf *b) {
    return a->n == b->n && (a->n == 0 || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

/* Python's bytes.decode("utf-8", "replace"): one U+FFFD per maximal
 * ill-formed subsequence (Unicode 3.9, "substitution of maximal subparts"). */
static void utf8_decode(const uint8_t *s, size_t n, struct cpbuf *out) {
    size_t i = 0;
    while (i < n) {
        uint8_t b0 = s[i];
        if (b0 < 0x80) {
            cb_push(out, b0);
            i++;
            continue;
        }
        int len = b0 >= 0xC2 && b0 <= 0xDF ? 2 : b0 >= 0xE0 && b0 <= 0xEF ? 3
                  : b0 >= 0xF0 && b0 <= 0xF4 ? 4 : 0;
        uint8_t lo2 = 0x80, hi2 = 0xBF; /* bounds for the second byte */
        if (b0 == 0xE0) lo2 = 0xA0;
        if (b0 == 0xED) hi2 = 0x9F;
        if (b0 == 0xF0) lo2 = 0x90;
        if (b0 == 0xF4) hi2 = 0x8F;
        uint32_t cp = len == 2 ? b0 & 0x1Fu : len == 3 ? b0 & 0x0Fu : b0 & 0x07u;
        int k = 1;
        for (; k < len && i + (size_t)k < n; k++) {
            uint8_t c = s[i + k];
            if (k == 1 ? (c < lo2 || c > hi2) : (c & 0xC0) != 0x80)
                break;
            cp = cp << 6 | (c & 0x3Fu);
        }
        if (len && k == len) {
            cb_push(out, cp);
            i += (size_t)len;
        } else {
            cb_push(out, 0xFFFD);
            i += (size_t)(k > 1 ? k : 1);
        }
    }
}

static size_t utf8_len(uint32_t c) {
    return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

static size_t utf8_put(uint32_t c, uint8_t *o) {
    static const uint8_t lead[5] = {0, 0, 0xC0, 0xE0, 0xF0};
    size_t n = utf8_len(c);
    for (size_t k = n - 1; k > 0; k--, c >>= 6)
        o[k] = (uint8_t)(0x80 | (c & 0x3F));
    o[0] = (uint8_t)(lead[n] | c);
    return n;
}

/* ------------------------------------------------------------ ftfy fixers */

static bool is_alnum_ascii(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int hexval(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* html.unescape() of a whole "&#...;" reference, as ftfy keeps it only when
 * the semicolon was consumed. Returns false to leave the text alone. */
static bool numeric_ref(const uint32_t *body, size_t n, struct cpbuf *out) {
    bool hex = body[0] == 'x' || body[0] == 'X';
    size_t i = hex ? 1 : 0;
    if (i == n)
        return false;
    uint64_t num = 0;
    for (; i < n; i++) {
        int d = hex ? hexval(body[i]) : (body[i] >= '0' && body[i] <= '9' ? (int)(body[i] - '0') : -1);
        if (d < 0)
            return false;
        if (num <= 0x10FFFF) /* saturate: anything larger is U+FFFD anyway */
            num = num * (hex ? 16 : 10) + (uint64_t)d;
    }
    /* html._invalid_charrefs, then surrogates/out of range, then
     * html._invalid_codepoints (which unescape to nothing). */
    if (num == 0)
        cb_push(out, 0xFFFD);
    else if (num == 0x0D)
        cb_push(out, '\r');
    else if (num >= 0x80 && num <= 0x9F)
        cb_push(out, tok_uc_cp1252((uint32_t)num));
    else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
        cb_push(out, 0xFFFD);
    else if ((num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) ||
             (num >= 0x7F && num <= 0x9F) || (num >= 0xFDD0 && num <= 0xFDEF) ||
             (num & 0xFFFE) == 0xFFFE)
        ;
    else
        cb_push(out, (uint32_t)num);
    return true;
}

static const char *entity_find(const uint32_t *name, size_t n) {
    char key[25];
    for (size_t i = 0; i < n; i++)
        key[i] = (char)name[i];
    key[n] = 0;
    return tok_uc_entity(key);
}

/* ftfy.fixes.unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; */
static void fix_html(const struct cpbuf *in, struct cpbuf *out) {
    const uint32_t *v = in->v;
    size_t i = 0, n = in->n;
    while (i < n) {
        if (v[i] != '&') {
            cb_push(out, v[i++]);
            continue;
        }
        size_t j = i + 1;
        bool num = j < n && v[j] == '#';
        j += num;
        size_t k = j;
        while (k < n && k - j <= 24 && is_alnum_ascii(v[k]))
            k++;
        if (k == j || k - j > 24 || k >= n || v[k] != ';') {
            cb_push(out, v[i++]);
            continue;
        }
        const char *val = num ? NULL : entity_find(v + j, k - j);
        if (val)
            utf8_decode((const uint8_t *)val, strlen(val), out);
        else if (!num || !numeric_ref(v + j, k - j, out))
            cb_push_n(out, v + i, k + 1 - i);
        i = k + 1;
    }
}

/* fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes:
 * per-character translations, so one pass applies them in ftfy's order. */
static void fix_chars(const struct cpbuf *in, struct cpbuf *out) {
    uint32_t rep[9];
    for (size_t i = 0; i < in->n; i++)
        if (in->v[i] < 0x80)
            cb_push(out, in->v[i]);
        else
            cb_push_n(out, rep, tok_uc_fix_char(in->v[i], rep));
}

/* fix_line_breaks, then remove_terminal_escapes (\033\[[\d;]*[a-zA-Z], with
 * \d meaning any Nd digit as in Python's re), then remove_control_chars. */
static void fix_controls(struct cpbuf *a, struct cpbuf *b) {
    b->n = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint32_t c = a->v[i];
        if (c == '\r' && i + 1 < a->n && a->v[i + 1] == '\n')
            continue;
        cb_push(b, c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85 ? '\n' : c);
    }
    a->n = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->v[i] == 0x1B && i + 1 < b->n && b->v[i + 1] == '[') {
            size_t k = i + 2;
            while (k < b->n && (b->v[k] == ';' || tok_uc_decimal(b->v[k])))
                k++;
            uint32_t e = k < b->n ? b->v[k] : 0;
            if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
                i = k;
                continue;
            }
        }
        cb_push(a, b->v[i]);
    }
    b->n = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint32_t c = a->v[i];
        bool ctl = c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
                   (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
        if (!ctl)
            cb_push(b, c);
    }
}

/* ----------------------------------------------------------- the cleaning */

struct work {
    struct cpbuf a, b, c, orig;
};

/* ftfy.fix_and_explain on one line: the fixers in order, repeated until the
 * text stops changing (fix_encoding is not reproduced, see tokenizer.h). */
static void fix_segment(struct work *w, bool html) {
    for (int pass = 0; pass < MAX_FIX_PASSES; pass++) {
        w->orig.n = 0;
        cb_push_n(&w->orig, w->a.v, w->a.n);
        if (html) {
            w->b.n = 0;
            fix_html(&w->a, &w->b);
            cb_swap(&w->a, &w->b);
        }
        w->b.n = 0;
        fix_chars(&w->a, &w->b);
        fix_controls(&w->b, &w->a);
        w->b.n = w->c.n = 0;
        cb_reserve(&w->b, w->a.n * TOK_UC_NFC_GROWTH);
        cb_reserve(&w->c, w->a.n * TOK_UC_NFC_GROWTH);
        if (w->b.oom || w->c.oom)
            return;
        w->b.n = tok_uc_nfc(w->a.v, w->a.n, w->b.v, w->c.v);
        cb_swap(&w->a, &w->b);
        if (w->a.oom || w->b.oom || w->c.oom || w->orig.oom || cb_equal(&w->a, &w->orig))
            return;
    }
}

/* ftfy.fix_text: line by line; once a line contains '<', HTML unescaping is
 * off for it and every later line (unescape_html="auto"). Then
 * CLIPTokenizer's whitespace_clean (regex \s+ -> ' ', str.strip()). */
static void clean(const uint32_t *v, size_t n, struct work *w, struct cpbuf *out) {
    bool html = true;
    struct cpbuf fixed = {0};
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && v[j] != '\n')
            j++;
        j += j < n; /* the segment keeps its newline */
        for (size_t k = i; k < j && html; k++)
            html = v[k] != '<';
        w->a.n = 0;
        cb_push_n(&w->a, v + i, j - i);
        fix_segment(w, html);
        cb_push_n(&fixed, w->a.v, w->a.n);
        fixed.oom |= w->a.oom || w->b.oom || w->c.oom || w->orig.oom;
        i = j;
    }
    out->n = 0;
    out->oom |= fixed.oom;
    bool space = false;
    for (size_t i = 0; i < fixed.n; i++) {
        if (tok_uc_re_space(fixed.v[i])) {
            space = true;
            continue;
        }
        if (space)
            cb_push(out, ' ');
        space = false;
        cb_push(out, fixed.v[i]);
    }
    if (space)
        cb_push(out, ' ');
    free(fixed.v);
    size_t s = 0, e = out->n;
    while (s < e && tok_uc_py_space(out->v[s]))
        s++;
    while (e > s && tok_uc_py_space(out->v[e - 1]))
        e--;
    if (s && e > s)
        memmove(out->v, out->v + s, (e - s) * sizeof *out->v);
    out->n = e - s;
}

/* str.lower() (its final-sigma rule needs the whole string). */
static void lower(const struct cpbuf *in, struct cpbuf *out) {
    uint32_t rep[2];
    out->n = 0;
    for (size_t i = 0; i < in->n; i++)
        cb_push_n(out, rep, tok_uc_lower(in->v, in->n, i, rep));
}

/* ------------------------------------------------------------------- BPE */

struct sink {
    int32_t *ids;
    size_t cap, n;
    long long total;
};

static void emit(struct sink *s, int32_t id) {
    if (s->n < s->cap)
        s->ids[s->n++] = id;
    s->total++;
}

static const struct pair_slot *pair_get(const struct tokenizer *t, int32_t a, int32_t b) {
    uint32_t key = (uint32_t)a << 16 | (uint32_t)b;
    uint32_t mask = (1u << PAIR_BITS) - 1, h = (key * 0x9E3779B1u) >> (32 - PAIR_BITS);
    for (;; h = (h + 1) & mask) {
        const struct pair_slot *s = &t->pairs[h];
        if (s->key == key)
            return s;
        if (s->key == UINT32_MAX)
            return NULL;
    }
}

struct heap_ent {
    int32_t rank;
    uint32_t pos;
    int32_t a, b;
};

/* Per-word working memory, one block: linked list of symbols over byte
 * positions, the pair heap (at most 3 pushes per byte) and the bytes. */
struct bpe_scratch {
    void *block;
    struct heap_ent *heap;
    int32_t *sym, *prev, *next;
    uint8_t *bytes;
    size_t cap, hn;
};

static bool scratch_reserve(struct bpe_scratch *s, size_t n) {
    if (n <= s->cap)
        return true;
    n = n < 64 ? 64 : 2 * n;
    free(s->block);
    s->cap = 0;
    if (!(s->block = malloc(n * (3 * sizeof(struct heap_ent) + 3 * sizeof(int32_t) + 1))))
        return false;
    s->heap = s->block;
    s->sym = (int32_t *)(s->heap + 3 * n);
    s->prev = s->sym + n;
    s->next = s->prev + n;
    s->bytes = (uint8_t *)(s->next + n);
    s->cap = n;
    return true;
}

static bool ent_less(const struct heap_ent *x, const struct heap_ent *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(struct bpe_scratch *s, struct heap_ent e) {
    size_t i = s->hn++;
    while (i > 0 && ent_less(&e, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = e;
}

static struct heap_ent heap_pop(struct bpe_scratch *s) {
    struct heap_ent top = s->heap[0], last = s->heap[--s->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->hn)
            break;
        if (c + 1 < s->hn && ent_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!ent_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->hn)
        s->heap[i] = last;
    return top;
}

static void push_pair(const struct tokenizer *t, struct bpe_scratch *s, int32_t p) {
    if (p < 0 || s->next[p] < 0)
        return;
    const struct pair_slot *m = pair_get(t, s->sym[p], s->sym[s->next[p]]);
    if (m)
        heap_push(s, (struct heap_ent){m->rank, (uint32_t)p, s->sym[p], s->sym[s->next[p]]});
}

/* CLIPTokenizer.bpe: repeatedly merge the lowest-ranked adjacent pair, all
 * its occurrences left to right. A heap gives the same order because every
 * merge's parts are made by lower-ranked merges (checked at load), so a pair
 * a merge creates always ranks after the one being applied. */
static void bpe(const struct tokenizer *t, const uint8_t *bytes, size_t n, struct bpe_scratch *s,
                struct sink *out) {
    for (size_t i = 0; i < n; i++) {
        s->sym[i] = t->byte_id[i + 1 == n][bytes[i]]; /* the last one ends the word */
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    s->hn = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, s, (int32_t)i);
    while (s->hn) {
        struct heap_ent e = heap_pop(s);
        int32_t p = (int32_t)e.pos, q = s->next[p];
        if (s->sym[p] < 0 || q < 0 || s->sym[p] != e.a || s->sym[q] != e.b)
            continue; /* stale: a neighbour was merged since */
        s->sym[p] = pair_get(t, e.a, e.b)->id;
        s->sym[q] = -1;
        s->next[p] = s->next[q];
        if (s->next[q] >= 0)
            s->prev[s->next[q]] = p;
        push_pair(t, s, s->prev[p]);
        push_pair(t, s, p);
    }
    for (int32_t p = 0; p >= 0; p = s->next[p])
        emit(out, s->sym[p]);
}

/* ----------------------------------------------------- pre-tokenization */

static const char START_TEXT[] = "<|startoftext|>", END_TEXT[] = "<|endoftext|>";

/* Matches `lit` at v[i] exactly, or (fold) with the regex's IGNORECASE. */
static size_t match_lit(const uint32_t *v, size_t n, size_t i, const char *lit, bool folded) {
    size_t len = strlen(lit);
    if (n - i < len)
        return 0;
    for (size_t k = 0; k < len; k++)
        if ((folded ? tok_uc_fold(v[i + k]) : v[i + k]) != (uint32_t)lit[k])
            return 0;
    return len;
}

/* Length of the contraction alternative ('s|'t|'re|'ve|'m|'ll|'d) at i. */
static size_t contraction(const uint32_t *v, size_t n, size_t i) {
    if (v[i] != '\'' || i + 1 >= n)
        return 0;
    uint32_t c = tok_uc_fold(v[i + 1]), d = i + 2 < n ? tok_uc_fold(v[i + 2]) : 0;
    if (c == 's' || c == 't' || c == 'm' || c == 'd')
        return 2;
    return ((c == 'r' || c == 'v') && d == 'e') || (c == 'l' && d == 'l') ? 3 : 0;
}

/* re.findall(CLIP's pattern) over the cleaned, lowercased text, each match
 * byte-encoded and BPE'd (the exact special strings map straight to ids). */
static df_status tokenize_clean(const struct tokenizer *t, const struct cpbuf *txt,
                                struct bpe_scratch *s, struct sink *out) {
    const uint32_t *v = txt->v;
    for (size_t i = 0, n = txt->n, len; i < n; i += len) {
        int special = 0;
        if ((len = match_lit(v, n, i, START_TEXT, true)))
            special = match_lit(v, n, i, START_TEXT, false) ? 1 : 0;
        else if ((len = match_lit(v, n, i, END_TEXT, true)))
            special = match_lit(v, n, i, END_TEXT, false) ? 2 : 0;
        else if (!(len = contraction(v, n, i))) {
            uint32_t cl = tok_uc_class(v[i]);
            len = 1;
            if (cl == TOK_UC_NONE)
                continue;
            if (cl != TOK_UC_N)
                while (i + len < n && tok_uc_class(v[i + len]) == cl)
                    len++;
        }
        if (special) {
            emit(out, special == 1 ? t->bos : t->eos);
            continue;
        }
        size_t nb = 0;
        for (size_t k = 0; k < len; k++)
            nb += utf8_len(v[i + k]);
        if (!scratch_reserve(s, nb))
            return df_error(DF_ENOMEM, "tokenizer: no memory for a %zu-byte word", nb);
        nb = 0;
        for (size_t k = 0; k < len; k++)
            nb += utf8_put(v[i + k], s->bytes + nb);
        bpe(t, s->bytes, nb, s, out);
    }
    return DF_OK;
}

df_status tok_encode(const struct tokenizer *t, const char *utf8, int max_len, int32_t pad_id,
                     int32_t *ids, int *n_tokens) {
    if (!t || !utf8 || !ids || max_len < 2)
        return df_error(DF_EINVAL, "tok_encode: bad arguments (max_len %d)", max_len);
    size_t len = strnlen(utf8, (size_t)TOK_MAX_INPUT + 1);
    if (len > TOK_MAX_INPUT)
        return df_error(DF_EINVAL, "tok_encode: prompt longer than %u bytes", TOK_MAX_INPUT);

    struct cpbuf text = {0}, clean_txt = {0}, low = {0};
    struct work w = {0};
    struct bpe_scratch s = {0};
    struct sink out = {ids + 1, (size_t)max_len - 2, 0, 0};
    df_status st = DF_OK;
    utf8_decode((const uint8_t *)utf8, len, &text);

    /* The slow tokenizer's added-token trie splits the exact special strings
     * off before any cleaning; every other piece is tokenized on its own. */
    for (size_t i = 0, start = 0; i <= text.n && st == DF_OK && !text.oom;) {
        size_t sp = 0;
        int which = 0;
        if (i < text.n && (sp = match_lit(text.v, text.n, i, START_TEXT, false)))
            which = 1;
        else if (i < text.n && (sp = match_lit(text.v, text.n, i, END_TEXT, false)))
            which = 2;
        if (!which && i < text.n) {
            i++;
            continue;
        }
        if (i > start) {
            clean(text.v + start, i - start, &w, &clean_txt);
            lower(&clean_txt, &low);
            if (clean_txt.oom || low.oom)
                st = df_error(DF_ENOMEM, "tokenizer: out of memory");
            else
                st = tokenize_clean(t, &low, &s, &out);
        }
        if (which)
            emit(&out, which == 1 ? t->bos : t->eos);
        i += which ? sp : 1;
        start = i;
    }
    if (st == DF_OK && text.oom)
        st = df_error(DF_ENOMEM, "tokenizer: out of memory");
    free(text.v);
    free(clean_txt.v);
    free(low.v);
    free(w.a.v);
    free(w.b.v);
    free(w.c.v);
    free(w.orig.v);
    free(s.block);
    if (st != DF_OK)
        return st;

    ids[0] = t->bos;
    ids[1 + out.n] = t->eos;
    for (int i = (int)out.n + 2; i < max_len; i++)
        ids[i] = pad_id;
    if (n_tokens)
        *n_tokens = out.total + 2 > INT_MAX ? INT_MAX : (int)(out.total + 2);
    return DF_OK;
}

/* --------------------------------------------------------------- loading */

/* Inflates just enough of the gzip stream for the header and N_MERGES
 * lines (the file holds 262k; CLIP uses the first 48894). */
static df_status inflate_merges(const void *gz, size_t len, char **text, size_t *text_len) {
    z_stream z = {0};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return df_error(DF_ENOMEM, "tokenizer: inflateInit failed");
    size_t cap = 1u << 21, n = 0, lines = 0;
    char *buf = malloc(cap);
    df_status st = buf ? DF_OK : df_error(DF_ENOMEM, "tokenizer: out of memory");
    z.next_in = (Bytef *)(uintptr_t)gz;
    while (st == DF_OK && lines <= N_MERGES) {
        if (n == cap) {
            char *nb = cap >= MAX_INFLATE ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                st = df_error(DF_EFORMAT, "tokenizer: vocabulary inflates past %u bytes", MAX_INFLATE);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t chunk = len - (size_t)((const Bytef *)z.next_in - (const Bytef *)gz);
        z.avail_in = chunk > UINT_MAX ? UINT_MAX : (uInt)chunk;
        z.next_out = (Bytef *)buf + n;
        uInt room = (uInt)(cap - n < 65536 ? cap - n : 65536); /* stop soon after the last line */
        z.avail_out = room;
        int r = inflate(&z, Z_NO_FLUSH);
        size_t got = room - z.avail_out;
        for (size_t i = n; i < n + got; i++)
            lines += buf[i] == '\n';
        n += got;
        if (r == Z_STREAM_END)
            break;
        if (r != Z_OK && !(r == Z_BUF_ERROR && z.avail_out == 0))
            st = df_error(DF_EFORMAT, "tokenizer: vocabulary is not valid gzip (%s)",
                          z.msg ? z.msg : "truncated");
    }
    inflateEnd(&z);
    if (st != DF_OK) {
        free(buf);
        return st;
    }
    *text = buf;
    *text_len = n;
    return DF_OK;
}

/* String -> id map used only while building: FNV-1a, open addressing. */
struct str_slot {
    uint32_t off, len;
    int32_t id;
};

static uint32_t fnv(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static void str_put(struct str_slot *tab, const char *arena, uint32_t off, uint32_t len, int32_t id) {
    uint32_t mask = (1u << PAIR_BITS) - 1;
    for (uint32_t h = fnv(arena + off, len) & mask;; h = (h + 1) & mask) {
        struct str_slot *s = &tab[h];
        if (s->id < 0 || (s->len == len && !memcmp(arena + s->off, arena + off, len))) {
            *s = (struct str_slot){off, len, id}; /* last wins, as in a dict */
            return;
        }
    }
}

static int32_t str_get(const struct str_slot *tab, const char *arena, const char *s, size_t len) {
    uint32_t mask = (1u << PAIR_BITS) - 1;
    for (uint32_t h = fnv(s, len) & mask;; h = (h + 1) & mask) {
        if (tab[h].id < 0)
            return -1;
        if (tab[h].len == len && !memcmp(arena + tab[h].off, s, len))
            return tab[h].id;
    }
}

/* bytes_to_unicode(): printable bytes map to themselves, the rest to
 * 256 + n in byte order; vocab ids follow that list's order: entry i is
 * byte byte_of[i], spelled as code point cs[i]. */
static void bytes_to_unicode(uint32_t cs[256], uint8_t byte_of[256]) {
    int order = 0;
    for (int pass = 0, extra = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++)
            if (((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) == !pass) {
                byte_of[order] = (uint8_t)b;
                cs[order++] = pass ? 256u + (uint32_t)extra++ : (uint32_t)b;
            }
}

static df_status build(struct tokenizer *t, const char *text, size_t text_len) {
    uint32_t cs[256];
    uint8_t byte_of[256];
    bytes_to_unicode(cs, byte_of);

    size_t acap = text_len + 512 * 8 + 64;
    char *arena = malloc(acap);
    struct str_slot *tab = malloc(sizeof *tab << PAIR_BITS);
    int32_t *made_by = malloc(N_VOCAB * sizeof *made_by); /* last merge rank making an id */
    /* per merge: arena offset, length of a, length of b, id of a+b */
    uint32_t (*part)[4] = malloc(N_MERGES * sizeof *part);
    uint32_t part_of_byte[512];                             /* arena offset of ids < 512 */
    df_status st = DF_OK;
    if (!arena || !tab || !made_by || !part) {
        st = df_error(DF_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)1 << PAIR_BITS; i++)
        tab[i].id = -1;
    uint32_t an = 0;
    for (int i = 0; i < 512; i++) {
        uint8_t u[4];
        size_t ul = utf8_put(cs[i % 256], u);
        uint32_t off = an;
        memcpy(arena + an, u, ul);
        an += (uint32_t)ul;
        if (i >= 256) {
            memcpy(arena + an, "</w>", 4);
            an += 4;
        }
        str_put(tab, arena, off, an - off, i);
        part_of_byte[i] = off;
    }
    for (int i = 0; i < N_VOCAB; i++)
        made_by[i] = -1;
    /* Line 0 is the "#version" header. */
    const char *p = memchr(text, '\n', text_len), *end = text + text_len;
    p = p ? p + 1 : end;
    for (int r = 0; r < N_MERGES; r++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) {
            if (p == end) {
                st = df_error(DF_EFORMAT, "tokenizer: vocabulary has %d merges, need %d", r, N_MERGES);
                goto done;
            }
            eol = end;
        }
        const char *f[3];
        size_t fl[3];
        int nf = 0;
        for (const char *q = p; q < eol;) { /* str.split() on ASCII whitespace */
            while (q < eol && (*q == ' ' || *q == '\t' || *q == '\r'))
                q++;
            if (q == eol)
                break;
            const char *w0 = q;
            while (q < eol && !(*q == ' ' || *q == '\t' || *q == '\r'))
                q++;
            if (nf < 3) {
                f[nf] = w0;
                fl[nf] = (size_t)(q - w0);
            }
            nf++;
        }
        if (nf != 2) {
            st = df_error(DF_EFORMAT, "tokenizer: merge line %d has %d fields", r + 1, nf);
            goto done;
        }
        uint32_t off = an;
        memcpy(arena + an, f[0], fl[0]);
        memcpy(arena + an + fl[0], f[1], fl[1]);
        an += (uint32_t)(fl[0] + fl[1]);
        part[r][0] = off;
        part[r][1] = (uint32_t)fl[0];
        part[r][2] = (uint32_t)fl[1];
        str_put(tab, arena, off, an - off, 512 + r);
        p = eol < end ? eol + 1 : end;
    }
    for (int i = 0; i < 512; i++) { /* ids as the encoder dict sees them: last wins */
        uint32_t end_off = i < 511 ? part_of_byte[i + 1] : part[0][0];
        t->byte_id[i >= 256][byte_of[i % 256]] =
            str_get(tab, arena, arena + part_of_byte[i], end_off - part_of_byte[i]);
    }
    for (int r = 0; r < N_MERGES; r++) {
        int32_t id = str_get(tab, arena, arena + part[r][0], part[r][1] + part[r][2]);
        part[r][3] = (uint32_t)id;
        made_by[id] = r;
    }
    for (uint32_t i = 0; i < 1u << PAIR_BITS; i++)
        t->pairs[i] = (struct pair_slot){UINT32_MAX, 0, 0};
    uint32_t mask = (1u << PAIR_BITS) - 1;
    for (int r = 0; r < N_MERGES; r++) {
        int32_t a = str_get(tab, arena, arena + part[r][0], part[r][1]);
        int32_t b = str_get(tab, arena, arena + part[r][0] + part[r][1], part[r][2]);
        if (a < 0 || b < 0)
            continue; /* a part no merge can produce: the pair never forms */
        if (made_by[a] >= r || made_by[b] >= r) {
            st = df_error(DF_EFORMAT, "tokenizer: merge %d uses a token made by a later merge", r + 1);
            goto done;
        }
        int32_t id = (int32_t)part[r][3];
        uint32_t key = (uint32_t)a << 16 | (uint32_t)b;
        for (uint32_t h = (key * 0x9E3779B1u) >> (32 - PAIR_BITS);; h = (h + 1) & mask) {
            struct pair_slot *s = &t->pairs[h];
            if (s->key == UINT32_MAX || s->key == key) {
                *s = (struct pair_slot){key, r, id}; /* last rank wins, as in a dict */
                break;
            }
        }
    }
    t->bos = 512 + N_MERGES;
    t->eos = 512 + N_MERGES + 1;
done:
    free(arena);
    free(tab);
    free(made_by);
    free(part);
    return st;
}

df_status tok_create(const void *vocab_gz, size_t len, struct tokenizer **out) {
    if (!vocab_gz || !out)
        return df_error(DF_EINVAL, "tok_create: NULL argument");
    *out = NULL;
    char *text = NULL;
    size_t text_len = 0;
    df_status st = inflate_merges(vocab_gz, len, &text, &text_len);
    if (st != DF_OK)
        return st;
    struct tokenizer *t = calloc(1, sizeof *t);
    if (t)
        t->pairs = malloc(sizeof *t->pairs << PAIR_BITS);
    if (!t || !t->pairs)
        st = df_error(DF_ENOMEM, "tokenizer: out of memory");
    else
        st = build(t, text, text_len);
    free(text);
    if (st != DF_OK) {
        tok_destroy(t);
        return st;
    }
    *out = t;
    return DF_OK;
}

df_status tok_create_from_file(const char *path, struct tokenizer **out) {
    if (!path || !out)
        return df_error(DF_EINVAL, "tok_create_from_file: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return df_error(DF_EIO, "tokenizer: cannot open %s", path);
    long size = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    char *buf = size >= 0 && size <= (long)MAX_INFLATE ? malloc((size_t)size + 1) : NULL;
    df_status st = DF_OK;
    if (!buf)
        st = df_error(size < 0 ? DF_EIO : DF_ENOMEM, "tokenizer: cannot load %s", path);
    else if (fseek(f, 0, SEEK_SET) || fread(buf, 1, (size_t)size, f) != (size_t)size)
        st = df_error(DF_EIO, "tokenizer: read error on %s", path);
    fclose(f);
    if (st == DF_OK)
        st = tok_create(buf, (size_t)size, out);
    free(buf);
    return st;
}

void tok_destroy(struct tokenizer *t) {
    if (!t)
        return;
    free(t->pairs);
    free(t);
}

int32_t tok_bos(const struct tokenizer *t) { return t->bos; }
int32_t tok_eos(const struct tokenizer *t) { return t->eos; }

/* ------------------------------------------------------ vocabulary lookup */

#define MAX_TOKEN_SYMBOLS 64 /* CLIP's longest token spells 32 bytes */

df_status tok_token_id(const struct tokenizer *t, const char *token, int32_t *id) {
    if (strcmp(token, "<|startoftext|>") == 0 || strcmp(token, "<|endoftext|>") == 0) {
        *id = token[2] == 's' ? t->bos : t->eos;
        return DF_OK;
    }
    /* the token's bytes, through the inverse of bytes_to_unicode() */
    uint32_t cs[256];
    uint8_t byte_of[256], sym[MAX_TOKEN_SYMBOLS];
    bytes_to_unicode(cs, byte_of);
    size_t len = strlen(token), n = 0;
    bool eow = len > 4 && strcmp(token + len - 4, "</w>") == 0;
    struct cpbuf cp = {0};
    utf8_decode((const uint8_t *)token, eow ? len - 4 : len, &cp);
    bool ok = !cp.oom && cp.n > 0 && cp.n <= MAX_TOKEN_SYMBOLS;
    for (size_t i = 0; ok && i < cp.n; i++) {
        int k = 0;
        while (k < 256 && cs[k] != cp.v[i])
            k++;
        ok = k < 256;
        if (ok)
            sym[n++] = byte_of[k];
    }
    free(cp.v);
    if (!ok)
        return df_error(DF_EINVAL, "token \"%s\" is not in the CLIP vocabulary", token);
    /* span[i][j]: id of the token spelling symbols i..j, or -1. A token
     * longer than one symbol is the merge of two shorter tokens, so the
     * pairs table rebuilds it bottom-up. */
    int32_t span[MAX_TOKEN_SYMBOLS][MAX_TOKEN_SYMBOLS];
    for (size_t w = 1; w <= n; w++)
        for (size_t i = 0; i + w <= n; i++) {
            size_t j = i + w - 1;
            span[i][j] = w == 1 ? t->byte_id[eow && j == n - 1][sym[i]] : -1;
            for (size_t k = i; k < j && span[i][j] < 0; k++) {
                const struct pair_slot *p = span[i][k] >= 0 && span[k + 1][j] >= 0
                                                ? pair_get(t, span[i][k], span[k + 1][j])
                                                : NULL;
                if (p)
                    span[i][j] = p->id;
            }
        }
    if (span[0][n - 1] < 0)
        return df_error(DF_EINVAL, "token \"%s\" is not in the CLIP vocabulary", token);
    *id = span[0][n - 1];
    return DF_OK;
}

/* pad_token of a tokenizer JSON file: a string, or an AddedToken dict.
 * *found = false when the file or the key is absent. */
static df_status pad_token_of(const char *path, json_t **root, const char **token, bool *found) {
    *found = false;
    *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return DF_OK;
    json_error_t err;
    *root = json_loadf(f, 0, &err);
    fclose(f);
    if (!*root)
        return df_error(DF_EFORMAT, "%s: %s (line %d)", path, err.text, err.line);
    json_t *v = json_object_get(*root, "pad_token");
    if (!v)
        return DF_OK;
    if (json_is_null(v))
        return df_error(DF_EINVAL, "%s: pad_token is null: this tokenizer cannot pad to a fixed length", path);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return df_error(DF_EFORMAT, "%s: pad_token is neither a string nor a dict with a \"content\" string", path);
    *token = json_string_value(v);
    *found = true;
    return DF_OK;
}

/* Id of `token` in the tokenizer_config's added_tokens_decoder, or -1. */
static int32_t added_token_id(const json_t *config, const char *token) {
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(config, "added_tokens_decoder"), key, v) {
        const char *content = json_string_value(json_object_get(v, "content"));
        char *end;
        long id = strtol(key, &end, 10);
        if (content && strcmp(content, token) == 0 && *key && !*end && id >= 0 && id <= INT32_MAX)
            return (int32_t)id;
    }
    return -1;
}

df_status tok_pad_id_from_folder(const struct tokenizer *t, const char *dir, int32_t *pad_id) {
    char map_path[4096], config_path[4096], vocab_path[4096];
    snprintf(map_path, sizeof map_path, "%s/special_tokens_map.json", dir);
    snprintf(config_path, sizeof config_path, "%s/tokenizer_config.json", dir);
    snprintf(vocab_path, sizeof vocab_path, "%s/vocab.json", dir);
    json_t *map = NULL, *config = NULL, *vocab = NULL;
    const char *token = "<|endoftext|>", *from = "CLIPTokenizer's default", *map_token = NULL, *config_token = NULL;
    bool in_map = false, in_config = false;
    df_status st = pad_token_of(map_path, &map, &map_token, &in_map);
    if (st == DF_OK)
        st = pad_token_of(config_path, &config, &config_token, &in_config);
    if (st == DF_OK && !map && !config)
        st = df_error(DF_EIO, "%s: neither special_tokens_map.json nor tokenizer_config.json here", dir);
    /* transformers lets special_tokens_map.json override tokenizer_config.json */
    if (in_map) {
        token = map_token;
        from = map_path;
    } else if (in_config) {
        token = config_token;
        from = config_path;
    }
    int64_t id = -1;
    FILE *vf = st == DF_OK ? fopen(vocab_path, "rb") : NULL;
    if (vf) {
        json_error_t err;
        vocab = json_loadf(vf, 0, &err);
        fclose(vf);
        if (!vocab)
            st = df_error(DF_EFORMAT, "%s: %s (line %d)", vocab_path, err.text, err.line);
        json_t *v = json_object_get(vocab, token);
        if (json_is_integer(v))
            id = json_integer_value(v);
    }
    if (st == DF_OK && id < 0)
        id = added_token_id(config, token);
    if (st == DF_OK && id < 0 && !vocab) {
        int32_t v;
        if (tok_token_id(t, token, &v) == DF_OK)
            id = v;
    }
    if (st == DF_OK && id < 0)
        st = df_error(DF_EINVAL, "%s: pad_token \"%s\" is not a token of %s", from, token,
                      vocab ? vocab_path : "the CLIP vocabulary");
    else if (st == DF_OK && id >= N_VOCAB)
        st = df_error(DF_EINVAL, "%s: pad_token \"%s\" has id %lld, outside the CLIP vocabulary (0..%d)", from,
                      token, (long long)id, N_VOCAB - 1);
    if (st == DF_OK)
        *pad_id = (int32_t)id;
    json_decref(map);
    json_decref(config);
    json_decref(vocab);
    return st;
}
