/*
 * The one table of data types on the device: how to read 32 consecutive
 * elements (a "unit") of a weight row in its GGUF block layout
 * (kernels/quants.h has the layouts and their comments). Every kernel that
 * reads weights goes through kcu_unit<T>, so a type added here gets the
 * matrix-vector product, the f16 dequantizer and the embedding lookup.
 *
 * Alignment: rows are copied to the device at 256-byte aligned addresses
 * and each type's row is a whole number of blocks, so a block starts at
 * a multiple of its size from an aligned row. The loads below are as wide
 * as that allows: 16 bytes for float rows and for the 144- and 176-byte
 * K-quant blocks, 2 bytes for the blocks of even but odd-word size (Q4_0's
 * 18, Q5_0's 22, Q8_0's 34, Q6_K's 210).
 */
#pragma once

#include "gguf/gguf.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float kcu_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float kcu_bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ uint16_t kcu_ld16(const uint8_t *p) { return *(const uint16_t *)p; }
__device__ __forceinline__ uint32_t kcu_ld32u(const uint8_t *p)
{
    /* Two halves: p is only 2-byte aligned. */
    return (uint32_t)kcu_ld16(p) | ((uint32_t)kcu_ld16(p + 2) << 16);
}

/* W little-endian words from p, which is 2-byte aligned: W aligned 32-bit
 * loads (and one 16-bit load when p is not 4-byte aligned) and a byte
 * permute each, in place of 2 W 16-bit loads: the integer GEMV is bound by
 * load instructions on these blocks, not by bytes. Nothing outside
 * [p, p + 4 W) is read but the 2 bytes before p in p's aligned word, so
 * never anything before the (aligned) start of the tensor or past its end. */
template <int W> __device__ __forceinline__ void kcu_ldw(const uint8_t *p, uint32_t out[W])
{
    const uintptr_t a = (uintptr_t)p;
    const uint32_t *base = (const uint32_t *)(a & ~(uintptr_t)3);
    /* Bytes 2, 3 of word i and 0, 1 of word i + 1; or word i as it is. */
    const bool odd = (a & 2) != 0;
    const uint32_t sel = odd ? 0x5432u : 0x3210u;
    uint32_t w[W + 1];
#pragma unroll
    for (int i = 0; i < W; i++)
        w[i] = base[i];
    w[W] = odd ? (uint32_t)kcu_ld16(p + 4 * W - 2) : 0u;
#pragma unroll
    for (int i = 0; i < W; i++)
        out[i] = __byte_perm(w[i], w[i + 1], sel);
}

template <int T> struct kcu_type;

template <> struct kcu_type<GGUF_DTYPE_F32> {
    static constexpr int block = 1, bytes = 4;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const float4 *p = (const float4 *)(row + u * 128);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float4 f = p[i];
            v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
        }
    }
};

template <> struct kcu_type<GGUF_DTYPE_F16> {
    static constexpr int block = 1, bytes = 2;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint4 *p = (const uint4 *)(row + u * 64);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint4 q = p[i];
            const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float2 f = __half22float2(*(const __half2 *)&w[j]);
                v[8 * i + 2 * j] = f.x, v[8 * i + 2 * j + 1] = f.y;
            }
        }
    }
};

template <> struct kcu_type<GGUF_DTYPE_BF16> {
    static constexpr int block = 1, bytes = 2;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint4 *p = (const uint4 *)(row + u * 64);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint4 q = p[i];
            const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                v[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
                v[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
            }
        }
    }
};

/* Q4_0: 18 bytes: fp16 d, 16 bytes of nibbles (element j low, j + 16 high). */
template <> struct kcu_type<GGUF_DTYPE_Q4_0> {
    static constexpr int block = 32, bytes = 18;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + u * 18;
        const float d = kcu_h2f(kcu_ld16(b));
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint16_t q = kcu_ld16(b + 2 + 2 * i);
            v[2 * i] = d * (float)((int)(q & 0xF) - 8);
            v[2 * i + 1] = d * (float)((int)((q >> 8) & 0xF) - 8);
            v[2 * i + 16] = d * (float)((int)((q >> 4) & 0xF) - 8);
            v[2 * i + 17] = d * (float)((int)(q >> 12) - 8);
        }
    }
};

/* Q4_1: 20 bytes: fp16 d, fp16 m, nibbles; x = d * q + m. */
template <> struct kcu_type<GGUF_DTYPE_Q4_1> {
    static constexpr int block = 32, bytes = 20;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + u * 20;
        const float d = kcu_h2f(kcu_ld16(b)), m = kcu_h2f(kcu_ld16(b + 2));
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint16_t q = kcu_ld16(b + 4 + 2 * i);
            v[2 * i] = d * (float)(q & 0xF) + m;
            v[2 * i + 1] = d * (float)((q >> 8) & 0xF) + m;
            v[2 * i + 16] = d * (float)((q >> 4) & 0xF) + m;
            v[2 * i + 17] = d * (float)(q >> 12) + m;
        }
    }
};

