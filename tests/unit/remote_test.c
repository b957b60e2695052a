/*
 * engine/remote without a network: upstream URLs (kinds, hosts, ports,
 * prefixes, IPv6, and every malformed form refused with a message), the
 * stream-chunk reader (text and finish of chat and completion chunks,
 * usage, errors, escapes and surrogate pairs into UTF-8, fields it must
 * skip however nested, and malformed JSON refused), and opening a pool
 * whose upstreams are not reachable (allowed: they are probed, not
 * required) then closing it. Requests through real upstreams are the
 * integration tests' (tests/integration/test_gateway.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "engine/engine.h"
#include "engine/remote/sse_json.h"

static void url_ok(const char *url, enum remote_kind kind, const char *host, int port, const char *prefix)
{
    enum remote_kind k;
    char h[128], p[128];
    int pt;
    struct lmd_err err = {0};
    assert_int_equal(remote_url_parse(url, &k, h, sizeof h, &pt, p, sizeof p, &err), 0);
    assert_int_equal(k, kind);
    assert_string_equal(h, host);
    assert_int_equal(pt, port);
    assert_string_equal(p, prefix);
}

static void url_bad(const char *url, const char *msg)
{
    enum remote_kind k;
    char h[128], p[128];
    int pt;
    struct lmd_err err = {0};
    assert_int_equal(remote_url_parse(url, &k, h, sizeof h, &pt, p, sizeof p, &err), LMD_EINVAL);
    if (!strstr(err.msg, msg))
        fail_msg("'%s': got '%s', want '%s'", url, err.msg, msg);
}

static void test_urls(void **state)
{
    (void)state;
    url_ok("http://127.0.0.2:8081", REMOTE_AUTO, "127.0.0.2", 8081, "");
    url_ok("vllm+http://gpu-1.internal:8000/", REMOTE_VLLM, "gpu-1.internal", 8000, "");
    url_ok("llamacpp+http://10.0.0.1", REMOTE_LLAMACPP, "10.0.0.1", 80, "");
    url_ok("openai+http://h:9/api/v2//", REMOTE_OPENAI, "h", 9, "/api/v2");
    url_ok("http://[::1]:8080/x", REMOTE_AUTO, "::1", 8080, "/x");
    /* TLS: the port comes back negative. */
    url_ok("lmd+https://lmd.example", REMOTE_LMD, "lmd.example", -443, "");
    /* HTTP/2: h2c in clear (port 80 by default), h2 over TLS (443). */
    url_ok("h2c://127.0.0.2:8081", REMOTE_AUTO, "127.0.0.2", 8081, "");
    url_ok("lmd+h2c://10.0.0.1/v1x/", REMOTE_LMD, "10.0.0.1", 80, "/v1x");
    url_ok("vllm+h2://gpu-2.internal", REMOTE_VLLM, "gpu-2.internal", -443, "");
    url_ok("h2://[::1]:8443", REMOTE_AUTO, "::1", -8443, "");
    assert_true(remote_url_h2("h2c://h:1"));
    assert_true(remote_url_h2("sglang+h2://h:1"));
    assert_false(remote_url_h2("http://h:1"));
    assert_false(remote_url_h2("lmd+https://h:1"));
    assert_false(remote_url_h2("http://h2c:1")); /* a host named h2c */
    /* A '+' after the scheme is not a kind's. */
    url_ok("http://h:1/a+b", REMOTE_AUTO, "h", 1, "/a+b");
    url_bad("h2c:/h:1", "expected [KIND+]http://HOST:PORT");
    url_bad("h3://h:1", "h2c:// (HTTP/2 in clear)");
    url_bad("lmd+h2x://h:1", "expected [KIND+]http://HOST:PORT");
    url_bad("h2c://h:0", "port must be a number");
    url_bad("tgi+h2c://h:1", "unknown kind 'tgi'");
    url_bad("ftp://h:1", "expected [KIND+]http://HOST:PORT");
    url_bad("h:1", "expected [KIND+]http://HOST:PORT");
    url_bad("tgi+http://h:1", "unknown kind 'tgi'");
    url_bad("http://h:0", "port must be a number");
    url_bad("http://h:65536", "port must be a number");
    url_bad("http://h:12ab", "port must be a number");
    url_bad("http://:80", "no host");
    url_bad("http://[::1:80", "unclosed '['");
    assert_string_equal(remote_kind_name(REMOTE_SGLANG), "sglang");
    assert_string_equal(remote_kind_name(REMOTE_OLLAMA), "ollama");
}

