/*
 * The life of a generation request on its I/O thread, once routes.c has
 * validated it and built the prompt: one call with n choices, each its own
 * scheduler request sharing the prompt. Each time the engine thread reports
 * new tokens for any choice, the call detokenizes them, holds back text that
 * may be the start of a stop string, and writes SSE chunks (each carrying
 * its choice's index) or, when every choice has finished, the whole JSON
 * response. Log-probabilities, when asked for, are rendered from the arrays
 * the engine thread fills next to the output tokens.
 *
 * Streams are bounded: while more than API_STREAM_HIGH_WATER bytes wait in
 * the HTTP layer, no more tokens are turned into text (they stay in the
 * choice's preallocated out[] array) until the socket drains.
 *
 * Not here: routing, validation, prompt building (routes.c, params.c),
 * HTTP mechanics (http/), batching (sched/).
 *
 * Memory: one arena per call (core/arena.h). The call object, its prompt,
 * every choice's output, log-probability and block-table arrays, the stop
 * strings and the logit bias are carved from its first chunk, sized at
 * submission; the text buffers grow inside it. Freeing the call is
 * destroying the arena.
 *
 * Lifetime: the call is freed when its reference count falls to zero. It
 * holds one reference per choice, dropped when the scheduler releases that
 * choice's sched_req, and one per queued wakeup task. Each choice's
 * sched_req in turn holds one reference for the HTTP side (dropped when the
 * request is disposed) and one for the scheduler.
 */
#include "api/api_int.h"
#include "sample/grammar.h"

#include "core/log.h"
#include "core/time.h"
#include "http/http.h"
#include "kv/kv.h"
#include "obs/obs.h"
#include "qos/qos.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of a streamed response that may wait unsent before the call stops
 * turning tokens into text. A few chunks' worth: enough to keep the socket
 * busy, small enough that a thousand stalled clients cost little. */
#define API_STREAM_HIGH_WATER (64 * 1024)

struct api_call;

struct api_choice {
    struct sched_req sr; /* first: notify/release get this */
    struct api_call *call;
    int index;
    int cursor;        /* output tokens consumed */
    bool done;         /* its text (and, streamed, its last chunk) is complete */
    bool stop_matched; /* a stop string ended the text */
    /* Tool calls (c->tools): streamed text from the start of a call on is
     * held in `text` until the choice ends; `said` is set once content
     * other than blanks went out; `calls` is the parsed result. */
    bool tool_hold;
    bool said;
    void *calls;        /* json_t * array of {"name","arguments"}, or NULL */
    size_t content_len; /* non-streamed, and every dialect: bytes of text before the calls */
    size_t hold_at;     /* bytes of text before the held part (dialects keep their streamed content there too) */
    int stop_which;     /* which one (Messages' stop_sequence) */
    struct tok_detok dt;
    struct lmd_buf pending; /* text not yet emitted (may start a stop string) */
    struct lmd_buf text;    /* non-streamed: all emitted text */
    size_t lp_offset;       /* bytes: text_offset of the next token (completions logprobs) */
    int32_t *out;           /* [max_tokens] */
    float *lp;              /* [max_tokens], logprobs only */
    int32_t *top_id;        /* [max_tokens * n_top] */
    float *top_lp;          /* [max_tokens * n_top] */
    /* Forwarded calls: text as the engine thread hands it over (on_text),
     * taken by the I/O thread; malloc'd, not the arena's, since two threads
     * write it. The lock is held for a copy, never across other work. */
    pthread_mutex_t tmu;
    struct lmd_buf tin;
    bool tmu_init;
};

struct api_call {
    struct lmd_arena *arena; /* everything below lives in it, the call included */
    _Atomic int refs;
    struct http_task task;
    struct api *api;
    const struct api__model *m; /* the model it runs on */
    struct http_req *http;      /* NULL once the request is disposed */
    struct http_loop *loop;
    enum api_kind kind;
    bool stream, include_usage;
    _Atomic bool done; /* the response is complete (read by /debug/requests on any I/O thread) */
    bool gone;         /* the client hung up before the answer */
    int n_top;         /* logprobs: alternatives per token; -1 = off */
    char id[API_ID_MAX];
    long created; /* s */
    const char *stop[API_MAX_STOP];
    size_t stop_len[API_MAX_STOP];
    int n_stop;
    char *stop_mem;  /* the stop strings' bytes */
    int32_t *prompt; /* [n_prompt], shared by every choice */
    int n_prompt;
    char *echo; /* completions with echo: the prompt text, else NULL */
    size_t echo_len;
    /* sample_init copies the bias, but on the engine thread at admission,
     * which may be long after submission: the array lives here until the
     * call is freed. */
    struct sample_bias *bias; /* [n_bias] */
    struct gram *grammar;     /* the output's grammar (owned; the samplers point at it), or NULL */
    char *piece;              /* [piece_cap] one detokenized push, or one token's text */
    size_t piece_cap;
    struct lmd_buf chunk;                   /* streamed: the SSE bytes of this wakeup, reused */
    uint64_t t_start, t_first;              /* ns, monotonic: arrived (who.t_arrival_ns), first token seen */
    struct api_who who;                     /* tenant, class, admission ticket, request id */
    int status;                             /* the HTTP status answered (for metrics and the log); 0 = not yet */
    const char *finish;                     /* the first choice's finish reason, for the log */
    struct api_call *live_prev, *live_next; /* the api's live list (live_mu) */
    bool forwards;                          /* its engine takes the request whole: text out, usage from it */
    void *body;                             /* forwards: the JSON request handed on (json_t *, a reference) */
    char *raw;                              /* forwards: its bytes, spliced (malloc'd) */
    size_t raw_len;
    /* Tool calls are parsed from the output (tools requested, not "none"):
     * the model's syntax and the names a call may use. */
    enum api_tool_syntax tools; /* API_TOOLS_NONE = plain text */
    bool parallel_tools;
    const char **tool_names; /* [n_tool_names] in the arena */
    int n_tool_names;
    /* Responses and Messages: their renderer (NULL = OpenAI's chunks). */
    const struct api_dialect_ops *ops;
    struct api_dialect_out d;
    int n_choices;
    struct api_choice choice[]; /* [n_choices] */
};

#define PUTS(b, lit) lmd_buf_append((b), (lit), strlen(lit))

/* Output tokens so far: the engine's own count once a forwarded choice
 * has finished with one, else the tokens (or text pieces) seen. */
static int choice_generated(const struct api_choice *ch)
{
    if (atomic_load_explicit(&ch->sr.finish, memory_order_acquire) != SCHED_RUNNING && ch->sr.usage_completion >= 0)
        return ch->sr.usage_completion;
    return atomic_load_explicit(&ch->sr.n_out, memory_order_acquire);
}

static int call_generated(const struct api_call *c)
{
    int n = 0;
    for (int i = 0; i < c->n_choices; i++)
        n += choice_generated(&c->choice[i]);
    return n;
}

/* Prompt tokens: the engine's count for a forwarded call once it gave one
 * (the choices share the prompt), else what lmd counted or estimated. */
static int call_prompt(const struct api_call *c)
{
    for (int i = 0; c->forwards && i < c->n_choices; i++)
        if (atomic_load_explicit(&c->choice[i].sr.finish, memory_order_acquire) != SCHED_RUNNING &&
            c->choice[i].sr.usage_prompt >= 0)
            return c->choice[i].sr.usage_prompt;
    return c->n_prompt;
}

