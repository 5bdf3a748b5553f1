/* weights: load, rename, convert and upload tensors; hand them out by name. */
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_BYTES (256ull << 20)
#define ALIGN 256

struct entry {
    char *name;
    struct wt wt;
    bool taken;
    bool on_device; /* false for integer tensors, which are never uploaded */
};

struct weights {
    struct device *dev;
    enum wts_precision prec;
    struct entry *entries;
    int n, cap;
    int *table;         /* open addressing: index into entries, -1 empty */
    int table_size;
    struct buf **blocks;
    int nblocks;
    uint64_t block_used, block_size;
    uint64_t pending;   /* bytes still to upload in this wts_load, to size blocks */
    uint64_t device_bytes;
    int64_t params;
};

static uint32_t hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int find(const struct weights *w, const char *name) {
    if (!w->table_size) return -1;
    for (uint32_t i = hash(name) & (uint32_t)(w->table_size - 1);; i = (i + 1) & (uint32_t)(w->table_size - 1)) {
        int e = w->table[i];
        if (e < 0) return -1;
        if (strcmp(w->entries[e].name, name) == 0) return e;
    }
}

static df_status rehash(struct weights *w, int size) {
    int *t = malloc((size_t)size * sizeof *t);
    if (!t) return df_error(DF_ENOMEM, "out of memory");
    for (int i = 0; i < size; i++) t[i] = -1;
    for (int e = 0; e < w->n; e++) {
        uint32_t i = hash(w->entries[e].name) & (uint32_t)(size - 1);
        while (t[i] >= 0) i = (i + 1) & (uint32_t)(size - 1);
        t[i] = e;
    }
    free(w->table);
    w->table = t;
    w->table_size = size;
    return DF_OK;
}

df_status wts_create(struct device *dev, enum wts_precision prec, struct weights **out) {
    struct weights *w = calloc(1, sizeof *w);
    if (!w) return df_error(DF_ENOMEM, "out of memory");
    w->dev = dev;
    w->prec = prec;
    uint64_t max = dev_caps(dev)->max_allocation_size;
    w->block_size = max < BLOCK_BYTES ? max : BLOCK_BYTES;
    *out = w;
    return DF_OK;
}

void wts_destroy(struct weights *w) {
    if (!w) return;
    for (int i = 0; i < w->nblocks; i++) buf_destroy(w->blocks[i]);
    for (int i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->blocks);
    free(w->entries);
    free(w->table);
    free(w);
}


/* Device space for `bytes`: the current block, a new block, or (for a
 * tensor larger than a block) a buffer of its own. */
static df_status reserve(struct weights *w, uint64_t bytes, struct buf **b, uint64_t *offset) {
    uint64_t need = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    bool own = need > w->block_size;
    if (own || !w->nblocks || w->block_used + need > buf_size(w->blocks[w->nblocks - 1])) {
        struct buf **blocks = realloc(w->blocks, (size_t)(w->nblocks + 1) * sizeof *blocks);
        if (!blocks) return df_error(DF_ENOMEM, "out of memory");
        w->blocks = blocks;
        struct buf *nb;
        /* a small model gets a block its size, not a whole 256 MiB */
        uint64_t size = own ? need : w->pending < w->block_size ? (w->pending > need ? w->pending : need) : w->block_size;
        df_status st = buf_create(w->dev, size, &nb);
        if (st != DF_OK) return st;
        /* keep filling the current block after a dedicated buffer */
        if (own && w->nblocks) {
            w->blocks[w->nblocks] = w->blocks[w->nblocks - 1];
            w->blocks[w->nblocks - 1] = nb;
        } else {
            w->blocks[w->nblocks] = nb;
            w->block_used = 0;
        }
        w->nblocks++;
        w->device_bytes += buf_size(nb);
        if (own) {
            *b = nb;
            *offset = 0;
            w->pending = w->pending > need ? w->pending - need : 0;
            return DF_OK;
        }
    }
    *b = w->blocks[w->nblocks - 1];
    *offset = w->block_used;
    w->block_used += need;
    w->pending = w->pending > need ? w->pending - need : 0;
    return DF_OK;
}

static bool is_float(enum st_dtype dt) {
    return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F64;
}

