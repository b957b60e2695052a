/*
 * The filters and tests of the Jinja engine, with Jinja2's behaviour at the
 * edges chat templates reach: `is iterable` is true for strings, `length`
 * of an undefined value is 0, selectattr/map take dotted attributes,
 * `default` replaces only undefined values unless asked for falsy ones.
 * Integers are 64-bit, where Python's are unbounded.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names the parser accepts, so that a template naming a filter or test
 * lmd lacks is refused when it is loaded (as Jinja2 refuses unknown ones
 * when it compiles), not on the request that first reaches it. */
static const char *const filter_names[] = {
    "abs",    "dictsort",   "round",  "sort",   "capitalize", "count",   "d",       "default",
    "first",  "float",      "indent", "int",    "items",      "join",    "last",    "length",
    "list",   "lower",      "map",    "reject", "rejectattr", "replace", "reverse", "safe",
    "select", "selectattr", "string", "sum",    "title",      "tojson",  "trim",    "upper",
};
static const char *const test_names[] = {
    "!=",       "==",    "boolean",  "callable", "defined",     "divisibleby", "eq",        "equalto",
    "even",     "false", "float",    "ge",       "greaterthan", "gt",          "in",        "integer",
    "iterable", "le",    "lessthan", "lower",    "lt",          "mapping",     "ne",        "none",
    "number",   "odd",   "sameas",   "sequence", "string",      "true",        "undefined", "upper",
};

bool jinja__filter_known(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof filter_names / sizeof filter_names[0]; i++)
        if (jinja__name_is(name, n, filter_names[i]))
            return true;
    return false;
}

bool jinja__test_known(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof test_names / sizeof test_names[0]; i++)
        if (jinja__name_is(name, n, test_names[i]))
            return true;
    return false;
}

/* ---- filters -------------------------------------------------------------------------- */

/* Apply test `name` (args: a->pos[first..]) or, with no name, truthiness. */
static bool select_test(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jv *name,
                        const struct jinja_args *a, int first)
{
    if (!name)
        return jv_truthy(v);
    jinja__need_str(x, at, name, "the test's name");
    struct jinja_args rest = {.pos = a->pos + first, .n_pos = a->n_pos > first ? a->n_pos - first : 0};
    return jinja__test(x, at, name->u.str.s, name->u.str.n, v, &rest);
}

/* Jinja2's attribute getter: "a.b" walks items; numeric parts index. */
static struct jv attr_path(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jv *path)
{
    jinja__need_str(x, at, path, "the attribute");
    struct jv cur = *v;
    const char *p = path->u.str.s, *end = p + path->u.str.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *e = dot ? dot : end;
        struct jv key = jv_str(p, (size_t)(e - p));
        bool digits = e > p;
        for (const char *c = p; c < e; c++)
            digits &= *c >= '0' && *c <= '9';
        if (digits)
            key = jv_int(strtoll(p, NULL, 10));
        if (cur.type == JV_UNDEF)
            return cur;
        cur = jinja__getitem(x, at, &cur, &key);
        if (!dot)
            break;
        p = dot + 1;
    }
    return cur;
}

static struct jv filter_select(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jinja_args *a,
                               bool by_attr, bool keep)
{
    struct jv_list items = jinja__iterate(x, at, v);
    struct jv r = jv_list_new(x, items.n);
    size_t k = 0;
    for (size_t i = 0; i < items.n; i++) {
        struct jv item = items.items[i];
        if (by_attr) {
            if (!a->n_pos)
                jinja__fail(x, at->line, at->col, "selectattr needs an attribute name");
            item = attr_path(x, at, &item, &a->pos[0]);
        }
        int name_at = by_attr ? 1 : 0;
        const struct jv *name = a->n_pos > name_at ? &a->pos[name_at] : NULL;
        if (select_test(x, at, &item, name, a, name_at + 1) == keep)
            r.u.list->items[k++] = items.items[i];
    }
    r.u.list->n = k;
    return r;
}

