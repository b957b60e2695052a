/*
 * api/ end to end without a model: the real HTTP server, API, QoS and
 * scheduler over the fake engine (engine/fake) with a small real
 * vocabulary (tests/golden/tokenizer/bpe_gpt2.gguf). Completions whole and
 * streamed, n choices, log-probabilities, cache_salt validation, a cached
 * prefix giving the same answer, and the same answer from a request-level
 * engine (submit/poll) as from the step-level one; /tokenize and
 * /detokenize through their worker. Plain HTTP/1.1 over a loopback socket.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/api.h"
#include "gguf/gguf.h"
#include "http/http.h"
#include "qos/qos.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

/* h2o's per-thread recycle bins are never freed (see http_test.c). */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:h2o_mem_alloc_recycle\nleak:h2o_multithread_create_queue\n";
}

static struct gguf_file *gf;
static struct tok_vocab *vocab;
static struct qos *qos;

/* One server stack over one fake engine. */
struct stack {
    struct engine *eng;
    struct sched *sched;
    struct api *api;
    struct http_server *http;
    int port;
};

static void stack_start(struct stack *st, bool request_level)
{
    struct lmd_err err = {0};
    memset(st, 0, sizeof *st);
    struct engine_fake_config fc = {.n_vocab = tok_n_vocab(vocab),
                                    .n_ctx = 512,
                                    .max_batch_tokens = 64,
                                    .max_seqs = 4,
                                    .kv_blocks = request_level ? 0 : 128,
                                    .request_level = request_level};
    if (engine_fake_open(&st->eng, &fc, &err) != 0)
        fail_msg("%s", err.msg);
    /* Classes and tenants from the QoS defaults, as lmd serve does. */
    static struct sched_class classes[SCHED_MAX_CLASSES];
    static double weights[SCHED_MAX_TENANTS];
    for (int i = 0; i < qos_n_classes(qos); i++)
        classes[i] = (struct sched_class){.name = qos_class(qos, i)->name, .ttft_ns = qos_class(qos, i)->ttft_ns};
    for (int i = 0; i < qos_n_tenants(qos); i++)
        weights[i] = qos_tenant(qos, i)->weight;
    struct sched_config sc = {.vocab = vocab,
                              .max_running = 4,
                              .max_queue = 16,
                              .policy = SCHED_POLICY_SLA,
                              .classes = classes,
                              .n_classes = qos_n_classes(qos),
                              .tenant_weight = weights,
                              .n_tenants = qos_n_tenants(qos)};
    if (sched_start(&st->sched, st->eng, &sc, &err) != 0)
        fail_msg("%s", err.msg);
    struct api_model am = {.id = "fake", .engine = "fake", .sched = st->sched, .vocab = vocab, .n_ctx = 512};
    struct api_config ac = {.models = &am, .n_models = 1, .max_body = 1 << 20, .qos = qos};
    if (api_init(&st->api, &ac, &err) != 0)
        fail_msg("%s", err.msg);
    struct http_config hc = {
        .host = "127.0.0.1", .port = 0, .io_threads = 1, .max_body = 1 << 20, .handler = api_handle, .ud = st->api};
    if (http_server_start(&st->http, &hc, &err) != 0)
        fail_msg("%s", err.msg);
    st->port = http_server_port(st->http);
}

static void stack_stop(struct stack *st)
{
    /* As lmd serve stops: requests that arrive from now on are refused at
     * once, so that none starts a job once the wait below has seen none. */
    api_set_draining(st->api);
    http_server_stop_accepting(st->http);
    for (int i = 0; i < 200 && api_active(st->api) > 0; i++)
        usleep(10000);
    assert_int_equal(api_active(st->api), 0);
    sched_stop(st->sched);
    http_server_free(st->http);
    api_free(st->api);
    engine_close(st->eng);
}

/* POST body to path; returns the status, the response body in *out (malloc'd). */
static int post(const struct stack *st, const char *path, const char *body, char **out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)st->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      path, strlen(body));
    assert_int_equal(write(fd, head, (size_t)hn), hn);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = '\0';
    int status = 0;
    sscanf(buf, "HTTP/1.1 %d", &status);
    char *b = strstr(buf, "\r\n\r\n");
    *out = strdup(b ? b + 4 : "");
    free(buf);
    return status;
}

/* A whole completion: its JSON. */
static json_t *complete(const struct stack *st, const char *body)
{
    char *out;
    int status = post(st, "/v1/completions", body, &out);
    if (status != 200)
        fail_msg("status %d: %s", status, out);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    assert_non_null(j);
    return j;
}

