/*
 * The forward pass over a ragged batch (see model.h), one function reading
 * top to bottom as the maths. Architecture differences are the traits in
 * struct model_arch, tested inline.
 *
 * Rows of every activation matrix are tokens: all tokens of all sequences in
 * the step are concatenated, so each weight matrix is streamed once per
 * step whatever the mix of prefill chunks and decodes. Only attention looks
 * at which sequence a token belongs to.
 */
#include "model/model.h"

#include "core/time.h"
#include "kernels/kernels.h"
#include "model/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kinds of work a step is made of, for the stage timers. */
enum prof_op {
    PROF_EMBED,   /* embeddings and RoPE tables */
    PROF_NORM,    /* RMS norms of the residual stream */
    PROF_MM_QKV,  /* Q, K, V projections (with biases) */
    PROF_ROPE_KV, /* per-head norms, RoPE, K/V into the cache */
    PROF_ATTN,    /* attention proper */
    PROF_MM_O,    /* output projection */
    PROF_RESID,   /* post-norms and residual adds */
    PROF_MM_FFN,  /* gate and up projections */
    PROF_ACT,     /* GEGLU / SwiGLU */
    PROF_MM_DOWN, /* down projection */
    PROF_LOGITS,  /* final norm, vocabulary projection, softcap */
    PROF_COUNT
};
static const char *const prof_names[PROF_COUNT] = {
    "embed+rope tables", "rmsnorm",        "matmul q/k/v", "qk-norm+rope+kv", "attention", "matmul o",
    "residual",          "matmul gate/up", "geglu/swiglu", "matmul down",     "logits"};

/* Queries an attention work item aims at: the query heads of one KV head
 * times consecutive tokens of one sequence, so that each key/value row is
 * loaded once for all of them (GQA heads see the same rows; neighbouring
 * tokens see nearly the same). 16 queries of 256 f32 are 16 KiB. */
#define ATTN_QUERIES 16

/* One attention work item: tokens [t0, t1) of sequence seq (consecutive
 * positions), query heads [g0, g1) of the group of KV head kvh. */
struct attn_item {
    int32_t seq, t0, t1, kvh, g0, g1;
};

struct model_scratch {
    int max_tokens; /* tokens per step */
    int max_logits; /* logit rows per step */
    int n_threads;
    int max_ctx;      /* positions one sequence may attend to */
    float *x;         /* [max_tokens][n_embd] residual stream */
    float *xb;        /* [max_tokens][n_embd] normed input / sublayer output */
    float *q;         /* [max_tokens][n_head * head_dim_k] */
    float *k;         /* [max_tokens][n_head_kv * head_dim_k] */
    float *v;         /* [max_tokens][n_head_kv * head_dim_v] */
    float *att;       /* [max_tokens][n_head * head_dim_v] */
    float *ffg;       /* [max_tokens][n_ff] */
    float *ffu;       /* [max_tokens][n_ff] */
    float *rope;      /* [max_tokens][n_rot] cos/sin, global base */
    float *rope_swa;  /* [max_tokens][n_rot] cos/sin, sliding-window base */
    int32_t *tok_seq; /* [max_tokens] index of each token's sequence */
    int32_t *tok_pos; /* [max_tokens] position of each token */
    void *mm;         /* matmul scratch (quantized activations) */
    size_t mm_bytes;
    /* Attention work items of the current step: [max_tokens * n_head] at
     * most (one token and one head each). */
    struct attn_item *att_items;
    int att_qmax; /* queries per item at most */
    /* per-thread attention scratch */
    float *att_work;        /* [n_threads][ops_attend_group_work(att_qmax, max_ctx, head_dim_k)] */
    size_t att_work_floats; /* per thread */
    uint16_t *att_q16;      /* [n_threads][att_qmax][head_dim_k] */
    float **att_out;        /* [n_threads][att_qmax] output rows */
    int *att_lohi;          /* [n_threads][2][att_qmax] key ranges */
    const uint16_t **att_k; /* [n_threads][max_ctx] */
    const uint16_t **att_v; /* [n_threads][max_ctx] */
    /* Stage timers (LMD_PROFILE=1): wall time per kind of op, summed over
     * steps, and the tokens those steps carried. Printed by
     * model_scratch_free. */
    bool profile;
    uint64_t prof_ns[PROF_COUNT]; /* ns */
    uint64_t prof_calls[PROF_COUNT];
    uint64_t prof_tokens; /* tokens over all profiled steps */
    uint64_t prof_steps;
};

