/*
 * Assembly of the server from a `struct serve_config`: tenants, then per
 * model an engine, its vocabulary and chat template and its own scheduler
 * (one engine thread each), then metrics, the API over every model and the
 * HTTP listeners; the drain at shutdown; and the teardown in the order that
 * lets every request in flight get its last bytes.
 *
 * Model names: a model is served under its id (the configured name, else
 * its file stem made a slug) and answers to its configured aliases and, as
 * long as no other model claims them, to its file stem, its file name and
 * its GGUF general.name. Ids and configured aliases must be unique across
 * models; an implied name two models share is dropped from both.
 *
 * Not here: the config file (config.c), flags (cli/serve.c), request
 * handling (api/), batching (sched/), sockets (http/).
 */
#include "serve/serve.h"

#include "api/api.h"
#include "api/chat_template.h"
#include "api/jinja.h"
#include "core/log.h"
#include "core/time.h"
#include "discovery/discovery.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "http/http.h"
#include "kernels/kernels.h"
#include "obs/obs.h"
#include "qos/qos.h"
#include "sched/sched.h"
#include "tokenizer/tokenizer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

_Static_assert(SERVE_MAX_MODELS <= API_MAX_MODELS && SERVE_MAX_MODELS <= OBS_MAX_MODELS,
               "a model index is an api index and an obs label index");

#define SERVE__NAMES (SERVE_MAX_ALIASES + 3) /* configured aliases, stem, file name, general.name */
#define SERVE__NAME_LEN 128

struct serve__model {
    struct serve_model cfg; /* resolved: no field left unset */
    char where[96];         /* "model 'x' (config.yaml line 12)" for messages */
    char id[SERVE_NAME_MAX];
    char names[SERVE__NAMES][SERVE__NAME_LEN]; /* [n_names] the other names it answers to */
    bool implied[SERVE__NAMES];                /* taken from the file or GGUF, not configured */
    int n_names;
    enum chat_family fam;
    struct jinja_tmpl *tmpl; /* the Jinja chat template chats render with; NULL = the family renderer */
    const char *tmpl_from;   /* where tmpl came from, for the start-up line: "gguf" or the file */
    struct engine *eng;
    struct tok_vocab *vocab;
    struct sched *sched;
    bool dns; /* its upstreams come from discovery */
};

struct serve {
    struct serve_config cfg;
    struct qos *qos;
    struct serve__model models[SERVE_MAX_MODELS];
    int n_models;
    bool obs_on;
    bool compat_on; /* vllm_collect is registered */
    struct discovery *disc;
    struct etcd_watch *etcd[SERVE_MAX_MODELS];
    int n_etcd;
    struct etcd_reg *reg;
    struct api *api;
    struct http_server *http;
    struct api_priority_map priority_map; /* integer priorities onto the qos classes */
};

/* ---- models ------------------------------------------------------------------ */

static void resolve(struct serve_model *m, const struct serve_model *d)
{
    int *f[] = {&m->threads, &m->ctx, &m->kv_blocks, &m->max_running, &m->max_batch_tokens, &m->max_queue};
    const int *g[] = {&d->threads, &d->ctx, &d->kv_blocks, &d->max_running, &d->max_batch_tokens, &d->max_queue};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (*f[i] == SERVE_UNSET)
            *f[i] = *g[i];
    if (m->inflight == SERVE_UNSET)
        m->inflight = d->inflight;
    if (m->route == SERVE_UNSET)
        m->route = d->route;
    if (!m->chat_template[0])
        memcpy(m->chat_template, d->chat_template, sizeof m->chat_template);
    if (!m->chat_template_file[0])
        memcpy(m->chat_template_file, d->chat_template_file, sizeof m->chat_template_file);
    if (!m->device[0])
        memcpy(m->device, d->device, sizeof m->device);
}

/* The Jinja chat template of a native model: the file configured, else
 * the GGUF's own tokenizer.chat_template unless a family is forced. A file
 * that does not parse stops the start (the operator asked for it); a GGUF
 * template that does not parse leaves the family renderer in place, with a
 * warning, so that a model whose template uses what lmd's Jinja lacks
 * still serves. */
