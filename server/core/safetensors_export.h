// Export of one shard of a committed version as a .safetensors file.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian
// header length N, N bytes of JSON header (padded with spaces to a multiple
// of 8), then the tensor bytes back to back (no holes: the reference reader
// rejects them), ordered for alignment: first every tensor whose size is a
// multiple of 8 (so each starts at a multiple of 8 in the file), then the
// others by element size, largest first (so each starts at a multiple of its
// element size); manifest order within each group. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) and carries "__metadata__": a string->string
// map with run, version, step, epoch, torch_version, metrics (a JSON object)
// and ckptd_key_paths (a JSON object: tensor name -> its key path segments,
// strings and ints, so that `ckpt push` of the file restores the exact
// paths; see client/cli/safetensors.h). Tensor names are the dotted key paths
// ("model.layers.0.weight"); value leaves are not exported.
#ifndef CKPTD_SERVER_CORE_SAFETENSORS_EXPORT_H_
#define CKPTD_SERVER_CORE_SAFETENSORS_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/digest.h"

namespace ckptd::core {

// A byte range of a blob.
struct BlobSlice {
  Digest digest;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct SafetensorsPlan {
  std::string header;             // length prefix + JSON, ready to send
  std::vector<BlobSlice> slices;  // the data section, in order
  uint64_t total_size = 0;
};

// `keys` are dotted prefixes ("model" selects "model.*"); empty selects all.
// FAILED_PRECONDITION for a dtype safetensors cannot express (complex32,
// complex128), naming the key; NOT_FOUND when `keys` select nothing.
absl::StatusOr<SafetensorsPlan> PlanSafetensors(
    const v1::VersionInfo& info, const v1::ShardManifest& shard,
    const std::vector<std::string>& keys);

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_SAFETENSORS_EXPORT_H_
