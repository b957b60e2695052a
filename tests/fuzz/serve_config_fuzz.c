/*
 * libFuzzer driver for the server config file (lmd serve --config): any
 * bytes either load into a configuration whose models all have valid ids
 * and paths, or fail with a message, never a crash or a leak. The input is
 * written to a private file because the loader reads a path.
 */
#include "fuzz.h"
#include "serve/serve.h"

#include <stdio.h>
#include <unistd.h>

static char g_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_path[0])
        snprintf(g_path, sizeof g_path, "/tmp/lmd-serve-config-fuzz-%d.yaml", (int)getpid());
    FILE *f = fopen(g_path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    static struct serve_config c; /* large: not on the stack */
    serve_config_init(&c);
    struct lmd_err err = {0};
    if (serve_config_load(&c, g_path, &err) == 0) {
        if (c.n_models < 0 || c.n_models > SERVE_MAX_MODELS)
            abort();
        for (int i = 0; i < c.n_models; i++)
            if (!c.models[i].path[0])
                abort();
    } else if (!err.msg[0]) {
        abort();
    }
    return 0;
}
