/*
 * The scheduler's engine thread: take new requests from the inbox, admit
 * (preempting if the policy says so), form a ragged batch, forward, sample,
 * publish. See sched.h for the policies and policy.c for the decisions;
 * this file is the loop and the hand-over between threads.
 *
 * It never touches sockets or JSON.
 *
 * It feeds obs/ from the engine thread (a few relaxed atomics, no locks, no
 * allocation): every loop, the running, KV-block and per-class waiting
 * gauges; every step, its time (forward and sampling) and its sequences and
 * tokens; every output token, the generated-tokens counter and (after the
 * first) the inter-token latency — a preemption gap included, since that is
 * what the client sees; every finished request, its queue, prefill and
 * decode times; every prompt once, when it is first prefilled (recomputation after
 * a preemption is not counted again); every preemption. With tracing on it
 * also records step, prefill-chunk, admit, preempt and finish events, and a
 * reject event for a deadline refusal (at submit or at admission). Counting
 * rejections is the API layer's job, not this file's.
 */
#include "sample/grammar.h"
#include "sched/sched_int.h"

#include "core/log.h"
#include "core/time.h"
#include "obs/obs.h"
#include "tokenizer/tokenizer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sched_req_init(struct sched_req *r)
{
    atomic_init(&r->n_out, 0);
    atomic_init(&r->finish, SCHED_RUNNING);
    atomic_init(&r->state, SCHED_ST_QUEUED);
    atomic_init(&r->kv_blocks, 0);
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancelled, false);
    r->err[0] = '\0';
    r->cls = r->tenant = 0;
    r->id = r->group = 0;
    r->t_arrival_ns = r->t_deadline_ns = 0;
    atomic_init(&r->t_admit_ns, 0);
    atomic_init(&r->t_first_ns, 0);
    atomic_init(&r->t_done_ns, 0);
    r->cache_salt = 0;
    r->block_table = NULL;
    atomic_init(&r->n_preempted, 0);
    memset(&r->run, 0, sizeof r->run);
    r->run.last_tok = -1;
    r->n_logprobs = -1;
    r->out_lp = NULL;
    r->out_top_id = NULL;
    r->out_top_lp = NULL;
    r->embd = NULL;
    r->api_path = NULL;
    r->api_json = NULL;
    r->api_body = NULL;
    r->api_body_len = 0;
    r->on_text = NULL;
    r->err_status = 0;
    r->usage_prompt = r->usage_completion = -1;
}

void sched_req_ref(struct sched_req *r) { atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed); }

void sched_req_unref(struct sched_req *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        r->release(r);
}

/* Seconds between two monotonic stamps; 0 if they are out of order (an
 * owner-supplied arrival stamp from a slightly later clock read). */
double sched__secs(uint64_t from_ns, uint64_t to_ns) { return to_ns > from_ns ? (double)(to_ns - from_ns) / 1e9 : 0; }

/* ---- leaving ------------------------------------------------------------- */

void sched__running_remove(struct sched *s, struct sched_req *r)
{
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == r)
            s->running[i] = NULL;
    r->run.running = false;
}

/* Remove the NULL slots, keeping order. */
void sched__running_compact(struct sched *s)
{
    int k = 0;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i])
            s->running[k++] = s->running[i];
    s->n_running = k;
}

/* The per-request metrics, once, as r finishes. Recorded before `finish`
 * is published, so an owner that has seen it also sees them. */
static void sched_observe_finish(const struct sched_req *r, enum sched_finish why)
{
    if (r->t_admit_ns) {
        obs_observe(OBS_H_QUEUE, r->cls, sched__secs(r->t_arrival_ns, r->t_admit_ns));
        if (r->t_first_ns) {
            obs_observe(OBS_H_PREFILL, r->cls, sched__secs(r->t_admit_ns, r->t_first_ns));
            if (!r->embd) /* an embedding has no decode phase to time */
                obs_observe(OBS_H_DECODE, r->cls, sched__secs(r->t_first_ns, r->t_done_ns));
        }
    }
    if (why == SCHED_FINISH_DEADLINE)
        obs_trace(OBS_EV_REJECT, r->id, r->t_done_ns, r->t_done_ns, OBS_R_DEADLINE, r->tenant, 0);
    obs_trace(OBS_EV_FINISH, r->id, r->t_done_ns, r->t_done_ns, atomic_load_explicit(&r->n_out, memory_order_relaxed),
              why, 0);
}

/* End r wherever it is (inbox excepted): return its blocks, publish the
 * reason, wake its owner and drop the scheduler's reference. */