static int chat_template_open(struct serve__model *sm, struct lmd_err *err)
{
    const struct serve_model *m = &sm->cfg;
    struct jinja_err jerr;
    if (m->chat_template_file[0]) {
        FILE *f = fopen(m->chat_template_file, "rb");
        char *src = NULL;
        long len = -1;
        if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && len <= (8L << 20) &&
            fseek(f, 0, SEEK_SET) == 0 && (src = malloc((size_t)len + 1)) &&
            fread(src, 1, (size_t)len, f) != (size_t)len) {
            free(src);
            src = NULL;
        }
        if (f)
            fclose(f);
        if (!src)
            return lmd_err_set(err, LMD_EIO, "%s: cannot read chat template file %s%s", sm->where,
                               m->chat_template_file, len > (8L << 20) ? " (larger than 8 MiB)" : "");
        int rc = jinja_parse(src, (size_t)len, &sm->tmpl, &jerr);
        free(src);
        if (rc != 0)
            return lmd_err_set(err, rc, "%s: chat template %s:%d:%d: %s", sm->where, m->chat_template_file, jerr.line,
                               jerr.col, jerr.msg);
        sm->tmpl_from = m->chat_template_file;
        return 0;
    }
    if (m->chat_template[0])
        return 0;
    struct gguf_str t = {0};
    if (gguf_get_str(sm->eng->info.gguf, "tokenizer.chat_template", &t, NULL) != 0 || !t.len)
        return 0;
    if (jinja_parse(t.ptr, t.len, &sm->tmpl, &jerr) != 0) {
        LMD_WARN("lmd serve: %s: the GGUF's chat template cannot be used (line %d, column %d: %s); chats use the "
                 "built-in %s template",
                 sm->where, jerr.line, jerr.col, jerr.msg, chat_family_name(sm->fam));
        return 0;
    }
    sm->tmpl_from = "gguf";
    return 0;
}

static void add_name(struct serve__model *sm, const char *name, bool implied)
{
    if (!name || !*name || strlen(name) >= SERVE__NAME_LEN || strcmp(name, sm->id) == 0)
        return;
    for (int i = 0; i < sm->n_names; i++)
        if (strcmp(sm->names[i], name) == 0)
            return;
    if (sm->n_names == SERVE__NAMES)
        return;
    snprintf(sm->names[sm->n_names], SERVE__NAME_LEN, "%s", name);
    sm->implied[sm->n_names++] = implied;
}

/* A remote model: a pool of upstream servers. Its context is the budget
 * admission counts against (a ctx set for it, else 32768); the upstreams
 * enforce their own. */
static int remote_open(struct serve__model *sm, bool ctx_given, struct lmd_err *err)
{
    const struct serve_model *m = &sm->cfg;
    if (m->n_upstreams < 1)
        return lmd_err_set(err, LMD_EINVAL, "%s: a remote model needs at least one upstream", sm->where);
    /* Either a fixed list, or one name that discovery resolves. */
    int n_dns = 0;
    for (int i = 0; i < m->n_upstreams; i++)
        n_dns += discovery_is_dns(m->upstreams[i]) || discovery_is_etcd(m->upstreams[i]);
    if (n_dns && m->n_upstreams > 1)
        return lmd_err_set(err, LMD_EINVAL,
                           "%s: a dns:// or etcd:// upstream is the whole list (what it discovers); it takes no "
                           "other upstreams beside it",
                           sm->where);
    struct remote_config rc = {
        .discovered = n_dns > 0,
        .name = sm->id,
        .upstream_model = m->upstream_model[0] ? m->upstream_model : NULL,
        .api_key = getenv("LMD_UPSTREAM_API_KEY"),
        .ca_file = getenv("LMD_UPSTREAM_CA"),
        .n_backends = n_dns ? 0 : m->n_upstreams,
        .max_inflight = m->inflight,
        .n_ctx = ctx_given ? m->ctx : 32768,
        .route = (enum remote_route)m->route,
    };
    if (rc.api_key && !*rc.api_key)
        rc.api_key = NULL;
    if (rc.ca_file && !*rc.ca_file)
        rc.ca_file = NULL;
    for (int i = 0; i < rc.n_backends; i++) {
        snprintf(rc.backends[i].url, sizeof rc.backends[i].url, "%s", m->upstreams[i]);
        rc.backends[i].max_inflight = m->upstream_inflight[i];
    }
    int r = engine_remote_open(&sm->eng, &rc, err);
    if (r != 0) {
        lmd_err_prefix(err, "%s", sm->where);
        return r;
    }
    sm->dns = n_dns > 0;
    sm->fam = CHAT_GENERIC;
    for (int i = 0; i < m->n_aliases; i++)
        add_name(sm, m->aliases[i], false);
    return 0;
}

