/*
 * AVX2 + F16C attention inner loops (see ops.h). Same arithmetic as the
 * scalar version in ops.c: f16 inputs widened to f32, products accumulated
 * in f32 lanes, softmax sums in double.
 */
#include "model/ops.h"
#include "model/ops_x86.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

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

/* ---- several queries per key/value row (ops_attend_group) -------------- */

/* ops__attend_avx2's softmax over n scores in place, leaving each
 * probability as the f32 value of its f16 rounding, with the same values at
 * every step and 8 lanes at a time where that one goes lane by lane:
 * - the maximum: max_ps(s, m) is `s > m ? s : m` per lane, the scalar
 *   scan's step; lanes then combine the same way. Only a tie of +0 and -0
 *   could pick another zero, and s - (+0) and s - (-0) differ only for
 *   s = -0, where exp gives 1 for both.
 * - exp and the group sums: whole groups loaded directly, the last one
 *   padded with -inf (exp 0) as before, the sums in the same order.
 * - s * inv rounded to f16 (round to nearest even) and widened back. */
static void softmax_p(float *s, int n)
{
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8)
        m8 = _mm256_max_ps(_mm256_loadu_ps(s + j), m8);
    float lanes[8];
    _mm256_storeu_ps(lanes, m8);
    float max = -INFINITY;
    for (int l = 0; l < 8; l++)
        if (lanes[l] > max)
            max = lanes[l];
    for (; j < n; j++)
        if (s[j] > max)
            max = s[j];
    double sum = 0.0;
    const __m256 vmax = _mm256_set1_ps(max);
    j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 v = expf_v8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
        _mm256_storeu_ps(s + j, v);
        sum += (double)hsum256(v);
    }
    if (j < n) {
        float t[8];
        for (int l = 0; l < 8; l++)
            t[l] = j + l < n ? s[j + l] : -INFINITY;
        const __m256 v = expf_v8(_mm256_sub_ps(_mm256_loadu_ps(t), vmax));
        _mm256_storeu_ps(t, v);
        for (int l = 0; j + l < n; l++)
            s[j + l] = t[l];
        sum += (double)hsum256(v);
    }
    const float inv = (float)(1.0 / sum);
    const __m256 vinv = _mm256_set1_ps(inv);
    j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(s + j), vinv), 0);
        _mm256_storeu_ps(s + j, _mm256_cvtph_ps(h));
    }
    for (; j < n; j++)
        s[j] = _cvtsh_ss(_cvtss_sh(s[j] * inv, 0));
}

/* Key/value rows per tile: every query block of a tile reads its rows while
 * they are in L1/L2 (64 rows of 256 f16 are 32 KiB). Tiling changes no
 * arithmetic: scores are independent of each other, and an output lane's
 * accumulator is carried from tile to tile through memory. */
#define GROUP_TILE 64

/* Scores of four queries (qf rows, f32) against rows [j0, j1): each key
 * chunk is widened once for the four. Per score exactly ops__attend_avx2's
 * operations: two accumulators over alternate 8-lane chunks, an 8-lane
 * tail into the first, the horizontal sum of their sum, times scale. */
static void scores4_avx2(float *const *s, const float *const *q, const uint16_t *const *keys, int j0, int j1, int dk,
                         float scale)
{
    const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
    for (int j = j0; j < j1; j++) {
        const uint16_t *k = keys[j];
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int d = 0;
        for (; d + 16 <= dk; d += 16) {
            const __m256 k0 = ld16(k + d), k1 = ld16(k + d + 8);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), k0, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d + 8), k1, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), k0, a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d + 8), k1, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), k0, a2);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d + 8), k1, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), k0, a3);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d + 8), k1, b3);
        }
        for (; d < dk; d += 8) {
            const __m256 k0 = ld16(k + d);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), k0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), k0, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), k0, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), k0, a3);
        }
        float r[4];
        _mm_storeu_ps(r, _mm_mul_ps(hsum256x4(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), _mm256_add_ps(a2, b2),
                                              _mm256_add_ps(a3, b3)),
                                    _mm_set1_ps(scale)));
        s[0][j] = r[0];
        s[1][j] = r[1];
        s[2][j] = r[2];
        s[3][j] = r[3];
    }
}

