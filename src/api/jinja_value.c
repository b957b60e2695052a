/*
 * Jinja values with Python's semantics, since the templates were written
 * against Python: truthiness, equality (1 == 1.0 == True, dicts equal in any
 * order), ordering, str() and repr() (a list prints as "['a', 1]", a float
 * as its shortest round-trip form), and json.dumps for the tojson filter.
 * Also the bridge from a JSON document (jansson) to values.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jinja__append(struct jctx *x, struct lmd_buf *b, const char *s, size_t n)
{
    if (!n)
        return;
    if (b == x->out && b->len + n > x->max_output)
        jinja__fail_code(x, LMD_ERANGE, 0, 0, "the rendering is longer than %zu bytes", x->max_output);
    if (lmd_buf_append(b, s, n) != 0)
        jinja__fail_code(x, LMD_ENOMEM, 0, 0, "out of memory");
    /* A buffer growing inside the arena is working memory too. */
    if (x->arena->bytes > x->max_memory)
        jinja__fail_code(x, LMD_ERANGE, 0, 0, "rendering needs more than %zu bytes of memory", x->max_memory);
}

static void puts_(struct jctx *x, struct lmd_buf *b, const char *s) { jinja__append(x, b, s, strlen(s)); }

const char *jv_type_name(const struct jv *v)
{
    switch ((enum jv_type)v->type) {
    case JV_UNDEF:
        return "Undefined";
    case JV_NONE:
        return "NoneType";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_FLOAT:
        return "float";
    case JV_STR:
        return "str";
    case JV_LIST:
        return v->tuple ? "tuple" : "list";
    case JV_DICT:
        return "dict";
    case JV_NS:
        return "Namespace";
    case JV_LOOP:
        return "LoopContext";
    case JV_FUNC:
    case JV_METHOD:
        return "builtin_function_or_method";
    case JV_MACRO:
        return "Macro";
    }
    return "object";
}

bool jv_truthy(const struct jv *v)
{
    switch ((enum jv_type)v->type) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v->u.b;
    case JV_INT:
        return v->u.i != 0;
    case JV_FLOAT:
        return v->u.f != 0.0;
    case JV_STR:
        return v->u.str.n != 0;
    case JV_LIST:
        return v->u.list->n != 0;
    case JV_DICT:
        return v->u.dict->n != 0;
    default:
        return true;
    }
}

bool jv_equal(const struct jv *a, const struct jv *b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a->type != JV_FLOAT && b->type != JV_FLOAT)
            return jv_inum(a) == jv_inum(b);
        return jv_num(a) == jv_num(b);
    }
    if (a->type != b->type)
        return false;
    switch ((enum jv_type)a->type) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a->u.str.n == b->u.str.n && memcmp(a->u.str.s, b->u.str.s, a->u.str.n) == 0;
    case JV_LIST:
        if (a->tuple != b->tuple || a->u.list->n != b->u.list->n)
            return false;
        for (size_t i = 0; i < a->u.list->n; i++)
            if (!jv_equal(&a->u.list->items[i], &b->u.list->items[i]))
                return false;
        return true;
    case JV_DICT:
        if (a->u.dict->n != b->u.dict->n)
            return false;
        for (size_t i = 0; i < a->u.dict->n; i++) {
            const struct jv *o = jv_dict_get(b->u.dict, &a->u.dict->keys[i]);
            if (!o || !jv_equal(&a->u.dict->vals[i], o))
                return false;
        }
        return true;
    case JV_NS:
        return a->u.dict == b->u.dict;
    case JV_LOOP:
        return a->u.loop == b->u.loop;
    case JV_FUNC:
        return a->fn == b->fn;
    case JV_METHOD:
        return a->fn == b->fn && a->u.self == b->u.self;
    case JV_MACRO:
        return a->u.macro == b->u.macro;
    default:
        return false;
    }
}

