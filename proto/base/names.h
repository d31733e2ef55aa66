// Validation of user-supplied names: runs, aliases, refs, metric names.
// Shared by the server, the C++ client, the CLI and the Python binding, so
// every side applies the same rules and words the same errors.
//
// Run and alias names match [A-Za-z0-9][A-Za-z0-9._-]{0,127}. A name never
// becomes a filesystem path; it appears only inside RocksDB keys, where '/'
// separates fields (so '/' is forbidden). Every failure is INVALID_ARGUMENT
// with a message that quotes the bad value (escaped) and states the rule.
#ifndef CKPTD_PROTO_BASE_NAMES_H_
#define CKPTD_PROTO_BASE_NAMES_H_

#include <cstdint>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd {

inline constexpr size_t kMaxNameLength = 128;
inline constexpr size_t kMaxMetricNameLength = 256;
inline constexpr size_t kMaxLabelLength = 4096;

absl::Status ValidateRunName(absl::string_view name);
// Any alias name, including the server-kept `last` and `best`.
absl::Status ValidateAliasName(absl::string_view name);
// User alias names: a valid name other than the server-kept `last`/`best`.
absl::Status ValidateUserAliasName(absl::string_view name);
absl::Status ValidateMetricName(absl::string_view name);

// The fields of an --auth_file line (server/service/auth.h), shared with
// `ckpt token new`, which prints such lines.
inline constexpr size_t kMaxIdentityLength = 128;
inline constexpr size_t kMaxRunPatternLength = 128;
// 1-128 characters of letters, digits and . _ - @ +.
absl::Status ValidateIdentity(absl::string_view identity);
// reader, writer or admin.
absl::Status ValidateRoleName(absl::string_view role);
// A glob over run names: run-name characters and the wildcards * and ?.
absl::Status ValidateRunPattern(absl::string_view pattern);

// A parsed ref: a version number, or an alias name (incl. last/best).
struct Ref {
  std::variant<uint64_t, std::string> value;
};
// "12" -> version 12; "last", "best", "prod" -> alias. Version numbers
// start at 1.
absl::StatusOr<Ref> ParseRef(absl::string_view ref);

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_NAMES_H_
