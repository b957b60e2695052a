/*
 * The metrics registry: lifecycle, lock-free recording and the Prometheus
 * text exposition (format 0.0.4) of lmd's own metrics. Process and GPU
 * stats are rendered by sys.c, the trace ring lives in trace.c.
 *
 * Recording is one acquire load of the `on` flag plus relaxed atomic adds
 * on fixed arrays: no locks, no allocation, no CAS loops. Histogram sums
 * are integers (ns for time histograms, units for count histograms) and
 * gauges are fixed-point micro-units, so adding never needs a
 * compare-and-swap on a double. A histogram's _count is not stored: it is
 * the sum of its buckets at scrape time, which keeps _count and the +Inf
 * bucket equal even while other threads record.
 *
 * Scrapes are rare, so rendering takes a mutex; it serializes scrapes with
 * each other (NVML handles, /proc reads), never with recording.
 */
#include "obs/obs_internal.h"

#include "core/time.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct obs__state g_obs;

/* The model this thread's per-model series go to (obs_bind_model). */
static _Thread_local int tl_model;

static pthread_mutex_t g_render_lock = PTHREAD_MUTEX_INITIALIZER;

#define MS 1000000ull     /* ns */
#define SEC 1000000000ull /* ns */

const uint64_t obs__time_bounds_ns[OBS__TIME_BOUNDS] = {
    1 * MS,    2 * MS,    4 * MS,  8 * MS,   16 * MS,  32 * MS,  64 * MS,  128 * MS,  256 * MS,  512 * MS,
    1024 * MS, 2048 * MS, 5 * SEC, 10 * SEC, 20 * SEC, 30 * SEC, 60 * SEC, 120 * SEC, 300 * SEC,
};

/* Families, in the order of enum obs_hist. The first six are per-class
 * request latencies; the last three describe engine steps. */
static const struct {
    const char *name;
    const char *help;
    bool count_buckets; /* powers of two 1 … 8192 instead of time bounds */
    bool per_class;
} hist_info[OBS_H__N] = {
    [OBS_H_TTFT] = {"lmd_time_to_first_token_seconds", "Time from arrival to the first generated token, per request.",
                    false, true},
    [OBS_H_ITL] = {"lmd_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", false,
                   true},
    [OBS_H_E2E] = {"lmd_e2e_request_latency_seconds", "Time from arrival to the last byte, per request.", false, true},
    [OBS_H_QUEUE] = {"lmd_request_queue_time_seconds",
                     "Time a request waited in the queue before its first scheduled step.", false, true},
    [OBS_H_PREFILL] = {"lmd_request_prefill_time_seconds",
                       "Time from a request's first scheduled step to its first token.", false, true},
    [OBS_H_DECODE] = {"lmd_request_decode_time_seconds", "Time from a request's first token to its last token.", false,
                      true},
    [OBS_H_STEP] = {"lmd_engine_step_seconds", "Duration of one engine step (one batch forward and sample).", false,
                    false},
    [OBS_H_BATCH_SIZE] = {"lmd_batch_size", "Sequences in one engine step.", true, false},
    [OBS_H_BATCH_TOKENS] = {"lmd_batch_tokens", "Tokens (prefill and decode) in one engine step.", true, false},
};

