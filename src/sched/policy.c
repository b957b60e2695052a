/*
 * The scheduling policy: waiting queues, who goes next, how a step's token
 * budget is spent, and whom to preempt. No threads, no engine, no clock:
 * the loop in sched.c passes time in.
 */
#include "sched/sched_int.h"

#include <string.h>

void sched__policy_init(struct sched__policy *p, const struct sched_config *cfg)
{
    memset(p, 0, sizeof *p);
    p->kind = cfg->policy;
    p->n_classes = cfg->classes && cfg->n_classes > 0 ? cfg->n_classes : 1;
    for (int c = 0; c < p->n_classes; c++)
        p->cls[c] = cfg->classes && cfg->n_classes > 0 ? cfg->classes[c] : (struct sched_class){.name = "default"};
    p->n_tenants = cfg->tenant_weight && cfg->n_tenants > 0 ? cfg->n_tenants : 1;
    for (int t = 0; t < p->n_tenants; t++)
        p->weight[t] = cfg->tenant_weight && cfg->n_tenants > 0 ? cfg->tenant_weight[t] : 1.0;
}

static struct sched__queue *queue_of(struct sched__policy *p, const struct sched_req *r)
{
    return p->kind == SCHED_POLICY_FCFS ? &p->q[0][0] : &p->q[r->cls][r->tenant];
}

/* Whether a goes before b inside one queue. */
static bool queue_before(const struct sched__policy *p, const struct sched_req *a, const struct sched_req *b)
{
    if (p->kind == SCHED_POLICY_SLA && a->t_deadline_ns != b->t_deadline_ns) {
        /* No deadline sorts last. */
        if (!a->t_deadline_ns || !b->t_deadline_ns)
            return a->t_deadline_ns != 0;
        return a->t_deadline_ns < b->t_deadline_ns;
    }
    return a->run.seq < b->run.seq;
}

void sched__enqueue(struct sched__policy *p, struct sched_req *r, bool first)
{
    if (first) {
        if (p->active[r->tenant] == 0) {
            /* Start-time fair queueing: a tenant that was idle starts at the
             * lowest virtual time among the busy ones, not at its old one,
             * so having been idle earns it no burst of extra share. */
            double vmin = -1;
            for (int t = 0; t < p->n_tenants; t++)
                if (p->active[t] > 0 && (vmin < 0 || p->vtime[t] < vmin))
                    vmin = p->vtime[t];
            if (vmin > p->vtime[r->tenant])
                p->vtime[r->tenant] = vmin;
        }
        p->active[r->tenant]++;
    }
    struct sched__queue *q = queue_of(p, r);
    /* Insert from the tail: a new arrival nearly always belongs there;
     * a preempted request walks forward to its deadline's place. */
    struct sched_req *at = q->tail;
    while (at && queue_before(p, r, at))
        at = at->run.prev;
    r->run.prev = at;
    r->run.next = at ? at->run.next : q->head;
    if (r->run.next)
        r->run.next->run.prev = r;
    else
        q->tail = r;
    if (at)
        at->run.next = r;
    else
        q->head = r;
    r->run.queued = true;
    p->n_waiting++;
    p->n_waiting_cls[r->cls]++;
}

void sched__dequeue(struct sched__policy *p, struct sched_req *r)
{
    struct sched__queue *q = queue_of(p, r);
    if (r->run.prev)
        r->run.prev->run.next = r->run.next;
    else
        q->head = r->run.next;
    if (r->run.next)
        r->run.next->run.prev = r->run.prev;
    else
        q->tail = r->run.prev;
    r->run.next = r->run.prev = NULL;
    r->run.queued = false;
    p->n_waiting--;
    p->n_waiting_cls[r->cls]--;
}

void sched__leave(struct sched__policy *p, const struct sched_req *r) { p->active[r->tenant]--; }

void sched__charge(struct sched__policy *p, int tenant, int n)
{
    p->served[tenant] += n;
    p->vtime[tenant] += (double)n / p->weight[tenant];
}

struct sched_req *sched__pick(const struct sched__policy *p, uint64_t now, uint64_t *next_ns)
{
    if (p->kind == SCHED_POLICY_FCFS)
        return p->q[0][0].head;
    for (int c = 0; c < p->n_classes; c++) {
        struct sched_req *best = NULL;
        for (int t = 0; t < p->n_tenants; t++) {
            struct sched_req *h = p->q[c][t].head;
            if (!h)
                continue;
            if (h->run.t_eligible_ns > now) {
                if (h->run.t_eligible_ns < *next_ns)
                    *next_ns = h->run.t_eligible_ns;
                continue;
            }
            /* Lowest virtual time first; between equals, the earlier
             * deadline, then the earlier arrival. */
            if (!best || p->vtime[t] < p->vtime[best->tenant] ||
                (p->vtime[t] == p->vtime[best->tenant] && queue_before(p, h, best)))
                best = h;
        }
        if (best)
            return best;
    }
    return NULL;
}

/* Whether running sequence a's prefill goes before b's. */
static bool prefill_before(const struct sched__policy *p, const struct sched_req *a, const struct sched_req *b)
{
    if (p->kind == SCHED_POLICY_SLA && a->cls != b->cls)
        return a->cls < b->cls;
    return queue_before(p, a, b);
}

int sched__form(const struct sched__policy *p, struct sched_req *const *running, int n_running, int budget,
                struct sched__item *items)
{
    int n = 0;
    for (int i = 0; i < n_running; i++) {
        struct sched_req *r = running[i];
        if (r->run.n_fed < r->run.n_fill)
            continue;
        items[n++] = (struct sched__item){.r = r, .n = 1, .decode = true};
        budget--;
    }
    /* Prefill chunks: repeatedly the first-in-order sequence not yet
     * chosen. The running set is small (tens), so a selection pass per
     * chunk costs nothing next to a forward pass. */
    int first_prefill = n;
    while (budget > 0) {
        struct sched_req *best = NULL;
        for (int i = 0; i < n_running; i++) {
            struct sched_req *r = running[i];
            if (r->run.n_fed >= r->run.n_fill)
                continue;
            bool taken = false;
            for (int k = first_prefill; k < n && !taken; k++)
                taken = items[k].r == r;
            if (!taken && (!best || prefill_before(p, r, best)))
                best = r;
        }
        if (!best)
            break;
        int left = best->run.n_fill - best->run.n_fed;
        /* Stop a chunk at the end of the prompt: the rest (output tokens of
         * a resumed request) lives in another array. */
        if (best->run.n_fed < best->n_prompt && best->n_prompt - best->run.n_fed < left)
            left = best->n_prompt - best->run.n_fed;
        int take = left < budget ? left : budget;
        items[n++] = (struct sched__item){.r = best, .n = take, .decode = false};
        budget -= take;
    }
    return n;
}

struct sched_req *sched__victim(const struct sched__policy *p, struct sched_req *const *running, int n_running, int cls)
{
    if (p->kind != SCHED_POLICY_SLA)
        return NULL;
    struct sched_req *v = NULL;
    for (int i = 0; i < n_running; i++) {
        struct sched_req *r = running[i];
        if (r->cls <= cls)
            continue;
        if (!v || r->cls > v->cls)
            v = r;
        else if (r->cls == v->cls) {
            int wr = r->run.n_fed + atomic_load_explicit(&r->n_out, memory_order_relaxed);
            int wv = v->run.n_fed + atomic_load_explicit(&v->n_out, memory_order_relaxed);
            if (wr < wv || (wr == wv && r->run.seq > v->run.seq))
                v = r;
        }
    }
    return v;
}
