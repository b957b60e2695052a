/*
 * api/ without a server: request bodies (valid, malformed, out of range,
 * wrong types — each refusal names its field; n, logprobs, logit_bias,
 * echo), stop-string matching and hold-back across token boundaries, JSON
 * escaping, token text for log-probabilities, UTF-8 checks, error bodies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "api/api_int.h"
#include "api/schema.h"
#include "sample/grammar.h"

static int parse(enum api_kind k, const char *body, struct api_params *p, struct api_error *e)
{
    memset(e, 0, sizeof *e);
    return api_params_parse(p, k, body, strlen(body), e);
}

static void expect_bad(enum api_kind k, const char *body, const char *param)
{
    struct api_params p;
    struct api_error e;
    int rc = parse(k, body, &p, &e);
    if (rc != LMD_EINVAL || e.status != 400)
        fail_msg("accepted: %s", body);
    if (param) {
        if (!e.param || strcmp(e.param, param) != 0)
            fail_msg("%s: param %s, want %s (%s)", body, e.param ? e.param : "null", param, e.msg);
    }
    assert_true(strlen(e.msg) > 0);
    api_params_free(&p);
}

static void test_completion_ok(void **state)
{
    (void)state;
    struct api_params p;
    struct api_error e;
    assert_int_equal(parse(API_COMPLETION,
                           "{\"model\":\"m\",\"prompt\":\"hi there\",\"max_tokens\":7,\"temperature\":0,\"top_p\":0.5,"
                           "\"top_k\":3,\"min_p\":0.1,\"presence_penalty\":1,\"frequency_penalty\":-1,"
                           "\"repetition_penalty\":1.1,\"seed\":42,\"stop\":[\"a\",\"bc\"],\"stream\":true,"
                           "\"stream_options\":{\"include_usage\":true},\"user\":\"u\",\"n\":1,\"logprobs\":null}",
                           &p, &e),
                     0);
    assert_string_equal(p.model, "m");
    assert_int_equal(p.prompt_len, 8);
    assert_memory_equal(p.prompt, "hi there", 8);
    assert_int_equal(p.max_tokens, 7);
    assert_true(p.sp.temperature == 0.0f && p.sp.top_p == 0.5f && p.sp.top_k == 3);
    assert_true(p.sp.presence_penalty == 1.0f && p.sp.frequency_penalty == -1.0f);
    assert_true(p.seed_set && p.sp.seed == 42);
    assert_int_equal(p.n_stop, 2);
    assert_int_equal(p.stop_len[1], 2);
    assert_true(p.stream && p.include_usage);
    api_params_free(&p);

    /* Defaults, a one-string list, token ids, nested token ids. */
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":[\"x\"]}", &p, &e), 0);
    assert_null(p.model);
    assert_int_equal(p.max_tokens, -1);
    assert_true(p.sp.temperature == 1.0f && p.sp.top_p == 1.0f && !p.seed_set && !p.stream);
    api_params_free(&p);
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":[2,818,5279],\"stop\":\"\\n\"}", &p, &e), 0);
    assert_int_equal(p.n_prompt_ids, 3);
    assert_int_equal(p.prompt_ids[2], 5279);
    assert_int_equal(p.n_stop, 1);
    api_params_free(&p);
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":[[5,6]],\"max_completion_tokens\":3}", &p, &e), 0);
    assert_int_equal(p.n_prompt_ids, 2);
    assert_int_equal(p.max_tokens, 3);
    api_params_free(&p);
}

