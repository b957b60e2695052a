/*
 * The scheduler's engine thread: admit, form a ragged batch, forward,
 * sample, publish. See sched.h for the policy; this file is the loop.
 *
 * It is not a priority or deadline scheduler (service classes and
 * preemption come with qos/), and it never touches sockets or JSON.
 */
#include "sched/sched.h"

#include "core/log.h"
#include "tokenizer/tokenizer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sched {
    struct sched_config cfg;
    struct engine *eng;
    struct kv_cache *kv;
    pthread_t thread;

    /* The waiting queue: the only state shared with other threads. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct sched_req *head, *tail;
    int n_waiting;
    bool stopping;

    /* Engine thread only. */
    struct sched_req **running; /* [max_running], FCFS order; NULL = finished this step */
    int n_running;
    struct engine_seq *batch;   /* [max_running] step scratch */
    struct sched_req **breq;    /* [max_running] the request of batch[i] */
    int *brow;                  /* [max_running] logits row of batch[i], -1 = none */
    struct sample_scratch scratch;

    /* Published counters. */
    _Atomic uint64_t requests_total, prompt_tokens, generated_tokens, steps;
    _Atomic int running_now, waiting_now, kv_free;
};

void sched_req_init(struct sched_req *r)
{
    atomic_init(&r->n_out, 0);
    atomic_init(&r->finish, SCHED_RUNNING);
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancelled, false);
    r->err[0] = '\0';
    r->next = NULL;
    memset(&r->kv, 0, sizeof r->kv);
    memset(&r->smp, 0, sizeof r->smp);
    r->n_fed = r->pos = 0;
    r->last_tok = -1;
    r->n_logprobs = -1;
    r->out_lp = NULL;
    r->out_top_id = NULL;
    r->out_top_lp = NULL;
}

void sched_req_ref(struct sched_req *r) { atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed); }

void sched_req_unref(struct sched_req *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        r->release(r);
}

/* Engine thread: end r, return its blocks, publish the reason, wake its
 * owner and drop the scheduler's reference. */
static void sched_finish(struct sched *s, struct sched_req *r, enum sched_finish why)
{
    if (r->kv.blocks) {
        kv_seq_release(s->kv, &r->kv);
        free(r->kv.blocks);
        r->kv.blocks = NULL;
    }
    sample_free(&r->smp);
    atomic_store_explicit(&r->finish, (int)why, memory_order_release);
    atomic_fetch_add_explicit(&s->requests_total, 1, memory_order_relaxed);
    atomic_store_explicit(&s->kv_free, kv_free_blocks(s->kv), memory_order_relaxed);
    r->notify(r);
    sched_req_unref(r);
}

static void sched_fail(struct sched *s, struct sched_req *r, const char *msg)
{
    snprintf(r->err, sizeof r->err, "%s", msg);
    sched_finish(s, r, SCHED_FINISH_ERROR);
}

static int blocks_needed(const struct sched *s, const struct sched_req *r)
{
    return kv_blocks_for(s->kv, r->n_prompt + r->max_tokens);
}

/* Engine thread, outside the lock: give an admitted request its blocks and
 * its sampler. Blocks were counted under the lock, so the reserve cannot
 * fail for lack of them. */
static bool sched_setup(struct sched *s, struct sched_req *r)
{
    struct lmd_err err = {0};
    int need = blocks_needed(s, r);
    r->kv.blocks = malloc((size_t)need * sizeof *r->kv.blocks);
    r->kv.cap = need;
    r->kv.n_blocks = 0;
    if (!r->kv.blocks) {
        sched_fail(s, r, "out of memory for the block table");
        return false;
    }
    int rc = kv_seq_reserve(s->kv, &r->kv, r->n_prompt + r->max_tokens);
    LMD_ASSERT(rc == 0, "sched: blocks counted at admission are missing");
    if (sample_init(&r->smp, &r->sp, r->n_prompt + r->max_tokens, &err) != 0) {
        sched_fail(s, r, err.msg);
        return false;
    }
    sample_accept_prompt(&r->smp, r->prompt, r->n_prompt);
    return true;
}

