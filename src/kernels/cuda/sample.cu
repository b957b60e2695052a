/*
 * Sampling on the device: a step's logits rows become token ids (and the
 * log-probabilities asked for) where they were computed, so that a few
 * bytes a row cross PCIe instead of [n_vocab] floats and the CPU sorts
 * nothing. The semantics are sample/sample.c's, operation for operation:
 *
 *   logit bias (in list order), then per token of the penalty table the
 *   repetition penalty (divide a positive logit, multiply a negative one)
 *   and `count * frequency + presence` for tokens in the output; then
 *   greedy argmax (the lowest index of the largest value), or: top-k (the
 *   k largest by value, then by lowest index), top-p (the smallest prefix
 *   of those, in that order, whose softmax mass reaches top_p of theirs;
 *   without top-k the candidates are the 1024 largest unless their mass
 *   falls short of top_p of the whole row's, as sample.c does it), min-p
 *   (weights of at least min_p times the largest) and one draw with a
 *   uniform taken on the host from the sampler's own RNG.
 *
 * One block of SAMPLE_THREADS a row. Nothing is sorted in full: the k-th
 * largest element (by value, then index) is found by a radix select over
 * an order-preserving 32-bit key of each float — four passes of 8 bits
 * each counting a histogram in shared memory — and ties at the threshold
 * are cut by index with a block prefix count. Candidate sets of at most
 * KCU_SAMPLE_POOL elements (top-k up to that, top-p's 1024) are then
 * gathered and bitonic-sorted in shared memory, and top-p, min-p and the
 * draw run over them in sample.c's order with block scans, so a given
 * uniform picks the same token sample.c would. Larger sets (top-k above
 * the pool, top-p over the whole row, no filter at all) stay in place:
 * top-p's cut is bisected on the key with block sums of the softmax mass,
 * and the draw is a block prefix scan over the candidates in index order —
 * the same distribution as sample.c's draw in value order, not the same
 * token for a given uniform.
 *
 * Arithmetic: the weights are expf((logit - max) * (1 / temperature)) in
 * float as on the CPU, their sums in double; penalties are written with
 * explicit round-to-nearest operations so that no multiply-add is fused
 * where the C code has none. Sums are taken in another order than the
 * CPU's sequential loops, which moves only decisions that sit within a
 * rounding error of a threshold.
 */
#include "kernels/cuda/kcuda.h"

#include <math.h>
#include <stdint.h>

namespace
{

constexpr int SAMPLE_THREADS = 1024;
constexpr int WARPS = SAMPLE_THREADS / 32;
constexpr unsigned FULL = 0xffffffffu;
static_assert(KCU_SAMPLE_POOL <= SAMPLE_THREADS, "one pool element a thread");

/* An unsigned key that orders as the float does (larger value, larger
 * key); -0 is read as +0 so that the two compare equal, as in C. */
__device__ __forceinline__ unsigned fkey(float f)
{
    const unsigned u = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_float(unsigned k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* A prefix of the row in sorted order (value descending, then index
 * ascending): the elements above `key`, and those at `key` up to index
 * `idx`. off = every element. */
struct Cut {
    unsigned key;
    int idx;
    bool on;
    __device__ bool in(unsigned k, int i) const { return !on || k > key || (k == key && i <= idx); }
};

struct Shared {
    unsigned long long sort[KCU_SAMPLE_POOL]; /* (key << 32 | ~index), sorted descending */
    int hist[256];
    double dpart[WARPS];
    int ipart[WARPS];
    float fpart[WARPS];
    int xpart[WARPS];
    int sel_bin, sel_k, sel_n;
    int count, found, last, tok;
    double dval;
};

/* ---- block-wide reductions and scans (every thread gets the result, the
 * same bits in each: the warps' parts are added in one fixed order) ---- */

/* The sum over the block, through part[WARPS] of shared memory. */
template <typename T> __device__ T block_sum(T v, T *part)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL, v, o);
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = v;
    __syncthreads();
    T s = 0;
    for (int w = 0; w < WARPS; w++)
        s += part[w];
    __syncthreads();
    return s;
}

__device__ double block_sum_d(double v, Shared &sh) { return block_sum<double>(v, sh.dpart); }

__device__ int block_sum_i(int v, Shared &sh) { return block_sum<int>(v, sh.ipart); }

/* Whether (bv, bi) comes before (av, ai) for an argmax that keeps the
 * first of equal values; NaN comes last (sample.c never picks one over a
 * number it met first, and a row with NaN has no meaningful answer). */
__device__ __forceinline__ bool better(float bv, int bi, float av, int ai)
{
    if (bv != bv)
        return false;
    return av != av || bv > av || (bv == av && bi < ai);
}

__device__ void block_argmax(float &v, int &i, Shared &sh)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL, v, o);
        const int oi = __shfl_xor_sync(FULL, i, o);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    if (threadIdx.x % 32 == 0) {
        sh.fpart[threadIdx.x / 32] = v;
        sh.xpart[threadIdx.x / 32] = i;
    }
    __syncthreads();
    v = sh.fpart[0];
    i = sh.xpart[0];
    for (int w = 1; w < WARPS; w++)
        if (better(sh.fpart[w], sh.xpart[w], v, i)) {
            v = sh.fpart[w];
            i = sh.xpart[w];
        }
    __syncthreads();
}

