/*
 * The tenants file: YAML (libyaml) into a validated `struct qos`. The
 * format is documented in docs/configuration.md; this file is its only
 * reader.
 *
 * The file is untrusted input. Every problem is one line naming
 * file:line:column, the key's path (`tenants[2].requests_burst`) and what
 * is wrong; nothing in it can crash or exhaust the process: the file is
 * capped in size, nesting depth and every list is bounded, and aliases are
 * refused up front (a few bytes of aliases can describe an exponentially
 * large tree, and the schema has no use for them). API keys are never
 * echoed in a message — a misplaced key must not end up in a log.
 *
 * Two passes over the text: the event parser checks syntax, aliases,
 * nesting and the single document; then the document loader builds the
 * node tree we walk. Mapping keys are matched against a fixed list per
 * mapping, which also catches duplicate keys (libyaml does not).
 */
#include "qos/qos_int.h"

#include <openssl/crypto.h>
#include <yaml.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_FILE_BYTES (1 << 20)
#define MAX_DEPTH 32
#define MAX_RATE 100000000000LL   /* units per period (12 digits, so the fixed-point mantissa fits) */
#define MAX_BURST 1000000000000LL /* units */
#define RATE_FRAC_DIGITS 6        /* 0.000001 requests/s is the finest rate */
#define MAX_MS 86400000LL         /* a day */
#define MAX_WEIGHT 1000000
#define MAX_REQUEST_SLOTS 1024       /* the most running sequences a model may have (--max-running) */
#define MAX_DEFAULT_TOKENS (1 << 24) /* the largest max_tokens a request may give */
#define MAX_QUOTA 1000000            /* requests */

/* A configured key while parsing: its digest and where it was, for the
 * duplicate message. */
struct key_at {
    struct qos__key key;
    size_t line, col;
    char path[48];
};

struct cfg {
    struct qos__conf *q;
    const char *file;
    const unsigned char *text; /* [len] the file */
    size_t len;
    yaml_document_t doc;
    struct lmd_err *err;
    struct key_at *keys; /* [cap_keys] */
    int n_keys, cap_keys;
    yaml_mark_t tenant_mark[QOS_MAX_TENANTS]; /* where each tenant's name was */
};

struct field {
    const char *name;
    yaml_node_t *key, *val;
};

/* ---- messages ----------------------------------------------------------------- */

static int vbad(struct cfg *c, size_t line, size_t col, int code, const char *path, const char *fmt, va_list ap)
{
    char msg[LMD_ERR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (path && path[0])
        return lmd_err_set(c->err, code, "%s:%zu:%zu: %s: %s", c->file, line + 1, col + 1, path, msg);
    return lmd_err_set(c->err, code, "%s:%zu:%zu: %s", c->file, line + 1, col + 1, msg);
}

__attribute__((format(printf, 5, 6))) static int bad(struct cfg *c, const yaml_node_t *n, int code, const char *path,
                                                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vbad(c, n->start_mark.line, n->start_mark.column, code, path, fmt, ap);
    va_end(ap);
    return rc;
}

__attribute__((format(printf, 5, 6))) static int bad_mark(struct cfg *c, yaml_mark_t m, int code, const char *path,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vbad(c, m.line, m.column, code, path, fmt, ap);
    va_end(ap);
    return rc;
}

/* Untrusted text shown in a message: at most 40 bytes, printable ASCII. */
static const char *shown(const yaml_node_t *n, char buf[48])
{
    size_t len = n->type == YAML_SCALAR_NODE ? n->data.scalar.length : 0;
    const unsigned char *s = n->type == YAML_SCALAR_NODE ? n->data.scalar.value : (const unsigned char *)"";
    size_t k = 0;
    for (size_t i = 0; i < len && k < 40; i++)
        buf[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (len > 40) {
        buf[k++] = '.';
        buf[k++] = '.';
        buf[k++] = '.';
    }
    buf[k] = 0;
    return buf;
}

static const char *type_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_SCALAR_NODE:
        return "a scalar";
    default:
        return "nothing";
    }
}

/* ---- nodes ----------------------------------------------------------------------- */

static yaml_node_t *node(struct cfg *c, int id)
{
    yaml_node_t *n = yaml_document_get_node(&c->doc, id);
    LMD_ASSERT(n, "libyaml returned a dangling node id");
    return n;
}

static bool scalar_eq(const yaml_node_t *n, const char *s)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.length == strlen(s) &&
           memcmp(n->data.scalar.value, s, n->data.scalar.length) == 0;
}

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return n->data.scalar.length == 0 || scalar_eq(n, "~") || scalar_eq(n, "null") || scalar_eq(n, "Null") ||
           scalar_eq(n, "NULL");
}