/* Q5_0: 22 bytes: fp16 d, 32 fifth bits, nibbles; x = d * (q - 16). */
template <> struct kcu_type<GGUF_DTYPE_Q5_0> {
    static constexpr int block = 32, bytes = 22;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + u * 22;
        const float d = kcu_h2f(kcu_ld16(b));
        const uint32_t qh = kcu_ld32u(b + 2);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint16_t q = kcu_ld16(b + 6 + 2 * i);
            const int j = 2 * i;
            v[j] = d * (float)((int)((q & 0xF) | ((qh >> j) & 1) << 4) - 16);
            v[j + 1] = d * (float)((int)(((q >> 8) & 0xF) | ((qh >> (j + 1)) & 1) << 4) - 16);
            v[j + 16] = d * (float)((int)(((q >> 4) & 0xF) | ((qh >> (j + 16)) & 1) << 4) - 16);
            v[j + 17] = d * (float)((int)((q >> 12) | ((qh >> (j + 17)) & 1) << 4) - 16);
        }
    }
};

/* Q5_1: 24 bytes: fp16 d, fp16 m, fifth bits, nibbles; x = d * q + m. */
template <> struct kcu_type<GGUF_DTYPE_Q5_1> {
    static constexpr int block = 32, bytes = 24;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + u * 24;
        const float d = kcu_h2f(kcu_ld16(b)), m = kcu_h2f(kcu_ld16(b + 2));
        const uint32_t qh = kcu_ld32u(b + 4);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint16_t q = kcu_ld16(b + 8 + 2 * i);
            const int j = 2 * i;
            v[j] = d * (float)((q & 0xF) | ((qh >> j) & 1) << 4) + m;
            v[j + 1] = d * (float)(((q >> 8) & 0xF) | ((qh >> (j + 1)) & 1) << 4) + m;
            v[j + 16] = d * (float)(((q >> 4) & 0xF) | ((qh >> (j + 16)) & 1) << 4) + m;
            v[j + 17] = d * (float)((q >> 12) | ((qh >> (j + 17)) & 1) << 4) + m;
        }
    }
};

/* Q8_0: 34 bytes: fp16 d, 32 int8. */
template <> struct kcu_type<GGUF_DTYPE_Q8_0> {
    static constexpr int block = 32, bytes = 34;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + u * 34;
        const float d = kcu_h2f(kcu_ld16(b));
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const uint16_t q = kcu_ld16(b + 2 + 2 * i);
            v[2 * i] = d * (float)(int8_t)(q & 0xFF);
            v[2 * i + 1] = d * (float)(int8_t)(q >> 8);
        }
    }
};

/* The six-bit scale and min j of a Q4_K / Q5_K super-block, whose 12
 * bytes of scales are s0, s1, s2 (little-endian words). Byte arithmetic on
 * registers: an indexed byte array would live in local memory. */
__device__ __forceinline__ void kcu_scale_min_k4(int j, uint32_t s0, uint32_t s1, uint32_t s2, float *sc, float *m)
{
    const int sh = 8 * (j & 3);
    if (j < 4) {
        *sc = (float)((s0 >> sh) & 63);
        *m = (float)((s1 >> sh) & 63);
    } else {
        const uint32_t b = s2 >> sh;
        *sc = (float)((b & 0xF) | (((s0 >> sh) >> 6) & 3) << 4);
        *m = (float)(((b >> 4) & 0xF) | (((s1 >> sh) >> 6) & 3) << 4);
    }
}

/* Unit j's scale and min in a Q4_K / Q5_K super-block b, times the
 * block's fp16 d and dmin (the first four bytes). */
__device__ __forceinline__ void kcu_k4_unit_scales(const uint8_t *b, int j, float *d1, float *m1)
{
    const uint32_t dd = *(const uint32_t *)b;
    float sc, m;
    kcu_scale_min_k4(j, *(const uint32_t *)(b + 4), *(const uint32_t *)(b + 8), *(const uint32_t *)(b + 12), &sc, &m);
    *d1 = kcu_h2f((uint16_t)dd) * sc;
    *m1 = kcu_h2f((uint16_t)(dd >> 16)) * m;
}

/* A small unsigned integer q (< 2^23) as a float without a conversion
 * instruction (those run at a quarter of the FMA rate): the bits of
 * 2^23 + q, less 2^23, exactly. */
__device__ __forceinline__ float kcu_u2f(uint32_t q) { return __uint_as_float(0x4B000000u | q) - 8388608.0f; }

/* Q4_K: 144 bytes per 256: fp16 d, dmin, 12 bytes of scales, then 4 groups
 * of 32 bytes; group g holds units 2g (low nibbles) and 2g + 1 (high). */
