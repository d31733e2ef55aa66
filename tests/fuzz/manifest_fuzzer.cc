// Fuzzes the checks the server makes on a CommitShard request before it
// takes the repository lock (Repository::CommitShard): the run name, the
// metric names and ValidateManifest (server/core/manifest.h), over bytes
// parsed as a v1::CommitShardRequest.
//
// For every manifest ValidateManifest accepts, an independent restatement of
// its rules must hold: entry 0 is the root container, every other entry's
// parent is a container that came earlier, no path repeats, each tensor's
// byte_length is product(shape) * dtype size with a 16-byte digest, and the
// summary counts exactly the tensors, their bytes and their distinct blobs
// (each as long as its furthest use). Every refusal is INVALID_ARGUMENT.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/digest.h"
#include "proto/base/dtype.h"
#include "proto/base/names.h"
#include "server/core/manifest.h"
#include "tests/fuzz/fuzz_check.h"

namespace ckptd::core {
namespace {

// A path as comparable segments: (is_int, key or int_key rendered).
using Path = std::vector<std::pair<bool, std::string>>;

Path PathOf(const v1::ManifestEntry& e, int length) {
  Path out;
  for (int i = 0; i < length; ++i) {
    const v1::PathSegment& seg = e.path(i);
    if (seg.kind_case() == v1::PathSegment::kIntKey) {
      out.emplace_back(true, std::to_string(seg.int_key()));
    } else {
      out.emplace_back(false, seg.key());
    }
  }
  return out;
}

void CheckAccepted(const v1::ShardManifest& m, const ManifestSummary& summary) {
  FUZZ_CHECK(m.entries_size() > 0);
  FUZZ_CHECK(m.entries(0).path_size() == 0 && m.entries(0).has_container());
  std::set<Path> containers;
  std::set<Path> seen;
  uint32_t tensors = 0;
  unsigned __int128 total = 0;
  std::map<Digest, uint64_t> blob_end;
  for (const v1::ManifestEntry& e : m.entries()) {
    const Path path = PathOf(e, e.path_size());
    FUZZ_CHECK(seen.insert(path).second);
    if (e.path_size() > 0) {
      FUZZ_CHECK(containers.contains(PathOf(e, e.path_size() - 1)));
    }
    if (e.has_container()) {
      FUZZ_CHECK(e.container().kind() != v1::ContainerInfo::KIND_UNSPECIFIED);
      containers.insert(path);
      continue;
    }
    if (e.has_value()) continue;
    FUZZ_CHECK(e.has_tensor());
    const v1::TensorInfo& t = e.tensor();
    FUZZ_CHECK(DTypeByteSize(t.dtype()) != 0);
    FUZZ_CHECK(t.shape_size() <= kMaxTensorRank);
    bool zero = false;
    for (int64_t d : t.shape()) {
      FUZZ_CHECK(d >= 0);
      zero = zero || d == 0;
    }
    if (zero) {
      FUZZ_CHECK(t.byte_length() == 0);
    } else {
      // Every factor is >= 1, so the product only grows: checking it after
      // each step keeps it below 2^128.
      unsigned __int128 bytes = DTypeByteSize(t.dtype());
      for (int64_t d : t.shape()) {
        bytes *= static_cast<uint64_t>(d);
        FUZZ_CHECK(bytes <= t.byte_length());
      }
      FUZZ_CHECK(bytes == t.byte_length());
    }
    FUZZ_CHECK(t.blob_digest().size() == 16);
    FUZZ_CHECK(t.blob_offset() <= UINT64_MAX - t.byte_length());
    const Digest digest = *DigestFromBytes(t.blob_digest());
    uint64_t& end = blob_end[digest];
    end = std::max(end, t.blob_offset() + t.byte_length());
    ++tensors;
    total += t.byte_length();
  }
  FUZZ_CHECK(summary.tensor_count == tensors);
  FUZZ_CHECK(summary.total_bytes == total);
  FUZZ_CHECK(summary.blobs.size() == blob_end.size());
  for (const BlobUse& use : summary.blobs) {
    const auto it = blob_end.find(use.digest);
    FUZZ_CHECK(it != blob_end.end());
    FUZZ_CHECK(use.end == it->second);
  }
  const absl::flat_hash_set<Digest> digests = ManifestDigests(m);
  FUZZ_CHECK(digests.size() == blob_end.size());
  for (const Digest& d : digests) FUZZ_CHECK(blob_end.contains(d));
}

void FuzzCommitShard(const v1::CommitShardRequest& req) {
  const absl::Status run = ValidateRunName(req.run());
  FUZZ_CHECK(run.ok() || run.code() == absl::StatusCode::kInvalidArgument);
  for (const auto& [name, value] : req.metrics()) {
    const absl::Status st = ValidateMetricName(name);
    FUZZ_CHECK(st.ok() || st.code() == absl::StatusCode::kInvalidArgument);
  }
  const absl::StatusOr<ManifestSummary> summary =
      ValidateManifest(req.manifest());
  if (!summary.ok()) {
    FUZZ_CHECK(summary.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  CheckAccepted(req.manifest(), *summary);
}

}  // namespace
}  // namespace ckptd::core

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ckptd::v1::CommitShardRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  ckptd::core::FuzzCommitShard(req);
  return 0;
}
