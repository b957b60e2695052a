/*
 * Decoding (see tokenizer.h): the bytes each token stands for, as
 * llama.cpp's token_to_piece gives them, and an incremental detokenizer
 * that turns a stream of tokens into a stream of valid UTF-8.
 *
 * The detokenizer runs once per generated token, so it never allocates:
 * the piece is rendered into the tail of the caller's buffer and consumed
 * from there while complete characters are written from the front. Bytes
 * are checked against the strict UTF-8 grammar (no overlong forms, no
 * surrogates, nothing above U+10FFFF); each maximal ill-formed subpart
 * becomes one U+FFFD, which is what browsers and Python do too.
 *
 * Not here: the clean-up passes of llama_detokenize (" ," → ","), which
 * are a property of whole texts, not of streams.
 */
#include "tokenizer/tok_internal.h"

#include <string.h>

/* ---- pieces ---- */

/* Append `n` bytes at *pos if they fit; always advance *pos. */
static inline void put(char *buf, size_t cap, size_t *pos, const void *src, size_t n)
{
    if (buf && *pos < cap)
        memcpy(buf + *pos, src, n <= cap - *pos ? n : cap - *pos);
    *pos += n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The byte of a "<0xXX>" token (llama.cpp reads two hex digits at offset 3). */
static uint8_t byte_of(const char *t, size_t n)
{
    unsigned x = 0;
    for (size_t i = 3; i < 5 && i < n && hexval(t[i]) >= 0; i++)
        x = x * 16 + (unsigned)hexval(t[i]);
    return (uint8_t)x;
}

/* llama.cpp's llama_decode_text: code points of the byte-level alphabet
 * back to bytes; anything else is spelled out, oddly but faithfully. */
static size_t bpe_decode(const struct tok__bpe *b, const char *t, size_t n, char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;
    for (size_t i = 0; i < n;) {
        const uint8_t *u = (const uint8_t *)t + i;
        size_t cl = tok__utf8_len(u[0]), ok = cl <= n - i;
        for (size_t k = 1; ok && k < cl; k++)
            ok = (u[k] & 0xC0) == 0x80;
        if (!ok || (u[0] & 0xC0) == 0x80 || u[0] >= 0xF8)
            cl = 0; /* not a sequence: llama.cpp reads U+FFFD and moves one byte */
        uint32_t cp = 0xFFFD;
        if (cl == 1)
            cp = u[0];
        else if (cl == 2)
            cp = (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
        else if (cl == 3)
            cp = (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
        else if (cl == 4)
            cp = (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 |
                 (u[3] & 0x3F);
        i += cl ? cl : 1;
        if (cp < 0x144 && b->dec[cp] >= 0) {
            char c = (char)b->dec[cp];
            put(buf, cap, &pos, &c, 1);
            continue;
        }
        uint8_t e[4];
        size_t el;
        if (cp > 0x10FFFF)
            cp = 0xFFFD;
        if (cp < 0x80) {
            e[0] = (uint8_t)cp;
            el = 1;
        } else if (cp < 0x800) {
            e[0] = (uint8_t)(0xC0 | (cp >> 6));
            e[1] = (uint8_t)(0x80 | (cp & 0x3F));
            el = 2;
        } else if (cp < 0x10000) {
            e[0] = (uint8_t)(0xE0 | (cp >> 12));
            e[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            e[2] = (uint8_t)(0x80 | (cp & 0x3F));
            el = 3;
        } else {
            e[0] = (uint8_t)(0xF0 | (cp >> 18));
            e[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            e[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            e[3] = (uint8_t)(0x80 | (cp & 0x3F));
            el = 4;
        }
        put(buf, cap, &pos, "[UNK_BYTE_0x", 12);
        for (size_t k = 0; k < el; k++) {
            char h[2] = {hex[e[k] >> 4], hex[e[k] & 15]};
            put(buf, cap, &pos, h, 2);
        }
        put(buf, cap, &pos, t, n);
        put(buf, cap, &pos, "]", 1);
    }
    return pos;
}

size_t tok_piece(const struct tok_vocab *v, int32_t id, bool special, char *buf, size_t cap)
{
    if (!tok__valid(v, id))
        return 0;
    unsigned attr = v->attr[id];
    if (!special && (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL)))
        return 0;
    const char *t = tok_token_text(v, id);
    size_t n = tok_token_len(v, id), pos = 0;
    if (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        put(buf, cap, &pos, t, n);
    } else if (attr & TOK_ATTR_NORMAL) {
        if (v->family == TOK_FAMILY_BPE)
            return bpe_decode(v->bpe, t, n, buf, cap);
        for (size_t i = 0; i < n; i++) {
            if (i + 3 <= n && memcmp(t + i, "\xE2\x96\x81", 3) == 0) {
                put(buf, cap, &pos, " ", 1);
                i += 2;
            } else {
                put(buf, cap, &pos, t + i, 1);
            }
        }
    } else if (attr & TOK_ATTR_BYTE) {
        uint8_t c = byte_of(t, n);
        put(buf, cap, &pos, &c, 1);
    }
    /* UNUSED and UNDEFINED tokens decode to nothing, as in llama.cpp. */
    return pos;
}

/* ---- incremental detokenizer ---- */

size_t tok_detok_bound(const struct tok_vocab *v)
{
    /* Every input byte may turn into a 3-byte U+FFFD, plus the held bytes. */
    return 3 * v->max_piece + 16;
}

void tok_detok_init(struct tok_detok *d, const struct tok_vocab *v, bool special)
{
    memset(d, 0, sizeof *d);
    d->v = v;
    d->special = special;
    d->first = true;
}

/* Bytes in the sequence that `lead` starts (0: it cannot start one). */
static inline unsigned seq_len(uint8_t lead)
{
    if (lead < 0x80)
        return 1;
    if (lead >= 0xC2 && lead <= 0xDF)
        return 2;
    if (lead >= 0xE0 && lead <= 0xEF)
        return 3;
    if (lead >= 0xF0 && lead <= 0xF4)
        return 4;
    return 0;
}

/* Whether `c` may follow the held bytes (Unicode table 3-7). */
static inline bool continues(const uint8_t *pend, unsigned n_pend, uint8_t c)
{
    if (n_pend == 1) {
        switch (pend[0]) {
        case 0xE0:
            return c >= 0xA0 && c <= 0xBF;
        case 0xED:
            return c >= 0x80 && c <= 0x9F;
        case 0xF0:
            return c >= 0x90 && c <= 0xBF;
        case 0xF4:
            return c >= 0x80 && c <= 0x8F;
        default:
            break;
        }
    }
    return (c & 0xC0) == 0x80;
}

static const char k_fffd[3] = {'\xEF', '\xBF', '\xBD'};

/* Output cursor of one push: writes go to out[w..) but never reach
 * `limit`, the next input byte still to be read when input and output
 * share the buffer. Once something does not fit, nothing more is written,
 * so the output stays a prefix of the true text. */
struct sink {
    char *out;
    size_t w;
    bool full;
};

static inline void emit(struct sink *k, const void *p, size_t n, size_t limit)
{
    if (k->full || k->w + n > limit) {
        k->full = true;
        return;
    }
    memcpy(k->out + k->w, p, n);
    k->w += n;
}

/* Feed in[0..n) through the UTF-8 state; in[i] sits at out[in_off + i]. */
static void feed(struct tok_detok *d, const uint8_t *in, size_t n, struct sink *k, size_t cap, size_t in_off)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = in[i];
        size_t limit = in_off + i + 1 < cap ? in_off + i + 1 : cap; /* in[i] is already read */
        if (d->n_pend) {
            if (continues(d->pend, d->n_pend, c)) {
                d->pend[d->n_pend++] = c;
                if (d->n_pend == seq_len(d->pend[0])) {
                    emit(k, d->pend, d->n_pend, limit);
                    d->n_pend = 0;
                }
                continue;
            }
            /* The held bytes can never complete: one U+FFFD for them. */
            emit(k, k_fffd, 3, limit);
            d->n_pend = 0;
        }
        unsigned sl = seq_len(c);
        if (sl == 1) {
            emit(k, &c, 1, limit);
        } else if (sl == 0) {
            emit(k, k_fffd, 3, limit);
        } else {
            d->pend[0] = c;
            d->n_pend = 1;
        }
    }
}

size_t tok_detok_push(struct tok_detok *d, int32_t id, char *out, size_t cap)
{
    const struct tok_vocab *v = d->v;
    size_t plen = tok_piece(v, id, d->special, NULL, 0);
    bool strip = d->first && v->add_space_prefix;
    d->first = false;
    if (plen == 0 || !out || plen > cap)
        return 0;
    /* Render at the tail, consume from there, write from the front. */
    char *in = out + cap - plen;
    tok_piece(v, id, d->special, in, plen);
    size_t skip = strip && in[0] == ' ' ? 1 : 0;
    struct sink k = {out, 0, false};
    feed(d, (const uint8_t *)in + skip, plen - skip, &k, cap, cap - plen + skip);
    return k.w;
}

size_t tok_detok_flush(struct tok_detok *d, char *out, size_t cap)
{
    if (!d->n_pend)
        return 0;
    d->n_pend = 0;
    if (!out || cap < 3)
        return 0;
    memcpy(out, k_fffd, 3);
    return 3;
}
