/*
 * Observability tests: the exposition is parsed back and every counter,
 * gauge and histogram bucket/_sum/_count must equal what was recorded;
 * recording from several threads at once loses nothing; label values are
 * escaped; NVML absent and present (a fake library); the trace ring's JSON
 * parses and holds the newest events after wrap-around, also while writers
 * race the reader; access and ordinary log lines in text and JSON.
 *
 * `obs_test --promtool PATH` runs only the promtool check: the exposition
 * of a busy registry must pass `promtool check metrics` without a word.
 */
#include "core/log.h"
#include "core/time.h"
#include "obs/obs.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static const char *const g_classes[] = {"interactive", "batch"};
static const char *const g_tenants[] = {"anonymous", "acme"};

static void init_obs(const char *const *tenants, int n_tenants, bool trace, int cap, const char *nvml)
{
    struct obs_config cfg = {
        .model = "tiny",
        .classes = g_classes,
        .n_classes = 2,
        .tenants = tenants ? tenants : g_tenants,
        .n_tenants = tenants ? n_tenants : 2,
        .trace = trace,
        .trace_capacity = cap,
        .nvml_path = nvml ? nvml : "",
    };
    struct lmd_err err = {0};
    int rc = obs_init(&cfg, &err);
    if (rc)
        fail_msg("obs_init: %s", err.msg);
}

static int teardown(void **state)
{
    obs_shutdown();
    lmd_log_set_format(LMD_LOG_FORMAT_TEXT);
    lmd_log_set_level(LMD_LOG_INFO);
    return 0;
}

/* ---- a small exposition parser ------------------------------------------- */

struct sample {
    char *key; /* name{labels} exactly as rendered */
    double value;
};

struct expo {
    struct sample *s;
    int n;
    char **typed; /* family names with a # TYPE line */
    int n_typed;
};

static void expo_parse(struct expo *e, const char *text)
{
    memset(e, 0, sizeof *e);
    char *copy = strdup(text);
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char *name = line + 7;
            *strchr(name, ' ') = '\0';
            e->typed = realloc(e->typed, sizeof *e->typed * (size_t)(e->n_typed + 1));
            e->typed[e->n_typed++] = strdup(name);
            continue;
        }
        if (line[0] == '#')
            continue;
        /* Values never hold spaces; label values may, so split at the last. */
        char *sp = strrchr(line, ' ');
        assert_non_null(sp);
        *sp = '\0';
        e->s = realloc(e->s, sizeof *e->s * (size_t)(e->n + 1));
        e->s[e->n].key = strdup(line);
        e->s[e->n].value = strtod(sp + 1, NULL);
        e->n++;
    }
    free(copy);
}

static void expo_free(struct expo *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->s[i].key);
    for (int i = 0; i < e->n_typed; i++)
        free(e->typed[i]);
    free(e->s);
    free(e->typed);
}

static bool expo_has(const struct expo *e, const char *key)
{
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->s[i].key, key) == 0)
            return true;
    return false;
}

static double expo_get(const struct expo *e, const char *key)
{
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->s[i].key, key) == 0)
            return e->s[i].value;
    fail_msg("no sample %s", key);
    return 0;
}

/* Every sample belongs to a family announced by a # TYPE line. */
static void expo_check_typed(const struct expo *e)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count", ""};
    for (int i = 0; i < e->n; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s", e->s[i].key);
        char *brace = strchr(name, '{');
        if (brace)
            *brace = '\0';
        bool found = false;
        for (int k = 0; k < 4 && !found; k++) {
            size_t nl = strlen(name), sl = strlen(suffixes[k]);
            if (nl < sl || strcmp(name + nl - sl, suffixes[k]) != 0)
                continue;
            for (int t = 0; t < e->n_typed && !found; t++)
                found = strlen(e->typed[t]) == nl - sl && strncmp(e->typed[t], name, nl - sl) == 0;
        }
        if (!found)
            fail_msg("sample %s has no # TYPE line", e->s[i].key);
    }
}

static void render(struct expo *e)
{
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    assert_non_null(b.ptr);
    expo_parse(e, b.ptr);
    expo_check_typed(e);
    lmd_buf_free(&b);
}

#define TTFT "lmd_time_to_first_token_seconds"
#define L_INT "model=\"tiny\",class=\"interactive\""
#define L_BATCH "model=\"tiny\",class=\"batch\""

/* ---- metrics ------------------------------------------------------------- */

static void test_before_init_is_noop(void **state)
{
    obs_observe(OBS_H_TTFT, 0, 1.0);
    obs_count(OBS_C_PROMPT_TOKENS, 5);
    obs_request_done(OBS_S_200, 0, 0, 0);
    obs_trace(OBS_EV_STEP, 0, 1, 2, 1, 1, 0);
    assert_false(obs_enabled());
    assert_false(obs_tracing());
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    assert_int_equal(b.len, 0);
    lmd_buf_free(&b);
}

