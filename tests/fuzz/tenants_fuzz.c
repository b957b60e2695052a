/*
 * libFuzzer driver for the tenants file (--tenants): any bytes either load
 * into a consistent configuration or fail with a message, never a crash
 * or a leak. The input is written to a private file
 * because the loader reads a path, as lmd serve does.
 */
#include "fuzz.h"
#include "qos/qos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("tenants", data, size);
    struct qos *q = NULL;
    struct lmd_err err = {0};
    if (qos_open(&q, path, &err) == 0) {
        if (qos_n_classes(q) < 1 || qos_n_tenants(q) < 1 || qos_default_class(q) < 0 ||
            qos_default_class(q) >= qos_n_classes(q))
            abort();
        qos_close(q);
    } else if (!err.msg[0]) {
        abort();
    }
    return 0;
}
