/*
 * The CUDA engine: model/ (hyper-parameters, tensor views of the mapped
 * GGUF) + kernels/cuda on one GPU behind engine.h, step-level, returning
 * logits as the native engine does.
 *
 * At open, every weight the forward pass reads is copied to the device
 * once, in its GGUF block layout, into one allocation; the K/V blocks, the
 * activations of a full step and the step's index arrays are allocated
 * there too, so a step allocates nothing. A step is queued on the engine's
 * one stream by launch (which returns at once) and collected by wait: the
 * caller prepares its next batch while the GPU runs this one.
 *
 * The forward pass below is model/forward.c's, step for step, with each
 * loop a kernel: read the two side by side.
 *
 * The engine samples (info.samples): each row's logits become a token on
 * the device (kernels/cuda/sample.cu, sample/sample.c's semantics) and
 * only the token and the log-probabilities asked for come back. A row the
 * device cannot sample exactly — a sampler with a grammar, more than
 * KCU_SAMPLE_TOP_MAX log-probabilities, more bias and penalty entries
 * than the step's edit buffer holds — has its logits row copied back and
 * goes through sample_next on the CPU in wait. LMD_CUDA_SAMPLE=0 (or
 * engine_config.logits_out) returns every row's logits instead.
 */
#include "engine/engine.h"

#include "core/log.h"
#include "core/time.h"
#include "kernels/cuda/kcuda.h"
#include "model/model.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A weight matrix on the device. */
struct cu_tensor {
    const void *d;   /* device copy of the rows */
    const void *d16; /* the rows dequantized to f16 [n_rows][n_cols], or NULL (f16_copies) */
    enum gguf_dtype type;
    int64_t n_rows, n_cols;
    size_t row_bytes;
};

struct cu_layer {
    const float *attn_norm, *attn_post_norm, *ffn_norm, *ffn_post_norm; /* [n_embd] or NULL */
    const float *bq, *bk, *bv, *q_norm, *k_norm;
    struct cu_tensor wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down;
};

/* Stage timers (LMD_PROFILE=1): as model/forward.c's, but each stage is
 * waited for, so the figures are the GPU's time per stage plus a launch;
 * CUDA graphs are off while profiling. */
enum cu_prof {
    CP_EMBED,
    CP_NORM,
    CP_MM_QKV,
    CP_ROPE_KV,
    CP_ATTN,
    CP_MM_O,
    CP_RESID,
    CP_MM_FFN,
    CP_ACT,
    CP_MM_DOWN,
    CP_LOGITS,
    CP_SAMPLE,
    CP_SAMPLE_CPU,
    CP_COUNT
};
static const char *const cp_names[CP_COUNT] = {
    "embed",    "rmsnorm",        "matmul q/k/v",       "qk-norm+rope+kv", "attention",
    "matmul o", "residual",       "matmul gate/up",     "geglu/swiglu",    "matmul down",
    "logits",   "sampling (gpu)", "sampling (cpu rows)"};

struct cuda_engine {
    struct engine base; /* first: the engine is cast to this */
    struct model *model;
    int device;
    char device_name[256];
    cudaStream_t st;
    cudaEvent_t done;
    struct kcu_ctx *mm;
    /* Weights: one allocation, tensors at 256-byte aligned offsets. */
    uint8_t *wbuf;
    size_t wbytes, wused;
    uint8_t *w16buf; /* the f16 copies of quantized matrices, or NULL */
    size_t w16bytes;
    struct cu_tensor tok_embd, output;
    const float *output_norm, *rope_freqs;
    struct cu_layer *layers; /* [n_layer] */
    /* K/V: [n_blocks][n_layer][n_head_kv][bt][head_dim] f16 each. */
    uint16_t *kc, *vc;
    size_t block_k_elems, block_v_elems;
    /* Activations for max_batch_tokens tokens (model/forward.c's scratch). */
    float *x, *xb, *q, *k, *v, *att, *ffg, *ffu; /* [T][…] */
    float *attn_part;                            /* kcu_attn_args.part */
    int *attn_count;                             /* kcu_attn_args.count */
    float *logits_d;                             /* [max_seqs][n_vocab] */
    float *logits_h;                             /* pinned copy handed to the caller */
    /* The step's indices, staged in pinned memory and copied in one go:
     * tokens [T] | positions [T] | sequence of each token [T] | token of
     * each logit row [n_want] | block tables [n_seqs][stride]. */
    int32_t *meta_h, *meta_d;
    size_t meta_cap; /* int32 elements */
    int max_blocks;  /* blocks of one full-context sequence */
    float theta_scale, theta_scale_swa;
    /* Decode steps (one token a sequence) replayed as CUDA graphs, one per
     * (sequences, block-table stride class): a step's hundreds of kernel
     * launches cost one. The step's indices are copied in before the
     * replay, so a graph serves any tokens, positions and blocks of its
     * shape. NULL where not captured yet; LMD_CUDA_GRAPHS=0 turns them off. */
    cudaGraphExec_t *graphs; /* [max_seqs][GRAPH_STRIDES] */
    bool use_graphs;
    uint64_t graph_launches, graph_captures;
    bool profile;
    uint64_t prof_ns[CP_COUNT], prof_tokens, prof_steps, prof_t0;
    /* Sampling (info.samples). A step's rows travel after its indices in
     * meta, in the same copy: kcu_sample_row [n_want] then the bias and
     * penalty entries [n_edits], at most edit_cap of them a step. */
    size_t smp_cap;                         /* int32 elements of meta after meta_cap for them */
    int edit_cap;                           /* kcu_sample_edit entries a step, all rows together */
    struct kcu_sample_out *sout_d, *sout_h; /* [max_seqs] the device rows' results (pinned) */
    struct cu_out *outs;                    /* [max_seqs] the step's output rows */
    int32_t *tokens;                        /* [max_seqs] the step's tokens, handed to the caller */
    struct sample_scratch sc;               /* for the rows sampled on the CPU */
    int n_dev_rows;                         /* rows of the step sampled on the device */
    uint64_t rows_dev, rows_cpu;
    /* The step in flight. */
    int n_rows;
    int rc;
    struct lmd_err err;
};

/* One output row of a step that samples: where its token comes from and
 * where its log-probabilities go (engine_seq's, kept until wait). */
struct cu_out {
    struct sampler *smp;
    int n_logprobs;
    float *out_lp;
    int32_t *out_top_id;
    float *out_top_lp;
    int dev; /* its row of sout, or -1: sampled on the CPU from logits_h */
};

/* Bias and penalty entries a step may send, per sequence it holds. */
#define CU_EDITS_PER_SEQ 2048

