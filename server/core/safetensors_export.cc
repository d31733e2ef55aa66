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
  fields.push_back(absl::StrCat(
      "\"__metadata__\":{\"format\":\"pt\",\"run\":", JsonString(info.run()),
      ",\"version\":", JsonString(absl::StrCat(info.version())),
      ",\"step\":", JsonString(absl::StrCat(info.step())),
      ",\"epoch\":", JsonString(absl::StrCat(info.epoch())),
      ",\"rank\":", JsonString(absl::StrCat(shard.rank())),
      ",\"torch_version\":", JsonString(info.env().torch_version()),
      ",\"metrics\":",
      JsonString(absl::StrCat("{", absl::StrJoin(metric_fields, ","), "}")),
      "}"));
  uint64_t offset = 0;
  size_t selected = 0;
  // .safetensors names are flat strings: {"a.b": t} and {"a": {"b": t}}
  // (or int key 0 and string key "0") would collide.
  absl::flat_hash_set<std::string> names = {"__metadata__"};
  for (const auto& e : shard.entries()) {
    if (!e.has_tensor()) continue;
    const std::string name = DottedKeyPath(e.path());
    if (!Selected(name, keys)) continue;
    if (!names.insert(name).second) {
      return absl::FailedPreconditionError(absl::StrCat(
          "two tensors (or a tensor and the header's __metadata__) map to the "
          ".safetensors name '",
          name, "'; select one of them with --keys"));
    }
    ++selected;
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
    fields.push_back(absl::StrCat(
        JsonString(name), ":{\"dtype\":\"", dtype, "\",\"shape\":[",
        absl::StrJoin(t.shape(), ","), "],\"data_offsets\":[", offset, ",",
        offset + t.byte_length(), "]}"));
    // A zero-size tensor has no bytes to stream (and a zero-length slice
    // would read to the end of its blob).
    if (t.byte_length() > 0) {
      plan.slices.push_back({*digest, t.blob_offset(), t.byte_length()});
    }
    offset += t.byte_length();
  }
  if (selected == 0 && !keys.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor of ", info.run(), "@", info.version(), " rank ",
        shard.rank(), " matches keys [", absl::StrJoin(keys, ", "), "]"));
  }
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
