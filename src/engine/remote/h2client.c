/*
 * The HTTP/2 client of the remote engine (h2client.h): nghttp2 frames,
 * h2o's socket carries. Reads are handed to nghttp2_session_mem_recv as
 * they come and consumed whole; writes gather what mem_send has into one
 * buffer (at most H2CLI_WRITE_BURST bytes a turn) and go out with one
 * h2o_socket_write, the next burst after it completes.
 *
 * Streams are found by id in the connection's list (a handful per
 * connection), not through nghttp2's stream user data: a cancelled
 * stream is out of the list at once, so a frame nghttp2 still delivers for
 * it finds nothing, whatever state nghttp2 keeps for it.
 *
 * Callbacks into the owner happen inside nghttp2's callbacks; the owner
 * may submit and cancel streams there (nghttp2 allows it) but the
 * connection is never freed under them: `busy` counts the calls in
 * progress, and teardown waits for it to drop to zero.
 */
#include "engine/remote/h2client.h"

#include "core/buf.h"

#include <nghttp2/nghttp2.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H2CLI_WRITE_BURST (64 * 1024) /* bytes gathered for one socket write */
#define H2CLI_STREAM_WINDOW (1 << 20) /* bytes a stream may have in flight to us */
#define H2CLI_CONN_WINDOW (16 << 20)  /* bytes the connection may have in flight to us */
#define H2CLI_DEFAULT_STREAMS 100     /* assumed until the upstream's SETTINGS say */

struct h2cli_conn {
    struct h2cli_config cfg;
    char host[256];
    char serv[8];
    const struct h2cli_conn_cb *cb;
    void *ud;
    nghttp2_session *ngh;
    h2o_socket_t *sock;
    h2o_hostinfo_getaddr_req_t *getaddr;
    h2o_timeout_entry_t connect_timer;
    struct h2cli_stream *streams; /* open streams, newest first */
    int n_streams;
    struct lmd_buf wbuf; /* frames being written (untouched until the write completes) */
    bool writing;
    bool up;           /* connected (and TLS done): frames may go out */
    bool got_settings; /* the upstream's first SETTINGS came */
    bool any_read;
    bool dead;     /* takes no new stream */
    bool released; /* the owner let go */
    bool torn;     /* socket and session gone */
    bool opening;  /* inside h2cli_open: a failure there is its return value */
    int busy;      /* callbacks into the owner in progress */
    char err[200]; /* why it died */
    char msg[200]; /* scratch for a stream's end */
};

static struct h2cli_stream *find(struct h2cli_conn *c, int32_t id)
{
    for (struct h2cli_stream *s = c->streams; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void unlink_stream(struct h2cli_stream *s)
{
    struct h2cli_conn *c = s->conn;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->conn = NULL;
    c->n_streams--;
}

static void teardown(struct h2cli_conn *c)
{
    if (c->torn)
        return;
    c->torn = true;
    if (h2o_timeout_is_linked(&c->connect_timer))
        h2o_timeout_unlink(&c->connect_timer);
    if (c->getaddr) {
        h2o_hostinfo_getaddr_cancel(c->getaddr);
        c->getaddr = NULL;
    }
    if (c->sock) {
        c->sock->data = NULL;
        h2o_socket_close(c->sock);
        c->sock = NULL;
    }
}

/* Free it once nobody needs it: dead or let go, no stream, no callback in progress. */
static void maybe_free(struct h2cli_conn *c)
{
    if (c->busy || c->n_streams || !(c->dead || c->released))
        return;
    teardown(c);
    if (c->ngh)
        nghttp2_session_del(c->ngh);
    lmd_buf_free(&c->wbuf);
    free(c);
}

static void mark_dead(struct h2cli_conn *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    if (!c->err[0])
        snprintf(c->err, sizeof c->err, "%s", why);
    if (!c->released && !c->opening && c->cb->on_dead) {
        c->busy++;
        c->cb->on_dead(c, c->ud, c->err);
        c->busy--;
    }
}

/* The connection is over: every stream still open ends with the error.
 * It never frees c: each entry point (a socket callback, a call of the
 * interface) ends with one maybe_free and touches c no more. */
static void conn_fail(struct h2cli_conn *c, const char *why)
{
    mark_dead(c, why);
    teardown(c);
    c->busy++;
    while (c->streams) {
        struct h2cli_stream *s = c->streams;
        unlink_stream(s);
        s->cb->on_close(s, c->err, false);
    }
    c->busy--;
}

static void flush(struct h2cli_conn *c);

static void on_write_done(h2o_socket_t *sock, const char *err)
{
    struct h2cli_conn *c = sock->data;
    if (!c)
        return;
    c->writing = false;
    c->wbuf.len = 0;
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "writing to the upstream: %s", err);
        conn_fail(c, why);
    } else {
        flush(c);
    }
    maybe_free(c);
}

