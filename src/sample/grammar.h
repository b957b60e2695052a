/*
 * Constrained decoding: a grammar over the bytes of the output, compiled
 * from a GBNF text (llama.cpp's notation), a matcher that follows a
 * sequence's output through it, and a per-step mask over the vocabulary
 * that keeps only the tokens whose bytes the grammar can still accept.
 *
 * The grammar notation (a subset of llama.cpp's GBNF):
 *   name ::= alternatives          one rule per line; `root` is the start
 *   a b c                          a sequence
 *   a | b                          alternation
 *   ( ... )                        a group (may span lines)
 *   "literal"  [a-z0-9_]  [^"\\]  .   literals, character classes, any character
 *   x*  x+  x?  x{m}  x{m,}  x{m,n}    repetition
 *   # comment                      to the end of the line
 * Escapes in literals and classes: \n \r \t \\ \" \' \[ \] \- \xHH \uHHHH
 * \UHHHHHHHH. Characters are Unicode code points; the output is matched
 * byte by byte, so a token may end in the middle of a character.
 *
 * Three objects with three lifetimes:
 *   - struct gram: a compiled grammar. Immutable after gram_compile, owned
 *     by whoever compiled it (the API request), shareable by any number of
 *     matchers on any thread.
 *   - struct gram_vocab: the vocabulary seen as bytes (a prefix trie of the
 *     tokens' decoded text plus the end-of-generation ids). Built once per
 *     vocabulary (process lifetime), immutable, shared.
 *   - struct gram_match: one sequence's position in the grammar, with all
 *     the scratch a step needs. Allocated once when the sequence starts;
 *     accepting a token or computing a mask never allocates.
 *
 * What this is not: a regex engine or a JSON Schema implementation. JSON
 * Schema is translated to this notation by api/ (no JSON below api/).
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tok_vocab;
struct gram;
struct gram_vocab;
struct gram_match;

/* Upper bound on a grammar's text (bytes) and on its compiled size
 * (elements): large enough for machine-made schema grammars, small enough
 * that compiling stays a short job on an I/O thread. */
#define GRAM_MAX_TEXT (1u << 20)
#define GRAM_MAX_ELEMS (1u << 20)

/* Compile `len` bytes of GBNF text. Errors (LMD_EINVAL) name the line and
 * column or the rule: a syntax error, an undefined or twice-defined rule,
 * no `root`, a left-recursive rule (one that could loop without consuming
 * output), a repetition bound out of range; LMD_ERANGE for a grammar over
 * the size limits; LMD_ENOMEM. */
int gram_compile(struct gram **out, const char *text, size_t len, struct lmd_err *err);
void gram_free(struct gram *g);
/* Number of rules (generated ones included), for tests and logs. */
int gram_n_rules(const struct gram *g);

/* Build the byte view of a vocabulary: every token that is not a control,
 * unknown or unused token and decodes to at least one byte goes into the
 * trie; tokens that end generation are listed apart. n_logits (>= the
 * vocabulary's size) is the length of the logits rows the masks apply to:
 * ids past the vocabulary are never allowed. Takes about a second for a
 * 262k-token vocabulary on one core; done once per model. */
int gram_vocab_build(struct gram_vocab **out, const struct tok_vocab *v, int n_logits, struct lmd_err *err);
/* The same from explicit pieces (tests): pieces[i] is token i's bytes
 * (len[i] of them, 0 = never allowed); eog[0..n_eog) end generation. */
int gram_vocab_build_raw(struct gram_vocab **out, int n_vocab, const char *const *pieces, const size_t *len,
                         const int32_t *eog, int n_eog, struct lmd_err *err);
void gram_vocab_free(struct gram_vocab *gv);
int gram_vocab_n_vocab(const struct gram_vocab *gv);
/* The first end-of-generation token (there is always one). */
int32_t gram_vocab_eog(const struct gram_vocab *gv);

/* A matcher at the start of `g`'s root rule. Both g and gv must outlive it. */
int gram_match_init(struct gram_match **out, const struct gram *g, const struct gram_vocab *gv, struct lmd_err *err);
void gram_match_free(struct gram_match *m);

/* Whether the output so far is a complete sentence of the grammar (end of
 * generation is allowed), and whether it could also go on. */
bool gram_match_accepting(const struct gram_match *m);
bool gram_match_can_continue(const struct gram_match *m);
/* Whether token `id` may come next: its bytes keep the output a prefix of
 * some sentence, or it ends generation and the output is complete. */
bool gram_match_allows(struct gram_match *m, int32_t id);
/* Move past token `id` (which gram_match_allows said yes to). Returns
 * false and leaves the matcher unchanged when the token does not fit. */
bool gram_match_accept(struct gram_match *m, int32_t id);
/* Set logits[t] to -infinity for every token t that may not come next;
 * returns how many remain. logits is [n_vocab] of gv. */
int gram_match_mask(struct gram_match *m, float *logits);
/* The same in two parts: compute the set of tokens that may come next
 * (returns how many), then ask about one token or apply it to logits.
 * The set is valid until the matcher changes. */
int gram_match_fill(struct gram_match *m);
bool gram_match_bit(const struct gram_match *m, int32_t id);
void gram_match_apply(const struct gram_match *m, float *logits);
/* Bytes fed so far and trie nodes visited by gram_match_mask (stats). */
uint64_t gram_match_nodes_visited(const struct gram_match *m);

/* Feed raw bytes (tests, and callers that check text against a grammar
 * without a vocabulary): false when they leave the grammar. */
bool gram_match_feed(struct gram_match *m, const char *bytes, size_t n);
