/*
 * Whether kernel launches use programmatic dependent launch
 * (kcuda_launch.cuh says what that is and why it is safe).
 */
#include "kernels/cuda/kcuda.h"
#include "kernels/cuda/kcuda_launch.cuh"

#include <stdlib.h>
#include <string.h>

namespace
{

/* -1: not decided yet; 0 off; 1 on. Decided once, at the first
 * kcu_pdl_init, before any step is captured or run. */
int g_pdl = -1;

/* The architecture the device runs this binary's code for. */
__global__ void arch_probe_kernel(int *out)
{
#if defined(__CUDA_ARCH__)
    *out = __CUDA_ARCH__;
#else
    *out = 0;
#endif
}

} // namespace

bool kcu_pdl_on() { return g_pdl == 1; }

extern "C" cudaError_t kcu_pdl_init(cudaStream_t st, bool *on)
{
    if (g_pdl < 0) {
        const char *e = getenv("LMD_CUDA_PDL");
        int arch = 0, *d = nullptr;
        cudaError_t rc = cudaMalloc((void **)&d, sizeof *d);
        if (rc != cudaSuccess)
            return rc;
        arch_probe_kernel<<<1, 1, 0, st>>>(d);
        rc = cudaGetLastError();
        if (rc == cudaSuccess)
            rc = cudaMemcpyAsync(&arch, d, sizeof arch, cudaMemcpyDeviceToHost, st);
        if (rc == cudaSuccess)
            rc = cudaStreamSynchronize(st);
        cudaFree(d);
        if (rc != cudaSuccess)
            return rc;
        g_pdl = arch >= 900 && !(e && strcmp(e, "0") == 0) ? 1 : 0;
    }
    if (on)
        *on = g_pdl == 1;
    return cudaSuccess;
}
