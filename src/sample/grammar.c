/*
 * The grammar compiler: GBNF text -> struct gram (see grammar.h).
 *
 * A recursive-descent parser writes each rule's elements into its own
 * growable array; groups and repetitions become generated rules, so every
 * repeated thing is one element (a character, a class or a rule
 * reference):
 *   x*      R ::= x R |            (an empty alternative)
 *   x+      x R, with R as for x*
 *   x?      R ::= x |
 *   x{m,n}  m copies of x, then R1 ::= x R2 | , ... , R(n-m) ::= x |
 * The rules are then linked (every reference defined, `root` present),
 * flattened into one array, and checked for left recursion: a rule that
 * can reach itself without consuming a character would make the matcher's
 * expansion loop forever, so such grammars are refused here.
 *
 * Runs once per request on the thread that parses it; it allocates freely
 * and everything it allocates is freed by gram_free.
 */
#include "sample/gram_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRAM_MAX_REPEAT 100000 /* the largest m or n in x{m,n} */
#define GRAM_MAX_NESTING 64    /* groups inside groups: the parser recurses once a level */

struct rule_b {
    const char *name; /* into the text; NULL for a generated rule */
    size_t name_len;
    int parent; /* the named rule a generated one belongs to (for messages) */
    bool defined;
    int ref_line; /* first line that referenced it (for messages) */
    struct gram_el *el;
    uint32_t n, cap;
};

struct comp {
    const char *s, *p, *end;
    struct rule_b *rules;
    int n_rules, cap_rules;
    uint32_t (*rng)[2];
    uint32_t n_rng, cap_rng;
    struct gram_class *cls;
    uint32_t n_cls, cap_cls;
    uint64_t total; /* elements so far */
    int cur;        /* the named rule being parsed */
    int nesting;    /* groups open around the parser's position */
    struct lmd_err *err;
    bool oom;
};

static void line_col(const struct comp *c, const char *at, int *line, int *col)
{
    *line = 1;
    const char *ls = c->s;
    for (const char *q = c->s; q < at && q < c->end; q++)
        if (*q == '\n') {
            (*line)++;
            ls = q + 1;
        }
    *col = (int)(at - ls) + 1;
}

static int syntax(struct comp *c, const char *what)
{
    int line, col;
    line_col(c, c->p, &line, &col);
    if (c->p >= c->end)
        return lmd_err_set(c->err, LMD_EINVAL, "grammar: line %d, column %d: %s, found the end of the grammar", line,
                           col, what);
    char ch = *c->p;
    if (ch >= 0x20 && ch < 0x7f)
        return lmd_err_set(c->err, LMD_EINVAL, "grammar: line %d, column %d: %s, found '%c'", line, col, what, ch);
    return lmd_err_set(c->err, LMD_EINVAL, "grammar: line %d, column %d: %s, found byte 0x%02x", line, col, what,
                       (unsigned char)ch);
}

static int nomem(struct comp *c)
{
    c->oom = true;
    return lmd_err_set(c->err, LMD_ENOMEM, "grammar: out of memory");
}

static bool grow(void **ptr, uint32_t *cap, uint32_t need, size_t size)
{
    if (need <= *cap)
        return true;
    uint32_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*ptr, (size_t)nc * size);
    if (!np)
        return false;
    *ptr = np;
    *cap = nc;
    return true;
}

static int emit(struct comp *c, int rule, uint32_t op, uint32_t v)
{
    struct rule_b *r = &c->rules[rule];
    if (++c->total > GRAM_MAX_ELEMS)
        return lmd_err_set(c->err, LMD_ERANGE, "grammar: more than %u elements after expanding repetitions",
                           GRAM_MAX_ELEMS);
    if (!grow((void **)&r->el, &r->cap, r->n + 1, sizeof *r->el))
        return nomem(c);
    r->el[r->n++] = (struct gram_el){.op = op, .v = v};
    return 0;
}

/* A new rule: named (looked up first) or generated. Returns its index or a
 * negative error. */
static int rule_new(struct comp *c, const char *name, size_t len)
{
    if (c->n_rules == c->cap_rules) {
        int nc = c->cap_rules ? c->cap_rules * 2 : 32;
        struct rule_b *nr = realloc(c->rules, (size_t)nc * sizeof *nr);
        if (!nr)
            return nomem(c);
        c->rules = nr;
        c->cap_rules = nc;
    }
    c->rules[c->n_rules] = (struct rule_b){.name = name, .name_len = len, .parent = name ? c->n_rules : c->cur};
    return c->n_rules++;
}

