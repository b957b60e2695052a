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

/* ops__expf_v (ops.c), 8 lanes at a time: the same fused operations. */
static inline __m256 expf_v8(__m256 x)
{
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b =
        _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    const __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 c = _mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 p45 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f));
    const __m256 p23 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f));
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(p45, u, p23), u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(c))
        return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 d = _mm256_cmp_ps(an, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 slow = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    const __m256 r2 = _mm256_blendv_ps(_mm256_fmadd_ps(k, j, k), slow, c);
    return _mm256_blendv_ps(r2, _mm256_mul_ps(s1, s1), d);
}

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                      int dk, int dv, float scale, float *scores, uint16_t *p16);

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                      int dk, int dv, float scale, float *scores, uint16_t *p16)
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
    /* softmax as ops.c's attend_scalar does it (llama.cpp's AVX2 softmax) */
    double sum = 0.0;
    const __m256 vmax = _mm256_set1_ps(max);
    for (int j0 = 0; j0 < n; j0 += 8) {
        float t[8];
        for (int l = 0; l < 8; l++)
            t[l] = j0 + l < n ? scores[j0 + l] : -INFINITY;
        __m256 v = expf_v8(_mm256_sub_ps(_mm256_loadu_ps(t), vmax));
        _mm256_storeu_ps(t, v);
        for (int l = 0; l < 8 && j0 + l < n; l++)
            scores[j0 + l] = t[l];
        sum += (double)hsum256(v);
    }
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < n; j++)
        p16[j] = (uint16_t)_cvtss_sh(scores[j] * inv, 0);
    /* out = sum_j p_j * v_j, each lane summed over j in order. Eight
     * 8-lane column groups at a time: one accumulator alone is a chain of n
     * dependent FMAs (latency-bound, about 8x below the FMA throughput);
     * eight independent ones change nothing in any lane's sum. */
    int d = 0;
    for (; d + 64 <= dv; d += 64) {
        __m256 acc[8];
        for (int c = 0; c < 8; c++)
            acc[c] = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            const __m256 p = _mm256_set1_ps(_cvtsh_ss(p16[j]));
            const uint16_t *v = vals[j] + d;
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * c))), acc[c]);
        }
        for (int c = 0; c < 8; c++)
            _mm256_storeu_ps(out + d + 8 * c, acc[c]);
    }
    for (; d < dv; d += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            const __m256 p = _mm256_set1_ps(_cvtsh_ss(p16[j]));
            acc = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vals[j] + d))), acc);
        }
        _mm256_storeu_ps(out + d, acc);
    }
}

void ops__swiglu_avx2(float *g, const float *u, int n);
void ops__geglu_avx2(float *g, const float *u, int n, const float *table);

/* ops_swiglu's vector part, 8 lanes at a time: x / (1 + e^-x) * u with
 * expf_v8 (ops__expf_v's operations lane for lane), the same divide and
 * multiply. n is a multiple of 8. */
void ops__swiglu_avx2(float *g, const float *u, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = expf_v8(_mm256_sub_ps(zero, x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
}

/* ops_geglu's vector part: the f16 bits of 8 inputs at once (F16C rounds to
 * nearest even, as kern_f32_to_f16 does), the table looked up per lane, and
 * the same clamps. n is a multiple of 8. */
void ops__geglu_avx2(float *g, const float *u, int n, const float *table)
{
    for (int i = 0; i < n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        uint16_t h[8];
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        float t[8];
        for (int l = 0; l < 8; l++)
            t[l] = table[h[l]];
        const __m256 uu = _mm256_loadu_ps(u + i);
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(t), uu);
        y = _mm256_blendv_ps(y, _mm256_mul_ps(x, uu), _mm256_cmp_ps(x, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
        _mm256_storeu_ps(g + i, y);
    }
}
