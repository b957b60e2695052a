/*
 * The scheduler over the fake engine (engine/fake), without a model: the
 * engine interface's three contracts — logits out, tokens sampled inside
 * the engine, whole requests — under the same admission and classes.
 * Batched equals alone; an engine that samples gives exactly the tokens
 * and log-probabilities the scheduler would sample from its logits; the
 * prefix cache shares blocks correctly (the fake engine derives its output
 * from the tokens its block tables hold, so a wrongly shared block shows);
 * a preempted request resumes to the same output; a request-level engine
 * gets work by class, streams the same greedy tokens, is cancelled
 * cleanly, and its token budget refuses what can never fit. Also the
 * engine wrappers' contract checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "gguf/gguf.h"
#include "sample/grammar.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#define NV 97

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

struct treq {
    struct sched_req r;
    int32_t prompt[80];
    int32_t out[64];
    float lp[64], top_lp[64 * 4];
    int32_t top_id[64 * 4];
    int released;
};

static void t_notify(struct sched_req *r)
{
    (void)r;
    pthread_mutex_lock(&mu);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void t_release(struct sched_req *r) { ((struct treq *)r)->released = 1; }

static void t_wait_finish(struct treq *t)
{
    pthread_mutex_lock(&mu);
    while (atomic_load(&t->r.finish) == SCHED_RUNNING)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void t_wait_tokens(struct treq *t, int n)
{
    pthread_mutex_lock(&mu);
    while (atomic_load(&t->r.n_out) < n && atomic_load(&t->r.finish) == SCHED_RUNNING)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

/* A prompt of n tokens from seed; max_tokens new ones, greedy. */
static void t_init(struct treq *t, int seed, int n, int max_tokens)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < n; i++)
        t->prompt[i] = (seed * 31 + i * 7) % NV;
    sched_req_init(&t->r);
    t->r.prompt = t->prompt;
    t->r.n_prompt = n;
    t->r.max_tokens = max_tokens;
    sample_params_default(&t->r.sp);
    t->r.sp.temperature = 0;
    t->r.ignore_eos = true;
    t->r.out = t->out;
    t->r.notify = t_notify;
    t->r.release = t_release;
}

static void t_logprobs(struct treq *t, int n)
{
    t->r.n_logprobs = n;
    t->r.out_lp = t->lp;
    t->r.out_top_id = t->top_id;
    t->r.out_top_lp = t->top_lp;
}

static uint64_t fake_delay_ns; /* per step or poll */
static int fake_token_budget;  /* request-level: 0 = n_ctx x max_seqs */

static struct engine *fake(bool samples, bool request_level, int max_seqs, int kv_blocks)
{
    struct engine *e = NULL;
    struct lmd_err err = {0};
    struct engine_fake_config c = {.n_vocab = NV,
                                   .n_ctx = 256,
                                   .max_batch_tokens = 8,
                                   .max_seqs = max_seqs,
                                   .kv_blocks = kv_blocks,
                                   .kv_block_tokens = 4,
                                   .samples = samples,
                                   .request_level = request_level,
                                   .step_delay_ns = fake_delay_ns,
                                   .token_budget = fake_token_budget};
    if (engine_fake_open(&e, &c, &err) != 0)
        fail_msg("%s", err.msg);
    return e;
}

static struct sched *start(struct engine *e, const struct sched_config *base)
{
    struct sched *s = NULL;
    struct lmd_err err = {0};
    if (sched_start(&s, e, base, &err) != 0)
        fail_msg("%s", err.msg);
    return s;
}

static void submit(struct sched *s, struct treq *t)
{
    struct lmd_err err = {0};
    if (sched_submit(s, &t->r, &err) != 0)
        fail_msg("%s", err.msg);
}

static void run_alone(struct sched *s, struct treq *t)
{
    submit(s, t);
    t_wait_finish(t);
}

/* No block held. (kv_blocks_free is published before an owner is told its
 * request finished; the running count only at the next loop, so it is not
 * checked.) */
static void check_counts(struct sched *s)
{
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
}