/* The status of a CUDA call as an lmd error; every call is checked. */
static int cu_fail(struct lmd_err *err, cudaError_t e, const char *what)
{
    return lmd_err_set(err, e == cudaErrorMemoryAllocation ? LMD_ENOMEM : LMD_EIO, "cuda: %s: %s", what,
                       cudaGetErrorString(e));
}
#define CU_TRY(call, what)                                                                                             \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
            return cu_fail(err, e_, (what));                                                                           \
    } while (0)

/* ---- weights -------------------------------------------------------------- */

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static size_t tensor_bytes(const struct model_tensor *t)
{
    return t->data ? align256((size_t)t->n_rows * t->row_bytes) : 0;
}

static size_t vec_bytes(const float *v, int64_t n) { return v ? align256((size_t)n * sizeof(float)) : 0; }

static const void *upload(struct cuda_engine *ce, const void *src, size_t bytes, struct lmd_err *err, int *rc)
{
    if (!src || *rc)
        return NULL;
    uint8_t *dst = ce->wbuf + ce->wused;
    cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        *rc = cu_fail(err, e, "copying weights to the device");
        return NULL;
    }
    ce->wused += align256(bytes);
    return dst;
}

static int upload_tensor(struct cuda_engine *ce, struct cu_tensor *dt, const struct model_tensor *t, const char *name,
                         struct lmd_err *err, int *rc)
{
    if (!t->data || *rc)
        return *rc;
    if (!kcu_type_supported(t->type) || t->n_cols % 32 != 0 ||
        (t->type >= GGUF_DTYPE_Q2_K && t->type <= GGUF_DTYPE_Q8_K && t->n_cols % 256 != 0))
        return *rc = lmd_err_set(err, LMD_ENOTSUP, "cuda: tensor %s: type %s with %lld columns has no CUDA kernel",
                                 name, gguf_dtype_name(t->type), (long long)t->n_cols);
    *dt = (struct cu_tensor){.type = t->type, .n_rows = t->n_rows, .n_cols = t->n_cols, .row_bytes = t->row_bytes};
    dt->d = upload(ce, t->data, (size_t)t->n_rows * t->row_bytes, err, rc);
    return *rc;
}

static int weights_upload(struct cuda_engine *ce, struct lmd_err *err)
{
    const struct model *m = ce->model;
    const struct model_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, DK = hp->head_dim_k;
    size_t total = tensor_bytes(&m->tok_embd) + vec_bytes(m->output_norm, E) + vec_bytes(m->rope_freqs, hp->n_rot / 2);
    if (m->output.data != m->tok_embd.data)
        total += tensor_bytes(&m->output);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        total += tensor_bytes(&L->wq) + tensor_bytes(&L->wk) + tensor_bytes(&L->wv) + tensor_bytes(&L->wo) +
                 tensor_bytes(&L->ffn_gate) + tensor_bytes(&L->ffn_up) + tensor_bytes(&L->ffn_down);
        total += vec_bytes(L->attn_norm, E) + vec_bytes(L->attn_post_norm, E) + vec_bytes(L->ffn_norm, E) +
                 vec_bytes(L->ffn_post_norm, E) + vec_bytes(L->q_norm, DK) + vec_bytes(L->k_norm, DK);
        total += vec_bytes(L->bq, (int64_t)hp->n_head * DK) + vec_bytes(L->bk, (int64_t)hp->n_head_kv * DK) +
                 vec_bytes(L->bv, (int64_t)hp->n_head_kv * hp->head_dim_v);
    }
    CU_TRY(cudaMalloc((void **)&ce->wbuf, total), "allocating the weights");
    ce->wbytes = total;
    int rc = 0;
    char name[64];
    upload_tensor(ce, &ce->tok_embd, &m->tok_embd, "token_embd", err, &rc);
    if (m->output.data == m->tok_embd.data)
        ce->output = ce->tok_embd;
    else
        upload_tensor(ce, &ce->output, &m->output, "output", err, &rc);
    ce->output_norm = upload(ce, m->output_norm, (size_t)E * sizeof(float), err, &rc);
    ce->rope_freqs = upload(ce, m->rope_freqs, (size_t)(hp->n_rot / 2) * sizeof(float), err, &rc);
    for (int il = 0; il < hp->n_layer && !rc; il++) {
        const struct model_layer *L = &m->layers[il];
        struct cu_layer *D = &ce->layers[il];
        const struct {
            struct cu_tensor *d;
            const struct model_tensor *t;
            const char *n;
        } mats[] = {{&D->wq, &L->wq, "attn_q"},
                    {&D->wk, &L->wk, "attn_k"},
                    {&D->wv, &L->wv, "attn_v"},
                    {&D->wo, &L->wo, "attn_output"},
                    {&D->ffn_gate, &L->ffn_gate, "ffn_gate"},
                    {&D->ffn_up, &L->ffn_up, "ffn_up"},
                    {&D->ffn_down, &L->ffn_down, "ffn_down"}};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", il, mats[i].n);
            upload_tensor(ce, mats[i].d, mats[i].t, name, err, &rc);
        }
        D->attn_norm = upload(ce, L->attn_norm, (size_t)E * sizeof(float), err, &rc);
        D->attn_post_norm = upload(ce, L->attn_post_norm, (size_t)E * sizeof(float), err, &rc);
        D->ffn_norm = upload(ce, L->ffn_norm, (size_t)E * sizeof(float), err, &rc);
        D->ffn_post_norm = upload(ce, L->ffn_post_norm, (size_t)E * sizeof(float), err, &rc);
        D->q_norm = upload(ce, L->q_norm, (size_t)DK * sizeof(float), err, &rc);
        D->k_norm = upload(ce, L->k_norm, (size_t)DK * sizeof(float), err, &rc);
        D->bq = upload(ce, L->bq, (size_t)hp->n_head * (size_t)DK * sizeof(float), err, &rc);
        D->bk = upload(ce, L->bk, (size_t)hp->n_head_kv * (size_t)DK * sizeof(float), err, &rc);
        D->bv = upload(ce, L->bv, (size_t)hp->n_head_kv * (size_t)hp->head_dim_v * sizeof(float), err, &rc);
    }
    return rc;
}

/*
 * f16 copies of the quantized matrices, made once at load in the memory the
 * K/V blocks did not need. Products of more than KCU_GEMV_MAX_M rows
 * (prefill, batched decode) otherwise dequantize every matrix to f16 on
 * every step, in slices, and read it back: 2 + 2 bytes written and read an
 * element next to the 0.56 of Q4_K; from a copy cuBLAS reads 2 bytes an
 * element once. Decode at up to KCU_GEMV_MAX_M rows keeps reading the
 * quantized rows (fewer bytes). Nothing is taken from the K/V blocks:
 * without room for every copy, none is made. LMD_CUDA_F16_COPIES=0 turns
 * them off (for measurements).
 */
