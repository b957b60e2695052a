/*
 * Logging (see log.h). Every line is assembled in a stack buffer and
 * emitted with one write(2), so that lines from different threads never
 * interleave and logging never allocates. The buffer keeps a few bytes in
 * reserve past its soft limit: a line that runs out of room is cut at a
 * character boundary and then closed with those reserved bytes, which keeps
 * every JSON line parseable however long its message was.
 */
#include "core/log.h"

#include "core/error.h"
#include "core/time.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = LMD_LOG_INFO;
static _Atomic int g_format = LMD_LOG_FORMAT_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void lmd_log_set_level(enum lmd_log_level level) { atomic_store(&g_level, (int)level); }

enum lmd_log_level lmd_log_get_level(void) { return (enum lmd_log_level)atomic_load(&g_level); }

int lmd_log_parse_level(const char *s, enum lmd_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum lmd_log_level)i;
            return 0;
        }
    }
    return LMD_EINVAL;
}

void lmd_log_set_format(enum lmd_log_format format) { atomic_store(&g_format, (int)format); }

enum lmd_log_format lmd_log_get_format(void) { return (enum lmd_log_format)atomic_load(&g_format); }

int lmd_log_parse_format(const char *s, enum lmd_log_format *out)
{
    if (strcmp(s, "text") == 0) {
        *out = LMD_LOG_FORMAT_TEXT;
        return 0;
    }
    if (strcmp(s, "json") == 0) {
        *out = LMD_LOG_FORMAT_JSON;
        return 0;
    }
    return LMD_EINVAL;
}

bool lmd_log_enabled(enum lmd_log_level level) { return (int)level >= atomic_load(&g_level); }

/* ---- the line buffer ----------------------------------------------------- */

/* Bytes past the soft limit kept for closing a cut line: a string's quote,
 * the object's brace and the newline. */
#define LINE_RESERVE 4

struct line {
    char buf[LMD_LOG_LINE_MAX];
    size_t len;
    bool full; /* something did not fit; later appends are refused */
};

