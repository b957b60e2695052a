/*
 * The engine interface: everything above engine/ (scheduler, server, CLI)
 * sees an inference engine only through this vtable, so the native CPU
 * engine, a later CUDA engine and remote engines plug in alike.
 *
 * Two contracts; an engine offers one (info.request_level says which).
 *
 * Step-level (the native engine, a CUDA engine): the caller batches. A
 * step takes a ragged batch — several sequences, each a run of consecutive
 * positions: a chunk of prompt (prefill) or one token (decode) — and gives,
 * for every sequence that asks, either the logits of its last position
 * (info.samples false: the caller samples with sample/) or the token the
 * engine sampled with the sequence's sampler, plus the log-probabilities
 * asked for (info.samples true: no [n_vocab] rows leave the device); and,
 * for sequences that ask (engine_seq.pool, engines with info.n_embd), their
 * final hidden states pooled into an embedding. A step
 * is two calls: engine_launch hands the batch over and returns; engine_wait
 * returns its result. An engine may finish the work inside launch (the
 * native engine does); the caller must not touch the batch's arrays, nor
 * the sequences' samplers and block tables, between the two.
 *
 * Request-level (HTTP upstreams that batch on their own): the caller
 * submits whole requests — prompt tokens, limits, sampling parameters —
 * within the engine's concurrency (info.max_seqs), polls for their events
 * (tokens or text as they stream, then a finish with usage) and may cancel
 * one. Admission, classes and fair share stay the caller's.
 *
 * KV memory: an engine with a paged cache stores the bytes of
 * `kv_blocks` blocks of `kv_block_tokens` positions; which block belongs to
 * which sequence is the caller's business (a kv/ block manager over ids
 * [0, kv_blocks)): it reserves blocks before a step that writes new
 * positions, may hand the same block to several sequences for a shared
 * prefix, and passes each sequence's block table in the batch.
 *
 * Threads: an engine is driven by one thread (the scheduler/engine thread);
 * its calls are not thread-safe. It never touches client sockets; a
 * request-level engine's upstream sockets live on the I/O loops, so its
 * submit, poll and cancel only hand work over and never block (the
 * scheduler polls again within a millisecond while requests are out).
 */
#pragma once

#include "core/error.h"
#include "sample/sample.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct gguf_file;

/* Where a local engine computes. */
enum engine_device {
    ENGINE_DEVICE_CPU = 0,  /* the native engine */
    ENGINE_DEVICE_CUDA = 1, /* the CUDA engine, on GPU engine_config.gpu */
    ENGINE_DEVICE_AUTO = 2, /* CUDA when this build has it and a GPU answers, else the CPU */
};

/* How the final hidden states (after the output norm) of a sequence's
 * positions become one embedding. Values as GGUF's `<arch>.pooling_type`. */
enum engine_pool {
    ENGINE_POOL_NONE = 0, /* no embedding */
    ENGINE_POOL_MEAN = 1, /* the mean over every position */
    ENGINE_POOL_CLS = 2,  /* the first position's */
    ENGINE_POOL_LAST = 3, /* the last position's: a causal decoder's summary of the whole input */
};

struct engine_config {
    const char *model_path;
    enum engine_device device;
    int gpu;              /* CUDA device index */
    int n_threads;        /* compute threads, including the engine thread; 0 = one per core */
    int n_ctx;            /* max positions per sequence; 0 = the model's training context */
    int max_batch_tokens; /* tokens per step (prefill chunk budget) */
    int max_seqs;         /* sequences per step (= logit rows) */
    int kv_blocks;        /* 0 = enough for max_seqs full contexts, capped by kv_max_bytes */
    int kv_block_tokens;  /* positions per block; 0 = 16 */
    size_t kv_max_bytes;  /* cap when kv_blocks is 0; 0 = 2 GiB */
    bool logits_out;      /* return logits rows even from an engine that can sample (info.samples stays false):
                             for callers that sample themselves or read the logits (lmd run, parity tests) */
};

