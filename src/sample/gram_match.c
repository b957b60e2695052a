/*
 * The grammar matcher and the per-step mask over the vocabulary (see
 * grammar.h; the trie it walks is built in gram_vocab.c).
 *
 * A matcher state is the set of stacks the grammar could be in after the
 * output so far (a pushdown automaton run on every path at once), plus the
 * start of a UTF-8 character still being fed. Each stack's top is a
 * character element — expansion replaces a rule reference on top by each
 * of its alternatives until a character is on top — or the stack is empty,
 * which means the output is a complete sentence.
 *
 * A state lives in a run of uint32 words:
 *   [0] words in the state, header included
 *   [1] the code point bits fed so far of a partial character
 *   [2] continuation bytes that character still needs (0 = none)
 *   then stacks, each [n][pos 0 .. pos n-1] with the top last.
 *
 * The mask walks the vocabulary's prefix trie depth first, advancing the
 * state one byte per trie edge; a byte that kills every stack prunes the
 * whole subtree, so in a narrow spot of the grammar (a literal key, a
 * digit) the walk touches a few hundred nodes of the 262k-token vocabulary.
 * The states along the current trie path sit back to back in one buffer
 * (a state per depth), so the walk allocates nothing.
 *
 * Limits: a stack deeper than GRAM_MAX_DEPTH, a state larger than its
 * buffer or an expansion nested deeper than GRAM_MAX_DEPTH counts as a
 * dead end for that byte — the matcher may refuse output a huge grammar
 * would allow, never allow output it refuses.
 */
#include "sample/gram_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GRAM_MAX_DEPTH 256     /* positions on one stack; nesting of one expansion */
#define GRAM_STATE_WORDS 4096  /* one state (the current one, and the scratch for one token) */
#define GRAM_WALK_WORDS 131072 /* the states along one trie path */
#define GRAM_XS_WORDS 65536    /* expansion scratch */
#define GRAM_MEMO_STATES 512   /* distinct states the transition memo holds */
#define GRAM_MEMO_WORDS 131072 /* their words */
#define GRAM_MASK_CACHE 8      /* masks kept by state */
#define GRAM_EXPAND_BUDGET                                                                                             \
    20000 /* expansion steps for one byte: an ambiguous grammar can ask for exponentially                              \
             many, and the engine thread must not stall on it */

/* States seen by the mask walks, interned (content-addressed) with their
 * transitions by byte. Inside a JSON string the walk meets the same few
 * states at hundreds of thousands of trie nodes; after the first visit
 * each is a table lookup. Cleared when full, between walks. */
struct gram_memo {
    uint32_t *pool; /* [GRAM_MEMO_WORDS] the states' words back to back */
    uint32_t used;  /* words of pool in use */
    uint32_t *off;  /* [GRAM_MEMO_STATES] each state's offset in pool */
    int32_t *slot;  /* [2 * GRAM_MEMO_STATES] open-addressing table: state id or -1 */
    int32_t *trans; /* [GRAM_MEMO_STATES][256] the state after a byte: id, -1 dead, -2 not yet known */
    int32_t *pnext; /* [GRAM_MEMO_STATES] the state after any one plain character: id, -1 dead, -2 not yet
                       known, -3 not the same for all plain characters */
    int n;          /* states interned */
    /* The masks of recent states: bits and the state id they belong to. */
    uint8_t *mask_bits; /* [GRAM_MASK_CACHE][(n_vocab + 7) / 8] */
    int32_t mask_id[GRAM_MASK_CACHE];
    int32_t mask_n[GRAM_MASK_CACHE];    /* allowed tokens in it */
    uint64_t mask_use[GRAM_MASK_CACHE]; /* last use, for eviction */
    uint64_t clock;
};

