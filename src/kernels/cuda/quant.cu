/*
 * Kernels that read weights: the dequantizing matrix-vector product for
 * decode, the f16 dequantizer that feeds cuBLAS for prefill, and the
 * embedding lookup. All go through kcu_type<T>::unit (kcuda_types.cuh).
 */
#include "kernels/cuda/kcuda.h"
#include "kernels/cuda/kcuda_launch.cuh"
#include "kernels/cuda/kcuda_rows.cuh"
#include "kernels/cuda/kcuda_types.cuh"

#include <climits>
#include <cuda_fp16.h>
#include <stdlib.h>

namespace
{

constexpr int GEMV_WARPS = 4; /* warps a block: GEMV_WARPS / split rows, split warps a row */

/* The matrices one GEMV launch covers (struct kcu_mm_part, up to
 * KCU_MM_PARTS_MAX of one type and row width that multiply the same
 * activations): blocks [end[p - 1], end[p]) take matrix p's rows. One
 * launch for a layer's Q, K and V (or gate and up) instead of three keeps
 * the small K and V products from running alone on a mostly idle GPU, and
 * saves the launches. Fields are picked by constant index below, so they
 * stay in the kernel's parameter bank. */
struct gemv_parts {
    const uint8_t *w[KCU_MM_PARTS_MAX];
    float *y[KCU_MM_PARTS_MAX];
    int64_t n[KCU_MM_PARTS_MAX];
    int64_t ldy[KCU_MM_PARTS_MAX];
    unsigned end[KCU_MM_PARTS_MAX]; /* cumulative block counts; unused parts: UINT_MAX */
    unsigned split_shift;           /* log2 of the warps that share a row (gemv_split_shift) */
    unsigned prefetch;              /* bytes of its row a warp asks into L2 before it waits (kcuda_launch.cuh) */
};

/* Warps that share a weight row, each taking a contiguous slice of it.
 * With one warp a row, a matrix of few, wide rows (ffn_down: 4,096 rows
 * of 14,336) keeps each warp walking its row one load step after another
 * and leaves the memory system underfed at the end of the launch; two
 * warps a row halve both. The partial sums are added in slice order
 * (gemv_store), and the split depends on the matrix only, never on the
 * number of activation rows, so a row's result is the same bits alone or
 * in a batch. LMD_CUDA_GEMV_SPLIT=1|2|4 fixes it for measurements. */
/* Rows of at least twice this many bytes go to two warps. Measured on the
 * 8B model's matrices (gemv_bench): F16 rows of 8 KB 14.6 -> 14.3 us
 * (Q/K/V), 57.4 -> 55.6 (gate/up); Q6_K rows of 11.8 KB 23.8 -> 20.9
 * (ffn_down); Q4_K rows of 8 KB 15.2 -> 13.3. Four warps a row were
 * slower everywhere but on 28 KB rows, and there within 7 % of two. */
constexpr int64_t GEMV_SLICE_MIN = 3584;
unsigned gemv_split_shift(int64_t row_bytes)
{
    static int forced = -1;
    if (forced < 0) {
        const char *e = getenv("LMD_CUDA_GEMV_SPLIT");
        const int v = e && *e ? atoi(e) : 0;
        forced = v == 1 ? 0 : v == 2 ? 1 : v == 4 ? 2 : 3;
    }
    if (forced < 3)
        return (unsigned)forced;
    return row_bytes >= 2 * GEMV_SLICE_MIN ? 1u : 0u;
}

/* How much of its row a GEMV warp prefetches while the kernel before it
 * finishes: LMD_CUDA_PREFETCH bytes (0 = none), else the default. A whole
 * row from every warp of the first wave overflows L2 on wide float rows
 * (8,448 warps x 8 KB of F16), so it is bounded. */
unsigned gemv_prefetch_bytes()
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("LMD_CUDA_PREFETCH");
        v = e && *e ? atoi(e) : 1024;
        if (v < 0)
            v = 0;
    }
    return (unsigned)v;
}

