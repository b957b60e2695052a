/*
 * engine/cuda/cublas_lazy.c: cuBLAS is not in the process until the first
 * cublasCreate, and then it is the real library that answers. Runs with or
 * without a GPU (without one, the library itself refuses the handle).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cublas_v2.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Whether a mapping of the process names libcublas. */
static bool cublas_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "libcublas.so") != NULL;
    fclose(f);
    return found;
}

static void test_loaded_on_first_use(void **state)
{
    (void)state;
    assert_false(cublas_mapped()); /* starting lmd costs nothing for cuBLAS */
    cublasHandle_t h = NULL;
    cublasStatus_t st = cublasCreate(&h);
    /* The library was found and answered: a handle where there is a GPU,
     * its own refusal where there is none. */
    assert_true(cublas_mapped());
    if (st == CUBLAS_STATUS_SUCCESS) {
        assert_int_equal(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    } else {
        assert_int_equal(st, CUBLAS_STATUS_NOT_INITIALIZED);
        assert_null(strstr(cublasGetStatusString(st), "could not be loaded"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loaded_on_first_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