static int expect(struct cfg *c, const yaml_node_t *n, yaml_node_type_t type, const char *path)
{
    if (n->type == type && !is_null(n))
        return 0;
    const char *want = type == YAML_MAPPING_NODE ? "a mapping" : type == YAML_SEQUENCE_NODE ? "a list" : "a value";
    return bad(c, n, LMD_EFORMAT, path, "expected %s, got %s", want, is_null(n) ? "nothing" : type_name(n));
}

static int seq_len(const yaml_node_t *n) { return (int)(n->data.sequence.items.top - n->data.sequence.items.start); }

/* Match a mapping's keys against `f` (names NULL-terminated list), filling
 * key/val; an unknown or repeated key is an error. */
static int collect(struct cfg *c, yaml_node_t *map, const char *path, struct field *f, int nf)
{
    int rc = expect(c, map, YAML_MAPPING_NODE, path);
    if (rc < 0)
        return rc;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
        char b[48];
        if (k->type != YAML_SCALAR_NODE)
            return bad(c, k, LMD_EFORMAT, path, "keys must be names, got %s", type_name(k));
        int i = 0;
        while (i < nf && !scalar_eq(k, f[i].name))
            i++;
        if (i == nf) {
            char expected[256];
            size_t o = 0;
            for (int j = 0; j < nf && o < sizeof expected; j++)
                o += (size_t)snprintf(expected + o, sizeof expected - o, "%s%s", j ? ", " : "", f[j].name);
            return bad(c, k, LMD_EFORMAT, path, "unknown key '%s' (expected one of: %s)", shown(k, b), expected);
        }
        if (f[i].key)
            return bad(c, k, LMD_EFORMAT, path, "duplicate key '%s' (first at line %zu)", f[i].name,
                       f[i].key->start_mark.line + 1);
        f[i].key = k;
        f[i].val = v;
    }
    return 0;
}

/* ---- scalars --------------------------------------------------------------------- */

static int plain_number(struct cfg *c, const yaml_node_t *n, const char *path)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return bad(c, n, LMD_EFORMAT, path, "expected a number, got %s", is_null(n) ? "nothing" : type_name(n));
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        char b[48];
        return bad(c, n, LMD_EFORMAT, path, "expected a number, got the quoted string '%s'", shown(n, b));
    }
    return 0;
}

/* A whole number in [min, max]. */
static int get_int(struct cfg *c, const yaml_node_t *n, const char *path, int64_t min, int64_t max, int64_t *out)
{
    int rc = plain_number(c, n, path);
    if (rc < 0)
        return rc;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length, i = 0;
    char b[48];
    bool neg = len > 1 && s[0] == '-';
    i = neg;
    int64_t v = 0;
    bool overflow = false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return bad(c, n, LMD_EFORMAT, path, "expected a whole number, got '%s'", shown(n, b));
        if (v > (INT64_MAX - 9) / 10)
            overflow = true;
        else
            v = v * 10 + (s[i] - '0');
    }
    if (neg && (v > 0 || overflow))
        return bad(c, n, LMD_ERANGE, path, "must not be negative (got %s)", shown(n, b));
    if (overflow || v < min || v > max)
        return bad(c, n, LMD_ERANGE, path, "must be between %lld and %lld (got %s)", (long long)min, (long long)max,
                   shown(n, b));
    *out = v;
    return 0;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* A positive decimal rate per base_ns ("20", "0.5") as an exact fraction.
 * *ceil_out is the rate rounded up to whole units, for the default burst. */
