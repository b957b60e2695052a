/*
 * The Jinja evaluator: walks the syntax tree, statements writing into the
 * output buffer and expressions returning values. Also the engine's entry
 * points (jinja_parse, jinja_render, jinja_free), which own the arena and
 * the longjmp target that errors unwind to (see jinja_int.h).
 *
 * Scopes follow Jinja2: a for loop and a macro call open a scope that
 * their `set`s stay inside (which is why templates use namespace() to carry
 * values out of loops); if blocks do not. Name lookup walks outwards to the
 * render's variables and then the global functions.
 *
 * Every statement and expression costs a step, and nesting is bounded, so
 * that a template looping over range(10**9) or recursing through macros
 * fails with a limit error instead of holding the thread.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JINJA_MAX_DEPTH 400

struct jinja_var {
    const char *name;
    size_t n;
    struct jv v;
};

struct jinja_frame {
    struct jinja_frame *parent;
    struct jinja_var *vars; /* [n], cap allocated */
    int n, cap;
};

_Noreturn void jinja__fail_code(struct jctx *x, int code, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err->msg, sizeof x->err->msg, fmt, ap);
    va_end(ap);
    x->err->line = line;
    x->err->col = col;
    x->code = code;
    longjmp(x->jb, 1);
}

_Noreturn void jinja__fail(struct jctx *x, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err->msg, sizeof x->err->msg, fmt, ap);
    va_end(ap);
    x->err->line = line;
    x->err->col = col;
    x->code = LMD_EINVAL;
    longjmp(x->jb, 1);
}

void *jinja__alloc(struct jctx *x, size_t n)
{
    if (x->arena->bytes > x->max_memory)
        jinja__fail_code(x, LMD_ERANGE, 0, 0, "needs more than %zu bytes of memory", x->max_memory);
    void *p = lmd_arena_alloc(x->arena, n);
    if (!p)
        jinja__fail_code(x, LMD_ENOMEM, 0, 0, "out of memory");
    return p;
}

static void step(struct jctx *x, const struct jnode *at)
{
    if (++x->steps > x->max_steps)
        jinja__fail_code(x, LMD_ERANGE, at->line, at->col, "the template ran more than %ld steps", x->max_steps);
}

/* ---- scopes ----------------------------------------------------------------- */

static struct jinja_frame *frame_push(struct jctx *x, struct jinja_frame *parent)
{
    struct jinja_frame *f = jinja__alloc(x, sizeof *f);
    memset(f, 0, sizeof *f);
    f->parent = parent;
    return f;
}

static void frame_set(struct jctx *x, struct jinja_frame *f, const char *name, size_t n, struct jv v)
{
    for (int i = 0; i < f->n; i++)
        if (f->vars[i].n == n && memcmp(f->vars[i].name, name, n) == 0) {
            f->vars[i].v = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 8;
        struct jinja_var *nv = jinja__alloc(x, (size_t)cap * sizeof *nv);
        if (f->n)
            memcpy(nv, f->vars, (size_t)f->n * sizeof *nv);
        f->vars = nv;
        f->cap = cap;
    }
    f->vars[f->n++] = (struct jinja_var){.name = name, .n = n, .v = v};
}

