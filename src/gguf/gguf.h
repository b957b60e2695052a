/*
 * GGUF reader: maps a model file read-only and exposes its metadata and
 * tensor table as views into the mapping.
 *
 * Every count, length, offset and size in the file is checked against the
 * file's size before it is used, so a truncated or hostile file yields one
 * precise error line ("FILE: offset N: what is wrong") and never an
 * out-of-bounds read. Versions 2 and 3 are read; version 1 and big-endian
 * files are refused with a message that says so.
 *
 * Lifetime: process. Strings and tensor data returned by the accessors point
 * into the mapping (or the caller's buffer for gguf_open_memory) and stay
 * valid until gguf_close(). Strings from the file are NOT NUL-terminated;
 * they come as (ptr, len) views. Keys and tensor names are additionally
 * available NUL-terminated (copied once at open).
 *
 * This is not a writer, and it does not interpret the model: model/ does.
 */
#pragma once

#include "core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as numbered on disk (append-only). */
enum gguf_vtype {
    GGUF_VTYPE_UINT8 = 0,
    GGUF_VTYPE_INT8 = 1,
    GGUF_VTYPE_UINT16 = 2,
    GGUF_VTYPE_INT16 = 3,
    GGUF_VTYPE_UINT32 = 4,
    GGUF_VTYPE_INT32 = 5,
    GGUF_VTYPE_FLOAT32 = 6,
    GGUF_VTYPE_BOOL = 7,
    GGUF_VTYPE_STRING = 8,
    GGUF_VTYPE_ARRAY = 9,
    GGUF_VTYPE_UINT64 = 10,
    GGUF_VTYPE_INT64 = 11,
    GGUF_VTYPE_FLOAT64 = 12,
    GGUF_VTYPE_COUNT,
};

/* Tensor data types, numbered as ggml numbers them on disk (append-only;
 * the gaps are ids that ggml retired). */
enum gguf_dtype {
    GGUF_DTYPE_F32 = 0,
    GGUF_DTYPE_F16 = 1,
    GGUF_DTYPE_Q4_0 = 2,
    GGUF_DTYPE_Q4_1 = 3,
    GGUF_DTYPE_Q5_0 = 6,
    GGUF_DTYPE_Q5_1 = 7,
    GGUF_DTYPE_Q8_0 = 8,
    GGUF_DTYPE_Q8_1 = 9,
    GGUF_DTYPE_Q2_K = 10,
    GGUF_DTYPE_Q3_K = 11,
    GGUF_DTYPE_Q4_K = 12,
    GGUF_DTYPE_Q5_K = 13,
    GGUF_DTYPE_Q6_K = 14,
    GGUF_DTYPE_Q8_K = 15,
    GGUF_DTYPE_IQ2_XXS = 16,
    GGUF_DTYPE_IQ2_XS = 17,
    GGUF_DTYPE_IQ3_XXS = 18,
    GGUF_DTYPE_IQ1_S = 19,
    GGUF_DTYPE_IQ4_NL = 20,
    GGUF_DTYPE_IQ3_S = 21,
    GGUF_DTYPE_IQ2_S = 22,
    GGUF_DTYPE_IQ4_XS = 23,
    GGUF_DTYPE_I8 = 24,
    GGUF_DTYPE_I16 = 25,
    GGUF_DTYPE_I32 = 26,
    GGUF_DTYPE_I64 = 27,
    GGUF_DTYPE_F64 = 28,
    GGUF_DTYPE_IQ1_M = 29,
    GGUF_DTYPE_BF16 = 30,
    GGUF_DTYPE_TQ1_0 = 34,
    GGUF_DTYPE_TQ2_0 = 35,
    GGUF_DTYPE_MXFP4 = 39,
    GGUF_DTYPE_COUNT = 40,
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* A string view into the file. Not NUL-terminated. */
struct gguf_str {
    const char *ptr;
    uint64_t len; /* bytes */
};

struct gguf_kv {
    const char *key; /* NUL-terminated copy */
    enum gguf_vtype type;
    union {
        uint64_t u64; /* any unsigned integer type, widened */
        int64_t i64;  /* any signed integer type, widened */
        double f64;   /* FLOAT32 or FLOAT64, widened */
        bool b;
        struct gguf_str str;
    } v; /* valid unless type == ARRAY */
    /* ARRAY only: */
    enum gguf_vtype arr_type;
    uint64_t arr_n;              /* elements */
    const uint8_t *arr_data;     /* first element, in the file */
    const uint64_t *arr_str_off; /* STRING arrays: [arr_n] offsets of each length prefix from arr_data */
    uint64_t file_offset;        /* where this pair starts, bytes */
};

struct gguf_tensor {
    const char *name; /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* elements per dimension, ne[0] varies fastest; unused dims are 1 */
    enum gguf_dtype type;
    uint64_t offset;  /* bytes, relative to the data section */
    uint64_t n_bytes; /* bytes of data */
    const void *data; /* in the mapping */
    uint64_t n_elements;
};

struct gguf_file;

/* Map and validate `path`. On failure returns a negative LMD_E* code and
 * fills `err` with "PATH: offset N: problem". */
int gguf_open(struct gguf_file **out, const char *path, struct lmd_err *err);

/* Validate an in-memory image (tests, fuzzing). `buf` must outlive the
 * returned file; `name` is used in error messages. */
int gguf_open_memory(struct gguf_file **out, const void *buf, size_t size, const char *name, struct lmd_err *err);

void gguf_close(struct gguf_file *f);

const char *gguf_path(const struct gguf_file *f);
uint32_t gguf_version(const struct gguf_file *f);
uint64_t gguf_file_size(const struct gguf_file *f);   /* bytes */
uint64_t gguf_data_offset(const struct gguf_file *f); /* bytes from file start to the data section */
uint32_t gguf_alignment(const struct gguf_file *f);   /* bytes */

uint64_t gguf_n_kv(const struct gguf_file *f);
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, uint64_t i);
const struct gguf_kv *gguf_kv_find(const struct gguf_file *f, const char *key); /* NULL if absent */

