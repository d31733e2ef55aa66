// Crash and I/O-fault tests of every step of a commit, at the Repository
// level (no network), over a real RocksDB in a temp dir.
//
// The workload is a push as the client does it: BeginVersion, then per rank
// FindMissingBlobs, StartBlobUpload/Append/Finish for each missing blob, and
// CommitShard — for a 1-rank and a 2-rank version, after two committed
// versions exist (so `last` and `best` differ). A dry run counts the N
// blob-store operations the push makes (FaultInjectionBlobStore); then for
// every k in 1..N a fresh world runs the push with operation k failing, in
// one of four ways (FaultMode):
//   - kErrorRetry:    an I/O error; the same Repository stays up and the
//                     client retries (resuming at QueryUpload's offset).
//   - kErrorPersists: every operation from k on fails (a dead disk), cleanup
//                     included, until healed; then the client retries.
//   - kErrorReopen:   an I/O error, then the process restarts cleanly.
//   - kCrash:         the process dies at operation k: the memory store
//                     loses what was not synced (SimulateCrash) and the data
//                     dir is copied as it is at that instant (what SIGKILL
//                     leaves: RocksDB's WAL written so far, blob tmp files);
//                     the restart opens the copy.
// After the fault (and the restart) the DESIGN.md invariants are checked:
// only COMMITTED, complete versions are listed; every version acknowledged
// before the fault reads back bit-identical; `last`/`best` point at the right
// committed versions; a pending version stays pending; temp files are gone;
// and a retry of the push succeeds and publishes.
//
// The same is done for RocksDB writes (a rocksdb::EnvWrapper failing the k-th
// WritableFile Append/Sync, through RepositoryOptions::metadata_env), and
// for the blob-store operations of recovery itself.
//
// The worlds live on tmpfs when there is one (see MakeTempDir).
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/env.h"
#include "server/core/repository.h"
#include "server/storage/blob_store.h"
#include "server/storage/metadata_store.h"
#include "server/storage/testing/fault_injection_blob_store.h"
#include "server/storage/testing/memory_blob_store.h"
#include "tests/support/assert_ok.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

namespace fs = std::filesystem;
using storage::testing::FaultInjectionBlobStore;
using storage::testing::MemoryBlobStore;
using ::testing::HasSubstr;

constexpr char kRun[] = "faulty-run";
constexpr char kMetric[] = "loss";
// Bytes per BlobUpload::Append: every blob of the workload takes 1-3.
constexpr size_t kAppendSize = 1024;
constexpr char kInjected[] = "injected fault";

// ---------------------------------------------------------------------------
// The workload

struct TensorSpec {
  std::string key;
  std::string bytes;
};

struct ShardSpec {
  std::vector<TensorSpec> tensors;
  std::map<std::string, double> metrics;
};

// One version; world_size is shards.size(), shard i is rank i.
struct VersionSpec {
  int64_t step = 0;
  std::vector<ShardSpec> shards;
};

