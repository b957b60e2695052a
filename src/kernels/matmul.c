/*
 * kern_matmul: Y = X · Wᵀ over the compute pool.
 *
 * Two phases. First X is quantized to the weight type's activation type,
 * once, into the caller's scratch (split over the pool when X is large).
 * Then the output is cut into work items of (a block of weight rows) × (a
 * block of X rows); the pool spreads the items, and each item walks its
 * tiles with the ISA's tile kernel, which decodes every weight block once
 * for up to 8 X rows (and, for Q8_0 / Q8_1 activations, reads their block
 * scales as f32 from a table built here, struct kern__tile's xd).
 *
 * Why those blocks: in decode (m = 1) the weights stream from memory once,
 * so items are just runs of rows, contiguous per thread, several per
 * thread for balance. In prefill, each weight row is used m times; a
 * weight-row block sized to stay in L1/L2 is swept over an X block sized
 * to stay in L2, so weights are read from memory about once per X block
 * instead of once per token.
 *
 * Every element of Y is computed with the same sequence of f32 operations
 * as kern_vec_dot (struct kern__tile's contract), so the results are
 * bit-identical to per-row dots on the same ISA, whatever the tiling or
 * thread count.
 *
 * With a repacked copy of W (kern_repack: Q4_K, Q6_K) and m >= 2, phase 2
 * runs the ISA's repacked tile over groups of 8 rows instead (the same
 * bits: cpu/repack_avx2.c), items being a few groups by an X block; rows
 * past the last full group take the path above.
 */
#include "kernels/quants.h"

#include <string.h>

#define SCRATCH_ALIGN 64
#define WBLOCK_BYTES (24 * 1024)  /* target weight bytes per item, L1/L2 resident */
#define XBLOCK_BYTES (192 * 1024) /* target quantized-X bytes per item, L2 resident */

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* Bytes between quantized X rows in scratch (cache-line aligned rows). */
static size_t xq_stride(enum gguf_dtype dt, int64_t k) { return round_up(kern__row_bytes(dt, k), SCRATCH_ALIGN); }

/* Q8_0 / Q8_1 rows also get their block scales as f32 (struct kern__tile's
 * xd), grouped by KERN__XD_LANES rows: [m / lanes][k / 32][lanes]. */
static bool has_xd(enum gguf_dtype dt) { return dt == GGUF_DTYPE_Q8_0 || dt == GGUF_DTYPE_Q8_1; }

static size_t xd_bytes(enum gguf_dtype dt, int64_t k, int64_t m)
{
    if (!has_xd(dt))
        return 0;
    int64_t groups = (m + KERN__XD_LANES - 1) / KERN__XD_LANES;
    return round_up((size_t)(groups * (k / KERN_QK) * KERN__XD_LANES) * sizeof(float), SCRATCH_ALIGN);
}

size_t kern_matmul_scratch_bytes(enum gguf_dtype wt, int64_t k, int64_t m)
{
    enum gguf_dtype dt = kern_dot_type(wt);
    if (dt == GGUF_DTYPE_F32)
        return 0; /* X is used as it is */
    return (size_t)m * xq_stride(dt, k) + xd_bytes(dt, k, m) + SCRATCH_ALIGN;
}

struct quant_ctx {
    kern__quant_fn quant;
    const float *x; /* [m][k] */
    char *xq;       /* [m][xs bytes] */
    size_t xs;
    float *xd;    /* [m / lanes][k / 32][lanes], or NULL */
    size_t xd_bb; /* bytes per block of the rows xd describes */
    int64_t k;
};

static void quant_rows(void *vctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    struct quant_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++) {
        char *row = c->xq + (size_t)r * c->xs;
        c->quant(c->x + r * c->k, row, c->k);
        if (c->xd) {
            /* Q8_0 and Q8_1 blocks both start with the fp16 scale. */
            int64_t nb = c->k / KERN_QK;
            size_t bb = c->xd_bb;
            float *g = c->xd + (r / KERN__XD_LANES) * nb * KERN__XD_LANES + r % KERN__XD_LANES;
            for (int64_t b = 0; b < nb; b++) {
                uint16_t h;
                memcpy(&h, row + (size_t)b * bb, 2);
                g[b * KERN__XD_LANES] = kern__h2f(h);
            }
        }
    }
}