static struct jv filter_map(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jinja_args *a)
{
    struct jv_list items = jinja__iterate(x, at, v);
    struct jv r = jv_list_new(x, items.n);
    const struct jv *attr = jinja__arg(a, -1, "attribute"), *dflt = jinja__arg(a, -1, "default");
    for (size_t i = 0; i < items.n; i++) {
        if (attr) {
            struct jv got = attr_path(x, at, &items.items[i], attr);
            r.u.list->items[i] = got.type == JV_UNDEF && dflt ? *dflt : got;
        } else {
            if (!a->n_pos)
                jinja__fail(x, at->line, at->col, "map needs a filter name or attribute=");
            jinja__need_str(x, at, &a->pos[0], "map");
            struct jinja_args rest = {.pos = a->pos + 1, .n_pos = a->n_pos - 1};
            r.u.list->items[i] = jinja__filter(x, at, a->pos[0].u.str.s, a->pos[0].u.str.n, &items.items[i], &rest);
        }
    }
    return r;
}

/* The key a sort compares: the value, lower-cased when it is a string and
 * the sort ignores case (Jinja2's default). */
static struct jv sort_key(struct jctx *x, const struct jv *v, bool case_sensitive)
{
    return v->type == JV_STR && !case_sensitive ? jinja__case_map(x, v, 0) : *v;
}

/* Stable merge sort of items[n] by keys[n] (both reordered); comparisons
 * that Python refuses (str with int) fail the render, which is why this is
 * not qsort: the failure unwinds with longjmp. */
static void merge_sort(struct jctx *x, const struct jnode *at, struct jv *items, struct jv *keys, size_t n,
                       bool reverse)
{
    if (n < 2)
        return;
    struct jv *ti = jinja__alloc(x, n * sizeof *ti), *tk = jinja__alloc(x, n * sizeof *tk);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int c = jv_compare(x, at, &keys[j], &keys[i]);
                bool take_right = reverse ? c > 0 : c < 0;
                size_t from = take_right ? j++ : i++;
                ti[k] = items[from];
                tk[k++] = keys[from];
            }
            for (; i < mid; i++, k++) {
                ti[k] = items[i];
                tk[k] = keys[i];
            }
            for (; j < hi; j++, k++) {
                ti[k] = items[j];
                tk[k] = keys[j];
            }
        }
        memcpy(items, ti, n * sizeof *ti);
        memcpy(keys, tk, n * sizeof *tk);
    }
}

/* sort(reverse=false, case_sensitive=false, attribute=none) and
 * dictsort(case_sensitive=false, by='key', reverse=false). */
static struct jv filter_sort(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jinja_args *a,
                             bool dict)
{
    const struct jv *rev = jinja__arg(a, dict ? 2 : 0, "reverse");
    const struct jv *cs = jinja__arg(a, dict ? 0 : 1, "case_sensitive");
    const struct jv *attr = dict ? NULL : jinja__arg(a, 2, "attribute");
    const struct jv *by = dict ? jinja__arg(a, 1, "by") : NULL;
    bool by_value = false;
    if (by) {
        jinja__need_str(x, at, by, "dictsort by");
        by_value = jinja__name_is(by->u.str.s, by->u.str.n, "value");
        if (!by_value && !jinja__name_is(by->u.str.s, by->u.str.n, "key"))
            jinja__fail(x, at->line, at->col, "You can only sort by either 'key' or 'value'");
    }
    struct jv r;
    if (dict) {
        if (v->type != JV_DICT)
            jinja__fail(x, at->line, at->col, "dictsort needs a mapping, not %s", jv_type_name(v));
        r = jinja__dict_items(x, v->u.dict);
    } else {
        struct jv_list items = jinja__iterate(x, at, v);
        r = jinja__list_copy(x, &items);
    }
    size_t n = r.u.list->n;
    struct jv *keys = jinja__alloc(x, (n ? n : 1) * sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        const struct jv *it = &r.u.list->items[i];
        struct jv k = dict ? it->u.list->items[by_value ? 1 : 0] : *it;
        if (attr) {
            struct jv key = jinja__need_str(x, at, attr, "sort attribute")[0];
            k = jinja__getitem(x, at, &k, &key);
        }
        keys[i] = sort_key(x, &k, cs && jv_truthy(cs));
    }
    merge_sort(x, at, r.u.list->items, keys, n, rev && jv_truthy(rev));
    return r;
}

