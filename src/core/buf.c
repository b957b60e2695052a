/*
 * Growable byte buffer (see buf.h). Capacity doubles, so appending n bytes
 * in pieces costs O(n) copies overall.
 */
#include "core/buf.h"

#include "core/error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lmd_buf_reserve(struct lmd_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return LMD_ENOMEM;
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p;
    if (b->arena) {
        /* The old copy stays in the arena until it goes. */
        p = lmd_arena_alloc(b->arena, cap);
        if (p && b->len)
            memcpy(p, b->ptr, b->len);
    } else {
        p = realloc(b->ptr, cap);
    }
    if (!p)
        return LMD_ENOMEM;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

int lmd_buf_append(struct lmd_buf *b, const void *data, size_t n)
{
    if (lmd_buf_reserve(b, n + 1))
        return LMD_ENOMEM;
    if (n)
        memcpy(b->ptr + b->len, data, n);
    b->len += n;
    b->ptr[b->len] = '\0';
    return 0;
}

int lmd_buf_printf(struct lmd_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || lmd_buf_reserve(b, (size_t)n + 1))
        return LMD_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void lmd_buf_free(struct lmd_buf *b)
{
    if (!b->arena)
        free(b->ptr);
    *b = (struct lmd_buf){.arena = b->arena};
}
