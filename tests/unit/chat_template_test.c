/*
 * Chat templates: each family renders the exact text its models were
 * trained on, family detection from template text, unknown roles refused,
 * and the snprintf-style length contract.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "api/chat_template.h"

#define MSG(r, c)                                                                                                      \
    {                                                                                                                  \
        .role = r, .content = c, .content_len = sizeof(c) - 1                                                          \
    }

static const struct chat_msg conv[] = {MSG("system", "Be brief."), MSG("user", "Hi"), MSG("assistant", "Hello!"),
                                       MSG("user", "2+2?")};

static void expect(enum chat_family f, const struct chat_msg *m, int n, const char *want)
{
    char buf[1024];
    struct lmd_err err = {0};
    long len = chat_render(f, m, n, buf, sizeof buf, &err);
    assert_int_equal(len, (long)strlen(want));
    assert_string_equal(buf, want);
}

static void test_families(void **state)
{
    (void)state;
    expect(CHAT_GEMMA, conv, 4,
           "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
           "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n");
    expect(CHAT_LLAMA3, conv, 4,
           "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(CHAT_CHATML, conv, 4,
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
    expect(CHAT_MISTRAL, conv, 4, "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]");
    expect(CHAT_GENERIC, conv + 1, 1, "user: Hi\nassistant:");
}

static void test_detect(void **state)
{
    (void)state;
    const char *g = "{% for m in messages %}<start_of_turn>{{ m.role }}";
    assert_int_equal(chat_detect(g, strlen(g), "llama"), CHAT_GEMMA);
    const char *l3 = "<|start_header_id|>{{ role }}<|end_header_id|>";
    assert_int_equal(chat_detect(l3, strlen(l3), NULL), CHAT_LLAMA3);
    const char *q = "{{'<|im_start|>' + message['role']}}";
    assert_int_equal(chat_detect(q, strlen(q), NULL), CHAT_CHATML);
    const char *m = "{{ '[INST] ' + content + ' [/INST]' }}";
    assert_int_equal(chat_detect(m, strlen(m), NULL), CHAT_MISTRAL);
    assert_int_equal(chat_detect("{{ x }}", 7, NULL), CHAT_GENERIC);
    /* No template in the file: from the architecture. */
    assert_int_equal(chat_detect(NULL, 0, "gemma3"), CHAT_GEMMA);
    assert_int_equal(chat_detect(NULL, 0, "qwen2"), CHAT_CHATML);
    assert_int_equal(chat_detect(NULL, 0, "llama"), CHAT_GENERIC);
    enum chat_family f;
    assert_int_equal(chat_family_parse("llama3", &f), 0);
    assert_int_equal(f, CHAT_LLAMA3);
    assert_int_equal(chat_family_parse("jinja", &f), LMD_EINVAL);
}

static void test_errors_and_truncation(void **state)
{
    (void)state;
    struct lmd_err err = {0};
    const struct chat_msg bad[] = {MSG("user", "a"), MSG("wizard", "b")};
    assert_int_equal(chat_render(CHAT_CHATML, bad, 2, NULL, 0, &err), LMD_EINVAL);
    assert_non_null(strstr(err.msg, "messages[1].role"));
    char small[8];
    long need = chat_render(CHAT_CHATML, conv + 1, 1, small, sizeof small, &err);
    assert_int_equal(need, (long)strlen("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    assert_int_equal(strlen(small), sizeof small - 1); /* truncated, terminated */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_errors_and_truncation),
    };
    return cmocka_run_group_tests_name("chat_template", tests, NULL, NULL);
}
