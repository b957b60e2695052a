/*
 * A cursor over one JSON text that reads the few fields of a streamed
 * chunk and skips the rest (sse_json.h). Strings are unescaped (\uXXXX,
 * surrogate pairs included, into UTF-8) only where they are kept.
 */
#include "engine/remote/sse_json.h"

#include <stdint.h>
#include <string.h>

#define SSE_JSON_DEPTH 64

struct cur {
    const char *p, *end;
    int depth;
};

static void ws(struct cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool eat(struct cur *c, char ch)
{
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static int hex4(const char *p, const char *end, uint32_t *out)
{
    if (end - p < 4)
        return -1;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v <<= 4;
        if (h >= '0' && h <= '9')
            v |= (uint32_t)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v |= (uint32_t)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v |= (uint32_t)(h - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct lmd_buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    lmd_buf_append(b, u, n);
}

/* A string at the cursor; its unescaped bytes appended to out (NULL =
 * only checked), or up to cap - 1 of them into small (NUL-terminated). */
static int str(struct cur *c, struct lmd_buf *out, char *small, size_t cap)
{
    ws(c);
    if (c->p >= c->end || *c->p != '"')
        return -1;
    c->p++;
    size_t k = 0;
    for (;;) {
        const char *run = c->p;
        while (c->p < c->end && *c->p != '"' && *c->p != '\\' && (unsigned char)*c->p >= 0x20)
            c->p++;
        size_t n = (size_t)(c->p - run);
        if (out && n)
            lmd_buf_append(out, run, n);
        for (size_t i = 0; small && i < n && k + 1 < cap; i++)
            small[k++] = run[i];
        if (c->p >= c->end || (unsigned char)*c->p < 0x20)
            return -1;
        if (*c->p == '"') {
            c->p++;
            if (small)
                small[k] = 0;
            return 0;
        }
        /* An escape. */
        c->p++;
        if (c->p >= c->end)
            return -1;
        char e = *c->p++, ch;
        uint32_t cp;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            ch = e;
            break;
        case 'b':
            ch = '\b';
            break;
        case 'f':
            ch = '\f';
            break;
        case 'n':
            ch = '\n';
            break;
        case 'r':
            ch = '\r';
            break;
        case 't':
            ch = '\t';
            break;
        case 'u':
            if (hex4(c->p, c->end, &cp) != 0)
                return -1;
            c->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u' && hex4(c->p + 2, c->end, &lo) == 0 &&
                    lo >= 0xDC00 && lo <= 0xDFFF) {
                    c->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD; /* a lone surrogate is no character */
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;
            }
            if (out)
                put_utf8(out, cp);
            if (small && k + 1 < cap)
                small[k++] = cp < 0x80 ? (char)cp : '?';
            continue;
        default:
            return -1;
        }
        if (out)
            lmd_buf_append(out, &ch, 1);
        if (small && k + 1 < cap)
            small[k++] = ch;
    }
}

static int skip(struct cur *c);

static int number(struct cur *c, long *out)
{
    ws(c);
    bool neg = false;
    if (c->p < c->end && *c->p == '-')
        neg = true, c->p++;
    long v = 0;
    bool digits = false, integral = true;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v < 100000000000L)
            v = v * 10 + (*c->p - '0');
        c->p++;
        digits = true;
    }
    if (!digits)
        return -1;
    if (c->p < c->end && *c->p == '.') {
        integral = false;
        c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return -1;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        integral = false;
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return -1;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
    }
    if (out)
        *out = integral ? (neg ? -v : v) : -1;
    return 0;
}

