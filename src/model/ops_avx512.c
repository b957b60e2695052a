/*
 * AVX-512 inner loops of grouped attention (see ops_x86.h). Same bits as
 * the AVX2 ones, half the instructions: a 16-lane register holds what the
 * AVX2 loops keep in two 8-lane ones, lane for lane.
 * - Scores: the AVX2 loop sums elements d..d+7 of each 16 into acc0 and
 *   d+8..d+15 into acc1, with an 8-element tail into acc0. Here lanes 0-7
 *   of one accumulator are acc0 and lanes 8-15 are acc1; the tail goes
 *   into the low half, and acc0 + acc1 into the same horizontal sum.
 * - Weighted sums of values: every output lane is its own FMA chain over
 *   the rows in order, whatever the register width.
 */
#include "model/ops_x86.h"

#include <immintrin.h>

static inline __m512 ld16x16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

static inline __m256 lo8(__m512 a) { return _mm512_castps512_ps256(a); }
static inline __m256 hi8(__m512 a) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)); }

static void scores4_avx512(float *const *s, const float *const *q, const uint16_t *const *keys, int j0, int j1, int dk,
                           float scale)
{
    const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
    for (int j = j0; j < j1; j++) {
        const uint16_t *k = keys[j];
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int d = 0;
        for (; d + 16 <= dk; d += 16) {
            const __m512 kk = ld16x16(k + d);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), kk, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), kk, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), kk, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), kk, a3);
        }
        /* acc0 and acc1 of the AVX2 loop */
        __m256 l0 = lo8(a0), l1 = lo8(a1), l2 = lo8(a2), l3 = lo8(a3);
        if (d < dk) { /* dk % 16 == 8: into acc0 only */
            const __m256 kk = ld16(k + d);
            l0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), kk, l0);
            l1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), kk, l1);
            l2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), kk, l2);
            l3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), kk, l3);
        }
        float r[4];
        _mm_storeu_ps(r, _mm_mul_ps(hsum256x4(_mm256_add_ps(l0, hi8(a0)), _mm256_add_ps(l1, hi8(a1)),
                                              _mm256_add_ps(l2, hi8(a2)), _mm256_add_ps(l3, hi8(a3))),
                                    _mm_set1_ps(scale)));
        s[0][j] = r[0];
        s[1][j] = r[1];
        s[2][j] = r[2];
        s[3][j] = r[3];
    }
}

static void scores1_avx512(float *s, const float *q, const uint16_t *const *keys, int j0, int j1, int dk, float scale)
{
    for (int j = j0; j < j1; j++) {
        const uint16_t *k = keys[j];
        __m512 a = _mm512_setzero_ps();
        int d = 0;
        for (; d + 16 <= dk; d += 16)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), ld16x16(k + d), a);
        __m256 l = lo8(a);
        if (d < dk)
            l = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ld16(k + d), l);
        s[j] = hsum256(_mm256_add_ps(l, hi8(a))) * scale;
    }
}

