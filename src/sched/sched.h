/*
 * The scheduler: one engine thread running a continuous-batching loop over
 * one engine, under one of two policies.
 *
 * Other threads (the HTTP I/O threads) submit requests whose prompt is
 * already tokenized through a lock-free inbox; the engine thread moves them
 * into its waiting queues, admits them into the running set while the
 * running limit and the free KV blocks allow, forms one ragged batch per
 * step — every decoding sequence's next token first, then prompt chunks
 * (chunked prefill) with what is left of the step's token budget —
 * launches it on the engine (taking new arrivals into the queues while it
 * runs), then samples each sequence's next token from the logits — or
 * takes the engine's own sample, for engines that sample — and appends it
 * to the request's output array. After each step that produced output for
 * a request it calls the request's notify callback, which the owner uses
 * to wake its I/O thread. An engine that batches on its own (request-level,
 * engine.h) gets each admitted request whole instead (upstream.c); the
 * admission, classes and fair share are the same.
 *
 * Policies (`sched_config.policy`):
 * - SCHED_FCFS: one queue in arrival order; the head waits until it fits
 *   (nobody overtakes it); no preemption; a fixed step budget.
 * - SCHED_SLA: service classes ranked by their order in the config (the
 *   first is the most urgent). Waiting work is ordered by class, then
 *   between the tenants of a class by weighted fair share (start-time fair
 *   queueing: a tenant's virtual time advances by the tokens it is served
 *   divided by its weight; the tenant with the lowest virtual time goes
 *   next), then by earliest deadline within a tenant (a request's deadline
 *   is its arrival plus its class's TTFT target). A class may hold its
 *   requests for a batching window. When a request cannot start because
 *   the running set or the KV cache is full, running sequences of a lower
 *   class are preempted (their blocks freed, their progress recomputed
 *   later) unless one would finish soon enough anyway. The step budget
 *   shrinks while sequences of a class with a TPOT target are decoding, so
 *   that a prefill chunk never makes their next token late.
 *
 * This is not an HTTP or JSON layer: it knows token ids, sampling
 * parameters, tenants and classes as small indices, and stop by
 * end-of-generation or length. Stop strings are matched by the owner,
 * which then calls sched_req_cancel.
 *
 * KV policy: the scheduler owns the engine's blocks (a kv/ block manager
 * over the ids the engine stores). A request reserves blocks for prompt +
 * max_tokens when it is admitted, so a running request never runs out of
 * cache mid-step; under SCHED_SLA a preempted request gives them all back
 * and reserves again when it is re-admitted.
 *
 * Prefix cache (unless `no_prefix_cache`): as each block of a request
 * fills, it is registered under a hash of its tokens, its parent block and
 * the request's `cache_salt`. At admission a request takes the longest
 * chain of registered blocks that its prompt (and, when resumed after a
 * preemption, its output so far) begins with, under the same salt, and
 * prefills from the end of that chain — never its last token, whose logits
 * give the first output token. Blocks are shared by reference; finished
 * requests leave theirs cached until the space is needed. Equal salts
 * share, different salts never do: the owner picks the salt (per tenant by
 * default in the API).
 *
 * Threads and lifetimes: the scheduler object lives for the process. A
 * request is shared by its owner and the engine thread through a reference
 * count; output is published with release stores, so the owner reads
 * `finish` (acquire) and then `n_out` without any lock. Submission is a
 * lock-free push; a mutex and condition variable only park the engine
 * thread when it has nothing to do, and nothing is held across an engine
 * call.
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

#define SCHED_MAX_CLASSES 8
#define SCHED_MAX_TENANTS 64

enum sched_finish {
    SCHED_RUNNING = 0,
    SCHED_FINISH_STOP = 1,      /* an end-of-generation token (not part of the output) */
    SCHED_FINISH_LENGTH = 2,    /* max_tokens reached */
    SCHED_FINISH_CANCELLED = 3, /* the owner cancelled it (disconnect, stop string, shutdown) */
    SCHED_FINISH_ERROR = 4,     /* the engine failed; `err` says why */
    SCHED_FINISH_DEADLINE = 5,  /* its class refuses late work and its deadline passed while it waited */
    SCHED_FINISH_SHUTDOWN = 6,  /* the scheduler stopped before the request finished: the output is cut */
};

/* Where a request is, for live views (published, relaxed). */
enum sched_state {
    SCHED_ST_QUEUED = 0,
    SCHED_ST_PREFILL = 1,
    SCHED_ST_DECODE = 2,
    SCHED_ST_PREEMPTED = 3, /* back in the queue; its progress is recomputed when it is re-admitted */
    SCHED_ST_DONE = 4,
};

