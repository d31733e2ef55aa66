#include "proto/base/error_reason.h"

#include "absl/strings/cord.h"

namespace ckptd {

absl::Status WithReason(absl::Status status, v1::ErrorReason reason) {
  if (status.ok()) return status;
  if (reason == v1::ERROR_REASON_UNSPECIFIED) {
    status.ErasePayload(kErrorInfoTypeUrl);
    return status;
  }
  v1::ErrorInfo info;
  info.set_reason(v1::ErrorReason_Name(reason));
  info.set_domain(std::string(kErrorDomain));
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

v1::ErrorReason ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kErrorInfoTypeUrl);
  if (!payload.has_value()) return v1::ERROR_REASON_UNSPECIFIED;
  v1::ErrorInfo info;
  v1::ErrorReason reason = v1::ERROR_REASON_UNSPECIFIED;
  if (!info.ParseFromString(std::string(*payload)) ||
      info.domain() != kErrorDomain ||
      !v1::ErrorReason_Parse(info.reason(), &reason)) {
    return v1::ERROR_REASON_UNSPECIFIED;
  }
  return reason;
}

std::string EncodeStatusDetails(const absl::Status& status) {
  if (ReasonOf(status) == v1::ERROR_REASON_UNSPECIFIED) return "";
  auto payload = status.GetPayload(kErrorInfoTypeUrl);
  v1::RpcStatus rpc;
  rpc.set_code(static_cast<int32_t>(status.code()));
  rpc.set_message(std::string(status.message()));
  v1::AnyDetail* detail = rpc.add_details();
  detail->set_type_url(std::string(kErrorInfoTypeUrl));
  detail->set_value(std::string(*payload));
  return rpc.SerializeAsString();
}

absl::Status DecodeStatusDetails(absl::Status status,
                                 absl::string_view details) {
  if (status.ok() || details.empty()) return status;
  v1::RpcStatus rpc;
  if (!rpc.ParseFromArray(details.data(), static_cast<int>(details.size()))) {
    return status;
  }
  for (const v1::AnyDetail& detail : rpc.details()) {
    if (detail.type_url() != kErrorInfoTypeUrl) continue;
    status.SetPayload(kErrorInfoTypeUrl, absl::Cord(detail.value()));
    if (ReasonOf(status) == v1::ERROR_REASON_UNSPECIFIED) {
      status.ErasePayload(kErrorInfoTypeUrl);
      continue;
    }
    break;
  }
  return status;
}

}  // namespace ckptd
