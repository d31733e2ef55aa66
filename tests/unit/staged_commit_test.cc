// core::CommitStagedShard (the co-located save's commit) over a real RocksDB
// and file blob store: how staged tensors become blobs (packs, own blobs,
// duplicates), that their bytes read back, deduplication of a second
// commit, and the layout checks.
#include "server/core/staged_commit.h"

#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "server/core/repository.h"
#include "tests/support/random_bytes.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

using ::ckptd::testing::RandomBytes;
using ::testing::HasSubstr;

uint64_t AlignedSize(uint64_t n) { return (n + 4095) / 4096 * 4096; }

// Tensors of uint8 placed at given offsets of the staged bytes.
struct Placed {
  std::string key;
  uint64_t offset;
  std::string bytes;
};

class StagedCommitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ckptd::testing::MakeTempDir("ckptd-staged");
    auto repo = Repository::OpenDataDir(dir_, RepositoryOptions());
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = std::move(*repo);
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }

  // The staged memory holding `tensors`, and the request committing them.
  static std::string Stage(const std::vector<Placed>& tensors, uint64_t size) {
    std::string staged(size, '\0');
    for (const Placed& p : tensors) {
      std::memcpy(staged.data() + p.offset, p.bytes.data(), p.bytes.size());
    }
    return staged;
  }
  v1::CommitShardRequest Request(const std::string& run, int64_t step,
                                 const std::vector<Placed>& tensors) {
    v1::BeginVersionRequest begin;
    begin.set_run(run);
    begin.set_step(step);
    auto begun = repo_->BeginVersion(begin);
    EXPECT_TRUE(begun.ok()) << begun.status();
    v1::CommitShardRequest req;
    req.set_run(run);
    req.set_version(begun.ok() ? begun->version() : 0);
    v1::ShardManifest* m = req.mutable_manifest();
    m->add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
    for (const Placed& p : tensors) {
      v1::ManifestEntry* e = m->add_entries();
      e->add_path()->set_key(p.key);
      e->mutable_tensor()->set_dtype(v1::UINT8);
      e->mutable_tensor()->add_shape(static_cast<int64_t>(p.bytes.size()));
      e->mutable_tensor()->set_byte_length(p.bytes.size());
      e->mutable_tensor()->set_blob_offset(p.offset);
    }
    return req;
  }
  // The tensors of run@version as stored, read back through the repository.
  std::vector<std::string> ReadBack(const std::string& run, uint64_t version,
                                    v1::ShardManifest* manifest) {
    v1::GetVersionRequest get;
    get.set_run(run);
    get.set_ref(std::to_string(version));
    get.set_include_manifest(true);
    auto got = repo_->GetVersion(get);
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return {};
    *manifest = got->shards(0);
    auto lease = repo_->LeaseForRead(run, version);
    EXPECT_TRUE(lease.ok()) << lease.status();
    std::vector<std::string> out;
    for (const v1::ManifestEntry& e : manifest->entries()) {
      if (!e.has_tensor()) continue;
      auto d = DigestFromBytes(e.tensor().blob_digest());
      EXPECT_TRUE(d.ok());
      auto reader = (*lease)->Open(*d);
      EXPECT_TRUE(reader.ok()) << reader.status();
      std::string bytes(e.tensor().byte_length(), '\0');
      EXPECT_TRUE(
          (*reader)
              ->ReadAt(e.tensor().blob_offset(), bytes.size(), bytes.data())
              .ok());
      out.push_back(std::move(bytes));
    }
    return out;
  }

  std::string dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(StagedCommitTest, SmallTensorsShareAPackLargeOnesHaveTheirOwnBlob) {
  const std::string big = RandomBytes(kStagedPackThreshold + 5, 1);
  const std::vector<Placed> tensors = {
      {"a", 0, RandomBytes(100, 2)},
      {"b", 128, RandomBytes(3000, 3)},     // AlignUp(100) = 128: same pack
      {"empty", 3128, ""},                  // at the pack's end
      {"c", 3136, RandomBytes(10, 4)},      // AlignUp(3128) = 3136
      {"apart", 8192, RandomBytes(50, 5)},  // not where the pack ends: new
      {"big", 12288, big},
      {"big-again", 12288 + AlignedSize(big.size()), big},
  };
  const uint64_t size = 12288 + 2 * AlignedSize(big.size());
  const std::string staged = Stage(tensors, size);
  v1::CommitShardRequest req = Request("pack", 1, tensors);
  auto info = CommitStagedShard(*repo_, staged, req, Actor(), nullptr);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::COMMITTED);

  v1::ShardManifest m;
  std::vector<std::string> back = ReadBack("pack", info->version(), &m);
  ASSERT_EQ(back.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(back[i], tensors[i].bytes) << tensors[i].key;
  }
  auto t = [&](int i) { return m.entries(i + 1).tensor(); };
  // a, b, empty, c: one pack, offsets as a TCP push packs them.
  EXPECT_EQ(t(1).blob_digest(), t(0).blob_digest());
  EXPECT_EQ(t(3).blob_digest(), t(0).blob_digest());
  EXPECT_EQ(t(0).blob_offset(), 0u);
  EXPECT_EQ(t(1).blob_offset(), 128u);
  EXPECT_EQ(t(3).blob_offset(), 3136u);
  EXPECT_EQ(t(0).blob_digest(),
            std::string(DigestOf(staged.data(), 3146).AsBytes()));
  // "apart" begins a pack of its own; the large ones share one blob.
  EXPECT_NE(t(4).blob_digest(), t(0).blob_digest());
  EXPECT_EQ(t(4).blob_offset(), 0u);
  EXPECT_EQ(t(5).blob_digest(), t(6).blob_digest());
  EXPECT_EQ(t(5).blob_digest(),
            std::string(DigestOf(big.data(), big.size()).AsBytes()));
  // Uploaded once each: pack, apart, big.
  EXPECT_EQ(info->uploaded_bytes(), 3146u + 50u + big.size());

  // The same staged bytes again: nothing new is stored.
  v1::CommitShardRequest again = Request("pack", 2, tensors);
  auto second = CommitStagedShard(*repo_, staged, again, Actor(), nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->uploaded_bytes(), 0u);
}