static void prof_report(const struct model_scratch *s)
{
    uint64_t total = 0;
    for (int i = 0; i < PROF_COUNT; i++)
        total += s->prof_ns[i];
    if (total == 0)
        return;
    fprintf(stderr, "profile: %llu steps, %llu tokens, %d threads, %.3f s in the forward pass\n",
            (unsigned long long)s->prof_steps, (unsigned long long)s->prof_tokens, s->n_threads, (double)total / 1e9);
    for (int i = 0; i < PROF_COUNT; i++)
        fprintf(stderr, "profile: %-18s %6.1f %%  %9.3f ms  %8.2f us/token\n", prof_names[i],
                100.0 * (double)s->prof_ns[i] / (double)total, (double)s->prof_ns[i] / 1e6,
                s->prof_tokens ? (double)s->prof_ns[i] / 1e3 / (double)s->prof_tokens : 0.0);
}

void model_scratch_free(struct model_scratch *s)
{
    if (!s)
        return;
    if (s->profile)
        prof_report(s);
    free(s->x);
    free(s->xb);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->ffg);
    free(s->ffu);
    free(s->rope);
    free(s->rope_swa);
    free(s->tok_seq);
    free(s->tok_pos);
    free(s->mm);
    free(s->att_items);
    free(s->att_work);
    free(s->att_q16);
    free(s->att_out);
    free(s->att_lohi);
    free(s->att_k);
    free(s->att_v);
    free(s);
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static size_t mm_need(const struct model_tensor *t, int m)
{
    return t->data ? kern_matmul_scratch_bytes(t->type, t->n_cols, m) : 0;
}

int model_scratch_create(struct model_scratch **out, const struct model *m, int max_tokens, int max_logits,
                         int n_threads, struct lmd_err *err)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (max_tokens <= 0 || max_logits <= 0 || n_threads <= 0)
        return lmd_err_set(err, LMD_EINVAL, "model scratch: sizes must be positive");
    struct model_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    s->max_tokens = max_tokens;
    s->max_logits = max_logits;
    s->n_threads = n_threads;
    s->max_ctx = hp->n_ctx_train;
    const char *pe = getenv("LMD_PROFILE");
    s->profile = pe && *pe && strcmp(pe, "0") != 0;
    size_t T = (size_t)max_tokens;
    size_t qd = (size_t)hp->n_head * (size_t)hp->head_dim_k, kd = (size_t)hp->n_head_kv * (size_t)hp->head_dim_k;
    size_t vd = (size_t)hp->n_head_kv * (size_t)hp->head_dim_v, od = (size_t)hp->n_head * (size_t)hp->head_dim_v;
    s->x = malloc(T * (size_t)hp->n_embd * sizeof(float));
    s->xb = malloc(max_sz(T, 1) * (size_t)hp->n_embd * sizeof(float));
    s->q = malloc(T * qd * sizeof(float));
    s->k = malloc(T * kd * sizeof(float));
    s->v = malloc(T * vd * sizeof(float));
    s->att = malloc(T * od * sizeof(float));
    s->ffg = malloc(T * (size_t)hp->n_ff * sizeof(float));
    s->ffu = malloc(T * (size_t)hp->n_ff * sizeof(float));
    s->rope = malloc(T * (size_t)hp->n_rot * sizeof(float));
    s->rope_swa = malloc(T * (size_t)hp->n_rot * sizeof(float));
    s->tok_seq = malloc(T * sizeof(int32_t));
    s->tok_pos = malloc(T * sizeof(int32_t));
    size_t mm = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        mm = max_sz(mm, mm_need(&L->wq, max_tokens));
        mm = max_sz(mm, mm_need(&L->wk, max_tokens));
        mm = max_sz(mm, mm_need(&L->wv, max_tokens));
        mm = max_sz(mm, mm_need(&L->wo, max_tokens));
        mm = max_sz(mm, mm_need(&L->ffn_gate, max_tokens));
        mm = max_sz(mm, mm_need(&L->ffn_up, max_tokens));
        mm = max_sz(mm, mm_need(&L->ffn_down, max_tokens));
    }
    mm = max_sz(mm, mm_need(&m->output, max_logits));
    s->mm_bytes = mm;
    s->mm = aligned_alloc(64, (mm + 63) & ~(size_t)63);
    size_t nt = (size_t)n_threads, ctx = (size_t)s->max_ctx;
    const int group = hp->n_head / hp->n_head_kv;
    s->att_qmax = group > ATTN_QUERIES ? group : ATTN_QUERIES;
    const size_t qmax = (size_t)s->att_qmax;
    s->att_items = malloc(T * (size_t)hp->n_head * sizeof *s->att_items);
    s->att_work_floats = ops_attend_group_work(s->att_qmax, s->max_ctx, hp->head_dim_k);
    s->att_work = malloc(nt * s->att_work_floats * sizeof(float));
    s->att_q16 = malloc(nt * qmax * (size_t)hp->head_dim_k * sizeof(uint16_t));
    s->att_out = malloc(nt * qmax * sizeof(*s->att_out));
    s->att_lohi = malloc(nt * 2 * qmax * sizeof(int));
    s->att_k = malloc(nt * ctx * sizeof(*s->att_k));
    s->att_v = malloc(nt * ctx * sizeof(*s->att_v));
    if (!s->x || !s->xb || !s->q || !s->k || !s->v || !s->att || !s->ffg || !s->ffu || !s->rope || !s->rope_swa ||
        !s->tok_seq || !s->tok_pos || !s->mm || !s->att_items || !s->att_work || !s->att_q16 || !s->att_out ||
        !s->att_lohi || !s->att_k || !s->att_v) {
        model_scratch_free(s);
        return lmd_err_set(err, LMD_ENOMEM, "model scratch: out of memory for %d tokens per step", max_tokens);
    }
    *out = s;
    return 0;
}

