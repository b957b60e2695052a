/*
 * AVX-512 kernels (F, BW, VL, DQ, VNNI): Q4_0, Q5_0, Q8_0, Q4_K, Q6_K,
 * F32 and F16 dot products, and the AVX-512 ISA table. Every other entry
 * is the AVX2 one (the AVX-512 path requires AVX2 as well).
 *
 * The contract: every kernel here returns the same bits as its AVX2
 * counterpart (kernels_test checks it on every machine with AVX-512), so
 * a model's output does not depend on which of the two paths a CPU takes,
 * and both equal llama.cpp's AVX2 vec_dot. Wider registers are used only
 * where that leaves the f32 operations unchanged: integer dot products
 * (exact in any order) and independent accumulator lanes.
 *  - Q4_0 / Q5_0 / Q8_0 take two blocks per register; VNNI's vpdpbusd
 *    replaces maddubs + madd (same int32 lanes: each is the sum of four
 *    byte products), and the signs move with a mask instead of vpsignb,
 *    which has no 512-bit form. The two blocks' f32 steps stay separate.
 *  - Q4_K / Q6_K do two 32-element runs per maddubs and fold the 512-bit
 *    integer sums back to 256 bits (exact) before the same f32 steps as
 *    AVX2. VNNI's vpdpwssd does AVX2's madd (times the group scales) and
 *    the add into the int32 sums in one instruction: the same int32 lanes,
 *    since integer sums do not depend on their order.
 *  - F32 / F16 hold AVX2's two 8-lane accumulators in one register.
 */
#include "kernels/cpu/avx2_util.h"
#include "kernels/quants.h"

#include <math.h>

KERN_INLINE __m512i cat_si(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
KERN_INLINE __m256i fold_si(__m512i v)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}
KERN_INLINE __m256 hi_ps(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* ---- 32-element types against Q8_0: two blocks per register ---- */

KERN_INLINE __m256i w_q4_0(const void *p)
{
    const struct kern__q4_0 *b = p;
    return _mm256_sub_epi8(kern__nibbles_32(b->qs), _mm256_set1_epi8(8));
}
KERN_INLINE __m256i w_q5_0(const void *p)
{
    const struct kern__q5_0 *b = p;
    __m256i hi = kern__bits_to_bytes(kern__load_u32(b->qh));
    return _mm256_or_si256(kern__nibbles_32(b->qs), _mm256_andnot_si256(hi, _mm256_set1_epi8((char)0xF0)));
}
KERN_INLINE __m256i w_q8_0(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)((const struct kern__q8_0 *)p)->qs);
}

/* The activation block scale of row j, block b, as f32. */
KERN_INLINE __m256 x_scale(const char *x, size_t xs, const float *xd, int j, int64_t b)
{
    if (xd)
        return _mm256_broadcast_ss(xd + b * KERN__XD_LANES + j);
    return kern__h2f_bcast(((const struct kern__q8_0 *)(x + (size_t)j * xs) + b)->d);
}

/*
 * One weight row against NX activation rows. The integer work takes two
 * blocks per 512-bit register (b in the low half, b + 1 in the high half),
 * but the f32 work is kern__ops_avx2's, operation for operation: one 8-lane
 * accumulator per pair, and per block
 *     acc = fmadd(dw * dx, cvt(int dot), acc)
 * in block order. vpdpbusd's int32 lanes equal maddubs + madd's (each is
 * the sum of the same four byte products, which cannot saturate: |w| <= 128
 * and |x| <= 128), so every path gives the same bits as the AVX2 kernels and
 * as llama.cpp's AVX2 vec_dot. Folding the two halves into one 16-lane
 * accumulator would halve the FMA chain but changes the summation order;
 * on Gemma 3 that alone moved logits by up to 1.1 (docs/PERFORMANCE.md).
 */
