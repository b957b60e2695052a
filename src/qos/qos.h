/*
 * Quality of service at the door: who a request is (API key → tenant),
 * which service classes and models it may use, and whether it may enter now
 * (token buckets for requests/s and tokens/min, in-flight and queued
 * quotas). It answers 401 / 413 / 429 + Retry-After / 503 before a request
 * is queued, so nothing is left to time out silently.
 *
 * It is not the scheduler: service classes and tenant weights are exposed
 * here as read-only configuration, and sched/ uses them to order work
 * (deadlines, weighted fair share). It knows nothing of HTTP or JSON; the
 * caller passes the Authorization header's value and gets back a tenant
 * index, an HTTP status and a message.
 *
 * Configuration comes from a YAML tenants file (`lmd serve --tenants FILE`,
 * format in docs/configuration.md). Without a file there is one open tenant,
 * "anonymous" (index 0), with every class and model allowed, no limits and
 * no key needed. With a file every request needs a configured key; index 0
 * is still "anonymous" so that metrics labels stay stable, but no key leads
 * to it. Tenant and class indices are small and fixed for the life of the
 * process, so they can index obs/ label arrays directly.
 *
 * Threads and lifetimes: a `struct qos` lives for the process. It is built
 * by qos_open on one thread and read-only afterwards, except the per-tenant
 * admission state, which any thread may change through qos_admit,
 * qos_started and qos_finished at the same time. Those never block: each
 * holds a per-tenant spinlock for a few dozen instructions, never across
 * I/O or allocation. Time is always passed in (monotonic ns,
 * lmd_time_mono_ns) so that tests are deterministic.
 */
#pragma once

#include "core/error.h"
#include "obs/obs.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QOS_MAX_CLASSES OBS_MAX_CLASSES
#define QOS_MAX_TENANTS OBS_MAX_TENANTS /* including "anonymous" at index 0 */
#define QOS_MAX_KEYS 4096               /* tenant keys and admin keys, whole file */
#define QOS_MAX_MODELS 64               /* model ids per tenant */
#define QOS_NAME_MAX 64                 /* class, tenant and tier names: 1..63 bytes of [A-Za-z0-9_.-] */
#define QOS_KEY_MAX 256                 /* API keys: 1..256 bytes of visible ASCII (0x21..0x7e) */

/* Seconds sent as Retry-After when a tenant's in-flight or queued quota is
 * full: a slot frees when some request of the tenant finishes, which we
 * cannot predict, so we ask for a short, fixed back-off. */
#define QOS_RETRY_QUOTA_S 1

/* ---- configuration (read-only after qos_open) ----------------------------- */

enum qos_on_late {
    QOS_LATE_RUN = 0,    /* serve it anyway, late */
    QOS_LATE_REFUSE = 1, /* refuse it early (503, reason "deadline") rather than serve it late */
};

/* A service class. Targets are what sched/ schedules for; 0 = no target. */
struct qos_class {
    char name[QOS_NAME_MAX];
    uint64_t ttft_ns;   /* ns, target time to first token (from arrival) */
    uint64_t tpot_ns;   /* ns, target time per output token after the first */
    uint64_t window_ns; /* ns, grace past the TTFT target before a request counts as late */
    uint32_t weight;    /* >= 1, the class's share when classes compete */
    enum qos_on_late on_late;
    /* One request's share: running sequences its choices (n) may hold at
     * once, the others waiting their turn (0 = half of the model's running
     * slots, rounded up); and the output length of a request that gives no
     * max_tokens, when shorter than the API's default (0 = the API's
     * default: 16 for completions, the rest of the context for chat). */
    int32_t max_request_slots;
    int32_t default_max_tokens;
    /* Running slots held back for this class and the classes before it in
     * the file: requests of later classes do not take them (0 = none). */
    int32_t reserved_slots;
};

/* A rate as an exact fraction, `count` units every `period_ns`, plus the
 * bucket size. count == 0 means unlimited (no bucket). Kept as a fraction so
 * that 0.5 requests/s or 200000 tokens/min refill without rounding drift. */
struct qos_rate {
    int64_t count;     /* units per period; 0 = unlimited */
    int64_t period_ns; /* ns */
    int64_t burst;     /* units, >= 1: the bucket's capacity */
};

