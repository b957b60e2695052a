/*
 * Error codes and the error-message carrier shared by every subsystem.
 *
 * Fallible functions return int: 0 on success or a negative LMD_E* code.
 * When a human-readable reason helps, they also take a `struct lmd_err *`
 * and fill it with one precise line ("model.gguf: offset 1234: tensor
 * 'x' data runs past end of file"). A function that returns 0 never
 * touches the error. The carrier is a fixed buffer so that filling it can
 * never fail, which matters on the error paths of allocation failures.
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>

enum {
    LMD_OK = 0,
    LMD_EINVAL = -1,     /* bad argument or malformed input */
    LMD_ENOMEM = -2,     /* allocation failed */
    LMD_EIO = -3,        /* read/write/mmap failed */
    LMD_ENOENT = -4,     /* file, key or name not found */
    LMD_EFORMAT = -5,    /* input file is malformed */
    LMD_ERANGE = -6,     /* value out of the supported range */
    LMD_ENOTSUP = -7,    /* valid input, but not supported by lmd */
    LMD_EBUSY = -8,      /* resource exhausted for now; retry later */
    LMD_ECANCELED = -9,  /* the operation was cancelled */
    LMD_EPERM = -10,     /* not allowed: missing or wrong credentials, a forbidden choice */
    LMD_ETIMEDOUT = -11, /* a deadline cannot be (or was not) met */
};

#define LMD_ERR_MSG_MAX 512

struct lmd_err {
    int code;
    char msg[LMD_ERR_MSG_MAX];
};

/* Name of an error code, e.g. "EFORMAT". Never NULL. */
const char *lmd_strerror(int code);

/* Fill `err` (which may be NULL) and return `code`, so callers can write
 * `return lmd_err_set(err, LMD_EINVAL, "bad %s", what);`. */
int lmd_err_set(struct lmd_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int lmd_err_vset(struct lmd_err *err, int code, const char *fmt, va_list ap);

/* Prepend context to an existing message: "ctx: old message". */
void lmd_err_prefix(struct lmd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Invariant check for internal bugs (never for bad input): prints file:line
 * and the message, then aborts. Stays on in release builds; it is cheap. */
#define LMD_ASSERT(cond, msg)                                                                                          \
    do {                                                                                                               \
        if (__builtin_expect(!(cond), 0))                                                                              \
            lmd__assert_fail(__FILE__, __LINE__, #cond, (msg));                                                        \
    } while (0)

/* The CUDA kernels' C++ sees these headers too. */
#ifdef __cplusplus
[[noreturn]]
#else
_Noreturn
#endif
void lmd__assert_fail(const char *file, int line, const char *cond, const char *msg);