void sched__finish(struct sched *s, struct sched_req *r, enum sched_finish why)
{
    const bool ran = r->run.running;
    if (r->run.running)
        sched__running_remove(s, r);
    else if (r->run.queued)
        sched__dequeue(&s->pol, r);
    if (!r->t_admit_ns)
        atomic_fetch_sub_explicit(&s->n_queued, 1, memory_order_relaxed);
    sched__leave(&s->pol, r);
    if (r->run.kv.blocks) {
        kv_seq_release(&s->kv, &r->run.kv);
        if (r->run.own_table)
            free(r->run.kv.blocks);
        r->run.kv.blocks = NULL;
    }
    if (r->run.smp_ready)
        sample_free(&r->run.smp);
    r->run.smp_ready = false;
    r->t_done_ns = lmd_time_mono_ns();
    if (ran && r->t_admit_ns && r->t_done_ns > r->t_admit_ns &&
        atomic_load_explicit(&r->n_preempted, memory_order_relaxed) == 0) {
        const double a = 0.2, turn = (double)(r->t_done_ns - r->t_admit_ns);
        s->ema_turn_ns = s->ema_turn_ns > 0 ? (1 - a) * s->ema_turn_ns + a * turn : turn;
    }
    sched_observe_finish(r, why);
    atomic_store_explicit(&r->kv_blocks, 0, memory_order_relaxed);
    atomic_store_explicit(&r->state, SCHED_ST_DONE, memory_order_relaxed);
    atomic_store_explicit(&r->finish, (int)why, memory_order_release);
    atomic_fetch_add_explicit(&s->requests_total, 1, memory_order_relaxed);
    if (why == SCHED_FINISH_DEADLINE)
        atomic_fetch_add_explicit(&s->deadline_refusals, 1, memory_order_relaxed);
    atomic_store_explicit(&s->kv_free, kv_free_blocks(&s->kv), memory_order_relaxed);
    r->notify(r);
    sched_req_unref(r);
}

void sched__fail(struct sched *s, struct sched_req *r, const char *msg)
{
    snprintf(r->err, sizeof r->err, "%s", msg);
    sched__finish(s, r, SCHED_FINISH_ERROR);
}

/* ---- arriving ------------------------------------------------------------ */

/* Move everything in the inbox into the policy's queues, in arrival order. */
static void sched_drain_inbox(struct sched *s)
{
    struct sched_req *r = atomic_exchange_explicit(&s->inbox, NULL, memory_order_acquire), *fifo = NULL;
    while (r) { /* the stack is newest first: reverse it */
        struct sched_req *nx = r->run.next;
        r->run.next = fifo;
        fifo = r;
        r = nx;
    }
    for (r = fifo; r;) {
        struct sched_req *nx = r->run.next;
        r->run.next = r->run.prev = NULL;
        r->run.seq = s->next_seq++;
        sched__enqueue(&s->pol, r, true);
        r = nx;
    }
}

/* Drop waiting requests whose owner cancelled them. Only after a cancel
 * happened, so a quiet queue is not walked every step. */
static void sched_sweep_cancelled(struct sched *s)
{
    unsigned gen = atomic_load_explicit(&s->cancel_gen, memory_order_acquire);
    if (gen == s->cancel_seen)
        return;
    s->cancel_seen = gen;
    for (int c = 0; c < SCHED_MAX_CLASSES; c++) {
        for (int t = 0; t < SCHED_MAX_TENANTS; t++) {
            for (struct sched_req *r = s->pol.q[c][t].head, *nx; r; r = nx) {
                nx = r->run.next;
                if (atomic_load_explicit(&r->cancelled, memory_order_relaxed))
                    sched__finish(s, r, SCHED_FINISH_CANCELLED);
            }
        }
    }
    for (int i = 0; i < s->n_running; i++) {
        struct sched_req *r = s->running[i];
        if (r && atomic_load_explicit(&r->cancelled, memory_order_relaxed)) {
            if (r->run.submitted)
                sched__cancel_request(s, r);
            else
                sched__finish(s, r, SCHED_FINISH_CANCELLED);
        }
    }
    sched__running_compact(s);
}

/* ---- stepping ------------------------------------------------------------ */

/* Tokens this step may carry. Under SLA, while a sequence of a class with
 * a TPOT target decodes, the prefill share is cut so that the step fits
 * the tightest such target — except for prompts of a class at least as
 * urgent as that one: those are prefilled whole (within the step budget),
 * since a TTFT target is missed by seconds when an urgent prompt trickles
 * in 16-token chunks, while the decodes lose one step's worth of pace. */
static int sched_step_budget(const struct sched *s)
{
    if (s->pol.kind != SCHED_POLICY_SLA || s->ema_token_ns <= 0)
        return s->budget;
    uint64_t tpot = 0;
    int decodes = 0, tpot_cls = 0;
    for (int i = 0; i < s->n_running; i++) {
        const struct sched_req *r = s->running[i];
        if (r->run.n_fed < r->run.n_fill)
            continue;
        decodes++;
        uint64_t t = s->pol.cls[r->cls].tpot_ns;
        if (t && (!tpot || t < tpot)) {
            tpot = t;
            tpot_cls = r->cls;
        }
    }
    if (!tpot)
        return s->budget;
    double room = SCHED_TPOT_SHARE * (double)tpot - s->ema_decode_ns;
    int prefill = room > 0 ? (int)(room / s->ema_token_ns) : 0;
    if (prefill < SCHED_MIN_CHUNK)
        prefill = SCHED_MIN_CHUNK;
    int urgent = 0;
    for (int i = 0; i < s->n_running; i++) {
        const struct sched_req *r = s->running[i];
        if (r->run.n_fed < r->run.n_fill && r->cls <= tpot_cls)
            urgent += r->run.n_fill - r->run.n_fed;
    }
    if (urgent > prefill)
        prefill = urgent;
    int b = decodes + prefill;
    return b < s->budget ? b : s->budget;
}

