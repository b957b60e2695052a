/*
 * Scheduler on the default model: requests batched together (with chunked
 * prefill) produce the same greedy tokens as each run alone; cancelled and
 * finished requests give every KV block back; requests that can never fit
 * are refused at submit with the reason; the metrics and trace events it
 * records add up to what the requests did.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>

#include "core/buf.h"
#include "obs/obs.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

static char model_path[1024];
static struct engine *eng;
static struct tok_vocab *vocab;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

struct treq {
    struct sched_req r;
    int32_t prompt[64];
    int32_t out[256];
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

static void t_init(struct treq *t, const char *text, int max_tokens)
{
    memset(t, 0, sizeof *t);
    struct lmd_err err = {0};
    int64_t n = tok_encode(vocab, text, strlen(text), true, false, t->prompt, 64, &err);
    assert_true(n > 0 && n <= 64);
    sched_req_init(&t->r);
    t->r.prompt = t->prompt;
    t->r.n_prompt = (int)n;
    t->r.max_tokens = max_tokens;
    sample_params_default(&t->r.sp);
    t->r.sp.temperature = 0;
    t->r.out = t->out;
    t->r.notify = t_notify;
    t->r.release = t_release;
}

static int setup(void **state)
{
    (void)state;
    snprintf(model_path, sizeof model_path, "%s/models/default.gguf", LMD_SOURCE_DIR);
    if (access(model_path, R_OK) != 0) {
        print_message("%s missing: run `make model`\n", model_path);
        return -1;
    }
    struct lmd_err err = {0};
    /* A small step budget so that prompts prefill in several chunks. */
    struct engine_config cfg = {
        .model_path = model_path, .n_threads = 2, .n_ctx = 256, .max_batch_tokens = 8, .max_seqs = 4, .kv_blocks = 40};
    if (engine_native_open(&eng, &cfg, &err) != 0 || tok_load(&vocab, eng->info.gguf, &err) != 0) {
        print_message("%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tok_free(vocab);
    engine_close(eng);
    return 0;
}

static const char *texts[3] = {"The capital of France is", "Once upon a time, in a land far away, there",
                               "1, 2, 3, 4,"};

static void test_batched_equals_alone(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 4, .max_queue = 8};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq alone[3], together[3];
    for (int i = 0; i < 3; i++) {
        t_init(&alone[i], texts[i], 12);
        alone[i].r.ignore_eos = true;
        assert_int_equal(sched_submit(s, &alone[i].r, &err), 0);
        t_wait_finish(&alone[i]);
        assert_int_equal(atomic_load(&alone[i].r.finish), SCHED_FINISH_LENGTH);
        assert_int_equal(atomic_load(&alone[i].r.n_out), 12);
    }
    for (int i = 0; i < 3; i++) {
        t_init(&together[i], texts[i], 12);
        together[i].r.ignore_eos = true;
        assert_int_equal(sched_submit(s, &together[i].r, &err), 0);
    }
    for (int i = 0; i < 3; i++) {
        t_wait_finish(&together[i]);
        assert_int_equal(atomic_load(&together[i].r.n_out), 12);
        assert_memory_equal(alone[i].out, together[i].out, 12 * sizeof(int32_t));
    }
    struct sched_stats st;
    sched_stats(s, &st);
    /* kv_blocks_free is published before the owner is notified; the
     * running count only after the step, so it is not checked here. */
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    sched_stop(s);
    for (int i = 0; i < 3; i++) {
        sched_req_unref(&alone[i].r);
        sched_req_unref(&together[i].r);
        assert_true(alone[i].released && together[i].released);
    }
}

/* A scheduler with one running slot: a generating (a, 2 tokens out) and b
 * waiting behind it. */
static struct sched *start_running_and_waiting(struct treq *a, struct treq *b)
{
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 1, .max_queue = 8};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    t_init(a, texts[0], 200);
    a->r.ignore_eos = true;
    t_init(b, texts[1], 200);
    assert_int_equal(sched_submit(s, &a->r, &err), 0);
    assert_int_equal(sched_submit(s, &b->r, &err), 0);
    pthread_mutex_lock(&mu);
    while (atomic_load(&a->r.n_out) < 2)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return s;
}

