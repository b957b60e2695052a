/*
 * CPU kernels: tensor data types with their exact GGUF block layouts,
 * dequantization, activation quantization, dot products and matmuls.
 *
 * Every weight type is dotted against activations quantized to the type
 * kern_dot_type() names (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1,
 * Q8_K for the K-quants, F16/BF16/F32 stay float), as llama.cpp does, so
 * results match it. Each operation has a portable scalar path (the reference the tests
 * compare against) and AVX2/FMA and AVX-512 paths chosen at run time from
 * lmd_cpu_features().
 *
 * These functions never allocate: callers pass scratch buffers sized with
 * the *_bytes() helpers at load time.
 */
#pragma once

#include "core/pool.h"
#include "gguf/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Select the SIMD paths (idempotent, thread-safe). Other calls do it lazily. */
void kern_init(void);
/* The path in use: "avx512", "avx2" or "scalar". */
const char *kern_isa(void);
/* Force a path for tests and comparisons: "scalar", "avx2", "avx512".
 * Returns LMD_ENOTSUP if the CPU lacks it. Not thread-safe with running kernels. */
int kern_set_isa(const char *name);

float kern_f16_to_f32(uint16_t h);
uint16_t kern_f32_to_f16(float f); /* round to nearest even */
float kern_bf16_to_f32(uint16_t h);
uint16_t kern_f32_to_bf16(float f); /* round to nearest even */

/* Weight types that have dequantization and dot products here. */
bool kern_dtype_supported(enum gguf_dtype t);

/* Elements per block of type t (1 for float types, 0 if unsupported). */
int64_t kern_block_size(enum gguf_dtype t);
/* Bytes of a row of n elements of type t; 0 if n is not a multiple of the
 * block size or t is unsupported. */
size_t kern_row_bytes(enum gguf_dtype t, int64_t n);

/* n elements (a multiple of the block size) of type t -> f32. */
void kern_dequant_row(enum gguf_dtype t, const void *src, float *dst, int64_t n);

/* The type activations are quantized to before a dot with weight type t. */
enum gguf_dtype kern_dot_type(enum gguf_dtype t);

/* f32 -> type t (t is any kern_dot_type result: Q8_0, Q8_1, Q8_K, F16,
 * BF16, F32), rounding exactly as llama.cpp's x86 quantizers do
 * (quantize_row_q8_0: d = amax / 127, q = x * (127 / amax) rounded to
 * nearest even; q8_K: d = max / -127 with the sign of the
 * largest-magnitude element, nearest even),
 * on every ISA. */
void kern_quantize_row(enum gguf_dtype t, const float *src, void *dst, int64_t n);

/* Dot product of n elements: w is a row of weight type t, x a row of
 * kern_dot_type(t). */
float kern_vec_dot(enum gguf_dtype t, int64_t n, const void *w, const void *x);

/* Y = X · Wᵀ for a weight matrix of n rows by k columns.
 *   w:  n rows of type wt, each w_stride bytes apart   [n][k]
 *   x:  m rows of f32, k each, contiguous               [m][k]
 *   y:  m rows of f32, row i at y + i * ldy             [m][n]
 * scratch holds x quantized to kern_dot_type(wt); its size comes from
 * kern_matmul_scratch_bytes(wt, k, m). Rows of W are split over the pool. */
size_t kern_matmul_scratch_bytes(enum gguf_dtype wt, int64_t k, int64_t m);
void kern_matmul(struct lmd_pool *pool, enum gguf_dtype wt, const void *w, size_t w_stride, int64_t n, int64_t k,
                 const float *x, int64_t m, float *y, int64_t ldy, void *scratch);

/*
 * Repacked weights for prefill and batched decode. Types with a repacked
 * layout (Q4_K, Q6_K) are copied at load into groups of 8 interleaved rows
 * whose tiles finish 8 dot products per vector step; decode (m = 1) keeps
 * streaming the original rows. Results are bit for bit those of the
 * original layout on every ISA, so using them or not changes nothing but
 * speed.
 *
 * kern_repack_bytes: bytes of the repacked copy of an n x k matrix of type
 * t, 0 if t has none. kern_repack writes it (pool may be NULL); dst is
 * 64-byte aligned, owned by the caller for the process lifetime.
 * kern_matmul_packed is kern_matmul with that copy (packed may be NULL).
 */
size_t kern_repack_bytes(enum gguf_dtype t, int64_t n, int64_t k);
void kern_repack(struct lmd_pool *pool, enum gguf_dtype t, const void *w, size_t w_stride, int64_t n, int64_t k,
                 void *dst);
void kern_matmul_packed(struct lmd_pool *pool, enum gguf_dtype wt, const void *w, size_t w_stride, const void *packed,
                        int64_t n, int64_t k, const float *x, int64_t m, float *y, int64_t ldy, void *scratch);
