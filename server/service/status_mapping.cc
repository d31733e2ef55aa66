#include "server/service/status_mapping.h"

#include <string>

#include "proto/base/error_reason.h"

namespace ckptd::service {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering. A typed reason
  // travels as google.rpc.Status details (grpc-status-details-bin).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()),
                      EncodeStatusDetails(status));
}

}  // namespace ckptd::service
