/*
 * Admission: which waiting request starts next and with which blocks —
 * its cached prefix looked up and shared, the rest reserved — and, under
 * SCHED_SLA, whom to preempt to make room. Also registering blocks in the
 * prefix cache as they fill. The policy (policy.c) decides the order; this
 * file moves requests and blocks. Engine thread only.
 */
#include "sched/sched_int.h"

#include "core/log.h"
#include "obs/obs.h"

int sched__blocks_needed(const struct sched *s, const struct sched_req *r)
{
    return kv_blocks_for(&s->kv, r->n_prompt + r->max_tokens);
}

/* The tokens of block b of r's fill (prompt, then output so far): in place
 * when the block lies inside one of the two arrays, else gathered. */
static const int32_t *sched_block_tokens(struct sched *s, const struct sched_req *r, int b)
{
    const int bt = s->kv.cfg.block_tokens, from = b * bt;
    if (from + bt <= r->n_prompt || from >= r->n_prompt)
        return sched__fill_tokens(r, from);
    for (int i = 0; i < bt; i++)
        s->blk_tok[i] = *sched__fill_tokens(r, from + i);
    return s->blk_tok;
}

int sched__running_limit(const struct sched *s)
{
    int limit = s->cfg.max_running;
    int seats = atomic_load_explicit(&s->eng->seats, memory_order_relaxed);
    return seats > 0 && seats < limit ? seats : limit;
}

int sched__reserved_for(const struct sched *s, int cls, int limit)
{
    if (s->pol.kind != SCHED_POLICY_SLA)
        return 0;
    int held = 0;
    for (int c = 0; c < cls && c < s->pol.n_classes; c++)
        held += s->pol.cls[c].reserved_running > 0 ? s->pol.cls[c].reserved_running : 0;
    return held < limit - 1 ? held : (limit > 1 ? limit - 1 : 0);
}

/* An engine that batches on its own (an upstream) prefills a request it is
 * handed in the same batches as the ones it runs, where its own prefill
 * cannot be put first. So while a request of a class that holds slots
 * (reserved_running) waits there for its first token, requests of later
 * classes do not start: the upstream's next batches are its prompt's. */
static bool sched_first_token_pending(const struct sched *s, int cls)
{
    if (!s->eng->info.request_level || s->pol.kind != SCHED_POLICY_SLA)
        return false;
    for (int i = 0; i < s->n_running; i++) {
        const struct sched_req *v = s->running[i];
        if (v && v->cls < cls && s->pol.cls[v->cls].reserved_running > 0 &&
            atomic_load_explicit(&v->n_out, memory_order_relaxed) == 0)
            return true;
    }
    return false;
}

/* Whether r can start now. First its fill is looked up in the prefix
 * cache — never its last token, whose logits the step must produce — and
 * the blocks found are taken; then the rest must fit the free blocks. On
 * false r holds nothing. */
static bool sched_fits(struct sched *s, struct sched_req *r)
{
    const int limit = sched__running_limit(s);
    if (s->n_running + sched__reserved_for(s, r->cls, limit) >= limit)
        return false;
    if (sched_first_token_pending(s, r->cls))
        return false;
    /* An embedding pools every position of its prompt, so it computes
     * them all: no cached prefix. */
    if (r->run.kv.n_blocks == 0 && !r->embd) {
        int n_fill = r->n_prompt + atomic_load_explicit(&r->n_out, memory_order_relaxed);
        int full = (n_fill - 1) / s->kv.cfg.block_tokens;
        for (int b = 0; b < full; b++)
            if (!kv_seq_match_block(&s->kv, &r->run.kv, sched_block_tokens(s, r, b)))
                break;
    }
    if (sched__blocks_needed(s, r) - r->run.kv.n_blocks <= kv_free_blocks(&s->kv))
        return true;
    kv_seq_release(&s->kv, &r->run.kv);
    return false;
}

/* Register r's blocks that became full: written positions [0, written). */
void sched__commit_blocks(struct sched *s, struct sched_req *r, int written)
{
    const int bt = s->kv.cfg.block_tokens;
    if (!s->kv.cfg.prefix_cache)
        return;
    while ((r->run.kv.n_hashed + 1) * bt <= written)
        kv_seq_commit_block(&s->kv, &r->run.kv, sched_block_tokens(s, r, r->run.kv.n_hashed));
}

