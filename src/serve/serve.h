/*
 * Assembly: one `struct serve_config` in, a running server out. It opens
 * the tenants (qos/), then for every model its engine, vocabulary and chat
 * template, and its own scheduler (one engine thread per model); then the
 * metrics (obs/), the API (api/) over all models, and the HTTP listeners
 * (http/). `lmd serve` fills the config from its flags and an optional
 * YAML file (serve_config_load) and calls serve_open / serve_run /
 * serve_close.
 *
 * A model entry names its engine kind. Only "native" (the CPU engine over
 * a GGUF file) exists; a remote engine behind a gateway and a CUDA engine
 * plug in here, as further kinds.
 *
 * Not here: flag parsing (cli/), request handling (api/), batching
 * (sched/), sockets (http/).
 *
 * Lifetimes: the config is plain data (no allocations: serve_config_init,
 * then fill it; nothing to free). A `struct serve` lives from serve_open to
 * serve_close, on the thread that opened it.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>

#define SERVE_MAX_MODELS 8  /* = API_MAX_MODELS = OBS_MAX_MODELS */
#define SERVE_MAX_ALIASES 8 /* configured aliases per model */
#define SERVE_NAME_MAX 64   /* ids and aliases: 1..63 bytes */
#define SERVE_PATH_MAX 1024 /* file paths: 1..1023 bytes */

#define SERVE_MAX_UPSTREAMS 16 /* = REMOTE_MAX_BACKENDS */
#define SERVE_URL_MAX 256      /* upstream URLs: 1..255 bytes */
#define SERVE_MAX_CORS 16      /* = HTTP_MAX_CORS_ORIGINS */
#define SERVE_ORIGIN_MAX 256   /* = HTTP_ORIGIN_MAX */

/* On-disk names: "native", "remote". Append-only. */
enum serve_engine {
    SERVE_ENGINE_NATIVE = 0, /* the CPU engine over a GGUF file */
    SERVE_ENGINE_REMOTE = 1, /* a pool of upstream servers (gateway mode) */
};

#define SERVE_UNSET (-1)

/* One model. Numbers left SERVE_UNSET (and an empty chat_template) take
 * the value of serve_config.defaults, which the config file's `defaults`
 * and the command-line flags set. */
struct serve_model {
    char name[SERVE_NAME_MAX]; /* the id; "" = the file stem, made a slug */
    char path[SERVE_PATH_MAX]; /* the GGUF file */
    enum serve_engine engine;
    char aliases[SERVE_MAX_ALIASES][SERVE_NAME_MAX]; /* [n_aliases] other names requests may use */
    int n_aliases;
    char owned_by[SERVE_NAME_MAX]; /* /v1/models owned_by; "" = "lmd" */
    char chat_template[16];        /* gemma, llama3, chatml, mistral, generic; "" = from the GGUF */
    char device[16];               /* cpu, cuda, cuda:N, auto (engine_device_parse); "" = the default's */
    /* A Jinja chat template file used instead of the GGUF's own template
     * (and of a chat_template family); "" = none. Native engines only. */
    char chat_template_file[SERVE_PATH_MAX];
    int threads;          /* compute threads of its engine; 0 = one per core */
    int ctx;              /* tokens per sequence */
    int kv_blocks;        /* KV-cache blocks of 16 tokens; 0 = max_running full contexts */
    int max_running;      /* sequences batched together */
    int max_batch_tokens; /* tokens per engine step */
    int max_queue;        /* requests waiting before 503 */
    int line;             /* 1-based line of its entry in the config file; 0 = from -m */
    /* engine remote: the upstreams ("[KIND+]http://HOST:PORT[/PREFIX]") and
     * how many requests each takes at once (0 = `inflight`). */
    char upstreams[SERVE_MAX_UPSTREAMS][SERVE_URL_MAX];
    int upstream_inflight[SERVE_MAX_UPSTREAMS];
    int n_upstreams;
    char upstream_model[SERVE_NAME_MAX]; /* the `model` sent upstream; "" = the id (or the upstream's only one) */
    int inflight;                        /* per upstream, when it sets none; 0 = what the upstream says it runs at
                                            once where it says (lmd, llama-server, SGLang), else 8 */
    int route;                           /* enum remote_route: 0 ttft, 1 least, 2 rr */
};