static void test_batched_equals_alone(void **state)
{
    (void)state;
    struct engine *e = fake(false, false, 4, 64);
    struct sched_config sc = {.max_running = 4, .max_queue = 8};
    struct sched *s = start(e, &sc);
    static struct treq alone[4], together[4];
    for (int i = 0; i < 4; i++) {
        t_init(&alone[i], i, 5 + 6 * i, 12);
        run_alone(s, &alone[i]);
        assert_int_equal(atomic_load(&alone[i].r.finish), SCHED_FINISH_LENGTH);
    }
    for (int i = 0; i < 4; i++) {
        t_init(&together[i], i, 5 + 6 * i, 12);
        submit(s, &together[i]);
    }
    for (int i = 0; i < 4; i++) {
        t_wait_finish(&together[i]);
        assert_int_equal(atomic_load(&together[i].r.n_out), 12);
        assert_memory_equal(alone[i].out, together[i].out, sizeof alone[i].out);
    }
    /* Different prompts give different outputs (the test can fail). */
    assert_memory_not_equal(alone[0].out, alone[1].out, 12 * sizeof(int32_t));
    check_counts(s);
    sched_stop(s);
    for (int i = 0; i < 4; i++) {
        sched_req_unref(&alone[i].r);
        sched_req_unref(&together[i].r);
        assert_true(alone[i].released && together[i].released);
    }
    engine_close(e);
}

/* Sampling with temperature, top-k, penalties and a seed, with
 * log-probabilities: inside the engine or in the scheduler, the same. */
static void test_engine_samples_same_as_scheduler(void **state)
{
    (void)state;
    static struct treq a[3], b[3];
    struct engine *le = fake(false, false, 4, 64), *se = fake(true, false, 4, 64);
    assert_false(le->info.samples);
    assert_true(se->info.samples);
    struct sched_config sc = {.max_running = 4, .max_queue = 8};
    struct sched *ls = start(le, &sc), *ss = start(se, &sc);
    for (int i = 0; i < 3; i++) {
        struct treq *ts[2] = {&a[i], &b[i]};
        for (int k = 0; k < 2; k++) {
            t_init(ts[k], 10 + i, 9 + i, 20);
            ts[k]->r.sp.temperature = 0.8f;
            ts[k]->r.sp.top_k = 5;
            ts[k]->r.sp.frequency_penalty = 0.5f;
            ts[k]->r.sp.seed = 1234 + (uint64_t)i;
            t_logprobs(ts[k], i); /* 0, 1 and 2 alternatives */
            submit(k ? ss : ls, ts[k]);
        }
    }
    for (int i = 0; i < 3; i++) {
        t_wait_finish(&a[i]);
        t_wait_finish(&b[i]);
        assert_int_equal(atomic_load(&a[i].r.n_out), 20);
        assert_int_equal(atomic_load(&b[i].r.n_out), 20);
        assert_memory_equal(a[i].out, b[i].out, 20 * sizeof(int32_t));
        assert_memory_equal(a[i].lp, b[i].lp, 20 * sizeof(float));
        assert_memory_equal(a[i].top_id, b[i].top_id, (size_t)20 * i * sizeof(int32_t));
        assert_memory_equal(a[i].top_lp, b[i].top_lp, (size_t)20 * i * sizeof(float));
        assert_true(a[i].lp[0] < 0);
    }
    check_counts(ls);
    check_counts(ss);
    sched_stop(ls);
    sched_stop(ss);
    for (int i = 0; i < 3; i++) {
        sched_req_unref(&a[i].r);
        sched_req_unref(&b[i].r);
    }
    engine_close(le);
    engine_close(se);
}

