/*
 * One event of an OpenAI-compatible stream, read without building a JSON
 * tree: the remote engine's per-token path allocates nothing (the text
 * goes into a buffer that grows once to the largest piece and stays).
 *
 * Read from a chunk object: choices[0].delta.content and
 * choices[0].delta.tool_calls (chat) or choices[0].text (completions), choices[0].finish_reason, usage's
 * prompt_tokens and completion_tokens, and an `error` (a string or an
 * object with a message). Everything else is skipped, validated as JSON
 * (nesting at most 64 deep).
 *
 * Internal to engine/remote.
 */
#pragma once

#include "core/buf.h"

#include <stdbool.h>
#include <stddef.h>

struct sse_chunk {
    bool has_text;   /* the text field is a string (its bytes were appended to the caller's buffer) */
    bool has_finish; /* finish_reason is a string */
    char finish[24]; /* its value, cut to fit */
    bool has_usage;  /* usage is an object */
    long prompt_tokens, completion_tokens; /* -1 when absent */
    bool is_error;
    char error[256]; /* the error's message, cut to fit */
};

/* Tool calls in chat deltas travel in the text, as records the API side
 * parses back (api/tools.c): SSE_TOOL_START, the function's name,
 * SSE_TOOL_ARGS, then its arguments' JSON text, fragment by fragment.
 * The separators are ASCII control characters that model text does not
 * hold. */
#define SSE_TOOL_START "\x1e"
#define SSE_TOOL_ARGS "\x1f"

/* Parse one event's data (a JSON object). Returns 0, or -1 when it is not
 * a well-formed JSON object (nothing is then to be trusted). `text` gets
 * the unescaped text appended. */
int sse_chunk_parse(const char *p, size_t n, bool chat, struct lmd_buf *text, struct sse_chunk *out);
