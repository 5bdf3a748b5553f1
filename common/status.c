#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_message[512];

df_status df_error(df_status st, const char *fmt, ...) {
    /* callers often wrap the previous message (df_errmsg() as an argument):
     * format aside, then copy, so the buffer is never read while written */
    char message[sizeof last_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    memcpy(last_message, message, sizeof message);
    return st;
}

const char *df_errmsg(void) { return last_message; }

const char *df_status_name(df_status st) {
    switch (st) {
    case DF_OK: return "ok";
    case DF_EINVAL: return "invalid_argument";
    case DF_ENOMEM: return "out_of_memory";
    case DF_EDEVICE: return "device_error";
    case DF_EIO: return "io_error";
    case DF_EFORMAT: return "bad_format";
    case DF_EUNSUPPORTED: return "unsupported";
    case DF_ECANCELLED: return "cancelled";
    case DF_ENUMERIC: return "numeric_error";
    }
    return "unknown";
}
