// ValidateManifest (server/core/manifest.h): the structure rules (the root
// container first, parents before children, no duplicate paths), the tensor
// rules (dtype, shape, byte_length, digest, ranges), the value rules, and
// the blob summary CommitShard checks against the BlobStore.
#include "server/core/manifest.h"

#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ckptd::core {
namespace {

using ::testing::HasSubstr;

using Segment = std::variant<std::string, int64_t>;
using Path = std::vector<Segment>;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

std::string DigestBytes(char fill) { return std::string(16, fill); }

void SetPath(v1::ManifestEntry* e, const Path& path) {
  for (const Segment& s : path) {
    if (std::holds_alternative<int64_t>(s)) {
      e->add_path()->set_int_key(std::get<int64_t>(s));
    } else {
      e->add_path()->set_key(std::get<std::string>(s));
    }
  }
}

v1::ManifestEntry Container(
    const Path& path, v1::ContainerInfo::Kind kind = v1::ContainerInfo::DICT) {
  v1::ManifestEntry e;
  SetPath(&e, path);
  e.mutable_container()->set_kind(kind);
  return e;
}

v1::ManifestEntry Root(v1::ContainerInfo::Kind kind = v1::ContainerInfo::DICT) {
  return Container({}, kind);
}

v1::ManifestEntry Tensor(const Path& path, v1::DType dtype,
                         const std::vector<int64_t>& shape,
                         uint64_t byte_length, char digest = 'a',
                         uint64_t offset = 0) {
  v1::ManifestEntry e;
  SetPath(&e, path);
  v1::TensorInfo* t = e.mutable_tensor();
  t->set_dtype(dtype);
  for (int64_t d : shape) t->add_shape(d);
  t->set_byte_length(byte_length);
  t->set_blob_digest(DigestBytes(digest));
  t->set_blob_offset(offset);
  return e;
}

v1::ManifestEntry IntValue(const Path& path, int64_t v) {
  v1::ManifestEntry e;
  SetPath(&e, path);
  e.mutable_value()->set_int_value(v);
  return e;
}

// A value of `depth` nested lists around an int.
v1::Value NestedList(int depth) {
  v1::Value v;
  v.set_int_value(1);
  for (int i = 0; i < depth; ++i) {
    v1::Value outer;
    *outer.mutable_list_value()->add_items() = v;
    v = outer;
  }
  return v;
}

v1::ManifestEntry ValueEntry(const Path& path, const v1::Value& value) {
  v1::ManifestEntry e;
  SetPath(&e, path);
  *e.mutable_value() = value;
  return e;
}

// Root, then containers "d0" .. "d<n-2>" nested, then a tensor at depth n.
std::vector<v1::ManifestEntry> DeepPath(int n) {
  std::vector<v1::ManifestEntry> out = {Root()};
  Path path;
  for (int i = 0; i + 1 < n; ++i) {
    path.push_back(absl::StrCat("d", i));
    out.push_back(Container(path));
  }
  path.push_back(std::string("w"));
  out.push_back(Tensor(path, v1::FLOAT32, {1}, 4));
  return out;
}

std::vector<int64_t> Ones(int rank) { return std::vector<int64_t>(rank, 1); }

v1::ShardManifest Manifest(const std::vector<v1::ManifestEntry>& entries) {
  v1::ShardManifest m;
  for (const auto& e : entries) *m.add_entries() = e;
  return m;
}

struct Case {
  const char* case_name;
  std::vector<v1::ManifestEntry> entries;
  // nullptr: valid. Otherwise a part of the INVALID_ARGUMENT message.
  const char* error;
};

std::vector<Case> Cases() {
  v1::ManifestEntry no_kind;
  no_kind.add_path()->set_key("x");
  v1::ManifestEntry unset_segment = IntValue({}, 1);
  unset_segment.add_path();  // neither key nor int_key
  v1::ManifestEntry unset_value;
  unset_value.add_path()->set_key("v");
  unset_value.mutable_value();
  v1::Value list_with_unset_item;
  list_with_unset_item.mutable_list_value()->add_items()->set_int_value(1);
  list_with_unset_item.mutable_list_value()->add_items();
  v1::ManifestEntry short_digest = Tensor({"w"}, v1::FLOAT32, {2}, 8);
  short_digest.mutable_tensor()->set_blob_digest(std::string(15, 'a'));
  v1::ManifestEntry no_digest = Tensor({"w"}, v1::FLOAT32, {2}, 8);
  no_digest.mutable_tensor()->clear_blob_digest();

  return {
      // ---- valid ----
      {"root only", {Root()}, nullptr},
      {"list root", {Root(v1::ContainerInfo::LIST)}, nullptr},
      {"one tensor", {Root(), Tensor({"w"}, v1::FLOAT32, {2, 3}, 24)}, nullptr},
      {"model and optimizer",
       {Root(), Container({"model"}),
        Tensor({"model", "layers.0.weight"}, v1::BFLOAT16, {4, 4}, 32),
        Container({"optim"}), Container({"optim", "state"}),
        Container({"optim", "state", int64_t{0}}),
        Tensor({"optim", "state", int64_t{0}, "exp_avg"}, v1::FLOAT32, {4}, 16),
        IntValue({"optim", "state", int64_t{0}, "step"}, 10),
        Container({"optim", "param_groups"}, v1::ContainerInfo::LIST),
        Container({"optim", "param_groups", int64_t{0}}),
        IntValue({"epoch"}, 3)},
       nullptr},
      {"string key '0' and int key 0 are different paths",
       {Root(), IntValue({"0"}, 1), IntValue({int64_t{0}}, 2)},
       nullptr},
      {"negative int key", {Root(), IntValue({int64_t{-1}}, 1)}, nullptr},
      {"scalar tensor (rank 0)",
       {Root(), Tensor({"s"}, v1::FLOAT64, {}, 8)},
       nullptr},
      {"zero-size tensor",
       {Root(), Tensor({"e"}, v1::FLOAT32, {0, 5}, 0)},
       nullptr},
      {"zero dim after a huge one",
       {Root(), Tensor({"e"}, v1::UINT8, {int64_t{1} << 62, 0}, 0)},
       nullptr},
      {"largest byte length",
       {Root(),
        Tensor({"big"}, v1::UINT8, {int64_t{1} << 62, 3}, uint64_t{3} << 62)},
       nullptr},
      {"rank at the limit (64)",
       {Root(), Tensor({"w"}, v1::FLOAT32, Ones(kMaxTensorRank), 4)},
       nullptr},
      {"path depth at the limit (64)", DeepPath(Limits{}.key_depth), nullptr},
      {"value nesting at the limit (32)",
       {Root(), ValueEntry({"v"}, NestedList(32))},
       nullptr},
      {"every value kind",
       [] {
         std::vector<v1::ManifestEntry> out = {Root()};
         v1::Value v;
         v.set_none(true);
         out.push_back(ValueEntry({"none"}, v));
         v.set_float_value(0.5);
         out.push_back(ValueEntry({"float"}, v));
         v.set_bool_value(false);
         out.push_back(ValueEntry({"bool"}, v));
         v.set_string_value("");
         out.push_back(ValueEntry({"string"}, v));
         v.mutable_list_value()->set_is_tuple(true);
         out.push_back(ValueEntry({"empty tuple"}, v));
         return out;
       }(),
       nullptr},
      {"blob range ending at 2^64",
       {Root(), Tensor({"w"}, v1::UINT8, {8}, 8, 'a', kU64Max - 8)},
       nullptr},

      // ---- structure ----
      {"empty manifest", {}, "manifest is empty"},
      {"tensor first",
       {Tensor({"w"}, v1::FLOAT32, {1}, 4), Root()},
       "entry 0 must be the root container"},
      {"root with a path",
       {Container({"model"})},
       "entry 0 must be the root container"},
      {"root is a value",
       {IntValue({}, 1)},
       "entry 0 must be the root container"},
      {"root of unspecified kind",
       {Root(v1::ContainerInfo::KIND_UNSPECIFIED)},
       "is a container of unspecified kind"},
      {"second root", {Root(), Root()}, "entry 1 ('') has an empty path"},
      {"child before its parent",
       {Root(), Tensor({"model", "w"}, v1::FLOAT32, {1}, 4),
        Container({"model"})},
       "entry 1 ('model.w') has no parent container earlier"},
      {"parent missing",
       {Root(), Container({"a"}), IntValue({"a", "b", "c"}, 1)},
       "entry 2 ('a.b.c') has no parent container earlier"},
      {"parent is a tensor",
       {Root(), Tensor({"w"}, v1::FLOAT32, {1}, 4),
        Tensor({"w", "grad"}, v1::FLOAT32, {1}, 4)},
       "entry 2 ('w.grad') has no parent container"},
      {"parent is a value",
       {Root(), IntValue({"v"}, 1), IntValue({"v", "x"}, 2)},
       "entry 2 ('v.x') has no parent container"},
      {"int key does not match a string parent",
       {Root(), Container({"0"}), IntValue({int64_t{0}, "x"}, 1)},
       "entry 2 ('0.x') has no parent container"},
      {"duplicate tensor",
       {Root(), Tensor({"w"}, v1::FLOAT32, {1}, 4),
        Tensor({"w"}, v1::FLOAT32, {1}, 4)},
       "entry 2 ('w') repeats an earlier key path"},
      {"duplicate container",
       {Root(), Container({"m"}), Container({"m"}, v1::ContainerInfo::LIST)},
       "entry 2 ('m') repeats an earlier key path"},
      {"value over a container",
       {Root(), Container({"m"}), IntValue({"m"}, 1)},
       "entry 2 ('m') repeats an earlier key path"},
      {"duplicate int key",
       {Root(), IntValue({int64_t{3}}, 1), IntValue({int64_t{3}}, 2)},
       "entry 2 ('3') repeats an earlier key path"},
      {"segment with no key",
       {Root(), unset_segment},
       "has a path segment with no key"},
      {"entry with no kind",
       {Root(), no_kind},
       "entry 1 ('x') is neither container, value nor tensor"},
      {"path deeper than the limit (65)", DeepPath(Limits{}.key_depth + 1),
       "65 segments; the limit is 64 (--max_key_depth)"},

      // ---- tensors ----
      {"unknown dtype",
       {Root(), Tensor({"w"}, static_cast<v1::DType>(99), {1}, 1)},
       "entry 1 ('w') has unknown dtype 99"},
      {"unspecified dtype",
       {Root(), Tensor({"w"}, v1::DTYPE_UNSPECIFIED, {1}, 1)},
       "has unknown dtype 0"},
      {"byte_length one short",
       {Root(), Tensor({"w"}, v1::FLOAT32, {2, 3}, 23)},
       "declares byte_length 23 but shape x dtype size is 24"},
      {"byte_length one over",
       {Root(), Tensor({"w"}, v1::FLOAT32, {2, 3}, 25)},
       "declares byte_length 25 but shape x dtype size is 24"},
      {"byte_length counts elements, not bytes",
       {Root(), Tensor({"w"}, v1::INT64, {10}, 10)},
       "declares byte_length 10 but shape x dtype size is 80"},
      {"zero-size tensor with bytes",
       {Root(), Tensor({"e"}, v1::FLOAT32, {0}, 4)},
       "declares byte_length 4 but shape x dtype size is 0"},
      {"negative dimension",
       {Root(), Tensor({"w"}, v1::FLOAT32, {2, -1}, 0)},
       "has negative dimension -1"},
      {"negative times negative",
       {Root(), Tensor({"w"}, v1::FLOAT32, {-2, -2}, 16)},
       "has negative dimension -2"},
      {"shape overflows 2^64",
       {Root(),
        Tensor({"w"}, v1::UINT8, {int64_t{1} << 32, int64_t{1} << 32}, 0)},
       "has a shape whose size overflows"},
      {"element size overflows 2^64",
       {Root(), Tensor({"w"}, v1::FLOAT64, {int64_t{1} << 62}, 0)},
       "has a shape whose size overflows"},
      {"many dims overflow",
       {Root(), Tensor({"w"}, v1::COMPLEX128, std::vector<int64_t>(64, 3), 0)},
       "has a shape whose size overflows"},
      {"overflow that wraps to the declared length",
       // 2 bytes x 2^62 x 2 x 2 = 2^65, which wraps to 0 in 64 bits.
       {Root(), Tensor({"w"}, v1::INT16, {int64_t{1} << 62, 2, 2}, 0)},
       "has a shape whose size overflows"},
      {"rank above the limit (65)",
       {Root(), Tensor({"w"}, v1::FLOAT32, Ones(kMaxTensorRank + 1), 4)},
       "has 65 dimensions; the limit is 64"},
      {"digest of 15 bytes",
       {Root(), short_digest},
       "digest must be 16 bytes (XXH3-128), got 15"},
      {"no digest",
       {Root(), no_digest},
       "digest must be 16 bytes (XXH3-128), got 0"},
      {"blob range past 2^64",
       {Root(), Tensor({"w"}, v1::UINT8, {8}, 8, 'a', kU64Max - 7)},
       "has a blob range that overflows"},

      // ---- values ----
      {"value with no kind",
       {Root(), unset_value},
       "the value of manifest entry 1 ('v') has no kind set"},
      {"list item with no kind",
       {Root(), ValueEntry({"v"}, list_with_unset_item)},
       "('v') has no kind set"},
      {"value nesting above the limit (33)",
       {Root(), ValueEntry({"v"}, NestedList(33))},
       "('v') is 33 levels; the limit is 32 (--max_value_depth)"},
  };
}

TEST(ManifestTest, ValidateManifest) {
  for (const Case& c : Cases()) {
    absl::StatusOr<ManifestSummary> got = ValidateManifest(Manifest(c.entries));
    if (c.error == nullptr) {
      EXPECT_TRUE(got.ok()) << c.case_name << ": " << got.status();
      continue;
    }
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
        << c.case_name << ": " << got.status();
    EXPECT_THAT(got.status().message(), HasSubstr(c.error)) << c.case_name;
  }
}

// What the summary tells CommitShard: every distinct digest once, in order
// of first use, with the furthest byte any tensor reads from it (and that
// tensor's key), plus the shard's totals.
TEST(ManifestTest, Summary) {
  struct WantBlob {
    char digest;
    uint64_t end;
    const char* key;
  };
  struct SummaryCase {
    const char* case_name;
    std::vector<v1::ManifestEntry> entries;
    std::vector<WantBlob> blobs;
    uint64_t total_bytes;
    uint32_t tensor_count;
  };
  const SummaryCase cases[] = {
      {"no tensors", {Root(), IntValue({"epoch"}, 1)}, {}, 0, 0},
      {"one tensor per blob",
       {Root(), Tensor({"a"}, v1::FLOAT32, {4}, 16, 'a'),
        Tensor({"b"}, v1::FLOAT64, {2}, 16, 'b')},
       {{'a', 16, "a"}, {'b', 16, "b"}},
       32,
       2},
      {"a pack: the furthest end and its key",
       {Root(), Tensor({"x"}, v1::UINT8, {10}, 10, 'p', 0),
        Tensor({"y"}, v1::UINT8, {20}, 20, 'p', 64),
        Tensor({"z"}, v1::UINT8, {5}, 5, 'p', 128)},
       {{'p', 133, "z"}},
       35,
       3},
      {"the furthest end comes first",
       {Root(), Tensor({"far"}, v1::UINT8, {8}, 8, 'p', 1000),
        Tensor({"near"}, v1::UINT8, {8}, 8, 'p', 0)},
       {{'p', 1008, "far"}},
       16,
       2},
      {"first-use order, interleaved",
       {Root(), Tensor({"b1"}, v1::UINT8, {1}, 1, 'b'),
        Tensor({"a1"}, v1::UINT8, {1}, 1, 'a'),
        Tensor({"b2"}, v1::UINT8, {1}, 1, 'b', 64),
        Tensor({"c1"}, v1::UINT8, {1}, 1, 'c')},
       {{'b', 65, "b2"}, {'a', 1, "a1"}, {'c', 1, "c1"}},
       4,
       4},
      {"the same tensor bytes twice (dedup)",
       {Root(), Tensor({"w"}, v1::FLOAT32, {4}, 16, 'd'),
        Tensor({"tied"}, v1::FLOAT32, {4}, 16, 'd')},
       {{'d', 16, "w"}},
       32,
       2},
      {"zero-size tensor at the end of a pack",
       {Root(), Tensor({"x"}, v1::UINT8, {10}, 10, 'p', 0),
        Tensor({"e"}, v1::UINT8, {0}, 0, 'p', 10)},
       {{'p', 10, "x"}},
       10,
       2},
      {"nested keys are dotted",
       {Root(), Container({"model"}), Container({"model", int64_t{0}}),
        Tensor({"model", int64_t{0}, "w"}, v1::UINT8, {3}, 3, 'm')},
       {{'m', 3, "model.0.w"}},
       3,
       1},
  };
  for (const SummaryCase& c : cases) {
    absl::StatusOr<ManifestSummary> got = ValidateManifest(Manifest(c.entries));
    ASSERT_TRUE(got.ok()) << c.case_name << ": " << got.status();
    EXPECT_EQ(got->total_bytes, c.total_bytes) << c.case_name;
    EXPECT_EQ(got->tensor_count, c.tensor_count) << c.case_name;
    ASSERT_EQ(got->blobs.size(), c.blobs.size()) << c.case_name;
    for (size_t i = 0; i < c.blobs.size(); ++i) {
      EXPECT_EQ(got->blobs[i].digest.AsBytes(), DigestBytes(c.blobs[i].digest))
          << c.case_name << " blob " << i;
      EXPECT_EQ(got->blobs[i].end, c.blobs[i].end)
          << c.case_name << " blob " << i;
      EXPECT_EQ(got->blobs[i].key, c.blobs[i].key)
          << c.case_name << " blob " << i;
    }
  }
}

}  // namespace
}  // namespace ckptd::core
