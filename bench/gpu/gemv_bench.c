/*
 * The decode GEMVs of the CUDA engine alone, on the matrices of a
 * Llama-3-8B decode step (WORKLOADS.md E3): for each weight type and
 * shape, the time of one launch and the bandwidth it reaches, against the
 * device-to-device copy measured in the same run. The weights are cycled
 * through copies that together exceed L2 many times over, so every launch
 * reads its matrix from memory as a decode step does. Knobs of the kernels
 * (LMD_CUDA_GEMV_SPLIT, LMD_CUDA_PREFETCH, LMD_CUDA_PDL) come from the
 * environment. Not run by ctest:
 *
 *   build/gemv_bench [types [m [iterations [shape]]]]
 *   build/gemv_bench q4_k,q6_k,f16 1 200
 *   build/gemv_bench q4_k 1 50 gate       # the shapes whose name holds "gate"
 */
#include "gguf/gguf.h"
#include "kernels/cuda/kcuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "gemv_bench: %s: %s\n", #x, cudaGetErrorString(e_));                                       \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

struct shape {
    const char *name;
    int64_t k;
    int n_parts;
    int64_t n[3];
};

/* One decode layer's products (Q/K/V and gate/up in one launch each, as
 * the engine issues them) and the vocabulary projection. */
static const struct shape SHAPES[] = {
    {"qkv 4096->4096+1024+1024", 4096, 3, {4096, 1024, 1024}},
    {"o 4096->4096", 4096, 1, {4096}},
    {"gate/up 4096->2x14336", 4096, 2, {14336, 14336}},
    {"down 14336->4096", 14336, 1, {4096}},
    {"output 4096->128256", 4096, 1, {128256}},
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static enum gguf_dtype type_named(const char *s)
{
    for (uint32_t t = 0; t < 64; t++)
        if (gguf_dtype_valid(t) && strcasecmp(gguf_dtype_name((enum gguf_dtype)t), s) == 0)
            return (enum gguf_dtype)t;
    fprintf(stderr, "gemv_bench: unknown type %s\n", s);
    exit(2);
}

/* Random bytes, with every 16-bit word's exponent kept finite, so float
 * rows and the fp16 scales of quantized blocks hold ordinary numbers. */
static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = next() & 0xBFFFBFFFBFFFBFFFull;
        memcpy(p + i, &v, 8);
    }
}

