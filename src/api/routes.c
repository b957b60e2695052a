/*
 * The routes: health, readiness, models, metrics, and the front half of a
 * generation request — size and drain checks, body validation (params.c),
 * model lookup, prompt building (chat template + tokenizer), the context
 * budget — before call.c takes it to the scheduler. Every answer carries
 * an X-Request-Id.
 *
 * Not here: HTTP mechanics (http/), the life of a generation after
 * submission (call.c), batching (sched/).
 */
#include "api/api.h"
#include "api/api_int.h"

#include "core/log.h"
#include "core/time.h"
#include "http/http.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small responses ---------------------------------------------------- */

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
    char *s = api_error_json(e, &len);
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

static bool str_is(struct http_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

/* ---- metrics and models -------------------------------------------------- */

static void route_metrics(struct api *a, struct http_req *r)
{
    struct sched_stats st;
    sched_stats(a->cfg.sched, &st);
    struct lmd_buf b = {0};
    lmd_buf_printf(&b,
                   "# HELP lmd_http_requests_total HTTP requests received.\n"
                   "# TYPE lmd_http_requests_total counter\nlmd_http_requests_total %llu\n"
                   "# HELP lmd_requests_total Generation requests finished by the scheduler.\n"
                   "# TYPE lmd_requests_total counter\nlmd_requests_total %llu\n"
                   "# HELP lmd_prompt_tokens_total Prompt tokens prefilled.\n"
                   "# TYPE lmd_prompt_tokens_total counter\nlmd_prompt_tokens_total %llu\n"
                   "# HELP lmd_generated_tokens_total Tokens sampled.\n"
                   "# TYPE lmd_generated_tokens_total counter\nlmd_generated_tokens_total %llu\n"
                   "# HELP lmd_engine_steps_total Engine steps.\n"
                   "# TYPE lmd_engine_steps_total counter\nlmd_engine_steps_total %llu\n"
                   "# HELP lmd_requests_running Sequences in the running batch.\n"
                   "# TYPE lmd_requests_running gauge\nlmd_requests_running %d\n"
                   "# HELP lmd_requests_waiting Requests in the waiting queue.\n"
                   "# TYPE lmd_requests_waiting gauge\nlmd_requests_waiting %d\n"
                   "# HELP lmd_kv_blocks_free Free KV-cache blocks.\n"
                   "# TYPE lmd_kv_blocks_free gauge\nlmd_kv_blocks_free %d\n"
                   "# HELP lmd_kv_blocks_total KV-cache blocks.\n"
                   "# TYPE lmd_kv_blocks_total gauge\nlmd_kv_blocks_total %d\n",
                   (unsigned long long)atomic_load(&a->http_requests), (unsigned long long)st.requests_total,
                   (unsigned long long)st.prompt_tokens, (unsigned long long)st.generated_tokens,
                   (unsigned long long)st.steps, st.running, st.waiting, st.kv_blocks_free, st.kv_blocks_total);
    if (!b.ptr)
        send_err(r, 500, "server_error", NULL, NULL, "out of memory");
    else
        http_respond(r, 200, "text/plain; version=0.0.4", b.ptr, b.len, NULL, NULL);
    lmd_buf_free(&b);
}

static json_t *model_object(const struct api *a)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:i}", "id", a->model_id, "object", "model", "created",
                     (json_int_t)a->created, "owned_by", "lmd", "max_model_len", a->cfg.n_ctx);
}

static bool model_matches(const struct api *a, const char *name, size_t len)
{
    return (strlen(a->model_id) == len && memcmp(a->model_id, name, len) == 0) ||
           (strlen(a->file) == len && memcmp(a->file, name, len) == 0) ||
           (strlen(a->stem) == len && memcmp(a->stem, name, len) == 0);
}

/* ---- generation: the front half ------------------------------------------ */

/* The prompt's token ids, from text (completion), a chat (rendered by the
 * template), or ids given in the request. */
