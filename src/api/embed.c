/*
 * POST /v1/embeddings (and /embeddings): OpenAI's embeddings API on the
 * native engine.
 *
 * The body is checked on the I/O thread and every input tokenized by a
 * prep worker (prep.c), as a completion's prompt is; the text of one
 * request is bounded (EMBD_MAX_TEXT_BYTES) and each input by the context,
 * refused by its size before the tokenizer runs. Each input
 * becomes a scheduler request of its own with an embedding accumulator
 * (sched_req.embd): the same admission (the tenant's buckets are charged
 * the prompt tokens), service classes, deadlines and batching as
 * generation, with no decode — the scheduler finishes it after its
 * prefill, its vector already pooled and of unit length. When every input
 * has finished, the I/O thread writes the answer: floats, or base64 of
 * little-endian float32 as OpenAI sends them.
 *
 * `dimensions`: shortening an embedding is meaningful only for a model
 * trained for it (Matryoshka representation learning), and no GGUF
 * metadata says a model was. So the full width is the only one served:
 * `dimensions` equal to it is accepted, any other value is a 400 that
 * says the width.
 *
 * Not here: pooling (model/forward.c, through engine.h), scheduling
 * (sched/). Engines without hidden states (the CUDA engine) and remote
 * pools answer 501.
 *
 * Memory: one arena per call holds the call, its inputs' tokens, their
 * block tables and vectors; freeing the call destroys it. Lifetime as a
 * generation call's (call.c): one reference per input, dropped when the
 * scheduler releases it, plus one per queued wakeup task.
 */
#include "api/api_int.h"

#include "core/arena.h"
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

#define EMBD_MAX_INPUTS 2048 /* OpenAI's limit on inputs per request */
/* Text tokenized per request: a few tens of milliseconds of a prep
 * worker's time at most, so that one request never holds it for long. */
#define EMBD_MAX_TEXT_BYTES ((size_t)1 << 20)

struct embd_call;

struct embd_item {
    struct sched_req sr; /* first: notify/release get this */
    struct embd_call *call;
};

struct embd_call {
    struct lmd_arena *arena; /* owns this object */
    struct api *api;
    const struct api__model *m;
    struct http_req *http; /* NULL once the request is disposed */
    struct http_loop *loop;
    struct http_task task;
    _Atomic int refs;
    struct api_who who;
    uint64_t t_start; /* ns, monotonic */
    int n_embd;
    int n_prompt; /* tokens of all inputs */
    int status;   /* answered with; 0 = not yet */
    bool base64;
    bool done, gone;
    float *vec; /* [n][n_embd] */
    int n;
    struct embd_item item[]; /* [n] */
};

/* ---- parsing ---------------------------------------------------------------- */

/* One input as the request gives it: text, or token ids. */
struct embd_input {
    const char *text;  /* NULL for ids */
    size_t len;        /* bytes of text */
    const json_t *ids; /* array of integers, or NULL */
    int32_t *tok;      /* [n_tok] malloc'd */
    int n_tok;
};

#define BAD(e, field, ...) api_error_set(e, 400, "invalid_request_error", field, NULL, __VA_ARGS__)

static bool is_id_array(const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return false;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_integer(json_array_get(v, i)))
            return false;
    return true;
}

