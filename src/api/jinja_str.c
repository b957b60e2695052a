/*
 * Python's str operations for the Jinja engine, on UTF-8 text by code
 * point: strip with Python's idea of whitespace, split (runs of whitespace
 * without a separator), replace (around every character for an empty
 * pattern), startswith/endswith with tuples, join, and case mapping.
 *
 * Case mapping (upper, lower, title, capitalize) covers the Latin, Greek and
 * Cyrillic letters one code point maps to one; other characters pass
 * through unchanged.
 */
#include "api/jinja_int.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- strings ----------------------------------------------------------------------- */

/* Python's str.isspace() for the code point that starts at s[i], with its
 * length in *len (0 when it is not whitespace). */
static size_t space_at(const char *s, size_t n, size_t i)
{
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))
        return 1;
    if (c == 0xc2 && i + 1 < n && ((unsigned char)s[i + 1] == 0x85 || (unsigned char)s[i + 1] == 0xa0))
        return 2;
    if (c == 0xe1 && i + 2 < n && (unsigned char)s[i + 1] == 0x9a && (unsigned char)s[i + 2] == 0x80)
        return 3;
    if (c == 0xe2 && i + 2 < n) {
        unsigned char b = (unsigned char)s[i + 1], d = (unsigned char)s[i + 2];
        if (b == 0x80 && (d <= 0x8a || d == 0xa8 || d == 0xa9 || d == 0xaf))
            return 3;
        if (b == 0x81 && d == 0x9f)
            return 3;
    }
    if (c == 0xe3 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x80)
        return 3;
    return 0;
}

/* The whitespace code point that ends at s[end) (its length), or 0. */
static size_t space_before(const char *s, size_t end)
{
    for (size_t k = 1; k <= 3 && k <= end; k++) {
        size_t i = end - k;
        if (((unsigned char)s[i] & 0xc0) == 0x80 && k < 3)
            continue;
        return space_at(s, end, i) == k ? k : 0;
    }
    return 0;
}

static bool in_chars(const char *chars, size_t nc, const char *s, size_t len)
{
    for (size_t i = 0; i + len <= nc;) {
        size_t l = 1;
        while (i + l < nc && ((unsigned char)chars[i + l] & 0xc0) == 0x80)
            l++;
        if (l == len && memcmp(chars + i, s, len) == 0)
            return true;
        i += l;
    }
    return false;
}

static size_t cp_len_at(const char *s, size_t n, size_t i)
{
    size_t l = 1;
    while (i + l < n && ((unsigned char)s[i + l] & 0xc0) == 0x80)
        l++;
    return l;
}

static size_t cp_len_before(const char *s, size_t end)
{
    size_t l = 1;
    while (l < end && ((unsigned char)s[end - l] & 0xc0) == 0x80)
        l++;
    return l;
}

/* str.strip / lstrip / rstrip with chars (NULL = whitespace). */
struct jv jinja__strip(const struct jv *s, const struct jv *chars, bool left, bool right)
{
    const char *p = s->u.str.s;
    size_t a = 0, b = s->u.str.n;
    if (left)
        while (a < b) {
            size_t l = chars ? cp_len_at(p, b, a) : space_at(p, b, a);
            if (!l || (chars && !in_chars(chars->u.str.s, chars->u.str.n, p + a, l)))
                break;
            a += l;
        }
    if (right)
        while (b > a) {
            size_t l = chars ? cp_len_before(p, b) : space_before(p, b);
            if (!l || b - l < a || (chars && !in_chars(chars->u.str.s, chars->u.str.n, p + b - l, l)))
                break;
            b -= l;
        }
    return jv_str(p + a, b - a);
}

const char *jinja__find_sub(const char *s, size_t n, const char *sub, size_t m)
{
    if (m == 0)
        return s;
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, sub, m) == 0)
            return s + i;
    return NULL;
}

/* Simple case mapping of one code point: Latin-1, Latin Extended-A, Greek
 * and Cyrillic, which is what text in chat templates meets; other code
 * points map to themselves (and ß stays ß, where Python writes SS). */
static unsigned long case_cp(unsigned long c, bool up)
{
    if (c < 0x80) {
        if (up && c >= 'a' && c <= 'z')
            return c - 32;
        if (!up && c >= 'A' && c <= 'Z')
            return c + 32;
        return c;
    }
    if (up) {
        if ((c >= 0xe0 && c <= 0xfe && c != 0xf7) || (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) ||
            (c >= 0x430 && c <= 0x44f))
            return c - 32;
        if (c == 0xff)
            return 0x178;
        if (c == 0x3c2)
            return 0x3a3;
        if (c >= 0x450 && c <= 0x45f)
            return c - 80;
        if (((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) && (c & 1))
            return c - 1;
        if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && !(c & 1))
            return c - 1;
        return c;
    }
    if ((c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) || (c >= 0x410 && c <= 0x42f))
        return c + 32;
    if (c == 0x178)
        return 0xff;
    if (c >= 0x400 && c <= 0x40f)
        return c + 80;
    if (((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) && !(c & 1))
        return c + 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && (c & 1))
        return c + 1;
    return c;
}

static bool cased_cp(unsigned long c) { return case_cp(c, true) != c || case_cp(c, false) != c; }

static unsigned long cp_decode(const char *s, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)s[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (*i + (size_t)len > n)
        len = 1;
    unsigned long cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | ((unsigned char)s[*i + (size_t)k] & 0x3f);
    *i += (size_t)len;
    return cp;
}

