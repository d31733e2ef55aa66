// CheckHealth: grpc.health.v1.Health/Check as raw bytes. Debian's gRPC
// ships no C++ classes for health.proto, and its two messages are one field
// each, so they are encoded and decoded here:
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }  (an enum, a varint)
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "ckptd/client.h"
#include "client/src/connection.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"

namespace ckptd {
namespace {

constexpr char kCheckMethod[] = "/grpc.health.v1.Health/Check";

std::string EncodeCheckRequest(const std::string& service) {
  if (service.empty()) return "";  // proto3: the default is not sent
  std::string out = "\x0a";        // field 1, length-delimited
  for (uint64_t n = service.size();; n >>= 7) {
    if (n < 0x80) {
      out.push_back(static_cast<char>(n));
      break;
    }
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return out + service;
}

absl::StatusOr<ServingStatus> DecodeCheckResponse(const std::string& bytes) {
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) {
    return absl::InternalError(
        "the grpc.health.v1 reply does not parse as a HealthCheckResponse");
  }
  uint64_t status = 0;  // absent: UNKNOWN
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.number() == 1 &&
        f.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      status = f.varint();
    }
  }
  if (status > static_cast<uint64_t>(ServingStatus::kServiceUnknown)) {
    return ServingStatus::kUnknown;
  }
  return static_cast<ServingStatus>(status);
}

}  // namespace

std::string ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

absl::StatusOr<ServingStatus> CheckHealth(const ClientOptions& options,
                                          const std::string& service) {
  ClientOptions one = options;
  one.channels = 1;
  absl::StatusOr<std::unique_ptr<internal::Connection>> connection =
      internal::Connection::Open(one);
  if (!connection.ok()) return connection.status();
  grpc::TemplatedGenericStub<grpc::ByteBuffer, grpc::ByteBuffer> stub(
      (*connection)->channel(0));
  grpc::ClientContext ctx;
  (*connection)->Prepare(&ctx, /*unary_deadline=*/true);
  const std::string request_bytes = EncodeCheckRequest(service);
  grpc::Slice slice(request_bytes);
  const grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&ctx, kCheckMethod, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return internal::FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("cannot read the grpc.health.v1 reply");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return DecodeCheckResponse(bytes);
}

}  // namespace ckptd
