// Typed error reasons (ckptd.v1.ErrorReason) carried by an absl::Status.
//
// The server attaches a reason where a client must act on the failure
// (WithReason); service/status_mapping turns it into the gRPC status
// details (EncodeStatusDetails), and the client turns those back into the
// same payload (DecodeStatusDetails) so that both sides ask ReasonOf().
// The payload is a serialized google.rpc.ErrorInfo. Thread-safe (pure).
#ifndef CKPTD_PROTO_BASE_ERROR_REASON_H_
#define CKPTD_PROTO_BASE_ERROR_REASON_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd {

inline constexpr absl::string_view kErrorInfoTypeUrl =
    "type.googleapis.com/google.rpc.ErrorInfo";
inline constexpr absl::string_view kErrorDomain = "ckptd.v1";

// `status` with `reason` attached (replacing any earlier one). OK stays OK.
absl::Status WithReason(absl::Status status, v1::ErrorReason reason);
// The attached reason; ERROR_REASON_UNSPECIFIED when there is none.
v1::ErrorReason ReasonOf(const absl::Status& status);

// The google.rpc.Status bytes for `status` (code, message and its reason);
// "" when it has no reason, so plain errors carry no details.
std::string EncodeStatusDetails(const absl::Status& status);
// Attaches the reason found in `details` (bytes from the wire) to `status`.
// Details that do not parse, or name another domain, are ignored: a reason
// is an optimisation of the client's recovery, never required.
absl::Status DecodeStatusDetails(absl::Status status,
                                 absl::string_view details);

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_ERROR_REASON_H_
