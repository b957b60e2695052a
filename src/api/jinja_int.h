/*
 * Internals shared by the files of the Jinja engine (jinja.h): tokens
 * (jinja_lex.c), the syntax tree (jinja_parse.c), values with their Python
 * semantics (jinja_value.c), operators and member access (jinja_ops.c),
 * the evaluator and entry points (jinja_eval.c), global functions and
 * methods (jinja_builtins.c), Python's str operations (jinja_str.c), and
 * filters and tests (jinja_filters.c).
 *
 * Errors inside the engine unwind with longjmp to the entry point
 * (jinja_parse or jinja_render), like Lua's: every allocation comes from
 * one arena that the entry point frees, so unwinding leaks nothing, and the
 * hundreds of call sites that can fail need no error plumbing.
 */
#pragma once

#include "api/jinja.h"
#include "core/arena.h"
#include "core/buf.h"

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- tokens ------------------------------------------------------------- */

enum jinja_tok {
    JT_EOF = 0,
    JT_TEXT,        /* template text, whitespace control already applied */
    JT_VAR_BEGIN,   /* {{ */
    JT_VAR_END,     /* }} */
    JT_BLOCK_BEGIN, /* {% */
    JT_BLOCK_END,   /* %} */
    JT_NAME,
    JT_STRING, /* s/n: the decoded text */
    JT_INT,
    JT_FLOAT,
    JT_OP, /* op: one of enum jinja_op */
};

enum jinja_op {
    JO_NONE = 0,
    JO_ADD,
    JO_SUB,
    JO_MUL,
    JO_DIV,
    JO_FLOORDIV,
    JO_MOD,
    JO_POW,
    JO_TILDE,
    JO_EQ,
    JO_NE,
    JO_LT,
    JO_LE,
    JO_GT,
    JO_GE,
    JO_IN,
    JO_NOTIN,
    JO_LPAREN,
    JO_RPAREN,
    JO_LBRACKET,
    JO_RBRACKET,
    JO_LBRACE,
    JO_RBRACE,
    JO_COMMA,
    JO_DOT,
    JO_COLON,
    JO_PIPE,
    JO_ASSIGN,
    JO_SEMI,
    JO_NOT, /* unary operators in the tree */
    JO_NEG,
    JO_POS,
};

struct jinja_token {
    enum jinja_tok type;
    int line, col;
    const char *s; /* text, name or decoded string (arena) */
    size_t n;
    int64_t i;
    double f;
    enum jinja_op op;
};

/* ---- values --------------------------------------------------------------- */

enum jv_type {
    JV_UNDEF = 0, /* s/n: what was looked up, for messages */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,   /* also tuples (flag tuple) */
    JV_DICT,   /* insertion-ordered, immutable once built */
    JV_NS,     /* namespace(): a dict whose members `set ns.x` changes */
    JV_LOOP,   /* the `loop` of a for loop */
    JV_FUNC,   /* a global function: fn */
    JV_METHOD, /* a bound method: self + fn */
    JV_MACRO,  /* macro: node */
};

struct jv_list;
struct jv_dict;
struct jv_loop;
struct jnode;

struct jv {
    uint8_t type;  /* enum jv_type */
    uint8_t tuple; /* JV_LIST: written (a, b) by repr */
    int fn;        /* JV_FUNC / JV_METHOD: which built-in */
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *s; /* UTF-8, not NUL-terminated; arena or template lifetime */
            size_t n;      /* bytes */
        } str;
        struct jv_list *list;
        struct jv_dict *dict;
        struct jv_loop *loop;
        const struct jnode *macro;
        const struct jv *self; /* JV_METHOD */
    } u;
};

struct jv_list {
    struct jv *items; /* [n] */
    size_t n;
};

struct jv_dict {
    struct jv *keys; /* [n], cap entries allocated */
    struct jv *vals; /* [n] */
    size_t n, cap;
};

