/*
 * Byte-level helpers of the API layer: a growable buffer, JSON string
 * escaping for the hand-written SSE chunks, stop-string matching, and
 * OpenAI-shaped error bodies. No I/O, no threads.
 */
#include "api/api_int.h"

#include <jansson.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int api_buf_json_escape(struct lmd_buf *b, const char *s, size_t n)
{
    /* Worst case: every byte becomes \u00XX. */
    if (lmd_buf_reserve(b, n * 6 + 1))
        return LMD_ENOMEM;
    char *o = b->ptr + b->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            *o++ = '\\';
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\';
            *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\';
            *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\';
            *o++ = 't';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                o += sprintf(o, "\\u%04x", c);
            } else {
                *o++ = (char)c;
            }
        }
    }
    b->len = (size_t)(o - b->ptr);
    b->ptr[b->len] = '\0';
    return 0;
}

/* The length of the valid UTF-8 sequence at u (n bytes available), or 0. */
static size_t utf8_seq(const unsigned char *u, size_t n)
{
    unsigned c = u[0];
    size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (k == 0 || k > n || (k == 2 && c < 0xc2) || (k == 4 && c > 0xf4))
        return 0;
    for (size_t j = 1; j < k; j++)
        if ((u[j] & 0xc0) != 0x80)
            return 0;
    /* Overlong three- and four-byte forms, surrogates, past U+10FFFF. */
    if ((k == 3 && c == 0xe0 && u[1] < 0xa0) || (k == 3 && c == 0xed && u[1] >= 0xa0) ||
        (k == 4 && c == 0xf0 && u[1] < 0x90) || (k == 4 && c == 0xf4 && u[1] >= 0x90))
        return 0;
    return k;
}

bool api_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0, k; i < n; i += k)
        if ((k = utf8_seq(u + i, n - i)) == 0)
            return false;
    return true;
}

void api_utf8_scrub(char *s)
{
    unsigned char *u = (unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0, k; i < n; i += k)
        if ((k = utf8_seq(u + i, n - i)) == 0) {
            u[i] = '?';
            k = 1;
        }
}

int api_buf_json_token(struct lmd_buf *b, const char *s, size_t n)
{
    if (lmd_buf_append(b, "\"", 1))
        return LMD_ENOMEM;
    int rc = 0;
    if (api_utf8_valid(s, n)) {
        rc = api_buf_json_escape(b, s, n);
    } else {
        rc = lmd_buf_append(b, "bytes:", 6);
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = lmd_buf_printf(b, "\\\\x%02x", (unsigned char)s[i]);
    }
    return rc ? rc : lmd_buf_append(b, "\"", 1);
}

int api_error_set(struct api_error *e, int status, const char *type, const char *param, const char *code,
                  const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* Messages quote what the client sent (a path, a field) and may be cut
     * mid-character; JSON strings must be UTF-8, so the body could not be
     * built and the client would see a 500 for its own bad bytes. */
    api_utf8_scrub(e->msg);
    return LMD_EINVAL;
}

char *api_error_json(const struct api_error *e, size_t *len)
{
    json_t *o =
        json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", e->msg, "type", e->type ? e->type : "error", "param",
                  e->param ? json_string(e->param) : json_null(), "code", e->code ? json_string(e->code) : json_null());
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s)
        *len = strlen(s);
    return s;
}

long api_stop_find(const char *text, size_t len, const char *const *stop, const size_t *stop_len, int n_stop)
{
    long best = -1;
    for (int i = 0; i < n_stop; i++) {
        if (stop_len[i] == 0 || stop_len[i] > len)
            continue;
        const char *m = memmem(text, len, stop[i], stop_len[i]);
        if (m && (best < 0 || m - text < best))
            best = m - text;
    }
    return best;
}

