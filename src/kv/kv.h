/*
 * Paged KV cache: K and V vectors for every layer live in fixed-size blocks
 * of `block_tokens` positions, allocated once at start-up. A sequence owns
 * an ordered list of blocks (its block table); position p of the sequence
 * lives in block table[p / block_tokens] at slot p % block_tokens.
 *
 * Blocks belong to the scheduler (or `lmd run`): it reserves them before a
 * step that writes new positions and releases them when a sequence ends or
 * is preempted. The engine only reads and writes the blocks it is handed.
 *
 * Element type is F16, as llama.cpp stores its cache, so attention numerics
 * match it. Layout of one block, per layer:
 *     k: [n_head_kv][block_tokens][head_dim_k]   v: [n_head_kv][block_tokens][head_dim_v]
 *
 * Lifetime: process (the arrays); the free list is not thread-safe — one
 * owner thread (the engine thread) calls everything here.
 */
#pragma once

#include "core/error.h"

#include <stddef.h>
#include <stdint.h>

struct kv_config {
    int n_layer;
    int n_head_kv;
    int head_dim_k;   /* elements */
    int head_dim_v;   /* elements */
    int block_tokens; /* positions per block */
    int n_blocks;
};

struct kv_cache {
    struct kv_config cfg;
    uint16_t *k;       /* f16 [n_blocks][n_layer][n_head_kv][block_tokens][head_dim_k] */
    uint16_t *v;       /* f16 [n_blocks][n_layer][n_head_kv][block_tokens][head_dim_v] */
    int32_t *free_ids; /* [n_blocks] stack of free block ids */
    int n_free;
    size_t block_k_elems; /* k elements per block, all layers */
    size_t block_v_elems;
};

/* A sequence's block table. `blocks` is caller-owned storage for up to
 * `cap` block ids (sized from the context length at request start). */
struct kv_seq {
    int32_t *blocks; /* [cap] */
    int cap;
    int n_blocks;
};

int kv_init(struct kv_cache *kv, const struct kv_config *cfg, struct lmd_err *err);
void kv_free(struct kv_cache *kv);

/* Bytes that kv_init would allocate for cfg. */
size_t kv_bytes(const struct kv_config *cfg);

int kv_free_blocks(const struct kv_cache *kv);
/* Blocks needed to hold n_tokens positions. */
int kv_blocks_for(const struct kv_cache *kv, int n_tokens);

/* Grow seq so it can hold n_tokens positions. All or nothing: returns 0, or
 * LMD_EBUSY (not enough free blocks; nothing changed) or LMD_ERANGE (past
 * the table's capacity). */
int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *seq, int n_tokens);
/* Return every block of seq to the free list. */
void kv_seq_release(struct kv_cache *kv, struct kv_seq *seq);

/* Pointers to the K/V vectors of one (block, layer, head, slot). */
static inline uint16_t *kv_k_at(const struct kv_cache *kv, int32_t block, int layer, int head, int slot)
{
    const struct kv_config *c = &kv->cfg;
    return kv->k + (size_t)block * kv->block_k_elems +
           (((size_t)layer * (size_t)c->n_head_kv + (size_t)head) * (size_t)c->block_tokens + (size_t)slot) *
               (size_t)c->head_dim_k;
}

static inline uint16_t *kv_v_at(const struct kv_cache *kv, int32_t block, int layer, int head, int slot)
{
    const struct kv_config *c = &kv->cfg;
    return kv->v + (size_t)block * kv->block_v_elems +
           (((size_t)layer * (size_t)c->n_head_kv + (size_t)head) * (size_t)c->block_tokens + (size_t)slot) *
               (size_t)c->head_dim_v;
}
