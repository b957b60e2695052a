/*
 * Request arena (see arena.h). A chunk is a header followed by its bytes;
 * a request that outgrows its first chunk gets one at least twice as big,
 * so a long streamed answer costs a handful of mallocs, not one per token.
 */
#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 16

struct lmd_arena_chunk {
    struct lmd_arena_chunk *next; /* the older chunk */
    size_t cap;                   /* bytes after the header */
    size_t used;
    _Alignas(ARENA_ALIGN) unsigned char mem[];
};

static size_t round_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

static struct lmd_arena_chunk *chunk_new(size_t cap)
{
    if (cap > SIZE_MAX / 2)
        return NULL;
    struct lmd_arena_chunk *c = malloc(sizeof *c + cap);
    if (c) {
        c->next = NULL;
        c->cap = cap;
        c->used = 0;
    }
    return c;
}

struct lmd_arena *lmd_arena_create(size_t first)
{
    struct lmd_arena_chunk *c = chunk_new(round_up(sizeof(struct lmd_arena)) + round_up(first ? first : 1024));
    if (!c)
        return NULL;
    struct lmd_arena *a = (struct lmd_arena *)c->mem;
    c->used = round_up(sizeof *a);
    a->head = c;
    a->bytes = sizeof *c + c->cap;
    return a;
}

void *lmd_arena_alloc(struct lmd_arena *a, size_t n)
{
    if (n > SIZE_MAX / 4)
        return NULL;
    n = round_up(n ? n : 1);
    struct lmd_arena_chunk *c = a->head;
    if (c->cap - c->used < n) {
        size_t cap = c->cap * 2 > n ? c->cap * 2 : n;
        struct lmd_arena_chunk *nc = chunk_new(cap);
        if (!nc)
            return NULL;
        nc->next = c;
        a->head = c = nc;
        a->bytes += sizeof *nc + nc->cap;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

void *lmd_arena_calloc(struct lmd_arena *a, size_t n)
{
    void *p = lmd_arena_alloc(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

void lmd_arena_destroy(struct lmd_arena *a)
{
    if (!a)
        return;
    /* The arena lives in its first (oldest) chunk: free that one last. */
    struct lmd_arena_chunk *c = a->head;
    while (c) {
        struct lmd_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
}
