/*
 * api/fields.c: fields the native engine does not implement are refused,
 * naming the field, whenever they would change the answer; their neutral
 * values (and null) pass, so clients that spell out defaults are served.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "api/api_int.h"

static int check(enum api_kind kind, const char *body, struct api_error *e)
{
    json_t *root = json_loads(body, 0, NULL);
    if (!root)
        fail_msg("bad test JSON: %s", body);
    memset(e, 0, sizeof *e);
    int rc = api_fields_refuse(root, kind, e);
    json_decref(root);
    return rc;
}

static void test_neutral_values_pass(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "{}",
        "{\"typical_p\":1,\"mirostat\":0,\"tfs_z\":1.0,\"top_n_sigma\":-1,\"xtc_probability\":0,"
        "\"dry_multiplier\":0,\"dynatemp_range\":0,\"repeat_penalty\":1,\"min_tokens\":0}",
        "{\"audio\":null,\"web_search_options\":null,\"stop_token_ids\":[],\"include_stop_str_in_output\":false,"
        "\"use_beam_search\":false,\"prompt_logprobs\":null,\"allowed_token_ids\":null,\"bad_words\":[],"
        "\"truncate_prompt_tokens\":null,\"chat_template_kwargs\":{},\"continue_final_message\":false}",
        "{\"modalities\":[\"text\"],\"skip_special_tokens\":true,\"add_generation_prompt\":true}",
        "{\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":false}}",
        /* Ignored as harmless (docs/compatibility.md): never refused. */
        "{\"store\":true,\"metadata\":{\"a\":\"b\"},\"service_tier\":\"auto\",\"prediction\":{\"type\":\"content\"},"
        "\"reasoning_effort\":\"low\",\"safety_identifier\":\"x\",\"prompt_cache_key\":\"k\",\"verbosity\":\"medium\","
        "\"spaces_between_special_tokens\":true,\"length_penalty\":2,\"n_keep\":5}",
    };
    struct api_error e;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(check(API_CHAT, ok[i], &e), 0);
        assert_int_equal(check(API_COMPLETION, ok[i], &e), 0);
    }
    /* Completions' echo is implemented (params.c). */
    assert_int_equal(check(API_COMPLETION, "{\"echo\":true}", &e), 0);
}

/* add_generation_prompt: false and a non-empty chat_template_kwargs are not
 * fields.c's to refuse: a model's own Jinja template takes them, and only a
 * built-in template family refuses them (routes.c; test_chat_template.py). */
static void test_refused(void **state)
{
    (void)state;
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"typical_p\":0.9}", "typical_p"},
        {"{\"mirostat\":2}", "mirostat"},
        {"{\"tfs_z\":0.5}", "tfs_z"},
        {"{\"top_n_sigma\":1}", "top_n_sigma"},
        {"{\"xtc_probability\":0.5}", "xtc_probability"},
        {"{\"dry_multiplier\":0.8}", "dry_multiplier"},
        {"{\"dynatemp_range\":0.5}", "dynatemp_range"},
        {"{\"repeat_penalty\":1.1}", "repeat_penalty"},
        {"{\"min_tokens\":5}", "min_tokens"},
        {"{\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}}", "audio"},
        {"{\"web_search_options\":{}}", NULL}, /* empty: neutral */
        {"{\"web_search_options\":{\"search_context_size\":\"low\"}}", "web_search_options"},
        {"{\"stop_token_ids\":[1]}", "stop_token_ids"},
        {"{\"include_stop_str_in_output\":true}", "include_stop_str_in_output"},
        {"{\"use_beam_search\":true}", "use_beam_search"},
        {"{\"prompt_logprobs\":1}", "prompt_logprobs"},
        {"{\"allowed_token_ids\":[1,2]}", "allowed_token_ids"},
        {"{\"bad_words\":[\"x\"]}", "bad_words"},
        {"{\"truncate_prompt_tokens\":10}", "truncate_prompt_tokens"},
        {"{\"logits_processors\":[\"x\"]}", "logits_processors"},
        {"{\"return_tokens_as_token_ids\":true}", "return_tokens_as_token_ids"},
        {"{\"n_predict\":8}", "n_predict"},
        {"{\"n_probs\":2}", "n_probs"},
        {"{\"samplers\":[\"top_k\"]}", "samplers"},
        {"{\"continue_final_message\":true}", "continue_final_message"},
        {"{\"chat_template\":\"{{ x }}\"}", "chat_template"},
        {"{\"documents\":[{\"text\":\"x\"}]}", "documents"},
        {"{\"modalities\":[\"text\",\"audio\"]}", "modalities"},
        {"{\"modalities\":\"text\"}", "modalities"},
        {"{\"modalities\":[1]}", "modalities"},
        {"{\"skip_special_tokens\":false}", "skip_special_tokens"},
        {"{\"stream_options\":{\"continuous_usage_stats\":true}}", "stream_options"},
        {"{\"verbosity\":\"low\"}", "verbosity"},
    };
    struct api_error e;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = check(API_CHAT, bad[i].body, &e);
        if (!bad[i].param) {
            assert_int_equal(rc, 0);
            continue;
        }
        if (rc != LMD_EINVAL || e.status != 400 || !e.param || strcmp(e.param, bad[i].param) != 0)
            fail_msg("%s: rc %d status %d param %s", bad[i].body, rc, e.status, e.param ? e.param : "null");
        assert_non_null(strstr(e.msg, bad[i].param));
    }
    assert_int_equal(check(API_CHAT, "{\"echo\":true}", &e), LMD_EINVAL);
    assert_string_equal(e.param, "echo");
    assert_string_equal(e.code, "unsupported_parameter");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_neutral_values_pass),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
