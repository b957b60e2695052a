/*
 * Request bodies of /v1/completions and /v1/chat/completions -> struct
 * api_params, with OpenAI's ranges checked and every refusal naming the
 * field and the reason. Unknown fields are ignored, as OpenAI's servers
 * do; fields lmd cannot honour (prompt lists, echo with logprobs) are
 * refused rather than silently ignored.
 *
 * Not here: tokenization, the chat template, model lookup (routes.c).
 */
#include "api/api_int.h"
#include "sample/grammar.h"

#include <jansson.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BAD(field, ...) api_error_set(e, 400, "invalid_request_error", field, NULL, __VA_ARGS__)

/* A number field: absent or null leaves *out alone. */
static int get_num(json_t *o, const char *k, double lo, double hi, bool lo_open, double *out, bool *given,
                   struct api_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return BAD(k, "'%s' must be a number", k);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return BAD(k, "'%s' must be in %s%g, %g], got %g", k, lo_open ? "(" : "[", lo, hi, x);
    /* The samplers take 32-bit floats: a positive double below FLT_TRUE_MIN
     * becomes the excluded bound itself and would fail there, after
     * admission, as a server error. */
    if (lo_open && (float)x == (float)lo)
        return BAD(k, "'%s' must be in (%g, %g], got %g, which is %g as a 32-bit float", k, lo, hi, x,
                   (double)(float)x);
    *out = x;
    if (given)
        *given = true;
    return 0;
}

static int get_int(json_t *o, const char *k, long long lo, long long hi, long long *out, bool *given,
                   struct api_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return BAD(k, "'%s' must be an integer", k);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return BAD(k, "'%s' must be in [%lld, %lld], got %lld", k, lo, hi, x);
    *out = x;
    if (given)
        *given = true;
    return 0;
}

static int get_bool(json_t *o, const char *k, bool *out, struct api_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return BAD(k, "'%s' must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

static int parse_ids(struct api_params *p, json_t *arr, struct api_error *e)
{
    size_t n = json_array_size(arr);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    p->prompt_ids = malloc(n * sizeof *p->prompt_ids);
    if (!p->prompt_ids)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return BAD("prompt", "'prompt' token %zu is not a non-negative integer", i);
        p->prompt_ids[i] = (int32_t)json_integer_value(v);
    }
    p->n_prompt_ids = (int)n;
    return 0;
}

static int parse_prompt(struct api_params *p, json_t *root, struct api_error *e)
{
    json_t *v = json_object_get(root, "prompt");
    if (!v || json_is_null(v))
        return BAD("prompt", "'prompt' is required");
    if (json_is_string(v)) {
        p->prompt = json_string_value(v);
        p->prompt_len = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v))
        return BAD("prompt", "'prompt' must be a string, a list of one string, or a list of token ids");
    size_t n = json_array_size(v);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    json_t *first = json_array_get(v, 0);
    if (json_is_integer(first))
        return parse_ids(p, v, e);
    if (n > 1)
        return BAD("prompt", "'prompt' holds %zu prompts; lmd serves one prompt per request", n);
    if (json_is_string(first)) {
        p->prompt = json_string_value(first);
        p->prompt_len = json_string_length(first);
        return 0;
    }
    if (json_is_array(first))
        return parse_ids(p, first, e);
    return BAD("prompt", "'prompt' must be a string, a list of one string, or a list of token ids");
}

/* content: a string, null (an assistant turn with tool calls), or a list of
 * {"type":"text","text":...} parts, which are joined into one string that
 * the document owns (set back into the message as "content"). */
static int parse_content(json_t *m, size_t i, const char **out, size_t *len, struct api_error *e)
{
    json_t *c = json_object_get(m, "content");
    if (!c || json_is_null(c)) {
        *out = "";
        *len = 0;
        return 0;
    }
    if (json_is_string(c)) {
        *out = json_string_value(c);
        *len = json_string_length(c);
        return 0;
    }
    if (!json_is_array(c))
        return BAD("messages", "messages[%zu].content must be a string or a list of text parts", i);
    struct lmd_buf b = {0};
    size_t k;
    json_t *part;
    json_array_foreach(c, k, part)
    {
        json_t *t = json_object_get(part, "text");
        json_t *ty = json_object_get(part, "type");
        if (!json_is_string(t) || (ty && (!json_is_string(ty) || strcmp(json_string_value(ty), "text") != 0))) {
            lmd_buf_free(&b);
            return BAD("messages", "messages[%zu].content[%zu] must be a text part ({\"type\":\"text\",\"text\":...})",
                       i, k);
        }
        if (lmd_buf_append(&b, json_string_value(t), json_string_length(t))) {
            lmd_buf_free(&b);
            return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        }
    }
    json_t *joined = json_stringn(b.ptr ? b.ptr : "", b.len);
    lmd_buf_free(&b);
    if (!joined || json_object_set_new(m, "content", joined) != 0)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    c = json_object_get(m, "content");
    *out = json_string_value(c);
    *len = json_string_length(c);
    return 0;
}

