/*
 * The repacked Q4_K and Q6_K tiles (repack_avx2.c) with AVX-512: one group of 8 rows
 * is repack_avx2.c's tile with vpdpwssd on 256-bit registers (AVX512-VL +
 * VNNI) in place of madd + add; two consecutive groups (16 rows) run in
 * 512-bit registers with vpdpbusd (rp_group2, rp6_group2 below), group g in
 * lanes 0-7 and g + 1 in lanes 8-15. Every lane sees the same integer sums
 * and the same f32 operations as the AVX2 tile's, so the results are its
 * bits.
 */
#define KERN_RP_VNNI 1
#include "kernels/cpu/repack_avx2.c"

KERN_INLINE __m512i cat2(const void *a, const void *b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* int32 lanes 0-7 from a8's bytes, 8-15 from b8's. */
KERN_INLINE __m512i bytes16(const uint8_t *a8, const uint8_t *b8)
{
    __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)a8), _mm_loadl_epi64((const __m128i *)b8));
    return _mm512_cvtepu8_epi32(v);
}

KERN_INLINE __m512 cat_ps(const float *a, const float *b)
{
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(a)), _mm256_loadu_ps(b), 1);
}

/*
 * Two groups (16 rows) of Q4_K with vpdpbusd. repack_avx2.c's lane sums
 *     V_l = sum_g sc[2g] * D_lo(g, l) + sc[2g+1] * D_hi(g, l),
 *     D_lo(g, l) = sum_{i<4} lo(qs[32g + 4l + i]) * y[64g + 4l + i]  (D_hi: hi, y + 32),
 * are built here from the four-product sums themselves: one vpdpbusd gives
 * D for 16 (row, nibble) lanes, where maddubs + vpdpwssd spend two 512-bit
 * multiplies on the same 64 products. |D| <= 4 * 15 * 128 fits int16, so
 * vpackssdw packs the lo and hi sums of a row into one int16 pair, exactly,
 * and one vpdpwssd with the pair (sc[2g], sc[2g+1]) adds both scaled: three
 * multiplies per 128 products instead of four (the 512-bit integer
 * multiplies share one port on the Xeons).
 *
 * Lanes: A = unpacklo32(lo, hi) holds (lo, hi) of rows 4k, 4k+1 in 128-bit
 * lane k, B = unpackhi32 rows 4k+2, 4k+3; vpackssdw(D(A), D(B)) then has
 * row 4k+t's (D_lo, D_hi) in dword t of lane k: rows in their natural
 * order. The activation operand is the 8-byte pair (y lo-run quad, y
 * hi-run quad) broadcast to every qword, from a per-row copy of the
 * super-block's bytes regrouped that way (yq below).
 *
 * V_l is the same integer as in the other tiles and every f32 step is the
 * same, so the results are the AVX2 tile's bits.
 */
