/*
 * JSON Schema -> GBNF (see schema.h).
 *
 * Every schema node becomes one named rule ("s<N>"); shared pieces
 * (strings, numbers, any value, whitespace) are fixed rules written once
 * at the start. Each node is checked keyword by keyword against what this
 * translation enforces, and a keyword it would have to ignore is an error
 * naming it. Runs on an I/O thread once per request; schemas are bounded
 * by the body size limit and the grammar by gram_compile's limits.
 */
#include "api/schema.h"
#include "api/api_int.h"
#include "core/buf.h"
#include "sample/grammar.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SCHEMA_MAX_ITEMS 1000
#define SCHEMA_MAX_LENGTH 10000
#define SCHEMA_MAX_NEST 64
#define SCHEMA_INT_MAX 9999999999999999LL /* 16 digits: the bound of an unbounded integer */

static const char common_rules[] =
    "ws ::= ([ \\t] | \"\\n\" [ \\t]{0,20})?\n"
    "json-char ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "json-string ::= \"\\\"\" json-char* \"\\\"\"\n"
    "json-int ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})\n"
    "json-number ::= json-int (\".\" [0-9]{1,6})? ([eE] [-+]? [0-9]{1,3})?\n"
    "json-frac ::= (\".\" [0-9]{1,6})?\n"
    "json-bool ::= \"true\" | \"false\"\n"
    "json-null ::= \"null\"\n"
    "json-value ::= json-object | json-array | json-string | json-number | json-bool | json-null\n"
    "json-object ::= \"{\" ws (json-string ws \":\" ws json-value ws (\",\" ws json-string ws \":\" ws json-value "
    "ws)*)? \"}\"\n"
    "json-array ::= \"[\" ws (json-value ws (\",\" ws json-value ws)*)? \"]\"\n";

struct conv {
    struct lmd_buf *b;
    const json_t *root;
    json_t *refs; /* "$ref string" -> rule number, for refs already started */
    int n_rules;
    int nest;
    char *msg;
    size_t cap;
    bool failed;
};

static int fail(struct conv *c, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct conv *c, const char *path, const char *fmt, ...)
{
    if (c->failed)
        return -1;
    c->failed = true;
    /* A deep path (64 levels of ".items") would fill the message and cut
     * the reason off: past half the room, its middle is left out. */
    size_t pl = strlen(path), room = c->cap / 2;
    int n;
    if (pl > room && room > 40)
        n = snprintf(c->msg, c->cap, "%.*s...%s: ", (int)(room / 2 - 3), path, path + pl - (room / 2 - 3));
    else
        n = snprintf(c->msg, c->cap, "%s: ", path);
    if (n < 0 || (size_t)n >= c->cap)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg + n, c->cap - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* A GBNF literal for raw bytes s[0, n): quotes, with " and \ and control
 * bytes escaped. */
static void put_literal(struct lmd_buf *b, const char *s, size_t n)
{
    lmd_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            lmd_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            lmd_buf_printf(b, "\\x%02x", ch);
        else
            lmd_buf_append(b, &s[i], 1);
    }
    lmd_buf_append(b, "\"", 1);
}

/* The literal of a JSON value as it is written compactly. */
static int put_json_literal(struct conv *c, const json_t *v, const char *path, struct lmd_buf *e)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return fail(c, path, "out of memory");
    put_literal(e, s, strlen(s));
    free(s);
    return 0;
}

static int gen(struct conv *c, const json_t *s, const char *path);

/* ---- integers by digits -------------------------------------------------- */

