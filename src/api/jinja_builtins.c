/*
 * The built-ins of the Jinja engine: global functions (range, namespace,
 * dict, raise_exception, strftime_now), the methods templates call on
 * strings, dicts, lists and loops (s.strip(), d.items(), …), and the
 * filters and tests, each with Python's or Jinja2's behaviour at the edges
 * that chat templates reach (str.split() without a separator splits on runs
 * of whitespace; `is iterable` is true for strings; `length` of an
 * undefined value is 0).
 *
 * Case mapping (upper, lower, title, capitalize) covers the Latin, Greek and
 * Cyrillic letters one code point maps to one; other characters pass
 * through unchanged. Integers are 64-bit, where Python's are unbounded.
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

static bool name_is(const char *s, size_t n, const char *lit) { return n == strlen(lit) && memcmp(s, lit, n) == 0; }

int jinja__func_lookup(const char *name, size_t n)
{
    if (name_is(name, n, "range"))
        return F_RANGE;
    if (name_is(name, n, "namespace"))
        return F_NAMESPACE;
    if (name_is(name, n, "dict"))
        return F_DICT;
    if (name_is(name, n, "raise_exception"))
        return F_RAISE;
    if (name_is(name, n, "strftime_now"))
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
        if (name_is(name, n, table[i].name))                                                                           \
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

/* Names the parser accepts, so that a template naming a filter or test
 * lmd lacks is refused when it is loaded (as Jinja2 refuses unknown ones
 * when it compiles), not on the request that first reaches it. */
static const char *const filter_names[] = {
    "abs",  "capitalize", "count",      "d",      "default", "first", "float",  "indent",     "int",     "items",
    "join", "last",       "length",     "list",   "lower",   "map",   "reject", "rejectattr", "replace", "reverse",
    "safe", "select",     "selectattr", "string", "sum",     "title", "tojson", "trim",       "upper",
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
        if (name_is(name, n, filter_names[i]))
            return true;
    return false;
}

bool jinja__test_known(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof test_names / sizeof test_names[0]; i++)
        if (name_is(name, n, test_names[i]))
            return true;
    return false;
}

/* ---- argument helpers ------------------------------------------------------------ */

/* Argument i by position, else by keyword name, else NULL. */
static const struct jv *arg(const struct jinja_args *a, int i, const char *name)
{
    if (i >= 0 && i < a->n_pos)
        return &a->pos[i];
    for (int k = 0; name && k < a->n_kw; k++)
        if (name_is(a->kw[k], a->kw_len[k], name))
            return &a->kwv[k];
    return NULL;
}

static void max_args(struct jctx *x, const struct jnode *at, const struct jinja_args *a, int n, const char *what)
{
    if (a->n_pos > n)
        jinja__fail(x, at->line, at->col, "%s takes at most %d positional arguments, %d given", what, n, a->n_pos);
}

static const struct jv *need_str(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what)
{
    if (!v || v->type != JV_STR)
        jinja__fail(x, at->line, at->col, "%s needs a string, not %s", what, v ? jv_type_name(v) : "nothing");
    return v;
}

static int64_t need_int(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what)
{
    if (!v || (v->type != JV_INT && v->type != JV_BOOL))
        jinja__fail(x, at->line, at->col, "%s needs an integer, not %s", what, v ? jv_type_name(v) : "nothing");
    return v->type == JV_INT ? v->u.i : v->u.b;
}

