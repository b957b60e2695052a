/*
 * http/ with a toy handler on a loopback port: whole responses with extra
 * headers, request headers read case-insensitively, keep-alive, a streamed
 * response written from another thread through http_post, one paced by
 * on_drain, one whose client never reads (dropped by the stall timeout),
 * the on_close callback for every request, and a clean stop. Plain
 * sockets on the client side, HTTP/1.1.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/cors.h"
#include "http/http.h"

/* h2o keeps per-thread recycle bins of socket buffers that it never
 * frees; they are h2o's, not lmd's, so LeakSanitizer is told to skip them. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:h2o_mem_alloc_recycle\nleak:h2o_multithread_create_queue\n";
}

static _Atomic int n_closed;

/* A streamed request: a producer thread posts tasks that write parts. */
struct stream {
    struct http_task task;
    struct http_req *r;
    struct http_loop *loop;
    _Atomic int produced; /* parts made by the producer */
    int written;          /* parts written on the I/O thread */
    pthread_t producer;
    bool closed;
};

static void stream_task(struct http_task *t)
{
    struct stream *s = (struct stream *)t;
    if (s->closed)
        return;
    int n = atomic_load(&s->produced);
    while (s->written < n) {
        char part[32];
        int k = snprintf(part, sizeof part, "part %d\n", s->written++);
        http_stream_write(s->r, part, (size_t)k, s->written == 5);
    }
}

static void *producer(void *arg)
{
    struct stream *s = arg;
    for (int i = 0; i < 5; i++) {
        usleep(2000);
        atomic_fetch_add(&s->produced, 1);
        http_post(s->loop, &s->task);
    }
    return NULL;
}

static void stream_closed(void *ctx)
{
    struct stream *s = ctx;
    s->closed = true;
    atomic_fetch_add(&n_closed, 1);
}

static void counted_close(void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&n_closed, 1);
}

static struct stream the_stream;

/* A stream paced by on_drain: each drain writes the next part. */
struct paced {
    struct http_req *r;
    int written, parts;
    size_t part_len;
    size_t unsent_after_first; /* http_stream_unsent right after the first write */
    _Atomic bool closed;
};
static struct paced the_paced, the_big;

static void paced_write(struct paced *s)
{
    static char blob[64 * 1024];
    memset(blob, 'x', sizeof blob);
    char part[64];
    size_t k = (size_t)snprintf(part, sizeof part, "part %d\n", s->written);
    const char *p = s->part_len > k ? blob : part;
    size_t n = s->part_len > k ? s->part_len : k;
    s->written++;
    http_stream_write(s->r, p, n, s->written == s->parts);
}

static void paced_drained(void *ctx)
{
    struct paced *s = ctx;
    if (!atomic_load(&s->closed) && s->written < s->parts)
        paced_write(s);
}

static void paced_closed(void *ctx)
{
    struct paced *s = ctx;
    atomic_store(&s->closed, true);
    atomic_fetch_add(&n_closed, 1);
}

static void paced_start(struct paced *s, struct http_req *r, int parts, size_t part_len)
{
    memset(s, 0, sizeof *s);
    s->r = r;
    s->parts = parts;
    s->part_len = part_len;
    http_req_on_close(r, paced_closed, s);
    http_stream_on_drain(r, paced_drained, s);
    http_stream_begin(r, 200, "text/plain");
    paced_write(s);
    s->unsent_after_first = http_stream_unsent(r);
}

