/*
 * The prep workers: a small pool of threads where the long CPU work of a
 * request runs — rendering a chat template, tokenizing megabytes of
 * prompt, compiling a grammar — so that an I/O thread, and every
 * connection on it, is never held by one client's text. Generation
 * requests, embeddings, /tokenize and /detokenize all come through here.
 *
 * The I/O thread validates the body (cheap) and queues a job; a worker
 * runs it; the job's task brings it back to the request's I/O thread,
 * which continues — admission and scheduler submission for a generation
 * request — exactly as it would have without the trip, since everything
 * bound to that thread (the http_req, the call, the admission ticket) is
 * touched there only. The FIFO is bounded: past it, 503 with Retry-After,
 * counted as a queue_full refusal.
 *
 * Ownership: a queued job is the pool's until its task has run done on
 * the I/O thread; then it is freed. The request may be disposed in
 * between (the client left): its on_close only clears j->r, so the job
 * outlives it, and done sees r NULL. Every move of j->r happens on the
 * request's I/O thread.
 *
 * Also here: the generation request's prep job — structured output,
 * tool choice, the prompt (template + tokenizer) and its context budget
 * on the worker, admission and submission back on the I/O thread.
 *
 * Not here: validation (params.c, routes.c), the life of a call after
 * submission (call.c), the tokenizer itself.
 */
#include "api/api.h"
#include "api/api_int.h"
#include "sample/grammar.h"

#include "core/log.h"
#include "core/time.h"
#include "http/http.h"
#include "obs/obs.h"
#include "qos/qos.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREP_QUEUED_PER_THREAD 32 /* jobs waiting per worker before 503 (at least PREP_QUEUED_MIN) */
#define PREP_QUEUED_MIN 64

/* ---- the pool ----------------------------------------------------------------- */

static void *prep_worker(void *arg)
{
    struct api *a = arg;
    pthread_mutex_lock(&a->prep_mu);
    for (;;) {
        while (!a->prep_head && !a->prep_stop)
            pthread_cond_wait(&a->prep_cv, &a->prep_mu);
        if (a->prep_stop)
            break;
        struct api_job *j = a->prep_head;
        a->prep_head = j->next;
        if (!a->prep_head)
            a->prep_tail = NULL;
        a->prep_queued--;
        /* The lock guards the queue only, never the work. */
        pthread_mutex_unlock(&a->prep_mu);
        /* A client that left before its turn costs no work. */
        if (!atomic_load(&j->gone))
            j->ops->run(j);
        pthread_mutex_lock(&a->prep_mu);
        /* Stopping: the HTTP server, and the loop the task would go to, are
         * gone already (api_prep_stop runs after it), so nobody answers. */
        if (a->prep_stop) {
            j->ops->free(j);
            break;
        }
        pthread_mutex_unlock(&a->prep_mu);
        /* The job's task is never queued twice: nothing else posts it. The
         * loop may run it, and the job's count in `active` may drop, before
         * http_post returns (it wakes the loop last): this worker counts
         * itself meanwhile, so that a shutdown waiting for api_active to
         * reach zero never frees the loop under it. */
        atomic_fetch_add(&a->active, 1);
        http_post(j->loop, &j->task);
        atomic_fetch_sub(&a->active, 1);
        pthread_mutex_lock(&a->prep_mu);
    }
    pthread_mutex_unlock(&a->prep_mu);
    return NULL;
}

/* The request is disposed (answered by someone else, or the client left). */
static void job_closed(void *ctx)
{
    struct api_job *j = ctx;
    j->r = NULL;
    atomic_store(&j->gone, true);
}

/* HTTP/1.1: the client hung up while its request waited for a worker. */
static void job_gone(void *ctx)
{
    struct api_job *j = ctx;
    atomic_store(&j->gone, true);
}

/* The I/O thread, after the worker: hand the request back and continue. */
static void job_task(struct http_task *t)
{
    struct api_job *j = (struct api_job *)((char *)t - offsetof(struct api_job, task));
    struct http_req *r = j->r;
    if (r) {
        http_req_on_close(r, NULL, NULL);
        http_req_watch_disconnect(r, NULL, NULL);
        j->r = NULL;
    }
    obs_gauge_add(OBS_G_PREPARING, -1);
    struct api *a = j->a;
    j->ops->done(j, r);
    j->ops->free(j);
    atomic_fetch_sub(&a->active, 1);
}

