/*
 * The repacked Q4_K and Q6_K tiles (repack_avx2.c) with AVX-512: one group of 8 rows
 * is repack_avx2.c's tile with vpdpwssd on 256-bit registers (AVX512-VL +
 * VNNI) in place of madd + add; two consecutive groups (16 rows) run in
 * 512-bit registers, group g in lanes 0-7 and g + 1 in lanes 8-15. Every
 * lane sees the same integer sums and the same f32 operations as the AVX2
 * tile's, so the results are its bits.
 *
 * Tried and measured slower on the 16-core Xeon: forming the four-product
 * sums with vpdpbusd and pairing a row's two sums in int16 with vpackssdw
 * (three 512-bit multiplies per 128 products instead of four); pp512 at 16
 * threads fell 4 %, batched decode 11 % (docs/PERFORMANCE.md).
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

static void rp_group2(int64_t nb, const struct kern__q4_Kx8 *w0, const void *xq, size_t xs, int nx, float *y,
                      int64_t ldy)
{
    __m512 acc[KERN__RP_TX][12];
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 12; l++)
            acc[j][l] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const struct kern__q4_Kx8 *w1 = w0 + nb;
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q4_Kx8 *a = w0 + b, *c = w1 + b;
        __m512i wq[4][8][2];
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 8; l++) {
                __m512i bits = cat2(a->qs[g][l], c->qs[g][l]);
                wq[g][l][0] = _mm512_and_si512(bits, m4);
                wq[g][l][1] = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
            }
        __m512i sc[8], mn[4];
        for (int s = 0; s < 8; s++) {
            __m512i v = bytes16(a->sc[s], c->sc[s]);
            sc[s] = _mm512_or_si512(v, _mm512_slli_epi32(v, 16));
        }
        for (int k = 0; k < 4; k++)
            mn[k] = _mm512_or_si512(bytes16(a->mn[2 * k], c->mn[2 * k]),
                                    _mm512_slli_epi32(bytes16(a->mn[2 * k + 1], c->mn[2 * k + 1]), 16));
        const __m512 dw = cat_ps(a->d, c->d);
        const __m512 nmw = _mm512_xor_ps(cat_ps(a->dmin, c->dmin), _mm512_set1_ps(-0.0f));
        for (int j = 0; j < nx; j++) {
            const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
            __m512i v[8];
            for (int l = 0; l < 8; l++)
                v[l] = _mm512_setzero_si512();
            for (int g = 0; g < 4; g++)
                for (int l = 0; l < 8; l++) {
                    __m512i ylo = _mm512_set1_epi32((int)kern__load_u32(xb->qs + 64 * g + 4 * l));
                    __m512i yhi = _mm512_set1_epi32((int)kern__load_u32(xb->qs + 64 * g + 32 + 4 * l));
                    v[l] = _mm512_dpwssd_epi32(v[l], sc[2 * g], _mm512_maddubs_epi16(wq[g][l][0], ylo));
                    v[l] = _mm512_dpwssd_epi32(v[l], sc[2 * g + 1], _mm512_maddubs_epi16(wq[g][l][1], yhi));
                }
            const __m512 dy = _mm512_set1_ps(xb->d);
            const __m512 dwy = _mm512_mul_ps(dw, dy), nmwy = _mm512_mul_ps(nmw, dy);
            for (int l = 0; l < 8; l++)
                acc[j][l] = _mm512_fmadd_ps(dwy, _mm512_cvtepi32_ps(v[l]), acc[j][l]);
            for (int k = 0; k < 4; k++) {
                const int16_t *bs = xb->bsums + 4 * k;
                uint32_t p = (uint16_t)(int16_t)(bs[0] + bs[1]) | (uint32_t)(uint16_t)(int16_t)(bs[2] + bs[3]) << 16;
                __m512i pm = _mm512_madd_epi16(mn[k], _mm512_set1_epi32((int)p));
                acc[j][8 + k] = _mm512_fmadd_ps(nmwy, _mm512_cvtepi32_ps(pm), acc[j][8 + k]);
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

static void rp6_group2(int64_t nb, const struct kern__q6_Kx8 *w0, const void *xq, size_t xs, int nx, float *y,
                       int64_t ldy)
{
    __m512 acc[KERN__RP_TX][8];
    for (int j = 0; j < nx; j++)
        for (int l = 0; l < 8; l++)
            acc[j][l] = _mm512_setzero_ps();
    const struct kern__q6_Kx8 *w1 = w0 + nb;
    for (int64_t b = 0; b < nb; b++) {
        const struct kern__q6_Kx8 *a = w0 + b, *c = w1 + b;
        __m512i wq[8][8]; /* [l][4h + t] */
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 8; l++)
                rp6_decode2(cat2(a->ql[h][0][l], c->ql[h][0][l]), cat2(a->ql[h][1][l], c->ql[h][1][l]),
                            cat2(a->qh[h][l], c->qh[h][l]), &wq[l][4 * h]);
        __m512i sc[16], cs[8];
        for (int s = 0; s < 16; s++) {
            __m512i v = sbytes16(a->sc[s], c->sc[s]);
            sc[s] = pairs16(v, v);
        }
        for (int l = 0; l < 8; l++) {
            __m512i ab = pairs16(sbytes16(a->sc[2 * l], c->sc[2 * l]), sbytes16(a->sc[2 * l + 1], c->sc[2 * l + 1]));
            cs[l] = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_slli_epi16(ab, 5)); /* -32 sc, exact in int16 */
        }
        const __m512 dw = cat_ps(a->d, c->d);
        __m512 dwy[KERN__RP_TX];
        for (int j = 0; j < nx; j++)
            dwy[j] = _mm512_mul_ps(
                dw, _mm512_set1_ps(((const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b)->d));
        for (int l = 0; l < 8; l++) {
            __m512i wl[8];
            for (int u = 0; u < 8; u++)
                wl[u] = wq[l][u];
            for (int j = 0; j < nx; j++) {
                const struct kern__q8_K *xb = (const struct kern__q8_K *)((const char *)xq + (size_t)j * xs) + b;
                __m512i v0 = _mm512_madd_epi16(cs[l], _mm512_set1_epi32((int)kern__load_u32(xb->bsums + 2 * l)));
                __m512i v1 = _mm512_setzero_si512();
                for (int t = 0; t < 4; t++) {
                    __m512i y0 = _mm512_set1_epi32((int)kern__load_u32(xb->qs + 32 * t + 4 * l));
                    __m512i y1 = _mm512_set1_epi32((int)kern__load_u32(xb->qs + 128 + 32 * t + 4 * l));
                    v0 = _mm512_dpwssd_epi32(v0, sc[2 * t + l / 4], _mm512_maddubs_epi16(wl[t], y0));
                    v1 = _mm512_dpwssd_epi32(v1, sc[8 + 2 * t + l / 4], _mm512_maddubs_epi16(wl[4 + t], y1));
                }
                acc[j][l] = _mm512_fmadd_ps(dwy[j], _mm512_cvtepi32_ps(_mm512_add_epi32(v0, v1)), acc[j][l]);
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
