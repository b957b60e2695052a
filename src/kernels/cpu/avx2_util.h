/*
 * Small AVX2 helpers shared by the *_avx2.c kernel files (and the AVX-512
 * files, which also enable AVX2). Only include from files compiled with
 * -mavx2 -mfma -mf16c.
 *
 * Numerics rule for every SIMD kernel: a dot product's f32 operations are
 * written as explicit fmadd / mul / add intrinsics in one fixed order per
 * (weight row, x row) pair, and never as a separate multiply feeding an
 * add, so the compiler has nothing to contract and every tile shape gives
 * the same bits.
 */
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define KERN_INLINE static inline __attribute__((always_inline))

/* Sum of the 8 lanes, in a fixed order: (lo + hi) pairwise. */
KERN_INLINE float kern__hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

KERN_INLINE float kern__hsum_ps128(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Sum of the 4 even lanes 0, 2, 4, 6 (a0..a3), in llama.cpp's order for a
 * 4-lane vector: (a0 + a2) + (a1 + a3). The odd lanes are ignored. */
KERN_INLINE float kern__hsum_even_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ss(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(s);
}

/* Sum of the 8 int32 lanes (wrapping, so exact whenever the sum fits). */
KERN_INLINE int kern__hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

KERN_INLINE float kern__h2f_hw(uint16_t h) { return _cvtsh_ss(h); }

/* fp16 -> f32 in all 8 lanes (a broadcast load and one convert). */
KERN_INLINE __m256 kern__h2f_bcast(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16((short)h)); }

/* int16 pairs -> int32: multiply by 1 and add neighbours. */
KERN_INLINE __m256i kern__sum_i16_pairs(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

/* Signed int8 dot of 32 pairs into 8 int32 lanes (lane l holds 4 products):
 * |a| times b with a's sign moved onto b, so maddubs (u8 x s8) applies.
 * Needs b != -128 where a < 0 (activations never hold -128). */
KERN_INLINE __m256i kern__dot_i8(__m256i a, __m256i b)
{
    __m256i ua = _mm256_sign_epi8(a, a);
    __m256i sb = _mm256_sign_epi8(b, a);
    return kern__sum_i16_pairs(_mm256_maddubs_epi16(ua, sb));
}

/* The 32 bits of a (little-endian) become 32 bytes of 0x00 / 0xFF. */
KERN_INLINE __m256i kern__bits_to_bytes(uint32_t bits)
{
    const __m256i shuf =
        _mm256_setr_epi64x(0x0000000000000000ll, 0x0101010101010101ll, 0x0202020202020202ll, 0x0303030303030303ll);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    const __m256i sel = _mm256_set1_epi64x((long long)0x7fbfdfeff7fbfdfeull);
    v = _mm256_or_si256(v, sel);
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles
 * (the order of the 32-element block types). */
KERN_INLINE __m256i kern__nibbles_32(const uint8_t *p)
{
    /* Broadcast-load both halves (no ALU op), shift only the high half:
     * two ALU ops instead of shift + insert + and. */
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    both = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

KERN_INLINE uint32_t kern__load_u32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/*
 * Decode (one activation row) streams the weights from memory once: rows
 * are walked one after another and the tiles prefetch KERN__PF_DIST bytes
 * ahead in that stream. Measured on Zen 3 for a 178 MB Q8_0 matrix, one
 * thread: 12 GB/s on the hardware prefetcher alone, 16 GB/s with this
 * (the read-only bandwidth is ~17 GB/s); four rows side by side, which
 * computes faster from cache, reached only 10 GB/s from memory.
 */
#define KERN__PF_DIST 4096

KERN_INLINE void kern__prefetch_lines(const char *p, int bytes)
{
    for (int o = 0; o < bytes; o += 64)
        _mm_prefetch(p + o, _MM_HINT_T0);
}

/* The exported tile entry for a type whose tile kernel is tile_##T(NW, NX,
 * nb, w, ws, x, xs, xd, y, ldy): decode (one activation row) walks weight
 * rows one after another for the prefetch; otherwise each weight row is
 * dotted against up to 8 activation rows with a tile specialised for NX.
 * NB is the block count expression in terms of n. */
#define DOT_ENTRY(T, NB)                                                                                               \
    void kern__dot_##T##_avx2(int64_t n, const struct kern__tile *t)                                                   \
    {                                                                                                                  \
        int64_t nb = (NB);                                                                                             \
        const char *w = t->w, *x = t->x;                                                                               \
        if (t->nx == 1) {                                                                                              \
            /* Decode: one weight row after another (see KERN__PF_DIST). */                                            \
            for (int i = 0; i < t->nw; i++)                                                                            \
                tile_##T(1, 1, nb, w + (size_t)i * t->ws, t->ws, x, t->xs, t->xd, t->y + i, t->ldy);                   \
            return;                                                                                                    \
        }                                                                                                              \
        for (int i = 0; i < t->nw; i++) {                                                                              \
            const char *wi = w + (size_t)i * t->ws;                                                                    \
            float *yi = t->y + i;                                                                                      \
            switch (t->nx) {                                                                                           \
            case 2:                                                                                                    \
                tile_##T(1, 2, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            case 3:                                                                                                    \
                tile_##T(1, 3, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            case 4:                                                                                                    \
                tile_##T(1, 4, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            case 5:                                                                                                    \
                tile_##T(1, 5, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            case 6:                                                                                                    \
                tile_##T(1, 6, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            case 7:                                                                                                    \
                tile_##T(1, 7, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            default:                                                                                                   \
                tile_##T(1, 8, nb, wi, t->ws, x, t->xs, t->xd, yi, t->ldy);                                            \
                break;                                                                                                 \
            }                                                                                                          \
        }                                                                                                              \
    }
