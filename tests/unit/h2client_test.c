/*
 * engine/remote/h2client.c against a real HTTP/2 server on loopback: an
 * nghttp2 server session in a thread of this test, on a blocking socket,
 * whose answers depend on the request's path. The client runs on an h2o
 * event loop here, as in the remote engine.
 *
 * Checked: several streams on one connection, each with its status and
 * body; a cancelled stream reaches the server as RST_STREAM(CANCEL) while
 * the others finish; a 4xx with its body; a GOAWAY whose last stream id
 * is below a stream's ends that stream as refused and the connection as
 * dead (the owner hears it once); a response whose header block is over
 * H2CLI_HEADERS_MAX ends its stream with an error, the connection stays;
 * endless DATA refused by the owner resets that stream, the connection
 * stays;
 * a server that writes garbage ends the connection and every stream with
 * an error; a server that speaks HTTP/1 is named as such; a port where
 * nothing listens fails the connection. Nothing here waits on a clock:
 * the loop runs until the expected events came (bounded by a count of
 * turns, each of at most 100 ms, as a guard against a hang).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/remote/h2client.h"

#include <nghttp2/nghttp2.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the server ------------------------------------------------------------------ */

struct srv {
    int lfd, port;
    pthread_t th;
    const char *raw; /* non-NULL: answer every connection with these bytes instead of HTTP/2 */
    size_t raw_len;
    nghttp2_session *ngh;
    _Atomic int n_cancelled; /* streams the client reset with CANCEL */
    _Atomic int n_requests;
    _Atomic int stop;
};

static ssize_t srv_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
    (void)s, (void)id, (void)ud;
    const char *body = src->ptr;
    if (strcmp(body, "endless") == 0) {
        memset(buf, 'x', len); /* DATA for ever, never the end of the stream */
        return (ssize_t)len;
    }
    size_t n = strlen(body);
    if (n > len)
        n = len;
    memcpy(buf, body, n);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void srv_answer(struct srv *sv, int32_t id, const char *path)
{
    sv->n_requests++;
    nghttp2_data_provider prd = {.read_callback = srv_body};
    if (strcmp(path, "/ok") == 0 || strcmp(path, "/bad") == 0) {
        bool ok = path[1] == 'o';
        nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)(ok ? "200" : "400"), 7, 3, 0}};
        prd.source.ptr = ok ? "hello" : "{\"error\":\"no\"}";
        nghttp2_submit_response(sv->ngh, id, nv, 1, &prd);
    } else if (strcmp(path, "/big") == 0) {
        static char v[4000];
        memset(v, 'x', sizeof v - 1);
        nghttp2_nv nv[40];
        static char names[40][16];
        nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0};
        for (int i = 1; i < 40; i++) {
            snprintf(names[i], sizeof names[i], "x-%d", i);
            nv[i] = (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)v, strlen(names[i]), sizeof v - 1,
                                 NGHTTP2_NV_FLAG_NO_INDEX};
        }
        prd.source.ptr = "never read";
        nghttp2_submit_response(sv->ngh, id, nv, 40, &prd);
    } else if (strcmp(path, "/endless") == 0) {
        nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0}};
        prd.source.ptr = "endless";
        nghttp2_submit_response(sv->ngh, id, nv, 1, &prd);
    } else if (strcmp(path, "/goaway") == 0) {
        /* This stream is above the last one processed: refused. */
        nghttp2_submit_goaway(sv->ngh, NGHTTP2_FLAG_NONE, id - 2 > 0 ? id - 2 : 0, NGHTTP2_NO_ERROR, NULL, 0);
    }
    /* /hang: no answer until the client gives up. */
}

static int srv_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl, const uint8_t *value,
                      size_t vl, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    if (f->hd.type == NGHTTP2_HEADERS && nl == 5 && memcmp(name, ":path", 5) == 0) {
        char *p = strndup((const char *)value, vl);
        nghttp2_session_set_stream_user_data(s, f->hd.stream_id, p);
    }
    return 0;
}