static void test_prefix_cache_shares_correctly(void **state)
{
    (void)state;
    static struct treq off, first, second, fork, other;
    struct engine *e = fake(false, false, 4, 64);
    struct sched_config sc = {.max_running = 4, .max_queue = 8, .no_prefix_cache = true};
    struct sched *s = start(e, &sc);
    t_init(&off, 3, 30, 10);
    run_alone(s, &off);
    sched_stop(s);

    sc.no_prefix_cache = false;
    s = start(e, &sc);
    t_init(&first, 3, 30, 10);
    run_alone(s, &first);
    t_init(&second, 3, 30, 10);
    run_alone(s, &second);
    /* Same first 20 tokens, then different: 5 blocks of 4 are shared. */
    t_init(&fork, 3, 30, 10);
    for (int i = 20; i < 30; i++)
        fork.prompt[i] = (fork.prompt[i] + 1) % NV;
    run_alone(s, &fork);
    t_init(&other, 3, 30, 10);
    other.r.cache_salt = 99;
    run_alone(s, &other);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.prefix_queries, 4 * 30);
    assert_int_equal(st.prefix_hits, 28 + 20); /* second: 7 of its (30-1)/4 blocks; fork: 5 */
    assert_int_equal(st.prompt_tokens, 4 * 30 - 48);
    assert_memory_equal(off.out, first.out, 10 * sizeof(int32_t));
    assert_memory_equal(off.out, second.out, 10 * sizeof(int32_t));
    assert_memory_equal(off.out, other.out, 10 * sizeof(int32_t));
    assert_memory_not_equal(off.out, fork.out, 10 * sizeof(int32_t));
    check_counts(s);
    sched_stop(s);
    sched_req_unref(&off.r);
    sched_req_unref(&first.r);
    sched_req_unref(&second.r);
    sched_req_unref(&fork.r);
    sched_req_unref(&other.r);
    engine_close(e);
}

static const struct sched_class two_classes[2] = {
    {.name = "urgent", .ttft_ns = 1},
    {.name = "best_effort"},
};

/* A best_effort request decoding in the one slot is preempted by an
 * urgent one and resumes — recomputing only what the prefix cache no
 * longer holds — to the output it has alone. */
static void test_preempt_resume(void **state)
{
    (void)state;
    static struct treq alone, a, u;
    fake_delay_ns = 1000000; /* so that a still decodes when u arrives */
    struct engine *e = fake(false, false, 1, 64);
    fake_delay_ns = 0;
    struct sched_config sc = {
        .max_running = 1, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = two_classes, .n_classes = 2};
    struct sched *s = start(e, &sc);
    t_init(&alone, 5, 11, 40);
    alone.r.cls = 1;
    run_alone(s, &alone);
    t_init(&a, 5, 11, 40);
    a.r.cls = 1;
    submit(s, &a);
    t_wait_tokens(&a, 6);
    t_init(&u, 6, 7, 8);
    submit(s, &u);
    t_wait_finish(&u);
    t_wait_finish(&a);
    assert_true(a.r.n_preempted >= 1);
    assert_memory_equal(alone.out, a.out, 40 * sizeof(int32_t));
    check_counts(s);
    sched_stop(s);
    sched_req_unref(&alone.r);
    sched_req_unref(&a.r);
    sched_req_unref(&u.r);
    engine_close(e);
}

