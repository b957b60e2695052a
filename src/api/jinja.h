/*
 * A Jinja template engine for chat templates: the subset of Jinja2 that the
 * chat templates shipped in model files use (variables, attribute and item
 * access, filters, tests, for/if/set/macro, namespace(), whitespace control,
 * slicing, string methods, raise_exception, strftime_now), rendered with the
 * environment Hugging Face renders them with (trim_blocks and lstrip_blocks
 * on, autoescape off, `tojson` as Python's json.dumps with
 * ensure_ascii=False, break/continue allowed).
 *
 * It is not a general Jinja: no template inheritance, includes, imports,
 * call blocks or autoescaping. What it does not know is a precise error
 * (line and column), never a wrong rendering or a crash.
 *
 * Lifetimes: a parsed template lives as long as its owner keeps it (the
 * process, for a served model) and is read-only, so renders may run on
 * several threads at once. A render allocates only inside its own arena,
 * freed before it returns; the output goes into the caller's buffer.
 */
#pragma once

#include "core/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_t;
struct jinja_tmpl;

/* Where and why parsing or rendering failed. */
struct jinja_err {
    int line, col; /* 1-based position in the template; 0 when unknown */
    bool raised;   /* the template called raise_exception(msg): msg is its text, the client's error */
    char msg[384];
};

/* Limits a render runs under; zero fields take the defaults. */
struct jinja_opts {
    int64_t now;       /* seconds since the epoch for strftime_now (UTC); 0 = the clock */
    size_t max_output; /* bytes of output; default 4 MiB */
    size_t max_memory; /* bytes of working memory; default 64 MiB */
    long max_steps;    /* evaluation steps (loop iterations, calls, nodes); default 10 million */
};

/* Parse a template. On failure returns LMD_EINVAL (or LMD_ENOMEM) and fills
 * err with the position and the reason. The source is copied. */
int jinja_parse(const char *src, size_t len, struct jinja_tmpl **out, struct jinja_err *err);
void jinja_free(struct jinja_tmpl *t);
/* The text t was parsed from (NUL-terminated, t's), for callers that read
 * what a template can do from its source (the tool-call syntax). */
const char *jinja_source(const struct jinja_tmpl *t, size_t *len);

/* Render with the members of the JSON object `vars` as the template's
 * variables (messages, tools, add_generation_prompt, bos_token …), plus
 * the functions raise_exception, strftime_now, namespace and range.
 * Appends to out. Returns 0, or LMD_EINVAL with err filled (err->raised
 * when the template raised), LMD_ERANGE when a limit was hit, LMD_ENOMEM.
 * On failure out may hold a partial rendering. */
int jinja_render(const struct jinja_tmpl *t, const struct json_t *vars, const struct jinja_opts *opts,
                 struct lmd_buf *out, struct jinja_err *err);
