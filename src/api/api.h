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
 * server starts, freed after it stops), and so do the prep worker threads
 * it owns, where chat templates are rendered and prompts tokenized, so
 * that megabytes of text never hold an I/O thread. Each generation request is one
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

#define API_MAX_MODELS 8
#define API_PREP_THREADS_MAX 64
/* Two: one client's megabytes of prompt never hold every other request's
 * prep. */
#define API_PREP_THREADS_DEFAULT 2 /* = OBS_MAX_MODELS: a model's index is its metrics label index */

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
    int n_ctx;  /* tokens per sequence */
    int n_embd; /* width of its embeddings (/v1/embeddings); 0 = its engine computes none */
};

/*
 * vLLM's integer `priority` (any integer, lower = more urgent, 0 what a
 * client sends when it means nothing in particular) mapped onto service
 * classes. Rule i takes the integers in (rules[i-1].max, rules[i].max];
 * the last rule's max is INT64_MAX, so every integer has a class. Written
 * as "CLASS<=N,...,CLASS" (lmd serve --priority-map, `priority_map:` in
 * the config file), where CLASS may be `default`: the class the tenant
 * would get had it named none.
 */
#define API_MAX_PRIORITY_RULES 16
#define API_PRIORITY_TENANT_DEFAULT (-1) /* a rule's cls: the tenant's default class */

struct api_priority_rule {
    int64_t max; /* the highest priority value the rule takes */
    int cls;     /* service class index, or API_PRIORITY_TENANT_DEFAULT */
};

struct api_priority_map {
    struct api_priority_rule rules[API_MAX_PRIORITY_RULES]; /* [n], max strictly increasing, last INT64_MAX */
    int n;                                                  /* 0 = the built-in map (api_priority_map_default) */
};

/* The built-in map: below 0 the first (most urgent) class, 0 the tenant's
 * default class (as if no priority was given), above 0 the last class. */
void api_priority_map_default(struct api_priority_map *m, const struct qos *q);
/* Parse "CLASS<=N,...,CLASS" against q's classes. Every entry but the last
 * has a bound, bounds strictly increase, the last entry has none (it takes
 * the rest). LMD_EINVAL with a message naming the entry otherwise. */
int api_priority_map_parse(struct api_priority_map *m, const char *spec, const struct qos *q, struct lmd_err *err);
/* The class index for `priority` (m->n >= 1), tenant_default standing in
 * for API_PRIORITY_TENANT_DEFAULT. */
int api_priority_map_class(const struct api_priority_map *m, int64_t priority, int tenant_default);
/* The map as the flag spells it ("urgent<=-1,default<=0,best_effort"),
 * for the start-up log; cut short to fit cap. */
void api_priority_map_format(const struct api_priority_map *m, const struct qos *q, char *out, size_t cap);

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
    /* Integer `priority` values onto classes; n == 0 = the built-in map. */
    struct api_priority_map priority_map;
    /* Prep worker threads (chat templates, tokenizing); 0 = derived:
     * API_PREP_THREADS_DEFAULT. */
    int prep_threads;
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
