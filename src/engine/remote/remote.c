/*
 * The remote engine: a pool of upstream OpenAI-compatible servers (lmd
 * replicas, llama.cpp's llama-server, vLLM, SGLang, Ollama …) behind the
 * request-level contract of engine.h, so that lmd's admission, service
 * classes, deadlines and fair share decide what runs and when, and the
 * upstreams only ever see as many requests as they can serve at once.
 *
 * Threads: the scheduler thread calls submit/poll/cancel; one event-loop
 * thread of this engine (h2o's evloop) owns every upstream socket. They
 * meet through two queues: an inbox of submissions and cancellations
 * (mutex + h2o's cross-thread message to wake the loop) and an outbox of
 * events (mutex; engine.wake tells the scheduler). Nothing blocks: the loop
 * never waits on the scheduler and the scheduler never waits on a socket.
 *
 * A request: the scheduler admits it within the pool's concurrency (the
 * sum of the backends' limits); the loop thread picks a backend (by
 * predicted time to first token, fewest in flight, or round robin), sends
 * the request as lmd validated it — `model` set to the backend's, `stream`
 * on and usage asked for — over a keep-alive connection, and re-frames the
 * upstream's SSE deltas as text events. The upstream's usage ends it with
 * the real token counts. A failure before the first byte of output
 * (connection refused, a 5xx, no answer in time) is retried on another
 * backend while the request's deadline and the retry budget allow; after
 * output has begun the request ends with an error (the client's stream
 * gets a clean error event). A 4xx is the client's mistake as the upstream
 * saw it: passed back, with the upstream's message, never retried.
 *
 * Health: each backend is probed every health_ms (GET of its kind's health
 * path); fail_threshold consecutive failures, probes or requests alike
 * (connect errors, 5xx, timeouts), eject it: no request goes to it until a
 * probe succeeds again (a circuit breaker whose half-open state is the
 * probe). A backend whose kind is not given is asked once for /v1/models,
 * whose owned_by names the server (lmd, llamacpp, vllm, sglang, ollama),
 * and whose single model id is sent when the pool's name is not listed.
 *
 * Cancellation: engine_cancel closes the upstream connection (a streaming
 * server notices and stops generating); a request still waiting for a
 * backend is dropped at once.
 *
 * Transports: HTTP/1.1 (http://, https://) through h2o's client and a
 * keep-alive socket pool per backend; HTTP/2 (h2c:// in clear with prior
 * knowledge, h2:// over TLS with ALPN) through h2client.c, one connection
 * per backend carrying every request and probe as a stream, reopened
 * after a GOAWAY or a close. Both feed the same response handling
 * (resp_head, resp_body, resp_end); a cancellation resets only its stream.
 *
 * Not here: TLS certificates of its own (https upstreams are verified
 * against the system's CAs, or the configured CA file).
 */
#include "engine/engine.h"
#include "engine/remote/h2client.h"
#include "engine/remote/sse_json.h"

#include "core/buf.h"
#include "core/log.h"
#include "core/time.h"
#include "obs/obs.h"

#include <h2o.h>
#include <h2o/http1client.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REMOTE_ERR_BODY_MAX (64 * 1024) /* bytes of an upstream's error answer kept */
/* Prefix affinity: a prompt is cut into blocks of this many bytes (about
 * 16 tokens) whose hashes chain; each backend keeps an approximate index
 * of the chains it was sent. */
#define REMOTE_BLOCK_BYTES 64
#define REMOTE_BLOCK_TOKENS 16
#define REMOTE_INDEX_WAYS 8
#define REMOTE_INDEX_SETS 8192 /* x ways: 65536 block hashes per backend, 768 KiB */

/* lmd_upstream_response_head_seconds' buckets (s): loopback to long prefills. */
#define REMOTE_N_BUCKETS 14
static const double remote_buckets[REMOTE_N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                        0.25,  0.5,    1,     2.5,  5,     10,   30};

/* Why a request went where it went (lmd_upstream_routed_total's reason). */
enum route_reason { RR_TTFT, RR_PREFIX, RR_RENDEZVOUS, RR_LEAST, RR_ROUND_ROBIN, RR_RETRY, RR__N };
static const char *const route_reason_names[RR__N] = {"ttft", "prefix", "rendezvous", "least", "rr", "retry"};
#define REMOTE_SSE_LINE_MAX (8 << 20) /* one SSE event; more is a broken upstream */
#define REMOTE_SCRAPE_MAX (4 << 20)   /* bytes of an upstream's /metrics read */
#define REMOTE_EXT_PROMPT 256         /* prompt tokens a request of others weighs before any of ours went there */
#define REMOTE_LEARN_MAX 64           /* the most requests at once a backend's own word sets (limit_learned) */
#define REMOTE_PROBE_MS 5000          /* a health probe or scrape without an answer by then failed */

struct remote;
struct rcall;

struct rbackend {
    struct remote *re;
    int index;
    _Atomic bool active; /* the slot holds a backend (set last when it is filled, under g_reg_mu) */
    bool removed;        /* loop: dropped by a reconfiguration; serves what it has, then its slot frees */
    char url[256];
    char host[128];
    int port;
    bool tls;
    bool h2; /* h2c:// or h2://: one HTTP/2 connection carries all its requests */
    char prefix[128];
    char hostport[160];
    enum remote_kind kind;
    bool kind_given;
    char model[128]; /* sent as `model` */
    int max_inflight;
    bool limit_given;  /* max_inflight configured (the backend's or the pool's): never learned */
    bool limit_asked;  /* its capacity was asked for (or cannot be) */
    bool asking_limit; /* the probe out asks its capacity (/props, /get_server_info) */
    uint64_t url_hash; /* its rendezvous identity */
    h2o_socketpool_t pool;
    /* Loop thread only. */
    uint64_t *idx_hash; /* [REMOTE_INDEX_SETS * WAYS] block hashes sent to it (0 = empty) */
    uint32_t *idx_tick; /* when each was last sent or matched */
    int inflight;
    long pending_prefill; /* estimated prompt tokens sent and not yet answered with a first byte */
    double prefill_rate;  /* tokens/s, moving average of prompt / time to first byte; 0 = not measured */
    int fails;            /* consecutive failures */
    bool healthy;
    bool probed_models; /* /v1/models asked (kind or model learned) */
    bool scraping;      /* the probe out is a /metrics scrape */
    bool metrics_off;   /* its /metrics answered other than 200: not asked again */
    double avg_prompt;  /* prompt tokens of the requests sent to it, a moving average */
    int ext_load;       /* requests its gauges counted beyond those in flight from here, when last scraped */
    _Atomic int g_up_running, g_up_waiting; /* its own gauges, as last scraped; -1 = not known */
    h2o_http1client_t *probe;
    struct h2cli_conn *h2conn;    /* HTTP/2: the connection new streams go on; NULL until needed */
    struct h2cli_stream probe_hs; /* HTTP/2: the probe's stream */
    bool probe_h2;                /* HTTP/2: a probe is out on probe_hs */
    struct lmd_buf probe_body;
    const char *probe_path;
    char probe_req[512];
    h2o_iovec_t probe_iov;
    h2o_timeout_entry_t probe_timer;
    /* For /metrics (any thread, relaxed). */
    _Atomic uint64_t n_ok, n_error, n_cancelled, n_refused, n_retried, n_ejected;
    _Atomic uint64_t n_routed[RR__N];
    _Atomic int g_inflight, g_healthy;
    _Atomic uint64_t fb_ns_sum, fb_count;         /* time to the response head */
    _Atomic uint64_t fb_bucket[REMOTE_N_BUCKETS]; /* of those, at most remote_buckets[i] seconds (not cumulative) */
};

/* An inbox entry: a submission or a cancellation of one call. */
struct rlink {
    struct rlink *next;
    struct rcall *c;
    bool cancel;
};

struct rcall {
    struct remote *re;
    struct engine_req *rq;
    _Atomic int refs;                    /* the loop's, the scheduler's, a cancellation in flight, a callback running */
    struct rlink sub, can;               /* its inbox entries */
    struct rcall *next;                  /* the waiting list */
    struct rcall *live_prev, *live_next; /* loop: calls not yet finished */
    json_t *body;                        /* the request to send (model set per backend) */
    bool chat;
    uint64_t *chain; /* [n_chain] hash chain of the prompt's blocks */
    int n_chain;
    int uncached; /* loop: prompt tokens the chosen backend is expected to compute */
    /* Loop thread only. */
    struct rbackend *b;
    h2o_http1client_t *client;
    char *head, *payload;
    h2o_iovec_t iov[2];
    int attempts;
    unsigned tried;      /* bit per backend */
    bool waiting;        /* in the waiting list (no backend free) */
    bool got_head;       /* the upstream answered with a status line */
    bool any_output;     /* a text event was posted: no retry from here on */
    bool reissued;       /* handed to another backend once after output had begun */
    bool connecting;     /* inside h2o_http1client_connect_with_pool: a callback now means a pooled socket */
    bool reused;         /* this attempt went out on a kept-alive connection */
    bool stale_retried;  /* sent again once on a new connection after a kept-alive one broke */
    int n_pieces;        /* text events posted */
    int pieces_before;   /* of those, posted before the re-issue */
    struct lmd_buf sent; /* completions: the text posted so far (for a re-issue) */
    bool finished;       /* the finish event was posted */
    bool cancelled;
    int status;
    uint64_t t_sent_ns;
    h2o_timeout_entry_t head_timer;
    struct h2cli_stream hs;         /* HTTP/2: its stream (hs.conn set while one is open) */
    h2o_timeout_entry_t idle_timer; /* HTTP/2: the upstream's longest silence once its head came */
    struct lmd_buf sse;             /* an event not yet complete */
    struct lmd_buf tbuf;            /* one event's text, unescaped */
    struct lmd_buf errbody;
    int usage_prompt, usage_completion;
    enum engine_finish fin;
    bool saw_finish;
};

/* Events out to the scheduler, with their text in one byte buffer
 * (offsets until poll turns them into pointers). */
struct revents {
    struct engine_event *ev;
    size_t *text_off;
    int n, cap, taken;
    struct lmd_buf text;
};

struct remote {
    struct engine eng;
    struct remote_config cfg;
    bool inflight_given; /* cfg.max_inflight came from the configuration, not the default */
    char name[128];
    struct rbackend b[REMOTE_MAX_BACKENDS];
    int n_b;
    unsigned rr;
    uint32_t tick; /* loop: the prefix indexes' clock */
    /* Loop. */
    pthread_t thread;
    h2o_evloop_t *loop;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver, getaddr_receiver;
    h2o_multithread_message_t wake_msg;
    h2o_http1client_ctx_t hctx;
    h2o_timeout_t io_timeout, head_timeout, probe_timeout;
    h2o_timeout_t health_timer;
    h2o_timeout_entry_t health_entry;
    SSL_CTX *ssl_ctx;        /* loop (after start): the one the upstreams' connections use; NULL = none yet */
    SSL_CTX *new_ssl_ctx;    /* made by a reconfiguration for its https upstreams, for the loop to take */
    _Atomic bool has_tls;    /* ssl_ctx is set */
    SSL_CTX *h2_ssl_ctx;     /* loop: the same for h2:// upstreams, offering ALPN h2; NULL = none yet */
    SSL_CTX *new_h2_ssl_ctx; /* made by a reconfiguration, for the loop to take */
    _Atomic bool has_h2_tls; /* h2_ssl_ctx is set */
    bool exiting;
    struct rcall *wait_head, *wait_tail; /* loop: no backend had room */
    struct rcall *live;                  /* loop: calls not yet finished */
    int n_live;
    bool draining_wait; /* loop: inside drain_waiting */
    /* Inbox: scheduler → loop. */
    pthread_mutex_t in_mu;
    struct rlink *in_head, *in_tail;
    bool in_wake_pending;
    bool stop;
    struct remote_backend_config *reconf; /* a new list of upstreams for the loop to apply */
    int n_reconf;
    /* Outbox: loop → scheduler. */
    pthread_mutex_t out_mu;
    struct revents out, cur;
    pthread_mutex_t start_mu;
    pthread_cond_t start_cv;
    bool started;
};

static const char *const kind_names[] = {"auto", "openai", "lmd", "llamacpp", "vllm", "sglang", "ollama"};

const char *remote_kind_name(enum remote_kind k)
{
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : "?";
}

static const char *health_path(enum remote_kind k)
{
    switch (k) {
    case REMOTE_OLLAMA:
        return "/api/version";
    case REMOTE_OPENAI:
    case REMOTE_AUTO:
        return "/v1/models";
    default:
        return "/health";
    }
}

/* The scheme of an upstream URL after its optional KIND+: where the host
 * starts, and whether it is TLS and HTTP/2. -1 for none of ours. */
static int url_scheme(const char *s, const char **rest, bool *tls, bool *h2)
{
    static const struct {
        const char *name;
        bool tls, h2;
    } schemes[] = {
        {"http://", false, false}, {"https://", true, false}, {"h2c://", false, true}, {"h2://", true, true}};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i].name);
        if (strncmp(s, schemes[i].name, n) == 0) {
            *rest = s + n;
            *tls = schemes[i].tls;
            *h2 = schemes[i].h2;
            return 0;
        }
    }
    return -1;
}

