/*
 * libFuzzer driver for tool-call parsing: the first byte picks the call
 * syntax, the rest is a model's output. Parsing either finds calls (each
 * with a known name and arguments as a string, the content before them
 * inside the text) or leaves it all content; the streaming scan never
 * points past the text. Nothing crashes, leaks or reads out of bounds.
 */
#include "api/api_int.h"
#include "fuzz.h"

#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const enum api_tool_syntax syn[] = {API_TOOLS_HERMES, API_TOOLS_LLAMA3, API_TOOLS_MISTRAL, API_TOOLS_RELAY,
                                               API_TOOLS_UNKNOWN};
    enum api_tool_syntax s = syn[data[0] % 5];
    bool at_start = data[0] & 8;
    /* NUL-terminated as the output buffer is, but only size - 1 bytes long. */
    char *text = fuzz_copy(data + 1, size - 1, 1);
    static const char *const names[] = {"f", "get_weather"};
    size_t cl = 0;
    json_t *calls = api_tools_extract(s, text, size - 1, names, 2, &cl);
    if (cl > size - 1 || (!calls && cl != size - 1))
        abort();
    size_t k;
    json_t *c;
    json_array_foreach(calls, k, c)
    {
        if (!json_is_string(json_object_get(c, "name")) || !json_is_string(json_object_get(c, "arguments")))
            abort();
    }
    json_decref(calls);
    bool sure = false;
    if (api_tools_scan(s, text, size - 1, at_start, &sure) > size - 1)
        abort();
    free(text);
    return 0;
}