static void test_chat_ok(void **state)
{
    (void)state;
    struct api_params p;
    struct api_error e;
    assert_int_equal(parse(API_CHAT,
                           "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
                           "\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":null}]}",
                           &p, &e),
                     0);
    assert_int_equal(p.n_msgs, 3);
    assert_string_equal(p.msgs[0].role, "system");
    assert_string_equal(p.msgs[1].content, "ab");
    assert_int_equal(p.msgs[1].content_len, 2);
    assert_int_equal(p.msgs[2].content_len, 0);
    api_params_free(&p);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_bad(API_COMPLETION, "", NULL);
    expect_bad(API_COMPLETION, "{", NULL);
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",}", NULL);
    expect_bad(API_COMPLETION, "[]", NULL);
    expect_bad(API_COMPLETION, "\"prompt\"", NULL);
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"prompt\":\"y\"}", NULL);
    expect_bad(API_COMPLETION, "{}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":null}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":[]}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":[1,\"b\"]}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":[-1]}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":{}}", "prompt");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"model\":3}", "model");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"max_completion_tokens\":-3}", "max_completion_tokens");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":2.5}", "temperature");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":-0.1}", "temperature");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", "top_p");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1.1}", "top_p");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"min_p\":2}", "min_p");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"frequency_penalty\":-3}", "frequency_penalty");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"seed\":\"1\"}", "seed");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stop\":\"\"}", "stop");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",1]}", "stop");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stop\":3}", "stop");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stream\":1}", "stream");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stream_options\":[]}", "stream_options");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":\"y\"}}", "include_usage");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"n\":17}", "n");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"n\":0}", "n");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"n\":\"2\"}", "n");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":6}", "logprobs");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":-1}", "logprobs");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":2,\"echo\":true}", "echo");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"echo\":\"yes\"}", "echo");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"ignore_eos\":1}", "ignore_eos");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"user\":7}", "user");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":[1]}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"+1\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"1x\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"99999999999\":1}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":100.5}}", "logit_bias");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":\"x\"}}", "logit_bias");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":1}", "logprobs");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":1}", "top_logprobs");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}",
               "top_logprobs");
    expect_bad(API_CHAT, "{}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[]}", "messages");
    expect_bad(API_CHAT, "{\"messages\":\"hi\"}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[3]}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages");
}

static void test_new_fields(void **state)
{
    (void)state;
    struct api_params p;
    struct api_error e;
    /* Defaults. */
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":\"x\"}", &p, &e), 0);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.logprobs, -1);
    assert_int_equal(p.n_bias, 0);
    assert_false(p.echo || p.ignore_eos);
    assert_null(p.cache_salt);
    api_params_free(&p);
    /* vLLM's cache_salt: a non-empty string, or null. */
    assert_int_equal(
        parse(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"cache_salt\":\"s-1\"}", &p, &e), 0);
    assert_int_equal(p.cache_salt_len, 3);
    assert_memory_equal(p.cache_salt, "s-1", 3);
    api_params_free(&p);
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":\"x\",\"cache_salt\":null}", &p, &e), 0);
    assert_null(p.cache_salt);
    api_params_free(&p);
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"cache_salt\":\"\"}", "cache_salt");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"cache_salt\":7}", "cache_salt");
    expect_bad(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"cache_salt\":[\"a\"]}", "cache_salt");

    assert_int_equal(parse(API_COMPLETION,
                           "{\"prompt\":\"x\",\"n\":16,\"logprobs\":5,\"ignore_eos\":true,\"user\":\"u\","
                           "\"logit_bias\":{\"0\":-100,\"262143\":100,\"17\":0.5}}",
                           &p, &e),
                     0);
    assert_int_equal(p.n, 16);
    assert_int_equal(p.logprobs, 5);
    assert_true(p.ignore_eos);
    assert_int_equal(p.n_bias, 3);
    float seen = 0;
    for (int i = 0; i < p.n_bias; i++) {
        if (p.bias[i].token == 0)
            assert_true(p.bias[i].bias == -100.0f);
        if (p.bias[i].token == 262143)
            assert_true(p.bias[i].bias == 100.0f);
        if (p.bias[i].token == 17)
            seen = p.bias[i].bias;
    }
    assert_true(seen == 0.5f);
    api_params_free(&p);

    /* logprobs 0 is on (the chosen token only); false and null are off. */
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":0,\"echo\":false}", &p, &e), 0);
    assert_int_equal(p.logprobs, 0);
    api_params_free(&p);
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":false,\"echo\":true}", &p, &e), 0);
    assert_int_equal(p.logprobs, -1);
    assert_true(p.echo);
    api_params_free(&p);

    /* Chat: logprobs is a boolean, top_logprobs the count. */
    assert_int_equal(parse(API_CHAT,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
                           "\"top_logprobs\":20,\"n\":3}",
                           &p, &e),
                     0);
    assert_int_equal(p.logprobs, 20);
    assert_int_equal(p.n, 3);
    api_params_free(&p);
    assert_int_equal(
        parse(API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}", &p, &e), 0);
    assert_int_equal(p.logprobs, 0);
    api_params_free(&p);
    assert_int_equal(parse(API_CHAT,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":false,"
                           "\"echo\":\"ignored for chat\"}",
                           &p, &e),
                     0);
    assert_int_equal(p.logprobs, -1);
    api_params_free(&p);

    /* Too many bias entries. */
    struct lmd_buf b = {0};
    lmd_buf_printf(&b, "{\"prompt\":\"x\",\"logit_bias\":{");
    for (int i = 0; i <= API_MAX_BIAS; i++)
        lmd_buf_printf(&b, "%s\"%d\":1", i ? "," : "", i);
    lmd_buf_printf(&b, "}}");
    expect_bad(API_COMPLETION, b.ptr, "logit_bias");
    lmd_buf_free(&b);
}