/* The scheduler's per-request state (see struct sched_req's `run`). */
struct sched__run {
    struct sched_req *next, *prev; /* inbox and queue links */
    uint64_t seq;                  /* arrival order */
    uint64_t t_eligible_ns;        /* arrival + class batching window */
    struct kv_seq kv;
    bool own_table; /* kv.blocks was allocated by the scheduler */
    struct sampler smp;
    bool smp_ready;
    bool queued;            /* in a waiting queue */
    bool running;           /* in the running set */
    int n_fill;             /* tokens to prefill this residency: prompt, then output so far */
    int n_fed;              /* of those, forwarded so far */
    int pos;                /* next position to write when decoding */
    int32_t last_tok;       /* the token to feed in the next decode step */
    uint64_t t_last_tok_ns; /* monotonic ns of the last output token, for the inter-token latency; kept
                               across a preemption, so the gap counts as the long ITL a client sees */
    /* Request-level engines: the request as handed over, and its state. */
    struct engine_req ereq;
    bool submitted;   /* ereq is the engine's until its finish event */
    bool cancel_sent; /* engine_cancel called; waiting for the finish event */
    bool failed;      /* err holds why; finishes as SCHED_FINISH_ERROR */
};

struct sched_req {
    /* Input, set by the owner before sched_submit and immutable after. */
    const int32_t *prompt; /* [n_prompt] token ids, owner's memory */
    int n_prompt;
    int max_tokens; /* >= 1 */
    struct sample_params sp;
    bool ignore_eos;
    int cls;               /* service class index (< n_classes); 0 under one class */
    int tenant;            /* tenant index (< n_tenants); 0 when there are none */
    uint64_t id;           /* for traces and logs */
    uint64_t t_arrival_ns; /* monotonic; 0 = stamped by sched_submit */
    uint64_t cache_salt;   /* prefix-cache namespace (kv_salt of a tenant name …); 0 = the shared one */
    uint64_t group;        /* the choices of one API request (n > 1) share a nonzero group, so that together
                              they hold at most their class's max_request_running slots; 0 = on its own */
    int32_t *block_table;  /* [sched_blocks_for(n_prompt + max_tokens)] owner's memory (its request arena)
                              for the block table; NULL = the scheduler allocates it */
    int32_t *out;          /* [max_tokens] output token ids, owner's memory, written by the engine thread */
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
    /* Embeddings (engine_info.n_embd > 0): embd set makes r an embedding
     * request. Its prompt is prefilled whole with the engine's pooling
     * into embd [n_embd] (owner's memory), never from the prefix cache,
     * and it finishes (SCHED_FINISH_STOP) after its prefill with embd
     * finished by engine_embd_finish: unit length. max_tokens may be 0;
     * out is not written. */
    float *embd;
    /* Engines that forward API requests (engine_info.takes_api): the
     * validated OpenAI request (engine_req's api_path/api_json; owner's
     * memory). prompt may then be NULL, n_prompt an estimate for admission. */
    const char *api_path;
    void *api_json;       /* json_t * */
    const char *api_body; /* engine_req's: the request's bytes, spliced */
    size_t api_body_len;
    /* Text output, for engines that stream text rather than token ids:
     * called on the engine thread with each piece in order (n_out counts
     * the pieces; out[] is not written); it must copy and return at once.
     * NULL = text from an engine fails the request. */
    void (*on_text)(struct sched_req *r, const char *s, size_t n);
    void (*notify)(struct sched_req *r);  /* engine thread: first admission, new output or finish; must not block */
    void (*release)(struct sched_req *r); /* last reference dropped (any thread) */

    /* Output, published by the engine thread. */
    _Atomic int n_out;         /* tokens in out[] */
    _Atomic int finish;        /* enum sched_finish; set after the last n_out store */
    _Atomic int state;         /* enum sched_state */
    _Atomic int kv_blocks;     /* blocks held now */
    char err[LMD_ERR_MSG_MAX]; /* message for SCHED_FINISH_ERROR, written before finish */
    int err_status;            /* with SCHED_FINISH_ERROR: the HTTP status the engine gave (0 = a server error) */
    /* The engine's own count (request-level engines), written before
     * finish; -1 = not given (the owner counts). */
    int usage_prompt, usage_completion;
    /* Stamps (monotonic ns, 0 = not yet), written by the engine thread and
     * read by the owner at any time (relaxed): each is final once set, and
     * all are once `finish` is seen. */
    uint64_t t_deadline_ns;      /* arrival + class TTFT target (0 = none); set by sched_submit */
    _Atomic uint64_t t_admit_ns; /* first admitted into the running set */
    _Atomic uint64_t t_first_ns; /* first output token sampled */
    _Atomic uint64_t t_done_ns;
    _Atomic int n_preempted;

    /* Shared. */
    _Atomic int refs;
    _Atomic bool cancelled;

    /* The scheduler's private part: written only by the scheduler (the
     * engine thread, and sched_submit before it publishes the request);
     * owners never read it. */
    struct sched__run run;
};

enum sched_policy {
    SCHED_POLICY_FCFS = 0,
    SCHED_POLICY_SLA = 1,
};