static bool wants_copy(const struct cu_tensor *t)
{
    return t->d && t->type != GGUF_DTYPE_F16 && t->type != GGUF_DTYPE_BF16 && t->type != GGUF_DTYPE_F32;
}

/* The matrices a copy may be made of: the layers' seven and the output. */
static int copy_candidates(struct cuda_engine *ce, struct cu_tensor **out)
{
    int n = 0;
    for (int il = 0; il < ce->model->hp.n_layer; il++) {
        struct cu_layer *L = &ce->layers[il];
        struct cu_tensor *ts[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
            if (out && wants_copy(ts[i]))
                out[n++] = ts[i];
            else if (!out)
                n++;
    }
    if (out && wants_copy(&ce->output))
        out[n++] = &ce->output;
    else if (!out)
        n++;
    return n;
}

static int f16_copies(struct cuda_engine *ce, struct lmd_err *err)
{
    const char *env = getenv("LMD_CUDA_F16_COPIES");
    if (env && strcmp(env, "0") == 0)
        return 0;
    struct cu_tensor **ts = malloc(sizeof *ts * (size_t)copy_candidates(ce, NULL));
    if (!ts)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    const int n = copy_candidates(ce, ts);
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += align256((size_t)ts[i]->n_rows * (size_t)ts[i]->n_cols * 2);
    size_t free_b = 0, total_b = 0;
    if (n == 0 || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        free(ts);
        return 0;
    }
    const size_t margin = ((size_t)1 << 30) + total_b / 20;
    if (free_b < margin || free_b - margin < need || cudaMalloc((void **)&ce->w16buf, need) != cudaSuccess) {
        (void)cudaGetLastError();
        ce->w16buf = NULL;
        LMD_INFO("cuda engine: no f16 copies of the quantized matrices (%zu MiB needed, %zu MiB free after the K/V "
                 "blocks): products over %d rows dequantize on each step",
                 need >> 20, free_b >> 20, KCU_GEMV_MAX_M);
        free(ts);
        return 0;
    }
    ce->w16bytes = need;
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        struct cu_tensor *t = ts[i];
        t->d16 = ce->w16buf + used;
        cudaError_t e = kcu_dequant_f16(ce->st, t->type, t->d, t->row_bytes, 0, t->n_rows, t->n_cols,
                                        (uint16_t *)(ce->w16buf + used));
        if (e != cudaSuccess) {
            free(ts);
            return cu_fail(err, e, "making the f16 copies");
        }
        used += align256((size_t)t->n_rows * (size_t)t->n_cols * 2);
    }
    free(ts);
    CU_TRY(cudaStreamSynchronize(ce->st), "making the f16 copies");
    return 0;
}

/* ---- the forward pass ----------------------------------------------------- */

/* Each kernel's launch status; the first failure ends the step. */
#define K_TRY(call, what)                                                                                              \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
            return e_ == cudaErrorUnknown && kcu_ctx_error(ce->mm)[0]                                                  \
                       ? lmd_err_set(err, LMD_EIO, "cuda: %s: %s", (what), kcu_ctx_error(ce->mm))                      \
                       : cu_fail(err, e_, (what));                                                                     \
    } while (0)

static void prof_mark(struct cuda_engine *ce, enum cu_prof op)
{
    if (!ce->profile)
        return;
    cudaStreamSynchronize(ce->st);
    const uint64_t now = lmd_time_mono_ns();
    ce->prof_ns[op] += now - ce->prof_t0;
    ce->prof_t0 = now;
}

static void prof_report(const struct cuda_engine *ce)
{
    uint64_t total = 0;
    for (int i = 0; i < CP_COUNT; i++)
        total += ce->prof_ns[i];
    if (!total)
        return;
    fprintf(stderr, "profile: %llu steps, %llu tokens, %.3f s in the forward pass (cuda, each stage waited for)\n",
            (unsigned long long)ce->prof_steps, (unsigned long long)ce->prof_tokens, (double)total / 1e9);
    for (int i = 0; i < CP_COUNT; i++)
        fprintf(stderr, "profile: %-18s %6.1f %%  %9.3f ms  %8.2f us/token\n", cp_names[i],
                100.0 * (double)ce->prof_ns[i] / (double)total, (double)ce->prof_ns[i] / 1e6,
                (double)ce->prof_ns[i] / 1e3 / (double)ce->prof_tokens);
}

static cudaError_t mm(struct cuda_engine *ce, const struct cu_tensor *w, const float *x, int m, float *y)
{
    const struct kcu_mm_part part = {w->d, w->n_rows, y, w->n_rows, w->d16};
    return kcu_matmul_parts(ce->mm, w->type, w->row_bytes, w->n_cols, x, m, &part, 1, false);
}

/* Products of several matrices over the same x (Q, K, V; gate, up):
 * neighbours of one type and width go through one launch, and x is
 * quantized once where the types agree on how. y[i] is [m][w[i]->n_rows].
 * x_unchanged: x was written by kcu_matmul_add_norm just before (which
 * may have quantized it for the first matrix). */
static cudaError_t mm_same_x(struct cuda_engine *ce, const struct cu_tensor *const *w, float *const *y, int count,
                             const float *x, int m, bool x_unchanged)
{
    for (int i = 0; i < count;) {
        struct kcu_mm_part parts[KCU_MM_PARTS_MAX];
        int n = 0;
        do {
            parts[n] = (struct kcu_mm_part){w[i + n]->d, w[i + n]->n_rows, y[i + n], w[i + n]->n_rows, w[i + n]->d16};
            n++;
        } while (i + n < count && n < KCU_MM_PARTS_MAX && w[i + n]->type == w[i]->type &&
                 w[i + n]->row_bytes == w[i]->row_bytes && w[i + n]->n_cols == w[i]->n_cols);
        cudaError_t rc =
            kcu_matmul_parts(ce->mm, w[i]->type, w[i]->row_bytes, w[i]->n_cols, x, m, parts, n, x_unchanged || i > 0);
        if (rc != cudaSuccess)
            return rc;
        i += n;
    }
    return cudaSuccess;
}

