/*
 * What Jinja values do under access and operators: a.b (attribute first,
 * then item, as Jinja2's getattr), a[b] (item first), slices with
 * Python's index rules, the `loop` object's members, iteration, and the
 * arithmetic, comparison, membership and concatenation operators with
 * Python's rules (int overflow goes to float, // and % floor, str * int
 * repeats within the output bound).
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- member access ---------------------------------------------------------------- */

_Noreturn void jinja__undefined_error(struct jctx *x, const struct jnode *at, const struct jv *u)
{
    jinja__fail(x, at->line, at->col, "'%.*s' is undefined", (int)(u->u.str.n > 80 ? 80 : u->u.str.n),
                u->u.str.s ? u->u.str.s : "");
}

static struct jv loop_attr(struct jctx *x, const struct jv *obj, const char *name, size_t n)
{
    const struct jv_loop *l = obj->u.loop;
#define IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
    if (IS("index"))
        return jv_int(l->index0 + 1);
    if (IS("index0"))
        return jv_int(l->index0);
    if (IS("revindex"))
        return jv_int(l->length - l->index0);
    if (IS("revindex0"))
        return jv_int(l->length - l->index0 - 1);
    if (IS("first"))
        return jv_bool(l->index0 == 0);
    if (IS("last"))
        return jv_bool(l->index0 == l->length - 1);
    if (IS("length"))
        return jv_int(l->length);
    if (IS("depth"))
        return jv_int(1);
    if (IS("depth0"))
        return jv_int(0);
    if (IS("previtem"))
        return l->index0 > 0 ? l->items[l->index0 - 1] : jv_undef("previtem", 8);
    if (IS("nextitem"))
        return l->index0 + 1 < l->length ? l->items[l->index0 + 1] : jv_undef("nextitem", 8);
#undef IS
    int fn = jinja__method_lookup(obj, name, n);
    if (fn >= 0) {
        struct jv *self = jinja__alloc(x, sizeof *self);
        *self = *obj;
        return (struct jv){.type = JV_METHOD, .fn = fn, .u.self = self};
    }
    return jv_undef(name, n);
}

struct jv jinja__getattr(struct jctx *x, const struct jnode *at, const struct jv *obj, const char *name, size_t n)
{
    if (obj->type == JV_UNDEF)
        jinja__undefined_error(x, at, obj);
    if (obj->type == JV_LOOP)
        return loop_attr(x, obj, name, n);
    int fn = jinja__method_lookup(obj, name, n);
    if (fn >= 0) {
        struct jv *self = jinja__alloc(x, sizeof *self);
        *self = *obj;
        return (struct jv){.type = JV_METHOD, .fn = fn, .u.self = self};
    }
    if (obj->type == JV_DICT || obj->type == JV_NS) {
        struct jv *v = jv_dict_get_str(obj->u.dict, name, n);
        if (v)
            return *v;
    }
    return jv_undef(name, n);
}

struct jv jinja__getitem(struct jctx *x, const struct jnode *at, const struct jv *obj, const struct jv *key)
{
    if (obj->type == JV_UNDEF)
        jinja__undefined_error(x, at, obj);
    if (obj->type == JV_DICT || obj->type == JV_NS) {
        struct jv *v = jv_dict_get(obj->u.dict, key);
        if (v)
            return *v;
    } else if ((obj->type == JV_LIST || obj->type == JV_STR) && (key->type == JV_INT || key->type == JV_BOOL)) {
        int64_t i = key->type == JV_INT ? key->u.i : key->u.b;
        if (obj->type == JV_LIST) {
            int64_t len = (int64_t)obj->u.list->n;
            if (i < 0)
                i += len;
            if (i >= 0 && i < len)
                return obj->u.list->items[i];
        } else {
            int64_t len = (int64_t)jv_utf8_len(obj->u.str.s, obj->u.str.n);
            if (i < 0)
                i += len;
            if (i >= 0 && i < len) {
                size_t a = jv_utf8_offset(obj->u.str.s, obj->u.str.n, (size_t)i);
                size_t b = jv_utf8_offset(obj->u.str.s, obj->u.str.n, (size_t)i + 1);
                return jv_str(obj->u.str.s + a, b - a);
            }
        }
        return jv_undef("item", 4);
    } else if (obj->type == JV_LOOP && key->type == JV_STR) {
        return loop_attr(x, obj, key->u.str.s, key->u.str.n);
    }
    if (key->type == JV_STR) {
        int fn = jinja__method_lookup(obj, key->u.str.s, key->u.str.n);
        if (fn >= 0) {
            struct jv *self = jinja__alloc(x, sizeof *self);
            *self = *obj;
            return (struct jv){.type = JV_METHOD, .fn = fn, .u.self = self};
        }
        return jv_undef(key->u.str.s, key->u.str.n);
    }
    return jv_undef("item", 4);
}

