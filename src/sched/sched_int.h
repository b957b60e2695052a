/*
 * Internals of sched/: the policy, kept apart from the engine loop so that
 * it is plain data and functions over requests, with time passed in. The
 * loop (sched.c) calls it once per step; unit tests drive it directly to
 * check ordering, fair share and batch formation without an engine.
 *
 * Also the scheduler object itself, shared by the step-level loop
 * (sched.c) and the request-level driver (upstream.c).
 *
 * Everything here runs on the engine thread only, except the fields of
 * struct sched marked shared.
 */
#pragma once

#include "kv/kv.h"
#include "sched/sched.h"

#include <pthread.h>

struct sched__queue {
    struct sched_req *head, *tail; /* linked through next/prev, in pick order */
};

struct sched__policy {
    enum sched_policy kind;
    int n_classes, n_tenants;
    struct sched_class cls[SCHED_MAX_CLASSES];
    double weight[SCHED_MAX_TENANTS];
    double vtime[SCHED_MAX_TENANTS];  /* tokens served / weight, for start-time fair queueing */
    double served[SCHED_MAX_TENANTS]; /* tokens served (prefill, recomputation and decode) */
    int active[SCHED_MAX_TENANTS];    /* the tenant's requests waiting or running */
    /* SCHED_FCFS keeps every request in q[0][0] in arrival order; SCHED_SLA
     * keeps q[class][tenant] ordered by deadline, then arrival. */
    struct sched__queue q[SCHED_MAX_CLASSES][SCHED_MAX_TENANTS];
    int n_waiting;
    int n_waiting_cls[SCHED_MAX_CLASSES];
};

/* One entry of a formed batch: n tokens of r starting at its n_fed (a
 * prefill chunk) or its one decode token. */
struct sched__item {
    struct sched_req *r;
    int n;
    bool decode;
};

/* cfg's classes and weights are copied (names by pointer). */
void sched__policy_init(struct sched__policy *p, const struct sched_config *cfg);

/* A request becomes waiting: newly arrived (first = true: the tenant's
 * active count grows; a tenant coming back from idle starts at the lowest
 * virtual time among the active ones, so idleness earns no credit) or
 * preempted (first = false). */
void sched__enqueue(struct sched__policy *p, struct sched_req *r, bool first);
void sched__dequeue(struct sched__policy *p, struct sched_req *r);
/* The request leaves the scheduler (finished while waiting or running). */
void sched__leave(struct sched__policy *p, const struct sched_req *r);

/* The waiting request to admit next at time now, or NULL. Under SCHED_SLA a
 * request inside its class's batching window is not eligible; *next_ns is
 * lowered to the earliest time one becomes eligible. */
struct sched_req *sched__pick(const struct sched__policy *p, uint64_t now, uint64_t *next_ns);

/* n tokens of tenant t were forwarded. */
void sched__charge(struct sched__policy *p, int tenant, int n);

/* Form one batch from the running set: every decoding sequence's token
 * first, then prefill chunks in priority order (arrival order under FCFS;
 * class, deadline, arrival under SLA) within `budget` tokens. A chunk never
 * crosses from the prompt into the output (both are prefilled when a
 * preempted request resumes). items has room for n_running. Returns the
 * item count. */
int sched__form(const struct sched__policy *p, struct sched_req *const *running, int n_running, int budget,
                struct sched__item *items);

/* The running sequence to preempt so that a request of class cls can
 * start: the lowest class strictly below cls, then the least work to
 * recompute, then the latest arrival. NULL if none (or under FCFS). */
struct sched_req *sched__victim(const struct sched__policy *p, struct sched_req *const *running, int n_running,
                                int cls);

/* The token at fill position i of r: the prompt, then the output so far. */
static inline const int32_t *sched__fill_tokens(const struct sched_req *r, int from)
{
    return from < r->n_prompt ? r->prompt + from : r->out + (from - r->n_prompt);
}

/* Fraction of the tightest TPOT target a step may take while such a
 * sequence decodes; the rest is margin for sampling and the I/O side. */
#define SCHED_TPOT_SHARE 0.8
/* A prefill chunk is never cut below this many tokens, so long prompts
 * still make progress when the TPOT target is tight. */
#define SCHED_MIN_CHUNK 16

struct sched {
    struct sched_config cfg;
    struct sched_class classes[SCHED_MAX_CLASSES];
    double weights[SCHED_MAX_TENANTS];
    struct engine *eng;
    struct kv_mgr kv; /* the engine's blocks: who holds which, and the prefix cache */
    pthread_t thread;
    int budget; /* tokens per step */

    /* Shared with the submitting threads. The inbox is a lock-free stack
     * (push by CAS, the engine thread takes it whole and reverses it). */
    _Atomic(struct sched_req *) inbox;
    _Atomic int n_queued; /* submitted, not yet admitted for the first time */
    _Atomic bool stopping;
    _Atomic unsigned cancel_gen;
    _Atomic bool parked;
    _Atomic bool eng_ready; /* a request-level engine called wake since the last park */
    pthread_mutex_t mu;     /* only to park and wake the engine thread */
    pthread_cond_t cv;