size_t api_stop_holdback(const char *text, size_t len, const char *const *stop, const size_t *stop_len, int n_stop)
{
    size_t hold = 0;
    for (int i = 0; i < n_stop; i++) {
        /* The longest proper prefix of stop[i] that text ends with. */
        size_t k = stop_len[i] ? stop_len[i] - 1 : 0;
        if (k > len)
            k = len;
        for (; k > hold; k--) {
            if (memcmp(text + len - k, stop[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}

/* ---- splicing a validated JSON object ---------------------------------------- */

/* The end of the JSON value that starts at p (already validated). */
static const char *skip_value(const char *p, const char *end)
{
    int depth = 0;
    bool in_str = false;
    for (; p < end; p++) {
        char ch = *p;
        if (in_str) {
            if (ch == '\\')
                p++;
            else if (ch == '"') {
                in_str = false;
                if (depth == 0)
                    return p + 1;
            }
            continue;
        }
        if (ch == '"')
            in_str = true;
        else if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']') {
            if (depth == 0)
                return p; /* the end of the enclosing object */
            if (--depth == 0)
                return p + 1;
        } else if (depth == 0 && (ch == ',' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'))
            return p;
    }
    return end;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

int api_json_splice(struct lmd_buf *out, const char *s, size_t n, const char *const *drop, int n_drop)
{
    const char *p = skip_ws(s, s + n), *end = s + n;
    if (p == end || *p != '{')
        return LMD_EINVAL;
    p++;
    lmd_buf_append(out, "{", 1);
    bool first = true;
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
        if (p >= end || *p == '}')
            break;
        const char *k0 = p;
        const char *k1 = skip_value(p, end); /* the key: a string */
        const char *v = skip_ws(k1, end);
        if (v >= end || *v != ':')
            return LMD_EINVAL;
        v = skip_ws(v + 1, end);
        const char *v1 = skip_value(v, end);
        bool dropped = false;
        for (int i = 0; i < n_drop && !dropped; i++) {
            size_t dl = strlen(drop[i]);
            dropped = (size_t)(k1 - k0) == dl + 2 && memcmp(k0 + 1, drop[i], dl) == 0;
        }
        if (!dropped) {
            if (!first)
                lmd_buf_append(out, ",", 1);
            lmd_buf_append(out, k0, (size_t)(k1 - k0));
            lmd_buf_append(out, ":", 1);
            lmd_buf_append(out, v, (size_t)(v1 - v));
            first = false;
        }
        p = v1;
    }
    return out->ptr ? 0 : LMD_ENOMEM;
}

json_t *api__text_parts(json_t *content, const char *field, const char *what, const char *const *types,
                        const char *only, struct api_error *e)
{
    if (json_is_string(content))
        return json_incref(content);
    if (!json_is_array(content)) {
        api_error_set(e, 400, "invalid_request_error", field, NULL, "%s must be a string or a list of text parts",
                      what);
        return NULL;
    }
    struct lmd_buf b = {0};
    size_t k;
    json_t *part;
    json_array_foreach(content, k, part)
    {
        json_t *ty = json_object_get(part, "type"), *t = json_object_get(part, "text");
        const char *tys = json_is_string(ty) ? json_string_value(ty) : NULL;
        bool known = false;
        for (const char *const *x = types; tys && *x && !known; x++)
            known = strcmp(tys, *x) == 0;
        if (!known || !json_is_string(t)) {
            lmd_buf_free(&b);
            if (!tys)
                api_error_set(e, 400, "invalid_request_error", field, NULL,
                              "%s[%zu] must be an object with a string 'type'", what, k);
            else if (!known)
                api_error_set(e, 400, "invalid_request_error", field, "unsupported_parameter",
                              "%s[%zu] has type '%.40s': %s", what, k, tys, only);
            else
                api_error_set(e, 400, "invalid_request_error", field, NULL, "%s[%zu].text must be a string", what, k);
            return NULL;
        }
        if (lmd_buf_append(&b, json_string_value(t), json_string_length(t))) {
            lmd_buf_free(&b);
            api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return NULL;
        }
    }
    json_t *s = json_stringn(b.ptr ? b.ptr : "", b.len);
    lmd_buf_free(&b);
    if (!s)
        api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    return s;
}

int api__add_msg(json_t *msgs, const char *role, json_t *content, struct api_error *e)
{
    json_t *m = content ? json_pack("{s:s, s:o}", "role", role, "content", content) : NULL;
    if (!m || json_array_append_new(msgs, m))
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    return 0;
}