/* Numbers of exactly n digits between a and b (same length, a <= b). */
static void digits_range(struct lmd_buf *b, const char *a, const char *z, int n)
{
    if (n == 0)
        return;
    if (memcmp(a, z, (size_t)n) == 0) {
        lmd_buf_printf(b, "\"%.*s\"", n, a);
        return;
    }
    if (n == 1) {
        lmd_buf_printf(b, "[%c-%c]", a[0], z[0]);
        return;
    }
    if (a[0] == z[0]) {
        lmd_buf_printf(b, "\"%c\" ", a[0]);
        digits_range(b, a + 1, z + 1, n - 1);
        return;
    }
    char nines[24], zeros[24];
    memset(nines, '9', sizeof nines);
    memset(zeros, '0', sizeof zeros);
    bool a_rest_zero = memcmp(a + 1, zeros, (size_t)n - 1) == 0;
    bool z_rest_nine = memcmp(z + 1, nines, (size_t)n - 1) == 0;
    char lo = a_rest_zero ? a[0] : (char)(a[0] + 1), hi = z_rest_nine ? z[0] : (char)(z[0] - 1);
    bool first = true;
    lmd_buf_append(b, "(", 1);
    if (!a_rest_zero) {
        lmd_buf_printf(b, "\"%c\" (", a[0]);
        digits_range(b, a + 1, nines, n - 1);
        lmd_buf_append(b, ")", 1);
        first = false;
    }
    if (lo <= hi) {
        lmd_buf_printf(b, "%s[%c-%c] [0-9]{%d}", first ? "" : " | ", lo, hi, n - 1);
        first = false;
    }
    if (!z_rest_nine) {
        lmd_buf_printf(b, "%s\"%c\" (", first ? "" : " | ", z[0]);
        digits_range(b, zeros, z + 1, n - 1);
        lmd_buf_append(b, ")", 1);
    }
    lmd_buf_append(b, ")", 1);
}