static void test_cancel_returns_blocks(void **state)
{
    (void)state;
    static struct treq a, b;
    struct sched *s = start_running_and_waiting(&a, &b);
    sched_req_cancel(s, &b.r);
    sched_req_cancel(s, &a.r);
    t_wait_finish(&a);
    t_wait_finish(&b);
    assert_int_equal(atomic_load(&a.r.finish), SCHED_FINISH_CANCELLED);
    assert_int_equal(atomic_load(&b.r.finish), SCHED_FINISH_CANCELLED);
    assert_int_equal(atomic_load(&b.r.n_out), 0);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    sched_stop(s);
    sched_req_unref(&a.r);
    sched_req_unref(&b.r);
    assert_true(a.released && b.released);
}

/* Stopping the scheduler cuts what is left: a running and a queued request
 * end as SCHED_FINISH_SHUTDOWN, never as a finish that looks complete, and
 * every block comes back. */
static void test_stop_cuts_as_shutdown(void **state)
{
    (void)state;
    static struct treq a, b;
    struct sched *s = start_running_and_waiting(&a, &b);
    sched_stop(s);
    assert_int_equal(atomic_load(&a.r.finish), SCHED_FINISH_SHUTDOWN);
    assert_int_equal(atomic_load(&b.r.finish), SCHED_FINISH_SHUTDOWN);
    assert_true(atomic_load(&a.r.n_out) >= 2 && atomic_load(&a.r.n_out) < 200);
    assert_int_equal(atomic_load(&b.r.n_out), 0);
    sched_req_unref(&a.r);
    sched_req_unref(&b.r);
    assert_true(a.released && b.released);
}

static void test_refusals(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 4, .max_queue = 0};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq t;
    t_init(&t, texts[0], 252); /* past the 256-token context */
    assert_int_equal(sched_submit(s, &t.r, &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "context"));
    t_init(&t, texts[0], 4);
    assert_int_equal(sched_submit(s, &t.r, &err), LMD_EBUSY); /* a queue of 0 holds nothing */
    sched_stop(s);
    sched_req_unref(&t.r);

    sc.max_running = 5; /* more than the engine's 4 sequences */
    assert_int_equal(sched_start(&s, eng, &sc, &err), LMD_EINVAL);
}

static const struct sched_class two_classes[2] = {
    /* A 1 ns TTFT target: an urgent request that has to wait at all is
     * already late, so it preempts at once. */
    {.name = "urgent", .ttft_ns = 1},
    {.name = "best_effort", .ttft_ns = 0},
};

static void t_wait_tokens(struct treq *t, int n)
{
    pthread_mutex_lock(&mu);
    while (atomic_load(&t->r.n_out) < n && atomic_load(&t->r.finish) == SCHED_RUNNING)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

/* One slot, a best_effort request decoding, an urgent one arrives: the
 * best_effort one is preempted (its blocks freed), the urgent one runs and
 * finishes first, then the preempted one resumes by recomputing its prompt
 * and output so far, and its greedy output equals the output it gives when
 * never preempted. */
static void test_preempt_resume_same_output(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab,
                              .max_running = 1,
                              .max_queue = 8,
                              .policy = SCHED_POLICY_SLA,
                              .classes = two_classes,
                              .n_classes = 2};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq alone, a, u;
    t_init(&alone, texts[1], 40);
    alone.r.ignore_eos = true;
    alone.r.cls = 1;
    assert_int_equal(sched_submit(s, &alone.r, &err), 0);
    t_wait_finish(&alone);
    assert_int_equal(alone.r.n_preempted, 0);

    t_init(&a, texts[1], 40);
    a.r.ignore_eos = true;
    a.r.cls = 1;
    assert_int_equal(sched_submit(s, &a.r, &err), 0);
    t_wait_tokens(&a, 6);
    t_init(&u, texts[0], 8);
    u.r.ignore_eos = true;
    u.r.cls = 0;
    assert_int_equal(sched_submit(s, &u.r, &err), 0);
    t_wait_finish(&u);
    t_wait_finish(&a);
    assert_int_equal(atomic_load(&u.r.finish), SCHED_FINISH_LENGTH);
    assert_int_equal(atomic_load(&a.r.finish), SCHED_FINISH_LENGTH);
    assert_true(a.r.n_preempted >= 1);
    assert_true(u.r.t_done_ns < a.r.t_done_ns);
    assert_int_equal(atomic_load(&a.r.n_out), 40);
    assert_memory_equal(alone.out, a.out, 40 * sizeof(int32_t));
    struct sched_stats st;
    sched_stats(s, &st);
    assert_true(st.preemptions >= 1);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    sched_stop(s);
    sched_req_unref(&alone.r);
    sched_req_unref(&a.r);
    sched_req_unref(&u.r);
}