static void sched_update_cost(struct sched *s, uint64_t ns, int n_decode, int n_prefill)
{
    const double a = 0.2;
    if (n_prefill == 0) {
        s->ema_decode_ns = s->ema_decode_ns > 0 ? (1 - a) * s->ema_decode_ns + a * (double)ns : (double)ns;
        return;
    }
    double per = ((double)ns - (n_decode ? s->ema_decode_ns : 0)) / n_prefill;
    if (per <= 0)
        return;
    s->ema_token_ns = s->ema_token_ns > 0 ? (1 - a) * s->ema_token_ns + a * per : per;
    if (s->ema_decode_ns <= 0)
        s->ema_decode_ns = per; /* until a decode-only step is seen */
}

/* Publish r's next token: sampled here from its logits row, or (row NULL)
 * the engine's sample, whose log-probabilities the engine wrote in place.
 * Finishes r when it is done — except for a request-level engine, whose
 * finish event ends it. */
void sched__output_stamps(struct sched_req *r, uint64_t now)
{
    if (!r->t_first_ns)
        r->t_first_ns = now;
    if (r->run.t_last_tok_ns)
        obs_observe(OBS_H_ITL, r->cls, sched__secs(r->run.t_last_tok_ns, now));
    r->run.t_last_tok_ns = now;
    /* Counted as produced, so a rate over this counter is the live output
     * rate, not one that jumps when long requests end. */
    obs_count(OBS_C_GENERATION_TOKENS, 1);
}

void sched__emit(struct sched *s, struct sched_req *r, int32_t tok, float *row, uint64_t now)
{
    const int n_vocab = s->eng->info.n_vocab;
    const bool whole = s->eng->info.request_level;
    if (row) {
        tok = sample_next(&r->run.smp, &s->scratch, row, n_vocab);
        sample_accept(&r->run.smp, tok);
    }
    atomic_fetch_add_explicit(&s->generated_tokens, 1, memory_order_relaxed);
    enum sched_finish why = SCHED_RUNNING;
    int n = atomic_load_explicit(&r->n_out, memory_order_relaxed);
    if (!whole && !r->ignore_eos && s->cfg.vocab && tok_is_eog(s->cfg.vocab, tok)) {
        why = SCHED_FINISH_STOP;
    } else if (n < r->max_tokens) {
        r->out[n] = tok;
        if (r->n_logprobs >= 0 && row) {
            int nt = r->n_logprobs;
            r->out_lp[n] = sample_logprobs(row, n_vocab, tok, nt, nt ? r->out_top_id + (size_t)n * nt : NULL,
                                           nt ? r->out_top_lp + (size_t)n * nt : NULL);
        }
        sched__output_stamps(r, now);
        atomic_store_explicit(&r->n_out, n + 1, memory_order_release);
        r->run.last_tok = tok;
        if (n + 1 == r->max_tokens && !whole)
            why = SCHED_FINISH_LENGTH;
    }
    if (why == SCHED_RUNNING)
        r->notify(r);
    else
        sched__finish(s, r, why);
}

/* For an engine that samples: the sequence's sampler and where the
 * log-probabilities of its next token go. */
static void sched_batch_sampling(struct engine_seq *es, struct sched_req *r, bool samples)
{
    if (!samples)
        return;
    int n = atomic_load_explicit(&r->n_out, memory_order_relaxed), nt = r->n_logprobs;
    es->smp = &r->run.smp;
    es->n_logprobs = nt;
    if (nt >= 0) {
        es->out_lp = r->out_lp + n;
        es->out_top_id = nt ? r->out_top_id + (size_t)n * nt : NULL;
        es->out_top_lp = nt ? r->out_top_lp + (size_t)n * nt : NULL;
    }
}

