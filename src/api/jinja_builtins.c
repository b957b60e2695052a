/*
 * The global functions of the Jinja engine (range, namespace, dict,
 * raise_exception, strftime_now) and the methods templates call on
 * strings, dicts and lists (s.strip(), d.items(), xs.index(x) …), with
 * the argument helpers the filters share.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    /* global functions */
    F_RANGE,
    F_NAMESPACE,
    F_DICT,
    F_RAISE,
    F_STRFTIME,
    /* string methods */
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_SPLIT,
    M_STARTSWITH,
    M_ENDSWITH,
    M_LOWER,
    M_UPPER,
    M_REPLACE,
    M_TITLE,
    M_CAPITALIZE,
    M_FIND,
    M_STR_COUNT,
    M_JOIN,
    /* dict methods */
    M_GET,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    /* list methods */
    M_INDEX,
    M_LIST_COUNT,
};

int jinja__func_lookup(const char *name, size_t n)
{
    if (jinja__name_is(name, n, "range"))
        return F_RANGE;
    if (jinja__name_is(name, n, "namespace"))
        return F_NAMESPACE;
    if (jinja__name_is(name, n, "dict"))
        return F_DICT;
    if (jinja__name_is(name, n, "raise_exception"))
        return F_RAISE;
    if (jinja__name_is(name, n, "strftime_now"))
        return F_STRFTIME;
    return -1;
}

int jinja__method_lookup(const struct jv *self, const char *name, size_t n)
{
    static const struct {
        const char *name;
        int fn;
    } str_methods[] = {{"strip", M_STRIP},           {"lstrip", M_LSTRIP},
                       {"rstrip", M_RSTRIP},         {"split", M_SPLIT},
                       {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH},
                       {"lower", M_LOWER},           {"upper", M_UPPER},
                       {"replace", M_REPLACE},       {"title", M_TITLE},
                       {"capitalize", M_CAPITALIZE}, {"find", M_FIND},
                       {"count", M_STR_COUNT},       {"join", M_JOIN}},
      dict_methods[] = {{"get", M_GET}, {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES}},
      list_methods[] = {{"index", M_INDEX}, {"count", M_LIST_COUNT}};
#define FIND(table)                                                                                                    \
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)                                                        \
        if (jinja__name_is(name, n, table[i].name))                                                                    \
            return table[i].fn;                                                                                        \
    return -1
    switch (self->type) {
    case JV_STR:
        FIND(str_methods);
    case JV_DICT:
        FIND(dict_methods);
    case JV_LIST:
        FIND(list_methods);
    default:
        return -1;
    }
#undef FIND
}
/* ---- argument helpers ------------------------------------------------------------ */

/* Argument i by position, else by keyword name, else NULL. */
const struct jv *jinja__arg(const struct jinja_args *a, int i, const char *name)
{
    if (i >= 0 && i < a->n_pos)
        return &a->pos[i];
    for (int k = 0; name && k < a->n_kw; k++)
        if (jinja__name_is(a->kw[k], a->kw_len[k], name))
            return &a->kwv[k];
    return NULL;
}

void jinja__max_args(struct jctx *x, const struct jnode *at, const struct jinja_args *a, int n, const char *what)
{
    if (a->n_pos > n)
        jinja__fail(x, at->line, at->col, "%s takes at most %d positional arguments, %d given", what, n, a->n_pos);
}

const struct jv *jinja__need_str(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what)
{
    if (!v || v->type != JV_STR)
        jinja__fail(x, at->line, at->col, "%s needs a string, not %s", what, v ? jv_type_name(v) : "nothing");
    return v;
}

int64_t jinja__need_int(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what)
{
    if (!v || (v->type != JV_INT && v->type != JV_BOOL))
        jinja__fail(x, at->line, at->col, "%s needs an integer, not %s", what, v ? jv_type_name(v) : "nothing");
    return v->type == JV_INT ? v->u.i : v->u.b;
}