/* Four queries, 32 lanes at a time; 16- and 8-lane tails. */
static void pv4_avx512(float *const *o, const float *const *p, const uint16_t *const *vals, int j0, int j1, int dv)
{
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    int d = 0;
    for (; d + 32 <= dv; d += 32) {
        __m512 a0 = _mm512_loadu_ps(o0 + d), b0 = _mm512_loadu_ps(o0 + d + 16);
        __m512 a1 = _mm512_loadu_ps(o1 + d), b1 = _mm512_loadu_ps(o1 + d + 16);
        __m512 a2 = _mm512_loadu_ps(o2 + d), b2 = _mm512_loadu_ps(o2 + d + 16);
        __m512 a3 = _mm512_loadu_ps(o3 + d), b3 = _mm512_loadu_ps(o3 + d + 16);
        for (int j = j0; j < j1; j++) {
            const uint16_t *v = vals[j] + d;
            const __m512 v0 = ld16x16(v), v1 = ld16x16(v + 16);
            __m512 w = _mm512_set1_ps(p0[j]);
            a0 = _mm512_fmadd_ps(w, v0, a0);
            b0 = _mm512_fmadd_ps(w, v1, b0);
            w = _mm512_set1_ps(p1[j]);
            a1 = _mm512_fmadd_ps(w, v0, a1);
            b1 = _mm512_fmadd_ps(w, v1, b1);
            w = _mm512_set1_ps(p2[j]);
            a2 = _mm512_fmadd_ps(w, v0, a2);
            b2 = _mm512_fmadd_ps(w, v1, b2);
            w = _mm512_set1_ps(p3[j]);
            a3 = _mm512_fmadd_ps(w, v0, a3);
            b3 = _mm512_fmadd_ps(w, v1, b3);
        }
        _mm512_storeu_ps(o0 + d, a0);
        _mm512_storeu_ps(o0 + d + 16, b0);
        _mm512_storeu_ps(o1 + d, a1);
        _mm512_storeu_ps(o1 + d + 16, b1);
        _mm512_storeu_ps(o2 + d, a2);
        _mm512_storeu_ps(o2 + d + 16, b2);
        _mm512_storeu_ps(o3 + d, a3);
        _mm512_storeu_ps(o3 + d + 16, b3);
    }
    for (; d + 16 <= dv; d += 16) {
        __m512 a0 = _mm512_loadu_ps(o0 + d), a1 = _mm512_loadu_ps(o1 + d);
        __m512 a2 = _mm512_loadu_ps(o2 + d), a3 = _mm512_loadu_ps(o3 + d);
        for (int j = j0; j < j1; j++) {
            const __m512 v0 = ld16x16(vals[j] + d);
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(p0[j]), v0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(p1[j]), v0, a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(p2[j]), v0, a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(p3[j]), v0, a3);
        }
        _mm512_storeu_ps(o0 + d, a0);
        _mm512_storeu_ps(o1 + d, a1);
        _mm512_storeu_ps(o2 + d, a2);
        _mm512_storeu_ps(o3 + d, a3);
    }
    for (; d < dv; d += 8) {
        __m256 a0 = _mm256_loadu_ps(o0 + d), a1 = _mm256_loadu_ps(o1 + d);
        __m256 a2 = _mm256_loadu_ps(o2 + d), a3 = _mm256_loadu_ps(o3 + d);
        for (int j = j0; j < j1; j++) {
            const __m256 v0 = ld16(vals[j] + d);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p0[j]), v0, a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(p1[j]), v0, a1);
            a2 = _mm256_fmadd_ps(_mm256_set1_ps(p2[j]), v0, a2);
            a3 = _mm256_fmadd_ps(_mm256_set1_ps(p3[j]), v0, a3);
        }
        _mm256_storeu_ps(o0 + d, a0);
        _mm256_storeu_ps(o1 + d, a1);
        _mm256_storeu_ps(o2 + d, a2);
        _mm256_storeu_ps(o3 + d, a3);
    }
}

/* One query, 128 lanes at a time (eight independent chains); tails. */
static void pv1_avx512(float *o, const float *p, const uint16_t *const *vals, int j0, int j1, int dv)
{
    if (j0 >= j1)
        return;
    int d = 0;
    for (; d + 128 <= dv; d += 128) {
        __m512 acc[8];
        for (int c = 0; c < 8; c++)
            acc[c] = _mm512_loadu_ps(o + d + 16 * c);
        for (int j = j0; j < j1; j++) {
            const __m512 w = _mm512_set1_ps(p[j]);
            const uint16_t *v = vals[j] + d;
            for (int c = 0; c < 8; c++)
                acc[c] = _mm512_fmadd_ps(w, ld16x16(v + 16 * c), acc[c]);
        }
        for (int c = 0; c < 8; c++)
            _mm512_storeu_ps(o + d + 16 * c, acc[c]);
    }
    for (; d + 16 <= dv; d += 16) {
        __m512 acc = _mm512_loadu_ps(o + d);
        for (int j = j0; j < j1; j++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), ld16x16(vals[j] + d), acc);
        _mm512_storeu_ps(o + d, acc);
    }
    for (; d < dv; d += 8) {
        __m256 acc = _mm256_loadu_ps(o + d);
        for (int j = j0; j < j1; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), ld16(vals[j] + d), acc);
        _mm256_storeu_ps(o + d, acc);
    }
}

const struct ops__group_kern ops__group_kern_avx512 = {scores4_avx512, scores1_avx512, pv4_avx512, pv1_avx512};
