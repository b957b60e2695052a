/*
 * The Jinja lexer: template source -> tokens. Whitespace control happens
 * here, as in Jinja2: `{%-`/`-%}` strip the whitespace on that side,
 * trim_blocks drops the newline after a block or comment tag, and
 * lstrip_blocks drops the spaces and tabs before a block or comment tag
 * that starts its line (`{%+` / `+%}` turn either off for one tag). Like
 * Jinja2, the source's line breaks become "\n" first and one trailing line
 * break is dropped (keep_trailing_newline off).
 *
 * String literals are decoded here with Python's escapes.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lexer {
    struct jctx *x;
    const char *s; /* normalized source [n] */
    size_t n, pos;
    /* position cursor: line/col of `at`, advanced forward only */
    size_t at;
    int line, col;
    struct jinja_token *toks; /* [n_toks], cap allocated */
    int n_toks, cap;
};

static void seek(struct lexer *l, size_t pos)
{
    if (pos < l->at) {
        l->at = 0;
        l->line = 1;
        l->col = 1;
    }
    for (; l->at < pos; l->at++) {
        if (l->s[l->at] == '\n') {
            l->line++;
            l->col = 1;
        } else if (((unsigned char)l->s[l->at] & 0xc0) != 0x80) {
            l->col++;
        }
    }
}

static _Noreturn void lex_fail(struct lexer *l, size_t pos, const char *msg)
{
    seek(l, pos);
    jinja__fail(l->x, l->line, l->col, "%s", msg);
}