struct jv_loop {
    const struct jv *items; /* [length], the sequence iterated */
    int64_t index0, length;
};

/* ---- the syntax tree ------------------------------------------------------ */

enum jnode_kind {
    /* expressions */
    JN_CONST,  /* val */
    JN_NAME,   /* s/n */
    JN_ATTR,   /* a.s */
    JN_ITEM,   /* a[b] */
    JN_SLICE,  /* a[b:c:d], each of b c d may be NULL */
    JN_CALL,   /* a(args; kwargs) */
    JN_FILTER, /* a | s(args; kwargs) */
    JN_TEST,   /* a is [not] s(args) — op JO_NOT when negated */
    JN_BINOP,  /* a op b */
    JN_UNARY,  /* op a */
    JN_AND,    /* a and b */
    JN_OR,     /* a or b */
    JN_COND,   /* b if a else c (c may be NULL) */
    JN_LIST,   /* [args] */
    JN_TUPLE,  /* (args) */
    JN_DICT,   /* {args: args2} */
    /* statements */
    JN_BODY,     /* args: the statements in order */
    JN_TEXT,     /* s/n */
    JN_OUTPUT,   /* {{ a }} */
    JN_IF,       /* if a: b (body) else c (body, an elif is an IF inside) */
    JN_FOR,      /* for names in a [if d]: b else c */
    JN_SET,      /* set names / a.s (when a is set: namespace member) = b */
    JN_SETBLOCK, /* set names: b (body) endset */
    JN_MACRO,    /* macro s(names = args defaults): b */
    JN_BREAK,
    JN_CONTINUE,
};

struct jnode {
    enum jnode_kind kind;
    enum jinja_op op;
    int line, col;
    const char *s;
    size_t n;
    struct jnode *a, *b, *c, *d;
    struct jnode **args; /* [n_args] */
    int n_args;
    struct jnode **args2; /* [n_args2]: keyword values, dict values, macro defaults (NULL = none) */
    int n_args2;
    const char **names; /* [n_names]: keyword names, loop/set targets, macro parameters */
    size_t *name_lens;  /* [n_names] */
    int n_names;
    struct jv val;
};

struct jinja_tmpl {
    struct lmd_arena *arena; /* owns every node and string below */
    struct jnode *root;      /* JN_BODY */
    const char *src;         /* [src_len] the template's text, NUL-terminated (jinja_source) */
    size_t src_len;
};

/* ---- shared state of a parse or a render ----------------------------------- */

struct jinja_frame;

struct jctx {
    struct lmd_arena *arena;
    size_t max_memory;
    struct jinja_err *err;
    jmp_buf jb;
    int code; /* the LMD_E* code to return after a longjmp */
    /* render only */
    struct lmd_buf *out; /* where output goes now (a macro call swaps in its own) */
    size_t max_output;
    long steps, max_steps;
    int depth; /* nested evaluation, bounded so hostile input cannot blow the stack */
    int64_t now;
    struct jinja_frame *frame; /* innermost scope */
    struct jinja_frame *root;  /* the template's top-level scope (macros see it) */
    int loop_ctl;              /* 0, JN_BREAK or JN_CONTINUE while unwinding a loop body */
    const struct jnode *cur;   /* the node being evaluated: where a limit error points */
};