static void test_request_level(void **state)
{
    (void)state;
    static struct treq ref, blocker, late_be, urgent, cancel, big, top;
    /* The truth: the step-level fake's greedy tokens. */
    struct engine *se = fake(false, false, 2, 64);
    struct sched_config sc = {.max_running = 2, .max_queue = 8};
    struct sched *s = start(se, &sc);
    t_init(&ref, 8, 13, 16);
    run_alone(s, &ref);
    sched_stop(s);
    engine_close(se);

    fake_delay_ns = 2000000; /* so the first request still runs when the others arrive */
    fake_token_budget = 100;
    struct engine *e = fake(false, true, 1, 0);
    fake_delay_ns = 0;
    fake_token_budget = 0;
    assert_true(e->info.request_level && e->info.kv_blocks == 0 && e->info.token_budget == 100);
    struct sched_config rc = {
        .max_running = 1, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = two_classes, .n_classes = 2};
    s = start(e, &rc);
    /* One slot: a long best_effort request holds it; then a best_effort and
     * an urgent one queue; the urgent one goes next (no preemption). */
    t_init(&blocker, 1, 5, 60);
    blocker.r.cls = 1;
    submit(s, &blocker);
    t_wait_tokens(&blocker, 1);
    t_init(&late_be, 8, 13, 16);
    late_be.r.cls = 1;
    submit(s, &late_be);
    t_init(&urgent, 8, 13, 16);
    urgent.r.cls = 0;
    t_logprobs(&urgent, 0);
    submit(s, &urgent);
    t_wait_finish(&blocker);
    t_wait_finish(&urgent);
    t_wait_finish(&late_be);
    assert_int_equal(blocker.r.n_preempted, 0);
    assert_int_equal(atomic_load(&blocker.r.finish), SCHED_FINISH_LENGTH);
    assert_true(urgent.r.t_admit_ns < late_be.r.t_admit_ns);
    assert_int_equal(atomic_load(&urgent.r.n_out), 16);
    assert_memory_equal(urgent.out, ref.out, 16 * sizeof(int32_t));
    assert_memory_equal(late_be.out, ref.out, 16 * sizeof(int32_t));

    /* Cancelled mid-stream: the engine confirms, the request ends cancelled. */
    t_init(&cancel, 2, 5, 60);
    submit(s, &cancel);
    t_wait_tokens(&cancel, 3);
    sched_req_cancel(s, &cancel.r);
    t_wait_finish(&cancel);
    assert_int_equal(atomic_load(&cancel.r.finish), SCHED_FINISH_CANCELLED);
    assert_true(atomic_load(&cancel.r.n_out) < 60);

    /* The token budget refuses what can never fit, as blocks do. */
    struct lmd_err err = {0};
    t_init(&big, 2, 5, 60);
    big.r.max_tokens = 96;
    assert_int_equal(sched_submit(s, &big.r, &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "token budget of 100"));
    /* Alternatives are not something this engine gives: a precise error. */
    t_init(&top, 2, 5, 4);
    t_logprobs(&top, 2);
    submit(s, &top);
    t_wait_finish(&top);
    assert_int_equal(atomic_load(&top.r.finish), SCHED_FINISH_ERROR);
    assert_non_null(strstr(top.r.err, "alternatives"));
    check_counts(s);
    sched_stop(s);
    struct treq *all[] = {&ref, &blocker, &late_be, &urgent, &cancel, &big, &top};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        sched_req_unref(&all[i]->r);
    engine_close(e);
}

/* On a request-level engine, a class holding slots also holds back later
 * classes while one of its requests waits for its first token (the
 * upstream would prefill their prompts in the same batches): with a long
 * best_effort request running, an urgent and a best_effort one submitted
 * together, the best_effort one starts only once the urgent one has its
 * first token, although a slot was free for it all along. */
static void test_first_token_hold(void **state)
{
    (void)state;
    static struct treq blocker, u, be;
    fake_delay_ns = 20000000; /* 20 ms a poll: the urgent prefill takes a while */
    struct engine *e = fake(false, true, 4, 0);
    fake_delay_ns = 0;
    const struct sched_class cls[2] = {{.name = "urgent", .ttft_ns = 1, .reserved_running = 1},
                                       {.name = "best_effort"}};
    struct sched_config rc = {
        .max_running = 4, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = 2};
    struct sched *s = start(e, &rc);
    t_init(&blocker, 1, 5, 30);
    blocker.r.cls = 1;
    submit(s, &blocker);
    t_wait_tokens(&blocker, 1);
    t_init(&u, 8, 13, 4);
    u.r.cls = 0;
    t_init(&be, 9, 13, 4);
    be.r.cls = 1;
    submit(s, &u);
    submit(s, &be);
    t_wait_finish(&u);
    t_wait_finish(&be);
    t_wait_finish(&blocker);
    assert_int_equal(atomic_load(&u.r.finish), SCHED_FINISH_LENGTH);
    assert_int_equal(atomic_load(&be.r.finish), SCHED_FINISH_LENGTH);
    assert_true(atomic_load(&u.r.t_first_ns) > 0);
    assert_true(atomic_load(&be.r.t_admit_ns) >= atomic_load(&u.r.t_first_ns));
    sched_stop(s);
    sched_req_unref(&blocker.r);
    sched_req_unref(&u.r);
    sched_req_unref(&be.r);
    engine_close(e);
}

