/*
 * Tool calls on the chat API: the request's `tools`, `tool_choice` and
 * `parallel_tool_calls`; which call syntax a model's chat template asks
 * for; the grammar that forces a call when the choice is `required` or a
 * named function; and the parser that turns the model's output back into
 * OpenAI's `tool_calls`.
 *
 * The syntax is read from the template's source, since that is what
 * teaches the model how to call (api_tools_detect):
 *   - a template that never mentions `tools` cannot render them (NONE);
 *   - one that writes <tool_call> asks for Hermes-style calls, one JSON
 *     object {"name", "arguments"} per <tool_call>…</tool_call> block
 *     (Qwen 2.5 and 3, Hermes, and the many fine-tunes that copied them);
 *   - one that writes [TOOL_CALLS] asks for Mistral's list
 *     [TOOL_CALLS][{"name", "arguments"}, …];
 *   - a Llama 3 template (<|start_header_id|>) that describes "parameters"
 *     asks for a bare {"name", "parameters"} object as the whole answer,
 *     possibly after <|python_tag|>, several separated by ';';
 *   - anything else renders tools in a syntax lmd does not parse (UNKNOWN):
 *     refused with a 400 rather than answered with unparsed text.
 *
 * Models behind upstream servers get the tools in the forwarded body; the
 * upstream's streamed tool_calls come back inside the text as records
 * (RELAY: "\x1e" name "\x1f" arguments, as engine/remote/sse_json.h
 * writes them) and are parsed here like any other syntax.
 *
 * tool_choice "none" hides the tools from the template (as if none were
 * given), so the model is not invited to call, and nothing is parsed.
 *
 * Not here: rendering the template (chat_jinja.c), streaming and the
 * response body (call.c).
 */
#include "api/api_int.h"
#include "api/schema.h"
#include "sample/grammar.h"

#include <jansson.h>

#include <stdio.h>
#include <string.h>

#define BAD(field, ...) api_error_set(e, 400, "invalid_request_error", field, NULL, __VA_ARGS__)

/* At most this many calls in one answer when the grammar forces them and
 * parallel calls are allowed: a bound, so a forced answer always ends. */
#define TOOLS_MAX_FORCED_CALLS 4

/* The remote engine's record separators (engine/remote/sse_json.h). */
#define RELAY_START '\x1e'
#define RELAY_ARGS '\x1f'

/* OpenAI's rule for function names: letters, digits, '_' and '-', 1 to 64.
 * It also keeps names safe inside grammar literals and JSON text. */
static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Assistant messages' tool_calls, which the template writes back into the
 * prompt: each {"id"?, "type"?: "function", "function": {"name",
 * "arguments": JSON text or object}}. */
static int check_messages(json_t *root, struct api_error *e)
{
    size_t i, k;
    json_t *m, *tc;
    json_array_foreach(json_object_get(root, "messages"), i, m)
    {
        json_t *calls = json_object_get(m, "tool_calls");
        if (!calls || json_is_null(calls))
            continue;
        if (!json_is_array(calls))
            return BAD("messages", "messages[%zu].tool_calls must be a list", i);
        json_array_foreach(calls, k, tc)
        {
            json_t *fn = json_object_get(tc, "function");
            json_t *ty = json_object_get(tc, "type");
            json_t *args = json_object_get(fn, "arguments");
            if (!json_is_object(tc) || !json_is_object(fn) || !json_is_string(json_object_get(fn, "name")) ||
                (ty && !(json_is_string(ty) && strcmp(json_string_value(ty), "function") == 0)) ||
                (args && !json_is_string(args) && !json_is_object(args)))
                return BAD("messages",
                           "messages[%zu].tool_calls[%zu] must be {\"type\": \"function\", \"function\": {\"name\": "
                           "string, \"arguments\": JSON text}}",
                           i, k);
        }
    }
    return 0;
}