static struct jv copy_str(struct jctx *x, const char *s, size_t n)
{
    char *p = jinja__alloc(x, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return jv_str(p, n);
}

/* ---- strings ----------------------------------------------------------------------- */

/* Python's str.isspace() for the code point that starts at s[i], with its
 * length in *len (0 when it is not whitespace). */
static size_t space_at(const char *s, size_t n, size_t i)
{
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))
        return 1;
    if (c == 0xc2 && i + 1 < n && ((unsigned char)s[i + 1] == 0x85 || (unsigned char)s[i + 1] == 0xa0))
        return 2;
    if (c == 0xe1 && i + 2 < n && (unsigned char)s[i + 1] == 0x9a && (unsigned char)s[i + 2] == 0x80)
        return 3;
    if (c == 0xe2 && i + 2 < n) {
        unsigned char b = (unsigned char)s[i + 1], d = (unsigned char)s[i + 2];
        if (b == 0x80 && (d <= 0x8a || d == 0xa8 || d == 0xa9 || d == 0xaf))
            return 3;
        if (b == 0x81 && d == 0x9f)
            return 3;
    }
    if (c == 0xe3 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x80)
        return 3;
    return 0;
}

/* The whitespace code point that ends at s[end) (its length), or 0. */
static size_t space_before(const char *s, size_t end)
{
    for (size_t k = 1; k <= 3 && k <= end; k++) {
        size_t i = end - k;
        if (((unsigned char)s[i] & 0xc0) == 0x80 && k < 3)
            continue;
        return space_at(s, end, i) == k ? k : 0;
    }
    return 0;
}

static bool in_chars(const char *chars, size_t nc, const char *s, size_t len)
{
    for (size_t i = 0; i + len <= nc;) {
        size_t l = 1;
        while (i + l < nc && ((unsigned char)chars[i + l] & 0xc0) == 0x80)
            l++;
        if (l == len && memcmp(chars + i, s, len) == 0)
            return true;
        i += l;
    }
    return false;
}

static size_t cp_len_at(const char *s, size_t n, size_t i)
{
    size_t l = 1;
    while (i + l < n && ((unsigned char)s[i + l] & 0xc0) == 0x80)
        l++;
    return l;
}

static size_t cp_len_before(const char *s, size_t end)
{
    size_t l = 1;
    while (l < end && ((unsigned char)s[end - l] & 0xc0) == 0x80)
        l++;
    return l;
}

/* str.strip / lstrip / rstrip with chars (NULL = whitespace). */
static struct jv strip(const struct jv *s, const struct jv *chars, bool left, bool right)
{
    const char *p = s->u.str.s;
    size_t a = 0, b = s->u.str.n;
    if (left)
        while (a < b) {
            size_t l = chars ? cp_len_at(p, b, a) : space_at(p, b, a);
            if (!l || (chars && !in_chars(chars->u.str.s, chars->u.str.n, p + a, l)))
                break;
            a += l;
        }
    if (right)
        while (b > a) {
            size_t l = chars ? cp_len_before(p, b) : space_before(p, b);
            if (!l || b - l < a || (chars && !in_chars(chars->u.str.s, chars->u.str.n, p + b - l, l)))
                break;
            b -= l;
        }
    return jv_str(p + a, b - a);
}

static const char *find_sub(const char *s, size_t n, const char *sub, size_t m)
{
    if (m == 0)
        return s;
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, sub, m) == 0)
            return s + i;
    return NULL;
}

/* Simple case mapping of one code point: Latin-1, Latin Extended-A, Greek
 * and Cyrillic, which is what text in chat templates meets; other code
 * points map to themselves (and ß stays ß, where Python writes SS). */
static unsigned long case_cp(unsigned long c, bool up)
{
    if (c < 0x80) {
        if (up && c >= 'a' && c <= 'z')
            return c - 32;
        if (!up && c >= 'A' && c <= 'Z')
            return c + 32;
        return c;
    }
    if (up) {
        if ((c >= 0xe0 && c <= 0xfe && c != 0xf7) || (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) ||
            (c >= 0x430 && c <= 0x44f))
            return c - 32;
        if (c == 0xff)
            return 0x178;
        if (c == 0x3c2)
            return 0x3a3;
        if (c >= 0x450 && c <= 0x45f)
            return c - 80;
        if (((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) && (c & 1))
            return c - 1;
        if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && !(c & 1))
            return c - 1;
        return c;
    }
    if ((c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) || (c >= 0x410 && c <= 0x42f))
        return c + 32;
    if (c == 0x178)
        return 0xff;
    if (c >= 0x400 && c <= 0x40f)
        return c + 80;
    if (((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) && !(c & 1))
        return c + 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && (c & 1))
        return c + 1;
    return c;
}

