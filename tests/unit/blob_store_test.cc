// Conformance suite for BlobStore implementations (file store, memory store,
// fault-injecting wrapper), then tests of what only one of them has: the
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

constexpr uint64_t kChunk = kBlobChecksumChunk;

absl::Status AsStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

#define ASSERT_OK(expr)                        \
  do {                                         \
    const absl::Status _st = AsStatus((expr)); \
    ASSERT_TRUE(_st.ok()) << _st;              \
  } while (0)
#define EXPECT_OK(expr)                        \
  do {                                         \
    const absl::Status _st = AsStatus((expr)); \
    EXPECT_TRUE(_st.ok()) << _st;              \
  } while (0)
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(TEST_CONCAT_(_statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = std::move(*tmp)
#define TEST_CONCAT_INNER_(a, b) a##b
#define TEST_CONCAT_(a, b) TEST_CONCAT_INNER_(a, b)

using ::ckptd::testing::FlipFileByte;
using ::ckptd::testing::RandomBytes;

Digest DigestOfString(std::string_view s) {
  return DigestOf(s.data(), s.size());
}

// Uploads `data` in appends of `piece` bytes (0: one append) and commits it.
absl::StatusOr<Digest> Put(BlobStore& store, std::string_view data,
                           size_t piece = 0) {
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer = store.NewWriter();
  if (!writer.ok()) return writer.status();
  if (piece == 0) piece = std::max<size_t>(data.size(), 1);
  for (size_t off = 0; off < data.size(); off += piece) {
    absl::Status st = (*writer)->Append(data.substr(off, piece));
    if (!st.ok()) return st;
  }
  const Digest digest = DigestOfString(data);
  absl::Status st = (*writer)->Commit(digest);
  if (!st.ok()) return st;
  return digest;
}

absl::StatusOr<std::string> ReadAll(BlobStore& store, const Digest& digest) {
  absl::StatusOr<std::unique_ptr<BlobReader>> reader = store.Open(digest);
  if (!reader.ok()) return reader.status();
  std::string out((*reader)->size(), '\0');
  absl::Status st = (*reader)->ReadAt(0, out.size(), out.data());
  if (!st.ok()) return st;
  return out;
}

std::map<Digest, uint64_t> ListBlobs(BlobStore& store) {
  std::map<Digest, uint64_t> blobs;
  absl::Status st = store.ForEach(
      [&](const Digest& d, uint64_t size) { blobs.emplace(d, size); });
  EXPECT_TRUE(st.ok()) << st;
  return blobs;
}

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

class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  virtual absl::Status Init() = 0;
  virtual BlobStore& store() = 0;
  // Flips a stored data byte behind the store's back.
  virtual void Corrupt(const Digest& digest, uint64_t offset) = 0;
  // Partial blobs the store holds (tmp files, partials of writers).
  virtual size_t TemporaryCount() = 0;
  // A crash and a restart: the store is reopened (what was not durable is
  // lost) and RemoveTemporaries runs. Live writers belong to the dead
  // process.
  virtual absl::Status Restart() = 0;
};

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

struct Implementation {
  std::string name;
  std::function<std::unique_ptr<StoreHarness>()> make;
};

void PrintTo(const Implementation& impl, std::ostream* os) { *os << impl.name; }

std::vector<Implementation> AllImplementations() {
  return {
      {"File", [] { return std::make_unique<FileHarness>(); }},
      {"Memory", [] { return std::make_unique<MemoryHarness>(); }},
      {"FaultInjectionOverFile",
       [] { return std::make_unique<FaultInjectionOverFileHarness>(); }},
  };
}

std::string ImplementationName(
    const ::testing::TestParamInfo<Implementation>& info) {
  return info.param.name;
}

class BlobStoreConformanceTest
    : public ::testing::TestWithParam<Implementation> {
 protected:
  void SetUp() override {
    harness_ = GetParam().make();
    ASSERT_OK(harness_->Init());
  }
  BlobStore& store() { return harness_->store(); }

  std::unique_ptr<StoreHarness> harness_;
};

INSTANTIATE_TEST_SUITE_P(AllStores, BlobStoreConformanceTest,
                         ::testing::ValuesIn(AllImplementations()),
                         ImplementationName);

TEST_P(BlobStoreConformanceTest, RoundTripsEverySizeAroundChunkBoundaries) {
  struct Case {
    uint64_t size;
    size_t piece;  // append size; 0: one append
  };
  const Case cases[] = {
      {0, 0},
      {1, 0},
      {kChunk - 1, 0},
      {kChunk, 0},
      {kChunk + 1, 0},
      {5 * kChunk + 3, 0},
      {kChunk - 1, 333331},
      {kChunk + 1, 333331},
      {5 * kChunk + 3, 333331},
      {5 * kChunk + 3, kChunk},
  };
  std::map<Digest, uint64_t> expected;
  for (const Case& c : cases) {
    const std::string name = absl::StrCat("size ", c.size, " piece ", c.piece);
    SCOPED_TRACE(name);
    const std::string data = RandomBytes(c.size, c.size);
    ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), data, c.piece));
    EXPECT_EQ(digest, DigestOfString(data));
    expected[digest] = c.size;
    ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store().Stat(digest));
    EXPECT_EQ(size, std::optional<uint64_t>(c.size));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader,
                         store().Open(digest));
    EXPECT_EQ(reader->size(), c.size);
    std::string out(c.size, '\0');
    ASSERT_OK(reader->ReadAt(0, c.size, out.data()));
    EXPECT_TRUE(out == data) << name << ": bytes differ";
  }
  EXPECT_EQ(ListBlobs(store()), expected);
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
}

