/*
 * libFuzzer driver for the tenants file (--tenants): any bytes either load
 * into a consistent configuration or fail with a message, never a crash
 * or a leak. The input goes through qos_open_buffer, the parser qos_open
 * runs on the file's bytes, so no file is written per execution.
 * libFuzzer's input is an exact-size allocation: a read past its end is
 * seen by ASan.
 */
#include "fuzz.h"
#include "qos/qos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qos *q = NULL;
    struct lmd_err err = {0};
    if (qos_open_buffer(&q, "tenants.yaml", data, size, &err) == 0) {
        if (qos_n_classes(q) < 1 || qos_n_tenants(q) < 1 || qos_default_class(q) < 0 ||
            qos_default_class(q) >= qos_n_classes(q))
            abort();
        qos_close(q);
    } else if (!err.msg[0]) {
        abort();
    }
    return 0;
}
