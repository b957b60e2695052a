/*
 * Byte-level BPE (tokenizer.ggml.model = "gpt2"): the pre-tokenizer, the
 * byte ↔ code point mapping and rank-ordered merging, token-exact with
 * llama.cpp's llm_tokenizer_bpe.
 *
 * A raw fragment is first decoded the way llama.cpp decodes it (each byte
 * that does not start a well-formed sequence becomes U+FFFD), split into
 * words by the pre-tokenizer regexes (PCRE2, UTF mode), and each word's
 * bytes are mapped to the printable code points GPT-2 uses before merging.
 * llama.cpp runs hand-written equivalents of the Llama 3 and GPT-2 regexes;
 * the patterns here spell \s as the explicit White_Space set llama.cpp's
 * tables use, because PCRE2's own \s also matches U+180E.
 *
 * Merging works on string ids rather than strings: every symbol carries the
 * id of its text, merge ranks are keyed by (left id, right id), so finding a
 * candidate merge is one hash probe on two integers.
 *
 * Not here: special-token splitting (encode.c), decoding (detok.c).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/tok_internal.h"

#include "core/log.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's White_Space set, for \s. */
#define WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static const char k_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])";
static const char k_re_llama3[] = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                                  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*"
                                  "|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
static const char k_re_qwen2[] = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                                 "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*"
                                 "|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
/* llama.cpp's chain for a vocabulary without a known pre-tokenizer: each
 * regex splits the pieces the previous one left. */
static const char *const k_re_default[] = {"[\\p{P}$+<=>^~|]+", k_re_gpt2, "\\p{N}+", "[0-9][0-9][0-9]", NULL};
static const char *const k_re_gpt2_chain[] = {k_re_gpt2, NULL};
static const char *const k_re_llama3_chain[] = {k_re_llama3, NULL};
static const char *const k_re_qwen2_chain[] = {k_re_qwen2, NULL};

struct pre_def {
    const char *name;
    enum tok__pre pre;
    bool ignore_merges;
    bool add_bos;
};

/* The tokenizer.ggml.pre values lmd knows, grouped as llama.cpp groups them. */
static const struct pre_def k_pres[] = {
    {"default", TOK__PRE_DEFAULT, false, false},
    {"llama3", TOK__PRE_LLAMA3, true, true},
    {"llama-v3", TOK__PRE_LLAMA3, true, true},
    {"llama-bpe", TOK__PRE_LLAMA3, true, true},
    {"falcon3", TOK__PRE_LLAMA3, true, true},
    {"falcon-h1", TOK__PRE_LLAMA3, true, true},
    {"pixtral", TOK__PRE_LLAMA3, true, true},
    {"midm-2.0", TOK__PRE_LLAMA3, true, true},
    {"lfm2", TOK__PRE_LLAMA3, true, true},
    {"dbrx", TOK__PRE_LLAMA3, false, false},
    {"smaug-bpe", TOK__PRE_LLAMA3, false, false},
    {"gpt2", TOK__PRE_GPT2, false, false},
    {"gpt-2", TOK__PRE_GPT2, false, false},
    {"phi-2", TOK__PRE_GPT2, false, false},
    {"mpt", TOK__PRE_GPT2, false, false},
    {"olmo", TOK__PRE_GPT2, false, false},
    {"jais", TOK__PRE_GPT2, false, false},
    {"roberta-bpe", TOK__PRE_GPT2, false, false},
    {"exaone4", TOK__PRE_GPT2, false, false},
    {"qwen2", TOK__PRE_QWEN2, false, false},
    {"deepseek-r1-qwen", TOK__PRE_QWEN2, false, false},
    {"megrez", TOK__PRE_QWEN2, false, false},
    {"stablelm2", TOK__PRE_QWEN2, false, false},
    {"hunyuan", TOK__PRE_QWEN2, false, false},
};

void tok__bpe_free(struct tok__bpe *b)
{
    for (int i = 0; i < b->n_regex; i++)
        pcre2_code_free(b->regex[i]);
    free(b->merges);
    tok__strtab_free(&b->extra);
    free(b);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    x ^= x >> 33;
    return x;
}

