/*
 * Logging (see log.h). Formats into a stack buffer and emits the whole line
 * with one write(2) so that lines from different threads never interleave.
 */
#include "core/log.h"

#include "core/error.h"
#include "core/time.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static _Atomic int g_level = LMD_LOG_INFO;

void lmd_log_set_level(enum lmd_log_level level) { atomic_store(&g_level, (int)level); }

enum lmd_log_level lmd_log_get_level(void) { return (enum lmd_log_level)atomic_load(&g_level); }

int lmd_log_parse_level(const char *s, enum lmd_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum lmd_log_level)i;
            return 0;
        }
    }
    return LMD_EINVAL;
}

void lmd_log(enum lmd_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load(&g_level))
        return;
    static const char *tags[] = {"debug", "info", "warn", "error"};
    char line[2048];
    double t = (double)lmd_time_wall_ns() / 1e9;
    int n = snprintf(line, sizeof line, "%.3f %s ", t, tags[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
