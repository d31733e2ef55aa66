// The read cache (server/storage/cached_blob_store.h) in front of the S3
// store of a real radosgw: a first read fetches the whole blob, later ones
// are served locally; the least recently read go once the bytes pass the
// limit; a blob larger than the cache is never kept; a damaged cached copy
// is dropped and read from the bucket; a restart keeps what was cached.
// (The conformance suite runs over the cached store in s3_blob_store_test.)
#include "server/storage/cached_blob_store.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/s3_blob_store.h"
#include "server/storage/s3_client.h"
#include "tests/support/random_bytes.h"
#include "tests/support/s3_env.h"
#include "tests/support/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::ckptd::testing::LoadS3TestEnv;
using ::ckptd::testing::MakeTempDir;
using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::S3OptionsOf;
using ::ckptd::testing::S3TestEnv;
using ::ckptd::testing::UniqueS3Prefix;
using ::testing::HasSubstr;

class CachedBlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!env_.missing.empty()) GTEST_SKIP() << env_.missing;
    dir_ = MakeTempDir("ckptd-cache");
    auto remote = OpenS3BlobStore(
        {.s3 = S3OptionsOf(env_), .prefix = UniqueS3Prefix("cache")});
    ASSERT_TRUE(remote.ok()) << remote.status();
    remote_ = std::move(*remote);
  }
  void TearDown() override {
    cache_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  void OpenCache(uint64_t max_bytes) {
    cache_.reset();
    auto cache = OpenCachedBlobStore(
        remote_, {.dir = dir_ + "/cache", .max_bytes = max_bytes});
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(*cache);
  }

  // A blob of `size` random bytes, stored in the bucket.
  Digest Put(uint64_t size, std::string* bytes_out) {
    std::string bytes = RandomBytes(size, ++seed_);
    const Digest d = DigestOf(bytes.data(), bytes.size());
    auto w = remote_->NewWriter(d);
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->Append(bytes).ok());
    EXPECT_TRUE((*w)->Commit(d).ok());
    if (bytes_out != nullptr) *bytes_out = std::move(bytes);
    return d;
  }

  std::string Read(const Digest& d) {
    auto r = cache_->Open(d);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    std::string out((*r)->size(), '\0');
    absl::Status st = (*r)->ReadAt(0, out.size(), out.data());
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }

  std::string LocalFile(const Digest& d) const {
    return FileBlobPath(dir_ + "/cache", d);
  }

  S3TestEnv env_ = LoadS3TestEnv();
  std::string dir_;
  std::shared_ptr<BlobStore> remote_;
  std::unique_ptr<BlobStore> cache_;
  uint64_t seed_ = 0;
};

TEST_F(CachedBlobStoreTest, FirstReadFetchesLaterReadsAreLocal) {
  OpenCache(8 << 20);
  std::string a;
  const Digest da = Put(3 << 20, &a);
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).misses, 1u);
  EXPECT_TRUE(std::filesystem::exists(LocalFile(da)));
  EXPECT_EQ(Read(da), a);
  // A ranged read of the cached copy.
  auto r = cache_->Open(da);
  ASSERT_TRUE(r.ok());
  std::string part(1000, '\0');
  ASSERT_TRUE((*r)->ReadAt(12345, part.size(), part.data()).ok());
  EXPECT_EQ(part, a.substr(12345, 1000));
  const BlobCacheStats s = CachedBlobStoreStats(*cache_);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.blobs, 1u);
  EXPECT_EQ(s.bytes, 3u << 20);
  // Delete goes to the bucket and drops the copy.
  ASSERT_TRUE(cache_->Delete(da).ok());
  EXPECT_FALSE(std::filesystem::exists(LocalFile(da)));
  EXPECT_EQ(cache_->Open(da).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CachedBlobStoreTest, LeastRecentlyReadGoFirstAndLargeBlobsAreNotKept) {
  OpenCache(7 << 20);
  std::string a, b, c, big;
  const Digest da = Put(3 << 20, &a);
  const Digest db = Put(3 << 20, &b);
  const Digest dc = Put(3 << 20, &c);
  const Digest dbig = Put(8 << 20, &big);
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(Read(db), b);
  EXPECT_EQ(Read(da), a);  // a is now the most recent
  EXPECT_EQ(Read(dc), c);  // over 7 MiB: b goes
  EXPECT_TRUE(std::filesystem::exists(LocalFile(da)));
  EXPECT_FALSE(std::filesystem::exists(LocalFile(db)));
  EXPECT_TRUE(std::filesystem::exists(LocalFile(dc)));
  EXPECT_EQ(CachedBlobStoreStats(*cache_).evictions, 1u);
  EXPECT_EQ(Read(dbig), big);  // read from the bucket, not kept
  EXPECT_FALSE(std::filesystem::exists(LocalFile(dbig)));
  EXPECT_EQ(CachedBlobStoreStats(*cache_).bytes, 6u << 20);
}

TEST_F(CachedBlobStoreTest, ADamagedCopyIsDroppedAndTheBucketRead) {
  OpenCache(8 << 20);
  std::string a;
  const Digest da = Put(2 << 20, &a);
  EXPECT_EQ(Read(da), a);
  {
    std::fstream f(LocalFile(da),
                   std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekp(1000);
    f.put('\x77' ^ a[1000]);
  }
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).fallbacks, 1u);
  // The next read fetches a good copy again.
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).misses, 2u);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).fallbacks, 1u);
}

TEST_F(CachedBlobStoreTest, ARestartKeepsTheCopiesWithinTheLimit) {
  OpenCache(8 << 20);
  std::string a, b;
  const Digest da = Put(3 << 20, &a);
  const Digest db = Put(3 << 20, &b);
  EXPECT_EQ(Read(da), a);
  EXPECT_EQ(Read(db), b);
  OpenCache(8 << 20);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).blobs, 2u);
  EXPECT_EQ(Read(db), b);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).misses, 0u);
  OpenCache(4 << 20);  // smaller now: trimmed at open
  EXPECT_EQ(CachedBlobStoreStats(*cache_).blobs, 1u);
  EXPECT_EQ(CachedBlobStoreStats(*cache_).bytes, 3u << 20);
}

TEST_F(CachedBlobStoreTest, BadOptionsAreRefusedNamingTheFlag) {
  auto no_dir = OpenCachedBlobStore(remote_, {.dir = "", .max_bytes = 1});
  EXPECT_EQ(no_dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_dir.status().message(), HasSubstr("--cache_dir"));
  auto no_bytes =
      OpenCachedBlobStore(remote_, {.dir = dir_ + "/c", .max_bytes = 0});
  EXPECT_EQ(no_bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_bytes.status().message(), HasSubstr("--cache_bytes"));
  // One process per cache dir.
  OpenCache(1 << 20);
  auto second =
      OpenCachedBlobStore(remote_, {.dir = dir_ + "/cache", .max_bytes = 1});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another"));
  const std::string file = dir_ + "/a-file";
  std::ofstream(file) << "x";
  auto not_dir = OpenCachedBlobStore(remote_, {.dir = file, .max_bytes = 1});
  EXPECT_FALSE(not_dir.ok());
}

}  // namespace
}  // namespace ckptd::storage