static inline uint64_t merge_key(int32_t l, int32_t r) { return (uint64_t)(uint32_t)l << 32 | (uint32_t)r; }

/* Rank of merging (l, r), or -1. */
static int32_t merge_rank(const struct tok__bpe *b, int32_t l, int32_t r)
{
    uint64_t key = merge_key(l, r);
    for (uint32_t i = (uint32_t)mix64(key) & b->merge_mask;; i = (i + 1) & b->merge_mask) {
        if (b->merges[i].key == key)
            return b->merges[i].rank;
        if (b->merges[i].key == UINT64_MAX)
            return -1;
    }
}

/* String id of a merge half, adding it to the extra table if it is not a
 * token. Returns -1 with *rc set on allocation failure. */
static int32_t half_sid(struct tok_vocab *v, const char *s, size_t len, int *rc)
{
    *rc = 0;
    int32_t id = tok__strtab_find(&v->text, s, len);
    if (id >= 0)
        return id;
    struct tok__strtab *x = &v->bpe->extra;
    if (!x->slots && (*rc = tok__strtab_init(x, 64, 1024)))
        return -1;
    id = tok__strtab_add(x, s, len, rc);
    if (*rc)
        return -1;
    return v->n_vocab + (id < 0 ? -1 - id : id);
}

static int load_merges(struct tok_vocab *v, const struct gguf_file *f, struct lmd_err *err)
{
    const char *path = gguf_path(f);
    struct tok__bpe *b = v->bpe;
    const struct gguf_kv *kv;
    int rc = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_VTYPE_STRING, &kv, err);
    if (rc == LMD_ENOENT)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.merges is missing (a gpt2 vocabulary needs it)", path);
    if (rc)
        return rc;
    if (kv->arr_n > INT32_MAX / 4)
        return lmd_err_set(err, LMD_EFORMAT, "%s: tokenizer.ggml.merges has %llu entries, too many", path,
                           (unsigned long long)kv->arr_n);
    b->n_merges = (uint32_t)kv->arr_n;
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)b->n_merges)
        cap *= 2;
    b->merges = malloc((size_t)cap * sizeof *b->merges);
    if (!b->merges)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory loading merges", path);
    memset(b->merges, 0xff, (size_t)cap * sizeof *b->merges);
    b->merge_mask = cap - 1;

    for (uint32_t i = 0; i < b->n_merges; i++) {
        struct gguf_str s = gguf_arr_str(kv, i);
        /* llama.cpp splits at the first space after the first byte. */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp)
            return lmd_err_set(err, LMD_EFORMAT,
                               "%s: tokenizer.ggml.merges[%u] '%.*s' is not two strings separated by a space", path, i,
                               (int)(s.len > 48 ? 48 : s.len), s.ptr);
        size_t ll = (size_t)(sp - s.ptr), rl = s.len - ll - 1;
        if (rl == 0)
            continue; /* can never apply: symbols are never empty */
        int32_t l = half_sid(v, s.ptr, ll, &rc);
        int32_t r = rc ? -1 : half_sid(v, sp + 1, rl, &rc);
        if (rc)
            return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory loading merges", path);
        uint64_t key = merge_key(l, r);
        uint32_t j = (uint32_t)mix64(key) & b->merge_mask;
        while (b->merges[j].key != UINT64_MAX && b->merges[j].key != key)
            j = (j + 1) & b->merge_mask;
        if (b->merges[j].key == UINT64_MAX) { /* a repeated pair keeps its first rank */
            b->merges[j].key = key;
            b->merges[j].rank = (int32_t)i;
        }
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to
 * U+0100 onwards in byte order. */
static void build_byte_tables(struct tok_vocab *v)
{
    struct tok__bpe *b = v->bpe;
    int n = 0;
    for (int i = 0; i < 0x144; i++)
        b->dec[i] = -1;
    for (int c = 0; c < 256; c++) {
        bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        uint32_t cp = printable ? (uint32_t)c : 256u + (uint32_t)n++;
        if (cp < 0x80) {
            b->enc[c][0] = (uint8_t)cp;
            b->enc_len[c] = 1;
        } else {
            b->enc[c][0] = (uint8_t)(0xC0 | (cp >> 6));
            b->enc[c][1] = (uint8_t)(0x80 | (cp & 0x3F));
            b->enc_len[c] = 2;
        }
        b->dec[cp] = (int16_t)c;
    }
    for (int c = 0; c < 256; c++)
        b->byte_sid[c] = tok__sid(v, (const char *)b->enc[c], b->enc_len[c]);
}

