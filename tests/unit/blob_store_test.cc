// The BlobStore conformance suite (tests/support/blob_store_conformance.h)
// over the file store, the memory store and the fault-injecting wrapper,
// then tests of what only one of them has: the
// on-disk format and recovery of the file store, the crash simulation of the
// memory store, and failure injection at every mutating operation.
#include "server/storage/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "server/storage/testing/fault_injection_blob_store.h"
#include "server/storage/testing/memory_blob_store.h"
#include "tests/support/blob_store_conformance.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"
#include "tests/support/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::ckptd::storage::testing::FaultInjectionBlobStore;
using ::ckptd::storage::testing::MemoryBlobStore;
using ::ckptd::storage::testing::NewMemoryBlobStore;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

using ::ckptd::testing::FlipFileByte;
using ::ckptd::testing::RandomBytes;

class TempDir {
 public:
  TempDir() : path_(ckptd::testing::MakeTempDir("blob_store_test")) {}
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

size_t CountFiles(const std::string& dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

std::string BlobFilePath(const std::string& dir, const Digest& d) {
  const std::string hex = d.Hex();
  return absl::StrCat(dir, "/blobs/", hex.substr(0, 2), "/", hex);
}

void WriteFile(const std::string& path, std::string_view contents) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::write(fd, contents.data(), contents.size()),
            static_cast<ssize_t>(contents.size()));
  ::close(fd);
}

// ---------------------------------------------------------------------------
// Harnesses: one per implementation, with the few hooks the suite needs that
// the interface does not offer.

class FileHarness : public StoreHarness {
 public:
  absl::Status Init() override {
    if (dir_.path().empty()) return absl::InternalError("mkdtemp failed");
    absl::StatusOr<std::unique_ptr<BlobStore>> store =
        OpenFileBlobStore(dir_.path());
    if (!store.ok()) return store.status();
    store_ = *std::move(store);
    return absl::OkStatus();
  }
  BlobStore& store() override { return *store_; }
  void Corrupt(const Digest& digest, uint64_t offset) override {
    FlipFileByte(BlobFilePath(dir_.path(), digest), offset);
  }
  size_t TemporaryCount() override {
    return CountFiles(absl::StrCat(dir_.path(), "/tmp"));
  }
  absl::Status Restart() override {
    store_.reset();
    if (absl::Status st = Init(); !st.ok()) return st;
    return store_->RemoveTemporaries();
  }
  const std::string& dir() const { return dir_.path(); }

 private:
  TempDir dir_;
  std::unique_ptr<BlobStore> store_;
};

class MemoryHarness : public StoreHarness {
 public:
  absl::Status Init() override {
    store_ = NewMemoryBlobStore();
    return absl::OkStatus();
  }
  BlobStore& store() override { return *store_; }
  void Corrupt(const Digest& digest, uint64_t offset) override {
    absl::Status st = store_->CorruptForTesting(digest, offset);
    EXPECT_TRUE(st.ok()) << st;
  }
  size_t TemporaryCount() override { return store_->TemporaryCount(); }
  absl::Status Restart() override {
    store_->SimulateCrash();
    return store_->RemoveTemporaries();
  }
  MemoryBlobStore& memory() { return *store_; }

 private:
  std::unique_ptr<MemoryBlobStore> store_;
};

// A healthy fault injector must be invisible.
class FaultInjectionOverFileHarness : public StoreHarness {
 public:
  absl::Status Init() override {
    if (absl::Status st = file_.Init(); !st.ok()) return st;
    store_ = std::make_unique<FaultInjectionBlobStore>(&file_.store());
    return absl::OkStatus();
  }
  BlobStore& store() override { return *store_; }
  void Corrupt(const Digest& digest, uint64_t offset) override {
    file_.Corrupt(digest, offset);
  }
  size_t TemporaryCount() override { return file_.TemporaryCount(); }
  absl::Status Restart() override {
    store_.reset();
    if (absl::Status st = file_.Restart(); !st.ok()) return st;
    store_ = std::make_unique<FaultInjectionBlobStore>(&file_.store());
    return absl::OkStatus();
  }

 private:
  FileHarness file_;
  std::unique_ptr<FaultInjectionBlobStore> store_;
};

std::vector<Implementation> AllImplementations() {
  return {
      {"File", [] { return std::make_unique<FileHarness>(); }},
      {"Memory", [] { return std::make_unique<MemoryHarness>(); }},
      {"FaultInjectionOverFile",
       [] { return std::make_unique<FaultInjectionOverFileHarness>(); }},
  };
}

