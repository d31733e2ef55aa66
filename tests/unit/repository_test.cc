// Repository tests over a real RocksDB and a real file blob store in a temp
// dir: the push protocol, multi-rank publish, last/best, retention, aliases,
// GC, and recovery after reopening.
#include "server/core/repository.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

v1::ManifestEntry Root() {
  v1::ManifestEntry e;
  e.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  return e;
}

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ckptd::testing::MakeTempDir("ckptd-repo");
    Reopen();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    repo_.reset();
    RepositoryOptions options;
    options.now = [this] { return now_; };
    auto repo = Repository::OpenDataDir(dir_, options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = std::move(*repo);
  }

  uint64_t Begin(const std::string& run, int64_t step, uint32_t world = 1) {
    v1::BeginVersionRequest req;
    req.set_run(run);
    req.set_step(step);
    req.set_world_size(world);
    auto resp = repo_->BeginVersion(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->version() : 0;
  }

  Digest Upload(const std::string& run, uint64_t version,
                const std::string& bytes) {
    Digest d = DigestOf(bytes.data(), bytes.size());
    auto up = repo_->StartBlobUpload(run, version, d, bytes.size(), 0);
    EXPECT_TRUE(up.ok()) << up.status();
    EXPECT_TRUE((*up)->Append(0, bytes).ok());
    EXPECT_TRUE((*up)->Finish().ok());
    return d;
  }

  // A manifest with one float32 tensor "w" of `floats` elements in `blob`.
  static v1::ShardManifest OneTensor(const Digest& blob, int64_t floats) {
    v1::ShardManifest m;
    *m.add_entries() = Root();
    v1::ManifestEntry* e = m.add_entries();
    e->add_path()->set_key("w");
    v1::TensorInfo* t = e->mutable_tensor();
    t->set_dtype(v1::FLOAT32);
    t->add_shape(floats);
    t->set_byte_length(floats * 4);
    t->set_blob_digest(std::string(blob.AsBytes()));
    return m;
  }

  absl::StatusOr<v1::VersionInfo> Commit(
      const std::string& run, uint64_t version, uint32_t rank,
      const v1::ShardManifest& m, std::map<std::string, double> metrics = {}) {
    v1::CommitShardRequest req;
    req.set_run(run);
    req.set_version(version);
    req.set_rank(rank);
    *req.mutable_manifest() = m;
    for (const auto& [k, v] : metrics) (*req.mutable_metrics())[k] = v;
    return repo_->CommitShard(req, Actor{});
  }

  // Pushes one single-shard version whose tensor bytes depend on `seed`.
  uint64_t Push(const std::string& run, int64_t step,
                std::map<std::string, double> metrics, int seed = -1) {
    uint64_t v = Begin(run, step);
    std::string bytes(64, static_cast<char>(seed < 0 ? step : seed));
    Digest d = Upload(run, v, bytes);
    auto info = Commit(run, v, 0, OneTensor(d, 16), metrics);
    EXPECT_TRUE(info.ok()) << info.status();
    return v;
  }

  absl::StatusOr<uint64_t> RefTarget(const std::string& run,
                                     const std::string& ref) {
    v1::GetVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    auto resp = repo_->GetVersion(req);
    if (!resp.ok()) return resp.status();
    return resp->info().version();
  }

  std::vector<uint64_t> Surviving(const std::string& run) {
    v1::ListVersionsRequest req;
    req.set_run(run);
    auto resp = repo_->ListVersions(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    std::vector<uint64_t> out;
    for (const auto& v : resp->versions()) out.push_back(v.version());
    return out;
  }

  void SetPolicy(const std::string& run, v1::Policy p) {
    v1::SetPolicyRequest req;
    req.set_run(run);
    *req.mutable_policy() = p;
    auto st = repo_->SetPolicy(req, Actor{});
    ASSERT_TRUE(st.ok()) << st.status();
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<Repository> repo_;
};

TEST_F(RepositoryTest, BadRunNamesAreRejectedEverywhere) {
  const std::string nul("a\0b", 3);
  for (const std::string& name :
       {std::string(""), std::string("../x"), std::string("a/b"),
        std::string(200, 'a'), nul, std::string("-lead"), std::string("a b")}) {
    v1::BeginVersionRequest req;
    req.set_run(name);
    auto st = repo_->BeginVersion(req);
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument)
        << "run name '" << name << "'";
    v1::GetVersionRequest get;
    get.set_run(name);
    get.set_ref("last");
    EXPECT_EQ(repo_->GetVersion(get).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
  }
  auto runs = repo_->ListRuns();
  ASSERT_TRUE(runs.ok());
  EXPECT_THAT(runs->runs(), IsEmpty());
}

TEST_F(RepositoryTest, BeginVersionIsIdempotentOnRunAndStep) {
  uint64_t a = Begin("r", 10, 2);
  v1::BeginVersionRequest req;
  req.set_run("r");
  req.set_step(10);
  req.set_world_size(2);
  auto again = repo_->BeginVersion(req);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version(), a);
  EXPECT_FALSE(again->created());
  req.set_world_size(3);
  EXPECT_EQ(repo_->BeginVersion(req).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Begin("r", 11, 2), a);
}

TEST_F(RepositoryTest, PublishMovesLastAndBest) {
  SetPolicy("r", [] {
    v1::Policy p;
    p.set_monitor("val_loss");
    p.set_mode(v1::MIN);
    return p;
  }());
  uint64_t v1 = Push("r", 1, {{"val_loss", 0.9}});
  uint64_t v2 = Push("r", 2, {{"val_loss", 0.5}});
  uint64_t v3 = Push("r", 3, {{"val_loss", 0.7}});
  uint64_t v4 = Push("r", 4, {{"val_loss", 0.5}});  // tie: earlier stays
  uint64_t v5 = Push("r", 5, {});                   // no metric: never best
  EXPECT_EQ(*RefTarget("r", "last"), v5);
  EXPECT_EQ(*RefTarget("r", "best"), v2);
  (void)v1, (void)v3, (void)v4;
  Reopen();
  EXPECT_EQ(*RefTarget("r", "last"), v5);
  EXPECT_EQ(*RefTarget("r", "best"), v2);
  // Changing the monitor's mode recomputes best.
  SetPolicy("r", [] {
    v1::Policy p;
    p.set_monitor("val_loss");
    p.set_mode(v1::MAX);
    return p;
  }());
  EXPECT_EQ(*RefTarget("r", "best"), v1);
}

TEST_F(RepositoryTest, CommitRejectsBadManifestsAndStoresNothing) {
  uint64_t v = Begin("r", 1);
  Digest d = Upload("r", v, std::string(64, 'x'));
  struct Case {
    std::string name;
    std::function<void(v1::ShardManifest&)> mutate;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases = {
      {"byte length != shape x dtype",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_byte_length(60);
       },
       absl::StatusCode::kInvalidArgument, "shape x dtype size is 64"},
      {"blob never uploaded",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_blob_digest(
             std::string(16, '\x07'));
       },
       absl::StatusCode::kFailedPrecondition, "never uploaded"},
      {"range past the blob end",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_blob_offset(8);
       },
       absl::StatusCode::kInvalidArgument, "the blob has 64 bytes"},
      {"unknown dtype",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_dtype(
             static_cast<v1::DType>(99));
       },
       absl::StatusCode::kInvalidArgument, "unknown dtype"},
      {"negative dimension",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_shape(0, -16);
       },
       absl::StatusCode::kInvalidArgument, "negative dimension"},
      {"no root container",
       [](v1::ShardManifest& m) { m.mutable_entries()->DeleteSubrange(0, 1); },
       absl::StatusCode::kInvalidArgument, "root container"},
      {"orphan entry",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->add_path()->set_key("deeper");
       },
       absl::StatusCode::kInvalidArgument, "no parent container"},
      {"duplicate path",
       [](v1::ShardManifest& m) { *m.add_entries() = m.entries(1); },
       absl::StatusCode::kInvalidArgument, "repeats"},
      {"bad digest length",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_blob_digest("abc");
       },
       absl::StatusCode::kInvalidArgument, "16 bytes"},
  };
  for (const Case& c : cases) {
    v1::ShardManifest m = OneTensor(d, 16);
    c.mutate(m);
    auto st = Commit("r", v, 0, m);
    EXPECT_EQ(st.status().code(), c.code) << c.name << ": " << st.status();
    EXPECT_THAT(st.status().message(), HasSubstr(c.message)) << c.name;
  }
  // Rank out of range.
  EXPECT_EQ(Commit("r", v, 1, OneTensor(d, 16)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Surviving("r"), IsEmpty());
  EXPECT_EQ(RefTarget("r", "last").status().code(),
            absl::StatusCode::kNotFound);
  // The good manifest still commits afterwards.
  ASSERT_TRUE(Commit("r", v, 0, OneTensor(d, 16)).ok());
  EXPECT_THAT(Surviving("r"), ElementsAre(v));
}