/* Device dtype of a stored tensor: fp16 mode keeps vectors fp32. */
static enum dtype device_dtype(const struct weights *w, int ndim) {
    return w->prec == WTS_F16 && ndim >= 2 ? DT_F16 : DT_F32;
}

/* The whole stored tensor in dtype `dt` in host memory: the mapping itself
 * when it already is, else a copy the caller frees. */
static df_status host_copy(const struct st_tensor *t, enum dtype dt, void **out) {
    uint64_t n = (uint64_t)t->numel;
    if (dt == DT_F16 && t->dtype == ST_F16) {
        *out = (void *)t->data;
        return DF_OK;
    }
    float *f32 = malloc(n ? n * 4 : 4);
    if (!f32) return df_error(DF_ENOMEM, "tensor \"%s\": out of host memory", t->name);
    df_status st = st_to_f32(t, f32);
    if (st != DF_OK) {
        free(f32);
        return df_error(st, "tensor \"%s\": %s", t->name, df_errmsg());
    }
    if (dt == DT_F32) {
        *out = f32;
        return DF_OK;
    }
    uint16_t *h = malloc(n ? n * 2 : 2);
    if (!h) {
        free(f32);
        return df_error(DF_ENOMEM, "tensor \"%s\": out of host memory", t->name);
    }
    for (uint64_t i = 0; i < n; i++) h[i] = st_float_to_half(f32[i]);
    free(f32);
    *out = h;
    return DF_OK;
}

/* Uploads `numel` values of dtype `dt` at `host` into a slot of their own. */
static df_status upload(struct weights *w, const void *host, enum dtype dt, int64_t numel, struct entry *e) {
    uint64_t bytes = (uint64_t)numel * (dt == DT_F16 ? 2 : 4);
    struct buf *b = NULL;
    uint64_t off = 0;
    /* round up so fp16 tensors of odd length still write whole words */
    uint64_t padded = (bytes + 3) & ~3ull;
    df_status st = reserve(w, padded, &b, &off);
    if (st == DF_OK) {
        if (padded != bytes) {
            uint8_t tail[4] = {0};
            memcpy(tail, (const uint8_t *)host + (bytes & ~3ull), bytes & 3);
            st = buf_write(b, off, host, bytes & ~3ull);
            if (st == DF_OK) st = buf_write(b, off + (bytes & ~3ull), tail, 4);
        } else {
            st = buf_write(b, off, host, bytes);
        }
    }
    if (st != DF_OK) return df_error(st, "uploading tensor \"%s\": %s", e->name, df_errmsg());
    e->wt.buf = b;
    e->wt.offset = off;
    e->wt.dtype = dt;
    e->on_device = true;
    w->params += numel;
    return DF_OK;
}

static const struct wts_rename *longest(const struct wts_rename *r, int n, const char *name) {
    const struct wts_rename *best = NULL;
    size_t best_len = 0;
    for (int i = 0; n < 0 ? r[i].from != NULL : i < n; i++) {
        size_t len = strlen(r[i].from);
        if (len >= best_len && strncmp(name, r[i].from, len) == 0) {
            best = &r[i];
            best_len = len;
        }
    }
    return best;
}

static void rename_key(const char *name, const struct wts_rename *r, int n, char *out, size_t cap) {
    const struct wts_rename *m = r ? longest(r, n, name) : NULL;
    if (!m) {
        snprintf(out, cap, "%s", name);
        return;
    }
    const char *rest = name + strlen(m->from);
    const struct wts_rename *t = m->tail ? longest(m->tail, -1, rest) : NULL;
    if (t) snprintf(out, cap, "%s%s%s", m->to, t->to, rest + strlen(t->from));
    else snprintf(out, cap, "%s%s", m->to, rest);
}