struct gram_match {
    const struct gram *g;
    const struct gram_vocab *gv;
    struct gram_memo memo;
    uint64_t masks_cached; /* masks served from the cache, for stats */
    uint32_t *cur;         /* [GRAM_STATE_WORDS] the state after the output so far */
    uint32_t *tmp;         /* [2][GRAM_STATE_WORDS] for checking one token */
    uint32_t *walk;        /* [GRAM_WALK_WORDS] the mask walk's states, one per trie depth */
    uint32_t *xs;          /* [GRAM_XS_WORDS] expansion scratch, used as a stack */
    uint32_t xs_top;
    int budget;          /* expansion steps left for the byte being fed */
    uint8_t *bits;       /* [(n_vocab + 7) / 8] tokens allowed at this step */
    uint64_t nodes;      /* trie nodes visited, for stats */
    const uint8_t *last; /* the bits of the last gram_match_fill (a cache slot or bits) */
};

/* ---- states -------------------------------------------------------------- */

struct sbuild {
    uint32_t *w; /* the state being written */
    uint32_t cap;
    bool overflow;
};

static void sb_start(struct sbuild *b, uint32_t *w, uint32_t cap, uint32_t cp, uint32_t need)
{
    b->w = w;
    b->cap = cap;
    b->overflow = cap < 3;
    if (!b->overflow) {
        w[0] = 3;
        w[1] = cp;
        w[2] = need;
    }
}

static void sb_add(struct sbuild *b, const uint32_t *stk, uint32_t n)
{
    if (b->overflow)
        return;
    uint32_t *w = b->w;
    for (uint32_t q = 3; q < w[0]; q += 1 + w[q])
        if (w[q] == n && (n == 0 || memcmp(w + q + 1, stk, n * sizeof *stk) == 0))
            return;
    if (w[0] + 1 + n > b->cap) {
        b->overflow = true;
        return;
    }
    w[w[0]] = n;
    if (n > 0)
        memcpy(w + w[0] + 1, stk, n * sizeof *stk);
    w[0] += 1 + n;
}

/* Push stk (top last) into b, expanding rule references on top until a
 * character is on top, on every alternative. */
static void expand(struct gram_match *m, struct sbuild *b, const uint32_t *stk, uint32_t n, int nest)
{
    const struct gram *g = m->g;
    if (--m->budget < 0) {
        b->overflow = true;
        return;
    }
    if (n == 0) {
        sb_add(b, stk, 0);
        return;
    }
    uint32_t p = stk[n - 1];
    const struct gram_el *e = &g->el[p];
    if (e->op != GRAM_REF) {
        sb_add(b, stk, n);
        return;
    }
    if (nest > GRAM_MAX_DEPTH || n + 1 > GRAM_MAX_DEPTH || m->xs_top + n + 1 > GRAM_XS_WORDS) {
        b->overflow = true;
        return;
    }
    /* The caller's stack stays untouched: the alternatives are pushed onto
     * a copy, with the reference replaced by what follows it. */
    uint32_t *tmp = m->xs + m->xs_top;
    m->xs_top += n + 1;
    memcpy(tmp, stk, (n - 1) * sizeof *stk);
    uint32_t k = n - 1;
    if (!gram__is_end(g, p + 1))
        tmp[k++] = p + 1;
    for (uint32_t a = g->rule[e->v];; a++) {
        if (gram__is_end(g, a)) {
            expand(m, b, tmp, k, nest + 1);
        } else {
            tmp[k] = a;
            expand(m, b, tmp, k + 1, nest + 1);
            while (!gram__is_end(g, a))
                a++;
        }
        if (g->el[a].op == GRAM_END)
            break;
    }
    m->xs_top -= n + 1;
}

