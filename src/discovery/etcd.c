/*
 * etcd discovery and registration (discovery.h), over etcd's v3 JSON
 * gateway (/v3/kv/range, /v3/watch, /v3/lease/...) on plain blocking sockets:
 * each watch and each registration has a thread of its own, which is
 * neither an event loop nor an engine thread, and which wakes at least
 * every 200 ms to see whether it must stop.
 *
 * A watch reads every key under its prefix (each value is an upstream URL,
 * "[KIND+]http://HOST:PORT[/PREFIX]", or a JSON object with a "url"), hands
 * the list to its remote engine, then watches the prefix from the next
 * revision; any event reads the prefix again. A registration grants a
 * lease, puts its URL under the prefix with it, keeps the lease alive, and
 * revokes it when it stops (a replica that dies disappears when its lease
 * expires).
 */
#include "discovery/discovery.h"

#include "core/buf.h"
#include "core/log.h"
#include "core/time.h"
#include "engine/engine.h"

#include <jansson.h>

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ETCD_IO_MS 200 /* the longest a thread blocks before it looks at its stop flag */

struct etcd_addr {
    char host[128];
    int port;
    char prefix[192];
};

int discovery_is_etcd(const char *url)
{
    const char *plus = strstr(url, "+etcd://");
    return strncmp(url, "etcd://", 7) == 0 || (plus && !memchr(url, '/', (size_t)(plus - url)));
}

static int etcd_parse(const char *url, struct etcd_addr *a, struct lmd_err *err)
{
    const char *p = strstr(url, "etcd://");
    if (!p)
        return lmd_err_set(err, LMD_EINVAL, "'%s': expected etcd://HOST:PORT/PREFIX", url);
    p += 7;
    const char *colon = strchr(p, ':'), *slash = strchr(p, '/');
    if (!colon || !slash || slash < colon || colon == p || (size_t)(colon - p) >= sizeof a->host)
        return lmd_err_set(err, LMD_EINVAL, "'%s': expected etcd://HOST:PORT/PREFIX (a host, a port and a key prefix)",
                           url);
    memcpy(a->host, p, (size_t)(colon - p));
    a->host[colon - p] = 0;
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end != slash || v < 1 || v > 65535)
        return lmd_err_set(err, LMD_EINVAL, "'%s': the port must be a number in 1..65535", url);
    a->port = (int)v;
    if (strlen(slash) < 2 || strlen(slash) >= sizeof a->prefix - 1)
        return lmd_err_set(err, LMD_EINVAL, "'%s': the key prefix must be 1 to %zu bytes", url, sizeof a->prefix - 3);
    /* A folder of keys: /lmd/gemma means /lmd/gemma/..., never /lmd/gemma2/... */
    snprintf(a->prefix, sizeof a->prefix, "%s%s", slash, slash[strlen(slash) - 1] == '/' ? "" : "/");
    return 0;
}

int discovery_etcd_parse(const char *url, struct lmd_err *err)
{
    struct etcd_addr a;
    return etcd_parse(url, &a, err);
}

/* ---- base64 (etcd's gateway spells keys and values so) ---------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_enc(const unsigned char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = 0;
}

static size_t b64_dec(const char *s, unsigned char *out, size_t cap)
{
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (; *s && *s != '='; s++) {
        const char *p = strchr(b64, *s);
        if (!p)
            return 0;
        v = v << 6 | (unsigned)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap)
                return 0;
            out[o++] = (unsigned char)(v >> bits & 0xFF);
        }
    }
    out[o] = 0;
    return o;
}

/* The key just past every key that starts with prefix (etcd's range_end). */
static void prefix_end(const char *prefix, char *out, size_t cap)
{
    snprintf(out, cap, "%s", prefix);
    size_t n = strlen(out);
    while (n > 0 && (unsigned char)out[n - 1] == 0xFF)
        out[--n] = 0;
    if (n > 0)
        out[n - 1] = (char)((unsigned char)out[n - 1] + 1);
}