// Deterministic pseudo-random bytes.
std::string Bytes(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  for (char& c : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

Digest DigestOfBytes(const std::string& bytes) {
  return DigestOf(bytes.data(), bytes.size());
}

// Identical in every version: deduplicated, never re-uploaded.
const std::string& SharedBytes() {
  static const std::string* bytes = new std::string(Bytes(1500, 99));
  return *bytes;
}

VersionSpec Base1() {
  return {
      1,
      {{{{"w", Bytes(2500, 1)}, {"shared", SharedBytes()}}, {{kMetric, 0.3}}}}};
}
VersionSpec Base2() {
  return {
      2,
      {{{{"w", Bytes(2500, 2)}, {"shared", SharedBytes()}}, {{kMetric, 0.6}}}}};
}
// A version deleted before the fault: its blobs are garbage for recovery.
VersionSpec Doomed() {
  return {0,
          {{{{"a", Bytes(700, 20)}, {"b", Bytes(900, 21)}}, {{kMetric, 0.9}}}}};
}

// The version whose push is faulted. It improves `best`.
VersionSpec Target(int world_size) {
  if (world_size == 1) {
    return {3,
            {{{{"w", Bytes(2500, 3)},
               {"b", Bytes(1200, 4)},
               {"shared", SharedBytes()},
               {"empty", ""}},
              {{kMetric, 0.1}}}}};
  }
  // "common" is the same on both ranks: rank 1 finds it uploaded by rank 0.
  return {3,
          {{{{"w", Bytes(2500, 3)},
             {"common", Bytes(800, 7)},
             {"shared", SharedBytes()}},
            {{kMetric, 0.1}}},
           {{{"w", Bytes(2100, 5)},
             {"b", Bytes(1200, 4)},
             {"common", Bytes(800, 7)}},
            {{kMetric, 0.2}, {"rank1_only", 1.0}}}}};
}

v1::ShardManifest ManifestOf(const ShardSpec& shard) {
  v1::ShardManifest m;
  m.add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
  for (const TensorSpec& t : shard.tensors) {
    v1::ManifestEntry* e = m.add_entries();
    e->add_path()->set_key(t.key);
    v1::TensorInfo* info = e->mutable_tensor();
    info->set_dtype(v1::UINT8);
    info->add_shape(static_cast<int64_t>(t.bytes.size()));
    info->set_byte_length(t.bytes.size());
    info->set_blob_digest(std::string(DigestOfBytes(t.bytes).AsBytes()));
  }
  return m;
}

std::set<Digest> DigestsOf(const VersionSpec& spec) {
  std::set<Digest> out;
  for (const ShardSpec& s : spec.shards) {
    for (const TensorSpec& t : s.tensors) out.insert(DigestOfBytes(t.bytes));
  }
  return out;
}

// The version's value of the monitored metric: from the lowest rank that
// reports it.
std::optional<double> MonitoredMetric(const VersionSpec& spec) {
  for (const ShardSpec& s : spec.shards) {
    auto it = s.metrics.find(kMetric);
    if (it != s.metrics.end()) return it->second;
  }
  return std::nullopt;
}

// What the client was told.
struct PushLog {
  std::optional<uint64_t> version;  // BeginVersion answered
  std::set<uint32_t> ranks_acked;   // CommitShard answered OK
  bool published = false;           // a CommitShard answered COMMITTED
  int resumed_uploads = 0;          // continued at a QueryUpload offset > 0
};

struct PushHooks {
  // Runs at the instant of the first error, while the failed upload (if
  // any) is still alive: a crash leaves no time to clean up.
  std::function<void()> at_fault;
  // Asks QueryUpload where each missing blob stands and continues there, as
  // the client does when it retries.
  bool resume = false;
};

// Pushes every shard of `spec` in rank order, as the client does, and stops
// at the first error, which it returns.
absl::Status Push(Repository& repo, const VersionSpec& spec, PushLog* log,
                  const PushHooks& hooks = {}) {
  auto fail = [&](absl::Status st) {
    if (hooks.at_fault) hooks.at_fault();
    return st;
  };
  v1::BeginVersionRequest begin;
  begin.set_run(kRun);
  begin.set_step(spec.step);
  begin.set_world_size(static_cast<uint32_t>(spec.shards.size()));
  begin.mutable_env()->set_torch_version("2.1.0");
  auto begun = repo.BeginVersion(begin);
  if (!begun.ok()) return fail(begun.status());
  const uint64_t version = begun->version();
  log->version = version;
  for (uint32_t rank = 0; rank < spec.shards.size(); ++rank) {
    const ShardSpec& shard = spec.shards[rank];
    v1::FindMissingBlobsRequest find;
    find.set_run(kRun);
    find.set_version(version);
    std::map<Digest, const std::string*> unique;
    for (const TensorSpec& t : shard.tensors) {
      const Digest d = DigestOfBytes(t.bytes);
      if (unique.emplace(d, &t.bytes).second) {
        find.add_digests(std::string(d.AsBytes()));
      }
    }
    auto missing = repo.FindMissingBlobs(find);
    if (!missing.ok()) return fail(missing.status());
    for (const std::string& raw : missing->missing()) {
      auto d = DigestFromBytes(raw);
      if (!d.ok()) return fail(d.status());
      const std::string& bytes = *unique.at(*d);
      uint64_t offset = 0;
      if (hooks.resume) {
        v1::QueryUploadRequest query;
        query.set_run(kRun);
        query.set_version(version);
        query.set_digest(raw);
        auto where = repo.QueryUpload(query);
        if (!where.ok()) return fail(where.status());
        if (where->complete()) continue;
        offset = where->durable_offset();
        if (offset > 0) ++log->resumed_uploads;
      }
      auto upload =
          repo.StartBlobUpload(kRun, version, *d, bytes.size(), offset);
      if (!upload.ok()) return fail(upload.status());
      for (size_t off = offset; off < bytes.size(); off += kAppendSize) {
        absl::Status st = (*upload)->Append(
            off, absl::string_view(bytes).substr(off, kAppendSize));
        if (!st.ok()) return fail(st);
      }
      if (absl::Status st = (*upload)->Finish(); !st.ok()) return fail(st);
    }
    v1::CommitShardRequest commit;
    commit.set_run(kRun);
    commit.set_version(version);
    commit.set_rank(rank);
    *commit.mutable_manifest() = ManifestOf(shard);
    for (const auto& [k, v] : shard.metrics) (*commit.mutable_metrics())[k] = v;
    auto info = repo.CommitShard(commit, Actor{"commit_fault_test"});
    if (!info.ok()) return fail(info.status());
    log->ranks_acked.insert(rank);
    if (info->state() == v1::COMMITTED) log->published = true;
  }
  return absl::OkStatus();
}

// Versions by number.
using Model = std::map<uint64_t, VersionSpec>;

// ---------------------------------------------------------------------------
// The RocksDB Env of every test: once armed, the k-th WritableFile
// Append/Sync fails with an IOError and writes nothing (an Append) or syncs
// nothing (a Sync). It also turns off file preallocation, which on tmpfs
// costs more than the rest of a test's I/O.

class FaultyRocksEnv final : public rocksdb::EnvWrapper {
 public:
  FaultyRocksEnv() : EnvWrapper(rocksdb::Env::Default()) {}
  const char* Name() const override { return "FaultyRocksEnv"; }

  // Starts counting; operation n from now fails (0: none).
  void Arm(uint64_t n) {
    absl::MutexLock lock(&mu_);
    armed_ = true;
    count_ = 0;
    fail_at_ = n;
    injected_ = 0;
  }
  void Disarm() {
    absl::MutexLock lock(&mu_);
    armed_ = false;
    fail_at_ = 0;
  }
  uint64_t count() const {
    absl::MutexLock lock(&mu_);
    return count_;
  }
  uint64_t injected() const {
    absl::MutexLock lock(&mu_);
    return injected_;
  }

  rocksdb::Status Op(const char* what) {
    absl::MutexLock lock(&mu_);
    if (!armed_) return rocksdb::Status::OK();
    if (++count_ == fail_at_) {
      ++injected_;
      return rocksdb::Status::IOError(
          absl::StrCat(kInjected, ": ", what, " #", count_));
    }
    return rocksdb::Status::OK();
  }

  rocksdb::Status NewWritableFile(const std::string& f,
                                  std::unique_ptr<rocksdb::WritableFile>* r,
                                  const rocksdb::EnvOptions& o) override {
    rocksdb::Status s = target()->NewWritableFile(f, r, o);
    if (s.ok()) *r = std::make_unique<File>(this, std::move(*r));
    return s;
  }
  rocksdb::Status ReopenWritableFile(const std::string& f,
                                     std::unique_ptr<rocksdb::WritableFile>* r,
                                     const rocksdb::EnvOptions& o) override {
    rocksdb::Status s = target()->ReopenWritableFile(f, r, o);
    if (s.ok()) *r = std::make_unique<File>(this, std::move(*r));
    return s;
  }
  rocksdb::Status ReuseWritableFile(const std::string& f,
                                    const std::string& old,
                                    std::unique_ptr<rocksdb::WritableFile>* r,
                                    const rocksdb::EnvOptions& o) override {
    rocksdb::Status s = target()->ReuseWritableFile(f, old, r, o);
    if (s.ok()) *r = std::make_unique<File>(this, std::move(*r));
    return s;
  }

 private:
  class File final : public rocksdb::WritableFileWrapper {
   public:
    File(FaultyRocksEnv* env, std::unique_ptr<rocksdb::WritableFile> base)
        : WritableFileWrapper(base.get()), env_(env), base_(std::move(base)) {}
    rocksdb::Status Append(const rocksdb::Slice& data) override {
      rocksdb::Status s = env_->Op("Append");
      return s.ok() ? WritableFileWrapper::Append(data) : s;
    }
    rocksdb::Status Append(const rocksdb::Slice& data,
                           const rocksdb::DataVerificationInfo& info) override {
      rocksdb::Status s = env_->Op("Append");
      return s.ok() ? WritableFileWrapper::Append(data, info) : s;
    }
    rocksdb::Status PositionedAppend(const rocksdb::Slice& data,
                                     uint64_t offset) override {
      rocksdb::Status s = env_->Op("PositionedAppend");
      return s.ok() ? WritableFileWrapper::PositionedAppend(data, offset) : s;
    }
    rocksdb::Status PositionedAppend(
        const rocksdb::Slice& data, uint64_t offset,
        const rocksdb::DataVerificationInfo& info) override {
      rocksdb::Status s = env_->Op("PositionedAppend");
      return s.ok() ? WritableFileWrapper::PositionedAppend(data, offset, info)
                    : s;
    }
    rocksdb::Status Sync() override {
      rocksdb::Status s = env_->Op("Sync");
      return s.ok() ? WritableFileWrapper::Sync() : s;
    }
    rocksdb::Status Fsync() override {
      rocksdb::Status s = env_->Op("Fsync");
      return s.ok() ? WritableFileWrapper::Fsync() : s;
    }
    void SetPreallocationBlockSize(size_t) override {}
    void PrepareWrite(size_t, size_t) override {}

   private:
    FaultyRocksEnv* const env_;
    const std::unique_ptr<rocksdb::WritableFile> base_;
  };

  mutable absl::Mutex mu_;
  bool armed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t fail_at_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t injected_ ABSL_GUARDED_BY(mu_) = 0;
};

// Shared by all tests (RocksDB may keep using an Env until exit).
FaultyRocksEnv& TestRocksEnv() {
  static FaultyRocksEnv* env = new FaultyRocksEnv;
  return *env;
}

// The Env the test fixture's repositories open RocksDB with.
rocksdb::Env* g_rocks_env = nullptr;

// ---------------------------------------------------------------------------
// A data dir, its blob store and the Repository over it.

enum class StoreKind { kMemory, kFile };

class World {
 public:
  World(StoreKind kind, std::string root)
      : kind_(kind), root_(std::move(root)), data_dir_(root_ + "/data") {
    fs::create_directories(data_dir_);
    if (kind_ == StoreKind::kMemory) {
      memory_ = std::make_shared<MemoryBlobStore>();
    }
  }
  ~World() { Close(); }

  // Opens the Repository over the current data dir, through a fresh
  // FaultInjectionBlobStore; `fail_recovery_op` > 0 fails that operation of
  // recovery (Open) itself.
  absl::Status Open(uint64_t fail_recovery_op = 0) {
    Close();
    std::shared_ptr<storage::BlobStore> base;
    if (kind_ == StoreKind::kMemory) {
      base = memory_;
    } else {
      auto files = storage::OpenFileBlobStore(data_dir_);
      if (!files.ok()) return files.status();
      base = std::move(*files);
    }
    auto* faults = new FaultInjectionBlobStore(base.get());
    // The wrapper keeps the store it wraps alive.
    std::shared_ptr<storage::BlobStore> wrapped(
        faults, [base](storage::BlobStore* p) { delete p; });
    if (fail_recovery_op > 0) {
      faults->FailAt(fail_recovery_op,
                     absl::UnavailableError(absl::StrCat(
                         kInjected, " in recovery op ", fail_recovery_op)));
    }
    RepositoryOptions options;
    options.metadata_dir = data_dir_ + "/meta";
    options.metadata_env = g_rocks_env;
    auto repo = Repository::Open(options, std::move(wrapped));
    if (!repo.ok()) return repo.status();
    repo_ = std::move(*repo);
    faults_ = faults;
    return absl::OkStatus();
  }

  // Drops the Repository (a clean shutdown).
  void Close() {
    repo_.reset();
    faults_ = nullptr;
  }

  // A process crash at this instant: what is not durable is lost, and the
  // next Open sees the data dir exactly as it is now on disk. The running
  // Repository keeps its (now stale) files until Close.
  void Crash() {
    if (memory_) memory_->SimulateCrash();
    const std::string image = absl::StrCat(root_, "/crash", ++crashes_);
    fs::copy(data_dir_, image, fs::copy_options::recursive);
    data_dir_ = image;
  }

  // Partial blobs: live writers' and those a crash left behind.
  size_t Temporaries() const {
    if (memory_) return memory_->TemporaryCount();
    size_t n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(data_dir_ + "/tmp", ec)) {
      const std::string name = e.path().filename().string();
      if (absl::StartsWith(name, "blob-") && absl::EndsWith(name, ".tmp")) ++n;
    }
    return n;
  }

  Repository& repo() { return *repo_; }
  FaultInjectionBlobStore& faults() { return *faults_; }
  bool is_open() const { return repo_ != nullptr; }

 private:
  const StoreKind kind_;
  const std::string root_;
  std::string data_dir_;
  int crashes_ = 0;
  std::shared_ptr<MemoryBlobStore> memory_;
  FaultInjectionBlobStore* faults_ = nullptr;  // owned by repo_
  std::unique_ptr<Repository> repo_;
};

// On tmpfs when there is one: the hundreds of worlds these tests build would
// spend minutes in fsync on a disk, and the crashes simulated here are
// process crashes (a copy of the files as they are), for which fsync plays no
// part.
std::string MakeTempDir() {
  std::error_code ec;
  const fs::path base =
      fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
          ? fs::path("/dev/shm")
          : fs::temp_directory_path();
  return ckptd::testing::MakeTempDir("ckptd-fault", base);
}

// Sets the policy that defines `best` and pushes the committed versions the
// fault must not harm: `last` (Base2) and `best` (Base1) differ. With
// `doomed`, a version pushed first and deleted leaves garbage blobs.
// With `doomed`, pushes a version first and deletes it again; with
// `faults` too, the blob deletes of that deletion fail, so its blobs stay
// behind as garbage for the next recovery to collect.
void PushBase(Repository& repo, Model* model, bool doomed = false,
              FaultInjectionBlobStore* faults = nullptr) {
  v1::SetPolicyRequest policy;
  policy.set_run(kRun);
  policy.mutable_policy()->set_monitor(kMetric);
  policy.mutable_policy()->set_mode(v1::MIN);
  ASSERT_TRUE(repo.SetPolicy(policy, Actor{}).ok());
  std::vector<VersionSpec> specs = {Base1(), Base2()};
  if (doomed) specs.insert(specs.begin(), Doomed());
  for (const VersionSpec& spec : specs) {
    PushLog log;
    ASSERT_OK(Push(repo, spec, &log));
    ASSERT_TRUE(log.published);
    (*model)[*log.version] = spec;
  }
  if (doomed) {
    v1::DeleteVersionRequest del;
    del.set_run(kRun);
    del.set_ref(absl::StrCat(model->begin()->first));
    if (faults != nullptr) faults->FailAll(absl::UnavailableError(kInjected));
    ASSERT_OK(repo.DeleteVersion(del));
    if (faults != nullptr) faults->Heal();
    model->erase(model->begin());
  }
}

// Reads bytes [offset, offset + length) of a blob.
absl::StatusOr<std::string> ReadBlob(Repository& repo,
                                     const v1::TensorInfo& t) {
  auto digest = DigestFromBytes(t.blob_digest());
  if (!digest.ok()) return digest.status();
  auto reader = repo.blobs().Open(*digest);
  if (!reader.ok()) return reader.status();
  std::string out(t.byte_length(), '\0');
  absl::Status st =
      (*reader)->ReadAt(t.blob_offset(), t.byte_length(), out.data());
  if (!st.ok()) return st;
  return out;
}

// Version `n` is committed, complete, and reads back bit-identical to `spec`.
void ExpectIntact(Repository& repo, uint64_t n, const VersionSpec& spec) {
  SCOPED_TRACE(absl::StrCat("version ", n));
  v1::GetVersionRequest get;
  get.set_run(kRun);
  get.set_ref(absl::StrCat(n));
  get.set_include_manifest(true);
  auto got = repo.GetVersion(get);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info().state(), v1::COMMITTED);
  EXPECT_EQ(got->info().step(), spec.step);
  EXPECT_EQ(got->info().world_size(), spec.shards.size());
  ASSERT_EQ(got->shards_size(), static_cast<int>(spec.shards.size()));
  const std::optional<double> metric = MonitoredMetric(spec);
  if (metric) {
    EXPECT_DOUBLE_EQ(got->info().metrics().at(kMetric), *metric);
  }
  for (uint32_t rank = 0; rank < spec.shards.size(); ++rank) {
    const v1::ShardManifest& stored = got->shards(rank);
    v1::ShardManifest want = ManifestOf(spec.shards[rank]);
    want.set_rank(rank);
    EXPECT_EQ(stored.SerializeAsString(), want.SerializeAsString())
        << "manifest of rank " << rank << " differs:\n"
        << stored.DebugString();
    const auto& tensors = spec.shards[rank].tensors;
    ASSERT_EQ(stored.entries_size(), static_cast<int>(tensors.size()) + 1);
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto bytes = ReadBlob(repo, stored.entries(i + 1).tensor());
      ASSERT_TRUE(bytes.ok()) << "rank " << rank << " '" << tensors[i].key
                              << "': " << bytes.status();
      EXPECT_TRUE(*bytes == tensors[i].bytes)
          << "rank " << rank << " '" << tensors[i].key
          << "' does not read back bit-identical";
    }
  }
}