static const struct {
    const char *name;
    const char *help;
    bool ns; /* counted in nanoseconds, exposed in seconds (Prometheus' base unit) */
} counter_info[OBS_C__N] = {
    [OBS_C_PROMPT_TOKENS] = {"lmd_prompt_tokens_total", "Prompt tokens prefilled."},
    [OBS_C_GENERATION_TOKENS] = {"lmd_generation_tokens_total", "Tokens generated."},
    [OBS_C_PREEMPTIONS] = {"lmd_preemptions_total", "Sequences preempted to free KV-cache blocks."},
    [OBS_C_PREFIX_QUERIES] = {"lmd_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."},
    [OBS_C_PREFIX_HITS] = {"lmd_prefix_cache_hits_total", "Prompt tokens found in the prefix cache."},
    [OBS_C_HTTP_REQUESTS] = {"lmd_http_requests_total", "HTTP requests received, on every route."},
    [OBS_C_ACCEPT_PAUSES] = {"lmd_http_accept_pauses_total",
                             "Times accepting paused for 100 ms because the process was out of file descriptors."},
    [OBS_C_GRAMMAR_TOKENS] = {"lmd_grammar_tokens_total", "Tokens drawn under a grammar (structured output)."},
    [OBS_C_GRAMMAR_MASKS] = {"lmd_grammar_masks_total",
                             "Grammar tokens whose first draw the grammar refused, drawn again under the full mask."},
    [OBS_C_GRAMMAR_NS] = {"lmd_grammar_seconds_total",
                          "Engine-thread time spent in grammars: checking draws, computing masks, advancing.", true},
};

/* Counters and gauges without a model label: they describe the HTTP side,
 * which every model shares. */
static bool counter_global(int c) { return c == OBS_C_HTTP_REQUESTS || c == OBS_C_ACCEPT_PAUSES; }
static bool gauge_global(int g) { return g == OBS_G_CONNECTIONS || g == OBS_G_PREPARING; }

static const struct {
    const char *name;
    const char *help;
} gauge_info[OBS_G__N] = {
    [OBS_G_RUNNING] = {"lmd_requests_running", "Requests in the running batch."},
    [OBS_G_KV_USAGE] = {"lmd_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0 to 1)."},
    [OBS_G_KV_FREE] = {"lmd_kv_blocks_free", "Free KV-cache blocks."},
    [OBS_G_KV_TOTAL] = {"lmd_kv_blocks_capacity", "KV-cache blocks in all, free and in use."},
    [OBS_G_KV_BLOCK_SIZE] = {"lmd_kv_block_size_tokens",
                             "Token positions per KV-cache block (the prefix cache's unit)."},
    [OBS_G_CONNECTIONS] = {"lmd_http_connections_open", "Open client connections."},
    [OBS_G_PREPARING] = {"lmd_requests_preparing",
                         "Requests waiting for or in a prep worker (chat template, tokenizer)."},
};

static const int status_codes[OBS_S__N] = {
    [OBS_S_200] = 200, [OBS_S_400] = 400, [OBS_S_401] = 401, [OBS_S_403] = 403, [OBS_S_404] = 404,
    [OBS_S_413] = 413, [OBS_S_429] = 429, [OBS_S_499] = 499, [OBS_S_500] = 500, [OBS_S_503] = 503,
};

static const char *const reject_names[OBS_R__N] = {
    [OBS_R_UNAUTHORIZED] = "unauthorized",
    [OBS_R_RATE_REQUESTS] = "rate_requests",
    [OBS_R_RATE_TOKENS] = "rate_tokens",
    [OBS_R_TENANT_CONCURRENCY] = "tenant_concurrency",
    [OBS_R_TENANT_QUEUE] = "tenant_queue_full",
    [OBS_R_QUEUE_FULL] = "queue_full",
    [OBS_R_DEADLINE] = "deadline",
    [OBS_R_MODEL] = "model_not_allowed",
    [OBS_R_CLASS] = "class_not_allowed",
    [OBS_R_DRAINING] = "draining",
    [OBS_R_TIMEOUT] = "timeout",
};

const char *obs__reject_name(enum obs_reject r) { return (unsigned)r < OBS_R__N ? reject_names[r] : "unknown"; }

const char *obs__class_name(int cls) { return cls >= 0 && cls < g_obs.n_classes ? g_obs.classes[cls] : ""; }

const char *obs__tenant_name(int tenant)
{
    return tenant >= 0 && tenant < g_obs.n_tenants ? g_obs.tenants[tenant] : "";
}