static void test_engine_contract(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct engine *se = fake(true, false, 2, 8), *re = fake(false, true, 2, 0), *le = fake(false, false, 2, 8);
    int32_t tok[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, blocks[3] = {0, 1, 8};
    struct engine_seq seq = {.tokens = tok, .n_tokens = 2, .pos = 0, .blocks = blocks, .want_logits = true};
    const float *lg;
    assert_int_equal(engine_step(se, &seq, 1, &lg, &err), LMD_ENOTSUP);
    assert_int_equal(engine_launch(re, &seq, 1, &err), LMD_ENOTSUP);
    struct engine_req rq = {.prompt = tok, .n_prompt = 2, .max_tokens = 2};
    assert_int_equal(engine_submit(le, &rq, &err), LMD_ENOTSUP);
    /* A block the engine does not store; a batch over its token budget. */
    seq.n_tokens = 9;
    assert_int_equal(engine_step(le, &seq, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "block 2 of its table is 8"));
    blocks[2] = 2;
    assert_int_equal(engine_step(le, &seq, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "exceeds 8 tokens"));
    seq.n_tokens = 8;
    assert_int_equal(engine_step(le, &seq, 1, &lg, &err), 0);
    /* A step-level engine without blocks cannot be scheduled. */
    struct engine *bad = NULL;
    struct engine_fake_config c = {.n_vocab = NV, .n_ctx = 64, .max_batch_tokens = 8, .max_seqs = 1};
    assert_int_equal(engine_fake_open(&bad, &c, &err), LMD_EINVAL);
    engine_close(se);
    engine_close(re);
    engine_close(le);
}

/* A grammar holds on both engine flavours that produce tokens: the
 * scheduler sampling from the engine's logits, and the engine sampling
 * with the request's sampler. The fake engine's logits are arbitrary, so
 * only the grammar makes the output a list of numbers. */
static void test_grammar_on_every_sampling_path(void **state)
{
    struct gguf_file *f = NULL;
    struct tok_vocab *v = NULL;
    struct lmd_err err = {0};
    if (gguf_open(&f, LMD_SOURCE_DIR "/tests/golden/tokenizer/bpe_gpt2.gguf", &err) != 0 || tok_load(&v, f, &err) != 0)
        fail_msg("%s", err.msg);
    const char *text = "root ::= \"[\" [0-9]{1,3} (\", \" [0-9]{1,3}){0,4} \"]\"\n";
    struct gram *g = NULL;
    assert_int_equal(gram_compile(&g, text, strlen(text), &err), 0);
    static struct treq ts[4]; /* the scheduler holds a reference until sched_stop */
    for (int samples = 0; samples <= 1; samples++) {
        struct engine *e = NULL;
        struct engine_fake_config c = {.n_vocab = tok_n_vocab(v),
                                       .n_ctx = 256,
                                       .max_batch_tokens = 8,
                                       .max_seqs = 2,
                                       .kv_blocks = 64,
                                       .kv_block_tokens = 4,
                                       .samples = samples};
        if (engine_fake_open(&e, &c, &err) != 0)
            fail_msg("%s", err.msg);
        struct sched_config sc = {.vocab = v, .max_running = 2, .max_queue = 8};
        struct sched *s = start(e, &sc);
        for (int seed = 1; seed <= 4; seed++) {
            struct treq *tp = &ts[seed - 1];
            t_init(tp, seed, 6, 40);
            tp->r.ignore_eos = false;
            tp->r.sp.temperature = seed == 4 ? 0.0f : 1.0f;
            tp->r.sp.seed = (uint64_t)seed;
            tp->r.sp.grammar = g;
            run_alone(s, tp);
            int fin = atomic_load(&tp->r.finish), n = atomic_load(&tp->r.n_out);
            assert_true(fin == SCHED_FINISH_STOP || fin == SCHED_FINISH_LENGTH);
            char out[2048];
            size_t len = 0;
            for (int i = 0; i < n; i++)
                len += tok_piece(v, tp->out[i], false, out + len, sizeof out - len);
            struct gram_match *m = NULL;
            assert_int_equal(gram_match_init(&m, g, NULL, &err), 0);
            bool fits = gram_match_feed(m, out, len);
            if (!fits || (fin == SCHED_FINISH_STOP && !gram_match_accepting(m)))
                fail_msg("samples %d seed %d: '%.*s' (finish %d)", samples, seed, (int)len, out, fin);
            gram_match_free(m);
        }
        sched_stop(s);
        engine_close(e);
    }
    gram_free(g);
    tok_free(v);
    gguf_close(f);
}

/* One request's choices (a group) hold at most their class's share of the
 * running set: by default half of it, so with 4 slots a request of n = 4
 * runs two choices at once and a later request overtakes its other two;
 * a class's max_request_running of 1 runs them one after another. Each
 * held choice starts only once a sibling has finished, whatever the
 * timing. */
static void test_request_share_of_slots(void **state)
{
    (void)state;
    static struct treq g[4], other;
    fake_delay_ns = 2000000; /* so that the first choices still decode when the other request arrives */
    struct engine *e = fake(false, false, 4, 256);
    fake_delay_ns = 0;
    struct sched_config sc = {.max_running = 4, .max_queue = 8};
    struct sched *s = start(e, &sc);
    for (int i = 0; i < 4; i++) {
        t_init(&g[i], 3, 9, 64);
        g[i].r.group = 77;
        submit(s, &g[i]);
    }
    t_wait_tokens(&g[0], 1);
    t_init(&other, 4, 9, 4);
    submit(s, &other);
    for (int i = 0; i < 4; i++)
        t_wait_finish(&g[i]);
    t_wait_finish(&other);
    /* The other request never waited behind the held choices. */
    assert_true(other.r.t_admit_ns < g[2].r.t_admit_ns && other.r.t_admit_ns < g[3].r.t_admit_ns);
    /* Choices 2 and 3 each started after one of 0 and 1 had finished. */
    uint64_t first_done = g[0].r.t_done_ns < g[1].r.t_done_ns ? g[0].r.t_done_ns : g[1].r.t_done_ns;
    assert_true(g[2].r.t_admit_ns >= first_done && g[3].r.t_admit_ns >= first_done);
    uint64_t second_done = g[0].r.t_done_ns < g[1].r.t_done_ns ? g[1].r.t_done_ns : g[0].r.t_done_ns;
    assert_true(g[2].r.t_admit_ns >= second_done || g[3].r.t_admit_ns >= second_done);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g[i].r.finish, SCHED_FINISH_LENGTH);
        assert_int_equal(g[i].r.n_out, 64);
    }
    check_counts(s);
    sched_stop(s);
    for (int i = 0; i < 4; i++)
        sched_req_unref(&g[i].r);
    sched_req_unref(&other.r);
    engine_close(e);

    /* A class that lets one choice run at a time. */
    const struct sched_class one[1] = {{.name = "serial", .max_request_running = 1}};
    struct sched_config sc1 = {.max_running = 4, .max_queue = 8, .classes = one, .n_classes = 1};
    e = fake(false, false, 4, 256);
    s = start(e, &sc1);
    for (int i = 0; i < 3; i++) {
        t_init(&g[i], 5, 9, 8);
        g[i].r.group = 78;
        submit(s, &g[i]);
    }
    for (int i = 0; i < 3; i++)
        t_wait_finish(&g[i]);
    assert_true(g[1].r.t_admit_ns >= g[0].r.t_done_ns || g[0].r.t_admit_ns >= g[1].r.t_done_ns);
    assert_true(g[2].r.t_admit_ns >= g[1].r.t_done_ns || g[1].r.t_admit_ns >= g[2].r.t_done_ns);
    assert_true(g[2].r.t_admit_ns >= g[0].r.t_done_ns || g[0].r.t_admit_ns >= g[2].r.t_done_ns);
    check_counts(s);
    sched_stop(s);
    for (int i = 0; i < 3; i++)
        sched_req_unref(&g[i].r);
    engine_close(e);
}

