/*
 * The model's f32 ops: grouped attention (ops_attend_group, several queries
 * per key/value row) gives, for every query, the same bits as the one-query
 * path ops_attend over that query's own rows, on whatever ISA path this run
 * takes (ctest runs it as is, with LMD_CPU=avx2 and with LMD_CPU=scalar).
 *
 * The shapes are those the forward pass hands it: the query heads of one KV
 * head (GQA ratios 1 to 32) times one or several consecutive tokens of one
 * sequence, each token seeing the positions up to its own (causal) or the
 * last `window` of them (sliding layers), head sizes of real models and odd
 * ones that take the tails of the vector loops.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/cpu.h"
#include "kernels/kernels.h"
#include "model/ops.h"

/*
 * The AVX-512 loops, compiled a second time against SIMDe's portable
 * AVX-512 (when libsimde-dev is installed), so that machines without
 * AVX-512 check them too: test_group_avx512_emulated runs them through AVX2.
 */
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<simde/x86/avx512.h>)
#define MODEL_TEST_AVX512_EMU 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
/* SIMDe 0.7 mis-declares this one. */
static simde__m512 emu_cvtph_ps(simde__m256i a)
{
    simde__m256i_private ap = simde__m256i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++)
        r.f32[i] = kern_f16_to_f32(ap.u16[i]);
    return simde__m512_from_private(r);
}
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps(a) emu_cvtph_ps(a)
#define ops__group_kern_avx512 ops__group_kern_avx512_emu
extern const struct ops__group_kern ops__group_kern_avx512_emu;
#include "model/ops_avx512.c"
#undef ops__group_kern_avx512
#pragma GCC pop_options
#endif
#endif
#include "model/ops_x86.h"

/* When set, check_shape runs the x86 driver with these loops instead of
 * ops_attend_group's own choice. */
static const struct ops__group_kern *forced_kern;

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* Roughly normal, mean 0, deviation sigma. */
static float rnd_normal(float sigma)
{
    float s = 0.0f;
    for (int i = 0; i < 4; i++)
        s += (float)rnd() / 4294967296.0f - 0.5f;
    return s * 1.7320508f * sigma;
}

static void fill_f16(uint16_t *x, size_t n, float sigma)
{
    for (size_t i = 0; i < n; i++)
        x[i] = kern_f32_to_f16(rnd_normal(sigma));
}

struct shape {
    int group;  /* query heads per KV head */
    int tokens; /* consecutive tokens of one sequence */
    int pos0;   /* position of the first token */
    int window; /* sliding window in positions; 0: causal only */
    int dk, dv;
    float sigma_q; /* spread of the queries: large ones give extreme softmaxes */
    bool poison;   /* rows no query of the shape may read hold inf and NaN */
};

/* Runs one shape through ops_attend_group and each query through
 * ops_attend; returns the number of queries checked. */