/* One engine step over the running set. */
static void sched_step(struct sched *s)
{
    const int n_vocab = s->eng->info.n_vocab;
    const bool samples = s->eng->info.samples;
    int nb = sched__form(&s->pol, s->running, s->n_running, sched_step_budget(s), s->items);
    if (nb == 0)
        return;
    int nrow = 0, n_decode = 0, n_prefill = 0, n_prefill_seqs = 0;
    for (int k = 0; k < nb; k++) {
        struct sched__item *it = &s->items[k];
        struct sched_req *r = it->r;
        if (it->decode) {
            s->batch[k] = (struct engine_seq){.tokens = &r->run.last_tok,
                                              .n_tokens = 1,
                                              .pos = r->run.pos,
                                              .blocks = r->run.kv.blocks,
                                              .want_logits = true};
            sched_batch_sampling(&s->batch[k], r, samples);
            s->brow[k] = nrow++;
            n_decode++;
        } else {
            bool last = r->run.n_fed + it->n == r->run.n_fill;
            s->batch[k] = (struct engine_seq){.tokens = sched__fill_tokens(r, r->run.n_fed),
                                              .n_tokens = it->n,
                                              .pos = r->run.n_fed,
                                              .blocks = r->run.kv.blocks,
                                              .want_logits = last && !r->embd};
            if (r->embd) {
                /* An embedding pools every chunk and wants no logits. */
                s->batch[k].pool = s->eng->info.pooling;
                s->batch[k].embd = r->embd;
                last = false;
            }
            if (last)
                sched_batch_sampling(&s->batch[k], r, samples);
            s->brow[k] = last ? nrow++ : -1;
            n_prefill += it->n;
            n_prefill_seqs++;
        }
    }

    struct engine_result res = {0};
    struct lmd_err err = {0};
    uint64_t t0 = lmd_time_mono_ns();
    int rc = engine_launch(s->eng, s->batch, nb, &err);
    /* While the step runs: take new arrivals into the queues. Admission
     * waits for the result, since it may preempt a sequence in flight. */
    if (rc == 0) {
        sched_drain_inbox(s);
        rc = engine_wait(s->eng, &res, &err);
    }
    uint64_t t1 = lmd_time_mono_ns();
    if (rc != 0) {
        LMD_ERROR("sched: engine step failed: %s", err.msg);
        for (int k = 0; k < nb; k++)
            if (s->items[k].r->run.running)
                sched__fail(s, s->items[k].r, err.msg);
        sched__running_compact(s);
        return;
    }
    atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
    sched_update_cost(s, t1 - t0, n_decode, n_prefill);

    /* Advance positions, sample, publish. The logits buffer is the
     * engine's until the next step; sampling edits its rows in place. */
    for (int k = 0; k < nb; k++) {
        struct sched_req *r = s->items[k].r;
        int n = s->items[k].n;
        sched__charge(&s->pol, r->tenant, n);
        atomic_fetch_add_explicit(&s->tenant_tokens[r->tenant], (uint64_t)n, memory_order_relaxed);
        if (!s->items[k].decode) {
            obs_trace(OBS_EV_PREFILL, r->id, t0, t1, n, r->run.n_fed, 0);
            r->run.n_fed += n;
            atomic_fetch_add_explicit(&s->prompt_tokens, (uint64_t)n, memory_order_relaxed);
            if (r->embd && r->run.n_fed == r->run.n_fill) {
                /* The whole prompt is pooled: the embedding is done. */
                obs_count(OBS_C_PROMPT_TOKENS, (uint64_t)r->n_prompt);
                engine_embd_finish(r->embd, s->eng->info.n_embd, s->eng->info.pooling, r->n_prompt);
                r->t_first_ns = t1;
                sched__finish(s, r, SCHED_FINISH_STOP);
                continue;
            }
            if (s->brow[k] < 0) {
                sched__commit_blocks(s, r, r->run.n_fed);
                continue;
            }
            /* Prefilled with no output yet: the first residency, so the
             * prompt is counted once however often it is recomputed. */
            if (atomic_load_explicit(&r->n_out, memory_order_relaxed) == 0)
                obs_count(OBS_C_PROMPT_TOKENS, (uint64_t)r->n_prompt);
            r->run.pos = r->run.n_fill;
            atomic_store_explicit(&r->state, SCHED_ST_DECODE, memory_order_relaxed);
        } else {
            r->run.pos++;
        }
        sched__commit_blocks(s, r, r->run.pos);
        if (res.tokens)
            sched__emit(s, r, res.tokens[s->brow[k]], NULL, t1);
        else
            sched__emit(s, r, -1, res.logits + (size_t)s->brow[k] * (size_t)n_vocab, t1);
    }
    sched__running_compact(s);

    uint64_t t2 = lmd_time_mono_ns();
    obs_observe(OBS_H_STEP, -1, sched__secs(t0, t2));
    obs_observe(OBS_H_BATCH_SIZE, -1, nb);
    obs_observe(OBS_H_BATCH_TOKENS, -1, n_decode + n_prefill);
    obs_trace(OBS_EV_STEP, 0, t0, t2, nb, n_decode + n_prefill, n_prefill_seqs);
}

/* ---- publishing ------------------------------------------------------------ */

/* Waiting counts and, per class, the inputs of the wait estimate of a new
 * arrival (sched__wait_estimate): the prefill work queued at its class or
 * above and how many of those requests take a slot before it. Choices set
 * aside because their request holds its share are overtaken, so they are
 * not ahead. */
static void sched_publish(struct sched *s)
{
    int kv_free = kv_free_blocks(&s->kv), kv_total = s->kv.cfg.n_blocks;
    atomic_store_explicit(&s->running_now, s->n_running, memory_order_relaxed);
    atomic_store_explicit(&s->waiting_now, s->pol.n_waiting, memory_order_relaxed);
    atomic_store_explicit(&s->kv_free, kv_free, memory_order_relaxed);
    obs_gauge_set(OBS_G_RUNNING, s->n_running);
    obs_gauge_set(OBS_G_KV_FREE, kv_free);
    obs_gauge_set(OBS_G_KV_TOTAL, kv_total);
    obs_gauge_set(OBS_G_KV_BLOCK_SIZE, s->kv.cfg.block_tokens);
    atomic_store_explicit(&s->kv_cached, s->kv.n_cached, memory_order_relaxed);
    obs_gauge_set(OBS_G_KV_USAGE, kv_total > 0 ? 1.0 - (double)kv_free / kv_total : 0);
    double ahead = 0;
    int n_ahead = 0;
    for (int c = 0; c < s->pol.n_classes; c++) {
        atomic_store_explicit(&s->waiting_class[c], s->pol.n_waiting_cls[c], memory_order_relaxed);
        obs_waiting_set(c, s->pol.n_waiting_cls[c]);
        for (int t = 0; t < s->pol.n_tenants; t++)
            for (const struct sched_req *r = s->pol.q[s->pol.kind == SCHED_POLICY_FCFS ? 0 : c][t].head; r;
                 r = r->run.next) {
                ahead += r->n_prompt + atomic_load_explicit(&r->n_out, memory_order_relaxed);
                n_ahead += !sched__group_full(s, r);
            }
        atomic_store_explicit(&s->est_prefill[c], (uint64_t)(ahead * s->ema_token_ns), memory_order_relaxed);
        atomic_store_explicit(&s->est_ahead[c], n_ahead, memory_order_relaxed);
        if (s->pol.kind == SCHED_POLICY_FCFS)
            ahead = 0, n_ahead = 0; /* one queue: counted once */
    }
    atomic_store_explicit(&s->est_to_free, (uint64_t)sched__time_to_free_ns(s), memory_order_relaxed);
    atomic_store_explicit(&s->est_turn, (uint64_t)s->ema_turn_ns, memory_order_relaxed);
}

