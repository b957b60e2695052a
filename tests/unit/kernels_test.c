/*
 * Kernel tests: fp16/bf16 conversion, block layouts (hand-built blocks and
 * gguf-py's independent decoder), activation quantization rounding, every
 * ISA's dot products against the scalar reference and against float maths
 * on dequantized data, and kern_matmul against per-row kern_vec_dot.
 *
 * Bounds used, and why:
 *  - SIMD vs scalar dot, same inputs: both sum exact integer block sums
 *    scaled in f32, in different orders, so they differ by rounding only:
 *    |a - b| <= 4 * eps * (number of f32 additions) * sum|w_i * x_i|.
 *  - dot vs f64 dot of dequantized w and dequantized activations: same,
 *    plus the fp16 rounding of Q8_1's cached sum for Q4_1 / Q5_1.
 *  - dot vs f64 dot of dequantized w and the original f32 x: the
 *    quantization error of x, at most half a step per element plus the
 *    fp16 rounding of the scale.
 *  - matmul vs kern_vec_dot on the same ISA: bit-identical, whatever the
 *    tile, thread count or row split.
 */
#include "kernels/quants.h"

#include "core/cpu.h"
#include "core/pool.h"

#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/*
 * The AVX-512 kernels, compiled a second time against SIMDe's portable
 * AVX-512 (when libsimde-dev is installed), so they are tested on machines
 * without AVX-512 too: test_avx512_emulated runs them through AVX2.
 */
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<simde/x86/avx512.h>)
#define KERN_TEST_AVX512_EMU 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
static simde__m512 emu_cvtepi32_ps(simde__m512i a)
{
    simde__m512i_private ap = simde__m512i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++)
        r.f32[i] = (float)ap.i32[i];
    return simde__m512_from_private(r);
}
static simde__m512 emu_cvtph_ps(simde__m256i a)
{
    simde__m256i_private ap = simde__m256i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++)
        r.f32[i] = kern_f16_to_f32(ap.u16[i]);
    return simde__m512_from_private(r);
}
/* SIMDe 0.7 lacks or mis-declares a few aliases. */
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps(a) emu_cvtepi32_ps(a)
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps(a) emu_cvtph_ps(a)
static simde__m512i emu_cvtepu8_epi32(simde__m128i a)
{
    simde__m128i_private ap = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = ap.u8[i];
    return simde__m512i_from_private(r);
}
#undef _mm512_cvtepu8_epi32
#define _mm512_cvtepu8_epi32(a) emu_cvtepu8_epi32(a)
static simde__m512i emu_cvtepi8_epi32(simde__m128i a)
{
    simde__m128i_private ap = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = ap.i8[i];
    return simde__m512i_from_private(r);
}
#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32(a) emu_cvtepi8_epi32(a)
#define kern__ops_avx512 kern__ops_avx512_emu
#define kern__rp_q4_K_avx512 kern__rp_q4_K_avx512_emu
#define kern__rp_q6_K_avx512 kern__rp_q6_K_avx512_emu
void kern__rp_q4_K_avx512_emu(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y,
                              int64_t ldy);
void kern__rp_q6_K_avx512_emu(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y,
                              int64_t ldy);
#include "kernels/cpu/quant_avx512.c"
#include "kernels/cpu/repack_avx512.c"
#undef kern__rp_q4_K_avx512
#undef kern__rp_q6_K_avx512
#undef kern__ops_avx512
#pragma GCC pop_options
#endif
#endif

/* ---- helpers ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd_u32() >> 8) * 0x1p-24f; }
static float rnd_normal(void)
{
    float s = 0;
    for (int i = 0; i < 6; i++)
        s += rnd_uniform(-1, 1);
    return s * 0.7f;
}

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static const enum gguf_dtype g_weight_types[] = {
    GGUF_DTYPE_F32,  GGUF_DTYPE_F16,  GGUF_DTYPE_BF16, GGUF_DTYPE_Q4_0, GGUF_DTYPE_Q4_1,
    GGUF_DTYPE_Q5_0, GGUF_DTYPE_Q5_1, GGUF_DTYPE_Q8_0, GGUF_DTYPE_Q2_K, GGUF_DTYPE_Q3_K,
    GGUF_DTYPE_Q4_K, GGUF_DTYPE_Q5_K, GGUF_DTYPE_Q6_K,
};
#define N_WEIGHT_TYPES (sizeof g_weight_types / sizeof g_weight_types[0])

static const char *const g_isas[] = {"scalar", "avx2", "avx512"};

/* Byte offsets of the fp16 scale fields in one block (-1 ends the list). */
static const int *fp16_fields(enum gguf_dtype t)
{
    static const int d0[] = {0, -1}, dm0[] = {0, 2, -1}, q2k[] = {80, 82, -1}, q3k[] = {108, -1}, q6k[] = {208, -1},
                     none[] = {-1};
    switch (t) {
    case GGUF_DTYPE_Q4_0:
    case GGUF_DTYPE_Q5_0:
    case GGUF_DTYPE_Q8_0:
        return d0;
    case GGUF_DTYPE_Q4_1:
    case GGUF_DTYPE_Q5_1:
    case GGUF_DTYPE_Q4_K:
    case GGUF_DTYPE_Q5_K:
        return dm0;
    case GGUF_DTYPE_Q2_K:
        return q2k;
    case GGUF_DTYPE_Q3_K:
        return q3k;
    case GGUF_DTYPE_Q6_K:
        return q6k;
    default:
        return none;
    }
}

/* A random row of n elements of weight type t: random quant bytes with
 * sane fp16 scales (|d| in [1e-3, 1e-1]) so nothing is inf or NaN. */
static void random_row(enum gguf_dtype t, void *dst, int64_t n)
{
    size_t bytes = kern_row_bytes(t, n);
    uint8_t *p = dst;
    if (t == GGUF_DTYPE_F32) {
        for (int64_t i = 0; i < n; i++)
            ((float *)dst)[i] = rnd_normal();
        return;
    }
    if (t == GGUF_DTYPE_F16 || t == GGUF_DTYPE_BF16) {
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = t == GGUF_DTYPE_F16 ? kern_f32_to_f16(rnd_normal()) : kern_f32_to_bf16(rnd_normal());
        return;
    }
    for (size_t i = 0; i < bytes; i++)
        p[i] = (uint8_t)rnd_u32();
    const struct kern__traits *tr = kern__traits(t);
    const int *f = fp16_fields(t);
    for (int64_t b = 0; b < n / tr->block; b++)
        for (int i = 0; f[i] >= 0; i++) {
            float v = rnd_uniform(1e-3f, 1e-1f) * (rnd_u32() & 1 ? -1.0f : 1.0f);
            uint16_t h = kern_f32_to_f16(v);
            memcpy(p + (size_t)b * (size_t)tr->bytes + (size_t)f[i], &h, 2);
        }
}

