/* log: one line per event on stderr - UTC time, level, job id, message -
 * which journald and `docker logs` capture as they are:
 *
 *   2025-01-31T12:00:00.123Z info  job=4f1c... done in 3.21 s
 *
 * Lines are written with one call under the stdio lock, so lines from
 * different threads never interleave. Control characters in messages are
 * escaped: a prompt cannot forge a log line. */
#ifndef DF_LOG_H
#define DF_LOG_H

#include <stdbool.h>

#include "../common/status.h"

enum log_level { LOGL_DEBUG, LOGL_INFO, LOGL_WARN, LOGL_ERROR };

/* Lines below `level` are dropped (default LOGL_INFO). */
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

/* "debug", "info", "warn"/"warning", "error"; DF_EINVAL otherwise. */
df_status log_level_from_name(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);

/* `job` may be NULL (no job= field). */
void log_write(enum log_level level, const char *job, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
