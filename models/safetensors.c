/* safetensors: mmap-backed reader; see safetensors.h.
 *
 * The header is untrusted input: every count, offset and size is checked
 * against the buffer before a pointer is formed from it, and every failure is
 * a DF_EFORMAT naming the tensor, so a broken download is reported rather than
 * turned into an out-of-bounds read later in a kernel upload. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Real checkpoints have headers of a few hundred KiB; anything past this is
 * hostile and would make jansson allocate gigabytes. */
#define ST_MAX_HEADER ((uint64_t)100 << 20)
/* Names are echoed in messages; cap them so the reason is not truncated,
 * cutting on a UTF-8 boundary so the message stays valid for a JSON reply. */
#define ST_NAME_MAX 128
#define ST_NAME_FMT "\"%.*s\""
#define ST_NAME(s) st_clip((s), strlen(s)), (s)

struct st_file {
    struct st_tensor *tensors;        /* file (header) order */
    const struct st_tensor **by_name; /* sorted by name for st_find */
    size_t count;
    const char **meta; /* key, value pairs */
    size_t nmeta;
    char *strings; /* one block holding every name, key and value */
    void *map;     /* non-NULL when st_open mapped the file */
    size_t map_len;
};

static const struct {
    const char *name;
    size_t size;
} st_dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},   [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1},
};
#define ST_NDTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

const char *st_dtype_name(enum st_dtype dt) {
    return (unsigned)dt < ST_NDTYPES ? st_dtypes[dt].name : "?";
}

size_t st_dtype_size(enum st_dtype dt) {
    return (unsigned)dt < ST_NDTYPES ? st_dtypes[dt].size : 0;
}

static int st_clip(const char *s, size_t n) {
    if (n <= ST_NAME_MAX)
        return (int)n;
    n = ST_NAME_MAX;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return (int)n;
}

