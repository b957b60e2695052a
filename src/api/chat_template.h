/*
 * Chat templates: a list of messages -> the prompt text a model was trained
 * on. lmd renders the common families natively rather than interpreting
 * Jinja: the family is detected from the GGUF's tokenizer.chat_template
 * text (or the architecture when the file carries none) and can be forced
 * by name. The rendered text omits the BOS token; the tokenizer adds it.
 *
 * Families: gemma, llama3, chatml (Qwen and others), mistral, generic.
 */
#pragma once

#include "core/error.h"

#include <stddef.h>

enum chat_family {
    CHAT_GENERIC = 0,
    CHAT_GEMMA,
    CHAT_LLAMA3,
    CHAT_CHATML,
    CHAT_MISTRAL,
};

struct chat_msg {
    const char *role; /* "system", "user", "assistant" (or "developer", "tool") */
    const char *content;
    size_t content_len;
};

/* Family from a template's text (may be NULL) and the architecture name. */
enum chat_family chat_detect(const char *tmpl, size_t tmpl_len, const char *arch);
/* Family by name ("gemma", "llama3", "chatml", "mistral", "generic");
 * returns LMD_EINVAL for an unknown name. */
int chat_family_parse(const char *name, enum chat_family *out);
const char *chat_family_name(enum chat_family f);

/* Render messages and the opening of the assistant's turn into buf.
 * Returns the length that the full text needs (like snprintf: if >= cap,
 * the output was truncated and the caller retries with a bigger buffer),
 * or LMD_EINVAL for an unknown role. */
long chat_render(enum chat_family f, const struct chat_msg *msgs, int n, char *buf, size_t cap, struct lmd_err *err);
