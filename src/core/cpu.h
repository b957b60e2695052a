/*
 * Run-time CPU feature detection. The kernels pick their SIMD path from
 * this once at start-up; `lmd --version` prints it.
 */
#pragma once

#include <stdbool.h>

struct lmd_cpu_features {
    bool avx2;
    bool fma;
    bool f16c;
    bool avx512f;
    bool avx512bw;
    bool avx512vl;
    bool avx512dq;
    bool avx512vnni;
    bool avx512bf16;
    bool avxvnni;
};

/* Detected once, then cached. LMD_CPU=scalar|avx2|avx512 in the environment
 * caps what is reported, to test or compare paths on one machine. */
const struct lmd_cpu_features *lmd_cpu_features(void);

/* Writes e.g. "avx2 fma f16c" into buf. */
void lmd_cpu_describe(char *buf, unsigned cap);

/* Number of online CPUs (>= 1). */
int lmd_cpu_count(void);
