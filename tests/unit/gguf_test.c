/*
 * GGUF reader tests: a valid file built in memory by a tiny writer below,
 * then many corrupted variants of it (truncations at every offset, huge
 * counts, bad type ids, bad alignment, overlapping or out-of-range tensors,
 * wrong magic/version). Each must fail with a precise message and, under
 * the ASan+UBSan build, without any sanitizer report.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf/gguf.h"

/* ---- a minimal GGUF writer ---------------------------------------------- */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(struct buf *b, float v) { put(b, &v, 4); }
static void put_str(struct buf *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad_to(struct buf *b, size_t align)
{
    static const uint8_t z[64];
    while (b->n % align)
        put(b, z, 1);
}

/* Offsets of interesting fields in the file build_valid() writes. */
struct layout {
    size_t n_tensors_at, n_kv_at;
    size_t kv0_type_at;  /* type of general.architecture */
    size_t arr_type_at;  /* element type of the token array */
    size_t arr_count_at; /* count of the token array */
    size_t str_len_at;   /* length of the first array string */
    size_t align_val_at; /* value of general.alignment */
    size_t t0_ndims_at, t0_dim0_at, t0_type_at, t0_off_at;
    size_t t1_type_at, t1_off_at, t1_name_at;
    size_t data_at;
};

/* A valid v3 file: 5 metadata pairs and 2 tensors. */
static struct buf build_valid(struct layout *L, uint32_t version)
{
    struct buf b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, version);
    L->n_tensors_at = b.n;
    put_u64(&b, 2);
    L->n_kv_at = b.n;
    put_u64(&b, 5);

    put_str(&b, "general.architecture");
    L->kv0_type_at = b.n;
    put_u32(&b, GGUF_VTYPE_STRING);
    put_str(&b, "llama");

    put_str(&b, "llama.block_count");
    put_u32(&b, GGUF_VTYPE_UINT32);
    put_u32(&b, 22);

    put_str(&b, "tokenizer.ggml.tokens");
    put_u32(&b, GGUF_VTYPE_ARRAY);
    L->arr_type_at = b.n;
    put_u32(&b, GGUF_VTYPE_STRING);
    L->arr_count_at = b.n;
    put_u64(&b, 3);
    L->str_len_at = b.n;
    put_str(&b, "<s>");
    put_str(&b, "hello");
    put_str(&b, "");

    put_str(&b, "tokenizer.ggml.scores");
    put_u32(&b, GGUF_VTYPE_ARRAY);
    put_u32(&b, GGUF_VTYPE_FLOAT32);
    put_u64(&b, 3);
    put_f32(&b, 0.0f);
    put_f32(&b, -1.5f);
    put_f32(&b, 2.25f);

    put_str(&b, "general.alignment");
    put_u32(&b, GGUF_VTYPE_UINT32);
    L->align_val_at = b.n;
    put_u32(&b, 32);

    /* tensor 0: F32 [4, 2] at 0 (32 bytes) */
    put_str(&b, "a.weight");
    L->t0_ndims_at = b.n;
    put_u32(&b, 2);
    L->t0_dim0_at = b.n;
    put_u64(&b, 4);
    put_u64(&b, 2);
    L->t0_type_at = b.n;
    put_u32(&b, GGUF_DTYPE_F32);
    L->t0_off_at = b.n;
    put_u64(&b, 0);
    /* tensor 1: Q8_0 [32, 2] at 32 (68 bytes) */
    L->t1_name_at = b.n;
    put_str(&b, "b.weight");
    put_u32(&b, 2);
    put_u64(&b, 32);
    put_u64(&b, 2);
    L->t1_type_at = b.n;
    put_u32(&b, GGUF_DTYPE_Q8_0);
    L->t1_off_at = b.n;
    put_u64(&b, 32);

    pad_to(&b, 32);
    L->data_at = b.n;
    for (int i = 0; i < 8; i++)
        put_f32(&b, (float)i);
    uint8_t q[68];
    for (int i = 0; i < 68; i++)
        q[i] = (uint8_t)i;
    put(&b, q, sizeof q);
    return b;
}

