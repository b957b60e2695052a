/*
 * The routes and the life of a generation request on its I/O thread:
 * validate, build the prompt, submit to the scheduler, then — each time the
 * engine thread reports new tokens — detokenize, hold back text that may
 * be the start of a stop string, and write SSE chunks or, at the end, the
 * whole JSON response.
 *
 * Not here: HTTP mechanics (http/), batching (sched/), body parsing
 * (params.c).
 *
 * A call (struct api_call) is shared with the engine thread through its
 * sched_req reference count: one reference for the HTTP side (dropped when
 * the request is disposed), one for the scheduler (dropped when it
 * finishes the sequence), one per queued wakeup task.
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

struct api {
    struct api_config cfg;
    char *model_id;       /* general.name or the file stem */
    const char *file;     /* base name of the model path */
    char *stem;           /* file name without .gguf */
    char *model_json;     /* model_id escaped for JSON strings */
    long created;         /* s, start-up time, for /v1/models */
    _Atomic bool draining;
    _Atomic int active;
    _Atomic uint64_t http_requests, seq;
};

struct api_call {
    struct sched_req sr; /* first: notify/release get this */
    struct http_task task;
    struct api *api;
    struct http_req *http; /* NULL once the request is disposed */
    struct http_loop *loop;
    enum api_kind kind;
    bool stream, include_usage;
    bool done;         /* the response is complete */
    bool stop_matched; /* a stop string ended the text */
    char id[48];
    long created; /* s */
    const char *stop[API_MAX_STOP];
    size_t stop_len[API_MAX_STOP];
    int n_stop;
    int cursor; /* output tokens consumed */
    uint64_t t_start, t_first; /* ns, monotonic: accepted, first token seen */
    struct tok_detok dt;
    char *piece; /* [piece_cap] one detokenized push */
    size_t piece_cap;
    struct lmd_buf pending; /* text not yet emitted (may start a stop string) */
    struct lmd_buf text;    /* non-streamed: all emitted text */
    struct lmd_buf chunk;   /* streamed: the SSE bytes of this wakeup, reused */
    char *stop_mem;         /* the stop strings' bytes */
    int32_t *ids;           /* [n_prompt + max_tokens]: prompt, then output */
};

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

static void send_error(struct http_req *r, const struct api_error *e, const char *hname, const char *hvalue)
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
    send_error(r, &e, NULL, NULL);
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

/* ---- generation: the I/O side -------------------------------------------- */

static const char *finish_name(const struct api_call *c)
{
    if (c->stop_matched)
        return "stop";
    switch (atomic_load(&c->sr.finish)) {
    case SCHED_FINISH_LENGTH: return "length";
    default: return "stop";
    }
}

/* The fixed start of every SSE chunk of this call. */
static void chunk_head(struct api_call *c, struct lmd_buf *b)
{
    lmd_buf_printf(b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":", c->id,
                   c->kind == API_CHAT ? "chat.completion.chunk" : "text_completion", c->created,
                   c->api->model_json);
}

/* Text that is certain (no stop string can begin in it) leaves here: as an
 * SSE chunk, or into the whole-response buffer. */
static void emit_text(struct api_call *c, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (!c->stream) {
        lmd_buf_append(&c->text, s, n);
        return;
    }
    chunk_head(c, &c->chunk);
    PUTS(&c->chunk, c->kind == API_CHAT ? "[{\"index\":0,\"delta\":{\"content\":\"" : "[{\"index\":0,\"text\":\"");
    api_buf_json_escape(&c->chunk, s, n);
    PUTS(&c->chunk, c->kind == API_CHAT ? "\"},\"logprobs\":null,\"finish_reason\":null}]"
                                        : "\",\"logprobs\":null,\"finish_reason\":null}]");
    if (c->include_usage)
        PUTS(&c->chunk, ",\"usage\":null");
    PUTS(&c->chunk, "}\n\n");
}

