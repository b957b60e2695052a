/*
 * API keys: from an Authorization header value to a tenant index, and the
 * admin check for /debug.
 *
 * Keys are kept only as SHA-256 digests. A presented key is hashed once and
 * compared with CRYPTO_memcmp against every configured digest, and the
 * match is selected with masks instead of a branch, so the time taken
 * depends on the number of configured keys but not on which key matched,
 * whether one did, or how many leading bytes of a wrong key were right
 * (comparing digests already hides that, the full scan hides the rest).
 * This file never logs or copies a key.
 */
#include "qos/qos_int.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <string.h>
#include <strings.h>

void qos__digest(const char *key, size_t len, uint8_t out[QOS__DIGEST])
{
    SHA256((const unsigned char *)key, len, out);
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

/* Find the key in "Bearer <key>": the scheme case-insensitively, then one
 * or more spaces, then 1..QOS_KEY_MAX bytes of visible ASCII. Leading and
 * trailing spaces/tabs of the whole value are not part of it (RFC 9110
 * field values). Anything else — another scheme, no key, a key with inner
 * whitespace or control bytes — is no key at all. */
static bool bearer_key(const char *v, size_t len, const char **key, size_t *klen)
{
    if (!v)
        return false;
    while (len > 0 && is_ows(v[0]))
        v++, len--;
    while (len > 0 && is_ows(v[len - 1]))
        len--;
    if (len < 7 || strncasecmp(v, "bearer", 6) != 0 || v[6] != ' ')
        return false;
    size_t i = 6;
    while (i < len && v[i] == ' ')
        i++;
    if (i == len || len - i > QOS_KEY_MAX)
        return false;
    for (size_t j = i; j < len; j++)
        if ((unsigned char)v[j] <= 0x20 || (unsigned char)v[j] >= 0x7f)
            return false;
    *key = v + i;
    *klen = len - i;
    return true;
}

/* Index of the tenant whose key has this digest (want_admin: any admin key
 * matches → 0), or -1; constant time over all keys. */
static int scan(const struct qos__conf *q, const uint8_t d[QOS__DIGEST], bool want_admin)
{
    int found = -1;
    for (int i = 0; i < q->n_keys; i++) {
        const struct qos__key *k = &q->keys[i];
        int eq = CRYPTO_memcmp(d, k->digest, QOS__DIGEST) == 0;
        int kind = want_admin ? (k->tenant == QOS__ADMIN) : (k->tenant >= 0);
        int value = want_admin ? 0 : k->tenant;
        int mask = -(eq & kind); /* all ones on a match, else zero */
        found = (found & ~mask) | (value & mask);
    }
    return found;
}

/* The scan for the key in an Authorization value, or -1 when the value
 * carries no well-formed bearer key. The digest is wiped after use. */
static int lookup(const struct qos__conf *q, const char *value, size_t len, bool want_admin)
{
    const char *key;
    size_t klen;
    if (!bearer_key(value, len, &key, &klen))
        return -1;
    uint8_t d[QOS__DIGEST];
    qos__digest(key, klen, d);
    int t = scan(q, d, want_admin);
    OPENSSL_cleanse(d, sizeof d);
    return t;
}

int qos_authenticate(const struct qos *q, const char *value, size_t len)
{
    const struct qos__conf *c = qos__conf(q);
    if (!c->has_file)
        return 0;
    int t = lookup(c, value, len, false);
    return t >= 0 ? t : LMD_ENOENT;
}

bool qos_is_admin(const struct qos *q, const char *value, size_t len)
{
    const struct qos__conf *c = qos__conf(q);
    if (!c->has_file)
        return true;
    return lookup(c, value, len, true) == 0;
}