int api__prep_queue(struct api *a, struct api_job *j, struct http_req *r)
{
    j->task = (struct http_task){.fn = job_task};
    j->next = NULL;
    j->a = a;
    j->r = r;
    j->loop = http_req_loop(r);
    atomic_store(&j->gone, false);
    /* Counted as in flight before the worker may see it, so that a drain
     * waits for its answer and the gauge never goes below zero. */
    atomic_fetch_add(&a->active, 1);
    obs_gauge_add(OBS_G_PREPARING, 1);
    http_req_on_close(r, job_closed, j);
    http_req_watch_disconnect(r, job_gone, j);
    pthread_mutex_lock(&a->prep_mu);
    bool full = a->prep_queued >= a->prep_max_queued;
    if (!full) {
        if (a->prep_tail)
            a->prep_tail->next = j;
        else
            a->prep_head = j;
        a->prep_tail = j;
        a->prep_queued++;
        pthread_cond_signal(&a->prep_cv);
    }
    pthread_mutex_unlock(&a->prep_mu);
    if (full) {
        http_req_on_close(r, NULL, NULL);
        http_req_watch_disconnect(r, NULL, NULL);
        obs_gauge_add(OBS_G_PREPARING, -1);
        atomic_fetch_sub(&a->active, 1);
        return LMD_EBUSY;
    }
    return 0;
}

void api__log_gone(const char *rid, const char *path, const struct api__model *m, int cls, int tenant)
{
    obs_request_done(obs_status_of(499), m->index, cls, tenant);
    struct obs_access acc = {
        .id = rid,
        .method = "POST",
        .path = path,
        .status = 499,
        .cls = cls,
        .tenant = tenant,
        .model = m->m.id,
        .queue_s = -1,
        .ttft_s = -1,
        .e2e_s = -1,
        .finish = "cancelled",
    };
    obs_access_log(&acc);
}

void api__prep_busy(struct api *a, struct api_error *e, int tenant)
{
    obs_reject(OBS_R_QUEUE_FULL, tenant);
    api_error_set(e, 503, "server_error", NULL, "queue_full",
                  "%d requests are waiting for their prompt to be prepared already; retry shortly", a->prep_max_queued);
}

int api_prep_start(struct api *a, int n_threads, struct lmd_err *err)
{
    if (n_threads <= 0)
        n_threads = API_PREP_THREADS_DEFAULT;
    if (n_threads > API_PREP_THREADS_MAX)
        n_threads = API_PREP_THREADS_MAX;
    pthread_mutex_init(&a->prep_mu, NULL);
    pthread_cond_init(&a->prep_cv, NULL);
    a->prep_max_queued = n_threads * PREP_QUEUED_PER_THREAD;
    if (a->prep_max_queued < PREP_QUEUED_MIN)
        a->prep_max_queued = PREP_QUEUED_MIN;
    a->prep_threads = calloc((size_t)n_threads, sizeof *a->prep_threads);
    if (!a->prep_threads)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    for (int i = 0; i < n_threads; i++) {
        int rc = pthread_create(&a->prep_threads[i], NULL, prep_worker, a);
        if (rc != 0)
            return lmd_err_set(err, LMD_EIO, "api: cannot start prep worker %d: %s", i, strerror(rc));
        a->n_prep = i + 1; /* api_prep_stop joins what started */
    }
    return 0;
}

void api_prep_stop(struct api *a)
{
    if (!a->prep_threads)
        return;
    pthread_mutex_lock(&a->prep_mu);
    a->prep_stop = true;
    pthread_cond_broadcast(&a->prep_cv);
    pthread_mutex_unlock(&a->prep_mu);
    for (int i = 0; i < a->n_prep; i++)
        pthread_join(a->prep_threads[i], NULL);
    /* Jobs still queued belong to requests the HTTP server has abandoned
     * (it is stopped before the api is freed): nobody will answer them. */
    for (struct api_job *j = a->prep_head, *next; j; j = next) {
        next = j->next;
        j->ops->free(j);
    }
    a->prep_head = a->prep_tail = NULL;
    free(a->prep_threads);
    a->prep_threads = NULL;
    a->n_prep = 0;
    pthread_cond_destroy(&a->prep_cv);
    pthread_mutex_destroy(&a->prep_mu);
}