#define SIGNED_TILE512(T, BYTES)                                                                                       \
    KERN_INLINE void tile_##T(int NX, int64_t nb, const char *w, const char *x, size_t xs, const float *xd, float *y,  \
                              int64_t ldy)                                                                             \
    {                                                                                                                  \
        __m256 acc[8];                                                                                                 \
        for (int j = 0; j < NX; j++)                                                                                   \
            acc[j] = _mm256_setzero_ps();                                                                              \
        for (int64_t b = 0; b < nb; b += 2) {                                                                          \
            int two = b + 1 < nb;                                                                                      \
            const char *w0 = w + (size_t)b * (BYTES), *w1 = w0 + (BYTES);                                              \
            if (NX == 1)                                                                                               \
                _mm_prefetch(w0 + KERN__PF_DIST, _MM_HINT_T0);                                                         \
            __m512i wq = cat_si(w_##T(w0), two ? w_##T(w1) : _mm256_setzero_si256());                                  \
            __mmask64 neg = _mm512_movepi8_mask(wq);                                                                   \
            __m512i ua = _mm512_abs_epi8(wq);                                                                          \
            __m256 dw0 = kern__h2f_bcast(*(const uint16_t *)w0);                                                       \
            __m256 dw1 = two ? kern__h2f_bcast(*(const uint16_t *)w1) : _mm256_setzero_ps();                           \
            for (int j = 0; j < NX; j++) {                                                                             \
                const struct kern__q8_0 *xb = (const struct kern__q8_0 *)(x + (size_t)j * xs) + b;                     \
                __m256i y0 = _mm256_loadu_si256((const __m256i *)xb[0].qs);                                            \
                __m256i y1 = two ? _mm256_loadu_si256((const __m256i *)xb[1].qs) : _mm256_setzero_si256();             \
                __m512i yv = cat_si(y0, y1);                                                                           \
                __m512i sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);                                \
                __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ua, sy));                    \
                __m256 d0 = _mm256_mul_ps(dw0, x_scale(x, xs, xd, j, b));                                              \
                acc[j] = _mm256_fmadd_ps(d0, _mm512_castps512_ps256(p), acc[j]);                                       \
                if (two) {                                                                                             \
                    __m256 d1 = _mm256_mul_ps(dw1, x_scale(x, xs, xd, j, b + 1));                                      \
                    acc[j] = _mm256_fmadd_ps(d1, hi_ps(p), acc[j]);                                                    \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int j = 0; j < NX; j++)                                                                                   \
            y[j * ldy] = kern__hsum_ps(acc[j]);                                                                        \
    }

SIGNED_TILE512(q4_0, sizeof(struct kern__q4_0))
SIGNED_TILE512(q5_0, sizeof(struct kern__q5_0))
SIGNED_TILE512(q8_0, sizeof(struct kern__q8_0))

/* ---- Q4_K: the AVX2 kernel with two runs per 512-bit step ---- */

KERN_INLINE __m128i k4_scales_mins(const uint8_t *s12)
{
    uint32_t u[4];
    memcpy(u, s12, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t sc_lo = u[0] & m6;
    uint32_t sc_hi = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
    uint32_t mn_lo = u[1] & m6;
    uint32_t mn_hi = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)mn_lo, (int)mn_hi);
}

KERN_INLINE __m256i bcast_scale(__m256i v, int g)
{
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(((2 * g + 1) << 8) | (2 * g))));
}

KERN_INLINE __m256i pair_scales(__m256i v, int t)
{
    __m256i r = _mm256_permutevar8x32_epi32(v, _mm256_set1_epi32(t));
    const __m256i shuf = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                                          2, 3, 2, 3, 2, 3);
    return _mm256_shuffle_epi8(r, shuf);
}

KERN_INLINE void tile_q4_K(int NX, int64_t nb, const char *w, const char *x, size_t xs, float *y, int64_t ldy)
{
    __m256 acc[8], accm[8];
    for (int j = 0; j < NX; j++)
        acc[j] = accm[j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q4_K *wb = (const struct kern__q4_K *)w + b;
        if (NX == 1)
            kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
        __m128i sm8 = k4_scales_mins(wb->scales);
        __m256i sm = _mm256_cvtepu8_epi16(sm8);
        __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);
        __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm8, sm8));
        __m256 dw = _mm256_set1_ps(kern__h2f_hw(wb->d)), nmw = _mm256_set1_ps(-kern__h2f_hw(wb->dmin));
        __m512i sumi[8];
        for (int j = 0; j < NX; j++)
            sumi[j] = _mm512_setzero_si512();
        for (int g = 0; g < 4; g++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * g));
            __m512i q = cat_si(_mm256_and_si256(bits, m4), _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4));
            __m512i s = cat_si(bcast_scale(scales, 2 * g), bcast_scale(scales, 2 * g + 1));
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                __m512i yv = _mm512_loadu_si512((const void *)(xb->qs + 64 * g));
                sumi[j] = _mm512_dpwssd_epi32(sumi[j], s, _mm512_maddubs_epi16(q, yv));
            }
        }
        for (int j = 0; j < NX; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            /* the mins as kquant_avx2.c (and llama.cpp) handle them */
            __m256i pm = _mm256_madd_epi16(mins, bs);
            pm = _mm256_add_epi32(pm, _mm256_srli_epi64(pm, 32));
            __m256 dy = _mm256_set1_ps(xb->d);
            accm[j] = _mm256_fmadd_ps(_mm256_mul_ps(nmw, dy), _mm256_cvtepi32_ps(pm), accm[j]);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dy), _mm256_cvtepi32_ps(fold_si(sumi[j])), acc[j]);
        }
    }
    for (int j = 0; j < NX; j++)
        y[j * ldy] = kern__hsum_ps(acc[j]) + kern__hsum_even_ps(accm[j]);
}

