/*
 * libFuzzer driver for chat prompts: a chat request body goes through the
 * real parameter parser, and its messages are rendered with every built-in
 * template family. Rendering either fits (and says how long it is) or says
 * how much room it needs; it never writes past the buffer it is given.
 */
#include "api/api_int.h"
#include "api/chat_template.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fuzz_copy(data, size, 0);
    struct api_params p;
    struct api_error e;
    if (api_params_parse(&p, API_CHAT, body, size, &e) == 0) {
        static const enum chat_family fams[] = {CHAT_GENERIC, CHAT_GEMMA, CHAT_LLAMA3, CHAT_CHATML, CHAT_MISTRAL};
        for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
            struct lmd_err err = {0};
            long need = chat_render(fams[f], p.msgs, p.n_msgs, NULL, 0, &err);
            if (need < 0)
                continue;
            /* Exactly the size asked for, so an overrun is outside the allocation. */
            char *buf = malloc((size_t)need + 1);
            if (!buf)
                abort();
            long got = chat_render(fams[f], p.msgs, p.n_msgs, buf, (size_t)need + 1, &err);
            if (got != need)
                abort();
            free(buf);
        }
        api_params_free(&p);
    } else {
        api_params_free(&p);
    }
    free(body);
    return 0;
}
