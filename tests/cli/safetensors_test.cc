// Unit tests of the .safetensors validator and the push-entry builder.
#include "client/cli/safetensors.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/dtype.h"
#include "tests/cli/cli_test_util.h"

namespace ckptd::cli {
namespace {

using ::ckptd::cli::test_util::EncodeRaw;
using ::ckptd::cli::test_util::EncodeSafetensors;
using ::ckptd::cli::test_util::PatternBytes;
using ::ckptd::cli::test_util::TestTensor;
using ::testing::HasSubstr;

// A file whose length prefix claims `claimed` bytes of header.
std::string WithClaimedLength(uint64_t claimed, const std::string& rest) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out += static_cast<char>((claimed >> (8 * i)) & 0xFF);
  return out + rest;
}

struct BadFileCase {
  const char* name;
  std::string bytes;
  std::vector<std::string> expected;  // substrings of the error message
};

TEST(SafetensorsTest, RejectsBadFilesWithClearMessages) {
  const std::string eight(8, 'x');
  const std::string twelve(12, 'x');
  const std::vector<BadFileCase> cases = {
      {"shorter than the length prefix", "abc", {"only 3 bytes", "8-byte"}},
      {"header length past EOF",
       WithClaimedLength(1000, "{}"),
       {"header length 1000", "runs past the end of the file (10 bytes)"}},
      {"header length over the limit",
       WithClaimedLength(200'000'000, "{}"),
       {"header length 200000000", "exceeds the limit of 100000000"}},
      {"header not JSON",
       EncodeRaw("{not json", ""),
       {"header is not valid JSON", "parse error"}},
      {"header not an object",
       EncodeRaw("[1, 2]", ""),
       {"header must be a JSON object", "array"}},
      {"unknown dtype",
       EncodeRaw(
           R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})",
           "xx"),
       {"tensor 'w'", "unknown dtype 'F8_E4M3'", "accepted: F64, F32"}},
      {"offsets out of range",
       EncodeRaw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                 eight),
       {"tensor 'w'", "data_offsets [0, 16]",
        "run past the end of the data section (8 bytes)"}},
      {"overlapping ranges",
       EncodeRaw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 twelve),
       {"tensors 'a'", "'b'", "overlap"}},
      {"size mismatch",
       EncodeRaw(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
                 twelve),
       {"tensor 'w'", "hold 12 bytes", "shape [2, 2] of F32 needs 16 bytes"}},
      {"negative dimension",
       EncodeRaw(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})",
                 eight),
       {"tensor 'w'", "negative dimension"}},
      {"fractional dimension",
       EncodeRaw(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})",
                 "x"),
       {"tensor 'w'", "non-negative integers"}},
      {"offsets reversed",
       EncodeRaw(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})",
                 eight),
       {"tensor 'w'", "end before they begin"}},
      {"offsets not a pair",
       EncodeRaw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "x"),
       {"tensor 'w'", "data_offsets", "[begin, end]"}},
      {"missing dtype",
       EncodeRaw(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", "x"),
       {"tensor 'w'", "missing \"dtype\""}},
      {"missing shape",
       EncodeRaw(R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", "x"),
       {"tensor 'w'", "missing \"shape\""}},
      {"entry not an object",
       EncodeRaw(R"({"w":[1,2]})", ""),
       {"tensor 'w'", "must be an object"}},
      {"metadata value not a string",
       EncodeRaw(R"({"__metadata__":{"epoch":3}})", ""),
       {"__metadata__ key 'epoch'", "must map to a string"}},
      {"metadata not an object",
       EncodeRaw(R"({"__metadata__":"x"})", ""),
       {"__metadata__ must be an object"}},
      {"duplicate key",
       EncodeRaw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                 R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                 "xx"),
       {"'w' more than once"}},
      {"empty tensor name",
       EncodeRaw(R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                 "x"),
       {"empty name"}},
      {"shape overflow",
       EncodeRaw(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],)"
                 R"("data_offsets":[0,1]}})",
                 "x"),
       {"tensor 'w'", "more than 2^64"}},
  };
  for (const BadFileCase& c : cases) {
    absl::StatusOr<SafetensorsFile> file = ParseSafetensors(c.bytes);
    ASSERT_FALSE(file.ok()) << c.name;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    for (const std::string& want : c.expected) {
      EXPECT_THAT(std::string(file.status().message()), HasSubstr(want))
          << c.name;
    }
  }
}