/* ---- one HTTP exchange on a blocking socket -------------------------------- */

struct conn {
    int fd;
    _Atomic bool *stop;
    char buf[8192];
    size_t len, off;
    bool chunked;
    long left; /* bytes left in the body (content-length) or the chunk; -1 = unknown */
};

static int conn_open(struct conn *c, const struct etcd_addr *a, _Atomic bool *stop)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->stop = stop;
    char port[8];
    snprintf(port, sizeof port, "%d", a->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(a->host, port, &hints, &res) != 0)
        return -1;
    for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            c->fd = fd;
        else if (fd >= 0)
            close(fd);
    }
    freeaddrinfo(res);
    return c->fd >= 0 ? 0 : -1;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* More bytes into buf; 0 on progress, -1 on EOF, error or stop. Waits at
 * most wait_ms in all (0 = until stopped). */
static int conn_fill(struct conn *c, int wait_ms)
{
    if (c->off) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == sizeof c->buf)
        return -1;
    uint64_t deadline = wait_ms ? lmd_time_mono_ns() + (uint64_t)wait_ms * 1000000ull : 0;
    for (;;) {
        if (atomic_load(c->stop))
            return -1;
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pf, 1, ETCD_IO_MS);
        if (r < 0 && errno != EINTR)
            return -1;
        if (r > 0) {
            ssize_t k = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (k <= 0)
                return -1;
            c->len += (size_t)k;
            return 0;
        }
        if (deadline && lmd_time_mono_ns() > deadline)
            return -1;
    }
}

static int conn_send(struct conn *c, const char *path, const char *body)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     path, strlen(body));
    if (write(c->fd, head, (size_t)n) != n || write(c->fd, body, strlen(body)) != (ssize_t)strlen(body))
        return -1;
    return 0;
}

/* The response head: status 200 and the body's framing, else -1. */
static int conn_head(struct conn *c, int wait_ms)
{
    for (;;) {
        char *end = memmem(c->buf + c->off, c->len - c->off, "\r\n\r\n", 4);
        if (end) {
            *end = 0;
            const char *h = c->buf + c->off;
            int status = 0;
            if (sscanf(h, "HTTP/1.%*d %d", &status) != 1 || status != 200)
                return -1;
            c->chunked = strcasestr(h, "\r\ntransfer-encoding: chunked") != NULL;
            const char *cl = strcasestr(h, "\r\ncontent-length:");
            c->left = cl ? strtol(cl + 17, NULL, 10) : -1;
            c->off = (size_t)(end + 4 - c->buf);
            if (c->chunked)
                c->left = 0;
            return 0;
        }
        if (conn_fill(c, wait_ms) != 0)
            return -1;
    }
}

/* The next piece of body into out (appended): one chunk's bytes, or the
 * rest of a sized body. 1 = got some, 0 = the body ended, -1 = error. */
static int conn_body(struct conn *c, struct lmd_buf *out, int wait_ms)
{
    for (;;) {
        size_t avail = c->len - c->off;
        if (c->chunked && c->left == 0) {
            char *nl = memmem(c->buf + c->off, avail, "\r\n", 2);
            if (!nl) {
                if (conn_fill(c, wait_ms) != 0)
                    return -1;
                continue;
            }
            if (nl == c->buf + c->off) { /* the CRLF after a chunk */
                c->off += 2;
                continue;
            }
            long sz = strtol(c->buf + c->off, NULL, 16);
            c->off = (size_t)(nl + 2 - c->buf);
            if (sz <= 0)
                return 0;
            c->left = sz;
            continue;
        }
        if (!c->chunked && c->left == 0)
            return 0;
        if (avail == 0) {
            if (conn_fill(c, wait_ms) != 0)
                return c->left < 0 && !c->chunked ? 0 : -1;
            continue;
        }
        size_t k = c->left >= 0 && (size_t)c->left < avail ? (size_t)c->left : avail;
        lmd_buf_append(out, c->buf + c->off, k);
        c->off += k;
        if (c->left > 0)
            c->left -= (long)k;
        return 1;
    }
}

