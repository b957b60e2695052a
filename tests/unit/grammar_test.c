/*
 * Constrained decoding: the GBNF compiler (accepts what it should, refuses
 * malformed grammars with the line, column or rule named), the matcher
 * (byte by byte, characters split across bytes, no overlong encodings),
 * the vocabulary mask over a small hand-made vocabulary and over the
 * default model's 262k tokens, and the sampler drawing only what the
 * grammar allows.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "gguf/gguf.h"
#include "sample/grammar.h"
#include "sample/sample.h"
#include "tokenizer/tokenizer.h"

/* A logit the mask took out. */
#define MASKED(x) (isinf(x) && (x) < 0)

static struct gram *compile_ok(const char *text)
{
    struct gram *g = NULL;
    struct lmd_err err = {0};
    int rc = gram_compile(&g, text, strlen(text), &err);
    if (rc != 0)
        print_error("gram_compile: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return g;
}

/* Whether the whole of s is a sentence of the grammar. */
static bool full_match(const struct gram *g, const char *s)
{
    struct gram_match *m = NULL;
    assert_int_equal(gram_match_init(&m, g, NULL, NULL), 0);
    bool ok = gram_match_feed(m, s, strlen(s)) && gram_match_accepting(m);
    gram_match_free(m);
    return ok;
}

/* Whether s is a prefix of some sentence. */
static bool prefix_ok(const struct gram *g, const char *s)
{
    struct gram_match *m = NULL;
    assert_int_equal(gram_match_init(&m, g, NULL, NULL), 0);
    bool ok = gram_match_feed(m, s, strlen(s));
    gram_match_free(m);
    return ok;
}

static void test_literals_and_alternation(void **state)
{
    struct gram *g = compile_ok("root ::= \"yes\" | \"no\" | \"maybe\" \"!\"\n");
    assert_true(full_match(g, "yes"));
    assert_true(full_match(g, "no"));
    assert_true(full_match(g, "maybe!"));
    assert_false(full_match(g, "maybe"));
    assert_true(prefix_ok(g, "may"));
    assert_false(prefix_ok(g, "yess"));
    assert_false(full_match(g, ""));
    gram_free(g);
}

static void test_repetition(void **state)
{
    struct gram *g =
        compile_ok("root ::= [a-c]+ \"-\" [0-9]{2,3} x? y*\nx ::= \"x\"\ny ::= \"y\" # trailing comment\n");
    assert_true(full_match(g, "a-12"));
    assert_true(full_match(g, "abcabc-123xyyy"));
    assert_false(full_match(g, "-12"));
    assert_false(full_match(g, "a-1"));
    assert_false(full_match(g, "a-1234"));
    assert_false(full_match(g, "ad-12"));
    assert_true(full_match(g, "b-99yy"));
    gram_free(g);
    g = compile_ok("root ::= (\"ab\" | \"c\"){2} \"ab\"{0,2} [^a-z]\n");
    assert_true(full_match(g, "abc!"));
    assert_true(full_match(g, "ccabab1"));
    assert_false(full_match(g, "cababababX"));
    assert_false(full_match(g, "c!"));
    gram_free(g);
    /* {m,} and a group spread over lines. */
    g = compile_ok("root ::= (\n  \"a\"\n  | \"b\"\n){3,} .\n");
    assert_true(full_match(g, "aba."));
    assert_true(full_match(g, "ababab\xc3\xa9"));
    assert_false(full_match(g, "ab."));
    gram_free(g);
}

static void test_escapes_and_unicode(void **state)
{
    struct gram *g = compile_ok("root ::= \"\\x41\\u00e9\\n\" [\\u4e00-\\u9fff] \"\\\"\\\\\" [^\\x00-\\x7f]\n");
    assert_true(full_match(g, "A\xc3\xa9\n\xe4\xb8\xad\"\\\xc3\xa9"));
    /* A character split across bytes: its first bytes are a valid prefix. */
    assert_true(prefix_ok(g, "A\xc3"));
    assert_false(prefix_ok(g, "A\xc4")); /* U+0100..U+013F cannot be é */
    assert_false(full_match(g, "A\xc3\xa9\n\xe4\xb8\xad\"\\a"));
    gram_free(g);
    /* Overlong spellings and stray bytes are never characters. */
    g = compile_ok("root ::= \"{\" .*\n");
    assert_false(prefix_ok(g, "\xc1\xbb"));
    assert_false(prefix_ok(g, "\xe0\x81\xbb"));
    assert_true(prefix_ok(g, "{\xe2\x82"));
    assert_false(prefix_ok(g, "{\x80"));
    assert_false(prefix_ok(g, "{\xff"));
    assert_false(prefix_ok(g, "{\xed\xa0\x80")); /* a surrogate */
    gram_free(g);
}

/* A grammar whose expansion doubles at every level stops at the matcher's
 * budget (the byte is refused) instead of stalling the engine thread. */
static void test_ambiguity_is_bounded(void **state)
{
    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text, "root ::= r0 \"x\"\n");
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "r%d ::= r%d r%d | \"\"\n", i, i + 1, i + 1);
    snprintf(text + n, sizeof text - n, "r40 ::= \"a\" | \"\"\n");
    struct gram *g = NULL;
    struct lmd_err err = {0};
    assert_int_equal(gram_compile(&g, text, strlen(text), &err), 0);
    struct gram_match *m = NULL;
    int rc = gram_match_init(&m, g, NULL, &err);
    if (rc == 0) {
        (void)gram_match_feed(m, "aax", 3);
        gram_match_free(m);
    } else {
        assert_int_equal(rc, LMD_ERANGE);
    }
    gram_free(g);
}

