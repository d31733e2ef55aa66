// Crash safety of a real ckptd at named kill points (server/common/
// kill_point.h) instead of at instants picked by sleeping: for each (point,
// hit) of kKillCases, ckptd runs with CKPTD_KILL_AT=<point>:<hit> while two
// ranks push sharded versions, so it SIGKILLs itself exactly there; the test
// restarts it without the variable over the same data dir and port, lets the
// clients retry and resume, and checks the invariants of DESIGN.md:
//  - every acknowledged version is listed, COMMITTED, and pulls back
//    bit-identical (as does every other listed version), and the server's
//    Verify finds no damage;
//  - `last` points at the newest committed version;
//  - nothing partial is visible (every listed version has all its shards).
//
// Built twice: crash_test over the file store, and s3_crash_test (tests/s3,
// with CKPTD_CRASH_TEST_ON_S3) over the S3 store of the test cluster, with
// parts small enough that each large blob is a multipart upload, so kills
// land between parts and leave uploads for the restart to abort.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "ckptd/client.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/s3_env.h"

namespace ckptd {
namespace {

constexpr char kRun[] = "crash";
constexpr uint32_t kWorldSize = 2;
constexpr int kTensorsPerShard = 6;
// Small pushes keep the test light on a shared machine, with the shape of
// a real one: 64 KiB chunks (the client's minimum) and a 128 KiB pack
// threshold make each large tensor (192 KiB + 17) its own blob of 4 chunks,
// so chunk kill points land inside a blob. Per shard: 2 large blobs + 1 pack
// = 9 chunks and 3 blobs; per version: 18 chunks, 6 blobs, 2 shard commits.
constexpr uint64_t kChunkBytes = 64 << 10;
constexpr uint64_t kPackThreshold = 128 << 10;
constexpr size_t kLargeTensorBytes = (192 << 10) + 17;
// How long a case may take to reach its kill point, and then to finish.
constexpr double kReachSeconds = 20;
constexpr auto kFinishTimeout = std::chrono::seconds(30);

// One crash: the point and at which of its hits (counted from the server's
// start) the server dies. Add a row when the server gets a new kill point;
// the workload must reach it within kReachSeconds.
struct KillCase {
  const char* point;
  int hit;
  const char* what;
};

const KillCase kKillCases[] = {
    {"upload.chunk_appended", 3, "inside the first blob of the first version"},
    {"upload.chunk_appended", 28,
     "inside an upload of the second version, after one is acknowledged"},
    {"upload.blob_committed", 1,
     "the first blob is durable but not recorded as uploaded"},
    {"upload.blob_committed", 9, "a blob of the second version"},
    {"commit.before_shard", 1, "before the first shard's batch is written"},
    {"commit.after_shard", 2,
     "a non-final shard of the second version is written, not acknowledged"},
    {"commit.before_publish", 1, "before the batch that publishes version 1"},
    {"commit.before_publish", 2, "before version 2 publishes, 1 is acked"},
    {"commit.after_publish", 1,
     "version 1 is published, the reply never leaves"},
    {"commit.after_publish", 3, "version 3 is published, 1 and 2 are acked"},
};

void PrintTo(const KillCase& c, std::ostream* os) {
  *os << c.point << ":" << c.hit;
}

std::string CaseName(const KillCase& c) {
  return absl::StrCat(absl::StrReplaceAll(c.point, {{".", "_"}}), "_", c.hit);
}

// The deterministic content of (step, rank, tensor): re-creatable when
// checking what the server returns. No two tensors are alike (no dedup).
std::string TensorBytes(int64_t step, uint32_t rank, int index) {
  const size_t size = (index % 3 == 0) ? kLargeTensorBytes : 4096 + index;
  std::mt19937_64 rng(step * 1000 + rank * 100 + index);
  std::string bytes(size, '\0');
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(&bytes[i], &v, 8);
  }
  return bytes;
}

PushRequest ShardRequest(int64_t step, uint32_t rank,
                         std::vector<std::string>* storage) {
  PushRequest req;
  req.run = kRun;
  req.step = step;
  req.rank = rank;
  req.world_size = kWorldSize;
  req.metrics["loss"] = 1.0 / (step + 1);
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back(PushEntry{root, {}});
  storage->clear();
  storage->reserve(kTensorsPerShard);
  for (int i = 0; i < kTensorsPerShard; ++i) {
    storage->push_back(TensorBytes(step, rank, i));
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("t", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(storage->back().size());
    TensorData data;
    data.data = storage->back().data();
    data.byte_length = storage->back().size();
    req.entries.push_back(PushEntry{e, data});
  }
  return req;
}

// Pushes shard `rank` of `step` until the server acknowledges it. The
// client's own retries and backoff ride out the restart; a Push that fails
// anyway is started over, up to kMaxPushes times. nullopt when that fails
// too or `abandon` is set.
constexpr int kMaxPushes = 20;
std::optional<VersionInfo> PushUntilAcknowledged(
    Client& client, int64_t step, uint32_t rank,
    const std::atomic<bool>& abandon) {
  std::vector<std::string> storage;
  const PushRequest req = ShardRequest(step, rank, &storage);
  PushOptions options;
  options.streams = 2;
  options.chunk_size = kChunkBytes;
  options.pack_threshold = kPackThreshold;
  absl::Status last_error;
  for (int attempt = 0; attempt < kMaxPushes && !abandon.load(); ++attempt) {
    auto info = client.Push(req, options);
    if (info.ok()) return *info;
    last_error = info.status();
  }
  if (!abandon.load()) {
    ADD_FAILURE() << "step " << step << " rank " << rank << " failed "
                  << kMaxPushes << " pushes; the last: " << last_error;
  }
  return std::nullopt;
}

// Versions the server acknowledged as COMMITTED: version -> step.
class Acks {
 public:
  void Add(const VersionInfo& info) {
    std::lock_guard<std::mutex> lock(mu_);
    acked_[info.version()] = info.step();
  }
  std::map<uint64_t, int64_t> Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_;
  }

 private:
  mutable std::mutex mu_;
  std::map<uint64_t, int64_t> acked_;
};

void ExpectContentIntact(Client& client, const VersionInfo& v) {
  auto manifest =
      client.GetVersion(kRun, absl::StrCat(v.version()), GetVersionOptions{});
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->shards.size(), kWorldSize) << "version " << v.version();
  auto tensors = client.ReadAllTensors(
      *manifest, [](size_t, size_t) { return true; }, PullOptions{});
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->size(), kWorldSize * kTensorsPerShard);
  for (const OwnedTensor& t : *tensors) {
    const auto& shard = manifest->shards[t.shard];
    const auto& entry = shard.entries(t.entry);
    const int index = std::stoi(entry.path(0).key().substr(1));
    EXPECT_TRUE(t.bytes == TensorBytes(v.step(), shard.rank(), index))
        << "version " << v.version() << " step " << v.step() << " rank "
        << shard.rank() << " t" << index << " differs";
  }
}

