/*
 * Private to kernels/: the GGUF block layouts, the type traits table, and
 * the per-ISA tables of kernel entry points that kernels.c dispatches
 * through.
 *
 * The block structs reproduce ggml's byte layouts exactly (ggml-common.h):
 * a GGUF tensor's data is an array of these, read in place from the mmap.
 * fp16 fields are kept as raw uint16_t bits. All structs have alignment 1
 * or 2, so rows at any even byte offset are fine; the SIMD code uses
 * unaligned loads throughout.
 *
 * Not a public header: model/ and engine/ see only kernels.h.
 */
#pragma once

#include "kernels/kernels.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KERN_QK 32    /* elements per block of the 32-element types */
#define KERN_QK_K 256 /* elements per K-quant super-block */

struct kern__q4_0 {
    uint16_t d;     /* fp16 scale */
    uint8_t qs[16]; /* nibbles: element j in the low half of qs[j], j + 16 in the high half */
};
struct kern__q4_1 {
    uint16_t d, m; /* fp16 scale and minimum: x = d * q + m */
    uint8_t qs[16];
};
struct kern__q5_0 {
    uint16_t d;
    uint8_t qh[4]; /* bit j (little-endian uint32) = fifth bit of element j */
    uint8_t qs[16];
};
struct kern__q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
};
struct kern__q8_0 {
    uint16_t d;
    int8_t qs[32];
};
/* Activation type for Q4_1 / Q5_1, as in ggml: s caches d * sum(qs). */
struct kern__q8_1 {
    uint16_t d, s;
    int8_t qs[32];
};
struct kern__q2_K {
    uint8_t scales[16]; /* per 16 elements: low nibble scale, high nibble min */
    uint8_t qs[64];     /* 2-bit quants, 4 per byte */
    uint16_t d, dmin;   /* fp16 super-block scales of the scales and mins */
};
struct kern__q3_K {
    uint8_t hmask[32];  /* high (third) bits */
    uint8_t qs[64];     /* low 2 bits */
    uint8_t scales[12]; /* 16 six-bit scales, packed */
    uint16_t d;
};
struct kern__q4_K {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 six-bit scales and 8 six-bit mins, packed */
    uint8_t qs[128];    /* nibbles: 64-element groups, low nibbles first 32, high nibbles next 32 */
};
struct kern__q5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32]; /* fifth bits: bit 2g / 2g+1 of qh[l] for group g's low / high 32 */
    uint8_t qs[128];
};
struct kern__q6_K {
    uint8_t ql[128];   /* low 4 bits */
    uint8_t qh[64];    /* high 2 bits */
    int8_t scales[16]; /* per 16 elements */
    uint16_t d;
};
/* Activation type for the K-quants; d is f32, bsums are sums of 16 qs. */
struct kern__q8_K {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
};

