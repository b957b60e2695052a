/*
 * Vocabulary loading (see tokenizer.h): reads and validates the
 * tokenizer.ggml.* metadata, copies the token strings into one table with a
 * text → id hash, and derives what llama.cpp derives at load time: default
 * special ids, the end-of-generation set, attribute fix-ups for
 * control-looking tokens, the byte-fallback table and the special-token
 * trie.
 *
 * Where llama.cpp only warns about broken metadata that lmd would go on to
 * use (special ids out of range, arrays of the wrong length), lmd refuses
 * the file with a precise error: a wrong id here turns into garbage output
 * much later, where nobody can trace it back.
 *
 * This file does not tokenize; encode.c, bpe.c and detok.c do.
 */
#include "tokenizer/tok_internal.h"

#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_VOCAB (1 << 26) /* tokens; far above any real vocabulary, keeps offsets in 32 bits */

/* ---- hashing and the string table ---- */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline uint64_t load32(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

static inline uint64_t mix(uint64_t h, uint64_t k)
{
    return rotl64(h ^ (k * 0xBF58476D1CE4E5B9ull), 31) * 0x94D049BB133111EBull;
}

uint64_t tok__hash(const void *p, size_t n)
{
    /* Eight bytes per step, and the tail read with (overlapping) fixed-size
     * loads instead of a byte loop: token strings are short, and this runs
     * for every candidate merge during encoding. */
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull);
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            h = mix(h, load64(s + i));
        if (i < n)
            h = mix(h, load64(s + n - 8));
    } else if (n >= 4) {
        h = mix(h, load32(s) << 32 | load32(s + n - 4));
    } else if (n > 0) {
        h = mix(h, (uint64_t)s[0] << 16 | (uint64_t)s[n >> 1] << 8 | s[n - 1]);
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

static uint32_t slots_for(uint32_t n)
{
    /* Load factor at most one half keeps probe chains short. */
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)n)
        cap *= 2;
    return cap;
}

int tok__strtab_init(struct tok__strtab *t, uint32_t n, size_t bytes)
{
    memset(t, 0, sizeof *t);
    if (n < 4)
        n = 4;
    t->cap_n = n + 1; /* adding the n-th string must not trigger a rebuild */
    t->blob_cap = bytes + n + 1;
    uint32_t n_slots = slots_for(n);
    t->blob = malloc(t->blob_cap);
    t->off = malloc(((size_t)n + 1) * sizeof *t->off);
    t->slots = malloc((size_t)n_slots * sizeof *t->slots);
    if (!t->blob || !t->off || !t->slots) {
        tok__strtab_free(t);
        return LMD_ENOMEM;
    }
    memset(t->slots, 0xff, (size_t)n_slots * sizeof *t->slots);
    t->mask = n_slots - 1;
    t->off[0] = 0;
    return 0;
}

void tok__strtab_free(struct tok__strtab *t)
{
    free(t->blob);
    free(t->off);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

int32_t tok__strtab_find(const struct tok__strtab *t, const char *s, size_t len)
{
    return tok__strtab_find_h(t, s, len, tok__hash(s, len));
}

int32_t tok__strtab_find_h(const struct tok__strtab *t, const char *s, size_t len, uint64_t h)
{
    if (!t->slots)
        return -1;
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        const struct tok__slot *sl = &t->slots[i];
        if (sl->idx < 0)
            return -1;
        if (sl->tag == tag && tok__strtab_len(t, (uint32_t)sl->idx) == len &&
            memcmp(tok__strtab_str(t, (uint32_t)sl->idx), s, len) == 0)
            return sl->idx;
    }
}

static void strtab_index(struct tok__strtab *t, uint64_t h, int32_t idx)
{
    uint32_t i = (uint32_t)h & t->mask;
    while (t->slots[i].idx >= 0)
        i = (i + 1) & t->mask;
    t->slots[i].tag = (uint32_t)(h >> 32);
    t->slots[i].idx = idx;
}

