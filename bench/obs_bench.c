/*
 * Recording cost of obs/: ns per call of obs_observe, obs_count and
 * obs_trace from 1 and 2 threads. "shared" means every thread hits the
 * same histogram cell or counter (the cache line bounces between cores,
 * the worst case); "own" gives each thread its own class, which is how
 * the per-class histograms spread in practice. Not run by ctest:
 *
 *   build/obs_bench [iterations per thread, default 20000000]
 */
#include "core/time.h"
#include "obs/obs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum op { OP_OBSERVE_SHARED, OP_OBSERVE_OWN, OP_COUNT, OP_TRACE, OP__N };

static const char *const op_names[OP__N] = {"obs_observe (shared cell)", "obs_observe (own class)",
                                            "obs_count (shared counter)", "obs_trace"};

struct job {
    enum op op;
    int tid;
    long iters;
    pthread_barrier_t *start;
    double ns_per_op;
};

static void *run(void *arg)
{
    struct job *j = arg;
    pthread_barrier_wait(j->start);
    uint64_t t0 = lmd_time_mono_ns();
    /* Values vary a little so the bucket search is not one fixed branch. */
    for (long i = 0; i < j->iters; i++) {
        switch (j->op) {
        case OP_OBSERVE_SHARED:
            obs_observe(OBS_H_ITL, 0, 0.004 + (double)(i & 63) * 1e-3);
            break;
        case OP_OBSERVE_OWN:
            obs_observe(OBS_H_ITL, j->tid, 0.004 + (double)(i & 63) * 1e-3);
            break;
        case OP_COUNT:
            obs_count(OBS_C_GENERATION_TOKENS, 1);
            break;
        case OP_TRACE:
            obs_trace(OBS_EV_STEP, (uint64_t)i, t0, t0 + 1000, 8, 8, 0);
            break;
        default:
            break;
        }
    }
    j->ns_per_op = (double)(lmd_time_mono_ns() - t0) / (double)j->iters;
    return NULL;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 20000000;
    const char *const classes[] = {"interactive", "batch"};
    const char *const tenants[] = {"anonymous"};
    struct obs_config cfg = {.model = "bench",
                             .classes = classes,
                             .n_classes = 2,
                             .tenants = tenants,
                             .n_tenants = 1,
                             .trace = true,
                             .nvml_path = ""};
    struct lmd_err err;
    if (obs_init(&cfg, &err)) {
        fprintf(stderr, "obs_init: %s\n", err.msg);
        return 1;
    }
    printf("%-28s %12s %12s\n", "operation", "1 thread", "2 threads");
    for (int op = 0; op < OP__N; op++) {
        double ns[3] = {0};
        for (int nt = 1; nt <= 2; nt++) {
            pthread_barrier_t start;
            pthread_barrier_init(&start, NULL, (unsigned)nt);
            pthread_t th[2];
            struct job jobs[2];
            for (int t = 0; t < nt; t++) {
                jobs[t] = (struct job){.op = (enum op)op, .tid = t, .iters = iters, .start = &start};
                pthread_create(&th[t], NULL, run, &jobs[t]);
            }
            double worst = 0;
            for (int t = 0; t < nt; t++) {
                pthread_join(th[t], NULL);
                if (jobs[t].ns_per_op > worst)
                    worst = jobs[t].ns_per_op;
            }
            pthread_barrier_destroy(&start);
            ns[nt] = worst;
        }
        printf("%-28s %9.1f ns %9.1f ns\n", op_names[op], ns[1], ns[2]);
    }
    obs_shutdown();
    return 0;
}
