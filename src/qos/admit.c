/*
 * Admission: each tenant's requests/s and tokens/min buckets and its
 * in-flight and queued quotas, checked and taken all at once or not at all.
 *
 * Many I/O threads admit at the same time, and the scheduler thread starts
 * and finishes requests. All four limits of a tenant must change together
 * (a request refused for its queue quota must not have spent a token), so
 * each tenant has one spinlock held for the few dozen integer operations
 * of a check — never across I/O, logging or allocation, and formatting a
 * refusal happens after it is released. Tenants do not share locks or
 * cache lines.
 *
 * The buckets are exact: a level is kept as units x period_ns in 128-bit
 * integers, so a refill adds elapsed_ns x count and no fraction is ever
 * rounded away, however often it is refilled.
 */
#include "qos/qos_int.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NS_PER_S 1000000000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void state_lock(struct qos__state *s)
{
    int spins = 0;
    while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire)) {
        /* The holder may have been preempted (more threads than cores):
         * after a short spin, give it the core instead of burning ours. */
        if (++spins < 64)
            cpu_relax();
        else
            sched_yield();
    }
}

static void state_unlock(struct qos__state *s) { atomic_flag_clear_explicit(&s->lock, memory_order_release); }

static __int128 bucket_cap(const struct qos_rate *r) { return (__int128)r->burst * r->period_ns; }

void qos__state_init(struct qos *q)
{
    const struct qos__conf *c = qos__conf(q);
    for (int i = 0; i < QOS_MAX_TENANTS; i++) {
        struct qos__state *s = &q->state[i];
        const struct qos_tenant *t = &c->tenants[i];
        atomic_flag_clear(&s->lock);
        s->rates_of = c;
        s->req.level = t->requests.count ? bucket_cap(&t->requests) : 0;
        s->tok.level = t->tokens.count ? bucket_cap(&t->tokens) : 0;
        s->req.last_ns = s->tok.last_ns = 0;
        s->in_flight = s->queued = 0;
    }
}

/* Bring the level up to date at now_ns. Times earlier than the last one
 * (another thread read the clock first and got the lock second) add
 * nothing and leave last_ns where it is. */
static void bucket_refill(struct qos__bucket *b, const struct qos_rate *r, uint64_t now_ns)
{
    if (now_ns <= b->last_ns)
        return;
    uint64_t elapsed = now_ns - b->last_ns;
    b->last_ns = now_ns;
    __int128 cap = bucket_cap(r);
    if (b->level >= cap)
        return;
    /* elapsed < 2^64 and count <= 10^18, so the product fits in 127 bits. */
    __int128 add = (__int128)elapsed * r->count;
    b->level = (add >= cap - b->level) ? cap : b->level + add;
}

/* After a reload, a bucket's level moves to the new rate keeping the
 * fraction of it that was full (a tenant at half its burst stays at half),
 * a bucket that had no limit starts full, and one whose limit is gone
 * holds nothing. Done by the first user of tenant i's state to see the
 * new snapshot c, under the state's lock. */
static void bucket_rerate(struct qos__bucket *b, const struct qos_rate *ro, const struct qos_rate *rn)
{
    if (!rn->count) {
        b->level = 0;
    } else if (!ro->count) {
        b->level = bucket_cap(rn);
    } else if (ro->count != rn->count || ro->period_ns != rn->period_ns || ro->burst != rn->burst) {
        const long double frac = (long double)b->level / (long double)bucket_cap(ro);
        b->level = (__int128)(frac * (long double)bucket_cap(rn));
    }
}

static void state_sync(struct qos__state *s, int i, const struct qos__conf *c)
{
    if (s->rates_of == c)
        return;
    bucket_rerate(&s->req, &s->rates_of->tenants[i].requests, &c->tenants[i].requests);
    bucket_rerate(&s->tok, &s->rates_of->tenants[i].tokens, &c->tenants[i].tokens);
    s->rates_of = c;
}

/* Time until the bucket holds `need` units: ns (saturated) and whole
 * seconds rounded up (saturated), for a level that is short. */
static void bucket_wait(const struct qos__bucket *b, const struct qos_rate *r, int64_t need, uint64_t *ns, uint32_t *s)
{
    __int128 deficit = (__int128)need * r->period_ns - b->level;
    LMD_ASSERT(deficit > 0, "bucket_wait on a bucket that holds enough");
    __int128 wait_ns = (deficit + r->count - 1) / r->count;
    __int128 per_s = (__int128)r->count * NS_PER_S;
    __int128 wait_s = (deficit + per_s - 1) / per_s;
    *ns = wait_ns > (__int128)UINT64_MAX ? UINT64_MAX : (uint64_t)wait_ns;
    *s = wait_s > (__int128)UINT32_MAX ? UINT32_MAX : (uint32_t)wait_s;
}

