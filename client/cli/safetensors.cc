#include "client/cli/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cli/format.h"
#include "nlohmann/json.hpp"
#include "proto/base/dtype.h"

namespace ckptd::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr uint64_t kLengthPrefixBytes = 8;

// Rejects duplicate keys in any object of the header (nlohmann would keep
// one of them silently, and which one is a guess).
class DuplicateKeyCheck {
 public:
  bool operator()(int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        keys_.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys_.empty()) keys_.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys_.empty() && parsed.is_string() &&
            !keys_.back().insert(parsed.get<std::string>()).second &&
            duplicate_.empty()) {
          duplicate_ = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  }
  const std::string& duplicate() const { return duplicate_; }

 private:
  std::vector<std::set<std::string>> keys_;
  std::string duplicate_;
};

absl::Status TensorError(absl::string_view name, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", name, "': ", message));
}

std::string OffsetsText(uint64_t begin, uint64_t end) {
  return absl::StrCat("[", begin, ", ", end, "]");
}

absl::StatusOr<SafetensorsTensor> ParseTensor(const std::string& name,
                                              const Json& entry,
                                              uint64_t data_size) {
  if (name.empty()) {
    return absl::InvalidArgumentError("a tensor has an empty name");
  }
  if (!entry.is_object()) {
    return TensorError(name,
                       "entry must be an object with dtype, shape and "
                       "data_offsets");
  }
  SafetensorsTensor t;
  t.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(name, "missing \"dtype\" (a string such as \"F32\")");
  }
  t.dtype = dtype_it->get<std::string>();
  const DTypeInfo* dtype = FindSafetensorsDType(t.dtype);
  if (dtype == nullptr) {
    return TensorError(name,
                       absl::StrCat("unknown dtype '", t.dtype,
                                    "'; accepted: ", SafetensorsDTypeNames()));
  }
  t.proto_dtype = dtype->dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return TensorError(name,
                       "missing \"shape\" (an array of non-negative integers)");
  }
  for (const Json& dim : *shape_it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return TensorError(name, absl::StrCat("shape ", shape_it->dump(),
                                            " has a negative dimension"));
    }
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() >
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(name, absl::StrCat("shape ", shape_it->dump(),
                                            " must contain only non-negative "
                                            "integers"));
    }
    t.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() ||
      offsets_it->size() != 2 || !(*offsets_it)[0].is_number_unsigned() ||
      !(*offsets_it)[1].is_number_unsigned()) {
    return TensorError(name,
                       "\"data_offsets\" must be [begin, end], two "
                       "non-negative integers");
  }
  t.begin = (*offsets_it)[0].get<uint64_t>();
  t.end = (*offsets_it)[1].get<uint64_t>();
  if (t.begin > t.end) {
    return TensorError(
        name, absl::StrCat("data_offsets ", OffsetsText(t.begin, t.end),
                           " end before they begin"));
  }
  if (t.end > data_size) {
    return TensorError(
        name, absl::StrCat("data_offsets ", OffsetsText(t.begin, t.end),
                           " run past the end of the data section (", data_size,
                           " bytes)"));
  }

  // product(shape) * size, without overflow.
  unsigned __int128 expected = dtype->size;
  bool overflow = false;
  for (int64_t d : t.shape) {
    expected *= static_cast<uint64_t>(d);
    if (expected > std::numeric_limits<uint64_t>::max()) {
      overflow = true;
      expected = 0;  // keep multiplying harmlessly; reported below
    }
  }
  const uint64_t held = t.end - t.begin;
  if (overflow || expected != held) {
    return TensorError(
        name,
        absl::StrCat("data_offsets ", OffsetsText(t.begin, t.end), " hold ",
                     held, " bytes but shape ", FormatShape(t.shape), " of ",
                     t.dtype, " needs ",
                     overflow ? std::string("more than 2^64")
                              : absl::StrCat(static_cast<uint64_t>(expected)),
                     " bytes"));
  }
  return t;
}

