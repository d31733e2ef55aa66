// The S3 blob store against a real radosgw (tests/s3/ceph-cluster): the
// BlobStore conformance suite, then what only S3 has — multipart uploads,
// orphaned uploads aborted at start, faults at every S3 call, retries, and
// the errors of a bad configuration.
#include "server/storage/s3_blob_store.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "server/storage/blob_format.h"
#include "server/storage/cached_blob_store.h"
#include "server/storage/s3_client.h"
#include "tests/support/blob_store_conformance.h"
#include "tests/support/random_bytes.h"
#include "tests/support/s3_env.h"
#include "tests/support/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::ckptd::testing::LoadS3TestEnv;
using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::S3OptionsOf;
using ::ckptd::testing::S3TestEnv;
using ::ckptd::testing::UniqueS3Prefix;
using ::testing::HasSubstr;

// Parts just over one checksum chunk: most conformance blobs go up as
// multipart uploads whose part edges fall inside chunks.
constexpr uint64_t kPartSize = kBlobChecksumChunk + 4096;

// Removes every object and upload under `prefix`.
void Wipe(S3Client& client, const std::string& prefix) {
  std::vector<std::string> keys;
  EXPECT_TRUE(client
                  .ListObjects(prefix + "/",
                               [&](const S3Client::ObjectEntry& e) {
                                 keys.push_back(e.key);
                               })
                  .ok());
  for (const std::string& k : keys) EXPECT_TRUE(client.Delete(k).ok());
  std::vector<S3Client::UploadEntry> uploads;
  EXPECT_TRUE(client
                  .ListMultipartUploads(prefix + "/",
                                        [&](const S3Client::UploadEntry& u) {
                                          uploads.push_back(u);
                                        })
                  .ok());
  for (const auto& u : uploads) {
    EXPECT_TRUE(client.AbortMultipartUpload(u.key, u.upload_id).ok());
  }
}

size_t UploadsUnder(S3Client& client, const std::string& prefix) {
  size_t n = 0;
  absl::Status st = client.ListMultipartUploads(
      prefix + "/", [&](const S3Client::UploadEntry&) { ++n; });
  EXPECT_TRUE(st.ok()) << st;
  return n;
}

// The S3 store, or (`cached`) the S3 store behind the read cache.
class S3Harness : public StoreHarness {
 public:
  explicit S3Harness(bool cached)
      : env_(LoadS3TestEnv()),
        prefix_(UniqueS3Prefix("conformance")),
        cache_dir_(cached ? ckptd::testing::MakeTempDir("ckptd-s3-cache")
                          : "") {}
  ~S3Harness() override {
    store_.reset();
    if (admin_ != nullptr) Wipe(*admin_, prefix_);
    std::error_code ec;
    if (!cache_dir_.empty()) std::filesystem::remove_all(cache_dir_, ec);
  }
  std::string SkipReason() override { return env_.missing; }
  bool ReadersKeepReplacedBytes() override { return false; }

  absl::Status Init() override {
    absl::StatusOr<std::unique_ptr<S3Client>> admin =
        S3Client::Create(S3OptionsOf(env_));
    if (!admin.ok()) return admin.status();
    admin_ = *std::move(admin);
    return Open();
  }
  BlobStore& store() override { return *store_; }
  void Corrupt(const Digest& digest, uint64_t offset) override {
    const std::string key = S3BlobKey(prefix_, digest);
    absl::StatusOr<std::string> object = admin_->Get(key);
    ASSERT_TRUE(object.ok()) << object.status();
    ASSERT_LT(offset, object->size());
    (*object)[offset] ^= 0x5a;
    const absl::string_view body[] = {*object};
    ASSERT_TRUE(admin_->Put(key, body).ok());
    // The cached copy too (same format), if the blob was read before.
    if (cache_dir_.empty()) return;
    std::fstream f(FileBlobPath(cache_dir_, digest),
                   std::ios::in | std::ios::out | std::ios::binary);
    if (!f) return;
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
  }
  size_t TemporaryCount() override {
    return UploadsUnder(*admin_, prefix_) + S3BufferedWriterCount(*remote_);
  }
  absl::Status Restart() override {
    store_.reset();
    if (absl::Status st = Open(); !st.ok()) return st;
    return store_->RemoveTemporaries();
  }

