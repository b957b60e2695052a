/*
 * The KV block manager: which fixed-size block of an engine's KV storage
 * belongs to which sequence, and which blocks hold a reusable prefix. It
 * holds no K or V bytes — those belong to the engine that stores them (host
 * F16 in the native engine, device memory in a GPU engine); here a block is
 * an id in [0, n_blocks).
 *
 * A sequence owns an ordered list of block ids (its block table); position
 * p of the sequence lives in block table[p / block_tokens] at slot
 * p % block_tokens. Every block in a table holds one reference.
 *
 * Prefix cache (as vLLM's automatic prefix caching): a full block whose
 * K/V are written may be registered under a hash of (its parent block's
 * hash, its tokens, the sequence's cache salt). A later sequence whose
 * tokens begin with the same chain of full blocks, under the same salt,
 * takes references on those blocks instead of computing them again. The
 * salt keeps tenants apart: two sequences share blocks only when their
 * salts are equal. A registered block that nobody references stays cached
 * (counted as free) until the free list runs dry; then the least recently
 * released one is evicted and reused.
 *
 * Blocks belong to the scheduler (or to `lmd run` / `lmd bench`): it
 * reserves them before a step that writes new positions and releases them
 * when a sequence ends or is preempted. Nothing here is thread-safe: one
 * owner thread calls everything.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv_config {
    int n_blocks;
    int block_tokens;  /* positions per block */
    bool prefix_cache; /* register and match full blocks */
};

/* One block's bookkeeping. */
struct kv_block {
    uint64_t hash;              /* chain hash while registered */
    int32_t refs;               /* block tables holding it */
    int32_t hnext;              /* next block in its hash bucket, -1 = end */
    int32_t lru_prev, lru_next; /* unreferenced cached blocks, oldest first; -1 = end */
    bool cached;                /* registered in the prefix table */
};

struct kv_mgr {
    struct kv_config cfg;
    struct kv_block *blk; /* [n_blocks] */
    int32_t *free_ids;    /* [n_blocks] stack of free blocks that hold no cached prefix */
    int n_free;
    int32_t lru_head, lru_tail; /* unreferenced cached blocks (evictable), oldest at the head */
    int n_lru;
    int32_t *bucket;      /* [n_buckets] first block of each hash bucket, -1 = empty */
    uint32_t bucket_mask; /* n_buckets - 1 (a power of two) */
    int32_t *tokens;      /* [n_blocks][block_tokens] the tokens of each registered block */
    uint64_t *parent;     /* [n_blocks] parent hash of each registered block */
    uint64_t *salt;       /* [n_blocks] salt of each registered block */
    int n_cached;         /* registered blocks, referenced or not */
    uint64_t evictions;   /* cached blocks reused for other content */
};

/* A sequence's block table. `blocks` is caller-owned storage for up to
 * `cap` block ids (sized from the context length at request start). The
 * first n_hashed blocks are full and part of the sequence's hash chain,
 * which ends at last_hash; the owner sets `salt` before matching. */
struct kv_seq {
    int32_t *blocks; /* [cap] */
    int cap;
    int n_blocks;
    int n_hashed;
    uint64_t last_hash;
    uint64_t salt;
};

int kv_init(struct kv_mgr *kv, const struct kv_config *cfg, struct lmd_err *err);
void kv_free(struct kv_mgr *kv);

/* Blocks a reservation may take now: never used, or cached but
 * unreferenced (evicted on demand). */
int kv_free_blocks(const struct kv_mgr *kv);
/* Blocks needed to hold n_tokens positions. */
int kv_blocks_for(const struct kv_mgr *kv, int n_tokens);

/* Grow seq so it can hold n_tokens positions. All or nothing: returns 0, or
 * LMD_EBUSY (not enough free blocks; nothing changed) or LMD_ERANGE (past
 * the table's capacity). */
int kv_seq_reserve(struct kv_mgr *kv, struct kv_seq *seq, int n_tokens);
/* Drop seq's reference on each of its blocks; a block nobody holds goes
 * back to the free list, or, when cached, to the evictable list. The hash
 * chain is reset, the salt kept. */
void kv_seq_release(struct kv_mgr *kv, struct kv_seq *seq);

/* A salt from bytes (a tenant name, a request's cache_salt); two salts are
 * equal when their bytes are. Salts combine: kv_salt(prev, …). */
uint64_t kv_salt(uint64_t prev, const void *bytes, size_t n);

/* Prefix match, one block at a time: while seq holds only matched blocks
 * (n_blocks == n_hashed), look up the block after its chain whose tokens
 * are tok[0 .. block_tokens). On a hit the block is appended to seq's table
 * with a reference and true is returned; on a miss (or with the cache off,
 * or the table full) nothing changes. */
bool kv_seq_match_block(struct kv_mgr *kv, struct kv_seq *seq, const int32_t *tok);

/* Extend seq's hash chain by its block n_hashed, whose positions are all
 * written and whose tokens are tok[0 .. block_tokens), and register it
 * unless an equal block is already registered. */
void kv_seq_commit_block(struct kv_mgr *kv, struct kv_seq *seq, const int32_t *tok);
