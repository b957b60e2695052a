/*
 * Model loading: architecture traits, hyper-parameters from the GGUF
 * metadata, and tensor binding with shape and type checks. Nothing here
 * copies weights; tensors are views into the mapping.
 */
#include "model/model.h"

#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct model_arch archs[] = {
    {.name = "llama", .rope = MODEL_ROPE_NORM, .act = MODEL_ACT_SILU},
    {.name = "qwen2", .rope = MODEL_ROPE_NEOX, .act = MODEL_ACT_SILU},
    {.name = "qwen3", .rope = MODEL_ROPE_NEOX, .act = MODEL_ACT_SILU, .qk_norm = true},
    {.name = "gemma3",
     .rope = MODEL_ROPE_NEOX,
     .act = MODEL_ACT_GELU,
     .qk_norm = true,
     .post_norms = true,
     .embd_scale = true,
     .q_prescale = true,
     .gemma3_swa = true},
};

const char *model_supported_archs(void) { return "gemma3, llama, qwen2, qwen3"; }

/* Metadata reader bound to one architecture prefix. */
struct hp_reader {
    const struct gguf_file *f;
    const char *arch;
    struct lmd_err *err;
};

static int hp_u32(struct hp_reader *r, const char *suffix, bool required, uint32_t dflt, int *out)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", r->arch, suffix);
    uint32_t v = dflt;
    int rc = gguf_get_u32(r->f, key, &v, r->err);
    if (rc == LMD_ENOENT) {
        if (required)
            return lmd_err_set(r->err, LMD_EFORMAT, "%s: required metadata key '%s' is missing", gguf_path(r->f), key);
        v = dflt;
    } else if (rc) {
        const struct gguf_kv *kv = gguf_kv_find(r->f, key);
        if (kv && kv->type == GGUF_VTYPE_ARRAY)
            return lmd_err_set(r->err, LMD_ENOTSUP, "%s: per-layer values for '%s' are not supported", gguf_path(r->f),
                               key);
        return rc;
    }
    if (v > (uint32_t)INT32_MAX)
        return lmd_err_set(r->err, LMD_EFORMAT, "%s: '%s' = %u is out of range", gguf_path(r->f), key, v);
    *out = (int)v;
    return 0;
}

static int hp_f32(struct hp_reader *r, const char *suffix, float dflt, float *out)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", r->arch, suffix);
    int rc = gguf_get_f32(r->f, key, out, r->err);
    if (rc == LMD_ENOENT) {
        *out = dflt;
        return 0;
    }
    return rc;
}

/* Bind a 2-D weight of shape [rows][cols] (ne0 = cols). */
static int bind_matrix(const struct gguf_file *f, const char *name, int64_t cols, int64_t rows, bool required,
                       struct model_tensor *out, struct lmd_err *err)
{
    memset(out, 0, sizeof *out);
    const struct gguf_tensor *t = gguf_tensor_find(f, name);
    if (!t) {
        if (!required)
            return 0;
        return lmd_err_set(err, LMD_EFORMAT, "%s: tensor '%s' is missing", gguf_path(f), name);
    }
    if (t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows || t->ne[2] != 1 || t->ne[3] != 1)
        return lmd_err_set(
            err, LMD_EFORMAT, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]", gguf_path(f),
            name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
            (unsigned long long)t->ne[3], (long long)cols, (long long)rows);
    if (!kern_dtype_supported(t->type))
        return lmd_err_set(err, LMD_ENOTSUP, "%s: tensor '%s' has type %s, which lmd does not support", gguf_path(f),
                           name, gguf_dtype_name(t->type));
    out->data = t->data;
    out->type = t->type;
    out->n_cols = cols;
    out->n_rows = rows;
    out->row_bytes = (size_t)gguf_dtype_row_bytes(t->type, (uint64_t)cols);
    return 0;
}

/* Bind a 1-D F32 vector of n elements (norm weights, biases). */
static int bind_vector(const struct gguf_file *f, const char *name, int64_t n, bool required, const float **out,
                       struct lmd_err *err)
{
    *out = NULL;
    const struct gguf_tensor *t = gguf_tensor_find(f, name);
    if (!t) {
        if (!required)
            return 0;
        return lmd_err_set(err, LMD_EFORMAT, "%s: tensor '%s' is missing", gguf_path(f), name);
    }
    if (t->n_elements != (uint64_t)n || t->ne[0] != (uint64_t)n)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tensor '%s' has %llu elements, expected %lld", gguf_path(f), name,
                           (unsigned long long)t->n_elements, (long long)n);
    if (t->type != GGUF_DTYPE_F32)
        return lmd_err_set(err, LMD_ENOTSUP, "%s: tensor '%s' has type %s, expected F32", gguf_path(f), name,
                           gguf_dtype_name(t->type));
    if (((uintptr_t)t->data & 3u) != 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tensor '%s' data is not 4-byte aligned", gguf_path(f), name);
    *out = t->data;
    return 0;
}

