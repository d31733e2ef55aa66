// Small helpers shared by the repository_*.cc files. Internal to core.
#ifndef CKPTD_SERVER_CORE_REPOSITORY_INTERNAL_H_
#define CKPTD_SERVER_CORE_REPOSITORY_INTERNAL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ckptd::core {
struct RepositoryOptions;
}  // namespace ckptd::core

namespace ckptd::core::internal {

inline constexpr absl::string_view kLast = "last";
inline constexpr absl::string_view kBest = "best";

inline std::string VersionName(absl::string_view run, uint64_t version) {
  return absl::StrCat(run, "@", version);
}

inline absl::Status CheckVersionNumber(uint64_t version) {
  if (version == 0) {
    return absl::InvalidArgumentError(
        "version is 0; versions start at 1 (use the number BeginVersion "
        "returned)");
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT naming the bad scrub option (repository_integrity.cc).
absl::Status ValidateScrubOptions(const RepositoryOptions& options);

}  // namespace ckptd::core::internal

#endif  // CKPTD_SERVER_CORE_REPOSITORY_INTERNAL_H_