int jv_compare(struct jctx *x, const struct jnode *at, const struct jv *a, const struct jv *b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a->type != JV_FLOAT && b->type != JV_FLOAT)
            return jv_inum(a) < jv_inum(b) ? -1 : jv_inum(a) > jv_inum(b);
        double p = jv_num(a), q = jv_num(b);
        return p < q ? -1 : p > q;
    }
    if (a->type == JV_STR && b->type == JV_STR) {
        /* UTF-8 byte order is code point order, which is Python's. */
        size_t n = a->u.str.n < b->u.str.n ? a->u.str.n : b->u.str.n;
        int c = memcmp(a->u.str.s, b->u.str.s, n);
        if (c)
            return c < 0 ? -1 : 1;
        return a->u.str.n < b->u.str.n ? -1 : a->u.str.n > b->u.str.n;
    }
    if (a->type == JV_LIST && b->type == JV_LIST && a->tuple == b->tuple) {
        size_t n = a->u.list->n < b->u.list->n ? a->u.list->n : b->u.list->n;
        for (size_t i = 0; i < n; i++) {
            if (!jv_equal(&a->u.list->items[i], &b->u.list->items[i]))
                return jv_compare(x, at, &a->u.list->items[i], &b->u.list->items[i]);
        }
        return a->u.list->n < b->u.list->n ? -1 : a->u.list->n > b->u.list->n;
    }
    jinja__fail(x, at->line, at->col, "cannot order %s and %s", jv_type_name(a), jv_type_name(b));
}

/* ---- UTF-8 ------------------------------------------------------------------- */

size_t jv_utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            k++;
    return k;
}

size_t jv_utf8_offset(const char *s, size_t n, size_t i)
{
    size_t k = 0;
    for (size_t p = 0; p < n; p++) {
        if (((unsigned char)s[p] & 0xc0) != 0x80) {
            if (k == i)
                return p;
            k++;
        }
    }
    return n;
}

/* The code point at s[*i], advancing *i; invalid bytes come as themselves. */
static unsigned long utf8_next(const char *s, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)s[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (*i + (size_t)len > n)
        len = 1;
    unsigned long cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | ((unsigned char)s[*i + (size_t)k] & 0x3f);
    *i += (size_t)len;
    return cp;
}

/* ---- str() and repr() ---------------------------------------------------------- */

/* Python's repr of a float: the shortest digits that read back the same,
 * positional between 1e-4 and 1e16, else with an exponent. */
static void float_repr(double d, char *out, size_t cap, bool json)
{
    if (isnan(d)) {
        snprintf(out, cap, "%s", json ? "NaN" : "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, "%s%s", d < 0 ? "-" : "", json ? "Infinity" : "inf");
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    /* buf: [-]d[.ddd]e(+|-)XX */
    char digits[24];
    int nd = 0;
    const char *q = buf;
    bool neg = *q == '-';
    if (neg)
        q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.' && nd < 20)
            digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    size_t o = 0;
    char *w = out;
#define PUT(c)                                                                                                         \
    do {                                                                                                               \
        if (o + 1 < cap)                                                                                               \
            w[o++] = (c);                                                                                              \
    } while (0)
    if (neg)
        PUT('-');
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int i = 0; i <= e; i++)
                PUT(i < nd ? digits[i] : '0');
            PUT('.');
            if (nd > e + 1)
                for (int i = e + 1; i < nd; i++)
                    PUT(digits[i]);
            else
                PUT('0');
        } else {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -e - 1; i++)
                PUT('0');
            for (int i = 0; i < nd; i++)
                PUT(digits[i]);
        }
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
        for (char *c = ex; *c; c++)
            PUT(*c);
    }
#undef PUT
    out[o] = 0;
}

static void write_str_repr(struct jctx *x, struct lmd_buf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    jinja__append(x, b, &quote, 1);
    size_t i = 0, run = 0;
    while (i < n) {
        size_t start = i;
        unsigned long cp = utf8_next(s, n, &i);
        char esc[12];
        esc[0] = 0;
        if (cp == (unsigned char)quote || cp == '\\')
            snprintf(esc, sizeof esc, "\\%c", (char)cp);
        else if (cp == '\n')
            snprintf(esc, sizeof esc, "\\n");
        else if (cp == '\r')
            snprintf(esc, sizeof esc, "\\r");
        else if (cp == '\t')
            snprintf(esc, sizeof esc, "\\t");
        else if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad)
            snprintf(esc, sizeof esc, "\\x%02lx", cp);
        else if (cp == 0x2028 || cp == 0x2029)
            snprintf(esc, sizeof esc, "\\u%04lx", cp);
        if (esc[0]) {
            jinja__append(x, b, s + run, start - run);
            puts_(x, b, esc);
            run = i;
        }
    }
    jinja__append(x, b, s + run, n - run);
    jinja__append(x, b, &quote, 1);
}

