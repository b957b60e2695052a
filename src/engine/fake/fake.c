/*
 * The fake engine: a deterministic stand-in behind engine.h for tests of
 * the scheduler and the API without a model. It is not a mock of the
 * native engine's numbers; it is a tiny, exact "model" with real block
 * storage, so what the scheduler does with block tables shows in what it
 * returns.
 *
 * The "model": each stored position holds its token. The output after
 * positions [0, p] is peaked at target = h_p mod n_vocab, where h is a
 * chained hash over the tokens (h_{i+1} = mix(h_i ^ token_i)) read back
 * through the sequence's block table; logits fall off with the circular
 * distance from the target, so greedy picks the target and sampling has
 * something to sample. A wrongly shared or stale block changes the hash,
 * and so the output.
 *
 * Three flavours, chosen at open: logits out (the caller samples), tokens
 * out (the engine samples with each sequence's sampler — the same code and
 * so the same tokens as the caller would get), and request-level
 * (submit/poll/cancel; the tokens are the greedy ones of the same model).
 *
 * Not thread-safe, like every engine: one thread drives it.
 */
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAKE_H0 0x66616b652d6c6d64ull

struct fake_req {
    struct engine_req *rq; /* NULL = free slot */
    uint64_t h;            /* hash of prompt and output so far */
    int n_out;
    bool cancelled;
};

struct fake_engine {
    struct engine base; /* first: the engine is cast to this */
    struct engine_fake_config cfg;
    int32_t *store;  /* [kv_blocks][block_tokens] the token at each stored position */
    float *logits;   /* [max_seqs][n_vocab] */
    int32_t *tokens; /* [max_seqs] */
    struct sample_scratch sc;
    int rc, n_rows;
    struct lmd_err err;
    struct fake_req *reqs; /* [max_seqs] request-level slots */
};

static uint64_t fake_mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    x ^= x >> 33;
    return x;
}

static uint64_t fake_next_h(uint64_t h, int32_t tok) { return fake_mix(h ^ (uint64_t)(uint32_t)tok); }

static void fake_delay(const struct fake_engine *fe)
{
    if (!fe->cfg.step_delay_ns)
        return;
    struct timespec ts = {.tv_sec = (time_t)(fe->cfg.step_delay_ns / 1000000000ull),
                          .tv_nsec = (long)(fe->cfg.step_delay_ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

/* The logits row peaked at target. */
static void fake_row(float *row, int n_vocab, int32_t target)
{
    for (int v = 0; v < n_vocab; v++) {
        int d = abs(v - target);
        if (d > n_vocab - d)
            d = n_vocab - d;
        row[v] = -0.5f * (float)d;
    }
}

static int fake_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    const int bt = fe->cfg.kv_block_tokens, nv = fe->cfg.n_vocab;
    int total = 0;
    fe->rc = 0;
    fe->n_rows = 0;
    if (n_seqs > e->info.max_seqs)
        return lmd_err_set(err, LMD_EINVAL, "step: %d sequences exceed the engine's %d", n_seqs, e->info.max_seqs);
    /* Check everything before writing anything. */
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        if (s->pos < 0 || s->n_tokens <= 0 || s->pos > e->info.n_ctx - s->n_tokens)
            return lmd_err_set(err, LMD_EINVAL, "step: sequence %d: positions %d..%d outside the context of %d", i,
                               s->pos, s->pos + s->n_tokens - 1, e->info.n_ctx);
        total += s->n_tokens;
        for (int b = 0; b < (s->pos + s->n_tokens + bt - 1) / bt; b++)
            if (s->blocks[b] < 0 || s->blocks[b] >= e->info.kv_blocks)
                return lmd_err_set(err, LMD_EINVAL, "step: sequence %d: block %d of its table is %d (store of %d)", i,
                                   b, s->blocks[b], e->info.kv_blocks);
        for (int j = 0; j < s->n_tokens; j++)
            if (s->tokens[j] < 0 || s->tokens[j] >= nv)
                return lmd_err_set(err, LMD_EINVAL, "step: token id %d out of range (vocabulary %d)", s->tokens[j], nv);
        if (e->info.samples && s->want_logits && !s->smp)
            return lmd_err_set(err, LMD_EINVAL, "step: sequence %d wants a token but has no sampler", i);
    }
    if (total > e->info.max_batch_tokens)
        return lmd_err_set(err, LMD_EINVAL, "step: batch exceeds %d tokens per step", e->info.max_batch_tokens);
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        for (int j = 0; j < s->n_tokens; j++) {
            int p = s->pos + j;
            fe->store[(size_t)s->blocks[p / bt] * (size_t)bt + (size_t)(p % bt)] = s->tokens[j];
        }
        if (!s->want_logits)
            continue;
        uint64_t h = FAKE_H0;
        for (int p = 0; p < s->pos + s->n_tokens; p++)
            h = fake_next_h(h, fe->store[(size_t)s->blocks[p / bt] * (size_t)bt + (size_t)(p % bt)]);
        float *row = fe->logits + (size_t)fe->n_rows * (size_t)nv;
        fake_row(row, nv, (int32_t)(h % (uint64_t)nv));
        if (e->info.samples) {
            int32_t tok = sample_next(s->smp, &fe->sc, row, nv);
            sample_accept(s->smp, tok);
            if (s->n_logprobs >= 0)
                *s->out_lp = sample_logprobs(row, nv, tok, s->n_logprobs, s->n_logprobs ? s->out_top_id : NULL,
                                             s->n_logprobs ? s->out_top_lp : NULL);
            fe->tokens[fe->n_rows] = tok;
        }
        fe->n_rows++;
    }
    fake_delay(fe);
    return 0;
}

