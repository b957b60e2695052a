/*
 * libFuzzer driver for the server config file (lmd serve --config): any
 * bytes either load into a configuration whose models all have valid ids
 * and paths, or fail with a message, never a crash or a leak. The input is
 * written to a private file because the loader reads a path.
 */
#include "fuzz.h"
#include "serve/serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("serve-config", data, size);
    static struct serve_config c; /* large: not on the stack */
    serve_config_init(&c);
    struct lmd_err err = {0};
    if (serve_config_load(&c, path, &err) == 0) {
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