static int parse_messages(struct api_params *p, json_t *root, struct api_error *e)
{
    static const char *const roles[] = {"system", "user", "assistant", "developer", "tool"};
    json_t *v = json_object_get(root, "messages");
    if (!v || json_is_null(v))
        return BAD("messages", "'messages' is required");
    if (!json_is_array(v) || json_array_size(v) == 0)
        return BAD("messages", "'messages' must be a non-empty list");
    size_t n = json_array_size(v);
    p->msgs = calloc(n, sizeof *p->msgs);
    if (!p->msgs)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        if (!json_is_object(m))
            return BAD("messages", "messages[%zu] must be an object", i);
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role))
            return BAD("messages", "messages[%zu].role must be a string", i);
        bool known = false;
        for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++)
            known |= strcmp(json_string_value(role), roles[r]) == 0;
        if (!known)
            return BAD("messages", "messages[%zu].role '%s' is not one of system, user, assistant, developer, tool", i,
                       json_string_value(role));
        p->msgs[i].role = json_string_value(role);
        if (parse_content(m, i, &p->msgs[i].content, &p->msgs[i].content_len, e))
            return LMD_EINVAL;
    }
    p->n_msgs = (int)n;
    return 0;
}

static int parse_stop(struct api_params *p, json_t *root, struct api_error *e)
{
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return BAD("stop", "'stop' must not be an empty string");
        p->stop[0] = json_string_value(v);
        p->stop_len[0] = json_string_length(v);
        p->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v))
        return BAD("stop", "'stop' must be a string or a list of strings");
    if (json_array_size(v) > API_MAX_STOP)
        return BAD("stop", "'stop' holds %zu strings; at most %d are allowed", json_array_size(v), API_MAX_STOP);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        if (!json_is_string(s) || json_string_length(s) == 0)
            return BAD("stop", "stop[%zu] must be a non-empty string", i);
        p->stop[i] = json_string_value(s);
        p->stop_len[i] = json_string_length(s);
    }
    p->n_stop = (int)json_array_size(v);
    return 0;
}

/* {"token id": bias}: ids are checked for syntax here and against the
 * vocabulary by the caller, which knows it. */
static int parse_bias(struct api_params *p, json_t *root, struct api_error *e)
{
    json_t *v = json_object_get(root, "logit_bias");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return BAD("logit_bias", "'logit_bias' must be an object mapping token ids (as strings) to numbers");
    size_t n = json_object_size(v);
    if (n > API_MAX_BIAS)
        return BAD("logit_bias", "'logit_bias' has %zu entries; at most %d are allowed", n, API_MAX_BIAS);
    if (n == 0)
        return 0;
    p->bias = malloc(n * sizeof *p->bias);
    if (!p->bias)
        return api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val)
    {
        char *end = NULL;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id > INT32_MAX || key[0] == '+' || key[0] == ' ')
            return BAD("logit_bias", "logit_bias key '%.40s' is not a token id (a non-negative integer)", key);
        if (!json_is_number(val))
            return BAD("logit_bias", "logit_bias['%.40s'] must be a number", key);
        double b = json_number_value(val);
        if (!isfinite(b) || b < -100 || b > 100)
            return BAD("logit_bias", "logit_bias['%.40s'] must be in [-100, 100], got %g", key, b);
        p->bias[p->n_bias++] = (struct sample_bias){.token = (int32_t)id, .bias = (float)b};
    }
    return 0;
}

/* Chat: logprobs true/false and top_logprobs 0..20. Completions: logprobs
 * 0..5, the number of alternatives (0 = the chosen token's only). */
/*
 * Fields that change what the answer must be, which lmd cannot honour yet:
 * refused with a 400 that names the field, never accepted and dropped (the
 * client would take unconstrained text for JSON, or plain text for a
 * declined tool call). Their harmless spellings pass: an empty
 * `functions` list, function_call "none".
 */