/* Inclusive and exclusive prefix sums over the threads in order; total
 * is the block's sum. */
template <typename T> __device__ void block_scan(T v, T &incl, T &excl, T &total, T *part)
{
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    T x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(FULL, x, o);
        if (lane >= o)
            x += y;
    }
    const T prev = __shfl_up_sync(FULL, x, 1);
    if (lane == 31)
        part[w] = x;
    __syncthreads();
    if (w == 0) {
        T s = part[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const T y = __shfl_up_sync(FULL, s, o);
            if (lane >= o)
                s += y;
        }
        part[lane] = s;
    }
    __syncthreads();
    const T base = w ? part[w - 1] : T(0);
    incl = base + x;
    excl = lane ? base + prev : base;
    total = part[WARPS - 1];
    __syncthreads();
}

/* ---- selection ---------------------------------------------------------- */

/* Thread t's contiguous share of n elements, for scans in index order. */
__device__ __forceinline__ void segment(int n, int &lo, int &hi)
{
    const int seg = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    lo = min(n, (int)threadIdx.x * seg);
    hi = min(n, lo + seg);
}

/* The index of the j-th (from 1) element in index order for which
 * pred(i) holds; n - 1 if there are fewer. */
template <class Pred> __device__ int nth_index(int n, int j, Pred pred, Shared &sh)
{
    int lo, hi;
    segment(n, lo, hi);
    int c = 0;
    for (int i = lo; i < hi; i++)
        c += pred(i) ? 1 : 0;
    int incl, excl, total;
    block_scan<int>(c, incl, excl, total, sh.ipart);
    if (threadIdx.x == 0)
        sh.found = n - 1;
    __syncthreads();
    if (excl < j && j <= incl) {
        int m = excl;
        for (int i = lo; i < hi; i++)
            if (pred(i) && ++m == j) {
                sh.found = i;
                break;
            }
    }
    __syncthreads();
    const int r = sh.found;
    __syncthreads();
    return r;
}

/* The first k (1 <= k <= n) elements of the row in sorted order, as a
 * cut: a radix select of the k-th largest key, 8 bits a pass from the
 * top, then the ties at that key taken by lowest index. */
__device__ Cut select_k(const float *l, int n, int k, Shared &sh)
{
    unsigned prefix = 0, mask = 0;
    int kk = k, n_eq = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS)
            sh.hist[b] = 0;
        __syncthreads();
        for (int i0 = 0; i0 < n; i0 += SAMPLE_THREADS) {
            const int i = i0 + threadIdx.x;
            unsigned key = 0;
            bool in = false;
            if (i < n) {
                key = fkey(l[i]);
                in = (key & mask) == prefix;
            }
            /* Logits crowd into a few bins (the top byte is the sign
             * and most of the exponent): one atomic per bin a warp. */
            const unsigned act = __ballot_sync(FULL, in);
            if (in) {
                const unsigned bin = (key >> shift) & 255u;
                const unsigned peers = __match_any_sync(act, bin);
                if ((int)(threadIdx.x % 32) == __ffs(peers) - 1)
                    atomicAdd(&sh.hist[bin], __popc(peers));
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0, b = 255;
            for (; b > 0 && above + sh.hist[b] < kk; b--)
                above += sh.hist[b];
            sh.sel_bin = b;
            sh.sel_k = kk - above;
            sh.sel_n = sh.hist[b];
        }
        __syncthreads();
        prefix |= (unsigned)sh.sel_bin << shift;
        mask |= 255u << shift;
        kk = sh.sel_k;
        n_eq = sh.sel_n;
        __syncthreads();
    }
    Cut c{prefix, n - 1, true};
    if (kk < n_eq)
        c.idx = nth_index(
            n, kk, [=](int i) { return fkey(l[i]) == prefix; }, sh);
    return c;
}