/* This warp's weight row and output column; false past the part's rows. */
__device__ __forceinline__ bool gemv_row(const gemv_parts &p, size_t ws, const uint8_t **row, float **y, int64_t *ldy)
{
    static_assert(KCU_MM_PARTS_MAX == 3, "gemv_row picks among three parts");
    const unsigned b = blockIdx.x;
    const int i = (b >= p.end[0]) + (b >= p.end[1]);
    const unsigned start = i == 0 ? 0u : i == 1 ? p.end[0] : p.end[1];
    const int64_t r = (int64_t)(b - start) * (GEMV_WARPS >> p.split_shift) + (threadIdx.y >> p.split_shift);
    const int64_t n = i == 0 ? p.n[0] : i == 1 ? p.n[1] : p.n[2];
    if (r >= n)
        return false;
    *row = (i == 0 ? p.w[0] : i == 1 ? p.w[1] : p.w[2]) + (size_t)r * ws;
    *y = (i == 0 ? p.y[0] : i == 1 ? p.y[1] : p.y[2]) + r;
    *ldy = i == 0 ? p.ldy[0] : i == 1 ? p.ldy[1] : p.ldy[2];
    return true;
}

/* This warp's slice [*lo, *hi) of a row of n pieces. */
__device__ __forceinline__ void gemv_slice(const gemv_parts &p, int64_t n, int64_t *lo, int64_t *hi)
{
    const unsigned s = threadIdx.y & ((1u << p.split_shift) - 1u);
    *lo = (n * s) >> p.split_shift;
    *hi = (n * (s + 1)) >> p.split_shift;
}

/* Every GEMV kernel's start: this warp's row and output column (false
 * past its part's rows), the row's first p.prefetch bytes asked into L2,
 * the wait for the grid before, and the warp's slice [*lo, *hi) of the
 * row's n pieces (empty past the rows: such warps still reach
 * gemv_store's barrier). */
__device__ __forceinline__ bool gemv_begin(const gemv_parts &p, size_t ws, int64_t n, const uint8_t **row, float **y,
                                           int64_t *ldy, int64_t *lo, int64_t *hi)
{
    *row = nullptr;
    *y = nullptr;
    *ldy = 0;
    const bool valid = gemv_row(p, ws, row, y, ldy);
    if (valid)
        kcu_prefetch_l2(*row, ws < p.prefetch ? ws : p.prefetch, threadIdx.x);
    kcu_dep_wait();
    gemv_slice(p, n, lo, hi);
    if (!valid)
        *hi = *lo;
    return valid;
}

/* The row's sums out: each warp's reduced over its lanes, then, for a
 * split row, the warps' partial sums added in slice order by the row's
 * first warp. Every thread of the block calls it (there is a barrier when
 * rows are split); valid is false for warps past their part's rows. */
template <int M>
__device__ __forceinline__ void gemv_store(const gemv_parts &p, bool valid, const float acc[M], float *y, int64_t ldy)
{
    const int lane = threadIdx.x;
    float s[M];
#pragma unroll
    for (int i = 0; i < M; i++)
        s[i] = kcu_warp_sum(acc[i]);
    if (p.split_shift == 0) {
        if (valid && lane == 0) {
#pragma unroll
            for (int i = 0; i < M; i++)
                y[(size_t)i * (size_t)ldy] = s[i];
        }
        return;
    }
    __shared__ float part[GEMV_WARPS][M];
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < M; i++)
            part[threadIdx.y][i] = s[i];
    }
    __syncthreads();
    const unsigned n = 1u << p.split_shift;
    if (valid && (threadIdx.y & (n - 1u)) == 0 && lane < M) {
        float t = part[threadIdx.y][lane];
        for (unsigned j = 1; j < n; j++)
            t += part[threadIdx.y + j][lane];
        y[(size_t)lane * (size_t)ldy] = t;
    }
}

/* One warp per weight row. Lane l takes units l, l + 32, … of the row, so
 * the warp's lanes read neighbouring 32-element pieces at each step; the
 * activations (a few rows of at most tens of kilobytes) come through L1.
 * M is the number of activation rows, a template argument so that the
 * accumulators stay in registers. */
template <int T, int M>
__global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_kernel(const gemv_parts p, size_t ws, int64_t k, const float *__restrict__ x)
{
    const uint8_t *row;
    float *y;
    int64_t ldy, u0, units;
    kcu_dep_launch();
    const bool valid = gemv_begin(p, ws, k / 32, &row, &y, &ldy, &u0, &units);
    const int lane = threadIdx.x;
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++)
        acc[i] = 0.0f;
    for (int64_t u = u0 + lane; u < units; u += 32) {
        float v[32];
        kcu_type<T>::unit(row, u, v);
#pragma unroll
        for (int i = 0; i < M; i++) {
            const float4 *xp = (const float4 *)(x + (size_t)i * (size_t)k + (size_t)u * 32);
            float s = 0.0f;
#pragma unroll
            for (int q = 0; q < 8; q++) {
                const float4 f = __ldg(xp + q);
                s = fmaf(v[4 * q], f.x, s);
                s = fmaf(v[4 * q + 1], f.y, s);
                s = fmaf(v[4 * q + 2], f.z, s);
                s = fmaf(v[4 * q + 3], f.w, s);
            }
            acc[i] += s;
        }
    }
    gemv_store<M>(p, valid, acc, y, ldy);
}

