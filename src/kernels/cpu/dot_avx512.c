/*
 * AVX-512 kernels: the AVX-512 ISA table. Work in progress: entries not
 * yet vectorized use the scalar reference.
 */
#include "kernels/quants.h"

const struct kern__ops kern__ops_avx512 = {.name = "avx512", .type = {KERN__SCALAR_ENTRIES}};
