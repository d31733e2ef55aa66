// Parsing and validation of .safetensors files, and their translation into
// ckptd push entries.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of a UTF-8 JSON object, then the data section.
// The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} with offsets relative to the data section, plus an optional
// "__metadata__" string->string map.
//
// ParseSafetensors checks everything before a byte is sent anywhere:
//   - N is at most kMaxSafetensorsHeaderBytes and 8 + N fits in the file;
//   - the header is a JSON object without duplicate keys;
//   - every tensor has a known dtype, a shape of non-negative integers and
//     data_offsets [begin, end] with begin <= end inside the data section;
//   - end - begin == product(shape) * dtype size;
//   - no two tensors' byte ranges overlap;
//   - __metadata__, when present, maps strings to strings.
// Unknown fields in a tensor entry are ignored, and bytes after the last
// tensor are tolerated (other readers accept both). Every error is
// INVALID_ARGUMENT and names the tensor and the rule it breaks.
//
// The parsed file refers into the caller's bytes (usually a MappedFile); it
// must not outlive them.
//
// Thread safety: pure functions.
#ifndef CKPTD_CLIENT_CLI_SAFETENSORS_H_
#define CKPTD_CLIENT_CLI_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ckptd/client.h"

namespace ckptd::cli {

// The safetensors reference implementation's limit on the header size.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "BF16", ...
  DType proto_dtype = v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
};

struct SafetensorsFile {
  uint64_t header_length = 0;
  // Tensors in header order.
  std::vector<SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;
  // The data section (everything after the header).
  absl::string_view data;

  absl::string_view TensorBytes(const SafetensorsTensor& t) const {
    return data.substr(t.begin, t.end - t.begin);
  }
};

// Validates `bytes` as a whole .safetensors file (see the file comment).
absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes);

// The __metadata__ entry in which `ckpt pull` (the server's export) records
// each tensor's key path: a JSON object mapping the tensor name to its path
// segments, strings for string keys and numbers for int keys, e.g.
// {"model.0.weight": ["model", "0.weight"], "opt.state.0.m": ["opt",
// "state", 0, "m"]}. The dotted name alone cannot tell {"model": {"0.weight":
// t}} from {"model": {"0": {"weight": t}}}.
inline constexpr char kKeyPathsMetadata[] = "ckptd_key_paths";

// The push entries of a parsed file: a root DICT container, then the tensor
// leaves (data pointing into `file.data`), in header order.
//   - With __metadata__[kKeyPathsMetadata] describing every tensor (a file
//     made by `ckpt pull`), each tensor goes back to its recorded key path,
//     in nested DICT containers created in pre-order: the version's key set
//     round-trips exactly.
//   - Otherwise (any other writer, or an edited file) each name is one key
//     of the root dict, dots included: {"model.layers.0.weight": t}, as
//     state_dict() has it.
// INVALID_ARGUMENT for recorded paths that collide (a path that is both a
// tensor and a prefix of another).
absl::StatusOr<std::vector<PushEntry>> BuildPushEntries(
    const SafetensorsFile& file);

}  // namespace ckptd::cli

#endif  // CKPTD_CLIENT_CLI_SAFETENSORS_H_