/* Advance every stack of `in` whose top matches cp into b. */
static void advance_cp(struct gram_match *m, const uint32_t *in, uint32_t cp, struct sbuild *b)
{
    const struct gram *g = m->g;
    for (uint32_t q = 3; q < in[0]; q += 1 + in[q]) {
        uint32_t n = in[q];
        if (n == 0)
            continue;
        const uint32_t *stk = in + q + 1;
        uint32_t p = stk[n - 1];
        if (!gram__match_cp(g, p, cp))
            continue;
        if (m->xs_top + n > GRAM_XS_WORDS) {
            b->overflow = true;
            return;
        }
        uint32_t *tmp = m->xs + m->xs_top;
        m->xs_top += n;
        memcpy(tmp, stk, (n - 1) * sizeof *stk);
        uint32_t k = n - 1;
        if (!gram__is_end(g, p + 1))
            tmp[k++] = p + 1;
        expand(m, b, tmp, k, 0);
        m->xs_top -= n;
    }
}

/* The state after `in` and one more byte, written at out (cap words).
 * Returns false when no stack survives (or a limit was hit). A partial
 * character's word [2] holds the continuation bytes still needed and, from
 * bit 8, the sequence's length, whose smallest code point rules out
 * overlong encodings (0xC1 0xBB is not '{'). */
static bool advance_byte(struct gram_match *m, const uint32_t *in, uint8_t byte, uint32_t *out, uint32_t cap)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    struct sbuild b;
    m->budget = GRAM_EXPAND_BUDGET;
    uint32_t need = in[2] & 0xff, len = in[2] >> 8, cp;
    if (need > 0) {
        if ((byte & 0xC0) != 0x80)
            return false;
        cp = (in[1] << 6) | (byte & 0x3Fu);
        need--;
    } else if (byte < 0x80) {
        cp = byte;
        len = 1;
    } else if (byte >= 0xC2 && byte <= 0xDF) {
        cp = byte & 0x1Fu;
        need = 1;
        len = 2;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
        cp = byte & 0x0Fu;
        need = 2;
        len = 3;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
        cp = byte & 0x07u;
        need = 3;
        len = 4;
    } else {
        return false; /* never valid in UTF-8 */
    }
    if (need == 0) {
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        sb_start(&b, out, cap, 0, 0);
        advance_cp(m, in, cp, &b);
    } else {
        /* Part of a character: keep the stacks that some completion of it
         * could still match. */
        uint32_t lo = cp << (6 * need), hi = lo | ((1u << (6 * need)) - 1);
        if (lo < min_cp[len])
            lo = min_cp[len];
        if (hi > 0x10FFFF)
            hi = 0x10FFFF;
        if (lo > hi)
            return false;
        sb_start(&b, out, cap, cp, need | (len << 8));
        for (uint32_t q = 3; q < in[0]; q += 1 + in[q])
            if (in[q] > 0 && gram__match_range(m->g, in[q + in[q]], lo, hi))
                sb_add(&b, in + q + 1, in[q]);
    }
    return !b.overflow && out[0] > 3;
}

static bool state_accepting(const uint32_t *st)
{
    if (st[2] != 0)
        return false;
    for (uint32_t q = 3; q < st[0]; q += 1 + st[q])
        if (st[q] == 0)
            return true;
    return false;
}

static bool state_can_continue(const uint32_t *st)
{
    for (uint32_t q = 3; q < st[0]; q += 1 + st[q])
        if (st[q] > 0)
            return true;
    return false;
}

/* ---- the transition memo ------------------------------------------------- */

static uint64_t state_hash(const uint32_t *st)
{
    uint64_t h = 0x9E3779B97F4A7C15u;
    for (uint32_t i = 0; i < st[0]; i++)
        h = (h ^ st[i]) * 0x100000001B3u;
    return h;
}

static void memo_clear(struct gram_memo *mo)
{
    mo->n = 0;
    mo->used = 0;
    memset(mo->slot, 0xff, 2 * GRAM_MEMO_STATES * sizeof *mo->slot);
    for (int i = 0; i < GRAM_MASK_CACHE; i++)
        mo->mask_id[i] = -1;
}

