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

void qos__default_classes(struct qos__conf *q)
{
    /* Interactive traffic wants its first token within a second and a
     * readable stream; batch traffic only wants to finish eventually. */
    set_class(&q->classes[0], "urgent", 1000, 100, 4);
    set_class(&q->classes[1], "best_effort", 15000, 0, 1);
    q->n_classes = 2;
    q->default_class = 1;
}

void qos__anonymous_tenant(struct qos__conf *q, struct qos_tenant *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "anonymous");
    t->weight = 1;
    t->classes = (q->n_classes >= 32) ? 0xffffffffu : ((1u << q->n_classes) - 1);
    t->default_class = q->default_class;
    t->all_models = true;
}

void qos__free_parts(struct qos__conf *q)
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

struct qos__conf *qos__conf_load(const char *path, const void *text, size_t len, struct lmd_err *err)
{
    struct qos__conf *c = qos__calloc(1, sizeof *c);
    if (!c) {
        lmd_err_set(err, LMD_ENOMEM, "qos: out of memory");
        return NULL;
    }
    qos__default_classes(c);
    c->n_tenants = 1;
    if (path) {
        c->has_file = true;
        int rc = text ? qos__config_load_buffer(c, path, text, len, err) : qos__config_load(c, path, err);
        if (rc < 0) {
            qos__free_parts(c);
            free(c);
            return NULL;
        }
    }
    /* Tenant 0 is set after loading because it allows every class of the
     * file and uses the file's default class. */
    qos__anonymous_tenant(c, &c->tenants[0]);
    return c;
}

void qos__conf_free(struct qos__conf *c)
{
    while (c) {
        struct qos__conf *prev = c->prev;
        qos__free_parts(c);
        free(c);
        c = prev;
    }
}

static int open_conf(struct qos **out, const char *path, const void *text, size_t len, struct lmd_err *err)
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
    struct qos__conf *c = qos__conf_load(path, text, len, err);
    if (!c) {
        free(q);
        return err ? err->code : LMD_ENOMEM;
    }
    atomic_init(&q->conf, c);
    qos__state_init(q);
    *out = q;
    return 0;
}

int qos_open(struct qos **out, const char *path, struct lmd_err *err) { return open_conf(out, path, NULL, 0, err); }

int qos_open_buffer(struct qos **out, const char *name, const void *text, size_t len, struct lmd_err *err)
{
    return open_conf(out, name, text ? text : "", len, err);
}

void qos_close(struct qos *q)
{
    if (!q)
        return;
    qos__conf_free(qos__conf(q));
    free(q);
}

static bool same_class(const struct qos_class *a, const struct qos_class *b)
{
    return strcmp(a->name, b->name) == 0 && a->ttft_ns == b->ttft_ns && a->tpot_ns == b->tpot_ns &&
           a->window_ns == b->window_ns && a->weight == b->weight && a->on_late == b->on_late &&
           a->max_request_slots == b->max_request_slots && a->default_max_tokens == b->default_max_tokens &&
           a->reserved_slots == b->reserved_slots;
}