static void test_recursion(void **state)
{
    struct gram *g = compile_ok("root ::= v\nv ::= \"[\" (v (\",\" v)*)? \"]\" | \"0\"\n");
    assert_true(full_match(g, "[[0,[]],0]"));
    assert_false(full_match(g, "[[0,[]],0"));
    assert_false(full_match(g, "[,]"));
    gram_free(g);
}

static void expect_error(const char *text, const char *needle)
{
    struct gram *g = NULL;
    struct lmd_err err = {0};
    int rc = gram_compile(&g, text, strlen(text), &err);
    if (rc == 0 || !strstr(err.msg, needle))
        print_error("grammar %s\ngave rc %d, '%s'; expected '%s'\n", text, rc, err.msg, needle);
    assert_int_not_equal(rc, 0);
    assert_null(g);
    assert_non_null(strstr(err.msg, needle));
}

static void test_malformed(void **state)
{
    expect_error("", "no rule named 'root'");
    expect_error("main ::= \"a\"\n", "no rule named 'root'");
    expect_error("root ::= foo\n", "line 1: rule 'foo' is used but never defined");
    expect_error("root ::= \"a\"\nroot ::= \"b\"\n", "line 2: rule 'root' is defined twice");
    expect_error("root ::= \"abc\n", "line 1, column 14");
    expect_error("root ::= \"abc", "expected '\"' to close the literal");
    expect_error("root ::= [a-\n", "line 1");
    expect_error("root ::= [z-a]\n", "a class range ends below its start");
    expect_error("root ::= []\n", "an empty character class matches nothing");
    expect_error("root ::= (\"a\"\n", "expected ')' to close the group");
    expect_error("root ::= \"a\" )\n", "line 1, column 14: expected the end of the rule, found ')'");
    expect_error("root = \"a\"\n", "expected '::=' after the rule name");
    expect_error("root ::= \"\\q\"\n", "unknown escape");
    expect_error("root ::= \"a\"{3,2}\n", "maximum is below its minimum");
    expect_error("root ::= \"a\"{1000000}\n", "a repetition count above 100000");
    expect_error("root ::= \"a\"{2\n", "expected '}'");
    expect_error("root ::= \"\\xZZ\"\n", "expected a hexadecimal digit");
    expect_error("root ::= root \"a\" | \"b\"\n", "rule 'root' is left-recursive");
    expect_error("root ::= x\nx ::= y? x \"a\"\ny ::= \"b\"\n", "rule 'x' is left-recursive");
    expect_error("root ::= (\"\")*\n", "left-recursive");
    expect_error("root ::= \"a\" ::= \"b\"\n", "line 1");
    expect_error("root ::= \"\xff\"\n", "invalid UTF-8");
    expect_error("root ::= [a-c\n", "line 1");
    expect_error("root ::= \"a\"{99999} \"a\"{99999} \"a\"{99999} \"a\"{99999} \"a\"{99999} \"a\"{99999} "
                 "\"a\"{99999} \"a\"{99999} \"a\"{99999} \"a\"{99999} \"a\"{99999}\n",
                 "elements");
    /* Groups nest as deep as 64 and no deeper: each level is a recursion
     * of the parser, and a client's grammar must not reach the end of the
     * stack (a fuzzer's "((((…" did). */
    char deep[600];
    for (int depth = 64; depth <= 250; depth += 186) {
        size_t o = (size_t)snprintf(deep, sizeof deep, "root ::= ");
        for (int i = 0; i < depth; i++)
            deep[o++] = '(';
        o += (size_t)snprintf(deep + o, sizeof deep - o, "\"a\"");
        for (int i = 0; i < depth; i++)
            deep[o++] = ')';
        deep[o++] = '\n';
        deep[o] = 0;
        if (depth == 64) {
            struct lmd_err err = {0};
            struct gram *g = NULL;
            if (gram_compile(&g, deep, strlen(deep), &err) != 0)
                fail_msg("64 nested groups: %s", err.msg);
            gram_free(g);
        } else {
            expect_error(deep, "line 1, column 74: groups nested deeper than 64");
        }
    }
}

