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
 * conversation) are refused. Function tools become the chat request's
 * tools, function_call and function_call_output items its assistant
 * tool_calls and tool messages, and the calls the chat path parses out of
 * the model's text come back as function_call items. Hosted tools (web
 * search, file search, computer use, MCP…), images, files and reasoning are
 * refused with a 400 that names the field.
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

/* A message item's content (or a function_call_output's output): a string
 * or a list of text parts. */
static json_t *item_text(json_t *content, size_t i, const char *member, struct api_error *e)
{
    static const char *const types[] = {"input_text", "output_text", "text", NULL};
    char what[48];
    snprintf(what, sizeof what, "input[%zu].%s", i, member);
    return api__text_parts(content, "input", what, types, "only text parts (input_text, output_text) are supported", e);
}

/* A string member of an input item, or NULL having set e. */
static const char *item_str(json_t *item, const char *key, size_t i, struct api_error *e)
{
    json_t *v = json_object_get(item, key);
    if (!json_is_string(v) || json_string_length(v) == 0) {
        BAD("input", "input[%zu].%s must be a non-empty string", i, key);
        return NULL;
    }
    return json_string_value(v);
}

/* A function_call item becomes an assistant tool call (joining the
 * assistant message just before it, as the chat history spells several
 * calls of one turn); a function_call_output item a tool message. */
