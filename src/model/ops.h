/*
 * The f32 vector operations the forward pass is built from: RMS norm, RoPE,
 * gated activations, and f16 attention. Numerics follow llama.cpp's CPU
 * backend (double-precision sums in norms and softmax, the f16 GELU table,
 * f16 rounding of Q and of attention probabilities) so that greedy outputs
 * match it token for token.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* out = (x / rms(x)) * w, with the sum of squares taken in double. w may be NULL. */
void ops_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* cos/sin table for one position: cs[2*i] = cos, cs[2*i+1] = sin, i < n_rot/2.
 * freq_factors (may be NULL) divide each frequency, as llama 3's rope_freqs. */
void ops_rope_cache(float *cs, int pos, int n_rot, float base, float freq_scale, const float *freq_factors);

/* Rotate one head vector in place. neox: rotate halves; else adjacent pairs. */
void ops_rope_apply(float *x, const float *cs, int n_rot, int neox);

/* y = act(g) * u in place into g; n elements. */
void ops_geglu(float *g, const float *u, int n);
void ops_swiglu(float *g, const float *u, int n);

/* Attention of one query head over n positions given as pointers to f16
 * key/value vectors: the reference that ops_attend_group, which the forward
 * pass uses, must equal bit for bit. q16 is the query already rounded to f16. scores and
 * p16 are scratch of n entries. scale multiplies the scores before softmax.
 * out[dv] receives the weighted sum of values. */
void ops_attend(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                int dk, int dv, float scale, float *scores, uint16_t *p16);

/* Attention of nq queries that share one list of key/value rows: the query
 * heads of one KV head (GQA), for one or several tokens of one sequence.
 * Query q attends to rows [lo[q], hi[q]) of keys/vals (0 <= lo < hi <=
 * span) and its result goes to out[q][dv]. Each key and value row is loaded
 * once for all the queries that see it, a tile of rows at a time, so it is
 * reused from L1/L2 instead of being streamed once per query.
 *
 * Exactness: every score, probability and output element is computed by the
 * same f32 operations in the same order as ops_attend on the same ISA path
 * (same f16 rounding of Q and of the probabilities, the same accumulation
 * order per output element), so out[q] equals ops_attend's result for query
 * q over rows [lo[q], hi[q]) bit for bit, whatever the other queries are.
 *
 * q16 is [nq][dk], the queries already rounded to f16. work is scratch of
 * ops_attend_group_work(nq, span, dk) floats. */
void ops_attend_group(float *const *out, const uint16_t *q16, int nq, const int *lo, const int *hi,
                      const uint16_t *const *keys, const uint16_t *const *vals, int span, int dk, int dv, float scale,
                      float *work);
size_t ops_attend_group_work(int nq, int span, int dk); /* floats */
