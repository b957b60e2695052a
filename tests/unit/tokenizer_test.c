/*
 * Tokenizer tests: token-exact agreement with llama.cpp on a corpus for six
 * vocabularies (the golden files in tests/golden/tokenizer/, written by
 * make_golden.py), decoding and streaming, malformed metadata (GGUF images
 * built in memory), and inputs that would expose quadratic behaviour.
 *
 * The default model (models/default.gguf, Gemma 3) must be present: CI
 * fetches it before the tests (make model).
 */
#include "tokenizer/tokenizer.h"

#include "core/time.h"
#include "gguf/gguf.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define GOLDEN_DIR LMD_SOURCE_DIR "/tests/golden/tokenizer"

struct loaded {
    struct gguf_file *f;
    struct tok_vocab *v;
};

static struct loaded load_path(const char *path)
{
    struct loaded l = {0};
    struct lmd_err err = {0};
    int rc = gguf_open(&l.f, path, &err);
    if (rc) {
        print_error("cannot open %s: %s\n(the default model comes from `make model`; the small vocabularies from "
                    "tests/golden/tokenizer/make_vocabs.py)\n",
                    path, err.msg);
        fail();
    }
    rc = tok_load(&l.v, l.f, &err);
    if (rc) {
        print_error("tok_load(%s): %s\n", path, err.msg);
        fail();
    }
    return l;
}

static void unload(struct loaded *l)
{
    tok_free(l->v);
    gguf_close(l->f);
}

/* ---- helpers ---- */

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned x;
        sscanf(h + 2 * i, "%2x", &x);
        out[i] = (uint8_t)x;
    }
    return n;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001B3ull;
    return h;
}

#define FNV_INIT 0xCBF29CE484222325ull

static uint64_t hash_rec(uint64_t h, const void *p, uint32_t n)
{
    uint8_t le[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    return fnv1a(fnv1a(h, le, 4), p, n);
}

/* Encode into a malloc'd array, exercising the retry-on-short-buffer path. */
static int32_t *encode(const struct tok_vocab *v, const uint8_t *t, size_t n, bool add, bool special, size_t *n_out)
{
    struct lmd_err err = {0};
    int32_t small[4];
    int64_t k = tok_encode(v, (const char *)t, n, add, special, small, 4, &err);
    assert_true(k >= 0);
    int32_t *ids = malloc(((size_t)k + 1) * sizeof *ids);
    int64_t k2 = tok_encode(v, (const char *)t, n, add, special, ids, (size_t)k + 1, &err);
    assert_int_equal(k, k2);
    for (int64_t i = 0; i < k && i < 4; i++)
        assert_int_equal(small[i], ids[i]);
    *n_out = (size_t)k;
    return ids;
}

/* Stream ids through the detokenizer; returns malloc'd bytes. */
static char *detok_all(const struct tok_vocab *v, const int32_t *ids, size_t n, bool special, size_t *len)
{
    size_t bound = tok_detok_bound(v), cap = bound * (n + 2), w = 0;
    char *out = malloc(cap + 1), *tmp = malloc(bound);
    struct tok_detok d;
    tok_detok_init(&d, v, special);
    for (size_t i = 0; i < n; i++) {
        size_t k = tok_detok_push(&d, ids[i], tmp, bound);
        memcpy(out + w, tmp, k);
        w += k;
    }
    w += tok_detok_flush(&d, out + w, cap - w);
    free(tmp);
    *len = w;
    return out;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    char line[4096];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof line - 16; i++)
        o += (size_t)snprintf(line + o, sizeof line - o, "%d ", ids[i]);
    line[o] = '\0';
    print_message("    %s: [%s]\n", what, line);
}

/* ---- golden comparison ---- */

