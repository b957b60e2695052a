/*
 * The Jinja parser: tokens -> syntax tree, by recursive descent with
 * Jinja2's operator precedence (loosest first): `x if c else y`, or, and,
 * not, comparisons and in, + -, ~, * / // %, **, unary - +, then postfix
 * (.attr, [item], [a:b:c], call) and filters/tests (|f, is t), which bind
 * tighter than any binary operator: `a + b | trim` is `a + (b | trim)`.
 *
 * Nesting is bounded (JINJA_MAX_NEST) so that a hostile template cannot
 * exhaust the stack; every error names the line and column of the token.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>

#define JINJA_MAX_NEST 200

struct parser {
    struct jctx *x;
    const struct jinja_token *t; /* [n], ends with JT_EOF */
    int n, pos;
    int depth;      /* nesting of expressions and blocks */
    int loop_depth; /* for loops around the current statement (break/continue need one) */
};

static const struct jinja_token *cur(struct parser *p) { return &p->t[p->pos]; }
static const struct jinja_token *peek(struct parser *p, int k)
{
    return &p->t[p->pos + k < p->n ? p->pos + k : p->n - 1];
}
static const struct jinja_token *advance(struct parser *p)
{
    const struct jinja_token *t = &p->t[p->pos];
    if (p->pos < p->n - 1)
        p->pos++;
    return t;
}

static const char *describe(const struct jinja_token *t, char *buf, size_t cap)
{
    static const char *const opname[] = {
        [JO_ADD] = "+",    [JO_SUB] = "-",      [JO_MUL] = "*",      [JO_DIV] = "/",    [JO_FLOORDIV] = "//",
        [JO_MOD] = "%",    [JO_POW] = "**",     [JO_TILDE] = "~",    [JO_EQ] = "==",    [JO_NE] = "!=",
        [JO_LT] = "<",     [JO_LE] = "<=",      [JO_GT] = ">",       [JO_GE] = ">=",    [JO_LPAREN] = "(",
        [JO_RPAREN] = ")", [JO_LBRACKET] = "[", [JO_RBRACKET] = "]", [JO_LBRACE] = "{", [JO_RBRACE] = "}",
        [JO_COMMA] = ",",  [JO_DOT] = ".",      [JO_COLON] = ":",    [JO_PIPE] = "|",   [JO_ASSIGN] = "=",
        [JO_SEMI] = ";",
    };
    switch (t->type) {
    case JT_EOF:
        return "end of template";
    case JT_TEXT:
        return "template text";
    case JT_VAR_BEGIN:
        return "'{{'";
    case JT_VAR_END:
        return "'}}'";
    case JT_BLOCK_BEGIN:
        return "'{%'";
    case JT_BLOCK_END:
        return "'%}'";
    case JT_NAME:
        snprintf(buf, cap, "name '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
        return buf;
    case JT_STRING:
        return "a string";
    case JT_INT:
    case JT_FLOAT:
        return "a number";
    case JT_OP:
        snprintf(buf, cap, "'%s'",
                 (size_t)t->op < sizeof opname / sizeof opname[0] && opname[t->op] ? opname[t->op] : "?");
        return buf;
    }
    return "?";
}

static _Noreturn void fail_at(struct parser *p, const struct jinja_token *t, const char *what)
{
    char buf[80];
    jinja__fail(p->x, t->line, t->col, "%s, found %s", what, describe(t, buf, sizeof buf));
}

static bool is_op(struct parser *p, enum jinja_op op) { return cur(p)->type == JT_OP && cur(p)->op == op; }
static bool tok_is_name(const struct jinja_token *t, const char *name)
{
    return t->type == JT_NAME && t->n == strlen(name) && memcmp(t->s, name, t->n) == 0;
}
static bool is_name(struct parser *p, const char *name) { return tok_is_name(cur(p), name); }

static void expect_op(struct parser *p, enum jinja_op op, const char *what)
{
    if (!is_op(p, op))
        fail_at(p, cur(p), what);
    advance(p);
}

static void expect_block_end(struct parser *p, const char *tag)
{
    if (cur(p)->type != JT_BLOCK_END) {
        char what[64];
        snprintf(what, sizeof what, "expected '%%}' to end the '%s' tag", tag);
        fail_at(p, cur(p), what);
    }
    advance(p);
}

static struct jnode *node(struct parser *p, enum jnode_kind kind, const struct jinja_token *at)
{
    struct jnode *e = jinja__alloc(p->x, sizeof *e);
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->line = at->line;
    e->col = at->col;
    return e;
}

/* A growable list of nodes or names, copied into the arena when done. */
struct vec {
    void **items;
    int n, cap;
};

static void vec_push(struct parser *p, struct vec *v, void *item)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 8;
        void **items = jinja__alloc(p->x, (size_t)cap * sizeof *items);
        if (v->n)
            memcpy(items, v->items, (size_t)v->n * sizeof *items);
        v->items = items;
        v->cap = cap;
    }
    v->items[v->n++] = item;
}

