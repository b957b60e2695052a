/*
 * `lmd bench`: engine speed on synthetic token ids, the lmd side of the
 * E1/E2 workloads (shared/bench/WORKLOADS.md). pp: prefill of a P-token
 * prompt; tg: decode of G tokens after a short prompt; batched decode of B
 * sequences at ragged positions. Prints a table, or JSON with --json for
 * bench/engine.py, which runs the llama.cpp peer beside it.
 */
#include "cli/cli.h"
#include "core/time.h"
#include "engine/engine.h"
#include "kernels/kernels.h"
#include "kv/kv.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void bench_usage(FILE *out)
{
    fprintf(out,
            "usage: lmd bench [-m MODEL] [options]\n"
            "\n"
            "  -m, --model FILE   GGUF model (default %s)\n"
            "  -p, --pp N         prefill prompt length (default 512; 0 = skip)\n"
            "  -g, --tg N         decode tokens (default 128; 0 = skip)\n"
            "  -b, --batch LIST   batched decode sizes, e.g. 1,4,16 (default none)\n"
            "  -r, --reps N       repetitions; min/median/max are reported (default 3)\n"
            "  -t, --threads N    compute threads (default: one per core)\n"
            "  -d, --device DEV   cpu, cuda, cuda:N or auto (default cpu)\n"
            "      --json         one JSON object on stdout\n",
            CLI_DEFAULT_MODEL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct stat3 {
    double min, med, max;
};

static struct stat3 stats(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return (struct stat3){v[0], v[n / 2], v[n - 1]};
}

/* Deterministic pseudo-random token ids avoiding the first 256 (special
 * and byte tokens). */
static void fill_tokens(int32_t *t, int n, int n_vocab, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = 256 + (int32_t)((seed >> 8) % (uint32_t)(n_vocab - 256));
    }
}

/* Decode steps of a batched run. */
#define BENCH_STEPS 32

struct bench_seq {
    struct kv_seq kv;
    int32_t *blocks;
};

/* Greedy decoding for every sequence, for an engine that samples: the
 * step then measures what serving runs (the forward pass and the token
 * picked on the device); an engine that returns logits copies them out,
 * as it does for a caller that samples. No penalty table nor grammar: the
 * sampler keeps no history and may serve every row. */
static struct sampler bench_greedy;

static int bench_step(struct engine *e, struct engine_seq *es, int n, struct lmd_err *err)
{
    if (!e->info.samples) {
        const float *lg;
        return engine_step(e, es, n, &lg, err);
    }
    for (int i = 0; i < n; i++) {
        es[i].smp = &bench_greedy;
        es[i].n_logprobs = -1;
    }
    struct engine_result res;
    int rc = engine_launch(e, es, n, err);
    return rc ? rc : engine_wait(e, &res, err);
}

static int run_prefill(struct engine *e, struct bench_seq *bs, int32_t *tok, int n, double *secs, struct lmd_err *err)
{
    uint64_t t0 = lmd_time_mono_ns();
    for (int done = 0; done < n;) {
        int k = n - done < e->info.max_batch_tokens ? n - done : e->info.max_batch_tokens;
        struct engine_seq es = {
            .tokens = tok + done, .n_tokens = k, .pos = done, .blocks = bs->blocks, .want_logits = done + k == n};
        int rc = bench_step(e, &es, 1, err);
        if (rc)
            return rc;
        done += k;
    }
    *secs = (double)(lmd_time_mono_ns() - t0) / 1e9;
    return 0;
}

int cli_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},  {"pp", required_argument, NULL, 'p'},
        {"tg", required_argument, NULL, 'g'},     {"batch", required_argument, NULL, 'b'},
        {"reps", required_argument, NULL, 'r'},   {"threads", required_argument, NULL, 't'},
        {"device", required_argument, NULL, 'd'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {0, 0, 0, 0},
    };
    const char *model_path = NULL, *batch_list = NULL;
    long pp = 512, tg = 128, reps = 3, threads = 0;
    int json = 0, c, gpu = 0;
    enum engine_device device = ENGINE_DEVICE_CPU;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:g:b:r:t:d:h", opts, NULL)) != -1) {
        char *end = NULL;
        long *dst = NULL;
        switch (c) {
        case 'm':
            model_path = optarg;
            continue;
        case 'b':
            batch_list = optarg;
            continue;
        case 'j':
            json = 1;
            continue;
        case 'd':
            if (engine_device_parse(optarg, &device, &gpu) != 0) {
                fprintf(stderr, "lmd bench: --device wants cpu, cuda, cuda:N or auto, got '%s'\n", optarg);
                return 2;
            }
            continue;
        case 'h':
            bench_usage(stdout);
            return 0;
        case 'p':
            dst = &pp;
            break;
        case 'g':
            dst = &tg;
            break;
        case 'r':
            dst = &reps;
            break;
        case 't':
            dst = &threads;
            break;
        default:
            bench_usage(stderr);
            return 2;
        }
        errno = 0;
        *dst = strtol(optarg, &end, 10);
        if (errno || *end || *dst < 0 || *dst > 100000 || (dst == &reps && *dst < 1)) {
            fprintf(stderr, "lmd bench: bad value '%s'\n", optarg);
            return 2;
        }
    }
    int batches[16], n_batches = 0;
    if (batch_list) {
        for (const char *p = batch_list; *p && n_batches < 16;) {
            char *end;
            long b = strtol(p, &end, 10);
            if (end == p || b < 1 || b > 256) {
                fprintf(stderr, "lmd bench: --batch wants sizes 1..256, got '%s'\n", batch_list);
                return 2;
            }
            batches[n_batches++] = (int)b;
            p = *end == ',' ? end + 1 : end;
        }
    }
    if (!model_path)
        model_path = cli_default_model();
    if (cli_check_model(model_path))
        return 1;

    int max_b = 1;
    for (int i = 0; i < n_batches; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;
    struct lmd_err err = {0};
    struct engine *e = NULL;
    /* Positions a sequence needs: the prompt of pp, tg decode steps after
     * a prompt of 8, and the batched runs' ragged prompts (8 + 4 i tokens
     * for sequence i) with their BENCH_STEPS decode steps — the last is
     * the longest at large batches, whatever -p and -g say. */
    int ctx = (int)(pp > tg + 64 ? pp : tg + 64);
    if (n_batches && 8 + 4 * (max_b - 1) + BENCH_STEPS + 1 > ctx)
        ctx = 8 + 4 * (max_b - 1) + BENCH_STEPS + 1;
    ctx += 16;
    struct engine_config cfg = {.model_path = model_path,
                                .device = device,
                                .gpu = gpu,
                                .n_threads = (int)threads,
                                .n_ctx = ctx,
                                .max_batch_tokens = 512,
                                .max_seqs = max_b};
    if (engine_local_open(&e, &cfg, &err) != 0) {
        fprintf(stderr, "lmd bench: %s\n", err.msg);
        return 1;
    }
    int status = 1;
    struct sample_params gp;
    sample_params_default(&gp);
    gp.temperature = 0.0f;
    if (sample_init(&bench_greedy, &gp, 1, &err) != 0) {
        fprintf(stderr, "lmd bench: %s\n", err.msg);
        engine_close(e);
        return 1;
    }
    /* One block manager for the bench's sequences, no prefix cache: every
     * run computes what it measures. */
    struct kv_mgr kvm, *kv = &kvm;
    if (kv_init(kv, &(struct kv_config){.n_blocks = e->info.kv_blocks, .block_tokens = e->info.kv_block_tokens},
                &err) != 0) {
        fprintf(stderr, "lmd bench: %s\n", err.msg);
        engine_close(e);
        sample_free(&bench_greedy);
        return 1;
    }
    struct bench_seq *bs = calloc((size_t)max_b, sizeof *bs);
    int32_t *tok = malloc((size_t)(ctx + max_b) * sizeof *tok);
    struct engine_seq *es = calloc((size_t)max_b, sizeof *es);
    double *samples = calloc((size_t)reps, sizeof *samples);
    if (!bs || !tok || !es || !samples)
        goto out;
    for (int i = 0; i < max_b; i++) {
        bs[i].kv.cap = kv_blocks_for(kv, ctx);
        bs[i].blocks = bs[i].kv.blocks = malloc((size_t)bs[i].kv.cap * sizeof(int32_t));
        if (!bs[i].blocks)
            goto out;
    }
    fill_tokens(tok, ctx + max_b, e->info.n_vocab, 42);

    /* On a GPU the CPU's kernel path is beside the point: name the engine. */
    const bool cpu = strcmp(e->info.kind, "native") == 0;
    const char *isa = cpu ? kern_isa() : e->info.kind;
    if (!json)
        printf("model %s (%s), %s%d threads, isa %s%s\n", e->info.model_name, e->info.arch, cpu ? "" : "engine cuda, ",
               e->info.n_threads, isa, e->info.samples ? ", greedy tokens picked in the engine" : "");
    if (json)
        printf("{\"model\":\"%s\",\"engine\":\"%s\",\"threads\":%d,\"isa\":\"%s\",\"samples\":%s", e->info.model_name,
               e->info.kind, e->info.n_threads, isa, e->info.samples ? "true" : "false");

    if (pp > 0) {
        if (kv_seq_reserve(kv, &bs[0].kv, (int)pp) != 0) {
            fprintf(stderr, "lmd bench: KV cache too small for pp%ld\n", pp);
            goto out;
        }
        double warm;
        if (run_prefill(e, &bs[0], tok, (int)(pp < 32 ? pp : 32), &warm, &err))
            goto fail;
        for (int r = 0; r < reps; r++) {
            double s;
            if (run_prefill(e, &bs[0], tok, (int)pp, &s, &err))
                goto fail;
            samples[r] = (double)pp / s;
        }
        struct stat3 st = stats(samples, (int)reps);
        if (json)
            printf(",\"pp\":{\"n\":%ld,\"tps_min\":%.2f,\"tps_med\":%.2f,\"tps_max\":%.2f}", pp, st.min, st.med,
                   st.max);
        else
            printf("pp%-5ld %10.2f tok/s (min %.2f, max %.2f)\n", pp, st.med, st.min, st.max);
        kv_seq_release(kv, &bs[0].kv);
    }

    if (tg > 0) {
        for (int r = 0; r < reps; r++) {
            if (kv_seq_reserve(kv, &bs[0].kv, (int)tg + 8) != 0) {
                fprintf(stderr, "lmd bench: KV cache too small for tg%ld\n", tg);
                goto out;
            }
            double s;
            if (run_prefill(e, &bs[0], tok, 8, &s, &err))
                goto fail;
            uint64_t t0 = lmd_time_mono_ns();
            for (int i = 0; i < tg; i++) {
                struct engine_seq one = {
                    .tokens = &tok[8 + i], .n_tokens = 1, .pos = 8 + i, .blocks = bs[0].blocks, .want_logits = true};
                if (bench_step(e, &one, 1, &err))
                    goto fail;
            }
            samples[r] = (double)tg / ((double)(lmd_time_mono_ns() - t0) / 1e9);
            kv_seq_release(kv, &bs[0].kv);
        }
        struct stat3 st = stats(samples, (int)reps);
        if (json)
            printf(",\"tg\":{\"n\":%ld,\"tps_min\":%.2f,\"tps_med\":%.2f,\"tps_max\":%.2f}", tg, st.min, st.med,
                   st.max);
        else
            printf("tg%-5ld %10.2f tok/s (min %.2f, max %.2f)\n", tg, st.med, st.min, st.max);
    }

    if (json && n_batches)
        printf(",\"batched\":[");
    for (int bi = 0; bi < n_batches; bi++) {
        int B = batches[bi];
        const int steps = BENCH_STEPS;
        for (int r = 0; r < reps; r++) {
            /* Ragged start: sequence i has a prompt of 8 + 4*i tokens. */
            for (int i = 0; i < B; i++) {
                if (kv_seq_reserve(kv, &bs[i].kv, 8 + 4 * i + steps + 1) != 0) {
                    fprintf(stderr, "lmd bench: KV cache too small for batch %d\n", B);
                    goto out;
                }
                double s;
                if (run_prefill(e, &bs[i], tok + i, 8 + 4 * i, &s, &err))
                    goto fail;
            }
            uint64_t t0 = lmd_time_mono_ns();
            for (int k = 0; k < steps; k++) {
                for (int i = 0; i < B; i++)
                    es[i] = (struct engine_seq){.tokens = &tok[i + k],
                                                .n_tokens = 1,
                                                .pos = 8 + 4 * i + k,
                                                .blocks = bs[i].blocks,
                                                .want_logits = true};
                if (bench_step(e, es, B, &err))
                    goto fail;
            }
            samples[r] = (double)B * steps / ((double)(lmd_time_mono_ns() - t0) / 1e9);
            for (int i = 0; i < B; i++)
                kv_seq_release(kv, &bs[i].kv);
        }
        struct stat3 st = stats(samples, (int)reps);
        if (json)
            printf("%s{\"b\":%d,\"tps_min\":%.2f,\"tps_med\":%.2f,\"tps_max\":%.2f,\"tpot_ms\":%.3f}", bi ? "," : "", B,
                   st.min, st.med, st.max, 1000.0 * B / st.med);
        else
            printf("batch %-3d %8.2f tok/s aggregate, %.2f ms per token per sequence (min %.2f, max %.2f)\n", B, st.med,
                   1000.0 * B / st.med, st.min, st.max);
    }
    if (json)
        printf("%s}\n", n_batches ? "]" : "");
    status = 0;
    goto out;
fail:
    fprintf(stderr, "lmd bench: %s\n", err.msg);
out:
    if (bs) {
        for (int i = 0; i < max_b; i++)
            free(bs[i].blocks);
    }
    free(bs);
    free(tok);
    free(es);
    free(samples);
    kv_free(kv);
    engine_close(e);
    sample_free(&bench_greedy);
    return status;
}
