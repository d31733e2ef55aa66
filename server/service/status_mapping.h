// The one place where absl::Status becomes grpc::Status.
//
// Replies never show clients the server's file paths: every path registered
// with RedactPathInReplies (the server registers its data dir) is replaced
// by "<data-dir>" in the message, and the unredacted status goes to the log.
// Thread safety: both functions are safe to call concurrently.
#ifndef CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_
#define CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ckptd::service {

grpc::Status ToGrpcStatus(const absl::Status& status);

// From now on, `path` (a directory; also its absolute and canonical forms)
// is shown as "<data-dir>" in replies. Registering a path twice is harmless.
void RedactPathInReplies(const std::string& path);

// `status` with the registered paths redacted from its message (payloads,
// such as the typed error reason, kept).
absl::Status RedactPaths(const absl::Status& status);

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_
