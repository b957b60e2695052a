/*
 * The forward pass's operations other than matrix products: norms,
 * gated activations, RoPE with the K/V cache writes, and attention over
 * the paged cache. Numerics follow the CPU engine's (model/ops.c) where it
 * matters for greedy parity: Q is rounded through f16 before Q.K as the
 * CPU rounds it, GeGLU goes through f16 as llama.cpp's table does, and the
 * RoPE angles are advanced by repeated multiplication from a host-computed
 * ratio.
 */
#include "kernels/cuda/kcuda.h"
#include "kernels/cuda/kcuda_launch.cuh"
#include "kernels/cuda/kcuda_rows.cuh"

#include <algorithm>
#include <climits>
#include <cuda_fp16.h>
#include <math.h>

namespace
{

constexpr int NORM_THREADS = 256;

/*
 * The row kernels: one block of NORM_THREADS a row; thread t owns elements
 * t, t + NORM_THREADS, … (R of them at most, R a template argument, or any
 * number when R is 0). With R > 0 a thread loads all its elements into
 * registers before it computes or stores anything: the rows may alias
 * (out may be y), so a loop that loads, computes and stores one element at
 * a time cannot start the next load before the store, and one block
 * walking a 4096-wide row one DRAM round trip at a time took 17 us. The
 * arithmetic is the same either way (kcu_rms_row's, element for element
 * and in the same order), so the R = 0 fallback for very wide rows gives
 * the same bits.
 */

/* o = rmsnorm(v) * w over this thread's R elements of a row of n (wv:
 * w's elements, loaded with v's; ignored when w is NULL); also into the
 * shared row sh when it is given. */
template <int R>
__device__ __forceinline__ void rms_regs(float v[R], float *o, const float *w, const float wv[R], int n, float eps,
                                         float *sh)
{
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < R; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        if (i < n)
            ss = fmaf(v[j], v[j], ss);
    }
    const float scale = 1.0f / sqrtf(kcu_block_sum<NORM_THREADS>(ss) / (float)n + eps);
#pragma unroll
    for (int j = 0; j < R; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        if (i < n) {
            const float r = w ? (v[j] * scale) * wv[j] : v[j] * scale;
            o[i] = r;
            if (sh)
                sh[i] = r;
        }
    }
}

/* Loads of this thread's R elements of a row (0 past n, and none at all
 * when p is NULL), all issued before any is used. */
template <int R> __device__ __forceinline__ void load_regs(const float *p, float v[R], int n)
{
#pragma unroll
    for (int j = 0; j < R; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        v[j] = p && i < n ? p[i] : 0.0f;
    }
}

template <int R>
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(float *out, const float *in, const int32_t *idx, const float *w, int n, float eps)
{
    kcu_dep_launch();
    /* The norm's weights are no grid's output: loaded while the kernel
     * before finishes (kcuda_launch.cuh), so that their trip to memory is
     * not on the step's critical path. */
    float wv[R > 0 ? R : 1];
    if constexpr (R > 0)
        load_regs<R>(w, wv, n);
    kcu_dep_wait();
    const int r = blockIdx.x;
    const float *x = in + (size_t)(idx ? idx[r] : r) * (size_t)n;
    float *o = out + (size_t)r * (size_t)n;
    if constexpr (R == 0) {
        kcu_rms_row<NORM_THREADS>(x, o, w, n, eps);
    } else {
        float v[R];
        load_regs<R>(x, v, n);
        rms_regs<R>(v, o, w, wv, n, eps, nullptr);
    }
}

/* x += (w ? rmsnorm(y) * w : y); then, when out is given, out =
 * rmsnorm(x) * w_out with rmsnorm_kernel's arithmetic, and, when q is
 * given, out quantized as the product that follows needs it (qbs: 32 or
 * 256 elements a block) with quantize_q8's arithmetic: one launch a
 * residual instead of three. out may be y: every read of y is done before
 * the sum that precedes the first write to out. */