 private:
  absl::Status Open() {
    S3BlobStoreOptions options{
        .s3 = S3OptionsOf(env_), .prefix = prefix_, .part_size = kPartSize};
    absl::StatusOr<std::unique_ptr<BlobStore>> store =
        OpenS3BlobStore(std::move(options));
    if (!store.ok()) return store.status();
    std::shared_ptr<BlobStore> remote = *std::move(store);
    remote_ = remote.get();
    if (cache_dir_.empty()) {
      store_ = std::move(remote);
      return absl::OkStatus();
    }
    absl::StatusOr<std::unique_ptr<BlobStore>> cached = OpenCachedBlobStore(
        std::move(remote), {.dir = cache_dir_, .max_bytes = 64 << 20});
    if (!cached.ok()) return cached.status();
    store_ = *std::move(cached);
    return absl::OkStatus();
  }

  const S3TestEnv env_;
  const std::string prefix_;
  const std::string cache_dir_;
  std::unique_ptr<S3Client> admin_;
  BlobStore* remote_ = nullptr;  // the S3 store (in store_)
  std::shared_ptr<BlobStore> store_;
};

INSTANTIATE_TEST_SUITE_P(
    AllStores, BlobStoreConformanceTest,
    ::testing::Values(
        Implementation{"S3", [] { return std::make_unique<S3Harness>(false); }},
        Implementation{"S3Cached",
                       [] { return std::make_unique<S3Harness>(true); }}),
    ImplementationName);

// ---------------------------------------------------------------------------
// What only the S3 store has.

class S3BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!env_.missing.empty()) GTEST_SKIP() << env_.missing;
    absl::StatusOr<std::unique_ptr<S3Client>> admin =
        S3Client::Create(S3OptionsOf(env_));
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = *std::move(admin);
  }
  void TearDown() override {
    if (admin_ != nullptr) Wipe(*admin_, prefix_);
  }

  absl::StatusOr<std::unique_ptr<BlobStore>> Open(
      std::function<absl::Status(absl::string_view, bool&)> hook = nullptr,
      int max_attempts = 6) {
    S3BlobStoreOptions options{
        .s3 = S3OptionsOf(env_), .prefix = prefix_, .part_size = kPartSize};
    options.s3.fault_hook = std::move(hook);
    options.s3.max_attempts = max_attempts;
    return OpenS3BlobStore(std::move(options));
  }

  const S3TestEnv env_ = LoadS3TestEnv();
  const std::string prefix_ = UniqueS3Prefix("store");
  std::unique_ptr<S3Client> admin_;
};

TEST_F(S3BlobStoreTest, LargeBlobGoesUpInPartsAndReadsBackInRanges) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobStore> store, Open());
  const std::string data = RandomBytes(9 * kPartSize + 12345, 1);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store, data, 300000));
  // The object is the stored form: data, checksums, footer.
  ASSERT_OK_AND_ASSIGN(std::optional<S3Client::ObjectInfo> info,
                       admin_->Head(S3BlobKey(prefix_, digest)));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->size, StoredBlobSize(data.size()));
  // A multipart object's ETag says how many parts it has: 10.
  EXPECT_THAT(info->etag, HasSubstr("-10"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobReader> reader, store->Open(digest));
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20; ++i) {
    const uint64_t off = rng() % data.size();
    const uint64_t len =
        1 + rng() % std::min<uint64_t>(3 << 20, data.size() - off);
    std::string out(len, '\0');
    ASSERT_OK(reader->ReadAt(off, len, out.data()));
    EXPECT_TRUE(out == data.substr(off, len)) << off << "+" << len;
  }
  EXPECT_EQ(UploadsUnder(*admin_, prefix_), 0u);
}

TEST_F(S3BlobStoreTest, OrphanedMultipartUploadsAreAbortedAtStart) {
  // What a killed ckptd leaves: an upload with a part, never completed.
  const std::string data = RandomBytes(kPartSize, 2);
  const Digest digest = DigestOfString(data);
  const std::string key = S3BlobKey(prefix_, digest);
  ASSERT_OK_AND_ASSIGN(std::string id, admin_->CreateMultipartUpload(key));
  const absl::string_view body[] = {data};
  ASSERT_OK(admin_->UploadPart(key, id, 1, body));
  // And one outside the store's prefix, which is not its business.
  const std::string other = prefix_ + "-other/blobs/x";
  ASSERT_OK_AND_ASSIGN(std::string other_id,
                       admin_->CreateMultipartUpload(other));
  ASSERT_EQ(UploadsUnder(*admin_, prefix_), 1u);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobStore> store, Open());
  ASSERT_OK(store->RemoveTemporaries());
  EXPECT_EQ(UploadsUnder(*admin_, prefix_), 0u);
  EXPECT_EQ(UploadsUnder(*admin_, prefix_ + "-other"), 1u);
  ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store->Stat(digest));
  EXPECT_EQ(size, std::nullopt);
  EXPECT_TRUE(ListBlobs(*store).empty());
  ASSERT_OK(admin_->AbortMultipartUpload(other, other_id));
}