/* The m (<= KCU_SAMPLE_POOL) elements of cut c into sh.sort, sorted
 * descending by (key, -index): thread t then holds the t-th. */
__device__ void gather_sorted(const float *l, int n, Cut c, int m, Shared &sh)
{
    if (threadIdx.x == 0)
        sh.count = 0;
    __syncthreads();
    for (int i0 = 0; i0 < n; i0 += SAMPLE_THREADS) {
        const int i = i0 + threadIdx.x;
        if (i < n) {
            const unsigned key = fkey(l[i]);
            if (c.in(key, i)) {
                const int slot = atomicAdd(&sh.count, 1);
                if (slot < KCU_SAMPLE_POOL)
                    sh.sort[slot] = (unsigned long long)key << 32 | (unsigned)~(unsigned)i;
            }
        }
    }
    __syncthreads();
    int P = 1;
    while (P < m)
        P <<= 1;
    for (int i = threadIdx.x + m; i < P; i += SAMPLE_THREADS)
        sh.sort[i] = 0; /* below every element */
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            const int i = threadIdx.x, j = i ^ stride;
            if (i < P && j > i) {
                const bool desc = (i & size) == 0;
                const unsigned long long a = sh.sort[i], b = sh.sort[j];
                if (desc ? a < b : a > b) {
                    sh.sort[i] = b;
                    sh.sort[j] = a;
                }
            }
            __syncthreads();
        }
}

__device__ __forceinline__ int sorted_index(const Shared &sh, int t) { return (int)~(unsigned)(sh.sort[t] & FULL); }

/* ---- the draw ------------------------------------------------------------ */

struct Draw {
    const float *l;
    int n;
    float mx, inv_t, top_p, min_p;
    double u;
    uint8_t *cand; /* [n] candidate flags, or NULL (tests) */
    __device__ float weight(float v) const { return expf((v - mx) * inv_t); }
};

/* top-p, min-p and the draw over the m sorted candidates of cut c, in
 * sample.c's order. */
__device__ int draw_sorted(const Draw &d, Cut c, int m, Shared &sh)
{
    gather_sorted(d.l, d.n, c, m, sh);
    const int t = threadIdx.x;
    const bool live = t < m;
    const int idx = live ? sorted_index(sh, t) : 0;
    const float p = live ? d.weight(d.l[idx]) : 0.0f;
    double sum = block_sum_d(p, sh);
    double incl, excl, total;
    int keep = m;
    if (d.top_p < 1.0f) {
        const double target = (double)d.top_p * sum;
        block_scan<double>(p, incl, excl, total, sh.dpart);
        if (t == 0)
            sh.found = m;
        __syncthreads();
        if (live && incl >= target)
            atomicMin(&sh.found, t);
        __syncthreads();
        if (t == sh.found)
            sh.dval = incl;
        __syncthreads();
        if (sh.found < m) {
            keep = sh.found + 1;
            sum = sh.dval;
        }
        __syncthreads();
    }
    bool kept = t < keep;
    if (d.min_p > 0.0f) {
        /* The largest weight of those kept is the first's. */
        float pmax = p;
        int dummy = t;
        if (!kept)
            pmax = -INFINITY;
        block_argmax(pmax, dummy, sh);
        const float thr = d.min_p * pmax;
        kept = kept && p >= thr;
        sum = block_sum_d(kept ? p : 0.0f, sh);
    }
    const double r = d.u * sum;
    block_scan<double>(kept ? p : 0.0f, incl, excl, total, sh.dpart);
    if (t == 0) {
        sh.found = SAMPLE_THREADS;
        sh.last = -1;
    }
    __syncthreads();
    if (kept) {
        atomicMax(&sh.last, t);
        if (incl > r)
            atomicMin(&sh.found, t);
        if (d.cand)
            d.cand[idx] = 1;
    }
    __syncthreads();
    const int pick = sh.found < SAMPLE_THREADS ? sh.found : sh.last;
    if (t == pick)
        sh.tok = idx;
    __syncthreads();
    const int tok = sh.tok;
    __syncthreads();
    return tok;
}

