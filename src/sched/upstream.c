/*
 * The scheduler's side of request-level engines (engine.h): engines that
 * batch on their own, such as an HTTP upstream. Admission, classes, fair
 * share and the queue limits are the same as for step-level engines (the
 * loop in sched.c admits into the running set, within the engine's
 * concurrency and token budget); here an admitted request is handed over
 * whole, its tokens are published as the engine streams them, and its
 * engine's finish event ends it. Preemption does not apply: a request in
 * an upstream cannot be paused.
 *
 * Output comes as token ids (written to out[] as for step-level engines)
 * or as text (an upstream that streams text: handed to the owner's
 * on_text, each piece counted as one output token until the engine's
 * usage gives the real count at the finish).
 *
 * Not here: the HTTP client of a remote engine (engine/remote).
 */
#include "sched/sched_int.h"

#include "core/time.h"
#include "obs/obs.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static struct sched_req *req_of(struct engine_req *rq)
{
    return (struct sched_req *)((char *)rq - offsetof(struct sched_req, run.ereq));
}

void sched__cancel_request(struct sched *s, struct sched_req *r)
{
    if (r->run.cancel_sent)
        return;
    r->run.cancel_sent = true;
    engine_cancel(s->eng, &r->run.ereq);
}

/* Hand every newly admitted request to the engine. */
static void sched_submit_admitted(struct sched *s)
{
    for (int i = 0; i < s->n_running; i++) {
        struct sched_req *r = s->running[i];
        if (!r || r->run.submitted)
            continue;
        if (s->eng->info.takes_api && !r->api_json) {
            sched__fail(s, r, "this engine forwards API requests; the request carries none");
            continue;
        }
        if (r->n_logprobs > 0) {
            sched__fail(s, r,
                        "this engine gives the chosen token's log-probability only, not the most likely "
                        "alternatives");
            continue;
        }
        r->run.ereq = (struct engine_req){.id = r->id,
                                          .prompt = r->prompt,
                                          .n_prompt = r->n_prompt,
                                          .max_tokens = r->max_tokens,
                                          .sp = &r->sp,
                                          .ignore_eos = r->ignore_eos,
                                          .n_logprobs = r->n_logprobs,
                                          .api_path = r->api_path,
                                          .api_json = r->api_json,
                                          .api_body = r->api_body,
                                          .api_body_len = r->api_body_len,
                                          /* Retries stop at the deadline only where
                                           * the class refuses late work; elsewhere
                                           * a late answer beats an error. */
                                          .deadline_ns = s->pol.cls[r->cls].refuse_late ? r->t_deadline_ns : 0};
        struct lmd_err err = {0};
        if (engine_submit(s->eng, &r->run.ereq, &err) != 0) {
            sched__fail(s, r, err.msg);
            continue;
        }
        r->run.submitted = true;
        r->run.n_fed = r->run.n_fill;
        atomic_fetch_add_explicit(&s->prompt_tokens, (uint64_t)r->n_prompt, memory_order_relaxed);
        obs_count(OBS_C_PROMPT_TOKENS, (uint64_t)r->n_prompt);
    }
    sched__running_compact(s);
}

/* One piece of streamed text: to the owner, counted as one output token
 * (fair share, metrics, the first-token stamp) until usage says better. */
static void sched_emit_text(struct sched *s, struct sched_req *r, const char *text, size_t len, uint64_t now)
{
    if (len == 0)
        return;
    r->on_text(r, text, len);
    int n = atomic_load_explicit(&r->n_out, memory_order_relaxed);
    sched__charge(&s->pol, r->tenant, 1);
    atomic_fetch_add_explicit(&s->tenant_tokens[r->tenant], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->generated_tokens, 1, memory_order_relaxed);
    atomic_store_explicit(&r->state, SCHED_ST_DECODE, memory_order_relaxed);
    sched__output_stamps(r, now);
    atomic_store_explicit(&r->n_out, n + 1, memory_order_release);
    r->notify(r);
}

static enum sched_finish finish_of(enum engine_finish f)
{
    switch (f) {
    case ENGINE_FINISH_STOP:
        return SCHED_FINISH_STOP;
    case ENGINE_FINISH_LENGTH:
        return SCHED_FINISH_LENGTH;
    case ENGINE_FINISH_CANCELLED:
        return SCHED_FINISH_CANCELLED;
    default:
        return SCHED_FINISH_ERROR;
    }
}

int sched__step_requests(struct sched *s)
{
    sched_submit_admitted(s);
    int n = engine_poll(s->eng, s->events, 2 * s->cfg.max_running);
    uint64_t now = lmd_time_mono_ns();
    for (int i = 0; i < n; i++) {
        const struct engine_event *ev = &s->events[i];
        struct sched_req *r = req_of(ev->req);
        switch (ev->kind) {
        case ENGINE_EV_TOKEN: {
            if (r->run.cancel_sent)
                break; /* cancelled or failed: what still streams in is dropped */
            int k = atomic_load_explicit(&r->n_out, memory_order_relaxed);
            if (r->n_logprobs >= 0 && k < r->max_tokens)
                r->out_lp[k] = ev->logprob;
            sched__charge(&s->pol, r->tenant, 1);
            atomic_fetch_add_explicit(&s->tenant_tokens[r->tenant], 1, memory_order_relaxed);
            atomic_store_explicit(&r->state, SCHED_ST_DECODE, memory_order_relaxed);
            sched__emit(s, r, ev->token, NULL, now);
            break;
        }
        case ENGINE_EV_TEXT:
            if (r->run.cancel_sent)
                break;
            if (!r->on_text) {
                snprintf(r->err, sizeof r->err, "engine %s streamed text without token ids", s->eng->info.kind);
                r->run.failed = true;
                sched__cancel_request(s, r);
                break;
            }
            sched_emit_text(s, r, ev->text, ev->text_len, now);
            break;
        case ENGINE_EV_FINISH:
            r->run.submitted = false;
            r->usage_prompt = ev->prompt_tokens;
            r->usage_completion = ev->completion_tokens;
            if (r->run.failed || ev->finish == ENGINE_FINISH_ERROR) {
                if (!r->run.failed) {
                    snprintf(r->err, sizeof r->err, "%s", ev->err);
                    r->err_status = ev->status;
                }
                sched__finish(s, r, SCHED_FINISH_ERROR);
            } else {
                enum sched_finish why = finish_of(ev->finish);
                /* Cancelled by the scheduler's own stop, not by its owner:
                 * the answer is cut, and the owner must be able to tell. */
                if (why == SCHED_FINISH_CANCELLED && atomic_load(&s->stopping) &&
                    !atomic_load_explicit(&r->cancelled, memory_order_relaxed))
                    why = SCHED_FINISH_SHUTDOWN;
                sched__finish(s, r, why);
            }
            break;
        }
    }
    sched__running_compact(s);
    if (n > 0)
        atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
    return n;
}