/* Under the lock: move waiting requests into the running set, FCFS, while
 * the running limit and the free blocks allow. Returns the admitted ones
 * and the ones cancelled while waiting as two lists, to be set up or
 * finished after the lock is released. */
static void sched_admit_locked(struct sched *s, struct sched_req **admitted, struct sched_req **dropped)
{
    int free_blocks = kv_free_blocks(s->kv);
    int slots = s->cfg.max_running - s->n_running;
    struct sched_req **at = admitted, **dt = dropped;
    while (s->head) {
        struct sched_req *r = s->head;
        bool cancel = atomic_load_explicit(&r->cancelled, memory_order_relaxed);
        if (!cancel) {
            if (slots == 0 || blocks_needed(s, r) > free_blocks)
                break; /* the head waits; nobody overtakes it */
            free_blocks -= blocks_needed(s, r);
            slots--;
        }
        s->head = r->next;
        if (!s->head)
            s->tail = NULL;
        s->n_waiting--;
        r->next = NULL;
        if (cancel) {
            *dt = r;
            dt = &r->next;
        } else {
            *at = r;
            at = &r->next;
        }
    }
    *at = NULL;
    *dt = NULL;
    atomic_store_explicit(&s->waiting_now, s->n_waiting, memory_order_relaxed);
}

/* Remove the finished (NULL) slots, keeping FCFS order. */
static void sched_compact(struct sched *s)
{
    int k = 0;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i])
            s->running[k++] = s->running[i];
    s->n_running = k;
    atomic_store_explicit(&s->running_now, k, memory_order_relaxed);
}

/* One engine step over the running set. */
static void sched_step(struct sched *s)
{
    const int n_vocab = s->eng->info.n_vocab;

    /* Cancelled requests leave before the batch is formed, so their blocks
     * are back in the free list for the next admission. */
    for (int i = 0; i < s->n_running; i++) {
        if (atomic_load_explicit(&s->running[i]->cancelled, memory_order_relaxed)) {
            sched_finish(s, s->running[i], SCHED_FINISH_CANCELLED);
            s->running[i] = NULL;
        }
    }
    sched_compact(s);
    if (s->n_running == 0)
        return;

    /* Batch: every decoding sequence's one token first (they are the ones
     * a user is watching), then prompt chunks in arrival order with what is
     * left of the token budget, so a long prompt never stalls decodes. */
    int budget = s->eng->info.max_batch_tokens;
    int nb = 0, nrow = 0;
    for (int i = 0; i < s->n_running; i++) {
        struct sched_req *r = s->running[i];
        if (r->n_fed < r->n_prompt)
            continue;
        s->batch[nb] = (struct engine_seq){
            .tokens = &r->last_tok, .n_tokens = 1, .pos = r->pos, .blocks = r->kv.blocks, .want_logits = true};
        s->breq[nb] = r;
        s->brow[nb++] = nrow++;
        budget--;
    }
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        struct sched_req *r = s->running[i];
        if (r->n_fed >= r->n_prompt)
            continue;
        int n = r->n_prompt - r->n_fed;
        if (n > budget)
            n = budget;
        bool last = r->n_fed + n == r->n_prompt;
        s->batch[nb] = (struct engine_seq){
            .tokens = r->prompt + r->n_fed, .n_tokens = n, .pos = r->n_fed, .blocks = r->kv.blocks, .want_logits = last};
        s->breq[nb] = r;
        s->brow[nb++] = last ? nrow++ : -1;
        budget -= n;
    }

    const float *logits = NULL;
    struct lmd_err err = {0};
    if (engine_step(s->eng, s->batch, nb, &logits, &err) != 0) {
        LMD_ERROR("sched: engine step failed: %s", err.msg);
        for (int k = 0; k < nb; k++) {
            for (int i = 0; i < s->n_running; i++) {
                if (s->running[i] == s->breq[k]) {
                    sched_fail(s, s->breq[k], err.msg);
                    s->running[i] = NULL;
                }
            }
        }
        sched_compact(s);
        return;
    }
    atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);

    /* Advance positions, sample, publish. The logits buffer is the
     * engine's until the next step; sampling edits its rows in place. */
    for (int k = 0; k < nb; k++) {
        struct sched_req *r = s->breq[k];
        if (r->n_fed < r->n_prompt) {
            r->n_fed += s->batch[k].n_tokens;
            atomic_fetch_add_explicit(&s->prompt_tokens, (uint64_t)s->batch[k].n_tokens, memory_order_relaxed);
            if (s->brow[k] < 0)
                continue;
            r->pos = r->n_prompt;
        } else {
            r->pos++;
        }
        float *row = (float *)logits + (size_t)s->brow[k] * (size_t)n_vocab;
        int32_t tok = sample_next(&r->smp, &s->scratch, row, n_vocab);
        sample_accept(&r->smp, tok);
        atomic_fetch_add_explicit(&s->generated_tokens, 1, memory_order_relaxed);
        enum sched_finish why = SCHED_RUNNING;
        if (!r->ignore_eos && tok_is_eog(s->cfg.vocab, tok)) {
            why = SCHED_FINISH_STOP;
        } else {
            int n = atomic_load_explicit(&r->n_out, memory_order_relaxed);
            r->out[n] = tok;
            if (r->n_logprobs >= 0) {
                int nt = r->n_logprobs;
                r->out_lp[n] = sample_logprobs(row, n_vocab, tok, nt, nt ? r->out_top_id + (size_t)n * nt : NULL,
                                               nt ? r->out_top_lp + (size_t)n * nt : NULL);
            }
            atomic_store_explicit(&r->n_out, n + 1, memory_order_release);
            r->last_tok = tok;
            if (n + 1 == r->max_tokens)
                why = SCHED_FINISH_LENGTH;
        }
        if (why == SCHED_RUNNING) {
            r->notify(r);
            continue;
        }
        for (int i = 0; i < s->n_running; i++)
            if (s->running[i] == r)
                s->running[i] = NULL;
        sched_finish(s, r, why);
    }
    sched_compact(s);
    atomic_store_explicit(&s->kv_free, kv_free_blocks(s->kv), memory_order_relaxed);
}

