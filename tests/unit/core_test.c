/*
 * core/: the request arena (alignment, growth past the first chunk, zeroed
 * allocations, destroy frees everything — ASan checks the last) and a
 * byte buffer growing inside an arena.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/arena.h"
#include "core/buf.h"

static void test_arena(void **state)
{
    (void)state;
    struct lmd_arena *a = lmd_arena_create(100);
    assert_non_null(a);
    size_t first = a->bytes;
    char *p[40];
    for (int i = 0; i < 40; i++) {
        p[i] = lmd_arena_alloc(a, (size_t)i * 7 + 1);
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 16, 0);
        memset(p[i], i, (size_t)i * 7 + 1);
    }
    /* Past the first chunk: more chunks, and nothing overlaps. */
    assert_true(a->bytes > first);
    for (int i = 0; i < 40; i++)
        for (size_t k = 0; k < (size_t)i * 7 + 1; k++)
            assert_int_equal((unsigned char)p[i][k], i);
    /* Larger than twice the current chunk: a chunk of its own. */
    char *big = lmd_arena_alloc(a, 1 << 20);
    assert_non_null(big);
    memset(big, 1, 1 << 20);
    unsigned char *z = lmd_arena_calloc(a, 333);
    for (int i = 0; i < 333; i++)
        assert_int_equal(z[i], 0);
    assert_null(lmd_arena_alloc(a, SIZE_MAX / 2));
    lmd_arena_destroy(a);
    lmd_arena_destroy(NULL);
}

static void test_buf_in_arena(void **state)
{
    (void)state;
    struct lmd_arena *a = lmd_arena_create(64);
    struct lmd_buf b = {.arena = a};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(lmd_buf_printf(&b, "%d,", i % 10), 0);
    assert_int_equal(b.len, 2000);
    for (size_t i = 0; i < 2000; i += 2)
        assert_int_equal(b.ptr[i], '0' + (int)(i / 2 % 10));
    assert_int_equal(b.ptr[b.len], '\0');
    lmd_buf_free(&b); /* the bytes stay in the arena; the buffer is empty and keeps it */
    assert_null(b.ptr);
    assert_ptr_equal(b.arena, a);
    assert_int_equal(lmd_buf_append(&b, "x", 1), 0);
    assert_string_equal(b.ptr, "x");
    lmd_arena_destroy(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_buf_in_arena),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
