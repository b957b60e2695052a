/*
 * `lmd template TEMPLATE.jinja [VARS.json]`: render a chat template the way
 * `lmd serve` renders it for a chat request, with the JSON object's members
 * (messages, tools, add_generation_prompt, bos_token …) as its variables,
 * and print the text. For checking a template before serving it with
 * --chat-template-file, and for comparing lmd's rendering with Jinja2's.
 * `lmd template -m MODEL.gguf [VARS.json]` renders the GGUF's own template,
 * with bos_token and eos_token from its vocabulary unless VARS sets them.
 *
 * Exit status: 0 rendered; 1 the template or the variables are malformed
 * (the message names the line and column); 3 the template called
 * raise_exception (what a chat request answers with 400); 2 usage.
 *
 * `--batch` renders many cases in one process: a stream of JSON objects
 * {"template": SOURCE, "vars": {...}} (the template may be left out when
 * TEMPLATE.jinja or -m names one), answered in order by one JSON line each
 * with the status a single render would exit with and the text or the
 * error. For checking a template over many conversations, where starting
 * one process per render costs more than rendering.
 */
#include "api/jinja.h"
#include "cli/cli.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: lmd template TEMPLATE.jinja [VARS.json | -] [--now EPOCH]\n"
                 "       lmd template -m MODEL.gguf [VARS.json | -] [--now EPOCH]\n"
                 "       lmd template [TEMPLATE.jinja | -m MODEL.gguf] --batch CASES|- [--now EPOCH]\n"
                 "\n"
                 "Renders a chat template with the members of the JSON object in VARS.json (or\n"
                 "stdin) as its variables, e.g. {\"messages\": [...], \"add_generation_prompt\": true,\n"
                 "\"bos_token\": \"<s>\"}, and prints the text. Exit status: 0 rendered, 1 the\n"
                 "template or the variables are malformed, 3 the template called raise_exception.\n"
                 "\n"
                 "  -m MODEL.gguf  render the model's own tokenizer.chat_template, with its BOS\n"
                 "                 and EOS tokens as bos_token and eos_token unless VARS sets them\n"
                 "  --now EPOCH    the time strftime_now() reports (seconds since 1970, UTC)\n"
                 "  --batch CASES  render many cases in one process: CASES (- for stdin) is a stream\n"
                 "                 of JSON objects, one a line or spread over several,\n"
                 "                   {\"template\": \"SOURCE\", \"vars\": {...}}\n"
                 "                 (\"template\" may be left out when TEMPLATE.jinja or -m gives\n"
                 "                 one). Each case is answered in order by one JSON line:\n"
                 "                   {\"status\": 0, \"output\": \"TEXT\"}\n"
                 "                   {\"status\": 1 or 3, \"error\": \"MSG\", \"line\": L, \"col\": C}\n"
                 "                 with the status a single render would exit with. The command\n"
                 "                 exits 0 once every case is answered, 1 at a case that is not\n"
                 "                 such an object (the cases before it are answered).\n");
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *more = realloc(buf, cap * 2);
        if (!more) {
            free(buf);
            return NULL;
        }
        buf = more;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* The GGUF's tokenizer.chat_template (malloc'd) and the text of its BOS and
 * EOS tokens ("" when it has none). */
static int model_template(const char *path, char **src, size_t *len, char *bos, char *eos, size_t cap)
{
    struct gguf_file *g;
    struct tok_vocab *v = NULL;
    struct lmd_err err = {0};
    if (gguf_open(&g, path, &err) != 0) {
        fprintf(stderr, "lmd template: %s\n", err.msg);
        return -1;
    }
    struct gguf_str t = {0};
    int rc = -1;
    if (gguf_get_str(g, "tokenizer.chat_template", &t, NULL) != 0 || !t.len) {
        fprintf(stderr, "lmd template: %s has no tokenizer.chat_template (chats use a built-in template)\n", path);
    } else if (tok_load(&v, g, &err) != 0) {
        fprintf(stderr, "lmd template: %s\n", err.msg);
    } else if ((*src = malloc((size_t)t.len + 1))) {
        memcpy(*src, t.ptr, (size_t)t.len);
        *len = (size_t)t.len;
        snprintf(bos, cap, "%s", tok_bos(v) >= 0 ? tok_token_text(v, tok_bos(v)) : "");
        snprintf(eos, cap, "%s", tok_eos(v) >= 0 ? tok_token_text(v, tok_eos(v)) : "");
        rc = 0;
    }
    tok_free(v);
    gguf_close(g);
    return rc;
}