/* Float rows (F16, BF16, F32): the warp reads a row 16 bytes a lane at
 * consecutive addresses, 512 bytes an instruction, so every load is fully
 * coalesced (the 32-element units above would have each lane read its own
 * 64 or 128 contiguous bytes, a strided pattern). */
template <int T> struct float_row;
template <> struct float_row<GGUF_DTYPE_F16> {
    static constexpr int per = 8; /* elements per 16-byte chunk */
    __device__ static void get(const uint4 q, float v[8])
    {
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = __half22float2(*(const __half2 *)&w[j]);
            v[2 * j] = f.x, v[2 * j + 1] = f.y;
        }
    }
};
template <> struct float_row<GGUF_DTYPE_BF16> {
    static constexpr int per = 8;
    __device__ static void get(const uint4 q, float v[8])
    {
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = __uint_as_float(w[j] << 16);
            v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
        }
    }
};
template <> struct float_row<GGUF_DTYPE_F32> {
    static constexpr int per = 4;
    __device__ static void get(const uint4 q, float v[4])
    {
        v[0] = __uint_as_float(q.x), v[1] = __uint_as_float(q.y), v[2] = __uint_as_float(q.z),
        v[3] = __uint_as_float(q.w);
    }
};

/* acc[i] += chunk c of the row (q) . the same elements of x's row i. */
template <int T, int M>
__device__ __forceinline__ void float_chunk(const uint4 q, const float *__restrict__ x, int64_t k, int64_t c,
                                            float acc[M])
{
    constexpr int P = float_row<T>::per;
    float v[P];
    float_row<T>::get(q, v);
#pragma unroll
    for (int i = 0; i < M; i++) {
        const float4 *x0 = (const float4 *)(x + (size_t)i * (size_t)k + (size_t)c * P);
        float s = acc[i];
#pragma unroll
        for (int e = 0; e < P / 4; e++) {
            const float4 a = __ldg(x0 + e);
            s = fmaf(v[4 * e], a.x, s);
            s = fmaf(v[4 * e + 1], a.y, s);
            s = fmaf(v[4 * e + 2], a.z, s);
            s = fmaf(v[4 * e + 3], a.w, s);
        }
        acc[i] = s;
    }
}

/* One activation row: 8 blocks an SM (64 registers; the compiler takes
 * 120 otherwise, 4 blocks), which took F16's ffn_down from 34.4 to 30.5
 * us and gate/up from 61.4 to 55.6 on the 8B model. */
template <int T, int M>
__global__ void __launch_bounds__(32 * GEMV_WARPS, M == 1 ? 8 : 1)
    gemv_float_kernel(const gemv_parts p, size_t ws, int64_t k, const float *__restrict__ x)
{
    constexpr int P = float_row<T>::per;
    /* Chunks in flight a lane: every load of a step is issued before any
     * is used, so a warp keeps D * 512 bytes of the row in flight. With
     * one warp a row and a few rows an SM, that (not the instruction
     * count) is what sets the bandwidth reached; more activation rows
     * need more registers, so fewer chunks. */
    constexpr int D = M <= 2 ? 8 : M <= 4 ? 4 : 2;
    const uint8_t *wrow;
    float *y;
    int64_t ldy, c0, chunks;
    kcu_dep_launch();
    const bool valid = gemv_begin(p, ws, k / P, &wrow, &y, &ldy, &c0, &chunks);
    const int lane = threadIdx.x;
    const uint4 *row = (const uint4 *)wrow;
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++)
        acc[i] = 0.0f;
    /* Steps of D chunks a lane; then one step whose loads past the slice
     * are left out (not a chunk at a time: one round trip each). */
    int64_t c = c0 + lane;
    for (; c + 32 * (D - 1) < chunks; c += 32 * D) {
        uint4 q[D];
#pragma unroll
        for (int d = 0; d < D; d++)
            q[d] = __ldg(row + c + 32 * d);
#pragma unroll
        for (int d = 0; d < D; d++)
            float_chunk<T, M>(q[d], x, k, c + 32 * d, acc);
    }
    if (c < chunks) {
        uint4 q[D];
#pragma unroll
        for (int d = 0; d < D; d++)
            q[d] = c + 32 * d < chunks ? __ldg(row + c + 32 * d) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int d = 0; d < D; d++)
            if (c + 32 * d < chunks)
                float_chunk<T, M>(q[d], x, k, c + 32 * d, acc);
    }
    gemv_store<M>(p, valid, acc, y, ldy);
}

