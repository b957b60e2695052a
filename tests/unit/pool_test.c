/*
 * Compute pool tests: every item of every loop is visited exactly once, by
 * any mix of sizes, grains and thread counts, including uneven work, long
 * runs of tiny back-to-back loops, idle periods long enough for the workers
 * to fall asleep, and the degenerate cases (n = 0, n < threads, NULL pool).
 */
#include "core/pool.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

struct visit_ctx {
    _Atomic int *hits;     /* [n] */
    _Atomic int64_t sum;   /* of item indices */
    _Atomic int max_chunk; /* largest chunk seen, items */
    int n_threads;
    _Atomic int bad_tid;
    int uneven;
};

static void visit(void *vctx, int64_t begin, int64_t end, int tid)
{
    struct visit_ctx *c = vctx;
    if (tid < 0 || tid >= c->n_threads)
        atomic_store(&c->bad_tid, 1);
    int len = (int)(end - begin);
    int prev = atomic_load(&c->max_chunk);
    while (len > prev && !atomic_compare_exchange_weak(&c->max_chunk, &prev, len))
        ;
    int64_t s = 0;
    for (int64_t i = begin; i < end; i++) {
        atomic_fetch_add_explicit(&c->hits[i], 1, memory_order_relaxed);
        s += i;
        if (c->uneven && i % 7 == 0) {
            /* Some items cost far more than others. */
            volatile double x = 1;
            for (int k = 0; k < 2000; k++)
                x = x * 1.0000001 + 1e-9;
        }
    }
    atomic_fetch_add(&c->sum, s);
}

static void check_loop(struct lmd_pool *p, int64_t n, int64_t grain, int uneven)
{
    struct visit_ctx c;
    memset(&c, 0, sizeof c);
    c.hits = calloc((size_t)(n > 0 ? n : 1), sizeof *c.hits);
    assert_non_null(c.hits);
    c.n_threads = lmd_pool_threads(p);
    c.uneven = uneven;
    lmd_pool_for(p, n, grain, visit, &c);
    for (int64_t i = 0; i < n; i++)
        if (atomic_load(&c.hits[i]) != 1)
            fail_msg("n=%lld grain=%lld threads=%d: item %lld visited %d times", (long long)n, (long long)grain,
                     c.n_threads, (long long)i, atomic_load(&c.hits[i]));
    assert_int_equal(atomic_load(&c.sum), n > 0 ? n * (n - 1) / 2 : 0);
    assert_int_equal(atomic_load(&c.bad_tid), 0);
    if (grain > 0)
        assert_true(atomic_load(&c.max_chunk) <= grain);
    free(c.hits);
}

static void test_sizes_grains_threads(void **state)
{
    (void)state;
    static const int64_t sizes[] = {0, 1, 2, 3, 5, 7, 16, 31, 100, 1000, 4097, 100000};
    static const int64_t grains[] = {-1, 0, 1, 2, 3, 16, 1000, 1 << 20};
    for (int t = 1; t <= 5; t++) {
        struct lmd_pool *p;
        struct lmd_err err;
        assert_int_equal(lmd_pool_init(&p, t, &err), 0);
        assert_int_equal(lmd_pool_threads(p), t);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++)
                check_loop(p, sizes[i], grains[g], 0);
        lmd_pool_free(p);
    }
}

static void test_uneven_work(void **state)
{
    (void)state;
    for (int t = 2; t <= 4; t++) {
        struct lmd_pool *p;
        assert_int_equal(lmd_pool_init(&p, t, NULL), 0);
        for (int rep = 0; rep < 5; rep++) {
            check_loop(p, 3001, 1, 1);
            check_loop(p, 3001, 50, 1);
            check_loop(p, 3001, 0, 1);
        }
        lmd_pool_free(p);
    }
}

struct add_ctx {
    int64_t *slots; /* [n], each written by exactly one chunk */
};

static void add_one(void *vctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    struct add_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++)
        c->slots[i] += 1; /* plain writes: the pool must order them */
}

/* Plain (non-atomic) writes from one loop must be visible to the submitter
 * and to the next loop's workers: a race here shows up as a lost update. */
static void test_back_to_back_tiny_loops(void **state)
{
    (void)state;
    for (int t = 2; t <= 3; t++) {
        struct lmd_pool *p;
        assert_int_equal(lmd_pool_init(&p, t, NULL), 0);
        int64_t slots[8] = {0};
        struct add_ctx c = {slots};
        for (int rep = 0; rep < 10000; rep++)
            lmd_pool_for(p, 1 + rep % 8, 1, add_one, &c);
        int64_t total = 0;
        for (int i = 0; i < 8; i++)
            total += slots[i];
        /* Loop rep touches items [0, 1 + rep % 8): 10000 loops, 1250 of each length 1..8. */
        assert_int_equal(total, 1250 * (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8));
        for (int i = 0; i < 8; i++)
            assert_int_equal(slots[i], 1250 * (8 - i));
        lmd_pool_free(p);
    }
}

/* Workers fall asleep after a few hundred microseconds idle; loops after
 * that must wake them (or run without them) and still be complete. */
static void test_sleep_and_wake(void **state)
{
    (void)state;
    struct lmd_pool *p;
    assert_int_equal(lmd_pool_init(&p, 3, NULL), 0);
    for (int rep = 0; rep < 6; rep++) {
        struct timespec ts = {0, 5 * 1000 * 1000}; /* 5 ms */
        nanosleep(&ts, NULL);
        check_loop(p, 997, 3, 0);
        check_loop(p, 10, 1, 0);
    }
    lmd_pool_free(p);
}

static void test_null_pool_and_small_n(void **state)
{
    (void)state;
    check_loop(NULL, 0, 0, 0);
    check_loop(NULL, 1, 0, 0);
    check_loop(NULL, 1000, 7, 0);
    assert_int_equal(lmd_pool_threads(NULL), 1);

    struct lmd_pool *p;
    assert_int_equal(lmd_pool_init(&p, 4, NULL), 0);
    for (int64_t n = 0; n < 4; n++)
        check_loop(p, n, 0, 0);
    check_loop(p, 3, 1, 0);
    lmd_pool_free(p);
    lmd_pool_free(NULL);
}

static void test_bad_thread_count(void **state)
{
    (void)state;
    struct lmd_pool *p = (struct lmd_pool *)&p;
    struct lmd_err err;
    assert_int_equal(lmd_pool_init(&p, 0, &err), LMD_EINVAL);
    assert_null(p);
    assert_int_equal(lmd_pool_init(&p, -3, &err), LMD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes_grains_threads),    cmocka_unit_test(test_uneven_work),
        cmocka_unit_test(test_back_to_back_tiny_loops), cmocka_unit_test(test_sleep_and_wake),
        cmocka_unit_test(test_null_pool_and_small_n),   cmocka_unit_test(test_bad_thread_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
