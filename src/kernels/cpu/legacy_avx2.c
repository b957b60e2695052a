/*
 * AVX2 kernels for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0), the float types (F32, F16, BF16), and the activation quantizers.
 *
 * Dot products follow llama.cpp's AVX2 scheme: each block's weights are
 * expanded to 32 signed bytes, multiplied with the activation bytes by
 * maddubs (u8 x s8 -> s16 pairs) after moving the weight's sign onto the
 * activation, widened to 8 int32 lanes, converted, and added to an f32
 * accumulator with the product of the two block scales, one block at a
 * time. That is llama.cpp's exact f32 sequence too, so for Q4_0 / Q5_0 /
 * Q8_0 the results equal llama.cpp's AVX2 ones bit for bit. (Taking two
 * blocks per accumulator step was tried to shorten the FMA chain; it did
 * not make decode faster and lost that equality.)
 *
 * Tiles: one weight row against up to 8 activation rows. Decode (one
 * activation row) walks the weight rows one after another with a software
 * prefetch (see KERN__PF_DIST); prefill decodes each weight block once for
 * all 8 rows and takes their f32 scales from the matmul's xd table. The
 * templates keep an NW parameter (weight rows side by side), but every
 * entry point uses NW = 1: four rows side by side computed faster from
 * cache and streamed slower from memory. The quantizers produce exactly
 * the scalar reference's bytes.
 */
#include "kernels/cpu/avx2_util.h"
#include "kernels/quants.h"

#include <math.h>

/* ---- 32-element block types against Q8_0 ---- */

/* Weight block -> 32 signed bytes, element order. */
KERN_INLINE __m256i w_q4_0(const void *p)
{
    const struct kern__q4_0 *b = p;
    return _mm256_sub_epi8(kern__nibbles_32(b->qs), _mm256_set1_epi8(8));
}

KERN_INLINE __m256i w_q5_0(const void *p)
{
    const struct kern__q5_0 *b = p;
    /* q - 16 + 16 * h: where the high bit is clear, set the byte's top
     * nibble (0xF0 | q is q - 16 as a signed byte). */
    __m256i hi = kern__bits_to_bytes(kern__load_u32(b->qh));
    return _mm256_or_si256(kern__nibbles_32(b->qs), _mm256_andnot_si256(hi, _mm256_set1_epi8((char)0xF0)));
}

KERN_INLINE __m256i w_q8_0(const void *p)
{
    const struct kern__q8_0 *b = p;
    return _mm256_loadu_si256((const __m256i *)b->qs);
}

KERN_INLINE float d_q4_0(const void *p) { return kern__h2f_hw(((const struct kern__q4_0 *)p)->d); }
KERN_INLINE float d_q5_0(const void *p) { return kern__h2f_hw(((const struct kern__q5_0 *)p)->d); }
KERN_INLINE float d_q8_0(const void *p) { return kern__h2f_hw(((const struct kern__q8_0 *)p)->d); }

/*
 * The tile body. NW weight rows x NX activation rows, both compile-time
 * constants at every call site (NW = 1 today), so the accumulator arrays
 * live in registers. Per (i, j) pair and block the f32 sequence is always
 *     acc = fmadd(dw * dx, cvt(int dot), acc),
 * then one fixed horizontal sum.
 */
