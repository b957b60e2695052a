/*
 * api/responses.c and api/messages.c: Responses and Messages bodies become
 * the chat request they mean; malformed or unservable ones are a 400 naming
 * the field; the renderers produce the objects and events clients parse.
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

typedef int (*translate_fn)(const char *, size_t, char **, char **, struct api_error *);

/* The chat body a translation gives, parsed (the caller frees it). */
static json_t *chat_of(translate_fn fn, const char *body, char **echo)
{
    char *chat = NULL, *ec = NULL;
    struct api_error e = {0};
    int rc = fn(body, strlen(body), &chat, &ec, &e);
    if (rc != 0)
        fail_msg("%s -> %d %s", body, e.status, e.msg);
    json_t *o = json_loads(chat, 0, NULL);
    free(chat);
    if (echo)
        *echo = ec;
    else
        free(ec);
    assert_non_null(o);
    return o;
}

static void expect_400(translate_fn fn, const char *body, const char *param, const char *needle)
{
    char *chat = NULL, *echo = NULL;
    struct api_error e = {0};
    int rc = fn(body, strlen(body), &chat, &echo, &e);
    if (rc == 0)
        fail_msg("accepted: %s", body);
    assert_null(chat);
    assert_null(echo);
    assert_int_equal(e.status, 400);
    if (param) {
        assert_non_null(e.param);
        assert_string_equal(e.param, param);
    }
    if (!strstr(e.msg, needle))
        fail_msg("%s: message '%s' lacks '%s'", body, e.msg, needle);
}

static void test_responses_translation(void **state)
{
    (void)state;
    char *echo = NULL;
    json_t *c =
        chat_of(api_responses_translate,
                "{\"model\":\"m\",\"instructions\":\"Be brief.\",\"input\":[{\"role\":\"developer\",\"content\":"
                "\"d\"},{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":"
                "\"a\"},{\"type\":\"input_text\",\"text\":\"b\"}]}],\"max_output_tokens\":7,\"top_k\":3,"
                "\"metadata\":{\"k\":\"v\"},\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"n\","
                "\"schema\":{\"type\":\"object\"},\"strict\":true}},\"store\":true}",
                &echo);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")), "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "role")), "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 2), "content")), "ab");
    assert_int_equal(json_integer_value(json_object_get(c, "max_tokens")), 7);
    assert_int_equal(json_integer_value(json_object_get(c, "top_k")), 3);
    assert_string_equal(json_string_value(json_object_get(c, "model")), "m");
    json_t *rf = json_object_get(c, "response_format");
    assert_string_equal(json_string_value(json_object_get(rf, "type")), "json_schema");
    assert_string_equal(json_string_value(json_object_get(json_object_get(rf, "json_schema"), "name")), "n");
    assert_null(json_object_get(c, "store"));
    json_decref(c);
    /* The echo is members to splice into an object. */
    assert_non_null(echo);
    assert_true(echo[0] == ',');
    char obj[512];
    snprintf(obj, sizeof obj, "{\"x\":1%s}", echo);
    json_t *o = json_loads(obj, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "metadata"), "k")), "v");
    assert_string_equal(json_string_value(json_object_get(o, "instructions")), "Be brief.");
    json_decref(o);
    free(echo);

    c = chat_of(api_responses_translate, "{\"input\":\"hi\"}", NULL);
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 1);
    assert_null(json_object_get(c, "response_format"));
    json_decref(c);
}