// A fault at the k-th S3 call of a multipart Put, for every k: the blob is
// then whole or absent, and nothing of the failed upload is left once the
// store restarts.
TEST_F(S3BlobStoreTest, AFaultAtEveryS3CallLeavesTheBlobWholeOrAbsent) {
  const std::string data = RandomBytes(3 * kPartSize + 77, 3);
  const Digest digest = DigestOfString(data);
  std::atomic<int> calls{0};
  std::atomic<int> fail_at{0};
  std::vector<std::string> names;
  absl::Mutex names_mu;
  auto hook = [&](absl::string_view call, bool& retryable) -> absl::Status {
    retryable = false;
    {
      absl::MutexLock lock(&names_mu);
      names.emplace_back(call);
    }
    if (++calls == fail_at.load()) {
      return absl::UnavailableError(absl::StrCat("injected fault at ", call));
    }
    return absl::OkStatus();
  };
  // A clean run counts the calls.
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobStore> store, Open(hook));
    calls = 0;
    names.clear();
    ASSERT_OK(Put(*store, data));
    ASSERT_OK(store->Delete(digest));
  }
  const int total = calls.load();
  const std::vector<std::string> clean = names;
  // Head, Create, 3 parts, Head (present?), last part, Complete, Delete.
  ASSERT_GE(total, 7) << "calls of a clean multipart put";
  for (int k = 1; k <= total; ++k) {
    SCOPED_TRACE(absl::StrCat("fault at call ", k, " (", clean[k - 1], ")"));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobStore> store, Open(hook));
    calls = 0;
    fail_at = k;
    absl::StatusOr<Digest> put = Put(*store, data);
    fail_at = 0;
    store.reset();
    ASSERT_OK_AND_ASSIGN(store, Open());
    ASSERT_OK(store->RemoveTemporaries());
    EXPECT_EQ(UploadsUnder(*admin_, prefix_), 0u);
    ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> size, store->Stat(digest));
    if (put.ok()) {
      ASSERT_EQ(size, data.size());
    }
    if (size.has_value()) {
      ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(*store, digest));
      EXPECT_TRUE(read == data);
      ASSERT_OK(store->Delete(digest));
    }
  }
}

TEST_F(S3BlobStoreTest, TransientFailuresAreRetriedWithBackoff) {
  std::map<std::string, int> attempts;
  absl::Mutex mu;
  // Every call fails its first two attempts as a reset connection would.
  auto hook = [&](absl::string_view call, bool& retryable) -> absl::Status {
    absl::MutexLock lock(&mu);
    retryable = true;
    if (++attempts[std::string(call)] % 3 != 0) {
      return absl::UnavailableError("injected connection reset");
    }
    return absl::OkStatus();
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlobStore> store, Open(hook));
  const std::string data = RandomBytes(2 * kPartSize + 5, 4);
  ASSERT_OK_AND_ASSIGN(Digest digest, Put(*store, data));
  ASSERT_OK_AND_ASSIGN(std::string read, ReadAll(*store, digest));
  EXPECT_TRUE(read == data);
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(attempts["UploadPart"], 9);  // 3 parts x 3 attempts
    EXPECT_EQ(attempts["CompleteMultipartUpload"], 3);
    attempts.clear();
  }
  // With fewer attempts than failures the call gives up, naming the count.
  absl::StatusOr<std::unique_ptr<BlobStore>> few = Open(hook, 2);
  EXPECT_EQ(few.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(few.status().message(), HasSubstr("gave up after 2 attempts"));
}

