// Status helpers shared by the server, the C++ client, the CLI and the
// Python binding.
//
// Errors are values (absl::Status / absl::StatusOr). CKPTD_RETURN_IF_ERROR
// and CKPTD_ASSIGN_OR_RETURN propagate them; ErrnoToStatus gives OS errors
// the context of the call site ("open blob tmp file /x: No space left on
// device").
#ifndef CKPTD_PROTO_BASE_STATUS_H_
#define CKPTD_PROTO_BASE_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd {

// `context` and strerror(errnum), with a code that matches errnum
// (ENOSPC -> RESOURCE_EXHAUSTED with reason DISK_FULL, ENOENT -> NOT_FOUND,
// ...).
absl::Status ErrnoToStatus(int errnum, absl::string_view context);

}  // namespace ckptd

#define CKPTD_CONCAT_INNER_(a, b) a##b
#define CKPTD_CONCAT_(a, b) CKPTD_CONCAT_INNER_(a, b)

#define CKPTD_RETURN_IF_ERROR(expr)             \
  do {                                          \
    if (absl::Status _st = (expr); !_st.ok()) { \
      return _st;                               \
    }                                           \
  } while (0)

#define CKPTD_ASSIGN_OR_RETURN(lhs, expr) \
  CKPTD_ASSIGN_OR_RETURN_IMPL_(CKPTD_CONCAT_(_statusor_, __LINE__), lhs, expr)

#define CKPTD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(*tmp)

#endif  // CKPTD_PROTO_BASE_STATUS_H_