struct engine_info {
    const char *kind;       /* "native", "fake", "remote" … */
    const char *model_name; /* general.name */
    const char *arch;       /* general.architecture */
    int n_vocab;
    int n_ctx; /* positions per sequence */
    /* Capacity. */
    int max_batch_tokens; /* tokens per step */
    int max_seqs;         /* sequences per step; concurrent requests for a request-level engine */
    int n_threads;
    int kv_blocks;            /* blocks of K/V storage; 0 for engines without block storage */
    int kv_block_tokens;      /* positions per block */
    size_t kv_block_bytes;    /* bytes of one block */
    size_t packed_bytes;      /* weights repacked at load for prefill (native engine), on top of the file */
    int n_embd;               /* width of a pooled embedding; 0 = the engine gives none (engine_seq.pool refused) */
    enum engine_pool pooling; /* the model's pooling for embeddings (GGUF metadata, else ENGINE_POOL_LAST) */
    int token_budget; /* engines without blocks: prompt + output tokens of all sequences held at once; 0 = n_ctx x
                         max_seqs */
    /* Contract. */
    bool samples;                 /* step results are sampled tokens, not logits */
    bool request_level;           /* submit/poll/cancel instead of launch/wait */
    bool takes_api;               /* request-level: forwards API requests (engine_req.api_json) */
    bool wakes;                   /* request-level: calls engine.wake when events are ready */
    const struct gguf_file *gguf; /* for the tokenizer and chat template; NULL for remote engines */
};

struct engine_seq {
    const int32_t *tokens; /* [n_tokens] */
    int n_tokens;
    int pos;               /* position of tokens[0] */
    const int32_t *blocks; /* block table covering [0, pos + n_tokens) */
    bool want_logits;      /* an output for the last position: its logits row, or (info.samples) a token */
    /* For engines that sample, per sequence, read when want_logits: */
    struct sampler *smp; /* parameters, penalty history, RNG; the engine records the token it picks */
    int n_logprobs;      /* -1 = none; else the token's log-probability and the n most likely */
    float *out_lp;       /* [1] */
    int32_t *out_top_id; /* [n_logprobs] */
    float *out_top_lp;   /* [n_logprobs] */
    /* Embeddings (info.n_embd > 0): with pool set, the final hidden states
     * of this chunk's positions, after the output norm, go into embd, the
     * caller's accumulator, which lives across the chunks of a prefill:
     * ENGINE_POOL_MEAN adds each position's (a chunk at position 0 clears
     * it first; the caller divides), ENGINE_POOL_CLS writes position 0's,
     * ENGINE_POOL_LAST writes the chunk's last. No logits are needed for
     * that: want_logits may be false. */
    enum engine_pool pool;
    float *embd; /* [info.n_embd] */
};

/* A step's result: one row per sequence with want_logits, in batch order.
 * Owned by the engine, valid until the next launch. */
struct engine_result {
    int n_rows;
    float *logits;         /* [n_rows][n_vocab] when !info.samples (the caller may edit them), else NULL */
    const int32_t *tokens; /* [n_rows] when info.samples, else NULL */
};

/* ---- request-level engines ----------------------------------------------- */

/* One request handed to a request-level engine. The caller's memory; it
 * stays valid and unchanged until the request's finish event.
 *
 * An engine that forwards API requests (info.takes_api: a remote engine)
 * takes the OpenAI request as lmd validated it — api_path and api_json,
 * whose sampling fields, stop strings and limits it forwards — rather
 * than token ids: prompt may be NULL and n_prompt is then an estimate. */
struct engine_req {
    uint64_t id;
    const int32_t *prompt; /* [n_prompt], or NULL with an api_json */
    int n_prompt;
    int max_tokens;
    const struct sample_params *sp;
    bool ignore_eos;
    int n_logprobs;       /* -1 = none */
    const char *api_path; /* "/v1/completions" or "/v1/chat/completions"; NULL = token ids only */
    void *api_json;       /* json_t *, a JSON object: the request's fields, without model and stream, to read. The
                             engine takes references of its own (jansson counts them atomically); several requests
                             (choices) share it, and nobody changes it after submission */
    const char *api_body; /* [api_body_len] the same object as the client wrote it, less the members lmd acts on,
                             without its closing brace: what an engine sends, with its own members appended */
    size_t api_body_len;
    uint64_t deadline_ns; /* monotonic: an engine may retry elsewhere until then; 0 = no deadline */
    void *engine_data;    /* the engine's, from submit to the finish event */
};

enum engine_event_kind {
    ENGINE_EV_TOKEN = 1,  /* one output token (token, logprob) */
    ENGINE_EV_TEXT = 2,   /* output text the upstream sent without token ids (text, text_len) */
    ENGINE_EV_FINISH = 3, /* the last event of a request: finish, usage */
};

enum engine_finish {
    ENGINE_FINISH_STOP = 1,      /* end of generation */
    ENGINE_FINISH_LENGTH = 2,    /* max_tokens */
    ENGINE_FINISH_CANCELLED = 3, /* after engine_cancel */
    ENGINE_FINISH_ERROR = 4,     /* the upstream failed; err says why */
};

