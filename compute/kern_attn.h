/* kern_attn: the attention encoder's tile choice, exposed for tests. */
#ifndef DF_KERN_ATTN_H
#define DF_KERN_ATTN_H

#include <stdbool.h>
#include <stdint.h>

struct attn_tiles {
    int bq, bk;             /* queries per workgroup (one per invocation), keys per tile */
    uint32_t shared_bytes;  /* shared memory of one workgroup */
};

/* Tiles for head dim d and nq queries within max_shared bytes (capped at
 * 16 KiB); false if even the smallest tiles do not fit. */
bool kern_attn_tiles(int d, int nq, uint32_t max_shared, struct attn_tiles *out);

#endif
