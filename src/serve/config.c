/*
 * The server's config: defaults, `-m [NAME=]PATH` arguments, and the YAML
 * config file (libyaml) read into a `struct serve_config`. The format is
 * documented in docs/configuration.md; this file is its only reader.
 *
 * The file is input like any other: every problem is one line naming
 * file:line:column, the key's path (`models[1].ctx`) and what is wrong,
 * and nothing in it can crash the process. As in qos/config.c (the
 * tenants file), two passes: libyaml's event parser checks syntax, refuses
 * aliases and more than one document and bounds the nesting; then the
 * loaded node tree is walked with a fixed list of keys per mapping, which
 * also catches unknown and duplicate keys. The config holds fixed arrays,
 * so loading allocates nothing that outlives it.
 *
 * Not here: opening models or anything else (serve.c).
 */
#include "serve/serve.h"

#include "api/api.h"
#include "api/chat_template.h"
#include "discovery/discovery.h"
#include "engine/engine.h"
#include "http/http.h"
#include "sched/sched.h"

#include <yaml.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_FILE_BYTES (1 << 20)
#define MAX_DEPTH 16

void serve_config_init(struct serve_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->io_threads = 1;
    c->max_body = 4 << 20;
    c->stall_s = 60;
    c->drain_s = 30;
    c->metrics = true;
    c->prefix_cache = true;
    c->policy = SCHED_POLICY_SLA;
    struct serve_model *d = &c->defaults;
    d->engine = SERVE_ENGINE_NATIVE;
    snprintf(d->device, sizeof d->device, "cpu");
    d->threads = 0;
    d->ctx = 4096;
    d->kv_blocks = 0;
    d->max_running = 8;
    d->max_batch_tokens = 512;
    d->max_queue = 64;
    c->dns_interval_ms = 5000;
    d->inflight = 0; /* learned from each upstream where it says (else 8: engine_remote_open) */
    d->route = REMOTE_ROUTE_TTFT;
}

static void model_init(struct serve_model *m)
{
    memset(m, 0, sizeof *m);
    m->engine = SERVE_ENGINE_NATIVE;
    m->threads = m->ctx = m->kv_blocks = m->max_running = m->max_batch_tokens = m->max_queue = SERVE_UNSET;
    m->inflight = m->route = SERVE_UNSET;
}

bool serve_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= SERVE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || !strchr("._:/-", ch)))
            return false;
    }
    return true;
}

void serve_model_slug(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    const char *file = slash ? slash + 1 : path;
    size_t n = strlen(file);
    if (n > 5 && strcmp(file + n - 5, ".gguf") == 0)
        n -= 5;
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        char ch = file[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '_' || ch == '-';
        out[i] = ok ? ch : '-';
    }
    out[n] = 0;
}

int serve_config_add_model(struct serve_config *c, const char *arg, struct lmd_err *err)
{
    if (c->n_models == SERVE_MAX_MODELS)
        return lmd_err_set(err, LMD_ERANGE, "more than %d models", SERVE_MAX_MODELS);
    struct serve_model *m = &c->models[c->n_models];
    model_init(m);
    const char *eq = strchr(arg, '='), *path = arg;
    if (eq && !memchr(arg, '/', (size_t)(eq - arg))) {
        size_t n = (size_t)(eq - arg);
        snprintf(m->name, sizeof m->name, "%.*s", (int)(n < sizeof m->name ? n : sizeof m->name - 1), arg);
        if (n >= sizeof m->name || !serve_id_valid(m->name))
            return lmd_err_set(err, LMD_EINVAL,
                               "-m %s: the name '%.*s' is not a model id (1 to %d of letters, digits and ._:/-, "
                               "starting with a letter or digit)",
                               arg, (int)(n > 64 ? 64 : n), arg, SERVE_NAME_MAX - 1);
        path = eq + 1;
    }
    if (!*path)
        return lmd_err_set(err, LMD_EINVAL, "-m %s: no model file after the name", arg);
    if (strlen(path) >= sizeof m->path)
        return lmd_err_set(err, LMD_ERANGE, "-m: the path is longer than %d bytes", SERVE_PATH_MAX - 1);
    snprintf(m->path, sizeof m->path, "%s", path);
    c->n_models++;
    return 0;
}

int serve_config_add_alias(struct serve_config *c, int model, const char *name, struct lmd_err *err)
{
    if (model < 0 || model >= c->n_models)
        return lmd_err_set(err, LMD_EINVAL, "--alias %s: no model to name", name);
    struct serve_model *m = &c->models[model];
    if (strlen(name) >= SERVE_NAME_MAX || !serve_id_valid(name))
        return lmd_err_set(err, LMD_EINVAL,
                           "--alias '%.64s' is not a model id (1 to %d of letters, digits and ._:/-, starting with a "
                           "letter or digit)",
                           name, SERVE_NAME_MAX - 1);
    if (m->n_aliases == SERVE_MAX_ALIASES)
        return lmd_err_set(err, LMD_ERANGE, "--alias %s: more than %d aliases for one model", name, SERVE_MAX_ALIASES);
    snprintf(m->aliases[m->n_aliases++], SERVE_NAME_MAX, "%s", name);
    return 0;
}