static int read_hparams(struct model *m, struct lmd_err *err)
{
    struct model_hparams *hp = &m->hp;
    const struct gguf_file *f = m->gguf;
    struct gguf_str arch;
    int rc = gguf_get_str(f, "general.architecture", &arch, err);
    if (rc == LMD_ENOENT)
        return lmd_err_set(err, LMD_EFORMAT, "%s: metadata key 'general.architecture' is missing", gguf_path(f));
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (gguf_str_eq(arch, archs[i].name))
            hp->arch = &archs[i];
    if (!hp->arch)
        return lmd_err_set(err, LMD_ENOTSUP, "%s: architecture '%.*s' is not supported (supported: %s)", gguf_path(f),
                           (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, model_supported_archs());

    struct hp_reader r = {.f = f, .arch = hp->arch->name, .err = err};
    if ((rc = hp_u32(&r, "embedding_length", true, 0, &hp->n_embd)) ||
        (rc = hp_u32(&r, "block_count", true, 0, &hp->n_layer)) ||
        (rc = hp_u32(&r, "feed_forward_length", true, 0, &hp->n_ff)) ||
        (rc = hp_u32(&r, "attention.head_count", true, 0, &hp->n_head)) ||
        (rc = hp_u32(&r, "context_length", false, 2048, &hp->n_ctx_train)))
        return rc;
    if ((rc = hp_u32(&r, "attention.head_count_kv", false, (uint32_t)hp->n_head, &hp->n_head_kv)))
        return rc;
    /* How embeddings are pooled, where the file says (embedding models
     * do). An unreadable or unknown value (rank pooling, a later kind) is
     * treated as not given: it only selects a default above. */
    {
        char key[160];
        uint32_t pt = 0;
        struct lmd_err ignored = {0};
        snprintf(key, sizeof key, "%s.pooling_type", hp->arch->name);
        if (gguf_get_u32(f, key, &pt, &ignored) == 0 && pt <= 3)
            hp->pooling = (int)pt;
    }
    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 || hp->n_head_kv <= 0 || hp->n_ff <= 0 ||
        hp->n_head % hp->n_head_kv != 0 || hp->n_layer > 4096 || hp->n_head > 4096)
        return lmd_err_set(
            err, LMD_EFORMAT,
            "%s: inconsistent hyper-parameters (n_embd %d, n_layer %d, n_head %d, n_head_kv %d, n_ff %d)", gguf_path(f),
            hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_ff);
    int dflt_hd = hp->n_embd / hp->n_head;
    if ((rc = hp_u32(&r, "attention.key_length", false, (uint32_t)dflt_hd, &hp->head_dim_k)) ||
        (rc = hp_u32(&r, "attention.value_length", false, (uint32_t)dflt_hd, &hp->head_dim_v)) ||
        (rc = hp_u32(&r, "rope.dimension_count", false, (uint32_t)hp->head_dim_k, &hp->n_rot)))
        return rc;
    if (hp->head_dim_k <= 0 || hp->head_dim_v <= 0 || hp->head_dim_k > 1024 || hp->head_dim_v > 1024 ||
        hp->n_rot <= 0 || hp->n_rot > hp->head_dim_k || hp->n_rot % 2 != 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: bad head dimensions (key %d, value %d, rope %d)", gguf_path(f),
                           hp->head_dim_k, hp->head_dim_v, hp->n_rot);
    if ((rc = hp_f32(&r, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps)) ||
        (rc = hp_f32(&r, "rope.freq_base", 10000.0f, &hp->rope_base)) ||
        (rc = hp_f32(&r, "rope.freq_base_swa", 10000.0f, &hp->rope_base_swa)) ||
        (rc = hp_f32(&r, "final_logit_softcapping", 0.0f, &hp->final_softcap)))
        return rc;

    /* RoPE scaling: linear is a frequency scale; llama 3's per-dimension
     * factors come as the rope_freqs tensor; other kinds are refused. */
    hp->rope_freq_scale = 1.0f;
    char key[160];
    snprintf(key, sizeof key, "%s.rope.scaling.type", hp->arch->name);
    struct gguf_str st;
    rc = gguf_get_str(f, key, &st, err);
    if (rc && rc != LMD_ENOENT)
        return rc;
    if (rc == 0 && !gguf_str_eq(st, "none")) {
        float factor = 1.0f;
        if ((rc = hp_f32(&r, "rope.scaling.factor", 1.0f, &factor)))
            return rc;
        if (gguf_str_eq(st, "linear")) {
            if (!(factor > 0))
                return lmd_err_set(err, LMD_EFORMAT, "%s: rope.scaling.factor %g is not positive", gguf_path(f),
                                   (double)factor);
            hp->rope_freq_scale = 1.0f / factor;
        } else if (!gguf_str_eq(st, "llama3")) {
            return lmd_err_set(err, LMD_ENOTSUP, "%s: RoPE scaling type '%.*s' is not supported (none, linear)",
                               gguf_path(f), (int)(st.len > 32 ? 32 : st.len), st.ptr);
        }
    }

    hp->layer_swa = calloc((size_t)hp->n_layer, sizeof *hp->layer_swa);
    if (!hp->layer_swa)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    if (hp->arch->gemma3_swa) {
        int pattern = 6;
        if ((rc = hp_u32(&r, "attention.sliding_window", false, 0, &hp->n_swa)) ||
            (rc = hp_u32(&r, "attention.sliding_window_pattern", false, 6, &pattern)))
            return rc;
        /* Every pattern-th layer is global, the others slide. */
        for (int il = 0; il < hp->n_layer && hp->n_swa > 0; il++)
            hp->layer_swa[il] = pattern == 0 || (il % pattern < pattern - 1);
    }
    if (hp->arch->q_prescale) {
        /* gemma3: 1/sqrt(head_dim) except the 27B model (62 layers). */
        hp->attn_scale =
            hp->n_layer == 62 ? 1.0f / sqrtf((float)(hp->n_embd / hp->n_head)) : 1.0f / sqrtf((float)hp->head_dim_k);
    } else {
        hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim_k);
    }
    return 0;
}