static int strtab_grow(struct tok__strtab *t, size_t need_bytes)
{
    if (t->blob_len + need_bytes > t->blob_cap) {
        size_t cap = t->blob_cap * 2 + need_bytes;
        if (cap > UINT32_MAX)
            return LMD_ENOMEM;
        char *b = realloc(t->blob, cap);
        if (!b)
            return LMD_ENOMEM;
        t->blob = b;
        t->blob_cap = cap;
    }
    if (t->n + 1 >= t->cap_n) {
        uint32_t cap_n = t->cap_n * 2;
        uint32_t *off = realloc(t->off, ((size_t)cap_n + 1) * sizeof *off);
        if (!off)
            return LMD_ENOMEM;
        t->off = off;
        uint32_t n_slots = slots_for(cap_n);
        struct tok__slot *slots = malloc((size_t)n_slots * sizeof *slots);
        if (!slots)
            return LMD_ENOMEM;
        free(t->slots);
        t->slots = slots;
        memset(t->slots, 0xff, (size_t)n_slots * sizeof *slots);
        t->mask = n_slots - 1;
        t->cap_n = cap_n;
        for (uint32_t i = 0; i < t->n; i++)
            strtab_index(t, tok__hash(tok__strtab_str(t, i), tok__strtab_len(t, i)), (int32_t)i);
    }
    return 0;
}

int32_t tok__strtab_add(struct tok__strtab *t, const char *s, size_t len, int *rc)
{
    return tok__strtab_add_h(t, s, len, tok__hash(s, len), rc);
}

int32_t tok__strtab_add_h(struct tok__strtab *t, const char *s, size_t len, uint64_t h, int *rc)
{
    *rc = 0;
    uint32_t tag = (uint32_t)(h >> 32);
    uint32_t i = (uint32_t)h & t->mask;
    for (; t->slots[i].idx >= 0; i = (i + 1) & t->mask) {
        const struct tok__slot *sl = &t->slots[i];
        if (sl->tag == tag && tok__strtab_len(t, (uint32_t)sl->idx) == len &&
            memcmp(tok__strtab_str(t, (uint32_t)sl->idx), s, len) == 0)
            return -1 - sl->idx;
    }
    if (t->blob_len + len + 1 > t->blob_cap || t->n + 1 >= t->cap_n) {
        *rc = strtab_grow(t, len + 1);
        if (*rc)
            return -1;
        /* The slots may have been rebuilt: find the free one again. */
        for (i = (uint32_t)h & t->mask; t->slots[i].idx >= 0; i = (i + 1) & t->mask)
            ;
    }
    memcpy(t->blob + t->blob_len, s, len);
    t->blob[t->blob_len + len] = '\0';
    t->blob_len += len + 1;
    int32_t idx = (int32_t)t->n++;
    t->off[t->n] = (uint32_t)t->blob_len;
    t->slots[i].tag = tag;
    t->slots[i].idx = idx;
    return idx;
}

/* ---- accessors ---- */

enum tok_family tok_family(const struct tok_vocab *v) { return v->family; }
int32_t tok_n_vocab(const struct tok_vocab *v) { return v->n_vocab; }
int32_t tok_bos(const struct tok_vocab *v) { return v->bos; }
int32_t tok_eos(const struct tok_vocab *v) { return v->eos; }
int32_t tok_eot(const struct tok_vocab *v) { return v->eot; }
int32_t tok_unk(const struct tok_vocab *v) { return v->unk; }
bool tok_add_bos(const struct tok_vocab *v) { return v->add_bos; }
bool tok_add_eos(const struct tok_vocab *v) { return v->add_eos; }
bool tok_add_space_prefix(const struct tok_vocab *v) { return v->add_space_prefix; }
const char *tok_pre_name(const struct tok_vocab *v) { return v->bpe ? v->bpe->pre_name : ""; }
size_t tok_piece_max(const struct tok_vocab *v) { return v->max_piece; }

bool tok_is_eog(const struct tok_vocab *v, int32_t id)
{
    return tok__valid(v, id) && (v->eog[id >> 3] >> (id & 7) & 1);
}

unsigned tok_token_attr(const struct tok_vocab *v, int32_t id) { return tok__valid(v, id) ? v->attr[id] : 0; }

const char *tok_token_text(const struct tok_vocab *v, int32_t id)
{
    return tok__valid(v, id) ? tok__strtab_str(&v->text, (uint32_t)id) : NULL;
}

size_t tok_token_len(const struct tok_vocab *v, int32_t id)
{
    return tok__valid(v, id) ? tok__strtab_len(&v->text, (uint32_t)id) : 0;
}

int32_t tok_find_n(const struct tok_vocab *v, const char *text, size_t len)
{
    return tok__strtab_find(&v->text, text, len);
}