static int forward(struct cuda_engine *ce, int T, int n_seqs, int n_want, int stride, struct lmd_err *err)
{
    const struct model_hparams *hp = &ce->model->hp;
    const int E = hp->n_embd, H = hp->n_head, HKV = hp->n_head_kv, DK = hp->head_dim_k, DV = hp->head_dim_v;
    const struct engine_info *in = &ce->base.info;
    const int32_t *tokens = ce->meta_d, *tok_pos = tokens + T, *tok_seq = tok_pos + T, *want_idx = tok_seq + T;
    const int32_t *blocks = want_idx + n_want;
    (void)n_seqs;

    K_TRY(kcu_embed(ce->st, ce->tok_embd.type, ce->tok_embd.d, ce->tok_embd.row_bytes, tokens, T, E,
                    hp->arch->embd_scale, ce->x),
          "embedding");
    prof_mark(ce, CP_EMBED);
    for (int il = 0; il < hp->n_layer; il++) {
        const struct cu_layer *L = &ce->layers[il];
        const bool swa = hp->layer_swa[il];

        /* Attention: norm (the previous layer's residual did it), Q/K/V
         * projections. */
        if (il == 0) {
            K_TRY(kcu_rmsnorm(ce->st, ce->xb, ce->x, NULL, L->attn_norm, T, E, hp->rms_eps), "rmsnorm");
            prof_mark(ce, CP_NORM);
        }
        {
            const struct cu_tensor *w[3] = {&L->wq, &L->wk, &L->wv};
            float *y[3] = {ce->q, ce->k, ce->v};
            K_TRY(mm_same_x(ce, w, y, 3, ce->xb, T, il > 0), "matmul q/k/v");
        }
        prof_mark(ce, CP_MM_QKV);

        /* Biases, per-head norms and RoPE, Q scaling; K and V into the cache. */
        const struct kcu_rope_args ra = {.q = ce->q,
                                         .k = ce->k,
                                         .v = ce->v,
                                         .bq = L->bq,
                                         .bk = L->bk,
                                         .bv = L->bv,
                                         .q_norm = L->q_norm,
                                         .k_norm = L->k_norm,
                                         .tok_pos = tok_pos,
                                         .tok_seq = tok_seq,
                                         .blocks = blocks,
                                         .blocks_stride = stride,
                                         .kc = ce->kc,
                                         .vc = ce->vc,
                                         .block_k_elems = ce->block_k_elems,
                                         .block_v_elems = ce->block_v_elems,
                                         .layer = il,
                                         .n_layer = hp->n_layer,
                                         .bt = in->kv_block_tokens,
                                         .T = T,
                                         .n_head = H,
                                         .n_head_kv = HKV,
                                         .dk = DK,
                                         .dv = DV,
                                         .n_rot = hp->n_rot,
                                         .neox = hp->arch->rope == MODEL_ROPE_NEOX,
                                         .theta_scale = swa ? ce->theta_scale_swa : ce->theta_scale,
                                         .freq_scale = swa ? 1.0f : hp->rope_freq_scale,
                                         .freq_factors = swa ? NULL : ce->rope_freqs,
                                         .eps = hp->rms_eps,
                                         .q_scale = hp->arch->q_prescale ? hp->attn_scale : 1.0f};
        K_TRY(kcu_rope_kv(ce->st, &ra), "rope");
        prof_mark(ce, CP_ROPE_KV);

        const struct kcu_attn_args aa = {.out = ce->att,
                                         .q = ce->q,
                                         .kc = ce->kc,
                                         .vc = ce->vc,
                                         .block_k_elems = ce->block_k_elems,
                                         .block_v_elems = ce->block_v_elems,
                                         .tok_pos = tok_pos,
                                         .tok_seq = tok_seq,
                                         .blocks = blocks,
                                         .blocks_stride = stride,
                                         .layer = il,
                                         .n_head_kv = HKV,
                                         .bt = in->kv_block_tokens,
                                         .T = T,
                                         .n_head = H,
                                         .dk = DK,
                                         .dv = DV,
                                         .n_swa = swa ? hp->n_swa : 0,
                                         .scale = hp->arch->q_prescale ? 1.0f : hp->attn_scale,
                                         .part = ce->attn_part,
                                         .count = ce->attn_count};
        K_TRY(kcu_attention(ce->st, &aa), "attention");
        prof_mark(ce, CP_ATTN);

        /* Output projection, optional post-norm, residual. */
        K_TRY(mm(ce, &L->wo, ce->att, T, ce->xb), "matmul o");
        prof_mark(ce, CP_MM_O);
        /* The residual and the feed-forward's norm in one launch. */
        K_TRY(kcu_matmul_add_norm(ce->mm, L->ffn_gate.type, L->ffn_gate.d16 != NULL, ce->x, ce->xb, L->attn_post_norm,
                                  ce->xb, L->ffn_norm, T, E, hp->rms_eps),
              "residual");
        prof_mark(ce, CP_RESID);

        /* Gated feed-forward. */
        {
            const struct cu_tensor *w[2] = {&L->ffn_gate, &L->ffn_up};
            float *y[2] = {ce->ffg, ce->ffu};
            K_TRY(mm_same_x(ce, w, y, 2, ce->xb, T, true), "matmul gate/up");
        }
        prof_mark(ce, CP_MM_FFN);
        /* The activation, quantized for the down projection in the same launch. */
        K_TRY(kcu_matmul_glu(ce->mm, L->ffn_down.type, L->ffn_down.d16 != NULL, ce->ffg, ce->ffu, T, hp->n_ff,
                             hp->arch->act == MODEL_ACT_GELU),
              "glu");
        prof_mark(ce, CP_ACT);
        {
            const struct cu_tensor *w[1] = {&L->ffn_down};
            float *y[1] = {ce->xb};
            K_TRY(mm_same_x(ce, w, y, 1, ce->ffg, T, true), "matmul down");
        }
        prof_mark(ce, CP_MM_DOWN);
        /* The residual and the next layer's attention norm in one launch. */
        if (il + 1 < hp->n_layer)
            K_TRY(kcu_matmul_add_norm(ce->mm, ce->layers[il + 1].wq.type, ce->layers[il + 1].wq.d16 != NULL, ce->x,
                                      ce->xb, L->ffn_post_norm, ce->xb, ce->layers[il + 1].attn_norm, T, E,
                                      hp->rms_eps),
                  "residual");
        else
            K_TRY(kcu_add_norm(ce->st, ce->x, ce->xb, L->ffn_post_norm, NULL, NULL, T, E, hp->rms_eps), "residual");
        prof_mark(ce, CP_RESID);
    }
    if (n_want == 0)
        return 0;
    /* Final norm of the rows that want logits, the vocabulary projection. */
    K_TRY(kcu_rmsnorm(ce->st, ce->xb, ce->x, want_idx, ce->output_norm, n_want, E, hp->rms_eps), "rmsnorm");
    K_TRY(mm(ce, &ce->output, ce->xb, n_want, ce->logits_d), "matmul logits");
    if (hp->final_softcap > 0)
        K_TRY(kcu_softcap(ce->st, ce->logits_d, (int64_t)n_want * hp->n_vocab, hp->final_softcap), "softcap");
    prof_mark(ce, CP_LOGITS);
    return 0;
}

