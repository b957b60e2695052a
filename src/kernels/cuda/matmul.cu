/*
 * Matrix products of any row count on one stream. Up to KCU_GEMV_MAX_M
 * activation rows (decode) the dequantizing GEMV streams the weights once;
 * above it (prefill, large batches) the work is arithmetic-bound, so the
 * weights are turned into f16 (in slices of at most wscratch elements, to
 * bound the scratch whatever the vocabulary) and multiplied on the tensor
 * cores by cuBLAS with f32 accumulation. F16 and BF16 weights go to cuBLAS
 * as they are, with the activations converted to their type.
 */
#include "kernels/cuda/kcuda.h"
#include "kernels/cuda/kcuda_launch.cuh"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdio.h>
#include <stdlib.h>

struct kcu_ctx {
    cudaStream_t st;
    cublasHandle_t blas;
    int64_t max_k, max_m;
    size_t wscratch_elems;
    __half *wscratch; /* [wscratch_elems] dequantized weight slice */
    void *xscratch;   /* [max_m][max_k] activations as f16 or bf16 */
    void *workspace;  /* cuBLAS's */
    int8_t *xq;       /* [max_m][max_k] activations quantized for kcu_gemv_q8 */
    float *rowscale;  /* [max_m] the powers of two of to_f16_rows_kernel */
    void *xs;         /* [max_m][max_k / 32] their scales */
    size_t bytes;
    int passes_max_m; /* KCU_GEMV_PASSES_MAX_M, or LMD_CUDA_GEMV_PASSES for measurements */
    /* What xq/xs hold: the activations at q8_x (q8_m rows of q8_k),
     * quantized per 256 or per 32; q8_x NULL when nothing is known. */
    const float *q8_x;
    int64_t q8_m, q8_k;
    bool q8_per_256;
    char err[128];
};

namespace
{

/* f16 tops out at 65504, and some models' activations go past it (Gemma's
 * do). Each row is converted divided by a power of two that brings its
 * largest magnitude under 2^14 (1 for nearly every row: nothing changes),
 * and the product's row is multiplied back (scale_rows_kernel); powers of
 * two keep both steps exact. */
constexpr float F16_ROW_MAX = 16384.0f;

__global__ void __launch_bounds__(256) to_f16_rows_kernel(const float *x, __half *y, float *scale, int64_t k)
{
    kcu_dep_launch();
    kcu_dep_wait();
    __shared__ float part[8];
    const int64_t r = blockIdx.x;
    const float *xr = x + r * k;
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < k; i += 256)
        amax = fmaxf(amax, fabsf(xr[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++)
        amax = fmaxf(amax, part[i]);
    float s = 1.0f;
    while (amax / s > F16_ROW_MAX && s < 0x1p100f)
        s *= 2.0f;
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < k; i += 256)
        y[r * k + i] = __float2half_rn(xr[i] * inv);
    if (threadIdx.x == 0)
        scale[r] = s;
}

__global__ void __launch_bounds__(256) scale_rows_kernel(float *y, const float *scale, int64_t n, int64_t ldy)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const float s = scale[blockIdx.x];
    if (s == 1.0f)
        return;
    float *yr = y + (int64_t)blockIdx.x * ldy;
    for (int64_t i = threadIdx.x; i < n; i += 256)
        yr[i] *= s;
}

__global__ void to_bf16_kernel(const float *x, __nv_bfloat16 *y, int64_t count)
{
    kcu_dep_launch();
    kcu_dep_wait();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count)
        y[i] = __float2bfloat16_rn(x[i]);
}

cudaError_t blas_fail(kcu_ctx *c, const char *what, cublasStatus_t s)
{
    snprintf(c->err, sizeof c->err, "cuBLAS %s: %s", what, cublasGetStatusString(s));
    return cudaErrorUnknown;
}

} // namespace

