// Read replicas (server/core/repository_replica.cc) against a real radosgw:
// a writer Repository over an S3 bucket prefix and replicas of that prefix.
// A replica serves what the writer committed, follows commits, deletes and
// alias moves in record order (its watchers too), forgets the blobs the
// writer collected without deleting anything, refuses every change naming
// the writer, and its store never writes to the bucket.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/status.h"
#include "server/core/repository.h"
#include "server/storage/s3_blob_store.h"
#include "server/storage/s3_client.h"
#include "tests/support/s3_env.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

using ::ckptd::testing::LoadS3TestEnv;
using ::ckptd::testing::MakeTempDir;
using ::ckptd::testing::S3OptionsOf;
using ::ckptd::testing::S3TestEnv;
using ::ckptd::testing::UniqueS3Prefix;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!env_.missing.empty()) GTEST_SKIP() << env_.missing;
    tmp_ = MakeTempDir("ckptd-replica");
    store_.s3 = S3OptionsOf(env_);
    store_.prefix = UniqueS3Prefix("replica");
    RepositoryOptions options;
    options.s3 = store_;
    auto writer = Repository::OpenDataDir(tmp_ + "/writer", options);
    ASSERT_TRUE(writer.ok()) << writer.status();
    writer_ = std::move(*writer);
  }

  void TearDown() override {
    replicas_.clear();
    writer_.reset();
    std::error_code ec;
    if (!tmp_.empty()) std::filesystem::remove_all(tmp_, ec);
  }

  Repository& OpenReplica(const std::string& name) {
    RepositoryOptions options;
    options.replica_of = store_;
    // The tests catch up with FollowOnce; the follower thread stays idle.
    options.follow_interval = absl::Hours(1);
    auto replica = Repository::OpenDataDir(absl::StrCat(tmp_, "/", name),
                                           std::move(options));
    EXPECT_TRUE(replica.ok()) << replica.status();
    if (!replica.ok()) std::abort();
    replicas_.push_back(std::move(*replica));
    return *replicas_.back();
  }

  // Pushes one version of `run` holding one float32 tensor whose bytes are
  // `fill` repeated; returns its number.
  uint64_t Push(const std::string& run, int64_t step, double loss, char fill) {
    v1::BeginVersionRequest begin;
    begin.set_run(run);
    begin.set_step(step);
    begin.set_world_size(1);
    auto pending = writer_->BeginVersion(begin);
    EXPECT_TRUE(pending.ok()) << pending.status();
    if (!pending.ok()) return 0;
    const uint64_t version = pending->version();
    const std::string bytes(4096, fill);
    const Digest digest = DigestOf(bytes.data(), bytes.size());
    auto upload =
        writer_->StartBlobUpload(run, version, digest, bytes.size(), 0);
    EXPECT_TRUE(upload.ok()) << upload.status();
    if (!upload.ok()) return 0;
    EXPECT_TRUE((*upload)->Append(0, bytes).ok());
    EXPECT_TRUE((*upload)->Finish().ok());
    upload->reset();
    v1::CommitShardRequest commit;
    commit.set_run(run);
    commit.set_version(version);
    v1::ShardManifest* m = commit.mutable_manifest();
    m->add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
    v1::ManifestEntry* e = m->add_entries();
    e->add_path()->set_key("w");
    v1::TensorInfo* t = e->mutable_tensor();
    t->set_dtype(v1::FLOAT32);
    t->add_shape(1024);
    t->set_byte_length(bytes.size());
    t->set_blob_digest(std::string(digest.AsBytes()));
    (*commit.mutable_metrics())["loss"] = loss;
    auto info = writer_->CommitShard(commit, Actor{});
    EXPECT_TRUE(info.ok()) << info.status();
    return version;
  }

  // The bytes of tensor "w" of run@version, read through `repo`.
  static absl::StatusOr<std::string> ReadW(Repository& repo,
                                           const std::string& run,
                                           uint64_t version) {
    v1::GetVersionRequest get;
    get.set_run(run);
    get.set_ref(absl::StrCat(version));
    get.set_include_manifest(true);
    CKPTD_ASSIGN_OR_RETURN(v1::GetVersionResponse resp, repo.GetVersion(get));
    if (resp.shards_size() != 1 || resp.shards(0).entries_size() != 2) {
      return absl::InternalError(resp.DebugString());
    }
    const v1::TensorInfo& t = resp.shards(0).entries(1).tensor();
    CKPTD_ASSIGN_OR_RETURN(Digest d, DigestFromBytes(t.blob_digest()));
    CKPTD_ASSIGN_OR_RETURN(auto lease, repo.LeaseForRead(run, version));
    CKPTD_ASSIGN_OR_RETURN(auto reader, lease->Open(d));
    std::string out(t.byte_length(), '\0');
    CKPTD_RETURN_IF_ERROR(reader->ReadAt(t.blob_offset(), out.size(), &out[0]));
    return out;
  }

  static std::vector<uint64_t> Versions(Repository& repo,
                                        const std::string& run) {
    v1::ListVersionsRequest req;
    req.set_run(run);
    auto resp = repo.ListVersions(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    std::vector<uint64_t> out;
    if (resp.ok()) {
      for (const auto& v : resp->versions()) out.push_back(v.version());
    }
    return out;
  }

  S3TestEnv env_ = LoadS3TestEnv();
  std::string tmp_;
  storage::S3BlobStoreOptions store_;
  std::unique_ptr<Repository> writer_;
  std::vector<std::unique_ptr<Repository>> replicas_;
};