static void patch_u32(struct buf *b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }
static void patch_u64(struct buf *b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }

/* Opens b and expects failure whose message contains every given substring. */
static void expect_fail(const struct buf *b, size_t size, const char *must1, const char *must2)
{
    struct gguf_file *f = NULL;
    struct lmd_err err = {0};
    int rc = gguf_open_memory(&f, b->p, size, "t.gguf", &err);
    if (rc == 0) {
        gguf_close(f);
        fail_msg("expected failure containing '%s', file opened", must1);
    }
    assert_null(f);
    assert_true(rc < 0);
    assert_int_equal(err.code, rc);
    if (strncmp(err.msg, "t.gguf: ", 8) != 0)
        fail_msg("message does not name the file: %s", err.msg);
    if (must1 && !strstr(err.msg, must1))
        fail_msg("message lacks '%s': %s", must1, err.msg);
    if (must2 && !strstr(err.msg, must2))
        fail_msg("message lacks '%s': %s", must2, err.msg);
}

/* ---- tests -------------------------------------------------------------- */

static void test_valid(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    struct gguf_file *f;
    struct lmd_err err = {0};
    assert_int_equal(gguf_open_memory(&f, b.p, b.n, "t.gguf", &err), 0);
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_n_kv(f), 5);
    assert_int_equal(gguf_n_tensors(f), 2);
    assert_int_equal(gguf_alignment(f), 32);
    assert_int_equal(gguf_data_offset(f), L.data_at);

    struct gguf_str s;
    assert_int_equal(gguf_get_str(f, "general.architecture", &s, &err), 0);
    assert_true(gguf_str_eq(s, "llama"));
    uint32_t u;
    assert_int_equal(gguf_get_u32(f, "llama.block_count", &u, &err), 0);
    assert_int_equal(u, 22);
    int32_t i32;
    assert_int_equal(gguf_get_i32(f, "llama.block_count", &i32, &err), 0);
    assert_int_equal(i32, 22);
    float fl;
    assert_int_equal(gguf_get_f32(f, "llama.block_count", &fl, &err), 0);
    assert_true(fl == 22.0f);
    assert_int_equal(gguf_get_u32(f, "missing.key", &u, &err), LMD_ENOENT);
    /* A type mismatch is an error with a message, not a silent default. */
    assert_int_equal(gguf_get_u32(f, "general.architecture", &u, &err), LMD_EFORMAT);
    assert_non_null(strstr(err.msg, "general.architecture"));
    assert_non_null(strstr(err.msg, "STRING"));

    const struct gguf_kv *kv;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_VTYPE_STRING, &kv, &err), 0);
    assert_int_equal(kv->arr_n, 3);
    assert_true(gguf_str_eq(gguf_arr_str(kv, 0), "<s>"));
    assert_true(gguf_str_eq(gguf_arr_str(kv, 1), "hello"));
    assert_true(gguf_str_eq(gguf_arr_str(kv, 2), ""));
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_VTYPE_FLOAT32, &kv, &err), LMD_EFORMAT);
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.scores", GGUF_VTYPE_FLOAT32, &kv, &err), 0);
    assert_true(gguf_arr_f32(kv, 1) == -1.5f);
    assert_true(gguf_arr_f32(kv, 2) == 2.25f);

    const struct gguf_tensor *t = gguf_tensor_find(f, "a.weight");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_DTYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[1], 2);
    assert_int_equal(t->n_elements, 8);
    assert_int_equal(t->n_bytes, 32);
    assert_true(((const float *)t->data)[5] == 5.0f);
    t = gguf_tensor_find(f, "b.weight");
    assert_non_null(t);
    assert_int_equal(t->n_bytes, 68);
    assert_int_equal(((const uint8_t *)t->data)[67], 67);
    assert_null(gguf_tensor_find(f, "c.weight"));
    gguf_close(f);
    free(b.p);
}