static int bind_tensors(struct model *m, struct lmd_err *err)
{
    const struct gguf_file *f = m->gguf;
    struct model_hparams *hp = &m->hp;
    const struct gguf_tensor *te = gguf_tensor_find(f, "token_embd.weight");
    if (!te)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tensor 'token_embd.weight' is missing", gguf_path(f));
    if (te->ne[1] == 0 || te->ne[1] > (uint64_t)INT32_MAX)
        return lmd_err_set(err, LMD_EFORMAT, "%s: token_embd.weight has %llu rows", gguf_path(f),
                           (unsigned long long)te->ne[1]);
    hp->n_vocab = (int)te->ne[1];
    int rc;
    if ((rc = bind_matrix(f, "token_embd.weight", hp->n_embd, hp->n_vocab, true, &m->tok_embd, err)) ||
        (rc = bind_vector(f, "output_norm.weight", hp->n_embd, true, &m->output_norm, err)) ||
        (rc = bind_matrix(f, "output.weight", hp->n_embd, hp->n_vocab, false, &m->output, err)))
        return rc;
    if (!m->output.data)
        m->output = m->tok_embd; /* tied embeddings */
    if ((rc = bind_vector(f, "rope_freqs.weight", hp->n_rot / 2, false, &m->rope_freqs, err)))
        return rc;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    const struct model_arch *a = hp->arch;
    int64_t q_dim = (int64_t)hp->n_head * hp->head_dim_k;
    int64_t k_dim = (int64_t)hp->n_head_kv * hp->head_dim_k;
    int64_t v_dim = (int64_t)hp->n_head_kv * hp->head_dim_v;
    int64_t o_dim = (int64_t)hp->n_head * hp->head_dim_v;
    for (int il = 0; il < hp->n_layer; il++) {
        struct model_layer *L = &m->layers[il];
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d.%s", il, s), n)
        if ((rc = bind_vector(f, NAME("attn_norm.weight"), hp->n_embd, true, &L->attn_norm, err)) ||
            (rc = bind_matrix(f, NAME("attn_q.weight"), hp->n_embd, q_dim, true, &L->wq, err)) ||
            (rc = bind_matrix(f, NAME("attn_k.weight"), hp->n_embd, k_dim, true, &L->wk, err)) ||
            (rc = bind_matrix(f, NAME("attn_v.weight"), hp->n_embd, v_dim, true, &L->wv, err)) ||
            (rc = bind_matrix(f, NAME("attn_output.weight"), o_dim, hp->n_embd, true, &L->wo, err)) ||
            (rc = bind_vector(f, NAME("attn_q.bias"), q_dim, false, &L->bq, err)) ||
            (rc = bind_vector(f, NAME("attn_k.bias"), k_dim, false, &L->bk, err)) ||
            (rc = bind_vector(f, NAME("attn_v.bias"), v_dim, false, &L->bv, err)) ||
            (rc = bind_vector(f, NAME("attn_q_norm.weight"), hp->head_dim_k, a->qk_norm, &L->q_norm, err)) ||
            (rc = bind_vector(f, NAME("attn_k_norm.weight"), hp->head_dim_k, a->qk_norm, &L->k_norm, err)) ||
            (rc = bind_vector(f, NAME("post_attention_norm.weight"), hp->n_embd, a->post_norms, &L->attn_post_norm,
                              err)) ||
            (rc = bind_vector(f, NAME("ffn_norm.weight"), hp->n_embd, true, &L->ffn_norm, err)) ||
            (rc = bind_matrix(f, NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, true, &L->ffn_gate, err)) ||
            (rc = bind_matrix(f, NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, true, &L->ffn_up, err)) ||
            (rc = bind_matrix(f, NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, true, &L->ffn_down, err)) ||
            (rc = bind_vector(f, NAME("post_ffw_norm.weight"), hp->n_embd, a->post_norms, &L->ffn_post_norm, err)))
            return rc;
#undef NAME
    }
    return 0;
}

