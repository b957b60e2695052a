/*
 * Tokenizer: turns text into token ids and token ids back into text, using
 * the vocabulary stored in a GGUF file's tokenizer.ggml.* metadata.
 *
 * Two families are supported, token-exact with llama.cpp:
 *   - "llama" (SentencePiece style: Gemma, Llama 2, Mistral): score-driven
 *     bigram merging over UTF-8 characters, "▁" for spaces, <0xXX> byte
 *     fallback, optional space prefix;
 *   - "gpt2" (byte-level BPE: Llama 3, Qwen 2, GPT-2): a pre-tokenizer regex
 *     chosen by tokenizer.ggml.pre splits the text into words, each word's
 *     bytes are mapped to printable code points and merged by merge rank.
 * Control and user-defined tokens written as text ("<start_of_turn>",
 * "<|im_end|>") are recognised the way llama.cpp does it (longest first).
 *
 * Lifetime: process. A loaded vocabulary copies what it needs out of the
 * GGUF file (the file may be closed afterwards), is immutable, and may be
 * used from any number of threads at once. tok_encode allocates scratch
 * memory proportional to its input for the duration of the call (it runs
 * once per request, not per token). The incremental detokenizer never
 * allocates: its state lives in the caller's struct tok_detok.
 *
 * This is not a chat-template renderer (api/ does that), and it does not
 * implement the WordPiece, Unigram or RWKV tokenizers: loading one of those
 * fails with LMD_ENOTSUP.
 */
#pragma once

#include "core/error.h"
#include "gguf/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tok_vocab;

enum tok_family {
    TOK_FAMILY_SPM = 1, /* tokenizer.ggml.model = "llama" */
    TOK_FAMILY_BPE = 2, /* tokenizer.ggml.model = "gpt2" */
};

/* Token attributes, a bit set. The values are llama.cpp's, so that the two
 * can be compared directly in tests. */
enum tok_attr {
    TOK_ATTR_UNDEFINED = 0,
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
};

/* Load and validate the vocabulary of `f`. Errors: LMD_EFORMAT with a
 * precise message for malformed metadata (missing or mistyped arrays,
 * lengths that disagree, token types or special ids out of range, duplicate
 * tokens, malformed merges), LMD_ENOTSUP naming the value for a tokenizer
 * model lmd does not implement, LMD_ENOMEM. */
int tok_load(struct tok_vocab **out, const struct gguf_file *f, struct lmd_err *err);
void tok_free(struct tok_vocab *v);

/* Tokenize `len` bytes of `text` (need not be NUL-terminated; may be NULL
 * when len is 0). add_special adds BOS/EOS as the vocabulary asks for;
 * parse_special turns text that spells a control token into that token
 * (user-defined tokens are always recognised, as in llama.cpp).
 * Returns the number of tokens; when that is more than `cap`, only the
 * first `cap` were written and the caller retries with a bigger buffer.
 * Returns a negative LMD_E* code on error: LMD_ENOMEM, or LMD_ERANGE for
 * text over 1 GiB or a pre-tokenizer regex that gives up. Invalid UTF-8 never
 * fails: SPM falls back to byte tokens, BPE replaces each invalid byte with
 * U+FFFD, both as llama.cpp does. */
int64_t tok_encode(const struct tok_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                   int32_t *out, size_t cap, struct lmd_err *err);

enum tok_family tok_family(const struct tok_vocab *v);
int32_t tok_n_vocab(const struct tok_vocab *v);
int32_t tok_bos(const struct tok_vocab *v); /* -1 if none */
int32_t tok_eos(const struct tok_vocab *v); /* -1 if none */
int32_t tok_eot(const struct tok_vocab *v); /* -1 if none */
int32_t tok_unk(const struct tok_vocab *v); /* -1 if none */
bool tok_add_bos(const struct tok_vocab *v);
bool tok_add_eos(const struct tok_vocab *v);
bool tok_add_space_prefix(const struct tok_vocab *v);
/* The pre-tokenizer in use ("llama3", "qwen2", "gpt2", "default"; "" for SPM). */
const char *tok_pre_name(const struct tok_vocab *v);

/* True if generation should stop at `id`: EOS, EOT, EOM and the tokens
 * llama.cpp recognises by text (<end_of_turn>, <|im_end|>, <|eot_id|>,
 * <|endoftext|> …). False for ids out of range. */
bool tok_is_eog(const struct tok_vocab *v, int32_t id);
/* enum tok_attr bits of `id`; 0 for ids out of range. */
unsigned tok_token_attr(const struct tok_vocab *v, int32_t id);
/* The raw vocabulary string of `id`, NUL-terminated (tok_token_len gives
 * its length, which matters only for strings with NUL bytes); NULL for ids
 * out of range. Valid until tok_free. */
const char *tok_token_text(const struct tok_vocab *v, int32_t id);
size_t tok_token_len(const struct tok_vocab *v, int32_t id);
/* The id whose vocabulary string is exactly `text`, or -1. */
int32_t tok_find(const struct tok_vocab *v, const char *text);
int32_t tok_find_n(const struct tok_vocab *v, const char *text, size_t len);

/* The bytes `id` decodes to: byte tokens give their byte, "▁" becomes a
 * space (SPM), byte-level BPE tokens give the bytes they encode; control
 * and unknown tokens give their text only when `special` is true. Writes at
 * most `cap` bytes (no NUL) and returns the full length, so a return value
 * above `cap` means the piece was cut. */
size_t tok_piece(const struct tok_vocab *v, int32_t id, bool special, char *buf, size_t cap);
/* The longest piece any token decodes to (bytes). */
size_t tok_piece_max(const struct tok_vocab *v);

/* Incremental detokenizer: push one token at a time, get back the text that
 * is now complete. Output is always valid UTF-8: a character split across
 * byte tokens is held back until its last byte arrives, and bytes that
 * cannot start or continue a character become U+FFFD as soon as that is
 * certain (or at flush). For SPM vocabularies with add_space_prefix the
 * first token's leading space is dropped, as llama.cpp's detokenize does
 * (that space was added by encoding); when streaming a continuation (the
 * tokens generated after a prompt) clear `first` after tok_detok_init so
 * the first generated token keeps its space. The state is a plain value:
 * copy it, reset it with tok_detok_init. */
struct tok_detok {
    const struct tok_vocab *v;
    bool special;    /* render control tokens */
    bool first;      /* nothing pushed yet: the SPM leading space may be dropped */
    uint8_t n_pend;  /* bytes held in pend */
    uint8_t pend[4]; /* the start of an incomplete UTF-8 sequence */
};

/* Bytes of output buffer that always suffice for one push or flush. */
size_t tok_detok_bound(const struct tok_vocab *v);
void tok_detok_init(struct tok_detok *d, const struct tok_vocab *v, bool special);
/* Append the newly completed text of `id` to `out` (no NUL); returns bytes
 * written. `cap` must be at least tok_detok_bound(v): with less, output that
 * does not fit is dropped. Ids out of range decode to nothing. */
size_t tok_detok_push(struct tok_detok *d, int32_t id, char *out, size_t cap);
/* Emit U+FFFD for an incomplete trailing sequence and reset the held
 * bytes; returns bytes written. */
size_t tok_detok_flush(struct tok_detok *d, char *out, size_t cap);