static int get_rate(struct cfg *c, const yaml_node_t *n, const char *path, int64_t base_ns, struct qos_rate *r,
                    int64_t *ceil_out)
{
    int rc = plain_number(c, n, path);
    if (rc < 0)
        return rc;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    char b[48];
    if (len > 1 && s[0] == '-')
        return bad(c, n, LMD_ERANGE, path, "must not be negative (got %s); omit the key for no limit", shown(n, b));
    int64_t mant = 0, scale = 1;
    int int_digits = 0, frac_digits = 0;
    bool dot = false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.' && !dot) {
            dot = true;
            continue;
        }
        if (s[i] < '0' || s[i] > '9' || (dot && ++frac_digits > RATE_FRAC_DIGITS))
            return bad(c, n, LMD_EFORMAT, path, "expected a number with at most %d decimals, got '%s'",
                       RATE_FRAC_DIGITS, shown(n, b));
        if (!dot && ++int_digits > 12)
            return bad(c, n, LMD_ERANGE, path, "must be at most %lld (got %s)", (long long)MAX_RATE, shown(n, b));
        mant = mant * 10 + (s[i] - '0');
        if (dot)
            scale *= 10;
    }
    if (int_digits == 0 || (dot && frac_digits == 0))
        return bad(c, n, LMD_EFORMAT, path, "expected a number, got '%s'", shown(n, b));
    if (mant == 0)
        return bad(c, n, LMD_ERANGE, path, "must be greater than 0; omit the key for no limit");
    if (mant / scale > MAX_RATE || (mant / scale == MAX_RATE && mant % scale))
        return bad(c, n, LMD_ERANGE, path, "must be at most %lld (got %s)", (long long)MAX_RATE, shown(n, b));
    int64_t g = gcd64(mant, base_ns * scale);
    r->count = mant / g;
    r->period_ns = base_ns * scale / g;
    *ceil_out = (mant + scale - 1) / scale;
    return 0;
}

enum str_kind {
    STR_NAME,  /* [A-Za-z0-9_.-]{1,63}: metrics labels */
    STR_MODEL, /* printable ASCII, 1..255 */
};

static int get_str(struct cfg *c, const yaml_node_t *n, const char *path, enum str_kind kind, char *out, size_t cap)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return bad(c, n, LMD_EFORMAT, path, "expected a string, got %s", is_null(n) ? "nothing" : type_name(n));
    const unsigned char *s = n->data.scalar.value;
    size_t len = n->data.scalar.length;
    char b[48];
    if (len == 0)
        return bad(c, n, LMD_EFORMAT, path, "must not be empty");
    if (len >= cap)
        return bad(c, n, LMD_ERANGE, path, "longer than %zu bytes", cap - 1);
    for (size_t i = 0; i < len; i++) {
        bool ok = kind == STR_NAME ? ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                                      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-')
                                   : (s[i] > 0x20 && s[i] < 0x7f);
        if (!ok)
            return bad(c, n, LMD_EFORMAT, path, "'%s' has a character other than %s", shown(n, b),
                       kind == STR_NAME ? "letters, digits, '_', '.' and '-'" : "printable ASCII without spaces");
    }
    memcpy(out, s, len);
    out[len] = 0;
    return 0;
}

/* ---- keys -------------------------------------------------------------------------- */

static int add_key(struct cfg *c, const yaml_node_t *n, const char *path, int tenant)
{
    /* Checked here rather than with get_str so that no message can quote
     * the value: only its position and what is wrong with it. */
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return bad(c, n, LMD_EFORMAT, path, "expected a key string, got %s", is_null(n) ? "nothing" : type_name(n));
    const unsigned char *s = n->data.scalar.value;
    size_t len = n->data.scalar.length;
    if (len == 0)
        return bad(c, n, LMD_EFORMAT, path, "empty key");
    if (len > QOS_KEY_MAX)
        return bad(c, n, LMD_ERANGE, path, "key longer than %d bytes", QOS_KEY_MAX);
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return bad(c, n, LMD_EFORMAT, path, "key has a space, control or non-ASCII byte at offset %zu", i);
    if (c->n_keys == QOS_MAX_KEYS)
        return bad(c, n, LMD_ERANGE, path, "more than %d keys in the file", QOS_MAX_KEYS);
    if (c->n_keys == c->cap_keys) {
        int cap = c->cap_keys ? c->cap_keys * 2 : 16;
        struct key_at *k = qos__calloc((size_t)cap, sizeof *k);
        if (!k)
            return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
        if (c->n_keys)
            memcpy(k, c->keys, (size_t)c->n_keys * sizeof *k);
        free(c->keys);
        c->keys = k;
        c->cap_keys = cap;
    }
    struct key_at *k = &c->keys[c->n_keys++];
    qos__digest((const char *)s, len, k->key.digest);
    k->key.tenant = tenant;
    k->line = n->start_mark.line;
    k->col = n->start_mark.column;
    snprintf(k->path, sizeof k->path, "%s", path);
    return 0;
}

static int key_cmp(const void *a, const void *b)
{
    const struct key_at *x = a, *y = b;
    int xa = x->key.tenant == QOS__ADMIN, ya = y->key.tenant == QOS__ADMIN;
    if (xa != ya)
        return xa - ya;
    int d = memcmp(x->key.digest, y->key.digest, QOS__DIGEST);
    if (d)
        return d;
    return x->line != y->line ? (x->line < y->line ? -1 : 1) : (x->col < y->col ? -1 : x->col > y->col);
}

