/*
 * The routes: health, readiness, models, metrics, and the front half of a
 * generation request — size and drain checks, body validation (params.c),
 * model lookup, the service class — before a prep worker builds its
 * prompt (prep.c: chat template + tokenizer, the context budget) and
 * call.c takes it to the scheduler. Every answer carries an X-Request-Id.
 *
 * Not here: HTTP mechanics (http/), the life of a generation after
 * submission (call.c), batching (sched/).
 */
#include "api/api.h"
#include "api/api_int.h"
#include "api/jinja.h"

#include "core/log.h"
#include "core/time.h"
#include "http/http.h"
#include "obs/obs.h"
#include "qos/qos.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small responses ---------------------------------------------------- */

static bool str_is(struct http_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static void send_json(struct http_req *r, int status, json_t *o, const char *hname, const char *hvalue)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        http_respond(r, 500, "application/json", oom, sizeof oom - 1, NULL, NULL);
        return;
    }
    http_respond(r, status, "application/json", s, strlen(s), hname, hvalue);
    free(s);
}

void api_send_error(struct http_req *r, const struct api_error *e, const char *hname, const char *hvalue)
{
    size_t len = 0;
    /* Anthropic's clients read errors in Anthropic's shape. */
    char *s = str_is(http_req_path(r), "/v1/messages") ? api_messages_error_json(e, &len) : api_error_json(e, &len);
    if (!s) {
        http_respond(r, 500, "text/plain", "out of memory\n", 14, NULL, NULL);
        return;
    }
    http_respond(r, e->status, "application/json", s, len, hname, hvalue);
    free(s);
}

static void send_err(struct http_req *r, int status, const char *type, const char *param, const char *code,
                     const char *msg)
{
    struct api_error e;
    api_error_set(&e, status, type, param, code, "%s", msg);
    api_send_error(r, &e, NULL, NULL);
}

#define PUTS(b, lit) lmd_buf_append((b), (lit), strlen(lit))

/* ---- metrics and models -------------------------------------------------- */

static void route_metrics(struct api *a, struct http_req *r)
{
    (void)a;
    struct lmd_buf b = {0};
    if (obs_render(&b) != 0 || !b.ptr)
        send_err(r, 500, "server_error", NULL, NULL, "out of memory");
    else
        http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", b.ptr, b.len, NULL, NULL);
    lmd_buf_free(&b);
}

/* ---- debug endpoints ------------------------------------------------------- */

/* The value of `key` in a query string (first match), or len 0. */
static struct http_str query_get(struct http_str q, const char *key)
{
    size_t kl = strlen(key);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=')
            return (struct http_str){p + kl + 1, (size_t)(stop - p - kl - 1)};
        p = stop + 1;
    }
    return (struct http_str){"", 0};
}

static void route_debug(struct api *a, struct http_req *r, struct http_str path)
{
    struct http_str auth = http_req_header(r, "authorization");
    if (qos_has_file(a->cfg.qos) && !qos_is_admin(a->cfg.qos, auth.len ? auth.ptr : NULL, auth.len)) {
        bool tenant = qos_authenticate(a->cfg.qos, auth.len ? auth.ptr : NULL, auth.len) >= 0;
        struct api_error e;
        api_error_set(&e, tenant ? 403 : 401, "invalid_request_error", NULL, tenant ? "admin_only" : "invalid_api_key",
                      tenant ? "the debug endpoints need an admin key"
                             : "the debug endpoints need an admin key "
                               "(Authorization: Bearer KEY)");
        api_send_error(r, &e, tenant ? NULL : "www-authenticate", tenant ? NULL : "Bearer");
        return;
    }
    struct lmd_buf b = {0};
    int rc;
    if (str_is(path, "/debug/requests")) {
        rc = api_calls_render(a, &b);
    } else {
        double seconds = 10;
        struct http_str v = query_get(http_req_query(r), "seconds");
        if (v.len) {
            char tmp[32];
            char *endp;
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v.len < 31 ? v.len : 31), v.ptr);
            seconds = strtod(tmp, &endp);
            if (endp == tmp || *endp || !(seconds > 0 && seconds <= 3600)) {
                send_err(r, 400, "invalid_request_error", "seconds", NULL,
                         "'seconds' must be a number of seconds in (0, 3600]");
                return;
            }
        }
        rc = obs_trace_render(&b, seconds);
    }
    if (rc != 0 || !b.ptr)
        send_err(r, 500, "server_error", NULL, NULL, "out of memory");
    else
        http_respond(r, 200, "application/json", b.ptr, b.len, NULL, NULL);
    lmd_buf_free(&b);
}

