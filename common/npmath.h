/* npmath: float32 elementary functions exactly as numpy computes them.
 *
 * The oracle's schedules and A1111's Philox noise were computed by numpy's
 * own SIMD kernels, not libm; a correctly rounded logf disagrees with them
 * in the last bit on ~20% of inputs, which moves karras timesteps and
 * Philox samples by an ulp. These copies agree on all of them. */
#ifndef DF_NPMATH_H
#define DF_NPMATH_H

/* np.log on float32 (simd_log_FLOAT, AVX2/FMA3 and AVX512F): mantissa in
 * [sqrt(1/2), sqrt(2)), a 5/5 rational minimax polynomial evaluated with
 * fused multiply-adds, plus e*ln2. Positive normal inputs only. */
float np_logf(float x);

#endif
