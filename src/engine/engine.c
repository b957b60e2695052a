/*
 * Engine-independent wrappers: stats around every step, and the checks
 * that a call fits the engine's contract.
 */
#include "engine/engine.h"

#include "core/time.h"

int engine_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err)
{
    if (e->info.request_level)
        return lmd_err_set(err, LMD_ENOTSUP, "engine %s takes whole requests, not steps", e->info.kind);
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
