// The one place where absl::Status becomes grpc::Status.
#ifndef CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_
#define CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ckptd::service {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_STATUS_MAPPING_H_