static void test_version2(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 2);
    struct gguf_file *f;
    struct lmd_err err = {0};
    assert_int_equal(gguf_open_memory(&f, b.p, b.n, "t.gguf", &err), 0);
    assert_int_equal(gguf_version(f), 2);
    gguf_close(f);
    free(b.p);
}

/* Every strict prefix of a valid file must be refused, never read past. */
static void test_truncated_everywhere(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    for (size_t n = 0; n < b.n; n++) {
        /* Copy into an exact-size heap block so ASan catches any overread. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b.p, n);
        struct gguf_file *f = NULL;
        struct lmd_err err = {0};
        int rc = gguf_open_memory(&f, p, n, "t.gguf", &err);
        if (rc == 0)
            fail_msg("prefix of %zu/%zu bytes opened", n, b.n);
        assert_int_equal(rc, LMD_EFORMAT);
        assert_true(strstr(err.msg, "offset") != NULL);
        free(p);
    }
    free(b.p);
}

static void test_bad_magic_and_version(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    expect_fail(&b, 0, "file is empty", NULL);
    b.p[0] = 'X';
    expect_fail(&b, b.n, "offset 0", "not a GGUF file");
    b.p[0] = 'G';
    patch_u32(&b, 4, 1);
    expect_fail(&b, b.n, "version 1 is not supported", NULL);
    patch_u32(&b, 4, 7);
    expect_fail(&b, b.n, "unsupported GGUF version 7", NULL);
    patch_u32(&b, 4, __builtin_bswap32(3));
    expect_fail(&b, b.n, "big-endian", NULL);
    free(b.p);
}

static void test_huge_counts(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    patch_u64(&b, L.n_kv_at, UINT64_C(1) << 60);
    expect_fail(&b, b.n, "metadata count", "cannot fit");
    patch_u64(&b, L.n_kv_at, 5);
    patch_u64(&b, L.n_tensors_at, UINT64_MAX);
    expect_fail(&b, b.n, "tensor count", "cannot fit");
    patch_u64(&b, L.n_tensors_at, 2);
    patch_u64(&b, L.arr_count_at, UINT64_C(1) << 62);
    expect_fail(&b, b.n, "tokenizer.ggml.tokens", "strings cannot fit");
    patch_u64(&b, L.arr_count_at, 3);
    patch_u64(&b, L.str_len_at, UINT64_MAX - 3);
    expect_fail(&b, b.n, "array string 0 length", "exceeds");
    patch_u64(&b, L.str_len_at, 3);
    /* Claim more tensors than are described: the third read runs out. */
    patch_u64(&b, L.n_tensors_at, 3);
    expect_fail(&b, b.n, NULL, NULL);
    free(b.p);
}

static void test_bad_type_ids(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    patch_u32(&b, L.kv0_type_at, 13);
    expect_fail(&b, b.n, "general.architecture", "invalid value type 13");
    patch_u32(&b, L.kv0_type_at, GGUF_VTYPE_STRING);
    patch_u32(&b, L.arr_type_at, 99);
    expect_fail(&b, b.n, "invalid array element type 99", NULL);
    patch_u32(&b, L.arr_type_at, GGUF_VTYPE_ARRAY);
    expect_fail(&b, b.n, "arrays of arrays", NULL);
    patch_u32(&b, L.arr_type_at, GGUF_VTYPE_STRING);
    patch_u32(&b, L.t0_type_at, 4); /* a retired ggml type id */
    expect_fail(&b, b.n, "'a.weight'", "unknown tensor type id 4");
    patch_u32(&b, L.t0_type_at, 1000);
    expect_fail(&b, b.n, "unknown tensor type id 1000", NULL);
    patch_u32(&b, L.t0_type_at, GGUF_DTYPE_Q4_0); /* 4 elements is not a multiple of 32 */
    expect_fail(&b, b.n, "row length 4 is not a multiple", "Q4_0");
    free(b.p);
}

static void test_bad_shapes(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    patch_u32(&b, L.t0_ndims_at, 0);
    expect_fail(&b, b.n, "0 dimensions", NULL);
    patch_u32(&b, L.t0_ndims_at, 5);
    expect_fail(&b, b.n, "5 dimensions", NULL);
    patch_u32(&b, L.t0_ndims_at, 2);
    patch_u64(&b, L.t0_dim0_at, 0);
    expect_fail(&b, b.n, "dimension 0 is 0", NULL);
    patch_u64(&b, L.t0_dim0_at, UINT64_C(1) << 62); /* 2^62 * 2 elements: size overflows */
    expect_fail(&b, b.n, "'a.weight'", NULL);
    /* One row of 2^62 f32 is 2^64 bytes, which wrapped to 0 and was then
     * divided by (found by gguf_fuzz): refused as an overflow. */
    patch_u64(&b, L.t0_dim0_at + 8, 1);
    expect_fail(&b, b.n, "'a.weight'", "byte size overflows");
    free(b.p);
}

static void test_bad_alignment(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    patch_u32(&b, L.align_val_at, 0);
    expect_fail(&b, b.n, "general.alignment 0 is not a power of two", NULL);
    patch_u32(&b, L.align_val_at, 48);
    expect_fail(&b, b.n, "general.alignment 48", NULL);
    patch_u32(&b, L.align_val_at, 32);
    patch_u64(&b, L.t1_off_at, 36);
    expect_fail(&b, b.n, "'b.weight'", "not a multiple of the alignment 32");
    free(b.p);
}

static void test_tensor_extents(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    /* b.weight (68 bytes) at 0 overlaps a.weight (32 bytes) at 0. */
    patch_u64(&b, L.t1_off_at, 0);
    expect_fail(&b, b.n, "overlaps", NULL);
    /* Past the end of the data section. */
    patch_u64(&b, L.t1_off_at, 64);
    expect_fail(&b, b.n, "'b.weight'", "runs past the end");
    patch_u64(&b, L.t1_off_at, UINT64_MAX & ~UINT64_C(31));
    expect_fail(&b, b.n, "runs past the end", NULL);
    patch_u64(&b, L.t1_off_at, 32);
    /* Data cut short by one byte. */
    expect_fail(&b, b.n - 1, "'b.weight'", "runs past the end");
    free(b.p);
}

static void test_duplicates(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    /* Rename tensor 1 to "a.weight" (same length as "b.weight"). */
    b.p[L.t1_name_at + 8] = 'a';
    expect_fail(&b, b.n, "duplicate tensor name 'a.weight'", NULL);
    b.p[L.t1_name_at + 8] = 'b';
    /* Make the second key equal the first: "llama.block_count" -> too
     * different in length, so build a file with a repeated key instead. */
    struct buf d = {0};
    put(&d, "GGUF", 4);
    put_u32(&d, 3);
    put_u64(&d, 0);
    put_u64(&d, 2);
    put_str(&d, "k");
    put_u32(&d, GGUF_VTYPE_UINT8);
    uint8_t one = 1;
    put(&d, &one, 1);
    put_str(&d, "k");
    put_u32(&d, GGUF_VTYPE_BOOL);
    put(&d, &one, 1);
    expect_fail(&d, d.n, "duplicate metadata key 'k'", NULL);
    /* A BOOL that is neither 0 nor 1. */
    d.p[d.n - 1] = 7;
    expect_fail(&d, d.n, "expected 0 or 1", NULL);
    free(d.p);
    free(b.p);
}

/* Random byte flips must never crash or read out of bounds. */
static void test_random_corruption(void **state)
{
    (void)state;
    struct layout L;
    struct buf b = build_valid(&L, 3);
    uint64_t seed = 0x9E3779B97F4A7C15u;
    int opened = 0;
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t *p = malloc(b.n);
        memcpy(p, b.p, b.n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            size_t at = (size_t)(seed % L.data_at); /* corrupt the header region */
            p[at] = (uint8_t)(seed >> 32);
        }
        struct gguf_file *f = NULL;
        struct lmd_err err = {0};
        if (gguf_open_memory(&f, p, b.n, "t.gguf", &err) == 0) {
            opened++;
            /* Whatever opened must be internally consistent. */
            for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
                const struct gguf_tensor *t = gguf_tensor_at(f, i);
                assert_true((const uint8_t *)t->data + t->n_bytes <= p + b.n);
            }
            gguf_close(f);
        } else {
            assert_true(err.msg[0] != 0);
        }
        free(p);
    }
    print_message("random corruption: %d of 20000 variants still valid\n", opened);
    free(b.p);
}