TEST_P(BlobStoreConformanceTest, RangedReadsAcrossChunkBoundaries) {
  const uint64_t size = 5 * kChunk + 3;
  const std::string data = RandomBytes(size, 7);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), data));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader,
                       store().Open(digest));
  struct Case {
    const char* name;
    uint64_t offset;
    uint64_t length;
  };
  const Case cases[] = {
      {"first byte", 0, 1},
      {"inside one chunk", 100, 1000},
      {"last byte of a chunk", kChunk - 1, 1},
      {"straddles one boundary", kChunk - 1, 2},
      {"one whole chunk", kChunk, kChunk},
      {"partial, whole, partial", kChunk - 10, kChunk + 20},
      {"partial, two whole, partial", kChunk + 5, 3 * kChunk},
      {"partial then whole to the end", 3 * kChunk + 5, 2 * kChunk - 2},
      {"short last chunk", 5 * kChunk, 3},
      {"into the short last chunk", 5 * kChunk - 1, 4},
      {"last byte", size - 1, 1},
      {"everything", 0, size},
      {"empty at the end", size, 0},
      {"empty in the middle", kChunk, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string out(c.length, '\0');
    ASSERT_OK(reader->ReadAt(c.offset, c.length, out.data()));
    EXPECT_TRUE(out == data.substr(c.offset, c.length)) << c.name;
  }
}

TEST_P(BlobStoreConformanceTest, ReadsPastTheEndAreOutOfRange) {
  const uint64_t size = kChunk + 3;
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), RandomBytes(size, 8)));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader,
                       store().Open(digest));
  struct Case {
    const char* name;
    uint64_t offset;
    uint64_t length;
  };
  const Case cases[] = {
      {"one byte at the end", size, 1},   {"empty beyond the end", size + 1, 0},
      {"runs over the end", size - 1, 2}, {"everything plus one", 0, size + 1},
      {"offset overflow", UINT64_MAX, 1}, {"length overflow", 1, UINT64_MAX},
  };
  std::string out(size + 1, '\0');
  for (const Case& c : cases) {
    absl::Status st = reader->ReadAt(c.offset, c.length, out.data());
    EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange) << c.name << ": " << st;
  }
}