TEST(SafetensorsTest, ParsesValidFile) {
  const std::vector<TestTensor> tensors = {
      {"model.w", "F32", {2, 3}, PatternBytes(24, 1)},
      {"model.b", "BF16", {3}, PatternBytes(6, 2)},
      {"step", "I64", {}, PatternBytes(8, 3)},
      {"empty", "F16", {0, 4}, ""},
      {"mask", "BOOL", {5}, PatternBytes(5, 4)},
      {"z", "C64", {1}, PatternBytes(8, 5)},
  };
  const std::string bytes =
      EncodeSafetensors(tensors, {{"format", "pt"}, {"note", "hi"}});
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), tensors.size());
  EXPECT_EQ(file->metadata.at("format"), "pt");
  EXPECT_EQ(file->metadata.at("note"), "hi");
  EXPECT_EQ(file->header_length % 8, 0u);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsTensor& t = file->tensors[i];
    EXPECT_EQ(t.name, tensors[i].name) << "header order is kept";
    EXPECT_EQ(t.dtype, tensors[i].dtype);
    EXPECT_EQ(t.shape, tensors[i].shape);
    EXPECT_EQ(file->TensorBytes(t), tensors[i].bytes) << t.name;
  }
  EXPECT_EQ(file->tensors[0].proto_dtype, v1::FLOAT32);
  EXPECT_EQ(file->tensors[1].proto_dtype, v1::BFLOAT16);
  EXPECT_EQ(file->tensors[2].proto_dtype, v1::INT64);
  EXPECT_EQ(file->tensors[4].proto_dtype, v1::BOOL);
  EXPECT_EQ(file->tensors[5].proto_dtype, v1::COMPLEX64);
}

TEST(SafetensorsTest, AcceptsEmptyFileHeaderAndEmptyRangesAtSameOffset) {
  EXPECT_TRUE(ParseSafetensors(EncodeRaw("{}", "")).ok());
  EXPECT_TRUE(ParseSafetensors(EncodeRaw("{}      ", "")).ok());
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("c":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
  absl::StatusOr<SafetensorsFile> file =
      ParseSafetensors(EncodeRaw(header, "abcd"));
  EXPECT_TRUE(file.ok()) << file.status();
}

TEST(SafetensorsTest, DTypeTable) {
  const std::vector<std::pair<std::string, uint64_t>> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
      {"U16", 2}, {"U32", 4}, {"U64", 8}, {"C64", 8}};
  for (const auto& [name, size] : sizes) {
    const DTypeInfo* d = FindSafetensorsDType(name);
    ASSERT_NE(d, nullptr) << name;
    EXPECT_EQ(d->size, size) << name;
    EXPECT_EQ(DTypeSize(d->dtype), size) << name;
  }
  EXPECT_EQ(FindSafetensorsDType("F8_E5M2"), nullptr);
  EXPECT_EQ(FindSafetensorsDType("f32"), nullptr);
}

// "/model/0.weight"; an int key shows as "#3".
std::string PathText(const ManifestEntry& e) {
  std::vector<std::string> parts;
  for (const auto& seg : e.path()) {
    parts.push_back(seg.kind_case() == v1::PathSegment::kIntKey
                        ? absl::StrCat("#", seg.int_key())
                        : seg.key());
  }
  return absl::StrCat("/", absl::StrJoin(parts, "/"));
}

struct WantEntry {
  std::string path;
  bool container;
};

void ExpectEntries(const std::vector<PushEntry>& entries,
                   const std::vector<WantEntry>& want) {
  ASSERT_EQ(entries.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const PushEntry& e = entries[i];
    EXPECT_EQ(PathText(e.entry), want[i].path) << i;
    if (want[i].container) {
      ASSERT_TRUE(e.entry.has_container()) << want[i].path;
      EXPECT_EQ(e.entry.container().kind(), v1::ContainerInfo::DICT);
      EXPECT_EQ(e.tensor.data, nullptr);
    } else {
      ASSERT_TRUE(e.entry.has_tensor()) << want[i].path;
    }
  }
}

