/*
 * A request arena: bump allocation from a list of chunks, freed all at
 * once. A request's fixed-size parts (its object, prompt, output arrays,
 * stop strings) come from it in one allocation sized at creation; what
 * grows with the output (text buffers) grows inside it, abandoning the old
 * copy — geometric growth keeps the waste below the final size.
 *
 * Not thread-safe: one owner at a time (a request's I/O thread).
 */
#pragma once

#include <stddef.h>

struct lmd_arena_chunk;

struct lmd_arena {
    struct lmd_arena_chunk *head; /* the chunk being filled; older ones follow */
    size_t bytes;                 /* allocated in all chunks, headers included */
};

/* An arena whose first chunk holds `first` bytes (more chunks come as
 * needed), itself allocated inside that chunk. NULL when out of memory. */
struct lmd_arena *lmd_arena_create(size_t first);
/* n bytes aligned to 16, uninitialized; NULL when out of memory. */
void *lmd_arena_alloc(struct lmd_arena *a, size_t n);
/* n zeroed bytes. */
void *lmd_arena_calloc(struct lmd_arena *a, size_t n);
/* Free every chunk, the arena included. NULL is fine. */
void lmd_arena_destroy(struct lmd_arena *a);