/* Parse and render one template: 0 rendered (text in out), 1 malformed or
 * past a limit, 3 raised (err says why). */
static int render_one(const char *src, size_t len, const struct jinja_tmpl *parsed, const json_t *vars,
                      const struct jinja_opts *opts, struct lmd_buf *out, struct jinja_err *err)
{
    struct jinja_tmpl *own = NULL;
    if (!parsed) {
        if (jinja_parse(src, len, &own, err) != 0)
            return 1;
        parsed = own;
    }
    int rc = jinja_render(parsed, vars, opts, out, err);
    jinja_free(own);
    if (rc != 0)
        return err->raised ? 3 : 1;
    return 0;
}

/* The variables a model's template gets from its vocabulary, as the server
 * passes them, unless vars sets them. */
static void add_special_tokens(json_t *vars, const char *bos, const char *eos)
{
    if (!json_object_get(vars, "bos_token"))
        json_object_set_new(vars, "bos_token", json_string(bos));
    if (!json_object_get(vars, "eos_token"))
        json_object_set_new(vars, "eos_token", json_string(eos));
}

/* One case's answer as a JSON line on stdout (flushed, so that a reader
 * can wait for each answer before it sends the next case). */
static void batch_answer(int status, const struct lmd_buf *out, const struct jinja_err *err)
{
    json_t *o = json_object();
    if (status == 0) {
        json_t *text = json_stringn(out->ptr ? out->ptr : "", out->len);
        if (text) {
            json_object_set_new(o, "status", json_integer(0));
            json_object_set_new(o, "output", text);
        } else {
            /* Not expected (the inputs are UTF-8 and the engine cuts on
             * characters), but a reader must never get a broken line. */
            json_object_set_new(o, "status", json_integer(1));
            json_object_set_new(o, "error", json_string("the rendering is not valid UTF-8"));
        }
    } else {
        json_t *msg = json_string(err->msg);
        json_object_set_new(o, "status", json_integer(status));
        json_object_set_new(o, "error", msg ? msg : json_string("(the error message is not valid UTF-8)"));
        json_object_set_new(o, "line", json_integer(err->line));
        json_object_set_new(o, "col", json_integer(err->col));
    }
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (line) {
        fputs(line, stdout);
        free(line);
    }
    fputc('\n', stdout);
    fflush(stdout);
}

/* Reads the cases one JSON object at a time and answers each. fixed is the
 * template of TEMPLATE.jinja or the model (NULL when every case brings its
 * own); bos and eos are set for a model's template. Returns the exit status. */
static int batch(const char *cases_path, const struct jinja_tmpl *fixed, const char *bos, const char *eos,
                 const struct jinja_opts *opts)
{
    bool from_stdin = strcmp(cases_path, "-") == 0;
    FILE *f = from_stdin ? stdin : fopen(cases_path, "rb");
    if (!f) {
        fprintf(stderr, "lmd template: cannot read %s\n", cases_path);
        return 1;
    }
    const char *name = from_stdin ? "stdin" : cases_path;
    int rc = 0;
    for (long n = 1;; n++) {
        int c;
        while ((c = getc(f)) != EOF && (c == ' ' || c == '\t' || c == '\n' || c == '\r'))
            ;
        if (c == EOF)
            break;
        ungetc(c, f);
        /* JSON_DISABLE_EOF_CHECK: the decoder stops at the object's closing
         * brace and leaves the rest of the stream, the next cases, unread.
         * JSON_ALLOW_NUL: a template file may hold NUL bytes, and so may
         * the same source sent as a JSON string. */
        json_error_t jerr;
        json_t *cs = json_loadf(f, JSON_DISABLE_EOF_CHECK | JSON_ALLOW_NUL, &jerr);
        const char *bad = NULL;
        json_t *src = NULL, *vars = NULL;
        if (!cs) {
            bad = jerr.text;
        } else if (!json_is_object(cs)) {
            bad = "a case must be a JSON object {\"template\": SOURCE, \"vars\": {...}}";
        } else {
            const char *key;
            json_t *val;
            json_object_foreach(cs, key, val)
            {
                if (strcmp(key, "template") != 0 && strcmp(key, "vars") != 0) {
                    bad = "a case has only \"template\" and \"vars\"";
                    break;
                }
            }
            src = json_object_get(cs, "template");
            vars = json_object_get(cs, "vars");
            if (bad) {
            } else if (src && !json_is_string(src)) {
                bad = "\"template\" must be a string";
            } else if (!src && !fixed) {
                bad = "no template: give TEMPLATE.jinja or -m MODEL.gguf, or \"template\" in every case";
            } else if (!vars || !json_is_object(vars)) {
                bad = "\"vars\" must be a JSON object";
            }
        }
        if (bad) {
            fprintf(stderr, "lmd template: %s: case %ld: %s\n", name, n, bad);
            json_decref(cs);
            rc = 1;
            break;
        }
        if (bos)
            add_special_tokens(vars, bos, eos);
        struct lmd_buf out = {0};
        struct jinja_err err = {0};
        int st = src ? render_one(json_string_value(src), json_string_length(src), NULL, vars, opts, &out, &err)
                     : render_one(NULL, 0, fixed, vars, opts, &out, &err);
        batch_answer(st, &out, &err);
        lmd_buf_free(&out);
        json_decref(cs);
    }
    if (!from_stdin)
        fclose(f);
    return rc;
}

