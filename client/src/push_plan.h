// PushPlan: what one Push uploads and commits, computed before any RPC.
//
// Planning validates every tensor entry (dtype known, no negative dims,
// byte_length == product(shape) * DTypeSize, data present, memory usable)
// and then lays tensors out in blobs:
//
// - Tensors smaller than PushOptions::pack_threshold go, in entry order, into
//   packed blobs of up to PushOptions::pack_size, each at a 64-byte aligned
//   offset (zero padding). The layout depends only on the entries, so an
//   unchanged state yields identical packs, which the server deduplicates.
// - Larger tensors are one blob each, read in place from the caller's memory.
// - Identical tensors within the push share one blob (and, packed, one
//   offset).
//
// Digests are XXH3-128 (proto/base/digest.h) in their 16-byte wire form.
// Large tensors are hashed in parallel; CUDA tensors are hashed through
// pinned staging buffers.
//
// Thread safety: a PushPlan is immutable once built.
#ifndef CKPTD_CLIENT_SRC_PUSH_PLAN_H_
#define CKPTD_CLIENT_SRC_PUSH_PLAN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/client.h"

namespace ckptd::internal {

// Offsets of tensors inside a packed blob are multiples of this.
inline constexpr uint64_t kPackAlignment = 64;

// One blob to upload: bytes at `data` in `memory` (a tensor in the caller's
// memory, or a pack owned by the plan).
struct PlannedBlob {
  std::string digest;  // 16 bytes
  uint64_t size = 0;
  const char* data = nullptr;
  Memory memory;
};

struct PushPlan {
  // Unique by digest, in order of first use.
  std::vector<PlannedBlob> blobs;
  // The request's entries, tensor entries with TensorInfo filled in.
  v1::ShardManifest manifest;
  // Backing bytes of the packed blobs.
  std::vector<std::unique_ptr<std::string>> packs;
  uint64_t tensor_bytes = 0;
};

// The dotted key path of an entry, for messages ("model.layers.0.weight").
std::string KeyPathString(const v1::ManifestEntry& entry);

// INVALID_ARGUMENT naming the key path for a malformed tensor entry (dtype,
// shape, byte_length, data); FAILED_PRECONDITION for a CUDA tensor this
// process cannot read. BuildPushPlan checks every tensor entry with it.
absl::Status ValidatePushTensor(const PushEntry& entry);

// INVALID_ARGUMENT naming the key path for malformed entries;
// FAILED_PRECONDITION for CUDA tensors this process cannot read.
absl::StatusOr<std::unique_ptr<PushPlan>> BuildPushPlan(
    const PushRequest& request, const PushOptions& options);

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_PUSH_PLAN_H_
