/*
 * POST /tokenize and /detokenize, in llama-server's shapes
 * ({"content": ...} -> {"tokens": [...]}, {"tokens": [...]} ->
 * {"content": ...}) and vLLM's ({"prompt": ...} -> {"count",
 * "max_model_len", "tokens", "token_strs"}, {"tokens": [...]} ->
 * {"prompt": ...}).
 *
 * A body may hold megabytes of text, and tokenizing that takes a second
 * or more; an I/O thread must never be held that long (every connection on
 * it would stall). So the I/O thread only checks who is asking and copies
 * the body; a prep worker (prep.c) parses, tokenizes and writes the answer,
 * which the request's I/O thread sends if the client is still there.
 *
 * Not here: generation (routes.c, call.c), the tokenizer itself.
 */
#include "api/api.h"
#include "api/api_int.h"

#include "http/http.h"
#include "obs/obs.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum tok_kind {
    TOK_TOKENIZE = 0,
    TOK_DETOKENIZE = 1,
};

/* One request's trip to a prep worker and back (prep.c owns the trip). */
struct tok_job {
    struct api_job job; /* first */
    enum tok_kind kind;
    int tenant;
    char *body; /* [body_len] the request body, copied: the request may go while the worker reads */
    size_t body_len;
    int status; /* the answer */
    struct lmd_buf out;
    char rid[API_ID_MAX];
    char path[16]; /* "/tokenize" or "/detokenize", for the access log */
};

/* The access line: logged before the answer goes out, since sending it may
 * dispose the request. */
static void log_access(const char *rid, const char *path, int status, int tenant)
{
    struct obs_access acc = {
        .id = rid,
        .method = "POST",
        .path = path,
        .status = status,
        .cls = -1,
        .tenant = tenant,
        .queue_s = -1,
        .ttft_s = -1,
        .e2e_s = -1,
    };
    obs_access_log(&acc);
}

/* ---- the worker's side ------------------------------------------------------ */

#define BAD(e, field, ...) api_error_set(e, 400, "invalid_request_error", field, NULL, __VA_ARGS__)