struct qos_tenant {
    char name[QOS_NAME_MAX];
    char tier[QOS_NAME_MAX];        /* "" when not configured; a free label for dashboards */
    char cache_group[QOS_NAME_MAX]; /* prefix_cache_group: tenants of one group share cached prefixes; "" = its own */
    uint32_t weight;                /* >= 1, fair share between tenants (sched/) */
    uint32_t classes;               /* bitmask over class indices: bit i = class i allowed */
    int default_class;              /* class index used when a request names none; always allowed */
    struct qos_rate requests;       /* requests/s bucket, units = requests */
    struct qos_rate tokens;         /* tokens/min bucket, units = tokens */
    int32_t max_in_flight;          /* admitted and not finished (queued + running); 0 = unlimited */
    int32_t max_queued;             /* admitted and not yet started; 0 = unlimited */
    bool all_models;                /* models: ["*"] (the default) */
    int n_models;
    char **models; /* [n_models] allowed model ids (exact match) when !all_models */
    int n_keys;    /* how many keys lead to this tenant (the keys themselves are not kept) */
};

struct qos;

/* Load the tenants file at `path`, or set up the open anonymous mode when
 * path is NULL. On failure returns LMD_EIO (unreadable), LMD_EFORMAT
 * (malformed: err names file:line:column and the key), LMD_ERANGE (a value
 * out of bounds) or LMD_ENOMEM, and *out is NULL. */
int qos_open(struct qos **out, const char *path, struct lmd_err *err);
/* qos_open over the tenants file's bytes already in memory: `name` stands
 * for its path in messages; text[len] need not be NUL-terminated and is
 * only read (the caller wipes it: it holds keys in clear). qos_open reads
 * the file and parses it the same way. */
int qos_open_buffer(struct qos **out, const char *name, const void *text, size_t len, struct lmd_err *err);
void qos_close(struct qos *q); /* NULL is fine. No thread may use q after. */

/* Read the tenants file again (SIGHUP, --watch-config: a Kubernetes Secret
 * update) and put it in force for requests from now on: keys (added,
 * rotated, revoked), rates and quotas, allowed models and classes, default
 * classes, tiers, prefix-cache groups. Requests in flight keep their
 * tickets. Bucket levels carry over as the fraction that was full.
 * Tenant indices index metrics and the scheduler's fair-share state, so:
 * a tenant missing from the new file keeps its index with no keys (it
 * takes no new requests); a tenant new in the file, a changed class list,
 * or a file where there was none (or none where there was one) is refused
 * with LMD_ENOTSUP and a message (a restart applies them). A tenant's
 * weight is the scheduler's, read at start: a new weight is kept for the
 * next start and reported in rep->weights_pending. On any failure nothing
 * changes. Any thread; concurrent with admission, never blocking it;
 * reloads themselves must not run concurrently. */
struct qos_reload_report {
    int n_tenants;       /* tenants, anonymous included */
    int n_keys;          /* keys now in force */
    int n_disabled;      /* tenants of the old file missing from the new one */
    int weights_pending; /* tenants whose new weight waits for a restart */
};
int qos_reload(struct qos *q, const char *path, struct qos_reload_report *rep, struct lmd_err *err);

/* Whether a tenants file was loaded (false = open anonymous mode). */
bool qos_has_file(const struct qos *q);

int qos_n_classes(const struct qos *q);                        /* 1..QOS_MAX_CLASSES */
const struct qos_class *qos_class(const struct qos *q, int i); /* valid while q lives */
/* Class index by name (len bytes, not NUL-terminated), or LMD_ENOENT. */
int qos_class_find(const struct qos *q, const char *name, size_t len);
int qos_default_class(const struct qos *q); /* the file's default_class */

int qos_n_tenants(const struct qos *q);                          /* 1..QOS_MAX_TENANTS, index 0 = "anonymous" */
const struct qos_tenant *qos_tenant(const struct qos *q, int i); /* valid while q lives */

/* ---- authentication ---------------------------------------------------------- */

/* Tenant index for an Authorization header value ("Bearer <key>", scheme
 * case-insensitive, one or more spaces before the key; `value` may be NULL
 * when the header is absent). Open mode: always 0. With a file: the
 * tenant whose key matches, or LMD_ENOENT for a missing, malformed or
 * unknown key (the caller answers 401). The key is compared as a SHA-256
 * digest against every configured key without an early exit, so the time
 * taken does not depend on which key, if any, matched or how much of it
 * did. Keys are never logged or kept in clear. Any thread. */
int qos_authenticate(const struct qos *q, const char *value, size_t len);

/* Whether the header carries an admin key (admin_keys in the file), which
 * may use the /debug endpoints. Open mode: true (the endpoints are then
 * guarded only by --debug-endpoints). Same constant-time comparison. */
bool qos_is_admin(const struct qos *q, const char *value, size_t len);

/* ---- what a tenant may use --------------------------------------------------- */

bool qos_model_allowed(const struct qos *q, int tenant, const char *model, size_t len);
bool qos_class_allowed(const struct qos *q, int tenant, int cls);

