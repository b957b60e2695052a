/*
 * Samplers (see sample.h).
 */
#include "sample/sample.h"
#include "sample/grammar.h"

#include "core/time.h"
#include "obs/obs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sample_params_default(struct sample_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

int sample_scratch_init(struct sample_scratch *s, int n_vocab, struct lmd_err *err)
{
    s->n_vocab = n_vocab;
    s->n_cand = 0;
    s->val = malloc((size_t)n_vocab * sizeof *s->val);
    s->idx = malloc((size_t)n_vocab * sizeof *s->idx);
    s->cum = malloc((size_t)n_vocab * sizeof *s->cum);
    if (!s->val || !s->idx || !s->cum) {
        sample_scratch_free(s);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for sampling scratch");
    }
    return 0;
}

void sample_scratch_free(struct sample_scratch *s)
{
    free(s->val);
    free(s->idx);
    free(s->cum);
    s->val = NULL;
    s->idx = NULL;
    s->cum = NULL;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s)
{
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t *s) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

double sample_uniform(struct sampler *s) { return rng_uniform(s->rng); }

int sample_init(struct sampler *s, const struct sample_params *p, int max_tokens, struct lmd_err *err)
{
    memset(s, 0, sizeof *s);
    if (!(p->temperature >= 0.0f) || p->temperature > 100.0f)
        return lmd_err_set(err, LMD_EINVAL, "temperature must be between 0 and 100");
    if (p->top_k < 0)
        return lmd_err_set(err, LMD_EINVAL, "top_k must be >= 0");
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return lmd_err_set(err, LMD_EINVAL, "top_p must be in (0, 1]");
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return lmd_err_set(err, LMD_EINVAL, "min_p must be in [0, 1]");
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f))
        return lmd_err_set(err, LMD_EINVAL, "repetition_penalty must be in (0, 10]");
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return lmd_err_set(err, LMD_EINVAL, "presence_penalty must be between -2 and 2");
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return lmd_err_set(err, LMD_EINVAL, "frequency_penalty must be between -2 and 2");
    s->p = *p;
    if (p->n_bias > 0) {
        s->bias = malloc((size_t)p->n_bias * sizeof *s->bias);
        if (!s->bias)
            return lmd_err_set(err, LMD_ENOMEM, "out of memory");
        memcpy(s->bias, p->bias, (size_t)p->n_bias * sizeof *s->bias);
    }
    s->p.bias = s->bias;
    if (p->grammar) {
        if (!p->gvocab)
            return lmd_err_set(err, LMD_ENOTSUP, "constrained decoding needs the model's vocabulary");
        int rc = gram_match_init(&s->gm, p->grammar, p->gvocab, err);
        if (rc != 0) {
            sample_free(s);
            return rc;
        }
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    bool need_table = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (need_table) {
        uint32_t cap = 16;
        while (cap < (uint32_t)max_tokens * 2u && cap < (1u << 30))
            cap <<= 1;
        s->cap = cap;
        s->keys = malloc(cap * sizeof *s->keys);
        s->counts = calloc(cap, sizeof *s->counts);
        s->prompt = calloc(cap, 1);
        if (!s->keys || !s->counts || !s->prompt) {
            sample_free(s);
            return lmd_err_set(err, LMD_ENOMEM, "out of memory for the penalty table");
        }
        memset(s->keys, 0xff, cap * sizeof *s->keys);
    }
    return 0;
}

void sample_free(struct sampler *s)
{
    free(s->bias);
    free(s->keys);
    free(s->counts);
    free(s->prompt);
    gram_match_free(s->gm);
    memset(s, 0, sizeof *s);
}

static int32_t table_slot(struct sampler *s, int32_t token)
{
    uint32_t mask = s->cap - 1, h = ((uint32_t)token * 2654435761u) & mask;
    while (s->keys[h] != -1 && s->keys[h] != token)
        h = (h + 1) & mask;
    if (s->keys[h] == -1) {
        if (s->used + 1 > s->cap / 2 + s->cap / 4)
            return -1; /* full: stop recording rather than degrade */
        s->keys[h] = token;
        s->used++;
    }
    return (int32_t)h;
}

void sample_accept_prompt(struct sampler *s, const int32_t *tokens, int n)
{
    if (!s->cap)
        return;
    for (int i = 0; i < n; i++) {
        int32_t h = table_slot(s, tokens[i]);
        if (h >= 0)
            s->prompt[h] = 1;
    }
}

void sample_accept(struct sampler *s, int32_t token)
{
    if (s->gm) {
        uint64_t t0 = lmd_time_mono_ns();
        gram_match_accept(s->gm, token);
        obs_count(OBS_C_GRAMMAR_NS, lmd_time_mono_ns() - t0);
    }
    if (!s->cap)
        return;
    int32_t h = table_slot(s, token);
    if (h >= 0)
        s->counts[h]++;
}