// A file from any other writer is a flat state dict: dotted names stay one
// key each (as state_dict() has them), in header order.
TEST(SafetensorsTest, BuildPushEntriesKeepsFlatDottedNames) {
  const std::vector<TestTensor> tensors = {
      {"model.layers.0.weight", "F32", {2}, PatternBytes(8, 1)},
      {"opt.step", "I64", {}, PatternBytes(8, 2)},
      {"model.layers.0.bias", "F32", {1}, PatternBytes(4, 3)},
      {"a..b", "U8", {1}, "x"},
      {"0", "F16", {2}, PatternBytes(4, 5)},
  };
  const std::string bytes = EncodeSafetensors(tensors);
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::vector<PushEntry>> entries = BuildPushEntries(*file);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ExpectEntries(*entries, {{"/", true},
                           {"/model.layers.0.weight", false},
                           {"/opt.step", false},
                           {"/model.layers.0.bias", false},
                           {"/a..b", false},
                           {"/0", false}});
  // Data pointers point into the caller's bytes, not copies.
  const PushEntry& weight = (*entries)[1];
  EXPECT_EQ(weight.entry.tensor().dtype(), v1::FLOAT32);
  EXPECT_EQ(weight.entry.tensor().shape_size(), 1);
  EXPECT_EQ(weight.tensor.byte_length, 8u);
  EXPECT_GE(static_cast<const char*>(weight.tensor.data), bytes.data());
  EXPECT_LT(static_cast<const char*>(weight.tensor.data),
            bytes.data() + bytes.size());
  EXPECT_EQ(std::string(static_cast<const char*>(weight.tensor.data), 8),
            tensors[0].bytes);
  const PushEntry& step = (*entries)[2];
  EXPECT_EQ(step.entry.tensor().dtype(), v1::INT64);
  EXPECT_EQ(step.entry.tensor().shape_size(), 0) << "a scalar";
}

// A file made by `ckpt pull` records each tensor's key path: the paths come
// back exactly, nested in pre-order, int keys as int keys.
TEST(SafetensorsTest, BuildPushEntriesRestoresRecordedKeyPaths) {
  const std::vector<TestTensor> tensors = {
      {"model.0.weight", "F32", {2}, PatternBytes(8, 1)},
      {"opt.state.3.m", "F32", {1}, PatternBytes(4, 2)},
      {"model.0.bias", "F32", {1}, PatternBytes(4, 3)},
  };
  const std::string recorded =
      R"({"model.0.weight":["model","0.weight"],"opt.state.3.m":["opt",)"
      R"("state",3,"m"],"model.0.bias":["model","0.bias"]})";
  const std::string bytes =
      EncodeSafetensors(tensors, {{kKeyPathsMetadata, recorded}});
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::vector<PushEntry>> entries = BuildPushEntries(*file);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ExpectEntries(*entries, {{"/", true},
                           {"/model", true},
                           {"/model/0.weight", false},
                           {"/model/0.bias", false},
                           {"/opt", true},
                           {"/opt/state", true},
                           {"/opt/state/#3", true},
                           {"/opt/state/#3/m", false}});
}

// Recorded paths that do not describe the file (a tensor renamed or added
// after the pull, a path that does not spell its name, bad JSON): the
// names are the truth, flat.
TEST(SafetensorsTest, BuildPushEntriesIgnoresRecordedPathsThatDoNotFit) {
  const std::vector<std::string> cases = {
      R"({"a.b":["a","b"]})",                  // "c.d" has no path
      R"({"a.b":["a","b"],"c.d":["c","x"]})",  // does not spell "c.d"
      R"({"a.b":["a","b"],"c.d":["c",1.5]})",  // not a key
      R"(["a","b"])",                          // not an object
      R"({"a.b":)",                            // not JSON
  };
  for (const std::string& recorded : cases) {
    const std::string bytes =
        EncodeSafetensors({{"a.b", "U8", {1}, "x"}, {"c.d", "U8", {1}, "y"}},
                          {{kKeyPathsMetadata, recorded}});
    absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
    ASSERT_TRUE(file.ok()) << file.status();
    absl::StatusOr<std::vector<PushEntry>> entries = BuildPushEntries(*file);
    ASSERT_TRUE(entries.ok()) << recorded << ": " << entries.status();
    ExpectEntries(*entries, {{"/", true}, {"/a.b", false}, {"/c.d", false}});
  }
}

TEST(SafetensorsTest, BuildPushEntriesRejectsConflictingRecordedPaths) {
  struct Case {
    std::vector<std::string> names;
    std::string recorded;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"a", "a.b"}, R"({"a":["a"],"a.b":["a","b"]})", "extends tensor 'a'"},
      {{"a.b", "a"},
       R"({"a.b":["a","b"],"a":["a"]})",
       "also the prefix of other tensors"},
  };
  for (const Case& c : cases) {
    std::vector<TestTensor> tensors;
    for (const std::string& n : c.names) {
      tensors.push_back({n, "U8", {1}, "x"});
    }
    const std::string bytes =
        EncodeSafetensors(tensors, {{kKeyPathsMetadata, c.recorded}});
    absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes);
    ASSERT_TRUE(file.ok()) << file.status();
    absl::StatusOr<std::vector<PushEntry>> entries = BuildPushEntries(*file);
    ASSERT_FALSE(entries.ok()) << c.recorded;
    EXPECT_THAT(std::string(entries.status().message()), HasSubstr(c.message))
        << c.recorded;
  }
}

}  // namespace
}  // namespace ckptd::cli