absl::StatusOr<uint64_t> RefTarget(Repository& repo, const std::string& ref) {
  v1::GetVersionRequest get;
  get.set_run(kRun);
  get.set_ref(ref);
  auto got = repo.GetVersion(get);
  if (!got.ok()) return got.status();
  if (got->info().state() != v1::COMMITTED) {
    return absl::InternalError(absl::StrCat(
        ref, " points at a version in state ", got->info().state()));
  }
  return got->info().version();
}

// The invariants after a fault: the listed versions include every one in
// `must`, may include those in `may`, nothing else; each is committed,
// complete and bit-identical; `last` is the newest and `best` the one with
// the lowest metric (earliest on ties). Returns the listed versions.
Model ExpectConsistent(Repository& repo, const Model& must, const Model& may) {
  Model listed;
  v1::ListVersionsRequest list;
  list.set_run(kRun);
  list.set_include_aborted(true);
  auto versions = repo.ListVersions(list);
  EXPECT_TRUE(versions.ok()) << versions.status();
  if (!versions.ok()) return listed;
  for (const v1::VersionInfo& v : versions->versions()) {
    EXPECT_EQ(v.state(), v1::COMMITTED) << "listed version " << v.version();
    EXPECT_EQ(v.shards_size(), static_cast<int>(v.world_size()))
        << "listed version " << v.version() << " is missing shards";
    if (must.contains(v.version())) {
      listed[v.version()] = must.at(v.version());
    } else if (may.contains(v.version())) {
      listed[v.version()] = may.at(v.version());
    } else {
      ADD_FAILURE() << "version " << v.version()
                    << " is visible but was never committed:\n"
                    << v.DebugString();
    }
  }
  for (const auto& [n, spec] : must) {
    EXPECT_TRUE(listed.contains(n))
        << "acknowledged version " << n << " is not listed any more";
  }
  for (const auto& [n, spec] : listed) ExpectIntact(repo, n, spec);

  if (listed.empty()) return listed;
  auto last = RefTarget(repo, "last");
  EXPECT_TRUE(last.ok()) << last.status();
  if (last.ok()) {
    EXPECT_EQ(*last, listed.rbegin()->first) << "last";
  }
  uint64_t best = 0;
  double best_value = 0;
  for (const auto& [n, spec] : listed) {
    auto m = MonitoredMetric(spec);
    if (m && (best == 0 || *m < best_value)) {
      best = n;
      best_value = *m;
    }
  }
  auto best_target = RefTarget(repo, "best");
  EXPECT_TRUE(best_target.ok()) << best_target.status();
  if (best_target.ok()) {
    EXPECT_EQ(*best_target, best) << "best";
  }
  auto runs = repo.ListRuns();
  EXPECT_TRUE(runs.ok()) << runs.status();
  EXPECT_EQ(runs.ok() ? runs->runs_size() : 0, 1);
  if (runs.ok() && runs->runs_size() == 1) {
    EXPECT_EQ(runs->runs(0).version_count(), listed.size());
    EXPECT_EQ(runs->runs(0).last_version(), listed.rbegin()->first);
    EXPECT_EQ(runs->runs(0).best_version(), best);
  }
  v1::VerifyRequest verify;
  verify.set_run(kRun);
  auto report = repo.Verify(verify);
  EXPECT_TRUE(report.ok()) << report.status();
  if (report.ok()) {
    EXPECT_THAT(report->errors(), ::testing::IsEmpty());
  }
  return listed;
}