static void test_responses_refusals(void **state)
{
    (void)state;
    translate_fn f = api_responses_translate;
    expect_400(f, "", NULL, "not valid JSON");
    expect_400(f, "[1]", NULL, "JSON object");
    expect_400(f, "{\"input\":\"a\",\"input\":\"b\"}", NULL, "not valid JSON");
    expect_400(f, "{}", "input", "required");
    expect_400(f, "{\"input\":[]}", "input", "non-empty");
    expect_400(f, "{\"input\":[3]}", "input", "input[0] must be an object");
    expect_400(f, "{\"input\":[{\"role\":\"user\"}]}", "input", "string or a list");
    expect_400(f, "{\"input\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}", "input", "string 'type'");
    expect_400(f, "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":1}]}]}", "input",
               "text must be a string");
    expect_400(f, "{\"input\":[{\"type\":\"reasoning\"}]}", "input", "'reasoning'");
    expect_400(f, "{\"input\":\"x\",\"previous_response_id\":\"r\"}", "previous_response_id", "does not store");
    expect_400(f, "{\"input\":\"x\",\"tools\":[{}]}", "tools", "tool");
    expect_400(f, "{\"input\":\"x\",\"max_output_tokens\":1.5}", "max_output_tokens", "integer");
    expect_400(f, "{\"input\":\"x\",\"metadata\":[]}", "metadata", "object");
    expect_400(f, "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_object\",\"x\":1}}}", "text", "no other");
    expect_400(f,
               "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"n\",\"schema\":{},"
               "\"bogus\":1}}}",
               "text", "bogus");
    expect_400(f, "{\"input\":\"x\",\"text\":{\"verbosity\":\"high\"}}", "text", "verbosity");
}

static void test_messages_translation(void **state)
{
    (void)state;
    json_t *c =
        chat_of(api_messages_translate,
                "{\"max_tokens\":9,\"system\":[{\"type\":\"text\",\"text\":\"S\"}],\"messages\":[{\"role\":"
                "\"user\",\"content\":[{\"type\":\"text\",\"text\":\"u\"}]},{\"role\":\"assistant\",\"content\":"
                "\"a\"},{\"role\":\"user\",\"content\":\"v\"}],\"stop_sequences\":[\"X\"],\"top_k\":4,"
                "\"temperature\":0.5,\"metadata\":{\"user_id\":\"q\"},\"output_config\":{\"format\":{\"type\":"
                "\"json_schema\",\"schema\":{\"type\":\"object\"}}}}",
                NULL);
    json_t *msgs = json_object_get(c, "messages");
    assert_int_equal(json_array_size(msgs), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")), "S");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 2), "role")), "assistant");
    assert_int_equal(json_integer_value(json_object_get(c, "max_tokens")), 9);
    assert_string_equal(json_string_value(json_array_get(json_object_get(c, "stop"), 0)), "X");
    assert_int_equal(json_integer_value(json_object_get(c, "top_k")), 4);
    assert_non_null(json_object_get(json_object_get(json_object_get(c, "response_format"), "json_schema"), "schema"));
    assert_null(json_object_get(c, "metadata"));
    json_decref(c);
}

static void test_messages_refusals(void **state)
{
    (void)state;
    translate_fn f = api_messages_translate;
    const char *u = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[512];
    expect_400(f, "{", NULL, "not valid JSON");
    expect_400(f, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "max_tokens", "required");
    snprintf(b, sizeof b, "{\"max_tokens\":0,%s}", u);
    expect_400(f, b, "max_tokens", "integer");
    expect_400(f, "{\"max_tokens\":1}", "messages", "required");
    expect_400(f, "{\"max_tokens\":1,\"messages\":{}}", "messages", "non-empty");
    expect_400(f, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\"}]}", "messages", "required");
    expect_400(f, "{\"max_tokens\":1,\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages", "role");
    expect_400(f, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\"}]}]}",
               "messages", "tool_use_id");
    expect_400(f, "{\"max_tokens\":1,\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}]}", "messages",
               "prefill");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"system\":{}}", u);
    expect_400(f, b, "system", "string or a list");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"temperature\":2}", u);
    expect_400(f, b, "temperature", "[0, 1]");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"stop_sequences\":\"x\"}", u);
    expect_400(f, b, "stop_sequences", "list");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"thinking\":{\"type\":\"enabled\"}}", u);
    expect_400(f, b, "thinking", "thinking");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"tool_choice\":{\"type\":\"any\"}}", u);
    expect_400(f, b, "tool_choice", "tool_choice");
    snprintf(b, sizeof b, "{\"max_tokens\":1,%s,\"output_config\":{\"format\":{\"type\":\"xml\"}}}", u);
    expect_400(f, b, "output_config", "json_schema");
}

