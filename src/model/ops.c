/*
 * f32 operations of the forward pass (see ops.h). The attention inner loops
 * have an AVX2/F16C version in ops_avx2.c, chosen at run time.
 */
#include "model/ops.h"

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

void ops_geglu(float *g, const float *u, int n)
{
    pthread_once(&gelu_once, gelu_init);
    for (int i = 0; i < n; i++) {
        const float x = g[i];
        if (x <= -10.0f)
            g[i] = 0.0f;
        else if (x >= 10.0f)
            g[i] = x * u[i];
        else
            g[i] = gelu_table[kern_f32_to_f16(x)] * u[i];
    }
}

void ops_swiglu(float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

void ops__attend_avx2(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals,
                      int n, int dk, int dv, float scale, float *scores, uint16_t *p16);

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
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - max);
        sum += scores[j];
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

void ops_attend(float *out, const uint16_t *q16, const uint16_t *const *keys, const uint16_t *const *vals, int n,
                int dk, int dv, float scale, float *scores, uint16_t *p16)
{
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (f->avx2 && f->fma && f->f16c && dk % 8 == 0 && dv % 8 == 0)
        ops__attend_avx2(out, q16, keys, vals, n, dk, dv, scale, scores, p16);
    else
        attend_scalar(out, q16, keys, vals, n, dk, dv, scale, scores, p16);
}