static void handler(void *ud, struct http_req *r)
{
    (void)ud;
    struct http_str path = http_req_path(r);
    if (path.len == 6 && memcmp(path.ptr, "/hello", 6) == 0) {
        http_req_on_close(r, counted_close, NULL);
        struct http_str b = http_req_body(r);
        char out[64];
        int k = snprintf(out, sizeof out, "hi %.*s %zu", (int)http_req_method(r).len, http_req_method(r).ptr, b.len);
        struct http_str id = http_req_header(r, "x-request-id");
        char echo[80];
        snprintf(echo, sizeof echo, "[%.*s]", (int)id.len, id.ptr);
        http_req_add_header(r, "X-Echo", echo);
        http_req_add_header(r, "WWW-Authenticate", "Bearer");
        http_respond(r, 200, "text/plain", out, (size_t)k, "retry-after", "7");
        http_req_add_header(r, "x-too-late", "1"); /* ignored: the response has started */
        return;
    }
    if (path.len == 6 && memcmp(path.ptr, "/paced", 6) == 0) {
        paced_start(&the_paced, r, 5, 0);
        return;
    }
    if (path.len == 4 && memcmp(path.ptr, "/big", 4) == 0) {
        paced_start(&the_big, r, 1 << 20, 64 * 1024); /* 64 GiB: never finishes by itself */
        return;
    }
    if (path.len == 7 && memcmp(path.ptr, "/stream", 7) == 0) {
        struct stream *s = &the_stream;
        memset(s, 0, sizeof *s);
        s->task.fn = stream_task;
        s->r = r;
        s->loop = http_req_loop(r);
        http_req_on_close(r, stream_closed, s);
        http_stream_begin(r, 200, "text/event-stream");
        pthread_create(&s->producer, NULL, producer, s);
        return;
    }
    http_respond(r, 404, "text/plain", "no", 2, NULL, NULL);
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    assert_int_equal(write(fd, s, n), (ssize_t)n);
}

/* Read until `needle` has been seen (or EOF / timeout); returns bytes. */
static size_t read_until(int fd, char *buf, size_t cap, const char *needle)
{
    size_t len = 0;
    buf[0] = '\0';
    while (len + 1 < cap && !strstr(buf, needle)) {
        ssize_t k = read(fd, buf + len, cap - 1 - len);
        if (k <= 0)
            break;
        len += (size_t)k;
        buf[len] = '\0';
    }
    return len;
}