static void check_golden(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, GOLDEN_DIR "/%s.golden.json", name);
    json_error_t jerr;
    json_t *g = json_load_file(path, 0, &jerr);
    if (!g) {
        print_error("%s: %s (line %d)\n", path, jerr.text, jerr.line);
        fail();
    }
    char mpath[512];
    snprintf(mpath, sizeof mpath, LMD_SOURCE_DIR "/%s", json_string_value(json_object_get(g, "model")));
    struct loaded l = load_path(mpath);
    const struct tok_vocab *v = l.v;

    json_t *jv = json_object_get(g, "vocab");
    int32_t n = tok_n_vocab(v);
    assert_int_equal(n, json_integer_value(json_object_get(jv, "n_vocab")));
    assert_int_equal(tok_bos(v), json_integer_value(json_object_get(jv, "bos")));
    assert_int_equal(tok_eos(v), json_integer_value(json_object_get(jv, "eos")));
    assert_int_equal(tok_eot(v), json_integer_value(json_object_get(jv, "eot")));
    assert_int_equal(tok_add_bos(v), json_is_true(json_object_get(jv, "add_bos")));
    assert_int_equal(tok_add_eos(v), json_is_true(json_object_get(jv, "add_eos")));
    assert_int_equal(tok_add_space_prefix(v), json_is_true(json_object_get(jv, "add_space_prefix")));

    /* End of generation: exactly llama.cpp's set. */
    json_t *eog = json_object_get(jv, "eog");
    size_t n_eog = 0;
    for (int32_t id = 0; id < n; id++)
        n_eog += tok_is_eog(v, id);
    assert_int_equal(n_eog, json_array_size(eog));
    for (size_t i = 0; i < json_array_size(eog); i++)
        assert_true(tok_is_eog(v, (int32_t)json_integer_value(json_array_get(eog, i))));

    /* Every token's attributes and pieces, through hashes. */
    uint64_t h_attr = FNV_INIT, h_plain = FNV_INIT, h_special = FNV_INIT;
    char *pbuf = malloc(tok_piece_max(v) + 1);
    for (int32_t id = 0; id < n; id++) {
        uint32_t a = tok_token_attr(v, id);
        uint8_t le[4] = {(uint8_t)a, (uint8_t)(a >> 8), (uint8_t)(a >> 16), (uint8_t)(a >> 24)};
        h_attr = fnv1a(h_attr, le, 4);
        size_t k = tok_piece(v, id, false, pbuf, tok_piece_max(v));
        assert_true(k <= tok_piece_max(v));
        h_plain = hash_rec(h_plain, pbuf, (uint32_t)k);
        k = tok_piece(v, id, true, pbuf, tok_piece_max(v));
        h_special = hash_rec(h_special, pbuf, (uint32_t)k);
    }
    free(pbuf);
    char hx[3][17];
    snprintf(hx[0], 17, "%016llx", (unsigned long long)h_attr);
    snprintf(hx[1], 17, "%016llx", (unsigned long long)h_plain);
    snprintf(hx[2], 17, "%016llx", (unsigned long long)h_special);
    assert_string_equal(hx[0], json_string_value(json_object_get(jv, "attr_fnv")));
    assert_string_equal(hx[1], json_string_value(json_object_get(jv, "piece_fnv")));
    assert_string_equal(hx[2], json_string_value(json_object_get(jv, "piece_special_fnv")));

    json_t *cases = json_object_get(g, "cases");
    int bad = 0;
    size_t n_roundtrip = 0;
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        const char *hex = json_string_value(json_object_get(c, "hex"));
        uint8_t *text = malloc(strlen(hex) / 2 + 1);
        size_t tl = unhex(hex, text);
        static const char *const keys[2] = {"plain", "special"};
        for (int k = 0; k < 2; k++) {
            json_t *want = json_object_get(c, keys[k]);
            size_t got_n;
            int32_t *got = encode(v, text, tl, k == 1, k == 1, &got_n);
            bool same = got_n == json_array_size(want);
            for (size_t i = 0; same && i < got_n; i++)
                same = got[i] == json_integer_value(json_array_get(want, i));
            if (!same) {
                bad++;
                print_message("  %s case %zu (%s) '%.60s' (hex %.80s):\n", name, ci, keys[k], text, hex);
                int32_t *w = malloc((json_array_size(want) + 1) * sizeof *w);
                for (size_t i = 0; i < json_array_size(want); i++)
                    w[i] = (int32_t)json_integer_value(json_array_get(want, i));
                print_ids("llama.cpp", w, json_array_size(want));
                print_ids("lmd      ", got, got_n);
                free(w);
            }
            /* Streaming decode of llama.cpp's ids. */
            size_t wn = json_array_size(want);
            int32_t *w = malloc((wn + 1) * sizeof *w);
            for (size_t i = 0; i < wn; i++)
                w[i] = (int32_t)json_integer_value(json_array_get(want, i));
            size_t dl;
            char *dec = detok_all(v, w, wn, k == 1, &dl);
            char key[32];
            snprintf(key, sizeof key, "%s_text", keys[k]);
            const char *whex = json_string_value(json_object_get(c, key));
            uint8_t *wtext = malloc(strlen(whex) / 2 + 1);
            size_t wl = unhex(whex, wtext);
            if (dl != wl || memcmp(dec, wtext, wl) != 0) {
                bad++;
                print_message("  %s case %zu (%s) decode differs: got %zu bytes '%.*s', want %zu '%.*s'\n", name, ci,
                              keys[k], dl, (int)dl, dec, wl, (int)wl, wtext);
            }
            if (k == 0 && json_is_true(json_object_get(c, "roundtrip"))) {
                n_roundtrip++;
                if (dl != tl || memcmp(dec, text, tl) != 0) {
                    bad++;
                    print_message("  %s case %zu: decode(encode(x)) != x\n", name, ci);
                }
            }
            free(wtext);
            free(dec);
            free(w);
            free(got);
        }
        free(text);
    }
    print_message("%s: %zu cases, %zu round trips, %d mismatches\n", name, json_array_size(cases), n_roundtrip, bad);
    assert_int_equal(bad, 0);
    json_decref(g);
    unload(&l);
}

