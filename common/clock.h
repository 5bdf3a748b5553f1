/* clock: the one monotonic clock every layer times with. */
#ifndef DF_CLOCK_H
#define DF_CLOCK_H

/* Seconds since an arbitrary fixed point (CLOCK_MONOTONIC): for durations
 * and deadlines, never for dates. */
double clock_now(void);

#endif
