/*
 * The access log: one line per finished HTTP request, at info level,
 * through core/log so that it shares the configured format (text key=value
 * or JSON) and the one-write-per-line guarantee with every other log line.
 * Field names are fixed; a field that does not apply is written as "-" in
 * text and null in JSON, so that every access line has the same keys.
 */
#include "obs/obs_internal.h"

#include "core/log.h"

static struct lmd_log_field str_field(const char *key, const char *v)
{
    return (struct lmd_log_field){.key = key, .type = LMD_LOG_STR, .s = v};
}

static struct lmd_log_field int_field(const char *key, long long v)
{
    return (struct lmd_log_field){.key = key, .type = LMD_LOG_INT, .i = v};
}

/* Durations in seconds; negative means not applicable. */
static struct lmd_log_field secs_field(const char *key, double v)
{
    if (!(v >= 0))
        return (struct lmd_log_field){.key = key, .type = LMD_LOG_NULL};
    return (struct lmd_log_field){.key = key, .type = LMD_LOG_NUM, .d = v};
}

void obs_access_log(const struct obs_access *a)
{
    if (!lmd_log_enabled(LMD_LOG_INFO))
        return;
    /* Class and tenant names are only known once obs_init ran; before that
     * (or for an index out of range) the field reads as not applicable. */
    const char *cls = a->cls >= 0 && a->cls < g_obs.n_classes ? g_obs.classes[a->cls] : NULL;
    const char *tenant = a->tenant >= 0 && a->tenant < g_obs.n_tenants ? g_obs.tenants[a->tenant] : NULL;
    struct lmd_log_field f[] = {
        str_field("id", a->id),
        str_field("method", a->method),
        str_field("path", a->path),
        int_field("status", a->status),
        str_field("class", cls),
        str_field("tenant", tenant),
        str_field("model", a->model),
        int_field("prompt_tokens", a->prompt_tokens),
        int_field("output_tokens", a->output_tokens),
        secs_field("queue_s", a->queue_s),
        secs_field("ttft_s", a->ttft_s),
        secs_field("e2e_s", a->e2e_s),
        str_field("finish", a->finish),
    };
    lmd_log_fields(LMD_LOG_INFO, "access", f, (int)(sizeof f / sizeof f[0]));
}
