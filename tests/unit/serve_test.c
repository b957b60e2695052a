/*
 * serve/: the config file (a complete one, relative paths, defaults, and a
 * battery of malformed ones that must each get a precise file:line:column
 * message and the right code), `-m [NAME=]PATH` arguments, model ids made
 * from file names, and serve_open refusing what cannot be served (an
 * engine kind that does not exist, clashing names, a missing file) with a
 * message naming the model, before it opens anything it would leak.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "http/http.h"
#include "sched/sched.h"
#include "serve/serve.h"

static char tmpdir[256];
static int n_files;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/serve_test.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char p[320];
    for (int i = 0; i < n_files; i++) {
        snprintf(p, sizeof p, "%s/c%d.yaml", tmpdir, i);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

/* Write text to a fresh file; its path goes to path[320]. */
static void write_file(const char *text, size_t len, char *path)
{
    snprintf(path, 320, "%s/c%d.yaml", tmpdir, n_files++);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static int load(const char *text, struct serve_config *c, struct lmd_err *err, char *path)
{
    write_file(text, strlen(text), path);
    serve_config_init(c);
    return serve_config_load(c, path, err);
}

static void test_full_file(void **state)
{
    (void)state;
    static const char text[] = "# every key\n"
                               "listen:\n"
                               "  host: 0.0.0.0\n"
                               "  port: 9000\n"
                               "  io_threads: 2\n"
                               "  tls_cert: certs/c.pem\n"
                               "  tls_key: /etc/k.pem\n"
                               "  max_body: 65536\n"
                               "  stall_timeout_s: 5\n"
                               "tenants: tenants.yaml\n"
                               "scheduler:\n"
                               "  policy: fcfs\n"
                               "metrics: false\n"
                               "debug_endpoints: true\n"
                               "drain_timeout_s: 3\n"
                               "defaults:\n"
                               "  threads: 2\n"
                               "  ctx: 1024\n"
                               "  max_queue: 0\n"
                               "models:\n"
                               "  - name: gemma\n"
                               "    path: /models/gemma-3-270m-q4_k_m.gguf\n"
                               "    engine: native\n"
                               "    aliases: [small, \"google/gemma-3-270m\"]\n"
                               "    owned_by: acme\n"
                               "    chat_template: gemma\n"
                               "    max_running: 4\n"
                               "    max_batch_tokens: 256\n"
                               "    kv_blocks: 100\n"
                               "  - path: llama.gguf\n"
                               "    ctx: 512\n"
                               "    chat_template_file: tmpl/chat.jinja\n"
                               "priority_map: \"urgent<=-1,default<=0,best_effort\"\n";
    struct serve_config *c = malloc(sizeof *c);
    struct lmd_err err = {0};
    char path[320];
    int rc = load(text, c, &err, path);
    if (rc)
        fail_msg("%s", err.msg);
    assert_string_equal(c->host, "0.0.0.0");
    assert_int_equal(c->port, 9000);
    assert_int_equal(c->io_threads, 2);
    char want[400];
    snprintf(want, sizeof want, "%s/certs/c.pem", tmpdir);
    assert_string_equal(c->tls_cert, want); /* relative to the file's folder */
    assert_string_equal(c->tls_key, "/etc/k.pem");
    assert_int_equal(c->max_body, 65536);
    assert_int_equal(c->stall_s, 5);
    snprintf(want, sizeof want, "%s/tenants.yaml", tmpdir);
    assert_string_equal(c->tenants, want);
    assert_int_equal(c->policy, SCHED_POLICY_FCFS);
    assert_false(c->metrics);
    assert_true(c->debug);
    assert_int_equal(c->drain_s, 3);
    assert_string_equal(c->priority_map, "urgent<=-1,default<=0,best_effort"); /* checked against the classes later */
    assert_int_equal(c->defaults.threads, 2);
    assert_int_equal(c->defaults.ctx, 1024);
    assert_int_equal(c->defaults.max_queue, 0);
    assert_int_equal(c->defaults.max_running, 8); /* untouched: the built-in default */
    assert_int_equal(c->n_models, 2);
    const struct serve_model *m = &c->models[0];
    assert_string_equal(m->name, "gemma");
    assert_string_equal(m->path, "/models/gemma-3-270m-q4_k_m.gguf");
    assert_int_equal(m->engine, SERVE_ENGINE_NATIVE);
    assert_int_equal(m->n_aliases, 2);
    assert_string_equal(m->aliases[1], "google/gemma-3-270m");
    assert_string_equal(m->owned_by, "acme");
    assert_string_equal(m->chat_template, "gemma");
    assert_int_equal(m->max_running, 4);
    assert_int_equal(m->max_batch_tokens, 256);
    assert_int_equal(m->kv_blocks, 100);
    assert_int_equal(m->ctx, SERVE_UNSET); /* from defaults at serve_open */
    assert_int_equal(m->line, 21);
    assert_string_equal(m->chat_template_file, "");
    m = &c->models[1];
    snprintf(want, sizeof want, "%s/tmpl/chat.jinja", tmpdir);
    assert_string_equal(m->chat_template_file, want); /* relative to the file's folder */
    assert_string_equal(m->name, "");
    snprintf(want, sizeof want, "%s/llama.gguf", tmpdir);
    assert_string_equal(m->path, want);
    assert_int_equal(m->ctx, 512);
    assert_int_equal(m->threads, SERVE_UNSET);
    assert_int_equal(m->line, 30);
    free(c);
}

/* The shipped example stays valid. */
static void test_example_file(void **state)
{
    (void)state;
    const char *src = getenv("LMD_SOURCE_DIR");
    char path[600];
    snprintf(path, sizeof path, "%s/deploy/lmd.example.yaml", src ? src : LMD_SOURCE_DIR);
    struct serve_config *c = malloc(sizeof *c);
    serve_config_init(c);
    struct lmd_err err = {0};
    if (serve_config_load(c, path, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(c->n_models, 1);
    assert_non_null(strstr(c->models[0].path, "/deploy/../models/default.gguf"));
    assert_string_equal(c->models[0].aliases[0], "gemma-3-270m");
    assert_int_equal(c->models[0].threads, 2);
    assert_int_equal(c->defaults.ctx, 4096);
    free(c);
}

/* CORS origins: a list or one string, replacing what was there; the flag's
 * form checked the same way. */
static void test_cors_origins(void **state)
{
    (void)state;
    struct serve_config *c = malloc(sizeof *c);
    struct lmd_err err = {0};
    char path[320];
    if (load("listen:\n  cors_origins: [\"*\", \"https://app.example:8443\", \"http://[::1]:3000\"]\n", c, &err, path))
        fail_msg("%s", err.msg);
    assert_int_equal(c->n_cors_origins, 3);
    assert_string_equal(c->cors_origins[0], "*");
    assert_string_equal(c->cors_origins[2], "http://[::1]:3000");
    if (load("listen:\n  cors_origins: http://localhost:5173\n", c, &err, path))
        fail_msg("%s", err.msg);
    assert_int_equal(c->n_cors_origins, 1);
    assert_string_equal(c->cors_origins[0], "http://localhost:5173");

    static const char *const good[] = {"*",
                                       "http://a",
                                       "https://a.example",
                                       "http://a-b.c:1",
                                       "http://[::1]",
                                       "https://[fe80::1]:65535",
                                       "http://127.0.0.1:8080"};
    static const char *const bad[] = {"",           "**",           "a.example",   "http://",        "http://a/",
                                      "http://a/x", "http://a:",    "http://a:0",  "http://a:65536", "http://a:1x",
                                      "http://a b", "http://[]",    "http://[::1", "http://a?b",     "ftp://a",
                                      "HTTP//a",    "http://user@a"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!http_cors_origin_valid(good[i]))
            fail_msg("refused '%s'", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (http_cors_origin_valid(bad[i]))
            fail_msg("accepted '%s'", bad[i]);
    serve_config_init(c);
    for (int i = 0; i < SERVE_MAX_CORS; i++)
        assert_int_equal(serve_config_add_cors(c, "http://a", &err), 0);
    assert_int_equal(serve_config_add_cors(c, "http://a", &err), LMD_ERANGE);
    assert_int_equal(serve_config_add_cors(c, "http://a/", &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "--cors-origin 'http://a/'"));
    free(c);
}

/* --alias: more names for a model given with -m; bad names and too many
 * refused. */
static void test_add_alias(void **state)
{
    (void)state;
    struct serve_config *c = malloc(sizeof *c);
    serve_config_init(c);
    struct lmd_err err = {0};
    assert_int_equal(serve_config_add_alias(c, 0, "a", &err), LMD_EINVAL); /* no model yet */
    assert_int_equal(serve_config_add_model(c, "m.gguf", &err), 0);
    assert_int_equal(serve_config_add_alias(c, 0, "google/gemma-3-270m", &err), 0);
    assert_string_equal(c->models[0].aliases[0], "google/gemma-3-270m");
    assert_int_equal(serve_config_add_alias(c, 0, "a b", &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "not a model id"));
    assert_int_equal(serve_config_add_alias(c, 0, "-x", &err), LMD_EINVAL);
    for (int i = 1; i < SERVE_MAX_ALIASES; i++)
        assert_int_equal(serve_config_add_alias(c, 0, "b", &err), 0);
    assert_int_equal(serve_config_add_alias(c, 0, "c", &err), LMD_ERANGE);
    assert_int_equal(c->models[0].n_aliases, SERVE_MAX_ALIASES);
    free(c);
}

/* Malformed files: each gets its code and a message with the position
 * and the key path. */
static void test_malformed(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int code;
        const char *msg; /* expected after "FILE:" */
    } cases[] = {
        {"", LMD_EFORMAT, "1:1: the file is empty"},
        {"models: [a, b\n", LMD_EFORMAT, "2:1: YAML syntax error: did not find expected ',' or ']'"},
        {"modles: []\n", LMD_EFORMAT,
         "1:1: unknown key 'modles' (expected one of: listen, tenants, scheduler, metrics, debug_endpoints, "
         "drain_timeout_s, defaults, models, prefix_cache, prefix_cache_shared, metrics_compat, priority_map)"},
        {"metrics: true\nmetrics: false\n", LMD_EFORMAT, "2:1: duplicate key 'metrics' (first at line 1)"},
        {"listen:\n  cors_origins: [\"http://a.example/\"]\n", LMD_EFORMAT,
         "2:18: listen.cors_origins[0]: 'http://a.example/' is not * or scheme://host[:port]"},
        {"listen:\n  cors_origins: example.com\n", LMD_EFORMAT,
         "2:17: listen.cors_origins: 'example.com' is not * or scheme://host[:port]"},
        {"listen:\n  cors_origins: [[\"*\"]]\n", LMD_EFORMAT, "listen.cors_origins[0]: expected a string"},
        {"- a\n- b\n", LMD_EFORMAT, "1:1: expected a mapping, got a list"},
        {"models: x.gguf\n", LMD_EFORMAT, "1:9: models: expected a list, got a scalar"},
        {"models: []\n", LMD_EFORMAT, "1:9: models: needs at least one model"},
        {"models:\n  - name: a\n", LMD_EFORMAT, "2:5: models[0]: missing key 'path' (the GGUF file)"},
        {"models:\n  - path: a.gguf\n    engine: vllm\n", LMD_ENOTSUP,
         "3:13: models[0].engine: engine 'vllm' is not available: expected native or remote"},
        {"models:\n  - name: r\n    engine: remote\n", LMD_EFORMAT,
         "2:5: models[0]: missing key 'upstreams' (the servers behind this model)"},
        {"models:\n  - engine: remote\n    upstreams: [\"http://h:1\"]\n", LMD_EFORMAT,
         "models[0]: missing key 'name' (a remote model's id)"},
        {"models:\n  - name: r\n    engine: remote\n    upstreams: [\"ftp://x\"]\n", LMD_EFORMAT,
         "4:17: models[0].upstreams[0]: upstream 'ftp://x': expected [KIND+]http://HOST:PORT, https://, h2c://"},
        {"models:\n  - name: r\n    engine: remote\n    upstreams: [\"vlm+http://x:1\"]\n", LMD_EFORMAT,
         "unknown kind 'vlm'"},
        {"models:\n  - name: r\n    engine: remote\n    upstreams: [{url: \"http://x:1\", max_inflight: 0}]\n",
         LMD_ERANGE, "models[0].upstreams[0].max_inflight: must be between 1 and 4096 (got 0)"},
        {"models:\n  - name: r\n    engine: remote\n    upstreams: [\"http://x:1\"]\n    route: fastest\n", LMD_EFORMAT,
         "5:12: models[0].route: expected ttft, least or rr"},
        {"models:\n  - name: r\n    engine: remote\n    path: a.gguf\n    upstreams: [\"http://x:1\"]\n", LMD_EFORMAT,
         "models[0].path: a remote model has no file: it names 'upstreams'"},
        {"models:\n  - path: a.gguf\n    upstreams: [\"http://x:1\"]\n", LMD_EFORMAT,
         "models[0].upstreams: 'upstreams' is for models with engine: remote"},
        {"models:\n  - path: a.gguf\n    name: -a\n", LMD_EFORMAT,
         "3:11: models[0].name: '-a' is not a model id: letters, digits and ._:/- only, starting with a letter or "
         "digit"},
        {"models:\n  - path: a.gguf\n    name: \"a b\"\n", LMD_EFORMAT, "models[0].name: 'a b' is not a model id"},
        {"models:\n  - {path: a.gguf, name: a}\n  - {path: b.gguf, aliases: [x, a]}\n", LMD_EFORMAT,
         "3:33: models[1].aliases[1]: 'a' already names a model (line 2)"},
        {"models:\n  - {path: a.gguf, aliases: [x, x]}\n", LMD_EFORMAT,
         "2:33: models[0].aliases[1]: 'x' already names a model (line 2)"},
        {"models:\n  - {path: a.gguf, aliases: [a, b, c, d, e, f, g, h, i]}\n", LMD_ERANGE,
         "models[0].aliases: more than 8 aliases"},
        {"models:\n  - {path: a.gguf, aliases: x}\n", LMD_EFORMAT, "models[0].aliases: expected a list, got a scalar"},
        {"models:\n  - path: a.gguf\n    ctx: 8\n", LMD_ERANGE,
         "3:10: models[0].ctx: must be between 16 and 1048576 (got 8)"},
        {"models:\n  - path: a.gguf\n    ctx: \"512\"\n", LMD_EFORMAT,
         "models[0].ctx: expected a number, got the quoted string '512'"},
        {"models:\n  - path: a.gguf\n    ctx: 1k\n", LMD_EFORMAT, "models[0].ctx: expected a whole number, got '1k'"},
        {"models:\n  - path: a.gguf\n    threads: 99999999999999999999\n", LMD_ERANGE,
         "models[0].threads: must be between 1 and 1024"},
        {"models:\n  - path: a.gguf\n    threads: -3\n", LMD_ERANGE, "models[0].threads: must be between 1 and 1024"},
        {"models:\n  - path: a.gguf\n    chat_template: jinja\n", LMD_EFORMAT,
         "3:20: models[0].chat_template: expected gemma, llama3, chatml, mistral or generic, got 'jinja'"},
        {"models:\n  - path: a.gguf\n    thread: 2\n", LMD_EFORMAT, "3:5: models[0]: unknown key 'thread'"},
        {"models:\n  - path: a.gguf\n    chat_template_file: [a]\n", LMD_EFORMAT,
         "models[0].chat_template_file: expected a string, got a list"},
        {"models:\n  - path: \n", LMD_EFORMAT, "models[0].path: expected a string, got nothing"},
        {"models:\n  - path: [a]\n", LMD_EFORMAT, "models[0].path: expected a string, got a list"},
        {"defaults:\n  max_running: 0\n", LMD_ERANGE, "2:16: defaults.max_running: must be between 1 and 1024"},
        {"defaults:\n  path: x.gguf\n", LMD_EFORMAT, "2:3: defaults: unknown key 'path'"},
        {"scheduler:\n  policy: lifo\n", LMD_EFORMAT, "2:11: scheduler.policy: expected sla or fcfs, got 'lifo'"},
        {"metrics: yes\n", LMD_EFORMAT, "1:10: metrics: expected true or false, got 'yes'"},
        {"listen:\n  port: 70000\n", LMD_ERANGE, "2:9: listen.port: must be between 0 and 65535 (got 70000)"},
        {"listen: 8080\n", LMD_EFORMAT, "1:9: listen: expected a mapping, got a scalar"},
        {"drain_timeout_s: -1\n", LMD_ERANGE, "drain_timeout_s: must be between 0 and 86400 (got -1)"},
        {"defaults: &d\n  ctx: 64\nmodels:\n  - *d\n", LMD_EFORMAT, "4:5: YAML aliases (*name) are not supported here"},
        {"metrics: true\n---\nmetrics: false\n", LMD_EFORMAT, "2:1: only one YAML document is allowed"},
        {"models:\n  - path: a\n  - path: b\n  - path: c\n  - path: d\n  - path: e\n  - path: f\n  - path: g\n"
         "  - path: h\n  - path: i\n",
         LMD_ERANGE, "2:3: models: more than 8 models"},
        {"models:\n  - path: a\n    name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
         LMD_ERANGE, "models[0].name: longer than 63 bytes"},
        {"tenants: \"t\\x01.yaml\"\n", LMD_EFORMAT, "tenants: has a control or non-ASCII byte at offset 1"},
        {"metrics: t\xff\n", LMD_EFORMAT, "1:11: YAML syntax error: invalid leading UTF-8 octet"},
        {"a: [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]\n", LMD_EFORMAT, "nested deeper than 16 levels"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct serve_config *c = malloc(sizeof *c);
        struct lmd_err err = {0};
        char path[320];
        int rc = load(cases[i].text, c, &err, path);
        char want[700];
        snprintf(want, sizeof want, "%s:%s", path, cases[i].msg);
        bool exact = cases[i].msg[0] >= '0' && cases[i].msg[0] <= '9';
        if (rc != cases[i].code || !strstr(err.msg, exact ? want : cases[i].msg) ||
            (exact && strncmp(err.msg, want, strlen(want)) != 0))
            fail_msg("case %zu: got %d '%s', want %d '%s'", i, rc, err.msg, cases[i].code, want);
        /* The same bytes from memory, with no terminator (an exact-size
         * copy, so ASan sees a read past them): the same outcome, the
         * message naming the name given. */
        size_t len = strlen(cases[i].text);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, cases[i].text, len);
        serve_config_init(c);
        rc = serve_config_load_buffer(c, "/srv/lmd.yaml", copy, len, &err);
        snprintf(want, sizeof want, "/srv/lmd.yaml:%s", cases[i].msg);
        if (rc != cases[i].code || !strstr(err.msg, exact ? want : cases[i].msg) ||
            (exact && strncmp(err.msg, want, strlen(want)) != 0))
            fail_msg("case %zu from memory: got %d '%s', want %d '%s'", i, rc, err.msg, cases[i].code, want);
        free(copy);
        free(c);
    }
}

static void test_missing_file(void **state)
{
    (void)state;
    struct serve_config *c = malloc(sizeof *c);
    serve_config_init(c);
    struct lmd_err err = {0};
    assert_int_equal(serve_config_load(c, "/nonexistent/lmd.yaml", &err), LMD_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/lmd.yaml: cannot open"));
    assert_int_equal(serve_config_load(c, "/", &err), LMD_EIO);
    free(c);
}

static void test_add_model(void **state)
{
    (void)state;
    struct serve_config *c = malloc(sizeof *c);
    serve_config_init(c);
    struct lmd_err err = {0};
    assert_int_equal(serve_config_add_model(c, "models/default.gguf", &err), 0);
    assert_string_equal(c->models[0].name, "");
    assert_string_equal(c->models[0].path, "models/default.gguf");
    assert_int_equal(c->models[0].ctx, SERVE_UNSET);
    assert_int_equal(serve_config_add_model(c, "tiny=/tmp/x=y.gguf", &err), 0);
    assert_string_equal(c->models[1].name, "tiny");
    assert_string_equal(c->models[1].path, "/tmp/x=y.gguf");
    /* A '/' before the '=' makes it all a path. */
    assert_int_equal(serve_config_add_model(c, "dir/a=b.gguf", &err), 0);
    assert_string_equal(c->models[2].name, "");
    assert_string_equal(c->models[2].path, "dir/a=b.gguf");
    assert_int_equal(serve_config_add_model(c, "a b=x.gguf", &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "the name 'a b' is not a model id"));
    assert_int_equal(serve_config_add_model(c, "=x.gguf", &err), LMD_EINVAL);
    assert_int_equal(serve_config_add_model(c, "a=", &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "no model file after the name"));
    assert_int_equal(c->n_models, 3);
    while (c->n_models < SERVE_MAX_MODELS)
        assert_int_equal(serve_config_add_model(c, "m.gguf", &err), 0);
    assert_int_equal(serve_config_add_model(c, "m.gguf", &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "more than 8 models"));
    free(c);
}

static void test_ids(void **state)
{
    (void)state;
    char id[SERVE_NAME_MAX];
    serve_model_slug("/root/.cache/gemma-3-270m-q4_k_m.gguf", id, sizeof id);
    assert_string_equal(id, "gemma-3-270m-q4_k_m");
    serve_model_slug("My Model (v2).gguf", id, sizeof id);
    assert_string_equal(id, "My-Model--v2-");
    serve_model_slug("noext", id, sizeof id);
    assert_string_equal(id, "noext");
    assert_true(serve_id_valid("gemma-3-270m-q4_k_m"));
    assert_true(serve_id_valid("google/gemma:3"));
    assert_false(serve_id_valid(""));
    assert_false(serve_id_valid("-x"));
    assert_false(serve_id_valid(".x"));
    assert_false(serve_id_valid("a b"));
    assert_false(serve_id_valid("Gemma 3 270m"));
    char long_id[80];
    memset(long_id, 'a', 64);
    long_id[64] = 0;
    assert_false(serve_id_valid(long_id));
    long_id[63] = 0;
    assert_true(serve_id_valid(long_id));
}

/* A file from memory: its name stands for its path, relative model paths
 * included. */
static void test_from_memory(void **state)
{
    (void)state;
    static const char text[] = "models:\n  - path: m.gguf\n  - path: /abs/n.gguf\n";
    struct serve_config *c = malloc(sizeof *c);
    struct lmd_err err = {0};
    serve_config_init(c);
    assert_int_equal(serve_config_load_buffer(c, "/srv/lmd/serve.yaml", text, sizeof text - 1, &err), 0);
    assert_string_equal(c->file, "/srv/lmd/serve.yaml");
    assert_int_equal(c->n_models, 2);
    assert_string_equal(c->models[0].path, "/srv/lmd/m.gguf");
    assert_string_equal(c->models[1].path, "/abs/n.gguf");
    /* Over the file size limit, as for a file. */
    serve_config_init(c);
    assert_int_equal(serve_config_load_buffer(c, "big.yaml", text, (1 << 20) + 1, &err), LMD_ERANGE);
    assert_non_null(strstr(err.msg, "big.yaml: larger than 1048576 bytes"));
    free(c);
}

/* serve_open checks what it can before loading anything heavy, and frees
 * what it opened when a later model fails. */
static void test_open_refuses(void **state)
{
    (void)state;
    struct serve_config *c = malloc(sizeof *c);
    struct serve *s = NULL;
    struct lmd_err err = {0};

    serve_config_init(c);
    assert_int_equal(serve_open(&s, c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "0 models"));

    serve_config_init(c);
    assert_int_equal(serve_config_add_model(c, "/nonexistent/x.gguf", &err), 0);
    c->models[0].engine = (enum serve_engine)7;
    assert_int_equal(serve_open(&s, c, &err), LMD_ENOTSUP);
    assert_non_null(strstr(err.msg, "model 'x' (-m): engine kind 7 is not available"));
    assert_null(s);

    c->models[0].engine = SERVE_ENGINE_NATIVE;
    int rc = serve_open(&s, c, &err);
    assert_true(rc < 0);
    assert_null(s);
    assert_non_null(strstr(err.msg, "model 'x' (-m)"));
    assert_non_null(strstr(err.msg, "/nonexistent/x.gguf"));

    serve_config_init(c);
    assert_int_equal(serve_config_add_model(c, "x.gguf", &err), 0);
    c->models[0].max_running = 16;
    c->models[0].max_batch_tokens = 8;
    assert_int_equal(serve_open(&s, c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "max batch tokens (8) must be at least max running (16)"));

    serve_config_init(c);
    assert_int_equal(serve_config_add_model(c, "My Model.gguf", &err), 0);
    snprintf(c->models[0].path, sizeof c->models[0].path, "-.gguf");
    assert_int_equal(serve_open(&s, c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "gives no usable id"));

    serve_config_init(c);
    assert_int_equal(serve_config_add_model(c, "x.gguf", &err), 0);
    snprintf(c->tls_cert, sizeof c->tls_cert, "c.pem");
    assert_int_equal(serve_open(&s, c, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "go together"));
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),    cmocka_unit_test(test_example_file), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_missing_file), cmocka_unit_test(test_add_model),    cmocka_unit_test(test_ids),
        cmocka_unit_test(test_open_refuses), cmocka_unit_test(test_cors_origins), cmocka_unit_test(test_add_alias),
        cmocka_unit_test(test_from_memory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