static void call_free(struct api_call *c)
{
    struct api *a = c->api;
    pthread_mutex_lock(&a->live_mu);
    if (c->live_prev)
        c->live_prev->live_next = c->live_next;
    else if (a->live == c)
        a->live = c->live_next;
    if (c->live_next)
        c->live_next->live_prev = c->live_prev;
    pthread_mutex_unlock(&a->live_mu);
    /* Whatever way it ended, its quota slots and token charge are settled
     * (a no-op when call_account already did). */
    qos_finished(a->cfg.qos, &c->who.ticket, (int64_t)call_prompt(c) + call_generated(c), lmd_time_mono_ns());
    atomic_fetch_sub(&c->api->active, 1);
    for (int i = 0; i < c->n_choices; i++)
        if (c->choice[i].tmu_init) {
            pthread_mutex_destroy(&c->choice[i].tmu);
            lmd_buf_free(&c->choice[i].tin);
        }
    for (int i = 0; i < c->n_choices; i++)
        json_decref(c->choice[i].calls);
    json_decref(c->body);
    free(c->raw);
    gram_free(c->grammar);
    lmd_arena_destroy(c->arena); /* c too */
}

static void call_ref(struct api_call *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

static void call_unref(struct api_call *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        call_free(c);
}

static void call_cancel_all(struct api_call *c)
{
    for (int i = 0; i < c->n_choices; i++)
        if (atomic_load(&c->choice[i].sr.finish) == SCHED_RUNNING)
            sched_req_cancel(c->m->m.sched, &c->choice[i].sr);
}

static const char *finish_name(const struct api_choice *ch)
{
    if (ch->calls)
        return "tool_calls";
    if (ch->stop_matched)
        return "stop";
    return atomic_load(&ch->sr.finish) == SCHED_FINISH_LENGTH ? "length" : "stop";
}

/* The request is answered (or its client is gone): count it, log it and
 * settle its admission. Once per call, on its I/O thread. */
static void call_account(struct api_call *c, int status, const char *finish)
{
    if (c->status)
        return;
    c->status = status;
    c->finish = finish;
    struct api *a = c->api;
    uint64_t now = lmd_time_mono_ns();
    int n_gen = call_generated(c), n_prompt = call_prompt(c);
    const int cls = c->who.cls, tenant = c->who.tenant;
    qos_finished(a->cfg.qos, &c->who.ticket, (int64_t)n_prompt + n_gen, now);
    obs_request_done(obs_status_of(status), c->m->index, cls, tenant);
    double e2e = (double)(now - c->t_start) / 1e9;
    double ttft = c->t_first ? (double)(c->t_first - c->t_start) / 1e9 : -1;
    uint64_t admit = atomic_load_explicit(&c->choice[0].sr.t_admit_ns, memory_order_relaxed);
    double queue = admit >= c->t_start ? (double)(admit - c->t_start) / 1e9 : -1;
    if (status == 200) {
        obs_observe_model(OBS_H_E2E, c->m->index, cls, e2e);
        if (ttft >= 0)
            obs_observe_model(OBS_H_TTFT, c->m->index, cls, ttft);
    }
    struct obs_access acc = {
        .id = c->who.rid,
        .method = "POST",
        .path = c->ops                ? c->ops->path
                : c->kind == API_CHAT ? "/v1/chat/completions"
                                      : "/v1/completions",
        .status = status,
        .cls = cls,
        .tenant = tenant,
        .model = c->m->m.id,
        .prompt_tokens = n_prompt,
        .output_tokens = n_gen,
        .queue_s = queue,
        .ttft_s = ttft,
        .e2e_s = e2e,
        .finish = finish,
    };
    obs_access_log(&acc);
}

/* ---- rendering ------------------------------------------------------------ */

/* The fixed start of every SSE chunk of this call. */
static void chunk_head(struct api_call *c, struct lmd_buf *b)
{
    lmd_buf_printf(b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":", c->id,
                   c->kind == API_CHAT ? "chat.completion.chunk" : "text_completion", c->created, c->m->id_json);
}

static void chunk_tail(struct api_call *c, struct lmd_buf *b)
{
    if (c->include_usage)
        PUTS(b, ",\"usage\":null");
    PUTS(b, "}\n\n");
}

/* JSON has no infinities; a token the bias pushed out of reach gets a
 * very negative finite number instead, as OpenAI's API does. */
static void put_lp(struct lmd_buf *b, float lp) { lmd_buf_printf(b, "%.9g", isfinite(lp) ? (double)lp : -9999.0); }

/* One token as "token":…,"logprob":…,"bytes":[…] (chat's shape). */
static void put_token_entry(struct api_call *c, struct lmd_buf *b, int32_t id, float lp)
{
    const struct tok_vocab *v = c->m->m.vocab;
    size_t k = tok_piece(v, id, true, c->piece, c->piece_cap);
    if (k > c->piece_cap)
        k = c->piece_cap;
    PUTS(b, "\"token\":");
    api_buf_json_token(b, c->piece, k);
    PUTS(b, ",\"logprob\":");
    put_lp(b, lp);
    PUTS(b, ",\"bytes\":[");
    for (size_t i = 0; i < k; i++)
        lmd_buf_printf(b, i ? ",%u" : "%u", (unsigned char)c->piece[i]);
    PUTS(b, "]");
}

/* The logprobs value of tokens [from, to) of a choice: null when off;
 * chat: {"content":[…]}; completions: {"tokens","token_logprobs",
 * "top_logprobs","text_offset"}, where text_offset counts bytes from the
 * start of the choice's text (echoed prompt included). */
static void put_logprobs(struct api_call *c, struct api_choice *ch, struct lmd_buf *b, int from, int to)
{
    if (c->n_top < 0) {
        PUTS(b, "null");
        return;
    }
    const struct tok_vocab *v = c->m->m.vocab;
    const int k = c->n_top;
    if (c->kind == API_CHAT) {
        PUTS(b, "{\"content\":[");
        for (int t = from; t < to; t++) {
            PUTS(b, t > from ? ",{" : "{");
            put_token_entry(c, b, ch->out[t], ch->lp[t]);
            PUTS(b, ",\"top_logprobs\":[");
            for (int j = 0; j < k; j++) {
                PUTS(b, j ? ",{" : "{");
                put_token_entry(c, b, ch->top_id[(size_t)t * k + j], ch->top_lp[(size_t)t * k + j]);
                PUTS(b, "}");
            }
            PUTS(b, "]}");
        }
        PUTS(b, "]}");
        return;
    }
    PUTS(b, "{\"tokens\":[");
    for (int t = from; t < to; t++) {
        size_t n = tok_piece(v, ch->out[t], true, c->piece, c->piece_cap);
        if (t > from)
            PUTS(b, ",");
        api_buf_json_token(b, c->piece, n > c->piece_cap ? c->piece_cap : n);
    }
    PUTS(b, "],\"token_logprobs\":[");
    for (int t = from; t < to; t++) {
        if (t > from)
            PUTS(b, ",");
        put_lp(b, ch->lp[t]);
    }
    /* OpenAI always lists the chosen token among the alternatives. */
    PUTS(b, "],\"top_logprobs\":[");
    for (int t = from; t < to; t++) {
        PUTS(b, t > from ? ",{" : "{");
        bool chosen_listed = false;
        for (int j = 0; j < k; j++) {
            int32_t id = ch->top_id[(size_t)t * k + j];
            size_t n = tok_piece(v, id, true, c->piece, c->piece_cap);
            if (j)
                PUTS(b, ",");
            api_buf_json_token(b, c->piece, n > c->piece_cap ? c->piece_cap : n);
            PUTS(b, ":");
            put_lp(b, ch->top_lp[(size_t)t * k + j]);
            chosen_listed |= id == ch->out[t];
        }
        if (!chosen_listed) {
            size_t n = tok_piece(v, ch->out[t], true, c->piece, c->piece_cap);
            if (k)
                PUTS(b, ",");
            api_buf_json_token(b, c->piece, n > c->piece_cap ? c->piece_cap : n);
            PUTS(b, ":");
            put_lp(b, ch->lp[t]);
        }
        PUTS(b, "}");
    }
    PUTS(b, "],\"text_offset\":[");
    for (int t = from; t < to; t++) {
        lmd_buf_printf(b, t > from ? ",%zu" : "%zu", ch->lp_offset);
        ch->lp_offset += tok_piece(v, ch->out[t], false, NULL, 0);
    }
    PUTS(b, "]}");
}

/* A streamed chunk of one choice: text and/or the log-probabilities of
 * tokens [from, to). */
static void put_text_chunk(struct api_call *c, struct api_choice *ch, const char *s, size_t n, int from, int to)
{
    chunk_head(c, &c->chunk);
    lmd_buf_printf(&c->chunk, "[{\"index\":%d,", ch->index);
    PUTS(&c->chunk, c->kind == API_CHAT ? "\"delta\":{\"content\":\"" : "\"text\":\"");
    api_buf_json_escape(&c->chunk, s, n);
    PUTS(&c->chunk, c->kind == API_CHAT ? "\"},\"logprobs\":" : "\",\"logprobs\":");
    if (to > from)
        put_logprobs(c, ch, &c->chunk, from, to);
    else
        PUTS(&c->chunk, "null");
    PUTS(&c->chunk, ",\"finish_reason\":null}]");
    chunk_tail(c, &c->chunk);
}

/* Text that is certain (no stop string can begin in it) leaves here: as an
 * SSE chunk, or into the choice's whole-response buffer. */
static void emit(struct api_call *c, struct api_choice *ch, const char *s, size_t n, int from, int to)
{
    if (c->ops) {
        /* The closing events repeat the whole text. */
        lmd_buf_append(&ch->text, s, n);
        if (c->stream && n > 0)
            c->ops->stream_text(&c->chunk, &c->d, s, n);
        return;
    }
    if (!c->stream) {
        lmd_buf_append(&ch->text, s, n);
        return;
    }
    if (n > 0 || (c->n_top >= 0 && to > from))
        put_text_chunk(c, ch, s, n, from, to);
}

/* ---- tool calls ------------------------------------------------------------- */

/* A tool call's id: "call_" and 24 hex digits drawn from the completion id
 * (unique per response), the choice and the call's place in it. */
static void put_call_id(struct api_call *c, const struct api_choice *ch, int k, struct lmd_buf *b)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *s = c->id; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h ^= ((uint64_t)ch->index << 32 | (uint64_t)k) * 0x9E3779B97F4A7C15ull;
    uint64_t z = h;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    lmd_buf_printf(b, "call_%016llx%08x", (unsigned long long)z, (unsigned)(h >> 32));
}