template <> struct kcu_type<GGUF_DTYPE_Q4_K> {
    static constexpr int block = 256, bytes = 144;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + (u >> 3) * 144;
        const int j = (int)(u & 7);
        float d1, m1;
        kcu_k4_unit_scales(b, j, &d1, &m1);
        const uint4 *qp = (const uint4 *)(b + 16 + 32 * (j >> 1));
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 q = qp[h];
            const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int l = 0; l < 4; l++)
                    v[16 * h + 4 * i + l] = fmaf(d1, kcu_u2f((w[i] >> (8 * l + shift)) & 0xF), -m1);
        }
    }
};

/* Q5_K: 176 bytes per 256: d, dmin, scales, 32 bytes of fifth bits (bit j
 * of qh[l] for unit j's element l), then the nibbles as Q4_K. */
template <> struct kcu_type<GGUF_DTYPE_Q5_K> {
    static constexpr int block = 256, bytes = 176;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + (u >> 3) * 176;
        const int j = (int)(u & 7);
        float d1, m1;
        kcu_k4_unit_scales(b, j, &d1, &m1);
        const uint4 *hp = (const uint4 *)(b + 16);
        const uint4 *qp = (const uint4 *)(b + 48 + 32 * (j >> 1));
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 q = qp[h], hh = hp[h];
            const uint32_t w[4] = {q.x, q.y, q.z, q.w}, x[4] = {hh.x, hh.y, hh.z, hh.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int l = 0; l < 4; l++) {
                    const uint32_t lo = (w[i] >> (8 * l + shift)) & 0xF, hi = (x[i] >> (8 * l + j)) & 1;
                    v[16 * h + 4 * i + l] = d1 * (float)(lo | hi << 4) - m1;
                }
        }
    }
};

/* Q6_K: 210 bytes per 256: 128 bytes of low nibbles, 64 of high bit
 * pairs, 16 int8 scales (one per 16 elements), fp16 d. Unit j = 4 * half
 * + r: run r of the 128-element half; element l of run r takes
 * ql[64 half + l + 32 (r & 1)] (low nibble for r < 2, high otherwise) and
 * bits 2r..2r+1 of qh[32 half + l]. */
template <> struct kcu_type<GGUF_DTYPE_Q6_K> {
    static constexpr int block = 256, bytes = 210;
    __device__ static void unit(const uint8_t *row, int64_t u, float v[32])
    {
        const uint8_t *b = row + (u >> 3) * 210;
        const int j = (int)(u & 7), half = j >> 2, r = j & 3;
        const float d = kcu_h2f(kcu_ld16(b + 208));
        const uint16_t s2 = kcu_ld16(b + 192 + 8 * half + 2 * r);
        const float d0 = d * (float)(int8_t)(s2 & 0xFF), d1 = d * (float)(int8_t)(s2 >> 8);
        const uint8_t *ql = b + 64 * half + 32 * (r & 1), *qh = b + 128 + 32 * half;
        const int lshift = (r >> 1) * 4, hshift = 2 * r;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const uint16_t lq = kcu_ld16(ql + 2 * i), hq = kcu_ld16(qh + 2 * i);
#pragma unroll
            for (int l = 0; l < 2; l++) {
                const int e = 2 * i + l;
                const uint32_t q = (((lq >> (8 * l)) >> lshift) & 0xF) | ((((hq >> (8 * l)) >> hshift) & 3) << 4);
                v[e] = (e < 16 ? d0 : d1) * (kcu_u2f(q) - 32.0f);
            }
        }
    }
};

/* Call f.template operator()<T>() for the runtime type t; false if t has no
 * entry. The one switch over types in the CUDA code. */
template <class F> __host__ bool kcu_dispatch(enum gguf_dtype t, F &&f)
{
    switch (t) {
    case GGUF_DTYPE_F32:
        f.template operator()<GGUF_DTYPE_F32>();
        return true;
    case GGUF_DTYPE_F16:
        f.template operator()<GGUF_DTYPE_F16>();
        return true;
    case GGUF_DTYPE_BF16:
        f.template operator()<GGUF_DTYPE_BF16>();
        return true;
    case GGUF_DTYPE_Q4_0:
        f.template operator()<GGUF_DTYPE_Q4_0>();
        return true;
    case GGUF_DTYPE_Q4_1:
        f.template operator()<GGUF_DTYPE_Q4_1>();
        return true;
    case GGUF_DTYPE_Q5_0:
        f.template operator()<GGUF_DTYPE_Q5_0>();
        return true;
    case GGUF_DTYPE_Q5_1:
        f.template operator()<GGUF_DTYPE_Q5_1>();
        return true;
    case GGUF_DTYPE_Q8_0:
        f.template operator()<GGUF_DTYPE_Q8_0>();
        return true;
    case GGUF_DTYPE_Q4_K:
        f.template operator()<GGUF_DTYPE_Q4_K>();
        return true;
    case GGUF_DTYPE_Q5_K:
        f.template operator()<GGUF_DTYPE_Q5_K>();
        return true;
    case GGUF_DTYPE_Q6_K:
        f.template operator()<GGUF_DTYPE_Q6_K>();
        return true;
    default:
        return false;
    }
}