static int check_shape(const struct shape *sh)
{
    const int nq = sh->group * sh->tokens, dk = sh->dk, dv = sh->dv;
    if (forced_kern && (dk % 8 != 0 || dv % 8 != 0))
        return 0; /* the x86 loops take multiples of 8 only */
    const int pos1 = sh->pos0 + sh->tokens - 1;
    const int base = sh->window && sh->pos0 - sh->window + 1 > 0 ? sh->pos0 - sh->window + 1 : 0;
    const int span = pos1 + 1 - base;
    /* The store holds rows [0, pos1 + 3): two past the last position
     * (rows a later token of the sequence would write) and everything
     * before the window. */
    const int rows = pos1 + 3;
    uint16_t *kst = malloc((size_t)rows * (size_t)dk * sizeof *kst);
    uint16_t *vst = malloc((size_t)rows * (size_t)dv * sizeof *vst);
    uint16_t *q16 = malloc((size_t)nq * (size_t)dk * sizeof *q16);
    const uint16_t **kp = malloc((size_t)span * sizeof *kp), **vp = malloc((size_t)span * sizeof *vp);
    int *lo = malloc((size_t)nq * sizeof *lo), *hi = malloc((size_t)nq * sizeof *hi);
    float *got = malloc((size_t)nq * (size_t)dv * sizeof *got), *want = malloc((size_t)dv * sizeof *want);
    float **out = malloc((size_t)nq * sizeof *out);
    float *work = malloc(ops_attend_group_work(nq, span, dk) * sizeof *work);
    float *scores = malloc((size_t)span * sizeof *scores);
    uint16_t *p16 = malloc((size_t)span * sizeof *p16);
    assert_true(kst && vst && q16 && kp && vp && lo && hi && got && want && out && work && scores && p16);
    fill_f16(kst, (size_t)rows * (size_t)dk, 1.0f);
    fill_f16(vst, (size_t)rows * (size_t)dv, 1.0f);
    fill_f16(q16, (size_t)nq * (size_t)dk, sh->sigma_q);
    for (int j = 0; j < span; j++) {
        kp[j] = kst + (size_t)(base + j) * (size_t)dk;
        vp[j] = vst + (size_t)(base + j) * (size_t)dv;
    }
    for (int t = 0; t < sh->tokens; t++) {
        const int pos = sh->pos0 + t;
        const int first = sh->window && pos - sh->window + 1 > 0 ? pos - sh->window + 1 : 0;
        for (int g = 0; g < sh->group; g++) {
            const int q = t * sh->group + g;
            lo[q] = first - base;
            hi[q] = pos + 1 - base;
            out[q] = got + (size_t)q * (size_t)dv;
        }
    }
    /* Poisoned rows: [ph, span) and [0, pl). Causal shapes poison the rows
     * after the first token's position (what later tokens of the block see,
     * the first does not); sliding ones the rows before the last token's
     * window. A query is checked only if it reads none of them. */
    int pl = 0, ph = span;
    if (sh->poison) {
        if (sh->window == 0)
            ph = hi[0];
        else
            pl = lo[nq - 1];
        for (int j = 0; j < span; j++) {
            if (j >= pl && j < ph)
                continue;
            uint16_t *v = vst + (size_t)(base + j) * (size_t)dv;
            for (int d = 0; d < dv; d++)
                v[d] = (uint16_t)(d % 3 == 0 ? 0x7c00u : d % 3 == 1 ? 0x7e00u : 0xfc00u); /* inf, NaN, -inf */
        }
    }
    /* Earlier contents of the output must not matter. */
    for (size_t i = 0; i < (size_t)nq * (size_t)dv; i++)
        got[i] = NAN;
    if (forced_kern)
        ops__attend_group_avx2(out, q16, nq, lo, hi, kp, vp, span, dk, dv, 0.125f, work, forced_kern);
    else
        ops_attend_group(out, q16, nq, lo, hi, kp, vp, span, dk, dv, 0.125f, work);
    int checked = 0;
    for (int q = 0; q < nq; q++) {
        if (hi[q] > ph || lo[q] < pl)
            continue;
        ops_attend(want, q16 + (size_t)q * (size_t)dk, kp + lo[q], vp + lo[q], hi[q] - lo[q], dk, dv, 0.125f, scores,
                   p16);
        if (memcmp(want, out[q], (size_t)dv * sizeof *want) != 0) {
            int d = 0;
            while (memcmp(&want[d], &out[q][d], sizeof *want) == 0)
                d++;
            fail_msg("group %d tokens %d pos0 %d window %d dk %d dv %d sigma %g poison %d: query %d element %d: "
                     "%a grouped, %a alone",
                     sh->group, sh->tokens, sh->pos0, sh->window, dk, dv, (double)sh->sigma_q, sh->poison, q, d,
                     (double)out[q][d], (double)want[d]);
        }
        for (int d = 0; d < dv; d++)
            assert_true(isfinite(out[q][d]));
        checked++;
    }
    free(kst);
    free(vst);
    free(q16);
    free(kp);
    free(vp);
    free(lo);
    free(hi);
    free(got);
    free(want);
    free(out);
    free(work);
    free(scores);
    free(p16);
    return checked;
}

static const char *isa(void)
{
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (forced_kern)
        return "avx512 loops, emulated";
    return !(f->avx2 && f->fma && f->f16c)                           ? "scalar"
           : f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq ? "avx512"
                                                                     : "avx2";
}

/* The heads of real models: GQA ratios 1, 2, 4 and 8 at head counts up to
 * 32 (and MQA with 16 and 32 heads on one KV head), head sizes 64, 128 and
 * 256, one token (decode) and the token counts the forward pass groups in
 * prefill, at positions on both sides of the 64-row tiles. */
