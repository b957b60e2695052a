/*
 * The KV block manager and its prefix cache (see kv.h). Two free lists:
 * a stack of blocks that hold nothing reusable (recently freed, so
 * cache-warm, blocks are reused first) and an LRU list of unreferenced
 * blocks that still hold a registered prefix, taken from only when the
 * stack is empty. Registered blocks are found through a chained hash table
 * keyed by their chain hash; a lookup compares the parent hash, the salt
 * and the tokens as well, so a 64-bit hash collision can never hand a
 * sequence someone else's K/V.
 */
#include "kv/kv.h"

#include <stdlib.h>
#include <string.h>

/* The parent hash of a sequence's first block. */
#define KV_ROOT_HASH 0x6c6d642d6b762d30ull

static uint64_t kv_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t kv_salt(uint64_t prev, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    uint64_t h = kv_mix(prev ^ 0x73616c74ull) ^ n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return kv_mix(h);
}

static uint64_t kv_block_hash(uint64_t parent, uint64_t salt, const int32_t *tok, int n)
{
    uint64_t h = kv_mix(parent ^ kv_mix(salt + 0x9e3779b97f4a7c15ull));
    for (int i = 0; i < n; i++)
        h = kv_mix(h ^ (uint64_t)(uint32_t)tok[i]);
    return h;
}

int kv_init(struct kv_mgr *kv, const struct kv_config *cfg, struct lmd_err *err)
{
    memset(kv, 0, sizeof *kv);
    if (cfg->block_tokens <= 0 || cfg->n_blocks <= 0)
        return lmd_err_set(err, LMD_EINVAL, "kv blocks: counts must be positive (blocks %d, block size %d)",
                           cfg->n_blocks, cfg->block_tokens);
    kv->cfg = *cfg;
    uint32_t nb = 1;
    while (nb < (uint32_t)cfg->n_blocks && nb < (1u << 30))
        nb <<= 1;
    kv->bucket_mask = nb - 1;
    kv->blk = calloc((size_t)cfg->n_blocks, sizeof *kv->blk);
    kv->free_ids = malloc((size_t)cfg->n_blocks * sizeof *kv->free_ids);
    if (cfg->prefix_cache) {
        kv->bucket = malloc((size_t)nb * sizeof *kv->bucket);
        kv->tokens = malloc((size_t)cfg->n_blocks * (size_t)cfg->block_tokens * sizeof *kv->tokens);
        kv->parent = malloc((size_t)cfg->n_blocks * sizeof *kv->parent);
        kv->salt = malloc((size_t)cfg->n_blocks * sizeof *kv->salt);
    }
    if (!kv->blk || !kv->free_ids || (cfg->prefix_cache && (!kv->bucket || !kv->tokens || !kv->parent || !kv->salt))) {
        kv_free(kv);
        return lmd_err_set(err, LMD_ENOMEM, "kv blocks: out of memory for %d blocks", cfg->n_blocks);
    }
    for (uint32_t i = 0; cfg->prefix_cache && i < nb; i++)
        kv->bucket[i] = -1;
    /* Lowest ids on top of the stack. */
    for (int i = 0; i < cfg->n_blocks; i++) {
        kv->free_ids[i] = cfg->n_blocks - 1 - i;
        kv->blk[i].hnext = kv->blk[i].lru_prev = kv->blk[i].lru_next = -1;
    }
    kv->n_free = cfg->n_blocks;
    kv->lru_head = kv->lru_tail = -1;
    return 0;
}

void kv_free(struct kv_mgr *kv)
{
    free(kv->blk);
    free(kv->free_ids);
    free(kv->bucket);
    free(kv->tokens);
    free(kv->parent);
    free(kv->salt);
    memset(kv, 0, sizeof *kv);
}

int kv_free_blocks(const struct kv_mgr *kv) { return kv->n_free + kv->n_lru; }

int kv_blocks_for(const struct kv_mgr *kv, int n_tokens)
{
    return (n_tokens + kv->cfg.block_tokens - 1) / kv->cfg.block_tokens;
}

/* ---- the evictable list -------------------------------------------------- */

static void lru_unlink(struct kv_mgr *kv, int32_t id)
{
    struct kv_block *b = &kv->blk[id];
    if (b->lru_prev >= 0)
        kv->blk[b->lru_prev].lru_next = b->lru_next;
    else
        kv->lru_head = b->lru_next;
    if (b->lru_next >= 0)
        kv->blk[b->lru_next].lru_prev = b->lru_prev;
    else
        kv->lru_tail = b->lru_prev;
    b->lru_prev = b->lru_next = -1;
    kv->n_lru--;
}

static void lru_push_tail(struct kv_mgr *kv, int32_t id)
{
    struct kv_block *b = &kv->blk[id];
    b->lru_prev = kv->lru_tail;
    b->lru_next = -1;
    if (kv->lru_tail >= 0)
        kv->blk[kv->lru_tail].lru_next = id;
    else
        kv->lru_head = id;
    kv->lru_tail = id;
    kv->n_lru++;
}

/* ---- the prefix table ------------------------------------------------------ */