/* The inputs of `input`: a string, strings, token ids, or lists of ids. */
static int parse_inputs(const json_t *in, struct embd_input **out, int *n, struct api_error *e)
{
    *out = NULL;
    *n = 0;
    if (!in)
        return BAD(e, "input", "'input' is required");
    size_t cnt = json_is_array(in) && !is_id_array(in) ? json_array_size(in) : 1;
    if (json_is_array(in) && json_array_size(in) == 0)
        return BAD(e, "input", "'input' is an empty list; give at least one string or token list");
    if (!json_is_string(in) && !json_is_array(in))
        return BAD(e, "input",
                   "'input' must be a string, a list of strings, a list of token ids or a list of such "
                   "lists");
    if (cnt > EMBD_MAX_INPUTS)
        return BAD(e, "input", "'input' has %zu items; at most %d are taken per request", cnt, EMBD_MAX_INPUTS);
    struct embd_input *v = calloc(cnt, sizeof *v);
    if (!v)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    *out = v;
    *n = (int)cnt;
    size_t bytes = 0;
    const bool one = json_is_string(in) || is_id_array(in);
    const bool texts = json_is_string(one ? in : json_array_get(in, 0));
    for (size_t i = 0; i < cnt; i++) {
        const json_t *x = one ? in : json_array_get(in, i);
        if (json_is_string(x) && texts) {
            v[i].text = json_string_value(x);
            v[i].len = json_string_length(x);
            if (v[i].len == 0)
                return BAD(e, "input", "input[%zu] is an empty string; every input needs at least one token", i);
            if ((bytes += v[i].len) > EMBD_MAX_TEXT_BYTES)
                return BAD(e, "input",
                           "the inputs hold more than %zu bytes of text (at input[%zu]); send them in several "
                           "requests",
                           EMBD_MAX_TEXT_BYTES, i);
        } else if (is_id_array(x) && !texts) {
            v[i].ids = x;
        } else if (json_is_array(x) && json_array_size(x) == 0 && !texts) {
            return BAD(e, "input", "input[%zu] is an empty token list; every input needs at least one token", i);
        } else {
            return BAD(e, "input",
                       "input[%zu] must be %s, as the first input is (a list holds strings or token lists, not both)",
                       i, texts ? "a string" : "a list of integer token ids");
        }
    }
    return 0;
}

/* Tokens of each input, checked against the vocabulary and the context. */
static int tokenize_inputs(const struct api_model *m, struct embd_input *v, int n, struct api_error *e)
{
    const int32_t n_vocab = tok_n_vocab(m->vocab);
    const size_t maxp = tok_piece_max(m->vocab);
    for (int i = 0; i < n; i++) {
        struct embd_input *x = &v[i];
        if (x->ids) {
            size_t k = json_array_size(x->ids);
            if (k > (size_t)m->n_ctx)
                return api_error_set(e, 400, "invalid_request_error", "input", "context_length_exceeded",
                                     "input[%d] has %zu tokens; this model's maximum context length is %d tokens", i, k,
                                     m->n_ctx);
            x->tok = malloc(k * sizeof *x->tok);
            if (!x->tok)
                return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            for (size_t j = 0; j < k; j++) {
                json_int_t id = json_integer_value(json_array_get(x->ids, j));
                if (id < 0 || id >= n_vocab)
                    return BAD(e, "input", "input[%d]: token id %lld is outside the vocabulary (0 to %d)", i,
                               (long long)id, n_vocab - 1);
                x->tok[j] = (int32_t)id;
            }
            x->n_tok = (int)k;
            continue;
        }
        /* No token is longer than maxp bytes: a text that must make more
         * tokens than the context holds is refused before tokenizing it. */
        if (maxp && x->len / maxp > (size_t)m->n_ctx)
            return api_error_set(e, 400, "invalid_request_error", "input", "context_length_exceeded",
                                 "input[%d] has %zu bytes, at least %zu tokens; this model's maximum context length "
                                 "is %d tokens",
                                 i, x->len, x->len / maxp, m->n_ctx);
        struct lmd_err err = {0};
        size_t cap = x->len + 4;
        x->tok = malloc(cap * sizeof *x->tok);
        int64_t k = x->tok ? tok_encode(m->vocab, x->text, x->len, true, false, x->tok, cap, &err) : LMD_ENOMEM;
        if (k > (int64_t)cap) {
            cap = (size_t)k;
            int32_t *more = realloc(x->tok, cap * sizeof *x->tok);
            k = more ? tok_encode(m->vocab, x->text, x->len, true, false, more, cap, &err) : LMD_ENOMEM;
            x->tok = more ? more : x->tok;
        }
        if (k < 0 || k > (int64_t)cap)
            return api_error_set(e, k == LMD_ENOMEM ? 500 : 400, "invalid_request_error", "input", NULL,
                                 "cannot tokenize input[%d]: %s", i, k == LMD_ENOMEM ? "out of memory" : err.msg);
        if (k == 0)
            return BAD(e, "input", "input[%d] makes no tokens", i);
        if (k > m->n_ctx)
            return api_error_set(e, 400, "invalid_request_error", "input", "context_length_exceeded",
                                 "input[%d] has %lld tokens; this model's maximum context length is %d tokens", i,
                                 (long long)k, m->n_ctx);
        x->n_tok = (int)k;
    }
    return 0;
}