/* One request, its whole JSON answer. */
static json_t *call(const struct etcd_addr *a, _Atomic bool *stop, const char *path, const char *body)
{
    struct conn c;
    if (conn_open(&c, a, stop) != 0)
        return NULL;
    json_t *o = NULL;
    struct lmd_buf b = {0};
    if (conn_send(&c, path, body) == 0 && conn_head(&c, 3000) == 0) {
        int r;
        while ((r = conn_body(&c, &b, 3000)) == 1)
            ;
        if (r == 0 && b.ptr) {
            json_error_t je;
            o = json_loadb(b.ptr, b.len, 0, &je);
        }
    }
    lmd_buf_free(&b);
    conn_close(&c);
    return o;
}

/* ---- watching a prefix ------------------------------------------------------------ */

struct etcd_watch {
    struct dns_watch w; /* the engine, the URL, max_inflight */
    struct etcd_addr a;
    char kind[16];
    pthread_t thread;
    _Atomic bool stop;
    int last_n; /* -1 before the first list */
    char last[REMOTE_MAX_BACKENDS][256];
};

/* Read the prefix; apply the list if it changed. The revision read, or -1. */
static long etcd_sync(struct etcd_watch *x)
{
    char k[sizeof x->a.prefix * 2], e[sizeof x->a.prefix], ke[sizeof e * 2], body[1024];
    b64_enc((const unsigned char *)x->a.prefix, strlen(x->a.prefix), k);
    prefix_end(x->a.prefix, e, sizeof e);
    b64_enc((const unsigned char *)e, strlen(e), ke);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\"}", k, ke);
    json_t *o = call(&x->a, &x->stop, "/v3/kv/range", body);
    if (!o)
        return -1;
    long rev = -1;
    json_t *h = json_object_get(o, "header");
    const char *rs = json_string_value(json_object_get(h, "revision"));
    if (rs)
        rev = strtol(rs, NULL, 10);
    struct remote_backend_config list[REMOTE_MAX_BACKENDS];
    int n = 0;
    size_t i;
    json_t *kv;
    json_array_foreach(json_object_get(o, "kvs"), i, kv)
    {
        const char *v = json_string_value(json_object_get(kv, "value"));
        unsigned char val[512];
        if (!v || b64_dec(v, val, sizeof val) == 0)
            continue;
        const char *url = (const char *)val;
        json_t *j = NULL;
        if (val[0] == '{') {
            json_error_t je;
            j = json_loads((const char *)val, 0, &je);
            url = json_string_value(json_object_get(j, "url"));
        }
        if (url && strlen(url) + strlen(x->kind) < sizeof list[0].url && n < REMOTE_MAX_BACKENDS) {
            bool has_kind = strstr(url, "+http") != NULL;
            int kl = snprintf(list[n].url, sizeof list[n].url, "%s", has_kind ? "" : x->kind);
            memcpy(list[n].url + kl, url, strlen(url) + 1);
            list[n].max_inflight = x->w.max_inflight;
            n++;
        }
        json_decref(j);
    }
    json_decref(o);
    /* Sorted, so that equal sets compare equal. */
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && strcmp(list[b - 1].url, list[b].url) > 0; b--) {
            struct remote_backend_config t = list[b];
            list[b] = list[b - 1];
            list[b - 1] = t;
        }
    bool same = n == x->last_n;
    for (int a = 0; same && a < n; a++)
        same = strcmp(list[a].url, x->last[a]) == 0;
    if (!same) {
        struct lmd_err err = {0};
        if (engine_remote_set_upstreams(x->w.eng, list, n, &err) != 0) {
            LMD_ERROR("discovery: %s: %s", x->w.url, err.msg);
        } else {
            LMD_INFO("discovery: %s now gives %d upstream%s", x->w.url, n, n == 1 ? "" : "s");
            x->last_n = n;
            for (int a = 0; a < n; a++)
                memcpy(x->last[a], list[a].url, sizeof x->last[a]);
        }
    }
    return rev;
}

