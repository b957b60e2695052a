/*
 * `lmd template TEMPLATE.jinja [VARS.json]`: render a chat template the way
 * `lmd serve` renders it for a chat request, with the JSON object's members
 * (messages, tools, add_generation_prompt, bos_token …) as its variables,
 * and print the text. For checking a template before serving it with
 * --chat-template-file, and for comparing lmd's rendering with Jinja2's.
 *
 * Exit status: 0 rendered; 1 the template or the variables are malformed
 * (the message names the line and column); 3 the template called
 * raise_exception (what a chat request answers with 400); 2 usage.
 */
#include "api/jinja.h"
#include "cli/cli.h"
#include "core/error.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: lmd template TEMPLATE.jinja [VARS.json | -] [--now EPOCH]\n"
                 "\n"
                 "Renders a chat template with the members of the JSON object in VARS.json (or\n"
                 "stdin) as its variables, e.g. {\"messages\": [...], \"add_generation_prompt\": true,\n"
                 "\"bos_token\": \"<s>\"}, and prints the text.\n"
                 "\n"
                 "  --now EPOCH   the time strftime_now() reports (seconds since 1970, UTC)\n");
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

int cli_template(int argc, char **argv)
{
    const char *tmpl_path = NULL, *vars_path = NULL;
    struct jinja_opts opts = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--now") == 0) {
            long now;
            if (i + 1 >= argc || cli_parse_long("template", "--now", argv[i + 1], 1, 1L << 40, &now) != 0)
                return 2;
            opts.now = now;
            i++;
        } else if (!tmpl_path) {
            tmpl_path = argv[i];
        } else if (!vars_path) {
            vars_path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!tmpl_path) {
        usage(stderr);
        return 2;
    }
    FILE *f = fopen(tmpl_path, "rb");
    if (!f) {
        fprintf(stderr, "lmd template: cannot read %s\n", tmpl_path);
        return 1;
    }
    size_t len = 0;
    char *src = read_all(f, &len);
    fclose(f);
    if (!src) {
        fprintf(stderr, "lmd template: cannot read %s\n", tmpl_path);
        return 1;
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