static void test_token_text(void **state)
{
    (void)state;
    assert_true(api_utf8_valid("", 0));
    assert_true(api_utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
    assert_false(api_utf8_valid("\xe2\x82", 2));         /* cut short */
    assert_false(api_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(api_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(api_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    assert_false(api_utf8_valid("\x80", 1));

    struct lmd_buf b = {0};
    assert_int_equal(api_buf_json_token(&b, " the\"", 5), 0);
    assert_string_equal(b.ptr, "\" the\\\"\"");
    b.len = 0;
    assert_int_equal(api_buf_json_token(&b, "\xe2\x80", 2), 0);
    assert_string_equal(b.ptr, "\"bytes:\\\\xe2\\\\x80\"");
    /* It parses as JSON, to the string OpenAI sends. */
    json_t *s = json_loads(b.ptr, JSON_DECODE_ANY, NULL);
    assert_non_null(s);
    assert_string_equal(json_string_value(s), "bytes:\\xe2\\x80");
    json_decref(s);
    lmd_buf_free(&b);
}

/* Every prefix of a valid body is refused cleanly (no crash, no leak). */
static void test_truncated_bodies(void **state)
{
    (void)state;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]}],"
                       "\"stop\":[\"x\"],\"temperature\":0.5}";
    size_t n = strlen(body);
    for (size_t i = 0; i < n; i++) {
        struct api_params p;
        struct api_error e;
        assert_int_equal(api_params_parse(&p, API_CHAT, body, i, &e), LMD_EINVAL);
        api_params_free(&p);
    }
}

static void test_stop_matching(void **state)
{
    (void)state;
    const char *stop[2] = {"\n\n", "END"};
    size_t len[2] = {2, 3};
    assert_int_equal(api_stop_find("abc", 3, stop, len, 2), -1);
    assert_int_equal(api_stop_find("abENDc\n\n", 8, stop, len, 2), 2);
    assert_int_equal(api_stop_find("a\n\nEND", 6, stop, len, 2), 1);
    assert_int_equal(api_stop_find("EN", 2, stop, len, 2), -1);
    /* Hold back what may begin a stop string. */
    assert_int_equal(api_stop_holdback("abc", 3, stop, len, 2), 0);
    assert_int_equal(api_stop_holdback("abcE", 4, stop, len, 2), 1);
    assert_int_equal(api_stop_holdback("abcEN", 5, stop, len, 2), 2);
    assert_int_equal(api_stop_holdback("abc\n", 4, stop, len, 2), 1);
    assert_int_equal(api_stop_holdback("N", 1, stop, len, 2), 0);
    assert_int_equal(api_stop_holdback("", 0, stop, len, 2), 0);
    assert_int_equal(api_stop_holdback("abc", 3, stop, len, 0), 0);

    /* Feed "xxEN" + "D!" piece by piece as tokens would arrive: what is
     * emitted never contains any part of the stop string. */
    const char *pieces[] = {"xx", "E", "N", "D!"};
    char pend[64] = "", out[64] = "";
    size_t pl = 0, ol = 0;
    long at = -1;
    for (int i = 0; i < 4 && at < 0; i++) {
        memcpy(pend + pl, pieces[i], strlen(pieces[i]));
        pl += strlen(pieces[i]);
        at = api_stop_find(pend, pl, stop, len, 2);
        size_t safe = at >= 0 ? (size_t)at : pl - api_stop_holdback(pend, pl, stop, len, 2);
        memcpy(out + ol, pend, safe);
        ol += safe;
        memmove(pend, pend + safe, pl - safe);
        pl -= safe;
    }
    assert_true(at >= 0);
    out[ol] = '\0';
    assert_string_equal(out, "xx");
}

static void test_json_escape_and_errors(void **state)
{
    (void)state;
    struct lmd_buf b = {0};
    const char raw[] = "a\"b\\c\nd\te\x01\x7f"
                       "caf\xc3\xa9";
    assert_int_equal(api_buf_json_escape(&b, raw, sizeof raw - 1), 0);
    assert_string_equal(b.ptr, "a\\\"b\\\\c\\nd\\te\\u0001\\u007fcaf\xc3\xa9");
    /* It round-trips through a real JSON parser. */
    struct lmd_buf doc = {0};
    lmd_buf_printf(&doc, "\"%s\"", b.ptr);
    json_t *s = json_loads(doc.ptr, JSON_DECODE_ANY, NULL);
    assert_non_null(s);
    assert_int_equal(json_string_length(s), sizeof raw - 1);
    assert_memory_equal(json_string_value(s), raw, sizeof raw - 1);
    json_decref(s);
    lmd_buf_free(&doc);
    lmd_buf_free(&b);

    struct api_error e;
    api_error_set(&e, 400, "invalid_request_error", "temperature", NULL, "'%s' must be in [0, 2]", "temperature");
    size_t n;
    char *j = api_error_json(&e, &n);
    json_t *o = json_loads(j, 0, NULL);
    assert_non_null(o);
    json_t *err = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "'temperature' must be in [0, 2]");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(err, "param")), "temperature");
    assert_true(json_is_null(json_object_get(err, "code")));
    json_decref(o);
    free(j);
}