/* Watch the prefix from rev until an event (1), an error (-1) or stop. */
static int etcd_watch_once(struct etcd_watch *x, long rev)
{
    char k[sizeof x->a.prefix * 2], e[sizeof x->a.prefix], ke[sizeof e * 2], body[1024];
    b64_enc((const unsigned char *)x->a.prefix, strlen(x->a.prefix), k);
    prefix_end(x->a.prefix, e, sizeof e);
    b64_enc((const unsigned char *)e, strlen(e), ke);
    snprintf(body, sizeof body, "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\",\"start_revision\":\"%ld\"}}",
             k, ke, rev);
    struct conn c;
    if (conn_open(&c, &x->a, &x->stop) != 0)
        return -1;
    int rc = -1;
    struct lmd_buf b = {0};
    if (conn_send(&c, "/v3/watch", body) == 0 && conn_head(&c, 3000) == 0) {
        /* Messages are JSON objects, one after another; an event is any
         * message with "events". */
        for (;;) {
            int r = conn_body(&c, &b, 0);
            if (r != 1)
                break;
            if (b.ptr && memmem(b.ptr, b.len, "\"events\"", 8)) {
                rc = 1;
                break;
            }
            if (b.len > (1 << 20))
                b.len = 0;
        }
    }
    lmd_buf_free(&b);
    conn_close(&c);
    return rc;
}

static void *etcd_watch_main(void *arg)
{
    struct etcd_watch *x = arg;
    bool warned = false;
    while (!atomic_load(&x->stop)) {
        long rev = etcd_sync(x);
        if (rev < 0 || etcd_watch_once(x, rev + 1) < 0) {
            if (atomic_load(&x->stop))
                break;
            if (!warned)
                LMD_WARN("discovery: %s: etcd does not answer; keeping the %d upstreams found before, trying again",
                         x->w.url, x->last_n < 0 ? 0 : x->last_n);
            warned = true;
            for (int i = 0; i < 5 && !atomic_load(&x->stop); i++)
                usleep(ETCD_IO_MS * 1000);
            continue;
        }
        if (warned)
            LMD_INFO("discovery: %s: etcd answers again", x->w.url);
        warned = false;
    }
    return NULL;
}

int discovery_etcd_start(struct etcd_watch **out, const struct dns_watch *w, struct lmd_err *err)
{
    *out = NULL;
    struct etcd_watch *x = calloc(1, sizeof *x);
    if (!x)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    x->w = *w;
    x->last_n = -1;
    int rc = etcd_parse(w->url, &x->a, err);
    if (rc) {
        free(x);
        return rc;
    }
    const char *plus = strstr(w->url, "+etcd://");
    if (plus && (size_t)(plus - w->url) < sizeof x->kind - 1)
        snprintf(x->kind, sizeof x->kind, "%.*s+", (int)(plus - w->url), w->url);
    /* The first list now, when etcd answers, so traffic finds its upstreams. */
    if (etcd_sync(x) < 0)
        LMD_WARN("discovery: %s: etcd does not answer yet; the pool starts empty", w->url);
    if (pthread_create(&x->thread, NULL, etcd_watch_main, x) != 0) {
        free(x);
        return lmd_err_set(err, LMD_ENOMEM, "discovery: cannot start a thread");
    }
    *out = x;
    return 0;
}

void discovery_etcd_stop(struct etcd_watch *x)
{
    if (!x)
        return;
    atomic_store(&x->stop, true);
    pthread_join(x->thread, NULL);
    free(x);
}

/* ---- registering this server ----------------------------------------------------- */

struct etcd_reg {
    struct etcd_addr a;
    char url[256];
    char key[512];
    long long lease;
    int ttl_s;
    pthread_t thread;
    _Atomic bool stop;
    bool started;
};