constexpr int DQ_THREADS = 256;

/* One thread per unit of 32 elements, DQ_THREADS consecutive units a
 * block: each thread dequantizes its unit into shared memory, then the
 * block writes the 16 KB out 16 bytes a lane at consecutive addresses
 * (units are consecutive in the [n][k] output). */
template <int T>
__global__ void __launch_bounds__(DQ_THREADS) dequant_f16_kernel(const uint8_t *__restrict__ w, size_t ws, int64_t r0,
                                                                 int64_t n, int64_t k, __half *__restrict__ dst)
{
    kcu_dep_launch();
    kcu_dep_wait();
    __shared__ uint4 tile[DQ_THREADS * 4]; /* [unit][32 halves] */
    const int64_t units = k / 32, total = n * units;
    const int64_t base = (int64_t)blockIdx.x * DQ_THREADS;
    const int64_t i = base + threadIdx.x;
    if (i < total) {
        const int64_t r = i / units, u = i % units;
        float v[32];
        kcu_type<T>::unit(w + (size_t)(r0 + r) * ws, u, v);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            uint32_t h[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const __half2 p = __floats2half2_rn(v[8 * q + 2 * j], v[8 * q + 2 * j + 1]);
                h[j] = *(const uint32_t *)&p;
            }
            tile[threadIdx.x * 4 + q] = make_uint4(h[0], h[1], h[2], h[3]);
        }
    }
    __syncthreads();
    const int64_t n_here = total - base < DQ_THREADS ? total - base : DQ_THREADS;
    uint4 *out = (uint4 *)(dst + (size_t)base * 32);
    for (int c = threadIdx.x; c < n_here * 4; c += DQ_THREADS)
        out[c] = tile[c];
}

template <int T>
__global__ void embed_kernel(const uint8_t *__restrict__ emb, size_t es, const int32_t *__restrict__ tokens, int64_t e,
                             float scale, float *__restrict__ x)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int t = blockIdx.x;
    const uint8_t *row = emb + (size_t)tokens[t] * es;
    for (int64_t u = threadIdx.x; u < e / 32; u += blockDim.x) {
        float v[32];
        kcu_type<T>::unit(row, u, v);
        float *o = x + (size_t)t * (size_t)e + (size_t)u * 32;
#pragma unroll
        for (int j = 0; j < 32; j++)
            o[j] = v[j] * scale;
    }
}

/* ---- integer dot products for the K-quants and Q8_0 ------------------------
 *
 * For these types the float path spends ten instructions a weight byte
 * unpacking, converting and multiplying; with the activations quantized
 * to 8 bits per 32 (kcu_quantize_q8: d and d * sum(q) per block, as
 * llama.cpp's q8_1 and close to the CPU engine's q8_K), four products take
 * one dp4a. A lane handles unit u of 32 elements; the scales fold in once
 * per unit. */

struct q8x {
    const int8_t *q; /* [m][k] */
    const float2 *s; /* [m][k / 32]: d, d * sum(q) */
};

__device__ __forceinline__ int dot8(const uint32_t a[8], const uint4 *xq, int lo, int hi)
{
    const uint4 x0 = __ldg(xq), x1 = __ldg(xq + 1);
    const uint32_t b[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i >= lo && i < hi)
            s = __dp4a((int)a[i], (int)b[i], s);
    return s;
}

template <int T> struct q8dot;

template <> struct q8dot<GGUF_DTYPE_Q4_K> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        const uint8_t *b = row + (u >> 3) * 144;
        const int j = (int)(u & 7);
        float d1, m1;
        kcu_k4_unit_scales(b, j, &d1, &m1);
        const uint4 *qp = (const uint4 *)(b + 16 + 32 * (j >> 1));
        const uint4 q0 = __ldg(qp), q1 = __ldg(qp + 1);
        const int shift = (j & 1) * 4;
        const uint32_t w[8] = {(q0.x >> shift) & 0x0F0F0F0Fu, (q0.y >> shift) & 0x0F0F0F0Fu,
                               (q0.z >> shift) & 0x0F0F0F0Fu, (q0.w >> shift) & 0x0F0F0F0Fu,
                               (q1.x >> shift) & 0x0F0F0F0Fu, (q1.y >> shift) & 0x0F0F0F0Fu,
                               (q1.z >> shift) & 0x0F0F0F0Fu, (q1.w >> shift) & 0x0F0F0F0Fu};
