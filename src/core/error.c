/*
 * Error carrier and assertion failure reporting (see error.h).
 */
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lmd_strerror(int code)
{
    switch (code) {
    case LMD_OK:
        return "OK";
    case LMD_EINVAL:
        return "EINVAL";
    case LMD_ENOMEM:
        return "ENOMEM";
    case LMD_EIO:
        return "EIO";
    case LMD_ENOENT:
        return "ENOENT";
    case LMD_EFORMAT:
        return "EFORMAT";
    case LMD_ERANGE:
        return "ERANGE";
    case LMD_ENOTSUP:
        return "ENOTSUP";
    case LMD_EBUSY:
        return "EBUSY";
    case LMD_ECANCELED:
        return "ECANCELED";
    case LMD_EPERM:
        return "EPERM";
    case LMD_ETIMEDOUT:
        return "ETIMEDOUT";
    default:
        return "EUNKNOWN";
    }
}

int lmd_err_vset(struct lmd_err *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int lmd_err_set(struct lmd_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lmd_err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

void lmd_err_prefix(struct lmd_err *err, const char *fmt, ...)
{
    if (!err)
        return;
    char pre[LMD_ERR_MSG_MAX];
    char old[LMD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Keep the tail of the old message if the two do not fit together. */
    size_t np = strlen(pre);
    if (np > sizeof err->msg - 3)
        np = sizeof err->msg - 3;
    memcpy(err->msg, pre, np);
    memcpy(err->msg + np, ": ", 2);
    size_t room = sizeof err->msg - np - 3;
    size_t no = strnlen(old, sizeof old - 1);
    if (no > room)
        no = room;
    memcpy(err->msg + np + 2, old, no);
    err->msg[np + 2 + no] = 0;
}

void lmd__assert_fail(const char *file, int line, const char *cond, const char *msg)
{
    fprintf(stderr, "lmd: internal error at %s:%d: assertion '%s' failed: %s\n", file, line, cond, msg ? msg : "");
    fflush(stderr);
    abort();
}