static void put_json_str(struct lmd_buf *b, json_t *s)
{
    PUTS(b, "\"");
    api_buf_json_escape(b, json_string_value(s), json_string_length(s));
    PUTS(b, "\"");
}

/* The message's "tool_calls" list (non-streamed). */
static void put_tool_calls(struct api_call *c, const struct api_choice *ch, struct lmd_buf *b)
{
    size_t k;
    json_t *call;
    PUTS(b, ",\"tool_calls\":[");
    json_array_foreach((json_t *)ch->calls, k, call)
    {
        PUTS(b, k ? ",{\"id\":\"" : "{\"id\":\"");
        put_call_id(c, ch, (int)k, b);
        PUTS(b, "\",\"type\":\"function\",\"function\":{\"name\":");
        put_json_str(b, json_object_get(call, "name"));
        PUTS(b, ",\"arguments\":");
        put_json_str(b, json_object_get(call, "arguments"));
        PUTS(b, "}}");
    }
    PUTS(b, "]");
}

/* Streamed: each call as OpenAI streams one, its id, type and name first
 * (with empty arguments), then its arguments. */
static void put_tool_call_chunks(struct api_call *c, const struct api_choice *ch)
{
    size_t k;
    json_t *call;
    json_array_foreach((json_t *)ch->calls, k, call)
    {
        chunk_head(c, &c->chunk);
        lmd_buf_printf(&c->chunk, "[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%zu,\"id\":\"", ch->index, k);
        put_call_id(c, ch, (int)k, &c->chunk);
        PUTS(&c->chunk, "\",\"type\":\"function\",\"function\":{\"name\":");
        put_json_str(&c->chunk, json_object_get(call, "name"));
        PUTS(&c->chunk, ",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]");
        chunk_tail(c, &c->chunk);
        chunk_head(c, &c->chunk);
        lmd_buf_printf(
            &c->chunk,
            "[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%zu,\"function\":{\"arguments\":", ch->index, k);
        put_json_str(&c->chunk, json_object_get(call, "arguments"));
        PUTS(&c->chunk, "}}]},\"logprobs\":null,\"finish_reason\":null}]");
        chunk_tail(c, &c->chunk);
    }
}

/* Streamed content while tools may be called (logprobs are refused with
 * streamed tools, so none ride along). */