static void test_init_rejects_bad_config(void **state)
{
    struct lmd_err err = {0};
    const char *const one[] = {"x"};
    struct obs_config cfg = {.model = "m", .classes = one, .n_classes = 0, .tenants = one, .n_tenants = 1};
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.n_classes = OBS_MAX_CLASSES + 1;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.n_classes = 1;
    cfg.n_tenants = 0;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.n_tenants = 1;
    cfg.trace_capacity = -1;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.trace_capacity = 0;
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const char *const bad[] = {longname};
    cfg.classes = bad;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "class"));
    const char *const empty[] = {""};
    cfg.classes = empty;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.classes = one;
    cfg.trace = true;
    cfg.trace_capacity = (1 << 24) + 1;
    assert_int_equal(obs_init(&cfg, &err), LMD_ERANGE);
    assert_false(obs_enabled());
    cfg.trace_capacity = 0;
    cfg.nvml_path = "";
    assert_int_equal(obs_init(&cfg, &err), 0);
    assert_int_equal(obs_init(&cfg, &err), LMD_EBUSY);
    obs_shutdown();
}

static void test_render_values(void **state)
{
    init_obs(NULL, 0, false, 0, NULL);
    /* TTFT, interactive: one value per interesting bucket edge. */
    const double ttft[] = {0.0005, 0.001, 0.0015, 0.003, 1.5, 4.0, 400.0};
    for (size_t i = 0; i < sizeof ttft / sizeof ttft[0]; i++)
        obs_observe(OBS_H_TTFT, 0, ttft[i]);
    obs_observe(OBS_H_TTFT, 1, 0.010);
    obs_observe(OBS_H_TTFT, 1, 0.0 / 0.0); /* NaN: dropped */
    obs_observe(OBS_H_ITL, -1, 0.02);      /* cls < 0: the first class */
    obs_observe(OBS_H_E2E, 1, -3.0);       /* negative: counted as 0 */
    obs_observe(OBS_H_STEP, 1, 0.05);      /* unlabelled: the class is ignored */
    const double bs[] = {1, 3, 8192, 9000};
    for (size_t i = 0; i < 4; i++)
        obs_observe(OBS_H_BATCH_SIZE, 0, bs[i]);
    obs_count(OBS_C_PROMPT_TOKENS, 100);
    obs_count(OBS_C_PROMPT_TOKENS, 23);
    obs_count(OBS_C_GENERATION_TOKENS, 7);
    obs_request_done(OBS_S_200, 0, 0, 1);
    obs_request_done(OBS_S_200, 0, 0, 1);
    obs_request_done(OBS_S_429, 0, 1, 0);
    obs_request_done(obs_status_of(418), 0, 1, 0);
    obs_request_done(OBS_S__N, 0, 0, 0); /* out of range: ignored */
    obs_reject(OBS_R_QUEUE_FULL, 1);
    obs_reject(OBS_R_QUEUE_FULL, 1);
    obs_reject(OBS_R_QUEUE_FULL, 1);
    obs_reject(OBS_R_UNAUTHORIZED, 99); /* unknown tenant: anonymous */
    obs_gauge_set(OBS_G_RUNNING, 3);
    obs_gauge_add(OBS_G_RUNNING, 2);
    obs_gauge_set(OBS_G_KV_USAGE, 0.25);
    obs_gauge_add(OBS_G_CONNECTIONS, -1);
    obs_waiting_set(1, 4);
    obs_waiting_set(7, 9); /* no such class: ignored */

    struct expo e;
    render(&e);
    static const struct {
        const char *le;
        double cum;
    } want[] = {{"0.001", 2}, {"0.002", 3}, {"0.004", 4}, {"0.008", 4}, {"1.024", 4},
                {"2.048", 5}, {"5", 6},     {"10", 6},    {"300", 6},   {"+Inf", 7}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char key[160];
        snprintf(key, sizeof key, TTFT "_bucket{" L_INT ",le=\"%s\"}", want[i].le);
        assert_true(expo_get(&e, key) == want[i].cum);
    }
    assert_true(expo_get(&e, TTFT "_count{" L_INT "}") == 7);
    assert_true(expo_get(&e, TTFT "_sum{" L_INT "}") == 405.506);
    assert_true(expo_get(&e, TTFT "_bucket{" L_BATCH ",le=\"0.008\"}") == 0);
    assert_true(expo_get(&e, TTFT "_bucket{" L_BATCH ",le=\"0.016\"}") == 1);
    assert_true(expo_get(&e, TTFT "_count{" L_BATCH "}") == 1);
    assert_true(expo_get(&e, TTFT "_sum{" L_BATCH "}") == 0.01);
    assert_true(expo_get(&e, "lmd_inter_token_latency_seconds_bucket{" L_INT ",le=\"0.016\"}") == 0);
    assert_true(expo_get(&e, "lmd_inter_token_latency_seconds_bucket{" L_INT ",le=\"0.032\"}") == 1);
    assert_true(expo_get(&e, "lmd_e2e_request_latency_seconds_bucket{" L_BATCH ",le=\"0.001\"}") == 1);
    assert_true(expo_get(&e, "lmd_e2e_request_latency_seconds_sum{" L_BATCH "}") == 0);
    assert_true(expo_get(&e, "lmd_engine_step_seconds_bucket{model=\"tiny\",le=\"0.032\"}") == 0);
    assert_true(expo_get(&e, "lmd_engine_step_seconds_bucket{model=\"tiny\",le=\"0.064\"}") == 1);
    assert_true(expo_get(&e, "lmd_engine_step_seconds_count{model=\"tiny\"}") == 1);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"1\"}") == 1);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"2\"}") == 1);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"4\"}") == 2);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"4096\"}") == 2);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"8192\"}") == 3);
    assert_true(expo_get(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"+Inf\"}") == 4);
    assert_true(expo_get(&e, "lmd_batch_size_sum{model=\"tiny\"}") == 17196);
    assert_true(expo_get(&e, "lmd_batch_size_count{model=\"tiny\"}") == 4);
    assert_true(expo_get(&e, "lmd_batch_tokens_count{model=\"tiny\"}") == 0);
    assert_false(expo_has(&e, "lmd_batch_size_bucket{model=\"tiny\",le=\"16384\"}"));

    assert_true(expo_get(&e, "lmd_prompt_tokens_total{model=\"tiny\"}") == 123);
    assert_true(expo_get(&e, "lmd_generation_tokens_total{model=\"tiny\"}") == 7);
    assert_true(expo_get(&e, "lmd_preemptions_total{model=\"tiny\"}") == 0);
    assert_true(
        expo_get(&e, "lmd_requests_total{status=\"200\",class=\"interactive\",tenant=\"acme\",model=\"tiny\"}") == 2);
    assert_true(
        expo_get(&e, "lmd_requests_total{status=\"429\",class=\"batch\",tenant=\"anonymous\",model=\"tiny\"}") == 1);
    assert_true(
        expo_get(&e, "lmd_requests_total{status=\"400\",class=\"batch\",tenant=\"anonymous\",model=\"tiny\"}") == 1);
    assert_false(
        expo_has(&e, "lmd_requests_total{status=\"200\",class=\"interactive\",tenant=\"anonymous\",model=\"tiny\"}"));
    assert_true(expo_get(&e, "lmd_rejections_total{reason=\"queue_full\",tenant=\"acme\"}") == 3);
    assert_true(expo_get(&e, "lmd_rejections_total{reason=\"unauthorized\",tenant=\"anonymous\"}") == 1);
    assert_true(expo_get(&e, "lmd_requests_running{model=\"tiny\"}") == 5);
    assert_true(expo_get(&e, "lmd_kv_cache_usage_ratio{model=\"tiny\"}") == 0.25);
    assert_true(expo_get(&e, "lmd_http_connections_open") == -1);
    assert_true(expo_get(&e, "lmd_requests_waiting{model=\"tiny\",class=\"interactive\"}") == 0);
    assert_true(expo_get(&e, "lmd_requests_waiting{model=\"tiny\",class=\"batch\"}") == 4);

    /* Process stats come from /proc and getrusage. */
    assert_true(expo_get(&e, "lmd_process_resident_memory_bytes") > 0);
    assert_true(expo_get(&e, "lmd_process_open_fds") >= 3);
    assert_true(expo_get(&e, "lmd_process_cpu_seconds_total") >= 0);
    double now = (double)lmd_time_wall_ns() / 1e9, start = expo_get(&e, "lmd_process_start_time_seconds");
    assert_true(start > now - 3600 && start <= now + 2);
    expo_free(&e);
}