struct mm_ctx {
    kern__dot_fn dot;
    int tile_w, tile_x;
    const char *w;
    size_t ws;      /* bytes between weight rows */
    const char *xq; /* quantized X: [m][xs bytes] */
    size_t xs;
    const float *xd; /* f32 scales of X, see has_xd(), or NULL */
    float *y;        /* [m][ldy] */
    int64_t ldy;
    int64_t n, k, m;
    int64_t wrows; /* weight rows per item */
    int64_t xrows; /* X rows per item */
    int64_t n_wblocks;
};

static void mm_items(void *vctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct mm_ctx *c = vctx;
    for (int64_t it = begin; it < end; it++) {
        /* X block outer, so neighbouring items (one thread's run) share it. */
        int64_t xb = it / c->n_wblocks, wb = it % c->n_wblocks;
        int64_t r0 = wb * c->wrows, r1 = r0 + c->wrows < c->n ? r0 + c->wrows : c->n;
        int64_t j0 = xb * c->xrows, j1 = j0 + c->xrows < c->m ? j0 + c->xrows : c->m;
        for (int64_t j = j0; j < j1; j += c->tile_x) {
            int nx = (int)(j1 - j < c->tile_x ? j1 - j : c->tile_x);
            for (int64_t r = r0; r < r1; r += c->tile_w) {
                int nw = (int)(r1 - r < c->tile_w ? r1 - r : c->tile_w);
                struct kern__tile t = {
                    .w = c->w + (size_t)r * c->ws,
                    .ws = c->ws,
                    .nw = nw,
                    .x = c->xq + (size_t)j * c->xs,
                    .xs = c->xs,
                    .nx = nx,
                    .xd = c->xd ? c->xd + (j / KERN__XD_LANES) * (c->k / KERN_QK) * KERN__XD_LANES + j % KERN__XD_LANES
                                : NULL,
                    .y = c->y + j * c->ldy + r,
                    .ldy = c->ldy,
                };
                c->dot(c->k, &t);
            }
        }
    }
}

/* ---- repacked weights (struct kern__q4_Kx8, struct kern__q6_Kx8) ---- */

/* Super-block b of the KERN__RP_ROWS rows at w (ws bytes apart) into one
 * repacked block. */
typedef void (*pack_fn)(const char *w, size_t ws, int64_t b, void *dst);

static void pack_q4_K(const char *w, size_t ws, int64_t b, void *dst)
{
    struct kern__q4_Kx8 *o = dst;
    for (int r = 0; r < KERN__RP_ROWS; r++) {
        const struct kern__q4_K *q = (const struct kern__q4_K *)(w + (size_t)r * ws) + b;
        o->d[r] = kern__h2f(q->d);
        o->dmin[r] = kern__h2f(q->dmin);
        for (int sb = 0; sb < 8; sb++)
            kern__scale_min_k4(sb, q->scales, &o->sc[sb][r], &o->mn[sb][r]);
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 8; l++)
                memcpy(&o->qs[g][l][4 * r], q->qs + 32 * g + 4 * l, 4);
    }
}

static void pack_q6_K(const char *w, size_t ws, int64_t b, void *dst)
{
    struct kern__q6_Kx8 *o = dst;
    for (int r = 0; r < KERN__RP_ROWS; r++) {
        const struct kern__q6_K *q = (const struct kern__q6_K *)(w + (size_t)r * ws) + b;
        o->d[r] = kern__h2f(q->d);
        for (int s = 0; s < 16; s++)
            o->sc[s][r] = q->scales[s];
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 8; l++) {
                for (int p = 0; p < 2; p++)
                    memcpy(&o->ql[h][p][l][4 * r], q->ql + 64 * h + 32 * p + 4 * l, 4);
                memcpy(&o->qh[h][l][4 * r], q->qh + 32 * h + 4 * l, 4);
            }
    }
}

/* The types with a repacked layout: the size of one repacked block (one
 * super-block of KERN__RP_ROWS rows) and how to write it. Whether a kernel
 * path uses the layout is its table's rp entry. */
static const struct {
    size_t bytes;
    pack_fn pack;
} g_rp_layouts[GGUF_DTYPE_COUNT] = {
    [GGUF_DTYPE_Q4_K] = {sizeof(struct kern__q4_Kx8), pack_q4_K},
    [GGUF_DTYPE_Q6_K] = {sizeof(struct kern__q6_Kx8), pack_q6_K},
};