static int n_digits(long long v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* Alternatives for the non-negative integers in [a, z], no leading zeros. */
static void pos_range(struct lmd_buf *b, long long a, long long z, bool *first)
{
    long long p = 1; /* 10^(d-1) */
    for (int d = 1; d <= n_digits(z); d++, p *= 10) {
        if (d < n_digits(a))
            continue;
        long long lo = d == 1 ? 0 : p, hi = p * 10 - 1;
        if (a > lo)
            lo = a;
        if (z < hi)
            hi = z;
        char sa[24], sz[24];
        snprintf(sa, sizeof sa, "%lld", lo);
        snprintf(sz, sizeof sz, "%lld", hi);
        lmd_buf_append(b, *first ? "(" : " | (", *first ? 1 : 4);
        digits_range(b, sa, sz, d);
        lmd_buf_append(b, ")", 1);
        *first = false;
    }
}

/* The integers in [lo, hi] as alternatives (lo <= hi). */
static void int_range(struct lmd_buf *b, long long lo, long long hi)
{
    bool first = true;
    if (lo < 0) {
        long long na = hi < 0 ? -hi : 1, nz = -lo;
        lmd_buf_append(b, "\"-\" (", 5);
        bool f2 = true;
        pos_range(b, na, nz, &f2);
        lmd_buf_append(b, ")", 1);
        first = false;
    }
    if (hi >= 0) {
        if (!first)
            lmd_buf_append(b, " | ", 3);
        bool f2 = true;
        lmd_buf_append(b, "(", 1);
        pos_range(b, lo > 0 ? lo : 0, hi, &f2);
        lmd_buf_append(b, ")", 1);
    }
}

/* ---- the keywords --------------------------------------------------------- */

static bool is_annotation(const char *k)
{
    static const char *const ann[] = {"title",    "description", "default",  "examples",  "$schema", "$id",
                                      "$comment", "deprecated",  "readOnly", "writeOnly", "$defs",   "definitions"};
    for (size_t i = 0; i < sizeof ann / sizeof ann[0]; i++)
        if (strcmp(k, ann[i]) == 0)
            return true;
    return false;
}

/* Keywords each type enforces (beyond type, enum, const, anyOf, allOf, $ref). */
static bool keyword_known(const char *k)
{
    static const char *const kw[] = {"type",
                                     "enum",
                                     "const",
                                     "anyOf",
                                     "allOf",
                                     "$ref",
                                     "properties",
                                     "required",
                                     "additionalProperties",
                                     "items",
                                     "minItems",
                                     "maxItems",
                                     "uniqueItems",
                                     "minLength",
                                     "maxLength",
                                     "minimum",
                                     "maximum",
                                     "exclusiveMinimum",
                                     "exclusiveMaximum"};
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
        if (strcmp(k, kw[i]) == 0)
            return true;
    return is_annotation(k);
}

static int get_count(struct conv *c, const json_t *s, const char *key, long long max, long long *out, const char *path)
{
    const json_t *v = json_object_get(s, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(c, path, "'%s' must be a non-negative integer", key);
    if (json_integer_value(v) > max)
        return fail(c, path, "'%s' above %lld is not supported", key, max);
    *out = json_integer_value(v);
    return 0;
}

/* A number keyword's value, if present. */
static int get_bound(struct conv *c, const json_t *s, const char *key, bool *has, double *out, const char *path)
{
    const json_t *v = json_object_get(s, key);
    *has = false;
    if (!v)
        return 0;
    if (!json_is_number(v))
        return fail(c, path, "'%s' must be a number", key);
    *has = true;
    *out = json_number_value(v);
    return 0;
}

static int new_rule(struct conv *c) { return c->n_rules++; }

static int gen_integer(struct conv *c, const json_t *s, const char *path, struct lmd_buf *e)
{
    bool hmin, hmax, hxmin, hxmax;
    double min = 0, max = 0, xmin = 0, xmax = 0;
    if (get_bound(c, s, "minimum", &hmin, &min, path) || get_bound(c, s, "maximum", &hmax, &max, path) ||
        get_bound(c, s, "exclusiveMinimum", &hxmin, &xmin, path) ||
        get_bound(c, s, "exclusiveMaximum", &hxmax, &xmax, path))
        return -1;
    if (!hmin && !hmax && !hxmin && !hxmax) {
        lmd_buf_printf(e, "json-int");
        return 0;
    }
    double lo = -(double)SCHEMA_INT_MAX, hi = (double)SCHEMA_INT_MAX;
    if (hmin && ceil(min) > lo)
        lo = ceil(min);
    if (hxmin && floor(xmin) + 1 > lo)
        lo = floor(xmin) + 1;
    if (hmax && floor(max) < hi)
        hi = floor(max);
    if (hxmax && ceil(xmax) - 1 < hi)
        hi = ceil(xmax) - 1;
    if (lo < -(double)SCHEMA_INT_MAX || hi > (double)SCHEMA_INT_MAX || lo > (double)SCHEMA_INT_MAX ||
        hi < -(double)SCHEMA_INT_MAX)
        return fail(c, path, "integer bounds beyond 16 digits are not supported");
    if (lo > hi)
        return fail(c, path, "no integer lies within minimum/maximum");
    lmd_buf_append(e, "(", 1);
    int_range(e, (long long)lo, (long long)hi);
    lmd_buf_append(e, ")", 1);
    return 0;
}

static int gen_number(struct conv *c, const json_t *s, const char *path, struct lmd_buf *e)
{
    bool hmin, hmax, hx;
    double min = 0, max = 0, x;
    if (get_bound(c, s, "minimum", &hmin, &min, path) || get_bound(c, s, "maximum", &hmax, &max, path))
        return -1;
    if (get_bound(c, s, "exclusiveMinimum", &hx, &x, path) ||
        (!hx && get_bound(c, s, "exclusiveMaximum", &hx, &x, path)))
        return -1;
    if (hx)
        return fail(c, path,
                    "exclusiveMinimum/exclusiveMaximum on a number are not supported (they are on an integer)");
    if (!hmin && !hmax) {
        lmd_buf_printf(e, "json-number");
        return 0;
    }
    if (!hmin || min < 0 || min != floor(min) || (hmax && max != floor(max)))
        return fail(c, path,
                    "number bounds are supported when 'minimum' is given, both are integers and the minimum is at "
                    "least 0");
    if (hmax && max < min)
        return fail(c, path, "no number lies within minimum/maximum");
    if (min > (double)SCHEMA_INT_MAX || (hmax && max > (double)SCHEMA_INT_MAX))
        return fail(c, path, "number bounds beyond 16 digits are not supported");
    long long lo = (long long)min, hi = hmax ? (long long)max : SCHEMA_INT_MAX;
    /* [lo, hi]: an integer part in [lo, hi - 1] with any fraction, or hi itself with zeros after the point. */
    lmd_buf_append(e, "(", 1);
    if (hi > lo) {
        lmd_buf_append(e, "(", 1);
        int_range(e, lo, hi - 1);
        lmd_buf_append(e, ") json-frac | ", 14);
    }
    lmd_buf_printf(e, "\"%lld\" (\".\" \"0\"{1,6})?)", hi);
    return 0;
}

static int gen_string(struct conv *c, const json_t *s, const char *path, struct lmd_buf *e)
{
    long long mn = 0, mx = -1;
    if (get_count(c, s, "minLength", SCHEMA_MAX_LENGTH, &mn, path) ||
        get_count(c, s, "maxLength", SCHEMA_MAX_LENGTH, &mx, path))
        return -1;
    if (mx >= 0 && mx < mn)
        return fail(c, path, "maxLength is below minLength");
    if (mn == 0 && mx < 0)
        lmd_buf_printf(e, "json-string");
    else if (mx < 0)
        lmd_buf_printf(e, "(\"\\\"\" json-char{%lld,} \"\\\"\")", mn);
    else
        lmd_buf_printf(e, "(\"\\\"\" json-char{%lld,%lld} \"\\\"\")", mn, mx);
    return 0;
}

static int gen_array(struct conv *c, const json_t *s, const char *path, struct lmd_buf *e)
{
    long long mn = 0, mx = SCHEMA_MAX_ITEMS;
    const json_t *u = json_object_get(s, "uniqueItems");
    if (u && !json_is_false(u))
        return fail(c, path, "'uniqueItems' true is not supported");
    if (get_count(c, s, "minItems", SCHEMA_MAX_ITEMS, &mn, path) ||
        get_count(c, s, "maxItems", SCHEMA_MAX_ITEMS, &mx, path))
        return -1;
    bool bounded = json_object_get(s, "maxItems") != NULL;
    if (mx < mn)
        return fail(c, path, "maxItems is below minItems");
    const json_t *items = json_object_get(s, "items");
    int item = -1;
    if (items && !json_is_true(items)) {
        if (!json_is_object(items))
            return fail(c, path, "'items' must be a schema object (tuple forms are not supported)");
        char sub[512];
        snprintf(sub, sizeof sub, "%s.items", path);
        if ((item = gen(c, items, sub)) < 0)
            return -1;
    }
    char it[16];
    if (item >= 0)
        snprintf(it, sizeof it, "s%d", item);
    else
        snprintf(it, sizeof it, "json-value");
    if (mx == 0) {
        lmd_buf_printf(e, "(\"[\" ws \"]\")");
        return 0;
    }
    lmd_buf_printf(e, "(\"[\" ws %s%s ws (\",\" ws %s ws)", mn == 0 ? "(" : "", it, it);
    if (bounded)
        lmd_buf_printf(e, "{%lld,%lld}", mn > 0 ? mn - 1 : 0, mx - 1);
    else
        lmd_buf_printf(e, "{%lld,}", mn > 0 ? mn - 1 : 0);
    lmd_buf_printf(e, "%s \"]\")", mn == 0 ? ")?" : "");
    return 0;
}

static int gen_object(struct conv *c, const json_t *s, const char *path, struct lmd_buf *e)
{
    const json_t *props = json_object_get(s, "properties");
    const json_t *req = json_object_get(s, "required");
    const json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props))
        return fail(c, path, "'properties' must be an object");
    if (req && !json_is_array(req))
        return fail(c, path, "'required' must be an array of property names");
    if (addl && !json_is_boolean(addl) && !json_is_object(addl))
        return fail(c, path, "'additionalProperties' must be a boolean or a schema");
    size_t np = props ? json_object_size(props) : 0;
    for (size_t i = 0; req && i < json_array_size(req); i++) {
        const json_t *r = json_array_get(req, i);
        if (!json_is_string(r))
            return fail(c, path, "'required' must list property names (strings)");
        if (!props || !json_object_get(props, json_string_value(r)))
            return fail(c, path, "required property '%.64s' has no schema in 'properties'", json_string_value(r));
    }
    if (np == 0) {
        if (json_is_object(addl)) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s.additionalProperties", path);
            int v = gen(c, addl, sub);
            if (v < 0)
                return -1;
            lmd_buf_printf(e,
                           "(\"{\" ws (json-string ws \":\" ws s%d ws (\",\" ws json-string ws \":\" ws s%d ws)*)? "
                           "\"}\")",
                           v, v);
        } else if (json_is_false(addl)) {
            lmd_buf_printf(e, "(\"{\" ws \"}\")");
        } else {
            lmd_buf_printf(e, "json-object");
        }
        return 0;
    }
    /* Values first (each its own rule), then the chain that emits them in
     * order: F_i = nothing written yet, from property i on; S_i = something
     * written, from property i on. An optional property may be skipped. */
    int val[256];
    if (np > sizeof val / sizeof val[0])
        return fail(c, path, "more than %zu properties are not supported", sizeof val / sizeof val[0]);
    const char *key;
    const json_t *ps;
    size_t i = 0;
    json_object_foreach((json_t *)props, key, ps)
    {
        char sub[512];
        snprintf(sub, sizeof sub, "%s.properties.%.64s", path, key);
        if (!json_is_object(ps) && !json_is_boolean(ps))
            return fail(c, sub, "a property's schema must be an object");
        if ((val[i++] = gen(c, ps, sub)) < 0)
            return -1;
    }
    int base = c->n_rules;
    c->n_rules += 2 * (int)np + 2;
    /* Rule numbers: F_i = base + i, S_i = base + np + 1 + i (i = 0..np). */
    struct lmd_buf tmp = {0};
    i = 0;
    json_object_foreach((json_t *)props, key, ps)
    {
        bool required = false;
        for (size_t k = 0; req && k < json_array_size(req); k++)
            if (strcmp(json_string_value(json_array_get(req, k)), key) == 0)
                required = true;
        json_t *ks = json_string(key);
        char *kj = ks ? json_dumps(ks, JSON_ENCODE_ANY) : NULL;
        json_decref(ks);
        if (!kj) {
            lmd_buf_free(&tmp);
            return fail(c, path, "out of memory");
        }
        tmp.len = 0;
        put_literal(&tmp, kj, strlen(kj));
        free(kj);
        int F = base + (int)i, S = base + (int)np + 1 + (int)i;
        lmd_buf_printf(c->b, "s%d ::= %s ws \":\" ws s%d ws s%d%s", F, tmp.ptr, val[i], S + 1, required ? "\n" : "");
        if (!required)
            lmd_buf_printf(c->b, " | s%d\n", F + 1);
        lmd_buf_printf(c->b, "s%d ::= \",\" ws %s ws \":\" ws s%d ws s%d%s", S, tmp.ptr, val[i], S + 1,
                       required ? "\n" : "");
        if (!required)
            lmd_buf_printf(c->b, " | s%d\n", S + 1);
        i++;
    }
    lmd_buf_free(&tmp);
    lmd_buf_printf(c->b, "s%d ::= \"\"\ns%d ::= \"\"\n", base + (int)np, base + 2 * (int)np + 1);
    lmd_buf_printf(e, "(\"{\" ws s%d \"}\")", base);
    return 0;
}