static const char *text_of(json_t *j, int i)
{
    return json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), (size_t)i), "text"));
}

#define PROMPT "[10,20,30,40,50,60,70,80,90,100,110,120,130,140,150,160,170,180,190,200,210,220]"

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    struct lmd_err err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/bpe_gpt2.gguf", LMD_SOURCE_DIR);
    if (gguf_open(&gf, path, &err) != 0 || tok_load(&vocab, gf, &err) != 0 || qos_open(&qos, NULL, &err) != 0) {
        print_message("%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qos_close(qos);
    tok_free(vocab);
    gguf_close(gf);
    return 0;
}

static void test_completions(void **state)
{
    (void)state;
    struct stack st;
    stack_start(&st, false);
    const char *body = "{\"model\":\"fake\",\"prompt\":" PROMPT
                       ",\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":2,\"n\":2}";
    json_t *a = complete(&st, body), *b = complete(&st, body);
    /* Greedy: both choices and both requests agree; the second request's
     * prompt was found in the prefix cache. */
    assert_string_equal(text_of(a, 0), text_of(a, 1));
    assert_string_equal(text_of(a, 0), text_of(b, 0));
    json_t *usage = json_object_get(a, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 22);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 12);
    json_t *lp = json_object_get(json_array_get(json_object_get(a, "choices"), 0), "logprobs");
    assert_int_equal(json_array_size(json_object_get(lp, "token_logprobs")), 6);
    assert_int_equal(json_array_size(json_object_get(lp, "top_logprobs")), 6);
    struct sched_stats ss;
    sched_stats(st.sched, &ss);
    assert_int_equal(ss.prefix_queries, 4 * 22);
    /* Both choices of b hit; a's second hits only if it was admitted after
     * the first's prefill. */
    assert_true(ss.prefix_hits == 2 * 16 || ss.prefix_hits == 3 * 16);
    json_decref(a);
    json_decref(b);

    /* Streamed: role-less completions chunks, then [DONE]. */
    char *out;
    assert_int_equal(post(&st, "/v1/completions",
                          "{\"prompt\":" PROMPT ",\"max_tokens\":4,\"temperature\":0,\"ignore_eos\":true,"
                          "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                          &out),
                     200);
    assert_non_null(strstr(out, "\"completion_tokens\":4"));
    assert_non_null(strstr(out, "data: [DONE]"));
    free(out);

    /* A bad cache_salt is the client's error, named. */
    assert_int_equal(post(&st, "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":1,\"cache_salt\":\"\"}", &out),
                     400);
    assert_non_null(strstr(out, "\"param\":\"cache_salt\""));
    free(out);
    stack_stop(&st);
}

/* The request-level fake streams the greedy tokens of the same model, so
 * the API gives the same text through either contract. */
static void test_request_level_same_text(void **state)
{
    (void)state;
    const char *body = "{\"prompt\":" PROMPT ",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}";
    struct stack st, rt;
    stack_start(&st, false);
    json_t *a = complete(&st, body);
    stack_stop(&st);
    stack_start(&rt, true);
    json_t *b = complete(&rt, body);
    assert_string_equal(text_of(a, 0), text_of(b, 0));
    assert_true(strlen(text_of(a, 0)) > 0);
    json_t *usage = json_object_get(b, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 8);
    json_decref(a);
    json_decref(b);
    /* Top alternatives are not something a request-level engine gives. */
    char *out;
    assert_int_equal(
        post(&rt, "/v1/completions", "{\"prompt\":" PROMPT ",\"max_tokens\":2,\"temperature\":0,\"logprobs\":2}", &out),
        500);
    assert_non_null(strstr(out, "alternatives"));
    free(out);
    stack_stop(&rt);
}

/* /tokenize and /detokenize through the worker thread: llama-server's and
 * vLLM's shapes, a round trip, every refusal naming its field, and a
 * client that leaves before its answer (the job outlives the request). */
static void test_tokenize(void **state)
{
    (void)state;
    struct stack st;
    stack_start(&st, false);
    char *out = NULL;
    assert_int_equal(post(&st, "/tokenize", "{\"content\":\"Hello world\"}", &out), 200);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    json_t *toks = json_object_get(j, "tokens");
    assert_true(json_array_size(toks) >= 2);
    /* The ids back to text: the same words. */
    char *ids = json_dumps(toks, JSON_COMPACT), body[512];
    snprintf(body, sizeof body, "{\"tokens\":%s}", ids);
    free(ids);
    assert_int_equal(post(&st, "/detokenize", body, &out), 200);
    json_t *d = json_loads(out, 0, NULL);
    free(out);
    assert_string_equal(json_string_value(json_object_get(d, "content")), "Hello world");
    assert_string_equal(json_string_value(json_object_get(d, "prompt")), "Hello world");
    json_decref(d);
    /* With pieces: one {id, piece} per token, the pieces spelling the text. */
    assert_int_equal(post(&st, "/tokenize", "{\"content\":\"Hello world\",\"with_pieces\":true}", &out), 200);
    d = json_loads(out, 0, NULL);
    free(out);
    json_t *ps = json_object_get(d, "tokens");
    assert_int_equal(json_array_size(ps), json_array_size(toks));
    char joined[64] = "";
    for (size_t i = 0; i < json_array_size(ps); i++) {
        json_t *p = json_array_get(ps, i);
        assert_int_equal(json_integer_value(json_object_get(p, "id")), json_integer_value(json_array_get(toks, i)));
        strncat(joined, json_string_value(json_object_get(p, "piece")), sizeof joined - strlen(joined) - 1);
    }
    assert_string_equal(joined, "Hello world");
    json_decref(d);
    /* vLLM's shape. */
    assert_int_equal(post(&st, "/tokenize", "{\"model\":\"fake\",\"prompt\":\"Hello world\"}", &out), 200);
    d = json_loads(out, 0, NULL);
    free(out);
    assert_int_equal(json_integer_value(json_object_get(d, "count")), json_array_size(json_object_get(d, "tokens")));
    assert_int_equal(json_integer_value(json_object_get(d, "max_model_len")), 512);
    assert_true(json_is_null(json_object_get(d, "token_strs")));
    json_decref(d);
    json_decref(j);

    static const struct {
        const char *path, *body;
        int status;
        const char *param;
    } bad[] = {
        {"/tokenize", "not json", 400, NULL},
        {"/tokenize", "[1]", 400, NULL},
        {"/tokenize", "{}", 400, "content"},
        {"/tokenize", "{\"content\":1}", 400, "content"},
        {"/tokenize", "{\"prompt\":[1,2]}", 400, "prompt"},
        {"/tokenize", "{\"content\":\"a\",\"prompt\":\"a\"}", 400, "prompt"},
        {"/tokenize", "{\"content\":\"a\",\"add_special\":1}", 400, "add_special"},
        {"/tokenize", "{\"content\":\"a\",\"with_pieces\":\"yes\"}", 400, "with_pieces"},
        {"/tokenize", "{\"messages\":[]}", 400, "messages"},
        {"/tokenize", "{\"content\":\"a\",\"model\":\"nope\"}", 404, "model"},
        {"/tokenize", "{\"content\":\"a\",\"model\":7}", 400, "model"},
        {"/detokenize", "{}", 400, "tokens"},
        {"/detokenize", "{\"tokens\":\"1 2\"}", 400, "tokens"},
        {"/detokenize", "{\"tokens\":[1,-1]}", 400, "tokens"},
        {"/detokenize", "{\"tokens\":[1,1.5]}", 400, "tokens"},
        {"/detokenize", "{\"tokens\":[99999999]}", 400, "tokens"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int status = post(&st, bad[i].path, bad[i].body, &out);
        json_t *root = json_loads(out, 0, NULL), *e = json_object_get(root, "error");
        if (status != bad[i].status || !e)
            fail_msg("%s %s: status %d: %s", bad[i].path, bad[i].body, status, out);
        json_t *param = json_object_get(e, "param");
        if (bad[i].param ? !json_is_string(param) || strcmp(json_string_value(param), bad[i].param) != 0
                         : !json_is_null(param))
            fail_msg("%s %s: %s", bad[i].path, bad[i].body, out);
        json_decref(root);
        free(out);
    }
    /* An empty list is the empty text. */
    assert_int_equal(post(&st, "/detokenize", "{\"tokens\":[]}", &out), 200);
    assert_string_equal(out, "{\"content\":\"\",\"prompt\":\"\"}");
    free(out);

    /* Clients that send a request and leave at once: the worker's answers
     * find no request, and the jobs are freed all the same (ASan checks). */
    for (int k = 0; k < 8; k++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)st.port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
        static const char req[] = "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n"
                                  "{\"content\":\"Hello world again\"}";
        assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
        close(fd);
    }
    stack_stop(&st); /* waits for every job to be freed (api_active) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_request_level_same_text),
        cmocka_unit_test(test_tokenize),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