static struct jv filter_indent(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jinja_args *a)
{
    struct jv s = jv_to_str(x, v);
    const struct jv *w = jinja__arg(a, 0, "width");
    const struct jv *first = jinja__arg(a, 1, "first"), *blank = jinja__arg(a, 2, "blank");
    struct lmd_buf pad = {.arena = x->arena};
    if (w && w->type == JV_STR) {
        jinja__append(x, &pad, w->u.str.s, w->u.str.n);
    } else {
        int64_t n = w ? jinja__need_int(x, at, w, "indent") : 4;
        for (int64_t i = 0; i < n && i < 1024; i++)
            jinja__append(x, &pad, " ", 1);
    }
    struct lmd_buf b = {.arena = x->arena};
    const char *p = s.u.str.s, *end = p + s.u.str.n;
    bool first_line = true;
    while (p <= end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        bool empty = e == p;
        if ((first_line ? first && jv_truthy(first) : true) && (!empty || (blank && jv_truthy(blank))))
            jinja__append(x, &b, pad.ptr, pad.len);
        jinja__append(x, &b, p, (size_t)(e - p));
        if (!nl)
            break;
        jinja__append(x, &b, "\n", 1);
        p = nl + 1;
        first_line = false;
    }
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

struct jv jinja__filter(struct jctx *x, const struct jnode *at, const char *name, size_t n, const struct jv *v,
                        const struct jinja_args *a)
{
#define IS(s) jinja__name_is(name, n, s)
    if (IS("safe"))
        return *v;
    if (IS("string"))
        return jv_to_str(x, v);
    if (IS("trim")) {
        struct jv s = jv_to_str(x, v);
        const struct jv *c = jinja__arg(a, 0, "chars");
        if (c && c->type == JV_NONE)
            c = NULL;
        if (c)
            jinja__need_str(x, at, c, "trim");
        return jinja__strip(&s, c, true, true);
    }
    if (IS("length") || IS("count")) {
        switch (v->type) {
        case JV_UNDEF:
            return jv_int(0);
        case JV_STR:
            return jv_int((int64_t)jv_utf8_len(v->u.str.s, v->u.str.n));
        case JV_LIST:
            return jv_int((int64_t)v->u.list->n);
        case JV_DICT:
            return jv_int((int64_t)v->u.dict->n);
        default:
            jinja__fail(x, at->line, at->col, "object of type '%s' has no len()", jv_type_name(v));
        }
    }
    if (IS("tojson")) {
        const struct jv *ea = jinja__arg(a, 0, "ensure_ascii"), *ind = jinja__arg(a, 1, "indent");
        const struct jv *sep = jinja__arg(a, 2, "separators"), *sk = jinja__arg(a, 3, "sort_keys");
        if (ea && jv_truthy(ea))
            jinja__fail(x, at->line, at->col, "tojson: ensure_ascii=True is not supported");
        int indent = -1;
        if (ind && ind->type != JV_NONE) {
            int64_t i = jinja__need_int(x, at, ind, "tojson indent");
            indent = i < 0 ? 0 : i > 64 ? 64 : (int)i;
        }
        const char *item_sep = NULL, *key_sep = NULL;
        if (sep && sep->type != JV_NONE) {
            if (sep->type != JV_LIST || sep->u.list->n != 2 || sep->u.list->items[0].type != JV_STR ||
                sep->u.list->items[1].type != JV_STR)
                jinja__fail(x, at->line, at->col, "tojson: separators must be two strings");
            item_sep = jinja__copy_str(x, sep->u.list->items[0].u.str.s, sep->u.list->items[0].u.str.n).u.str.s;
            key_sep = jinja__copy_str(x, sep->u.list->items[1].u.str.s, sep->u.list->items[1].u.str.n).u.str.s;
        }
        struct lmd_buf b = {.arena = x->arena};
        jv_write_json(x, at, &b, v, indent, item_sep, key_sep, sk && jv_truthy(sk));
        return jv_str(b.ptr ? b.ptr : "", b.len);
    }
    if (IS("upper") || IS("lower") || IS("title") || IS("capitalize")) {
        struct jv s = jv_to_str(x, v);
        return jinja__case_map(x, &s, IS("lower") ? 0 : IS("upper") ? 1 : IS("title") ? 2 : 3);
    }
    if (IS("default") || IS("d")) {
        const struct jv *d = jinja__arg(a, 0, "default_value"), *boolean = jinja__arg(a, 1, "boolean");
        bool use = v->type == JV_UNDEF || (boolean && jv_truthy(boolean) && !jv_truthy(v));
        return use ? (d ? *d : jv_str("", 0)) : *v;
    }
    if (IS("items")) {
        if (v->type == JV_UNDEF)
            return jv_list_new(x, 0);
        if (v->type != JV_DICT)
            jinja__fail(x, at->line, at->col, "items needs a mapping, not %s", jv_type_name(v));
        return jinja__dict_items(x, v->u.dict);
    }
    if (IS("join")) {
        const struct jv *sep = jinja__arg(a, 0, "d");
        struct jv dflt = jv_str("", 0);
        return jinja__join(x, at, v, sep ? sep : &dflt, jinja__arg(a, 1, "attribute"));
    }
    if (IS("replace")) {
        struct jv s = jv_to_str(x, v);
        const struct jv *o = jinja__arg(a, 0, "old"), *nw = jinja__arg(a, 1, "new"), *c = jinja__arg(a, 2, "count");
        if (!o || !nw)
            jinja__fail(x, at->line, at->col, "replace needs the old and the new text");
        struct jv os = jv_to_str(x, o), ns = jv_to_str(x, nw);
        return jinja__replace(x, at, &s, &os, &ns, c && c->type != JV_NONE ? jinja__need_int(x, at, c, "replace") : -1);
    }
    if (IS("selectattr") || IS("rejectattr"))
        return filter_select(x, at, v, a, true, IS("selectattr"));
    if (IS("select") || IS("reject"))
        return filter_select(x, at, v, a, false, IS("select"));
    if (IS("map"))
        return filter_map(x, at, v, a);
    if (IS("list")) {
        struct jv_list items = jinja__iterate(x, at, v);
        return jinja__list_copy(x, &items);
    }
    if (IS("first") || IS("last")) {
        struct jv_list items = jinja__iterate(x, at, v);
        if (!items.n)
            return jv_undef(name, n);
        return items.items[IS("first") ? 0 : items.n - 1];
    }
    if (IS("reverse")) {
        if (v->type == JV_STR) {
            struct jv_list chars = jinja__iterate(x, at, v);
            char *o = jinja__alloc(x, v->u.str.n + 1);
            size_t k = 0;
            for (size_t i = chars.n; i-- > 0;) {
                memcpy(o + k, chars.items[i].u.str.s, chars.items[i].u.str.n);
                k += chars.items[i].u.str.n;
            }
            return jv_str(o, k);
        }
        struct jv_list items = jinja__iterate(x, at, v);
        struct jv r = jv_list_new(x, items.n);
        for (size_t i = 0; i < items.n; i++)
            r.u.list->items[i] = items.items[items.n - 1 - i];
        return r;
    }
    if (IS("int")) {
        const struct jv *d = jinja__arg(a, 0, "default");
        if (v->type == JV_INT || v->type == JV_BOOL)
            return jv_int(v->type == JV_INT ? v->u.i : v->u.b);
        if (v->type == JV_FLOAT && isfinite(v->u.f) && fabs(v->u.f) < 9.2e18)
            return jv_int((int64_t)v->u.f);
        if (v->type == JV_STR) {
            char buf[64];
            size_t k = v->u.str.n < sizeof buf - 1 ? v->u.str.n : sizeof buf - 1;
            memcpy(buf, v->u.str.s, k);
            buf[k] = 0;
            char *end;
            long long i = strtoll(buf, &end, 10);
            while (*end == ' ' || *end == '\n' || *end == '\t')
                end++;
            if (end != buf && !*end)
                return jv_int(i);
        }
        return d ? *d : jv_int(0);
    }
    if (IS("float")) {
        const struct jv *d = jinja__arg(a, 0, "default");
        if (v->type == JV_INT || v->type == JV_BOOL || v->type == JV_FLOAT)
            return jv_float(v->type == JV_FLOAT ? v->u.f : v->type == JV_INT ? (double)v->u.i : v->u.b);
        if (v->type == JV_STR) {
            char buf[64];
            size_t k = v->u.str.n < sizeof buf - 1 ? v->u.str.n : sizeof buf - 1;
            memcpy(buf, v->u.str.s, k);
            buf[k] = 0;
            char *end;
            double f = strtod(buf, &end);
            if (end != buf && !*end)
                return jv_float(f);
        }
        return d ? *d : jv_float(0);
    }
    if (IS("abs")) {
        if (v->type == JV_INT)
            return jv_int(v->u.i < 0 ? -v->u.i : v->u.i);
        if (v->type == JV_FLOAT)
            return jv_float(fabs(v->u.f));
        jinja__fail(x, at->line, at->col, "bad operand type for abs(): '%s'", jv_type_name(v));
    }
    if (IS("indent"))
        return filter_indent(x, at, v, a);
    if (IS("sort") || IS("dictsort"))
        return filter_sort(x, at, v, a, IS("dictsort"));
    if (IS("round")) {
        const struct jv *prec = jinja__arg(a, 0, "precision"), *method = jinja__arg(a, 1, "method");
        if (!jv_is_num(v))
            jinja__fail(x, at->line, at->col, "round needs a number, not %s", jv_type_name(v));
        int64_t p = prec ? jinja__need_int(x, at, prec, "round precision") : 0;
        if (p < -15 || p > 15)
            jinja__fail(x, at->line, at->col, "round precision must be in [-15, 15]");
        const char *how = method ? jinja__need_str(x, at, method, "round method")->u.str.s : "common";
        size_t hn = method ? method->u.str.n : 6;
        double f = jv_num(v), m = pow(10.0, (double)p);
        if (jinja__name_is(how, hn, "common")) {
            /* Python's round(): ties to even on the exact binary value, which
             * is what printf's correctly rounded conversion does. */
            if (v->type != JV_FLOAT && p >= 0)
                return jv_int(jv_inum(v));
            if (p < 0)
                return v->type == JV_FLOAT ? jv_float(nearbyint(f / (1.0 / m)) * (1.0 / m))
                                           : jv_int((int64_t)(nearbyint(f / (1.0 / m)) * (1.0 / m)));
            char buf[400];
            snprintf(buf, sizeof buf, "%.*f", (int)p, f);
            return jv_float(strtod(buf, NULL));
        }
        if (jinja__name_is(how, hn, "floor"))
            return jv_float(floor(f * m) / m);
        if (jinja__name_is(how, hn, "ceil"))
            return jv_float(ceil(f * m) / m);
        jinja__fail(x, at->line, at->col, "method must be common, ceil or floor");
    }
    if (IS("sum")) {
        const struct jv *attr = jinja__arg(a, -1, "attribute"), *start = jinja__arg(a, 1, "start");
        struct jv_list items = jinja__iterate(x, at, v);
        struct jv acc = start ? *start : jv_int(0);
        struct jnode plus = *at;
        plus.op = JO_ADD;
        for (size_t i = 0; i < items.n; i++) {
            struct jv item = attr ? attr_path(x, at, &items.items[i], attr) : items.items[i];
            acc = jinja__arith(x, &plus, JO_ADD, &acc, &item);
        }
        return acc;
    }
#undef IS
    jinja__fail(x, at->line, at->col, "no filter named '%.*s'", (int)(n > 60 ? 60 : n), name);
}

/* ---- tests ------------------------------------------------------------------------------ */

bool jinja__test(struct jctx *x, const struct jnode *at, const char *name, size_t n, const struct jv *v,
                 const struct jinja_args *a)
{
#define IS(s) jinja__name_is(name, n, s)
    const struct jv *o = jinja__arg(a, 0, NULL);
    if (IS("defined"))
        return v->type != JV_UNDEF;
    if (IS("undefined"))
        return v->type == JV_UNDEF;
    if (IS("none"))
        return v->type == JV_NONE;
    if (IS("string"))
        return v->type == JV_STR;
    if (IS("mapping"))
        return v->type == JV_DICT;
    if (IS("sequence"))
        return v->type == JV_STR || v->type == JV_LIST || v->type == JV_DICT;
    if (IS("iterable"))
        return v->type == JV_STR || v->type == JV_LIST || v->type == JV_DICT || v->type == JV_UNDEF;
    if (IS("number"))
        return v->type == JV_INT || v->type == JV_FLOAT || v->type == JV_BOOL;
    if (IS("integer"))
        return v->type == JV_INT;
    if (IS("float"))
        return v->type == JV_FLOAT;
    if (IS("boolean"))
        return v->type == JV_BOOL;
    if (IS("true"))
        return v->type == JV_BOOL && v->u.b;
    if (IS("false"))
        return v->type == JV_BOOL && !v->u.b;
    if (IS("callable"))
        return v->type == JV_FUNC || v->type == JV_METHOD || v->type == JV_MACRO;
    if (IS("lower") || IS("upper")) {
        if (v->type != JV_STR)
            return false;
        bool cased = false;
        for (size_t i = 0; i < v->u.str.n; i++) {
            char c = v->u.str.s[i];
            if ((IS("lower") && c >= 'A' && c <= 'Z') || (IS("upper") && c >= 'a' && c <= 'z'))
                return false;
            cased |= (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        }
        return cased;
    }
    if (IS("odd") || IS("even") || IS("divisibleby")) {
        int64_t i = jinja__need_int(x, at, v, jinja__name_is(name, n, "divisibleby") ? "divisibleby" : "odd/even");
        if (IS("divisibleby")) {
            int64_t d = jinja__need_int(x, at, o, "divisibleby");
            if (!d)
                jinja__fail(x, at->line, at->col, "integer division or modulo by zero");
            return d == -1 || i % d == 0;
        }
        return IS("odd") ? (i % 2 != 0) : (i % 2 == 0);
    }
    if (!o)
        jinja__fail(x, at->line, at->col, "test '%.*s' needs an argument, or is not known", (int)(n > 60 ? 60 : n),
                    name);
    if (IS("eq") || IS("equalto") || IS("=="))
        return jv_equal(v, o);
    if (IS("ne") || IS("!="))
        return !jv_equal(v, o);
    if (IS("sameas"))
        return v->type == o->type && jv_equal(v, o) &&
               (v->type == JV_NONE || v->type == JV_BOOL || v->type == JV_UNDEF || v->type == JV_INT ||
                (v->type == JV_STR && v->u.str.s == o->u.str.s) || v->u.list == o->u.list);
    if (IS("lt") || IS("lessthan") || IS("le") || IS("gt") || IS("greaterthan") || IS("ge")) {
        int c = jv_compare(x, at, v, o);
        return IS("lt") || IS("lessthan") ? c < 0 : IS("le") ? c <= 0 : IS("ge") ? c >= 0 : c > 0;
    }
    if (IS("in")) {
        struct jv_list items;
        if (o->type == JV_STR) {
            if (v->type != JV_STR)
                jinja__fail(x, at->line, at->col, "'in <string>' requires string as left operand");
            return jinja__find_sub(o->u.str.s, o->u.str.n, v->u.str.s, v->u.str.n) != NULL;
        }
        if (o->type == JV_DICT)
            return jv_dict_get(o->u.dict, v) != NULL;
        items = jinja__iterate(x, at, o);
        for (size_t i = 0; i < items.n; i++)
            if (jv_equal(v, &items.items[i]))
                return true;
        return false;
    }
#undef IS
    jinja__fail(x, at->line, at->col, "no test named '%.*s'", (int)(n > 60 ? 60 : n), name);
}