/* Open one model: engine, vocabulary, chat template; its names. */
static int model_open(struct serve *s, struct serve__model *sm, const struct serve_model *given, struct lmd_err *err)
{
    const bool ctx_given = given->ctx != SERVE_UNSET || s->cfg.ctx_given;
    sm->cfg = *given;
    resolve(&sm->cfg, &s->cfg.defaults);
    struct serve_model *m = &sm->cfg;
    _Static_assert(sizeof sm->id == sizeof m->name, "a name is an id");
    if (m->name[0])
        memcpy(sm->id, m->name, sizeof sm->id);
    else
        serve_model_slug(m->path, sm->id, sizeof sm->id);
    /* Built aside: sm and s->cfg are parts of one object. */
    char where[sizeof sm->where];
    const char *slash = strrchr(s->cfg.file, '/');
    if (m->line)
        snprintf(where, sizeof where, "model '%s' (%.40s line %d)", sm->id, slash ? slash + 1 : s->cfg.file, m->line);
    else
        snprintf(where, sizeof where, "model '%s' (-m)", sm->id);
    memcpy(sm->where, where, sizeof where);
    if (!serve_id_valid(sm->id))
        return lmd_err_set(err, LMD_EINVAL, "%s: the file name gives no usable id; name it (-m NAME=PATH, or name:)",
                           sm->where);
    if (m->engine == SERVE_ENGINE_REMOTE)
        return remote_open(sm, ctx_given, err);
    if (m->engine != SERVE_ENGINE_NATIVE)
        return lmd_err_set(err, LMD_ENOTSUP, "%s: engine kind %d is not available", sm->where, (int)m->engine);
    if (m->max_batch_tokens < m->max_running)
        return lmd_err_set(err, LMD_EINVAL, "%s: max batch tokens (%d) must be at least max running (%d)", sm->where,
                           m->max_batch_tokens, m->max_running);
    sm->fam = CHAT_GENERIC;
    if (m->chat_template[0] && chat_family_parse(m->chat_template, &sm->fam) != 0)
        return lmd_err_set(err, LMD_EINVAL, "%s: unknown chat template '%s' (gemma, llama3, chatml, mistral, generic)",
                           sm->where, m->chat_template);

    enum engine_device dev = ENGINE_DEVICE_CPU;
    int gpu = 0;
    if (m->device[0] && engine_device_parse(m->device, &dev, &gpu) != 0)
        return lmd_err_set(err, LMD_EINVAL, "%s: device '%s': expected cpu, cuda, cuda:N or auto", sm->where,
                           m->device);
    struct engine_config ecfg = {
        .model_path = m->path,
        .device = dev,
        .gpu = gpu,
        .n_threads = m->threads,
        .n_ctx = m->ctx,
        .max_batch_tokens = m->max_batch_tokens,
        .max_seqs = m->max_running,
        .kv_blocks = m->kv_blocks,
    };
    int rc = engine_local_open(&sm->eng, &ecfg, err);
    if (rc == 0)
        rc = tok_load(&sm->vocab, sm->eng->info.gguf, err);
    if (rc != 0) {
        lmd_err_prefix(err, "%s", sm->where);
        return rc;
    }
    if (tok_n_vocab(sm->vocab) > sm->eng->info.n_vocab)
        return lmd_err_set(err, LMD_EFORMAT, "%s: the tokenizer has %d tokens but the model only %d", sm->where,
                           tok_n_vocab(sm->vocab), sm->eng->info.n_vocab);
    if (!m->chat_template[0]) {
        struct gguf_str t = {0};
        gguf_get_str(sm->eng->info.gguf, "tokenizer.chat_template", &t, NULL);
        sm->fam = chat_detect(t.ptr, t.len, sm->eng->info.arch);
    }
    if ((rc = chat_template_open(sm, err)) != 0)
        return rc;

    for (int i = 0; i < m->n_aliases; i++)
        add_name(sm, m->aliases[i], false);
    char stem[SERVE__NAME_LEN];
    slash = strrchr(m->path, '/');
    const char *file = slash ? slash + 1 : m->path;
    size_t n = strlen(file);
    snprintf(stem, sizeof stem, "%.*s", (int)(n > 5 && strcmp(file + n - 5, ".gguf") == 0 ? n - 5 : n), file);
    add_name(sm, stem, true);
    add_name(sm, file, true);
    add_name(sm, sm->eng->info.model_name, true);
    return 0;
}

/* Ids and configured aliases are unique across models; implied names
 * that two models share, or that are another model's id or alias, are
 * dropped. */