/* ---- parallel pieces ---------------------------------------------------- */

struct attn_job {
    const struct model *m;
    struct model_scratch *s;
    const struct model_kv *kv;
    const struct model_seq *seqs;
    int layer;
};

/* Split the step's attention into work items (struct attn_item): as many
 * queries per item as ATTN_QUERIES asks, but at least one item per thread,
 * halving the tokens per item, then the heads per item, until there are
 * enough. Returns the item count. How the queries are grouped changes no
 * bit of any result (ops_attend_group), only the speed. */
static int attn_plan(struct model_scratch *s, const struct model_hparams *hp, const struct model_seq *seqs, int n_seqs,
                     int n_threads)
{
    const int group = hp->n_head / hp->n_head_kv;
    int tq = group >= ATTN_QUERIES ? 1 : ATTN_QUERIES / group, hg = group;
    for (;;) {
        int64_t count = 0;
        for (int i = 0; i < n_seqs; i++)
            count += (int64_t)((seqs[i].n_tokens + tq - 1) / tq) * hp->n_head_kv * (group / hg);
        if (count >= n_threads || (tq == 1 && hg == 1))
            break;
        if (tq > 1)
            tq /= 2;
        else
            hg = hg % 2 == 0 ? hg / 2 : 1;
    }
    int n = 0, t = 0;
    for (int i = 0; i < n_seqs; i++) {
        const int t_end = t + seqs[i].n_tokens;
        for (int t0 = t; t0 < t_end; t0 += tq) {
            const int t1 = t0 + tq < t_end ? t0 + tq : t_end;
            for (int kvh = 0; kvh < hp->n_head_kv; kvh++)
                for (int g0 = 0; g0 < group; g0 += hg)
                    s->att_items[n++] =
                        (struct attn_item){.seq = i, .t0 = t0, .t1 = t1, .kvh = kvh, .g0 = g0, .g1 = g0 + hg};
        }
        t = t_end;
    }
    return n;
}

