// The bucket as the record (server/storage/record_log.h) against a real
// radosgw: every sync commit of a MetadataStore becomes an object in the
// bucket before the commit returns, a fresh database rebuilt from those
// objects holds the same keys and values, a bucket that cannot be written
// refuses changes without losing the one already committed, and a data dir
// that does not match the bucket is refused naming the fix.
#include "server/storage/record_log.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/metadata_store.h"
#include "server/storage/s3_client.h"
#include "tests/support/s3_env.h"
#include "tests/support/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::ckptd::testing::LoadS3TestEnv;
using ::ckptd::testing::MakeTempDir;
using ::ckptd::testing::S3OptionsOf;
using ::ckptd::testing::S3TestEnv;
using ::ckptd::testing::UniqueS3Prefix;
using ::testing::HasSubstr;

TEST(RecordFrameTest, RoundTripsAndRefusesDamage) {
  const std::string batch = "a batch\0with a zero byte";
  const std::string frame = EncodeRecord(7, batch);
  auto decoded = DecodeRecord("k", 7, frame);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, batch);

  std::string flipped = frame;
  flipped.back() ^= 1;
  std::map<std::string, std::string> bad = {
      {"checksum mismatch", flipped},
      {"no record header", frame.substr(0, 20)},
      {"bytes follow", frame.substr(0, frame.size() - 1)},
      {"no record header", "XXXXXXXX" + frame.substr(8)},
  };
  for (const auto& [why, bytes] : bad) {
    auto st = DecodeRecord("s3://b/p/record/0000000000000007", 7, bytes);
    EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss) << why;
    EXPECT_THAT(st.status().message(), HasSubstr(why));
    EXPECT_THAT(st.status().message(), HasSubstr("record/0000000000000007"));
  }
  auto other = DecodeRecord("k", 8, frame);
  EXPECT_THAT(other.status().message(), HasSubstr("it holds record 7"));
}

class RecordLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!env_.missing.empty()) GTEST_SKIP() << env_.missing;
    auto client = S3Client::Create(S3OptionsOf(env_));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
  }

  std::unique_ptr<RecordLog> Log(S3Options options) {
    auto log = RecordLog::Open(std::move(options), prefix_);
    EXPECT_TRUE(log.ok()) << log.status();
    return log.ok() ? std::move(*log) : nullptr;
  }
  std::unique_ptr<RecordLog> Log() { return Log(S3OptionsOf(env_)); }

  std::unique_ptr<MetadataStore> Open(const std::string& dir) {
    auto store = MetadataStore::Open(dir);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Every key and value but the record bookkeeping (meta/, rec/).
  static std::map<std::string, std::string> Contents(MetadataStore& store) {
    std::map<std::string, std::string> all;
    EXPECT_TRUE(store
                    .Scan("", "",
                          [&](absl::string_view k, absl::string_view v) {
                            if (!absl::StartsWith(k, "meta/") &&
                                !absl::StartsWith(k, "rec/")) {
                              all.emplace(std::string(k), std::string(v));
                            }
                            return true;
                          })
                    .ok());
    return all;
  }

  std::vector<std::string> RecordKeys() {
    std::vector<std::string> keys;
    EXPECT_TRUE(client_
                    ->ListObjects(prefix_ + "/record/",
                                  [&](const S3Client::ObjectEntry& e) {
                                    keys.push_back(e.key);
                                  })
                    .ok());
    return keys;
  }

  static absl::Status Put(MetadataStore& store, const std::string& key,
                          const std::string& value, bool sync = true) {
    MetadataBatch batch;
    batch.Put(key, value);
    return store.Commit(batch, sync);
  }

  const S3TestEnv env_ = LoadS3TestEnv();
  const std::string prefix_ = UniqueS3Prefix("record");
  std::unique_ptr<S3Client> client_;
  const std::string tmp_ = MakeTempDir("ckptd-record");
};

TEST_F(RecordLogTest, CommitsAreRecordedAndARebuildGivesTheSameDatabase) {
  const std::string dir = tmp_ + "/a";
  auto store = Open(dir);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->AttachRecordLog(Log()).ok());
  for (int i = 0; i < 20; ++i) {
    MetadataBatch batch;
    batch.Put(absl::StrCat("run/r", i % 3), absl::StrCat("value ", i));
    batch.Put(absl::StrCat("ver/r/", i), std::string(1000 + i, 'x'));
    if (i % 4 == 3) batch.Delete(absl::StrCat("ver/r/", i - 2));
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  // Not recorded: commits without sync (state a restart recomputes).
  ASSERT_TRUE(Put(*store, "lease/r/1/d", "", /*sync=*/false).ok());
  EXPECT_EQ(store->recorded_seq(), 20u);
  const std::vector<std::string> keys = RecordKeys();
  ASSERT_EQ(keys.size(), 20u);
  EXPECT_EQ(keys.front(), prefix_ + "/record/0000000000000001");
  EXPECT_EQ(keys.back(), prefix_ + "/record/0000000000000014");
  auto expected = Contents(*store);
  expected.erase("lease/r/1/d");

  const std::string dir_b = tmp_ + "/b";
  auto rebuilt = Open(dir_b);
  ASSERT_NE(rebuilt, nullptr);
  auto log = Log();
  auto applied = rebuilt->RebuildFrom(*log);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 20u);
  EXPECT_EQ(Contents(*rebuilt), expected);
  // The rebuilt store goes on recording after the last record; the
  // original one (still open) is behind the bucket now.
  ASSERT_TRUE(rebuilt->AttachRecordLog(std::move(log)).ok());
  ASSERT_TRUE(Put(*rebuilt, "run/new", "1").ok());
  EXPECT_EQ(RecordKeys().size(), 21u);
  store.reset();
  store = Open(dir);
  absl::Status behind = store->AttachRecordLog(Log());
  EXPECT_EQ(behind.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(behind.message(), HasSubstr("another ckptd writes"));
  EXPECT_THAT(behind.message(), HasSubstr("--rebuild_index"));

  // A rebuild only goes into an empty database.
  auto again = rebuilt->RebuildFrom(*Log());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("is not empty"));
}

