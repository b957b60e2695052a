/*
 * Process-wide logging to stderr. Levels filter at run time; lines are
 * either text ("1712345678.123 info message", structured fields as
 * key=value pairs) or JSON objects, one per line ({"ts":..., "level":...,
 * "msg":..., and one key per structured field}). Thread-safe: each call
 * writes one line with a single write(2), so lines from different threads
 * never interleave. A line longer than LMD_LOG_LINE_MAX is cut short, but
 * a JSON line is still closed so that it parses.
 */
#pragma once

#include <stdbool.h>

#define LMD_LOG_LINE_MAX 4096 /* bytes per line, newline included */

enum lmd_log_level {
    LMD_LOG_DEBUG = 0,
    LMD_LOG_INFO = 1,
    LMD_LOG_WARN = 2,
    LMD_LOG_ERROR = 3,
};

enum lmd_log_format {
    LMD_LOG_FORMAT_TEXT = 0,
    LMD_LOG_FORMAT_JSON = 1,
};

void lmd_log_set_level(enum lmd_log_level level);
enum lmd_log_level lmd_log_get_level(void);
/* Parse "debug|info|warn|error"; returns 0 or LMD_EINVAL. */
int lmd_log_parse_level(const char *s, enum lmd_log_level *out);

void lmd_log_set_format(enum lmd_log_format format);
enum lmd_log_format lmd_log_get_format(void);
/* Parse "text|json"; returns 0 or LMD_EINVAL. */
int lmd_log_parse_format(const char *s, enum lmd_log_format *out);

/* True when a line at `level` would be written; lets callers skip building
 * expensive arguments. */
bool lmd_log_enabled(enum lmd_log_level level);

void lmd_log(enum lmd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One structured field of a line written by lmd_log_fields. */
enum lmd_log_type {
    LMD_LOG_STR,  /* s; NULL is written like LMD_LOG_NULL */
    LMD_LOG_INT,  /* i */
    LMD_LOG_NUM,  /* d, written with up to 6 decimals; NaN and infinities as null */
    LMD_LOG_NULL, /* not applicable: JSON null, text "-" */
};

struct lmd_log_field {
    const char *key; /* a plain identifier: [A-Za-z0-9_]+, written as is */
    enum lmd_log_type type;
    union {
        const char *s;
        long long i;
        double d;
    };
};

/* One line made of a message and named fields. Text: `ts level msg k=v …`
 * where a string value with a space, quote, '=' or control character is
 * quoted and escaped like a JSON string. JSON: every field is its own key
 * after "ts", "level" and "msg". */
void lmd_log_fields(enum lmd_log_level level, const char *msg, const struct lmd_log_field *fields, int n_fields);

#define LMD_DEBUG(...) lmd_log(LMD_LOG_DEBUG, __VA_ARGS__)
#define LMD_INFO(...) lmd_log(LMD_LOG_INFO, __VA_ARGS__)
#define LMD_WARN(...) lmd_log(LMD_LOG_WARN, __VA_ARGS__)
#define LMD_ERROR(...) lmd_log(LMD_LOG_ERROR, __VA_ARGS__)