/* Several models: engine-thread series go to the bound model, I/O-thread
 * series to the model named, refusals before routing to model="", and
 * the HTTP series carry no model at all. */
static void test_models(void **state)
{
    (void)state;
    const char *models[] = {"gemma", "tiny"};
    struct obs_config cfg = {.models = models,
                             .n_models = 2,
                             .classes = g_classes,
                             .n_classes = 2,
                             .tenants = g_tenants,
                             .n_tenants = 2,
                             .nvml_path = ""};
    struct lmd_err err = {0};
    cfg.n_models = OBS_MAX_MODELS + 1;
    assert_int_equal(obs_init(&cfg, &err), LMD_EINVAL);
    cfg.n_models = 2;
    assert_int_equal(obs_init(&cfg, &err), 0);
    obs_bind_model(1);
    obs_count(OBS_C_PROMPT_TOKENS, 5);
    obs_count(OBS_C_HTTP_REQUESTS, 2);
    obs_observe(OBS_H_STEP, 0, 0.003);
    obs_gauge_set(OBS_G_KV_FREE, 7);
    obs_gauge_add(OBS_G_CONNECTIONS, 3);
    obs_waiting_set(1, 2);
    obs_bind_model(0);
    obs_count(OBS_C_PROMPT_TOKENS, 1);
    obs_observe_model(OBS_H_TTFT, 1, 1, 0.5);
    obs_request_done(OBS_S_200, 1, 1, 1);
    obs_request_done(OBS_S_404, -1, 0, 0);
    obs_request_done(OBS_S_400, 99, 0, 0); /* no such model: as if none was chosen */

    struct expo e;
    render(&e);
    assert_true(expo_get(&e, "lmd_prompt_tokens_total{model=\"tiny\"}") == 5);
    assert_true(expo_get(&e, "lmd_prompt_tokens_total{model=\"gemma\"}") == 1);
    assert_true(expo_get(&e, "lmd_http_requests_total") == 2);
    assert_true(expo_get(&e, "lmd_engine_step_seconds_count{model=\"tiny\"}") == 1);
    assert_true(expo_get(&e, "lmd_engine_step_seconds_count{model=\"gemma\"}") == 0);
    assert_true(expo_get(&e, "lmd_kv_blocks_free{model=\"tiny\"}") == 7);
    assert_true(expo_get(&e, "lmd_kv_blocks_free{model=\"gemma\"}") == 0);
    assert_true(expo_get(&e, "lmd_http_connections_open") == 3);
    assert_true(expo_get(&e, "lmd_requests_waiting{model=\"tiny\",class=\"batch\"}") == 2);
    assert_true(expo_get(&e, "lmd_requests_waiting{model=\"gemma\",class=\"batch\"}") == 0);
    assert_true(expo_get(&e, TTFT "_count{model=\"tiny\",class=\"batch\"}") == 1);
    assert_true(expo_get(&e, TTFT "_count{model=\"gemma\",class=\"batch\"}") == 0);
    assert_true(expo_get(&e, "lmd_requests_total{status=\"200\",class=\"batch\",tenant=\"acme\",model=\"tiny\"}") == 1);
    assert_true(
        expo_get(&e, "lmd_requests_total{status=\"404\",class=\"interactive\",tenant=\"anonymous\",model=\"\"}") == 1);
    assert_true(
        expo_get(&e, "lmd_requests_total{status=\"400\",class=\"interactive\",tenant=\"anonymous\",model=\"\"}") == 1);
    expo_free(&e);
}

