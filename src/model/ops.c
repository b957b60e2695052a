/*
 * f32 operations of the forward pass (see ops.h). The attention inner loops
 * have an AVX2/F16C version in ops_avx2.c (grouped attention also AVX-512
 * loops in ops_avx512.c), chosen at run time.
 */
#include "model/ops.h"
#include "model/ops_x86.h"

#include "core/cpu.h"
#include "kernels/kernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

void ops_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    if (w) {
        for (int i = 0; i < n; i++)
            out[i] = (x[i] * scale) * w[i];
    } else {
        for (int i = 0; i < n; i++)
            out[i] = x[i] * scale;
    }
}

void ops_rope_cache(float *cs, int pos, int n_rot, float base, float freq_scale, const float *freq_factors)
{
    /* The angle is advanced by repeated multiplication, as ggml does, so the
     * rounding of each angle matches it exactly. */
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float t = freq_scale * (theta / ff);
        cs[2 * i] = cosf(t);
        cs[2 * i + 1] = sinf(t);
        theta *= theta_scale;
    }
}

void ops_rope_apply(float *x, const float *cs, int n_rot, int neox)
{
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        float *a = neox ? &x[i] : &x[2 * i];
        float *b = neox ? &x[i + half] : &x[2 * i + 1];
        const float x0 = *a, x1 = *b;
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/* GELU (tanh form) looked up by the f16 bits of the input, like ggml. */
static float gelu_table[1 << 16];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_init(void)
{
    const float a = 0.044715f, s2pi = 0.79788456080286535587989211986876f;
    for (int i = 0; i < (1 << 16); i++) {
        float x = kern_f16_to_f32((uint16_t)i);
        float y = 0.5f * x * (1.0f + tanhf(s2pi * x * (1.0f + a * x * x)));
        gelu_table[i] = kern_f16_to_f32(kern_f32_to_f16(y));
    }
}

void ops__geglu_avx2(float *g, const float *u, int n, const float *table);
void ops__swiglu_avx2(float *g, const float *u, int n);

static bool have_avx2(void)
{
    const struct lmd_cpu_features *f = lmd_cpu_features();
    return f->avx2 && f->fma && f->f16c;
}

void ops_geglu(float *g, const float *u, int n)
{
    pthread_once(&gelu_once, gelu_init);
    int i = 0;
    if (have_avx2()) {
        i = n - n % 8;
        ops__geglu_avx2(g, u, i, gelu_table);
    }
    for (; i < n; i++) {
        const float x = g[i];
        if (x <= -10.0f)
            g[i] = 0.0f;
        else if (x >= 10.0f)
            g[i] = x * u[i];
        else
            g[i] = gelu_table[kern_f32_to_f16(x)] * u[i];
    }
}

static inline float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* exp(x) as llama.cpp's x86 SIMD code computes it (ggml_v_expf, used by
 * its softmax and SiLU 8 lanes at a time on AVX2): x = n ln2 + b with n
 * rounded through the 1.5 * 2^23 shifter, a degree-5 polynomial in b, the
 * scale 2^n built in the exponent bits, and a slow path for |n| > 126.
 * Written lane by lane with the same fused operations, so it gives the
 * same bits on every ISA (ops_avx2.c has the vector form). */
float ops__expf_v(float x)
{
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = f_bits(z) << 23;
    const float k = bits_f(e + f_bits(1.0f));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f))
        return fmaf(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = bits_f(g + 0x7f000000u), s2 = bits_f(e - g);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* ggml_vec_swiglu_f32 on AVX2: SiLU through ggml_v_expf in groups of 8,
 * expf for the tail. */
void ops_swiglu(float *g, const float *u, int n)
{
    int i = 0;
    if (have_avx2()) {
        i = n - n % 8;
        ops__swiglu_avx2(g, u, i);
    }
    for (const int nv = n - n % 8; i < nv; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + ops__expf_v(0.0f - x)) * u[i];
    }
    for (; i < n; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                      int dk, int dv, float scale, float *scores, uint16_t *p16);

/* attend_scalar's softmax as a function: exp(score - max) in place over n
 * scores, returning the reciprocal of their sum. */
static float softmax_exp_scalar(float *scores, int n, float max)
{
    double sum = 0.0;
    for (int j0 = 0; j0 < n; j0 += 8) {
        float v[8] = {0};
        for (int l = 0; l < 8 && j0 + l < n; l++)
            v[l] = scores[j0 + l] = ops__expf_v(scores[j0 + l] - max);
        const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
        sum += (double)((a0 + a2) + (a1 + a3));
    }
    return (float)(1.0 / sum);
}

static void attend_scalar(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals,
                          int n, int dk, int dv, float scale, float *scores, uint16_t *p16)
{
    float max = -INFINITY;
    for (int j = 0; j < n; j++) {
        double s = 0.0;
        for (int d = 0; d < dk; d++)
            s += (double)(kern_f16_to_f32(q16[d]) * kern_f16_to_f32(keys[j][d]));
        scores[j] = (float)s * scale;
        if (scores[j] > max)
            max = scores[j];
    }
    /* llama.cpp's softmax on AVX2 (ggml_vec_soft_max_f32): exp in groups of
     * 8 through ggml_v_expf, each group summed in f32 as its horizontal add
     * does, the group sums in double. Its KV cache is padded to 256 cells
     * with masked (zero) ones, so the last group is a full one too. */
    double sum = 0.0;
    for (int j0 = 0; j0 < n; j0 += 8) {
        float v[8] = {0};
        for (int l = 0; l < 8 && j0 + l < n; l++)
            v[l] = scores[j0 + l] = ops__expf_v(scores[j0 + l] - max);
        const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
        sum += (double)((a0 + a2) + (a1 + a3));
    }
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < n; j++)
        p16[j] = kern_f32_to_f16(scores[j] * inv);
    memset(out, 0, (size_t)dv * sizeof *out);
    for (int j = 0; j < n; j++) {
        const float p = kern_f16_to_f32(p16[j]);
        for (int d = 0; d < dv; d++)
            out[d] += p * kern_f16_to_f32(vals[j][d]);
    }
}

