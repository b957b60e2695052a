/*
 * `lmd run`: one prompt through the native engine on the terminal. Streams
 * the completion to stdout and prints prompt and generation speed to
 * stderr. Also the tool the golden tests drive: --prompt-ids feeds token
 * ids directly, --print-ids prints generated ids, --dump-logits writes the
 * logits after the prompt as raw little-endian f32.
 */
#include "api/chat_template.h"
#include "api/jinja.h"
#include "cli/cli.h"
#include "core/log.h"
#include "core/time.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "kv/kv.h"
#include "sample/sample.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void run_usage(FILE *out)
{
    fprintf(out,
            "usage: lmd run [-m MODEL] -p PROMPT [options]\n"
            "\n"
            "Generates a completion for PROMPT with the native engine and streams it to stdout;\n"
            "prompt and generation speed go to stderr.\n"
            "\n"
            "  -m, --model FILE        GGUF model (default %s)\n"
            "  -p, --prompt TEXT       the prompt\n"
            "      --prompt-ids LIST   the prompt as comma-separated token ids (no tokenization)\n"
            "  -n, --n-predict N       tokens to generate (default 128)\n"
            "      --chat              wrap the prompt in the model's chat template as one user turn\n"
            "      --chat-template F   force the template family: gemma, llama3, chatml, mistral, generic\n"
            "      --temp T            temperature; 0 = greedy (default 0.8)\n"
            "      --top-k K           (default 40; 0 = off)\n"
            "      --top-p P           (default 0.95)\n"
            "      --min-p P           (default 0.05)\n"
            "      --repeat-penalty R  (default 1.0 = off)\n"
            "      --seed S            RNG seed (default: from the clock)\n"
            "  -t, --threads N         compute threads (default: one per core)\n"
            "  -d, --device DEV        cpu, cuda, cuda:N or auto (default cpu)\n"
            "  -c, --ctx N             context length (default: the model's, capped at 4096)\n"
            "      --ignore-eos        keep generating past end-of-generation tokens\n"
            "      --print-ids         print generated token ids instead of text\n"
            "      --dump-logits FILE  write the logits after the prompt (f32, n_vocab values)\n"
            "  -v, --verbose           debug logging\n",
            CLI_DEFAULT_MODEL);
}

/* The prompt as one user turn rendered with the GGUF's own chat template,
 * as `lmd serve` renders a chat request (*text malloc'd). Nonzero when the
 * file has no template, or one lmd cannot parse or render: the caller uses
 * the family renderer then, as the server does. */
static int run_jinja(const struct engine *eng, const struct tok_vocab *vocab, const char *prompt, char **text,
                     size_t *len)
{
    struct gguf_str t = {0};
    if (gguf_get_str(eng->info.gguf, "tokenizer.chat_template", &t, NULL) != 0 || !t.len)
        return -1;
    struct jinja_tmpl *tmpl;
    struct jinja_err jerr;
    if (jinja_parse(t.ptr, t.len, &tmpl, &jerr) != 0) {
        fprintf(stderr, "lmd run: the GGUF's chat template cannot be used (line %d, column %d: %s)\n", jerr.line,
                jerr.col, jerr.msg);
        return -1;
    }
    const char *bos = tok_bos(vocab) >= 0 ? tok_token_text(vocab, tok_bos(vocab)) : "";
    const char *eos = tok_eos(vocab) >= 0 ? tok_token_text(vocab, tok_eos(vocab)) : "";
    json_t *vars = json_pack("{s:[{s:s,s:s}],s:b,s:s,s:s}", "messages", "role", "user", "content", prompt,
                             "add_generation_prompt", 1, "bos_token", bos ? bos : "", "eos_token", eos ? eos : "");
    struct lmd_buf out = {0};
    int rc = vars ? chat_jinja_render(tmpl, vars, bos, tok_add_bos(vocab), &out, &jerr) : LMD_ENOMEM;
    json_decref(vars);
    jinja_free(tmpl);
    if (rc != 0) {
        fprintf(stderr, "lmd run: the GGUF's chat template failed (line %d, column %d: %s)\n", jerr.line, jerr.col,
                jerr.msg);
        lmd_buf_free(&out);
        return -1;
    }
    *text = out.ptr ? out.ptr : strdup("");
    *len = out.len;
    return *text ? 0 : -1;
}

static int parse_ids(const char *s, int32_t **ids, int *n)
{
    size_t cap = 16, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    const char *p = s;
    while (v && *p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX) {
            fprintf(stderr, "lmd run: --prompt-ids: bad token id at '%s'\n", p);
            free(v);
            return -1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                v = NULL;
                break;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
        if (*p == ',' || *p == ' ')
            p++;
    }
    if (!v) {
        fprintf(stderr, "lmd run: out of memory\n");
        return -1;
    }
    *ids = v;
    *n = (int)k;
    return 0;
}