/* top-p (bisected on the key), min-p and a draw in index order over the
 * elements of cut c0 (any number). */
__device__ int draw_index(const Draw &d, Cut c0, Shared &sh)
{
    const float *l = d.l;
    const int n = d.n;
    double pool = 0.0;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        const float v = l[i];
        if (c0.in(fkey(v), i))
            pool += d.weight(v);
    }
    pool = block_sum_d(pool, sh);
    Cut cp{0, 0, false};
    if (d.top_p < 1.0f) {
        /* The largest key T whose elements and those above hold at least
         * top_p of the mass: elements above T hold less. */
        const double target = (double)d.top_p * pool;
        unsigned T = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned cand = T | (1u << bit);
            double m = 0.0;
            for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
                const float v = l[i];
                const unsigned k = fkey(v);
                if (k >= cand && c0.in(k, i))
                    m += d.weight(v);
            }
            if (block_sum_d(m, sh) >= target)
                T = cand;
        }
        double gt = 0.0;
        int eq = 0;
        for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const float v = l[i];
            const unsigned k = fkey(v);
            if (c0.in(k, i)) {
                if (k > T)
                    gt += d.weight(v);
                else if (k == T)
                    eq++;
            }
        }
        gt = block_sum_d(gt, sh);
        eq = block_sum_i(eq, sh);
        /* The ties at T, by lowest index, until the mass is reached (each
         * thread the same loop on the same numbers). */
        const double pv = d.weight(key_float(T));
        double cum = gt;
        int c = 0;
        while (c < eq && cum < target) {
            cum += pv;
            c++;
        }
        if (c == 0)
            c = 1;
        cp = Cut{T, d.n - 1, true};
        if (c < eq)
            cp.idx = nth_index(
                n, c, [=](int i) { return fkey(l[i]) == T && c0.in(T, i); }, sh);
    }
    /* The largest weight is the maximum's, expf(0) = 1: min-p's threshold
     * is min_p itself. */
    const float thr = d.min_p * 1.0f;
    auto member = [&](int i, float &p) {
        const float v = l[i];
        const unsigned k = fkey(v);
        if (!c0.in(k, i) || !cp.in(k, i))
            return false;
        p = d.weight(v);
        return d.min_p <= 0.0f || p >= thr;
    };
    int lo, hi;
    segment(n, lo, hi);
    double s = 0.0;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        float p;
        const bool in = member(i, p);
        if (in) {
            s += p;
            last = i;
        }
        if (d.cand)
            d.cand[i] = in;
    }
    double incl, excl, total;
    block_scan<double>(s, incl, excl, total, sh.dpart);
    const double r = d.u * total;
    if (threadIdx.x == 0) {
        sh.found = SAMPLE_THREADS;
        sh.last = -1;
        sh.tok = -1;
    }
    __syncthreads();
    atomicMax(&sh.last, last);
    if (s > 0.0 && incl > r)
        atomicMin(&sh.found, (int)threadIdx.x);
    __syncthreads();
    if ((int)threadIdx.x == sh.found) {
        double acc = excl;
        int tok = last;
        for (int i = lo; i < hi; i++) {
            float p;
            if (member(i, p)) {
                acc += p;
                if (acc > r) {
                    tok = i;
                    break;
                }
            }
        }
        sh.tok = tok;
    }
    __syncthreads();
    const int tok = sh.tok >= 0 ? sh.tok : sh.last;
    __syncthreads();
    return tok;
}