static void inputs_free(struct embd_input *v, int n)
{
    for (int i = 0; v && i < n; i++)
        free(v[i].tok);
    free(v);
}

/* ---- the call ---------------------------------------------------------------- */

static void call_free(struct embd_call *c)
{
    qos_finished(c->api->cfg.qos, &c->who.ticket, c->n_prompt, lmd_time_mono_ns());
    atomic_fetch_sub(&c->api->active, 1);
    lmd_arena_destroy(c->arena); /* c too */
}

static void call_ref(struct embd_call *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

static void call_unref(struct embd_call *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        call_free(c);
}

static void call_cancel_all(struct embd_call *c)
{
    for (int i = 0; i < c->n; i++)
        if (atomic_load(&c->item[i].sr.finish) == SCHED_RUNNING)
            sched_req_cancel(c->m->m.sched, &c->item[i].sr);
}

/* Count, log and settle the call, once, on its I/O thread. */
static void call_account(struct embd_call *c, int status)
{
    if (c->status)
        return;
    c->status = status;
    uint64_t now = lmd_time_mono_ns();
    qos_finished(c->api->cfg.qos, &c->who.ticket, c->n_prompt, now);
    obs_request_done(obs_status_of(status), c->m->index, c->who.cls, c->who.tenant);
    double e2e = (double)(now - c->t_start) / 1e9;
    if (status == 200)
        obs_observe_model(OBS_H_E2E, c->m->index, c->who.cls, e2e);
    uint64_t admit = atomic_load_explicit(&c->item[0].sr.t_admit_ns, memory_order_relaxed);
    struct obs_access acc = {
        .id = c->who.rid,
        .method = "POST",
        .path = "/v1/embeddings",
        .status = status,
        .cls = c->who.cls,
        .tenant = c->who.tenant,
        .model = c->m->m.id,
        .prompt_tokens = c->n_prompt,
        .output_tokens = 0,
        .queue_s = admit >= c->t_start ? (double)(admit - c->t_start) / 1e9 : -1,
        .ttft_s = -1,
        .e2e_s = e2e,
        .finish = status == 200   ? "stop"
                  : status == 499 ? "cancelled"
                                  : "error",
    };
    obs_access_log(&acc);
}

static void call_fail(struct embd_call *c, int status, const char *code, const char *msg)
{
    if (status >= 500 && status != 503)
        LMD_ERROR("api: %s: %s", c->who.rid, msg);
    call_cancel_all(c);
    struct api_error e;
    api_error_set(&e, status, status < 500 ? "invalid_request_error" : "server_error", NULL, code, "%s", msg);
    call_account(c, status);
    api_send_error(c->http, &e, status == 503 ? "retry-after" : NULL, status == 503 ? "1" : NULL);
    c->done = true;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Append n bytes as standard base64 with padding. */
static void put_base64(struct lmd_buf *b, const unsigned char *p, size_t n)
{
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            w |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            w |= p[i + 2];
        q[0] = b64[(w >> 18) & 63];
        q[1] = b64[(w >> 12) & 63];
        q[2] = i + 1 < n ? b64[(w >> 6) & 63] : '=';
        q[3] = i + 2 < n ? b64[w & 63] : '=';
        lmd_buf_append(b, q, 4);
    }
}

static void send_answer(struct embd_call *c)
{
    struct lmd_buf b = {0};
    lmd_buf_printf(&b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < c->n; i++) {
        const float *v = c->vec + (size_t)i * (size_t)c->n_embd;
        lmd_buf_printf(&b, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        if (c->base64) {
            /* float32, little-endian, whatever this machine's order. */
            lmd_buf_append(&b, "\"", 1);
            unsigned char *raw = malloc((size_t)c->n_embd * 4);
            if (!raw) {
                lmd_buf_free(&b);
                break;
            }
            for (int d = 0; d < c->n_embd; d++) {
                uint32_t w;
                memcpy(&w, &v[d], 4);
                for (int k = 0; k < 4; k++)
                    raw[(size_t)d * 4 + (size_t)k] = (unsigned char)(w >> (8 * k));
            }
            put_base64(&b, raw, (size_t)c->n_embd * 4);
            free(raw);
            lmd_buf_append(&b, "\"}", 2);
        } else {
            /* %.9g: enough digits that the float reads back bit for bit. */
            lmd_buf_append(&b, "[", 1);
            for (int d = 0; d < c->n_embd; d++)
                lmd_buf_printf(&b, "%s%.9g", d ? "," : "", (double)v[d]);
            lmd_buf_append(&b, "]}", 2);
        }
    }
    if (b.ptr)
        lmd_buf_printf(&b, "],\"model\":\"%s\",\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}", c->m->id_json,
                       c->n_prompt, c->n_prompt);
    if (!b.ptr) {
        call_account(c, 500);
        struct api_error e;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        api_send_error(c->http, &e, NULL, NULL);
    } else {
        call_account(c, 200);
        http_respond(c->http, 200, "application/json", b.ptr, b.len, NULL, NULL);
    }
    lmd_buf_free(&b);
}

/* I/O thread, after the engine thread reported progress. */
static void call_pump(struct embd_call *c)
{
    if (!c->http || c->done)
        return;
    bool all = true;
    /* A client gone while it waited: once every input has stopped, the
     * request is answered into the void (so that it is disposed) and
     * counted as cancelled. */
    if (c->gone) {
        for (int i = 0; i < c->n; i++)
            all &= atomic_load_explicit(&c->item[i].sr.finish, memory_order_acquire) != SCHED_RUNNING;
        if (!all)
            return;
        c->done = true;
        call_account(c, 499);
        struct api_error e;
        api_error_set(&e, 499, "invalid_request_error", NULL, "client_closed", "the client closed its connection");
        api_send_error(c->http, &e, NULL, NULL);
        return;
    }
    for (int i = 0; i < c->n; i++) {
        int fin = atomic_load_explicit(&c->item[i].sr.finish, memory_order_acquire);
        if (fin == SCHED_FINISH_ERROR) {
            int st = c->item[i].sr.err_status;
            call_fail(c, st >= 400 && st <= 599 ? st : 500, NULL, c->item[i].sr.err);
            return;
        }
        if (fin == SCHED_FINISH_DEADLINE) {
            obs_reject(OBS_R_DEADLINE, c->who.tenant);
            call_fail(c, 503, "deadline_unmeetable",
                      "the request could not start within its service class's time-to-first-token target; retry "
                      "later or use a class that runs late work");
            return;
        }
        if (fin == SCHED_FINISH_SHUTDOWN || fin == SCHED_FINISH_CANCELLED) {
            call_fail(c, 503, "server_shutdown", "the server shut down before the embeddings were computed");
            return;
        }
        all &= fin == SCHED_FINISH_STOP;
    }
    if (c->who.ticket.state == QOS_TICKET_QUEUED)
        for (int i = 0; i < c->n; i++)
            if (atomic_load_explicit(&c->item[i].sr.state, memory_order_relaxed) != SCHED_ST_QUEUED) {
                qos_started(c->api->cfg.qos, &c->who.ticket);
                break;
            }
    if (!all)
        return;
    c->done = true;
    send_answer(c);
}

static void call_task(struct http_task *t)
{
    struct embd_call *c = (struct embd_call *)((char *)t - offsetof(struct embd_call, task));
    call_pump(c);
    call_unref(c);
}

/* Engine thread: wake the call's I/O thread (the task holds a reference). */
static void item_notify(struct sched_req *r)
{
    struct embd_call *c = ((struct embd_item *)r)->call;
    call_ref(c);
    if (!http_post(c->loop, &c->task))
        call_unref(c);
}

static void item_release(struct sched_req *r) { call_unref(((struct embd_item *)r)->call); }

static void call_closed(void *ctx)
{
    struct embd_call *c = ctx;
    c->http = NULL;
    if (!c->done)
        call_account(c, 499);
    call_ref(c);
    call_cancel_all(c);
    for (int i = 0; i < c->n; i++)
        sched_req_unref(&c->item[i].sr);
    call_unref(c);
}

static void call_gone(void *ctx)
{
    struct embd_call *c = ctx;
    LMD_INFO("api: %s: the client closed its connection; cancelling", c->who.rid);
    c->gone = true;
    call_cancel_all(c);
    call_pump(c); /* every input may have finished already */
}

/* Build the call and queue every input; on failure nothing is queued and
 * e says why. */
static int call_submit(struct api *a, const struct api__model *m, struct http_req *r, struct embd_input *in, int n,
                       int n_prompt, bool base64, struct api_who *who, struct api_error *e)
{
    const int E = m->m.n_embd;
    size_t first = sizeof(struct embd_call) + (size_t)n * sizeof(struct embd_item) + (size_t)n * (size_t)E * 4 +
                   (size_t)n_prompt * 4 + (size_t)n * 3 * 16 + 4096;
    for (int i = 0; i < n; i++)
        first += (size_t)sched_blocks_for(m->m.sched, in[i].n_tok) * sizeof(int32_t);
    struct lmd_arena *arena = lmd_arena_create(first);
    struct embd_call *c = arena ? lmd_arena_calloc(arena, sizeof *c + (size_t)n * sizeof c->item[0]) : NULL;
    float *vec = c ? lmd_arena_alloc(arena, (size_t)n * (size_t)E * sizeof(float)) : NULL;
    if (!vec) {
        lmd_arena_destroy(arena);
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    c->arena = arena;
    c->api = a;
    c->m = m;
    c->loop = http_req_loop(r);
    c->task.fn = call_task;
    c->who = *who;
    who->ticket.state = QOS_TICKET_NONE; /* the call's now: call_free settles it */
    c->t_start = who->t_arrival_ns ? who->t_arrival_ns : lmd_time_mono_ns();
    c->n_embd = E;
    c->n_prompt = n_prompt;
    c->base64 = base64;
    c->vec = vec;
    c->n = n;
    atomic_fetch_add(&a->active, 1);
    atomic_store(&c->refs, n); /* one per item, dropped by its release */
    const uint64_t sched_id = atomic_fetch_add(&a->seq, 1) * API_MAX_N;
    bool oom = false;
    for (int i = 0; i < n; i++) {
        struct embd_item *it = &c->item[i];
        sched_req_init(&it->sr);
        it->call = c;
        int32_t *prompt = lmd_arena_alloc(arena, (size_t)in[i].n_tok * sizeof *prompt);
        it->sr.block_table =
            lmd_arena_alloc(arena, (size_t)sched_blocks_for(m->m.sched, in[i].n_tok) * sizeof(int32_t));
        if (!prompt || !it->sr.block_table)
            oom = true;
        else
            memcpy(prompt, in[i].tok, (size_t)in[i].n_tok * sizeof *prompt);
        it->sr.prompt = prompt;
        it->sr.n_prompt = in[i].n_tok;
        it->sr.max_tokens = 0;
        it->sr.embd = vec + (size_t)i * (size_t)E;
        it->sr.cls = c->who.cls;
        it->sr.tenant = c->who.tenant;
        it->sr.id = sched_id + (uint64_t)i;
        it->sr.t_arrival_ns = c->t_start;
        it->sr.notify = item_notify;
        it->sr.release = item_release;
    }
    if (oom) {
        for (int i = 0; i < n; i++)
            sched_req_unref(&c->item[i].sr); /* the last one frees c */
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (api__submit_all(m->m.sched, &c->item[0].sr, sizeof c->item[0], n, who->tenant, "input", "input", e) != 0)
        return -1; /* the items' release has freed c */
    c->http = r;
    http_req_on_close(r, call_closed, c);
    http_req_watch_disconnect(r, call_gone, c);
    return 0;
}

/* ---- the trip through a prep worker ---------------------------------------------- */

/* One request between validation and admission. */
struct embd_job {
    struct api_job job; /* first */
    const struct api__model *m;
    struct api_who who;
    json_t *doc;           /* the body; the inputs' text points into it */
    struct embd_input *in; /* [n] */
    int n;
    bool base64;
    int rc; /* the worker's: 0, or e says why */
    struct api_error e;
};

/* A prep worker: every input's tokens. */
static void embd_run(struct api_job *jb)
{
    struct embd_job *j = (struct embd_job *)jb;
    j->rc = tokenize_inputs(&j->m->m, j->in, j->n, &j->e);
}

/* Back on the request's I/O thread: the queue's bound, admission, then
 * the scheduler. */
static void embd_done(struct api_job *jb, struct http_req *r)
{
    struct embd_job *j = (struct embd_job *)jb;
    struct api *a = jb->a;
    struct qos *q = a->cfg.qos;
    const struct api__model *m = j->m;
    struct api_error *e = &j->e;
    const char *hname = NULL, *hvalue = NULL;
    char retry[16];
    if (!r || atomic_load(&jb->gone)) {
        /* The client left while its inputs were tokenized: logged and
         * counted as cancelled; an HTTP/1.1 request still there is
         * answered into the void, so that it is disposed. */
        api_error_set(e, 499, "invalid_request_error", NULL, "client_closed", "the client closed its connection");
        if (!r) {
            api__log_gone(j->who.rid, "/v1/embeddings", m, j->who.cls, j->who.tenant);
            return;
        }
        goto fail;
    }
    if (j->rc != 0)
        goto fail;
    /* Each input waits as a request of its own: more than the queue can
     * ever hold would be refused as busy on every retry. */
    const int n = j->n, cls = j->who.cls, tenant = j->who.tenant;
    const int qcap = sched_queue_limit(m->m.sched, cls);
    if (n > qcap) {
        BAD(e, "input",
            "'input' has %d items; this server queues at most %d requests of this class per model (--max-queue), "
            "one per input: send at most %d inputs per request",
            n, qcap, qcap);
        goto fail;
    }
    int64_t n_prompt = 0;
    for (int i = 0; i < n; i++)
        n_prompt += j->in[i].n_tok;
    if (n_prompt > INT32_MAX / 2) {
        BAD(e, "input", "the inputs make %lld tokens, too many for one request", (long long)n_prompt);
        goto fail;
    }
    /* Admission: the tenant's buckets are charged the prompt tokens. */
    struct qos_refusal why = {0};
    if (qos_admit(q, tenant, cls, n_prompt, lmd_time_mono_ns(), &j->who.ticket, &why) != 0) {
        obs_reject(why.reason, tenant);
        api_admit_error(e, &why, retry, sizeof retry, &hname, &hvalue);
        goto fail;
    }
    if (call_submit(a, m, r, j->in, n, (int)n_prompt, j->base64, &j->who, e) != 0) {
        /* The ticket is the call's when it was built; else settle it here. */
        qos_finished(q, &j->who.ticket, 0, lmd_time_mono_ns());
        if (e->status == 503) {
            hname = "retry-after";
            hvalue = "1";
        }
        goto fail;
    }
    return;
fail:
    api_log_refusal(a, r, j->who.rid, e->status, m, j->who.cls, j->who.tenant);
    api_send_error(r, e, hname, hvalue); /* before the document goes: e->param may be one of its keys */
}

static void embd_free(struct api_job *jb)
{
    struct embd_job *j = (struct embd_job *)jb;
    inputs_free(j->in, j->n);
    json_decref(j->doc);
    free(j);
}

static const struct api_job_ops embd_ops = {.run = embd_run, .done = embd_done, .free = embd_free};

/* ---- the route ---------------------------------------------------------------- */

void api_embd_route(struct api *a, struct http_req *r, int tenant, const char *rid)
{
    struct api_error e = {0};
    struct qos *q = a->cfg.qos;
    struct api_who who = {
        .tenant = tenant, .cls = qos_tenant(q, tenant)->default_class, .t_arrival_ns = lmd_time_mono_ns()};
    snprintf(who.rid, sizeof who.rid, "%s", rid);
    const struct api__model *m = NULL;
    struct embd_input *in = NULL;
    int n = 0;
    const char *hname = NULL, *hvalue = NULL;
    json_t *doc = NULL;
    if (api__check_body(a, r, tenant, &e, &hname, &hvalue) != 0)
        goto fail;
    struct http_str body = http_req_body(r);
    json_error_t jerr;
    doc = json_loadb(body.ptr, body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc || !json_is_object(doc)) {
        if (doc)
            BAD(&e, NULL, "the body must be a JSON object");
        else
            BAD(&e, NULL, "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    /* Every member is known: one lmd does not act on would change what a
     * client gets back without saying so. `user` only labels the caller. */
    const char *key;
    json_t *val;
    json_object_foreach(doc, key, val)
    {
        static const char *const known[] = {"input", "model", "encoding_format", "dimensions", "user", "priority"};
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok |= strcmp(key, known[k]) == 0;
        if (!ok) {
            api_error_set(&e, 400, "invalid_request_error", key, "unsupported_parameter",
                          "'%.64s' is not a field of /v1/embeddings that lmd supports (input, model, "
                          "encoding_format, dimensions, user, priority)",
                          key);
            goto fail;
        }
    }
    json_t *mv = json_object_get(doc, "model"), *fv = json_object_get(doc, "encoding_format");
    json_t *dv = json_object_get(doc, "dimensions"), *uv = json_object_get(doc, "user");
    json_t *pv = json_object_get(doc, "priority");
    if (mv && !json_is_string(mv) && !json_is_null(mv)) {
        BAD(&e, "model", "'model' must be a string");
        goto fail;
    }
    if (uv && !json_is_string(uv) && !json_is_null(uv)) {
        BAD(&e, "user", "'user' must be a string");
        goto fail;
    }
    bool base64 = false;
    if (fv && !json_is_null(fv)) {
        const char *f = json_is_string(fv) ? json_string_value(fv) : "";
        if (!strcmp(f, "base64")) {
            base64 = true;
        } else if (strcmp(f, "float") != 0) {
            BAD(&e, "encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
            goto fail;
        }
    }
    /* Route by `model`: with one model it may be left out. */
    bool named = mv && json_is_string(mv);
    if (named || a->n_models > 1) {
        int mi = named ? api_model_find(a, json_string_value(mv), json_string_length(mv)) : -1;
        if (mi < 0) {
            if (!named)
                api_error_set(&e, 400, "invalid_request_error", "model", "model_required",
                              "'model' is required: this server serves %d models", a->n_models);
            else
                api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                              "the model '%.128s' does not exist", json_string_value(mv));
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
    if (m->m.forwards || m->m.n_embd <= 0) {
        api_error_set(&e, 501, "invalid_request_error", "model", "unsupported_model",
                      m->m.forwards ? "the model '%s' is served by upstream servers, and lmd does not forward "
                                      "/v1/embeddings to them"
                                    : "the model '%s' runs on the %s engine, which does not compute embeddings; "
                                      "serve it with --device cpu for /v1/embeddings",
                      m->m.id, m->m.engine ? m->m.engine : "its");
        goto fail;
    }
    if (dv && !json_is_null(dv)) {
        if (!json_is_integer(dv) || json_integer_value(dv) < 1) {
            BAD(&e, "dimensions", "'dimensions' must be a positive integer");
            goto fail;
        }
        if (json_integer_value(dv) != m->m.n_embd) {
            BAD(&e, "dimensions",
                "the model '%s' gives embeddings of %d dimensions and is not known to be trained for shorter ones "
                "(Matryoshka); 'dimensions' must be %d or left out",
                m->m.id, m->m.n_embd, m->m.n_embd);
            goto fail;
        }
    }
    /* The service class, as for generation: the body's priority or the
     * headers, within what the tenant may use. */
    struct api_params p;
    memset(&p, 0, sizeof p);
    if (pv && json_is_string(pv)) {
        p.priority = json_string_value(pv);
        p.priority_len = json_string_length(pv);
    } else if (pv && json_is_integer(pv)) {
        p.priority_num = json_integer_value(pv);
        p.priority_num_set = true;
    } else if (pv && !json_is_null(pv)) {
        BAD(&e, "priority", "'priority' must be a service class name or an integer");
        goto fail;
    }
    enum obs_reject reason = OBS_R__N;
    int cls = api_pick_class(a, r, &p, tenant, &e, &reason);
    if (cls < 0) {
        obs_reject(reason, tenant);
        goto fail;
    }
    who.cls = cls;
    if (parse_inputs(json_object_get(doc, "input"), &in, &n, &e) != 0)
        goto fail;
    /* Tokenizing, admission and submission go on through a prep worker
     * and back (embd_run, embd_done): the job takes the document and the
     * inputs. */
    struct embd_job *j = calloc(1, sizeof *j);
    if (!j) {
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    j->job.ops = &embd_ops;
    j->m = m;
    j->who = who;
    j->doc = doc;
    j->in = in;
    j->n = n;
    j->base64 = base64;
    if (api__prep_queue(a, &j->job, r) == 0)
        return;
    j->doc = NULL;
    j->in = NULL;
    embd_free(&j->job);
    api__prep_busy(a, &e, tenant);
    hname = "retry-after";
    hvalue = "1";
fail:
    if (!m && a->n_models == 1)
        m = &a->models[0];
    api_log_refusal(a, r, rid, e.status, m, who.cls, who.tenant);
    api_send_error(r, &e, hname, hvalue); /* before the document goes: e.param may be one of its keys */
    inputs_free(in, n);
    json_decref(doc);
}