/* The prefill work queued ahead, plus — when the requests ahead take every
 * free slot — the time until slots free for them and for the new one: the
 * first when a sequence finishes (the soonest running one, or a whole
 * request's time when none runs), the others at the measured turnover of
 * a full running set (max_running slots, each held ema_turn_ns). Requests
 * submitted since the last step count as ahead, so that a burst arriving
 * at once sees itself. With a free slot for everyone ahead (an idle or
 * lightly loaded server), or before any request has finished (no
 * turnover measured), it is the prefill work alone: it never refuses what
 * it has no evidence against. Slots held for earlier classes
 * (reserved_running) are not free for cls, as admission counts them. */
uint64_t sched__wait_estimate(struct sched *s, int cls)
{
    double est = (double)atomic_load_explicit(&s->est_prefill[cls], memory_order_relaxed);
    int running = atomic_load_explicit(&s->running_now, memory_order_relaxed);
    int pending = atomic_load_explicit(&s->n_queued, memory_order_relaxed) -
                  atomic_load_explicit(&s->waiting_now, memory_order_relaxed);
    int ahead = atomic_load_explicit(&s->est_ahead[cls], memory_order_relaxed) + (pending > 0 ? pending : 0);
    const int limit = sched__running_limit(s);
    int free_slots = limit - sched__reserved_for(s, cls, limit) - running;
    if (free_slots < 0)
        free_slots = 0;
    double turn = (double)atomic_load_explicit(&s->est_turn, memory_order_relaxed);
    double to_free = (double)atomic_load_explicit(&s->est_to_free, memory_order_relaxed);
    if (ahead >= free_slots && (running > 0 || turn > 0)) {
        /* It starts when the (ahead - free_slots + 1)th slot frees. */
        int releases = ahead - free_slots + 1;
        double first = running == 0 ? turn : running < limit && turn < to_free ? turn : to_free;
        est += first + (double)(releases - 1) * turn / limit;
    }
    return (uint64_t)est;
}

/* Sleep until something arrives, is cancelled, or a held request becomes
 * eligible (next_ns, monotonic; UINT64_MAX = none). */
static void sched_park(struct sched *s, uint64_t next_ns)
{
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->parked, true);
    if (!atomic_load(&s->inbox) && !atomic_load(&s->stopping) && atomic_load(&s->cancel_gen) == s->cancel_seen &&
        !atomic_exchange(&s->eng_ready, false)) {
        if (next_ns == UINT64_MAX) {
            pthread_cond_wait(&s->cv, &s->mu);
        } else {
            uint64_t now = lmd_time_mono_ns();
            if (next_ns > now) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t ns = (uint64_t)ts.tv_nsec + (next_ns - now);
                ts.tv_sec += (time_t)(ns / 1000000000ull);
                ts.tv_nsec = (long)(ns % 1000000000ull);
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
        }
    }
    atomic_store(&s->parked, false);
    pthread_mutex_unlock(&s->mu);
}

static void sched_wake(struct sched *s)
{
    if (atomic_load(&s->parked)) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
}

/* engine.wake: a request-level engine has events (any thread). */
static void sched_engine_wake(void *ud)
{
    struct sched *s = ud;
    atomic_store(&s->eng_ready, true);
    sched_wake(s);
}

static bool sched_any_submitted(const struct sched *s)
{
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->run.submitted)
            return true;
    return false;
}