int api__tools_parse(struct api_params *p, void *doc, struct api_error *e)
{
    json_t *root = doc;
    p->parallel_tool_calls = true;
    json_t *par = json_object_get(root, "parallel_tool_calls");
    if (par && !json_is_null(par)) {
        if (!json_is_boolean(par))
            return BAD("parallel_tool_calls", "'parallel_tool_calls' must be true or false");
        p->parallel_tool_calls = json_is_true(par);
    }
    json_t *tools = json_object_get(root, "tools");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools))
            return BAD("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {…}}");
        if (json_array_size(tools) > 128)
            return BAD("tools", "'tools' holds %zu tools; at most 128 are allowed", json_array_size(tools));
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            json_t *ty = json_object_get(t, "type");
            json_t *fn = json_object_get(t, "function");
            if (!json_is_object(t) || !json_is_string(ty) || strcmp(json_string_value(ty), "function") != 0)
                return BAD("tools",
                           "tools[%zu] must be an object with \"type\": \"function\" (the only tool type "
                           "lmd serves)",
                           i);
            if (!json_is_object(fn))
                return BAD("tools", "tools[%zu].function must be an object", i);
            json_t *name = json_object_get(fn, "name");
            if (!json_is_string(name) || !name_ok(json_string_value(name), json_string_length(name)))
                return BAD("tools", "tools[%zu].function.name must be 1 to 64 letters, digits, '_' or '-'", i);
            json_t *d = json_object_get(fn, "description");
            if (d && !json_is_null(d) && !json_is_string(d))
                return BAD("tools", "tools[%zu].function.description must be a string", i);
            json_t *params = json_object_get(fn, "parameters");
            if (params && !json_is_null(params) && !json_is_object(params))
                return BAD("tools", "tools[%zu].function.parameters must be a JSON Schema object", i);
            json_t *strict = json_object_get(fn, "strict");
            if (strict && !json_is_null(strict) && !json_is_boolean(strict))
                return BAD("tools", "tools[%zu].function.strict must be a boolean", i);
            for (size_t j = 0; j < i; j++)
                if (json_equal(name, json_object_get(json_object_get(json_array_get(tools, j), "function"), "name")))
                    return BAD("tools", "tools[%zu] and tools[%zu] are both named '%s'", j, i, json_string_value(name));
        }
        if (json_array_size(tools) > 0) {
            p->tools = tools;
            p->n_tools = (int)json_array_size(tools);
        }
    }
    p->tool_choice = p->tools ? API_TC_AUTO : API_TC_NONE;
    json_t *tc = json_object_get(root, "tool_choice");
    if (tc && !json_is_null(tc)) {
        if (json_is_string(tc)) {
            const char *s = json_string_value(tc);
            if (strcmp(s, "none") == 0)
                p->tool_choice = API_TC_NONE;
            else if (strcmp(s, "auto") == 0)
                p->tool_choice = p->tools ? API_TC_AUTO : API_TC_NONE;
            else if (strcmp(s, "required") == 0)
                p->tool_choice = API_TC_REQUIRED;
            else
                return BAD("tool_choice",
                           "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
                           "\"function\", \"function\": {\"name\": …}}; got \"%.64s\"",
                           s);
        } else {
            json_t *ty = json_object_get(tc, "type");
            json_t *name = json_object_get(json_object_get(tc, "function"), "name");
            if (!json_is_object(tc) || !json_is_string(ty) || strcmp(json_string_value(ty), "function") != 0 ||
                !json_is_string(name))
                return BAD("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
                                          "\"function\", \"function\": {\"name\": …}}");
            p->tool_choice = API_TC_NAMED;
            p->tool_name = json_string_value(name);
            bool found = false;
            size_t i;
            json_t *t;
            json_array_foreach(p->tools, i, t)
            {
                found |= json_equal(name, json_object_get(json_object_get(t, "function"), "name"));
            }
            if (!found)
                return BAD("tool_choice", "'tool_choice' names the function '%.64s', which is not in 'tools'",
                           p->tool_name);
        }
        if ((p->tool_choice == API_TC_REQUIRED) && !p->tools)
            return BAD("tool_choice", "'tool_choice': \"required\" needs a non-empty 'tools' list");
    }
    return check_messages(root, e);
}

enum api_tool_syntax api_tools_detect(const char *src, size_t len)
{
    (void)len;
    if (!src || !strstr(src, "tools"))
        return API_TOOLS_NONE;
    if (strstr(src, "<tool_call>"))
        return API_TOOLS_HERMES;
    if (strstr(src, "[TOOL_CALLS]"))
        return API_TOOLS_MISTRAL;
    if (strstr(src, "<|start_header_id|>") && strstr(src, "parameters"))
        return API_TOOLS_LLAMA3;
    return API_TOOLS_UNKNOWN;
}