static size_t cp_encode(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

struct jv jinja__case_map(struct jctx *x, const struct jv *s, int mode /* 0 lower 1 upper 2 title 3 capitalize */)
{
    /* Every mapped code point keeps its UTF-8 length except ÿ <-> Ÿ (2 -> 2)
     * and the ASCII range, so twice the input is room enough. */
    char *o = jinja__alloc(x, s->u.str.n * 2 + 1);
    size_t k = 0, i = 0;
    bool prev_cased = false, first = true;
    while (i < s->u.str.n) {
        size_t start = i;
        unsigned long c = cp_decode(s->u.str.s, s->u.str.n, &i);
        if (c > 0x17e && (c < 0x391 || c > 0x45f)) {
            /* Not a letter this mapping knows: copy its bytes as they are. */
            memcpy(o + k, s->u.str.s + start, i - start);
            k += i - start;
            prev_cased = false;
            first = false;
            continue;
        }
        bool cased = cased_cp(c);
        bool up = mode == 1 || (mode == 2 && !prev_cased) || (mode == 3 && first);
        k += cp_encode(o + k, cased ? case_cp(c, up) : c);
        prev_cased = cased;
        first = false;
    }
    return jv_str(o, k);
}

struct jv jinja__replace(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *old,
                         const struct jv *new, int64_t count)
{
    struct lmd_buf b = {.arena = x->arena};
    const char *p = s->u.str.s, *end = p + s->u.str.n;
    int64_t done = 0;
    if (old->u.str.n == 0) {
        /* Python inserts the replacement around every character. */
        while (count < 0 || done < count) {
            jinja__append(x, &b, new->u.str.s, new->u.str.n);
            done++;
            if (p >= end)
                break;
            size_t l = cp_len_at(p, (size_t)(end - p), 0);
            jinja__append(x, &b, p, l);
            p += l;
        }
        jinja__append(x, &b, p, (size_t)(end - p));
        (void)at;
        return jv_str(b.ptr ? b.ptr : "", b.len);
    }
    while (count < 0 || done < count) {
        const char *q = jinja__find_sub(p, (size_t)(end - p), old->u.str.s, old->u.str.n);
        if (!q)
            break;
        jinja__append(x, &b, p, (size_t)(q - p));
        jinja__append(x, &b, new->u.str.s, new->u.str.n);
        p = q + old->u.str.n;
        done++;
    }
    jinja__append(x, &b, p, (size_t)(end - p));
    return jv_str(b.ptr ? b.ptr : "", b.len);
}

struct jv jinja__split(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *sep,
                       int64_t maxsplit)
{
    size_t cap = 8, n = 0;
    struct jv *items = jinja__alloc(x, cap * sizeof *items);
#define PUSH(v)                                                                                                        \
    do {                                                                                                               \
        if (n == cap) {                                                                                                \
            struct jv *more = jinja__alloc(x, cap * 2 * sizeof *more);                                                 \
            memcpy(more, items, n * sizeof *more);                                                                     \
            items = more;                                                                                              \
            cap *= 2;                                                                                                  \
        }                                                                                                              \
        items[n++] = (v);                                                                                              \
    } while (0)
    const char *p = s->u.str.s;
    size_t len = s->u.str.n, i = 0;
    if (!sep || sep->type == JV_NONE) {
        /* Runs of whitespace separate; no empty strings at the ends. */
        int64_t splits = 0;
        for (;;) {
            size_t l;
            while (i < len && (l = space_at(p, len, i)))
                i += l;
            if (i >= len)
                break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t e = len;
                while (e > i && (l = space_before(p, e)))
                    e -= l;
                PUSH(jv_str(p + i, e - i));
                break;
            }
            size_t start = i;
            while (i < len && !space_at(p, len, i))
                i += cp_len_at(p, len, i);
            PUSH(jv_str(p + start, i - start));
            splits++;
        }
    } else {
        jinja__need_str(x, at, sep, "split");
        if (!sep->u.str.n)
            jinja__fail(x, at->line, at->col, "empty separator");
        int64_t splits = 0;
        for (;;) {
            const char *q = maxsplit >= 0 && splits >= maxsplit
                                ? NULL
                                : jinja__find_sub(p + i, len - i, sep->u.str.s, sep->u.str.n);
            if (!q) {
                PUSH(jv_str(p + i, len - i));
                break;
            }
            PUSH(jv_str(p + i, (size_t)(q - (p + i))));
            i = (size_t)(q - p) + sep->u.str.n;
            splits++;
        }
    }
#undef PUSH
    struct jv_list *l = jinja__alloc(x, sizeof *l);
    l->items = items;
    l->n = n;
    return (struct jv){.type = JV_LIST, .u.list = l};
}

bool jinja__affix(struct jctx *x, const struct jnode *at, const struct jv *s, const struct jv *a, bool start)
{
    if (a && a->type == JV_LIST && a->tuple) {
        for (size_t i = 0; i < a->u.list->n; i++)
            if (jinja__affix(x, at, s, &a->u.list->items[i], start))
                return true;
        return false;
    }
    jinja__need_str(x, at, a, start ? "startswith" : "endswith");
    size_t m = a->u.str.n;
    if (m > s->u.str.n)
        return false;
    return memcmp(start ? s->u.str.s : s->u.str.s + s->u.str.n - m, a->u.str.s, m) == 0;
}

struct jv jinja__join(struct jctx *x, const struct jnode *at, const struct jv *seq, const struct jv *sep,
                      const struct jv *attr)
{
    struct jv_list items = jinja__iterate(x, at, seq);
    struct lmd_buf b = {.arena = x->arena};
    for (size_t i = 0; i < items.n; i++) {
        if (i && sep)
            jv_write_str(x, &b, sep);
        struct jv v = items.items[i];
        if (attr && attr->type == JV_STR)
            v = jinja__getitem(x, at, &v, attr);
        jv_write_str(x, &b, &v);
    }
    return jv_str(b.ptr ? b.ptr : "", b.len);
}
