/*
 * libFuzzer driver for the tokenizer, both families: any bytes (invalid
 * UTF-8 included) tokenize without error, into ids inside the vocabulary,
 * and streaming detokenization of those ids never writes past its bound.
 * The vocabularies are the small test ones (tests/golden/tokenizer): an
 * SPM one and byte-level BPE ones with the llama3, qwen2 and default
 * pre-tokenizers, loaded once before the first execution. The first byte
 * picks the vocabulary and the flags. They are read from the source tree,
 * or from $LMD_FUZZ_DATA/tokenizer/ where the drivers run without one
 * (scripts/fuzz-campaign.sh --pack copies them there).
 */
#include "fuzz.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>

static const char *const g_files[] = {"spm_prefix.gguf", "bpe_llama3.gguf", "bpe_qwen2.gguf", "bpe_default.gguf"};
enum { N_VOCABS = sizeof g_files / sizeof g_files[0] };
static struct tok_vocab *g_vocab[N_VOCABS];
static struct gguf_file *g_file[N_VOCABS]; /* kept open for the process, as lmd serve does */

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *data = getenv("LMD_FUZZ_DATA");
    for (int i = 0; i < N_VOCABS; i++) {
        char path[1024];
        if (data && data[0])
            snprintf(path, sizeof path, "%s/tokenizer/%s", data, g_files[i]);
        else
            snprintf(path, sizeof path, "%s/tests/golden/tokenizer/%s", LMD_SOURCE_DIR, g_files[i]);
        struct lmd_err err = {0};
        if (gguf_open(&g_file[i], path, &err) != 0 || tok_load(&g_vocab[i], g_file[i], &err) != 0) {
            fprintf(stderr, "tokenizer_fuzz: %s: %s\n", path, err.msg);
            abort();
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct tok_vocab *v = g_vocab[data[0] % N_VOCABS];
    bool add_special = data[0] & 0x10, parse_special = data[0] & 0x20;
    char *text = fuzz_copy(data + 1, size - 1, 0);
    /* SPM escapes each space as U+2581 (3 bytes) before splitting, and a
     * byte that is not UTF-8 may start a 3- or 4-byte "character" that
     * falls back to byte tokens, as in llama.cpp: at most 3 tokens per input
     * byte, plus BOS, EOS and the space prefix. */
    size_t cap = 3 * size + 8;
    int32_t *ids = malloc(cap * sizeof *ids);
    struct lmd_err err = {0};
    int64_t n = tok_encode(v, text, size - 1, add_special, parse_special, ids, cap, &err);
    if (n < 0 || (size_t)n > cap)
        abort();
    struct tok_detok d;
    tok_detok_init(&d, v, parse_special);
    size_t bound = tok_detok_bound(v);
    char *out = malloc(bound);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok_n_vocab(v))
            abort();
        if (tok_detok_push(&d, ids[i], out, bound) > bound)
            abort();
    }
    if (tok_detok_flush(&d, out, bound) > bound)
        abort();
    free(out);
    free(ids);
    free(text);
    return 0;
}
