/*
 * KV block manager: reservation is all-or-nothing, blocks are never handed
 * out twice, release returns every block; the prefix cache matches only
 * whole chains of full blocks under the same salt, shares blocks by
 * reference, keeps released blocks cached until they are needed and then
 * evicts the least recently released first. Also the engine-side store's
 * addressing (model_kv), which the block ids index.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kv/kv.h"
#include "model/model.h"

static const struct kv_config cfg = {.block_tokens = 16, .n_blocks = 10};

static void test_reserve_release(void **state)
{
    (void)state;
    struct kv_mgr kv;
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

static void test_bad_config(void **state)
{
    (void)state;
    struct kv_mgr kv;
    struct lmd_err err = {0};
    struct kv_config c = cfg;
    c.n_blocks = 0;
    assert_int_equal(kv_init(&kv, &c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "blocks 0"));
}

/* tok[i] = base + i for a run of n tokens. */
static void fill(int32_t *tok, int n, int base)
{
    for (int i = 0; i < n; i++)
        tok[i] = base + i;
}

/* Prefill a sequence the way the scheduler does: match full blocks of
 * tok[0 .. n-1), reserve the rest, commit every full block. Returns the
 * matched tokens. */
static int prefill(struct kv_mgr *kv, struct kv_seq *s, const int32_t *tok, int n)
{
    const int bt = kv->cfg.block_tokens;
    for (int b = 0; b < (n - 1) / bt; b++)
        if (!kv_seq_match_block(kv, s, tok + b * bt))
            break;
    int hit = s->n_blocks * bt;
    assert_int_equal(kv_seq_reserve(kv, s, n), 0);
    while ((s->n_hashed + 1) * bt <= n)
        kv_seq_commit_block(kv, s, tok + s->n_hashed * bt);
    return hit;
}

static void test_prefix_match_and_share(void **state)
{
    (void)state;
    struct kv_mgr kv;
    struct kv_config c = cfg;
    c.prefix_cache = true;
    assert_int_equal(kv_init(&kv, &c, NULL), 0);
    int32_t tok[64], ia[8], ib[8], ic[8], id[8];
    fill(tok, 64, 100);
    struct kv_seq a = {.blocks = ia, .cap = 8, .salt = kv_salt(0, "acme", 4)};
    struct kv_seq b = {.blocks = ib, .cap = 8, .salt = a.salt};
    struct kv_seq other = {.blocks = ic, .cap = 8, .salt = kv_salt(0, "umbrella", 8)};
    struct kv_seq d = {.blocks = id, .cap = 8, .salt = a.salt};

    /* 40 tokens: two full blocks registered, the third partial. */
    assert_int_equal(prefill(&kv, &a, tok, 40), 0);
    assert_int_equal(kv.n_cached, 2);
    /* Same 40 tokens, same salt: both full blocks are shared. */
    assert_int_equal(prefill(&kv, &b, tok, 40), 32);
    assert_memory_equal(a.blocks, b.blocks, 2 * sizeof(int32_t));
    assert_int_not_equal(a.blocks[2], b.blocks[2]);
    assert_int_equal(kv.blk[a.blocks[0]].refs, 2);
    assert_int_equal(kv_free_blocks(&kv), 10 - 4);
    /* Another tenant's salt sees nothing. */
    assert_int_equal(prefill(&kv, &other, tok, 40), 0);
    kv_seq_release(&kv, &other);
    /* Exactly two blocks long: the last token must be computed, so only the
     * first block is taken. */
    assert_int_equal(prefill(&kv, &d, tok, 32), 16);
    kv_seq_release(&kv, &d);
    /* A different second block: the chain stops after the first. */
    int32_t fork[40];
    memcpy(fork, tok, sizeof fork);
    fork[20] = 7;
    assert_int_equal(prefill(&kv, &d, fork, 40), 16);
    kv_seq_release(&kv, &d);
    /* A different first block: nothing, even though the second is equal
     * (a block's identity includes everything before it). */
    memcpy(fork, tok, sizeof fork);
    fork[0] = 7;
    assert_int_equal(prefill(&kv, &d, fork, 40), 0);
    kv_seq_release(&kv, &d);

    /* Shared blocks stay held while anyone holds them. */
    kv_seq_release(&kv, &a);
    assert_int_equal(kv.blk[b.blocks[0]].refs, 1);
    kv_seq_release(&kv, &b);
    /* Everything is free again, the registered prefixes still cached. */
    assert_int_equal(kv_free_blocks(&kv), 10);
    assert_true(kv.n_cached >= 2);
    assert_int_equal(prefill(&kv, &a, tok, 64), 32); /* the third block was never full */
    kv_seq_release(&kv, &a);
    kv_free(&kv);
}