struct engine_event {
    struct engine_req *req;
    enum engine_event_kind kind;
    int32_t token;
    float logprob;
    const char *text; /* valid until the next poll */
    size_t text_len;
    enum engine_finish finish;
    int prompt_tokens, completion_tokens; /* usage, on ENGINE_EV_FINISH; -1 = not known */
    int status;                           /* with ENGINE_FINISH_ERROR: the HTTP status that fits (an upstream's
                                             4xx for a request it refused, 502/503/504 for its failures);
                                             0 = a failure of the engine itself */
    char err[LMD_ERR_MSG_MAX];
};

struct engine_stats {
    uint64_t steps;
    uint64_t tokens;  /* tokens forwarded */
    uint64_t step_ns; /* time between launch and the end of wait, total */
};

struct engine;

struct engine_ops {
    /* Step-level. launch checks and starts a batch; wait gives its result.
     * A launch is always followed by exactly one wait. */
    int (*launch)(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err);
    int (*wait)(struct engine *e, struct engine_result *res, struct lmd_err *err);
    /* Request-level. submit never blocks (LMD_EBUSY past max_seqs); poll
     * returns up to max events without blocking (0 = nothing new), each
     * request's in order, ENGINE_EV_FINISH last; after cancel the request
     * still ends with a finish event. */
    int (*submit)(struct engine *e, struct engine_req *rq, struct lmd_err *err);
    int (*poll)(struct engine *e, struct engine_event *ev, int max);
    void (*cancel)(struct engine *e, struct engine_req *rq);
    void (*close)(struct engine *e);
};

struct engine {
    const struct engine_ops *ops;
    struct engine_info info;
    struct engine_stats stats;
    uint64_t t_launch_ns; /* of the step in flight */
    /* Set by the driving thread before the first submit: a request-level
     * engine with info.wakes calls it (from any thread, never blocking)
     * when poll has something new, so the caller need not poll on a timer. */
    void (*wake)(void *ud);
    void *wake_ud;
    /* Request-level: how many requests it takes at once now, at most
     * info.max_seqs (a remote pool's healthy upstreams' limits added up);
     * the caller admits no more. 0 = info.max_seqs. Any thread. */
    _Atomic int seats;
};

/* Open the native CPU engine on a GGUF model. */
int engine_native_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err);

/* Open the CUDA engine (engine/cuda) on GPU cfg->gpu. LMD_ENOTSUP, with a
 * message that says so, in a build without CUDA or on a machine where no
 * GPU answers (no driver, no device). */
int engine_cuda_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err);

/* The GPUs the CUDA runtime sees, described in buf ("cuda:0 NVIDIA H200
 * (sm_90, 140 GiB)"; "none (why)"; "not built"); returns their number. */
int engine_cuda_devices(char *buf, size_t cap);

/* Open a local engine where cfg->device says: engine_native_open or
 * engine_cuda_open; ENGINE_DEVICE_AUTO takes the GPU if one answers. */
int engine_local_open(struct engine **out, const struct engine_config *cfg, struct lmd_err *err);

/* "cpu", "cuda", "cuda:N" or "auto" -> device and GPU index; -1 if not one of those. */
int engine_device_parse(const char *s, enum engine_device *dev, int *gpu);

/* A deterministic stand-in for tests: no model, a vocabulary of n_vocab
 * ids, real block storage (it stores each position's token and derives
 * its output from everything the block table holds, so wrong tables or
 * wrongly shared blocks change its output). */
struct engine_fake_config {
    int n_vocab; /* >= 2 */
    int n_ctx;
    int max_batch_tokens;
    int max_seqs;
    int kv_blocks;          /* 0 = no block storage (token budget) */
    int kv_block_tokens;    /* 0 = 16 */
    bool samples;           /* sample inside the engine */
    bool request_level;     /* submit/poll/cancel */
    uint64_t step_delay_ns; /* time a step (or a poll producing tokens) takes */
    int token_budget;       /* request-level: 0 = n_ctx x max_seqs */
};
int engine_fake_open(struct engine **out, const struct engine_fake_config *cfg, struct lmd_err *err);

/* ---- remote engines: upstream HTTP servers ------------------------------- */

