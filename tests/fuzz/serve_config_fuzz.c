/*
 * libFuzzer driver for the server config file (lmd serve --config): any
 * bytes either load into a configuration whose models all have valid ids
 * and paths, or fail with a message, never a crash or a leak. The input
 * goes through serve_config_load_buffer, the parser serve_config_load runs
 * on the file's bytes, so no file is written per execution. The name has a
 * folder so that relative model paths are resolved against it, as for a
 * real file. libFuzzer's input is an exact-size allocation: a read past
 * its end is seen by ASan.
 */
#include "fuzz.h"
#include "serve/serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct serve_config c; /* large: not on the stack */
    serve_config_init(&c);
    struct lmd_err err = {0};
    if (serve_config_load_buffer(&c, "/etc/lmd/serve.yaml", data, size, &err) == 0) {
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