const char *api_tools_syntax_name(enum api_tool_syntax s)
{
    switch (s) {
    case API_TOOLS_HERMES:
        return "hermes";
    case API_TOOLS_LLAMA3:
        return "llama3-json";
    case API_TOOLS_MISTRAL:
        return "mistral";
    case API_TOOLS_UNKNOWN:
        return "unknown";
    case API_TOOLS_RELAY:
        return "relay";
    default:
        return "none";
    }
}

/* The grammar that forces a call (required: any of the tools; named: that
 * one), in syntax s, each call's arguments held to its parameter schema. */
static int forced_grammar(struct api_params *p, enum api_tool_syntax s, struct lmd_buf *g, char *msg, size_t cap)
{
    if (api_schema_common(g) != 0)
        return -1;
    int next = 0, n_calls = 0;
    size_t i;
    json_t *t;
    json_array_foreach((json_t *)p->tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (p->tool_choice == API_TC_NAMED && strcmp(name, p->tool_name) != 0)
            continue;
        json_t *params = json_object_get(fn, "parameters");
        char path[96], ref[24] = "json-object";
        snprintf(path, sizeof path, "tools[%zu].function.parameters", i);
        if (params && !json_is_null(params)) {
            int r = api_schema_rules(params, path, &next, g, msg, cap);
            if (r < 0)
                return -1;
            snprintf(ref, sizeof ref, "s%d", r);
        }
        /* The model's own spelling of a call, as its template shows it. */
        if (s == API_TOOLS_HERMES)
            lmd_buf_printf(
                g,
                "call%d ::= \"<tool_call>\\n{\\\"name\\\": \\\"%s\\\", \\\"arguments\\\": \" %s \"}\\n</tool_call>\"\n",
                n_calls, name, ref);
        else
            lmd_buf_printf(g, "call%d ::= \"{\\\"name\\\": \\\"%s\\\", \\\"%s\\\": \" %s \"}\"\n", n_calls, name,
                           s == API_TOOLS_LLAMA3 ? "parameters" : "arguments", ref);
        n_calls++;
    }
    lmd_buf_printf(g, "call ::= call0");
    for (int k = 1; k < n_calls; k++)
        lmd_buf_printf(g, " | call%d", k);
    /* Several calls only where the syntax has a place for them, the client
     * allows them and no single function was named. */
    int more = p->parallel_tool_calls && p->tool_choice == API_TC_REQUIRED ? TOOLS_MAX_FORCED_CALLS - 1 : 0;
    if (s == API_TOOLS_HERMES)
        lmd_buf_printf(g, "\nroot ::= call (\"\\n\" call){0,%d}\n", more);
    else if (s == API_TOOLS_MISTRAL)
        lmd_buf_printf(g, "\nroot ::= \"[TOOL_CALLS][\" call (\", \" call){0,%d} \"]\"\n", more);
    else
        lmd_buf_printf(g, "\nroot ::= call\n");
    if (!g->ptr) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    return 0;
}

int api_tools_check(struct api_params *p, enum api_tool_syntax s, const char *family, struct api_error *e)
{
    if (!p->tools || p->tool_choice == API_TC_NONE)
        return 0;
    if (family)
        return api_error_set(e, 400, "invalid_request_error", "tools", "unsupported_parameter",
                             "'tools' needs a model whose chat template renders tools; this one uses lmd's built-in "
                             "%s template, which has none; start lmd serve with --chat-template-file, or send "
                             "\"tool_choice\": \"none\"",
                             family);
    if (s == API_TOOLS_NONE)
        return api_error_set(e, 400, "invalid_request_error", "tools", "unsupported_parameter",
                             "'tools' cannot be used with this model: its chat template does not render tools; start "
                             "lmd serve with a tool-capable --chat-template-file, or send \"tool_choice\": \"none\"");
    if (s == API_TOOLS_UNKNOWN)
        return api_error_set(e, 400, "invalid_request_error", "tools", "unsupported_parameter",
                             "'tools' cannot be used with this model: its chat template renders tools, but asks for "
                             "a tool-call syntax lmd does not parse (lmd parses Hermes/Qwen <tool_call>, Llama 3 "
                             "JSON and Mistral [TOOL_CALLS])");
    if (p->tool_choice == API_TC_AUTO)
        return 0;
    struct lmd_buf g = {0};
    char msg[300] = "";
    if (forced_grammar(p, s, &g, msg, sizeof msg) != 0) {
        lmd_buf_free(&g);
        return api_error_set(e, 400, "invalid_request_error", "tools", "unsupported_schema", "%s", msg);
    }
    struct lmd_err err = {0};
    int rc = gram_compile(&p->grammar, g.ptr, g.len, &err);
    lmd_buf_free(&g);
    if (rc == 0)
        return 0;
    if (err.code == LMD_ENOMEM)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    return api_error_set(e, 400, "invalid_request_error", "tools", "unsupported_schema",
                         "the tools' parameter schemas are too large to enforce: %s", err.msg);
}

