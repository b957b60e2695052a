/*
 * Internals shared by the files of api/: request parameters and their
 * parser (params.c), text helpers — JSON string escaping, stop-string
 * matching, a growable byte buffer (text.c) — and error bodies.
 * Not for other subsystems.
 */
#pragma once

#include "api/api.h"
#include "api/chat_template.h"
#include "core/error.h"
#include "http/http.h"
#include "qos/qos.h"
#include "sample/sample.h"

#include "core/buf.h"
#include <stdbool.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Response text is built in core's growable buffer (core/buf.h). Per-request
 * buffers are reset, not freed, between tokens, so they grow to the largest
 * burst and then stop allocating. */

/* Append s as the inside of a JSON string (no quotes). */
int api_buf_json_escape(struct lmd_buf *b, const char *s, size_t n);
/* Copy a JSON object that jansson has validated, without its top-level
 * members named in drop, and without its closing brace (the caller adds
 * members and closes it): "{a,b" from "{a,x,b}". Keys are compared as
 * written (a key spelled with escapes is kept). No allocation per member;
 * LMD_EINVAL when s is not an object. */
int api_json_splice(struct lmd_buf *out, const char *s, size_t n, const char *const *drop, int n_drop);
/* Whether s[0, n) is valid UTF-8. */
bool api_utf8_valid(const char *s, size_t n);
/* Replace every byte of s (NUL-terminated) that is not part of a valid UTF-8
 * sequence with '?', in place. */
void api_utf8_scrub(char *s);
/* Append one token's text as a JSON string (with quotes): as it is when it
 * is valid UTF-8, else OpenAI's spelling of partial characters,
 * "bytes:\\xe2\\x80". */
int api_buf_json_token(struct lmd_buf *b, const char *s, size_t n);

/* An error answer in OpenAI's shape: {"error":{"message","type","param","code"}}. */
struct api_error {
    int status;        /* HTTP status */
    const char *type;  /* "invalid_request_error", "not_found_error" … */
    const char *param; /* the offending field, or NULL */
    const char *code;  /* machine-readable code, or NULL */
    char msg[320];
};

