/*
 * qos/: the open anonymous mode, the tenants file (a complete one, the
 * shipped example, and a battery of malformed ones that must each get a
 * precise file:line:column message), API-key authentication, model and
 * class allowance, the token buckets to the nanosecond (refill, burst cap,
 * Retry-After, refunds, no drift), the in-flight and queued quotas, every
 * allocation of qos_open failing in turn, and several threads admitting
 * and finishing on one tenant at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "qos/qos_int.h"

#define S (1000000000ull) /* ns per second */

static char tmpdir[256];
static int n_files;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qos_test.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char p[320];
    for (int i = 0; i < n_files; i++) {
        snprintf(p, sizeof p, "%s/t%d.yaml", tmpdir, i);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

/* Write text to a fresh file in the temp dir; returns its path (static). */
static const char *write_yaml(const char *text)
{
    static char path[320];
    snprintf(path, sizeof path, "%s/t%d.yaml", tmpdir, n_files++);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
    return path;
}

static struct qos *open_text(const char *text)
{
    struct qos *q = NULL;
    struct lmd_err err = {0};
    int rc = qos_open(&q, write_yaml(text), &err);
    if (rc != 0)
        fail_msg("qos_open: %s", err.msg);
    return q;
}

static int auth(const struct qos *q, const char *h) { return qos_authenticate(q, h, h ? strlen(h) : 0); }
static bool admin(const struct qos *q, const char *h) { return qos_is_admin(q, h, h ? strlen(h) : 0); }

/* The tenants file from memory loads as from the file. */
static void test_from_memory(void **state)
{
    (void)state;
    static const char text[] = "tenants:\n  - {name: a, keys: [ka]}\n  - {name: b, keys: [kb]}\n";
    struct qos *q = NULL;
    struct lmd_err err = {0};
    assert_int_equal(qos_open_buffer(&q, "mem.yaml", text, sizeof text - 1, &err), 0);
    assert_true(qos_has_file(q));
    assert_int_equal(qos_n_tenants(q), 3);
    assert_int_equal(auth(q, "Bearer kb"), 2);
    assert_true(auth(q, "Bearer kc") < 0);
    qos_close(q);
    assert_int_equal(qos_open_buffer(&q, "big.yaml", text, (1 << 20) + 1, &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "big.yaml: larger than 1048576 bytes"));
    assert_null(q);
}

/* ---- open mode ---------------------------------------------------------------- */

static void test_open_mode(void **state)
{
    (void)state;
    struct qos *q;
    assert_int_equal(qos_open(&q, NULL, NULL), 0);
    assert_false(qos_has_file(q));
    assert_int_equal(qos_n_tenants(q), 1);
    assert_string_equal(qos_tenant(q, 0)->name, "anonymous");
    assert_int_equal(qos_n_classes(q), 2);
    assert_string_equal(qos_class(q, 0)->name, "urgent");
    assert_int_equal(qos_class(q, 0)->ttft_ns, 1 * S);
    assert_int_equal(qos_class(q, 0)->tpot_ns, 100000000u);
    assert_int_equal(qos_class(q, 0)->weight, 4);
    assert_string_equal(qos_class(q, 1)->name, "best_effort");
    assert_int_equal(qos_class(q, 1)->ttft_ns, 15 * S);
    assert_int_equal(qos_default_class(q), 1);
    assert_int_equal(qos_tenant(q, 0)->default_class, 1);

    /* No key needed, and any header is fine. */
    assert_int_equal(auth(q, NULL), 0);
    assert_int_equal(auth(q, "Bearer whatever"), 0);
    assert_int_equal(auth(q, "Basic dXNlcjpwdw=="), 0);
    assert_true(admin(q, NULL));
    assert_true(qos_model_allowed(q, 0, "any-model", 9));
    assert_true(qos_class_allowed(q, 0, 0));
    assert_true(qos_class_allowed(q, 0, 1));
    assert_false(qos_class_allowed(q, 0, 2));
    assert_false(qos_class_allowed(q, 1, 0));

    /* No limits: a thousand requests of a million tokens enter at once. */
    struct qos_ticket t[1000];
    struct qos_refusal why;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(qos_admit(q, 0, 1, 1000000, 0, &t[i], &why), 0);
    struct qos_usage u;
    qos_usage(q, 0, 0, &u);
    assert_int_equal(u.in_flight, 1000);
    assert_int_equal(u.queued, 1000);
    assert_true(u.tokens == INT64_MAX && u.requests_milli == INT64_MAX);
    for (int i = 0; i < 1000; i++)
        qos_finished(q, &t[i], 10, 0);
    qos_usage(q, 0, 0, &u);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);
    qos_close(q);
    qos_close(NULL);
}

/* ---- a complete file --------------------------------------------------------- */

static const char *full_yaml =
    "classes:\n"
    "  urgent:      {ttft_ms: 1000,  tpot_ms: 100, window_ms: 250, weight: 4, on_late: refuse, reserved_slots: 3}\n"
    "  standard:    {ttft_ms: 5000,  weight: 2, max_request_slots: 2, default_max_tokens: 512}\n"
    "  best_effort: {ttft_ms: 15000, tpot_ms: 0,   window_ms: 0, weight: 1, on_late: run}\n"
    "default_class: standard\n"
    "admin_keys: [\"sk-admin\", \"sk-gold-2\"]\n"
    "tenants:\n"
    "  - name: gold\n"
    "    tier: gold\n"
    "    prefix_cache_group: research\n"
    "    keys: [\"sk-gold-1\", \"sk-gold-2\"]\n"
    "    weight: 3\n"
    "    requests_per_second: 20\n"
    "    requests_burst: 40\n"
    "    tokens_per_minute: 200000\n"
    "    tokens_burst: 250000\n"
    "    max_concurrent: 16\n"
    "    max_queued: 64\n"
    "    models: [\"*\"]\n"
    "    classes: [urgent, best_effort]\n"
    "    default_class: urgent\n"
    "  - name: free\n"
    "    keys:\n"
    "      - sk-free-1\n"
    "    requests_per_second: 0.5\n"
    "    tokens_per_minute: 1000.25\n"
    "    models: [small, tiny]\n"
    "    classes: [best_effort, standard]\n"
    "  - name: batch\n"
    "    keys: ['sk-batch']\n"
    "    classes: [urgent]\n";