/* ---- vocabulary masks ---------------------------------------------------- */

/* A tiny vocabulary: pieces by id, id 0 ends generation. */
static const char *const tiny[] = {"",  "{",   "}",    "\"",   "a",  "ab",  "\"a\"", "1", "12",
                                   " ", "\":", "\xc3", "\xa9", "é}", "{\"", "x",     ":"};
#define N_TINY ((int)(sizeof tiny / sizeof tiny[0]))

static struct gram_vocab *tiny_vocab(void)
{
    size_t len[N_TINY];
    for (int i = 0; i < N_TINY; i++)
        len[i] = strlen(tiny[i]);
    int32_t eog = 0;
    struct gram_vocab *gv = NULL;
    assert_int_equal(gram_vocab_build_raw(&gv, N_TINY, tiny, len, &eog, 1, NULL), 0);
    return gv;
}

static int find_tiny(const char *s)
{
    for (int i = 1; i < N_TINY; i++)
        if (strcmp(tiny[i], s) == 0)
            return i;
    fail_msg("no tiny token '%s'", s);
    return -1;
}

static void test_mask_tiny(void **state)
{
    struct gram_vocab *gv = tiny_vocab();
    struct gram *g = compile_ok("root ::= \"{\" ws (\"\\\"\" [a-z]+ \"\\\":\" ws [0-9]+)? ws \"}\"\nws ::= \" \"?\n");
    struct gram_match *m = NULL;
    assert_int_equal(gram_match_init(&m, g, gv, NULL), 0);
    float logits[N_TINY];
    for (int i = 0; i < N_TINY; i++)
        logits[i] = 0;
    /* At the start: "{" and "{\"" only. */
    assert_int_equal(gram_match_mask(m, logits), 2);
    for (int i = 0; i < N_TINY; i++)
        assert_true(MASKED(logits[i]) == !(i == find_tiny("{") || i == find_tiny("{\"")));
    assert_false(gram_match_allows(m, 0)); /* not complete: no end of generation */
    assert_true(gram_match_accept(m, find_tiny("{\"")));
    assert_false(gram_match_accept(m, find_tiny("1"))); /* refused, state unchanged */
    assert_true(gram_match_accept(m, find_tiny("ab")));
    assert_true(gram_match_allows(m, find_tiny("a")));
    assert_true(gram_match_accept(m, find_tiny("\":")));
    assert_true(gram_match_accept(m, find_tiny(" ")));
    assert_false(gram_match_allows(m, find_tiny(" ")));
    assert_true(gram_match_accept(m, find_tiny("12")));
    assert_true(gram_match_accept(m, find_tiny("}")));
    assert_true(gram_match_accepting(m));
    assert_false(gram_match_can_continue(m));
    for (int i = 0; i < N_TINY; i++)
        logits[i] = 0;
    assert_int_equal(gram_match_mask(m, logits), 1);
    assert_false(MASKED(logits[0]));
    gram_match_free(m);
    gram_free(g);

    /* A character split over two byte tokens, and a token ending inside one. */
    g = compile_ok("root ::= \"{\" \"é\"* \"}\"\n");
    assert_int_equal(gram_match_init(&m, g, gv, NULL), 0);
    assert_true(gram_match_accept(m, find_tiny("{")));
    assert_true(gram_match_allows(m, find_tiny("\xc3")));
    assert_false(gram_match_allows(m, find_tiny("\xa9")));
    assert_true(gram_match_accept(m, find_tiny("\xc3")));
    assert_false(gram_match_allows(m, find_tiny("}")));
    assert_true(gram_match_accept(m, find_tiny("\xa9")));
    assert_true(gram_match_accept(m, find_tiny("é}")));
    assert_true(gram_match_allows(m, 0));
    gram_match_free(m);
    gram_free(g);
    gram_vocab_free(gv);
}

