/*
 * Internals shared by the files of qos/: the layout of `struct qos`, the
 * per-tenant admission state and the allocation hook the tests use to make
 * every allocation of qos_open fail in turn. Nothing outside qos/ (except
 * tests/unit/qos_test.c) includes this.
 */
#pragma once

#include "qos/qos.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define QOS__DIGEST 32  /* bytes of SHA-256 */
#define QOS__ADMIN (-1) /* qos__key.tenant of an admin key */

/* One configured key, kept only as its digest. */
struct qos__key {
    uint8_t digest[QOS__DIGEST];
    int32_t tenant; /* tenant index, or QOS__ADMIN */
};

/* A token bucket in exact integer arithmetic. The level is kept in units of
 * (bucket units x period_ns), so refilling `elapsed` ns adds exactly
 * elapsed x count with no remainder to lose; the capacity is burst x
 * period_ns. 128 bits because 10^12 tokens x 6 x 10^16 ns (a minute at the
 * finest decimal rate) does not fit in 64. */
struct qos__bucket {
    __int128 level;   /* units x ns; <= burst x period_ns, >= -burst x period_ns */
    uint64_t last_ns; /* ns, monotonic time the level was computed at; never moves backwards */
};

/* Mutable admission state of one tenant, alone on its cache line(s) so that
 * tenants do not contend. Everything but `lock` is touched only with the
 * lock held. */
struct qos__state {
    alignas(64) atomic_flag lock;
    struct qos__bucket req;           /* requests/s */
    struct qos__bucket tok;           /* tokens/min */
    const struct qos__conf *rates_of; /* the snapshot whose rates the levels are in (qos_reload) */
    int32_t in_flight;                /* admitted, not finished */
    int32_t queued;                   /* admitted, not started */
};

/* What the tenants file says: classes, tenants, keys. Immutable once
 * published: qos_reload builds a new one and swaps the pointer, so a
 * reader takes one snapshot (qos__conf) per question and never sees half
 * of a reload. Replaced snapshots are kept until qos_close (a reader may
 * still hold one, and each is a few hundred kilobytes at most). */
struct qos__conf {
    bool has_file;
    int n_classes;
    struct qos_class classes[QOS_MAX_CLASSES];
    int default_class;
    int n_tenants;
    struct qos_tenant tenants[QOS_MAX_TENANTS];
    int n_keys;
    struct qos__key *keys;  /* [n_keys] tenant and admin keys, file order */
    struct qos__conf *prev; /* the snapshot this one replaced, kept until qos_close */
};

struct qos {
    _Atomic(struct qos__conf *) conf;
    uint64_t reloads; /* snapshots published after the first */
    struct qos__state state[QOS_MAX_TENANTS];
};

/* The configuration in force now. */
static inline struct qos__conf *qos__conf(const struct qos *q)
{
    return atomic_load_explicit(&((struct qos *)q)->conf, memory_order_acquire);
}

/* Load and validate the YAML file into q, which the caller has set up with
 * the defaults (classes, tenant 0). On failure q may hold partial state
 * that qos__free_parts releases. The _buffer form parses the file's bytes
 * text[len] (not NUL-terminated, only read), `name` standing for its path
 * in messages; qos__config_load reads the file and calls it. */
int qos__config_load(struct qos__conf *q, const char *path, struct lmd_err *err);
int qos__config_load_buffer(struct qos__conf *q, const char *name, const void *text, size_t len, struct lmd_err *err);

/* qos_class_find on one snapshot. */
int qos__class_find(const struct qos__conf *c, const char *name, size_t len);

/* The built-in classes (urgent, best_effort) and the open tenant 0. */
void qos__default_classes(struct qos__conf *q);
void qos__anonymous_tenant(struct qos__conf *q, struct qos_tenant *t);

/* Free what qos__config_load allocated inside q (model lists, keys). */
void qos__free_parts(struct qos__conf *q);

/* Reset the admission state of every tenant: buckets full, no requests. */
void qos__state_init(struct qos *q);

/* Parse the tenants file at path into a new snapshot (defaults first,
 * tenant 0 last); NULL with err set on failure. With text non-NULL,
 * text[len] are the file's bytes and path only names them. qos__conf_free
 * frees the snapshot and the snapshots it replaced. */
struct qos__conf *qos__conf_load(const char *path, const void *text, size_t len, struct lmd_err *err);
void qos__conf_free(struct qos__conf *c);

/* SHA-256 of a key. */
void qos__digest(const char *key, size_t len, uint8_t out[QOS__DIGEST]);

/* Allocation for qos_open and everything it calls. Tests set
 * qos__alloc_fail_after to n >= 0 to make the (n+1)-th allocation from now
 * on fail; -1 (the default) never fails. Not thread-safe: only qos_open
 * allocates, and tests call it from one thread. */
extern int qos__alloc_fail_after;
void *qos__calloc(size_t n, size_t size);
char *qos__strndup(const char *s, size_t len);
