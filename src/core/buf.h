/*
 * A growable byte buffer for building response bodies and wire output
 * (request lifetime; not for per-token paths that must not allocate — those
 * reuse one buffer, which keeps its capacity across resets).
 */
#pragma once

#include "core/arena.h"

#include <stddef.h>

struct lmd_buf {
    char *ptr;               /* [cap]; after any append, ptr[len] is a NUL so ptr is a C string */
    size_t len;              /* bytes used */
    size_t cap;              /* bytes allocated */
    struct lmd_arena *arena; /* grow inside this request arena (set before the first append); NULL = malloc */
};

/* Make room for `extra` more bytes. 0 or LMD_ENOMEM (buffer unchanged). */
int lmd_buf_reserve(struct lmd_buf *b, size_t extra);
int lmd_buf_append(struct lmd_buf *b, const void *data, size_t n);
int lmd_buf_printf(struct lmd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Release the bytes (an arena's stay until the arena goes); b is empty
 * after, and keeps its arena. */
void lmd_buf_free(struct lmd_buf *b);
