/*
 * Engine-independent wrappers: stats around every step.
 */
#include "engine/engine.h"

#include "core/time.h"

int engine_step(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err)
{
    uint64_t t0 = lmd_time_mono_ns();
    int rc = e->ops->step(e, seqs, n_seqs, logits, err);
    e->stats.step_ns += lmd_time_mono_ns() - t0;
    e->stats.steps++;
    for (int i = 0; i < n_seqs; i++)
        e->stats.tokens += (uint64_t)seqs[i].n_tokens;
    return rc;
}

void engine_close(struct engine *e)
{
    if (e)
        e->ops->close(e);
}