// A version the client began but did not see published is not readable.
void ExpectPending(Repository& repo, uint64_t n) {
  v1::GetVersionRequest get;
  get.set_run(kRun);
  get.set_ref(absl::StrCat(n));
  auto got = repo.GetVersion(get);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition)
      << "version " << n << ": " << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("pending"));
}

// After a successful retry and a GC, the store holds exactly the blobs the
// committed versions reference: nothing lost, nothing leaked.
void ExpectBlobsExactlyReferenced(Repository& repo, const Model& listed) {
  ASSERT_TRUE(repo.CollectGarbage().ok());
  std::set<std::string> want;  // hex, for a readable diff
  for (const auto& [n, spec] : listed) {
    for (const Digest& d : DigestsOf(spec)) want.insert(d.Hex());
  }
  std::set<std::string> stored;
  ASSERT_OK(repo.blobs().ForEach(
      [&](const Digest& d, uint64_t) { stored.insert(d.Hex()); }));
  EXPECT_EQ(stored, want);
}

// Retries the push after the fault: it succeeds, joins the version begun
// before the fault if that one is still pending, and publishes.
void RetryAndCheck(Repository& repo, const VersionSpec& target,
                   const PushLog& before, Model must, const Model& may,
                   bool before_visible, PushLog* retry_log = nullptr) {
  PushLog retry;
  ASSERT_OK(
      Push(repo, target, &retry, PushHooks{.at_fault = {}, .resume = true}));
  if (retry_log != nullptr) *retry_log = retry;
  ASSERT_TRUE(retry.published);
  if (before.version && !before_visible) {
    EXPECT_EQ(*retry.version, *before.version)
        << "the version pending before the fault was not resumed";
  }
  must[*retry.version] = target;
  Model listed = ExpectConsistent(repo, must, may);
  EXPECT_EQ(RefTarget(repo, "last").value_or(0), *retry.version);
  ExpectBlobsExactlyReferenced(repo, listed);
}