int serve_config_add_upstream(struct serve_config *c, const char *arg, struct lmd_err *err)
{
    if (c->n_models == SERVE_MAX_MODELS)
        return lmd_err_set(err, LMD_ERANGE, "more than %d models", SERVE_MAX_MODELS);
    struct serve_model *m = &c->models[c->n_models];
    model_init(m);
    m->engine = SERVE_ENGINE_REMOTE;
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return lmd_err_set(err, LMD_EINVAL, "--upstream %s: expected NAME=URL[,URL...]", arg);
    size_t n = (size_t)(eq - arg);
    snprintf(m->name, sizeof m->name, "%.*s", (int)(n < sizeof m->name ? n : sizeof m->name - 1), arg);
    if (n >= sizeof m->name || !serve_id_valid(m->name))
        return lmd_err_set(err, LMD_EINVAL,
                           "--upstream %s: the name '%.*s' is not a model id (1 to %d of letters, digits and ._:/-, "
                           "starting with a letter or digit)",
                           arg, (int)(n > 64 ? 64 : n), arg, SERVE_NAME_MAX - 1);
    for (const char *p = eq + 1;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0)
            return lmd_err_set(err, LMD_EINVAL, "--upstream %s: an empty URL", arg);
        if (m->n_upstreams == SERVE_MAX_UPSTREAMS)
            return lmd_err_set(err, LMD_ERANGE, "--upstream %s: more than %d upstreams", m->name, SERVE_MAX_UPSTREAMS);
        if (len >= SERVE_URL_MAX)
            return lmd_err_set(err, LMD_ERANGE, "--upstream %s: a URL longer than %d bytes", m->name,
                               SERVE_URL_MAX - 1);
        char *u = m->upstreams[m->n_upstreams++];
        memcpy(u, p, len);
        u[len] = 0;
        enum remote_kind kind;
        char host[256], prefix[128];
        int port;
        if (discovery_is_etcd(u) ? discovery_etcd_parse(u, err) != 0
            : discovery_is_dns(u)
                ? discovery_dns_parse(u, host, sizeof host, &port, err) != 0
                : remote_url_parse(u, &kind, host, sizeof host, &port, prefix, sizeof prefix, err) != 0)
            return LMD_EINVAL;
        if (!comma)
            break;
        p = comma + 1;
    }
    c->n_models++;
    return 0;
}

/* ---- the YAML file ------------------------------------------------------------ */

struct cfg {
    struct serve_config *sc;
    const char *file;
    char dir[SERVE_PATH_MAX]; /* the file's folder, with a trailing '/', or "" */
    const unsigned char *text;
    size_t len;
    yaml_document_t doc;
    struct lmd_err *err;
};

struct field {
    const char *name;
    yaml_node_t *key, *val;
};