static int get_flag(json_t *o, const char *k, bool *out, struct api_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return BAD(e, k, "'%s' must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

/* The model a body names (or the only one), checked against the tenant. */
static const struct api__model *pick_model(struct api *a, json_t *root, int tenant, struct api_error *e)
{
    json_t *mv = json_object_get(root, "model");
    const struct api__model *m = NULL;
    if (mv && !json_is_null(mv)) {
        if (!json_is_string(mv)) {
            BAD(e, "model", "'model' must be a string");
            return NULL;
        }
        int mi = api_model_find(a, json_string_value(mv), json_string_length(mv));
        if (mi < 0) {
            api_error_set(e, 404, "invalid_request_error", "model", "model_not_found",
                          "the model '%.128s' does not exist", json_string_value(mv));
            return NULL;
        }
        m = &a->models[mi];
    } else if (a->n_models > 1) {
        api_error_set(e, 400, "invalid_request_error", "model", "model_required",
                      "'model' is required: this server serves %d models", a->n_models);
        return NULL;
    } else {
        m = &a->models[0];
    }
    if (!api_model_allowed(a->cfg.qos, tenant, &m->m)) {
        api_error_set(e, 403, "permission_error", "model", "model_not_allowed",
                      "the model '%s' is not allowed for this API key", m->m.id);
        return NULL;
    }
    if (!m->m.vocab) {
        api_error_set(e, 400, "invalid_request_error", "model", "unsupported_parameter",
                      "the model '%s' is served by upstream servers; lmd has no tokenizer for it", m->m.id);
        return NULL;
    }
    return m;
}

/* One piece as llama-server writes it: a string when the bytes are valid
 * UTF-8, else the list of byte values. */
static int put_piece(struct lmd_buf *b, const char *s, size_t n)
{
    if (api_utf8_valid(s, n)) {
        int rc = lmd_buf_append(b, "\"", 1);
        rc = rc ? rc : api_buf_json_escape(b, s, n);
        return rc ? rc : lmd_buf_append(b, "\"", 1);
    }
    int rc = lmd_buf_append(b, "[", 1);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = lmd_buf_printf(b, "%s%u", i ? "," : "", (unsigned char)s[i]);
    return rc ? rc : lmd_buf_append(b, "]", 1);
}

static int do_tokenize(struct tok_job *j, json_t *root, const struct api__model *m, struct api_error *e)
{
    json_t *content = json_object_get(root, "content"), *prompt = json_object_get(root, "prompt");
    bool llama = content && !json_is_null(content);
    bool vllm = prompt && !json_is_null(prompt);
    json_t *msgs = json_object_get(root, "messages");
    if (msgs && !json_is_null(msgs))
        return api_error_set(e, 400, "invalid_request_error", "messages", "unsupported_parameter",
                             "'messages' (a chat to tokenize) is not supported by /tokenize; send the text as "
                             "'content' or 'prompt'");
    if (llama && vllm)
        return BAD(e, "prompt", "give 'content' (llama-server's field) or 'prompt' (vLLM's), not both");
    if (!llama && !vllm)
        return BAD(e, "content", "'content' (or vLLM's 'prompt') is required: the text to tokenize");
    json_t *text = llama ? content : prompt;
    const char *field = llama ? "content" : "prompt";
    if (!json_is_string(text))
        return BAD(e, field, "'%s' must be a string", field);
    /* llama-server adds no BOS unless asked; vLLM adds it unless told not
     * to. Either spelling is read in either shape. */
    bool add = !llama, parse_special = true, with_pieces = false, strs = false;
    if (get_flag(root, "add_special", &add, e) || get_flag(root, "add_special_tokens", &add, e) ||
        get_flag(root, "parse_special", &parse_special, e) || get_flag(root, "with_pieces", &with_pieces, e) ||
        get_flag(root, "return_token_strs", &strs, e))
        return LMD_EINVAL;

    const struct tok_vocab *v = m->m.vocab;
    const char *src = json_string_value(text);
    size_t len = json_string_length(text);
    struct lmd_err err = {0};
    /* At most one token per byte plus specials, except byte fallback (see
     * build_prompt in routes.c): retry at the size the tokenizer asks for. */
    size_t cap = len + 4;
    int32_t *ids = malloc(cap * sizeof *ids);
    int64_t n = ids ? tok_encode(v, src, len, add, parse_special, ids, cap, &err) : LMD_ENOMEM;
    if (n > (int64_t)cap) {
        cap = (size_t)n;
        int32_t *more = realloc(ids, cap * sizeof *ids);
        n = more ? tok_encode(v, src, len, add, parse_special, more, cap, &err) : LMD_ENOMEM;
        ids = more ? more : ids;
    }
    if (n < 0 || n > (int64_t)cap) {
        free(ids);
        if (n == LMD_ENOMEM)
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return BAD(e, field, "cannot tokenize the text: %s", err.msg);
    }
    struct lmd_buf *b = &j->out;
    int rc = 0;
    if (vllm)
        rc = lmd_buf_printf(b, "{\"count\":%lld,\"max_model_len\":%d,\"tokens\":[", (long long)n, m->m.n_ctx);
    else
        rc = lmd_buf_append(b, "{\"tokens\":[", 11);
    char piece[256];
    for (int64_t i = 0; i < n && rc == 0; i++) {
        if (!with_pieces || vllm) {
            rc = lmd_buf_printf(b, "%s%d", i ? "," : "", ids[i]);
            continue;
        }
        size_t pl = tok_piece(v, ids[i], true, piece, sizeof piece);
        if (pl > sizeof piece)
            pl = sizeof piece; /* no piece is this long in any real vocabulary */
        rc = lmd_buf_printf(b, "%s{\"id\":%d,\"piece\":", i ? "," : "", ids[i]);
        rc = rc ? rc : put_piece(b, piece, pl);
        rc = rc ? rc : lmd_buf_append(b, "}", 1);
    }
    rc = rc ? rc : lmd_buf_append(b, "]", 1);
    if (vllm && rc == 0) {
        if (!strs) {
            rc = lmd_buf_append(b, ",\"token_strs\":null", 18);
        } else {
            rc = lmd_buf_append(b, ",\"token_strs\":[", 15);
            for (int64_t i = 0; i < n && rc == 0; i++) {
                const char *t = tok_token_text(v, ids[i]);
                rc = lmd_buf_append(b, i ? ",\"" : "\"", i ? 2 : 1);
                rc = rc ? rc : api_buf_json_escape(b, t ? t : "", t ? tok_token_len(v, ids[i]) : 0);
                rc = rc ? rc : lmd_buf_append(b, "\"", 1);
            }
            rc = rc ? rc : lmd_buf_append(b, "]", 1);
        }
    }
    rc = rc ? rc : lmd_buf_append(b, "}", 1);
    free(ids);
    return rc ? api_error_set(e, 500, "server_error", NULL, NULL, "out of memory") : 0;
}

static int do_detokenize(struct tok_job *j, json_t *root, const struct api__model *m, struct api_error *e)
{
    json_t *toks = json_object_get(root, "tokens");
    if (!toks || json_is_null(toks))
        return BAD(e, "tokens", "'tokens' is required: a list of token ids");
    if (!json_is_array(toks))
        return BAD(e, "tokens", "'tokens' must be a list of token ids");
    const struct tok_vocab *v = m->m.vocab;
    const int n_vocab = tok_n_vocab(v);
    size_t i;
    json_t *t;
    json_array_foreach(toks, i, t)
    {
        if (!json_is_integer(t))
            return BAD(e, "tokens", "tokens[%zu] must be an integer token id", i);
        json_int_t id = json_integer_value(t);
        if (id < 0 || id >= n_vocab)
            return BAD(e, "tokens", "tokens[%zu] is %lld, outside the vocabulary (token ids 0 to %d)", i, (long long)id,
                       n_vocab - 1);
    }
    /* The same detokenizer as generation, rendering control tokens as
     * llama-server does; the text is valid UTF-8 whatever the ids. */
    struct lmd_buf text = {0};
    size_t bound = tok_detok_bound(v);
    char *step = malloc(bound);
    int rc = step ? 0 : LMD_ENOMEM;
    struct tok_detok d;
    tok_detok_init(&d, v, true);
    json_array_foreach(toks, i, t)
    {
        if (rc)
            break;
        size_t k = tok_detok_push(&d, (int32_t)json_integer_value(t), step, bound);
        rc = lmd_buf_append(&text, step, k);
    }
    if (rc == 0) {
        size_t k = tok_detok_flush(&d, step, bound);
        rc = lmd_buf_append(&text, step, k);
    }
    free(step);
    /* llama-server answers "content", vLLM "prompt": both, so that either
     * client finds its field. */
    struct lmd_buf *b = &j->out;
    const char *s = text.ptr ? text.ptr : "";
    rc = rc ? rc : lmd_buf_append(b, "{\"content\":\"", 12);
    rc = rc ? rc : api_buf_json_escape(b, s, text.len);
    rc = rc ? rc : lmd_buf_append(b, "\",\"prompt\":\"", 12);
    rc = rc ? rc : api_buf_json_escape(b, s, text.len);
    rc = rc ? rc : lmd_buf_append(b, "\"}", 2);
    lmd_buf_free(&text);
    return rc ? api_error_set(e, 500, "server_error", NULL, NULL, "out of memory") : 0;
}

/* A prep worker: the whole answer into j->status and j->out. */
static void tjob_run(struct api_job *jb)
{
    struct tok_job *j = (struct tok_job *)jb;
    struct api *a = jb->a;
    struct api_error e = {0};
    json_error_t je;
    json_t *root = json_loadb(j->body, j->body_len, JSON_REJECT_DUPLICATES, &je);
    const struct api__model *m = NULL;
    int rc;
    if (!root)
        rc = BAD(&e, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    else if (!json_is_object(root))
        rc = BAD(&e, NULL, "the body must be a JSON object");
    else if (!(m = pick_model(a, root, j->tenant, &e)))
        rc = LMD_EINVAL;
    else
        rc = j->kind == TOK_TOKENIZE ? do_tokenize(j, root, m, &e) : do_detokenize(j, root, m, &e);
    json_decref(root);
    free(j->body);
    j->body = NULL;
    j->status = 200;
    if (rc != 0) {
        lmd_buf_free(&j->out);
        size_t len = 0;
        char *s = api_error_json(&e, &len);
        j->status = s ? e.status : 500;
        if (!s || lmd_buf_append(&j->out, s, len) != 0)
            j->status = 500;
        free(s);
    }
}

/* ---- the I/O thread's side ----------------------------------------------------- */

/* The worker is done: answer, if anyone is still asking (a client that
 * hung up is answered too, into the void, so that its request goes). */
static void tjob_done(struct api_job *jb, struct http_req *r)
{
    struct tok_job *j = (struct tok_job *)jb;
    if (!r || atomic_load(&jb->gone)) {
        log_access(j->rid, j->path, 499, j->tenant);
        if (r)
            http_respond(r, 499, "application/json", "", 0, NULL, NULL);
        return;
    }
    log_access(j->rid, j->path, j->status, j->tenant);
    http_respond(r, j->status, "application/json", j->out.ptr ? j->out.ptr : "", j->out.len, NULL, NULL);
}

static void tjob_free(struct api_job *jb)
{
    struct tok_job *j = (struct tok_job *)jb;
    lmd_buf_free(&j->out);
    free(j->body);
    free(j);
}

static const struct api_job_ops tjob_ops = {.run = tjob_run, .done = tjob_done, .free = tjob_free};

void api_tok_route(struct api *a, struct http_req *r, bool detokenize, int tenant, const char *rid)
{
    struct http_str body = http_req_body(r);
    struct api_error e = {0};
    if (body.len > a->cfg.max_body) {
        api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "the body is %zu bytes; the limit is %zu", body.len, a->cfg.max_body);
        goto refuse;
    }
    if (atomic_load(&a->draining)) {
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        goto refuse;
    }
    struct tok_job *j = calloc(1, sizeof *j);
    char *copy = j ? malloc(body.len + 1) : NULL;
    if (!copy) {
        free(j);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto refuse;
    }
    memcpy(copy, body.ptr, body.len);
    *j = (struct tok_job){
        .job = {.ops = &tjob_ops},
        .kind = detokenize ? TOK_DETOKENIZE : TOK_TOKENIZE,
        .tenant = tenant,
        .body = copy,
        .body_len = body.len,
    };
    snprintf(j->rid, sizeof j->rid, "%s", rid);
    snprintf(j->path, sizeof j->path, "%s", detokenize ? "/detokenize" : "/tokenize");
    if (api__prep_queue(a, &j->job, r) == 0)
        return;
    tjob_free(&j->job);
    api__prep_busy(a, &e, tenant);
refuse:
    log_access(rid, detokenize ? "/detokenize" : "/tokenize", e.status, tenant);
    api_send_error(r, &e, e.status == 503 ? "retry-after" : NULL, e.status == 503 ? "1" : NULL);
}