static void test_golden_gemma3(void **state) { check_golden("gemma3"); }
static void test_golden_spm_prefix(void **state) { check_golden("spm_prefix"); }
static void test_golden_bpe_llama3(void **state) { check_golden("bpe_llama3"); }
static void test_golden_bpe_qwen2(void **state) { check_golden("bpe_qwen2"); }
static void test_golden_bpe_gpt2(void **state) { check_golden("bpe_gpt2"); }
static void test_golden_bpe_default(void **state) { check_golden("bpe_default"); }

/* ---- streaming ---- */

static void test_detok_split_emoji(void **state)
{
    struct loaded l = load_path(LMD_SOURCE_DIR "/models/default.gguf");
    const struct tok_vocab *v = l.v;
    const char *bytes[4] = {"<0xF0>", "<0x9F>", "<0x98>", "<0x80>"}; /* 😀 */
    size_t bound = tok_detok_bound(v);
    char *out = malloc(bound);
    struct tok_detok d;
    tok_detok_init(&d, v, false);
    assert_int_equal(tok_detok_push(&d, tok_find(v, "Hi"), out, bound), 2);
    for (int i = 0; i < 3; i++) {
        int32_t id = tok_find(v, bytes[i]);
        assert_true(id >= 0);
        assert_true(tok_token_attr(v, id) & TOK_ATTR_BYTE);
        assert_int_equal(tok_detok_push(&d, id, out, bound), 0); /* held back */
    }
    size_t k = tok_detok_push(&d, tok_find(v, bytes[3]), out, bound);
    assert_int_equal(k, 4);
    assert_memory_equal(out, "\xF0\x9F\x98\x80", 4);
    assert_int_equal(tok_detok_flush(&d, out, bound), 0);

    /* A sequence cut short by an ASCII token: U+FFFD, then the text. */
    tok_detok_push(&d, tok_find(v, "<0xE2>"), out, bound);
    k = tok_detok_push(&d, tok_find(v, "Hi"), out, bound);
    assert_int_equal(k, 5);
    assert_memory_equal(out, "\xEF\xBF\xBDHi", 5);
    /* A byte that can never start a character is replaced at once. */
    k = tok_detok_push(&d, tok_find(v, "<0xFF>"), out, bound);
    assert_int_equal(k, 3);
    /* An incomplete tail is replaced at flush. */
    assert_int_equal(tok_detok_push(&d, tok_find(v, "<0xF0>"), out, bound), 0);
    assert_int_equal(tok_detok_push(&d, tok_find(v, "<0x9F>"), out, bound), 0);
    assert_int_equal(tok_detok_flush(&d, out, bound), 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    /* Control tokens show only when asked for. */
    assert_int_equal(tok_detok_push(&d, tok_find(v, "<start_of_turn>"), out, bound), 0);
    tok_detok_init(&d, v, true);
    assert_int_equal(tok_detok_push(&d, tok_find(v, "<start_of_turn>"), out, bound), 15);
    /* Out-of-range ids decode to nothing. */
    assert_int_equal(tok_detok_push(&d, -1, out, bound), 0);
    assert_int_equal(tok_detok_push(&d, tok_n_vocab(v), out, bound), 0);
    /* A buffer too small drops output but stays in bounds. */
    char tiny[2];
    assert_true(tok_detok_push(&d, tok_find(v, "Hello"), tiny, sizeof tiny) <= sizeof tiny);
    free(out);
    unload(&l);
}

/* A vocabulary without emoji tokens spells them with byte tokens; decoding
 * the stream yields the emoji whole, nothing before its last byte. */
static void test_detok_byte_fallback_stream(void **state)
{
    struct loaded l = load_path(GOLDEN_DIR "/spm_prefix.gguf");
    const struct tok_vocab *v = l.v;
    const char *text = "a\xF0\x9F\x8E\x89";
    int32_t ids[16];
    struct lmd_err err;
    int64_t n = tok_encode(v, text, strlen(text), false, false, ids, 16, &err);
    assert_true(n >= 5); /* ▁a, then four byte tokens */
    size_t bound = tok_detok_bound(v);
    char *out = malloc(bound);
    struct tok_detok d;
    tok_detok_init(&d, v, false);
    size_t k = tok_detok_push(&d, ids[0], out, bound);
    assert_int_equal(k, 1); /* leading space of the first token dropped */
    assert_int_equal(out[0], 'a');
    for (int64_t i = 1; i < n - 1; i++)
        assert_int_equal(tok_detok_push(&d, ids[i], out, bound), 0);
    k = tok_detok_push(&d, ids[n - 1], out, bound);
    assert_int_equal(k, 4);
    assert_memory_equal(out, "\xF0\x9F\x8E\x89", 4);
    free(out);
    unload(&l);
}

/* ---- accessors ---- */

static void test_accessors(void **state)
{
    struct loaded l = load_path(LMD_SOURCE_DIR "/models/default.gguf");
    const struct tok_vocab *v = l.v;
    assert_int_equal(tok_family(v), TOK_FAMILY_SPM);
    assert_int_equal(tok_n_vocab(v), 262144);
    assert_int_equal(tok_bos(v), 2);
    assert_int_equal(tok_eos(v), 1);
    assert_int_equal(tok_eot(v), 106);
    assert_true(tok_add_bos(v));
    assert_false(tok_add_space_prefix(v));
    assert_true(tok_is_eog(v, 106));
    assert_true(tok_is_eog(v, 1));
    assert_false(tok_is_eog(v, 2));
    assert_false(tok_is_eog(v, -5));
    assert_false(tok_is_eog(v, 1 << 30));
    assert_int_equal(tok_find(v, "<start_of_turn>"), 105);
    assert_int_equal(tok_find(v, "no such token, surely"), -1);
    assert_string_equal(tok_token_text(v, 105), "<start_of_turn>");
    assert_null(tok_token_text(v, -1));
    assert_int_equal(tok_token_len(v, 105), 15);
    assert_string_equal(tok_pre_name(v), "");
    char buf[8];
    /* tok_piece reports the full length even when cut. */
    assert_int_equal(tok_piece(v, 105, true, buf, 4), 15);
    assert_memory_equal(buf, "<sta", 4);
    assert_int_equal(tok_piece(v, 105, false, buf, sizeof buf), 0);
    assert_int_equal(tok_piece(v, tok_find(v, "\xE2\x96\x81the"), false, buf, sizeof buf), 4);
    assert_memory_equal(buf, " the", 4);
    unload(&l);

    l = load_path(GOLDEN_DIR "/bpe_qwen2.gguf");
    assert_int_equal(tok_family(l.v), TOK_FAMILY_BPE);
    assert_string_equal(tok_pre_name(l.v), "qwen2");
    assert_true(tok_is_eog(l.v, tok_find(l.v, "<|im_end|>")));
    assert_true(tok_is_eog(l.v, tok_find(l.v, "<|endoftext|>")));
    assert_false(tok_is_eog(l.v, tok_find(l.v, "<|im_start|>")));
    assert_int_equal(tok_piece(l.v, tok_find(l.v, "\xC4\xA0the"), false, buf, sizeof buf), 4);
    assert_memory_equal(buf, " the", 4);
    unload(&l);
}

/* ---- long inputs ---- */

static void encode_big(const char *path, const char *pattern, size_t n)
{
    struct loaded l = load_path(path);
    char *text = malloc(n);
    size_t pl = strlen(pattern);
    for (size_t i = 0; i < n; i++)
        text[i] = pattern[i % pl];
    struct lmd_err err;
    uint64_t t0 = lmd_time_mono_ns();
    int64_t k = tok_encode(l.v, text, n, true, false, NULL, 0, &err);
    double ms = (double)(lmd_time_mono_ns() - t0) / 1e6;
    assert_true(k > 0);
    print_message("%s: %zu bytes of '%s' -> %lld tokens in %.1f ms\n", strrchr(path, '/') + 1, n,
                  pattern[0] == '\n' ? "\\n" : pattern, (long long)k, ms);
    /* A quadratic algorithm would take hours here; allow for sanitizers. */
    assert_true(ms < 20000);
    free(text);
    unload(&l);
}

/* One megabyte of one thing: whitespace runs (special-token partition for
 * Gemma, one huge pre-tokenizer word for BPE), and single words that merge
 * a million symbols. */
static void test_megabyte_inputs(void **state)
{
    encode_big(LMD_SOURCE_DIR "/models/default.gguf", " ", 1 << 20);
    encode_big(LMD_SOURCE_DIR "/models/default.gguf", "hello world ", 1 << 20);
    encode_big(LMD_SOURCE_DIR "/models/default.gguf", "ab", 1 << 20);
    encode_big(GOLDEN_DIR "/spm_prefix.gguf", " ", 1 << 20);
    encode_big(GOLDEN_DIR "/bpe_llama3.gguf", " ", 1 << 20);
    encode_big(GOLDEN_DIR "/bpe_llama3.gguf", "abc", 1 << 20);
    encode_big(GOLDEN_DIR "/bpe_gpt2.gguf", " ", 1 << 20);
    encode_big(GOLDEN_DIR "/bpe_qwen2.gguf", "\n", 1 << 20);
    encode_big(GOLDEN_DIR "/bpe_default.gguf", "1234567890", 1 << 20);
}

/* ---- concurrency: one vocabulary, many encoders ---- */

struct worker {
    const struct tok_vocab *v;
    const char *text;
    size_t len;
    const int32_t *want;
    size_t n_want;
    int bad;
};

static void *encode_loop(void *arg)
{
    struct worker *w = arg;
    int32_t *ids = malloc((w->n_want + 1) * sizeof *ids);
    for (int i = 0; i < 20; i++) {
        struct lmd_err err;
        int64_t k = tok_encode(w->v, w->text, w->len, true, true, ids, w->n_want + 1, &err);
        if (k != (int64_t)w->n_want || memcmp(ids, w->want, w->n_want * sizeof *ids) != 0)
            w->bad++;
    }
    free(ids);
    return NULL;
}

static void test_concurrent_encode(void **state)
{
    const char *paths[] = {LMD_SOURCE_DIR "/models/default.gguf", GOLDEN_DIR "/bpe_qwen2.gguf"};
    const char *para = "<|im_start|>user\nHello  world, it's 2024!\t<start_of_turn>日本語 😀<|im_end|>\n";
    for (int p = 0; p < 2; p++) {
        struct loaded l = load_path(paths[p]);
        size_t n = 0, pl = strlen(para);
        char *text = malloc(64 * pl);
        for (int i = 0; i < 64; i++, n += pl)
            memcpy(text + n, para, pl);
        size_t n_want;
        int32_t *want = encode(l.v, (const uint8_t *)text, n, true, true, &n_want);
        struct worker w[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            w[i] = (struct worker){l.v, text, n, want, n_want, 0};
            assert_int_equal(pthread_create(&th[i], NULL, encode_loop, &w[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(w[i].bad, 0);
        }
        free(want);
        free(text);
        unload(&l);
    }
}

/* ---- speed, reported (the numbers go into docs/PERFORMANCE.md) ---- */

static void test_speed(void **state)
{
    const char *path = LMD_SOURCE_DIR "/models/default.gguf";
    struct gguf_file *f;
    struct lmd_err err;
    assert_int_equal(gguf_open(&f, path, &err), 0);
    double best = 1e30;
    for (int i = 0; i < 3; i++) {
        struct tok_vocab *v;
        uint64_t t0 = lmd_time_mono_ns();
        assert_int_equal(tok_load(&v, f, &err), 0);
        double ms = (double)(lmd_time_mono_ns() - t0) / 1e6;
        best = ms < best ? ms : best;
        tok_free(v);
    }
    struct tok_vocab *v;
    assert_int_equal(tok_load(&v, f, &err), 0);
    /* A 4 KB prompt of mixed prose, code and chat markup. */
    const char *para = "<start_of_turn>user\nThe quick brown fox jumps over the lazy dog. "
                       "int main(void) { return 0; }  Привет, мир! 日本語 😀\n<end_of_turn>\n";
    size_t pl = strlen(para), n = 0;
    char *text = malloc(4096 + pl);
    while (n + pl <= 4096) {
        memcpy(text + n, para, pl);
        n += pl;
    }
    int32_t *ids = malloc(4096 * sizeof *ids);
    int reps = 200;
    uint64_t t0 = lmd_time_mono_ns();
    int64_t k = 0;
    for (int i = 0; i < reps; i++)
        k = tok_encode(v, text, n, true, true, ids, 4096, &err);
    double us = (double)(lmd_time_mono_ns() - t0) / 1e3 / reps;
    print_message("gemma3 vocab: load %.1f ms; encode %zu bytes -> %lld tokens in %.1f us (%.1f MB/s)\n", best, n,
                  (long long)k, us, (double)n / us);
    free(ids);
    free(text);
    tok_free(v);
    gguf_close(f);
}

/* ---- malformed metadata: GGUF images written here ---- */

struct gw {
    uint8_t *b;
    size_t n, cap;
    uint64_t n_kv;
};

static void gw_bytes(struct gw *w, const void *p, size_t n)
{
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->b = realloc(w->b, w->cap);
    }
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void gw_u32(struct gw *w, uint32_t x) { gw_bytes(w, &x, 4); }
static void gw_u64(struct gw *w, uint64_t x) { gw_bytes(w, &x, 8); }
static void gw_s(struct gw *w, const char *s)
{
    gw_u64(w, strlen(s));
    gw_bytes(w, s, strlen(s));
}

static void gw_key(struct gw *w, const char *key, uint32_t type)
{
    gw_s(w, key);
    gw_u32(w, type);
    w->n_kv++;
}

static void kv_str(struct gw *w, const char *key, const char *val)
{
    gw_key(w, key, GGUF_VTYPE_STRING);
    gw_s(w, val);
}

static void kv_u32(struct gw *w, const char *key, uint32_t val)
{
    gw_key(w, key, GGUF_VTYPE_UINT32);
    gw_u32(w, val);
}

static void kv_bool(struct gw *w, const char *key, bool val)
{
    gw_key(w, key, GGUF_VTYPE_BOOL);
    uint8_t b = val;
    gw_bytes(w, &b, 1);
}

static void kv_strs(struct gw *w, const char *key, const char *const *s, size_t n)
{
    gw_key(w, key, GGUF_VTYPE_ARRAY);
    gw_u32(w, GGUF_VTYPE_STRING);
    gw_u64(w, n);
    for (size_t i = 0; i < n; i++)
        gw_s(w, s[i]);
}

static void kv_f32s(struct gw *w, const char *key, const float *x, size_t n)
{
    gw_key(w, key, GGUF_VTYPE_ARRAY);
    gw_u32(w, GGUF_VTYPE_FLOAT32);
    gw_u64(w, n);
    gw_bytes(w, x, 4 * n);
}

static void kv_i32s(struct gw *w, const char *key, const int32_t *x, size_t n)
{
    gw_key(w, key, GGUF_VTYPE_ARRAY);
    gw_u32(w, GGUF_VTYPE_INT32);
    gw_u64(w, n);
    gw_bytes(w, x, 4 * n);
}

/* The header goes in front once the key count is known. */
static uint8_t *gw_finish(struct gw *w, size_t *size)
{
    struct gw h = {0};
    gw_bytes(&h, "GGUF", 4);
    gw_u32(&h, 3);
    gw_u64(&h, 0);
    gw_u64(&h, w->n_kv);
    gw_bytes(&h, w->b, w->n);
    free(w->b);
    *size = h.n;
    return h.b;
}

/* Load the image; returns the tok_load code and the message in err. */
static int try_load(struct gw *w, struct lmd_err *err)
{
    size_t size;
    uint8_t *img = gw_finish(w, &size);
    struct gguf_file *f;
    int rc = gguf_open_memory(&f, img, size, "mem.gguf", err);
    assert_int_equal(rc, 0);
    struct tok_vocab *v = NULL;
    rc = tok_load(&v, f, err);
    if (rc == 0) {
        /* Whatever loads must also encode without trouble. */
        int32_t ids[64];
        assert_true(tok_encode(v, "ab c<s>\xff", 8, true, true, ids, 64, err) >= 0);
        tok_free(v);
    } else {
        assert_null(v);
    }
    gguf_close(f);
    free(img);
    return rc;
}

static const char *const k_tokens[] = {"<unk>", "<s>", "</s>", "a", "b", "\xE2\x96\x81", "ab"};
static const float k_scores[] = {0, 0, 0, -1, -2, -3, -0.5f};
static const int32_t k_types[] = {2, 3, 3, 1, 1, 1, 1};

static void expect(int rc, struct lmd_err *err, int want, const char *needle)
{
    if (rc != want || !strstr(err->msg, needle)) {
        print_error("got %s '%s', want %s containing '%s'\n", lmd_strerror(rc), rc ? err->msg : "", lmd_strerror(want),
                    needle);
        fail();
    }
}

static void test_malformed(void **state)
{
    struct lmd_err err;
    struct gw w;

    /* A well-formed tiny SPM vocabulary loads. */
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_f32s(&w, "tokenizer.ggml.scores", k_scores, 7);
    kv_i32s(&w, "tokenizer.ggml.token_type", k_types, 7);
    assert_int_equal(try_load(&w, &err), 0);

    w = (struct gw){0};
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.model is missing");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "bert");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    expect(try_load(&w, &err), &err, LMD_ENOTSUP, "'bert'");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_f32s(&w, "tokenizer.ggml.scores", k_scores, 7);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.tokens is missing");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_i32s(&w, "tokenizer.ggml.tokens", k_types, 7);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.tokens");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_f32s(&w, "tokenizer.ggml.scores", k_scores, 6);
    expect(try_load(&w, &err), &err, LMD_EFORMAT,
           "tokenizer.ggml.scores has 6 entries but tokenizer.ggml.tokens has 7");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_i32s(&w, "tokenizer.ggml.token_type", k_types, 5);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.token_type has 5 entries");

    int32_t bad_types[7] = {2, 3, 3, 1, 9, 1, 1};
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_i32s(&w, "tokenizer.ggml.token_type", bad_types, 7);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "token_type[4] = 9");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 99);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.bos_token_id = 99 is out of range");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_u32(&w, "tokenizer.ggml.eot_token_id", 7);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "eot_token_id = 7 is out of range");

    /* An unused id llama.cpp only records (padding) is dropped, not fatal. */
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", k_tokens, 7);
    kv_u32(&w, "tokenizer.ggml.padding_token_id", 7);
    assert_int_equal(try_load(&w, &err), 0);

    const char *const dup[] = {"<unk>", "a", "b", "a"};
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", dup, 4);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "token 3 'a' duplicates token 1");

    /* SPM defaults BOS to id 1; a two-token vocabulary has no BOS to add. */
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "llama");
    kv_strs(&w, "tokenizer.ggml.tokens", dup, 1);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "add_bos_token is true but there is no BOS token");

    /* BPE. */
    const char *const bpe_tokens[] = {"a", "b", "ab", "\xC4\xA0", "<|endoftext|>"};
    const char *const merges[] = {"a b"};
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_str(&w, "tokenizer.ggml.pre", "qwen2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    assert_int_equal(try_load(&w, &err), 0);

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.merges is missing");

    const char *const bad_merges[] = {"a b", "ab"};
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", bad_merges, 2);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "tokenizer.ggml.merges[1] 'ab'");

    /* Unknown pre-tokenizer: a warning and the GPT-2 regex. */
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_str(&w, "tokenizer.ggml.pre", "some-future-model");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    assert_int_equal(try_load(&w, &err), 0);

    /* A merge whose halves are not tokens still loads (and never applies). */
    const char *const odd_merges[] = {"x y", "a b"};
    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", odd_merges, 2);
    assert_int_equal(try_load(&w, &err), 0);

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    kv_bool(&w, "tokenizer.ggml.add_bos_token", true);
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "add_bos_token is true but there is no BOS token");

    w = (struct gw){0};
    kv_str(&w, "tokenizer.ggml.model", "gpt2");
    kv_strs(&w, "tokenizer.ggml.tokens", bpe_tokens, 5);
    kv_strs(&w, "tokenizer.ggml.merges", merges, 1);
    kv_str(&w, "tokenizer.ggml.add_bos_token", "yes");
    expect(try_load(&w, &err), &err, LMD_EFORMAT, "add_bos_token");
}