size_t kern_repack_bytes(enum gguf_dtype t, int64_t n, int64_t k)
{
    if ((unsigned)t >= GGUF_DTYPE_COUNT || !g_rp_layouts[t].bytes || !kern__ops()->type[t].rp)
        return 0; /* no layout, or no tile for it on this kernel path */
    int64_t block = kern__traits(t)->block;
    if (k % block != 0 || n < KERN__RP_ROWS)
        return 0;
    return (size_t)(n / KERN__RP_ROWS) * (size_t)(k / block) * g_rp_layouts[t].bytes;
}

struct repack_ctx {
    pack_fn pack;
    const char *w;
    size_t ws;
    int64_t nb;
    size_t bytes; /* per repacked block */
    char *dst;    /* [n / 8][nb][bytes] */
};

static void repack_groups(void *vctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct repack_ctx *c = vctx;
    for (int64_t grp = begin; grp < end; grp++)
        for (int64_t b = 0; b < c->nb; b++)
            c->pack(c->w + (size_t)(grp * KERN__RP_ROWS) * c->ws, c->ws, b,
                    c->dst + (size_t)(grp * c->nb + b) * c->bytes);
}

void kern_repack(struct lmd_pool *pool, enum gguf_dtype t, const void *w, size_t w_stride, int64_t n, int64_t k,
                 void *dst)
{
    LMD_ASSERT(kern_repack_bytes(t, n, k) > 0, "kern_repack: no repacked layout for this matrix");
    struct repack_ctx c = {
        g_rp_layouts[t].pack, w, w_stride, k / kern__traits(t)->block, g_rp_layouts[t].bytes, dst,
    };
    lmd_pool_for(pool, n / KERN__RP_ROWS, 0, repack_groups, &c);
}

struct rp_ctx {
    kern__rp_fn rp;
    const char *packed; /* [groups][gbytes] */
    size_t gbytes;      /* bytes per repacked group */
    int64_t nb;         /* blocks per row */
    const char *xq;     /* [m][xs bytes] */
    size_t xs;
    float *y;
    int64_t ldy;
    int64_t groups, m;
    int64_t ggroups; /* groups per item */
    int64_t xrows;   /* X rows per item */
    int64_t n_gblocks;
};

static void rp_items(void *vctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct rp_ctx *c = vctx;
    for (int64_t it = begin; it < end; it++) {
        int64_t xb = it / c->n_gblocks, gb = it % c->n_gblocks;
        int64_t g0 = gb * c->ggroups, g1 = g0 + c->ggroups < c->groups ? g0 + c->ggroups : c->groups;
        int64_t j0 = xb * c->xrows, j1 = j0 + c->xrows < c->m ? j0 + c->xrows : c->m;
        for (int64_t j = j0; j < j1; j += KERN__RP_TX) {
            int nx = (int)(j1 - j < KERN__RP_TX ? j1 - j : KERN__RP_TX);
            for (int64_t g = g0; g < g1; g += 2) {
                int ng = g + 1 < g1 ? 2 : 1;
                c->rp(c->nb, c->packed + (size_t)g * c->gbytes, ng, c->xq + (size_t)j * c->xs, c->xs, nx,
                      c->y + j * c->ldy + g * KERN__RP_ROWS, c->ldy);
            }
        }
    }
}

void kern_matmul(struct lmd_pool *pool, enum gguf_dtype wt, const void *w, size_t w_stride, int64_t n, int64_t k,
                 const float *x, int64_t m, float *y, int64_t ldy, void *scratch)
{
    kern_matmul_packed(pool, wt, w, w_stride, NULL, n, k, x, m, y, ldy, scratch);
}

