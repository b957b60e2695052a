/*
 * Q4_K and Q6_K weights repacked eight rows at a time ("lane = row"), and
 * the tiles that multiply them with Q8_K activations for prefill and
 * batched decode (m >= 2 activation rows). The Q4_K tile is described
 * here; the Q6_K one (below) follows the same rule.
 *
 * Why: the row-by-row tiles (kquant_avx2.c) finish every super-block of
 * every (weight row, activation row) pair with about a dozen vector
 * operations (fold, convert, scale, FMA, the mins) next to 8-16 integer
 * multiplies, and they load every activation vector once per weight row.
 * Here one 8-lane register holds one value per weight row, so those steps
 * are done for 8 pairs at once, and an activation quad is broadcast once
 * for 8 rows.
 *
 * Exactness: the results are bit for bit kern__dot_q4_K_avx2's (and so
 * llama.cpp's AVX2 vec_dot and the AVX-512 path's). That tile keeps, per
 * pair, 8 int32 lanes l = 0..7 per super-block,
 *     V_l = sum_g sc[2g]   * sum_i lo(qs[32g + 4l + i]) * y[64g + 4l + i]
 *         + sc[2g+1] * sum_i hi(qs[32g + 4l + i]) * y[64g + 32 + 4l + i],
 * and 8 f32 accumulators acc_l = fma(d_w * d_y, V_l, acc_l), plus the mins
 * in 4 accumulators; then fixed horizontal sums. Integer sums are exact in
 * any order, so here vector V_l holds lane l of the 8 rows, and every f32
 * step (products, FMAs, the horizontal-sum tree) is the same operation on
 * the same values, just in another register lane.
 *
 * Layout of a repacked tensor: groups of 8 rows (n / 8 of them; rows past
 * the last full group stay in the original layout), each group nb blocks of
 * struct kern__q4_Kx8 (struct kern__q6_Kx8), group after group.
 *
 * Compiled twice: as is for AVX2 (maddubs, madd, add), and by
 * repack_avx512.c with KERN_RP_VNNI, where vpdpwssd on 256-bit registers
 * (AVX512-VL + VNNI) does the madd and the add in one instruction; that
 * file also runs two groups at once in 512-bit registers.
 */
#include "kernels/cpu/avx2_util.h"
#include "kernels/quants.h"

#ifdef KERN_RP_VNNI
KERN_INLINE __m256i rp_madd_add(__m256i acc, __m256i s, __m256i p) { return _mm256_dpwssd_epi32(acc, s, p); }
#else
KERN_INLINE __m256i rp_madd_add(__m256i acc, __m256i s, __m256i p)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s, p));
}
#endif

/* int16 pairs (v, v) per int32 lane from 8 bytes (one per row). */
KERN_INLINE __m256i rp_pairs(const uint8_t *b8)
{
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b8));
    return _mm256_or_si256(v, _mm256_slli_epi32(v, 16));
}

/* int16 pairs (a, b) per int32 lane from two runs of 8 bytes. */
KERN_INLINE __m256i rp_pairs2(const uint8_t *a8, const uint8_t *b8)
{
    __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)a8));
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b8));
    return _mm256_or_si256(a, _mm256_slli_epi32(b, 16));
}

/*
 * One group of 8 weight rows against nx activation rows (nx <= KERN__RP_TX):
 * y[j * ldy + r] for r < 8, j < nx. xq rows are xs bytes apart.
 */
