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
    kcu_dep_wait();
    const int r = blockIdx.x;
    const float *x = in + (size_t)(idx ? idx[r] : r) * (size_t)n;
    float *o = out + (size_t)r * (size_t)n;
    if constexpr (R == 0) {
        kcu_rms_row<NORM_THREADS>(x, o, w, n, eps);
    } else {
        float v[R], wv[R];
        load_regs<R>(x, v, n);
        load_regs<R>(w, wv, n);
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
        float xv[R], yv[R], wv[R], wov[R];
        load_regs<R>(xr, xv, n);
        load_regs<R>(yr, yv, n);
        load_regs<R>(w, wv, n);
        load_regs<R>(o ? w_out : nullptr, wov, n);
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
 * 32 or 256 elements a block; one warp a block): the quantization reads
 * back only what the same thread just wrote (kcu_quant_q8_*_block take
 * elements lane * (qbs / 32) …), so no synchronization is needed, and the
 * bits are those of glu_kernel followed by quantize_q8. */
__global__ void __launch_bounds__(256)
    glu_q8_kernel(float *g, const float *u, int64_t blocks, bool gelu, int qbs, int8_t *q, float2 *qs)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int lane = threadIdx.x % 32;
    const int64_t b = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    if (b >= blocks)
        return;
    const int per = qbs / 32;
    const int64_t e0 = b * qbs + (int64_t)lane * per;
    for (int j = 0; j < per; j++)
        g[e0 + j] = glu_one(g[e0 + j], u[e0 + j], gelu);
    if (qbs == 256)
        kcu_quant_q8_K_block(g, b, q, qs, lane);
    else
        kcu_quant_q8_0_block(g, b, q, qs, lane);
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
    kcu_dep_wait();
    __shared__ float buf[ROPE_MAX_D];
    const int t = blockIdx.x, w = blockIdx.y, lane = threadIdx.x;
    const int pos = a.tok_pos[t];
    const bool is_q = w < a.n_head, is_k = !is_q && w < a.n_head + a.n_head_kv, is_v = !is_q && !is_k;
    const int h = is_q ? w : is_k ? w - a.n_head : w - a.n_head - a.n_head_kv;
    const int D = is_v ? a.dv : a.dk;
    const float *src = is_q   ? a.q + ((size_t)t * a.n_head + h) * a.dk
                       : is_k ? a.k + ((size_t)t * a.n_head_kv + h) * a.dk
                              : a.v + ((size_t)t * a.n_head_kv + h) * a.dv;
    const float *bias = is_q ? a.bq : is_k ? a.bk : a.bv;
    const size_t boff = (size_t)h * D;
    for (int i = lane; i < D; i += 32)
        buf[i] = src[i] + (bias ? bias[boff + i] : 0.0f);
    __syncwarp();
    if (!is_v) {
        const float *nw = is_q ? a.q_norm : a.k_norm;
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
    const int32_t blk = a.blocks[(size_t)a.tok_seq[t] * a.blocks_stride + pos / a.bt];
    const int slot = pos % a.bt;
    uint16_t *base = is_k ? a.kc + (size_t)blk * a.block_k_elems : a.vc + (size_t)blk * a.block_v_elems;
    uint16_t *dst = base + (((size_t)a.layer * a.n_head_kv + h) * a.bt + slot) * D;
    for (int i = lane; i < D; i += 32)
        dst[i] = __half_as_ushort(__float2half_rn(buf[i]));
}

constexpr int ATTN_WARPS = 4;
constexpr int ATTN_U = 4;

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
 * batch. Larger steps (prefill) have blocks enough without splitting, and
 * the partials' round trip made them slower: there every query is one
 * block (max_splits 1), as the products of large steps take another path
 * too.
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
    kcu_dep_wait();
    constexpr int DPL = D / 32;
    const int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
    const int kvh = h / (a.n_head / a.n_head_kv);
    const int pos = a.tok_pos[t];
    const int first = a.n_swa > 0 && pos - a.n_swa + 1 > 0 ? pos - a.n_swa + 1 : 0;
    const int n = pos + 1 - first;
    const int S = min(max_splits, (n + KCU_ATTN_CHUNK - 1) / KCU_ATTN_CHUNK);
    if (sp >= S)
        return;
    const int C = (n + S - 1) / S, lo = first + sp * C, hi = min(pos, lo + C - 1);
    const int32_t *bt = a.blocks + (size_t)a.tok_seq[t] * a.blocks_stride;
    const float *qp = a.q + ((size_t)t * a.n_head + h) * D + lane * DPL;
    float q[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        q[i] = __half2float(__float2half_rn(qp[i]));
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const size_t head_off = ((size_t)a.layer * a.n_head_kv + kvh) * a.bt;
    for (int p0 = lo + wid; p0 <= hi; p0 += ATTN_WARPS * ATTN_U) {
        __half kh[ATTN_U][DPL], vh[ATTN_U][DPL];
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            const int p = p0 + u * ATTN_WARPS;
            if (p > hi)
                break;
            const int32_t blk = bt[p / a.bt];
            const size_t off = (head_off + p % a.bt) * D + lane * DPL;
            const __half *kp = (const __half *)(a.kc + (size_t)blk * a.block_k_elems + off);
            const __half *vp = (const __half *)(a.vc + (size_t)blk * a.block_v_elems + off);
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
    /* Splits for the longest context the block tables can hold; each
     * query uses as many as its own position needs. */
    const int64_t max_n = (int64_t)a->blocks_stride * a->bt;
    const bool split = a->T <= KCU_ATTN_TILE_T;
    const int max_splits = split ? KCU_ATTN_SPLITS : 1;
    const int grid_z =
        split ? (int)std::min<int64_t>(KCU_ATTN_SPLITS, (max_n + KCU_ATTN_CHUNK - 1) / KCU_ATTN_CHUNK) : 1;
    const dim3 grid((unsigned)a->n_head, (unsigned)a->T, (unsigned)std::max(grid_z, 1));
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
