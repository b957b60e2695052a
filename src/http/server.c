/*
 * h2o underneath http.h: listener, event-loop threads, the one handler,
 * whole and streamed responses, and the cross-thread task inbox.
 *
 * HTTP/2 without TLS comes from h2o's HTTP/1 parser: a connection that
 * opens with the HTTP/2 preface ("PRI * HTTP/2.0") is handed to the HTTP/2
 * codec (globalconf.http1.upgrade_to_http2, on by default), so one port
 * serves both. With a certificate and key the port speaks TLS only, and
 * ALPN picks h2 or http/1.1 per connection.
 *
 * Streamed responses are bounded from both ends: the handler sees how many
 * bytes the client has not taken yet (http_stream_unsent) and is called back
 * when they have all gone (on_drain), so it can stop producing instead of
 * buffering without limit; and a send that makes no progress for the stall
 * timeout drops the request (the client is treated as gone).
 *
 * It is not a router and holds no per-request state beyond the write
 * buffers and timers of a response.
 */
#include "http/cors.h"
#include "http/http.h"

#include "core/buf.h"

#include "core/log.h"
#include "obs/obs.h"

#include <h2o.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct http_loop {
    struct http_server *srv;
    pthread_t thread;
    int listen_fd;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    h2o_multithread_receiver_t receiver;
    h2o_multithread_message_t wake_msg; /* in flight while wake_pending */
    struct http_task stop_task;         /* closes the listener on this thread */
    h2o_timeout_t stall_timeout;        /* stall_ms; entries: sends in flight */
    h2o_timeout_entry_t accept_backoff; /* linked while accepting pauses on EMFILE/ENFILE */

    pthread_mutex_t mu; /* guards the inbox below */
    struct http_task *head, *tail;
    bool wake_pending;
    struct http_task exit_task; /* ends the loop */
    bool exiting;               /* loop thread only */
    bool idle;                  /* no connection open when the loop ended */
};

struct http_handler {
    h2o_handler_t super;
    struct http_server *srv;
};

struct http_server {
    struct http_config cfg;
    h2o_globalconf_t gconf;
    int port;
    SSL_CTX *ssl_ctx;        /* NULL = cleartext */
    struct http_loop *loops; /* [io_threads] */
    int n_loops;
    pthread_mutex_t start_mu;
    pthread_cond_t start_cv;
    int n_started;
    struct http__cors cors; /* the allowed origins; none = CORS off */
};

struct http_req {
    h2o_generator_t gen; /* for streamed responses */
    h2o_req_t *req;
    struct http_loop *loop;
    void (*on_close)(void *ctx);
    void *ctx;
    bool closed;        /* the client is gone or the request was disposed */
    bool sending;       /* an h2o_send is in flight; wait for proceed */
    bool final_pending; /* the last write has been queued */
    bool final_sent;
    bool answered;       /* headers are out: the disconnect watch has no more use */
    struct lmd_buf pend; /* written, not yet handed to h2o */
    struct lmd_buf infl; /* handed to h2o, owned by it until proceed */
    void (*on_drain)(void *ctx);
    void *drain_ctx;
    void (*on_gone)(void *ctx);
    void *gone_ctx;
    h2o_timeout_entry_t stall_entry; /* linked while a send is in flight */
    h2o_timeout_entry_t watch_entry; /* linked while watching for a disconnect */
    const char *framing;             /* why this HTTP/1 request's framing is ambiguous, or NULL */
};

static const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "OK";
    }
}

/* ---- the cross-thread inbox ------------------------------------------ */

bool http_post(struct http_loop *l, struct http_task *t)
{
    bool wake = false;
    pthread_mutex_lock(&l->mu);
    if (t->queued) {
        pthread_mutex_unlock(&l->mu);
        return false;
    }
    t->queued = true;
    t->next = NULL;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    if (!l->wake_pending)
        wake = l->wake_pending = true;
    pthread_mutex_unlock(&l->mu);
    /* One wake message per loop is in flight at a time, so h2o never sees
     * the same message linked twice. */
    if (wake)
        h2o_multithread_send_message(&l->receiver, &l->wake_msg);
    return true;
}

