/*
 * Chat template rendering (see chat_template.h).
 */
#include "api/chat_template.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const char *names[] = {"generic", "gemma", "llama3", "chatml", "mistral"};

const char *chat_family_name(enum chat_family f) { return (unsigned)f < 5 ? names[f] : "generic"; }

int chat_family_parse(const char *name, enum chat_family *out)
{
    for (int i = 0; i < 5; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum chat_family)i;
            return 0;
        }
    }
    if (strcmp(name, "qwen") == 0) {
        *out = CHAT_CHATML;
        return 0;
    }
    return LMD_EINVAL;
}

static bool contains(const char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (!s || m > n)
        return false;
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, needle, m) == 0)
            return true;
    return false;
}

enum chat_family chat_detect(const char *t, size_t n, const char *arch)
{
    if (t && n) {
        if (contains(t, n, "<start_of_turn>"))
            return CHAT_GEMMA;
        if (contains(t, n, "<|start_header_id|>"))
            return CHAT_LLAMA3;
        if (contains(t, n, "<|im_start|>"))
            return CHAT_CHATML;
        if (contains(t, n, "[INST]"))
            return CHAT_MISTRAL;
        return CHAT_GENERIC;
    }
    if (arch) {
        if (strncmp(arch, "gemma", 5) == 0)
            return CHAT_GEMMA;
        if (strncmp(arch, "qwen", 4) == 0)
            return CHAT_CHATML;
    }
    return CHAT_GENERIC;
}

struct out {
    char *buf;
    size_t cap, len;
};

static void emit(struct out *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void emits(struct out *o, const char *s) { emit(o, s, strlen(s)); }

static void emit_content(struct out *o, const struct chat_msg *m) { emit(o, m->content, m->content_len); }

static bool is_role(const struct chat_msg *m, const char *r) { return strcmp(m->role, r) == 0; }

static bool is_system(const struct chat_msg *m) { return is_role(m, "system") || is_role(m, "developer"); }

long chat_render(enum chat_family f, const struct chat_msg *msgs, int n, char *buf, size_t cap, struct lmd_err *err)
{
    struct out o = {.buf = buf, .cap = cap};
    for (int i = 0; i < n; i++) {
        const struct chat_msg *m = &msgs[i];
        if (!is_system(m) && !is_role(m, "user") && !is_role(m, "assistant") && !is_role(m, "tool"))
            return lmd_err_set(err, LMD_EINVAL, "messages[%d].role: unknown role '%s'", i, m->role);
    }
    switch (f) {
    case CHAT_GEMMA: {
        /* Gemma has no system role: the system text opens the first user turn. */
        const struct chat_msg *sys = NULL;
        for (int i = 0; i < n; i++) {
            const struct chat_msg *m = &msgs[i];
            if (is_system(m) && i == 0) {
                sys = m;
                continue;
            }
            emits(&o, "<start_of_turn>");
            emits(&o, is_role(m, "assistant") ? "model" : "user");
            emits(&o, "\n");
            if (sys) {
                emit_content(&o, sys);
                emits(&o, "\n\n");
                sys = NULL;
            }
            emit_content(&o, m);
            emits(&o, "<end_of_turn>\n");
        }
        emits(&o, "<start_of_turn>model\n");
        break;
    }
    case CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            emits(&o, "<|start_header_id|>");
            emits(&o, is_role(&msgs[i], "developer") ? "system" : msgs[i].role);
            emits(&o, "<|end_header_id|>\n\n");
            emit_content(&o, &msgs[i]);
            emits(&o, "<|eot_id|>");
        }
        emits(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            emits(&o, "<|im_start|>");
            emits(&o, is_role(&msgs[i], "developer") ? "system" : msgs[i].role);
            emits(&o, "\n");
            emit_content(&o, &msgs[i]);
            emits(&o, "<|im_end|>\n");
        }
        emits(&o, "<|im_start|>assistant\n");
        break;
    case CHAT_MISTRAL: {
        const struct chat_msg *sys = NULL;
        for (int i = 0; i < n; i++) {
            const struct chat_msg *m = &msgs[i];
            if (is_system(m)) {
                sys = m;
                continue;
            }
            if (is_role(m, "assistant")) {
                emit_content(&o, m);
                emits(&o, "</s>");
                continue;
            }
            emits(&o, "[INST] ");
            if (sys) {
                emit_content(&o, sys);
                emits(&o, "\n\n");
                sys = NULL;
            }
            emit_content(&o, m);
            emits(&o, " [/INST]");
        }
        break;
    }
    case CHAT_GENERIC:
    default:
        for (int i = 0; i < n; i++) {
            emits(&o, msgs[i].role);
            emits(&o, ": ");
            emit_content(&o, &msgs[i]);
            emits(&o, "\n");
        }
        emits(&o, "assistant:");
        break;
    }
    if (o.cap > 0)
        o.buf[o.len < o.cap ? o.len : o.cap - 1] = 0;
    return (long)o.len;
}
