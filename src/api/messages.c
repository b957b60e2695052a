/*
 * Anthropic's Messages API (POST /v1/messages) on top of the chat path: the
 * request is translated into the chat completions body that means the same
 * thing (system and text blocks become chat messages, stop_sequences the
 * stop strings), which routes.c then runs exactly as a chat request — same
 * template, admission, classes, deadlines, metrics and cancellation. The
 * answer is a "message" object, or Anthropic's SSE events (message_start …
 * message_stop), and errors take Anthropic's shape
 * {"type":"error","error":{"type","message"}}.
 *
 * Client tools become the chat request's tools, tool_use and tool_result
 * blocks its assistant tool_calls and tool messages, and the calls the chat
 * path parses out of the model's text come back as tool_use blocks with
 * stop_reason "tool_use".
 *
 * Refused with a 400 that names the field, rather than dropped: server
 * tools (web search, bash, computer use, text editor…), other non-text
 * content blocks, extended thinking, and a final assistant turn (prefill),
 * which the chat template would close instead of continuing.
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

/* lmd's own fields, which mean the same here and go on as they are. */
static const char *const passthrough[] = {
    "seed",     "min_p",      "repetition_penalty", "presence_penalty", "frequency_penalty",
    "priority", "cache_salt", "ignore_eos",         "grammar"};

static bool given(json_t *v) { return v && !json_is_null(v); }

/* A system prompt or message content: a string or a list of text blocks. */
static json_t *blocks_text(json_t *c, const char *field, const char *what, struct api_error *e)
{
    static const char *const types[] = {"text", NULL};
    return api__text_parts(c, field, what, types, "only text blocks are supported", e);
}

static int refuse(json_t *root, struct api_error *e)
{
    json_t *v = json_object_get(root, "thinking");
    if (given(v)) {
        json_t *ty = json_object_get(v, "type");
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "disabled"))
            return UNSUP("thinking", "'thinking' is not supported: the model's output has no separate thinking");
    }
    static const char *const never[] = {"mcp_servers", "container"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (given(json_object_get(root, never[i])))
            return UNSUP(never[i], "'%s' is not supported by this server", never[i]);
    v = json_object_get(root, "metadata");
    if (given(v) && !json_is_object(v))
        return BAD("metadata", "'metadata' must be an object");
    return 0;
}

/* Client tools -> chat's function tools; tool_choice and
 * disable_parallel_tool_use -> tool_choice and parallel_tool_calls. Names
 * and schemas are checked again by the chat path. */
