/*
 * Native engine on the default model: a ragged batch (one sequence in
 * prefill, others decoding) gives the same logits, bit for bit, as each
 * sequence run alone; released KV blocks are reusable without leaking state; bad
 * batches and bad models are refused with precise messages.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/engine.h"
#include "kv/kv.h"

static char model_path[1024];

static int setup(void **state)
{
    (void)state;
    snprintf(model_path, sizeof model_path, "%s/models/default.gguf", LMD_SOURCE_DIR);
    if (access(model_path, R_OK) != 0) {
        print_message("%s missing: run `make model`\n", model_path);
        return -1;
    }
    return 0;
}

struct seq {
    int32_t blocks[64];
    struct kv_seq kv;
};

/* The engine stores the blocks; the test decides who holds which. */
static struct kv_mgr kvm;

static struct engine *open_engine(int max_seqs)
{
    struct engine *e = NULL;
    struct lmd_err err = {0};
    struct engine_config cfg = {
        .model_path = model_path, .n_threads = 2, .n_ctx = 512, .max_batch_tokens = 64, .max_seqs = max_seqs};
    if (engine_native_open(&e, &cfg, &err) != 0)
        fail_msg("%s", err.msg);
    assert_true(e->info.kv_blocks > 0 && e->info.kv_block_tokens == 16 && e->info.kv_block_bytes > 0);
    if (kv_init(&kvm, &(struct kv_config){.n_blocks = e->info.kv_blocks, .block_tokens = e->info.kv_block_tokens},
                &err) != 0)
        fail_msg("%s", err.msg);
    return e;
}

static void close_engine(struct engine *e)
{
    assert_int_equal(kv_free_blocks(&kvm), kvm.cfg.n_blocks);
    kv_free(&kvm);
    engine_close(e);
}

static const int32_t prompts[3][12] = {
    {2, 818, 5279, 529, 7001, 563},
    {2, 12375, 3324, 496, 1972, 236764, 528, 496, 1944, 12304, 684, 506},
    {2, 2094, 563, 236743, 236778, 236862, 236743, 236778, 236881},
};
static const int prompt_len[3] = {6, 12, 9};

/* Greedy: prompt, then 4 decode steps; returns the final logits copy. */
static void run_alone(struct engine *e, int which, float *out)
{
    struct seq s = {.kv = {.cap = 64}};
    s.kv.blocks = s.blocks;
    struct lmd_err err = {0};
    int n = prompt_len[which];
    assert_int_equal(kv_seq_reserve(&kvm, &s.kv, n + 8), 0);
    const float *lg;
    struct engine_seq es = {.tokens = prompts[which], .n_tokens = n, .pos = 0, .blocks = s.blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &es, 1, &lg, &err), 0);
    int32_t tok[4] = {236761, 107, 506, 529};
    for (int i = 0; i < 4; i++) {
        struct engine_seq d = {.tokens = &tok[i], .n_tokens = 1, .pos = n + i, .blocks = s.blocks, .want_logits = true};
        assert_int_equal(engine_step(e, &d, 1, &lg, &err), 0);
    }
    memcpy(out, lg, (size_t)e->info.n_vocab * sizeof(float));
    kv_seq_release(&kvm, &s.kv);
}