static void write_repr(struct jctx *x, struct lmd_buf *b, const struct jv *v, int depth)
{
    if (depth > 64)
        jinja__fail(x, 0, 0, "a value nests deeper than 64 levels");
    char tmp[48];
    switch ((enum jv_type)v->type) {
    case JV_STR:
        write_str_repr(x, b, v->u.str.s, v->u.str.n);
        return;
    case JV_LIST: {
        puts_(x, b, v->tuple ? "(" : "[");
        for (size_t i = 0; i < v->u.list->n; i++) {
            if (i)
                puts_(x, b, ", ");
            write_repr(x, b, &v->u.list->items[i], depth + 1);
        }
        if (v->tuple && v->u.list->n == 1)
            puts_(x, b, ",");
        puts_(x, b, v->tuple ? ")" : "]");
        return;
    }
    case JV_DICT:
    case JV_NS: {
        if (v->type == JV_NS)
            puts_(x, b, "<Namespace ");
        puts_(x, b, "{");
        for (size_t i = 0; i < v->u.dict->n; i++) {
            if (i)
                puts_(x, b, ", ");
            write_repr(x, b, &v->u.dict->keys[i], depth + 1);
            puts_(x, b, ": ");
            write_repr(x, b, &v->u.dict->vals[i], depth + 1);
        }
        puts_(x, b, "}");
        if (v->type == JV_NS)
            puts_(x, b, ">");
        return;
    }
    case JV_UNDEF:
        return;
    case JV_NONE:
        puts_(x, b, "None");
        return;
    case JV_BOOL:
        puts_(x, b, v->u.b ? "True" : "False");
        return;
    case JV_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v->u.i);
        puts_(x, b, tmp);
        return;
    case JV_FLOAT:
        float_repr(v->u.f, tmp, sizeof tmp, false);
        puts_(x, b, tmp);
        return;
    default:
        snprintf(tmp, sizeof tmp, "<%s>", jv_type_name(v));
        puts_(x, b, tmp);
        return;
    }
}

void jv_write_str(struct jctx *x, struct lmd_buf *b, const struct jv *v)
{
    if (v->type == JV_STR)
        jinja__append(x, b, v->u.str.s, v->u.str.n);
    else
        write_repr(x, b, v, 0);
}