static int names_check(struct serve *s, struct lmd_err *err)
{
    for (int i = 0; i < s->n_models; i++) {
        struct serve__model *a = &s->models[i];
        for (int j = 0; j < s->n_models; j++) {
            if (j == i)
                continue;
            struct serve__model *b = &s->models[j];
            if (j > i && strcmp(a->id, b->id) == 0)
                return lmd_err_set(err, LMD_EINVAL, "%s and %s have the same id; name one of them", a->where, b->where);
            for (int k = 0; k < b->n_names; k++)
                if (!b->implied[k] && strcmp(a->id, b->names[k]) == 0)
                    return lmd_err_set(err, LMD_EINVAL, "%s: its id is an alias of %s", a->where, b->where);
            for (int k = 0; k < a->n_names; k++)
                for (int l = 0; j > i && l < b->n_names; l++)
                    if (!a->implied[k] && !b->implied[l] && strcmp(a->names[k], b->names[l]) == 0)
                        return lmd_err_set(err, LMD_EINVAL, "%s and %s both have the alias '%s'", a->where, b->where,
                                           a->names[k]);
        }
    }
    /* Mark the ambiguous implied names first, then drop them, so that a
     * name three models share goes from all three. */
    bool drop[SERVE_MAX_MODELS][SERVE__NAMES] = {{false}};
    for (int i = 0; i < s->n_models; i++)
        for (int k = 0; k < s->models[i].n_names; k++) {
            if (!s->models[i].implied[k])
                continue;
            const char *nm = s->models[i].names[k];
            for (int j = 0; j < s->n_models && !drop[i][k]; j++) {
                if (j == i)
                    continue;
                drop[i][k] |= strcmp(nm, s->models[j].id) == 0;
                for (int l = 0; l < s->models[j].n_names; l++)
                    drop[i][k] |= strcmp(nm, s->models[j].names[l]) == 0;
            }
        }
    for (int i = 0; i < s->n_models; i++) {
        struct serve__model *sm = &s->models[i];
        int w = 0;
        for (int k = 0; k < sm->n_names; k++) {
            if (drop[i][k]) {
                LMD_INFO("lmd serve: %s: '%s' names another model too; it is not an alias of either", sm->where,
                         sm->names[k]);
                continue;
            }
            if (w != k) {
                memcpy(sm->names[w], sm->names[k], SERVE__NAME_LEN);
                sm->implied[w] = sm->implied[k];
            }
            w++;
        }
        sm->n_names = w;
    }
    return 0;
}

/* A tenant's model list that names nothing served is most likely a typo:
 * say so at start-up rather than with every 403. */
static void tenants_check(struct serve *s)
{
    for (int t = 0; t < qos_n_tenants(s->qos); t++) {
        const struct qos_tenant *qt = qos_tenant(s->qos, t);
        for (int k = 0; !qt->all_models && k < qt->n_models; k++) {
            bool found = false;
            for (int i = 0; i < s->n_models && !found; i++) {
                found = strcmp(qt->models[k], s->models[i].id) == 0;
                for (int l = 0; l < s->models[i].n_names && !found; l++)
                    found = strcmp(qt->models[k], s->models[i].names[l]) == 0;
            }
            if (!found)
                LMD_WARN("lmd serve: tenant '%s' may use model '%s', which this server does not serve", qt->name,
                         qt->models[k]);
        }
    }
}

/* ---- vLLM's load gauges --------------------------------------------------------- */

/* --metrics-compat vllm: the gauges that schedulers built for vLLM (the
 * Gateway API Inference Extension's endpoint picker, llm-d, lmd's own
 * gateway) read, under vLLM's names and its model_name label, from the
 * same published atomics as lmd's own series: cheap, and never a wait on
 * an engine thread. KV usage counts blocks held by requests (cached blocks
 * no request holds are free, as vLLM's prefix cache counts them). */
static int vllm_collect(struct lmd_buf *out, void *ud)
{
    struct serve *s = ud;
    static const char *const fam[][3] = {
        {"vllm:num_requests_running", "gauge", "Number of requests in model execution batches."},
        {"vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."},
        {"vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."},
        {"vllm:cache_config_info", "gauge", "Information of the KV cache configuration."},
    };
    struct sched_stats st[SERVE_MAX_MODELS];
    for (int i = 0; i < s->n_models; i++)
        sched_stats(s->models[i].sched, &st[i]);
    for (int f = 0; f < 4; f++) {
        lmd_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fam[f][0], fam[f][2], fam[f][0], fam[f][1]);
        for (int i = 0; i < s->n_models; i++) {
            const struct sched_stats *t = &st[i];
            bool blocks = !s->models[i].eng->info.request_level;
            switch (f) {
            case 0:
                lmd_buf_printf(out, "%s{model_name=\"%s\"} %d\n", fam[f][0], s->models[i].id, t->running);
                break;
            case 1:
                lmd_buf_printf(out, "%s{model_name=\"%s\"} %d\n", fam[f][0], s->models[i].id, t->waiting);
                break;
            case 2:
                if (blocks && t->kv_blocks_total > 0)
                    lmd_buf_printf(out, "%s{model_name=\"%s\"} %.6f\n", fam[f][0], s->models[i].id,
                                   (double)(t->kv_blocks_total - t->kv_blocks_free) / t->kv_blocks_total);
                break;
            default:
                if (blocks)
                    lmd_buf_printf(out,
                                   "%s{model_name=\"%s\",block_size=\"%d\",num_gpu_blocks=\"%d\","
                                   "num_cpu_blocks=\"0\",cache_dtype=\"f16\"} 1\n",
                                   fam[f][0], s->models[i].id, t->kv_block_tokens, t->kv_blocks_total);
                break;
            }
        }
    }
    return out->ptr ? 0 : LMD_ENOMEM;
}

/* ---- the server -------------------------------------------------------------- */