extern "C" cudaError_t kcu_ctx_create(struct kcu_ctx **out, cudaStream_t st, int64_t max_k, int64_t max_m,
                                      size_t wscratch_elems)
{
    *out = nullptr;
    kcu_ctx *c = (kcu_ctx *)calloc(1, sizeof *c);
    if (!c)
        return cudaErrorMemoryAllocation;
    c->st = st;
    cudaError_t prc = kcu_pdl_init(st, nullptr);
    if (prc != cudaSuccess) {
        free(c);
        return prc;
    }
    c->passes_max_m = KCU_GEMV_PASSES_MAX_M;
    const char *pe = getenv("LMD_CUDA_GEMV_PASSES");
    if (pe && *pe)
        c->passes_max_m = atoi(pe);
    c->max_k = max_k;
    c->max_m = max_m;
    /* 64 Mi elements (128 MiB) by default: big enough that a slice keeps
     * the tensor cores busy, small enough next to the weights. */
    c->wscratch_elems = wscratch_elems ? wscratch_elems : ((size_t)64 << 20);
    if (c->wscratch_elems < (size_t)max_k)
        c->wscratch_elems = (size_t)max_k;
    cudaError_t rc = cudaMalloc((void **)&c->wscratch, c->wscratch_elems * sizeof(__half));
    if (rc == cudaSuccess)
        rc = cudaMalloc(&c->xscratch, (size_t)max_m * (size_t)max_k * sizeof(__half));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&c->xq, (size_t)max_m * (size_t)max_k);
    if (rc == cudaSuccess)
        rc = cudaMalloc(&c->xs, (size_t)max_m * (size_t)(max_k / 32) * 8);
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&c->rowscale, (size_t)max_m * sizeof(float));
    if (rc != cudaSuccess) {
        kcu_ctx_free(c);
        return rc;
    }
    c->bytes = (size_t)max_m * (size_t)max_k * 5 / 4 + c->wscratch_elems * sizeof(__half) +
               (size_t)max_m * (size_t)max_k * sizeof(__half);
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        c->blas = nullptr;
        kcu_ctx_free(c);
        return cudaErrorInitializationError;
    }
    /* cuBLAS's workspace, given rather than left to cuBLAS: it would
     * otherwise allocate inside a CUDA graph capture. */
    const size_t ws = (size_t)32 << 20;
    if ((rc = cudaMalloc(&c->workspace, ws)) != cudaSuccess) {
        kcu_ctx_free(c);
        return rc;
    }
    c->bytes += ws;
    if ((s = cublasSetWorkspace(c->blas, c->workspace, ws)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetStream(c->blas, st)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        kcu_ctx_free(c);
        return cudaErrorInitializationError;
    }
    *out = c;
    return cudaSuccess;
}

extern "C" void kcu_ctx_free(struct kcu_ctx *c)
{
    if (!c)
        return;
    if (c->blas)
        cublasDestroy(c->blas);
    cudaFree(c->wscratch);
    cudaFree(c->xscratch);
    cudaFree(c->workspace);
    cudaFree(c->xq);
    cudaFree(c->xs);
    cudaFree(c->rowscale);
    free(c);
}

extern "C" size_t kcu_ctx_bytes(const struct kcu_ctx *c) { return c ? c->bytes : 0; }

extern "C" const char *kcu_ctx_error(const struct kcu_ctx *c) { return c ? c->err : ""; }

extern "C" cudaError_t kcu_matmul(struct kcu_ctx *c, enum gguf_dtype t, const void *w, size_t w_stride, int64_t n,
                                  int64_t k, const float *x, int64_t m, float *y, int64_t ldy)
{
    const struct kcu_mm_part part = {w, n, y, ldy, nullptr};
    return kcu_matmul_parts(c, t, w_stride, k, x, m, &part, 1, false);
}

/* Whether a product of type t over m rows of k takes the integer GEMV,
 * which quantizes its activations into xq/xs first. */
