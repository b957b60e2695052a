/*
 * Kernel dispatch: picks the ISA table once from the CPU features, then
 * routes every call by data type through that table. This is the only
 * place that looks at a data type to choose code; matmul.c goes through
 * the same table.
 *
 * Not here: the kernels themselves (cpu/), the type facts (types.c), the
 * matmul driver (matmul.c).
 */
#include "kernels/quants.h"

#include "core/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

static const struct kern__ops *_Atomic g_ops;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static bool isa_available(const struct kern__ops *ops)
{
    const struct lmd_cpu_features *f = lmd_cpu_features();
    if (ops == &kern__ops_avx512)
        return f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq && f->avx512vnni && f->avx2 && f->fma && f->f16c;
    if (ops == &kern__ops_avx2)
        return f->avx2 && f->fma && f->f16c;
    return true;
}

/* Best first. */
static const struct kern__ops *const g_all[] = {&kern__ops_avx512, &kern__ops_avx2, &kern__ops_scalar};

static void select_isa(void)
{
    for (size_t i = 0; i < sizeof g_all / sizeof g_all[0]; i++)
        if (isa_available(g_all[i])) {
            atomic_store(&g_ops, g_all[i]);
            return;
        }
}

void kern_init(void) { pthread_once(&g_once, select_isa); }

const struct kern__ops *kern__ops(void)
{
    const struct kern__ops *ops = atomic_load_explicit(&g_ops, memory_order_acquire);
    if (__builtin_expect(ops == NULL, 0)) {
        kern_init();
        ops = atomic_load(&g_ops);
    }
    return ops;
}

const char *kern_isa(void) { return kern__ops()->name; }

int kern_set_isa(const char *name)
{
    kern_init();
    for (size_t i = 0; i < sizeof g_all / sizeof g_all[0]; i++)
        if (strcmp(g_all[i]->name, name) == 0) {
            if (!isa_available(g_all[i]))
                return LMD_ENOTSUP;
            atomic_store(&g_ops, g_all[i]);
            return 0;
        }
    return LMD_EINVAL;
}

void kern_dequant_row(enum gguf_dtype t, const void *src, float *dst, int64_t n)
{
    const struct kern__traits *tr = kern__traits(t);
    LMD_ASSERT(tr->block > 0 && n % tr->block == 0, "kern_dequant_row: bad type or length");
    kern__ops()->type[t].dequant(src, dst, n);
}

void kern_quantize_row(enum gguf_dtype t, const float *src, void *dst, int64_t n)
{
    const struct kern__traits *tr = kern__traits(t);
    LMD_ASSERT(tr->activation && n % tr->block == 0, "kern_quantize_row: bad type or length");
    kern__ops()->type[t].quant(src, dst, n);
}

float kern_vec_dot(enum gguf_dtype t, int64_t n, const void *w, const void *x)
{
    const struct kern__traits *tr = kern__traits(t);
    LMD_ASSERT(tr->weight && n % tr->block == 0, "kern_vec_dot: bad type or length");
    float y;
    struct kern__tile tile = {.w = w, .nw = 1, .x = x, .nx = 1, .y = &y, .ldy = 1};
    kern__ops()->type[t].dot(n, &tile);
    return y;
}
