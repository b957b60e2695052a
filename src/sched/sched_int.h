/*
 * Internals of sched/: the policy, kept apart from the engine loop so that
 * it is plain data and functions over requests, with time passed in. The
 * loop (sched.c) calls it once per step; unit tests drive it directly to
 * check ordering, fair share and batch formation without an engine.
 *
 * Everything here runs on the engine thread only.
 */
#pragma once

#include "sched/sched.h"

struct sched__queue {
    struct sched_req *head, *tail; /* linked through next/prev, in pick order */
};

struct sched__policy {
    enum sched_policy kind;
    int n_classes, n_tenants;
    struct sched_class cls[SCHED_MAX_CLASSES];
    double weight[SCHED_MAX_TENANTS];
    double vtime[SCHED_MAX_TENANTS];  /* tokens served / weight, for start-time fair queueing */
    double served[SCHED_MAX_TENANTS]; /* tokens served (prefill, recomputation and decode) */
    int active[SCHED_MAX_TENANTS];    /* the tenant's requests waiting or running */
    /* SCHED_FCFS keeps every request in q[0][0] in arrival order; SCHED_SLA
     * keeps q[class][tenant] ordered by deadline, then arrival. */
    struct sched__queue q[SCHED_MAX_CLASSES][SCHED_MAX_TENANTS];
    int n_waiting;
    int n_waiting_cls[SCHED_MAX_CLASSES];
};

/* One entry of a formed batch: n tokens of r starting at its n_fed (a
 * prefill chunk) or its one decode token. */
struct sched__item {
    struct sched_req *r;
    int n;
    bool decode;
};

/* cfg's classes and weights are copied (names by pointer). */
void sched__policy_init(struct sched__policy *p, const struct sched_config *cfg);

/* A request becomes waiting: newly arrived (first = true: the tenant's
 * active count grows; a tenant coming back from idle starts at the lowest
 * virtual time among the active ones, so idleness earns no credit) or
 * preempted (first = false). */
void sched__enqueue(struct sched__policy *p, struct sched_req *r, bool first);
void sched__dequeue(struct sched__policy *p, struct sched_req *r);
/* The request leaves the scheduler (finished while waiting or running). */
void sched__leave(struct sched__policy *p, const struct sched_req *r);

/* The waiting request to admit next at time now, or NULL. Under SCHED_SLA a
 * request inside its class's batching window is not eligible; *next_ns is
 * lowered to the earliest time one becomes eligible. */
struct sched_req *sched__pick(const struct sched__policy *p, uint64_t now, uint64_t *next_ns);

/* n tokens of tenant t were forwarded. */
void sched__charge(struct sched__policy *p, int tenant, int n);

/* Form one batch from the running set: every decoding sequence's token
 * first, then prefill chunks in priority order (arrival order under FCFS;
 * class, deadline, arrival under SLA) within `budget` tokens. A chunk never
 * crosses from the prompt into the output (both are prefilled when a
 * preempted request resumes). items has room for n_running. Returns the
 * item count. */
int sched__form(const struct sched__policy *p, struct sched_req *const *running, int n_running, int budget,
                struct sched__item *items);

/* The running sequence to preempt so that a request of class cls can
 * start: the lowest class strictly below cls, then the least work to
 * recompute, then the latest arrival. NULL if none (or under FCFS). */
struct sched_req *sched__victim(const struct sched__policy *p, struct sched_req *const *running, int n_running,
                                int cls);

/* The token at fill position i of r: the prompt, then the output so far. */
static inline const int32_t *sched__fill_tokens(const struct sched_req *r, int from)
{
    return from < r->n_prompt ? r->prompt + from : r->out + (from - r->n_prompt);
}
