/*
 * Internals shared by the tokenizer's files: the vocabulary struct, the
 * string table, the special-token trie, the BPE tables and the merge heap.
 * Nothing outside src/tokenizer/ includes this; tokenizer.h is the public
 * face.
 */
#pragma once

#include "tokenizer/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- string table: owned strings → dense index, open addressing ---- */

struct tok__slot {
    uint32_t tag; /* high half of the hash, to skip most string compares */
    int32_t idx;  /* -1: empty */
};

struct tok__strtab {
    char *blob;              /* all strings, each followed by a NUL */
    size_t blob_len;         /* bytes used */
    size_t blob_cap;         /* bytes allocated */
    uint32_t *off;           /* [cap_n + 1] start of string i in blob; off[n] = blob_len */
    uint32_t n;              /* strings */
    uint32_t cap_n;          /* strings allocated */
    struct tok__slot *slots; /* [mask + 1] */
    uint32_t mask;
};

uint64_t tok__hash(const void *p, size_t n);
/* Reserve room for `n` strings of `bytes` total; 0 or LMD_ENOMEM. */
int tok__strtab_init(struct tok__strtab *t, uint32_t n, size_t bytes);
void tok__strtab_free(struct tok__strtab *t);
/* Index of the string, or -1. */
int32_t tok__strtab_find(const struct tok__strtab *t, const char *s, size_t len);
/* The same with the hash already computed (tok__hash(s, len)). */
int32_t tok__strtab_find_h(const struct tok__strtab *t, const char *s, size_t len, uint64_t h);
/* Append a copy and index it. Returns its index, -(1 + existing index) if
 * the string is already present (nothing appended), or LMD_ENOMEM via
 * *rc. Growing is allowed only for tables built with tok__strtab_init. */
int32_t tok__strtab_add(struct tok__strtab *t, const char *s, size_t len, int *rc);
/* The same with the hash already computed (tok__hash(s, len)). */
int32_t tok__strtab_add_h(struct tok__strtab *t, const char *s, size_t len, uint64_t h, int *rc);
/* Hint that a string with hash `h` is about to be added or looked up. */
static inline void tok__strtab_prefetch(const struct tok__strtab *t, uint64_t h)
{
    __builtin_prefetch(&t->slots[(uint32_t)h & t->mask]);
}

static inline const char *tok__strtab_str(const struct tok__strtab *t, uint32_t i) { return t->blob + t->off[i]; }
static inline size_t tok__strtab_len(const struct tok__strtab *t, uint32_t i) { return t->off[i + 1] - t->off[i] - 1; }

/* ---- special-token trie: finds control/user-defined tokens in text ---- */

struct tok__trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next sibling, -1 if none */
    int32_t id;      /* token ending here, -1 if none */
    int32_t sidx;    /* that token's index among the special tokens */
    uint8_t byte;
};

/* ---- byte-level BPE ---- */

enum tok__pre {
    TOK__PRE_DEFAULT = 0, /* llama.cpp's chain for a missing or "default" pre */
    TOK__PRE_GPT2,
    TOK__PRE_LLAMA3,
    TOK__PRE_QWEN2,
};

#define TOK__MAX_REGEX 4

struct tok__merge {
    uint64_t key; /* (left sid << 32) | right sid; UINT64_MAX: empty */
    int32_t rank;
    int32_t pad_;
};

struct tok__bpe {
    enum tok__pre pre;
    const char *pre_name;
    bool ignore_merges;        /* a word that is a whole token skips merging */
    uint8_t enc[256][2];       /* byte → its code point as UTF-8 */
    uint8_t enc_len[256];      /* bytes in enc[b] (1 or 2) */
    int16_t dec[0x144];        /* code point → byte, -1 if not a byte code point */
    int32_t byte_sid[256];     /* string id of enc[b], -1 if none */
    struct tok__merge *merges; /* [merge_mask + 1] */
    uint32_t merge_mask;
    uint32_t n_merges;
    struct tok__strtab extra; /* merge halves that are not tokens: string id = n_vocab + index */
    int n_regex;
    void *regex[TOK__MAX_REGEX]; /* pcre2_code_8 * */
    bool regex_jit[TOK__MAX_REGEX];
};

/* ---- the vocabulary ---- */

