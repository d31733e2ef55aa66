// Fuzzes the .safetensors validator of `ckpt push` (client/cli/
// safetensors.h) with whole files. For every file it accepts: the header
// fits in the file, the data section is the rest of it, each tensor has a
// known dtype, distinct name and offsets inside the data section that hold
// exactly product(shape) * dtype size bytes, and no two tensors share a
// byte. The push entries built from it start with the root container, every
// other entry's parent container comes before it, and each tensor entry
// carries the named tensor's bytes. Every refusal is INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/cli/safetensors.h"
#include "proto/base/dtype.h"
#include "tests/fuzz/fuzz_check.h"

namespace ckptd::cli {
namespace {

// Keeps the pairwise overlap check cheap on inputs with many tiny tensors.
constexpr size_t kMaxTensorsChecked = 512;

bool Within(absl::string_view inner, absl::string_view outer) {
  return inner.data() >= outer.data() &&
         inner.data() + inner.size() <= outer.data() + outer.size();
}

void CheckFile(absl::string_view bytes, const SafetensorsFile& file) {
  FUZZ_CHECK(file.header_length <= bytes.size() - 8);
  FUZZ_CHECK(file.data.data() == bytes.data() + 8 + file.header_length);
  FUZZ_CHECK(file.data.size() == bytes.size() - 8 - file.header_length);
  std::set<std::string> names;
  for (const SafetensorsTensor& t : file.tensors) {
    FUZZ_CHECK(names.insert(t.name).second);
    FUZZ_CHECK(t.name != "__metadata__");
    FUZZ_CHECK(t.begin <= t.end && t.end <= file.data.size());
    const uint64_t elem = DTypeByteSize(t.proto_dtype);
    FUZZ_CHECK(elem != 0);
    const uint64_t held_bytes = t.end - t.begin;
    bool zero = false;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0);
      zero = zero || d == 0;
    }
    if (zero) {
      FUZZ_CHECK(held_bytes == 0);
    } else {
      // Every factor is >= 1, so the product only grows: checking it after
      // each step keeps it below 2^128.
      unsigned __int128 want = elem;
      for (int64_t d : t.shape) {
        want *= static_cast<uint64_t>(d);
        FUZZ_CHECK(want <= held_bytes);
      }
      FUZZ_CHECK(want == held_bytes);
    }
    const absl::string_view held = file.TensorBytes(t);
    FUZZ_CHECK(held.size() == t.end - t.begin);
    FUZZ_CHECK(Within(held, file.data));
  }
  if (file.tensors.size() > kMaxTensorsChecked) return;
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    for (size_t j = i + 1; j < file.tensors.size(); ++j) {
      const SafetensorsTensor& a = file.tensors[i];
      const SafetensorsTensor& b = file.tensors[j];
      const bool empty = a.begin == a.end || b.begin == b.end;
      FUZZ_CHECK(empty || a.end <= b.begin || b.end <= a.begin);
    }
  }
}

void CheckEntries(const SafetensorsFile& file,
                  const std::vector<PushEntry>& entries) {
  FUZZ_CHECK(!entries.empty());
  FUZZ_CHECK(entries[0].entry.path_size() == 0);
  FUZZ_CHECK(entries[0].entry.has_container());
  std::set<std::string> containers = {""};
  size_t tensors = 0;
  for (size_t i = 1; i < entries.size(); ++i) {
    const ManifestEntry& e = entries[i].entry;
    FUZZ_CHECK(e.path_size() > 0);
    std::vector<std::string> segments;
    for (const auto& seg : e.path()) {
      FUZZ_CHECK(!seg.key().empty());
      segments.push_back(seg.key());
    }
    const std::string name = absl::StrJoin(segments, ".");
    segments.pop_back();
    FUZZ_CHECK(containers.contains(absl::StrJoin(segments, ".")));
    if (e.has_container()) {
      FUZZ_CHECK(containers.insert(name).second);
      continue;
    }
    FUZZ_CHECK(e.has_tensor());
    ++tensors;
    const SafetensorsTensor* t = nullptr;
    for (const SafetensorsTensor& candidate : file.tensors) {
      if (candidate.name == name) t = &candidate;
    }
    FUZZ_CHECK(t != nullptr);
    FUZZ_CHECK(e.tensor().dtype() == t->proto_dtype);
    FUZZ_CHECK(e.tensor().shape_size() == static_cast<int>(t->shape.size()));
    const absl::string_view held = file.TensorBytes(*t);
    FUZZ_CHECK(entries[i].tensor.data == held.data());
    FUZZ_CHECK(entries[i].tensor.byte_length == held.size());
  }
  FUZZ_CHECK(tensors == file.tensors.size());
}

void FuzzSafetensors(absl::string_view bytes) {
  const absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  CheckFile(bytes, *file);
  const absl::StatusOr<std::vector<PushEntry>> entries =
      BuildPushEntries(*file);
  if (!entries.ok()) {
    FUZZ_CHECK(entries.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  CheckEntries(*file, *entries);
}

}  // namespace
}  // namespace ckptd::cli

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ckptd::cli::FuzzSafetensors({reinterpret_cast<const char*>(data), size});
  return 0;
}