/* Why no GPU answers, in words a user can act on. */
static const char *no_gpu_reason(cudaError_t e)
{
    if (e == cudaErrorInsufficientDriver)
        return "no NVIDIA driver, or one older than this build's CUDA runtime";
    if (e == cudaErrorNoDevice || e == cudaSuccess)
        return "no CUDA device found";
    return cudaGetErrorString(e);
}

/* Replay the decode step's graph, capturing it first if need be. */
static int graph_run(struct cuda_engine *ce, cudaGraphExec_t *gx, int T, int n_seqs, int n_want, int stride,
                     struct lmd_err *err)
{
    if (!*gx) {
        cudaGraph_t g = NULL;
        CU_TRY(cudaStreamBeginCapture(ce->st, cudaStreamCaptureModeThreadLocal), "capturing a decode step");
        int rc = forward(ce, T, n_seqs, n_want, stride, err);
        cudaError_t e = cudaStreamEndCapture(ce->st, &g);
        if (rc) {
            if (g)
                cudaGraphDestroy(g);
            return rc;
        }
        if (e != cudaSuccess)
            return cu_fail(err, e, "capturing a decode step");
        e = cudaGraphInstantiate(gx, g, 0);
        cudaGraphDestroy(g);
        if (e != cudaSuccess) {
            *gx = NULL;
            return cu_fail(err, e, "instantiating a decode step's graph");
        }
        ce->graph_captures++;
    }
    CU_TRY(cudaGraphLaunch(*gx, ce->st), "replaying a decode step");
    ce->graph_launches++;
    return 0;
}

/* Block-table strides of captured graphs: powers of two from 16 blocks. */
#define GRAPH_STRIDES 20
static int stride_class(int stride, int *rounded)
{
    int c = 0, r = 16;
    while (r < stride) {
        r *= 2;
        c++;
    }
    *rounded = r;
    return c;
}

/* ---- sampling ------------------------------------------------------------- */

/* Stage the sampling of a step's n_want output rows at dst (int32
 * elements after the indices): room for n_want kcu_sample_row, the first
 * ones filled for the rows the device samples, then their bias and
 * penalty entries; the other rows go to the CPU. Takes each device row's
 * uniform from its sampler's RNG now, as sample_next would in wait (one
 * a draw, none when greedy). Returns the int32 elements written. */
static size_t stage_sampling(struct cuda_engine *ce, const struct engine_seq *seqs, int n_seqs, int n_want,
                             int32_t *dst)
{
    const int nv = ce->base.info.n_vocab;
    struct kcu_sample_row *rows = (struct kcu_sample_row *)dst;
    struct kcu_sample_edit *edits = (struct kcu_sample_edit *)(rows + n_want);
    int r = 0, n_dev = 0, n_edits = 0;
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        if (!s->want_logits)
            continue;
        struct sampler *smp = s->smp;
        struct cu_out *o = &ce->outs[r];
        *o = (struct cu_out){.smp = smp,
                             .n_logprobs = s->n_logprobs,
                             .out_lp = s->out_lp,
                             .out_top_id = s->out_top_id,
                             .out_top_lp = s->out_top_lp,
                             .dev = -1};
        const int need = smp->p.n_bias + (int)smp->used;
        if (!smp->gm && s->n_logprobs <= KCU_SAMPLE_TOP_MAX && need <= ce->edit_cap - n_edits) {
            const struct sample_params *p = &smp->p;
            struct kcu_sample_row *k = &rows[n_dev];
            *k = (struct kcu_sample_row){.u = p->temperature > 0.0f ? sample_uniform(smp) : 0.0,
                                         .row = r,
                                         .top_k = p->top_k,
                                         .temperature = p->temperature,
                                         .top_p = p->top_p,
                                         .min_p = p->min_p,
                                         .repetition_penalty = p->repetition_penalty,
                                         .presence_penalty = p->presence_penalty,
                                         .frequency_penalty = p->frequency_penalty,
                                         .edit0 = n_edits,
                                         .n_logprobs = s->n_logprobs};
            for (int b = 0; b < p->n_bias; b++)
                edits[n_edits++] = (struct kcu_sample_edit){smp->bias[b].token, smp->bias[b].bias};
            k->n_bias = p->n_bias;
            /* The penalty table as apply_penalties walks it; entries that
             * change nothing (no repetition penalty, not in the output)
             * are left out. */
            const bool rp = p->repetition_penalty != 1.0f;
            for (uint32_t h = 0; h < smp->cap; h++) {
                const int32_t t = smp->keys[h];
                if (t >= 0 && t < nv && (rp || smp->counts[h] > 0))
                    edits[n_edits++] = (struct kcu_sample_edit){t, (float)smp->counts[h]};
            }
            k->n_pen = n_edits - k->edit0 - k->n_bias;
            o->dev = n_dev++;
        }
        r++;
    }
    ce->n_dev_rows = n_dev;
    return ((size_t)n_want * sizeof(struct kcu_sample_row) + (size_t)n_edits * sizeof(struct kcu_sample_edit)) /
           sizeof(int32_t);
}

/* After the forward pass: the device rows sampled and their results
 * queued for the host; the logits rows of the CPU's rows copied. smp_d:
 * the staged rows on the device. Outside the decode graph: its
 * parameters and the number of rows change every step, and one launch
 * more costs microseconds. */
static int sample_rows(struct cuda_engine *ce, int n_want, const int32_t *smp_d, struct lmd_err *err)
{
    const int nv = ce->base.info.n_vocab;
    for (int r = 0; r < n_want; r++)
        if (ce->outs[r].dev < 0)
            CU_TRY(cudaMemcpyAsync(ce->logits_h + (size_t)r * nv, ce->logits_d + (size_t)r * nv,
                                   (size_t)nv * sizeof(float), cudaMemcpyDeviceToHost, ce->st),
                   "copying logits");
    const int n_dev = ce->n_dev_rows;
    if (n_dev == 0)
        return 0;
    const struct kcu_sample_row *rows = (const struct kcu_sample_row *)smp_d;
    const struct kcu_sample_edit *edits = (const struct kcu_sample_edit *)(rows + n_want);
    K_TRY(kcu_sample(ce->st, ce->logits_d, nv, rows, edits, n_dev, ce->sout_d, NULL), "sampling");
    prof_mark(ce, CP_SAMPLE);
    CU_TRY(cudaMemcpyAsync(ce->sout_h, ce->sout_d, (size_t)n_dev * sizeof *ce->sout_h, cudaMemcpyDeviceToHost, ce->st),
           "copying samples");
    return 0;
}

/* In wait, the step done: each row's token (the device's, or sampled here
 * from its logits row), its log-probabilities, and the sampler's history
 * (engine.h: the engine records the token it picks). */
