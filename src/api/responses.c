/*
 * OpenAI's Responses API (POST /v1/responses) on top of the chat path: the
 * request is translated into the chat completions body that means the same
 * thing (input items become messages, instructions the system message,
 * text.format the response_format), which routes.c then runs exactly as a
 * chat request — same template, admission, classes, deadlines, metrics and
 * cancellation. Only the answer differs: a "response" object, or the typed
 * SSE events (response.created … response.completed) that the openai
 * client's responses.create(stream=True) and responses.stream() read.
 *
 * lmd stores nothing: `store` is accepted and answered as false, and
 * previous_response_id or conversation (which would need a stored
 * conversation) are refused. Tools, images, files and reasoning are refused
 * with a 400 that names the field until the engine can honour them.
 *
 * Not here: generation (call.c), the chat template (routes.c).
 */
#include "api/api_int.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

#define BAD(field, ...) api_error_set(e, 400, "invalid_request_error", field, NULL, __VA_ARGS__)
#define UNSUP(field, ...) api_error_set(e, 400, "invalid_request_error", field, "unsupported_parameter", __VA_ARGS__)
#define OOM() api_error_set(e, 500, "server_error", NULL, NULL, "out of memory")
#define PUTS(b, lit) lmd_buf_append((b), (lit), strlen(lit))

/* lmd's own sampling and scheduling fields, which mean the same in every
 * dialect and go to the chat request as they are. */
static const char *const passthrough[] = {
    "seed",     "top_k",      "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "priority", "cache_salt", "stop",  "ignore_eos",         "grammar"};

static bool given(json_t *v) { return v && !json_is_null(v); }

/* A message item's content: a string or a list of text parts. */
static json_t *item_text(json_t *content, size_t i, struct api_error *e)
{
    static const char *const types[] = {"input_text", "output_text", "text", NULL};
    char what[48];
    snprintf(what, sizeof what, "input[%zu].content", i);
    return api__text_parts(content, "input", what, types, "only text parts (input_text, output_text) are supported", e);
}

static int translate_input(json_t *root, json_t *msgs, struct api_error *e)
{
    json_t *ins = json_object_get(root, "instructions");
    if (given(ins)) {
        if (!json_is_string(ins))
            return BAD("instructions", "'instructions' must be a string");
        if (api__add_msg(msgs, "system", json_incref(ins), e))
            return LMD_EINVAL;
    }
    json_t *in = json_object_get(root, "input");
    if (!given(in))
        return BAD("input", "'input' is required (a string or a list of message items)");
    if (json_is_string(in))
        return api__add_msg(msgs, "user", json_incref(in), e);
    if (!json_is_array(in) || json_array_size(in) == 0)
        return BAD("input", "'input' must be a string or a non-empty list of message items");
    size_t i;
    json_t *item;
    json_array_foreach(in, i, item)
    {
        if (!json_is_object(item))
            return BAD("input", "input[%zu] must be an object", i);
        json_t *ty = json_object_get(item, "type");
        if (given(ty) && (!json_is_string(ty) || strcmp(json_string_value(ty), "message") != 0))
            return UNSUP("input", "input[%zu] has type '%.40s': only message items (role and content) are supported", i,
                         json_is_string(ty) ? json_string_value(ty) : "?");
        json_t *role = json_object_get(item, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        if (strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "system") && strcmp(r, "developer"))
            return BAD("input", "input[%zu].role must be one of user, assistant, system, developer", i);
        json_t *text = item_text(json_object_get(item, "content"), i, e);
        if (!text || api__add_msg(msgs, strcmp(r, "developer") ? r : "system", text, e))
            return LMD_EINVAL;
    }
    return 0;
}

/* text.format -> response_format (a new reference in *rf, or NULL). */
static int translate_format(json_t *root, json_t **rf, struct api_error *e)
{
    *rf = NULL;
    json_t *text = json_object_get(root, "text");
    if (!given(text))
        return 0;
    if (!json_is_object(text))
        return BAD("text", "'text' must be an object");
    const char *key;
    json_t *v;
    json_object_foreach(text, key, v)
    {
        if (strcmp(key, "format") &&
            !(strcmp(key, "verbosity") == 0 &&
              (json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "medium")))))
            return UNSUP("text", "'text.%.40s' is not supported (only 'text.format')", key);
    }
    json_t *f = json_object_get(text, "format");
    if (!given(f))
        return 0;
    json_t *ty = json_is_object(f) ? json_object_get(f, "type") : NULL;
    if (!json_is_string(ty))
        return BAD("text", "'text.format' must be an object with a string 'type'");
    const char *t = json_string_value(ty);
    if (!strcmp(t, "text") || !strcmp(t, "json_object")) {
        if (json_object_size(f) != 1)
            return BAD("text", "'text.format' of type '%s' takes no other field", t);
        *rf = json_pack("{s:s}", "type", t);
        return *rf ? 0 : OOM();
    }
    if (strcmp(t, "json_schema"))
        return BAD("text", "unknown text.format type '%.40s' (text, json_object or json_schema)", t);
    /* Responses spell json_schema flat: its members sit beside "type". */
    json_t *js = json_object();
    json_object_foreach(f, key, v)
    {
        if (!strcmp(key, "type"))
            continue;
        if (strcmp(key, "name") && strcmp(key, "schema") && strcmp(key, "strict") && strcmp(key, "description")) {
            json_decref(js);
            return BAD("text", "unknown field 'text.format.%.40s' (name, description, schema, strict)", key);
        }
        json_object_set(js, key, v);
    }
    if (!json_object_get(js, "name") || !json_object_get(js, "schema")) {
        json_decref(js);
        return BAD("text", "'text.format' of type 'json_schema' needs 'name' and 'schema'");
    }
    *rf = json_pack("{s:s, s:o}", "type", "json_schema", "json_schema", js);
    return *rf ? 0 : OOM();
}