/* Adds `name` with shape (ndim, ne); uploads `host` (dtype dt) unless NULL. */
static df_status add(struct weights *w, const char *name, const char *stored, int ndim, const int64_t *ne,
                     const void *host, enum dtype dt) {
    if (find(w, name) >= 0) return df_error(DF_EFORMAT, "tensor \"%s\" (from \"%s\") appears twice", name, stored);
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 256;
        struct entry *e = realloc(w->entries, (size_t)cap * sizeof *e);
        if (!e) return df_error(DF_ENOMEM, "out of memory");
        w->entries = e;
        w->cap = cap;
    }
    struct entry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return df_error(DF_ENOMEM, "out of memory");
    e->wt.name = e->name;
    e->wt.ndim = ndim;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        e->wt.ne[d] = ne[d];
        numel *= ne[d];
    }
    if (host) {
        df_status st = upload(w, host, dt, numel, e);
        if (st != DF_OK) {
            free(e->name);
            return st;
        }
    }
    w->n++;
    if (w->n * 2 > w->table_size) return rehash(w, w->table_size ? w->table_size * 2 : 512);
    uint32_t h = hash(name) & (uint32_t)(w->table_size - 1);
    while (w->table[h] >= 0) h = (h + 1) & (uint32_t)(w->table_size - 1);
    w->table[h] = w->n - 1;
    return DF_OK;
}

static bool ends_with(const char *s, const char *end) {
    size_t a = strlen(s), b = strlen(end);
    return a >= b && strcmp(s + a - b, end) == 0;
}

/* Name, shape and byte range of what `d` makes of stored tensor t (renamed
 * `name`); *tmp gets a transposed copy of host when one is needed. */
static df_status derive_one(const struct wts_derive *d, const struct st_tensor *t, const char *name, char *out,
                            size_t cap, int64_t *ne, const void *host, size_t elem, const void **data, void **tmp) {
    *tmp = NULL;
    snprintf(out, cap, "%.*s%s", (int)(strlen(name) - strlen(d->from)), name, d->to);
    for (int i = 0; i < t->ndim; i++) ne[i] = t->shape[i];
    *data = host;
    if (d->op == WTS_ROWS) {
        if (t->ndim < 1 || d->parts <= 0 || d->part < 0 || d->part >= d->parts || t->shape[0] % d->parts)
            return df_error(DF_EFORMAT, "tensor \"%s\": %lld rows do not split into %d blocks for \"%s\"", t->name,
                            (long long)(t->ndim ? t->shape[0] : 0), d->parts, out);
        ne[0] = t->shape[0] / d->parts;
        if (host) *data = (const uint8_t *)host + (size_t)(t->numel / d->parts * d->part) * elem;
        return DF_OK;
    }
    if (t->ndim != 2)
        return df_error(DF_EFORMAT, "tensor \"%s\" has %d dims, cannot transpose it to \"%s\"", t->name, t->ndim,
                        out);
    ne[0] = t->shape[1];
    ne[1] = t->shape[0];
    if (!host) return DF_OK;
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    uint8_t *x = malloc(rows * cols * elem + 1);
    if (!x) return df_error(DF_ENOMEM, "tensor \"%s\": out of host memory", t->name);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            memcpy(x + (c * rows + r) * elem, (const uint8_t *)host + (r * cols + c) * elem, elem);
    *data = *tmp = x;
    return DF_OK;
}

/* Device bytes (block-aligned) the stored tensor t takes once derived. */
static uint64_t stored_bytes(const struct weights *w, const struct st_tensor *t, const char *name,
                             const struct wts_derive *derive, int nd) {
    uint64_t bytes = (uint64_t)t->numel * (device_dtype(w, t->ndim) == DT_F16 ? 2 : 4), total = 0;
    int k = 0;
    for (int i = 0; i < nd; i++)
        if (ends_with(name, derive[i].from)) {
            uint64_t part = derive[i].op == WTS_ROWS && derive[i].parts > 0 ? bytes / (uint64_t)derive[i].parts : bytes;
            total += (part + 3 + ALIGN - 1) / ALIGN * ALIGN;
            k++;
        }
    return k ? total : (bytes + 3 + ALIGN - 1) / ALIGN * ALIGN;
}