static void http_on_wake(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct http_loop *l = H2O_STRUCT_FROM_MEMBER(struct http_loop, receiver, receiver);
    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    pthread_mutex_lock(&l->mu);
    struct http_task *t = l->head;
    l->head = l->tail = NULL;
    l->wake_pending = false;
    pthread_mutex_unlock(&l->mu);
    /* Run the batch taken, each task after reading its link and clearing
     * its mark under the lock: until then http_post refuses to queue it
     * again (it is still in this batch, and will run), and once the mark is
     * clear a new post may rewrite t->next, which is read already. Clearing
     * every mark up front let another thread relink a task while this loop
     * still followed its old link, and the rest of the batch was lost
     * (found by ThreadSanitizer). A task may free the object it lives in,
     * so nothing of it is touched after fn. */
    while (t) {
        pthread_mutex_lock(&l->mu);
        struct http_task *next = t->next;
        t->queued = false;
        pthread_mutex_unlock(&l->mu);
        t->fn(t);
        t = next;
    }
}

/* ---- requests ---------------------------------------------------------- */

static void http_req_dispose(void *p)
{
    struct http_req *r = p;
    r->closed = true;
    /* The timers live in the request; they must not fire after it. */
    if (h2o_timeout_is_linked(&r->stall_entry))
        h2o_timeout_unlink(&r->stall_entry);
    if (h2o_timeout_is_linked(&r->watch_entry))
        h2o_timeout_unlink(&r->watch_entry);
    if (r->on_close)
        r->on_close(r->ctx);
    free(r->pend.ptr);
    free(r->infl.ptr);
}

/* Drop a request whose client has stopped reading: its connection is shut
 * down, with a reset so the kernel frees the unsent bytes at once; h2o sees
 * the write fail and disposes the request. On HTTP/2 that ends every
 * stream of the connection: h2o 2.2 has no public call to reset a single
 * stream (its internal header needs khash, which it does not install). */
static void http_abort(struct http_req *r)
{
    h2o_req_t *req = r->req;
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    r->closed = true;
    if (sock) {
        int fd = h2o_socket_get_fd(sock);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        shutdown(fd, SHUT_RDWR);
    }
}

static void http_on_stall(h2o_timeout_entry_t *entry)
{
    struct http_req *r = H2O_STRUCT_FROM_MEMBER(struct http_req, stall_entry, entry);
    LMD_WARN("http: a client took no response bytes for %.1f s; dropping its request",
             (double)r->loop->stall_timeout.timeout / 1000.0);
    http_abort(r);
}

/* HTTP/1.1 only: h2o does not read the socket while a request is being
 * handled, so a client that hangs up is not seen until the answer is
 * written. A peek once a second (POLLRDHUP: the peer shut down its side)
 * tells the handler sooner. */
static void http_on_watch(h2o_timeout_entry_t *entry)
{
    struct http_req *r = H2O_STRUCT_FROM_MEMBER(struct http_req, watch_entry, entry);
    if (r->closed || r->answered)
        return;
    h2o_socket_t *sock = r->req->conn->callbacks->get_socket(r->req->conn);
    struct pollfd pfd = {.fd = sock ? h2o_socket_get_fd(sock) : -1, .events = POLLRDHUP};
    if (sock && poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        r->on_gone(r->gone_ctx);
        return;
    }
    h2o_timeout_link(r->loop->loop, &r->loop->ctx.one_sec_timeout, &r->watch_entry);
}

/* ---- CORS ---------------------------------------------------------------- */

static void http_set_head(struct http_req *r, int status, const char *ctype);

/* A request from an allowed origin: every answer to it, errors and event
 * streams included, carries the CORS headers, which are set now, before
 * the handler answers. A preflight (OPTIONS with
 * Access-Control-Request-Method) is answered here, 204, without reaching
 * the handler: it carries no key and asks for nothing but permission.
 * Returns true when the request was answered. */