static int st_dtype_parse(const char *s, enum st_dtype *out) {
    for (size_t i = 0; i < ST_NDTYPES; i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = (enum st_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* "[4, 7]" for messages. */
static void st_format_shape(const struct st_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "",
                              (long long)t->shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int st_is_uint(const json_t *v) {
    return json_is_integer(v) && json_integer_value(v) >= 0;
}

/* jansson only quotes keys of up to 20 bytes in its duplicate-key message.
 * Its error position is just past the key's closing quote, so recover the raw
 * key text from the header by walking back to the unescaped opening quote. */
static df_status st_duplicate_error(const char *hdr, size_t hlen,
                                    const json_error_t *err) {
    size_t end = err->position > 0 ? (size_t)err->position : 0;
    if (end >= 2 && end <= hlen && hdr[end - 1] == '"') {
        for (size_t q = end - 1; q-- > 0;) {
            if (hdr[q] != '"')
                continue;
            size_t bs = 0;
            while (bs < q && hdr[q - 1 - bs] == '\\')
                bs++;
            if (bs % 2 == 0) {
                return df_error(DF_EFORMAT, "header: duplicate key " ST_NAME_FMT,
                                st_clip(hdr + q + 1, end - 2 - q), hdr + q + 1);
            }
        }
    }
    return df_error(DF_EFORMAT, "header: %s", err->text);
}

static df_status st_parse_shape(const char *name, const json_t *shape,
                                struct st_tensor *t) {
    if (!json_is_array(shape))
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": shape is not an array",
                        ST_NAME(name));
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS)
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": %zu dims, at most %d",
                        ST_NAME(name), nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    int has_zero = 0;
    for (size_t i = 0; i < nd; i++) {
        const json_t *d = json_array_get(shape, i);
        if (!st_is_uint(d))
            return df_error(DF_EFORMAT,
                            "tensor " ST_NAME_FMT ": shape[%zu] is not a "
                            "non-negative integer", ST_NAME(name), i);
        t->shape[i] = (int64_t)json_integer_value(d);
        has_zero |= t->shape[i] == 0;
    }
    /* A zero dim makes the product 0 whatever the others are, so only a
     * product of non-zero dims can overflow. */
    int64_t numel = 1;
    for (size_t i = 0; i < nd && !has_zero; i++) {
        if (numel > INT64_MAX / t->shape[i])
            return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": shape overflows",
                            ST_NAME(name));
        numel *= t->shape[i];
    }
    t->numel = has_zero ? 0 : numel;
    return DF_OK;
}

static df_status st_parse_tensor(const char *name, const json_t *e,
                                 const uint8_t *data, uint64_t data_len,
                                 struct st_tensor *t) {
    if (!json_is_object(e))
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": entry is not an object",
                        ST_NAME(name));
    const json_t *dt = json_object_get(e, "dtype");
    if (!dt)
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": missing dtype",
                        ST_NAME(name));
    if (!json_is_string(dt))
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": dtype is not a string",
                        ST_NAME(name));
    if (!st_dtype_parse(json_string_value(dt), &t->dtype))
        return df_error(DF_EFORMAT,
                        "tensor " ST_NAME_FMT ": unknown dtype " ST_NAME_FMT,
                        ST_NAME(name), ST_NAME(json_string_value(dt)));
    const json_t *shape = json_object_get(e, "shape");
    if (!shape)
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": missing shape",
                        ST_NAME(name));
    df_status st = st_parse_shape(name, shape, t);
    if (st)
        return st;

    const json_t *off = json_object_get(e, "data_offsets");
    if (!off)
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": missing data_offsets",
                        ST_NAME(name));
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        !st_is_uint(json_array_get(off, 0)) || !st_is_uint(json_array_get(off, 1)))
        return df_error(DF_EFORMAT,
                        "tensor " ST_NAME_FMT ": data_offsets is not an array of "
                        "two non-negative integers", ST_NAME(name));
    uint64_t begin = (uint64_t)json_integer_value(json_array_get(off, 0));
    uint64_t end = (uint64_t)json_integer_value(json_array_get(off, 1));
    if (begin > end)
        return df_error(DF_EFORMAT,
                        "tensor " ST_NAME_FMT ": data_offsets [%llu, %llu]: end "
                        "before begin", ST_NAME(name), (unsigned long long)begin,
                        (unsigned long long)end);
    if (end > data_len)
        return df_error(DF_EFORMAT,
                        "tensor " ST_NAME_FMT ": data_offsets [%llu, %llu] beyond "
                        "the %llu-byte data section", ST_NAME(name),
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)data_len);

    char sh[256];
    size_t esz = st_dtype_size(t->dtype);
    if ((uint64_t)t->numel > UINT64_MAX / esz) {
        st_format_shape(t, sh, sizeof sh);
        return df_error(DF_EFORMAT, "tensor " ST_NAME_FMT ": shape %s of %s overflows",
                        ST_NAME(name), sh, st_dtype_name(t->dtype));
    }
    t->nbytes = (uint64_t)t->numel * esz;
    if (t->nbytes != end - begin) {
        st_format_shape(t, sh, sizeof sh);
        return df_error(DF_EFORMAT,
                        "tensor " ST_NAME_FMT ": data_offsets [%llu, %llu] hold "
                        "%llu bytes but shape %s of %s needs %llu", ST_NAME(name),
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)(end - begin), sh,
                        st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    }
    t->data = data + begin;
    return DF_OK;
}

static int st_cmp_name(const void *a, const void *b) {
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int st_cmp_data(const void *a, const void *b) {
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    const uint8_t *px = x->data, *py = y->data;
    if (px != py)
        return px < py ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

/* Two tensors sharing bytes means one of them is garbage (or an aliasing
 * trick); sorted by start, each non-empty range must begin at or after the
 * furthest end seen so far. Empty tensors cannot overlap anything. */
static df_status st_check_overlap(struct st_file *f) {
    if (f->count < 2)
        return DF_OK;
    const struct st_tensor **v = malloc(f->count * sizeof *v);
    if (!v)
        return df_error(DF_ENOMEM, "safetensors: out of memory");
    for (size_t i = 0; i < f->count; i++)
        v[i] = &f->tensors[i];
    qsort(v, f->count, sizeof *v, st_cmp_data);
    const struct st_tensor *far = NULL; /* tensor reaching furthest so far */
    df_status st = DF_OK;
    for (size_t i = 0; i < f->count && !st; i++) {
        const struct st_tensor *t = v[i];
        if (t->nbytes == 0)
            continue;
        const uint8_t *b = t->data;
        if (far && b < (const uint8_t *)far->data + far->nbytes)
            st = df_error(DF_EFORMAT,
                          "tensor " ST_NAME_FMT ": bytes overlap tensor " ST_NAME_FMT,
                          ST_NAME(t->name), ST_NAME(far->name));
        else if (!far || b + t->nbytes > (const uint8_t *)far->data + far->nbytes)
            far = t;
    }
    free(v);
    return st;
}

static df_status st_parse_metadata(const json_t *m, size_t *nmeta, size_t *bytes) {
    if (!json_is_object(m))
        return df_error(DF_EFORMAT, "__metadata__ is not an object");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v))
            return df_error(DF_EFORMAT, "__metadata__ " ST_NAME_FMT " is not a string",
                            ST_NAME(k));
        *bytes += strlen(k) + strlen(json_string_value(v)) + 2;
        (*nmeta)++;
    }
    return DF_OK;
}