/* A slot held for urgent work: two slots, urgent reserving one. Of two
 * best_effort requests only one runs; an urgent one arriving then starts in
 * the held slot at once (no preemption) and finishes first; the second
 * best_effort one starts only after the first is done. */
static void test_reserved_slots(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_class cls[2] = {
        {.name = "urgent", .ttft_ns = 1, .reserved_running = 1},
        {.name = "best_effort", .ttft_ns = 0},
    };
    struct sched_config sc = {
        .vocab = vocab, .max_running = 2, .max_queue = 8, .policy = SCHED_POLICY_SLA, .classes = cls, .n_classes = 2};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq be[2], u;
    for (int i = 0; i < 2; i++) {
        t_init(&be[i], texts[1], 24);
        be[i].r.ignore_eos = true;
        be[i].r.cls = 1;
        assert_int_equal(sched_submit(s, &be[i].r, &err), 0);
    }
    t_wait_tokens(&be[0], 4);
    assert_int_equal(atomic_load(&be[1].r.n_out), 0);
    t_init(&u, texts[0], 4);
    u.r.ignore_eos = true;
    u.r.cls = 0;
    assert_int_equal(sched_submit(s, &u.r, &err), 0);
    t_wait_finish(&u);
    assert_int_equal(atomic_load(&u.r.finish), SCHED_FINISH_LENGTH);
    assert_int_equal(atomic_load(&be[1].r.n_out), 0);
    for (int i = 0; i < 2; i++)
        t_wait_finish(&be[i]);
    assert_true(u.r.t_done_ns < be[0].r.t_done_ns);
    assert_true(be[0].r.t_done_ns <= be[1].r.t_admit_ns);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.preemptions, 0);
    sched_stop(s);
    sched_req_unref(&u.r);
    for (int i = 0; i < 2; i++)
        sched_req_unref(&be[i].r);
}

/* Admission respects the free blocks: with 40 blocks of 16 tokens, requests
 * reserving 13 blocks each run three at a time although four slots are
 * free; the fourth starts only when one of the three gives its blocks back. */
static void test_kv_budget_admission(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 4, .max_queue = 8, .policy = SCHED_POLICY_SLA};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq r[4];
    for (int i = 0; i < 4; i++) {
        t_init(&r[i], texts[2], 200);
        r[i].r.max_tokens = 200 - r[i].r.n_prompt;
        r[i].r.ignore_eos = true;
        assert_int_equal((200 + eng->info.kv_block_tokens - 1) / eng->info.kv_block_tokens, 13);
        assert_int_equal(sched_submit(s, &r[i].r, &err), 0);
    }
    for (int i = 0; i < 3; i++)
        t_wait_tokens(&r[i], 2);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(atomic_load(&r[3].r.state), SCHED_ST_QUEUED);
    assert_int_equal(r[3].r.t_admit_ns, 0);
    assert_true(st.kv_blocks_free == st.kv_blocks_total - 39);
    sched_req_cancel(s, &r[0].r);
    t_wait_finish(&r[0]);
    t_wait_tokens(&r[3], 1);
    assert_true(r[3].r.t_admit_ns >= r[0].r.t_done_ns);
    for (int i = 1; i < 4; i++)
        sched_req_cancel(s, &r[i].r);
    for (int i = 1; i < 4; i++)
        t_wait_finish(&r[i]);
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    sched_stop(s);
    for (int i = 0; i < 4; i++)
        sched_req_unref(&r[i].r);
}

