/*
 * The trace ring behind /debug/trace: a fixed array of event slots filled
 * by any thread without locks, and its rendering as Chrome trace-event
 * JSON (the format chrome://tracing and Perfetto open).
 *
 * A producer takes a ticket with one atomic add; the ticket picks the slot
 * (ticket mod capacity), so the ring overwrites its oldest events. Each
 * slot is a small seqlock: the producer marks it busy, writes the payload
 * and then publishes seq = ticket + 1. The reader copies a slot and keeps
 * it only if seq read the same value, ticket + 1, before and after the
 * copy; anything else is a slot being rewritten or already reused for a
 * newer ticket, and is skipped. Two producers whose tickets are a whole
 * ring apart can meet on one slot only if one of them stalls mid-write for
 * a full lap; the later one then drops its event (counted in
 * lmd_trace_events_dropped_total) rather than interleave with it.
 *
 * The ring is allocated at obs_init and freed at obs_shutdown, when no
 * thread records any more.
 */
#include "obs/obs_internal.h"

#include "core/time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRACE_DEFAULT_CAP (1u << 16) /* events */
#define TRACE_MAX_CAP (1u << 24)     /* events; 1.1 GB of slots is the most anyone should want */

int obs__trace_init(bool on, int capacity, struct lmd_err *err)
{
    g_obs.ring = NULL;
    g_obs.ring_cap = 0;
    atomic_store(&g_obs.ring_head, 0);
    atomic_store(&g_obs.ring_dropped, 0);
    atomic_store(&g_obs.tracing, false);
    if (!on)
        return 0;
    uint64_t want = capacity > 0 ? (uint64_t)capacity : TRACE_DEFAULT_CAP;
    if (want > TRACE_MAX_CAP)
        return lmd_err_set(err, LMD_ERANGE, "obs: trace capacity %d is over %u events", capacity, TRACE_MAX_CAP);
    /* A power of two, so the slot is a mask of the ticket. */
    uint64_t cap = 1;
    while (cap < want)
        cap <<= 1;
    g_obs.ring = aligned_alloc(OBS__LINE, cap * sizeof *g_obs.ring);
    if (!g_obs.ring)
        return lmd_err_set(err, LMD_ENOMEM, "obs: out of memory for %llu trace events", (unsigned long long)cap);
    memset(g_obs.ring, 0, cap * sizeof *g_obs.ring);
    g_obs.ring_cap = cap;
    atomic_store(&g_obs.tracing, true);
    return 0;
}

void obs__trace_free(void)
{
    atomic_store(&g_obs.tracing, false);
    free(g_obs.ring);
    g_obs.ring = NULL;
    g_obs.ring_cap = 0;
}

bool obs_tracing(void) { return atomic_load_explicit(&g_obs.tracing, memory_order_acquire); }

#define RELAXED memory_order_relaxed

void obs_trace(enum obs_ev ev, uint64_t id, uint64_t t0_ns, uint64_t t1_ns, int64_t a, int64_t b, int64_t c)
{
    if (!obs_tracing())
        return;
    uint64_t t = atomic_fetch_add_explicit(&g_obs.ring_head, 1, RELAXED);
    struct obs__slot *s = &g_obs.ring[t & (g_obs.ring_cap - 1)];
    if (atomic_exchange_explicit(&s->seq, OBS__SLOT_BUSY, RELAXED) == OBS__SLOT_BUSY) {
        atomic_fetch_add_explicit(&g_obs.ring_dropped, 1, RELAXED);
        return;
    }
    /* The busy mark must be visible before any payload store: a reader that
     * sees new payload then also sees seq change, and discards its copy. */
    atomic_thread_fence(memory_order_release);
    /* The recording thread's model rides in the high bits: engine events
     * go on their model's engine track. */
    atomic_store_explicit(&s->ev, (int)ev | obs__bound_model() << 8, RELAXED);
    atomic_store_explicit(&s->id, id, RELAXED);
    atomic_store_explicit(&s->t0, t0_ns, RELAXED);
    atomic_store_explicit(&s->t1, t1_ns < t0_ns ? t0_ns : t1_ns, RELAXED);
    atomic_store_explicit(&s->a, a, RELAXED);
    atomic_store_explicit(&s->b, b, RELAXED);
    atomic_store_explicit(&s->c, c, RELAXED);
    atomic_store_explicit(&s->seq, t + 1, memory_order_release);
}

/* ---- rendering ----------------------------------------------------------- */

struct event {
    int ev;
    int model;           /* index of the model whose thread recorded it */
    uint64_t id, t0, t1; /* ns */
    int64_t a, b, c;
};