static void tools_content(struct api_call *c, struct api_choice *ch, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (c->ops) {
        /* A dialect's closing events repeat the whole content. */
        lmd_buf_append(&ch->text, s, n);
        c->ops->stream_text(&c->chunk, &c->d, s, n);
    } else {
        put_text_chunk(c, ch, s, n, 0, 0);
    }
    for (size_t i = 0; i < n && !ch->said; i++)
        ch->said = !(s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t');
}

/* Streamed, with tools: of pending[0, safe), what is surely content goes
 * out; from where a call begins, the text is held (in ch->text) until the
 * choice ends. Returns the bytes of pending consumed; text that may be the
 * start of a call's marker stays pending. */
static size_t tools_route(struct api_call *c, struct api_choice *ch, size_t safe, bool finished)
{
    const char *s = ch->pending.ptr;
    if (ch->tool_hold) {
        lmd_buf_append(&ch->text, s, safe);
        return safe;
    }
    bool sure = false;
    size_t at = api_tools_scan(c->tools, s, safe, !ch->said, &sure);
    if (!sure) {
        size_t out = finished ? safe : at;
        tools_content(c, ch, s, out);
        return out;
    }
    tools_content(c, ch, s, at);
    ch->tool_hold = true;
    ch->hold_at = ch->text.len;
    lmd_buf_append(&ch->text, s + at, safe - at);
    return safe;
}

/* The choice has ended: parse its calls (the whole text, or the held part
 * of a stream). A stream whose held text holds no well-formed call gets
 * it as content after all. */
static void tools_finish(struct api_call *c, struct api_choice *ch)
{
    if (c->stream && !ch->tool_hold)
        return;
    const char *t = ch->text.ptr ? ch->text.ptr + ch->hold_at : "";
    size_t cl = 0;
    json_t *calls = api_tools_extract(c->tools, t, ch->text.len - ch->hold_at, (const char *const *)c->tool_names,
                                      c->n_tool_names, &cl);
    /* One call only when the client asked for no parallel calls. */
    while (calls && !c->parallel_tools && json_array_size(calls) > 1)
        json_array_remove(calls, json_array_size(calls) - 1);
    ch->calls = calls;
    ch->content_len = ch->hold_at + cl;
    if (!c->stream)
        return;
    if (c->ops) {
        /* The held text's content part is already in text (it is its
         * prefix): it only has to go out. */
        if (cl)
            c->ops->stream_text(&c->chunk, &c->d, t, cl);
        return;
    }
    tools_content(c, ch, t, cl);
    if (calls)
        put_tool_call_chunks(c, ch);
}

static void put_usage(struct api_call *c, struct lmd_buf *b)
{
    int n_gen = 0;
    for (int i = 0; i < c->n_choices; i++)
        n_gen += c->forwards ? choice_generated(&c->choice[i]) : c->choice[i].cursor;
    /* The prompt is counted once: the choices share it. */
    int n_prompt = call_prompt(c);
    lmd_buf_printf(b, "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}", n_prompt, n_gen,
                   n_prompt + n_gen);
}

/* A Responses or Messages call is done (it has one choice). */
static void send_final_dialect(struct api_call *c)
{
    struct api_choice *ch = &c->choice[0];
    /* Each call gets its id here, once: the renderers spell it in their
     * dialect's form. */
    size_t k;
    json_t *call;
    json_array_foreach((json_t *)ch->calls, k, call)
    {
        struct lmd_buf idb = {0};
        put_call_id(c, ch, (int)k, &idb);
        json_object_set_new(call, "id", json_string(idb.ptr ? idb.ptr : "call_0"));
        lmd_buf_free(&idb);
    }
    struct api_dialect_end end = {
        .text = ch->text.ptr ? ch->text.ptr : "",
        .text_len = ch->calls ? ch->content_len : ch->text.len,
        .calls = ch->calls,
        .length = !ch->stop_matched && atomic_load(&ch->sr.finish) == SCHED_FINISH_LENGTH,
        .stop_seq = ch->stop_matched ? c->stop[ch->stop_which] : NULL,
        .stop_seq_len = ch->stop_matched ? c->stop_len[ch->stop_which] : 0,
        .n_prompt = call_prompt(c),
        .n_gen = ch->cursor,
    };
    if (c->stream) {
        c->ops->stream_end(&c->chunk, &c->d, &end);
        return;
    }
    struct lmd_buf b = {0};
    c->ops->body(&b, &c->d, &end);
    if (!b.ptr) {
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        api_send_error(c->http, &e, NULL, NULL);
    } else {
        http_respond(c->http, 200, "application/json", b.ptr, b.len, NULL, NULL);
    }
    lmd_buf_free(&b);
}

/* Every choice is done: the last chunks, or the whole response. */
static void send_final(struct api_call *c)
{
    if (c->ops) {
        send_final_dialect(c);
        return;
    }
    if (c->stream) {
        if (c->include_usage) {
            chunk_head(c, &c->chunk);
            PUTS(&c->chunk, "[],\"usage\":");
            put_usage(c, &c->chunk);
            PUTS(&c->chunk, "}\n\n");
        }
        PUTS(&c->chunk, "data: [DONE]\n\n");
        return;
    }
    struct lmd_buf b = {0};
    lmd_buf_printf(&b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":[", c->id,
                   c->kind == API_CHAT ? "chat.completion" : "text_completion", c->created, c->m->id_json);
    for (int i = 0; i < c->n_choices; i++) {
        struct api_choice *ch = &c->choice[i];
        lmd_buf_printf(&b, "%s{\"index\":%d,", i ? "," : "", i);
        if (c->kind == API_CHAT && ch->calls) {
            PUTS(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
            if (ch->content_len) {
                PUTS(&b, "\"");
                api_buf_json_escape(&b, ch->text.ptr, ch->content_len);
                PUTS(&b, "\"");
            } else {
                PUTS(&b, "null");
            }
            put_tool_calls(c, ch, &b);
            PUTS(&b, "},\"logprobs\":");
            put_logprobs(c, ch, &b, 0, ch->cursor);
            lmd_buf_printf(&b, ",\"finish_reason\":\"%s\"}", finish_name(ch));
            continue;
        }
        if (c->kind == API_CHAT) {
            PUTS(&b, "\"message\":{\"role\":\"assistant\",\"content\":\"");
        } else {
            PUTS(&b, "\"text\":\"");
            if (c->echo)
                api_buf_json_escape(&b, c->echo, c->echo_len);
        }
        api_buf_json_escape(&b, ch->text.ptr ? ch->text.ptr : "", ch->text.len);
        PUTS(&b, c->kind == API_CHAT ? "\"},\"logprobs\":" : "\",\"logprobs\":");
        put_logprobs(c, ch, &b, 0, ch->cursor);
        lmd_buf_printf(&b, ",\"finish_reason\":\"%s\"}", finish_name(ch));
    }
    PUTS(&b, "],\"usage\":");
    put_usage(c, &b);
    PUTS(&b, "}");
    if (!b.ptr) {
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        api_send_error(c->http, &e, NULL, NULL);
    } else {
        http_respond(c->http, 200, "application/json", b.ptr, b.len, NULL, NULL);
    }
    lmd_buf_free(&b);
}

/* ---- the I/O side ---------------------------------------------------------- */

/* Which stop string starts s (one does: api_stop_find found it there). */
static int stop_which(const struct api_call *c, const char *s, size_t n)
{
    for (int i = 0; i < c->n_stop; i++)
        if (c->stop_len[i] <= n && memcmp(s, c->stop[i], c->stop_len[i]) == 0)
            return i;
    return 0;
}

/* Consume a choice's new tokens, as many as `budget` bytes of chunk allow. */
static void choice_pump(struct api_call *c, struct api_choice *ch, size_t budget)
{
    /* finish first, then n_out: a finished request's count is final. */
    int fin = atomic_load_explicit(&ch->sr.finish, memory_order_acquire);
    int n = atomic_load_explicit(&ch->sr.n_out, memory_order_acquire);
    if (n > 0 && !c->t_first)
        c->t_first = lmd_time_mono_ns();
    const int from = ch->cursor;
    /* A rough size of each token's chunk, so the budget holds before the
     * text is rendered. */
    const size_t per_token = 200 + (c->n_top >= 0 ? 120 * (size_t)(c->n_top + 1) : 0);
    size_t spent = 0;
    if (c->forwards && !ch->stop_matched && c->chunk.len < budget) {
        /* Text as the upstream sent it; stop strings are matched here too,
         * in case an upstream does not apply them. */
        pthread_mutex_lock(&ch->tmu);
        lmd_buf_append(&ch->pending, ch->tin.ptr, ch->tin.len);
        ch->tin.len = 0;
        pthread_mutex_unlock(&ch->tmu);
        ch->cursor = n;
        long at = api_stop_find(ch->pending.ptr, ch->pending.len, c->stop, c->stop_len, c->n_stop);
        if (at >= 0) {
            ch->stop_which = stop_which(c, ch->pending.ptr + at, ch->pending.len - (size_t)at);
            ch->pending.len = (size_t)at;
            ch->stop_matched = true;
            sched_req_cancel(c->m->m.sched, &ch->sr);
        }
    }
    while (!c->forwards && ch->cursor < n && !ch->stop_matched && c->chunk.len + spent < budget) {
        int32_t tok = ch->out[ch->cursor++];
        size_t k = tok_detok_push(&ch->dt, tok, c->piece, c->piece_cap);
        lmd_buf_append(&ch->pending, c->piece, k);
        spent += per_token + 6 * k;
        long at = api_stop_find(ch->pending.ptr, ch->pending.len, c->stop, c->stop_len, c->n_stop);
        if (at >= 0) {
            ch->stop_which = stop_which(c, ch->pending.ptr + at, ch->pending.len - (size_t)at);
            ch->pending.len = (size_t)at;
            ch->stop_matched = true;
            sched_req_cancel(c->m->m.sched, &ch->sr);
        }
    }
    /* Only an answer that ended well finishes here: an error, a deadline or
     * a shutdown that lands between call_pump's look at every choice and
     * this one is its to report, at the wakeup the finish sends (else this
     * choice would end as a 200 "stop" with what it had). */
    bool ended_ok = fin == SCHED_FINISH_STOP || fin == SCHED_FINISH_LENGTH || fin == SCHED_FINISH_CANCELLED;
    bool finished = ch->stop_matched || (ended_ok && ch->cursor == n);
    if (finished && c->forwards && !ch->stop_matched) {
        pthread_mutex_lock(&ch->tmu);
        finished = ch->tin.len == 0; /* what came after the budget ran out is still to go */
        pthread_mutex_unlock(&ch->tmu);
    }
    if (finished && !ch->stop_matched && !c->forwards) {
        size_t k = tok_detok_flush(&ch->dt, c->piece, c->piece_cap);
        lmd_buf_append(&ch->pending, c->piece, k);
    }
    size_t safe = ch->pending.len;
    if (!finished)
        safe -= api_stop_holdback(ch->pending.ptr, ch->pending.len, c->stop, c->stop_len, c->n_stop);
    if (c->tools && c->stream)
        safe = tools_route(c, ch, safe, finished);
    else
        emit(c, ch, ch->pending.ptr, safe, from, ch->cursor);
    if (ch->pending.ptr) {
        memmove(ch->pending.ptr, ch->pending.ptr + safe, ch->pending.len - safe);
        ch->pending.len -= safe;
    }
    if (!finished)
        return;
    ch->done = true;
    if (c->tools)
        tools_finish(c, ch);
    if (c->stream && !c->ops) {
        chunk_head(c, &c->chunk);
        lmd_buf_printf(&c->chunk, "[{\"index\":%d,%s,\"logprobs\":null,\"finish_reason\":\"%s\"}]", ch->index,
                       c->kind == API_CHAT ? "\"delta\":{}" : "\"text\":\"\"", finish_name(ch));
        chunk_tail(c, &c->chunk);
    }
}

/* An engine failure ends the whole response: the other choices are
 * cancelled, the error is the answer (or the stream's last event). */
static void call_fail(struct api_call *c, int status, const char *code, const char *finish, const char *msg)
{
    if (status >= 500 && status != 503)
        LMD_ERROR("api: %s: %s", c->id, msg);
    call_cancel_all(c);
    struct api_error e;
    api_error_set(&e, status, status < 500 ? "invalid_request_error" : "server_error", NULL, code, "%s", msg);
    call_account(c, status, finish);
    if (!c->stream) {
        api_send_error(c->http, &e, status == 503 ? "retry-after" : NULL, status == 503 ? "1" : NULL);
    } else if (c->ops) {
        c->chunk.len = 0;
        c->ops->stream_error(&c->chunk, &c->d, &e);
        http_stream_write(c->http, c->chunk.ptr, c->chunk.len, true);
    } else {
        size_t len;
        char *s = api_error_json(&e, &len);
        c->chunk.len = 0;
        lmd_buf_printf(&c->chunk, "data: %s\n\ndata: [DONE]\n\n", s ? s : "{}");
        free(s);
        http_stream_write(c->http, c->chunk.ptr, c->chunk.len, true);
    }
    c->done = true;
}

/* Runs on the I/O thread after the engine thread reported progress, or
 * when a paused stream's socket drained: consume new tokens, match stop
 * strings, write what is certain. */
static void call_pump(struct api_call *c)
{
    if (!c->http || c->done)
        return;
    for (int i = 0; i < c->n_choices; i++) {
        int fin = atomic_load_explicit(&c->choice[i].sr.finish, memory_order_acquire);
        if (fin == SCHED_FINISH_ERROR) {
            /* An upstream's own answer keeps its status: a 4xx is the
             * client's mistake as the upstream saw it; 502/503/504 say how
             * the upstream failed. */
            int st = c->choice[i].sr.err_status;
            const char *code = st == 503   ? "upstream_unavailable"
                               : st == 504 ? "upstream_timeout"
                               : st == 502 ? "upstream_error"
                                           : NULL;
            call_fail(c, st >= 400 && st <= 599 ? st : 500, code, "error", c->choice[i].sr.err);
            return;
        }
        if (fin == SCHED_FINISH_DEADLINE) {
            /* Its class refuses late work and it waited past its deadline. */
            obs_reject(OBS_R_DEADLINE, c->who.tenant);
            call_fail(c, 503, "deadline_unmeetable", "deadline",
                      "the request could not start within its service class's time-to-first-token target; "
                      "retry later or use a class that runs late work");
            return;
        }
        if (fin == SCHED_FINISH_SHUTDOWN) {
            /* The drain ran out (or a second signal came): the answer is
             * cut. Never 200 with "stop": a client could not tell it from
             * a finished one. A stream ends with an error event. */
            call_fail(c, 503, "server_shutdown", "shutdown",
                      "the server shut down before the answer was complete; the output is incomplete, retry on "
                      "another replica");
            return;
        }
    }
    /* Out of the queue: its queued-quota slot is free again. */
    if (c->who.ticket.state == QOS_TICKET_QUEUED)
        for (int i = 0; i < c->n_choices; i++)
            if (atomic_load_explicit(&c->choice[i].sr.state, memory_order_relaxed) != SCHED_ST_QUEUED) {
                qos_started(c->api->cfg.qos, &c->who.ticket);
                break;
            }
    c->chunk.len = 0;
    size_t budget = SIZE_MAX;
    if (c->stream) {
        size_t unsent = http_stream_unsent(c->http);
        budget = unsent >= API_STREAM_HIGH_WATER ? 0 : API_STREAM_HIGH_WATER - unsent;
    }
    bool all_done = true;
    for (int i = 0; i < c->n_choices; i++) {
        if (!c->choice[i].done)
            choice_pump(c, &c->choice[i], budget);
        all_done &= c->choice[i].done;
    }
    if (all_done) {
        c->done = true;
        call_account(c, c->gone ? 499 : 200, c->gone ? "cancelled" : finish_name(&c->choice[0]));
        send_final(c);
    }
    if (c->stream && (c->chunk.len || all_done))
        http_stream_write(c->http, c->chunk.ptr, c->chunk.len, all_done);
}

static void call_task(struct http_task *t)
{
    struct api_call *c = (struct api_call *)((char *)t - offsetof(struct api_call, task));
    call_pump(c);
    call_unref(c);
}

/* Engine thread: wake the call's I/O thread. The queued task holds a
 * reference so the call outlives it; the scheduler's reference on the
 * choice keeps the call alive until then. */
static void choice_notify(struct sched_req *r)
{
    struct api_call *c = ((struct api_choice *)r)->call;
    call_ref(c);
    if (!http_post(c->loop, &c->task))
        call_unref(c);
}

static void choice_release(struct sched_req *r) { call_unref(((struct api_choice *)r)->call); }

/* Engine thread: a forwarded choice's text, kept until its I/O thread
 * takes it (the notify that follows wakes it). */
static void choice_text(struct sched_req *r, const char *s, size_t n)
{
    struct api_choice *ch = (struct api_choice *)r;
    pthread_mutex_lock(&ch->tmu);
    if (lmd_buf_append(&ch->tin, s, n) != 0)
        LMD_ERROR("api: %s: out of memory holding streamed text; %zu bytes lost", ch->call->id, n);
    pthread_mutex_unlock(&ch->tmu);
}

static void call_drained(void *ctx) { call_pump(ctx); }

/* The HTTP request is gone (answered, or the client left): choices still
 * generating are dropped by the scheduler at its next step. */
static void call_closed(void *ctx)
{
    struct api_call *c = ctx;
    c->http = NULL;
    if (!c->done)
        call_account(c, 499, "cancelled"); /* the client left before the answer was complete */
    call_ref(c);                           /* the last unref below may otherwise free c mid-loop */
    call_cancel_all(c);
    for (int i = 0; i < c->n_choices; i++)
        sched_req_unref(&c->choice[i].sr);
    call_unref(c);
}

/* HTTP/1.1, non-streamed: the client hung up while waiting. Cancelled
 * choices finish at the next step; the answer then goes nowhere. */
static void call_gone(void *ctx)
{
    struct api_call *c = ctx;
    LMD_INFO("api: %s: the client closed its connection; cancelling", c->id);
    c->gone = true;
    call_cancel_all(c);
}

/* ---- building and submitting ---------------------------------------------- */

int api__submit_all(struct sched *s, struct sched_req *base, size_t stride, int n, int tenant, const char *param,
                    const char *item, struct api_error *e)
{
#define AT(i) ((struct sched_req *)((char *)base + (size_t)(i)*stride))
    struct lmd_err err = {0};
    int rc = 0, submitted = 0;
    for (; submitted < n; submitted++)
        if ((rc = sched_submit(s, AT(submitted), &err)) != 0)
            break;
    if (rc == 0)
        return 0;
    /* All or nothing: the ones already queued are withdrawn. */
    for (int i = 0; i < submitted; i++)
        sched_req_cancel(s, AT(i));
    for (int i = 0; i < n; i++)
        sched_req_unref(AT(i));
#undef AT
    switch (rc) {
    case LMD_EBUSY:
        obs_reject(OBS_R_QUEUE_FULL, tenant);
        return api_error_set(e, 503, "server_error", NULL, "queue_full", "the server is busy: %s; retry shortly",
                             err.msg);
    case LMD_ECANCELED:
        obs_reject(OBS_R_DRAINING, tenant);
        return api_error_set(e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
    case LMD_ETIMEDOUT:
        obs_reject(OBS_R_DEADLINE, tenant);
        return api_error_set(e, 503, "server_error", NULL, "deadline_unmeetable",
                             "the request cannot start within its service class's time-to-first-token target "
                             "(%s); retry later or use a class that runs late work",
                             err.msg);
    case LMD_ENOTSUP:
        return api_error_set(e, 501, "invalid_request_error", "model", "unsupported_model", "%s", err.msg);
    case LMD_ENOMEM:
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    default:
        if (item)
            return api_error_set(e, 400, "invalid_request_error", param, NULL, "%s[%d]: %s", item, submitted, err.msg);
        return api_error_set(e, 400, "invalid_request_error", param, NULL, "%s", err.msg);
    }
}

/* The echoed prompt: the request's own text, or the ids detokenized. */
static int call_set_echo(struct api_call *c, const struct api_params *p)
{
    struct lmd_buf b = {.arena = c->arena};
    if (p->prompt) {
        if (lmd_buf_append(&b, p->prompt, p->prompt_len))
            return LMD_ENOMEM;
    } else {
        struct tok_detok d;
        tok_detok_init(&d, c->m->m.vocab, false);
        for (int i = 0; i < c->n_prompt; i++) {
            size_t k = tok_detok_push(&d, c->prompt[i], c->piece, c->piece_cap);
            if (lmd_buf_append(&b, c->piece, k))
                goto oom;
        }
        size_t k = tok_detok_flush(&d, c->piece, c->piece_cap);
        if (lmd_buf_append(&b, c->piece, k) || lmd_buf_reserve(&b, 1))
            goto oom;
    }
    c->echo = b.ptr;
    c->echo_len = b.len;
    return 0;
oom:
    return LMD_ENOMEM;
}

static int choice_init(struct api_call *c, struct api_choice *ch, int i, const struct api_params *p, int max_tokens)
{
    sched_req_init(&ch->sr);
    ch->call = c;
    ch->index = i;
    ch->pending.arena = ch->text.arena = c->arena;
    if (c->forwards) {
        /* Text comes through on_text; the scheduler keeps the token budget. */
        pthread_mutex_init(&ch->tmu, NULL);
        ch->tmu_init = true;
        ch->sr.n_prompt = c->n_prompt;
        ch->sr.max_tokens = max_tokens;
        ch->sr.api_path = c->kind == API_CHAT ? "/v1/chat/completions" : "/v1/completions";
        ch->sr.api_json = c->body;
        ch->sr.api_body = c->raw;
        ch->sr.api_body_len = c->raw_len;
        ch->sr.on_text = choice_text;
        ch->sr.notify = choice_notify;
        ch->sr.release = choice_release;
        ch->sr.ignore_eos = p->ignore_eos;
        return 0;
    }
    /* From the arena's first chunk, sized for them in api_call_submit. */
    ch->out = lmd_arena_alloc(c->arena, (size_t)max_tokens * sizeof *ch->out);
    ch->sr.block_table = lmd_arena_alloc(c->arena, (size_t)sched_blocks_for(c->m->m.sched, c->n_prompt + max_tokens) *
                                                       sizeof *ch->sr.block_table);
    if (!ch->out || !ch->sr.block_table)
        return LMD_ENOMEM;
    if (c->n_top >= 0) {
        size_t k = (size_t)max_tokens * (size_t)c->n_top;
        ch->lp = lmd_arena_alloc(c->arena, (size_t)max_tokens * sizeof *ch->lp);
        ch->top_id = k ? lmd_arena_alloc(c->arena, k * sizeof *ch->top_id) : NULL;
        ch->top_lp = k ? lmd_arena_alloc(c->arena, k * sizeof *ch->top_lp) : NULL;
        if (!ch->lp || (k && (!ch->top_id || !ch->top_lp)))
            return LMD_ENOMEM;
    }
    ch->sr.prompt = c->prompt;
    ch->sr.n_prompt = c->n_prompt;
    ch->sr.out = ch->out;
    ch->sr.max_tokens = max_tokens;
    ch->sr.sp = p->sp;
    ch->sr.sp.bias = c->bias;
    ch->sr.sp.n_bias = p->n_bias;
    ch->sr.sp.grammar = c->grammar;
    /* With a seed, choice i draws from seed + i, so a request reproduces
     * choice for choice; without one every choice gets its own stream. */
    if (p->seed_set)
        ch->sr.sp.seed = p->sp.seed + (uint64_t)i;
    else
        ch->sr.sp.seed = lmd_time_wall_ns() ^ (atomic_fetch_add(&c->api->seq, 1) * 0x9E3779B97F4A7C15ull);
    ch->sr.ignore_eos = p->ignore_eos;
    ch->sr.n_logprobs = c->n_top;
    ch->sr.out_lp = ch->lp;
    ch->sr.out_top_id = ch->top_id;
    ch->sr.out_top_lp = ch->top_lp;
    ch->sr.notify = choice_notify;
    ch->sr.release = choice_release;
    tok_detok_init(&ch->dt, c->m->m.vocab, false);
    ch->dt.first = false; /* a continuation: the first generated token keeps its leading space */
    ch->lp_offset = c->echo_len;
    return 0;
}

/* The stream's opening chunks: chat's role delta, or the echoed prompt. */
static void call_begin_stream(struct api_call *c, struct http_req *r)
{
    http_stream_begin(r, 200, "text/event-stream");
    c->chunk.len = 0;
    if (c->ops)
        c->ops->stream_begin(&c->chunk, &c->d, c->n_prompt);
    for (int i = 0; !c->ops && i < c->n_choices; i++) {
        if (c->kind == API_CHAT) {
            chunk_head(c, &c->chunk);
            lmd_buf_printf(&c->chunk,
                           "[{\"index\":%d,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                           "\"logprobs\":null,\"finish_reason\":null}]",
                           i);
            chunk_tail(c, &c->chunk);
        } else if (c->echo && c->echo_len) {
            put_text_chunk(c, &c->choice[i], c->echo, c->echo_len, 0, 0);
        }
    }
    if (c->chunk.len)
        http_stream_write(r, c->chunk.ptr, c->chunk.len, false);
}

static int call_submit(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                       int32_t *ids, void *body, char *raw, size_t raw_len, int n_prompt, int max_tokens,
                       const char *id, struct api_who *who, struct api_error *e);

/* The tools' names, copied into the arena (the request's document is
 * gone once the call is submitted). */
static int call_set_tools(struct api_call *c, const struct api_params *p)
{
    /* A forwarded call's tool calls come back as the remote engine's
     * records; a native one's in the syntax of the model's template. */
    c->tools = c->forwards ? API_TOOLS_RELAY : c->m->tool_syntax;
    c->parallel_tools = p->parallel_tool_calls;
    c->tool_names = lmd_arena_alloc(c->arena, (size_t)p->n_tools * sizeof *c->tool_names);
    if (!c->tool_names)
        return LMD_ENOMEM;
    size_t i;
    json_t *t;
    json_array_foreach((json_t *)p->tools, i, t)
    {
        json_t *name = json_object_get(json_object_get(t, "function"), "name");
        /* Named choice: a call of another function is not this answer's. */
        if (p->tool_choice == API_TC_NAMED && strcmp(json_string_value(name), p->tool_name) != 0)
            continue;
        char *s = lmd_arena_alloc(c->arena, json_string_length(name) + 1);
        if (!s)
            return LMD_ENOMEM;
        memcpy(s, json_string_value(name), json_string_length(name) + 1);
        c->tool_names[c->n_tool_names++] = s;
    }
    return 0;
}

int api_call_submit(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                    int32_t *ids, int n_prompt, int max_tokens, const char *id, struct api_who *who,
                    struct api_error *e)
{
    return call_submit(a, m, r, p, ids, NULL, NULL, 0, n_prompt, max_tokens, id, who, e);
}

int api_call_forward(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                     void *body, char *raw, size_t raw_len, int n_prompt, int max_tokens, const char *id,
                     struct api_who *who, struct api_error *e)
{
    return call_submit(a, m, r, p, NULL, body, raw, raw_len, n_prompt, max_tokens, id, who, e);
}

/* Either ids (token ids, for engines that take them) or body (the JSON
 * request, for engines that forward it); takes ownership of both. */
static int call_submit(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                       int32_t *ids, void *body, char *raw, size_t raw_len, int n_prompt, int max_tokens,
                       const char *id, struct api_who *who, struct api_error *e)
{
    const int n = p->n;
    const bool fwd = body != NULL;
    /* The arena's first chunk holds every fixed-size part (each rounded
     * up to 16 bytes), plus room for the text buffers to start in. */
    size_t piece_cap = fwd ? 16 : tok_detok_bound(m->m.vocab), stop_bytes = 0;
    if (!fwd && piece_cap < tok_piece_max(m->m.vocab))
        piece_cap = tok_piece_max(m->m.vocab);
    for (int i = 0; i < p->n_stop; i++)
        stop_bytes += p->stop_len[i];
    size_t mt = (size_t)max_tokens, top = p->logprobs > 0 ? (size_t)p->logprobs : 0;
    size_t per_choice =
        fwd ? 0
            : mt * sizeof(int32_t) + (size_t)sched_blocks_for(m->m.sched, n_prompt + max_tokens) * sizeof(int32_t) +
                  (p->logprobs >= 0 ? mt * sizeof(float) + mt * top * (sizeof(int32_t) + sizeof(float)) : 0) + 5 * 16;
    size_t first = sizeof(struct api_call) + (size_t)n * sizeof(struct api_choice) +
                   (size_t)n_prompt * sizeof(int32_t) + piece_cap + stop_bytes + 1 +
                   (size_t)p->n_bias * sizeof(struct sample_bias) + (size_t)n * per_choice + 6 * 16 + 4096;
    struct lmd_arena *arena = lmd_arena_create(first);
    struct api_call *c = arena ? lmd_arena_calloc(arena, sizeof *c + (size_t)n * sizeof c->choice[0]) : NULL;
    int32_t *prompt = c && !fwd ? lmd_arena_alloc(arena, (size_t)n_prompt * sizeof *prompt) : NULL;
    if (!c || (!fwd && !prompt)) {
        lmd_arena_destroy(arena);
        gram_free(p->grammar);
        free(ids);
        json_decref(body);
        free(raw);
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (!fwd)
        memcpy(prompt, ids, (size_t)n_prompt * sizeof *prompt);
    free(ids);
    c->forwards = fwd;
    c->grammar = p->grammar;
    c->body = body;
    c->raw = raw;
    c->raw_len = raw_len;
    c->arena = arena;
    c->chunk.arena = arena;
    atomic_fetch_add(&a->active, 1);
    /* Each choice's release drops one of these, so from here every path,
     * failures included, ends in call_free through the choices. */
    atomic_store(&c->refs, n);
    c->n_choices = n;
    c->api = a;
    c->m = m;
    c->prompt = prompt;
    c->n_prompt = n_prompt;
    c->kind = p->kind;
    c->stream = p->stream;
    c->include_usage = p->stream && p->include_usage;
    c->n_top = p->logprobs;
    c->task.fn = call_task;
    c->loop = http_req_loop(r);
    c->created = (long)(lmd_time_wall_ns() / 1000000000ull);
    c->t_start = who->t_arrival_ns ? who->t_arrival_ns : lmd_time_mono_ns();
    c->who = *who;
    who->ticket.state = QOS_TICKET_NONE; /* the call's now: call_free settles it */
    snprintf(c->id, sizeof c->id, "%s", id);
    c->piece_cap = piece_cap;
    c->piece = lmd_arena_alloc(arena, c->piece_cap);
    c->stop_mem = lmd_arena_alloc(arena, stop_bytes + 1);
    if (p->n_bias) {
        c->bias = lmd_arena_alloc(arena, (size_t)p->n_bias * sizeof *c->bias);
        if (c->bias)
            memcpy(c->bias, p->bias, (size_t)p->n_bias * sizeof *c->bias);
    }
    if (p->dialect != API_DIALECT_OPENAI) {
        c->ops = p->dialect == API_DIALECT_RESPONSES ? &api_responses_ops : &api_messages_ops;
        c->d.id = c->id;
        c->d.model_json = m->id_json;
        c->d.created = c->created;
        if (p->echo_json) {
            size_t k = strlen(p->echo_json) + 1;
            char *echo = lmd_arena_alloc(arena, k);
            if (echo)
                memcpy(echo, p->echo_json, k);
            c->d.echo = echo;
        }
    }
    int rc = (!c->piece || !c->stop_mem || (p->n_bias && !c->bias) || (p->echo_json && !c->d.echo)) ? LMD_ENOMEM : 0;
    if (rc == 0 && p->kind == API_CHAT && p->tools && p->tool_choice != API_TC_NONE)
        rc = call_set_tools(c, p);
    if (rc == 0 && p->echo)
        rc = call_set_echo(c, p);
    const uint64_t sched_id = atomic_fetch_add(&a->seq, 1) * API_MAX_N;
    uint64_t salt = 0;
    if (!a->cfg.prefix_cache_shared) {
        /* The tenant's own namespace, or its group's ("group:" keeps a
         * group's name apart from a tenant's of the same spelling). */
        const struct qos_tenant *t = qos_tenant(a->cfg.qos, c->who.tenant);
        if (t->cache_group[0]) {
            salt = kv_salt(0, "group:", 6);
            salt = kv_salt(salt, t->cache_group, strlen(t->cache_group));
        } else {
            salt = kv_salt(0, t->name, strlen(t->name));
        }
    }
    if (p->cache_salt)
        salt = kv_salt(salt, p->cache_salt, p->cache_salt_len);
    for (int i = 0; i < n; i++) {
        if (choice_init(c, &c->choice[i], i, p, max_tokens) != 0)
            rc = LMD_ENOMEM;
        c->choice[i].sr.cls = c->who.cls;
        c->choice[i].sr.tenant = c->who.tenant;
        c->choice[i].sr.id = sched_id + (uint64_t)i;
        c->choice[i].sr.group = sched_id + 1; /* nonzero: the choices share their class's per-request slot limit */
        c->choice[i].sr.t_arrival_ns = c->t_start;
        c->choice[i].sr.cache_salt = salt;
    }
    if (rc != 0) {
        for (int i = 0; i < n; i++)
            sched_req_unref(&c->choice[i].sr); /* the last one frees c */
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    char *sm = c->stop_mem;
    for (int i = 0; i < p->n_stop; i++) {
        memcpy(sm, p->stop[i], p->stop_len[i]);
        c->stop[i] = sm;
        c->stop_len[i] = p->stop_len[i];
        sm += p->stop_len[i];
    }
    c->n_stop = p->n_stop;

    if (api__submit_all(m->m.sched, &c->choice[0].sr, sizeof c->choice[0], n, who->tenant, "max_tokens", NULL, e) != 0)
        return -1; /* the choices' release has freed c */
    pthread_mutex_lock(&a->live_mu);
    c->live_next = a->live;
    if (a->live)
        a->live->live_prev = c;
    a->live = c;
    pthread_mutex_unlock(&a->live_mu);
    /* From here the HTTP side's references are dropped when the request is
     * disposed, whichever way it ends. */
    c->http = r;
    http_req_on_close(r, call_closed, c);
    if (c->stream) {
        http_stream_on_drain(r, call_drained, c);
        call_begin_stream(c, r);
    } else {
        http_req_watch_disconnect(r, call_gone, c);
    }
    return 0;
}

/* ---- the live view ----------------------------------------------------------- */

static const char *const state_names[] = {"queued", "prefill", "decode", "preempted", "done"};

/* One call as a JSON object. Its choices' progress is read as the engine
 * thread publishes it (atomics and stamps, relaxed): a view, not a
 * snapshot. */
static void call_render(struct api_call *c, struct lmd_buf *b, uint64_t now)
{
    const struct qos *q = c->api->cfg.qos;
    int state = SCHED_ST_DONE, kv = 0, gen = 0, preempted = 0;
    /* The most advanced choice names the state: decode > prefill >
     * preempted > queued > done. */
    static const int rank[] = {[SCHED_ST_QUEUED] = 1,
                               [SCHED_ST_PREFILL] = 3,
                               [SCHED_ST_DECODE] = 4,
                               [SCHED_ST_PREEMPTED] = 2,
                               [SCHED_ST_DONE] = 0};
    uint64_t admit = 0;
    for (int i = 0; i < c->n_choices; i++) {
        struct sched_req *sr = &c->choice[i].sr;
        int st = atomic_load_explicit(&sr->state, memory_order_relaxed);
        if (st < 0 || st > SCHED_ST_DONE)
            st = SCHED_ST_QUEUED;
        if (rank[st] > rank[state])
            state = st;
        kv += atomic_load_explicit(&sr->kv_blocks, memory_order_relaxed);
        gen += atomic_load_explicit(&sr->n_out, memory_order_relaxed);
        preempted += atomic_load_explicit(&sr->n_preempted, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&sr->t_admit_ns, memory_order_relaxed);
        if (t && (!admit || t < admit))
            admit = t;
    }
    if (atomic_load_explicit(&c->done, memory_order_relaxed))
        state = SCHED_ST_DONE;
    double age = (double)(now - c->t_start) / 1e9;
    double queued = (double)((admit ? admit : now) - c->t_start) / 1e9;
    lmd_buf_printf(b,
                   "{\"id\":\"%s\",\"completion_id\":\"%s\",\"model\":\"%s\",\"tenant\":\"%s\",\"class\":\"%s\","
                   "\"state\":\"%s\",\"stream\":%s,\"choices\":%d,\"prompt_tokens\":%d,\"generated_tokens\":%d,"
                   "\"age_s\":%.3f,\"queued_s\":%.3f,\"kv_blocks\":%d,\"preemptions\":%d}",
                   c->who.rid, c->id, c->m->id_json, qos_tenant(q, c->who.tenant)->name, qos_class(q, c->who.cls)->name,
                   state_names[state], c->stream ? "true" : "false", c->n_choices, c->n_prompt, gen, age,
                   queued < 0 ? 0.0 : queued, kv, preempted);
}

int api_calls_render(struct api *a, struct lmd_buf *b)
{
    uint64_t now = lmd_time_mono_ns();
    PUTS(b, "{\"requests\":[");
    pthread_mutex_lock(&a->live_mu);
    int k = 0;
    for (struct api_call *c = a->live; c; c = c->live_next) {
        if (k++)
            PUTS(b, ",");
        call_render(c, b, now);
    }
    pthread_mutex_unlock(&a->live_mu);
    lmd_buf_printf(b, "],\"active\":%d}", atomic_load(&a->active));
    return b->ptr ? 0 : LMD_ENOMEM;
}
