/*
 * libFuzzer driver for grammars: the input up to the first NUL byte is GBNF
 * text, the rest is output fed to its matcher. Compiling either succeeds or
 * fails with a message; a compiled grammar's matcher follows any bytes
 * without reading outside its buffers, and (being free of left recursion)
 * without expanding forever.
 */
#include "fuzz.h"
#include "sample/grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t glen = nul ? (size_t)(nul - data) : size;
    char *text = fuzz_copy(data, glen, 0);
    struct gram *g = NULL;
    struct lmd_err err = {0};
    if (gram_compile(&g, text, glen, &err) == 0) {
        struct gram_match *m = NULL;
        if (gram_match_init(&m, g, NULL, &err) == 0) {
            size_t rest = nul ? size - glen - 1 : 0;
            char *out = fuzz_copy(nul ? nul + 1 : data, rest, 0);
            for (size_t i = 0; i < rest && gram_match_feed(m, out + i, 1); i++)
                (void)gram_match_accepting(m);
            free(out);
            gram_match_free(m);
        }
        gram_free(g);
    } else if (!err.msg[0]) {
        abort(); /* a refusal always says why */
    }
    free(text);
    return 0;
}