struct sched_class {
    const char *name;   /* the scheduler keeps the pointer; the caller keeps the string */
    uint64_t ttft_ns;   /* time-to-first-token target; sets the deadline (0 = none) */
    uint64_t tpot_ns;   /* time-per-output-token target; bounds the step while decoding (0 = none) */
    uint64_t window_ns; /* batching window: held this long after arrival before it may start (0 = none) */
    bool refuse_late;   /* refuse (SCHED_FINISH_DEADLINE / LMD_ETIMEDOUT) rather than run late */
    /* Running sequences the requests of one group (one API request's
     * choices) may hold at once; its other choices wait, overtaken by
     * other requests, until one of its own finishes. 0 = half of
     * max_running, rounded up, so that one request never holds the whole
     * running set. */
    int max_request_running;
    /* Running slots held for this class and the ones before it (SLA
     * policy): requests of later classes start only while more than the
     * sum held by the classes before theirs are free, at most all but one.
     * What makes an urgent request start at once on an engine that cannot
     * preempt (an upstream pool), where otherwise it waits for a running
     * request to end. 0 = none. */
    int reserved_running;
};

struct sched_config {
    const struct tok_vocab *vocab; /* for end-of-generation tokens */
    int max_running;               /* sequences in the running set (<= engine max_seqs) */
    int max_queue;                 /* waiting requests before sched_submit says LMD_EBUSY */
    enum sched_policy policy;
    const struct sched_class *classes; /* [n_classes], most urgent first; NULL = one class without targets */
    int n_classes;
    const double *tenant_weight; /* [n_tenants] fair-share weights (> 0); NULL = one tenant */
    int n_tenants;
    int step_tokens;      /* tokens per step; 0 = the engine's max_batch_tokens */
    int obs_model;        /* the model index the engine thread's metrics carry (obs_bind_model) */
    bool no_prefix_cache; /* compute every prompt in full (for comparison) */
};

/* Counters for /metrics; read with sched_stats. */
struct sched_stats {
    uint64_t requests_total;   /* finished requests */
    uint64_t prompt_tokens;    /* tokens prefilled (computed), total: recomputation included, cache hits not */
    uint64_t generated_tokens; /* tokens sampled, total */
    uint64_t steps;
    uint64_t preemptions;
    uint64_t deadline_refusals; /* SCHED_FINISH_DEADLINE plus LMD_ETIMEDOUT at submit */
    int running;
    int waiting;
    int waiting_class[SCHED_MAX_CLASSES];
    int kv_blocks_free; /* never used, or cached and unreferenced */
    int kv_blocks_total;
    int kv_block_tokens;                     /* positions per block */
    int kv_blocks_cached;                    /* holding a registered prefix, referenced or not */
    uint64_t prefix_queries;                 /* prompt tokens looked up in the prefix cache (once per request) */
    uint64_t prefix_hits;                    /* of those, found (not computed) */
    double tenant_tokens[SCHED_MAX_TENANTS]; /* tokens served per tenant (fair-share accounting) */
};

/* Start the engine thread over `eng` (which the scheduler drives from now
 * on; the caller keeps ownership and closes it after sched_stop). */
int sched_start(struct sched **out, struct engine *eng, const struct sched_config *cfg, struct lmd_err *err);
/* Finish every request still queued or running as cancelled, join the
 * engine thread and free the scheduler. */
void sched_stop(struct sched *s);

/* Prepare a request's fields that the scheduler owns (refs = 1 for the
 * caller, counters zero, no log-probabilities, class and tenant 0). */
void sched_req_init(struct sched_req *r);
void sched_req_ref(struct sched_req *r);
void sched_req_unref(struct sched_req *r);

/* Queue r. The scheduler takes its own reference on success. Returns
 * LMD_EBUSY when the waiting queue is full, LMD_ERANGE (err says why) when
 * r could never fit the KV cache or the context, LMD_ENOTSUP for an
 * embedding request to an engine without embeddings, LMD_EINVAL for a bad
 * class or tenant, LMD_ETIMEDOUT when its class refuses late work and the
 * current estimate of its wait already passes its deadline, LMD_ECANCELED
 * when the scheduler is stopping. Never blocks. */
int sched_submit(struct sched *s, struct sched_req *r, struct lmd_err *err);
/* Ask the engine thread to drop r at its next step (any thread). */
void sched_req_cancel(struct sched *s, struct sched_req *r);

void sched_stats(struct sched *s, struct sched_stats *out);
/* Entries of a block table for a request of n_tokens (prompt + max_tokens). */
int sched_blocks_for(const struct sched *s, int n_tokens);
/* Requests of class cls the waiting queue takes at most (the most a burst
 * of them, an embeddings request's inputs say, can ever be queued at once). */
int sched_queue_limit(const struct sched *s, int cls);
/* Requests it runs at once (sched_config.max_running). */
int sched_max_running(const struct sched *s);
/* The estimated wait before a new request of class cls would start, from
 * the engine thread's last step (ns; 0 when it would start at once). */
uint64_t sched_estimate_wait_ns(struct sched *s, int cls);