static void test_status_of(void **state)
{
    assert_int_equal(obs_status_of(200), OBS_S_200);
    assert_int_equal(obs_status_of(204), OBS_S_200);
    assert_int_equal(obs_status_of(499), OBS_S_499);
    assert_int_equal(obs_status_of(503), OBS_S_503);
    assert_int_equal(obs_status_of(418), OBS_S_400);
    assert_int_equal(obs_status_of(502), OBS_S_500);
}

static void test_label_escaping(void **state)
{
    const char *const tenants[] = {"anonymous", "a\"b", "c\\d", "e\nf"};
    init_obs(tenants, 4, false, 0, NULL);
    for (int t = 1; t < 4; t++)
        obs_request_done(OBS_S_200, 0, 0, t);
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    assert_non_null(strstr(b.ptr, "tenant=\"a\\\"b\",model=\"tiny\"} 1\n"));
    assert_non_null(strstr(b.ptr, "tenant=\"c\\\\d\",model=\"tiny\"} 1\n"));
    assert_non_null(strstr(b.ptr, "tenant=\"e\\nf\",model=\"tiny\"} 1\n"));
    /* No raw newline may split a sample line. */
    assert_null(strstr(b.ptr, "e\nf"));
    lmd_buf_free(&b);
}

#define N_THREADS 4
#define N_ITERS 200000

static void *record_worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < N_ITERS; i++) {
        obs_observe(OBS_H_TTFT, t % 2, 0.003);
        obs_observe(OBS_H_BATCH_TOKENS, 0, 100);
        obs_count(OBS_C_PROMPT_TOKENS, 2);
        obs_request_done(OBS_S_200, 0, t % 2, 1);
        obs_gauge_add(OBS_G_RUNNING, 1);
        obs_reject(OBS_R_RATE_TOKENS, 0);
    }
    return NULL;
}

static void test_concurrent_exact(void **state)
{
    init_obs(NULL, 0, false, 0, NULL);
    pthread_t th[N_THREADS];
    for (int t = 0; t < N_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, record_worker, (void *)(intptr_t)t), 0);
    /* Scrapes may run while others record; they must not disturb them. */
    for (int i = 0; i < 20; i++) {
        struct lmd_buf b = {0};
        assert_int_equal(obs_render(&b), 0);
        lmd_buf_free(&b);
    }
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);

    const double per_class = (double)N_ITERS * (N_THREADS / 2), all = (double)N_ITERS * N_THREADS;
    struct expo e;
    render(&e);
    assert_true(expo_get(&e, TTFT "_count{" L_INT "}") == per_class);
    assert_true(expo_get(&e, TTFT "_count{" L_BATCH "}") == per_class);
    assert_true(expo_get(&e, TTFT "_bucket{" L_INT ",le=\"0.004\"}") == per_class);
    assert_true(expo_get(&e, TTFT "_bucket{" L_INT ",le=\"0.002\"}") == 0);
    assert_true(expo_get(&e, TTFT "_sum{" L_INT "}") == per_class * 0.003);
    assert_true(expo_get(&e, "lmd_batch_tokens_bucket{model=\"tiny\",le=\"128\"}") == all);
    assert_true(expo_get(&e, "lmd_batch_tokens_sum{model=\"tiny\"}") == all * 100);
    assert_true(expo_get(&e, "lmd_prompt_tokens_total{model=\"tiny\"}") == all * 2);
    assert_true(expo_get(&e, "lmd_requests_total{status=\"200\",class=\"batch\",tenant=\"acme\",model=\"tiny\"}") ==
                per_class);
    assert_true(expo_get(&e, "lmd_rejections_total{reason=\"rate_tokens\",tenant=\"anonymous\"}") == all);
    assert_true(expo_get(&e, "lmd_requests_running{model=\"tiny\"}") == all);
    expo_free(&e);
}

/* ---- NVML ---------------------------------------------------------------- */

static void test_nvml_absent(void **state)
{
    init_obs(NULL, 0, false, 0, "/nonexistent/libnvidia-ml.so.1");
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    assert_null(strstr(b.ptr, "lmd_gpu_"));
    assert_non_null(strstr(b.ptr, "lmd_process_resident_memory_bytes "));
    lmd_buf_free(&b);
    obs_shutdown();

    /* A library that is not NVML at all: its symbols are missing. */
    init_obs(NULL, 0, false, 0, "libm.so.6");
    assert_int_equal(obs_render(&b), 0);
    assert_null(strstr(b.ptr, "lmd_gpu_"));
    lmd_buf_free(&b);
}