static void test_full_file(void **state)
{
    (void)state;
    struct qos *q = open_text(full_yaml);
    assert_true(qos_has_file(q));
    assert_int_equal(qos_n_classes(q), 3);
    const struct qos_class *u = qos_class(q, 0);
    assert_string_equal(u->name, "urgent");
    assert_int_equal(u->window_ns, 250000000u);
    assert_int_equal(u->on_late, QOS_LATE_REFUSE);
    const struct qos_class *st = qos_class(q, 1);
    assert_int_equal(st->ttft_ns, 5 * S);
    assert_int_equal(st->tpot_ns, 0);
    assert_int_equal(st->weight, 2);
    assert_int_equal(st->on_late, QOS_LATE_RUN);
    assert_int_equal(st->max_request_slots, 2);
    assert_int_equal(st->default_max_tokens, 512);
    /* Not given: the defaults (half the running slots; the API's length). */
    assert_int_equal(u->max_request_slots, 0);
    assert_int_equal(u->default_max_tokens, 0);
    assert_int_equal(u->reserved_slots, 3);
    assert_int_equal(st->reserved_slots, 0);
    assert_int_equal(qos_default_class(q), 1);
    assert_int_equal(qos_class_find(q, "best_effort", 11), 2);
    assert_int_equal(qos_class_find(q, "best_effor", 10), LMD_ENOENT);

    assert_int_equal(qos_n_tenants(q), 4);
    const struct qos_tenant *a = qos_tenant(q, 0), *g = qos_tenant(q, 1), *f = qos_tenant(q, 2), *b = qos_tenant(q, 3);
    assert_string_equal(a->name, "anonymous");
    assert_int_equal(a->classes, 7);
    assert_int_equal(a->default_class, 1);
    assert_string_equal(g->name, "gold");
    assert_string_equal(g->tier, "gold");
    assert_string_equal(g->cache_group, "research");
    assert_int_equal(g->weight, 3);
    assert_int_equal(g->requests.count * (int64_t)S, 20 * g->requests.period_ns);
    assert_int_equal(g->requests.burst, 40);
    assert_int_equal(g->tokens.count * 60 * (int64_t)S, 200000 * g->tokens.period_ns);
    assert_int_equal(g->tokens.burst, 250000);
    assert_int_equal(g->max_in_flight, 16);
    assert_int_equal(g->max_queued, 64);
    assert_true(g->all_models);
    assert_int_equal(g->classes, 0x5);
    assert_int_equal(g->default_class, 0);
    assert_int_equal(g->n_keys, 2);

    /* 0.5/s is one request every two seconds; bursts default to the rate
     * rounded up, at least 1. 1000.25/min is 4001 tokens per 4 minutes. */
    assert_string_equal(f->name, "free");
    assert_string_equal(f->tier, "");
    assert_string_equal(f->cache_group, "");
    assert_int_equal(f->weight, 1);
    assert_int_equal(f->requests.count, 1);
    assert_int_equal(f->requests.period_ns, 2 * S);
    assert_int_equal(f->requests.burst, 1);
    assert_int_equal(f->tokens.count * 240 * (int64_t)S, 4001 * f->tokens.period_ns);
    assert_int_equal(f->tokens.burst, 1001);
    assert_int_equal(f->max_in_flight, 0);
    assert_false(f->all_models);
    assert_true(qos_model_allowed(q, 2, "small", 5));
    assert_true(qos_model_allowed(q, 2, "tiny", 4));
    assert_false(qos_model_allowed(q, 2, "tin", 3));
    assert_false(qos_model_allowed(q, 2, "large", 5));
    assert_false(qos_model_allowed(q, 2, NULL, 0));
    assert_true(qos_model_allowed(q, 1, "large", 5));
    /* The file's default class (standard) is allowed here, so it is the
     * tenant's default. */
    assert_int_equal(f->default_class, 1);
    /* Not allowed here: the tenant's first class is its default. */
    assert_int_equal(b->classes, 0x1);
    assert_int_equal(b->default_class, 0);
    assert_int_equal(b->requests.count, 0);
    assert_int_equal(b->tokens.count, 0);

    /* Class choice per tenant. */
    struct qos_refusal why;
    assert_int_equal(qos_class_pick(q, 1, NULL, 0, &why), 0);
    assert_int_equal(qos_class_pick(q, 1, "best_effort", 11, &why), 2);
    assert_int_equal(qos_class_pick(q, 1, "standard", 8, &why), LMD_EINVAL);
    assert_int_equal(why.http_status, 403);
    assert_int_equal(why.reason, OBS_R_CLASS);
    assert_non_null(strstr(why.message, "'standard' is not allowed for tenant 'gold'"));
    assert_int_equal(qos_class_pick(q, 1, "nope\"\n", 6, &why), LMD_ENOENT);
    assert_int_equal(why.http_status, 400);
    assert_non_null(strstr(why.message, "unknown service class 'nope?\?'"));
    assert_true(qos_class_allowed(q, 1, 0));
    assert_false(qos_class_allowed(q, 1, 1));
    assert_false(qos_class_allowed(q, 1, -1));
    qos_close(q);
}

static void test_example_file(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/deploy/tenants.example.yaml", LMD_SOURCE_DIR);
    struct qos *q = NULL;
    struct lmd_err err = {0};
    int rc = qos_open(&q, path, &err);
    if (rc)
        fail_msg("%s", err.msg);
    assert_true(qos_n_tenants(q) > 1);
    qos_close(q);
}

/* ---- authentication ----------------------------------------------------------- */

static void test_auth(void **state)
{
    (void)state;
    struct qos *q = open_text(full_yaml);
    assert_int_equal(auth(q, "Bearer sk-gold-1"), 1);
    assert_int_equal(auth(q, "Bearer sk-gold-2"), 1);
    assert_int_equal(auth(q, "Bearer sk-free-1"), 2);
    assert_int_equal(auth(q, "Bearer sk-batch"), 3);
    /* The scheme is case-insensitive; spaces around the value and several
     * spaces after the scheme are tolerated. */
    assert_int_equal(auth(q, "bearer sk-free-1"), 2);
    assert_int_equal(auth(q, "BEARER sk-free-1"), 2);
    assert_int_equal(auth(q, "Bearer    sk-free-1"), 2);
    assert_int_equal(auth(q, "  Bearer sk-free-1 \t"), 2);
    /* Only the first len bytes count. */
    assert_int_equal(qos_authenticate(q, "Bearer sk-gold-1XYZ", 16), 1);
    assert_int_equal(qos_authenticate(q, "Bearer sk-gold-1", 15), LMD_ENOENT);

    const char *refused[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic sk-gold-1",
        "Token sk-gold-1",
        "sk-gold-1",
        "Bearersk-gold-1",
        "Bearer\tsk-gold-1",
        "Bearer sk-gold-1 extra",
        "Bearer sk-gold-1\x01",
        "Bearer sk-gold",
        "Bearer sk-gold-1x",
        "Bearer SK-GOLD-1",
        "Bearer sk-admin", /* an admin key is not a tenant key */
        "Bearer \"sk-gold-1\"",
        "Bearer sk-g\xc3\xa9ld",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        if (auth(q, refused[i]) != LMD_ENOENT)
            fail_msg("accepted '%s'", refused[i]);
    }
    assert_int_equal(auth(q, NULL), LMD_ENOENT);
    assert_int_equal(qos_authenticate(q, "Bearer sk-gold-1\0", 17), LMD_ENOENT);
    /* A key longer than any configured one. */
    char long_h[600] = "Bearer ";
    memset(long_h + 7, 'k', 500);
    long_h[507] = 0;
    assert_int_equal(auth(q, long_h), LMD_ENOENT);

    /* Admin keys; a key may be both an admin's and a tenant's. */
    assert_true(admin(q, "Bearer sk-admin"));
    assert_true(admin(q, "bearer sk-gold-2"));
    assert_false(admin(q, "Bearer sk-gold-1"));
    assert_false(admin(q, "Bearer sk-admin2"));
    assert_false(admin(q, "Basic sk-admin"));
    assert_false(admin(q, NULL));
    qos_close(q);

    /* A file without admin_keys has no admin at all. */
    q = open_text("tenants:\n  - {name: a, keys: [k1]}\n");
    assert_false(admin(q, "Bearer k1"));
    assert_int_equal(auth(q, "Bearer k1"), 1);
    qos_close(q);
}

