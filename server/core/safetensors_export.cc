#include "server/core/safetensors_export.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/core/manifest.h"

namespace ckptd::core {
namespace {

constexpr size_t kHeaderAlignment = 8;
// Tensors whose size allows it start at a multiple of this in the file.
constexpr uint64_t kDataAlignment = kHeaderAlignment;
// The __metadata__ key of the tensors' key paths (the CLI's
// kKeyPathsMetadata, client/cli/safetensors.h: `ckpt push` reads it back).
constexpr char kKeyPathsMetadata[] = "ckptd_key_paths";

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

std::string JsonNumber(double v) {
  if (std::isnan(v) || std::isinf(v)) return JsonString(absl::StrCat(v));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// ["model", "0.weight"]: strings for string keys, numbers for int keys.
std::string KeyPathJson(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path) {
  std::vector<std::string> segments;
  for (const v1::PathSegment& seg : path) {
    segments.push_back(seg.kind_case() == v1::PathSegment::kIntKey
                           ? absl::StrCat(seg.int_key())
                           : JsonString(seg.key()));
  }
  return absl::StrCat("[", absl::StrJoin(segments, ","), "]");
}

bool Selected(const std::string& name, const std::vector<std::string>& keys) {
  if (keys.empty()) return true;
  for (const auto& k : keys) {
    if (name == k || absl::StartsWith(name, absl::StrCat(k, "."))) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<SafetensorsPlan> PlanSafetensors(
    const v1::VersionInfo& info, const v1::ShardManifest& shard,
    const std::vector<std::string>& keys) {
  SafetensorsPlan plan;
  std::vector<std::string> fields;
  std::vector<std::pair<std::string, double>> metrics(info.metrics().begin(),
                                                      info.metrics().end());
  std::sort(metrics.begin(), metrics.end());
  std::vector<std::string> metric_fields;
  for (const auto& [k, v] : metrics) {
    metric_fields.push_back(absl::StrCat(JsonString(k), ":", JsonNumber(v)));
  }
  std::vector<std::string> key_paths;
  std::vector<std::string> tensor_fields;
  const auto metadata = [&] {
    return absl::StrCat(
        "\"__metadata__\":{\"format\":\"pt\",\"run\":", JsonString(info.run()),
        ",\"version\":", JsonString(absl::StrCat(info.version())),
        ",\"step\":", JsonString(absl::StrCat(info.step())),
        ",\"epoch\":", JsonString(absl::StrCat(info.epoch())),
        ",\"rank\":", JsonString(absl::StrCat(shard.rank())),
        ",\"torch_version\":", JsonString(info.env().torch_version()),
        ",\"metrics\":",
        JsonString(absl::StrCat("{", absl::StrJoin(metric_fields, ","), "}")),
        ",\"", kKeyPathsMetadata, "\":",
        JsonString(absl::StrCat("{", absl::StrJoin(key_paths, ","), "}")), "}");
  };
  struct Planned {
    std::string name;
    const v1::ManifestEntry* entry;
    const char* dtype;
    uint64_t element_size;
    Digest digest;
    uint64_t offset = 0;
  };
  std::vector<Planned> planned;
  // .safetensors names are flat strings: {"a.b": t} and {"a": {"b": t}}
  // (or int key 0 and string key "0") would collide.
  absl::flat_hash_set<std::string> names = {"__metadata__"};
  for (const auto& e : shard.entries()) {
    if (!e.has_tensor()) continue;
    std::string name = DottedKeyPath(e.path());
    if (!Selected(name, keys)) continue;
    if (!names.insert(name).second) {
      return absl::FailedPreconditionError(absl::StrCat(
          "two tensors (or a tensor and the header's __metadata__) map to the "
          ".safetensors name '",
          name, "'; select one of them with --keys"));
    }
    const v1::TensorInfo& t = e.tensor();
    const DTypeInfo* row = FindDType(t.dtype());
    const char* dtype = row == nullptr ? nullptr : row->safetensors;
    if (dtype == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor '", name, "' has dtype ", v1::DType_Name(t.dtype()),
          ", which .safetensors cannot hold; select other keys with --keys"));
    }
    auto digest = DigestFromBytes(t.blob_digest());
    if (!digest.ok()) return digest.status();
    planned.push_back({std::move(name), &e, dtype, row->size, *digest});
  }
  if (planned.empty() && !keys.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor of ", info.run(), "@", info.version(), " rank ",
        shard.rank(), " matches keys [", absl::StrJoin(keys, ", "), "]"));
  }

  // Data layout. The format allows no holes between tensors (the reference
  // reader rejects them), so alignment comes from the order: first every
  // tensor whose size is a multiple of kDataAlignment (each starts 8-byte
  // aligned: the header is padded so the data section does), then the rest
  // by element size, largest first, so that every tensor starts at a
  // multiple of its element size. Manifest order within each group; the
  // header lists the tensors in manifest order.
  const auto layout_group = [](const Planned& p) -> uint64_t {
    const uint64_t n = p.entry->tensor().byte_length();
    if (n % kDataAlignment == 0) return 0;
    return kDataAlignment + 1 - std::min(p.element_size, kDataAlignment);
  };
  std::vector<Planned*> layout;
  for (Planned& p : planned) layout.push_back(&p);
  std::stable_sort(layout.begin(), layout.end(),
                   [&](const Planned* a, const Planned* b) {
                     return layout_group(*a) < layout_group(*b);
                   });
  uint64_t offset = 0;
  for (Planned* p : layout) {
    const v1::TensorInfo& t = p->entry->tensor();
    p->offset = offset;
    // A zero-size tensor has no bytes to stream (and a zero-length slice
    // would read to the end of its blob).
    if (t.byte_length() > 0) {
      plan.slices.push_back({p->digest, t.blob_offset(), t.byte_length()});
    }
    offset += t.byte_length();
  }
  for (const Planned& p : planned) {
    const v1::TensorInfo& t = p.entry->tensor();
    key_paths.push_back(
        absl::StrCat(JsonString(p.name), ":", KeyPathJson(p.entry->path())));
    tensor_fields.push_back(absl::StrCat(
        JsonString(p.name), ":{\"dtype\":\"", p.dtype, "\",\"shape\":[",
        absl::StrJoin(t.shape(), ","), "],\"data_offsets\":[", p.offset, ",",
        p.offset + t.byte_length(), "]}"));
  }
  fields.push_back(metadata());
  fields.insert(fields.end(), tensor_fields.begin(), tensor_fields.end());
  std::string json = absl::StrCat("{", absl::StrJoin(fields, ","), "}");
  while (json.size() % kHeaderAlignment != 0) json += ' ';
  const uint64_t n = json.size();
  plan.header.resize(8);
  for (int i = 0; i < 8; ++i) plan.header[i] = static_cast<char>(n >> (8 * i));
  plan.header += json;
  plan.total_size = plan.header.size() + offset;
  return plan;
}

}  // namespace ckptd::core
