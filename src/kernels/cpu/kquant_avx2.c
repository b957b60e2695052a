/*
 * AVX2 kernels for the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) against
 * Q8_K activations.
 *
 * Per super-block of 256 and per (weight row, activation row) pair, the
 * integer sum  sum_g scale_g * sum_{i in g} q_i * y_i  is formed exactly:
 * unsigned quants times activation bytes with maddubs, times the group's
 * scale (broadcast as int16) with madd, added in int32 lanes. Then one FMA
 * per super-block adds d_y * d_w times the lanes to the pair's f32
 * accumulator.
 *
 * The f32 operations are llama.cpp's AVX2 ggml_vec_dot_qX_K_q8_K's, one
 * for one, so the results match it to the bit: the same elements in each
 * int32 lane, the same FMAs in the same order, the same final sums. That
 * fixes how each type handles its offsets and mins:
 *  - Q2_K: the mins term (mins times bsums, 8 lanes) is FMAed with
 *    -d_y * dmin_w into the same accumulator, before the quants' FMA.
 *  - Q3_K: the -4 offset is applied per element (signed quants), not
 *    through the bsums, so every lane holds exactly its own elements.
 *  - Q4_K: mins times the 32-element sums of bsums in 4 lanes, FMAed with
 *    -d_y * dmin_w into a 128-bit accumulator added at the end.
 *  - Q5_K: the mins term summed as an integer, times -d_y * dmin_w, FMAed
 *    into a scalar added at the end.
 *  - Q6_K: the -32 offset through the bsums (which matches llama.cpp).
 *
 * Tiles as in legacy_avx2.c: one weight row against up to 8 activation
 * rows; each weight super-block is decoded once per call and its scales
 * are reused for every activation row. Decode walks rows one after
 * another with a software prefetch.
 */
#include "kernels/cpu/avx2_util.h"
#include "kernels/quants.h"

#include <math.h>

/* Lanes 0..7 get int16 scale s[2t], lanes 8..15 get s[2t + 1], from 16
 * int16 scales in v (the layout of a 32-element run made of two groups of
 * 16). */
KERN_INLINE __m256i pair_scales(__m256i v, int t)
{
    __m256i r = _mm256_permutevar8x32_epi32(v, _mm256_set1_epi32(t));
    const __m256i shuf = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                                          2, 3, 2, 3, 2, 3);
    return _mm256_shuffle_epi8(r, shuf);
}

/* All 16 lanes get int16 scale g (0..7) of v, which holds 8 int16 scales
 * in each 128-bit half. */
KERN_INLINE __m256i bcast_scale(__m256i v, int g)
{
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(((2 * g + 1) << 8) | (2 * g))));
}

/* Q4_K / Q5_K: the 8 scales and 8 mins as bytes 0..7 and 8..15. */
KERN_INLINE __m128i k4_scales_mins(const uint8_t *s12)
{
    uint32_t u[4];
    memcpy(u, s12, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    /* scales 0..3: low 6 bits of bytes 0..3; scales 4..7: low nibbles of
     * bytes 8..11 with the top 2 bits of bytes 0..3; mins 0..3: low 6 bits
     * of bytes 4..7; mins 4..7: high nibbles of bytes 8..11 with the top 2
     * bits of bytes 4..7. */
    uint32_t sc_lo = u[0] & m6;
    uint32_t sc_hi = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
    uint32_t mn_lo = u[1] & m6;
    uint32_t mn_hi = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)mn_lo, (int)mn_hi);
}

/* ---- Q4_K ---- */