/* Send what nghttp2 has queued, one burst at a time. */
static void flush(struct h2cli_conn *c)
{
    if (c->busy || !c->up || c->writing || c->torn)
        return;
    while (c->wbuf.len < H2CLI_WRITE_BURST) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ngh, &data);
        if (n < 0) {
            char why[160];
            snprintf(why, sizeof why, "HTTP/2: %s", nghttp2_strerror((int)n));
            conn_fail(c, why);
            return;
        }
        if (n == 0)
            break;
        if (lmd_buf_append(&c->wbuf, data, (size_t)n) != 0) {
            conn_fail(c, "out of memory");
            return;
        }
    }
    if (c->wbuf.len) {
        c->writing = true;
        h2o_iovec_t iov = h2o_iovec_init(c->wbuf.ptr, c->wbuf.len);
        h2o_socket_write(c->sock, &iov, 1, on_write_done);
        return;
    }
    if (!nghttp2_session_want_read(c->ngh) && !nghttp2_session_want_write(c->ngh))
        conn_fail(c, c->err[0] ? c->err : "the HTTP/2 session ended");
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    struct h2cli_conn *c = sock->data;
    if (!c)
        return;
    if (err) {
        conn_fail(c, err == h2o_socket_error_closed ? "the upstream closed the connection" : err);
        maybe_free(c);
        return;
    }
    h2o_buffer_t *in = sock->input;
    if (!c->any_read && in->size) {
        c->any_read = true;
        /* An HTTP/2 server's first frame is SETTINGS (type 4, its fourth
         * byte); a server without HTTP/2 answers the preface as a bad
         * HTTP/1 request, with a status line or (HTTP/0.9 style) without. */
        if (in->size >= 4 && (unsigned char)in->bytes[3] != NGHTTP2_SETTINGS) {
            bool h1 = in->size >= 5 && memcmp(in->bytes, "HTTP/", 5) == 0;
            conn_fail(c, h1 ? "the upstream answered in HTTP/1: it does not speak HTTP/2 with prior knowledge "
                              "(h2c)"
                            : "the upstream does not speak HTTP/2 (its first bytes are no SETTINGS frame)");
            maybe_free(c);
            return;
        }
    }
    c->busy++;
    ssize_t rv = nghttp2_session_mem_recv(c->ngh, (const uint8_t *)in->bytes, in->size);
    c->busy--;
    h2o_buffer_consume(&sock->input, in->size);
    if (rv < 0) {
        char why[200];
        snprintf(why, sizeof why, "HTTP/2 from the upstream: %.160s", c->err[0] ? c->err : nghttp2_strerror((int)rv));
        conn_fail(c, why);
    } else {
        flush(c);
    }
    maybe_free(c);
}

static void on_up(struct h2cli_conn *c)
{
    if (h2o_timeout_is_linked(&c->connect_timer))
        h2o_timeout_unlink(&c->connect_timer);
    c->up = true;
    h2o_socket_read_start(c->sock, on_read);
    flush(c);
}