TEST_F(RepositoryTest, AbortedVersionRefusesCommitAndUpload) {
  uint64_t v = Begin("r", 1);
  Digest d = Upload("r", v, std::string(64, 'a'));
  v1::AbortVersionRequest abort;
  abort.set_run("r");
  abort.set_version(v);
  abort.set_reason("rank 3 died");
  ASSERT_TRUE(repo_->AbortVersion(abort).ok());
  auto st = Commit("r", v, 0, OneTensor(d, 16));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.status().message(), HasSubstr("rank 3 died"));
  EXPECT_EQ(repo_->CheckPending("r", v).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Surviving("r"), IsEmpty());
  // A new BeginVersion at the same step gets a new version.
  EXPECT_NE(Begin("r", 1), v);
}

TEST_F(RepositoryTest, MultiRankPublishesOnlyWhenAllShardsAreIn) {
  uint64_t v = Begin("r", 7, 3);
  std::vector<Digest> blobs;
  for (int rank = 0; rank < 3; ++rank) {
    blobs.push_back(Upload("r", v, std::string(64, 'a' + rank)));
  }
  for (uint32_t rank : {2u, 0u}) {
    auto info = Commit("r", v, rank, OneTensor(blobs[rank], 16),
                       {{"loss", 1.0 + rank}});
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->state(), v1::PENDING);
    EXPECT_THAT(Surviving("r"), IsEmpty());
    EXPECT_EQ(RefTarget("r", std::to_string(v)).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  // Same rank, same content: idempotent. Different content: refused.
  EXPECT_TRUE(Commit("r", v, 0, OneTensor(blobs[0], 16)).ok());
  EXPECT_EQ(Commit("r", v, 0, OneTensor(blobs[1], 16)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Pending survives a restart; the last rank then publishes.
  Reopen();
  auto info = Commit("r", v, 1, OneTensor(blobs[1], 16));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::COMMITTED);
  EXPECT_EQ(info->shards_size(), 3);
  EXPECT_EQ(info->total_bytes(), 3u * 64);
  EXPECT_EQ(*RefTarget("r", "last"), v);
  EXPECT_DOUBLE_EQ(info->metrics().at("loss"), 1.0);
}

TEST_F(RepositoryTest, PendingTimeoutAbortsAndReleasesBlobs) {
  uint64_t v = Begin("r", 1, 2);
  Digest d = Upload("r", v, std::string(64, 'q'));
  ASSERT_TRUE(Commit("r", v, 0, OneTensor(d, 16)).ok());
  auto aborted = repo_->AbortExpiredPending();
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(*aborted, 0);
  now_ += absl::Hours(7);
  aborted = repo_->AbortExpiredPending();
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(*aborted, 1);
  EXPECT_EQ(repo_->CheckPending("r", v).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(RepositoryTest, GarbageCollectionKeepsReferencedAndLeasedBlobs) {
  uint64_t kept = Push("r", 1, {});
  (void)kept;
  // A pending version's uploaded-but-uncommitted blob is leased.
  uint64_t pending = Begin("r", 2);
  Digest leased = Upload("r", pending, std::string(64, 'L'));
  auto gc = repo_->CollectGarbage();
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->blobs_deleted(), 0u);
  ASSERT_TRUE(repo_->blobs().Stat(leased)->has_value());
  // The lease survives a restart (pending versions resume), so recovery
  // keeps the blob and the commit succeeds without a re-upload.
  Reopen();
  EXPECT_TRUE(repo_->blobs().Stat(leased)->has_value());
  EXPECT_TRUE(Commit("r", pending, 0, OneTensor(leased, 16)).ok());
  // A lease dies with its aborted version, and the abort collects the
  // blob at once.
  uint64_t doomed = Begin("r", 3);
  Digest orphan = Upload("r", doomed, std::string(64, 'O'));
  v1::AbortVersionRequest abort;
  abort.set_run("r");
  abort.set_version(doomed);
  ASSERT_TRUE(repo_->AbortVersion(abort).ok());
  EXPECT_FALSE(repo_->blobs().Stat(orphan)->has_value());
  gc = repo_->CollectGarbage();
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->blobs_deleted(), 0u);
  EXPECT_TRUE(repo_->blobs().Stat(leased)->has_value());
}

TEST_F(RepositoryTest, DeleteAndPinRules) {
  uint64_t a = Push("r", 1, {});
  uint64_t b = Push("r", 2, {});
  v1::DeleteVersionRequest del;
  del.set_run("r");
  del.set_ref(std::to_string(b));
  auto st = repo_->DeleteVersion(del);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("last"));
  v1::PinRequest pin;
  pin.set_run("r");
  pin.set_ref(std::to_string(a));
  ASSERT_TRUE(repo_->SetPinned(pin, true).ok());
  del.set_ref(std::to_string(a));
  st = repo_->DeleteVersion(del);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("pinned"));
  ASSERT_TRUE(repo_->SetPinned(pin, false).ok());
  v1::SetAliasRequest alias;
  alias.set_run("r");
  alias.set_name("prod");
  alias.set_ref(std::to_string(a));
  ASSERT_TRUE(repo_->SetAlias(alias, Actor{"ops"}).ok());
  st = repo_->DeleteVersion(del);
  EXPECT_THAT(st.message(), HasSubstr("prod"));
  v1::DeleteAliasRequest unalias;
  unalias.set_run("r");
  unalias.set_name("prod");
  ASSERT_TRUE(repo_->DeleteAlias(unalias, Actor{"ops"}).ok());
  EXPECT_TRUE(repo_->DeleteVersion(del).ok());
  EXPECT_THAT(Surviving("r"), ElementsAre(b));
  // Alias names kept by the server are refused.
  alias.set_name("best");
  EXPECT_EQ(repo_->SetAlias(alias, Actor{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The audit history has the user alias moves with their actor.
  v1::GetAliasHistoryRequest hist;
  hist.set_run("r");
  hist.set_alias("prod");
  auto events = repo_->GetAliasHistory(hist);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->events_size(), 2);
  EXPECT_EQ(events->events(0).to_version(), a);
  EXPECT_EQ(events->events(1).to_version(), 0u);
  EXPECT_EQ(events->events(1).actor(), "ops");
}

struct RetentionCase {
  std::string name;
  v1::Policy policy;
  std::vector<std::pair<int64_t, std::optional<double>>> pushes;  // step, loss
  bool restart_between = false;
  std::vector<uint64_t> survivors;
  uint64_t last;
  uint64_t best;  // 0: none
};

v1::Policy MakePolicy(std::optional<uint32_t> keep_last,
                      std::optional<uint32_t> keep_best,
                      std::optional<uint64_t> every_n, bool monitor = true) {
  v1::Policy p;
  if (monitor) {
    p.set_monitor("val_loss");
    p.set_mode(v1::MIN);
  }
  if (keep_last) p.set_keep_last(*keep_last);
  if (keep_best) p.set_keep_best(*keep_best);
  if (every_n) p.set_keep_every_n_steps(*every_n);
  return p;
}

TEST_F(RepositoryTest, RetentionTable) {
  const std::vector<RetentionCase> cases = {
      {"defaults keep everything",
       MakePolicy(std::nullopt, std::nullopt, std::nullopt),
       {{1, 0.5}, {2, 0.4}, {3, 0.6}},
       false,
       {1, 2, 3},
       3,
       2},
      {"metric worsens for 5 epochs: last and best both survive",
       MakePolicy(1, 1, std::nullopt),
       {{1, 0.3}, {2, 0.4}, {3, 0.5}, {4, 0.6}, {5, 0.7}, {6, 0.8}},
       false,
       {1, 6},
       6,
       1},
      {"keep_last 2 without a metric",
       MakePolicy(2, std::nullopt, std::nullopt, false),
       {{1, std::nullopt}, {2, std::nullopt}, {3, std::nullopt}},
       false,
       {2, 3},
       3,
       0},
      {"keep_best 2 with ties keeps the earlier",
       MakePolicy(std::nullopt, 2, std::nullopt),
       {{1, 0.5}, {2, 0.5}, {3, 0.5}, {4, 0.9}},
       false,
       {1, 2, 4},
       4,
       1},
      {"missing metrics are kept by keep_last only",
       MakePolicy(1, 1, std::nullopt),
       {{1, 0.2}, {2, std::nullopt}, {3, std::nullopt}},
       false,
       {1, 3},
       3,
       1},
      {"keep_every_n_steps",
       MakePolicy(1, std::nullopt, 10, false),
       {{5, std::nullopt},
        {10, std::nullopt},
        {15, std::nullopt},
        {20, std::nullopt},
        {25, std::nullopt}},
       false,
       {2, 4, 5},
       5,
       0},
      {"top-k is remembered across restarts",
       MakePolicy(1, 2, std::nullopt),
       {{1, 0.1}, {2, 0.9}, {3, 0.2}, {4, 0.8}, {5, 0.7}},
       true,
       {1, 3, 5},
       5,
       1},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const RetentionCase& c = cases[i];
    const std::string run = absl::StrCat("ret", i);
    SetPolicy(run, c.policy);
    for (const auto& [step, loss] : c.pushes) {
      std::map<std::string, double> metrics;
      if (loss) metrics["val_loss"] = *loss;
      Push(run, step, metrics, static_cast<int>(step + 100 * i));
      if (c.restart_between) Reopen();
    }
    EXPECT_EQ(Surviving(run), c.survivors) << c.name;
    EXPECT_EQ(*RefTarget(run, "last"), c.last) << c.name;
    auto best = RefTarget(run, "best");
    if (c.best == 0) {
      EXPECT_EQ(best.status().code(), absl::StatusCode::kNotFound) << c.name;
    } else {
      ASSERT_TRUE(best.ok()) << c.name << ": " << best.status();
      EXPECT_EQ(*best, c.best) << c.name;
    }
  }
}

TEST_F(RepositoryTest, GarbageCollectionRacingUploadsNeverLosesABlob) {
  constexpr int kVersions = 40;
  // keep_last=1: older versions are deleted, so their blobs turn to garbage
  // while the next version is leasing or uploading.
  SetPolicy("race", MakePolicy(1, std::nullopt, std::nullopt, false));
  std::atomic<bool> done{false};
  std::thread gc([&] {
    while (!done.load()) {
      auto st = repo_->CollectGarbage();
      ASSERT_TRUE(st.ok()) << st.status();
    }
  });
  for (int i = 0; i < kVersions; ++i) {
    uint64_t v = Begin("race", i);
    // Every other version re-uses a blob that the previous one uploaded,
    // found through FindMissingBlobs (leased, not re-sent).
    std::string bytes(64, static_cast<char>('A' + i / 2));
    Digest d = DigestOf(bytes.data(), bytes.size());
    v1::FindMissingBlobsRequest find;
    find.set_run("race");
    find.set_version(v);
    find.add_digests(std::string(d.AsBytes()));
    auto missing = repo_->FindMissingBlobs(find);
    ASSERT_TRUE(missing.ok());
    if (missing->missing_size() == 1) Upload("race", v, bytes);
    auto info = Commit("race", v, 0, OneTensor(d, 16));
    ASSERT_TRUE(info.ok()) << "version " << v << ": " << info.status();
  }
  done = true;
  gc.join();
  v1::VerifyRequest verify;
  verify.set_run("race");
  auto report = repo_->Verify(verify);
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->errors(), IsEmpty());
  EXPECT_EQ(report->blobs_checked(), 1u);
  EXPECT_THAT(Surviving("race"), ElementsAre(kVersions));
}

TEST_F(RepositoryTest, WatchSeesMovesInOrder) {
  std::optional<v1::VersionInfo> current;
  EXPECT_EQ(repo_
                ->Watch(
                    "r", "last", [](const v1::VersionInfo&) {}, &current)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  uint64_t first = Push("r", 0, {});
  std::vector<uint64_t> seen;
  auto id = repo_->Watch(
      "r", "last",
      [&](const v1::VersionInfo& v) { seen.push_back(v.version()); }, &current);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(current.has_value());
  EXPECT_EQ(current->version(), first);
  uint64_t a = Push("r", 1, {});
  uint64_t b = Push("r", 2, {});
  repo_->Unwatch(*id);
  Push("r", 3, {});
  EXPECT_THAT(seen, ElementsAre(a, b));
}

TEST_F(RepositoryTest, ConcurrentPublishesNotifyWatchersInCommitOrder) {
  Push("c", 0, {});
  absl::Mutex mu;
  std::vector<uint64_t> seen;
  std::optional<v1::VersionInfo> current;
  auto id = repo_->Watch(
      "c", "last",
      [&](const v1::VersionInfo& v) {
        absl::MutexLock lock(&mu);
        seen.push_back(v.version());
      },
      &current);
  ASSERT_TRUE(id.ok()) << id.status();
  constexpr int kThreads = 4, kPerThread = 8;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i)
        Push("c", 1 + t * kPerThread + i, {});
    });
  }
  for (auto& t : threads) t.join();
  repo_->Unwatch(*id);
  std::vector<uint64_t> moves;
  {
    absl::MutexLock lock(&mu);
    moves = seen;
  }
  ASSERT_FALSE(moves.empty());
  // `last` only moves forward, and watchers see its moves in order.
  for (size_t i = 1; i < moves.size(); ++i) {
    EXPECT_LT(moves[i - 1], moves[i]) << "move " << i;
  }
  auto last = RefTarget("c", "last");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(moves.back(), *last);
  EXPECT_EQ(*last, 1u + kThreads * kPerThread);
}