bool remote_url_h2(const char *url)
{
    const char *sep = strstr(url, "://"), *plus = strchr(url, '+');
    const char *s = plus && sep && plus < sep ? plus + 1 : url, *rest;
    bool tls, h2;
    return url_scheme(s, &rest, &tls, &h2) == 0 && h2;
}

int remote_url_parse(const char *url, enum remote_kind *kind, char *host, size_t host_cap, int *port, char *prefix,
                     size_t prefix_cap, struct lmd_err *err)
{
    *kind = REMOTE_AUTO;
    const char *p = url;
    /* KIND+ before the scheme (a '+' after "://" is the host's or path's). */
    const char *sep = strstr(url, "://");
    const char *plus = strchr(url, '+');
    if (plus && sep && plus < sep) {
        size_t n = (size_t)(plus - url);
        bool found = false;
        for (size_t k = 1; k < sizeof kind_names / sizeof kind_names[0]; k++)
            if (strlen(kind_names[k]) == n && strncmp(url, kind_names[k], n) == 0) {
                *kind = (enum remote_kind)k;
                found = true;
            }
        if (!found)
            return lmd_err_set(err, LMD_EINVAL,
                               "upstream '%s': unknown kind '%.*s' (openai, lmd, llamacpp, vllm, sglang, ollama)", url,
                               (int)(n > 32 ? 32 : n), url);
        p = plus + 1;
    }
    bool tls = false, h2 = false;
    if (url_scheme(p, &p, &tls, &h2) != 0)
        return lmd_err_set(err, LMD_EINVAL,
                           "upstream '%s': expected [KIND+]http://HOST:PORT, https://, h2c:// (HTTP/2 in clear) or "
                           "h2:// (HTTP/2 over TLS)",
                           url);
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = NULL;
    if (hp && p[0] == '[') {
        const char *rb = memchr(p, ']', hp);
        if (!rb)
            return lmd_err_set(err, LMD_EINVAL, "upstream '%s': unclosed '[' in the address", url);
        colon = (rb + 1 < p + hp && rb[1] == ':') ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', hp);
    }
    size_t hl = colon ? (size_t)(colon - p) : hp;
    if (hl && p[0] == '[')
        p++, hl -= 2;
    if (hl == 0 || hl >= host_cap)
        return lmd_err_set(err, LMD_EINVAL, "upstream '%s': no host, or a host name too long", url);
    memcpy(host, p, hl);
    host[hl] = 0;
    *port = tls ? 443 : 80;
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || end != (slash ? slash : colon + 1 + strlen(colon + 1)) || v < 1 || v > 65535)
            return lmd_err_set(err, LMD_EINVAL, "upstream '%s': the port must be a number in 1..65535", url);
        *port = (int)v;
    }
    prefix[0] = 0;
    if (slash) {
        size_t pl = strlen(slash);
        while (pl && slash[pl - 1] == '/')
            pl--;
        if (pl >= prefix_cap)
            return lmd_err_set(err, LMD_EINVAL, "upstream '%s': the path is too long", url);
        memcpy(prefix, slash, pl);
        prefix[pl] = 0;
    }
    if (tls)
        *port = -*port; /* the caller learns TLS from the sign */
    return 0;
}

/* ---- events to the scheduler ------------------------------------------------- */

static void call_ref(struct rcall *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

static void call_unref(struct rcall *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    json_decref(c->body);
    free(c->chain);
    free(c->head);
    free(c->payload);
    lmd_buf_free(&c->sse);
    lmd_buf_free(&c->tbuf);
    lmd_buf_free(&c->sent);
    lmd_buf_free(&c->errbody);
    free(c);
}

/* Loop thread: queue one event; wake the scheduler if the outbox was empty. */
static void post_event(struct remote *re, const struct engine_event *ev, const char *text, size_t len)
{
    pthread_mutex_lock(&re->out_mu);
    struct revents *o = &re->out;
    bool was_empty = o->n == 0;
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        struct engine_event *e = realloc(o->ev, (size_t)cap * sizeof *e);
        size_t *t = e ? realloc(o->text_off, (size_t)cap * sizeof *t) : NULL;
        if (e)
            o->ev = e;
        if (t)
            o->text_off = t;
        if (!e || !t) {
            pthread_mutex_unlock(&re->out_mu);
            LMD_ERROR("remote %s: out of memory queueing an event; the request is lost", re->name);
            return;
        }
        o->cap = cap;
    }
    o->ev[o->n] = *ev;
    o->text_off[o->n] = o->text.len;
    if (len && lmd_buf_append(&o->text, text, len) != 0)
        o->ev[o->n].text_len = 0;
    else
        o->ev[o->n].text_len = len;
    o->n++;
    pthread_mutex_unlock(&re->out_mu);
    if (was_empty && re->eng.wake)
        re->eng.wake(re->eng.wake_ud);
}

static void post_text(struct rcall *c, const char *s, size_t n)
{
    if (n == 0 || c->finished)
        return;
    c->any_output = true;
    c->n_pieces++;
    if (!c->chat && c->re->n_b > 1)
        lmd_buf_append(&c->sent, s, n);
    struct engine_event ev = {.req = c->rq, .kind = ENGINE_EV_TEXT};
    post_event(c->re, &ev, s, n);
}

static void backend_release(struct rcall *c);
static void drain_waiting(struct remote *re);

/* Let go of c's HTTP/2 stream if one is open: the upstream gets
 * RST_STREAM(CANCEL) for it alone, the connection stays for the others. */
static void call_h2_drop(struct rcall *c)
{
    if (h2o_timeout_is_linked(&c->idle_timer))
        h2o_timeout_unlink(&c->idle_timer);
    if (c->hs.conn)
        h2cli_cancel(&c->hs);
}

/* The last event of a call; the loop's reference goes with it (a callback
 * still running holds its own). */
static void post_finish(struct rcall *c, enum engine_finish fin, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void post_finish(struct rcall *c, enum engine_finish fin, int status, const char *fmt, ...)
{
    if (c->finished)
        return;
    c->finished = true;
    call_h2_drop(c);
    backend_release(c);
    if (c->reissued && c->usage_completion >= 0) {
        /* The second upstream counted the first one's text as prompt. */
        c->usage_completion += c->pieces_before;
        if (c->usage_prompt >= 0)
            c->usage_prompt = c->usage_prompt > c->pieces_before ? c->usage_prompt - c->pieces_before : 0;
    }
    struct engine_event ev = {.req = c->rq,
                              .kind = ENGINE_EV_FINISH,
                              .finish = fin,
                              .status = status,
                              .prompt_tokens = c->usage_prompt,
                              .completion_tokens = c->usage_completion};
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ev.err, sizeof ev.err, fmt, ap);
        va_end(ap);
    }
    if (fin == ENGINE_FINISH_ERROR)
        LMD_WARN("remote %s: request %llu: %s", c->re->name, (unsigned long long)c->rq->id, ev.err);
    struct remote *re = c->re;
    re->n_live--;
    if (c->live_prev)
        c->live_prev->live_next = c->live_next;
    else
        re->live = c->live_next;
    if (c->live_next)
        c->live_next->live_prev = c->live_prev;
    post_event(re, &ev, NULL, 0);
    call_unref(c);
    drain_waiting(re); /* its slot may start a waiting one */
}

/* ---- backends ------------------------------------------------------------------ */

/* The seats the scheduler may fill: the healthy backends' limits, at least
 * one (a request admitted while none is healthy ends at once with a 503,
 * rather than waiting for a backend that may not come back). */
static void seats_update(struct remote *re)
{
    int n = 0;
    for (int i = 0; i < re->n_b; i++)
        if (re->b[i].active && !re->b[i].removed && re->b[i].healthy)
            n += re->b[i].max_inflight;
    int before = atomic_exchange_explicit(&re->eng.seats, n > 0 ? n : 1, memory_order_relaxed);
    if (n > before && re->eng.wake)
        re->eng.wake(re->eng.wake_ud);
}

static void backend_ok(struct rbackend *b)
{
    b->fails = 0;
    if (!b->healthy) {
        b->healthy = true;
        atomic_store_explicit(&b->g_healthy, 1, memory_order_relaxed);
        seats_update(b->re);
        LMD_INFO("remote %s: backend %s is healthy again", b->re->name, b->url);
    }
}

static void backend_failed(struct rbackend *b, const char *why)
{
    b->fails++;
    int threshold = b->re->cfg.fail_threshold;
    if (b->healthy && b->fails >= threshold) {
        b->healthy = false;
        atomic_store_explicit(&b->g_healthy, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->n_ejected, 1, memory_order_relaxed);
        seats_update(b->re);
        LMD_WARN("remote %s: backend %s ejected after %d failures in a row (last: %s); probing it every %d ms",
                 b->re->name, b->url, b->fails, why, b->re->cfg.health_ms);
    }
}

static void backend_release(struct rcall *c)
{
    struct rbackend *b = c->b;
    if (!b)
        return;
    if (!c->got_head)
        b->pending_prefill -= c->uncached;
    b->inflight--;
    atomic_store_explicit(&b->g_inflight, b->inflight, memory_order_relaxed);
    c->b = NULL;
}

/* ---- prefix affinity --------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    h ^= 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return mix64(h);
}

/* The prompt as the upstream will see its start: the completion prompt
 * (text or token ids), or the chat messages' roles and text in order. */
static void prompt_bytes(json_t *body, bool chat, struct lmd_buf *out)
{
    if (!chat) {
        json_t *p = json_object_get(body, "prompt");
        if (json_is_string(p)) {
            lmd_buf_append(out, json_string_value(p), json_string_length(p));
        } else if (json_is_array(p)) {
            size_t i;
            json_t *v;
            json_array_foreach(p, i, v)
            {
                int32_t id = (int32_t)json_integer_value(v);
                lmd_buf_append(out, &id, sizeof id);
            }
        }
        return;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(body, "messages"), i, m)
    {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (json_is_string(role))
            lmd_buf_append(out, json_string_value(role), json_string_length(role));
        lmd_buf_append(out, "\n", 1);
        if (json_is_string(content)) {
            lmd_buf_append(out, json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part)
            {
                json_t *t = json_object_get(part, "text");
                if (json_is_string(t))
                    lmd_buf_append(out, json_string_value(t), json_string_length(t));
            }
        }
        lmd_buf_append(out, "\n", 1);
    }
}

/* The hash chain of the prompt's whole blocks (a partial last block is
 * not one: it cannot be a shared prefix of a longer prompt yet). */
static void prompt_chain(struct rcall *c)
{
    struct lmd_buf b = {0};
    prompt_bytes(c->body, c->chat, &b);
    size_t n = b.len / REMOTE_BLOCK_BYTES;
    c->chain = n ? malloc(n * sizeof *c->chain) : NULL;
    uint64_t h = 0;
    for (size_t i = 0; c->chain && i < n; i++)
        c->chain[i] = h = hash_bytes(h, b.ptr + i * REMOTE_BLOCK_BYTES, REMOTE_BLOCK_BYTES) | 1; /* never 0 */
    c->n_chain = c->chain ? (int)n : 0;
    lmd_buf_free(&b);
}

static uint64_t *idx_slot(struct rbackend *b, uint64_t h, bool insert)
{
    size_t set = (size_t)(h % REMOTE_INDEX_SETS) * REMOTE_INDEX_WAYS;
    uint64_t *hs = b->idx_hash + set;
    uint32_t *ts = b->idx_tick + set;
    for (int w = 0; w < REMOTE_INDEX_WAYS; w++)
        if (hs[w] == h)
            return &hs[w];
    if (!insert)
        return NULL;
    /* An empty way, else the least recently used of the set. */
    int victim = 0;
    for (int w = 0; w < REMOTE_INDEX_WAYS; w++) {
        if (hs[w] == 0) {
            victim = w;
            break;
        }
        if (ts[w] < ts[victim])
            victim = w;
    }
    hs[victim] = h;
    return &hs[victim];
}

/* Blocks of c's chain that b was sent before, from the start. */
static int idx_match(struct rbackend *b, const struct rcall *c)
{
    if (!b->idx_hash)
        return 0;
    int m = 0;
    while (m < c->n_chain && idx_slot(b, c->chain[m], false))
        m++;
    return m;
}

static void idx_insert(struct remote *re, struct rbackend *b, const struct rcall *c)
{
    if (!b->idx_hash)
        return;
    re->tick++;
    for (int i = 0; i < c->n_chain; i++) {
        uint64_t *slot = idx_slot(b, c->chain[i], true);
        b->idx_tick[slot - b->idx_hash] = re->tick;
    }
}

/* ---- routing ------------------------------------------------------------------------- */