/* Values that are in range as doubles but hit an excluded bound as the
 * samplers' floats are refused with 400, not failed later as a 500. */
static void test_float_zero_bounds(void **state)
{
    (void)state;
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1e-46}", "top_p");
    expect_bad(API_COMPLETION, "{\"prompt\":\"x\",\"repetition_penalty\":1e-46}", "repetition_penalty");
    /* The smallest positive float is still fine. */
    struct api_params p;
    struct api_error e;
    assert_int_equal(parse(API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1.5e-45}", &p, &e), 0);
    assert_true(p.sp.top_p > 0);
    api_params_free(&p);
}

/* An error message quoting bytes that are not UTF-8 (a request path), or
 * cut mid-character by the message buffer, still makes a JSON body. */
static void test_error_body_with_bad_utf8(void **state)
{
    (void)state;
    struct api_error e;
    api_error_set(&e, 404, "not_found_error", NULL, "not_found", "no route for GET %s", "/v1/x\xff\xc3");
    size_t len = 0;
    char *s = api_error_json(&e, &len);
    assert_non_null(s);
    assert_true(api_utf8_valid(s, len));
    assert_non_null(strstr(s, "/v1/x??"));
    free(s);
    /* A 2-byte character across the end of the 320-byte message. */
    char big[400];
    memset(big, 'a', sizeof big);
    for (size_t i = 300; i + 1 < sizeof big; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    big[sizeof big - 1] = '\0';
    for (int shift = 0; shift < 2; shift++) {
        api_error_set(&e, 400, "invalid_request_error", NULL, NULL, "%.*s%s", shift, "b", big);
        s = api_error_json(&e, &len);
        assert_non_null(s);
        assert_true(api_utf8_valid(s, len));
        free(s);
    }
}

/* Routing names: ids win over aliases, names are matched whole (by
 * length, as a URL path segment arrives), and api_init copies what it is
 * given. */
static void test_model_find(void **state)
{
    (void)state;
    char id0[] = "a", alias[] = "b";
    const char *al0[] = {"x", alias}, *al1[] = {"y", "Gemma 3 270m"};
    struct api_model m[2] = {
        {.id = id0, .aliases = al0, .n_aliases = 2, .display_name = "A", .n_ctx = 64},
        {.id = "b", .aliases = al1, .n_aliases = 2, .n_ctx = 128},
    };
    struct api_config cfg = {.models = m, .n_models = 0};
    struct api *a = NULL;
    struct lmd_err err = {0};
    assert_int_equal(api_init(&a, &cfg, &err), LMD_EINVAL);
    cfg.n_models = API_MAX_MODELS + 1;
    assert_int_equal(api_init(&a, &cfg, &err), LMD_EINVAL);
    cfg.n_models = 2;
    assert_int_equal(api_init(&a, &cfg, &err), 0);
    id0[0] = 'z'; /* the api kept its own copies */
    alias[0] = 'z';
    assert_int_equal(api_model_find(a, "a", 1), 0);
    assert_int_equal(api_model_find(a, "b", 1), 1); /* model 1's id, before model 0's alias */
    assert_int_equal(api_model_find(a, "x", 1), 0);
    assert_int_equal(api_model_find(a, "y", 1), 1);
    assert_int_equal(api_model_find(a, "Gemma 3 270m", 12), 1);
    assert_int_equal(api_model_find(a, "abc", 1), 0); /* the first byte only: "a" */
    assert_int_equal(api_model_find(a, "ab", 2), -1);
    assert_int_equal(api_model_find(a, "z", 1), -1);
    assert_int_equal(api_model_find(a, "", 0), -1);
    assert_string_equal(a->models[0].m.display_name, "A");
    assert_null(a->models[1].m.display_name);
    assert_string_equal(a->models[1].id_json, "b");
    api_free(a);
}

/* Fields that would change the answer and are not supported are refused,
 * naming the field; their harmless spellings pass. */
static void test_unsupported_fields_refused(void **state)
{
    (void)state;
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char body[512];
    static const struct {
        const char *field, *param;
    } bad[] = {
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}", "response_format"},
        {"\"response_format\":{\"type\":\"yaml\"}", "response_format"},
        {"\"response_format\":\"json\"", "response_format"},
        {"\"tools\":[{\"type\":\"retrieval\"}]", "tools"},
        {"\"tool_choice\":\"always\"", "tool_choice"},
        {"\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}", "tool_choice"},
        {"\"functions\":[{\"name\":\"f\"}]", "functions"},
        {"\"function_call\":\"auto\"", "function_call"},
        {"\"guided_json\":{}", "guided_json"},
        {"\"grammar\":\"\"", "grammar"},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"extra\":1}}",
         "response_format"},
        {"\"response_format\":{\"type\":\"json_object\",\"schema\":{}}", "response_format"},
        {"\"response_format\":{\"type\":\"json_object\"},\"ignore_eos\":true", "ignore_eos"},
        {"\"suffix\":\"end\"", "suffix"},
        {"\"best_of\":3", "best_of"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(body, sizeof body, "{%s,%s}", m, bad[i].field);
        expect_bad(API_CHAT, body, bad[i].param);
    }
    static const char *const ok[] = {
        "\"response_format\":{\"type\":\"text\"}",
        "\"tools\":[]",
        "\"tool_choice\":\"none\"",
        "\"tool_choice\":\"auto\"",
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":"
        "\"function\",\"function\":{\"name\":\"f\"}}",
        "\"response_format\":null",
        "\"response_format\":{\"type\":\"json_object\"}",
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{},\"strict\":true}}",
        "\"grammar\":\"root ::= x\"",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(body, sizeof body, "{%s,%s}", m, ok[i]);
        struct api_params p;
        struct api_error e;
        if (parse(API_CHAT, body, &p, &e) != 0)
            fail_msg("refused: %s: %s", body, e.msg);
        api_params_free(&p);
    }
}