static bool cased_cp(unsigned long c) { return case_cp(c, true) != c || case_cp(c, false) != c; }

static unsigned long cp_decode(const char *s, size_t n, size_t *i)
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

static size_t cp_encode(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static struct jv case_map(struct jctx *x, const struct jv *s, int mode /* 0 lower 1 upper 2 title 3 capitalize */)
{
    /* Every mapped code point keeps its UTF-8 length except ÿ <-> Ÿ (2 -> 2)
     * and the ASCII range, so twice the input is room enough. */
    char *o = jinja__alloc(x, s->u.str.n * 2 + 1);
    size_t k = 0, i = 0;
    bool prev_cased = false, first = true;
    while (i < s->u.str.n) {
        size_t start = i;
        unsigned long c = cp_decode(s->u.str.s, s->u.str.n, &i);
        if (c > 0x17e && (c < 0x391 || c > 0x45f)) {
            /* Not a letter this mapping knows: copy its bytes as they are. */
            memcpy(o + k, s->u.str.s + start, i - start);
            k += i - start;
            prev_cased = false;
            first = false;
            continue;
        }
        bool cased = cased_cp(c);
        bool up = mode == 1 || (mode == 2 && !prev_cased) || (mode == 3 && first);
        k += cp_encode(o + k, cased ? case_cp(c, up) : c);
        prev_cased = cased;
        first = false;
    }
    return jv_str(o, k);
}

static struct jv replace(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *old,
                         const struct jv *new, int64_t count)
{
    struct lmd_buf b = {.arena = x->arena};
    const char *p = s->u.str.s, *end = p + s->u.str.n;
    int64_t done = 0;
    if (old->u.str.n == 0) {
        /* Python inserts the replacement around every character. */
        while (count < 0 || done < count) {
            jinja__append(x, &b, new->u.str.s, new->u.str.n);
            done++;
            if (p >= end)
                break;
            size_t l = cp_len_at(p, (size_t)(end - p), 0);
            jinja__append(x, &b, p, l);
            p += l;
        }
        jinja__append(x, &b, p, (size_t)(end - p));
        (void)at;
        return jv_str(b.ptr ? b.ptr : "", b.len);
    }
    while (count < 0 || done < count) {
        const char *q = find_sub(p, (size_t)(end - p), old->u.str.s, old->u.str.n);
        if (!q)
            break;
        jinja__append(x, &b, p, (size_t)(q - p));
        jinja__append(x, &b, new->u.str.s, new->u.str.n);
        p = q + old->u.str.n;
        done++;
    }
    jinja__append(x, &b, p, (size_t)(end - p));
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

static struct jv split(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *sep,
                       int64_t maxsplit)
{
    size_t cap = 8, n = 0;
    struct jv *items = jinja__alloc(x, cap * sizeof *items);
#define PUSH(v)                                                                                                        \
    do {                                                                                                               \
        if (n == cap) {                                                                                                \
            struct jv *more = jinja__alloc(x, cap * 2 * sizeof *more);                                                 \
            memcpy(more, items, n * sizeof *more);                                                                     \
            items = more;                                                                                              \
            cap *= 2;                                                                                                  \
        }                                                                                                              \
        items[n++] = (v);                                                                                              \
    } while (0)
    const char *p = s->u.str.s;
    size_t len = s->u.str.n, i = 0;
    if (!sep || sep->type == JV_NONE) {
        /* Runs of whitespace separate; no empty strings at the ends. */
        int64_t splits = 0;
        for (;;) {
            size_t l;
            while (i < len && (l = space_at(p, len, i)))
                i += l;
            if (i >= len)
                break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t e = len;
                while (e > i && (l = space_before(p, e)))
                    e -= l;
                PUSH(jv_str(p + i, e - i));
                break;
            }
            size_t start = i;
            while (i < len && !space_at(p, len, i))
                i += cp_len_at(p, len, i);
            PUSH(jv_str(p + start, i - start));
            splits++;
        }
    } else {
        need_str(x, at, sep, "split");
        if (!sep->u.str.n)
            jinja__fail(x, at->line, at->col, "empty separator");
        int64_t splits = 0;
        for (;;) {
            const char *q =
                maxsplit >= 0 && splits >= maxsplit ? NULL : find_sub(p + i, len - i, sep->u.str.s, sep->u.str.n);
            if (!q) {
                PUSH(jv_str(p + i, len - i));
                break;
            }
            PUSH(jv_str(p + i, (size_t)(q - (p + i))));
            i = (size_t)(q - p) + sep->u.str.n;
            splits++;
        }
    }
#undef PUSH
    struct jv_list *l = jinja__alloc(x, sizeof *l);
    l->items = items;
    l->n = n;
    return (struct jv){.type = JV_LIST, .u.list = l};
}

static bool affix(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *a, bool start)
{
    if (a && a->type == JV_LIST && a->tuple) {
        for (size_t i = 0; i < a->u.list->n; i++)
            if (affix(x, at, s, &a->u.list->items[i], start))
                return true;
        return false;
    }
    need_str(x, at, a, start ? "startswith" : "endswith");
    size_t m = a->u.str.n;
    if (m > s->u.str.n)
        return false;
    return memcmp(start ? s->u.str.s : s->u.str.s + s->u.str.n - m, a->u.str.s, m) == 0;
}

static struct jv join(struct jctx *x, const struct jnode *at, const struct jv *seq, const struct jv *sep,
                      const struct jv *attr)
{
    struct jv_list items = jinja__iterate(x, at, seq);
    struct lmd_buf b = {.arena = x->arena};
    for (size_t i = 0; i < items.n; i++) {
        if (i && sep)
            jv_write_str(x, &b, sep);
        struct jv v = items.items[i];
        if (attr && attr->type == JV_STR)
            v = jinja__getitem(x, at, &v, attr);
        jv_write_str(x, &b, &v);
    }
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

/* ---- functions and methods ---------------------------------------------------------- */

static struct jv list_of(struct jctx *x, const struct jv_list *l)
{
    struct jv r = jv_list_new(x, l->n);
    if (l->n)
        memcpy(r.u.list->items, l->items, l->n * sizeof(struct jv));
    return r;
}

static struct jv dict_items(struct jctx *x, const struct jv_dict *d)
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
        max_args(x, at, a, 3, "range");
        if (a->n_pos == 0)
            jinja__fail(x, at->line, at->col, "range expected at least 1 argument");
        int64_t start = 0, stop, stride = 1;
        if (a->n_pos == 1) {
            stop = need_int(x, at, &a->pos[0], "range");
        } else {
            start = need_int(x, at, &a->pos[0], "range");
            stop = need_int(x, at, &a->pos[1], "range");
            if (a->n_pos == 3)
                stride = need_int(x, at, &a->pos[2], "range");
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
        x->err->raised = true;
        jinja__fail(x, at->line, at->col, "%s", b.ptr ? b.ptr : "");
    }
    case F_STRFTIME: {
        const struct jv *f = need_str(x, at, arg(a, 0, "format"), "strftime_now");
        time_t now = x->now ? (time_t)x->now : time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        char fmt[128], out[256];
        if (f->u.str.n >= sizeof fmt)
            jinja__fail(x, at->line, at->col, "strftime_now: format too long");
        memcpy(fmt, f->u.str.s, f->u.str.n);
        fmt[f->u.str.n] = 0;
        size_t n = strftime(out, sizeof out, fmt, &tm);
        return copy_str(x, out, n);
    }
    default:
        break;
    }
    /* Methods. */
    switch (fn) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        max_args(x, at, a, 1, "strip");
        const struct jv *c = arg(a, 0, NULL);
        if (c && c->type == JV_NONE)
            c = NULL;
        if (c)
            need_str(x, at, c, "strip");
        return strip(self, c, fn != M_RSTRIP, fn != M_LSTRIP);
    }
    case M_SPLIT: {
        max_args(x, at, a, 2, "split");
        const struct jv *m = arg(a, 1, "maxsplit");
        return split(x, at, self, arg(a, 0, "sep"), m ? need_int(x, at, m, "split") : -1);
    }
    case M_STARTSWITH:
    case M_ENDSWITH:
        max_args(x, at, a, 1, "startswith");
        return jv_bool(affix(x, at, self, arg(a, 0, NULL), fn == M_STARTSWITH));
    case M_LOWER:
        return case_map(x, self, 0);
    case M_UPPER:
        return case_map(x, self, 1);
    case M_TITLE:
        return case_map(x, self, 2);
    case M_CAPITALIZE: {
        struct jv l = case_map(x, self, 0);
        char *p = (char *)l.u.str.s;
        if (l.u.str.n && p[0] >= 'a' && p[0] <= 'z')
            p[0] = (char)(p[0] & ~0x20);
        return l;
    }
    case M_REPLACE: {
        const struct jv *o = need_str(x, at, arg(a, 0, NULL), "replace");
        const struct jv *n = need_str(x, at, arg(a, 1, NULL), "replace");
        const struct jv *c = arg(a, 2, NULL);
        return replace(x, at, self, o, n, c ? need_int(x, at, c, "replace") : -1);
    }
    case M_FIND: {
        const struct jv *sub = need_str(x, at, arg(a, 0, NULL), "find");
        const char *q = find_sub(self->u.str.s, self->u.str.n, sub->u.str.s, sub->u.str.n);
        return jv_int(q ? (int64_t)jv_utf8_len(self->u.str.s, (size_t)(q - self->u.str.s)) : -1);
    }
    case M_STR_COUNT: {
        const struct jv *sub = need_str(x, at, arg(a, 0, NULL), "count");
        if (!sub->u.str.n)
            return jv_int((int64_t)jv_utf8_len(self->u.str.s, self->u.str.n) + 1);
        int64_t k = 0;
        const char *p = self->u.str.s, *end = p + self->u.str.n, *q;
        while ((q = find_sub(p, (size_t)(end - p), sub->u.str.s, sub->u.str.n))) {
            k++;
            p = q + sub->u.str.n;
        }
        return jv_int(k);
    }
    case M_JOIN: {
        const struct jv *seq = arg(a, 0, NULL);
        if (!seq)
            jinja__fail(x, at->line, at->col, "join takes exactly one argument");
        struct jv_list items = jinja__iterate(x, at, seq);
        for (size_t i = 0; i < items.n; i++)
            if (items.items[i].type != JV_STR)
                jinja__fail(x, at->line, at->col, "sequence item %zu: expected str instance, %s found", i,
                            jv_type_name(&items.items[i]));
        return join(x, at, seq, self, NULL);
    }
    case M_GET: {
        max_args(x, at, a, 2, "get");
        const struct jv *k = arg(a, 0, NULL), *d = arg(a, 1, NULL);
        if (!k)
            jinja__fail(x, at->line, at->col, "get expected at least 1 argument");
        struct jv *v = jv_dict_get(self->u.dict, k);
        return v ? *v : d ? *d : jv_none();
    }
    case M_ITEMS:
        return dict_items(x, self->u.dict);
    case M_KEYS:
        return list_of(x, &(struct jv_list){.items = self->u.dict->keys, .n = self->u.dict->n});
    case M_VALUES:
        return list_of(x, &(struct jv_list){.items = self->u.dict->vals, .n = self->u.dict->n});
    case M_INDEX: {
        const struct jv *v = arg(a, 0, NULL);
        for (size_t i = 0; v && i < self->u.list->n; i++)
            if (jv_equal(&self->u.list->items[i], v))
                return jv_int((int64_t)i);
        jinja__fail(x, at->line, at->col, "value is not in list");
    }
    case M_LIST_COUNT: {
        const struct jv *v = arg(a, 0, NULL);
        int64_t k = 0;
        for (size_t i = 0; v && i < self->u.list->n; i++)
            k += jv_equal(&self->u.list->items[i], v);
        return jv_int(k);
    }
    default:
        jinja__fail(x, at->line, at->col, "unknown built-in %d", fn);
    }
}