static void rp_group2(int64_t nb, const struct kern__q4_Kx8 *w0, const void *xq, size_t xs, int nx, float *y,
                      int64_t ldy)
{
    __m512 acc[KERN__RP_TX][12];
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 12; l++)
            acc[j][l] = _mm512_setzero_ps();
    /* qword slot of lane l in a row of yq: unpack{lo,hi}_epi32's order */
    static const int slot[8] = {0, 1, 4, 5, 2, 3, 6, 7};
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const struct kern__q4_Kx8 *w1 = w0 + nb;
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q4_Kx8 *a = w0 + b, *c = w1 + b;
        /* yq[j][g][slot[l]] = (y[64g + 4l .. +3], y[64g + 32 + 4l .. +3]) */
        uint64_t yq[KERN__RP_TX][4][8] __attribute__((aligned(32)));
        __m512 dwy[KERN__RP_TX];
        const __m512 dw = cat_ps(a->d, c->d);
        const __m512 nmw = _mm512_xor_ps(cat_ps(a->dmin, c->dmin), _mm512_set1_ps(-0.0f));
        __m512i mn[4];
        for (int k = 0; k < 4; k++)
            mn[k] = _mm512_or_si512(bytes16(a->mn[2 * k], c->mn[2 * k]),
                                    _mm512_slli_epi32(bytes16(a->mn[2 * k + 1], c->mn[2 * k + 1]), 16));
        for (int j = 0; j < nx; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
            for (int g = 0; g < 4; g++) {
                __m256i ylo = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g));
                __m256i yhi = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g + 32));
                _mm256_store_si256((__m256i *)&yq[j][g][0], _mm256_unpacklo_epi32(ylo, yhi));
                _mm256_store_si256((__m256i *)&yq[j][g][4], _mm256_unpackhi_epi32(ylo, yhi));
            }
            const __m512 dy = _mm512_set1_ps(xb->d);
            dwy[j] = _mm512_mul_ps(dw, dy);
            /* the mins, as in rp_group */
            const __m512 nmwy = _mm512_mul_ps(nmw, dy);
            for (int k = 0; k < 4; k++) {
                const int16_t *bs = xb->bsums + 4 * k;
                uint32_t p = (uint16_t)(int16_t)(bs[0] + bs[1]) | (uint32_t)(uint16_t)(int16_t)(bs[2] + bs[3]) << 16;
                __m512i pm = _mm512_madd_epi16(mn[k], _mm512_set1_epi32((int)p));
                acc[j][8 + k] = _mm512_fmadd_ps(nmwy, _mm512_cvtepi32_ps(pm), acc[j][8 + k]);
            }
        }
        __m512i sc[4]; /* (sc[2g], sc[2g + 1]) of every row */
        for (int g = 0; g < 4; g++)
            sc[g] = _mm512_or_si512(bytes16(a->sc[2 * g], c->sc[2 * g]),
                                    _mm512_slli_epi32(bytes16(a->sc[2 * g + 1], c->sc[2 * g + 1]), 16));
        /* Lane by lane: lane l's 8 weight vectors stay in registers while
         * the activation rows pass. */
        for (int l = 0; l < 8; l++) {
            __m512i wa[4], wb[4];
            for (int g = 0; g < 4; g++) {
                __m512i bits = cat2(a->qs[g][l], c->qs[g][l]);
                __m512i lo = _mm512_and_si512(bits, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
                wa[g] = _mm512_unpacklo_epi32(lo, hi);
                wb[g] = _mm512_unpackhi_epi32(lo, hi);
            }
            for (int j = 0; j < nx; j++) {
                __m512i v = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++) {
                    __m512i yv = _mm512_set1_epi64((long long)yq[j][g][slot[l]]);
                    __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa[g], yv);
                    __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb[g], yv);
                    v = _mm512_dpwssd_epi32(v, sc[g], _mm512_packs_epi32(da, db));
                }
                acc[j][l] = _mm512_fmadd_ps(dwy[j], _mm512_cvtepi32_ps(v), acc[j][l]);
            }
        }
    }
    for (int j = 0; j < nx; j++) {
        __m512 *s = acc[j];
        __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[4]), _mm512_add_ps(s[2], s[6])),
                                 _mm512_add_ps(_mm512_add_ps(s[1], s[5]), _mm512_add_ps(s[3], s[7])));
        __m512 mm = _mm512_add_ps(_mm512_add_ps(s[8], s[10]), _mm512_add_ps(s[9], s[11]));
        _mm512_storeu_ps(y + j * ldy, _mm512_add_ps(t, mm));
    }
}

void kern__rp_q4_K_avx512(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    if (ng == 2)
        rp_group2(nb, wp, xq, xs, nx, y, ldy);
    else
        rp_group(nb, wp, xq, xs, nx, y, ldy);
}

/* ---- Q6_K: repack_avx2.c's rp6_group, two groups at once ---- */

/* int32 lanes 0-7 from a8's signed bytes, 8-15 from b8's. */
KERN_INLINE __m512i sbytes16(const int8_t *a8, const int8_t *b8)
{
    __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)a8), _mm_loadl_epi64((const __m128i *)b8));
    return _mm512_cvtepi8_epi32(v);
}

/* int16 pairs (lo, hi) per int32 lane from two vectors of int32 lanes. */
KERN_INLINE __m512i pairs16(__m512i lo, __m512i hi)
{
    return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(hi, 16));
}

KERN_INLINE void rp6_decode2(__m512i lo0, __m512i lo1, __m512i hb, __m512i q[4])
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03);
    q[0] = _mm512_or_si512(_mm512_and_si512(lo0, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m2), 4));
    q[1] = _mm512_or_si512(_mm512_and_si512(lo1, m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2), m2), 4));
    q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo0, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 4), m2), 4));
    q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo1, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 6), m2), 4));
}

