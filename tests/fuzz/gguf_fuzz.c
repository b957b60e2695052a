/*
 * libFuzzer driver for the GGUF reader: any byte string must either open
 * and describe tensors that lie inside the input, or fail with a message.
 * Build and run with `make fuzz-gguf` (clang, ASan + UBSan + libFuzzer).
 */
#include "gguf/gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy so that any overread is outside the allocation. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    struct gguf_file *f = NULL;
    struct lmd_err err = {0};
    if (gguf_open_memory(&f, buf, size, "fuzz", &err) == 0) {
        for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
            const struct gguf_tensor *t = gguf_tensor_at(f, i);
            if ((const uint8_t *)t->data < buf || (const uint8_t *)t->data + t->n_bytes > buf + size)
                abort();
        }
        for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
            const struct gguf_kv *kv = gguf_kv_at(f, i);
            if (kv->type == GGUF_VTYPE_ARRAY && kv->arr_type == GGUF_VTYPE_STRING)
                for (uint64_t j = 0; j < kv->arr_n; j++)
                    (void)gguf_arr_str(kv, j);
        }
        gguf_close(f);
    } else if (err.msg[0] == 0) {
        abort(); /* every failure explains itself */
    }
    free(buf);
    return 0;
}