static void *sched_main(void *arg)
{
    struct sched *s = arg;
    obs_bind_model(s->cfg.obs_model);
    while (!atomic_load(&s->stopping)) {
        sched_drain_inbox(s);
        sched_sweep_cancelled(s);
        uint64_t next_ns = UINT64_MAX;
        sched__admit(s, lmd_time_mono_ns(), &next_ns);
        sched_publish(s);
        if (s->n_running == 0) {
            sched_park(s, next_ns);
            continue;
        }
        if (!s->eng->info.request_level) {
            sched_step(s);
        } else if (sched__step_requests(s) == 0) {
            /* Nothing came back. An engine that wakes this thread when its
             * events are ready is waited for; another is looked at again
             * shortly (its sockets live on another thread). */
            uint64_t t = s->eng->info.wakes ? UINT64_MAX : lmd_time_mono_ns() + 1000000;
            sched_park(s, next_ns < t ? next_ns : t);
        }
    }

    /* Stopping: whatever is left ends cut short, which its owner must be
     * able to tell from an answer that finished (SCHED_FINISH_SHUTDOWN, not
     * CANCELLED: an owner that cancelled itself already knows why).
     * Requests handed to a request-level engine end when it confirms
     * (bounded). */
    sched_drain_inbox(s);
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->run.submitted)
            sched__cancel_request(s, s->running[i]);
    for (int tries = 0; tries < 5000 && sched_any_submitted(s); tries++)
        if (sched__step_requests(s) == 0) {
            struct timespec ts = {.tv_nsec = 1000000};
            nanosleep(&ts, NULL);
        }
    while (s->n_running > 0)
        sched__finish(s, s->running[0], SCHED_FINISH_SHUTDOWN), sched__running_compact(s);
    for (int c = 0; c < SCHED_MAX_CLASSES; c++)
        for (int t = 0; t < SCHED_MAX_TENANTS; t++)
            while (s->pol.q[c][t].head)
                sched__finish(s, s->pol.q[c][t].head, SCHED_FINISH_SHUTDOWN);
    sched_publish(s);
    return NULL;
}

/* ---- lifecycle and the other threads' side -------------------------------- */

/* Builds the vocabulary trie off the start path (struct sched's gvocab). */
static void *sched_gv_main(void *arg)
{
    struct sched *s = arg;
    struct lmd_err gerr = {0};
    if (gram_vocab_build(&s->gvocab, s->gv_src, s->gv_n_logits, &gerr) != 0)
        LMD_WARN("sched: constrained decoding is off for this model: %s", gerr.msg);
    atomic_store_explicit(&s->gv_done, true, memory_order_release);
    return NULL;
}

const struct gram_vocab *sched__gvocab(struct sched *s, bool need)
{
    if (s->gv_pending && (need || atomic_load_explicit(&s->gv_done, memory_order_acquire))) {
        /* A grammar's first request in the first fraction of a second
         * waits for the rest of the build; nothing else does. */
        pthread_join(s->gv_thread, NULL);
        s->gv_pending = false;
    }
    return s->gv_pending ? NULL : s->gvocab;
}

static void sched_free_mem(struct sched *s)
{
    if (s->gv_pending) {
        pthread_join(s->gv_thread, NULL);
        s->gv_pending = false;
    }
    sample_scratch_free(&s->scratch);
    gram_vocab_free(s->gvocab);
    free(s->events);
    kv_free(&s->kv);
    free(s->blk_tok);
    free(s->running);
    free(s->items);
    free(s->batch);
    free(s->brow);
    free(s);
}

int sched_start(struct sched **out, struct engine *eng, const struct sched_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    const struct engine_info *ei = &eng->info;
    if (!ei->request_level && (ei->kv_blocks < 1 || ei->kv_block_tokens < 1))
        return lmd_err_set(err, LMD_ENOTSUP, "sched: engine %s batches steps but stores no KV blocks", ei->kind);
    if (cfg->max_running < 1 || cfg->max_running > eng->info.max_seqs || cfg->max_queue < 0)
        return lmd_err_set(err, LMD_EINVAL, "sched: max_running %d must be in [1, %d] (the engine's sequences)",
                           cfg->max_running, eng->info.max_seqs);
    int budget = cfg->step_tokens > 0 ? cfg->step_tokens : eng->info.max_batch_tokens;
    if (!ei->request_level && (budget > eng->info.max_batch_tokens || budget < cfg->max_running))
        return lmd_err_set(err, LMD_EINVAL, "sched: a step of %d tokens must be in [%d (max_running), %d (engine)]",
                           budget, cfg->max_running, eng->info.max_batch_tokens);
    if (cfg->classes && (cfg->n_classes < 1 || cfg->n_classes > SCHED_MAX_CLASSES))
        return lmd_err_set(err, LMD_EINVAL, "sched: %d service classes; 1 to %d are supported", cfg->n_classes,
                           SCHED_MAX_CLASSES);
    if (cfg->tenant_weight && (cfg->n_tenants < 1 || cfg->n_tenants > SCHED_MAX_TENANTS))
        return lmd_err_set(err, LMD_EINVAL, "sched: %d tenants; 1 to %d are supported", cfg->n_tenants,
                           SCHED_MAX_TENANTS);
    for (int t = 0; cfg->tenant_weight && t < cfg->n_tenants; t++)
        if (!(cfg->tenant_weight[t] > 0))
            return lmd_err_set(err, LMD_EINVAL, "sched: tenant %d has weight %g; weights must be > 0", t,
                               cfg->tenant_weight[t]);
    struct sched *s = calloc(1, sizeof *s);
    if (!s)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    s->cfg = *cfg;
    /* Own copies, so the caller's arrays may go. */
    if (cfg->classes) {
        memcpy(s->classes, cfg->classes, (size_t)cfg->n_classes * sizeof *cfg->classes);
        s->cfg.classes = s->classes;
    }
    if (cfg->tenant_weight) {
        memcpy(s->weights, cfg->tenant_weight, (size_t)cfg->n_tenants * sizeof *cfg->tenant_weight);
        s->cfg.tenant_weight = s->weights;
    }
    s->eng = eng;
    s->budget = budget;
    sched__policy_init(&s->pol, &s->cfg);
    size_t n = (size_t)cfg->max_running;
    s->running = calloc(n, sizeof *s->running);
    s->items = calloc(n, sizeof *s->items);
    s->batch = calloc(n, sizeof *s->batch);
    s->brow = calloc(n, sizeof *s->brow);
    /* Blocks: the engine's; or, for an engine that keeps its own cache
     * (request-level), a token budget, counted as blocks of one token
     * (so admission and refusals work alike), without a prefix cache. */
    struct kv_config kc = {
        .n_blocks = ei->kv_blocks, .block_tokens = ei->kv_block_tokens, .prefix_cache = !cfg->no_prefix_cache};
    if (ei->request_level) {
        long tb = ei->token_budget > 0 ? ei->token_budget : (long)ei->n_ctx * ei->max_seqs;
        /* Blocks of one token count exactly; a budget of millions of tokens
         * (a remote pool: seats x context) is counted in coarser blocks, so
         * that its bookkeeping stays at most 65,536 blocks. */
        int bt = 1;
        while (tb / bt > 65536 && bt < 4096)
            bt *= 2;
        long nb = tb / bt;
        kc = (struct kv_config){.n_blocks = nb > (1 << 30) ? (1 << 30) : (int)nb, .block_tokens = bt};
    }
    s->blk_tok = calloc((size_t)kc.block_tokens, sizeof *s->blk_tok);
    s->events = calloc(2 * n, sizeof *s->events);
    int rc = 0;
    if (!s->running || !s->items || !s->batch || !s->brow || !s->blk_tok || !s->events)
        rc = lmd_err_set(err, LMD_ENOMEM, "out of memory");
    else if ((rc = kv_init(&s->kv, &kc, err)) == 0)
        rc = sample_scratch_init(&s->scratch, eng->info.n_vocab, err);
    /* Constrained decoding walks the vocabulary as a byte trie, built once
     * beside the start (sched_gv_main) rather than on the first request
     * that needs it; built here when no thread can be started. */
    atomic_init(&s->gv_done, false);
    if (rc == 0 && cfg->vocab && !ei->request_level && tok_n_vocab(cfg->vocab) <= ei->n_vocab) {
        s->gv_src = cfg->vocab;
        s->gv_n_logits = ei->n_vocab;
        if (pthread_create(&s->gv_thread, NULL, sched_gv_main, s) == 0)
            s->gv_pending = true;
        else
            sched_gv_main(s);
    }
    if (rc) {
        sched_free_mem(s);
        return rc;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&s->kv_free, kv_free_blocks(&s->kv));
    eng->wake = sched_engine_wake;
    eng->wake_ud = s;
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        sched_free_mem(s);
        return lmd_err_set(err, LMD_ENOMEM, "sched: cannot start the engine thread");
    }
    *out = s;
    return 0;
}