TEST_P(BlobStoreConformanceTest, DigestMismatchIsRejectedAndLeavesNothing) {
  const std::string data = RandomBytes(kChunk + 10, 9);
  const Digest actual = DigestOfString(data);
  const Digest claimed = DigestOfString("something else");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer, store().NewWriter());
  ASSERT_OK(writer->Append(data));
  absl::Status st = writer->Commit(claimed);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(st.message(), HasSubstr(claimed.Hex()));
  EXPECT_THAT(st.message(), HasSubstr(actual.Hex()));
  for (const Digest& d : {actual, claimed}) {
    ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store().Stat(d));
    EXPECT_EQ(size, std::nullopt);
  }
  EXPECT_TRUE(ListBlobs(store()).empty());
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
  // Finished, whatever the result.
  EXPECT_EQ(writer->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer->Commit(actual).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_P(BlobStoreConformanceTest, WriterIsFinishedAfterCommitOrAbandon) {
  const std::string data = "tensor bytes";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> committed,
                       store().NewWriter());
  ASSERT_OK(committed->Append(data));
  ASSERT_OK(committed->Commit(DigestOfString(data)));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> abandoned,
                       store().NewWriter());
  ASSERT_OK(abandoned->Append("partial"));
  abandoned->Abandon();
  abandoned->Abandon();  // idempotent
  for (BlobWriter* w : {committed.get(), abandoned.get()}) {
    EXPECT_EQ(w->Append("more").code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(w->Sync().status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(w->Commit(DigestOfString(data)).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size,
                       store().Stat(DigestOfString("partial")));
  EXPECT_EQ(size, std::nullopt);
  EXPECT_THAT(ListBlobs(store()),
              UnorderedElementsAre(Pair(DigestOfString(data), data.size())));
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
}

TEST_P(BlobStoreConformanceTest, DestroyingAnUncommittedWriterAbandonsIt) {
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer,
                         store().NewWriter());
    ASSERT_OK(writer->Append(RandomBytes(kChunk + 1, 10)));
    ASSERT_OK(writer->Sync());
    EXPECT_EQ(harness_->TemporaryCount(), 1u);
  }
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
  EXPECT_TRUE(ListBlobs(store()).empty());
}

TEST_P(BlobStoreConformanceTest, SyncReportsTheDurableSizeAndAppendsContinue) {
  const std::string a = RandomBytes(kChunk + 7, 11);
  const std::string b = RandomBytes(kChunk - 3, 12);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer, store().NewWriter());
  ASSERT_OK_AND_ASSIGN(uint64_t empty, writer->Sync());
  EXPECT_EQ(empty, 0u);
  ASSERT_OK(writer->Append(a));
  EXPECT_EQ(writer->size(), a.size());
  ASSERT_OK_AND_ASSIGN(uint64_t durable, writer->Sync());
  EXPECT_EQ(durable, a.size());
  ASSERT_OK(writer->Append(b));
  EXPECT_EQ(writer->size(), a.size() + b.size());
  ASSERT_OK_AND_ASSIGN(durable, writer->Sync());
  EXPECT_EQ(durable, a.size() + b.size());
  const std::string all = a + b;
  ASSERT_OK(writer->Commit(DigestOfString(all)));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), DigestOfString(all)));
  EXPECT_TRUE(read == all);
}

TEST_P(BlobStoreConformanceTest, ConcurrentWritersOfTheSameBlobAllSucceed) {
  constexpr int kWriters = 4;
  const std::string data = RandomBytes(2 * kChunk + 5, 13);
  const Digest digest = DigestOfString(data);
  std::vector<absl::Status> results(kWriters);
  std::latch start(kWriters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      // Different append sizes so the writers interleave differently.
      results[i] = AsStatus(Put(store(), data, 100000 * (i + 1)));
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kWriters; ++i) {
    EXPECT_TRUE(results[i].ok()) << "writer " << i << ": " << results[i];
  }
  EXPECT_THAT(ListBlobs(store()),
              UnorderedElementsAre(Pair(digest, data.size())));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), digest));
  EXPECT_TRUE(read == data);
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
}

TEST_P(BlobStoreConformanceTest, ConcurrentWritersOfDifferentBlobs) {
  constexpr int kWriters = 4;
  std::vector<std::string> data;
  for (int i = 0; i < kWriters; ++i)
    data.push_back(RandomBytes(kChunk, 20 + i));
  std::vector<absl::Status> results(kWriters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = AsStatus(Put(store(), data[i], 65536)); });
  }
  for (std::thread& t : threads) t.join();
  std::map<Digest, uint64_t> expected;
  for (int i = 0; i < kWriters; ++i) {
    EXPECT_TRUE(results[i].ok()) << "writer " << i << ": " << results[i];
    expected[DigestOfString(data[i])] = kChunk;
    ASSERT_OK_AND_ASSIGN(std::string read,
                         ReadAll(store(), DigestOfString(data[i])));
    EXPECT_TRUE(read == data[i]) << "blob " << i;
  }
  EXPECT_EQ(ListBlobs(store()), expected);
}

