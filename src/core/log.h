/*
 * Process-wide logging to stderr. Levels filter at run time; text format
 * for now (the observability work adds JSON). Thread-safe: each call
 * writes one line with a single write(2).
 */
#pragma once

enum lmd_log_level {
    LMD_LOG_DEBUG = 0,
    LMD_LOG_INFO = 1,
    LMD_LOG_WARN = 2,
    LMD_LOG_ERROR = 3,
};

void lmd_log_set_level(enum lmd_log_level level);
enum lmd_log_level lmd_log_get_level(void);
/* Parse "debug|info|warn|error"; returns 0 or LMD_EINVAL. */
int lmd_log_parse_level(const char *s, enum lmd_log_level *out);

void lmd_log(enum lmd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LMD_DEBUG(...) lmd_log(LMD_LOG_DEBUG, __VA_ARGS__)
#define LMD_INFO(...) lmd_log(LMD_LOG_INFO, __VA_ARGS__)
#define LMD_WARN(...) lmd_log(LMD_LOG_WARN, __VA_ARGS__)
#define LMD_ERROR(...) lmd_log(LMD_LOG_ERROR, __VA_ARGS__)
