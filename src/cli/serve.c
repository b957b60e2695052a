/*
 * `lmd serve`: flags and an optional YAML config file into one
 * `struct serve_config`, then serve/ builds the server, runs it until
 * SIGTERM or SIGINT, drains and stops.
 *
 * Precedence: built-in defaults, then the config file, then the flags
 * given on the command line. Engine flags (-t, -c, --max-running …) set
 * the defaults of every model; a model entry in the file overrides them
 * for that model. Models from -m are served after the file's.
 *
 * Not here: building the server (serve/), request handling (api/).
 */
#include "serve/serve.h"
#include "api/api.h"
#include "api/chat_template.h"
#include "cli/cli.h"
#include "core/log.h"
#include "discovery/discovery.h"
#include "sched/sched.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void serve_usage(FILE *out)
{
    fprintf(out,
            "usage: lmd serve [-m [NAME=]MODEL]... [--config FILE] [options]\n"
            "\n"
            "Serves the OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models,\n"
            "the same without /v1, /tokenize, /detokenize, /health, /ready, /metrics) over HTTP/1.1\n"
            "and cleartext HTTP/2 on one port, or over HTTPS (ALPN: h2, http/1.1) with --tls-cert\n"
            "and --tls-key. Each model has its own engine and scheduler; requests choose one by\n"
            "their `model` field.\n"
            "SIGTERM or SIGINT drains: new connections are refused, /ready answers 503,\n"
            "requests in flight finish, then the process exits 0.\n"
            "\n"
            "Models:\n"
            "  -m, --model [NAME=]FILE  a GGUF model, served as NAME (default: the file name without\n"
            "                           .gguf); repeat for several (default %s)\n"
            "      --alias NAME         another name the model of the -m before it answers to\n"
            "                           (repeatable; before any -m: the default model's)\n"
            "      --config FILE        YAML config: listeners, tenants, scheduler, defaults and models\n"
            "                           with their engine settings (docs/configuration.md); flags given\n"
            "                           as well take precedence, -m models come after the file's\n"
            "Engine settings, for every model that does not set its own in --config:\n"
            "  -t, --threads N          compute threads (default: one per core)\n"
            "  -c, --ctx N              context length per sequence (default 4096)\n"
            "      --max-running N      sequences batched together (default 8)\n"
            "      --max-queue N        requests waiting before 503 + Retry-After (default 64)\n"
            "      --max-batch-tokens N tokens per engine step, the prefill chunk budget (default 512)\n"
            "      --kv-blocks N        KV-cache blocks of 16 tokens (default: max-running full contexts;\n"
            "                           on a GPU, what its free memory holds)\n"
            "      --device DEV         cpu (default), cuda, cuda:N (the CUDA engine on GPU N), or auto\n"
            "                           (the GPU if this build has CUDA and one answers, else the CPU)\n"
            "      --chat-template F    force the chat template: gemma, llama3, chatml, mistral, generic\n"
            "      --chat-template-file PATH  a Jinja chat template used instead of the GGUF's own\n"
            "Gateway (models served by upstream servers):\n"
            "      --upstream NAME=URL[,URL...]  serve NAME from these OpenAI-compatible servers; a URL is\n"
            "                           [KIND+]http://HOST:PORT[/PREFIX] (or https://, h2c:// for HTTP/2\n"
            "                           in clear, h2:// for HTTP/2 over TLS), KIND one of lmd, llamacpp,\n"
            "                           vllm, sglang, ollama, openai (default: learned from /v1/models);\n"
            "                           repeat for several models. LMD_UPSTREAM_API_KEY, when set, is\n"
            "                           sent to every upstream as a bearer token; https upstreams are\n"
            "                           checked against the system's CAs or LMD_UPSTREAM_CA (a PEM file)\n"
            "      --upstream-inflight N  requests each upstream runs at once; more wait in lmd's queue\n"
            "                           (default: what the upstream says it runs at once, else 8)\n"
            "      --route R            ttft (predicted time to first token; default), least (fewest\n"
            "                           in flight) or rr (round robin)\n"
            "      --upstream NAME=[KIND+]dns://HOST:PORT  the upstreams are every address HOST resolves to\n"
            "                           (a Kubernetes headless Service), resolved again every\n"
            "      --dns-interval MS    milliseconds (default 5000), with c-ares, from\n"
            "      --dns-servers H:P,.. these DNS servers (default: /etc/resolv.conf)\n"
            "      --upstream NAME=[KIND+]etcd://HOST:PORT/PREFIX  the upstreams are the URLs stored under\n"
            "                           PREFIX in etcd, watched\n"
            "      --register etcd://HOST:PORT/PREFIX  put this server's URL under PREFIX while it serves\n"
            "                           (a 10 s lease, kept alive; revoked when it drains)\n"
            "      --advertise URL      the URL registered (default http://HOST:PORT of the listener)\n"
            "      --watch-config       read --config and --tenants again when one changes (as on\n"
            "                           SIGHUP: tenants' keys, limits and permissions, the upstream\n"
            "                           lists of remote models)\n"
            "Server settings:\n"
            "      --host ADDR          address to listen on (default 127.0.0.1)\n"
            "      --port N             TCP port (default 8080; 0 = any free port)\n"
            "      --io-threads N       HTTP event-loop threads (default 1)\n"
            "      --prep-threads N     threads that render chat templates and tokenize prompts, off the\n"
            "                           event loops (default 2)\n"
            "      --max-body BYTES     request body limit, 413 above it (default 4194304)\n"
            "      --drain-timeout S    seconds to let requests finish at shutdown (default 30)\n"
            "      --tls-cert FILE      PEM certificate chain: serve HTTPS (needs --tls-key)\n"
            "      --tls-key FILE       PEM private key of --tls-cert\n"
            "      --cors-origin O      let browser pages from origin O (scheme://host[:port], or *\n"
            "                           for any) call the server; repeat for several (default: CORS off)\n"
            "      --stall-timeout S    drop a streamed request whose client takes no bytes for S\n"
            "                           seconds (default 60; 0 = never)\n"
            "      --sched POLICY       sla (service classes, deadlines, fair share, preemption; default)\n"
            "                           or fcfs (one queue in arrival order)\n"
            "      --tenants FILE       YAML file of tenants, API keys, limits and service classes\n"
            "                           (docs/configuration.md); without it the server is open\n"
            "      --priority-map MAP   integer `priority` (vLLM's: lower = more urgent) onto classes,\n"
            "                           CLASS<=N,...,CLASS; `default` = the tenant's default class\n"
            "                           (default: FIRST<=-1,default<=0,LAST)\n"
            "      --debug-endpoints    serve /debug/requests and /debug/trace (admin keys only when\n"
            "                           --tenants is given) and record scheduler trace events\n"
            "      --no-prefix-cache    compute every prompt in full (no reuse of cached prefixes)\n"
            "      --prefix-cache-shared  one prefix-cache namespace for all tenants (default: one each)\n"
            "      --metrics-compat vllm  also expose vLLM's load gauges (vllm:num_requests_running,\n"
            "                           _waiting, kv_cache_usage_perc, cache_config_info) for schedulers\n"
            "                           built for vLLM\n"
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
    OPT_DEVICE,
    OPT_MAX_BODY,
    OPT_DRAIN,
    OPT_CHAT_TEMPLATE,
    OPT_CHAT_TEMPLATE_FILE,
    OPT_LOG_LEVEL,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_STALL,
    OPT_SCHED,
    OPT_TENANTS,
    OPT_DEBUG,
    OPT_LOG_FORMAT,
    OPT_NO_METRICS,
    OPT_CONFIG,
    OPT_NO_PREFIX_CACHE,
    OPT_PREFIX_CACHE_SHARED,
    OPT_UPSTREAM,
    OPT_UPSTREAM_INFLIGHT,
    OPT_ROUTE,
    OPT_METRICS_COMPAT,
    OPT_DNS_SERVERS,
    OPT_DNS_INTERVAL,
    OPT_REGISTER,
    OPT_ADVERTISE,
    OPT_WATCH_CONFIG,
    OPT_PRIORITY_MAP,
    OPT_CORS_ORIGIN,
    OPT_ALIAS,
    OPT_PREP_THREADS,
};

static const struct option opts[] = {
    {"model", required_argument, NULL, 'm'},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"io-threads", required_argument, NULL, OPT_IO_THREADS},
    {"prep-threads", required_argument, NULL, OPT_PREP_THREADS},
    {"threads", required_argument, NULL, 't'},
    {"ctx", required_argument, NULL, 'c'},
    {"max-running", required_argument, NULL, OPT_MAX_RUNNING},
    {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
    {"max-batch-tokens", required_argument, NULL, OPT_MAX_BATCH},
    {"kv-blocks", required_argument, NULL, OPT_KV_BLOCKS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN},
    {"chat-template", required_argument, NULL, OPT_CHAT_TEMPLATE},
    {"chat-template-file", required_argument, NULL, OPT_CHAT_TEMPLATE_FILE},
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
    {"upstream", required_argument, NULL, OPT_UPSTREAM},
    {"upstream-inflight", required_argument, NULL, OPT_UPSTREAM_INFLIGHT},
    {"route", required_argument, NULL, OPT_ROUTE},
    {"metrics-compat", required_argument, NULL, OPT_METRICS_COMPAT},
    {"dns-servers", required_argument, NULL, OPT_DNS_SERVERS},
    {"dns-interval", required_argument, NULL, OPT_DNS_INTERVAL},
    {"register", required_argument, NULL, OPT_REGISTER},
    {"advertise", required_argument, NULL, OPT_ADVERTISE},
    {"watch-config", no_argument, NULL, OPT_WATCH_CONFIG},
    {"priority-map", required_argument, NULL, OPT_PRIORITY_MAP},
    {"cors-origin", required_argument, NULL, OPT_CORS_ORIGIN},
    {"alias", required_argument, NULL, OPT_ALIAS},
    {"help", no_argument, NULL, 'h'},
    {0, 0, 0, 0},
};

/* A string flag into a fixed config field; too long is an error. */
static int set_str(const char *opt, const char *v, char *dst, size_t cap)
{
    if (strlen(v) >= cap) {
        fprintf(stderr, "lmd serve: %s: longer than %zu bytes\n", opt, cap - 1);
        return -1;
    }
    snprintf(dst, cap, "%s", v);
    return 0;
}

static int set_int(const char *opt, const char *v, long lo, long hi, int *dst)
{
    long x;
    if (cli_parse_long("lmd serve", opt, v, lo, hi, &x))
        return -1;
    *dst = (int)x;
    return 0;
}

/* Whether a --cors-origin was applied yet (the first one clears the
 * config file's list). One `lmd serve` per process. */
static bool cors_from_flags;

/* --alias names the model of the -m before it; before any -m, the default
 * model, which is added only once every flag is read. */
static int last_m = -1;
static char pending_alias[SERVE_MAX_ALIASES][SERVE_NAME_MAX];
static int n_pending_alias;

/* One flag onto the config. Returns 0, 1 (--help shown: exit 0) or -1
 * (message printed: exit 2). */
static int apply_flag(struct serve_config *c, int opt, const char *v)
{
    struct serve_model *d = &c->defaults;
    struct lmd_err err = {0};
    switch (opt) {
    case 'm':
        if (serve_config_add_model(c, v, &err) != 0) {
            fprintf(stderr, "lmd serve: %s\n", err.msg);
            return -1;
        }
        last_m = c->n_models - 1;
        return 0;
    case OPT_ALIAS:
        if (last_m < 0) {
            if (n_pending_alias == SERVE_MAX_ALIASES || strlen(v) >= SERVE_NAME_MAX || !serve_id_valid(v)) {
                fprintf(stderr, "lmd serve: --alias '%.64s': not a model id, or more than %d aliases\n", v,
                        SERVE_MAX_ALIASES);
                return -1;
            }
            snprintf(pending_alias[n_pending_alias++], SERVE_NAME_MAX, "%s", v);
            return 0;
        }
        if (serve_config_add_alias(c, last_m, v, &err) != 0) {
            fprintf(stderr, "lmd serve: %s\n", err.msg);
            return -1;
        }
        return 0;
    case OPT_CONFIG:
        return 0; /* read before the other flags */
    case OPT_HOST:
        return set_str("--host", v, c->host, sizeof c->host);
    case OPT_PORT:
        return set_int("--port", v, 0, 65535, &c->port);
    case OPT_IO_THREADS:
        return set_int("--io-threads", v, 1, 64, &c->io_threads);
    case OPT_PREP_THREADS:
        return set_int("--prep-threads", v, 1, API_PREP_THREADS_MAX, &c->prep_threads);
    case 't':
        return set_int("--threads", v, 1, 1024, &d->threads);
    case 'c':
        c->ctx_given = true;
        return set_int("--ctx", v, 16, 1 << 20, &d->ctx);
    case OPT_UPSTREAM:
        if (serve_config_add_upstream(c, v, &err) != 0) {
            fprintf(stderr, "lmd serve: %s\n", err.msg);
            return -1;
        }
        return 0;
    case OPT_UPSTREAM_INFLIGHT:
        return set_int("--upstream-inflight", v, 1, 4096, &d->inflight);
    case OPT_ROUTE:
        if (strcmp(v, "ttft") == 0 || strcmp(v, "least") == 0 || strcmp(v, "rr") == 0) {
            d->route = v[0] == 't' ? REMOTE_ROUTE_TTFT : v[0] == 'l' ? REMOTE_ROUTE_LEAST : REMOTE_ROUTE_RR;
            return 0;
        }
        fprintf(stderr, "lmd serve: --route wants ttft, least or rr, got '%s'\n", v);
        return -1;
    case OPT_MAX_RUNNING:
        return set_int("--max-running", v, 1, 1024, &d->max_running);
    case OPT_MAX_QUEUE:
        return set_int("--max-queue", v, 0, 1 << 20, &d->max_queue);
    case OPT_MAX_BATCH:
        return set_int("--max-batch-tokens", v, 1, 1 << 16, &d->max_batch_tokens);
    case OPT_KV_BLOCKS:
        return set_int("--kv-blocks", v, 1, 1 << 24, &d->kv_blocks);
    case OPT_DEVICE: {
        enum engine_device dev;
        int gpu;
        if (engine_device_parse(v, &dev, &gpu) == 0)
            return set_str("--device", v, d->device, sizeof d->device);
        fprintf(stderr, "lmd serve: --device wants cpu, cuda, cuda:N or auto, got '%s'\n", v);
        return -1;
    }
    case OPT_MAX_BODY:
        return cli_parse_long("lmd serve", "--max-body", v, 1024, 1L << 30, &c->max_body) ? -1 : 0;
    case OPT_DRAIN:
        return cli_parse_long("lmd serve", "--drain-timeout", v, 0, 86400, &c->drain_s) ? -1 : 0;
    case OPT_STALL:
        return cli_parse_long("lmd serve", "--stall-timeout", v, 0, 86400, &c->stall_s) ? -1 : 0;
    case OPT_CHAT_TEMPLATE: {
        enum chat_family fam;
        if (chat_family_parse(v, &fam) == 0)
            return set_str("--chat-template", v, d->chat_template, sizeof d->chat_template);
        fprintf(stderr, "lmd serve: unknown --chat-template '%s' (gemma, llama3, chatml, mistral, generic)\n", v);
        return -1;
    }
    case OPT_CHAT_TEMPLATE_FILE:
        return set_str("--chat-template-file", v, d->chat_template_file, sizeof d->chat_template_file);
    case OPT_TLS_CERT:
        return set_str("--tls-cert", v, c->tls_cert, sizeof c->tls_cert);
    case OPT_TLS_KEY:
        return set_str("--tls-key", v, c->tls_key, sizeof c->tls_key);
    case OPT_SCHED:
        if (strcmp(v, "sla") == 0 || strcmp(v, "fcfs") == 0) {
            c->policy = strcmp(v, "sla") == 0 ? SCHED_POLICY_SLA : SCHED_POLICY_FCFS;
            return 0;
        }
        fprintf(stderr, "lmd serve: --sched wants sla or fcfs, got '%s'\n", v);
        return -1;
    case OPT_TENANTS:
        return set_str("--tenants", v, c->tenants, sizeof c->tenants);
    case OPT_DEBUG:
        c->debug = true;
        return 0;
    case OPT_REGISTER:
        if (discovery_etcd_parse(v, &err) != 0) {
            fprintf(stderr, "lmd serve: --register %s\n", err.msg);
            return -1;
        }
        return set_str("--register", v, c->register_url, sizeof c->register_url);
    case OPT_WATCH_CONFIG:
        c->watch_config = true;
        return 0;
    case OPT_PRIORITY_MAP:
        return set_str("--priority-map", v, c->priority_map, sizeof c->priority_map);
    case OPT_CORS_ORIGIN:
        /* The flags' list replaces the config file's, as every flag does. */
        if (!cors_from_flags) {
            c->n_cors_origins = 0;
            cors_from_flags = true;
        }
        if (serve_config_add_cors(c, v, &err) != 0) {
            fprintf(stderr, "lmd serve: %s\n", err.msg);
            return -1;
        }
        return 0;
    case OPT_ADVERTISE:
        if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0 && !strstr(v, "+http")) {
            fprintf(stderr, "lmd serve: --advertise wants the URL others reach this server at ([KIND+]http://...)\n");
            return -1;
        }
        return set_str("--advertise", v, c->advertise, sizeof c->advertise);
    case OPT_DNS_SERVERS:
        return set_str("--dns-servers", v, c->dns_servers, sizeof c->dns_servers);
    case OPT_DNS_INTERVAL: {
        long ms;
        if (cli_parse_long("lmd serve", "--dns-interval", v, 100, 3600000, &ms))
            return -1;
        c->dns_interval_ms = (int)ms;
        return 0;
    }
    case OPT_METRICS_COMPAT:
        if (strcmp(v, "vllm") == 0 || strcmp(v, "none") == 0) {
            c->metrics_compat = v[0] == 'v' ? SERVE_COMPAT_VLLM : SERVE_COMPAT_NONE;
            return 0;
        }
        fprintf(stderr, "lmd serve: --metrics-compat wants vllm or none, got '%s'\n", v);
        return -1;
    case OPT_NO_METRICS:
        c->metrics = false;
        return 0;
    case OPT_NO_PREFIX_CACHE:
        c->prefix_cache = false;
        return 0;
    case OPT_PREFIX_CACHE_SHARED:
        c->prefix_cache_shared = true;
        return 0;
    case OPT_LOG_FORMAT: {
        enum lmd_log_format f;
        if (lmd_log_parse_format(v, &f) != 0) {
            fprintf(stderr, "lmd serve: --log-format wants text or json, got '%s'\n", v);
            return -1;
        }
        lmd_log_set_format(f);
        return 0;
    }
    case OPT_LOG_LEVEL: {
        enum lmd_log_level lv;
        if (lmd_log_parse_level(v, &lv) != 0) {
            fprintf(stderr, "lmd serve: --log-level wants debug, info, warn or error, got '%s'\n", v);
            return -1;
        }
        lmd_log_set_level(lv);
        return 0;
    }
    case 'h':
        serve_usage(stdout);
        return 1;
    default:
        serve_usage(stderr);
        return -1;
    }
}