/* ---- lifecycle ----------------------------------------------------------- */

static int copy_name(char *dst, const char *src, const char *what, int i, struct lmd_err *err)
{
    if (!src || !*src)
        return lmd_err_set(err, LMD_EINVAL, "obs: %s %d has no name", what, i);
    size_t n = strlen(src);
    /* Truncating could merge two distinct names into one series, so refuse. */
    if (n >= OBS__NAME_MAX)
        return lmd_err_set(err, LMD_EINVAL, "obs: %s name '%.32s…' is longer than %d bytes", what, src,
                           OBS__NAME_MAX - 1);
    memcpy(dst, src, n + 1);
    return 0;
}

int obs_init(const struct obs_config *cfg, struct lmd_err *err)
{
    if (atomic_load(&g_obs.on))
        return lmd_err_set(err, LMD_EBUSY, "obs: already initialized");
    if (cfg->n_classes < 1 || cfg->n_classes > OBS_MAX_CLASSES)
        return lmd_err_set(err, LMD_EINVAL, "obs: %d service classes (1 to %d)", cfg->n_classes, OBS_MAX_CLASSES);
    if (cfg->n_tenants < 1 || cfg->n_tenants > OBS_MAX_TENANTS)
        return lmd_err_set(err, LMD_EINVAL, "obs: %d tenants (1 to %d)", cfg->n_tenants, OBS_MAX_TENANTS);
    if (cfg->n_models < 0 || cfg->n_models > OBS_MAX_MODELS)
        return lmd_err_set(err, LMD_EINVAL, "obs: %d models (1 to %d)", cfg->n_models, OBS_MAX_MODELS);
    if (cfg->trace_capacity < 0)
        return lmd_err_set(err, LMD_EINVAL, "obs: trace capacity %d is negative", cfg->trace_capacity);

    memset(&g_obs, 0, sizeof g_obs);
    const char *one = cfg->model ? cfg->model : "unknown";
    const char *const *models = cfg->n_models ? cfg->models : &one;
    const int n_models = cfg->n_models ? cfg->n_models : 1;
    int rc = 0;
    for (int i = 0; rc == 0 && i < n_models; i++)
        rc = copy_name(g_obs.models[i], models[i], "model", i, err);
    for (int i = 0; rc == 0 && i < cfg->n_classes; i++)
        rc = copy_name(g_obs.classes[i], cfg->classes[i], "class", i, err);
    for (int i = 0; rc == 0 && i < cfg->n_tenants; i++)
        rc = copy_name(g_obs.tenants[i], cfg->tenants[i], "tenant", i, err);
    if (rc == 0)
        rc = obs__trace_init(cfg->trace, cfg->trace_capacity, err);
    if (rc != 0)
        return rc;
    g_obs.n_models = n_models;
    g_obs.n_classes = cfg->n_classes;
    g_obs.n_tenants = cfg->n_tenants;
    g_obs.start_wall_ns = lmd_time_wall_ns();
    obs__nvml_open(cfg->nvml_path ? cfg->nvml_path : "libnvidia-ml.so.1");
    /* Release: a recorder that sees `on` also sees the names and sizes. */
    atomic_store_explicit(&g_obs.on, true, memory_order_release);
    return 0;
}

void obs_shutdown(void)
{
    if (!atomic_load(&g_obs.on))
        return;
    pthread_mutex_lock(&g_render_lock);
    atomic_store(&g_obs.on, false);
    atomic_store(&g_obs.tracing, false);
    obs__nvml_close();
    obs__trace_free();
    pthread_mutex_unlock(&g_render_lock);
}

bool obs_enabled(void) { return atomic_load_explicit(&g_obs.on, memory_order_acquire); }

/* ---- recording ----------------------------------------------------------- */

#define RELAXED memory_order_relaxed

static inline int clamp_class(int cls) { return cls >= 0 && cls < g_obs.n_classes ? cls : 0; }

