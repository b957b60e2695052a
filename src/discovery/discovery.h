/*
 * Discovery: where a remote model's upstreams are, when they are not a
 * fixed list. DNS for now: a name that resolves to several addresses (what
 * a Kubernetes headless Service gives) is re-resolved on an interval with
 * c-ares, and every change of the address set replaces the pool's
 * upstreams (engine_remote_set_upstreams: requests in flight carry on,
 * kept upstreams keep their connections and state).
 *
 * Threads: one discovery thread for all watches; it resolves with c-ares
 * (its own sockets, polled), never touches a client or upstream socket,
 * and hands each new list to the remote engine's loop. A failed resolution
 * (timeout, server failure) keeps the last list; a name that no longer
 * exists (NXDOMAIN) or has no addresses empties the pool.
 *
 * Not here: etcd (later), the upstream HTTP client (engine/remote).
 */
#pragma once

#include "core/error.h"

#include <stddef.h>

struct engine;

#define DISCOVERY_MAX_WATCHES 8

/* "[KIND+]dns://HOST:PORT[/PREFIX]": the name to resolve, and the URL
 * every address becomes ("[KIND+]http://ADDR:PORT[/PREFIX]"). */
struct dns_watch {
    struct engine *eng; /* a remote engine */
    char url[256];
    int max_inflight; /* per upstream found; 0 = the pool's default */
};

struct discovery;

/* Whether url is a discovery URL (dns://), for callers sorting upstreams. */
int discovery_is_dns(const char *url);
/* Check a dns:// URL's form (LMD_EINVAL with a message). */
int discovery_dns_parse(const char *url, char *host, size_t host_cap, int *port, struct lmd_err *err);

/* Resolve every watch once (blocking the caller, bounded by the timeout),
 * hand the results to their engines, then keep re-resolving every
 * interval_ms on the discovery thread. servers: "HOST:PORT[,…]" for c-ares
 * (NULL = the system's resolver configuration). */
int discovery_start(struct discovery **out, const struct dns_watch *w, int n, int interval_ms, const char *servers,
                    struct lmd_err *err);
void discovery_stop(struct discovery *d); /* NULL is fine */

/* etcd (etcd.c): "[KIND+]etcd://HOST:PORT/PREFIX" — every key under PREFIX
 * is an upstream (its value a URL, or a JSON object with "url"); the
 * prefix is watched and every change replaces the pool's list. Values
 * without a KIND+ take the watch's. */
struct etcd_watch;
int discovery_is_etcd(const char *url);
int discovery_etcd_parse(const char *url, struct lmd_err *err);
/* Read the prefix once (bounded wait), then watch it on a thread. */
int discovery_etcd_start(struct etcd_watch **out, const struct dns_watch *w, struct lmd_err *err);
void discovery_etcd_stop(struct etcd_watch *x); /* NULL is fine */

/* Registration: put self_url under the prefix of etcd_url
 * ("etcd://HOST:PORT/PREFIX", key PREFIX/HOST:PORT) with a lease of ttl_s
 * seconds kept alive on a thread; deregistering revokes it, so the key
 * goes at once (a process that dies loses it when the lease expires). */
struct etcd_reg;
int discovery_register(struct etcd_reg **out, const char *etcd_url, const char *self_url, int ttl_s,
                       struct lmd_err *err);
void discovery_deregister(struct etcd_reg *r); /* NULL is fine */