/* ---- buckets ------------------------------------------------------------------- */

static void expect_refused(struct qos *q, int tenant, int64_t charge, uint64_t now, int code, enum obs_reject reason,
                           int status, uint32_t retry_s, uint64_t retry_ns)
{
    struct qos_ticket t = {0};
    struct qos_refusal why;
    memset(&why, 0x5a, sizeof why);
    int rc = qos_admit(q, tenant, 0, charge, now, &t, &why);
    if (rc != code)
        fail_msg("admit at %llu: rc %d, want %d", (unsigned long long)now, rc, code);
    assert_int_equal(why.reason, reason);
    assert_int_equal(why.http_status, status);
    assert_int_equal(why.retry_after_s, retry_s);
    if (retry_ns != UINT64_MAX)
        assert_int_equal(why.retry_after_ns, retry_ns);
    assert_int_equal(t.state, QOS_TICKET_NONE);
    assert_non_null(memchr(why.message, 0, sizeof why.message));
}

static void admit_ok(struct qos *q, int tenant, int64_t charge, uint64_t now, struct qos_ticket *t)
{
    struct qos_refusal why;
    int rc = qos_admit(q, tenant, 0, charge, now, t, &why);
    if (rc != 0)
        fail_msg("admit at %llu refused: %s", (unsigned long long)now, why.message);
    assert_int_equal(t->state, QOS_TICKET_QUEUED);
    qos_started(q, t);
    qos_finished(q, t, charge, now);
}

static void test_requests_bucket(void **state)
{
    (void)state;
    struct qos *q = open_text("tenants:\n"
                              "  - {name: a, keys: [ka], requests_per_second: 2, requests_burst: 3}\n"
                              "  - {name: b, keys: [kb], requests_per_second: 0.5}\n");
    struct qos_ticket t;
    uint64_t t0 = 1000 * S;
    /* A full bucket lets the burst through, then refills at 2/s. */
    for (int i = 0; i < 3; i++)
        admit_ok(q, 1, 0, t0, &t);
    expect_refused(q, 1, 0, t0, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S / 2);
    expect_refused(q, 1, 0, t0 + S / 2 - 1, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, 1);
    admit_ok(q, 1, 0, t0 + S / 2, &t);
    expect_refused(q, 1, 0, t0 + S / 2, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S / 2);
    /* A long idle time fills the bucket to its burst, not beyond. */
    uint64_t t1 = t0 + 3600 * S;
    struct qos_usage u;
    qos_usage(q, 1, t1, &u);
    assert_int_equal(u.requests_milli, 3000);
    for (int i = 0; i < 3; i++)
        admit_ok(q, 1, 0, t1, &t);
    expect_refused(q, 1, 0, t1, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S / 2);
    /* A clock reading older than the last one adds nothing and does not
     * move the bucket back in time. */
    expect_refused(q, 1, 0, t1 - 10 * S, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S / 2);
    admit_ok(q, 1, 0, t1 + S / 2, &t);

    /* 0.5/s: one every two seconds; Retry-After is the wait rounded up. */
    admit_ok(q, 2, 0, t0, &t);
    expect_refused(q, 2, 0, t0, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 2, 2 * S);
    expect_refused(q, 2, 0, t0 + S, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S);
    expect_refused(q, 2, 0, t0 + S / 2, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S);
    expect_refused(q, 2, 0, t0 + S + S / 2, LMD_EBUSY, OBS_R_RATE_REQUESTS, 429, 1, S / 2);
    admit_ok(q, 2, 0, t0 + 2 * S, &t);
    qos_close(q);
}

static void test_tokens_bucket(void **state)
{
    (void)state;
    /* 600 tokens/min = 10 tokens/s. */
    struct qos *q = open_text("tenants:\n"
                              "  - {name: a, keys: [ka], tokens_per_minute: 600, tokens_burst: 1000}\n");
    uint64_t t0 = 5 * S;
    struct qos_ticket t1, t2;
    struct qos_refusal why;
    struct qos_usage u;
    /* More than the burst can never pass: 413, no Retry-After. */
    expect_refused(q, 1, 1001, t0, LMD_ERANGE, OBS_R_RATE_TOKENS, 413, 0, 0);
    assert_int_equal(qos_admit(q, 1, 0, 800, t0, &t1, &why), 0);
    qos_usage(q, 1, t0, &u);
    assert_int_equal(u.tokens, 200);
    /* 300 needs 100 more tokens: exactly 10 s. */
    expect_refused(q, 1, 300, t0, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 10, 10 * S);
    expect_refused(q, 1, 300, t0 + 9 * S + 1, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 1, S - 1);
    assert_int_equal(qos_admit(q, 1, 0, 300, t0 + 10 * S, &t2, &why), 0);
    qos_usage(q, 1, t0 + 10 * S, &u);
    assert_int_equal(u.tokens, 0);
    /* The 800-token request used 100: 700 come back. */
    qos_started(q, &t1);
    qos_finished(q, &t1, 100, t0 + 10 * S);
    qos_usage(q, 1, t0 + 10 * S, &u);
    assert_int_equal(u.tokens, 700);
    /* A refund never lifts the bucket over its burst. */
    qos_finished(q, &t2, 0, t0 + 100 * S); /* cancelled while queued */
    qos_usage(q, 1, t0 + 100 * S, &u);
    assert_int_equal(u.tokens, 1000);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);
    /* Exactly the burst passes on a full bucket. */
    assert_int_equal(qos_admit(q, 1, 0, 1000, t0 + 100 * S, &t1, &why), 0);
    /* Using more than charged takes the excess; the level may go negative
     * but not below minus one burst. */
    qos_finished(q, &t1, 1600, t0 + 100 * S);
    qos_usage(q, 1, t0 + 100 * S, &u);
    assert_int_equal(u.tokens, -600);
    expect_refused(q, 1, 0, t0 + 100 * S, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 60, 60 * S);
    expect_refused(q, 1, 10, t0 + 100 * S, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 61, 61 * S);
    assert_int_equal(qos_admit(q, 1, 0, 1000, t0 + 260 * S, &t1, &why), 0);
    qos_finished(q, &t1, 1000000000000LL, t0 + 260 * S);
    qos_usage(q, 1, t0 + 260 * S, &u);
    assert_int_equal(u.tokens, -1000);
    /* A zero charge still waits while the bucket is in debt. */
    expect_refused(q, 1, 0, t0 + 260 * S, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 100, 100 * S);
    qos_close(q);
}

