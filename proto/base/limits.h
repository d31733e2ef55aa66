// Per-request limits that both sides must know: the server refuses a
// request above them (INVALID_ARGUMENT with reason REQUEST_TOO_LARGE, naming
// the limit) and the client splits its requests to stay under them.
#ifndef CKPTD_PROTO_BASE_LIMITS_H_
#define CKPTD_PROTO_BASE_LIMITS_H_

#include <cstddef>

namespace ckptd {

// Digests in one FindMissingBlobs request (1.6 MiB of digests on the wire).
inline constexpr size_t kMaxFindMissingDigests = 100'000;

// How a co-located save's staged memory is laid out and packed back into
// blobs (server/core/staged_commit.h has the rule; client/src/local_plane.cc
// lays tensors out by it): tensors of kStagedPackThreshold bytes or more are
// blobs of their own, smaller ones share packs of at most kStagedPackSize at
// kStagedPackAlignment-aligned offsets, as a TCP push packs them.
inline constexpr size_t kStagedPackThreshold = 1 << 20;
inline constexpr size_t kStagedPackSize = 16 << 20;
inline constexpr size_t kStagedPackAlignment = 64;

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_LIMITS_H_
