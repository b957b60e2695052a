/*
 * Host and GPU stats for the exposition: the process (RSS, CPU time, open
 * file descriptors, start time) from /proc/self and getrusage, and per-GPU
 * utilization, memory, power and temperature from NVML.
 *
 * NVML is loaded with dlopen at obs_init, so lmd has no build-time or
 * link-time dependency on the NVIDIA driver: where the library is missing
 * or fails to initialize, the GPU families are simply not exported. The few
 * NVML types and prototypes used are declared here from NVML's public API
 * (nvml.h); only their ABI matters. Everything in this file runs under the
 * render lock or in obs_init/obs_shutdown, never concurrently.
 */
#include "obs/obs_internal.h"

#include "core/log.h"

#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- process ------------------------------------------------------------- */

/* Seconds since the epoch at which this process started: the kernel's boot
 * time plus the process's start in clock ticks after boot. 0 if /proc
 * cannot tell. */
static double process_start_s(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name is in parentheses and may hold spaces or ')': the
     * fields after it start past the last ')'. starttime is field 22, the
     * 20th after the name. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    unsigned long long start_ticks = 0;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (field == 22) {
            start_ticks = strtoull(p, NULL, 10);
            break;
        }
        while (*p && *p != ' ')
            p++;
    }
    unsigned long long btime = 0;
    f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &btime) == 1)
            break;
    fclose(f);
    long tck = sysconf(_SC_CLK_TCK);
    if (!btime || tck <= 0)
        return 0;
    return (double)btime + (double)start_ticks / (double)tck;
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

int obs__render_process(struct lmd_buf *out)
{
    int rc = 0;
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vm_pages = 0, rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    bool have_mem = false;
    if (f) {
        have_mem = fscanf(f, "%llu %llu", &vm_pages, &rss_pages) == 2;
        fclose(f);
    }
    if (have_mem && page > 0) {
        rc |= lmd_buf_printf(out,
                             "# HELP lmd_process_resident_memory_bytes Resident memory size in bytes.\n"
                             "# TYPE lmd_process_resident_memory_bytes gauge\n"
                             "lmd_process_resident_memory_bytes %llu\n"
                             "# HELP lmd_process_virtual_memory_bytes Virtual memory size in bytes.\n"
                             "# TYPE lmd_process_virtual_memory_bytes gauge\n"
                             "lmd_process_virtual_memory_bytes %llu\n",
                             rss_pages * (unsigned long long)page, vm_pages * (unsigned long long)page);
    }

    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                     ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
        rc |= lmd_buf_printf(out,
                             "# HELP lmd_process_cpu_seconds_total User and system CPU time spent, in seconds.\n"
                             "# TYPE lmd_process_cpu_seconds_total counter\n"
                             "lmd_process_cpu_seconds_total %.6f\n",
                             cpu);
    }

    int fds = count_open_fds();
    if (fds >= 0)
        rc |= lmd_buf_printf(out,
                             "# HELP lmd_process_open_fds Open file descriptors.\n"
                             "# TYPE lmd_process_open_fds gauge\n"
                             "lmd_process_open_fds %d\n",
                             fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        rc |= lmd_buf_printf(out,
                             "# HELP lmd_process_max_fds Limit on open file descriptors.\n"
                             "# TYPE lmd_process_max_fds gauge\n"
                             "lmd_process_max_fds %llu\n",
                             (unsigned long long)rl.rlim_cur);

    double start = process_start_s();
    if (start <= 0)
        start = (double)g_obs.start_wall_ns / 1e9;
    rc |= lmd_buf_printf(out,
                         "# HELP lmd_process_start_time_seconds Start time of the process since the Unix epoch, "
                         "in seconds.\n"
                         "# TYPE lmd_process_start_time_seconds gauge\n"
                         "lmd_process_start_time_seconds %.2f\n",
                         start);
    return rc;
}

/* ---- NVML ---------------------------------------------------------------- */

typedef int nvmlReturn_t; /* NVML_SUCCESS = 0 */
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned int gpu;    /* percent of the last sample period a kernel ran */
    unsigned int memory; /* percent of the period device memory was read or written */
} nvmlUtilization_t;
typedef struct {
    unsigned long long total, free, used; /* bytes */
} nvmlMemory_t;
#define NVML_SUCCESS 0
#define NVML_TEMPERATURE_GPU 0

#define OBS__MAX_GPUS 64

static struct {
    void *lib; /* dlopen handle; NULL = no GPU metrics */
    unsigned n_gpus;
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    nvmlReturn_t (*get_count)(unsigned int *);
    nvmlReturn_t (*get_handle)(unsigned int, nvmlDevice_t *);
    nvmlReturn_t (*get_util)(nvmlDevice_t, nvmlUtilization_t *);
    nvmlReturn_t (*get_mem)(nvmlDevice_t, nvmlMemory_t *);
    nvmlReturn_t (*get_power)(nvmlDevice_t, unsigned int *);     /* mW */
    nvmlReturn_t (*get_temp)(nvmlDevice_t, int, unsigned int *); /* °C */
} g_nvml;

void obs__nvml_open(const char *path)
{
    memset(&g_nvml, 0, sizeof g_nvml);
    if (!path || !*path)
        return;
#ifdef LMD_STATIC
    /* A static lmd cannot load the driver's shared NVML: a second C library
     * would come with it. It has no GPU engine either. */
    void *lib = NULL;
    LMD_DEBUG("obs: no GPU metrics in a static build (%s is not loaded)", path);
    return;
#else
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        LMD_DEBUG("obs: no GPU metrics: %s", dlerror());
        return;
    }