int cli_template(int argc, char **argv)
{
    const char *tmpl_path = NULL, *vars_path = NULL, *model = NULL, *cases_path = NULL;
    struct jinja_opts opts = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "-m") == 0 || strcmp(argv[i], "--model") == 0) {
            if (i + 1 >= argc) {
                usage(stderr);
                return 2;
            }
            model = argv[++i];
        } else if (strcmp(argv[i], "--batch") == 0) {
            if (i + 1 >= argc) {
                usage(stderr);
                return 2;
            }
            cases_path = argv[++i];
        } else if (strcmp(argv[i], "--now") == 0) {
            long now;
            if (i + 1 >= argc || cli_parse_long("template", "--now", argv[i + 1], 1, 1L << 40, &now) != 0)
                return 2;
            opts.now = now;
            i++;
        } else if (!tmpl_path && !model && !cases_path) {
            tmpl_path = argv[i];
        } else if (!vars_path && !cases_path) {
            vars_path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if ((!tmpl_path && !model && !cases_path) || (cases_path && (vars_path || (tmpl_path && model)))) {
        usage(stderr);
        return 2;
    }
    size_t len = 0;
    char *src = NULL;
    char bos[256] = "", eos[256] = "";
    if (model) {
        tmpl_path = model;
        if (model_template(model, &src, &len, bos, eos, sizeof bos) != 0)
            return 1;
    } else if (tmpl_path) {
        FILE *f = fopen(tmpl_path, "rb");
        src = f ? read_all(f, &len) : NULL;
        if (f)
            fclose(f);
        if (!src) {
            fprintf(stderr, "lmd template: cannot read %s\n", tmpl_path);
            return 1;
        }
    }
    struct jinja_tmpl *t = NULL;
    struct jinja_err err;
    if (src) {
        int rc = jinja_parse(src, len, &t, &err);
        free(src);
        if (rc != 0) {
            fprintf(stderr, "lmd template: %s:%d:%d: %s\n", tmpl_path, err.line, err.col, err.msg);
            return 1;
        }
    }
    if (cases_path) {
        int rc = batch(cases_path, t, model ? bos : NULL, eos, &opts);
        jinja_free(t);
        return rc;
    }
    json_error_t jerr;
    json_t *vars;
    if (!vars_path || strcmp(vars_path, "-") == 0)
        vars = json_loadf(stdin, 0, &jerr);
    else
        vars = json_load_file(vars_path, 0, &jerr);
    if (!vars || !json_is_object(vars)) {
        fprintf(stderr, "lmd template: %s: %s\n", vars_path ? vars_path : "stdin",
                vars ? "the variables must be a JSON object" : jerr.text);
        json_decref(vars);
        jinja_free(t);
        return 1;
    }
    if (model)
        add_special_tokens(vars, bos, eos);
    struct lmd_buf out = {0};
    int rc = render_one(NULL, 0, t, vars, &opts, &out, &err);
    jinja_free(t);
    json_decref(vars);
    if (rc != 0) {
        if (err.raised)
            fprintf(stderr, "lmd template: %s:%d:%d: raise_exception: %s\n", tmpl_path, err.line, err.col, err.msg);
        else
            fprintf(stderr, "lmd template: %s:%d:%d: %s\n", tmpl_path, err.line, err.col, err.msg);
        lmd_buf_free(&out);
        return rc;
    }
    fwrite(out.ptr ? out.ptr : "", 1, out.len, stdout);
    lmd_buf_free(&out);
    return 0;
}