static inline int clamp_tenant(int t) { return t >= 0 && t < g_obs.n_tenants ? t : 0; }

static inline int clamp_model(int m) { return m >= 0 && m < g_obs.n_models ? m : 0; }

void obs_bind_model(int model) { tl_model = model; }

int obs__bound_model(void) { return clamp_model(tl_model); }

void obs_observe(enum obs_hist h, int cls, double value) { obs_observe_model(h, tl_model, cls, value); }

void obs_observe_model(enum obs_hist h, int model, int cls, double value)
{
    if (!obs_enabled() || (unsigned)h >= OBS_H__N || isnan(value))
        return;
    if (value < 0)
        value = 0;
    struct obs__hist_cell *cell = &g_obs.hist[clamp_model(model)][h][hist_info[h].per_class ? clamp_class(cls) : 0];
    uint64_t v;
    int i = 0;
    if (hist_info[h].count_buckets) {
        /* Counts are whole; 2^62 caps absurd inputs well inside uint64_t. */
        v = value < 0x1p62 ? (uint64_t)(value + 0.5) : (1ull << 62);
        /* The first power of two >= v: bucket 0 holds v <= 1. */
        if (v > 1)
            i = 64 - __builtin_clzll(v - 1);
        if (i > OBS__COUNT_BOUNDS)
            i = OBS__COUNT_BOUNDS;
    } else {
        v = value < 1e9 ? (uint64_t)(value * 1e9 + 0.5) : (uint64_t)1e18; /* ns; over 31 years is +Inf */
        while (i < OBS__TIME_BOUNDS && v > obs__time_bounds_ns[i])
            i++;
    }
    atomic_fetch_add_explicit(&cell->bucket[i], 1, RELAXED);
    atomic_fetch_add_explicit(&cell->sum, v, RELAXED);
}

void obs_count(enum obs_counter c, uint64_t n)
{
    if (!obs_enabled() || (unsigned)c >= OBS_C__N)
        return;
    atomic_fetch_add_explicit(&g_obs.counter[counter_global(c) ? 0 : clamp_model(tl_model)][c].v, n, RELAXED);
}

enum obs_status obs_status_of(int http_status)
{
    for (int i = 0; i < OBS_S__N; i++)
        if (status_codes[i] == http_status)
            return (enum obs_status)i;
    if (http_status < 400)
        return OBS_S_200;
    return http_status < 500 ? OBS_S_400 : OBS_S_500;
}

void obs_request_done(enum obs_status st, int model, int cls, int tenant)
{
    if (!obs_enabled() || (unsigned)st >= OBS_S__N)
        return;
    int m = model >= 0 && model < g_obs.n_models ? model : g_obs.n_models;
    atomic_fetch_add_explicit(&g_obs.requests[st][m][clamp_class(cls)][clamp_tenant(tenant)], 1, RELAXED);
}

void obs_reject(enum obs_reject why, int tenant)
{
    if (!obs_enabled() || (unsigned)why >= OBS_R__N)
        return;
    atomic_fetch_add_explicit(&g_obs.rejections[why][clamp_tenant(tenant)], 1, RELAXED);
}

/* Micro-units; saturating, so a wild value cannot overflow the conversion. */
static inline int64_t to_micro(double v)
{
    if (v >= 9.2e12)
        return INT64_MAX / 2;
    if (v <= -9.2e12)
        return -(INT64_MAX / 2);
    return (int64_t)llround(v * 1e6);
}

void obs_gauge_set(enum obs_gauge g, double v)
{
    if (!obs_enabled() || (unsigned)g >= OBS_G__N || isnan(v))
        return;
    atomic_store_explicit(&g_obs.gauge[gauge_global(g) ? 0 : clamp_model(tl_model)][g], to_micro(v), RELAXED);
}