/* A model as /v1/models shows it: OpenAI's fields, the context length
 * under the names clients look for (vLLM's max_model_len, the
 * context_length of LM Studio and OpenRouter, and llama-server's meta),
 * the other names it answers to, what the GGUF says about it, and how
 * many requests it runs at once. */
static json_t *model_object(const struct api *a, const struct api__model *am)
{
    const struct api_model *m = &am->m;
    json_t *aliases = json_array(), *meta = json_object();
    for (int i = 0; aliases && i < m->n_aliases; i++)
        json_array_append_new(aliases, json_string(m->aliases[i]));
    if (meta) {
        if (m->display_name)
            json_object_set_new(meta, "general_name", json_string(m->display_name));
        if (m->arch)
            json_object_set_new(meta, "architecture", json_string(m->arch));
        json_object_set_new(meta, "engine", json_string(m->engine ? m->engine : "native"));
    }
    json_t *lmeta = m->vocab ? json_pack("{s:i, s:i}", "n_ctx", m->n_ctx, "n_vocab", tok_n_vocab(m->vocab))
                             : json_pack("{s:i}", "n_ctx", m->n_ctx);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:i, s:i, s:o*, s:o*, s:o*}", "id", m->id, "object", "model", "created",
                          (json_int_t)a->created, "owned_by", m->owned_by ? m->owned_by : "lmd", "max_model_len",
                          m->n_ctx, "context_length", m->n_ctx, "aliases", aliases, "metadata", meta, "meta", lmeta);
    /* How many requests it runs at once: a gateway in front of this
     * server takes that many and keeps the rest in its own queue. */
    if (o && m->sched)
        json_object_set_new(o, "max_running", json_integer(sched_max_running(m->sched)));
    return o;
}

static bool name_is(const char *s, const char *name, size_t len) { return strlen(s) == len && !memcmp(s, name, len); }

int api_model_find(const struct api *a, const char *name, size_t len)
{
    for (int i = 0; i < a->n_models; i++)
        if (name_is(a->models[i].m.id, name, len))
            return i;
    for (int i = 0; i < a->n_models; i++)
        for (int k = 0; k < a->models[i].m.n_aliases; k++)
            if (name_is(a->models[i].m.aliases[k], name, len))
                return i;
    return -1;
}

/* A tenant's model list may name a model by its id or any alias. */
bool api_model_allowed(const struct qos *q, int tenant, const struct api_model *m)
{
    if (qos_model_allowed(q, tenant, m->id, strlen(m->id)))
        return true;
    for (int k = 0; k < m->n_aliases; k++)
        if (qos_model_allowed(q, tenant, m->aliases[k], strlen(m->aliases[k])))
            return true;
    return false;
}

/* "'a', 'b' and 'c'" for messages, cut short past a few hundred bytes. */
static void model_list(const struct api *a, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < a->n_models && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s'%s'",
                              i == 0                 ? ""
                              : i + 1 == a->n_models ? " and "
                                                     : ", ",
                              a->models[i].m.id);
}

/* ---- generation: the front half ------------------------------------------ */

void api_log_refusal(struct api *a, struct http_req *r, const char *id, int status, const struct api__model *m, int cls,
                     int tenant)
{
    (void)a;
    struct http_str path = http_req_path(r);
    char p[64];
    snprintf(p, sizeof p, "%.*s", (int)(path.len < 63 ? path.len : 63), path.ptr);
    obs_request_done(obs_status_of(status), m ? m->index : -1, cls, tenant);
    struct obs_access acc = {
        .id = id,
        .method = "POST",
        .path = p,
        .status = status,
        .cls = cls,
        .tenant = tenant,
        .model = m ? m->m.id : NULL,
        .queue_s = -1,
        .ttft_s = -1,
        .e2e_s = -1,
    };
    obs_access_log(&acc);
}