#pragma unroll
        for (int i = 0; i < M; i++) {
            const float2 s = __ldg(x.s + (size_t)i * (size_t)(k / 32) + u);
            const int si = dot8(w, (const uint4 *)(x.q + (size_t)i * (size_t)k + (size_t)u * 32), 0, 8);
            acc[i] += d1 * s.x * (float)si - m1 * s.y;
        }
    }
};

template <> struct q8dot<GGUF_DTYPE_Q6_K> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        const uint8_t *b = row + (u >> 3) * 210;
        const int j = (int)(u & 7), half = j >> 2, r = j & 3;
        const float d = kcu_h2f(kcu_ld16(b + 208));
        const uint16_t s2 = kcu_ld16(b + 192 + 8 * half + 2 * r);
        const float d0 = d * (float)(int8_t)(s2 & 0xFF), d1 = d * (float)(int8_t)(s2 >> 8);
        const uint8_t *ql = b + 64 * half + 32 * (r & 1), *qh = b + 128 + 32 * half;
        const int lshift = (r >> 1) * 4, hshift = 2 * r;
        uint32_t w[8], lo[8], hi[8];
        kcu_ldw<8>(ql, lo);
        kcu_ldw<8>(qh, hi);
#pragma unroll
        for (int i = 0; i < 8; i++)
            w[i] = ((lo[i] >> lshift) & 0x0F0F0F0Fu) | (((hi[i] >> hshift) & 0x03030303u) << 4);
        const uint32_t ones[8] = {0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u,
                                  0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u};
#pragma unroll
        for (int i = 0; i < M; i++) {
            const float2 s = __ldg(x.s + (size_t)i * (size_t)(k / 32) + u);
            const uint4 *xq = (const uint4 *)(x.q + (size_t)i * (size_t)k + (size_t)u * 32);
            /* Quants are stored +32: q . x = (q' . x) - 32 sum(x), per 16. */
            const int a0 = dot8(w, xq, 0, 4) - 32 * dot8(ones, xq, 0, 4);
            const int a1 = dot8(w, xq, 4, 8) - 32 * dot8(ones, xq, 4, 8);
            acc[i] += s.x * (d0 * (float)a0 + d1 * (float)a1);
        }
    }
};

template <> struct q8dot<GGUF_DTYPE_Q8_0> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        const uint8_t *b = row + u * 34;
        const float d = kcu_h2f(kcu_ld16(b));
        uint32_t w[8];
        kcu_ldw<8>(b + 2, w);
#pragma unroll
        for (int i = 0; i < M; i++) {
            const float2 s = __ldg(x.s + (size_t)i * (size_t)(k / 32) + u);
            const int si = dot8(w, (const uint4 *)(x.q + (size_t)i * (size_t)k + (size_t)u * 32), 0, 8);
            acc[i] += d * s.x * (float)si;
        }
    }
};

/* The 32-element types, as llama.cpp and the CPU engine compute them: the
 * block's integer sum over (q - offset) x exactly, then scaled once. The
 * four nibble words hold elements 0-15 in their low halves and 16-31 in
 * their high halves, which is how the activation words are ordered too.
 * Fifth bits (Q5_0, Q5_1) are spread to bit 4 of each byte. */
__device__ __forceinline__ uint32_t spread4(uint32_t t)
{
    return ((t & 1u) << 4) | ((t & 2u) << 11) | ((t & 4u) << 18) | ((t & 8u) << 25);
}

