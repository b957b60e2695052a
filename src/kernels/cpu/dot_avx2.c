/*
 * AVX2 + FMA + F16C kernels (built with -mavx2 -mfma -mf16c): the AVX2
 * ISA table. Work in progress: entries not yet vectorized use the scalar
 * reference.
 */
#include "kernels/quants.h"

const struct kern__ops kern__ops_avx2 = {.name = "avx2", .type = {KERN__SCALAR_ENTRIES}};