TEST_F(StagedCommitTest, APackEndsAtTheLimit) {
  // Two small tensors that together pass kStagedPackSize: two packs.
  const uint64_t half = kStagedPackThreshold - 64;
  std::vector<Placed> tensors;
  uint64_t at = 0;
  for (int i = 0; at + half <= kStagedPackSize + half; ++i) {
    tensors.push_back({"t" + std::to_string(i), at, RandomBytes(half, i)});
    at += half;  // a multiple of 64: contiguous
  }
  const std::string staged = Stage(tensors, at);
  auto info = CommitStagedShard(*repo_, staged, Request("limit", 1, tensors),
                                Actor(), nullptr);
  ASSERT_TRUE(info.ok()) << info.status();
  v1::ShardManifest m;
  std::vector<std::string> back = ReadBack("limit", info->version(), &m);
  ASSERT_EQ(back.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i)
    EXPECT_EQ(back[i], tensors[i].bytes);
  const std::string& first = m.entries(1).tensor().blob_digest();
  const std::string& last =
      m.entries(static_cast<int>(tensors.size())).tensor().blob_digest();
  EXPECT_NE(first, last);
  for (const v1::ManifestEntry& e : m.entries()) {
    if (e.has_tensor()) {
      EXPECT_LE(e.tensor().blob_offset() + e.tensor().byte_length(),
                kStagedPackSize);
    }
  }
}

TEST_F(StagedCommitTest, LayoutOutsideTheStagedBytesOrWithADigestIsRefused) {
  const std::string staged(4096, 'x');
  v1::CommitShardRequest req =
      Request("bad", 1, {{"x", 4000, std::string(97, 'y')}});
  auto st = CommitStagedShard(*repo_, staged, req, Actor(), nullptr);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()),
              HasSubstr("tensor 'x' at offset 4000 of 97 bytes lies outside"));
  // An offset whose end overflows.
  req.mutable_manifest()->mutable_entries(1)->mutable_tensor()->set_blob_offset(
      std::numeric_limits<uint64_t>::max() - 10);
  EXPECT_EQ(CheckStagedLayout(req.manifest(), staged.size()).code(),
            absl::StatusCode::kInvalidArgument);
  req.mutable_manifest()->mutable_entries(1)->mutable_tensor()->set_blob_offset(
      0);
  EXPECT_TRUE(CheckStagedLayout(req.manifest(), staged.size()).ok());
  req.mutable_manifest()->mutable_entries(1)->mutable_tensor()->set_blob_digest(
      std::string(16, 'd'));
  EXPECT_THAT(
      std::string(CheckStagedLayout(req.manifest(), staged.size()).message()),
      HasSubstr("names a blob digest"));
  // Nothing was stored for it.
  v1::GetVersionRequest get;
  get.set_run("bad");
  get.set_ref("last");
  EXPECT_FALSE(repo_->GetVersion(get).ok());
}

}  // namespace
}  // namespace ckptd::core