int serve_open(struct serve **out, const struct serve_config *c, struct lmd_err *err)
{
    *out = NULL;
    if (c->n_models < 1 || c->n_models > SERVE_MAX_MODELS)
        return lmd_err_set(err, LMD_EINVAL, "%d models (1 to %d)", c->n_models, SERVE_MAX_MODELS);
    if (!c->tls_cert[0] != !c->tls_key[0])
        return lmd_err_set(err, LMD_EINVAL, "a TLS certificate and a TLS key go together");

    /* SIGTERM/SIGINT are taken by sigwait in serve_run only: block them
     * before any thread starts. A closed socket must not kill the process. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct serve *s = calloc(1, sizeof *s);
    if (!s)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory");
    s->cfg = *c;
    int rc = qos_open(&s->qos, c->tenants[0] ? c->tenants : NULL, err);
    if (rc != 0)
        goto fail;
    /* The map names classes, so it is read once the tenants file is, and
     * before any model loads: a typo costs no start-up time. */
    if (c->priority_map[0] && (rc = api_priority_map_parse(&s->priority_map, c->priority_map, s->qos, err)) != 0) {
        lmd_err_prefix(err, "priority map '%.200s'", c->priority_map);
        goto fail;
    }
    if (s->priority_map.n == 0)
        api_priority_map_default(&s->priority_map, s->qos);
    char pm[256];
    api_priority_map_format(&s->priority_map, s->qos, pm, sizeof pm);
    LMD_INFO("lmd serve: integer priorities map onto classes as %s", pm);

    uint64_t t0 = lmd_time_mono_ns();
    for (int i = 0; i < c->n_models; i++) {
        s->n_models = i + 1;
        if ((rc = model_open(s, &s->models[i], &c->models[i], err)) != 0)
            goto fail;
    }
    if ((rc = names_check(s, err)) != 0)
        goto fail;
    tenants_check(s);

    /* Classes and tenants: the tenants file (or its defaults) names them;
     * the schedulers, the metrics and the API all index them the same way. */
    const int n_classes = qos_n_classes(s->qos), n_tenants = qos_n_tenants(s->qos);
    struct sched_class classes[SCHED_MAX_CLASSES];
    const char *class_names[SCHED_MAX_CLASSES], *tenant_names[SCHED_MAX_TENANTS], *model_ids[SERVE_MAX_MODELS];
    double weights[SCHED_MAX_TENANTS];
    for (int i = 0; i < n_classes; i++) {
        const struct qos_class *qc = qos_class(s->qos, i);
        classes[i] = (struct sched_class){
            .name = qc->name,
            .ttft_ns = qc->ttft_ns,
            .tpot_ns = qc->tpot_ns,
            .window_ns = qc->window_ns,
            .refuse_late = qc->on_late == QOS_LATE_REFUSE,
            .max_request_running = qc->max_request_slots,
            .reserved_running = qc->reserved_slots,
        };
        class_names[i] = qc->name;
    }
    for (int i = 0; i < n_tenants; i++) {
        tenant_names[i] = qos_tenant(s->qos, i)->name;
        weights[i] = qos_tenant(s->qos, i)->weight;
    }
    for (int i = 0; i < s->n_models; i++)
        model_ids[i] = s->models[i].id;
    struct obs_config ocfg = {
        .models = model_ids,
        .n_models = s->n_models,
        .classes = class_names,
        .n_classes = n_classes,
        .tenants = tenant_names,
        .n_tenants = n_tenants,
        .trace = c->debug,
    };
    if (c->metrics || c->debug) {
        if ((rc = obs_init(&ocfg, err)) != 0)
            goto fail;
        s->obs_on = true;
    }

    struct api_model am[SERVE_MAX_MODELS];
    const char *names[SERVE_MAX_MODELS][SERVE__NAMES];
    for (int i = 0; i < s->n_models; i++) {
        struct serve__model *sm = &s->models[i];
        const bool fwd = sm->eng->info.takes_api;
        struct sched_config scfg = {
            .vocab = sm->vocab,
            /* A pool runs as many requests as its upstreams' limits add up to. */
            .max_running = fwd ? sm->eng->info.max_seqs : sm->cfg.max_running,
            .max_queue = sm->cfg.max_queue,
            .policy = (enum sched_policy)c->policy,
            .classes = classes,
            .n_classes = n_classes,
            .tenant_weight = weights,
            .n_tenants = n_tenants,
            .obs_model = i,
            .no_prefix_cache = !c->prefix_cache,
        };
        if ((rc = sched_start(&sm->sched, sm->eng, &scfg, err)) != 0) {
            lmd_err_prefix(err, "%s", sm->where);
            goto fail;
        }
        for (int k = 0; k < sm->n_names; k++)
            names[i][k] = sm->names[k];
        am[i] = (struct api_model){
            .id = sm->id,
            .aliases = names[i],
            .n_aliases = sm->n_names,
            .display_name = sm->eng->info.model_name,
            .arch = sm->eng->info.arch,
            .engine = sm->eng->info.kind,
            .owned_by = sm->cfg.owned_by[0] ? sm->cfg.owned_by : NULL,
            .sched = sm->sched,
            .vocab = sm->vocab,
            .forwards = fwd,
            .chat_family = (int)sm->fam,
            .chat_jinja = sm->tmpl,
            /* A gateway model has no vocabulary here: its upstream renders. */
            .bos_token = sm->vocab && tok_bos(sm->vocab) >= 0 ? tok_token_text(sm->vocab, tok_bos(sm->vocab)) : NULL,
            .eos_token = sm->vocab && tok_eos(sm->vocab) >= 0 ? tok_token_text(sm->vocab, tok_eos(sm->vocab)) : NULL,
            .n_ctx = sm->eng->info.n_ctx,
            .n_embd = sm->eng->info.n_embd,
        };
    }
    struct api_config acfg = {
        .models = am,
        .n_models = s->n_models,
        .max_body = (size_t)c->max_body,
        .qos = s->qos,
        .debug_endpoints = c->debug,
        .prefix_cache_shared = c->prefix_cache_shared,
        .prep_threads = c->prep_threads,
    };
    acfg.priority_map = s->priority_map;
    if ((rc = api_init(&s->api, &acfg, err)) != 0)
        goto fail;
    const char *cors[SERVE_MAX_CORS];
    for (int i = 0; i < c->n_cors_origins; i++)
        cors[i] = c->cors_origins[i];
    struct http_config hcfg = {
        .host = c->host,
        .port = c->port,
        .io_threads = c->io_threads,
        .max_body = (size_t)c->max_body,
        .tls_cert = c->tls_cert[0] ? c->tls_cert : NULL,
        .tls_key = c->tls_key[0] ? c->tls_key : NULL,
        .stall_timeout_ms = (int)(c->stall_s * 1000),
        .cors_origins = cors,
        .n_cors_origins = c->n_cors_origins,
        .handler = api_handle,
        .ud = s->api,
    };
    /* Discovery resolves its names once now: the pools start with their
     * upstreams, then follow the names on the discovery thread. */
    struct dns_watch watches[DISCOVERY_MAX_WATCHES];
    int n_watches = 0;
    for (int i = 0; i < s->n_models; i++) {
        if (!s->models[i].dns)
            continue;
        if (discovery_is_etcd(s->models[i].cfg.upstreams[0])) {
            struct dns_watch w = {.eng = s->models[i].eng, .max_inflight = s->models[i].cfg.upstream_inflight[0]};
            snprintf(w.url, sizeof w.url, "%s", s->models[i].cfg.upstreams[0]);
            if ((rc = discovery_etcd_start(&s->etcd[s->n_etcd], &w, err)) != 0)
                goto fail;
            s->n_etcd++;
            continue;
        }
        if (n_watches == DISCOVERY_MAX_WATCHES) {
            rc = lmd_err_set(err, LMD_ERANGE, "more than %d dns:// upstreams", DISCOVERY_MAX_WATCHES);
            goto fail;
        }
        watches[n_watches] =
            (struct dns_watch){.eng = s->models[i].eng, .max_inflight = s->models[i].cfg.upstream_inflight[0]};
        snprintf(watches[n_watches].url, sizeof watches[n_watches].url, "%s", s->models[i].cfg.upstreams[0]);
        n_watches++;
    }
    if (n_watches && (rc = discovery_start(&s->disc, watches, n_watches, c->dns_interval_ms,
                                           c->dns_servers[0] ? c->dns_servers : NULL, err)) != 0)
        goto fail;
    if (c->metrics_compat == SERVE_COMPAT_VLLM && s->obs_on && (rc = obs_collector_add(vllm_collect, s)) != 0) {
        lmd_err_set(err, rc, "too many metric collectors");
        goto fail;
    }
    s->compat_on = c->metrics_compat == SERVE_COMPAT_VLLM && s->obs_on;
    if ((rc = http_server_start(&s->http, &hcfg, err)) != 0)
        goto fail;

    for (int i = 0; i < s->n_models; i++) {
        struct serve__model *sm = &s->models[i];
        char aliases[256];
        size_t o = 0;
        aliases[0] = 0;
        for (int k = 0; k < sm->n_names && o < sizeof aliases; k++)
            o += (size_t)snprintf(aliases + o, sizeof aliases - o, "%s'%s'", k ? ", " : "", sm->names[k]);
        if (sm->eng->info.takes_api) {
            LMD_INFO("lmd serve: model '%s' (remote: %d upstreams, %d requests at once, route %s, token budget %d per "
                     "request); also answers to %s",
                     sm->id, sm->cfg.n_upstreams, atomic_load(&sm->eng->seats),
                     sm->cfg.route == 1   ? "least"
                     : sm->cfg.route == 2 ? "rr"
                                          : "ttft",
                     sm->eng->info.n_ctx, sm->n_names ? aliases : "no other name");
            continue;
        }
        char tmpl[SERVE_PATH_MAX + 16];
        snprintf(tmpl, sizeof tmpl, "%s%s", sm->tmpl ? "jinja from " : "",
                 sm->tmpl ? sm->tmpl_from : chat_family_name(sm->fam));
        LMD_INFO("lmd serve: model '%s' (%s, %s engine, ctx %d, chat template %s, %d threads, kv %d blocks, "
                 "up to %d running); also answers to %s",
                 sm->id, sm->eng->info.arch, sm->eng->info.kind, sm->eng->info.n_ctx, tmpl, sm->eng->info.n_threads,
                 sm->eng->info.kv_blocks, sm->cfg.max_running, sm->n_names ? aliases : "no other name");
    }
    LMD_INFO("lmd serve: %d model%s loaded in %.0f ms, isa %s; scheduler %s, %d service classes, %s%s", s->n_models,
             s->n_models == 1 ? "" : "s", (double)(lmd_time_mono_ns() - t0) / 1e6, kern_isa(),
             c->policy == SCHED_POLICY_SLA ? "sla" : "fcfs", n_classes,
             qos_has_file(s->qos) ? "tenants from " : "open (no tenants file)", qos_has_file(s->qos) ? c->tenants : "");
    if (c->register_url[0]) {
        char self[300];
        if (c->advertise[0])
            snprintf(self, sizeof self, "%s", c->advertise);
        else
            snprintf(self, sizeof self, "%s://%s:%d", c->tls_cert[0] ? "https" : "http", c->host,
                     http_server_port(s->http));
        if ((rc = discovery_register(&s->reg, c->register_url, self, 10, err)) != 0)
            goto fail;
    }
    LMD_INFO("lmd serve: listening on %s://%s:%d (%s), %d I/O threads", c->tls_cert[0] ? "https" : "http", c->host,
             http_server_port(s->http), c->tls_cert[0] ? "TLS, ALPN h2 and http/1.1" : "HTTP/1.1 and h2c",
             c->io_threads);
    *out = s;
    return 0;
fail:
    serve_close(s);
    return rc;
}