/* A key may appear once among tenant keys and once among admin keys (an
 * admin may also be a tenant); any other repeat is an error, reported at
 * the repeat that comes first in the file. */
static int keys_finish(struct cfg *c)
{
    qsort(c->keys, (size_t)c->n_keys, sizeof *c->keys, key_cmp);
    const struct key_at *dup = NULL, *first = NULL;
    for (int i = 1; i < c->n_keys; i++) {
        const struct key_at *a = &c->keys[i - 1], *b = &c->keys[i];
        if ((a->key.tenant == QOS__ADMIN) != (b->key.tenant == QOS__ADMIN) ||
            memcmp(a->key.digest, b->key.digest, QOS__DIGEST) != 0)
            continue;
        if (!dup || b->line < dup->line || (b->line == dup->line && b->col < dup->col)) {
            dup = b;
            first = a;
        }
    }
    if (dup) {
        yaml_mark_t m = {.line = dup->line, .column = dup->col};
        return bad_mark(c, m, LMD_EFORMAT, dup->path, "duplicate key (same as %s at line %zu, column %zu)", first->path,
                        first->line + 1, first->col + 1);
    }
    c->q->keys = qos__calloc(c->n_keys ? (size_t)c->n_keys : 1, sizeof *c->q->keys);
    if (!c->q->keys)
        return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
    for (int i = 0; i < c->n_keys; i++)
        c->q->keys[i] = c->keys[i].key;
    c->q->n_keys = c->n_keys;
    return 0;
}

/* ---- classes ----------------------------------------------------------------------- */

static int parse_class(struct cfg *c, yaml_node_t *map, const char *path, struct qos_class *cl)
{
    struct field f[] = {
        {.name = "ttft_ms"}, {.name = "tpot_ms"},           {.name = "window_ms"},          {.name = "weight"},
        {.name = "on_late"}, {.name = "max_request_slots"}, {.name = "default_max_tokens"}, {.name = "reserved_slots"}};
    int rc = collect(c, map, path, f, 8);
    if (rc < 0)
        return rc;
    char p[160];
    int64_t v;
    uint64_t *ms[] = {&cl->ttft_ns, &cl->tpot_ns, &cl->window_ns};
    for (int i = 0; i < 3; i++) {
        *ms[i] = 0;
        if (f[i].val) {
            snprintf(p, sizeof p, "%s.%s", path, f[i].name);
            if ((rc = get_int(c, f[i].val, p, 0, MAX_MS, &v)) < 0)
                return rc;
            *ms[i] = (uint64_t)v * 1000000u;
        }
    }
    cl->weight = 1;
    if (f[3].val) {
        snprintf(p, sizeof p, "%s.weight", path);
        if ((rc = get_int(c, f[3].val, p, 1, MAX_WEIGHT, &v)) < 0)
            return rc;
        cl->weight = (uint32_t)v;
    }
    cl->on_late = QOS_LATE_RUN;
    if (f[4].val) {
        snprintf(p, sizeof p, "%s.on_late", path);
        char b[48];
        if (scalar_eq(f[4].val, "refuse"))
            cl->on_late = QOS_LATE_REFUSE;
        else if (!scalar_eq(f[4].val, "run"))
            return bad(c, f[4].val, LMD_EFORMAT, p, "expected 'run' or 'refuse', got '%s'", shown(f[4].val, b));
    }
    int32_t *lim[] = {&cl->max_request_slots, &cl->default_max_tokens, &cl->reserved_slots};
    const int64_t lim_max[] = {MAX_REQUEST_SLOTS, MAX_DEFAULT_TOKENS, MAX_REQUEST_SLOTS};
    for (int i = 0; i < 3; i++) {
        *lim[i] = 0;
        if (f[5 + i].val) {
            snprintf(p, sizeof p, "%s.%s", path, f[5 + i].name);
            if ((rc = get_int(c, f[5 + i].val, p, 0, lim_max[i], &v)) < 0)
                return rc;
            *lim[i] = (int32_t)v;
        }
    }
    return 0;
}

