/*
 * Samplers: greedy is argmax, seeds reproduce, filters restrict the support
 * to what they should, penalties and bias move the right logits, and bad
 * parameters are refused with the field named.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sample/sample.h"

#define NV 1000

static void fill(float *l, uint32_t seed)
{
    for (int i = 0; i < NV; i++) {
        seed = seed * 1664525u + 1013904223u;
        l[i] = (float)((seed >> 8) % 10000) / 1000.0f; /* 0..10 */
    }
}

static int32_t draw(struct sample_params *p, const float *src, struct sample_scratch *sc)
{
    struct sampler s;
    float l[NV];
    memcpy(l, src, sizeof l);
    assert_int_equal(sample_init(&s, p, 64, NULL), 0);
    int32_t t = sample_next(&s, sc, l, NV);
    sample_free(&s);
    return t;
}

static void test_greedy(void **state)
{
    (void)state;
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, NV, NULL), 0);
    float l[NV];
    fill(l, 1);
    l[417] = 50.0f;
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0;
    assert_int_equal(draw(&p, l, &sc), 417);
    /* Ties resolve to the lowest id. */
    l[12] = 50.0f;
    assert_int_equal(draw(&p, l, &sc), 12);
    sample_scratch_free(&sc);
}

static void test_seed_reproduces(void **state)
{
    (void)state;
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, NV, NULL), 0);
    float l[NV];
    fill(l, 2);
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 1.5f;
    struct sampler a, b, c;
    p.seed = 7;
    assert_int_equal(sample_init(&a, &p, 64, NULL), 0);
    assert_int_equal(sample_init(&b, &p, 64, NULL), 0);
    p.seed = 8;
    assert_int_equal(sample_init(&c, &p, 64, NULL), 0);
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < 50; i++) {
        float la[NV], lb[NV], lc[NV];
        memcpy(la, l, sizeof l);
        memcpy(lb, l, sizeof l);
        memcpy(lc, l, sizeof l);
        int32_t ta = sample_next(&a, &sc, la, NV), tb = sample_next(&b, &sc, lb, NV), tc = sample_next(&c, &sc, lc, NV);
        same_ab += ta == tb;
        same_ac += ta == tc;
    }
    assert_int_equal(same_ab, 50);
    assert_true(same_ac < 50);
    sample_free(&a);
    sample_free(&b);
    sample_free(&c);
    sample_scratch_free(&sc);
}

static void test_top_k_top_p_min_p(void **state)
{
    (void)state;
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, NV, NULL), 0);
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -10.0f;
    /* Three strong candidates: probabilities ~ 0.665, 0.245, 0.090. */
    l[5] = 3.0f;
    l[6] = 2.0f;
    l[7] = 1.0f;
    struct sample_params p;
    sample_params_default(&p);
    int counts[NV] = {0};
    for (uint64_t seed = 0; seed < 400; seed++) {
        p.seed = seed;
        p.top_k = 2;
        counts[draw(&p, l, &sc)]++;
    }
    assert_int_equal(counts[5] + counts[6], 400); /* only the top 2 */
    assert_true(counts[6] > 50);
    memset(counts, 0, sizeof counts);
    p.top_k = 0;
    p.top_p = 0.6f; /* the first candidate alone reaches 0.6 */
    for (uint64_t seed = 0; seed < 200; seed++) {
        p.seed = seed;
        counts[draw(&p, l, &sc)]++;
    }
    assert_int_equal(counts[5], 200);
    memset(counts, 0, sizeof counts);
    p.top_p = 1.0f;
    p.min_p = 0.3f; /* keeps p >= 0.3 * 0.665: tokens 5 and 6 */
    for (uint64_t seed = 0; seed < 400; seed++) {
        p.seed = seed;
        counts[draw(&p, l, &sc)]++;
    }
    assert_int_equal(counts[5] + counts[6], 400);
    assert_true(counts[6] > 50);
    sample_scratch_free(&sc);
}