int qos_reload(struct qos *q, const char *path, struct qos_reload_report *rep, struct lmd_err *err)
{
    struct qos__conf *oc = qos__conf(q);
    if (!oc->has_file || !path)
        return lmd_err_set(err, LMD_ENOTSUP,
                           "tenants: the server started %s a tenants file; adding or removing one needs a restart",
                           oc->has_file ? "with" : "without");
    struct qos__conf *nc = qos__conf_load(path, NULL, 0, err);
    if (!nc)
        return err ? err->code : LMD_ENOMEM;
    int rc = 0;
    /* The scheduler's queues and targets are the classes': they stay. */
    bool classes_same = nc->n_classes == oc->n_classes && nc->default_class == oc->default_class;
    for (int i = 0; classes_same && i < nc->n_classes; i++)
        classes_same = same_class(&nc->classes[i], &oc->classes[i]);
    if (!classes_same) {
        rc = lmd_err_set(err, LMD_ENOTSUP, "tenants: %s: the service classes changed; a restart applies them", path);
        goto fail;
    }
    /* Tenants keep their indices by name; map the new file's order onto
     * the old one's (slot[new index] = old index). */
    int slot[QOS_MAX_TENANTS];
    bool taken[QOS_MAX_TENANTS] = {false};
    slot[0] = 0;
    taken[0] = true;
    for (int n = 1; n < nc->n_tenants; n++) {
        slot[n] = -1;
        for (int o = 1; o < oc->n_tenants; o++)
            if (strcmp(nc->tenants[n].name, oc->tenants[o].name) == 0)
                slot[n] = o;
        if (slot[n] < 0) {
            rc = lmd_err_set(err, LMD_ENOTSUP, "tenants: %s: tenant '%s' is new; a restart adds it", path,
                             nc->tenants[n].name);
            goto fail;
        }
        taken[slot[n]] = true;
    }
    struct qos_tenant placed[QOS_MAX_TENANTS];
    memset(placed, 0, sizeof placed);
    struct qos_reload_report r = {.n_tenants = oc->n_tenants, .n_keys = nc->n_keys};
    for (int n = 0; n < nc->n_tenants; n++) {
        placed[slot[n]] = nc->tenants[n];
        if (n > 0 && placed[slot[n]].weight != oc->tenants[slot[n]].weight) {
            placed[slot[n]].weight = oc->tenants[slot[n]].weight;
            r.weights_pending++;
        }
    }
    /* A tenant gone from the file: its old settings, no models, no keys. */
    for (int o = 1; o < oc->n_tenants; o++)
        if (!taken[o]) {
            struct qos_tenant *t = &placed[o];
            *t = oc->tenants[o];
            t->all_models = false;
            t->n_models = 0;
            t->models = NULL;
            t->n_keys = 0;
            r.n_disabled++;
        }
    memcpy(nc->tenants, placed, sizeof placed);
    nc->n_tenants = oc->n_tenants;
    for (int k = 0; k < nc->n_keys; k++)
        if (nc->keys[k].tenant >= 0)
            nc->keys[k].tenant = slot[nc->keys[k].tenant];
    nc->prev = oc;
    atomic_store_explicit(&q->conf, nc, memory_order_release);
    q->reloads++;
    if (rep)
        *rep = r;
    return 0;
fail:
    qos__conf_free(nc);
    return rc;
}

bool qos_has_file(const struct qos *q) { return qos__conf(q)->has_file; }
int qos_n_classes(const struct qos *q) { return qos__conf(q)->n_classes; }
int qos_default_class(const struct qos *q) { return qos__conf(q)->default_class; }
int qos_n_tenants(const struct qos *q) { return qos__conf(q)->n_tenants; }

const struct qos_class *qos_class(const struct qos *q, int i)
{
    const struct qos__conf *c = qos__conf(q);
    LMD_ASSERT(i >= 0 && i < c->n_classes, "class index out of range");
    return &c->classes[i];
}

const struct qos_tenant *qos_tenant(const struct qos *q, int i)
{
    const struct qos__conf *c = qos__conf(q);
    LMD_ASSERT(i >= 0 && i < c->n_tenants, "tenant index out of range");
    return &c->tenants[i];
}

int qos__class_find(const struct qos__conf *c, const char *name, size_t len)
{
    if (!name)
        return LMD_ENOENT;
    for (int i = 0; i < c->n_classes; i++)
        if (strlen(c->classes[i].name) == len && memcmp(c->classes[i].name, name, len) == 0)
            return i;
    return LMD_ENOENT;
}

int qos_class_find(const struct qos *q, const char *name, size_t len)
{
    return qos__class_find(qos__conf(q), name, len);
}

bool qos_class_allowed(const struct qos *q, int tenant, int cls)
{
    const struct qos__conf *c = qos__conf(q);
    if (tenant < 0 || tenant >= c->n_tenants || cls < 0 || cls >= c->n_classes)
        return false;
    return (c->tenants[tenant].classes >> cls) & 1u;
}

bool qos_model_allowed(const struct qos *q, int tenant, const char *model, size_t len)
{
    const struct qos__conf *c = qos__conf(q);
    if (tenant < 0 || tenant >= c->n_tenants)
        return false;
    const struct qos_tenant *t = &c->tenants[tenant];
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
    const struct qos__conf *c = qos__conf(q);
    LMD_ASSERT(tenant >= 0 && tenant < c->n_tenants, "tenant index out of range");
    const struct qos_tenant *t = &c->tenants[tenant];
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