__attribute__((format(printf, 5, 6))) static int bad_at(struct cfg *c, yaml_mark_t m, int code, const char *path,
                                                        const char *fmt, ...)
{
    char msg[LMD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (path && *path)
        return lmd_err_set(c->err, code, "%s:%zu:%zu: %s: %s", c->file, m.line + 1, m.column + 1, path, msg);
    return lmd_err_set(c->err, code, "%s:%zu:%zu: %s", c->file, m.line + 1, m.column + 1, msg);
}

#define BAD(c, n, code, path, ...) bad_at((c), (n)->start_mark, (code), (path), __VA_ARGS__)

/* Untrusted text shown in a message: at most 40 bytes, printable ASCII. */
static const char *shown(const yaml_node_t *n, char buf[48])
{
    size_t len = n->type == YAML_SCALAR_NODE ? n->data.scalar.length : 0, k = 0;
    for (size_t i = 0; i < len && k < 40; i++) {
        unsigned char ch = n->data.scalar.value[i];
        buf[k++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (len > 40)
        k += (size_t)snprintf(buf + k, 4, "...");
    buf[k] = 0;
    return buf;
}

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

static const char *type_name(const yaml_node_t *n)
{
    if (is_null(n))
        return "nothing";
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a list" : "a scalar";
}

static int expect(struct cfg *c, const yaml_node_t *n, yaml_node_type_t type, const char *path)
{
    if (n->type == type && !is_null(n))
        return 0;
    return BAD(c, n, LMD_EFORMAT, path, "expected %s, got %s", type == YAML_MAPPING_NODE ? "a mapping" : "a list",
               type_name(n));
}

static int seq_len(const yaml_node_t *n) { return (int)(n->data.sequence.items.top - n->data.sequence.items.start); }

/* Match a mapping's keys against f[0, nf): an unknown or repeated key is
 * an error that lists the keys expected. */
static int collect(struct cfg *c, yaml_node_t *map, const char *path, struct field *f, int nf)
{
    int rc = expect(c, map, YAML_MAPPING_NODE, path);
    if (rc < 0)
        return rc;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
        char b[48];
        if (k->type != YAML_SCALAR_NODE)
            return BAD(c, k, LMD_EFORMAT, path, "keys must be names, got %s", type_name(k));
        int i = 0;
        while (i < nf && !scalar_eq(k, f[i].name))
            i++;
        if (i == nf) {
            char expected[400];
            size_t o = 0;
            for (int j = 0; j < nf && o < sizeof expected; j++)
                o += (size_t)snprintf(expected + o, sizeof expected - o, "%s%s", j ? ", " : "", f[j].name);
            return BAD(c, k, LMD_EFORMAT, path, "unknown key '%s' (expected one of: %s)", shown(k, b), expected);
        }
        if (f[i].key)
            return BAD(c, k, LMD_EFORMAT, path, "duplicate key '%s' (first at line %zu)", f[i].name,
                       f[i].key->start_mark.line + 1);
        f[i].key = k;
        f[i].val = v;
    }
    return 0;
}

/* The value of field `name` in f, or NULL. */
static yaml_node_t *field(const struct field *f, int nf, const char *name)
{
    for (int i = 0; i < nf; i++)
        if (strcmp(f[i].name, name) == 0)
            return f[i].val;
    return NULL;
}

static void sub(char *out, size_t cap, const char *path, const char *key)
{
    snprintf(out, cap, "%s%s%s", path, *path ? "." : "", key);
}

/* A whole number in [min, max], written plainly. */
static int get_long(struct cfg *c, const yaml_node_t *n, const char *path, long min, long max, long *out)
{
    char b[48];
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return BAD(c, n, LMD_EFORMAT, path, "expected a number, got %s", type_name(n));
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return BAD(c, n, LMD_EFORMAT, path, "expected a number, got the quoted string '%s'", shown(n, b));
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length, i = len > 1 && s[0] == '-';
    long long v = 0;
    bool overflow = false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return BAD(c, n, LMD_EFORMAT, path, "expected a whole number, got '%s'", shown(n, b));
        if (v > 100000000000LL)
            overflow = true;
        else
            v = v * 10 + (s[i] - '0');
    }
    if (len > 1 && s[0] == '-')
        v = -v;
    if (overflow || v < min || v > max)
        return BAD(c, n, LMD_ERANGE, path, "must be between %ld and %ld (got %s)", min, max, shown(n, b));
    *out = (long)v;
    return 0;
}

static int get_int(struct cfg *c, const yaml_node_t *n, const char *path, long min, long max, int *out)
{
    long v;
    int rc = get_long(c, n, path, min, max, &v);
    if (rc == 0)
        *out = (int)v;
    return rc;
}

static int get_bool(struct cfg *c, const yaml_node_t *n, const char *path, bool *out)
{
    char b[48];
    if (n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        if (scalar_eq(n, "true") || scalar_eq(n, "True") || scalar_eq(n, "TRUE")) {
            *out = true;
            return 0;
        }
        if (scalar_eq(n, "false") || scalar_eq(n, "False") || scalar_eq(n, "FALSE")) {
            *out = false;
            return 0;
        }
    }
    return BAD(c, n, LMD_EFORMAT, path, "expected true or false, got %s%s%s", n->type == YAML_SCALAR_NODE ? "'" : "",
               n->type == YAML_SCALAR_NODE ? shown(n, b) : type_name(n), n->type == YAML_SCALAR_NODE ? "'" : "");
}

/* A string of 1..cap-1 printable ASCII bytes (spaces allowed inside). */
static int get_str(struct cfg *c, const yaml_node_t *n, const char *path, char *out, size_t cap)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return BAD(c, n, LMD_EFORMAT, path, "expected a string, got %s", type_name(n));
    size_t len = n->data.scalar.length;
    if (len == 0)
        return BAD(c, n, LMD_EFORMAT, path, "must not be empty");
    if (len >= cap)
        return BAD(c, n, LMD_ERANGE, path, "longer than %zu bytes", cap - 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = n->data.scalar.value[i];
        if (ch < 0x20 || ch >= 0x7f)
            return BAD(c, n, LMD_EFORMAT, path, "has a control or non-ASCII byte at offset %zu", i);
    }
    memcpy(out, n->data.scalar.value, len);
    out[len] = 0;
    return 0;
}