static void test_open_errors(void **state)
{
    (void)state;
    struct gguf_file *f;
    struct lmd_err err = {0};
    assert_int_equal(gguf_open(&f, "/nonexistent/model.gguf", &err), LMD_ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf: cannot open"));
    assert_int_equal(gguf_open(&f, "/tmp", &err), LMD_EINVAL);
    char path[] = "/tmp/lmd-gguf-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gguf_open(&f, path, &err), LMD_EFORMAT);
    assert_non_null(strstr(err.msg, "file is empty"));
    unlink(path);
}

/* The real default model, when it has been fetched. */
static void test_default_model(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/default.gguf", LMD_SOURCE_DIR);
    if (access(path, R_OK) != 0) {
        print_message("%s missing: run `make model`\n", path);
        fail();
    }
    struct gguf_file *f;
    struct lmd_err err = {0};
    assert_int_equal(gguf_open(&f, path, &err), 0);
    struct gguf_str arch;
    assert_int_equal(gguf_get_str(f, "general.architecture", &arch, &err), 0);
    assert_true(gguf_str_eq(arch, "gemma3"));
    assert_int_equal(gguf_n_tensors(f), 236);
    uint32_t n;
    assert_int_equal(gguf_get_u32(f, "gemma3.block_count", &n, &err), 0);
    assert_int_equal(n, 18);
    const struct gguf_tensor *t = gguf_tensor_find(f, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_DTYPE_Q8_0);
    assert_int_equal(t->ne[0], 640);
    assert_int_equal(t->ne[1], 262144);
    const struct gguf_kv *kv;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_VTYPE_STRING, &kv, &err), 0);
    assert_int_equal(kv->arr_n, 262144);
    assert_true(gguf_str_eq(gguf_arr_str(kv, 2), "<bos>"));
    gguf_close(f);
}

