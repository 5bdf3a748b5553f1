/* infotext: A1111's create_infotext and parse_generation_parameters in C.
 * Where Python semantics matter (str.strip, json.dumps, the regex), the
 * helpers below reproduce them for the inputs an infotext can hold. */
#include "infotext.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* growable string                                                            */

struct info_buf {
    char *s;
    size_t len, cap;
    int oom;
};

static void info_put(struct info_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (n + 1 > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (n + 1 > cap - b->len)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void info_puts(struct info_buf *b, const char *s)
{
    info_put(b, s, strlen(s));
}

/* ------------------------------------------------------------------------ */
/* Python str semantics                                                       */

/* Byte length of the str.isspace() character at s[i], 0 if none. */
static size_t info_space_at(const char *s, size_t n, size_t i)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned c = u[i];
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f))
        return 1;
    if (c == 0xC2 && i + 1 < n && (u[i + 1] == 0x85 || u[i + 1] == 0xA0))
        return 2;
    if (c == 0xE1 && i + 2 < n && u[i + 1] == 0x9A && u[i + 2] == 0x80) /* U+1680 */
        return 3;
    if (c == 0xE2 && i + 2 < n) {
        unsigned c1 = u[i + 1], c2 = u[i + 2];
        if (c1 == 0x80 && (c2 <= 0x8A || c2 == 0xA8 || c2 == 0xA9 || c2 == 0xAF))
            return 3; /* U+2000..200A, 2028, 2029, 202F */
        if (c1 == 0x81 && c2 == 0x9F) /* U+205F */
            return 3;
    }
    if (c == 0xE3 && i + 2 < n && u[i + 1] == 0x80 && u[i + 2] == 0x80) /* U+3000 */
        return 3;
    return 0;
}

/* str.strip(): [*start, *end) of s[0..n). */
static void info_strip(const char *s, size_t n, size_t *start, size_t *end)
{
    size_t a = 0, b = n, k;
    while (a < b && (k = info_space_at(s, b, a)) > 0)
        a += k;
    while (b > a) {
        size_t c = b - 1; /* start of the last character */
        while (c > a && ((unsigned char)s[c] & 0xC0) == 0x80)
            c--;
        if (info_space_at(s, b, c) != b - c)
            break;
        b = c;
    }
    *start = a;
    *end = b;
}

/* json.dumps(text, ensure_ascii=False). */
static void info_put_json(struct info_buf *b, const char *s)
{
    info_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': info_put(b, "\\\"", 2); break;
        case '\\': info_put(b, "\\\\", 2); break;
        case '\n': info_put(b, "\\n", 2); break;
        case '\r': info_put(b, "\\r", 2); break;
        case '\t': info_put(b, "\\t", 2); break;
        case '\b': info_put(b, "\\b", 2); break;
        case '\f': info_put(b, "\\f", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                info_puts(b, esc);
            } else {
                info_put(b, (const char *)p, 1);
            }
        }
    }
    info_put(b, "\"", 1);
}

/* infotext_utils.quote: JSON-quoted only when it contains , \n or : */
static void info_put_value(struct info_buf *b, const char *v)
{
    if (strpbrk(v, ",\n:"))
        info_put_json(b, v);
    else
        info_puts(b, v);
}

/* A number as the A1111 UI sends it and Python prints it: integral values
 * without ".0" (JSON from the browser makes 7.0 an int), others as repr()
 * (the shortest digits that read back the same double). */
static void info_format_number(double v, char *out, size_t size)
{
    if (isfinite(v) && v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, size, "%.0f", v == 0.0 ? 0.0 : v);
        return;
    }
    if (!isfinite(v)) {
        snprintf(out, size, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* ------------------------------------------------------------------------ */
/* create_infotext                                                            */

struct info_entry {
    const char *key;
    char *value; /* owned; NULL = None */
};

struct info_list {
    struct info_entry *e;
    size_t n, cap;
    int oom;
};

/* dict semantics: a repeated key keeps its first position, takes the new value */
static void info_set(struct info_list *l, const char *key, const char *value)
{
    if (l->oom)
        return;
    char *v = NULL;
    if (value) {
        v = strdup(value);
        if (!v) {
            l->oom = 1;
            return;
        }
    }
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->e[i].key, key) == 0) {
            free(l->e[i].value);
            l->e[i].value = v;
            return;
        }
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        struct info_entry *p = realloc(l->e, cap * sizeof *p);
        if (!p) {
            free(v);
            l->oom = 1;
            return;
        }
        l->e = p;
        l->cap = cap;
    }
    l->e[l->n].key = key;
    l->e[l->n].value = v;
    l->n++;
}