/* ---- parsing the output ---------------------------------------------------- */

static bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && is_ws(s[i]))
        i++;
    return i;
}

static bool starts(const char *s, size_t i, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return n - i >= k && memcmp(s + i, lit, k) == 0;
}

static const char *find(const char *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, lit, k) == 0)
            return s + i;
    return NULL;
}

/* One JSON value at s[*i, n); *i moves past it. NULL when there is none. */
static json_t *json_at(const char *s, size_t *i, size_t n)
{
    json_error_t je;
    json_t *v = json_loadb(s + *i, n - *i, JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES, &je);
    if (v)
        *i += (size_t)je.position;
    return v;
}

/* {"name", "arguments" or "parameters"} -> {"name", "arguments": text}
 * appended to calls; false when the object is not a call of a known tool. */
static bool add_call(json_t *calls, json_t *obj, const char *const *names, int n_names)
{
    json_t *name = json_object_get(obj, "name");
    if (!json_is_object(obj) || !json_is_string(name))
        return false;
    bool known = false;
    for (int k = 0; k < n_names && !known; k++)
        known = strcmp(names[k], json_string_value(name)) == 0;
    if (!known)
        return false;
    json_t *args = json_object_get(obj, "arguments");
    if (!args)
        args = json_object_get(obj, "parameters");
    json_t *text;
    if (!args)
        text = json_string("{}");
    else if (json_is_string(args))
        text = json_incref(args);
    else if (json_is_object(args)) {
        char *dump = json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER);
        text = dump ? json_string(dump) : NULL;
        free(dump);
    } else
        return false;
    json_t *call = json_object();
    if (!text || !call || json_object_set(call, "name", name) || json_object_set_new(call, "arguments", text) ||
        json_array_append_new(calls, call)) {
        json_decref(call);
        return false;
    }
    return true;
}