/* JSON Schema -> grammar: documents the schema allows match in full,
 * documents it refuses do not (not even as a prefix where the mistake is
 * visible early), and what cannot be enforced is refused by keyword. */
static bool schema_matches(const char *schema, const char *doc)
{
    json_error_t je;
    json_t *s = json_loads(schema, JSON_DECODE_ANY, &je);
    assert_non_null(s);
    struct lmd_buf b = {0};
    char msg[300];
    if (api_schema_grammar(s, "schema", &b, msg, sizeof msg) != 0)
        fail_msg("schema %s: %s", schema, msg);
    struct gram *g = NULL;
    struct lmd_err err = {0};
    if (gram_compile(&g, b.ptr, b.len, &err) != 0)
        fail_msg("grammar of %s: %s\n%s", schema, err.msg, b.ptr);
    struct gram_match *m = NULL;
    assert_int_equal(gram_match_init(&m, g, NULL, NULL), 0);
    bool ok = gram_match_feed(m, doc, strlen(doc)) && gram_match_accepting(m);
    gram_match_free(m);
    gram_free(g);
    lmd_buf_free(&b);
    json_decref(s);
    return ok;
}

static void schema_refused(const char *schema, const char *needle)
{
    json_error_t je;
    json_t *s = json_loads(schema, JSON_DECODE_ANY, &je);
    assert_non_null(s);
    struct lmd_buf b = {0};
    char msg[300] = "";
    int rc = api_schema_grammar(s, "schema", &b, msg, sizeof msg);
    if (rc == 0 || !strstr(msg, needle))
        fail_msg("schema %s: rc %d, '%s'; expected '%s'", schema, rc, msg, needle);
    lmd_buf_free(&b);
    json_decref(s);
}