static int refuse_unsupported(json_t *root, struct api_error *e)
{
    /* The deprecated spelling of tools: clients have moved to `tools`,
     * which is served (tools.c). */
    json_t *fns = json_object_get(root, "functions");
    if (fns && !json_is_null(fns) && !(json_is_array(fns) && json_array_size(fns) == 0))
        return api_error_set(e, 400, "invalid_request_error", "functions", "unsupported_parameter",
                             "'functions' (deprecated by OpenAI) is not supported by this server; send the same "
                             "definitions as 'tools'");
    /* Constrained decoding as vLLM and llama.cpp spell it, and completion
     * features that change the text: refused whenever given. */
    static const char *const constrained[] = {"guided_json", "guided_regex", "guided_choice", "guided_grammar",
                                              "json_schema"};
    for (size_t i = 0; i < sizeof constrained / sizeof constrained[0]; i++) {
        json_t *v = json_object_get(root, constrained[i]);
        if (v && !json_is_null(v))
            return api_error_set(e, 400, "invalid_request_error", constrained[i], "unsupported_parameter",
                                 "'%s' is not supported by this server yet: the output would not be constrained",
                                 constrained[i]);
    }
    json_t *suffix = json_object_get(root, "suffix");
    if (suffix && !json_is_null(suffix) && !(json_is_string(suffix) && json_string_length(suffix) == 0))
        return api_error_set(e, 400, "invalid_request_error", "suffix", "unsupported_parameter",
                             "'suffix' (text after the insertion) is not supported by this server");
    json_t *best_of = json_object_get(root, "best_of");
    if (best_of && !json_is_null(best_of) && !(json_is_integer(best_of) && json_integer_value(best_of) == 1))
        return api_error_set(e, 400, "invalid_request_error", "best_of", "unsupported_parameter",
                             "'best_of' other than 1 is not supported by this server; use 'n'");
    json_t *fc = json_object_get(root, "function_call");
    if (fc && !json_is_null(fc) && !(json_is_string(fc) && strcmp(json_string_value(fc), "none") == 0))
        return api_error_set(e, 400, "invalid_request_error", "function_call", "unsupported_parameter",
                             "'function_call' (deprecated by OpenAI) other than \"none\" is not supported by this "
                             "server; use 'tool_choice'");
    return 0;
}

/*
 * Structured output: response_format (OpenAI's text, json_object and
 * json_schema) and llama.cpp's `grammar` (GBNF text). Only the shape is
 * checked here; the schema or grammar is compiled once the model is known
 * (api_structured_compile), since a model that forwards requests passes
 * response_format on to its upstream instead.
 */
static int parse_structured(struct api_params *p, json_t *root, struct api_error *e)
{
    json_t *rf = json_object_get(root, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t))
            return BAD("response_format", "'response_format' must be an object with a string 'type'");
        const char *ty = json_string_value(t);
        const char *key;
        json_t *v;
        if (strcmp(ty, "text") == 0) {
            p->rf_kind = API_RF_TEXT;
        } else if (strcmp(ty, "json_object") == 0) {
            p->rf_kind = API_RF_JSON_OBJECT;
        } else if (strcmp(ty, "json_schema") == 0) {
            p->rf_kind = API_RF_JSON_SCHEMA;
            json_t *js = json_object_get(rf, "json_schema");
            if (!json_is_object(js))
                return BAD("response_format", "response_format type 'json_schema' needs a 'json_schema' object");
            json_object_foreach(js, key, v)
            {
                if (strcmp(key, "name") == 0) {
                    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 64)
                        return BAD("response_format", "'response_format.json_schema.name' must be a string of 1 to "
                                                      "64 characters");
                } else if (strcmp(key, "description") == 0) {
                    if (!json_is_string(v))
                        return BAD("response_format", "'response_format.json_schema.description' must be a string");
                } else if (strcmp(key, "strict") == 0) {
                    if (!json_is_boolean(v) && !json_is_null(v))
                        return BAD("response_format", "'response_format.json_schema.strict' must be a boolean");
                } else if (strcmp(key, "schema") == 0) {
                    if (!json_is_object(v) && !json_is_boolean(v))
                        return BAD("response_format", "'response_format.json_schema.schema' must be a JSON Schema "
                                                      "object");
                    p->rf_schema = v;
                } else {
                    return BAD("response_format",
                               "unknown field 'response_format.json_schema.%.64s' (name, "
                               "description, schema, strict)",
                               key);
                }
            }
            if (!json_object_get(js, "name"))
                return BAD("response_format", "'response_format.json_schema.name' is required");
        } else {
            return BAD("response_format", "unknown response_format type '%.64s' (text, json_object or json_schema)",
                       ty);
        }
        json_object_foreach(rf, key, v)
        {
            if (strcmp(key, "type") != 0 && !(p->rf_kind == API_RF_JSON_SCHEMA && strcmp(key, "json_schema") == 0))
                return BAD("response_format", "unknown field 'response_format.%.64s' for type '%s'", key, ty);
        }
    }
    json_t *g = json_object_get(root, "grammar");
    if (g && !json_is_null(g)) {
        if (!json_is_string(g) || json_string_length(g) == 0)
            return BAD("grammar", "'grammar' must be a non-empty string (GBNF)");
        if (p->rf_kind == API_RF_JSON_OBJECT || p->rf_kind == API_RF_JSON_SCHEMA)
            return BAD("grammar", "'grammar' and a JSON 'response_format' cannot be used together");
        p->grammar_text = json_string_value(g);
        p->grammar_len = json_string_length(g);
    }
    return 0;
}