static void *sched_main(void *arg)
{
    struct sched *s = arg;
    for (;;) {
        struct sched_req *admitted, *dropped;
        pthread_mutex_lock(&s->mu);
        while (!s->stopping && !s->head && s->n_running == 0)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        sched_admit_locked(s, &admitted, &dropped);
        pthread_mutex_unlock(&s->mu);

        for (struct sched_req *r = dropped, *nx; r; r = nx) {
            nx = r->next;
            sched_finish(s, r, SCHED_FINISH_CANCELLED);
        }
        for (struct sched_req *r = admitted, *nx; r; r = nx) {
            nx = r->next;
            r->next = NULL;
            if (sched_setup(s, r))
                s->running[s->n_running++] = r;
        }
        atomic_store_explicit(&s->running_now, s->n_running, memory_order_relaxed);
        sched_step(s);
    }

    /* Stopping: whatever is left ends as cancelled. */
    for (int i = 0; i < s->n_running; i++)
        sched_finish(s, s->running[i], SCHED_FINISH_CANCELLED);
    s->n_running = 0;
    pthread_mutex_lock(&s->mu);
    struct sched_req *rest = s->head;
    s->head = s->tail = NULL;
    s->n_waiting = 0;
    pthread_mutex_unlock(&s->mu);
    for (struct sched_req *r = rest, *nx; r; r = nx) {
        nx = r->next;
        sched_finish(s, r, SCHED_FINISH_CANCELLED);
    }
    return NULL;
}

