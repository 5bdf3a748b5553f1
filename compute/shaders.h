/* shaders: the SPIR-V modules compiled from shaders/ and embedded at build
 * time (the generated build/gen/shaders.c defines the table). */
#ifndef DF_SHADERS_H
#define DF_SHADERS_H

#include <stddef.h>
#include <stdint.h>

struct shader_blob {
    const char *name;       /* file stem, or variant name from variants.mk */
    const uint32_t *code;
    size_t size;            /* bytes */
};

extern const struct shader_blob shader_blobs[];
extern const size_t shader_blob_count;

/* The blob called `name`, or NULL. */
const struct shader_blob *shader_find(const char *name);

#endif
