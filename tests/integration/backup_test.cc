// Online backup and restore against real ckptd processes: a backup taken
// while pushes, retention, deletions and GC go on is restored by starting a
// NEW ckptd on the backup dir, and every version the backup holds pulls
// back bit-identical; pending versions are left out; bad target dirs are
// refused with errors that name them; a cancelled backup removes itself.
// (Who may call Backup is in auth_test's matrix.)
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

namespace fs = std::filesystem;
using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ReadFile;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

// Tensor name -> bytes.
using State = std::map<std::string, std::string>;

// A state: one blob of its own (above the 1 MiB packing threshold), small
// packed tensors, and a tensor every state shares (deduplicated).
State MakeState(uint64_t seed, size_t big_bytes = 3 << 20) {
  State s;
  s["big"] = RandomBytes(big_bytes, seed);
  for (int i = 0; i < 3; ++i) {
    s[absl::StrCat("small", i)] = RandomBytes(4096 + i, seed * 131 + i);
  }
  s["shared"] = RandomBytes(2 << 20, 4242);
  return s;
}

absl::StatusOr<VersionInfo> PushState(Client& client, const std::string& run,
                                      int64_t step, const State& state,
                                      uint32_t world_size = 1,
                                      uint32_t rank = 0) {
  PushRequest req;
  req.run = run;
  req.step = step;
  req.rank = rank;
  req.world_size = world_size;
  req.metrics["loss"] = 1.0 / static_cast<double>(step + 1);
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  for (const auto& [name, bytes] : state) {
    ManifestEntry e;
    e.add_path()->set_key(name);
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes.size()));
    TensorData t;
    t.data = bytes.data();
    t.byte_length = bytes.size();
    req.entries.push_back({e, t});
  }
  return client.Push(req, PushOptions());
}

absl::StatusOr<State> PullState(Client& client, const std::string& run,
                                const std::string& ref) {
  absl::StatusOr<VersionManifest> v =
      client.GetVersion(run, ref, GetVersionOptions());
  if (!v.ok()) return v.status();
  absl::StatusOr<std::vector<OwnedTensor>> tensors =
      client.ReadAllTensors(*v, nullptr, PullOptions());
  if (!tensors.ok()) return tensors.status();
  State out;
  for (OwnedTensor& t : *tensors) {
    out[DottedKeyPath(v->shards[t.shard].entries(t.entry).path())] =
        std::move(t.bytes);
  }
  return out;
}