/* A file path; a relative one is taken from the config file's folder. */
static int get_path(struct cfg *c, const yaml_node_t *n, const char *path, char *out, size_t cap)
{
    char p[SERVE_PATH_MAX];
    int rc = get_str(c, n, path, p, sizeof p);
    if (rc < 0)
        return rc;
    if ((size_t)snprintf(out, cap, "%s%s", p[0] == '/' ? "" : c->dir, p) >= cap)
        return BAD(c, n, LMD_ERANGE, path, "the path (from the config file's folder) is longer than %zu bytes",
                   cap - 1);
    return 0;
}

static int get_id(struct cfg *c, const yaml_node_t *n, const char *path, char *out)
{
    char b[48];
    int rc = get_str(c, n, path, out, SERVE_NAME_MAX);
    if (rc < 0)
        return rc;
    if (!serve_id_valid(out))
        return BAD(c, n, LMD_EFORMAT, path,
                   "'%s' is not a model id: letters, digits and ._:/- only, starting with a letter or digit",
                   shown(n, b));
    return 0;
}

/* ---- sections ---------------------------------------------------------------------- */

/* The settings a model entry and `defaults` share. */
static const char *const model_keys[] = {"threads",           "ctx",       "kv_blocks",     "max_running",
                                         "max_batch_tokens",  "max_queue", "chat_template", "device",
                                         "chat_template_file"};
#define N_MODEL_KEYS 9

static int parse_settings(struct cfg *c, const struct field *f, int nf, const char *path, struct serve_model *m)
{
    char p[160];
    struct {
        const char *key;
        long lo, hi;
        int *dst;
    } nums[] = {
        {"threads", 1, 1024, &m->threads},
        {"ctx", 16, 1 << 20, &m->ctx},
        {"kv_blocks", 1, 1 << 24, &m->kv_blocks},
        {"max_running", 1, 1024, &m->max_running},
        {"max_batch_tokens", 1, 1 << 16, &m->max_batch_tokens},
        {"max_queue", 0, 1 << 20, &m->max_queue},
    };
    int rc;
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        yaml_node_t *v = field(f, nf, nums[i].key);
        sub(p, sizeof p, path, nums[i].key);
        if (v && (rc = get_int(c, v, p, nums[i].lo, nums[i].hi, nums[i].dst)) < 0)
            return rc;
    }
    yaml_node_t *v = field(f, nf, "device");
    if (v) {
        sub(p, sizeof p, path, "device");
        char b[48], name[sizeof m->device];
        enum engine_device dev;
        int gpu;
        bool ok = v->type == YAML_SCALAR_NODE && !is_null(v) && v->data.scalar.length < sizeof name;
        if (ok) {
            memcpy(name, v->data.scalar.value, v->data.scalar.length);
            name[v->data.scalar.length] = 0;
            ok = strlen(name) == v->data.scalar.length && engine_device_parse(name, &dev, &gpu) == 0;
        }
        if (!ok)
            return BAD(c, v, LMD_EFORMAT, p, "expected cpu, cuda, cuda:N or auto, got '%s'",
                       v->type == YAML_SCALAR_NODE ? shown(v, b) : type_name(v));
        memcpy(m->device, name, sizeof name);
    }
    v = field(f, nf, "chat_template");
    if (v) {
        sub(p, sizeof p, path, "chat_template");
        char b[48], name[sizeof m->chat_template];
        enum chat_family fam;
        bool ok = v->type == YAML_SCALAR_NODE && !is_null(v) && v->data.scalar.length < sizeof name;
        if (ok) {
            memcpy(name, v->data.scalar.value, v->data.scalar.length);
            name[v->data.scalar.length] = 0;
            ok = strlen(name) == v->data.scalar.length && chat_family_parse(name, &fam) == 0;
        }
        if (!ok)
            return BAD(c, v, LMD_EFORMAT, p, "expected gemma, llama3, chatml, mistral or generic, got '%s'",
                       v->type == YAML_SCALAR_NODE ? shown(v, b) : type_name(v));
        memcpy(m->chat_template, name, sizeof name);
    }
    v = field(f, nf, "chat_template_file");
    if (v) {
        sub(p, sizeof p, path, "chat_template_file");
        if ((rc = get_path(c, v, p, m->chat_template_file, sizeof m->chat_template_file)) < 0)
            return rc;
    }
    return 0;
}

/* Where an id or alias of the file was first used, to refuse repeats. */
struct seen {
    char name[SERVE_NAME_MAX];
    size_t line;
};

