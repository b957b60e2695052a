/*
 * AVX2 + F16C attention inner loops (see ops.h). Same arithmetic as the
 * scalar version in ops.c: f16 inputs widened to f32, products accumulated
 * in f32 lanes, softmax sums in double.
 */
#include "model/ops.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals,
                      int n, int dk, int dv, float scale, float *scores, uint16_t *p16);

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals,
                      int n, int dk, int dv, float scale, float *scores, uint16_t *p16)
{
    float max = -INFINITY;
    for (int j = 0; j < n; j++) {
        const uint16_t *k = keys[j];
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int d = 0;
        for (; d + 16 <= dk; d += 16) {
            __m256 q0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q16 + d)));
            __m256 q1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q16 + d + 8)));
            __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
            __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8)));
            acc0 = _mm256_fmadd_ps(q0, k0, acc0);
            acc1 = _mm256_fmadd_ps(q1, k1, acc1);
        }
        for (; d < dk; d += 8) {
            __m256 q0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q16 + d)));
            __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
            acc0 = _mm256_fmadd_ps(q0, k0, acc0);
        }
        const float s = hsum256(_mm256_add_ps(acc0, acc1)) * scale;
        scores[j] = s;
        if (s > max)
            max = s;
    }
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - max);
        sum += scores[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < n; j++)
        p16[j] = (uint16_t)_cvtss_sh(scores[j] * inv, 0);
    for (int d = 0; d < dv; d += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            const __m256 p = _mm256_set1_ps(_cvtsh_ss(p16[j]));
            acc = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vals[j] + d))), acc);
        }
        _mm256_storeu_ps(out + d, acc);
    }
}
