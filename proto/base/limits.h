// Per-request limits that both sides must know: the server refuses a
// request above them (INVALID_ARGUMENT with reason REQUEST_TOO_LARGE, naming
// the limit) and the client splits its requests to stay under them.
#ifndef CKPTD_PROTO_BASE_LIMITS_H_
#define CKPTD_PROTO_BASE_LIMITS_H_

#include <cstddef>

namespace ckptd {

// Digests in one FindMissingBlobs request (1.6 MiB of digests on the wire).
inline constexpr size_t kMaxFindMissingDigests = 100'000;

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_LIMITS_H_