static int translate_tools(json_t *root, json_t *chat, struct api_error *e)
{
    json_t *v = json_object_get(root, "tools");
    if (given(v)) {
        if (!json_is_array(v))
            return BAD("tools", "'tools' must be a list of tools");
        json_t *tools = json_array();
        if (!tools || json_object_set_new(chat, "tools", tools))
            return OOM();
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t)
        {
            if (!json_is_object(t))
                return BAD("tools", "tools[%zu] must be an object", i);
            json_t *ty = json_object_get(t, "type");
            if (given(ty) && (!json_is_string(ty) || strcmp(json_string_value(ty), "custom")))
                return UNSUP("tools",
                             "tools[%zu] has type '%.40s', which is not supported: lmd runs no server tools (web "
                             "search, bash, computer use, text editor, code execution…); only client tools with "
                             "name and input_schema",
                             i, json_is_string(ty) ? json_string_value(ty) : "?");
            json_t *name = json_object_get(t, "name"), *schema = json_object_get(t, "input_schema");
            if (!json_is_string(name))
                return BAD("tools", "tools[%zu].name must be a string", i);
            if (!json_is_object(schema))
                return BAD("tools", "tools[%zu].input_schema must be a JSON Schema object", i);
            const char *key;
            json_t *x;
            json_object_foreach(t, key, x)
            {
                if (strcmp(key, "type") && strcmp(key, "name") && strcmp(key, "description") &&
                    strcmp(key, "input_schema") && strcmp(key, "cache_control") && strcmp(key, "strict"))
                    return BAD("tools",
                               "unknown field 'tools[%zu].%.40s' (name, description, input_schema, strict, "
                               "cache_control)",
                               i, key);
            }
            /* In chat's order: the template may render the tools as JSON. */
            json_t *fn = json_pack("{s:O}", "name", name);
            if (fn && given(json_object_get(t, "description")))
                json_object_set(fn, "description", json_object_get(t, "description"));
            if (fn)
                json_object_set(fn, "parameters", schema);
            if (fn && given(json_object_get(t, "strict")))
                json_object_set(fn, "strict", json_object_get(t, "strict"));
            if (!fn || json_array_append_new(tools, json_pack("{s:s, s:o}", "type", "function", "function", fn)))
                return OOM();
        }
    }
    v = json_object_get(root, "tool_choice");
    if (!given(v))
        return 0;
    json_t *ty = json_object_get(v, "type");
    if (!json_is_object(v) || !json_is_string(ty))
        return BAD("tool_choice", "'tool_choice' must be an object with a string 'type' (auto, any, tool or none)");
    const char *t = json_string_value(ty);
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x)
    {
        if (strcmp(key, "type") && strcmp(key, "name") && strcmp(key, "disable_parallel_tool_use"))
            return BAD("tool_choice", "unknown field 'tool_choice.%.40s' (type, name, disable_parallel_tool_use)", key);
    }
    json_t *name = json_object_get(v, "name");
    if ((!strcmp(t, "any") || !strcmp(t, "tool")) && !json_array_size(json_object_get(chat, "tools")))
        return BAD("tool_choice", "'tool_choice' of type \"%s\" needs a non-empty 'tools' list", t);
    if (!strcmp(t, "auto") || !strcmp(t, "any") || !strcmp(t, "none")) {
        if (given(name))
            return BAD("tool_choice", "'tool_choice.name' goes only with type \"tool\"");
        json_object_set_new(chat, "tool_choice", json_string(!strcmp(t, "any") ? "required" : t));
    } else if (!strcmp(t, "tool")) {
        if (!json_is_string(name))
            return BAD("tool_choice", "'tool_choice' of type \"tool\" needs a string 'name'");
        json_object_set_new(chat, "tool_choice",
                            json_pack("{s:s, s:{s:O}}", "type", "function", "function", "name", name));
    } else {
        return BAD("tool_choice", "unknown tool_choice type '%.40s' (auto, any, tool or none)", t);
    }
    json_t *dp = json_object_get(v, "disable_parallel_tool_use");
    if (given(dp)) {
        if (!json_is_boolean(dp))
            return BAD("tool_choice", "'tool_choice.disable_parallel_tool_use' must be true or false");
        json_object_set_new(chat, "parallel_tool_calls", json_boolean(!json_is_true(dp)));
    }
    return 0;
}

/* A tool_result block's content: a string, or text blocks; is_error is
 * kept by saying so in the text, since a chat tool message has no flag. */
static json_t *result_text(json_t *blk, const char *what, struct api_error *e)
{
    json_t *c = json_object_get(blk, "content"), *err = json_object_get(blk, "is_error");
    if (given(err) && !json_is_boolean(err)) {
        BAD("messages", "%s.is_error must be true or false", what);
        return NULL;
    }
    json_t *t = given(c) ? blocks_text(c, "messages", what, e) : json_string("");
    if (!t || !json_is_true(err))
        return t;
    json_t *s = json_sprintf("Error: %s", json_string_value(t));
    json_decref(t);
    if (!s)
        OOM();
    return s;
}

/* A message whose content blocks hold tool_use (assistant) or tool_result
 * (user) blocks: the tool results become tool messages, in order, before
 * the user's text; the tool uses the assistant message's tool_calls. The
 * other blocks go through blocks_text. Returns 1 when m holds no tool
 * block (the caller translates it as text), 0 done, else an error. */