struct jv jinja__copy_str(struct jctx *x, const char *s, size_t n)
{
    char *p = jinja__alloc(x, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return jv_str(p, n);
}

/* ---- functions and methods ---------------------------------------------------------- */

struct jv jinja__list_copy(struct jctx *x, const struct jv_list *l)
{
    struct jv r = jv_list_new(x, l->n);
    if (l->n)
        memcpy(r.u.list->items, l->items, l->n * sizeof(struct jv));
    return r;
}

struct jv jinja__dict_items(struct jctx *x, const struct jv_dict *d)
{
    struct jv r = jv_list_new(x, d->n);
    for (size_t i = 0; i < d->n; i++) {
        struct jv t = jv_list_new(x, 2);
        t.tuple = 1;
        t.u.list->items[0] = d->keys[i];
        t.u.list->items[1] = d->vals[i];
        r.u.list->items[i] = t;
    }
    return r;
}

struct jv jinja__call_builtin(struct jctx *x, const struct jnode *at, int fn, const struct jv *self,
                              const struct jinja_args *a)
{
    switch (fn) {
    case F_RANGE: {
        jinja__max_args(x, at, a, 3, "range");
        if (a->n_pos == 0)
            jinja__fail(x, at->line, at->col, "range expected at least 1 argument");
        int64_t start = 0, stop, stride = 1;
        if (a->n_pos == 1) {
            stop = jinja__need_int(x, at, &a->pos[0], "range");
        } else {
            start = jinja__need_int(x, at, &a->pos[0], "range");
            stop = jinja__need_int(x, at, &a->pos[1], "range");
            if (a->n_pos == 3)
                stride = jinja__need_int(x, at, &a->pos[2], "range");
        }
        if (stride == 0)
            jinja__fail(x, at->line, at->col, "range() arg 3 must not be zero");
        double count = stride > 0 ? ceil(((double)stop - (double)start) / (double)stride)
                                  : ceil(((double)start - (double)stop) / -(double)stride);
        if (count < 0)
            count = 0;
        if (count > (double)(x->max_steps - x->steps) || count > 1e7)
            jinja__fail_code(x, LMD_ERANGE, at->line, at->col, "range of %.0f items is too long", count);
        struct jv r = jv_list_new(x, (size_t)count);
        for (size_t i = 0; i < (size_t)count; i++)
            r.u.list->items[i] = jv_int(start + (int64_t)i * stride);
        return r;
    }
    case F_NAMESPACE:
    case F_DICT: {
        struct jv d = jv_dict_new(x, (size_t)a->n_kw + 4);
        if (a->n_pos > 1)
            jinja__fail(x, at->line, at->col, "%s takes at most one positional argument",
                        fn == F_DICT ? "dict" : "namespace");
        if (a->n_pos == 1) {
            if (a->pos[0].type != JV_DICT)
                jinja__fail(x, at->line, at->col, "%s needs a dict, not %s", fn == F_DICT ? "dict" : "namespace",
                            jv_type_name(&a->pos[0]));
            for (size_t i = 0; i < a->pos[0].u.dict->n; i++)
                jv_dict_set(x, d.u.dict, a->pos[0].u.dict->keys[i], a->pos[0].u.dict->vals[i]);
        }
        for (int k = 0; k < a->n_kw; k++)
            jv_dict_set(x, d.u.dict, jv_str(a->kw[k], a->kw_len[k]), a->kwv[k]);
        if (fn == F_NAMESPACE)
            d.type = JV_NS;
        return d;
    }
    case F_RAISE: {
        struct lmd_buf b = {.arena = x->arena};
        if (a->n_pos)
            jv_write_str(x, &b, &a->pos[0]);
        /* The message becomes the client's error text: NUL bytes (which
         * would cut it short, to nothing when it starts with one) are
         * left out, and an empty message is said to be one. */
        size_t n = 0;
        for (size_t i = 0; i < b.len; i++)
            if (b.ptr[i] != '\0')
                b.ptr[n++] = b.ptr[i];
        x->err->raised = true;
        if (n == 0)
            jinja__fail(x, at->line, at->col, "the template raised an exception without a message");
        jinja__fail(x, at->line, at->col, "%.*s", (int)n, b.ptr);
    }
    case F_STRFTIME: {
        const struct jv *f = jinja__need_str(x, at, jinja__arg(a, 0, "format"), "strftime_now");
        time_t now = x->now ? (time_t)x->now : time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        char fmt[128], out[256];
        if (f->u.str.n >= sizeof fmt)
            jinja__fail(x, at->line, at->col, "strftime_now: format too long");
        memcpy(fmt, f->u.str.s, f->u.str.n);
        fmt[f->u.str.n] = 0;
        size_t n = strftime(out, sizeof out, fmt, &tm);
        return jinja__copy_str(x, out, n);
    }
    default:
        break;
    }
    /* Methods. */
    switch (fn) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        jinja__max_args(x, at, a, 1, "strip");
        const struct jv *c = jinja__arg(a, 0, NULL);
        if (c && c->type == JV_NONE)
            c = NULL;
        if (c)
            jinja__need_str(x, at, c, "strip");
        return jinja__strip(self, c, fn != M_RSTRIP, fn != M_LSTRIP);
    }
    case M_SPLIT: {
        jinja__max_args(x, at, a, 2, "split");
        const struct jv *m = jinja__arg(a, 1, "maxsplit");
        return jinja__split(x, at, self, jinja__arg(a, 0, "sep"), m ? jinja__need_int(x, at, m, "split") : -1);
    }
    case M_STARTSWITH:
    case M_ENDSWITH:
        jinja__max_args(x, at, a, 1, "startswith");
        return jv_bool(jinja__affix(x, at, self, jinja__arg(a, 0, NULL), fn == M_STARTSWITH));
    case M_LOWER:
        return jinja__case_map(x, self, 0);
    case M_UPPER:
        return jinja__case_map(x, self, 1);
    case M_TITLE:
        return jinja__case_map(x, self, 2);
    case M_CAPITALIZE:
        return jinja__case_map(x, self, 3);
    case M_REPLACE: {
        const struct jv *o = jinja__need_str(x, at, jinja__arg(a, 0, NULL), "replace");
        const struct jv *n = jinja__need_str(x, at, jinja__arg(a, 1, NULL), "replace");
        const struct jv *c = jinja__arg(a, 2, NULL);
        return jinja__replace(x, at, self, o, n, c ? jinja__need_int(x, at, c, "replace") : -1);
    }
    case M_FIND: {
        const struct jv *sub = jinja__need_str(x, at, jinja__arg(a, 0, NULL), "find");
        const char *q = jinja__find_sub(self->u.str.s, self->u.str.n, sub->u.str.s, sub->u.str.n);
        return jv_int(q ? (int64_t)jv_utf8_len(self->u.str.s, (size_t)(q - self->u.str.s)) : -1);
    }
    case M_STR_COUNT: {
        const struct jv *sub = jinja__need_str(x, at, jinja__arg(a, 0, NULL), "count");
        if (!sub->u.str.n)
            return jv_int((int64_t)jv_utf8_len(self->u.str.s, self->u.str.n) + 1);
        int64_t k = 0;
        const char *p = self->u.str.s, *end = p + self->u.str.n, *q;
        while ((q = jinja__find_sub(p, (size_t)(end - p), sub->u.str.s, sub->u.str.n))) {
            k++;
            p = q + sub->u.str.n;
        }
        return jv_int(k);
    }
    case M_JOIN: {
        const struct jv *seq = jinja__arg(a, 0, NULL);
        if (!seq)
            jinja__fail(x, at->line, at->col, "join takes exactly one argument");
        struct jv_list items = jinja__iterate(x, at, seq);
        for (size_t i = 0; i < items.n; i++)
            if (items.items[i].type != JV_STR)
                jinja__fail(x, at->line, at->col, "sequence item %zu: expected str instance, %s found", i,
                            jv_type_name(&items.items[i]));
        return jinja__join(x, at, seq, self, NULL);
    }
    case M_GET: {
        jinja__max_args(x, at, a, 2, "get");
        const struct jv *k = jinja__arg(a, 0, NULL), *d = jinja__arg(a, 1, NULL);
        if (!k)
            jinja__fail(x, at->line, at->col, "get expected at least 1 argument");
        struct jv *v = jv_dict_get(self->u.dict, k);
        return v ? *v : d ? *d : jv_none();
    }
    case M_ITEMS:
        return jinja__dict_items(x, self->u.dict);
    case M_KEYS:
        return jinja__list_copy(x, &(struct jv_list){.items = self->u.dict->keys, .n = self->u.dict->n});
    case M_VALUES:
        return jinja__list_copy(x, &(struct jv_list){.items = self->u.dict->vals, .n = self->u.dict->n});
    case M_INDEX: {
        const struct jv *v = jinja__arg(a, 0, NULL);
        for (size_t i = 0; v && i < self->u.list->n; i++)
            if (jv_equal(&self->u.list->items[i], v))
                return jv_int((int64_t)i);
        jinja__fail(x, at->line, at->col, "value is not in list");
    }
    case M_LIST_COUNT: {
        const struct jv *v = jinja__arg(a, 0, NULL);
        int64_t k = 0;
        for (size_t i = 0; v && i < self->u.list->n; i++)
            k += jv_equal(&self->u.list->items[i], v);
        return jv_int(k);
    }
    default:
        jinja__fail(x, at->line, at->col, "unknown built-in %d", fn);
    }
}