void obs_gauge_add(enum obs_gauge g, double delta)
{
    if (!obs_enabled() || (unsigned)g >= OBS_G__N || isnan(delta))
        return;
    atomic_fetch_add_explicit(&g_obs.gauge[gauge_global(g) ? 0 : clamp_model(tl_model)][g], to_micro(delta), RELAXED);
}

void obs_waiting_set(int cls, int n)
{
    /* A stray class must not overwrite the first class's queue length. */
    if (!obs_enabled() || cls >= g_obs.n_classes)
        return;
    atomic_store_explicit(&g_obs.waiting[clamp_model(tl_model)][clamp_class(cls)], n, RELAXED);
}

/* ---- exposition ---------------------------------------------------------- */

/* A label value escaped for the text format: backslash, double quote and
 * line feed are the three characters 0.0.4 requires escaping. */
static int put_label(struct lmd_buf *out, const char *key, const char *value, bool first)
{
    int rc = lmd_buf_printf(out, "%s%s=\"", first ? "" : ",", key);
    const char *run = value;
    for (const char *p = value; *p; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        rc |= lmd_buf_append(out, run, (size_t)(p - run));
        rc |= lmd_buf_append(out, esc, 2);
        run = p + 1;
    }
    rc |= lmd_buf_append(out, run, strlen(run));
    rc |= lmd_buf_append(out, "\"", 1);
    return rc;
}

/* An unsigned fixed-point number, e.g. (1500000, 9) → "0.0015": exact,
 * with no float rounding, and no trailing zeros. */
static void fmt_fixed(char *dst, size_t cap, uint64_t v, int decimals)
{
    uint64_t scale = 1;
    for (int i = 0; i < decimals; i++)
        scale *= 10;
    int n =
        snprintf(dst, cap, "%llu.%0*llu", (unsigned long long)(v / scale), decimals, (unsigned long long)(v % scale));
    char *end = dst + n - 1;
    while (*end == '0')
        *end-- = '\0';
    if (*end == '.')
        *end = '\0';
}