_Static_assert(sizeof(struct kern__q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(struct kern__q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(struct kern__q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(struct kern__q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(struct kern__q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(struct kern__q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(struct kern__q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(struct kern__q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(struct kern__q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(struct kern__q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(struct kern__q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(struct kern__q8_K) == 292, "q8_K layout");

/* What the kernels know about a type. Entries with block == 0 are types
 * lmd cannot compute with. */
struct kern__traits {
    const char *name;
    int block;           /* elements per block */
    int bytes;           /* bytes per block */
    enum gguf_dtype dot; /* activation type for dot products (weights only) */
    bool weight;         /* has dequant + dot */
    bool activation;     /* has quantize_row */
};
const struct kern__traits *kern__traits(enum gguf_dtype t);

/* Bytes of one row of n elements of type t (n a multiple of the block). */
static inline size_t kern__row_bytes(enum gguf_dtype t, int64_t n)
{
    const struct kern__traits *tr = kern__traits(t);
    return (size_t)(n / tr->block) * (size_t)tr->bytes;
}

/*
 * Entry points of one ISA for one type.
 *
 * dot computes a small tile of dot products (struct kern__tile),
 *     y[j * ldy + i] = w_i . x_j     for i < nw, j < nx,
 * over n elements, where w_i = w + i * ws and x_j = x + j * xs (bytes),
 * nw <= tile_w and nx <= tile_x. Every implementation computes each
 * (i, j) pair with the same sequence of floating-point operations whatever
 * nw and nx are, so a matmul tile and a single vec_dot agree to the bit.
 */
struct kern__tile {
    const void *w; /* first weight row */
    size_t ws;     /* bytes between weight rows */
    int nw;        /* weight rows */
    const void *x; /* first activation row, in the dot type */
    size_t xs;     /* bytes between activation rows */
    int nx;        /* activation rows */
    /* Optional (NULL when absent): the activation block scales of Q8_0 /
     * Q8_1 rows as f32, xd[b * KERN__XD_LANES + j] for block b of row j,
     * so the SIMD tiles can load them without converting fp16. */
    const float *xd;
    float *y; /* y[j * ldy + i] */
    int64_t ldy;
};
#define KERN__XD_LANES 8

/*
 * Q4_K repacked 8 rows at a time for the m >= 2 tiles (cpu/repack_avx2.c
 * explains the "lane = row" layout): super-block b of rows r0..r0+7.
 * matmul.c's table of repacked layouts says which types have one.
 */
struct kern__q4_Kx8 {
    uint8_t qs[4][8][32]; /* [g][l][4 * r + i] = row r's qs[32 g + 4 l + i] */
    uint8_t sc[8][8];     /* [sub-block][r] six-bit scale */
    uint8_t mn[8][8];     /* [sub-block][r] six-bit min */
    float d[8], dmin[8];  /* [r] the fp16 super-block scales, widened (exact) */
};
_Static_assert(sizeof(struct kern__q4_Kx8) == 1216, "q4_Kx8 layout");

/*
 * Q6_K repacked the same way (cpu/repack_avx2.c): super-block b of rows
 * r0..r0+7, the 6-bit quants still split into low nibbles and high bit
 * pairs as in struct kern__q6_K, so the copy is barely larger than the
 * rows. Every 32-byte run is 8 rows times 4 consecutive bytes.
 */
struct kern__q6_Kx8 {
    uint8_t ql[2][2][8][32]; /* [h][p][l][4 * r + i] = row r's ql[64 h + 32 p + 4 l + i] */
    uint8_t qh[2][8][32];    /* [h][l][4 * r + i] = row r's qh[32 h + 4 l + i] */
    int8_t sc[16][8];        /* [sub-block][r] eight-bit scale */
    float d[8];              /* [r] the fp16 super-block scale, widened (exact) */
};
_Static_assert(sizeof(struct kern__q6_Kx8) == 1696, "q6_Kx8 layout");
#define KERN__RP_ROWS 8 /* weight rows per repacked group */
#define KERN__RP_TX 16  /* activation rows per call of a repacked tile */

/* ng <= 2 consecutive repacked groups of KERN__RP_ROWS weight rows (nb
 * blocks each, from wp) against nx <= KERN__RP_TX activation rows xs bytes
 * apart: y[j * ldy + r] for r < ng * KERN__RP_ROWS. The same bits as the
 * type's dot tile on the original rows. */
typedef void (*kern__rp_fn)(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y,
                            int64_t ldy);
void kern__rp_q4_K_avx2(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy);
void kern__rp_q4_K_avx512(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy);
void kern__rp_q6_K_avx2(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy);
void kern__rp_q6_K_avx512(int64_t nb, const void *wp, int ng, const void *xq, size_t xs, int nx, float *y, int64_t ldy);

typedef void (*kern__dequant_fn)(const void *src, float *dst, int64_t n);
typedef void (*kern__quant_fn)(const float *src, void *dst, int64_t n);
typedef void (*kern__dot_fn)(int64_t n, const struct kern__tile *t);

struct kern__type_ops {
    kern__dequant_fn dequant; /* weight types and Q8_0 */
    kern__quant_fn quant;     /* activation types */
    kern__dot_fn dot;         /* weight types */
    int tile_w, tile_x;       /* largest nw, nx the dot takes */
    kern__rp_fn rp;           /* tile over repacked rows, or NULL */
};

struct kern__ops {
    const char *name;
    struct kern__type_ops type[GGUF_DTYPE_COUNT];
};

extern const struct kern__ops kern__ops_scalar;
extern const struct kern__ops kern__ops_avx2;
extern const struct kern__ops kern__ops_avx512;

/* The ISA table in use (kern_init on first call). */
const struct kern__ops *kern__ops(void);

/* fp16 -> f32, exact (every fp16 value is an f32 value). */
static inline float kern__h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        /* Zero or subnormal: man * 2^-24 is exact in f32. */
        float f = (float)man * 0x1p-24f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/*
 * The scalar reference functions, shared so the SIMD tables can fall back
 * to them for the types they do not accelerate.
 */
#define KERN__SCALAR_DECLS(T)                                                                                          \
    void kern__dequant_##T##_scalar(const void *src, float *dst, int64_t n);                                           \
    void kern__dot_##T##_scalar(int64_t n, const struct kern__tile *t);
KERN__SCALAR_DECLS(f32)
KERN__SCALAR_DECLS(f16)
KERN__SCALAR_DECLS(bf16)
KERN__SCALAR_DECLS(q4_0)
KERN__SCALAR_DECLS(q4_1)
KERN__SCALAR_DECLS(q5_0)
KERN__SCALAR_DECLS(q5_1)
KERN__SCALAR_DECLS(q8_0)
KERN__SCALAR_DECLS(q2_K)
KERN__SCALAR_DECLS(q3_K)
KERN__SCALAR_DECLS(q4_K)
KERN__SCALAR_DECLS(q5_K)
KERN__SCALAR_DECLS(q6_K)
void kern__quant_f32_scalar(const float *src, void *dst, int64_t n);
void kern__quant_f16_scalar(const float *src, void *dst, int64_t n);
void kern__quant_bf16_scalar(const float *src, void *dst, int64_t n);
void kern__quant_q8_0_scalar(const float *src, void *dst, int64_t n);
void kern__quant_q8_1_scalar(const float *src, void *dst, int64_t n);
void kern__quant_q8_K_scalar(const float *src, void *dst, int64_t n);
void kern__dequant_q8_1_scalar(const void *src, float *dst, int64_t n);
void kern__dequant_q8_K_scalar(const void *src, float *dst, int64_t n);

/* Unpack the 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block. */
static inline void kern__scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Unpack the 16 six-bit Q3_K scales, still biased by +32. */
static inline void kern__q3k_scales(const uint8_t *s12, int8_t out[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s12[j] & 0xF) : (s12[j - 8] >> 4);
        int hi = (s12[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (int8_t)(lo | (hi << 4));
    }
}

/* The scalar table's entries, which the SIMD tables start from. */
#define KERN__SW(T, E) [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, NULL, kern__dot_##T##_scalar, 4, 4}
#define KERN__SWA(T, E)                                                                                                \
    [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, kern__quant_##T##_scalar, kern__dot_##T##_scalar, 4, 4}
#define KERN__SA(T, E) [GGUF_DTYPE_##E] = {kern__dequant_##T##_scalar, kern__quant_##T##_scalar, NULL, 0, 0}
#define KERN__SCALAR_ENTRIES                                                                                           \
    KERN__SWA(f32, F32), KERN__SWA(f16, F16), KERN__SWA(bf16, BF16), KERN__SW(q4_0, Q4_0), KERN__SW(q4_1, Q4_1),       \
        KERN__SW(q5_0, Q5_0), KERN__SW(q5_1, Q5_1), KERN__SWA(q8_0, Q8_0), KERN__SA(q8_1, Q8_1), KERN__SW(q2_K, Q2_K), \
        KERN__SW(q3_K, Q3_K), KERN__SW(q4_K, Q4_K), KERN__SW(q5_K, Q5_K), KERN__SW(q6_K, Q6_K), KERN__SA(q8_K, Q8_K)

/* The AVX2 entry points (cpu/ files ending in _avx2.c), which the AVX-512 table reuses. */
#define KERN__AVX2_DOT_DECL(T) void kern__dot_##T##_avx2(int64_t n, const struct kern__tile *t);
KERN__AVX2_DOT_DECL(f32)
KERN__AVX2_DOT_DECL(f16)
KERN__AVX2_DOT_DECL(bf16)
KERN__AVX2_DOT_DECL(q4_0)
KERN__AVX2_DOT_DECL(q4_1)
KERN__AVX2_DOT_DECL(q5_0)
KERN__AVX2_DOT_DECL(q5_1)
KERN__AVX2_DOT_DECL(q8_0)
KERN__AVX2_DOT_DECL(q2_K)
KERN__AVX2_DOT_DECL(q3_K)
KERN__AVX2_DOT_DECL(q4_K)
KERN__AVX2_DOT_DECL(q5_K)
KERN__AVX2_DOT_DECL(q6_K)
void kern__quant_q8_0_avx2(const float *src, void *dst, int64_t n);
void kern__quant_q8_1_avx2(const float *src, void *dst, int64_t n);
void kern__quant_q8_K_avx2(const float *src, void *dst, int64_t n);
void kern__quant_f16_avx2(const float *src, void *dst, int64_t n);
