/*
 * A model's paged K/V store (see struct model_kv in model.h): the bytes
 * only. Which block belongs to which sequence is kv/'s business, above.
 */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

size_t model_kv_block_bytes(const struct model *m, int block_tokens)
{
    const struct model_hparams *hp = &m->hp;
    size_t per_tok = (size_t)hp->n_layer * (size_t)hp->n_head_kv * (size_t)(hp->head_dim_k + hp->head_dim_v) * 2;
    return per_tok * (size_t)block_tokens;
}

int model_kv_init(struct model_kv *kv, const struct model *m, int n_blocks, int block_tokens, struct lmd_err *err)
{
    memset(kv, 0, sizeof *kv);
    const struct model_hparams *hp = &m->hp;
    if (n_blocks <= 0 || block_tokens <= 0)
        return lmd_err_set(err, LMD_EINVAL, "kv store: every dimension must be positive (blocks %d, block size %d)",
                           n_blocks, block_tokens);
    kv->n_blocks = n_blocks;
    kv->block_tokens = block_tokens;
    kv->n_layer = hp->n_layer;
    kv->n_head_kv = hp->n_head_kv;
    kv->head_dim_k = hp->head_dim_k;
    kv->head_dim_v = hp->head_dim_v;
    kv->block_k_elems = (size_t)hp->n_layer * (size_t)hp->n_head_kv * (size_t)block_tokens * (size_t)hp->head_dim_k;
    kv->block_v_elems = (size_t)hp->n_layer * (size_t)hp->n_head_kv * (size_t)block_tokens * (size_t)hp->head_dim_v;
    /* calloc: pages are touched lazily, so an oversized --kv-blocks costs
     * address space, not resident memory, until blocks are used. */
    kv->k = calloc((size_t)n_blocks, kv->block_k_elems * sizeof(uint16_t));
    kv->v = calloc((size_t)n_blocks, kv->block_v_elems * sizeof(uint16_t));
    if (!kv->k || !kv->v) {
        size_t mib = (model_kv_block_bytes(m, block_tokens) * (size_t)n_blocks) >> 20;
        model_kv_free(kv);
        return lmd_err_set(err, LMD_ENOMEM, "kv store: cannot allocate %zu MiB for %d blocks of %d tokens", mib,
                           n_blocks, block_tokens);
    }
    return 0;
}

void model_kv_free(struct model_kv *kv)
{
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}