static void enter(struct parser *p)
{
    if (++p->depth > JINJA_MAX_NEST)
        jinja__fail(p->x, cur(p)->line, cur(p)->col, "template nests deeper than %d levels", JINJA_MAX_NEST);
}

static struct jnode *parse_expr(struct parser *p);
static struct jnode *parse_or(struct parser *p);
static struct jnode *parse_unary(struct parser *p, bool with_filter);
static struct jnode *parse_primary(struct parser *p);

/* Positional and keyword arguments of a call, after its '('. */
static void parse_args(struct parser *p, struct jnode *call)
{
    struct vec pos = {0}, kwv = {0}, kwn = {0};
    const struct jinja_token *open = cur(p);
    expect_op(p, JO_LPAREN, "expected '('");
    while (!is_op(p, JO_RPAREN)) {
        if (pos.n + kwv.n > 0)
            expect_op(p, JO_COMMA, "expected ',' or ')' in the argument list");
        if (is_op(p, JO_RPAREN))
            break;
        if (is_op(p, JO_MUL) || is_op(p, JO_POW))
            fail_at(p, cur(p), "*args and **kwargs are not supported");
        if (cur(p)->type == JT_NAME && peek(p, 1)->type == JT_OP && peek(p, 1)->op == JO_ASSIGN) {
            vec_push(p, &kwn, (void *)advance(p));
            advance(p);
            vec_push(p, &kwv, parse_expr(p));
        } else {
            if (kwv.n)
                fail_at(p, cur(p), "positional argument after a keyword argument");
            vec_push(p, &pos, parse_expr(p));
        }
        if (cur(p)->type == JT_EOF)
            fail_at(p, open, "unclosed '('");
    }
    advance(p);
    call->args = (struct jnode **)pos.items;
    call->n_args = pos.n;
    call->args2 = (struct jnode **)kwv.items;
    call->n_args2 = kwv.n;
    call->n_names = kwn.n;
    if (kwn.n) {
        call->names = jinja__alloc(p->x, (size_t)kwn.n * sizeof *call->names);
        call->name_lens = jinja__alloc(p->x, (size_t)kwn.n * sizeof *call->name_lens);
        for (int i = 0; i < kwn.n; i++) {
            const struct jinja_token *t = kwn.items[i];
            call->names[i] = t->s;
            call->name_lens[i] = t->n;
        }
    }
}

static struct jnode *parse_subscript(struct parser *p, struct jnode *obj)
{
    const struct jinja_token *at = advance(p); /* '[' */
    struct jnode *parts[3] = {NULL, NULL, NULL};
    int n = 0;
    bool slice = false;
    for (;;) {
        if (is_op(p, JO_COLON)) {
            if (n == 2)
                fail_at(p, cur(p), "a slice takes at most three parts");
            slice = true;
            n++;
            advance(p);
            continue;
        }
        if (is_op(p, JO_RBRACKET))
            break;
        if (parts[n])
            fail_at(p, cur(p), "expected ':' or ']' in a subscript");
        parts[n] = parse_expr(p);
    }
    advance(p);
    if (!slice) {
        if (!parts[0])
            fail_at(p, at, "empty subscript");
        struct jnode *e = node(p, JN_ITEM, at);
        e->a = obj;
        e->b = parts[0];
        return e;
    }
    struct jnode *e = node(p, JN_SLICE, at);
    e->a = obj;
    e->b = parts[0];
    e->c = parts[1];
    e->d = parts[2];
    return e;
}

