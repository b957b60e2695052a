/*
 * The Jinja engine: rendering of the constructs chat templates use,
 * precise positions on malformed templates, raise_exception, the limits
 * on steps, output and nesting, and mutated real templates that must fail
 * cleanly or render, never crash (run under ASan by make test-asan).
 * Byte equality with Python's jinja2 is tests/integration/test_jinja.py.
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

#include "api/jinja.h"
#include "core/error.h"

/* Render src with the JSON object vars; returns the rc, the text in out. */
static int render(const char *src, const char *vars, const struct jinja_opts *opts, struct lmd_buf *out,
                  struct jinja_err *err)
{
    struct jinja_tmpl *t;
    int rc = jinja_parse(src, strlen(src), &t, err);
    if (rc != 0)
        return rc;
    json_t *v = json_loads(vars, 0, NULL);
    assert_non_null(v);
    rc = jinja_render(t, v, opts, out, err);
    json_decref(v);
    jinja_free(t);
    return rc;
}

static void expect(const char *src, const char *vars, const char *want)
{
    struct lmd_buf out = {0};
    struct jinja_err err;
    int rc = render(src, vars, NULL, &out, &err);
    if (rc != 0)
        fail_msg("%s: %d:%d: %s", src, err.line, err.col, err.msg);
    assert_string_equal(out.ptr ? out.ptr : "", want);
    lmd_buf_free(&out);
}

static void expect_error(const char *src, const char *vars, int line, int col, const char *msg_part)
{
    struct lmd_buf out = {0};
    struct jinja_err err;
    int rc = render(src, vars, NULL, &out, &err);
    if (rc == 0)
        fail_msg("%s: rendered '%s', expected an error", src, out.ptr ? out.ptr : "");
    assert_int_equal(rc, LMD_EINVAL);
    if (err.line != line || err.col != col || !strstr(err.msg, msg_part))
        fail_msg("%s: got %d:%d '%s', want %d:%d '...%s...'", src, err.line, err.col, err.msg, line, col, msg_part);
    lmd_buf_free(&out);
}

static void test_render(void **state)
{
    (void)state;
    const char *msgs = "{\"messages\":[{\"role\":\"system\",\"content\":\" sys \"},{\"role\":\"user\",\"content\":"
                       "\"hi\"}],\"add_generation_prompt\":true,\"bos_token\":\"<s>\"}";
    expect("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m['content']|trim }}{% endfor %}"
           "{% if add_generation_prompt %}<assistant>{% endif %}",
           msgs, "<s><system>sys<user>hi<assistant>");
    /* trim_blocks and lstrip_blocks: tags on their own lines leave nothing. */
    expect("a\n  {% if true %}\n  b\n  {% endif %}\nc", "{}", "a\n  b\nc");
    expect("{%- set ns = namespace(n=0) -%}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
           msgs, "2");
    expect("{{ messages[1:]|map(attribute='role')|join(',') }} {{ 'abc'[::-1] }} {{ messages|length }}", msgs,
           "user cba 2");
    expect("{{ {'b': [1, 2.5, none, true]}|tojson }} {{ [1, 'a']|string }}", "{}",
           "{\"b\": [1, 2.5, null, true]} [1, 'a']");
    expect("{% macro m(x, y='!') %}{{ x }}{{ y }}{% endmacro %}{{ m('a') }}{{ m('b', y='?') }}", "{}", "a!b?");
    expect("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{{ ',' if not loop.last }}{% endfor %}", "{}",
           "a1,b2");
    expect("{{ 'x' if none is none else 'y' }}{{ 7 // 2 }}{{ -7 % 3 }}{{ 1 / 4 }}{{ 10 ** 2 }}", "{}", "x320.25100");
    expect("{{ '  a b  '.split() }}{{ 'a,b'.split(',')[1] }}{{ 'Hi'.startswith('H') }}", "{}", "['a', 'b']bTrue");
}