/* Whether a product of type t over m rows goes through the GEMV (else
 * cuBLAS): always up to KCU_GEMV_MAX_M rows; for quantized weights without
 * an f16 copy also in passes up to passes_max_m rows, since reading the
 * weights once per 8 rows costs less than dequantizing them to f16 (0.56
 * bytes an element for Q4_K, 4 passes for 32 rows, against 0.56 + 2 + 2).
 * With an f16 copy cuBLAS reads 2 bytes an element once. */
static bool takes_gemv(const kcu_ctx *c, enum gguf_dtype t, int64_t m, bool f16_copy)
{
    const bool flt = t == GGUF_DTYPE_F16 || t == GGUF_DTYPE_BF16;
    return m <= KCU_GEMV_MAX_M || (!flt && !f16_copy && m <= c->passes_max_m);
}

static bool takes_q8(const kcu_ctx *c, enum gguf_dtype t, int64_t m, int64_t k, bool f16_copy)
{
    return takes_gemv(c, t, m, f16_copy) && kcu_type_q8(t) && m <= c->max_m && k <= c->max_k;
}

extern "C" cudaError_t kcu_matmul_add_norm(struct kcu_ctx *c, enum gguf_dtype t, bool f16_copy, float *x,
                                           const float *y, const float *w, float *out, const float *w_out, int rows,
                                           int n, float eps)
{
    c->q8_x = nullptr;
    if (!out)
        return cudaErrorInvalidValue;
    if (!takes_q8(c, t, rows, n, f16_copy))
        return kcu_add_norm(c->st, x, y, w, out, w_out, rows, n, eps);
    const bool per_256 = kcu_q8_per_256(t);
    cudaError_t rc = kcu_add_norm_q8(c->st, x, y, w, out, w_out, rows, n, eps, per_256, c->xq, c->xs);
    if (rc != cudaSuccess)
        return rc;
    c->q8_x = out;
    c->q8_m = rows;
    c->q8_k = n;
    c->q8_per_256 = per_256;
    return cudaSuccess;
}

extern "C" cudaError_t kcu_matmul_glu(struct kcu_ctx *c, enum gguf_dtype t, bool f16_copy, float *g, const float *u,
                                      int rows, int n, bool gelu)
{
    c->q8_x = nullptr;
    if (!takes_q8(c, t, rows, n, f16_copy))
        return kcu_glu(c->st, g, u, (int64_t)rows * n, gelu);
    const bool per_256 = kcu_q8_per_256(t);
    cudaError_t rc = kcu_glu_q8(c->st, g, u, (int64_t)rows * n, gelu, per_256, c->xq, c->xs);
    if (rc != cudaSuccess)
        return rc;
    c->q8_x = g;
    c->q8_m = rows;
    c->q8_k = n;
    c->q8_per_256 = per_256;
    return cudaSuccess;
}