int32_t tok_find(const struct tok_vocab *v, const char *text) { return tok_find_n(v, text, strlen(text)); }

int32_t tok__sid(const struct tok_vocab *v, const char *s, size_t len)
{
    int32_t id = tok__strtab_find(&v->text, s, len);
    if (id >= 0)
        return id;
    if (v->bpe && v->bpe->extra.n) {
        id = tok__strtab_find(&v->bpe->extra, s, len);
        if (id >= 0)
            return v->n_vocab + id;
    }
    return -1;
}

/* ---- loading ---- */

void tok_free(struct tok_vocab *v)
{
    if (!v)
        return;
    tok__strtab_free(&v->text);
    free(v->score);
    free(v->attr);
    free(v->eog);
    free(v->trie);
    free(v->special_ids);
    if (v->bpe)
        tok__bpe_free(v->bpe);
    free(v);
}

/* The token types stored on disk, mapped to attributes as llama.cpp does. */
static uint8_t attr_of_type(int32_t type)
{
    switch (type) {
    case 1:
        return TOK_ATTR_NORMAL;
    case 2:
        return TOK_ATTR_UNKNOWN;
    case 3:
        return TOK_ATTR_CONTROL;
    case 4:
        return TOK_ATTR_USER_DEFINED;
    case 5:
        return TOK_ATTR_UNUSED;
    case 6:
        return TOK_ATTR_BYTE;
    default:
        return TOK_ATTR_UNDEFINED;
    }
}

/* Record token i: its string (hash h), attributes and score. */
static int load_one(struct tok_vocab *v, const struct gguf_kv *types, const struct gguf_kv *scores, uint32_t i,
                    struct gguf_str s, uint64_t h, const char *path, struct lmd_err *err)
{
    int rc;
    int32_t idx = tok__strtab_add_h(&v->text, s.ptr, s.len, h, &rc);
    if (rc)
        return lmd_err_set(err, rc, "%s: out of memory loading tokens", path);
    if (idx < 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.tokens: token %u '%.*s' duplicates token %d", path, i,
                           (int)(s.len > 48 ? 48 : s.len), s.ptr, -1 - idx);
    if (s.len > v->max_token_len)
        v->max_token_len = (uint32_t)s.len;

    v->attr[i] = TOK_ATTR_NORMAL;
    if (types) {
        int32_t t = gguf_arr_i32(types, i);
        if (t < 0 || t > 6)
            return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.token_type[%u] = %d is not a token type (0..6)",
                               path, i, t);
        v->attr[i] = attr_of_type(t);
    }
    if (scores)
        v->score[i] = scores->arr_type == GGUF_VTYPE_FLOAT32 ? gguf_arr_f32(scores, i) : (float)gguf_arr_i32(scores, i);
    return 0;
}

