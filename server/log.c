/* log: see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static atomic_int min_level = LOGL_INFO;

void log_set_level(enum log_level level) { atomic_store(&min_level, (int)level); }

bool log_enabled(enum log_level level) { return (int)level >= atomic_load(&min_level); }

df_status log_level_from_name(const char *name, enum log_level *out) {
    static const struct { const char *name; enum log_level level; } names[] = {
        {"debug", LOGL_DEBUG}, {"info", LOGL_INFO}, {"warn", LOGL_WARN}, {"warning", LOGL_WARN}, {"error", LOGL_ERROR},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return DF_OK;
        }
    return df_error(DF_EINVAL, "unknown log level \"%s\" (debug, info, warn, error)", name);
}

const char *log_level_name(enum log_level level) {
    switch (level) {
    case LOGL_DEBUG: return "debug";
    case LOGL_INFO: return "info";
    case LOGL_WARN: return "warn";
    case LOGL_ERROR: return "error";
    }
    return "?";
}

void log_write(enum log_level level, const char *job, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    char msg[2048], line[4608];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %-5s ", ts.tv_nsec / 1000000L, log_level_name(level));
    if (job && *job) n += (size_t)snprintf(line + n, sizeof line - n, "job=%.40s ", job);
    /* escape control bytes so one event stays one line */
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 5 < sizeof line; p++) {
        if (*p == '\n') { line[n++] = '\\'; line[n++] = 'n'; }
        else if (*p < 0x20 || *p == 0x7f) n += (size_t)snprintf(line + n, sizeof line - n, "\\x%02x", *p);
        else line[n++] = (char)*p;
    }
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}