/* Under SLA a quarter of the queue is kept for the most urgent class: with
 * a queue of 4 and the one slot busy, three best_effort requests queue, the
 * fourth is refused, and an urgent request still gets in. */
static void test_queue_reserve_for_urgent(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab,
                              .max_running = 1,
                              .max_queue = 4,
                              .policy = SCHED_POLICY_SLA,
                              .classes = two_classes,
                              .n_classes = 2};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    static struct treq run, be[4], u;
    t_init(&run, texts[1], 200);
    run.r.ignore_eos = true;
    run.r.cls = 1;
    assert_int_equal(sched_submit(s, &run.r, &err), 0);
    t_wait_tokens(&run, 1);
    for (int i = 0; i < 4; i++) {
        t_init(&be[i], texts[0], 4);
        be[i].r.cls = 1;
        assert_int_equal(sched_submit(s, &be[i].r, &err), i < 3 ? 0 : LMD_EBUSY);
    }
    t_init(&u, texts[0], 4);
    u.r.cls = 0;
    assert_int_equal(sched_submit(s, &u.r, &err), 0);
    t_wait_finish(&u);
    sched_req_cancel(s, &run.r);
    for (int i = 0; i < 3; i++)
        t_wait_finish(&be[i]);
    t_wait_finish(&run);
    sched_stop(s);
    sched_req_unref(&run.r);
    sched_req_unref(&u.r);
    for (int i = 0; i < 4; i++)
        sched_req_unref(&be[i].r);
}

/* The value of the exposition line for `series` (name and labels, exactly
 * as rendered). */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    fail_msg("no series %s in the exposition", series);
    return -1;
}

/* Two greedy requests batched together, then a preemption and a resume:
 * prompt tokens count each prompt once (not its recomputation), generated
 * tokens and the per-request histograms add up to the requests, every
 * output token after the first gives one inter-token latency, and the trace
 * holds step, prefill and preempt events. obs has one class, so the second
 * scheduler's two classes both land in it. */