static char *st_copy(char **cur, const char *s) {
    size_t n = strlen(s) + 1;
    char *r = memcpy(*cur, s, n);
    *cur += n;
    return r;
}

/* Validates everything and fills `f` from the parsed header. */
static df_status st_build(struct st_file *f, json_t *root, const uint8_t *data,
                          uint64_t data_len) {
    const json_t *meta = json_object_get(root, "__metadata__");
    size_t bytes = 0, nmeta = 0;
    if (meta) {
        df_status st = st_parse_metadata(meta, &nmeta, &bytes);
        if (st)
            return st;
    }
    size_t n = json_object_size(root) - (meta != NULL);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    f->meta = calloc(nmeta ? 2 * nmeta : 1, sizeof *f->meta);
    if (!f->tensors || !f->by_name || !f->meta)
        return df_error(DF_ENOMEM, "safetensors: out of memory for %zu tensors", n);

    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (v == meta)
            continue;
        struct st_tensor *t = &f->tensors[f->count];
        df_status st = st_parse_tensor(k, v, data, data_len, t);
        if (st)
            return st;
        bytes += strlen(k) + 1;
        f->by_name[f->count] = t;
        f->count++;
    }

    /* Names are copied so the JSON tree can be freed right away. */
    char *cur = f->strings = malloc(bytes ? bytes : 1);
    if (!cur)
        return df_error(DF_ENOMEM, "safetensors: out of memory for names");
    size_t i = 0;
    json_object_foreach(root, k, v) {
        if (v != meta)
            f->tensors[i++].name = st_copy(&cur, k);
    }
    if (meta) {
        json_object_foreach((json_t *)meta, k, v) {
            f->meta[2 * f->nmeta] = st_copy(&cur, k);
            f->meta[2 * f->nmeta + 1] = st_copy(&cur, json_string_value(v));
            f->nmeta++;
        }
    }

    qsort(f->by_name, f->count, sizeof *f->by_name, st_cmp_name);
    for (i = 1; i < f->count; i++) /* jansson rejects these; stay safe anyway */
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return df_error(DF_EFORMAT, "header: duplicate key " ST_NAME_FMT,
                            ST_NAME(f->by_name[i]->name));
    return st_check_overlap(f);
}

df_status st_open_memory(const void *buf, size_t len, struct st_file **out) {
    *out = NULL;
    if (!buf && len)
        return df_error(DF_EINVAL, "st_open_memory: NULL buffer");
    if (len < 8)
        return df_error(DF_EFORMAT, "file of %zu bytes is shorter than the 8-byte "
                        "header length", len);
    const uint8_t *p = buf;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) /* little-endian whatever the host */
        hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER)
        return df_error(DF_EFORMAT, "header length %llu exceeds the %llu-byte limit",
                        (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (hlen > len - 8)
        return df_error(DF_EFORMAT, "header length %llu is beyond the end of the "
                        "%zu-byte file", (unsigned long long)hlen, len);

    json_error_t err;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen,
                              JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        if (json_error_code(&err) == json_error_duplicate_key)
            return st_duplicate_error((const char *)p + 8, (size_t)hlen, &err);
        return df_error(DF_EFORMAT, "header is not valid JSON: %s at byte %d",
                        err.text, err.position);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return df_error(DF_EFORMAT, "header is not a JSON object");
    }
    struct st_file *f = calloc(1, sizeof *f);
    if (!f) {
        json_decref(root);
        return df_error(DF_ENOMEM, "safetensors: out of memory");
    }
    df_status st = st_build(f, root, p + 8 + hlen, len - 8 - hlen);
    json_decref(root);
    if (st) {
        st_close(f);
        return st;
    }
    *out = f;
    return DF_OK;
}

