/*
 * Paged KV cache storage and block allocator (see kv.h). The free list is a
 * stack so that recently freed (cache-warm) blocks are reused first.
 */
#include "kv/kv.h"

#include <stdlib.h>
#include <string.h>

size_t kv_bytes(const struct kv_config *c)
{
    size_t per_tok = (size_t)c->n_layer * (size_t)c->n_head_kv * (size_t)(c->head_dim_k + c->head_dim_v) * 2;
    return per_tok * (size_t)c->block_tokens * (size_t)c->n_blocks;
}

int kv_init(struct kv_cache *kv, const struct kv_config *cfg, struct lmd_err *err)
{
    memset(kv, 0, sizeof *kv);
    if (cfg->n_layer <= 0 || cfg->n_head_kv <= 0 || cfg->head_dim_k <= 0 || cfg->head_dim_v <= 0 ||
        cfg->block_tokens <= 0 || cfg->n_blocks <= 0)
        return lmd_err_set(err, LMD_EINVAL, "kv cache: every dimension must be positive (blocks %d, block size %d)",
                           cfg->n_blocks, cfg->block_tokens);
    kv->cfg = *cfg;
    kv->block_k_elems =
        (size_t)cfg->n_layer * (size_t)cfg->n_head_kv * (size_t)cfg->block_tokens * (size_t)cfg->head_dim_k;
    kv->block_v_elems =
        (size_t)cfg->n_layer * (size_t)cfg->n_head_kv * (size_t)cfg->block_tokens * (size_t)cfg->head_dim_v;
    /* calloc: pages are touched lazily, so an oversized --kv-blocks costs
     * address space, not resident memory, until blocks are used. */
    kv->k = calloc((size_t)cfg->n_blocks, kv->block_k_elems * sizeof(uint16_t));
    kv->v = calloc((size_t)cfg->n_blocks, kv->block_v_elems * sizeof(uint16_t));
    kv->free_ids = malloc((size_t)cfg->n_blocks * sizeof(int32_t));
    if (!kv->k || !kv->v || !kv->free_ids) {
        size_t mib = kv_bytes(cfg) >> 20;
        kv_free(kv);
        return lmd_err_set(err, LMD_ENOMEM, "kv cache: cannot allocate %zu MiB for %d blocks of %d tokens", mib,
                           cfg->n_blocks, cfg->block_tokens);
    }
    /* Lowest ids on top of the stack. */
    for (int i = 0; i < cfg->n_blocks; i++)
        kv->free_ids[i] = cfg->n_blocks - 1 - i;
    kv->n_free = cfg->n_blocks;
    return 0;
}

void kv_free(struct kv_cache *kv)
{
    free(kv->k);
    free(kv->v);
    free(kv->free_ids);
    memset(kv, 0, sizeof *kv);
}

int kv_free_blocks(const struct kv_cache *kv) { return kv->n_free; }

int kv_blocks_for(const struct kv_cache *kv, int n_tokens)
{
    return (n_tokens + kv->cfg.block_tokens - 1) / kv->cfg.block_tokens;
}

int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *seq, int n_tokens)
{
    int need = kv_blocks_for(kv, n_tokens);
    if (need <= seq->n_blocks)
        return 0;
    if (need > seq->cap)
        return LMD_ERANGE;
    int more = need - seq->n_blocks;
    if (more > kv->n_free)
        return LMD_EBUSY;
    for (int i = 0; i < more; i++)
        seq->blocks[seq->n_blocks++] = kv->free_ids[--kv->n_free];
    return 0;
}

void kv_seq_release(struct kv_cache *kv, struct kv_seq *seq)
{
    /* Push in reverse so the sequence's first block is reused first. */
    for (int i = seq->n_blocks - 1; i >= 0; i--) {
        LMD_ASSERT(kv->n_free < kv->cfg.n_blocks, "kv: block released twice");
        kv->free_ids[kv->n_free++] = seq->blocks[i];
    }
    seq->n_blocks = 0;
}