static struct jnode *parse_postfix(struct parser *p, struct jnode *e)
{
    for (;;) {
        if (is_op(p, JO_DOT)) {
            const struct jinja_token *at = advance(p);
            if (cur(p)->type == JT_NAME) {
                struct jnode *a = node(p, JN_ATTR, at);
                a->a = e;
                a->s = cur(p)->s;
                a->n = cur(p)->n;
                advance(p);
                e = a;
            } else if (cur(p)->type == JT_INT) {
                struct jnode *a = node(p, JN_ITEM, at);
                a->a = e;
                a->b = node(p, JN_CONST, cur(p));
                a->b->val = jv_int(cur(p)->i);
                advance(p);
                e = a;
            } else {
                fail_at(p, cur(p), "expected a name after '.'");
            }
        } else if (is_op(p, JO_LBRACKET)) {
            enter(p);
            e = parse_subscript(p, e);
            p->depth--;
        } else if (is_op(p, JO_LPAREN)) {
            struct jnode *c = node(p, JN_CALL, cur(p));
            c->a = e;
            enter(p);
            parse_args(p, c);
            p->depth--;
            e = c;
        } else {
            return e;
        }
    }
}

/* Whether the current token can start a test's single bare argument
 * (`is divisibleby 3`, `is sameas false`). */
static bool starts_bare_arg(struct parser *p)
{
    const struct jinja_token *t = cur(p);
    if (t->type == JT_NAME)
        return !tok_is_name(t, "else") && !tok_is_name(t, "or") && !tok_is_name(t, "and") && !tok_is_name(t, "is");
    if (t->type == JT_STRING || t->type == JT_INT || t->type == JT_FLOAT)
        return true;
    return t->type == JT_OP && (t->op == JO_LBRACKET || t->op == JO_LBRACE);
}

static struct jnode *parse_filter_expr(struct parser *p, struct jnode *e)
{
    for (;;) {
        if (is_op(p, JO_PIPE)) {
            advance(p);
            if (cur(p)->type != JT_NAME)
                fail_at(p, cur(p), "expected a filter name after '|'");
            if (!jinja__filter_known(cur(p)->s, cur(p)->n))
                jinja__fail(p->x, cur(p)->line, cur(p)->col, "no filter named '%.*s'",
                            (int)(cur(p)->n > 60 ? 60 : cur(p)->n), cur(p)->s);
            struct jnode *f = node(p, JN_FILTER, cur(p));
            f->a = e;
            f->s = cur(p)->s;
            f->n = cur(p)->n;
            advance(p);
            if (is_op(p, JO_LPAREN)) {
                enter(p);
                parse_args(p, f);
                p->depth--;
            }
            e = f;
        } else if (is_name(p, "is")) {
            advance(p);
            struct jnode *t = node(p, JN_TEST, cur(p));
            if (is_name(p, "not")) {
                t->op = JO_NOT;
                advance(p);
            }
            /* Tests named like keywords (none, true, false) come as names. */
            if (cur(p)->type != JT_NAME)
                fail_at(p, cur(p), "expected a test name after 'is'");
            if (!jinja__test_known(cur(p)->s, cur(p)->n))
                jinja__fail(p->x, cur(p)->line, cur(p)->col, "no test named '%.*s'",
                            (int)(cur(p)->n > 60 ? 60 : cur(p)->n), cur(p)->s);
            t->a = e;
            t->s = cur(p)->s;
            t->n = cur(p)->n;
            t->line = cur(p)->line;
            t->col = cur(p)->col;
            advance(p);
            if (is_op(p, JO_LPAREN)) {
                enter(p);
                parse_args(p, t);
                p->depth--;
            } else if (starts_bare_arg(p)) {
                struct jnode *arg = parse_postfix(p, parse_primary(p));
                t->args = jinja__alloc(p->x, sizeof *t->args);
                t->args[0] = arg;
                t->n_args = 1;
            }
            e = t;
        } else if (is_op(p, JO_LPAREN)) {
            struct jnode *c = node(p, JN_CALL, cur(p));
            c->a = e;
            enter(p);
            parse_args(p, c);
            p->depth--;
            e = c;
        } else {
            return e;
        }
    }
}