/* One type's grammar expression into e (sub-rules go to c->b). */
static int gen_type(struct conv *c, const json_t *s, const char *t, const char *path, struct lmd_buf *e)
{
    if (strcmp(t, "object") == 0)
        return gen_object(c, s, path, e);
    if (strcmp(t, "array") == 0)
        return gen_array(c, s, path, e);
    if (strcmp(t, "string") == 0)
        return gen_string(c, s, path, e);
    if (strcmp(t, "integer") == 0)
        return gen_integer(c, s, path, e);
    if (strcmp(t, "number") == 0)
        return gen_number(c, s, path, e);
    if (strcmp(t, "boolean") == 0) {
        lmd_buf_printf(e, "json-bool");
        return 0;
    }
    if (strcmp(t, "null") == 0) {
        lmd_buf_printf(e, "json-null");
        return 0;
    }
    return fail(c, path, "unknown type '%.32s'", t);
}

/* A $ref: resolved inside the root document, one rule per target. */
static int gen_ref(struct conv *c, const char *ref, const char *path)
{
    json_t *seen = json_object_get(c->refs, ref);
    if (seen)
        return (int)json_integer_value(seen);
    const json_t *target = NULL;
    if (strcmp(ref, "#") == 0) {
        target = c->root;
    } else if (strncmp(ref, "#/$defs/", 8) == 0 || strncmp(ref, "#/definitions/", 14) == 0) {
        const char *name = strchr(ref + 2, '/') + 1;
        const json_t *defs = json_object_get(c->root, ref[2] == '$' ? "$defs" : "definitions");
        if (strchr(name, '/') || strchr(name, '~'))
            return fail(c, path, "'$ref' '%.64s': only '#', '#/$defs/NAME' and '#/definitions/NAME' are supported",
                        ref);
        target = defs ? json_object_get(defs, name) : NULL;
    } else {
        return fail(c, path, "'$ref' '%.64s': only '#', '#/$defs/NAME' and '#/definitions/NAME' are supported", ref);
    }
    if (!target)
        return fail(c, path, "'$ref' '%.64s' points at nothing", ref);
    /* The rule number is taken before its body is written, so that a
     * recursive reference finds it. */
    int r = new_rule(c);
    json_object_set_new(c->refs, ref, json_integer(r));
    char sub[512];
    snprintf(sub, sizeof sub, "%.200s ($ref %.64s)", path, ref);
    int v = gen(c, target, sub);
    if (v < 0)
        return -1;
    lmd_buf_printf(c->b, "s%d ::= s%d\n", r, v);
    return r;
}