static void attn_task(void *ctx, int64_t begin, int64_t end, int tid)
{
    const struct attn_job *J = ctx;
    const struct model_hparams *hp = &J->m->hp;
    struct model_scratch *s = J->s;
    const int n_head = hp->n_head, dk = hp->head_dim_k, dv = hp->head_dim_v;
    const int group = hp->n_head / hp->n_head_kv;
    const int bt = J->kv->block_tokens;
    const bool swa = hp->layer_swa[J->layer];
    const float scale = hp->arch->q_prescale ? 1.0f : hp->attn_scale;
    const size_t qmax = (size_t)s->att_qmax;
    float *work = s->att_work + (size_t)tid * s->att_work_floats;
    uint16_t *q16 = s->att_q16 + (size_t)tid * qmax * (size_t)dk;
    float **out = s->att_out + (size_t)tid * qmax;
    int *lo = s->att_lohi + (size_t)tid * 2 * qmax, *hi = lo + qmax;
    const uint16_t **kp = s->att_k + (size_t)tid * (size_t)s->max_ctx;
    const uint16_t **vp = s->att_v + (size_t)tid * (size_t)s->max_ctx;
    for (int64_t task = begin; task < end; task++) {
        const struct attn_item *it = &s->att_items[task];
        const struct model_seq *sq = &J->seqs[it->seq];
        /* Causal: a token at pos sees positions [0, pos]; sliding layers
         * the last n_swa of them. The item's tokens have consecutive
         * positions, so their ranges together are [first of the first,
         * pos of the last]: one list of rows for all. */
        const int pos0 = s->tok_pos[it->t0], pos1 = s->tok_pos[it->t1 - 1];
        const int base = swa && pos0 - hp->n_swa + 1 > 0 ? pos0 - hp->n_swa + 1 : 0;
        const int span = pos1 + 1 - base;
        for (int j = 0; j < span; j++) {
            const int p = base + j;
            const int32_t blk = sq->blocks[p / bt];
            kp[j] = model_kv_k_at(J->kv, blk, J->layer, it->kvh, p % bt);
            vp[j] = model_kv_v_at(J->kv, blk, J->layer, it->kvh, p % bt);
        }
        LMD_ASSERT((it->t1 - it->t0) * (it->g1 - it->g0) <= s->att_qmax, "attention item larger than its scratch");
        int nq = 0;
        for (int t = it->t0; t < it->t1; t++) {
            const int pos = s->tok_pos[t];
            const int first = swa && pos - hp->n_swa + 1 > 0 ? pos - hp->n_swa + 1 : 0;
            for (int g = it->g0; g < it->g1; g++, nq++) {
                const size_t row = (size_t)t * (size_t)n_head + (size_t)(it->kvh * group + g);
                const float *q = s->q + row * (size_t)dk;
                for (int d = 0; d < dk; d++)
                    q16[(size_t)nq * dk + d] = kern_f32_to_f16(q[d]);
                out[nq] = s->att + row * (size_t)dv;
                lo[nq] = first - base;
                hi[nq] = pos + 1 - base;
            }
        }
        ops_attend_group(out, q16, nq, lo, hi, kp, vp, span, dk, dv, scale, work);
    }
}

/* ---- per-token pieces ---------------------------------------------------
 *
 * Everything between the matmuls works on each token's row alone, so it is
 * split over the pool by tokens. In prefill these loops would otherwise run
 * on one thread while the others wait: at 16 threads a serial 3 % of the
 * work costs a third of the step.
 */

enum tok_stage {
    TOK_EMBED,     /* embedding rows and RoPE tables */
    TOK_ATTN_NORM, /* xb = rmsnorm(x) * attn_norm */
    TOK_ROPE_KV,   /* biases, per-head norms, RoPE, Q scaling, K/V into the cache */
    TOK_ATTN_OUT,  /* x += post_norm(xb) */
    TOK_FFN_NORM,  /* xb = rmsnorm(x) * ffn_norm */
    TOK_ACT,       /* ffg = act(ffg) * ffu */
    TOK_FFN_OUT,   /* x += post_norm(xb) */
};

struct tok_job {
    enum tok_stage stage;
    const struct model *m;
    struct model_scratch *s;
    const struct model_kv *kv;
    const struct model_seq *seqs;
    int layer;
};