/* The access line of a request that is not a generation: no tenant, class
 * or model, the status answered. */
static void log_route(struct http_req *r, const char *rid, struct http_str method, struct http_str path)
{
    char mth[17], p[64];
    snprintf(mth, sizeof mth, "%.*s", (int)(method.len < 16 ? method.len : 16), method.ptr);
    snprintf(p, sizeof p, "%.*s", (int)(path.len < 63 ? path.len : 63), path.ptr);
    struct obs_access acc = {
        .id = rid,
        .method = mth,
        .path = p,
        .status = http_req_status(r),
        .cls = -1,
        .tenant = -1,
        .queue_s = -1,
        .ttft_s = -1,
        .e2e_s = -1,
    };
    obs_access_log(&acc);
}

static const char *refusal_code(enum obs_reject why)
{
    switch (why) {
    case OBS_R_RATE_REQUESTS:
    case OBS_R_RATE_TOKENS:
        return "rate_limit_exceeded";
    case OBS_R_TENANT_CONCURRENCY:
        return "concurrency_limit_exceeded";
    case OBS_R_TENANT_QUEUE:
        return "tenant_queue_full";
    case OBS_R_QUEUE_FULL:
        return "queue_full";
    case OBS_R_DEADLINE:
        return "deadline_unmeetable";
    default:
        return "request_too_large";
    }
}

/* The tenant whose key the request carries (0 in open mode); -1 after
 * counting the refusal and filling e with the 401 to send, along with a
 * WWW-Authenticate: Bearer header. Every /v1 route asks. */
static int authenticate(struct api *a, struct http_req *r, struct api_error *e)
{
    struct http_str auth = http_req_header(r, "authorization");
    /* Anthropic's clients send the key as X-Api-Key: the same key, asked
     * as a bearer key. One longer than any sane key is left unmatched. */
    char bearer[512];
    struct http_str xkey = http_req_header(r, "x-api-key");
    if (!auth.len && xkey.len && xkey.len < sizeof bearer - 7) {
        memcpy(bearer, "Bearer ", 7);
        memcpy(bearer + 7, xkey.ptr, xkey.len);
        auth = (struct http_str){bearer, xkey.len + 7};
    }
    int tenant = qos_authenticate(a->cfg.qos, auth.len ? auth.ptr : NULL, auth.len);
    if (tenant >= 0)
        return tenant;
    obs_reject(OBS_R_UNAUTHORIZED, -1);
    api_error_set(e, 401, "invalid_request_error", NULL, "invalid_api_key",
                  auth.len ? "the API key is not valid" : "an API key is required (Authorization: Bearer KEY)");
    return -1;
}

/* The admission refusal of qos_admit as an API error (and its Retry-After). */
static void admit_error(struct api_error *e, const struct qos_refusal *why, char *retry, size_t retry_cap,
                        const char **hname, const char **hvalue)
{
    api_error_set(e, why->http_status,
                  why->http_status == 429   ? "rate_limit_error"
                  : why->http_status == 503 ? "server_error"
                                            : "invalid_request_error",
                  NULL, refusal_code(why->reason), "%s", why->message);
    if (why->retry_after_s) {
        snprintf(retry, retry_cap, "%u", why->retry_after_s);
        *hname = "retry-after";
        *hvalue = retry;
    }
}

void api_admit_error(struct api_error *e, const struct qos_refusal *why, char *retry, size_t retry_cap,
                     const char **hname, const char **hvalue)
{
    admit_error(e, why, retry, retry_cap, hname, hvalue);
}