INSTANTIATE_TEST_SUITE_P(AllStores, BlobStoreConformanceTest,
                         ::testing::ValuesIn(AllImplementations()),
                         ImplementationName);

// ---------------------------------------------------------------------------
// File store: on-disk format, recovery, damage.

class FileBlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    ASSERT_OK_AND_ASSIGN(store_, OpenFileBlobStore(dir_.path()));
  }
  void Reopen() {
    store_.reset();
    ASSERT_OK_AND_ASSIGN(store_, OpenFileBlobStore(dir_.path()));
  }
  std::string TmpDir() const { return absl::StrCat(dir_.path(), "/tmp"); }

  TempDir dir_;
  std::unique_ptr<BlobStore> store_;
};

uint64_t FileSize(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

TEST_F(FileBlobStoreTest, OnDiskLayoutAndTrailer) {
  for (int i = 0; i < 256; ++i) {
    const std::string fan_out =
        absl::StrFormat("%s/blobs/%02x", dir_.path(), i);
    ASSERT_TRUE(std::filesystem::is_directory(fan_out)) << fan_out;
  }
  const uint64_t size = 2 * kChunk + 5;
  const std::string data = RandomBytes(size, 30);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store_, data));
  const std::string path = BlobFilePath(dir_.path(), digest);
  const uint64_t chunks = 3;
  ASSERT_EQ(FileSize(path), size + 8 * chunks + 24);

  std::string file(FileSize(path), '\0');
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pread(fd, file.data(), file.size(), 0),
            static_cast<ssize_t>(file.size()));
  ::close(fd);
  EXPECT_TRUE(file.substr(0, size) == data) << "data is stored raw";
  auto le = [&](uint64_t off, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) {
      v = (v << 8) | static_cast<unsigned char>(file[off + i]);
    }
    return v;
  };
  for (uint64_t c = 0; c < chunks; ++c) {
    const uint64_t len = std::min(kChunk, size - c * kChunk);
    EXPECT_EQ(le(size + 8 * c, 8), ChunkChecksum(data.data() + c * kChunk, len))
        << "chunk " << c;
  }
  const uint64_t footer = size + 8 * chunks;
  EXPECT_EQ(file.substr(footer, 8), "CKPTBLB1");
  EXPECT_EQ(le(footer + 8, 8), size);
  EXPECT_EQ(le(footer + 16, 4), kChunk);
  EXPECT_EQ(le(footer + 20, 4), chunks);
}

TEST_F(FileBlobStoreTest, ReopenSeesCommittedBlobs) {
  const std::string a = RandomBytes(kChunk + 1, 31);
  const std::string b = RandomBytes(0, 32);
  ASSERT_OK_AND_ASSIGN(Digest da, Put(*store_, a));
  ASSERT_OK_AND_ASSIGN(Digest db, Put(*store_, b));
  Reopen();
  ASSERT_OK(store_->RemoveTemporaries());
  EXPECT_THAT(ListBlobs(*store_),
              UnorderedElementsAre(Pair(da, a.size()), Pair(db, 0u)));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(*store_, da));
  EXPECT_TRUE(read == a);
}

TEST_F(FileBlobStoreTest, RemoveTemporariesCleansUpAfterACrash) {
  ASSERT_OK_AND_ASSIGN(Digest committed, Put(*store_, RandomBytes(5000, 33)));
  // A leftover written by hand, and a foreign file that is not ours.
  WriteFile(absl::StrCat(TmpDir(), "/blob-1234-0-00000000deadbeef.tmp"),
            "partial blob");
  WriteFile(absl::StrCat(TmpDir(), "/notes.txt"), "not a blob");
  // A writer whose process dies without cleaning up.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<std::unique_ptr<BlobWriter>> w =
        store_->NewWriter(kAnyDigest);
    if (!w.ok() || !(*w)->Append(RandomBytes(kChunk + 3, 34)).ok() ||
        !(*w)->Sync().ok()) {
      ::_exit(1);
    }
    ::_exit(0);  // no destructors: the tmp file stays
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  // And one leaked in this process.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> leaked,
                       store_->NewWriter(kAnyDigest));
  ASSERT_OK(leaked->Append("leaked"));
  ASSERT_EQ(CountFiles(TmpDir()), 4u);

  Reopen();
  ASSERT_OK(store_->RemoveTemporaries());

  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(TmpDir())) {
    left.push_back(e.path().filename());
  }
  EXPECT_THAT(left, ::testing::ElementsAre("notes.txt"));
  EXPECT_THAT(ListBlobs(*store_), UnorderedElementsAre(Pair(committed, 5000u)));
  // The leaked writer's file is gone; it cannot publish.
  EXPECT_FALSE(leaked->Commit(DigestOfString("leaked")).ok());
  ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size,
                       store_->Stat(DigestOfString("leaked")));
  EXPECT_EQ(size, std::nullopt);
}

