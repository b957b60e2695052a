/*
 * Model architectures as descriptions of one shared forward pass.
 *
 * A model is three parts, kept apart as in llama2.c:
 *   - hyper-parameters read from the GGUF metadata (struct model_hparams),
 *   - read-only views of the weights inside the mmapped file (struct
 *     model_layer / struct model),
 *   - the forward pass's step scratch (struct model_scratch), sized once.
 * An architecture (gemma3, llama, qwen2, qwen3) is a row in a table of
 * traits (struct model_arch): rope style, activation, norms, biases, sliding
 * window — not a copied loop. An unsupported architecture or tensor type is
 * refused at load with a message naming it.
 *
 * The forward pass takes a ragged batch: several sequences, each a run of
 * consecutive positions (a prefill chunk or a single decode token), with
 * K/V read from and written to a paged store (struct model_kv) through
 * each sequence's block table. Which block belongs to whom is decided
 * above (kv/, by the scheduler); the model only addresses the blocks it is
 * handed.
 *
 * Lifetime: the model is process-long (weights stay in the mapping); the
 * scratch belongs to the one engine thread that runs the forward pass.
 */
#pragma once

#include "core/error.h"
#include "core/pool.h"
#include "gguf/gguf.h"

#include <stdbool.h>
#include <stdint.h>

enum model_rope {
    MODEL_ROPE_NORM = 0, /* rotate adjacent pairs (x0,x1),(x2,x3)… — llama */
    MODEL_ROPE_NEOX = 1, /* rotate halves (x_i, x_{i+d/2}) — gemma, qwen */
};

enum model_act {
    MODEL_ACT_SILU = 0, /* SwiGLU: silu(gate) * up */
    MODEL_ACT_GELU = 1, /* GeGLU:  gelu_tanh(gate) * up */
};

/* What distinguishes one architecture's forward pass from another's. */
struct model_arch {
    const char *name; /* general.architecture */
    enum model_rope rope;
    enum model_act act;
    bool qk_norm;    /* RMS norm of each Q and K head before RoPE */
    bool post_norms; /* RMS norm of the attention and FFN outputs before the residual add */
    bool embd_scale; /* scale input embeddings by sqrt(n_embd) */
    bool q_prescale; /* scale Q before attention (gemma) instead of the scores */
    bool gemma3_swa; /* sliding-window layers with their own RoPE base */
};

struct model_hparams {
    const struct model_arch *arch;
    int n_vocab;
    int n_ctx_train; /* tokens */
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim_k; /* elements */
    int head_dim_v; /* elements */
    int n_ff;
    int n_rot; /* dims rotated by RoPE (<= head_dim_k) */
    float rms_eps;
    float rope_base;       /* global layers */
    float rope_base_swa;   /* sliding-window layers */
    float rope_freq_scale; /* 1 / linear scaling factor */
    float attn_scale;      /* multiplies Q·K (or Q when q_prescale) */
    float final_softcap;   /* 0 = none */
    int n_swa;             /* sliding window in tokens; 0 = none */
    bool *layer_swa;       /* [n_layer] true if layer uses the sliding window */
    int pooling;           /* enum engine_pool from <arch>.pooling_type; 0 = not given */
};

/* Views into the mapping; NULL where a model lacks the tensor. */
struct model_tensor {
    const void *data;
    enum gguf_dtype type;
    int64_t n_cols; /* ne[0]: elements per row */
    int64_t n_rows; /* ne[1] */
    size_t row_bytes;
    void *packed; /* kern_repack copy for m >= 2 rows, or NULL; owned by the model */
};

struct model_layer {
    const float *attn_norm; /* [n_embd] */
    struct model_tensor wq, wk, wv, wo;
    const float *bq, *bk, *bv;    /* optional biases */
    const float *q_norm, *k_norm; /* [head_dim_k] */
    const float *attn_post_norm;  /* [n_embd] */
    const float *ffn_norm;        /* [n_embd] */
    struct model_tensor ffn_gate, ffn_up, ffn_down;
    const float *ffn_post_norm; /* [n_embd] */
};