static int isa_ok(const char *name) { return kern_set_isa(name) == 0; }

/* ---- fp16 / bf16 ---- */

static void test_f16_round_trip_all(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_f16_to_f32((uint16_t)h);
        int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
        if (is_nan) {
            assert_true(isnan(f));
            uint16_t back = kern_f32_to_f16(f);
            assert_true((back & 0x7c00) == 0x7c00 && (back & 0x3ff) != 0);
            continue;
        }
        if (kern_f32_to_f16(f) != h)
            fail_msg("fp16 0x%04x -> %g -> 0x%04x", h, (double)f, kern_f32_to_f16(f));
    }
}

static void test_f16_rounding(void **state)
{
    (void)state;
    assert_int_equal(kern_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(kern_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie -> even (down) */
    assert_int_equal(kern_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie -> even (up) */
    assert_int_equal(kern_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    assert_int_equal(kern_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(kern_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(kern_f32_to_f16(65520.0f), 0x7c00); /* tie at max -> inf */
    assert_int_equal(kern_f32_to_f16(-1e9f), 0xfc00);
    assert_int_equal(kern_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(kern_f32_to_f16(-INFINITY), 0xfc00);
    assert_true((kern_f32_to_f16(NAN) & 0x7fff) > 0x7c00);
    assert_int_equal(kern_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(kern_f32_to_f16(0x1p-24f), 0x0001); /* smallest subnormal */
    assert_int_equal(kern_f32_to_f16(0x1p-25f), 0x0000); /* tie -> even (0) */
    assert_int_equal(kern_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    assert_int_equal(kern_f32_to_f16(3 * 0x1p-25f), 0x0002); /* 1.5 ulp -> 2 */
    assert_int_equal(kern_f32_to_f16(-3 * 0x1p-25f), 0x8002);
    assert_int_equal(kern_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400); /* tie -> min normal */
    assert_int_equal(kern_f32_to_f16(1e-30f), 0x0000);
    assert_true(kern_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(kern_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    assert_true(kern_f16_to_f32(0xfc00) == -INFINITY);
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2,fma,f16c"))) static uint16_t hw_f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, 0); }
#endif

/* Random f32 values of every magnitude against the CPU's own conversion. */
static void test_f16_vs_hardware(void **state)
{
    (void)state;
#if defined(__x86_64__)
    /* hw_f32_to_f16 is compiled for avx2 too (it shares the SIMDe block's target). */
    if (!lmd_cpu_features()->f16c || !lmd_cpu_features()->avx2)
        skip();
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = rnd_u32() ^ (rnd_u32() << 16);
        float f = bits_f(u);
        if (isnan(f))
            continue;
        uint16_t a = kern_f32_to_f16(f), b = hw_f32_to_f16(f);
        if (a != b)
            fail_msg("f32 0x%08x: 0x%04x, hardware 0x%04x", u, a, b);
    }
#else
    skip();
#endif
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(kern_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(kern_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie -> even (down) */
    assert_int_equal(kern_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even (up) */
    assert_int_equal(kern_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    assert_int_equal(kern_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(kern_f32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(kern_f32_to_bf16(FLT_MAX), 0x7f80); /* rounds up to inf */
    assert_true(isnan(kern_bf16_to_f32(kern_f32_to_bf16(NAN))));
    assert_true(isnan(kern_bf16_to_f32(kern_f32_to_bf16(bits_f(0x7f800001u))))); /* low-payload NaN stays NaN */
    assert_int_equal(kern_f32_to_bf16(bits_f(0x00018000u)), 0x0002);             /* subnormal tie -> even */
    assert_int_equal(kern_f32_to_bf16(bits_f(0x00008000u)), 0x0000);
    assert_int_equal(kern_f32_to_bf16(bits_f(0x00008001u)), 0x0001);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            assert_int_equal(kern_f32_to_bf16(f), h);
        assert_int_equal(f_bits(f), h << 16);
    }
}

/* ---- layouts: hand-built blocks ---- */

static void put_h(void *p, float v)
{
    uint16_t h = kern_f32_to_f16(v);
    memcpy(p, &h, 2);
}

static void test_dequant_legacy_by_hand(void **state)
{
    (void)state;
    float out[32];
    kern_set_isa("scalar");

    struct kern__q4_0 q4 = {0};
    put_h(&q4.d, 0.5f);
    q4.qs[0] = 0x2F; /* element 0: 15 - 8 = 7, element 16: 2 - 8 = -6 */
    q4.qs[5] = 0x80; /* element 5: -8, element 21: 0 */
    kern_dequant_row(GGUF_DTYPE_Q4_0, &q4, out, 32);
    assert_true(out[0] == 3.5f && out[16] == -3.0f && out[5] == -4.0f && out[21] == 0.0f && out[1] == -4.0f);

    struct kern__q4_1 q41 = {0};
    put_h(&q41.d, 2.0f);
    put_h(&q41.m, -1.0f);
    q41.qs[3] = 0x51;
    kern_dequant_row(GGUF_DTYPE_Q4_1, &q41, out, 32);
    assert_true(out[3] == 1.0f && out[19] == 9.0f && out[0] == -1.0f);

    struct kern__q5_0 q5 = {0};
    put_h(&q5.d, 1.0f);
    q5.qs[2] = 0x3A; /* element 2: 10, element 18: 3 */
    q5.qh[0] = 0x04; /* bit 2: element 2 gets 16 */
    q5.qh[2] = 0x04; /* bit 18: element 18 gets 16 */
    kern_dequant_row(GGUF_DTYPE_Q5_0, &q5, out, 32);
    assert_true(out[2] == 10.0f && out[18] == 3.0f && out[0] == -16.0f && out[31] == -16.0f);

    struct kern__q5_1 q51 = {0};
    put_h(&q51.d, 1.0f);
    put_h(&q51.m, 0.5f);
    q51.qs[15] = 0xF0;
    q51.qh[3] = 0x80; /* bit 31: element 31 */
    kern_dequant_row(GGUF_DTYPE_Q5_1, &q51, out, 32);
    assert_true(out[15] == 0.5f && out[31] == 31.5f);

    struct kern__q8_0 q8 = {0};
    put_h(&q8.d, 0.25f);
    q8.qs[7] = -128;
    q8.qs[31] = 127;
    kern_dequant_row(GGUF_DTYPE_Q8_0, &q8, out, 32);
    assert_true(out[7] == -32.0f && out[31] == 31.75f && out[0] == 0.0f);
}

static void test_dequant_kquants_by_hand(void **state)
{
    (void)state;
    float out[256];
    kern_set_isa("scalar");

    /* Q2_K: element 16*g + l of 128-half h uses scales[8h + g] and bits
     * (qs[32h + 16*(g&1) + l] >> 2*(g/2)) & 3. */
    struct kern__q2_K q2;
    memset(&q2, 0, sizeof q2);
    put_h(&q2.d, 1.0f);
    put_h(&q2.dmin, 0.5f);
    q2.scales[3] = 0x25;    /* group 3: scale 5, min 2 */
    q2.qs[16 + 4] = 3 << 2; /* group 3 = (g&1)=1, shift 2: element 48 + 4 */
    q2.scales[9] = 0x07;    /* half 1, group 1 */
    q2.qs[32 + 16 + 0] = 2; /* half 1, group 1, shift 0: element 128 + 16 */
    kern_dequant_row(GGUF_DTYPE_Q2_K, &q2, out, 256);
    assert_true(out[52] == 5.0f * 3 - 1.0f);
    assert_true(out[53] == -1.0f);
    assert_true(out[144] == 14.0f);

    /* Q3_K: scale 6 bits packed, -32 bias; hmask bit clear subtracts 4. */
    struct kern__q3_K q3;
    memset(&q3, 0, sizeof q3);
    put_h(&q3.d, 0.5f);
    /* Scale of group 9 = low nibble from scales[1] >> 4, high bits from
     * scales[8 + 1] >> 4. Make it 32 + 6 = 38 = 0b100110. */
    q3.scales[1] = 0x60;
    q3.scales[9] = 0x2 << 4;
    /* Group 9: half 1, plane 0 (shift 0), k = 1: element 128 + 16 + l, bits
     * in qs[32 + 16 + l], high bit in hmask[16 + l] bit 4 (plane 4). */
    q3.qs[32 + 16 + 3] = 3;
    q3.hmask[16 + 3] = 1 << 4;
    kern_dequant_row(GGUF_DTYPE_Q3_K, &q3, out, 256);
    assert_true(out[128 + 16 + 3] == 0.5f * 6 * 3);
    assert_true(out[128 + 16 + 4] == 0.5f * 6 * -4);
    assert_true(out[0] == 0.5f * -32 * -4);

    /* Q4_K: sub-block 5 takes scale (s[9] & 15) | (s[1] >> 6) << 4 and min
     * (s[9] >> 4) | (s[5] >> 6) << 4; elements 160..191 are the high nibbles
     * of qs[64..95]. */
    struct kern__q4_K q4;
    memset(&q4, 0, sizeof q4);
    put_h(&q4.d, 0.25f);
    put_h(&q4.dmin, 1.0f);
    q4.scales[9] = 0x3A;  /* scale low 10, min low 3 */
    q4.scales[1] = 0x40;  /* scale bit 4 -> 26 */
    q4.scales[5] = 0x80;  /* min bit 5 -> 35 */
    q4.qs[64 + 7] = 0x90; /* element 167 = 9 */
    q4.scales[0] = 2;     /* sub-block 0: scale 2 */
    q4.scales[4] = 1;     /* sub-block 0: min 1 */
    q4.qs[0] = 0x0F;      /* element 0 = 15 */
    kern_dequant_row(GGUF_DTYPE_Q4_K, &q4, out, 256);
    assert_true(out[167] == 0.25f * 26 * 9 - 35.0f);
    assert_true(out[0] == 0.25f * 2 * 15 - 1.0f);
    assert_true(out[1] == -1.0f);

    /* Q5_K: as Q4_K plus qh bit g for sub-block g. */
    struct kern__q5_K q5;
    memset(&q5, 0, sizeof q5);
    put_h(&q5.d, 1.0f);
    put_h(&q5.dmin, 1.0f);
    q5.scales[3] = 1;     /* sub-block 3: scale 1, min 0 */
    q5.qs[32 + 2] = 0x50; /* element 96 + 2: high nibble 5 */
    q5.qh[2] = 1 << 3;    /* +16 */
    kern_dequant_row(GGUF_DTYPE_Q5_K, &q5, out, 256);
    assert_true(out[98] == 21.0f);
    assert_true(out[97] == 0.0f);

    /* Q6_K: element 64 + l (l < 32) of half 0 is the high nibble of ql[l]
     * with bits 4..5 of qh[l], scale sc[4 + l / 16]. */
    struct kern__q6_K q6;
    memset(&q6, 0, sizeof q6);
    put_h(&q6.d, 0.5f);
    q6.scales[5] = -3;
    q6.ql[20] = 0xA0;           /* high nibble 10 */
    q6.qh[20] = 0x30;           /* bits 4..5 = 3 -> q = 10 + 48 - 32 = 26 */
    q6.scales[8 + 7] = 2;       /* half 1, element 128 + 96 + 16 + l */
    q6.ql[64 + 32 + 16] = 0x10; /* high nibble of ql[64 + 32 + 16]: q4 of l = 16 -> 1 */
    kern_dequant_row(GGUF_DTYPE_Q6_K, &q6, out, 256);
    assert_true(out[84] == 0.5f * -3 * 26);
    assert_true(out[128 + 96 + 16] == 0.5f * 2 * (1 - 32));
}

/* ---- layouts: gguf-py vectors ---- */

static void test_dequant_vs_gguf_py(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/unit/data/kernel_vectors.bin", LMD_SOURCE_DIR);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char magic[8];
    uint32_t count;
    assert_int_equal(fread(magic, 1, 8, f), 8);
    assert_memory_equal(magic, "LMDKV001", 8);
    assert_int_equal(fread(&count, 4, 1, f), 1);
    assert_true(count >= 12);
    int seen = 0;
    for (uint32_t r = 0; r < count; r++) {
        uint32_t hdr[3];
        assert_int_equal(fread(hdr, 4, 3, f), 3);
        enum gguf_dtype t = (enum gguf_dtype)hdr[0];
        uint32_t n = hdr[1], bytes = hdr[2];
        uint8_t *data = malloc(bytes);
        float *ref = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
        assert_int_equal(fread(data, 1, bytes, f), bytes);
        assert_int_equal(fread(ref, 4, n, f), n);
        assert_true(kern_dtype_supported(t));
        assert_int_equal(kern_row_bytes(t, n), bytes);
        for (size_t i = 0; i < sizeof g_isas / sizeof g_isas[0]; i++) {
            if (!isa_ok(g_isas[i]))
                continue;
            kern_dequant_row(t, data, out, n);
            for (uint32_t j = 0; j < n; j++) {
                /* gguf-py computes some types in f16 or f64 steps; allow one f32 ulp-ish. */
                float tol = 1e-6f * fabsf(ref[j]) + 1e-12f;
                if (!(fabsf(out[j] - ref[j]) <= tol))
                    fail_msg("%s/%s element %u: lmd %.9g, gguf-py %.9g", kern__traits(t)->name, g_isas[i], j,
                             (double)out[j], (double)ref[j]);
            }
        }
        seen++;
        free(data);
        free(ref);
        free(out);
    }
    fclose(f);
    assert_int_equal(seen, (int)count);
}

/* ---- activation quantization ---- */

static void test_quantize_rounding(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_isas / sizeof g_isas[0]; i++) {
        if (!isa_ok(g_isas[i]))
            continue;
        /* Q8_0: amax 127 -> d = 1, q = x rounded to nearest even, as
         * llama.cpp's x86 quantize_row_q8_0 does (not roundf). */
        float x[256];
        for (int j = 0; j < 32; j++)
            x[j] = 0;
        x[0] = 127;
        x[1] = 2.5f;
        x[2] = -2.5f;
        x[3] = 0.49999997f;
        x[4] = -126.5f;
        struct kern__q8_0 q8;
        kern_quantize_row(GGUF_DTYPE_Q8_0, x, &q8, 32);
        assert_int_equal(q8.d, 0x3c00);
        assert_int_equal(q8.qs[0], 127);
        assert_int_equal(q8.qs[1], 2);
        assert_int_equal(q8.qs[2], -2);
        assert_int_equal(q8.qs[3], 0);
        assert_int_equal(q8.qs[4], -126);

        /* All zero: d = 0, q = 0. */
        memset(x, 0, sizeof x);
        kern_quantize_row(GGUF_DTYPE_Q8_0, x, &q8, 32);
        assert_int_equal(q8.d, 0);
        assert_int_equal(q8.qs[5], 0);

        /* Q8_1: s = fp16(d * sum q). */
        struct kern__q8_1 q81;
        x[0] = 127;
        x[1] = 10;
        x[2] = -3.5f;
        kern_quantize_row(GGUF_DTYPE_Q8_1, x, &q81, 32);
        assert_int_equal(q81.qs[2], -4);
        assert_true(kern_f16_to_f32(q81.s) == 127 + 10 - 4);

        /* Q8_K: scale from the signed max-magnitude element; nearest even. */
        struct kern__q8_K qk;
        memset(x, 0, sizeof x);
        x[10] = -127;
        x[11] = 2.5f;
        x[12] = 3.5f;
        x[200] = -0.5f;
        kern_quantize_row(GGUF_DTYPE_Q8_K, x, &qk, 256);
        assert_true(qk.d == 1.0f);
        assert_int_equal(qk.qs[10], -127);
        assert_int_equal(qk.qs[11], 2);
        assert_int_equal(qk.qs[12], 4);
        assert_int_equal(qk.qs[200], 0);
        assert_int_equal(qk.bsums[0], -127 + 2 + 4);
        x[10] = 127; /* positive max: d negative, quants flipped */
        kern_quantize_row(GGUF_DTYPE_Q8_K, x, &qk, 256);
        assert_true(qk.d == -1.0f);
        assert_int_equal(qk.qs[10], -127);
        assert_int_equal(qk.qs[11], -2);
        memset(x, 0, sizeof x);
        kern_quantize_row(GGUF_DTYPE_Q8_K, x, &qk, 256);
        assert_true(qk.d == 0.0f && qk.bsums[3] == 0 && qk.qs[7] == 0);
    }
}

/* Every ISA's quantizers produce exactly the scalar bytes. */
static void test_quantize_isa_bytes(void **state)
{
    (void)state;
    static const enum gguf_dtype acts[] = {GGUF_DTYPE_F32,  GGUF_DTYPE_F16,  GGUF_DTYPE_BF16,
                                           GGUF_DTYPE_Q8_0, GGUF_DTYPE_Q8_1, GGUF_DTYPE_Q8_K};
    const int64_t n = 4096;
    float *x = malloc(n * sizeof(float));
    uint8_t *a = malloc(n * 4), *b = malloc(n * 4);
    for (int rep = 0; rep < 20; rep++) {
        float scale = rep < 10 ? 1.0f : powf(10.0f, rnd_uniform(-6, 6));
        for (int64_t i = 0; i < n; i++)
            x[i] = rnd_normal() * scale;
        if (rep == 3)
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)(int)(rnd_uniform(-127, 127)) + 0.5f; /* many exact ties */
        for (size_t t = 0; t < sizeof acts / sizeof acts[0]; t++) {
            kern_set_isa("scalar");
            size_t bytes = kern_row_bytes(acts[t], n);
            kern_quantize_row(acts[t], x, a, n);
            for (size_t i = 1; i < sizeof g_isas / sizeof g_isas[0]; i++) {
                if (!isa_ok(g_isas[i]))
                    continue;
                memset(b, 0xAA, bytes);
                kern_quantize_row(acts[t], x, b, n);
                if (memcmp(a, b, bytes) != 0)
                    fail_msg("quantize %s differs on %s (rep %d)", kern__traits(acts[t])->name, g_isas[i], rep);
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

/* ---- dot products ---- */

struct dot_case {
    enum gguf_dtype t, at;
    int64_t n;
    void *w;   /* one weight row */
    float *x;  /* [n] f32 */
    void *xq;  /* x quantized to at (scalar quantizer) */
    float *wf; /* dequantized w */
    float *xf; /* dequantized xq */
};

static void dot_case_init(struct dot_case *c, enum gguf_dtype t, int64_t n)
{
    c->t = t;
    c->at = kern_dot_type(t);
    c->n = n;
    c->w = malloc(kern_row_bytes(t, n));
    c->x = malloc(n * sizeof(float));
    c->xq = malloc(kern_row_bytes(c->at, n) + 64);
    c->wf = malloc(n * sizeof(float));
    c->xf = malloc(n * sizeof(float));
    random_row(t, c->w, n);
    for (int64_t i = 0; i < n; i++)
        c->x[i] = rnd_normal();
    kern_set_isa("scalar");
    kern_quantize_row(c->at, c->x, c->xq, n);
    kern_dequant_row(t, c->w, c->wf, n);
    kern_dequant_row(c->at, c->xq, c->xf, n);
}

static void dot_case_free(struct dot_case *c)
{
    free(c->w);
    free(c->x);
    free(c->xq);
    free(c->wf);
    free(c->xf);
}

/* Rounding allowance for an f32 sum: 4 eps per addition, relative to
 * sum |w_i x_i|. */
static double sum_bound(const struct dot_case *c, double sum_abs)
{
    int64_t adds = c->n / kern_block_size(c->t) * 2 + 64;
    return 4.0 * 0x1p-24 * (double)adds * sum_abs + 1e-30;
}

static void test_dot_vs_reference(void **state)
{
    (void)state;
    static const int64_t lens[] = {256, 512, 1024, 2560, 4096};
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        enum gguf_dtype t = g_weight_types[ti];
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            for (int rep = 0; rep < 4; rep++) {
                struct dot_case c;
                dot_case_init(&c, t, lens[li]);
                double exact = 0, sum_abs = 0, exact_x = 0, qerr = 0, s_err = 0;
                for (int64_t i = 0; i < c.n; i++) {
                    exact += (double)c.wf[i] * c.xf[i];
                    sum_abs += fabs((double)c.wf[i] * c.xf[i]);
                    exact_x += (double)c.wf[i] * c.x[i];
                    qerr += fabs((double)c.wf[i]) * fabs((double)c.x[i] - c.xf[i]);
                }
                if (c.at == GGUF_DTYPE_Q8_1) {
                    /* The Q8_1 sum is rounded to fp16: the m * s term is off by up to half an fp16 ulp. */
                    const uint8_t *wb = c.w;
                    const struct kern__q8_1 *xb = c.xq;
                    for (int64_t b = 0; b < c.n / 32; b++) {
                        uint16_t mh;
                        memcpy(&mh, wb + b * kern_row_bytes(t, 32) + 2, 2);
                        s_err += fabs(kern_f16_to_f32(mh)) * fabs(kern_f16_to_f32(xb[b].s)) * 0x1p-10;
                    }
                }
                /* Quantizing x is the only approximation between these two. */
                assert_true(fabs(exact - exact_x) <= qerr * (1 + 1e-6) + 1e-12);

                kern_set_isa("scalar");
                float ref = kern_vec_dot(t, c.n, c.w, c.xq);
                double bound = sum_bound(&c, sum_abs);
                if (!(fabs(ref - exact) <= bound + s_err))
                    fail_msg("%s n=%lld scalar %.9g vs exact %.9g (bound %.3g)", kern__traits(t)->name, (long long)c.n,
                             (double)ref, exact, bound + s_err);
                for (size_t i = 1; i < sizeof g_isas / sizeof g_isas[0]; i++) {
                    if (!isa_ok(g_isas[i]))
                        continue;
                    float v = kern_vec_dot(t, c.n, c.w, c.xq);
                    if (!(fabs(v - ref) <= bound))
                        fail_msg("%s n=%lld %s %.9g vs scalar %.9g (bound %.3g)", kern__traits(t)->name, (long long)c.n,
                                 g_isas[i], (double)v, (double)ref, bound);
                    if (!(fabs(v - exact) <= bound + s_err))
                        fail_msg("%s n=%lld %s %.9g vs exact %.9g", kern__traits(t)->name, (long long)c.n, g_isas[i],
                                 (double)v, exact);
                }
                dot_case_free(&c);
            }
        }
    }
}

/* Extreme quant values: every quant at its largest magnitude, so any
 * int16 saturation in a SIMD path would show. */
static void test_dot_extremes(void **state)
{
    (void)state;
    const int64_t n = 1024;
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        enum gguf_dtype t = g_weight_types[ti];
        if (kern_block_size(t) == 1)
            continue;
        for (int pattern = 0; pattern < 4; pattern++) {
            struct dot_case c;
            dot_case_init(&c, t, n);
            /* All quant bits set or clear, scales and mins kept sane. */
            uint8_t *p = c.w;
            size_t bytes = kern_row_bytes(t, n);
            uint8_t fill = pattern & 1 ? 0xFF : 0x00;
            uint8_t *save = malloc(bytes);
            memcpy(save, p, bytes);
            memset(p, fill, bytes);
            const struct kern__traits *tr = kern__traits(t);
            const int *f = fp16_fields(t);
            for (int64_t b = 0; b < n / tr->block; b++)
                for (int i = 0; f[i] >= 0; i++)
                    memcpy(p + b * tr->bytes + f[i], save + b * tr->bytes + f[i], 2);
            free(save);
            /* Activations: all +127 or alternating sign at full scale. */
            for (int64_t i = 0; i < n; i++)
                c.x[i] = pattern & 2 ? (i & 1 ? -1.0f : 1.0f) : 1.0f;
            kern_set_isa("scalar");
            kern_quantize_row(c.at, c.x, c.xq, n);
            kern_dequant_row(t, c.w, c.wf, n);
            kern_dequant_row(c.at, c.xq, c.xf, n);
            double exact = 0, sum_abs = 0;
            for (int64_t i = 0; i < n; i++) {
                exact += (double)c.wf[i] * c.xf[i];
                sum_abs += fabs((double)c.wf[i] * c.xf[i]);
            }
            float ref = kern_vec_dot(t, n, c.w, c.xq);
            double bound = sum_bound(&c, sum_abs) + (c.at == GGUF_DTYPE_Q8_1 ? 1e-3 * sum_abs : 0);
            assert_true(fabs(ref - exact) <= bound);
            for (size_t i = 1; i < sizeof g_isas / sizeof g_isas[0]; i++) {
                if (!isa_ok(g_isas[i]))
                    continue;
                float v = kern_vec_dot(t, n, c.w, c.xq);
                if (!(fabs(v - ref) <= sum_bound(&c, sum_abs)))
                    fail_msg("%s pattern %d %s %.9g vs scalar %.9g", tr->name, pattern, g_isas[i], (double)v,
                             (double)ref);
            }
            dot_case_free(&c);
        }
    }
}

/* ---- matmul ---- */

/* Y = X . W^T by kern_matmul (or, with packed, kern_matmul_packed over a
 * kern_repack copy where the type has one) against per-row vec_dots, bit
 * for bit. */
static void check_matmul2(enum gguf_dtype t, int64_t n, int64_t k, int64_t m, struct lmd_pool *pool, const char *isa,
                          bool packed)
{
    size_t rb = kern_row_bytes(t, k);
    size_t ws = rb + (k % 512 == 0 ? 32 : 0); /* some cases with padded rows */
    uint8_t *w = malloc(ws * (size_t)n);
    for (int64_t r = 0; r < n; r++)
        random_row(t, w + r * ws, k);
    float *x = malloc((size_t)(m * k) * sizeof(float));
    for (int64_t i = 0; i < m * k; i++)
        x[i] = rnd_normal();
    int64_t ldy = n + 3;
    float *y = malloc((size_t)(m * ldy) * sizeof(float));
    for (int64_t i = 0; i < m * ldy; i++)
        y[i] = -12345.0f;
    size_t sb = kern_matmul_scratch_bytes(t, k, m);
    void *scratch = malloc(sb ? sb : 1);
    size_t pb = packed ? kern_repack_bytes(t, n, k) : 0;
    void *pw = pb ? aligned_alloc(64, (pb + 63) / 64 * 64) : NULL;
    if (pw)
        kern_repack(pool, t, w, ws, n, k, pw);
    kern_matmul_packed(pool, t, w, ws, pw, n, k, x, m, y, ldy, scratch);
    free(pw);

    enum gguf_dtype at = kern_dot_type(t);
    void *xq = malloc(kern_row_bytes(at, k));
    for (int64_t i = 0; i < m; i++) {
        kern_quantize_row(at, x + i * k, xq, k);
        for (int64_t r = 0; r < n; r++) {
            float v = kern_vec_dot(t, k, w + r * ws, xq);
            if (f_bits(v) != f_bits(y[i * ldy + r]))
                fail_msg("%s %s%s n=%lld k=%lld m=%lld threads=%d: y[%lld][%lld] = %.9g, vec_dot %.9g",
                         kern__traits(t)->name, isa, pb ? " repacked" : "", (long long)n, (long long)k, (long long)m,
                         lmd_pool_threads(pool), (long long)i, (long long)r, (double)y[i * ldy + r], (double)v);
        }
        for (int64_t r = n; r < ldy; r++)
            assert_true(y[i * ldy + r] == -12345.0f); /* padding untouched */
    }
    free(xq);
    free(scratch);
    free(y);
    free(x);
    free(w);
}

static void check_matmul(enum gguf_dtype t, int64_t n, int64_t k, int64_t m, struct lmd_pool *pool, const char *isa)
{
    check_matmul2(t, n, k, m, pool, isa, false);
    check_matmul2(t, n, k, m, pool, isa, true);
}

static void test_matmul_matches_vec_dot(void **state)
{
    (void)state;
    struct lmd_pool *pools[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(lmd_pool_init(&pools[i], i + 1, NULL), 0);
    static const int64_t ms[] = {1, 2, 3, 5, 8, 13, 33};
    static const int64_t ns[] = {1, 7, 64, 100};
    for (size_t s = 0; s < sizeof g_isas / sizeof g_isas[0]; s++) {
        if (!isa_ok(g_isas[s]))
            continue;
        for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
            enum gguf_dtype t = g_weight_types[ti];
            int64_t k = kern_block_size(t) == 256 ? 512 : 96;
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
                    check_matmul(t, ns[ni], k, ms[mi], pools[(mi + ni) % 3], g_isas[s]);
            /* Larger shapes, so rows and X are split into several blocks. */
            check_matmul(t, 300, 2048, 70, pools[1], g_isas[s]);
            check_matmul(t, 1000, 1024, 1, pools[2], g_isas[s]);
        }
    }
    for (int i = 0; i < 3; i++)
        lmd_pool_free(pools[i]);
}

/* The types with a repacked layout (kern_repack). */
static const enum gguf_dtype g_repacked_types[] = {GGUF_DTYPE_Q4_K, GGUF_DTYPE_Q6_K};
#define N_REPACKED_TYPES (sizeof g_repacked_types / sizeof g_repacked_types[0])

/*
 * The repacked tiles over many shapes, bit for bit against per-row
 * vec_dots: n with a tail of rows past the last 8-row group (which take
 * the original layout) and odd group counts (the AVX-512 tile pairs
 * groups), every m from 2 to 20 (partial tiles of KERN__RP_TX rows), and
 * several k. Both SIMD paths have the layouts; the scalar path has none
 * and runs the original rows.
 */
static void test_matmul_repacked_shapes(void **state)
{
    (void)state;
    struct lmd_pool *pool;
    assert_int_equal(lmd_pool_init(&pool, 2, NULL), 0);
    static const int64_t ns[] = {8, 13, 16, 29, 40};
    static const int64_t ks[] = {256, 768, 1536};
    for (size_t s = 0; s < sizeof g_isas / sizeof g_isas[0]; s++) {
        if (!isa_ok(g_isas[s]))
            continue;
        bool simd = strcmp(g_isas[s], "scalar") != 0;
        for (size_t ti = 0; ti < N_REPACKED_TYPES; ti++) {
            enum gguf_dtype t = g_repacked_types[ti];
            assert_int_equal(kern_repack_bytes(t, 7, 256), 0); /* no full group */
            if (!simd) {
                assert_int_equal(kern_repack_bytes(t, 8, 256), 0);
                continue;
            }
            assert_true(kern_repack_bytes(t, 8, 256) > 0);
            assert_int_equal(kern_repack_bytes(t, 29, 768), 3 * kern_repack_bytes(t, 8, 768));
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
                    for (int64_t m = 2; m <= 20; m++)
                        check_matmul2(t, ns[ni], ks[ki], m, pool, g_isas[s], true);
        }
    }
    lmd_pool_free(pool);
    kern_init();
}

/*
 * On a CPU with AVX-512, the real AVX-512 table gives the AVX2 table's
 * bits for every weight type, length (tails included) and batch shape: a
 * model's output must not depend on which of the two paths a machine
 * takes (the engine golden tests rely on it). Without AVX-512 there is
 * nothing to run; test_avx512_emulated covers the same code through SIMDe.
 */
static void test_avx512_equals_avx2(void **state)
{
    (void)state;
    if (!isa_ok("avx512") || !isa_ok("avx2"))
        skip();
    static const int64_t lens[] = {256, 512, 1056, 2560, 4096};
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        enum gguf_dtype t = g_weight_types[ti];
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            if (lens[li] % kern_block_size(t))
                continue;
            for (int rep = 0; rep < 3; rep++) {
                struct dot_case c;
                dot_case_init(&c, t, lens[li]);
                assert_int_equal(kern_set_isa("avx2"), 0);
                float a = kern_vec_dot(t, c.n, c.w, c.xq);
                assert_int_equal(kern_set_isa("avx512"), 0);
                float b = kern_vec_dot(t, c.n, c.w, c.xq);
                if (f_bits(a) != f_bits(b))
                    fail_msg("%s n=%lld: avx512 %.9g, avx2 %.9g", kern__traits(t)->name, (long long)c.n, (double)b,
                             (double)a);
                dot_case_free(&c);
            }
        }
    }
    kern_init();
}

/* ---- AVX-512 through emulation ---- */

#ifdef KERN_TEST_AVX512_EMU
/* The emulated AVX-512 table against the scalar reference (bounded), the
 * AVX2 kernels (bit-identical: every AVX-512 kernel keeps AVX2's f32
 * steps, see quant_avx512.c), and itself over every tile shape, with and
 * without f32 scales. */
static void test_avx512_emulated(void **state)
{
    (void)state;
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (!f->avx2 || !f->fma || !f->f16c)
        skip();
    static const enum gguf_dtype ts[] = {GGUF_DTYPE_Q4_0, GGUF_DTYPE_Q5_0, GGUF_DTYPE_Q8_0, GGUF_DTYPE_Q4_K,
                                         GGUF_DTYPE_Q6_K, GGUF_DTYPE_F32,  GGUF_DTYPE_F16};
    enum { NW = 5, M = 11 };
    for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
        enum gguf_dtype t = ts[ti], at = kern_dot_type(t);
        int64_t bs = kern_block_size(t);
        const int64_t ks[] = {bs == 256 ? 256 : 32, bs == 256 ? 512 : 96, bs == 256 ? 2048 : 1056,
                              bs == 1 ? 37 : 2 * 256};
        for (size_t ki = 0; ki < 4; ki++) {
            int64_t k = ks[ki];
            size_t rb = kern_row_bytes(t, k), xb = kern_row_bytes(at, k);
            uint8_t *w = malloc(rb * NW), *xq = malloc(xb * M);
            float *x = malloc((size_t)k * M * sizeof(float)), *wf = malloc((size_t)k * sizeof(float)),
                  *xf = malloc((size_t)k * sizeof(float));
            int64_t nb = k / KERN_QK;
            float *xd = calloc((size_t)(2 * nb * KERN__XD_LANES + 1), sizeof(float));
            float ref[NW][M], emu[NW][M], avx2[NW][M];
            for (int r = 0; r < NW; r++)
                random_row(t, w + r * rb, k);
            for (int64_t i = 0; i < k * M; i++)
                x[i] = rnd_normal();
            for (int j = 0; j < M; j++)
                kern__ops_scalar.type[at].quant(x + j * k, xq + j * xb, k);
            if (at == GGUF_DTYPE_Q8_0)
                for (int j = 0; j < M; j++)
                    for (int64_t b = 0; b < nb; b++) {
                        uint16_t h;
                        memcpy(&h, xq + j * xb + b * sizeof(struct kern__q8_0), 2);
                        xd[(j / KERN__XD_LANES) * nb * KERN__XD_LANES + b * KERN__XD_LANES + j % KERN__XD_LANES] =
                            kern_f16_to_f32(h);
                    }
            for (int i = 0; i < NW; i++)
                for (int j = 0; j < M; j++) {
                    struct kern__tile tl = {.w = w + i * rb, .nw = 1, .x = xq + j * xb, .nx = 1, .ldy = 1};
                    tl.y = &ref[i][j];
                    kern__ops_scalar.type[t].dot(k, &tl);
                    tl.y = &emu[i][j];
                    kern__ops_avx512_emu.type[t].dot(k, &tl);
                    tl.y = &avx2[i][j];
                    kern__ops_avx2.type[t].dot(k, &tl);
                    kern_set_isa("scalar");
                    kern_dequant_row(t, w + i * rb, wf, k);
                    kern_dequant_row(at, xq + j * xb, xf, k);
                    double sum_abs = 0;
                    for (int64_t e = 0; e < k; e++)
                        sum_abs += fabs((double)wf[e] * xf[e]);
                    double bound = 4.0 * 0x1p-24 * (double)(k / bs * 2 + 64) * sum_abs + 1e-30;
                    if (!(fabs(emu[i][j] - ref[i][j]) <= bound))
                        fail_msg("avx512(emu) %s k=%lld: %.9g, scalar %.9g", kern__traits(t)->name, (long long)k,
                                 (double)emu[i][j], (double)ref[i][j]);
                    if (f_bits(emu[i][j]) != f_bits(avx2[i][j]))
                        fail_msg("avx512(emu) %s k=%lld: %.9g, avx2 %.9g", kern__traits(t)->name, (long long)k,
                                 (double)emu[i][j], (double)avx2[i][j]);
                }
            for (int use_xd = 0; use_xd < 2; use_xd++)
                for (int nw = 1; nw <= 4; nw++)
                    for (int j0 = 0; j0 < M; j0 += KERN__XD_LANES)
                        for (int nx = 1; nx <= 8 && j0 + nx <= M; nx++) {
                            float yt[8 * 4];
                            struct kern__tile tl = {
                                .w = w,
                                .ws = rb,
                                .nw = nw,
                                .x = xq + j0 * xb,
                                .xs = xb,
                                .nx = nx,
                                .xd = use_xd && at == GGUF_DTYPE_Q8_0 ? xd + (j0 / KERN__XD_LANES) * nb * KERN__XD_LANES
                                                                      : NULL,
                                .y = yt,
                                .ldy = 4,
                            };
                            kern__ops_avx512_emu.type[t].dot(k, &tl);
                            for (int i = 0; i < nw; i++)
                                for (int j = 0; j < nx; j++)
                                    if (f_bits(yt[j * 4 + i]) != f_bits(emu[i][j0 + j]))
                                        fail_msg("avx512(emu) %s tile %dx%d (xd %d): %.9g vs %.9g",
                                                 kern__traits(t)->name, nw, nx, use_xd, (double)yt[j * 4 + i],
                                                 (double)emu[i][j0 + j]);
                        }
            free(w);
            free(xq);
            free(x);
            free(wf);
            free(xf);
            free(xd);
        }
    }
    kern_init();
}

/* The emulated AVX-512 repacked tiles (one group: 256-bit VNNI; two
 * groups: 512-bit) against the AVX2 vec_dot, bit for bit, for every
 * activation row count a call takes. */
static void test_avx512_repacked_emulated(void **state)
{
    (void)state;
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (!f->avx2 || !f->fma || !f->f16c)
        skip();
    assert_int_equal(kern_set_isa("avx2"), 0);
    enum { N = 16, M = KERN__RP_TX };
    /* Random rows at two lengths, then every quant bit set against
     * activations at full scale (-128 after Q8_K's rounding, and alternating
     * signs): the integer sums at their extremes, where the 512-bit tiles
     * pack four-product sums into int16. */
    for (size_t ti = 0; ti < N_REPACKED_TYPES * 4; ti++) {
        const enum gguf_dtype t = g_repacked_types[ti % N_REPACKED_TYPES];
        const int variant = (int)(ti / N_REPACKED_TYPES); /* 0, 1: random; 2, 3: extremes */
        int64_t k = variant == 0 ? 256 : 1024;
        size_t rb = kern_row_bytes(t, k), xb = kern_row_bytes(GGUF_DTYPE_Q8_K, k);
        uint8_t *w = malloc(rb * N), *xq = malloc(xb * M);
        float *x = malloc((size_t)k * sizeof(float));
        for (int r = 0; r < N; r++) {
            random_row(t, w + r * rb, k);
            if (variant >= 2) {
                const struct kern__traits *tr = kern__traits(t);
                const int *fp = fp16_fields(t);
                for (int64_t b = 0; b < k / tr->block; b++) {
                    uint8_t *blk = w + r * rb + b * tr->bytes, keep[8][2];
                    int nf = 0;
                    for (; fp[nf] >= 0; nf++)
                        memcpy(keep[nf], blk + fp[nf], 2);
                    memset(blk, 0xFF, tr->bytes);
                    for (int i = 0; i < nf; i++)
                        memcpy(blk + fp[i], keep[i], 2);
                }
            }
        }
        for (int j = 0; j < M; j++) {
            for (int64_t i = 0; i < k; i++)
                x[i] = variant < 2 ? rnd_normal() : variant == 2 || j % 2 ? 1.0f : (i & 1 ? -1.0f : 1.0f);
            kern_quantize_row(GGUF_DTYPE_Q8_K, x, xq + j * xb, k);
        }
        size_t pb = kern_repack_bytes(t, N, k);
        assert_true(pb > 0);
        void *pw = aligned_alloc(64, (pb + 63) / 64 * 64);
        kern_repack(NULL, t, w, rb, N, k, pw);
        for (int ng = 1; ng <= 2; ng++)
            for (int nx = 1; nx <= M; nx++) {
                float y[M][N + 1];
                for (int j = 0; j < M; j++)
                    for (int r = 0; r <= N; r++)
                        y[j][r] = -1.0f;
                kern__ops_avx512_emu.type[t].rp(k / KERN_QK_K, pw, ng, xq, xb, nx, &y[0][0], N + 1);
                for (int j = 0; j < M; j++)
                    for (int r = 0; r <= N; r++) {
                        float want =
                            j < nx && r < ng * KERN__RP_ROWS ? kern_vec_dot(t, k, w + r * rb, xq + j * xb) : -1.0f;
                        if (f_bits(y[j][r]) != f_bits(want))
                            fail_msg("avx512(emu) repacked %s k=%lld ng=%d nx=%d y[%d][%d] = %.9g, avx2 %.9g",
                                     kern__traits(t)->name, (long long)k, ng, nx, j, r, (double)y[j][r], (double)want);
                    }
            }
        free(pw);
        free(x);
        free(xq);
        free(w);
    }
    kern_init();
}
#else
static void test_avx512_repacked_emulated(void **state)
{
    (void)state;
    skip(); /* needs SIMDe (libsimde-dev) */
}

static void test_avx512_emulated(void **state)
{
    (void)state;
    skip(); /* needs SIMDe (libsimde-dev) */
}
#endif

static void test_isa_selection(void **state)
{
    (void)state;
    kern_init();
    const char *best = kern_isa();
    assert_true(strcmp(best, "scalar") == 0 || strcmp(best, "avx2") == 0 || strcmp(best, "avx512") == 0);
    assert_int_equal(kern_set_isa("scalar"), 0);
    assert_string_equal(kern_isa(), "scalar");
    assert_int_equal(kern_set_isa("nonsense"), LMD_EINVAL);
    if (!lmd_cpu_features()->avx512f)
        assert_int_equal(kern_set_isa("avx512"), LMD_ENOTSUP);
    assert_int_equal(kern_set_isa(best), 0);

    assert_true(kern_dtype_supported(GGUF_DTYPE_Q4_K));
    assert_false(kern_dtype_supported(GGUF_DTYPE_IQ2_XXS));
    assert_false(kern_dtype_supported(GGUF_DTYPE_Q8_K)); /* activation only */
    assert_false(kern_dtype_supported((enum gguf_dtype)77));
    assert_int_equal(kern_dot_type(GGUF_DTYPE_Q5_0), GGUF_DTYPE_Q8_0);
    assert_int_equal(kern_dot_type(GGUF_DTYPE_Q4_1), GGUF_DTYPE_Q8_1);
    assert_int_equal(kern_dot_type(GGUF_DTYPE_Q6_K), GGUF_DTYPE_Q8_K);
    assert_int_equal(kern_dot_type(GGUF_DTYPE_F16), GGUF_DTYPE_F16);
    assert_int_equal(kern_row_bytes(GGUF_DTYPE_Q4_K, 512), 288);
    assert_int_equal(kern_row_bytes(GGUF_DTYPE_Q4_K, 500), 0);
    assert_int_equal(kern_row_bytes(GGUF_DTYPE_F16, 3), 6);
    assert_int_equal(kern_matmul_scratch_bytes(GGUF_DTYPE_F32, 64, 4), 0);
    assert_true(kern_matmul_scratch_bytes(GGUF_DTYPE_Q8_0, 64, 4) >= 4 * 68);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_selection),
        cmocka_unit_test(test_f16_round_trip_all),
        cmocka_unit_test(test_f16_rounding),
        cmocka_unit_test(test_f16_vs_hardware),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_dequant_legacy_by_hand),
        cmocka_unit_test(test_dequant_kquants_by_hand),
        cmocka_unit_test(test_dequant_vs_gguf_py),
        cmocka_unit_test(test_quantize_rounding),
        cmocka_unit_test(test_quantize_isa_bytes),
        cmocka_unit_test(test_dot_vs_reference),
        cmocka_unit_test(test_dot_extremes),
        cmocka_unit_test(test_matmul_matches_vec_dot),
        cmocka_unit_test(test_matmul_repacked_shapes),
        cmocka_unit_test(test_avx512_emulated),
        cmocka_unit_test(test_avx512_repacked_emulated),
        cmocka_unit_test(test_avx512_equals_avx2),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    kern_init();
    return rc;
}