/* ---- Q6_K: runs (0, 1) and (2, 3) of each half share a register ---- */

KERN_INLINE void tile_q6_K(int NX, int64_t nb, const char *w, const char *x, size_t xs, float *y, int64_t ldy)
{
    __m256 acc[8];
    for (int j = 0; j < NX; j++)
        acc[j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q6_K *wb = (const struct kern__q6_K *)w + b;
        if (NX == 1)
            kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wb->scales));
        __m256 dw = _mm256_set1_ps(kern__h2f_hw(wb->d));
        __m256i corr[8];
        __m512i sumi[8];
        for (int j = 0; j < NX; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            corr[j] = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            sumi[j] = _mm512_setzero_si512();
        }
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(wb->qh + 32 * h));
            __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
            __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
            __m512i q01 = cat_si(q0, q1), q23 = cat_si(q2, q3);
            __m512i s01 = cat_si(pair_scales(sc16, 4 * h + 0), pair_scales(sc16, 4 * h + 1));
            __m512i s23 = cat_si(pair_scales(sc16, 4 * h + 2), pair_scales(sc16, 4 * h + 3));
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                __m512i y01 = _mm512_loadu_si512((const void *)(xb->qs + 128 * h));
                __m512i y23 = _mm512_loadu_si512((const void *)(xb->qs + 128 * h + 64));
                sumi[j] = _mm512_dpwssd_epi32(sumi[j], s01, _mm512_maddubs_epi16(q01, y01));
                sumi[j] = _mm512_dpwssd_epi32(sumi[j], s23, _mm512_maddubs_epi16(q23, y23));
            }
        }
        for (int j = 0; j < NX; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
            __m256i s = _mm256_sub_epi32(fold_si(sumi[j]), corr[j]);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xb->d)), _mm256_cvtepi32_ps(s), acc[j]);
        }
    }
    for (int j = 0; j < NX; j++)
        y[j * ldy] = kern__hsum_ps(acc[j]);
}

/* ---- F32 / F16: kern__ops_avx2's two 8-lane accumulators in one register ---- */

KERN_INLINE __m512 ld16_f32(const char *p, int64_t i) { return _mm512_loadu_ps((const float *)p + i); }
KERN_INLINE __m512 ld16_f16(const char *p, int64_t i)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}
KERN_INLINE float s1_f32(const char *p, int64_t i) { return ((const float *)p)[i]; }
KERN_INLINE float s1_f16(const char *p, int64_t i) { return kern__h2f_hw(((const uint16_t *)p)[i]); }

/*
 * The AVX2 float tile keeps two accumulators per pair, a0 for elements
 * k..k+7 and a1 for k+8..k+15 of every 16-element step, and ends with
 * hsum(a0 + a1) and a scalar tail. Here lanes 0-7 of one 512-bit register
 * are a0 and lanes 8-15 are a1: the same FMAs lane for lane, so the same
 * bits, in half the instructions.
 */
#define FLOAT_TILE512(T)                                                                                               \
    KERN_INLINE void tile_##T(int NX, int64_t n, const char *w, const char *x, size_t xs, const float *xd, float *y,   \
                              int64_t ldy)                                                                             \
    {                                                                                                                  \
        (void)xd;                                                                                                      \
        __m512 a[8];                                                                                                   \
        for (int j = 0; j < NX; j++)                                                                                   \
            a[j] = _mm512_setzero_ps();                                                                                \
        int64_t k = 0;                                                                                                 \
        for (; k + 16 <= n; k += 16) {                                                                                 \
            __m512 wv = ld16_##T(w, k);                                                                                \
            for (int j = 0; j < NX; j++)                                                                               \
                a[j] = _mm512_fmadd_ps(wv, ld16_##T(x + (size_t)j * xs, k), a[j]);                                     \
        }                                                                                                              \
        for (int j = 0; j < NX; j++) {                                                                                 \
            float s = kern__hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(a[j]), hi_ps(a[j])));                         \
            for (int64_t t = k; t < n; t++)                                                                            \
                s = fmaf(s1_##T(w, t), s1_##T(x + (size_t)j * xs, t), s);                                              \
            y[j * ldy] = s;                                                                                            \
        }                                                                                                              \
    }