int cli_serve(int argc, char **argv)
{
    struct serve_config *cfg = malloc(sizeof *cfg);
    if (!cfg) {
        fprintf(stderr, "lmd serve: out of memory\n");
        return 1;
    }
    serve_config_init(cfg);
    struct lmd_err err = {0};
    int status = 2, c;

    /* First pass: the config file, so that the flags given apply over it. */
    const char *config = NULL;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:t:c:h", opts, NULL)) != -1)
        if (c == OPT_CONFIG)
            config = optarg;
    opterr = 1;
    if (config && serve_config_load(cfg, config, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    optind = 0;
    while ((c = getopt_long(argc, argv, "m:t:c:h", opts, NULL)) != -1) {
        int rc = apply_flag(cfg, c, optarg);
        if (rc != 0) {
            status = rc > 0 ? 0 : 2;
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmd serve: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (cfg->defaults.max_batch_tokens < cfg->defaults.max_running) {
        fprintf(stderr, "lmd serve: --max-batch-tokens (%d) must be at least --max-running (%d)\n",
                cfg->defaults.max_batch_tokens, cfg->defaults.max_running);
        goto out;
    }
    if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
        fprintf(stderr, "lmd serve: --tls-cert and --tls-key go together\n");
        goto out;
    }
    if (n_pending_alias && cfg->n_models > 0) {
        fprintf(stderr, "lmd serve: --alias names the model of the -m before it (or the default model when no "
                        "model is given)\n");
        goto out;
    }
    status = 1;
    if (cfg->n_models == 0) {
        if (cli_check_model(cli_default_model()))
            goto out;
        serve_config_add_model(cfg, cli_default_model(), &err);
        for (int i = 0; i < n_pending_alias; i++)
            serve_config_add_alias(cfg, 0, pending_alias[i], &err); /* checked when given */
    }

    struct serve *s = NULL;
    if (serve_open(&s, cfg, &err) != 0) {
        fprintf(stderr, "lmd serve: %s\n", err.msg);
        goto out;
    }
    serve_run(s);
    serve_close(s);
    LMD_INFO("lmd serve: stopped");
    status = 0;
out:
    free(cfg);
    return status;
}