static void test_server(void **state)
{
    (void)state;
    struct http_server *srv;
    struct lmd_err err = {0};
    struct http_config cfg = {.host = "127.0.0.1",
                              .port = 0,
                              .io_threads = 2,
                              .max_body = 1 << 16,
                              .stall_timeout_ms = 400,
                              .handler = handler};
    assert_int_equal(http_server_start(&srv, &cfg, &err), 0);
    int port = http_server_port(srv);
    assert_true(port > 0);

    /* Two requests on one keep-alive connection. */
    char buf[8192];
    int fd = dial(port);
    send_all(fd, "POST /hello HTTP/1.1\r\nHost: x\r\nX-REQUEST-ID: ab-1\r\nContent-Length: 5\r\n\r\nabcde");
    read_until(fd, buf, sizeof buf, "hi POST 5");
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "retry-after: 7"));
    assert_non_null(strstr(buf, "x-echo: [ab-1]"));
    assert_non_null(strstr(buf, "www-authenticate: Bearer"));
    assert_null(strstr(buf, "x-too-late"));
    assert_non_null(strstr(buf, "Content-Length: 9"));
    /* An absent header reads as empty. */
    send_all(fd, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na");
    read_until(fd, buf, sizeof buf, "hi POST 1");
    assert_non_null(strstr(buf, "x-echo: []"));
    send_all(fd, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    read_until(fd, buf, sizeof buf, "\r\n\r\nno");
    assert_non_null(strstr(buf, "HTTP/1.1 404"));

    /* A streamed response fed from another thread, chunked on the wire. */
    send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    read_until(fd, buf, sizeof buf, "\r\n0\r\n\r\n");
    assert_non_null(strstr(buf, "text/event-stream"));
    for (int i = 0; i < 5; i++) {
        char want[32];
        snprintf(want, sizeof want, "part %d\n", i);
        assert_non_null(strstr(buf, want));
    }
    pthread_join(the_stream.producer, NULL);

    /* A stream paced by on_drain: every part arrives, each written only
     * once the one before it had gone. */
    send_all(fd, "GET /paced HTTP/1.1\r\nHost: x\r\n\r\n");
    read_until(fd, buf, sizeof buf, "\r\n0\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        char want[32];
        snprintf(want, sizeof want, "part %d\n", i);
        assert_non_null(strstr(buf, want));
    }
    assert_int_equal(the_paced.unsent_after_first, strlen("part 0\n"));
    close(fd);

    /* A client that never reads: the server's writes stop completing and
     * the stall timeout drops the request (on_close runs). */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    send_all(fd, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 500 && !atomic_load(&the_big.closed); i++)
        usleep(10000);
    assert_true(atomic_load(&the_big.closed));
    assert_true(the_big.written < 200); /* bounded by the socket, not by the producer */
    close(fd);

    /* Oversized bodies (past twice max_body) are refused by h2o itself. */
    fd = dial(port);
    send_all(fd, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
    read_until(fd, buf, sizeof buf, "\r\n\r\n");
    assert_non_null(strstr(buf, "413"));
    close(fd);

    for (int i = 0; i < 200 && atomic_load(&n_closed) < 5; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&n_closed), 5); /* /hello twice, /stream, /paced, /big were disposed */

    http_server_stop_accepting(srv);
    usleep(50000);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_not_equal(connect(s, (struct sockaddr *)&a, sizeof a), 0);
    close(s);
    http_server_free(srv);
}

static void test_bad_config(void **state)
{
    (void)state;
    struct http_server *srv;
    struct lmd_err err = {0};
    struct http_config cfg = {.host = "127.0.0.1", .port = 0, .io_threads = 0, .handler = handler};
    assert_int_equal(http_server_start(&srv, &cfg, &err), LMD_EINVAL);
    cfg.io_threads = 1;
    cfg.host = "no.such.host.invalid";
    assert_int_not_equal(http_server_start(&srv, &cfg, &err), 0);
    assert_non_null(strstr(err.msg, "no.such.host.invalid"));
}

/* CORS origins: the list kept, the match byte for byte, "*" for any, and
 * the preflight header lists that may be echoed. */
static void test_cors_origins(void **state)
{
    (void)state;
    struct http__cors c;
    struct lmd_err err = {0};
    const char *list[] = {"http://a.example:3000", "https://b.example"};
    assert_int_equal(http__cors_init(&c, list, 2, &err), 0);
    assert_true(http__cors_on(&c));
    assert_string_equal(http__cors_allow(&c, "https://b.example", 17), "https://b.example");
    assert_string_equal(http__cors_allow(&c, "http://a.example:3000", 21), "http://a.example:3000");
    assert_null(http__cors_allow(&c, "http://a.example:300", 20)); /* a prefix is another origin */
    assert_null(http__cors_allow(&c, "http://a.example:30001", 22));
    assert_null(http__cors_allow(&c, "HTTPS://B.EXAMPLE", 17));
    assert_null(http__cors_allow(&c, "", 0));
    const char *any[] = {"http://a.example", "*"};
    assert_int_equal(http__cors_init(&c, any, 2, &err), 0);
    assert_string_equal(http__cors_allow(&c, "null", 4), "*");
    assert_int_equal(http__cors_init(&c, NULL, 0, &err), 0);
    assert_false(http__cors_on(&c));
    assert_null(http__cors_allow(&c, "http://a.example", 16));
    const char *bad[] = {"http://a.example/"};
    assert_int_equal(http__cors_init(&c, bad, 1, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "'http://a.example/'"));
    assert_int_equal(http__cors_init(&c, list, HTTP_MAX_CORS_ORIGINS + 1, &err), LMD_EINVAL);

    assert_true(http__cors_header_list_sane("authorization, content-type", 27));
    assert_true(http__cors_header_list_sane("X-Request-Id", 12));
    assert_false(http__cors_header_list_sane("", 0));
    assert_false(http__cors_header_list_sane("a\r\nx-evil: 1", 13));
    assert_false(http__cors_header_list_sane("a\"b", 3));
    char longer[600];
    memset(longer, 'a', sizeof longer);
    assert_false(http__cors_header_list_sane(longer, sizeof longer));
}

int main(void)
{
    /* As lmd serve does: a write to a connection the server itself shut
     * down (the stall test) must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_cors_origins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