static int rule_named(struct comp *c, const char *name, size_t len)
{
    for (int i = 0; i < c->n_rules; i++)
        if (c->rules[i].name && c->rules[i].name_len == len && memcmp(c->rules[i].name, name, len) == 0)
            return i;
    return rule_new(c, name, len);
}

static bool is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
}

/* Blanks and comments; newlines too inside a group. */
static void skip_space(struct comp *c, bool newlines)
{
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == ' ' || ch == '\t' || (newlines && (ch == '\n' || ch == '\r'))) {
            c->p++;
        } else if (ch == '#') {
            while (c->p < c->end && *c->p != '\n')
                c->p++;
        } else {
            break;
        }
    }
}

static int hex_digits(struct comp *c, int n, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < n; i++) {
        if (c->p >= c->end)
            return syntax(c, "expected a hexadecimal digit");
        char ch = *c->p;
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            return syntax(c, "expected a hexadecimal digit");
        v = v * 16 + (uint32_t)d;
        c->p++;
    }
    *out = v;
    return 0;
}

/* One character of a literal or class: an escape or a UTF-8 sequence. */
static int parse_char(struct comp *c, uint32_t *cp)
{
    if (c->p >= c->end)
        return syntax(c, "expected a character");
    unsigned char b = (unsigned char)*c->p;
    if (b == '\\') {
        c->p++;
        if (c->p >= c->end)
            return syntax(c, "expected an escape after '\\'");
        char e = *c->p++;
        switch (e) {
        case 'n':
            *cp = '\n';
            return 0;
        case 'r':
            *cp = '\r';
            return 0;
        case 't':
            *cp = '\t';
            return 0;
        case '\\':
        case '"':
        case '\'':
        case '[':
        case ']':
        case '-':
        case '/':
        case '^':
            *cp = (uint32_t)e;
            return 0;
        case 'x':
            return hex_digits(c, 2, cp);
        case 'u':
            return hex_digits(c, 4, cp);
        case 'U': {
            int rc = hex_digits(c, 8, cp);
            if (rc == 0 && *cp > 0x10FFFF) {
                c->p -= 8;
                return syntax(c, "code point above U+10FFFF");
            }
            return rc;
        }
        default:
            c->p--;
            return syntax(c, "unknown escape");
        }
    }
    if (b == '\n' || b == '\r')
        return syntax(c, "expected a character (a literal or class cannot span lines)");
    int n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || c->p + n > c->end)
        return syntax(c, "invalid UTF-8");
    uint32_t v = n == 1 ? b : n == 2 ? (b & 0x1Fu) : n == 3 ? (b & 0x0Fu) : (b & 0x07u);
    for (int i = 1; i < n; i++) {
        unsigned char cb = (unsigned char)c->p[i];
        if ((cb & 0xC0) != 0x80)
            return syntax(c, "invalid UTF-8");
        v = (v << 6) | (cb & 0x3Fu);
    }
    c->p += n;
    *cp = v;
    return 0;
}

static int add_range(struct comp *c, uint32_t lo, uint32_t hi)
{
    if (!grow((void **)&c->rng, &c->cap_rng, c->n_rng + 1, sizeof *c->rng))
        return nomem(c);
    c->rng[c->n_rng][0] = lo;
    c->rng[c->n_rng][1] = hi;
    c->n_rng++;
    return 0;
}

/* [...] or [^...] -> one element (a plain character when it is just one). */
static int parse_class(struct comp *c, struct gram_el *out)
{
    c->p++; /* '[' */
    bool neg = c->p < c->end && *c->p == '^';
    if (neg)
        c->p++;
    uint32_t first = c->n_rng;
    while (c->p < c->end && *c->p != ']') {
        uint32_t lo, hi;
        int rc = parse_char(c, &lo);
        if (rc)
            return rc;
        hi = lo;
        if (c->p + 1 < c->end && *c->p == '-' && c->p[1] != ']') {
            c->p++;
            if ((rc = parse_char(c, &hi)) != 0)
                return rc;
            if (hi < lo)
                return syntax(c, "a class range ends below its start");
        }
        if ((rc = add_range(c, lo, hi)) != 0)
            return rc;
    }
    if (c->p >= c->end)
        return syntax(c, "expected ']' to close the character class");
    c->p++;
    uint32_t n = c->n_rng - first;
    if (n == 0 && !neg) {
        c->p--;
        return syntax(c, "an empty character class matches nothing");
    }
    if (n == 1 && !neg && c->rng[first][0] == c->rng[first][1]) {
        *out = (struct gram_el){.op = GRAM_CHAR, .v = c->rng[first][0]};
        c->n_rng--;
        return 0;
    }
    if (!grow((void **)&c->cls, &c->cap_cls, c->n_cls + 1, sizeof *c->cls))
        return nomem(c);
    c->cls[c->n_cls] = (struct gram_class){.first = first, .n = n, .neg = neg};
    *out = (struct gram_el){.op = GRAM_CLASS, .v = c->n_cls++};
    return 0;
}