static bool http_cors(const struct http_server *srv, struct http_req *r)
{
    struct http_str origin = http_req_header(r, "origin");
    const char *allow = http__cors_allow(&srv->cors, origin.ptr, origin.len);
    /* With a list of origins the answer depends on Origin, allowed or
     * not: caches must keep them apart. */
    if (origin.len && !srv->cors.any)
        http_req_add_header(r, "vary", "Origin");
    if (!allow)
        return false;
    http_req_add_header(r, "access-control-allow-origin", allow);
    h2o_req_t *req = r->req;
    bool preflight = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("OPTIONS")) &&
                     http_req_header(r, "access-control-request-method").len > 0;
    if (!preflight) {
        /* Scripts may read these; the others they see anyway. */
        http_req_add_header(r, "access-control-expose-headers", "X-Request-Id, Retry-After");
        return false;
    }
    http_req_add_header(r, "access-control-allow-methods", "GET, POST, OPTIONS");
    /* Echo the headers the page asked for when they look like header
     * names: "*" would not cover Authorization, which API keys need. */
    struct http_str want = http_req_header(r, "access-control-request-headers");
    char hdrs[520];
    if (http__cors_header_list_sane(want.ptr, want.len))
        snprintf(hdrs, sizeof hdrs, "%.*s", (int)want.len, want.ptr);
    else
        snprintf(hdrs, sizeof hdrs, "Authorization, Content-Type, X-Request-Id, X-Priority, X-SLA");
    http_req_add_header(r, "access-control-allow-headers", hdrs);
    http_req_add_header(r, "access-control-max-age", "86400");
    http_set_head(r, 204, "text/plain");
    req->res.content_length = 0;
    h2o_send_inline(req, "", 0);
    return true;
}

/* The value of a header line "name: value" with its blanks trimmed. */
static h2o_iovec_t http1_line_value(const char *p, const char *end)
{
    const char *v = memchr(p, ':', (size_t)(end - p));
    if (!v)
        return h2o_iovec_init(NULL, 0);
    v++;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    return h2o_iovec_init(v, (size_t)(end - v));
}

/*
 * HTTP/1 framing that two parsers could read two ways (RFC 9112 6.3): more
 * than one Content-Length with different values, or Content-Length beside
 * Transfer-Encoding. A proxy in front that takes the other reading would
 * see another request where lmd sees a body (request smuggling); RFC 9112
 * wants a 400 and the connection closed. h2o 2.2 frames such a request by
 * its first Content-Length (or by Transfer-Encoding) and keeps neither
 * header in req->headers, so the check reads the request head itself:
 * until the answer is sent, h2o keeps it at the start of the connection's
 * input buffer (parsed in place, names in lower case). Where that buffer
 * does not start with this request's method, the head is not there to
 * read and nothing is said.
 */
static const char *http1_framing_error(h2o_req_t *req)
{
    if (req->version >= 0x200 || !req->conn->callbacks->get_socket)
        return NULL;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (!sock || !sock->input || sock->input->size < req->method.len ||
        memcmp(sock->input->bytes, req->method.base, req->method.len) != 0)
        return NULL;
    const char *p = sock->input->bytes, *end = p + sock->input->size;
    /* Past the request line. */
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return NULL;
    p = nl + 1;
    h2o_iovec_t cl = {NULL, 0};
    bool te = false;
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le == p || (le == p + 1 && *p == '\r'))
            break; /* the blank line: end of the head */
        static const char kcl[] = "content-length:", kte[] = "transfer-encoding:";
        size_t n = (size_t)(le - p);
        if (n >= sizeof kcl - 1 && strncasecmp(p, kcl, sizeof kcl - 1) == 0) {
            h2o_iovec_t v = http1_line_value(p, le);
            if (cl.base && !h2o_memis(cl.base, cl.len, v.base, v.len))
                return "more than one Content-Length header, with different values";
            cl = v;
        } else if (n >= sizeof kte - 1 && strncasecmp(p, kte, sizeof kte - 1) == 0) {
            te = true;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    if (cl.base && te)
        return "both Content-Length and Transfer-Encoding headers";
    return NULL;
}

const char *http_req_framing_error(const struct http_req *r) { return r->framing; }

