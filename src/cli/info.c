/*
 * `lmd info MODEL.gguf`: the header, every metadata pair (long arrays such
 * as the vocabulary summarised) and the tensor table, then totals. Useful
 * to see what a file holds before serving it; the same reader the engine
 * uses, so a file that `info` rejects will not load either.
 */
#include "cli/cli.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_str(struct gguf_str s, size_t max)
{
    putchar('"');
    size_t n = s.len < max ? (size_t)s.len : max;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch == '\t')
            fputs("\\t", stdout);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
    if (s.len > max)
        printf("… (%" PRIu64 " bytes)", s.len);
}

static void print_scalar(const struct gguf_kv *kv)
{
    switch (kv->type) {
    case GGUF_VTYPE_UINT8:
    case GGUF_VTYPE_UINT16:
    case GGUF_VTYPE_UINT32:
    case GGUF_VTYPE_UINT64:
        printf("%" PRIu64, kv->v.u64);
        break;
    case GGUF_VTYPE_INT8:
    case GGUF_VTYPE_INT16:
    case GGUF_VTYPE_INT32:
    case GGUF_VTYPE_INT64:
        printf("%" PRId64, kv->v.i64);
        break;
    case GGUF_VTYPE_FLOAT32:
    case GGUF_VTYPE_FLOAT64:
        printf("%.9g", kv->v.f64);
        break;
    case GGUF_VTYPE_BOOL:
        fputs(kv->v.b ? "true" : "false", stdout);
        break;
    case GGUF_VTYPE_STRING:
        print_str(kv->v.str, 160);
        break;
    default:
        fputs("?", stdout);
    }
}

static void print_array(const struct gguf_kv *kv, uint64_t show)
{
    printf("[%s × %" PRIu64 "] [", gguf_vtype_name(kv->arr_type), kv->arr_n);
    uint64_t n = kv->arr_n < show ? kv->arr_n : show;
    for (uint64_t i = 0; i < n; i++) {
        if (i)
            fputs(", ", stdout);
        switch (kv->arr_type) {
        case GGUF_VTYPE_STRING:
            print_str(gguf_arr_str(kv, i), 40);
            break;
        case GGUF_VTYPE_FLOAT32:
            printf("%g", (double)gguf_arr_f32(kv, i));
            break;
        case GGUF_VTYPE_FLOAT64: {
            double d;
            memcpy(&d, kv->arr_data + 8 * i, 8);
            printf("%g", d);
            break;
        }
        case GGUF_VTYPE_BOOL:
            fputs(kv->arr_data[i] ? "true" : "false", stdout);
            break;
        default:
            printf("%" PRId64, gguf_arr_int(kv, i));
        }
    }
    if (kv->arr_n > n)
        fputs(", …", stdout);
    putchar(']');
}

static void human_bytes(uint64_t b, char *buf, size_t cap)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double x = (double)b;
    int i = 0;
    while (x >= 1024 && i < 4) {
        x /= 1024;
        i++;
    }
    snprintf(buf, cap, i ? "%.2f %s" : "%.0f %s", x, u[i]);
}

static void info_usage(FILE *out)
{
    fprintf(out,
            "usage: lmd info [-m] MODEL.gguf [--no-tensors] [--array-items N]\n"
            "\n"
            "Prints the GGUF header, metadata and tensor table of MODEL (default %s).\n"
            "  --no-tensors       omit the per-tensor table (totals are still printed)\n"
            "  --array-items N    array elements shown per metadata array (default 8)\n",
            CLI_DEFAULT_MODEL);
}

