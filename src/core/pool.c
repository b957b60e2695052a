/*
 * The compute pool: n_threads - 1 worker threads plus the submitting
 * thread, running parallel-for loops with work stealing.
 *
 * One loop at a time. The submitter cuts [0, n) into chunks, hands every
 * participant (itself included, as participant 0) a contiguous range of
 * chunk indices, and publishes the loop by bumping an epoch counter. A
 * participant's range is one 64-bit atomic word packing (tag, begin, end):
 * the owner takes chunks from the front, thieves take them from the back,
 * both with a CAS on that word, so a chunk is taken exactly once without a
 * lock. The submitter returns when the completion counter says every chunk
 * has run.
 *
 * Stale participants. A worker that wakes late may still be looking at the
 * previous loop while the submitter sets up the next one. Three things make
 * that harmless: loop parameters live in two slots chosen by epoch parity,
 * range words carry the epoch's low bits as a tag (a stale worker never
 * takes a chunk of the new loop), and the submitter waits until no worker
 * is inside a loop before it rewrites a slot or a range word, so a stale
 * worker can straddle at most one rewrite and the tag cannot wrap under it.
 *
 * Idle workers spin (pause, then sched_yield) for a short while, because a
 * decode step runs hundreds of loops back to back and waking a sleeping
 * thread costs tens of microseconds; then they sleep on a condition
 * variable, which the submitter only touches when someone sleeps.
 *
 * This is not a general task system: no nesting, no futures, one submitter.
 */
#include "core/pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_PAUSE() _mm_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif

/* Range words: tag in the top 8 bits, then begin and end, 28 bits each. */
#define RANGE_BITS 28
#define RANGE_MASK ((UINT64_C(1) << RANGE_BITS) - 1)
#define MAX_CHUNKS ((int64_t)RANGE_MASK)

/* Idle spinning before sleeping: about 100-300 us on current x86 cores. */
#define SPIN_PAUSE_ITERS 20000
#define SPIN_YIELD_ITERS 200

struct pool_loop {
    lmd_pool_fn fn;
    void *ctx;
    int64_t n;            /* items */
    int64_t grain;        /* items per chunk */
    int64_t n_chunks;     /* ceil(n / grain) */
    _Atomic int64_t done; /* chunks completed */
};

struct pool_slot {
    _Alignas(64) _Atomic uint64_t range; /* packed (tag, begin, end) chunk indices */
};

struct pool_worker {
    struct lmd_pool *pool;
    int tid;
    pthread_t thread;
};

struct lmd_pool {
    int n_threads;
    struct pool_worker *workers; /* [n_threads]; [0] is the submitter, no thread */
    struct pool_slot *ranges;    /* [n_threads], one cache line each */
    struct pool_loop loops[2];   /* parameters of loops with even / odd epoch */

    _Alignas(64) _Atomic uint32_t epoch; /* loops published so far */
    _Alignas(64) _Atomic int inside;     /* workers currently looking at a loop */
    _Alignas(64) _Atomic int sleepers;   /* workers blocked on `wake` */
    _Atomic bool stop;
    pthread_mutex_t mu;
    pthread_cond_t wake;
};

static inline uint64_t range_pack(uint32_t epoch, int64_t b, int64_t e)
{
    return ((uint64_t)(epoch & 0xff) << (2 * RANGE_BITS)) | ((uint64_t)b << RANGE_BITS) | (uint64_t)e;
}

static inline bool range_tag_ok(uint64_t r, uint32_t epoch) { return (r >> (2 * RANGE_BITS)) == (epoch & 0xff); }
static inline int64_t range_begin(uint64_t r) { return (int64_t)((r >> RANGE_BITS) & RANGE_MASK); }
static inline int64_t range_end(uint64_t r) { return (int64_t)(r & RANGE_MASK); }

/* Take the first chunk of our own range. Returns -1 when it is empty. */
static int64_t take_front(_Atomic uint64_t *w, uint32_t epoch)
{
    uint64_t r = atomic_load_explicit(w, memory_order_relaxed);
    for (;;) {
        if (!range_tag_ok(r, epoch))
            return -1;
        int64_t b = range_begin(r), e = range_end(r);
        if (b >= e)
            return -1;
        if (atomic_compare_exchange_weak_explicit(w, &r, range_pack(epoch, b + 1, e), memory_order_relaxed,
                                                  memory_order_relaxed))
            return b;
    }
}

/* Steal the last chunk of someone else's range. Returns -1 when it is empty. */
static int64_t take_back(_Atomic uint64_t *w, uint32_t epoch)
{
    uint64_t r = atomic_load_explicit(w, memory_order_relaxed);
    for (;;) {
        if (!range_tag_ok(r, epoch))
            return -1;
        int64_t b = range_begin(r), e = range_end(r);
        if (b >= e)
            return -1;
        if (atomic_compare_exchange_weak_explicit(w, &r, range_pack(epoch, b, e - 1), memory_order_relaxed,
                                                  memory_order_relaxed))
            return e - 1;
    }
}

static void run_chunk(struct pool_loop *L, int64_t c, int tid)
{
    int64_t b = c * L->grain;
    int64_t e = b + L->grain < L->n ? b + L->grain : L->n;
    L->fn(L->ctx, b, e, tid);
    /* Release: the chunk's writes are visible to whoever sees the count. */
    atomic_fetch_add_explicit(&L->done, 1, memory_order_release);
}

/* Run chunks of loop `epoch` until every range is empty: our own first,
 * front to back, then the others' from the back. */