template <int M, int OFF, bool MIN, bool FIFTH>
__device__ __forceinline__ void dot_legacy(const uint8_t *b, int64_t u, const q8x &x, int64_t k, float acc[M])
{
    const float d = kcu_h2f(kcu_ld16(b));
    const float m = MIN ? kcu_h2f(kcu_ld16(b + 2)) : 0.0f;
    const int qs_off = (MIN ? 4 : 2) + (FIFTH ? 4 : 0);
    const uint32_t qh = FIFTH ? kcu_ld32u(b + (MIN ? 4 : 2)) : 0u;
    uint32_t w[8], qw[4];
    kcu_ldw<4>(b + qs_off, qw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t q = qw[i];
        w[i] = q & 0x0F0F0F0Fu;
        w[i + 4] = (q >> 4) & 0x0F0F0F0Fu;
        if (FIFTH) {
            w[i] |= spread4((qh >> (4 * i)) & 0xF);
            w[i + 4] |= spread4((qh >> (16 + 4 * i)) & 0xF);
        }
    }
    const uint32_t ones[8] = {0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u,
                              0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u};
#pragma unroll
    for (int i = 0; i < M; i++) {
        const float2 s = __ldg(x.s + (size_t)i * (size_t)(k / 32) + u);
        const uint4 *xq = (const uint4 *)(x.q + (size_t)i * (size_t)k + (size_t)u * 32);
        int si = dot8(w, xq, 0, 8);
        if (OFF)
            si -= OFF * dot8(ones, xq, 0, 8);
        acc[i] += MIN ? d * s.x * (float)si + m * s.y : d * s.x * (float)si;
    }
}

template <> struct q8dot<GGUF_DTYPE_Q4_0> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        dot_legacy<M, 8, false, false>(row + u * 18, u, x, k, acc);
    }
};
template <> struct q8dot<GGUF_DTYPE_Q4_1> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        dot_legacy<M, 0, true, false>(row + u * 20, u, x, k, acc);
    }
};
template <> struct q8dot<GGUF_DTYPE_Q5_0> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        dot_legacy<M, 16, false, true>(row + u * 22, u, x, k, acc);
    }
};
template <> struct q8dot<GGUF_DTYPE_Q5_1> {
    template <int M> __device__ static void dot(const uint8_t *row, int64_t u, const q8x &x, int64_t k, float acc[M])
    {
        dot_legacy<M, 0, true, true>(row + u * 24, u, x, k, acc);
    }
};

template <int T>
constexpr bool has_q8dot = T == GGUF_DTYPE_Q4_K || T == GGUF_DTYPE_Q6_K || T == GGUF_DTYPE_Q8_0 ||
                           T == GGUF_DTYPE_Q4_0 || T == GGUF_DTYPE_Q4_1 || T == GGUF_DTYPE_Q5_0 || T == GGUF_DTYPE_Q5_1;

template <int T, int M, int MINB = 1>
__global__ void __launch_bounds__(32 * GEMV_WARPS, MINB) gemv_q8_kernel(const gemv_parts p, size_t ws, int64_t k, q8x x)
{
    const uint8_t *row;
    float *y;
    int64_t ldy, u0, units;
    kcu_dep_launch();
    const bool valid = gemv_begin(p, ws, k / 32, &row, &y, &ldy, &u0, &units);
    const int lane = threadIdx.x;
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++)
        acc[i] = 0.0f;
    /* Four units a lane a step, unrolled so that the weight loads of all
     * four are issued before the first is used (a row of 4096 Q4_K
     * elements is four units a lane: one round trip to memory, not four);
     * the last step leaves out the units past the slice. */
    for (int64_t u = u0 + lane; u < units; u += 128) {
#pragma unroll
        for (int d = 0; d < 4; d++)
            if (u + 32 * d < units)
                q8dot<T>::template dot<M>(row, u + 32 * d, x, k, acc);
    }
    gemv_store<M>(p, valid, acc, y, ldy);
}

/* Activations quantized as the CPU engine (and llama.cpp's CPU code)
 * quantizes them for the same weight types, so that the integer sums of a
 * block are the CPU's:
 *  - per 32 (Q8_0 / Q8_1, for the 32-element types): d = max |x| / 127
 *    kept as fp16, q = x * (127 / max |x|) rounded to nearest even, and
 *    s = fp16(d * sum(q));
 *  - per 256 (Q8_K, for the K-quants): from the signed element of largest
 *    magnitude (the first on ties), iscale = -127 / max, q = round(iscale
 *    x) capped at 127, d = 1 / iscale in f32; each 32 gets (d, d sum(q)).
 * One warp per 32 (lane = element) or per 256 (lane = 8 elements). */
__global__ void quantize_q8_0_kernel(const float *__restrict__ x, int64_t blocks, int8_t *__restrict__ q,
                                     float2 *__restrict__ s)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int64_t b = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b < blocks)
        kcu_quant_q8_0_block(x, b, q, s, threadIdx.x % 32);
}