TEST_F(FileBlobStoreTest, TruncatedBlobFileIsDataLossAndReuploadRepairsIt) {
  const uint64_t size = 2 * kChunk + 9;
  const uint64_t file_size = size + 8 * 3 + 24;
  struct Case {
    const char* name;
    uint64_t truncate_to;
  };
  const Case cases[] = {
      {"empty", 0},
      {"short of a footer", 10},
      {"half the data", size / 2},
      {"trailer gone", size},
      {"footer gone", file_size - 24},
      {"last byte gone", file_size - 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string data = RandomBytes(size, 40 + c.truncate_to);
    ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store_, data));
    const std::string path = BlobFilePath(dir_.path(), digest);
    ASSERT_EQ(FileSize(path), file_size);
    ASSERT_EQ(::truncate(path.c_str(), c.truncate_to), 0);

    absl::StatusOr<std::unique_ptr<BlobReader>> reader = store_->Open(digest);
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss)
        << reader.status();
    EXPECT_THAT(reader.status().message(), HasSubstr(digest.Hex()));
    EXPECT_EQ(store_->Stat(digest).status().code(),
              absl::StatusCode::kDataLoss);
    // Still listed, so that GC can remove it.
    EXPECT_EQ(ListBlobs(*store_).count(digest), 1u);

    ASSERT_OK(Put(*store_, data));
    ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(*store_, digest));
    EXPECT_TRUE(read == data);
    ASSERT_OK(store_->Delete(digest));
  }
  EXPECT_EQ(CountFiles(TmpDir()), 0u);
}

TEST_F(FileBlobStoreTest, DamagedStoredChecksumFailsItsChunk) {
  const uint64_t size = 2 * kChunk + 9;
  const std::string data = RandomBytes(size, 50);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store_, data));
  FlipFileByte(BlobFilePath(dir_.path(), digest), size + 8 * 1 + 3);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader,
                       store_->Open(digest));
  std::string out(kChunk, '\0');
  EXPECT_OK(reader->ReadAt(0, kChunk, out.data()));
  EXPECT_EQ(reader->ReadAt(kChunk, kChunk, out.data()).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_OK(reader->ReadAt(2 * kChunk, 9, out.data()));
}

TEST_F(FileBlobStoreTest, ForEachIgnoresStrayFiles) {
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store_, "real"));
  const std::string hex = digest.Hex();
  const std::string fan_out =
      absl::StrCat(dir_.path(), "/blobs/", hex.substr(0, 2));
  std::string misplaced = hex;  // valid name, wrong directory
  misplaced[0] = misplaced[0] == 'a' ? 'b' : 'a';
  std::string upper = hex;
  for (char& ch : upper) ch = static_cast<char>(std::toupper(ch));
  upper[31] = 'F';
  for (const std::string& name :
       {std::string("README"), misplaced, upper, hex + ".tmp", hex.substr(1)}) {
    WriteFile(absl::StrCat(fan_out, "/", name), "junk");
  }
  ASSERT_TRUE(std::filesystem::create_directory(
      absl::StrCat(fan_out, "/", hex.substr(0, 2), std::string(30, '0'))));
  EXPECT_THAT(ListBlobs(*store_), UnorderedElementsAre(Pair(digest, 4u)));
}