static void on_handshake(h2o_socket_t *sock, const char *err)
{
    struct h2cli_conn *c = sock->data;
    if (!c)
        return;
    char why[200];
    h2o_iovec_t p = err ? h2o_iovec_init(NULL, 0) : h2o_socket_ssl_get_selected_protocol(sock);
    if (err) {
        snprintf(why, sizeof why, "TLS handshake: %s", err);
        conn_fail(c, why);
    } else if (p.len != 2 || memcmp(p.base, "h2", 2) != 0) {
        snprintf(why, sizeof why, "the upstream did not accept h2 (ALPN: %s%.*s%s)", p.len ? "'" : "",
                 (int)(p.len > 40 ? 40 : p.len), p.len ? p.base : "none chosen", p.len ? "'" : "");
        conn_fail(c, why);
    } else {
        on_up(c);
    }
    maybe_free(c);
}

static void on_connect(h2o_socket_t *sock, const char *err)
{
    struct h2cli_conn *c = sock->data;
    if (!c)
        return;
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "connection failed: %s", err);
        conn_fail(c, why);
    } else if (c->cfg.ssl_ctx) {
        h2o_socket_ssl_handshake(sock, c->cfg.ssl_ctx, c->host, on_handshake);
    } else {
        on_up(c);
    }
    maybe_free(c);
}

static void connect_to(struct h2cli_conn *c, struct sockaddr *sa, socklen_t len)
{
    c->sock = h2o_socket_connect(c->cfg.loop, sa, len, on_connect);
    if (!c->sock) {
        conn_fail(c, "connection failed: cannot open a socket");
        return;
    }
    c->sock->data = c;
}

static void on_getaddr(h2o_hostinfo_getaddr_req_t *req, const char *errstr, struct addrinfo *res, void *data)
{
    (void)req;
    struct h2cli_conn *c = data;
    c->getaddr = NULL;
    if (errstr || !res) {
        char why[200];
        snprintf(why, sizeof why, "cannot resolve %.100s: %.80s", c->host, errstr ? errstr : "no address");
        conn_fail(c, why);
    } else {
        struct addrinfo *a = h2o_hostinfo_select_one(res);
        connect_to(c, a->ai_addr, a->ai_addrlen);
    }
    maybe_free(c);
}

static void on_connect_timeout(h2o_timeout_entry_t *e)
{
    struct h2cli_conn *c = H2O_STRUCT_FROM_MEMBER(struct h2cli_conn, connect_timer, e);
    conn_fail(c, "connection timed out");
    maybe_free(c);
}

/* ---- nghttp2's callbacks ------------------------------------------------------- */

