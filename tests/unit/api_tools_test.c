/*
 * api/tools.c: the request's tools and tool_choice checked with precise
 * 400s; the call syntax read from real templates' sources; calls parsed
 * back from the output of each family, malformed calls left as content;
 * the streaming scan that holds back what may open a call; and the
 * grammars that force a call, fed well-formed and malformed calls.
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
#include "sample/grammar.h"

static const char *const NAMES[] = {"get_weather", "add"};

#define TOOLS                                                                                                          \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\","    \
    "\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":8}},\"required\":[\"city\"]}}},"                      \
    "{\"type\":\"function\",\"function\":{\"name\":\"add\"}}]"
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

static int parse(const char *body, struct api_params *p, struct api_error *e)
{
    memset(e, 0, sizeof *e);
    return api_params_parse(p, API_CHAT, body, strlen(body), e);
}

static void test_request_fields(void **state)
{
    (void)state;
    struct api_params p;
    struct api_error e;
    assert_int_equal(parse("{" MSGS "," TOOLS "}", &p, &e), 0);
    assert_int_equal(p.n_tools, 2);
    assert_int_equal(p.tool_choice, API_TC_AUTO);
    assert_true(p.parallel_tool_calls);
    api_params_free(&p);
    assert_int_equal(parse("{" MSGS "," TOOLS
                           ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"add\"}},"
                           "\"parallel_tool_calls\":false}",
                           &p, &e),
                     0);
    assert_int_equal(p.tool_choice, API_TC_NAMED);
    assert_string_equal(p.tool_name, "add");
    assert_false(p.parallel_tool_calls);
    api_params_free(&p);
    /* No tools: auto means none. */
    assert_int_equal(parse("{" MSGS ",\"tool_choice\":\"auto\"}", &p, &e), 0);
    assert_int_equal(p.tool_choice, API_TC_NONE);
    api_params_free(&p);

    static const struct {
        const char *body, *param, *needle;
    } bad[] = {
        {"{" MSGS ",\"tools\":{}}", "tools", "must be a list"},
        {"{" MSGS ",\"tools\":[{\"type\":\"code_interpreter\"}]}", "tools", "\"type\": \"function\""},
        {"{" MSGS ",\"tools\":[{\"type\":\"function\"}]}", "tools", "function must be an object"},
        {"{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]}", "tools", "letters"},
        {"{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}]}", "tools",
         "JSON Schema"},
        {"{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\","
         "\"function\":{\"name\":\"f\"}}]}",
         "tools", "both named 'f'"},
        {"{" MSGS "," TOOLS ",\"tool_choice\":\"any\"}", "tool_choice", "got \"any\""},
        {"{" MSGS "," TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}}", "tool_choice",
         "not in 'tools'"},
        {"{" MSGS "," TOOLS ",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice", "must be"},
        {"{" MSGS ",\"tool_choice\":\"required\"}", "tool_choice", "non-empty 'tools'"},
        {"{" MSGS "," TOOLS ",\"parallel_tool_calls\":1}", "parallel_tool_calls", "true or false"},
        {"{" MSGS "," TOOLS ",\"response_format\":{\"type\":\"json_object\"}}", "tools", "constrained output"},
        {"{" MSGS "," TOOLS ",\"stream\":true,\"logprobs\":true}", "logprobs", "streamed"},
        {"{" MSGS "," TOOLS ",\"tool_choice\":\"required\",\"ignore_eos\":true}", "ignore_eos", "forced"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":1}}]}]}", "messages",
         "tool_calls[0]"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "messages", "must be a list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(bad[i].body, &p, &e) == 0)
            fail_msg("accepted: %s", bad[i].body);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, bad[i].param);
        if (!strstr(e.msg, bad[i].needle))
            fail_msg("%s: '%s' lacks '%s'", bad[i].body, e.msg, bad[i].needle);
        api_params_free(&p);
    }
    /* A round trip's messages: an assistant call and the tool's result. */
    assert_int_equal(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":"
                           "null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"add\","
                           "\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"3\"}],"
                           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"add\"}}]}",
                           &p, &e),
                     0);
    api_params_free(&p);
}