void kern_matmul_packed(struct lmd_pool *pool, enum gguf_dtype wt, const void *w, size_t w_stride, const void *packed,
                        int64_t n, int64_t k, const float *x, int64_t m, float *y, int64_t ldy, void *scratch)
{
    const struct kern__traits *tr = kern__traits(wt);
    LMD_ASSERT(tr->weight && k % tr->block == 0, "kern_matmul: bad type or k");
    if (n <= 0 || m <= 0)
        return;
    const struct kern__ops *ops = kern__ops();
    const struct kern__type_ops *e = &ops->type[wt];
    enum gguf_dtype dt = tr->dot;
    int threads = lmd_pool_threads(pool);

    /* Phase 1: quantize X. */
    const char *xq;
    size_t xs;
    float *xd = NULL;
    if (dt == GGUF_DTYPE_F32) {
        xq = (const char *)x;
        xs = (size_t)k * sizeof(float);
    } else {
        char *base = (char *)round_up((size_t)scratch, SCRATCH_ALIGN);
        xs = xq_stride(dt, k);
        const struct kern__traits *tr_dt = kern__traits(dt);
        if (has_xd(dt)) {
            /* xd lanes are addressed as j % lanes, so tiles must not straddle a lane group. */
            LMD_ASSERT(KERN__XD_LANES % e->tile_x == 0, "kern_matmul: tile_x must divide KERN__XD_LANES");
            xd = (float *)(base + (size_t)m * xs);
        }
        struct quant_ctx qc = {ops->type[dt].quant, x, base, xs, xd, (size_t)tr_dt->bytes, k};
        /* Quantizing costs ~k per row against ~n * k for the products:
         * worth sharing only when there are many rows. */
        if (m >= 2 * threads && m * k >= 32768)
            lmd_pool_for(pool, m, 0, quant_rows, &qc);
        else
            quant_rows(&qc, 0, m, 0);
        xq = base;
    }

    /* Phase 2: the products. Repacked rows first, where there are any. */
    if (packed && m >= 2 && e->rp) {
        LMD_ASSERT(g_rp_layouts[wt].bytes, "kern_matmul: a repacked tile without a repacked layout");
        struct rp_ctx rc = {
            .rp = e->rp,
            .packed = packed,
            .nb = k / tr->block,
            .xq = xq,
            .xs = xs,
            .y = y,
            .ldy = ldy,
            .groups = n / KERN__RP_ROWS,
            .m = m,
        };
        /* A group's blocks are decoded once per KERN__RP_TX X rows, so an
         * item is a few groups (their weights stay in L2) by an X block
         * that stays in L2; enough items for every thread. */
        rc.gbytes = (size_t)rc.nb * g_rp_layouts[wt].bytes;
        int64_t gg = (int64_t)(2 * WBLOCK_BYTES / rc.gbytes) / 2 * 2; /* pairs: the AVX-512 tile takes two */
        if (gg < 2)
            gg = 2;
        int64_t xr = (int64_t)(XBLOCK_BYTES / xs) / KERN__RP_TX * KERN__RP_TX;
        rc.xrows = xr < KERN__RP_TX ? KERN__RP_TX : xr;
        int64_t n_xblocks = (m + rc.xrows - 1) / rc.xrows;
        while (gg > 2 && (rc.groups + gg - 1) / gg * n_xblocks < 4 * (int64_t)threads)
            gg -= 2;
        rc.ggroups = gg;
        rc.n_gblocks = (rc.groups + gg - 1) / gg;
        lmd_pool_for(pool, rc.n_gblocks * n_xblocks, 1, rp_items, &rc);
        int64_t done = rc.groups * KERN__RP_ROWS;
        if (done == n)
            return;
        /* The last n % 8 rows: the original layout. */
        w = (const char *)w + (size_t)done * w_stride;
        y += done;
        n -= done;
    }
    struct mm_ctx c = {
        .dot = e->dot,
        .tile_w = e->tile_w,
        .tile_x = e->tile_x,
        .w = w,
        .ws = w_stride,
        .xq = xq,
        .xs = xs,
        .xd = xd,
        .y = y,
        .ldy = ldy,
        .n = n,
        .k = k,
        .m = m,
    };
    size_t wrow_bytes = kern__row_bytes(wt, k);
    if (m == 1) {
        /* Decode: runs of whole tiles, about 8 items per thread so a slow
         * core sheds work to the other, but each one long enough to
         * stream. */
        int64_t tiles = (n + c.tile_w - 1) / c.tile_w;
        int64_t per = tiles / (8 * (int64_t)threads);
        c.wrows = (per < 1 ? 1 : per) * c.tile_w;
        c.xrows = 1;
    } else {
        int64_t wr = (int64_t)(WBLOCK_BYTES / (wrow_bytes ? wrow_bytes : 1));
        wr = wr / c.tile_w * c.tile_w;
        if (wr < c.tile_w)
            wr = c.tile_w;
        /* Enough items for every thread even when n is small. */
        while (wr > c.tile_w && (n + wr - 1) / wr < 4 * (int64_t)threads)
            wr -= c.tile_w;
        c.wrows = wr;
        int64_t xr = (int64_t)(XBLOCK_BYTES / xs);
        xr = xr / c.tile_x * c.tile_x;
        c.xrows = xr < c.tile_x ? c.tile_x : xr;
    }
    c.n_wblocks = (n + c.wrows - 1) / c.wrows;
    int64_t n_xblocks = (m + c.xrows - 1) / c.xrows;
    lmd_pool_for(pool, c.n_wblocks * n_xblocks, 1, mm_items, &c);
}
