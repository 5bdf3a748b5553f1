/* sha256: SHA-256 (FIPS 180-4), for A1111's "Model hash" (the first 10 hex
 * digits of the model file's SHA-256) and anything else that needs a digest.
 * No OpenSSL in the project: this is a small portable implementation. */
#ifndef DF_SHA256_H
#define DF_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

#define SHA256_DIGEST_SIZE 32

/* Incremental hashing state; lives wherever the caller likes (no allocation). */
struct sha256 {
    uint32_t h[8];
    uint64_t total;    /* bytes hashed so far */
    uint8_t block[64];
    size_t fill;       /* bytes waiting in block */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
/* Finishes the digest; `s` must be re-initialised before reuse. */
void sha256_final(struct sha256 *s, uint8_t digest[SHA256_DIGEST_SIZE]);

/* One-shot digest of a buffer. */
void sha256_digest(const void *data, size_t n, uint8_t digest[SHA256_DIGEST_SIZE]);
/* Lower-case hex of a digest, NUL-terminated (65 bytes). */
void sha256_hex(const uint8_t digest[SHA256_DIGEST_SIZE], char hex[2 * SHA256_DIGEST_SIZE + 1]);
/* Digest of a whole file, read in chunks (model files are gigabytes). */
df_status sha256_file(const char *path, uint8_t digest[SHA256_DIGEST_SIZE]);

#endif