/* One request of class cls and len tokens run on the idle scheduler:
 * admitted at once, and the turnover the wait estimate uses is measured. */
static void measure_turnover(struct sched *s, struct treq *t, int cls, int len)
{
    t_init(t, 1, 9, len);
    t->r.cls = cls;
    run_alone(s, t);
    assert_int_equal(t->r.finish, SCHED_FINISH_LENGTH);
}

/* Under a full running set the wait estimate counts the slots every
 * queued request needs, at the measured turnover: with one slot, one
 * request running and three queued ahead (in a more urgent class that
 * runs late work), a new request starts after about four request lengths,
 * so a class refusing late work with a target of two lengths refuses it at
 * submission (LMD_ETIMEDOUT), counted as a deadline refusal. (Counting
 * only the running request's remaining time, the estimate stayed under one
 * length and the request was queued to start late.) On the idle scheduler
 * the same class refuses nothing. */
static void test_refuse_unmeetable_at_submit(void **state)
{
    (void)state;
    enum { LEN = 40 };
    static struct treq warm, run, q[3], late;
    const uint64_t delay = 2000000;
    fake_delay_ns = delay;
    struct engine *e = fake(false, false, 1, 256);
    fake_delay_ns = 0;
    /* Two request lengths: each takes at least LEN steps of `delay`. */
    const struct sched_class cls[2] = {{.name = "lenient"},
                                       {.name = "strict", .ttft_ns = 2 * LEN * delay, .refuse_late = true}};
    struct sched_config sc = {
        .max_running = 1, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = 2};
    struct sched *s = start(e, &sc);
    measure_turnover(s, &warm, 1, LEN);
    t_init(&run, 2, 9, LEN);
    submit(s, &run);
    t_wait_tokens(&run, 1);
    for (int i = 0; i < 3; i++) {
        t_init(&q[i], 10 + i, 9, LEN);
        submit(s, &q[i]);
    }
    /* Wait until the engine thread has published the queue (three waiting). */
    struct sched_stats st;
    for (;;) {
        sched_stats(s, &st);
        if (st.waiting >= 3 || atomic_load(&run.r.finish) != SCHED_RUNNING)
            break;
        t_wait_tokens(&run, atomic_load(&run.r.n_out) + 1);
    }
    assert_int_equal(st.waiting, 3);
    assert_true(sched_estimate_wait_ns(s, 1) > 2 * LEN * delay);
    t_init(&late, 20, 9, 4);
    late.r.cls = 1;
    struct lmd_err err = {0};
    assert_int_equal(sched_submit(s, &late.r, &err), LMD_ETIMEDOUT);
    sched_stats(s, &st);
    assert_int_equal(st.deadline_refusals, 1);
    t_wait_finish(&run);
    for (int i = 0; i < 3; i++)
        t_wait_finish(&q[i]);
    check_counts(s);
    sched_stop(s);
    sched_req_unref(&warm.r);
    sched_req_unref(&run.r);
    for (int i = 0; i < 3; i++)
        sched_req_unref(&q[i].r);
    sched_req_unref(&late.r);
    engine_close(e);
}

