/*
 * The qos object: opening (defaults, then the tenants file if any),
 * closing, the read-only accessors and the questions about what a tenant
 * may use (models, classes). Parsing lives in config.c, keys in auth.c and
 * the buckets and quotas in admit.c.
 */
#include "qos/qos_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qos__alloc_fail_after = -1;

void *qos__calloc(size_t n, size_t size)
{
    if (qos__alloc_fail_after >= 0 && qos__alloc_fail_after-- == 0)
        return NULL;
    return calloc(n, size);
}

char *qos__strndup(const char *s, size_t len)
{
    char *p = qos__calloc(1, len + 1);
    if (p)
        memcpy(p, s, len);
    return p;
}

static void set_class(struct qos_class *c, const char *name, uint64_t ttft_ms, uint64_t tpot_ms, uint32_t weight)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->ttft_ns = ttft_ms * 1000000u;
    c->tpot_ns = tpot_ms * 1000000u;
    c->window_ns = 0;
    c->weight = weight;
    c->on_late = QOS_LATE_RUN;
}

void qos__default_classes(struct qos *q)
{
    /* Interactive traffic wants its first token within a second and a
     * readable stream; batch traffic only wants to finish eventually. */
    set_class(&q->classes[0], "urgent", 1000, 100, 4);
    set_class(&q->classes[1], "best_effort", 15000, 0, 1);
    q->n_classes = 2;
    q->default_class = 1;
}

void qos__anonymous_tenant(struct qos *q, struct qos_tenant *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "anonymous");
    t->weight = 1;
    t->classes = (q->n_classes >= 32) ? 0xffffffffu : ((1u << q->n_classes) - 1);
    t->default_class = q->default_class;
    t->all_models = true;
}

void qos__free_parts(struct qos *q)
{
    for (int i = 0; i < QOS_MAX_TENANTS; i++) {
        struct qos_tenant *t = &q->tenants[i];
        for (int j = 0; j < t->n_models; j++)
            free(t->models[j]);
        free(t->models);
        t->models = NULL;
        t->n_models = 0;
    }
    free(q->keys);
    q->keys = NULL;
    q->n_keys = 0;
}

int qos_open(struct qos **out, const char *path, struct lmd_err *err)
{
    *out = NULL;
    /* The per-tenant state is cache-line aligned, so the object is too. */
    size_t size = (sizeof(struct qos) + 63) & ~(size_t)63;
    struct qos *q = NULL;
    if (qos__alloc_fail_after < 0 || qos__alloc_fail_after-- != 0)
        q = aligned_alloc(64, size);
    if (!q)
        return lmd_err_set(err, LMD_ENOMEM, "qos: out of memory");
    memset(q, 0, size);
    qos__default_classes(q);
    q->n_tenants = 1;
    if (path) {
        q->has_file = true;
        int rc = qos__config_load(q, path, err);
        if (rc < 0) {
            qos__free_parts(q);
            free(q);
            return rc;
        }
    }
    /* Tenant 0 is set after loading because it allows every class of the
     * file and uses the file's default class. */
    qos__anonymous_tenant(q, &q->tenants[0]);
    qos__state_init(q);
    *out = q;
    return 0;
}

void qos_close(struct qos *q)
{
    if (!q)
        return;
    qos__free_parts(q);
    free(q);
}

bool qos_has_file(const struct qos *q) { return q->has_file; }
int qos_n_classes(const struct qos *q) { return q->n_classes; }
int qos_default_class(const struct qos *q) { return q->default_class; }
int qos_n_tenants(const struct qos *q) { return q->n_tenants; }

const struct qos_class *qos_class(const struct qos *q, int i)
{
    LMD_ASSERT(i >= 0 && i < q->n_classes, "class index out of range");
    return &q->classes[i];
}

const struct qos_tenant *qos_tenant(const struct qos *q, int i)
{
    LMD_ASSERT(i >= 0 && i < q->n_tenants, "tenant index out of range");
    return &q->tenants[i];
}

int qos_class_find(const struct qos *q, const char *name, size_t len)
{
    if (!name)
        return LMD_ENOENT;
    for (int i = 0; i < q->n_classes; i++)
        if (strlen(q->classes[i].name) == len && memcmp(q->classes[i].name, name, len) == 0)
            return i;
    return LMD_ENOENT;
}

bool qos_class_allowed(const struct qos *q, int tenant, int cls)
{
    if (tenant < 0 || tenant >= q->n_tenants || cls < 0 || cls >= q->n_classes)
        return false;
    return (q->tenants[tenant].classes >> cls) & 1u;
}

bool qos_model_allowed(const struct qos *q, int tenant, const char *model, size_t len)
{
    if (tenant < 0 || tenant >= q->n_tenants)
        return false;
    const struct qos_tenant *t = &q->tenants[tenant];
    if (t->all_models)
        return true;
    if (!model)
        return false;
    for (int i = 0; i < t->n_models; i++)
        if (strlen(t->models[i]) == len && memcmp(t->models[i], model, len) == 0)
            return true;
    return false;
}

/* Copy at most `max` bytes of untrusted text into a message, replacing what
 * would break a one-line message or a JSON string. */
static void clip(char *dst, size_t cap, const char *s, size_t len, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < len && i < max && n + 1 < cap; i++)
        dst[n++] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') ? s[i] : '?';
    dst[n] = 0;
}

int qos_class_pick(const struct qos *q, int tenant, const char *name, size_t len, struct qos_refusal *why)
{
    LMD_ASSERT(tenant >= 0 && tenant < q->n_tenants, "tenant index out of range");
    const struct qos_tenant *t = &q->tenants[tenant];
    if (!name || len == 0)
        return t->default_class;
    int cls = qos_class_find(q, name, len);
    char shown[48];
    clip(shown, sizeof shown, name, len, 40);
    memset(why, 0, sizeof *why);
    why->reason = OBS_R_CLASS;
    if (cls < 0) {
        why->http_status = 400;
        snprintf(why->message, sizeof why->message, "unknown service class '%s'", shown);
        return LMD_ENOENT;
    }
    if (!((t->classes >> cls) & 1u)) {
        why->http_status = 403;
        snprintf(why->message, sizeof why->message, "service class '%s' is not allowed for tenant '%s'", shown,
                 t->name);
        return LMD_EINVAL;
    }
    return cls;
}