void CheckInvariants(Client& client, const std::map<uint64_t, int64_t>& acked,
                     int64_t final_step) {
  ListVersionsRequest list;
  list.set_run(kRun);
  auto versions = client.ListVersions(list);
  ASSERT_TRUE(versions.ok()) << versions.status();
  std::map<uint64_t, const VersionInfo*> listed;
  uint64_t newest = 0;
  for (const VersionInfo& v : *versions) {
    EXPECT_EQ(v.state(), v1::COMMITTED) << v.DebugString();
    EXPECT_EQ(v.shards_size(), static_cast<int>(kWorldSize))
        << "partial version visible: " << v.DebugString();
    listed[v.version()] = &v;
    newest = std::max(newest, v.version());
  }
  for (const auto& [version, step] : acked) {
    auto it = listed.find(version);
    if (it == listed.end()) {
      ADD_FAILURE() << "acknowledged version " << version << " (step " << step
                    << ") is not listed";
      continue;
    }
    EXPECT_EQ(it->second->step(), step) << "version " << version;
  }
  const bool final_acked =
      std::any_of(acked.begin(), acked.end(),
                  [&](const auto& a) { return a.second == final_step; });
  EXPECT_TRUE(final_acked) << "step " << final_step
                           << ", pushed after the restart, never committed";
  ASSERT_FALSE(versions->empty());
  auto last = client.GetVersion(kRun, "last", GetVersionOptions{});
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->info.state(), v1::COMMITTED);
  EXPECT_EQ(last->info.version(), newest) << "`last` is not the newest";
  for (const VersionInfo& v : *versions) {
    ExpectContentIntact(client, v);
    if (::testing::Test::HasFatalFailure()) return;
  }
  auto verify = client.Verify(kRun, "");
  ASSERT_TRUE(verify.ok()) << verify.status();
  EXPECT_TRUE(verify->errors().empty()) << verify->errors(0);
}

// The server's blob store: flags, and the environment its keys come from.
struct BlobStoreSetup {
  std::vector<std::string> flags;
  std::vector<std::string> env;
  std::string skip;  // why the store is not there
};