static struct jv lookup(struct jctx *x, const char *name, size_t n)
{
    for (struct jinja_frame *f = x->frame; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (f->vars[i].n == n && memcmp(f->vars[i].name, name, n) == 0)
                return f->vars[i].v;
    int fn = jinja__func_lookup(name, n);
    if (fn >= 0)
        return (struct jv){.type = JV_FUNC, .fn = fn};
    return jv_undef(name, n);
}

/* ---- member access ---------------------------------------------------------------- */

static _Noreturn void undefined_error(struct jctx *x, const struct jnode *at, const struct jv *u)
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
        undefined_error(x, at, obj);
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
        undefined_error(x, at, obj);
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

static struct jv eval_slice(struct jctx *x, const struct jnode *e)
{
    struct jv obj = jinja__eval(x, e->a);
    if (obj.type == JV_UNDEF)
        undefined_error(x, e, &obj);
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

static bool is_num(const struct jv *v) { return v->type == JV_INT || v->type == JV_FLOAT || v->type == JV_BOOL; }
static double num(const struct jv *v)
{
    return v->type == JV_FLOAT ? v->u.f : v->type == JV_INT ? (double)v->u.i : (double)v->u.b;
}
static int64_t inum(const struct jv *v) { return v->type == JV_INT ? v->u.i : (int64_t)v->u.b; }

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
        undefined_error(x, e, a);
    if (b->type == JV_UNDEF)
        undefined_error(x, e, b);
    if (is_num(a) && is_num(b)) {
        bool ints = a->type != JV_FLOAT && b->type != JV_FLOAT;
        int64_t p = ints ? inum(a) : 0, q = ints ? inum(b) : 0, r;
        double f = num(a), g = num(b);
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
        int64_t k = inum(b) < 0 ? 0 : inum(b);
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

static struct jv eval_binop(struct jctx *x, const struct jnode *e)
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
            undefined_error(x, e, &a);
        if (b.type == JV_UNDEF)
            undefined_error(x, e, &b);
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

/* ---- calls ---------------------------------------------------------------------------------- */

/* Evaluate a call's arguments (node args and keyword args) into a. */
static void eval_args(struct jctx *x, const struct jnode *e, struct jinja_args *a)
{
    struct jv *pos = e->n_args ? jinja__alloc(x, (size_t)e->n_args * sizeof *pos) : NULL;
    struct jv *kwv = e->n_args2 ? jinja__alloc(x, (size_t)e->n_args2 * sizeof *kwv) : NULL;
    for (int i = 0; i < e->n_args; i++)
        pos[i] = jinja__eval(x, e->args[i]);
    for (int i = 0; i < e->n_args2; i++)
        kwv[i] = jinja__eval(x, e->args2[i]);
    *a = (struct jinja_args){
        .pos = pos, .n_pos = e->n_args, .kw = e->names, .kw_len = e->name_lens, .kwv = kwv, .n_kw = e->n_args2};
}

static void exec(struct jctx *x, const struct jnode *s);

struct jv jinja__call_macro(struct jctx *x, const struct jnode *at, const struct jv *macro, const struct jv *args,
                            int n_args, const char *const *kw, const size_t *kw_len, const struct jv *kwv, int n_kw)
{
    const struct jnode *m = macro->u.macro;
    if (n_args > m->n_names)
        jinja__fail(x, at->line, at->col, "macro '%.*s' takes %d arguments, %d given", (int)m->n, m->s, m->n_names,
                    n_args);
    struct jinja_frame *saved = x->frame;
    struct jinja_frame *f = frame_push(x, x->root);
    x->frame = f;
    for (int i = 0; i < m->n_names; i++) {
        struct jv v = jv_undef(m->names[i], m->name_lens[i]);
        bool given = false;
        if (i < n_args) {
            v = args[i];
            given = true;
        }
        for (int k = 0; k < n_kw; k++)
            if (kw_len[k] == m->name_lens[i] && memcmp(kw[k], m->names[i], kw_len[k]) == 0) {
                if (given)
                    jinja__fail(x, at->line, at->col, "macro '%.*s' got argument '%.*s' twice", (int)m->n, m->s,
                                (int)kw_len[k], kw[k]);
                v = kwv[k];
                given = true;
            }
        if (!given && m->args2[i])
            v = jinja__eval(x, m->args2[i]);
        frame_set(x, f, m->names[i], m->name_lens[i], v);
    }
    for (int k = 0; k < n_kw; k++) {
        bool known = false;
        for (int i = 0; i < m->n_names; i++)
            known |= kw_len[k] == m->name_lens[i] && memcmp(kw[k], m->names[i], kw_len[k]) == 0;
        if (!known)
            jinja__fail(x, at->line, at->col, "macro '%.*s' takes no keyword argument '%.*s'", (int)m->n, m->s,
                        (int)kw_len[k], kw[k]);
    }
    struct lmd_buf *out = x->out;
    struct lmd_buf b = {.arena = x->arena};
    x->out = &b;
    exec(x, m->b);
    x->out = out;
    x->frame = saved;
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

static struct jv eval_call(struct jctx *x, const struct jnode *e)
{
    struct jv callee = jinja__eval(x, e->a);
    struct jinja_args a;
    eval_args(x, e, &a);
    switch (callee.type) {
    case JV_FUNC:
        return jinja__call_builtin(x, e, callee.fn, NULL, &a);
    case JV_METHOD:
        return jinja__call_builtin(x, e, callee.fn, callee.u.self, &a);
    case JV_MACRO:
        return jinja__call_macro(x, e, &callee, a.pos, a.n_pos, a.kw, a.kw_len, a.kwv, a.n_kw);
    case JV_UNDEF:
        undefined_error(x, e, &callee);
    default:
        jinja__fail(x, e->line, e->col, "'%s' object is not callable", jv_type_name(&callee));
    }
}

/* ---- expressions ------------------------------------------------------------------------------ */

struct jv jinja__eval(struct jctx *x, const struct jnode *e)
{
    step(x, e);
    if (++x->depth > JINJA_MAX_DEPTH)
        jinja__fail_code(x, LMD_ERANGE, e->line, e->col, "evaluation nests deeper than %d levels", JINJA_MAX_DEPTH);
    struct jv r;
    switch (e->kind) {
    case JN_CONST:
        r = e->val;
        break;
    case JN_NAME:
        r = lookup(x, e->s, e->n);
        break;
    case JN_ATTR: {
        struct jv obj = jinja__eval(x, e->a);
        r = jinja__getattr(x, e, &obj, e->s, e->n);
        break;
    }
    case JN_ITEM: {
        struct jv obj = jinja__eval(x, e->a);
        struct jv key = jinja__eval(x, e->b);
        r = jinja__getitem(x, e, &obj, &key);
        break;
    }
    case JN_SLICE:
        r = eval_slice(x, e);
        break;
    case JN_CALL:
        r = eval_call(x, e);
        break;
    case JN_FILTER: {
        struct jv v = jinja__eval(x, e->a);
        struct jinja_args a;
        eval_args(x, e, &a);
        r = jinja__filter(x, e, e->s, e->n, &v, &a);
        break;
    }
    case JN_TEST: {
        struct jv v = jinja__eval(x, e->a);
        struct jinja_args a;
        eval_args(x, e, &a);
        bool t = jinja__test(x, e, e->s, e->n, &v, &a);
        r = jv_bool(e->op == JO_NOT ? !t : t);
        break;
    }
    case JN_BINOP:
        r = eval_binop(x, e);
        break;
    case JN_UNARY: {
        struct jv v = jinja__eval(x, e->a);
        if (e->op == JO_NOT) {
            r = jv_bool(!jv_truthy(&v));
        } else if (v.type == JV_UNDEF) {
            undefined_error(x, e, &v);
        } else if (v.type == JV_INT || v.type == JV_BOOL) {
            int64_t i = inum(&v);
            if (e->op == JO_NEG && i == INT64_MIN)
                jinja__fail(x, e->line, e->col, "integer overflow");
            r = jv_int(e->op == JO_NEG ? -i : i);
        } else if (v.type == JV_FLOAT) {
            r = jv_float(e->op == JO_NEG ? -v.u.f : v.u.f);
        } else {
            jinja__fail(x, e->line, e->col, "bad operand type for unary %s: '%s'", e->op == JO_NEG ? "-" : "+",
                        jv_type_name(&v));
        }
        break;
    }
    case JN_AND: {
        struct jv a = jinja__eval(x, e->a);
        r = jv_truthy(&a) ? jinja__eval(x, e->b) : a;
        break;
    }
    case JN_OR: {
        struct jv a = jinja__eval(x, e->a);
        r = jv_truthy(&a) ? a : jinja__eval(x, e->b);
        break;
    }
    case JN_COND: {
        struct jv c = jinja__eval(x, e->a);
        if (jv_truthy(&c))
            r = jinja__eval(x, e->b);
        else
            r = e->c ? jinja__eval(x, e->c) : jv_undef("else", 4);
        break;
    }
    case JN_LIST:
    case JN_TUPLE: {
        r = jv_list_new(x, (size_t)e->n_args);
        r.tuple = e->kind == JN_TUPLE;
        for (int i = 0; i < e->n_args; i++)
            r.u.list->items[i] = jinja__eval(x, e->args[i]);
        break;
    }
    case JN_DICT: {
        r = jv_dict_new(x, (size_t)e->n_args);
        for (int i = 0; i < e->n_args; i++) {
            struct jv k = jinja__eval(x, e->args[i]);
            if (k.type == JV_LIST && !k.tuple)
                jinja__fail(x, e->line, e->col, "unhashable type: 'list'");
            if (k.type == JV_DICT || k.type == JV_UNDEF)
                jinja__fail(x, e->line, e->col, "unhashable type: '%s'", jv_type_name(&k));
            jv_dict_set(x, r.u.dict, k, jinja__eval(x, e->args2[i]));
        }
        break;
    }
    default:
        jinja__fail(x, e->line, e->col, "a statement where an expression belongs");
    }
    x->depth--;
    return r;
}

/* ---- statements -------------------------------------------------------------------------------- */

/* Bind names (one, or several unpacked from a sequence) in frame f. */
static void assign(struct jctx *x, const struct jnode *s, struct jinja_frame *f, const struct jv *v)
{
    if (s->n_names == 1) {
        frame_set(x, f, s->names[0], s->name_lens[0], *v);
        return;
    }
    struct jv_list items = jinja__iterate(x, s, v);
    if (items.n != (size_t)s->n_names)
        jinja__fail(x, s->line, s->col, "cannot unpack %zu values into %d names", items.n, s->n_names);
    for (int i = 0; i < s->n_names; i++)
        frame_set(x, f, s->names[i], s->name_lens[i], items.items[i]);
}

static void exec_for(struct jctx *x, const struct jnode *s)
{
    struct jv seq = jinja__eval(x, s->a);
    struct jv_list items = jinja__iterate(x, s, &seq);
    struct jinja_frame *saved = x->frame;
    struct jinja_frame *f = frame_push(x, saved);
    x->frame = f;
    if (s->d) {
        /* `for x in xs if cond`: the loop (and loop.length) sees only the
         * items that pass. */
        struct jv kept = jv_list_new(x, items.n);
        size_t k = 0;
        for (size_t i = 0; i < items.n; i++) {
            step(x, s);
            assign(x, s, f, &items.items[i]);
            struct jv c = jinja__eval(x, s->d);
            if (jv_truthy(&c))
                kept.u.list->items[k++] = items.items[i];
        }
        kept.u.list->n = k;
        items = *kept.u.list;
    }
    struct jv_loop *loop = jinja__alloc(x, sizeof *loop);
    loop->items = items.items;
    loop->length = (int64_t)items.n;
    for (size_t i = 0; i < items.n; i++) {
        step(x, s);
        loop->index0 = (int64_t)i;
        assign(x, s, f, &items.items[i]);
        frame_set(x, f, "loop", 4, (struct jv){.type = JV_LOOP, .u.loop = loop});
        exec(x, s->b);
        if (x->loop_ctl == JN_BREAK) {
            x->loop_ctl = 0;
            break;
        }
        x->loop_ctl = 0;
    }
    x->frame = saved;
    if (!items.n && s->c)
        exec(x, s->c);
}

static void exec(struct jctx *x, const struct jnode *s)
{
    step(x, s);
    switch (s->kind) {
    case JN_BODY:
        for (int i = 0; i < s->n_args && !x->loop_ctl; i++)
            exec(x, s->args[i]);
        return;
    case JN_TEXT:
        jinja__append(x, x->out, s->s, s->n);
        return;
    case JN_OUTPUT: {
        struct jv v = jinja__eval(x, s->a);
        jv_write_str(x, x->out, &v);
        return;
    }
    case JN_IF: {
        struct jv c = jinja__eval(x, s->a);
        if (jv_truthy(&c))
            exec(x, s->b);
        else if (s->c)
            exec(x, s->c);
        return;
    }
    case JN_FOR:
        if (++x->depth > JINJA_MAX_DEPTH)
            jinja__fail_code(x, LMD_ERANGE, s->line, s->col, "loops nest deeper than %d levels", JINJA_MAX_DEPTH);
        exec_for(x, s);
        x->depth--;
        return;
    case JN_SET: {
        struct jv v = jinja__eval(x, s->b);
        if (s->a) {
            struct jv ns = jinja__eval(x, s->a);
            if (ns.type != JV_NS)
                jinja__fail(x, s->line, s->col, "cannot assign attribute on non-namespace object");
            char *key = jinja__alloc(x, s->n + 1);
            memcpy(key, s->s, s->n);
            jv_dict_set(x, ns.u.dict, jv_str(key, s->n), v);
        } else {
            assign(x, s, x->frame, &v);
        }
        return;
    }
    case JN_SETBLOCK: {
        struct lmd_buf *out = x->out;
        struct lmd_buf b = {.arena = x->arena};
        x->out = &b;
        exec(x, s->b);
        x->out = out;
        struct jv v = jv_str(b.ptr ? b.ptr : "", b.len);
        assign(x, s, x->frame, &v);
        return;
    }
    case JN_MACRO:
        frame_set(x, x->frame, s->s, s->n, (struct jv){.type = JV_MACRO, .u.macro = s});
        return;
    case JN_BREAK:
    case JN_CONTINUE:
        x->loop_ctl = s->kind;
        return;
    default:
        jinja__fail(x, s->line, s->col, "an expression where a statement belongs");
    }
}

/* ---- entry points ------------------------------------------------------------------------------- */

int jinja_parse(const char *src, size_t len, struct jinja_tmpl **out, struct jinja_err *err)
{
    struct jinja_err dummy;
    if (!err)
        err = &dummy;
    memset(err, 0, sizeof *err);
    *out = NULL;
    struct lmd_arena *arena = lmd_arena_create(len * 4 + 4096);
    if (!arena) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return LMD_ENOMEM;
    }
    /* volatile: read after longjmp. */
    struct jctx *volatile x = calloc(1, sizeof *x);
    if (!x) {
        lmd_arena_destroy(arena);
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return LMD_ENOMEM;
    }
    x->arena = arena;
    x->max_memory = len * 64 + (16u << 20);
    x->err = err;
    if (setjmp(x->jb)) {
        int code = x->code;
        free(x);
        lmd_arena_destroy(arena);
        return code;
    }
    int n;
    struct jinja_token *toks = jinja__lex(x, src, len, &n);
    struct jinja_tmpl *t = jinja__alloc(x, sizeof *t);
    t->arena = arena;
    t->root = jinja__parse_tokens(x, toks, n);
    free(x);
    *out = t;
    return 0;
}

void jinja_free(struct jinja_tmpl *t)
{
    if (t)
        lmd_arena_destroy(t->arena);
}

int jinja_render(const struct jinja_tmpl *t, const struct json_t *vars, const struct jinja_opts *opts,
                 struct lmd_buf *out, struct jinja_err *err)
{
    struct jinja_err dummy;
    if (!err)
        err = &dummy;
    memset(err, 0, sizeof *err);
    struct lmd_arena *arena = lmd_arena_create(64 << 10);
    struct jctx *volatile x = arena ? calloc(1, sizeof *x) : NULL;
    if (!x) {
        lmd_arena_destroy(arena);
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return LMD_ENOMEM;
    }
    x->arena = arena;
    x->err = err;
    x->max_memory = opts && opts->max_memory ? opts->max_memory : (size_t)64 << 20;
    x->max_output = (opts && opts->max_output ? opts->max_output : (size_t)4 << 20) + out->len;
    x->max_steps = opts && opts->max_steps ? opts->max_steps : 10000000;
    x->now = opts ? opts->now : 0;
    x->out = out;
    if (setjmp(x->jb)) {
        int code = x->code;
        free(x);
        lmd_arena_destroy(arena);
        return code;
    }
    /* The variables sit in a scope below the template's own, so that a
     * top-level `set messages = ...` shadows them as in Jinja2. */
    struct jinja_frame *globals = frame_push(x, NULL);
    if (vars && json_is_object((const json_t *)vars)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)vars, k, v) { frame_set(x, globals, k, strlen(k), jv_from_json(x, v)); }
    }
    x->root = x->frame = frame_push(x, globals);
    exec(x, t->root);
    free(x);
    lmd_arena_destroy(arena);
    return 0;
}
