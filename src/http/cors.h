/*
 * CORS inside http/: the allowed origins and the checks on what browsers
 * send. server.c adds the headers; this part holds no h2o type and is
 * tested on its own. Internal to http/ (http.h is the public face).
 *
 * Lifetime: a struct http__cors is plain data, filled once at start and
 * read by every I/O thread afterwards.
 */
#pragma once

#include "core/error.h"
#include "http/http.h"

#include <stdbool.h>
#include <stddef.h>

struct http__cors {
    char origins[HTTP_MAX_CORS_ORIGINS][HTTP_ORIGIN_MAX]; /* [n] allowed origins, "*" not among them */
    int n;
    bool any; /* "*" was given: every origin */
};

/* Copy and check the configured origins (http_cors_origin_valid). LMD_EINVAL
 * with a message naming the origin. */
int http__cors_init(struct http__cors *c, const char *const *origins, int n, struct lmd_err *err);
/* Whether any origin is allowed at all (CORS is on). */
bool http__cors_on(const struct http__cors *c);
/* The Access-Control-Allow-Origin value for a request's Origin (len bytes),
 * or NULL when the origin is not allowed or absent. Points into c or at a
 * literal. */
const char *http__cors_allow(const struct http__cors *c, const char *origin, size_t len);
/* Whether a preflight's Access-Control-Request-Headers may be echoed: a
 * short list of header names (token characters, commas, spaces). */
bool http__cors_header_list_sane(const char *s, size_t len);
