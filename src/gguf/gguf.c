/*
 * GGUF reader (see gguf.h).
 *
 * Parsing walks the file with a bounds-checked cursor: every read first
 * checks that the bytes exist, and every count is checked against the bytes
 * that remain before anything is allocated for it, so a header that claims
 * 2^60 tensors fails with a message instead of an allocation of 2^66 bytes.
 * After the header, the tensor table is checked as a whole: each tensor's
 * shape, type, alignment and extent, and that no two tensors overlap.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as little-endian u32 */

struct gguf_file {
    char *path;
    const uint8_t *base; /* [size] whole file */
    uint64_t size;       /* bytes */
    bool mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    struct gguf_kv *kv; /* [n_kv] */
    uint64_t n_tensors;
    struct gguf_tensor *tensors; /* [n_tensors] */
    char *names;                 /* NUL-terminated keys and tensor names, one allocation */
};

struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    const char *name;
    struct lmd_err *err;
};

static const struct {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} dtype_info[GGUF_DTYPE_COUNT] = {
    [GGUF_DTYPE_F32] = {"F32", 1, 4},
    [GGUF_DTYPE_F16] = {"F16", 1, 2},
    [GGUF_DTYPE_Q4_0] = {"Q4_0", 32, 18},
    [GGUF_DTYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGUF_DTYPE_Q5_0] = {"Q5_0", 32, 22},
    [GGUF_DTYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGUF_DTYPE_Q8_0] = {"Q8_0", 32, 34},
    [GGUF_DTYPE_Q8_1] = {"Q8_1", 32, 36},
    [GGUF_DTYPE_Q2_K] = {"Q2_K", 256, 84},
    [GGUF_DTYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGUF_DTYPE_Q4_K] = {"Q4_K", 256, 144},
    [GGUF_DTYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGUF_DTYPE_Q6_K] = {"Q6_K", 256, 210},
    [GGUF_DTYPE_Q8_K] = {"Q8_K", 256, 292},
    [GGUF_DTYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66},
    [GGUF_DTYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
    [GGUF_DTYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98},
    [GGUF_DTYPE_IQ1_S] = {"IQ1_S", 256, 50},
    [GGUF_DTYPE_IQ4_NL] = {"IQ4_NL", 32, 18},
    [GGUF_DTYPE_IQ3_S] = {"IQ3_S", 256, 110},
    [GGUF_DTYPE_IQ2_S] = {"IQ2_S", 256, 82},
    [GGUF_DTYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
    [GGUF_DTYPE_I8] = {"I8", 1, 1},
    [GGUF_DTYPE_I16] = {"I16", 1, 2},
    [GGUF_DTYPE_I32] = {"I32", 1, 4},
    [GGUF_DTYPE_I64] = {"I64", 1, 8},
    [GGUF_DTYPE_F64] = {"F64", 1, 8},
    [GGUF_DTYPE_IQ1_M] = {"IQ1_M", 256, 56},
    [GGUF_DTYPE_BF16] = {"BF16", 1, 2},
    [GGUF_DTYPE_TQ1_0] = {"TQ1_0", 256, 54},
    [GGUF_DTYPE_TQ2_0] = {"TQ2_0", 256, 66},
    [GGUF_DTYPE_MXFP4] = {"MXFP4", 32, 17},
};

bool gguf_dtype_valid(uint32_t id) { return id < GGUF_DTYPE_COUNT && dtype_info[id].name != NULL; }

const char *gguf_dtype_name(enum gguf_dtype t) { return gguf_dtype_valid((uint32_t)t) ? dtype_info[t].name : NULL; }

uint32_t gguf_dtype_block_elems(enum gguf_dtype t)
{
    return gguf_dtype_valid((uint32_t)t) ? dtype_info[t].block_elems : 0;
}

uint32_t gguf_dtype_block_bytes(enum gguf_dtype t)
{
    return gguf_dtype_valid((uint32_t)t) ? dtype_info[t].block_bytes : 0;
}

uint64_t gguf_dtype_row_bytes(enum gguf_dtype t, uint64_t n)
{
    uint32_t be = gguf_dtype_block_elems(t);
    if (be == 0 || n % be != 0)
        return 0;
    uint32_t bb = gguf_dtype_block_bytes(t);
    if (n / be > UINT64_MAX / bb)
        return 0; /* would wrap: no row that long can exist */
    return n / be * bb;
}

static const char *vtype_names[GGUF_VTYPE_COUNT] = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
};

const char *gguf_vtype_name(enum gguf_vtype t) { return (unsigned)t < GGUF_VTYPE_COUNT ? vtype_names[t] : "?"; }

size_t gguf_vtype_size(enum gguf_vtype t)
{
    switch (t) {
    case GGUF_VTYPE_UINT8:
    case GGUF_VTYPE_INT8:
    case GGUF_VTYPE_BOOL:
        return 1;
    case GGUF_VTYPE_UINT16:
    case GGUF_VTYPE_INT16:
        return 2;
    case GGUF_VTYPE_UINT32:
    case GGUF_VTYPE_INT32:
    case GGUF_VTYPE_FLOAT32:
        return 4;
    case GGUF_VTYPE_UINT64:
    case GGUF_VTYPE_INT64:
    case GGUF_VTYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

/* ---- bounds-checked cursor ---------------------------------------------- */

static int cur_fail(struct cursor *c, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int cur_fail(struct cursor *c, uint64_t at, const char *fmt, ...)
{
    char what[LMD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return lmd_err_set(c->err, LMD_EFORMAT, "%s: offset %llu: %s", c->name, (unsigned long long)at, what);
}

static uint64_t cur_left(const struct cursor *c) { return c->size - c->pos; }

static int cur_need(struct cursor *c, uint64_t n, const char *what)
{
    if (n > cur_left(c))
        return cur_fail(c, c->pos, "file truncated: %s needs %llu bytes, only %llu remain", what, (unsigned long long)n,
                        (unsigned long long)cur_left(c));
    return 0;
}

static int cur_u32(struct cursor *c, uint32_t *out, const char *what)
{
    int rc = cur_need(c, 4, what);
    if (rc)
        return rc;
    memcpy(out, c->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int cur_u64(struct cursor *c, uint64_t *out, const char *what)
{
    int rc = cur_need(c, 8, what);
    if (rc)
        return rc;
    memcpy(out, c->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int cur_str(struct cursor *c, struct gguf_str *out, const char *what)
{
    uint64_t at = c->pos;
    uint64_t len;
    int rc = cur_u64(c, &len, what);
    if (rc)
        return rc;
    if (len > cur_left(c))
        return cur_fail(c, at, "%s length %llu exceeds the %llu bytes left in the file", what, (unsigned long long)len,
                        (unsigned long long)cur_left(c));
    out->ptr = (const char *)(c->base + c->pos);
    out->len = len;
    c->pos += len;
    return 0;
}

/* ---- metadata ----------------------------------------------------------- */

static int read_scalar(struct cursor *c, enum gguf_vtype t, struct gguf_kv *kv)
{
    size_t sz = gguf_vtype_size(t);
    int rc = cur_need(c, sz, "metadata value");
    if (rc)
        return rc;
    const uint8_t *p = c->base + c->pos;
    switch (t) {
    case GGUF_VTYPE_UINT8:
        kv->v.u64 = p[0];
        break;
    case GGUF_VTYPE_INT8:
        kv->v.i64 = (int8_t)p[0];
        break;
    case GGUF_VTYPE_BOOL:
        if (p[0] > 1)
            return cur_fail(c, c->pos, "BOOL value of '%s' is %u, expected 0 or 1", kv->key ? kv->key : "?", p[0]);
        kv->v.b = p[0] != 0;
        break;
    case GGUF_VTYPE_UINT16: {
        uint16_t x;
        memcpy(&x, p, 2);
        kv->v.u64 = x;
        break;
    }
    case GGUF_VTYPE_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        kv->v.i64 = x;
        break;
    }
    case GGUF_VTYPE_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        kv->v.u64 = x;
        break;
    }
    case GGUF_VTYPE_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        kv->v.i64 = x;
        break;
    }
    case GGUF_VTYPE_FLOAT32: {
        float x;
        memcpy(&x, p, 4);
        kv->v.f64 = x;
        break;
    }
    case GGUF_VTYPE_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        kv->v.u64 = x;
        break;
    }
    case GGUF_VTYPE_INT64: {
        int64_t x;
        memcpy(&x, p, 8);
        kv->v.i64 = x;
        break;
    }
    case GGUF_VTYPE_FLOAT64: {
        double x;
        memcpy(&x, p, 8);
        kv->v.f64 = x;
        break;
    }
    default:
        LMD_ASSERT(0, "read_scalar: not a scalar type");
    }
    c->pos += sz;
    return 0;
}

static int read_array(struct cursor *c, struct gguf_kv *kv, const char *key)
{
    uint64_t at = c->pos;
    uint32_t et;
    uint64_t n;
    int rc = cur_u32(c, &et, "array element type");
    if (rc)
        return rc;
    if (et == GGUF_VTYPE_ARRAY)
        return cur_fail(c, at, "key '%s': arrays of arrays are not supported", key);
    if (et >= GGUF_VTYPE_COUNT)
        return cur_fail(c, at, "key '%s': invalid array element type %u (valid: 0..%d)", key, et, GGUF_VTYPE_COUNT - 1);
    rc = cur_u64(c, &n, "array length");
    if (rc)
        return rc;
    kv->arr_type = (enum gguf_vtype)et;
    kv->arr_n = n;
    kv->arr_data = c->base + c->pos;
    if (et != GGUF_VTYPE_STRING) {
        uint64_t es = gguf_vtype_size((enum gguf_vtype)et);
        if (n > cur_left(c) / es)
            return cur_fail(c, at, "key '%s': array of %llu %s elements needs %llu bytes, only %llu remain", key,
                            (unsigned long long)n, gguf_vtype_name((enum gguf_vtype)et),
                            (unsigned long long)(n > UINT64_MAX / es ? UINT64_MAX : n * es),
                            (unsigned long long)cur_left(c));
        if (et == GGUF_VTYPE_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (c->base[c->pos + i] > 1)
                    return cur_fail(c, c->pos + i, "key '%s': BOOL element %llu is %u, expected 0 or 1", key,
                                    (unsigned long long)i, c->base[c->pos + i]);
        }
        c->pos += n * es;
        return 0;
    }
    /* Each string needs at least its 8-byte length: bound n before allocating. */
    if (n > cur_left(c) / 8)
        return cur_fail(c, at, "key '%s': array of %llu strings cannot fit in the %llu bytes left", key,
                        (unsigned long long)n, (unsigned long long)cur_left(c));
    uint64_t *offs = malloc((n ? n : 1) * sizeof *offs);
    if (!offs)
        return lmd_err_set(c->err, LMD_ENOMEM, "%s: out of memory for %llu string offsets", c->name,
                           (unsigned long long)n);
    kv->arr_str_off = offs;
    uint64_t start = c->pos;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t el_at = c->pos;
        uint64_t len;
        offs[i] = el_at - start;
        if (cur_left(c) < 8)
            return cur_fail(c, el_at, "key '%s': file truncated in array string %llu of %llu", key,
                            (unsigned long long)i, (unsigned long long)n);
        memcpy(&len, c->base + c->pos, 8);
        c->pos += 8;
        if (len > cur_left(c))
            return cur_fail(c, el_at, "key '%s': array string %llu length %llu exceeds the %llu bytes left in the file",
                            key, (unsigned long long)i, (unsigned long long)len, (unsigned long long)cur_left(c));
        c->pos += len;
    }
    return 0;
}

static int read_kv(struct cursor *c, struct gguf_kv *kv, struct gguf_str *key_out)
{
    uint64_t at = c->pos;
    kv->file_offset = at;
    int rc = cur_str(c, key_out, "metadata key");
    if (rc)
        return rc;
    if (key_out->len == 0)
        return cur_fail(c, at, "metadata key is empty");
    if (memchr(key_out->ptr, 0, key_out->len))
        return cur_fail(c, at, "metadata key contains a NUL byte");
    uint64_t tat = c->pos;
    uint32_t t;
    rc = cur_u32(c, &t, "metadata value type");
    if (rc)
        return rc;
    if (t >= GGUF_VTYPE_COUNT)
        return cur_fail(c, tat, "key '%.*s': invalid value type %u (valid: 0..%d)",
                        (int)(key_out->len > 200 ? 200 : key_out->len), key_out->ptr, t, GGUF_VTYPE_COUNT - 1);
    kv->type = (enum gguf_vtype)t;
    char keybuf[256];
    snprintf(keybuf, sizeof keybuf, "%.*s", (int)(key_out->len > 200 ? 200 : key_out->len), key_out->ptr);
    if (t == GGUF_VTYPE_STRING)
        return cur_str(c, &kv->v.str, "string value");
    if (t == GGUF_VTYPE_ARRAY)
        return read_array(c, kv, keybuf);
    kv->key = keybuf; /* for read_scalar's message only; replaced by the caller */
    rc = read_scalar(c, kv->type, kv);
    kv->key = NULL;
    return rc;
}

/* ---- tensors ------------------------------------------------------------ */

static int cmp_tensor_off(const void *a, const void *b)
{
    const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
    const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor *t, struct gguf_str *name_out)
{
    uint64_t at = c->pos;
    int rc = cur_str(c, name_out, "tensor name");
    if (rc)
        return rc;
    if (name_out->len == 0)
        return cur_fail(c, at, "tensor name is empty");
    if (memchr(name_out->ptr, 0, name_out->len))
        return cur_fail(c, at, "tensor name contains a NUL byte");
    int nl = (int)(name_out->len > 200 ? 200 : name_out->len);
    const char *np = name_out->ptr;
    uint64_t dat = c->pos;
    rc = cur_u32(c, &t->n_dims, "tensor dimension count");
    if (rc)
        return rc;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
        return cur_fail(c, dat, "tensor '%.*s': %u dimensions (valid: 1..%d)", nl, np, t->n_dims, GGUF_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims)
            continue;
        uint64_t eat = c->pos;
        rc = cur_u64(c, &t->ne[d], "tensor dimension");
        if (rc)
            return rc;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return cur_fail(c, eat, "tensor '%.*s': dimension %u is %llu (must be 1..2^63-1)", nl, np, d,
                            (unsigned long long)t->ne[d]);
        if (n > (uint64_t)INT64_MAX / t->ne[d])
            return cur_fail(c, eat, "tensor '%.*s': element count overflows 2^63", nl, np);
        n *= t->ne[d];
    }
    t->n_elements = n;
    uint64_t tat = c->pos;
    uint32_t ty;
    rc = cur_u32(c, &ty, "tensor type");
    if (rc)
        return rc;
    if (!gguf_dtype_valid(ty))
        return cur_fail(c, tat, "tensor '%.*s': unknown tensor type id %u", nl, np, ty);
    t->type = (enum gguf_dtype)ty;
    uint32_t be = gguf_dtype_block_elems(t->type);
    if (t->ne[0] % be != 0)
        return cur_fail(c, dat, "tensor '%.*s': row length %llu is not a multiple of the %s block size %u", nl, np,
                        (unsigned long long)t->ne[0], gguf_dtype_name(t->type), be);
    uint64_t rows = n / t->ne[0];
    uint64_t rb = gguf_dtype_row_bytes(t->type, t->ne[0]);
    /* rb is 0 only when one row's size wraps 2^64 (found by gguf_fuzz). */
    if (rb == 0 || rows > UINT64_MAX / rb)
        return cur_fail(c, dat, "tensor '%.*s': byte size overflows", nl, np);
    t->n_bytes = rows * rb;
    return cur_u64(c, &t->offset, "tensor data offset");
}

static int cmp_cstr_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Keys must be unique, and so must tensor names. A hostile file can hold
 * millions of entries, so sort rather than compare pairwise. */
static int check_unique(const struct gguf_file *f, struct lmd_err *err)
{
    uint64_t n = f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors;
    const char **nm = malloc((n ? n : 1) * sizeof *nm);
    if (!nm)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory for the name index", f->path);
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        uint64_t k = pass == 0 ? f->n_kv : f->n_tensors;
        for (uint64_t i = 0; i < k; i++)
            nm[i] = pass == 0 ? f->kv[i].key : f->tensors[i].name;
        qsort(nm, k, sizeof *nm, cmp_cstr_ptr);
        for (uint64_t i = 1; i < k; i++) {
            if (strcmp(nm[i - 1], nm[i]) == 0) {
                rc = lmd_err_set(err, LMD_EFORMAT, "%s: duplicate %s '%s'", f->path,
                                 pass == 0 ? "metadata key" : "tensor name", nm[i]);
                break;
            }
        }
    }
    free(nm);
    return rc;
}

/* ---- open --------------------------------------------------------------- */

static int parse(struct gguf_file *f, struct lmd_err *err)
{
    struct cursor c = {.base = f->base, .size = f->size, .pos = 0, .name = f->path, .err = err};
    uint32_t magic;
    if (f->size == 0)
        return lmd_err_set(err, LMD_EFORMAT, "%s: offset 0: file is empty; expected a GGUF header", f->path);
    if (f->size < 4 || (memcpy(&magic, f->base, 4), magic != GGUF_MAGIC)) {
        char shown[16] = "";
        size_t k = f->size < 4 ? f->size : 4;
        for (size_t i = 0; i < k; i++)
            snprintf(shown + 3 * i, 4, "%02x ", f->base[i]);
        return lmd_err_set(err, LMD_EFORMAT,
                           "%s: offset 0: not a GGUF file (magic bytes %sexpected 47 47 55 46 \"GGUF\")", f->path,
                           shown);
    }
    c.pos = 4;
    int rc = cur_u32(&c, &f->version, "version");
    if (rc)
        return rc;
    if (f->version == 1)
        return cur_fail(&c, 4, "GGUF version 1 is not supported (versions 2 and 3 are); re-convert the model");
    if (f->version != 2 && f->version != 3) {
        if ((f->version & 0xffffu) == 0 && __builtin_bswap32(f->version) <= 3)
            return cur_fail(&c, 4, "big-endian GGUF files are not supported");
        return cur_fail(&c, 4, "unsupported GGUF version %u (versions 2 and 3 are supported)", f->version);
    }
    rc = cur_u64(&c, &f->n_tensors, "tensor count");
    if (rc)
        return rc;
    rc = cur_u64(&c, &f->n_kv, "metadata count");
    if (rc)
        return rc;
    /* A kv needs >= 8 (key len) + 1 (key) + 4 (type) + 1 (value) bytes; a
     * tensor info >= 8 + 1 + 4 + 8 + 4 + 8. Refuse counts the file cannot hold. */
    if (f->n_kv > cur_left(&c) / 14)
        return cur_fail(&c, 16, "metadata count %llu cannot fit in a %llu-byte file", (unsigned long long)f->n_kv,
                        (unsigned long long)f->size);
    if (f->n_tensors > cur_left(&c) / 33)
        return cur_fail(&c, 8, "tensor count %llu cannot fit in a %llu-byte file", (unsigned long long)f->n_tensors,
                        (unsigned long long)f->size);

    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory for the metadata tables", f->path);

    /* Names are copied NUL-terminated into one buffer after the walk, whose
     * total size is bounded by the file size. */
    struct gguf_str *keys = calloc(f->n_kv + f->n_tensors + 1, sizeof *keys);
    if (!keys)
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory for the name table", f->path);
    uint64_t names_len = 0;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        rc = read_kv(&c, &f->kv[i], &keys[i]);
        if (rc)
            goto out;
        names_len += keys[i].len + 1;
        if (gguf_str_eq(keys[i], "general.alignment")) {
            if (f->kv[i].type != GGUF_VTYPE_UINT32) {
                rc = cur_fail(&c, f->kv[i].file_offset, "general.alignment has type %s, expected UINT32",
                              gguf_vtype_name(f->kv[i].type));
                goto out;
            }
            uint64_t a = f->kv[i].v.u64;
            if (a == 0 || (a & (a - 1)) != 0) {
                rc = cur_fail(&c, f->kv[i].file_offset, "general.alignment %llu is not a power of two",
                              (unsigned long long)a);
                goto out;
            }
            f->alignment = (uint32_t)a;
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint64_t at = c.pos;
        rc = read_tensor_info(&c, &f->tensors[i], &keys[f->n_kv + i]);
        if (rc)
            goto out;
        names_len += keys[f->n_kv + i].len + 1;
        if (f->tensors[i].offset % f->alignment != 0) {
            rc = cur_fail(&c, at, "tensor '%.*s': data offset %llu is not a multiple of the alignment %u",
                          (int)(keys[f->n_kv + i].len > 200 ? 200 : keys[f->n_kv + i].len), keys[f->n_kv + i].ptr,
                          (unsigned long long)f->tensors[i].offset, f->alignment);
            goto out;
        }
    }
    uint64_t end = c.pos;
    uint64_t pad = (f->alignment - end % f->alignment) % f->alignment;
    f->data_offset = end + pad;
    if (f->n_tensors > 0 && f->data_offset > f->size) {
        rc = cur_fail(&c, end, "file truncated: data section starts at %llu, past the end of the %llu-byte file",
                      (unsigned long long)f->data_offset, (unsigned long long)f->size);
        goto out;
    }
    uint64_t data_size = f->data_offset <= f->size ? f->size - f->data_offset : 0;

    f->names = malloc(names_len ? names_len : 1);
    if (!f->names) {
        rc = lmd_err_set(err, LMD_ENOMEM, "%s: out of memory for names", f->path);
        goto out;
    }
    char *np = f->names;
    for (uint64_t i = 0; i < f->n_kv + f->n_tensors; i++) {
        memcpy(np, keys[i].ptr, keys[i].len);
        np[keys[i].len] = 0;
        if (i < f->n_kv)
            f->kv[i].key = np;
        else
            f->tensors[i - f->n_kv].name = np;
        np += keys[i].len + 1;
    }

    /* Extents: inside the data section, and no two tensors overlap. */
    if (f->n_tensors > 0) {
        struct gguf_tensor **order = malloc(f->n_tensors * sizeof *order);
        if (!order) {
            rc = lmd_err_set(err, LMD_ENOMEM, "%s: out of memory for the tensor index", f->path);
            goto out;
        }
        for (uint64_t i = 0; i < f->n_tensors; i++) {
            struct gguf_tensor *t = &f->tensors[i];
            if (t->offset > data_size || t->n_bytes > data_size - t->offset) {
                rc = lmd_err_set(err, LMD_EFORMAT,
                                 "%s: offset %llu: tensor '%s' (%s, %llu bytes at data offset %llu) runs past the end "
                                 "of the file (data section is %llu bytes)",
                                 f->path, (unsigned long long)(f->data_offset + t->offset), t->name,
                                 gguf_dtype_name(t->type), (unsigned long long)t->n_bytes,
                                 (unsigned long long)t->offset, (unsigned long long)data_size);
                free(order);
                goto out;
            }
            t->data = f->base + f->data_offset + t->offset;
            order[i] = t;
        }
        qsort(order, f->n_tensors, sizeof *order, cmp_tensor_off);
        for (uint64_t i = 1; i < f->n_tensors; i++) {
            const struct gguf_tensor *a = order[i - 1], *b = order[i];
            if (a->offset + a->n_bytes > b->offset) {
                rc = lmd_err_set(err, LMD_EFORMAT,
                                 "%s: offset %llu: tensor '%s' overlaps tensor '%s' (data offsets %llu+%llu > %llu)",
                                 f->path, (unsigned long long)(f->data_offset + b->offset), b->name, a->name,
                                 (unsigned long long)a->offset, (unsigned long long)a->n_bytes,
                                 (unsigned long long)b->offset);
                free(order);
                goto out;
            }
        }
        free(order);
    }
    rc = check_unique(f, err);
    if (rc)
        goto out;
    rc = 0;
out:
    free(keys);
    return rc;
}

static int finish_open(struct gguf_file *f, struct gguf_file **out, struct lmd_err *err)
{
    int rc = parse(f, err);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open_memory(struct gguf_file **out, const void *buf, size_t size, const char *name, struct lmd_err *err)
{
    *out = NULL;
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name ? name : "<memory>"))) {
        free(f);
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", name ? name : "<memory>");
    }
    f->base = buf;
    f->size = size;
    return finish_open(f, out, err);
}

