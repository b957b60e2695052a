/*
 * cuBLAS, loaded when the CUDA engine first creates a handle rather than
 * when lmd starts. Linked as a shared library, cuBLAS (and cuBLASLt, which
 * it needs: half a gigabyte of device code) registers its kernels in its
 * constructors, which made every `lmd` start take a quarter of a second,
 * `lmd --version` and CPU-only serving included. These definitions stand
 * in for the few cuBLAS entry points the kernels call (kernels/cuda/
 * matmul.cu) and forward to the library opened with dlopen on first use.
 *
 * It is not a general loader: a function the kernels start calling must be
 * added here, or the link fails naming it. Where the library is missing,
 * cublasCreate fails with CUBLAS_STATUS_NOT_INITIALIZED and the log says
 * why, so the CUDA engine fails at load with a reason, as it did when the
 * dynamic loader could not find the library, except that lmd now starts.
 */
#include "core/log.h"

#include <cublas_v2.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>

#define CUBLAS_LAZY_STR_(x) #x
#define CUBLAS_LAZY_STR(x) CUBLAS_LAZY_STR_(x)
/* The soname of the cuBLAS major version the kernels were compiled with. */
#define CUBLAS_LAZY_SONAME "libcublas.so." CUBLAS_LAZY_STR(CUBLAS_VER_MAJOR)

/* Filled once by cublas_lazy_open; read-only after. */
static struct {
    bool ok;
    cublasStatus_t (*create)(cublasHandle_t *);
    cublasStatus_t (*destroy)(cublasHandle_t);
    cublasStatus_t (*set_workspace)(cublasHandle_t, void *, size_t);
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
    cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                              const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    const char *(*status_string)(cublasStatus_t);
} g_cublas;

static pthread_once_t g_cublas_once = PTHREAD_ONCE_INIT;

static void cublas_lazy_open(void)
{
    /* The soname first, as the dynamic loader would find it (ld.so.conf,
     * LD_LIBRARY_PATH); then the toolkit the binary was built with. */
    void *lib = dlopen(CUBLAS_LAZY_SONAME, RTLD_NOW | RTLD_LOCAL);
#ifdef LMD_CUBLAS_DIR
    if (!lib)
        lib = dlopen(LMD_CUBLAS_DIR "/" CUBLAS_LAZY_SONAME, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) {
        LMD_WARN("cuda: cannot load %s: %s", CUBLAS_LAZY_SONAME, dlerror());
        return;
    }
    struct {
        const char *name;
        void **fn;
    } syms[] = {
        {"cublasCreate_v2", (void **)&g_cublas.create},
        {"cublasDestroy_v2", (void **)&g_cublas.destroy},
        {"cublasSetWorkspace_v2", (void **)&g_cublas.set_workspace},
        {"cublasSetStream_v2", (void **)&g_cublas.set_stream},
        {"cublasSetMathMode", (void **)&g_cublas.set_math_mode},
        {"cublasGemmEx", (void **)&g_cublas.gemm_ex},
        {"cublasGetStatusString", (void **)&g_cublas.status_string},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].fn = dlsym(lib, syms[i].name);
        if (!*syms[i].fn) {
            LMD_WARN("cuda: %s lacks %s", CUBLAS_LAZY_SONAME, syms[i].name);
            dlclose(lib);
            return;
        }
    }
    g_cublas.ok = true; /* the library stays open for the process */
}

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t *handle)
{
    pthread_once(&g_cublas_once, cublas_lazy_open);
    return g_cublas.ok ? g_cublas.create(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

/* The rest are reached only with a handle, so only after a successful
 * cublasCreate: the library is loaded. */
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle)
{
    return g_cublas.ok ? g_cublas.destroy(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t bytes)
{
    return g_cublas.ok ? g_cublas.set_workspace(handle, workspace, bytes) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream)
{
    return g_cublas.ok ? g_cublas.set_stream(handle, stream) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    return g_cublas.ok ? g_cublas.set_math_mode(handle, mode) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                         int lda, const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
                                         cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t algo)
{
    if (!g_cublas.ok)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    return g_cublas.gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
                            computeType, algo);
}

const char *CUBLASWINAPI cublasGetStatusString(cublasStatus_t status)
{
    if (g_cublas.ok)
        return g_cublas.status_string(status);
    return status == CUBLAS_STATUS_NOT_INITIALIZED ? "cuBLAS could not be loaded (" CUBLAS_LAZY_SONAME ")"
                                                   : "cuBLAS error (the library is not loaded)";
}