static long long etcd_grant(struct etcd_reg *r)
{
    char body[64];
    snprintf(body, sizeof body, "{\"TTL\":\"%d\"}", r->ttl_s);
    json_t *o = call(&r->a, &r->stop, "/v3/lease/grant", body);
    const char *id = json_string_value(json_object_get(o, "ID"));
    long long v = id ? strtoll(id, NULL, 10) : -1;
    json_decref(o);
    return v;
}

static int etcd_put(struct etcd_reg *r)
{
    char k[sizeof r->key * 2], v[sizeof r->url * 2], body[2048];
    b64_enc((const unsigned char *)r->key, strlen(r->key), k);
    b64_enc((const unsigned char *)r->url, strlen(r->url), v);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%lld\"}", k, v, r->lease);
    json_t *o = call(&r->a, &r->stop, "/v3/kv/put", body);
    int rc = o ? 0 : -1;
    json_decref(o);
    return rc;
}

static void *etcd_reg_main(void *arg)
{
    struct etcd_reg *r = arg;
    bool warned = false;
    while (!atomic_load(&r->stop)) {
        bool ok;
        if (r->lease <= 0) {
            r->lease = etcd_grant(r);
            ok = r->lease > 0 && etcd_put(r) == 0;
            if (ok)
                LMD_INFO("discovery: registered %s as %s (lease %lld, %d s)", r->url, r->key, r->lease, r->ttl_s);
            else
                r->lease = 0;
        } else {
            char body[64];
            snprintf(body, sizeof body, "{\"ID\":\"%lld\"}", r->lease);
            json_t *o = call(&r->a, &r->stop, "/v3/lease/keepalive", body);
            json_t *res = json_object_get(o, "result");
            const char *ttl = json_string_value(json_object_get(res, "TTL"));
            ok = ttl && strtol(ttl, NULL, 10) > 0;
            if (o && !ok) {
                r->lease = 0; /* expired meanwhile: register again */
                ok = true;
                json_decref(o);
                continue;
            }
            json_decref(o);
        }
        if (!ok && !warned)
            LMD_WARN("discovery: cannot register %s at etcd %s:%d; trying again", r->url, r->a.host, r->a.port);
        warned = !ok;
        /* A keep-alive every third of the lease. */
        for (int i = 0; i < r->ttl_s * 1000 / 3 / ETCD_IO_MS && !atomic_load(&r->stop); i++)
            usleep(ETCD_IO_MS * 1000);
    }
    return NULL;
}

int discovery_register(struct etcd_reg **out, const char *etcd_url, const char *self_url, int ttl_s,
                       struct lmd_err *err)
{
    *out = NULL;
    struct etcd_reg *r = calloc(1, sizeof *r);
    if (!r)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    int rc = etcd_parse(etcd_url, &r->a, err);
    if (rc) {
        free(r);
        return lmd_err_set(err, LMD_EINVAL, "--register %s", err->msg);
    }
    snprintf(r->url, sizeof r->url, "%s", self_url);
    const char *host = strstr(self_url, "://");
    snprintf(r->key, sizeof r->key, "%s%s", r->a.prefix, host ? host + 3 : self_url);
    r->ttl_s = ttl_s > 0 ? ttl_s : 10;
    if (pthread_create(&r->thread, NULL, etcd_reg_main, r) != 0) {
        free(r);
        return lmd_err_set(err, LMD_ENOMEM, "discovery: cannot start a thread");
    }
    r->started = true;
    *out = r;
    return 0;
}

void discovery_deregister(struct etcd_reg *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    if (r->lease > 0) {
        _Atomic bool go = false;
        char body[64];
        snprintf(body, sizeof body, "{\"ID\":\"%lld\"}", r->lease);
        json_decref(call(&r->a, &go, "/v3/lease/revoke", body));
        LMD_INFO("discovery: deregistered %s", r->url);
    }
    free(r);
}
