/*
 * Kernel launches with programmatic dependent launch (PDL, sm_90 and up).
 *
 * A decode step at batch 1 is about ten launches a layer, most of them a
 * few microseconds of work; between two of them the GPU drains the first
 * grid, flushes its writes and only then starts the next one, a gap of
 * a microsecond or two that no kernel fills. With PDL the next grid is
 * started while the previous one still runs: every kernel here says at
 * its start that its dependents may launch (kcu_dep_launch), and waits
 * for its predecessor's results (kcu_dep_wait) before it reads or writes
 * anything the predecessor touches. What a kernel reads before the wait
 * may only be memory no grid of the step writes: the weights, and the
 * step's indices (positions, sequences, block tables), which are copied in
 * before the step's first kernel and so before any of its kernels starts.
 * L2 prefetches (hints: they write no register) may name anything. The
 * matrix-vector products use that time to pull their first rows into L2
 * while the kernel before them finishes; the norms load their weights,
 * RoPE its cache block, the attention its positions and first K/V rows.
 *
 * The rule that keeps this correct: every kernel launched through
 * kcu_launch calls kcu_dep_wait before its first access to activations,
 * K/V blocks or outputs (blocks with nothing to do may leave without it,
 * as long as one block of the grid always waits). Waiting for the
 * predecessor is enough for everything older too: a grid completes only
 * after its own wait returned, that is after its predecessor completed,
 * and so on up the stream. Kernels launched otherwise (cuBLAS's) are
 * ordinary stream dependencies on both sides.
 *
 * PDL is used only when the code running on the device was compiled with
 * the wait in it (a probe kernel reports __CUDA_ARCH__ once: a binary
 * built for an older architecture and run on a newer GPU runs code
 * without it) and LMD_CUDA_PDL is not 0.
 */
#pragma once

#include <cuda_runtime.h>
#include <utility>

__device__ __forceinline__ void kcu_dep_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void kcu_dep_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Pull [p, p + bytes) towards L2, 128 bytes a lane-step of a warp: a hint,
 * no register is written and nothing waits for it. */
__device__ __forceinline__ void kcu_prefetch_l2(const void *p, size_t bytes, int lane)
{
    const char *c = (const char *)p;
    for (size_t o = (size_t)lane * 128; o < bytes; o += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
}

/* Whether launches carry the PDL attribute (kcuda_launch.cu). */
bool kcu_pdl_on();

template <typename... KArgs, typename... Args>
cudaError_t kcu_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args &&...args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = kcu_pdl_on() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