static int fake_wait(struct engine *e, struct engine_result *res, struct lmd_err *err)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    *res = (struct engine_result){.n_rows = fe->n_rows,
                                  .logits = e->info.samples ? NULL : fe->logits,
                                  .tokens = e->info.samples ? fe->tokens : NULL};
    return 0;
}

/* ---- request level ----------------------------------------------------------- */

static int fake_submit(struct engine *e, struct engine_req *rq, struct lmd_err *err)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    if (rq->n_prompt < 1 || rq->max_tokens < 1 || rq->n_prompt + rq->max_tokens > e->info.n_ctx)
        return lmd_err_set(err, LMD_EINVAL, "submit: %d prompt tokens and max_tokens %d do not fit %d", rq->n_prompt,
                           rq->max_tokens, e->info.n_ctx);
    for (int i = 0; i < e->info.max_seqs; i++) {
        struct fake_req *f = &fe->reqs[i];
        if (f->rq)
            continue;
        *f = (struct fake_req){.rq = rq, .h = FAKE_H0};
        for (int j = 0; j < rq->n_prompt; j++)
            f->h = fake_next_h(f->h, rq->prompt[j]);
        return 0;
    }
    return lmd_err_set(err, LMD_EBUSY, "submit: all %d request slots are taken", e->info.max_seqs);
}

/* One token per live request and poll; a finish event when one is done
 * or cancelled. */
static int fake_poll(struct engine *e, struct engine_event *ev, int max)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    const int nv = fe->cfg.n_vocab;
    int n = 0;
    bool produced = false;
    for (int i = 0; i < e->info.max_seqs && n + 2 <= max; i++) {
        struct fake_req *f = &fe->reqs[i];
        if (!f->rq)
            continue;
        if (!f->cancelled) {
            int32_t tok = (int32_t)(f->h % (uint64_t)nv);
            f->h = fake_next_h(f->h, tok);
            f->n_out++;
            ev[n++] = (struct engine_event){.req = f->rq, .kind = ENGINE_EV_TOKEN, .token = tok, .logprob = 0};
            produced = true;
        }
        if (f->cancelled || f->n_out == f->rq->max_tokens) {
            ev[n++] = (struct engine_event){.req = f->rq,
                                            .kind = ENGINE_EV_FINISH,
                                            .finish = f->cancelled ? ENGINE_FINISH_CANCELLED : ENGINE_FINISH_LENGTH,
                                            .prompt_tokens = f->rq->n_prompt,
                                            .completion_tokens = f->n_out};
            f->rq = NULL;
        }
    }
    if (produced)
        fake_delay(fe);
    return n;
}