static int http_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct http_server *srv = ((struct http_handler *)self)->srv;
    struct http_req *r = h2o_mem_alloc_shared(&req->pool, sizeof *r, http_req_dispose);
    memset(r, 0, sizeof *r);
    r->req = req;
    r->loop = H2O_STRUCT_FROM_MEMBER(struct http_loop, ctx, req->conn->ctx);
    r->stall_entry.cb = http_on_stall;
    r->watch_entry.cb = http_on_watch;
    if ((r->framing = http1_framing_error(req)) != NULL)
        req->http1_is_persistent = 0; /* what follows the body is not read as a request */
    if (http__cors_on(&srv->cors) && http_cors(srv, r))
        return 0;
    srv->cfg.handler(srv->cfg.ud, r);
    return 0;
}

struct http_str http_req_method(const struct http_req *r)
{
    return (struct http_str){r->req->method.base, r->req->method.len};
}

struct http_str http_req_path(const struct http_req *r)
{
    h2o_iovec_t p = r->req->path_normalized;
    /* path_normalized keeps no query; cut one anyway if present. */
    const char *q = p.base ? memchr(p.base, '?', p.len) : NULL;
    return (struct http_str){p.base, q ? (size_t)(q - p.base) : p.len};
}

int http_req_status(const struct http_req *r) { return r->answered ? r->req->res.status : 0; }

struct http_str http_req_query(const struct http_req *r)
{
    const h2o_req_t *q = r->req;
    if (q->query_at == SIZE_MAX || q->query_at + 1 > q->path.len)
        return (struct http_str){"", 0};
    return (struct http_str){q->path.base + q->query_at + 1, q->path.len - q->query_at - 1};
}

struct http_str http_req_body(const struct http_req *r)
{
    if (!r->req->entity.base)
        return (struct http_str){"", 0};
    return (struct http_str){r->req->entity.base, r->req->entity.len};
}

struct http_str http_req_header(const struct http_req *r, const char *name)
{
    size_t n = strlen(name);
    const h2o_headers_t *h = &r->req->headers;
    for (size_t i = 0; i < h->size; i++)
        if (h->entries[i].name->len == n && strncasecmp(h->entries[i].name->base, name, n) == 0)
            return (struct http_str){h->entries[i].value.base, h->entries[i].value.len};
    return (struct http_str){"", 0};
}

void http_req_add_header(struct http_req *r, const char *name, const char *value)
{
    if (r->closed || r->answered)
        return;
    h2o_req_t *req = r->req;
    /* HTTP/2 wants lower-case names; HTTP/1.1 does not care. */
    h2o_iovec_t n = h2o_strdup(&req->pool, name, strlen(name));
    h2o_strtolower(n.base, n.len);
    h2o_iovec_t v = h2o_strdup(&req->pool, value, strlen(value));
    h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
}

struct http_loop *http_req_loop(const struct http_req *r) { return r->loop; }

void http_req_on_close(struct http_req *r, void (*fn)(void *ctx), void *ctx)
{
    r->on_close = fn;
    r->ctx = ctx;
}

void http_req_watch_disconnect(struct http_req *r, void (*fn)(void *ctx), void *ctx)
{
    if (!fn) {
        /* The watcher hands the request on: nothing is called from now. */
        r->on_gone = NULL;
        if (h2o_timeout_is_linked(&r->watch_entry))
            h2o_timeout_unlink(&r->watch_entry);
        return;
    }
    if (r->closed || r->answered || r->req->version >= 0x200)
        return; /* HTTP/2 resets dispose the request already */
    r->on_gone = fn;
    r->gone_ctx = ctx;
    if (!h2o_timeout_is_linked(&r->watch_entry))
        h2o_timeout_link(r->loop->loop, &r->loop->ctx.one_sec_timeout, &r->watch_entry);
}

