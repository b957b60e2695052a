/*
 * Encoding (see tokenizer.h): cuts special tokens out of the input, hands
 * the raw pieces to the family's tokenizer, adds BOS/EOS. The SentencePiece
 * tokenizer lives here too; byte-level BPE is in bpe.c.
 *
 * Special tokens are cut out exactly as llama.cpp's tokenizer_st_partition
 * does it: tokens are tried longest first, each one splitting every raw
 * fragment at all of its (non-overlapping, leftmost-first) occurrences. To
 * avoid trying thousands of tokens against every prompt, a trie walk first
 * collects the few special tokens that occur in the text at all; only those
 * are searched for.
 *
 * Merging (SPM here, BPE in bpe.c) follows llama.cpp's priority-queue
 * algorithm: O(n log n) in the fragment length, so a megabyte of spaces is
 * no worse than a megabyte of prose.
 *
 * Memory: one scratch set per call, grown as needed and freed on return.
 * Nothing here writes to the vocabulary, so calls may run concurrently.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/tok_internal.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

int tok__grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < n)
        c *= 2;
    if (c > SIZE_MAX / size)
        return LMD_ENOMEM;
    void *q = realloc(*p, c * size);
    if (!q)
        return LMD_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

void tok__scratch_free(struct tok__scratch *s)
{
    free(s->buf);
    free(s->buf2);
    free(s->buf3);
    free(s->sym);
    free(s->heap);
    free(s->words);
    free(s->words2);
    free(s->frag);
    free(s->seen);
    pcre2_match_data_free(s->match_data);
    memset(s, 0, sizeof *s);
}

/* ---- binary min-heap of candidate merges ---- */

void tok__heap_push(struct tok__scratch *s, struct tok__heap_ent e)
{
    struct tok__heap_ent *h = s->heap;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= e.key)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

struct tok__heap_ent tok__heap_pop(struct tok__scratch *s)
{
    struct tok__heap_ent *h = s->heap;
    struct tok__heap_ent top = h[0], last = h[--s->heap_n];
    size_t n = s->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1].key < h[c].key)
            c++;
        if (last.key <= h[c].key)
            break;
        h[i] = h[c];
        i = c;
    }
    if (n)
        h[i] = last;
    return top;
}

/* ---- SentencePiece ---- */

/* Heap priority of a score: higher scores first. -0.0 equals 0.0, as the
 * float comparison in llama.cpp has it. */
static inline uint32_t score_prio(float f)
{
    if (f == 0.0f)
        f = 0.0f;
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* now ascending with f */
    return ~u;
}

static void spm_pair(const struct tok_vocab *v, struct tok__scratch *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    uint32_t size = s->sym[l].n + s->sym[r].n;
    int32_t id = tok_find_n(v, s->buf + s->sym[l].off, size);
    if (id < 0)
        return;
    struct tok__heap_ent e = {(uint64_t)score_prio(v->score[id]) << 32 | (uint32_t)l, r, size};
    tok__heap_push(s, e);
}

int tok__spm_fragment(const struct tok_vocab *v, struct tok__scratch *s, const char *text, size_t len,
                      bool space_prefix, struct tok__out *o)
{
    /* Escape: spaces become U+2581 "▁", the way the vocabulary spells them. */
    if (tok__grow((void **)&s->buf, &s->buf_cap, 3 * len + 3, 1))
        return LMD_ENOMEM;
    char *t = s->buf;
    size_t n = 0;
    if (space_prefix) {
        memcpy(t, "\xE2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(t + n, "\xE2\x96\x81", 3);
            n += 3;
        } else {
            t[n++] = text[i];
        }
    }

    /* One symbol per UTF-8 character (by its lead byte, cut at the end). */
    if (tok__grow((void **)&s->sym, &s->sym_cap, n, sizeof *s->sym) ||
        tok__grow((void **)&s->heap, &s->heap_cap, 3 * n + 1, sizeof *s->heap))
        return LMD_ENOMEM;
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t cl = tok__utf8_len((uint8_t)t[off]);
        if (cl > n - off)
            cl = n - off;
        struct tok__sym *sy = &s->sym[n_sym];
        sy->prev = n_sym - 1;
        sy->off = (uint32_t)off;
        sy->n = (uint32_t)cl;
        sy->sid = -1;
        off += cl;
        sy->next = off == n ? -1 : n_sym + 1;
        n_sym++;
    }
    if (n_sym == 0)
        return 0;

    s->heap_n = 0;
    for (int32_t i = 1; i < n_sym; i++)
        spm_pair(v, s, i - 1, i);
    while (s->heap_n) {
        struct tok__heap_ent e = tok__heap_pop(s);
        int32_t l = (int32_t)(uint32_t)e.key;
        struct tok__sym *a = &s->sym[l], *c = &s->sym[e.right];
        if (a->n == 0 || c->n == 0 || a->n + c->n != e.size)
            continue; /* one side changed since the push */
        a->n += c->n;
        c->n = 0;
        a->next = c->next;
        if (c->next >= 0)
            s->sym[c->next].prev = l;
        spm_pair(v, s, a->prev, l);
        spm_pair(v, s, l, a->next);
    }

    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const struct tok__sym *a = &s->sym[i];
        int32_t id = tok_find_n(v, t + a->off, a->n);
        if (id >= 0) {
            tok__emit(o, id);
            continue;
        }
        /* A character the vocabulary lacks: one byte token per byte. */
        for (uint32_t k = 0; k < a->n; k++) {
            int32_t b = v->byte_tok[(uint8_t)t[a->off + k]];
            if (b < 0)
                b = v->unk; /* llama.cpp would throw; a vocabulary without byte tokens is rare */
            if (b >= 0)
                tok__emit(o, b);
        }
    }
    return 0;
}