std::unique_ptr<Client> Connect(const ServerProcess& server) {
  ClientOptions o;
  o.address = server.address();
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

void Touch(const std::string& path) { std::ofstream(path) << "\n"; }

bool SameFilesystem(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 &&
         sa.st_dev == sb.st_dev;
}

// A ckptd over an existing data dir (a restored backup).
std::unique_ptr<ServerProcess> StartOn(const std::string& data_dir) {
  // The later --data_dir wins over the one ServerProcess gives.
  auto server = std::make_unique<ServerProcess>(
      std::vector<std::string>{"--data_dir=" + data_dir});
  absl::Status st = server->Start();
  EXPECT_TRUE(st.ok()) << st;
  return st.ok() ? std::move(server) : nullptr;
}

// Waits (without a time limit: ctest's timeout is the guard) until `path`
// exists or `done` is set.
void AwaitFileOr(const std::string& path, const std::atomic<bool>& done) {
  while (!fs::exists(path) && !done.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

class BackupTest : public ::testing::Test {
 protected:
  void SetUp() override { scratch_ = ServerProcess::MakeTempDir("ckptd-bk"); }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(scratch_, ec);
    for (const std::string& d : cleanup_) fs::remove_all(d, ec);
  }
  std::string scratch_;
  std::vector<std::string> cleanup_;
};

// The race made exact: the server pauses after the snapshot (blobs pinned,
// not yet linked) while retention drops a version of the snapshot, an admin
// deletes another, GC runs and new versions commit. The backup still holds
// exactly the snapshot, bit-identical, and nothing after it.
TEST_F(BackupTest, SnapshotSurvivesRetentionDeleteAndGcDuringTheCopy) {
  const std::string pause = scratch_ + "/pause";
  ServerProcess live;
  live.set_extra_env({"CKPTD_PAUSE_AT=backup.before_copy=" + pause});
  ASSERT_TRUE(live.Start().ok()) << live.LogTail();
  auto client = Connect(live);
  ASSERT_NE(client, nullptr);

  std::map<std::pair<std::string, uint64_t>, State> pushed;
  for (int64_t step = 1; step <= 3; ++step) {
    State s = MakeState(100 + step);
    auto v = PushState(*client, "keep", step, s);
    ASSERT_TRUE(v.ok()) << v.status();
    pushed[{"keep", v->version()}] = std::move(s);
  }
  Policy keep_one;
  keep_one.set_keep_last(1);
  ASSERT_TRUE(client->SetPolicy("rot", keep_one).ok());
  for (int64_t step = 1; step <= 2; ++step) {
    State s = MakeState(200 + step);
    auto v = PushState(*client, "rot", step, s);
    ASSERT_TRUE(v.ok()) << v.status();
    pushed[{"rot", v->version()}] = std::move(s);
  }
  // A sharded save with one of two ranks in: pending at the snapshot.
  auto pending = PushState(*client, "keep", 100, MakeState(300), 2, 0);
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_EQ(pending->state(), v1::PENDING);

  const std::string dir = scratch_ + "/backup";
  std::atomic<bool> done{false};
  absl::StatusOr<v1::BackupResponse> backup;
  std::thread backup_thread([&] {
    backup = client->Backup(dir);
    done = true;
  });
  AwaitFileOr(pause + ".reached", done);
  ASSERT_FALSE(done.load()) << backup.status() << live.LogTail();

  // While the backup's blobs are pinned but not yet linked:
  auto rot3 = PushState(*client, "rot", 3, MakeState(203));  // drops rot@2
  EXPECT_TRUE(rot3.ok()) << rot3.status();
  EXPECT_TRUE(client->DeleteVersion("keep", "1").ok());
  auto gc = client->CollectGarbage();
  EXPECT_TRUE(gc.ok()) << gc.status();
  auto keep_after = PushState(*client, "keep", 4, MakeState(104));
  EXPECT_TRUE(keep_after.ok()) << keep_after.status();
  EXPECT_EQ(PullState(*client, "rot", "2").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(PullState(*client, "keep", "1").status().code(),
            absl::StatusCode::kNotFound);

  Touch(pause + ".resume");
  backup_thread.join();
  ASSERT_TRUE(backup.ok()) << backup.status() << live.LogTail();
  EXPECT_EQ(backup->dir(), fs::weakly_canonical(dir).string());
  EXPECT_EQ(backup->runs(), 2u);
  EXPECT_EQ(backup->versions(), 4u);  // keep@1-3, rot@2
  EXPECT_EQ(backup->pending_left_out(), 1u);
  EXPECT_GT(backup->blobs(), 0u);
  EXPECT_EQ(backup->blobs(), backup->blobs_linked() + backup->blobs_copied());
  // One filesystem: every blob is a hard link, no bytes copied.
  EXPECT_EQ(backup->blobs_linked(), backup->blobs());
  EXPECT_EQ(backup->bytes_copied(), 0u);
  EXPECT_THAT(ReadFile(dir + "/BACKUP"), HasSubstr("versions: 4\n"));
  std::cout << "backup: " << backup->ShortDebugString() << "\n";

  // The live server recorded who made it.
  auto audit = client->GetAuditLog("", 0);
  ASSERT_TRUE(audit.ok()) << audit.status();
  bool audited = false;
  for (const AuditEvent& e : *audit) {
    if (e.action() == "backup") {
      audited = true;
      EXPECT_EQ(e.identity(), "local");
      EXPECT_THAT(e.detail(), HasSubstr(backup->dir()));
    }
  }
  EXPECT_TRUE(audited);
  EXPECT_EQ(live.Stop(), 0);

  // Restore: a new ckptd on the backup dir.
  auto restored = StartOn(dir);
  ASSERT_NE(restored, nullptr);
  auto rclient = Connect(*restored);
  ASSERT_NE(rclient, nullptr);
  for (const auto& [key, state] : pushed) {
    const std::string ref = absl::StrCat(key.second);
    auto got = PullState(*rclient, key.first, ref);
    if (key.first == "rot" && key.second == 1) {
      // Dropped by retention before the backup began.
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
      continue;
    }
    ASSERT_TRUE(got.ok()) << key.first << "@" << ref << ": " << got.status()
                          << restored->LogTail();
    EXPECT_TRUE(*got == state) << key.first << "@" << ref << " differs";
  }
  // Nothing after the snapshot.
  EXPECT_EQ(PullState(*rclient, "rot", "3").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(PullState(*rclient, "keep", absl::StrCat(keep_after->version()))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  auto keep_last = rclient->GetVersion("keep", "last", GetVersionOptions());
  ASSERT_TRUE(keep_last.ok()) << keep_last.status();
  EXPECT_EQ(keep_last->info.version(), 3u);
  auto rot_last = rclient->GetVersion("rot", "last", GetVersionOptions());
  ASSERT_TRUE(rot_last.ok()) << rot_last.status();
  EXPECT_EQ(rot_last->info.version(), 2u);
  // The pending version is aborted in the backup; its step starts afresh.
  ListVersionsRequest list;
  list.set_run("keep");
  list.set_include_aborted(true);
  auto versions = rclient->ListVersions(list);
  ASSERT_TRUE(versions.ok()) << versions.status();
  bool saw_aborted = false;
  for (const VersionInfo& v : *versions) {
    if (v.version() != pending->version()) continue;
    saw_aborted = true;
    EXPECT_EQ(v.state(), v1::ABORTED);
    EXPECT_THAT(v.abort_reason(), HasSubstr("backup"));
  }
  EXPECT_TRUE(saw_aborted);
  auto again = PushState(*rclient, "keep", 100, MakeState(301));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->state(), v1::COMMITTED);
  EXPECT_GT(again->version(), pending->version());
  for (const std::string run : {"keep", "rot"}) {
    auto verified = rclient->Verify(run, "");
    ASSERT_TRUE(verified.ok()) << verified.status();
    EXPECT_TRUE(verified->errors().empty()) << verified->ShortDebugString();
  }
}

// Pushes keep going from another thread for the whole backup, also while
// it holds GC before its snapshot (the server pauses there until four more
// pushes, with retention dropping versions, are acknowledged). Every version
// acknowledged before the snapshot is restored bit-identical; every version
// the restored server has is one that was pushed, intact. Where /dev/shm is
// another filesystem the backup goes there, so blobs are copied (and
// verified) instead of linked.
TEST_F(BackupTest, BackupUnderContinuousPushesRestoresEveryAckedVersion) {
  const std::string pause = scratch_ + "/pause";
  ServerProcess live;
  live.set_extra_env({"CKPTD_PAUSE_AT=backup.before_snapshot=" + pause});
  ASSERT_TRUE(live.Start().ok()) << live.LogTail();
  auto client = Connect(live);
  ASSERT_NE(client, nullptr);
  Policy keep_two;
  keep_two.set_keep_last(2);
  ASSERT_TRUE(client->SetPolicy("churn", keep_two).ok());

  absl::Mutex mu;
  std::map<std::pair<std::string, uint64_t>, State> pushed;  // acked
  auto push = [&](Client& c, const std::string& run, int64_t step) {
    State s =
        MakeState(static_cast<uint64_t>(step) * 2 + (run == "steady" ? 0 : 1),
                  (1 << 20) + 4096 * static_cast<size_t>(step));
    auto v = PushState(c, run, step, s);
    if (!v.ok()) return v.status();
    absl::MutexLock lock(&mu);
    pushed[{run, v->version()}] = std::move(s);
    return absl::OkStatus();
  };
  for (int64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(push(*client, "steady", step).ok());
    ASSERT_TRUE(push(*client, "churn", step).ok());
  }

  std::atomic<bool> stop{false};
  std::atomic<int> pushes_in_thread{0};
  absl::Status pusher_status;
  std::thread pusher([&] {
    auto c = Connect(live);
    for (int64_t step = 4; !stop.load(); ++step) {
      for (const char* run : {"steady", "churn"}) {
        absl::Status st = push(*c, run, step);
        if (!st.ok()) {
          pusher_status = st;
          return;
        }
        ++pushes_in_thread;
      }
    }
  });
  while (pushes_in_thread.load() == 0 && pusher_status.ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::string parent = scratch_;
  if (fs::is_directory("/dev/shm") && !SameFilesystem("/dev/shm", scratch_)) {
    parent = ServerProcess::MakeTempDir("/dev/shm/ckptd-bk");
    cleanup_.push_back(parent);
  }
  const std::string dir = parent + "/backup";
  const int pushes_at_start = pushes_in_thread.load();
  std::atomic<bool> done{false};
  absl::StatusOr<v1::BackupResponse> backup;
  std::thread backup_thread([&] {
    backup = client->Backup(dir);
    done = true;
  });
  AwaitFileOr(pause + ".reached", done);
  EXPECT_FALSE(done.load()) << backup.status();
  // Pushes (and retention) go on while the backup holds GC.
  const int pushes_at_pause = pushes_in_thread.load();
  while (pushes_in_thread.load() < pushes_at_pause + 4 && pusher_status.ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Acknowledged now: committed before the snapshot, which comes after.
  std::set<std::pair<std::string, uint64_t>> acked_before;
  {
    absl::MutexLock lock(&mu);
    for (const auto& [key, state] : pushed) acked_before.insert(key);
  }
  Touch(pause + ".resume");
  backup_thread.join();
  const int pushes_during = pushes_in_thread.load() - pushes_at_start;
  stop = true;
  pusher.join();
  ASSERT_TRUE(pusher_status.ok()) << pusher_status;
  ASSERT_TRUE(backup.ok()) << backup.status() << live.LogTail();
  std::cout << "backup: " << backup->ShortDebugString() << "; " << pushes_during
            << " pushes acknowledged while it ran\n";
  EXPECT_GE(pushes_during, 4);
  EXPECT_EQ(backup->blobs(), backup->blobs_linked() + backup->blobs_copied());
  if (parent != scratch_) {
    EXPECT_EQ(backup->blobs_copied(), backup->blobs());
    EXPECT_EQ(backup->bytes_copied(), backup->bytes());
  } else {
    EXPECT_EQ(backup->blobs_linked(), backup->blobs());
  }
  EXPECT_EQ(live.Stop(), 0);

  auto restored = StartOn(dir);
  ASSERT_NE(restored, nullptr);
  auto rclient = Connect(*restored);
  ASSERT_NE(rclient, nullptr);
  // Every acknowledged version of the run without retention.
  for (const auto& [run, version] : acked_before) {
    if (run != "steady") continue;
    auto got = PullState(*rclient, run, absl::StrCat(version));
    ASSERT_TRUE(got.ok()) << run << "@" << version << ": " << got.status();
    EXPECT_TRUE(*got == pushed.at({run, version}))
        << run << "@" << version << " differs";
  }
  // Whatever the restored server lists is a pushed version, intact.
  uint64_t restored_versions = 0;
  for (const std::string run : {"steady", "churn"}) {
    ListVersionsRequest list;
    list.set_run(run);
    auto versions = rclient->ListVersions(list);
    ASSERT_TRUE(versions.ok()) << versions.status();
    for (const VersionInfo& v : *versions) {
      ++restored_versions;
      ASSERT_EQ(v.state(), v1::COMMITTED);
      auto it = pushed.find({run, v.version()});
      ASSERT_NE(it, pushed.end()) << run << "@" << v.version();
      auto got = PullState(*rclient, run, absl::StrCat(v.version()));
      ASSERT_TRUE(got.ok())
          << run << "@" << v.version() << ": " << got.status();
      EXPECT_TRUE(*got == it->second) << run << "@" << v.version();
    }
    auto verified = rclient->Verify(run, "");
    ASSERT_TRUE(verified.ok()) << verified.status();
    EXPECT_TRUE(verified->errors().empty()) << verified->ShortDebugString();
  }
  EXPECT_EQ(restored_versions, backup->versions());
}

// Every bad target is refused before anything is written, with an error
// that names the path and says what to give instead.
TEST_F(BackupTest, RefusesBadTargetDirs) {
  ServerProcess live;
  ASSERT_TRUE(live.Start().ok()) << live.LogTail();
  auto client = Connect(live);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(PushState(*client, "r", 1, MakeState(1, 4096)).ok());

  const std::string full = scratch_ + "/full";
  fs::create_directory(full);
  Touch(full + "/keep.txt");
  const std::string file = scratch_ + "/a-file";
  Touch(file);
  struct Case {
    std::string name;
    std::string dir;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"empty", "", absl::StatusCode::kInvalidArgument, "absolute path"},
      {"relative", "backups/today", absl::StatusCode::kInvalidArgument,
       "'backups/today' is a relative path"},
      {"dot-dot", scratch_ + "/x/../y", absl::StatusCode::kInvalidArgument,
       "'..' component"},
      {"root", "/", absl::StatusCode::kInvalidArgument, "root directory"},
      {"control character", scratch_ + "/a\nb",
       absl::StatusCode::kInvalidArgument, "control character 0x0a"},
      {"too long", "/" + std::string(5000, 'a'),
       absl::StatusCode::kInvalidArgument, "the limit is 4095"},
      {"not empty", full, absl::StatusCode::kFailedPrecondition,
       "is not empty (it holds 'keep.txt')"},
      {"a file", file, absl::StatusCode::kFailedPrecondition,
       "exists and is not a directory"},
      {"no parent", scratch_ + "/no/such/parent",
       absl::StatusCode::kFailedPrecondition,
       "parent directory " + scratch_ + "/no/such of backup dir"},
      {"inside the data dir", live.data_dir() + "/backup",
       absl::StatusCode::kInvalidArgument, "is inside the data dir"},
  };
  for (const Case& c : cases) {
    auto r = client->Backup(c.dir);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.says)) << c.name;
  }
  // Nothing was written anywhere.
  EXPECT_TRUE(fs::exists(full + "/keep.txt"));
  EXPECT_EQ(std::distance(fs::directory_iterator(full), {}), 1);
  EXPECT_FALSE(fs::exists(scratch_ + "/no"));
  EXPECT_FALSE(fs::exists(live.data_dir() + "/backup"));

  // An existing empty directory is fine, once: then it is not empty.
  const std::string empty = scratch_ + "/empty";
  fs::create_directory(empty);
  auto first = client->Backup(empty + "/");  // a trailing '/' names it too
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->versions(), 1u);
  EXPECT_EQ(first->dir(), empty);
  auto second = client->Backup(empty);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("not empty"));
  // The client refuses a timeout that is no duration at all.
  EXPECT_EQ(
      client->Backup(scratch_ + "/t", absl::ZeroDuration()).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// A backup whose caller is gone stops and removes what it wrote: the client
// gives up (deadline) while the server is paused after the snapshot; the
// server then notices, deletes the directory it created, and shuts down
// cleanly.
TEST_F(BackupTest, ACancelledBackupRemovesItself) {
  const std::string pause = scratch_ + "/pause";
  ServerProcess live;
  live.set_extra_env({"CKPTD_PAUSE_AT=backup.before_copy=" + pause});
  ASSERT_TRUE(live.Start().ok()) << live.LogTail();
  auto client = Connect(live);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(PushState(*client, "r", 1, MakeState(7)).ok());
  const std::string dir = scratch_ + "/backup";
  std::atomic<bool> done{false};
  absl::StatusOr<v1::BackupResponse> backup;
  std::thread backup_thread([&] {
    backup = client->Backup(dir, absl::Seconds(5));
    done = true;
  });
  // The call ends at its deadline while the server waits at the pause (it
  // checks for cancellation only from the copy on).
  backup_thread.join();
  EXPECT_EQ(backup.status().code(), absl::StatusCode::kDeadlineExceeded)
      << backup.status();
  const std::atomic<bool> never{false};
  AwaitFileOr(pause + ".reached", never);
  EXPECT_TRUE(fs::exists(dir + "/meta"));  // the snapshot was taken
  Touch(pause + ".resume");
  client.reset();  // (an open channel would hold the shutdown for its grace)
  // Shutdown waits for the backup to stop and clean up.
  EXPECT_EQ(live.Stop(), 0);
  EXPECT_FALSE(fs::exists(dir)) << live.LogTail();
  EXPECT_THAT(live.LogTail(), HasSubstr("cancelled"));
}

}  // namespace
}  // namespace ckptd