static struct jnode *parse_primary(struct parser *p)
{
    const struct jinja_token *t = cur(p);
    struct jnode *e;
    switch (t->type) {
    case JT_NAME:
        advance(p);
        e = node(p, JN_CONST, t);
        if (tok_is_name(t, "true") || tok_is_name(t, "True"))
            e->val = jv_bool(true);
        else if (tok_is_name(t, "false") || tok_is_name(t, "False"))
            e->val = jv_bool(false);
        else if (tok_is_name(t, "none") || tok_is_name(t, "None"))
            e->val = jv_none();
        else {
            e->kind = JN_NAME;
            e->s = t->s;
            e->n = t->n;
        }
        return e;
    case JT_STRING: {
        /* Adjacent literals join, as in Python. */
        size_t total = 0;
        int k = 0;
        while (peek(p, k)->type == JT_STRING)
            total += peek(p, k++)->n;
        e = node(p, JN_CONST, t);
        if (k == 1) {
            e->val = jv_str(t->s, t->n);
        } else {
            char *s = jinja__alloc(p->x, total + 1);
            size_t o = 0;
            for (int i = 0; i < k; i++) {
                memcpy(s + o, peek(p, i)->s, peek(p, i)->n);
                o += peek(p, i)->n;
            }
            e->val = jv_str(s, total);
        }
        for (int i = 0; i < k; i++)
            advance(p);
        return e;
    }
    case JT_INT:
        advance(p);
        e = node(p, JN_CONST, t);
        e->val = jv_int(t->i);
        return e;
    case JT_FLOAT:
        advance(p);
        e = node(p, JN_CONST, t);
        e->val = jv_float(t->f);
        return e;
    case JT_OP:
        break;
    default:
        fail_at(p, t, "expected an expression");
    }
    enter(p);
    struct vec items = {0}, vals = {0};
    if (t->op == JO_LPAREN) {
        advance(p);
        bool tuple = false;
        while (!is_op(p, JO_RPAREN)) {
            if (items.n) {
                expect_op(p, JO_COMMA, "expected ',' or ')'");
                tuple = true;
                if (is_op(p, JO_RPAREN))
                    break;
            }
            vec_push(p, &items, parse_expr(p));
        }
        advance(p);
        if (items.n == 1 && !tuple) {
            e = items.items[0];
        } else {
            e = node(p, JN_TUPLE, t);
            e->args = (struct jnode **)items.items;
            e->n_args = items.n;
        }
    } else if (t->op == JO_LBRACKET) {
        advance(p);
        while (!is_op(p, JO_RBRACKET)) {
            if (items.n) {
                expect_op(p, JO_COMMA, "expected ',' or ']' in a list");
                if (is_op(p, JO_RBRACKET))
                    break;
            }
            vec_push(p, &items, parse_expr(p));
        }
        advance(p);
        e = node(p, JN_LIST, t);
        e->args = (struct jnode **)items.items;
        e->n_args = items.n;
    } else if (t->op == JO_LBRACE) {
        advance(p);
        while (!is_op(p, JO_RBRACE)) {
            if (items.n) {
                expect_op(p, JO_COMMA, "expected ',' or '}' in a dict");
                if (is_op(p, JO_RBRACE))
                    break;
            }
            vec_push(p, &items, parse_expr(p));
            expect_op(p, JO_COLON, "expected ':' after a dict key");
            vec_push(p, &vals, parse_expr(p));
        }
        advance(p);
        e = node(p, JN_DICT, t);
        e->args = (struct jnode **)items.items;
        e->n_args = items.n;
        e->args2 = (struct jnode **)vals.items;
        e->n_args2 = vals.n;
    } else {
        fail_at(p, t, "expected an expression");
    }
    p->depth--;
    return e;
}

static struct jnode *parse_unary(struct parser *p, bool with_filter)
{
    enter(p);
    struct jnode *e;
    if (is_op(p, JO_SUB) || is_op(p, JO_ADD)) {
        e = node(p, JN_UNARY, cur(p));
        e->op = is_op(p, JO_SUB) ? JO_NEG : JO_POS;
        advance(p);
        e->a = parse_unary(p, false);
    } else {
        e = parse_primary(p);
    }
    e = parse_postfix(p, e);
    if (with_filter)
        e = parse_filter_expr(p, e);
    p->depth--;
    return e;
}

static struct jnode *binop(struct parser *p, const struct jinja_token *at, enum jinja_op op, struct jnode *a,
                           struct jnode *b)
{
    struct jnode *e = node(p, JN_BINOP, at);
    e->op = op;
    e->a = a;
    e->b = b;
    return e;
}

static struct jnode *parse_pow(struct parser *p)
{
    struct jnode *e = parse_unary(p, true);
    while (is_op(p, JO_POW)) {
        const struct jinja_token *at = advance(p);
        e = binop(p, at, JO_POW, e, parse_unary(p, true));
    }
    return e;
}