static void scores1_avx2(float *s, const float *q, const uint16_t *const *keys, int j0, int j1, int dk, float scale)
{
    for (int j = j0; j < j1; j++) {
        const uint16_t *k = keys[j];
        __m256 a = _mm256_setzero_ps(), b = a;
        int d = 0;
        for (; d + 16 <= dk; d += 16) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ld16(k + d), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), ld16(k + d + 8), b);
        }
        for (; d < dk; d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ld16(k + d), a);
        s[j] = hsum256(_mm256_add_ps(a, b)) * scale;
    }
}

/* o[i] += p[i][j] * v_j over rows [j0, j1) for four queries, 16 lanes at a
 * time: each value chunk is widened once for the four. Per lane the FMA
 * chain of ops__attend_avx2, in the same order of j, started from what o
 * holds (zero before the first row). */
static void pv4_avx2(float *const *o, const float *const *p, const uint16_t *const *vals, int j0, int j1, int dv)
{
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    int d = 0;
    for (; d + 16 <= dv; d += 16) {
        __m256 a0 = _mm256_loadu_ps(o0 + d), b0 = _mm256_loadu_ps(o0 + d + 8);
        __m256 a1 = _mm256_loadu_ps(o1 + d), b1 = _mm256_loadu_ps(o1 + d + 8);
        __m256 a2 = _mm256_loadu_ps(o2 + d), b2 = _mm256_loadu_ps(o2 + d + 8);
        __m256 a3 = _mm256_loadu_ps(o3 + d), b3 = _mm256_loadu_ps(o3 + d + 8);
        for (int j = j0; j < j1; j++) {
            const uint16_t *v = vals[j] + d;
            const __m256 v0 = ld16(v), v1 = ld16(v + 8);
            __m256 w = _mm256_broadcast_ss(p0 + j);
            a0 = _mm256_fmadd_ps(w, v0, a0);
            b0 = _mm256_fmadd_ps(w, v1, b0);
            w = _mm256_broadcast_ss(p1 + j);
            a1 = _mm256_fmadd_ps(w, v0, a1);
            b1 = _mm256_fmadd_ps(w, v1, b1);
            w = _mm256_broadcast_ss(p2 + j);
            a2 = _mm256_fmadd_ps(w, v0, a2);
            b2 = _mm256_fmadd_ps(w, v1, b2);
            w = _mm256_broadcast_ss(p3 + j);
            a3 = _mm256_fmadd_ps(w, v0, a3);
            b3 = _mm256_fmadd_ps(w, v1, b3);
        }
        _mm256_storeu_ps(o0 + d, a0);
        _mm256_storeu_ps(o0 + d + 8, b0);
        _mm256_storeu_ps(o1 + d, a1);
        _mm256_storeu_ps(o1 + d + 8, b1);
        _mm256_storeu_ps(o2 + d, a2);
        _mm256_storeu_ps(o2 + d + 8, b2);
        _mm256_storeu_ps(o3 + d, a3);
        _mm256_storeu_ps(o3 + d + 8, b3);
    }
    for (; d < dv; d += 8) {
        __m256 a0 = _mm256_loadu_ps(o0 + d), a1 = _mm256_loadu_ps(o1 + d);
        __m256 a2 = _mm256_loadu_ps(o2 + d), a3 = _mm256_loadu_ps(o3 + d);
        for (int j = j0; j < j1; j++) {
            const __m256 v0 = ld16(vals[j] + d);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + j), v0, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), v0, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j), v0, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(p3 + j), v0, a3);
        }
        _mm256_storeu_ps(o0 + d, a0);
        _mm256_storeu_ps(o1 + d, a1);
        _mm256_storeu_ps(o2 + d, a2);
        _mm256_storeu_ps(o3 + d, a3);
    }
}

/* pv4 for one query, 64 lanes at a time (eight independent chains). */
static void pv1_avx2(float *o, const float *p, const uint16_t *const *vals, int j0, int j1, int dv)
{
    if (j0 >= j1)
        return;
    int d = 0;
    for (; d + 64 <= dv; d += 64) {
        __m256 acc[8];
        for (int c = 0; c < 8; c++)
            acc[c] = _mm256_loadu_ps(o + d + 8 * c);
        for (int j = j0; j < j1; j++) {
            const __m256 w = _mm256_broadcast_ss(p + j);
            const uint16_t *v = vals[j] + d;
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(w, ld16(v + 8 * c), acc[c]);
        }
        for (int c = 0; c < 8; c++)
            _mm256_storeu_ps(o + d + 8 * c, acc[c]);
    }
    for (; d < dv; d += 8) {
        __m256 acc = _mm256_loadu_ps(o + d);
        for (int j = j0; j < j1; j++)
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), ld16(vals[j] + d), acc);
        _mm256_storeu_ps(o + d, acc);
    }
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