static void info_set_num(struct info_list *l, const char *key, double v)
{
    char num[64];
    info_format_number(v, num, sizeof num);
    info_set(l, key, num);
}

static void info_set_int(struct info_list *l, const char *key, long long v)
{
    char num[32];
    snprintf(num, sizeof num, "%lld", v);
    info_set(l, key, num);
}

df_status info_format(const struct info_params *p, char **out)
{
    *out = NULL;
    if (!p)
        return df_error(DF_EINVAL, "info_format: no parameters");
    struct info_list l = {0};
    char size[64];

    info_set_int(&l, "Steps", p->steps);
    info_set(&l, "Sampler", p->sampler);
    info_set(&l, "Schedule type", !p->schedule_type ? "Automatic"
                                  : *p->schedule_type ? p->schedule_type : NULL);
    info_set_num(&l, "CFG scale", p->cfg_scale);
    info_set_int(&l, "Seed", (long long)p->seed);
    snprintf(size, sizeof size, "%dx%d", p->width, p->height);
    info_set(&l, "Size", size);
    info_set(&l, "Model hash", p->model_hash);
    info_set(&l, "Model", p->model_name);
    if (p->denoising_strength >= 0)
        info_set_num(&l, "Denoising strength", p->denoising_strength);
    else
        info_set(&l, "Denoising strength", NULL);
    if (p->clip_skip > 1)
        info_set_int(&l, "Clip skip", p->clip_skip);
    info_set(&l, "RNG", p->rng);
    for (size_t i = 0; i < p->n_extra; i++)
        if (p->extra && p->extra[i].key)
            info_set(&l, p->extra[i].key, p->extra[i].value);
    info_set(&l, "Version", p->version);

    struct info_buf b = {0};
    info_puts(&b, p->prompt ? p->prompt : "");
    if (p->negative_prompt && *p->negative_prompt) {
        info_puts(&b, "\nNegative prompt: ");
        info_puts(&b, p->negative_prompt);
    }
    info_puts(&b, "\n");
    int first = 1;
    for (size_t i = 0; i < l.n; i++) {
        if (!l.e[i].value)
            continue;
        if (!first)
            info_puts(&b, ", ");
        first = 0;
        if (strcmp(l.e[i].key, l.e[i].value) == 0) { /* A1111: k if k == v */
            info_puts(&b, l.e[i].key);
            continue;
        }
        info_puts(&b, l.e[i].key);
        info_puts(&b, ": ");
        info_put_value(&b, l.e[i].value);
    }
    int oom = l.oom || b.oom;
    for (size_t i = 0; i < l.n; i++)
        free(l.e[i].value);
    free(l.e);
    if (oom) {
        free(b.s);
        return df_error(DF_ENOMEM, "info_format: out of memory");
    }
    size_t a, e;
    info_strip(b.s, b.len, &a, &e);
    memmove(b.s, b.s + a, e - a);
    b.s[e - a] = '\0';
    *out = b.s;
    return DF_OK;
}

/* ------------------------------------------------------------------------ */
/* parse_generation_parameters                                                */

static int info_is_word(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '_' || c >= 0x80;
}

static int info_is_keychar(unsigned char c)
{
    return info_is_word(c) || c == ' ' || c == '-' || c == '/';
}

/* Python re \s on ASCII (the regex's \s*; multi-byte spaces are not skipped). */
static int info_is_re_space(unsigned char c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
}

/* One attempt of A1111's re_param at s[pos]: on success the key and value
 * spans and the end of the match. The regex cannot backtrack into a
 * different result (see the header comment in the .h), so a direct scan
 * reproduces it. */
