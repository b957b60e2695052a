/*
 * CPU feature detection through the compiler's cpuid wrapper
 * (__builtin_cpu_supports), which also checks that the OS saves the wider
 * register state (XSAVE) before it reports AVX/AVX-512.
 */
#include "core/cpu.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct lmd_cpu_features g_feat;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* Bit `bit` of register `reg` (0 EAX, 1 EBX, 2 ECX, 3 EDX) of CPUID leaf/subleaf. */
static bool cpuid_bit(unsigned leaf, unsigned sub, int reg, int bit)
{
    unsigned r[4] = {0};
    if (!__get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3]))
        return false;
    return (r[reg] >> bit) & 1;
}
#endif

static void detect(void)
{
    __builtin_cpu_init();
#if defined(__x86_64__) || defined(__i386__)
    g_feat.avx2 = __builtin_cpu_supports("avx2");
    g_feat.fma = __builtin_cpu_supports("fma");
    g_feat.f16c = cpuid_bit(1, 0, 2, 29); /* ECX.F16C (clang's builtin does not know "f16c") */
    g_feat.avx512f = __builtin_cpu_supports("avx512f");
    g_feat.avx512bw = __builtin_cpu_supports("avx512bw");
    g_feat.avx512vl = __builtin_cpu_supports("avx512vl");
    g_feat.avx512dq = __builtin_cpu_supports("avx512dq");
    g_feat.avx512vnni = __builtin_cpu_supports("avx512vnni");
    g_feat.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    g_feat.avxvnni = cpuid_bit(7, 1, 0, 4); /* EAX.AVX-VNNI, likewise */
#endif
    const char *cap = getenv("LMD_CPU");
    if (cap && strcmp(cap, "scalar") == 0) {
        memset(&g_feat, 0, sizeof g_feat);
    } else if (cap && strcmp(cap, "avx2") == 0) {
        g_feat.avx512f = g_feat.avx512bw = g_feat.avx512vl = g_feat.avx512dq = false;
        g_feat.avx512vnni = g_feat.avx512bf16 = false;
    }
}

const struct lmd_cpu_features *lmd_cpu_features(void)
{
    pthread_once(&g_once, detect);
    return &g_feat;
}

void lmd_cpu_describe(char *buf, unsigned cap)
{
    const struct lmd_cpu_features *f = lmd_cpu_features();
    struct {
        bool on;
        const char *name;
    } list[] = {
        {f->avx2, "avx2"},
        {f->fma, "fma"},
        {f->f16c, "f16c"},
        {f->avx512f, "avx512f"},
        {f->avx512bw, "avx512bw"},
        {f->avx512vl, "avx512vl"},
        {f->avx512dq, "avx512dq"},
        {f->avx512vnni, "avx512vnni"},
        {f->avx512bf16, "avx512bf16"},
        {f->avxvnni, "avxvnni"},
    };
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        if (!list[i].on)
            continue;
        int w = snprintf(buf + n, cap - n, "%s%s", n ? " " : "", list[i].name);
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, cap, "none (scalar kernels)");
}

int lmd_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}
