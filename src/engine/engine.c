/*
 * Engine-independent wrappers: stats around every step, and the checks
 * that a call fits the engine's contract.
 */
#include "engine/engine.h"

#include "core/log.h"
#include "core/time.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LMD_HAVE_CUDA
/* A build without the CUDA toolkit: the engine is not there, and says so. */
int engine_cuda_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err)
{
    (void)cfg;
    *out = NULL;
    return lmd_err_set(err, LMD_ENOTSUP, "cuda: this lmd was built without CUDA (no nvcc at build time)");
}

int engine_cuda_devices(char *buf, size_t cap)
{
    snprintf(buf, cap, "not built");
    return 0;
}
#endif

int engine_device_parse(const char *s, enum engine_device *dev, int *gpu)
{
    *gpu = 0;
    if (strcmp(s, "cpu") == 0) {
        *dev = ENGINE_DEVICE_CPU;
        return 0;
    }
    if (strcmp(s, "auto") == 0) {
        *dev = ENGINE_DEVICE_AUTO;
        return 0;
    }
    if (strncmp(s, "cuda", 4) != 0)
        return -1;
    *dev = ENGINE_DEVICE_CUDA;
    if (s[4] == 0)
        return 0;
    if (s[4] != ':' || s[5] < '0' || s[5] > '9')
        return -1;
    char *end;
    long v = strtol(s + 5, &end, 10);
    if (*end || v > 64)
        return -1;
    *gpu = (int)v;
    return 0;
}

int engine_local_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err)
{
    if (cfg->device == ENGINE_DEVICE_CPU)
        return engine_native_open(out, cfg, err);
    if (cfg->device == ENGINE_DEVICE_CUDA)
        return engine_cuda_open(out, cfg, err);
    char gpus[256];
    if (engine_cuda_devices(gpus, sizeof gpus) > 0) {
        int rc = engine_cuda_open(out, cfg, err);
        if (rc != LMD_ENOTSUP)
            return rc;
    }
    LMD_INFO("device auto: no usable GPU (%s), the CPU engine serves", gpus);
    return engine_native_open(out, cfg, err);
}

void engine_embd_finish(float *v, int n, enum engine_pool pool, int n_tokens)
{
    if (pool == ENGINE_POOL_MEAN && n_tokens > 0)
        for (int i = 0; i < n; i++)
            v[i] /= (float)n_tokens;
    /* The norm in double: a 4096-wide sum of squares in float loses the
     * last bits that make equal inputs give equal unit vectors anyway,
     * but double keeps |v| = 1 to float precision for any width. */
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)v[i] * (double)v[i];
    if (ss > 0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (int i = 0; i < n; i++)
            v[i] *= inv;
    }
}

int engine_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err)
{
    if (e->info.request_level)
        return lmd_err_set(err, LMD_ENOTSUP, "engine %s takes whole requests, not steps", e->info.kind);
    /* Engines that give no hidden states (the CUDA engine, the fake one)
     * say so here, once for all of them. */
    if (e->info.n_embd == 0)
        for (int i = 0; i < n_seqs; i++)
            if (seqs[i].pool != ENGINE_POOL_NONE)
                return lmd_err_set(err, LMD_ENOTSUP, "the %s engine does not compute embeddings", e->info.kind);
    e->t_launch_ns = lmd_time_mono_ns();
    int rc = e->ops->launch(e, seqs, n_seqs, err);
    if (rc == 0) {
        e->stats.steps++;
        for (int i = 0; i < n_seqs; i++)
            e->stats.tokens += (uint64_t)seqs[i].n_tokens;
    }
    return rc;
}

int engine_wait(struct engine *e, struct engine_result *res, struct lmd_err *err)
{
    int rc = e->ops->wait(e, res, err);
    e->stats.step_ns += lmd_time_mono_ns() - e->t_launch_ns;
    return rc;
}

int engine_step(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err)
{
    if (e->info.samples)
        return lmd_err_set(err, LMD_ENOTSUP, "engine %s returns sampled tokens, not logits", e->info.kind);
    struct engine_result res;
    int rc = engine_launch(e, seqs, n_seqs, err);
    if (rc == 0)
        rc = engine_wait(e, &res, err);
    *logits = rc == 0 ? res.logits : NULL;
    return rc;
}

int engine_submit(struct engine *e, struct engine_req *rq, struct lmd_err *err)
{
    if (!e->info.request_level)
        return lmd_err_set(err, LMD_ENOTSUP, "engine %s takes steps, not whole requests", e->info.kind);
    return e->ops->submit(e, rq, err);
}

int engine_poll(struct engine *e, struct engine_event *ev, int max) { return e->ops->poll(e, ev, max); }

void engine_cancel(struct engine *e, struct engine_req *rq) { e->ops->cancel(e, rq); }

void engine_close(struct engine *e)
{
    if (e)
        e->ops->close(e);
}