absl::Status ParseMetadata(const Json& value,
                           std::map<std::string, std::string>& out) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        "__metadata__ must be an object mapping strings to strings");
  }
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("__metadata__ key '", it.key(),
                       "' must map to a string, not ", it->type_name()));
    }
    out[it.key()] = it->get<std::string>();
  }
  return absl::OkStatus();
}

// One segment of a key path: a string key or an int key.
struct Segment {
  bool is_int = false;
  std::string key;
  int64_t int_key = 0;

  std::string Text() const { return is_int ? absl::StrCat(int_key) : key; }
  // Distinguishes int key 0 from string key "0".
  std::string MapKey() const {
    return is_int ? absl::StrCat("i", int_key) : absl::StrCat("s", key);
  }
};

// One node of the key-path tree BuildPushEntries walks.
struct PathNode {
  Segment segment;
  const SafetensorsTensor* tensor = nullptr;        // null: a container
  std::vector<std::unique_ptr<PathNode>> children;  // insertion order
  absl::flat_hash_map<std::string, PathNode*> by_segment;
};

void EmitPreOrder(const PathNode& node, std::vector<Segment>& path,
                  const SafetensorsFile& file, std::vector<PushEntry>& out) {
  PushEntry entry;
  for (const Segment& seg : path) {
    v1::PathSegment* p = entry.entry.add_path();
    if (seg.is_int) {
      p->set_int_key(seg.int_key);
    } else {
      p->set_key(seg.key);
    }
  }
  if (node.tensor == nullptr) {
    entry.entry.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    out.push_back(std::move(entry));
    for (const auto& child : node.children) {
      path.push_back(child->segment);
      EmitPreOrder(*child, path, file, out);
      path.pop_back();
    }
    return;
  }
  const SafetensorsTensor& t = *node.tensor;
  v1::TensorInfo* info = entry.entry.mutable_tensor();
  info->set_dtype(t.proto_dtype);
  for (int64_t d : t.shape) info->add_shape(d);
  const absl::string_view bytes = file.TensorBytes(t);
  entry.tensor.data = bytes.data();
  entry.tensor.byte_length = bytes.size();
  out.push_back(std::move(entry));
}

// The key paths recorded in __metadata__[kKeyPathsMetadata] (see the
// header), one per tensor in header order; nullopt when the entry is absent,
// malformed, or does not describe every tensor of the file exactly (a
// renamed or added tensor): the names are the truth then.
std::optional<std::vector<std::vector<Segment>>> RecordedKeyPaths(
    const SafetensorsFile& file) {
  auto found = file.metadata.find(kKeyPathsMetadata);
  if (found == file.metadata.end()) return std::nullopt;
  const Json recorded =
      Json::parse(found->second, nullptr, /*allow_exceptions=*/false);
  if (!recorded.is_object()) return std::nullopt;
  std::vector<std::vector<Segment>> out;
  for (const SafetensorsTensor& t : file.tensors) {
    auto it = recorded.find(t.name);
    if (it == recorded.end() || !it->is_array() || it->empty()) {
      return std::nullopt;
    }
    std::vector<Segment> path;
    std::vector<std::string> texts;
    for (const Json& seg : *it) {
      Segment s;
      if (seg.is_string()) {
        s.key = seg.get<std::string>();
      } else if (seg.is_number_integer()) {
        s.is_int = true;
        s.int_key = seg.get<int64_t>();
      } else {
        return std::nullopt;
      }
      texts.push_back(s.Text());
      path.push_back(std::move(s));
    }
    if (absl::StrJoin(texts, ".") != t.name) return std::nullopt;
    out.push_back(std::move(path));
  }
  return out;
}

}  // namespace

absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes) {
  if (bytes.size() < kLengthPrefixBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file is only ", bytes.size(),
        " bytes; a .safetensors file starts with an 8-byte header length"));
  }
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {
    header_length = (header_length << 8) | static_cast<uint8_t>(bytes[i]);
  }
  if (header_length > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length ", header_length, " exceeds the limit of ",
                     kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (kLengthPrefixBytes + header_length > bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header length ", header_length, " runs past the end of the file (",
        bytes.size(), " bytes)"));
  }
  const absl::string_view header_text =
      bytes.substr(kLengthPrefixBytes, header_length);

  DuplicateKeyCheck duplicates;
  Json header;
  try {
    header = Json::parse(header_text.begin(), header_text.end(),
                         std::ref(duplicates));
  } catch (const Json::exception& e) {
    // "[json.exception.parse_error.101] parse error at ..." -> "parse error at"
    absl::string_view what = e.what();
    if (const size_t pos = what.find("] "); pos != absl::string_view::npos) {
      what.remove_prefix(pos + 2);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("header is not valid JSON: ", what));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header must be a JSON object, not ", header.type_name()));
  }
  if (!duplicates.duplicate().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header has the key '", duplicates.duplicate(), "' more than once"));
  }

  SafetensorsFile file;
  file.header_length = header_length;
  file.data = bytes.substr(kLengthPrefixBytes + header_length);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (absl::Status st = ParseMetadata(*it, file.metadata); !st.ok()) {
        return st;
      }
      continue;
    }
    absl::StatusOr<SafetensorsTensor> t =
        ParseTensor(it.key(), *it, file.data.size());
    if (!t.ok()) return t.status();
    file.tensors.push_back(*std::move(t));
  }

  // Overlaps: sort the non-empty ranges; each must start at or after the end
  // of the one before.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : file.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsTensor* a, const SafetensorsTensor* b) {
              return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
            });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsTensor& prev = *by_offset[i - 1];
    const SafetensorsTensor& cur = *by_offset[i];
    if (cur.begin < prev.end) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors '", prev.name, "' (data_offsets ",
                       OffsetsText(prev.begin, prev.end), ") and '", cur.name,
                       "' (data_offsets ", OffsetsText(cur.begin, cur.end),
                       ") overlap; each tensor needs its own bytes"));
    }
  }
  return file;
}

absl::StatusOr<std::vector<PushEntry>> BuildPushEntries(
    const SafetensorsFile& file) {
  std::optional<std::vector<std::vector<Segment>>> paths =
      RecordedKeyPaths(file);
  if (!paths.has_value()) {
    // A flat state dict: each name is one key of the root dict, dots and
    // all, as torch's state_dict() and the file have it.
    paths.emplace();
    for (const SafetensorsTensor& t : file.tensors) {
      if (t.name.empty()) return TensorError(t.name, "name is empty");
      paths->push_back({Segment{false, t.name, 0}});
    }
  }
  PathNode root;
  for (size_t ti = 0; ti < file.tensors.size(); ++ti) {
    const SafetensorsTensor& t = file.tensors[ti];
    const std::vector<Segment>& segments = (*paths)[ti];
    PathNode* node = &root;
    std::string prefix;
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& seg = segments[i];
      absl::StrAppend(&prefix, prefix.empty() ? "" : ".", seg.Text());
      const bool leaf = i + 1 == segments.size();
      auto found = node->by_segment.find(seg.MapKey());
      if (found != node->by_segment.end()) {
        PathNode* child = found->second;
        if (leaf) {
          return TensorError(
              t.name,
              child->tensor != nullptr
                  ? std::string("key path appears twice")
                  : absl::StrCat("key path is also the prefix of other "
                                 "tensors (e.g. '",
                                 prefix, ".",
                                 child->children[0]->segment.Text(), "...')"));
        }
        if (child->tensor != nullptr) {
          return TensorError(t.name,
                             absl::StrCat("key path extends tensor '", prefix,
                                          "'; a tensor cannot also be a "
                                          "container"));
        }
        node = child;
        continue;
      }
      auto child = std::make_unique<PathNode>();
      child->segment = seg;
      if (leaf) child->tensor = &t;
      PathNode* raw = child.get();
      node->by_segment.emplace(seg.MapKey(), raw);
      node->children.push_back(std::move(child));
      node = raw;
    }
  }
  std::vector<PushEntry> entries;
  std::vector<Segment> path;
  EmitPreOrder(root, path, file, entries);
  return entries;
}

}  // namespace ckptd::cli