struct jv_list jinja__iterate(struct jctx *x, const struct jnode *at, const struct jv *v)
{
    switch (v->type) {
    case JV_UNDEF:
        return (struct jv_list){.items = NULL, .n = 0};
    case JV_LIST:
        return *v->u.list;
    case JV_DICT:
        return (struct jv_list){.items = v->u.dict->keys, .n = v->u.dict->n};
    case JV_STR: {
        size_t n = jv_utf8_len(v->u.str.s, v->u.str.n);
        struct jv l = jv_list_new(x, n);
        size_t p = 0;
        for (size_t i = 0; i < n; i++) {
            size_t q = p + 1;
            while (q < v->u.str.n && ((unsigned char)v->u.str.s[q] & 0xc0) == 0x80)
                q++;
            l.u.list->items[i] = jv_str(v->u.str.s + p, q - p);
            p = q;
        }
        return *l.u.list;
    }
    default:
        jinja__fail(x, at->line, at->col, "'%s' object is not iterable", jv_type_name(v));
    }
}

/* ---- slicing ---------------------------------------------------------------------- */

static int64_t slice_index(struct jctx *x, const struct jnode *at, const struct jnode *e, int64_t dflt)
{
    if (!e)
        return dflt;
    struct jv v = jinja__eval(x, e);
    if (v.type == JV_NONE)
        return dflt;
    if (v.type == JV_BOOL)
        return v.u.b;
    if (v.type != JV_INT)
        jinja__fail(x, at->line, at->col, "slice indices must be integers or None, not %s", jv_type_name(&v));
    return v.u.i;
}