static int parse_alternates(struct comp *c, int rule, bool nested);

/* x* as a generated rule R ::= x R | ; returns R's reference. */
static int make_star(struct comp *c, struct gram_el x, struct gram_el *out)
{
    int r = rule_new(c, NULL, 0);
    if (r < 0)
        return r;
    int rc;
    if ((rc = emit(c, r, x.op, x.v)) || (rc = emit(c, r, GRAM_REF, (uint32_t)r)) || (rc = emit(c, r, GRAM_ALT, 0)) ||
        (rc = emit(c, r, GRAM_END, 0)))
        return rc;
    *out = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)r};
    return 0;
}

static int parse_count(struct comp *c, uint32_t *v)
{
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return syntax(c, "expected a repetition count");
    uint64_t n = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        n = n * 10 + (uint64_t)(*c->p++ - '0');
        if (n > GRAM_MAX_REPEAT)
            return syntax(c, "a repetition count above 100000");
    }
    *v = (uint32_t)n;
    return 0;
}

/* A postfix operator after element x: emits what goes before the
 * repeated part into `rule` and leaves the element that stands for the
 * rest in *x (op GRAM_END when nothing is left). */
static int apply_postfix(struct comp *c, int rule, struct gram_el *x)
{
    char op = *c->p++;
    int rc;
    if (op == '*')
        return make_star(c, *x, x);
    if (op == '+') {
        if ((rc = emit(c, rule, x->op, x->v)) != 0)
            return rc;
        return make_star(c, *x, x);
    }
    if (op == '?') {
        int r = rule_new(c, NULL, 0);
        if (r < 0)
            return r;
        if ((rc = emit(c, r, x->op, x->v)) || (rc = emit(c, r, GRAM_ALT, 0)) || (rc = emit(c, r, GRAM_END, 0)))
            return rc;
        *x = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)r};
        return 0;
    }
    /* {m}, {m,}, {m,n} */
    skip_space(c, false);
    uint32_t m, n;
    bool unbounded = false;
    if ((rc = parse_count(c, &m)) != 0)
        return rc;
    skip_space(c, false);
    n = m;
    if (c->p < c->end && *c->p == ',') {
        c->p++;
        skip_space(c, false);
        if (c->p < c->end && *c->p == '}') {
            unbounded = true;
        } else {
            if ((rc = parse_count(c, &n)) != 0)
                return rc;
            if (n < m)
                return syntax(c, "a repetition's maximum is below its minimum");
        }
        skip_space(c, false);
    }
    if (c->p >= c->end || *c->p != '}')
        return syntax(c, "expected '}' to close the repetition");
    c->p++;
    for (uint32_t i = 0; i < m; i++)
        if ((rc = emit(c, rule, x->op, x->v)) != 0)
            return rc;
    if (unbounded)
        return make_star(c, *x, x);
    if (n == m) {
        x->op = GRAM_END;
        return 0;
    }
    /* R1 ::= x R2 | ; ... ; R(n-m) ::= x | — built from the innermost out. */
    int next = -1;
    for (uint32_t i = 0; i < n - m; i++) {
        int r = rule_new(c, NULL, 0);
        if (r < 0)
            return r;
        if ((rc = emit(c, r, x->op, x->v)) != 0)
            return rc;
        if (next >= 0 && (rc = emit(c, r, GRAM_REF, (uint32_t)next)) != 0)
            return rc;
        if ((rc = emit(c, r, GRAM_ALT, 0)) || (rc = emit(c, r, GRAM_END, 0)))
            return rc;
        next = r;
    }
    *x = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)next};
    return 0;
}

static int line_of(const struct comp *c, const char *at)
{
    int line, col;
    line_col(c, at, &line, &col);
    return line;
}