/* Write a rule for schema s; returns its number, or -1 with the message set. */
static int gen(struct conv *c, const json_t *s, const char *path)
{
    if (c->failed)
        return -1;
    if (++c->nest > SCHEMA_MAX_NEST) {
        c->nest--;
        return fail(c, path, "schemas nested deeper than %d are not supported", SCHEMA_MAX_NEST);
    }
    int r = -1;
    struct lmd_buf *outer = c->b, expr = {0}; /* this rule's expression; sub-rules go to outer */
    if (json_is_true(s) || (json_is_object(s) && json_object_size(s) == 0)) {
        r = new_rule(c);
        lmd_buf_printf(outer, "s%d ::= json-value\n", r);
        goto out;
    }
    if (!json_is_object(s)) {
        fail(c, path, json_is_false(s) ? "a false schema allows nothing" : "a schema must be an object");
        goto out;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)s, key, v)
    {
        if (!keyword_known(key)) {
            fail(c, path, "the keyword '%.64s' is not supported (it cannot be enforced)", key);
            goto out;
        }
    }
    const json_t *ref = json_object_get(s, "$ref");
    const json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    const json_t *any = json_object_get(s, "anyOf"), *all = json_object_get(s, "allOf");
    const json_t *type = json_object_get(s, "type");
    if (ref) {
        if (!json_is_string(ref) || json_object_size(s) > 1 + (json_object_get(s, "$defs") ? 1u : 0u) +
                                                              (json_object_get(s, "description") ? 1u : 0u) +
                                                              (json_object_get(s, "title") ? 1u : 0u)) {
            fail(c, path, "'$ref' must be a string and stand alone (with $defs and annotations only)");
            goto out;
        }
        int t = gen_ref(c, json_string_value(ref), path);
        if (t < 0)
            goto out;
        lmd_buf_printf(&expr, "s%d", t);
    } else if (cn) {
        if (put_json_literal(c, cn, path, &expr))
            goto out;
    } else if (en) {
        if (!json_is_array(en) || json_array_size(en) == 0) {
            fail(c, path, "'enum' must be a non-empty array");
            goto out;
        }
        for (size_t i = 0; i < json_array_size(en); i++) {
            if (i)
                lmd_buf_append(&expr, " | ", 3);
            if (put_json_literal(c, json_array_get(en, i), path, &expr))
                goto out;
        }
    } else if (any || all) {
        const json_t *list = any ? any : all;
        const char *kw = any ? "anyOf" : "allOf";
        if (!json_is_array(list) || json_array_size(list) == 0) {
            fail(c, path, "'%s' must be a non-empty array of schemas", kw);
            goto out;
        }
        if (all && (any || json_array_size(all) != 1 || type)) {
            fail(c, path, "'allOf' is supported with exactly one schema and nothing beside it");
            goto out;
        }
        if (any && type) {
            fail(c, path, "'anyOf' beside 'type' is not supported: put the type in each alternative");
            goto out;
        }
        for (size_t i = 0; i < json_array_size(list); i++) {
            char sub[512];
            snprintf(sub, sizeof sub, "%.400s.%s[%zu]", path, kw, i);
            int t = gen(c, json_array_get(list, i), sub);
            if (t < 0)
                goto out;
            lmd_buf_printf(&expr, "%ss%d", i ? " | " : "", t);
        }
    } else {
        /* The type: given (one or a list), or implied by the keywords. */
        const char *types[8];
        size_t nt = 0;
        if (json_is_string(type)) {
            types[nt++] = json_string_value(type);
        } else if (json_is_array(type) && json_array_size(type) > 0 && json_array_size(type) <= 7) {
            for (size_t i = 0; i < json_array_size(type); i++) {
                if (!json_is_string(json_array_get(type, i))) {
                    fail(c, path, "'type' must be a string or a list of strings");
                    goto out;
                }
                types[nt++] = json_string_value(json_array_get(type, i));
            }
        } else if (type) {
            fail(c, path, "'type' must be a string or a non-empty list of at most 7 strings");
            goto out;
        } else if (json_object_get(s, "properties") || json_object_get(s, "required") ||
                   json_object_get(s, "additionalProperties")) {
            types[nt++] = "object";
        } else if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems")) {
            types[nt++] = "array";
        } else if (json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
            types[nt++] = "string";
        } else if (json_object_get(s, "minimum") || json_object_get(s, "maximum")) {
            types[nt++] = "number";
        }
        if (nt == 0) {
            lmd_buf_printf(&expr, "json-value");
        }
        for (size_t i = 0; i < nt; i++) {
            if (i)
                lmd_buf_append(&expr, " | ", 3);
            if (gen_type(c, s, types[i], path, &expr) != 0)
                goto out;
        }
    }
    if (c->failed)
        goto out;
    r = new_rule(c);
    lmd_buf_printf(outer, "s%d ::= %s\n", r, expr.ptr ? expr.ptr : "\"\"");