static void test_dtype_table(void **state)
{
    (void)state;
    assert_string_equal(gguf_dtype_name(GGUF_DTYPE_Q4_K), "Q4_K");
    assert_int_equal(gguf_dtype_block_elems(GGUF_DTYPE_Q4_K), 256);
    assert_int_equal(gguf_dtype_block_bytes(GGUF_DTYPE_Q4_K), 144);
    assert_int_equal(gguf_dtype_block_bytes(GGUF_DTYPE_Q6_K), 210);
    assert_int_equal(gguf_dtype_block_bytes(GGUF_DTYPE_Q5_0), 22);
    assert_int_equal(gguf_dtype_row_bytes(GGUF_DTYPE_Q8_0, 640), 680);
    assert_int_equal(gguf_dtype_row_bytes(GGUF_DTYPE_Q8_0, 33), 0);
    assert_false(gguf_dtype_valid(4));
    assert_false(gguf_dtype_valid(5));
    assert_false(gguf_dtype_valid(GGUF_DTYPE_COUNT));
    assert_null(gguf_dtype_name((enum gguf_dtype)31));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_version2),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_bad_type_ids),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_tensor_extents),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_random_corruption),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_default_model),
        cmocka_unit_test(test_dtype_table),
    };
    return cmocka_run_group_tests_name("gguf", tests, NULL, NULL);
}