/* ---- filters -------------------------------------------------------------------------- */

/* Apply test `name` (args: a->pos[first..]) or, with no name, truthiness. */
static bool select_test(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jv *name,
                        const struct jinja_args *a, int first)
{
    if (!name)
        return jv_truthy(v);
    need_str(x, at, name, "the test's name");
    struct jinja_args rest = {.pos = a->pos + first, .n_pos = a->n_pos > first ? a->n_pos - first : 0};
    return jinja__test(x, at, name->u.str.s, name->u.str.n, v, &rest);
}

/* Jinja2's attribute getter: "a.b" walks items; numeric parts index. */
static struct jv attr_path(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jv *path)
{
    need_str(x, at, path, "the attribute");
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
    const struct jv *attr = arg(a, -1, "attribute"), *dflt = arg(a, -1, "default");
    for (size_t i = 0; i < items.n; i++) {
        if (attr) {
            struct jv got = attr_path(x, at, &items.items[i], attr);
            r.u.list->items[i] = got.type == JV_UNDEF && dflt ? *dflt : got;
        } else {
            if (!a->n_pos)
                jinja__fail(x, at->line, at->col, "map needs a filter name or attribute=");
            need_str(x, at, &a->pos[0], "map");
            struct jinja_args rest = {.pos = a->pos + 1, .n_pos = a->n_pos - 1};
            r.u.list->items[i] = jinja__filter(x, at, a->pos[0].u.str.s, a->pos[0].u.str.n, &items.items[i], &rest);
        }
    }
    return r;
}

