/*
 * libFuzzer driver for request bodies: the real parameter parser behind
 * /v1/completions and /v1/chat/completions. Any byte string is either
 * accepted or refused with a 4xx status, a message and (where one field is
 * at fault) that field's name; the error body is always valid JSON in
 * UTF-8. The first byte picks the endpoint.
 */
#include "api/api_int.h"
#include "fuzz.h"

#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum api_kind kind = (data[0] & 1) ? API_CHAT : API_COMPLETION;
    char *body = fuzz_copy(data + 1, size - 1, 0);
    struct api_params p;
    struct api_error e;
    memset(&e, 0, sizeof e);
    int rc = api_params_parse(&p, kind, body, size - 1, &e);
    if (rc == 0) {
        if (p.n < 1 || (p.max_tokens < 1 && p.max_tokens != -1))
            abort();
        api_params_free(&p);
    } else {
        /* A client's mistake is a 4xx; only allocation failure may be a 500. */
        if (e.status < 400 || (e.status >= 500 && strcmp(e.msg, "out of memory") != 0) || !e.msg[0])
            abort();
        size_t len = 0;
        char *s = api_error_json(&e, &len);
        if (!s || !api_utf8_valid(s, len))
            abort();
        json_error_t je;
        json_t *o = json_loadb(s, len, 0, &je);
        if (!o)
            abort();
        json_decref(o);
        free(s);
        api_params_free(&p);
    }
    free(body);
    return 0;
}