/* The id of state st, interning it if there is room; -1 when full. */
static int32_t memo_intern(struct gram_memo *mo, const uint32_t *st)
{
    uint32_t mask = 2 * GRAM_MEMO_STATES - 1, h = (uint32_t)state_hash(st) & mask;
    for (;; h = (h + 1) & mask) {
        int32_t id = mo->slot[h];
        if (id < 0)
            break;
        const uint32_t *o = mo->pool + mo->off[id];
        if (o[0] == st[0] && memcmp(o, st, st[0] * sizeof *st) == 0)
            return id;
    }
    if (mo->n == GRAM_MEMO_STATES || mo->used + st[0] > GRAM_MEMO_WORDS)
        return -1;
    int32_t id = mo->n++;
    mo->off[id] = mo->used;
    memcpy(mo->pool + mo->used, st, st[0] * sizeof *st);
    mo->used += st[0];
    for (int b = 0; b < 256; b++)
        mo->trans[(size_t)id * 256 + (size_t)b] = -2;
    mo->pnext[id] = -2;
    mo->slot[h] = id;
    return id;
}

/* ---- the matcher ---------------------------------------------------------- */

int gram_match_init(struct gram_match **out, const struct gram *g, const struct gram_vocab *gv, struct lmd_err *err)
{
    *out = NULL;
    struct gram_match *m = calloc(1, sizeof *m);
    if (!m)
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the grammar matcher");
    m->g = g;
    m->gv = gv;
    m->cur = malloc(GRAM_STATE_WORDS * sizeof *m->cur);
    m->tmp = malloc(2 * GRAM_STATE_WORDS * sizeof *m->tmp);
    m->xs = malloc(GRAM_XS_WORDS * sizeof *m->xs);
    struct gram_memo *mo = &m->memo;
    if (gv) {
        m->walk = malloc(GRAM_WALK_WORDS * sizeof *m->walk);
        m->bits = malloc(((size_t)gv->n_vocab + 7) / 8);
        mo->pool = malloc(GRAM_MEMO_WORDS * sizeof *mo->pool);
        mo->off = malloc(GRAM_MEMO_STATES * sizeof *mo->off);
        mo->slot = malloc(2 * GRAM_MEMO_STATES * sizeof *mo->slot);
        mo->trans = malloc((size_t)GRAM_MEMO_STATES * 256 * sizeof *mo->trans);
        mo->pnext = malloc(GRAM_MEMO_STATES * sizeof *mo->pnext);
        mo->mask_bits = malloc((size_t)GRAM_MASK_CACHE * (((size_t)gv->n_vocab + 7) / 8));
    }
    if (!m->cur || !m->tmp || !m->xs ||
        (gv &&
         (!m->walk || !m->bits || !mo->pool || !mo->off || !mo->slot || !mo->trans || !mo->pnext || !mo->mask_bits))) {
        gram_match_free(m);
        return lmd_err_set(err, LMD_ENOMEM, "out of memory for the grammar matcher");
    }
    if (gv)
        memo_clear(mo);
    m->budget = GRAM_EXPAND_BUDGET;
    struct sbuild b;
    sb_start(&b, m->cur, GRAM_STATE_WORDS, 0, 0);
    for (uint32_t a = g->rule[g->root];; a++) {
        if (gram__is_end(g, a)) {
            sb_add(&b, NULL, 0);
        } else {
            expand(m, &b, &a, 1, 0);
            while (!gram__is_end(g, a))
                a++;
        }
        if (g->el[a].op == GRAM_END)
            break;
    }
    if (b.overflow) {
        gram_match_free(m);
        return lmd_err_set(err, LMD_ERANGE, "grammar: the start of the grammar expands past the matcher's limits");
    }
    *out = m;
    return 0;
}

void gram_match_free(struct gram_match *m)
{
    if (!m)
        return;
    free(m->cur);
    free(m->tmp);
    free(m->walk);
    free(m->xs);
    free(m->bits);
    free(m->memo.pool);
    free(m->memo.off);
    free(m->memo.slot);
    free(m->memo.trans);
    free(m->memo.pnext);
    free(m->memo.mask_bits);
    free(m);
}