/* A slot held for an earlier class is not free for a later one, and the
 * wait estimate at submission knows it: with two slots, one held for
 * urgent and the other running a long best_effort request, a best_effort
 * request that refuses late work with a target of half a request length
 * is refused at submission (it can start only when a slot frees, about a
 * request length away). Counting the held slot as free, the estimate was
 * the queued prefill alone (nothing), so the request was queued and could
 * only be refused later, at admission. An urgent request is still
 * served beside the running one. */
static void test_refuse_at_submit_counts_held_slots(void **state)
{
    (void)state;
    enum { LEN = 40 };
    static struct treq warm, run, late, urgent;
    const uint64_t delay = 2000000;
    fake_delay_ns = delay;
    struct engine *e = fake(false, false, 2, 256);
    fake_delay_ns = 0;
    const struct sched_class cls[2] = {
        {.name = "urgent", .reserved_running = 1},
        {.name = "best_effort", .ttft_ns = LEN * delay / 2, .refuse_late = true},
    };
    struct sched_config sc = {
        .max_running = 2, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = 2};
    struct sched *s = start(e, &sc);
    measure_turnover(s, &warm, 1, LEN);
    t_init(&run, 2, 9, 4 * LEN);
    run.r.cls = 1;
    submit(s, &run);
    t_wait_tokens(&run, 2);
    assert_true(sched_estimate_wait_ns(s, 1) > LEN * delay / 2);
    t_init(&late, 3, 9, 4);
    late.r.cls = 1;
    struct lmd_err err = {0};
    assert_int_equal(sched_submit(s, &late.r, &err), LMD_ETIMEDOUT);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.deadline_refusals, 1);
    t_init(&urgent, 4, 9, 4);
    urgent.r.cls = 0;
    submit(s, &urgent);
    t_wait_finish(&urgent);
    assert_int_equal(urgent.r.finish, SCHED_FINISH_LENGTH);
    t_wait_finish(&run);
    check_counts(s);
    sched_stop(s);
    sched_req_unref(&warm.r);
    sched_req_unref(&run.r);
    sched_req_unref(&late.r);
    sched_req_unref(&urgent.r);
    engine_close(e);
}