static int srv_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct srv *sv = ud;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        const char *p = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        srv_answer(sv, f->hd.stream_id, p ? p : "");
    }
    return 0;
}

static int srv_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct srv *sv = ud;
    if (code == NGHTTP2_CANCEL)
        sv->n_cancelled++;
    free(nghttp2_session_get_stream_user_data(s, id));
    return 0;
}

static void srv_conn(struct srv *sv, int fd)
{
    if (sv->raw) {
        char b[256];
        (void)!read(fd, b, sizeof b);
        (void)!write(fd, sv->raw, sv->raw_len);
        return;
    }
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, srv_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, srv_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_max_send_header_block_length(opt, 1 << 20);
    nghttp2_session_server_new2(&sv->ngh, cb, sv, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 7}};
    nghttp2_submit_settings(sv->ngh, NGHTTP2_FLAG_NONE, iv, 1);
    while (!sv->stop && (nghttp2_session_want_read(sv->ngh) || nghttp2_session_want_write(sv->ngh))) {
        const uint8_t *d;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(sv->ngh, &d)) > 0)
            if (write(fd, d, (size_t)n) != n)
                goto out;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        uint8_t buf[16384];
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0 || nghttp2_session_mem_recv(sv->ngh, buf, (size_t)r) < 0)
            break;
    }
out:
    nghttp2_session_del(sv->ngh);
    sv->ngh = NULL;
}