/* Fail at a position: fills ctx->err and longjmps (never returns). */
_Noreturn void jinja__fail(struct jctx *x, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fail with a code other than LMD_EINVAL (a limit hit, out of memory). */
_Noreturn void jinja__fail_code(struct jctx *x, int code, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void *jinja__alloc(struct jctx *x, size_t n);

/* Lexer: the whole source to tokens ([*n], arena), whitespace control applied. */
struct jinja_token *jinja__lex(struct jctx *x, const char *src, size_t len, int *n);
/* Parser: tokens to a JN_BODY tree. */
struct jnode *jinja__parse_tokens(struct jctx *x, const struct jinja_token *toks, int n);

/* ---- values (jinja_value.c) ------------------------------------------------- */

static inline struct jv jv_undef(const char *name, size_t n)
{
    struct jv v = {.type = JV_UNDEF};
    v.u.str.s = name;
    v.u.str.n = n;
    return v;
}
static inline struct jv jv_none(void) { return (struct jv){.type = JV_NONE}; }
static inline struct jv jv_bool(bool b) { return (struct jv){.type = JV_BOOL, .u.b = b}; }
static inline struct jv jv_int(int64_t i) { return (struct jv){.type = JV_INT, .u.i = i}; }
static inline struct jv jv_float(double f) { return (struct jv){.type = JV_FLOAT, .u.f = f}; }
static inline struct jv jv_str(const char *s, size_t n)
{
    struct jv v = {.type = JV_STR};
    v.u.str.s = s;
    v.u.str.n = n;
    return v;
}

static inline bool jv_is_num(const struct jv *v)
{
    return v->type == JV_INT || v->type == JV_FLOAT || v->type == JV_BOOL;
}
static inline double jv_num(const struct jv *v)
{
    return v->type == JV_FLOAT ? v->u.f : v->type == JV_INT ? (double)v->u.i : (double)v->u.b;
}
static inline int64_t jv_inum(const struct jv *v) { return v->type == JV_INT ? v->u.i : (int64_t)v->u.b; }

const char *jv_type_name(const struct jv *v);
bool jv_truthy(const struct jv *v);
bool jv_equal(const struct jv *a, const struct jv *b);
/* Python's ordering: <0, 0, >0; fails for types Python cannot order. */
int jv_compare(struct jctx *x, const struct jnode *at, const struct jv *a, const struct jv *b);
/* str(v) as Python writes it, appended to b (undefined writes nothing). */
void jv_write_str(struct jctx *x, struct lmd_buf *b, const struct jv *v);
/* str(v) as a value (strings are returned as they are). */
struct jv jv_to_str(struct jctx *x, const struct jv *v);
/* json.dumps(v, ensure_ascii=False, indent=indent (<0 = None), separators, sort_keys). */
void jv_write_json(struct jctx *x, const struct jnode *at, struct lmd_buf *b, const struct jv *v, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys);
/* A JSON document as a value (arena). */
struct jv jv_from_json(struct jctx *x, const struct json_t *j);

struct jv jv_list_new(struct jctx *x, size_t n); /* n items, all none */
struct jv jv_dict_new(struct jctx *x, size_t cap);
/* Set key to val (replacing an equal key). */
void jv_dict_set(struct jctx *x, struct jv_dict *d, struct jv key, struct jv val);
/* The value under key, or NULL. */
struct jv *jv_dict_get(const struct jv_dict *d, const struct jv *key);
struct jv *jv_dict_get_str(const struct jv_dict *d, const char *s, size_t n);

/* UTF-8 code points of s[0, n); invalid bytes count one each. */
size_t jv_utf8_len(const char *s, size_t n);
/* Byte offset of code point i (i <= length). */
size_t jv_utf8_offset(const char *s, size_t n, size_t i);
void jinja__append(struct jctx *x, struct lmd_buf *b, const char *s, size_t n);

/* ---- evaluation (jinja_eval.c) and built-ins (jinja_builtins.c) ----------- */

struct jv jinja__eval(struct jctx *x, const struct jnode *e);
/* e (JN_BINOP) and e (JN_SLICE), evaluated (jinja_ops.c). */
struct jv jinja__binop(struct jctx *x, const struct jnode *e);
struct jv jinja__slice(struct jctx *x, const struct jnode *e);
/* Fails with "'name' is undefined" for the undefined value u. */
_Noreturn void jinja__undefined_error(struct jctx *x, const struct jnode *at, const struct jv *u);
/* a op b for the arithmetic operators (+ - * / // % **), Python's rules. */
struct jv jinja__arith(struct jctx *x, const struct jnode *at, enum jinja_op op, const struct jv *a,
                       const struct jv *b);
/* Look a member up as Jinja does for a.b: attribute first, then item. */
struct jv jinja__getattr(struct jctx *x, const struct jnode *at, const struct jv *obj, const char *name, size_t n);
/* a[b]: item first, then attribute. */
struct jv jinja__getitem(struct jctx *x, const struct jnode *at, const struct jv *obj, const struct jv *key);
/* The items a for loop walks over v (dicts give their keys). */
struct jv_list jinja__iterate(struct jctx *x, const struct jnode *at, const struct jv *v);
/* Call a macro: args/kwargs evaluated. */
struct jv jinja__call_macro(struct jctx *x, const struct jnode *at, const struct jv *macro, const struct jv *args,
                            int n_args, const char *const *kw, const size_t *kw_len, const struct jv *kwv, int n_kw);

struct jinja_args {
    const struct jv *pos; /* [n_pos] */
    int n_pos;
    const char *const *kw; /* [n_kw] names */
    const size_t *kw_len;
    const struct jv *kwv; /* [n_kw] values */
    int n_kw;
};

static inline bool jinja__name_is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* Built-in functions, methods, filters and tests, by name. */
bool jinja__filter_known(const char *name, size_t n);
bool jinja__test_known(const char *name, size_t n);
int jinja__func_lookup(const char *name, size_t n);                          /* global functions: -1 when unknown */
int jinja__method_lookup(const struct jv *self, const char *name, size_t n); /* -1 when none */
struct jv jinja__call_builtin(struct jctx *x, const struct jnode *at, int fn, const struct jv *self,
                              const struct jinja_args *a);
struct jv jinja__filter(struct jctx *x, const struct jnode *at, const char *name, size_t n, const struct jv *v,
                        const struct jinja_args *a);
bool jinja__test(struct jctx *x, const struct jnode *at, const char *name, size_t n, const struct jv *v,
                 const struct jinja_args *a);

/* Argument i by position, else by keyword name (NULL = none), else NULL. */
const struct jv *jinja__arg(const struct jinja_args *a, int i, const char *name);
void jinja__max_args(struct jctx *x, const struct jnode *at, const struct jinja_args *a, int n, const char *what);
/* v, which must be a string (fails naming `what` otherwise). */
const struct jv *jinja__need_str(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what);
int64_t jinja__need_int(struct jctx *x, const struct jnode *at, const struct jv *v, const char *what);
struct jv jinja__copy_str(struct jctx *x, const char *s, size_t n);
struct jv jinja__list_copy(struct jctx *x, const struct jv_list *l);
/* d.items(): a list of (key, value) tuples. */
struct jv jinja__dict_items(struct jctx *x, const struct jv_dict *d);

/* ---- Python's str operations (jinja_str.c) ------------------------------------ */

/* str.strip / lstrip / rstrip; chars NULL = whitespace. */
struct jv jinja__strip(const struct jv *s, const struct jv *chars, bool left, bool right);
const char *jinja__find_sub(const char *s, size_t n, const char *sub, size_t m);
/* mode: 0 lower, 1 upper, 2 title, 3 capitalize. */
struct jv jinja__case_map(struct jctx *x, const struct jv *s, int mode);
/* count < 0 = all. */
struct jv jinja__replace(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *old,
                         const struct jv *new_, int64_t count);
/* sep NULL or none = runs of whitespace; maxsplit < 0 = all. */
struct jv jinja__split(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *sep,
                       int64_t maxsplit);
bool jinja__affix(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *a, bool start);
/* str(item) for each item (its attribute attr when given), sep between. */
struct jv jinja__join(struct jctx *x, const struct jnode *at, const struct jv *seq, const struct jv *sep,
                      const struct jv *attr);
