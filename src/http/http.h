/*
 * The HTTP edge: h2o event loops on N I/O threads, one listening socket,
 * HTTP/1.1 with keep-alive and cleartext HTTP/2 (prior knowledge, "h2c")
 * on the same port — or, given a certificate and key, TLS with ALPN
 * choosing h2 or http/1.1 — whole-response and streamed (SSE) answers with
 * bounded buffering, and a way for other threads to run work on a
 * request's I/O thread.
 *
 * It is not the API: it knows nothing of JSON, routes or models. Every
 * request goes to one handler (api/ installs it), which answers at once or
 * keeps the request and answers later from its own I/O thread.
 *
 * No h2o type appears here, so api/ and the CLI include this header
 * without h2o's.
 *
 * Lifetimes: a `struct http_req` lives in h2o's per-request memory pool:
 * from the handler call until the request is disposed (response finished,
 * client gone, or HTTP/2 stream reset). Disposal calls the on_close
 * callback the handler registered; after it, the http_req must not be
 * touched. Everything here except http_post runs on the request's I/O
 * thread and never blocks.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>

struct http_server;
struct http_req;
struct http_loop; /* one I/O thread */

struct http_str {
    const char *ptr; /* not NUL-terminated */
    size_t len;
};

typedef void (*http_handler_fn)(void *ud, struct http_req *r);

#define HTTP_MAX_CORS_ORIGINS 16 /* --cors-origin values */
#define HTTP_ORIGIN_MAX 256      /* bytes of one origin, NUL included */

struct http_config {
    const char *host;     /* address to bind: numeric or a name; "0.0.0.0" for all */
    int port;             /* 0 = any free port (see http_server_port) */
    int io_threads;       /* event loops, >= 1 */
    size_t max_body;      /* bytes; h2o refuses bodies over twice this itself, the handler checks the rest */
    const char *tls_cert; /* PEM certificate chain file; NULL (with tls_key NULL) = cleartext */
    const char *tls_key;  /* PEM private key file */
    int stall_timeout_ms; /* ms a streamed send may wait for the client before the request is dropped; 0 = never */
    /* CORS: browser pages from these origins may call the server; none =
     * off (no CORS header is ever sent). An origin is "*" (any) or
     * scheme://host[:port] as browsers send it. Copied at start. */
    const char *const *cors_origins; /* [n_cors_origins] */
    int n_cors_origins;              /* 0 .. HTTP_MAX_CORS_ORIGINS */
    http_handler_fn handler;
    void *ud;
};

/* Load the TLS pair if any, bind, listen and start the I/O threads. A
 * missing or unreadable file, or a key that does not match the
 * certificate, fails here (the message names the file) before anything
 * listens. */
int http_server_start(struct http_server **out, const struct http_config *cfg, struct lmd_err *err);
/* Whether s is an origin --cors-origin takes: "*", or http:// or https://
 * followed by a host (letters, digits, '.', '-', or a [bracketed] IPv6
 * address) and an optional :port, nothing after (no path, no trailing
 * slash: browsers never send one). */
bool http_cors_origin_valid(const char *s);
int http_server_port(const struct http_server *s);
bool http_server_tls(const struct http_server *s);
/* Close the listening socket on every loop (new connections are refused);
 * open connections keep being served. Any thread. */
void http_server_stop_accepting(struct http_server *s);
/* Stop the loops, join the threads and free the server. Requests still
 * open are abandoned: call it once the handler's work has drained. */
void http_server_free(struct http_server *s);

/* The request. */
struct http_str http_req_method(const struct http_req *r);
struct http_str http_req_path(const struct http_req *r); /* normalized, without the query */
/* The status answered (http_respond or http_stream_begin), 0 before that. */
int http_req_status(const struct http_req *r);
/* Why an HTTP/1 request's framing is ambiguous (two different
 * Content-Length values, or Content-Length with Transfer-Encoding), or
 * NULL. Such a request must be refused with a 400: its connection is
 * already marked to close after the answer. */
const char *http_req_framing_error(const struct http_req *r);
struct http_str http_req_body(const struct http_req *r);  /* empty if none */
struct http_str http_req_query(const struct http_req *r); /* after '?', undecoded; empty if none */
/* A request header's value, the name matched case-insensitively; the
 * first one if repeated; empty (len 0) when absent. Valid while the
 * request is. */
struct http_str http_req_header(const struct http_req *r, const char *name);
struct http_loop *http_req_loop(const struct http_req *r);
/* Call fn(ctx) when the request is disposed; one callback per request. */
void http_req_on_close(struct http_req *r, void (*fn)(void *ctx), void *ctx);
/* For a request answered later: call fn(ctx), once, on the I/O thread if
 * the client is seen to hang up before the answer starts. HTTP/1.1 only
 * (checked once a second; a client that half-closes after its request
 * counts as gone); HTTP/2 resets dispose the request, which on_close
 * already reports. The request stays valid: answer it as usual (the bytes
 * go nowhere) and on_close follows. One watcher per request: a later call
 * replaces fn, and fn NULL stops watching. */
void http_req_watch_disconnect(struct http_req *r, void (*fn)(void *ctx), void *ctx);

/* Add a response header before the response starts (any number; later
 * calls after http_respond/http_stream_begin are ignored). Copies both. */
void http_req_add_header(struct http_req *r, const char *name, const char *value);

/* A whole response. `hname`/`hvalue` add one more header (both may be
 * NULL), a shorthand for http_req_add_header. Copies everything it is
 * given. */
void http_respond(struct http_req *r, int status, const char *ctype, const char *body, size_t len, const char *hname,
                  const char *hvalue);

/* A streamed response: headers now, then any number of writes, the last
 * with final = true. Writes are buffered while the socket is busy, so a
 * slow client never blocks the loop; writes after the client has gone
 * are dropped. The buffer is not bounded here: the writer keeps it small
 * by looking at http_stream_unsent and waiting for on_drain. A send that
 * the client does not take within the stall timeout drops the request. */
void http_stream_begin(struct http_req *r, int status, const char *ctype);
void http_stream_write(struct http_req *r, const char *data, size_t len, bool final);
/* Bytes written and not yet taken by the client's connection. */
size_t http_stream_unsent(const struct http_req *r);
/* Call fn(ctx) on the I/O thread each time everything written so far has
 * been taken (http_stream_unsent fell to 0). fn may write. */
void http_stream_on_drain(struct http_req *r, void (*fn)(void *ctx), void *ctx);

/* Cross-thread work: a task embedded in the caller's object, run on a
 * loop's thread. The caller keeps the object alive until fn has run
 * (http_post returns false, and queues nothing, if it is already queued:
 * the pending run will see the new state too). */
struct http_task {
    struct http_task *next;
    void (*fn)(struct http_task *t);
    bool queued; /* guarded by the loop's lock */
};

bool http_post(struct http_loop *l, struct http_task *t);