#define SIGNED_TILE(T, BYTES)                                                                                          \
    KERN_INLINE void tile_##T(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,          \
                              const float *xd, float *y, int64_t ldy)                                                  \
    {                                                                                                                  \
        __m256 acc[4][8];                                                                                              \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++)                                                                               \
                acc[i][j] = _mm256_setzero_ps();                                                                       \
        for (int64_t b = 0; b < nb; b++) {                                                                             \
            __m256i ua[4], wq[4];                                                                                      \
            __m256 dw[4];                                                                                              \
            for (int i = 0; i < NW; i++) {                                                                             \
                const char *wb = w + (size_t)i * ws + (size_t)b * (BYTES);                                             \
                if (NX == 1)                                                                                           \
                    _mm_prefetch(wb + KERN__PF_DIST, _MM_HINT_T0);                                                     \
                wq[i] = w_##T(wb);                                                                                     \
                ua[i] = _mm256_sign_epi8(wq[i], wq[i]);                                                                \
                dw[i] = kern__h2f_bcast(*(const uint16_t *)wb);                                                        \
            }                                                                                                          \
            if (NX == 1 && NW == 1 && xd) {                                                                            \
                const struct kern__q8_0 *xb = (const struct kern__q8_0 *)x + b;                                        \
                __m256i yv = _mm256_loadu_si256((const __m256i *)xb->qs);                                              \
                __m256 d = _mm256_mul_ps(dw[0], _mm256_broadcast_ss(xd + b * KERN__XD_LANES));                         \
                __m256i p = kern__sum_i16_pairs(_mm256_maddubs_epi16(ua[0], _mm256_sign_epi8(yv, wq[0])));             \
                acc[0][0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[0][0]);                                      \
                continue;                                                                                              \
            }                                                                                                          \
            if (NX > 1 && NW == 1 && xd) {                                                                             \
                /* All NX scale products at once, then broadcast loads. */                                             \
                _Alignas(32) float dd[KERN__XD_LANES];                                                                 \
                _mm256_store_ps(dd, _mm256_mul_ps(dw[0], _mm256_loadu_ps(xd + b * KERN__XD_LANES)));                   \
                for (int j = 0; j < NX; j++) {                                                                         \
                    const struct kern__q8_0 *xb = (const struct kern__q8_0 *)(x + (size_t)j * xs) + b;                 \
                    __m256i yv = _mm256_loadu_si256((const __m256i *)xb->qs);                                          \
                    __m256i p = kern__sum_i16_pairs(_mm256_maddubs_epi16(ua[0], _mm256_sign_epi8(yv, wq[0])));         \
                    acc[0][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[j]), _mm256_cvtepi32_ps(p), acc[0][j]);        \
                }                                                                                                      \
                continue;                                                                                              \
            }                                                                                                          \
            for (int j = 0; j < NX; j++) {                                                                             \
                const struct kern__q8_0 *xb = (const struct kern__q8_0 *)(x + (size_t)j * xs) + b;                     \
                __m256i yv = _mm256_loadu_si256((const __m256i *)xb->qs);                                              \
                __m256 dx = kern__h2f_bcast(xb->d);                                                                    \
                for (int i = 0; i < NW; i++) {                                                                         \
                    __m256i p = kern__sum_i16_pairs(_mm256_maddubs_epi16(ua[i], _mm256_sign_epi8(yv, wq[i])));         \
                    acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw[i], dx), _mm256_cvtepi32_ps(p), acc[i][j]);           \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++)                                                                               \
                y[j * ldy + i] = kern__hsum_ps(acc[i][j]);                                                             \
    }

SIGNED_TILE(q4_0, sizeof(struct kern__q4_0))
SIGNED_TILE(q5_0, sizeof(struct kern__q5_0))
SIGNED_TILE(q8_0, sizeof(struct kern__q8_0))

/* ---- Q4_1 / Q5_1 against Q8_1: unsigned weights, plus m * s per block ---- */

KERN_INLINE __m256i w_q4_1(const void *p) { return kern__nibbles_32(((const struct kern__q4_1 *)p)->qs); }

KERN_INLINE __m256i w_q5_1(const void *p)
{
    const struct kern__q5_1 *b = p;
    __m256i hi = kern__bits_to_bytes(kern__load_u32(b->qh));
    return _mm256_or_si256(kern__nibbles_32(b->qs), _mm256_and_si256(hi, _mm256_set1_epi8(0x10)));
}

/* Both layouts start with d, m. */
KERN_INLINE float d_dm(const void *p) { return kern__h2f_hw(((const uint16_t *)p)[0]); }
KERN_INLINE float m_dm(const void *p) { return kern__h2f_hw(((const uint16_t *)p)[1]); }

