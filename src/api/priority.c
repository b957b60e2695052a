/*
 * vLLM's integer `priority` onto lmd's service classes. vLLM takes any
 * integer, lower meaning more urgent, and its clients send 0 when they mean
 * nothing in particular; lmd's classes are a short ordered list. A map of
 * thresholds joins the two, so a client written for vLLM keeps its meaning:
 * 0 lands in the class it would get without the field, and only values the
 * operator chose reach the urgent classes.
 *
 * The class a generation request runs in is chosen here too, from the
 * body's `priority`, the X-Priority and X-SLA headers, or the tenant's
 * default.
 *
 * Not here: what a class name means and which tenant may use it (qos/).
 */
#include "api/api.h"
#include "api/api_int.h"

#include "http/http.h"
#include "qos/qos.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_priority_map_default(struct api_priority_map *m, const struct qos *q)
{
    int last = qos_n_classes(q) - 1;
    m->rules[0] = (struct api_priority_rule){.max = -1, .cls = 0};
    m->rules[1] = (struct api_priority_rule){.max = 0, .cls = API_PRIORITY_TENANT_DEFAULT};
    m->rules[2] = (struct api_priority_rule){.max = INT64_MAX, .cls = last};
    m->n = 3;
}

/* One entry "CLASS" or "CLASS<=N", spaces around either part allowed. */
static int parse_entry(struct api_priority_rule *r, bool *bounded, const char *s, size_t len, const struct qos *q,
                       struct lmd_err *err)
{
    const char *le = NULL;
    for (size_t i = 0; i + 1 < len; i++)
        if (s[i] == '<' && s[i + 1] == '=') {
            le = s + i;
            break;
        }
    const char *name = s, *name_end = le ? le : s + len;
    while (name < name_end && *name == ' ')
        name++;
    while (name_end > name && name_end[-1] == ' ')
        name_end--;
    size_t nl = (size_t)(name_end - name);
    if (nl == 0)
        return lmd_err_set(err, LMD_EINVAL, "entry '%.*s' names no class (CLASS<=N or CLASS)", (int)len, s);
    if (nl == 7 && memcmp(name, "default", 7) == 0) {
        r->cls = API_PRIORITY_TENANT_DEFAULT;
    } else {
        int cls = qos_class_find(q, name, nl);
        if (cls < 0) {
            char known[256];
            size_t o = 0;
            known[0] = 0;
            for (int i = 0; i < qos_n_classes(q) && o < sizeof known; i++)
                o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", i ? ", " : "", qos_class(q, i)->name);
            return lmd_err_set(err, LMD_EINVAL, "unknown service class '%.*s' (classes: %s; or default)", (int)nl, name,
                               known);
        }
        r->cls = cls;
    }
    *bounded = le != NULL;
    r->max = INT64_MAX;
    if (!le)
        return 0;
    char num[32];
    const char *v = le + 2;
    size_t vl = (size_t)(s + len - v);
    while (vl && *v == ' ')
        v++, vl--;
    while (vl && v[vl - 1] == ' ')
        vl--;
    if (vl == 0 || vl >= sizeof num)
        return lmd_err_set(err, LMD_EINVAL, "entry '%.*s': '<=' wants an integer", (int)len, s);
    memcpy(num, v, vl);
    num[vl] = 0;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(num, &end, 10);
    if (*end || errno || num[0] == ' ')
        return lmd_err_set(err, LMD_EINVAL, "entry '%.*s': '%s' is not an integer", (int)len, s, num);
    if (x == INT64_MAX)
        return lmd_err_set(err, LMD_EINVAL, "entry '%.*s': the bound must be below %lld", (int)len, s,
                           (long long)INT64_MAX);
    r->max = x;
    return 0;
}