static struct jv filter_indent(struct jctx *x, const struct jnode *at, const struct jv *v, const struct jinja_args *a)
{
    struct jv s = jv_to_str(x, v);
    const struct jv *w = arg(a, 0, "width");
    const struct jv *first = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
    struct lmd_buf pad = {.arena = x->arena};
    if (w && w->type == JV_STR) {
        jinja__append(x, &pad, w->u.str.s, w->u.str.n);
    } else {
        int64_t n = w ? need_int(x, at, w, "indent") : 4;
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
#define IS(s) name_is(name, n, s)
    if (IS("safe"))
        return *v;
    if (IS("string"))
        return jv_to_str(x, v);
    if (IS("trim")) {
        struct jv s = jv_to_str(x, v);
        const struct jv *c = arg(a, 0, "chars");
        if (c && c->type == JV_NONE)
            c = NULL;
        if (c)
            need_str(x, at, c, "trim");
        return strip(&s, c, true, true);
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
        const struct jv *ea = arg(a, 0, "ensure_ascii"), *ind = arg(a, 1, "indent");
        const struct jv *sep = arg(a, 2, "separators"), *sk = arg(a, 3, "sort_keys");
        if (ea && jv_truthy(ea))
            jinja__fail(x, at->line, at->col, "tojson: ensure_ascii=True is not supported");
        int indent = -1;
        if (ind && ind->type != JV_NONE) {
            int64_t i = need_int(x, at, ind, "tojson indent");
            indent = i < 0 ? 0 : i > 64 ? 64 : (int)i;
        }
        const char *item_sep = NULL, *key_sep = NULL;
        if (sep && sep->type != JV_NONE) {
            if (sep->type != JV_LIST || sep->u.list->n != 2 || sep->u.list->items[0].type != JV_STR ||
                sep->u.list->items[1].type != JV_STR)
                jinja__fail(x, at->line, at->col, "tojson: separators must be two strings");
            item_sep = copy_str(x, sep->u.list->items[0].u.str.s, sep->u.list->items[0].u.str.n).u.str.s;
            key_sep = copy_str(x, sep->u.list->items[1].u.str.s, sep->u.list->items[1].u.str.n).u.str.s;
        }
        struct lmd_buf b = {.arena = x->arena};
        jv_write_json(x, at, &b, v, indent, item_sep, key_sep, sk && jv_truthy(sk));
        return jv_str(b.ptr ? b.ptr : "", b.len);
    }
    if (IS("upper") || IS("lower") || IS("title") || IS("capitalize")) {
        struct jv s = jv_to_str(x, v);
        if (IS("capitalize")) {
            struct jv self = s;
            return jinja__call_builtin(x, at, M_CAPITALIZE, &self, a);
        }
        return case_map(x, &s, IS("lower") ? 0 : IS("upper") ? 1 : 2);
    }
    if (IS("default") || IS("d")) {
        const struct jv *d = arg(a, 0, "default_value"), *boolean = arg(a, 1, "boolean");
        bool use = v->type == JV_UNDEF || (boolean && jv_truthy(boolean) && !jv_truthy(v));
        return use ? (d ? *d : jv_str("", 0)) : *v;
    }
    if (IS("items")) {
        if (v->type == JV_UNDEF)
            return jv_list_new(x, 0);
        if (v->type != JV_DICT)
            jinja__fail(x, at->line, at->col, "items needs a mapping, not %s", jv_type_name(v));
        return dict_items(x, v->u.dict);
    }
    if (IS("join")) {
        const struct jv *sep = arg(a, 0, "d");
        struct jv dflt = jv_str("", 0);
        return join(x, at, v, sep ? sep : &dflt, arg(a, 1, "attribute"));
    }
    if (IS("replace")) {
        struct jv s = jv_to_str(x, v);
        const struct jv *o = arg(a, 0, "old"), *nw = arg(a, 1, "new"), *c = arg(a, 2, "count");
        if (!o || !nw)
            jinja__fail(x, at->line, at->col, "replace needs the old and the new text");
        struct jv os = jv_to_str(x, o), ns = jv_to_str(x, nw);
        return replace(x, at, &s, &os, &ns, c && c->type != JV_NONE ? need_int(x, at, c, "replace") : -1);
    }
    if (IS("selectattr") || IS("rejectattr"))
        return filter_select(x, at, v, a, true, IS("selectattr"));
    if (IS("select") || IS("reject"))
        return filter_select(x, at, v, a, false, IS("select"));
    if (IS("map"))
        return filter_map(x, at, v, a);
    if (IS("list")) {
        struct jv_list items = jinja__iterate(x, at, v);
        return list_of(x, &items);
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
        const struct jv *d = arg(a, 0, "default");
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
        const struct jv *d = arg(a, 0, "default");
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
    if (IS("sum")) {
        const struct jv *attr = arg(a, -1, "attribute"), *start = arg(a, 1, "start");
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
#define IS(s) name_is(name, n, s)
    const struct jv *o = arg(a, 0, NULL);
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
        int64_t i = need_int(x, at, v, name_is(name, n, "divisibleby") ? "divisibleby" : "odd/even");
        if (IS("divisibleby")) {
            int64_t d = need_int(x, at, o, "divisibleby");
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
            return find_sub(o->u.str.s, o->u.str.n, v->u.str.s, v->u.str.n) != NULL;
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