static void test_no_drift(void **state)
{
    (void)state;
    /* 7 tokens/min: one token every 8571428571.43 ns, which no integer
     * nanosecond step represents. Refilling in 60,000 small steps must land
     * exactly where one big step does. */
    struct qos *q = open_text("tenants:\n"
                              "  - {name: a, keys: [ka], tokens_per_minute: 7}\n");
    struct qos_ticket t;
    struct qos_refusal why;
    struct qos_usage u;
    assert_int_equal(qos_admit(q, 1, 0, 7, 0, &t, &why), 0);
    uint64_t now = 0;
    for (int i = 0; i < 60000; i++) {
        now += 999983; /* a prime number of ns */
        qos_usage(q, 1, now, &u);
        assert_true(u.tokens >= 0 && u.tokens <= 7);
    }
    /* One token is ready at ceil(60e9 / 7) ns = 8571428572 ns, and all
     * seven at exactly 60 s. */
    expect_refused(q, 1, 7, 60 * S - 1, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 1, 1);
    qos_usage(q, 1, 8571428571ull + 1, &u); /* does not go back */
    assert_int_equal(qos_admit(q, 1, 0, 7, 60 * S, &t, &why), 0);
    qos_close(q);

    q = open_text("tenants:\n  - {name: a, keys: [ka], tokens_per_minute: 7}\n");
    assert_int_equal(qos_admit(q, 1, 0, 7, 0, &t, &why), 0);
    expect_refused(q, 1, 1, 8571428571ull, LMD_EBUSY, OBS_R_RATE_TOKENS, 429, 1, 1);
    assert_int_equal(qos_admit(q, 1, 0, 1, 8571428572ull, &t, &why), 0);
    qos_close(q);
}

/* ---- quotas --------------------------------------------------------------------- */

static void test_quotas(void **state)
{
    (void)state;
    struct qos *q = open_text("tenants:\n"
                              "  - {name: a, keys: [ka], max_concurrent: 2, max_queued: 1,\n"
                              "     requests_per_second: 10, requests_burst: 5}\n"
                              "  - {name: b, keys: [kb]}\n");
    struct qos_ticket a, b, c;
    struct qos_refusal why;
    struct qos_usage u;
    assert_int_equal(qos_admit(q, 1, 0, 10, 0, &a, &why), 0);
    /* The queue (1) is full although one more could be in flight. */
    expect_refused(q, 1, 10, 0, LMD_EBUSY, OBS_R_TENANT_QUEUE, 503, QOS_RETRY_QUOTA_S, 0);
    qos_started(q, &a);
    assert_int_equal(a.state, QOS_TICKET_RUNNING);
    assert_int_equal(qos_admit(q, 1, 0, 10, 0, &b, &why), 0);
    /* Two in flight: the concurrency quota refuses before the queue. */
    expect_refused(q, 1, 10, 0, LMD_EBUSY, OBS_R_TENANT_CONCURRENCY, 429, QOS_RETRY_QUOTA_S, 0);
    /* Refusals took nothing: two of five request tokens are spent. */
    qos_usage(q, 1, 0, &u);
    assert_int_equal(u.in_flight, 2);
    assert_int_equal(u.queued, 1);
    assert_int_equal(u.requests_milli, 3000);
    /* Another tenant is not affected. */
    assert_int_equal(qos_admit(q, 2, 0, 10, 0, &c, &why), 0);
    qos_finished(q, &c, 0, 0);
    /* A running request finishing frees its in-flight slot only... */
    qos_finished(q, &a, 10, 0);
    assert_int_equal(a.state, QOS_TICKET_NONE);
    expect_refused(q, 1, 10, 0, LMD_EBUSY, OBS_R_TENANT_QUEUE, 503, QOS_RETRY_QUOTA_S, 0);
    /* ...a queued one that is cancelled frees both. */
    qos_finished(q, &b, 0, 0);
    qos_usage(q, 1, 0, &u);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);
    assert_int_equal(qos_admit(q, 1, 0, 10, 0, &a, &why), 0);
    /* Started and finished are no-ops when repeated, so a preempted
     * request that starts again and cleanup paths cannot count twice. */
    qos_started(q, &a);
    qos_started(q, &a);
    qos_finished(q, &a, 10, 0);
    qos_finished(q, &a, 10, 0);
    struct qos_ticket never = {0};
    qos_started(q, &never);
    qos_finished(q, &never, 0, 0);
    qos_usage(q, 1, 0, &u);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);
    /* A caller's bad arguments. */
    assert_int_equal(qos_admit(q, 3, 0, 0, 0, &a, &why), LMD_EINVAL);
    assert_int_equal(qos_admit(q, -1, 0, 0, 0, &a, &why), LMD_EINVAL);
    assert_int_equal(qos_admit(q, 1, 2, 0, 0, &a, &why), LMD_EINVAL);
    assert_int_equal(qos_admit(q, 1, 0, -1, 0, &a, &why), LMD_EINVAL);
    assert_int_equal(qos_admit(q, 1, 0, 0, 0, NULL, &why), LMD_EINVAL);
    qos_close(q);
}

/* ---- threads ---------------------------------------------------------------------- */

#define N_THREADS 4
#define N_ITERS 20000
#define MAX_INFLIGHT 3
#define MAX_QUEUED 2

struct hammer {
    struct qos *q;
    _Atomic uint64_t clock; /* ns, a shared fake clock */
    _Atomic int held;       /* tickets admitted and not finished */
    _Atomic int queued;     /* tickets admitted and not started */
    _Atomic int max_held, max_queued, admitted, bad;
};

static void note_max(_Atomic int *m, int v)
{
    int cur = atomic_load(m);
    while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
        ;
}

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    struct qos_ticket t[2] = {{0}, {0}};
    uint32_t rng = (uint32_t)(uintptr_t)&t;
    for (int i = 0; i < N_ITERS; i++) {
        rng = rng * 1664525u + 1013904223u;
        int k = (rng >> 16) & 1;
        uint64_t now = atomic_fetch_add(&h->clock, 997);
        struct qos_usage u;
        switch ((rng >> 20) % 4) {
        case 0:
        case 1:
            if (t[k].state == QOS_TICKET_NONE) {
                struct qos_refusal why;
                if (qos_admit(h->q, 1, 0, 50, now, &t[k], &why) == 0) {
                    note_max(&h->max_held, atomic_fetch_add(&h->held, 1) + 1);
                    note_max(&h->max_queued, atomic_fetch_add(&h->queued, 1) + 1);
                    atomic_fetch_add(&h->admitted, 1);
                } else if (why.http_status != 429 && why.http_status != 503) {
                    atomic_fetch_add(&h->bad, 1);
                }
            }
            break;
        case 2:
            if (t[k].state == QOS_TICKET_QUEUED) {
                atomic_fetch_sub(&h->queued, 1);
                qos_started(h->q, &t[k]);
            }
            break;
        case 3:
            if (t[k].state != QOS_TICKET_NONE) {
                if (t[k].state == QOS_TICKET_QUEUED)
                    atomic_fetch_sub(&h->queued, 1);
                atomic_fetch_sub(&h->held, 1);
                qos_finished(h->q, &t[k], (rng >> 8) % 60, now);
            }
            break;
        }
        qos_usage(h->q, 1, now, &u);
        if (u.in_flight < 0 || u.in_flight > MAX_INFLIGHT || u.queued < 0 || u.queued > MAX_QUEUED ||
            u.queued > u.in_flight || u.tokens < -100000 || u.tokens > 100000 || u.requests_milli < 0 ||
            u.requests_milli > 1000000)
            atomic_fetch_add(&h->bad, 1);
    }
    for (int k = 0; k < 2; k++) {
        if (t[k].state == QOS_TICKET_QUEUED)
            atomic_fetch_sub(&h->queued, 1);
        if (t[k].state != QOS_TICKET_NONE)
            atomic_fetch_sub(&h->held, 1);
        qos_finished(h->q, &t[k], 50, atomic_load(&h->clock));
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct hammer h = {0};
    h.q = open_text("tenants:\n"
                    "  - name: a\n"
                    "    keys: [ka]\n"
                    "    max_concurrent: 3\n"
                    "    max_queued: 2\n"
                    "    requests_per_second: 1000000\n"
                    "    requests_burst: 1000\n"
                    "    tokens_per_minute: 600000000\n"
                    "    tokens_burst: 100000\n");
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, &h), 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&h.bad), 0);
    assert_true(atomic_load(&h.max_held) <= MAX_INFLIGHT);
    assert_true(atomic_load(&h.max_queued) <= MAX_QUEUED);
    assert_true(atomic_load(&h.admitted) > 100);
    assert_int_equal(atomic_load(&h.held), 0);
    struct qos_usage u;
    qos_usage(h.q, 1, atomic_load(&h.clock) + 3600 * S, &u);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);
    assert_int_equal(u.tokens, 100000);
    assert_int_equal(u.requests_milli, 1000000);
    qos_close(h.q);
}