TEST_F(ReplicaTest, FollowsCommitsDeletesAndAliasMovesInRecordOrder) {
  v1::SetPolicyRequest policy;
  policy.set_run("r");
  policy.mutable_policy()->set_monitor("loss");
  policy.mutable_policy()->set_mode(v1::MIN);
  ASSERT_TRUE(writer_->SetPolicy(policy, Actor{}).ok());
  ASSERT_EQ(Push("r", 1, 0.5, 'a'), 1u);

  Repository& a = OpenReplica("a");
  Repository& b = OpenReplica("b");
  for (Repository* r : {&a, &b}) {
    EXPECT_TRUE(r->is_replica());
    auto bytes = ReadW(*r, "r", 1);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, std::string(4096, 'a'));
  }

  absl::Mutex mu;
  std::vector<uint64_t> best_moves;
  std::optional<v1::VersionInfo> current;
  auto id = a.Watch(
      "r", "best",
      [&](const v1::VersionInfo& v) {
        absl::MutexLock lock(&mu);
        best_moves.push_back(v.version());
      },
      &current);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(current.has_value());
  EXPECT_EQ(current->version(), 1u);

  ASSERT_EQ(Push("r", 2, 0.2, 'b'), 2u);
  ASSERT_EQ(Push("r", 3, 0.9, 'c'), 3u);
  ASSERT_EQ(Push("r", 4, 0.1, 'd'), 4u);
  auto applied = a.FollowOnce();
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_GE(*applied, 3u);
  {
    absl::MutexLock lock(&mu);
    EXPECT_THAT(best_moves, ElementsAre(2u, 4u));
  }
  EXPECT_THAT(Versions(a, "r"), ElementsAre(1u, 2u, 3u, 4u));
  // b has not followed yet: it serves what it had.
  EXPECT_THAT(Versions(b, "r"), ElementsAre(1u));
  ASSERT_TRUE(b.FollowOnce().ok());
  EXPECT_THAT(Versions(b, "r"), ElementsAre(1u, 2u, 3u, 4u));
  auto four = ReadW(b, "r", 4);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(*four, std::string(4096, 'd'));
  // Nothing new: nothing applied.
  auto again = a.FollowOnce();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
  EXPECT_EQ(a.GetFollowState().applied_seq, b.GetFollowState().applied_seq);
  // What the metrics show: the same record seq on writer and replicas.
  const RepositoryStats ws = writer_->Stats();
  const RepositoryStats as = a.Stats();
  ASSERT_TRUE(ws.record.has_value() && as.record.has_value());
  EXPECT_FALSE(ws.record->replica);
  EXPECT_TRUE(as.record->replica);
  EXPECT_EQ(ws.record->seq, as.record->seq);
  EXPECT_GT(as.record->last_follow, 0);

  // The writer deletes version 3 and collects its blob: the replica drops
  // it from its index and stats, and deletes nothing itself.
  const uint64_t before = a.Stats().stored_blobs;
  // A read of version 3 on the replica, begun before the writer deletes
  // it: the blob is gone from the bucket, which is NOT_FOUND (not damage:
  // nothing is quarantined).
  v1::GetVersionRequest three;
  three.set_run("r");
  three.set_ref("3");
  three.set_include_manifest(true);
  auto manifest = a.GetVersion(three);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto d3 =
      DigestFromBytes(manifest->shards(0).entries(1).tensor().blob_digest());
  ASSERT_TRUE(d3.ok());
  auto lease = a.LeaseForRead("r", 3);
  ASSERT_TRUE(lease.ok()) << lease.status();
  v1::DeleteVersionRequest del;
  del.set_run("r");
  del.set_ref("3");
  ASSERT_TRUE(writer_->DeleteVersion(del, Actor{}).ok());
  auto gone = (*lease)->Open(*d3);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(), HasSubstr("the writer deleted"));
  EXPECT_EQ(a.Stats().quarantined_blobs, 0u);
  lease->reset();
  ASSERT_TRUE(a.FollowOnce().ok());
  EXPECT_THAT(Versions(a, "r"), ElementsAre(1u, 2u, 4u));
  EXPECT_EQ(a.Stats().stored_blobs, before - 1);
  EXPECT_EQ(ReadW(a, "r", 3).status().code(), absl::StatusCode::kNotFound);
  a.Unwatch(*id);

  // A replica reopened over its own data dir catches up from where it was.
  replicas_.erase(replicas_.begin() + 1);  // closes b
  ASSERT_EQ(Push("r", 5, 0.05, 'e'), 5u);
  Repository& b2 = OpenReplica("b");
  EXPECT_THAT(Versions(b2, "r"), ElementsAre(1u, 2u, 4u, 5u));
  v1::GetVersionRequest best;
  best.set_run("r");
  best.set_ref("best");
  auto got = b2.GetVersion(best);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info().version(), 5u);
}