static void test_messages_error_shape(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *type;
    } cases[] = {{400, "invalid_request_error"}, {401, "authentication_error"},
                 {403, "permission_error"},      {404, "not_found_error"},
                 {413, "request_too_large"},     {429, "rate_limit_error"},
                 {503, "overloaded_error"},      {500, "api_error"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct api_error e = {0};
        api_error_set(&e, cases[i].status, "x", NULL, NULL, "m \"%d\"", cases[i].status);
        size_t len = 0;
        char *s = api_messages_error_json(&e, &len);
        assert_non_null(s);
        json_t *o = json_loads(s, 0, NULL);
        assert_non_null(o);
        assert_int_equal(strlen(s), len);
        assert_string_equal(json_string_value(json_object_get(o, "type")), "error");
        assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "type")), cases[i].type);
        json_decref(o);
        free(s);
    }
}

/* Every data: line of an event stream parses and names its event. */
static int check_events(const char *s, const char *const *want, int n_want)
{
    int k = 0;
    const char *p = s;
    while ((p = strstr(p, "event: ")) != NULL) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(nl - p - 7), p + 7);
        assert_true(strncmp(nl + 1, "data: ", 6) == 0);
        const char *end = strstr(nl + 1, "\n\n");
        assert_non_null(end);
        json_t *o = json_loadb(nl + 7, (size_t)(end - nl - 7), 0, NULL);
        assert_non_null(o);
        assert_string_equal(json_string_value(json_object_get(o, "type")), name);
        json_decref(o);
        if (k < n_want)
            assert_string_equal(name, want[k]);
        k++;
        p = end;
    }
    return k;
}

static void test_render(void **state)
{
    (void)state;
    struct api_dialect_out d = {.id = "resp_1", .model_json = "m", .created = 5, .echo = ",\"metadata\":{}"};
    struct api_dialect_end end = {.text = "a\"b", .text_len = 3, .length = true, .n_prompt = 4, .n_gen = 2};
    struct lmd_buf b = {0};
    api_responses_ops.stream_begin(&b, &d, 4);
    api_responses_ops.stream_text(&b, &d, "a\"", 2);
    api_responses_ops.stream_text(&b, &d, "b", 1);
    api_responses_ops.stream_end(&b, &d, &end);
    assert_non_null(b.ptr);
    static const char *const rs[] = {"response.created",           "response.in_progress",
                                     "response.output_item.added", "response.content_part.added",
                                     "response.output_text.delta", "response.output_text.delta",
                                     "response.output_text.done",  "response.content_part.done",
                                     "response.output_item.done",  "response.incomplete"};
    assert_int_equal(check_events(b.ptr, rs, 10), 10);
    assert_int_equal(d.seq, 10);
    b.len = 0;
    api_responses_ops.body(&b, &d, &end);
    json_t *o = json_loadb(b.ptr, b.len, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "incomplete");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "usage"), "total_tokens")), 6);
    json_decref(o);
    b.len = 0;
    struct api_error e = {0};
    api_error_set(&e, 503, "server_error", NULL, "server_shutdown", "gone");
    api_responses_ops.stream_error(&b, &d, &e);
    static const char *const fail[] = {"error", "response.failed"};
    assert_int_equal(check_events(b.ptr, fail, 2), 2);

    struct api_dialect_out m = {.id = "msg_1", .model_json = "m"};
    struct api_dialect_end mend = {.text = "hi", .text_len = 2, .stop_seq = "\n", .stop_seq_len = 1, .n_gen = 1};
    b.len = 0;
    api_messages_ops.stream_begin(&b, &m, 3);
    api_messages_ops.stream_text(&b, &m, "hi", 2);
    api_messages_ops.stream_end(&b, &m, &mend);
    static const char *const ms[] = {
        "message_start",      "ping",          "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"};
    assert_int_equal(check_events(b.ptr, ms, 7), 7);
    b.len = 0;
    api_messages_ops.body(&b, &m, &mend);
    o = json_loadb(b.ptr, b.len, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "stop_reason")), "stop_sequence");
    assert_string_equal(json_string_value(json_object_get(o, "stop_sequence")), "\n");
    json_decref(o);
    b.len = 0;
    api_messages_ops.stream_error(&b, &m, &e);
    static const char *const merr[] = {"error"};
    assert_int_equal(check_events(b.ptr, merr, 1), 1);
    lmd_buf_free(&b);
}