enum {
    OPT_PROMPT_IDS = 256,
    OPT_CHAT,
    OPT_CHAT_TEMPLATE,
    OPT_TEMP,
    OPT_TOP_K,
    OPT_TOP_P,
    OPT_MIN_P,
    OPT_REPEAT,
    OPT_SEED,
    OPT_IGNORE_EOS,
    OPT_PRINT_IDS,
    OPT_DUMP_LOGITS,
};

int cli_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"prompt-ids", required_argument, NULL, OPT_PROMPT_IDS},
        {"n-predict", required_argument, NULL, 'n'},
        {"chat", no_argument, NULL, OPT_CHAT},
        {"chat-template", required_argument, NULL, OPT_CHAT_TEMPLATE},
        {"temp", required_argument, NULL, OPT_TEMP},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"min-p", required_argument, NULL, OPT_MIN_P},
        {"repeat-penalty", required_argument, NULL, OPT_REPEAT},
        {"seed", required_argument, NULL, OPT_SEED},
        {"threads", required_argument, NULL, 't'},
        {"device", required_argument, NULL, 'd'},
        {"ctx", required_argument, NULL, 'c'},
        {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
        {"print-ids", no_argument, NULL, OPT_PRINT_IDS},
        {"dump-logits", required_argument, NULL, OPT_DUMP_LOGITS},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_path = NULL, *prompt = NULL, *prompt_ids = NULL, *dump_logits = NULL, *tmpl_name = NULL;
    long n_predict = 128, threads = 0, n_ctx = 0, top_k = 40;
    bool chat = false, ignore_eos = false, print_ids = false, seed_set = false;
    float temp = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat = 1.0f;
    unsigned long long seed = 0;
    enum engine_device device = ENGINE_DEVICE_CPU;
    int gpu = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:t:d:c:vh", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_path = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case OPT_PROMPT_IDS:
            prompt_ids = optarg;
            break;
        case 'n':
            if (cli_parse_long("lmd run", "--n-predict", optarg, 0, 1 << 24, &n_predict))
                return 2;
            break;
        case OPT_CHAT:
            chat = true;
            break;
        case OPT_CHAT_TEMPLATE:
            tmpl_name = optarg;
            chat = true;
            break;
        case OPT_TEMP:
            if (cli_parse_float("lmd run", "--temp", optarg, &temp))
                return 2;
            break;
        case OPT_TOP_K:
            if (cli_parse_long("lmd run", "--top-k", optarg, 0, 1 << 30, &top_k))
                return 2;
            break;
        case OPT_TOP_P:
            if (cli_parse_float("lmd run", "--top-p", optarg, &top_p))
                return 2;
            break;
        case OPT_MIN_P:
            if (cli_parse_float("lmd run", "--min-p", optarg, &min_p))
                return 2;
            break;
        case OPT_REPEAT:
            if (cli_parse_float("lmd run", "--repeat-penalty", optarg, &repeat))
                return 2;
            break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg) {
                fprintf(stderr, "lmd run: --seed wants an unsigned integer, got '%s'\n", optarg);
                return 2;
            }
            seed_set = true;
            break;
        }
        case 't':
            if (cli_parse_long("lmd run", "--threads", optarg, 1, 1024, &threads))
                return 2;
            break;
        case 'd':
            if (engine_device_parse(optarg, &device, &gpu) != 0) {
                fprintf(stderr, "lmd run: --device wants cpu, cuda, cuda:N or auto, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c':
            if (cli_parse_long("lmd run", "--ctx", optarg, 1, 1 << 24, &n_ctx))
                return 2;
            break;
        case OPT_IGNORE_EOS:
            ignore_eos = true;
            break;
        case OPT_PRINT_IDS:
            print_ids = true;
            break;
        case OPT_DUMP_LOGITS:
            dump_logits = optarg;
            break;
        case 'v':
            lmd_log_set_level(LMD_LOG_DEBUG);
            break;
        case 'h':
            run_usage(stdout);
            return 0;
        default:
            run_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmd run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!prompt && !prompt_ids) {
        fprintf(stderr, "lmd run: give a prompt with -p TEXT or --prompt-ids LIST\n");
        return 2;
    }
    if (prompt && prompt_ids) {
        fprintf(stderr, "lmd run: -p and --prompt-ids exclude each other\n");
        return 2;
    }
    enum chat_family fam = CHAT_GENERIC;
    if (tmpl_name && chat_family_parse(tmpl_name, &fam) != 0) {
        fprintf(stderr, "lmd run: unknown --chat-template '%s' (gemma, llama3, chatml, mistral, generic)\n", tmpl_name);
        return 2;
    }
    if (!model_path)
        model_path = cli_default_model();
    if (cli_check_model(model_path))
        return 1;

    int status = 1;
    struct lmd_err err = {0};
    struct engine *eng = NULL;
    struct tok_vocab *vocab = NULL;
    int32_t *ids = NULL;
    int32_t *blocks = NULL;
    char *text = NULL;
    char *piece = NULL;
    struct sampler smp = {0};
    struct sample_scratch sc = {0};
    struct kv_seq seq = {0};
    struct kv_mgr kvm = {0}; /* the one sequence's blocks; no prefix cache */

    uint64_t t_load = lmd_time_mono_ns();
    struct engine_config cfg = {
        .model_path = model_path,
        .device = device,
        .gpu = gpu,
        .n_threads = (int)threads,
        .n_ctx = n_ctx > 0 ? (int)n_ctx : 4096,
        .max_batch_tokens = 512,
        .max_seqs = 1,
        .logits_out = true, /* sampled here, and --dump-logits writes them */
    };
    if (engine_local_open(&eng, &cfg, &err) != 0) {
        fprintf(stderr, "lmd run: %s\n", err.msg);
        goto out;
    }
    if (tok_load(&vocab, eng->info.gguf, &err) != 0) {
        fprintf(stderr, "lmd run: %s\n", err.msg);
        goto out;
    }
    const int n_vocab = eng->info.n_vocab;
    if (tok_n_vocab(vocab) > n_vocab) {
        fprintf(stderr, "lmd run: the tokenizer has %d tokens but the model only %d\n", tok_n_vocab(vocab), n_vocab);
        goto out;
    }

    /* The prompt as token ids. */
    int n_prompt = 0;
    if (prompt_ids) {
        if (parse_ids(prompt_ids, &ids, &n_prompt) != 0)
            goto out;
        for (int i = 0; i < n_prompt; i++) {
            if (ids[i] >= n_vocab) {
                fprintf(stderr, "lmd run: --prompt-ids: token %d is outside the vocabulary (%d)\n", ids[i], n_vocab);
                goto out;
            }
        }
    } else {
        const char *src = prompt;
        size_t src_len = strlen(prompt);
        if (chat && !tmpl_name && run_jinja(eng, vocab, prompt, &text, &src_len) == 0) {
            src = text;
        } else if (chat) {
            if (!tmpl_name) {
                struct gguf_str t = {0};
                gguf_get_str(eng->info.gguf, "tokenizer.chat_template", &t, NULL);
                fam = chat_detect(t.ptr, t.len, eng->info.arch);
            }
            struct chat_msg msg = {.role = "user", .content = prompt, .content_len = strlen(prompt)};
            long need = chat_render(fam, &msg, 1, NULL, 0, &err);
            text = malloc((size_t)need + 1);
            if (!text || chat_render(fam, &msg, 1, text, (size_t)need + 1, &err) < 0) {
                fprintf(stderr, "lmd run: %s\n", text ? err.msg : "out of memory");
                goto out;
            }
            src = text;
            src_len = (size_t)need;
        }
        size_t cap = src_len + 16;
        ids = malloc(cap * sizeof *ids);
        int64_t n = ids ? tok_encode(vocab, src, src_len, true, chat, ids, cap, &err) : LMD_ENOMEM;
        if (n < 0) {
            fprintf(stderr, "lmd run: tokenizing the prompt: %s\n", n == LMD_ENOMEM ? "out of memory" : err.msg);
            goto out;
        }
        if ((size_t)n > cap) {
            fprintf(stderr, "lmd run: prompt tokenized to more tokens than bytes\n");
            goto out;
        }
        n_prompt = (int)n;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "lmd run: the prompt is empty\n");
        goto out;
    }
    const int ctx = eng->info.n_ctx;
    if (n_prompt >= ctx) {
        fprintf(stderr, "lmd run: the prompt has %d tokens; the context holds %d\n", n_prompt, ctx);
        goto out;
    }
    if (n_predict > ctx - n_prompt)
        n_predict = ctx - n_prompt;

    struct kv_mgr *kv = &kvm;
    if (kv_init(kv, &(struct kv_config){.n_blocks = eng->info.kv_blocks, .block_tokens = eng->info.kv_block_tokens},
                &err) != 0) {
        fprintf(stderr, "lmd run: %s\n", err.msg);
        goto out;
    }
    seq.cap = kv_blocks_for(kv, ctx);
    blocks = malloc((size_t)seq.cap * sizeof *blocks);
    seq.blocks = blocks;
    if (!blocks || kv_seq_reserve(kv, &seq, n_prompt + (int)n_predict) != 0) {
        fprintf(stderr, "lmd run: not enough KV cache for %ld tokens\n", n_prompt + n_predict);
        goto out;
    }

    struct sample_params sp;
    sample_params_default(&sp);
    sp.temperature = temp;
    sp.top_k = (int)top_k;
    sp.top_p = top_p;
    sp.min_p = min_p;
    sp.repetition_penalty = repeat;
    sp.seed = seed_set ? seed : lmd_time_wall_ns();
    if (sample_init(&smp, &sp, n_prompt + (int)n_predict, &err) != 0 || sample_scratch_init(&sc, n_vocab, &err)) {
        fprintf(stderr, "lmd run: %s\n", err.msg);
        goto out;
    }
    sample_accept_prompt(&smp, ids, n_prompt);
    t_load = lmd_time_mono_ns() - t_load;

    /* Prefill in chunks of the engine's step budget. */
    const float *logits = NULL;
    uint64_t t0 = lmd_time_mono_ns();
    for (int done = 0; done < n_prompt;) {
        int n = n_prompt - done;
        if (n > eng->info.max_batch_tokens)
            n = eng->info.max_batch_tokens;
        struct engine_seq es = {
            .tokens = ids + done, .n_tokens = n, .pos = done, .blocks = blocks, .want_logits = done + n == n_prompt};
        if (engine_step(eng, &es, 1, &logits, &err) != 0) {
            fprintf(stderr, "lmd run: %s\n", err.msg);
            goto out;
        }
        done += n;
    }
    uint64_t t_prefill = lmd_time_mono_ns() - t0;
    if (dump_logits) {
        FILE *f = fopen(dump_logits, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)n_vocab, f) != (size_t)n_vocab || fclose(f) != 0) {
            fprintf(stderr, "lmd run: cannot write %s: %s\n", dump_logits, strerror(errno));
            goto out;
        }
    }

    /* Decode. The logits buffer is the engine's; sampling edits it in place. */
    struct tok_detok dt;
    tok_detok_init(&dt, vocab, false);
    dt.first = false; /* a continuation: the first generated token keeps its leading space */
    const size_t piece_cap = tok_detok_bound(vocab);
    piece = malloc(piece_cap);
    if (!piece) {
        fprintf(stderr, "lmd run: out of memory\n");
        goto out;
    }
    int n_gen = 0; /* tokens produced (EOG excluded) */
    int pos = n_prompt;
    t0 = lmd_time_mono_ns();
    while (n_gen < n_predict) {
        int32_t tok = sample_next(&smp, &sc, (float *)logits, n_vocab);
        sample_accept(&smp, tok);
        if (!ignore_eos && tok_is_eog(vocab, tok))
            break;
        if (print_ids) {
            printf(n_gen ? " %d" : "%d", tok);
        } else {
            size_t k = tok_detok_push(&dt, tok, piece, piece_cap);
            fwrite(piece, 1, k, stdout);
        }
        fflush(stdout);
        if (++n_gen == n_predict)
            break; /* the last token needs no forward pass */
        struct engine_seq es = {.tokens = &tok, .n_tokens = 1, .pos = pos, .blocks = blocks, .want_logits = true};
        if (engine_step(eng, &es, 1, &logits, &err) != 0) {
            fprintf(stderr, "\nlmd run: %s\n", err.msg);
            goto out;
        }
        pos++;
    }
    if (!print_ids) {
        size_t k = tok_detok_flush(&dt, piece, piece_cap);
        fwrite(piece, 1, k, stdout);
    }
    putchar('\n');
    uint64_t t_gen = lmd_time_mono_ns() - t0;
    int decoded = pos - n_prompt; /* forward passes of one token */
    fprintf(stderr,
            "lmd run: load %.0f ms | prompt %d tokens in %.1f ms (%.1f tok/s) | generated %d tokens, %d decode steps "
            "in %.1f ms (%.1f tok/s) | %d threads, %s\n",
            (double)t_load / 1e6, n_prompt, (double)t_prefill / 1e6, n_prompt / ((double)t_prefill / 1e9), n_gen,
            decoded, (double)t_gen / 1e6, decoded > 0 ? decoded / ((double)t_gen / 1e9) : 0.0, eng->info.n_threads,
            kern_isa());
    status = 0;
out:
    kv_free(&kvm);
    sample_free(&smp);
    sample_scratch_free(&sc);
    free(blocks);
    free(ids);
    free(text);
    free(piece);
    tok_free(vocab);
    engine_close(eng);
    return status;
}
