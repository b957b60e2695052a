/*
 * Paged KV cache: reservation is all-or-nothing, blocks are never handed
 * out twice, release returns every block, addressing stays in bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kv/kv.h"

static const struct kv_config cfg = {
    .n_layer = 3, .n_head_kv = 2, .head_dim_k = 8, .head_dim_v = 4, .block_tokens = 16, .n_blocks = 10};

static void test_reserve_release(void **state)
{
    (void)state;
    struct kv_cache kv;
    struct lmd_err err = {0};
    assert_int_equal(kv_init(&kv, &cfg, &err), 0);
    assert_int_equal(kv_free_blocks(&kv), 10);
    assert_int_equal(kv_blocks_for(&kv, 0), 0);
    assert_int_equal(kv_blocks_for(&kv, 1), 1);
    assert_int_equal(kv_blocks_for(&kv, 16), 1);
    assert_int_equal(kv_blocks_for(&kv, 17), 2);

    int32_t a_ids[8], b_ids[8];
    struct kv_seq a = {.blocks = a_ids, .cap = 8}, b = {.blocks = b_ids, .cap = 8};
    assert_int_equal(kv_seq_reserve(&kv, &a, 40), 0); /* 3 blocks */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(kv_seq_reserve(&kv, &a, 33), 0); /* already enough: no change */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(kv_free_blocks(&kv), 7);
    /* Past the table's capacity. */
    assert_int_equal(kv_seq_reserve(&kv, &b, 16 * 9), LMD_ERANGE);
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(kv_seq_reserve(&kv, &b, 16 * 7), 0);
    assert_int_equal(kv_free_blocks(&kv), 0);
    /* Not enough free blocks: nothing changes. */
    assert_int_equal(kv_seq_reserve(&kv, &a, 16 * 4), LMD_EBUSY);
    assert_int_equal(a.n_blocks, 3);
    /* No block is owned twice. */
    int seen[10] = {0};
    for (int i = 0; i < a.n_blocks; i++)
        seen[a.blocks[i]]++;
    for (int i = 0; i < b.n_blocks; i++)
        seen[b.blocks[i]]++;
    for (int i = 0; i < 10; i++)
        assert_int_equal(seen[i], 1);
    kv_seq_release(&kv, &b);
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(kv_free_blocks(&kv), 7);
    assert_int_equal(kv_seq_reserve(&kv, &a, 16 * 4), 0);
    kv_seq_release(&kv, &a);
    assert_int_equal(kv_free_blocks(&kv), 10);
    kv_free(&kv);
}

static void test_addressing(void **state)
{
    (void)state;
    struct kv_cache kv;
    assert_int_equal(kv_init(&kv, &cfg, NULL), 0);
    /* Every (block, layer, head, slot) vector is distinct and in bounds. */
    size_t nk = (size_t)cfg.n_blocks * kv.block_k_elems, nv = (size_t)cfg.n_blocks * kv.block_v_elems;
    uint8_t *hit = calloc(nk, 1);
    for (int b = 0; b < cfg.n_blocks; b++)
        for (int l = 0; l < cfg.n_layer; l++)
            for (int h = 0; h < cfg.n_head_kv; h++)
                for (int s = 0; s < cfg.block_tokens; s++) {
                    size_t ko = (size_t)(kv_k_at(&kv, b, l, h, s) - kv.k);
                    size_t vo = (size_t)(kv_v_at(&kv, b, l, h, s) - kv.v);
                    assert_true(ko + (size_t)cfg.head_dim_k <= nk);
                    assert_true(vo + (size_t)cfg.head_dim_v <= nv);
                    for (int d = 0; d < cfg.head_dim_k; d++) {
                        assert_int_equal(hit[ko + (size_t)d], 0);
                        hit[ko + (size_t)d] = 1;
                    }
                }
    for (size_t i = 0; i < nk; i++)
        assert_int_equal(hit[i], 1);
    free(hit);
    kv_free(&kv);
}

static void test_bad_config(void **state)
{
    (void)state;
    struct kv_cache kv;
    struct lmd_err err = {0};
    struct kv_config c = cfg;
    c.n_blocks = 0;
    assert_int_equal(kv_init(&kv, &c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "blocks 0"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_release),
        cmocka_unit_test(test_addressing),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests_name("kv", tests, NULL, NULL);
}
