/*
 * Request fields that lmd does not implement but that clients send: those
 * whose absence would change the answer are refused with a 400 naming the
 * field; their neutral values pass, so a client that spells out defaults
 * is served. OpenAI's own fields come first, then vLLM's and llama.cpp's
 * extensions. docs/compatibility.md lists every field and what lmd does
 * with it, including the ones ignored because they cannot change the text.
 *
 * Not here: the fields lmd implements (params.c), structured output and
 * tools (params.c, their own parsers), and the chat template's inputs
 * (add_generation_prompt, chat_template_kwargs: refused by routes.c only
 * where the model has no template of its own).
 */
#include "api/api_int.h"

#include <jansson.h>

#include <string.h>

#define REFUSE(field, ...) api_error_set(e, 400, "invalid_request_error", field, "unsupported_parameter", __VA_ARGS__)

/* Whether v is given and is not the neutral value: null and absent are
 * neutral; so are false, an empty list or object, and the number `neutral`. */
static bool given(json_t *v, double neutral)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return false;
    if (json_is_number(v))
        return json_number_value(v) != neutral;
    if (json_is_array(v))
        return json_array_size(v) > 0;
    if (json_is_object(v))
        return json_object_size(v) > 0;
    return true;
}

/* Sampling extensions of vLLM and llama.cpp that lmd's sampler does not
 * have, with the value at which each does nothing. */
static const struct {
    const char *name;
    double neutral;
    const char *what;
} samplers[] = {
    {"typical_p", 1, "locally typical sampling"},
    {"mirostat", 0, "Mirostat sampling"},
    {"tfs_z", 1, "tail-free sampling"},
    {"top_n_sigma", -1, "top-n-sigma sampling"},
    {"xtc_probability", 0, "XTC sampling"},
    {"dry_multiplier", 0, "DRY repetition penalty"},
    {"dynatemp_range", 0, "dynamic temperature"},
    {"repeat_penalty", 1, "llama.cpp's spelling of the repetition penalty (lmd reads 'repetition_penalty')"},
    {"min_tokens", 0, "a minimum output length"},
};

/* Fields that are lists or switches: refused whenever given (not null,
 * false or empty). */
static const struct {
    const char *name;
    const char *what;
} switches[] = {
    {"audio", "audio output"},
    {"web_search_options", "web search"},
    {"stop_token_ids", "stopping at token ids (use 'stop' strings)"},
    {"include_stop_str_in_output", "keeping the stop string in the text"},
    {"use_beam_search", "beam search"},
    {"prompt_logprobs", "the prompt's log-probabilities"},
    {"allowed_token_ids", "restricting the vocabulary"},
    {"bad_words", "banned words"},
    {"truncate_prompt_tokens", "truncating the prompt"},
    {"logits_processors", "logits processors"},
    {"return_tokens_as_token_ids", "tokens spelled as ids in log-probabilities"},
    {"n_predict", "llama.cpp's output length (lmd reads 'max_tokens')"},
    {"n_probs", "llama.cpp's token probabilities (lmd reads 'logprobs')"},
    {"samplers", "a sampler order"},
    /* Chat-template controls: the template is rendered without them, so
     * a request that relies on them would get another prompt. */
    {"continue_final_message", "continuing the last assistant message"},
    {"chat_template", "a chat template given in the request"},
    {"documents", "documents passed to the chat template"},
};

int api_fields_refuse(void *doc, enum api_kind kind, struct api_error *e)
{
    json_t *root = doc;
    for (size_t i = 0; i < sizeof samplers / sizeof samplers[0]; i++) {
        json_t *v = json_object_get(root, samplers[i].name);
        if (given(v, samplers[i].neutral))
            return REFUSE(samplers[i].name, "'%s' (%s) is not supported by this server%s", samplers[i].name,
                          samplers[i].what, json_is_number(v) ? "; leave it out or at its neutral value" : "");
    }
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++)
        if (given(json_object_get(root, switches[i].name), 0))
            return REFUSE(switches[i].name, "'%s' (%s) is not supported by this server", switches[i].name,
                          switches[i].what);
    /* Text only: ["text"] (or nothing) is the one output lmd makes. */
    json_t *mod = json_object_get(root, "modalities");
    if (mod && !json_is_null(mod)) {
        size_t k;
        json_t *m;
        if (!json_is_array(mod))
            return api_error_set(e, 400, "invalid_request_error", "modalities", NULL,
                                 "'modalities' must be a list of strings");
        json_array_foreach(mod, k, m)
        {
            if (!json_is_string(m) || strcmp(json_string_value(m), "text") != 0)
                return REFUSE("modalities", "'modalities' may hold only \"text\": lmd produces text only");
        }
    }
    /* A length hint lmd cannot follow: only the default passes. */
    json_t *verb = json_object_get(root, "verbosity");
    if (verb && !json_is_null(verb) && !(json_is_string(verb) && strcmp(json_string_value(verb), "medium") == 0))
        return REFUSE("verbosity", "'verbosity' other than \"medium\" is not supported by this server");
    /* Tokens the detokenizer hides are hidden: true is what lmd does. */
    json_t *skip = json_object_get(root, "skip_special_tokens");
    if (json_is_false(skip))
        return REFUSE("skip_special_tokens", "'skip_special_tokens': false is not supported: lmd's text never spells "
                                             "control tokens");
    /* vLLM's chat echo (the last message first) is not done; completions'
     * echo is (params.c). */
    if (kind == API_CHAT && given(json_object_get(root, "echo"), 0))
        return REFUSE("echo", "'echo' is not supported for chat completions");
    /* add_generation_prompt and chat_template_kwargs are inputs of the
     * model's own chat template: params.c checks their types, and a model
     * on a built-in template family refuses them (routes.c), since only a
     * template can honour them. */
    json_t *so = json_object_get(root, "stream_options");
    if (json_is_object(so) && given(json_object_get(so, "continuous_usage_stats"), 0))
        return REFUSE("stream_options", "'stream_options.continuous_usage_stats' (usage in every chunk) is not "
                                        "supported; 'include_usage' gives it in the last chunk");
    return 0;
}