int model_load(struct model **out, const char *path, struct lmd_err *err)
{
    *out = NULL;
    kern_init();
    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    int rc = gguf_open(&m->gguf, path, err);
    if (rc == 0)
        rc = read_hparams(m, err);
    if (rc == 0)
        rc = bind_tensors(m, err);
    if (rc) {
        model_free(m);
        return rc;
    }
    struct gguf_str name;
    if (gguf_get_str(m->gguf, "general.name", &name, NULL) == 0)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(name.len > 120 ? 120 : name.len), name.ptr);
    else
        snprintf(m->name, sizeof m->name, "%s", m->hp.arch->name);
    *out = m;
    return 0;
}

/* The matrices a forward pass multiplies by (the output may be the
 * embeddings). */
static int model_matrices(struct model *m, struct model_tensor **out, int cap)
{
    int n = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        struct model_layer *L = &m->layers[il];
        struct model_tensor *ts[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0] && n < cap; i++)
            out[n++] = ts[i];
    }
    if (n < cap)
        out[n++] = &m->output;
    return n;
}

int model_repack(struct model *m, struct lmd_pool *pool, struct lmd_err *err)
{
    int cap = 7 * m->hp.n_layer + 1;
    struct model_tensor **ts = malloc((size_t)cap * sizeof *ts);
    if (!ts)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    int n = model_matrices(m, ts, cap);
    for (int i = 0; i < n; i++) {
        struct model_tensor *t = ts[i];
        if (!t->data || t->packed)
            continue; /* absent, or the same tensor seen before (tied output) */
        size_t bytes = kern_repack_bytes(t->type, t->n_rows, t->n_cols);
        if (!bytes)
            continue;
        t->packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!t->packed) {
            free(ts);
            return lmd_err_set(err, LMD_ENOMEM, "out of memory for %zu MiB of repacked weights", bytes >> 20);
        }
        kern_repack(pool, t->type, t->data, t->row_bytes, t->n_rows, t->n_cols, t->packed);
        m->packed_bytes += bytes;
    }
    free(ts);
    return 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (int il = 0; il < m->hp.n_layer; il++) {
            struct model_layer *L = &m->layers[il];
            free(L->wq.packed);
            free(L->wk.packed);
            free(L->wv.packed);
            free(L->wo.packed);
            free(L->ffn_gate.packed);
            free(L->ffn_up.packed);
            free(L->ffn_down.packed);
        }
    free(m->output.packed);
    free(m->layers);
    free(m->hp.layer_swa);
    gguf_close(m->gguf);
    free(m);
}