__global__ void quantize_q8_K_kernel(const float *__restrict__ x, int64_t blocks, int8_t *__restrict__ q,
                                     float2 *__restrict__ s)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int64_t b = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b < blocks)
        kcu_quant_q8_K_block(x, b, q, s, threadIdx.x % 32);
}

template <int T, int M>
cudaError_t gemv_launch(dim3 grid, dim3 block, cudaStream_t st, const gemv_parts &p, size_t ws, int64_t k,
                        const float *x)
{
    if constexpr (T == GGUF_DTYPE_F16 || T == GGUF_DTYPE_BF16 || T == GGUF_DTYPE_F32)
        return kcu_launch(gemv_float_kernel<T, M>, grid, block, 0, st, p, ws, k, x);
    else
        return kcu_launch(gemv_kernel<T, M>, grid, block, 0, st, p, ws, k, x);
}

/* The launch's parts and its block count; false if they are not valid. */
bool make_parts(const struct kcu_mm_part *parts, int n_parts, size_t ws, gemv_parts *p, unsigned *blocks)
{
    if (n_parts < 1 || n_parts > KCU_MM_PARTS_MAX)
        return false;
    p->split_shift = gemv_split_shift((int64_t)ws);
    const int64_t per_block = GEMV_WARPS >> p->split_shift;
    uint64_t end = 0;
    for (int i = 0; i < KCU_MM_PARTS_MAX; i++) {
        if (i < n_parts) {
            if (parts[i].n <= 0)
                return false;
            end += (uint64_t)((parts[i].n + per_block - 1) / per_block);
            if (end >= UINT_MAX)
                return false;
            p->w[i] = (const uint8_t *)parts[i].w;
            p->y[i] = parts[i].y;
            p->n[i] = parts[i].n;
            p->ldy[i] = parts[i].ldy;
            p->end[i] = (unsigned)end;
        } else {
            p->w[i] = nullptr;
            p->y[i] = nullptr;
            p->n[i] = 0;
            p->ldy[i] = 0;
            p->end[i] = UINT_MAX;
        }
    }
    p->prefetch = gemv_prefetch_bytes();
    *blocks = (unsigned)end;
    return true;
}

/* Call f.template operator()<M>() for the activation row count m in
 * 1..KCU_GEMV_MAX_M (a template argument, so accumulators stay in
 * registers); false for any other m. */
template <class F> bool with_m(int m, F &&f)
{
    switch (m) {
    case 1:
        f.template operator()<1>();
        return true;
    case 2:
        f.template operator()<2>();
        return true;
    case 3:
        f.template operator()<3>();
        return true;
    case 4:
        f.template operator()<4>();
        return true;
    case 5:
        f.template operator()<5>();
        return true;
    case 6:
        f.template operator()<6>();
        return true;
    case 7:
        f.template operator()<7>();
        return true;
    case 8:
        f.template operator()<8>();
        return true;
    default:
        return false;
    }
}

template <int T>
cudaError_t gemv_m(cudaStream_t st, const gemv_parts &p, unsigned blocks, size_t ws, int64_t k, const float *x, int m)
{
    const dim3 block(32, GEMV_WARPS), grid(blocks);
    cudaError_t rc = cudaErrorInvalidValue;
    with_m(m, [&]<int M>() { rc = gemv_launch<T, M>(grid, block, st, p, ws, k, x); });
    return rc;
}

} // namespace

extern "C" bool kcu_type_supported(enum gguf_dtype t)
{
    bool ok = false;
    kcu_dispatch(t, [&]<int T>() { ok = kcu_type<T>::block > 0; });
    return ok;
}

extern "C" cudaError_t kcu_gemv(cudaStream_t st, enum gguf_dtype t, size_t w_stride, int64_t k, const float *x, int m,
                                const struct kcu_mm_part *parts, int n_parts)
{
    gemv_parts p;
    unsigned blocks;
    if (m < 1 || m > KCU_GEMV_MAX_M || k % 32 != 0 || !make_parts(parts, n_parts, w_stride, &p, &blocks))
        return cudaErrorInvalidValue;
    cudaError_t rc = cudaErrorInvalidValue;
    kcu_dispatch(t, [&]<int T>() {
        if (k % kcu_type<T>::block == 0)
            rc = gemv_m<T>(st, p, blocks, w_stride, k, x, m);
    });
    return rc;
}