/* ---- special tokens ---- */

static inline bool special_allowed(const struct tok_vocab *v, int32_t id, bool parse_special)
{
    /* User-defined tokens are always cut out, control and unknown ones only
     * when asked to: llama.cpp's (and Hugging Face's) rule. */
    return parse_special || !(v->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN));
}

/* Mark in s->seen the special tokens that occur anywhere in the text;
 * returns how many. */
static int32_t find_specials(const struct tok_vocab *v, struct tok__scratch *s, const uint8_t *text, size_t len,
                             bool parse_special)
{
    int32_t found = 0;
    for (size_t pos = 0; pos < len; pos++) {
        int32_t node = v->trie_root[text[pos]];
        size_t k = pos;
        while (node >= 0) {
            const struct tok__trie_node *nd = &v->trie[node];
            if (nd->id >= 0 && !(s->seen[nd->sidx >> 3] >> (nd->sidx & 7) & 1) &&
                special_allowed(v, nd->id, parse_special)) {
                s->seen[nd->sidx >> 3] |= (uint8_t)(1u << (nd->sidx & 7));
                found++;
            }
            if (++k >= len)
                break;
            for (node = nd->child; node >= 0 && v->trie[node].byte != text[k]; node = v->trie[node].sibling)
                ;
        }
    }
    return found;
}

/* Cut the special tokens out of the text: s->frag becomes a list (starting
 * at fragment 0) of raw pieces and special tokens, in text order. */
static int partition(const struct tok_vocab *v, struct tok__scratch *s, const char *text, size_t len,
                     bool parse_special)
{
    if (tok__grow((void **)&s->frag, &s->frag_cap, 16, sizeof *s->frag))
        return LMD_ENOMEM;
    s->frag[0] = (struct tok__frag){0, (uint32_t)len, -1, -1};
    int32_t n_frag = 1;
    if (v->n_special == 0)
        return 0;
    size_t seen_bytes = (size_t)v->n_special / 8 + 1;
    if (tok__grow((void **)&s->seen, &s->seen_cap, seen_bytes, 1))
        return LMD_ENOMEM;
    memset(s->seen, 0, seen_bytes);
    if (find_specials(v, s, (const uint8_t *)text, len, parse_special) == 0)
        return 0;

    for (int32_t si = 0; si < v->n_special; si++) {
        if (!(s->seen[si >> 3] >> (si & 7) & 1))
            continue;
        int32_t id = v->special_ids[si];
        const char *tt = tok_token_text(v, id);
        uint32_t tl = (uint32_t)tok_token_len(v, id);
        for (int32_t f = 0; f >= 0; f = s->frag[f].next) {
            while (s->frag[f].id < 0) {
                struct tok__frag *fr = &s->frag[f];
                const char *m = memmem(text + fr->off, fr->len, tt, tl);
                if (!m)
                    break;
                if (tok__grow((void **)&s->frag, &s->frag_cap, (size_t)n_frag + 2, sizeof *s->frag))
                    return LMD_ENOMEM;
                fr = &s->frag[f];
                uint32_t mo = (uint32_t)(m - text), end = fr->off + fr->len;
                int32_t tok = f;
                if (mo > fr->off) { /* text before the match stays in this fragment */
                    tok = n_frag++;
                    s->frag[tok] = (struct tok__frag){mo, tl, id, fr->next};
                    fr->len = mo - fr->off;
                    fr->next = tok;
                } else {
                    fr->id = id;
                    fr->len = tl;
                }
                f = tok;
                if (mo + tl < end) { /* go on searching the text after it */
                    int32_t right = n_frag++;
                    s->frag[right] = (struct tok__frag){mo + tl, end - (mo + tl), -1, s->frag[tok].next};
                    s->frag[tok].next = right;
                    f = right;
                }
            }
        }
    }
    return 0;
}

int64_t tok_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                   int32_t *out, size_t cap, struct lmd_err *err)
{
    if (len > UINT32_MAX / 4)
        return lmd_err_set(err, LMD_ERANGE, "text of %zu bytes is too long to tokenize", len);
    struct tok__out o = {out, cap, 0};
    struct tok__scratch s;
    memset(&s, 0, sizeof s);
    int rc = 0;

    if (add_special && v->add_bos)
        tok__emit(&o, v->bos);
    if (len > 0) {
        rc = partition(v, &s, text, len, parse_special);
        /* SPM puts the space prefix before the first raw piece and before
         * every raw piece that follows a special token. */
        bool prev_special = true;
        for (int32_t f = 0; !rc && f >= 0; f = s.frag[f].next) {
            const struct tok__frag *fr = &s.frag[f];
            if (fr->id >= 0) {
                tok__emit(&o, fr->id);
                prev_special = true;
                continue;
            }
            if (v->family == TOK_FAMILY_SPM)
                rc = tok__spm_fragment(v, &s, text + fr->off, fr->len, v->add_space_prefix && prev_special, &o);
            else
                rc = tok__bpe_fragment(v, &s, text + fr->off, fr->len, &o);
            prev_special = false;
        }
    }
    if (add_special && v->add_eos)
        tok__emit(&o, v->eos);
    tok__scratch_free(&s);
    if (rc == LMD_ENOMEM)
        return lmd_err_set(err, rc, "out of memory tokenizing %zu bytes", len);
    if (rc)
        return lmd_err_set(err, rc, "pre-tokenizer regex failed on %zu bytes of text", len);
    return (int64_t)o.n;
}
