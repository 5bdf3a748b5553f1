/* status: the error convention shared by every layer.
 *
 * Functions that can fail return a df_status and write results through
 * out-pointers. The human-readable reason is kept per thread (like dlerror),
 * so a caller can report it without every signature carrying a buffer. */
#ifndef DF_STATUS_H
#define DF_STATUS_H

typedef enum {
    DF_OK = 0,
    DF_EINVAL,       /* bad argument or request from the caller */
    DF_ENOMEM,       /* host or device memory exhausted */
    DF_EDEVICE,      /* Vulkan failure: device lost, no device, shader load */
    DF_EIO,          /* file could not be opened, read or mapped */
    DF_EFORMAT,      /* a file's contents are malformed or hostile */
    DF_EUNSUPPORTED, /* valid input we do not handle (yet) */
    DF_ECANCELLED,   /* the caller asked to stop */
    DF_ENUMERIC,     /* a model produced Inf/NaN (overflow): no result */
} df_status;

/* Records the reason for the failure being returned and returns `st`, so a
 * failing path reads: return df_error(DF_EINVAL, "bad shape %d", n); */
df_status df_error(df_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The last message recorded on this thread ("" if none). */
const char *df_errmsg(void);

/* Short stable name of a status ("einval", ...), for logs and JSON. */
const char *df_status_name(df_status st);

#endif
