#include "server/core/manifest.h"

#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"

namespace ckptd::core {
namespace {

std::string PathKey(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path,
    int length) {
  std::string out;
  for (int i = 0; i < length; ++i) {
    const auto& seg = path[i];
    if (seg.kind_case() == v1::PathSegment::kIntKey) {
      absl::StrAppend(&out, "i", seg.int_key(), "\x1f");
    } else {
      absl::StrAppend(&out, "s", seg.key(), "\x1f");
    }
  }
  return out;
}

absl::Status CheckValue(const v1::Value& v, int depth, const std::string& where,
                        const Limits& limits) {
  if (depth > limits.value_depth) {
    return OverLimit(absl::StrCat("the list nesting of the value of ", where),
                     depth, "levels", limits.value_depth, "max_value_depth");
  }
  switch (v.kind_case()) {
    case v1::Value::KIND_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat("the value of ", where, " has no kind set"));
    case v1::Value::kListValue:
      if (static_cast<size_t>(v.list_value().items_size()) >
          limits.list_length) {
        return OverLimit(absl::StrCat("a list in the value of ", where),
                         v.list_value().items_size(), "items",
                         limits.list_length, "max_list_length");
      }
      for (const auto& item : v.list_value().items()) {
        CKPTD_RETURN_IF_ERROR(CheckValue(item, depth + 1, where, limits));
      }
      return absl::OkStatus();
    default:
      return absl::OkStatus();
  }
}

}  // namespace

absl::flat_hash_set<Digest> ManifestDigests(const v1::ShardManifest& m) {
  absl::flat_hash_set<Digest> out;
  for (const auto& e : m.entries()) {
    if (!e.has_tensor()) continue;
    auto d = DigestFromBytes(e.tensor().blob_digest());
    if (d.ok()) out.insert(*d);
  }
  return out;
}

absl::StatusOr<ManifestSummary> ValidateManifest(const v1::ShardManifest& m,
                                                 const Limits& limits) {
  ManifestSummary summary;
  if (m.entries_size() == 0) {
    return absl::InvalidArgumentError(
        "manifest is empty; a shard has at least its root container");
  }
  if (static_cast<size_t>(m.entries_size()) > limits.manifest_entries) {
    return OverLimit("the manifest", m.entries_size(), "entries",
                     limits.manifest_entries, "max_manifest_entries");
  }
  if (const size_t bytes = m.ByteSizeLong(); bytes > limits.manifest_bytes) {
    return OverLimit("the manifest", bytes, "bytes", limits.manifest_bytes,
                     "max_manifest_bytes");
  }
  absl::flat_hash_set<std::string> containers;
  absl::flat_hash_set<std::string> seen;
  absl::flat_hash_map<Digest, size_t> blob_index;
  for (int i = 0; i < m.entries_size(); ++i) {
    const v1::ManifestEntry& e = m.entries(i);
    const std::string key = KeyPathExcerpt(e.path());
    const std::string where =
        absl::StrCat("manifest entry ", i, " ('", key, "')");
    if (e.path_size() > limits.key_depth) {
      return OverLimit(absl::StrCat("the key path of ", where), e.path_size(),
                       "segments", limits.key_depth, "max_key_depth");
    }
    for (const auto& seg : e.path()) {
      if (seg.kind_case() == v1::PathSegment::KIND_NOT_SET) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " has a path segment with no key"));
      }
      if (seg.kind_case() == v1::PathSegment::kKey &&
          seg.key().size() > limits.key_segment_bytes) {
        return OverLimit(absl::StrCat("a key segment of ", where),
                         seg.key().size(), "bytes", limits.key_segment_bytes,
                         "max_key_segment_bytes");
      }
    }
    if (i == 0) {
      if (e.path_size() != 0 || !e.has_container()) {
        return absl::InvalidArgumentError(
            "manifest entry 0 must be the root container (empty path)");
      }
    } else {
      if (e.path_size() == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " has an empty path; only entry 0 may"));
      }
      if (!containers.contains(PathKey(e.path(), e.path_size() - 1))) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " has no parent container earlier in the manifest"));
      }
    }
    std::string full = PathKey(e.path(), e.path_size());
    if (!seen.insert(full).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " repeats an earlier key path"));
    }
    switch (e.kind_case()) {
      case v1::ManifestEntry::kContainer:
        if (e.container().kind() == v1::ContainerInfo::KIND_UNSPECIFIED) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " is a container of unspecified kind"));
        }
        containers.insert(std::move(full));
        break;
      case v1::ManifestEntry::kValue:
        CKPTD_RETURN_IF_ERROR(CheckValue(e.value(), 0, where, limits));
        break;
      case v1::ManifestEntry::kTensor: {
        const v1::TensorInfo& t = e.tensor();
        const uint64_t elem = DTypeByteSize(t.dtype());
        if (elem == 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, " has unknown dtype ", static_cast<int>(t.dtype())));
        }
        if (t.shape_size() > kMaxTensorRank) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " has ", t.shape_size(),
                           " dimensions; the limit is ", kMaxTensorRank));
        }
        uint64_t bytes = elem;
        for (int64_t d : t.shape()) {
          if (d < 0) {
            return absl::InvalidArgumentError(
                absl::StrCat(where, " has negative dimension ", d));
          }
          if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() /
                                    static_cast<uint64_t>(d)) {
            return absl::InvalidArgumentError(
                absl::StrCat(where, " has a shape whose size overflows"));
          }
          bytes *= static_cast<uint64_t>(d);
        }
        if (bytes != t.byte_length()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " declares byte_length ", t.byte_length(),
                           " but shape x dtype size is ", bytes));
        }
        auto digest = DigestFromBytes(t.blob_digest());
        if (!digest.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": ", digest.status().message()));
        }
        if (t.blob_offset() >
            std::numeric_limits<uint64_t>::max() - t.byte_length()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " has a blob range that overflows"));
        }
        const uint64_t end = t.blob_offset() + t.byte_length();
        auto [it, inserted] =
            blob_index.try_emplace(*digest, summary.blobs.size());
        if (inserted) {
          summary.blobs.push_back(BlobUse{*digest, end, key});
        } else if (summary.blobs[it->second].end < end) {
          summary.blobs[it->second].end = end;
          summary.blobs[it->second].key = key;
        }
        summary.total_bytes += bytes;
        ++summary.tensor_count;
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(where, " is neither container, value nor tensor"));
    }
  }
  return summary;
}

}  // namespace ckptd::core