bool gram_match_accepting(const struct gram_match *m) { return state_accepting(m->cur); }
bool gram_match_can_continue(const struct gram_match *m) { return state_can_continue(m->cur); }
uint64_t gram_match_nodes_visited(const struct gram_match *m) { return m->nodes; }

/* The state after cur and bytes, in one of the two tmp buffers; NULL when
 * the bytes leave the grammar. */
static const uint32_t *run_bytes(struct gram_match *m, const uint8_t *bytes, size_t n)
{
    const uint32_t *st = m->cur;
    for (size_t i = 0; i < n; i++) {
        uint32_t *o = m->tmp + (i & 1) * GRAM_STATE_WORDS;
        if (!advance_byte(m, st, bytes[i], o, GRAM_STATE_WORDS))
            return NULL;
        st = o;
    }
    return st;
}

bool gram_match_feed(struct gram_match *m, const char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!advance_byte(m, m->cur, (uint8_t)bytes[i], m->tmp, GRAM_STATE_WORDS))
            return false;
        memcpy(m->cur, m->tmp, m->tmp[0] * sizeof *m->tmp);
    }
    return true;
}

bool gram_match_allows(struct gram_match *m, int32_t id)
{
    const struct gram_vocab *gv = m->gv;
    if (!gv || id < 0 || id >= gv->n_vocab)
        return false;
    if (gv->is_eog[id])
        return state_accepting(m->cur);
    uint32_t a = gv->off[id], z = gv->off[id + 1];
    if (a == z)
        return false;
    return run_bytes(m, gv->bytes + a, z - a) != NULL;
}

bool gram_match_accept(struct gram_match *m, int32_t id)
{
    const struct gram_vocab *gv = m->gv;
    if (!gv || id < 0 || id >= gv->n_vocab)
        return false;
    if (gv->is_eog[id])
        return state_accepting(m->cur);
    uint32_t a = gv->off[id], z = gv->off[id + 1];
    if (a == z)
        return false;
    const uint32_t *st = run_bytes(m, gv->bytes + a, z - a);
    if (!st)
        return false;
    memcpy(m->cur, st, st[0] * sizeof *st);
    return true;
}

/*
 * Plain runs. Most of a 262k vocabulary is plain text: printable ASCII
 * other than '"' and '\\', and whole non-ASCII characters. Where every
 * stack top of a state treats all plain characters alike (all match, or
 * none does: inside a JSON string, for one), one plain character leads to
 * the same next state whichever it is, so a trie subtree whose tokens are
 * plain from its first byte on, at most k characters long, is allowed
 * whole when k plain steps from the state stay alive — without visiting
 * its nodes.
 */
static const uint32_t plain_rng[4][2] = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x7E}, {0x80, 0x10FFFF}};

/* Whether element pos matches all (1), none (0) or part (-1) of [lo, hi]. */
static int cover(const struct gram *g, uint32_t pos, uint32_t lo, uint32_t hi)
{
    const struct gram_el *e = &g->el[pos];
    if (e->op == GRAM_CHAR)
        return e->v < lo || e->v > hi ? 0 : lo == hi ? 1 : -1;
    const struct gram_class *c = &g->cls[e->v];
    if (!gram__match_range(g, pos, lo, hi))
        return 0;
    /* Some of it matches; all of it when the ranges cover [lo, hi] (or,
     * negated, when none of them touches it). */
    bool all;
    if (c->neg) {
        all = true;
        for (uint32_t i = 0; i < c->n && all; i++)
            all = g->rng[c->first + i][0] > hi || g->rng[c->first + i][1] < lo;
    } else {
        uint32_t at = lo;
        for (bool moved = true; moved && at <= hi;) {
            moved = false;
            for (uint32_t i = 0; i < c->n; i++)
                if (g->rng[c->first + i][0] <= at && g->rng[c->first + i][1] >= at) {
                    at = g->rng[c->first + i][1] + 1;
                    moved = true;
                    if (at == 0)
                        break; /* wrapped: covers to the top */
                }
        }
        all = at > hi || at == 0;
    }
    return all ? 1 : -1;
}

