/*
 * Developer tool: lmd's kernels against ggml's, bit for bit, on this CPU.
 *
 * llama.cpp (through llama-cpp-python) is lmd's reference; its CPU library
 * exports the very activation quantizers and dot products its matmuls use.
 * This program loads that library at run time, quantizes random weight rows
 * with ggml's reference quantizers, random activations (with outliers, as in
 * Gemma's residual stream) with both implementations, and compares the
 * quantized activations byte for byte and the dot products bit for bit.
 * Run with `make parity` (needs `make deps-peer`). Not part of CI: CI has no
 * llama.cpp. Prints one line per type; exits 1 on any mismatch.
 */
#include "kernels/kernels.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*quant_fn)(const float *x, void *y, int64_t k);
typedef void (*dot_fn)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);

struct pcase {
    enum gguf_dtype type;
    const char *wquant; /* ggml reference quantizer for weights (libggml-base) */
    const char *aquant; /* ggml activation quantizer (libggml-cpu) */
    const char *dot;    /* ggml vec_dot (libggml-cpu) */
};

static const struct pcase cases[] = {
    {GGUF_DTYPE_Q4_0, "quantize_row_q4_0_ref", "quantize_row_q8_0", "ggml_vec_dot_q4_0_q8_0"},
    {GGUF_DTYPE_Q4_1, "quantize_row_q4_1_ref", "quantize_row_q8_1", "ggml_vec_dot_q4_1_q8_1"},
    {GGUF_DTYPE_Q5_0, "quantize_row_q5_0_ref", "quantize_row_q8_0", "ggml_vec_dot_q5_0_q8_0"},
    {GGUF_DTYPE_Q5_1, "quantize_row_q5_1_ref", "quantize_row_q8_1", "ggml_vec_dot_q5_1_q8_1"},
    {GGUF_DTYPE_Q8_0, "quantize_row_q8_0_ref", "quantize_row_q8_0", "ggml_vec_dot_q8_0_q8_0"},
    {GGUF_DTYPE_Q2_K, "quantize_row_q2_K_ref", "quantize_row_q8_K", "ggml_vec_dot_q2_K_q8_K"},
    {GGUF_DTYPE_Q3_K, "quantize_row_q3_K_ref", "quantize_row_q8_K", "ggml_vec_dot_q3_K_q8_K"},
    {GGUF_DTYPE_Q4_K, "quantize_row_q4_K_ref", "quantize_row_q8_K", "ggml_vec_dot_q4_K_q8_K"},
    {GGUF_DTYPE_Q5_K, "quantize_row_q5_K_ref", "quantize_row_q8_K", "ggml_vec_dot_q5_K_q8_K"},
    {GGUF_DTYPE_Q6_K, "quantize_row_q6_K_ref", "quantize_row_q8_K", "ggml_vec_dot_q6_K_q8_K"},
};

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((int)(*s >> 9) % 20000 - 10000) / 1000.0f;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ggml_parity LIBDIR (the folder with libggml-cpu.so and libggml-base.so)\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/libggml-base.so", argv[1]);
    void *base = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    snprintf(path, sizeof path, "%s/libggml-cpu.so", argv[1]);
    void *cpu = dlopen(path, RTLD_NOW);
    if (!base || !cpu) {
        fprintf(stderr, "ggml_parity: %s\n", dlerror());
        return 2;
    }
    ((void (*)(void))dlsym(cpu, "ggml_cpu_init"))();
    kern_init();
    printf("lmd kernels: %s\n", kern_isa());
    const int n = 2048, rows = 32, trials = 100;
    float *x = malloc(sizeof(float) * (size_t)n), *w = malloc(sizeof(float) * (size_t)n);
    unsigned char *wq = malloc((size_t)n * 4), *ag = malloc((size_t)n * 4), *al = malloc((size_t)n * 4);
    int bad = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct pcase *pc = &cases[c];
        quant_fn wquant = (quant_fn)dlsym(base, pc->wquant);
        quant_fn aquant = (quant_fn)dlsym(cpu, pc->aquant);
        dot_fn dot = (dot_fn)dlsym(cpu, pc->dot);
        if (!wquant || !aquant || !dot) {
            printf("%-5s  missing ggml symbol\n", gguf_dtype_name(pc->type));
            bad = 1;
            continue;
        }
        enum gguf_dtype at = kern_dot_type(pc->type);
        size_t ab = gguf_dtype_row_bytes(at, (uint64_t)n);
        int qmis = 0, dmis = 0;
        double maxrel = 0;
        unsigned s = 12345u + (unsigned)c;
        for (int t = 0; t < trials; t++) {
            for (int i = 0; i < n; i++)
                x[i] = frand(&s);
            if (t % 2)
                for (int i = 0; i < n; i += 97)
                    x[i] *= 3000.0f; /* outliers */
            aquant(x, ag, n);
            kern_quantize_row(at, x, al, n);
            qmis += memcmp(ag, al, ab) != 0;
            for (int r = 0; r < rows; r++) {
                for (int i = 0; i < n; i++)
                    w[i] = frand(&s) * 0.01f;
                wquant(w, wq, n);
                float sg, sl;
                dot(n, &sg, 0, wq, 0, ag, 0, 1);
                sl = kern_vec_dot(pc->type, n, wq, ag); /* same activations: isolates the dot */
                if (memcmp(&sg, &sl, sizeof sg) != 0) {
                    dmis++;
                    double rel = fabs((double)sg - sl) / (fabs((double)sg) + 1e-30);
                    maxrel = rel > maxrel ? rel : maxrel;
                }
            }
        }
        printf("%-5s x %-5s activation rows differing %3d/%d, dot products differing %4d/%d (max rel %.2g)\n",
               gguf_dtype_name(pc->type), gguf_dtype_name(at), qmis, trials, dmis, trials * rows, maxrel);
        bad |= qmis || dmis;
    }
    free(x);
    free(w);
    free(wq);
    free(ag);
    free(al);
    return bad;
}