struct model {
    struct gguf_file *gguf; /* owned */
    struct model_hparams hp;
    char name[128];               /* general.name or the architecture */
    struct model_tensor tok_embd; /* [n_vocab][n_embd] */
    const float *output_norm;     /* [n_embd] */
    struct model_tensor output;   /* [n_vocab][n_embd], tok_embd when tied */
    const float *rope_freqs;      /* [n_rot/2] optional frequency factors (llama 3) */
    struct model_layer *layers;   /* [n_layer] */
    size_t packed_bytes;          /* bytes of all repacked copies (model_repack) */
};

/* Open `path`, read its hyper-parameters and bind its tensors. */
int model_load(struct model **out, const char *path, struct lmd_err *err);
void model_free(struct model *m);

/* Repack the weight matrices whose type has a repacked layout on the kernel
 * path in use (kern_repack_bytes), for prefill and batched decode; sets
 * m->packed_bytes. Call once, before any forward pass. Costs that much
 * memory on top of the mapped file; decode still reads the file's rows. */
int model_repack(struct model *m, struct lmd_pool *pool, struct lmd_err *err);

/* Supported architecture names, comma-separated, for messages. */
const char *model_supported_archs(void);

/* The K/V store of one model: fixed-size blocks of block_tokens positions,
 * allocated once, owned by the engine. Element type is F16, as llama.cpp
 * stores its cache, so attention numerics match it. Layout of one block,
 * per layer:
 *     k: [n_head_kv][block_tokens][head_dim_k]   v: [n_head_kv][block_tokens][head_dim_v]
 * Lifetime: the engine's; written only by the engine thread. */
struct model_kv {
    int n_blocks;
    int block_tokens; /* positions per block */
    int n_layer;
    int n_head_kv;
    int head_dim_k;       /* elements */
    int head_dim_v;       /* elements */
    uint16_t *k;          /* f16 [n_blocks][n_layer][n_head_kv][block_tokens][head_dim_k] */
    uint16_t *v;          /* f16 [n_blocks][n_layer][n_head_kv][block_tokens][head_dim_v] */
    size_t block_k_elems; /* k elements per block, all layers */
    size_t block_v_elems;
};

/* Bytes of one block of m's K/V store (all layers, K and V). */
size_t model_kv_block_bytes(const struct model *m, int block_tokens);
int model_kv_init(struct model_kv *kv, const struct model *m, int n_blocks, int block_tokens, struct lmd_err *err);
void model_kv_free(struct model_kv *kv);

/* Pointers to the K/V vectors of one (block, layer, head, slot). */
static inline uint16_t *model_kv_k_at(const struct model_kv *kv, int32_t block, int layer, int head, int slot)
{
    return kv->k + (size_t)block * kv->block_k_elems +
           (((size_t)layer * (size_t)kv->n_head_kv + (size_t)head) * (size_t)kv->block_tokens + (size_t)slot) *
               (size_t)kv->head_dim_k;
}

static inline uint16_t *model_kv_v_at(const struct model_kv *kv, int32_t block, int layer, int head, int slot)
{
    return kv->v + (size_t)block * kv->block_v_elems +
           (((size_t)layer * (size_t)kv->n_head_kv + (size_t)head) * (size_t)kv->block_tokens + (size_t)slot) *
               (size_t)kv->head_dim_v;
}

/* One sequence's part of a ragged batch. */
struct model_seq {
    const int32_t *tokens; /* [n_tokens] */
    int n_tokens;
    int pos;               /* position of tokens[0] */
    const int32_t *blocks; /* block table covering positions [0, pos + n_tokens) */
    bool want_logits;      /* logits of the last token */
    int pool;              /* enum engine_pool: pool the final hidden states into embd (see engine_seq) */
    float *embd;           /* [n_embd] the caller's accumulator */
};

/* Step scratch, sized at creation for at most max_tokens tokens and
 * max_logits rows per step. */
struct model_scratch;

int model_scratch_create(struct model_scratch **out, const struct model *m, int max_tokens, int max_logits,
                         int n_threads, struct lmd_err *err);
void model_scratch_free(struct model_scratch *s);

/* Run the forward pass. Writes K/V of every input token into the store and
 * fills logits [n_want][n_vocab] (one row per seq with want_logits, in
 * order). Returns 0 or LMD_EINVAL (batch larger than the scratch, bad
 * token id or positions) with a message. */
int model_forward(const struct model *m, struct model_scratch *s, struct lmd_pool *pool, const struct model_kv *kv,
                  const struct model_seq *seqs, int n_seqs, float *logits, struct lmd_err *err);
