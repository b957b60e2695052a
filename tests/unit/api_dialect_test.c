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
               "messages", "type 'tool_result'");
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
    static const char *const ms[] = {"message_start",      "content_block_start", "ping",        "content_block_delta",
                                     "content_block_stop", "message_delta",       "message_stop"};
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_responses_translation), cmocka_unit_test(test_responses_refusals),
        cmocka_unit_test(test_messages_translation),  cmocka_unit_test(test_messages_refusals),
        cmocka_unit_test(test_messages_error_shape),  cmocka_unit_test(test_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