struct serve_config {
    /* listeners */
    char host[256];
    int port; /* 0 = any free port */
    int io_threads;
    int prep_threads;              /* prep workers (chat templates, tokenizing); 0 = the api's default */
    char tls_cert[SERVE_PATH_MAX]; /* "" = cleartext; with tls_key */
    char tls_key[SERVE_PATH_MAX];
    long max_body;                               /* bytes */
    long stall_s;                                /* s; 0 = never drop a stalled stream */
    long drain_s;                                /* s, requests in flight may finish at shutdown */
    bool metrics;                                /* record metrics (/metrics) */
    bool debug;                                  /* /debug/requests and /debug/trace */
    bool prefix_cache;                           /* reuse cached prompt prefixes (default on) */
    bool prefix_cache_shared;                    /* one prefix-cache namespace for all tenants */
    char tenants[SERVE_PATH_MAX];                /* tenants file; "" = open, one anonymous tenant */
    int policy;                                  /* enum sched_policy */
    struct serve_model defaults;                 /* what a model leaves unset: every number is set here */
    struct serve_model models[SERVE_MAX_MODELS]; /* [n_models] */
    int n_models;
    char file[SERVE_PATH_MAX]; /* the config file loaded, for messages; "" = none */
    bool ctx_given;            /* defaults.ctx was set (flag or file), not the built-in default */
    int metrics_compat;        /* enum serve_compat: other servers' metric names, as well as lmd's */
    char dns_servers[256];     /* c-ares servers for dns:// upstreams, "HOST:PORT[,...]"; "" = the system's */
    int dns_interval_ms;       /* how often dns:// names are resolved again */
    char register_url[256];    /* etcd://HOST:PORT/PREFIX to register this server under; "" = none */
    char advertise[256];       /* the URL registered; "" = http(s)://HOST:PORT of the listener */
    bool watch_config;         /* read the config file again when it changes, as on SIGHUP */
    char priority_map[512];    /* integer `priority` onto classes, "CLASS<=N,...,CLASS"; "" = the built-in map */
    /* Origins whose browser pages may call the server (CORS): "*" or
     * scheme://host[:port]; none = CORS off. */
    char cors_origins[SERVE_MAX_CORS][SERVE_ORIGIN_MAX]; /* [n_cors_origins] */
    int n_cors_origins;
};

enum serve_compat {
    SERVE_COMPAT_NONE = 0,
    SERVE_COMPAT_VLLM = 1, /* vllm:num_requests_running, _waiting, kv_cache_usage_perc, cache_config_info */
};

/* Every setting at its default, no models. */
void serve_config_init(struct serve_config *c);

/* Read a YAML config file (format in docs/configuration.md): the settings
 * it names replace the current ones and its models are appended; paths in
 * it are relative to the file's folder. LMD_EIO (unreadable), LMD_EFORMAT
 * or LMD_ERANGE with err naming file:line:column and the key path, or
 * LMD_ENOMEM. On failure *c may be partly changed. */
int serve_config_load(struct serve_config *c, const char *path, struct lmd_err *err);

/* serve_config_load over the file's bytes already in memory: `name` stands
 * for the file's path (messages name it, relative paths are relative to its
 * folder, and c->file is set to it). text[len] need not be NUL-terminated
 * and is only read. serve_config_load reads the file and calls this. */
int serve_config_load_buffer(struct serve_config *c, const char *name, const void *text, size_t len,
                             struct lmd_err *err);

/* Append a model given as "[NAME=]PATH" (lmd serve -m): the text before
 * the first '=' is a NAME when it has no '/'. LMD_EINVAL for a bad NAME,
 * LMD_ERANGE when there are too many models or the path is too long. */
int serve_config_add_model(struct serve_config *c, const char *arg, struct lmd_err *err);

/* Give models[model] one more name requests may use (lmd serve --alias,
 * as llama-server spells it). LMD_EINVAL for a bad name or model index,
 * LMD_ERANGE past SERVE_MAX_ALIASES. Clashes with other models' names are
 * found by serve_open. */
int serve_config_add_alias(struct serve_config *c, int model, const char *name, struct lmd_err *err);

/* Append a remote model given as "NAME=URL[,URL...]" (lmd serve
 * --upstream). LMD_EINVAL for a bad NAME or URL, LMD_ERANGE for too many. */
int serve_config_add_upstream(struct serve_config *c, const char *arg, struct lmd_err *err);

/* Add a CORS origin (lmd serve --cors-origin): "*" or scheme://host[:port].
 * LMD_EINVAL for a malformed one, LMD_ERANGE for too many. */
int serve_config_add_cors(struct serve_config *c, const char *origin, struct lmd_err *err);

/* The id a model is served under when it has no name: the file name
 * without ".gguf", each byte outside [A-Za-z0-9._-] replaced by '-'. */
void serve_model_slug(const char *path, char *out, size_t cap);

/* Whether s is a valid id: 1..63 bytes of [A-Za-z0-9._:/-], starting with
 * a letter or digit. */
bool serve_id_valid(const char *s);

struct serve;

/* Build and start the whole server from c. SIGTERM and SIGINT are blocked
 * in the calling thread first, so that every thread started inherits the
 * mask and serve_run alone takes them. Messages name the model (its id and
 * where it was configured). */
int serve_open(struct serve **out, const struct serve_config *c, struct lmd_err *err);
/* The port listened on (useful with port 0). */
int serve_port(const struct serve *s);
/* Wait for SIGTERM or SIGINT, then drain: stop accepting, /ready answers
 * 503, requests in flight finish (bounded by drain_s; a second signal cuts
 * it short). */
void serve_run(struct serve *s);
/* Stop everything and free it. NULL is fine. */
void serve_close(struct serve *s);