/* The backend for c: healthy, with room, not tried yet if another is
 * available; by the pool's routing rule. NULL if none has room.
 *
 * ttft: each backend's predicted time to first token is the prompt tokens
 * it has been sent and not yet answered (pending prefill), plus the part of
 * this prompt it does not hold (the blocks its index has from the start
 * are taken as cached), over its measured prefill rate. Backends within a
 * quarter (and 20 ms) of the best are equally good, and among those the
 * prompt's first block picks by rendezvous hashing, so that gateways that
 * share no state send a prefix to the same backend. */
static struct rbackend *pick(struct remote *re, struct rcall *c, bool *none_healthy, enum route_reason *why)
{
    struct rbackend *best = NULL;
    double best_score = 0, score[REMOTE_MAX_BACKENDS];
    int matched[REMOTE_MAX_BACKENDS] = {0};
    bool ok[REMOTE_MAX_BACKENDS] = {false};
    int n_healthy = 0;
    double rate_sum = 0;
    int n_rate = 0;
    for (int i = 0; i < re->n_b; i++)
        if (re->b[i].prefill_rate > 0)
            rate_sum += re->b[i].prefill_rate, n_rate++;
    double rate_default = n_rate ? rate_sum / n_rate : 1000.0;
    for (int pass = 0; pass < 2 && !best; pass++) {
        for (int k = 0; k < re->n_b; k++) {
            int i = (int)((re->rr + (unsigned)k) % (unsigned)re->n_b);
            struct rbackend *b = &re->b[i];
            if (!b->active || b->removed || !b->healthy)
                continue;
            n_healthy += pass == 0;
            int cap = b->max_inflight;
            if (b->h2conn && h2cli_ready(b->h2conn) && h2cli_max_streams(b->h2conn) - b->probe_h2 < cap)
                cap = h2cli_max_streams(b->h2conn) - b->probe_h2; /* the upstream's SETTINGS_MAX_CONCURRENT_STREAMS */
            if (b->inflight >= (cap > 0 ? cap : 1))
                continue;
            if (pass == 0 && (c->tried & (1u << i)))
                continue; /* first try the ones not tried yet */
            switch (re->cfg.route) {
            case REMOTE_ROUTE_RR:
                score[i] = k;
                break;
            case REMOTE_ROUTE_LEAST:
                score[i] = b->inflight;
                break;
            default: {
                double rate = b->prefill_rate > 0 ? b->prefill_rate : rate_default;
                matched[i] = idx_match(b, c);
                long todo = c->rq->n_prompt - (long)matched[i] * REMOTE_BLOCK_TOKENS;
                /* Requests its gauges count beyond the ones sent from here
                 * (another gateway's, or clients calling it directly)
                 * weigh as prompts of the usual size. */
                double pending =
                    (double)b->pending_prefill + b->ext_load * (b->avg_prompt > 0 ? b->avg_prompt : REMOTE_EXT_PROMPT);
                score[i] = (pending + (double)(todo > 0 ? todo : 1)) / rate + 1e-6 * b->inflight;
                break;
            }
            }
            ok[i] = true;
            if (!best || score[i] < best_score)
                best = b, best_score = score[i];
        }
    }
    *none_healthy = n_healthy == 0;
    if (!best)
        return NULL;
    *why = c->attempts                           ? RR_RETRY
           : re->cfg.route == REMOTE_ROUTE_RR    ? RR_ROUND_ROBIN
           : re->cfg.route == REMOTE_ROUTE_LEAST ? RR_LEAST
           : matched[best->index] > 0            ? RR_PREFIX
                                                 : RR_TTFT;
    if (re->cfg.route == REMOTE_ROUTE_TTFT && c->n_chain > 0) {
        double tol = best_score * 1.25 + 0.02;
        uint64_t top = 0;
        struct rbackend *hrw = NULL;
        int n_near = 0;
        for (int i = 0; i < re->n_b; i++) {
            if (!ok[i] || score[i] > tol)
                continue;
            n_near++;
            uint64_t w = mix64(c->chain[0] ^ re->b[i].url_hash);
            if (!hrw || w > top)
                hrw = &re->b[i], top = w;
        }
        if (n_near > 1 && hrw != best) {
            best = hrw;
            if (!c->attempts)
                *why = RR_RENDEZVOUS;
        }
    }
    re->rr = (unsigned)(best->index + 1);
    long todo = c->rq->n_prompt - (long)matched[best->index] * REMOTE_BLOCK_TOKENS;
    c->uncached = todo > 0 ? (int)todo : 1;
    return best;
}

/* ---- one request on the wire ---------------------------------------------------- */

/* s as a JSON string, quotes included. */
static void put_json_string(struct lmd_buf *b, const char *s)
{
    lmd_buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            lmd_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            lmd_buf_printf(b, "\\u%04x", ch);
        else
            lmd_buf_append(b, s, 1);
    }
    lmd_buf_append(b, "\"", 1);
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs,
                                          size_t *reqbufcnt, int *method_is_head);
static void dispatch(struct rcall *c);
static const struct h2cli_stream_cb call_h2_cb;
static int h2_submit(struct rbackend *b, struct h2cli_stream *s, const char *path, const char *body, size_t len,
                     unsigned long long request_id);

static void head_timer_stop(struct rcall *c)
{
    if (h2o_timeout_is_linked(&c->head_timer))
        h2o_timeout_unlink(&c->head_timer);
}

/* A failure before any output: another backend if the budget and the
 * deadline allow, else the end of the request. */
static void retry_or_fail(struct rcall *c, int status, const char *why)
{
    struct remote *re = c->re;
    head_timer_stop(c);
    c->client = NULL;
    call_h2_drop(c);
    struct rbackend *b = c->b;
    char url[256];
    snprintf(url, sizeof url, "%s", b ? b->url : "?");
    if (b)
        atomic_fetch_add_explicit(&b->n_error, 1, memory_order_relaxed);
    backend_release(c);
    if (c->cancelled) {
        post_finish(c, ENGINE_FINISH_CANCELLED, 0, NULL);
        return;
    }
    uint64_t now = lmd_time_mono_ns();
    bool in_time = !c->rq->deadline_ns || now < c->rq->deadline_ns;
    if (!c->any_output && c->attempts <= re->cfg.max_retries && in_time) {
        if (b)
            atomic_fetch_add_explicit(&b->n_retried, 1, memory_order_relaxed);
        LMD_INFO("remote %s: request %llu: %s from %s; retrying on another backend", re->name,
                 (unsigned long long)c->rq->id, why, url);
        c->got_head = false;
        c->sse.len = 0;
        c->errbody.len = 0;
        dispatch(c);
        return;
    }
    post_finish(c, ENGINE_FINISH_ERROR, status, "upstream %s: %s%s", url, why,
                c->any_output ? " (after output had begun)" : "");
}

static void on_head_timeout(h2o_timeout_entry_t *e)
{
    struct rcall *c = H2O_STRUCT_FROM_MEMBER(struct rcall, head_timer, e);
    call_ref(c);
    if (c->client) {
        h2o_http1client_cancel(c->client);
        c->client = NULL;
    }
    if (c->b)
        backend_failed(c->b, "no answer in time");
    char why[96];
    snprintf(why, sizeof why, "no answer within %d ms", c->re->cfg.timeout_ms);
    retry_or_fail(c, 504, why);
    call_unref(c);
}

