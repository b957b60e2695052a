/*
 * The native engine: model/ + kernels/ on the CPU behind engine.h.
 * Owns the compute pool, the step scratch, the logits buffer and the bytes
 * of the paged KV cache (host F16), all allocated at open; a step allocates
 * nothing. Which block holds which sequence is decided by the caller.
 */
#include "engine/engine.h"

#include "core/cpu.h"
#include "core/log.h"
#include "core/pool.h"
#include "kernels/kernels.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

struct native_engine {
    struct engine base; /* first: the engine is cast to this */
    struct model *model;
    struct model_scratch *scratch;
    struct lmd_pool *pool;
    struct model_kv kv;
    float *logits;           /* [max_seqs][n_vocab] */
    struct model_seq *mseqs; /* [max_seqs] */
    /* The step in flight (between launch and wait). */
    int rc, n_rows;
    struct lmd_err err;
};

/* The forward pass runs inside launch (the CPU engine has no stream to
 * queue on); wait hands over its status and logits. */
static int native_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err)
{
    struct native_engine *ne = (struct native_engine *)e;
    ne->rc = 0;
    ne->n_rows = 0;
    if (n_seqs > e->info.max_seqs)
        return lmd_err_set(err, LMD_EINVAL, "step: %d sequences exceed the engine's %d", n_seqs, e->info.max_seqs);
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        if (s->pos < 0 || s->n_tokens <= 0 || s->pos > e->info.n_ctx - s->n_tokens)
            return lmd_err_set(err, LMD_EINVAL, "step: sequence %d: positions %d..%d outside the context of %d", i,
                               s->pos, s->pos + s->n_tokens - 1, e->info.n_ctx);
        ne->mseqs[i] = (struct model_seq){.tokens = s->tokens,
                                          .n_tokens = s->n_tokens,
                                          .pos = s->pos,
                                          .blocks = s->blocks,
                                          .want_logits = s->want_logits,
                                          .pool = (int)s->pool,
                                          .embd = s->embd};
        ne->n_rows += s->want_logits;
    }
    ne->rc = model_forward(ne->model, ne->scratch, ne->pool, &ne->kv, ne->mseqs, n_seqs, ne->logits, &ne->err);
    return 0;
}

static int native_wait(struct engine *e, struct engine_result *res, struct lmd_err *err)
{
    struct native_engine *ne = (struct native_engine *)e;
    *res = (struct engine_result){.n_rows = ne->rc ? 0 : ne->n_rows, .logits = ne->logits};
    if (ne->rc && err)
        *err = ne->err;
    return ne->rc;
}

static void native_close(struct engine *e)
{
    struct native_engine *ne = (struct native_engine *)e;
    model_scratch_free(ne->scratch);
    lmd_pool_free(ne->pool);
    model_kv_free(&ne->kv);
    free(ne->logits);
    free(ne->mseqs);
    model_free(ne->model);
    free(ne);
}

static const struct engine_ops native_ops = {.launch = native_launch, .wait = native_wait, .close = native_close};

int engine_native_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    struct native_engine *ne = calloc(1, sizeof *ne);
    if (!ne)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    ne->base.ops = &native_ops;
    int rc = model_load(&ne->model, cfg->model_path, err);
    if (rc) {
        free(ne);
        return rc;
    }
    const struct model_hparams *hp = &ne->model->hp;
    struct engine_info *in = &ne->base.info;
    in->kind = "native";
    in->model_name = ne->model->name;
    in->arch = hp->arch->name;
    in->n_vocab = hp->n_vocab;
    in->n_ctx = cfg->n_ctx > 0 && cfg->n_ctx < hp->n_ctx_train ? cfg->n_ctx : hp->n_ctx_train;
    in->max_batch_tokens = cfg->max_batch_tokens > 0 ? cfg->max_batch_tokens : 512;
    in->max_seqs = cfg->max_seqs > 0 ? cfg->max_seqs : 16;
    in->n_threads = cfg->n_threads > 0 ? cfg->n_threads : lmd_cpu_count();
    in->gguf = ne->model->gguf;
    /* Embeddings are the hidden state after the output norm. A model whose
     * file names no pooling is a causal decoder: its last position is the
     * only one that has seen the whole input. */
    in->n_embd = hp->n_embd;
    in->pooling = hp->pooling ? (enum engine_pool)hp->pooling : ENGINE_POOL_LAST;

    int block_tokens = cfg->kv_block_tokens > 0 ? cfg->kv_block_tokens : 16, n_blocks;
    size_t block_bytes = model_kv_block_bytes(ne->model, block_tokens);
    if (cfg->kv_blocks > 0) {
        n_blocks = cfg->kv_blocks;
    } else {
        /* Enough for every sequence at full context, within the byte cap. */
        size_t cap = cfg->kv_max_bytes ? cfg->kv_max_bytes : ((size_t)2 << 30);
        int per_seq = (in->n_ctx + block_tokens - 1) / block_tokens;
        size_t want = (size_t)per_seq * (size_t)in->max_seqs;
        size_t fit = cap / block_bytes;
        n_blocks = (int)(want < fit ? want : fit);
        if (n_blocks < per_seq && (size_t)per_seq <= fit)
            n_blocks = per_seq;
        if (n_blocks < 1)
            n_blocks = 1;
    }
    if ((rc = model_kv_init(&ne->kv, ne->model, n_blocks, block_tokens, err)) ||
        (rc = lmd_pool_init(&ne->pool, in->n_threads, err)) || (rc = model_repack(ne->model, ne->pool, err)) ||
        (rc = model_scratch_create(&ne->scratch, ne->model, in->max_batch_tokens, in->max_seqs, in->n_threads, err))) {
        native_close(&ne->base);
        return rc;
    }
    in->kv_blocks = n_blocks;
    in->kv_block_tokens = block_tokens;
    in->kv_block_bytes = block_bytes;
    in->packed_bytes = ne->model->packed_bytes;
    ne->logits = malloc((size_t)in->max_seqs * (size_t)hp->n_vocab * sizeof(float));
    ne->mseqs = calloc((size_t)in->max_seqs, sizeof *ne->mseqs);
    if (!ne->logits || !ne->mseqs) {
        native_close(&ne->base);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for %d logit rows", in->max_seqs);
    }
    LMD_DEBUG("native engine: %s (%s), %d layers, ctx %d, kv %d blocks x %d tokens (%zu MiB), %d threads, isa %s, "
              "repacked weights %zu MiB",
              in->model_name, in->arch, hp->n_layer, in->n_ctx, n_blocks, block_tokens,
              (block_bytes * (size_t)n_blocks) >> 20, in->n_threads, kern_isa(), ne->model->packed_bytes >> 20);
    *out = &ne->base;
    return 0;
}