static int info_match(const char *s, size_t n, size_t pos, size_t *ks, size_t *ke, size_t *vs,
                      size_t *ve, size_t *end)
{
    size_t i = pos;
    while (i < n && info_is_re_space((unsigned char)s[i]))
        i++;
    if (i >= n || !info_is_word((unsigned char)s[i]))
        return 0;
    *ks = i++;
    size_t j = i;
    while (j < n && info_is_keychar((unsigned char)s[j]))
        j++;
    if (j == i || j >= n || s[j] != ':')
        return 0;
    *ke = j;
    i = j + 1;
    while (i < n && info_is_re_space((unsigned char)s[i]))
        i++;
    /* "(?:\\.|[^\\"])+" followed by , or the end */
    if (i < n && s[i] == '"') {
        size_t k = i + 1, count = 0;
        while (k < n && s[k] != '"') {
            if (s[k] == '\\') {
                if (k + 1 >= n || s[k + 1] == '\n')
                    break;
                k += 2;
            } else {
                k++;
            }
            count++;
        }
        if (count > 0 && k < n && s[k] == '"' && (k + 1 == n || s[k + 1] == ',')) {
            *vs = i;
            *ve = k + 1;
            *end = k + 1 < n ? k + 2 : k + 1;
            return 1;
        }
    }
    /* [^,]* followed by , or the end */
    size_t k = i;
    while (k < n && s[k] != ',')
        k++;
    *vs = i;
    *ve = k;
    *end = k < n ? k + 1 : k;
    return 1;
}

/* json.loads of a whole quoted string; NULL if it is not exactly one valid
 * JSON string (A1111's unquote then keeps the raw text). */