int main(int argc, char **argv)
{
    const char *types = argc > 1 ? argv[1] : "q4_k,q6_k,f16";
    const int m = argc > 2 ? atoi(argv[2]) : 1;
    const int iters = argc > 3 ? atoi(argv[3]) : 200;
    const char *only = argc > 4 ? argv[4] : NULL;
    if (m < 1 || m > KCU_GEMV_MAX_M || iters < 1) {
        fprintf(stderr, "usage: gemv_bench [types [m (1..%d) [iterations [shape]]]]\n", KCU_GEMV_MAX_M);
        return 2;
    }
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    CK(kcu_pdl_init(st, NULL));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms;

    /* The reference: a 1 GiB device-to-device copy (reads and writes). */
    const size_t cb = (size_t)1 << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb));
    CK(cudaMalloc(&cbuf, cb));
    CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e0, st));
    for (int i = 0; i < 5; i++)
        CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double copy_gbs = 2.0 * 5.0 * (double)cb / (ms * 1e-3) / 1e9;
    CK(cudaFree(ca));
    CK(cudaFree(cbuf));
    printf("device copy: %.0f GB/s (read + write)\n", copy_gbs);
    printf("m=%d iterations=%d LMD_CUDA_GEMV_SPLIT=%s LMD_CUDA_PREFETCH=%s\n", m, iters,
           getenv("LMD_CUDA_GEMV_SPLIT") ? getenv("LMD_CUDA_GEMV_SPLIT") : "-",
           getenv("LMD_CUDA_PREFETCH") ? getenv("LMD_CUDA_PREFETCH") : "-");
    printf("%-8s %-28s %10s %10s %8s\n", "type", "shape", "us", "GB/s", "of copy");

    char *list = strdup(types);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const enum gguf_dtype t = type_named(tok);
        const bool q8 = kcu_type_q8(t);
        for (size_t si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; si++) {
            const struct shape *sh = &SHAPES[si];
            if (only && !strstr(sh->name, only))
                continue;
            const size_t rb = (size_t)gguf_dtype_row_bytes(t, (uint64_t)sh->k);
            int64_t rows = 0;
            for (int p = 0; p < sh->n_parts; p++)
                rows += sh->n[p];
            const size_t bytes = rb * (size_t)rows;
            /* Copies enough to make 2 GiB: L2 (tens of MB) never holds the
             * matrix of the next launch. */
            int copies = (int)(((size_t)2 << 30) / bytes);
            if (copies < 2)
                copies = 2;
            if (copies > 64)
                copies = 64;
            uint8_t *host = malloc(bytes);
            fill(host, bytes);
            uint8_t *w;
            CK(cudaMalloc((void **)&w, bytes * (size_t)copies));
            CK(cudaMemcpy(w, host, bytes, cudaMemcpyHostToDevice));
            for (int c = 1; c < copies; c++)
                CK(cudaMemcpy(w + (size_t)c * bytes, w, bytes, cudaMemcpyDeviceToDevice));
            free(host);
            float *hx = malloc(sizeof(float) * (size_t)m * (size_t)sh->k), *x, *y;
            for (int64_t i = 0; i < m * sh->k; i++)
                hx[i] = (float)(next() >> 40) / 16777216.0f - 0.5f;
            CK(cudaMalloc((void **)&x, sizeof(float) * (size_t)m * (size_t)sh->k));
            CK(cudaMalloc((void **)&y, sizeof(float) * (size_t)m * (size_t)rows));
            CK(cudaMemcpy(x, hx, sizeof(float) * (size_t)m * (size_t)sh->k, cudaMemcpyHostToDevice));
            free(hx);
            int8_t *xq = NULL;
            void *xs = NULL;
            if (q8) {
                CK(cudaMalloc((void **)&xq, (size_t)m * (size_t)sh->k));
                CK(cudaMalloc(&xs, (size_t)m * (size_t)(sh->k / 32) * 8));
                CK(kcu_quantize_q8(st, x, m * sh->k, kcu_q8_per_256(t), xq, xs));
            }
            struct kcu_mm_part parts[KCU_MM_PARTS_MAX];
            for (int it = -10; it < iters; it++) {
                const uint8_t *wc = w + (size_t)((it + 10) % copies) * bytes;
                int64_t r0 = 0;
                for (int p = 0; p < sh->n_parts; p++) {
                    parts[p] = (struct kcu_mm_part){wc + (size_t)r0 * rb, sh->n[p], y + r0, rows, NULL};
                    r0 += sh->n[p];
                }
                if (it == 0)
                    CK(cudaEventRecord(e0, st));
                CK(q8 ? kcu_gemv_q8(st, t, rb, sh->k, xq, xs, m, parts, sh->n_parts)
                      : kcu_gemv(st, t, rb, sh->k, x, m, parts, sh->n_parts));
            }
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = ms * 1e3 / iters, gbs = (double)bytes / (us * 1e-6) / 1e9;
            printf("%-8s %-28s %10.2f %10.0f %7.0f%%\n", gguf_dtype_name(t), sh->name, us, gbs, 100.0 * gbs / copy_gbs);
            fflush(stdout);
            CK(cudaFree(w));
            CK(cudaFree(x));
            CK(cudaFree(y));
            cudaFree(xq);
            cudaFree(xs);
        }
    }
    free(list);
    CK(cudaStreamDestroy(st));
    return 0;
}