/* Copy the complete events still in the ring, oldest first. */
static size_t snapshot(struct event *out, uint64_t since_ns)
{
    uint64_t head = atomic_load_explicit(&g_obs.ring_head, memory_order_acquire);
    uint64_t first = head > g_obs.ring_cap ? head - g_obs.ring_cap : 0;
    size_t n = 0;
    for (uint64_t t = first; t < head; t++) {
        struct obs__slot *s = &g_obs.ring[t & (g_obs.ring_cap - 1)];
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (seq != t + 1)
            continue; /* being written, dropped, or already reused */
        struct event e = {
            .ev = atomic_load_explicit(&s->ev, RELAXED),
            .id = atomic_load_explicit(&s->id, RELAXED),
            .t0 = atomic_load_explicit(&s->t0, RELAXED),
            .t1 = atomic_load_explicit(&s->t1, RELAXED),
            .a = atomic_load_explicit(&s->a, RELAXED),
            .b = atomic_load_explicit(&s->b, RELAXED),
            .c = atomic_load_explicit(&s->c, RELAXED),
        };
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, RELAXED) != seq)
            continue; /* torn: a producer rewrote it while we copied */
        if (e.t1 < since_ns)
            continue;
        e.model = e.ev >> 8;
        e.ev &= 0xff;
        out[n++] = e;
    }
    return n;
}

int obs__json_chars(struct lmd_buf *out, const char *s)
{
    int rc = 0;
    const char *run = s;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
            continue;
        rc |= lmd_buf_append(out, run, (size_t)(p - run));
        if (c == '"' || c == '\\')
            rc |= lmd_buf_printf(out, "\\%c", c);
        else
            rc |= lmd_buf_printf(out, "\\u%04x", c);
        run = p + 1;
    }
    rc |= lmd_buf_append(out, run, strlen(run));
    return rc;
}