static int parse_classes(struct cfg *c, yaml_node_t *map)
{
    int rc = expect(c, map, YAML_MAPPING_NODE, "classes");
    if (rc < 0)
        return rc;
    struct qos__conf *q = c->q;
    q->n_classes = 0;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(c, p->key);
        if (q->n_classes == QOS_MAX_CLASSES)
            return bad(c, k, LMD_ERANGE, "classes", "more than %d classes", QOS_MAX_CLASSES);
        struct qos_class *cl = &q->classes[q->n_classes];
        memset(cl, 0, sizeof *cl);
        if ((rc = get_str(c, k, "classes", STR_NAME, cl->name, sizeof cl->name)) < 0)
            return rc;
        for (int i = 0; i < q->n_classes; i++)
            if (strcmp(q->classes[i].name, cl->name) == 0)
                return bad(c, k, LMD_EFORMAT, "classes", "duplicate class '%s'", cl->name);
        char path[128];
        snprintf(path, sizeof path, "classes.%s", cl->name);
        if ((rc = parse_class(c, node(c, p->value), path, cl)) < 0)
            return rc;
        q->n_classes++;
    }
    if (q->n_classes == 0)
        return bad(c, map, LMD_EFORMAT, "classes", "needs at least one class (omit the key for the defaults)");
    return 0;
}