/* Send c to a backend, or park it until one has room. */
static void dispatch(struct rcall *c)
{
    struct remote *re = c->re;
    bool none_healthy = false;
    enum route_reason why = RR_TTFT;
    struct rbackend *b = pick(re, c, &none_healthy, &why);
    if (!b) {
        if (none_healthy) {
            int n = 0;
            for (int i = 0; i < re->n_b; i++)
                n += re->b[i].active && !re->b[i].removed;
            if (n)
                post_finish(c, ENGINE_FINISH_ERROR, 503,
                            "no healthy upstream for model '%s' (%d upstreams, all ejected)", re->name, n);
            else
                post_finish(c, ENGINE_FINISH_ERROR, 503, "no healthy upstream for model '%s' (it has no upstreams: %s)",
                            re->name, re->cfg.discovered ? "discovery finds none" : "none configured");
            return;
        }
        c->waiting = true;
        c->next = NULL;
        if (re->wait_tail)
            re->wait_tail->next = c;
        else
            re->wait_head = c;
        re->wait_tail = c;
        return;
    }
    c->b = b;
    c->attempts++;
    c->tried |= 1u << b->index;
    b->inflight++;
    b->pending_prefill += c->uncached;
    b->avg_prompt = b->avg_prompt > 0 ? 0.9 * b->avg_prompt + 0.1 * c->rq->n_prompt : c->rq->n_prompt;
    atomic_store_explicit(&b->g_inflight, b->inflight, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->n_routed[why], 1, memory_order_relaxed);
    idx_insert(re, b, c);
    free(c->payload);
    c->payload = NULL;
    if (c->rq->api_body && !c->reissued) {
        /* The client's bytes, spliced, and this backend's members. */
        struct lmd_buf pb = {0};
        lmd_buf_append(&pb, c->rq->api_body, c->rq->api_body_len);
        lmd_buf_printf(&pb, "%s\"model\":", c->rq->api_body_len > 1 ? "," : "");
        put_json_string(&pb, b->model);
        lmd_buf_append(&pb, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", 55);
        lmd_buf_append(&pb, "", 1);
        c->payload = pb.ptr;
    } else {
        /* c->body is this request's own (a re-issue's copy). */
        json_object_set_new(c->body, "model", json_string(b->model));
        json_object_set_new(c->body, "stream", json_true());
        json_object_set_new(c->body, "stream_options", json_pack("{s:b}", "include_usage", 1));
        c->payload = json_dumps(c->body, JSON_COMPACT);
    }
    if (b->h2) {
        if (!c->payload) {
            backend_release(c);
            post_finish(c, ENGINE_FINISH_ERROR, 0, "out of memory building the upstream request");
            return;
        }
        c->t_sent_ns = lmd_time_mono_ns();
        h2o_timeout_link(re->loop, &re->head_timeout, &c->head_timer);
        c->reused = h2cli_ready(b->h2conn) && h2cli_usable(b->h2conn);
        c->hs.cb = &call_h2_cb;
        if (h2_submit(b, &c->hs, c->rq->api_path, c->payload, strlen(c->payload), (unsigned long long)c->rq->id) != 0) {
            backend_failed(b, "cannot open an HTTP/2 connection");
            retry_or_fail(c, 502, "cannot open an HTTP/2 connection");
        }
        return;
    }
    free(c->head);
    c->head = NULL;
    if (c->payload) {
        size_t len = strlen(c->payload);
        const char *key = re->cfg.api_key;
        if (asprintf(&c->head,
                     "POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: "
                     "text/event-stream\r\nContent-Length: %zu\r\n%s%s%sX-Request-Id: lmd-%llu\r\n\r\n",
                     b->prefix, c->rq->api_path, b->hostport, len, key ? "Authorization: Bearer " : "", key ? key : "",
                     key ? "\r\n" : "", (unsigned long long)c->rq->id) < 0)
            c->head = NULL;
        c->iov[1] = h2o_iovec_init(c->payload, len);
    }
    if (!c->payload || !c->head) {
        backend_release(c);
        post_finish(c, ENGINE_FINISH_ERROR, 0, "out of memory building the upstream request");
        return;
    }
    c->iov[0] = h2o_iovec_init(c->head, strlen(c->head));
    c->t_sent_ns = lmd_time_mono_ns();
    h2o_timeout_link(re->loop, &re->head_timeout, &c->head_timer);
    c->reused = false;
    c->connecting = true;
    h2o_http1client_connect_with_pool(&c->client, c, &re->hctx, &b->pool, on_connect);
    c->connecting = false;
}

/* A backend freed a slot: start what waits. */
static void drain_waiting(struct remote *re)
{
    if (re->draining_wait)
        return;
    re->draining_wait = true;
    while (re->wait_head) {
        struct rcall *c = re->wait_head;
        bool none_healthy = false;
        enum route_reason why;
        /* Only move it when a backend has room now. */
        struct rbackend *b = pick(re, c, &none_healthy, &why);
        if (!b && !none_healthy)
            break;
        re->wait_head = c->next;
        if (!re->wait_head)
            re->wait_tail = NULL;
        c->waiting = false;
        c->next = NULL;
        dispatch(c);
    }
    re->draining_wait = false;
}

/* A completion whose upstream died after output had begun goes on, once,
 * on another backend: the prompt plus the text so far, with what is left
 * of max_tokens. (A chat's assistant turn cannot be continued portably:
 * those end with the error.) */
static bool reissue(struct rcall *c, const char *why)
{
    struct remote *re = c->re;
    if (c->chat || c->reissued || c->cancelled || re->n_b < 2)
        return false;
    json_t *prompt = json_object_get(c->body, "prompt"), *mt = json_object_get(c->body, "max_tokens");
    if (!json_is_string(prompt) || !json_is_integer(mt))
        return false;
    long left = (long)json_integer_value(mt) - c->n_pieces;
    if (left < 1)
        return false;
    struct lmd_buf np = {0};
    lmd_buf_append(&np, json_string_value(prompt), json_string_length(prompt));
    lmd_buf_append(&np, c->sent.ptr, c->sent.len);
    json_t *js = np.ptr ? json_stringn(np.ptr, np.len) : NULL;
    lmd_buf_free(&np);
    if (!js)
        return false;
    /* Its own copy: other choices share the body. */
    json_t *own = json_deep_copy(c->body);
    if (!own) {
        json_decref(js);
        return false;
    }
    json_decref(c->body);
    c->body = own;
    json_object_set_new(c->body, "prompt", js);
    json_object_set_new(c->body, "max_tokens", json_integer(left));
    struct rbackend *b = c->b;
    if (b)
        atomic_fetch_add_explicit(&b->n_retried, 1, memory_order_relaxed);
    LMD_INFO("remote %s: request %llu: %s from %s after %d pieces of output; going on from there on another backend",
             re->name, (unsigned long long)c->rq->id, why, b ? b->url : "?", c->n_pieces);
    call_h2_drop(c);
    backend_release(c);
    c->reissued = true;
    c->pieces_before = c->n_pieces;
    c->usage_prompt = c->usage_completion = -1;
    c->got_head = c->saw_finish = false;
    c->fin = 0;
    c->status = 0;
    c->sse.len = 0;
    dispatch(c);
    return true;
}

/* One SSE event's data: text, finish reason, usage, or an error. */
static void on_sse_data(struct rcall *c, const char *d, size_t n)
{
    if (n == 6 && memcmp(d, "[DONE]", 6) == 0) {
        c->saw_finish = true;
        return;
    }
    struct sse_chunk k;
    c->tbuf.len = 0;
    if (sse_chunk_parse(d, n, c->chat, &c->tbuf, &k) != 0)
        return; /* a comment or keep-alive in a form we do not know: skipped */
    if (k.is_error) {
        head_timer_stop(c);
        post_finish(c, ENGINE_FINISH_ERROR, 502, "upstream %s failed mid-stream: %s", c->b ? c->b->url : "?",
                    k.error[0] ? k.error : "an error event");
        return;
    }
    if (k.has_usage) {
        if (k.prompt_tokens >= 0 && k.prompt_tokens <= INT32_MAX)
            c->usage_prompt = (int)k.prompt_tokens;
        if (k.completion_tokens >= 0 && k.completion_tokens <= INT32_MAX)
            c->usage_completion = (int)k.completion_tokens;
    }
    if (k.has_text)
        post_text(c, c->tbuf.ptr, c->tbuf.len);
    if (k.has_finish) {
        c->fin = strcmp(k.finish, "length") == 0 ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_STOP;
        c->saw_finish = true;
    }
}

/* Split what arrived into SSE events and their data lines. */
static int on_sse_bytes(struct rcall *c, const char *p, size_t n)
{
    if (lmd_buf_append(&c->sse, p, n) != 0)
        return -1;
    size_t start = 0;
    for (;;) {
        char *buf = c->sse.ptr + start;
        size_t avail = c->sse.len - start;
        char *nl = memchr(buf, '\n', avail);
        if (!nl)
            break;
        size_t ll = (size_t)(nl - buf);
        size_t line_len = ll && buf[ll - 1] == '\r' ? ll - 1 : ll;
        if (line_len >= 5 && memcmp(buf, "data:", 5) == 0) {
            const char *d = buf + 5;
            size_t dl = line_len - 5;
            if (dl && *d == ' ')
                d++, dl--;
            on_sse_data(c, d, dl);
            if (c->finished)
                return -1;
        }
        start += ll + 1;
    }
    if (start) {
        memmove(c->sse.ptr, c->sse.ptr + start, c->sse.len - start);
        c->sse.len -= start;
    }
    return c->sse.len > REMOTE_SSE_LINE_MAX ? -1 : 0;
}

/* The error an upstream answered with: its message when it has one. */
static void finish_refused(struct rcall *c)
{
    char msg[400] = "";
    json_error_t je;
    json_t *o = c->errbody.len ? json_loadb(c->errbody.ptr, c->errbody.len, 0, &je) : NULL;
    json_t *e = json_is_object(o) ? json_object_get(o, "error") : NULL;
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : json_is_string(e) ? e : NULL;
    if (json_is_string(m))
        snprintf(msg, sizeof msg, "%s", json_string_value(m));
    else if (c->errbody.len)
        snprintf(msg, sizeof msg, "%.*s", (int)(c->errbody.len > 300 ? 300 : c->errbody.len), c->errbody.ptr);
    json_decref(o);
    if (c->b)
        atomic_fetch_add_explicit(&c->b->n_refused, 1, memory_order_relaxed);
    post_finish(c, ENGINE_FINISH_ERROR, c->status, "%s", msg[0] ? msg : "the upstream refused the request");
}

/* ---- the response, whichever transport carried it ------------------------------- */

/* The response head came. Returns true when its body is wanted; false
 * when this attempt is over (a 5xx: retried elsewhere or failed). */
static bool resp_head(struct rcall *c, int status)
{
    head_timer_stop(c);
    c->got_head = true;
    c->status = status;
    struct rbackend *b = c->b;
    b->pending_prefill -= c->uncached;
    uint64_t dt = lmd_time_mono_ns() - c->t_sent_ns;
    atomic_fetch_add_explicit(&b->fb_ns_sum, dt, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->fb_count, 1, memory_order_relaxed);
    for (int k = 0; k < REMOTE_N_BUCKETS; k++)
        if ((double)dt / 1e9 <= remote_buckets[k]) {
            atomic_fetch_add_explicit(&b->fb_bucket[k], 1, memory_order_relaxed);
            break;
        }
    if (status >= 500) {
        /* The upstream failed: counts against it, and may go elsewhere;
         * its body is not needed. */
        char why[64];
        snprintf(why, sizeof why, "HTTP %d", status);
        c->client = NULL;
        backend_failed(b, why);
        retry_or_fail(c, status == 503 ? 503 : 502, why);
        return false;
    }
    if (status == 200 && dt > 0) {
        double rate = (double)c->uncached / ((double)dt / 1e9);
        b->prefill_rate = b->prefill_rate > 0 ? 0.8 * b->prefill_rate + 0.2 * rate : rate;
    }
    return true;
}

/* Body bytes: the event stream of a 200, else the error answer (kept up
 * to REMOTE_ERR_BODY_MAX). Non-zero when the event stream is malformed or
 * c has finished (an error event). */
static int resp_body(struct rcall *c, const char *p, size_t n)
{
    if (c->status == 200)
        return on_sse_bytes(c, p, n);
    if (c->errbody.len < REMOTE_ERR_BODY_MAX) {
        size_t k = n < REMOTE_ERR_BODY_MAX - c->errbody.len ? n : REMOTE_ERR_BODY_MAX - c->errbody.len;
        lmd_buf_append(&c->errbody, p, k);
    }
    return 0;
}

/* The response is over: err NULL when it came whole, else why it broke;
 * malformed when its event stream was. Returns 0 when it ended well (the
 * connection may serve again), -1 otherwise. */
static int resp_end(struct rcall *c, const char *err, bool malformed)
{
    if (c->status != 200) {
        finish_refused(c);
        return -1;
    }
    if (!err && c->saw_finish) {
        atomic_fetch_add_explicit(&c->b->n_ok, 1, memory_order_relaxed);
        backend_ok(c->b);
        post_finish(c, c->fin ? c->fin : ENGINE_FINISH_STOP, 0, NULL);
        return 0;
    }
    const char *why = malformed ? "a malformed event stream" : !err ? "the stream ended without a finish" : err;
    if (!c->any_output) {
        backend_failed(c->b, why);
        retry_or_fail(c, 502, why);
        return -1;
    }
    atomic_fetch_add_explicit(&c->b->n_error, 1, memory_order_relaxed);
    backend_failed(c->b, why);
    if (reissue(c, why))
        return -1;
    post_finish(c, ENGINE_FINISH_ERROR, 502, "upstream %s failed mid-stream: %s", c->b->url, why);
    return -1;
}

/* ---- HTTP/1.1: h2o's client over the backend's socket pool -------------------------- */

static int on_body_(struct rcall *c, h2o_http1client_t *client, const char *errstr);

static int on_body(h2o_http1client_t *client, const char *errstr)
{
    struct rcall *c = client->data;
    call_ref(c);
    int rc = on_body_(c, client, errstr);
    call_unref(c);
    return rc;
}

static int on_body_(struct rcall *c, h2o_http1client_t *client, const char *errstr)
{
    h2o_buffer_t *in = client->sock->input;
    int rc = 0;
    if (in->size) {
        rc = resp_body(c, in->bytes, in->size);
        h2o_buffer_consume(&client->sock->input, in->size);
    }
    if (c->finished) {
        c->client = NULL; /* returning non-zero closes it */
        return -1;
    }
    if (errstr == NULL && rc == 0)
        return 0;
    /* The response ended (or broke, or was malformed): from here h2o frees
     * the client. */
    c->client = NULL;
    return resp_end(c, errstr == h2o_http1client_error_is_eos ? NULL : errstr, rc != 0);
}

static h2o_http1client_body_cb on_head_(struct rcall *c, const char *errstr, int status);

/* A request the upstream did not process (a kept-alive connection that
 * broke as it went out, a GOAWAY's refusal) goes again, on a new
 * connection, without counting as an attempt; once. */
static void resend_unprocessed(struct rcall *c, const char *why)
{
    struct rbackend *b = c->b;
    LMD_DEBUG("remote %s: request %llu: %s on %s; sending it again", c->re->name, (unsigned long long)c->rq->id, why,
              b->url);
    head_timer_stop(c);
    backend_release(c);
    c->stale_retried = true;
    c->attempts--;
    c->tried &= ~(1u << b->index);
    dispatch(c);
}

static h2o_http1client_body_cb on_head(h2o_http1client_t *client, const char *errstr, int minor_version, int status,
                                       h2o_iovec_t msg, h2o_header_t *headers, size_t num_headers, int rlen)
{
    struct rcall *c = client->data;
    call_ref(c);
    h2o_http1client_body_cb cb = on_head_(c, errstr, status);
    call_unref(c);
    return cb;
}

static h2o_http1client_body_cb on_head_(struct rcall *c, const char *errstr, int status)
{
    if (errstr) {
        c->client = NULL;
        if (c->reused && !c->stale_retried && !c->cancelled && c->b) {
            /* A kept-alive connection the upstream closed as the request
             * went out (llama-server closes after every stream): not the
             * upstream's failure; the request goes again, on a new
             * connection, without counting as an attempt. */
            resend_unprocessed(c, errstr);
            return NULL;
        }
        if (c->b)
            backend_failed(c->b, errstr);
        retry_or_fail(c, 502, errstr);
        return NULL;
    }
    return resp_head(c, status) ? on_body : NULL;
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs,
                                          size_t *reqbufcnt, int *method_is_head)
{
    struct rcall *c = client->data;
    if (errstr) {
        call_ref(c);
        c->client = NULL;
        if (c->b)
            backend_failed(c->b, errstr);
        retry_or_fail(c, 502, errstr);
        call_unref(c);
        return NULL;
    }
    /* h2o's pool hands a kept-alive socket over within the connect call
     * (after checking that it is still open); a new one comes later. */
    c->reused = c->connecting;
    *reqbufs = c->iov;
    *reqbufcnt = 2;
    *method_is_head = 0;
    return on_head;
}

/* ---- HTTP/2: one connection per backend, a stream per request ------------------- */

static void backend_h2_dead(struct h2cli_conn *conn, void *ud, const char *err)
{
    struct rbackend *b = ud;
    if (b->h2conn == conn)
        b->h2conn = NULL;
    LMD_DEBUG("remote %s: the HTTP/2 connection to %s takes no new request: %s", b->re->name, b->url, err);
}

static const struct h2cli_conn_cb backend_h2_cb = {.on_dead = backend_h2_dead};

/* The backend's HTTP/2 connection: the one it has while that takes new
 * streams, else a new one (opened here, lazily). NULL when none can be. */
static struct h2cli_conn *backend_h2(struct rbackend *b)
{
    struct remote *re = b->re;
    if (h2cli_usable(b->h2conn))
        return b->h2conn;
    b->h2conn = NULL; /* a dead one went its way at on_dead */
    if (b->tls && !re->h2_ssl_ctx)
        return NULL;
    struct h2cli_config cfg = {.loop = re->loop,
                               .getaddr_receiver = &re->getaddr_receiver,
                               .connect_timeout = &re->head_timeout,
                               .host = b->host,
                               .port = b->port,
                               .ssl_ctx = b->tls ? re->h2_ssl_ctx : NULL};
    b->h2conn = h2cli_open(&cfg, &backend_h2_cb, b);
    return b->h2conn;
}

/* Submit a request on b's connection: GET without a body, or POST of a
 * JSON body asking for an event stream. Returns 0, or -1 (no stream). */
static int h2_submit(struct rbackend *b, struct h2cli_stream *s, const char *path, const char *body, size_t len,
                     unsigned long long request_id)
{
    struct h2cli_conn *conn = backend_h2(b);
    if (!conn)
        return -1;
    const char *key = b->re->cfg.api_key;
    char full[512], clen[24], rid[32];
    snprintf(full, sizeof full, "%s%s", b->prefix, path);
    struct h2cli_header h[5];
    size_t n = 0;
    char *auth = NULL;
    if (key) {
        if (asprintf(&auth, "Bearer %s", key) < 0)
            return -1;
        h[n++] = (struct h2cli_header){"authorization", auth};
    }
    if (body) {
        snprintf(clen, sizeof clen, "%zu", len);
        snprintf(rid, sizeof rid, "lmd-%llu", request_id);
        h[n++] = (struct h2cli_header){"content-type", "application/json"};
        h[n++] = (struct h2cli_header){"accept", "text/event-stream"};
        h[n++] = (struct h2cli_header){"content-length", clen};
        h[n++] = (struct h2cli_header){"x-request-id", rid};
    }
    int rc = h2cli_submit(conn, s, body ? "POST" : "GET", full, b->hostport, h, n, body, len);
    free(auth); /* the headers were copied */
    return rc;
}

static void idle_arm(struct rcall *c)
{
    if (h2o_timeout_is_linked(&c->idle_timer))
        h2o_timeout_unlink(&c->idle_timer);
    h2o_timeout_link(c->re->loop, &c->re->io_timeout, &c->idle_timer);
}

/* HTTP/1.1 gets this from the socket's I/O timeout; a stream shares its
 * socket with others, so each keeps its own. */
static void on_idle_timeout(h2o_timeout_entry_t *e)
{
    struct rcall *c = H2O_STRUCT_FROM_MEMBER(struct rcall, idle_timer, e);
    call_ref(c);
    call_h2_drop(c);
    char why[96];
    snprintf(why, sizeof why, "no data within %d ms", c->re->cfg.io_timeout_ms);
    resp_end(c, why, false);
    call_unref(c);
}

static int h2_on_head(struct h2cli_stream *s, int status)
{
    struct rcall *c = H2O_STRUCT_FROM_MEMBER(struct rcall, hs, s);
    call_ref(c);
    bool more = resp_head(c, status);
    if (more)
        idle_arm(c);
    call_unref(c);
    return more ? 0 : -1;
}

static int h2_on_data(struct h2cli_stream *s, const char *p, size_t n)
{
    struct rcall *c = H2O_STRUCT_FROM_MEMBER(struct rcall, hs, s);
    call_ref(c);
    int rc = resp_body(c, p, n), ret = 0;
    if (c->finished) {
        ret = -1; /* an error event ended it (its stream is reset already) */
    } else if (rc != 0) {
        call_h2_drop(c);
        resp_end(c, NULL, true);
        ret = -1;
    } else {
        idle_arm(c);
    }
    call_unref(c);
    return ret;
}

static void h2_on_close(struct h2cli_stream *s, const char *err, bool refused)
{
    struct rcall *c = H2O_STRUCT_FROM_MEMBER(struct rcall, hs, s);
    call_ref(c);
    if (h2o_timeout_is_linked(&c->idle_timer))
        h2o_timeout_unlink(&c->idle_timer);
    if (c->got_head) {
        resp_end(c, err, false);
    } else if ((refused || c->reused) && !c->stale_retried && !c->cancelled && c->b) {
        /* Not processed (a GOAWAY's refusal, or a connection that had
         * served and broke as this went out): sent again, on a new
         * connection, without counting as an attempt. */
        resend_unprocessed(c, err);
    } else {
        if (c->b)
            backend_failed(c->b, err);
        retry_or_fail(c, 502, err);
    }
    call_unref(c);
}

static const struct h2cli_stream_cb call_h2_cb = {
    .on_head = h2_on_head, .on_data = h2_on_data, .on_close = h2_on_close};

/* ---- health ----------------------------------------------------------------------- */

static void probe_start(struct rbackend *b);
static void probe_send(struct rbackend *b, const char *path);

static void probe_timer_stop(struct rbackend *b)
{
    if (h2o_timeout_is_linked(&b->probe_timer))
        h2o_timeout_unlink(&b->probe_timer);
}

/* The load gauges each kind exposes on /metrics (summed over their label
 * sets): requests running and waiting in the upstream, whoever sent them. */
static bool load_gauges(enum remote_kind k, const char **running, const char **waiting)
{
    switch (k) {
    case REMOTE_VLLM:
        *running = "vllm:num_requests_running";
        *waiting = "vllm:num_requests_waiting";
        return true;
    case REMOTE_SGLANG:
        *running = "sglang:num_running_reqs";
        *waiting = "sglang:num_queue_reqs";
        return true;
    case REMOTE_LLAMACPP:
        *running = "llamacpp:requests_processing";
        *waiting = "llamacpp:requests_deferred";
        return true;
    case REMOTE_LMD:
        *running = "lmd_requests_running";
        *waiting = "lmd_requests_waiting";
        return true;
    default:
        return false;
    }
}

/* Sum the samples of two gauges in a Prometheus text exposition. */
static void scrape_parse(struct rbackend *b)
{
    const char *gr, *gw;
    if (!load_gauges(b->kind, &gr, &gw))
        return;
    size_t lr = strlen(gr), lw = strlen(gw);
    double run = 0, wait = 0;
    bool seen_r = false, seen_w = false;
    const char *p = b->probe_body.ptr, *end = p + b->probe_body.len;
    while (p && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (*p != '#') {
            bool is_r = (size_t)(le - p) > lr && memcmp(p, gr, lr) == 0 && (p[lr] == '{' || p[lr] == ' ');
            bool is_w = (size_t)(le - p) > lw && memcmp(p, gw, lw) == 0 && (p[lw] == '{' || p[lw] == ' ');
            if (is_r || is_w) {
                const char *sp = le;
                while (sp > p && sp[-1] != ' ')
                    sp--;
                char num[48];
                size_t nn = (size_t)(le - sp) < sizeof num - 1 ? (size_t)(le - sp) : sizeof num - 1;
                memcpy(num, sp, nn);
                num[nn] = 0;
                char *e;
                double v = strtod(num, &e);
                if (e != num && v >= 0 && v < 1e9) {
                    if (is_r)
                        run += v, seen_r = true;
                    else
                        wait += v, seen_w = true;
                }
            }
        }
        p = nl ? nl + 1 : end;
    }
    /* Others' requests: what it counts beyond ours in flight as it answered. */
    int ext = (int)(run + wait) - b->inflight;
    b->ext_load = seen_r || seen_w ? (ext > 0 ? ext : 0) : 0;

    atomic_store_explicit(&b->g_up_running, seen_r ? (int)run : -1, memory_order_relaxed);
    atomic_store_explicit(&b->g_up_waiting, seen_w ? (int)wait : -1, memory_order_relaxed);
}

/* Where a kind says how many requests it serves at once: llama-server's
 * /props (total_slots: its -np), SGLang's /get_server_info
 * (max_running_requests). lmd says it in /v1/models (max_running), read
 * by probe_learn. vLLM and Ollama do not say it. */
static const char *limit_path(enum remote_kind k)
{
    switch (k) {
    case REMOTE_LLAMACPP:
        return "/props";
    case REMOTE_SGLANG:
        return "/get_server_info";
    default:
        return NULL;
    }
}

/* A backend whose limit is not configured takes as many requests at once
 * as it serves at once, so that waiting happens in lmd's queue (classes,
 * deadlines, fair share) rather than in the backend's FIFO, and none of
 * its slots stays idle. */
static void limit_learned(struct rbackend *b, long v, const char *from)
{
    struct remote *re = b->re;
    if (b->limit_given || v < 1)
        return;
    int n = v > REMOTE_LEARN_MAX ? REMOTE_LEARN_MAX : (int)v;
    if (n == b->max_inflight)
        return;
    LMD_INFO("remote %s: backend %s serves %ld requests at once (its %s): taking %d at once, not %d", re->name, b->url,
             v, from, n, b->max_inflight);
    b->max_inflight = n;
    /* HTTP/1.1: one connection a request, and one for probes. */
    b->pool.capacity = (size_t)n + 2;
    seats_update(re);
    drain_waiting(re);
}

/* The answer of limit_path(kind). */
static void limit_parse(struct rbackend *b)
{
    json_error_t je;
    json_t *o = json_loadb(b->probe_body.ptr ? b->probe_body.ptr : "", b->probe_body.len, 0, &je);
    const char *key = b->kind == REMOTE_LLAMACPP ? "total_slots" : "max_running_requests";
    json_t *v = json_is_object(o) ? json_object_get(o, key) : NULL;
    if (json_is_integer(v))
        limit_learned(b, (long)json_integer_value(v), b->probe_path);
    else
        LMD_INFO("remote %s: backend %s's %s has no %s: its limit stays %d", b->re->name, b->url, b->probe_path, key,
                 b->max_inflight);
    json_decref(o);
}

/* What /v1/models says about a backend whose kind or model is not given. */
static void probe_learn(struct rbackend *b)
{
    struct remote *re = b->re;
    json_error_t je;
    json_t *o = json_loadb(b->probe_body.ptr ? b->probe_body.ptr : "", b->probe_body.len, 0, &je);
    json_t *data = json_is_object(o) ? json_object_get(o, "data") : NULL;
    size_t n = json_is_array(data) ? json_array_size(data) : 0;
    bool listed = false;
    const char *only = NULL, *owner = NULL;
    json_t *mine = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(data, i);
        const char *id = json_string_value(json_object_get(m, "id"));
        if (id && strcmp(id, b->model) == 0) {
            listed = true;
            mine = m;
        }
        if (i == 0) {
            only = id;
            owner = json_string_value(json_object_get(m, "owned_by"));
        }
    }
    if (!mine && n == 1)
        mine = json_array_get(data, 0);
    if (!b->kind_given && owner) {
        enum remote_kind k = REMOTE_OPENAI;
        if (strcmp(owner, "lmd") == 0)
            k = REMOTE_LMD;
        else if (strcmp(owner, "llamacpp") == 0)
            k = REMOTE_LLAMACPP;
        else if (strcmp(owner, "vllm") == 0)
            k = REMOTE_VLLM;
        else if (strcmp(owner, "sglang") == 0)
            k = REMOTE_SGLANG;
        else if (strcmp(owner, "library") == 0 || strcmp(owner, "ollama") == 0)
            k = REMOTE_OLLAMA;
        b->kind = k;
    }
    if (!re->cfg.upstream_model && !listed && n == 1 && only && strlen(only) < sizeof b->model) {
        LMD_INFO("remote %s: backend %s serves '%s', not '%s': sending that name", re->name, b->url, only, b->model);
        snprintf(b->model, sizeof b->model, "%s", only);
    }
    LMD_INFO("remote %s: backend %s is %s%s", re->name, b->url, remote_kind_name(b->kind),
             b->kind_given ? "" : " (from its /v1/models)");
    /* lmd says how many requests the model runs at once. */
    json_t *mr = mine ? json_object_get(mine, "max_running") : NULL;
    if (json_is_integer(mr)) {
        b->limit_asked = true;
        limit_learned(b, (long)json_integer_value(mr), "/v1/models");
    }
    json_decref(o);
}

