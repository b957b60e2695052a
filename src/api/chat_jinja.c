/*
 * A chat request rendered with the model's own Jinja template: the
 * variables it gets are the ones Hugging Face's apply_chat_template and
 * vLLM pass — messages (content parts already joined into text by the
 * parser; tool-call arguments given as JSON text turned into objects, as
 * vLLM does, since templates write them with tojson), tools when the
 * request has a non-empty list and tool_choice is not "none" (tools.c),
 * add_generation_prompt (the request's field, true by default),
 * bos_token and eos_token, and the members of vLLM's
 * chat_template_kwargs (enable_thinking …).
 *
 * The template decides where BOS goes; the tokenizer adds one too, so a
 * leading BOS the template wrote is dropped (as llama.cpp does) and the
 * prompt starts with exactly one (chat_jinja_render, shared with lmd run).
 */
#include "api/api_int.h"
#include "api/chat_template.h"
#include "api/jinja.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>
#include <string.h>

/* messages with each assistant tool call's "arguments" text parsed into
 * an object; the same array (a new reference) when none needs it. */
static json_t *messages_for_template(json_t *msgs)
{
    bool needed = false;
    size_t i, k;
    json_t *m, *tc;
    json_array_foreach(msgs, i, m)
    {
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
        {
            needed |= json_is_string(json_object_get(json_object_get(tc, "function"), "arguments"));
        }
    }
    if (!needed)
        return json_incref(msgs);
    json_t *copy = json_deep_copy(msgs);
    if (!copy)
        return NULL;
    json_array_foreach(copy, i, m)
    {
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
        {
            json_t *fn = json_object_get(tc, "function");
            json_t *args = json_object_get(fn, "arguments");
            if (!json_is_string(args))
                continue;
            json_t *parsed = json_loadb(json_string_value(args), json_string_length(args), JSON_DECODE_ANY, NULL);
            /* Text that is not a JSON object stays text. */
            if (json_is_object(parsed))
                json_object_set_new(fn, "arguments", parsed);
            else
                json_decref(parsed);
        }
    }
    return copy;
}

int chat_jinja_render(const struct jinja_tmpl *t, const struct json_t *vars, const char *bos, bool add_bos,
                      struct lmd_buf *out, struct jinja_err *err)
{
    /* Real templates take a few thousand steps per message; the bound
     * keeps a pathological one from holding the thread it runs on. */
    struct jinja_opts opts = {.max_steps = 2000000, .max_output = 16u << 20};
    size_t start = out->len;
    int rc = jinja_render(t, vars, &opts, out, err);
    if (rc != 0)
        return rc;
    size_t bl = bos ? strlen(bos) : 0;
    if (add_bos && bl && out->len - start >= bl && memcmp(out->ptr + start, bos, bl) == 0) {
        memmove(out->ptr + start, out->ptr + start + bl, out->len - start - bl);
        out->len -= bl;
        out->ptr[out->len] = 0;
    }
    return 0;
}

int api__chat_jinja(const struct api_model *m, const struct api_params *p, struct lmd_buf *out, struct api_error *e)
{
    json_t *root = p->doc;
    json_t *vars = json_object();
    if (!vars)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    int rc = 0;
    /* vLLM's chat_template_kwargs first, so that the fixed variables win. */
    json_t *kw = json_object_get(root, "chat_template_kwargs");
    const char *key;
    json_t *val;
    json_object_foreach(kw, key, val) { json_object_set(vars, key, val); }
    json_t *msgs = messages_for_template(json_object_get(root, "messages"));
    json_t *tools = p->tool_choice != API_TC_NONE ? (json_t *)p->tools : NULL;
    if (!msgs || json_object_set_new(vars, "messages", msgs) != 0 ||
        json_object_set_new(vars, "add_generation_prompt", json_boolean(p->add_generation_prompt)) != 0 ||
        json_object_set_new(vars, "bos_token", json_string(m->bos_token ? m->bos_token : "")) != 0 ||
        json_object_set_new(vars, "eos_token", json_string(m->eos_token ? m->eos_token : "")) != 0 ||
        (json_array_size(tools) > 0 && json_object_set(vars, "tools", tools) != 0)) {
        json_decref(vars);
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    struct jinja_err err;
    rc = chat_jinja_render(m->chat_jinja, vars, m->bos_token, m->vocab && tok_add_bos(m->vocab), out, &err);
    json_decref(vars);
    if (rc == LMD_ENOMEM)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory rendering the chat template");
    if (rc != 0 && err.raised)
        return api_error_set(e, 400, "invalid_request_error", "messages", "chat_template_error", "%s", err.msg);
    if (rc != 0)
        return api_error_set(e, 400, "invalid_request_error", "messages", "chat_template_error",
                             "the model's chat template cannot render these messages (template line %d, column %d): "
                             "%s",
                             err.line, err.col, err.msg);
    return 0;
}