static void test_render_with_fixed_time(void **state)
{
    (void)state;
    struct jinja_opts opts = {.now = 1700000000};
    struct lmd_buf out = {0};
    struct jinja_err err;
    assert_int_equal(render("{{ strftime_now('%d %b %Y') }}", "{}", &opts, &out, &err), 0);
    assert_string_equal(out.ptr, "14 Nov 2023");
    lmd_buf_free(&out);
}

static void test_errors_have_positions(void **state)
{
    (void)state;
    expect_error("ab\n{% if x %}\nnever closed", "{}", 2, 4, "the 'if' tag is never closed: expected '{% endif %}'");
    expect_error("{{ x + }}", "{}", 1, 8, "expected an expression");
    expect_error("{% endfor %}", "{}", 1, 4, "unknown or misplaced tag");
    expect_error("\n\n   {{ 'abc }}", "{}", 3, 7, "unterminated string");
    expect_error("{{ x|nosuch }}", "{}", 1, 6, "no filter named 'nosuch'");
    expect_error("{{ a.b }}", "{}", 1, 5, "'a' is undefined");
    expect_error("{{ 'a' + 1 }}", "{}", 1, 8, "unsupported operand");
    expect_error("{% for x in 5 %}{% endfor %}", "{}", 1, 4, "not iterable");
    expect_error("{% break %}", "{}", 1, 4, "inside a for loop");
    expect_error("{% include 'x' %}", "{}", 1, 4, "unknown or misplaced tag");
    expect_error("{{ x", "{}", 1, 1, "unterminated '{{'");
    expect_error("é{{ ¤ }}", "{}", 1, 5, "unexpected byte");
}

static void test_raise_exception(void **state)
{
    (void)state;
    struct lmd_buf out = {0};
    struct jinja_err err;
    int rc = render("ok{% if messages|length > 1 %}{{ raise_exception('too many: ' ~ messages|length) }}{% endif %}",
                    "{\"messages\":[1,2,3]}", NULL, &out, &err);
    assert_int_equal(rc, LMD_EINVAL);
    assert_true(err.raised);
    assert_string_equal(err.msg, "too many: 3");
    assert_int_equal(err.line, 1);
    lmd_buf_free(&out);
    /* The message is the client's error text: never empty, NUL bytes
     * (a template's string may hold them) left out rather than cutting it. */
    assert_int_equal(render("{{ raise_exception('') }}", "{}", NULL, &out, &err), LMD_EINVAL);
    assert_true(err.raised);
    assert_string_equal(err.msg, "the template raised an exception without a message");
    lmd_buf_free(&out);
    static const char nul_src[] = "{{ raise_exception(\"\0\0bad\0 turn\") }}";
    struct jinja_tmpl *t;
    assert_int_equal(jinja_parse(nul_src, sizeof nul_src - 1, &t, &err), 0);
    json_t *v = json_object();
    assert_int_equal(jinja_render(t, v, NULL, &out, &err), LMD_EINVAL);
    assert_true(err.raised);
    assert_string_equal(err.msg, "bad turn");
    json_decref(v);
    jinja_free(t);
    lmd_buf_free(&out);
}

static void test_limits(void **state)
{
    (void)state;
    struct lmd_buf out = {0};
    struct jinja_err err;
    struct jinja_opts small = {.max_steps = 10000, .max_output = 100};
    assert_int_equal(render("{% for i in range(100000) %}{% endfor %}", "{}", &small, &out, &err), LMD_ERANGE);
    assert_int_equal(
        render("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", "{}", &small, &out, &err),
        LMD_ERANGE);
    out.len = 0;
    assert_int_equal(render("{% for i in range(60) %}ab{% endfor %}", "{}", &small, &out, &err), LMD_ERANGE);
    assert_true(out.len <= 100);
    assert_int_equal(render("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "{}", NULL, &out, &err),
                     LMD_ERANGE);
    assert_int_equal(render("{{ 'x' * 100000000 }}", "{}", NULL, &out, &err), LMD_ERANGE);
    lmd_buf_free(&out);
    /* Nesting past the parser's bound is refused, not a stack overflow. */
    size_t n = 5000;
    char *deep = malloc(n * 2 + 16);
    size_t k = (size_t)sprintf(deep, "{{ ");
    for (size_t i = 0; i < n; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < n; i++)
        deep[k++] = ']';
    k += (size_t)sprintf(deep + k, " }}");
    struct jinja_tmpl *t;
    assert_int_equal(jinja_parse(deep, k, &t, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "nests deeper"));
    free(deep);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        fclose(f);
        return NULL;
    }
    fclose(f);
    s[n] = 0;
    *len = (size_t)n;
    return s;
}