static void test_ragged_batch_equals_alone(void **state)
{
    (void)state;
    struct engine *e = open_engine(3);
    const int nv = e->info.n_vocab;
    float *alone = malloc(3 * (size_t)nv * sizeof(float));
    for (int i = 0; i < 3; i++)
        run_alone(e, i, alone + (size_t)i * (size_t)nv);

    /* Now together: sequence 0 and 1 prefill first, then sequence 2's
     * prefill shares steps with the others' decodes. */
    struct seq s[3];
    struct lmd_err err = {0};
    for (int i = 0; i < 3; i++) {
        s[i].kv = (struct kv_seq){.blocks = s[i].blocks, .cap = 64};
        assert_int_equal(kv_seq_reserve(&kvm, &s[i].kv, prompt_len[i] + 8), 0);
    }
    int32_t tok[4] = {236761, 107, 506, 529};
    const float *lg;
    struct engine_seq b0[2] = {
        {.tokens = prompts[0], .n_tokens = 6, .pos = 0, .blocks = s[0].blocks, .want_logits = true},
        {.tokens = prompts[1], .n_tokens = 12, .pos = 0, .blocks = s[1].blocks, .want_logits = false},
    };
    assert_int_equal(engine_step(e, b0, 2, &lg, &err), 0);
    int step[2] = {0, 0};
    /* Each step: seqs 0 and 1 decode; seq 2 prefills in the first, then decodes. */
    for (int k = 0; k < 4; k++) {
        struct engine_seq b[3];
        int n = 0;
        b[n++] = (struct engine_seq){
            .tokens = &tok[step[0]], .n_tokens = 1, .pos = 6 + step[0], .blocks = s[0].blocks, .want_logits = true};
        step[0]++;
        b[n++] = (struct engine_seq){
            .tokens = &tok[step[1]], .n_tokens = 1, .pos = 12 + step[1], .blocks = s[1].blocks, .want_logits = true};
        step[1]++;
        if (k == 0)
            b[n++] = (struct engine_seq){
                .tokens = prompts[2], .n_tokens = 9, .pos = 0, .blocks = s[2].blocks, .want_logits = true};
        else /* seq 2 decodes: its k-th token after the prompt */
            b[n++] = (struct engine_seq){
                .tokens = &tok[k - 1], .n_tokens = 1, .pos = 9 + k - 1, .blocks = s[2].blocks, .want_logits = true};
        assert_int_equal(engine_step(e, b, n, &lg, &err), 0);
        if (k == 3) {
            /* seqs 0 and 1 are now at the same point as run_alone. */
            for (int i = 0; i < 2; i++) {
                double md = 0;
                for (int v = 0; v < nv; v++)
                    md = fmax(md,
                              fabs(lg[(size_t)i * (size_t)nv + (size_t)v] - alone[(size_t)i * (size_t)nv + (size_t)v]));
                print_message("sequence %d: max |batched - alone| = %g\n", i, md);
                assert_true(md == 0); /* batch composition changes no bit */
            }
        }
    }
    /* Seq 2 has had its prompt and 3 decodes; one more to match run_alone. */
    struct engine_seq last = {
        .tokens = &tok[3], .n_tokens = 1, .pos = 9 + 3, .blocks = s[2].blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &last, 1, &lg, &err), 0);
    double md = 0;
    for (int v = 0; v < nv; v++)
        md = fmax(md, fabs(lg[v] - alone[2 * (size_t)nv + (size_t)v]));
    print_message("sequence 2: max |batched - alone| = %g\n", md);
    assert_true(md == 0); /* batch composition changes no bit */
    for (int i = 0; i < 3; i++)
        kv_seq_release(&kvm, &s[i].kv);
    free(alone);
    close_engine(e);
}

static void test_bad_batches(void **state)
{
    (void)state;
    struct engine *e = open_engine(2);
    struct lmd_err err = {0};
    struct seq s = {.kv = {.cap = 64}};
    s.kv.blocks = s.blocks;
    assert_int_equal(kv_seq_reserve(&kvm, &s.kv, 32), 0);
    const float *lg;
    int32_t bad = 999999999;
    struct engine_seq es = {.tokens = &bad, .n_tokens = 1, .pos = 0, .blocks = s.blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &es, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "token id 999999999 out of range"));
    int32_t ok = 2;
    es = (struct engine_seq){.tokens = &ok, .n_tokens = 1, .pos = 600, .blocks = s.blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &es, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "outside the context"));
    int32_t many[65] = {0};
    es = (struct engine_seq){.tokens = many, .n_tokens = 65, .pos = 0, .blocks = s.blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &es, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "exceeds 64 tokens"));
    /* A block table naming a block the engine does not store. */
    int32_t far[2] = {0, e->info.kv_blocks};
    int32_t two[17] = {2};
    es = (struct engine_seq){.tokens = two, .n_tokens = 17, .pos = 0, .blocks = far, .want_logits = true};
    assert_int_equal(engine_step(e, &es, 1, &lg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "block 1 of its table"));
    kv_seq_release(&kvm, &s.kv);
    close_engine(e);
}

