/* holdutil: generations a test holds still, so that "a job that is still
 * running when the next request arrives" is so by construction, on any
 * machine however fast, not because N steps happen to take long enough.
 *
 * Every test binary is linked with -Wl,--wrap=pipe_generate (Makefile:
 * TEST_LDFLAGS): the daemon's workers call this module's wrapper, which runs
 * the real pipe_generate. A generation whose prompt begins with HU_HOLD
 * stops where denoising begins - after its job has reported that stage,
 * before the first model evaluation: running, step 0 of N - and stays
 * there until the test calls hu_release() or the job is cancelled (DELETE,
 * interrupt, client gone, shutdown). Then it goes on: a cancelled one stops
 * at the pipeline's next check, a released one runs to its end. Any other
 * prompt passes straight through. Release builds have no such thing. */
#ifndef DF_HOLDUTIL_H
#define DF_HOLDUTIL_H

#include <stdbool.h>

#define HU_HOLD "held"

/* Holding is on unless turned off; off also lets every held generation go
 * (a test's teardown does this, so a failed test cannot leave a worker
 * stuck and the daemon can wind down). */
void hu_set_holding(bool on);
/* Until `n` generations are held now; fails the test after `timeout` s. */
void hu_wait_held(int n, double timeout);
/* Lets every generation held now go on. */
void hu_release(void);

#endif