static int put_str(struct lmd_buf *out, const char *s)
{
    int rc = lmd_buf_append(out, "\"", 1);
    rc |= obs__json_chars(out, s);
    rc |= lmd_buf_append(out, "\"", 1);
    return rc;
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* µs with ns precision, as Chrome's "ts" and "dur" want them. */
#define US_FMT "%llu.%03llu"
#define US_ARG(ns) (unsigned long long)((ns) / 1000), (unsigned long long)((ns) % 1000)

/* Thread tracks: the first model's engine, admission, then the other
 * models' engines. */
enum { TID_ENGINE = 1, TID_ADMISSION = 2, TID_ENGINE_MORE = 10 };

static int engine_tid(int model) { return model <= 0 ? TID_ENGINE : TID_ENGINE_MORE + model; }

/* The common head of a request's async event: one track per request id. */
static int async_head(struct lmd_buf *out, int pid, const char *name, const char *ph, uint64_t id, uint64_t ns,
                      int model)
{
    return lmd_buf_printf(out,
                          ",\n{\"name\":\"%s\",\"cat\":\"request\",\"ph\":\"%s\",\"id\":\"0x%llx\",\"ts\":" US_FMT
                          ",\"pid\":%d,\"tid\":%d",
                          name, ph, (unsigned long long)id, US_ARG(ns), pid, engine_tid(model));
}

static int render_event(struct lmd_buf *out, int pid, const struct event *e, const uint64_t *admitted,
                        size_t n_admitted)
{
    int rc = 0;
    switch (e->ev) {
    case OBS_EV_STEP:
        rc |= lmd_buf_printf(out,
                             ",\n{\"name\":\"step\",\"cat\":\"engine\",\"ph\":\"X\",\"ts\":" US_FMT ",\"dur\":" US_FMT
                             ",\"pid\":%d,\"tid\":%d,\"args\":{\"seqs\":%lld,\"tokens\":%lld,"
                             "\"prefill_seqs\":%lld}}",
                             US_ARG(e->t0), US_ARG(e->t1 - e->t0), pid, engine_tid(e->model), (long long)e->a,
                             (long long)e->b, (long long)e->c);
        break;
    case OBS_EV_PREFILL: {
        /* A chunk with a duration is a nested slice on its request's track. */
        bool span = e->t1 > e->t0;
        rc |= async_head(out, pid, "prefill", span ? "b" : "n", e->id, e->t0, e->model);
        rc |= lmd_buf_printf(out, ",\"args\":{\"tokens\":%lld,\"pos\":%lld}}", (long long)e->a, (long long)e->b);
        if (span) {
            rc |= async_head(out, pid, "prefill", "e", e->id, e->t1, e->model);
            rc |= lmd_buf_append(out, "}", 1);
        }
        break;
    }
    case OBS_EV_PREEMPT:
        rc |= async_head(out, pid, "preempt", "n", e->id, e->t0, e->model);
        rc |= lmd_buf_printf(out, ",\"args\":{\"blocks_freed\":%lld}}", (long long)e->a);
        break;
    case OBS_EV_ADMIT:
        rc |= async_head(out, pid, "request", "b", e->id, e->t0, e->model);
        rc |= lmd_buf_printf(out, ",\"args\":{\"model\":");
        rc |= put_str(out, e->model < g_obs.n_models ? g_obs.models[e->model] : "");
        rc |= lmd_buf_printf(out, ",\"class\":");
        rc |= put_str(out, obs__class_name((int)e->a));
        rc |= lmd_buf_printf(out, ",\"tenant\":");
        rc |= put_str(out, obs__tenant_name((int)e->b));
        rc |= lmd_buf_printf(out, ",\"prompt_tokens\":%lld}}", (long long)e->c);
        break;
    case OBS_EV_FINISH: {
        /* Close the request's slice only if its start is in this trace;
         * an end without a begin confuses the viewers. */
        bool open = bsearch(&e->id, admitted, n_admitted, sizeof *admitted, cmp_u64) != NULL;
        rc |= async_head(out, pid, open ? "request" : "finish", open ? "e" : "n", e->id, e->t0, e->model);
        rc |= lmd_buf_printf(out, ",\"args\":{\"generated_tokens\":%lld,\"finish_reason\":%lld}}", (long long)e->a,
                             (long long)e->b);
        break;
    }
    case OBS_EV_REJECT:
        rc |= lmd_buf_printf(out,
                             ",\n{\"name\":\"reject\",\"cat\":\"admission\",\"ph\":\"i\",\"s\":\"p\",\"ts\":" US_FMT
                             ",\"pid\":%d,\"tid\":%d,\"args\":{\"request\":\"0x%llx\",\"reason\":\"%s\",\"tenant\":",
                             US_ARG(e->t0), pid, TID_ADMISSION, (unsigned long long)e->id,
                             obs__reject_name((enum obs_reject)e->a));
        rc |= put_str(out, obs__tenant_name((int)e->b));
        rc |= lmd_buf_append(out, "}}", 2);
        break;
    default:
        break;
    }
    return rc;
}

int obs_trace_render(struct lmd_buf *out, double seconds)
{
    int pid = (int)getpid();
    int rc = lmd_buf_printf(out,
                            "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
                            "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":",
                            pid);
    char pname[OBS_MAX_MODELS * (OBS__NAME_MAX + 2) + 8];
    size_t o = (size_t)snprintf(pname, sizeof pname, "lmd");
    for (int m = 0; m < g_obs.n_models && o < sizeof pname; m++)
        o += (size_t)snprintf(pname + o, sizeof pname - o, "%s%s", m ? ", " : " ", g_obs.models[m]);
    rc |= put_str(out, pname);
    rc |= lmd_buf_printf(out, "}}");
    /* One engine track per model: "engine", or "engine <id>" with several. */
    for (int m = 0; m < g_obs.n_models; m++) {
        rc |= lmd_buf_printf(out,
                             ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":", pid,
                             engine_tid(m));
        snprintf(pname, sizeof pname, "engine%s%s", g_obs.n_models > 1 ? " " : "",
                 g_obs.n_models > 1 ? g_obs.models[m] : "");
        rc |= put_str(out, pname);
        rc |= lmd_buf_printf(out, "}}");
    }
    rc |= lmd_buf_printf(out,
                         ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{"
                         "\"name\":\"admission\"}}",
                         pid, TID_ADMISSION);
    if (rc)
        return LMD_ENOMEM;

    if (obs_tracing() && g_obs.ring) {
        uint64_t now = lmd_time_mono_ns();
        uint64_t window = seconds > 0 && seconds < 1e9 ? (uint64_t)(seconds * 1e9) : 0;
        uint64_t since = window && window < now ? now - window : 0;
        struct event *ev = malloc(g_obs.ring_cap * sizeof *ev);
        uint64_t *admitted = malloc(g_obs.ring_cap * sizeof *admitted);
        if (!ev || !admitted) {
            free(ev);
            free(admitted);
            return LMD_ENOMEM;
        }
        size_t n = snapshot(ev, since), n_admitted = 0;
        for (size_t i = 0; i < n; i++)
            if (ev[i].ev == OBS_EV_ADMIT)
                admitted[n_admitted++] = ev[i].id;
        qsort(admitted, n_admitted, sizeof *admitted, cmp_u64);
        for (size_t i = 0; i < n && !rc; i++)
            rc |= render_event(out, pid, &ev[i], admitted, n_admitted);
        free(ev);
        free(admitted);
    }
    rc |= lmd_buf_append(out, "\n]}\n", 4);
    return rc ? LMD_ENOMEM : 0;
}