/* The probe out is over (answered or not): its exchange, whichever
 * transport, and its timer go. */
static void probe_done(struct rbackend *b)
{
    b->probe = NULL;
    if (b->probe_hs.conn)
        h2cli_cancel(&b->probe_hs);
    b->probe_h2 = false;
    probe_timer_stop(b);
}

/* The probe's head, or errstr when none came. Returns true when its body
 * is wanted. */
static bool probe_head(struct rbackend *b, const char *errstr, int status)
{
    if (b->asking_limit && (errstr || status != 200)) {
        /* No capacity there (an older server): the limit stays as it is. */
        probe_done(b);
        b->asking_limit = false;
        if (!errstr)
            LMD_INFO("remote %s: backend %s answers %s with HTTP %d: its limit stays %d", b->re->name, b->url,
                     b->probe_path, status, b->max_inflight);
        return false;
    }
    if (b->scraping && (errstr || status != 200)) {
        /* No load gauges there: not a failure of the backend. */
        probe_done(b);
        b->scraping = false;
        if (!errstr) {
            b->metrics_off = true;
            LMD_INFO("remote %s: backend %s answers /metrics with HTTP %d: routing without its load gauges",
                     b->re->name, b->url, status);
        }
        return false;
    }
    if (errstr || status != 200) {
        char why[240];
        if (errstr)
            snprintf(why, sizeof why, "health check: %s", errstr);
        else
            snprintf(why, sizeof why, "health check: HTTP %d", status);
        probe_done(b);
        backend_failed(b, why);
        return false;
    }
    return true;
}

static void probe_data(struct rbackend *b, const char *p, size_t n)
{
    size_t cap = b->scraping ? REMOTE_SCRAPE_MAX : REMOTE_ERR_BODY_MAX;
    if (n && b->probe_body.len < cap)
        lmd_buf_append(&b->probe_body, p, n);
}