struct tok_vocab {
    enum tok_family family;
    int32_t n_vocab;
    struct tok__strtab text; /* token i is string i */
    float *score;            /* [n_vocab] */
    uint8_t *attr;           /* [n_vocab] enum tok_attr bits */
    uint8_t *eog;            /* [n_vocab / 8 + 1] bitmap */
    uint32_t max_token_len;  /* bytes */
    size_t max_piece;        /* bytes */

    int32_t bos, eos, eot, eom, unk, pad; /* -1 if none */
    bool add_bos, add_eos, add_space_prefix;

    int32_t byte_tok[256]; /* SPM byte fallback: token for each byte, -1 if none */

    /* Control, user-defined and unknown tokens, for finding them in text. */
    struct tok__trie_node *trie; /* [n_trie] */
    int32_t n_trie;
    int32_t trie_root[256]; /* node for each first byte, -1 if none */
    int32_t n_special;
    int32_t *special_ids; /* [n_special] ordered as llama.cpp tries them: longest first */

    struct tok__bpe *bpe; /* BPE family only */
};

static inline bool tok__valid(const struct tok_vocab *v, int32_t id) { return id >= 0 && id < v->n_vocab; }

/* String id for BPE merging: the token id if `s` is a token, else n_vocab +
 * its index among the extra merge strings, else -1. */
int32_t tok__sid(const struct tok_vocab *v, const char *s, size_t len);

/* BPE set-up (bpe.c): pre-tokenizer choice, byte tables, merges. */
int tok__bpe_load(struct tok_vocab *v, const struct gguf_file *f, struct lmd_err *err);
void tok__bpe_free(struct tok__bpe *b);

/* ---- encoding scratch: one per tok_encode call, grown as needed ---- */

struct tok__sym {
    int32_t prev, next; /* neighbours in the linked list, -1 at the ends */
    uint32_t off, n;    /* bytes of text; n == 0 once merged into the left neighbour */
    int32_t sid;        /* BPE: string id of the text, -1 if unknown */
};

struct tok__heap_ent {
    uint64_t key;  /* priority (smaller first), then left symbol index */
    int32_t right; /* right symbol index */
    uint32_t size; /* bytes of left + right when pushed; stale if they changed */
};

struct tok__out {
    int32_t *ids;
    size_t cap;
    size_t n; /* may exceed cap: counting goes on */
};

static inline void tok__emit(struct tok__out *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* A piece of the input after special tokens are cut out: raw text to
 * tokenize, or one special token. Kept as a linked list in an array. */
struct tok__frag {
    uint32_t off, len; /* bytes of the input */
    int32_t id;        /* the special token, or -1 for raw text */
    int32_t next;      /* next fragment, -1 at the end */
};

struct tok__scratch {
    char *buf; /* transformed text: escaped (SPM), canonical (BPE) */
    size_t buf_cap;
    char *buf2; /* BPE: regex view of the canonical text; byte-encoded word */
    size_t buf2_cap;
    char *buf3;
    size_t buf3_cap;
    struct tok__sym *sym;
    size_t sym_cap;
    struct tok__heap_ent *heap;
    size_t heap_n, heap_cap;
    uint32_t *words; /* BPE: (offset, length) pairs of the split */
    size_t words_cap;
    uint32_t *words2;
    size_t words2_cap;
    void *match_data; /* pcre2_match_data_8 * */
    struct tok__frag *frag;
    size_t frag_cap;
    uint8_t *seen; /* bitmap over the special tokens found in the input */
    size_t seen_cap;
};

/* Make `*p` hold at least `n` elements of `size` bytes; 0 or LMD_ENOMEM. */
int tok__grow(void **p, size_t *cap, size_t n, size_t size);

void tok__heap_push(struct tok__scratch *s, struct tok__heap_ent e); /* capacity reserved by caller */
struct tok__heap_ent tok__heap_pop(struct tok__scratch *s);

/* Tokenize one raw fragment (no special tokens inside) and emit the ids. */
int tok__spm_fragment(const struct tok_vocab *v, struct tok__scratch *s, const char *text, size_t len,
                      bool space_prefix, struct tok__out *o);
int tok__bpe_fragment(const struct tok_vocab *v, struct tok__scratch *s, const char *text, size_t len,
                      struct tok__out *o);
void tok__scratch_free(struct tok__scratch *s);

/* Length of the UTF-8 sequence that `lead` starts, as llama.cpp's
 * unicode_len_utf8 computes it: from the top four bits only. */
static inline size_t tok__utf8_len(uint8_t lead)
{
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[lead >> 4];
}
