/*
 * CORS origins: the syntax --cors-origin accepts, the list the server
 * keeps, and the match against a request's Origin. Origins are compared
 * byte for byte, as browsers serialise them (scheme://host[:port], the
 * host in lower case), so no normalisation is attempted.
 *
 * Not here: adding the headers to answers (server.c).
 */
#include "http/cors.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool http_cors_origin_valid(const char *s)
{
    if (strcmp(s, "*") == 0)
        return true;
    size_t n = strlen(s);
    const char *h = strncmp(s, "http://", 7) == 0 ? s + 7 : strncmp(s, "https://", 8) == 0 ? s + 8 : NULL;
    if (!h || n >= HTTP_ORIGIN_MAX || !*h)
        return false;
    const char *p = h;
    if (*p == '[') { /* an IPv6 literal */
        p++;
        while (isxdigit((unsigned char)*p) || *p == ':' || *p == '.')
            p++;
        if (*p != ']' || p == h + 1)
            return false;
        p++;
    } else {
        while (isalnum((unsigned char)*p) || *p == '.' || *p == '-')
            p++;
        if (p == h)
            return false;
    }
    if (*p == ':') {
        const char *d = ++p;
        while (isdigit((unsigned char)*p))
            p++;
        if (p == d || p - d > 5 || atoi(d) < 1 || atoi(d) > 65535)
            return false;
    }
    return *p == '\0';
}

int http__cors_init(struct http__cors *c, const char *const *origins, int n, struct lmd_err *err)
{
    memset(c, 0, sizeof *c);
    if (n < 0 || n > HTTP_MAX_CORS_ORIGINS)
        return lmd_err_set(err, LMD_EINVAL, "%d CORS origins; at most %d", n, HTTP_MAX_CORS_ORIGINS);
    for (int i = 0; i < n; i++) {
        const char *o = origins[i];
        if (!http_cors_origin_valid(o))
            return lmd_err_set(err, LMD_EINVAL,
                               "CORS origin '%.80s' is not * or scheme://host[:port] (no path, no trailing slash)", o);
        if (strcmp(o, "*") == 0)
            c->any = true;
        else
            snprintf(c->origins[c->n++], HTTP_ORIGIN_MAX, "%s", o);
    }
    return 0;
}

bool http__cors_on(const struct http__cors *c) { return c->any || c->n > 0; }

const char *http__cors_allow(const struct http__cors *c, const char *origin, size_t len)
{
    if (len == 0)
        return NULL;
    if (c->any)
        return "*";
    for (int i = 0; i < c->n; i++)
        if (strlen(c->origins[i]) == len && memcmp(c->origins[i], origin, len) == 0)
            return c->origins[i];
    return NULL;
}

bool http__cors_header_list_sane(const char *s, size_t len)
{
    if (len == 0 || len > 512)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!(isalnum((unsigned char)ch) || ch == '-' || ch == '_' || ch == ',' || ch == ' '))
            return false;
    }
    return true;
}