static void fake_cancel(struct engine *e, struct engine_req *rq)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    for (int i = 0; i < e->info.max_seqs; i++)
        if (fe->reqs[i].rq == rq)
            fe->reqs[i].cancelled = true;
}

static void fake_close(struct engine *e)
{
    struct fake_engine *fe = (struct fake_engine *)e;
    free(fe->store);
    free(fe->logits);
    free(fe->tokens);
    free(fe->reqs);
    sample_scratch_free(&fe->sc);
    free(fe);
}

static const struct engine_ops fake_ops = {.launch = fake_launch,
                                           .wait = fake_wait,
                                           .submit = fake_submit,
                                           .poll = fake_poll,
                                           .cancel = fake_cancel,
                                           .close = fake_close};

int engine_fake_open(struct engine **out, const struct engine_fake_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    struct engine_fake_config c = *cfg;
    if (c.kv_block_tokens <= 0)
        c.kv_block_tokens = 16;
    if (c.n_vocab < 2 || c.n_ctx < 2 || c.max_seqs < 1 || c.max_batch_tokens < 1 || c.kv_blocks < 0)
        return lmd_err_set(err, LMD_EINVAL, "fake engine: bad sizes (vocabulary %d, ctx %d, sequences %d)", c.n_vocab,
                           c.n_ctx, c.max_seqs);
    if (!c.request_level && c.kv_blocks == 0)
        return lmd_err_set(err, LMD_EINVAL, "fake engine: a step-level engine needs block storage");
    struct fake_engine *fe = calloc(1, sizeof *fe);
    if (!fe)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    fe->base.ops = &fake_ops;
    fe->cfg = c;
    struct engine_info *in = &fe->base.info;
    *in = (struct engine_info){.kind = "fake",
                               .model_name = "fake",
                               .arch = "fake",
                               .n_vocab = c.n_vocab,
                               .n_ctx = c.n_ctx,
                               .max_batch_tokens = c.max_batch_tokens,
                               .max_seqs = c.max_seqs,
                               .n_threads = 1,
                               .kv_blocks = c.kv_blocks,
                               .kv_block_tokens = c.kv_blocks ? c.kv_block_tokens : 0,
                               .kv_block_bytes = c.kv_blocks ? (size_t)c.kv_block_tokens * sizeof(int32_t) : 0,
                               .token_budget = c.kv_blocks      ? 0
                                               : c.token_budget ? c.token_budget
                                                                : c.n_ctx * c.max_seqs,
                               .samples = c.samples,
                               .request_level = c.request_level};
    fe->store = calloc((size_t)(c.kv_blocks ? c.kv_blocks : 1) * (size_t)c.kv_block_tokens, sizeof *fe->store);
    fe->logits = malloc((size_t)c.max_seqs * (size_t)c.n_vocab * sizeof *fe->logits);
    fe->tokens = calloc((size_t)c.max_seqs, sizeof *fe->tokens);
    fe->reqs = calloc((size_t)c.max_seqs, sizeof *fe->reqs);
    int rc = 0;
    if (!fe->store || !fe->logits || !fe->tokens || !fe->reqs)
        rc = lmd_err_set(err, LMD_ENOMEM, "fake engine: out of memory");
    else
        rc = sample_scratch_init(&fe->sc, c.n_vocab, err);
    if (rc) {
        fake_close(&fe->base);
        return rc;
    }
    *out = &fe->base;
    return 0;
}
