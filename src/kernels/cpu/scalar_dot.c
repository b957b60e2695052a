/*
 * Scalar reference dot products, one per weight type against its
 * activation type, and the scalar ISA table.
 *
 * Each block's integer products are summed exactly in int32, then scaled
 * and added to one f32 accumulator, block after block, the way ggml's
 * generic code does; the SIMD paths sum in a different order and the tests
 * hold them to a relative bound against this. Not tuned: this path exists
 * to be obviously right.
 */
#include "kernels/quants.h"

/* Wrap a one-pair dot into the tile signature of struct kern__type_ops. */
#define KERN__TILE_FROM_PAIR(T, pair)                                                                                  \
    void kern__dot_##T##_scalar(int64_t n, const struct kern__tile *t)                                                 \
    {                                                                                                                  \
        for (int j = 0; j < t->nx; j++)                                                                                \
            for (int i = 0; i < t->nw; i++)                                                                            \
                t->y[j * t->ldy + i] =                                                                                 \
                    pair(n, (const char *)t->w + (size_t)i * t->ws, (const char *)t->x + (size_t)j * t->xs);           \
    }

static float dot_f32(int64_t n, const void *vw, const void *vx)
{
    const float *w = vw, *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n; i++)
        s += w[i] * x[i];
    return s;
}

static float dot_f16(int64_t n, const void *vw, const void *vx)
{
    const uint16_t *w = vw, *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n; i++)
        s += kern__h2f(w[i]) * kern__h2f(x[i]);
    return s;
}

static float dot_bf16(int64_t n, const void *vw, const void *vx)
{
    const uint16_t *w = vw, *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n; i++)
        s += kern_bf16_to_f32(w[i]) * kern_bf16_to_f32(x[i]);
    return s;
}

static inline uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float dot_q4_0(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q4_0 *w = vw;
    const struct kern__q8_0 *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        s += (float)sum * (kern__h2f(w[b].d) * kern__h2f(x[b].d));
    }
    return s;
}

static float dot_q4_1(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q4_1 *w = vw;
    const struct kern__q8_1 *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (w[b].qs[j] & 0xF) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        s += (kern__h2f(w[b].d) * kern__h2f(x[b].d)) * (float)sum + kern__h2f(w[b].m) * kern__h2f(x[b].s);
    }
    return s;
}

static float dot_q5_0(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q5_0 *w = vw;
    const struct kern__q8_0 *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK; b++) {
        uint32_t qh = load_u32(w[b].qh);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = ((w[b].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4)) - 16;
            int q1 = ((w[b].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
            sum += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
        }
        s += (float)sum * (kern__h2f(w[b].d) * kern__h2f(x[b].d));
    }
    return s;
}

static float dot_q5_1(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q5_1 *w = vw;
    const struct kern__q8_1 *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK; b++) {
        uint32_t qh = load_u32(w[b].qh);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (w[b].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int q1 = (w[b].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            sum += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
        }
        s += (kern__h2f(w[b].d) * kern__h2f(x[b].d)) * (float)sum + kern__h2f(w[b].m) * kern__h2f(x[b].s);
    }
    return s;
}

static float dot_q8_0(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q8_0 *w = vw;
    const struct kern__q8_0 *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += w[b].qs[j] * x[b].qs[j];
        s += (float)sum * (kern__h2f(w[b].d) * kern__h2f(x[b].d));
    }
    return s;
}

/* The K-quants: sum(sc_g * sum_g(q * y)) exactly in int32 per super-block,
 * then d_w * d_y times that, minus the mins term computed from bsums. */

static float dot_q2_K(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q2_K *w = vw;
    const struct kern__q8_K *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK_K; b++) {
        const uint8_t *q = w[b].qs;
        const int8_t *y = x[b].qs;
        int isum = 0, msum = 0, g = 0;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int k = 0; k < 2; k++, g++, y += 16) {
                    int p = 0;
                    for (int l = 0; l < 16; l++)
                        p += ((q[16 * k + l] >> shift) & 3) * y[l];
                    isum += (w[b].scales[g] & 0xF) * p;
                    msum += (w[b].scales[g] >> 4) * x[b].bsums[g];
                }
        s += x[b].d * kern__h2f(w[b].d) * (float)isum - x[b].d * kern__h2f(w[b].dmin) * (float)msum;
    }
    return s;
}

static float dot_q3_K(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q3_K *w = vw;
    const struct kern__q8_K *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK_K; b++) {
        int8_t sc[16];
        kern__q3k_scales(w[b].scales, sc);
        const uint8_t *q = w[b].qs;
        const int8_t *y = x[b].qs;
        int isum = 0, g = 0, plane = 0;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2, plane++)
                for (int k = 0; k < 2; k++, g++, y += 16) {
                    int p = 0;
                    for (int l = 0; l < 16; l++) {
                        int lo = (q[16 * k + l] >> shift) & 3;
                        int hi = (w[b].hmask[16 * k + l] >> plane) & 1;
                        p += (lo - (hi ? 0 : 4)) * y[l];
                    }
                    isum += (sc[g] - 32) * p;
                }
        s += x[b].d * kern__h2f(w[b].d) * (float)isum;
    }
    return s;
}