struct jv jinja__slice(struct jctx *x, const struct jnode *e)
{
    struct jv obj = jinja__eval(x, e->a);
    if (obj.type == JV_UNDEF)
        jinja__undefined_error(x, e, &obj);
    if (obj.type != JV_LIST && obj.type != JV_STR)
        jinja__fail(x, e->line, e->col, "'%s' object is not subscriptable", jv_type_name(&obj));
    int64_t step_ = slice_index(x, e, e->d, 1);
    if (step_ == 0)
        jinja__fail(x, e->line, e->col, "slice step cannot be zero");
    int64_t len = obj.type == JV_LIST ? (int64_t)obj.u.list->n : (int64_t)jv_utf8_len(obj.u.str.s, obj.u.str.n);
    /* Python's PySlice_AdjustIndices. */
    int64_t lo = step_ < 0 ? -1 : 0, hi = step_ < 0 ? len - 1 : len;
    int64_t start = slice_index(x, e, e->b, step_ < 0 ? hi : lo);
    int64_t stop = slice_index(x, e, e->c, step_ < 0 ? lo : hi);
    if (e->b) {
        if (start < 0)
            start = start + len < lo ? lo : start + len;
        else if (start > hi)
            start = hi;
    }
    if (e->c) {
        if (stop < 0)
            stop = stop + len < lo ? lo : stop + len;
        else if (stop > hi)
            stop = hi;
    }
    int64_t count = 0;
    if (step_ > 0 && stop > start)
        count = (stop - start + step_ - 1) / step_;
    else if (step_ < 0 && stop < start)
        count = (start - stop - step_ - 1) / -step_;
    if (obj.type == JV_LIST) {
        struct jv r = jv_list_new(x, (size_t)count);
        r.tuple = obj.tuple;
        for (int64_t i = 0; i < count; i++)
            r.u.list->items[i] = obj.u.list->items[start + i * step_];
        return r;
    }
    if (step_ == 1) {
        size_t a = jv_utf8_offset(obj.u.str.s, obj.u.str.n, (size_t)start);
        size_t b = jv_utf8_offset(obj.u.str.s, obj.u.str.n, (size_t)(start + count));
        return jv_str(obj.u.str.s + a, b - a);
    }
    struct jv_list chars = jinja__iterate(x, e, &obj);
    struct lmd_buf b = {.arena = x->arena};
    for (int64_t i = 0; i < count; i++) {
        const struct jv *c = &chars.items[start + i * step_];
        jinja__append(x, &b, c->u.str.s, c->u.str.n);
    }
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

/* ---- operators ------------------------------------------------------------------------ */

static const char *op_name(enum jinja_op op)
{
    switch (op) {
    case JO_ADD:
        return "+";
    case JO_SUB:
        return "-";
    case JO_MUL:
        return "*";
    case JO_DIV:
        return "/";
    case JO_FLOORDIV:
        return "//";
    case JO_MOD:
        return "%";
    case JO_POW:
        return "**";
    default:
        return "?";
    }
}

static struct jv concat(struct jctx *x, const struct jv *a, const struct jv *b)
{
    char *s = jinja__alloc(x, a->u.str.n + b->u.str.n + 1);
    memcpy(s, a->u.str.s, a->u.str.n);
    memcpy(s + a->u.str.n, b->u.str.s, b->u.str.n);
    return jv_str(s, a->u.str.n + b->u.str.n);
}

struct jv jinja__arith(struct jctx *x, const struct jnode *e, enum jinja_op op, const struct jv *a, const struct jv *b)
{
    if (a->type == JV_UNDEF)
        jinja__undefined_error(x, e, a);
    if (b->type == JV_UNDEF)
        jinja__undefined_error(x, e, b);
    if (jv_is_num(a) && jv_is_num(b)) {
        bool ints = a->type != JV_FLOAT && b->type != JV_FLOAT;
        int64_t p = ints ? jv_inum(a) : 0, q = ints ? jv_inum(b) : 0, r;
        double f = jv_num(a), g = jv_num(b);
        switch (op) {
        case JO_ADD:
            if (ints && !__builtin_add_overflow(p, q, &r))
                return jv_int(r);
            return jv_float(f + g);
        case JO_SUB:
            if (ints && !__builtin_sub_overflow(p, q, &r))
                return jv_int(r);
            return jv_float(f - g);
        case JO_MUL:
            if (ints && !__builtin_mul_overflow(p, q, &r))
                return jv_int(r);
            return jv_float(f * g);
        case JO_DIV:
            if (g == 0)
                jinja__fail(x, e->line, e->col, "division by zero");
            return jv_float(f / g);
        case JO_FLOORDIV:
        case JO_MOD:
            if (ints) {
                if (q == 0)
                    jinja__fail(x, e->line, e->col, "integer division or modulo by zero");
                if (p == INT64_MIN && q == -1)
                    jinja__fail(x, e->line, e->col, "integer overflow");
                int64_t d = p / q, m = p % q;
                if (m != 0 && ((m < 0) != (q < 0))) {
                    d -= 1;
                    m += q;
                }
                return op == JO_FLOORDIV ? jv_int(d) : jv_int(m);
            }
            if (g == 0)
                jinja__fail(x, e->line, e->col, "float division by zero");
            if (op == JO_FLOORDIV)
                return jv_float(floor(f / g));
            double m = fmod(f, g);
            if (m != 0 && ((m < 0) != (g < 0)))
                m += g;
            return jv_float(m);
        case JO_POW:
            if (ints && q >= 0) {
                int64_t acc = 1;
                for (int64_t i = 0; i < q; i++)
                    if (__builtin_mul_overflow(acc, p, &acc))
                        return jv_float(pow(f, g));
                return jv_int(acc);
            }
            return jv_float(pow(f, g));
        default:
            break;
        }
    }
    if (op == JO_ADD && a->type == JV_STR && b->type == JV_STR)
        return concat(x, a, b);
    if (op == JO_ADD && a->type == JV_LIST && b->type == JV_LIST && a->tuple == b->tuple) {
        struct jv r = jv_list_new(x, a->u.list->n + b->u.list->n);
        r.tuple = a->tuple;
        memcpy(r.u.list->items, a->u.list->items, a->u.list->n * sizeof(struct jv));
        memcpy(r.u.list->items + a->u.list->n, b->u.list->items, b->u.list->n * sizeof(struct jv));
        return r;
    }
    if (op == JO_MUL && (a->type == JV_STR || a->type == JV_LIST) && (b->type == JV_INT || b->type == JV_BOOL)) {
        int64_t k = jv_inum(b) < 0 ? 0 : jv_inum(b);
        size_t unit = a->type == JV_STR ? a->u.str.n : a->u.list->n;
        if (unit && (uint64_t)k > (uint64_t)(x->max_output / unit))
            jinja__fail_code(x, LMD_ERANGE, e->line, e->col, "repetition too large");
        if (a->type == JV_STR) {
            char *s = jinja__alloc(x, unit * (size_t)k + 1);
            for (int64_t i = 0; i < k; i++)
                memcpy(s + (size_t)i * unit, a->u.str.s, unit);
            return jv_str(s, unit * (size_t)k);
        }
        struct jv r = jv_list_new(x, unit * (size_t)k);
        for (int64_t i = 0; i < k; i++)
            memcpy(r.u.list->items + (size_t)i * unit, a->u.list->items, unit * sizeof(struct jv));
        return r;
    }
    jinja__fail(x, e->line, e->col, "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op), jv_type_name(a),
                jv_type_name(b));
}

static bool contains(struct jctx *x, const struct jnode *e, const struct jv *item, const struct jv *c)
{
    switch (c->type) {
    case JV_UNDEF:
        return false;
    case JV_STR:
        if (item->type != JV_STR)
            jinja__fail(x, e->line, e->col, "'in <string>' requires string as left operand, not %s",
                        jv_type_name(item));
        if (!item->u.str.n)
            return true;
        for (size_t i = 0; i + item->u.str.n <= c->u.str.n; i++)
            if (memcmp(c->u.str.s + i, item->u.str.s, item->u.str.n) == 0)
                return true;
        return false;
    case JV_LIST:
        for (size_t i = 0; i < c->u.list->n; i++)
            if (jv_equal(item, &c->u.list->items[i]))
                return true;
        return false;
    case JV_DICT:
    case JV_NS:
        return jv_dict_get(c->u.dict, item) != NULL;
    default:
        jinja__fail(x, e->line, e->col, "argument of type '%s' is not iterable", jv_type_name(c));
    }
}

struct jv jinja__binop(struct jctx *x, const struct jnode *e)
{
    struct jv a = jinja__eval(x, e->a);
    struct jv b = jinja__eval(x, e->b);
    switch (e->op) {
    case JO_TILDE: {
        struct jv s = jv_to_str(x, &a), t = jv_to_str(x, &b);
        return concat(x, &s, &t);
    }
    case JO_EQ:
        return jv_bool(jv_equal(&a, &b));
    case JO_NE:
        return jv_bool(!jv_equal(&a, &b));
    case JO_LT:
    case JO_LE:
    case JO_GT:
    case JO_GE: {
        if (a.type == JV_UNDEF)
            jinja__undefined_error(x, e, &a);
        if (b.type == JV_UNDEF)
            jinja__undefined_error(x, e, &b);
        int c = jv_compare(x, e, &a, &b);
        return jv_bool(e->op == JO_LT ? c < 0 : e->op == JO_LE ? c <= 0 : e->op == JO_GT ? c > 0 : c >= 0);
    }
    case JO_IN:
        return jv_bool(contains(x, e, &a, &b));
    case JO_NOTIN:
        return jv_bool(!contains(x, e, &a, &b));
    default:
        return jinja__arith(x, e, e->op, &a, &b);
    }
}