/* Class index named by scalar n, or an error listing the classes. */
static int class_ref(struct cfg *c, const yaml_node_t *n, const char *path)
{
    char name[QOS_NAME_MAX];
    int rc = get_str(c, n, path, STR_NAME, name, sizeof name);
    if (rc < 0)
        return rc;
    int i = qos__class_find(c->q, name, strlen(name));
    if (i >= 0)
        return i;
    char list[QOS_MAX_CLASSES * (QOS_NAME_MAX + 2)];
    size_t o = 0;
    for (int j = 0; j < c->q->n_classes && o < sizeof list; j++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", j ? ", " : "", c->q->classes[j].name);
    return bad(c, n, LMD_EFORMAT, path, "unknown class '%s' (classes are: %s)", name, list);
}

/* ---- tenants ----------------------------------------------------------------------- */

enum {
    F_NAME,
    F_TIER,
    F_KEYS,
    F_WEIGHT,
    F_RPS,
    F_RBURST,
    F_TPM,
    F_TBURST,
    F_MAXC,
    F_MAXQ,
    F_MODELS,
    F_CLASSES,
    F_DEFCLASS,
    F_CACHE,
    F__N,
};

static int parse_limits(struct cfg *c, struct field *f, const char *tpath, struct qos_tenant *t)
{
    char p[160];
    int64_t v, ceil_rate = 0;
    int rc;
    struct {
        int rate, burst;
        int64_t base_ns;
        struct qos_rate *r;
    } b[2] = {{F_RPS, F_RBURST, 1000000000LL, &t->requests}, {F_TPM, F_TBURST, 60000000000LL, &t->tokens}};
    for (int i = 0; i < 2; i++) {
        struct field *fr = &f[b[i].rate], *fb = &f[b[i].burst];
        if (!fr->val) {
            if (fb->val) {
                snprintf(p, sizeof p, "%s.%s", tpath, fb->name);
                return bad(c, fb->key, LMD_EFORMAT, p, "has no effect without %s", fr->name);
            }
            continue;
        }
        snprintf(p, sizeof p, "%s.%s", tpath, fr->name);
        if ((rc = get_rate(c, fr->val, p, b[i].base_ns, b[i].r, &ceil_rate)) < 0)
            return rc;
        b[i].r->burst = ceil_rate < 1 ? 1 : ceil_rate;
        if (fb->val) {
            snprintf(p, sizeof p, "%s.%s", tpath, fb->name);
            if ((rc = get_int(c, fb->val, p, 1, MAX_BURST, &v)) < 0)
                return rc;
            b[i].r->burst = v;
        }
    }
    int32_t *quota[] = {&t->max_in_flight, &t->max_queued};
    for (int i = 0; i < 2; i++) {
        struct field *fq = &f[F_MAXC + i];
        if (!fq->val)
            continue;
        snprintf(p, sizeof p, "%s.%s", tpath, fq->name);
        if ((rc = get_int(c, fq->val, p, 1, MAX_QUOTA, &v)) < 0)
            return rc;
        *quota[i] = (int32_t)v;
    }
    return 0;
}

static int parse_models(struct cfg *c, yaml_node_t *seq, const char *path, struct qos_tenant *t)
{
    int rc = expect(c, seq, YAML_SEQUENCE_NODE, path);
    if (rc < 0)
        return rc;
    int n = seq_len(seq);
    if (n == 0)
        return bad(c, seq, LMD_EFORMAT, path, "needs at least one model id, or \"*\" for all");
    if (n > QOS_MAX_MODELS)
        return bad(c, seq, LMD_ERANGE, path, "more than %d models", QOS_MAX_MODELS);
    t->all_models = false;
    t->models = qos__calloc((size_t)n, sizeof *t->models);
    if (!t->models)
        return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
    for (int i = 0; i < n; i++) {
        yaml_node_t *m = node(c, seq->data.sequence.items.start[i]);
        char p[192], id[256];
        snprintf(p, sizeof p, "%s[%d]", path, i);
        if ((rc = get_str(c, m, p, STR_MODEL, id, sizeof id)) < 0)
            return rc;
        if (strcmp(id, "*") == 0) {
            if (n > 1)
                return bad(c, m, LMD_EFORMAT, p, "\"*\" (all models) must be the only entry");
            t->all_models = true;
            break;
        }
        for (int j = 0; j < t->n_models; j++)
            if (strcmp(t->models[j], id) == 0)
                return bad(c, m, LMD_EFORMAT, p, "duplicate model '%s'", id);
        if (!(t->models[t->n_models] = qos__strndup(id, strlen(id))))
            return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
        t->n_models++;
    }
    return 0;
}

static int parse_tenant_classes(struct cfg *c, struct field *f, const char *tpath, struct qos_tenant *t)
{
    char p[160];
    int rc, first = -1;
    struct qos__conf *q = c->q;
    t->classes = (q->n_classes >= 32) ? 0xffffffffu : ((1u << q->n_classes) - 1);
    if (f[F_CLASSES].val) {
        yaml_node_t *seq = f[F_CLASSES].val;
        snprintf(p, sizeof p, "%s.classes", tpath);
        if ((rc = expect(c, seq, YAML_SEQUENCE_NODE, p)) < 0)
            return rc;
        if (seq_len(seq) == 0)
            return bad(c, seq, LMD_EFORMAT, p, "needs at least one class");
        if (seq_len(seq) > QOS_MAX_CLASSES)
            return bad(c, seq, LMD_ERANGE, p, "more than %d classes", QOS_MAX_CLASSES);
        t->classes = 0;
        for (int i = 0; i < seq_len(seq); i++) {
            yaml_node_t *n = node(c, seq->data.sequence.items.start[i]);
            snprintf(p, sizeof p, "%s.classes[%d]", tpath, i);
            int cls = class_ref(c, n, p);
            if (cls < 0)
                return cls;
            if ((t->classes >> cls) & 1u)
                return bad(c, n, LMD_EFORMAT, p, "class '%s' is listed twice", q->classes[cls].name);
            t->classes |= 1u << cls;
            if (first < 0)
                first = cls;
        }
    }
    if (f[F_DEFCLASS].val) {
        snprintf(p, sizeof p, "%s.default_class", tpath);
        int cls = class_ref(c, f[F_DEFCLASS].val, p);
        if (cls < 0)
            return cls;
        if (!((t->classes >> cls) & 1u))
            return bad(c, f[F_DEFCLASS].val, LMD_EFORMAT, p, "class '%s' is not in this tenant's classes",
                       q->classes[cls].name);
        t->default_class = cls;
    } else {
        /* The file's default if the tenant may use it, else the first
         * class the tenant lists. */
        t->default_class = ((t->classes >> q->default_class) & 1u) ? q->default_class : first;
    }
    return 0;
}

static int parse_tenant(struct cfg *c, yaml_node_t *map, int idx)
{
    /* In the order of the F_* indices. */
    struct field f[F__N] = {
        {.name = "name"},
        {.name = "tier"},
        {.name = "keys"},
        {.name = "weight"},
        {.name = "requests_per_second"},
        {.name = "requests_burst"},
        {.name = "tokens_per_minute"},
        {.name = "tokens_burst"},
        {.name = "max_concurrent"},
        {.name = "max_queued"},
        {.name = "models"},
        {.name = "classes"},
        {.name = "default_class"},
        {.name = "prefix_cache_group"},
    };
    char tpath[32], p[160];
    snprintf(tpath, sizeof tpath, "tenants[%d]", idx);
    int rc = collect(c, map, tpath, f, F__N);
    if (rc < 0)
        return rc;
    struct qos__conf *q = c->q;
    int ti = q->n_tenants; /* index 0 is "anonymous" */
    struct qos_tenant *t = &q->tenants[ti];
    memset(t, 0, sizeof *t);
    t->weight = 1;
    t->all_models = true;

    if (!f[F_NAME].val)
        return bad(c, map, LMD_EFORMAT, tpath, "missing key 'name'");
    snprintf(p, sizeof p, "%s.name", tpath);
    if ((rc = get_str(c, f[F_NAME].val, p, STR_NAME, t->name, sizeof t->name)) < 0)
        return rc;
    if (strcmp(t->name, "anonymous") == 0)
        return bad(c, f[F_NAME].val, LMD_EFORMAT, p, "the name 'anonymous' is reserved for requests without a key");
    for (int i = 1; i < ti; i++)
        if (strcmp(q->tenants[i].name, t->name) == 0)
            return bad(c, f[F_NAME].val, LMD_EFORMAT, p, "duplicate tenant '%s' (first at line %zu)", t->name,
                       c->tenant_mark[i].line + 1);
    c->tenant_mark[ti] = f[F_NAME].val->start_mark;
    /* Count it now so that qos__free_parts sees its models on any error. */
    q->n_tenants++;

    if (f[F_TIER].val) {
        snprintf(p, sizeof p, "%s.tier", tpath);
        if ((rc = get_str(c, f[F_TIER].val, p, STR_NAME, t->tier, sizeof t->tier)) < 0)
            return rc;
    }
    if (f[F_CACHE].val) {
        snprintf(p, sizeof p, "%s.prefix_cache_group", tpath);
        if ((rc = get_str(c, f[F_CACHE].val, p, STR_NAME, t->cache_group, sizeof t->cache_group)) < 0)
            return rc;
    }
    if (f[F_WEIGHT].val) {
        int64_t v;
        snprintf(p, sizeof p, "%s.weight", tpath);
        if ((rc = get_int(c, f[F_WEIGHT].val, p, 1, MAX_WEIGHT, &v)) < 0)
            return rc;
        t->weight = (uint32_t)v;
    }
    if (!f[F_KEYS].val)
        return bad(c, map, LMD_EFORMAT, tpath, "missing key 'keys' (a tenant without keys cannot be reached)");
    snprintf(p, sizeof p, "%s.keys", tpath);
    yaml_node_t *keys = f[F_KEYS].val;
    if ((rc = expect(c, keys, YAML_SEQUENCE_NODE, p)) < 0)
        return rc;
    if (seq_len(keys) == 0)
        return bad(c, keys, LMD_EFORMAT, p, "needs at least one key");
    for (int i = 0; i < seq_len(keys); i++) {
        snprintf(p, sizeof p, "%s.keys[%d]", tpath, i);
        if ((rc = add_key(c, node(c, keys->data.sequence.items.start[i]), p, ti)) < 0)
            return rc;
        t->n_keys++;
    }
    if ((rc = parse_limits(c, f, tpath, t)) < 0)
        return rc;
    if (f[F_MODELS].val) {
        snprintf(p, sizeof p, "%s.models", tpath);
        if ((rc = parse_models(c, f[F_MODELS].val, p, t)) < 0)
            return rc;
    }
    return parse_tenant_classes(c, f, tpath, t);
}

/* ---- the file ---------------------------------------------------------------------- */

/* Line and column (0-based) of a byte offset, for reader errors, which
 * libyaml reports as an offset only. */
static yaml_mark_t mark_of_offset(const struct cfg *c, size_t off)
{
    yaml_mark_t m = {0};
    for (size_t i = 0; i < off && i < c->len; i++) {
        if (c->text[i] == '\n') {
            m.line++;
            m.column = 0;
        } else {
            m.column++;
        }
    }
    return m;
}

static int syntax_error(struct cfg *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
    yaml_mark_t m = p->error == YAML_READER_ERROR ? mark_of_offset(c, p->problem_offset) : p->problem_mark;
    const char *problem = p->problem ? p->problem : "malformed YAML";
    if (p->context)
        return bad_mark(c, m, LMD_EFORMAT, NULL, "YAML syntax error: %s %s (line %zu)", problem, p->context,
                        p->context_mark.line + 1);
    return bad_mark(c, m, LMD_EFORMAT, NULL, "YAML syntax error: %s", problem);
}

/* The first pass: syntax, a single document, no aliases, bounded nesting. */
static int prescan(struct cfg *c)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory", c->file);
    yaml_parser_set_input_string(&p, c->text, c->len);
    int rc = 0, depth = 0, docs = 0;
    for (bool done = false; !done && rc == 0;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = syntax_error(c, &p);
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_ALIAS_EVENT:
            rc = bad_mark(c, ev.start_mark, LMD_EFORMAT, NULL, "YAML aliases (*name) are not supported here");
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                rc = bad_mark(c, ev.start_mark, LMD_EFORMAT, NULL, "only one YAML document is allowed");
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (++depth > MAX_DEPTH)
                rc = bad_mark(c, ev.start_mark, LMD_EFORMAT, NULL, "nested deeper than %d levels", MAX_DEPTH);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return rc;
}

static int parse_root(struct cfg *c)
{
    struct qos__conf *q = c->q;
    yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    if (!root)
        return lmd_err_set(c->err, LMD_EFORMAT, "%s:1:1: the file is empty (expected a mapping with 'tenants')",
                           c->file);
    struct field f[] = {{.name = "classes"}, {.name = "default_class"}, {.name = "admin_keys"}, {.name = "tenants"}};
    int rc = collect(c, root, "", f, 4);
    if (rc < 0)
        return rc;
    if (f[0].val && (rc = parse_classes(c, f[0].val)) < 0)
        return rc;
    if (f[1].val) {
        if ((rc = class_ref(c, f[1].val, "default_class")) < 0)
            return rc;
        q->default_class = rc;
    } else if (f[0].val) {
        int be = qos__class_find(q, "best_effort", strlen("best_effort"));
        q->default_class = be >= 0 ? be : 0;
    }
    if (f[2].val) {
        if ((rc = expect(c, f[2].val, YAML_SEQUENCE_NODE, "admin_keys")) < 0)
            return rc;
        for (int i = 0; i < seq_len(f[2].val); i++) {
            char p[48];
            snprintf(p, sizeof p, "admin_keys[%d]", i);
            if ((rc = add_key(c, node(c, f[2].val->data.sequence.items.start[i]), p, QOS__ADMIN)) < 0)
                return rc;
        }
    }
    if (!f[3].val)
        return bad(c, root, LMD_EFORMAT, "", "missing key 'tenants'");
    yaml_node_t *ts = f[3].val;
    if ((rc = expect(c, ts, YAML_SEQUENCE_NODE, "tenants")) < 0)
        return rc;
    if (seq_len(ts) == 0)
        return bad(c, ts, LMD_EFORMAT, "tenants", "needs at least one tenant");
    for (int i = 0; i < seq_len(ts); i++) {
        yaml_node_t *n = node(c, ts->data.sequence.items.start[i]);
        if (q->n_tenants == QOS_MAX_TENANTS)
            return bad(c, n, LMD_ERANGE, "tenants", "more than %d tenants", QOS_MAX_TENANTS - 1);
        if ((rc = parse_tenant(c, n, i)) < 0)
            return rc;
    }
    return keys_finish(c);
}

static int read_file(const char *path, unsigned char **out, size_t *len, struct lmd_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lmd_err_set(err, LMD_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return lmd_err_set(err, LMD_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return lmd_err_set(err, LMD_ERANGE, "%s: larger than %d bytes", path, MAX_FILE_BYTES);
    }
    unsigned char *buf = qos__calloc((size_t)st.st_size + 1, 1);
    if (!buf) {
        fclose(f);
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    bool failed = ferror(f);
    fclose(f);
    if (failed || n != (size_t)st.st_size) {
        free(buf);
        return lmd_err_set(err, LMD_EIO, "%s: read failed", path);
    }
    *out = buf;
    *len = n;
    return 0;
}

int qos__config_load_buffer(struct qos__conf *q, const char *name, const void *text, size_t len, struct lmd_err *err)
{
    if (len > MAX_FILE_BYTES)
        return lmd_err_set(err, LMD_ERANGE, "%s: larger than %d bytes", name, MAX_FILE_BYTES);
    struct cfg c = {.q = q, .file = name, .text = text, .len = len, .err = err};
    int rc = prescan(&c);
    if (rc < 0)
        goto out;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        rc = lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", name);
        goto out;
    }
    yaml_parser_set_input_string(&p, c.text, c.len);
    if (!yaml_parser_load(&p, &c.doc)) {
        rc = syntax_error(&c, &p);
        yaml_parser_delete(&p);
        goto out;
    }
    yaml_parser_delete(&p);
    rc = parse_root(&c);
    yaml_document_delete(&c.doc);
out:
    /* Wipe the digests, which identify the keys. */
    if (c.keys) {
        OPENSSL_cleanse(c.keys, (size_t)c.cap_keys * sizeof *c.keys);
        free(c.keys);
    }
    return rc;
}

int qos__config_load(struct qos__conf *q, const char *path, struct lmd_err *err)
{
    unsigned char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err);
    if (rc < 0)
        return rc;
    rc = qos__config_load_buffer(q, path, text, len, err);
    /* Wipe the text, which held the keys in clear. */
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}