static int parse_logprobs(struct api_params *p, json_t *root, struct api_error *e)
{
    json_t *lp = json_object_get(root, "logprobs");
    bool on = lp && !json_is_null(lp) && !json_is_false(lp);
    if (p->kind == API_CHAT) {
        bool want = false;
        long long top = 0;
        bool top_given = false;
        if (get_bool(root, "logprobs", &want, e) ||
            get_int(root, "top_logprobs", 0, API_MAX_TOP_CHAT, &top, &top_given, e))
            return LMD_EINVAL;
        if (top_given && !want)
            return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        p->logprobs = want ? (int)top : -1;
        return 0;
    }
    if (!on)
        return 0;
    if (json_is_true(lp))
        return BAD("logprobs",
                   "'logprobs' must be an integer in [0, %d] for completions (the number of "
                   "alternatives per token)",
                   API_MAX_TOP_COMPLETION);
    long long k = 0;
    if (get_int(root, "logprobs", 0, API_MAX_TOP_COMPLETION, &k, NULL, e))
        return LMD_EINVAL;
    p->logprobs = (int)k;
    return 0;
}

int api_params_parse(struct api_params *p, enum api_kind kind, const char *body, size_t len, struct api_error *e)
{
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->max_tokens = -1;
    p->n = 1;
    p->logprobs = -1;
    sample_params_default(&p->sp);
    p->sp.temperature = 1.0f;
    p->sp.top_k = 0;
    p->sp.top_p = 1.0f;
    p->sp.min_p = 0.0f;

    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    p->doc = root;
    if (!json_is_object(root))
        return BAD(NULL, "the body must be a JSON object");

    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model))
            return BAD("model", "'model' must be a string");
        p->model = json_string_value(model);
    }
    if (kind == API_COMPLETION ? parse_prompt(p, root, e) : parse_messages(p, root, e))
        return LMD_EINVAL;

    long long n = 1, mt = -1, top_k = 0, seed = 0;
    double temp = 1, top_p = 1, min_p = 0, pres = 0, freq = 0, rep = 1;
    if (get_int(root, "n", 1, API_MAX_N, &n, NULL, e))
        return LMD_EINVAL;
    if (get_int(root, "max_tokens", 1, 1 << 24, &mt, NULL, e) ||
        get_int(root, "max_completion_tokens", 1, 1 << 24, &mt, NULL, e))
        return LMD_EINVAL;
    if (get_num(root, "temperature", 0, 2, false, &temp, NULL, e) ||
        get_num(root, "top_p", 0, 1, true, &top_p, NULL, e) || get_int(root, "top_k", -1, 1 << 30, &top_k, NULL, e) ||
        get_num(root, "min_p", 0, 1, false, &min_p, NULL, e) ||
        get_num(root, "presence_penalty", -2, 2, false, &pres, NULL, e) ||
        get_num(root, "frequency_penalty", -2, 2, false, &freq, NULL, e) ||
        get_num(root, "repetition_penalty", 0, 10, true, &rep, NULL, e) ||
        get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, &p->seed_set, e))
        return LMD_EINVAL;
    if (parse_stop(p, root, e) || get_bool(root, "stream", &p->stream, e))
        return LMD_EINVAL;

    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return BAD("stream_options", "'stream_options' must be an object");
        if (get_bool(so, "include_usage", &p->include_usage, e))
            return LMD_EINVAL;
    }
    if (parse_logprobs(p, root, e) || parse_bias(p, root, e) || get_bool(root, "ignore_eos", &p->ignore_eos, e) ||
        refuse_unsupported(root, e) || parse_structured(p, root, e))
        return LMD_EINVAL;
    if (kind == API_CHAT && api__tools_parse(p, root, e) != 0)
        return LMD_EINVAL;
    if (kind == API_COMPLETION) {
        /* Chat fields: a completion has no template to show tools to. */
        json_t *t = json_object_get(root, "tools"), *tc = json_object_get(root, "tool_choice");
        if (t && !json_is_null(t) && !(json_is_array(t) && json_array_size(t) == 0))
            return BAD("tools", "'tools' is a chat completions field; /v1/completions takes none");
        if (tc && !json_is_null(tc) && !(json_is_string(tc) && strcmp(json_string_value(tc), "none") == 0))
            return BAD("tool_choice", "'tool_choice' is a chat completions field; /v1/completions takes none");
    }
    const bool calling = p->tools && p->tool_choice != API_TC_NONE;
    if (calling && (p->grammar_text || p->rf_kind == API_RF_JSON_OBJECT || p->rf_kind == API_RF_JSON_SCHEMA))
        return BAD("tools", "'tools' cannot be combined with constrained output ('response_format' or 'grammar') "
                            "unless 'tool_choice' is \"none\"");
    /* A streamed call is held back until it is whole, so its tokens'
     * log-probabilities would have no chunk to travel in. */
    if (calling && p->stream && p->logprobs >= 0)
        return BAD("logprobs", "'logprobs' cannot be used with 'tools' in a streamed response; leave out one of "
                               "them or send \"stream\": false");
    if (p->ignore_eos && (p->tool_choice == API_TC_REQUIRED || p->tool_choice == API_TC_NAMED))
        return BAD("ignore_eos", "'ignore_eos' cannot be used with a forced 'tool_choice': the output must end "
                                 "where the call does");
    if (p->ignore_eos && (p->grammar_text || p->rf_kind == API_RF_JSON_OBJECT || p->rf_kind == API_RF_JSON_SCHEMA))
        return BAD("ignore_eos", "'ignore_eos' cannot be used with constrained output ('response_format' or "
                                 "'grammar'): the output must end where the grammar does");
    /* The service class: a class name, or vLLM's integer (any value, lower
     * = more urgent, 0 = the default), which the caller maps onto classes
     * by the configured thresholds. */
    json_t *prio = json_object_get(root, "priority");
    if (prio && !json_is_null(prio)) {
        if (json_is_string(prio)) {
            p->priority = json_string_value(prio);
            p->priority_len = json_string_length(prio);
        } else if (json_is_integer(prio)) {
            p->priority_num = json_integer_value(prio);
            p->priority_num_set = true;
        } else {
            return BAD("priority", "'priority' must be a service class name or an integer (lower = more urgent, "
                                   "0 = the default)");
        }
    }
    json_t *salt = json_object_get(root, "cache_salt");
    if (salt && !json_is_null(salt)) {
        if (!json_is_string(salt) || json_string_length(salt) == 0)
            return BAD("cache_salt", "'cache_salt' must be a non-empty string");
        p->cache_salt = json_string_value(salt);
        p->cache_salt_len = json_string_length(salt);
    }
    json_t *user = json_object_get(root, "user");
    if (user && !json_is_null(user) && !json_is_string(user))
        return BAD("user", "'user' must be a string");
    if (kind == API_CHAT) {
        /* Inputs of the model's chat template (vLLM's spelling); whether
         * the model has one to take them is the caller's check. */
        p->add_generation_prompt = true;
        if (get_bool(root, "add_generation_prompt", &p->add_generation_prompt, e))
            return LMD_EINVAL;
        json_t *kw = json_object_get(root, "chat_template_kwargs");
        if (kw && !json_is_null(kw) && !json_is_object(kw))
            return BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object");
        p->has_template_kwargs = json_object_size(kw) > 0;
    }
    if (kind == API_COMPLETION) {
        if (get_bool(root, "echo", &p->echo, e))
            return LMD_EINVAL;
        /* The prompt's own log-probabilities would need a forward pass
         * that keeps every prompt position's logits, which the engine does
         * not do; refusing is more honest than nulls. */
        if (p->echo && p->logprobs >= 0)
            return BAD("echo", "'echo' together with 'logprobs' is not supported (the prompt's log-probabilities "
                               "are not computed); use one or the other");
    }

    p->max_tokens = (int)mt;
    p->n = (int)n;
    p->sp.temperature = (float)temp;
    p->sp.top_p = (float)top_p;
    p->sp.top_k = top_k < 0 ? 0 : (int)top_k;
    p->sp.min_p = (float)min_p;
    p->sp.presence_penalty = (float)pres;
    p->sp.frequency_penalty = (float)freq;
    p->sp.repetition_penalty = (float)rep;
    p->sp.seed = (uint64_t)seed;
    return 0;
}

void api_params_free(struct api_params *p)
{
    free(p->prompt_ids);
    free(p->msgs);
    free(p->bias);
    gram_free(p->grammar);
    free(p->echo_json);
    json_decref((json_t *)p->doc);
    memset(p, 0, sizeof *p);
}
