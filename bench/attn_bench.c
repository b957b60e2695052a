/*
 * Attention of a causal prefill on one core: the one-query path (ops_attend,
 * one token and one head at a time) against the grouped one
 * (ops_attend_group: the query heads of one KV head times `tokens`
 * consecutive tokens per call), on random f16 keys and values, in thread
 * CPU time (best of the repetitions), so a busy machine disturbs it less
 * than wall time. LMD_CPU=avx2|scalar picks the path as everywhere. Not run
 * by ctest:
 *
 *   build/attn_bench [group [head_dim [positions [tokens [reps]]]]]
 *   build/attn_bench 4 256 512 4     # default model: 4 heads on 1 KV head
 *   build/attn_bench 8 64 512 2      # the 1.1B Llama shape: 32 heads on 4
 */
#include "core/cpu.h"
#include "kernels/kernels.h"
#include "model/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint16_t rnd_f16(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return kern_f32_to_f16((float)(rng >> 40) / 16777216.0f - 0.5f);
}

int main(int argc, char **argv)
{
    const int group = argc > 1 ? atoi(argv[1]) : 4, dk = argc > 2 ? atoi(argv[2]) : 256;
    const int n = argc > 3 ? atoi(argv[3]) : 512, tokens = argc > 4 ? atoi(argv[4]) : 4;
    const int reps = argc > 5 ? atoi(argv[5]) : 5;
    if (group < 1 || dk < 8 || n < 1 || tokens < 1 || reps < 1) {
        fprintf(stderr, "usage: attn_bench [group [head_dim [positions [tokens [reps]]]]]\n");
        return 2;
    }
    const int nq = group * tokens;
    uint16_t *k = malloc((size_t)n * dk * 2), *v = malloc((size_t)n * dk * 2);
    uint16_t *q = malloc((size_t)n * group * dk * 2), *p16 = malloc((size_t)n * 2);
    const uint16_t **kp = malloc((size_t)n * sizeof *kp), **vp = malloc((size_t)n * sizeof *vp);
    float *out = malloc((size_t)n * group * dk * sizeof *out), *scores = malloc((size_t)n * sizeof *scores);
    float *work = malloc(ops_attend_group_work(nq, n, dk) * sizeof *work);
    float **o = malloc((size_t)nq * sizeof *o);
    int *lo = malloc((size_t)nq * sizeof *lo), *hi = malloc((size_t)nq * sizeof *hi);
    if (!k || !v || !q || !p16 || !kp || !vp || !out || !scores || !work || !o || !lo || !hi) {
        fprintf(stderr, "attn_bench: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)n * dk; i++) {
        k[i] = rnd_f16();
        v[i] = rnd_f16();
    }
    for (size_t i = 0; i < (size_t)n * group * dk; i++)
        q[i] = rnd_f16();
    for (int j = 0; j < n; j++) {
        kp[j] = k + (size_t)j * dk;
        vp[j] = v + (size_t)j * dk;
    }
    double best_one = 1e30, best_group = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_s();
        for (int t = 0; t < n; t++)
            for (int g = 0; g < group; g++) {
                const size_t row = ((size_t)t * group + (size_t)g) * (size_t)dk;
                ops_attend(out + row, q + row, kp, vp, t + 1, dk, dk, 0.125f, scores, p16);
            }
        double t1 = cpu_s();
        for (int t0b = 0; t0b < n; t0b += tokens) {
            const int te = t0b + tokens < n ? t0b + tokens : n;
            int m = 0;
            for (int t = t0b; t < te; t++)
                for (int g = 0; g < group; g++, m++) {
                    lo[m] = 0;
                    hi[m] = t + 1;
                    o[m] = out + ((size_t)t * group + (size_t)g) * (size_t)dk;
                }
            ops_attend_group(o, q + (size_t)t0b * group * dk, m, lo, hi, kp, vp, te, dk, dk, 0.125f, work);
        }
        double t2 = cpu_s();
        if (t1 - t0 < best_one)
            best_one = t1 - t0;
        if (t2 - t1 < best_group)
            best_group = t2 - t1;
    }
    char isa[128];
    lmd_cpu_describe(isa, sizeof isa);
    printf("group %d, head dim %d, %d positions, %d tokens per call (%s): one query at a time %.2f ms, grouped "
           "%.2f ms (%.2fx)\n",
           group, dk, n, tokens, isa, best_one * 1e3, best_group * 1e3, best_one / best_group);
    free(k);
    free(v);
    free(q);
    free(p16);
    free(kp);
    free(vp);
    free(out);
    free(scores);
    free(work);
    free(o);
    free(lo);
    free(hi);
    return 0;
}