TEST_F(ReplicaTest, AWriterAddressThatIsNotOneLineOfTextIsNotShown) {
  ASSERT_EQ(Push("r", 1, 0.5, 'a'), 1u);
  for (const std::string& bad :
       {std::string(2000, 'h'), std::string("host:1\n\x1b[31mred"),
        std::string("a\0b", 3)}) {
    ASSERT_TRUE(writer_->AnnounceWriter(bad).ok());
    replicas_.clear();
    Repository& r = OpenReplica("a");
    v1::BeginVersionRequest begin;
    begin.set_run("r");
    const absl::Status st = r.BeginVersion(begin).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(st.message(), HasSubstr("it has not said where it serves"));
    EXPECT_THAT(st.message(), ::testing::Not(HasSubstr("hhhh")));
    EXPECT_THAT(st.message(), ::testing::Not(HasSubstr("red")));
  }
  // A good one, with surrounding whitespace, is shown.
  ASSERT_TRUE(writer_->AnnounceWriter("  host:50051\n").ok());
  replicas_.clear();
  Repository& r = OpenReplica("a");
  v1::BeginVersionRequest begin;
  begin.set_run("r");
  EXPECT_THAT(r.BeginVersion(begin).status().message(),
              HasSubstr(", at host:50051"));
}

TEST_F(ReplicaTest, RefusesEveryChangeNamingTheWriter) {
  ASSERT_EQ(Push("r", 1, 0.5, 'a'), 1u);
  ASSERT_TRUE(writer_->AnnounceWriter("writer.example:50051").ok());
  Repository& r = OpenReplica("a");
  const uint64_t seq = r.GetFollowState().applied_seq;

  v1::BeginVersionRequest begin;
  begin.set_run("r");
  begin.set_world_size(1);
  v1::SetAliasRequest alias;
  alias.set_run("r");
  alias.set_name("prod");
  alias.set_ref("1");
  v1::DeleteAliasRequest delete_alias;
  delete_alias.set_run("r");
  delete_alias.set_name("prod");
  v1::PinRequest pin;
  pin.set_run("r");
  pin.set_ref("1");
  v1::DeleteVersionRequest del;
  del.set_run("r");
  del.set_ref("1");
  del.set_force(true);
  v1::SetPolicyRequest policy;
  policy.set_run("r");
  policy.mutable_policy()->set_keep_last(1);
  v1::CommitShardRequest commit;
  commit.set_run("r");
  commit.set_version(1);
  v1::AbortVersionRequest abort;
  abort.set_run("r");
  abort.set_version(1);
  v1::FindMissingBlobsRequest find;
  find.set_run("r");
  find.set_version(1);
  v1::BackupRequest backup;
  backup.set_dir(tmp_ + "/backup");
  const Digest d = DigestOf("x", 1);
  const std::vector<std::pair<std::string, absl::Status>> refused = {
      {"BeginVersion", r.BeginVersion(begin).status()},
      {"FindMissingBlobs", r.FindMissingBlobs(find).status()},
      {"UploadBlobs", r.StartBlobUpload("r", 1, d, 1, 0).status()},
      {"CommitShard", r.CommitShard(commit, Actor{}).status()},
      {"AbortVersion", r.AbortVersion(abort)},
      {"SetAlias", r.SetAlias(alias, Actor{}).status()},
      {"DeleteAlias", r.DeleteAlias(delete_alias, Actor{})},
      {"Pin", r.SetPinned(pin, true).status()},
      {"DeleteVersion", r.DeleteVersion(del)},
      {"SetPolicy", r.SetPolicy(policy, Actor{}).status()},
      {"CollectGarbage", r.CollectGarbage().status()},
      {"Backup", r.Backup(backup, Actor{}).status()},
      {"retention", r.ApplyRetention("r").status()},
  };
  for (const auto& [what, st] : refused) {
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << what;
    EXPECT_THAT(st.message(), HasSubstr(what));
    EXPECT_THAT(st.message(), HasSubstr("read replica of s3://"));
    EXPECT_THAT(st.message(), HasSubstr("at writer.example:50051"));
  }
  EXPECT_FALSE(std::filesystem::exists(tmp_ + "/backup"));
  // Nothing changed, here or in the bucket; the writer still writes.
  EXPECT_THAT(Versions(r, "r"), ElementsAre(1u));
  ASSERT_TRUE(r.FollowOnce().ok());
  EXPECT_EQ(r.GetFollowState().applied_seq, seq);
  EXPECT_EQ(Push("r", 2, 0.4, 'b'), 2u);
  // A writer is not a replica.
  EXPECT_TRUE(writer_->CheckWritable("pushes").ok());
  EXPECT_EQ(writer_->FollowOnce().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ReplicaTest, ItsStoreNeverWritesToTheBucket) {
  storage::S3BlobStoreOptions ro = store_;
  ro.read_only = true;
  auto store = storage::OpenS3BlobStore(ro);
  ASSERT_TRUE(store.ok()) << store.status();
  const Digest d = DigestOf("x", 1);
  EXPECT_EQ((*store)->NewWriter(d).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store)->Delete(d).code(), absl::StatusCode::kFailedPrecondition);
  // An upload in progress (the writer's) survives the replica's start.
  auto client = storage::S3Client::Create(S3OptionsOf(env_));
  ASSERT_TRUE(client.ok());
  const std::string key = storage::S3BlobKey(store_.prefix, d);
  auto upload = (*client)->CreateMultipartUpload(key);
  ASSERT_TRUE(upload.ok()) << upload.status();
  ASSERT_TRUE((*store)->RemoveTemporaries().ok());
  OpenReplica("a");
  std::vector<std::string> open;
  ASSERT_TRUE(
      (*client)
          ->ListMultipartUploads(store_.prefix,
                                 [&](const storage::S3Client::UploadEntry& u) {
                                   open.push_back(u.upload_id);
                                 })
          .ok());
  EXPECT_THAT(open, ElementsAre(*upload));
  EXPECT_TRUE((*client)->AbortMultipartUpload(key, *upload).ok());
}