const struct ops__group_kern ops__group_kern_avx2 = {scores4_avx2, scores1_avx2, pv4_avx2, pv1_avx2};

void ops__attend_group_avx2(float *const *out, const uint16_t *q16, int nq, const int *lo, const int *hi,
                            const uint16_t *const *keys, const uint16_t *const *vals, int span, int dk, int dv,
                            float scale, float *work, const struct ops__group_kern *kern)
{
    float *qf = work;                           /* [nq][dk] the queries widened (exact) */
    float *sc = work + (size_t)nq * (size_t)dk; /* [nq][span] scores, then probabilities */
    int jmin = span, jmax = 0;
    for (int q = 0; q < nq; q++) {
        for (int d = 0; d < dk; d += 8)
            _mm256_storeu_ps(qf + (size_t)q * dk + d, ld16(q16 + (size_t)q * dk + d));
        jmin = imin(jmin, lo[q]);
        jmax = imax(jmax, hi[q]);
    }
    /* Scores, tile by tile. A block of four queries computes the union of
     * their ranges within the tile: a score outside a query's own range is
     * never read, and computing it changes no other. */
    for (int a = jmin; a < jmax; a += GROUP_TILE) {
        const int b = imin(a + GROUP_TILE, jmax);
        int q = 0;
        for (; q + 4 <= nq; q += 4) {
            int u0 = b, u1 = a;
            for (int i = q; i < q + 4; i++) {
                u0 = imin(u0, imax(a, lo[i]));
                u1 = imax(u1, imin(b, hi[i]));
            }
            if (u0 >= u1)
                continue;
            float *s[4];
            const float *qq[4];
            for (int i = 0; i < 4; i++) {
                s[i] = sc + (size_t)(q + i) * span;
                qq[i] = qf + (size_t)(q + i) * dk;
            }
            kern->scores4(s, qq, keys, u0, u1, dk, scale);
        }
        for (; q < nq; q++) {
            const int u0 = imax(a, lo[q]), u1 = imin(b, hi[q]);
            if (u0 < u1)
                kern->scores1(sc + (size_t)q * span, qf + (size_t)q * dk, keys, u0, u1, dk, scale);
        }
    }
    /* Softmax per query over its own range; the probabilities kept as the
     * f32 values of their f16 rounding. */
    for (int q = 0; q < nq; q++) {
        softmax_p(sc + (size_t)q * span + lo[q], hi[q] - lo[q]);
        memset(out[q], 0, (size_t)dv * sizeof *out[q]);
    }
    /* Weighted sums of values, tile by tile. Each query's rows must be
     * added in ascending order and only its own: a block of four takes the
     * rows all four see together, each query alone takes the rows before
     * and after those. */
    for (int a = jmin; a < jmax; a += GROUP_TILE) {
        const int b = imin(a + GROUP_TILE, jmax);
        int q = 0;
        for (; q + 4 <= nq; q += 4) {
            int r0[4], r1[4], c0 = a, c1 = b;
            for (int i = 0; i < 4; i++) {
                r0[i] = imax(a, lo[q + i]);
                r1[i] = imin(b, hi[q + i]);
                c0 = imax(c0, r0[i]);
                c1 = imin(c1, r1[i]);
            }
            if (c0 >= c1) {
                for (int i = 0; i < 4; i++)
                    kern->pv1(out[q + i], sc + (size_t)(q + i) * span, vals, r0[i], r1[i], dv);
                continue;
            }
            const float *p[4];
            for (int i = 0; i < 4; i++) {
                p[i] = sc + (size_t)(q + i) * span;
                kern->pv1(out[q + i], p[i], vals, r0[i], c0, dv);
            }
            kern->pv4(out + q, p, vals, c0, c1, dv);
            for (int i = 0; i < 4; i++)
                kern->pv1(out[q + i], p[i], vals, c1, r1[i], dv);
        }
        for (; q < nq; q++)
            kern->pv1(out[q], sc + (size_t)q * span, vals, imax(a, lo[q]), imin(b, hi[q]), dv);
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