static void tok_task(void *ctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct tok_job *J = ctx;
    const struct model *m = J->m;
    const struct model_hparams *hp = &m->hp;
    struct model_scratch *s = J->s;
    const struct model_layer *L = J->layer >= 0 ? &m->layers[J->layer] : NULL;
    const int E = hp->n_embd, H = hp->n_head, HKV = hp->n_head_kv, DK = hp->head_dim_k, DV = hp->head_dim_v;
    for (int64_t ti = begin; ti < end; ti++) {
        const int t = (int)ti;
        float *x = s->x + (size_t)t * (size_t)E, *xb = s->xb + (size_t)t * (size_t)E;
        switch (J->stage) {
        case TOK_EMBED: {
            const struct model_seq *sq = &J->seqs[s->tok_seq[t]];
            const int32_t id = sq->tokens[s->tok_pos[t] - sq->pos];
            kern_dequant_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)id * m->tok_embd.row_bytes,
                             x, E);
            if (hp->arch->embd_scale) {
                const float escale = sqrtf((float)E);
                for (int i = 0; i < E; i++)
                    x[i] *= escale;
            }
            ops_rope_cache(s->rope + (size_t)t * (size_t)hp->n_rot, s->tok_pos[t], hp->n_rot, hp->rope_base,
                           hp->rope_freq_scale, m->rope_freqs);
            if (hp->n_swa > 0)
                ops_rope_cache(s->rope_swa + (size_t)t * (size_t)hp->n_rot, s->tok_pos[t], hp->n_rot, hp->rope_base_swa,
                               1.0f, NULL);
            break;
        }
        case TOK_ATTN_NORM:
            ops_rmsnorm(xb, x, L->attn_norm, E, hp->rms_eps);
            break;
        case TOK_FFN_NORM:
            ops_rmsnorm(xb, x, L->ffn_norm, E, hp->rms_eps);
            break;
        case TOK_ROPE_KV: {
            const float *cs = (hp->layer_swa[J->layer] ? s->rope_swa : s->rope) + (size_t)t * (size_t)hp->n_rot;
            const int bt = J->kv->block_tokens;
            float *qt = s->q + (size_t)t * (size_t)H * (size_t)DK;
            float *kt = s->k + (size_t)t * (size_t)HKV * (size_t)DK;
            float *vt = s->v + (size_t)t * (size_t)HKV * (size_t)DV;
            if (L->bq)
                for (int i = 0; i < H * DK; i++)
                    qt[i] += L->bq[i];
            if (L->bk)
                for (int i = 0; i < HKV * DK; i++)
                    kt[i] += L->bk[i];
            if (L->bv)
                for (int i = 0; i < HKV * DV; i++)
                    vt[i] += L->bv[i];
            for (int h = 0; h < H; h++) {
                float *q = qt + (size_t)h * (size_t)DK;
                if (L->q_norm)
                    ops_rmsnorm(q, q, L->q_norm, DK, hp->rms_eps);
                ops_rope_apply(q, cs, hp->n_rot, hp->arch->rope == MODEL_ROPE_NEOX);
                if (hp->arch->q_prescale)
                    for (int d = 0; d < DK; d++)
                        q[d] *= hp->attn_scale;
            }
            const struct model_seq *sq = &J->seqs[s->tok_seq[t]];
            const int pos = s->tok_pos[t];
            const int32_t blk = sq->blocks[pos / bt];
            for (int h = 0; h < HKV; h++) {
                float *k = kt + (size_t)h * (size_t)DK;
                if (L->k_norm)
                    ops_rmsnorm(k, k, L->k_norm, DK, hp->rms_eps);
                ops_rope_apply(k, cs, hp->n_rot, hp->arch->rope == MODEL_ROPE_NEOX);
                uint16_t *kc = model_kv_k_at(J->kv, blk, J->layer, h, pos % bt);
                for (int d = 0; d < DK; d++)
                    kc[d] = kern_f32_to_f16(k[d]);
                const float *v = vt + (size_t)h * (size_t)DV;
                uint16_t *vc = model_kv_v_at(J->kv, blk, J->layer, h, pos % bt);
                for (int d = 0; d < DV; d++)
                    vc[d] = kern_f32_to_f16(v[d]);
            }
            break;
        }
        case TOK_ATTN_OUT:
        case TOK_FFN_OUT: {
            const float *pn = J->stage == TOK_ATTN_OUT ? L->attn_post_norm : L->ffn_post_norm;
            if (pn)
                ops_rmsnorm(xb, xb, pn, E, hp->rms_eps);
            for (int i = 0; i < E; i++)
                x[i] += xb[i];
            break;
        }
        case TOK_ACT: {
            float *g = s->ffg + (size_t)t * (size_t)hp->n_ff;
            const float *u = s->ffu + (size_t)t * (size_t)hp->n_ff;
            if (hp->arch->act == MODEL_ACT_GELU)
                ops_geglu(g, u, hp->n_ff);
            else
                ops_swiglu(g, u, hp->n_ff);
            break;
        }
        }
    }
}