static void apply_penalties(const struct sampler *s, float *logits, int n_vocab)
{
    for (int i = 0; i < s->p.n_bias; i++) {
        int32_t t = s->bias[i].token;
        if (t >= 0 && t < n_vocab)
            logits[t] += s->bias[i].bias;
    }
    if (!s->cap)
        return;
    const float rp = s->p.repetition_penalty, pp = s->p.presence_penalty, fp = s->p.frequency_penalty;
    for (uint32_t h = 0; h < s->cap; h++) {
        int32_t t = s->keys[h];
        if (t < 0 || t >= n_vocab)
            continue;
        float *l = &logits[t];
        if (rp != 1.0f)
            *l = *l > 0 ? *l / rp : *l * rp;
        if (s->counts[h] > 0)
            *l -= (float)s->counts[h] * fp + pp;
    }
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Sort candidates (val desc, then idx asc for determinism). */
static int cmp_cand(const void *a, const void *b, void *vals)
{
    const float *v = vals;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (v[x] != v[y])
        return v[x] > v[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Min-heap of k candidate ids by value: keeps the k largest. */
static void heap_sift(int32_t *h, int n, int i, const float *v)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && (v[h[l]] < v[h[m]] || (v[h[l]] == v[h[m]] && h[l] > h[m])))
            m = l;
        if (r < n && (v[h[r]] < v[h[m]] || (v[h[r]] == v[h[m]] && h[r] > h[m])))
            m = r;
        if (m == i)
            return;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* The k largest of v[0..n) into idx[0..k), sorted descending. */
static int top_k_select(const float *v, int n, int k, int32_t *idx)
{
    if (k > n)
        k = n;
    for (int i = 0; i < k; i++)
        idx[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_sift(idx, k, i, v);
    for (int i = k; i < n; i++) {
        if (v[i] > v[idx[0]]) {
            idx[0] = i;
            heap_sift(idx, k, 0, v);
        }
    }
    qsort_r(idx, (size_t)k, sizeof *idx, cmp_cand, (void *)v);
    return k;
}

static int32_t sample_draw(struct sampler *s, struct sample_scratch *sc, float *logits, int n_vocab);

#define SAMPLE_GRAMMAR_TRIES 16 /* redraws before a grammar's full mask is computed */

int32_t sample_next(struct sampler *s, struct sample_scratch *sc, float *logits, int n_vocab)
{
    apply_penalties(s, logits, n_vocab);
    if (!s->gm)
        return sample_draw(s, sc, logits, n_vocab);
    obs_count(OBS_C_GRAMMAR_TOKENS, 1);
    if (!gram_match_can_continue(s->gm))
        return gram_vocab_eog(s->p.gvocab);
    int32_t tok = sample_draw(s, sc, logits, n_vocab);
    uint64_t t0 = lmd_time_mono_ns();
    if (gram_match_allows(s->gm, tok)) {
        obs_count(OBS_C_GRAMMAR_NS, lmd_time_mono_ns() - t0);
        return tok;
    }
    tok = -1;
    if (s->p.temperature > 0.0f && sc->n_cand > 0) {
        /* Rejection sampling: draw again from the first draw's weights
         * (prefix sums and a binary search, no second softmax) and keep the
         * first token the grammar allows — exactly the masked distribution.
         * Bounded: when the allowed tokens carry little weight, the mask is
         * cheaper than the tries. */
        double acc = 0.0;
        for (int i = 0; i < sc->n_cand; i++) {
            acc += sc->val[i];
            sc->cum[i] = acc;
        }
        for (int k = 0; k < SAMPLE_GRAMMAR_TRIES && tok < 0 && acc > 0.0; k++) {
            double r = rng_uniform(s->rng) * acc;
            int lo = 0, hi = sc->n_cand - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (sc->cum[mid] > r)
                    hi = mid;
                else
                    lo = mid + 1;
            }
            if (sc->val[lo] > 0.0f && gram_match_allows(s->gm, sc->idx[lo]))
                tok = sc->idx[lo];
        }
        if (tok >= 0) {
            obs_count(OBS_C_GRAMMAR_NS, lmd_time_mono_ns() - t0);
            return tok;
        }
    }
    obs_count(OBS_C_GRAMMAR_MASKS, 1);
    if (gram_match_fill(s->gm) == 0) {
        tok = gram_vocab_eog(s->p.gvocab); /* a dead end the grammar's checks could not rule out */
    } else if (s->p.temperature > 0.0f && sc->n_cand > 0) {
        /* The first draw's candidates and weights, less what the grammar
         * refuses: the same distribution as masking first, without a
         * second softmax over the vocabulary. */
        double sum = 0.0;
        for (int i = 0; i < sc->n_cand; i++) {
            if (!gram_match_bit(s->gm, sc->idx[i]))
                sc->val[i] = 0.0f;
            sum += sc->val[i];
        }
        if (sum > 0.0) {
            double r = rng_uniform(s->rng) * sum;
            for (int i = 0; i < sc->n_cand && tok < 0; i++) {
                r -= sc->val[i];
                if (r < 0 && sc->val[i] > 0.0f)
                    tok = sc->idx[i];
            }
            for (int i = sc->n_cand - 1; i >= 0 && tok < 0; i--)
                if (sc->val[i] > 0.0f)
                    tok = sc->idx[i];
        }
    }
    if (tok < 0) {
        /* Greedy, or every candidate the filters kept was refused: draw
         * again from masked logits — a copy (in cum's memory, free by now),
         * so the row keeps the model's values for the log-probabilities. */
        float *masked = (float *)sc->cum;
        memcpy(masked, logits, (size_t)n_vocab * sizeof *masked);
        gram_match_apply(s->gm, masked);
        tok = sample_draw(s, sc, masked, n_vocab);
    }
    obs_count(OBS_C_GRAMMAR_NS, lmd_time_mono_ns() - t0);
    return tok;
}

/* A draw under the sampling parameters, grammar aside. */
static int32_t sample_draw(struct sampler *s, struct sample_scratch *sc, float *logits, int n_vocab)
{
    sc->n_cand = 0;
    if (s->p.temperature <= 0.0f)
        return argmax(logits, n_vocab);

    /* Candidates sorted by logit: all of them only when needed. */
    int k = s->p.top_k > 0 && s->p.top_k < n_vocab ? s->p.top_k : n_vocab;
    int32_t *idx = sc->idx;
    float *p = sc->val;
    int n;
    if (k < n_vocab || s->p.top_p < 1.0f) {
        /* top-p rarely needs more than the first thousand candidates; take
         * those first and fall back to every token only if they are short. */
        int first = k < n_vocab ? k : (n_vocab < 1024 ? n_vocab : 1024);
        n = top_k_select(logits, n_vocab, first, idx);
        if (k == n_vocab && s->p.top_p < 1.0f) {
            const float inv_t = 1.0f / s->p.temperature;
            const float mx = logits[idx[0]];
            double total = 0.0, head = 0.0;
            for (int i = 0; i < n_vocab; i++)
                total += exp((double)((logits[i] - mx) * inv_t));
            for (int i = 0; i < n; i++)
                head += exp((double)((logits[idx[i]] - mx) * inv_t));
            if (head < s->p.top_p * total && n < n_vocab)
                n = top_k_select(logits, n_vocab, n_vocab, idx);
        }
    } else {
        for (int i = 0; i < n_vocab; i++)
            idx[i] = i;
        n = n_vocab;
    }

    /* Softmax with temperature over the candidates (max first if sorted). */
    const float inv_t = 1.0f / s->p.temperature;
    float mx = logits[idx[0]];
    for (int i = 1; i < n; i++)
        if (logits[idx[i]] > mx)
            mx = logits[idx[i]];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = expf((logits[idx[i]] - mx) * inv_t);
        sum += p[i];
    }
    if (s->p.top_p < 1.0f) {
        /* idx is sorted descending here: keep the smallest prefix reaching top_p. */
        double cum = 0.0, target = s->p.top_p * sum;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += p[i];
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = cum < target ? sum : cum;
    }
    if (s->p.min_p > 0.0f) {
        float pmax = 0;
        for (int i = 0; i < n; i++)
            if (p[i] > pmax)
                pmax = p[i];
        const float thr = s->p.min_p * pmax;
        int w = 0;
        sum = 0.0;
        for (int i = 0; i < n; i++) {
            if (p[i] >= thr) {
                p[w] = p[i];
                idx[w] = idx[i];
                sum += p[w];
                w++;
            }
        }
        n = w;
    }
    sc->n_cand = n;
    double r = rng_uniform(s->rng) * sum;
    for (int i = 0; i < n; i++) {
        r -= p[i];
        if (r < 0)
            return idx[i];
    }
    return idx[n - 1];
}

float sample_logprobs(const float *logits, int n_vocab, int32_t token, int top_n, int32_t *top_ids, float *top_lps)
{
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)(logits[i] - mx));
    const float lse = mx + (float)log(sum);
    if (top_n > 0) {
        int k = top_n < n_vocab ? top_n : n_vocab;
        /* Reuse top_ids as the heap; k is small (<= 20). */
        top_k_select(logits, n_vocab, k, top_ids);
        for (int i = 0; i < k; i++)
            top_lps[i] = logits[top_ids[i]] - lse;
    }
    return logits[token] - lse;
}