void *api_tools_extract(enum api_tool_syntax s, const char *text, size_t n, const char *const *names, int n_names,
                        size_t *content_len)
{
    json_t *calls = json_array();
    if (!calls || !text)
        goto bad;
    size_t i = 0;
    if (s == API_TOOLS_HERMES) {
        const char *at = find(text, n, "<tool_call>");
        if (!at)
            goto bad;
        *content_len = (size_t)(at - text);
        i = *content_len;
        while (i < n) {
            if (!starts(text, i, n, "<tool_call>"))
                goto bad;
            i = skip_ws(text, i + strlen("<tool_call>"), n);
            json_t *obj = json_at(text, &i, n);
            bool ok = obj && add_call(calls, obj, names, n_names);
            json_decref(obj);
            if (!ok)
                goto bad;
            i = skip_ws(text, i, n);
            /* The closing tag may be missing only where the text ends. */
            if (starts(text, i, n, "</tool_call>"))
                i = skip_ws(text, i + strlen("</tool_call>"), n);
            else if (i < n)
                goto bad;
        }
    } else if (s == API_TOOLS_LLAMA3) {
        i = skip_ws(text, 0, n);
        *content_len = 0;
        if (starts(text, i, n, "<|python_tag|>"))
            i += strlen("<|python_tag|>");
        for (;;) {
            i = skip_ws(text, i, n);
            if (i >= n || text[i] != '{')
                goto bad;
            json_t *obj = json_at(text, &i, n);
            bool ok = obj && add_call(calls, obj, names, n_names);
            json_decref(obj);
            if (!ok)
                goto bad;
            i = skip_ws(text, i, n);
            if (i < n && text[i] == ';')
                i++;
            else
                break;
        }
        if (skip_ws(text, i, n) != n)
            goto bad;
    } else if (s == API_TOOLS_MISTRAL) {
        const char *at = find(text, n, "[TOOL_CALLS]");
        if (at) {
            *content_len = (size_t)(at - text);
            i = *content_len + strlen("[TOOL_CALLS]");
        } else {
            /* The marker is a control token that a detokenizer may hide:
             * a bare list of calls as the whole answer is taken too. */
            *content_len = 0;
            i = skip_ws(text, 0, n);
            if (i >= n || text[i] != '[')
                goto bad;
        }
        i = skip_ws(text, i, n);
        json_t *list = json_at(text, &i, n);
        size_t k;
        json_t *obj;
        bool ok = json_is_array(list) && json_array_size(list) > 0;
        json_array_foreach(list, k, obj) { ok = ok && add_call(calls, obj, names, n_names); }
        json_decref(list);
        if (!ok || skip_ws(text, i, n) != n)
            goto bad;
    } else if (s == API_TOOLS_RELAY) {
        const char *at = memchr(text, RELAY_START, n);
        if (!at)
            goto bad;
        *content_len = (size_t)(at - text);
        i = *content_len;
        while (i < n) {
            /* text[i] is RELAY_START: the name, RELAY_ARGS, the arguments
             * up to the next call or the end. */
            const char *sep = memchr(text + i + 1, RELAY_ARGS, n - i - 1);
            if (!sep)
                goto bad;
            const char *name = text + i + 1, *args = sep + 1;
            const char *next = memchr(args, RELAY_START, (size_t)(text + n - args));
            const char *end = next ? next : text + n;
            bool known = false;
            for (int k = 0; k < n_names && !known; k++)
                known = strlen(names[k]) == (size_t)(sep - name) && memcmp(names[k], name, (size_t)(sep - name)) == 0;
            json_t *call = json_object();
            size_t al = (size_t)(end - args);
            if (!known || !call || json_object_set_new(call, "name", json_stringn(name, (size_t)(sep - name))) ||
                json_object_set_new(call, "arguments", al ? json_stringn(args, al) : json_string("{}")) ||
                json_array_append_new(calls, call)) {
                json_decref(call);
                goto bad;
            }
            i = (size_t)(end - text);
        }
    } else {
        goto bad;
    }
    if (json_array_size(calls) == 0)
        goto bad;
    /* The text before the calls, without the blank that separates them. */
    while (*content_len > 0 && is_ws(text[*content_len - 1]))
        (*content_len)--;
    return calls;
bad:
    json_decref(calls);
    *content_len = n;
    return NULL;
}

/* The offset of the longest suffix of text[0, n) that is a proper prefix
 * of lit (n when none is). */
static size_t partial_at(const char *text, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    for (size_t back = k - 1 < n ? k - 1 : n; back > 0; back--)
        if (memcmp(text + n - back, lit, back) == 0)
            return n - back;
    return n;
}

size_t api_tools_scan(enum api_tool_syntax s, const char *text, size_t n, bool at_start, bool *sure)
{
    *sure = false;
    const char *marker = s == API_TOOLS_HERMES    ? "<tool_call>"
                         : s == API_TOOLS_MISTRAL ? "[TOOL_CALLS]"
                         : s == API_TOOLS_RELAY   ? "\x1e"
                                                  : NULL;
    if ((s == API_TOOLS_LLAMA3 || s == API_TOOLS_MISTRAL) && at_start) {
        /* An answer that opens with a call: hold leading blanks until the
         * first other character says which it is. */
        size_t i = skip_ws(text, 0, n);
        if (i == n)
            return 0;
        if (text[i] == (s == API_TOOLS_LLAMA3 ? '{' : '[')) {
            *sure = true;
            return i;
        }
        if (s == API_TOOLS_LLAMA3) {
            const char *tag = "<|python_tag|>";
            size_t k = strlen(tag), m = n - i < k ? n - i : k;
            if (memcmp(text + i, tag, m) == 0) {
                *sure = m == k;
                return i;
            }
        }
    }
    if (!marker)
        return n;
    const char *at = find(text, n, marker);
    if (at) {
        *sure = true;
        return (size_t)(at - text);
    }
    return partial_at(text, n, marker);
}