// ---------------------------------------------------------------------------
// Blob-store faults

enum class FaultMode {
  // An I/O error; the same Repository stays up and the client retries.
  kErrorRetry,
  // Every operation from the k-th on fails (a dead disk) until healed;
  // cleanup after the failure fails too. Then the client retries.
  kErrorPersists,
  // An I/O error, then a clean restart.
  kErrorReopen,
  // The process dies at the k-th operation.
  kCrash,
};

struct BlobFaultCase {
  std::string name;
  StoreKind store;
  FaultMode mode;
  int world_size;
};

void PrintTo(const BlobFaultCase& c, std::ostream* os) { *os << c.name; }

class BlobFaultTest : public ::testing::TestWithParam<BlobFaultCase> {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    g_rocks_env = &TestRocksEnv();
  }
  void TearDown() override {
    g_rocks_env = nullptr;
    fs::remove_all(root_);
  }

  // A world with the base versions committed; `base` gets them.
  std::unique_ptr<World> NewWorld(const std::string& name, Model* base) {
    auto world = std::make_unique<World>(GetParam().store,
                                         absl::StrCat(root_, "/", name));
    absl::Status st = world->Open();
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return nullptr;
    PushBase(world->repo(), base);
    if (HasFatalFailure()) return nullptr;
    return world;
  }

  std::string root_;
};