static int parse_model(struct cfg *c, yaml_node_t *map, int idx, struct seen *seen, int *n_seen)
{
    char path[32], p[160], b[48];
    snprintf(path, sizeof path, "models[%d]", idx);
    enum { NR = 4 }; /* the remote engine's keys, last */
    struct field f[N_MODEL_KEYS + 5 + NR] = {
        {.name = "name"}, {.name = "path"}, {.name = "engine"}, {.name = "aliases"}, {.name = "owned_by"}};
    for (int i = 0; i < N_MODEL_KEYS; i++)
        f[5 + i].name = model_keys[i];
    struct field *fr = f + 5 + N_MODEL_KEYS;
    fr[0].name = "upstreams";
    fr[1].name = "upstream_model";
    fr[2].name = "max_inflight";
    fr[3].name = "route";
    int rc = collect(c, map, path, f, N_MODEL_KEYS + 5 + NR);
    if (rc < 0)
        return rc;
    struct serve_config *sc = c->sc;
    if (sc->n_models == SERVE_MAX_MODELS)
        return BAD(c, map, LMD_ERANGE, "models", "more than %d models", SERVE_MAX_MODELS);
    struct serve_model *m = &sc->models[sc->n_models];
    model_init(m);
    m->line = (int)map->start_mark.line + 1;
    if (f[2].val && !scalar_eq(f[2].val, "native") && !scalar_eq(f[2].val, "remote")) {
        sub(p, sizeof p, path, "engine");
        return BAD(c, f[2].val, LMD_ENOTSUP, p, "engine '%s' is not available: expected native or remote",
                   f[2].val->type == YAML_SCALAR_NODE ? shown(f[2].val, b) : type_name(f[2].val));
    }
    bool remote = f[2].val && scalar_eq(f[2].val, "remote");
    if (remote) {
        m->engine = SERVE_ENGINE_REMOTE;
        if (f[1].val) {
            sub(p, sizeof p, path, "path");
            return BAD(c, f[1].val, LMD_EFORMAT, p, "a remote model has no file: it names 'upstreams'");
        }
        if (!f[0].val)
            return BAD(c, map, LMD_EFORMAT, path, "missing key 'name' (a remote model's id)");
        if (!fr[0].val)
            return BAD(c, map, LMD_EFORMAT, path, "missing key 'upstreams' (the servers behind this model)");
        sub(p, sizeof p, path, "upstreams");
        if ((rc = expect(c, fr[0].val, YAML_SEQUENCE_NODE, p)) < 0)
            return rc;
        int nu = seq_len(fr[0].val);
        if (nu < 1 || nu > SERVE_MAX_UPSTREAMS)
            return BAD(c, fr[0].val, LMD_ERANGE, p, "%d upstreams (1 to %d)", nu, SERVE_MAX_UPSTREAMS);
        for (int i = 0; i < nu; i++) {
            yaml_node_t *u = node(c, fr[0].val->data.sequence.items.start[i]);
            char up[96];
            snprintf(up, sizeof up, "%s.upstreams[%d]", path, i);
            yaml_node_t *url = u;
            if (u->type == YAML_MAPPING_NODE) {
                struct field uf[] = {{.name = "url"}, {.name = "max_inflight"}};
                if ((rc = collect(c, u, up, uf, 2)) < 0)
                    return rc;
                if (!uf[0].val)
                    return BAD(c, u, LMD_EFORMAT, up, "missing key 'url'");
                url = uf[0].val;
                char q[128];
                snprintf(q, sizeof q, "%s.max_inflight", up);
                if (uf[1].val && (rc = get_int(c, uf[1].val, q, 1, 4096, &m->upstream_inflight[i])) < 0)
                    return rc;
            }
            if ((rc = get_str(c, url, up, m->upstreams[i], sizeof m->upstreams[i])) < 0)
                return rc;
            enum remote_kind kind;
            char host[256], prefix[128];
            int port;
            struct lmd_err uerr = {0};
            const char *uu = m->upstreams[i];
            if (discovery_is_etcd(uu) ? discovery_etcd_parse(uu, &uerr) != 0
                : discovery_is_dns(uu)
                    ? discovery_dns_parse(uu, host, sizeof host, &port, &uerr) != 0
                    : remote_url_parse(uu, &kind, host, sizeof host, &port, prefix, sizeof prefix, &uerr) != 0)
                return BAD(c, url, LMD_EFORMAT, up, "%s", uerr.msg);
        }
        m->n_upstreams = nu;
        if (fr[1].val) {
            sub(p, sizeof p, path, "upstream_model");
            if ((rc = get_str(c, fr[1].val, p, m->upstream_model, sizeof m->upstream_model)) < 0)
                return rc;
        }
        if (fr[2].val) {
            sub(p, sizeof p, path, "max_inflight");
            if ((rc = get_int(c, fr[2].val, p, 1, 4096, &m->inflight)) < 0)
                return rc;
        }
        if (fr[3].val) {
            sub(p, sizeof p, path, "route");
            static const char *const routes[] = {"ttft", "least", "rr"};
            m->route = -1;
            for (int i = 0; i < 3; i++)
                if (scalar_eq(fr[3].val, routes[i]))
                    m->route = i;
            if (m->route < 0)
                return BAD(c, fr[3].val, LMD_EFORMAT, p, "expected ttft, least or rr");
        }
    } else {
        for (int i = 0; i < NR; i++)
            if (fr[i].val) {
                sub(p, sizeof p, path, fr[i].name);
                return BAD(c, fr[i].val, LMD_EFORMAT, p, "'%s' is for models with engine: remote", fr[i].name);
            }
        if (!f[1].val)
            return BAD(c, map, LMD_EFORMAT, path, "missing key 'path' (the GGUF file)");
        sub(p, sizeof p, path, "path");
        if ((rc = get_path(c, f[1].val, p, m->path, sizeof m->path)) < 0)
            return rc;
    }
    /* The names: every one unique in the file. An unnamed model's id is
     * only known from its path, checked with the others in serve_open. */
    yaml_node_t *names[1 + SERVE_MAX_ALIASES];
    char *dst[1 + SERVE_MAX_ALIASES];
    char npath[1 + SERVE_MAX_ALIASES][64];
    int n_names = 0;
    if (f[0].val) {
        names[n_names] = f[0].val;
        dst[n_names] = m->name;
        sub(npath[n_names++], sizeof npath[0], path, "name");
    }
    if (f[3].val) {
        sub(p, sizeof p, path, "aliases");
        if ((rc = expect(c, f[3].val, YAML_SEQUENCE_NODE, p)) < 0)
            return rc;
        if (seq_len(f[3].val) > SERVE_MAX_ALIASES)
            return BAD(c, f[3].val, LMD_ERANGE, p, "more than %d aliases", SERVE_MAX_ALIASES);
        for (int i = 0; i < seq_len(f[3].val); i++) {
            names[n_names] = node(c, f[3].val->data.sequence.items.start[i]);
            dst[n_names] = m->aliases[i];
            snprintf(npath[n_names++], sizeof npath[0], "%s.aliases[%d]", path, i);
        }
        m->n_aliases = seq_len(f[3].val);
    }
    for (int i = 0; i < n_names; i++) {
        if ((rc = get_id(c, names[i], npath[i], dst[i])) < 0)
            return rc;
        for (int j = 0; j < *n_seen; j++)
            if (strcmp(seen[j].name, dst[i]) == 0)
                return BAD(c, names[i], LMD_EFORMAT, npath[i], "'%s' already names a model (line %zu)", dst[i],
                           seen[j].line);
        snprintf(seen[*n_seen].name, sizeof seen[0].name, "%s", dst[i]);
        seen[(*n_seen)++].line = names[i]->start_mark.line + 1;
    }
    if (f[4].val) {
        sub(p, sizeof p, path, "owned_by");
        if ((rc = get_str(c, f[4].val, p, m->owned_by, sizeof m->owned_by)) < 0)
            return rc;
    }
    if ((rc = parse_settings(c, f + 5, N_MODEL_KEYS, path, m)) < 0)
        return rc;
    sc->n_models++;
    return 0;
}