TEST_F(ReplicaTest, BadDataDirsAndOptionsAreRefusedNamingTheFix) {
  ASSERT_EQ(Push("r", 1, 0.5, 'a'), 1u);
  RepositoryOptions options;
  options.replica_of = store_;
  auto over_writer = Repository::OpenDataDir(tmp_ + "/writer", options);
  EXPECT_EQ(over_writer.status().code(), absl::StatusCode::kFailedPrecondition);
  writer_.reset();  // its LOCK
  over_writer = Repository::OpenDataDir(tmp_ + "/writer", options);
  EXPECT_THAT(over_writer.status().message(),
              HasSubstr("holds the index of a writing ckptd"));

  OpenReplica("a");
  replicas_.clear();
  // Nor is a replica's copy opened as a writer's index.
  RepositoryOptions as_writer;
  as_writer.s3 = store_;
  EXPECT_THAT(
      Repository::OpenDataDir(tmp_ + "/a", as_writer).status().message(),
      HasSubstr("is a read replica's copy of s3://"));
  RepositoryOptions other = options;
  other.replica_of->prefix += "-other";
  auto wrong = Repository::OpenDataDir(tmp_ + "/a", other);
  EXPECT_THAT(wrong.status().message(), HasSubstr("is a replica of s3://"));

  RepositoryOptions both = options;
  both.s3 = store_;
  EXPECT_THAT(Repository::OpenDataDir(tmp_ + "/c", both).status().message(),
              HasSubstr("exclude each other"));
  RepositoryOptions rebuild = options;
  rebuild.rebuild_index = true;
  EXPECT_THAT(Repository::OpenDataDir(tmp_ + "/c", rebuild).status().message(),
              HasSubstr("drop --rebuild_index"));
  RepositoryOptions fast = options;
  fast.follow_interval = absl::Milliseconds(1);
  EXPECT_THAT(Repository::OpenDataDir(tmp_ + "/c", fast).status().message(),
              HasSubstr("outside [10ms, 1h]"));
}

}  // namespace
}  // namespace ckptd::core