static int translate_call_item(json_t *item, const char *type, size_t i, json_t *msgs, struct api_error *e)
{
    const char *call_id = item_str(item, "call_id", i, e);
    if (!call_id)
        return LMD_EINVAL;
    if (!strcmp(type, "function_call_output")) {
        json_t *out = json_object_get(item, "output");
        if (!given(out))
            return BAD("input", "input[%zu].output is required", i);
        json_t *text = item_text(out, i, "output", e);
        json_t *m =
            text ? json_pack("{s:s, s:s, s:o}", "role", "tool", "tool_call_id", call_id, "content", text) : NULL;
        if (!text)
            return LMD_EINVAL;
        if (!m || json_array_append_new(msgs, m))
            return OOM();
        return 0;
    }
    const char *name = item_str(item, "name", i, e);
    if (!name)
        return LMD_EINVAL;
    json_t *args = json_object_get(item, "arguments");
    if (!json_is_string(args))
        return BAD("input", "input[%zu].arguments must be a string (the arguments as JSON text)", i);
    json_t *call = json_pack("{s:s, s:s, s:{s:s, s:O}}", "id", call_id, "type", "function", "function", "name", name,
                             "arguments", args);
    if (!call)
        return OOM();
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    json_t *role = json_object_get(last, "role");
    if (!(json_is_string(role) && !strcmp(json_string_value(role), "assistant"))) {
        last = json_pack("{s:s, s:n}", "role", "assistant", "content");
        if (!last || json_array_append_new(msgs, last)) {
            json_decref(call);
            return OOM();
        }
    }
    json_t *calls = json_object_get(last, "tool_calls");
    if (!calls) {
        calls = json_array();
        if (!calls || json_object_set_new(last, "tool_calls", calls)) {
            json_decref(call);
            return OOM();
        }
    }
    return json_array_append_new(calls, call) ? OOM() : 0;
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
        if (given(ty) && !json_is_string(ty))
            return BAD("input", "input[%zu].type must be a string", i);
        const char *tys = given(ty) ? json_string_value(ty) : "message";
        if (!strcmp(tys, "function_call") || !strcmp(tys, "function_call_output")) {
            if (translate_call_item(item, tys, i, msgs, e))
                return LMD_EINVAL;
            continue;
        }
        if (strcmp(tys, "message") != 0)
            return UNSUP("input",
                         "input[%zu] has type '%.40s': only message, function_call and function_call_output items "
                         "are supported",
                         i, tys);
        json_t *role = json_object_get(item, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        if (strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "system") && strcmp(r, "developer"))
            return BAD("input", "input[%zu].role must be one of user, assistant, system, developer", i);
        json_t *text = item_text(json_object_get(item, "content"), i, "content", e);
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

/* Responses' flat function tools -> chat's {"type":"function","function":{…}};
 * tool_choice's named form likewise; parallel_tool_calls as it is. Shapes
 * the chat path checks too (names, schemas, a choice naming an absent
 * tool) are left to it, whose messages name the same fields. */
static int translate_tools(json_t *root, json_t *chat, struct api_error *e)
{
    json_t *v = json_object_get(root, "tools");
    if (given(v)) {
        if (!json_is_array(v))
            return BAD("tools", "'tools' must be a list of function tools");
        json_t *tools = json_array();
        if (!tools || json_object_set_new(chat, "tools", tools))
            return OOM();
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t)
        {
            json_t *ty = json_object_get(t, "type");
            if (!json_is_object(t) || !json_is_string(ty))
                return BAD("tools", "tools[%zu] must be an object with a string 'type'", i);
            if (strcmp(json_string_value(ty), "function"))
                return UNSUP("tools",
                             "tools[%zu] has type '%.40s', which is not supported: lmd runs no hosted tools (web "
                             "search, file search, computer use, code interpreter, MCP…); only 'function' tools",
                             i, json_string_value(ty));
            json_t *fn = json_object();
            if (!fn || json_array_append_new(tools, json_pack("{s:s, s:o}", "type", "function", "function", fn)))
                return OOM();
            const char *key;
            json_t *x;
            json_object_foreach(t, key, x)
            {
                if (!strcmp(key, "type"))
                    continue;
                if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "parameters") &&
                    strcmp(key, "strict"))
                    return BAD("tools", "unknown field 'tools[%zu].%.40s' (name, description, parameters, strict)", i,
                               key);
                json_object_set(fn, key, x);
            }
            if (!json_is_string(json_object_get(fn, "name")))
                return BAD("tools", "tools[%zu].name must be a string", i);
        }
    }
    v = json_object_get(root, "tool_choice");
    if (given(v)) {
        if (json_is_string(v)) {
            json_object_set(chat, "tool_choice", v);
        } else {
            json_t *ty = json_object_get(v, "type"), *name = json_object_get(v, "name");
            if (!json_is_object(v) || !json_is_string(ty))
                return BAD("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
                                          "\"function\", \"name\": …}");
            if (strcmp(json_string_value(ty), "function"))
                return UNSUP("tool_choice",
                             "'tool_choice' of type '%.40s' is not supported (only function tools are served)",
                             json_string_value(ty));
            if (!json_is_string(name))
                return BAD("tool_choice", "'tool_choice.name' must be a string");
            json_object_set_new(chat, "tool_choice",
                                json_pack("{s:s, s:{s:O}}", "type", "function", "function", "name", name));
        }
    }
    v = json_object_get(root, "parallel_tool_calls");
    if (given(v))
        json_object_set(chat, "parallel_tool_calls", v);
    /* One call per answer is what lmd can bound: parallel_tool_calls false. */
    v = json_object_get(root, "max_tool_calls");
    if (given(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return BAD("max_tool_calls", "'max_tool_calls' must be a positive integer");
        if (json_integer_value(v) > 1)
            return UNSUP("max_tool_calls", "'max_tool_calls' above 1 is not supported: lmd bounds the calls of an "
                                           "answer only to one (send 1, or 'parallel_tool_calls': false)");
        json_object_set_new(chat, "parallel_tool_calls", json_false());
    }
    return 0;
}