static int on_header(nghttp2_session *ngh, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)ngh, (void)flags;
    struct h2cli_conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct h2cli_stream *s = find(c, f->hd.stream_id);
    if (!s)
        return 0;
    s->hdr_bytes += namelen + valuelen + 32; /* as HPACK counts an entry */
    if (s->hdr_bytes > H2CLI_HEADERS_MAX) {
        /* Reset here; the owner hears of it as the stream's end. */
        nghttp2_submit_rst_stream(c->ngh, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        unlink_stream(s);
        snprintf(c->msg, sizeof c->msg, "the upstream's response headers exceed %d bytes", H2CLI_HEADERS_MAX);
        c->busy++;
        s->cb->on_close(s, c->msg, false);
        c->busy--;
        return 0;
    }
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 4; i++)
            st = (value[i] >= '0' && value[i] <= '9') ? st * 10 + (value[i] - '0') : -1000;
        s->status = valuelen == 3 && st >= 100 ? st : 0;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *ngh, const nghttp2_frame *f, void *ud)
{
    struct h2cli_conn *c = ud;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            c->got_settings = true;
        break;
    case NGHTTP2_GOAWAY: {
        /* Streams above last_stream_id end as refused (nghttp2 closes
         * them); those below finish; nothing new goes here. */
        char why[160];
        snprintf(why, sizeof why, "the upstream sent GOAWAY (%s)", nghttp2_http2_strerror(f->goaway.error_code));
        mark_dead(c, why);
        break;
    }
    case NGHTTP2_HEADERS: {
        struct h2cli_stream *s = find(c, f->hd.stream_id);
        if (!s || s->got_head)
            break;
        if (s->status >= 100 && s->status < 200) {
            s->status = 0; /* an interim answer: the final one follows */
            break;
        }
        if (s->status == 0) {
            nghttp2_submit_rst_stream(ngh, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_PROTOCOL_ERROR);
            unlink_stream(s);
            c->busy++;
            s->cb->on_close(s, "a response without a valid :status", false);
            c->busy--;
            break;
        }
        s->got_head = true;
        int32_t id = s->id;
        c->busy++;
        int rc = s->cb->on_head(s, s->status);
        c->busy--;
        /* The owner may have cancelled (and even resubmitted) it meanwhile. */
        if (rc != 0 && (s = find(c, id)) != NULL) {
            nghttp2_submit_rst_stream(ngh, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
            unlink_stream(s);
        }
        break;
    }
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ngh, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    (void)flags;
    struct h2cli_conn *c = ud;
    struct h2cli_stream *s = find(c, id);
    if (!s || !s->got_head)
        return 0;
    c->busy++;
    int rc = s->cb->on_data(s, (const char *)data, len);
    c->busy--;
    if (rc != 0 && (s = find(c, id)) != NULL) {
        nghttp2_submit_rst_stream(ngh, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
        unlink_stream(s);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ngh, int32_t id, uint32_t code, void *ud)
{
    (void)ngh;
    struct h2cli_conn *c = ud;
    struct h2cli_stream *s = find(c, id);
    if (!s)
        return 0;
    unlink_stream(s);
    const char *err = NULL;
    bool refused = code == NGHTTP2_REFUSED_STREAM;
    if (code != NGHTTP2_NO_ERROR) {
        snprintf(c->msg, sizeof c->msg, "the upstream reset the stream (%s)", nghttp2_http2_strerror(code));
        err = c->msg;
    } else if (!s->got_head) {
        err = "the stream ended without a response";
    }
    c->busy++;
    s->cb->on_close(s, err, refused);
    c->busy--;
    return 0;
}

/* A request HEADERS that could not go out (a GOAWAY came first): the
 * stream never opened, so no close callback comes from nghttp2. */
static int on_frame_not_send(nghttp2_session *ngh, const nghttp2_frame *f, int lib_error, void *ud)
{
    (void)ngh;
    struct h2cli_conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct h2cli_stream *s = find(c, f->hd.stream_id);
    if (!s)
        return 0;
    unlink_stream(s);
    snprintf(c->msg, sizeof c->msg, "the request could not be sent: %s", nghttp2_strerror(lib_error));
    c->busy++;
    s->cb->on_close(s, c->msg, true);
    c->busy--;
    return 0;
}

static int on_error(nghttp2_session *ngh, int lib_error, const char *msg, size_t len, void *ud)
{
    (void)ngh, (void)lib_error;
    struct h2cli_conn *c = ud;
    if (!c->err[0])
        snprintf(c->err, sizeof c->err, "%.*s", (int)(len > 160 ? 160 : len), msg);
    return 0;
}

static ssize_t read_body(nghttp2_session *ngh, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)ngh, (void)src;
    struct h2cli_conn *c = ud; /* not src->ptr: the stream may be gone, its id is not */
    struct h2cli_stream *s = find(c, id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t left = s->body_len - s->body_off;
    size_t n = left < length ? left : length;
    memcpy(buf, s->body + s->body_off, n);
    s->body_off += n;
    if (s->body_off == s->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* ---- the interface ------------------------------------------------------------------ */

struct h2cli_conn *h2cli_open(const struct h2cli_config *cfg, const struct h2cli_conn_cb *cb, void *ud)
{
    struct h2cli_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = *cfg;
    snprintf(c->host, sizeof c->host, "%s", cfg->host);
    c->cfg.host = c->host;
    snprintf(c->serv, sizeof c->serv, "%d", cfg->port);
    c->cb = cb;
    c->ud = ud;
    c->connect_timer.cb = on_connect_timeout;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        free(c);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    int rc = nghttp2_option_new(&opt);
    if (rc == 0) {
        nghttp2_option_set_peer_max_concurrent_streams(opt, H2CLI_DEFAULT_STREAMS);
        rc = nghttp2_session_client_new2(&c->ngh, cbs, c, opt);
        nghttp2_option_del(opt);
    }
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2CLI_STREAM_WINDOW}};
    if (rc != 0 || nghttp2_submit_settings(c->ngh, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(c->ngh, NGHTTP2_FLAG_NONE, 0, H2CLI_CONN_WINDOW) != 0) {
        if (c->ngh)
            nghttp2_session_del(c->ngh);
        free(c);
        return NULL;
    }
    c->opening = true;
    c->busy++;
    if (cfg->connect_timeout)
        h2o_timeout_link(cfg->loop, cfg->connect_timeout, &c->connect_timer);
    /* An address literal connects now; a name is resolved off the loop. */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    if (inet_pton(AF_INET, c->host, &sin.sin_addr) == 1)
        connect_to(c, (struct sockaddr *)&sin, sizeof sin);
    else if (inet_pton(AF_INET6, c->host, &sin6.sin6_addr) == 1)
        connect_to(c, (struct sockaddr *)&sin6, sizeof sin6);
    else
        c->getaddr = h2o_hostinfo_getaddr(cfg->getaddr_receiver, h2o_iovec_init(c->host, strlen(c->host)),
                                          h2o_iovec_init(c->serv, strlen(c->serv)), AF_UNSPEC, SOCK_STREAM, IPPROTO_TCP,
                                          AI_ADDRCONFIG | AI_NUMERICSERV, on_getaddr, c);
    c->busy--;
    c->opening = false;
    if (c->dead) {
        /* No socket to be had: the caller learns it from the NULL. */
        teardown(c);
        nghttp2_session_del(c->ngh);
        lmd_buf_free(&c->wbuf);
        free(c);
        return NULL;
    }
    return c;
}

void h2cli_release(struct h2cli_conn *c)
{
    if (!c)
        return;
    c->released = true;
    /* With no stream left it goes now (closing the socket is the
     * upstream's cue); otherwise the last stream's end takes it. */
    if (!c->n_streams)
        c->dead = true;
    maybe_free(c);
}

bool h2cli_usable(const struct h2cli_conn *c) { return c && !c->dead && !c->released; }

bool h2cli_ready(const struct h2cli_conn *c) { return c && c->up && c->got_settings; }

int h2cli_max_streams(const struct h2cli_conn *c)
{
    if (!c || !c->got_settings)
        return H2CLI_DEFAULT_STREAMS;
    uint32_t v = nghttp2_session_get_remote_settings(c->ngh, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return v > 1000000 ? 1000000 : (int)v;
}

int h2cli_n_streams(const struct h2cli_conn *c) { return c ? c->n_streams : 0; }

int h2cli_submit(struct h2cli_conn *c, struct h2cli_stream *s, const char *method, const char *path,
                 const char *authority, const struct h2cli_header *hdr, size_t n_hdr, const char *body, size_t body_len)
{
    if (!h2cli_usable(c) || n_hdr > 12)
        return -1;
    nghttp2_nv nv[16];
    size_t n = 0;
#define NV(k, v) nv[n++] = (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
    NV(":method", method);
    NV(":scheme", c->cfg.ssl_ctx ? "https" : "http");
    NV(":authority", authority);
    NV(":path", path);
    for (size_t i = 0; i < n_hdr; i++)
        NV(hdr[i].name, hdr[i].value);
#undef NV
    s->body = body;
    s->body_len = body ? body_len : 0;
    s->body_off = 0;
    s->hdr_bytes = 0;
    s->status = 0;
    s->got_head = false;
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = read_body};
    int32_t id = nghttp2_submit_request(c->ngh, NULL, nv, n, body ? &prd : NULL, NULL);
    if (id < 0)
        return -1;
    s->id = id;
    s->conn = c;
    s->prev = NULL;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->n_streams++;
    flush(c);
    maybe_free(c);
    return 0;
}

void h2cli_cancel(struct h2cli_stream *s)
{
    struct h2cli_conn *c = s->conn;
    if (!c)
        return;
    if (!c->torn)
        nghttp2_submit_rst_stream(c->ngh, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    unlink_stream(s);
    if (c->released && !c->n_streams)
        c->dead = true;
    flush(c);
    maybe_free(c);
}