static int put_help_type(struct lmd_buf *out, const char *name, const char *help, const char *type)
{
    return lmd_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int render_hist(struct lmd_buf *out, enum obs_hist h)
{
    const char *name = hist_info[h].name;
    int rc = put_help_type(out, name, hist_info[h].help, "histogram");
    int n_series = hist_info[h].per_class ? g_obs.n_classes : 1;
    int n_bounds = hist_info[h].count_buckets ? OBS__COUNT_BOUNDS : OBS__TIME_BOUNDS;
    for (int m = 0; m < g_obs.n_models; m++)
        for (int s = 0; s < n_series; s++) {
            /* The labels shared by every line of this series, then `le`. */
            struct lmd_buf labels = {0};
            rc |= put_label(&labels, "model", g_obs.models[m], true);
            if (hist_info[h].per_class)
                rc |= put_label(&labels, "class", g_obs.classes[s], false);
            rc |= lmd_buf_append(&labels, ",", 1);
            const char *lb = labels.ptr ? labels.ptr : "";
            struct obs__hist_cell *cell = &g_obs.hist[m][h][s];
            uint64_t cum = 0;
            char le[32];
            for (int i = 0; i <= n_bounds; i++) {
                cum += atomic_load_explicit(&cell->bucket[i], RELAXED);
                if (i == n_bounds)
                    snprintf(le, sizeof le, "+Inf");
                else if (hist_info[h].count_buckets)
                    snprintf(le, sizeof le, "%u", 1u << i);
                else
                    fmt_fixed(le, sizeof le, obs__time_bounds_ns[i], 9);
                rc |= lmd_buf_printf(out, "%s_bucket{%sle=\"%s\"} %llu\n", name, lb, le, (unsigned long long)cum);
            }
            uint64_t sum = atomic_load_explicit(&cell->sum, RELAXED);
            char sum_s[32];
            if (hist_info[h].count_buckets)
                snprintf(sum_s, sizeof sum_s, "%llu", (unsigned long long)sum);
            else
                fmt_fixed(sum_s, sizeof sum_s, sum, 9);
            /* Strip the trailing comma for the _sum/_count label sets. */
            if (labels.len)
                labels.ptr[--labels.len] = '\0';
            const char *open = labels.len ? "{" : "", *close = labels.len ? "}" : "";
            rc |= lmd_buf_printf(out, "%s_sum%s%s%s %s\n", name, open, labels.len ? labels.ptr : "", close, sum_s);
            rc |= lmd_buf_printf(out, "%s_count%s%s%s %llu\n", name, open, labels.len ? labels.ptr : "", close,
                                 (unsigned long long)cum);
            lmd_buf_free(&labels);
        }
    return rc;
}

static int render_gauge_value(struct lmd_buf *out, int64_t micro)
{
    uint64_t mag = micro < 0 ? (uint64_t)(-micro) : (uint64_t)micro;
    char v[40];
    fmt_fixed(v, sizeof v, mag, 6);
    return lmd_buf_printf(out, " %s%s\n", micro < 0 ? "-" : "", v);
}

static int render_lmd(struct lmd_buf *out)
{
    int rc = 0;
    for (int h = 0; h < OBS_H__N; h++)
        rc |= render_hist(out, (enum obs_hist)h);

    for (int c = 0; c < OBS_C__N; c++) {
        rc |= put_help_type(out, counter_info[c].name, counter_info[c].help, "counter");
        if (counter_global(c)) {
            rc |= lmd_buf_printf(out, "%s %llu\n", counter_info[c].name,
                                 (unsigned long long)atomic_load_explicit(&g_obs.counter[0][c].v, RELAXED));
            continue;
        }
        for (int m = 0; m < g_obs.n_models; m++) {
            rc |= lmd_buf_printf(out, "%s{", counter_info[c].name);
            rc |= put_label(out, "model", g_obs.models[m], true);
            const unsigned long long v = atomic_load_explicit(&g_obs.counter[m][c].v, RELAXED);
            if (counter_info[c].ns)
                rc |= lmd_buf_printf(out, "} %llu.%09llu\n", v / 1000000000ull, v % 1000000000ull);
            else
                rc |= lmd_buf_printf(out, "} %llu\n", v);
        }
    }

    /* Labelled counters list only the series that have counted something:
     * all combinations would be thousands of zero lines. */
    rc |= put_help_type(out, "lmd_requests_total", "Generation requests finished, by the HTTP status sent.", "counter");
    for (int s = 0; s < OBS_S__N; s++)
        for (int m = 0; m <= g_obs.n_models; m++)
            for (int c = 0; c < g_obs.n_classes; c++)
                for (int t = 0; t < g_obs.n_tenants; t++) {
                    uint64_t v = atomic_load_explicit(&g_obs.requests[s][m][c][t], RELAXED);
                    if (!v)
                        continue;
                    char st[8];
                    snprintf(st, sizeof st, "%d", status_codes[s]);
                    rc |= lmd_buf_append(out, "lmd_requests_total{", 19);
                    rc |= put_label(out, "status", st, true);
                    rc |= put_label(out, "class", g_obs.classes[c], false);
                    rc |= put_label(out, "tenant", g_obs.tenants[t], false);
                    /* The slot past the last model: refused before a model was chosen. */
                    rc |= put_label(out, "model", m < g_obs.n_models ? g_obs.models[m] : "", false);
                    rc |= lmd_buf_printf(out, "} %llu\n", (unsigned long long)v);
                }

    rc |= put_help_type(out, "lmd_rejections_total", "Requests refused before queueing or cancelled by the server.",
                        "counter");
    for (int r = 0; r < OBS_R__N; r++)
        for (int t = 0; t < g_obs.n_tenants; t++) {
            uint64_t v = atomic_load_explicit(&g_obs.rejections[r][t], RELAXED);
            if (!v)
                continue;
            rc |= lmd_buf_append(out, "lmd_rejections_total{", 21);
            rc |= put_label(out, "reason", reject_names[r], true);
            rc |= put_label(out, "tenant", g_obs.tenants[t], false);
            rc |= lmd_buf_printf(out, "} %llu\n", (unsigned long long)v);
        }

    for (int g = 0; g < OBS_G__N; g++) {
        rc |= put_help_type(out, gauge_info[g].name, gauge_info[g].help, "gauge");
        if (gauge_global(g)) {
            rc |= lmd_buf_printf(out, "%s", gauge_info[g].name);
            rc |= render_gauge_value(out, atomic_load_explicit(&g_obs.gauge[0][g], RELAXED));
            continue;
        }
        for (int m = 0; m < g_obs.n_models; m++) {
            rc |= lmd_buf_printf(out, "%s{", gauge_info[g].name);
            rc |= put_label(out, "model", g_obs.models[m], true);
            rc |= lmd_buf_append(out, "}", 1);
            rc |= render_gauge_value(out, atomic_load_explicit(&g_obs.gauge[m][g], RELAXED));
        }
    }

    rc |= put_help_type(out, "lmd_requests_waiting", "Requests in the waiting queue, by model and service class.",
                        "gauge");
    for (int m = 0; m < g_obs.n_models; m++)
        for (int c = 0; c < g_obs.n_classes; c++) {
            rc |= lmd_buf_append(out, "lmd_requests_waiting{", 21);
            rc |= put_label(out, "model", g_obs.models[m], true);
            rc |= put_label(out, "class", g_obs.classes[c], false);
            rc |= lmd_buf_printf(out, "} %lld\n", (long long)atomic_load_explicit(&g_obs.waiting[m][c], RELAXED));
        }

    rc |= put_help_type(out, "lmd_trace_events_dropped_total",
                        "Trace events lost because their ring slot was still being written.", "counter");
    rc |= lmd_buf_printf(out, "lmd_trace_events_dropped_total %llu\n",
                         (unsigned long long)atomic_load_explicit(&g_obs.ring_dropped, RELAXED));
    return rc;
}

/* Collectors: subsystems whose series are not in the fixed registry. */
static pthread_mutex_t g_coll_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    obs_collector_fn fn;
    void *ud;
} g_coll[OBS_MAX_COLLECTORS];
static int g_n_coll;

