/*
 * Subcommands of the `lmd` binary. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit status.
 */
#pragma once

int cli_info(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_template(int argc, char **argv);

/* The model path used when -m is not given, and the hint printed when it is
 * missing. */
#define CLI_DEFAULT_MODEL "models/default.gguf"
const char *cli_default_model(void);
/* Prints a precise message to stderr when `path` is the default model and
 * does not exist; returns 1 then, else 0. */
int cli_check_model(const char *path);

/* Option values: an integer in [lo, hi] or a finite number. On a bad value
 * they print "CMD: OPT wants …, got 'S'" to stderr and return -1. */
int cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *cmd, const char *opt, const char *s, float *out);
