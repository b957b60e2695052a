/*
 * Shared by the libFuzzer drivers in tests/fuzz/: the entry point's
 * prototype and an exact-size copy of the input, for drivers that need a
 * terminator or their own buffer: a read past the end of the copy is a read
 * past the end of an allocation (ASan sees it).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A malloc'd copy of data with no spare byte; `nul` adds a terminator. */
static inline char *fuzz_copy(const uint8_t *data, size_t size, int nul)
{
    char *p = malloc(size + (nul ? 1 : 0) + (size == 0));
    if (!p)
        abort();
    memcpy(p, data, size);
    if (nul)
        p[size] = '\0';
    return p;
}