/* listen.cors_origins: one origin or a list of them; replaces what the
 * config had. */
static int parse_cors(struct cfg *c, yaml_node_t *n)
{
    struct serve_config *sc = c->sc;
    char one[SERVE_ORIGIN_MAX], p[48], b[48];
    bool list = n->type == YAML_SEQUENCE_NODE;
    int count = list ? seq_len(n) : 1;
    if (count > SERVE_MAX_CORS)
        return BAD(c, n, LMD_ERANGE, "listen.cors_origins", "more than %d origins", SERVE_MAX_CORS);
    sc->n_cors_origins = 0;
    for (int i = 0; i < count; i++) {
        yaml_node_t *v = list ? node(c, n->data.sequence.items.start[i]) : n;
        snprintf(p, sizeof p, list ? "listen.cors_origins[%d]" : "listen.cors_origins", i);
        int rc = get_str(c, v, p, one, sizeof one);
        if (rc < 0)
            return rc;
        if (!http_cors_origin_valid(one))
            return BAD(c, v, LMD_EFORMAT, p, "'%s' is not * or scheme://host[:port] (no path, no trailing slash)",
                       shown(v, b));
        snprintf(sc->cors_origins[sc->n_cors_origins++], SERVE_ORIGIN_MAX, "%s", one);
    }
    return 0;
}