/* The probe's answer ended: err NULL when it came whole. */
static void probe_end(struct rbackend *b, const char *err)
{
    probe_done(b);
    if (b->scraping) {
        b->scraping = false;
        if (!err)
            scrape_parse(b);
        return;
    }
    if (b->asking_limit) {
        b->asking_limit = false;
        if (!err)
            limit_parse(b);
        return;
    }
    if (!err) {
        if (!b->probed_models && strcmp(b->probe_path, "/v1/models") == 0) {
            b->probed_models = true;
            probe_learn(b);
        }
        backend_ok(b);
        drain_waiting(b->re);
        const char *gr, *gw;
        if (!b->limit_given && !b->limit_asked && !b->removed && limit_path(b->kind)) {
            b->limit_asked = true;
            probe_send(b, limit_path(b->kind));
        } else if (!b->metrics_off && !b->removed && load_gauges(b->kind, &gr, &gw))
            probe_send(b, "/metrics");
    } else {
        char why[240];
        snprintf(why, sizeof why, "health check: %s", err);
        backend_failed(b, why);
    }
}

static int probe_on_body(h2o_http1client_t *client, const char *errstr)
{
    struct rbackend *b = client->data;
    h2o_buffer_t *in = client->sock->input;
    probe_data(b, in->bytes, in->size);
    h2o_buffer_consume(&client->sock->input, in->size);
    if (!errstr)
        return 0;
    b->probe = NULL; /* h2o frees the client from here */
    probe_end(b, errstr == h2o_http1client_error_is_eos ? NULL : errstr);
    return 0;
}

static h2o_http1client_body_cb probe_on_head(h2o_http1client_t *client, const char *errstr, int minor_version,
                                             int status, h2o_iovec_t msg, h2o_header_t *headers, size_t num_headers,
                                             int rlen)
{
    struct rbackend *b = client->data;
    if (errstr)
        b->probe = NULL;
    return probe_head(b, errstr, status) ? probe_on_body : NULL;
}

static h2o_http1client_head_cb probe_on_connect(h2o_http1client_t *client, const char *errstr, h2o_iovec_t **reqbufs,
                                                size_t *reqbufcnt, int *method_is_head)
{
    struct rbackend *b = client->data;
    if (errstr) {
        b->probe = NULL;
        probe_head(b, errstr, 0);
        return NULL;
    }
    *reqbufs = &b->probe_iov;
    *reqbufcnt = 1;
    *method_is_head = 0;
    return probe_on_head;
}

/* The same over HTTP/2, on the backend's connection. */
static int probe_h2_on_head(struct h2cli_stream *s, int status)
{
    struct rbackend *b = H2O_STRUCT_FROM_MEMBER(struct rbackend, probe_hs, s);
    return probe_head(b, NULL, status) ? 0 : -1;
}

static int probe_h2_on_data(struct h2cli_stream *s, const char *p, size_t n)
{
    probe_data(H2O_STRUCT_FROM_MEMBER(struct rbackend, probe_hs, s), p, n);
    return 0;
}

static void probe_h2_on_close(struct h2cli_stream *s, const char *err, bool refused)
{
    (void)refused; /* the next probe is soon enough */
    struct rbackend *b = H2O_STRUCT_FROM_MEMBER(struct rbackend, probe_hs, s);
    b->probe_h2 = false;
    if (!s->got_head)
        probe_head(b, err ? err : "no answer", 0);
    else
        probe_end(b, err);
}

static const struct h2cli_stream_cb probe_h2_cb = {
    .on_head = probe_h2_on_head, .on_data = probe_h2_on_data, .on_close = probe_h2_on_close};

static void probe_start(struct rbackend *b)
{
    if (b->probe || b->probe_h2)
        return; /* the last one is still out: its timer ends it */
    struct remote *re = b->re;
    bool learn =
        !b->probed_models && (!b->kind_given || !re->cfg.upstream_model || (b->kind == REMOTE_LMD && !b->limit_given));
    probe_send(b, learn ? "/v1/models" : health_path(b->kind));
}

static void on_probe_timeout(h2o_timeout_entry_t *e)
{
    struct rbackend *b = H2O_STRUCT_FROM_MEMBER(struct rbackend, probe_timer, e);
    if (b->probe) {
        h2o_http1client_cancel(b->probe);
        b->probe = NULL;
    }
    probe_done(b);
    if (b->scraping) {
        b->scraping = false;
        return;
    }
    backend_failed(b, "health check: no answer in time");
}

static void probe_send(struct rbackend *b, const char *path)
{
    struct remote *re = b->re;
    b->probe_path = path;
    b->scraping = strcmp(path, "/metrics") == 0;
    b->asking_limit = limit_path(b->kind) && strcmp(path, limit_path(b->kind)) == 0;
    const char *key = re->cfg.api_key;
    char req[sizeof b->probe_req];
    snprintf(req, sizeof req, "GET %s%s HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n", b->prefix, b->probe_path, b->hostport,
             key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "");
    memcpy(b->probe_req, req, sizeof req);
    b->probe_iov = h2o_iovec_init(b->probe_req, strlen(b->probe_req));
    b->probe_body.len = 0;
    b->probe_timer.cb = on_probe_timeout;
    h2o_timeout_link(re->loop, &re->probe_timeout, &b->probe_timer);
    if (b->h2) {
        b->probe_hs.cb = &probe_h2_cb;
        b->probe_h2 = true;
        if (h2_submit(b, &b->probe_hs, b->probe_path, NULL, 0, 0) != 0) {
            b->probe_h2 = false;
            probe_head(b, "cannot open an HTTP/2 connection", 0);
        }
        return;
    }
    h2o_http1client_connect_with_pool(&b->probe, b, &re->hctx, &b->pool, probe_on_connect);
}

static void backends_reap(struct remote *re);
static void backends_apply(struct remote *re, const struct remote_backend_config *list, int n);

static void on_health_timer(h2o_timeout_entry_t *e)
{
    struct remote *re = H2O_STRUCT_FROM_MEMBER(struct remote, health_entry, e);
    backends_reap(re);
    for (int i = 0; i < re->n_b; i++)
        if (re->b[i].active && !re->b[i].removed)
            probe_start(&re->b[i]);
    if (!re->exiting)
        h2o_timeout_link(re->loop, &re->health_timer, &re->health_entry);
}

/* ---- the loop thread ------------------------------------------------------------- */

static void do_cancel(struct rcall *c)
{
    if (c->finished)
        return;
    c->cancelled = true;
    struct remote *re = c->re;
    if (c->waiting) {
        struct rcall **pp = &re->wait_head, *prev = NULL;
        while (*pp && *pp != c)
            prev = *pp, pp = &(*pp)->next;
        if (*pp) {
            *pp = c->next;
            if (re->wait_tail == c)
                re->wait_tail = prev;
        }
        c->waiting = false;
    }
    if (c->client) {
        h2o_http1client_cancel(c->client);
        c->client = NULL;
    }
    head_timer_stop(c);
    if (c->b)
        atomic_fetch_add_explicit(&c->b->n_cancelled, 1, memory_order_relaxed);
    post_finish(c, ENGINE_FINISH_CANCELLED, 0, NULL);
}

static void on_inbox(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct remote *re = H2O_STRUCT_FROM_MEMBER(struct remote, receiver, receiver);
    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    pthread_mutex_lock(&re->in_mu);
    struct rlink *l = re->in_head;
    re->in_head = re->in_tail = NULL;
    re->in_wake_pending = false;
    bool stop = re->stop;
    struct remote_backend_config *reconf = re->reconf;
    int n_reconf = re->n_reconf;
    re->reconf = NULL;
    if (re->new_ssl_ctx && !re->ssl_ctx) {
        re->ssl_ctx = re->hctx.ssl_ctx = re->new_ssl_ctx;
        re->new_ssl_ctx = NULL;
        atomic_store(&re->has_tls, true);
    }
    if (re->new_h2_ssl_ctx && !re->h2_ssl_ctx) {
        re->h2_ssl_ctx = re->new_h2_ssl_ctx;
        re->new_h2_ssl_ctx = NULL;
        atomic_store(&re->has_h2_tls, true);
    }
    pthread_mutex_unlock(&re->in_mu);
    if (reconf) {
        if (!stop)
            backends_apply(re, reconf, n_reconf);
        free(reconf);
    }
    while (l) {
        struct rlink *next = l->next; /* l may be freed below */
        struct rcall *c = l->c;
        if (l->cancel) {
            do_cancel(c);
            call_unref(c); /* the cancellation's reference */
        } else {
            re->n_live++;
            c->live_next = re->live;
            if (re->live)
                re->live->live_prev = c;
            re->live = c;
            if (stop) {
                post_finish(c, ENGINE_FINISH_CANCELLED, 0, NULL);
            } else {
                if (re->cfg.route == REMOTE_ROUTE_TTFT)
                    prompt_chain(c); /* here: the body is the loop thread's to read */
                dispatch(c);
            }
        }
        l = next;
    }
    if (stop)
        re->exiting = true;
    drain_waiting(re);
}

static void backend_fini(struct rbackend *b);

static void *loop_main(void *arg)
{
    struct remote *re = arg;
    re->loop = h2o_evloop_create();
    re->queue = h2o_multithread_create_queue(re->loop);
    h2o_multithread_register_receiver(re->queue, &re->receiver, on_inbox);
    h2o_multithread_register_receiver(re->queue, &re->getaddr_receiver, h2o_hostinfo_getaddr_receiver);
    h2o_timeout_init(re->loop, &re->io_timeout, (uint64_t)re->cfg.io_timeout_ms);
    h2o_timeout_init(re->loop, &re->head_timeout, (uint64_t)re->cfg.timeout_ms);
    h2o_timeout_init(re->loop, &re->health_timer, (uint64_t)re->cfg.health_ms);
    h2o_timeout_init(re->loop, &re->probe_timeout, REMOTE_PROBE_MS);
    re->hctx = (h2o_http1client_ctx_t){.loop = re->loop,
                                       .getaddr_receiver = &re->getaddr_receiver,
                                       .io_timeout = &re->io_timeout,
                                       .ssl_ctx = re->ssl_ctx};
    /* Idle keep-alive connections are closed after 2 s, before the
     * upstreams' own idle timeouts (5 s for llama-server and uvicorn) can
     * close them under a request about to reuse them. */
    for (int i = 0; i < re->n_b; i++)
        if (re->b[i].active)
            h2o_socketpool_set_timeout(&re->b[i].pool, re->loop, 2000);
    re->health_entry.cb = on_health_timer;
    pthread_mutex_lock(&re->start_mu);
    re->started = true;
    pthread_cond_broadcast(&re->start_cv);
    pthread_mutex_unlock(&re->start_mu);
    /* First probes now: kinds and models are learned before traffic. */
    on_health_timer(&re->health_entry);
    while (!re->exiting || re->n_live > 0) {
        h2o_evloop_run(re->loop, re->exiting ? 10 : INT32_MAX);
        if (re->exiting) {
            /* Whatever is still out ends cancelled. */
            while (re->live)
                do_cancel(re->live);
        }
    }
    if (h2o_timeout_is_linked(&re->health_entry))
        h2o_timeout_unlink(&re->health_entry);
    for (int i = 0; i < re->n_b; i++) {
        if (re->b[i].probe) {
            h2o_http1client_cancel(re->b[i].probe);
            re->b[i].probe = NULL;
        }
        probe_done(&re->b[i]);
    }
    /* Give the sockets just closed a turn to go, then take the loop down
     * with everything on it: the pools (their idle connections and
     * timers), the timeouts, the queue. */
    h2o_evloop_run(re->loop, 0);
    for (int i = 0; i < re->n_b; i++)
        backend_fini(&re->b[i]);
    h2o_evloop_run(re->loop, 0);
    h2o_multithread_unregister_receiver(re->queue, &re->receiver);
    h2o_multithread_unregister_receiver(re->queue, &re->getaddr_receiver);
    h2o_timeout_t *t[] = {&re->io_timeout, &re->head_timeout, &re->probe_timeout, &re->health_timer};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        h2o_timeout_dispose(re->loop, t[i]);
    h2o_multithread_destroy_queue(re->queue);
#if H2O_VERSION_MAJOR == 2 && H2O_VERSION_MINOR < 3
    free(re->queue); /* h2o 2.2's destroy leaves the queue's own memory (later versions free it) */
#endif
    h2o_evloop_destroy(re->loop);
    re->loop = NULL;
    return NULL;
}

/* Release in_mu after leaving something for the loop (a call, a stop, a
 * new upstream list) and wake the loop: one message is enough however
 * much is left until on_inbox takes it all, so only the first since the
 * last wake sends one. */
static void inbox_release(struct remote *re)
{
    const bool wake = !re->in_wake_pending;
    re->in_wake_pending = true;
    pthread_mutex_unlock(&re->in_mu);
    if (wake)
        h2o_multithread_send_message(&re->receiver, &re->wake_msg);
}

/* Scheduler thread: hand c (a submission or a cancellation) to the loop. */
static void inbox_push(struct remote *re, struct rcall *c, bool cancel)
{
    struct rlink *l = cancel ? &c->can : &c->sub;
    l->c = c;
    l->cancel = cancel;
    l->next = NULL;
    pthread_mutex_lock(&re->in_mu);
    if (re->in_tail)
        re->in_tail->next = l;
    else
        re->in_head = l;
    re->in_tail = l;
    inbox_release(re);
}

