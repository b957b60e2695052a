/*
 * State shared by the files of obs/ (metrics.c, sys.c, trace.c, access.c).
 * Not for other subsystems: they see only obs.h.
 *
 * Everything lives in one process-lifetime struct, g_obs. The config part
 * (names, sizes) is written by obs_init before `on` is set and is read-only
 * afterwards; the recording part is atomics only.
 */
#pragma once

#include "obs/obs.h"

#include <stdatomic.h>
#include <stddef.h>

/* Time-histogram bounds: 1, 2, 4 … 2048 ms, then 5, 10, 20, 30, 60, 120 and
 * 300 s. Count-histogram bounds: 1, 2, 4 … 8192. Each histogram keeps one
 * more bucket for +Inf. */
#define OBS__TIME_BOUNDS 19
#define OBS__COUNT_BOUNDS 14
#define OBS__MAX_BUCKETS (OBS__TIME_BOUNDS + 1)

#define OBS__NAME_MAX 128 /* bytes kept of a class, tenant or model name */

extern const uint64_t obs__time_bounds_ns[OBS__TIME_BOUNDS]; /* ns */

/* Cells and counters start on their own cache lines so that threads
 * recording into different ones (one class each, tokens vs. HTTP requests)
 * do not bounce a shared line between cores. */
#define OBS__LINE 64

struct obs__hist_cell {
    _Alignas(OBS__LINE) _Atomic uint64_t bucket[OBS__MAX_BUCKETS]; /* per bucket, not cumulative; last is +Inf */
    _Atomic uint64_t sum;                                          /* ns for time histograms, units for count ones */
};

struct obs__counter {
    _Alignas(OBS__LINE) _Atomic uint64_t v;
};

/* One trace-ring slot, written as a seqlock: `seq` is the ticket + 1 once
 * the payload is complete, OBS__SLOT_BUSY while a producer writes it and 0
 * before first use. The payload is atomic (relaxed) so that a reader racing
 * a writer is a well-defined torn read that the seq check then discards. */
#define OBS__SLOT_BUSY UINT64_MAX
struct obs__slot {
    _Alignas(OBS__LINE) _Atomic uint64_t seq; /* 64 bytes in all: one line per slot */
    _Atomic uint64_t id;
    _Atomic uint64_t t0, t1; /* ns, monotonic */
    _Atomic int64_t a, b, c;
    _Atomic int ev; /* enum obs_ev */
};
_Static_assert(sizeof(struct obs__slot) == OBS__LINE, "a trace slot is one cache line");

struct obs__state {
    atomic_bool on;

    /* config: set by obs_init, then read-only */
    char models[OBS_MAX_MODELS][OBS__NAME_MAX];
    int n_models;
    char classes[OBS_MAX_CLASSES][OBS__NAME_MAX];
    int n_classes;
    char tenants[OBS_MAX_TENANTS][OBS__NAME_MAX];
    int n_tenants;
    uint64_t start_wall_ns; /* ns since the epoch, at obs_init */

    /* recording */
    struct obs__hist_cell hist[OBS_MAX_MODELS][OBS_H__N][OBS_MAX_CLASSES];
    struct obs__counter counter[OBS_MAX_MODELS][OBS_C__N]; /* model-less counters live in [0] */
    /* [.][n_models] is "no model": refused before a model was chosen */
    _Atomic uint64_t requests[OBS_S__N][OBS_MAX_MODELS + 1][OBS_MAX_CLASSES][OBS_MAX_TENANTS];
    _Atomic uint64_t rejections[OBS_R__N][OBS_MAX_TENANTS];
    _Atomic int64_t gauge[OBS_MAX_MODELS][OBS_G__N];          /* micro-units (value * 1e6); model-less in [0] */
    _Atomic int64_t waiting[OBS_MAX_MODELS][OBS_MAX_CLASSES]; /* requests */

    /* trace ring */
    atomic_bool tracing;
    struct obs__slot *ring;                         /* [ring_cap] */
    uint64_t ring_cap;                              /* a power of two */
    _Alignas(OBS__LINE) _Atomic uint64_t ring_head; /* next ticket; its own line, every producer bumps it */
    _Atomic uint64_t ring_dropped;                  /* events lost to a slot still being written */
};

extern struct obs__state g_obs;

/* sys.c: process stats and NVML. */
void obs__nvml_open(const char *path);
void obs__nvml_close(void);
int obs__render_process(struct lmd_buf *out);
int obs__render_gpu(struct lmd_buf *out);

/* trace.c */
int obs__trace_init(bool on, int capacity, struct lmd_err *err);
void obs__trace_free(void);

/* Append s as the body of a JSON string (no quotes), escaping what JSON
 * requires; bytes that are not UTF-8 become U+FFFD. */
int obs__json_chars(struct lmd_buf *out, const char *s);

/* The model index this thread records into (obs_bind_model), in range. */
int obs__bound_model(void);

/* Names of the label values (metrics.c). */
const char *obs__reject_name(enum obs_reject r);
const char *obs__class_name(int cls);     /* cls out of range: "" */
const char *obs__tenant_name(int tenant); /* tenant out of range: "" */