static float dot_q4_K(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q4_K *w = vw;
    const struct kern__q8_K *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK_K; b++) {
        const uint8_t *q = w[b].qs;
        const int8_t *y = x[b].qs;
        int isum = 0, msum = 0;
        for (int g = 0; g < 8; g += 2, q += 32, y += 64) {
            uint8_t sc1, m1, sc2, m2;
            kern__scale_min_k4(g, w[b].scales, &sc1, &m1);
            kern__scale_min_k4(g + 1, w[b].scales, &sc2, &m2);
            int p1 = 0, p2 = 0;
            for (int l = 0; l < 32; l++) {
                p1 += (q[l] & 0xF) * y[l];
                p2 += (q[l] >> 4) * y[l + 32];
            }
            isum += sc1 * p1 + sc2 * p2;
            msum +=
                m1 * (x[b].bsums[2 * g] + x[b].bsums[2 * g + 1]) + m2 * (x[b].bsums[2 * g + 2] + x[b].bsums[2 * g + 3]);
        }
        s += x[b].d * kern__h2f(w[b].d) * (float)isum - x[b].d * kern__h2f(w[b].dmin) * (float)msum;
    }
    return s;
}

static float dot_q5_K(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q5_K *w = vw;
    const struct kern__q8_K *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK_K; b++) {
        const uint8_t *q = w[b].qs, *qh = w[b].qh;
        const int8_t *y = x[b].qs;
        int isum = 0, msum = 0;
        for (int g = 0; g < 8; g += 2, q += 32, y += 64) {
            uint8_t sc1, m1, sc2, m2;
            kern__scale_min_k4(g, w[b].scales, &sc1, &m1);
            kern__scale_min_k4(g + 1, w[b].scales, &sc2, &m2);
            int p1 = 0, p2 = 0;
            for (int l = 0; l < 32; l++) {
                p1 += ((q[l] & 0xF) | (((qh[l] >> g) & 1) << 4)) * y[l];
                p2 += ((q[l] >> 4) | (((qh[l] >> (g + 1)) & 1) << 4)) * y[l + 32];
            }
            isum += sc1 * p1 + sc2 * p2;
            msum +=
                m1 * (x[b].bsums[2 * g] + x[b].bsums[2 * g + 1]) + m2 * (x[b].bsums[2 * g + 2] + x[b].bsums[2 * g + 3]);
        }
        s += x[b].d * kern__h2f(w[b].d) * (float)isum - x[b].d * kern__h2f(w[b].dmin) * (float)msum;
    }
    return s;
}

static float dot_q6_K(int64_t n, const void *vw, const void *vx)
{
    const struct kern__q6_K *w = vw;
    const struct kern__q8_K *x = vx;
    float s = 0;
    for (int64_t b = 0; b < n / KERN_QK_K; b++) {
        const uint8_t *ql = w[b].ql, *qh = w[b].qh;
        const int8_t *sc = w[b].scales, *y = x[b].qs;
        int isum = 0;
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
            int p[8] = {0};
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                p[is + 0] += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * y[l];
                p[is + 2] += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * y[l + 32];
                p[is + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * y[l + 64];
                p[is + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * y[l + 96];
            }
            for (int g = 0; g < 8; g++)
                isum += sc[g] * p[g];
        }
        s += x[b].d * kern__h2f(w[b].d) * (float)isum;
    }
    return s;
}

KERN__TILE_FROM_PAIR(f32, dot_f32)
KERN__TILE_FROM_PAIR(f16, dot_f16)
KERN__TILE_FROM_PAIR(bf16, dot_bf16)
KERN__TILE_FROM_PAIR(q4_0, dot_q4_0)
KERN__TILE_FROM_PAIR(q4_1, dot_q4_1)
KERN__TILE_FROM_PAIR(q5_0, dot_q5_0)
KERN__TILE_FROM_PAIR(q5_1, dot_q5_1)
KERN__TILE_FROM_PAIR(q8_0, dot_q8_0)
KERN__TILE_FROM_PAIR(q2_K, dot_q2_K)
KERN__TILE_FROM_PAIR(q3_K, dot_q3_K)
KERN__TILE_FROM_PAIR(q4_K, dot_q4_K)
KERN__TILE_FROM_PAIR(q5_K, dot_q5_K)
KERN__TILE_FROM_PAIR(q6_K, dot_q6_K)

const struct kern__ops kern__ops_scalar = {.name = "scalar", .type = {KERN__SCALAR_ENTRIES}};