int api__check_body(struct api *a, struct http_req *r, int tenant, struct api_error *e, const char **hname,
                    const char **hvalue)
{
    struct http_str body = http_req_body(r);
    if (body.len > a->cfg.max_body) {
        api_error_set(e, 413, "invalid_request_error", NULL, "request_too_large",
                      "the body is %zu bytes; the limit is %zu", body.len, a->cfg.max_body);
        return -1;
    }
    if (atomic_load(&a->draining)) {
        obs_reject(OBS_R_DRAINING, tenant);
        api_error_set(e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        *hname = "retry-after";
        *hvalue = "1";
        return -1;
    }
    return 0;
}

/* A request for a model whose engine forwards API requests (a remote
 * pool): no template or tokenizer here. The body goes on as lmd validated
 * it, less what lmd itself acts on (model, stream and its options, n —
 * every choice is a request of its own — and the service class); the
 * prompt's size is estimated for admission (about 4 bytes a token) and the
 * upstream's usage settles the account. */
static void forward_generate(struct api *a, struct http_req *r, struct api_params *p, const struct api__model *m,
                             const char *id, const char *rid, struct api_who *who)
{
    struct api_error e = {0};
    const char *hname = NULL, *hvalue = NULL;
    char retry[16];
    json_t *body = NULL;
    if (p->logprobs >= 0 || p->echo) {
        api_error_set(&e, 400, "invalid_request_error", p->echo ? "echo" : "logprobs", "unsupported_parameter",
                      "'%s' is not available for model '%s': its engine forwards requests to upstream servers, "
                      "and lmd does not pass %s through yet",
                      p->echo ? "echo" : "logprobs", m->m.id, p->echo ? "echoed prompts" : "log-probabilities");
        goto fail;
    }
    /* The parsed body itself goes on (no copy: the strings p points at are
     * untouched; only top-level keys lmd acts on are taken out). */
    body = json_incref((json_t *)p->doc);
    static const char *const drop[] = {"model", "stream", "stream_options", "n", "priority"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        json_object_del(body, drop[i]);
    /* What goes upstream is the client's own bytes, less those members: a
     * prompt of megabytes is copied, not serialized again. */
    struct http_str raw = http_req_body(r);
    struct lmd_buf sp = {0};
    if (api_json_splice(&sp, raw.ptr, raw.len, drop, (int)(sizeof drop / sizeof drop[0])) != 0) {
        lmd_buf_free(&sp);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    /* A request that names no length: OpenAI's default for completions
     * (16), which some servers do not share (llama-server's is unbounded),
     * and for chat the upstream's own; the class's default_max_tokens
     * bounds either, as it does for local models. */
    int dflt = p->kind == API_COMPLETION ? 16 : 0;
    const int class_max = qos_class(a->cfg.qos, who->cls)->default_max_tokens;
    if (class_max > 0 && (dflt == 0 || dflt > class_max))
        dflt = class_max;
    if (p->max_tokens <= 0 && dflt > 0) {
        json_object_set_new(body, "max_tokens", json_integer(dflt));
        lmd_buf_printf(&sp, "%s\"max_tokens\":%d", sp.len > 1 ? "," : "", dflt);
    }
    if (!sp.ptr) {
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    size_t bytes = 0;
    if (p->prompt_ids)
        bytes = (size_t)p->n_prompt_ids * 4;
    else if (p->kind == API_CHAT)
        for (int i = 0; i < p->n_msgs; i++)
            bytes += p->msgs[i].content_len + 8;
    else
        bytes = p->prompt_len;
    const int ctx = m->m.n_ctx;
    long est = (long)(bytes + 3) / 4;
    if (est < 1)
        est = 1;
    if (est >= ctx)
        est = ctx - 1;
    int max_tokens = p->max_tokens > 0 ? p->max_tokens : dflt > 0 ? dflt : ctx - (int)est;
    if (max_tokens > ctx - est)
        max_tokens = ctx - (int)est; /* the budget only: the upstream enforces its own context */
    struct qos_refusal why = {0};
    int64_t charge = est + (int64_t)max_tokens * p->n;
    if (qos_admit(a->cfg.qos, who->tenant, who->cls, charge, lmd_time_mono_ns(), &who->ticket, &why) != 0) {
        obs_reject(why.reason, who->tenant);
        admit_error(&e, &why, retry, sizeof retry, &hname, &hvalue);
        goto fail;
    }
    int rc = api_call_forward(a, m, r, p, body, sp.ptr, sp.len, (int)est, max_tokens, id, who, &e);
    body = NULL; /* the call's now, and so is sp */
    if (rc != 0) {
        api_log_refusal(a, r, rid, e.status, m, who->cls, who->tenant);
        api_send_error(r, &e, e.status == 503 ? "retry-after" : NULL, e.status == 503 ? "1" : NULL);
    }
    return;
fail:
    json_decref(body);
    api_log_refusal(a, r, rid, e.status, m, who->cls, who->tenant);
    api_send_error(r, &e, hname, hvalue);
}

static void route_generate(struct api *a, struct http_req *r, enum api_kind kind, enum api_dialect dialect,
                           const char *id, const char *rid)
{
    struct api_error e = {0};
    struct api_params p;
    struct qos *q = a->cfg.qos;
    struct api_who who = {.tenant = 0, .cls = qos_default_class(q), .t_arrival_ns = lmd_time_mono_ns()};
    snprintf(who.rid, sizeof who.rid, "%s", rid);
    const struct api__model *m = NULL; /* the model it routes to, once known */
    const char *hname = NULL, *hvalue = NULL;
    memset(&p, 0, sizeof p);

    /* Who is asking comes first: an unknown caller learns nothing else. */
    int tenant = authenticate(a, r, &e);
    if (tenant < 0) {
        hname = "www-authenticate";
        hvalue = "Bearer";
        goto fail;
    }
    who.tenant = tenant;
    who.cls = qos_tenant(q, tenant)->default_class;
    if (api__check_body(a, r, tenant, &e, &hname, &hvalue) != 0)
        goto fail;
    struct http_str body = http_req_body(r);
    if (dialect != API_DIALECT_OPENAI) {
        /* Responses and Messages run as the chat request they mean. */
        char *chat = NULL, *echo = NULL;
        int trc = dialect == API_DIALECT_RESPONSES ? api_responses_translate(body.ptr, body.len, &chat, &echo, &e)
                                                   : api_messages_translate(body.ptr, body.len, &chat, &echo, &e);
        if (trc == 0 && api_params_parse(&p, API_CHAT, chat, strlen(chat), &e) != 0)
            trc = LMD_EINVAL;
        free(chat);
        if (trc != 0) {
            free(echo);
            goto fail;
        }
        p.dialect = dialect;
        p.echo_json = echo;
    } else if (api_params_parse(&p, kind, body.ptr, body.len, &e) != 0) {
        goto fail;
    }
    /* Route by `model`: with one model it may be left out. */
    if (p.model || a->n_models > 1) {
        int mi = p.model ? api_model_find(a, p.model, strlen(p.model)) : -1;
        if (mi < 0) {
            char names[256];
            model_list(a, names, sizeof names);
            if (!p.model)
                api_error_set(&e, 400, "invalid_request_error", "model", "model_required",
                              "'model' is required: this server serves %d models (%s)", a->n_models, names);
            else
                api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                              "the model '%.128s' does not exist; this server serves %s", p.model, names);
            goto fail;
        }
        m = &a->models[mi];
    } else {
        m = &a->models[0];
    }
    if (!api_model_allowed(q, tenant, &m->m)) {
        obs_reject(OBS_R_MODEL, tenant);
        api_error_set(&e, 403, "permission_error", "model", "model_not_allowed",
                      "the model '%s' is not allowed for this API key", m->m.id);
        goto fail;
    }
    enum obs_reject reason = OBS_R__N;
    int cls = api_pick_class(a, r, &p, tenant, &e, &reason);
    if (cls < 0) {
        obs_reject(reason, tenant);
        goto fail;
    }
    who.cls = cls;
    if (m->m.forwards && dialect != API_DIALECT_OPENAI) {
        api_error_set(&e, 400, "invalid_request_error", "model", "unsupported_parameter",
                      "'%s' is not available for model '%s': its engine forwards chat completions to upstream "
                      "servers; use /v1/chat/completions",
                      dialect == API_DIALECT_RESPONSES ? "/v1/responses" : "/v1/messages", m->m.id);
        goto fail;
    }
    if (m->m.forwards) {
        /* response_format goes upstream in the body, where the upstream
         * enforces it; a llama.cpp grammar only some upstreams know. */
        if (p.grammar_text) {
            api_error_set(&e, 400, "invalid_request_error", "grammar", "unsupported_parameter",
                          "'grammar' is not available for model '%s': its engine forwards requests to upstream "
                          "servers, which do not all honour it; use 'response_format'",
                          m->m.id);
            goto fail;
        }
        forward_generate(a, r, &p, m, id, rid, &who);
        api_params_free(&p);
        return;
    }
    /* Extensions an upstream may implement pass through to it (above);
     * this engine refuses those it does not. */
    if (api_fields_refuse(p.doc, kind, &e) != 0)
        goto fail;
    const int n_vocab = tok_n_vocab(m->m.vocab);
    for (int i = 0; i < p.n_bias; i++)
        if (p.bias[i].token >= n_vocab) {
            api_error_set(&e, 400, "invalid_request_error", "logit_bias", NULL,
                          "logit_bias key '%d' is outside the vocabulary (token ids 0 to %d)", p.bias[i].token,
                          n_vocab - 1);
            goto fail;
        }
    /* The rest — grammar, template, tokenizer, then admission — runs
     * through a prep worker and back (prep.c): it costs time in
     * proportion to the request, which this thread must not spend. */
    api__prep_generate(a, r, m, &p, id, &who);
    return;
fail:
    api_params_free(&p);
    /* One model: every refusal is that model's, as it was before routing. */
    if (!m && a->n_models == 1)
        m = &a->models[0];
    api_log_refusal(a, r, rid, e.status, m, who.cls, tenant < 0 ? -1 : who.tenant);
    api_send_error(r, &e, hname, hvalue);
}

/* ---- the router --------------------------------------------------------- */

/* A client's X-Request-Id is echoed only if it is short and plain, so it
 * is safe in logs and headers. */
static bool request_id_sane(struct http_str s)
{
    if (s.len == 0 || s.len > 64)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char ch = s.ptr[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Paths as long as the router looks at; longer ones are no route of ours
 * with or without the prefix. */
#define API_ROUTE_MAX 320

/* /completions, /chat/completions, /responses, /embeddings, /models and /models/ID. */
static bool is_unprefixed_openai(struct http_str p)
{
    static const char models[] = "/models/";
    return str_is(p, "/completions") || str_is(p, "/chat/completions") || str_is(p, "/responses") ||
           str_is(p, "/embeddings") || str_is(p, "/models") ||
           (p.len > sizeof models - 1 && memcmp(p.ptr, models, sizeof models - 1) == 0);
}

/* The front of the POST routes outside generation (/v1/embeddings,
 * /tokenize, /detokenize): the tenant whose key the request carries, or -1
 * having answered 405 for another method or 401 for a bad key, and logged
 * the request's access line. */
static int post_tenant(struct api *a, struct http_req *r, const char *rid)
{
    struct http_str m = http_req_method(r);
    bool post = str_is(m, "POST");
    struct api_error e;
    int tenant = post ? authenticate(a, r, &e) : -1;
    if (!post)
        send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use POST for this route");
    else if (tenant < 0)
        api_send_error(r, &e, "www-authenticate", "Bearer");
    if (tenant < 0)
        log_route(r, rid, m, http_req_path(r));
    return tenant;
}

void api_handle(void *ud, struct http_req *r)
{
    struct api *a = ud;
    obs_count(OBS_C_HTTP_REQUESTS, 1);
    struct http_str m = http_req_method(r), real_path = http_req_path(r);
    /* The OpenAI routes answer without their /v1 prefix too, as vLLM's and
     * llama-server's do, for clients configured with a bare base URL. From
     * here on they are one route (keys, errors, metrics); the access log
     * keeps the path as asked. */
    char v1[API_ROUTE_MAX];
    struct http_str path = real_path;
    if (is_unprefixed_openai(real_path) && real_path.len + 3 < sizeof v1) {
        memcpy(v1, "/v1", 3);
        memcpy(v1 + 3, real_path.ptr, real_path.len);
        path = (struct http_str){v1, real_path.len + 3};
    }
    bool get = str_is(m, "GET"), post = str_is(m, "POST");
    static const char models_prefix[] = "/v1/models/";
    enum api_dialect dialect = str_is(path, "/v1/responses")  ? API_DIALECT_RESPONSES
                               : str_is(path, "/v1/messages") ? API_DIALECT_MESSAGES
                                                              : API_DIALECT_OPENAI;
    bool generate =
        str_is(path, "/v1/completions") || str_is(path, "/v1/chat/completions") || dialect != API_DIALECT_OPENAI;
    enum api_kind kind = str_is(path, "/v1/completions") ? API_COMPLETION : API_CHAT;

    /* Every answer, errors included, carries X-Request-Id: the client's own
     * when it sent a sane one, else a fresh id — for generation requests
     * the completion id itself, so one string finds the request in the
     * client's logs, the response body and the server's log. */
    char id[API_ID_MAX];
    snprintf(id, sizeof id, "%s%llx%04llx",
             !generate                          ? "req-"
             : dialect == API_DIALECT_RESPONSES ? "resp_"
             : dialect == API_DIALECT_MESSAGES  ? "msg_"
             : kind == API_CHAT                 ? "chatcmpl-"
                                                : "cmpl-",
             (unsigned long long)lmd_time_wall_ns(), (unsigned long long)(atomic_fetch_add(&a->seq, 1) & 0xffff));
    struct http_str cid = http_req_header(r, "x-request-id");
    char rid[API_ID_MAX];
    if (request_id_sane(cid))
        snprintf(rid, sizeof rid, "%.*s", (int)cid.len, cid.ptr);
    else
        snprintf(rid, sizeof rid, "%s", id);
    http_req_add_header(r, "x-request-id", rid);

    const char *framing = http_req_framing_error(r);
    if (framing) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request's framing is ambiguous: %s", framing);
        send_err(r, 400, "invalid_request_error", NULL, "bad_framing", msg);
        log_route(r, rid, m, real_path);
        return;
    }
    if (generate) {
        if (!post) {
            send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use POST for this route");
            log_route(r, rid, m, real_path);
            return;
        }
        route_generate(a, r, kind, dialect, id, rid);
        return;
    }
    if (str_is(path, "/v1/embeddings")) {
        int tenant = post_tenant(a, r, rid);
        if (tenant >= 0)
            api_embd_route(a, r, tenant, rid); /* it logs its access line */
        return;
    }
    if (str_is(path, "/tokenize") || str_is(path, "/detokenize")) {
        int tenant = post_tenant(a, r, rid);
        if (tenant >= 0)
            api_tok_route(a, r, path.ptr[1] == 'd', tenant, rid); /* it logs its access line */
        return;
    }
    bool debug = a->cfg.debug_endpoints && (str_is(path, "/debug/requests") || str_is(path, "/debug/trace"));
    bool known =
        str_is(path, "/health") || str_is(path, "/ready") || str_is(path, "/v1/models") || str_is(path, "/metrics") ||
        debug ||
        (path.len > sizeof models_prefix - 1 && memcmp(path.ptr, models_prefix, sizeof models_prefix - 1) == 0);
    if (!known) {
        char msg[160];
        snprintf(msg, sizeof msg, "no route for %.*s %.*s", (int)(m.len > 16 ? 16 : m.len), m.ptr,
                 (int)(path.len > 100 ? 100 : path.len), path.ptr);
        send_err(r, 404, "not_found_error", NULL, "not_found", msg);
        goto log;
    }
    if (!get) {
        send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use GET for this route");
        goto log;
    }
    struct api_error e;
    if (debug) {
        route_debug(a, r, path);
    } else if (path.len >= 3 && memcmp(path.ptr, "/v1", 3) == 0 && authenticate(a, r, &e) < 0) {
        api_send_error(r, &e, "www-authenticate", "Bearer");
    } else if (str_is(path, "/health")) {
        send_json(r, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
    } else if (str_is(path, "/ready")) {
        bool d = atomic_load(&a->draining);
        send_json(r, d ? 503 : 200, json_pack("{s:s}", "status", d ? "draining" : "ready"), NULL, NULL);
    } else if (str_is(path, "/metrics")) {
        if (obs_enabled())
            route_metrics(a, r);
        else
            send_err(r, 404, "not_found_error", NULL, "not_found", "metrics are off (--no-metrics)");
    } else if (str_is(path, "/v1/models")) {
        json_t *data = json_array();
        for (int i = 0; data && i < a->n_models; i++)
            json_array_append_new(data, model_object(a, &a->models[i]));
        send_json(r, 200, json_pack("{s:s, s:o*}", "object", "list", "data", data), NULL, NULL);
    } else {
        const char *mid = path.ptr + sizeof models_prefix - 1;
        size_t len = path.len - (sizeof models_prefix - 1);
        int mi = api_model_find(a, mid, len);
        if (mi >= 0)
            send_json(r, 200, model_object(a, &a->models[mi]), NULL, NULL);
        else
            send_err(r, 404, "invalid_request_error", "model", "model_not_found", "no such model");
    }
log:
    /* Every request gets its access line, these routes too (generation
     * requests log theirs when they end). */
    log_route(r, rid, m, real_path);
}

/* ---- lifecycle ------------------------------------------------------------ */

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    *oom |= !d;
    return d;
}

int api_init(struct api **out, const struct api_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    if (cfg->n_models < 1 || cfg->n_models > API_MAX_MODELS)
        return lmd_err_set(err, LMD_EINVAL, "api: %d models (1 to %d)", cfg->n_models, API_MAX_MODELS);
    struct api *a = calloc(1, sizeof *a);
    if (!a)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    a->cfg = *cfg;
    a->cfg.models = NULL;
    pthread_mutex_init(&a->live_mu, NULL);
    a->models = calloc((size_t)cfg->n_models, sizeof *a->models);
    bool oom = !a->models;
    for (int i = 0; !oom && i < cfg->n_models; i++) {
        const struct api_model *src = &cfg->models[i];
        struct api__model *am = &a->models[i];
        a->n_models = i + 1; /* api_free sees what is built so far */
        am->m = *src;
        am->index = i;
        am->names = calloc((size_t)src->n_aliases + 1, sizeof *am->names);
        if (!am->names) {
            oom = true;
            break;
        }
        for (int k = 0; k <= src->n_aliases; k++)
            am->names[k] = dup_or_null(k == 0 ? src->id : src->aliases[k - 1], &oom);
        am->m.id = am->names[0];
        am->m.aliases = (const char *const *)am->names + 1;
        const char **strs[] = {&am->m.display_name, &am->m.arch, &am->m.engine, &am->m.owned_by};
        for (int k = 0; k < 4; k++)
            *strs[k] = am->strs[k] = dup_or_null(*strs[k], &oom);
        struct lmd_buf b = {0};
        if (am->m.id)
            api_buf_json_escape(&b, am->m.id, strlen(am->m.id));
        am->id_json = b.ptr;
        oom |= !am->id_json;
        size_t tl = 0;
        am->tool_syntax = src->chat_jinja ? api_tools_detect(jinja_source(src->chat_jinja, &tl), tl) : API_TOOLS_NONE;
    }
    if (oom) {
        api_free(a);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    }
    if (a->cfg.priority_map.n == 0 && cfg->qos)
        api_priority_map_default(&a->cfg.priority_map, cfg->qos);
    a->created = (long)(lmd_time_wall_ns() / 1000000000ull);
    int rc = api_prep_start(a, cfg->prep_threads, err);
    if (rc != 0) {
        api_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void api_free(struct api *a)
{
    if (!a)
        return;
    api_prep_stop(a);
    for (int i = 0; i < a->n_models; i++) {
        struct api__model *am = &a->models[i];
        for (int k = 0; am->names && k <= am->m.n_aliases; k++)
            free(am->names[k]);
        free(am->names);
        for (int k = 0; k < 4; k++)
            free(am->strs[k]);
        free(am->id_json);
    }
    free(a->models);
    pthread_mutex_destroy(&a->live_mu);
    free(a);
}

void api_set_draining(struct api *a) { atomic_store(&a->draining, true); }
int api_active(const struct api *a) { return atomic_load(&((struct api *)a)->active); }