static void test_nvml_present(void **state)
{
    init_obs(NULL, 0, false, 0, OBS_FAKE_NVML);
    struct expo e;
    render(&e);
    assert_true(expo_get(&e, "lmd_gpu_utilization_ratio{gpu=\"0\"}") == 0.42);
    assert_true(expo_get(&e, "lmd_gpu_utilization_ratio{gpu=\"1\"}") == 1.0);
    assert_true(expo_get(&e, "lmd_gpu_memory_used_bytes{gpu=\"0\"}") == (double)(1ull << 30));
    assert_true(expo_get(&e, "lmd_gpu_memory_total_bytes{gpu=\"1\"}") == (double)(80ull << 30));
    assert_true(expo_get(&e, "lmd_gpu_power_watts{gpu=\"0\"}") == 150.5);
    assert_false(expo_has(&e, "lmd_gpu_power_watts{gpu=\"1\"}")); /* refused by the board */
    assert_true(expo_get(&e, "lmd_gpu_temperature_celsius{gpu=\"1\"}") == 56);
    expo_free(&e);
}

/* ---- trace --------------------------------------------------------------- */

static json_t *trace_json(double seconds)
{
    struct lmd_buf b = {0};
    assert_int_equal(obs_trace_render(&b, seconds), 0);
    json_error_t jerr;
    json_t *root = json_loads(b.ptr, 0, &jerr);
    if (!root)
        fail_msg("trace JSON does not parse: %s at line %d: %s", jerr.text, jerr.line, b.ptr);
    lmd_buf_free(&b);
    assert_string_equal(json_string_value(json_object_get(root, "displayTimeUnit")), "ms");
    assert_true(json_is_array(json_object_get(root, "traceEvents")));
    return root;
}

/* The non-metadata events of a trace. */
static size_t trace_events(json_t *root, json_t **out, size_t cap)
{
    size_t n = 0, i;
    json_t *ev;
    json_array_foreach(json_object_get(root, "traceEvents"), i, ev)
    {
        const char *ph = json_string_value(json_object_get(ev, "ph"));
        assert_non_null(ph);
        assert_true(json_is_integer(json_object_get(ev, "pid")));
        if (strcmp(ph, "M") == 0)
            continue;
        assert_true(json_is_number(json_object_get(ev, "ts")));
        if (n < cap)
            out[n] = ev;
        n++;
    }
    return n;
}

static const char *ev_str(json_t *ev, const char *key) { return json_string_value(json_object_get(ev, key)); }

static void test_trace_off(void **state)
{
    init_obs(NULL, 0, false, 0, NULL);
    assert_false(obs_tracing());
    obs_trace(OBS_EV_STEP, 0, 1000, 2000, 1, 1, 0);
    json_t *root = trace_json(0);
    json_t *evs[4];
    assert_int_equal(trace_events(root, evs, 4), 0);
    /* The metadata still names the process and threads. */
    assert_true(json_array_size(json_object_get(root, "traceEvents")) == 3);
    json_decref(root);
}

/* Several models: each engine thread's events go on its model's track,
 * named after the model, and a request's begin names its model. */
static void test_trace_models(void **state)
{
    (void)state;
    const char *models[] = {"gemma", "tiny"};
    struct obs_config cfg = {.models = models,
                             .n_models = 2,
                             .classes = g_classes,
                             .n_classes = 2,
                             .tenants = g_tenants,
                             .n_tenants = 2,
                             .trace = true,
                             .nvml_path = ""};
    struct lmd_err err = {0};
    assert_int_equal(obs_init(&cfg, &err), 0);
    uint64_t now = lmd_time_mono_ns();
    obs_trace(OBS_EV_STEP, 0, now, now + 1000, 1, 1, 0);
    obs_bind_model(1);
    obs_trace(OBS_EV_STEP, 0, now, now + 2000, 2, 2, 0);
    obs_trace(OBS_EV_ADMIT, 7, now, now, 0, 1, 5);
    obs_bind_model(0);

    json_t *root = trace_json(0);
    json_t *evs[8];
    assert_int_equal(trace_events(root, evs, 8), 3);
    assert_int_equal(json_integer_value(json_object_get(evs[0], "tid")), 1);
    assert_int_equal(json_integer_value(json_object_get(evs[1], "tid")), 11);
    assert_int_equal(json_integer_value(json_object_get(evs[2], "tid")), 11);
    assert_string_equal(json_string_value(json_object_get(json_object_get(evs[2], "args"), "model")), "tiny");
    /* Metadata: the process, one engine track per model, admission. */
    json_t *meta = json_object_get(root, "traceEvents");
    assert_int_equal(json_array_size(meta), 4 + 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(meta, 0), "args"), "name")),
                        "lmd gemma, tiny");
    json_t *t1 = json_array_get(meta, 2);
    assert_int_equal(json_integer_value(json_object_get(t1, "tid")), 11);
    assert_string_equal(json_string_value(json_object_get(json_object_get(t1, "args"), "name")), "engine tiny");
    json_decref(root);
}