TEST_F(FileBlobStoreTest, OsErrorsNameTheOperationAndThePath) {
  std::filesystem::remove_all(TmpDir());
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer =
      store_->NewWriter(kAnyDigest);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(writer.status().message(), HasSubstr("open blob tmp file"));
  EXPECT_THAT(writer.status().message(), HasSubstr(TmpDir()));

  const std::string not_a_dir = absl::StrCat(dir_.path(), "/file");
  WriteFile(not_a_dir, "x");
  EXPECT_FALSE(OpenFileBlobStore(not_a_dir).ok());
  EXPECT_EQ(OpenFileBlobStore("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Memory store: the crash simulation itself.

TEST(MemoryBlobStoreTest, SimulateCrashKeepsOnlyWhatWasDurable) {
  std::unique_ptr<MemoryBlobStore> store = NewMemoryBlobStore();
  ASSERT_OK_AND_ASSIGN(Digest kept, Put(*store, "committed"));
  ASSERT_OK_AND_ASSIGN(Digest deleted, Put(*store, "deleted"));
  ASSERT_OK(store->Delete(deleted));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> synced,
                       store->NewWriter(kAnyDigest));
  ASSERT_OK(synced->Append("synced"));
  ASSERT_OK(synced->Sync());
  ASSERT_OK(synced->Append(" and not"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> unsynced,
                       store->NewWriter(kAnyDigest));
  ASSERT_OK(unsynced->Append("never synced"));
  EXPECT_EQ(store->TemporaryCount(), 2u);

  store->SimulateCrash();

  EXPECT_THAT(ListBlobs(*store), UnorderedElementsAre(Pair(kept, 9u)));
  EXPECT_EQ(store->TemporaryCount(), 2u);  // left behind, like tmp files
  EXPECT_EQ(store->TemporaryBytes(), 6u);  // "synced"
  for (BlobWriter* w : {synced.get(), unsynced.get()}) {
    EXPECT_EQ(w->Append("x").code(), absl::StatusCode::kAborted);
    EXPECT_EQ(w->Sync().status().code(), absl::StatusCode::kAborted);
  }
  EXPECT_EQ(synced->Commit(DigestOfString("synced and not")).code(),
            absl::StatusCode::kAborted);
  synced.reset();
  unsynced.reset();
  EXPECT_EQ(store->TemporaryCount(), 2u);  // a dead writer cannot clean up
  ASSERT_OK(store->RemoveTemporaries());
  EXPECT_EQ(store->TemporaryCount(), 0u);
  EXPECT_THAT(ListBlobs(*store), UnorderedElementsAre(Pair(kept, 9u)));
  // The store itself works on after the crash.
  ASSERT_OK(Put(*store, "after"));
}

TEST(MemoryBlobStoreTest, RemoveTemporariesSparesLiveWriters) {
  std::unique_ptr<MemoryBlobStore> store = NewMemoryBlobStore();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> live,
                       store->NewWriter(kAnyDigest));
  ASSERT_OK(live->Append("live"));
  ASSERT_OK(store->RemoveTemporaries());
  ASSERT_OK(live->Commit(DigestOfString("live")));
  EXPECT_EQ(ListBlobs(*store).size(), 1u);
}

TEST(MemoryBlobStoreTest, CorruptForTestingChecksItsArguments) {
  std::unique_ptr<MemoryBlobStore> store = NewMemoryBlobStore();
  EXPECT_EQ(store->CorruptForTesting(DigestOfString("x"), 0).code(),
            absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(Digest d, Put(*store, "abc"));
  EXPECT_EQ(store->CorruptForTesting(d, 3).code(),
            absl::StatusCode::kOutOfRange);
  ASSERT_OK(store->CorruptForTesting(d, 2));
  EXPECT_EQ(ReadAll(*store, d).status().code(), absl::StatusCode::kDataLoss);
}

// ---------------------------------------------------------------------------
// Fault injection.

class FaultInjectionTest : public ::testing::TestWithParam<Implementation> {
 protected:
  void SetUp() override {
    harness_ = GetParam().make();
    ASSERT_OK(harness_->Init());
  }
  std::unique_ptr<StoreHarness> harness_;
};

INSTANTIATE_TEST_SUITE_P(
    BaseStores, FaultInjectionTest,
    ::testing::Values(
        Implementation{"File", [] { return std::make_unique<FileHarness>(); }},
        Implementation{"Memory",
                       [] { return std::make_unique<MemoryHarness>(); }}),
    ImplementationName);

TEST_P(FaultInjectionTest, CountsMutatingOperationsOnly) {
  ASSERT_OK_AND_ASSIGN(Digest d, Put(harness_->store(), "base"));
  FaultInjectionBlobStore store(&harness_->store());
  EXPECT_EQ(store.op_count(), 0u);
  ASSERT_OK(store.Stat(d));
  ASSERT_OK(ReadAll(store, d));
  ListBlobs(store);
  EXPECT_EQ(store.op_count(), 0u) << "reads are not counted";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> w,
                       store.NewWriter(kAnyDigest));
  ASSERT_OK(w->Append("a"));
  ASSERT_OK(w->Sync());
  ASSERT_OK(w->Commit(DigestOfString("a")));
  ASSERT_OK(store.Delete(d));
  ASSERT_OK(store.RemoveTemporaries());
  EXPECT_EQ(store.op_count(), 6u);
  EXPECT_EQ(store.injected_failures(), 0u);
}

TEST_P(FaultInjectionTest, FailAllUntilHealed) {
  FaultInjectionBlobStore store(&harness_->store());
  const absl::Status injected = absl::ResourceExhaustedError("disk full");
  store.FailAll(injected);
  EXPECT_EQ(store.NewWriter(kAnyDigest).status(), injected);
  EXPECT_EQ(Put(store, "x").status(), injected);
  EXPECT_EQ(store.Delete(DigestOfString("x")), injected);
  EXPECT_EQ(store.injected_failures(), 3u);
  store.Heal();
  ASSERT_OK_AND_ASSIGN(Digest d, Put(store, "x"));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store, d));
  EXPECT_EQ(read, "x");
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
}