static void participate(struct lmd_pool *p, uint32_t epoch, int tid)
{
    struct pool_loop *L = &p->loops[epoch & 1];
    int64_t c;
    while ((c = take_front(&p->ranges[tid].range, epoch)) >= 0)
        run_chunk(L, c, tid);
    for (int k = 1; k < p->n_threads; k++) {
        int v = (tid + k) % p->n_threads;
        while ((c = take_back(&p->ranges[v].range, epoch)) >= 0)
            run_chunk(L, c, tid);
    }
}

static void *worker_main(void *arg)
{
    struct pool_worker *w = arg;
    struct lmd_pool *p = w->pool;
    uint32_t last = atomic_load_explicit(&p->epoch, memory_order_acquire);

    for (;;) {
        /* Wait for a new epoch: spin, then yield, then sleep. */
        int spins = 0;
        while (atomic_load_explicit(&p->epoch, memory_order_relaxed) == last) {
            if (atomic_load_explicit(&p->stop, memory_order_relaxed))
                return NULL;
            if (spins < SPIN_PAUSE_ITERS) {
                POOL_PAUSE();
                spins++;
            } else if (spins < SPIN_PAUSE_ITERS + SPIN_YIELD_ITERS) {
                sched_yield();
                spins++;
            } else {
                pthread_mutex_lock(&p->mu);
                /* seq_cst pairs with the submitter's epoch store and
                 * sleepers load: either we see the new epoch here, or it
                 * sees us asleep and broadcasts. */
                atomic_fetch_add(&p->sleepers, 1);
                while (atomic_load(&p->epoch) == last && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->wake, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
                spins = 0;
            }
        }
        if (atomic_load(&p->stop))
            return NULL;

        /* Announce ourselves before reading the epoch we will work on, so
         * the submitter cannot rewrite that loop's slot under us (both
         * seq_cst: a Dekker pair with the submitter's epoch store and its
         * wait for inside == 0). */
        atomic_fetch_add(&p->inside, 1);
        uint32_t e = atomic_load(&p->epoch);
        if (e != last) {
            last = e;
            participate(p, e, w->tid);
        }
        atomic_fetch_sub_explicit(&p->inside, 1, memory_order_release);
    }
}

int lmd_pool_init(struct lmd_pool **out, int n_threads, struct lmd_err *err)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return lmd_err_set(err, LMD_EINVAL, "pool: thread count %d out of range 1..1024", n_threads);
    struct lmd_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
    if (!p)
        return lmd_err_set(err, LMD_ENOMEM, "pool: out of memory");
    memset(p, 0, sizeof *p);
    p->n_threads = n_threads;
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    p->ranges = aligned_alloc(64, (size_t)n_threads * sizeof *p->ranges);
    if (!p->workers || !p->ranges) {
        free(p->workers);
        free(p->ranges);
        free(p);
        return lmd_err_set(err, LMD_ENOMEM, "pool: out of memory");
    }
    for (int i = 0; i < n_threads; i++)
        atomic_init(&p->ranges[i].range, range_pack(0, 0, 0));
    atomic_init(&p->epoch, 0);
    atomic_init(&p->inside, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, false);
    atomic_init(&p->loops[0].done, 0);
    atomic_init(&p->loops[1].done, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);

    for (int i = 0; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].tid = i;
    }
    for (int i = 1; i < n_threads; i++) {
        int rc = pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
        if (rc != 0) {
            p->n_threads = i; /* lmd_pool_free joins the ones that started */
            lmd_pool_free(p);
            return lmd_err_set(err, LMD_ENOMEM, "pool: cannot start worker thread %d: %s", i, strerror(rc));
        }
    }
    *out = p;
    return 0;
}

void lmd_pool_free(struct lmd_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->workers[i].thread, NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p->ranges);
    free(p);
}

int lmd_pool_threads(const struct lmd_pool *p) { return p ? p->n_threads : 1; }

void lmd_pool_for(struct lmd_pool *p, int64_t n, int64_t grain, lmd_pool_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    int T = p ? p->n_threads : 1;
    if (grain <= 0)
        grain = n / (4 * (int64_t)T);
    if (grain < 1)
        grain = 1;
    int64_t n_chunks = (n + grain - 1) / grain;

    /* One chunk or one thread: no one to share with, skip the handshake. */
    if (T == 1 || n_chunks == 1) {
        for (int64_t b = 0; b < n; b += grain)
            fn(ctx, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    if (n_chunks > MAX_CHUNKS) {
        grain = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;
        n_chunks = (n + grain - 1) / grain;
    }

    /* A worker still inside the previous loop may be reading the slot and
     * range words we are about to rewrite; it leaves within a few hundred
     * nanoseconds because that loop has no chunks left. */
    while (atomic_load(&p->inside) != 0)
        POOL_PAUSE();

    uint32_t epoch = atomic_load_explicit(&p->epoch, memory_order_relaxed) + 1;
    struct pool_loop *L = &p->loops[epoch & 1];
    L->fn = fn;
    L->ctx = ctx;
    L->n = n;
    L->grain = grain;
    L->n_chunks = n_chunks;
    atomic_store_explicit(&L->done, 0, memory_order_relaxed);
    for (int i = 0; i < T; i++) {
        int64_t b = n_chunks * i / T, e = n_chunks * (i + 1) / T;
        atomic_store_explicit(&p->ranges[i].range, range_pack(epoch, b, e), memory_order_relaxed);
    }
    /* seq_cst: publishes the slot and ranges (release) and orders against
     * the sleepers load below (see worker_main). */
    atomic_store(&p->epoch, epoch);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }

    participate(p, epoch, 0);
    while (atomic_load_explicit(&L->done, memory_order_acquire) != n_chunks)
        POOL_PAUSE();
}