/* Append all of s[0..n) or nothing, within the soft limit. */
static bool line_put(struct line *l, const char *s, size_t n)
{
    if (l->full || l->len + n > sizeof l->buf - LINE_RESERVE) {
        l->full = true;
        return false;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return true;
}

static bool line_puts(struct line *l, const char *s) { return line_put(l, s, strlen(s)); }

/* Append into the reserve; only for the closing bytes of a line. */
static void line_close(struct line *l, const char *s)
{
    size_t n = strlen(s);
    LMD_ASSERT(l->len + n <= sizeof l->buf, "log line reserve overrun");
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static bool line_printf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool line_printf(struct line *l, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return line_put(l, "?", 1);
    return line_put(l, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence starting at s (at most `avail` bytes),
 * or 0 when it is malformed. */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    size_t n;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8. */
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* The body of a JSON string (no quotes): each character goes in whole or
 * not at all, so a cut never splits an escape or a UTF-8 sequence; bytes
 * that are not UTF-8 become U+FFFD. */
static void line_json_chars(struct line *l, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t avail = strlen(str);
    while (avail > 0) {
        char esc[8];
        const char *out = esc;
        size_t n = 0, used = 1;
        unsigned char c = *s;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            out = "\\n", n = 2;
        } else if (c == '\r') {
            out = "\\r", n = 2;
        } else if (c == '\t') {
            out = "\\t", n = 2;
        } else if (c < 0x20 || c == 0x7f) {
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else if (c < 0x80) {
            out = (const char *)s, n = 1;
        } else if ((used = utf8_len(s, avail)) > 0) {
            out = (const char *)s, n = used;
        } else {
            out = "\\ufffd", n = 6, used = 1;
        }
        if (!line_put(l, out, n))
            return;
        s += used;
        avail -= used;
    }
}

/* A whole JSON string; the closing quote is always written. */
static void line_json_str(struct line *l, const char *s)
{
    if (!line_put(l, "\"", 1))
        return;
    line_json_chars(l, s);
    line_close(l, "\"");
}

/* Whether a text-format value must be quoted (and escaped): it is empty,
 * has a space, quote, '=', backslash or control byte, or bytes that are not
 * UTF-8 (a request path can carry any byte; the line must stay text). */
static bool text_needs_quotes(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!*s)
        return true;
    size_t avail = strlen(str);
    while (*s) {
        unsigned char c = *s;
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
            return true;
        size_t n = c < 0x80 ? 1 : utf8_len(s, avail);
        if (n == 0)
            return true;
        s += n;
        avail -= n;
    }
    return false;
}

/* A number with at most 6 decimals and no trailing zeros: 0.0125, 3, 1.5. */
static void format_num(char *out, size_t cap, double d)
{
    int n = snprintf(out, cap, "%.6f", d);
    if (n <= 0 || (size_t)n >= cap)
        return;
    char *dot = strchr(out, '.');
    if (!dot)
        return;
    char *end = out + n - 1;
    while (end > dot && *end == '0')
        *end-- = '\0';
    if (end == dot)
        *end = '\0';
}

/* An empty line with its timestamp and level. */
static void line_start(struct line *l, enum lmd_log_format fmt, enum lmd_log_level level)
{
    l->len = 0;
    l->full = false;
    uint64_t ns = lmd_time_wall_ns();
    if (fmt == LMD_LOG_FORMAT_JSON) {
        /* Machines read it: seconds since the epoch. */
        line_printf(l, "{\"ts\":%.6f,\"level\":\"%s\",\"msg\":", (double)ns / 1e9, level_names[level]);
    } else {
        /* People read it: UTC, ISO 8601, milliseconds. */
        time_t sec = (time_t)(ns / 1000000000ull);
        struct tm tm;
        gmtime_r(&sec, &tm);
        line_printf(l, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ %s ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                    tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ns % 1000000000ull / 1000000ull), level_names[level]);
    }
}

static void line_emit(struct line *l, enum lmd_log_format fmt)
{
    line_close(l, fmt == LMD_LOG_FORMAT_JSON ? "}\n" : "\n");
    ssize_t w = write(STDERR_FILENO, l->buf, l->len);
    (void)w;
}

/* ---- entry points -------------------------------------------------------- */

void lmd_log(enum lmd_log_level level, const char *fmt, ...)
{
    if (!lmd_log_enabled(level))
        return;
    enum lmd_log_format format = lmd_log_get_format();
    struct line l;
    line_start(&l, format, level);
    if (format == LMD_LOG_FORMAT_JSON) {
        char msg[LMD_LOG_LINE_MAX];
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (m < 0)
            msg[0] = '\0';
        line_json_str(&l, msg);
    } else {
        size_t room = sizeof l.buf - LINE_RESERVE - l.len;
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(l.buf + l.len, room, fmt, ap);
        va_end(ap);
        if (m > 0)
            l.len += (size_t)m < room ? (size_t)m : room - 1;
    }
    line_emit(&l, format);
}

/* One field, in whole or not at all: a field that does not fit is rolled
 * back so that a cut JSON line never ends in a dangling key. */
static void line_field(struct line *l, enum lmd_log_format fmt, const struct lmd_log_field *f)
{
    size_t mark = l->len;
    char num[64];
    const char *raw = NULL; /* an unquoted value */
    enum lmd_log_type type = f->type;
    if (type == LMD_LOG_STR && !f->s)
        type = LMD_LOG_NULL;
    if (type == LMD_LOG_NUM && !isfinite(f->d))
        type = LMD_LOG_NULL;
    switch (type) {
    case LMD_LOG_INT:
        snprintf(num, sizeof num, "%lld", f->i), raw = num;
        break;
    case LMD_LOG_NUM:
        format_num(num, sizeof num, f->d), raw = num;
        break;
    case LMD_LOG_NULL:
        raw = fmt == LMD_LOG_FORMAT_JSON ? "null" : "-";
        break;
    case LMD_LOG_STR:
        break;
    }

    if (fmt == LMD_LOG_FORMAT_JSON) {
        line_put(l, ",\"", 2);
        line_puts(l, f->key);
        line_put(l, "\":", 2);
        if (raw) {
            line_puts(l, raw);
        } else if (line_put(l, "\"", 1)) {
            line_json_chars(l, f->s);
            line_put(l, "\"", 1);
        }
    } else {
        line_put(l, " ", 1);
        line_puts(l, f->key);
        line_put(l, "=", 1);
        if (raw) {
            line_puts(l, raw);
        } else if (!text_needs_quotes(f->s)) {
            line_puts(l, f->s);
        } else if (line_put(l, "\"", 1)) {
            line_json_chars(l, f->s);
            line_put(l, "\"", 1);
        }
    }
    if (l->full)
        l->len = mark;
}

void lmd_log_fields(enum lmd_log_level level, const char *msg, const struct lmd_log_field *fields, int n_fields)
{
    if (!lmd_log_enabled(level))
        return;
    enum lmd_log_format format = lmd_log_get_format();
    struct line l;
    line_start(&l, format, level);
    if (format == LMD_LOG_FORMAT_JSON)
        line_json_str(&l, msg);
    else
        line_puts(&l, msg);
    for (int i = 0; i < n_fields && !l.full; i++)
        line_field(&l, format, &fields[i]);
    line_emit(&l, format);
}