/* Fields whose meaning lmd cannot give: refused, never dropped. */
static int refuse(json_t *root, struct api_error *e)
{
    json_t *v = json_object_get(root, "previous_response_id");
    if (given(v))
        return UNSUP("previous_response_id",
                     "'previous_response_id' cannot be served: lmd does not store responses; send the whole "
                     "conversation in 'input'");
    if (given(json_object_get(root, "conversation")))
        return UNSUP("conversation", "'conversation' cannot be served: lmd does not store conversations; send the "
                                     "whole conversation in 'input'");
    v = json_object_get(root, "tools");
    if (given(v) && !(json_is_array(v) && json_array_size(v) == 0))
        return UNSUP("tools", "'tools' is not supported on /v1/responses yet: the model's output would not be "
                              "parsed into tool calls");
    v = json_object_get(root, "tool_choice");
    if (given(v) &&
        !(json_is_string(v) && (!strcmp(json_string_value(v), "none") || !strcmp(json_string_value(v), "auto"))))
        return UNSUP("tool_choice", "'tool_choice' other than \"none\" or \"auto\" is not supported (no tools)");
    v = json_object_get(root, "background");
    if (given(v) && !json_is_false(v))
        return UNSUP("background", "'background': true is not supported: lmd does not store responses to poll");
    v = json_object_get(root, "include");
    if (given(v) && !(json_is_array(v) && json_array_size(v) == 0))
        return UNSUP("include", "'include' is not supported (no extra output items are produced)");
    v = json_object_get(root, "reasoning");
    if (given(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return UNSUP("reasoning", "'reasoning' is not supported: the model's output has no separate reasoning");
    v = json_object_get(root, "top_logprobs");
    if (given(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return UNSUP("top_logprobs", "'top_logprobs' is not supported on /v1/responses");
    v = json_object_get(root, "truncation");
    if (given(v) && !(json_is_string(v) && !strcmp(json_string_value(v), "disabled")))
        return UNSUP("truncation", "'truncation' other than \"disabled\" is not supported: a conversation that does "
                                   "not fit the context is refused, never cut");
    if (given(json_object_get(root, "prompt")))
        return UNSUP("prompt", "'prompt' (a stored prompt template) is not supported: lmd stores no prompts");
    v = json_object_get(root, "store");
    if (given(v) && !json_is_boolean(v))
        return BAD("store", "'store' must be true or false");
    return 0;
}

static int translate(json_t *root, json_t *chat, struct lmd_buf *echo, struct api_error *e)
{
    if (refuse(root, e))
        return LMD_EINVAL;
    json_t *msgs = json_array();
    if (!msgs || json_object_set_new(chat, "messages", msgs))
        return OOM();
    if (translate_input(root, msgs, e))
        return LMD_EINVAL;
    json_t *rf = NULL;
    if (translate_format(root, &rf, e))
        return LMD_EINVAL;
    if (rf)
        json_object_set_new(chat, "response_format", rf);
    json_t *v = json_object_get(root, "model");
    if (given(v))
        json_object_set(chat, "model", v);
    v = json_object_get(root, "max_output_tokens");
    if (given(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
            return BAD("max_output_tokens", "'max_output_tokens' must be an integer in [1, %d]", 1 << 24);
        json_object_set(chat, "max_tokens", v);
    }
    v = json_object_get(root, "stream");
    if (given(v)) {
        if (!json_is_boolean(v))
            return BAD("stream", "'stream' must be true or false");
        json_object_set(chat, "stream", v);
    }
    static const char *const same[] = {"temperature", "top_p"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        if (given(json_object_get(root, same[i])))
            json_object_set(chat, same[i], json_object_get(root, same[i]));
    for (size_t i = 0; i < sizeof passthrough / sizeof passthrough[0]; i++)
        if (given(json_object_get(root, passthrough[i])))
            json_object_set(chat, passthrough[i], json_object_get(root, passthrough[i]));

    /* What the response object echoes back. */
    json_t *md = json_object_get(root, "metadata");
    if (given(md)) {
        if (!json_is_object(md) || json_object_size(md) > 16)
            return BAD("metadata", "'metadata' must be an object of at most 16 string values");
        const char *key;
        json_object_foreach(md, key, v)
        {
            if (!json_is_string(v) || strlen(key) > 64 || json_string_length(v) > 512)
                return BAD("metadata", "'metadata.%.64s' must be a string of at most 512 characters (keys at most 64)",
                           key);
        }
    }
    json_t *o =
        json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?}", "instructions", json_object_get(root, "instructions"),
                  "max_output_tokens", json_object_get(root, "max_output_tokens"), "temperature",
                  json_object_get(root, "temperature"), "top_p", json_object_get(root, "top_p"), "metadata", md);
    if (!o)
        return OOM();
    if (!given(json_object_get(o, "metadata")))
        json_object_set_new(o, "metadata", json_object());
    if (!given(json_object_get(o, "temperature")))
        json_object_set_new(o, "temperature", json_real(1.0));
    if (!given(json_object_get(o, "top_p")))
        json_object_set_new(o, "top_p", json_real(1.0));
    json_t *fmt = rf ? json_incref(rf) : json_pack("{s:s}", "type", "text");
    json_object_set_new(o, "text", json_pack("{s:o*}", "format", fmt));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    /* "{…}" -> ",…": members to splice into the response object. */
    if (!s || lmd_buf_printf(echo, ",%.*s", (int)(strlen(s) - 2), s + 1)) {
        free(s);
        return OOM();
    }
    free(s);
    return 0;
}

int api_responses_translate(const char *body, size_t len, char **chat, char **echo, struct api_error *e)
{
    *chat = *echo = NULL;
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return BAD(NULL, "the body must be a JSON object");
    }
    json_t *c = json_object();
    struct lmd_buf eb = {0};
    int rc = c ? translate(root, c, &eb, e) : OOM();
    if (rc == 0) {
        *chat = json_dumps(c, JSON_COMPACT);
        *echo = eb.ptr;
        if (!*chat) {
            rc = OOM();
            free(*echo);
            *echo = NULL;
        }
    } else {
        lmd_buf_free(&eb);
    }
    json_decref(c);
    json_decref(root);
    return rc;
}

/* ---- rendering ----------------------------------------------------------- */

/* The message item's id: the response's, under the item prefix. */
static void item_id(struct lmd_buf *b, const struct api_dialect_out *d)
{
    const char *u = strchr(d->id, '_');
    lmd_buf_printf(b, "msg_%s", u ? u + 1 : d->id);
}

/* The output_text part; text NULL = empty. */
static void put_part(struct lmd_buf *b, const char *text, size_t n)
{
    PUTS(b, "{\"type\":\"output_text\",\"text\":\"");
    api_buf_json_escape(b, text ? text : "", text ? n : 0);
    PUTS(b, "\",\"annotations\":[],\"logprobs\":[]}");
}

static void put_item(struct lmd_buf *b, const struct api_dialect_out *d, const char *status, bool with_part,
                     const char *text, size_t n)
{
    PUTS(b, "{\"type\":\"message\",\"id\":\"");
    item_id(b, d);
    lmd_buf_printf(b, "\",\"status\":\"%s\",\"role\":\"assistant\",\"content\":[", status);
    if (with_part)
        put_part(b, text, n);
    PUTS(b, "]}");
}

/* The response object; end NULL = still in progress (no output, no usage). */
static void put_response(struct lmd_buf *b, const struct api_dialect_out *d, const char *status,
                         const struct api_dialect_end *end, const struct api_error *err)
{
    lmd_buf_printf(b, "{\"id\":\"%s\",\"object\":\"response\",\"created_at\":%ld,\"status\":\"%s\",\"model\":\"%s\"",
                   d->id, d->created, status, d->model_json);
    if (err) {
        PUTS(b, ",\"error\":{\"code\":\"");
        api_buf_json_escape(b, err->code ? err->code : "server_error", strlen(err->code ? err->code : "server_error"));
        PUTS(b, "\",\"message\":\"");
        api_buf_json_escape(b, err->msg, strlen(err->msg));
        PUTS(b, "\"}");
    } else {
        PUTS(b, ",\"error\":null");
    }
    if (end && end->length)
        PUTS(b, ",\"incomplete_details\":{\"reason\":\"max_output_tokens\"}");
    else
        PUTS(b, ",\"incomplete_details\":null");
    PUTS(b, ",\"output\":[");
    if (end)
        put_item(b, d, end->length ? "incomplete" : "completed", true, end->text, end->text_len);
    PUTS(b, "],\"parallel_tool_calls\":false,\"tool_choice\":\"none\",\"tools\":[],\"store\":false,"
            "\"truncation\":\"disabled\",\"previous_response_id\":null,\"reasoning\":null");
    if (d->echo)
        lmd_buf_append(b, d->echo, strlen(d->echo));
    if (end)
        lmd_buf_printf(b,
                       ",\"usage\":{\"input_tokens\":%d,\"input_tokens_details\":{\"cached_tokens\":0},"
                       "\"output_tokens\":%d,\"output_tokens_details\":{\"reasoning_tokens\":0},"
                       "\"total_tokens\":%d}}",
                       end->n_prompt, end->n_gen, end->n_prompt + end->n_gen);
    else
        PUTS(b, ",\"usage\":null}");
}

/* "event: T\ndata: {"type":"T","sequence_number":N" — the caller adds the
 * rest and closes with event_close. */
static void event_open(struct lmd_buf *b, struct api_dialect_out *d, const char *type)
{
    lmd_buf_printf(b, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%d", type, type, d->seq++);
}

static void event_close(struct lmd_buf *b) { PUTS(b, "}\n\n"); }

/* The fields locating the one text part: item, output and content index. */
static void put_loc(struct lmd_buf *b, const struct api_dialect_out *d)
{
    PUTS(b, ",\"item_id\":\"");
    item_id(b, d);
    PUTS(b, "\",\"output_index\":0,\"content_index\":0");
}

static void r_stream_begin(struct lmd_buf *b, struct api_dialect_out *d, int n_prompt)
{
    (void)n_prompt;
    static const char *const opening[] = {"response.created", "response.in_progress"};
    for (int i = 0; i < 2; i++) {
        event_open(b, d, opening[i]);
        PUTS(b, ",\"response\":");
        put_response(b, d, "in_progress", NULL, NULL);
        event_close(b);
    }
    event_open(b, d, "response.output_item.added");
    PUTS(b, ",\"output_index\":0,\"item\":");
    put_item(b, d, "in_progress", false, NULL, 0);
    event_close(b);
    event_open(b, d, "response.content_part.added");
    put_loc(b, d);
    PUTS(b, ",\"part\":");
    put_part(b, NULL, 0);
    event_close(b);
}

static void r_stream_text(struct lmd_buf *b, struct api_dialect_out *d, const char *s, size_t n)
{
    event_open(b, d, "response.output_text.delta");
    put_loc(b, d);
    PUTS(b, ",\"delta\":\"");
    api_buf_json_escape(b, s, n);
    PUTS(b, "\",\"logprobs\":[]");
    event_close(b);
}

static void r_stream_end(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    event_open(b, d, "response.output_text.done");
    put_loc(b, d);
    PUTS(b, ",\"text\":\"");
    api_buf_json_escape(b, end->text, end->text_len);
    PUTS(b, "\",\"logprobs\":[]");
    event_close(b);
    event_open(b, d, "response.content_part.done");
    put_loc(b, d);
    PUTS(b, ",\"part\":");
    put_part(b, end->text, end->text_len);
    event_close(b);
    event_open(b, d, "response.output_item.done");
    PUTS(b, ",\"output_index\":0,\"item\":");
    put_item(b, d, end->length ? "incomplete" : "completed", true, end->text, end->text_len);
    event_close(b);
    const char *last = end->length ? "response.incomplete" : "response.completed";
    event_open(b, d, last);
    PUTS(b, ",\"response\":");
    put_response(b, d, end->length ? "incomplete" : "completed", end, NULL);
    event_close(b);
}

static void r_body(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    put_response(b, d, end->length ? "incomplete" : "completed", end, NULL);
}

/* A failure after the stream began: an error event, then response.failed. */
static void r_stream_error(struct lmd_buf *b, struct api_dialect_out *d, const struct api_error *e)
{
    event_open(b, d, "error");
    PUTS(b, ",\"code\":");
    if (e->code) {
        PUTS(b, "\"");
        api_buf_json_escape(b, e->code, strlen(e->code));
        PUTS(b, "\"");
    } else {
        PUTS(b, "null");
    }
    PUTS(b, ",\"message\":\"");
    api_buf_json_escape(b, e->msg, strlen(e->msg));
    PUTS(b, "\",\"param\":null");
    event_close(b);
    event_open(b, d, "response.failed");
    PUTS(b, ",\"response\":");
    put_response(b, d, "failed", NULL, e);
    event_close(b);
}

const struct api_dialect_ops api_responses_ops = {
    .path = "/v1/responses",
    .stream_begin = r_stream_begin,
    .stream_text = r_stream_text,
    .stream_end = r_stream_end,
    .body = r_body,
    .stream_error = r_stream_error,
};
