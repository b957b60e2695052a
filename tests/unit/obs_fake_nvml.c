/*
 * A stand-in for libnvidia-ml.so.1 with fixed readings, built as a shared
 * library so that obs_test can dlopen it and check the GPU families on a
 * machine without an NVIDIA driver. It implements only the NVML entry
 * points obs/sys.c resolves, with NVML's public signatures. GPU 1 refuses
 * its power reading (NVML_ERROR_NOT_SUPPORTED), as some boards do.
 */
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3

static int g_devices[2]; /* handles point here */

static int index_of(nvmlDevice_t d) { return (int)((int *)(void *)d - g_devices); }

nvmlReturn_t nvmlInit_v2(void) { return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    *n = 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d)
{
    if (i >= 2)
        return NVML_ERROR_INVALID_ARGUMENT;
    *d = (nvmlDevice_t)(void *)&g_devices[i];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u)
{
    u->gpu = index_of(d) == 0 ? 42 : 100;
    u->memory = 7;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    m->total = 80ull << 30;
    m->used = index_of(d) == 0 ? (1ull << 30) : (2ull << 30);
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw)
{
    if (index_of(d) == 1)
        return NVML_ERROR_NOT_SUPPORTED;
    *mw = 150500;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *c)
{
    *c = sensor == 0 ? 55u + (unsigned)index_of(d) : 0u;
    return NVML_SUCCESS;
}