/* The chat message at i of c's messages. */
static json_t *msg_at(json_t *c, size_t i) { return json_array_get(json_object_get(c, "messages"), i); }

static const char *str_at(json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

static void test_responses_tools(void **state)
{
    (void)state;
    char *echo = NULL;
    json_t *c = chat_of(
        api_responses_translate,
        "{\"input\":[{\"role\":\"user\",\"content\":\"q\"},{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":"
        "\"f\",\"arguments\":\"{\\\"a\\\":1}\"},{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"g\","
        "\"arguments\":\"{}\"},{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"r1\"},{\"type\":"
        "\"function_call_output\",\"call_id\":\"c2\",\"output\":[{\"type\":\"input_text\",\"text\":\"r2\"}]}],"
        "\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"description\":\"d\",\"parameters\":{\"type\":\"object\"},"
        "\"strict\":true},{\"type\":\"function\",\"name\":\"g\"}],\"tool_choice\":{\"type\":\"function\",\"name\":"
        "\"g\"},\"max_tool_calls\":1}",
        &echo);
    /* user, one assistant turn holding both calls, two tool messages */
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 4);
    json_t *a = msg_at(c, 1);
    assert_string_equal(str_at(a, "role"), "assistant");
    assert_true(json_is_null(json_object_get(a, "content")));
    json_t *calls = json_object_get(a, "tool_calls");
    assert_int_equal(json_array_size(calls), 2);
    json_t *c1 = json_array_get(calls, 0);
    assert_string_equal(str_at(c1, "id"), "c1");
    assert_string_equal(str_at(c1, "type"), "function");
    assert_string_equal(str_at(json_object_get(c1, "function"), "name"), "f");
    assert_string_equal(str_at(json_object_get(c1, "function"), "arguments"), "{\"a\":1}");
    assert_string_equal(str_at(msg_at(c, 2), "role"), "tool");
    assert_string_equal(str_at(msg_at(c, 2), "tool_call_id"), "c1");
    assert_string_equal(str_at(msg_at(c, 2), "content"), "r1");
    assert_string_equal(str_at(msg_at(c, 3), "content"), "r2");
    json_t *tools = json_object_get(c, "tools");
    assert_int_equal(json_array_size(tools), 2);
    json_t *fn = json_object_get(json_array_get(tools, 0), "function");
    assert_string_equal(str_at(json_array_get(tools, 0), "type"), "function");
    assert_string_equal(str_at(fn, "name"), "f");
    assert_string_equal(str_at(fn, "description"), "d");
    assert_true(json_is_true(json_object_get(fn, "strict")));
    assert_non_null(json_object_get(fn, "parameters"));
    assert_string_equal(str_at(json_object_get(json_object_get(c, "tool_choice"), "function"), "name"), "g");
    assert_true(json_is_false(json_object_get(c, "parallel_tool_calls")));
    json_decref(c);
    /* The response echoes the tools as sent. */
    char obj[2048];
    snprintf(obj, sizeof obj, "{\"x\":1%s}", echo);
    json_t *o = json_loads(obj, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_array_size(json_object_get(o, "tools")), 2);
    assert_string_equal(str_at(json_object_get(o, "tool_choice"), "name"), "g");
    json_decref(o);
    free(echo);

    /* A call after assistant text joins that turn; string choices pass. */
    c = chat_of(api_responses_translate,
                "{\"input\":[{\"role\":\"assistant\",\"content\":\"t\"},{\"type\":\"function_call\",\"call_id\":"
                "\"c\",\"name\":\"f\",\"arguments\":\"{}\"}],\"tools\":[{\"type\":\"function\",\"name\":\"f\"}],"
                "\"tool_choice\":\"required\",\"parallel_tool_calls\":true}",
                &echo);
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 1);
    assert_string_equal(str_at(msg_at(c, 0), "content"), "t");
    assert_int_equal(json_array_size(json_object_get(msg_at(c, 0), "tool_calls")), 1);
    assert_string_equal(str_at(c, "tool_choice"), "required");
    assert_true(json_is_true(json_object_get(c, "parallel_tool_calls")));
    json_decref(c);
    free(echo);

    translate_fn f = api_responses_translate;
    expect_400(f, "{\"input\":\"x\",\"tools\":[{\"type\":\"web_search_preview\"}]}", "tools", "web_search_preview");
    expect_400(f, "{\"input\":\"x\",\"tools\":[{\"type\":\"computer_use_preview\"}]}", "tools", "not supported");
    expect_400(f, "{\"input\":\"x\",\"tools\":{}}", "tools", "list");
    expect_400(f, "{\"input\":\"x\",\"tools\":[{\"type\":\"function\"}]}", "tools", "tools[0].name");
    expect_400(f, "{\"input\":\"x\",\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"x\":1}]}", "tools",
               "tools[0].x");
    expect_400(f, "{\"input\":\"x\",\"tool_choice\":{\"type\":\"mcp\"}}", "tool_choice", "not supported");
    expect_400(f, "{\"input\":\"x\",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice", "tool_choice.name");
    expect_400(f, "{\"input\":\"x\",\"tool_choice\":3}", "tool_choice", "must be");
    expect_400(f, "{\"input\":\"x\",\"max_tool_calls\":0}", "max_tool_calls", "positive");
    expect_400(f, "{\"input\":\"x\",\"max_tool_calls\":2}", "max_tool_calls", "above 1");
    expect_400(f, "{\"input\":[{\"type\":\"function_call\",\"name\":\"f\",\"arguments\":\"{}\"}]}", "input",
               "input[0].call_id");
    expect_400(f, "{\"input\":[{\"type\":\"function_call\",\"call_id\":\"c\",\"arguments\":\"{}\"}]}", "input",
               "input[0].name");
    expect_400(f, "{\"input\":[{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"f\",\"arguments\":{}}]}",
               "input", "input[0].arguments");
    expect_400(f, "{\"input\":[{\"type\":\"function_call_output\",\"call_id\":\"c\"}]}", "input", "input[0].output");
    expect_400(f,
               "{\"input\":[{\"type\":\"function_call_output\",\"call_id\":\"c\",\"output\":[{\"type\":"
               "\"input_image\"}]}]}",
               "input", "input[0].output[0] has type 'input_image'");
    expect_400(f, "{\"input\":[{\"type\":3}]}", "input", "type must be a string");
}