static void rp_group(int64_t nb, const void *wp, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    /* acc[j][0..7]: the 8 lanes of AVX2's acc; acc[j][8..11]: its 4 even
     * lanes of accm (the mins), for 8 rows each. */
    __m256 acc[KERN__RP_TX][12];
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 12; l++)
            acc[j][l] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const struct kern__q4_Kx8 *wb = wp;
    for (int64_t b = 0; b < nb; b++, wb++) {
        /* The 8 rows' nibbles, decoded once for all activation rows. */
        __m256i wq[4][8][2];
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 8; l++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)wb->qs[g][l]);
                wq[g][l][0] = _mm256_and_si256(bits, m4);
                wq[g][l][1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            }
        __m256i sc[8], mn[4];
        for (int s = 0; s < 8; s++)
            sc[s] = rp_pairs(wb->sc[s]);
        for (int k = 0; k < 4; k++)
            mn[k] = rp_pairs2(wb->mn[2 * k], wb->mn[2 * k + 1]);
        const __m256 dw = _mm256_loadu_ps(wb->d);
        const __m256 nmw = _mm256_xor_ps(_mm256_loadu_ps(wb->dmin), _mm256_set1_ps(-0.0f));
        for (int j = 0; j < nx; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
            __m256i v[8];
            for (int l = 0; l < 8; l++)
                v[l] = _mm256_setzero_si256();
            for (int g = 0; g < 4; g++)
                for (int l = 0; l < 8; l++) {
                    __m256i ylo = _mm256_set1_epi32((int)kern__load_u32(xb->qs + 64 * g + 4 * l));
                    __m256i yhi = _mm256_set1_epi32((int)kern__load_u32(xb->qs + 64 * g + 32 + 4 * l));
                    v[l] = rp_madd_add(v[l], sc[2 * g], _mm256_maddubs_epi16(wq[g][l][0], ylo));
                    v[l] = rp_madd_add(v[l], sc[2 * g + 1], _mm256_maddubs_epi16(wq[g][l][1], yhi));
                }
            const __m256 dy = _mm256_set1_ps(xb->d);
            const __m256 dwy = _mm256_mul_ps(dw, dy), nmwy = _mm256_mul_ps(nmw, dy);
            for (int l = 0; l < 8; l++)
                acc[j][l] = _mm256_fmadd_ps(dwy, _mm256_cvtepi32_ps(v[l]), acc[j][l]);
            /* mins: lane 2k of AVX2's pm is m[2k] * (bsums[4k] + bsums[4k+1])
             * + m[2k+1] * (bsums[4k+2] + bsums[4k+3]), an exact int32 */
            for (int k = 0; k < 4; k++) {
                const int16_t *bs = xb->bsums + 4 * k;
                uint32_t p = (uint16_t)(int16_t)(bs[0] + bs[1]) | (uint32_t)(uint16_t)(int16_t)(bs[2] + bs[3]) << 16;
                __m256i pm = _mm256_madd_epi16(mn[k], _mm256_set1_epi32((int)p));
                acc[j][8 + k] = _mm256_fmadd_ps(nmwy, _mm256_cvtepi32_ps(pm), acc[j][8 + k]);
            }
        }
    }
    for (int j = 0; j < nx; j++) {
        __m256 *a = acc[j];
        /* kern__hsum_ps's tree: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) */
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                                 _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])));
        /* kern__hsum_even_ps's: (m0 + m2) + (m1 + m3) */
        __m256 mm = _mm256_add_ps(_mm256_add_ps(a[8], a[10]), _mm256_add_ps(a[9], a[11]));
        _mm256_storeu_ps(y + j * ldy, _mm256_add_ps(s, mm));
    }
}

/* ---- Q6_K (struct kern__q6_Kx8) ----
 *
 * kern__dot_q6_K_avx2 keeps, per pair and super-block, 8 int32 lanes
 * l = 0..7,
 *     V_l = sum_{h, t} sc[8h + 2t + l / 4] * sum_i q[128h + 32t + 4l + i] * y[128h + 32t + 4l + i]
 *         - 32 * (sc[2l] * bsums[2l] + sc[2l + 1] * bsums[2l + 1]),
 * with q = the unsigned quant (0..63, the -32 comes back through the
 * bsums), then acc_l = fma(d_w * d_y, V_l, acc_l) and kern__hsum_ps. Here
 * vector V_l holds lane l of the 8 rows: the same integers (the -32 is
 * folded into the int16 scales of the bsums term, which is exact), the same
 * f32 steps.
 *
 * The loops go lane by lane: lane l's eight weight vectors stay in
 * registers while the activation rows pass, and the two halves of the
 * super-block sum in separate chains (added at the end, exact). Q4_K's
 * order (all 64 weight vectors per activation row) spilled the lane sums
 * to the stack and was no faster than the row-by-row tile on Zen 3.
 */

/* int16 pairs (v, v) per int32 lane from 8 signed bytes (one per row). */
KERN_INLINE __m256i rp_spairs(const int8_t *b8)
{
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)b8));
    return _mm256_blend_epi16(v, _mm256_slli_epi32(v, 16), 0xAA);
}

/* int16 pairs (-32 a, -32 b) per int32 lane from two runs of 8 signed bytes
 * (|-32 a| <= 4096 fits). */
