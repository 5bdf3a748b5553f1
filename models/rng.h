/* rng: seeded Gaussian noise that reproduces what users get elsewhere.
 *
 * Two sources, both bit-exact in float32 against the oracle
 * (shared/fixtures torch_randn and philox_randn):
 *
 *   RNG_TORCH_CPU  torch.manual_seed(seed); torch.randn(n) on the CPU, as
 *                  diffusers' randn_tensor(generator=torch.Generator("cpu"))
 *                  draws it (and A1111's/ComfyUI's "CPU" RNG source).
 *   RNG_PHILOX     A1111's "GPU" RNG source imitated on the CPU
 *                  (modules/rng_philox.py): Philox 4x32-10 + Box-Muller.
 *
 * A struct rng is a generator with state: consecutive rng_randn calls
 * continue the stream exactly as consecutive torch.randn / Generator.randn
 * calls on one generator do. Not thread-safe; one generator per job. */
#ifndef DF_RNG_H
#define DF_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

enum rng_kind {
    RNG_TORCH_CPU,
    RNG_PHILOX,
};

struct rng;

/* A generator seeded like torch.manual_seed(seed) / rng_philox.Generator(seed).
 * The torch generator uses the low 32 bits of `seed` (as torch's mt19937
 * does); Philox uses all 64 as its key. */
df_status rng_create(enum rng_kind kind, uint64_t seed, struct rng **out);
void rng_destroy(struct rng *r);

/* One torch.randn(n) / Generator.randn((n,)) call: n standard normal floats.
 * The torch source picks its algorithm by n exactly as torch does (n < 16:
 * scalar Box-Muller in double with a cached second value; n >= 16: blocks of
 * 16), so a tensor must be drawn with ONE call of its full element count. */
df_status rng_randn(struct rng *r, float *out, size_t n);

/* A fresh seed for requests with seed -1, in A1111's range
 * (random.randrange(4294967294): 0 .. 4294967293), from getrandom(). */
uint64_t rng_random_seed(void);

/* "torch"/"cpu" -> RNG_TORCH_CPU, "a1111"/"philox"/"gpu" -> RNG_PHILOX
 * (case-insensitive); DF_EINVAL otherwise. */
df_status rng_kind_from_name(const char *name, enum rng_kind *out);

#endif
