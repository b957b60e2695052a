/*
 * api/priority.c: vLLM's integer `priority` onto service classes — the
 * built-in map (0 = the tenant's default class), maps parsed from the flag
 * syntax against real classes from a tenants file, every malformed map
 * refused with a message naming the entry, and the request field itself
 * (any integer accepted, floats and other types refused naming the field).
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

#include "api/api_int.h"
#include "qos/qos.h"

static char path[64];

/* Three classes, most urgent first; the file's default is the middle one. */
static struct qos *open_three(void)
{
    static const char text[] = "classes:\n"
                               "  urgent: {ttft_ms: 500}\n"
                               "  standard: {ttft_ms: 2000}\n"
                               "  batch: {}\n"
                               "default_class: standard\n"
                               "tenants:\n"
                               "  - {name: a, keys: [ka]}\n";
    snprintf(path, sizeof path, "/tmp/api_priority_test.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    struct qos *q = NULL;
    struct lmd_err err = {0};
    if (qos_open(&q, path, &err) != 0)
        fail_msg("qos_open: %s", err.msg);
    unlink(path);
    return q;
}

static void test_default_map(void **state)
{
    (void)state;
    struct qos *q = open_three();
    struct api_priority_map m;
    api_priority_map_default(&m, q);
    const int tenant_default = 2; /* a tenant whose default is batch */
    assert_int_equal(api_priority_map_class(&m, INT64_MIN, tenant_default), 0);
    assert_int_equal(api_priority_map_class(&m, -1, tenant_default), 0);
    /* vLLM's default 0 is no request for urgency: the tenant's own class. */
    assert_int_equal(api_priority_map_class(&m, 0, tenant_default), 2);
    assert_int_equal(api_priority_map_class(&m, 0, 1), 1);
    assert_int_equal(api_priority_map_class(&m, 1, 0), 2);
    assert_int_equal(api_priority_map_class(&m, 10, 0), 2);
    assert_int_equal(api_priority_map_class(&m, INT64_MAX, 0), 2);
    char s[128];
    api_priority_map_format(&m, q, s, sizeof s);
    assert_string_equal(s, "urgent<=-1,default<=0,batch");
    qos_close(q);

    /* One class (the open mode's defaults have two): everything lands there. */
    assert_int_equal(qos_open(&q, NULL, NULL), 0);
    api_priority_map_default(&m, q);
    assert_int_equal(api_priority_map_class(&m, -5, qos_default_class(q)), 0);
    assert_int_equal(api_priority_map_class(&m, 0, qos_default_class(q)), qos_default_class(q));
    assert_int_equal(api_priority_map_class(&m, 5, qos_default_class(q)), qos_n_classes(q) - 1);
    qos_close(q);
}

static void test_parse_map(void **state)
{
    (void)state;
    struct qos *q = open_three();
    struct api_priority_map m;
    struct lmd_err err = {0};
    assert_int_equal(api_priority_map_parse(&m, "urgent<=-10, standard <= 10 ,batch", q, &err), 0);
    assert_int_equal(m.n, 3);
    assert_int_equal(api_priority_map_class(&m, -11, 2), 0);
    assert_int_equal(api_priority_map_class(&m, -10, 2), 0);
    assert_int_equal(api_priority_map_class(&m, -9, 2), 1);
    assert_int_equal(api_priority_map_class(&m, 0, 2), 1); /* no `default` in this map: 0 is standard */
    assert_int_equal(api_priority_map_class(&m, 10, 2), 1);
    assert_int_equal(api_priority_map_class(&m, 11, 0), 2);
    char s[128];
    api_priority_map_format(&m, q, s, sizeof s);
    assert_string_equal(s, "urgent<=-10,standard<=10,batch");

    /* `default` anywhere, and a class used twice. */
    assert_int_equal(api_priority_map_parse(&m, "urgent<=-1,default<=0,urgent<=5,batch", q, &err), 0);
    assert_int_equal(api_priority_map_class(&m, 0, 2), 2);
    assert_int_equal(api_priority_map_class(&m, 3, 2), 0);
    assert_int_equal(api_priority_map_class(&m, 6, 0), 2);
    /* One entry: every priority is one class. */
    assert_int_equal(api_priority_map_parse(&m, "default", q, &err), 0);
    assert_int_equal(api_priority_map_class(&m, -100, 1), 1);
    assert_int_equal(api_priority_map_parse(&m, "urgent<=-9223372036854775808,batch", q, &err), 0);
    assert_int_equal(api_priority_map_class(&m, INT64_MIN, 1), 0);
    assert_int_equal(api_priority_map_class(&m, INT64_MIN + 1, 1), 2);

    static const struct {
        const char *spec, *needle;
    } bad[] = {
        {"", "names no class"},
        {",batch", "names no class"},
        {"urgent<=-1,", "names no class"},
        {"platinum<=0,batch", "unknown service class 'platinum' (classes: urgent, standard, batch; or default)"},
        {"urgent<=1,batch<=0,standard", "must increase"},
        {"urgent<=1,batch<=1,standard", "must increase"},
        {"urgent<=-1,batch<=5", "must have no bound"},
        {"urgent,batch", "has no bound"},
        {"urgent<=,batch", "wants an integer"},
        {"urgent<=x,batch", "'x' is not an integer"},
        {"urgent<=1.5,batch", "not an integer"},
        {"urgent<=99999999999999999999,batch", "not an integer"},
        {"urgent<=9223372036854775807,batch", "must be below"},
        {"urgent<=1<=2,batch", "not an integer"},
        {"a<=1,a<=2,a<=3,a<=4,a<=5,a<=6,a<=7,a<=8,a<=9,a<=10,a<=11,a<=12,a<=13,a<=14,a<=15,a<=16,a", "unknown"},
        {"urgent<=1,urgent<=2,urgent<=3,urgent<=4,urgent<=5,urgent<=6,urgent<=7,urgent<=8,urgent<=9,urgent<=10,"
         "urgent<=11,urgent<=12,urgent<=13,urgent<=14,urgent<=15,urgent<=16,batch",
         "more than 16 entries"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        if (api_priority_map_parse(&m, bad[i].spec, q, &err) != LMD_EINVAL)
            fail_msg("accepted '%s'", bad[i].spec);
        if (!strstr(err.msg, bad[i].needle))
            fail_msg("'%s': message '%s' lacks '%s'", bad[i].spec, err.msg, bad[i].needle);
    }
    qos_close(q);
}

/* The request field: any integer is kept for the map; a class name stays a
 * name; anything else is refused naming the field. */
static void test_priority_field(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int64_t num;
    } ok[] = {
        {"{\"prompt\":\"x\",\"priority\":0}", 0},
        {"{\"prompt\":\"x\",\"priority\":10}", 10},
        {"{\"prompt\":\"x\",\"priority\":-1}", -1},
        {"{\"prompt\":\"x\",\"priority\":-9223372036854775808}", INT64_MIN},
        {"{\"prompt\":\"x\",\"priority\":9223372036854775807}", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct api_params p;
        struct api_error e = {0};
        if (api_params_parse(&p, API_COMPLETION, ok[i].body, strlen(ok[i].body), &e) != 0)
            fail_msg("%s: %s", ok[i].body, e.msg);
        assert_true(p.priority_num_set);
        assert_true(p.priority_num == ok[i].num);
        assert_null(p.priority);
        api_params_free(&p);
    }
    struct api_params p;
    struct api_error e = {0};
    const char *named = "{\"prompt\":\"x\",\"priority\":\"batch\"}";
    assert_int_equal(api_params_parse(&p, API_COMPLETION, named, strlen(named), &e), 0);
    assert_false(p.priority_num_set);
    assert_int_equal(p.priority_len, 5);
    api_params_free(&p);
    const char *none = "{\"prompt\":\"x\",\"priority\":null}";
    assert_int_equal(api_params_parse(&p, API_COMPLETION, none, strlen(none), &e), 0);
    assert_false(p.priority_num_set);
    assert_null(p.priority);
    api_params_free(&p);

    static const char *const bad[] = {
        "{\"prompt\":\"x\",\"priority\":1.5}",
        "{\"prompt\":\"x\",\"priority\":true}",
        "{\"prompt\":\"x\",\"priority\":[0]}",
        "{\"prompt\":\"x\",\"priority\":{}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        assert_int_equal(api_params_parse(&p, API_COMPLETION, bad[i], strlen(bad[i]), &e), LMD_EINVAL);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, "priority");
        api_params_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_map),
        cmocka_unit_test(test_parse_map),
        cmocka_unit_test(test_priority_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
