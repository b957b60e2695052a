/*
 * CUDA kernels: the device half of the CUDA engine (engine/cuda), callable
 * from C. Built only when CMake finds nvcc (LMD_HAVE_CUDA).
 *
 * Weights stay in their GGUF block layouts on the device: they are copied
 * from the mapping once, byte for byte, and every kernel that reads them
 * dequantizes on the fly. The block formats are those of kernels/quants.h;
 * kcuda_types.cuh reads them on the device, 32 elements ("a unit") at a
 * time, and is the one table of data types: adding a type there gives it
 * the matrix-vector product, the dequantizer and the embedding lookup.
 *
 * Activations are f32 rows, K/V blocks f16 in the layout of model.h's
 * struct model_kv. Every function queues work on the stream it is given and
 * returns the launch's status (cudaSuccess or the error); nothing here
 * synchronizes or allocates, except kcu_ctx_create.
 */
#pragma once

#include "gguf/gguf.h"

#include <cuda_runtime.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Decide once whether kernels are launched with programmatic dependent
 * launch (kcuda_launch.cuh): when the device runs code built for sm_90 or
 * later and LMD_CUDA_PDL is not 0. Runs a probe kernel and waits for it;
 * kcu_ctx_create calls it. *on (may be NULL) tells the outcome. */
cudaError_t kcu_pdl_init(cudaStream_t st, bool *on);

/* Weight types the CUDA kernels compute with. */
bool kcu_type_supported(enum gguf_dtype t);

/* The largest activation row count kcu_gemv takes; kcu_matmul goes through
 * dequantized f16 tiles and cuBLAS above it. */
#define KCU_GEMV_MAX_M 8
/* Up to this many rows, kcu_matmul runs quantized weights through the
 * GEMV in passes of KCU_GEMV_MAX_M rows rather than through cuBLAS. */
#define KCU_GEMV_PASSES_MAX_M 32

/* One matrix of a product: n rows at w (of the call's type and row
 * stride), written to y[i * ldy + r]. w16, when not NULL, is the same
 * rows dequantized to f16 ([n][k]), kept by the caller: products of more
 * than KCU_GEMV_MAX_M rows then go to cuBLAS on it directly, with no
 * dequantization per call (kcu_matmul_parts uses it only when every part
 * has one). */
struct kcu_mm_part {
    const void *w;
    int64_t n;
    float *y;
    int64_t ldy;
    const void *w16;
};
/* Matrices of one type and row width that multiply the same activations
 * (a layer's Q, K and V; gate and up) go through one launch. */
#define KCU_MM_PARTS_MAX 3

/* y_p[i * ldy_p + r] = W_p[r] . x[i] for each part p, r < n_p,
 * i < m <= KCU_GEMV_MAX_M.
 *   W_p: n_p rows of type t, w_stride bytes apart  [n_p][k]
 *   x: m rows of k f32, contiguous, 16-byte aligned [m][k]
 * k is a multiple of 32 (every supported type's block divides it or is
 * divided by it: K-quants need k % 256 == 0). */
cudaError_t kcu_gemv(cudaStream_t st, enum gguf_dtype t, size_t w_stride, int64_t k, const float *x, int m,
                     const struct kcu_mm_part *parts, int n_parts);

/* Types whose GEMV has an integer path over 8-bit activations (Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K): kcu_quantize_q8 turns count f32 (a
 * multiple of the block) into int8 q [count] and per-32 scales
 * [count / 32] of (d, d * sum(q)) as float pairs; kcu_gemv_q8 is kcu_gemv
 * over them. kcu_matmul takes this path by itself for these types. */
bool kcu_type_q8(enum gguf_dtype t);
/* Whether t's activations are quantized per 256 (as the CPU's Q8_K, for
 * the K-quants) rather than per 32 (Q8_0 / Q8_1); kcu_quantize_q8 does
 * either, rounding as the CPU engine does (quant.cu says how). */
bool kcu_q8_per_256(enum gguf_dtype t);
cudaError_t kcu_quantize_q8(cudaStream_t st, const float *x, int64_t count, bool per_256, int8_t *q, void *scales);
cudaError_t kcu_gemv_q8(cudaStream_t st, enum gguf_dtype t, size_t w_stride, int64_t k, const int8_t *xq,
                        const void *xs, int m, const struct kcu_mm_part *parts, int n_parts);

/* Rows [r0, r0 + n) of W -> f16 (dst: [n][k], as uint16_t bits). */
cudaError_t kcu_dequant_f16(cudaStream_t st, enum gguf_dtype t, const void *w, size_t w_stride, int64_t r0, int64_t n,
                            int64_t k, uint16_t *dst);

/* Matrix products of any row count: kcu_gemv for m <= KCU_GEMV_MAX_M (and
 * in passes up to KCU_GEMV_PASSES_MAX_M for quantized weights), else W
 * dequantized to f16 (in slices that fit the context's scratch; F16
 * and BF16 weights are used in place) and multiplied by cuBLAS with f32
 * accumulation. One context per stream. */
