// Repository::Backup without a network: the copy path (a source store that
// cannot hard-link: the in-memory store), the link path (file stores on one
// filesystem: the backup's blob files are the live ones' inodes), what a
// backup leaves out, and that a copy verifies what it reads.
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/repository.h"
#include "server/storage/testing/memory_blob_store.h"
#include "tests/support/random_bytes.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

v1::ShardManifest OneBlob(const Digest& d, uint64_t bytes) {
  v1::ShardManifest m;
  m.add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
  v1::ManifestEntry* e = m.add_entries();
  e->add_path()->set_key("w");
  e->mutable_tensor()->set_dtype(v1::UINT8);
  e->mutable_tensor()->add_shape(static_cast<int64_t>(bytes));
  e->mutable_tensor()->set_byte_length(bytes);
  e->mutable_tensor()->set_blob_digest(std::string(d.AsBytes()));
  return m;
}

// Begins (run, step) with `world` ranks, uploads `bytes` and commits rank 0.
absl::StatusOr<v1::VersionInfo> PushOne(Repository& repo,
                                        const std::string& run, int64_t step,
                                        const std::string& bytes,
                                        uint32_t world = 1) {
  v1::BeginVersionRequest begin;
  begin.set_run(run);
  begin.set_step(step);
  begin.set_world_size(world);
  auto v = repo.BeginVersion(begin);
  if (!v.ok()) return v.status();
  const Digest d = DigestOf(bytes.data(), bytes.size());
  auto up = repo.StartBlobUpload(run, v->version(), d, bytes.size(), 0);
  if (!up.ok()) return up.status();
  if (auto st = (*up)->Append(0, bytes); !st.ok()) return st;
  if (auto st = (*up)->Finish(); !st.ok()) return st;
  v1::CommitShardRequest commit;
  commit.set_run(run);
  commit.set_version(v->version());
  *commit.mutable_manifest() = OneBlob(d, bytes.size());
  return repo.CommitShard(commit, Actor{});
}

// The bytes of tensor "w" of run@version in `repo`.
absl::StatusOr<std::string> ReadOne(Repository& repo, const std::string& run,
                                    uint64_t version) {
  v1::GetVersionRequest get;
  get.set_run(run);
  get.set_ref(absl::StrCat(version));
  get.set_include_manifest(true);
  auto v = repo.GetVersion(get);
  if (!v.ok()) return v.status();
  const v1::TensorInfo& t = v->shards(0).entries(1).tensor();
  auto d = DigestFromBytes(t.blob_digest());
  if (!d.ok()) return d.status();
  auto lease = repo.LeaseForRead(run, version);
  if (!lease.ok()) return lease.status();
  auto reader = repo.blobs().Open(*d);
  if (!reader.ok()) return reader.status();
  std::string out(t.byte_length(), '\0');
  if (auto st = (*reader)->ReadAt(0, out.size(), out.data()); !st.ok()) {
    return st;
  }
  return out;
}

class RepositoryBackupTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = ckptd::testing::MakeTempDir("ckptd-rbk"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(RepositoryBackupTest, CopiesFromAStoreWithoutLinksAndLeavesPendingOut) {
  auto memory = std::shared_ptr<storage::testing::MemoryBlobStore>(
      storage::testing::NewMemoryBlobStore());
  RepositoryOptions options;
  options.metadata_dir = dir_ + "/meta";
  auto repo = Repository::Open(options, memory);
  ASSERT_TRUE(repo.ok()) << repo.status();
  // 3 MiB crosses the copy buffer's and the checksum chunks' boundaries.
  const std::string a = ckptd::testing::RandomBytes(3 << 20, 1);
  const std::string b = ckptd::testing::RandomBytes(100, 2);
  ASSERT_TRUE(PushOne(**repo, "r", 1, a).ok());
  ASSERT_TRUE(PushOne(**repo, "r", 2, b).ok());
  auto pending = PushOne(**repo, "r", 3, "pending bytes", /*world=*/2);
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_EQ(pending->state(), v1::PENDING);

  v1::BackupRequest req;
  req.set_dir(dir_ + "/backup");
  auto r = (*repo)->Backup(req, Actor{"ops", true});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->versions(), 2u);
  EXPECT_EQ(r->pending_left_out(), 1u);
  EXPECT_EQ(r->blobs(), 2u);  // not the pending version's
  EXPECT_EQ(r->blobs_copied(), 2u);
  EXPECT_EQ(r->blobs_linked(), 0u);
  EXPECT_EQ(r->bytes_copied(), a.size() + b.size());
  EXPECT_EQ(r->bytes(), a.size() + b.size());

  auto restored = Repository::OpenDataDir(req.dir(), RepositoryOptions());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(*ReadOne(**restored, "r", 1), a);
  EXPECT_EQ(*ReadOne(**restored, "r", 2), b);
  EXPECT_EQ(
      (*restored)->blobs().Stat(DigestOf("pending bytes", 13))->has_value(),
      false);
  v1::ListVersionsRequest list;
  list.set_run("r");
  list.set_include_aborted(true);
  auto versions = (*restored)->ListVersions(list);
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->versions_size(), 3);
  EXPECT_EQ(versions->versions(2).state(), v1::ABORTED);
  EXPECT_THAT(versions->versions(2).abort_reason(),
              HasSubstr("pending when a backup was taken"));
  // Its step begins a new version in the restored repository.
  auto again = PushOne(**restored, "r", 3, "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version(), 4u);
}