template <int R>
__global__ void __launch_bounds__(NORM_THREADS)
    add_norm_kernel(float *x, const float *y, const float *w, float *out, const float *w_out, int n, float eps,
                    int8_t *q, float2 *qs, int qbs)
{
    kcu_dep_launch();
    /* The weights before the wait, as in rmsnorm_kernel. */
    float wv[R > 0 ? R : 1], wov[R > 0 ? R : 1];
    if constexpr (R > 0) {
        load_regs<R>(w, wv, n);
        load_regs<R>(out ? w_out : nullptr, wov, n);
    }
    kcu_dep_wait();
    const int r = blockIdx.x;
    float *xr = x + (size_t)r * (size_t)n;
    const float *yr = y + (size_t)r * (size_t)n;
    float *o = out ? out + (size_t)r * (size_t)n : nullptr;
    /* The quantization reads the normalized row from here rather than
     * back from memory: one round trip less. */
    __shared__ float sh[R > 0 ? R * NORM_THREADS : 1];
    const float *qsrc = o;
    if constexpr (R == 0) {
        float scale = 1.0f;
        if (w) {
            float ss = 0.0f;
            for (int i = threadIdx.x; i < n; i += NORM_THREADS)
                ss = fmaf(yr[i], yr[i], ss);
            scale = 1.0f / sqrtf(kcu_block_sum<NORM_THREADS>(ss) / (float)n + eps);
        }
        for (int i = threadIdx.x; i < n; i += NORM_THREADS)
            xr[i] += w ? (yr[i] * scale) * w[i] : yr[i];
        if (!o)
            return;
        kcu_rms_row<NORM_THREADS>(xr, o, w_out, n, eps);
    } else {
        float xv[R], yv[R];
        load_regs<R>(xr, xv, n);
        load_regs<R>(yr, yv, n);
        float scale = 1.0f;
        if (w) {
            float ss = 0.0f;
#pragma unroll
            for (int j = 0; j < R; j++)
                if (threadIdx.x + j * NORM_THREADS < n)
                    ss = fmaf(yv[j], yv[j], ss);
            scale = 1.0f / sqrtf(kcu_block_sum<NORM_THREADS>(ss) / (float)n + eps);
        }
#pragma unroll
        for (int j = 0; j < R; j++) {
            const int i = threadIdx.x + j * NORM_THREADS;
            if (i < n) {
                xv[j] += w ? (yv[j] * scale) * wv[j] : yv[j];
                xr[i] = xv[j];
            }
        }
        if (!o)
            return;
        rms_regs<R>(xv, o, w_out, wov, n, eps, q ? sh : nullptr);
        qsrc = sh;
    }
    if (!q)
        return;
    /* The row's writes (to out or sh), by every thread, seen by every thread. */
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int8_t *qr = q + (size_t)r * (size_t)n;
    float2 *sr = qs + (size_t)r * (size_t)(n / 32);
    for (int b = warp; b < n / qbs; b += NORM_THREADS / 32) {
        if (qbs == 256)
            kcu_quant_q8_K_block(qsrc, b, qr, sr, lane);
        else
            kcu_quant_q8_0_block(qsrc, b, qr, sr, lane);
    }
}

/* Call f.template operator()<R>() with the R for rows of n (0: wider than
 * the register versions go). */
template <class F> void with_r(int n, F &&f)
{
    const int per = (n + NORM_THREADS - 1) / NORM_THREADS;
    if (per <= 1)
        f.template operator()<1>();
    else if (per <= 2)
        f.template operator()<2>();
    else if (per <= 4)
        f.template operator()<4>();
    else if (per <= 8)
        f.template operator()<8>();
    else if (per <= 16)
        f.template operator()<16>();
    else if (per <= 32)
        f.template operator()<32>();
    else
        f.template operator()<0>();
}

/* The gated activation of one element: act(g) * u. */
__device__ __forceinline__ float glu_one(float x, float u, bool gelu)
{
    float a;
    if (gelu) {
        /* The CPU engine looks GELU up by the f16 bits of x and stores the
         * result rounded to f16; so does this, without the table. */
        if (x <= -10.0f) {
            a = 0.0f;
        } else if (x >= 10.0f) {
            a = x;
        } else {
            const float xh = __half2float(__float2half_rn(x));
            const float y =
                0.5f * xh * (1.0f + tanhf(0.79788456080286535587989211986876f * xh * (1.0f + 0.044715f * xh * xh)));
            a = __half2float(__float2half_rn(y));
        }
    } else {
        a = x / (1.0f + expf(-x));
    }
    return a * u;
}

__global__ void glu_kernel(float *g, const float *u, int64_t count, bool gelu)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    g[i] = glu_one(g[i], u[i], gelu);
}

/* glu_kernel, and its output quantized for the product that follows (qbs
 * 32 or 256 elements a block; one warp a block), with the bits of
 * glu_kernel followed by quantize_q8. Per 256, a lane loads its 8
 * elements of g and u in two 16-byte loads each before it computes (g and
 * u may not alias, so nothing orders a load after a store: a loop of
 * scalar loads and stores was eight round trips to memory) and quantizes
 * from its registers; per 32, the quantization reads back only the
 * element the same lane just wrote. */