static int load_tokens(struct tok_vocab *v, const struct gguf_file *f, struct lmd_err *err)
{
    const char *path = gguf_path(f);
    const struct gguf_kv *toks, *scores = NULL, *types = NULL;
    int rc = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_VTYPE_STRING, &toks, err);
    if (rc == LMD_ENOENT)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.tokens is missing", path);
    if (rc)
        return rc;
    if (toks->arr_n == 0 || toks->arr_n > TOK_MAX_VOCAB)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries (expected 1..%d)", path,
                           (unsigned long long)toks->arr_n, TOK_MAX_VOCAB);
    uint32_t n = (uint32_t)toks->arr_n;

    const struct gguf_kv *kv = gguf_kv_find(f, "tokenizer.ggml.scores");
    if (kv) {
        if (kv->type != GGUF_VTYPE_ARRAY || (kv->arr_type != GGUF_VTYPE_FLOAT32 && kv->arr_type != GGUF_VTYPE_INT32))
            return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.scores must be an ARRAY of FLOAT32 or INT32",
                               path);
        if (kv->arr_n != n)
            return lmd_err_set(err, LMD_EFORMAT,
                               "%s: tokenizer.ggml.scores has %llu entries but tokenizer.ggml.tokens has %u", path,
                               (unsigned long long)kv->arr_n, n);
        scores = kv;
    }
    rc = gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_VTYPE_INT32, &types, err);
    if (rc && rc != LMD_ENOENT)
        return rc;
    if (types && types->arr_n != n)
        return lmd_err_set(err, LMD_EFORMAT,
                           "%s: tokenizer.ggml.token_type has %llu entries but tokenizer.ggml.tokens has %u", path,
                           (unsigned long long)types->arr_n, n);

    size_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct gguf_str s = gguf_arr_str(toks, i);
        bytes += s.len ? s.len : 24; /* room for "[EMPTY_i]" */
    }
    if (bytes + n >= UINT32_MAX)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.tokens holds %zu bytes, too many", path, bytes);

    v->n_vocab = (int32_t)n;
    v->score = calloc(n, sizeof *v->score);
    v->attr = malloc(n);
    v->eog = calloc(n / 8 + 1, 1);
    if (!v->score || !v->attr || !v->eog || tok__strtab_init(&v->text, n, bytes))
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory loading %u tokens", path, n);

    /* The slot table is larger than the caches: hash a few tokens ahead
     * and prefetch their slots so the inserts do not wait on memory. */
    enum { AHEAD = 16 };
    uint64_t ring[AHEAD];
    char empty[AHEAD][24];
    struct gguf_str strs[AHEAD];
    for (uint32_t i = 0; i < n + AHEAD; i++) {
        if (i >= AHEAD) { /* before its ring slot is reused for token i */
            uint32_t j = i - AHEAD;
            rc = load_one(v, types, scores, j, strs[j % AHEAD], ring[j % AHEAD], path, err);
            if (rc)
                return rc;
        }
        if (i < n) {
            struct gguf_str s = gguf_arr_str(toks, i);
            if (s.len == 0) {
                /* llama.cpp renames empty tokens so they stay addressable. */
                s.len = (uint64_t)snprintf(empty[i % AHEAD], sizeof empty[0], "[EMPTY_%u]", i);
                s.ptr = empty[i % AHEAD];
            }
            strs[i % AHEAD] = s;
            ring[i % AHEAD] = tok__hash(s.ptr, s.len);
            tok__strtab_prefetch(&v->text, ring[i % AHEAD]);
        }
    }
    return 0;
}

/* Optional boolean key; leaves *out alone when absent. */
static int opt_bool(const struct gguf_file *f, const char *key, bool *out, struct lmd_err *err)
{
    int rc = gguf_get_bool(f, key, out, err);
    return rc == LMD_ENOENT ? 0 : rc;
}

/* Optional special-token id. `strict` ids are ones lmd acts on (BOS, EOS,
 * EOT …): out of range is an error. The others llama.cpp merely records; a
 * bad one there is dropped with a warning, as llama.cpp does. */
static int opt_id(const struct tok_vocab *v, const struct gguf_file *f, const char *key, int32_t *id, bool strict,
                  struct lmd_err *err)
{
    int64_t x;
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return 0;
    if (kv->type == GGUF_VTYPE_UINT8 || kv->type == GGUF_VTYPE_UINT16 || kv->type == GGUF_VTYPE_UINT32 ||
        kv->type == GGUF_VTYPE_UINT64)
        x = kv->v.u64 > INT32_MAX ? INT32_MAX : (int64_t)kv->v.u64;
    else if (kv->type == GGUF_VTYPE_INT8 || kv->type == GGUF_VTYPE_INT16 || kv->type == GGUF_VTYPE_INT32 ||
             kv->type == GGUF_VTYPE_INT64)
        x = kv->v.i64;
    else
        return lmd_err_set(err, LMD_EFORMAT, "%s: %s has type %s, expected an integer", gguf_path(f), key,
                           gguf_vtype_name(kv->type));
    if (x == -1) {
        *id = -1; /* some converters write -1 for "none" */
        return 0;
    }
    if (x < 0 || x >= v->n_vocab) {
        if (strict)
            return lmd_err_set(err, LMD_EFORMAT, "%s: %s = %lld is out of range (vocabulary has %d tokens)",
                               gguf_path(f), key, (long long)x, v->n_vocab);
        LMD_WARN("%s: %s = %lld is out of range (vocabulary has %d tokens); ignored", gguf_path(f), key, (long long)x,
                 v->n_vocab);
        return 0;
    }
    *id = (int32_t)x;
    return 0;
}

static void set_eog(struct tok_vocab *v, int32_t id, bool on)
{
    if (!tok__valid(v, id))
        return;
    if (on)
        v->eog[id >> 3] |= (uint8_t)(1u << (id & 7));
    else
        v->eog[id >> 3] &= (uint8_t) ~(1u << (id & 7));
}

