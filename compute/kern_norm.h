/* kern_norm: test hook for the normalisation / softmax encoders. */
#ifndef DF_KERN_NORM_H
#define DF_KERN_NORM_H

#include <stdbool.h>

/* Forces the shared-memory reduction variants (the ones devices without
 * subgroup arithmetic run) for group norm, layer norm and softmax. Global,
 * for tests; affects programs created while it is on. */
void kern_norm_force_fallback(bool on);

#endif