static struct jinja_token *push(struct lexer *l, enum jinja_tok type, size_t pos)
{
    if (l->n_toks == l->cap) {
        int cap = l->cap ? l->cap * 2 : 256;
        struct jinja_token *t = jinja__alloc(l->x, (size_t)cap * sizeof *t);
        if (l->n_toks)
            memcpy(t, l->toks, (size_t)l->n_toks * sizeof *t);
        l->toks = t;
        l->cap = cap;
    }
    seek(l, pos);
    struct jinja_token *t = &l->toks[l->n_toks++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->line = l->line;
    t->col = l->col;
    return t;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool starts(const struct lexer *l, size_t pos, const char *lit)
{
    size_t m = strlen(lit);
    return pos + m <= l->n && memcmp(l->s + pos, lit, m) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *o, unsigned long cp)
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

/* A quoted string at l->pos, decoded with Python's escapes (what Jinja2
 * does with unicode-escape). No escape makes the text longer than its
 * source, so the output fits in the source's length. */
static void lex_string(struct lexer *l)
{
    size_t start = l->pos;
    char q = l->s[l->pos++];
    char *o = jinja__alloc(l->x, l->n - l->pos + 1);
    size_t k = 0;
    for (;;) {
        if (l->pos >= l->n)
            lex_fail(l, start, "unterminated string");
        char c = l->s[l->pos++];
        if (c == q)
            break;
        if (c != '\\') {
            o[k++] = c;
            continue;
        }
        if (l->pos >= l->n)
            lex_fail(l, start, "unterminated string");
        char e = l->s[l->pos++];
        int digits = 0;
        switch (e) {
        case '\n':
            break;
        case '\\':
        case '\'':
        case '"':
            o[k++] = e;
            break;
        case 'a':
            o[k++] = '\a';
            break;
        case 'b':
            o[k++] = '\b';
            break;
        case 'f':
            o[k++] = '\f';
            break;
        case 'n':
            o[k++] = '\n';
            break;
        case 'r':
            o[k++] = '\r';
            break;
        case 't':
            o[k++] = '\t';
            break;
        case 'v':
            o[k++] = '\v';
            break;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        case 'N':
            lex_fail(l, l->pos - 2, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                unsigned long v = (unsigned long)(e - '0');
                for (int i = 0; i < 2 && l->pos < l->n && l->s[l->pos] >= '0' && l->s[l->pos] <= '7'; i++)
                    v = v * 8 + (unsigned long)(l->s[l->pos++] - '0');
                k += put_utf8(o + k, v);
            } else {
                o[k++] = '\\';
                o[k++] = e;
            }
        }
        if (digits) {
            unsigned long v = 0;
            for (int i = 0; i < digits; i++) {
                int h = l->pos < l->n ? hexval(l->s[l->pos]) : -1;
                if (h < 0)
                    lex_fail(l, l->pos, "truncated \\x, \\u or \\U escape in a string");
                v = v * 16 + (unsigned long)h;
                l->pos++;
            }
            if (v > 0x10ffff)
                lex_fail(l, l->pos, "escape names a code point past U+10FFFF");
            k += put_utf8(o + k, v);
        }
    }
    struct jinja_token *t = push(l, JT_STRING, start);
    t->s = o;
    t->n = k;
}

static void lex_number(struct lexer *l)
{
    size_t start = l->pos;
    char buf[64];
    size_t k = 0;
    bool is_float = false;
    const char *s = l->s;
    while (l->pos < l->n && ((s[l->pos] >= '0' && s[l->pos] <= '9') || s[l->pos] == '_')) {
        if (s[l->pos] != '_' && k < sizeof buf - 1)
            buf[k++] = s[l->pos];
        l->pos++;
    }
    if (l->pos + 1 < l->n && s[l->pos] == '.' && s[l->pos + 1] >= '0' && s[l->pos + 1] <= '9') {
        is_float = true;
        buf[k < sizeof buf - 1 ? k++ : k] = '.';
        l->pos++;
        while (l->pos < l->n && ((s[l->pos] >= '0' && s[l->pos] <= '9') || s[l->pos] == '_')) {
            if (s[l->pos] != '_' && k < sizeof buf - 1)
                buf[k++] = s[l->pos];
            l->pos++;
        }
    }
    if (l->pos < l->n && (s[l->pos] == 'e' || s[l->pos] == 'E')) {
        size_t p = l->pos + 1;
        if (p < l->n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p < l->n && s[p] >= '0' && s[p] <= '9') {
            is_float = true;
            while (l->pos < p && k < sizeof buf - 1)
                buf[k++] = s[l->pos++];
            l->pos = p;
            while (l->pos < l->n && s[l->pos] >= '0' && s[l->pos] <= '9') {
                if (k < sizeof buf - 1)
                    buf[k++] = s[l->pos];
                l->pos++;
            }
        }
    }
    if (k >= sizeof buf - 1)
        lex_fail(l, start, "number literal too long");
    buf[k] = 0;
    struct jinja_token *t = push(l, is_float ? JT_FLOAT : JT_INT, start);
    if (is_float) {
        t->f = strtod(buf, NULL);
    } else {
        unsigned long long v = strtoull(buf, NULL, 10);
        if (k > 19 || v > INT64_MAX)
            lex_fail(l, start, "integer literal out of range");
        t->i = (int64_t)v;
    }
}

static const struct {
    const char *s;
    enum jinja_op op;
} ops[] = {
    {"//", JO_FLOORDIV}, {"**", JO_POW},   {"==", JO_EQ},    {"!=", JO_NE},    {"<=", JO_LE},      {">=", JO_GE},
    {"+", JO_ADD},       {"-", JO_SUB},    {"*", JO_MUL},    {"/", JO_DIV},    {"%", JO_MOD},      {"~", JO_TILDE},
    {"<", JO_LT},        {">", JO_GT},     {"(", JO_LPAREN}, {")", JO_RPAREN}, {"[", JO_LBRACKET}, {"]", JO_RBRACKET},
    {"{", JO_LBRACE},    {"}", JO_RBRACE}, {",", JO_COMMA},  {".", JO_DOT},    {":", JO_COLON},    {"|", JO_PIPE},
    {"=", JO_ASSIGN},    {";", JO_SEMI},
};

enum tag_kind { TAG_VAR, TAG_BLOCK, TAG_COMMENT };

/* Tokens of one tag from l->pos (just past its opener and sign) to its
 * end; leaves l->pos past the end marker and any whitespace it strips.
 * Returns whether the match ended in a newline (for lstrip_blocks). */
static bool lex_tag(struct lexer *l, enum tag_kind kind, size_t open_pos)
{
    const char *close = kind == TAG_VAR ? "}}" : kind == TAG_BLOCK ? "%}" : "#}";
    if (kind == TAG_COMMENT) {
        const char *e = NULL;
        for (size_t p = l->pos; p + 1 < l->n; p++)
            if (l->s[p] == '#' && l->s[p + 1] == '}') {
                e = l->s + p;
                break;
            }
        if (!e)
            lex_fail(l, open_pos, "unterminated comment: no '#}'");
        size_t end = (size_t)(e - l->s);
        char sign = end > l->pos ? l->s[end - 1] : 0;
        l->pos = end + 2;
        if (sign == '-') {
            while (l->pos < l->n && is_space(l->s[l->pos]))
                l->pos++;
        } else if (sign != '+' && l->pos < l->n && l->s[l->pos] == '\n') {
            l->pos++;
        }
        return l->pos > 0 && l->s[l->pos - 1] == '\n';
    }
    int depth = 0; /* open brackets, so that a dict's "}}" inside {{ }} is not the end */
    for (;;) {
        while (l->pos < l->n && is_space(l->s[l->pos]))
            l->pos++;
        if (l->pos >= l->n)
            lex_fail(l, open_pos, kind == TAG_VAR ? "unterminated '{{': no '}}'" : "unterminated '{%': no '%}'");
        char c = l->s[l->pos];
        if (depth == 0 && (c == '-' || c == '+') && starts(l, l->pos + 1, close)) {
            push(l, kind == TAG_VAR ? JT_VAR_END : JT_BLOCK_END, l->pos);
            l->pos += 3;
            if (c == '-')
                while (l->pos < l->n && is_space(l->s[l->pos]))
                    l->pos++;
            return l->pos > 0 && l->s[l->pos - 1] == '\n';
        }
        if (starts(l, l->pos, close) && (depth == 0 || kind == TAG_BLOCK)) {
            push(l, kind == TAG_VAR ? JT_VAR_END : JT_BLOCK_END, l->pos);
            l->pos += 2;
            if (kind == TAG_BLOCK && l->pos < l->n && l->s[l->pos] == '\n')
                l->pos++;
            return l->pos > 0 && l->s[l->pos - 1] == '\n';
        }
        if (c == '\'' || c == '"') {
            lex_string(l);
            continue;
        }
        if (c >= '0' && c <= '9') {
            lex_number(l);
            continue;
        }
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            size_t start = l->pos;
            while (l->pos < l->n &&
                   (l->s[l->pos] == '_' || (l->s[l->pos] >= 'a' && l->s[l->pos] <= 'z') ||
                    (l->s[l->pos] >= 'A' && l->s[l->pos] <= 'Z') || (l->s[l->pos] >= '0' && l->s[l->pos] <= '9')))
                l->pos++;
            struct jinja_token *t = push(l, JT_NAME, start);
            t->s = l->s + start;
            t->n = l->pos - start;
            continue;
        }
        size_t i = 0;
        for (; i < sizeof ops / sizeof ops[0]; i++)
            if (starts(l, l->pos, ops[i].s))
                break;
        if (i == sizeof ops / sizeof ops[0]) {
            char msg[64];
            if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
                snprintf(msg, sizeof msg, "unexpected character '%c'", c);
            else
                snprintf(msg, sizeof msg, "unexpected byte 0x%02x", (unsigned char)c);
            lex_fail(l, l->pos, msg);
        }
        struct jinja_token *t = push(l, JT_OP, l->pos);
        t->op = ops[i].op;
        if (t->op == JO_LPAREN || t->op == JO_LBRACKET || t->op == JO_LBRACE)
            depth++;
        else if ((t->op == JO_RPAREN || t->op == JO_RBRACKET || t->op == JO_RBRACE) && depth > 0)
            depth--;
        l->pos += strlen(ops[i].s);
    }
}

struct jinja_token *jinja__lex(struct jctx *x, const char *src, size_t len, int *n)
{
    /* Line breaks to "\n" and one trailing break dropped, as Jinja2 does
     * before lexing. */
    char *s = jinja__alloc(x, len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k > 0 && s[k - 1] == '\n')
        k--;
    s[k] = 0;
    struct lexer l = {.x = x, .s = s, .n = k, .line = 1, .col = 1};
    bool line_starting = true;
    while (l.pos < l.n) {
        /* The next tag opener. */
        size_t p = l.pos;
        enum tag_kind kind = TAG_VAR;
        for (; p + 1 < l.n; p++) {
            if (s[p] == '{' && (s[p + 1] == '{' || s[p + 1] == '%' || s[p + 1] == '#')) {
                kind = s[p + 1] == '{' ? TAG_VAR : s[p + 1] == '%' ? TAG_BLOCK : TAG_COMMENT;
                break;
            }
        }
        if (p + 1 >= l.n) {
            struct jinja_token *t = push(&l, JT_TEXT, l.pos);
            t->s = s + l.pos;
            t->n = l.n - l.pos;
            break;
        }
        char sign = p + 2 < l.n ? s[p + 2] : 0;
        size_t text_end = p;
        if (sign == '-') {
            while (text_end > l.pos && is_space(s[text_end - 1]))
                text_end--;
        } else if (sign != '+' && kind != TAG_VAR) {
            /* lstrip_blocks: drop the indentation before a tag that starts its line. */
            size_t lp = text_end;
            while (lp > l.pos && s[lp - 1] != '\n')
                lp--;
            if (lp > l.pos || line_starting) {
                size_t q = lp;
                while (q < text_end && (s[q] == ' ' || s[q] == '\t'))
                    q++;
                if (q == text_end)
                    text_end = lp;
            }
        }
        if (text_end > l.pos) {
            struct jinja_token *t = push(&l, JT_TEXT, l.pos);
            t->s = s + l.pos;
            t->n = text_end - l.pos;
        }
        if (kind != TAG_COMMENT)
            push(&l, kind == TAG_VAR ? JT_VAR_BEGIN : JT_BLOCK_BEGIN, p);
        l.pos = p + 2 + (sign == '-' || sign == '+');
        line_starting = lex_tag(&l, kind, p);
    }
    push(&l, JT_EOF, l.n);
    *n = l.n_toks;
    return l.toks;
}