struct jv jv_to_str(struct jctx *x, const struct jv *v)
{
    if (v->type == JV_STR)
        return *v;
    struct lmd_buf b = {.arena = x->arena};
    jv_write_str(x, &b, v);
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

/* ---- json.dumps ------------------------------------------------------------------- */

static void write_json_str(struct jctx *x, struct lmd_buf *b, const char *s, size_t n)
{
    puts_(x, b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        jinja__append(x, b, s + run, i - run);
        char esc[8];
        switch (c) {
        case '"':
            puts_(x, b, "\\\"");
            break;
        case '\\':
            puts_(x, b, "\\\\");
            break;
        case '\n':
            puts_(x, b, "\\n");
            break;
        case '\r':
            puts_(x, b, "\\r");
            break;
        case '\t':
            puts_(x, b, "\\t");
            break;
        case '\b':
            puts_(x, b, "\\b");
            break;
        case '\f':
            puts_(x, b, "\\f");
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            puts_(x, b, esc);
        }
        run = i + 1;
    }
    jinja__append(x, b, s + run, n - run);
    puts_(x, b, "\"");
}

struct json_opts {
    int indent;
    const char *item_sep, *key_sep;
    bool sort_keys;
    const struct jnode *at;
};

static void newline_indent(struct jctx *x, struct lmd_buf *b, const struct json_opts *o, int level)
{
    puts_(x, b, "\n");
    for (int i = 0; i < o->indent * level; i++)
        puts_(x, b, " ");
}

/* A dict key as json.dumps writes it: strings as they are; numbers, bools
 * and None by their JSON spelling. */
static void write_json_key(struct jctx *x, struct lmd_buf *b, const struct json_opts *o, const struct jv *k)
{
    char tmp[48];
    switch (k->type) {
    case JV_STR:
        write_json_str(x, b, k->u.str.s, k->u.str.n);
        return;
    case JV_INT:
        snprintf(tmp, sizeof tmp, "\"%lld\"", (long long)k->u.i);
        break;
    case JV_FLOAT: {
        char f[40];
        float_repr(k->u.f, f, sizeof f, true);
        snprintf(tmp, sizeof tmp, "\"%s\"", f);
        break;
    }
    case JV_BOOL:
        snprintf(tmp, sizeof tmp, "\"%s\"", k->u.b ? "true" : "false");
        break;
    case JV_NONE:
        snprintf(tmp, sizeof tmp, "\"null\"");
        break;
    default:
        jinja__fail(x, o->at->line, o->at->col, "keys must be str, int, float, bool or None, not %s", jv_type_name(k));
    }
    puts_(x, b, tmp);
}

static int key_cmp(const void *a, const void *b)
{
    const struct jv *p = *(const struct jv *const *)a, *q = *(const struct jv *const *)b;
    size_t n = p->u.str.n < q->u.str.n ? p->u.str.n : q->u.str.n;
    int c = memcmp(p->u.str.s, q->u.str.s, n);
    return c ? c : (p->u.str.n > q->u.str.n) - (p->u.str.n < q->u.str.n);
}

static void write_json(struct jctx *x, struct lmd_buf *b, const struct jv *v, const struct json_opts *o, int level)
{
    if (level > 64)
        jinja__fail(x, o->at->line, o->at->col, "a value nests deeper than 64 levels");
    char tmp[48];
    switch ((enum jv_type)v->type) {
    case JV_NONE:
        puts_(x, b, "null");
        return;
    case JV_BOOL:
        puts_(x, b, v->u.b ? "true" : "false");
        return;
    case JV_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v->u.i);
        puts_(x, b, tmp);
        return;
    case JV_FLOAT:
        float_repr(v->u.f, tmp, sizeof tmp, true);
        puts_(x, b, tmp);
        return;
    case JV_STR:
        write_json_str(x, b, v->u.str.s, v->u.str.n);
        return;
    case JV_LIST: {
        if (!v->u.list->n) {
            puts_(x, b, "[]");
            return;
        }
        puts_(x, b, "[");
        for (size_t i = 0; i < v->u.list->n; i++) {
            if (i)
                puts_(x, b, o->item_sep);
            if (o->indent >= 0)
                newline_indent(x, b, o, level + 1);
            write_json(x, b, &v->u.list->items[i], o, level + 1);
        }
        if (o->indent >= 0)
            newline_indent(x, b, o, level);
        puts_(x, b, "]");
        return;
    }
    case JV_DICT: {
        const struct jv_dict *d = v->u.dict;
        if (!d->n) {
            puts_(x, b, "{}");
            return;
        }
        /* The order to write: as inserted, or by key. */
        const struct jv **order = jinja__alloc(x, d->n * sizeof *order);
        for (size_t i = 0; i < d->n; i++)
            order[i] = &d->keys[i];
        if (o->sort_keys) {
            for (size_t i = 0; i < d->n; i++)
                if (d->keys[i].type != JV_STR)
                    jinja__fail(x, o->at->line, o->at->col, "sort_keys needs string keys");
            qsort(order, d->n, sizeof *order, key_cmp);
        }
        puts_(x, b, "{");
        for (size_t i = 0; i < d->n; i++) {
            if (i)
                puts_(x, b, o->item_sep);
            if (o->indent >= 0)
                newline_indent(x, b, o, level + 1);
            write_json_key(x, b, o, order[i]);
            puts_(x, b, o->key_sep);
            write_json(x, b, &d->vals[order[i] - d->keys], o, level + 1);
        }
        if (o->indent >= 0)
            newline_indent(x, b, o, level);
        puts_(x, b, "}");
        return;
    }
    default:
        jinja__fail(x, o->at->line, o->at->col, "Object of type %s is not JSON serializable", jv_type_name(v));
    }
}