TEST_F(RepositoryTest, LastNeverMovesBackToAVersionThatCompletesLate) {
  uint64_t slow = Begin("late", 1);
  uint64_t fast = Push("late", 2, {});
  Digest d = Upload("late", slow, std::string(64, 'x'));
  ASSERT_TRUE(Commit("late", slow, 0, OneTensor(d, 16), {}).ok());
  auto last = RefTarget("late", "last");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, fast);
  EXPECT_THAT(Surviving("late"), ElementsAre(slow, fast));
}

TEST_F(RepositoryTest, RetentionRunsWhenALateVersionPublishes) {
  v1::SetPolicyRequest policy;
  policy.set_run("lr");
  policy.mutable_policy()->set_keep_last(1);
  ASSERT_TRUE(repo_->SetPolicy(policy, Actor{}).ok());
  uint64_t slow = Begin("lr", 1);
  uint64_t fast = Push("lr", 2, {});
  Digest d = Upload("lr", slow, std::string(64, 's'));
  // The late publish moves no alias, and retention still runs after it.
  ASSERT_TRUE(Commit("lr", slow, 0, OneTensor(d, 16), {}).ok());
  EXPECT_THAT(Surviving("lr"), ElementsAre(fast));
}

TEST_F(RepositoryTest, MetricsComeFromTheLowestRankThatReportsThem) {
  // Shards commit as rank 0 (no acc), rank 2 (acc .5), rank 1 (acc .9).
  uint64_t v = Begin("m", 1, 3);
  Digest d = Upload("m", v, std::string(64, 'm'));
  ASSERT_TRUE(Commit("m", v, 0, OneTensor(d, 16), {{"loss", 1.0}}).ok());
  ASSERT_TRUE(
      Commit("m", v, 2, OneTensor(d, 16), {{"acc", 0.5}, {"loss", 3.0}}).ok());
  auto info = Commit("m", v, 1, OneTensor(d, 16), {{"acc", 0.9}});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::COMMITTED);
  EXPECT_EQ(info->metrics().at("acc"), 0.9);
  EXPECT_EQ(info->metrics().at("loss"), 1.0);
  ASSERT_EQ(info->shards_size(), 3);
  EXPECT_EQ(info->shards(2).metrics().at("acc"), 0.5);
}