static void *srv_main(void *arg)
{
    struct srv *sv = arg;
    while (!sv->stop) {
        struct pollfd pf = {.fd = sv->lfd, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int fd = accept(sv->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        srv_conn(sv, fd);
        close(fd);
    }
    return NULL;
}

static void srv_start(struct srv *sv, const char *raw, size_t raw_len)
{
    memset(sv, 0, sizeof *sv);
    sv->raw = raw;
    sv->raw_len = raw_len;
    sv->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(sv->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(sv->lfd, 4), 0);
    socklen_t l = sizeof a;
    getsockname(sv->lfd, (struct sockaddr *)&a, &l);
    sv->port = ntohs(a.sin_port);
    pthread_create(&sv->th, NULL, srv_main, sv);
}

static void srv_stop(struct srv *sv)
{
    sv->stop = 1;
    pthread_join(sv->th, NULL);
    close(sv->lfd);
}

/* ---- the client -------------------------------------------------------------------- */

struct req {
    struct h2cli_stream s;
    int status;
    char body[256];
    size_t len;
    size_t total, limit; /* body bytes seen; more than limit (when set) is refused */
    bool closed, refused;
    char err[256];
};

static int c_head(struct h2cli_stream *s, int status)
{
    ((struct req *)s)->status = status;
    return 0;
}

static int c_data(struct h2cli_stream *s, const char *p, size_t n)
{
    struct req *r = (struct req *)s;
    r->total += n;
    if (r->limit && r->total > r->limit)
        return -1;
    if (r->len + n < sizeof r->body) {
        memcpy(r->body + r->len, p, n);
        r->len += n;
    }
    return 0;
}

static void c_close(struct h2cli_stream *s, const char *err, bool refused)
{
    struct req *r = (struct req *)s;
    r->closed = true;
    r->refused = refused;
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
}

static const struct h2cli_stream_cb req_cb = {.on_head = c_head, .on_data = c_data, .on_close = c_close};

static int n_dead;
static char dead_err[256];
static void on_dead(struct h2cli_conn *c, void *ud, const char *err)
{
    (void)c, (void)ud;
    n_dead++;
    snprintf(dead_err, sizeof dead_err, "%s", err);
}
static const struct h2cli_conn_cb conn_cb = {.on_dead = on_dead};

struct env {
    h2o_evloop_t *loop;
    h2o_timeout_t timeout;
};

static void env_init(struct env *e)
{
    e->loop = h2o_evloop_create();
    h2o_timeout_init(e->loop, &e->timeout, 10000);
    n_dead = 0;
    dead_err[0] = 0;
}

static void env_free(struct env *e)
{
    for (int i = 0; i < 4; i++)
        h2o_evloop_run(e->loop, 0);
    h2o_timeout_dispose(e->loop, &e->timeout);
    h2o_evloop_destroy(e->loop);
}

static struct h2cli_conn *open_to(struct env *e, int port)
{
    struct h2cli_config cfg = {
        .loop = e->loop, .connect_timeout = &e->timeout, .host = "127.0.0.1", .port = port, .ssl_ctx = NULL};
    return h2cli_open(&cfg, &conn_cb, NULL);
}

static void submit(struct h2cli_conn *c, struct req *r, const char *path)
{
    memset(r, 0, sizeof *r);
    r->s.cb = &req_cb;
    static const struct h2cli_header h[] = {{"content-type", "application/json"}};
    assert_int_equal(h2cli_submit(c, &r->s, "POST", path, "up", h, 1, "{}", 2), 0);
}

/* Run the loop until *flag (a bool or an int) is set; false after 600 turns. */
static bool run_until(struct env *e, volatile const int *iflag, volatile const bool *bflag)
{
    for (int i = 0; i < 600; i++) {
        if ((iflag && *iflag) || (bflag && *bflag))
            return true;
        h2o_evloop_run(e->loop, 100);
    }
    return false;
}

static void test_streams_cancel_and_errors(void **state)
{
    (void)state;
    struct srv sv;
    srv_start(&sv, NULL, 0);
    struct env e;
    env_init(&e);
    struct h2cli_conn *c = open_to(&e, sv.port);
    assert_non_null(c);
    struct req ok1, ok2, bad, hang, big;
    submit(c, &ok1, "/ok");
    submit(c, &hang, "/hang");
    submit(c, &ok2, "/ok");
    submit(c, &bad, "/bad");
    assert_int_equal(h2cli_n_streams(c), 4);
    assert_true(run_until(&e, NULL, &ok1.closed) && run_until(&e, NULL, &ok2.closed) &&
                run_until(&e, NULL, &bad.closed));
    assert_int_equal(ok1.status, 200);
    assert_string_equal(ok1.err, "");
    assert_int_equal(ok1.len, 5);
    assert_memory_equal(ok1.body, "hello", 5);
    assert_int_equal(ok2.status, 200);
    assert_int_equal(bad.status, 400);
    assert_memory_equal(bad.body, "{\"error\":\"no\"}", bad.len);
    assert_true(h2cli_ready(c));
    assert_int_equal(h2cli_max_streams(c), 7); /* the server's SETTINGS */
    /* The one left hanging is cancelled: the server sees it reset, the
     * connection stays and serves the next. */
    assert_false(hang.closed);
    h2cli_cancel(&hang.s);
    assert_int_equal(h2cli_n_streams(c), 0);
    struct req ok3;
    submit(c, &ok3, "/ok");
    assert_true(run_until(&e, NULL, &ok3.closed));
    assert_int_equal(ok3.status, 200);
    assert_int_equal(sv.n_cancelled, 1);
    assert_false(hang.closed); /* no callback after a cancel */
    /* Headers over the limit: that stream ends with an error, the
     * connection serves on. */
    submit(c, &big, "/big");
    assert_true(run_until(&e, NULL, &big.closed));
    assert_non_null(strstr(big.err, "headers exceed"));
    struct req ok4;
    submit(c, &ok4, "/ok");
    assert_true(run_until(&e, NULL, &ok4.closed));
    assert_int_equal(ok4.status, 200);
    assert_true(h2cli_usable(c));
    assert_int_equal(n_dead, 0);
    /* Endless DATA: the owner refuses more than it wants, the stream is
     * reset (no close callback), the connection serves on. */
    struct req endless;
    submit(c, &endless, "/endless");
    endless.limit = 4 << 20;
    int cancelled = sv.n_cancelled;
    for (int i = 0; i < 600 && sv.n_cancelled == cancelled; i++)
        h2o_evloop_run(e.loop, 100);
    assert_int_equal(sv.n_cancelled, cancelled + 1);
    assert_true(endless.total > endless.limit);
    assert_false(endless.closed);
    struct req ok5;
    submit(c, &ok5, "/ok");
    assert_true(run_until(&e, NULL, &ok5.closed));
    assert_int_equal(ok5.status, 200);
    /* A GOAWAY below this stream: refused, the connection dead. */
    struct req ga;
    submit(c, &ga, "/goaway");
    assert_true(run_until(&e, NULL, &ga.closed));
    assert_true(ga.refused);
    assert_int_equal(n_dead, 1);
    assert_non_null(strstr(dead_err, "GOAWAY"));
    /* From on_dead on it is not ours: with no stream left it went by
     * itself. */
    env_free(&e);
    srv_stop(&sv);
}

static void test_garbage_and_http1(void **state)
{
    (void)state;
    /* No SETTINGS first; an HTTP/1 answer; a valid empty SETTINGS, then
     * DATA on stream 0 (a connection error in HTTP/2). */
    static const char a0[] = "\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage frames follow here.............";
    static const char a1[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    static const char a2[] = "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                             "\x00\x00\x01\x00\x00\x00\x00\x00\x00X";
    const char *answers[] = {a0, a1, a2};
    size_t lens[] = {sizeof a0 - 1, sizeof a1 - 1, sizeof a2 - 1};
    const char *want[] = {"does not speak HTTP/2", "answered in HTTP/1", ""};
    for (int k = 0; k < 3; k++) {
        struct srv sv;
        srv_start(&sv, answers[k], lens[k]);
        struct env e;
        env_init(&e);
        struct h2cli_conn *c = open_to(&e, sv.port);
        struct req a, b;
        submit(c, &a, "/ok");
        submit(c, &b, "/ok");
        assert_true(run_until(&e, NULL, &a.closed) && run_until(&e, NULL, &b.closed));
        assert_non_null(strstr(a.err, want[k]));
        assert_non_null(strstr(b.err, want[k]));
        assert_true(a.err[0] && b.err[0]);
        assert_false(a.refused);
        assert_int_equal(n_dead, 1);
        env_free(&e);
        srv_stop(&sv);
    }
}

static void test_connection_refused(void **state)
{
    (void)state;
    /* A port that was just free: nothing listens there. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    struct env e;
    env_init(&e);
    struct h2cli_conn *c = open_to(&e, ntohs(a.sin_port));
    struct req r;
    submit(c, &r, "/ok");
    assert_true(run_until(&e, NULL, &r.closed));
    assert_non_null(strstr(r.err, "connection failed"));
    assert_int_equal(n_dead, 1);
    env_free(&e);
}

static void test_release_idle(void **state)
{
    (void)state;
    struct srv sv;
    srv_start(&sv, NULL, 0);
    struct env e;
    env_init(&e);
    struct h2cli_conn *c = open_to(&e, sv.port);
    struct req r;
    submit(c, &r, "/ok");
    assert_true(run_until(&e, NULL, &r.closed));
    /* Let go with nothing open: it closes at once, no on_dead. */
    h2cli_release(c);
    assert_int_equal(n_dead, 0);
    /* Let go with a stream open: it ends when that one has. */
    c = open_to(&e, sv.port);
    struct req h;
    int before = sv.n_requests;
    submit(c, &h, "/hang");
    for (int i = 0; i < 600 && sv.n_requests == before; i++)
        h2o_evloop_run(e.loop, 100);
    assert_int_equal(sv.n_requests, before + 1);
    h2cli_release(c);
    h2cli_cancel(&h.s);
    assert_int_equal(n_dead, 0);
    env_free(&e);
    srv_stop(&sv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streams_cancel_and_errors),
        cmocka_unit_test(test_garbage_and_http1),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_release_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
