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
 */
#include "api/jinja.h"
#include "cli/cli.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: lmd template TEMPLATE.jinja [VARS.json | -] [--now EPOCH]\n"
                 "       lmd template -m MODEL.gguf [VARS.json | -] [--now EPOCH]\n"
                 "\n"
                 "Renders a chat template with the members of the JSON object in VARS.json (or\n"
                 "stdin) as its variables, e.g. {\"messages\": [...], \"add_generation_prompt\": true,\n"
                 "\"bos_token\": \"<s>\"}, and prints the text.\n"
                 "\n"
                 "  -m MODEL.gguf  render the model's own tokenizer.chat_template, with its BOS\n"
                 "                 and EOS tokens as bos_token and eos_token unless VARS sets them\n"
                 "  --now EPOCH    the time strftime_now() reports (seconds since 1970, UTC)\n");
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

int cli_template(int argc, char **argv)
{
    const char *tmpl_path = NULL, *vars_path = NULL, *model = NULL;
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
        } else if (strcmp(argv[i], "--now") == 0) {
            long now;
            if (i + 1 >= argc || cli_parse_long("template", "--now", argv[i + 1], 1, 1L << 40, &now) != 0)
                return 2;
            opts.now = now;
            i++;
        } else if (!tmpl_path && !model) {
            tmpl_path = argv[i];
        } else if (!vars_path) {
            vars_path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!tmpl_path && !model) {
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
    } else {
        FILE *f = fopen(tmpl_path, "rb");
        src = f ? read_all(f, &len) : NULL;
        if (f)
            fclose(f);
        if (!src) {
            fprintf(stderr, "lmd template: cannot read %s\n", tmpl_path);
            return 1;
        }
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
        free(src);
        return 1;
    }
    if (model) {
        /* The vocabulary's tokens, as the server passes them. */
        if (!json_object_get(vars, "bos_token"))
            json_object_set_new(vars, "bos_token", json_string(bos));
        if (!json_object_get(vars, "eos_token"))
            json_object_set_new(vars, "eos_token", json_string(eos));
    }
    struct jinja_tmpl *t;
    struct jinja_err err;
    int rc = jinja_parse(src, len, &t, &err);
    free(src);
    if (rc != 0) {
        fprintf(stderr, "lmd template: %s:%d:%d: %s\n", tmpl_path, err.line, err.col, err.msg);
        json_decref(vars);
        return 1;
    }
    struct lmd_buf out = {0};
    rc = jinja_render(t, vars, &opts, &out, &err);
    jinja_free(t);
    json_decref(vars);
    if (rc != 0) {
        if (err.raised)
            fprintf(stderr, "lmd template: %s:%d:%d: raise_exception: %s\n", tmpl_path, err.line, err.col, err.msg);
        else
            fprintf(stderr, "lmd template: %s:%d:%d: %s\n", tmpl_path, err.line, err.col, err.msg);
        lmd_buf_free(&out);
        return err.raised ? 3 : 1;
    }
    fwrite(out.ptr ? out.ptr : "", 1, out.len, stdout);
    lmd_buf_free(&out);
    return 0;
}