void sched_stop(struct sched *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    sched_free_mem(s);
}

int sched_submit(struct sched *s, struct sched_req *r, struct lmd_err *err)
{
    const int ctx = s->eng->info.n_ctx;
    if (r->n_prompt < 1 || r->max_tokens < (r->embd ? 0 : 1))
        return lmd_err_set(err, LMD_EINVAL, "a request needs at least one prompt token and max_tokens >= 1");
    if (r->embd && s->eng->info.n_embd == 0)
        return lmd_err_set(err, LMD_ENOTSUP, "the %s engine does not compute embeddings", s->eng->info.kind);
    if (r->cls < 0 || r->cls >= s->pol.n_classes || r->tenant < 0 || r->tenant >= s->pol.n_tenants)
        return lmd_err_set(err, LMD_EINVAL, "class %d or tenant %d is not configured", r->cls, r->tenant);
    if (r->n_prompt + r->max_tokens > ctx)
        return lmd_err_set(err, LMD_ERANGE, "%d prompt tokens + %d max_tokens exceed the context of %d tokens",
                           r->n_prompt, r->max_tokens, ctx);
    if (s->eng->info.request_level && sched__blocks_needed(s, r) > s->kv.cfg.n_blocks)
        return lmd_err_set(err, LMD_ERANGE, "%d tokens exceed the engine's token budget of %ld",
                           r->n_prompt + r->max_tokens, (long)s->kv.cfg.n_blocks * s->kv.cfg.block_tokens);
    if (sched__blocks_needed(s, r) > s->kv.cfg.n_blocks)
        return lmd_err_set(err, LMD_ERANGE, "%d tokens need %d KV blocks; the cache has %d",
                           r->n_prompt + r->max_tokens, sched__blocks_needed(s, r), s->kv.cfg.n_blocks);
    if (atomic_load(&s->stopping))
        return lmd_err_set(err, LMD_ECANCELED, "the server is shutting down");
    const struct sched_class *c = &s->pol.cls[r->cls];
    if (!r->t_arrival_ns)
        r->t_arrival_ns = lmd_time_mono_ns();
    r->t_deadline_ns = c->ttft_ns ? r->t_arrival_ns + c->ttft_ns : 0;
    r->run.t_eligible_ns = r->t_arrival_ns + c->window_ns;
    if (s->pol.kind == SCHED_POLICY_SLA && c->refuse_late && c->ttft_ns) {
        uint64_t est = sched__wait_estimate(s, r->cls);
        if (est > c->ttft_ns) {
            atomic_fetch_add_explicit(&s->deadline_refusals, 1, memory_order_relaxed);
            if (obs_tracing()) {
                uint64_t now = lmd_time_mono_ns();
                obs_trace(OBS_EV_REJECT, r->id, now, now, OBS_R_DEADLINE, r->tenant, 0);
            }
            return lmd_err_set(err, LMD_ETIMEDOUT,
                               "class '%s' would wait about %.0f ms to start; its target is %.0f ms", c->name,
                               (double)est / 1e6, (double)c->ttft_ns / 1e6);
        }
    }
    /* Under SLA the last quarter of the queue is kept for the most urgent
     * class: a burst of lower-class work fills the queue to three
     * quarters and is refused from there, so an urgent request arriving
     * in the middle of it still finds room. */
    int limit = sched_queue_limit(s, r->cls);
    /* A request-level engine (a remote pool) takes a request as soon as a
     * seat is free, and a burst arrives faster than this thread admits it:
     * requests that free seats will take at once are not waiting, and are
     * not refused as if they were. */
    if (s->eng->info.request_level) {
        int free_slots = sched__running_limit(s) - atomic_load_explicit(&s->running_now, memory_order_relaxed);
        if (free_slots > 0)
            limit += free_slots;
    }
    int q = atomic_fetch_add_explicit(&s->n_queued, 1, memory_order_relaxed);
    if (q >= limit) {
        atomic_fetch_sub_explicit(&s->n_queued, 1, memory_order_relaxed);
        return lmd_err_set(err, LMD_EBUSY, "%d requests are already waiting", q);
    }
    /* The block table, sized for the whole request; the engine thread
     * frees it when the request finishes. */
    r->run.kv = (struct kv_seq){.cap = sched__blocks_needed(s, r), .salt = r->cache_salt};
    r->run.kv.blocks = r->block_table;
    r->run.own_table = !r->block_table;
    if (r->run.own_table)
        r->run.kv.blocks = malloc((size_t)r->run.kv.cap * sizeof *r->run.kv.blocks);
    if (!r->run.kv.blocks) {
        atomic_fetch_sub_explicit(&s->n_queued, 1, memory_order_relaxed);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for a block table");
    }
    sched_req_ref(r);
    struct sched_req *head = atomic_load_explicit(&s->inbox, memory_order_relaxed);
    do {
        r->run.next = head;
    } while (!atomic_compare_exchange_weak_explicit(&s->inbox, &head, r, memory_order_release, memory_order_relaxed));
    sched_wake(s);
    return 0;
}

