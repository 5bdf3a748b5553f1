/* safetensors: a read-only, mmap-backed reader for .safetensors files.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON mapping
 * tensor names to {dtype, shape, data_offsets:[begin,end]} (offsets relative
 * to the byte after the header), optional "__metadata__" (string->string).
 * Every field of a hostile file is checked before use; st_open never crashes
 * and names the offending tensor in its error message. */
#ifndef DF_SAFETENSORS_H
#define DF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

#define ST_MAX_DIMS 8

enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64,
    ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
};

struct st_tensor {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    uint64_t nbytes;
    const void *data; /* points into the mapping; valid until st_close */
};

struct st_file;

/* Maps `path` and indexes its tensors. */
df_status st_open(const char *path, struct st_file **out);
/* Parses an in-memory image of a whole file (header + data); `buf` must
 * outlive the result. Used by st_open and by the fuzzer. */
df_status st_open_memory(const void *buf, size_t len, struct st_file **out);
void st_close(struct st_file *f);

size_t st_count(const struct st_file *f);
const struct st_tensor *st_at(const struct st_file *f, size_t i); /* file order */
const struct st_tensor *st_find(const struct st_file *f, const char *name);
/* Value of a "__metadata__" key, or NULL. */
const char *st_metadata(const struct st_file *f, const char *key);

const char *st_dtype_name(enum st_dtype dt);
size_t st_dtype_size(enum st_dtype dt);

/* Converts a floating tensor (F32/F16/BF16/F64) to float32 into `dst`
 * (numel floats). DF_EUNSUPPORTED for integer dtypes. */
df_status st_to_f32(const struct st_tensor *t, float *dst);

/* IEEE half <-> float (exact widening; narrowing rounds to nearest even). */
float st_half_to_float(uint16_t h);
uint16_t st_float_to_half(float f);

/* Tells the kernel the mapped bytes of a tensor are no longer needed
 * (madvise DONTNEED) once they are uploaded, so RSS does not hold a second
 * copy of the weights. Safe to call on memory opened with st_open_memory
 * (no-op). */
void st_release(const struct st_file *f, const struct st_tensor *t);

#endif