/* Items until '|', ')', the end of the line (outside groups) or the end. */
static int parse_sequence(struct comp *c, int rule, bool nested)
{
    uint32_t lit[256]; /* a literal's code points, before we know whether a postfix follows */
    int rc;
    while (c->p < c->end) {
        char ch = *c->p;
        struct gram_el x = {.op = GRAM_END};
        if (ch == '"') {
            c->p++;
            uint32_t n = 0;
            int lit_rule = -1;
            while (c->p < c->end && *c->p != '"') {
                uint32_t cp;
                if ((rc = parse_char(c, &cp)) != 0)
                    return rc;
                if (n == sizeof lit / sizeof lit[0]) {
                    /* Long literals go to a generated rule as they come. */
                    if (lit_rule < 0 && (lit_rule = rule_new(c, NULL, 0)) < 0)
                        return lit_rule;
                    for (uint32_t i = 0; i < n; i++)
                        if ((rc = emit(c, lit_rule, GRAM_CHAR, lit[i])) != 0)
                            return rc;
                    n = 0;
                }
                lit[n++] = cp;
            }
            if (c->p >= c->end)
                return syntax(c, "expected '\"' to close the literal");
            c->p++;
            skip_space(c, nested);
            bool postfix = c->p < c->end && (*c->p == '*' || *c->p == '+' || *c->p == '?' || *c->p == '{');
            if (lit_rule < 0 && (n == 1 || !postfix)) {
                for (uint32_t i = 0; i + 1 < n; i++)
                    if ((rc = emit(c, rule, GRAM_CHAR, lit[i])) != 0)
                        return rc;
                if (n == 0)
                    continue;
                x = (struct gram_el){.op = GRAM_CHAR, .v = lit[n - 1]};
            } else {
                /* The whole literal is what repeats: make it one rule. */
                if (lit_rule < 0 && (lit_rule = rule_new(c, NULL, 0)) < 0)
                    return lit_rule;
                for (uint32_t i = 0; i < n; i++)
                    if ((rc = emit(c, lit_rule, GRAM_CHAR, lit[i])) != 0)
                        return rc;
                if ((rc = emit(c, lit_rule, GRAM_END, 0)) != 0)
                    return rc;
                x = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)lit_rule};
            }
        } else if (ch == '[') {
            if ((rc = parse_class(c, &x)) != 0)
                return rc;
            skip_space(c, nested);
        } else if (ch == '.') {
            c->p++;
            if (!grow((void **)&c->cls, &c->cap_cls, c->n_cls + 1, sizeof *c->cls))
                return nomem(c);
            c->cls[c->n_cls] = (struct gram_class){.first = 0, .n = 0, .neg = true};
            x = (struct gram_el){.op = GRAM_CLASS, .v = c->n_cls++};
            skip_space(c, nested);
        } else if (ch == '(') {
            /* Each level is a recursion: a client's "((((…" must not
             * reach the end of the stack. */
            if (c->nesting >= GRAM_MAX_NESTING) {
                int line, col;
                line_col(c, c->p, &line, &col);
                return lmd_err_set(c->err, LMD_EINVAL, "grammar: line %d, column %d: groups nested deeper than %d",
                                   line, col, GRAM_MAX_NESTING);
            }
            c->p++;
            int r = rule_new(c, NULL, 0);
            if (r < 0)
                return r;
            skip_space(c, true);
            c->nesting++;
            rc = parse_alternates(c, r, true);
            c->nesting--;
            if (rc != 0)
                return rc;
            if (c->p >= c->end || *c->p != ')')
                return syntax(c, "expected ')' to close the group");
            c->p++;
            if ((rc = emit(c, r, GRAM_END, 0)) != 0)
                return rc;
            x = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)r};
            skip_space(c, nested);
        } else if (is_name_char(ch)) {
            const char *name = c->p;
            while (c->p < c->end && is_name_char(*c->p))
                c->p++;
            int r = rule_named(c, name, (size_t)(c->p - name));
            if (r < 0)
                return r;
            if (!c->rules[r].ref_line)
                c->rules[r].ref_line = line_of(c, name);
            x = (struct gram_el){.op = GRAM_REF, .v = (uint32_t)r};
            skip_space(c, nested);
            if (c->p + 2 < c->end && memcmp(c->p, "::=", 3) == 0) {
                c->p = name;
                return syntax(c, "expected the end of the line before the next rule");
            }
        } else {
            break;
        }
        while (c->p < c->end && (*c->p == '*' || *c->p == '+' || *c->p == '?' || *c->p == '{') && x.op != GRAM_END) {
            if ((rc = apply_postfix(c, rule, &x)) != 0)
                return rc;
            skip_space(c, nested);
        }
        if (x.op != GRAM_END && (rc = emit(c, rule, x.op, x.v)) != 0)
            return rc;
    }
    return 0;
}

