/*
 * libFuzzer driver for the Jinja engine: the input is a template, parsed
 * and, when it parses, rendered over a fixed conversation with tools and
 * tool calls. Either outcome is fine; reading or writing outside memory,
 * running away (the step, output and memory limits hold), or an error
 * without a message is not.
 *
 * The limits are lower than lmd's own (chat_jinja.c): the real templates
 * of the seed corpus render this conversation in under 500 steps and 1 KB,
 * and a template that loops until the step limit costs time in proportion
 * to it (200,000 steps took 0.36 s under ASan, the time of over a thousand
 * ordinary executions), so a limit 20 times what real templates need
 * checks the same code at a fraction of the cost.
 */
#include "api/jinja.h"
#include "fuzz.h"

#include <jansson.h>

static const char vars_text[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi \\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_123456789\",\"type\":\"function\","
    "\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1.5,\"y\":[true,null]}}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call_123456789\",\"content\":\"ok\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *vars;
    if (!vars && !(vars = json_loads(vars_text, 0, NULL)))
        abort();
    char *src = fuzz_copy(data, size, 0);
    struct jinja_tmpl *t;
    struct jinja_err err;
    if (jinja_parse(src, size, &t, &err) == 0) {
        struct lmd_buf out = {0};
        struct jinja_opts opts = {.now = 1700000000, .max_steps = 10000, .max_output = 64 << 10, .max_memory = 8 << 20};
        if (jinja_render(t, vars, &opts, &out, &err) != 0 && !err.msg[0])
            abort();
        if (out.len > opts.max_output)
            abort();
        lmd_buf_free(&out);
        jinja_free(t);
    } else if (!err.msg[0] || err.line < 1) {
        abort();
    }
    free(src);
    return 0;
}
