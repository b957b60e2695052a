/*
 * Tensor data types: the one table of what each GGUF type is to the
 * kernels (block size, bytes, activation type), and the fp16 / bf16
 * conversions.
 *
 * The conversions are the portable, exact ones (round to nearest even,
 * subnormals kept, NaN stays NaN); the SIMD paths convert with F16C, which
 * rounds the same way. This file holds no kernels.
 */
#include "kernels/quants.h"

#include <string.h>

/* Q4_1 and Q5_1 dot against Q8_1 rather than Q8_0 because that is what
 * llama.cpp does: its Q8_1 carries s = d * sum(q) rounded to fp16, and the
 * minimum term m * s uses that rounded value, so only Q8_1 reproduces its
 * numbers. */
static const struct kern__traits g_traits[GGUF_DTYPE_COUNT] = {
    [GGUF_DTYPE_F32] = {"f32", 1, 4, GGUF_DTYPE_F32, true, true},
    [GGUF_DTYPE_F16] = {"f16", 1, 2, GGUF_DTYPE_F16, true, true},
    [GGUF_DTYPE_BF16] = {"bf16", 1, 2, GGUF_DTYPE_BF16, true, true},
    [GGUF_DTYPE_Q4_0] = {"q4_0", KERN_QK, 18, GGUF_DTYPE_Q8_0, true, false},
    [GGUF_DTYPE_Q4_1] = {"q4_1", KERN_QK, 20, GGUF_DTYPE_Q8_1, true, false},
    [GGUF_DTYPE_Q5_0] = {"q5_0", KERN_QK, 22, GGUF_DTYPE_Q8_0, true, false},
    [GGUF_DTYPE_Q5_1] = {"q5_1", KERN_QK, 24, GGUF_DTYPE_Q8_1, true, false},
    [GGUF_DTYPE_Q8_0] = {"q8_0", KERN_QK, 34, GGUF_DTYPE_Q8_0, true, true},
    [GGUF_DTYPE_Q8_1] = {"q8_1", KERN_QK, 36, GGUF_DTYPE_Q8_1, false, true},
    [GGUF_DTYPE_Q2_K] = {"q2_K", KERN_QK_K, 84, GGUF_DTYPE_Q8_K, true, false},
    [GGUF_DTYPE_Q3_K] = {"q3_K", KERN_QK_K, 110, GGUF_DTYPE_Q8_K, true, false},
    [GGUF_DTYPE_Q4_K] = {"q4_K", KERN_QK_K, 144, GGUF_DTYPE_Q8_K, true, false},
    [GGUF_DTYPE_Q5_K] = {"q5_K", KERN_QK_K, 176, GGUF_DTYPE_Q8_K, true, false},
    [GGUF_DTYPE_Q6_K] = {"q6_K", KERN_QK_K, 210, GGUF_DTYPE_Q8_K, true, false},
    [GGUF_DTYPE_Q8_K] = {"q8_K", KERN_QK_K, 292, GGUF_DTYPE_Q8_K, false, true},
};

const struct kern__traits *kern__traits(enum gguf_dtype t)
{
    static const struct kern__traits none = {"unsupported", 0, 0, GGUF_DTYPE_F32, false, false};
    if ((unsigned)t >= GGUF_DTYPE_COUNT || g_traits[t].block == 0)
        return &none;
    return &g_traits[t];
}

bool kern_dtype_supported(enum gguf_dtype t) { return kern__traits(t)->weight; }

enum gguf_dtype kern_dot_type(enum gguf_dtype t) { return kern__traits(t)->dot; }

int64_t kern_block_size(enum gguf_dtype t) { return kern__traits(t)->block; }

size_t kern_row_bytes(enum gguf_dtype t, int64_t n)
{
    const struct kern__traits *tr = kern__traits(t);
    if (tr->block == 0 || n % tr->block != 0)
        return 0;
    return kern__row_bytes(t, n);
}

float kern_f16_to_f32(uint16_t h) { return kern__h2f(h); }

uint16_t kern_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffffu;
    if (u >= 0x47800000u) {
        /* |f| >= 65536, inf or NaN. (Values in [65520, 65536) round to
         * inf below, through the carry into the exponent.) */
        return (uint16_t)(sign | (u > 0x7f800000u ? 0x7e00 : 0x7c00));
    }
    if (u < 0x38800000u) {
        /* The result is subnormal or zero: let the FPU round f to a
         * multiple of 2^-24 by adding 0.5 (ulp 2^-24), then read the
         * mantissa bits. Needs the default round-to-nearest-even mode. */
        float a, magic = 0.5f;
        memcpy(&a, &u, 4);
        a += magic;
        uint32_t ua, um;
        memcpy(&ua, &a, 4);
        memcpy(&um, &magic, 4);
        return (uint16_t)(sign | (ua - um));
    }
    /* Normal: rebias the exponent and round the 13 dropped bits to
     * nearest even; a carry out of the mantissa bumps the exponent. */
    uint32_t odd = (u >> 13) & 1;
    u += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
    return (uint16_t)(sign | (u >> 13));
}

float kern_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kern_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* NaN: keep it NaN (quiet) */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
