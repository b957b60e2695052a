/*
 * Internals shared by the x86 attention paths (ops_avx2.c, ops_avx512.c)
 * and their dispatch in ops.c: the kernels of grouped attention as a set,
 * so that one driver (ops__attend_group_avx2: tiles, ranges, softmax) runs
 * the AVX2 or the AVX-512 ones, and the horizontal sums both must share to
 * give the same bits.
 */
#pragma once

#include <stdint.h>

/* The inner loops of ops_attend_group over key/value rows [j0, j1), four
 * queries (s, q, o, p: [4] row pointers) or one at a time; queries are f32
 * rows, scores and probabilities are indexed by row. Per score and per
 * output lane each must do exactly ops__attend_avx2's operations in its
 * order; pv4/pv1 add to what o holds. pv1 accepts an empty range. */
struct ops__group_kern {
    void (*scores4)(float *const *s, const float *const *q, const uint16_t *const *keys, int j0, int j1, int dk,
                    float scale);
    void (*scores1)(float *s, const float *q, const uint16_t *const *keys, int j0, int j1, int dk, float scale);
    void (*pv4)(float *const *o, const float *const *p, const uint16_t *const *vals, int j0, int j1, int dv);
    void (*pv1)(float *o, const float *p, const uint16_t *const *vals, int j0, int j1, int dv);
};

extern const struct ops__group_kern ops__group_kern_avx2;
extern const struct ops__group_kern ops__group_kern_avx512;

/* ops_attend_group on x86 (dk and dv multiples of 8), with kern's loops. */
void ops__attend_group_avx2(float *const *out, const uint16_t *q16, int nq, const int *lo, const int *hi,
                            const uint16_t *const *keys, const uint16_t *const *vals, int span, int dk, int dv,
                            float scale, float *work, const struct ops__group_kern *kern);

#ifdef __AVX2__
#include <immintrin.h>

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 ld16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* hsum256 of four vectors at once: [hsum256(x0), .., hsum256(x3)] with the
 * same additions, operands in the same order, for each: lo + hi, then
 * (l0 + l2) and (l1 + l3), then their sum. */
static inline __m128 hsum256x4(__m256 x0, __m256 x1, __m256 x2, __m256 x3)
{
    /* [lo+hi of x0 | lo+hi of x1], [.. x2 | .. x3] */
    const __m256 l01 = _mm256_add_ps(_mm256_permute2f128_ps(x0, x1, 0x20), _mm256_permute2f128_ps(x0, x1, 0x31));
    const __m256 l23 = _mm256_add_ps(_mm256_permute2f128_ps(x2, x3, 0x20), _mm256_permute2f128_ps(x2, x3, 0x31));
    /* per 128-bit half: [l0+l2, l1+l3] of x0 (x1), then of x2 (x3) */
    const __m256 c = _mm256_add_ps(_mm256_shuffle_ps(l01, l23, 0x44), _mm256_shuffle_ps(l01, l23, 0xee));
    /* per half: [x0 (x1), x2 (x3), x0 (x1), x2 (x3)] */
    const __m256 f = _mm256_add_ps(_mm256_shuffle_ps(c, c, 0x88), _mm256_shuffle_ps(c, c, 0xdd));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

#endif