/* Put r, which sched_fits just accepted (its cached prefix held), in the
 * running set: the rest of its blocks and, the first time, its sampler. */
static bool sched_start_req(struct sched *s, struct sched_req *r, uint64_t now)
{
    sched__dequeue(&s->pol, r);
    bool first = !r->t_admit_ns;
    if (first) {
        r->t_admit_ns = now;
        atomic_fetch_sub_explicit(&s->n_queued, 1, memory_order_relaxed);
    }
    /* A request-level engine samples with the request's parameters itself. */
    if (!r->run.smp_ready && !s->eng->info.request_level && !r->embd) {
        struct lmd_err err = {0};
        struct sample_params sp = r->sp;
        sp.gvocab = sched__gvocab(s, sp.grammar != NULL);
        if (sample_init(&r->run.smp, &sp, r->n_prompt + r->max_tokens, &err) != 0) {
            sched__fail(s, r, err.msg);
            return false;
        }
        r->run.smp_ready = true;
        sample_accept_prompt(&r->run.smp, r->prompt, r->n_prompt);
    }
    /* A resumed request prefills its prompt and the output it already
     * has; the logits of the last give its next token. The cached prefix
     * is not forwarded again. */
    int cached = r->run.kv.n_blocks * s->kv.cfg.block_tokens;
    int rc = kv_seq_reserve(&s->kv, &r->run.kv, r->n_prompt + r->max_tokens);
    LMD_ASSERT(rc == 0, "sched: blocks counted at admission are missing");
    r->run.n_fill = r->n_prompt + atomic_load_explicit(&r->n_out, memory_order_relaxed);
    r->run.n_fed = cached;
    r->run.running = true;
    s->running[s->n_running++] = r;
    atomic_store_explicit(&r->kv_blocks, r->run.kv.n_blocks, memory_order_relaxed);
    atomic_store_explicit(&r->state, SCHED_ST_PREFILL, memory_order_relaxed);
    /* Only the first admission opens the request's trace slice; a resume
     * after a preemption stays inside it. */
    if (first) {
        /* As vLLM counts them: prompt tokens looked up, and found, once
         * per request. */
        if (s->kv.cfg.prefix_cache) {
            atomic_fetch_add_explicit(&s->prefix_queries, (uint64_t)r->n_prompt, memory_order_relaxed);
            atomic_fetch_add_explicit(&s->prefix_hits, (uint64_t)cached, memory_order_relaxed);
            obs_count(OBS_C_PREFIX_QUERIES, (uint64_t)r->n_prompt);
            obs_count(OBS_C_PREFIX_HITS, (uint64_t)cached);
        }
        obs_trace(OBS_EV_ADMIT, r->id, now, now, r->cls, r->tenant, r->n_prompt);
        /* The owner learns it left the queue (its tenant's queued quota
         * frees now, not at the first token). */
        r->notify(r);
    }
    return true;
}

/* v keeps t_last_tok_ns: its next token's inter-token latency then spans
 * the wait and the recomputation. */
static void sched_preempt(struct sched *s, struct sched_req *v, uint64_t now)
{
    sched__running_remove(s, v);
    sched__running_compact(s);
    int freed = v->run.kv.n_blocks;
    kv_seq_release(&s->kv, &v->run.kv);
    v->run.n_fed = v->run.n_fill = 0;
    atomic_fetch_add_explicit(&v->n_preempted, 1, memory_order_relaxed);
    atomic_store_explicit(&v->kv_blocks, 0, memory_order_relaxed);
    atomic_store_explicit(&v->state, SCHED_ST_PREEMPTED, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->preemptions, 1, memory_order_relaxed);
    obs_count(OBS_C_PREEMPTIONS, 1);
    obs_trace(OBS_EV_PREEMPT, v->id, now, now, freed, 0, 0);
    sched__enqueue(&s->pol, v, false);
    LMD_DEBUG("sched: preempted request %llu (class %d) after %d tokens", (unsigned long long)v->id, v->cls,
              atomic_load_explicit(&v->n_out, memory_order_relaxed));
}

/* Time until the first running sequence would finish on its own, from the
 * cost model: its remaining prefill and decode steps. */
