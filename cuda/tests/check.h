// A minimal check macro for the C++ tests of the shared math (no test framework needed).
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>

static int g_failures = 0;
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)
#define CHECK_NEAR(a, b, tol) CHECK(std::fabs(double(a) - double(b)) <= (tol))
#define TEST_MAIN_END()                                                      \
  do {                                                                       \
    if (g_failures) std::fprintf(stderr, "%d check(s) failed\n", g_failures); \
    else std::printf("all checks passed\n");                                 \
    return g_failures ? EXIT_FAILURE : EXIT_SUCCESS;                         \
  } while (0)