KERN_INLINE __m256i rp_spairs2_m32(const int8_t *a8, const int8_t *b8)
{
    __m256i a = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)a8));
    __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)b8));
    __m256i ab = _mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xAA);
    return _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(ab, 5));
}

/* The four 32-element runs t = 0..3 of half h, bytes 4l..4l+3 of every row:
 * struct kern__q6_K's decoding (low nibble | high bit pair << 4). */
KERN_INLINE void rp6_decode(__m256i lo0, __m256i lo1, __m256i hb, __m256i q[4])
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    q[0] = _mm256_or_si256(_mm256_and_si256(lo0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(lo1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo0, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo1, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
}

static void rp6_group(int64_t nb, const void *wp, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    __m256 acc[KERN__RP_TX][8]; /* [j][l]: AVX2's acc lanes, for 8 rows each */
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 8; l++)
            acc[j][l] = _mm256_setzero_ps();
    const struct kern__q6_Kx8 *wb = wp;
    for (int64_t b = 0; b < nb; b++, wb++) {
        /* The 8 rows' quants, decoded once for all activation rows. */
        __m256i wq[8][8]; /* [l][4h + t] */
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 8; l++)
                rp6_decode(_mm256_loadu_si256((const __m256i *)wb->ql[h][0][l]),
                           _mm256_loadu_si256((const __m256i *)wb->ql[h][1][l]),
                           _mm256_loadu_si256((const __m256i *)wb->qh[h][l]), &wq[l][4 * h]);
        __m256i sc[16], cs[8];
        for (int s = 0; s < 16; s++)
            sc[s] = rp_spairs(wb->sc[s]);
        for (int l = 0; l < 8; l++)
            cs[l] = rp_spairs2_m32(wb->sc[2 * l], wb->sc[2 * l + 1]);
        const __m256 dw = _mm256_loadu_ps(wb->d);
        __m256 dwy[KERN__RP_TX];
        for (int j = 0; j < nx; j++)
            dwy[j] = _mm256_mul_ps(
                dw, _mm256_set1_ps(((const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b)->d));
        /* Lane l of all rows for every activation row, with lane l's eight
         * weight vectors held in registers; two integer chains (h = 0, 1). */
        for (int l = 0; l < 8; l++) {
            __m256i wl[8];
            for (int u = 0; u < 8; u++)
                wl[u] = wq[l][u];
            for (int j = 0; j < nx; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
                /* the bsums term: (bsums[2l], bsums[2l + 1]) is one int32 */
                __m256i v0 = _mm256_madd_epi16(cs[l], _mm256_set1_epi32((int)kern__load_u32(xb->bsums + 2 * l)));
                __m256i v1 = _mm256_setzero_si256();
                for (int t = 0; t < 4; t++) {
                    __m256i y0 = _mm256_set1_epi32((int)kern__load_u32(xb->qs + 32 * t + 4 * l));
                    __m256i y1 = _mm256_set1_epi32((int)kern__load_u32(xb->qs + 128 + 32 * t + 4 * l));
                    v0 = rp_madd_add(v0, sc[2 * t + l / 4], _mm256_maddubs_epi16(wl[t], y0));
                    v1 = rp_madd_add(v1, sc[8 + 2 * t + l / 4], _mm256_maddubs_epi16(wl[4 + t], y1));
                }
                acc[j][l] = _mm256_fmadd_ps(dwy[j], _mm256_cvtepi32_ps(_mm256_add_epi32(v0, v1)), acc[j][l]);
            }
        }
    }
    for (int j = 0; j < nx; j++) {
        __m256 *a = acc[j];
        /* kern__hsum_ps's tree: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) */
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                                 _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])));
        _mm256_storeu_ps(y + j * ldy, s);
    }
}

#ifndef KERN_RP_VNNI
void kern__rp_q4_K_avx2(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    for (int g = 0; g < ng; g++)
        rp_group(nb, (const struct kern__q4_Kx8 *)wp + g * nb, xq, xs, nx, y + g * KERN__RP_ROWS, ldy);
}

void kern__rp_q6_K_avx2(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    for (int g = 0; g < ng; g++)
        rp6_group(nb, (const struct kern__q6_Kx8 *)wp + g * nb, xq, xs, nx, y + g * KERN__RP_ROWS, ldy);
}
#endif
