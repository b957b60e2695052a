/*
 * Sampling: a sequence's logits -> its next token.
 *
 * Order of operations (as vLLM does, the semantics OpenAI clients expect):
 * logit bias, penalties (repetition over prompt + output, presence and
 * frequency over output), then greedy argmax when temperature is 0,
 * otherwise temperature, top-k, top-p, min-p and a draw from a seeded RNG
 * (xoshiro256**): the same seed and request give the same tokens.
 *
 * Memory: a sampler's token-count table is sized at init (request start);
 * a draw allocates nothing. The candidate arrays live in a sample_scratch
 * shared by all sequences of one engine thread.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stdint.h>

struct gram;
struct gram_vocab;
struct gram_match;

struct sample_bias {
    int32_t token;
    float bias;
};

struct sample_params {
    float temperature;              /* 0 = greedy */
    int top_k;                      /* 0 = off */
    float top_p;                    /* 1 = off */
    float min_p;                    /* 0 = off */
    float repetition_penalty;       /* 1 = off; prompt and output tokens */
    float presence_penalty;         /* 0 = off; output tokens */
    float frequency_penalty;        /* 0 = off; output tokens */
    const struct sample_bias *bias; /* [n_bias], copied at init */
    int n_bias;
    uint64_t seed;
    /* Constrained decoding (sample/grammar.h): when grammar is set, only
     * tokens that keep the output inside it are drawn, and an
     * end-of-generation token only once the output is complete. Both are
     * the caller's and must outlive the sampler; gvocab is required with a
     * grammar. */
    const struct gram *grammar;
    const struct gram_vocab *gvocab;
};

/* Defaults: greedy off (temperature 1), every filter off. */
void sample_params_default(struct sample_params *p);

struct sampler {
    struct sample_params p;
    struct sample_bias *bias; /* [n_bias] own copy */
    uint64_t rng[4];
    /* open-addressing table of tokens seen: id -> output count, prompt flag */
    int32_t *keys;   /* [cap], -1 = empty */
    int32_t *counts; /* [cap] occurrences in the output */
    uint8_t *prompt; /* [cap] 1 if seen in the prompt */
    uint32_t cap;    /* power of two */
    uint32_t used;
    struct gram_match *gm; /* the grammar's matcher, or NULL */
};

struct sample_scratch {
    int n_vocab;
    float *val;   /* [n_vocab] */
    int32_t *idx; /* [n_vocab] */
    /* After a draw at temperature > 0: the candidates it drew from
     * (idx[0..n_cand), weights val[0..n_cand)); a grammar redraws from
     * these without a second softmax. */
    int n_cand;
    double *cum; /* [n_vocab] prefix sums of val, for a grammar's redraws */
};

int sample_scratch_init(struct sample_scratch *s, int n_vocab, struct lmd_err *err);
void sample_scratch_free(struct sample_scratch *s);

/* max_tokens bounds the distinct tokens the table must hold (prompt +
 * output). Checks parameters: returns LMD_EINVAL with the field named. */
int sample_init(struct sampler *s, const struct sample_params *p, int max_tokens, struct lmd_err *err);
void sample_free(struct sampler *s);

/* Record tokens for the penalties. */
void sample_accept_prompt(struct sampler *s, const int32_t *tokens, int n);
void sample_accept(struct sampler *s, int32_t token);

/* Pick the next token. logits [n_vocab] is modified in place (bias and
 * penalties applied). Does not call sample_accept.
 * With a grammar, the token is drawn as usual and kept when the grammar
 * allows it; otherwise it is drawn again from the same weights until the
 * grammar allows one (a bounded number of tries), and failing that from
 * those weights less every token the grammar refuses (its full mask) — or,
 * greedy, the logits are masked (-infinity) and the argmax taken. Each way
 * is exactly a draw from the masked distribution (top-k/top-p/min-p taken
 * over the unconstrained one). The grammar never edits logits, so
 * log-probabilities stay the model's. When the output is complete and
 * cannot go on, the end-of-generation token is returned without drawing. */
int32_t sample_next(struct sampler *s, struct sample_scratch *sc, float *logits, int n_vocab);

/* The uniform in [0, 1) that sample_next's draw takes from s's RNG (one
 * per draw at temperature > 0), for an engine that draws elsewhere (on a
 * GPU) with the same seeded stream. */
double sample_uniform(struct sampler *s);

/* Log-probabilities under `logits` (as modified by sample_next): of `token`,
 * and the top_n most likely tokens in descending order. */
float sample_logprobs(const float *logits, int n_vocab, int32_t token, int top_n, int32_t *top_ids, float *top_lps);