int gguf_open(struct gguf_file **out, const char *path, struct lmd_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lmd_err_set(err, errno == ENOENT ? LMD_ENOENT : LMD_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lmd_err_set(err, LMD_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lmd_err_set(err, LMD_EINVAL, "%s: not a regular file", path);
    }
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        close(fd);
        return lmd_err_set(err, LMD_ENOMEM, "%s: out of memory", path);
    }
    f->size = (uint64_t)st.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            gguf_close(f);
            return lmd_err_set(err, LMD_EIO, "%s: cannot mmap %llu bytes: %s", path, (unsigned long long)st.st_size,
                               strerror(e));
        }
        f->base = p;
        f->mapped = true;
    }
    close(fd);
    return finish_open(f, out, err);
}

void gguf_close(struct gguf_file *f)
{
    if (!f)
        return;
    if (f->kv) {
        for (uint64_t i = 0; i < f->n_kv; i++)
            free((void *)f->kv[i].arr_str_off);
    }
    free(f->kv);
    free(f->tensors);
    free(f->names);
    if (f->mapped)
        munmap((void *)f->base, (size_t)f->size);
    free(f->path);
    free(f);
}

const char *gguf_path(const struct gguf_file *f) { return f->path; }
uint32_t gguf_version(const struct gguf_file *f) { return f->version; }
uint64_t gguf_file_size(const struct gguf_file *f) { return f->size; }
uint64_t gguf_data_offset(const struct gguf_file *f) { return f->data_offset; }
uint32_t gguf_alignment(const struct gguf_file *f) { return f->alignment; }
uint64_t gguf_n_kv(const struct gguf_file *f) { return f->n_kv; }
uint64_t gguf_n_tensors(const struct gguf_file *f) { return f->n_tensors; }