TEST_F(RepositoryTest, AbortFreesTheBlobsOfCommittedShards) {
  uint64_t v = Begin("ab", 1, 2);
  const std::string bytes(64, 'a');
  Digest d = Upload("ab", v, bytes);
  ASSERT_TRUE(Commit("ab", v, 0, OneTensor(d, 16), {}).ok());
  v1::AbortVersionRequest abort;
  abort.set_run("ab");
  abort.set_version(v);
  abort.set_reason("rank 1 died");
  ASSERT_TRUE(repo_->AbortVersion(abort).ok());
  auto size = repo_->blobs().Stat(d);
  ASSERT_TRUE(size.ok());
  EXPECT_FALSE(size->has_value()) << "blob of the aborted shard was kept";
  // The other rank is told why, and nothing of the version is visible.
  auto late = Commit("ab", v, 1, OneTensor(d, 16), {});
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(late.status().message()), HasSubstr("rank 1 died"));
  auto up = repo_->StartBlobUpload("ab", v, d, bytes.size(), 0);
  EXPECT_EQ(up.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Surviving("ab"), IsEmpty());
}

TEST_F(RepositoryTest, ResumeContinuesAnInterruptedUpload) {
  uint64_t v = Begin("r", 1);
  std::string bytes(3 << 20, '\0');
  std::mt19937 rng(1);
  for (char& c : bytes) c = static_cast<char>(rng());
  Digest d = DigestOf(bytes.data(), bytes.size());
  {
    auto up = repo_->StartBlobUpload("r", v, d, bytes.size(), 0);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE(
        (*up)->Append(0, absl::string_view(bytes).substr(0, 1 << 20)).ok());
    // Destroyed unfinished: suspended for resume.
  }
  v1::QueryUploadRequest q;
  q.set_run("r");
  q.set_version(v);
  q.set_digest(std::string(d.AsBytes()));
  auto where = repo_->QueryUpload(q);
  ASSERT_TRUE(where.ok());
  EXPECT_EQ(where->durable_offset(), 1u << 20);
  EXPECT_FALSE(where->complete());
  // Resuming at a wrong offset is refused with the right one named.
  auto wrong = repo_->StartBlobUpload("r", v, d, bytes.size(), 5);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  auto up = repo_->StartBlobUpload("r", v, d, bytes.size(), 1 << 20);
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE(
      (*up)->Append(1 << 20, absl::string_view(bytes).substr(1 << 20)).ok());
  ASSERT_TRUE((*up)->Finish().ok());
  where = repo_->QueryUpload(q);
  EXPECT_TRUE(where->complete());
  // Complete only for the version it was uploaded into: QueryUpload does
  // not tell another run's writer that the bytes exist.
  const uint64_t other = Begin("other", 1);
  q.set_run("other");
  q.set_version(other);
  where = repo_->QueryUpload(q);
  ASSERT_TRUE(where.ok());
  EXPECT_FALSE(where->complete());
}

