// ASSERT_OK(expr): asserts that an absl::Status expression is OK, printing
// the expression and the status when it is not.
#ifndef CKPTD_TESTS_SUPPORT_ASSERT_OK_H_
#define CKPTD_TESTS_SUPPORT_ASSERT_OK_H_

#include "absl/status/status.h"
#include "gtest/gtest.h"

#define ASSERT_OK(expr)                            \
  do {                                             \
    const absl::Status _st = (expr);               \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st; \
  } while (0)

#endif  // CKPTD_TESTS_SUPPORT_ASSERT_OK_H_