static char *slurp(const char *name)
{
    const char *root = getenv("LMD_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/templates/%s", root ? root : LMD_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_detect_real_templates(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        enum api_tool_syntax want;
    } cases[] = {
        {"qwen2.5-instruct.jinja", API_TOOLS_HERMES},
        {"qwen3.jinja", API_TOOLS_HERMES},
        {"llama-3.2-instruct.jinja", API_TOOLS_LLAMA3},
        {"mistral-small-3.1-instruct.jinja", API_TOOLS_MISTRAL},
        {"gemma-3-it.jinja", API_TOOLS_NONE},
        {"smollm2-instruct.jinja", API_TOOLS_NONE},
        {"phi-4-mini-instruct.jinja", API_TOOLS_UNKNOWN},
        {"kimi-k2.jinja", API_TOOLS_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *src = slurp(cases[i].file);
        enum api_tool_syntax got = api_tools_detect(src, strlen(src));
        if (got != cases[i].want)
            fail_msg("%s: %s, expected %s", cases[i].file, api_tools_syntax_name(got),
                     api_tools_syntax_name(cases[i].want));
        free(src);
    }
    assert_int_equal(api_tools_detect(NULL, 0), API_TOOLS_NONE);
}

/* Extract and compare with the expected calls ("name|args;name|args") and
 * content length; want NULL = no call (the whole text is content). */
static void expect_calls(enum api_tool_syntax s, const char *text, const char *want, size_t want_content)
{
    size_t cl = 12345;
    json_t *calls = api_tools_extract(s, text, strlen(text), NAMES, 2, &cl);
    if (!want) {
        if (calls)
            fail_msg("parsed calls from %s", text);
        assert_int_equal(cl, strlen(text));
        return;
    }
    if (!calls)
        fail_msg("no calls in %s", text);
    char got[512] = "";
    size_t k;
    json_t *c;
    json_array_foreach(calls, k, c)
    {
        size_t at = strlen(got);
        snprintf(got + at, sizeof got - at, "%s%s|%s", k ? ";" : "", json_string_value(json_object_get(c, "name")),
                 json_string_value(json_object_get(c, "arguments")));
    }
    json_decref(calls);
    if (strcmp(got, want) != 0)
        fail_msg("%s: got %s, want %s", text, got, want);
    assert_int_equal(cl, want_content);
}

static void test_extract_hermes(void **state)
{
    (void)state;
    const enum api_tool_syntax H = API_TOOLS_HERMES;
    expect_calls(H, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
                 "add|{\"a\":1,\"b\":2}", 0);
    expect_calls(
        H,
        "Let me "
        "look.\n\n<tool_call>{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}</tool_call>"
        "\n<tool_call>\n{\"name\": \"add\"}\n</tool_call>\n",
        "get_weather|{\"city\":\"Oslo\"};add|{}", 12);
    /* The closing tag may be missing where the text ends (an end token). */
    expect_calls(H, "<tool_call>\n{\"name\": \"add\", \"arguments\": {}}", "add|{}", 0);
    /* Malformed: all content, never a crash. */
    static const char *const bad[] = {
        "no call here",
        "<tool_call>",
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1",
        "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"add\", \"arguments\": 5}</tool_call>",
        "<tool_call>{\"name\": \"add\"}</tool_call> and then some words",
        "<tool_call>[1, 2]</tool_call>",
        "<tool_call>{\"name\": \"add\", \"name\": \"add\"}</tool_call>",
        "<tool_call>{\"name\": \"add\"}</tool_call><tool_call>",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_calls(H, bad[i], NULL, 0);
}

static void test_extract_llama3_mistral(void **state)
{
    (void)state;
    const enum api_tool_syntax L = API_TOOLS_LLAMA3, M = API_TOOLS_MISTRAL;
    expect_calls(L, "{\"name\": \"add\", \"parameters\": {\"a\": 1}}", "add|{\"a\":1}", 0);
    expect_calls(L,
                 " <|python_tag|>{\"name\": \"add\", \"parameters\": {}}; {\"name\": \"get_weather\", "
                 "\"parameters\": {\"city\": \"Rome\"}}\n",
                 "add|{};get_weather|{\"city\":\"Rome\"}", 0);
    expect_calls(L, "The answer is {\"name\": \"add\"}", NULL, 0);
    expect_calls(L, "{\"name\": \"add\", \"parameters\": {}} trailing", NULL, 0);
    expect_calls(L, "{\"name\": \"add\", \"parameters\": {}};", NULL, 0);
    expect_calls(L, "{\"name\": \"add\", \"parameters\"", NULL, 0);
    expect_calls(M,
                 "Sure.[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 2}}, {\"name\": \"get_weather\", "
                 "\"arguments\": {}}]",
                 "add|{\"a\":2};get_weather|{}", 5);
    expect_calls(M, "[{\"name\": \"add\", \"arguments\": {}}]", "add|{}", 0);
    expect_calls(M, "[TOOL_CALLS][]", NULL, 0);
    expect_calls(M, "[TOOL_CALLS][{\"name\": \"add\"}, 3]", NULL, 0);
    expect_calls(M, "[TOOL_CALLS]{\"name\": \"add\"}", NULL, 0);
    expect_calls(M, "[1, 2, 3]", NULL, 0);
    /* An upstream's calls relayed by the remote engine. */
    const enum api_tool_syntax R = API_TOOLS_RELAY;
    expect_calls(R,
                 "Hi \x1e"
                 "add\x1f{\"a\": 1}\x1eget_weather\x1f",
                 "add|{\"a\": 1};get_weather|{}", 2);
    expect_calls(R,
                 "\x1e"
                 "add",
                 NULL, 0);
    expect_calls(R, "\x1erm\x1f{}", NULL, 0);
    expect_calls(R, "plain", NULL, 0);
    expect_calls(API_TOOLS_UNKNOWN, "<tool_call>{\"name\": \"add\"}</tool_call>", NULL, 0);
}

static void test_scan(void **state)
{
    (void)state;
    bool sure;
    const enum api_tool_syntax H = API_TOOLS_HERMES;
    assert_int_equal(api_tools_scan(H, "hello", 5, true, &sure), 5);
    assert_false(sure);
    /* A possible start of the marker is held back. */
    assert_int_equal(api_tools_scan(H, "hello <tool", 11, true, &sure), 6);
    assert_false(sure);
    assert_int_equal(api_tools_scan(H, "hi <tool_call>{", 15, false, &sure), 3);
    assert_true(sure);
    assert_int_equal(api_tools_scan(H, "a<b", 3, false, &sure), 3);
    /* Llama 3: only an answer that opens with '{' is a call. */
    assert_int_equal(api_tools_scan(API_TOOLS_LLAMA3, "  ", 2, true, &sure), 0);
    assert_false(sure);
    assert_int_equal(api_tools_scan(API_TOOLS_LLAMA3, " {\"na", 5, true, &sure), 1);
    assert_true(sure);
    assert_int_equal(api_tools_scan(API_TOOLS_LLAMA3, "<|pyth", 6, true, &sure), 0);
    assert_false(sure);
    assert_int_equal(api_tools_scan(API_TOOLS_LLAMA3, "x {", 3, true, &sure), 3);
    assert_int_equal(api_tools_scan(API_TOOLS_LLAMA3, "{", 1, false, &sure), 1);
    assert_false(sure);
    assert_int_equal(api_tools_scan(API_TOOLS_MISTRAL, "ok [TOOL_CA", 11, false, &sure), 3);
    assert_false(sure);
    assert_int_equal(api_tools_scan(API_TOOLS_MISTRAL, "[{", 2, true, &sure), 0);
    assert_true(sure);
}

/* The forced grammar for a request, fed text: whether the text is a whole
 * sentence of it. */
static bool forced_accepts(enum api_tool_syntax s, const char *extra, const char *text)
{
    char body[1024];
    snprintf(body, sizeof body, "{" MSGS "," TOOLS ",%s}", extra);
    struct api_params p;
    struct api_error e;
    if (parse(body, &p, &e) != 0 || api_tools_check(&p, s, NULL, &e) != 0)
        fail_msg("%s: %s", body, e.msg);
    assert_non_null(p.grammar);
    /* A byte vocabulary: token i is byte i, 256 ends generation. */
    static char bytes[256];
    const char *pieces[257];
    size_t len[257];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        len[i] = i ? 1 : 0;
    }
    pieces[256] = "";
    len[256] = 0;
    int32_t eog = 256;
    struct gram_vocab *gv = NULL;
    struct gram_match *m = NULL;
    assert_int_equal(gram_vocab_build_raw(&gv, 257, pieces, len, &eog, 1, NULL), 0);
    assert_int_equal(gram_match_init(&m, p.grammar, gv, NULL), 0);
    bool ok = gram_match_feed(m, text, strlen(text)) && gram_match_accepting(m);
    gram_match_free(m);
    gram_vocab_free(gv);
    api_params_free(&p);
    return ok;
}

static void test_forced_grammars(void **state)
{
    (void)state;
    const enum api_tool_syntax H = API_TOOLS_HERMES;
    const char *req = "\"tool_choice\":\"required\"";
    const char *named = "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}";
    const char *w = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    const char *a = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"x\": [1, true]}}\n</tool_call>";
    assert_true(forced_accepts(H, req, w));
    assert_true(forced_accepts(H, req, a));
    char two[512];
    snprintf(two, sizeof two, "%s\n%s", w, a);
    assert_true(forced_accepts(H, req, two));
    assert_false(forced_accepts(H, "\"tool_choice\":\"required\",\"parallel_tool_calls\":false", two));
    assert_true(forced_accepts(H, named, w));
    assert_false(forced_accepts(H, named, a));
    /* Arguments are held to the schema: a required property, maxLength. */
    assert_false(forced_accepts(H, req, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"));
    assert_false(forced_accepts(
        H, req, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Llanfairpwll\"}}\n</tool_call>"));
    assert_false(forced_accepts(H, req, "I would rather not."));
    assert_false(forced_accepts(H, req, ""));
    assert_true(
        forced_accepts(API_TOOLS_LLAMA3, named, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"));
    assert_true(forced_accepts(API_TOOLS_MISTRAL, req,
                               "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {}}, {\"name\": \"get_weather\", "
                               "\"arguments\": {\"city\": \"x\"}}]"));
}

static void test_check_refusals(void **state)
{
    (void)state;
    struct api_params p;
    struct api_error e;
    assert_int_equal(parse("{" MSGS "," TOOLS "}", &p, &e), 0);
    assert_int_not_equal(api_tools_check(&p, API_TOOLS_NONE, "gemma", &e), 0);
    assert_string_equal(e.param, "tools");
    assert_non_null(strstr(e.msg, "built-in gemma template"));
    assert_int_not_equal(api_tools_check(&p, API_TOOLS_NONE, NULL, &e), 0);
    assert_non_null(strstr(e.msg, "does not render tools"));
    assert_int_not_equal(api_tools_check(&p, API_TOOLS_UNKNOWN, NULL, &e), 0);
    assert_non_null(strstr(e.msg, "does not parse"));
    assert_int_equal(api_tools_check(&p, API_TOOLS_HERMES, NULL, &e), 0);
    assert_null(p.grammar); /* auto: free output */
    api_params_free(&p);
    /* tool_choice none: served anywhere, tools hidden. */
    assert_int_equal(parse("{" MSGS "," TOOLS ",\"tool_choice\":\"none\"}", &p, &e), 0);
    assert_int_equal(api_tools_check(&p, API_TOOLS_NONE, "gemma", &e), 0);
    api_params_free(&p);
    /* A schema lmd cannot enforce is named when the call is forced. */
    const char *body = "{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                       "{\"type\":\"string\",\"pattern\":\"a+\"}}}],\"tool_choice\":\"required\"}";
    assert_int_equal(parse(body, &p, &e), 0);
    assert_int_not_equal(api_tools_check(&p, API_TOOLS_HERMES, NULL, &e), 0);
    assert_string_equal(e.param, "tools");
    assert_non_null(strstr(e.msg, "tools[0].function.parameters"));
    api_params_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_fields), cmocka_unit_test(test_detect_real_templates),
        cmocka_unit_test(test_extract_hermes), cmocka_unit_test(test_extract_llama3_mistral),
        cmocka_unit_test(test_scan),           cmocka_unit_test(test_forced_grammars),
        cmocka_unit_test(test_check_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