/* What an upstream is: how to call it, check it, and read its load. */
enum remote_kind {
    REMOTE_AUTO = 0,   /* learned from its /v1/models (owned_by), else openai */
    REMOTE_OPENAI = 1, /* any OpenAI-compatible server */
    REMOTE_LMD = 2,
    REMOTE_LLAMACPP = 3, /* llama.cpp's llama-server */
    REMOTE_VLLM = 4,
    REMOTE_SGLANG = 5,
    REMOTE_OLLAMA = 6,
};

enum remote_route {
    REMOTE_ROUTE_TTFT = 0,  /* the smallest predicted time to first token */
    REMOTE_ROUTE_LEAST = 1, /* the fewest requests in flight */
    REMOTE_ROUTE_RR = 2,    /* round robin */
};

#define REMOTE_MAX_BACKENDS 16

struct remote_backend_config {
    char url[256];    /* [KIND+]SCHEME://HOST:PORT[/PREFIX], SCHEME http, https, h2c or h2 */
    int max_inflight; /* requests at once; 0 = the pool's default */
};

struct remote_config {
    const char *name;           /* the pool's model id, for messages and metrics */
    const char *upstream_model; /* the `model` sent upstream; NULL = name (or what /v1/models lists) */
    const char *api_key;        /* Authorization: Bearer for every upstream; NULL = none */
    const char *ca_file;        /* PEM CAs that https upstreams' certificates are checked against; NULL = the
                                   system's */
    struct remote_backend_config backends[REMOTE_MAX_BACKENDS];
    int n_backends;
    int max_inflight; /* per backend when it sets none; 0 = 8 */
    int n_ctx;        /* tokens per request the pool admits (prompt estimate + max_tokens); 0 = 32768 */
    enum remote_route route;
    int health_ms;      /* active health checks: interval; 0 = 2000 */
    int timeout_ms;     /* connect and first-byte timeout (retried within the deadline); 0 = 10000 */
    int io_timeout_ms;  /* longest silence of a streaming upstream; 0 = 120000 */
    int fail_threshold; /* consecutive failures that eject a backend; 0 = 2 */
    int max_retries;    /* other backends tried before the first byte; 0 = 2, -1 = none */
    bool discovered;    /* the list comes from discovery (engine_remote_set_upstreams): it may start empty */
};

/* Open a remote engine over a pool of upstream servers: one event-loop
 * thread of its own holds their sockets (HTTP/1.1 keep-alive, or one HTTP/2
 * connection per upstream for h2c:// and h2:// URLs). Parses the
 * URLs (LMD_EINVAL with a message); reaching them is not required to open. */
int engine_remote_open(struct engine **out, const struct remote_config *cfg, struct lmd_err *err);
/* Replace the pool's list of upstreams (a reload): kept ones keep their
 * state, new ones are probed and take traffic, dropped ones finish what
 * they serve and go. Any thread; applied on the engine's loop shortly
 * after. LMD_EINVAL for a bad or repeated URL (nothing changes). */
int engine_remote_set_upstreams(struct engine *e, const struct remote_backend_config *list, int n, struct lmd_err *err);
/* Parse "[KIND+]SCHEME://HOST:PORT[/PREFIX]" (for configuration checks);
 * SCHEME is http, https (TLS), h2c (HTTP/2 in clear, prior knowledge) or
 * h2 (HTTP/2 over TLS, ALPN). The port comes back negative for TLS. */
int remote_url_parse(const char *url, enum remote_kind *kind, char *host, size_t host_cap, int *port, char *prefix,
                     size_t prefix_cap, struct lmd_err *err);
/* The URL (one remote_url_parse accepts) asks for HTTP/2: h2c:// or h2://. */
bool remote_url_h2(const char *url);
const char *remote_kind_name(enum remote_kind k);

/* Turn a pooled accumulator (engine_seq.embd after the last chunk of
 * n_tokens positions) into the embedding: the mean's division, then L2
 * normalization (a zero vector stays zero). */
void engine_embd_finish(float *v, int n, enum engine_pool pool, int n_tokens);

int engine_launch(struct engine *e, const struct engine_seq *seqs, int n_seqs, struct lmd_err *err);
int engine_wait(struct engine *e, struct engine_result *res, struct lmd_err *err);
/* launch + wait, for engines that return logits: *logits [n_rows][n_vocab]. */
int engine_step(struct engine *e, const struct engine_seq *seqs, int n_seqs, const float **logits, struct lmd_err *err);
int engine_submit(struct engine *e, struct engine_req *rq, struct lmd_err *err);
int engine_poll(struct engine *e, struct engine_event *ev, int max);
void engine_cancel(struct engine *e, struct engine_req *rq);
void engine_close(struct engine *e);