static int parse(const char *json, bool chat, struct lmd_buf *t, struct sse_chunk *k)
{
    t->len = 0;
    return sse_chunk_parse(json, strlen(json), chat, t, k);
}

/* {"a": [[...]]} with n arrays. */
static int parse_nested(int n, struct lmd_buf *t, struct sse_chunk *k)
{
    char j[256];
    size_t o = (size_t)snprintf(j, sizeof j, "{\"a\":");
    for (int i = 0; i < n; i++)
        j[o++] = '[';
    for (int i = 0; i < n; i++)
        j[o++] = ']';
    j[o++] = '}';
    j[o] = 0;
    return parse(j, false, t, k);
}

static void test_chunks(void **state)
{
    (void)state;
    struct lmd_buf t = {0};
    struct sse_chunk k;
    /* A chat delta, as vLLM and lmd send them, with fields to skip. */
    assert_int_equal(parse("{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
                           "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\\\"lo\"},"
                           "\"logprobs\":{\"content\":[{\"token\":\"a\",\"top_logprobs\":[[1,[2,{}]]]}]},"
                           "\"finish_reason\":null}],\"usage\":null}",
                           true, &t, &k),
                     0);
    assert_true(k.has_text);
    assert_int_equal(t.len, 6);
    assert_memory_equal(t.ptr, "Hel\"lo", 6);
    assert_false(k.has_finish || k.has_usage || k.is_error);
    /* A completion's text; a chat field in it is not the text. */
    assert_int_equal(parse("{\"choices\":[{\"text\":\" Paris\",\"delta\":{\"content\":\"no\"},\"finish_reason\":"
                           "\"length\"}]}",
                           false, &t, &k),
                     0);
    assert_true(k.has_text && k.has_finish);
    assert_int_equal(t.len, 6);
    assert_memory_equal(t.ptr, " Paris", 6);
    assert_string_equal(k.finish, "length");
    /* Only the first choice counts. */
    assert_int_equal(parse("{\"choices\":[{\"text\":\"a\"},{\"text\":\"b\"}]}", false, &t, &k), 0);
    assert_int_equal(t.len, 1);
    assert_memory_equal(t.ptr, "a", 1);
    /* Usage, with the empty choices of include_usage's last chunk. */
    assert_int_equal(parse("{\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,"
                           "\"total_tokens\":46,\"prompt_tokens_details\":{\"cached_tokens\":8}}}",
                           true, &t, &k),
                     0);
    assert_true(k.has_usage && !k.has_text);
    assert_int_equal(k.prompt_tokens, 12);
    assert_int_equal(k.completion_tokens, 34);
    /* Escapes: \n, \u00e9, a surrogate pair, a lone surrogate. */
    assert_int_equal(
        parse("{\"choices\":[{\"delta\":{\"content\":\"a\\nb\\u00e9\\ud83d\\ude00\\udc00/\\/\"}}]}", true, &t, &k), 0);
    const char want[] = "a\nb\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbd//";
    assert_int_equal(t.len, sizeof want - 1);
    assert_memory_equal(t.ptr, want, sizeof want - 1);
    /* Errors: an object with a message (llama-server, vLLM), or a string. */
    assert_int_equal(
        parse("{\"error\":{\"code\":500,\"message\":\"slot died\",\"type\":\"server_error\"}}", true, &t, &k), 0);
    assert_true(k.is_error);
    assert_string_equal(k.error, "slot died");
    assert_int_equal(parse("{\"error\":\"boom\"}", true, &t, &k), 0);
    assert_true(k.is_error);
    assert_string_equal(k.error, "boom");
    assert_int_equal(parse("{\"error\":null,\"choices\":[]}", true, &t, &k), 0);
    assert_false(k.is_error);
    /* Not text: a null content, a number. */
    assert_int_equal(parse("{\"choices\":[{\"delta\":{\"content\":null,\"tool_calls\":[]}}]}", true, &t, &k), 0);
    assert_false(k.has_text);
    assert_int_equal(parse("{\"choices\":[{\"text\":5}]}", false, &t, &k), 0);
    assert_false(k.has_text);
    /* Malformed: refused whole. */
    const char *bad[] = {"",
                         "[]",
                         "{",
                         "{\"a\":}",
                         "{\"a\":1,}",
                         "{\"a\":1} x",
                         "{\"a\":\"\\x\"}",
                         "{\"a\":\"\\u12\"}",
                         "{\"a\":\"tab\there\"}",
                         "{\"a\":tru}",
                         "{\"a\":-}",
                         "{\"a\":1.}",
                         "{\"a\":[1 2]}",
                         "{\"choices\":[{\"text\":\"unterminated}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse(bad[i], false, &t, &k) != -1)
            fail_msg("accepted malformed '%s'", bad[i]);
    /* Nesting: 64 levels (the object and 63 arrays) are read, 65 refused. */
    assert_int_equal(parse_nested(63, &t, &k), 0);
    assert_int_equal(parse_nested(64, &t, &k), -1);
    lmd_buf_free(&t);
}

/* Streamed tool calls come through the text as records: a call begins
 * where its name comes, its argument fragments follow. */
static void test_tool_call_chunks(void **state)
{
    (void)state;
    struct lmd_buf t = {0};
    struct sse_chunk k;
    assert_int_equal(parse("{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":"
                           "\"function\",\"function\":{\"name\":\"add\",\"arguments\":\"\"}}]}}]}",
                           true, &t, &k),
                     0);
    assert_true(k.has_text);
    assert_int_equal(t.len, 5);
    assert_memory_equal(t.ptr,
                        "\x1e"
                        "add"
                        "\x1f",
                        5);
    assert_int_equal(parse("{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
                           "\"{\\\"a\\\": 1}\"}}]},\"finish_reason\":\"tool_calls\"}]}",
                           true, &t, &k),
                     0);
    assert_true(k.has_text && k.has_finish);
    assert_int_equal(t.len, 8);
    assert_memory_equal(t.ptr, "{\"a\": 1}", 8);
    /* Malformed lists are malformed chunks; an empty one is nothing. */
    assert_int_equal(parse("{\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":1}}]}}]}", true, &t, &k),
                     0);
    assert_false(k.has_text);
    assert_int_equal(parse("{\"choices\":[{\"delta\":{\"tool_calls\":[]}}]}", true, &t, &k), 0);
    assert_false(k.has_text);
    assert_int_not_equal(parse("{\"choices\":[{\"delta\":{\"tool_calls\":[{}\"}}]}", true, &t, &k), 0);
    assert_int_not_equal(
        parse("{\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"a\"}}", true, &t, &k), 0);
    lmd_buf_free(&t);
}

