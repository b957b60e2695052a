/*
 * DNS discovery with c-ares (discovery.h): one thread, every watch
 * re-resolved each interval; a changed set of addresses becomes the remote
 * pool's new upstream list.
 */
#include "discovery/discovery.h"

#include "core/log.h"
#include "core/time.h"
#include "engine/engine.h"

#include <ares.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNS_TIMEOUT_MS 3000

struct watch {
    struct dns_watch w;
    char kind[16]; /* "lmd+" or "" */
    char host[256];
    int port;
    char prefix[128];
    /* The last list applied, sorted; n = -1 before the first. */
    char (*urls)[64];
    int n;
    bool failing; /* the last resolution failed (logged once) */
};

struct discovery {
    struct watch watches[DISCOVERY_MAX_WATCHES];
    int n;
    int interval_ms;
    ares_channel ch;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

int discovery_is_dns(const char *url)
{
    const char *plus = strstr(url, "+dns://");
    return strncmp(url, "dns://", 6) == 0 || (plus && !memchr(url, '/', (size_t)(plus - url)));
}

int discovery_dns_parse(const char *url, char *host, size_t host_cap, int *port, struct lmd_err *err)
{
    const char *p = strstr(url, "dns://");
    if (!p)
        return lmd_err_set(err, LMD_EINVAL, "upstream '%s': expected [KIND+]dns://NAME:PORT", url);
    p += 6;
    const char *colon = strchr(p, ':'), *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon) || colon == p || (size_t)(colon - p) >= host_cap)
        return lmd_err_set(err, LMD_EINVAL, "upstream '%s': expected [KIND+]dns://NAME:PORT (a name and a port)", url);
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = 0;
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '/') || v < 1 || v > 65535)
        return lmd_err_set(err, LMD_EINVAL, "upstream '%s': the port must be a number in 1..65535", url);
    *port = (int)v;
    return 0;
}

/* ---- one resolution ----------------------------------------------------------- */

struct answer {
    bool done;
    int status;
    char (*addrs)[64];
    int n;
};

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    struct answer *a = arg;
    a->done = true;
    a->status = status;
    if (status != ARES_SUCCESS || !res)
        goto out;
    int n = 0;
    for (struct ares_addrinfo_node *nd = res->nodes; nd; nd = nd->ai_next)
        n++;
    a->addrs = calloc((size_t)(n ? n : 1), sizeof *a->addrs);
    for (struct ares_addrinfo_node *nd = res->nodes; a->addrs && nd; nd = nd->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        const void *src = nd->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)nd->ai_addr)->sin_addr
                                                   : (const void *)&((struct sockaddr_in6 *)nd->ai_addr)->sin6_addr;
        if (!inet_ntop(nd->ai_family, src, ip, sizeof ip))
            continue;
        bool dup = false;
        for (int k = 0; k < a->n && !dup; k++)
            dup = strcmp(a->addrs[k], ip) == 0;
        if (!dup)
            snprintf(a->addrs[a->n++], sizeof a->addrs[0], "%s", ip);
    }
out:
    if (res)
        ares_freeaddrinfo(res);
}

/* Resolve host with the channel, waiting at most DNS_TIMEOUT_MS. */
static void resolve(struct discovery *d, const char *host, struct answer *a)
{
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    ares_getaddrinfo(d->ch, host, NULL, &hints, on_addrinfo, a);
    uint64_t deadline = lmd_time_mono_ns() + (uint64_t)DNS_TIMEOUT_MS * 1000000ull;
    while (!a->done) {
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        int bits = ares_getsock(d->ch, socks, ARES_GETSOCK_MAXNUM);
        struct pollfd pf[ARES_GETSOCK_MAXNUM];
        int n = 0;
        /* The bit tests of ARES_GETSOCK_READABLE/WRITABLE, on unsigned
         * (the macros shift a signed 1 into the sign bit). */
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            unsigned ub = (unsigned)bits;
            short ev =
                (short)(((ub & (1u << i)) ? POLLIN : 0) | ((ub & (1u << (i + ARES_GETSOCK_MAXNUM))) ? POLLOUT : 0));
            if (ev)
                pf[n++] = (struct pollfd){.fd = socks[i], .events = ev};
        }
        uint64_t now = lmd_time_mono_ns();
        if (now >= deadline) {
            ares_cancel(d->ch); /* calls on_addrinfo with ARES_ECANCELLED */
            break;
        }
        struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);
        int ms = tvp ? (int)(tvp->tv_sec * 1000 + tvp->tv_usec / 1000) : 100;
        int left = (int)((deadline - now) / 1000000ull);
        if (ms > left)
            ms = left;
        int r = poll(pf, (nfds_t)n, ms < 1 ? 1 : ms);
        if (r < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++)
            ares_process_fd(d->ch, (pf[i].revents & (POLLIN | POLLERR | POLLHUP)) ? pf[i].fd : ARES_SOCKET_BAD,
                            (pf[i].revents & POLLOUT) ? pf[i].fd : ARES_SOCKET_BAD);
        if (n == 0 || r == 0)
            ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts and retries */
    }
}

static int cmp_url(const void *a, const void *b) { return strcmp(a, b); }