__global__ void __launch_bounds__(256) glu_q8_kernel(float *__restrict__ g, const float *__restrict__ u, int64_t blocks,
                                                     bool gelu, int qbs, int8_t *q, float2 *qs)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int lane = threadIdx.x % 32;
    const int64_t b = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    if (b >= blocks)
        return;
    if (qbs == 256) {
        float4 *g4 = (float4 *)(g + b * 256 + lane * 8);
        const float4 *u4 = (const float4 *)(u + b * 256 + lane * 8);
        const float4 ga = g4[0], gb = g4[1], ua = u4[0], ub = u4[1];
        float v[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
        const float w[8] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
#pragma unroll
        for (int j = 0; j < 8; j++)
            v[j] = glu_one(v[j], w[j], gelu);
        g4[0] = make_float4(v[0], v[1], v[2], v[3]);
        g4[1] = make_float4(v[4], v[5], v[6], v[7]);
        kcu_quant_q8_K_regs(v, b, q, qs, lane);
    } else {
        const int64_t e = b * 32 + lane;
        g[e] = glu_one(g[e], u[e], gelu);
        kcu_quant_q8_0_block(g, b, q, qs, lane);
    }
}

__global__ void softcap_kernel(float *v, int64_t count, float c)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count)
        v[i] = c * tanhf(v[i] / c);
}

constexpr int ROPE_MAX_D = 512;

/* One warp per (token, head): heads [0, n_head) are Q, then n_head_kv K
 * heads, then n_head_kv V heads. The head vector sits in shared memory so
 * that a lane can rotate any pair. */
__global__ void __launch_bounds__(32) rope_kv_kernel(const kcu_rope_args a)
{
    kcu_dep_launch();
    __shared__ float buf[ROPE_MAX_D];
    const int t = blockIdx.x, w = blockIdx.y, lane = threadIdx.x;
    const bool is_q = w < a.n_head, is_k = !is_q && w < a.n_head + a.n_head_kv, is_v = !is_q && !is_k;
    const int h = is_q ? w : is_k ? w - a.n_head : w - a.n_head - a.n_head_kv;
    const int D = is_v ? a.dv : a.dk;
    const float *bias = is_q ? a.bq : is_k ? a.bk : a.bv;
    const size_t boff = (size_t)h * D;
    /* Before the wait (kcuda_launch.cuh): the token's position and the
     * cache block its K or V row goes to (the step's indices), and the
     * bias and norm weights asked into L2; the two dependent trips to
     * memory for the block were the last of this kernel's chain. */
    const int pos = a.tok_pos[t];
    const int32_t blk = is_q ? 0 : a.blocks[(size_t)a.tok_seq[t] * a.blocks_stride + pos / a.bt];
    if (bias)
        kcu_prefetch_l2(bias + boff, (size_t)D * sizeof(float), lane);
    const float *nw = is_q ? a.q_norm : is_k ? a.k_norm : nullptr;
    if (nw)
        kcu_prefetch_l2(nw, (size_t)D * sizeof(float), lane);
    if (!is_v && a.freq_factors)
        kcu_prefetch_l2(a.freq_factors, (size_t)(a.n_rot / 2) * sizeof(float), lane);
    kcu_dep_wait();
    const float *src = is_q   ? a.q + ((size_t)t * a.n_head + h) * a.dk
                       : is_k ? a.k + ((size_t)t * a.n_head_kv + h) * a.dk
                              : a.v + ((size_t)t * a.n_head_kv + h) * a.dv;
    for (int i = lane; i < D; i += 32)
        buf[i] = src[i] + (bias ? bias[boff + i] : 0.0f);
    __syncwarp();
    if (!is_v) {
        if (nw) {
            float ss = 0.0f;
            for (int i = lane; i < D; i += 32)
                ss = fmaf(buf[i], buf[i], ss);
            const float scale = 1.0f / sqrtf(kcu_warp_sum(ss) / (float)D + a.eps);
            __syncwarp();
            for (int i = lane; i < D; i += 32)
                buf[i] = (buf[i] * scale) * nw[i];
            __syncwarp();
        }
        const int half = a.n_rot / 2;
        for (int i = lane; i < half; i += 32) {
            float theta = (float)pos;
            for (int j = 0; j < i; j++)
                theta *= a.theta_scale;
            const float ff = a.freq_factors ? a.freq_factors[i] : 1.0f;
            const float ang = a.freq_scale * (theta / ff);
            const float c = cosf(ang), s = sinf(ang);
            const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
            const float x0 = buf[ia], x1 = buf[ib];
            buf[ia] = x0 * c - x1 * s;
            buf[ib] = x0 * s + x1 * c;
        }
        __syncwarp();
    }
    if (is_q) {
        float *dst = a.q + ((size_t)t * a.n_head + h) * a.dk;
        for (int i = lane; i < D; i += 32)
            dst[i] = a.q_scale != 1.0f ? buf[i] * a.q_scale : buf[i];
        return;
    }
    const int slot = pos % a.bt;
    uint16_t *base = is_k ? a.kc + (size_t)blk * a.block_k_elems : a.vc + (size_t)blk * a.block_v_elems;
    uint16_t *dst = base + (((size_t)a.layer * a.n_head_kv + h) * a.bt + slot) * D;
    for (int i = lane; i < D; i += 32)
        dst[i] = __half_as_ushort(__float2half_rn(buf[i]));
}