static void collect_tokens(struct cuda_engine *ce)
{
    const int nv = ce->base.info.n_vocab;
    const uint64_t t0 = ce->profile ? lmd_time_mono_ns() : 0;
    for (int r = 0; r < ce->n_rows; r++) {
        const struct cu_out *o = &ce->outs[r];
        const int nt = o->n_logprobs;
        int32_t tok;
        if (o->dev >= 0) {
            const struct kcu_sample_out *so = &ce->sout_h[o->dev];
            tok = so->token;
            if (nt >= 0) {
                *o->out_lp = so->lp;
                for (int j = 0; j < nt; j++) {
                    o->out_top_id[j] = so->top_id[j];
                    o->out_top_lp[j] = so->top_lp[j];
                }
            }
            ce->rows_dev++;
        } else {
            float *row = ce->logits_h + (size_t)r * nv;
            tok = sample_next(o->smp, &ce->sc, row, nv);
            if (nt >= 0)
                *o->out_lp = sample_logprobs(row, nv, tok, nt, nt ? o->out_top_id : NULL, nt ? o->out_top_lp : NULL);
            ce->rows_cpu++;
        }
        sample_accept(o->smp, tok);
        ce->tokens[r] = tok;
    }
    if (ce->profile)
        ce->prof_ns[CP_SAMPLE_CPU] += lmd_time_mono_ns() - t0;
}

/* ---- engine ops ----------------------------------------------------------- */

static int cuda_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err)
{
    struct cuda_engine *ce = (struct cuda_engine *)e;
    const struct engine_info *in = &e->info;
    const int bt = in->kv_block_tokens;
    ce->rc = 0;
    ce->n_rows = 0;
    if (n_seqs > in->max_seqs)
        return lmd_err_set(err, LMD_EINVAL, "step: %d sequences exceed the engine's %d", n_seqs, in->max_seqs);
    int T = 0, n_want = 0, stride = 1;
    bool decode = ce->use_graphs;
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        if (s->pos < 0 || s->n_tokens <= 0 || s->pos > in->n_ctx - s->n_tokens)
            return lmd_err_set(err, LMD_EINVAL, "step: sequence %d: positions %d..%d outside the context of %d", i,
                               s->pos, s->pos + s->n_tokens - 1, in->n_ctx);
        if (s->n_tokens > in->max_batch_tokens - T)
            return lmd_err_set(err, LMD_EINVAL, "step: batch exceeds %d tokens per step", in->max_batch_tokens);
        if (ce->base.info.samples && s->want_logits && !s->smp)
            return lmd_err_set(err, LMD_EINVAL, "step: sequence %d wants a token but has no sampler", i);
        T += s->n_tokens;
        n_want += s->want_logits;
        decode = decode && s->n_tokens == 1 && s->want_logits;
        const int nb = (s->pos + s->n_tokens + bt - 1) / bt;
        if (nb > stride)
            stride = nb;
    }
    if (T == 0)
        return 0;
    cudaGraphExec_t *gx = NULL;
    if (decode) {
        int rounded;
        const int cls = stride_class(stride, &rounded);
        if (cls < GRAPH_STRIDES && (size_t)n_seqs * (1 + (size_t)rounded) + 3 * (size_t)T <= ce->meta_cap) {
            gx = &ce->graphs[(size_t)(n_seqs - 1) * GRAPH_STRIDES + (size_t)cls];
            stride = rounded;
        }
    }
    /* Stage the indices (see meta_h). */
    int32_t *tok = ce->meta_h, *pos = tok + T, *seq = pos + T, *want = seq + T, *blk = want + n_want;
    int t = 0, r = 0;
    for (int i = 0; i < n_seqs; i++) {
        const struct engine_seq *s = &seqs[i];
        for (int j = 0; j < s->n_tokens; j++, t++) {
            if (s->tokens[j] < 0 || s->tokens[j] >= in->n_vocab)
                return lmd_err_set(err, LMD_EINVAL, "step: token id %d out of range (vocabulary %d)", s->tokens[j],
                                   in->n_vocab);
            tok[t] = s->tokens[j];
            pos[t] = s->pos + j;
            seq[t] = i;
        }
        if (s->want_logits)
            want[r++] = t - 1;
        const int nb = (s->pos + s->n_tokens + bt - 1) / bt;
        for (int b = 0; b < nb; b++) {
            if (s->blocks[b] < 0 || s->blocks[b] >= in->kv_blocks)
                return lmd_err_set(err, LMD_EINVAL, "step: sequence %d: block %d of its table is %d (store of %d)", i,
                                   b, s->blocks[b], in->kv_blocks);
            blk[(size_t)i * (size_t)stride + (size_t)b] = s->blocks[b];
        }
    }
    size_t n_meta = (size_t)3 * (size_t)T + (size_t)n_want + (size_t)n_seqs * (size_t)stride;
    const size_t smp_off = (n_meta + 3) & ~(size_t)3; /* 16-byte aligned */
    if (in->samples && n_want > 0)
        n_meta = smp_off + stage_sampling(ce, seqs, n_seqs, n_want, ce->meta_h + smp_off);
    CU_TRY(cudaMemcpyAsync(ce->meta_d, ce->meta_h, n_meta * sizeof(int32_t), cudaMemcpyHostToDevice, ce->st),
           "copying the step's indices");
    if (ce->profile) {
        cudaStreamSynchronize(ce->st);
        ce->prof_t0 = lmd_time_mono_ns();
        ce->prof_steps++;
        ce->prof_tokens += (uint64_t)T;
    }
    if (gx)
        ce->rc = graph_run(ce, gx, T, n_seqs, n_want, stride, &ce->err);
    else
        ce->rc = forward(ce, T, n_seqs, n_want, stride, &ce->err);
    if (ce->rc == 0 && n_want > 0) {
        if (in->samples)
            ce->rc = sample_rows(ce, n_want, ce->meta_d + smp_off, &ce->err);
        else {
            cudaError_t rc = cudaMemcpyAsync(ce->logits_h, ce->logits_d, (size_t)n_want * in->n_vocab * sizeof(float),
                                             cudaMemcpyDeviceToHost, ce->st);
            if (rc != cudaSuccess)
                ce->rc = cu_fail(&ce->err, rc, "copying logits");
        }
    }
    if (ce->rc == 0) {
        cudaError_t rc = cudaEventRecord(ce->done, ce->st);
        if (rc != cudaSuccess)
            ce->rc = cu_fail(&ce->err, rc, "recording the step's end");
    }
    ce->n_rows = n_want;
    return 0;
}

