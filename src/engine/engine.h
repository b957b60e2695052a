/*
 * The engine interface: everything above engine/ (scheduler, server, CLI)
 * sees an inference engine only through this vtable, so the native CPU
 * engine, a later CUDA engine and remote engines plug in alike.
 *
 * A step takes a ragged batch: several sequences, each a run of consecutive
 * positions — a chunk of prompt (prefill) or one token (decode) — and
 * returns the logits of the last position of every sequence that asks.
 * Sampling is not the engine's job (sample/ does it above).
 *
 * KV memory: an engine with a paged cache stores the bytes of
 * `kv_blocks` blocks of `kv_block_tokens` positions; which block belongs to
 * which sequence is the caller's business (a kv/ block manager over ids
 * [0, kv_blocks)): it reserves blocks before a step that writes new
 * positions, may hand the same block to several sequences for a shared
 * prefix, and passes each sequence's block table in the batch.
 *
 * Threads: an engine is driven by one thread (the scheduler/engine thread);
 * its calls are not thread-safe. It never touches sockets.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stdint.h>

struct gguf_file;

struct engine_config {
    const char *model_path;
    int n_threads;        /* compute threads, including the engine thread; 0 = one per core */
    int n_ctx;            /* max positions per sequence; 0 = the model's training context */
    int max_batch_tokens; /* tokens per step (prefill chunk budget) */
    int max_seqs;         /* sequences per step (= logit rows) */
    int kv_blocks;        /* 0 = enough for max_seqs full contexts, capped by kv_max_bytes */
    int kv_block_tokens;  /* positions per block; 0 = 16 */
    size_t kv_max_bytes;  /* cap when kv_blocks is 0; 0 = 2 GiB */
};

struct engine_info {
    const char *kind;       /* "native", "remote" … */
    const char *model_name; /* general.name */
    const char *arch;       /* general.architecture */
    int n_vocab;
    int n_ctx;
    int max_batch_tokens;
    int max_seqs;
    int n_threads;
    const struct gguf_file *gguf; /* for the tokenizer and chat template; NULL for remote engines */
    int kv_blocks;                /* blocks of K/V storage; 0 for engines without a local cache */
    int kv_block_tokens;          /* positions per block */
    size_t kv_block_bytes;        /* bytes of one block */
};

struct engine_seq {
    const int32_t *tokens; /* [n_tokens] */
    int n_tokens;
    int pos;               /* position of tokens[0] */
    const int32_t *blocks; /* block table covering [0, pos + n_tokens) */
    bool want_logits;
};

struct engine_stats {
    uint64_t steps;
    uint64_t tokens;  /* tokens forwarded */
    uint64_t step_ns; /* time inside step, total */
};

struct engine;

struct engine_ops {
    /* Forward one batch; on success *logits points at [n_want][n_vocab]
     * floats owned by the engine, valid until the next step. */
    int (*step)(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err);
    void (*close)(struct engine *e);
};

struct engine {
    const struct engine_ops *ops;
    struct engine_info info;
    struct engine_stats stats;
};

/* Open the native CPU engine on a GGUF model. */
int engine_native_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err);

int engine_step(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err);
void engine_close(struct engine *e);