static void table_remove(struct kv_mgr *kv, int32_t id)
{
    struct kv_block *b = &kv->blk[id];
    int32_t *link = &kv->bucket[b->hash & kv->bucket_mask];
    while (*link != id) {
        LMD_ASSERT(*link >= 0, "kv: a cached block is missing from its bucket");
        link = &kv->blk[*link].hnext;
    }
    *link = b->hnext;
    b->hnext = -1;
    b->cached = false;
    kv->n_cached--;
}

static int32_t table_find(const struct kv_mgr *kv, uint64_t hash, uint64_t parent, uint64_t salt, const int32_t *tok)
{
    const int bt = kv->cfg.block_tokens;
    for (int32_t id = kv->bucket[hash & kv->bucket_mask]; id >= 0; id = kv->blk[id].hnext) {
        if (kv->blk[id].hash == hash && kv->parent[id] == parent && kv->salt[id] == salt &&
            memcmp(kv->tokens + (size_t)id * (size_t)bt, tok, (size_t)bt * sizeof *tok) == 0)
            return id;
    }
    return -1;
}

/* ---- reserving and releasing ---------------------------------------------- */

/* A block for new content: a never-cached one first, else evict the least
 * recently released cached one. The caller checked that one exists. */
static int32_t kv_take(struct kv_mgr *kv)
{
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_ids[--kv->n_free];
    } else {
        id = kv->lru_head;
        LMD_ASSERT(id >= 0, "kv: no block to take");
        lru_unlink(kv, id);
        table_remove(kv, id);
        kv->evictions++;
    }
    kv->blk[id].refs = 1;
    return id;
}

int kv_seq_reserve(struct kv_mgr *kv, struct kv_seq *seq, int n_tokens)
{
    int need = kv_blocks_for(kv, n_tokens);
    if (need <= seq->n_blocks)
        return 0;
    if (need > seq->cap)
        return LMD_ERANGE;
    int more = need - seq->n_blocks;
    if (more > kv_free_blocks(kv))
        return LMD_EBUSY;
    for (int i = 0; i < more; i++)
        seq->blocks[seq->n_blocks++] = kv_take(kv);
    return 0;
}

void kv_seq_release(struct kv_mgr *kv, struct kv_seq *seq)
{
    /* In reverse, so that a chain's last blocks — the least likely to be
     * shared — are the first evicted, and uncached blocks stack with the
     * sequence's first block on top. */
    for (int i = seq->n_blocks - 1; i >= 0; i--) {
        int32_t id = seq->blocks[i];
        struct kv_block *b = &kv->blk[id];
        LMD_ASSERT(b->refs > 0, "kv: block released twice");
        if (--b->refs > 0)
            continue;
        if (b->cached) {
            lru_push_tail(kv, id);
        } else {
            LMD_ASSERT(kv->n_free < kv->cfg.n_blocks, "kv: free list overflow");
            kv->free_ids[kv->n_free++] = id;
        }
    }
    seq->n_blocks = seq->n_hashed = 0;
    seq->last_hash = 0;
}

/* ---- matching and registering ---------------------------------------------- */

static uint64_t seq_parent(const struct kv_seq *seq) { return seq->n_hashed ? seq->last_hash : KV_ROOT_HASH; }

bool kv_seq_match_block(struct kv_mgr *kv, struct kv_seq *seq, const int32_t *tok)
{
    if (!kv->cfg.prefix_cache || seq->n_blocks != seq->n_hashed || seq->n_blocks >= seq->cap)
        return false;
    uint64_t parent = seq_parent(seq);
    uint64_t h = kv_block_hash(parent, seq->salt, tok, kv->cfg.block_tokens);
    int32_t id = table_find(kv, h, parent, seq->salt, tok);
    if (id < 0)
        return false;
    if (kv->blk[id].refs++ == 0)
        lru_unlink(kv, id);
    seq->blocks[seq->n_blocks++] = id;
    seq->n_hashed++;
    seq->last_hash = h;
    return true;
}

void kv_seq_commit_block(struct kv_mgr *kv, struct kv_seq *seq, const int32_t *tok)
{
    LMD_ASSERT(seq->n_hashed < seq->n_blocks, "kv: committing a block the sequence does not hold");
    if (!kv->cfg.prefix_cache) {
        seq->n_hashed++; /* nothing to register, but the chain's length stays true */
        return;
    }
    const int bt = kv->cfg.block_tokens;
    uint64_t parent = seq_parent(seq);
    uint64_t h = kv_block_hash(parent, seq->salt, tok, bt);
    int32_t id = seq->blocks[seq->n_hashed];
    seq->n_hashed++;
    seq->last_hash = h;
    /* Another block with the same content (two equal prompts prefilled side
     * by side) stays the registered one; this one is freed plainly. */
    if (kv->blk[id].cached || table_find(kv, h, parent, seq->salt, tok) >= 0)
        return;
    struct kv_block *b = &kv->blk[id];
    b->hash = h;
    b->cached = true;
    kv->parent[id] = parent;
    kv->salt[id] = seq->salt;
    memcpy(kv->tokens + (size_t)id * (size_t)bt, tok, (size_t)bt * sizeof *tok);
    int32_t *head = &kv->bucket[h & kv->bucket_mask];
    b->hnext = *head;
    *head = id;
    kv->n_cached++;
}