static void test_prefix_lru_eviction(void **state)
{
    (void)state;
    struct kv_mgr kv;
    struct kv_config c = {.block_tokens = 4, .n_blocks = 6, .prefix_cache = true};
    assert_int_equal(kv_init(&kv, &c, NULL), 0);
    int32_t x[9], y[9], ids[4], big_ids[6];
    fill(x, 9, 10);
    fill(y, 9, 50);
    struct kv_seq s = {.blocks = ids, .cap = 4};
    /* x then y: each leaves two cached blocks (and a plain one) behind. */
    assert_int_equal(prefill(&kv, &s, x, 9), 0);
    kv_seq_release(&kv, &s);
    assert_int_equal(prefill(&kv, &s, y, 9), 0);
    kv_seq_release(&kv, &s);
    assert_int_equal(kv.n_cached, 4);
    assert_int_equal(kv_free_blocks(&kv), 6);
    /* Taking 4 blocks uses the 2 never-cached ones first, then evicts the
     * 2 least recently released cached ones: x's, last block first. */
    struct kv_seq big = {.blocks = big_ids, .cap = 6};
    assert_int_equal(kv_seq_reserve(&kv, &big, 16), 0);
    assert_int_equal(kv.evictions, 2);
    assert_int_equal(kv.n_cached, 2);
    kv_seq_release(&kv, &big);
    assert_int_equal(prefill(&kv, &s, y, 9), 8); /* y survived */
    kv_seq_release(&kv, &s);
    assert_int_equal(prefill(&kv, &s, x, 9), 0); /* x was evicted */
    kv_seq_release(&kv, &s);
    /* A match takes a cached block off the evictable list: holding y's
     * prefix, a reservation cannot evict it. */
    assert_int_equal(prefill(&kv, &s, y, 9), 8);
    assert_int_equal(kv_free_blocks(&kv), 3);
    struct kv_seq more = {.blocks = big_ids, .cap = 6};
    assert_int_equal(kv_seq_reserve(&kv, &more, 16), LMD_EBUSY);
    assert_int_equal(kv_seq_reserve(&kv, &more, 12), 0);
    for (int i = 0; i < more.n_blocks; i++)
        for (int j = 0; j < s.n_blocks; j++)
            assert_int_not_equal(more.blocks[i], s.blocks[j]);
    kv_seq_release(&kv, &more);
    kv_seq_release(&kv, &s);
    assert_int_equal(kv_free_blocks(&kv), 6);
    kv_free(&kv);
}

static void test_prefix_off(void **state)
{
    (void)state;
    struct kv_mgr kv;
    assert_int_equal(kv_init(&kv, &cfg, NULL), 0);
    int32_t tok[40], ids[4];
    fill(tok, 40, 3);
    struct kv_seq s = {.blocks = ids, .cap = 4};
    assert_int_equal(prefill(&kv, &s, tok, 40), 0);
    kv_seq_release(&kv, &s);
    assert_int_equal(prefill(&kv, &s, tok, 40), 0);
    assert_int_equal(kv.n_cached, 0);
    kv_seq_release(&kv, &s);
    kv_free(&kv);
}

static void test_salt(void **state)
{
    (void)state;
    assert_true(kv_salt(0, "a", 1) == kv_salt(0, "a", 1));
    assert_true(kv_salt(0, "a", 1) != kv_salt(0, "b", 1));
    assert_true(kv_salt(0, "ab", 2) != kv_salt(kv_salt(0, "a", 1), "b", 1));
    assert_true(kv_salt(0, "", 0) != 0);
}

static void test_store_addressing(void **state)
{
    (void)state;
    struct model m = {.hp = {.n_layer = 3, .n_head_kv = 2, .head_dim_k = 8, .head_dim_v = 4}};
    struct model_kv kv;
    const int nb = 10, bt = 16;
    assert_int_equal(model_kv_init(&kv, &m, nb, bt, NULL), 0);
    assert_int_equal(model_kv_block_bytes(&m, bt), (size_t)3 * 2 * (8 + 4) * 2 * bt);
    /* Every (block, layer, head, slot) vector is distinct and in bounds. */
    size_t nk = (size_t)nb * kv.block_k_elems, nv = (size_t)nb * kv.block_v_elems;
    uint8_t *hit = calloc(nk, 1);
    for (int b = 0; b < nb; b++)
        for (int l = 0; l < 3; l++)
            for (int h = 0; h < 2; h++)
                for (int s = 0; s < bt; s++) {
                    size_t ko = (size_t)(model_kv_k_at(&kv, b, l, h, s) - kv.k);
                    size_t vo = (size_t)(model_kv_v_at(&kv, b, l, h, s) - kv.v);
                    assert_true(ko + 8 <= nk);
                    assert_true(vo + 4 <= nv);
                    for (int d = 0; d < 8; d++) {
                        assert_int_equal(hit[ko + (size_t)d], 0);
                        hit[ko + (size_t)d] = 1;
                    }
                }
    for (size_t i = 0; i < nk; i++)
        assert_int_equal(hit[i], 1);
    free(hit);
    model_kv_free(&kv);
    struct lmd_err err = {0};
    assert_int_equal(model_kv_init(&kv, &m, 0, bt, &err), LMD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_release),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_prefix_match_and_share),
        cmocka_unit_test(test_prefix_lru_eviction),
        cmocka_unit_test(test_prefix_off),
        cmocka_unit_test(test_salt),
        cmocka_unit_test(test_store_addressing),
    };
    return cmocka_run_group_tests_name("kv", tests, NULL, NULL);
}
