/*
 * The `lmd` binary: dispatches to one subcommand per file (info, run,
 * serve, bench, template) and answers --version and --help.
 */
#include "cli/cli.h"
#include "core/cpu.h"
#include "engine/engine.h"
#include "kernels/kernels.h"
#include "lmd_version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: lmd <command> [options]\n"
                 "\n"
                 "commands:\n"
                 "  serve      serve the OpenAI-compatible HTTP API\n"
                 "  run        generate a completion for one prompt on the terminal\n"
                 "  bench      measure prefill and decode speed of a model\n"
                 "  info       print a GGUF model's header, metadata and tensors\n"
                 "  template   render a chat template (a file or a GGUF's) over a JSON conversation\n"
                 "\n"
                 "  lmd --version     version, commit, CPU features and kernel path\n"
                 "  lmd <command> --help\n");
}

const char *cli_default_model(void)
{
    const char *env = getenv("LMD_MODEL");
    return env && *env ? env : CLI_DEFAULT_MODEL;
}

int cli_check_model(const char *path)
{
    if (access(path, R_OK) == 0)
        return 0;
    if (strcmp(path, CLI_DEFAULT_MODEL) == 0)
        fprintf(stderr,
                "lmd: the default model %s is missing.\n"
                "     Fetch it with `make model` (or scripts/fetch-model.sh), or pass -m MODEL.gguf.\n",
                path);
    else
        fprintf(stderr, "lmd: cannot read model file %s\n", path);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        char feat[256];
        lmd_cpu_describe(feat, sizeof feat);
        kern_init();
        /* "kernels" is the path every matmul takes (LMD_CPU may cap it):
         * avx512 and avx2 give the same bits, scalar rounds differently. */
        printf("lmd %s (commit %s)\ncpu: %d cores; features: %s\nkernels: %s\n", LMD_VERSION, LMD_GIT_COMMIT,
               lmd_cpu_count(), feat, kern_isa());
        /* Weights repacked at load on this path (lmd info MODEL says how
         * many bytes that adds for a model). */
        printf("repacked at load:");
        int n_rp = 0;
        for (int t = 0; t < GGUF_DTYPE_COUNT; t++)
            if (kern_dtype_supported((enum gguf_dtype)t) && kern_repack_bytes((enum gguf_dtype)t, 8, 256))
                printf("%s %s", n_rp++ ? "," : "", gguf_dtype_name((enum gguf_dtype)t));
        printf("%s\n", n_rp ? " (8-row groups, prefill and batched decode)" : " none");
        char gpus[512];
        engine_cuda_devices(gpus, sizeof gpus);
        printf("gpus: %s\n", gpus);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "info") == 0)
        return cli_info(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return cli_run(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "template") == 0)
        return cli_template(argc - 1, argv + 1);
    fprintf(stderr, "lmd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