static void http_set_head(struct http_req *r, int status, const char *ctype)
{
    h2o_req_t *req = r->req;
    req->res.status = status;
    req->res.reason = http_reason(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    r->answered = true;
    if (h2o_timeout_is_linked(&r->watch_entry))
        h2o_timeout_unlink(&r->watch_entry);
}

void http_respond(struct http_req *r, int status, const char *ctype, const char *body, size_t len, const char *hname,
                  const char *hvalue)
{
    if (r->closed || r->answered)
        return;
    h2o_req_t *req = r->req;
    if (hname && hvalue)
        http_req_add_header(r, hname, hvalue);
    http_set_head(r, status, ctype);
    req->res.content_length = len;
    h2o_send_inline(req, body, len);
}

/* Hand what is pending to h2o, unless a send is already in flight. The two
 * buffers swap so that writes during a send never touch the bytes h2o is
 * still reading, and grow only to the largest burst seen. */
static void http_flush(struct http_req *r)
{
    if (r->closed || r->sending || r->final_sent || (r->pend.len == 0 && !r->final_pending))
        return;
    struct lmd_buf t = r->infl;
    r->infl = r->pend;
    r->pend = t;
    r->pend.len = 0;
    r->sending = true;
    h2o_send_state_t state = H2O_SEND_STATE_IN_PROGRESS;
    if (r->final_pending) {
        state = H2O_SEND_STATE_FINAL;
        r->final_sent = true;
    }
    /* The stall clock runs while h2o holds bytes the client has not taken;
     * proceed (or the request's disposal after the final send) stops it. */
    if (r->loop->stall_timeout.timeout && !h2o_timeout_is_linked(&r->stall_entry))
        h2o_timeout_link(r->loop->loop, &r->loop->stall_timeout, &r->stall_entry);
    h2o_iovec_t v = h2o_iovec_init(r->infl.ptr, r->infl.len);
    h2o_send(r->req, &v, r->infl.len ? 1 : 0, state);
}

static void http_on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct http_req *r = H2O_STRUCT_FROM_MEMBER(struct http_req, gen, gen);
    r->sending = false;
    r->infl.len = 0;
    if (h2o_timeout_is_linked(&r->stall_entry))
        h2o_timeout_unlink(&r->stall_entry);
    http_flush(r);
    /* Everything written has gone: the producer may write more. */
    if (!r->sending && !r->closed && !r->final_pending && r->on_drain)
        r->on_drain(r->drain_ctx);
}

static void http_on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    struct http_req *r = H2O_STRUCT_FROM_MEMBER(struct http_req, gen, gen);
    r->closed = true;
}

/* Bytes of kernel send buffer for a connection that carries a stream. Left
 * alone, Linux grows it to tcp_wmem's maximum (4 MiB by default), which
 * would hide a client that stopped reading for megabytes and make the
 * memory behind each stream that much larger. Token streams are slow next
 * to any link, so a fixed buffer (the kernel doubles this value) costs no
 * throughput. */
#define HTTP_STREAM_SNDBUF (128 * 1024)