static int translate(json_t *root, json_t *chat, struct lmd_buf *echo, struct api_error *e)
{
    if (refuse(root, e) || translate_tools(root, chat, e))
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
    /* The tools as the client sent them, and the choices in force. */
    v = json_object_get(root, "tools");
    json_object_set_new(o, "tools", given(v) ? json_incref(v) : json_array());
    v = json_object_get(root, "tool_choice");
    json_object_set_new(o, "tool_choice", given(v) ? json_incref(v) : json_string("auto"));
    v = json_object_get(root, "parallel_tool_calls");
    json_object_set_new(o, "parallel_tool_calls", given(v) ? json_incref(v) : json_true());
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

/* Whether the output holds a message item: unless the answer is only tool
 * calls (a streamed one whose text item was opened keeps it). */
static bool has_message(const struct api_dialect_out *d, const struct api_dialect_end *end)
{
    return !end->calls || end->text_len || d->opened;
}

static void put_str(struct lmd_buf *b, json_t *s)
{
    PUTS(b, "\"");
    api_buf_json_escape(b, json_string_value(s), json_string_length(s));
    PUTS(b, "\"");
}

/* A function_call item's id: "fc_" and the call id's digits. */
static void fcall_id(struct lmd_buf *b, json_t *call)
{
    const char *id = json_string_value(json_object_get(call, "id"));
    const char *u = id ? strchr(id, '_') : NULL;
    lmd_buf_printf(b, "fc_%s", u ? u + 1 : "0");
}

/* A function_call item; with_args false = arguments "" (not yet sent). */
static void put_fcall(struct lmd_buf *b, json_t *call, const char *status, bool with_args)
{
    PUTS(b, "{\"type\":\"function_call\",\"id\":\"");
    fcall_id(b, call);
    PUTS(b, "\",\"call_id\":");
    put_str(b, json_object_get(call, "id"));
    PUTS(b, ",\"name\":");
    put_str(b, json_object_get(call, "name"));
    PUTS(b, ",\"arguments\":");
    if (with_args)
        put_str(b, json_object_get(call, "arguments"));
    else
        PUTS(b, "\"\"");
    lmd_buf_printf(b, ",\"status\":\"%s\"}", status);
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
    if (end) {
        bool msg = has_message(d, end);
        if (msg)
            put_item(b, d, end->length ? "incomplete" : "completed", true, end->text, end->text_len);
        size_t k;
        json_t *call;
        json_array_foreach((json_t *)end->calls, k, call)
        {
            if (msg || k)
                PUTS(b, ",");
            put_fcall(b, call, "completed", true);
        }
    }
    PUTS(b, "],\"store\":false,\"truncation\":\"disabled\",\"previous_response_id\":null,\"reasoning\":null");
    if (d->echo)
        lmd_buf_append(b, d->echo, strlen(d->echo));
    else
        PUTS(b, ",\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[]");
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
}

/* The message item and its text part open on the first text, so that an
 * answer that is only tool calls has no empty message item. */
static void open_text(struct lmd_buf *b, struct api_dialect_out *d)
{
    if (d->opened)
        return;
    d->opened = true;
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
    open_text(b, d);
    event_open(b, d, "response.output_text.delta");
    put_loc(b, d);
    PUTS(b, ",\"delta\":\"");
    api_buf_json_escape(b, s, n);
    PUTS(b, "\",\"logprobs\":[]");
    event_close(b);
}

static void end_text(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end);

/* A function_call item's events: added, its arguments in one delta, done. */
static void stream_fcall(struct lmd_buf *b, struct api_dialect_out *d, json_t *call, int index)
{
    event_open(b, d, "response.output_item.added");
    lmd_buf_printf(b, ",\"output_index\":%d,\"item\":", index);
    put_fcall(b, call, "in_progress", false);
    event_close(b);
    static const char *const args[] = {"response.function_call_arguments.delta",
                                       "response.function_call_arguments.done"};
    for (int i = 0; i < 2; i++) {
        event_open(b, d, args[i]);
        PUTS(b, ",\"item_id\":\"");
        fcall_id(b, call);
        lmd_buf_printf(b, "\",\"output_index\":%d,\"%s\":", index, i ? "arguments" : "delta");
        put_str(b, json_object_get(call, "arguments"));
        if (i) {
            PUTS(b, ",\"name\":");
            put_str(b, json_object_get(call, "name"));
        }
        event_close(b);
    }
    event_open(b, d, "response.output_item.done");
    lmd_buf_printf(b, ",\"output_index\":%d,\"item\":", index);
    put_fcall(b, call, "completed", true);
    event_close(b);
}

static void r_stream_end(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    bool msg = has_message(d, end);
    if (msg)
        end_text(b, d, end);
    size_t k;
    json_t *call;
    json_array_foreach((json_t *)end->calls, k, call) stream_fcall(b, d, call, (int)k + (msg ? 1 : 0));
    const char *last = end->length ? "response.incomplete" : "response.completed";
    event_open(b, d, last);
    PUTS(b, ",\"response\":");
    put_response(b, d, end->length ? "incomplete" : "completed", end, NULL);
    event_close(b);
}

/* The message item's closing events (opening it first when no text came). */
static void end_text(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    open_text(b, d);
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