static int compile_regexes(struct tok__bpe *b, const char *const *chain, const char *path, struct lmd_err *err)
{
    for (b->n_regex = 0; chain[b->n_regex]; b->n_regex++) {
        int code;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)chain[b->n_regex], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                       &code, &at, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            /* The patterns are ours: a failure is a bug, but say which. */
            return lmd_err_set(err, LMD_ENOTSUP, "%s: pre-tokenizer regex %d does not compile at %zu: %s", path,
                               b->n_regex, (size_t)at, (const char *)msg);
        }
        b->regex[b->n_regex] = re;
        /* JIT is several times faster; without it (no JIT support built
         * in) the interpreter gives the same splits. */
        b->regex_jit[b->n_regex] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    }
    return 0;
}

int tok__bpe_load(struct tok_vocab *v, const struct gguf_file *f, struct lmd_err *err)
{
    const char *path = gguf_path(f);
    v->bpe = calloc(1, sizeof *v->bpe);
    if (!v->bpe)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", path);
    struct tok__bpe *b = v->bpe;

    struct gguf_str pre = {"", 0};
    int rc = gguf_get_str(f, "tokenizer.ggml.pre", &pre, err);
    if (rc && rc != LMD_ENOENT)
        return rc;
    const struct pre_def *def = NULL;
    if (pre.len == 0) {
        def = &k_pres[0];
    } else {
        for (size_t i = 0; i < sizeof k_pres / sizeof k_pres[0]; i++)
            if (gguf_str_eq(pre, k_pres[i].name))
                def = &k_pres[i];
        if (!def) {
            LMD_WARN("%s: unknown pre-tokenizer '%.*s'; using the GPT-2 regex, tokens may differ from the model's",
                     path, (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
            static const struct pre_def fallback = {"gpt2", TOK__PRE_GPT2, false, false};
            def = &fallback;
        }
    }
    b->pre = def->pre;
    b->pre_name = def->name;
    b->ignore_merges = def->ignore_merges;
    if (def->add_bos)
        v->add_bos = true;

    rc = load_merges(v, f, err);
    if (rc)
        return rc;
    build_byte_tables(v);
    const char *const *chain = b->pre == TOK__PRE_LLAMA3  ? k_re_llama3_chain
                               : b->pre == TOK__PRE_QWEN2 ? k_re_qwen2_chain
                               : b->pre == TOK__PRE_GPT2  ? k_re_gpt2_chain
                                                          : k_re_default;
    return compile_regexes(b, chain, path, err);
}

/* ---- encoding ---- */

/* Decode as llama.cpp's unicode_cpts_from_utf8 does (lenient about
 * overlong forms; each byte that starts no sequence becomes U+FFFD) and
 * write the code points back out as UTF-8: `canon` is what the words are
 * cut from, `view` the same with surrogates replaced by U+FFFD (same
 * length) so that PCRE2 sees valid UTF-8. Returns the canonical length. */
static size_t canonicalize(const uint8_t *t, size_t n, uint8_t *canon, uint8_t *view)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = t[i];
        uint32_t cp = 0xFFFD;
        size_t used = 1;
        if (!(c & 0x80)) {
            cp = c;
        } else if (!(c & 0x40)) {
            /* stray continuation byte */
        } else if (!(c & 0x20)) {
            if (i + 1 < n && (t[i + 1] & 0xC0) == 0x80) {
                cp = (uint32_t)(c & 0x1F) << 6 | (t[i + 1] & 0x3F);
                used = 2;
            }
        } else if (!(c & 0x10)) {
            if (i + 2 < n && (t[i + 1] & 0xC0) == 0x80 && (t[i + 2] & 0xC0) == 0x80) {
                cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(t[i + 1] & 0x3F) << 6 | (t[i + 2] & 0x3F);
                used = 3;
            }
        } else if (!(c & 0x08)) {
            if (i + 3 < n && (t[i + 1] & 0xC0) == 0x80 && (t[i + 2] & 0xC0) == 0x80 && (t[i + 3] & 0xC0) == 0x80) {
                cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(t[i + 1] & 0x3F) << 12 | (uint32_t)(t[i + 2] & 0x3F) << 6 |
                     (t[i + 3] & 0x3F);
                used = 4;
            }
        }
        if (cp > 0x10FFFF)
            cp = 0xFFFD; /* llama.cpp throws here; lmd keeps going */
        i += used;
        size_t o0 = o;
        if (cp < 0x80) {
            canon[o++] = (uint8_t)cp;
        } else if (cp < 0x800) {
            canon[o++] = (uint8_t)(0xC0 | (cp >> 6));
            canon[o++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            canon[o++] = (uint8_t)(0xE0 | (cp >> 12));
            canon[o++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            canon[o++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else {
            canon[o++] = (uint8_t)(0xF0 | (cp >> 18));
            canon[o++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            canon[o++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            canon[o++] = (uint8_t)(0x80 | (cp & 0x3F));
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            memcpy(view + o0, "\xEF\xBF\xBD", 3);
        else
            memcpy(view + o0, canon + o0, o - o0);
    }
    return o;
}

/* Split every piece in `in` (offset, length pairs) with `re`; matches and
 * the gaps between them both become pieces, as in llama.cpp. */
static int split_pieces(const struct tok__bpe *b, int ri, struct tok__scratch *s, const uint8_t *view,
                        const uint32_t *in, size_t n_in, uint32_t **outp, size_t *out_cap, size_t *n_out)
{
    pcre2_match_data *md = s->match_data;
    size_t n = 0;
    for (size_t k = 0; k < n_in; k++) {
        uint32_t base = in[2 * k], len = in[2 * k + 1];
        PCRE2_SIZE start = 0;
        uint32_t options = PCRE2_NO_UTF_CHECK;
        while (start < len) {
            int rc = pcre2_match(b->regex[ri], view + base, len, start, options, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0 && b->regex_jit[ri] && !(options & PCRE2_NO_JIT)) {
                options |= PCRE2_NO_JIT; /* e.g. the JIT stack ran out: retry interpreted */
                continue;
            }
            if (rc < 0)
                return LMD_ERANGE;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            PCRE2_SIZE ms = ov[0], me = ov[1];
            if (tok__grow((void **)outp, out_cap, 2 * (n + 2), sizeof **outp))
                return LMD_ENOMEM;
            if (ms > start) {
                (*outp)[2 * n] = base + (uint32_t)start;
                (*outp)[2 * n + 1] = (uint32_t)(ms - start);
                n++;
            }
            if (me == ms) {
                /* None of our patterns matches empty; step over a character
                 * rather than loop forever if one ever does. */
                start = ms + 1;
                while (start < len && (view[base + start] & 0xC0) == 0x80)
                    start++;
                continue;
            }
            (*outp)[2 * n] = base + (uint32_t)ms;
            (*outp)[2 * n + 1] = (uint32_t)(me - ms);
            n++;
            start = me;
        }
        if (start < len) {
            if (tok__grow((void **)outp, out_cap, 2 * (n + 1), sizeof **outp))
                return LMD_ENOMEM;
            (*outp)[2 * n] = base + (uint32_t)start;
            (*outp)[2 * n + 1] = (uint32_t)(len - start);
            n++;
        }
    }
    *n_out = n;
    return 0;
}

static void add_pair(const struct tok_vocab *v, struct tok__scratch *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    const struct tok__sym *a = &s->sym[l], *c = &s->sym[r];
    if (a->sid < 0 || c->sid < 0)
        return;
    int32_t rank = merge_rank(v->bpe, a->sid, c->sid);
    if (rank < 0)
        return;
    struct tok__heap_ent e = {(uint64_t)(uint32_t)rank << 32 | (uint32_t)l, r, a->n + c->n};
    tok__heap_push(s, e);
}

/* Merge one byte-encoded word (in s->buf3, `n` bytes of `n_sym` symbols)
 * and emit its tokens. */
static void merge_word(const struct tok_vocab *v, struct tok__scratch *s, size_t n_sym, struct tok__out *o)
{
    const char *w = s->buf3;
    s->heap_n = 0;
    for (size_t i = 1; i < n_sym; i++)
        add_pair(v, s, (int32_t)i - 1, (int32_t)i);
    while (s->heap_n) {
        struct tok__heap_ent e = tok__heap_pop(s);
        int32_t l = (int32_t)(uint32_t)e.key;
        struct tok__sym *a = &s->sym[l], *c = &s->sym[e.right];
        /* Stale if either side was merged away or grew since the push. */
        if (a->n == 0 || c->n == 0 || a->n + c->n != e.size)
            continue;
        a->n += c->n;
        c->n = 0;
        a->sid = tok__sid(v, w + a->off, a->n);
        a->next = c->next;
        if (c->next >= 0)
            s->sym[c->next].prev = l;
        add_pair(v, s, a->prev, l);
        add_pair(v, s, l, a->next);
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const struct tok__sym *a = &s->sym[i];
        if (a->sid >= 0 && a->sid < v->n_vocab) {
            tok__emit(o, a->sid);
            continue;
        }
        /* Not a token (a vocabulary whose merges leave the vocabulary):
         * llama.cpp looks each byte of the encoded text up as a one-byte
         * token and drops those that are not. */
        for (uint32_t k = 0; k < a->n; k++) {
            int32_t id = tok_find_n(v, w + a->off + k, 1);
            if (id >= 0)
                tok__emit(o, id);
        }
    }
}

int tok__bpe_fragment(const struct tok_vocab *v, struct tok__scratch *s, const char *text, size_t len,
                      struct tok__out *o)
{
    const struct tok__bpe *b = v->bpe;
    if (tok__grow((void **)&s->buf, &s->buf_cap, 3 * len + 4, 1) ||
        tok__grow((void **)&s->buf2, &s->buf2_cap, 3 * len + 4, 1))
        return LMD_ENOMEM;
    uint8_t *canon = (uint8_t *)s->buf, *view = (uint8_t *)s->buf2;
    size_t n = canonicalize((const uint8_t *)text, len, canon, view);

    if (!s->match_data && !(s->match_data = pcre2_match_data_create(1, NULL)))
        return LMD_ENOMEM;
    if (tok__grow((void **)&s->words, &s->words_cap, 2, sizeof *s->words))
        return LMD_ENOMEM;
    s->words[0] = 0;
    s->words[1] = (uint32_t)n;
    size_t n_words = 1;
    for (int ri = 0; ri < b->n_regex; ri++) {
        int rc = split_pieces(b, ri, s, view, s->words, n_words, &s->words2, &s->words2_cap, &n_words);
        if (rc)
            return rc;
        uint32_t *t = s->words;
        size_t tc = s->words_cap;
        s->words = s->words2;
        s->words_cap = s->words2_cap;
        s->words2 = t;
        s->words2_cap = tc;
    }

    for (size_t k = 0; k < n_words; k++) {
        const uint8_t *word = canon + s->words[2 * k];
        size_t wl = s->words[2 * k + 1];
        if (tok__grow((void **)&s->buf3, &s->buf3_cap, 2 * wl + 1, 1) ||
            tok__grow((void **)&s->sym, &s->sym_cap, wl, sizeof *s->sym) ||
            tok__grow((void **)&s->heap, &s->heap_cap, 3 * wl + 1, sizeof *s->heap))
            return LMD_ENOMEM;
        /* One symbol per input byte, holding that byte's code point. */
        size_t el = 0;
        for (size_t i = 0; i < wl; i++) {
            uint8_t c = word[i];
            struct tok__sym *sy = &s->sym[i];
            sy->prev = (int32_t)i - 1;
            sy->next = i + 1 < wl ? (int32_t)i + 1 : -1;
            sy->off = (uint32_t)el;
            sy->n = b->enc_len[c];
            sy->sid = b->byte_sid[c];
            memcpy(s->buf3 + el, b->enc[c], b->enc_len[c]);
            el += b->enc_len[c];
        }
        if (b->ignore_merges) {
            int32_t id = tok_find_n(v, s->buf3, el);
            if (id >= 0) {
                tok__emit(o, id);
                continue;
            }
        }
        merge_word(v, s, wl, o);
    }
    return 0;
}