static bool attend_avx2_fits(int dk, int dv) { return have_avx2() && dk % 8 == 0 && dv % 8 == 0; }

void ops_attend(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                int dk, int dv, float scale, float *scores, uint16_t *p16)
{
    if (attend_avx2_fits(dk, dv))
        ops__attend_avx2(out, q16, keys, vals, n, dk, dv, scale, scores, p16);
    else
        attend_scalar(out, q16, keys, vals, n, dk, dv, scale, scores, p16);
}

size_t ops_attend_group_work(int nq, int span, int dk) { return (size_t)nq * ((size_t)dk + (size_t)span); }

/* attend_scalar for several queries: each key and value row is widened once
 * per element for all the queries that see it (rows outer, queries inner);
 * per query the same operations in the same order. The probabilities are
 * kept as the f32 values of their f16 rounding, which is what attend_scalar
 * multiplies by. */
static void attend_group_scalar(float *const *out, const uint16_t *q16, int nq, const int *lo, const int *hi,
                                const uint16_t *const *keys, const uint16_t *const *vals, int span, int dk, int dv,
                                float scale, float *work)
{
    float *qf = work;                   /* [nq][dk] the queries widened */
    float *sc = work + (size_t)nq * dk; /* [nq][span] scores, then probabilities */
    for (int q = 0; q < nq; q++)
        for (int d = 0; d < dk; d++)
            qf[(size_t)q * dk + d] = kern_f16_to_f32(q16[(size_t)q * dk + d]);
    for (int j = 0; j < span; j++) {
        const uint16_t *k = keys[j];
        for (int q = 0; q < nq; q++) {
            if (j < lo[q] || j >= hi[q])
                continue;
            const float *qq = qf + (size_t)q * dk;
            double s = 0.0;
            for (int d = 0; d < dk; d++)
                s += (double)(qq[d] * kern_f16_to_f32(k[d]));
            sc[(size_t)q * span + j] = (float)s * scale;
        }
    }
    for (int q = 0; q < nq; q++) {
        float *s = sc + (size_t)q * span + lo[q];
        const int n = hi[q] - lo[q];
        float max = -INFINITY;
        for (int j = 0; j < n; j++)
            if (s[j] > max)
                max = s[j];
        const float inv = softmax_exp_scalar(s, n, max);
        for (int j = 0; j < n; j++)
            s[j] = kern_f16_to_f32(kern_f32_to_f16(s[j] * inv));
        memset(out[q], 0, (size_t)dv * sizeof *out[q]);
    }
    for (int j = 0; j < span; j++) {
        const uint16_t *v = vals[j];
        for (int q = 0; q < nq; q++) {
            if (j < lo[q] || j >= hi[q])
                continue;
            const float p = sc[(size_t)q * span + j];
            float *o = out[q];
            for (int d = 0; d < dv; d++)
                o[d] += p * kern_f16_to_f32(v[d]);
        }
    }
}

void ops_attend_group(float *const *out, const uint16_t *q16, int nq, const int *lo, const int *hi,
                      const uint16_t *const *keys, const uint16_t *const *vals, int span, int dk, int dv, float scale,
                      float *work)
{
    /* The AVX-512 loops give the AVX2 ones' bits (ops_avx512.c), so the
     * one-query AVX2 path stays the reference on both. Their file is built
     * for F, BW, VL and DQ, so all four are required. */
    const struct lmd_cpu_features *f = lmd_cpu_features();
    const bool avx512 = f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq;
    if (attend_avx2_fits(dk, dv))
        ops__attend_group_avx2(out, q16, nq, lo, hi, keys, vals, span, dk, dv, scale, work,
                               avx512 ? &ops__group_kern_avx512 : &ops__group_kern_avx2);
    else
        attend_group_scalar(out, q16, nq, lo, hi, keys, vals, span, dk, dv, scale, work);
}