void jv_write_json(struct jctx *x, const struct jnode *at, struct lmd_buf *b, const struct jv *v, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys)
{
    struct json_opts o = {.indent = indent,
                          .item_sep = item_sep      ? item_sep
                                      : indent >= 0 ? ","
                                                    : ", ",
                          .key_sep = key_sep ? key_sep : ": ",
                          .sort_keys = sort_keys,
                          .at = at};
    write_json(x, b, v, &o, 0);
}

/* ---- containers ---------------------------------------------------------------------- */

struct jv jv_list_new(struct jctx *x, size_t n)
{
    struct jv_list *l = jinja__alloc(x, sizeof *l);
    l->items = jinja__alloc(x, (n ? n : 1) * sizeof *l->items);
    for (size_t i = 0; i < n; i++)
        l->items[i] = jv_none();
    l->n = n;
    return (struct jv){.type = JV_LIST, .u.list = l};
}

struct jv jv_dict_new(struct jctx *x, size_t cap)
{
    struct jv_dict *d = jinja__alloc(x, sizeof *d);
    d->cap = cap ? cap : 4;
    d->n = 0;
    d->keys = jinja__alloc(x, d->cap * sizeof *d->keys);
    d->vals = jinja__alloc(x, d->cap * sizeof *d->vals);
    return (struct jv){.type = JV_DICT, .u.dict = d};
}

struct jv *jv_dict_get(const struct jv_dict *d, const struct jv *key)
{
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(&d->keys[i], key))
            return &d->vals[i];
    return NULL;
}

struct jv *jv_dict_get_str(const struct jv_dict *d, const char *s, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].type == JV_STR && d->keys[i].u.str.n == n && memcmp(d->keys[i].u.str.s, s, n) == 0)
            return &d->vals[i];
    return NULL;
}

void jv_dict_set(struct jctx *x, struct jv_dict *d, struct jv key, struct jv val)
{
    struct jv *old = jv_dict_get(d, &key);
    if (old) {
        *old = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        struct jv *k = jinja__alloc(x, cap * sizeof *k), *v = jinja__alloc(x, cap * sizeof *v);
        memcpy(k, d->keys, d->n * sizeof *k);
        memcpy(v, d->vals, d->n * sizeof *v);
        d->keys = k;
        d->vals = v;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
}

static struct jv from_json(struct jctx *x, const json_t *j, int depth)
{
    if (depth > 64)
        jinja__fail(x, 0, 0, "the variables nest deeper than 64 levels");
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        struct jv d = jv_dict_new(x, json_object_size(j));
        const char *k;
        json_t *v;
        /* Keys of a JSON object are unique already: append without a lookup. */
        json_object_foreach((json_t *)j, k, v)
        {
            struct jv_dict *dd = d.u.dict;
            dd->keys[dd->n] = jv_str(k, strlen(k));
            dd->vals[dd->n] = from_json(x, v, depth + 1);
            dd->n++;
        }
        return d;
    }
    case JSON_ARRAY: {
        struct jv l = jv_list_new(x, json_array_size(j));
        for (size_t i = 0; i < l.u.list->n; i++)
            l.u.list->items[i] = from_json(x, json_array_get(j, i), depth + 1);
        return l;
    }
    case JSON_STRING:
        return jv_str(json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return jv_int((int64_t)json_integer_value(j));
    case JSON_REAL:
        return jv_float(json_real_value(j));
    case JSON_TRUE:
        return jv_bool(true);
    case JSON_FALSE:
        return jv_bool(false);
    default:
        return jv_none();
    }
}

struct jv jv_from_json(struct jctx *x, const struct json_t *j) { return from_json(x, (const json_t *)j, 0); }