TEST_F(RecordLogTest, AnUnwritableBucketRefusesChangesAndLosesNone) {
  std::atomic<bool> down{false};
  S3Options options = S3OptionsOf(env_);
  options.max_attempts = 2;
  options.fault_hook = [&](absl::string_view call, bool& retryable) {
    retryable = true;
    return down.load() && call == "PutObject"
               ? absl::UnavailableError("the bucket is down (test)")
               : absl::OkStatus();
  };
  const std::string dir = tmp_ + "/a";
  auto store = Open(dir);
  ASSERT_TRUE(store->AttachRecordLog(Log(options)).ok());
  ASSERT_TRUE(Put(*store, "run/a", "1").ok());

  down = true;
  absl::Status st = Put(*store, "run/b", "2");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("committed on this node"));
  EXPECT_THAT(st.message(), HasSubstr("record/0000000000000002"));
  // Committed here all the same; the next change is refused while record 2
  // cannot be written, and is not made.
  EXPECT_EQ(*store->Get("run/b"), "2");
  st = Put(*store, "run/c", "3");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("nothing was changed"));
  EXPECT_FALSE(store->Get("run/c")->has_value());
  EXPECT_EQ(RecordKeys().size(), 1u);

  // A restart (the record of run/b only in the local database) writes it.
  store.reset();
  down = false;
  store = Open(dir);
  ASSERT_TRUE(store->AttachRecordLog(Log(options)).ok());
  EXPECT_EQ(RecordKeys().size(), 2u);
  ASSERT_TRUE(Put(*store, "run/c", "3").ok());
  EXPECT_EQ(RecordKeys().size(), 3u);

  auto rebuilt = Open(tmp_ + "/b");
  ASSERT_TRUE(rebuilt->RebuildFrom(*Log()).ok());
  EXPECT_EQ(Contents(*rebuilt), Contents(*store));
}

TEST_F(RecordLogTest, HistoryFromBeforeTheBucketBecomesRecordOne) {
  const std::string dir = tmp_ + "/a";
  auto store = Open(dir);
  ASSERT_TRUE(Put(*store, "run/old", "from before").ok());
  ASSERT_TRUE(Put(*store, "ver/old/1", "v1").ok());
  ASSERT_TRUE(store->AttachRecordLog(Log()).ok());
  EXPECT_EQ(RecordKeys().size(), 1u);
  ASSERT_TRUE(Put(*store, "ver/old/2", "v2").ok());

  auto rebuilt = Open(tmp_ + "/b");
  auto applied = rebuilt->RebuildFrom(*Log());
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 2u);
  EXPECT_EQ(Contents(*rebuilt), Contents(*store));
}

TEST_F(RecordLogTest, RecordsAfterAGapAreNotAppliedAndDamageIsNamed) {
  // Records 1, 2 and 4 (each puts one key), copied from a store's record
  // under another prefix: 3 went missing.
  auto log = Log();
  {
    auto store = Open(tmp_ + "/gen");
    const std::string gen_prefix = UniqueS3Prefix("record-gen");
    auto gen = RecordLog::Open(S3OptionsOf(env_), gen_prefix);
    ASSERT_TRUE(gen.ok()) << gen.status();
    ASSERT_TRUE(store->AttachRecordLog(std::move(*gen)).ok());
    for (const char* key : {"run/one", "run/two", "run/three", "run/four"}) {
      ASSERT_TRUE(Put(*store, key, "v").ok());
    }
    for (uint64_t seq : {1, 2, 4}) {
      auto bytes = client_->Get(
          absl::StrCat(gen_prefix, "/record/", absl::StrFormat("%016x", seq)));
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      auto batch = DecodeRecord("gen", seq, *bytes);
      ASSERT_TRUE(batch.ok()) << batch.status();
      ASSERT_TRUE(log->Put(seq, *batch).ok());
    }
  }
  auto rebuilt = Open(tmp_ + "/b");
  auto applied = rebuilt->RebuildFrom(*Log());
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 2u);
  EXPECT_TRUE(rebuilt->Get("run/two")->has_value());
  EXPECT_FALSE(rebuilt->Get("run/four")->has_value());

  // A damaged record stops the rebuild naming it; the rebuild resumes from
  // the start once the object is good again.
  const std::string key2 = prefix_ + "/record/0000000000000002";
  auto good = client_->Get(key2);
  ASSERT_TRUE(good.ok());
  std::string bad = *good;
  bad.back() ^= 1;
  const absl::string_view body[] = {bad};
  ASSERT_TRUE(client_->Put(key2, body).ok());
  auto damaged = Open(tmp_ + "/c");
  auto st = damaged->RebuildFrom(*Log());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.status().message(), HasSubstr("record/0000000000000002"));
  EXPECT_TRUE(*damaged->RebuildInterrupted());
  const absl::string_view fixed[] = {*good};
  ASSERT_TRUE(client_->Put(key2, fixed).ok());
  auto resumed = damaged->RebuildFrom(*Log());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_FALSE(*damaged->RebuildInterrupted());
  EXPECT_EQ(Contents(*damaged), Contents(*rebuilt));
}

}  // namespace
}  // namespace ckptd::storage