/*
 * Two groups of Q6_K with vpdpbusd, as rp_group2 does Q4_K: the
 * four-product sums of half 0 and half 1 (run t, lane l) of a row pair up
 * in one int16 pair (|D| <= 4 * 63 * 128 = 32256 fits), scaled by
 * (sc[2t + l/4], sc[8 + 2t + l/4]) in one vpdpwssd; the activation operand
 * is (y[32t + 4l .. +3], y[128 + 32t + 4l .. +3]) in every qword.
 */
static void rp6_group2(int64_t nb, const struct kern__q6_Kx8 *w0, const void *xq, size_t xs, int nx, float *y,
                       int64_t ldy)
{
    __m512 acc[KERN__RP_TX][8];
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 8; l++)
            acc[j][l] = _mm512_setzero_ps();
    static const int slot[8] = {0, 1, 4, 5, 2, 3, 6, 7}; /* as in rp_group2 */
    const struct kern__q6_Kx8 *w1 = w0 + nb;
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q6_Kx8 *a = w0 + b, *c = w1 + b;
        __m512i wq[8][8]; /* [l][4h + t] */
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 8; l++)
                rp6_decode2(cat2(a->ql[h][0][l], c->ql[h][0][l]), cat2(a->ql[h][1][l], c->ql[h][1][l]),
                            cat2(a->qh[h][l], c->qh[h][l]), &wq[l][4 * h]);
        __m512i sp[4][2], cs[8]; /* sp[t][l / 4]: (sc[2t + l/4], sc[8 + 2t + l/4]) of every row */
        for (int t = 0; t < 4; t++)
            for (int u = 0; u < 2; u++)
                sp[t][u] = pairs16(sbytes16(a->sc[2 * t + u], c->sc[2 * t + u]),
                                   sbytes16(a->sc[8 + 2 * t + u], c->sc[8 + 2 * t + u]));
        for (int l = 0; l < 8; l++) {
            __m512i ab = pairs16(sbytes16(a->sc[2 * l], c->sc[2 * l]), sbytes16(a->sc[2 * l + 1], c->sc[2 * l + 1]));
            cs[l] = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_slli_epi16(ab, 5)); /* -32 sc, exact in int16 */
        }
        const __m512 dw = cat_ps(a->d, c->d);
        __m512 dwy[KERN__RP_TX];
        uint64_t yq[KERN__RP_TX][4][8] __attribute__((aligned(32))); /* [j][t][slot[l]] */
        for (int j = 0; j < nx; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
            dwy[j] = _mm512_mul_ps(dw, _mm512_set1_ps(xb->d));
            for (int t = 0; t < 4; t++) {
                __m256i y0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * t));
                __m256i y1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 128 + 32 * t));
                _mm256_store_si256((__m256i *)&yq[j][t][0], _mm256_unpacklo_epi32(y0, y1));
                _mm256_store_si256((__m256i *)&yq[j][t][4], _mm256_unpackhi_epi32(y0, y1));
            }
        }
        for (int l = 0; l < 8; l++) {
            __m512i wa[4], wb[4];
            for (int t = 0; t < 4; t++) {
                wa[t] = _mm512_unpacklo_epi32(wq[l][t], wq[l][4 + t]);
                wb[t] = _mm512_unpackhi_epi32(wq[l][t], wq[l][4 + t]);
            }
            for (int j = 0; j < nx; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
                __m512i v = _mm512_madd_epi16(cs[l], _mm512_set1_epi32((int)kern__load_u32(xb->bsums + 2 * l)));
                for (int t = 0; t < 4; t++) {
                    __m512i yv = _mm512_set1_epi64((long long)yq[j][t][slot[l]]);
                    __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa[t], yv);
                    __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb[t], yv);
                    v = _mm512_dpwssd_epi32(v, sp[t][l / 4], _mm512_packs_epi32(da, db));
                }
                acc[j][l] = _mm512_fmadd_ps(dwy[j], _mm512_cvtepi32_ps(v), acc[j][l]);
            }
        }
    }
    for (int j = 0; j < nx; j++) {
        __m512 *s = acc[j];
        __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[4]), _mm512_add_ps(s[2], s[6])),
                                 _mm512_add_ps(_mm512_add_ps(s[1], s[5]), _mm512_add_ps(s[3], s[7])));
        _mm512_storeu_ps(y + j * ldy, t);
    }
}

void kern__rp_q6_K_avx512(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy)
{
    if (ng == 2)
        rp6_group2(nb, wp, xq, xs, nx, y, ldy);
    else
        rp6_group(nb, wp, xq, xs, nx, y, ldy);
}