TEST_F(S3BlobStoreTest, BadConfigurationFailsAtOpenNamingTheFix) {
  {
    S3BlobStoreOptions o{.s3 = S3OptionsOf(env_), .prefix = prefix_};
    o.s3.secret_access_key = "wrong-secret";
    absl::StatusOr<std::unique_ptr<BlobStore>> s = OpenS3BlobStore(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied)
        << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr("AWS_SECRET_ACCESS_KEY"));
  }
  {
    S3BlobStoreOptions o{.s3 = S3OptionsOf(env_), .prefix = prefix_};
    o.s3.bucket = "no-such-bucket-here";
    absl::StatusOr<std::unique_ptr<BlobStore>> s = OpenS3BlobStore(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition)
        << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr("no-such-bucket-here"));
  }
  {
    // A port nothing listens on.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
    ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    ::close(fd);
    S3BlobStoreOptions o{.s3 = S3OptionsOf(env_), .prefix = prefix_};
    o.s3.endpoint = absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port));
    o.s3.max_attempts = 2;
    absl::StatusOr<std::unique_ptr<BlobStore>> s = OpenS3BlobStore(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr(o.s3.endpoint));
  }
  {
    S3BlobStoreOptions o{.s3 = S3OptionsOf(env_), .prefix = prefix_};
    o.part_size = 1000;
    EXPECT_EQ(OpenS3BlobStore(o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

// ---------------------------------------------------------------------------
// Parsing and validation (no cluster needed).

TEST(S3LocationTest, ParsesBucketAndPrefix) {
  std::string bucket, prefix;
  ASSERT_OK(ParseS3Location("s3://ckpt-bucket", bucket, prefix));
  EXPECT_EQ(bucket, "ckpt-bucket");
  EXPECT_EQ(prefix, "");
  ASSERT_OK(ParseS3Location("s3://ckpt.bucket/team-a/run_1/", bucket, prefix));
  EXPECT_EQ(bucket, "ckpt.bucket");
  EXPECT_EQ(prefix, "team-a/run_1");
}

TEST(S3LocationTest, RefusesBadLocationsNamingThem) {
  for (const char* bad :
       {"", "ckpt-bucket", "http://ckpt-bucket", "s3://", "s3://ab",
        "s3://Upper", "s3://-dash", "s3://b_b", "s3://bucket//x",
        "s3://bucket/a/../b", "s3://bucket/a/./b", "s3://bucket/sp ace",
        "s3://bucket/q?x", "s3://bucket/%2e"}) {
    SCOPED_TRACE(bad);
    std::string bucket, prefix;
    absl::Status st = ParseS3Location(bad, bucket, prefix);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("s3://BUCKET/PREFIX"));
    EXPECT_THAT(st.message(), HasSubstr(absl::StrCat("'", bad, "'")));
  }
  std::string bucket, prefix;
  EXPECT_FALSE(
      ParseS3Location("s3://bucket/" + std::string(600, 'a'), bucket, prefix)
          .ok());
}

TEST(S3OptionsTest, RefusesBadOptionsNamingTheFlag) {
  S3Options good;
  good.endpoint = "http://127.0.0.1:7480";
  good.bucket = "bucket";
  good.access_key_id = "AK";
  good.secret_access_key = "SK";
  ASSERT_OK(ValidateS3Options(good));
  struct Case {
    std::function<void(S3Options&)> change;
    const char* says;
  };
  const Case cases[] = {
      {[](S3Options& o) { o.endpoint = "127.0.0.1:7480"; }, "--s3_endpoint"},
      {[](S3Options& o) { o.endpoint = "ftp://host"; }, "--s3_endpoint"},
      {[](S3Options& o) { o.endpoint = "http://host/bucket"; },
       "--s3_endpoint"},
      {[](S3Options& o) { o.endpoint = "http://user@host"; }, "--s3_endpoint"},
      {[](S3Options& o) { o.region = ""; }, "--s3_region"},
      {[](S3Options& o) { o.region = "us east"; }, "--s3_region"},
      {[](S3Options& o) { o.access_key_id = ""; }, "AWS_ACCESS_KEY_ID"},
      {[](S3Options& o) { o.secret_access_key = ""; }, "AWS_SECRET_ACCESS_KEY"},
      {[](S3Options& o) { o.secret_access_key = "a:b"; },
       "AWS_SECRET_ACCESS_KEY"},
      {[](S3Options& o) { o.access_key_id = "a\nb"; }, "AWS_ACCESS_KEY_ID"},
      {[](S3Options& o) { o.max_attempts = 0; }, "max_attempts"},
  };
  for (const Case& c : cases) {
    S3Options o = good;
    c.change(o);
    absl::Status st = ValidateS3Options(o);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.says;
    EXPECT_THAT(st.message(), HasSubstr(c.says));
  }
}

TEST(StoredBlobSizeTest, DataSizeIsRecoveredFromEveryStoredSize) {
  for (uint64_t data :
       {uint64_t{0}, uint64_t{1}, kBlobChecksumChunk - 1, kBlobChecksumChunk,
        kBlobChecksumChunk + 1, 7 * kBlobChecksumChunk + 9}) {
    EXPECT_EQ(DataSizeOfStoredBlob(StoredBlobSize(data)), data);
  }
  // Sizes no blob has: too small, or between two blobs' stored sizes.
  EXPECT_EQ(DataSizeOfStoredBlob(23), std::nullopt);
  EXPECT_EQ(DataSizeOfStoredBlob(25), std::nullopt);  // 1 byte needs 33
  EXPECT_EQ(DataSizeOfStoredBlob(StoredBlobSize(kBlobChecksumChunk) + 1),
            std::nullopt);
}

}  // namespace
}  // namespace ckptd::storage