BlobStoreSetup StoreSetup(const std::string& name) {
  BlobStoreSetup setup;
  setup.flags.push_back("--shutdown_grace=1s");
#ifdef CKPTD_CRASH_TEST_ON_S3
  const testing::S3TestEnv s3 = testing::LoadS3TestEnv();
  setup.skip = s3.missing;
  setup.flags.push_back(absl::StrCat("--blob_store=s3://", s3.bucket, "/crash/",
                                     name, "-", ::getpid()));
  setup.flags.push_back(absl::StrCat("--s3_endpoint=", s3.endpoint));
  setup.flags.push_back(absl::StrCat("--s3_region=", s3.region));
  setup.flags.push_back("--s3_part_size=65536");
  setup.env = {absl::StrCat("AWS_ACCESS_KEY_ID=", s3.access_key_id),
               absl::StrCat("AWS_SECRET_ACCESS_KEY=", s3.secret_access_key)};
#endif
  return setup;
}

class CrashTest : public ::testing::TestWithParam<KillCase> {};

TEST_P(CrashTest, KilledAtThePointLosesNothingAcknowledged) {
  const KillCase& c = GetParam();
  SCOPED_TRACE(absl::StrCat(c.point, ":", c.hit, " (", c.what, ")"));
  // A short grace: the test's idle channels would otherwise hold each stop
  // for the default 10 s.
  BlobStoreSetup store = StoreSetup(CaseName(c));
  if (!store.skip.empty()) GTEST_SKIP() << store.skip;
  testing::ServerProcess server(store.flags);
  std::vector<std::string> env = store.env;
  env.push_back(absl::StrCat("CKPTD_KILL_AT=", c.point, ":", c.hit));
  server.set_extra_env(env);
  ASSERT_TRUE(server.Start().ok());
  ClientOptions options;
  options.address = server.address();
  options.rpc_timeout_seconds = 5;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  // Both ranks push steps 0, 1, 2, ... until `final_step`, which is set
  // once the server is back: every rank then pushes at least one step
  // entirely after the restart.
  Acks acks;
  std::atomic<bool> abandon{false};
  std::atomic<int64_t> final_step{std::numeric_limits<int64_t>::max()};
  std::atomic<int64_t> current[kWorldSize] = {0, 0};
  std::mutex mu;
  std::condition_variable rank_finished;
  uint32_t finished = 0;  // guarded by mu
  std::vector<std::thread> ranks;
  for (uint32_t r = 0; r < kWorldSize; ++r) {
    ranks.emplace_back([&, r] {
      for (int64_t s = 0; s <= final_step.load() && !abandon.load(); ++s) {
        current[r] = s;
        auto info = PushUntilAcknowledged(**client, s, r, abandon);
        if (info.has_value() && info->state() == v1::COMMITTED) {
          acks.Add(*info);
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      ++finished;
      rank_finished.notify_all();
    });
  }
  // Waits up to kFinishTimeout for the ranks, then stops and joins them;
  // true if they finished by themselves.
  auto join = [&] {
    bool done;
    {
      std::unique_lock<std::mutex> lock(mu);
      done = rank_finished.wait_for(lock, kFinishTimeout,
                                    [&] { return finished == kWorldSize; });
    }
    abandon = true;
    for (auto& t : ranks) t.join();
    return done;
  };

  const std::optional<int> status = server.WaitForExit(kReachSeconds);
  if (!status.has_value()) {
    abandon = true;
    join();
    FAIL() << "the server did not reach kill point " << c.point << " hit "
           << c.hit << " within " << kReachSeconds << " s; end of its log:\n"
           << server.LogTail();
  }
  ASSERT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
      << "the server did not die by SIGKILL at the kill point (wait status "
      << *status << "); end of its log:\n"
      << server.LogTail();

  env.back() = "CKPTD_KILL_AT";  // the restart runs normally
  server.set_extra_env(env);
  const absl::Status restarted = server.Start();
  if (!restarted.ok()) {
    abandon = true;
    join();
    FAIL() << "restart: " << restarted;
  }
  final_step = std::max(current[0].load(), current[1].load()) + 1;
  ASSERT_TRUE(join()) << "the ranks did not finish within "
                      << kFinishTimeout.count()
                      << " s of the restart; end of the log:\n"
                      << server.LogTail();
  CheckInvariants(**client, acks.Get(), final_step.load());
  client->reset();
  EXPECT_EQ(server.Stop(), 0) << server.LogTail();
}

INSTANTIATE_TEST_SUITE_P(KillPoints, CrashTest, ::testing::ValuesIn(kKillCases),
                         [](const ::testing::TestParamInfo<KillCase>& info) {
                           return CaseName(info.param);
                         });

}  // namespace
}  // namespace ckptd