KERN_INLINE void tile_q4_K(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,
                           const float *xd, float *y, int64_t ldy)
{
    __m256 acc[4][8], accm[4][8];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            acc[i][j] = accm[i][j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const struct kern__q4_K *wb = (const struct kern__q4_K *)(w + (size_t)i * ws) + b;
            if (NX == 1)
                kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
            __m128i sm8 = k4_scales_mins(wb->scales); /* [sc0..7, m0..7] */
            __m256i sm = _mm256_cvtepu8_epi16(sm8);
            __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);         /* sc0..7 in both halves */
            __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm8, sm8)); /* m0, m0, m1, m1, ... */
            __m256 dw = _mm256_set1_ps(kern__h2f_hw(wb->d)), nmw = _mm256_set1_ps(-kern__h2f_hw(wb->dmin));
            __m256i sumi[8];
            for (int j = 0; j < NX; j++)
                sumi[j] = _mm256_setzero_si256();
            for (int g = 0; g < 4; g++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * g));
                __m256i lo = _mm256_and_si256(bits, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                __m256i s_lo = bcast_scale(scales, 2 * g), s_hi = bcast_scale(scales, 2 * g + 1);
                for (int j = 0; j < NX; j++) {
                    const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                    __m256i y0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g));
                    __m256i y1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g + 32));
                    __m256i p0 = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, y0));
                    __m256i p1 = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, y1));
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p0, p1));
                }
            }
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                /* mins: P_g = m_g * (bsums[2g] + bsums[2g + 1]); llama.cpp
                 * accumulates P_2k + P_2k+1 in 4 lanes, here even lane 2k */
                __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                __m256i pm = _mm256_madd_epi16(mins, bs);
                pm = _mm256_add_epi32(pm, _mm256_srli_epi64(pm, 32));
                __m256 dy = _mm256_set1_ps(xb->d);
                accm[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(nmw, dy), _mm256_cvtepi32_ps(pm), accm[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dy), _mm256_cvtepi32_ps(sumi[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            y[j * ldy + i] = kern__hsum_ps(acc[i][j]) + kern__hsum_even_ps(accm[i][j]);
}

/* ---- Q5_K: Q4_K plus a fifth bit per element from qh ---- */

/* Bit g of each byte of v, moved to bit 4 (g is 0..7). Shifts are within
 * 16-bit lanes, which is safe here: the source bit stays in its byte. */
KERN_INLINE __m256i bit_to_16(__m256i v, int g)
{
    __m256i s = g <= 4 ? _mm256_slli_epi16(v, 4 - g) : _mm256_srli_epi16(v, g - 4);
    return _mm256_and_si256(s, _mm256_set1_epi8(0x10));
}

KERN_INLINE void tile_q5_K(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,
                           const float *xd, float *y, int64_t ldy)
{
    __m256 acc[4][8];
    float accm[4][8];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++) {
            acc[i][j] = _mm256_setzero_ps();
            accm[i][j] = 0.0f;
        }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const struct kern__q5_K *wb = (const struct kern__q5_K *)(w + (size_t)i * ws) + b;
            if (NX == 1)
                kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
            __m128i sm8 = k4_scales_mins(wb->scales); /* [sc0..7, m0..7] */
            __m256i sm = _mm256_cvtepu8_epi16(sm8);
            __m256i scales = _mm256_permute2x128_si256(sm, sm, 0x00);         /* sc0..7 in both halves */
            __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm8, sm8)); /* m0, m0, m1, m1, ... */
            float dw = kern__h2f_hw(wb->d), mw = kern__h2f_hw(wb->dmin);
            __m256i hbits = _mm256_loadu_si256((const __m256i *)wb->qh);
            __m256i sumi[8];
            for (int j = 0; j < NX; j++)
                sumi[j] = _mm256_setzero_si256();
            for (int g = 0; g < 4; g++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * g));
                __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4), bit_to_16(hbits, 2 * g));
                __m256i hi =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), bit_to_16(hbits, 2 * g + 1));
                __m256i s_lo = bcast_scale(scales, 2 * g), s_hi = bcast_scale(scales, 2 * g + 1);
                for (int j = 0; j < NX; j++) {
                    const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                    __m256i y0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g));
                    __m256i y1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g + 32));
                    __m256i p0 = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, y0));
                    __m256i p1 = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, y1));
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p0, p1));
                }
            }
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                /* mins: sum_g m_g * (bsums[2g] + bsums[2g + 1]), exact in int32 */
                __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                int pm = kern__hsum_epi32(_mm256_madd_epi16(mins, bs));
                accm[i][j] = fmaf(-xb->d * mw, (float)pm, accm[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(xb->d * dw), _mm256_cvtepi32_ps(sumi[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            y[j * ldy + i] = kern__hsum_ps(acc[i][j]) + accm[i][j];
}

/* ---- Q6_K: (q + 32) unsigned in 0..63; the -32 comes back via bsums ---- */

KERN_INLINE void tile_q6_K(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,
                           const float *xd, float *y, int64_t ldy)
{
    __m256 acc[4][8];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            acc[i][j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const struct kern__q6_K *wb = (const struct kern__q6_K *)(w + (size_t)i * ws) + b;
            if (NX == 1)
                kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
            __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wb->scales)); /* [16] */
            __m256 dw = _mm256_set1_ps(kern__h2f_hw(wb->d));
            __m256i sumi[8];
            for (int j = 0; j < NX; j++) {
                /* 32 * sum_g sc_g * bsums_g, to subtract at the end */
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                sumi[j] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
            }
            for (int h = 0; h < 2; h++) {
                __m256i l0 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h));
                __m256i l1 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h + 32));
                __m256i hb = _mm256_loadu_si256((const __m256i *)(wb->qh + 32 * h));
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
                q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
                __m256i s[4];
                for (int r = 0; r < 4; r++)
                    s[r] = pair_scales(sc16, 4 * h + r);
                for (int j = 0; j < NX; j++) {
                    const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                    __m256i t = _mm256_setzero_si256();
                    for (int r = 0; r < 4; r++) {
                        __m256i yv = _mm256_loadu_si256((const __m256i *)(xb->qs + 128 * h + 32 * r));
                        t = _mm256_add_epi32(t, _mm256_madd_epi16(s[r], _mm256_maddubs_epi16(q[r], yv)));
                    }
                    sumi[j] = _mm256_add_epi32(sumi[j], t);
                }
            }
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                acc[i][j] =
                    _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xb->d)), _mm256_cvtepi32_ps(sumi[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            y[j * ldy + i] = kern__hsum_ps(acc[i][j]);
}

/* ---- Q3_K: (q + 4) = low 2 bits | high bit << 2, unsigned 0..7 ---- */

KERN_INLINE __m256i q3k_scales16(const uint8_t *s12)
{
    int8_t sc[16];
    kern__q3k_scales(s12, sc);
    __m128i v = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)sc), _mm_set1_epi8(32));
    return _mm256_cvtepi8_epi16(v);
}

