/*
 * The compute pool shared by the CPU kernels: one worker per core, the
 * calling thread participating, work-stealing between workers.
 *
 * A parallel loop splits [0, n) into chunks of `grain` items; each worker
 * owns a contiguous range of chunks (its deque), takes from its front, and
 * steals from the back of another's range when it runs dry, so uneven
 * chunks (quantized rows of different cost, a busy core) still keep every
 * core working. Workers spin briefly between loops before sleeping, because
 * a decode step runs hundreds of short loops back to back.
 *
 * Lifetime: process. Only one thread may submit to a pool at a time (the
 * engine thread that owns it); loops do not nest.
 */
#pragma once

#include "core/error.h"

#include <stdint.h>

struct lmd_pool;

/* fn runs items [begin, end) on worker `tid` (0 = the calling thread). */
typedef void (*lmd_pool_fn)(void *ctx, int64_t begin, int64_t end, int tid);

/* n_threads counts the calling thread: 1 means no workers are started. */
int lmd_pool_init(struct lmd_pool **out, int n_threads, struct lmd_err *err);
void lmd_pool_free(struct lmd_pool *p);
int lmd_pool_threads(const struct lmd_pool *p);

/* Run fn over [0, n) in chunks of at most `grain` items and return when all
 * are done. grain <= 0 picks n / (4 * threads). A NULL pool runs inline. */
void lmd_pool_for(struct lmd_pool *p, int64_t n, int64_t grain, lmd_pool_fn fn, void *ctx);