int api_priority_map_parse(struct api_priority_map *m, const char *spec, const struct qos *q, struct lmd_err *err)
{
    memset(m, 0, sizeof *m);
    const char *p = spec;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (m->n == API_MAX_PRIORITY_RULES)
            return lmd_err_set(err, LMD_EINVAL, "more than %d entries", API_MAX_PRIORITY_RULES);
        struct api_priority_rule *r = &m->rules[m->n];
        bool bounded = false;
        if (parse_entry(r, &bounded, p, len, q, err) != 0)
            return LMD_EINVAL;
        if (m->n > 0 && r->max <= m->rules[m->n - 1].max)
            return lmd_err_set(err, LMD_EINVAL,
                               "entry '%.*s': bounds must increase from left to right (the previous one is %lld)",
                               (int)len, p, (long long)m->rules[m->n - 1].max);
        m->n++;
        if (!comma) {
            if (bounded)
                return lmd_err_set(err, LMD_EINVAL,
                                   "the last entry '%.*s' must have no bound: it takes every priority above the "
                                   "previous bound (e.g. urgent<=-1,default<=0,best_effort)",
                                   (int)len, p);
            return 0;
        }
        if (!bounded)
            return lmd_err_set(err, LMD_EINVAL,
                               "entry '%.*s' has no bound: only the last entry may leave it out (CLASS<=N)", (int)len,
                               p);
        p = comma + 1;
    }
}

int api_priority_map_class(const struct api_priority_map *m, int64_t priority, int tenant_default)
{
    /* A handful of rules: a linear scan is the fastest search there is. */
    for (int i = 0; i < m->n; i++)
        if (priority <= m->rules[i].max)
            return m->rules[i].cls == API_PRIORITY_TENANT_DEFAULT ? tenant_default : m->rules[i].cls;
    return tenant_default; /* unreachable: the last rule's max is INT64_MAX */
}

void api_priority_map_format(const struct api_priority_map *m, const struct qos *q, char *out, size_t cap)
{
    size_t o = 0;
    if (cap)
        out[0] = 0;
    for (int i = 0; i < m->n && o < cap; i++) {
        const struct api_priority_rule *r = &m->rules[i];
        const char *name = r->cls == API_PRIORITY_TENANT_DEFAULT ? "default" : qos_class(q, r->cls)->name;
        if (r->max == INT64_MAX)
            o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", name);
        else
            o += (size_t)snprintf(out + o, cap - o, "%s%s<=%lld", i ? "," : "", name, (long long)r->max);
    }
}

/* ---- the class of a request ------------------------------------------------- */

/* Whether s is an optionally signed decimal integer that fits int64. */
static bool parse_int64(struct http_str s, int64_t *out)
{
    char tmp[24];
    if (s.len == 0 || s.len >= sizeof tmp)
        return false;
    memcpy(tmp, s.ptr, s.len);
    tmp[s.len] = 0;
    if (!((tmp[0] >= '0' && tmp[0] <= '9') || ((tmp[0] == '-' || tmp[0] == '+') && s.len > 1)))
        return false;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(tmp, &end, 10);
    if (*end || errno)
        return false;
    *out = x;
    return true;
}

/* The class a request asked for: the body's `priority` (a class name, or
 * an integer mapped by the priority map), else X-Priority (either form),
 * else X-SLA (a name), else the tenant's default. */
int api_pick_class(struct api *a, struct http_req *r, const struct api_params *p, int tenant, struct api_error *e,
                   enum obs_reject *reason)
{
    const struct qos *q = a->cfg.qos;
    struct qos_refusal why = {0};
    const char *name = p->priority;
    size_t len = p->priority_len;
    const char *from = "priority";
    bool num_set = p->priority_num_set;
    int64_t num = p->priority_num;
    if (!name && !num_set) {
        struct http_str h = http_req_header(r, "x-priority");
        from = "X-Priority";
        /* A class name wins over the number it might also spell. */
        if (h.len && qos_class_find(q, h.ptr, h.len) < 0 && parse_int64(h, &num)) {
            num_set = true;
        } else if (!h.len) {
            h = http_req_header(r, "x-sla");
            from = "X-SLA";
        }
        name = h.len && !num_set ? h.ptr : NULL;
        len = num_set ? 0 : h.len;
    }
    if (num_set) {
        int cls = api_priority_map_class(&a->cfg.priority_map, num, qos_tenant(q, tenant)->default_class);
        if (qos_class_allowed(q, tenant, cls))
            return cls;
        *reason = OBS_R_CLASS;
        return api_error_set(e, 403, "permission_error", from, "class_not_allowed",
                             "%s %lld maps to the service class '%s', which is not allowed for this API key", from,
                             (long long)num, qos_class(q, cls)->name);
    }
    int cls = qos_class_pick(q, tenant, name, len, &why);
    if (cls >= 0)
        return cls;
    *reason = why.reason;
    return api_error_set(e, why.http_status, why.http_status == 403 ? "permission_error" : "invalid_request_error",
                         from, why.http_status == 403 ? "class_not_allowed" : "unknown_priority", "%s", why.message);
}
