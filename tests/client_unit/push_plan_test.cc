// client/src/push_plan.h: BuildPushPlan lays tensors out in blobs (small ones
// packed in state order at 64-byte aligned offsets, large ones in place),
// deduplicates identical tensors, is deterministic (an unchanged state gives
// identical packs, which the server then deduplicates), and refuses bad
// entries naming their key path.
#include "client/src/push_plan.h"

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "tests/support/random_bytes.h"

namespace ckptd::internal {
namespace {

using ::ckptd::testing::RandomBytes;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// One tensor of the state: `size` bytes of content `seed` (the same seed
// gives the same bytes).
struct T {
  uint64_t size;
  uint64_t seed;
};

// A flat state {root, "t0", "t1", ...} over bytes owned by the fixture.
class State {
 public:
  explicit State(const std::vector<T>& tensors) {
    ManifestEntry root;
    root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    request_.entries.push_back(PushEntry{root, {}});
    bytes_.reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      bytes_.push_back(RandomBytes(tensors[i].size, tensors[i].seed));
      ManifestEntry e;
      e.add_path()->set_key(absl::StrCat("t", i));
      e.mutable_tensor()->set_dtype(v1::UINT8);
      e.mutable_tensor()->add_shape(static_cast<int64_t>(tensors[i].size));
      TensorData data;
      data.data = bytes_.back().data();
      data.byte_length = tensors[i].size;
      request_.entries.push_back(PushEntry{e, data});
    }
    // A value leaf at the end: it passes through untouched.
    ManifestEntry epoch;
    epoch.add_path()->set_key("epoch");
    epoch.mutable_value()->set_int_value(3);
    request_.entries.push_back(PushEntry{epoch, {}});
  }
  const PushRequest& request() const { return request_; }
  const std::string& bytes(size_t i) const { return bytes_[i]; }
  std::string& mutable_bytes(size_t i) { return bytes_[i]; }

