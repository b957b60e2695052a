/*
 * The scheduler: one engine thread running a first-come-first-served
 * continuous-batching loop over one engine.
 *
 * Other threads (the HTTP I/O threads) submit requests whose prompt is
 * already tokenized; the engine thread admits them from a bounded waiting
 * queue while KV blocks and the running limit allow, forms one ragged batch
 * per step — every decoding sequence's next token first, then prompt chunks
 * (chunked prefill) up to the engine's token budget — forwards it, samples
 * each sequence's next token and appends it to the request's output array.
 * After each step that produced output for a request it calls the
 * request's notify callback, which the owner uses to wake its I/O thread.
 *
 * This is not an HTTP or JSON layer: it knows token ids, sampling
 * parameters and stop by end-of-generation or length. Stop strings are
 * matched by the owner, which then calls sched_req_cancel.
 *
 * KV policy: a request reserves blocks for prompt + max_tokens when it is
 * admitted, so a running request never runs out of cache and nothing is
 * preempted. The head of the queue waits (FCFS, no overtaking) until that
 * many blocks are free.
 *
 * Threads and lifetimes: the scheduler object lives for the process. A
 * request is shared by its owner and the engine thread through a reference
 * count; output is published with release stores, so the owner reads
 * `finish` (acquire) and then `n_out` without any lock. The engine thread
 * holds the queue's lock only to move requests, never across engine_step.
 */
#pragma once

#include "core/error.h"
#include "engine/engine.h"
#include "kv/kv.h"
#include "sample/sample.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct tok_vocab;
struct sched;

enum sched_finish {
    SCHED_RUNNING = 0,
    SCHED_FINISH_STOP = 1,     /* an end-of-generation token (not part of the output) */
    SCHED_FINISH_LENGTH = 2,   /* max_tokens reached */
    SCHED_FINISH_CANCELLED = 3, /* the owner cancelled it (disconnect, stop string, shutdown) */
    SCHED_FINISH_ERROR = 4,    /* the engine failed; `err` says why */
};

struct sched_req {
    /* Input, set by the owner before sched_submit and immutable after. */
    const int32_t *prompt; /* [n_prompt] token ids, owner's memory */
    int n_prompt;
    int max_tokens;        /* >= 1 */
    struct sample_params sp;
    bool ignore_eos;
    int32_t *out; /* [max_tokens] output token ids, owner's memory, written by the engine thread */
    /* Log-probabilities (optional): n_logprobs < 0 = off; otherwise out_lp
     * [max_tokens] gets each output token's log-probability and, when
     * n_logprobs > 0, out_top_id/out_top_lp [max_tokens * n_logprobs] the
     * n_logprobs most likely tokens at that position, descending. Computed
     * on the engine thread from the logits after bias and penalties, before
     * temperature; published with out[] (same n_out). Owner's memory. */
    int n_logprobs;
    float *out_lp;
    int32_t *out_top_id;
    float *out_top_lp;
    void (*notify)(struct sched_req *r);  /* engine thread: new output or finish; must not block */
    void (*release)(struct sched_req *r); /* last reference dropped (any thread) */

    /* Output, published by the engine thread. */
    _Atomic int n_out;  /* tokens in out[] */
    _Atomic int finish; /* enum sched_finish; set after the last n_out store */
    char err[LMD_ERR_MSG_MAX]; /* message for SCHED_FINISH_ERROR, written before finish */

    /* Shared. */
    _Atomic int refs;
    _Atomic bool cancelled;

    /* Engine thread only. */
    struct sched_req *next; /* waiting-queue link */
    struct kv_seq kv;
    struct sampler smp;
    int n_fed;        /* prompt tokens forwarded so far */
    int pos;          /* next position to write when decoding */
    int32_t last_tok; /* the token to feed in the next decode step */
};

struct sched_config {
    const struct tok_vocab *vocab; /* for end-of-generation tokens */
    int max_running; /* sequences in the running set (<= engine max_seqs) */
    int max_queue;   /* waiting requests before sched_submit says LMD_EBUSY */
};

/* Counters for /metrics; read with sched_stats. */
struct sched_stats {
    uint64_t requests_total;   /* finished requests */
    uint64_t prompt_tokens;    /* tokens prefilled, total */
    uint64_t generated_tokens; /* tokens sampled, total */
    uint64_t steps;
    int running;
    int waiting;
    int kv_blocks_free;
    int kv_blocks_total;
};

/* Start the engine thread over `eng` (which the scheduler drives from now
 * on; the caller keeps ownership and closes it after sched_stop). */
int sched_start(struct sched **out, struct engine *eng, const struct sched_config *cfg, struct lmd_err *err);
/* Finish every request still queued or running as cancelled, join the
 * engine thread and free the scheduler. */
void sched_stop(struct sched *s);

/* Prepare a request's fields that the scheduler owns (refs = 1 for the
 * caller, counters zero). */
void sched_req_init(struct sched_req *r);
void sched_req_ref(struct sched_req *r);
void sched_req_unref(struct sched_req *r);

/* Queue r. The scheduler takes its own reference on success. Returns
 * LMD_EBUSY when the waiting queue is full, LMD_ERANGE (err says why) when
 * r could never fit the KV cache or the context, LMD_ECANCELED when the
 * scheduler is stopping. */
int sched_submit(struct sched *s, struct sched_req *r, struct lmd_err *err);
/* Ask the engine thread to drop r at its next step (any thread). */
void sched_req_cancel(struct sched *s, struct sched_req *r);

void sched_stats(struct sched *s, struct sched_stats *out);
