/*
 * Scalar reference: dequantization of every weight type and quantization
 * of activations to the dot types (Q8_0, Q8_1, Q8_K, F16, BF16, F32).
 *
 * This is the definition of the formats as lmd reads them, written to
 * mirror ggml's reference code (ggml-quants.c) element for element; the
 * tests check it against gguf-py's independent numpy decoder. The
 * activation quantizers reproduce llama.cpp's reference rounding exactly,
 * and the SIMD quantizers must produce the same bytes. Dot products live
 * in scalar_dot.c.
 */
#include "kernels/quants.h"

#include <math.h>
#include <string.h>

void kern__dequant_f32_scalar(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

void kern__dequant_f16_scalar(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = kern__h2f(s[i]);
}

void kern__dequant_bf16_scalar(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = kern_bf16_to_f32(s[i]);
}

void kern__dequant_q4_0_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q4_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((b->qs[j] & 0xF) - 8) * d;
            dst[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
        }
    }
}

void kern__dequant_q4_1_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q4_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d), m = kern__h2f(b->m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(b->qs[j] & 0xF) * d + m;
            dst[j + 16] = (float)(b->qs[j] >> 4) * d + m;
        }
    }
}

static inline uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void kern__dequant_q5_0_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q5_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d);
        uint32_t qh = load_u32(b->qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            dst[j] = (float)(((b->qs[j] & 0xF) | (h0 << 4)) - 16) * d;
            dst[j + 16] = (float)(((b->qs[j] >> 4) | (h1 << 4)) - 16) * d;
        }
    }
}

void kern__dequant_q5_1_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q5_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d), m = kern__h2f(b->m);
        uint32_t qh = load_u32(b->qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            dst[j] = (float)((b->qs[j] & 0xF) | (h0 << 4)) * d + m;
            dst[j + 16] = (float)((b->qs[j] >> 4) | (h1 << 4)) * d + m;
        }
    }
}

void kern__dequant_q8_0_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q8_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)b->qs[j] * d;
    }
}

void kern__dequant_q8_1_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q8_1 *b = src;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, dst += KERN_QK) {
        float d = kern__h2f(b->d);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)b->qs[j] * d;
    }
}

void kern__dequant_q8_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q8_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++, dst += KERN_QK_K)
        for (int j = 0; j < KERN_QK_K; j++)
            dst[j] = b->d * (float)b->qs[j];
}

/* Q2_K: 16 groups of 16; per 128 elements, the 32 bytes of qs hold four
 * 2-bit planes (shift 0, 2, 4, 6), each plane covering two groups. */
void kern__dequant_q2_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q2_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++) {
        float d = kern__h2f(b->d), dmin = kern__h2f(b->dmin);
        const uint8_t *q = b->qs;
        int g = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int k = 0; k < 2; k++, g++) {
                    float dl = d * (float)(b->scales[g] & 0xF), ml = dmin * (float)(b->scales[g] >> 4);
                    for (int l = 0; l < 16; l++)
                        *dst++ = dl * (float)((q[16 * k + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* Q3_K: like Q2_K's planes, plus a high bit from hmask (bit `plane` of
 * hmask[l] for the plane's 32 elements); a clear bit subtracts 4. */
void kern__dequant_q3_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q3_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++) {
        float d = kern__h2f(b->d);
        int8_t sc[16];
        kern__q3k_scales(b->scales, sc);
        const uint8_t *q = b->qs;
        int g = 0, plane = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, plane++) {
                for (int k = 0; k < 2; k++, g++) {
                    float dl = d * (float)(sc[g] - 32);
                    for (int l = 0; l < 16; l++) {
                        int lo = (q[16 * k + l] >> shift) & 3;
                        int hi = (b->hmask[16 * k + l] >> plane) & 1;
                        *dst++ = dl * (float)(lo - (hi ? 0 : 4));
                    }
                }
            }
        }
    }
}

void kern__dequant_q4_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q4_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++) {
        float d = kern__h2f(b->d), dmin = kern__h2f(b->dmin);
        const uint8_t *q = b->qs;
        for (int g = 0; g < 8; g += 2, q += 32) {
            uint8_t sc, m;
            kern__scale_min_k4(g, b->scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            kern__scale_min_k4(g + 1, b->scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void kern__dequant_q5_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q5_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++) {
        float d = kern__h2f(b->d), dmin = kern__h2f(b->dmin);
        const uint8_t *q = b->qs;
        for (int g = 0; g < 8; g += 2, q += 32) {
            uint8_t sc, m;
            kern__scale_min_k4(g, b->scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            kern__scale_min_k4(g + 1, b->scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] & 0xF) + (((b->qh[l] >> g) & 1) << 4)) - m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d2 * (float)((q[l] >> 4) + (((b->qh[l] >> (g + 1)) & 1) << 4)) - m2;
        }
    }
}

/* Q6_K: per 128 elements, 64 bytes of ql (low nibbles then high nibbles
 * for 4 runs of 32) and 32 bytes of qh (2 bits per run). */
void kern__dequant_q6_K_scalar(const void *src, float *dst, int64_t n)
{
    const struct kern__q6_K *b = src;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++) {
        float d = kern__h2f(b->d);
        const uint8_t *ql = b->ql, *qh = b->qh;
        const int8_t *sc = b->scales;
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, dst += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                dst[l] = d * (float)sc[is + 0] * (float)q1;
                dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* ---- activation quantizers ---- */

void kern__quant_f32_scalar(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

void kern__quant_f16_scalar(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = kern_f32_to_f16(src[i]);
}

void kern__quant_bf16_scalar(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = kern_f32_to_bf16(src[i]);
}

/* llama.cpp's x86 quantize_row_q8_0 (its AVX2 code, which differs from
 * its portable reference): d = amax / 127 stored as fp16, the quants
 * x * (127 / amax) in f32 rounded to nearest even. */
void kern__quant_q8_0_scalar(const float *src, void *dst, int64_t n)
{
    struct kern__q8_0 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(src[j]));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b->d = kern_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            b->qs[j] = (int8_t)nearbyintf(src[j] * id);
    }
}

/* llama.cpp's x86 quantize_row_q8_1: as Q8_0, plus s = fp16(d * sum(q)). */
void kern__quant_q8_1_scalar(const float *src, void *dst, int64_t n)
{
    struct kern__q8_1 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK; i++, b++, src += KERN_QK) {
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(src[j]));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b->d = kern_f32_to_f16(d);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            b->qs[j] = (int8_t)nearbyintf(src[j] * id);
            sum += b->qs[j];
        }
        b->s = kern_f32_to_f16((float)sum * d);
    }
}

/* ggml quantize_row_q8_K_ref: the scale comes from the signed element of
 * largest magnitude (the first one on ties), iscale = -127 / max, quants
 * rounded to nearest even and capped at 127, d = 1 / iscale in f32. */
void kern__quant_q8_K_scalar(const float *src, void *dst, int64_t n)
{
    struct kern__q8_K *b = dst;
    for (int64_t i = 0; i < n / KERN_QK_K; i++, b++, src += KERN_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < KERN_QK_K; j++) {
            float ax = fabsf(src[j]);
            if (ax > amax) {
                amax = ax;
                max = src[j];
            }
        }
        if (amax == 0.0f) {
            memset(b, 0, sizeof *b);
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < KERN_QK_K; j++) {
            int v = (int)nearbyintf(iscale * src[j]);
            b->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++)
                s += b->qs[16 * g + l];
            b->bsums[g] = (int16_t)s;
        }
        b->d = 1.0f / iscale;
    }
}