out:
    lmd_buf_free(&expr);
    c->nest--;
    return c->failed ? -1 : r;
}

int api_schema_common(struct lmd_buf *out)
{
    lmd_buf_append(out, common_rules, sizeof common_rules - 1);
    return out->ptr ? 0 : -1;
}

int api_schema_rules(const void *schema, const char *path, int *next_rule, struct lmd_buf *out, char *msg,
                     size_t msg_cap)
{
    struct conv c = {
        .b = out, .root = schema, .refs = json_object(), .n_rules = *next_rule, .msg = msg, .cap = msg_cap};
    if (!c.refs) {
        snprintf(msg, msg_cap, "out of memory");
        return -1;
    }
    int r = gen(&c, schema, path);
    json_decref(c.refs);
    if (r >= 0 && !out->ptr) {
        snprintf(msg, msg_cap, "out of memory");
        r = -1;
    }
    *next_rule = c.n_rules;
    return r;
}

int api_schema_grammar(const void *schema, const char *path, struct lmd_buf *out, char *msg, size_t msg_cap)
{
    int next = 0;
    if (api_schema_common(out) != 0) {
        snprintf(msg, msg_cap, "out of memory");
        return -1;
    }
    int r = api_schema_rules(schema, path, &next, out, msg, msg_cap);
    if (r < 0)
        return -1;
    lmd_buf_printf(out, "root ::= s%d\n", r);
    if (!out->ptr) {
        snprintf(msg, msg_cap, "out of memory");
        return -1;
    }
    return 0;
}