int serve_config_add_cors(struct serve_config *c, const char *origin, struct lmd_err *err)
{
    if (strlen(origin) >= SERVE_ORIGIN_MAX || !http_cors_origin_valid(origin))
        return lmd_err_set(err, LMD_EINVAL,
                           "--cors-origin '%.80s' is not * or scheme://host[:port] (no path, no trailing slash)",
                           origin);
    if (c->n_cors_origins == SERVE_MAX_CORS)
        return lmd_err_set(err, LMD_ERANGE, "more than %d --cors-origin values", SERVE_MAX_CORS);
    snprintf(c->cors_origins[c->n_cors_origins++], SERVE_ORIGIN_MAX, "%s", origin);
    return 0;
}

static int parse_listen(struct cfg *c, yaml_node_t *map)
{
    struct field f[] = {
        {.name = "host"},        {.name = "port"},     {.name = "io_threads"},      {.name = "tls_cert"},
        {.name = "tls_key"},     {.name = "max_body"}, {.name = "stall_timeout_s"}, {.name = "cors_origins"},
        {.name = "prep_threads"}};
    int rc = collect(c, map, "listen", f, 9);
    struct serve_config *sc = c->sc;
    if (rc == 0 && f[0].val)
        rc = get_str(c, f[0].val, "listen.host", sc->host, sizeof sc->host);
    if (rc == 0 && f[1].val)
        rc = get_int(c, f[1].val, "listen.port", 0, 65535, &sc->port);
    if (rc == 0 && f[2].val)
        rc = get_int(c, f[2].val, "listen.io_threads", 1, 64, &sc->io_threads);
    if (rc == 0 && f[3].val)
        rc = get_path(c, f[3].val, "listen.tls_cert", sc->tls_cert, sizeof sc->tls_cert);
    if (rc == 0 && f[4].val)
        rc = get_path(c, f[4].val, "listen.tls_key", sc->tls_key, sizeof sc->tls_key);
    if (rc == 0 && f[5].val)
        rc = get_long(c, f[5].val, "listen.max_body", 1024, 1L << 30, &sc->max_body);
    if (rc == 0 && f[6].val)
        rc = get_long(c, f[6].val, "listen.stall_timeout_s", 0, 86400, &sc->stall_s);
    if (rc == 0 && f[7].val)
        rc = parse_cors(c, f[7].val);
    if (rc == 0 && f[8].val)
        rc = get_int(c, f[8].val, "listen.prep_threads", 1, API_PREP_THREADS_MAX, &sc->prep_threads);
    return rc;
}

static int parse_root(struct cfg *c)
{
    yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    if (!root)
        return lmd_err_set(c->err, LMD_EFORMAT, "%s:1:1: the file is empty (expected a mapping with 'models')",
                           c->file);
    struct field f[] = {{.name = "listen"},          {.name = "tenants"},
                        {.name = "scheduler"},       {.name = "metrics"},
                        {.name = "debug_endpoints"}, {.name = "drain_timeout_s"},
                        {.name = "defaults"},        {.name = "models"},
                        {.name = "prefix_cache"},    {.name = "prefix_cache_shared"},
                        {.name = "metrics_compat"},  {.name = "priority_map"}};
    int rc = collect(c, root, "", f, 12);
    if (rc < 0)
        return rc;
    struct serve_config *sc = c->sc;
    if (f[0].val && (rc = parse_listen(c, f[0].val)) < 0)
        return rc;
    if (f[1].val && (rc = get_path(c, f[1].val, "tenants", sc->tenants, sizeof sc->tenants)) < 0)
        return rc;
    if (f[2].val) {
        struct field s[] = {{.name = "policy"}};
        if ((rc = collect(c, f[2].val, "scheduler", s, 1)) < 0)
            return rc;
        if (s[0].val) {
            char b[48];
            if (scalar_eq(s[0].val, "sla"))
                sc->policy = SCHED_POLICY_SLA;
            else if (scalar_eq(s[0].val, "fcfs"))
                sc->policy = SCHED_POLICY_FCFS;
            else
                return BAD(c, s[0].val, LMD_EFORMAT, "scheduler.policy", "expected sla or fcfs, got '%s'",
                           s[0].val->type == YAML_SCALAR_NODE ? shown(s[0].val, b) : type_name(s[0].val));
        }
    }
    if (f[10].val) {
        if (!scalar_eq(f[10].val, "vllm") && !scalar_eq(f[10].val, "none"))
            return BAD(c, f[10].val, LMD_EFORMAT, "metrics_compat", "expected vllm or none");
        sc->metrics_compat = scalar_eq(f[10].val, "vllm") ? SERVE_COMPAT_VLLM : SERVE_COMPAT_NONE;
    }
    if (f[11].val && (rc = get_str(c, f[11].val, "priority_map", sc->priority_map, sizeof sc->priority_map)) < 0)
        return rc;
    if (f[3].val && (rc = get_bool(c, f[3].val, "metrics", &sc->metrics)) < 0)
        return rc;
    if (f[4].val && (rc = get_bool(c, f[4].val, "debug_endpoints", &sc->debug)) < 0)
        return rc;
    if (f[5].val && (rc = get_long(c, f[5].val, "drain_timeout_s", 0, 86400, &sc->drain_s)) < 0)
        return rc;
    if (f[8].val && (rc = get_bool(c, f[8].val, "prefix_cache", &sc->prefix_cache)) < 0)
        return rc;
    if (f[9].val && (rc = get_bool(c, f[9].val, "prefix_cache_shared", &sc->prefix_cache_shared)) < 0)
        return rc;
    if (f[6].val) {
        struct field d[N_MODEL_KEYS];
        for (int i = 0; i < N_MODEL_KEYS; i++)
            d[i] = (struct field){.name = model_keys[i]};
        if ((rc = collect(c, f[6].val, "defaults", d, N_MODEL_KEYS)) < 0 ||
            (rc = parse_settings(c, d, N_MODEL_KEYS, "defaults", &sc->defaults)) < 0)
            return rc;
        for (int k = 0; k < N_MODEL_KEYS; k++)
            sc->ctx_given |= d[k].val && strcmp(d[k].name, "ctx") == 0;
    }
    if (f[7].val) {
        if ((rc = expect(c, f[7].val, YAML_SEQUENCE_NODE, "models")) < 0)
            return rc;
        if (seq_len(f[7].val) == 0)
            return BAD(c, f[7].val, LMD_EFORMAT, "models", "needs at least one model (or leave the key out)");
        if (seq_len(f[7].val) > SERVE_MAX_MODELS)
            return BAD(c, f[7].val, LMD_ERANGE, "models", "more than %d models", SERVE_MAX_MODELS);
        struct seen seen[SERVE_MAX_MODELS * (1 + SERVE_MAX_ALIASES)];
        int n_seen = 0;
        for (int i = 0; i < seq_len(f[7].val); i++)
            if ((rc = parse_model(c, node(c, f[7].val->data.sequence.items.start[i]), i, seen, &n_seen)) < 0)
                return rc;
    }
    return 0;
}