static int parse_alternates(struct comp *c, int rule, bool nested)
{
    int rc = parse_sequence(c, rule, nested);
    while (rc == 0 && c->p < c->end && *c->p == '|') {
        c->p++;
        if ((rc = emit(c, rule, GRAM_ALT, 0)) != 0)
            return rc;
        skip_space(c, true);
        rc = parse_sequence(c, rule, nested);
    }
    return rc;
}

static int parse_grammar(struct comp *c)
{
    skip_space(c, true);
    while (c->p < c->end) {
        const char *name = c->p;
        while (c->p < c->end && is_name_char(*c->p))
            c->p++;
        if (c->p == name)
            return syntax(c, "expected a rule name");
        size_t len = (size_t)(c->p - name);
        skip_space(c, false);
        if (c->p + 3 > c->end || memcmp(c->p, "::=", 3) != 0)
            return syntax(c, "expected '::=' after the rule name");
        c->p += 3;
        int r = rule_named(c, name, len);
        if (r < 0)
            return r;
        if (c->rules[r].defined) {
            c->p = name;
            return lmd_err_set(c->err, LMD_EINVAL, "grammar: line %d: rule '%.*s' is defined twice", line_of(c, name),
                               (int)len, name);
        }
        c->rules[r].defined = true;
        c->cur = r;
        skip_space(c, true);
        int rc = parse_alternates(c, r, false);
        if (rc != 0)
            return rc;
        if ((rc = emit(c, r, GRAM_END, 0)) != 0)
            return rc;
        if (c->p < c->end && *c->p != '\n' && *c->p != '\r')
            return syntax(c, "expected the end of the rule");
        skip_space(c, true);
    }
    return 0;
}

/* The name a message uses for rule i: its own, or "a group or repetition
 * in 'parent'" for a generated one. */
static void rule_label(const struct comp *c, int i, char *buf, size_t cap)
{
    const struct rule_b *r = &c->rules[i];
    if (r->name)
        snprintf(buf, cap, "rule '%.*s'", (int)(r->name_len > 64 ? 64 : r->name_len), r->name);
    else
        snprintf(buf, cap, "a group or repetition in rule '%.*s'",
                 (int)(c->rules[r->parent].name_len > 64 ? 64 : c->rules[r->parent].name_len),
                 c->rules[r->parent].name);
}

/* Refuse left recursion: rule A reaches rule B "on the left" when B occurs
 * in an alternative of A after only elements that can match nothing. A
 * cycle of such steps would let the matcher expand forever. */