int serve_port(const struct serve *s) { return http_server_port(s->http); }

/* The tenants file again (qos_reload says what may change). */
static void tenants_reload(struct serve *s)
{
    struct qos_reload_report r;
    struct lmd_err err = {0};
    if (qos_reload(s->qos, s->cfg.tenants, &r, &err) != 0) {
        LMD_ERROR("lmd serve: reload: %s; the tenants stay as they were", err.msg);
        return;
    }
    LMD_INFO("lmd serve: %s reloaded: %d tenants, %d keys in force%s%s", s->cfg.tenants, r.n_tenants - 1, r.n_keys,
             r.n_disabled ? "; tenants gone from the file take no new requests" : "",
             r.weights_pending ? "; changed weights apply at the next start" : "");
    if (r.n_disabled || r.weights_pending)
        LMD_WARN("lmd serve: tenants reload: %d tenant%s disabled, %d weight change%s waiting for a restart",
                 r.n_disabled, r.n_disabled == 1 ? "" : "s", r.weights_pending, r.weights_pending == 1 ? "" : "s");
}

/* SIGHUP: the tenants file and the config file again, for what can change
 * without a restart: tenants' keys, limits and permissions (qos_reload),
 * the upstream lists of remote models (requests in flight carry on). */
static void serve_reload(struct serve *s)
{
    if (s->cfg.tenants[0])
        tenants_reload(s);
    if (!s->cfg.file[0]) {
        if (!s->cfg.tenants[0])
            LMD_WARN("lmd serve: reload: no --config or --tenants file to read again; nothing changes");
        return;
    }
    struct serve_config *nc = malloc(sizeof *nc);
    struct lmd_err err = {0};
    if (!nc) {
        LMD_ERROR("lmd serve: reload: out of memory; nothing changes");
        return;
    }
    serve_config_init(nc);
    if (serve_config_load(nc, s->cfg.file, &err) != 0) {
        LMD_ERROR("lmd serve: reload: %s; nothing changes", err.msg);
        free(nc);
        return;
    }
    int changed = 0;
    for (int k = 0; k < nc->n_models; k++) {
        const struct serve_model *m = &nc->models[k];
        if (m->engine != SERVE_ENGINE_REMOTE)
            continue;
        struct serve__model *sm = NULL;
        for (int i = 0; i < s->n_models; i++)
            if (strcmp(s->models[i].id, m->name) == 0)
                sm = &s->models[i];
        if (sm && sm->dns) {
            LMD_WARN("lmd serve: reload: model '%s' follows a DNS name; its upstreams change with it, not here",
                     m->name);
            continue;
        }
        if (!sm || !sm->eng->info.takes_api) {
            LMD_WARN("lmd serve: reload: remote model '%s' is not served as one; a new model needs a restart", m->name);
            continue;
        }
        struct remote_backend_config list[SERVE_MAX_UPSTREAMS];
        for (int i = 0; i < m->n_upstreams; i++) {
            snprintf(list[i].url, sizeof list[i].url, "%s", m->upstreams[i]);
            list[i].max_inflight = m->upstream_inflight[i] > 0  ? m->upstream_inflight[i]
                                   : m->inflight != SERVE_UNSET ? m->inflight
                                                                : nc->defaults.inflight;
        }
        if (engine_remote_set_upstreams(sm->eng, list, m->n_upstreams, &err) != 0) {
            LMD_ERROR("lmd serve: reload: model '%s': %s; its upstreams stay as they were", m->name, err.msg);
            continue;
        }
        changed++;
    }
    LMD_INFO("lmd serve: %s reloaded: upstreams of %d remote model%s replaced (other settings need a restart)",
             s->cfg.file, changed, changed == 1 ? "" : "s");
    free(nc);
}