static int build_prompt(struct api *a, const struct api_params *p, int32_t **ids, int *n, struct api_error *e)
{
    const int n_vocab = tok_n_vocab(a->cfg.vocab);
    if (p->prompt_ids) {
        for (int i = 0; i < p->n_prompt_ids; i++)
            if (p->prompt_ids[i] >= n_vocab)
                return api_error_set(e, 400, "invalid_request_error", "prompt", NULL,
                                     "prompt token %d is %d, outside the vocabulary of %d", i, p->prompt_ids[i],
                                     n_vocab);
        *ids = malloc((size_t)p->n_prompt_ids * sizeof **ids);
        if (!*ids)
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        memcpy(*ids, p->prompt_ids, (size_t)p->n_prompt_ids * sizeof **ids);
        *n = p->n_prompt_ids;
        return 0;
    }
    struct lmd_err err = {0};
    const char *src = p->prompt;
    size_t len = p->prompt_len;
    char *rendered = NULL;
    if (p->kind == API_CHAT) {
        long need = chat_render((enum chat_family)a->cfg.chat_family, p->msgs, p->n_msgs, NULL, 0, &err);
        if (need < 0)
            return api_error_set(e, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
        rendered = malloc((size_t)need + 1);
        if (!rendered ||
            chat_render((enum chat_family)a->cfg.chat_family, p->msgs, p->n_msgs, rendered, (size_t)need + 1, &err) < 0) {
            free(rendered);
            return api_error_set(e, 500, "server_error", NULL, NULL, "cannot render the chat template");
        }
        src = rendered;
        len = (size_t)need;
    }
    /* Text never tokenizes to more tokens than bytes, plus BOS/EOS. */
    size_t cap = len + 4;
    *ids = malloc(cap * sizeof **ids);
    int64_t k = *ids ? tok_encode(a->cfg.vocab, src, len, true, p->kind == API_CHAT, *ids, cap, &err) : LMD_ENOMEM;
    free(rendered);
    if (k < 0 || (size_t)k > cap) {
        free(*ids);
        *ids = NULL;
        return api_error_set(e, k == LMD_ENOMEM ? 500 : 400, "invalid_request_error", "prompt", NULL,
                             "cannot tokenize the prompt: %s", k == LMD_ENOMEM ? "out of memory" : err.msg);
    }
    *n = (int)k;
    return 0;
}

static void route_generate(struct api *a, struct http_req *r, enum api_kind kind, const char *id)
{
    struct api_error e = {0};
    struct api_params p;
    struct http_str body = http_req_body(r);
    if (body.len > a->cfg.max_body) {
        api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "the body is %zu bytes; the limit is %zu", body.len, a->cfg.max_body);
        api_send_error(r, &e, NULL, NULL);
        return;
    }
    if (atomic_load(&a->draining)) {
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        api_send_error(r, &e, "retry-after", "1");
        return;
    }
    int32_t *ids = NULL;
    int n_prompt = 0;
    if (api_params_parse(&p, kind, body.ptr, body.len, &e) != 0)
        goto fail;
    if (p.model && !model_matches(a, p.model, strlen(p.model))) {
        api_error_set(&e, 404, "not_found_error", "model", "model_not_found",
                      "the model '%s' does not exist; this server serves '%s'", p.model, a->model_id);
        goto fail;
    }
    const int n_vocab = tok_n_vocab(a->cfg.vocab);
    for (int i = 0; i < p.n_bias; i++)
        if (p.bias[i].token >= n_vocab) {
            api_error_set(&e, 400, "invalid_request_error", "logit_bias", NULL,
                          "logit_bias key '%d' is outside the vocabulary (token ids 0 to %d)", p.bias[i].token,
                          n_vocab - 1);
            goto fail;
        }
    if (build_prompt(a, &p, &ids, &n_prompt, &e) != 0)
        goto fail;
    if (n_prompt == 0) {
        api_error_set(&e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt", NULL,
                      "the prompt is empty");
        goto fail;
    }
    const int ctx = a->cfg.n_ctx;
    if (n_prompt >= ctx) {
        api_error_set(&e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt",
                      "context_length_exceeded",
                      "this model's maximum context length is %d tokens; the prompt has %d tokens (%d too many, "
                      "leaving no room to generate)",
                      ctx, n_prompt, n_prompt - ctx + 1);
        goto fail;
    }
    /* Default lengths as OpenAI's: 16 for completions, the rest of the
     * context for chat. A max_tokens past the context is cut to fit. */
    int max_tokens = p.max_tokens > 0 ? p.max_tokens : (kind == API_CHAT ? ctx - n_prompt : 16);
    if (max_tokens > ctx - n_prompt)
        max_tokens = ctx - n_prompt;
    int rc = api_call_submit(a, r, &p, ids, n_prompt, max_tokens, id, &e);
    ids = NULL; /* the call's now, even on failure */
    api_params_free(&p);
    if (rc != 0)
        api_send_error(r, &e, e.status == 503 ? "retry-after" : NULL, e.status == 503 ? "1" : NULL);
    return;
fail:
    free(ids);
    api_params_free(&p);
    api_send_error(r, &e, NULL, NULL);
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

void api_handle(void *ud, struct http_req *r)
{
    struct api *a = ud;
    atomic_fetch_add_explicit(&a->http_requests, 1, memory_order_relaxed);
    struct http_str m = http_req_method(r), path = http_req_path(r);
    bool get = str_is(m, "GET"), post = str_is(m, "POST");
    static const char models_prefix[] = "/v1/models/";
    bool generate = str_is(path, "/v1/completions") || str_is(path, "/v1/chat/completions");
    enum api_kind kind = str_is(path, "/v1/completions") ? API_COMPLETION : API_CHAT;

    /* Every answer, errors included, carries X-Request-Id: the client's own
     * when it sent a sane one, else a fresh id — for generation requests
     * the completion id itself, so one string finds the request in the
     * client's logs, the response body and the server's log. */
    char id[API_ID_MAX];
    snprintf(id, sizeof id, "%s-%llx%04llx", !generate ? "req" : kind == API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)lmd_time_wall_ns(), (unsigned long long)(atomic_fetch_add(&a->seq, 1) & 0xffff));
    struct http_str cid = http_req_header(r, "x-request-id");
    if (request_id_sane(cid)) {
        char own[API_ID_MAX];
        snprintf(own, sizeof own, "%.*s", (int)cid.len, cid.ptr);
        http_req_add_header(r, "x-request-id", own);
    } else {
        http_req_add_header(r, "x-request-id", id);
    }

    if (generate) {
        if (!post) {
            send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use POST for this route");
            return;
        }
        route_generate(a, r, kind, id);
        return;
    }
    bool known = str_is(path, "/health") || str_is(path, "/ready") || str_is(path, "/v1/models") ||
                 str_is(path, "/metrics") ||
                 (path.len > sizeof models_prefix - 1 && memcmp(path.ptr, models_prefix, sizeof models_prefix - 1) == 0);
    if (!known) {
        char msg[160];
        snprintf(msg, sizeof msg, "no route for %.*s %.*s", (int)(m.len > 16 ? 16 : m.len), m.ptr,
                 (int)(path.len > 100 ? 100 : path.len), path.ptr);
        send_err(r, 404, "not_found_error", NULL, "not_found", msg);
        return;
    }
    if (!get) {
        send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use GET for this route");
        return;
    }
    if (str_is(path, "/health")) {
        send_json(r, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
    } else if (str_is(path, "/ready")) {
        bool d = atomic_load(&a->draining);
        send_json(r, d ? 503 : 200, json_pack("{s:s}", "status", d ? "draining" : "ready"), NULL, NULL);
    } else if (str_is(path, "/metrics")) {
        route_metrics(a, r);
    } else if (str_is(path, "/v1/models")) {
        send_json(r, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model_object(a)), NULL, NULL);
    } else {
        const char *mid = path.ptr + sizeof models_prefix - 1;
        size_t len = path.len - (sizeof models_prefix - 1);
        if (model_matches(a, mid, len))
            send_json(r, 200, model_object(a), NULL, NULL);
        else
            send_err(r, 404, "not_found_error", "model", "model_not_found", "no such model");
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

int api_init(struct api **out, const struct api_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    struct api *a = calloc(1, sizeof *a);
    if (!a)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    a->cfg = *cfg;
    const char *slash = strrchr(cfg->model_path, '/');
    a->file = slash ? slash + 1 : cfg->model_path;
    size_t fl = strlen(a->file);
    if (fl > 5 && strcmp(a->file + fl - 5, ".gguf") == 0)
        fl -= 5;
    a->stem = strndup(a->file, fl);
    a->model_id = strdup(cfg->model_name && *cfg->model_name ? cfg->model_name : (a->stem ? a->stem : ""));
    struct lmd_buf b = {0};
    if (a->model_id)
        api_buf_json_escape(&b, a->model_id, strlen(a->model_id));
    a->model_json = b.ptr;
    if (!a->stem || !a->model_id || !a->model_json) {
        api_free(a);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    }
    a->created = (long)(lmd_time_wall_ns() / 1000000000ull);
    *out = a;
    return 0;
}

void api_free(struct api *a)
{
    if (!a)
        return;
    free(a->stem);
    free(a->model_id);
    free(a->model_json);
    free(a);
}

void api_set_draining(struct api *a) { atomic_store(&a->draining, true); }
int api_active(const struct api *a) { return atomic_load(&((struct api *)a)->active); }
const char *api_model_id(const struct api *a) { return a->model_id; }