#define UNSIGNED_TILE(T, BYTES)                                                                                        \
    KERN_INLINE void tile_##T(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,          \
                              const float *xd, float *y, int64_t ldy)                                                  \
    {                                                                                                                  \
        __m256 acc[4][8];                                                                                              \
        float accm[4][8];                                                                                              \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++) {                                                                             \
                acc[i][j] = _mm256_setzero_ps();                                                                       \
                accm[i][j] = 0;                                                                                        \
            }                                                                                                          \
        for (int64_t b = 0; b < nb; b++) {                                                                             \
            __m256i wq[4];                                                                                             \
            __m256 dw[4];                                                                                              \
            float mw[4];                                                                                               \
            for (int i = 0; i < NW; i++) {                                                                             \
                const char *wb = w + (size_t)i * ws + (size_t)b * (BYTES);                                             \
                wq[i] = w_##T(wb);                                                                                     \
                dw[i] = _mm256_set1_ps(d_dm(wb));                                                                      \
                mw[i] = m_dm(wb);                                                                                      \
            }                                                                                                          \
            for (int j = 0; j < NX; j++) {                                                                             \
                const struct kern__q8_1 *xb = (const struct kern__q8_1 *)(x + (size_t)j * xs) + b;                     \
                __m256i yv = _mm256_loadu_si256((const __m256i *)xb->qs);                                              \
                __m256 dx = kern__h2f_bcast(xb->d);                                                                    \
                float sx = kern__h2f_hw(xb->s);                                                                        \
                for (int i = 0; i < NW; i++) {                                                                         \
                    __m256i p = kern__sum_i16_pairs(_mm256_maddubs_epi16(wq[i], yv));                                  \
                    acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw[i], dx), _mm256_cvtepi32_ps(p), acc[i][j]);           \
                    accm[i][j] = fmaf(mw[i], sx, accm[i][j]);                                                          \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++)                                                                               \
                y[j * ldy + i] = kern__hsum_ps(acc[i][j]) + accm[i][j];                                                \
    }

UNSIGNED_TILE(q4_1, sizeof(struct kern__q4_1))
UNSIGNED_TILE(q5_1, sizeof(struct kern__q5_1))

/* ---- float types: 16 elements per step, two accumulators per pair ---- */

KERN_INLINE __m256 ld_f32(const void *p, int64_t i) { return _mm256_loadu_ps((const float *)p + i); }
KERN_INLINE __m256 ld_f16(const void *p, int64_t i)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}
KERN_INLINE __m256 ld_bf16(const void *p, int64_t i)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
KERN_INLINE float s_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
KERN_INLINE float s_f16(const void *p, int64_t i) { return kern__h2f_hw(((const uint16_t *)p)[i]); }
KERN_INLINE float s_bf16(const void *p, int64_t i) { return kern_bf16_to_f32(((const uint16_t *)p)[i]); }

#define FLOAT_TILE(T)                                                                                                  \
    KERN_INLINE void tile_##T(int NW, int NX, int64_t n, const char *w, size_t ws, const char *x, size_t xs,           \
                              const float *xd, float *y, int64_t ldy)                                                  \
    {                                                                                                                  \
        __m256 a0[4][8], a1[4][8];                                                                                     \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++)                                                                               \
                a0[i][j] = a1[i][j] = _mm256_setzero_ps();                                                             \
        int64_t k = 0;                                                                                                 \
        for (; k + 16 <= n; k += 16) {                                                                                 \
            __m256 w0[4], w1[4];                                                                                       \
            for (int i = 0; i < NW; i++) {                                                                             \
                w0[i] = ld_##T(w + (size_t)i * ws, k);                                                                 \
                w1[i] = ld_##T(w + (size_t)i * ws, k + 8);                                                             \
            }                                                                                                          \
            for (int j = 0; j < NX; j++) {                                                                             \
                __m256 x0 = ld_##T(x + (size_t)j * xs, k), x1 = ld_##T(x + (size_t)j * xs, k + 8);                     \
                for (int i = 0; i < NW; i++) {                                                                         \
                    a0[i][j] = _mm256_fmadd_ps(w0[i], x0, a0[i][j]);                                                   \
                    a1[i][j] = _mm256_fmadd_ps(w1[i], x1, a1[i][j]);                                                   \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < NW; i++)                                                                                   \
            for (int j = 0; j < NX; j++) {                                                                             \
                float s = kern__hsum_ps(_mm256_add_ps(a0[i][j], a1[i][j]));                                            \
                for (int64_t t = k; t < n; t++)                                                                        \
                    s = fmaf(s_##T(w + (size_t)i * ws, t), s_##T(x + (size_t)j * xs, t), s);                           \
                y[j * ldy + i] = s;                                                                                    \
            }                                                                                                          \
    }

FLOAT_TILE(f32)
FLOAT_TILE(f16)
FLOAT_TILE(bf16)

/*
 * Entry points: (up to 4) x 1 in one pass for decode; otherwise one weight
 * row at a time against up to 4 activation rows. Either way each pair sees
 * the same operations.
 */

DOT_ENTRY(q4_0, n / KERN_QK)
DOT_ENTRY(q4_1, n / KERN_QK)
DOT_ENTRY(q5_0, n / KERN_QK)
DOT_ENTRY(q5_1, n / KERN_QK)
DOT_ENTRY(q8_0, n / KERN_QK)
DOT_ENTRY(f32, n)
DOT_ENTRY(f16, n)
DOT_ENTRY(bf16, n)

/* ---- activation quantizers (bit-identical to the scalar reference) ---- */

KERN_INLINE __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* 32 floats scaled and rounded -> 32 int8 (values already in range).
 * _mm256_cvtps_epi32 rounds to nearest even (the default MXCSR mode), as
 * ggml's _mm256_round_ps(_MM_ROUND_NEAREST) does before its conversion. */
KERN_INLINE __m256i pack_i8(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256i ia = _mm256_cvtps_epi32(a), ib = _mm256_cvtps_epi32(b);
    __m256i ic = _mm256_cvtps_epi32(c), id = _mm256_cvtps_epi32(d);
    __m256i ab = _mm256_packs_epi32(ia, ib), cd = _mm256_packs_epi32(ic, id);
    __m256i v = _mm256_packs_epi16(ab, cd);
    /* packs works per 128-bit lane: restore element order. */
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

KERN_INLINE float block_amax32(const float *s)
{
    __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(_mm256_loadu_ps(s)), abs_ps(_mm256_loadu_ps(s + 8))),
                             _mm256_max_ps(abs_ps(_mm256_loadu_ps(s + 16)), abs_ps(_mm256_loadu_ps(s + 24))));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

KERN_INLINE __m256i quant32(const float *s, float id)
{
    __m256 vid = _mm256_set1_ps(id);
    return pack_i8(_mm256_mul_ps(_mm256_loadu_ps(s), vid), _mm256_mul_ps(_mm256_loadu_ps(s + 8), vid),
                   _mm256_mul_ps(_mm256_loadu_ps(s + 16), vid), _mm256_mul_ps(_mm256_loadu_ps(s + 24), vid));
}

void kern__quant_q8_0_avx2(const float *src, void *dst, int64_t n)
{
    struct kern__q8_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = block_amax32(src);
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b->d = (uint16_t)_cvtss_sh(d, 0);
        _mm256_storeu_si256((__m256i *)b->qs, quant32(src, id));
    }
}

void kern__quant_q8_1_avx2(const float *src, void *dst, int64_t n)
{
    struct kern__q8_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = block_amax32(src);
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b->d = (uint16_t)_cvtss_sh(d, 0);
        __m256i q = quant32(src, id);
        _mm256_storeu_si256((__m256i *)b->qs, q);
        __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
        __m256i s32 = kern__sum_i16_pairs(s16);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        b->s = (uint16_t)_cvtss_sh((float)_mm_cvtsi128_si32(s) * d, 0);
    }
}