/* ---- a generation request's prompt ---------------------------------------------- */

/* The prompt's token ids, from text (completion), a chat (rendered by the
 * template), or ids given in the request. A prep worker. */
static int build_prompt(const struct api_model *m, const struct api_params *p, int32_t **ids, int *n,
                        struct api_error *e)
{
    const int n_vocab = tok_n_vocab(m->vocab);
    if (p->prompt_ids) {
        for (int i = 0; i < p->n_prompt_ids; i++)
            if (p->prompt_ids[i] >= n_vocab)
                return api_error_set(e, 400, "invalid_request_error", "prompt", NULL,
                                     "prompt token %d is %d, outside the vocabulary of %d", i, p->prompt_ids[i],
                                     n_vocab);
        *ids = malloc((size_t)p->n_prompt_ids * sizeof **ids);
        if (!*ids)
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        memcpy(*ids, p->prompt_ids, (size_t)p->n_prompt_ids * sizeof **ids);
        *n = p->n_prompt_ids;
        return 0;
    }
    struct lmd_err err = {0};
    const char *src = p->prompt;
    size_t len = p->prompt_len;
    char *rendered = NULL;
    struct lmd_buf jinja_text = {0};
    if (p->kind == API_CHAT && m->chat_jinja) {
        if (api__chat_jinja(m, p, &jinja_text, e) != 0) {
            lmd_buf_free(&jinja_text);
            return -1;
        }
        /* Ownership moves to `rendered`, freed below like the family's text. */
        rendered = jinja_text.ptr ? jinja_text.ptr : strdup("");
        if (!rendered)
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        src = rendered;
        len = jinja_text.len;
    } else if (p->kind == API_CHAT) {
        /* The built-in families always open the assistant's turn and take
         * no template variables: refuse what they would silently drop. */
        if (!p->add_generation_prompt)
            return api_error_set(e, 400, "invalid_request_error", "add_generation_prompt", "unsupported_parameter",
                                 "'add_generation_prompt': false needs a model with its own chat template (this one "
                                 "uses the built-in %s template); start lmd serve with --chat-template-file",
                                 chat_family_name((enum chat_family)m->chat_family));
        if (p->has_template_kwargs)
            return api_error_set(e, 400, "invalid_request_error", "chat_template_kwargs", "unsupported_parameter",
                                 "'chat_template_kwargs' needs a model with its own chat template (this one uses the "
                                 "built-in %s template); start lmd serve with --chat-template-file",
                                 chat_family_name((enum chat_family)m->chat_family));
        long need = chat_render((enum chat_family)m->chat_family, p->msgs, p->n_msgs, NULL, 0, &err);
        if (need < 0)
            return api_error_set(e, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
        rendered = malloc((size_t)need + 1);
        if (!rendered ||
            chat_render((enum chat_family)m->chat_family, p->msgs, p->n_msgs, rendered, (size_t)need + 1, &err) < 0) {
            free(rendered);
            return api_error_set(e, 500, "server_error", NULL, NULL, "cannot render the chat template");
        }
        src = rendered;
        len = (size_t)need;
    }
    /* A first gate that costs nothing: no token decodes to more than
     * tok_piece_max bytes, so the text makes at least len / max tokens. A
     * prompt that cannot fit the context is refused before the tokenizer
     * runs, which for megabytes of text would hold a worker for a second
     * or more. */
    size_t maxp = tok_piece_max(m->vocab);
    if (maxp && len / maxp >= (size_t)m->n_ctx) {
        free(rendered);
        return api_error_set(e, 400, "invalid_request_error", p->kind == API_CHAT ? "messages" : "prompt",
                             "context_length_exceeded",
                             "this model's maximum context length is %d tokens; the prompt's %zu bytes make at least "
                             "%zu tokens",
                             m->n_ctx, len, len / maxp);
    }
    /* Usually at most one token per byte, plus BOS/EOS; a vocabulary without
     * a token for some character spells it in byte tokens, up to 4 per
     * character (and SPM's space is 3 bytes), so retry at the size the
     * tokenizer asks for. */
    size_t cap = len + 4;
    *ids = malloc(cap * sizeof **ids);
    int64_t k = *ids ? tok_encode(m->vocab, src, len, true, p->kind == API_CHAT, *ids, cap, &err) : LMD_ENOMEM;
    if (k > (int64_t)cap) {
        cap = (size_t)k;
        int32_t *more = realloc(*ids, cap * sizeof **ids);
        k = more ? tok_encode(m->vocab, src, len, true, p->kind == API_CHAT, more, cap, &err) : LMD_ENOMEM;
        *ids = more ? more : *ids;
    }
    free(rendered);
    if (k < 0 || (size_t)k > cap) {
        free(*ids);
        *ids = NULL;
        return api_error_set(e, k == LMD_ENOMEM ? 500 : 400, "invalid_request_error", "prompt", NULL,
                             "cannot tokenize the prompt: %s", k == LMD_ENOMEM ? "out of memory" : err.msg);
    }
    *n = (int)k;
    return 0;
}

/* One generation request between validation and admission. */
struct gen_job {
    struct api_job job; /* first */
    const struct api__model *m;
    struct api_params p; /* the job's: its document, arrays and grammar */
    struct api_who who;
    char id[API_ID_MAX];
    char path[64]; /* as asked, for the access line of a client gone meanwhile */
    /* The worker's result. */
    int rc; /* 0, or e says why */
    struct api_error e;
    int32_t *ids; /* [n_prompt] malloc'd */
    int n_prompt;
    int max_tokens;
};

/* A prep worker: everything between validation and admission that costs
 * CPU time in proportion to the request — the grammar, the template, the
 * tokenizer — in the order the I/O thread used to run it, so that a
 * request with several mistakes hears of the same one. */
static void gen_run(struct api_job *jb)
{
    struct gen_job *j = (struct gen_job *)jb;
    struct api_params *p = &j->p;
    const struct api__model *m = j->m;
    struct api_error *e = &j->e;
    const enum api_kind kind = p->kind;
    j->rc = LMD_EINVAL;
    if (api_structured_compile(p, e) != 0 ||
        (kind == API_CHAT &&
         api_tools_check(p, m->tool_syntax,
                         m->m.chat_jinja ? NULL : chat_family_name((enum chat_family)m->m.chat_family), e) != 0))
        return;
    if (build_prompt(&m->m, p, &j->ids, &j->n_prompt, e) != 0)
        return;
    const int n_prompt = j->n_prompt;
    if (n_prompt == 0) {
        api_error_set(e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt", NULL,
                      "the prompt is empty");
        return;
    }
    const int ctx = m->m.n_ctx;
    if (n_prompt >= ctx) {
        api_error_set(e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt",
                      "context_length_exceeded",
                      "this model's maximum context length is %d tokens; the prompt has %d tokens (%d too many, "
                      "leaving no room to generate)",
                      ctx, n_prompt, n_prompt - ctx + 1);
        return;
    }
    /* Default lengths as OpenAI's: 16 for completions, the rest of the
     * context for chat. A max_tokens past the context is cut to fit. */
    int max_tokens = p->max_tokens > 0 ? p->max_tokens : (kind == API_CHAT ? ctx - n_prompt : 16);
    const int class_max = qos_class(jb->a->cfg.qos, j->who.cls)->default_max_tokens;
    if (p->max_tokens <= 0 && class_max > 0 && max_tokens > class_max)
        max_tokens = class_max; /* the class bounds a request that names no length */
    if (max_tokens > ctx - n_prompt)
        max_tokens = ctx - n_prompt;
    j->max_tokens = max_tokens;
    j->rc = 0;
}

/* Back on the request's I/O thread: admission, then the scheduler. */
static void gen_done(struct api_job *jb, struct http_req *r)
{
    struct gen_job *j = (struct gen_job *)jb;
    struct api *a = jb->a;
    const struct api__model *m = j->m;
    struct api_error *e = &j->e;
    const char *hname = NULL, *hvalue = NULL;
    char retry[16];
    if (!r) {
        api__log_gone(j->who.rid, j->path, m, j->who.cls, j->who.tenant);
        return;
    }
    if (atomic_load(&jb->gone)) {
        /* HTTP/1.1: answered into the void, so that the request is disposed. */
        LMD_INFO("api: %s: the client closed its connection while its prompt was prepared", j->who.rid);
        api_error_set(e, 499, "invalid_request_error", NULL, "client_closed", "the client closed its connection");
        goto fail;
    }
    if (j->rc != 0) {
        /* Refused for what it carries: it still counts against the
         * tenant's request rate (qos_gate let it in). */
        if (e->status >= 400 && e->status < 500)
            qos_charge_refused(a->cfg.qos, j->who.tenant, lmd_time_mono_ns());
        goto fail;
    }
    /* Admission: the tenant's buckets and quotas, charged for the prompt
     * (once: the choices share it) and every choice's whole budget. */
    struct qos_refusal why = {0};
    int64_t charge = (int64_t)j->n_prompt + (int64_t)j->max_tokens * j->p.n;
    if (qos_admit(a->cfg.qos, j->who.tenant, j->who.cls, charge, lmd_time_mono_ns(), &j->who.ticket, &why) != 0) {
        obs_reject(why.reason, j->who.tenant);
        api_admit_error(e, &why, retry, sizeof retry, &hname, &hvalue);
        goto fail;
    }
    int rc = api_call_submit(a, m, r, &j->p, j->ids, j->n_prompt, j->max_tokens, j->id, &j->who, e);
    j->ids = NULL; /* the call's now, even on failure; so are the ticket and the grammar */
    j->p.grammar = NULL;
    if (rc != 0) {
        api_log_refusal(a, r, j->who.rid, e->status, m, j->who.cls, j->who.tenant);
        api_send_error(r, e, e->status == 503 ? "retry-after" : NULL, e->status == 503 ? "1" : NULL);
    }
    return;
fail:
    api_log_refusal(a, r, j->who.rid, e->status, m, j->who.cls, j->who.tenant);
    api_send_error(r, e, hname, hvalue); /* before the document goes: e may point into it */
}

static void gen_free(struct api_job *jb)
{
    struct gen_job *j = (struct gen_job *)jb;
    free(j->ids);
    api_params_free(&j->p); /* the grammar too, unless a call took it */
    free(j);
}

static const struct api_job_ops gen_ops = {.run = gen_run, .done = gen_done, .free = gen_free};

void api__prep_generate(struct api *a, struct http_req *r, const struct api__model *m, struct api_params *p,
                        const char *id, struct api_who *who)
{
    struct api_error e = {0};
    const char *hname = NULL, *hvalue = NULL;
    char retry[16];
    /* A tenant out of requests is refused before its prompt is read:
     * refused requests take from the same bucket (qos_charge_refused). */
    struct qos_refusal why = {0};
    if (qos_gate(a->cfg.qos, who->tenant, lmd_time_mono_ns(), &why) != 0) {
        api_params_free(p);
        obs_reject(why.reason, who->tenant);
        api_admit_error(&e, &why, retry, sizeof retry, &hname, &hvalue);
        goto refuse;
    }
    struct gen_job *j = calloc(1, sizeof *j);
    if (!j) {
        api_params_free(p);
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto refuse;
    }
    j->job.ops = &gen_ops;
    j->m = m;
    j->p = *p;
    memset(p, 0, sizeof *p); /* the job's now */
    j->who = *who;
    snprintf(j->id, sizeof j->id, "%s", id);
    struct http_str path = http_req_path(r);
    snprintf(j->path, sizeof j->path, "%.*s", (int)(path.len < 63 ? path.len : 63), path.ptr);
    if (api__prep_queue(a, &j->job, r) == 0)
        return;
    api__prep_busy(a, &e, who->tenant);
    api_log_refusal(a, r, who->rid, e.status, m, who->cls, who->tenant);
    api_send_error(r, &e, "retry-after", "1");
    gen_free(&j->job);
    return;
refuse:
    api_log_refusal(a, r, who->rid, e.status, m, who->cls, who->tenant);
    api_send_error(r, &e, hname, hvalue);
}
