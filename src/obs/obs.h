/*
 * Observability: the metrics registry and its Prometheus exposition, host
 * and GPU stats, the trace-event ring behind /debug/trace, and the access
 * log. Any subsystem may call it to record (DESIGN.md); it calls nobody
 * above core/.
 *
 * Recording is lock-free: every metric is a fixed set of atomic counters
 * indexed by enums and small label indices fixed at obs_init (classes,
 * tenants), so a record is a few relaxed atomic adds and never allocates.
 * Label cardinality is bounded by construction: a tenant label is either a
 * configured tenant's name or "anonymous", a model label one of the models
 * given to obs_init.
 *
 * Models: the per-request series, the engine-step histograms, the token
 * counters and the engine gauges carry a `model` label. A thread records
 * into the model it is bound to (obs_bind_model): each engine thread serves
 * one model and binds itself once, so the scheduler records without naming
 * the model. Threads that serve every model (the HTTP I/O threads) name it
 * explicitly (obs_observe_model, obs_request_done).
 *
 * Lifetimes: obs_init once at start-up, before any thread records;
 * obs_shutdown at exit. Recording before obs_init (unit tests of other
 * subsystems) is a no-op.
 */
#pragma once

#include "core/buf.h"
#include "core/error.h"

#include <stdbool.h>
#include <stdint.h>

#define OBS_MAX_CLASSES 8
#define OBS_MAX_TENANTS 64
#define OBS_MAX_MODELS 8

struct obs_config {
    const char *const *models;  /* [n_models] model ids, the `model` label; index = the model index */
    int n_models;               /* 0..OBS_MAX_MODELS; 0 = one model named by `model` */
    const char *model;          /* with n_models == 0: the one model's label (NULL = "unknown") */
    const char *const *classes; /* [n_classes] service-class names */
    int n_classes;              /* 1..OBS_MAX_CLASSES */
    const char *const *tenants; /* [n_tenants] tenant names; index 0 is the anonymous one */
    int n_tenants;              /* 1..OBS_MAX_TENANTS */
    bool trace;                 /* keep trace events (--debug-endpoints) */
    int trace_capacity;         /* events kept in the ring; 0 = 1 << 16 */
    const char *nvml_path;      /* NVML library to dlopen; NULL = "libnvidia-ml.so.1",
                                   "" = no GPU metrics */
};

/* Copies every name it is given. LMD_EINVAL on a bad config, LMD_EBUSY when
 * already initialized; obs_init may run again after obs_shutdown (tests). */
int obs_init(const struct obs_config *cfg, struct lmd_err *err);
void obs_shutdown(void);
bool obs_enabled(void);

/* Per-model series recorded by this thread from now on go to model index
 * `model` (out of range: 0). Unbound threads record into model 0. */
void obs_bind_model(int model);

/* ---- histograms (seconds unless named otherwise) ------------------------ */

enum obs_hist {
    OBS_H_TTFT,         /* lmd_time_to_first_token_seconds */
    OBS_H_ITL,          /* lmd_inter_token_latency_seconds */
    OBS_H_E2E,          /* lmd_e2e_request_latency_seconds */
    OBS_H_QUEUE,        /* lmd_request_queue_time_seconds */
    OBS_H_PREFILL,      /* lmd_request_prefill_time_seconds */
    OBS_H_DECODE,       /* lmd_request_decode_time_seconds */
    OBS_H_STEP,         /* lmd_engine_step_seconds */
    OBS_H_BATCH_SIZE,   /* lmd_batch_size: sequences per step (count buckets) */
    OBS_H_BATCH_TOKENS, /* lmd_batch_tokens: tokens per step (count buckets) */
    OBS_H__N,
};

/* Every histogram carries a model label; the time histograms also a class
 * label (cls < 0: the first class); the step and batch histograms ignore
 * cls. obs_observe records into the thread's bound model. */
void obs_observe(enum obs_hist h, int cls, double value);
void obs_observe_model(enum obs_hist h, int model, int cls, double value);

/* ---- counters ------------------------------------------------------------ */

enum obs_counter {
    OBS_C_PROMPT_TOKENS,     /* lmd_prompt_tokens_total */
    OBS_C_GENERATION_TOKENS, /* lmd_generation_tokens_total */
    OBS_C_PREEMPTIONS,       /* lmd_preemptions_total */
    OBS_C_PREFIX_QUERIES,    /* lmd_prefix_cache_queries_total */
    OBS_C_PREFIX_HITS,       /* lmd_prefix_cache_hits_total */
    OBS_C_HTTP_REQUESTS,     /* lmd_http_requests_total (no model label) */
    OBS_C_ACCEPT_PAUSES,     /* lmd_http_accept_pauses_total (no model label) */
    OBS_C_GRAMMAR_TOKENS,    /* lmd_grammar_tokens_total: tokens drawn under a grammar */
    OBS_C_GRAMMAR_MASKS,     /* lmd_grammar_masks_total: of those, drawn again under the full mask */
    OBS_C_GRAMMAR_NS, /* lmd_grammar_seconds_total: time spent in the grammar (check, mask, advance), counted in ns */
    OBS_C__N,
};

/* Every counter but lmd_http_requests_total counts per model (the bound one). */
void obs_count(enum obs_counter c, uint64_t n);

/* lmd_requests_total{status,class,tenant,model}: one finished generation
 * request. status is the HTTP status sent (200, 400, 499 = client gone …);
 * model is the model index it was routed to, or -1 when it was refused
 * before one was chosen (rendered as model="", i.e. no model). */