/* Bit p of each byte of v moved to bit 2 (p is 0..7), within 16-bit lanes. */
KERN_INLINE __m256i bit_to_4(__m256i v, int p)
{
    __m256i s = p <= 2 ? _mm256_slli_epi16(v, 2 - p) : _mm256_srli_epi16(v, p - 2);
    return _mm256_and_si256(s, _mm256_set1_epi8(0x04));
}

KERN_INLINE void tile_q3_K(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,
                           const float *xd, float *y, int64_t ldy)
{
    __m256 acc[4][8];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            acc[i][j] = _mm256_setzero_ps();
    const __m256i m2 = _mm256_set1_epi8(0x03), four = _mm256_set1_epi8(4);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const struct kern__q3_K *wb = (const struct kern__q3_K *)(w + (size_t)i * ws) + b;
            if (NX == 1)
                kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
            __m256i sc16 = q3k_scales16(wb->scales);
            float dw = kern__h2f_hw(wb->d);
            __m256i hm = _mm256_loadu_si256((const __m256i *)wb->hmask);
            __m256i sumi[8];
            for (int j = 0; j < NX; j++)
                sumi[j] = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * h));
                for (int p = 0; p < 4; p++) {
                    /* signed q in -4..3; |q| times y with q's sign gives q * y
                     * (y is never -128: Q8_K quants are in -127..127) */
                    __m256i q = _mm256_sub_epi8(
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 2 * p), m2), bit_to_4(hm, 4 * h + p)),
                        four);
                    __m256i aq = _mm256_sign_epi8(q, q);
                    __m256i s = pair_scales(sc16, 4 * h + p);
                    for (int j = 0; j < NX; j++) {
                        const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                        __m256i yv =
                            _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xb->qs + 128 * h + 32 * p)), q);
                        sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(s, _mm256_maddubs_epi16(aq, yv)));
                    }
                }
            }
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(xb->d * dw), _mm256_cvtepi32_ps(sumi[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            y[j * ldy + i] = kern__hsum_ps(acc[i][j]);
}

/* ---- Q2_K: 2-bit unsigned quants, scale and min per 16 ---- */

KERN_INLINE void tile_q2_K(int NW, int NX, int64_t nb, const char *w, size_t ws, const char *x, size_t xs,
                           const float *xd, float *y, int64_t ldy)
{
    __m256 acc[4][8];
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            acc[i][j] = _mm256_setzero_ps();
    const __m256i m2 = _mm256_set1_epi8(0x03);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const struct kern__q2_K *wb = (const struct kern__q2_K *)(w + (size_t)i * ws) + b;
            if (NX == 1)
                kern__prefetch_lines((const char *)wb + KERN__PF_DIST, sizeof *wb);
            __m128i raw = _mm_loadu_si128((const __m128i *)wb->scales);
            __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
            float dw = kern__h2f_hw(wb->d), mw = kern__h2f_hw(wb->dmin);
            __m256i sumi[8];
            for (int j = 0; j < NX; j++)
                sumi[j] = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(wb->qs + 32 * h));
                for (int p = 0; p < 4; p++) {
                    __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * p), m2);
                    __m256i s = pair_scales(sc16, 4 * h + p);
                    for (int j = 0; j < NX; j++) {
                        const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                        __m256i yv = _mm256_loadu_si256((const __m256i *)(xb->qs + 128 * h + 32 * p));
                        sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(s, _mm256_maddubs_epi16(q, yv)));
                    }
                }
            }
            for (int j = 0; j < NX; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)(x + (size_t)j * xs) + b;
                __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                __m256i pm = _mm256_madd_epi16(mn16, bs);
                /* mins first, into the same accumulator */
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(-xb->d * mw), _mm256_cvtepi32_ps(pm), acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(xb->d * dw), _mm256_cvtepi32_ps(sumi[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < NX; j++)
            y[j * ldy + i] = kern__hsum_ps(acc[i][j]);
}

DOT_ENTRY(q2_K, n / KERN_QK_K)
DOT_ENTRY(q3_K, n / KERN_QK_K)
DOT_ENTRY(q4_K, n / KERN_QK_K)
DOT_ENTRY(q5_K, n / KERN_QK_K)
DOT_ENTRY(q6_K, n / KERN_QK_K)