static int check_left_recursion(struct comp *c, const struct gram *g)
{
    int n = g->n_rules, rc = 0;
    uint8_t *nullable = calloc((size_t)n, 1), *color = calloc((size_t)n, 1);
    uint32_t *edge_first = malloc(((size_t)n + 1) * sizeof *edge_first);
    uint32_t *edge = malloc((size_t)(g->n_el ? g->n_el : 1) * sizeof *edge);
    uint32_t *stack = malloc((size_t)n * 2 * sizeof *stack); /* [depth][rule, next edge] */
    if (!nullable || !color || !edge_first || !edge || !stack) {
        rc = nomem(c);
        goto out;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (int r = 0; r < n; r++) {
            bool alt_ok = true;
            for (uint32_t p = g->rule[r]; !nullable[r]; p++) {
                const struct gram_el *e = &g->el[p];
                if (e->op == GRAM_END || e->op == GRAM_ALT) {
                    if (alt_ok) {
                        nullable[r] = 1;
                        changed = true;
                    }
                    if (e->op == GRAM_END)
                        break;
                    alt_ok = true;
                } else if (e->op != GRAM_REF || !nullable[e->v]) {
                    alt_ok = false;
                }
            }
        }
    }
    uint32_t n_edge = 0;
    for (int r = 0; r < n; r++) {
        edge_first[r] = n_edge;
        bool left = true;
        for (uint32_t p = g->rule[r];; p++) {
            const struct gram_el *e = &g->el[p];
            if (e->op == GRAM_END)
                break;
            if (e->op == GRAM_ALT) {
                left = true;
            } else if (left && e->op == GRAM_REF) {
                edge[n_edge++] = e->v;
                left = nullable[e->v];
            } else {
                left = false;
            }
        }
    }
    edge_first[n] = n_edge;
    for (int s = 0; s < n && rc == 0; s++) {
        if (color[s])
            continue;
        int top = 0;
        stack[0] = (uint32_t)s;
        stack[1] = edge_first[s];
        color[s] = 1;
        while (top >= 0 && rc == 0) {
            uint32_t r = stack[2 * top], k = stack[2 * top + 1];
            if (k == edge_first[r + 1]) {
                color[r] = 2;
                top--;
                continue;
            }
            stack[2 * top + 1] = k + 1;
            uint32_t child = edge[k];
            if (color[child] == 1) {
                char lbl[160];
                rule_label(c, (int)child, lbl, sizeof lbl);
                rc = lmd_err_set(c->err, LMD_EINVAL,
                                 "grammar: %s is left-recursive (it can reach itself without matching a character)",
                                 lbl);
            } else if (color[child] == 0) {
                color[child] = 1;
                top++;
                stack[2 * top] = child;
                stack[2 * top + 1] = edge_first[child];
            }
        }
    }
out:
    free(nullable);
    free(color);
    free(edge_first);
    free(edge);
    free(stack);
    return rc;
}

static void comp_free(struct comp *c)
{
    for (int i = 0; i < c->n_rules; i++)
        free(c->rules[i].el);
    free(c->rules);
    free(c->rng);
    free(c->cls);
}

int gram_compile(struct gram **out, const char *text, size_t len, struct lmd_err *err)
{
    *out = NULL;
    if (len > GRAM_MAX_TEXT)
        return lmd_err_set(err, LMD_ERANGE, "grammar: %zu bytes; at most %u are allowed", len, GRAM_MAX_TEXT);
    struct comp c = {.s = text, .p = text, .end = text + len, .err = err};
    int rc = parse_grammar(&c);
    struct gram *g = NULL;
    if (rc != 0)
        goto fail;
    int root = -1;
    for (int i = 0; i < c.n_rules; i++) {
        struct rule_b *r = &c.rules[i];
        if (r->name && !r->defined) {
            rc = lmd_err_set(err, LMD_EINVAL, "grammar: line %d: rule '%.*s' is used but never defined", r->ref_line,
                             (int)(r->name_len > 64 ? 64 : r->name_len), r->name);
            goto fail;
        }
        if (r->name && r->name_len == 4 && memcmp(r->name, "root", 4) == 0)
            root = i;
    }
    if (root < 0) {
        rc = lmd_err_set(err, LMD_EINVAL, "grammar: no rule named 'root' (the start of the grammar)");
        goto fail;
    }
    g = calloc(1, sizeof *g);
    if (!g) {
        rc = nomem(&c);
        goto fail;
    }
    g->n_rules = c.n_rules;
    g->root = root;
    g->n_el = (uint32_t)c.total;
    g->el = malloc((size_t)(g->n_el ? g->n_el : 1) * sizeof *g->el);
    g->rule = malloc((size_t)g->n_rules * sizeof *g->rule);
    if (!g->el || !g->rule) {
        rc = nomem(&c);
        goto fail;
    }
    uint32_t at = 0;
    for (int i = 0; i < c.n_rules; i++) {
        g->rule[i] = at;
        memcpy(g->el + at, c.rules[i].el, (size_t)c.rules[i].n * sizeof *g->el);
        at += c.rules[i].n;
    }
    LMD_ASSERT(at == g->n_el, "grammar: element count mismatch");
    g->rng = c.rng;
    g->n_rng = c.n_rng;
    g->cls = c.cls;
    g->n_cls = c.n_cls;
    c.rng = NULL;
    c.cls = NULL;
    if ((rc = check_left_recursion(&c, g)) != 0)
        goto fail;
    comp_free(&c);
    *out = g;
    return 0;
fail:
    gram_free(g);
    comp_free(&c);
    return rc;
}

void gram_free(struct gram *g)
{
    if (!g)
        return;
    free(g->el);
    free(g->rule);
    free(g->rng);
    free(g->cls);
    free(g);
}

int gram_n_rules(const struct gram *g) { return g->n_rules; }
