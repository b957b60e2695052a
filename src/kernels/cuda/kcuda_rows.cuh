/*
 * Row-wise building blocks shared by the kernels: warp and block sums, the
 * RMS norm of a row by one block, and the 8-bit quantization of one block
 * of activations (per 32 as the CPU's Q8_0 / Q8_1, per 256 as its Q8_K).
 * They live here, once, because fused kernels (a residual, its norm and
 * the quantization for the next product in one launch) must compute
 * exactly what the separate kernels compute.
 */
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float kcu_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over a block of NT threads (a multiple of 32); every thread gets it. */
template <int NT> __device__ float kcu_block_sum(float v)
{
    __shared__ float part[NT / 32];
    v = kcu_warp_sum(v);
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NT / 32; i++)
        s += part[i];
    __syncthreads();
    return s;
}

/* o = rmsnorm(x) * w (w may be NULL) over n elements, by a block of NT
 * threads; thread t handles elements t, t + NT, … (so a thread may read
 * back elements it wrote to x just before). o may be x. */
template <int NT> __device__ void kcu_rms_row(const float *x, float *o, const float *w, int n, float eps)
{
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += NT)
        ss = fmaf(x[i], x[i], ss);
    const float scale = 1.0f / sqrtf(kcu_block_sum<NT>(ss) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += NT)
        o[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

/* Block b (32 elements) of x by one warp, as the CPU quantizes Q8_0:
 * d = max |x| / 127 kept as fp16, q = x * (127 / max |x|) rounded to
 * nearest even; s[b] = (d, fp16(d * sum(q))). */
__device__ __forceinline__ void kcu_quant_q8_0_block(const float *__restrict__ x, int64_t b, int8_t *__restrict__ q,
                                                     float2 *__restrict__ s, int lane)
{
    const float v = x[b * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int qi = __float2int_rn(v * id);
    q[b * 32 + lane] = (int8_t)qi;
    int sum = qi;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
        s[b] = make_float2(__half2float(__float2half_rn(d)), __half2float(__float2half_rn((float)sum * d)));
}

/* Block b (256 elements) by one warp, as the CPU quantizes Q8_K, each
 * lane holding its 8 elements (lane * 8 ...) in v: from the signed element
 * of largest magnitude (the first on ties), iscale = -127 / max, q =
 * round(iscale x) capped at 127, d = 1 / iscale in f32; each 32 gets s =
 * (d, d * sum(q)). */
__device__ __forceinline__ void kcu_quant_q8_K_regs(const float v[8], int64_t b, int8_t *__restrict__ q,
                                                    float2 *__restrict__ s, int lane)
{
    float amax = 0.0f, max = 0.0f;
    int at = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (fabsf(v[i]) > amax) {
            amax = fabsf(v[i]);
            max = v[i];
            at = lane * 8 + i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float a2 = __shfl_xor_sync(0xffffffffu, amax, o), m2 = __shfl_xor_sync(0xffffffffu, max, o);
        const int at2 = __shfl_xor_sync(0xffffffffu, at, o);
        if (a2 > amax || (a2 == amax && at2 < at)) {
            amax = a2;
            max = m2;
            at = at2;
        }
    }
    int sum = 0;
    float d = 0.0f;
    uint32_t packed[2] = {0u, 0u}; /* the 8 quants, one 8-byte store */
    if (amax != 0.0f) {
        const float iscale = -127.0f / max;
        d = 1.0f / iscale;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int qi = min(__float2int_rn(iscale * v[i]), 127);
            packed[i / 4] |= (uint32_t)(uint8_t)(int8_t)qi << (8 * (i % 4));
            sum += qi;
        }
    }
    *(uint2 *)(q + b * 256 + lane * 8) = make_uint2(packed[0], packed[1]);
    /* Four lanes make a 32. */
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (lane % 4 == 0)
        s[b * 8 + lane / 4] = make_float2(d, d * (float)sum);
}

/* The same for block b of x in memory. */
__device__ __forceinline__ void kcu_quant_q8_K_block(const float *__restrict__ x, int64_t b, int8_t *__restrict__ q,
                                                     float2 *__restrict__ s, int lane)
{
    const float *xb = x + b * 256 + lane * 8;
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        v[i] = xb[i];
    kcu_quant_q8_K_regs(v, b, q, s, lane);
}