TEST_P(BlobStoreConformanceTest, DuplicateCommitKeepsOneCopy) {
  const std::string data = RandomBytes(3000, 14);
  ASSERT_OK_AND_ASSIGN(Digest first, Put(store(), data));
  ASSERT_OK_AND_ASSIGN(Digest second, Put(store(), data, 1000));
  EXPECT_EQ(first, second);
  EXPECT_THAT(ListBlobs(store()), UnorderedElementsAre(Pair(first, 3000u)));
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
}

TEST_P(BlobStoreConformanceTest, DeleteRemovesOnlyThatBlob) {
  const std::string kept = RandomBytes(kChunk + 1, 15);
  const std::string gone = RandomBytes(kChunk + 2, 16);
  ASSERT_OK_AND_ASSIGN(Digest kept_digest, Put(store(), kept));
  ASSERT_OK_AND_ASSIGN(Digest gone_digest, Put(store(), gone));
  ASSERT_OK(store().Delete(gone_digest));
  ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store().Stat(gone_digest));
  EXPECT_EQ(size, std::nullopt);
  EXPECT_EQ(store().Open(gone_digest).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(ListBlobs(store()),
              UnorderedElementsAre(Pair(kept_digest, kept.size())));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), kept_digest));
  EXPECT_TRUE(read == kept);
  // Deleting what is not stored is fine, and a deleted blob can come back.
  EXPECT_OK(store().Delete(gone_digest));
  EXPECT_OK(store().Delete(DigestOfString("never stored")));
  ASSERT_OK(Put(store(), gone));
  ASSERT_OK_AND_ASSIGN(read, ReadAll(store(), gone_digest));
  EXPECT_TRUE(read == gone);
}

TEST_P(BlobStoreConformanceTest, ForEachReportsEveryBlobWithItsDataSize) {
  EXPECT_TRUE(ListBlobs(store()).empty());
  std::map<Digest, uint64_t> expected;
  for (uint64_t size : {uint64_t{0}, uint64_t{10}, kChunk, 2 * kChunk + 1}) {
    ASSERT_OK_AND_ASSIGN(Digest d, Put(store(), RandomBytes(size, 100 + size)));
    expected[d] = size;
  }
  EXPECT_EQ(ListBlobs(store()), expected);
  // `fn` may call back into the store.
  std::vector<Digest> stat_failures;
  ASSERT_OK(store().ForEach([&](const Digest& d, uint64_t size) {
    absl::StatusOr<std::optional<uint64_t>> st = store().Stat(d);
    if (!st.ok() || *st != size) stat_failures.push_back(d);
  }));
  EXPECT_TRUE(stat_failures.empty());
}

TEST_P(BlobStoreConformanceTest, AbsentBlobIsNotFound) {
  const Digest digest = DigestOfString("absent");
  ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store().Stat(digest));
  EXPECT_EQ(size, std::nullopt);
  absl::StatusOr<std::unique_ptr<BlobReader>> reader = store().Open(digest);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(reader.status().message(), HasSubstr(digest.Hex()));
}

TEST_P(BlobStoreConformanceTest, CorruptByteFailsOnlyTheChunkHoldingIt) {
  const uint64_t size = 3 * kChunk + 100;
  const uint64_t kChunks = 4;
  const uint64_t offsets[] = {0, kChunk - 1, kChunk, 2 * kChunk + 12345,
                              size - 1};
  for (uint64_t bad : offsets) {
    SCOPED_TRACE(absl::StrCat("corrupt byte at ", bad));
    const std::string data = RandomBytes(size, 1000 + bad);
    ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), data));
    harness_->Corrupt(digest, bad);
    const uint64_t bad_chunk = bad / kChunk;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader,
                         store().Open(digest));
    for (uint64_t c = 0; c < kChunks; ++c) {
      const uint64_t begin = c * kChunk;
      const uint64_t length = std::min(kChunk, size - begin);
      std::string out(length, '\0');
      absl::Status whole = reader->ReadAt(begin, length, out.data());
      // One byte of the chunk that is not the damaged one: still refused.
      const uint64_t probe = bad == begin ? begin + 1 : begin;
      char one;
      absl::Status byte = reader->ReadAt(probe, 1, &one);
      if (c == bad_chunk) {
        for (const absl::Status& st : {whole, byte}) {
          EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "chunk " << c;
          EXPECT_THAT(st.message(), HasSubstr(digest.Hex()));
          EXPECT_THAT(st.message(), HasSubstr(absl::StrCat("offset ", begin)));
        }
      } else {
        EXPECT_TRUE(whole.ok()) << "chunk " << c << ": " << whole;
        EXPECT_TRUE(out == data.substr(begin, length)) << "chunk " << c;
        EXPECT_TRUE(byte.ok()) << "chunk " << c << ": " << byte;
        EXPECT_EQ(one, data[probe]);
      }
    }
    std::string all(size, '\0');
    EXPECT_EQ(reader->ReadAt(0, size, all.data()).code(),
              absl::StatusCode::kDataLoss);
  }
}