static void test_messages_tools(void **state)
{
    (void)state;
    json_t *c = chat_of(
        api_messages_translate,
        "{\"max_tokens\":5,\"tools\":[{\"name\":\"f\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"},"
        "\"cache_control\":{\"type\":\"ephemeral\"}},{\"type\":\"custom\",\"name\":\"g\",\"input_schema\":{}}],"
        "\"tool_choice\":{\"type\":\"any\",\"disable_parallel_tool_use\":true},\"messages\":[{\"role\":\"user\","
        "\"content\":\"q\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"t\"},{\"type\":"
        "\"tool_use\",\"id\":\"u1\",\"name\":\"f\",\"input\":{\"a\":1}},{\"type\":\"tool_use\",\"id\":\"u2\",\"name\":"
        "\"g\",\"input\":{}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"u1\","
        "\"content\":\"r1\"},{\"type\":\"tool_result\",\"tool_use_id\":\"u2\",\"content\":[{\"type\":\"text\","
        "\"text\":\"r2\"}],\"is_error\":true},{\"type\":\"text\",\"text\":\"more\"}]}]}",
        NULL);
    /* user, assistant (text and two calls), two tool messages, user */
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 5);
    json_t *a = msg_at(c, 1);
    assert_string_equal(str_at(a, "content"), "t");
    json_t *calls = json_object_get(a, "tool_calls");
    assert_int_equal(json_array_size(calls), 2);
    assert_string_equal(str_at(json_array_get(calls, 0), "id"), "u1");
    assert_string_equal(str_at(json_object_get(json_array_get(calls, 0), "function"), "arguments"), "{\"a\":1}");
    assert_string_equal(str_at(msg_at(c, 2), "role"), "tool");
    assert_string_equal(str_at(msg_at(c, 2), "tool_call_id"), "u1");
    assert_string_equal(str_at(msg_at(c, 2), "content"), "r1");
    assert_string_equal(str_at(msg_at(c, 3), "content"), "Error: r2");
    assert_string_equal(str_at(msg_at(c, 4), "role"), "user");
    assert_string_equal(str_at(msg_at(c, 4), "content"), "more");
    json_t *tools = json_object_get(c, "tools");
    assert_int_equal(json_array_size(tools), 2);
    json_t *fn = json_object_get(json_array_get(tools, 0), "function");
    assert_string_equal(str_at(fn, "name"), "f");
    assert_string_equal(str_at(fn, "description"), "d");
    assert_non_null(json_object_get(fn, "parameters"));
    assert_null(json_object_get(fn, "cache_control"));
    assert_string_equal(str_at(c, "tool_choice"), "required");
    assert_true(json_is_false(json_object_get(c, "parallel_tool_calls")));
    json_decref(c);

    /* A turn of tool results alone adds no user message; tool and none. */
    c = chat_of(api_messages_translate,
                "{\"max_tokens\":5,\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":"
                "\"tool\",\"name\":\"f\"},\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\","
                "\"id\":\"u\",\"name\":\"f\",\"input\":{}}]},{\"role\":\"user\",\"content\":[{\"type\":"
                "\"tool_result\",\"tool_use_id\":\"u\"}]}]}",
                NULL);
    assert_int_equal(json_array_size(json_object_get(c, "messages")), 2);
    assert_true(json_is_null(json_object_get(msg_at(c, 0), "content")));
    assert_string_equal(str_at(msg_at(c, 1), "content"), "");
    assert_string_equal(str_at(json_object_get(json_object_get(c, "tool_choice"), "function"), "name"), "f");
    json_decref(c);
    c = chat_of(api_messages_translate,
                "{\"max_tokens\":5,\"tool_choice\":{\"type\":\"none\"},\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}]}",
                NULL);
    assert_string_equal(str_at(c, "tool_choice"), "none");
    json_decref(c);

    translate_fn f = api_messages_translate;
    const char *u = "\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    const char *t = "\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]";
    char b[512];
    snprintf(b, sizeof b, "{%s,\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"w\"}]}", u);
    expect_400(f, b, "tools", "web_search_20250305");
    snprintf(b, sizeof b, "{%s,\"tools\":[{\"type\":\"computer_20250124\",\"name\":\"c\"}]}", u);
    expect_400(f, b, "tools", "server tools");
    snprintf(b, sizeof b, "{%s,\"tools\":[{\"name\":\"f\"}]}", u);
    expect_400(f, b, "tools", "tools[0].input_schema");
    snprintf(b, sizeof b, "{%s,\"tools\":[{\"input_schema\":{}}]}", u);
    expect_400(f, b, "tools", "tools[0].name");
    snprintf(b, sizeof b, "{%s,\"tools\":[{\"name\":\"f\",\"input_schema\":{},\"zz\":1}]}", u);
    expect_400(f, b, "tools", "tools[0].zz");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":\"any\"}", u, t);
    expect_400(f, b, "tool_choice", "must be an object");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":{\"type\":\"tool\"}}", u, t);
    expect_400(f, b, "tool_choice", "needs a string 'name'");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":{\"type\":\"auto\",\"name\":\"f\"}}", u, t);
    expect_400(f, b, "tool_choice", "only with type");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":{\"type\":\"x\"}}", u, t);
    expect_400(f, b, "tool_choice", "unknown tool_choice type");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":{\"type\":\"any\",\"disable_parallel_tool_use\":1}}", u, t);
    expect_400(f, b, "tool_choice", "true or false");
    snprintf(b, sizeof b, "{%s,%s,\"tool_choice\":{\"type\":\"any\",\"q\":1}}", u, t);
    expect_400(f, b, "tool_choice", "tool_choice.q");
    expect_400(f,
               "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\",\"id\":\"u\","
               "\"name\":\"f\",\"input\":{}}]}]}",
               "messages", "assistant message");
    expect_400(f,
               "{\"max_tokens\":1,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_result\","
               "\"tool_use_id\":\"u\"}]},{\"role\":\"user\",\"content\":\"x\"}]}",
               "messages", "user message");
    expect_400(
        f,
        "{\"max_tokens\":1,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"u\","
        "\"name\":\"f\",\"input\":[]}]},{\"role\":\"user\",\"content\":\"x\"}]}",
        "messages", "messages[0].content[0] (tool_use)");
    expect_400(
        f,
        "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
        "\"u\",\"content\":[{\"type\":\"image\"}]}]}]}",
        "messages", "type 'image'");
    expect_400(
        f,
        "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
        "\"u\",\"is_error\":\"yes\"}]}]}",
        "messages", "is_error");
    expect_400(
        f,
        "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
        "\"u\"},{\"type\":\"image\"}]}]}",
        "messages", "messages[0].content");
}

