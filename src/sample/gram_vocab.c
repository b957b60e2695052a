/*
 * The vocabulary as bytes (see grammar.h): every ordinary token's decoded
 * text in a prefix trie stored depth first, so the mask walk (gram_match.c)
 * can prune a whole subtree at the first byte the grammar refuses, plus
 * the end-of-generation tokens. Built once per model; immutable after.
 *
 * Each node also records whether every token below it is plain text from
 * that byte on, and how many characters at most (the plain runs that the
 * mask accepts whole inside a JSON string).
 */
#include "sample/gram_int.h"
#include "tokenizer/tokenizer.h"

#include <stdlib.h>
#include <string.h>

/* ---- the vocabulary trie -------------------------------------------------- */

static int cmp_piece(const void *a, const void *b, void *ctx)
{
    const struct gram_vocab *gv = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = gv->off[x + 1] - gv->off[x], ly = gv->off[y + 1] - gv->off[y];
    int c = memcmp(gv->bytes + gv->off[x], gv->bytes + gv->off[y], lx < ly ? lx : ly);
    if (c != 0)
        return c;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

void gram_vocab_free(struct gram_vocab *gv)
{
    if (!gv)
        return;
    free(gv->node);
    free(gv->tok_ids);
    free(gv->off);
    free(gv->bytes);
    free(gv->eog);
    free(gv->is_eog);
    free(gv);
}

int gram_vocab_n_vocab(const struct gram_vocab *gv) { return gv->n_vocab; }
int32_t gram_vocab_eog(const struct gram_vocab *gv) { return gv->n_eog > 0 ? gv->eog[0] : 0; }

/* The length of the plain character at s (see the plain runs), or 0. */
static int plain_char_len(const uint8_t *s, uint32_t n)
{
    uint8_t b = s[0];
    if (b < 0x80)
        return b >= 0x20 && b <= 0x7E && b != '"' && b != '\\' ? 1 : 0;
    int l = b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
    if (l == 0 || (uint32_t)l > n)
        return 0;
    for (int i = 1; i < l; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((b == 0xE0 && s[1] < 0xA0) || (b == 0xED && s[1] >= 0xA0) || (b == 0xF0 && s[1] < 0x90) ||
        (b == 0xF4 && s[1] >= 0x90))
        return 0;
    return l;
}

/* Build the trie from gv->off/bytes (already filled). */
static int build_trie(struct gram_vocab *gv, struct lmd_err *err)
{
    int n = gv->n_vocab;
    int32_t *order = malloc((size_t)n * sizeof *order);
    size_t total = gv->off[n];
    gv->node = malloc((total ? total : 1) * sizeof *gv->node);
    gv->tok_ids = malloc((size_t)n * sizeof *gv->tok_ids);
    uint32_t *open = malloc((GRAM_MAX_PIECE + 1) * sizeof *open);
    if (!order || !gv->node || !gv->tok_ids || !open) {
        free(order);
        free(open);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (gv->off[i + 1] > gv->off[i])
            order[m++] = i;
    qsort_r(order, (size_t)m, sizeof *order, cmp_piece, gv);
    uint32_t path[GRAM_MAX_PIECE + 1];            /* node index at each depth of the last token's path */
    uint8_t *seen = calloc(total ? total : 1, 1); /* [nodes] some token below was looked at for `plain` */
    if (!seen) {
        free(order);
        free(open);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
    }
    const uint8_t *prev = NULL;
    uint32_t prev_len = 0, n_node = 0, n_tok = 0;
    for (int k = 0; k < m; k++) {
        int32_t t = order[k];
        const uint8_t *s = gv->bytes + gv->off[t];
        uint32_t len = gv->off[t + 1] - gv->off[t], lcp = 0;
        while (prev && lcp < len && lcp < prev_len && s[lcp] == prev[lcp])
            lcp++;
        for (uint32_t d = lcp + 1; d <= len; d++) {
            gv->node[n_node] = (struct gram_node){.byte = s[d - 1], .depth = (uint8_t)d};
            path[d] = n_node++;
        }
        struct gram_node *nd = &gv->node[path[len]];
        if (nd->n_tok == 0)
            nd->tok = n_tok;
        nd->n_tok++;
        gv->tok_ids[n_tok++] = t;
        prev = s;
        prev_len = len;
        /* Plain suffixes: whether the token is plain characters from each
         * of its positions on, and how many; a node keeps the largest count
         * of its subtree, or 0 once one token below is not plain. */
        int chars[GRAM_MAX_PIECE + 1]; /* -1 = not plain from there */
        chars[len] = 0;
        for (int p = (int)len - 1; p >= 0; p--) {
            int l = plain_char_len(s + p, len - (uint32_t)p);
            chars[p] = l > 0 && chars[p + l] >= 0 ? chars[p + l] + 1 : -1;
        }
        for (uint32_t p = 0; p < len; p++) {
            struct gram_node *pn = &gv->node[path[p + 1]];
            int c = chars[p] > 255 ? -1 : chars[p];
            if (!seen[path[p + 1]]) {
                seen[path[p + 1]] = 1;
                pn->plain = c > 0 ? (uint8_t)c : 0;
            } else if (c <= 0) {
                pn->plain = 0;
            } else if (pn->plain && c > pn->plain) {
                pn->plain = (uint8_t)c;
            }
        }
    }
    free(seen);
    /* A node's subtree ends at the next node no deeper than it; its tokens
     * are the run of tok_ids from its own first to the next node's first. */
    int n_open = 0;
    uint32_t tok_at = 0; /* tokens of the nodes before i */
    for (uint32_t i = 0; i <= n_node; i++) {
        uint32_t d = i < n_node ? gv->node[i].depth : 0;
        while (n_open > 0 && gv->node[open[n_open - 1]].depth >= d) {
            struct gram_node *o = &gv->node[open[--n_open]];
            o->skip = i;
            o->sub_hi = tok_at;
        }
        if (i < n_node) {
            gv->node[i].sub_lo = tok_at;
            tok_at += gv->node[i].n_tok;
            open[n_open++] = i;
        }
    }
    gv->n_node = n_node;
    free(order);
    free(open);
    return 0;
}

int gram_vocab_build_raw(struct gram_vocab **out, int n_vocab, const char *const *pieces, const size_t *len,
                         const int32_t *eog, int n_eog, struct lmd_err *err)
{
    *out = NULL;
    struct gram_vocab *gv = calloc(1, sizeof *gv);
    if (!gv)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
    gv->n_vocab = n_vocab;
    size_t total = 0;
    for (int i = 0; i < n_vocab; i++)
        if (len[i] <= GRAM_MAX_PIECE)
            total += len[i];
    gv->off = malloc(((size_t)n_vocab + 1) * sizeof *gv->off);
    gv->bytes = malloc(total ? total : 1);
    gv->eog = malloc((size_t)(n_eog > 0 ? n_eog : 1) * sizeof *gv->eog);
    gv->is_eog = calloc((size_t)n_vocab, 1);
    if (!gv->off || !gv->bytes || !gv->eog || !gv->is_eog) {
        gram_vocab_free(gv);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
    }
    uint32_t at = 0;
    for (int i = 0; i < n_vocab; i++) {
        gv->off[i] = at;
        if (len[i] <= GRAM_MAX_PIECE) {
            memcpy(gv->bytes + at, pieces[i], len[i]);
            at += (uint32_t)len[i];
        }
    }
    gv->off[n_vocab] = at;
    for (int i = 0; i < n_eog; i++)
        if (eog[i] >= 0 && eog[i] < n_vocab && !gv->is_eog[eog[i]]) {
            gv->is_eog[eog[i]] = 1;
            gv->eog[gv->n_eog++] = eog[i];
        }
    int rc = gv->n_eog == 0 ? lmd_err_set(err, LMD_EINVAL, "a vocabulary needs an end-of-generation token")
                            : build_trie(gv, err);
    if (rc != 0) {
        gram_vocab_free(gv);
        return rc;
    }
    *out = gv;
    return 0;
}

int gram_vocab_build(struct gram_vocab **out, const struct tok_vocab *v, int n_logits, struct lmd_err *err)
{
    *out = NULL;
    int nv = tok_n_vocab(v), n = n_logits > nv ? n_logits : nv;
    const char **pieces = calloc((size_t)n, sizeof *pieces);
    size_t *len = calloc((size_t)n, sizeof *len), *at = calloc((size_t)n, sizeof *at);
    int32_t *eog = malloc((size_t)n * sizeof *eog);
    /* Every piece's bytes back to back in one buffer (at[i] = offset). */
    size_t cap = (size_t)nv * 8 + GRAM_MAX_PIECE, used = 0;
    char *all = malloc(cap);
    int n_eog = 0, rc = 0;
    if (!pieces || !len || !at || !eog || !all) {
        rc = lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
        goto out;
    }
    for (int i = 0; i < nv; i++) {
        if (tok_is_eog(v, i)) {
            eog[n_eog++] = i;
            continue;
        }
        if (tok_token_attr(v, i) & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN | TOK_ATTR_UNUSED))
            continue;
        if (cap - used < GRAM_MAX_PIECE + 1) {
            char *na = realloc(all, cap * 2);
            if (!na) {
                rc = lmd_err_set(err, LMD_ENOMEM, "out of memory for the vocabulary trie");
                goto out;
            }
            all = na;
            cap *= 2;
        }
        size_t l = tok_piece(v, i, false, all + used, GRAM_MAX_PIECE + 1);
        if (l == 0 || l > GRAM_MAX_PIECE)
            continue; /* nothing to match, or longer than the trie goes: never allowed */
        at[i] = used;
        len[i] = l;
        used += l;
    }
    for (int i = 0; i < n; i++)
        pieces[i] = all + at[i];
    if (n_eog == 0) {
        rc = lmd_err_set(err, LMD_ENOTSUP, "the vocabulary has no end-of-generation token");
        goto out;
    }
    rc = gram_vocab_build_raw(out, n, pieces, len, eog, n_eog, err);
out:
    free(pieces);
    free(len);
    free(at);
    free(eog);
    free(all);
    return rc;
}
