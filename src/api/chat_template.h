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

#include "core/buf.h"
#include "core/error.h"

#include <stdbool.h>
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

struct jinja_tmpl;
struct jinja_err;
struct json_t;

/* Render with a model's own Jinja template (jinja.h): vars holds messages,
 * add_generation_prompt, bos_token … (the caller's). When add_bos says the
 * tokenizer adds a BOS, a BOS text the template wrote first is dropped, so
 * the prompt starts with exactly one. Appends to out; returns jinja_render's
 * result, err filled on failure. */
int chat_jinja_render(const struct jinja_tmpl *t, const struct json_t *vars, const char *bos, bool add_bos,
                      struct lmd_buf *out, struct jinja_err *err);