int sched_start(struct sched **out, struct engine *eng, const struct sched_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    if (!eng->info.kv)
        return lmd_err_set(err, LMD_ENOTSUP, "sched: the engine has no local KV cache");
    if (cfg->max_running < 1 || cfg->max_running > eng->info.max_seqs || cfg->max_queue < 0)
        return lmd_err_set(err, LMD_EINVAL, "sched: max_running %d must be in [1, %d] (the engine's sequences)",
                           cfg->max_running, eng->info.max_seqs);
    if (eng->info.max_batch_tokens < cfg->max_running)
        return lmd_err_set(err, LMD_EINVAL, "sched: a step of %d tokens cannot decode %d sequences",
                           eng->info.max_batch_tokens, cfg->max_running);
    struct sched *s = calloc(1, sizeof *s);
    if (!s)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->eng = eng;
    s->kv = eng->info.kv;
    size_t n = (size_t)cfg->max_running;
    s->running = calloc(n, sizeof *s->running);
    s->batch = calloc(n, sizeof *s->batch);
    s->breq = calloc(n, sizeof *s->breq);
    s->brow = calloc(n, sizeof *s->brow);
    int rc = 0;
    if (!s->running || !s->batch || !s->breq || !s->brow)
        rc = lmd_err_set(err, LMD_ENOMEM, "out of memory");
    else
        rc = sample_scratch_init(&s->scratch, eng->info.n_vocab, err);
    if (rc) {
        sample_scratch_free(&s->scratch);
        free(s->running), free(s->batch), free(s->breq), free(s->brow), free(s);
        return rc;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    atomic_init(&s->kv_free, kv_free_blocks(s->kv));
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        sample_scratch_free(&s->scratch);
        free(s->running), free(s->batch), free(s->breq), free(s->brow), free(s);
        return lmd_err_set(err, LMD_ENOMEM, "sched: cannot start the engine thread");
    }
    *out = s;
    return 0;
}

void sched_stop(struct sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    sample_scratch_free(&s->scratch);
    free(s->running);
    free(s->batch);
    free(s->breq);
    free(s->brow);
    free(s);
}

int sched_submit(struct sched *s, struct sched_req *r, struct lmd_err *err)
{
    const int ctx = s->eng->info.n_ctx;
    if (r->n_prompt < 1 || r->max_tokens < 1)
        return lmd_err_set(err, LMD_EINVAL, "a request needs at least one prompt token and max_tokens >= 1");
    if (r->n_prompt + r->max_tokens > ctx)
        return lmd_err_set(err, LMD_ERANGE, "%d prompt tokens + %d max_tokens exceed the context of %d tokens",
                           r->n_prompt, r->max_tokens, ctx);
    if (blocks_needed(s, r) > s->kv->cfg.n_blocks)
        return lmd_err_set(err, LMD_ERANGE, "%d tokens need %d KV blocks; the cache has %d", r->n_prompt + r->max_tokens,
                           blocks_needed(s, r), s->kv->cfg.n_blocks);
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        rc = lmd_err_set(err, LMD_ECANCELED, "the server is shutting down");
    } else if (s->n_waiting >= s->cfg.max_queue) {
        rc = lmd_err_set(err, LMD_EBUSY, "%d requests are already waiting", s->n_waiting);
    } else {
        sched_req_ref(r);
        r->next = NULL;
        if (s->tail)
            s->tail->next = r;
        else
            s->head = r;
        s->tail = r;
        s->n_waiting++;
        atomic_store_explicit(&s->waiting_now, s->n_waiting, memory_order_relaxed);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void sched_req_cancel(struct sched *s, struct sched_req *r)
{
    atomic_store_explicit(&r->cancelled, true, memory_order_relaxed);
    /* Wake an idle engine thread so a cancelled waiting request is dropped
     * now rather than at the next unrelated submit. */
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_stats(struct sched *s, struct sched_stats *out)
{
    out->requests_total = atomic_load_explicit(&s->requests_total, memory_order_relaxed);
    out->prompt_tokens = atomic_load_explicit(&s->prompt_tokens, memory_order_relaxed);
    out->generated_tokens = atomic_load_explicit(&s->generated_tokens, memory_order_relaxed);
    out->steps = atomic_load_explicit(&s->steps, memory_order_relaxed);
    out->running = atomic_load_explicit(&s->running_now, memory_order_relaxed);
    out->waiting = atomic_load_explicit(&s->waiting_now, memory_order_relaxed);
    out->kv_blocks_free = atomic_load_explicit(&s->kv_free, memory_order_relaxed);
    out->kv_blocks_total = s->kv->cfg.n_blocks;
}