/* ---- malformed files --------------------------------------------------------------- */

struct bad_case {
    const char *yaml;
    int code;
    const char *msg; /* expected after "<path>:" */
};

static const struct bad_case bad_cases[] = {
    /* Syntax and document shape. */
    {"", LMD_EFORMAT, ":1:1: the file is empty"},
    {"# only a comment\n", LMD_EFORMAT, ":1:1: the file is empty"},
    {"tenants: [\n", LMD_EFORMAT, "YAML syntax error"},
    {"tenants:\n  - name: a\n   keys: [k]\n", LMD_EFORMAT,
     ":3:4: YAML syntax error: did not find expected '-' indicator"},
    {"a: 'unterminated\n", LMD_EFORMAT, "YAML syntax error"},
    {"tenants: []\n\x01\n", LMD_EFORMAT, ":2:1: YAML syntax error: control characters are not allowed"},
    {"tenants: [] \xff\xfe\n", LMD_EFORMAT, "YAML syntax error: invalid"},
    {"--- {tenants: []}\n--- {tenants: []}\n", LMD_EFORMAT, ":2:1: only one YAML document is allowed"},
    {"x: &a [1]\ntenants: *a\n", LMD_EFORMAT, ":2:10: YAML aliases (*name) are not supported here"},
    {"tenants: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
     LMD_EFORMAT, "nested deeper than 32 levels"},
    {"- a\n- b\n", LMD_EFORMAT, ":1:1: expected a mapping, got a list"},
    {"just a string\n", LMD_EFORMAT, ":1:1: expected a mapping, got a scalar"},
    /* Top-level keys. */
    {"tenant: []\n", LMD_EFORMAT,
     ":1:1: unknown key 'tenant' (expected one of: classes, default_class, admin_keys, tenants)"},
    {"classes: {a: {}}\n", LMD_EFORMAT, ":1:1: missing key 'tenants'"},
    {"tenants:\n", LMD_EFORMAT, ":1:9: tenants: expected a list, got nothing"},
    {"tenants: {}\n", LMD_EFORMAT, ":1:10: tenants: expected a list, got a mapping"},
    {"tenants: []\n", LMD_EFORMAT, ":1:10: tenants: needs at least one tenant"},
    {"tenants: [{name: a, keys: [k]}]\ntenants: [{name: b, keys: [j]}]\n", LMD_EFORMAT,
     ":2:1: duplicate key 'tenants' (first at line 1)"},
    {"? [a]\n: 1\ntenants: []\n", LMD_EFORMAT, ":1:3: keys must be names, got a list"},
    /* Classes. */
    {"classes: []\ntenants: [{name: a, keys: [k]}]\n", LMD_EFORMAT, ":1:10: classes: expected a mapping, got a list"},
    {"classes: {}\ntenants: [{name: a, keys: [k]}]\n", LMD_EFORMAT, ":1:10: classes: needs at least one class"},
    {"classes: {a: {}, b: {}, c: {}, d: {}, e: {}, f: {}, g: {}, h: {}, i: {}}\ntenants: [{name: a, keys: [k]}]\n",
     LMD_ERANGE, ":1:67: classes: more than 8 classes"},
    {"classes: {a: {}, a: {}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT, ":1:18: classes: duplicate class 'a'"},
    {"classes: {'a b': {}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:11: classes: 'a b' has a character other than letters"},
    {"classes: {a: {ttft: 5}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:15: classes.a: unknown key 'ttft' (expected one of: ttft_ms, tpot_ms, window_ms, weight, on_late, "
     "max_request_slots, default_max_tokens, reserved_slots)"},
    {"classes: {a: {reserved_slots: -1}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     ":1:31: classes.a.reserved_slots: must not be negative (got -1)"},
    {"classes: {a: {max_request_slots: 1025}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     ":1:34: classes.a.max_request_slots: must be between 0 and 1024 (got 1025)"},
    {"classes: {a: {default_max_tokens: -1}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     ":1:35: classes.a.default_max_tokens: must not be negative (got -1)"},
    {"classes: {a: {default_max_tokens: 2.5}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:35: classes.a.default_max_tokens: expected a whole number, got '2.5'"},
    {"classes: {a: {ttft_ms: -5}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     ":1:24: classes.a.ttft_ms: must not be negative (got -5)"},
    {"classes: {a: {ttft_ms: '5'}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:24: classes.a.ttft_ms: expected a number, got the quoted string '5'"},
    {"classes: {a: {tpot_ms: 1.5}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:24: classes.a.tpot_ms: expected a whole number, got '1.5'"},
    {"classes: {a: {window_ms: 99999999999999999999999}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     "classes.a.window_ms: must be between 0 and 86400000"},
    {"classes: {a: {weight: 0}}\ntenants: [{name: x, keys: [k]}]\n", LMD_ERANGE,
     ":1:23: classes.a.weight: must be between 1 and 1000000 (got 0)"},
    {"classes: {a: {on_late: drop}}\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:24: classes.a.on_late: expected 'run' or 'refuse', got 'drop'"},
    {"classes: {a: }\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT, "classes.a: expected a mapping, got nothing"},
    {"classes: {a: {}}\ndefault_class: b\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":2:16: default_class: unknown class 'b' (classes are: a)"},
    {"default_class: [urgent]\ntenants: [{name: x, keys: [k]}]\n", LMD_EFORMAT,
     ":1:16: default_class: expected a string, got a list"},
    /* Tenants. */
    {"tenants: [{keys: [k]}]\n", LMD_EFORMAT, ":1:11: tenants[0]: missing key 'name'"},
    {"tenants: [{name: a}]\n", LMD_EFORMAT, ":1:11: tenants[0]: missing key 'keys'"},
    {"tenants: [{name: a, keys: []}]\n", LMD_EFORMAT, ":1:27: tenants[0].keys: needs at least one key"},
    {"tenants: [{name: a, keys: k}]\n", LMD_EFORMAT, ":1:27: tenants[0].keys: expected a list, got a scalar"},
    {"tenants: [{name: a, keys: [k], colour: red}]\n", LMD_EFORMAT,
     ":1:32: tenants[0]: unknown key 'colour' (expected one of: name, tier, keys"},
    {"tenants: [{name: a, keys: [k], weight: 1, weight: 2}]\n", LMD_EFORMAT,
     ":1:43: tenants[0]: duplicate key 'weight'"},
    {"tenants: [{name: a, keys: [k]}, {name: a, keys: [j]}]\n", LMD_EFORMAT,
     ":1:40: tenants[1].name: duplicate tenant 'a' (first at line 1)"},
    {"tenants: [{name: anonymous, keys: [k]}]\n", LMD_EFORMAT,
     ":1:18: tenants[0].name: the name 'anonymous' is reserved"},
    {"tenants: [{name: '', keys: [k]}]\n", LMD_EFORMAT, ":1:18: tenants[0].name: must not be empty"},
    {"tenants: [{name: \"a\\u00e9\", keys: [k]}]\n", LMD_EFORMAT,
     "tenants[0].name: 'a?\?' has a character other than letters"},
    {"tenants: [{name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, keys: [k]}]\n",
     LMD_ERANGE, "tenants[0].name: longer than 63 bytes"},
    {"tenants: [{name: a, keys: [k], tier: 'x y'}]\n", LMD_EFORMAT, "tenants[0].tier: 'x y' has a character"},
    {"tenants: [{name: a, keys: [k], prefix_cache_group: [g]}]\n", LMD_EFORMAT,
     "tenants[0].prefix_cache_group: expected a string, got a list"},
    {"tenants: [{name: a, keys: [k], weight: -1}]\n", LMD_ERANGE,
     ":1:40: tenants[0].weight: must not be negative (got -1)"},
    {"tenants: [{name: a, keys: [k], weight: 1e3}]\n", LMD_EFORMAT,
     "tenants[0].weight: expected a whole number, got '1e3'"},
    {"tenants: [{name: a, keys: [k], weight: {}}]\n", LMD_EFORMAT,
     ":1:40: tenants[0].weight: expected a number, got a mapping"},
    {"tenants: [{name: a, keys: [k], weight: ~}]\n", LMD_EFORMAT,
     ":1:40: tenants[0].weight: expected a number, got nothing"},
    /* Keys. */
    {"tenants: [{name: a, keys: ['']}]\n", LMD_EFORMAT, ":1:28: tenants[0].keys[0]: empty key"},
    {"tenants: [{name: a, keys: [~]}]\n", LMD_EFORMAT, ":1:28: tenants[0].keys[0]: expected a key string, got nothing"},
    {"tenants: [{name: a, keys: ['sk secret']}]\n", LMD_EFORMAT,
     ":1:28: tenants[0].keys[0]: key has a space, control or non-ASCII byte at offset 2"},
    {"tenants: [{name: a, keys: [[k]]}]\n", LMD_EFORMAT, "tenants[0].keys[0]: expected a key string, got a list"},
    {"tenants: [{name: a, keys: [k1, k2, k1]}]\n", LMD_EFORMAT,
     ":1:36: tenants[0].keys[2]: duplicate key (same as tenants[0].keys[0] at line 1, column 28)"},
    {"tenants:\n  - {name: a, keys: [k1]}\n  - {name: b, keys: [k2, k1]}\n", LMD_EFORMAT,
     ":3:26: tenants[1].keys[1]: duplicate key (same as tenants[0].keys[0] at line 2, column 22)"},
    {"admin_keys: [x, x]\ntenants: [{name: a, keys: [k]}]\n", LMD_EFORMAT,
     ":1:17: admin_keys[1]: duplicate key (same as admin_keys[0] at line 1, column 14)"},
    {"admin_keys: x\ntenants: [{name: a, keys: [k]}]\n", LMD_EFORMAT,
     ":1:13: admin_keys: expected a list, got a scalar"},
    /* Limits. */
    {"tenants: [{name: a, keys: [k], requests_per_second: -5}]\n", LMD_ERANGE,
     ":1:53: tenants[0].requests_per_second: must not be negative (got -5); omit the key for no limit"},
    {"tenants: [{name: a, keys: [k], requests_per_second: 0}]\n", LMD_ERANGE,
     "tenants[0].requests_per_second: must be greater than 0; omit the key for no limit"},
    {"tenants: [{name: a, keys: [k], requests_per_second: 0.0000001}]\n", LMD_EFORMAT,
     "tenants[0].requests_per_second: expected a number with at most 6 decimals, got '0.0000001'"},
    {"tenants: [{name: a, keys: [k], requests_per_second: 1.}]\n", LMD_EFORMAT,
     "tenants[0].requests_per_second: expected a number, got '1.'"},
    {"tenants: [{name: a, keys: [k], requests_per_second: .5}]\n", LMD_EFORMAT,
     "tenants[0].requests_per_second: expected a number, got '.5'"},
    {"tenants: [{name: a, keys: [k], requests_per_second: 1.2.3}]\n", LMD_EFORMAT,
     "tenants[0].requests_per_second: expected a number with at most 6 decimals, got '1.2.3'"},
    {"tenants: [{name: a, keys: [k], tokens_per_minute: 100000000001}]\n", LMD_ERANGE,
     "tenants[0].tokens_per_minute: must be at most 100000000000"},
    {"tenants: [{name: a, keys: [k], tokens_per_minute: 99999999999999999999999999}]\n", LMD_ERANGE,
     "tenants[0].tokens_per_minute: must be at most 100000000000"},
    {"tenants: [{name: a, keys: [k], tokens_per_minute: fast}]\n", LMD_EFORMAT,
     "tenants[0].tokens_per_minute: expected a number with at most 6 decimals, got 'fast'"},
    {"tenants: [{name: a, keys: [k], requests_burst: 5}]\n", LMD_EFORMAT,
     ":1:32: tenants[0].requests_burst: has no effect without requests_per_second"},
    {"tenants: [{name: a, keys: [k], tokens_burst: 5}]\n", LMD_EFORMAT,
     ":1:32: tenants[0].tokens_burst: has no effect without tokens_per_minute"},
    {"tenants: [{name: a, keys: [k], tokens_per_minute: 5, tokens_burst: 0}]\n", LMD_ERANGE,
     ":1:68: tenants[0].tokens_burst: must be between 1 and 1000000000000 (got 0)"},
    {"tenants: [{name: a, keys: [k], max_concurrent: 0}]\n", LMD_ERANGE,
     ":1:48: tenants[0].max_concurrent: must be between 1 and 1000000 (got 0)"},
    {"tenants: [{name: a, keys: [k], max_queued: -3}]\n", LMD_ERANGE,
     ":1:44: tenants[0].max_queued: must not be negative (got -3)"},
    {"tenants: [{name: a, keys: [k], max_queued: \"3\"}]\n", LMD_EFORMAT,
     "tenants[0].max_queued: expected a number, got the quoted string '3'"},
    /* Models. */
    {"tenants: [{name: a, keys: [k], models: []}]\n", LMD_EFORMAT,
     ":1:40: tenants[0].models: needs at least one model id, or \"*\" for all"},
    {"tenants: [{name: a, keys: [k], models: '*'}]\n", LMD_EFORMAT,
     ":1:40: tenants[0].models: expected a list, got a scalar"},
    {"tenants: [{name: a, keys: [k], models: [m, '*']}]\n", LMD_EFORMAT,
     ":1:44: tenants[0].models[1]: \"*\" (all models) must be the only entry"},
    {"tenants: [{name: a, keys: [k], models: [m, m]}]\n", LMD_EFORMAT,
     ":1:44: tenants[0].models[1]: duplicate model 'm'"},
    {"tenants: [{name: a, keys: [k], models: ['my model']}]\n", LMD_EFORMAT,
     "tenants[0].models[0]: 'my model' has a character other than printable ASCII"},
    /* A tenant's classes. */
    {"tenants: [{name: a, keys: [k], classes: [urgent, gold]}]\n", LMD_EFORMAT,
     ":1:50: tenants[0].classes[1]: unknown class 'gold' (classes are: urgent, best_effort)"},
    {"tenants: [{name: a, keys: [k], classes: [urgent, urgent]}]\n", LMD_EFORMAT,
     ":1:50: tenants[0].classes[1]: class 'urgent' is listed twice"},
    {"tenants: [{name: a, keys: [k], classes: []}]\n", LMD_EFORMAT,
     ":1:41: tenants[0].classes: needs at least one class"},
    {"tenants: [{name: a, keys: [k], classes: urgent}]\n", LMD_EFORMAT,
     ":1:41: tenants[0].classes: expected a list, got a scalar"},
    {"tenants: [{name: a, keys: [k], classes: [urgent], default_class: best_effort}]\n", LMD_EFORMAT,
     ":1:66: tenants[0].default_class: class 'best_effort' is not in this tenant's classes"},
    {"tenants: [{name: a, keys: [k], default_class: slow}]\n", LMD_EFORMAT,
     ":1:47: tenants[0].default_class: unknown class 'slow'"},
    {"tenants: [a, b]\n", LMD_EFORMAT, ":1:11: tenants[0]: expected a mapping, got a scalar"},
    {"tenants: [~]\n", LMD_EFORMAT, ":1:11: tenants[0]: expected a mapping, got nothing"},
};

static void test_malformed(void **state)
{
    (void)state;
    int failed = 0;
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
        const struct bad_case *bc = &bad_cases[i];
        const char *path = write_yaml(bc->yaml);
        struct qos *q = (struct qos *)1;
        struct lmd_err err = {0};
        int rc = qos_open(&q, path, &err);
        char want[512];
        snprintf(want, sizeof want, "%s%s", bc->msg[0] == ':' ? path : "", bc->msg);
        /* Report every mismatch before failing, not just the first. */
        if (rc != bc->code || !strstr(err.msg, want) || q || strchr(err.msg, '\n')) {
            print_error("case %zu: rc %d (want %d)\n  got:  %s\n  want: %s\n", i, rc, bc->code, err.msg, want);
            failed++;
        }
        /* The same bytes from memory, with no terminator (an exact-size
         * copy, so ASan sees a read past them): the same outcome, the
         * message naming the name given. */
        size_t len = strlen(bc->yaml);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, bc->yaml, len);
        q = (struct qos *)1;
        rc = qos_open_buffer(&q, "mem/tenants.yaml", copy, len, &err);
        snprintf(want, sizeof want, "%s%s", bc->msg[0] == ':' ? "mem/tenants.yaml" : "", bc->msg);
        if (rc != bc->code || !strstr(err.msg, want) || q) {
            print_error("case %zu from memory: rc %d (want %d)\n  got:  %s\n  want: %s\n", i, rc, bc->code, err.msg,
                        want);
            failed++;
        }
        free(copy);
    }
    assert_int_equal(failed, 0);
}

static void test_malformed_generated(void **state)
{
    (void)state;
    struct lmd_err err;
    struct qos *q;
    /* 64 tenants: one too many with "anonymous". */
    char *text = malloc(1 << 16);
    size_t o = (size_t)sprintf(text, "tenants:\n");
    for (int i = 0; i < QOS_MAX_TENANTS; i++)
        o += (size_t)sprintf(text + o, "  - {name: t%d, keys: [k%d]}\n", i, i);
    assert_int_equal(qos_open(&q, write_yaml(text), &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, ":65:5: tenants: more than 63 tenants"));
    /* 63 is fine, and each key leads to its tenant. */
    strstr(text, "  - {name: t63")[0] = 0;
    assert_int_equal(qos_open(&q, write_yaml(text), &err), 0);
    assert_int_equal(qos_n_tenants(q), QOS_MAX_TENANTS);
    assert_int_equal(auth(q, "Bearer k62"), 63);
    assert_int_equal(auth(q, "Bearer k0"), 1);
    qos_close(q);
    /* Too many keys. */
    o = (size_t)sprintf(text, "tenants:\n  - name: a\n    keys: [");
    for (int i = 0; i <= QOS_MAX_KEYS; i++)
        o += (size_t)sprintf(text + o, "%sk%d", i ? "," : "", i);
    sprintf(text + o, "]\n");
    assert_int_equal(qos_open(&q, write_yaml(text), &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "tenants[0].keys[4096]: more than 4096 keys in the file"));
    /* A key over QOS_KEY_MAX bytes, and the message does not quote it. */
    o = (size_t)sprintf(text, "tenants: [{name: a, keys: [");
    memset(text + o, 'z', QOS_KEY_MAX + 1);
    sprintf(text + o + QOS_KEY_MAX + 1, "]}]\n");
    assert_int_equal(qos_open(&q, write_yaml(text), &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "tenants[0].keys[0]: key longer than 256 bytes"));
    assert_null(strstr(err.msg, "zzz"));
    /* Over a megabyte. */
    memset(text, '#', (1 << 16) - 1);
    text[(1 << 16) - 1] = 0;
    const char *path = write_yaml(text);
    FILE *f = fopen(path, "ab");
    for (int i = 0; i < 17; i++)
        fwrite(text, 1, strlen(text), f);
    fclose(f);
    assert_int_equal(qos_open(&q, path, &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "larger than 1048576 bytes"));
    free(text);
    /* Not there, not a file. */
    assert_int_equal(qos_open(&q, "/nonexistent/tenants.yaml", &err), LMD_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/tenants.yaml: cannot open"));
    assert_int_equal(qos_open(&q, tmpdir, &err), LMD_EIO);
    assert_non_null(strstr(err.msg, "not a regular file"));
}

/* Random byte edits of a valid file: whatever comes out is either loaded
 * or refused with a one-line message that starts with the file's name —
 * never a crash, a leak or an out-of-bounds read (run under ASan). */
static void test_mutations(void **state)
{
    (void)state;
    size_t n = strlen(full_yaml);
    char *text = malloc(n + 64);
    const char *path = write_yaml("");
    const char alphabet[] = "{}[],:-#&*!|>'\"\\ \n\t0123456789.~?%@`abc\x01\xff";
    uint32_t rng = 12345;
    int loaded = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(text, full_yaml, n + 1);
        size_t len = n;
        for (int e = 0; e < 1 + it % 4; e++) {
            rng = rng * 1664525u + 1013904223u;
            size_t at = (rng >> 8) % len;
            char ch = alphabet[(rng >> 3) % (sizeof alphabet - 1)];
            switch (rng >> 30) {
            case 0:
                text[at] = ch;
                break; /* replace */
            case 1:
                memmove(text + at, text + at + 1, len - at), len--;
                break; /* delete */
            case 2:
                memmove(text + at + 1, text + at, len - at + 1), text[at] = ch, len++;
                break; /* insert */
            default:
                len = at, text[len] = 0;
                break; /* truncate */
            }
            if (len == 0)
                break;
        }
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fwrite(text, 1, len, f);
        fclose(f);
        struct qos *q = NULL;
        struct lmd_err err = {0};
        int rc = qos_open(&q, path, &err);
        if (rc == 0) {
            loaded++;
            assert_true(qos_n_tenants(q) >= 2);
            qos_close(q);
            continue;
        }
        assert_null(q);
        if (strncmp(err.msg, path, strlen(path)) != 0 || strchr(err.msg, '\n') || strstr(err.msg, "sk-"))
            fail_msg("edit %d: bad message: %s", it, err.msg);
    }
    /* Some edits (in comments, values) still make valid files. */
    assert_true(loaded > 0);
    free(text);
}

/* Every allocation qos_open makes fails in turn: each failure is a clean
 * LMD_ENOMEM and leaks nothing (LeakSanitizer checks that in the ASan
 * build). */
static void test_alloc_failures(void **state)
{
    (void)state;
    const char *path = write_yaml(full_yaml);
    int n;
    for (n = 0; n < 1000; n++) {
        struct qos *q = NULL;
        struct lmd_err err = {0};
        qos__alloc_fail_after = n;
        int rc = qos_open(&q, path, &err);
        qos__alloc_fail_after = -1;
        if (rc == 0) {
            assert_int_equal(auth(q, "Bearer sk-free-1"), 2);
            qos_close(q);
            break;
        }
        assert_int_equal(rc, LMD_ENOMEM);
        assert_null(q);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    assert_true(n > 3 && n < 1000);
}

/* ---- reload ------------------------------------------------------------------- */

static void reload_ok(struct qos *q, const char *text, struct qos_reload_report *r)
{
    struct lmd_err err = {0};
    if (qos_reload(q, write_yaml(text), r, &err) != 0)
        fail_msg("qos_reload: %s", err.msg);
}

static void reload_refused(struct qos *q, const char *text, int code, const char *what)
{
    struct lmd_err err = {0};
    struct qos_reload_report r = {.n_tenants = -7};
    assert_int_equal(qos_reload(q, write_yaml(text), &r, &err), code);
    if (!strstr(err.msg, what))
        fail_msg("reload refused with '%s', want it to mention '%s'", err.msg, what);
    assert_int_equal(r.n_tenants, -7); /* untouched */
}

/* Keys rotate and limits change without a restart; tenants keep their
 * indices; what a restart must do is refused and changes nothing; a
 * ticket taken before a reload is finished after it. */
static void test_reload(void **state)
{
    (void)state;
    struct qos *q = open_text("tenants:\n"
                              "  - {name: a, keys: [ka1], max_concurrent: 1, tokens_per_minute: 600, "
                              "tokens_burst: 100}\n"
                              "  - {name: b, keys: [kb], weight: 2, models: [m1]}\n"
                              "  - {name: c, keys: [kc]}\n");
    assert_int_equal(auth(q, "Bearer ka1"), 1);
    assert_int_equal(auth(q, "Bearer kb"), 2);
    const struct qos_tenant *a0 = qos_tenant(q, 1);
    struct qos_ticket t;
    struct qos_refusal why;
    assert_int_equal(qos_admit(q, 1, 0, 50, 0, &t, &why), 0);
    expect_refused(q, 1, 1, 0, LMD_EBUSY, OBS_R_TENANT_CONCURRENCY, 429, QOS_RETRY_QUOTA_S, 0);

    /* The new file lists b first, rotates a's key, raises a's quota and
     * burst, lets b use m2, drops c and changes b's weight. */
    struct qos_reload_report r;
    reload_ok(q,
              "tenants:\n"
              "  - {name: b, keys: [kb], weight: 5, models: [m1, m2]}\n"
              "  - {name: a, keys: [ka2], max_concurrent: 3, tokens_per_minute: 600, tokens_burst: 200}\n",
              &r);
    assert_int_equal(r.n_tenants, 4);
    assert_int_equal(r.n_keys, 2);
    assert_int_equal(r.n_disabled, 1);
    assert_int_equal(r.weights_pending, 1);
    assert_int_equal(qos_n_tenants(q), 4);
    assert_int_equal(auth(q, "Bearer ka1"), LMD_ENOENT);
    assert_int_equal(auth(q, "Bearer ka2"), 1);
    assert_int_equal(auth(q, "Bearer kb"), 2);
    assert_int_equal(auth(q, "Bearer kc"), LMD_ENOENT);
    assert_string_equal(qos_tenant(q, 1)->name, "a");
    assert_string_equal(qos_tenant(q, 3)->name, "c");
    assert_int_equal(qos_tenant(q, 2)->weight, 2); /* the scheduler's, until a restart */
    assert_true(qos_model_allowed(q, 2, "m2", 2));
    assert_false(qos_model_allowed(q, 3, "anything", 8));
    /* The old snapshot stays readable for whoever held it. */
    assert_string_equal(a0->name, "a");
    assert_int_equal(a0->max_in_flight, 1);

    /* a's quota is 3 now; its bucket (100 - 50 of 100) moved to the same
     * fraction of the new burst: 100 of 200. */
    struct qos_usage u;
    qos_usage(q, 1, 0, &u);
    assert_int_equal(u.in_flight, 1);
    assert_int_equal(u.tokens, 100);
    struct qos_ticket t2;
    assert_int_equal(qos_admit(q, 1, 0, 10, 0, &t2, &why), 0);
    qos_started(q, &t);
    qos_finished(q, &t, 50, 0);
    qos_started(q, &t2);
    qos_finished(q, &t2, 10, 0);
    qos_usage(q, 1, 0, &u);
    assert_int_equal(u.in_flight, 0);
    assert_int_equal(u.queued, 0);

    /* What needs a restart is refused, and nothing changes. */
    reload_refused(q, "tenants:\n  - {name: a, keys: [ka3]}\n  - {name: d, keys: [kd]}\n", LMD_ENOTSUP,
                   "tenant 'd' is new");
    reload_refused(q,
                   "classes:\n  urgent: {ttft_ms: 500}\n  best_effort: {ttft_ms: 15000}\n"
                   "tenants:\n  - {name: a, keys: [ka3]}\n",
                   LMD_ENOTSUP, "service classes changed");
    reload_refused(q, "tenants:\n  - {name: a, keys: [ka3], max_concurrent: -1}\n", LMD_ERANGE, "max_concurrent");
    reload_refused(q, "tenants: [\n", LMD_EFORMAT, "yaml");
    assert_int_equal(auth(q, "Bearer ka2"), 1);
    assert_int_equal(auth(q, "Bearer ka3"), LMD_ENOENT);
    qos_close(q);

    /* A server without a tenants file cannot gain one by a reload. */
    struct qos *open = NULL;
    struct lmd_err err = {0};
    assert_int_equal(qos_open(&open, NULL, &err), 0);
    assert_int_equal(qos_reload(open, write_yaml("tenants:\n  - {name: a, keys: [k]}\n"), NULL, &err), LMD_ENOTSUP);
    qos_close(open);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_mode),       cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_example_file),    cmocka_unit_test(test_auth),
        cmocka_unit_test(test_requests_bucket), cmocka_unit_test(test_tokens_bucket),
        cmocka_unit_test(test_no_drift),        cmocka_unit_test(test_quotas),
        cmocka_unit_test(test_threads),         cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_from_memory),     cmocka_unit_test(test_malformed_generated),
        cmocka_unit_test(test_mutations),       cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
