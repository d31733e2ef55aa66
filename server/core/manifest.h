// Manifest validation: the server's checks of a shard manifest before it is
// committed. Pure functions over the wire types; no storage access.
#ifndef CKPTD_SERVER_CORE_MANIFEST_H_
#define CKPTD_SERVER_CORE_MANIFEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/digest.h"
#include "proto/base/dtype.h"
#include "server/core/limits.h"

namespace ckptd::core {

inline constexpr int kMaxTensorRank = 64;

// The distinct blobs a stored manifest's tensors reference (malformed
// digests, which validation refuses, are skipped).
absl::flat_hash_set<Digest> ManifestDigests(const v1::ShardManifest& m);

struct BlobUse {
  Digest digest;
  uint64_t end = 0;  // blob_offset + byte_length: the blob must be this long
  std::string key;   // first key that uses it, for messages
};

struct ManifestSummary {
  uint64_t total_bytes = 0;
  uint32_t tensor_count = 0;
  std::vector<BlobUse> blobs;  // one per distinct digest, max end
};

// Checks structure (the root container first, every parent a container that
// came earlier, no duplicate paths), tensors (known dtype, non-negative
// dims, byte_length == product(shape) * dtype size, 16-byte digest), values.
// Sizes within `limits` (entries, bytes, key depth and segment length, list
// nesting and length). INVALID_ARGUMENT naming the entry and its key path
// (cut to kMaxEchoBytes).
absl::StatusOr<ManifestSummary> ValidateManifest(const v1::ShardManifest& m,
                                                 const Limits& limits = {});

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_MANIFEST_H_