static void test_group_equals_alone_model_shapes(void **state)
{
    (void)state;
    static const int groups[] = {1, 2, 4, 8, 16, 32};
    static const int dims[] = {64, 128, 256};
    static const int pos0s[] = {0, 1, 62, 63, 64, 100, 127, 200};
    static const int windows[] = {0, 0, 512, 96, 64, 33, 8};
    int n = 0, queries = 0;
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            const int g = groups[gi];
            const int tokens[] = {1, g >= 16 ? 1 : 16 / g, 3, 5};
            for (size_t ti = 0; ti < 4; ti++) {
                struct shape sh = {.group = g,
                                   .tokens = tokens[ti],
                                   .pos0 = pos0s[rnd() % (sizeof pos0s / sizeof *pos0s)],
                                   .window = windows[rnd() % (sizeof windows / sizeof *windows)],
                                   .dk = dims[di],
                                   .dv = dims[di],
                                   .sigma_q = 1.0f};
                queries += check_shape(&sh);
                n++;
            }
        }
    print_message("%d shapes, %d queries, bit-identical (%s path)\n", n, queries, isa());
}

/* Odd sizes (8-lane tails of the 16-lane key loop and of the 64- and
 * 16-lane value loops, dk != dv, sizes the vector path refuses), windows
 * smaller than the token block (no row common to all its queries), one
 * row only, extreme softmaxes (scores far apart: exp underflows, some
 * probabilities round to zero in f16) and, for a random mix, everything. */
static void test_group_equals_alone_edges(void **state)
{
    (void)state;
    static const int dims[][2] = {{8, 8},   {24, 40},  {40, 24}, {72, 72},   {136, 200},
                                  {16, 16}, {256, 64}, {20, 28}, {112, 112}, {80, 80}};
    int n = 0, queries = 0;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (int i = 0; i < 12; i++) {
            struct shape sh = {.group = 1 + (int)(rnd() % 9),
                               .tokens = 1 + (int)(rnd() % 7),
                               .pos0 = (int)(rnd() % 150),
                               .window = (int)(rnd() % 3 == 0 ? 0 : 1 + rnd() % 80),
                               .dk = dims[di][0],
                               .dv = dims[di][1],
                               .sigma_q = i % 3 == 2 ? 40.0f : 1.0f};
            queries += check_shape(&sh);
            n++;
        }
    /* A single row; a window of one (each token sees itself only); a window
     * smaller than the tokens of the block. */
    const struct shape fixed[] = {
        {.group = 4, .tokens = 1, .pos0 = 0, .dk = 256, .dv = 256, .sigma_q = 1.0f},
        {.group = 4, .tokens = 4, .pos0 = 70, .window = 1, .dk = 256, .dv = 256, .sigma_q = 1.0f},
        {.group = 2, .tokens = 8, .pos0 = 300, .window = 3, .dk = 64, .dv = 64, .sigma_q = 1.0f},
        {.group = 8, .tokens = 2, .pos0 = 1000, .window = 0, .dk = 64, .dv = 64, .sigma_q = 60.0f},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        queries += check_shape(&fixed[i]);
        n++;
    }
    print_message("%d shapes, %d queries, bit-identical (%s path)\n", n, queries, isa());
}

/* A query reads only its own rows: inf and NaN in the value rows after the
 * first token's position and before the last token's window leave those
 * queries' results finite and equal to the one-query path's. */
static void test_group_reads_only_own_rows(void **state)
{
    (void)state;
    const struct shape shapes[] = {
        {.group = 4, .tokens = 4, .pos0 = 90, .window = 0, .dk = 256, .dv = 256, .sigma_q = 1.0f, .poison = true},
        {.group = 1, .tokens = 8, .pos0 = 130, .window = 64, .dk = 64, .dv = 64, .sigma_q = 1.0f, .poison = true},
        {.group = 8, .tokens = 2, .pos0 = 63, .window = 40, .dk = 128, .dv = 128, .sigma_q = 1.0f, .poison = true},
        {.group = 3, .tokens = 5, .pos0 = 10, .window = 2, .dk = 24, .dv = 40, .sigma_q = 1.0f, .poison = true},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        assert_true(check_shape(&shapes[i]) >= (forced_kern && shapes[i].dk % 8 ? 0 : shapes[i].group));
}

/* The AVX-512 loops (through SIMDe where the CPU lacks AVX-512) against
 * the one-query AVX2 path: the same shapes as the two tests above. */
static void test_group_avx512_emulated(void **state)
{
    (void)state;
#ifdef MODEL_TEST_AVX512_EMU
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (!(f->avx2 && f->fma && f->f16c))
        skip();
    forced_kern = &ops__group_kern_avx512_emu;
    test_group_equals_alone_model_shapes(state);
    test_group_equals_alone_edges(state);
    test_group_reads_only_own_rows(state);
    forced_kern = NULL;
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_equals_alone_model_shapes),
        cmocka_unit_test(test_group_equals_alone_edges),
        cmocka_unit_test(test_group_reads_only_own_rows),
        cmocka_unit_test(test_group_avx512_emulated),
    };
    return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
