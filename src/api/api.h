/*
 * The OpenAI-compatible API: routes, request validation, prompt building
 * (chat template + tokenizer), and the responses — whole JSON or SSE
 * streams — written as the scheduler produces tokens.
 *
 * It is the handler behind http/: every request arrives here on an I/O
 * thread; generation requests go to sched/ and come back as token ids,
 * which this module detokenizes incrementally and matches against stop
 * strings before writing. It never runs model code and never blocks.
 *
 * Lifetimes: `struct api` lives for the process (created before the HTTP
 * server starts, freed after it stops). Each generation request is one
 * heap object shared by the I/O thread and the engine thread through the
 * scheduler's reference count.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct api;
struct http_req;
struct qos;
struct sched;
struct tok_vocab;
struct jinja_tmpl;

#define API_MAX_MODELS 8 /* = OBS_MAX_MODELS: a model's index is its metrics label index */

/* One model the API serves: its names, what /v1/models shows about it,
 * and the scheduler, vocabulary and chat template its requests use. */
struct api_model {
    const char *id;             /* the slug requests name, /v1/models lists and metrics carry */
    const char *const *aliases; /* [n_aliases] other names it answers to */
    int n_aliases;
    const char *display_name;      /* general.name, shown as metadata; NULL = none */
    const char *arch;              /* general.architecture; NULL = none */
    const char *engine;            /* the engine kind ("native") */
    const char *owned_by;          /* NULL = "lmd" */
    struct sched *sched;           /* its own scheduler (and engine thread) */
    const struct tok_vocab *vocab; /* NULL for a model behind an engine that forwards API requests */
    bool forwards;                 /* its engine takes the validated request whole (a remote pool): no
                                      tokenizer or template here; usage comes from the engine */
    int chat_family;               /* enum chat_family: chats render with it when chat_jinja is NULL */
    /* The model's Jinja chat template (the caller's, alive as long as the
     * api), and the text of its BOS and EOS tokens that templates see as
     * bos_token / eos_token (the vocabulary's; NULL = none). */
    const struct jinja_tmpl *chat_jinja;
    const char *bos_token, *eos_token;
    int n_ctx; /* tokens per sequence */
};

struct api_config {
    /* [n_models], 1..API_MAX_MODELS; index i is the model index of
     * obs_config.models. api_init copies the array and its strings; the
     * schedulers and vocabularies stay the caller's. With one model a
     * request may omit `model`; with several it must name one. */
    const struct api_model *models;
    int n_models;
    size_t max_body;      /* bytes; larger bodies get 413 */
    struct qos *qos;      /* tenants, keys, classes and admission (required) */
    bool debug_endpoints; /* serve /debug/requests and /debug/trace */
    /* Prefix cache namespaces: by default each tenant has its own (no
     * tenant's prompts can be inferred from another's cache hits); shared,
     * every tenant's requests reuse each other's cached prefixes. A
     * request's cache_salt narrows its namespace further either way. */
    bool prefix_cache_shared;
};

int api_init(struct api **out, const struct api_config *cfg, struct lmd_err *err);
void api_free(struct api *a);

/* The http_handler_fn: `ud` is the struct api. */
void api_handle(void *ud, struct http_req *r);

/* Shutdown: /ready answers 503 and new generation requests are refused
 * with 503; requests in flight carry on. Any thread. */
void api_set_draining(struct api *a);
/* Generation requests not yet finished and released. Any thread. */
int api_active(const struct api *a);
/* The index of the model that answers to `name` (its id or an alias), or
 * -1. Ids are matched before aliases. Any thread. */
int api_model_find(const struct api *a, const char *name, size_t len);
