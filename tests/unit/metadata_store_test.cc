// The RocksDB key schema of server/storage/metadata_store.h (numbers sort
// numerically under byte-wise comparison; one run's prefix never captures
// another run's keys; VersionFromKey) and a real MetadataStore in a temp dir
// (Scan order, start and early stop; Last; batches; reopen; the schema and
// LOCK checks).
#include "server/storage/metadata_store.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// Ascending, with every hex-digit-count boundary where a decimal or
// unpadded encoding would sort wrongly (9 < 10, 255 < 256, ...).
const uint64_t kAscending[] = {0,
                               1,
                               9,
                               10,
                               15,
                               16,
                               99,
                               100,
                               255,
                               256,
                               4095,
                               4096,
                               65535,
                               65536,
                               (uint64_t{1} << 32) - 1,
                               uint64_t{1} << 32,
                               uint64_t{1} << 63,
                               kU64Max - 1,
                               kU64Max};

TEST(MetadataKeysTest, Hex16) {
  struct Case {
    uint64_t n;
    const char* want;
  };
  const Case cases[] = {
      {0, "0000000000000000"},       {9, "0000000000000009"},
      {10, "000000000000000a"},      {255, "00000000000000ff"},
      {256, "0000000000000100"},     {uint64_t{1} << 32, "0000000100000000"},
      {kU64Max, "ffffffffffffffff"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(keys::Hex16(c.n), c.want) << c.n;
  }
}

// Keys with a number in them, one generator per key kind.
struct NumberedKey {
  const char* case_name;
  std::function<std::string(uint64_t)> key;
};

std::vector<NumberedKey> NumberedKeys() {
  return {
      {"Version", [](uint64_t n) { return keys::Version("run", n); }},
      {"Manifest version",
       [](uint64_t n) { return keys::Manifest("run", n, 0); }},
      {"Manifest rank",
       [](uint64_t n) {
         return keys::Manifest("run", 7, static_cast<uint32_t>(n));
       }},
      {"AliasEvent", [](uint64_t n) { return keys::AliasEvent("run", n); }},
      {"Lease version",
       [](uint64_t n) {
         return keys::Lease("run", n, "00112233445566778899aabbccddeeff");
       }},
  };
}

TEST(MetadataKeysTest, NumbersSortNumericallyAsBytes) {
  for (const NumberedKey& k : NumberedKeys()) {
    const bool is_rank = absl::StrContains(k.case_name, "rank");
    std::vector<std::string> keys;
    for (uint64_t n : kAscending) {
      if (is_rank && n > std::numeric_limits<uint32_t>::max()) continue;
      keys.push_back(k.key(n));
    }
    for (size_t i = 1; i < keys.size(); ++i) {
      // std::string compares as unsigned bytes, as RocksDB's default
      // BytewiseComparator does.
      EXPECT_LT(keys[i - 1], keys[i]) << k.case_name;
    }
  }
}

// Run names chosen to share prefixes and to sort around '/' (0x2f):
// '-' (0x2d) and '.' (0x2e) sort before it, '0' and letters after.
const char* const kRuns[] = {"a", "a-b", "a.b", "a_b", "ab", "a0", "A", "b"};

// Every key kind for one run.
std::vector<std::string> KeysOfRun(const std::string& run) {
  return {keys::Run(run),
          keys::Seq(run),
          keys::Version(run, 1),
          keys::Version(run, 16),
          keys::Manifest(run, 1, 0),
          keys::Manifest(run, 16, 1),
          keys::Pending(run, 5),
          keys::Pending(run, -5),
          keys::Alias(run, "last"),
          keys::Alias(run, "prod"),
          keys::AliasEvent(run, 1),
          keys::Lease(run, 1, "00112233445566778899aabbccddeeff"),
          keys::Lease(run, 16, "ffeeddccbbaa99887766554433221100")};
}

TEST(MetadataKeysTest, PrefixesCaptureOnlyTheirOwnRunAndKind) {
  struct Prefix {
    const char* case_name;
    std::function<std::string(const std::string&)> prefix;
    // Which keys of its own run the prefix must capture.
    std::function<bool(const std::string& key, const std::string& run)> owns;
  };
  const Prefix prefixes[] = {
      {"VersionPrefix",
       [](const std::string& r) { return keys::VersionPrefix(r); },
       [](const std::string& key, const std::string& r) {
         return key == keys::Version(r, 1) || key == keys::Version(r, 16);
       }},
      {"ManifestPrefix(1)",
       [](const std::string& r) { return keys::ManifestPrefix(r, 1); },
       [](const std::string& key, const std::string& r) {
         return key == keys::Manifest(r, 1, 0);
       }},
      {"AliasPrefix", [](const std::string& r) { return keys::AliasPrefix(r); },
       [](const std::string& key, const std::string& r) {
         return key == keys::Alias(r, "last") || key == keys::Alias(r, "prod");
       }},
      {"AliasEventPrefix",
       [](const std::string& r) { return keys::AliasEventPrefix(r); },
       [](const std::string& key, const std::string& r) {
         return key == keys::AliasEvent(r, 1);
       }},
      {"LeasePrefix(1)",
       [](const std::string& r) { return keys::LeasePrefix(r, 1); },
       [](const std::string& key, const std::string& r) {
         return key == keys::Lease(r, 1, "00112233445566778899aabbccddeeff");
       }},
  };
  for (const Prefix& p : prefixes) {
    for (const std::string scanned : kRuns) {
      const std::string prefix = p.prefix(scanned);
      for (const std::string other : kRuns) {
        for (const std::string& key : KeysOfRun(other)) {
          const bool want = other == scanned && p.owns(key, other);
          EXPECT_EQ(absl::StartsWith(key, prefix), want)
              << p.case_name << "('" << scanned << "') vs " << key;
        }
      }
    }
  }
}

TEST(MetadataKeysTest, TablePrefixesCaptureOnlyTheirTable) {
  struct Case {
    const char* case_name;
    absl::string_view prefix;
    std::function<bool(size_t index)> owns;  // index into KeysOfRun
  };
  const Case cases[] = {
      {"kRunPrefix", keys::kRunPrefix, [](size_t i) { return i == 0; }},
      {"kManifestPrefix", keys::kManifestPrefix,
       [](size_t i) { return i == 4 || i == 5; }},
      {"kLeasePrefix", keys::kLeasePrefix,
       [](size_t i) { return i == 11 || i == 12; }},
  };
  for (const Case& c : cases) {
    for (const std::string run : kRuns) {
      const std::vector<std::string> all = KeysOfRun(run);
      for (size_t i = 0; i < all.size(); ++i) {
        EXPECT_EQ(absl::StartsWith(all[i], c.prefix), c.owns(i))
            << c.case_name << " vs " << all[i];
      }
    }
  }
}

TEST(MetadataKeysTest, VersionFromKey) {
  struct Case {
    const char* case_name;
    std::string key;
    std::optional<uint64_t> want;
  };
  const Case cases[] = {
      {"version 1", keys::Version("run", 1), 1},
      {"version 255", keys::Version("a-b", 255), 255},
      {"version 256", keys::Version("a.b", 256), 256},
      {"largest", keys::Version("r", kU64Max), kU64Max},
      {"zero", keys::Version("r", 0), 0},
      {"128-character run", keys::Version(std::string(128, 'r'), 42), 42},
      {"empty", "", std::nullopt},
      {"no slash", "0000000000000001", std::nullopt},
      {"prefix only", keys::VersionPrefix("run"), std::nullopt},
      {"15 digits", "ver/run/000000000000001", std::nullopt},
      {"17 digits", "ver/run/00000000000000001", std::nullopt},
      {"decimal", "ver/run/1", std::nullopt},
      {"not hex", "ver/run/000000000000000g", std::nullopt},
      {"trailing slash", keys::Version("run", 1) + "/", std::nullopt},
      {"manifest key (8-digit rank last)", keys::Manifest("run", 1, 0),
       std::nullopt},
      {"lease key (digest last)",
       keys::Lease("run", 1, "00112233445566778899aabbccddeeff"), std::nullopt},
      {"negative", "ver/run/-000000000000001", std::nullopt},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(keys::VersionFromKey(c.key), c.want) << c.case_name;
  }
  // Every key Version() makes parses back.
  for (uint64_t n : kAscending) {
    EXPECT_EQ(keys::VersionFromKey(keys::Version("run", n)), n) << n;
  }
}

// ---------------------------------------------------------------------------
// A real store

class MetadataStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::ckptd::testing::MakeTempDir("ckptd-metadata-test");
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Reopen() {
    store_.reset();
    auto store = MetadataStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void PutAll(const std::vector<std::string>& keys) {
    MetadataBatch batch;
    for (const std::string& k : keys)
      batch.Put(k, absl::StrCat("value of ", k));
    ASSERT_TRUE(store_->Commit(batch).ok());
  }

  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
};

// The versions stored for each run below (written out of order).
const uint64_t kStoredVersions[] = {256, 1, 4096, 10, 255, 9, kU64Max};

std::vector<std::string> VersionKeys(const std::string& run,
                                     std::vector<uint64_t> versions) {
  std::vector<std::string> out;
  for (uint64_t v : versions) out.push_back(keys::Version(run, v));
  return out;
}

TEST_F(MetadataStoreTest, ScanOrderStartAndStop) {
  std::vector<std::string> all;
  for (const std::string run : kRuns) {
    for (uint64_t v : kStoredVersions) all.push_back(keys::Version(run, v));
    all.push_back(keys::Alias(run, "last"));
    all.push_back(keys::Manifest(run, 1, 0));
  }
  PutAll(all);

  const std::vector<uint64_t> sorted = {1, 9, 10, 255, 256, 4096, kU64Max};
  struct Case {
    const char* case_name;
    std::string prefix;
    std::string start;
    size_t stop_after;  // fn returns false after this many keys
    std::vector<std::string> want;
  };
  const Case cases[] = {
      {"all versions of a, in numeric order", keys::VersionPrefix("a"), "", 100,
       VersionKeys("a", sorted)},
      {"a-b sorts before a/ but is separate", keys::VersionPrefix("a-b"), "",
       100, VersionKeys("a-b", sorted)},
      {"ab sorts after a/ but is separate", keys::VersionPrefix("ab"), "", 100,
       VersionKeys("ab", sorted)},
      {"start at version 10", keys::VersionPrefix("a"), keys::Version("a", 10),
       100, VersionKeys("a", {10, 255, 256, 4096, kU64Max})},
      {"start between stored versions", keys::VersionPrefix("a"),
       keys::Version("a", 11), 100,
       VersionKeys("a", {255, 256, 4096, kU64Max})},
      {"start at the last", keys::VersionPrefix("b"),
       keys::Version("b", kU64Max), 100, VersionKeys("b", {kU64Max})},
      {"start past the prefix",
       keys::VersionPrefix("a"),
       keys::VersionPrefix("a") + "g",
       100,
       {}},
      {"fn stops after two", keys::VersionPrefix("a.b"), "", 2,
       VersionKeys("a.b", {1, 9})},
      {"fn stops after two, from a start", keys::VersionPrefix("a_b"),
       keys::Version("a_b", 255), 2, VersionKeys("a_b", {255, 256})},
      {"a run that does not exist", keys::VersionPrefix("zz"), "", 100, {}},
      {"one version's manifests",
       keys::ManifestPrefix("a0", 1),
       "",
       100,
       {keys::Manifest("a0", 1, 0)}},
      {"another table",
       keys::AliasPrefix("A"),
       "",
       100,
       {keys::Alias("A", "last")}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> got;
    absl::Status st = store_->Scan(
        c.prefix, c.start, [&](absl::string_view key, absl::string_view value) {
          EXPECT_EQ(value, absl::StrCat("value of ", key)) << c.case_name;
          got.emplace_back(key);
          return got.size() < c.stop_after;
        });
    ASSERT_TRUE(st.ok()) << c.case_name << ": " << st;
    EXPECT_EQ(got, c.want) << c.case_name;
  }
}

TEST_F(MetadataStoreTest, Last) {
  std::vector<std::string> all;
  for (const std::string run : kRuns) {
    if (std::string(run) == "a0") continue;  // a run with no versions
    for (uint64_t v : kStoredVersions) {
      if (run == std::string("A") && v == kU64Max) continue;
      all.push_back(keys::Version(run, v));
    }
    all.push_back(keys::AliasEvent(run, 3));
  }
  all.push_back(keys::AliasEvent("a0", 1));
  PutAll(all);

  struct Case {
    const char* case_name;
    std::string prefix;
    std::optional<std::string> want;
  };
  const Case cases[] = {
      {"a", keys::VersionPrefix("a"), keys::Version("a", kU64Max)},
      {"a-b (the next key is a.b's)", keys::VersionPrefix("a-b"),
       keys::Version("a-b", kU64Max)},
      {"ab", keys::VersionPrefix("ab"), keys::Version("ab", kU64Max)},
      {"A tops out below 2^64-1", keys::VersionPrefix("A"),
       keys::Version("A", 4096)},
      {"b: the last run in the table", keys::VersionPrefix("b"),
       keys::Version("b", kU64Max)},
      {"a0 has no versions (a's are just before)", keys::VersionPrefix("a0"),
       std::nullopt},
      {"a run that does not exist", keys::VersionPrefix("zz"), std::nullopt},
      {"a prefix before every key", keys::VersionPrefix("0"), std::nullopt},
      {"alias events of a0", keys::AliasEventPrefix("a0"),
       keys::AliasEvent("a0", 1)},
      {"a whole table", std::string(keys::kRunPrefix), std::nullopt},
  };
  for (const Case& c : cases) {
    auto got = store_->Last(c.prefix);
    ASSERT_TRUE(got.ok()) << c.case_name << ": " << got.status();
    if (!c.want.has_value()) {
      EXPECT_FALSE(got->has_value()) << c.case_name << ": " << (*got)->first;
      continue;
    }
    ASSERT_TRUE(got->has_value()) << c.case_name;
    EXPECT_EQ((*got)->first, *c.want) << c.case_name;
    EXPECT_EQ((*got)->second, absl::StrCat("value of ", *c.want))
        << c.case_name;
  }
}

TEST_F(MetadataStoreTest, BatchesGetsAndReopen) {
  v1::VersionInfo info;
  info.set_run("a");
  info.set_version(3);
  info.set_state(v1::COMMITTED);
  MetadataBatch batch;
  EXPECT_TRUE(batch.empty());
  batch.Put(keys::Version("a", 3), info);
  batch.Put(keys::Seq("a"), "3");
  batch.Put(keys::Pending("a", 30), "3");
  EXPECT_FALSE(batch.empty());
  ASSERT_TRUE(store_->Commit(batch).ok());

  MetadataBatch second;
  second.Delete(keys::Pending("a", 30));
  second.Put(keys::Seq("a"), "4");
  ASSERT_TRUE(store_->Commit(second).ok());

  for (int open = 0; open < 2; ++open) {
    const std::string case_name = open == 0 ? "before reopen" : "after reopen";
    v1::VersionInfo got;
    auto found = store_->GetProto(keys::Version("a", 3), &got);
    ASSERT_TRUE(found.ok()) << case_name << ": " << found.status();
    EXPECT_TRUE(*found) << case_name;
    EXPECT_EQ(got.SerializeAsString(), info.SerializeAsString()) << case_name;
    auto seq = store_->Get(keys::Seq("a"));
    ASSERT_TRUE(seq.ok()) << case_name;
    EXPECT_EQ(*seq, std::optional<std::string>("4")) << case_name;
    auto pending = store_->Get(keys::Pending("a", 30));
    ASSERT_TRUE(pending.ok()) << case_name;
    EXPECT_EQ(*pending, std::nullopt) << case_name;
    auto absent = store_->GetProto(keys::Version("a", 4), &got);
    ASSERT_TRUE(absent.ok()) << case_name;
    EXPECT_FALSE(*absent) << case_name;
    Reopen();
  }
}

TEST_F(MetadataStoreTest, AValueThatDoesNotParseIsDataLoss) {
  MetadataBatch batch;
  batch.Put(keys::Version("a", 1), std::string("\xff\xff\xff", 3));
  ASSERT_TRUE(store_->Commit(batch).ok());
  v1::VersionInfo info;
  auto got = store_->GetProto(keys::Version("a", 1), &info);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr(keys::Version("a", 1)));
}

TEST_F(MetadataStoreTest, ASecondOpenerIsRefused) {
  auto second = MetadataStore::Open(dir_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition)
      << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(dir_));
}

TEST_F(MetadataStoreTest, AnotherSchemaIsRefused) {
  MetadataBatch batch;
  batch.Put("meta/schema", "2");
  ASSERT_TRUE(store_->Commit(batch).ok());
  store_.reset();
  auto reopened = MetadataStore::Open(dir_);
  ASSERT_FALSE(reopened.ok());
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kFailedPrecondition)
      << reopened.status();
  EXPECT_THAT(reopened.status().message(), HasSubstr("schema '2'"));
}

}  // namespace
}  // namespace ckptd::storage