static void test_penalties_and_bias(void **state)
{
    (void)state;
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, NV, NULL), 0);
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.repetition_penalty = 2.0f;
    struct sampler s;
    assert_int_equal(sample_init(&s, &p, 64, NULL), 0);
    int32_t prompt[2] = {10, 11};
    sample_accept_prompt(&s, prompt, 2);
    sample_accept(&s, 12);
    sample_accept(&s, 12);
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = 0.0f;
    l[10] = 4.0f;  /* prompt: repetition only -> 2 */
    l[11] = -4.0f; /* prompt, negative -> -8 */
    l[12] = 4.0f;  /* output twice: 4/2 - 2*0.5 - 0.25 = 0.75 */
    l[13] = 1.0f;  /* unseen */
    sample_next(&s, &sc, l, NV);
    assert_float_equal(l[10], 2.0f, 1e-6);
    assert_float_equal(l[11], -8.0f, 1e-6);
    assert_float_equal(l[12], 0.75f, 1e-6);
    assert_float_equal(l[13], 1.0f, 1e-6);
    sample_free(&s);

    struct sample_bias bias[2] = {{.token = 99, .bias = 100.0f}, {.token = 5000, .bias = 1.0f}};
    sample_params_default(&p);
    p.temperature = 0;
    p.bias = bias;
    p.n_bias = 2; /* out-of-range ids are ignored, not written */
    for (int i = 0; i < NV; i++)
        l[i] = 0.0f;
    l[3] = 10.0f;
    assert_int_equal(draw(&p, l, &sc), 99);
    sample_scratch_free(&sc);
}

static void test_bad_params(void **state)
{
    (void)state;
    struct sample_params p;
    struct sampler s;
    struct lmd_err err = {0};
    sample_params_default(&p);
    p.temperature = -1;
    assert_int_equal(sample_init(&s, &p, 8, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "temperature"));
    sample_params_default(&p);
    p.top_p = 0;
    assert_int_equal(sample_init(&s, &p, 8, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));
    sample_params_default(&p);
    p.top_p = NAN;
    assert_int_equal(sample_init(&s, &p, 8, &err), LMD_EINVAL);
    sample_params_default(&p);
    p.presence_penalty = 3;
    assert_int_equal(sample_init(&s, &p, 8, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "presence_penalty"));
}

static void test_logprobs(void **state)
{
    (void)state;
    float l[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    int32_t ids[2];
    float lps[2];
    double z = log(exp(0.0) + exp(1.0) + exp(2.0) + exp(3.0));
    float lp = sample_logprobs(l, 4, 1, 2, ids, lps);
    assert_float_equal(lp, 1.0 - z, 1e-5);
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 2);
    assert_float_equal(lps[0], 3.0 - z, 1e-5);
}

/* sample_uniform is the uniform a draw takes: two equal logits at
 * temperature 1 split [0, 1) at one half, so a twin sampler's uniform
 * predicts every token (an engine that draws elsewhere relies on it). */
static void test_uniform_is_the_draws(void **state)
{
    (void)state;
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, 2, NULL), 0);
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 31;
    struct sampler a, b;
    assert_int_equal(sample_init(&a, &p, 8, NULL), 0);
    assert_int_equal(sample_init(&b, &p, 8, NULL), 0);
    int ones = 0;
    for (int i = 0; i < 200; i++) {
        float l[2] = {0.5f, 0.5f};
        const double u = sample_uniform(&b);
        assert_true(u >= 0.0 && u < 1.0);
        const int32_t t = sample_next(&a, &sc, l, 2);
        assert_int_equal(t, u < 0.5 ? 0 : 1);
        ones += t;
    }
    assert_true(ones > 50 && ones < 150);
    sample_free(&a);
    sample_free(&b);
    sample_scratch_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_seed_reproduces),
        cmocka_unit_test(test_top_k_top_p_min_p),
        cmocka_unit_test(test_penalties_and_bias),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_uniform_is_the_draws),
    };
    return cmocka_run_group_tests_name("sample", tests, NULL, NULL);
}