static void test_schema_grammar(void **state)
{
    (void)state;
    const char *person = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":5},"
                         "\"age\":{\"type\":\"integer\",\"minimum\":18,\"maximum\":130},\"nick\":{\"type\":"
                         "[\"string\",\"null\"]}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}";
    assert_true(schema_matches(person, "{\"name\":\"Ann\",\"age\":18}"));
    assert_true(schema_matches(person, "{ \"name\" : \"\\u00e9t\\\"\" ,\n  \"age\": 130, \"nick\": null }"));
    assert_true(schema_matches(person, "{\"name\":\"\",\"age\":99,\"nick\":\"x\"}"));
    assert_false(schema_matches(person, "{\"name\":\"Ann\"}"));                    /* age required */
    assert_false(schema_matches(person, "{\"name\":\"Annabel\",\"age\":20}"));     /* maxLength */
    assert_false(schema_matches(person, "{\"name\":\"Ann\",\"age\":17}"));         /* minimum */
    assert_false(schema_matches(person, "{\"name\":\"Ann\",\"age\":131}"));        /* maximum */
    assert_false(schema_matches(person, "{\"name\":\"Ann\",\"age\":018}"));        /* leading zero */
    assert_false(schema_matches(person, "{\"name\":\"Ann\",\"age\":20,\"x\":1}")); /* additional */
    assert_false(schema_matches(person, "{\"name\":\"A\nn\",\"age\":20}"));        /* raw control character */
    assert_false(schema_matches(person, "{\"name\":\"Ann\",\"age\":20}      "));   /* trailing text */

    /* Integer ranges by digits, across signs and lengths. */
    const char *rng = "{\"type\":\"integer\",\"minimum\":-105,\"maximum\":2047}";
    char num[16];
    for (int v = -130; v <= 2100; v++) {
        snprintf(num, sizeof num, "%d", v);
        if (schema_matches(rng, num) != (v >= -105 && v <= 2047))
            fail_msg("%d", v);
    }
    assert_false(schema_matches(rng, "-0"));
    assert_true(schema_matches("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", "9"));
    assert_false(schema_matches("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", "0"));
    /* Numbers in [0, 1] and [2, 5]. */
    const char *unit = "{\"type\":\"number\",\"minimum\":0,\"maximum\":1}";
    assert_true(schema_matches(unit, "0.25"));
    assert_true(schema_matches(unit, "1"));
    assert_true(schema_matches(unit, "1.000"));
    assert_false(schema_matches(unit, "1.5"));
    assert_false(schema_matches(unit, "-0.5"));
    assert_true(schema_matches("{\"type\":\"number\",\"minimum\":2,\"maximum\":5}", "4.99"));
    assert_false(schema_matches("{\"type\":\"number\",\"minimum\":2,\"maximum\":5}", "5.01"));
    assert_true(schema_matches("{\"type\":\"number\"}", "-12.5e+3"));

    /* Arrays, enums, const, anyOf, nesting, $ref recursion. */
    const char *arr = "{\"type\":\"array\",\"items\":{\"enum\":[\"a\",1,null]},\"minItems\":1,\"maxItems\":3}";
    assert_true(schema_matches(arr, "[\"a\", 1, null]"));
    assert_false(schema_matches(arr, "[]"));
    assert_false(schema_matches(arr, "[1,1,1,1]"));
    assert_false(schema_matches(arr, "[\"b\"]"));
    assert_true(schema_matches("{\"const\":{\"k\":[1,\"x\"]}}", "{\"k\":[1,\"x\"]}"));
    assert_true(schema_matches("{\"anyOf\":[{\"type\":\"boolean\"},{\"type\":\"null\"}]}", "null"));
    const char *tree = "{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"kids\":{\"type\":\"array\","
                       "\"items\":{\"$ref\":\"#/$defs/n\"}}},\"required\":[\"kids\"]}},\"$ref\":\"#/$defs/n\"}";
    assert_true(schema_matches(tree, "{\"kids\":[{\"kids\":[]},{\"kids\":[{\"kids\":[]}]}]}"));
    assert_false(schema_matches(tree, "{\"kids\":[{}]}"));
    assert_true(schema_matches("{\"type\":\"object\"}", "{\"any\": [1, {\"x\": \"y\"}]}"));
    assert_true(schema_matches("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
                               "{\"a\": 1, \"b\": 2}"));
    assert_false(
        schema_matches("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", "{\"a\": \"1\"}"));

    schema_refused("{\"type\":\"string\",\"pattern\":\"a\"}", "schema: the keyword 'pattern' is not supported");
    schema_refused("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"format\":\"date\"}}}",
                   "schema.properties.a: the keyword 'format'");
    schema_refused("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"multipleOf\":2}}",
                   "schema.items: the keyword 'multipleOf'");
    schema_refused("{\"type\":\"number\",\"minimum\":-1}", "number bounds are supported when");
    schema_refused("{\"type\":\"number\",\"minimum\":0.5}", "number bounds are supported when");
    schema_refused("{\"type\":\"array\",\"maxItems\":5000}", "'maxItems' above 1000");
    schema_refused("{\"type\":\"array\",\"uniqueItems\":true}", "'uniqueItems' true");
    schema_refused("{\"$ref\":\"http://x/y\"}", "only '#'");
    schema_refused("{\"allOf\":[{},{}]}", "'allOf' is supported with exactly one schema");
    schema_refused("{\"type\":\"integer\",\"minimum\":1e20}", "16 digits");
    schema_refused("{\"type\":7}", "'type' must be");
    schema_refused("false", "a false schema allows nothing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_ok),
        cmocka_unit_test(test_chat_ok),
        cmocka_unit_test(test_float_zero_bounds),
        cmocka_unit_test(test_unsupported_fields_refused),
        cmocka_unit_test(test_schema_grammar),
        cmocka_unit_test(test_error_body_with_bad_utf8),
        cmocka_unit_test(test_model_find),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncated_bodies),
        cmocka_unit_test(test_stop_matching),
        cmocka_unit_test(test_json_escape_and_errors),
        cmocka_unit_test(test_new_fields),
        cmocka_unit_test(test_token_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
