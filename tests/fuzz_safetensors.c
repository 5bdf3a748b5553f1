/* libFuzzer target for the safetensors header parser: any input must either
 * parse into tensors whose bytes lie inside the input, or fail cleanly.
 * Built and run by tests/fuzz.mk. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../models/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static float buf[1 << 14];
    struct st_file *f = NULL;
    if (st_open_memory(data, size, &f) != DF_OK)
        return 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (st_find(f, t->name) != t)
            __builtin_trap(); /* index must agree with file order */
        const uint8_t *p = t->data;
        if (p < data || t->nbytes > (uint64_t)(data + size - p))
            __builtin_trap(); /* tensor bytes must lie inside the input */
        if (t->numel <= (int64_t)(sizeof buf / sizeof buf[0]))
            st_to_f32(t, buf); /* ASan checks every byte read */
    }
    st_metadata(f, "format");
    st_release(f, st_at(f, 0));
    st_close(f);
    return 0;
}