int cli_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"no-tensors", no_argument, NULL, 'T'},
        {"array-items", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    const char *path = NULL;
    int show_tensors = 1;
    long items = 8;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            path = optarg;
            break;
        case 'T':
            show_tensors = 0;
            break;
        case 'a': {
            char *end;
            items = strtol(optarg, &end, 10);
            if (*end || items < 0) {
                fprintf(stderr, "lmd info: --array-items wants a count >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        }
        case 'h':
            info_usage(stdout);
            return 0;
        default:
            info_usage(stderr);
            return 2;
        }
    }
    if (!path && optind < argc)
        path = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "lmd info: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!path)
        path = cli_default_model();
    if (cli_check_model(path))
        return 1;

    struct gguf_file *f;
    struct lmd_err err = {0};
    if (gguf_open(&f, path, &err) != 0) {
        fprintf(stderr, "lmd info: %s\n", err.msg);
        return 1;
    }
    char hb[32];
    human_bytes(gguf_file_size(f), hb, sizeof hb);
    printf("file:        %s\n", path);
    printf("size:        %" PRIu64 " bytes (%s)\n", gguf_file_size(f), hb);
    printf("gguf:        version %u, %" PRIu64 " metadata pairs, %" PRIu64 " tensors, alignment %u, data at %" PRIu64
           "\n",
           gguf_version(f), gguf_n_kv(f), gguf_n_tensors(f), gguf_alignment(f), gguf_data_offset(f));

    printf("\nmetadata:\n");
    for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        printf("  %-44s ", kv->key);
        if (kv->type == GGUF_VTYPE_ARRAY)
            print_array(kv, (uint64_t)items);
        else {
            printf("%s ", gguf_vtype_name(kv->type));
            print_scalar(kv);
        }
        putchar('\n');
    }

    uint64_t per_type_bytes[GGUF_DTYPE_COUNT] = {0};
    uint64_t per_type_count[GGUF_DTYPE_COUNT] = {0};
    uint64_t params = 0, bytes = 0;
    /* What the native engine will add at load by repacking weight matrices
     * (kern_repack_bytes on the kernel path in use): the layers' 2-D
     * weights and the output matrix, which is the embedding table when tied. */
    uint64_t packed = 0, packed_per_type[GGUF_DTYPE_COUNT] = {0};
    bool has_output = false;
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++)
        has_output |= strcmp(gguf_tensor_at(f, i)->name, "output.weight") == 0;
    if (show_tensors)
        printf("\ntensors:\n  %-4s %-36s %-7s %-28s %12s %12s\n", "#", "name", "type", "shape", "offset", "bytes");
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        params += t->n_elements;
        bytes += t->n_bytes;
        per_type_bytes[t->type] += t->n_bytes;
        per_type_count[t->type]++;
        bool matrix = t->n_dims == 2 && (strncmp(t->name, "blk.", 4) == 0 || strcmp(t->name, "output.weight") == 0 ||
                                         (!has_output && strcmp(t->name, "token_embd.weight") == 0));
        if (matrix && kern_dtype_supported(t->type)) {
            size_t pb = kern_repack_bytes(t->type, (int64_t)t->ne[1], (int64_t)t->ne[0]);
            packed += pb;
            packed_per_type[t->type] += pb;
        }
        if (!show_tensors)
            continue;
        char shape[64];
        int n = snprintf(shape, sizeof shape, "[");
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%" PRIu64, d ? ", " : "", t->ne[d]);
        snprintf(shape + n, sizeof shape - (size_t)n, "]");
        printf("  %-4" PRIu64 " %-36s %-7s %-28s %12" PRIu64 " %12" PRIu64 "\n", i, t->name, gguf_dtype_name(t->type),
               shape, t->offset, t->n_bytes);
    }
    human_bytes(bytes, hb, sizeof hb);
    printf("\ntotals:      %" PRIu64 " parameters (%.1f M), %" PRIu64 " bytes of tensor data (%s), %.2f bits/weight\n",
           params, (double)params / 1e6, bytes, hb, params ? 8.0 * (double)bytes / (double)params : 0.0);
    for (int t = 0; t < GGUF_DTYPE_COUNT; t++) {
        if (!per_type_count[t])
            continue;
        human_bytes(per_type_bytes[t], hb, sizeof hb);
        printf("  %-7s %5" PRIu64 " tensors %14" PRIu64 " bytes (%s)\n", gguf_dtype_name((enum gguf_dtype)t),
               per_type_count[t], per_type_bytes[t], hb);
    }
    human_bytes(packed, hb, sizeof hb);
    printf("repacked:    %" PRIu64 " bytes (%s) allocated at load for prefill and batched decode (kernels: %s)\n",
           packed, hb, kern_isa());
    for (int t = 0; t < GGUF_DTYPE_COUNT; t++) {
        if (!packed_per_type[t])
            continue;
        human_bytes(packed_per_type[t], hb, sizeof hb);
        printf("  %-7s %28" PRIu64 " bytes (%s)\n", gguf_dtype_name((enum gguf_dtype)t), packed_per_type[t], hb);
    }
    gguf_close(f);
    return 0;
}
