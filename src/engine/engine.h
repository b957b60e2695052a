/*
 * The engine interface: everything above engine/ (scheduler, server, CLI)
 * sees an inference engine only through this vtable, so the native CPU
 * engine, a later CUDA engine and remote engines plug in alike.
 *
 * Two contracts; an engine offers one (info.request_level says which).
 *
 * Step-level (the native engine, a CUDA engine): the caller batches. A
 * step takes a ragged batch — several sequences, each a run of consecutive
 * positions: a chunk of prompt (prefill) or one token (decode) — and gives,
 * for every sequence that asks, either the logits of its last position
 * (info.samples false: the caller samples with sample/) or the token the
 * engine sampled with the sequence's sampler, plus the log-probabilities
 * asked for (info.samples true: no [n_vocab] rows leave the device). A step
 * is two calls: engine_launch hands the batch over and returns; engine_wait
 * returns its result. An engine may finish the work inside launch (the
 * native engine does); the caller must not touch the batch's arrays, nor
 * the sequences' samplers and block tables, between the two.
 *
 * Request-level (HTTP upstreams that batch on their own): the caller
 * submits whole requests — prompt tokens, limits, sampling parameters —
 * within the engine's concurrency (info.max_seqs), polls for their events
 * (tokens or text as they stream, then a finish with usage) and may cancel
 * one. Admission, classes and fair share stay the caller's.
 *
 * KV memory: an engine with a paged cache stores the bytes of
 * `kv_blocks` blocks of `kv_block_tokens` positions; which block belongs to
 * which sequence is the caller's business (a kv/ block manager over ids
 * [0, kv_blocks)): it reserves blocks before a step that writes new
 * positions, may hand the same block to several sequences for a shared
 * prefix, and passes each sequence's block table in the batch.
 *
 * Threads: an engine is driven by one thread (the scheduler/engine thread);
 * its calls are not thread-safe. It never touches client sockets; a
 * request-level engine's upstream sockets live on the I/O loops, so its
 * submit, poll and cancel only hand work over and never block (the
 * scheduler polls again within a millisecond while requests are out).
 */
#pragma once

#include "core/error.h"
#include "sample/sample.h"

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
    const char *kind;       /* "native", "fake", "remote" … */
    const char *model_name; /* general.name */
    const char *arch;       /* general.architecture */
    int n_vocab;
    int n_ctx; /* positions per sequence */
    /* Capacity. */
    int max_batch_tokens; /* tokens per step */
    int max_seqs;         /* sequences per step; concurrent requests for a request-level engine */
    int n_threads;
    int kv_blocks;         /* blocks of K/V storage; 0 for engines without block storage */
    int kv_block_tokens;   /* positions per block */
    size_t kv_block_bytes; /* bytes of one block */
    size_t packed_bytes;   /* weights repacked at load for prefill (native engine), on top of the file */
    int token_budget;      /* engines without blocks: prompt + output tokens of all sequences held at once; 0 = n_ctx x
                              max_seqs */
    /* Contract. */
    bool samples;                 /* step results are sampled tokens, not logits */
    bool request_level;           /* submit/poll/cancel instead of launch/wait */
    const struct gguf_file *gguf; /* for the tokenizer and chat template; NULL for remote engines */
};

struct engine_seq {
    const int32_t *tokens; /* [n_tokens] */
    int n_tokens;
    int pos;               /* position of tokens[0] */
    const int32_t *blocks; /* block table covering [0, pos + n_tokens) */
    bool want_logits;      /* an output for the last position: its logits row, or (info.samples) a token */
    /* For engines that sample, per sequence, read when want_logits: */
    struct sampler *smp; /* parameters, penalty history, RNG; the engine records the token it picks */
    int n_logprobs;      /* -1 = none; else the token's log-probability and the n most likely */
    float *out_lp;       /* [1] */
    int32_t *out_top_id; /* [n_logprobs] */
    float *out_top_lp;   /* [n_logprobs] */
};

/* A step's result: one row per sequence with want_logits, in batch order.
 * Owned by the engine, valid until the next launch. */
