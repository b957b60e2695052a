/*
 * The AVX2 ISA table: which AVX2 kernel serves each type. Every weight
 * type has an AVX2 dot product; dequantization (not on the hot path:
 * embedding rows, debugging) and the BF16 quantizer stay scalar.
 *
 * A call takes up to 4 weight rows (done one after another) x 8
 * activation rows for the quantized types, x 4 for the float types (two
 * accumulators per pair would not fit 8 rows in 16 registers).
 */
#include "kernels/quants.h"

#define W(T, E) [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, NULL, kern__dot_##T##_avx2, 4, 8}

const struct kern__ops kern__ops_avx2 = {
    .name = "avx2",
    .type =
        {
            [GGUF_DTYPE_F32] = {kern__dequant_f32_scalar, kern__quant_f32_scalar, kern__dot_f32_avx2, 4, 4},
            [GGUF_DTYPE_F16] = {kern__dequant_f16_scalar, kern__quant_f16_avx2, kern__dot_f16_avx2, 4, 4},
            [GGUF_DTYPE_BF16] = {kern__dequant_bf16_scalar, kern__quant_bf16_scalar, kern__dot_bf16_avx2, 4, 4},
            W(q4_0, Q4_0),
            W(q4_1, Q4_1),
            W(q5_0, Q5_0),
            W(q5_1, Q5_1),
            [GGUF_DTYPE_Q8_0] = {kern__dequant_q8_0_scalar, kern__quant_q8_0_avx2, kern__dot_q8_0_avx2, 4, 8},
            [GGUF_DTYPE_Q8_1] = {kern__dequant_q8_1_scalar, kern__quant_q8_1_avx2, NULL, 0, 0},
            W(q2_K, Q2_K),
            W(q3_K, Q3_K),
            [GGUF_DTYPE_Q4_K] = {kern__dequant_q4_K_scalar, NULL, kern__dot_q4_K_avx2, 4, 8, kern__rp_q4_K_avx2},
            W(q5_K, Q5_K),
            [GGUF_DTYPE_Q6_K] = {kern__dequant_q6_K_scalar, NULL, kern__dot_q6_K_avx2, 4, 8, kern__rp_q6_K_avx2},
            [GGUF_DTYPE_Q8_K] = {kern__dequant_q8_K_scalar, kern__quant_q8_K_avx2, NULL, 0, 0},
        },
};