/* The hidden state of prompt 1's position k after the output norm, by
 * the plainest route: the prefix [0, k] alone, one chunk, last pooling. */
static void hidden_at(struct engine *e, int k, float *out)
{
    struct seq s = {.kv = {.cap = 64}};
    s.kv.blocks = s.blocks;
    struct lmd_err err = {0};
    assert_int_equal(kv_seq_reserve(&kvm, &s.kv, k + 1), 0);
    struct engine_seq es = {
        .tokens = prompts[1], .n_tokens = k + 1, .pos = 0, .blocks = s.blocks, .pool = ENGINE_POOL_LAST, .embd = out};
    struct engine_result res;
    assert_int_equal(engine_launch(e, &es, 1, &err), 0);
    assert_int_equal(engine_wait(e, &res, &err), 0);
    assert_int_equal(res.n_rows, 0); /* pooling asks for no logits */
    kv_seq_release(&kvm, &s.kv);
}

/* Pooling over a prefill in two chunks, batched with another sequence,
 * equals the pooling computed from each position's hidden state directly. */
static void test_pooling(void **state)
{
    (void)state;
    struct engine *e = open_engine(4);
    const int E = e->info.n_embd, n = prompt_len[1];
    assert_int_equal(e->info.pooling, ENGINE_POOL_LAST); /* a causal decoder whose file names no pooling */
    assert_true(E == 640);
    float *h = malloc((size_t)n * (size_t)E * sizeof(float)); /* [n][E] */
    float *want = malloc((size_t)E * sizeof(float)), *got[3];
    for (int k = 0; k < n; k++)
        hidden_at(e, k, h + (size_t)k * (size_t)E);

    /* Mean, cls and last at once, each over chunks 0..4 and 5..11, next to
     * a decoding sequence. The accumulators start as garbage: a chunk at
     * position 0 must reset them. */
    const enum engine_pool kinds[3] = {ENGINE_POOL_MEAN, ENGINE_POOL_CLS, ENGINE_POOL_LAST};
    struct seq s[4];
    struct lmd_err err = {0};
    for (int i = 0; i < 4; i++) {
        s[i].kv = (struct kv_seq){.blocks = s[i].blocks, .cap = 64};
        assert_int_equal(kv_seq_reserve(&kvm, &s[i].kv, n + 1), 0);
    }
    for (int i = 0; i < 3; i++) {
        got[i] = malloc((size_t)E * sizeof(float));
        for (int d = 0; d < E; d++)
            got[i][d] = 1e30f;
    }
    const float *lg;
    struct engine_seq other = {
        .tokens = prompts[0], .n_tokens = 6, .pos = 0, .blocks = s[3].blocks, .want_logits = true};
    assert_int_equal(engine_step(e, &other, 1, &lg, &err), 0);
    int32_t tok = 236761;
    for (int c = 0; c < 2; c++) {
        struct engine_seq b[4];
        for (int i = 0; i < 3; i++)
            b[i] = (struct engine_seq){.tokens = prompts[1] + (c ? 5 : 0),
                                       .n_tokens = c ? n - 5 : 5,
                                       .pos = c ? 5 : 0,
                                       .blocks = s[i].blocks,
                                       .pool = kinds[i],
                                       .embd = got[i]};
        b[3] = (struct engine_seq){
            .tokens = &tok, .n_tokens = 1, .pos = 6 + c, .blocks = s[3].blocks, .want_logits = true};
        assert_int_equal(engine_step(e, b, 4, &lg, &err), 0);
    }
    for (int i = 0; i < 3; i++)
        engine_embd_finish(got[i], E, kinds[i], n);

    /* The same from the direct hidden states, in position order. */
    for (int i = 0; i < 3; i++) {
        if (kinds[i] == ENGINE_POOL_MEAN) {
            memset(want, 0, (size_t)E * sizeof(float));
            for (int k = 0; k < n; k++)
                for (int d = 0; d < E; d++)
                    want[d] += h[(size_t)k * (size_t)E + (size_t)d];
        } else {
            memcpy(want, h + (size_t)(kinds[i] == ENGINE_POOL_CLS ? 0 : n - 1) * (size_t)E, (size_t)E * sizeof(float));
        }
        engine_embd_finish(want, E, kinds[i], n);
        double md = 0, ss = 0;
        for (int d = 0; d < E; d++) {
            md = fmax(md, fabs(got[i][d] - want[d]));
            ss += (double)got[i][d] * got[i][d];
        }
        print_message("pooling %d: max |chunked - direct| = %g, |v| = %.9f\n", kinds[i], md, sqrt(ss));
        assert_true(md == 0); /* batch composition and chunking change no bit */
        assert_true(fabs(sqrt(ss) - 1.0) < 1e-6);
    }
    /* The three poolings give three different vectors. */
    assert_true(memcmp(got[0], got[1], (size_t)E * sizeof(float)) != 0);
    assert_true(memcmp(got[0], got[2], (size_t)E * sizeof(float)) != 0);
    assert_true(memcmp(got[1], got[2], (size_t)E * sizeof(float)) != 0);

    /* Finishing: the mean divides by the count, the norm is 1, zero stays zero. */
    float v[4] = {3, 0, 4, 0}, z[3] = {0, 0, 0};
    engine_embd_finish(v, 4, ENGINE_POOL_MEAN, 5);
    assert_true(fabsf(v[0] - 0.6f) < 1e-7f && fabsf(v[2] - 0.8f) < 1e-7f && v[1] == 0);
    engine_embd_finish(z, 3, ENGINE_POOL_LAST, 1);
    assert_true(z[0] == 0 && z[1] == 0 && z[2] == 0);

    for (int i = 0; i < 4; i++)
        kv_seq_release(&kvm, &s[i].kv);
    for (int i = 0; i < 3; i++)
        free(got[i]);
    free(h);
    free(want);
    close_engine(e);
}