/* ---- engine ops ------------------------------------------------------------------- */

static int remote_submit(struct engine *e, struct engine_req *rq, struct lmd_err *err)
{
    struct remote *re = (struct remote *)e;
    if (!rq->api_json || !rq->api_path || !json_is_object((json_t *)rq->api_json))
        return lmd_err_set(err, LMD_EINVAL, "remote engine: the request carries no API body");
    struct rcall *c = calloc(1, sizeof *c);
    if (!c)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    /* A reference of its own, read and changed on the loop thread only. */
    json_t *body = json_incref((json_t *)rq->api_json);
    c->re = re;
    c->rq = rq;
    c->body = body;
    c->chat = strstr(rq->api_path, "chat") != NULL;
    c->usage_prompt = c->usage_completion = -1;
    c->head_timer.cb = on_head_timeout;
    c->idle_timer.cb = on_idle_timeout;
    atomic_init(&c->refs, 2); /* the loop's and the scheduler's */
    rq->engine_data = c;
    inbox_push(re, c, false);
    return 0;
}

static int remote_poll(struct engine *e, struct engine_event *ev, int max)
{
    struct remote *re = (struct remote *)e;
    struct revents *cur = &re->cur;
    if (cur->taken == cur->n) {
        cur->n = cur->taken = 0;
        cur->text.len = 0;
        pthread_mutex_lock(&re->out_mu);
        struct revents t = re->out;
        re->out = *cur;
        *cur = t;
        pthread_mutex_unlock(&re->out_mu);
    }
    int k = 0;
    while (k < max && cur->taken < cur->n) {
        int i = cur->taken++;
        ev[k] = cur->ev[i];
        ev[k].text = cur->ev[i].text_len ? cur->text.ptr + cur->text_off[i] : NULL;
        if (ev[k].kind == ENGINE_EV_FINISH) {
            struct rcall *c = ev[k].req->engine_data;
            ev[k].req->engine_data = NULL;
            call_unref(c); /* the scheduler's reference */
        }
        k++;
    }
    return k;
}

static void remote_cancel(struct engine *e, struct engine_req *rq)
{
    struct remote *re = (struct remote *)e;
    struct rcall *c = rq->engine_data;
    if (!c)
        return;
    call_ref(c); /* the cancellation's */
    inbox_push(re, c, true);
}

static void revents_free(struct revents *r)
{
    free(r->ev);
    free(r->text_off);
    lmd_buf_free(&r->text);
}

static int remote_collect(struct lmd_buf *out, void *ud);
static void reg_remove(struct remote *re);
static void backend_fini(struct rbackend *b);

static void remote_close(struct engine *e)
{
    struct remote *re = (struct remote *)e;
    obs_collector_remove(remote_collect, re);
    reg_remove(re);
    if (re->started) {
        pthread_mutex_lock(&re->in_mu);
        re->stop = true;
        inbox_release(re);
        pthread_join(re->thread, NULL);
    }
    /* Events never polled: their calls' last references. */
    struct revents *lists[] = {&re->cur, &re->out};
    for (int l = 0; l < 2; l++)
        for (int i = lists[l]->taken; i < lists[l]->n; i++)
            if (lists[l]->ev[i].kind == ENGINE_EV_FINISH && lists[l]->ev[i].req->engine_data) {
                struct rcall *c = lists[l]->ev[i].req->engine_data;
                lists[l]->ev[i].req->engine_data = NULL;
                call_unref(c);
            }
    for (int i = 0; i < re->n_b; i++)
        backend_fini(&re->b[i]);
    revents_free(&re->cur);
    revents_free(&re->out);
    free(re->reconf);
    if (re->ssl_ctx)
        SSL_CTX_free(re->ssl_ctx);
    if (re->new_ssl_ctx)
        SSL_CTX_free(re->new_ssl_ctx);
    if (re->h2_ssl_ctx)
        SSL_CTX_free(re->h2_ssl_ctx);
    if (re->new_h2_ssl_ctx)
        SSL_CTX_free(re->new_h2_ssl_ctx);
    pthread_mutex_destroy(&re->in_mu);
    pthread_mutex_destroy(&re->out_mu);
    pthread_mutex_destroy(&re->start_mu);
    pthread_cond_destroy(&re->start_cv);
    free(re);
}

static const struct engine_ops remote_ops = {
    .submit = remote_submit, .poll = remote_poll, .cancel = remote_cancel, .close = remote_close};

/* ---- metrics ----------------------------------------------------------------------- */

/* Every remote engine's backends, one family at a time. */
static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct remote *g_reg[OBS_MAX_COLLECTORS];
static int g_n_reg;

static void put_label(struct lmd_buf *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            lmd_buf_append(o, "\\", 1);
        if (*s == '\n')
            lmd_buf_append(o, "\\n", 2);
        else
            lmd_buf_append(o, s, 1);
    }
}

static int remote_collect(struct lmd_buf *out, void *ud)
{
    (void)ud;
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"lmd_upstream_requests_total", "counter",
         "Requests sent to an upstream backend, by how they ended (ok, error, refused = its 4xx, cancelled)."},
        {"lmd_upstream_retries_total", "counter", "Requests retried on another backend after this one failed."},
        {"lmd_upstream_ejections_total", "counter", "Times the backend was ejected after consecutive failures."},
        {"lmd_upstream_routed_total", "counter",
         "Requests routed to the backend, by reason: ttft (smallest predicted time to first token), prefix (the "
         "same, thanks to a cached prefix), rendezvous (the prompt's hash among equally good backends), least, rr, "
         "retry."},
        {"lmd_upstream_inflight", "gauge", "Requests in flight on the backend."},
        {"lmd_upstream_max_inflight", "gauge", "The backend's concurrency limit."},
        {"lmd_upstream_healthy", "gauge", "1 when the backend takes traffic, 0 while ejected."},
        {"lmd_upstream_load", "gauge",
         "Requests running and waiting in the upstream by its own gauges (vllm:num_requests_*, "
         "llamacpp:requests_*, sglang's, lmd's), as last scraped; whoever sent them."},
        {"lmd_upstream_response_head_seconds", "histogram",
         "Time from sending a request to the backend's response head."},
    };
    pthread_mutex_lock(&g_reg_mu);
    if (ud != g_reg[0]) { /* every engine registers; the first renders all */
        pthread_mutex_unlock(&g_reg_mu);
        return 0;
    }
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        lmd_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name, fam[f].type);
        for (int r = 0; r < g_n_reg; r++) {
            struct remote *re = g_reg[r];
            for (int i = 0; i < re->n_b; i++) {
                struct rbackend *b = &re->b[i];
                if (!atomic_load(&b->active))
                    continue;
#define LBL(suffix)                                                                                                    \
    do {                                                                                                               \
        lmd_buf_printf(out, "%s%s{model=\"", fam[f].name, suffix);                                                     \
        put_label(out, re->name);                                                                                      \
        lmd_buf_printf(out, "\",backend=\"");                                                                          \
        put_label(out, b->url);                                                                                        \
        lmd_buf_printf(out, "\"");                                                                                     \
    } while (0)
#define LD(a) ((unsigned long long)atomic_load_explicit(&(a), memory_order_relaxed))
                switch (f) {
                case 0: {
                    const char *oc[] = {"ok", "error", "refused", "cancelled"};
                    unsigned long long v[] = {LD(b->n_ok), LD(b->n_error), LD(b->n_refused), LD(b->n_cancelled)};
                    for (int k = 0; k < 4; k++) {
                        LBL("");
                        lmd_buf_printf(out, ",outcome=\"%s\"} %llu\n", oc[k], v[k]);
                    }
                    break;
                }
                case 1:
                    LBL("");
                    lmd_buf_printf(out, "} %llu\n", LD(b->n_retried));
                    break;
                case 2:
                    LBL("");
                    lmd_buf_printf(out, "} %llu\n", LD(b->n_ejected));
                    break;
                case 3:
                    for (int k = 0; k < RR__N; k++) {
                        LBL("");
                        lmd_buf_printf(out, ",reason=\"%s\"} %llu\n", route_reason_names[k], LD(b->n_routed[k]));
                    }
                    break;
                case 4:
                    LBL("");
                    lmd_buf_printf(out, "} %d\n", atomic_load_explicit(&b->g_inflight, memory_order_relaxed));
                    break;
                case 5:
                    LBL("");
                    lmd_buf_printf(out, "} %d\n", b->max_inflight);
                    break;
                case 6:
                    LBL("");
                    lmd_buf_printf(out, "} %d\n", atomic_load_explicit(&b->g_healthy, memory_order_relaxed));
                    break;
                case 7: {
                    int v[2] = {atomic_load_explicit(&b->g_up_running, memory_order_relaxed),
                                atomic_load_explicit(&b->g_up_waiting, memory_order_relaxed)};
                    for (int k = 0; k < 2; k++)
                        if (v[k] >= 0) {
                            LBL("");
                            lmd_buf_printf(out, ",state=\"%s\"} %d\n", k ? "waiting" : "running", v[k]);
                        }
                    break;
                }
                default: {
                    unsigned long long cum = 0;
                    for (int k = 0; k < REMOTE_N_BUCKETS; k++) {
                        cum += LD(b->fb_bucket[k]);
                        LBL("_bucket");
                        lmd_buf_printf(out, ",le=\"%g\"} %llu\n", remote_buckets[k], cum);
                    }
                    LBL("_bucket");
                    lmd_buf_printf(out, ",le=\"+Inf\"} %llu\n", LD(b->fb_count));
                }
                    LBL("_sum");
                    lmd_buf_printf(out, "} %.6f\n", (double)LD(b->fb_ns_sum) / 1e9);
                    LBL("_count");
                    lmd_buf_printf(out, "} %llu\n", LD(b->fb_count));
                    break;
                }
#undef LBL
#undef LD
            }
        }
    }
    pthread_mutex_unlock(&g_reg_mu);
    return out->ptr ? 0 : LMD_ENOMEM;
}

static void reg_remove(struct remote *re)
{
    pthread_mutex_lock(&g_reg_mu);
    for (int i = 0; i < g_n_reg; i++)
        if (g_reg[i] == re) {
            memmove(&g_reg[i], &g_reg[i + 1], (size_t)(g_n_reg - i - 1) * sizeof g_reg[0]);
            g_n_reg--;
            break;
        }
    pthread_mutex_unlock(&g_reg_mu);
}

/* ---- the list of backends -------------------------------------------------------- */

/* A client TLS context that checks upstreams' certificates and names;
 * for h2:// upstreams it offers HTTP/2 by ALPN (and only that: an upstream
 * that does not pick it fails its connection, saying so). */
static int tls_ctx(struct remote *re, bool h2, SSL_CTX **out, struct lmd_err *err)
{
    const char *ca = re->cfg.ca_file;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    *out = NULL;
    if (!ctx)
        return lmd_err_set(err, LMD_ENOMEM, "remote %s: cannot set up TLS to the upstreams", re->name);
    if (ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        SSL_CTX_free(ctx);
        return ca ? lmd_err_set(err, LMD_EINVAL, "remote %s: cannot read the upstreams' CA file %s", re->name, ca)
                  : lmd_err_set(err, LMD_EINVAL, "remote %s: cannot read the system's CA certificates", re->name);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (h2 && SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3) != 0) {
        SSL_CTX_free(ctx);
        return lmd_err_set(err, LMD_ENOMEM, "remote %s: cannot set up ALPN for HTTP/2", re->name);
    }
    *out = ctx;
    return 0;
}

/* Fill slot i (which is free) with an upstream. On the loop thread after
 * start (a reconfiguration), before it at open. */