static void test_obs_records(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    const char *classes[] = {"c0"}, *tenants[] = {"anonymous"}, *models[] = {"idle", "m"};
    struct obs_config oc = {.models = models,
                            .n_models = 2,
                            .classes = classes,
                            .n_classes = 1,
                            .tenants = tenants,
                            .n_tenants = 1,
                            .trace = true,
                            .nvml_path = ""};
    assert_int_equal(obs_init(&oc, &err), 0);

    static struct treq t[4];
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 4, .max_queue = 8, .obs_model = 1};
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    for (int i = 0; i < 2; i++) {
        t_init(&t[i], texts[i], 6);
        t[i].r.id = (uint64_t)i + 1;
        assert_int_equal(sched_submit(s, &t[i].r, &err), 0);
    }
    for (int i = 0; i < 2; i++)
        t_wait_finish(&t[i]);
    sched_stop(s);

    struct sched_config sla = {.vocab = vocab,
                               .max_running = 1,
                               .max_queue = 8,
                               .policy = SCHED_POLICY_SLA,
                               .classes = two_classes,
                               .n_classes = 2,
                               .obs_model = 1};
    assert_int_equal(sched_start(&s, eng, &sla, &err), 0);
    t_init(&t[2], texts[1], 16);
    t[2].r.ignore_eos = true;
    t[2].r.cls = 1;
    t[2].r.id = 3;
    assert_int_equal(sched_submit(s, &t[2].r, &err), 0);
    t_wait_tokens(&t[2], 4);
    t_init(&t[3], texts[0], 4);
    t[3].r.ignore_eos = true;
    t[3].r.id = 4;
    assert_int_equal(sched_submit(s, &t[3].r, &err), 0);
    t_wait_finish(&t[3]);
    t_wait_finish(&t[2]);
    assert_true(t[2].r.n_preempted >= 1);
    sched_stop(s); /* joins the engine thread: everything it recorded is visible */

    int prompt = 0, out = 0, itl = 0, preempted = 0;
    for (int i = 0; i < 4; i++) {
        int n = atomic_load(&t[i].r.n_out);
        assert_true(n >= 1);
        prompt += t[i].r.n_prompt;
        out += n;
        itl += n - 1;
        preempted += t[i].r.n_preempted;
    }
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    /* The engine thread records into the model its scheduler was given. */
    assert_int_equal(metric(b.ptr, "lmd_prompt_tokens_total{model=\"m\"}"), prompt);
    assert_int_equal(metric(b.ptr, "lmd_generation_tokens_total{model=\"m\"}"), out);
    assert_int_equal(metric(b.ptr, "lmd_preemptions_total{model=\"m\"}"), preempted);
    assert_int_equal(metric(b.ptr, "lmd_prompt_tokens_total{model=\"idle\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_engine_step_seconds_count{model=\"idle\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_request_queue_time_seconds_count{model=\"idle\",class=\"c0\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_request_queue_time_seconds_count{model=\"m\",class=\"c0\"}"), 4);
    assert_int_equal(metric(b.ptr, "lmd_request_prefill_time_seconds_count{model=\"m\",class=\"c0\"}"), 4);
    assert_int_equal(metric(b.ptr, "lmd_request_decode_time_seconds_count{model=\"m\",class=\"c0\"}"), 4);
    assert_int_equal(metric(b.ptr, "lmd_inter_token_latency_seconds_count{model=\"m\",class=\"c0\"}"), itl);
    assert_true(metric(b.ptr, "lmd_engine_step_seconds_count{model=\"m\"}") > 0);
    assert_true(metric(b.ptr, "lmd_batch_size_count{model=\"m\"}") > 0);
    assert_int_equal(metric(b.ptr, "lmd_requests_running{model=\"m\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_kv_blocks_free{model=\"m\"}"),
                     metric(b.ptr, "lmd_kv_blocks_capacity{model=\"m\"}"));
    assert_int_equal(metric(b.ptr, "lmd_kv_blocks_capacity{model=\"m\"}"), eng->info.kv_blocks);
    assert_int_equal(metric(b.ptr, "lmd_kv_blocks_capacity{model=\"idle\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_kv_cache_usage_ratio{model=\"m\"}"), 0);
    assert_int_equal(metric(b.ptr, "lmd_requests_waiting{model=\"m\",class=\"c0\"}"), 0);
    lmd_buf_free(&b);

    assert_int_equal(obs_trace_render(&b, 0), 0);
    assert_non_null(strstr(b.ptr, "\"name\":\"step\""));
    assert_non_null(strstr(b.ptr, "\"name\":\"prefill\""));
    assert_non_null(strstr(b.ptr, "\"name\":\"preempt\""));
    assert_non_null(strstr(b.ptr, "\"name\":\"request\""));
    lmd_buf_free(&b);
    obs_shutdown();
    for (int i = 0; i < 4; i++)
        sched_req_unref(&t[i].r);
}

/* The prefix cache: the same prompt twice, the second takes the first's
 * full blocks and prefills only the rest, and its greedy tokens and
 * log-probabilities are bit for bit those of the first and of a run with
 * the cache off (a prefill chunk computes each row as a decode would).
 * Another salt shares nothing. */
struct lpreq {
    struct treq t;
    float lp[16], top_lp[16 * 3];
    int32_t top_id[16 * 3];
};