/* The sampler draws only what the grammar allows, from any logits, and
 * ends with the end-of-generation token once the sentence is complete. */
static void test_sampler_tiny(void **state)
{
    struct gram_vocab *gv = tiny_vocab();
    struct gram *g = compile_ok("root ::= \"{\\\"\" [a-w]{1,3} \"\\\":\" [0-9]+ \"}\"\n");
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, N_TINY, NULL), 0);
    for (uint64_t seed = 1; seed <= 50; seed++) {
        struct sample_params p;
        sample_params_default(&p);
        p.seed = seed;
        p.temperature = seed % 5 == 0 ? 0.0f : 1.5f;
        p.grammar = g;
        p.gvocab = gv;
        struct sampler s;
        assert_int_equal(sample_init(&s, &p, 64, NULL), 0);
        char out[256];
        size_t n = 0;
        uint32_t x = (uint32_t)seed;
        int steps = 0;
        for (;;) {
            float logits[N_TINY];
            for (int i = 0; i < N_TINY; i++) {
                x = x * 1664525u + 1013904223u;
                logits[i] = (float)((x >> 8) % 1000) / 100.0f;
            }
            logits[find_tiny("x")] += 20; /* what the model wants most is never allowed */
            int32_t t = sample_next(&s, &sc, logits, N_TINY);
            sample_accept(&s, t);
            if (t == 0)
                break;
            assert_true(n + strlen(tiny[t]) < sizeof out);
            memcpy(out + n, tiny[t], strlen(tiny[t]));
            n += strlen(tiny[t]);
            assert_true(++steps < 60); /* digits may repeat, but not forever with these draws */
        }
        out[n] = 0;
        if (!full_match(g, out))
            print_error("seed %llu drew '%s'\n", (unsigned long long)seed, out);
        assert_true(full_match(g, out));
        sample_free(&s);
    }
    sample_scratch_free(&sc);
    gram_free(g);
    gram_vocab_free(gv);
}

/* Drawing under a grammar is drawing from the masked distribution: the
 * allowed tokens keep their relative odds however much weight the refused
 * ones carried (fixed seeds, so the counts are the same on every run). */
static void test_sampler_masked_distribution(void **state)
{
    struct gram_vocab *gv = tiny_vocab();
    struct gram *g = compile_ok("root ::= (\"a\" | \"1\" | \"x\") \":\"\n");
    struct sample_scratch sc;
    assert_int_equal(sample_scratch_init(&sc, N_TINY, NULL), 0);
    const int a = find_tiny("a"), one = find_tiny("1"), x = find_tiny("x");
    int count[N_TINY] = {0};
    const int n = 20000;
    for (int k = 0; k < n; k++) {
        struct sample_params p;
        sample_params_default(&p);
        p.seed = (uint64_t)k + 1;
        p.grammar = g;
        p.gvocab = gv;
        struct sampler s;
        assert_int_equal(sample_init(&s, &p, 8, NULL), 0);
        float logits[N_TINY];
        for (int i = 0; i < N_TINY; i++)
            logits[i] = 0.0f;
        logits[a] = 1.0f;
        logits[one] = 2.0f;
        logits[x] = 0.5f;
        logits[find_tiny("{")] = 4.0f; /* refused, and most of the unconstrained weight */
        logits[find_tiny("}")] = 4.0f;
        count[sample_next(&s, &sc, logits, N_TINY)]++;
        sample_free(&s);
    }
    double z = exp(1.0) + exp(2.0) + exp(0.5);
    assert_int_equal(count[a] + count[one] + count[x], n);
    assert_true(fabs((double)count[a] / n - exp(1.0) / z) < 0.015);
    assert_true(fabs((double)count[one] / n - exp(2.0) / z) < 0.015);
    assert_true(fabs((double)count[x] / n - exp(0.5) / z) < 0.015);
    sample_scratch_free(&sc);
    gram_free(g);
    gram_vocab_free(gv);
}