extern "C" cudaError_t kcu_dequant_f16(cudaStream_t st, enum gguf_dtype t, const void *w, size_t w_stride, int64_t r0,
                                       int64_t n, int64_t k, uint16_t *dst)
{
    if (k % 32 != 0 || n <= 0)
        return cudaErrorInvalidValue;
    cudaError_t rc = cudaErrorInvalidValue;
    const int64_t work = n * (k / 32);
    kcu_dispatch(t, [&]<int T>() {
        if (k % kcu_type<T>::block != 0)
            return;
        rc = kcu_launch(dequant_f16_kernel<T>, (unsigned)((work + DQ_THREADS - 1) / DQ_THREADS), DQ_THREADS, 0, st,
                        (const uint8_t *)w, w_stride, r0, n, k, (__half *)dst);
    });
    return rc;
}

extern "C" bool kcu_type_q8(enum gguf_dtype t)
{
    bool q8 = false;
    kcu_dispatch(t, [&]<int T>() { q8 = has_q8dot<T>; });
    return q8;
}

extern "C" bool kcu_q8_per_256(enum gguf_dtype t)
{
    return t == GGUF_DTYPE_Q4_K || t == GGUF_DTYPE_Q5_K || t == GGUF_DTYPE_Q6_K || t == GGUF_DTYPE_Q2_K ||
           t == GGUF_DTYPE_Q3_K;
}

extern "C" cudaError_t kcu_quantize_q8(cudaStream_t st, const float *x, int64_t count, bool per_256, int8_t *q,
                                       void *scales)
{
    const int bs = per_256 ? 256 : 32;
    if (count % bs != 0 || count <= 0)
        return cudaErrorInvalidValue;
    const int64_t blocks = count / bs;
    return kcu_launch(per_256 ? quantize_q8_K_kernel : quantize_q8_0_kernel, (unsigned)((blocks + 7) / 8), 256, 0, st,
                      x, blocks, q, (float2 *)scales);
}

extern "C" cudaError_t kcu_gemv_q8(cudaStream_t st, enum gguf_dtype t, size_t w_stride, int64_t k, const int8_t *xq,
                                   const void *xs, int m, const struct kcu_mm_part *parts, int n_parts)
{
    gemv_parts p;
    unsigned blocks;
    if (m < 1 || m > KCU_GEMV_MAX_M || k % 32 != 0 || !make_parts(parts, n_parts, w_stride, &p, &blocks))
        return cudaErrorInvalidValue;
    cudaError_t rc = cudaErrorInvalidValue;
    const dim3 block(32, GEMV_WARPS), grid(blocks);
    const q8x x = {xq, (const float2 *)xs};
    kcu_dispatch(t, [&]<int T>() {
        if constexpr (has_q8dot<T>) {
            if (k % kcu_type<T>::block != 0)
                return;
            with_m(m, [&]<int M>() {
                /* Rows of Q4_K short enough that a warp loads its row in
                 * one step: the warp's life is one round trip to memory,
                 * and what sets the bandwidth is how many warps an SM
                 * holds. 12 blocks an SM fit Q4_K's reader in 40
                 * registers without spilling (56 otherwise: 10 blocks);
                 * measured 7.7 -> 6.2 us on the 8B model's Q/K/V, 24.0 ->
                 * 22.4 us on gate/up, worse on split rows (13.3 -> 14.8
                 * us on ffn_down). Q6_K spills at 40. */
                if constexpr (T == GGUF_DTYPE_Q4_K && M == 1) {
                    if (p.split_shift == 0) {
                        rc = kcu_launch(gemv_q8_kernel<T, M, 12>, grid, block, 0, st, p, w_stride, k, x);
                        return;
                    }
                }
                rc = kcu_launch(gemv_q8_kernel<T, M>, grid, block, 0, st, p, w_stride, k, x);
            });
        }
    });
    return rc;
}

extern "C" cudaError_t kcu_embed(cudaStream_t st, enum gguf_dtype t, const void *emb, size_t emb_stride,
                                 const int32_t *tokens, int T, int64_t e, bool scale, float *x)
{
    if (e % 32 != 0 || T <= 0)
        return cudaErrorInvalidValue;
    cudaError_t rc = cudaErrorInvalidValue;
    const float s = scale ? sqrtf((float)e) : 1.0f;
    kcu_dispatch(t, [&]<int TT>() {
        if (e % kcu_type<TT>::block != 0)
            return;
        rc = kcu_launch(embed_kernel<TT>, T, 128, 0, st, (const uint8_t *)emb, emb_stride, tokens, e, s, x);
    });
    return rc;
}