static void lp_init(struct lpreq *q, const char *text, uint64_t salt)
{
    t_init(&q->t, text, 16);
    q->t.r.ignore_eos = true;
    q->t.r.cache_salt = salt;
    q->t.r.n_logprobs = 3;
    q->t.r.out_lp = q->lp;
    q->t.r.out_top_id = q->top_id;
    q->t.r.out_top_lp = q->top_lp;
}

static void lp_same(const struct lpreq *a, const struct lpreq *b)
{
    assert_int_equal(atomic_load(&a->t.r.n_out), 16);
    assert_int_equal(atomic_load(&b->t.r.n_out), 16);
    assert_memory_equal(a->t.out, b->t.out, 16 * sizeof(int32_t));
    assert_memory_equal(a->lp, b->lp, sizeof a->lp);
    assert_memory_equal(a->top_id, b->top_id, sizeof a->top_id);
    assert_memory_equal(a->top_lp, b->top_lp, sizeof a->top_lp);
}

static void test_prefix_cache_same_output(void **state)
{
    (void)state;
    static const char *long_text =
        "The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
        "carrying a lantern, a notebook and a flask of tea. At the top he lit the great lamp, "
        "checked the clockwork, and wrote down";
    struct lmd_err err = {0};
    struct sched *s;
    struct sched_config sc = {.vocab = vocab, .max_running = 4, .max_queue = 8};
    static struct lpreq off, first, second, other;

    sc.no_prefix_cache = true;
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    lp_init(&off, long_text, 1);
    assert_int_equal(sched_submit(s, &off.t.r, &err), 0);
    t_wait_finish(&off.t);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.prefix_queries, 0);
    assert_int_equal(st.kv_blocks_cached, 0);
    sched_stop(s);

    sc.no_prefix_cache = false;
    assert_int_equal(sched_start(&s, eng, &sc, &err), 0);
    lp_init(&first, long_text, 1);
    const int n = first.t.r.n_prompt, bt = eng->info.kv_block_tokens, shared = (n - 1) / bt * bt;
    assert_true(shared >= 32);
    assert_int_equal(sched_submit(s, &first.t.r, &err), 0);
    t_wait_finish(&first.t);
    sched_stats(s, &st);
    assert_int_equal(st.prefix_queries, n);
    assert_int_equal(st.prefix_hits, 0);
    assert_int_equal(st.prompt_tokens, n);
    assert_true(st.kv_blocks_cached >= shared / bt);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);

    lp_init(&second, long_text, 1);
    assert_int_equal(sched_submit(s, &second.t.r, &err), 0);
    t_wait_finish(&second.t);
    sched_stats(s, &st);
    assert_int_equal(st.prefix_queries, 2 * n);
    assert_int_equal(st.prefix_hits, shared);
    assert_int_equal(st.prompt_tokens, 2 * n - shared); /* computed, not sent */
    lp_same(&first, &second);
    lp_same(&off, &second);

    lp_init(&other, long_text, 2);
    assert_int_equal(sched_submit(s, &other.t.r, &err), 0);
    t_wait_finish(&other.t);
    sched_stats(s, &st);
    assert_int_equal(st.prefix_hits, shared);
    assert_int_equal(st.prompt_tokens, 3 * n - shared);
    lp_same(&first, &other);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    sched_stop(s);
    sched_req_unref(&off.t.r);
    sched_req_unref(&first.t.r);
    sched_req_unref(&second.t.r);
    sched_req_unref(&other.t.r);
}

/* A failed assertion leaves obs on; switch it off for the next test. */
static int obs_off(void **state)
{
    (void)state;
    if (obs_enabled())
        obs_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_equals_alone),
        cmocka_unit_test(test_cancel_returns_blocks),
        cmocka_unit_test(test_stop_cuts_as_shutdown),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_preempt_resume_same_output),
        cmocka_unit_test(test_kv_budget_admission),
        cmocka_unit_test(test_prefix_cache_same_output),
        cmocka_unit_test(test_queue_reserve_for_urgent),
        cmocka_unit_test(test_reserved_slots),
        cmocka_unit_test_teardown(test_obs_records, obs_off),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