    /* Engine thread only. */
    struct sched__policy pol;
    struct sched_req **running; /* [max_running]; NULL = left during this step */
    int n_running;
    struct sched__item *items; /* [max_running] */
    struct engine_seq *batch;  /* [max_running] */
    int *brow;                 /* [max_running] logits row of batch[i], -1 = none */
    struct sample_scratch scratch;
    /* The vocabulary as bytes, for constrained decoding (NULL without a
     * vocabulary): built by gv_thread while the server starts serving,
     * since it takes 0.2 s of a 262k vocabulary (three quarters of the
     * time to ready); written by that thread, read by this one after
     * sched__gvocab joined it. */
    struct gram_vocab *gvocab;
    const struct tok_vocab *gv_src;
    int gv_n_logits;
    pthread_t gv_thread;
    bool gv_pending; /* gv_thread started and not joined yet */
    atomic_bool gv_done;
    struct engine_event *events; /* [2 * max_running] request-level engines: one poll's events */
    int32_t *blk_tok;            /* [block_tokens] one block's tokens when they straddle prompt and output */
    uint64_t next_seq;
    unsigned cancel_seen;
    /* Cost model from measured steps: a decode-only step, and the extra
     * time per prefill token. */
    double ema_decode_ns, ema_token_ns;
    /* How long a request holds its running slot, admission to finish
     * (requests never preempted; 0 until one finished): the rate at which
     * a full running set frees slots for the queue. */
    double ema_turn_ns;

    /* Published counters. */
    _Atomic uint64_t requests_total, prompt_tokens, generated_tokens, steps, preemptions, deadline_refusals;
    _Atomic uint64_t prefix_queries, prefix_hits;
    _Atomic int kv_cached;
    _Atomic int running_now, waiting_now, kv_free;
    _Atomic int waiting_class[SCHED_MAX_CLASSES];
    /* The wait estimate's inputs as of the last step, per class: the
     * prefill work queued at the class or above (ns) and how many
     * requests there take a slot before a new arrival; and the time until
     * the first running sequence finishes, and ema_turn_ns (ns). A
     * submitter adds what arrived since (sched__wait_estimate). */
    _Atomic uint64_t est_prefill[SCHED_MAX_CLASSES];
    _Atomic int est_ahead[SCHED_MAX_CLASSES];
    _Atomic uint64_t est_to_free, est_turn;
    _Atomic uint64_t tenant_tokens[SCHED_MAX_TENANTS];
};

double sched__secs(uint64_t from_ns, uint64_t to_ns);
/* One more output token (or text piece) of r at now: the first-token and
 * inter-token stamps and the generation counter. Engine thread. */
void sched__output_stamps(struct sched_req *r, uint64_t now);
/* End r wherever it is (inbox excepted): return its blocks, publish the
 * reason, wake its owner and drop the scheduler's reference. */
void sched__finish(struct sched *s, struct sched_req *r, enum sched_finish why);
void sched__fail(struct sched *s, struct sched_req *r, const char *msg);
/* The vocabulary trie for a sampler: NULL while it is still being built
 * and need is false; with need (a grammar), waits for it. Engine thread. */
const struct gram_vocab *sched__gvocab(struct sched *s, bool need);
/* Take r out of the running set (its slot becomes NULL until compacted). */
void sched__running_remove(struct sched *s, struct sched_req *r);
/* Remove the NULL slots, keeping order. */
void sched__running_compact(struct sched *s);
void sched__emit(struct sched *s, struct sched_req *r, int32_t tok, float *row, uint64_t now);

/* Admission (admit.c). Blocks r needs for prompt + max_tokens. */
int sched__blocks_needed(const struct sched *s, const struct sched_req *r);
/* Running sequences one group may hold at once in class cls (the class's
 * max_request_running, or half of max_running). */
int sched__group_cap(const struct sched *s, int cls);
/* Whether r's group already holds that many running sequences. */
bool sched__group_full(const struct sched *s, const struct sched_req *r);
/* Admit waiting work while it fits; *next_ns gets the earliest time a
 * request held by a batching window becomes eligible. */
void sched__admit(struct sched *s, uint64_t now, uint64_t *next_ns);
/* Register r's blocks that became full: written positions [0, written). */
void sched__commit_blocks(struct sched *s, struct sched_req *r, int written);
/* How many sequences may run at once: --max-running, or an engine's
 * seats where it has fewer (a remote pool losing and regaining
 * upstreams). Any thread. */
int sched__running_limit(const struct sched *s);
/* Running slots of `limit` that a request of class cls may not take: the
 * reservations of the classes before it (struct sched_class), at most
 * limit - 1. Reads configuration only: any thread. */
int sched__reserved_for(const struct sched *s, int cls, int limit);
/* The estimated wait (ns) before a request of class cls submitted now
 * would start. Any thread. */
uint64_t sched__wait_estimate(struct sched *s, int cls);
/* Time until the first running sequence would finish on its own (ns). */
double sched__time_to_free_ns(const struct sched *s);

/* Request-level engines (upstream.c): submit what was admitted, poll, and
 * publish; returns the events handled (0 = nothing happened). */
int sched__step_requests(struct sched *s);
/* Ask the engine to end r; its finish event finishes it. */
void sched__cancel_request(struct sched *s, struct sched_req *r);
