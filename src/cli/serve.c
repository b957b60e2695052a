/*
 * `lmd serve`: the OpenAI-compatible HTTP server over the native engine.
 * Wires engine -> sched -> api -> http together, then waits for SIGTERM or
 * SIGINT and shuts down gracefully: stop accepting, /ready turns 503,
 * requests in flight finish (bounded by --drain-timeout), exit 0.
 *
 * Not here: any request handling (api/), batching (sched/), sockets (http/).
 */
#include "api/api.h"
#include "api/chat_template.h"
#include "cli/cli.h"
#include "core/log.h"
#include "core/time.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "http/http.h"
#include "kernels/kernels.h"
#include "obs/obs.h"
#include "qos/qos.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void serve_usage(FILE *out)
{
    fprintf(out,
            "usage: lmd serve [-m MODEL] [options]\n"
            "\n"
            "Serves the OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models,\n"
            "/health, /ready, /metrics) over HTTP/1.1 and cleartext HTTP/2 on one port, or over\n"
            "HTTPS (ALPN: h2, http/1.1) with --tls-cert and --tls-key.\n"
            "SIGTERM or SIGINT drains: new connections are refused, /ready answers 503,\n"
            "requests in flight finish, then the process exits 0.\n"
            "\n"
            "  -m, --model FILE         GGUF model (default %s)\n"
            "      --host ADDR          address to listen on (default 127.0.0.1)\n"
            "      --port N             TCP port (default 8080; 0 = any free port)\n"
            "      --io-threads N       HTTP event-loop threads (default 1)\n"
            "  -t, --threads N          compute threads (default: one per core)\n"
            "  -c, --ctx N              context length per sequence (default 4096)\n"
            "      --max-running N      sequences batched together (default 8)\n"
            "      --max-queue N        requests waiting before 503 + Retry-After (default 64)\n"
            "      --max-batch-tokens N tokens per engine step, the prefill chunk budget (default 512)\n"
            "      --kv-blocks N        KV-cache blocks of 16 tokens (default: max-running full contexts)\n"
            "      --max-body BYTES     request body limit, 413 above it (default 4194304)\n"
            "      --drain-timeout S    seconds to let requests finish at shutdown (default 30)\n"
            "      --tls-cert FILE      PEM certificate chain: serve HTTPS (needs --tls-key)\n"
            "      --tls-key FILE       PEM private key of --tls-cert\n"
            "      --stall-timeout S    drop a streamed request whose client takes no bytes for S\n"
            "                           seconds (default 60; 0 = never)\n"
            "      --chat-template F    force the chat template: gemma, llama3, chatml, mistral, generic\n"
            "      --sched POLICY       sla (service classes, deadlines, fair share, preemption; default)\n"
            "                           or fcfs (one queue in arrival order)\n"
            "      --tenants FILE       YAML file of tenants, API keys, limits and service classes\n"
            "                           (docs/configuration.md); without it the server is open\n"
            "      --debug-endpoints    serve /debug/requests and /debug/trace (admin keys only when\n"
            "                           --tenants is given) and record scheduler trace events\n"
            "      --no-prefix-cache    compute every prompt in full (no reuse of cached prefixes)\n"
            "      --prefix-cache-shared  one prefix-cache namespace for all tenants (default: one each)\n"
            "      --no-metrics         record no metrics (/metrics answers 404); for measuring\n"
            "                           what recording costs\n"
            "      --log-level L        debug, info, warn, error (default info)\n"
            "      --log-format F       text (key=value) or json, one line per event (default text)\n",
            CLI_DEFAULT_MODEL);
}

enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_IO_THREADS,
    OPT_MAX_RUNNING,
    OPT_MAX_QUEUE,
    OPT_MAX_BATCH,
    OPT_KV_BLOCKS,
    OPT_MAX_BODY,
    OPT_DRAIN,
    OPT_CHAT_TEMPLATE,
    OPT_LOG_LEVEL,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_STALL,
    OPT_SCHED,
    OPT_TENANTS,
    OPT_DEBUG,
    OPT_LOG_FORMAT,
    OPT_NO_METRICS,
    OPT_NO_PREFIX_CACHE,
    OPT_PREFIX_CACHE_SHARED,
};

/* Waits for SIGTERM/SIGINT (blocked in every thread, so only this wait
 * sees them), then drains. A second signal during the drain cuts it short. */