static int refuse(struct qos_refusal *why, enum obs_reject reason, int status, uint32_t retry_s, uint64_t retry_ns,
                  int code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static int refuse(struct qos_refusal *why, enum obs_reject reason, int status, uint32_t retry_s, uint64_t retry_ns,
                  int code, const char *fmt, ...)
{
    if (!why)
        return code;
    why->reason = reason;
    why->http_status = status;
    why->retry_after_s = retry_s;
    why->retry_after_ns = retry_ns;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    return code;
}

enum verdict { V_OK, V_REQUESTS, V_TOKENS, V_IN_FLIGHT, V_QUEUED };

int qos_admit(struct qos *q, int tenant, int cls, int64_t charge_tokens, uint64_t now_ns, struct qos_ticket *t,
              struct qos_refusal *why)
{
    const struct qos__conf *c = qos__conf(q);
    if (tenant < 0 || tenant >= c->n_tenants || cls < 0 || cls >= c->n_classes || charge_tokens < 0 || !t)
        return refuse(why, OBS_R_RATE_REQUESTS, 400, 0, 0, LMD_EINVAL, "invalid admission request");
    const struct qos_tenant *tc = &c->tenants[tenant];
    struct qos__state *s = &q->state[tenant];

    /* A charge the bucket can never hold would be refused forever with an
     * ever-renewed Retry-After; say so once instead (413: the request is
     * too large for this tenant, not the server too busy). */
    if (tc->tokens.count && charge_tokens > tc->tokens.burst)
        return refuse(why, OBS_R_RATE_TOKENS, 413, 0, 0, LMD_ERANGE,
                      "request needs %lld tokens (prompt + max_tokens) but tenant '%s' may use at most %lld at "
                      "once (tokens_burst); lower max_tokens or shorten the prompt",
                      (long long)charge_tokens, tc->name, (long long)tc->tokens.burst);

    enum verdict v = V_OK;
    uint64_t wait_ns = 0;
    uint32_t wait_s = 0;
    state_lock(s);
    state_sync(s, tenant, c);
    if (tc->requests.count)
        bucket_refill(&s->req, &tc->requests, now_ns);
    if (tc->tokens.count)
        bucket_refill(&s->tok, &tc->tokens, now_ns);
    if (tc->requests.count && s->req.level < (__int128)tc->requests.period_ns) {
        v = V_REQUESTS;
        bucket_wait(&s->req, &tc->requests, 1, &wait_ns, &wait_s);
    } else if (tc->tokens.count && s->tok.level < (__int128)charge_tokens * tc->tokens.period_ns) {
        v = V_TOKENS;
        bucket_wait(&s->tok, &tc->tokens, charge_tokens, &wait_ns, &wait_s);
    } else if (tc->max_in_flight && s->in_flight >= tc->max_in_flight) {
        v = V_IN_FLIGHT;
    } else if (tc->max_queued && s->queued >= tc->max_queued) {
        v = V_QUEUED;
    } else {
        if (tc->requests.count)
            s->req.level -= tc->requests.period_ns;
        if (tc->tokens.count)
            s->tok.level -= (__int128)charge_tokens * tc->tokens.period_ns;
        s->in_flight++;
        s->queued++;
    }
    state_unlock(s);

    switch (v) {
    case V_OK:
        t->tenant = tenant;
        t->cls = cls;
        t->charged = charge_tokens;
        t->state = QOS_TICKET_QUEUED;
        return 0;
    case V_REQUESTS:
        return refuse(why, OBS_R_RATE_REQUESTS, 429, wait_s, wait_ns, LMD_EBUSY,
                      "tenant '%s' is over its request rate; retry in %u s", tc->name, wait_s);
    case V_TOKENS:
        return refuse(why, OBS_R_RATE_TOKENS, 429, wait_s, wait_ns, LMD_EBUSY,
                      "tenant '%s' is over its token rate (this request needs %lld tokens); retry in %u s", tc->name,
                      (long long)charge_tokens, wait_s);
    case V_IN_FLIGHT:
        return refuse(why, OBS_R_TENANT_CONCURRENCY, 429, QOS_RETRY_QUOTA_S, 0, LMD_EBUSY,
                      "tenant '%s' has %d requests in flight, its limit (max_concurrent)", tc->name,
                      (int)tc->max_in_flight);
    case V_QUEUED:
        return refuse(why, OBS_R_TENANT_QUEUE, 503, QOS_RETRY_QUOTA_S, 0, LMD_EBUSY,
                      "tenant '%s' has %d requests queued, its limit (max_queued)", tc->name, (int)tc->max_queued);
    }
    return LMD_EINVAL; /* not reached */
}

int qos_gate(struct qos *q, int tenant, uint64_t now_ns, struct qos_refusal *why)
{
    const struct qos__conf *c = qos__conf(q);
    if (tenant < 0 || tenant >= c->n_tenants)
        return refuse(why, OBS_R_RATE_REQUESTS, 400, 0, 0, LMD_EINVAL, "invalid admission request");
    const struct qos_tenant *tc = &c->tenants[tenant];
    if (!tc->requests.count)
        return 0;
    struct qos__state *s = &q->state[tenant];
    uint64_t wait_ns = 0;
    uint32_t wait_s = 0;
    state_lock(s);
    state_sync(s, tenant, c);
    bucket_refill(&s->req, &tc->requests, now_ns);
    bool short_of_one = s->req.level < (__int128)tc->requests.period_ns;
    if (short_of_one)
        bucket_wait(&s->req, &tc->requests, 1, &wait_ns, &wait_s);
    state_unlock(s);
    if (!short_of_one)
        return 0;
    return refuse(why, OBS_R_RATE_REQUESTS, 429, wait_s, wait_ns, LMD_EBUSY,
                  "tenant '%s' is over its request rate; retry in %u s", tc->name, wait_s);
}

void qos_charge_refused(struct qos *q, int tenant, uint64_t now_ns)
{
    const struct qos__conf *c = qos__conf(q);
    if (tenant < 0 || tenant >= c->n_tenants || !c->tenants[tenant].requests.count)
        return;
    const struct qos_tenant *tc = &c->tenants[tenant];
    struct qos__state *s = &q->state[tenant];
    state_lock(s);
    state_sync(s, tenant, c);
    bucket_refill(&s->req, &tc->requests, now_ns);
    s->req.level -= tc->requests.period_ns;
    if (s->req.level < 0)
        s->req.level = 0;
    state_unlock(s);
}

void qos_started(struct qos *q, struct qos_ticket *t)
{
    if (t->state != QOS_TICKET_QUEUED)
        return;
    struct qos__state *s = &q->state[t->tenant];
    state_lock(s);
    LMD_ASSERT(s->queued > 0, "qos_started: queued count would go negative");
    s->queued--;
    state_unlock(s);
    t->state = QOS_TICKET_RUNNING;
}

void qos_finished(struct qos *q, struct qos_ticket *t, int64_t used_tokens, uint64_t now_ns)
{
    if (t->state == QOS_TICKET_NONE)
        return;
    const struct qos__conf *c = qos__conf(q);
    const struct qos_tenant *tc = &c->tenants[t->tenant];
    struct qos__state *s = &q->state[t->tenant];
    if (used_tokens < 0)
        used_tokens = 0;
    state_lock(s);
    state_sync(s, t->tenant, c);
    if (t->state == QOS_TICKET_QUEUED) {
        LMD_ASSERT(s->queued > 0, "qos_finished: queued count would go negative");
        s->queued--;
    }
    LMD_ASSERT(s->in_flight > 0, "qos_finished: in-flight count would go negative");
    s->in_flight--;
    if (tc->tokens.count) {
        /* Refill first, so the correction lands on today's level and the
         * cap applies to what the bucket really holds now. */
        bucket_refill(&s->tok, &tc->tokens, now_ns);
        __int128 cap = bucket_cap(&tc->tokens);
        s->tok.level += ((__int128)t->charged - used_tokens) * tc->tokens.period_ns;
        if (s->tok.level > cap)
            s->tok.level = cap;
        if (s->tok.level < -cap)
            s->tok.level = -cap;
    }
    state_unlock(s);
    t->state = QOS_TICKET_NONE;
}

static int64_t floor_div(__int128 a, int64_t b)
{
    __int128 d = a / b;
    if ((a % b != 0) && (a < 0))
        d--;
    return (int64_t)d;
}

void qos_usage(struct qos *q, int tenant, uint64_t now_ns, struct qos_usage *out)
{
    const struct qos__conf *c = qos__conf(q);
    LMD_ASSERT(tenant >= 0 && tenant < c->n_tenants, "tenant index out of range");
    const struct qos_tenant *tc = &c->tenants[tenant];
    struct qos__state *s = &q->state[tenant];
    state_lock(s);
    state_sync(s, tenant, c);
    if (tc->requests.count)
        bucket_refill(&s->req, &tc->requests, now_ns);
    if (tc->tokens.count)
        bucket_refill(&s->tok, &tc->tokens, now_ns);
    out->in_flight = s->in_flight;
    out->queued = s->queued;
    out->requests_milli = tc->requests.count ? floor_div(s->req.level * 1000, tc->requests.period_ns) : INT64_MAX;
    out->tokens = tc->tokens.count ? floor_div(s->tok.level, tc->tokens.period_ns) : INT64_MAX;
    state_unlock(s);
}