/* ---- the file ---------------------------------------------------------------------- */

/* Line and column (0-based) of a byte offset: libyaml reports reader
 * errors (bad UTF-8) as an offset only. */
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
        return bad_at(c, m, LMD_EFORMAT, NULL, "YAML syntax error: %s %s (line %zu)", problem, p->context,
                      p->context_mark.line + 1);
    return bad_at(c, m, LMD_EFORMAT, NULL, "YAML syntax error: %s", problem);
}

/* The first pass: syntax, one document, no aliases, bounded nesting. */
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
        if (ev.type == YAML_STREAM_END_EVENT)
            done = true;
        else if (ev.type == YAML_ALIAS_EVENT)
            rc = bad_at(c, ev.start_mark, LMD_EFORMAT, NULL, "YAML aliases (*name) are not supported here");
        else if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1)
            rc = bad_at(c, ev.start_mark, LMD_EFORMAT, NULL, "only one YAML document is allowed");
        else if ((ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) && ++depth > MAX_DEPTH)
            rc = bad_at(c, ev.start_mark, LMD_EFORMAT, NULL, "nested deeper than %d levels", MAX_DEPTH);
        else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT)
            depth--;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return rc;
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
    unsigned char *buf = malloc((size_t)st.st_size + 1);
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
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

int serve_config_load_buffer(struct serve_config *sc, const char *name, const void *text, size_t len,
                             struct lmd_err *err)
{
    if (len > MAX_FILE_BYTES)
        return lmd_err_set(err, LMD_ERANGE, "%s: larger than %d bytes", name, MAX_FILE_BYTES);
    struct cfg c = {.sc = sc, .file = name, .text = text, .len = len, .err = err};
    const char *slash = strrchr(name, '/');
    if (slash && (size_t)(slash - name + 1) < sizeof c.dir)
        snprintf(c.dir, sizeof c.dir, "%.*s", (int)(slash - name + 1), name);
    snprintf(sc->file, sizeof sc->file, "%s", name);
    int rc = prescan(&c);
    if (rc != 0)
        return rc;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", name);
    yaml_parser_set_input_string(&p, c.text, c.len);
    if (!yaml_parser_load(&p, &c.doc)) {
        rc = syntax_error(&c, &p);
    } else {
        rc = parse_root(&c);
        yaml_document_delete(&c.doc);
    }
    yaml_parser_delete(&p);
    return rc;
}

int serve_config_load(struct serve_config *sc, const char *path, struct lmd_err *err)
{
    unsigned char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err);
    if (rc < 0)
        return rc;
    rc = serve_config_load_buffer(sc, path, text, len, err);
    free(text);
    return rc;
}