int obs_collector_add(obs_collector_fn fn, void *ud)
{
    pthread_mutex_lock(&g_coll_lock);
    int rc = LMD_ERANGE;
    if (g_n_coll < OBS_MAX_COLLECTORS) {
        g_coll[g_n_coll].fn = fn;
        g_coll[g_n_coll++].ud = ud;
        rc = 0;
    }
    pthread_mutex_unlock(&g_coll_lock);
    return rc;
}

void obs_collector_remove(obs_collector_fn fn, void *ud)
{
    pthread_mutex_lock(&g_coll_lock);
    for (int i = 0; i < g_n_coll; i++)
        if (g_coll[i].fn == fn && g_coll[i].ud == ud) {
            g_coll[i] = g_coll[--g_n_coll];
            break;
        }
    pthread_mutex_unlock(&g_coll_lock);
}

int obs_render(struct lmd_buf *out)
{
    if (!obs_enabled())
        return 0;
    pthread_mutex_lock(&g_render_lock);
    int rc = render_lmd(out);
    rc |= obs__render_process(out);
    rc |= obs__render_gpu(out);
    pthread_mutex_lock(&g_coll_lock);
    for (int i = 0; i < g_n_coll; i++)
        rc |= g_coll[i].fn(out, g_coll[i].ud);
    pthread_mutex_unlock(&g_coll_lock);
    pthread_mutex_unlock(&g_render_lock);
    return rc ? LMD_ENOMEM : 0;
}