static int literal(struct cur *c, const char *lit)
{
    size_t n = strlen(lit);
    ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

/* Walk an object, calling fn for each key with the cursor on its value;
 * fn must consume the value. */
typedef int (*member_fn)(struct cur *c, const char *key, void *ud);

static int object(struct cur *c, member_fn fn, void *ud)
{
    if (!eat(c, '{'))
        return -1;
    if (++c->depth > SSE_JSON_DEPTH)
        return -1;
    if (eat(c, '}')) {
        c->depth--;
        return 0;
    }
    for (;;) {
        char key[32];
        if (str(c, NULL, key, sizeof key) != 0 || !eat(c, ':'))
            return -1;
        if ((fn ? fn(c, key, ud) : skip(c)) != 0)
            return -1;
        if (eat(c, ','))
            continue;
        if (eat(c, '}'))
            break;
        return -1;
    }
    c->depth--;
    return 0;
}

static int skip(struct cur *c)
{
    ws(c);
    if (c->p >= c->end)
        return -1;
    switch (*c->p) {
    case '{':
        return object(c, NULL, NULL);
    case '[':
        c->p++;
        if (++c->depth > SSE_JSON_DEPTH)
            return -1;
        if (!eat(c, ']')) {
            do {
                if (skip(c) != 0)
                    return -1;
            } while (eat(c, ','));
            if (!eat(c, ']'))
                return -1;
        }
        c->depth--;
        return 0;
    case '"':
        return str(c, NULL, NULL, 0);
    case 't':
        return literal(c, "true");
    case 'f':
        return literal(c, "false");
    case 'n':
        return literal(c, "null");
    default:
        return number(c, NULL);
    }
}

struct ctx {
    bool chat;
    struct lmd_buf *text;
    struct sse_chunk *out;
};

static bool at(struct cur *c, char ch)
{
    ws(c);
    return c->p < c->end && *c->p == ch;
}

/* A string field kept in full (the text), or skipped when it is not one. */
static int text_field(struct cur *c, struct ctx *x)
{
    if (!at(c, '"'))
        return skip(c);
    x->out->has_text = true;
    return str(c, x->text, NULL, 0);
}

/* A streamed tool call's function: a call begins where its name comes
 * (SSE_TOOL_START, the name, SSE_TOOL_ARGS), and its argument fragments
 * follow as they arrive (sse_json.h). */
static int function_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    if (strcmp(key, "name") == 0 && at(c, '"')) {
        x->out->has_text = true;
        lmd_buf_append(x->text, SSE_TOOL_START, 1);
        int rc = str(c, x->text, NULL, 0);
        lmd_buf_append(x->text, SSE_TOOL_ARGS, 1);
        return rc;
    }
    if (strcmp(key, "arguments") == 0)
        return text_field(c, x);
    return skip(c);
}

static int tool_call_member(struct cur *c, const char *key, void *ud)
{
    if (strcmp(key, "function") == 0 && at(c, '{'))
        return object(c, function_member, ud);
    return skip(c);
}

static int delta_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    if (strcmp(key, "content") == 0)
        return text_field(c, x);
    if (strcmp(key, "tool_calls") == 0 && at(c, '[')) {
        c->p++;
        if (++c->depth > SSE_JSON_DEPTH)
            return -1;
        if (!eat(c, ']')) {
            do {
                if ((at(c, '{') ? object(c, tool_call_member, x) : skip(c)) != 0)
                    return -1;
            } while (eat(c, ','));
            if (!eat(c, ']'))
                return -1;
        }
        c->depth--;
        return 0;
    }
    return skip(c);
}

static int choice_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    if (x->chat && strcmp(key, "delta") == 0 && at(c, '{'))
        return object(c, delta_member, x);
    if (!x->chat && strcmp(key, "text") == 0)
        return text_field(c, x);
    if (strcmp(key, "finish_reason") == 0 && at(c, '"')) {
        x->out->has_finish = true;
        return str(c, NULL, x->out->finish, sizeof x->out->finish);
    }
    return skip(c);
}

static int usage_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    long *dst = strcmp(key, "prompt_tokens") == 0       ? &x->out->prompt_tokens
                : strcmp(key, "completion_tokens") == 0 ? &x->out->completion_tokens
                                                        : NULL;
    if (dst) {
        ws(c);
        if (c->p < c->end && (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')))
            return number(c, dst);
    }
    return skip(c);
}

static int error_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    if (strcmp(key, "message") == 0 && at(c, '"'))
        return str(c, NULL, x->out->error, sizeof x->out->error);
    return skip(c);
}

static int top_member(struct cur *c, const char *key, void *ud)
{
    struct ctx *x = ud;
    if (strcmp(key, "choices") == 0 && at(c, '[')) {
        c->p++;
        if (++c->depth > SSE_JSON_DEPTH)
            return -1;
        if (!eat(c, ']')) {
            bool first = true;
            do {
                int rc = first && at(c, '{') ? object(c, choice_member, x) : skip(c);
                if (rc != 0)
                    return -1;
                first = false;
            } while (eat(c, ','));
            if (!eat(c, ']'))
                return -1;
        }
        c->depth--;
        return 0;
    }
    if (strcmp(key, "usage") == 0 && at(c, '{')) {
        x->out->has_usage = true;
        return object(c, usage_member, x);
    }
    if (strcmp(key, "error") == 0) {
        if (at(c, 'n'))
            return literal(c, "null");
        x->out->is_error = true;
        if (at(c, '"'))
            return str(c, NULL, x->out->error, sizeof x->out->error);
        if (at(c, '{'))
            return object(c, error_member, x);
        return skip(c);
    }
    return skip(c);
}

int sse_chunk_parse(const char *p, size_t n, bool chat, struct lmd_buf *text, struct sse_chunk *out)
{
    memset(out, 0, sizeof *out);
    out->prompt_tokens = out->completion_tokens = -1;
    struct cur c = {.p = p, .end = p + n};
    struct ctx x = {.chat = chat, .text = text, .out = out};
    if (object(&c, top_member, &x) != 0)
        return -1;
    ws(&c);
    return c.p == c.end ? 0 : -1;
}