/* The first of `names` that is a token, or -1. */
static int32_t find_any(const struct tok_vocab *v, const char *const *names)
{
    for (; *names; names++) {
        int32_t id = tok_find(v, *names);
        if (id >= 0)
            return id;
    }
    return -1;
}

/* llama.cpp finds these by text when the metadata does not name them, and
 * marks them CONTROL so that they are never produced from plain text. */
static void detect_by_text(struct tok_vocab *v, int32_t *slot, const char *const *names)
{
    if (*slot >= 0)
        return;
    *slot = find_any(v, names);
    if (*slot >= 0)
        v->attr[*slot] |= TOK_ATTR_CONTROL;
}

static const char *const k_eot_names[] = {"<|eot_id|>",
                                          "<|im_end|>",
                                          "<|end|>",
                                          "<end_of_turn>",
                                          "<|endoftext|>",
                                          "<|end_of_text|>",
                                          "<EOT>",
                                          "_<EOT>",
                                          "[EOT]",
                                          "<\xef\xbd\x9c"
                                          "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                          "<end_of_utterance>",
                                          NULL};
static const char *const k_eom_names[] = {"<|eom_id|>", NULL};
static const char *const k_fim_pre_names[] = {"<|fim_prefix|>",
                                              "<fim-prefix>",
                                              "<fim_prefix>",
                                              "<\xef\xbd\x9c"
                                              "fim\xe2\x96\x81"
                                              "begin\xef\xbd\x9c>",
                                              "<PRE>",
                                              "\xe2\x96\x81<PRE>",
                                              "<|code_prefix|>",
                                              "<|prefix|>",
                                              NULL};
static const char *const k_fim_suf_names[] = {"<|fim_suffix|>",
                                              "<fim-suffix>",
                                              "<fim_suffix>",
                                              "<\xef\xbd\x9c"
                                              "fim\xe2\x96\x81hole\xef\xbd\x9c>",
                                              "<SUF>",
                                              "\xe2\x96\x81<SUF>",
                                              "<|code_suffix|>",
                                              "<|suffix|>",
                                              NULL};
static const char *const k_fim_mid_names[] = {"<|fim_middle|>",
                                              "<fim-middle>",
                                              "<fim_middle>",
                                              "<\xef\xbd\x9c"
                                              "fim\xe2\x96\x81"
                                              "end\xef\xbd\x9c>",
                                              "<MID>",
                                              "\xe2\x96\x81<MID>",
                                              "<|code_middle|>",
                                              "<|middle|>",
                                              NULL};
