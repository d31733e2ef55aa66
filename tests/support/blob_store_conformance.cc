#include "tests/support/blob_store_conformance.h"

#include <algorithm>
#include <cstdint>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"
#include "tests/support/random_bytes.h"

namespace ckptd::storage {

using ::ckptd::testing::RandomBytes;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

Digest DigestOfString(std::string_view s) {
  return DigestOf(s.data(), s.size());
}

absl::StatusOr<Digest> Put(BlobStore& store, std::string_view data,
                           size_t piece) {
  absl::StatusOr<std::unique_ptr<BlobWriter>> writer =
      store.NewWriter(DigestOfString(data));
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

void PrintTo(const Implementation& impl, std::ostream* os) { *os << impl.name; }

std::string ImplementationName(
    const ::testing::TestParamInfo<Implementation>& info) {
  return info.param.name;
}

namespace {

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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer,
                       store().NewWriter(claimed));
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
                       store().NewWriter(DigestOfString(data)));
  ASSERT_OK(committed->Append(data));
  ASSERT_OK(committed->Commit(DigestOfString(data)));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> abandoned,
                       store().NewWriter(kAnyDigest));
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
                         store().NewWriter(kAnyDigest));
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
  const std::string all = a + b;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer,
                       store().NewWriter(DigestOfString(all)));
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
// replaces it with the verified upload.
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

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer,
                       store().NewWriter(digest));
  ASSERT_OK(writer->Append(data));
  ASSERT_OK(writer->CommitReplacing(digest));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(store(), digest));
  EXPECT_TRUE(read == data);
  EXPECT_THAT(ListBlobs(store()), UnorderedElementsAre(Pair(digest, size)));
  EXPECT_EQ(harness_->TemporaryCount(), 0u);
  std::string old(kChunk, '\0');
  // A reader opened before keeps the old bytes (files), or fails rather
  // than mix two objects (S3).
  EXPECT_EQ(before->ReadAt(kChunk, kChunk, old.data()).code(),
            harness_->ReadersKeepReplacedBytes() ? absl::StatusCode::kDataLoss
                                                 : absl::StatusCode::kAborted);

  // Of a digest not stored it is a plain commit; a wrong digest is refused
  // and replaces nothing.
  const std::string fresh = RandomBytes(100, 78);
  ASSERT_OK_AND_ASSIGN(writer, store().NewWriter(DigestOfString(fresh)));
  ASSERT_OK(writer->Append(fresh));
  ASSERT_OK(writer->CommitReplacing(DigestOfString(fresh)));
  EXPECT_TRUE(*ReadAll(store(), DigestOfString(fresh)) == fresh);
  ASSERT_OK_AND_ASSIGN(writer, store().NewWriter(digest));
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
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobWriter> writer,
                       store().NewWriter(kAnyDigest));
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

}  // namespace
}  // namespace ckptd::storage