/* Bytes that are not UTF-8 must never crash or read out of bounds (the
 * sanitizer build checks the latter); every prefix of a nasty string. */
static void test_invalid_utf8_prefixes(void **state)
{
    const char *paths[] = {LMD_SOURCE_DIR "/models/default.gguf", GOLDEN_DIR "/bpe_llama3.gguf",
                           GOLDEN_DIR "/bpe_default.gguf"};
    const char nasty[] = "\xF4\x90\x80\x80\xF7\xBF\xBF\xBF\xC0\x80\xED\xA0\x80<start_of_turn>\xE2\x82\xF0\x9F\x98 \xFF";
    for (int p = 0; p < 3; p++) {
        struct loaded l = load_path(paths[p]);
        for (size_t n = 0; n <= sizeof nasty - 1; n++) {
            char *t = malloc(n ? n : 1); /* exact size, so ASan sees overreads */
            memcpy(t, nasty, n);
            size_t k;
            int32_t *ids = encode(l.v, (const uint8_t *)t, n, true, true, &k);
            size_t dl;
            free(detok_all(l.v, ids, k, true, &dl));
            free(ids);
            free(t);
        }
        unload(&l);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_detok_split_emoji),
        cmocka_unit_test(test_detok_byte_fallback_stream),
        cmocka_unit_test(test_invalid_utf8_prefixes),
        cmocka_unit_test(test_golden_gemma3),
        cmocka_unit_test(test_golden_spm_prefix),
        cmocka_unit_test(test_golden_bpe_llama3),
        cmocka_unit_test(test_golden_bpe_qwen2),
        cmocka_unit_test(test_golden_bpe_gpt2),
        cmocka_unit_test(test_golden_bpe_default),
        cmocka_unit_test(test_megabyte_inputs),
        cmocka_unit_test(test_concurrent_encode),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