int api_error_set(struct api_error *e, int status, const char *type, const char *param, const char *code,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The error as a JSON body (malloc'd, NUL-terminated); NULL on OOM. */
char *api_error_json(const struct api_error *e, size_t *len);

enum api_kind {
    API_COMPLETION = 0,
    API_CHAT = 1,
};

#define API_MAX_STOP 4
#define API_MAX_N 16             /* choices per request */
#define API_MAX_BIAS 1024        /* logit_bias entries */
#define API_MAX_TOP_CHAT 20      /* chat top_logprobs */
#define API_MAX_TOP_COMPLETION 5 /* completions logprobs */

/* response_format's type. */
enum api_rf_kind {
    API_RF_NONE = 0,
    API_RF_TEXT = 1,
    API_RF_JSON_OBJECT = 2,
    API_RF_JSON_SCHEMA = 3,
};

struct gram;

/* tool_choice (tools.c). */
enum api_tool_choice {
    API_TC_AUTO = 0, /* the model may call a tool: calls in the output are parsed */
    API_TC_NONE,     /* no tool is called: tools are not shown to the template, nothing is parsed */
    API_TC_REQUIRED, /* at least one call, enforced by a grammar */
    API_TC_NAMED,    /* exactly one call of tool_name, enforced by a grammar */
};

/* How a model's chat template asks for tool calls, read from the
 * template's source (api_tools_detect). */
enum api_tool_syntax {
    API_TOOLS_NONE = 0, /* the template does not render tools */
    API_TOOLS_HERMES,   /* <tool_call>{"name":…,"arguments":…}</tool_call> (Hermes, Qwen 2.5/3) */
    API_TOOLS_LLAMA3,   /* a bare {"name":…,"parameters":…} (Llama 3.1/3.2/3.3) */
    API_TOOLS_MISTRAL,  /* [TOOL_CALLS][{"name":…,"arguments":…}, …] (Mistral) */
    API_TOOLS_UNKNOWN,  /* renders tools, in a call syntax lmd does not parse */
    API_TOOLS_RELAY,    /* an upstream's tool_calls as the remote engine writes them into the text */
};

/* The API a generation request came through. Responses and Messages
 * requests are translated into a chat request (responses.c, messages.c),
 * run exactly as one, and only rendered in their own shapes. */
enum api_dialect {
    API_DIALECT_OPENAI = 0,    /* /v1/completions, /v1/chat/completions */
    API_DIALECT_RESPONSES = 1, /* OpenAI's /v1/responses */
    API_DIALECT_MESSAGES = 2,  /* Anthropic's /v1/messages */
};

/* One parsed request. Strings point into the parsed JSON document, which
 * the caller keeps (`doc`) until it has copied what it needs. */
struct api_params {
    enum api_kind kind;
    void *doc;         /* json_t *, the parsed body */
    const char *model; /* NULL = not given */
    /* completion prompt: text, or token ids */
    const char *prompt;
    size_t prompt_len;
    int32_t *prompt_ids; /* [n_prompt_ids] malloc'd, or NULL */
    int n_prompt_ids;
    /* chat */
    struct chat_msg *msgs; /* [n_msgs] malloc'd */
    int n_msgs;
    int max_tokens; /* -1 = not given */
    struct sample_params sp;
    bool seed_set;
    const char *stop[API_MAX_STOP];
    size_t stop_len[API_MAX_STOP];
    int n_stop;
    bool stream;
    bool include_usage;
    int n;                    /* choices, [1, API_MAX_N] */
    int logprobs;             /* -1 = off; else how many top alternatives per token */
    struct sample_bias *bias; /* [n_bias] malloc'd; ids not yet checked against the vocabulary */
    int n_bias;
    bool echo;            /* completions: the prompt text comes first */
    bool ignore_eos;      /* generate through end-of-generation tokens */
    const char *priority; /* service class by name, or NULL */
    size_t priority_len;
    int64_t priority_num;       /* vLLM's integer priority (lower = more urgent), mapped by the priority map */
    bool priority_num_set;      /* priority_num was given */
    const char *cache_salt;     /* vLLM's cache_salt: a prefix-cache namespace within the tenant's, or NULL */
    bool add_generation_prompt; /* chat: open the assistant's turn (default true) */
    bool has_template_kwargs;   /* chat: a non-empty chat_template_kwargs object was given */
    size_t cache_salt_len;
    /* Structured output. */
    enum api_rf_kind rf_kind;
    const void *rf_schema;    /* json_t *: response_format.json_schema.schema, or NULL (any JSON value) */
    const char *grammar_text; /* the `grammar` field (GBNF), or NULL */
    size_t grammar_len;
    struct gram *grammar; /* compiled by api_structured_compile; owned here until a call takes it */
    /* Tools (chat). */
    const void *tools; /* json_t *: the validated `tools` list, or NULL when absent or empty */
    int n_tools;
    enum api_tool_choice tool_choice;
    const char *tool_name;    /* API_TC_NAMED: the function to call */
    bool parallel_tool_calls; /* default true */
    /* Responses and Messages: the dialect and what its response echoes. */
    enum api_dialect dialect;
    char *echo_json; /* JSON members (",\"metadata\":{…}…") for the response object; malloc'd, or NULL */
};

/* Read `tools`, `tool_choice` and `parallel_tool_calls` into p (tools.c):
 * shape, names and the choice's target are checked here; whether the
 * model can render and parse them is api_tools_check's. */
int api__tools_parse(struct api_params *p, void *root, struct api_error *e);
/* The tool-call syntax a template's source asks for. */
enum api_tool_syntax api_tools_detect(const char *src, size_t len);
const char *api_tools_syntax_name(enum api_tool_syntax s);
/* Whether p's tools can be served on a model with syntax s (family: the
 * built-in template family's name when the model has no template of its
 * own, else NULL); for required or named choice, compiles the grammar
 * that forces a call into p->grammar. 400 naming the field otherwise. */
int api_tools_check(struct api_params *p, enum api_tool_syntax s, const char *family, struct api_error *e);
/* Parse a model's output text[0, len) for tool calls in syntax s, keeping
 * only calls of the functions in names[n_names]. On success returns a
 * json_t * array of {"name": string, "arguments": JSON text string} (the
 * caller's) and sets *content_len to the length of the text before the
 * first call; NULL when the text holds no well-formed call (it is all
 * content then). Never fails on malformed text. */
void *api_tools_extract(enum api_tool_syntax s, const char *text, size_t len, const char *const *names, int n_names,
                        size_t *content_len);
/* Where a tool call may start in text[0, len): the offset of the first
 * byte that could begin one (so text before it is plain content), len
 * when none can. *sure is set when a whole opening marker is there. */
size_t api_tools_scan(enum api_tool_syntax s, const char *text, size_t len, bool at_start, bool *sure);

/* How a Responses or Messages call renders what it produced. */
struct api_dialect_end {
    const char *text; /* the whole output text */
    size_t text_len;
    bool length;          /* cut by the token budget */
    const char *stop_seq; /* the stop string that ended it, or NULL */
    size_t stop_seq_len;
    int n_prompt, n_gen; /* tokens */
    /* json_t * array of the tool calls that followed text (each
     * {"name", "arguments": JSON text, "id": "call_…"}), or NULL. */
    const void *calls;
};

/* The rendering state of one Responses or Messages call. */
struct api_dialect_out {
    const char *id;         /* resp_… or msg_… */
    const char *model_json; /* the model id, escaped for JSON */
    long created;           /* s */
    const char *echo;       /* api_params.echo_json's copy, or NULL */
    int seq;                /* Responses: the next event's sequence_number */
    bool opened;            /* streamed: the text item (block) was opened, on its first text */
};

/* One dialect's renderer: the opening events of a stream, one text delta,
 * the closing events, the whole non-streamed body, and a failure (as the
 * stream's last events, or as the error body). Each appends to b. */
struct api_dialect_ops {
    const char *path; /* for the access log */
    void (*stream_begin)(struct lmd_buf *b, struct api_dialect_out *d, int n_prompt);
    void (*stream_text)(struct lmd_buf *b, struct api_dialect_out *d, const char *s, size_t n);
    void (*stream_end)(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end);
    void (*body)(struct lmd_buf *b, struct api_dialect_out *d, const struct api_dialect_end *end);
    void (*stream_error)(struct lmd_buf *b, struct api_dialect_out *d, const struct api_error *e);
};
extern const struct api_dialect_ops api_responses_ops;
extern const struct api_dialect_ops api_messages_ops;

/* Translate a Responses (responses.c) or Messages (messages.c) body into
 * the chat completions body that runs it: *chat (malloc'd JSON text) and
 * *echo (malloc'd, the members its answer echoes, or NULL). A field lmd
 * cannot honour, or a malformed one, is a 400 naming it in the dialect's
 * own spelling. */
int api_responses_translate(const char *body, size_t len, char **chat, char **echo, struct api_error *e);
int api_messages_translate(const char *body, size_t len, char **chat, char **echo, struct api_error *e);
/* The two translations' common steps. api__text_parts: content that is a
 * string (a new reference to it) or a list of parts whose "type" is one of
 * types (NULL-terminated) and whose "text" strings are joined into one new
 * string; anything else is a 400 on field naming what ("input[2].content")
 * and, for a part of another type, saying only (what is supported).
 * api__add_msg appends {"role", "content"} to msgs, taking content (which
 * may be NULL: an earlier failure, reported as out of memory). Both return
 * NULL or nonzero having set e. */
struct json_t;
struct json_t *api__text_parts(struct json_t *content, const char *field, const char *what, const char *const *types,
                               const char *only, struct api_error *e);
int api__add_msg(struct json_t *msgs, const char *role, struct json_t *content, struct api_error *e);
/* An error in Anthropic's shape: {"type":"error","error":{"type","message"}},
 * the type from the HTTP status (malloc'd, NUL-terminated; NULL on OOM). */
char *api_messages_error_json(const struct api_error *e, size_t *len);

/* Render a chat request (p->doc) with m's Jinja template (m->chat_jinja),
 * appending the prompt text to out. A template's raise_exception and any
 * failure the conversation causes are 400 naming the message. */
int api__chat_jinja(const struct api_model *m, const struct api_params *p, struct lmd_buf *out, struct api_error *e);

/* Compile p's response_format or grammar into p->grammar (left NULL when
 * the output is free text). A schema or grammar lmd cannot enforce is a
 * 400 naming the field and the keyword (schema.c). */
int api_structured_compile(struct api_params *p, struct api_error *e);

/* Parse and validate a request body. On failure fills e (status 400 with
 * the field named) and returns LMD_EINVAL; api_params_free is safe either
 * way. */
int api_params_parse(struct api_params *p, enum api_kind kind, const char *body, size_t len, struct api_error *e);
void api_params_free(struct api_params *p);
/* Fields the native engine does not implement whose absence would change
 * the answer (fields.c): LMD_EINVAL and a 400 naming the first one given
 * with a non-neutral value; 0 otherwise. doc is the parsed body (json_t *).
 * Not applied to models that forward requests: their upstreams may
 * implement these. */
int api_fields_refuse(void *doc, enum api_kind kind, struct api_error *e);

/* Stop strings: the offset of the earliest match of any of them in
 * text[0, len), or -1. */
long api_stop_find(const char *text, size_t len, const char *const *stop, const size_t *stop_len, int n_stop);
/* How many trailing bytes of text must be held back because they could be
 * the start of a stop string completed by later text. */
size_t api_stop_holdback(const char *text, size_t len, const char *const *stop, const size_t *stop_len, int n_stop);

/* One served model, its strings owned by the api (copies of api_model's). */
struct api__model {
    struct api_model m;               /* every string points at a copy owned here; sched and vocab are the caller's */
    int index;                        /* in api.models and in obs's model labels */
    char *id_json;                    /* the id escaped for JSON strings */
    char **names;                     /* [1 + m.n_aliases] the id, then the aliases: what m's pointers point at */
    char *strs[4];                    /* copies of display_name, arch, engine, owned_by (or NULL) */
    enum api_tool_syntax tool_syntax; /* from its chat template's source */
};

/* The process-wide API state (api.h's opaque struct api). */
struct api_call;
struct api_job;
struct api {
    struct api_config cfg;     /* cfg.models points at nothing: use models */
    struct api__model *models; /* [n_models] */
    int n_models;
    long created; /* s, start-up time, for /v1/models */
    _Atomic bool draining;
    _Atomic int active; /* calls not yet freed */
    _Atomic uint64_t seq;
    /* Generation calls alive, for /debug/requests: linked on submission,
     * unlinked when freed; the mutex is held for those two moves and for
     * one rendering, never across model work. */
    pthread_mutex_t live_mu;
    struct api_call *live;
    /* The prep workers (prep.c): chat templates, tokenizing and /tokenize
     * run there, never on an I/O thread. A FIFO of jobs, the mutex held
     * only to link and unlink them. */
    pthread_t *prep_threads; /* [n_prep] */
    int n_prep;              /* threads started */
    pthread_mutex_t prep_mu;
    pthread_cond_t prep_cv;
    struct api_job *prep_head, *prep_tail; /* guarded by prep_mu */
    int prep_queued;                       /* jobs in the FIFO; guarded by prep_mu */
    int prep_max_queued;                   /* the FIFO's bound: past it, 503 */
    bool prep_stop;                        /* guarded by prep_mu */
};

/*
 * A request's trip through a prep worker and back to its I/O thread
 * (prep.c): the I/O thread validates the body (cheap), queues a job, and
 * returns; a worker does the long CPU work (run); the request's I/O
 * thread then continues with the result (done) and frees the job. A
 * concrete job embeds this as its first member.
 *
 * A client that leaves meanwhile costs no use-after-free and no leak: the
 * request's disposal (or, on HTTP/1.1, its hang-up) marks the job gone,
 * the worker skips run if it has not started it, and done is still called
 * on the I/O thread, with r NULL once the request is disposed.
 */
struct api_job;
struct api_job_ops {
    /* A prep worker: the work. Not called when the client left first. */
    void (*run)(struct api_job *j);
    /* The request's I/O thread, after run (or instead of it): r is the
     * request, handed back (its on_close and disconnect watch are
     * cleared), or NULL when it was disposed; j->gone says the client
     * left. The job is freed after done returns. */
    void (*done)(struct api_job *j, struct http_req *r);
    /* Release the job and all it holds (also, at shutdown, a job that never ran). */
    void (*free)(struct api_job *j);
};
struct api_job {
    const struct api_job_ops *ops;
    struct http_task task; /* done, run on the request's I/O thread */
    struct api_job *next;  /* the workers' FIFO */
    struct api *a;
    struct http_req *r; /* NULL once the request is disposed (I/O thread only) */
    struct http_loop *loop;
    _Atomic bool gone; /* the client left: the worker may skip the work */
};
/* Queue j (ops set, the rest filled here) for r. 0, or LMD_EBUSY when
 * the FIFO is full: then nothing is queued, the job is still the caller's,
 * and the caller answers 503 (api__prep_busy's error). */
int api__prep_queue(struct api *a, struct api_job *j, struct http_req *r);
/* The access line and count (499, "cancelled") of a request whose client
 * left while it was in prep: nobody hears the answer, but it happened. */
void api__log_gone(const char *rid, const char *path, const struct api__model *m, int cls, int tenant);
/* The 503 of a full FIFO, counted as a queue_full refusal of tenant. */
void api__prep_busy(struct api *a, struct api_error *e, int tenant);
/* Start the workers (api_init) and stop them (api_free: after the HTTP
 * server is gone; jobs never taken are freed). */
int api_prep_start(struct api *a, int n_threads, struct lmd_err *err);
void api_prep_stop(struct api *a);

/* Completion ids and X-Request-Id values: at most this long, NUL included. */
#define API_ID_MAX 72

/* Who a generation request is for and what it was admitted with. */
struct api_who {
    int tenant;               /* qos tenant index */
    int cls;                  /* service class index */
    struct qos_ticket ticket; /* QOS_TICKET_QUEUED once admitted */
    char rid[API_ID_MAX];     /* the X-Request-Id sent back, for logs */
    /* ns, monotonic: when the request arrived, before its prep, so that
     * the time it waited for a prep worker counts towards its deadline
     * and its queue time, TTFT and latency; 0 = when it is submitted. */
    uint64_t t_arrival_ns;
};

struct api_call;

/* Answers (routes.c). Errors carry OpenAI's body; hname/hvalue add one
 * header (both may be NULL). */
void api_send_error(struct http_req *r, const struct api_error *e, const char *hname, const char *hvalue);

/* A generation call (call.c): build the call for a validated request,
 * submit its n choices to model m's scheduler and answer from then on. Takes
 * ownership of ids ([n_prompt] malloc'd; freed on failure too) and of
 * p->grammar (the caller clears its pointer after the call, either way). On failure
 * fills e and returns non-zero, having answered nothing: the caller sends e.
 * `id` is the completion id (also the X-Request-Id unless the client sent
 * its own). */
int api_call_submit(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                    int32_t *ids, int n_prompt, int max_tokens, const char *id, struct api_who *who,
                    struct api_error *e);
/* The same for a model whose engine forwards API requests: `body` (a
 * json_t * reference) and `raw` (malloc'd, api_json_splice's bytes), the
 * call's from now on and released on failure too, go to the engine as
 * they are; n_prompt is an estimate until the engine's usage. */
int api_call_forward(struct api *a, const struct api__model *m, struct http_req *r, const struct api_params *p,
                     void *body, char *raw, size_t raw_len, int n_prompt, int max_tokens, const char *id,
                     struct api_who *who, struct api_error *e);
/* GET /debug/requests: the live calls as JSON into b. */
int api_calls_render(struct api *a, struct lmd_buf *b);

/* The service class of a generation request (priority.c): the body's
 * `priority` (a class name, or an integer through the priority map), else
 * X-Priority (either form), else X-SLA (a name), else the tenant's
 * default. A class that does not exist or that the tenant may not use
 * fills e (400 or 403) and *reason, and returns a negative LMD_E*. */
int api_pick_class(struct api *a, struct http_req *r, const struct api_params *p, int tenant, struct api_error *e,
                   enum obs_reject *reason);

/* Whether tenant may use model m (by its id or any alias). */
bool api_model_allowed(const struct qos *q, int tenant, const struct api_model *m);

/* Submit n scheduler requests all or nothing (call.c): the first at base,
 * the next each `stride` bytes on (the sched_req first in each item).
 * On failure the ones already queued are withdrawn, every request's HTTP
 * side reference is dropped (sched_req_unref, which may free their owner),
 * and e says why: 503 for a full queue, a drain or a deadline that cannot
 * be met (each counted as the tenant's refusal), 501 for an engine that
 * cannot serve the kind, 500 for memory, else 400 naming `param` with the
 * scheduler's message (prefixed "item[i]: " when item is not NULL). */
struct sched;
struct sched_req;
int api__submit_all(struct sched *s, struct sched_req *base, size_t stride, int n, int tenant, const char *param,
                    const char *item, struct api_error *e);

/* A generation request validated on its I/O thread (routes.c), continued
 * through a prep worker (prep.c): its structured output is compiled, its
 * chat template rendered and its prompt tokenized there, then, back on
 * the I/O thread, it is admitted and submitted (api_call_submit). Takes
 * p (its document, arrays and grammar; *p is cleared either way). On
 * failure it has answered the request and logged it. */
void api__prep_generate(struct api *a, struct http_req *r, const struct api__model *m, struct api_params *p,
                        const char *id, struct api_who *who);

/* The checks of a POST body before it is read (routes.c), shared by
 * generation and /v1/embeddings: 413 for a body over --max-body, then 503
 * while draining (counted as tenant's refusal, with Retry-After: 1 in
 * hname/hvalue). 0 when the request may go on; else -1 with e filled for
 * the caller to send. */
int api__check_body(struct api *a, struct http_req *r, int tenant, struct api_error *e, const char **hname,
                    const char **hvalue);

/* POST /tokenize or /detokenize (tokenize.c) for an authenticated tenant:
 * answered later, from the worker's result, on r's I/O thread. */
void api_tok_route(struct api *a, struct http_req *r, bool detokenize, int tenant, const char *rid);
/* POST /v1/embeddings (embed.c) for an authenticated tenant: validates,
 * tokenizes, admits and queues every input; answers when all are pooled.
 * It logs its access line. */
void api_embd_route(struct api *a, struct http_req *r, int tenant, const char *rid);
/* The admission refusal of qos_admit as an API error, with its Retry-After
 * header in hname/hvalue (retry is the value's storage). */
struct qos_refusal;
void api_admit_error(struct api_error *e, const struct qos_refusal *why, char *retry, size_t retry_cap,
                     const char **hname, const char **hvalue);
/* The access-log line and lmd_requests_total for a generation request
 * answered without reaching the scheduler (an error or refusal); m is the
 * model it was routed to, NULL when none was chosen yet. */
void api_log_refusal(struct api *a, struct http_req *r, const char *id, int status, const struct api__model *m, int cls,
                     int tenant);