static void test_trace_wrap(void **state)
{
    init_obs(NULL, 0, true, 5, NULL); /* rounded up to 8 slots */
    assert_true(obs_tracing());
    uint64_t now = lmd_time_mono_ns();
    for (int i = 0; i < 3; i++)
        obs_trace(OBS_EV_STEP, 0, now, now + 1000, 1, 1, 0);
    for (uint64_t id = 1; id <= 10; id++)
        obs_trace(OBS_EV_ADMIT, id, now, now, 1, 1, 17);
    obs_trace(OBS_EV_FINISH, 10, now + 5000, now + 5000, 3, 1, 0);
    obs_trace(OBS_EV_REJECT, 0, now, now, OBS_R_QUEUE_FULL, 1, 0);

    json_t *root = trace_json(0);
    json_t *evs[16];
    size_t n = trace_events(root, evs, 16);
    assert_int_equal(n, 8); /* tickets 7 … 14 */
    for (size_t i = 0; i < 6; i++) {
        assert_string_equal(ev_str(evs[i], "name"), "request");
        assert_string_equal(ev_str(evs[i], "ph"), "b");
        char id[16];
        snprintf(id, sizeof id, "0x%zx", i + 5);
        assert_string_equal(ev_str(evs[i], "id"), id);
        json_t *args = json_object_get(evs[i], "args");
        assert_string_equal(json_string_value(json_object_get(args, "class")), "batch");
        assert_string_equal(json_string_value(json_object_get(args, "tenant")), "acme");
        assert_int_equal(json_integer_value(json_object_get(args, "prompt_tokens")), 17);
    }
    assert_string_equal(ev_str(evs[6], "ph"), "e");
    assert_string_equal(ev_str(evs[6], "name"), "request");
    assert_string_equal(ev_str(evs[6], "id"), "0xa");
    assert_string_equal(ev_str(evs[7], "name"), "reject");
    assert_string_equal(ev_str(evs[7], "ph"), "i");
    assert_string_equal(json_string_value(json_object_get(json_object_get(evs[7], "args"), "reason")), "queue_full");
    json_decref(root);
}

static void test_trace_events(void **state)
{
    init_obs(NULL, 0, true, 64, NULL);
    uint64_t now = lmd_time_mono_ns();
    obs_trace(OBS_EV_STEP, 0, now - 5000000, now, 4, 300, 1); /* a 5 ms step */
    obs_trace(OBS_EV_PREFILL, 7, now - 4000000, now - 1000000, 256, 0, 0);
    obs_trace(OBS_EV_PREEMPT, 7, now, now, 12, 0, 0);
    obs_trace(OBS_EV_FINISH, 9, now, now, 5, 2, 0); /* its admit is not in the trace */
    obs_trace(OBS_EV_STEP, 0, now - 20 * 1000000000ull, now - 19 * 1000000000ull, 1, 1, 0); /* 20 s ago */

    json_t *root = trace_json(0);
    json_t *evs[16];
    assert_int_equal(trace_events(root, evs, 16), 6);
    json_t *step = evs[0];
    assert_string_equal(ev_str(step, "ph"), "X");
    assert_string_equal(ev_str(step, "name"), "step");
    assert_true(json_number_value(json_object_get(step, "dur")) == 5000.0);
    assert_true(fabs(json_number_value(json_object_get(step, "ts")) - (double)(now - 5000000) / 1000.0) < 0.01);
    json_t *args = json_object_get(step, "args");
    assert_int_equal(json_integer_value(json_object_get(args, "seqs")), 4);
    assert_int_equal(json_integer_value(json_object_get(args, "tokens")), 300);
    assert_int_equal(json_integer_value(json_object_get(args, "prefill_seqs")), 1);
    assert_string_equal(ev_str(evs[1], "ph"), "b");
    assert_string_equal(ev_str(evs[2], "ph"), "e");
    assert_string_equal(ev_str(evs[1], "name"), "prefill");
    assert_string_equal(ev_str(evs[1], "id"), "0x7");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(evs[1], "args"), "tokens")), 256);
    assert_string_equal(ev_str(evs[3], "name"), "preempt");
    assert_string_equal(ev_str(evs[3], "ph"), "n");
    assert_string_equal(ev_str(evs[4], "name"), "finish");
    assert_string_equal(ev_str(evs[4], "ph"), "n");
    json_decref(root);

    /* The last second holds all but the step of 20 s ago. */
    root = trace_json(1.0);
    assert_int_equal(trace_events(root, evs, 16), 5);
    json_decref(root);
}

static atomic_int g_writers_left;

static void *trace_writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int64_t i = 0; i < 100000; i++) {
        uint64_t now = lmd_time_mono_ns();
        /* tokens and prefill_seqs are tied, so a torn slot would show. */
        obs_trace(OBS_EV_STEP, 0, now, now + 10, t, i, i * 2 + t);
    }
    atomic_fetch_sub(&g_writers_left, 1);
    return NULL;
}

static void test_trace_concurrent(void **state)
{
    init_obs(NULL, 0, true, 256, NULL);
    pthread_t th[3];
    atomic_store(&g_writers_left, 3);
    for (int t = 0; t < 3; t++)
        assert_int_equal(pthread_create(&th[t], NULL, trace_writer, (void *)(intptr_t)t), 0);
    int renders = 0;
    size_t steps_seen = 0;
    while (atomic_load(&g_writers_left) > 0 || renders < 3) {
        json_t *root = trace_json(0);
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(root, "traceEvents"), i, ev)
        {
            if (strcmp(ev_str(ev, "ph"), "X") != 0)
                continue;
            json_t *args = json_object_get(ev, "args");
            json_int_t a = json_integer_value(json_object_get(args, "seqs"));
            json_int_t b = json_integer_value(json_object_get(args, "tokens"));
            json_int_t c = json_integer_value(json_object_get(args, "prefill_seqs"));
            if (c != b * 2 + a || a < 0 || a > 2)
                fail_msg("torn trace slot: %lld %lld %lld", (long long)a, (long long)b, (long long)c);
            steps_seen++;
        }
        json_decref(root);
        renders++;
    }
    for (int t = 0; t < 3; t++)
        pthread_join(th[t], NULL);
    (void)steps_seen;
    /* Once the writers are quiet, a render holds the whole ring. */
    json_t *root = trace_json(0);
    size_t i, full = 0;
    json_t *ev;
    json_array_foreach(json_object_get(root, "traceEvents"), i, ev)
    {
        if (strcmp(ev_str(ev, "ph"), "X") == 0)
            full++;
    }
    json_decref(root);
    assert_int_equal(full, 256);
}