void serve_run(struct serve *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    int sig = 0;
    /* --watch-config: the config and tenants files are looked at every
     * 2 s, and read again when one changed (a Kubernetes ConfigMap or
     * Secret update swaps the mounted file). */
    const char *files[2] = {s->cfg.file, s->cfg.tenants};
    struct stat st0[2] = {{0}, {0}};
    bool watch = false;
    for (int i = 0; i < 2; i++)
        if (s->cfg.watch_config && files[i][0] && stat(files[i], &st0[i]) == 0)
            watch = true;
    for (;;) {
        struct timespec poll_every = {2, 0};
        sig = watch ? sigtimedwait(&set, NULL, &poll_every) : (sigwait(&set, &sig) == 0 ? sig : -1);
        if (sig < 0) {
            bool changed = false;
            for (int i = 0; i < 2; i++) {
                struct stat st;
                if (files[i][0] && stat(files[i], &st) == 0 &&
                    (st.st_ino != st0[i].st_ino || st.st_size != st0[i].st_size ||
                     st.st_mtim.tv_sec != st0[i].st_mtim.tv_sec || st.st_mtim.tv_nsec != st0[i].st_mtim.tv_nsec)) {
                    st0[i] = st;
                    LMD_INFO("lmd serve: %s changed", files[i]);
                    changed = true;
                }
            }
            if (changed)
                serve_reload(s);
            continue;
        }
        if (sig != SIGHUP)
            break;
        LMD_INFO("lmd serve: SIGHUP: reading %s again", s->cfg.file[0] ? s->cfg.file : "the config (none given)");
        serve_reload(s);
    }
    sigdelset(&set, SIGHUP);
    LMD_INFO("lmd serve: %s: draining (%d requests in flight, up to %ld s)", strsignal(sig), api_active(s->api),
             s->cfg.drain_s);
    /* Out of the routers' lists first, so that no new request comes. */
    discovery_deregister(s->reg);
    s->reg = NULL;
    api_set_draining(s->api);
    http_server_stop_accepting(s->http);
    uint64_t deadline = lmd_time_mono_ns() + (uint64_t)s->cfg.drain_s * 1000000000ull;
    struct timespec tick = {0, 20 * 1000 * 1000};
    while (api_active(s->api) > 0 && lmd_time_mono_ns() < deadline) {
        if (sigtimedwait(&set, NULL, &tick) > 0) {
            LMD_WARN("lmd serve: second signal: stopping now");
            break;
        }
    }
    if (api_active(s->api) > 0)
        LMD_WARN("lmd serve: %d requests still open at the end of the drain; cancelling them", api_active(s->api));
}

void serve_close(struct serve *s)
{
    if (!s)
        return;
    /* Discovery first: it hands lists to the engines closed below. */
    discovery_deregister(s->reg);
    discovery_stop(s->disc);
    for (int i = 0; i < s->n_etcd; i++)
        discovery_etcd_stop(s->etcd[i]);
    /* The schedulers first: they finish what is left as cancelled, and the
     * I/O loops must still be running to receive those last wakeups. */
    for (int i = 0; i < s->n_models; i++)
        sched_stop(s->models[i].sched);
    /* Requests they cancelled still get their last chunk written by their
     * I/O thread; give that a moment, bounded. */
    for (int i = 0; s->http && s->api && api_active(s->api) > 0 && i < 50; i++) {
        struct timespec tick = {0, 10 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
    if (s->compat_on)
        obs_collector_remove(vllm_collect, s);
    http_server_free(s->http);
    api_free(s->api);
    for (int i = 0; i < s->n_models; i++) {
        tok_free(s->models[i].vocab);
        jinja_free(s->models[i].tmpl);
        engine_close(s->models[i].eng);
    }
    if (s->obs_on)
        obs_shutdown();
    qos_close(s->qos);
    free(s);
}