TEST_F(RepositoryBackupTest, LinksTheLiveBlobFilesOnOneFilesystem) {
  auto repo = Repository::OpenDataDir(dir_ + "/data", RepositoryOptions());
  ASSERT_TRUE(repo.ok()) << repo.status();
  const std::string a = ckptd::testing::RandomBytes(2 << 20, 3);
  ASSERT_TRUE(PushOne(**repo, "r", 1, a).ok());
  ASSERT_TRUE(PushOne(**repo, "r", 2, "newer").ok());  // `last` moves on
  v1::BackupRequest req;
  req.set_dir(dir_ + "/backup");
  auto r = (*repo)->Backup(req, Actor{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->blobs_linked(), 2u);
  EXPECT_EQ(r->blobs_copied(), 0u);
  const std::string hex = DigestOf(a.data(), a.size()).Hex();
  const std::string rel = absl::StrCat("/blobs/", hex.substr(0, 2), "/", hex);
  struct stat live, backup;
  ASSERT_EQ(::stat((dir_ + "/data" + rel).c_str(), &live), 0);
  ASSERT_EQ(::stat((req.dir() + rel).c_str(), &backup), 0);
  EXPECT_EQ(live.st_ino, backup.st_ino);
  EXPECT_EQ(live.st_nlink, 2u);
  // The live server deleting its version leaves the backup's file alone.
  v1::DeleteVersionRequest del;
  del.set_run("r");
  del.set_ref("1");
  absl::Status deleted = (*repo)->DeleteVersion(del);
  ASSERT_TRUE(deleted.ok()) << deleted;
  EXPECT_FALSE(fs::exists(dir_ + "/data" + rel));
  repo->reset();
  auto restored = Repository::OpenDataDir(req.dir(), RepositoryOptions());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(*ReadOne(**restored, "r", 1), a);
}

// A copy reads through the checksums: a damaged source blob fails the
// backup with DATA_LOSS, and the backup removes what it wrote.
TEST_F(RepositoryBackupTest, ACopyOfADamagedBlobFailsAndRemovesTheBackup) {
  auto memory = std::shared_ptr<storage::testing::MemoryBlobStore>(
      storage::testing::NewMemoryBlobStore());
  RepositoryOptions options;
  options.metadata_dir = dir_ + "/meta";
  auto repo = Repository::Open(options, memory);
  ASSERT_TRUE(repo.ok()) << repo.status();
  const std::string a = ckptd::testing::RandomBytes(4096, 5);
  ASSERT_TRUE(PushOne(**repo, "r", 1, a).ok());
  ASSERT_TRUE(memory->CorruptForTesting(DigestOf(a.data(), a.size()), 10).ok());
  v1::BackupRequest req;
  req.set_dir(dir_ + "/backup");
  auto r = (*repo)->Backup(req, Actor{});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_FALSE(fs::exists(req.dir()));
  // An existing empty target stays, emptied.
  fs::create_directory(req.dir());
  r = (*repo)->Backup(req, Actor{});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_TRUE(fs::is_empty(req.dir()));
}

// Cancelled between blobs: nothing is left.
TEST_F(RepositoryBackupTest, CancelledBackupLeavesNothing) {
  auto repo = Repository::OpenDataDir(dir_ + "/data", RepositoryOptions());
  ASSERT_TRUE(repo.ok()) << repo.status();
  ASSERT_TRUE(PushOne(**repo, "r", 1, "bytes").ok());
  v1::BackupRequest req;
  req.set_dir(dir_ + "/backup");
  auto r = (*repo)->Backup(req, Actor{}, [] { return true; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_FALSE(fs::exists(req.dir()));
  // And the next one works (the one-at-a-time slot was released).
  r = (*repo)->Backup(req, Actor{});
  EXPECT_TRUE(r.ok()) << r.status();
}

}  // namespace
}  // namespace ckptd::core