// Uploads `b` in three appends, syncs, commits, then deletes `a`. Stops at
// the first error and says which operation (1-based) it was.
struct WorkloadResult {
  absl::Status status;
  int failed_op = 0;
};

WorkloadResult RunWorkload(BlobStore& store, const std::string& b,
                           const Digest& a) {
  int op = 0;
  auto check = [&](absl::Status st) {
    ++op;
    return st;
  };
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer =
      store.NewWriter(kAnyDigest);
  if (absl::Status st = check(writer.status()); !st.ok()) return {st, op};
  const size_t third = b.size() / 3;
  for (size_t off : {size_t{0}, third, 2 * third}) {
    const size_t len = off == 2 * third ? b.size() - off : third;
    absl::Status st =
        check((*writer)->Append(std::string_view(b).substr(off, len)));
    if (!st.ok()) return {st, op};
  }
  if (absl::Status st = check((*writer)->Sync().status()); !st.ok()) {
    return {st, op};
  }
  if (absl::Status st = check((*writer)->Commit(DigestOfString(b))); !st.ok()) {
    return {st, op};
  }
  if (absl::Status st = check(store.Delete(a)); !st.ok()) return {st, op};
  return {absl::OkStatus(), 0};
}

TEST_P(FaultInjectionTest, EveryFailedOperationLeavesBlobsWholeOrAbsent) {
  const std::string a = RandomBytes(kChunk + 11, 60);
  const std::string b = RandomBytes(2 * kChunk + 7, 61);
  const Digest da = DigestOfString(a);
  const Digest db = DigestOfString(b);
  constexpr int kCommitOp = 6;
  constexpr int kDeleteOp = 7;

  uint64_t ops = 0;
  {
    ASSERT_OK(Put(harness_->store(), a));
    FaultInjectionBlobStore store(&harness_->store());
    WorkloadResult healthy = RunWorkload(store, b, da);
    ASSERT_OK(healthy.status);
    ops = store.op_count();
  }
  ASSERT_EQ(ops, static_cast<uint64_t>(kDeleteOp));

  for (uint64_t k = 1; k <= ops; ++k) {
    SCOPED_TRACE(absl::StrCat("failing operation ", k));
    harness_ = GetParam().make();
    ASSERT_OK(harness_->Init());
    ASSERT_OK(Put(harness_->store(), a));
    const absl::Status injected = absl::UnavailableError("injected I/O error");
    {
      FaultInjectionBlobStore store(&harness_->store());
      store.FailAt(k, injected);
      WorkloadResult result = RunWorkload(store, b, da);
      EXPECT_EQ(result.status, injected) << "an injected failure was lost";
      EXPECT_EQ(result.failed_op, static_cast<int>(k));
      EXPECT_EQ(store.injected_failures(), 1u);
    }
    // Crash right after the failure, then recover.
    ASSERT_OK(harness_->Restart());
    EXPECT_EQ(harness_->TemporaryCount(), 0u);

    std::map<Digest, uint64_t> expected;
    expected[da] = a.size();                     // the Delete never succeeds
    if (k > kCommitOp) expected[db] = b.size();  // the Commit succeeded
    EXPECT_EQ(ListBlobs(harness_->store()), expected);
    for (const auto& [digest, size] : expected) {
      ASSERT_OK_AND_ASSIGN(std::string read,
                           ReadAll(harness_->store(), digest));
      EXPECT_TRUE(read == (digest == da ? a : b)) << "blob damaged";
    }
    // Retrying the whole workload after recovery converges.
    WorkloadResult retry = RunWorkload(harness_->store(), b, da);
    ASSERT_OK(retry.status);
    EXPECT_THAT(ListBlobs(harness_->store()),
                UnorderedElementsAre(Pair(db, b.size())));
  }
}

}  // namespace
}  // namespace ckptd::storage