struct kcu_ctx;
/* max_k: the widest row; max_m: the most activation rows; wscratch_elems:
 * f16 elements of dequantized weight slice (0 = a default). */
cudaError_t kcu_ctx_create(struct kcu_ctx **out, cudaStream_t st, int64_t max_k, int64_t max_m, size_t wscratch_elems);
void kcu_ctx_free(struct kcu_ctx *c);
/* Bytes of device memory the context holds. */
size_t kcu_ctx_bytes(const struct kcu_ctx *c);
/* A message for the last cuBLAS failure of this context ("" if none). */
const char *kcu_ctx_error(const struct kcu_ctx *c);
cudaError_t kcu_matmul(struct kcu_ctx *c, enum gguf_dtype t, const void *w, size_t w_stride, int64_t n, int64_t k,
                       const float *x, int64_t m, float *y, int64_t ldy);
/* kcu_matmul of up to KCU_MM_PARTS_MAX matrices of type t and row width k
 * over the same x: the activations are converted once and, on the GEMV
 * paths, all parts go through one launch. x_unchanged: the caller
 * promises that x (same pointer, m and k) has not been written since the
 * previous product on this context, so activations that product quantized
 * the way t needs are used again (a layer's V after Q and K of another
 * type, for example). */
cudaError_t kcu_matmul_parts(struct kcu_ctx *c, enum gguf_dtype t, size_t w_stride, int64_t k, const float *x,
                             int64_t m, const struct kcu_mm_part *parts, int n_parts, bool x_unchanged);
/* kcu_add_norm with out, and out also quantized into the context for a
 * product of type t over it (f16_copy: its parts have w16), when that
 * product (rows activation rows, n wide) takes the integer path: the next kcu_matmul_parts on out with
 * x_unchanged then skips its own quantization. One launch for what
 * would be three. */
cudaError_t kcu_matmul_add_norm(struct kcu_ctx *c, enum gguf_dtype t, bool f16_copy, float *x, const float *y,
                                const float *w, float *out, const float *w_out, int rows, int n, float eps);
/* kcu_glu over rows of n, g also quantized into the context for a product
 * of type t that takes the integer path (as kcu_matmul_add_norm does for
 * its out): the down projection that follows, called with x_unchanged,
 * skips its own quantization. */
cudaError_t kcu_matmul_glu(struct kcu_ctx *c, enum gguf_dtype t, bool f16_copy, float *g, const float *u, int rows,
                           int n, bool gelu);

/* ---- the other operations of the forward pass ---------------------------- */

/* x[t] = dequant(emb[tokens[t]]) * (scale ? sqrt(e) : 1) for t < T. */
cudaError_t kcu_embed(cudaStream_t st, enum gguf_dtype t, const void *emb, size_t emb_stride, const int32_t *tokens,
                      int T, int64_t e, bool scale, float *x);

/* out[r] = rmsnorm(in[idx ? idx[r] : r]) * w  (w may be NULL) for r < rows. */
cudaError_t kcu_rmsnorm(cudaStream_t st, float *out, const float *in, const int32_t *idx, const float *w, int rows,
                        int n, float eps);

/* x[r] += (w ? rmsnorm(y[r]) * w : y[r]) for r < rows; then, if out is
 * not NULL, out[r] = rmsnorm(x[r]) * w_out (w_out may be NULL) exactly as
 * kcu_rmsnorm computes it. out may be y. */
cudaError_t kcu_add_norm(cudaStream_t st, float *x, const float *y, const float *w, float *out, const float *w_out,
                         int rows, int n, float eps);

/* kcu_add_norm with out, and out quantized as kcu_quantize_q8 would
 * (per 256 or per 32) into q [rows][n] and scales [rows][n / 32]. */
cudaError_t kcu_add_norm_q8(cudaStream_t st, float *x, const float *y, const float *w, float *out, const float *w_out,
                            int rows, int n, float eps, bool per_256, int8_t *q, void *scales);

/* Gated activations over rows of n: g = act(g) * u. gelu: GeGLU (tanh
 * GELU, rounded through f16 as llama.cpp's table), else SwiGLU. */
cudaError_t kcu_glu(cudaStream_t st, float *g, const float *u, int64_t count, bool gelu);
/* kcu_glu, and g quantized as kcu_quantize_q8 would (per 256 or per 32). */
cudaError_t kcu_glu_q8(cudaStream_t st, float *g, const float *u, int64_t count, bool gelu, bool per_256, int8_t *q,
                       void *scales);

/* logits = c * tanh(logits / c). */
cudaError_t kcu_softcap(cudaStream_t st, float *v, int64_t count, float c);

/* The attention block's per-token preparation, for T tokens: biases,
 * per-head RMS norms, RoPE (neox or adjacent pairs), Q pre-scaling; K and
 * V written to the cache as f16 at each token's position. */