void sched_req_cancel(struct sched *s, struct sched_req *r)
{
    atomic_store_explicit(&r->cancelled, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->cancel_gen, 1, memory_order_release);
    /* Wake an idle engine thread so a cancelled waiting request is dropped
     * now rather than at the next unrelated submit. */
    sched_wake(s);
}

void sched_stats(struct sched *s, struct sched_stats *out)
{
    memset(out, 0, sizeof *out);
    out->requests_total = atomic_load_explicit(&s->requests_total, memory_order_relaxed);
    out->prompt_tokens = atomic_load_explicit(&s->prompt_tokens, memory_order_relaxed);
    out->generated_tokens = atomic_load_explicit(&s->generated_tokens, memory_order_relaxed);
    out->steps = atomic_load_explicit(&s->steps, memory_order_relaxed);
    out->preemptions = atomic_load_explicit(&s->preemptions, memory_order_relaxed);
    out->deadline_refusals = atomic_load_explicit(&s->deadline_refusals, memory_order_relaxed);
    out->running = atomic_load_explicit(&s->running_now, memory_order_relaxed);
    out->waiting = atomic_load_explicit(&s->waiting_now, memory_order_relaxed);
    for (int c = 0; c < SCHED_MAX_CLASSES; c++)
        out->waiting_class[c] = atomic_load_explicit(&s->waiting_class[c], memory_order_relaxed);
    out->kv_blocks_free = atomic_load_explicit(&s->kv_free, memory_order_relaxed);
    out->kv_blocks_total = s->kv.cfg.n_blocks;
    out->kv_block_tokens = s->kv.cfg.block_tokens;
    out->kv_blocks_cached = atomic_load_explicit(&s->kv_cached, memory_order_relaxed);
    out->prefix_queries = atomic_load_explicit(&s->prefix_queries, memory_order_relaxed);
    out->prefix_hits = atomic_load_explicit(&s->prefix_hits, memory_order_relaxed);
    for (int t = 0; t < SCHED_MAX_TENANTS; t++)
        out->tenant_tokens[t] = (double)atomic_load_explicit(&s->tenant_tokens[t], memory_order_relaxed);
}

int sched_blocks_for(const struct sched *s, int n_tokens) { return kv_blocks_for(&s->kv, n_tokens); }

int sched_max_running(const struct sched *s) { return s->cfg.max_running; }

int sched_queue_limit(const struct sched *s, int cls)
{
    if (s->pol.kind == SCHED_POLICY_SLA && cls > 0 && s->pol.n_classes > 1)
        return s->cfg.max_queue - (s->cfg.max_queue + 3) / 4;
    return s->cfg.max_queue;
}

uint64_t sched_estimate_wait_ns(struct sched *s, int cls)
{
    if (cls < 0 || cls >= s->pol.n_classes)
        return 0;
    return sched__wait_estimate(s, cls);
}