uint64_t gguf_n_tensors(const struct gguf_file *f);
const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, uint64_t i);
const struct gguf_tensor *gguf_tensor_find(const struct gguf_file *f, const char *name); /* NULL if absent */

/* Typed getters with checked conversion. They return 0, LMD_ENOENT when the
 * key is absent (err untouched, so optional keys are easy), or LMD_EFORMAT
 * with a message when the key has an incompatible type or out-of-range value.
 * Integer getters accept any integer type whose value fits. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, struct lmd_err *err);
int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out, struct lmd_err *err);
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out, struct lmd_err *err);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, struct lmd_err *err);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, struct lmd_err *err);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, struct lmd_err *err);
/* An array of `type` elements; `*out` points at the kv. */
int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype type, const struct gguf_kv **out,
                 struct lmd_err *err);

/* Element i of an array kv. The caller checks i < arr_n and the type. */
struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i);
float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i);
int32_t gguf_arr_i32(const struct gguf_kv *kv, uint64_t i);
/* Any integer array element, widened (signed types sign-extended). */
int64_t gguf_arr_int(const struct gguf_kv *kv, uint64_t i);

/* True if `s` equals the NUL-terminated `cstr`. */
bool gguf_str_eq(struct gguf_str s, const char *cstr);

const char *gguf_vtype_name(enum gguf_vtype t); /* "UINT32", …; "?" if unknown */
size_t gguf_vtype_size(enum gguf_vtype t);      /* bytes of a scalar; 0 for STRING/ARRAY/unknown */

/* Tensor data types: name ("Q4_K"), elements per block, bytes per block.
 * Unknown or retired ids have a NULL name and zero sizes. */
const char *gguf_dtype_name(enum gguf_dtype t);
uint32_t gguf_dtype_block_elems(enum gguf_dtype t);
uint32_t gguf_dtype_block_bytes(enum gguf_dtype t);
bool gguf_dtype_valid(uint32_t id);
/* Bytes of a row of `n` elements; 0 if n is not a multiple of the block. */
uint64_t gguf_dtype_row_bytes(enum gguf_dtype t, uint64_t n);