/* ---- logs ---------------------------------------------------------------- */

/* Run fn with stderr redirected into a pipe; returns what it wrote. */
static char *capture_stderr(void (*fn)(const void *), const void *arg)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    fn(arg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    static char buf[1 << 16];
    size_t n = 0;
    ssize_t r;
    while ((r = read(p[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(p[0]);
    buf[n] = '\0';
    return strdup(buf);
}

static void log_access(const void *arg) { obs_access_log(arg); }

static const struct obs_access g_access = {
    .id = "req-1",
    .method = "POST",
    .path = "/v1/chat/completions",
    .status = 200,
    .cls = 0,
    .tenant = 1,
    .model = "tiny",
    .prompt_tokens = 12,
    .output_tokens = 34,
    .queue_s = 0.0015,
    .ttft_s = 0.25,
    .e2e_s = 1.5,
    .finish = "stop",
};

static void test_access_text(void **state)
{
    init_obs(NULL, 0, false, 0, NULL);
    char *out = capture_stderr(log_access, &g_access);
    assert_non_null(strstr(out, " info access id=req-1 method=POST path=/v1/chat/completions status=200 "
                                "class=interactive tenant=acme model=tiny prompt_tokens=12 output_tokens=34 "
                                "queue_s=0.0015 ttft_s=0.25 e2e_s=1.5 finish=stop\n"));
    assert_non_null(strchr(out, '\n'));
    assert_int_equal(strchr(out, '\n')[1], '\0'); /* one line */
    /* A readable UTC time first: 2026-12-02T02:35:01.123Z. */
    int y, mo, d, h, mi, sec, ms;
    char z;
    assert_int_equal(sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c ", &y, &mo, &d, &h, &mi, &sec, &ms, &z), 8);
    assert_true(y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 && mi <= 59 && sec <= 60);
    assert_int_equal(z, 'Z');
    assert_int_equal(strncmp(out + 24, " info access ", 13), 0);
    free(out);

    /* Not applicable fields read "-"; a value with a space is quoted. */
    struct obs_access a = {.id = "r 2",
                           .method = "GET",
                           .path = "/x\"y",
                           .status = 404,
                           .cls = -1,
                           .tenant = -1,
                           .queue_s = -1,
                           .ttft_s = -1,
                           .e2e_s = 0.002};
    out = capture_stderr(log_access, &a);
    assert_non_null(strstr(out, " info access id=\"r 2\" method=GET path=\"/x\\\"y\" status=404 class=- tenant=- "
                                "model=- prompt_tokens=0 output_tokens=0 queue_s=- ttft_s=- e2e_s=0.002 finish=-\n"));
    free(out);

    /* Bytes that are not UTF-8 (a raw request path) are quoted and become
     * U+FFFD escapes: the line stays text; valid UTF-8 passes as is. */
    a.id = "r3";
    a.path = "/v1/\xff\xc3";
    out = capture_stderr(log_access, &a);
    assert_non_null(strstr(out, " path=\"/v1/\\ufffd\\ufffd\" "));
    free(out);
    a.path = "/v1/caf\xc3\xa9";
    out = capture_stderr(log_access, &a);
    assert_non_null(strstr(out, " path=/v1/caf\xc3\xa9 "));
    free(out);

    /* Below the level: nothing. */
    lmd_log_set_level(LMD_LOG_WARN);
    out = capture_stderr(log_access, &g_access);
    assert_string_equal(out, "");
    free(out);
}

static void test_access_json(void **state)
{
    init_obs(NULL, 0, false, 0, NULL);
    lmd_log_set_format(LMD_LOG_FORMAT_JSON);
    struct obs_access a = g_access;
    a.ttft_s = -1;
    a.model = NULL;
    char *out = capture_stderr(log_access, &a);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("access line is not JSON: %s: %s", jerr.text, out);
    assert_true(json_is_real(json_object_get(j, "ts")));
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "access");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "req-1");
    assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/v1/chat/completions");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    assert_string_equal(json_string_value(json_object_get(j, "class")), "interactive");
    assert_string_equal(json_string_value(json_object_get(j, "tenant")), "acme");
    assert_true(json_is_null(json_object_get(j, "model")));
    assert_int_equal(json_integer_value(json_object_get(j, "prompt_tokens")), 12);
    assert_int_equal(json_integer_value(json_object_get(j, "output_tokens")), 34);
    assert_true(json_real_value(json_object_get(j, "queue_s")) == 0.0015);
    assert_true(json_is_null(json_object_get(j, "ttft_s")));
    assert_true(json_number_value(json_object_get(j, "e2e_s")) == 1.5);
    assert_string_equal(json_string_value(json_object_get(j, "finish")), "stop");
    assert_int_equal(json_object_size(j), 16);
    json_decref(j);
    free(out);

    /* A path too long for one line: the line is cut but still parses. */
    char *longpath = malloc(6000);
    memset(longpath, 'p', 5999);
    longpath[5999] = '\0';
    a.path = longpath;
    out = capture_stderr(log_access, &a);
    assert_true(strlen(out) <= LMD_LOG_LINE_MAX);
    j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("cut access line is not JSON: %s", jerr.text);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "req-1");
    json_decref(j);
    free(out);
    free(longpath);
}

static void log_plain(const void *arg)
{
    LMD_INFO("hello \"%s\"\n\ttab %d %s", "x", 5, (const char *)arg);
    LMD_DEBUG("not shown");
}

static void log_long(const void *arg)
{
    /* 3000 two-byte characters: the cut must not split one. */
    static char msg[6001];
    for (int i = 0; i < 3000; i++)
        memcpy(msg + 2 * i, "\xc3\xa9", 2);
    msg[6000] = '\0';
    LMD_WARN("%s", msg);
}

static void test_log_formats(void **state)
{
    enum lmd_log_format f;
    assert_int_equal(lmd_log_parse_format("json", &f), 0);
    assert_int_equal(f, LMD_LOG_FORMAT_JSON);
    assert_int_equal(lmd_log_parse_format("text", &f), 0);
    assert_int_equal(f, LMD_LOG_FORMAT_TEXT);
    assert_int_equal(lmd_log_parse_format("xml", &f), LMD_EINVAL);

    char *out = capture_stderr(log_plain, "bad\xff");
    assert_non_null(strstr(out, " info hello \"x\"\n\ttab 5 bad\xff\n"));
    free(out);

    lmd_log_set_format(LMD_LOG_FORMAT_JSON);
    assert_int_equal(lmd_log_get_format(), LMD_LOG_FORMAT_JSON);
    out = capture_stderr(log_plain, "bad\xff");
    assert_int_equal(strchr(out, '\n')[1], '\0'); /* one line: the debug line is filtered */
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("log line is not JSON: %s: %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "hello \"x\"\n\ttab 5 bad\xef\xbf\xbd");
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_int_equal(json_object_size(j), 3);
    json_decref(j);
    free(out);

    out = capture_stderr(log_long, NULL);
    assert_true(strlen(out) <= LMD_LOG_LINE_MAX);
    j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("cut log line is not JSON: %s", jerr.text);
    const char *msg = json_string_value(json_object_get(j, "msg"));
    assert_true(strlen(msg) > 3000 && strlen(msg) % 2 == 0);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    json_decref(j);
    free(out);
}

/* ---- promtool ------------------------------------------------------------ */

static const char *g_promtool;

/* A registry with something in every family, weird label values included. */
static void busy_registry(void)
{
    const char *const tenants[] = {"anonymous", "we \"ird\\", "multi\nline"};
    init_obs(tenants, 3, false, 0, OBS_FAKE_NVML);
    for (int h = 0; h < OBS_H__N; h++)
        for (int c = 0; c < 2; c++)
            obs_observe((enum obs_hist)h, c, h < OBS_H_BATCH_SIZE ? 0.123 : 17);
    for (int c = 0; c < OBS_C__N; c++)
        obs_count((enum obs_counter)c, 3);
    for (int s = 0; s < OBS_S__N; s++)
        obs_request_done((enum obs_status)s, 0, s % 2, s % 3);
    for (int r = 0; r < OBS_R__N; r++)
        obs_reject((enum obs_reject)r, r % 3);
    for (int g = 0; g < OBS_G__N; g++)
        obs_gauge_set((enum obs_gauge)g, 0.5);
    obs_waiting_set(0, 2);
}

static void test_promtool(void **state)
{
    busy_registry();
    struct lmd_buf b = {0};
    assert_int_equal(obs_render(&b), 0);
    char path[] = "/tmp/lmd-obs-exposition-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.ptr, b.len), (ssize_t)b.len);
    close(fd);
    lmd_buf_free(&b);

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' check metrics < '%s' 2>&1", g_promtool, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    unlink(path);
    if (st != 0 || n != 0)
        fail_msg("promtool check metrics (exit %d) says:\n%s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--promtool") == 0) {
        g_promtool = argv[2];
        const struct CMUnitTest promtool[] = {cmocka_unit_test_teardown(test_promtool, teardown)};
        return cmocka_run_group_tests_name("obs_promtool", promtool, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_init_is_noop),
        cmocka_unit_test_teardown(test_init_rejects_bad_config, teardown),
        cmocka_unit_test_teardown(test_models, teardown),
        cmocka_unit_test_teardown(test_render_values, teardown),
        cmocka_unit_test(test_status_of),
        cmocka_unit_test_teardown(test_label_escaping, teardown),
        cmocka_unit_test_teardown(test_concurrent_exact, teardown),
        cmocka_unit_test_teardown(test_nvml_absent, teardown),
        cmocka_unit_test_teardown(test_nvml_present, teardown),
        cmocka_unit_test_teardown(test_trace_off, teardown),
        cmocka_unit_test_teardown(test_trace_wrap, teardown),
        cmocka_unit_test_teardown(test_trace_models, teardown),
        cmocka_unit_test_teardown(test_trace_events, teardown),
        cmocka_unit_test_teardown(test_trace_concurrent, teardown),
        cmocka_unit_test_teardown(test_access_text, teardown),
        cmocka_unit_test_teardown(test_access_json, teardown),
        cmocka_unit_test_teardown(test_log_formats, teardown),
    };
    return cmocka_run_group_tests_name("obs", tests, NULL, NULL);
}