static bool plain_uniform(const struct gram *g, const uint32_t *st)
{
    if (st[2] != 0)
        return false;
    for (uint32_t q = 3; q < st[0]; q += 1 + st[q]) {
        if (st[q] == 0)
            continue;
        uint32_t top = st[q + st[q]];
        int first = cover(g, top, plain_rng[0][0], plain_rng[0][1]);
        if (first < 0)
            return false;
        for (int r = 1; r < 4; r++)
            if (cover(g, top, plain_rng[r][0], plain_rng[r][1]) != first)
                return false;
    }
    return true;
}

/* The state after one plain character from state id (see pnext). */
static int32_t plain_step(struct gram_match *m, int32_t id)
{
    struct gram_memo *mo = &m->memo;
    int32_t nx = mo->pnext[id];
    if (nx != -2)
        return nx;
    const uint32_t *st = mo->pool + mo->off[id];
    if (!plain_uniform(m->g, st)) {
        nx = -3;
    } else if (!advance_byte(m, st, 'a', m->tmp, GRAM_STATE_WORDS)) {
        nx = -1;
    } else if ((nx = memo_intern(mo, m->tmp)) < 0) {
        return -3; /* the memo is full: not recorded */
    }
    mo->pnext[id] = nx;
    return nx;
}

/* Compute the allowed-token bits of the current state into bits; returns
 * how many. */
static int mask_walk(struct gram_match *m, uint8_t *bits)
{
    const struct gram_vocab *gv = m->gv;
    struct gram_memo *mo = &m->memo;
    memset(bits, 0, ((size_t)gv->n_vocab + 7) / 8);
    int n_allowed = 0;
    if (state_accepting(m->cur))
        for (int i = 0; i < gv->n_eog; i++) {
            bits[gv->eog[i] >> 3] |= (uint8_t)(1u << (gv->eog[i] & 7));
            n_allowed++;
        }
    if (!state_can_continue(m->cur))
        return n_allowed;
    /* st[d] is the state after the first d bytes of the current path and
     * id[d] its memo id (-1 when it is not interned: then it sits in walk,
     * ending at end[d]). */
    const uint32_t *st[GRAM_MAX_PIECE + 1];
    int32_t id[GRAM_MAX_PIECE + 1];
    uint32_t end[GRAM_MAX_PIECE + 1];
    st[0] = m->cur;
    id[0] = memo_intern(mo, m->cur);
    end[0] = 0;
    const struct gram_node *node = gv->node;
    uint32_t i = 0, n = gv->n_node;
    uint64_t visited = 0;
    while (i < n) {
        const struct gram_node *nd = &node[i];
        uint32_t d = nd->depth;
        int32_t pid = id[d - 1], cid = -2;
        visited++;
        if (nd->plain && pid >= 0) {
            int32_t at = pid;
            for (int k = 0; k < nd->plain && at >= 0; k++)
                at = plain_step(m, at);
            if (at >= 0) {
                for (uint32_t k = nd->sub_lo; k < nd->sub_hi; k++) {
                    int32_t t = gv->tok_ids[k];
                    bits[t >> 3] |= (uint8_t)(1u << (t & 7));
                }
                n_allowed += (int)(nd->sub_hi - nd->sub_lo);
                i = nd->skip;
                continue;
            }
        }
        if (pid >= 0)
            cid = mo->trans[(size_t)pid * 256 + nd->byte];
        if (cid == -2) {
            uint32_t *out = m->walk + end[d - 1];
            if (!advance_byte(m, st[d - 1], nd->byte, out, GRAM_WALK_WORDS - end[d - 1])) {
                cid = -1;
            } else if ((cid = memo_intern(mo, out)) < 0) {
                /* The memo is full: this state lives in walk, unnamed. */
                cid = -3;
                st[d] = out;
                id[d] = -1;
                end[d] = end[d - 1] + out[0];
            }
            if (pid >= 0 && cid != -3)
                mo->trans[(size_t)pid * 256 + nd->byte] = cid;
        }
        if (cid == -1) {
            i = nd->skip;
            continue;
        }
        if (cid >= 0) {
            st[d] = mo->pool + mo->off[cid];
            id[d] = cid;
            end[d] = end[d - 1];
        }
        for (uint32_t k = 0; k < nd->n_tok; k++) {
            int32_t t = gv->tok_ids[nd->tok + k];
            bits[t >> 3] |= (uint8_t)(1u << (t & 7));
        }
        n_allowed += nd->n_tok;
        i++;
    }
    m->nodes += visited;
    return n_allowed;
}