// An interrupted upload belongs to the version that received the bytes:
// another version (another tenant) neither sees its offset nor resumes it.
TEST_F(RepositoryTest, AnInterruptedUploadIsVisibleOnlyToItsVersion) {
  const uint64_t mine = Begin("mine", 1);
  const uint64_t theirs = Begin("theirs", 1);
  std::string bytes(2 << 20, '\0');
  std::mt19937 rng(2);
  for (char& c : bytes) c = static_cast<char>(rng());
  const Digest d = DigestOf(bytes.data(), bytes.size());
  {
    auto up = repo_->StartBlobUpload("mine", mine, d, bytes.size(), 0);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE(
        (*up)->Append(0, absl::string_view(bytes).substr(0, 1 << 20)).ok());
  }
  auto query = [&](const std::string& run, uint64_t version) {
    v1::QueryUploadRequest q;
    q.set_run(run);
    q.set_version(version);
    q.set_digest(std::string(d.AsBytes()));
    auto r = repo_->QueryUpload(q);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->durable_offset() : ~uint64_t{0};
  };
  EXPECT_EQ(query("theirs", theirs), 0u)
      << "another version learns that the bytes are being uploaded";
  auto stolen =
      repo_->StartBlobUpload("theirs", theirs, d, bytes.size(), 1 << 20);
  EXPECT_EQ(stolen.status().code(), absl::StatusCode::kFailedPrecondition)
      << "another version resumed the upload";
  EXPECT_EQ(query("mine", mine), 1u << 20);
  auto up = repo_->StartBlobUpload("mine", mine, d, bytes.size(), 1 << 20);
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE(
      (*up)->Append(1 << 20, absl::string_view(bytes).substr(1 << 20)).ok());
  ASSERT_TRUE((*up)->Finish().ok());
}

TEST_F(RepositoryTest, DigestMismatchIsRejected) {
  uint64_t v = Begin("r", 1);
  std::string bytes(100, 'z');
  Digest wrong = DigestOf("other", 5);
  auto up = repo_->StartBlobUpload("r", v, wrong, bytes.size(), 0);
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append(0, bytes).ok());
  auto st = (*up)->Finish();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(repo_->blobs().Stat(wrong)->has_value());
}

TEST_F(RepositoryTest, SecondOpenOfTheSameDataDirFailsFast) {
  auto second = Repository::OpenDataDir(dir_, RepositoryOptions{});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("another ckptd"));
}

}  // namespace
}  // namespace ckptd::core