static void send_final(struct api_call *c)
{
    int n_prompt = c->sr.n_prompt, n_gen = c->cursor;
    if (c->stream) {
        chunk_head(c, &c->chunk);
        lmd_buf_printf(&c->chunk, "[{\"index\":0,%s,\"logprobs\":null,\"finish_reason\":\"%s\"}]",
                       c->kind == API_CHAT ? "\"delta\":{}" : "\"text\":\"\"", finish_name(c));
        if (c->include_usage)
            PUTS(&c->chunk, ",\"usage\":null");
        PUTS(&c->chunk, "}\n\n");
        if (c->include_usage) {
            chunk_head(c, &c->chunk);
            lmd_buf_printf(&c->chunk,
                           "[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
                           n_prompt, n_gen, n_prompt + n_gen);
        }
        PUTS(&c->chunk, "data: [DONE]\n\n");
        return;
    }
    json_t *choice;
    json_t *text = json_stringn(c->text.ptr ? c->text.ptr : "", c->text.len);
    if (c->kind == API_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:n, s:s}", "index", 0, "message", "role", "assistant", "content",
                           text, "logprobs", "finish_reason", finish_name(c));
    else
        choice = json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "text", text, "logprobs", "finish_reason",
                           finish_name(c));
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:{s:i, s:i, s:i}}", "id", c->id, "object",
                          c->kind == API_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)c->created, "model", c->api->model_id, "choices", choice, "usage",
                          "prompt_tokens", n_prompt, "completion_tokens", n_gen, "total_tokens", n_prompt + n_gen);
    send_json(c->http, 200, o, NULL, NULL);
}

/* Runs on the I/O thread after the engine thread reported progress:
 * consume new tokens, match stop strings, write what is certain. */
static void api_call_pump(struct api_call *c)
{
    if (!c->http || c->done)
        return;
    /* finish first, then n_out: a finished request's count is final. */
    int fin = atomic_load_explicit(&c->sr.finish, memory_order_acquire);
    int n = atomic_load_explicit(&c->sr.n_out, memory_order_acquire);
    if (fin == SCHED_FINISH_ERROR) {
        LMD_ERROR("api: %s: %s", c->id, c->sr.err);
        if (!c->stream) {
            send_err(c->http, 500, "server_error", NULL, NULL, c->sr.err);
        } else {
            struct api_error e;
            size_t len;
            api_error_set(&e, 500, "server_error", NULL, NULL, "%s", c->sr.err);
            char *s = api_error_json(&e, &len);
            c->chunk.len = 0;
            lmd_buf_printf(&c->chunk, "data: %s\n\ndata: [DONE]\n\n", s ? s : "{}");
            free(s);
            http_stream_write(c->http, c->chunk.ptr, c->chunk.len, true);
        }
        c->done = true;
        return;
    }
    c->chunk.len = 0;
    if (n > 0 && !c->t_first)
        c->t_first = lmd_time_mono_ns();
    while (c->cursor < n && !c->stop_matched) {
        int32_t tok = c->sr.out[c->cursor++];
        size_t k = tok_detok_push(&c->dt, tok, c->piece, c->piece_cap);
        lmd_buf_append(&c->pending, c->piece, k);
        long at = api_stop_find(c->pending.ptr, c->pending.len, c->stop, c->stop_len, c->n_stop);
        if (at >= 0) {
            c->pending.len = (size_t)at;
            c->stop_matched = true;
            sched_req_cancel(c->api->cfg.sched, &c->sr);
        }
    }
    bool finished = c->stop_matched || (fin != SCHED_RUNNING && c->cursor == n);
    if (finished && !c->stop_matched) {
        size_t k = tok_detok_flush(&c->dt, c->piece, c->piece_cap);
        lmd_buf_append(&c->pending, c->piece, k);
    }
    size_t safe = c->pending.len;
    if (!finished)
        safe -= api_stop_holdback(c->pending.ptr, c->pending.len, c->stop, c->stop_len, c->n_stop);
    emit_text(c, c->pending.ptr, safe);
    if (c->pending.ptr) {
        memmove(c->pending.ptr, c->pending.ptr + safe, c->pending.len - safe);
        c->pending.len -= safe;
    }
    if (finished) {
        c->done = true;
        uint64_t now = lmd_time_mono_ns();
        LMD_INFO("api: %s %s prompt %d tokens, generated %d, finish %s, first token %.1f ms, total %.1f ms", c->id,
                 c->stream ? "stream" : "json", c->sr.n_prompt, c->cursor, finish_name(c),
                 c->t_first ? (double)(c->t_first - c->t_start) / 1e6 : 0.0, (double)(now - c->t_start) / 1e6);
        send_final(c);
    }
    if (c->stream && (c->chunk.len || finished))
        http_stream_write(c->http, c->chunk.ptr, c->chunk.len, finished);
}