static struct jnode *parse_math2(struct parser *p)
{
    struct jnode *e = parse_pow(p);
    while (is_op(p, JO_MUL) || is_op(p, JO_DIV) || is_op(p, JO_FLOORDIV) || is_op(p, JO_MOD)) {
        const struct jinja_token *at = advance(p);
        e = binop(p, at, at->op, e, parse_pow(p));
    }
    return e;
}

static struct jnode *parse_concat(struct parser *p)
{
    struct jnode *e = parse_math2(p);
    while (is_op(p, JO_TILDE)) {
        const struct jinja_token *at = advance(p);
        e = binop(p, at, JO_TILDE, e, parse_math2(p));
    }
    return e;
}

static struct jnode *parse_math1(struct parser *p)
{
    struct jnode *e = parse_concat(p);
    while (is_op(p, JO_ADD) || is_op(p, JO_SUB)) {
        const struct jinja_token *at = advance(p);
        e = binop(p, at, at->op, e, parse_concat(p));
    }
    return e;
}

static struct jnode *parse_compare(struct parser *p)
{
    struct jnode *e = parse_math1(p);
    for (;;) {
        const struct jinja_token *t = cur(p);
        if (t->type == JT_OP && t->op >= JO_EQ && t->op <= JO_GE) {
            advance(p);
            e = binop(p, t, t->op, e, parse_math1(p));
        } else if (tok_is_name(t, "in")) {
            advance(p);
            e = binop(p, t, JO_IN, e, parse_math1(p));
        } else if (tok_is_name(t, "not") && tok_is_name(peek(p, 1), "in")) {
            advance(p);
            advance(p);
            e = binop(p, t, JO_NOTIN, e, parse_math1(p));
        } else {
            return e;
        }
    }
}

static struct jnode *parse_not(struct parser *p)
{
    if (is_name(p, "not")) {
        struct jnode *e = node(p, JN_UNARY, cur(p));
        e->op = JO_NOT;
        advance(p);
        enter(p);
        e->a = parse_not(p);
        p->depth--;
        return e;
    }
    return parse_compare(p);
}

static struct jnode *parse_and(struct parser *p)
{
    struct jnode *e = parse_not(p);
    while (is_name(p, "and")) {
        struct jnode *a = node(p, JN_AND, advance(p));
        a->a = e;
        a->b = parse_not(p);
        e = a;
    }
    return e;
}

static struct jnode *parse_or(struct parser *p)
{
    struct jnode *e = parse_and(p);
    while (is_name(p, "or")) {
        struct jnode *o = node(p, JN_OR, advance(p));
        o->a = e;
        o->b = parse_and(p);
        e = o;
    }
    return e;
}

static struct jnode *parse_expr(struct parser *p)
{
    enter(p);
    struct jnode *e = parse_or(p);
    while (is_name(p, "if")) {
        struct jnode *c = node(p, JN_COND, advance(p));
        c->a = parse_or(p);
        c->b = e;
        if (is_name(p, "else")) {
            advance(p);
            c->c = parse_expr(p);
        }
        e = c;
    }
    p->depth--;
    return e;
}

/* `a = 1, 2` makes a tuple. */
static struct jnode *parse_tuple_expr(struct parser *p)
{
    const struct jinja_token *at = cur(p);
    struct jnode *e = parse_expr(p);
    if (!is_op(p, JO_COMMA))
        return e;
    struct vec items = {0};
    vec_push(p, &items, e);
    while (is_op(p, JO_COMMA)) {
        advance(p);
        if (cur(p)->type == JT_BLOCK_END || cur(p)->type == JT_VAR_END)
            break;
        vec_push(p, &items, parse_expr(p));
    }
    struct jnode *t = node(p, JN_TUPLE, at);
    t->args = (struct jnode **)items.items;
    t->n_args = items.n;
    return t;
}

/* Names of a for or set target: `a`, `a, b` or `(a, b)`. */
static void parse_targets(struct parser *p, struct jnode *st)
{
    struct vec names = {0};
    bool paren = is_op(p, JO_LPAREN);
    if (paren)
        advance(p);
    do {
        if (names.n)
            advance(p); /* ',' */
        if (cur(p)->type != JT_NAME)
            fail_at(p, cur(p), "expected a variable name");
        vec_push(p, &names, (void *)advance(p));
    } while (is_op(p, JO_COMMA));
    if (paren)
        expect_op(p, JO_RPAREN, "expected ')' after the names");
    st->n_names = names.n;
    st->names = jinja__alloc(p->x, (size_t)names.n * sizeof *st->names);
    st->name_lens = jinja__alloc(p->x, (size_t)names.n * sizeof *st->name_lens);
    for (int i = 0; i < names.n; i++) {
        const struct jinja_token *t = names.items[i];
        st->names[i] = t->s;
        st->name_lens[i] = t->n;
    }
}