df_status wts_load_derived(struct weights *w, const struct st_file *f, const char *prefix,
                           const struct wts_rename *renames, int n, const struct wts_derive *derive, int nd) {
    size_t plen = prefix ? strlen(prefix) : 0;
    char name[512], out[600];
    w->pending = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if ((!plen || strncmp(t->name, prefix, plen) == 0) && is_float(t->dtype) && t->numel > 0) {
            rename_key(t->name, renames, n, name, sizeof name);
            w->pending += stored_bytes(w, t, name, derive, nd);
        }
    }
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (plen && strncmp(t->name, prefix, plen) != 0) continue;
        rename_key(t->name, renames, n, name, sizeof name);
        if (t->ndim > CG_MAX_DIMS)
            return df_error(DF_EFORMAT, "tensor \"%s\" has %d dims", t->name, t->ndim);
        enum dtype dt = device_dtype(w, t->ndim);
        void *host = NULL;
        df_status st = DF_OK;
        if (is_float(t->dtype) && t->numel > 0 && (st = host_copy(t, dt, &host)) != DF_OK) return st;
        int made = 0;
        for (int k = 0; k < nd && st == DF_OK; k++) {
            if (!ends_with(name, derive[k].from)) continue;
            int64_t ne[CG_MAX_DIMS];
            const void *data;
            void *tmp;
            st = derive_one(&derive[k], t, name, out, sizeof out, ne, host, dt == DT_F16 ? 2 : 4, &data, &tmp);
            if (st == DF_OK) st = add(w, out, t->name, t->ndim, ne, host ? data : NULL, dt);
            free(tmp);
            made++;
        }
        if (!made && st == DF_OK) st = add(w, name, t->name, t->ndim, t->shape, host, dt);
        if (host != t->data) free(host);
        if (st != DF_OK) return st;
        if (host) st_release(f, t);
    }
    return DF_OK;
}

df_status wts_load(struct weights *w, const struct st_file *f, const char *prefix,
                   const struct wts_rename *renames, int n) {
    return wts_load_derived(w, f, prefix, renames, n, NULL, 0);
}

static int squeezed(int ndim, const int64_t *ne) {
    while (ndim > 1 && ne[ndim - 1] == 1) ndim--;
    return ndim;
}

static void shape_str(int ndim, const int64_t *ne, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)ne[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

static df_status take(struct weights *w, const char *name, int ndim, const int64_t *ne, struct wt *out,
                      bool optional) {
    memset(out, 0, sizeof *out);
    int i = find(w, name);
    if (i < 0) {
        if (optional) return DF_OK;
        return df_error(DF_EFORMAT, "missing tensor \"%s\"", name);
    }
    struct entry *e = &w->entries[i];
    int a = squeezed(e->wt.ndim, e->wt.ne), b = squeezed(ndim, ne);
    bool same = a == b;
    for (int d = 0; same && d < a; d++) same = e->wt.ne[d] == ne[d];
    if (!same) {
        char have[96], want[96];
        shape_str(e->wt.ndim, e->wt.ne, have, sizeof have);
        shape_str(ndim, ne, want, sizeof want);
        return df_error(DF_EFORMAT, "tensor \"%s\" has shape %s, expected %s", name, have, want);
    }
    if (!e->on_device) return df_error(DF_EFORMAT, "tensor \"%s\" is not a floating-point tensor", name);
    e->taken = true;
    *out = e->wt;
    out->ndim = ndim;
    for (int d = 0; d < ndim; d++) out->ne[d] = ne[d];
    return DF_OK;
}

df_status wts_take(struct weights *w, const char *name, int ndim, const int64_t *ne, struct wt *out) {
    return take(w, name, ndim, ne, out, false);
}

df_status wts_take_optional(struct weights *w, const char *name, int ndim, const int64_t *ne, struct wt *out) {
    return take(w, name, ndim, ne, out, true);
}

void wts_ignore(struct weights *w, const char *name) {
    int i = find(w, name);
    if (i >= 0) w->entries[i].taken = true;
}

bool wts_has(const struct weights *w, const char *name, int *ndim, int64_t *ne) {
    int i = find(w, name);
    if (i < 0) return false;
    if (ndim) *ndim = w->entries[i].wt.ndim;
    if (ne) memcpy(ne, w->entries[i].wt.ne, sizeof w->entries[i].wt.ne);
    return true;
}

int wts_report_unused(struct weights *w, void (*log)(const char *name, void *ctx), void *ctx) {
    int count = 0;
    for (int i = 0; i < w->n; i++)
        if (!w->entries[i].taken) {
            count++;
            if (log) log(w->entries[i].name, ctx);
        }
    return count;
}

uint64_t wts_device_bytes(const struct weights *w) { return w->device_bytes; }
int64_t wts_parameter_count(const struct weights *w) { return w->params; }

struct cg_tensor *wt_tensor(struct cg_graph *g, const struct wt *w) {
    if (!w->ndim) return NULL;
    return cg_external(g, w->name, w->buf, w->offset, w->dtype, w->ndim, w->ne);
}