/* Run one per-token stage over the step's T tokens: on the pool when there
 * is enough work to pay for the hand-off (a few microseconds), inline for a
 * decode step of a few tokens. */
static void run_tokens(struct lmd_pool *pool, struct tok_job *job, enum tok_stage stage, int T)
{
    job->stage = stage;
    if (T >= 4)
        lmd_pool_for(pool, T, 1, tok_task, job);
    else
        tok_task(job, 0, T, 0);
}

/* Stage timer: charge the time since *t0 to op, restart the clock. */
static inline void prof_mark(struct model_scratch *s, enum prof_op op, uint64_t *t0)
{
    if (!s->profile)
        return;
    uint64_t now = lmd_time_mono_ns();
    s->prof_ns[op] += now - *t0;
    s->prof_calls[op]++;
    *t0 = now;
}

/* ---- the forward pass --------------------------------------------------- */

static void matmul(struct lmd_pool *pool, struct model_scratch *s, const struct model_tensor *w, const float *x, int m,
                   float *y)
{
    kern_matmul_packed(pool, w->type, w->data, w->row_bytes, w->packed, w->n_rows, w->n_cols, x, m, y, w->n_rows,
                       s->mm);
}

int model_forward(const struct model *m, struct model_scratch *s, struct lmd_pool *pool, const struct model_kv *kv,
                  const struct model_seq *seqs, int n_seqs, float *logits, struct lmd_err *err)
{
    const struct model_hparams *hp = &m->hp;
    const int E = hp->n_embd;
    const int bt = kv->block_tokens;

    /* Flatten the batch and check it against the scratch and the cache. */
    int T = 0, n_want = 0, n_pool = 0;
    for (int i = 0; i < n_seqs; i++) {
        const struct model_seq *sq = &seqs[i];
        if (sq->n_tokens <= 0 || sq->pos < 0 || sq->pos > s->max_ctx - sq->n_tokens)
            return lmd_err_set(err, LMD_EINVAL, "forward: sequence %d: positions %d..%d outside the context of %d", i,
                               sq->pos, sq->pos + sq->n_tokens - 1, s->max_ctx);
        if (sq->n_tokens > s->max_tokens - T)
            return lmd_err_set(err, LMD_EINVAL, "forward: batch exceeds %d tokens per step", s->max_tokens);
        for (int b = 0; b < (sq->pos + sq->n_tokens + bt - 1) / bt; b++)
            if (sq->blocks[b] < 0 || sq->blocks[b] >= kv->n_blocks)
                return lmd_err_set(err, LMD_EINVAL, "forward: sequence %d: block %d of its table is %d (store of %d)",
                                   i, b, sq->blocks[b], kv->n_blocks);
        for (int j = 0; j < sq->n_tokens; j++) {
            if (sq->tokens[j] < 0 || sq->tokens[j] >= hp->n_vocab)
                return lmd_err_set(err, LMD_EINVAL, "forward: token id %d out of range (vocabulary %d)", sq->tokens[j],
                                   hp->n_vocab);
            s->tok_seq[T] = i;
            s->tok_pos[T] = sq->pos + j;
            T++;
        }
        n_want += sq->want_logits;
        if (sq->pool < 0 || sq->pool > 3 || (sq->pool && !sq->embd))
            return lmd_err_set(err, LMD_EINVAL, "forward: sequence %d: pooling %d without a valid accumulator", i,
                               sq->pool);
        n_pool += sq->pool != 0;
    }
    if (n_want > s->max_logits)
        return lmd_err_set(err, LMD_EINVAL, "forward: %d logit rows exceed %d", n_want, s->max_logits);
    if (T == 0)
        return 0;

    uint64_t t0 = s->profile ? lmd_time_mono_ns() : 0;
    if (s->profile) {
        s->prof_steps++;
        s->prof_tokens += (uint64_t)T;
    }
    struct tok_job tj = {.m = m, .s = s, .kv = kv, .seqs = seqs, .layer = -1};

    /* Embeddings, then RoPE tables for each token's position. */
    run_tokens(pool, &tj, TOK_EMBED, T);
    const int n_attn = attn_plan(s, hp, seqs, n_seqs, pool ? lmd_pool_threads(pool) : 1);
    prof_mark(s, PROF_EMBED, &t0);

    for (int il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        tj.layer = il;

        /* Attention: norm, Q/K/V projections. */
        run_tokens(pool, &tj, TOK_ATTN_NORM, T);
        prof_mark(s, PROF_NORM, &t0);
        matmul(pool, s, &L->wq, s->xb, T, s->q);
        matmul(pool, s, &L->wk, s->xb, T, s->k);
        matmul(pool, s, &L->wv, s->xb, T, s->v);
        prof_mark(s, PROF_MM_QKV, &t0);

        /* Biases, per-head norms and RoPE, Q scaling; K and V into the cache. */
        run_tokens(pool, &tj, TOK_ROPE_KV, T);
        prof_mark(s, PROF_ROPE_KV, &t0);

        struct attn_job job = {.m = m, .s = s, .kv = kv, .seqs = seqs, .layer = il};
        lmd_pool_for(pool, n_attn, 1, attn_task, &job);
        prof_mark(s, PROF_ATTN, &t0);

        /* Output projection, optional post-norm, residual. */
        matmul(pool, s, &L->wo, s->att, T, s->xb);
        prof_mark(s, PROF_MM_O, &t0);
        run_tokens(pool, &tj, TOK_ATTN_OUT, T);
        prof_mark(s, PROF_RESID, &t0);

        /* Gated feed-forward. */
        run_tokens(pool, &tj, TOK_FFN_NORM, T);
        prof_mark(s, PROF_NORM, &t0);
        matmul(pool, s, &L->ffn_gate, s->xb, T, s->ffg);
        matmul(pool, s, &L->ffn_up, s->xb, T, s->ffu);
        prof_mark(s, PROF_MM_FFN, &t0);
        run_tokens(pool, &tj, TOK_ACT, T);
        prof_mark(s, PROF_ACT, &t0);
        matmul(pool, s, &L->ffn_down, s->ffg, T, s->xb);
        prof_mark(s, PROF_MM_DOWN, &t0);
        run_tokens(pool, &tj, TOK_FFN_OUT, T);
        prof_mark(s, PROF_RESID, &t0);
    }

    /* Embeddings: the final norm of the positions each pooling sequence
     * needs, into its caller's accumulator. Only rows that pool are
     * normed, so a step without embeddings pays nothing here. */
    if (n_pool > 0) {
        int t0s = 0;
        for (int i = 0; i < n_seqs; i++) {
            const struct model_seq *sq = &seqs[i];
            const int t_first = t0s;
            t0s += sq->n_tokens;
            if (sq->pool == 0 || !sq->embd)
                continue;
            float *row = s->xb;  /* [E] one row of scratch, free again until the logits below */
            if (sq->pool == 1) { /* mean: add every position's state */
                if (sq->pos == 0)
                    memset(sq->embd, 0, (size_t)E * sizeof(float));
                for (int t = t_first; t < t0s; t++) {
                    ops_rmsnorm(row, s->x + (size_t)t * E, m->output_norm, E, hp->rms_eps);
                    for (int d = 0; d < E; d++)
                        sq->embd[d] += row[d];
                }
            } else if (sq->pool == 2) { /* cls: the first position's */
                if (sq->pos == 0)
                    ops_rmsnorm(sq->embd, s->x + (size_t)t_first * E, m->output_norm, E, hp->rms_eps);
            } else { /* last: this chunk's last position's */
                ops_rmsnorm(sq->embd, s->x + (size_t)(t0s - 1) * E, m->output_norm, E, hp->rms_eps);
            }
        }
        prof_mark(s, PROF_LOGITS, &t0);
    }

    /* Final norm and the vocabulary projection, only for rows that want
     * logits (the last token of a sequence that asked). */
    if (n_want == 0)
        return 0;
    int r = 0, t_end = 0;
    for (int i = 0; i < n_seqs; i++) {
        t_end += seqs[i].n_tokens;
        if (!seqs[i].want_logits)
            continue;
        ops_rmsnorm(s->xb + (size_t)r * E, s->x + (size_t)(t_end - 1) * E, m->output_norm, E, hp->rms_eps);
        r++;
    }
    matmul(pool, s, &m->output, s->xb, n_want, logits);
    if (hp->final_softcap > 0) {
        const float c = hp->final_softcap;
        for (size_t i = 0; i < (size_t)n_want * (size_t)hp->n_vocab; i++)
            logits[i] = c * tanhf(logits[i] / c);
    }
    prof_mark(s, PROF_LOGITS, &t0);
    return 0;
}