double sched__time_to_free_ns(const struct sched *s)
{
    double best = -1;
    for (int i = 0; i < s->n_running; i++) {
        const struct sched_req *r = s->running[i];
        int left_tokens = r->max_tokens - atomic_load_explicit(&r->n_out, memory_order_relaxed);
        double t = (double)left_tokens * s->ema_decode_ns + (double)(r->run.n_fill - r->run.n_fed) * s->ema_token_ns;
        if (best < 0 || t < best)
            best = t;
    }
    return best < 0 ? 0 : best;
}

/* r cannot start for lack of a slot or blocks. Preempt lower-class
 * sequences if that makes room and waiting for one to finish would make r
 * late; returns whether room was made. */
static bool sched_try_preempt(struct sched *s, struct sched_req *r, uint64_t now)
{
    int need = sched__blocks_needed(s, r);
    /* A request handed to an engine that batches on its own cannot be
     * paused and resumed. */
    if (s->eng->info.request_level)
        return false;
    /* Is it possible at all? Count what the candidate victims hold. */
    int could_free = 0, victims = 0;
    for (int i = 0; i < s->n_running; i++) {
        const struct sched_req *v = s->running[i];
        if (v->cls > r->cls) {
            /* A block another sequence also holds stays taken. */
            for (int b = 0; b < v->run.kv.n_blocks; b++)
                could_free += s->kv.blk[v->run.kv.blocks[b]].refs == 1;
            victims++;
        }
    }
    bool slot_ok = s->n_running < s->cfg.max_running || victims > 0;
    if (!victims || !slot_ok || kv_free_blocks(&s->kv) + could_free < need)
        return false;
    /* Worth it? If a sequence will finish well before r's deadline, wait:
     * recomputing a victim costs throughput. */
    if (r->t_deadline_ns > now) {
        double slack = (double)(r->t_deadline_ns - now);
        if (sched__time_to_free_ns(s) < 0.5 * slack)
            return false;
    }
    while (s->n_running >= s->cfg.max_running || kv_free_blocks(&s->kv) < need) {
        struct sched_req *v = sched__victim(&s->pol, s->running, s->n_running, r->cls);
        if (!v)
            return false;
        sched_preempt(s, v, now);
    }
    return true;
}

int sched__group_cap(const struct sched *s, int cls)
{
    int cap = s->pol.cls[cls].max_request_running;
    if (cap <= 0)
        cap = (s->cfg.max_running + 1) / 2;
    return cap < 1 ? 1 : cap;
}

/* Whether r's group (the other choices of its API request) already holds
 * its share of the running set. The running set is small (tens), so a
 * scan costs nothing next to a step. */
bool sched__group_full(const struct sched *s, const struct sched_req *r)
{
    if (!r->group)
        return false;
    int n = 0;
    for (int i = 0; i < s->n_running; i++)
        n += s->running[i] && s->running[i]->group == r->group;
    return n >= sched__group_cap(s, r->cls);
}

/* Admit waiting work while it fits; *next_ns gets the earliest time a
 * request held by a batching window becomes eligible. */
void sched__admit(struct sched *s, uint64_t now, uint64_t *next_ns)
{
    /* Choices whose request holds its share of the running set are set
     * aside for this pass, so that the work behind them overtakes them
     * (unlike a request that does not fit, which nobody overtakes: that
     * one waits for room that will come, these for their own siblings).
     * They go back to their places in the queue at the end. Linked
     * through run.next; held is newest first. */
    struct sched_req *held = NULL;
    for (;;) {
        struct sched_req *r = sched__pick(&s->pol, now, next_ns);
        if (!r)
            break;
        if (s->pol.kind == SCHED_POLICY_SLA && s->pol.cls[r->cls].refuse_late && r->t_deadline_ns &&
            now > r->t_deadline_ns && !r->t_admit_ns) {
            sched__finish(s, r, SCHED_FINISH_DEADLINE);
            continue;
        }
        if (sched__group_full(s, r)) {
            sched__dequeue(&s->pol, r);
            r->run.next = held;
            held = r;
            continue;
        }
        if (sched_fits(s, r)) {
            sched_start_req(s, r, now);
            continue;
        }
        if (s->pol.kind == SCHED_POLICY_SLA && sched_try_preempt(s, r, now))
            continue;
        break; /* the best candidate waits; nobody overtakes it */
    }
    while (held) {
        struct sched_req *nx = held->run.next;
        held->run.next = NULL;
        sched__enqueue(&s->pol, held, false);
        held = nx;
    }
}