static void api_call_task(struct http_task *t)
{
    struct api_call *c = (struct api_call *)((char *)t - offsetof(struct api_call, task));
    api_call_pump(c);
    sched_req_unref(&c->sr);
}

/* Engine thread: wake the call's I/O thread. The queued task holds a
 * reference so the call outlives it. */
static void api_call_notify(struct sched_req *r)
{
    struct api_call *c = (struct api_call *)r;
    sched_req_ref(r);
    if (!http_post(c->loop, &c->task))
        sched_req_unref(r);
}

static void api_call_release(struct sched_req *r)
{
    struct api_call *c = (struct api_call *)r;
    atomic_fetch_sub(&c->api->active, 1);
    lmd_buf_free(&c->pending);
    lmd_buf_free(&c->text);
    lmd_buf_free(&c->chunk);
    free(c->piece);
    free(c->stop_mem);
    free(c->ids);
    free(c);
}

/* The HTTP request is gone (answered, or the client left): if the sequence
 * is still generating, the scheduler drops it at its next step. */
static void api_call_closed(void *ctx)
{
    struct api_call *c = ctx;
    c->http = NULL;
    if (atomic_load(&c->sr.finish) == SCHED_RUNNING)
        sched_req_cancel(c->api->cfg.sched, &c->sr);
    sched_req_unref(&c->sr);
}

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