TEST_P(BlobFaultTest, EveryOperationOfAPush) {
  const BlobFaultCase& c = GetParam();
  const VersionSpec target = Target(c.world_size);

  // Dry run: how many blob-store operations the push makes.
  uint64_t n_ops = 0;
  {
    Model base;
    auto world = NewWorld("dry", &base);
    ASSERT_TRUE(world != nullptr);
    const uint64_t before = world->faults().op_count();
    PushLog log;
    ASSERT_OK(Push(world->repo(), target, &log));
    ASSERT_TRUE(log.published);
    n_ops = world->faults().op_count() - before;
    Model must = base;
    must[*log.version] = target;
    ExpectConsistent(world->repo(), must, {});
  }
  // Every blob is at least NewWriter + Commit.
  ASSERT_GE(n_ops, 2 * DigestsOf(target).size() - 2) << c.name;

  size_t crash_temporaries = 0;
  int resumed = 0;
  int faults_after_an_acked_shard = 0;
  for (uint64_t k = 1; k <= n_ops; ++k) {
    SCOPED_TRACE(
        absl::StrCat(c.name, ": fault at blob-store op ", k, " of ", n_ops));
    Model base;
    auto world = NewWorld(absl::StrCat("k", k), &base);
    ASSERT_TRUE(world != nullptr);
    world->faults().FailAt(
        k, absl::UnavailableError(absl::StrCat(kInjected, " at op ", k)));
    PushLog log;
    absl::Status st = Push(world->repo(), target, &log, {.at_fault = [&] {
                             if (c.mode == FaultMode::kCrash) world->Crash();
                             if (c.mode == FaultMode::kErrorPersists) {
                               world->faults().FailAll(absl::UnavailableError(
                                   absl::StrCat(kInjected, ": disk gone")));
                             }
                           }});
    ASSERT_FALSE(st.ok()) << "the push succeeded despite the fault";
    EXPECT_THAT(st.message(), HasSubstr(kInjected));
    if (c.mode == FaultMode::kErrorPersists) {
      world->faults().Heal();
    } else {
      EXPECT_EQ(world->faults().injected_failures(), 1u);
    }
    // Every blob-store step precedes the CommitShard that would publish.
    EXPECT_FALSE(log.published);
    ASSERT_TRUE(log.version.has_value());

    const bool restart =
        c.mode == FaultMode::kErrorReopen || c.mode == FaultMode::kCrash;
    if (restart) {
      world->Close();
      crash_temporaries += world->Temporaries();
      ASSERT_OK(world->Open());
      EXPECT_EQ(world->Temporaries(), 0u) << "temp files survived recovery";
    }
    ExpectConsistent(world->repo(), base, {});
    ExpectPending(world->repo(), *log.version);
    PushLog retry;
    RetryAndCheck(world->repo(), target, log, base, {}, false, &retry);
    if (HasFatalFailure()) return;
    resumed += retry.resumed_uploads;
    if (log.ranks_acked.contains(0)) ++faults_after_an_acked_shard;

    // A clean shutdown leaves no temp files; after faults that did not
    // restart the process, a restart keeps everything.
    world->Close();
    EXPECT_EQ(world->Temporaries(), 0u) << "temp files left after shutdown";
    if (!restart) {
      Model all = base;
      all[*log.version] = target;
      ASSERT_OK(world->Open());
      ExpectConsistent(world->repo(), all, {});
    }
    if (HasFailure()) return;  // one failing k is enough to read
  }
  // The loop did reach the paths it is meant to: a crash image holds partial
  // blobs that recovery removed; a transient error left an upload that the
  // retry resumed; with two ranks, rank 0's acknowledged shard survived
  // faults in rank 1's uploads.
  RecordProperty("blob_store_ops", static_cast<int>(n_ops));
  if (c.mode == FaultMode::kCrash) {
    EXPECT_GT(crash_temporaries, 0u);
  }
  if (c.mode == FaultMode::kErrorRetry) {
    EXPECT_GT(resumed, 0);
  }
  if (c.world_size == 2) {
    EXPECT_GT(faults_after_an_acked_shard, 0);
  }
}

