#include "client/cli/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
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

// One node of the tensor-name tree BuildPushEntries walks.
struct NameNode {
  std::string segment;
  const SafetensorsTensor* tensor = nullptr;        // null: a container
  std::vector<std::unique_ptr<NameNode>> children;  // insertion order
  absl::flat_hash_map<std::string, NameNode*> by_segment;
};

void EmitPreOrder(const NameNode& node, std::vector<std::string>& path,
                  const SafetensorsFile& file, std::vector<PushEntry>& out) {
  PushEntry entry;
  for (const std::string& seg : path) {
    entry.entry.add_path()->set_key(seg);
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
  NameNode root;
  for (const SafetensorsTensor& t : file.tensors) {
    const std::vector<std::string> segments = absl::StrSplit(t.name, '.');
    for (const std::string& seg : segments) {
      if (seg.empty()) {
        return TensorError(t.name,
                           "name has an empty segment between dots; names "
                           "look like \"model.layers.0.weight\"");
      }
    }
    NameNode* node = &root;
    std::string prefix;
    for (size_t i = 0; i < segments.size(); ++i) {
      const std::string& seg = segments[i];
      absl::StrAppend(&prefix, prefix.empty() ? "" : ".", seg);
      const bool leaf = i + 1 == segments.size();
      auto found = node->by_segment.find(seg);
      if (found != node->by_segment.end()) {
        NameNode* child = found->second;
        if (leaf) {
          return TensorError(
              t.name,
              child->tensor != nullptr
                  ? std::string("name appears twice")
                  : absl::StrCat("name is also the prefix of other tensors "
                                 "(e.g. '",
                                 prefix, ".", child->children[0]->segment,
                                 "...')"));
        }
        if (child->tensor != nullptr) {
          return TensorError(t.name,
                             absl::StrCat("name extends tensor '", prefix,
                                          "'; a tensor cannot also be a "
                                          "container"));
        }
        node = child;
        continue;
      }
      auto child = std::make_unique<NameNode>();
      child->segment = seg;
      if (leaf) child->tensor = &t;
      NameNode* raw = child.get();
      node->by_segment.emplace(seg, raw);
      node->children.push_back(std::move(child));
      node = raw;
    }
  }
  std::vector<PushEntry> entries;
  std::vector<std::string> path;
  EmitPreOrder(root, path, file, entries);
  return entries;
}

}  // namespace ckptd::cli