struct kcu_rope_args {
    float *q;                     /* [T][n_head][dk] */
    float *k;                     /* [T][n_head_kv][dk] */
    const float *v;               /* [T][n_head_kv][dv] */
    const float *bq, *bk, *bv;    /* biases or NULL */
    const float *q_norm, *k_norm; /* [dk] or NULL */
    const int32_t *tok_pos;       /* [T] */
    const int32_t *tok_seq;       /* [T] */
    const int32_t *blocks;        /* [n_seqs][blocks_stride] */
    int blocks_stride;
    uint16_t *kc, *vc; /* the cache: [n_blocks][n_layer][n_head_kv][bt][dk|dv] */
    size_t block_k_elems, block_v_elems;
    int layer, n_layer, bt;
    int T, n_head, n_head_kv, dk, dv, n_rot;
    bool neox;
    float theta_scale; /* base^(-2 / n_rot), computed on the host as the CPU engine does */
    float freq_scale;
    const float *freq_factors; /* [n_rot / 2] or NULL */
    float eps;
    float q_scale; /* 1 = none */
};
cudaError_t kcu_rope_kv(cudaStream_t st, const struct kcu_rope_args *a);

/* Causal attention of T tokens over the paged cache: out[t][h] =
 * softmax(scale * q[t][h] . K) V over positions [first, pos] of the
 * token's sequence, first = pos - n_swa + 1 when n_swa > 0. */
struct kcu_attn_args {
    float *out;              /* [T][n_head][dv] */
    const float *q;          /* [T][n_head][dk] */
    const uint16_t *kc, *vc; /* the cache */
    size_t block_k_elems, block_v_elems;
    const int32_t *tok_pos, *tok_seq, *blocks;
    int blocks_stride;
    int layer, n_head_kv, bt;
    int T, n_head, dk, dv;
    int n_swa; /* 0 = full attention */
    float scale;
    /* Scratch for queries split over several blocks (kcu_attention):
     * part [KCU_ATTN_TILE_T][n_head][KCU_ATTN_SPLITS][dv + 2] floats
     * (kcu_attn_scratch_bytes), count [KCU_ATTN_TILE_T][n_head] ints, zero
     * when allocated and left zero by every launch. */
    float *part;
    int *count;
};
/* Positions a split of one query's attention covers at least, the most
 * splits a query gets, and the most queries a step may have for their
 * attention to be split (the scratch's size; larger steps are not split). */
#define KCU_ATTN_CHUNK 64
#define KCU_ATTN_SPLITS 16
#define KCU_ATTN_TILE_T 64
size_t kcu_attn_scratch_bytes(int n_head, int dv);
/* Steps of more than KCU_ATTN_TILE_T queries are computed by tiles of
 * tokens sharing each K/V row when that gives every SM a block (mode -1,
 * the default), always (1) or never (0): for tests and measurements. */
void kcu_attn_set_tiles(int mode);
cudaError_t kcu_attention(cudaStream_t st, const struct kcu_attn_args *a);

/* ---- sampling (sample.cu) -------------------------------------------------- */

/* Log-probabilities of the most likely tokens a row can return, and the
 * most candidates top-k (or top-p's first 1024) are sorted among on the
 * device; engines take rows past either the CPU's way. */
#define KCU_SAMPLE_TOP_MAX 20
#define KCU_SAMPLE_POOL 1024

/* One row to sample, with a sampler's parameters (sample/sample.h). */
struct kcu_sample_row {
    double u;    /* the draw's uniform in [0, 1), from the sampler's RNG (unused when greedy) */
    int32_t row; /* the logits row */
    int32_t top_k;
    float temperature, top_p, min_p; /* temperature 0 = greedy */
    float repetition_penalty, presence_penalty, frequency_penalty;
    /* edits[edit0, edit0 + n_bias): logit biases, applied in order;
     * then n_pen entries of the penalty table, one a token. */
    int32_t edit0, n_bias, n_pen;
    int32_t n_logprobs; /* -1 = none; else the token's and the top min(n, KCU_SAMPLE_TOP_MAX) */
};

/* A bias (v added to the logit) or a penalty table entry (v = the
 * token's count in the output, as a float; 0 = only in the prompt). */
struct kcu_sample_edit {
    int32_t token;
    float v;
};

struct kcu_sample_out {
    int32_t token;
    float lp; /* with n_logprobs >= 0 */
    int32_t top_id[KCU_SAMPLE_TOP_MAX];
    float top_lp[KCU_SAMPLE_TOP_MAX];
};

/* Sample n_rows rows of logits [..][n_vocab] as sample_next does (bias and
 * penalties written into the rows, which sample_logprobs then reads), one
 * result a row into out [n_rows]. rows and edits are device memory. cand,
 * when not NULL ([n_rows][n_vocab], zeroed by the caller), gets a 1 for
 * every token of each row's final candidate set (for tests; only rows at
 * temperature > 0 write it). */
cudaError_t kcu_sample(cudaStream_t st, float *logits, int n_vocab, const struct kcu_sample_row *rows,
                       const struct kcu_sample_edit *edits, int n_rows, struct kcu_sample_out *out, uint8_t *cand);

#ifdef __cplusplus
}
#endif
