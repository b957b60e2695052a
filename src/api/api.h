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

struct api_config {
    struct sched *sched;
    const struct tok_vocab *vocab;
    const char *model_path; /* its file name and stem are accepted as the model id too */
    const char *model_name; /* general.name; NULL = the file stem is the id */
    int chat_family;        /* enum chat_family */
    int n_ctx;              /* tokens per sequence */
    size_t max_body;        /* bytes; larger bodies get 413 */
    struct qos *qos;        /* tenants, keys, classes and admission (required) */
    bool debug_endpoints;   /* serve /debug/requests and /debug/trace */
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
/* The model id shown in /v1/models. */
const char *api_model_id(const struct api *a);
/* The id a model is served under, before any api exists (metrics labels):
 * general.name, else the file name without .gguf. */
void api_model_id_for(const char *model_path, const char *model_name, char *out, size_t cap);