/* A burst arriving at once at an idle scheduler sees itself: requests
 * submitted since the engine thread last looked count as ahead, so once
 * the turnover is known the burst's tail, which could only start after
 * several request lengths, is refused at submission rather than queued.
 * The head of the burst, which has slots or nearly, is not. */
static void test_burst_sees_itself(void **state)
{
    (void)state;
    enum { LEN = 40, N = 8 };
    static struct treq warm, b[N];
    const uint64_t delay = 2000000;
    fake_delay_ns = delay;
    struct engine *e = fake(false, false, 1, 256);
    fake_delay_ns = 0;
    /* Three request lengths: each holds the slot at least LEN + 1 steps. */
    const struct sched_class cls[1] = {{.name = "strict", .ttft_ns = 3 * LEN * delay, .refuse_late = true}};
    struct sched_config sc = {
        .max_running = 1, .max_queue = 16, .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = 1};
    struct sched *s = start(e, &sc);
    /* Two in turn: the engine thread publishes the turnover of the first
     * after telling its owner it finished, so by the end of the second it
     * has. */
    t_init(&warm, 1, 9, LEN);
    run_alone(s, &warm);
    sched_req_unref(&warm.r);
    t_init(&warm, 2, 9, 4);
    run_alone(s, &warm);
    int rc[N], refused = 0;
    for (int i = 0; i < N; i++) {
        t_init(&b[i], 30 + i, 9, LEN);
        struct lmd_err err = {0};
        rc[i] = sched_submit(s, &b[i].r, &err);
        assert_true(rc[i] == 0 || rc[i] == LMD_ETIMEDOUT);
        refused += rc[i] != 0;
    }
    /* The first finds the slot free. Each takes at least one length (the
     * measured turnover is never below it, however slow the machine), so
     * the fifth and later are estimated to start after more than three,
     * whether or not the engine thread has taken the first ones yet. */
    assert_int_equal(rc[0], 0);
    for (int i = 4; i < N; i++)
        assert_int_equal(rc[i], LMD_ETIMEDOUT);
    assert_true(refused >= N - 4);
    for (int i = 0; i < N; i++)
        if (rc[i] == 0)
            t_wait_finish(&b[i]);
    check_counts(s);
    sched_stop(s);
    sched_req_unref(&warm.r);
    for (int i = 0; i < N; i++)
        sched_req_unref(&b[i].r);
    engine_close(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grammar_on_every_sampling_path),
        cmocka_unit_test(test_batched_equals_alone),
        cmocka_unit_test(test_engine_samples_same_as_scheduler),
        cmocka_unit_test(test_prefix_cache_shares_correctly),
        cmocka_unit_test(test_preempt_resume),
        cmocka_unit_test(test_request_level),
        cmocka_unit_test(test_first_token_hold),
        cmocka_unit_test(test_engine_contract),
        cmocka_unit_test(test_request_share_of_slots),
        cmocka_unit_test(test_refuse_unmeetable_at_submit),
        cmocka_unit_test(test_refuse_at_submit_counts_held_slots),
        cmocka_unit_test(test_burst_sees_itself),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