FLOAT_TILE512(f32)
FLOAT_TILE512(f16)

/* K-quant tiles ignore xd (Q8_K scales are f32 already). */
#define TILE_NOXD(T)                                                                                                   \
    KERN_INLINE void tilex_##T(int NX, int64_t nb, const char *w, const char *x, size_t xs, const float *xd, float *y, \
                               int64_t ldy)                                                                            \
    {                                                                                                                  \
        (void)xd;                                                                                                      \
        tile_##T(NX, nb, w, x, xs, y, ldy);                                                                            \
    }
TILE_NOXD(q4_K)
TILE_NOXD(q6_K)
#define tilex_q4_0 tile_q4_0
#define tilex_q5_0 tile_q5_0
#define tilex_q8_0 tile_q8_0
#define tilex_f32 tile_f32
#define tilex_f16 tile_f16

/* Each weight row on its own, against the call's activation rows. */
#define DOT_ENTRY512(T, NB)                                                                                            \
    static void dot512_##T(int64_t n, const struct kern__tile *t)                                                      \
    {                                                                                                                  \
        int64_t nb = (NB);                                                                                             \
        for (int i = 0; i < t->nw; i++) {                                                                              \
            const char *wi = (const char *)t->w + (size_t)i * t->ws;                                                   \
            const char *x = t->x;                                                                                      \
            float *yi = t->y + i;                                                                                      \
            switch (t->nx) {                                                                                           \
            case 1:                                                                                                    \
                tilex_##T(1, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 2:                                                                                                    \
                tilex_##T(2, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 3:                                                                                                    \
                tilex_##T(3, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 4:                                                                                                    \
                tilex_##T(4, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 5:                                                                                                    \
                tilex_##T(5, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 6:                                                                                                    \
                tilex_##T(6, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            case 7:                                                                                                    \
                tilex_##T(7, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            default:                                                                                                   \
                tilex_##T(8, nb, wi, x, t->xs, t->xd, yi, t->ldy);                                                     \
                break;                                                                                                 \
            }                                                                                                          \
        }                                                                                                              \
    }

DOT_ENTRY512(q4_0, n / KERN_QK)
DOT_ENTRY512(q5_0, n / KERN_QK)
DOT_ENTRY512(q8_0, n / KERN_QK)
DOT_ENTRY512(q4_K, n / KERN_QK_K)
DOT_ENTRY512(q6_K, n / KERN_QK_K)
DOT_ENTRY512(f32, n)
DOT_ENTRY512(f16, n)

#define E512(T, E, TX) [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, NULL, dot512_##T, 4, TX}
#define E2(T, E) [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, NULL, kern__dot_##T##_avx2, 4, 8}

const struct kern__ops kern__ops_avx512 = {
    .name = "avx512",
    .type =
        {
            [GGUF_DTYPE_F32] = {kern__dequant_f32_scalar, kern__quant_f32_scalar, dot512_f32, 4, 4},
            [GGUF_DTYPE_F16] = {kern__dequant_f16_scalar, kern__quant_f16_avx2, dot512_f16, 4, 4},
            [GGUF_DTYPE_BF16] = {kern__dequant_bf16_scalar, kern__quant_bf16_scalar, kern__dot_bf16_avx2, 4, 4},
            E512(q4_0, Q4_0, 8),
            E2(q4_1, Q4_1),
            E512(q5_0, Q5_0, 8),
            E2(q5_1, Q5_1),
            [GGUF_DTYPE_Q8_0] = {kern__dequant_q8_0_scalar, kern__quant_q8_0_avx2, dot512_q8_0, 4, 8},
            [GGUF_DTYPE_Q8_1] = {kern__dequant_q8_1_scalar, kern__quant_q8_1_avx2, NULL, 0, 0},
            E2(q2_K, Q2_K),
            E2(q3_K, Q3_K),
            [GGUF_DTYPE_Q4_K] = {kern__dequant_q4_K_scalar, NULL, dot512_q4_K, 4, 8, kern__rp_q4_K_avx512},
            E2(q5_K, Q5_K),
            [GGUF_DTYPE_Q6_K] = {kern__dequant_q6_K_scalar, NULL, dot512_q6_K, 4, 8, kern__rp_q6_K_avx512},
            [GGUF_DTYPE_Q8_K] = {kern__dequant_q8_K_scalar, kern__quant_q8_K_avx2, NULL, 0, 0},
        },
};