__device__ int draw(const Draw &d, int top_k, Shared &sh)
{
    const int n = d.n, k = top_k > 0 && top_k < n ? top_k : n;
    const Cut all{0, 0, false};
    if (k == n && d.top_p >= 1.0f)
        return draw_index(d, all, sh);
    if (k < n && k > KCU_SAMPLE_POOL)
        return draw_index(d, select_k(d.l, n, k, sh), sh);
    /* top-k, or top-p's first 1024 (sample.c's): sorted in shared memory,
     * unless top-p needs more than they hold, when sample.c takes every
     * token. */
    const int first = k < n ? k : min(n, KCU_SAMPLE_POOL);
    const Cut c = select_k(d.l, n, first, sh);
    if (k == n && d.top_p < 1.0f && first < n) {
        double total = 0.0, head = 0.0;
        for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const float v = d.l[i];
            const double e = exp((double)((v - d.mx) * d.inv_t));
            total += e;
            if (c.in(fkey(v), i))
                head += e;
        }
        total = block_sum_d(total, sh);
        head = block_sum_d(head, sh);
        if (head < (double)d.top_p * total)
            return draw_index(d, all, sh);
    }
    return draw_sorted(d, c, first, sh);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(float *logits, int n, const kcu_sample_row *rows, const kcu_sample_edit *edits, kcu_sample_out *out,
                  uint8_t *cand)
{
    __shared__ Shared sh;
    const kcu_sample_row R = rows[blockIdx.x];
    float *l = logits + (size_t)R.row * (size_t)n;

    /* Bias in list order (a token may be listed twice), then the
     * penalties (one entry a token) in parallel. */
    const kcu_sample_edit *ed = edits + R.edit0;
    if (threadIdx.x == 0)
        for (int j = 0; j < R.n_bias; j++) {
            const int t = ed[j].token;
            if (t >= 0 && t < n)
                l[t] = __fadd_rn(l[t], ed[j].v);
        }
    __syncthreads();
    const float rp = R.repetition_penalty, pp = R.presence_penalty, fp = R.frequency_penalty;
    for (int j = threadIdx.x; j < R.n_pen; j += SAMPLE_THREADS) {
        const kcu_sample_edit e = ed[R.n_bias + j];
        if (e.token < 0 || e.token >= n)
            continue;
        float v = l[e.token];
        if (rp != 1.0f)
            v = v > 0 ? __fdiv_rn(v, rp) : __fmul_rn(v, rp);
        if (e.v > 0.0f)
            v = __fsub_rn(v, __fadd_rn(__fmul_rn(e.v, fp), pp));
        l[e.token] = v;
    }
    __syncthreads();

    float mx = -INFINITY;
    int am = n;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        const float v = l[i];
        if (better(v, i, mx, am)) {
            mx = v;
            am = i;
        }
    }
    block_argmax(mx, am, sh);
    int tok = am < n ? am : 0;
    if (R.temperature > 0.0f) {
        const Draw d{l,       n,       mx,  __fdiv_rn(1.0f, R.temperature),
                     R.top_p, R.min_p, R.u, cand ? cand + (size_t)blockIdx.x * (size_t)n : nullptr};
        tok = draw(d, R.top_k, sh);
    }

    kcu_sample_out *o = out + blockIdx.x;
    if (threadIdx.x == 0)
        o->token = tok;
    if (R.n_logprobs < 0)
        return;
    /* Log-probabilities under the edited logits, as sample_logprobs. */
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS)
        s += exp((double)(l[i] - mx));
    s = block_sum_d(s, sh);
    const float lse = mx + (float)log(s);
    if (threadIdx.x == 0)
        o->lp = l[tok] - lse;
    const int nt = min(min(R.n_logprobs, KCU_SAMPLE_TOP_MAX), n);
    if (nt > 0) {
        const Cut c = select_k(l, n, nt, sh);
        gather_sorted(l, n, c, nt, sh);
        if ((int)threadIdx.x < nt) {
            const int idx = sorted_index(sh, threadIdx.x);
            o->top_id[threadIdx.x] = idx;
            o->top_lp[threadIdx.x] = l[idx] - lse;
        }
    }
}

} // namespace

cudaError_t kcu_sample(cudaStream_t st, float *logits, int n_vocab, const struct kcu_sample_row *rows,
                       const struct kcu_sample_edit *edits, int n_rows, struct kcu_sample_out *out, uint8_t *cand)
{
    if (n_rows <= 0)
        return cudaSuccess;
    sample_kernel<<<n_rows, SAMPLE_THREADS, 0, st>>>(logits, n_vocab, rows, edits, out, cand);
    return cudaGetLastError();
}