const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, uint64_t i) { return i < f->n_kv ? &f->kv[i] : NULL; }

const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct gguf_kv *gguf_kv_find(const struct gguf_file *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, key) == 0)
            return &f->kv[i];
    return NULL;
}

const struct gguf_tensor *gguf_tensor_find(const struct gguf_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

bool gguf_str_eq(struct gguf_str s, const char *cstr)
{
    size_t n = strlen(cstr);
    return s.len == n && memcmp(s.ptr, cstr, n) == 0;
}

static bool vtype_is_signed(enum gguf_vtype t)
{
    return t == GGUF_VTYPE_INT8 || t == GGUF_VTYPE_INT16 || t == GGUF_VTYPE_INT32 || t == GGUF_VTYPE_INT64;
}

static bool vtype_is_unsigned(enum gguf_vtype t)
{
    return t == GGUF_VTYPE_UINT8 || t == GGUF_VTYPE_UINT16 || t == GGUF_VTYPE_UINT32 || t == GGUF_VTYPE_UINT64;
}

static int get_int(const struct gguf_file *f, const char *key, int64_t lo, uint64_t hi, uint64_t *bits,
                   struct lmd_err *err)
{
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return LMD_ENOENT;
    if (vtype_is_unsigned(kv->type)) {
        if (kv->v.u64 > hi)
            return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' = %llu is out of range (max %llu)", f->path, key,
                               (unsigned long long)kv->v.u64, (unsigned long long)hi);
        *bits = kv->v.u64;
        return 0;
    }
    if (vtype_is_signed(kv->type)) {
        if (kv->v.i64 < lo || (kv->v.i64 > 0 && (uint64_t)kv->v.i64 > hi))
            return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' = %lld is out of range (%lld..%llu)", f->path, key,
                               (long long)kv->v.i64, (long long)lo, (unsigned long long)hi);
        *bits = (uint64_t)kv->v.i64;
        return 0;
    }
    return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' has type %s, expected an integer", f->path, key,
                       gguf_vtype_name(kv->type));
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, struct lmd_err *err)
{
    uint64_t v;
    int rc = get_int(f, key, 0, UINT32_MAX, &v, err);
    if (rc == 0)
        *out = (uint32_t)v;
    return rc;
}