// Healing: Commit keeps a stored copy (even a corrupt one), CommitReplacing
// replaces it with the verified upload; a reader opened before the
// replacement keeps reading what it opened.
TEST_P(BlobStoreConformanceTest, CommitReplacingReplacesACorruptBlob) {
  const uint64_t size = 2 * kChunk + 5;
  const std::string data = RandomBytes(size, 77);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), data));
  harness_->Corrupt(digest, kChunk + 3);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> before,
                       store().Open(digest));
  ASSERT_OK(Put(store(), data));  // Commit: the corrupt copy stays
  EXPECT_EQ(ReadAll(store(), digest).status().code(),
            absl::StatusCode::kDataLoss);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer, store().NewWriter());
  ASSERT_OK(writer->Append(data));
  ASSERT_OK(writer->CommitReplacing(digest));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), digest));
  EXPECT_TRUE(read == data);
  EXPECT_THAT(ListBlobs(store()), UnorderedElementsAre(Pair(digest, size)));
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
  std::string old(kChunk, '\0');
  EXPECT_EQ(before->ReadAt(kChunk, kChunk, old.data()).code(),
            absl::StatusCode::kDataLoss);

  // Of a digest not stored it is a plain commit; a wrong digest is refused
  // and replaces nothing.
  const std::string fresh = RandomBytes(100, 78);
  ASSERT_OK_AND_ASSIGN(writer, store().NewWriter());
  ASSERT_OK(writer->Append(fresh));
  ASSERT_OK(writer->CommitReplacing(DigestOfString(fresh)));
  EXPECT_TRUE(*ReadAll(store(), DigestOfString(fresh)) == fresh);
  ASSERT_OK_AND_ASSIGN(writer, store().NewWriter());
  ASSERT_OK(writer->Append(fresh));
  EXPECT_EQ(writer->CommitReplacing(digest).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(*ReadAll(store(), digest) == data);
  // Replacing survives a restart.
  ASSERT_OK(harness_->Restart());
  EXPECT_TRUE(*ReadAll(store(), digest) == data);
}

TEST_P(BlobStoreConformanceTest, RestartKeepsCommittedBlobsAndDropsPartials) {
  const std::string data = RandomBytes(kChunk + 17, 17);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(store(), data));
  const std::string partial = RandomBytes(kChunk, 18);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer, store().NewWriter());
  ASSERT_OK(writer->Append(partial));
  ASSERT_OK(writer->Sync());
  ASSERT_OK(writer->Append("unsynced"));

  ASSERT_OK(harness_->Restart());

  EXPECT_EQ(harness_->TemporaryCount(), 0u);
  EXPECT_THAT(ListBlobs(store()),
              UnorderedElementsAre(Pair(digest, data.size())));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), digest));
  EXPECT_TRUE(read == data);
  // The writer belonged to the crashed process: it cannot publish.
  EXPECT_FALSE(writer->Commit(DigestOfString(partial + "unsynced")).ok());
  writer.reset();
  EXPECT_THAT(ListBlobs(store()),
              UnorderedElementsAre(Pair(digest, data.size())));
}

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
    absl::StatusOr<std::unique_ptr<BlobWriter>> w = store_->NewWriter();
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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> leaked, store_->NewWriter());
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
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer = store_->NewWriter();
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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> synced, store->NewWriter());
  ASSERT_OK(synced->Append("synced"));
  ASSERT_OK(synced->Sync());
  ASSERT_OK(synced->Append(" and not"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> unsynced,
                       store->NewWriter());
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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> live, store->NewWriter());
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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> w, store.NewWriter());
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
  EXPECT_EQ(store.NewWriter().status(), injected);
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
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer = store.NewWriter();
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