extern "C" cudaError_t kcu_matmul_parts(struct kcu_ctx *c, enum gguf_dtype t, size_t w_stride, int64_t k,
                                        const float *x, int64_t m, const struct kcu_mm_part *parts, int n_parts,
                                        bool x_unchanged)
{
    if (n_parts < 1 || n_parts > KCU_MM_PARTS_MAX || m < 1)
        return cudaErrorInvalidValue;
    const bool flt = t == GGUF_DTYPE_F16 || t == GGUF_DTYPE_BF16;
    bool f16_copy = !flt;
    for (int p = 0; p < n_parts; p++)
        f16_copy = f16_copy && parts[p].w16;
    /* xq/xs are reused only straight after the product that filled them:
     * a product in between that took another path did not refresh them. */
    const bool known = x_unchanged && c->q8_x == x && c->q8_m == m && c->q8_k == k;
    c->q8_x = nullptr;
    if (takes_gemv(c, t, m, f16_copy)) {
        const bool q8 = takes_q8(c, t, m, k, f16_copy);
        if (q8) {
            const bool per_256 = kcu_q8_per_256(t);
            if (known && c->q8_per_256 == per_256) {
                c->q8_x = x;
            } else {
                cudaError_t rc = kcu_quantize_q8(c->st, x, m * k, per_256, c->xq, c->xs);
                if (rc != cudaSuccess)
                    return rc;
                c->q8_x = x;
                c->q8_m = m;
                c->q8_k = k;
                c->q8_per_256 = per_256;
            }
        }
        for (int64_t i = 0; i < m; i += KCU_GEMV_MAX_M) {
            const int mi = (int)(m - i < KCU_GEMV_MAX_M ? m - i : KCU_GEMV_MAX_M);
            struct kcu_mm_part pass[KCU_MM_PARTS_MAX];
            for (int p = 0; p < n_parts; p++) {
                pass[p] = parts[p];
                pass[p].y += i * parts[p].ldy;
            }
            cudaError_t rc = q8 ? kcu_gemv_q8(c->st, t, w_stride, k, c->xq + i * k,
                                              (const char *)c->xs + i * (k / 32) * 8, mi, pass, n_parts)
                                : kcu_gemv(c->st, t, w_stride, k, x + i * k, mi, pass, n_parts);
            if (rc != cudaSuccess)
                return rc;
        }
        return cudaSuccess;
    }
    if (m > c->max_m || k > c->max_k)
        return cudaErrorInvalidValue;
    /* cuBLAS: the f16 (or bf16) activations are made once for every part;
     * xq/xs are not touched, so what they hold stays known. */
    const int64_t count = m * k;
    const unsigned grid = (unsigned)((count + 255) / 256);
    const float one = 1.0f, zero = 0.0f;
    const bool bf = t == GGUF_DTYPE_BF16;
    cudaError_t rc =
        bf ? kcu_launch(to_bf16_kernel, grid, 256, 0, c->st, x, (__nv_bfloat16 *)c->xscratch, count)
           : kcu_launch(to_f16_rows_kernel, (unsigned)m, 256, 0, c->st, x, (__half *)c->xscratch, c->rowscale, k);
    if (rc != cudaSuccess)
        return rc;
    for (int p = 0; p < n_parts; p++) {
        const int64_t n = parts[p].n, ldy = parts[p].ldy;
        float *y = parts[p].y;
        cublasStatus_t s;
        if (flt || f16_copy) {
            /* Y^T (n x m, column-major = Y row-major) = W (k x n column-major, transposed) . X^T. */
            const cudaDataType dt = bf ? CUDA_R_16BF : CUDA_R_16F;
            s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one,
                             f16_copy ? parts[p].w16 : parts[p].w, dt, f16_copy ? (int)k : (int)(w_stride / 2),
                             c->xscratch, dt, (int)k, &zero, y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS)
                return blas_fail(c, "gemm", s);
        } else {
            const int64_t slice = (int64_t)(c->wscratch_elems / (size_t)k);
            for (int64_t r0 = 0; r0 < n; r0 += slice) {
                const int64_t nr = n - r0 < slice ? n - r0 : slice;
                if ((rc = kcu_dequant_f16(c->st, t, parts[p].w, w_stride, r0, nr, k, (uint16_t *)c->wscratch)) !=
                    cudaSuccess)
                    return rc;
                s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, (int)m, (int)k, &one, c->wscratch,
                                 CUDA_R_16F, (int)k, c->xscratch, CUDA_R_16F, (int)k, &zero, y + r0, CUDA_R_32F,
                                 (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                if (s != CUBLAS_STATUS_SUCCESS)
                    return blas_fail(c, "gemm", s);
            }
        }
        if (!bf) {
            if ((rc = kcu_launch(scale_rows_kernel, (unsigned)m, 256, 0, c->st, y, c->rowscale, n, ldy)) != cudaSuccess)
                return rc;
        }
    }
    return cudaSuccess;
}