int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out, struct lmd_err *err)
{
    uint64_t v;
    int rc = get_int(f, key, INT32_MIN, INT32_MAX, &v, err);
    if (rc == 0)
        *out = (int32_t)(int64_t)v;
    return rc;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out, struct lmd_err *err)
{
    return get_int(f, key, 0, UINT64_MAX, out, err);
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, struct lmd_err *err)
{
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return LMD_ENOENT;
    if (kv->type == GGUF_VTYPE_FLOAT32 || kv->type == GGUF_VTYPE_FLOAT64) {
        *out = (float)kv->v.f64;
        return 0;
    }
    if (vtype_is_unsigned(kv->type)) {
        *out = (float)kv->v.u64;
        return 0;
    }
    if (vtype_is_signed(kv->type)) {
        *out = (float)kv->v.i64;
        return 0;
    }
    return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' has type %s, expected a number", f->path, key,
                       gguf_vtype_name(kv->type));
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, struct lmd_err *err)
{
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return LMD_ENOENT;
    if (kv->type != GGUF_VTYPE_BOOL)
        return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' has type %s, expected BOOL", f->path, key,
                           gguf_vtype_name(kv->type));
    *out = kv->v.b;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, struct lmd_err *err)
{
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return LMD_ENOENT;
    if (kv->type != GGUF_VTYPE_STRING)
        return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' has type %s, expected STRING", f->path, key,
                           gguf_vtype_name(kv->type));
    *out = kv->v.str;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype type, const struct gguf_kv **out,
                 struct lmd_err *err)
{
    const struct gguf_kv *kv = gguf_kv_find(f, key);
    if (!kv)
        return LMD_ENOENT;
    if (kv->type != GGUF_VTYPE_ARRAY || kv->arr_type != type)
        return lmd_err_set(err, LMD_EFORMAT, "%s: key '%s' has type %s%s%s, expected ARRAY of %s", f->path, key,
                           gguf_vtype_name(kv->type), kv->type == GGUF_VTYPE_ARRAY ? " of " : "",
                           kv->type == GGUF_VTYPE_ARRAY ? gguf_vtype_name(kv->arr_type) : "", gguf_vtype_name(type));
    *out = kv;
    return 0;
}

struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i)
{
    const uint8_t *p = kv->arr_data + kv->arr_str_off[i];
    struct gguf_str s;
    memcpy(&s.len, p, 8);
    s.ptr = (const char *)p + 8;
    return s;
}

float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i)
{
    float x;
    memcpy(&x, kv->arr_data + 4 * i, 4);
    return x;
}

int32_t gguf_arr_i32(const struct gguf_kv *kv, uint64_t i)
{
    int32_t x;
    memcpy(&x, kv->arr_data + 4 * i, 4);
    return x;
}

int64_t gguf_arr_int(const struct gguf_kv *kv, uint64_t i)
{
    const uint8_t *p = kv->arr_data + gguf_vtype_size(kv->arr_type) * i;
    switch (kv->arr_type) {
    case GGUF_VTYPE_UINT8:
    case GGUF_VTYPE_BOOL:
        return p[0];
    case GGUF_VTYPE_INT8:
        return (int8_t)p[0];
    case GGUF_VTYPE_UINT16: {
        uint16_t x;
        memcpy(&x, p, 2);
        return x;
    }
    case GGUF_VTYPE_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        return x;
    }
    case GGUF_VTYPE_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        return x;
    }
    case GGUF_VTYPE_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        return x;
    }
    case GGUF_VTYPE_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        return (int64_t)x;
    }
    case GGUF_VTYPE_INT64: {
        int64_t x;
        memcpy(&x, p, 8);
        return x;
    }
    default:
        return 0;
    }
}