static void serve_wait_and_drain(struct http_server *http, struct api *api, long drain_s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    LMD_INFO("lmd serve: %s: draining (%d requests in flight, up to %ld s)", strsignal(sig), api_active(api), drain_s);
    api_set_draining(api);
    http_server_stop_accepting(http);
    uint64_t deadline = lmd_time_mono_ns() + (uint64_t)drain_s * 1000000000ull;
    struct timespec tick = {0, 20 * 1000 * 1000};
    while (api_active(api) > 0 && lmd_time_mono_ns() < deadline) {
        if (sigtimedwait(&set, NULL, &tick) > 0) {
            LMD_WARN("lmd serve: second signal: stopping now");
            break;
        }
    }
    if (api_active(api) > 0)
        LMD_WARN("lmd serve: %d requests still open at the end of the drain; cancelling them", api_active(api));
}

int cli_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"io-threads", required_argument, NULL, OPT_IO_THREADS},
        {"threads", required_argument, NULL, 't'},
        {"ctx", required_argument, NULL, 'c'},
        {"max-running", required_argument, NULL, OPT_MAX_RUNNING},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"max-batch-tokens", required_argument, NULL, OPT_MAX_BATCH},
        {"kv-blocks", required_argument, NULL, OPT_KV_BLOCKS},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"chat-template", required_argument, NULL, OPT_CHAT_TEMPLATE},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"stall-timeout", required_argument, NULL, OPT_STALL},
        {"sched", required_argument, NULL, OPT_SCHED},
        {"tenants", required_argument, NULL, OPT_TENANTS},
        {"debug-endpoints", no_argument, NULL, OPT_DEBUG},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"no-metrics", no_argument, NULL, OPT_NO_METRICS},
        {"no-prefix-cache", no_argument, NULL, OPT_NO_PREFIX_CACHE},
        {"prefix-cache-shared", no_argument, NULL, OPT_PREFIX_CACHE_SHARED},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_path = NULL, *host = "127.0.0.1", *tmpl_name = NULL, *tls_cert = NULL, *tls_key = NULL,
               *tenants_path = NULL;
    enum sched_policy policy = SCHED_POLICY_SLA;
    bool debug = false, metrics = true, prefix_cache = true, prefix_shared = false;
    long port = 8080, io_threads = 1, threads = 0, n_ctx = 4096, max_running = 8, max_queue = 64, max_batch = 512,
         kv_blocks = 0, max_body = 4 << 20, drain_s = 30, stall_s = 60;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:c:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            model_path = optarg;
            break;
        case OPT_HOST:
            host = optarg;
            break;
        case OPT_PORT:
            bad = cli_parse_long("lmd serve", "--port", optarg, 0, 65535, &port);
            break;
        case OPT_IO_THREADS:
            bad = cli_parse_long("lmd serve", "--io-threads", optarg, 1, 64, &io_threads);
            break;
        case 't':
            bad = cli_parse_long("lmd serve", "--threads", optarg, 1, 1024, &threads);
            break;
        case 'c':
            bad = cli_parse_long("lmd serve", "--ctx", optarg, 16, 1 << 20, &n_ctx);
            break;
        case OPT_MAX_RUNNING:
            bad = cli_parse_long("lmd serve", "--max-running", optarg, 1, 1024, &max_running);
            break;
        case OPT_MAX_QUEUE:
            bad = cli_parse_long("lmd serve", "--max-queue", optarg, 0, 1 << 20, &max_queue);
            break;
        case OPT_MAX_BATCH:
            bad = cli_parse_long("lmd serve", "--max-batch-tokens", optarg, 1, 1 << 16, &max_batch);
            break;
        case OPT_KV_BLOCKS:
            bad = cli_parse_long("lmd serve", "--kv-blocks", optarg, 1, 1 << 24, &kv_blocks);
            break;
        case OPT_MAX_BODY:
            bad = cli_parse_long("lmd serve", "--max-body", optarg, 1024, 1L << 30, &max_body);
            break;
        case OPT_DRAIN:
            bad = cli_parse_long("lmd serve", "--drain-timeout", optarg, 0, 86400, &drain_s);
            break;
        case OPT_CHAT_TEMPLATE:
            tmpl_name = optarg;
            break;
        case OPT_TLS_CERT:
            tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            tls_key = optarg;
            break;
        case OPT_STALL:
            bad = cli_parse_long("lmd serve", "--stall-timeout", optarg, 0, 86400, &stall_s);
            break;
        case OPT_SCHED:
            if (strcmp(optarg, "sla") == 0) {
                policy = SCHED_POLICY_SLA;
            } else if (strcmp(optarg, "fcfs") == 0) {
                policy = SCHED_POLICY_FCFS;
            } else {
                fprintf(stderr, "lmd serve: --sched wants sla or fcfs, got '%s'\n", optarg);
                return 2;
            }
            break;
        case OPT_TENANTS:
            tenants_path = optarg;
            break;
        case OPT_DEBUG:
            debug = true;
            break;
        case OPT_NO_METRICS:
            metrics = false;
            break;
        case OPT_NO_PREFIX_CACHE:
            prefix_cache = false;
            break;
        case OPT_PREFIX_CACHE_SHARED:
            prefix_shared = true;
            break;
        case OPT_LOG_FORMAT: {
            enum lmd_log_format f;
            if (lmd_log_parse_format(optarg, &f) != 0) {
                fprintf(stderr, "lmd serve: --log-format wants text or json, got '%s'\n", optarg);
                return 2;
            }
            lmd_log_set_format(f);
            break;
        }
        case OPT_LOG_LEVEL: {
            enum lmd_log_level lv;
            if (lmd_log_parse_level(optarg, &lv) != 0) {
                fprintf(stderr, "lmd serve: --log-level wants debug, info, warn or error, got '%s'\n", optarg);
                return 2;
            }
            lmd_log_set_level(lv);
            break;
        }
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "lmd serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (max_batch < max_running) {
        fprintf(stderr, "lmd serve: --max-batch-tokens (%ld) must be at least --max-running (%ld)\n", max_batch,
                max_running);
        return 2;
    }
    if (!tls_cert != !tls_key) {
        fprintf(stderr, "lmd serve: --tls-cert and --tls-key go together\n");
        return 2;
    }
    enum chat_family fam = CHAT_GENERIC;
    if (tmpl_name && chat_family_parse(tmpl_name, &fam) != 0) {
        fprintf(stderr, "lmd serve: unknown --chat-template '%s' (gemma, llama3, chatml, mistral, generic)\n",
                tmpl_name);
        return 2;
    }
    if (!model_path)
        model_path = cli_default_model();
    if (cli_check_model(model_path))
        return 1;

    /* Signals: SIGTERM/SIGINT are taken by sigwait on this thread only, so
     * block them before any other thread starts; a closed socket must not
     * kill the process. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    struct lmd_err err = {0};
    struct engine *eng = NULL;
    struct tok_vocab *vocab = NULL;
    struct sched *sched = NULL;
    struct api *api = NULL;
    struct http_server *http = NULL;
    struct qos *qos = NULL;
    bool obs_on = false;

    if (qos_open(&qos, tenants_path, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        return 1;
    }

    uint64_t t0 = lmd_time_mono_ns();
    struct engine_config ecfg = {
        .model_path = model_path,
        .n_threads = (int)threads,
        .n_ctx = (int)n_ctx,
        .max_batch_tokens = (int)max_batch,
        .max_seqs = (int)max_running,
        .kv_blocks = (int)kv_blocks,
    };
    if (engine_native_open(&eng, &ecfg, &err) != 0 || tok_load(&vocab, eng->info.gguf, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    if (tok_n_vocab(vocab) > eng->info.n_vocab) {
        fprintf(stderr, "lmd serve: the tokenizer has %d tokens but the model only %d\n", tok_n_vocab(vocab),
                eng->info.n_vocab);
        goto out;
    }
    if (!tmpl_name) {
        struct gguf_str t = {0};
        gguf_get_str(eng->info.gguf, "tokenizer.chat_template", &t, NULL);
        fam = chat_detect(t.ptr, t.len, eng->info.arch);
    }
    /* Classes and tenants: the tenants file (or its defaults) names them;
     * the scheduler, the metrics and the API all index them the same way. */
    const int n_classes = qos_n_classes(qos), n_tenants = qos_n_tenants(qos);
    struct sched_class classes[SCHED_MAX_CLASSES];
    const char *class_names[SCHED_MAX_CLASSES], *tenant_names[SCHED_MAX_TENANTS];
    double weights[SCHED_MAX_TENANTS];
    for (int i = 0; i < n_classes; i++) {
        const struct qos_class *qc = qos_class(qos, i);
        classes[i] = (struct sched_class){
            .name = qc->name,
            .ttft_ns = qc->ttft_ns,
            .tpot_ns = qc->tpot_ns,
            .window_ns = qc->window_ns,
            .refuse_late = qc->on_late == QOS_LATE_REFUSE,
        };
        class_names[i] = qc->name;
    }
    for (int i = 0; i < n_tenants; i++) {
        tenant_names[i] = qos_tenant(qos, i)->name;
        weights[i] = qos_tenant(qos, i)->weight;
    }
    /* The model label is the id /v1/models shows. */
    char model_label[128];
    api_model_id_for(model_path, eng->info.model_name, model_label, sizeof model_label);
    struct obs_config ocfg = {
        .model = model_label,
        .classes = class_names,
        .n_classes = n_classes,
        .tenants = tenant_names,
        .n_tenants = n_tenants,
        .trace = debug,
    };
    if (metrics || debug) {
        if (obs_init(&ocfg, &err) != 0) {
            fprintf(stderr, "lmd serve: %s\n", err.msg);
            goto out;
        }
        obs_on = true;
    }
    struct sched_config scfg = {
        .vocab = vocab,
        .max_running = (int)max_running,
        .max_queue = (int)max_queue,
        .policy = policy,
        .classes = classes,
        .n_classes = n_classes,
        .tenant_weight = weights,
        .n_tenants = n_tenants,
        .no_prefix_cache = !prefix_cache,
    };
    if (sched_start(&sched, eng, &scfg, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    struct api_config acfg = {
        .sched = sched,
        .vocab = vocab,
        .model_path = model_path,
        .model_name = eng->info.model_name,
        .chat_family = (int)fam,
        .n_ctx = eng->info.n_ctx,
        .max_body = (size_t)max_body,
        .qos = qos,
        .debug_endpoints = debug,
        .prefix_cache_shared = prefix_shared,
    };
    if (api_init(&api, &acfg, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    struct http_config hcfg = {
        .host = host,
        .port = (int)port,
        .io_threads = (int)io_threads,
        .max_body = (size_t)max_body,
        .tls_cert = tls_cert,
        .tls_key = tls_key,
        .stall_timeout_ms = (int)(stall_s * 1000),
        .handler = api_handle,
        .ud = api,
    };
    if (http_server_start(&http, &hcfg, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    LMD_INFO("lmd serve: model '%s' (%s, ctx %d, chat template %s) loaded in %.0f ms; %d threads, isa %s, "
             "kv %d blocks",
             api_model_id(api), eng->info.arch, eng->info.n_ctx, chat_family_name(fam),
             (double)(lmd_time_mono_ns() - t0) / 1e6, eng->info.n_threads, kern_isa(), eng->info.kv_blocks);
    LMD_INFO("lmd serve: scheduler %s, %d service classes, %s%s", policy == SCHED_POLICY_SLA ? "sla" : "fcfs",
             n_classes, qos_has_file(qos) ? "tenants from " : "open (no tenants file)",
             qos_has_file(qos) ? tenants_path : "");
    LMD_INFO("lmd serve: listening on %s://%s:%d (%s), %ld I/O threads", tls_cert ? "https" : "http", host,
             http_server_port(http), tls_cert ? "TLS, ALPN h2 and http/1.1" : "HTTP/1.1 and h2c", io_threads);

    serve_wait_and_drain(http, api, drain_s);
    status = 0;
out:
    /* The scheduler first: it finishes what is left as cancelled, and the
     * I/O loops must still be running to receive those last wakeups. */
    sched_stop(sched);
    /* Requests it cancelled still get their last chunk written by their
     * I/O thread; give that a moment, bounded. */
    for (int i = 0; http && api_active(api) > 0 && i < 50; i++) {
        struct timespec tick = {0, 10 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
    http_server_free(http);
    api_free(api);
    tok_free(vocab);
    engine_close(eng);
    if (obs_on)
        obs_shutdown();
    qos_close(qos);
    if (status == 0)
        LMD_INFO("lmd serve: stopped");
    return status;
}