constexpr int ATTN_WARPS = 4;
constexpr int ATTN_U = 4;

/* Where position p's K and V rows start in the cache, for the sequence of
 * block table bt and the KV head at head_off ((layer * n_head_kv + kvh)
 * * bt rows into a block). */
template <int D>
__device__ __forceinline__ void kv_rows(const kcu_attn_args &a, const int32_t *bt, size_t head_off, int p,
                                        const uint16_t **k, const uint16_t **v)
{
    const size_t blk = (size_t)bt[p / a.bt], off = (head_off + p % a.bt) * D;
    *k = a.kc + blk * a.block_k_elems + off;
    *v = a.vc + blk * a.block_v_elems + off;
}

/*
 * Attention over the paged cache. A query (token t, head h) covers the n
 * positions [first, pos]; they are split into S runs of C consecutive
 * positions, S = min(KCU_ATTN_SPLITS, ceil(n / KCU_ATTN_CHUNK)), one block
 * of ATTN_WARPS warps a run (grid: heads x tokens x splits; blocks past a
 * query's S leave at once). Without the split a decode step at a context
 * of 500 had 32 blocks on 132 SMs, each warp walking 125 positions one
 * memory round trip after another: 51 us a layer. S and C depend on the
 * query's own position only, so in steps of up to KCU_ATTN_TILE_T queries
 * (decode) a sequence's result is the same bits whatever else is in the
 * batch. Larger steps (prefill) go to attn_tile_kernel below, or are not
 * split (max_splits 1) where tiles would leave SMs idle, as the products
 * of large steps take another path too.
 *
 * In a block, each warp walks every ATTN_WARPS-th position of the run with
 * an online softmax (running max m, sum l, the weighted sum of V in
 * registers, D / 32 elements a lane), loading the K and V rows of ATTN_U
 * of its positions before it uses any, then folding them in position
 * order. A lane holds elements [lane * DPL, lane * DPL + DPL) of Q, K and
 * V, so each K or V row is one coalesced read. The warps are merged at the
 * end; with S = 1 (n <= KCU_ATTN_CHUNK) that is the answer. Otherwise the
 * block writes its (max, sum, weighted V) to part and the last block of
 * the query to finish (a counter per query, reset by that block) merges
 * the S partials in split order, so the order of arrival changes nothing.
 */
template <int D> __global__ void __launch_bounds__(32 * ATTN_WARPS) attn_kernel(const kcu_attn_args a, int max_splits)
{
    kcu_dep_launch();
    constexpr int DPL = D / 32;
    const int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
    const int kvh = h / (a.n_head / a.n_head_kv);
    /* Before the wait (kcuda_launch.cuh): the query's position and run
     * from the step's indices, and the K/V rows of this warp's first
     * positions asked into L2 (a hint: rows this step is still writing, in
     * a prefill, are only read after the wait), so that the chain from the
     * predecessor's end to the first score is one trip to L2, not three
     * dependent ones (position, block table, row). */
    const int pos = a.tok_pos[t];
    const int first = a.n_swa > 0 && pos - a.n_swa + 1 > 0 ? pos - a.n_swa + 1 : 0;
    const int n = pos + 1 - first;
    const int S = min(max_splits, (n + KCU_ATTN_CHUNK - 1) / KCU_ATTN_CHUNK);
    if (sp >= S)
        return;
    const int C = (n + S - 1) / S, lo = first + sp * C, hi = min(pos, lo + C - 1);
    const int32_t *bt = a.blocks + (size_t)a.tok_seq[t] * a.blocks_stride;
    const size_t head_off = ((size_t)a.layer * a.n_head_kv + kvh) * a.bt;
    for (int u = 0; u < ATTN_U; u++) {
        const int p = lo + wid + u * ATTN_WARPS;
        if (p > hi)
            break;
        const uint16_t *kr, *vr;
        kv_rows<D>(a, bt, head_off, p, &kr, &vr);
        kcu_prefetch_l2(kr, D * sizeof(uint16_t), lane);
        kcu_prefetch_l2(vr, D * sizeof(uint16_t), lane);
    }
    kcu_dep_wait();
    const float *qp = a.q + ((size_t)t * a.n_head + h) * D + lane * DPL;
    float q[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        q[i] = __half2float(__float2half_rn(qp[i]));
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int p0 = lo + wid; p0 <= hi; p0 += ATTN_WARPS * ATTN_U) {
        __half kh[ATTN_U][DPL], vh[ATTN_U][DPL];
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            const int p = p0 + u * ATTN_WARPS;
            if (p > hi)
                break;
            const uint16_t *kr, *vr;
            kv_rows<D>(a, bt, head_off, p, &kr, &vr);
            const __half *kp = (const __half *)(kr + lane * DPL), *vp = (const __half *)(vr + lane * DPL);
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                kh[u][i] = kp[i];
                vh[u][i] = vp[i];
            }
        }
        float s[ATTN_U];
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            s[u] = 0.0f;
            if (p0 + u * ATTN_WARPS > hi)
                continue;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                s[u] = fmaf(q[i], __half2float(kh[u][i]), s[u]);
        }