/* The default model's vocabulary: the trie holds every ordinary token, and
 * the mask of a narrow state admits exactly the tokens that fit. */
static void test_mask_real_vocab(void **state)
{
    struct gguf_file *f = NULL;
    struct tok_vocab *v = NULL;
    struct lmd_err err = {0};
    if (gguf_open(&f, LMD_SOURCE_DIR "/models/default.gguf", &err) != 0 || tok_load(&v, f, &err) != 0) {
        print_error("default model: %s (run `make model`)\n", err.msg);
        fail();
    }
    struct gram_vocab *gv = NULL;
    assert_int_equal(gram_vocab_build(&gv, v, tok_n_vocab(v), &err), 0);
    int nv = tok_n_vocab(v);
    float *logits = malloc((size_t)nv * sizeof *logits);
    struct gram *g = compile_ok("root ::= \"{\\\"name\\\": \\\"\" [^\"\\\\\\x00]* \"\\\"}\"\n");
    struct gram_match *m = NULL;
    assert_int_equal(gram_match_init(&m, g, gv, &err), 0);
    for (int i = 0; i < nv; i++)
        logits[i] = 0;
    int n = gram_match_mask(m, logits);
    /* Exactly the tokens whose text is a prefix of {"name": " or starts with it and fits. */
    char buf[256];
    int expect = 0;
    for (int i = 0; i < nv; i++) {
        unsigned attr = tok_token_attr(v, i);
        size_t l = tok_piece(v, i, false, buf, sizeof buf);
        bool ok = l > 0 && l < sizeof buf && !(attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN | TOK_ATTR_UNUSED)) &&
                  !tok_is_eog(v, i);
        if (ok) {
            buf[l] = 0;
            ok = prefix_ok(g, buf) && strlen(buf) == l;
        }
        expect += ok;
        assert_true(MASKED(logits[i]) == !ok);
    }
    assert_int_equal(n, expect);
    assert_true(n >= 2); /* "{" and byte tokens at least */
    /* Inside the string most of the vocabulary fits. */
    assert_true(gram_match_feed(m, "{\"name\": \"", 10));
    for (int i = 0; i < nv; i++)
        logits[i] = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    n = gram_match_mask(m, logits);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(n > nv / 2);
    int wrong = 0;
    for (int i = 0; i < nv; i++) {
        unsigned attr = tok_token_attr(v, i);
        char txt[300] = "{\"name\": \"";
        size_t l = tok_piece(v, i, false, txt + 10, sizeof txt - 11);
        bool ok = l > 0 && l < sizeof txt - 11 && !(attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN | TOK_ATTR_UNUSED)) &&
                  !tok_is_eog(v, i);
        if (ok) {
            txt[10 + l] = 0;
            ok = prefix_ok(g, txt) && strlen(txt) == 10 + l;
        }
        if (MASKED(logits[i]) != !ok && wrong++ < 5)
            print_error("token %d '%s': mask %d, expected %d\n", i, txt + 10, !MASKED(logits[i]), ok);
    }
    assert_int_equal(wrong, 0);
    assert_false(MASKED(logits[tok_find(v, "hello")]));
    assert_true(MASKED(logits[tok_eos(v)]));
    print_message("default vocabulary: %d tokens; string-state mask keeps %d; nodes visited %llu in %.2f ms\n", nv, n,
                  (unsigned long long)gram_match_nodes_visited(m),
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    gram_match_free(m);
    gram_free(g);
    free(logits);
    gram_vocab_free(gv);
    tok_free(v);
    gguf_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals_and_alternation),
        cmocka_unit_test(test_repetition),
        cmocka_unit_test(test_escapes_and_unicode),
        cmocka_unit_test(test_recursion),
        cmocka_unit_test(test_ambiguity_is_bounded),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_mask_tiny),
        cmocka_unit_test(test_sampler_tiny),
        cmocka_unit_test(test_sampler_masked_distribution),
        cmocka_unit_test(test_mask_real_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