enum obs_status {
    OBS_S_200,
    OBS_S_400,
    OBS_S_401,
    OBS_S_403,
    OBS_S_404,
    OBS_S_413,
    OBS_S_429,
    OBS_S_499,
    OBS_S_500,
    OBS_S_503,
    OBS_S__N,
};
enum obs_status obs_status_of(int http_status);
void obs_request_done(enum obs_status st, int model, int cls, int tenant);

/* lmd_rejections_total{reason,tenant} */
enum obs_reject {
    OBS_R_UNAUTHORIZED,       /* "unauthorized": missing or unknown key */
    OBS_R_RATE_REQUESTS,      /* "rate_requests": requests/s bucket empty */
    OBS_R_RATE_TOKENS,        /* "rate_tokens": tokens/min bucket empty */
    OBS_R_TENANT_CONCURRENCY, /* "tenant_concurrency" */
    OBS_R_TENANT_QUEUE,       /* "tenant_queue_full" */
    OBS_R_QUEUE_FULL,         /* "queue_full": the global queue */
    OBS_R_DEADLINE,           /* "deadline": refused early, its deadline cannot be met */
    OBS_R_MODEL,              /* "model_not_allowed" */
    OBS_R_CLASS,              /* "class_not_allowed" */
    OBS_R_DRAINING,           /* "draining" */
    OBS_R_TIMEOUT,            /* "timeout": cancelled by the server after waiting too long */
    OBS_R__N,
};
void obs_reject(enum obs_reject why, int tenant);

/* ---- gauges (set by their owner; read at scrape) ------------------------ */

/* Every gauge but lmd_http_connections_open is per model (the bound one). */
enum obs_gauge {
    OBS_G_RUNNING,       /* lmd_requests_running */
    OBS_G_KV_USAGE,      /* lmd_kv_cache_usage_ratio (0..1) */
    OBS_G_KV_FREE,       /* lmd_kv_blocks_free */
    OBS_G_KV_TOTAL,      /* lmd_kv_blocks_capacity (a gauge may not end in _total) */
    OBS_G_KV_BLOCK_SIZE, /* lmd_kv_block_size_tokens */
    OBS_G_CONNECTIONS,   /* lmd_http_connections_open */
    OBS_G_PREPARING,     /* lmd_requests_preparing: waiting for or in a prep worker */
    OBS_G__N,
};
void obs_gauge_set(enum obs_gauge g, double v);
void obs_gauge_add(enum obs_gauge g, double delta);
/* lmd_requests_waiting{model,class} */
void obs_waiting_set(int cls, int n);

/* ---- exposition ---------------------------------------------------------- */

/* Append the whole exposition (text format 0.0.4): every metric above,
 * process stats (lmd_process_resident_memory_bytes, _cpu_seconds_total,
 * _open_fds, _start_time_seconds) and, when NVML could be loaded, per-GPU
 * lmd_gpu_utilization_ratio, _memory_used_bytes, _memory_total_bytes,
 * _power_watts, _temperature_celsius{gpu="i"}. Returns 0 or LMD_ENOMEM. */
int obs_render(struct lmd_buf *out);

/* A collector appends series that live outside the fixed registry (one
 * remote engine's backends, say) to every rendering: whole families, each
 * with its # HELP and # TYPE, names no other collector uses. It runs on
 * the rendering thread and must not block; 0 or LMD_ENOMEM. Collectors
 * are kept across obs_init/obs_shutdown; add before serving, remove
 * before ud goes. */
#define OBS_MAX_COLLECTORS 8
typedef int (*obs_collector_fn)(struct lmd_buf *out, void *ud);
int obs_collector_add(obs_collector_fn fn, void *ud);
void obs_collector_remove(obs_collector_fn fn, void *ud);

/* ---- trace events (Chrome trace-event format) ---------------------------- */

enum obs_ev {
    OBS_EV_STEP,    /* a = sequences, b = tokens, c = prefill sequences; has a duration */
    OBS_EV_PREFILL, /* one prefill chunk: id = request, a = tokens, b = first position */
    OBS_EV_PREEMPT, /* id = request, a = blocks freed */
    OBS_EV_ADMIT,   /* id = request, a = class, b = tenant, c = prompt tokens */
    OBS_EV_REJECT,  /* id = request or 0, a = enum obs_reject, b = tenant */
    OBS_EV_FINISH,  /* id = request, a = generated tokens, b = finish reason */
};

/* Record one event; t0_ns/t1_ns monotonic (core/time.h), t1 = t0 for an
 * instant. A no-op unless tracing is on. Lock-free; the ring overwrites
 * its oldest events. */
void obs_trace(enum obs_ev ev, uint64_t id, uint64_t t0_ns, uint64_t t1_ns, int64_t a, int64_t b, int64_t c);
bool obs_tracing(void);
/* The events of the last `seconds` as one Chrome trace-event JSON object
 * ({"traceEvents":[...],"displayTimeUnit":"ms"}). */
int obs_trace_render(struct lmd_buf *out, double seconds);

/* ---- access log ---------------------------------------------------------- */

struct obs_access {
    const char *id; /* request id, as sent in X-Request-Id */
    const char *method;
    const char *path;
    int status;
    int cls;           /* -1 = none */
    int tenant;        /* -1 = none */
    const char *model; /* NULL = none */
    int prompt_tokens;
    int output_tokens;
    double queue_s, ttft_s, e2e_s; /* < 0 = not applicable */
    const char *finish;            /* "stop", "length", "cancelled", "error" or NULL */
};
/* One line at info level through core/log, in the configured format. */
void obs_access_log(const struct obs_access *a);