void http_stream_begin(struct http_req *r, int status, const char *ctype)
{
    if (r->closed || r->answered)
        return;
    h2o_socket_t *sock = r->req->conn->callbacks->get_socket ? r->req->conn->callbacks->get_socket(r->req->conn) : NULL;
    if (sock) {
        int sz = HTTP_STREAM_SNDBUF;
        setsockopt(h2o_socket_get_fd(sock), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    http_set_head(r, status, ctype);
    h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    r->gen.proceed = http_on_proceed;
    r->gen.stop = http_on_stop;
    h2o_start_response(r->req, &r->gen);
}

void http_stream_write(struct http_req *r, const char *data, size_t len, bool final)
{
    if (r->closed || r->final_pending)
        return;
    if (len && lmd_buf_append(&r->pend, data, len) != 0) {
        /* Out of memory: end the response rather than send a gap. */
        LMD_ERROR("http: out of memory buffering a streamed response");
        final = true;
    }
    if (final)
        r->final_pending = true;
    http_flush(r);
}

size_t http_stream_unsent(const struct http_req *r) { return r->pend.len + (r->sending ? r->infl.len : 0); }

void http_stream_on_drain(struct http_req *r, void (*fn)(void *ctx), void *ctx)
{
    r->on_drain = fn;
    r->drain_ctx = ctx;
}

/* ---- loops and the listener -------------------------------------------- */

static void http_on_conn_close(void *data)
{
    (void)data;
    obs_gauge_add(OBS_G_CONNECTIONS, -1);
}

/* Whether one EMFILE/ENFILE pause has been logged in this process: the
 * first says what happened and what to do; the counter tells the rest. */
static atomic_bool g_fd_limit_logged;

static void http_on_accept(h2o_socket_t *listener, const char *err);

/* Out of descriptors: the pending connection stays in the kernel's backlog
 * and the listener stays readable, so accepting again at once would spin
 * the loop at 100 % of a core and starve the requests in flight. Stop
 * reading the listener for ~100 ms instead (h2o's hundred_ms_timeout); the
 * backlog waits, and closing connections make room meanwhile. */
static void http_pause_accepting(struct http_loop *l, int e)
{
    obs_count(OBS_C_ACCEPT_PAUSES, 1);
    if (!atomic_exchange(&g_fd_limit_logged, true))
        lmd_log(LMD_LOG_WARN,
                "accept: %s; new connections wait in the backlog, retried every 100 ms (raise the limit: "
                "ulimit -n; lmd_http_accept_pauses_total counts these pauses)",
                strerror(e));
    h2o_socket_read_stop(l->listener);
    h2o_timeout_link(l->loop, &l->ctx.hundred_ms_timeout, &l->accept_backoff);
}

static void http_on_accept_backoff(h2o_timeout_entry_t *entry)
{
    struct http_loop *l = H2O_STRUCT_FROM_MEMBER(struct http_loop, accept_backoff, entry);
    if (l->listener)
        h2o_socket_read_start(l->listener, http_on_accept);
}

static void http_on_accept(h2o_socket_t *listener, const char *err)
{
    struct http_loop *l = listener->data;
    if (err)
        return;
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (!sock) {
        int e = errno;
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
            http_pause_accepting(l, e);
        return;
    }
    /* lmd_http_connections_open: h2o calls on_close when it disposes of
     * the socket, whichever side closed it. */
    obs_gauge_add(OBS_G_CONNECTIONS, 1);
    sock->on_close.cb = http_on_conn_close;
    sock->on_close.data = NULL;
    h2o_accept(&l->accept_ctx, sock);
}

static void http_close_listener(struct http_task *t)
{
    struct http_loop *l = H2O_STRUCT_FROM_MEMBER(struct http_loop, stop_task, t);
    if (h2o_timeout_is_linked(&l->accept_backoff))
        h2o_timeout_unlink(&l->accept_backoff);
    if (l->listener) {
        h2o_socket_read_stop(l->listener);
        h2o_socket_close(l->listener);
        l->listener = NULL;
    }
}

static bool http_ctx_idle(h2o_context_t *c)
{
    h2o_timeout_t *t[] = {&c->zero_timeout,
                          &c->one_sec_timeout,
                          &c->hundred_ms_timeout,
                          &c->handshake_timeout,
                          &c->http1.req_timeout,
                          &c->http2.idle_timeout,
                          &c->http2.graceful_shutdown_timeout,
                          &c->proxy.io_timeout};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!h2o_linklist_is_empty(&t[i]->_entries))
            return false;
    struct http_loop *l = H2O_STRUCT_FROM_MEMBER(struct http_loop, ctx, c);
    return h2o_linklist_is_empty(&l->stall_timeout._entries);
}

static void http_exit_loop(struct http_task *t)
{
    struct http_loop *l = H2O_STRUCT_FROM_MEMBER(struct http_loop, exit_task, t);
    l->exiting = true;
}

static void *http_loop_main(void *arg)
{
    struct http_loop *l = arg;
    struct http_server *srv = l->srv;
    /* h2o's evloop keeps per-thread state: create everything on this thread. */
    l->loop = h2o_evloop_create();
    h2o_context_init(&l->ctx, l->loop, &srv->gconf);
    l->accept_ctx.ctx = &l->ctx;
    l->accept_ctx.hosts = srv->gconf.hosts;
    l->accept_ctx.ssl_ctx = srv->ssl_ctx;
    h2o_timeout_init(l->loop, &l->stall_timeout, (uint64_t)srv->cfg.stall_timeout_ms);
    l->accept_backoff.cb = http_on_accept_backoff;
    h2o_multithread_register_receiver(l->ctx.queue, &l->receiver, http_on_wake);
    l->listener = h2o_evloop_socket_create(l->loop, l->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    l->listener->data = l;
    h2o_socket_read_start(l->listener, http_on_accept);

    pthread_mutex_lock(&srv->start_mu);
    srv->n_started++;
    pthread_cond_broadcast(&srv->start_cv);
    pthread_mutex_unlock(&srv->start_mu);

    while (!l->exiting)
        h2o_evloop_run(l->loop, INT32_MAX);
    /* A task posted after the batch that held the stop took the wake flag
     * and sent a wake message of its own; h2o requires the receiver's queue
     * empty when it is unregistered (it asserts), and the task must run.
     * Turn the loop until no wake is in flight. */
    for (;;) {
        pthread_mutex_lock(&l->mu);
        const bool pending = l->wake_pending;
        pthread_mutex_unlock(&l->mu);
        if (!pending)
            break;
        h2o_evloop_run(l->loop, 10);
    }

    http_close_listener(&l->stop_task);
    h2o_multithread_unregister_receiver(l->ctx.queue, &l->receiver);
    /* h2o 2.2 cannot dispose a context while connections are open (their
     * timers are still armed) and has no call to close them all. Give
     * connections the clients already closed a few turns to go; if some
     * are still open (idle keep-alive clients at shutdown), the loop is
     * left to the process exit instead of tripping h2o's assertions. The
     * disposal itself happens in http_server_free after the join, when no
     * other thread can still be writing to this loop's wakeup pipe. */
    for (int i = 0; i < 10 && !http_ctx_idle(&l->ctx); i++)
        h2o_evloop_run(l->loop, 10);
    l->idle = http_ctx_idle(&l->ctx);
    return NULL;
}

static int http_listen(const char *host, int port, int *out_fd, int *out_port, struct lmd_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &res);
    if (gai != 0)
        return lmd_err_set(err, LMD_EINVAL, "cannot resolve --host %s: %s", host, gai_strerror(gai));
    int fd = -1, e = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return lmd_err_set(err, LMD_EIO, "cannot listen on %s:%d: %s", host, port, strerror(e));
    fcntl(fd, F_SETFL, O_NONBLOCK);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *out_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    *out_fd = fd;
    return 0;
}

/* The OpenSSL error queue's last reason, for one-line messages. */
static const char *http_ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* Certificate and key, checked before anything listens, so a bad path or
 * a mismatched pair is a start-up error that names the file. */
static int http_tls_init(struct http_server *s, const struct http_config *cfg, struct lmd_err *err)
{
    if (!cfg->tls_cert && !cfg->tls_key)
        return 0;
    if (!cfg->tls_cert || !cfg->tls_key)
        return lmd_err_set(err, LMD_EINVAL, "TLS needs both --tls-cert and --tls-key");
    const char *files[2] = {cfg->tls_cert, cfg->tls_key}, *flags[2] = {"--tls-cert", "--tls-key"};
    for (int i = 0; i < 2; i++)
        if (access(files[i], R_OK) != 0)
            return lmd_err_set(err, LMD_EIO, "cannot read %s %s: %s", flags[i], files[i], strerror(errno));
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return lmd_err_set(err, LMD_ENOMEM, "cannot create a TLS context: %s", http_ssl_reason());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    int rc = 0;
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1)
        rc = lmd_err_set(err, LMD_EFORMAT, "cannot load --tls-cert %s: %s", cfg->tls_cert, http_ssl_reason());
    else if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1)
        rc = lmd_err_set(err, LMD_EFORMAT, "cannot load --tls-key %s: %s", cfg->tls_key, http_ssl_reason());
    else if (SSL_CTX_check_private_key(ctx) != 1)
        rc = lmd_err_set(err, LMD_EINVAL, "--tls-key %s does not match the certificate in --tls-cert %s", cfg->tls_key,
                         cfg->tls_cert);
    ERR_clear_error();
    if (rc) {
        SSL_CTX_free(ctx);
        return rc;
    }
    /* h2, then http/1.1: a client that offers both gets HTTP/2. */
    h2o_ssl_register_alpn_protocols(ctx, h2o_alpn_protocols);
    s->ssl_ctx = ctx;
    return 0;
}