df_status st_open(const char *path, struct st_file **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return df_error(DF_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return df_error(DF_EIO, "%s: fstat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return df_error(DF_EIO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) { /* also keeps mmap away from an empty file */
        close(fd);
        return df_error(DF_EFORMAT, "%s: file of %lld bytes is shorter than the "
                        "8-byte header length", path, (long long)sb.st_size);
    }
    if ((uintmax_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return df_error(DF_EIO, "%s: too large to map", path);
    }
    size_t len = (size_t)sb.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return df_error(DF_EIO, "%s: mmap: %s", path, strerror(e));

    struct st_file *f;
    df_status st = st_open_memory(map, len, &f);
    if (st) {
        munmap(map, len);
        char msg[512]; /* df_error must not format from its own buffer */
        snprintf(msg, sizeof msg, "%s", df_errmsg());
        return df_error(st, "%s: %s", path, msg);
    }
    f->map = map;
    f->map_len = len;
    *out = f;
    return DF_OK;
}

void st_close(struct st_file *f) {
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f);
}

size_t st_count(const struct st_file *f) { return f ? f->count : 0; }

const struct st_tensor *st_at(const struct st_file *f, size_t i) {
    return f && i < f->count ? &f->tensors[i] : NULL;
}

const struct st_tensor *st_find(const struct st_file *f, const char *name) {
    if (!f || !name)
        return NULL;
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->by_name[mid]->name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const struct st_file *f, const char *key) {
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->nmeta; i++) /* a handful of keys: linear is fine */
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

/* Exact IEEE binary16 -> binary32; every half is representable as a float. */
float st_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | mant << 13; /* inf, nan keeps payload */
    } else if (exp == 0 && mant == 0) {
        bits = sign;
    } else if (exp == 0) { /* subnormal half: a normal float once normalised */
        uint32_t e = 113;
        for (; !(mant & 0x400u); mant <<= 1)
            e--;
        bits = sign | e << 23 | (mant & 0x3ffu) << 13;
    } else {
        bits = sign | (exp + 112u) << 23 | mant << 13; /* rebias 15 -> 127 */
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Out-of-range double -> float is undefined in C; round as IEEE would. */
static float st_double_to_float(double d) {
    if (d > FLT_MAX)
        return d < 0x1.ffffffp127 ? FLT_MAX : INFINITY;
    if (d < -FLT_MAX)
        return d > -0x1.ffffffp127 ? -FLT_MAX : -INFINITY;
    return (float)d;
}

/* Offsets need not be aligned, so every element is loaded with memcpy. The
 * format is little-endian, as is every host this daemon targets. */
df_status st_to_f32(const struct st_tensor *t, float *dst) {
    if (!t || (!dst && t->numel))
        return df_error(DF_EINVAL, "st_to_f32: NULL argument");
    const uint8_t *src = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case ST_F32:
        if (n)
            memcpy(dst, src, n * sizeof(float));
        return DF_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            dst[i] = st_half_to_float(h);
        }
        return DF_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        return DF_OK;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, sizeof d);
            dst[i] = st_double_to_float(d);
        }
        return DF_OK;
    default:
        return df_error(DF_EUNSUPPORTED, "tensor " ST_NAME_FMT ": %s is not a "
                        "floating dtype", ST_NAME(t->name ? t->name : ""),
                        st_dtype_name(t->dtype));
    }
}

void st_release(const struct st_file *f, const struct st_tensor *t) {
    if (!f || !f->map || !t || t < f->tensors || t >= f->tensors + f->count)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = (uintptr_t)t->data, e = b + t->nbytes;
    b = (b + page - 1) & ~(page - 1); /* only whole pages inside the tensor, */
    e &= ~(page - 1);                 /* so neighbours keep their bytes */
    if (b < e)
        madvise((void *)b, e - b, MADV_DONTNEED);
}

/* round to nearest even, as torch's .half() */
uint16_t st_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* round to nearest even */
    return (uint16_t)(sign | h);
}