static int tool_blocks(json_t *content, const char *r, size_t i, json_t *msgs, struct api_error *e)
{
    bool assistant = !strcmp(r, "assistant");
    json_t *text = json_array(), *calls = json_array();
    int rc = (!text || !calls) ? OOM() : 1;
    size_t k;
    json_t *blk;
    json_array_foreach(content, k, blk)
    {
        if (rc != 1 && rc != 0)
            break;
        const char *ty = json_string_value(json_object_get(blk, "type"));
        char what[64];
        snprintf(what, sizeof what, "messages[%zu].content[%zu]", i, k);
        if (ty && !strcmp(ty, "tool_use")) {
            json_t *id = json_object_get(blk, "id"), *name = json_object_get(blk, "name");
            json_t *input = json_object_get(blk, "input");
            if (!assistant)
                rc = BAD("messages", "%s: a tool_use block belongs in an assistant message", what);
            else if (!json_is_string(id) || !json_is_string(name) || !json_is_object(input))
                rc = BAD("messages", "%s (tool_use) needs a string 'id', a string 'name' and an object 'input'", what);
            else {
                char *args = json_dumps(input, JSON_COMPACT | JSON_PRESERVE_ORDER);
                json_t *call = args ? json_pack("{s:O, s:s, s:{s:O, s:s}}", "id", id, "type", "function", "function",
                                                "name", name, "arguments", args)
                                    : NULL;
                free(args);
                rc = (!call || json_array_append_new(calls, call)) ? OOM() : 0;
            }
        } else if (ty && !strcmp(ty, "tool_result")) {
            json_t *id = json_object_get(blk, "tool_use_id");
            if (assistant)
                rc = BAD("messages", "%s: a tool_result block belongs in a user message", what);
            else if (!json_is_string(id))
                rc = BAD("messages", "%s (tool_result) needs a string 'tool_use_id'", what);
            else {
                json_t *t = result_text(blk, what, e);
                json_t *m = t ? json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", id, "content", t) : NULL;
                rc = !t ? LMD_EINVAL : (!m || json_array_append_new(msgs, m)) ? OOM() : 0;
            }
        } else {
            rc = json_array_append(text, blk) ? OOM() : rc;
        }
    }
    if (rc == 0 && (json_array_size(text) || assistant)) {
        /* An assistant turn of calls alone has no content. */
        char what[48];
        snprintf(what, sizeof what, "messages[%zu].content", i);
        json_t *t = json_array_size(text) ? blocks_text(text, "messages", what, e) : json_null();
        json_t *m = t ? json_pack("{s:s, s:o}", "role", r, "content", t) : NULL;
        if (!t)
            rc = LMD_EINVAL;
        else if (!m || (json_array_size(calls) && json_object_set(m, "tool_calls", calls)) ||
                 json_array_append_new(msgs, m))
            rc = OOM();
    }
    json_decref(text);
    json_decref(calls);
    return rc;
}

