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
    if (!line && x->cur) {
        line = x->cur->line;
        col = x->cur->col;
    }
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
    if (!line && x->cur) {
        line = x->cur->line;
        col = x->cur->col;
    }
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
    x->cur = at;
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
        jinja__undefined_error(x, e, &callee);
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
        r = jinja__slice(x, e);
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
        r = jinja__binop(x, e);
        break;
    case JN_UNARY: {
        struct jv v = jinja__eval(x, e->a);
        if (e->op == JO_NOT) {
            r = jv_bool(!jv_truthy(&v));
        } else if (v.type == JV_UNDEF) {
            jinja__undefined_error(x, e, &v);
        } else if (v.type == JV_INT || v.type == JV_BOOL) {
            int64_t i = jv_inum(&v);
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
    char *copy = jinja__alloc(x, len + 1);
    memcpy(copy, src, len);
    copy[len] = 0;
    t->src = copy;
    t->src_len = len;
    free(x);
    *out = t;
    return 0;
}

void jinja_free(struct jinja_tmpl *t)
{
    if (t)
        lmd_arena_destroy(t->arena);
}

const char *jinja_source(const struct jinja_tmpl *t, size_t *len)
{
    *len = t->src_len;
    return t->src;
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