/* An engine without hidden states refuses pooling, precisely. */
static void test_pooling_refused(void **state)
{
    (void)state;
    struct engine *e = NULL;
    struct lmd_err err = {0};
    struct engine_fake_config fc = {.n_vocab = 16, .n_ctx = 64, .max_batch_tokens = 64, .max_seqs = 2, .kv_blocks = 8};
    assert_int_equal(engine_fake_open(&e, &fc, &err), 0);
    assert_int_equal(e->info.n_embd, 0);
    int32_t blocks[4] = {0, 1, 2, 3}, t[2] = {1, 2};
    float acc[4];
    struct engine_seq es = {
        .tokens = t, .n_tokens = 2, .pos = 0, .blocks = blocks, .pool = ENGINE_POOL_MEAN, .embd = acc};
    assert_int_equal(engine_launch(e, &es, 1, &err), LMD_ENOTSUP);
    assert_non_null(strstr(err.msg, "does not compute embeddings"));
    engine_close(e);
}

static void test_bad_models(void **state)
{
    (void)state;
    struct engine *e = NULL;
    struct lmd_err err = {0};
    struct engine_config cfg = {.model_path = "/nonexistent.gguf"};
    assert_int_equal(engine_native_open(&e, &cfg, &err), LMD_ENOENT);
    assert_null(e);
    /* A valid GGUF of an unsupported architecture. */
    char path[] = "/tmp/lmd-engine-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    uint8_t hdr[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    const char key[] = "general.architecture", val[] = "mamba";
    uint64_t kl = sizeof key - 1, vl = sizeof val - 1;
    uint32_t ty = 8;
    assert_true(write(fd, hdr, sizeof hdr) == sizeof hdr);
    assert_true(write(fd, &kl, 8) == 8 && write(fd, key, kl) == (ssize_t)kl);
    assert_true(write(fd, &ty, 4) == 4 && write(fd, &vl, 8) == 8 && write(fd, val, vl) == (ssize_t)vl);
    close(fd);
    cfg.model_path = path;
    assert_int_equal(engine_native_open(&e, &cfg, &err), LMD_ENOTSUP);
    assert_non_null(strstr(err.msg, "architecture 'mamba' is not supported"));
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ragged_batch_equals_alone),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_pooling_refused),
    };
    return cmocka_run_group_tests_name("engine", tests, setup, NULL);
}