 private:
  PushRequest request_;
  std::vector<std::string> bytes_;
};

// Where tensor i landed: which blob (index into plan.blobs) and offset.
struct Where {
  size_t blob;
  uint64_t offset;
};

size_t BlobIndex(const PushPlan& plan, const std::string& digest) {
  for (size_t i = 0; i < plan.blobs.size(); ++i) {
    if (plan.blobs[i].digest == digest) return i;
  }
  ADD_FAILURE() << "digest not among the planned blobs";
  return plan.blobs.size();
}

// The checks every plan must pass, whatever its layout.
void ExpectConsistent(const char* case_name, const State& state,
                      const PushOptions& options, const PushPlan& plan,
                      std::vector<Where>* where) {
  const PushRequest& req = state.request();
  ASSERT_EQ(plan.manifest.entries_size(), static_cast<int>(req.entries.size()))
      << case_name;
  uint64_t tensor_bytes = 0;
  size_t tensor = 0;
  for (size_t i = 0; i < req.entries.size(); ++i) {
    const ManifestEntry& in = req.entries[i].entry;
    const ManifestEntry& out = plan.manifest.entries(static_cast<int>(i));
    EXPECT_EQ(DottedKeyPath(out.path()), DottedKeyPath(in.path())) << case_name;
    if (in.kind_case() != ManifestEntry::kTensor) {
      EXPECT_EQ(out.SerializeAsString(), in.SerializeAsString()) << case_name;
      continue;
    }
    const v1::TensorInfo& t = out.tensor();
    const std::string& bytes = state.bytes(tensor);
    EXPECT_EQ(t.byte_length(), bytes.size()) << case_name << " t" << tensor;
    ASSERT_EQ(t.blob_digest().size(), 16u) << case_name << " t" << tensor;
    const size_t b = BlobIndex(plan, t.blob_digest());
    ASSERT_LT(b, plan.blobs.size()) << case_name;
    const PlannedBlob& blob = plan.blobs[b];
    // The tensor's bytes are where the manifest says.
    ASSERT_LE(t.blob_offset() + t.byte_length(), blob.size)
        << case_name << " t" << tensor;
    EXPECT_TRUE(std::string(blob.data + t.blob_offset(), t.byte_length()) ==
                bytes)
        << case_name << " t" << tensor << ": bytes differ";
    if (bytes.size() >= options.pack_threshold) {
      // Large: its own blob, read in place from the caller's memory.
      EXPECT_EQ(t.blob_offset(), 0u) << case_name << " t" << tensor;
      EXPECT_EQ(blob.size, bytes.size()) << case_name << " t" << tensor;
    } else {
      EXPECT_LE(blob.size, options.pack_size) << case_name << " t" << tensor;
      if (!bytes.empty()) {
        EXPECT_EQ(t.blob_offset() % kPackAlignment, 0u)
            << case_name << " t" << tensor;
      }
    }
    where->push_back(Where{b, t.blob_offset()});
    tensor_bytes += bytes.size();
    ++tensor;
  }
  EXPECT_EQ(plan.tensor_bytes, tensor_bytes) << case_name;
  // Blobs are unique and their digests are of their bytes.
  for (size_t i = 0; i < plan.blobs.size(); ++i) {
    const PlannedBlob& blob = plan.blobs[i];
    EXPECT_EQ(blob.digest,
              std::string(ckptd::DigestOf(blob.data, blob.size).AsBytes()))
        << case_name << " blob " << i;
    for (size_t j = 0; j < i; ++j) {
      EXPECT_NE(plan.blobs[j].digest, blob.digest)
          << case_name << " blobs " << j << " and " << i;
    }
  }
}

TEST(PushPlanTest, Layout) {
  struct Case {
    const char* case_name;
    std::vector<T> tensors;
    // Per tensor: index of its blob in plan.blobs (first use order) and its
    // offset there.
    std::vector<Where> want;
    // Bytes of each planned blob.
    std::vector<uint64_t> blob_sizes;
    size_t packs;
  };
  const uint64_t kSmall = kMiB - 1;  // the largest tensor that is packed
  std::vector<T> twenty_small;
  std::vector<Where> twenty_small_where;
  for (uint64_t i = 0; i < 20; ++i) {
    twenty_small.push_back({kSmall, 100 + i});
    twenty_small_where.push_back({i < 16 ? 0u : 1u, (i % 16) * kMiB});
  }
  const Case cases[] = {
      {"one small tensor", {{100, 1}}, {{0, 0}}, {100}, 1},
      {"small tensors share a pack at aligned offsets",
       {{100, 1}, {1, 2}, {64, 3}, {65, 4}},
       {{0, 0}, {0, 128}, {0, 192}, {0, 256}},
       {321},
       1},
      {"a tensor of exactly 1 MiB is large", {{kMiB, 1}}, {{0, 0}}, {kMiB}, 0},
      {"1 MiB - 1 is packed", {{kSmall, 1}}, {{0, 0}}, {kSmall}, 1},
      {"small, large, small: one pack, then the large blob",
       {{10, 1}, {3 * kMiB + 17, 2}, {20, 3}},
       {{0, 0}, {1, 0}, {0, 64}},
       {84, 3 * kMiB + 17},
       1},
      {"large first: blobs in order of first use",
       {{2 * kMiB, 1}, {10, 2}},
       {{0, 0}, {1, 0}},
       {2 * kMiB, 10},
       1},
      {"16 tensors of 1 MiB - 1 fill a 16 MiB pack; the rest start another",
       twenty_small,
       twenty_small_where,
       {16 * kMiB - 1, 4 * kMiB - 1},
       2},
      {"identical small tensors share one offset",
       {{100, 7}, {50, 8}, {100, 7}},
       {{0, 0}, {0, 128}, {0, 0}},
       {178},
       1},
      {"identical large tensors share one blob",
       {{2 * kMiB, 9}, {10, 1}, {2 * kMiB, 9}},
       {{0, 0}, {1, 0}, {0, 0}},
       {2 * kMiB, 10},
       1},
      {"zero-size tensors sit at the current end, unaligned",
       {{10, 1}, {0, 2}, {5, 3}},
       {{0, 0}, {0, 10}, {0, 64}},
       {69},
       1},
  };
  for (const Case& c : cases) {
    const State state(c.tensors);
    const PushOptions options;
    auto plan = BuildPushPlan(state.request(), options);
    ASSERT_TRUE(plan.ok()) << c.case_name << ": " << plan.status();
    std::vector<Where> where;
    ExpectConsistent(c.case_name, state, options, **plan, &where);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ((*plan)->packs.size(), c.packs) << c.case_name;
    ASSERT_EQ(where.size(), c.want.size()) << c.case_name;
    for (size_t i = 0; i < where.size(); ++i) {
      EXPECT_EQ(where[i].blob, c.want[i].blob) << c.case_name << " t" << i;
      EXPECT_EQ(where[i].offset, c.want[i].offset) << c.case_name << " t" << i;
    }
    std::vector<uint64_t> sizes;
    for (const PlannedBlob& b : (*plan)->blobs) sizes.push_back(b.size);
    EXPECT_EQ(sizes, c.blob_sizes) << c.case_name;
    // Large tensors are read in place (from the first tensor with those
    // bytes), not copied.
    for (size_t i = 0; i < c.tensors.size(); ++i) {
      if (c.tensors[i].size < options.pack_threshold) continue;
      size_t first = 0;
      while (state.bytes(first) != state.bytes(i)) ++first;
      EXPECT_EQ((*plan)->blobs[where[i].blob].data, state.bytes(first).data())
          << c.case_name << " t" << i;
    }
  }
}

TEST(PushPlanTest, PackOptions) {
  struct Case {
    const char* case_name;
    uint64_t pack_threshold;
    uint64_t pack_size;
    std::vector<T> tensors;
    std::vector<uint64_t> blob_sizes;
    size_t packs;
  };
  const Case cases[] = {
      {"a tensor that exactly fills the pack",
       1000,
       256,
       {{100, 1}, {128, 2}, {10, 3}},
       {256, 10},
       2},
      {"padding counts against the pack size",
       1000,
       256,
       {{100, 1}, {129, 2}},
       {100, 129},
       2},
      {"threshold 0: nothing is packed", 0, 256, {{1, 1}, {2, 2}}, {1, 2}, 0},
      {"a lower threshold sends more tensors alone",
       100,
       1 << 20,
       {{99, 1}, {100, 2}, {50, 3}},
       {178, 100},
       1},
  };
  for (const Case& c : cases) {
    const State state(c.tensors);
    PushOptions options;
    options.pack_threshold = c.pack_threshold;
    options.pack_size = c.pack_size;
    auto plan = BuildPushPlan(state.request(), options);
    ASSERT_TRUE(plan.ok()) << c.case_name << ": " << plan.status();
    std::vector<Where> where;
    ExpectConsistent(c.case_name, state, options, **plan, &where);
    std::vector<uint64_t> sizes;
    for (const PlannedBlob& b : (*plan)->blobs) sizes.push_back(b.size);
    EXPECT_EQ(sizes, c.blob_sizes) << c.case_name;
    EXPECT_EQ((*plan)->packs.size(), c.packs) << c.case_name;
  }
}

std::vector<std::string> Digests(const PushPlan& plan) {
  std::vector<std::string> out;
  for (const PlannedBlob& b : plan.blobs) out.push_back(b.digest);
  return out;
}

// An unchanged state, in other memory, plans the same blobs and manifest;
// changing one small tensor changes only the pack that holds it.
TEST(PushPlanTest, IdenticalStateGivesIdenticalPacks) {
  std::vector<T> tensors;
  for (uint64_t i = 0; i < 40; ++i) tensors.push_back({kMiB / 2 - i, i});
  tensors.push_back({2 * kMiB, 99});
  const State first(tensors);
  State second(tensors);
  ASSERT_NE(first.bytes(0).data(), second.bytes(0).data());
  const PushOptions options;
  auto a = BuildPushPlan(first.request(), options);
  auto b = BuildPushPlan(second.request(), options);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_GE((*a)->packs.size(), 2u) << "the state should span packs";
  EXPECT_EQ(Digests(**a), Digests(**b));
  EXPECT_EQ((*a)->manifest.SerializeAsString(),
            (*b)->manifest.SerializeAsString());

  // Tensor 39 is in the last pack; the first pack is untouched.
  second.mutable_bytes(39)[5] ^= 1;
  auto c = BuildPushPlan(second.request(), options);
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> before = Digests(**a);
  const std::vector<std::string> after = Digests(**c);
  ASSERT_EQ(before.size(), after.size());
  size_t changed = 0;
  for (size_t i = 0; i < before.size(); ++i) changed += before[i] != after[i];
  EXPECT_EQ(changed, 1u);
  EXPECT_EQ(before.front(), after.front()) << "the first pack changed";
  EXPECT_EQ(before.back(), after.back()) << "the large tensor's blob changed";
}

TEST(PushPlanTest, BadEntriesAreRefusedNamingTheKeyPath) {
  using Segment = std::variant<std::string, int64_t>;
  struct Case {
    const char* case_name;
    std::vector<Segment> path;
    v1::DType dtype;
    std::vector<int64_t> shape;
    uint64_t byte_length;
    bool has_data;
    Memory memory;
    absl::StatusCode code;
    const char* error;
  };
  const Memory host;
  const Memory cuda{MemoryKind::kCuda, 99};
  const Case cases[] = {
      {"unknown dtype",
       {"model", "w"},
       static_cast<v1::DType>(99),
       {2},
       2,
       true,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'model.w' has unknown dtype 99"},
      {"unspecified dtype",
       {"w"},
       v1::DTYPE_UNSPECIFIED,
       {2},
       2,
       true,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'w' has unknown dtype DTYPE_UNSPECIFIED"},
      {"negative dimension",
       {"opt", "state", int64_t{0}, "exp_avg"},
       v1::FLOAT32,
       {2, -1},
       0,
       true,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'opt.state.0.exp_avg' has negative dimension -1 in shape "
       "[2, -1]"},
      {"byte_length does not match",
       {"layers", int64_t{3}, "bias"},
       v1::FLOAT32,
       {2},
       7,
       true,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'layers.3.bias' has byte_length 7 but shape [2] x FLOAT32 (4 "
       "bytes) needs 8"},
      {"shape overflows",
       {"huge"},
       v1::FLOAT64,
       {int64_t{1} << 40, int64_t{1} << 40},
       0,
       true,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'huge' has a shape whose size overflows"},
      {"no data",
       {"w"},
       v1::FLOAT32,
       {2},
       8,
       false,
       host,
       absl::StatusCode::kInvalidArgument,
       "tensor 'w' has 8 bytes but no data"},
      {"CUDA memory this process cannot read",
       {"cuda", "w"},
       v1::FLOAT32,
       {2},
       8,
       true,
       cuda,
       absl::StatusCode::kFailedPrecondition,
       "(tensor 'cuda.w')"},
  };
  static const char kData[64] = {};
  for (const Case& c : cases) {
    PushRequest req;
    ManifestEntry root;
    root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    req.entries.push_back(PushEntry{root, {}});
    // A good tensor first: validation refuses the whole request anyway.
    ManifestEntry good;
    good.add_path()->set_key("good");
    good.mutable_tensor()->set_dtype(v1::UINT8);
    good.mutable_tensor()->add_shape(8);
    req.entries.push_back(PushEntry{good, TensorData{kData, 8, host}});
    ManifestEntry e;
    for (const Segment& s : c.path) {
      if (std::holds_alternative<int64_t>(s)) {
        e.add_path()->set_int_key(std::get<int64_t>(s));
      } else {
        e.add_path()->set_key(std::get<std::string>(s));
      }
    }
    e.mutable_tensor()->set_dtype(c.dtype);
    for (int64_t d : c.shape) e.mutable_tensor()->add_shape(d);
    req.entries.push_back(PushEntry{
        e, TensorData{c.has_data ? kData : nullptr, c.byte_length, c.memory}});
    auto plan = BuildPushPlan(req, PushOptions());
    EXPECT_EQ(plan.status().code(), c.code)
        << c.case_name << ": " << plan.status();
    EXPECT_THAT(plan.status().message(), HasSubstr(c.error)) << c.case_name;
  }

  PushOptions no_packs;
  no_packs.pack_size = 0;
  auto plan = BuildPushPlan(PushRequest(), no_packs);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("pack_size must be > 0"));
}

}  // namespace
}  // namespace ckptd::internal
