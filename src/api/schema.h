/*
 * JSON Schema -> grammar text (sample/grammar.h's GBNF notation), for
 * response_format and anything else that constrains output to a schema
 * (a tool's arguments, later).
 *
 * What is enforced, keyword by keyword (everything else is refused with
 * the keyword and its path named, never ignored):
 *   type (one or a list), enum, const, anyOf, allOf with one member,
 *   $ref to "#", "#/$defs/..." or "#/definitions/..." (recursion allowed);
 *   object: properties (emitted in their listed order), required,
 *     additionalProperties (false, true or absent: only the listed
 *     properties are produced; a schema with no properties: a map of it);
 *   array: items, minItems, maxItems (at most 1000), uniqueItems false;
 *   string: minLength, maxLength (at most 10000) in characters;
 *   integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum (exact,
 *     by a digit grammar); without bounds at most 16 digits;
 *   number: minimum and maximum when both are integers and the minimum is
 *     at least 0 (exact: integer part, then a fraction of up to 6 digits);
 *     without bounds up to 16 integer and 6 fraction digits and an exponent.
 * Annotations (title, description, default, examples, $schema, $id,
 * $comment, deprecated, readOnly, writeOnly) change nothing and pass.
 * Whitespace between tokens is bounded (one blank, or one line break and
 * an indentation of at most 20 blanks), so output never runs away on
 * whitespace alone.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct lmd_buf;

/* Append a grammar whose root is `schema` (a json_t *) to out. On a schema
 * it cannot enforce, writes a message naming the keyword and its path
 * (under `path`, e.g. "response_format.json_schema.schema") to msg and
 * returns non-zero. */
int api_schema_grammar(const void *schema, const char *path, struct lmd_buf *out, char *msg, size_t msg_cap);

/* The parts, for grammars that embed several schemas (a tool call's
 * arguments inside the call's syntax): the shared rules (json-value,
 * json-string, ws, …; once per grammar), then the rules of one schema,
 * numbered from *next_rule on ("s<N>"; *next_rule is advanced past them,
 * so the next schema's rules do not clash). Returns the number of the
 * schema's own rule (refer to it as "s<N>"), or -1 with msg set. */
int api_schema_common(struct lmd_buf *out);
int api_schema_rules(const void *schema, const char *path, int *next_rule, struct lmd_buf *out, char *msg,
                     size_t msg_cap);
/* The grammar of any JSON object (response_format json_object). */
int api_schema_any_object(struct lmd_buf *out);
