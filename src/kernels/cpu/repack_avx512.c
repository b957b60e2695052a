/*
 * The repacked Q4_K tiles (repack_avx2.c) with AVX-512: one group of 8 rows
 * is repack_avx2.c's tile with vpdpwssd on 256-bit registers (AVX512-VL +
 * VNNI) in place of madd + add; two consecutive groups (16 rows) run in
 * 512-bit registers, group g in lanes 0-7 and g + 1 in lanes 8-15. Every
 * lane sees the same integer sums and the same f32 operations as the AVX2
 * tile's, so the results are its bits.
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
