/* multipart: see multipart.h. */
#include "multipart.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum delim { DELIM_NONE, DELIM_NEXT, DELIM_CLOSE };

/* RFC 7230's token characters. */
static bool is_tchar(char ch) {
    unsigned char c = (unsigned char)ch;
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?={}", c);
}

static const char *skip_ows(const char *p) {
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* Scans the parameters of a header value (`; name=token` or `; name="quoted"`,
 * RFC 7231 3.1.1.1), checking all of them, and copies the first one named
 * `want` (case-insensitive) to out, escapes undone. A value longer than cap
 * - 1 is cut there and *truncated set. */
static df_status get_param(const char *p, const char *want, char *out, size_t cap, bool *found, bool *truncated) {
    *found = *truncated = false;
    size_t wl = strlen(want);
    for (;;) {
        p = skip_ows(p);
        if (!*p) return DF_OK;
        if (*p != ';') return df_error(DF_EINVAL, "expected ';' before \"%.20s\"", p);
        p = skip_ows(p + 1);
        if (!*p || *p == ';') continue; /* "a;" and "a;;b": empty parameters */
        const char *n0 = p;
        while (is_tchar(*p)) p++;
        size_t nl = (size_t)(p - n0);
        if (nl == 0 || *p != '=') return df_error(DF_EINVAL, "a malformed parameter at \"%.20s\"", n0);
        p++;
        bool mine = !*found && nl == wl && strncasecmp(n0, want, nl) == 0;
        size_t k = 0;
        bool cut = false;
        if (*p == '"') {
            for (p++; *p != '"'; p++) {
                if (*p == '\\') p++; /* quoted-pair */
                if (!*p) return df_error(DF_EINVAL, "an unterminated quoted string");
                unsigned char c = (unsigned char)*p;
                if ((c < 32 && c != '\t') || c == 127)
                    return df_error(DF_EINVAL, "a control character in a quoted string");
                if (mine && k + 1 < cap) out[k++] = (char)c;
                else if (mine) cut = true;
            }
            p++;
        } else {
            const char *v0 = p;
            while (is_tchar(*p)) p++;
            if (p == v0) return df_error(DF_EINVAL, "parameter %.*s has no value", (int)nl, n0);
            for (const char *v = v0; mine && v < p; v++) {
                if (k + 1 < cap) out[k++] = *v;
                else cut = true;
            }
        }
        if (mine) {
            out[k] = 0;
            *found = true;
            *truncated = cut;
        }
    }
}

/* The value's first item (a media type, a disposition type): its length,
 * up to the first ';' or whitespace. */
static size_t first_item(const char *v) { return strcspn(v, "; \t"); }

df_status multipart_boundary(const char *content_type, char out[MULTIPART_BOUNDARY_MAX + 1]) {
    if (!content_type) return df_error(DF_EINVAL, "no Content-Type: send multipart/form-data");
    const char *p = skip_ows(content_type);
    size_t n = first_item(p);
    static const char type[] = "multipart/form-data";
    if (n != sizeof type - 1 || strncasecmp(p, type, n) != 0)
        return df_error(DF_EINVAL, "Content-Type is \"%.60s\", not multipart/form-data", content_type);
    bool found, cut;
    /* one more byte than a boundary may have, to tell a long one */
    char b[MULTIPART_BOUNDARY_MAX + 2];
    df_status st = get_param(p + n, "boundary", b, sizeof b, &found, &cut);
    if (st != DF_OK) return df_error(st, "Content-Type: %s", df_errmsg());
    if (!found) return df_error(DF_EINVAL, "Content-Type has no boundary parameter");
    size_t bl = strlen(b);
    if (bl == 0 || bl > MULTIPART_BOUNDARY_MAX || cut)
        return df_error(DF_EINVAL, "the boundary must have 1 to %d characters", MULTIPART_BOUNDARY_MAX);
    for (size_t i = 0; i < bl; i++) /* RFC 2046's bchars */
        if (!strchr("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ", b[i]))
            return df_error(DF_EINVAL, "the boundary has a character RFC 2046 does not allow");
    if (b[bl - 1] == ' ') return df_error(DF_EINVAL, "the boundary ends with a space");
    memcpy(out, b, bl + 1);
    return DF_OK;
}

/* What follows "--boundary" at p: "--" (the close delimiter), or optional
 * white space and CRLF (the next part); anything else is not a delimiter. */
static enum delim delim_kind(const uint8_t *p, const uint8_t *end, const uint8_t **after) {
    if (end - p >= 2 && p[0] == '-' && p[1] == '-') {
        *after = p + 2;
        return DELIM_CLOSE;
    }
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
        *after = p + 2;
        return DELIM_NEXT;
    }
    return DELIM_NONE;
}

/* The first delimiter ("\r\n--boundary", dl bytes) at or after p; NULL if
 * there is none before end. */
static const uint8_t *find_delim(const uint8_t *p, const uint8_t *end, const char *delim, size_t dl,
                                 enum delim *kind, const uint8_t **after) {
    while (p < end) {
        const uint8_t *q = memmem(p, (size_t)(end - p), delim, dl);
        if (!q) return NULL;
        if ((*kind = delim_kind(q + dl, end, after)) != DELIM_NONE) return q;
        p = q + 1;
    }
    return NULL;
}

