/*
 * libFuzzer driver for the remote engine's stream-chunk reader: every byte
 * string an upstream could send as one SSE event's data is read or refused
 * without a crash, an overread or a leak; what it reads back is bounded by
 * the input (text never longer than 3 bytes per input byte: a 6-byte \u
 * escape is at most 3 bytes of UTF-8), and the error and finish fields are
 * NUL-terminated within their arrays. The first byte picks chat or
 * completion chunks.
 */
#include "engine/remote/sse_json.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *s = fuzz_copy(data + 1, size - 1, 0);
    struct lmd_buf text = {0};
    struct sse_chunk k;
    int rc = sse_chunk_parse(s, size - 1, data[0] & 1, &text, &k);
    if (rc != 0 && rc != -1)
        abort();
    if (text.len > 3 * (size - 1))
        abort();
    if (memchr(k.error, 0, sizeof k.error) == NULL || memchr(k.finish, 0, sizeof k.finish) == NULL)
        abort();
    lmd_buf_free(&text);
    free(s);
    return 0;
}