int gram_match_fill(struct gram_match *m)
{
    const struct gram_vocab *gv = m->gv;
    struct gram_memo *mo = &m->memo;
    size_t nb = ((size_t)gv->n_vocab + 7) / 8;
    /* A full memo starts over here, between walks, where no id is held. */
    if (mo->n > GRAM_MEMO_STATES * 3 / 4 || mo->used > GRAM_MEMO_WORDS * 3 / 4)
        memo_clear(mo);
    int32_t sid = memo_intern(mo, m->cur);
    const uint8_t *bits = NULL;
    int n_allowed = 0, slot = -1;
    mo->clock++;
    for (int k = 0; k < GRAM_MASK_CACHE && sid >= 0; k++)
        if (mo->mask_id[k] == sid) {
            slot = k;
            break;
        }
    if (slot >= 0) {
        bits = mo->mask_bits + (size_t)slot * nb;
        n_allowed = mo->mask_n[slot];
        m->masks_cached++;
    } else if (sid >= 0) {
        /* Computed into the least recently used slot. */
        slot = 0;
        for (int k = 1; k < GRAM_MASK_CACHE; k++)
            if (mo->mask_id[k] < 0 || (mo->mask_id[slot] >= 0 && mo->mask_use[k] < mo->mask_use[slot]))
                slot = k;
        uint8_t *w = mo->mask_bits + (size_t)slot * nb;
        mo->mask_id[slot] = -1; /* the walk may not clear the memo, but be safe if it did */
        n_allowed = mask_walk(m, w);
        mo->mask_id[slot] = sid;
        mo->mask_n[slot] = n_allowed;
        bits = w;
    } else {
        n_allowed = mask_walk(m, m->bits);
        bits = m->bits;
    }
    if (slot >= 0)
        mo->mask_use[slot] = mo->clock;
    m->last = bits;
    return n_allowed;
}

bool gram_match_bit(const struct gram_match *m, int32_t t)
{
    return t >= 0 && t < m->gv->n_vocab && (m->last[t >> 3] >> (t & 7) & 1);
}

void gram_match_apply(const struct gram_match *m, float *logits)
{
    const struct gram_vocab *gv = m->gv;
    const uint8_t *bits = m->last;
    size_t nb = ((size_t)gv->n_vocab + 7) / 8;
    /* Apply, a 64-token word at a time: most words are all in or all out. */
    size_t nw = nb / 8;
    for (size_t w = 0; w < nw; w++) {
        uint64_t x;
        memcpy(&x, bits + w * 8, 8);
        if (x == ~0ull)
            continue;
        for (int k = 0; k < 64; k++)
            if (!(x >> k & 1))
                logits[w * 64 + (size_t)k] = -INFINITY;
    }
    for (int t = (int)(nw * 64); t < gv->n_vocab; t++)
        if (!(bits[t >> 3] & (1u << (t & 7))))
            logits[t] = -INFINITY;
}

int gram_match_mask(struct gram_match *m, float *logits)
{
    int n = gram_match_fill(m);
    gram_match_apply(m, logits);
    return n;
}