#pragma unroll
        for (int u = 0; u < ATTN_U; u++)
            s[u] = kcu_warp_sum(s[u]) * a.scale;
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            if (p0 + u * ATTN_WARPS > hi)
                break;
            const float mn = fmaxf(m, s[u]);
            const float c = expf(m - mn), e = expf(s[u] - mn);
            l = l * c + e;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                acc[i] = fmaf(acc[i], c, e * __half2float(vh[u][i]));
            m = mn;
        }
    }
    __shared__ float sm[ATTN_WARPS], sl[ATTN_WARPS], sacc[ATTN_WARPS][D];
    __shared__ bool last;
    if (lane == 0) {
        sm[wid] = m;
        sl[wid] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++)
        sacc[wid][lane * DPL + i] = acc[i];
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++)
        M = fmaxf(M, sm[w]);
    float L = 0.0f, f[ATTN_WARPS];
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) {
        f[w] = sm[w] == -INFINITY ? 0.0f : expf(sm[w] - M);
        L += sl[w] * f[w];
    }
    float *out = a.out + ((size_t)t * a.n_head + h) * D;
    if (S == 1) {
        for (int i = threadIdx.x; i < D; i += 32 * ATTN_WARPS) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++)
                o = fmaf(sacc[w][i], f[w], o);
            out[i] = o / L;
        }
        return;
    }
    /* This run's (M, L, sum of V weighted by exp(s - M)). */
    const size_t q_idx = (size_t)t * a.n_head + h; /* t < KCU_ATTN_TILE_T when split */
    float *pp = a.part + (q_idx * KCU_ATTN_SPLITS + sp) * (D + 2);
    for (int i = threadIdx.x; i < D; i += 32 * ATTN_WARPS) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            o = fmaf(sacc[w][i], f[w], o);
        pp[2 + i] = o;
    }
    if (threadIdx.x == 0) {
        pp[0] = M;
        pp[1] = L;
    }
    /* Publish the partial, then count it; the block that counts last sees
     * every other block's partial. */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(a.count + q_idx, 1) == S - 1;
        if (last)
            a.count[q_idx] = 0;
    }
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    /* Read through L2 (__ldcg): other blocks wrote these. */
    const float *parts = a.part + q_idx * KCU_ATTN_SPLITS * (D + 2);
    float MM = -INFINITY;
    for (int j = 0; j < S; j++)
        MM = fmaxf(MM, __ldcg(parts + (size_t)j * (D + 2)));
    float LL = 0.0f;
    for (int j = 0; j < S; j++) {
        const float mj = __ldcg(parts + (size_t)j * (D + 2));
        if (mj != -INFINITY)
            LL = fmaf(__ldcg(parts + (size_t)j * (D + 2) + 1), expf(mj - MM), LL);
    }
    for (int i = threadIdx.x; i < D; i += 32 * ATTN_WARPS) {
        float o = 0.0f;
        for (int j = 0; j < S; j++) {
            const float mj = __ldcg(parts + (size_t)j * (D + 2));
            if (mj != -INFINITY)
                o = fmaf(__ldcg(parts + (size_t)j * (D + 2) + 2 + i), expf(mj - MM), o);
        }
        out[i] = o / LL;
    }
}

/*
 * Attention for large steps (prefill): a block takes one KV head and a
 * tile of consecutive tokens, and every query head that shares that KV
 * head, up to PF_ROWS query rows, so each K and V row is read from memory
 * once for all of them rather than once a query (the one-block-a-query
 * kernel above read 2 GB from L2 a layer for a 512-token prompt of an
 * 8B model: 750 us a layer, most of the prompt's time). The block walks
 * the union of its queries' positions in chunks of PF_KC keys staged in
 * shared memory as f16 (rows padded by one word so that lane j reading
 * key j's row hits bank j). For a query row, lane j scores key j (the
 * full dot product over the row, Q rounded through f16 as above), the
 * warp folds the chunk into the row's online softmax, and each lane
 * accumulates its D / 32 elements of the weighted V. A tile whose tokens
 * belong to several sequences is walked once per sequence, with that
 * sequence's rows.
 */