const char* ModeName(FaultMode mode) {
  switch (mode) {
    case FaultMode::kErrorRetry:
      return "ErrorRetry";
    case FaultMode::kErrorPersists:
      return "ErrorPersists";
    case FaultMode::kErrorReopen:
      return "ErrorReopen";
    case FaultMode::kCrash:
      return "Crash";
  }
  return "?";
}

std::vector<BlobFaultCase> BlobFaultCases() {
  std::vector<BlobFaultCase> out;
  for (StoreKind store : {StoreKind::kMemory, StoreKind::kFile}) {
    for (FaultMode mode : {FaultMode::kErrorRetry, FaultMode::kErrorPersists,
                           FaultMode::kErrorReopen, FaultMode::kCrash}) {
      for (int world_size : {1, 2}) {
        out.push_back(
            {absl::StrCat(store == StoreKind::kMemory ? "Memory" : "File",
                          ModeName(mode), world_size, "Rank"),
             store, mode, world_size});
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(
    Table, BlobFaultTest, ::testing::ValuesIn(BlobFaultCases()),
    [](const ::testing::TestParamInfo<BlobFaultCase>& info) {
      return info.param.name;
    });

// ---------------------------------------------------------------------------
// Faults in recovery itself: a crash mid-push, then the restart's own
// blob-store operations (removing temp files, deleting garbage) fail one at a
// time. Open reports the failure; the next start recovers fully.

class RecoveryFaultTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    g_rocks_env = &TestRocksEnv();
  }
  void TearDown() override {
    g_rocks_env = nullptr;
    fs::remove_all(root_);
  }

  // Pushes the base (with garbage from a deleted version), crashes in the
  // middle of a 2-rank push, and closes. Returns the world, not open.
  std::unique_ptr<World> CrashedWorld(const std::string& name, Model* base,
                                      PushLog* log) {
    auto world =
        std::make_unique<World>(GetParam(), absl::StrCat(root_, "/", name));
    absl::Status st = world->Open();
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return nullptr;
    PushBase(world->repo(), base, /*doomed=*/true, &world->faults());
    if (HasFatalFailure()) return nullptr;
    // A third of the way: rank 0 is mid-upload, a blob tmp file exists.
    world->faults().FailAt(4, absl::UnavailableError(kInjected));
    st = Push(world->repo(), Target(2), log,
              {.at_fault = [&] { world->Crash(); }});
    EXPECT_FALSE(st.ok());
    world->Close();
    return world;
  }

  std::string root_;
};

TEST_P(RecoveryFaultTest, EveryOperationOfRecovery) {
  uint64_t n_ops = 0;
  {
    Model base;
    PushLog log;
    auto world = CrashedWorld("dry", &base, &log);
    ASSERT_TRUE(world != nullptr);
    ASSERT_OK(world->Open());
    n_ops = world->faults().op_count();
    ExpectConsistent(world->repo(), base, {});
  }
  // RemoveTemporaries, and one Delete per garbage blob of the deleted
  // version.
  ASSERT_EQ(n_ops, 1 + DigestsOf(Doomed()).size());
  for (uint64_t k = 1; k <= n_ops; ++k) {
    SCOPED_TRACE(absl::StrCat("fault at recovery op ", k, " of ", n_ops));
    Model base;
    PushLog log;
    auto world = CrashedWorld(absl::StrCat("k", k), &base, &log);
    ASSERT_TRUE(world != nullptr);
    absl::Status st = world->Open(/*fail_recovery_op=*/k);
    EXPECT_FALSE(st.ok()) << "recovery ignored a failed operation";
    EXPECT_THAT(st.message(), HasSubstr(kInjected));
    ASSERT_OK(world->Open());
    EXPECT_EQ(world->Temporaries(), 0u);
    ExpectConsistent(world->repo(), base, {});
    ExpectPending(world->repo(), *log.version);
    RetryAndCheck(world->repo(), Target(2), log, base, {}, false);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Table, RecoveryFaultTest,
                         ::testing::Values(StoreKind::kMemory,
                                           StoreKind::kFile),
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           return info.param == StoreKind::kMemory ? "Memory"
                                                                   : "File";
                         });

class MetadataFaultTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    g_rocks_env = &env_;
  }
  void TearDown() override {
    g_rocks_env = nullptr;
    fs::remove_all(root_);
  }

  std::unique_ptr<World> NewWorld(const std::string& name, Model* base) {
    env_.Disarm();
    auto world = std::make_unique<World>(StoreKind::kMemory,
                                         absl::StrCat(root_, "/", name));
    absl::Status st = world->Open();
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return nullptr;
    PushBase(world->repo(), base);
    if (HasFatalFailure()) return nullptr;
    return world;
  }

  std::string root_;
  FaultyRocksEnv& env_ = TestRocksEnv();
};