static int cuda_wait(struct engine *e, struct engine_result *res, struct lmd_err *err)
{
    struct cuda_engine *ce = (struct cuda_engine *)e;
    int rc = ce->rc;
    if (rc == 0) {
        cudaError_t s = cudaEventSynchronize(ce->done);
        if (s == cudaSuccess)
            s = cudaGetLastError();
        if (s != cudaSuccess)
            rc = cu_fail(&ce->err, s, "running the step");
    }
    if (rc == 0 && e->info.samples)
        collect_tokens(ce);
    if (e->info.samples)
        *res = (struct engine_result){.n_rows = rc ? 0 : ce->n_rows, .tokens = ce->tokens};
    else
        *res = (struct engine_result){.n_rows = rc ? 0 : ce->n_rows, .logits = ce->logits_h};
    if (rc && err)
        *err = ce->err;
    return rc;
}

static void cuda_close(struct engine *e)
{
    struct cuda_engine *ce = (struct cuda_engine *)e;
    if (ce->st)
        cudaStreamSynchronize(ce->st);
    if (ce->profile)
        prof_report(ce);
    if (ce->graphs) {
        for (size_t i = 0; i < (size_t)ce->base.info.max_seqs * GRAPH_STRIDES; i++)
            if (ce->graphs[i])
                cudaGraphExecDestroy(ce->graphs[i]);
        LMD_DEBUG("cuda engine: %llu decode steps replayed from %llu graphs", (unsigned long long)ce->graph_launches,
                  (unsigned long long)ce->graph_captures);
        LMD_DEBUG("cuda engine: %llu rows sampled on the device, %llu on the CPU", (unsigned long long)ce->rows_dev,
                  (unsigned long long)ce->rows_cpu);
        free(ce->graphs);
    }
    kcu_ctx_free(ce->mm);
    cudaFree(ce->wbuf);
    cudaFree(ce->w16buf);
    cudaFree(ce->kc);
    cudaFree(ce->vc);
    float *acts[] = {ce->x, ce->xb, ce->q, ce->k, ce->v, ce->att, ce->ffg, ce->ffu, ce->logits_d, ce->attn_part};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        cudaFree(acts[i]);
    cudaFree(ce->attn_count);
    cudaFree(ce->meta_d);
    cudaFreeHost(ce->meta_h);
    cudaFreeHost(ce->logits_h);
    cudaFree(ce->sout_d);
    cudaFreeHost(ce->sout_h);
    free(ce->outs);
    free(ce->tokens);
    sample_scratch_free(&ce->sc);
    if (ce->done)
        cudaEventDestroy(ce->done);
    if (ce->st)
        cudaStreamDestroy(ce->st);
    free(ce->layers);
    model_free(ce->model);
    free(ce);
}

static const struct engine_ops cuda_ops = {.launch = cuda_launch, .wait = cuda_wait, .close = cuda_close};

int engine_cuda_devices(char *buf, size_t cap)
{
    int n = 0;
    buf[0] = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(buf, cap, "none (%s)", no_gpu_reason(e));
        return 0;
    }
    size_t used = 0;
    for (int i = 0; i < n && used < cap; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess)
            continue;
        used += (size_t)snprintf(buf + used, cap - used, "%scuda:%d %s (sm_%d%d, %.0f GiB)", i ? ", " : "", i, p.name,
                                 p.major, p.minor, (double)p.totalGlobalMem / (double)(1u << 30));
    }
    if (n == 0)
        snprintf(buf, cap, "none");
    return n;
}

static int alloc_acts(struct cuda_engine *ce, struct lmd_err *err)
{
    const struct model_hparams *hp = &ce->model->hp;
    const struct engine_info *in = &ce->base.info;
    const size_t T = (size_t)in->max_batch_tokens, f = sizeof(float);
    const size_t qd = (size_t)hp->n_head * hp->head_dim_k, kd = (size_t)hp->n_head_kv * hp->head_dim_k;
    const size_t vd = (size_t)hp->n_head_kv * hp->head_dim_v, od = (size_t)hp->n_head * hp->head_dim_v;
    const size_t xb_rows = T > (size_t)in->max_seqs ? T : (size_t)in->max_seqs;
    CU_TRY(cudaMalloc((void **)&ce->x, T * hp->n_embd * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->xb, xb_rows * hp->n_embd * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->q, T * qd * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->k, T * kd * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->v, T * vd * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->att, T * od * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->ffg, T * hp->n_ff * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->ffu, T * hp->n_ff * f), "allocating activations");
    CU_TRY(cudaMalloc((void **)&ce->attn_part, kcu_attn_scratch_bytes(hp->n_head, hp->head_dim_v)),
           "allocating attention scratch");
    CU_TRY(cudaMalloc((void **)&ce->attn_count, (size_t)KCU_ATTN_TILE_T * hp->n_head * sizeof(int)),
           "allocating attention scratch");
    CU_TRY(cudaMemset(ce->attn_count, 0, (size_t)KCU_ATTN_TILE_T * hp->n_head * sizeof(int)),
           "allocating attention scratch");
    CU_TRY(cudaMalloc((void **)&ce->logits_d, (size_t)in->max_seqs * hp->n_vocab * f), "allocating logits");
    CU_TRY(cudaMallocHost((void **)&ce->logits_h, (size_t)in->max_seqs * hp->n_vocab * f), "allocating logits");
    /* Block tables of decode graphs are padded to a power of two (graph_run). */
    ce->meta_cap = 3 * T + (size_t)in->max_seqs * (1 + 2 * (size_t)ce->max_blocks);
    if (in->samples) {
        /* The sampling rows and edits after the indices (16-byte aligned). */
        ce->edit_cap = in->max_seqs * CU_EDITS_PER_SEQ;
        ce->smp_cap = 4 + ((size_t)in->max_seqs * sizeof(struct kcu_sample_row) +
                           (size_t)ce->edit_cap * sizeof(struct kcu_sample_edit)) /
                              sizeof(int32_t);
        CU_TRY(cudaMalloc((void **)&ce->sout_d, (size_t)in->max_seqs * sizeof *ce->sout_d), "allocating samples");
        CU_TRY(cudaMallocHost((void **)&ce->sout_h, (size_t)in->max_seqs * sizeof *ce->sout_h), "allocating samples");
        ce->outs = calloc((size_t)in->max_seqs, sizeof *ce->outs);
        ce->tokens = calloc((size_t)in->max_seqs, sizeof *ce->tokens);
        if (!ce->outs || !ce->tokens)
            return lmd_err_set(err, LMD_ENOMEM, "out of memory");
        int rc = sample_scratch_init(&ce->sc, hp->n_vocab, err);
        if (rc)
            return rc;
    }
    CU_TRY(cudaMalloc((void **)&ce->meta_d, (ce->meta_cap + ce->smp_cap) * sizeof(int32_t)), "allocating step indices");
    CU_TRY(cudaMallocHost((void **)&ce->meta_h, (ce->meta_cap + ce->smp_cap) * sizeof(int32_t)),
           "allocating step indices");
    int64_t max_k = hp->n_embd;
    if (hp->n_ff > max_k)
        max_k = hp->n_ff;
    if ((int64_t)od > max_k)
        max_k = (int64_t)od;
    const int64_t max_m = (int64_t)xb_rows;
    CU_TRY(kcu_ctx_create(&ce->mm, ce->st, max_k, max_m, 0), "creating the matmul context");
    return 0;
}

