/*
 * Shared by the libFuzzer drivers in tests/fuzz/: the entry point's
 * prototype and an exact-size copy of the input, so that a read past the
 * end of the input is a read past the end of an allocation (ASan sees it).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Write data to this process's private file for a parser that reads a
 * path (the tenants and server config files); returns its path. */
static inline const char *fuzz_write_file(const char *stem, const uint8_t *data, size_t size)
{
    static char path[96];
    snprintf(path, sizeof path, "/tmp/lmd-%s-fuzz-%d.yaml", stem, (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size))
        abort();
    fclose(f);
    return path;
}