#endif
    struct {
        const char *name;
        void **fn;
    } syms[] = {
        {"nvmlInit_v2", (void **)&g_nvml.init},
        {"nvmlShutdown", (void **)&g_nvml.shutdown},
        {"nvmlDeviceGetCount_v2", (void **)&g_nvml.get_count},
        {"nvmlDeviceGetHandleByIndex_v2", (void **)&g_nvml.get_handle},
        {"nvmlDeviceGetUtilizationRates", (void **)&g_nvml.get_util},
        {"nvmlDeviceGetMemoryInfo", (void **)&g_nvml.get_mem},
        {"nvmlDeviceGetPowerUsage", (void **)&g_nvml.get_power},
        {"nvmlDeviceGetTemperature", (void **)&g_nvml.get_temp},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].fn = dlsym(lib, syms[i].name);
        if (!*syms[i].fn) {
            LMD_WARN("obs: no GPU metrics: %s lacks %s", path, syms[i].name);
            dlclose(lib);
            memset(&g_nvml, 0, sizeof g_nvml);
            return;
        }
    }
    unsigned n = 0;
    int rc = g_nvml.init();
    if (rc != NVML_SUCCESS) {
        LMD_INFO("obs: no GPU metrics: nvmlInit_v2 failed (NVML error %d)", rc);
    } else if ((rc = g_nvml.get_count(&n)) != NVML_SUCCESS) {
        LMD_INFO("obs: no GPU metrics: nvmlDeviceGetCount_v2 failed (NVML error %d)", rc);
        g_nvml.shutdown();
    } else {
        g_nvml.lib = lib;
        g_nvml.n_gpus = n < OBS__MAX_GPUS ? n : OBS__MAX_GPUS;
        return;
    }
    dlclose(lib);
    memset(&g_nvml, 0, sizeof g_nvml);
}

void obs__nvml_close(void)
{
    if (g_nvml.lib) {
        g_nvml.shutdown();
        dlclose(g_nvml.lib);
    }
    memset(&g_nvml, 0, sizeof g_nvml);
}

/* One GPU's readings; a reading NVML refused is left out of its family. */
struct gpu_sample {
    bool has_util, has_mem, has_power, has_temp;
    nvmlUtilization_t util;
    nvmlMemory_t mem;
    unsigned power_mw, temp_c;
};

int obs__render_gpu(struct lmd_buf *out)
{
    if (!g_nvml.lib || g_nvml.n_gpus == 0)
        return 0;
    struct gpu_sample s[OBS__MAX_GPUS];
    memset(s, 0, sizeof s);
    for (unsigned i = 0; i < g_nvml.n_gpus; i++) {
        nvmlDevice_t dev;
        if (g_nvml.get_handle(i, &dev) != NVML_SUCCESS)
            continue;
        s[i].has_util = g_nvml.get_util(dev, &s[i].util) == NVML_SUCCESS;
        s[i].has_mem = g_nvml.get_mem(dev, &s[i].mem) == NVML_SUCCESS;
        s[i].has_power = g_nvml.get_power(dev, &s[i].power_mw) == NVML_SUCCESS;
        s[i].has_temp = g_nvml.get_temp(dev, NVML_TEMPERATURE_GPU, &s[i].temp_c) == NVML_SUCCESS;
    }

    /* One family at a time, each only with the GPUs that answered it. */
    enum { UTIL, MEM_USED, MEM_TOTAL, POWER, TEMP, N_FAMILIES };
    static const char *const names[N_FAMILIES][2] = {
        {"lmd_gpu_utilization_ratio", "Fraction of the last sample period in which a kernel ran on the GPU."},
        {"lmd_gpu_memory_used_bytes", "GPU memory in use, in bytes."},
        {"lmd_gpu_memory_total_bytes", "GPU memory, in bytes."},
        {"lmd_gpu_power_watts", "GPU power draw, in watts."},
        {"lmd_gpu_temperature_celsius", "GPU core temperature, in degrees Celsius."},
    };
    int rc = 0;
    for (int f = 0; f < N_FAMILIES; f++) {
        bool header = false;
        for (unsigned i = 0; i < g_nvml.n_gpus; i++) {
            bool has = f == UTIL    ? s[i].has_util
                       : f == POWER ? s[i].has_power
                       : f == TEMP  ? s[i].has_temp
                                    : s[i].has_mem;
            if (!has)
                continue;
            if (!header) {
                rc |= lmd_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", names[f][0], names[f][1], names[f][0]);
                header = true;
            }
            rc |= lmd_buf_printf(out, "%s{gpu=\"%u\"} ", names[f][0], i);
            switch (f) {
            case UTIL:
                rc |= lmd_buf_printf(out, "%.2f\n", s[i].util.gpu / 100.0);
                break;
            case MEM_USED:
                rc |= lmd_buf_printf(out, "%llu\n", s[i].mem.used);
                break;
            case MEM_TOTAL:
                rc |= lmd_buf_printf(out, "%llu\n", s[i].mem.total);
                break;
            case POWER:
                rc |= lmd_buf_printf(out, "%.3f\n", s[i].power_mw / 1000.0);
                break;
            case TEMP:
                rc |= lmd_buf_printf(out, "%u\n", s[i].temp_c);
                break;
            }
        }
    }
    return rc;
}