/* Q8_K: find the signed element of largest magnitude (first on ties, as
 * the scalar loop does), then nearest-even rounding, which is
 * _mm256_cvtps_epi32's default mode. */
void kern__quant_q8_K_avx2(const float *src, void *dst, int64_t n)
{
    struct kern__q8_K *b = dst;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++, src += KERN_QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < KERN_QK_K; j += 8)
            m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(src + j)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float amax = _mm_cvtss_f32(h);
        if (amax == 0.0f) {
            memset(b, 0, sizeof *b);
            continue;
        }
        float max = 0;
        for (int j = 0; j < KERN_QK_K; j++)
            if (fabsf(src[j]) == amax) {
                max = src[j];
                break;
            }
        float iscale = -127.0f / max;
        __m256 vs = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int j = 0; j < KERN_QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + j + 8 * k), vs)), cap);
            __m256i ab = _mm256_packs_epi32(q[0], q[1]), cd = _mm256_packs_epi32(q[2], q[3]);
            __m256i v =
                _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(b->qs + j), v);
            /* bsums: two groups of 16 per 32 bytes. */
            __m256i s32 = kern__sum_i16_pairs(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v));
            /* lanes 0..3 = group 2j/32, lanes 4..7 = the next group */
            __m128i lo = _mm256_castsi256_si128(s32), hi = _mm256_extracti128_si256(s32, 1);
            lo = _mm_hadd_epi32(lo, hi); /* [a01, a23, b01, b23] */
            lo = _mm_hadd_epi32(lo, lo); /* [a, b, a, b] */
            b->bsums[j / 16] = (int16_t)_mm_cvtsi128_si32(lo);
            b->bsums[j / 16 + 1] = (int16_t)_mm_extract_epi32(lo, 1);
        }
        b->d = 1.0f / iscale;
    }
}

void kern__quant_f16_avx2(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), 0));
    for (; i < n; i++)
        d[i] = (uint16_t)_cvtss_sh(src[i], 0);
}
