// The BlobStore conformance suite: what every implementation (file store,
// memory store, fault-injecting wrapper, S3 store) must do, as
// value-parameterized tests over a StoreHarness. A test binary links
// blob_store_conformance.cc and instantiates the suite with its harnesses:
//
//   INSTANTIATE_TEST_SUITE_P(AllStores, BlobStoreConformanceTest,
//                            ::testing::ValuesIn(...), ImplementationName);
#ifndef CKPTD_TESTS_SUPPORT_BLOB_STORE_CONFORMANCE_H_
#define CKPTD_TESTS_SUPPORT_BLOB_STORE_CONFORMANCE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage {

constexpr uint64_t kChunk = kBlobChecksumChunk;

inline absl::Status AsStatus(const absl::Status& s) { return s; }
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

Digest DigestOfString(std::string_view s);
// What a test passes to NewWriter when the blob it writes fits one S3 part
// (the conformance harness's parts are larger than a few chunks) or is never
// committed under it.
inline const Digest kAnyDigest = DigestOf("", 0);

// Uploads `data` in appends of `piece` bytes (0: one append) and commits it.
absl::StatusOr<Digest> Put(BlobStore& store, std::string_view data,
                           size_t piece = 0);
absl::StatusOr<std::string> ReadAll(BlobStore& store, const Digest& digest);
std::map<Digest, uint64_t> ListBlobs(BlobStore& store);

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
  // Non-empty when the store cannot be tested here (what it needs); the
  // suite then skips, saying so.
  virtual std::string SkipReason() { return ""; }
  // Whether a reader opened before CommitReplacing keeps reading the bytes
  // it opened (else its reads fail with ABORTED).
  virtual bool ReadersKeepReplacedBytes() { return true; }
};

struct Implementation {
  std::string name;
  std::function<std::unique_ptr<StoreHarness>()> make;
};

void PrintTo(const Implementation& impl, std::ostream* os);
std::string ImplementationName(
    const ::testing::TestParamInfo<Implementation>& info);

class BlobStoreConformanceTest
    : public ::testing::TestWithParam<Implementation> {
 protected:
  void SetUp() override {
    harness_ = GetParam().make();
    if (std::string why = harness_->SkipReason(); !why.empty()) {
      GTEST_SKIP() << why;
    }
    ASSERT_OK(harness_->Init());
  }
  BlobStore& store() { return harness_->store(); }

  std::unique_ptr<StoreHarness> harness_;
};

}  // namespace ckptd::storage

#endif  // CKPTD_TESTS_SUPPORT_BLOB_STORE_CONFORMANCE_H_