constexpr int PF_WARPS = 8, PF_KC = 32, PF_ROWS = 64, PF_RPW = PF_ROWS / PF_WARPS;

/* Q tile as f32 [PF_ROWS][D] (read as broadcasts), K and V chunks as f16
 * [PF_KC][D + 2]. */
template <int D> constexpr size_t pf_smem_bytes()
{
    return (size_t)PF_ROWS * D * sizeof(float) + (size_t)2 * PF_KC * (D + 2) * sizeof(__half);
}

template <int D> __global__ void __launch_bounds__(32 * PF_WARPS) attn_tile_kernel(const kcu_attn_args a, int tq)
{
    kcu_dep_launch();
    kcu_dep_wait();
    constexpr int DPL = D / 32, DS = D + 2, D2 = D / 2;
    extern __shared__ __align__(16) unsigned char pf_smem[];
    float *qs = (float *)pf_smem;              /* [PF_ROWS][D] */
    __half *ks = (__half *)(qs + PF_ROWS * D); /* [PF_KC][DS] */
    __half *vs = ks + PF_KC * DS;              /* [PF_KC][DS] */
    const int G = a.n_head / a.n_head_kv, kvh = blockIdx.x, t0 = blockIdx.y * tq;
    const int nt = min(tq, a.T - t0), R = nt * G;
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    /* Row r: token t0 + r / G, query head kvh * G + r % G; Q rounded
     * through f16 as the one-query kernel rounds it. Rows past R are 0. */
    for (int e = threadIdx.x; e < PF_ROWS * D; e += blockDim.x) {
        const int r = e / D, c = e % D;
        float v = 0.0f;
        if (r < R)
            v = __half2float(__float2half_rn(a.q[((size_t)(t0 + r / G) * a.n_head + kvh * G + r % G) * D + c]));
        qs[e] = v;
    }
    /* This warp's rows: w, w + PF_WARPS, ... */
    float acc[PF_RPW][DPL], m[PF_RPW], l[PF_RPW];
    int pos_r[PF_RPW], first_r[PF_RPW], tok_r[PF_RPW];
#pragma unroll
    for (int i = 0; i < PF_RPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; d++)
            acc[i][d] = 0.0f;
        const int r = w + PF_WARPS * i;
        tok_r[i] = r < R ? r / G : -1;
        pos_r[i] = r < R ? a.tok_pos[t0 + r / G] : -1;
        first_r[i] = a.n_swa > 0 && pos_r[i] - a.n_swa + 1 > 0 ? pos_r[i] - a.n_swa + 1 : 0;
    }
    const size_t head_off = ((size_t)a.layer * a.n_head_kv + kvh) * a.bt;
    for (int s0 = 0; s0 < nt;) {
        const int seq = a.tok_seq[t0 + s0];
        int s1 = s0, lo = INT_MAX, hi = -1;
        for (; s1 < nt && a.tok_seq[t0 + s1] == seq; s1++) {
            const int p = a.tok_pos[t0 + s1];
            lo = min(lo, a.n_swa > 0 && p - a.n_swa + 1 > 0 ? p - a.n_swa + 1 : 0);
            hi = max(hi, p);
        }
        const int32_t *bt = a.blocks + (size_t)seq * a.blocks_stride;
        for (int c0 = lo; c0 <= hi; c0 += PF_KC) {
            __syncthreads(); /* the previous chunk is consumed (and, first, the Q tile written) */
            for (int e = threadIdx.x; e < PF_KC * D2; e += blockDim.x) {
                const int j = e / D2, c = e % D2, p = c0 + j;
                __half2 kv = __floats2half2_rn(0.0f, 0.0f), vv = kv;
                if (p <= hi) {
                    const uint16_t *kr, *vr;
                    kv_rows<D>(a, bt, head_off, p, &kr, &vr);
                    kv = *(const __half2 *)(kr + 2 * c);
                    vv = *(const __half2 *)(vr + 2 * c);
                }
                ((__half2 *)(ks + j * DS))[c] = kv;
                ((__half2 *)(vs + j * DS))[c] = vv;
            }
            __syncthreads();
            /* Scores: lane j against key c0 + j, every row of the warp at
             * once, so each K element is read from shared memory once. */
            const int p = c0 + lane;
            float dot[PF_RPW];
#pragma unroll
            for (int i = 0; i < PF_RPW; i++)
                dot[i] = 0.0f;
            const __half2 *kr = (const __half2 *)(ks + lane * DS);
#pragma unroll 4
            for (int c = 0; c < D2; c++) {
                const float2 kf = __half22float2(kr[c]);
#pragma unroll
                for (int i = 0; i < PF_RPW; i++) {
                    const float2 qf = *(const float2 *)(qs + (w + PF_WARPS * i) * D + 2 * c);
                    dot[i] = fmaf(qf.x, kf.x, dot[i]);
                    dot[i] = fmaf(qf.y, kf.y, dot[i]);
                }
            }
            /* Each row's softmax over the chunk; pj = 0 for keys a row does not see. */
            float pj[PF_RPW];
#pragma unroll
            for (int i = 0; i < PF_RPW; i++) {
                pj[i] = 0.0f;
                const bool mine = tok_r[i] >= s0 && tok_r[i] < s1;
                const bool valid = mine && p >= first_r[i] && p <= pos_r[i];
                const float sc = valid ? dot[i] * a.scale : -INFINITY;
                float mx = sc;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                if (mx == -INFINITY)
                    continue;
                const float mn = fmaxf(m[i], mx), cf = expf(m[i] - mn);
                pj[i] = valid ? expf(sc - mn) : 0.0f;
                l[i] = l[i] * cf + kcu_warp_sum(pj[i]);
                m[i] = mn;
#pragma unroll
                for (int d = 0; d < DPL; d++)
                    acc[i][d] *= cf;
            }
            /* The weighted V: each V element read once for every row. */
            for (int j = 0; j < PF_KC; j++) {
                const __half2 *vr = (const __half2 *)(vs + j * DS + lane * DPL);
                float v[DPL];
#pragma unroll
                for (int d = 0; d < DPL / 2; d++) {
                    const float2 f = __half22float2(vr[d]);
                    v[2 * d] = f.x;
                    v[2 * d + 1] = f.y;
                }
#pragma unroll
                for (int i = 0; i < PF_RPW; i++) {
                    const float pb = __shfl_sync(0xffffffffu, pj[i], j);
#pragma unroll
                    for (int d = 0; d < DPL; d++)
                        acc[i][d] = fmaf(pb, v[d], acc[i][d]);
                }
            }
        }
        s0 = s1;
    }