/* Resolve one watch; apply its list when it changed. */
static void refresh(struct discovery *d, struct watch *w)
{
    struct answer a = {0};
    resolve(d, w->host, &a);
    bool gone = a.status == ARES_ENOTFOUND || a.status == ARES_ENODATA;
    if (a.status != ARES_SUCCESS && !gone) {
        if (!w->failing)
            LMD_WARN("discovery: %s: %s; keeping the %d upstreams found before", w->w.url,
                     a.done ? ares_strerror(a.status) : "no answer", w->n < 0 ? 0 : w->n);
        w->failing = true;
        free(a.addrs);
        return;
    }
    if (w->failing)
        LMD_INFO("discovery: %s resolves again", w->w.url);
    w->failing = false;
    int n = gone ? 0 : a.n;
    char(*urls)[64] = calloc((size_t)(n ? n : 1), sizeof *urls);
    if (!urls) {
        free(a.addrs);
        return;
    }
    for (int i = 0; i < n; i++) {
        bool v6 = strchr(a.addrs[i], ':') != NULL;
        snprintf(urls[i], sizeof urls[0], v6 ? "%shttp://[%s]:%d" : "%shttp://%s:%d", w->kind, a.addrs[i], w->port);
    }
    free(a.addrs);
    qsort(urls, (size_t)n, sizeof urls[0], cmp_url);
    if (w->n == n && (n == 0 || memcmp(w->urls, urls, (size_t)n * sizeof urls[0]) == 0)) {
        free(urls);
        return;
    }
    struct remote_backend_config list[REMOTE_MAX_BACKENDS];
    int k = n < REMOTE_MAX_BACKENDS ? n : REMOTE_MAX_BACKENDS;
    if (n > k)
        LMD_WARN("discovery: %s gives %d addresses; the pool takes the first %d", w->w.url, n, k);
    for (int i = 0; i < k; i++) {
        snprintf(list[i].url, sizeof list[i].url, "%s%s", urls[i], w->prefix);
        list[i].max_inflight = w->w.max_inflight;
    }
    struct lmd_err err = {0};
    if (engine_remote_set_upstreams(w->w.eng, list, k, &err) != 0) {
        LMD_ERROR("discovery: %s: %s", w->w.url, err.msg);
        free(urls);
        return;
    }
    LMD_INFO("discovery: %s now gives %d upstream%s", w->w.url, k, k == 1 ? "" : "s");
    free(w->urls);
    w->urls = urls;
    w->n = n;
}

static void *discovery_main(void *arg)
{
    struct discovery *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)d->interval_ms * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        while (!d->stop && pthread_cond_timedwait(&d->cv, &d->mu, &ts) != ETIMEDOUT)
            ;
        if (d->stop)
            break;
        pthread_mutex_unlock(&d->mu);
        for (int i = 0; i < d->n; i++)
            refresh(d, &d->watches[i]);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

int discovery_start(struct discovery **out, const struct dns_watch *w, int n, int interval_ms, const char *servers,
                    struct lmd_err *err)
{
    *out = NULL;
    if (n < 1 || n > DISCOVERY_MAX_WATCHES)
        return lmd_err_set(err, LMD_EINVAL, "discovery: %d names (1 to %d)", n, DISCOVERY_MAX_WATCHES);
    struct discovery *d = calloc(1, sizeof *d);
    if (!d)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    d->interval_ms = interval_ms > 0 ? interval_ms : 5000;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        struct watch *x = &d->watches[i];
        x->w = w[i];
        x->n = -1;
        rc = discovery_dns_parse(w[i].url, x->host, sizeof x->host, &x->port, err);
        const char *plus = strstr(w[i].url, "+dns://");
        if (plus && (size_t)(plus - w[i].url) < sizeof x->kind - 1)
            snprintf(x->kind, sizeof x->kind, "%.*s+", (int)(plus - w[i].url), w[i].url);
        const char *slash = strchr(strstr(w[i].url, "dns://") + 6, '/');
        if (slash)
            snprintf(x->prefix, sizeof x->prefix, "%s", slash);
        d->n = i + 1;
    }
    if (rc == 0 && ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
        rc = lmd_err_set(err, LMD_ENOMEM, "discovery: cannot start c-ares");
    struct ares_options opt = {.timeout = 1000, .tries = 2};
    if (rc == 0 && ares_init_options(&d->ch, &opt, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES) != ARES_SUCCESS)
        rc = lmd_err_set(err, LMD_EINVAL, "discovery: cannot set up the resolver");
    else if (rc == 0 && servers && *servers && ares_set_servers_ports_csv(d->ch, servers) != ARES_SUCCESS)
        rc = lmd_err_set(err, LMD_EINVAL, "discovery: bad DNS servers '%s' (HOST:PORT,...)", servers);
    if (rc) {
        if (d->ch)
            ares_destroy(d->ch);
        free(d);
        return rc;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* The first lists now, so that traffic finds its upstreams at start. */
    for (int i = 0; i < d->n; i++)
        refresh(d, &d->watches[i]);
    if (pthread_create(&d->thread, NULL, discovery_main, d) != 0) {
        discovery_stop(d);
        return lmd_err_set(err, LMD_ENOMEM, "discovery: cannot start its thread");
    }
    d->started = true;
    *out = d;
    return 0;
}

void discovery_stop(struct discovery *d)
{
    if (!d)
        return;
    if (d->started) {
        pthread_mutex_lock(&d->mu);
        d->stop = true;
        pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
    }
    ares_destroy(d->ch);
    ares_library_cleanup();
    for (int i = 0; i < d->n; i++)
        free(d->watches[i].urls);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d);
}
