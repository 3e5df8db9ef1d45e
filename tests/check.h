/*
 * tests/check.h — the unit-test harness every tests/unit/test_*.c uses.
 *
 * Each test case is a function registered with TEST_CASE; the runner prints one line per
 * case, "PASS name", "FAIL name: why" or "SKIP name: why", which tests/run.sh counts into
 * the final "N passed, N failed, N skipped" line. CHECK records a failure and keeps going
 * inside the case, so one run shows every broken assertion.
 */
#ifndef CKS_TEST_CHECK_H
#define CKS_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*cks_test_fn)(void);

struct cks_test_state {
    int failures;
    int skipped;
    char skip_reason[256];
    const char *current;
};
extern struct cks_test_state cks_test_state;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);   \
            cks_test_state.failures++;                                                   \
        }                                                                                \
    } while (0)

#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            cks_test_state.failures++;                                                   \
        }                                                                                \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                               \
    CHECK_MSG((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))

#define CHECK_EQ_STR(a, b)                                                               \
    CHECK_MSG(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))

#define CHECK_NEAR(a, b, tol)                                                            \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.17g vs %.17g (tol %g)",       \
              (double)(a), (double)(b), (double)(tol))

/* Skip the current case (e.g. the realdata folder is absent) and return from it. */
#define SKIP(...)                                                                        \
    do {                                                                                 \
        snprintf(cks_test_state.skip_reason, sizeof cks_test_state.skip_reason,          \
                 __VA_ARGS__);                                                           \
        cks_test_state.skipped = 1;                                                      \
        return;                                                                          \
    } while (0)

struct cks_test_case {
    const char *name;
    cks_test_fn fn;
};

#define TEST_MAIN(...)                                                                   \
    struct cks_test_state cks_test_state;                                                \
    int main(int argc, char **argv)                                                      \
    {                                                                                    \
        static const struct cks_test_case cases[] = {__VA_ARGS__};                       \
        int failed = 0;                                                                  \
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {                    \
            if (argc > 1 && !strstr(cases[i].name, argv[1]))                             \
                continue;                                                                \
            memset(&cks_test_state, 0, sizeof cks_test_state);                           \
            cks_test_state.current = cases[i].name;                                      \
            cases[i].fn();                                                               \
            if (cks_test_state.failures) {                                               \
                printf("FAIL %s: %d check(s) failed\n", cases[i].name,                   \
                       cks_test_state.failures);                                         \
                failed++;                                                                \
            } else if (cks_test_state.skipped) {                                         \
                printf("SKIP %s: %s\n", cases[i].name, cks_test_state.skip_reason);      \
            } else {                                                                     \
                printf("PASS %s\n", cases[i].name);                                      \
            }                                                                            \
            fflush(stdout);                                                              \
        }                                                                                \
        return failed ? 1 : 0;                                                           \
    }

#define T(fn) {#fn, fn}

#endif