struct engine_result {
    int n_rows;
    float *logits;         /* [n_rows][n_vocab] when !info.samples (the caller may edit them), else NULL */
    const int32_t *tokens; /* [n_rows] when info.samples, else NULL */
};

/* ---- request-level engines ----------------------------------------------- */

/* One request handed to a request-level engine. The caller's memory; it
 * stays valid and unchanged until the request's finish event. */
struct engine_req {
    uint64_t id;
    const int32_t *prompt; /* [n_prompt] */
    int n_prompt;
    int max_tokens;
    const struct sample_params *sp;
    bool ignore_eos;
    int n_logprobs; /* -1 = none */
};

enum engine_event_kind {
    ENGINE_EV_TOKEN = 1,  /* one output token (token, logprob) */
    ENGINE_EV_TEXT = 2,   /* output text the upstream sent without token ids (text, text_len) */
    ENGINE_EV_FINISH = 3, /* the last event of a request: finish, usage */
};

enum engine_finish {
    ENGINE_FINISH_STOP = 1,      /* end of generation */
    ENGINE_FINISH_LENGTH = 2,    /* max_tokens */
    ENGINE_FINISH_CANCELLED = 3, /* after engine_cancel */
    ENGINE_FINISH_ERROR = 4,     /* the upstream failed; err says why */
};

struct engine_event {
    struct engine_req *req;
    enum engine_event_kind kind;
    int32_t token;
    float logprob;
    const char *text; /* valid until the next poll */
    size_t text_len;
    enum engine_finish finish;
    int prompt_tokens, completion_tokens; /* usage, on ENGINE_EV_FINISH */
    char err[LMD_ERR_MSG_MAX];
};

struct engine_stats {
    uint64_t steps;
    uint64_t tokens;  /* tokens forwarded */
    uint64_t step_ns; /* time between launch and the end of wait, total */
};

struct engine;

struct engine_ops {
    /* Step-level. launch checks and starts a batch; wait gives its result.
     * A launch is always followed by exactly one wait. */
    int (*launch)(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err);
    int (*wait)(struct engine *e, struct engine_result *res, struct lmd_err *err);
    /* Request-level. submit never blocks (LMD_EBUSY past max_seqs); poll
     * returns up to max events without blocking (0 = nothing new), each
     * request's in order, ENGINE_EV_FINISH last; after cancel the request
     * still ends with a finish event. */
    int (*submit)(struct engine *e, struct engine_req *rq, struct lmd_err *err);
    int (*poll)(struct engine *e, struct engine_event *ev, int max);
    void (*cancel)(struct engine *e, struct engine_req *rq);
    void (*close)(struct engine *e);
};

struct engine {
    const struct engine_ops *ops;
    struct engine_info info;
    struct engine_stats stats;
    uint64_t t_launch_ns; /* of the step in flight */
};

/* Open the native CPU engine on a GGUF model. */
int engine_native_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err);

/* A deterministic stand-in for tests: no model, a vocabulary of n_vocab
 * ids, real block storage (it stores each position's token and derives
 * its output from everything the block table holds, so wrong tables or
 * wrongly shared blocks change its output). */
struct engine_fake_config {
    int n_vocab; /* >= 2 */
    int n_ctx;
    int max_batch_tokens;
    int max_seqs;
    int kv_blocks;          /* 0 = no block storage (token budget) */
    int kv_block_tokens;    /* 0 = 16 */
    bool samples;           /* sample inside the engine */
    bool request_level;     /* submit/poll/cancel */
    uint64_t step_delay_ns; /* time a step (or a poll producing tokens) takes */
    int token_budget;       /* request-level: 0 = n_ctx x max_seqs */
};
int engine_fake_open(struct engine **out, const struct engine_fake_config *cfg, struct lmd_err *err);

int engine_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err);
int engine_wait(struct engine *e, struct engine_result *res, struct lmd_err *err);
/* launch + wait, for engines that return logits: *logits [n_rows][n_vocab]. */
int engine_step(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err);
int engine_submit(struct engine *e, struct engine_req *rq, struct lmd_err *err);
int engine_poll(struct engine *e, struct engine_event *ev, int max);
void engine_cancel(struct engine *e, struct engine_req *rq);
void engine_close(struct engine *e);