static struct jnode *parse_body(struct parser *p, const char *const *ends, int n_ends, int *which,
                                const struct jinja_token *opener);

static struct jnode *parse_if(struct parser *p, const struct jinja_token *at)
{
    static const char *const ends[] = {"elif", "else", "endif"};
    struct jnode *e = node(p, JN_IF, at);
    e->a = parse_expr(p);
    expect_block_end(p, "if");
    int which;
    e->b = parse_body(p, ends, 3, &which, at);
    if (which == 0) {
        const struct jinja_token *elif = peek(p, -1);
        struct jnode *body = node(p, JN_BODY, elif);
        body->args = jinja__alloc(p->x, sizeof *body->args);
        body->args[0] = parse_if(p, elif);
        body->n_args = 1;
        e->c = body;
        return e; /* the inner if consumed the endif */
    }
    if (which == 1) {
        expect_block_end(p, "else");
        e->c = parse_body(p, ends + 2, 1, &which, at);
    }
    expect_block_end(p, "endif");
    return e;
}

static struct jnode *parse_statement(struct parser *p)
{
    const struct jinja_token *at = cur(p);
    if (at->type != JT_NAME)
        fail_at(p, at, "expected a tag name after '{%'");
    advance(p);
    int which;
    if (tok_is_name(at, "if"))
        return parse_if(p, at);
    if (tok_is_name(at, "for")) {
        static const char *const ends[] = {"else", "endfor"};
        struct jnode *e = node(p, JN_FOR, at);
        parse_targets(p, e);
        if (!is_name(p, "in"))
            fail_at(p, cur(p), "expected 'in' in the for loop");
        advance(p);
        e->a = parse_or(p);
        if (is_name(p, "if")) {
            advance(p);
            e->d = parse_expr(p);
        }
        if (is_name(p, "recursive"))
            fail_at(p, cur(p), "recursive loops are not supported");
        expect_block_end(p, "for");
        p->loop_depth++;
        e->b = parse_body(p, ends, 2, &which, at);
        p->loop_depth--;
        if (which == 0) {
            expect_block_end(p, "else");
            e->c = parse_body(p, ends + 1, 1, &which, at);
        }
        expect_block_end(p, "endfor");
        return e;
    }
    if (tok_is_name(at, "set")) {
        static const char *const ends[] = {"endset"};
        struct jnode *e = node(p, JN_SET, at);
        parse_targets(p, e);
        if (e->n_names == 1 && is_op(p, JO_DOT)) {
            /* set ns.member = value */
            advance(p);
            if (cur(p)->type != JT_NAME)
                fail_at(p, cur(p), "expected a name after '.'");
            struct jnode *obj = node(p, JN_NAME, at);
            obj->s = e->names[0];
            obj->n = e->name_lens[0];
            e->a = obj;
            e->s = cur(p)->s;
            e->n = cur(p)->n;
            advance(p);
        }
        if (cur(p)->type == JT_BLOCK_END && !e->a) {
            advance(p);
            e->kind = JN_SETBLOCK;
            e->b = parse_body(p, ends, 1, &which, at);
            expect_block_end(p, "endset");
            return e;
        }
        expect_op(p, JO_ASSIGN, "expected '=' in the set tag");
        e->b = parse_tuple_expr(p);
        expect_block_end(p, "set");
        return e;
    }
    if (tok_is_name(at, "macro")) {
        static const char *const ends[] = {"endmacro"};
        struct jnode *e = node(p, JN_MACRO, at);
        if (cur(p)->type != JT_NAME)
            fail_at(p, cur(p), "expected the macro's name");
        e->s = cur(p)->s;
        e->n = cur(p)->n;
        advance(p);
        struct vec names = {0}, defs = {0};
        expect_op(p, JO_LPAREN, "expected '(' after the macro's name");
        while (!is_op(p, JO_RPAREN)) {
            if (names.n)
                expect_op(p, JO_COMMA, "expected ',' or ')' in the macro's parameters");
            if (cur(p)->type != JT_NAME)
                fail_at(p, cur(p), "expected a parameter name");
            vec_push(p, &names, (void *)advance(p));
            if (is_op(p, JO_ASSIGN)) {
                advance(p);
                vec_push(p, &defs, parse_expr(p));
            } else {
                if (defs.n && defs.items[defs.n - 1])
                    fail_at(p, cur(p), "a parameter without a default after one with a default");
                vec_push(p, &defs, NULL);
            }
        }
        advance(p);
        expect_block_end(p, "macro");
        e->n_names = names.n;
        e->names = jinja__alloc(p->x, (size_t)(names.n ? names.n : 1) * sizeof *e->names);
        e->name_lens = jinja__alloc(p->x, (size_t)(names.n ? names.n : 1) * sizeof *e->name_lens);
        for (int i = 0; i < names.n; i++) {
            const struct jinja_token *t = names.items[i];
            e->names[i] = t->s;
            e->name_lens[i] = t->n;
        }
        e->args2 = (struct jnode **)defs.items;
        e->n_args2 = defs.n;
        int saved = p->loop_depth;
        p->loop_depth = 0;
        e->b = parse_body(p, ends, 1, &which, at);
        p->loop_depth = saved;
        expect_block_end(p, "endmacro");
        return e;
    }
    if (tok_is_name(at, "break") || tok_is_name(at, "continue")) {
        if (!p->loop_depth)
            fail_at(p, at, "'break' and 'continue' belong inside a for loop");
        struct jnode *e = node(p, tok_is_name(at, "break") ? JN_BREAK : JN_CONTINUE, at);
        expect_block_end(p, tok_is_name(at, "break") ? "break" : "continue");
        return e;
    }
    if (tok_is_name(at, "generation")) {
        /* Hugging Face's marker of the assistant's tokens: renders its body. */
        static const char *const ends[] = {"endgeneration"};
        expect_block_end(p, "generation");
        struct jnode *e = parse_body(p, ends, 1, &which, at);
        expect_block_end(p, "endgeneration");
        return e;
    }
    char buf[80];
    jinja__fail(p->x, at->line, at->col, "unknown or misplaced tag %s", describe(at, buf, sizeof buf));
}