/* One part's header block, NUL-terminated, lines split by CRLF. */
static df_status parse_headers(char *block, struct multipart_part *pt) {
    bool disposition = false;
    for (char *line = block; line;) {
        char *next = strstr(line, "\r\n");
        if (next) {
            *next = 0;
            next += 2;
        }
        if (*line == ' ' || *line == '\t') return df_error(DF_EINVAL, "folded header lines are not supported");
        char *colon = line;
        while (is_tchar(*colon)) colon++;
        if (colon == line || *colon != ':') return df_error(DF_EINVAL, "a malformed header \"%.40s\"", line);
        *colon = 0;
        char *value = (char *)skip_ows(colon + 1);
        size_t vl = strlen(value);
        while (vl && (value[vl - 1] == ' ' || value[vl - 1] == '\t')) value[--vl] = 0;
        for (size_t i = 0; i < vl; i++)
            if ((unsigned char)value[i] < 32 && value[i] != '\t')
                return df_error(DF_EINVAL, "a control character in header %s", line);
        if (strcasecmp(line, "Content-Disposition") == 0) {
            if (disposition) return df_error(DF_EINVAL, "two Content-Disposition headers");
            disposition = true;
            size_t n = first_item(value);
            if (n != 9 || strncasecmp(value, "form-data", 9) != 0)
                return df_error(DF_EINVAL, "Content-Disposition is \"%.40s\", not form-data", value);
            bool found, cut;
            df_status st = get_param(value + n, "name", pt->name, sizeof pt->name, &found, &cut);
            if (st != DF_OK) return df_error(st, "Content-Disposition: %s", df_errmsg());
            if (!found || !pt->name[0]) return df_error(DF_EINVAL, "Content-Disposition has no name");
            if (cut) return df_error(DF_EINVAL, "a part name longer than %d bytes", MULTIPART_NAME_MAX - 1);
            /* a cut file name is still a file: the name is only reported */
            st = get_param(value + n, "filename", pt->filename, sizeof pt->filename, &pt->is_file, &cut);
            if (st != DF_OK) return df_error(st, "Content-Disposition: %s", df_errmsg());
        } else if (strcasecmp(line, "Content-Type") == 0) {
            if (vl >= sizeof pt->content_type) return df_error(DF_EINVAL, "a part's Content-Type is too long");
            memcpy(pt->content_type, value, vl + 1);
        } /* other headers (Content-Transfer-Encoding is deprecated, RFC 7578 4.7) are ignored */
        line = next;
    }
    if (!disposition) return df_error(DF_EINVAL, "no Content-Disposition header");
    return DF_OK;
}

df_status multipart_parse(const char *content_type, const void *body, size_t len, struct multipart *out) {
    memset(out, 0, sizeof *out);
    char delim[MULTIPART_BOUNDARY_MAX + 5] = "\r\n--";
    df_status st = multipart_boundary(content_type, delim + 4);
    if (st != DF_OK) return st;
    size_t dl = strlen(delim);
    const uint8_t *p = body, *end = p + len, *after = NULL;
    enum delim kind = DELIM_NONE;
    /* the first delimiter may open the body, without the CRLF before it */
    if (len >= dl - 2 && memcmp(p, delim + 2, dl - 2) == 0) kind = delim_kind(p + dl - 2, end, &after);
    if (kind == DELIM_NONE && !find_delim(p, end, delim, dl, &kind, &after))
        return df_error(DF_EINVAL, "the body has no boundary delimiter");
    int cap = 0;
    while (kind == DELIM_NEXT) {
        p = after;
        if (out->n == MULTIPART_MAX_PARTS) return df_error(DF_EINVAL, "more than %d parts", MULTIPART_MAX_PARTS);
        if (out->n == cap) {
            int nc = cap ? cap * 2 : 4;
            struct multipart_part *np = realloc(out->parts, (size_t)nc * sizeof *np);
            if (!np) return df_error(DF_ENOMEM, "out of memory");
            out->parts = np;
            cap = nc;
        }
        struct multipart_part *pt = &out->parts[out->n];
        memset(pt, 0, sizeof *pt);
        int idx = out->n + 1;
        size_t avail = (size_t)(end - p), lim = avail < MULTIPART_HEADERS_MAX + 4 ? avail : MULTIPART_HEADERS_MAX + 4;
        if (avail >= 2 && p[0] == '\r' && p[1] == '\n')
            return df_error(DF_EINVAL, "part %d has no headers (Content-Disposition is required)", idx);
        const uint8_t *hend = memmem(p, lim, "\r\n\r\n", 4);
        if (!hend && lim < avail)
            return df_error(DF_EINVAL, "part %d: headers longer than %d bytes", idx, MULTIPART_HEADERS_MAX);
        if (!hend) return df_error(DF_EINVAL, "part %d: truncated headers", idx);
        size_t hl = (size_t)(hend - p);
        char hdr[MULTIPART_HEADERS_MAX + 1];
        memcpy(hdr, p, hl);
        hdr[hl] = 0;
        if (memchr(hdr, 0, hl)) return df_error(DF_EINVAL, "part %d: a NUL byte in its headers", idx);
        if ((st = parse_headers(hdr, pt)) != DF_OK) return df_error(st, "part %d: %s", idx, df_errmsg());
        const uint8_t *data = hend + 4, *q = find_delim(data, end, delim, dl, &kind, &after);
        if (!q) return df_error(DF_EINVAL, "part %d (\"%s\") is truncated: no delimiter after it", idx, pt->name);
        pt->data = data;
        pt->len = (size_t)(q - data);
        out->n++;
    }
    return DF_OK; /* after the close delimiter: the epilogue, ignored */
}

void multipart_free(struct multipart *mp) {
    free(mp->parts);
    memset(mp, 0, sizeof *mp);
}

const struct multipart_part *multipart_find(const struct multipart *mp, const char *name) {
    for (int i = 0; i < mp->n; i++)
        if (strcmp(mp->parts[i].name, name) == 0) return &mp->parts[i];
    return NULL;
}
