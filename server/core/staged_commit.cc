#include "server/core/staged_commit.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "proto/base/digest.h"
#include "proto/base/status.h"
#include "server/core/limits.h"

namespace ckptd::core {
namespace {

uint64_t AlignUp(uint64_t n) {
  return (n + kStagedPackAlignment - 1) / kStagedPackAlignment *
         kStagedPackAlignment;
}

// One blob to store: staged bytes [begin, end).
struct StagedBlob {
  uint64_t begin = 0;
  uint64_t end = 0;
  Digest digest;
};

std::string KeyOf(const v1::ManifestEntry& e) {
  return absl::StrCat("'", KeyPathExcerpt(e.path()), "'");
}

// Digests per FindMissingBlobs call: below any --max_find_missing_digests
// worth setting.
constexpr int kFindMissingBatch = 512;

// Bytes handed to one Append: bounded like an upload stream's chunks.
constexpr uint64_t kAppendBytes = 8 << 20;

}  // namespace

absl::Status CheckStagedLayout(const v1::ShardManifest& manifest,
                               uint64_t staged_bytes) {
  for (const v1::ManifestEntry& e : manifest.entries()) {
    if (!e.has_tensor()) continue;
    const v1::TensorInfo& t = e.tensor();
    if (!t.blob_digest().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", KeyOf(e),
                       " names a blob digest; a co-located commit gives each "
                       "tensor's offset in the staged memory instead"));
    }
    const uint64_t begin = t.blob_offset();
    const uint64_t len = t.byte_length();
    if (begin > staged_bytes || len > staged_bytes - begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", KeyOf(e), " at offset ", begin, " of ", len,
          " bytes lies outside the ", staged_bytes, " staged bytes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::VersionInfo> CommitStagedShard(
    Repository& repo, absl::string_view staged, v1::CommitShardRequest req,
    const Actor& actor, const Repository::RunFilter& may_use) {
  // Plan: blobs and, per tensor entry, (blob index, offset in it).
  std::vector<StagedBlob> blobs;
  struct Use {
    v1::TensorInfo* tensor;
    size_t blob;
    uint64_t offset;
  };
  std::vector<Use> uses;
  bool pack_open = false;
  size_t pack = 0;
  CKPTD_RETURN_IF_ERROR(CheckStagedLayout(req.manifest(), staged.size()));
  auto& entries = *req.mutable_manifest()->mutable_entries();
  for (v1::ManifestEntry& e : entries) {
    if (!e.has_tensor()) continue;
    v1::TensorInfo* t = e.mutable_tensor();
    const uint64_t begin = t->blob_offset();
    const uint64_t len = t->byte_length();
    if (len >= kStagedPackThreshold) {
      pack_open = false;
      blobs.push_back(StagedBlob{begin, begin + len, {}});
      uses.push_back(Use{t, blobs.size() - 1, 0});
      continue;
    }
    if (pack_open) {
      StagedBlob& p = blobs[pack];
      const uint64_t filled = p.end - p.begin;
      const uint64_t at = len == 0 ? filled : AlignUp(filled);
      if (begin == p.begin + at && at + len <= kStagedPackSize) {
        p.end = begin + len;
        uses.push_back(Use{t, pack, at});
        continue;
      }
    }
    blobs.push_back(StagedBlob{begin, begin + len, {}});
    pack = blobs.size() - 1;
    pack_open = true;
    uses.push_back(Use{t, pack, 0});
  }

  // Hash, then keep one blob per digest.
  for (StagedBlob& b : blobs) {
    b.digest = DigestOf(staged.data() + b.begin, b.end - b.begin);
  }
  absl::flat_hash_map<Digest, size_t> first;
  v1::FindMissingBlobsRequest find;
  find.set_run(req.run());
  find.set_version(req.version());
  for (size_t i = 0; i < blobs.size(); ++i) {
    if (first.try_emplace(blobs[i].digest, i).second) {
      find.add_digests(std::string(blobs[i].digest.AsBytes()));
    }
  }
  for (const Use& u : uses) {
    u.tensor->set_blob_digest(std::string(blobs[u.blob].digest.AsBytes()));
    u.tensor->set_blob_offset(u.offset);
  }

  // FindMissingBlobs takes at most a bounded number of digests per call.
  absl::flat_hash_set<Digest> missing;
  const int per_call = kFindMissingBatch;
  for (int from = 0; from < find.digests_size(); from += per_call) {
    v1::FindMissingBlobsRequest part;
    part.set_run(find.run());
    part.set_version(find.version());
    for (int i = from; i < std::min(find.digests_size(), from + per_call);
         ++i) {
      part.add_digests(find.digests(i));
    }
    CKPTD_ASSIGN_OR_RETURN(v1::FindMissingBlobsResponse found,
                           repo.FindMissingBlobs(part, may_use));
    for (const std::string& m : found.missing()) {
      CKPTD_ASSIGN_OR_RETURN(Digest d, DigestFromBytes(m));
      missing.insert(d);
    }
  }

  for (const auto& [digest, index] : first) {
    if (!missing.contains(digest)) continue;
    const StagedBlob& b = blobs[index];
    const uint64_t size = b.end - b.begin;
    CKPTD_ASSIGN_OR_RETURN(
        std::unique_ptr<BlobUpload> upload,
        repo.StartBlobUpload(req.run(), req.version(), digest, size, 0, actor));
    for (uint64_t at = 0; at < size; at += kAppendBytes) {
      const uint64_t n = std::min(kAppendBytes, size - at);
      CKPTD_RETURN_IF_ERROR(upload->Append(at, staged.substr(b.begin + at, n)));
    }
    CKPTD_RETURN_IF_ERROR(upload->Finish());
  }
  return repo.CommitShard(req, actor);
}

}  // namespace ckptd::core