#pragma unroll
    for (int i = 0; i < PF_RPW; i++) {
        const int r = w + PF_WARPS * i;
        if (r >= R)
            continue;
        const int t = t0 + r / G, h = kvh * G + r % G;
        float *o = a.out + ((size_t)t * a.n_head + h) * D + lane * DPL;
#pragma unroll
        for (int d = 0; d < DPL; d++)
            o[d] = acc[i][d] / l[i];
    }
}

template <int D> cudaError_t attn_tile_launch(cudaStream_t st, const kcu_attn_args &a)
{
    /* Shared memory past 48 KB must be asked for, once. */
    static bool ready = false;
    if (!ready) {
        cudaError_t rc = cudaFuncSetAttribute(attn_tile_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)pf_smem_bytes<D>());
        if (rc != cudaSuccess)
            return rc;
        ready = true;
    }
    const int tq = PF_ROWS / (a.n_head / a.n_head_kv);
    const dim3 grid((unsigned)a.n_head_kv, (unsigned)((a.T + tq - 1) / tq));
    return kcu_launch(attn_tile_kernel<D>, grid, 32 * PF_WARPS, pf_smem_bytes<D>(), st, a, tq);
}

} // namespace

extern "C" cudaError_t kcu_rmsnorm(cudaStream_t st, float *out, const float *in, const int32_t *idx, const float *w,
                                   int rows, int n, float eps)
{
    if (rows <= 0)
        return cudaSuccess;
    cudaError_t rc = cudaSuccess;
    with_r(n, [&]<int R>() { rc = kcu_launch(rmsnorm_kernel<R>, rows, NORM_THREADS, 0, st, out, in, idx, w, n, eps); });
    return rc;
}

extern "C" cudaError_t kcu_add_norm(cudaStream_t st, float *x, const float *y, const float *w, float *out,
                                    const float *w_out, int rows, int n, float eps)
{
    if (rows <= 0)
        return cudaSuccess;
    cudaError_t rc = cudaSuccess;
    with_r(n, [&]<int R>() {
        rc =
            kcu_launch(add_norm_kernel<R>, rows, NORM_THREADS, 0, st, x, y, w, out, w_out, n, eps, nullptr, nullptr, 0);
    });
    return rc;
}

extern "C" cudaError_t kcu_glu(cudaStream_t st, float *g, const float *u, int64_t count, bool gelu)
{
    if (count <= 0)
        return cudaSuccess;
    return kcu_launch(glu_kernel, (unsigned)((count + 255) / 256), 256, 0, st, g, u, count, gelu);
}

