#include "proto/base/status.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"

namespace ckptd {

absl::Status ErrnoToStatus(int errnum, absl::string_view context) {
  std::string message = absl::StrCat(context, ": ", std::strerror(errnum));
  switch (errnum) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case ENOSPC:
    case EDQUOT:
      // Clients act on a full disk (they abort the save): say so.
      return WithReason(absl::ResourceExhaustedError(message), v1::DISK_FULL);
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      return absl::ResourceExhaustedError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case EISDIR:
    case EINVAL:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(message);
    case EIO:
      return absl::DataLossError(message);
    case EAGAIN:
    case EINTR:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace ckptd