static const char *const k_fim_pad_names[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const k_fim_rep_names[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                              "<REPO>",       "<reponame>",    NULL};
static const char *const k_fim_sep_names[] = {"<|file_sep|>", NULL};
/* Tokens that end generation, by text (llama.cpp's special_eog_ids list). */
static const char *const k_eog_names[] = {"<|eot_id|>",
                                          "<|im_end|>",
                                          "<|end|>",
                                          "<|return|>",
                                          "<|call|>",
                                          "<|flush|>",
                                          "<|calls|>",
                                          "<end_of_turn>",
                                          "<|endoftext|>",
                                          "</s>",
                                          "<|eom_id|>",
                                          "<EOT>",
                                          "_<EOT>",
                                          "[EOT]",
                                          "[EOS]",
                                          "<|end_of_text|>",
                                          "<end_of_utterance>",
                                          "<eos>",
                                          "<turn|>",
                                          "<|tool_response>",
                                          "<\xef\xbd\x9c"
                                          "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                          "[e~[",
                                          NULL};

static int load_specials(struct tok_vocab *v, const struct gguf_file *f, struct lmd_err *err)
{
    int32_t sep = -1, mask = -1, fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
    struct {
        const char *key;
        int32_t *id;
        bool strict;
    } keys[] = {
        {"tokenizer.ggml.bos_token_id", &v->bos, true},       {"tokenizer.ggml.eos_token_id", &v->eos, true},
        {"tokenizer.ggml.eot_token_id", &v->eot, true},       {"tokenizer.ggml.eom_token_id", &v->eom, true},
        {"tokenizer.ggml.unknown_token_id", &v->unk, true},   {"tokenizer.ggml.seperator_token_id", &sep, false},
        {"tokenizer.ggml.padding_token_id", &v->pad, false},  {"tokenizer.ggml.mask_token_id", &mask, false},
        {"tokenizer.ggml.fim_pre_token_id", &fim_pre, false}, {"tokenizer.ggml.fim_suf_token_id", &fim_suf, false},
        {"tokenizer.ggml.fim_mid_token_id", &fim_mid, false}, {"tokenizer.ggml.fim_pad_token_id", &fim_pad, false},
        {"tokenizer.ggml.fim_rep_token_id", &fim_rep, false}, {"tokenizer.ggml.fim_sep_token_id", &fim_sep, false},
        {"tokenizer.ggml.prefix_token_id", &fim_pre, false},  {"tokenizer.ggml.suffix_token_id", &fim_suf, false},
        {"tokenizer.ggml.middle_token_id", &fim_mid, false},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!tok__valid(v, *keys[i].id))
            *keys[i].id = -1; /* a family default that does not fit this vocabulary */
        int rc = opt_id(v, f, keys[i].key, keys[i].id, keys[i].strict, err);
        if (rc)
            return rc;
    }

    int rc = opt_bool(f, "tokenizer.ggml.add_bos_token", &v->add_bos, err);
    if (!rc)
        rc = opt_bool(f, "tokenizer.ggml.add_eos_token", &v->add_eos, err);
    if (rc)
        return rc;
    if (v->add_bos && v->bos < 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.add_bos_token is true but there is no BOS token",
                           gguf_path(f));
    if (v->add_eos && v->eos < 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.add_eos_token is true but there is no EOS token",
                           gguf_path(f));

    detect_by_text(v, &v->eot, k_eot_names);
    detect_by_text(v, &v->eom, k_eom_names);
    detect_by_text(v, &fim_pre, k_fim_pre_names);
    detect_by_text(v, &fim_suf, k_fim_suf_names);
    detect_by_text(v, &fim_mid, k_fim_mid_names);
    detect_by_text(v, &fim_pad, k_fim_pad_names);
    detect_by_text(v, &fim_rep, k_fim_rep_names);
    detect_by_text(v, &fim_sep, k_fim_sep_names);

    /* Control tokens named "unused" are placeholders. */
    for (int32_t id = 0; id < v->n_vocab; id++)
        if ((v->attr[id] & TOK_ATTR_CONTROL) && strstr(tok_token_text(v, id), "unused"))
            v->attr[id] |= TOK_ATTR_UNUSED;

    set_eog(v, fim_pad, true);
    set_eog(v, fim_rep, true);
    set_eog(v, fim_sep, true);
    for (const char *const *name = k_eog_names; *name; name++) {
        int32_t id = tok_find(v, *name);
        if (id >= 0) {
            set_eog(v, id, true);
            v->attr[id] |= TOK_ATTR_CONTROL;
        }
    }
    /* gpt-oss: these structure the output and are always rendered. */
    static const char *const always_shown[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
    for (const char *const *name = always_shown; *name; name++) {
        int32_t id = tok_find(v, *name);
        if (id >= 0)
            v->attr[id] = TOK_ATTR_USER_DEFINED;
    }
    set_eog(v, v->eos, true);
    set_eog(v, v->eot, true);
    set_eog(v, v->eom, true);

    /* Harmony-style vocabularies end a message with <|end|> but only stop
     * at <|return|> / <|call|>; llama.cpp drops <|end|> from the set. */
    int32_t end = tok_find(v, "<|end|>");
    bool has_return = tok_is_eog(v, tok_find(v, "<|return|>"));
    bool has_call = tok_is_eog(v, tok_find(v, "<|call|>")) || tok_is_eog(v, tok_find(v, "<|calls|>"));
    bool has_flush = tok_is_eog(v, tok_find(v, "<|flush|>"));
    if (tok_is_eog(v, end) && has_call && (has_return || has_flush)) {
        set_eog(v, end, false);
        v->attr[end] = TOK_ATTR_USER_DEFINED;
    }
    /* Gemma 4 uses </s> as ordinary text. */
    int32_t s_close = tok_find(v, "</s>");
    if (tok_is_eog(v, s_close) && tok_is_eog(v, tok_find(v, "<|tool_response>"))) {
        set_eog(v, s_close, false);
        v->attr[s_close] = TOK_ATTR_NORMAL;
    }
    return 0;
}

/* ---- special-token trie ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int build_trie(struct tok_vocab *v)
{
    size_t n_nodes = 0;
    int32_t n_special = 0;
    for (int32_t id = 0; id < v->n_vocab; id++) {
        if (v->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) {
            n_special++;
            n_nodes += tok_token_len(v, id);
        }
    }
    for (int i = 0; i < 256; i++)
        v->trie_root[i] = -1;
    v->n_special = n_special;
    if (n_special == 0)
        return 0;
    v->special_ids = malloc((size_t)n_special * sizeof *v->special_ids);
    v->trie = malloc(n_nodes * sizeof *v->trie);
    uint64_t *order = malloc((size_t)n_special * sizeof *order);
    if (!v->special_ids || !v->trie || !order) {
        free(order);
        return LMD_ENOMEM;
    }
    /* llama.cpp tries special tokens longest first (ties: lower id first,
     * where llama.cpp's unstable sort leaves the order unspecified). */
    n_special = 0;
    for (int32_t id = 0; id < v->n_vocab; id++)
        if (v->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN))
            order[n_special++] = (uint64_t)(UINT32_MAX - (uint32_t)tok_token_len(v, id)) << 32 | (uint32_t)id;
    qsort(order, (size_t)n_special, sizeof *order, cmp_u64);
    for (int32_t si = 0; si < n_special; si++)
        v->special_ids[si] = (int32_t)(uint32_t)order[si];
    free(order);

    for (int32_t si = 0; si < n_special; si++) {
        int32_t id = v->special_ids[si];
        const uint8_t *s = (const uint8_t *)tok_token_text(v, id);
        size_t len = tok_token_len(v, id);
        int32_t *link = &v->trie_root[s[0]];
        int32_t node = -1;
        for (size_t k = 0; k < len; k++) {
            if (k > 0) {
                link = &v->trie[node].child;
                while (*link >= 0 && v->trie[*link].byte != s[k])
                    link = &v->trie[*link].sibling;
            }
            if (*link < 0) {
                struct tok__trie_node *nn = &v->trie[v->n_trie];
                nn->child = nn->sibling = nn->id = nn->sidx = -1;
                nn->byte = s[k];
                *link = v->n_trie++;
            }
            node = *link;
        }
        v->trie[node].id = id;
        v->trie[node].sidx = si;
    }
    return 0;
}

/* ---- the whole load ---- */

int tok_load(struct tok_vocab **out, const struct gguf_file *f, struct lmd_err *err)
{
    *out = NULL;
    const char *path = gguf_path(f);
    struct gguf_str model;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &model, err);
    if (rc == LMD_ENOENT)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.model is missing", path);
    if (rc)
        return rc;
    enum tok_family family;
    if (gguf_str_eq(model, "llama"))
        family = TOK_FAMILY_SPM;
    else if (gguf_str_eq(model, "gpt2"))
        family = TOK_FAMILY_BPE;
    else
        return lmd_err_set(err, LMD_ENOTSUP,
                           "%s: tokenizer model '%.*s' is not supported (lmd implements 'llama' and 'gpt2')", path,
                           (int)(model.len > 64 ? 64 : model.len), model.ptr);

    struct tok_vocab *v = calloc(1, sizeof *v);
    if (!v)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", path);
    v->family = family;
    v->eot = v->eom = v->pad = -1;
    if (family == TOK_FAMILY_SPM) {
        /* llama.cpp's defaults for SentencePiece vocabularies. */
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_bos = true;
        v->add_space_prefix = true;
    } else {
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
    }

    rc = load_tokens(v, f, err);
    if (!rc && family == TOK_FAMILY_BPE)
        rc = tok__bpe_load(v, f, err); /* may turn add_bos on (Llama 3) */
    if (!rc)
        rc = opt_bool(f, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err);
    if (!rc)
        rc = load_specials(v, f, err);
    if (!rc && build_trie(v))
        rc = lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", path);
    if (rc) {
        tok_free(v);
        return rc;
    }

    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        v->byte_tok[b] = tok_find(v, hex);
        if (v->byte_tok[b] < 0) {
            char one = (char)b;
            v->byte_tok[b] = tok_find_n(v, &one, 1);
        }
    }
    for (int32_t id = 0; id < v->n_vocab; id++) {
        size_t n = tok_piece(v, id, true, NULL, 0);
        if (n > v->max_piece)
            v->max_piece = n;
    }
    *out = v;
    return 0;
}