extern "C" cudaError_t kcu_glu_q8(cudaStream_t st, float *g, const float *u, int64_t count, bool gelu, bool per_256,
                                  int8_t *q, void *scales)
{
    const int qbs = per_256 ? 256 : 32;
    if (count <= 0 || count % qbs != 0)
        return cudaErrorInvalidValue;
    const int64_t blocks = count / qbs;
    return kcu_launch(glu_q8_kernel, (unsigned)((blocks + 7) / 8), 256, 0, st, g, u, blocks, gelu, qbs, q,
                      (float2 *)scales);
}

extern "C" cudaError_t kcu_softcap(cudaStream_t st, float *v, int64_t count, float c)
{
    if (count <= 0)
        return cudaSuccess;
    return kcu_launch(softcap_kernel, (unsigned)((count + 255) / 256), 256, 0, st, v, count, c);
}

extern "C" cudaError_t kcu_rope_kv(cudaStream_t st, const struct kcu_rope_args *a)
{
    if (a->T <= 0)
        return cudaSuccess;
    if (a->dk > ROPE_MAX_D || a->dv > ROPE_MAX_D || a->n_rot > a->dk || a->n_rot % 2)
        return cudaErrorInvalidValue;
    const dim3 grid((unsigned)a->T, (unsigned)(a->n_head + 2 * a->n_head_kv));
    return kcu_launch(rope_kv_kernel, grid, 32, 0, st, *a);
}

/* Large steps by tiles: -1 when they pay (kcu_attention), 1 always, 0 never. */
static int g_attn_tiles = -1;

extern "C" void kcu_attn_set_tiles(int mode) { g_attn_tiles = mode < 0 ? -1 : mode > 0; }

extern "C" size_t kcu_attn_scratch_bytes(int n_head, int dv)
{
    return (size_t)KCU_ATTN_TILE_T * (size_t)n_head * KCU_ATTN_SPLITS * (size_t)(dv + 2) * sizeof(float);
}

extern "C" cudaError_t kcu_attention(cudaStream_t st, const struct kcu_attn_args *a)
{
    if (a->T <= 0)
        return cudaSuccess;
    if (a->dk != a->dv || a->n_head % a->n_head_kv || !a->part || !a->count)
        return cudaErrorInvalidValue;
    /* Large steps: by tiles of tokens when that gives every SM a block
     * (a model with one KV head, as the default one, has too few tiles
     * for a 512-token prompt; one block a query serves it better). */
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            sms = 132;
    }
    const int G = a->n_head / a->n_head_kv;
    const bool large = a->T > KCU_ATTN_TILE_T;
    const bool tiles_pay = (int64_t)a->n_head_kv * ((a->T + PF_ROWS / G - 1) / (PF_ROWS / G)) >= sms;
    if (large && G <= PF_ROWS && (g_attn_tiles == 1 || (g_attn_tiles < 0 && tiles_pay))) {
        switch (a->dk) {
        case 64:
            return attn_tile_launch<64>(st, *a);
        case 128:
            return attn_tile_launch<128>(st, *a);
        case 256:
            return attn_tile_launch<256>(st, *a);
        default:
            return cudaErrorInvalidValue;
        }
    }
    /* Splits (steps of up to KCU_ATTN_TILE_T queries, which the scratch
     * holds) for the longest context the block tables can hold; each
     * query uses as many as its own position needs. */
    const int64_t max_n = (int64_t)a->blocks_stride * a->bt;
    const int max_splits = large ? 1 : KCU_ATTN_SPLITS;
    const int splits = (int)std::min<int64_t>(max_splits, (max_n + KCU_ATTN_CHUNK - 1) / KCU_ATTN_CHUNK);
    const dim3 grid((unsigned)a->n_head, (unsigned)a->T, (unsigned)std::max(splits, 1));
    switch (a->dk) {
    case 64:
        return kcu_launch(attn_kernel<64>, grid, 32 * ATTN_WARPS, 0, st, *a, max_splits);
    case 128:
        return kcu_launch(attn_kernel<128>, grid, 32 * ATTN_WARPS, 0, st, *a, max_splits);
    case 256:
        return kcu_launch(attn_kernel<256>, grid, 32 * ATTN_WARPS, 0, st, *a, max_splits);
    default:
        return cudaErrorInvalidValue;
    }
}

extern "C" cudaError_t kcu_add_norm_q8(cudaStream_t st, float *x, const float *y, const float *w, float *out,
                                       const float *w_out, int rows, int n, float eps, bool per_256, int8_t *q,
                                       void *scales)
{
    const int qbs = per_256 ? 256 : 32;
    if (rows <= 0 || n % qbs != 0 || !out)
        return cudaErrorInvalidValue;
    cudaError_t rc = cudaSuccess;
    with_r(n, [&]<int R>() {
        rc = kcu_launch(add_norm_kernel<R>, rows, NORM_THREADS, 0, st, x, y, w, out, w_out, n, eps, q, (float2 *)scales,
                        qbs);
    });
    return rc;
}