TEST_P(MetadataFaultTest, EveryRocksDbWriteOfAPush) {
  const VersionSpec target = Target(GetParam());
  uint64_t n_ops = 0;
  {
    Model base;
    auto world = NewWorld("dry", &base);
    ASSERT_TRUE(world != nullptr);
    env_.Arm(0);
    PushLog log;
    ASSERT_OK(Push(world->repo(), target, &log));
    n_ops = env_.count();
    env_.Disarm();
  }
  // At least BeginVersion's and each CommitShard's synced write.
  ASSERT_GE(n_ops, 2u * (1 + target.shards.size()))
      << "the test Env does not see RocksDB's writes";

  for (uint64_t k = 1; k <= n_ops; ++k) {
    SCOPED_TRACE(absl::StrCat("fault at RocksDB write op ", k, " of ", n_ops));
    Model base;
    auto world = NewWorld(absl::StrCat("k", k), &base);
    ASSERT_TRUE(world != nullptr);
    env_.Arm(k);
    PushLog log;
    absl::Status st = Push(world->repo(), target, &log);
    EXPECT_EQ(env_.injected(), 1u);
    // A failed write may be reported (the push fails) or, for a lease,
    // only logged; it must not be acknowledged as a publish unless the
    // publish's own write went through.
    world->Close();
    env_.Disarm();
    ASSERT_OK(world->Open());
    Model must = base;
    Model may;
    if (log.published) must[*log.version] = target;
    if (log.version) may[*log.version] = target;
    Model listed = ExpectConsistent(world->repo(), must, may);
    const bool visible = log.version && listed.contains(*log.version);
    if (log.version && !visible) ExpectPending(world->repo(), *log.version);
    if (st.ok()) {
      ASSERT_TRUE(visible) << "a publish acknowledged before the fault is gone";
      continue;
    }
    RetryAndCheck(world->repo(), target, log, must, may, visible);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Table, MetadataFaultTest, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "Rank");
                         });

}  // namespace
}  // namespace ckptd::core
