/*
 * Internals shared by grammar.c (the compiler) and gram_match.c (the
 * matcher and the vocabulary trie). Not for other subsystems.
 *
 * A compiled grammar is one array of elements holding every rule back to
 * back; a rule is its alternatives separated by GRAM_ALT and closed by
 * GRAM_END. A position in the grammar is an index into that array. A
 * matcher stack is a list of positions, the top last: the element to match
 * next, then where to resume in each enclosing rule.
 */
#pragma once

#include "sample/grammar.h"

#include <stdint.h>

enum gram_op {
    GRAM_END = 0,   /* end of a rule */
    GRAM_ALT = 1,   /* start of the next alternative */
    GRAM_REF = 2,   /* v = rule index */
    GRAM_CHAR = 3,  /* v = one code point */
    GRAM_CLASS = 4, /* v = class index */
};

struct gram_el {
    uint32_t op; /* enum gram_op */
    uint32_t v;
};

struct gram_class {
    uint32_t first; /* into gram.rng */
    uint32_t n;     /* ranges */
    bool neg;       /* [^...]: matches what none of the ranges cover */
};

struct gram {
    struct gram_el *el; /* [n_el] every rule back to back */
    uint32_t n_el;
    uint32_t *rule; /* [n_rules] index of each rule's first element */
    int n_rules;
    int root;
    uint32_t (*rng)[2]; /* [n_rng] inclusive code point ranges of the classes */
    uint32_t n_rng;
    struct gram_class *cls; /* [n_cls] */
    uint32_t n_cls;
};

static inline bool gram__is_end(const struct gram *g, uint32_t pos)
{
    return g->el[pos].op == GRAM_END || g->el[pos].op == GRAM_ALT;
}

/* Whether code point cp matches the character element at pos. */
static inline bool gram__match_cp(const struct gram *g, uint32_t pos, uint32_t cp)
{
    const struct gram_el *e = &g->el[pos];
    if (e->op == GRAM_CHAR)
        return e->v == cp;
    const struct gram_class *c = &g->cls[e->v];
    bool in = false;
    for (uint32_t i = 0; i < c->n && !in; i++)
        in = cp >= g->rng[c->first + i][0] && cp <= g->rng[c->first + i][1];
    return in != c->neg;
}

/* Whether the character element at pos could match some code point in
 * [lo, hi] (used while a character is only partly fed). */
static inline bool gram__match_range(const struct gram *g, uint32_t pos, uint32_t lo, uint32_t hi)
{
    const struct gram_el *e = &g->el[pos];
    if (e->op == GRAM_CHAR)
        return e->v >= lo && e->v <= hi;
    const struct gram_class *c = &g->cls[e->v];
    for (uint32_t i = 0; i < c->n; i++) {
        uint32_t a = g->rng[c->first + i][0], b = g->rng[c->first + i][1];
        if (!c->neg && a <= hi && b >= lo)
            return true;
        if (c->neg && a <= lo && b >= hi)
            return false; /* one excluded range covers all of [lo, hi] */
    }
    return c->neg;
}

/* The vocabulary trie (gram_vocab.c), walked by the mask (gram_match.c). */
#define GRAM_MAX_PIECE 128 /* longest token (bytes) the trie holds; longer ones are never allowed */

struct gram_node {
    uint32_t skip;   /* index of the next node outside this one's subtree */
    uint32_t tok;    /* first of this node's tokens in gram_vocab.tok_ids */
    uint32_t sub_lo; /* the subtree's tokens are tok_ids[sub_lo, sub_hi) */
    uint32_t sub_hi;
    uint16_t n_tok; /* tokens whose text ends here */
    uint8_t byte;
    uint8_t depth; /* 1 = first byte of a token */
    uint8_t plain; /* every token below, from this byte on, is plain text (see mask_walk) of at most
                      this many characters; 0 = not so */
};

struct gram_vocab {
    int n_vocab;
    struct gram_node *node; /* [n_node] in depth-first order */
    uint32_t n_node;
    int32_t *tok_ids; /* [tokens in the trie] grouped by node */
    uint32_t *off;    /* [n_vocab + 1] token i's bytes are bytes[off[i], off[i + 1]) (empty = never allowed) */
    uint8_t *bytes;
    int32_t *eog; /* [n_eog] tokens that end generation */
    int n_eog;
    uint8_t *is_eog; /* [n_vocab] */
};