/* The event names of a stream, in order, into names (at most cap). */
static int event_names(const char *s, const char **names, int cap)
{
    int k = 0;
    for (const char *p = s; (p = strstr(p, "event: ")) != NULL && k < cap; p += 7) {
        static char buf[32][48];
        const char *nl = strchr(p, '\n');
        snprintf(buf[k], sizeof buf[k], "%.*s", (int)(nl - p - 7), p + 7);
        names[k] = buf[k];
        k++;
    }
    return k;
}

static void test_render_calls(void **state)
{
    (void)state;
    json_t *calls = json_loads("[{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": 1}\",\"id\":\"call_ab\"},{\"name\":\"g\","
                               "\"arguments\":\"7\",\"id\":\"call_cd\"}]",
                               0, NULL);
    assert_non_null(calls);
    struct api_dialect_end end = {.text = "", .text_len = 0, .n_prompt = 4, .n_gen = 2, .calls = calls};
    struct lmd_buf b = {0};

    /* Responses: only function_call items when there is no text. */
    struct api_dialect_out d = {.id = "resp_1", .model_json = "m", .created = 5};
    api_responses_ops.body(&b, &d, &end);
    json_t *o = json_loadb(b.ptr, b.len, 0, NULL);
    assert_non_null(o);
    json_t *out = json_object_get(o, "output");
    assert_int_equal(json_array_size(out), 2);
    json_t *fc = json_array_get(out, 0);
    assert_string_equal(str_at(fc, "type"), "function_call");
    assert_string_equal(str_at(fc, "id"), "fc_ab");
    assert_string_equal(str_at(fc, "call_id"), "call_ab");
    assert_string_equal(str_at(fc, "name"), "f");
    assert_string_equal(str_at(fc, "arguments"), "{\"a\": 1}");
    assert_string_equal(str_at(fc, "status"), "completed");
    assert_string_equal(str_at(o, "status"), "completed");
    json_decref(o);
    /* With text first: the message item, then the calls. */
    struct api_dialect_end with_text = end;
    with_text.text = "hi";
    with_text.text_len = 2;
    b.len = 0;
    api_responses_ops.body(&b, &d, &with_text);
    o = json_loadb(b.ptr, b.len, 0, NULL);
    out = json_object_get(o, "output");
    assert_int_equal(json_array_size(out), 3);
    assert_string_equal(str_at(json_array_get(out, 0), "type"), "message");
    assert_string_equal(str_at(json_array_get(out, 2), "name"), "g");
    json_decref(o);
    /* Streamed, calls only: no message item at all. */
    b.len = 0;
    api_responses_ops.stream_begin(&b, &d, 4);
    api_responses_ops.stream_end(&b, &d, &end);
    static const char *const rs[] = {"response.created",
                                     "response.in_progress",
                                     "response.output_item.added",
                                     "response.function_call_arguments.delta",
                                     "response.function_call_arguments.done",
                                     "response.output_item.done",
                                     "response.output_item.added",
                                     "response.function_call_arguments.delta",
                                     "response.function_call_arguments.done",
                                     "response.output_item.done",
                                     "response.completed"};
    assert_int_equal(check_events(b.ptr, rs, 11), 11);
    assert_non_null(strstr(b.ptr, "\"output_index\":1,\"arguments\":\"7\""));
    /* Streamed text, then calls: the message item is index 0. */
    struct api_dialect_out d2 = {.id = "resp_2", .model_json = "m"};
    b.len = 0;
    api_responses_ops.stream_begin(&b, &d2, 4);
    api_responses_ops.stream_text(&b, &d2, "hi", 2);
    api_responses_ops.stream_end(&b, &d2, &with_text);
    const char *names[32];
    int n = event_names(b.ptr, names, 32);
    assert_int_equal(n, 2 + 3 + 3 + 8 + 1);
    assert_string_equal(names[2], "response.output_item.added");
    assert_string_equal(names[8], "response.output_item.added");
    assert_non_null(strstr(b.ptr, "\"output_index\":2,\"arguments\":\"7\""));

    /* Messages: tool_use blocks with their input as an object. */
    struct api_dialect_out m = {.id = "msg_1", .model_json = "m"};
    b.len = 0;
    api_messages_ops.body(&b, &m, &end);
    o = json_loadb(b.ptr, b.len, 0, NULL);
    assert_non_null(o);
    assert_string_equal(str_at(o, "stop_reason"), "tool_use");
    json_t *content = json_object_get(o, "content");
    assert_int_equal(json_array_size(content), 2);
    json_t *tu = json_array_get(content, 0);
    assert_string_equal(str_at(tu, "type"), "tool_use");
    assert_string_equal(str_at(tu, "id"), "toolu_ab");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(tu, "input"), "a")), 1);
    /* A non-object argument text is kept under "arguments". */
    assert_string_equal(str_at(json_object_get(json_array_get(content, 1), "input"), "arguments"), "7");
    json_decref(o);
    b.len = 0;
    api_messages_ops.stream_begin(&b, &m, 3);
    api_messages_ops.stream_end(&b, &m, &end);
    static const char *const ms[] = {"message_start",       "ping",
                                     "content_block_start", "content_block_delta",
                                     "content_block_stop",  "content_block_start",
                                     "content_block_delta", "content_block_stop",
                                     "message_delta",       "message_stop"};
    assert_int_equal(check_events(b.ptr, ms, 10), 10);
    assert_non_null(strstr(b.ptr, "\"partial_json\":\"{\\\"a\\\":1}\""));
    assert_non_null(strstr(b.ptr, "\"stop_reason\":\"tool_use\""));
    /* Streamed text first: the text block is index 0, the calls 1 and 2. */
    struct api_dialect_out m2 = {.id = "msg_2", .model_json = "m"};
    b.len = 0;
    api_messages_ops.stream_begin(&b, &m2, 3);
    api_messages_ops.stream_text(&b, &m2, "hi", 2);
    api_messages_ops.stream_end(&b, &m2, &with_text);
    assert_non_null(strstr(b.ptr, "\"index\":2,\"content_block\":{\"type\":\"tool_use\""));
    lmd_buf_free(&b);
    json_decref(calls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_responses_translation), cmocka_unit_test(test_responses_refusals),
        cmocka_unit_test(test_messages_translation),  cmocka_unit_test(test_messages_refusals),
        cmocka_unit_test(test_messages_error_shape),  cmocka_unit_test(test_render),
        cmocka_unit_test(test_responses_tools),       cmocka_unit_test(test_messages_tools),
        cmocka_unit_test(test_render_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