static void route_generate(struct api *a, struct http_req *r, enum api_kind kind)
{
    struct api_error e = {0};
    struct api_params p;
    struct http_str body = http_req_body(r);
    if (body.len > a->cfg.max_body) {
        api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "the body is %zu bytes; the limit is %zu", body.len, a->cfg.max_body);
        send_error(r, &e, NULL, NULL);
        return;
    }
    if (atomic_load(&a->draining)) {
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        send_error(r, &e, "retry-after", "1");
        return;
    }
    int32_t *ids = NULL;
    int n_prompt = 0;
    struct api_call *c = NULL;
    if (api_params_parse(&p, kind, body.ptr, body.len, &e) != 0)
        goto fail;
    if (p.model && !model_matches(a, p.model, strlen(p.model))) {
        api_error_set(&e, 404, "not_found_error", "model", "model_not_found",
                      "the model '%s' does not exist; this server serves '%s'", p.model, a->model_id);
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

    c = calloc(1, sizeof *c);
    size_t stop_bytes = 0;
    for (int i = 0; i < p.n_stop; i++)
        stop_bytes += p.stop_len[i];
    int32_t *all = realloc(ids, ((size_t)n_prompt + (size_t)max_tokens) * sizeof *ids);
    if (all)
        ids = all;
    if (c) {
        c->piece_cap = tok_detok_bound(a->cfg.vocab);
        c->piece = malloc(c->piece_cap);
        c->stop_mem = malloc(stop_bytes + 1);
    }
    if (!c || !all || !c->piece || !c->stop_mem) {
        if (c) {
            free(c->piece);
            free(c->stop_mem);
            free(c);
        }
        c = NULL;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    sched_req_init(&c->sr);
    c->ids = ids;
    ids = NULL;
    c->sr.prompt = c->ids;
    c->sr.n_prompt = n_prompt;
    c->sr.out = c->ids + n_prompt;
    c->sr.max_tokens = max_tokens;
    c->sr.sp = p.sp;
    if (!p.seed_set)
        c->sr.sp.seed = lmd_time_wall_ns() ^ (atomic_fetch_add(&a->seq, 1) * 0x9E3779B97F4A7C15ull);
    c->sr.notify = api_call_notify;
    c->sr.release = api_call_release;
    c->task.fn = api_call_task;
    c->api = a;
    c->http = r;
    c->loop = http_req_loop(r);
    c->kind = kind;
    c->stream = p.stream;
    c->include_usage = p.stream && p.include_usage;
    c->created = (long)(lmd_time_wall_ns() / 1000000000ull);
    c->t_start = lmd_time_mono_ns();
    snprintf(c->id, sizeof c->id, "%s-%llx%04llx", kind == API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)lmd_time_wall_ns(), (unsigned long long)(atomic_fetch_add(&a->seq, 1) & 0xffff));
    char *sm = c->stop_mem;
    for (int i = 0; i < p.n_stop; i++) {
        memcpy(sm, p.stop[i], p.stop_len[i]);
        c->stop[i] = sm;
        c->stop_len[i] = p.stop_len[i];
        sm += p.stop_len[i];
    }
    c->n_stop = p.n_stop;
    tok_detok_init(&c->dt, a->cfg.vocab, false);
    c->dt.first = false; /* a continuation: the first generated token keeps its leading space */
    atomic_fetch_add(&a->active, 1);
    api_params_free(&p);

    struct lmd_err err = {0};
    int rc = sched_submit(a->cfg.sched, &c->sr, &err);
    if (rc != 0) {
        if (rc == LMD_EBUSY || rc == LMD_ECANCELED)
            api_error_set(&e, 503, "server_error", NULL, rc == LMD_EBUSY ? "queue_full" : "shutting_down",
                          "the server is busy: %s; retry shortly", err.msg);
        else
            api_error_set(&e, 400, "invalid_request_error", "max_tokens", NULL, "%s", err.msg);
        send_error(r, &e, e.status == 503 ? "retry-after" : NULL, e.status == 503 ? "1" : NULL);
        sched_req_unref(&c->sr);
        return;
    }
    /* From here the HTTP side's reference is dropped when the request is
     * disposed, whichever way it ends. */
    http_req_on_close(r, api_call_closed, c);
    if (c->stream) {
        http_stream_begin(r, 200, "text/event-stream");
        if (kind == API_CHAT) {
            c->chunk.len = 0;
            chunk_head(c, &c->chunk);
            lmd_buf_printf(&c->chunk, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                                      "\"logprobs\":null,\"finish_reason\":null}]%s}\n\n",
                           c->include_usage ? ",\"usage\":null" : "");
            http_stream_write(r, c->chunk.ptr, c->chunk.len, false);
        }
    }
    return;
fail:
    free(ids);
    api_params_free(&p);
    send_error(r, &e, NULL, NULL);
}

/* ---- the router --------------------------------------------------------- */

void api_handle(void *ud, struct http_req *r)
{
    struct api *a = ud;
    atomic_fetch_add_explicit(&a->http_requests, 1, memory_order_relaxed);
    struct http_str m = http_req_method(r), path = http_req_path(r);
    bool get = str_is(m, "GET"), post = str_is(m, "POST");
    static const char models_prefix[] = "/v1/models/";

    if (str_is(path, "/v1/completions") || str_is(path, "/v1/chat/completions")) {
        if (!post) {
            send_err(r, 405, "invalid_request_error", NULL, "method_not_allowed", "use POST for this route");
            return;
        }
        route_generate(a, r, str_is(path, "/v1/completions") ? API_COMPLETION : API_CHAT);
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
        const char *id = path.ptr + sizeof models_prefix - 1;
        size_t len = path.len - (sizeof models_prefix - 1);
        if (model_matches(a, id, len))
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