int engine_cuda_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return lmd_err_set(err, LMD_ENOTSUP, "cuda: no usable GPU (%s); run on the CPU with --device cpu",
                           no_gpu_reason(e));
    if (cfg->gpu < 0 || cfg->gpu >= n_dev)
        return lmd_err_set(err, LMD_EINVAL, "cuda: there is no GPU %d (this machine has %d)", cfg->gpu, n_dev);
    struct cuda_engine *ce = calloc(1, sizeof *ce);
    if (!ce)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    ce->base.ops = &cuda_ops;
    ce->device = cfg->gpu;
    int rc = model_load(&ce->model, cfg->model_path, err);
    if (rc) {
        free(ce);
        return rc;
    }
    const struct model_hparams *hp = &ce->model->hp;
    struct engine_info *in = &ce->base.info;
    in->kind = "cuda";
    in->model_name = ce->model->name;
    in->arch = hp->arch->name;
    in->n_vocab = hp->n_vocab;
    in->n_ctx = cfg->n_ctx > 0 && cfg->n_ctx < hp->n_ctx_train ? cfg->n_ctx : hp->n_ctx_train;
    in->max_batch_tokens = cfg->max_batch_tokens > 0 ? cfg->max_batch_tokens : 512;
    in->max_seqs = cfg->max_seqs > 0 ? cfg->max_seqs : 64;
    in->n_threads = 1;
    in->gguf = ce->model->gguf;
    const char *se = getenv("LMD_CUDA_SAMPLE");
    in->samples = !cfg->logits_out && !(se && strcmp(se, "0") == 0);
    const int bt = cfg->kv_block_tokens > 0 ? cfg->kv_block_tokens : 16;
    in->kv_block_tokens = bt;
    ce->max_blocks = (in->n_ctx + bt - 1) / bt;
    /* The RoPE angle ratios, computed here as the CPU engine computes them
     * (ops_rope_cache), so both advance the same angles. */
    ce->theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
    ce->theta_scale_swa = powf(hp->rope_base_swa, -2.0f / (float)hp->n_rot);

    if (hp->head_dim_k != hp->head_dim_v || (hp->head_dim_k != 64 && hp->head_dim_k != 128 && hp->head_dim_k != 256)) {
        rc = lmd_err_set(err, LMD_ENOTSUP, "cuda: head dimensions %d/%d: the attention kernel takes 64, 128 or 256",
                         hp->head_dim_k, hp->head_dim_v);
        goto fail;
    }
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(cfg->gpu)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, cfg->gpu)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&ce->st, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&ce->done, cudaEventBlockingSync | cudaEventDisableTiming)) != cudaSuccess) {
        rc = cu_fail(err, e, "opening the GPU");
        goto fail;
    }
    snprintf(ce->device_name, sizeof ce->device_name, "%s", prop.name);
    ce->layers = calloc((size_t)hp->n_layer, sizeof *ce->layers);
    ce->graphs = calloc((size_t)in->max_seqs * GRAPH_STRIDES, sizeof *ce->graphs);
    const char *ge = getenv("LMD_CUDA_GRAPHS");
    const char *pe = getenv("LMD_PROFILE");
    ce->profile = pe && *pe && strcmp(pe, "0") != 0;
    ce->use_graphs = !(ge && strcmp(ge, "0") == 0) && !ce->profile;
    if (!ce->layers || !ce->graphs) {
        rc = lmd_err_set(err, LMD_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = weights_upload(ce, err)) || (rc = alloc_acts(ce, err)))
        goto fail;

    /* K/V blocks: as many as asked, else enough for every sequence at full
     * context, within what the GPU has free (less a margin for cuBLAS's
     * workspace and the driver). */
    const size_t block_bytes = model_kv_block_bytes(ce->model, bt);
    ce->block_k_elems = (size_t)hp->n_layer * hp->n_head_kv * (size_t)bt * hp->head_dim_k;
    ce->block_v_elems = (size_t)hp->n_layer * hp->n_head_kv * (size_t)bt * hp->head_dim_v;
    int n_blocks;
    if (cfg->kv_blocks > 0) {
        n_blocks = cfg->kv_blocks;
    } else {
        size_t free_b = 0, total_b = 0;
        if ((e = cudaMemGetInfo(&free_b, &total_b)) != cudaSuccess) {
            rc = cu_fail(err, e, "reading free memory");
            goto fail;
        }
        const size_t margin = ((size_t)1 << 30) + total_b / 20;
        size_t cap = free_b > margin ? free_b - margin : 0;
        if (cfg->kv_max_bytes && cfg->kv_max_bytes < cap)
            cap = cfg->kv_max_bytes;
        const size_t want = (size_t)ce->max_blocks * (size_t)in->max_seqs, fit = cap / block_bytes;
        n_blocks = (int)(want < fit ? want : fit);
        if (n_blocks < ce->max_blocks) {
            rc = lmd_err_set(err, LMD_ENOMEM,
                             "cuda: %zu MiB free after the weights: not enough K/V for one sequence of %d tokens "
                             "(%d blocks of %zu KiB); lower --ctx",
                             free_b >> 20, in->n_ctx, ce->max_blocks, block_bytes >> 10);
            goto fail;
        }
    }
    const size_t kbytes = (size_t)n_blocks * ce->block_k_elems * 2, vbytes = (size_t)n_blocks * ce->block_v_elems * 2;
    if ((e = cudaMalloc((void **)&ce->kc, kbytes)) != cudaSuccess ||
        (e = cudaMalloc((void **)&ce->vc, vbytes)) != cudaSuccess) {
        rc = cu_fail(err, e, "allocating the K/V blocks");
        goto fail;
    }
    in->kv_blocks = n_blocks;
    in->kv_block_bytes = block_bytes;
    if ((rc = f16_copies(ce, err)))
        goto fail;
    LMD_INFO("cuda engine: %s (%s) on GPU %d (%s): %d layers, ctx %d, weights %zu MiB (f16 copies %zu MiB), kv %d "
             "blocks x %d tokens (%zu MiB), scratch %zu MiB",
             in->model_name, in->arch, cfg->gpu, ce->device_name, hp->n_layer, in->n_ctx, ce->wbytes >> 20,
             ce->w16bytes >> 20, n_blocks, bt, (kbytes + vbytes) >> 20, kcu_ctx_bytes(ce->mm) >> 20);
    *out = &ce->base;
    return 0;
fail:
    cuda_close(&ce->base);
    return rc;
}
