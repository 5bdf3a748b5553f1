/* multipart: multipart/form-data request bodies (RFC 7578, on RFC 2046's
 * framing), for file uploads (OpenAI's POST /v1/images/edits).
 *
 * The body is hostile input and is read as bytes, never as a C string. Its
 * size is already bounded by max_body_bytes; on top of that a body may have
 * at most MULTIPART_MAX_PARTS parts, each header block at most
 * MULTIPART_HEADERS_MAX bytes. Delimiters are CRLF "--" boundary, as every
 * HTTP client writes them; a boundary string inside a part's data that is
 * not followed by "--" or the end of its line is data (RFC 2046 5.1.1). A
 * body without its closing delimiter is truncated: refused, not guessed.
 * Part data is not copied: it points into the body. */
#ifndef DF_MULTIPART_H
#define DF_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

#define MULTIPART_MAX_PARTS 64
#define MULTIPART_HEADERS_MAX 8192
#define MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 */
#define MULTIPART_NAME_MAX 128

struct multipart_part {
    char name[MULTIPART_NAME_MAX];       /* Content-Disposition's name */
    char filename[256];                  /* its filename (truncated to fit), "" when none */
    bool is_file;                        /* a filename parameter was given (even "") */
    char content_type[128];              /* the part's Content-Type, "" when none */
    const uint8_t *data;                 /* into the body; not NUL-terminated */
    size_t len;
};

struct multipart {
    struct multipart_part *parts;
    int n;
};

/* The boundary of a Content-Type header "multipart/form-data; boundary=...":
 * DF_EINVAL (with the reason) for another type, or a boundary missing or not
 * 1..70 of RFC 2046's characters. */
df_status multipart_boundary(const char *content_type, char out[MULTIPART_BOUNDARY_MAX + 1]);

/* Splits `body` into its parts. DF_EINVAL with the reason for a malformed
 * body (no boundary, truncated, a part without a form-data name, too many
 * parts, ...), DF_ENOMEM. *out is zeroed first; free it with
 * multipart_free, also after a failure. */
df_status multipart_parse(const char *content_type, const void *body, size_t len, struct multipart *out);
void multipart_free(struct multipart *mp);

/* The first part named `name`, or NULL. */
const struct multipart_part *multipart_find(const struct multipart *mp, const char *name);

#endif