int http_server_start(struct http_server **out, const struct http_config *cfg, struct lmd_err *err)
{
    *out = NULL;
    if (cfg->io_threads < 1 || cfg->io_threads > 64)
        return lmd_err_set(err, LMD_EINVAL, "--io-threads must be in [1, 64], got %d", cfg->io_threads);
    struct http_server *s = calloc(1, sizeof *s);
    if (!s)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    s->cfg = *cfg;
    if (cfg->stall_timeout_ms < 0)
        s->cfg.stall_timeout_ms = 0;
    int crc = http__cors_init(&s->cors, cfg->cors_origins, cfg->n_cors_origins, err);
    if (crc != 0) {
        free(s);
        return crc;
    }
    s->cfg.cors_origins = NULL; /* copied above */
    int fd = -1;
    int rc = http_tls_init(s, cfg, err);
    if (rc == 0)
        rc = http_listen(cfg->host, cfg->port, &fd, &s->port, err);
    if (rc) {
        if (s->ssl_ctx)
            SSL_CTX_free(s->ssl_ctx);
        free(s);
        return rc;
    }
    h2o_config_init(&s->gconf);
    s->gconf.max_request_entity_size = cfg->max_body * 2;
    s->gconf.server_name = h2o_iovec_init(H2O_STRLIT("lmd"));
    h2o_hostconf_t *host = h2o_config_register_host(&s->gconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    struct http_handler *h = (struct http_handler *)h2o_create_handler(path, sizeof *h);
    h->super.on_req = http_on_req;
    h->srv = s;

    pthread_mutex_init(&s->start_mu, NULL);
    pthread_cond_init(&s->start_cv, NULL);
    s->loops = calloc((size_t)cfg->io_threads, sizeof *s->loops);
    if (!s->loops) {
        close(fd);
        h2o_config_dispose(&s->gconf);
        if (s->ssl_ctx)
            SSL_CTX_free(s->ssl_ctx);
        free(s);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    }
    /* Every loop accepts on its own descriptor of the one socket. */
    for (int i = 0; i < cfg->io_threads; i++) {
        struct http_loop *l = &s->loops[i];
        l->srv = s;
        l->listen_fd = i == 0 ? fd : dup(fd);
        l->stop_task.fn = http_close_listener;
        pthread_mutex_init(&l->mu, NULL);
        l->exit_task.fn = http_exit_loop;
        if (l->listen_fd < 0 || pthread_create(&l->thread, NULL, http_loop_main, l) != 0) {
            LMD_ERROR("http: cannot start I/O thread %d", i);
            abort(); /* start-up only; nothing to serve with half the loops */
        }
        s->n_loops++;
    }
    pthread_mutex_lock(&s->start_mu);
    while (s->n_started < s->n_loops)
        pthread_cond_wait(&s->start_cv, &s->start_mu);
    pthread_mutex_unlock(&s->start_mu);
    *out = s;
    return 0;
}

int http_server_port(const struct http_server *s) { return s->port; }

bool http_server_tls(const struct http_server *s) { return s->ssl_ctx != NULL; }

void http_server_stop_accepting(struct http_server *s)
{
    for (int i = 0; i < s->n_loops; i++)
        http_post(&s->loops[i], &s->loops[i].stop_task);
}

void http_server_free(struct http_server *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_loops; i++)
        http_post(&s->loops[i], &s->loops[i].exit_task);
    bool all_idle = true;
    for (int i = 0; i < s->n_loops; i++) {
        struct http_loop *l = &s->loops[i];
        pthread_join(l->thread, NULL);
        pthread_mutex_destroy(&l->mu);
        if (l->idle) {
            h2o_timeout_dispose(l->loop, &l->stall_timeout);
            h2o_context_dispose(&l->ctx);
            h2o_evloop_destroy(l->loop);
        } else {
            LMD_DEBUG("http: I/O thread %d stopped with connections open; its loop is left to the exit", i);
            all_idle = false;
        }
    }
    if (all_idle)
        h2o_config_dispose(&s->gconf); /* contexts still alive point into it */
    /* Connections still open hold their own references to the context. */
    if (s->ssl_ctx)
        SSL_CTX_free(s->ssl_ctx);
    free(s->loops);
    pthread_mutex_destroy(&s->start_mu);
    pthread_cond_destroy(&s->start_cv);
    free(s);
}