int api_schema_any_object(struct lmd_buf *out)
{
    lmd_buf_append(out, common_rules, sizeof common_rules - 1);
    lmd_buf_printf(out, "root ::= json-object\n");
    return out->ptr ? 0 : -1;
}

int api_structured_compile(struct api_params *p, struct api_error *e)
{
    p->grammar = NULL;
    if (!p->grammar_text && p->rf_kind != API_RF_JSON_OBJECT && p->rf_kind != API_RF_JSON_SCHEMA)
        return 0;
    struct lmd_err err = {0};
    if (p->grammar_text) {
        if (gram_compile(&p->grammar, p->grammar_text, p->grammar_len, &err) == 0)
            return 0;
        if (err.code == LMD_ENOMEM)
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return api_error_set(e, 400, "invalid_request_error", "grammar", "invalid_grammar", "%s", err.msg);
    }
    struct lmd_buf text = {0};
    char msg[300] = "";
    int rc;
    if (p->rf_kind == API_RF_JSON_OBJECT)
        rc = api_schema_any_object(&text);
    else if (!p->rf_schema)
        rc = api_schema_grammar(json_true(), "response_format.json_schema.schema", &text, msg, sizeof msg);
    else
        rc = api_schema_grammar(p->rf_schema, "response_format.json_schema.schema", &text, msg, sizeof msg);
    if (rc != 0) {
        lmd_buf_free(&text);
        return api_error_set(e, 400, "invalid_request_error", "response_format", "unsupported_schema", "%s", msg);
    }
    rc = gram_compile(&p->grammar, text.ptr, text.len, &err);
    lmd_buf_free(&text);
    if (rc == 0)
        return 0;
    if (err.code == LMD_ENOMEM)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    /* The translation is ours, so a grammar it cannot compile means a
     * schema past the limits (sizes, repetition counts). */
    return api_error_set(e, 400, "invalid_request_error", "response_format", "unsupported_schema",
                         "the schema is too large to enforce: %s", err.msg);
}