static void test_open_unreachable(void **state)
{
    (void)state;
    struct remote_config cfg = {.name = "pool", .n_backends = 2, .max_inflight = 3, .health_ms = 50};
    snprintf(cfg.backends[0].url, sizeof cfg.backends[0].url, "http://127.0.0.1:1");
    snprintf(cfg.backends[1].url, sizeof cfg.backends[1].url, "lmd+http://127.0.0.1:2");
    cfg.backends[1].max_inflight = 5;
    struct engine *e = NULL;
    struct lmd_err err = {0};
    assert_int_equal(engine_remote_open(&e, &cfg, &err), 0);
    assert_true(e->info.request_level && e->info.takes_api && e->info.wakes);
    assert_int_equal(e->seats, 8);
    assert_true(e->info.max_seqs >= 8);
    engine_close(e);
    /* HTTP/2 upstreams, in clear and over TLS (a context offering h2 by
     * ALPN is made), unreachable too: probed on their own connections,
     * then closed with the pool; a new list handed over just before the
     * close goes with it, applied or not. */
    snprintf(cfg.backends[0].url, sizeof cfg.backends[0].url, "h2c://127.0.0.1:1");
    snprintf(cfg.backends[1].url, sizeof cfg.backends[1].url, "lmd+h2://127.0.0.1:2");
    assert_int_equal(engine_remote_open(&e, &cfg, &err), 0);
    assert_int_equal(e->seats, 8);
    struct remote_backend_config list[2] = {{.url = "h2c://127.0.0.1:3"}, {.url = "vllm+h2://localhost:4"}};
    assert_int_equal(engine_remote_set_upstreams(e, list, 2, &err), 0);
    engine_close(e);
    /* The same URL twice, a bad URL, too many: refused with a message. */
    snprintf(cfg.backends[0].url, sizeof cfg.backends[0].url, "http://127.0.0.1:1");
    snprintf(cfg.backends[1].url, sizeof cfg.backends[1].url, "http://127.0.0.1:1");
    assert_int_equal(engine_remote_open(&e, &cfg, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "listed twice"));
    snprintf(cfg.backends[1].url, sizeof cfg.backends[1].url, "gopher://x");
    assert_int_equal(engine_remote_open(&e, &cfg, &err), LMD_EINVAL);
    cfg.n_backends = REMOTE_MAX_BACKENDS + 1;
    assert_int_equal(engine_remote_open(&e, &cfg, &err), LMD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_tool_call_chunks),
        cmocka_unit_test(test_open_unreachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
