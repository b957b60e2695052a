/*
 * An HTTP/2 client connection on an h2o event loop, for the remote
 * engine's upstreams: cleartext with prior knowledge (h2c) or TLS with
 * ALPN "h2". One connection carries many requests as streams; nghttp2
 * frames them (nghttp2_session_mem_recv / mem_send), h2o's socket moves
 * the bytes, and nothing blocks or starts a thread.
 *
 * Lifetime: the owner opens a connection (h2cli_open) and keeps it while
 * it is usable. When it stops being usable (the upstream's GOAWAY, a
 * broken socket, a protocol error) the connection calls on_dead once and
 * from then on belongs to itself: it ends when its last stream ends. The
 * owner may also let go of it (h2cli_release): it ends once its streams
 * have. All of it happens on the loop thread.
 *
 * A stream is embedded in the owner's request; the callbacks get it back.
 * After on_close, or after h2cli_cancel, no callback names it again, and
 * the owner may submit it anew (a retry) on any connection.
 *
 * Bounded: a response's header block over H2CLI_HEADERS_MAX bytes resets
 * its stream; the receive windows are fixed (what is read is handed on at
 * once); what is queued to write is at most one burst of frames.
 *
 * Internal to engine/remote.
 */
#pragma once

#include <h2o.h>
#include <openssl/ssl.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define H2CLI_HEADERS_MAX (64 * 1024) /* bytes of one response's header block */

struct h2cli_conn;
struct h2cli_stream;

struct h2cli_stream_cb {
    /* The response head. Returns 0 to read the body; otherwise the stream
     * is reset (and no other callback comes). */
    int (*on_head)(struct h2cli_stream *s, int status);
    /* Body bytes (valid during the call). Non-zero resets the stream. */
    int (*on_data)(struct h2cli_stream *s, const char *p, size_t n);
    /* The end: err NULL when the response came whole; refused when the
     * upstream did not process the request (REFUSED_STREAM, or above a
     * GOAWAY's last stream id): it may be sent again. */
    void (*on_close)(struct h2cli_stream *s, const char *err, bool refused);
};

struct h2cli_stream {
    const struct h2cli_stream_cb *cb;
    /* Set by h2cli_submit, cleared at the end. */
    struct h2cli_conn *conn;
    int32_t id;
    struct h2cli_stream *prev, *next; /* the connection's open streams */
    const char *body;                 /* the request body, owned by the caller until the end */
    size_t body_len, body_off;
    size_t hdr_bytes; /* of the response's header block so far */
    int status;       /* the response's :status; 0 before its head */
    bool got_head;
};

struct h2cli_conn_cb {
    /* The connection takes no new stream from now on (err says why); it
     * goes by itself once its streams end. Not called after h2cli_release. */
    void (*on_dead)(struct h2cli_conn *c, void *ud, const char *err);
};

struct h2cli_config {
    h2o_loop_t *loop;
    h2o_multithread_receiver_t *getaddr_receiver; /* for host names (resolved off the loop) */
    h2o_timeout_t *connect_timeout;               /* connect and TLS handshake */
    const char *host;                             /* a name or an address literal */
    int port;
    SSL_CTX *ssl_ctx; /* NULL = cleartext (h2c); else its ALPN offers h2 */
};

/* Open a connection (the connect goes on in the background; streams
 * submitted meanwhile go out once it is up). NULL when out of memory or
 * when no socket could be opened at all. */
struct h2cli_conn *h2cli_open(const struct h2cli_config *cfg, const struct h2cli_conn_cb *cb, void *ud);
/* The owner lets go: the connection ends when its streams have. */
void h2cli_release(struct h2cli_conn *c);
/* It takes new streams (not dead, not released). */
bool h2cli_usable(const struct h2cli_conn *c);
/* It is up and has answered at least once (SETTINGS read): a stream that
 * fails on it now is the upstream's doing, not a connect failure. */
bool h2cli_ready(const struct h2cli_conn *c);
/* The streams the upstream allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS; 100 until it says). */
int h2cli_max_streams(const struct h2cli_conn *c);
/* Streams open on it now. */
int h2cli_n_streams(const struct h2cli_conn *c);

struct h2cli_header {
    const char *name, *value; /* lower-case names */
};

/* Send a request as a new stream: method and path, :authority, :scheme
 * from the connection, extra headers, a body (NULL for none; kept by the
 * caller until the stream ends; the headers are copied). Returns 0, or -1 when the connection
 * takes no new stream (then no callback comes). */
int h2cli_submit(struct h2cli_conn *c, struct h2cli_stream *s, const char *method, const char *path,
                 const char *authority, const struct h2cli_header *hdr, size_t n_hdr, const char *body,
                 size_t body_len);
/* Reset the stream (RST_STREAM CANCEL); the connection stays for the
 * others. No callback comes for it after this. A no-op on a stream that
 * has ended. */
void h2cli_cancel(struct h2cli_stream *s);