static char *info_json_string(const char *s, size_t n)
{
    if (n < 2 || s[0] != '"')
        return NULL;
    char *out = malloc(n + 4);
    if (!out)
        return NULL;
    size_t k = 0, i = 1;
    while (i < n && s[i] != '"') {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20)
            goto bad;
        if (c != '\\') {
            out[k++] = (char)c;
            i++;
            continue;
        }
        if (++i >= n)
            goto bad;
        char e = s[i++];
        switch (e) {
        case '"': out[k++] = '"'; break;
        case '\\': out[k++] = '\\'; break;
        case '/': out[k++] = '/'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case 'n': out[k++] = '\n'; break;
        case 'r': out[k++] = '\r'; break;
        case 't': out[k++] = '\t'; break;
        case 'u': {
            unsigned long cp = 0;
            for (int d = 0; d < 4; d++, i++) {
                if (i >= n)
                    goto bad;
                char h = s[i];
                int v = h >= '0' && h <= '9' ? h - '0'
                      : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0)
                    goto bad;
                cp = cp << 4 | (unsigned long)v;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                unsigned long lo = 0;
                if (i + 6 > n || s[i] != '\\' || s[i + 1] != 'u')
                    goto bad; /* a lone surrogate cannot be UTF-8 */
                for (int d = 2; d < 6; d++) {
                    char h = s[i + (size_t)d];
                    int v = h >= '0' && h <= '9' ? h - '0'
                          : h >= 'a' && h <= 'f' ? h - 'a' + 10
                          : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (v < 0)
                        goto bad;
                    lo = lo << 4 | (unsigned long)v;
                }
                if (lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad;
            }
            if (cp == 0)
                goto bad; /* a C string cannot hold it */
            /* UTF-8 never needs more bytes than the 6-byte escape it replaces */
            if (cp < 0x80) {
                out[k++] = (char)cp;
            } else if (cp < 0x800) {
                out[k++] = (char)(0xC0 | cp >> 6);
                out[k++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[k++] = (char)(0xE0 | cp >> 12);
                out[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[k++] = (char)(0xF0 | cp >> 18);
                out[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                out[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[k++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            goto bad;
        }
    }
    if (i + 1 != n) /* unterminated, or data after the closing quote */
        goto bad;
    out[k] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

static char *info_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* Counts (and optionally collects) the regex matches in s[0..n). */
static int info_findall(const char *s, size_t n, struct info_parsed *into)
{
    int count = 0;
    size_t pos = 0;
    while (pos < n) {
        size_t ks, ke, vs, ve, end;
        if (!info_match(s, n, pos, &ks, &ke, &vs, &ve, &end)) {
            pos++;
            continue;
        }
        count++;
        pos = end > pos ? end : pos + 1;
        if (!into || ve == vs) /* A1111 drops an empty value (v[0] raises) */
            continue;
        char *key = info_strndup(s + ks, ke - ks);
        char *value = NULL;
        if (s[vs] == '"' && s[ve - 1] == '"')
            value = info_json_string(s + vs, ve - vs);
        if (!value)
            value = info_strndup(s + vs, ve - vs);
        struct info_pair *p = realloc(into->pairs, (into->count + 1) * sizeof *p);
        if (!key || !value || !p) {
            free(key);
            free(value);
            if (p)
                into->pairs = p;
            return -1;
        }
        into->pairs = p;
        p[into->count].key = key;
        p[into->count].value = value;
        into->count++;
    }
    return count;
}

static int info_append_line(char **acc, const char *line, size_t n)
{
    size_t old = *acc ? strlen(*acc) : 0;
    size_t sep = old ? 1 : 0; /* "" if empty else "\n" */
    char *p = realloc(*acc, old + sep + n + 1);
    if (!p)
        return -1;
    if (sep)
        p[old] = '\n';
    memcpy(p + old + sep, line, n);
    p[old + sep + n] = '\0';
    *acc = p;
    return 0;
}

df_status info_parse(const char *text, struct info_parsed **out)
{
    *out = NULL;
    if (!text)
        return df_error(DF_EINVAL, "info_parse: no text");
    struct info_parsed *r = calloc(1, sizeof *r);
    if (!r)
        return df_error(DF_ENOMEM, "info_parse: out of memory");
    r->prompt = calloc(1, 1);
    r->negative_prompt = calloc(1, 1);
    if (!r->prompt || !r->negative_prompt)
        goto oom;

    size_t a, e;
    info_strip(text, strlen(text), &a, &e);
    const char *s = text + a;
    size_t n = e - a;

    /* *lines, lastline = x.strip().split("\n") */
    const char *nl = NULL;
    for (size_t i = n; i > 0; i--)
        if (s[i - 1] == '\n') {
            nl = s + i - 1;
            break;
        }
    const char *last = nl ? nl + 1 : s;
    size_t last_n = (size_t)(s + n - last);
    size_t lines_n = nl ? (size_t)(nl - s) : 0;
    int has_params = info_findall(last, last_n, NULL) >= 3;
    if (!has_params)
        lines_n = n; /* the last line is prompt text too */
    int any_lines = nl != NULL || !has_params;

    int done_with_prompt = 0;
    size_t i = 0;
    while (any_lines && i <= lines_n) {
        size_t j = i;
        while (j < lines_n && s[j] != '\n')
            j++;
        size_t ls, le;
        info_strip(s + i, j - i, &ls, &le);
        const char *line = s + i + ls;
        size_t len = le - ls;
        if (len >= 16 && memcmp(line, "Negative prompt:", 16) == 0) {
            done_with_prompt = 1;
            size_t ts, te;
            info_strip(line + 16, len - 16, &ts, &te);
            line = line + 16 + ts;
            len = te - ts;
        }
        if (info_append_line(done_with_prompt ? &r->negative_prompt : &r->prompt, line, len))
            goto oom;
        /* append_line treats "" as empty, exactly like the Python code */
        i = j + 1;
        if (j >= lines_n)
            break;
    }
    if (has_params && info_findall(last, last_n, r) < 0)
        goto oom;
    *out = r;
    return DF_OK;
oom:
    info_parsed_destroy(r);
    return df_error(DF_ENOMEM, "info_parse: out of memory");
}

void info_parsed_destroy(struct info_parsed *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->count; i++) {
        free(p->pairs[i].key);
        free(p->pairs[i].value);
    }
    free(p->pairs);
    free(p->prompt);
    free(p->negative_prompt);
    free(p);
}

const char *info_get(const struct info_parsed *p, const char *key)
{
    const char *v = NULL;
    for (size_t i = 0; p && i < p->count; i++)
        if (strcmp(p->pairs[i].key, key) == 0)
            v = p->pairs[i].value;
    return v;
}