/* Mutations of real templates (bytes replaced, dropped, duplicated) either
 * parse and render or fail with a message; none may crash or leak. */
static void test_mutated_templates(void **state)
{
    (void)state;
    static const char *const names[] = {"llama-3.2-instruct.jinja", "qwen3.jinja", "gemma-3-it.jinja",
                                        "mistral-small-3.1-instruct.jinja"};
    const char *vars_text =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
        "{\"role\":\"assistant\",\"content\":\"a\",\"tool_calls\":[{\"id\":\"call_123456789\",\"function\":"
        "{\"name\":\"f\",\"arguments\":{\"x\":1}}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_123456789\","
        "\"content\":\"r\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}";
    json_t *vars = json_loads(vars_text, 0, NULL);
    assert_non_null(vars);
    const char *dir = getenv("LMD_SOURCE_DIR") ? getenv("LMD_SOURCE_DIR") : LMD_SOURCE_DIR;
    static const char charset[] = "{}%#-+()[]'\".|~=<>:, \nabcxyz019";
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int rendered = 0, failed = 0;
    for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/data/templates/%s", dir, names[t]);
        size_t len = 0;
        char *src = read_file(path, &len);
        assert_non_null(src);
        struct jinja_tmpl *tmpl;
        struct jinja_err err;
        /* The template itself renders. */
        assert_int_equal(jinja_parse(src, len, &tmpl, &err), 0);
        struct lmd_buf out = {0};
        struct jinja_opts opts = {.now = 1700000000};
        /* Gemma's refuses the tool turn: raise_exception is a clean outcome. */
        if (jinja_render(tmpl, vars, &opts, &out, &err) != 0 && !err.raised)
            fail_msg("%s: %d:%d: %s", names[t], err.line, err.col, err.msg);
        jinja_free(tmpl);
        lmd_buf_free(&out);
        char *m = malloc(len * 2 + 8);
        for (int iter = 0; iter < 400; iter++) {
            memcpy(m, src, len);
            size_t ml = len;
            for (int e = 0; e < 1 + iter % 4; e++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(seed >> 33) % ml;
                int op = (int)((seed >> 20) % 3);
                if (op == 0) {
                    m[at] = charset[(seed >> 40) % (sizeof charset - 1)];
                } else if (op == 1 && ml > 1) {
                    memmove(m + at, m + at + 1, ml - at - 1);
                    ml--;
                } else {
                    memmove(m + at + 1, m + at, ml - at);
                    ml++;
                }
            }
            if (jinja_parse(m, ml, &tmpl, &err) != 0) {
                assert_true(err.line >= 1 && err.msg[0]);
                failed++;
                continue;
            }
            int rc = jinja_render(tmpl, vars, &opts, &out, &err);
            assert_true(rc == 0 || err.msg[0]);
            rendered += rc == 0;
            failed += rc != 0;
            jinja_free(tmpl);
            lmd_buf_free(&out);
        }
        free(m);
        free(src);
    }
    json_decref(vars);
    /* Both outcomes occur: the mutations reach past the parser. */
    assert_true(rendered > 0 && failed > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_render_with_fixed_time),
        cmocka_unit_test(test_errors_have_positions),
        cmocka_unit_test(test_raise_exception),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_mutated_templates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