static int backend_init(struct remote *re, int i, const struct remote_backend_config *bc, struct lmd_err *err)
{
    struct rbackend *b = &re->b[i];
    struct rbackend fresh = {.re = re, .index = i};
    enum remote_kind kind;
    char host[sizeof fresh.host], prefix[sizeof fresh.prefix];
    int port;
    int rc = remote_url_parse(bc->url, &kind, host, sizeof host, &port, prefix, sizeof prefix, err);
    if (rc)
        return rc;
    uint64_t *ih = NULL;
    uint32_t *it = NULL;
    if (re->cfg.route == REMOTE_ROUTE_TTFT) {
        ih = calloc((size_t)REMOTE_INDEX_SETS * REMOTE_INDEX_WAYS, sizeof *ih);
        it = calloc((size_t)REMOTE_INDEX_SETS * REMOTE_INDEX_WAYS, sizeof *it);
        if (!ih || !it) {
            free(ih);
            free(it);
            return lmd_err_set(err, LMD_ENOMEM, "out of memory");
        }
    }
    pthread_mutex_lock(&g_reg_mu); /* the metrics read the slot's strings */
    memset(b, 0, sizeof *b);
    *b = fresh;
    snprintf(b->url, sizeof b->url, "%s", bc->url);
    memcpy(b->host, host, sizeof host);
    memcpy(b->prefix, prefix, sizeof prefix);
    b->kind = kind;
    b->tls = port < 0;
    b->h2 = remote_url_h2(bc->url);
    b->port = port < 0 ? -port : port;
    b->kind_given = kind != REMOTE_AUTO;
    bool v6 = strchr(b->host, ':') != NULL;
    snprintf(b->hostport, sizeof b->hostport, v6 ? "[%s]:%d" : "%s:%d", b->host, b->port);
    snprintf(b->model, sizeof b->model, "%s", re->cfg.upstream_model ? re->cfg.upstream_model : re->name);
    b->max_inflight = bc->max_inflight > 0 ? bc->max_inflight : re->cfg.max_inflight;
    b->limit_given = bc->max_inflight > 0 || re->inflight_given;
    b->healthy = true;
    atomic_init(&b->g_healthy, 1);
    atomic_init(&b->g_up_running, -1);
    atomic_init(&b->g_up_waiting, -1);
    b->url_hash = hash_bytes(0, b->url, strlen(b->url));
    b->idx_hash = ih;
    b->idx_tick = it;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)b->port)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)b->port)};
    size_t cap = (size_t)b->max_inflight + 2;
    if (inet_pton(AF_INET, b->host, &sin.sin_addr) == 1)
        h2o_socketpool_init_by_address(&b->pool, (struct sockaddr *)&sin, sizeof sin, b->tls, cap);
    else if (inet_pton(AF_INET6, b->host, &sin6.sin6_addr) == 1)
        h2o_socketpool_init_by_address(&b->pool, (struct sockaddr *)&sin6, sizeof sin6, b->tls, cap);
    else
        h2o_socketpool_init_by_hostport(&b->pool, h2o_iovec_init(b->host, strlen(b->host)), (uint16_t)b->port, b->tls,
                                        cap);
    if (re->loop)
        h2o_socketpool_set_timeout(&b->pool, re->loop, 2000);
    atomic_store(&b->active, true);
    if (i >= re->n_b)
        re->n_b = i + 1;
    pthread_mutex_unlock(&g_reg_mu);
    return 0;
}

static void backend_fini(struct rbackend *b)
{
    if (!atomic_load(&b->active))
        return;
    pthread_mutex_lock(&g_reg_mu);
    atomic_store(&b->active, false);
    pthread_mutex_unlock(&g_reg_mu);
    h2o_socketpool_dispose(&b->pool);
    /* Its HTTP/2 connection has no stream left (the last request and the
     * probe ended): it closes now. */
    h2cli_release(b->h2conn);
    b->h2conn = NULL;
    lmd_buf_free(&b->probe_body);
    free(b->idx_hash);
    free(b->idx_tick);
    b->idx_hash = NULL;
    b->idx_tick = NULL;
}

/* Removed backends whose last request ended give their slots back. */
static void backends_reap(struct remote *re)
{
    for (int i = 0; i < re->n_b; i++) {
        struct rbackend *b = &re->b[i];
        if (b->active && b->removed && b->inflight == 0 && !b->probe && !b->probe_h2) {
            LMD_INFO("remote %s: backend %s removed", re->name, b->url);
            backend_fini(b);
        }
    }
}

/* Loop thread: the new list of upstreams. Kept ones keep their state (a
 * new max_inflight applies); new ones start healthy and are probed now;
 * dropped ones take no new request and go when their last one ends. */
static void backends_apply(struct remote *re, const struct remote_backend_config *list, int n)
{
    bool keep[REMOTE_MAX_BACKENDS] = {false};
    for (int k = 0; k < n; k++) {
        int found = -1;
        for (int i = 0; i < re->n_b; i++)
            if (re->b[i].active && strcmp(re->b[i].url, list[k].url) == 0)
                found = i;
        if (found >= 0) {
            struct rbackend *b = &re->b[found];
            keep[found] = true;
            if (b->removed)
                LMD_INFO("remote %s: backend %s is back in the list", re->name, b->url);
            b->removed = false;
            /* A limit learned from the backend stays until one is configured. */
            const bool learned = !b->limit_given && b->limit_asked && b->max_inflight != re->cfg.max_inflight;
            b->limit_given = list[k].max_inflight > 0 || re->inflight_given;
            if (list[k].max_inflight > 0 || !learned)
                b->max_inflight = list[k].max_inflight > 0 ? list[k].max_inflight : re->cfg.max_inflight;
            continue;
        }
        int slot = -1;
        for (int i = 0; i < REMOTE_MAX_BACKENDS && slot < 0; i++)
            if (!atomic_load(&re->b[i].active))
                slot = i;
        struct lmd_err err = {0};
        if (slot < 0) {
            LMD_WARN("remote %s: no room for upstream %s (%d at most, draining ones included)", re->name, list[k].url,
                     REMOTE_MAX_BACKENDS);
            continue;
        }
        if (backend_init(re, slot, &list[k], &err) != 0) {
            LMD_WARN("remote %s: upstream %s not added: %s", re->name, list[k].url, err.msg);
            continue;
        }
        keep[slot] = true;
        LMD_INFO("remote %s: backend %s added", re->name, list[k].url);
        probe_start(&re->b[slot]);
    }
    for (int i = 0; i < re->n_b; i++) {
        struct rbackend *b = &re->b[i];
        if (b->active && !keep[i] && !b->removed) {
            b->removed = true;
            atomic_store_explicit(&b->g_healthy, 0, memory_order_relaxed);
            LMD_INFO("remote %s: backend %s leaves the list; %d requests in flight on it finish first", re->name,
                     b->url, b->inflight);
        }
    }
    backends_reap(re);
    seats_update(re);
    drain_waiting(re);
}

/* The most requests the pool could ever take at once: every slot filled
 * at the largest limit configured (a reconfiguration may add upstreams;
 * engine.seats says how many it takes now). */
static int seats_max(const struct remote *re)
{
    int most = re->cfg.max_inflight;
    for (int i = 0; i < re->n_b; i++)
        if (re->b[i].max_inflight > most)
            most = re->b[i].max_inflight;
    if (!re->inflight_given && most < REMOTE_LEARN_MAX)
        most = REMOTE_LEARN_MAX; /* a backend's limit may be learned up to this */
    long n = (long)most * REMOTE_MAX_BACKENDS;
    return n > 4096 ? 4096 : (int)n;
}

int engine_remote_set_upstreams(struct engine *e, const struct remote_backend_config *list, int n, struct lmd_err *err)
{
    struct remote *re = (struct remote *)e;
    if (n < (re->cfg.discovered ? 0 : 1) || n > REMOTE_MAX_BACKENDS)
        return lmd_err_set(err, LMD_EINVAL, "remote %s: %d upstreams (%d to %d)", re->name, n,
                           re->cfg.discovered ? 0 : 1, REMOTE_MAX_BACKENDS);
    for (int i = 0; i < n; i++) {
        enum remote_kind kind;
        char host[128], prefix[128];
        int port;
        if (remote_url_parse(list[i].url, &kind, host, sizeof host, &port, prefix, sizeof prefix, err) != 0)
            return LMD_EINVAL;
        for (int j = 0; j < i; j++)
            if (strcmp(list[j].url, list[i].url) == 0)
                return lmd_err_set(err, LMD_EINVAL, "remote %s: upstream '%s' is listed twice", re->name, list[i].url);
    }
    bool tls = false, tls_h2 = false;
    for (int i = 0; i < n; i++) {
        tls |= strstr(list[i].url, "https://") != NULL;
        tls_h2 |= strstr(list[i].url, "h2://") != NULL;
    }
    SSL_CTX *ctx = NULL, *ctx_h2 = NULL;
    if (tls && !atomic_load(&re->has_tls) && tls_ctx(re, false, &ctx, err) != 0)
        return LMD_EINVAL;
    if (tls_h2 && !atomic_load(&re->has_h2_tls) && tls_ctx(re, true, &ctx_h2, err) != 0) {
        if (ctx)
            SSL_CTX_free(ctx);
        return LMD_EINVAL;
    }
    struct remote_backend_config *copy = malloc((size_t)(n ? n : 1) * sizeof *copy);
    if (!copy) {
        if (ctx)
            SSL_CTX_free(ctx);
        if (ctx_h2)
            SSL_CTX_free(ctx_h2);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    }
    memcpy(copy, list, (size_t)n * sizeof *copy);
    pthread_mutex_lock(&re->in_mu);
    if (ctx) {
        if (re->new_ssl_ctx)
            SSL_CTX_free(re->new_ssl_ctx);
        re->new_ssl_ctx = ctx;
    }
    if (ctx_h2) {
        if (re->new_h2_ssl_ctx)
            SSL_CTX_free(re->new_h2_ssl_ctx);
        re->new_h2_ssl_ctx = ctx_h2;
    }
    free(re->reconf); /* a newer list replaces one not applied yet */
    re->reconf = copy;
    re->n_reconf = n;
    inbox_release(re);
    return 0;
}

/* ---- open --------------------------------------------------------------------------- */

int engine_remote_open(struct engine **out, const struct remote_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    if (cfg->n_backends < (cfg->discovered ? 0 : 1) || cfg->n_backends > REMOTE_MAX_BACKENDS)
        return lmd_err_set(err, LMD_EINVAL, "remote %s: %d upstreams (1 to %d)", cfg->name ? cfg->name : "?",
                           cfg->n_backends, REMOTE_MAX_BACKENDS);
    struct remote *re = calloc(1, sizeof *re);
    if (!re)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    re->cfg = *cfg;
    snprintf(re->name, sizeof re->name, "%s", cfg->name ? cfg->name : "remote");
    struct remote_config *c = &re->cfg;
    c->name = re->name;
    re->inflight_given = c->max_inflight > 0;
    if (c->max_inflight <= 0)
        c->max_inflight = 8;
    if (c->n_ctx <= 0)
        c->n_ctx = 32768;
    if (c->health_ms <= 0)
        c->health_ms = 2000;
    if (c->timeout_ms <= 0)
        c->timeout_ms = 60000;
    if (c->io_timeout_ms <= 0)
        c->io_timeout_ms = 120000;
    if (c->fail_threshold <= 0)
        c->fail_threshold = 2;
    if (c->max_retries == 0)
        c->max_retries = 2;
    if (c->max_retries < 0)
        c->max_retries = 0;
    pthread_mutex_init(&re->in_mu, NULL);
    pthread_mutex_init(&re->out_mu, NULL);
    pthread_mutex_init(&re->start_mu, NULL);
    pthread_cond_init(&re->start_cv, NULL);
    int total = 0, rc = 0;
    /* TLS only when an upstream needs it: reading the system's CAs takes
     * a few hundred milliseconds. */
    bool tls = false, tls_h2 = false;
    for (int i = 0; i < cfg->n_backends; i++) {
        tls |= strstr(cfg->backends[i].url, "https://") != NULL;
        tls_h2 |= strstr(cfg->backends[i].url, "h2://") != NULL;
    }
    if (tls && (rc = tls_ctx(re, false, &re->ssl_ctx, err)) == 0)
        atomic_store(&re->has_tls, true);
    if (rc == 0 && tls_h2 && (rc = tls_ctx(re, true, &re->h2_ssl_ctx, err)) == 0)
        atomic_store(&re->has_h2_tls, true);
    for (int i = 0; i < cfg->n_backends && rc == 0; i++) {
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->backends[j].url, cfg->backends[i].url) == 0)
                rc = lmd_err_set(err, LMD_EINVAL, "remote %s: upstream '%s' is listed twice", re->name,
                                 cfg->backends[i].url);
        if (rc == 0 && (rc = backend_init(re, i, &cfg->backends[i], err)) == 0)
            total += re->b[i].max_inflight;
    }
    if (rc) {
        re->started = false;
        remote_close(&re->eng);
        return rc;
    }
    re->eng.ops = &remote_ops;
    re->eng.info = (struct engine_info){
        .kind = "remote",
        .model_name = re->name,
        .arch = "remote",
        .n_vocab = 0,
        .n_ctx = c->n_ctx,
        .max_batch_tokens = c->n_ctx,
        .max_seqs = seats_max(re),
        .n_threads = 1,
        .token_budget = 0,
        .request_level = true,
        .takes_api = true,
        .wakes = true,
    };
    atomic_init(&re->eng.seats, total > 0 ? total : 1);
    if (pthread_create(&re->thread, NULL, loop_main, re) != 0) {
        remote_close(&re->eng);
        return lmd_err_set(err, LMD_ENOMEM, "remote %s: cannot start its event loop", re->name);
    }
    pthread_mutex_lock(&re->start_mu);
    while (!re->started)
        pthread_cond_wait(&re->start_cv, &re->start_mu);
    pthread_mutex_unlock(&re->start_mu);
    pthread_mutex_lock(&g_reg_mu);
    if (g_n_reg < OBS_MAX_COLLECTORS)
        g_reg[g_n_reg++] = re;
    pthread_mutex_unlock(&g_reg_mu);
    obs_collector_add(remote_collect, re);
    *out = &re->eng;
    return 0;
}