/* A refusal, ready for the HTTP layer. */
struct qos_refusal {
    enum obs_reject reason;  /* for lmd_rejections_total{reason} */
    int http_status;         /* 400, 403, 413, 429 or 503 */
    uint32_t retry_after_s;  /* s, for Retry-After; 0 = send none (retrying cannot help) */
    uint64_t retry_after_ns; /* ns, the exact wait behind retry_after_s (buckets); 0 otherwise */
    char message[160];       /* one line for the error body; never contains a key */
};

/* The class for a request of `tenant` that asked for class `name` (len
 * bytes; NULL or len 0 = none asked: the tenant's default class). Returns
 * the class index, or fills `why` and returns LMD_ENOENT (no such class:
 * 400, reason OBS_R_CLASS) or LMD_EINVAL (not allowed for the tenant: 403,
 * reason OBS_R_CLASS). Any thread. */
int qos_class_pick(const struct qos *q, int tenant, const char *name, size_t len, struct qos_refusal *why);

/* ---- admission ----------------------------------------------------------------- */

enum qos_ticket_state {
    QOS_TICKET_NONE = 0,    /* never admitted, or finished */
    QOS_TICKET_QUEUED = 1,  /* admitted, waiting to start */
    QOS_TICKET_RUNNING = 2, /* started at least once */
};

/* What one admitted request holds, kept by the caller in its request
 * object. One thread at a time uses a ticket (it travels with the request
 * through the queues). */
struct qos_ticket {
    int tenant;
    int cls;
    int64_t charged; /* tokens taken from the tokens bucket at admission */
    enum qos_ticket_state state;
};

/* Try to admit a request of `tenant` in class `cls` that may consume up to
 * `charge_tokens` tokens (prompt + max output tokens). Checks, in order:
 * the request can ever fit (charge_tokens <= the tokens bucket's burst),
 * the requests/s bucket, the tokens/min bucket, the in-flight quota and the
 * queued quota. Either takes everything it needs (one request from the
 * first bucket, charge_tokens from the second, one in-flight and one queued
 * slot), fills `t` as QUEUED and returns 0; or takes nothing, fills `why`
 * and returns:
 *   LMD_ERANGE  the charge exceeds the tokens burst: 413, no Retry-After;
 *   LMD_EBUSY   a bucket is short (429, Retry-After = whole seconds until
 *               it holds enough) or the in-flight quota is full (429) or
 *               the queued quota is full (503), Retry-After QOS_RETRY_QUOTA_S;
 *   LMD_EINVAL  bad tenant, class or negative charge (a caller bug).
 * Never blocks; any thread. */
int qos_admit(struct qos *q, int tenant, int cls, int64_t charge_tokens, uint64_t now_ns, struct qos_ticket *t,
              struct qos_refusal *why);

/* Requests refused for what they carry (a prompt past the context, a
 * template error) before they reach qos_admit still count against the
 * tenant's request rate, so that a client looping them is held to it like
 * any other: qos_gate, before the work of reading such a request, refuses
 * it as qos_admit would when the requests/s bucket holds less than one
 * request (LMD_EBUSY, why filled; it takes nothing); qos_charge_refused
 * takes one request from the bucket (down to empty) once the request was
 * refused. Never block; any thread. */
int qos_gate(struct qos *q, int tenant, uint64_t now_ns, struct qos_refusal *why);
void qos_charge_refused(struct qos *q, int tenant, uint64_t now_ns);

/* The request left the queue and runs: frees its queued slot (it keeps the
 * in-flight one). A no-op unless the ticket is QUEUED, so a preempted
 * request that starts again does not count twice. Any thread. */
void qos_started(struct qos *q, struct qos_ticket *t);

/* The request is over (finished, failed or cancelled, queued or running):
 * frees its slots and settles the tokens bucket, giving back charged -
 * used_tokens (capped at the burst) or, if it used more than it was
 * charged, taking the excess (the level may go negative, down to minus one
 * burst, which delays later requests). The ticket becomes NONE; a no-op on
 * a NONE ticket, so error paths may call it unconditionally. Any thread. */
void qos_finished(struct qos *q, struct qos_ticket *t, int64_t used_tokens, uint64_t now_ns);

/* A snapshot of one tenant's admission state at now_ns (for /debug and
 * tests; the values may be stale by the time they are read). */
struct qos_usage {
    int32_t in_flight;      /* admitted, not finished */
    int32_t queued;         /* admitted, not started */
    int64_t requests_milli; /* requests/s bucket level, 1/1000 request (floor); INT64_MAX = unlimited */
    int64_t tokens;         /* tokens/min bucket level, tokens (floor; may be negative); INT64_MAX = unlimited */
};
void qos_usage(struct qos *q, int tenant, uint64_t now_ns, struct qos_usage *out);