/* Statements up to one of the tags in ends (its name consumed; *which says
 * which), or to the end of the template when ends is empty. */
static struct jnode *parse_body(struct parser *p, const char *const *ends, int n_ends, int *which,
                                const struct jinja_token *opener)
{
    enter(p);
    struct jnode *body = node(p, JN_BODY, cur(p));
    struct vec items = {0};
    for (;;) {
        const struct jinja_token *t = cur(p);
        if (t->type == JT_EOF) {
            if (n_ends) {
                jinja__fail(p->x, opener->line, opener->col,
                            "the '%.*s' tag is never closed: expected '{%% %s %%}' before the end of the template",
                            (int)(opener->n > 40 ? 40 : opener->n), opener->s, ends[n_ends - 1]);
            }
            break;
        }
        if (t->type == JT_TEXT) {
            struct jnode *e = node(p, JN_TEXT, t);
            e->s = t->s;
            e->n = t->n;
            vec_push(p, &items, e);
            advance(p);
            continue;
        }
        if (t->type == JT_VAR_BEGIN) {
            advance(p);
            struct jnode *e = node(p, JN_OUTPUT, t);
            e->a = parse_expr(p);
            if (cur(p)->type != JT_VAR_END)
                fail_at(p, cur(p), "expected '}}'");
            advance(p);
            vec_push(p, &items, e);
            continue;
        }
        if (t->type != JT_BLOCK_BEGIN)
            fail_at(p, t, "expected text, '{{' or '{%'");
        const struct jinja_token *name = peek(p, 1);
        int k = 0;
        for (; k < n_ends; k++)
            if (tok_is_name(name, ends[k]))
                break;
        if (k < n_ends) {
            advance(p);
            advance(p);
            *which = k;
            break;
        }
        advance(p);
        vec_push(p, &items, parse_statement(p));
    }
    body->args = (struct jnode **)items.items;
    body->n_args = items.n;
    p->depth--;
    return body;
}

struct jnode *jinja__parse_tokens(struct jctx *x, const struct jinja_token *toks, int n)
{
    struct parser p = {.x = x, .t = toks, .n = n};
    int which;
    return parse_body(&p, NULL, 0, &which, toks);
}