static int translate(json_t *root, json_t *chat, struct api_error *e)
{
    if (refuse(root, e) || translate_tools(root, chat, e))
        return LMD_EINVAL;
    json_t *msgs = json_array();
    if (!msgs || json_object_set_new(chat, "messages", msgs))
        return OOM();
    json_t *sys = json_object_get(root, "system");
    if (given(sys)) {
        json_t *t = blocks_text(sys, "system", "system", e);
        if (!t || api__add_msg(msgs, "system", t, e))
            return LMD_EINVAL;
    }
    json_t *in = json_object_get(root, "messages");
    if (!given(in))
        return BAD("messages", "'messages' is required");
    if (!json_is_array(in) || json_array_size(in) == 0)
        return BAD("messages", "'messages' must be a non-empty list");
    size_t i;
    json_t *m;
    json_array_foreach(in, i, m)
    {
        if (!json_is_object(m))
            return BAD("messages", "messages[%zu] must be an object", i);
        json_t *role = json_object_get(m, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        if (strcmp(r, "user") && strcmp(r, "assistant"))
            return BAD("messages", "messages[%zu].role must be \"user\" or \"assistant\"", i);
        char what[48];
        snprintf(what, sizeof what, "messages[%zu].content", i);
        json_t *c = json_object_get(m, "content");
        if (!given(c))
            return BAD("messages", "'%s' is required", what);
        int tb = json_is_array(c) ? tool_blocks(c, r, i, msgs, e) : 1;
        if (tb < 0)
            return LMD_EINVAL;
        json_t *t = tb == 1 ? blocks_text(c, "messages", what, e) : NULL;
        if (tb == 1 && (!t || api__add_msg(msgs, r, t, e)))
            return LMD_EINVAL;
        if (i + 1 == json_array_size(in) && !strcmp(r, "assistant"))
            return UNSUP("messages", "the last message is the assistant's: continuing a prefilled assistant turn is "
                                     "not supported; end with a user message");
    }
    json_t *v = json_object_get(root, "model");
    if (given(v))
        json_object_set(chat, "model", v);
    v = json_object_get(root, "max_tokens");
    if (!given(v))
        return BAD("max_tokens", "'max_tokens' is required");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
        return BAD("max_tokens", "'max_tokens' must be an integer in [1, %d]", 1 << 24);
    json_object_set(chat, "max_tokens", v);
    v = json_object_get(root, "stream");
    if (given(v)) {
        if (!json_is_boolean(v))
            return BAD("stream", "'stream' must be true or false");
        json_object_set(chat, "stream", v);
    }
    v = json_object_get(root, "temperature");
    if (given(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            return BAD("temperature", "'temperature' must be a number in [0, 1]");
        json_object_set(chat, "temperature", v);
    }
    v = json_object_get(root, "top_p");
    if (given(v))
        json_object_set(chat, "top_p", v);
    v = json_object_get(root, "top_k");
    if (given(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return BAD("top_k", "'top_k' must be a non-negative integer");
        json_object_set(chat, "top_k", v);
    }
    v = json_object_get(root, "stop_sequences");
    if (given(v)) {
        if (!json_is_array(v))
            return BAD("stop_sequences", "'stop_sequences' must be a list of strings");
        if (json_array_size(v) > API_MAX_STOP)
            return BAD("stop_sequences", "'stop_sequences' holds %zu strings; lmd takes at most %d", json_array_size(v),
                       API_MAX_STOP);
        json_t *s;
        json_array_foreach(v, i, s)
        {
            if (!json_is_string(s) || json_string_length(s) == 0)
                return BAD("stop_sequences", "stop_sequences[%zu] must be a non-empty string", i);
        }
        if (json_array_size(v))
            json_object_set(chat, "stop", v);
    }
    /* Structured output: output_config.format's JSON Schema is enforced
     * the way response_format's is. */
    json_t *oc = json_object_get(root, "output_config");
    if (given(oc)) {
        if (!json_is_object(oc))
            return BAD("output_config", "'output_config' must be an object");
        const char *key;
        json_object_foreach(oc, key, v)
        {
            if (!strcmp(key, "format") || json_is_null(v))
                continue;
            return UNSUP("output_config", "'output_config.%.40s' is not supported (only 'output_config.format')", key);
        }
        json_t *f = json_object_get(oc, "format");
        if (given(f)) {
            json_t *ty = json_object_get(f, "type"), *schema = json_object_get(f, "schema");
            if (!json_is_string(ty) || strcmp(json_string_value(ty), "json_schema"))
                return BAD("output_config", "'output_config.format.type' must be \"json_schema\"");
            if (!json_is_object(schema))
                return BAD("output_config", "'output_config.format.schema' must be a JSON Schema object");
            json_t *rf = json_pack("{s:s, s:{s:s, s:O}}", "type", "json_schema", "json_schema", "name", "output",
                                   "schema", schema);
            if (!rf || json_object_set_new(chat, "response_format", rf))
                return OOM();
        }
    }
    for (i = 0; i < sizeof passthrough / sizeof passthrough[0]; i++)
        if (given(json_object_get(root, passthrough[i])))
            json_object_set(chat, passthrough[i], json_object_get(root, passthrough[i]));
    return 0;
}

int api_messages_translate(const char *body, size_t len, char **chat, char **echo, struct api_error *e)
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
    int rc = c ? translate(root, c, e) : OOM();
    if (rc == 0 && !(*chat = json_dumps(c, JSON_COMPACT)))
        rc = OOM();
    json_decref(c);
    json_decref(root);
    return rc;
}

char *api_messages_error_json(const struct api_error *e, size_t *len)
{
    const char *type = e->status == 401   ? "authentication_error"
                       : e->status == 403 ? "permission_error"
                       : e->status == 404 ? "not_found_error"
                       : e->status == 413 ? "request_too_large"
                       : e->status == 429 ? "rate_limit_error"
                       : e->status == 503 ? "overloaded_error"
                       : e->status >= 500 ? "api_error"
                                          : "invalid_request_error";
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message", e->msg);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (s)
        *len = strlen(s);
    return s;
}

/* ---- rendering ----------------------------------------------------------- */

static const char *stop_reason(const struct api_dialect_end *end)
{
    return end->calls ? "tool_use" : end->stop_seq ? "stop_sequence" : end->length ? "max_tokens" : "end_turn";
}

/* Whether the content holds a text block: unless the answer is only tool
 * calls (a streamed one whose text block was opened keeps it). */
static bool has_text(const struct api_dialect_out *d, const struct api_dialect_end *end)
{
    return !end->calls || end->text_len || d->opened;
}

static void put_str(struct lmd_buf *b, const char *s)
{
    PUTS(b, "\"");
    api_buf_json_escape(b, s ? s : "", s ? strlen(s) : 0);
    PUTS(b, "\"");
}

/* A tool_use block's id: "toolu_" and the call id's digits. */
static void tool_id(struct lmd_buf *b, json_t *call)
{
    const char *id = json_string_value(json_object_get(call, "id"));
    const char *u = id ? strchr(id, '_') : NULL;
    lmd_buf_printf(b, "\"toolu_%s\"", u ? u + 1 : "0");
}

/* A call's input as a JSON object's text (malloc'd, or NULL on OOM). The
 * chat path's arguments are JSON text; a model that wrote a non-object
 * there has its text kept under "arguments" rather than lost. */
static char *tool_input(json_t *call)
{
    json_t *a = json_object_get(call, "arguments");
    json_t *v = json_loads(json_string_value(a) ? json_string_value(a) : "", 0, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        v = json_pack("{s:O}", "arguments", a ? a : json_null());
    }
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(v);
    return s;
}

/* A tool_use block; input NULL = {} (streamed: it follows as deltas). */
static void put_tool_use(struct lmd_buf *b, json_t *call, const char *input)
{
    PUTS(b, "{\"type\":\"tool_use\",\"id\":");
    tool_id(b, call);
    PUTS(b, ",\"name\":");
    put_str(b, json_string_value(json_object_get(call, "name")));
    PUTS(b, ",\"input\":");
    PUTS(b, input ? input : "{}");
    PUTS(b, "}");
}

static void put_stop(struct lmd_buf *b, const struct api_dialect_end *end)
{
    lmd_buf_printf(b, "\"stop_reason\":\"%s\",\"stop_sequence\":", stop_reason(end));
    if (end->stop_seq) {
        PUTS(b, "\"");
        api_buf_json_escape(b, end->stop_seq, end->stop_seq_len);
        PUTS(b, "\"");
    } else {
        PUTS(b, "null");
    }
}

static void m_stream_begin(struct lmd_buf *b, struct api_dialect_out *d, int n_prompt)
{
    lmd_buf_printf(b,
                   "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"%s\",\"type\":"
                   "\"message\",\"role\":\"assistant\",\"model\":\"%s\",\"content\":[],\"stop_reason\":null,"
                   "\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,\"output_tokens\":0}}}\n\n",
                   d->id, d->model_json, n_prompt);
    PUTS(b, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
}

/* The text block opens on the first text, so that an answer that is only
 * tool calls has no empty text block. */
static void open_text(struct lmd_buf *b, struct api_dialect_out *d)
{
    if (d->opened)
        return;
    d->opened = true;
    PUTS(b, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":"
            "{\"type\":\"text\",\"text\":\"\"}}\n\n");
}

static void m_stream_text(struct lmd_buf *b, struct api_dialect_out *d, const char *s, size_t n)
{
    open_text(b, d);
    PUTS(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
            "\"text_delta\",\"text\":\"");
    api_buf_json_escape(b, s, n);
    PUTS(b, "\"}}\n\n");
}

static void m_stream_end(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    int index = 0;
    if (has_text(d, end)) {
        open_text(b, d);
        PUTS(b, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
        index = 1;
    }
    /* Each tool_use block: opened with an empty input, the input as one
     * input_json_delta, closed. */
    size_t k;
    json_t *call;
    json_array_foreach((json_t *)end->calls, k, call)
    {
        char *input = tool_input(call);
        lmd_buf_printf(b,
                       "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":%d,"
                       "\"content_block\":",
                       index);
        put_tool_use(b, call, NULL);
        lmd_buf_printf(b,
                       "}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":%d,"
                       "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
                       index);
        put_str(b, input ? input : "{}");
        lmd_buf_printf(b, "}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":%d}\n\n",
                       index);
        free(input);
        index++;
    }
    PUTS(b, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{");
    put_stop(b, end);
    lmd_buf_printf(b, "},\"usage\":{\"output_tokens\":%d}}\n\n", end->n_gen);
    PUTS(b, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

static void m_body(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end)
{
    lmd_buf_printf(b, "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"%s\",\"content\":[",
                   d->id, d->model_json);
    bool text = has_text(d, end);
    if (text) {
        PUTS(b, "{\"type\":\"text\",\"text\":\"");
        api_buf_json_escape(b, end->text, end->text_len);
        PUTS(b, "\"}");
    }
    size_t k;
    json_t *call;
    json_array_foreach((json_t *)end->calls, k, call)
    {
        char *input = tool_input(call);
        if (text || k)
            PUTS(b, ",");
        put_tool_use(b, call, input);
        free(input);
    }
    PUTS(b, "],");
    put_stop(b, end);
    lmd_buf_printf(b, ",\"usage\":{\"input_tokens\":%d,\"output_tokens\":%d}}", end->n_prompt, end->n_gen);
}

static void m_stream_error(struct lmd_buf *b, struct api_dialect_out *d, const struct api_error *e)
{
    (void)d;
    size_t len = 0;
    char *s = api_messages_error_json(e, &len);
    PUTS(b, "event: error\ndata: ");
    lmd_buf_append(b, s ? s : "{\"type\":\"error\"}", s ? len : 16);
    PUTS(b, "\n\n");
    free(s);
}

const struct api_dialect_ops api_messages_ops = {
    .path = "/v1/messages",
    .stream_begin = m_stream_begin,
    .stream_text = m_stream_text,
    .stream_end = m_stream_end,
    .body = m_body,
    .stream_error = m_stream_error,
};
