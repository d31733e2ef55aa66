// Integrity tests over a real RocksDB and a real file blob store in a temp
// dir: a byte flipped in a stored blob file is found by a read, Verify or
// the scrub, the blob is quarantined (it no longer counts as present, also
// after a restart), a re-upload of the same bytes heals every version that
// uses it, and `rm --force` moves `last` and `best`.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/error_reason.h"
#include "server/core/repository.h"
#include "tests/support/file_bytes.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

using ::ckptd::testing::FlipFileByte;

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

// Generous: only a broken scrub waits this long; a working one is done in
// well under a second.
constexpr absl::Duration kPollDeadline = absl::Seconds(120);

std::string RandomBytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

v1::ManifestEntry Root() {
  v1::ManifestEntry e;
  e.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  return e;
}

// A manifest with uint8 tensors, one per (key, blob) pair, each the whole
// blob.
v1::ShardManifest Tensors(
    const std::vector<std::pair<std::string, std::pair<Digest, uint64_t>>>&
        tensors) {
  v1::ShardManifest m;
  *m.add_entries() = Root();
  v1::ManifestEntry* model = m.add_entries();
  model->add_path()->set_key("model");
  model->mutable_container()->set_kind(v1::ContainerInfo::DICT);
  for (const auto& [key, blob] : tensors) {
    v1::ManifestEntry* e = m.add_entries();
    e->add_path()->set_key("model");
    e->add_path()->set_key(key);
    v1::TensorInfo* t = e->mutable_tensor();
    t->set_dtype(v1::UINT8);
    t->add_shape(static_cast<int64_t>(blob.second));
    t->set_byte_length(blob.second);
    t->set_blob_digest(std::string(blob.first.AsBytes()));
  }
  return m;
}

class IntegrityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ckptd::testing::MakeTempDir("ckptd-integrity");
    Reopen();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen(RepositoryOptions options = {}) {
    repo_.reset();
    auto repo = Repository::OpenDataDir(dir_, options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = std::move(*repo);
  }

  std::string BlobPath(const Digest& d) const {
    const std::string hex = d.Hex();
    return absl::StrCat(dir_, "/blobs/", hex.substr(0, 2), "/", hex);
  }

  uint64_t Begin(const std::string& run, int64_t step) {
    v1::BeginVersionRequest req;
    req.set_run(run);
    req.set_step(step);
    auto resp = repo_->BeginVersion(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->version() : 0;
  }

  // The digests FindMissingBlobs reports missing to (run, version).
  std::vector<Digest> Missing(const std::string& run, uint64_t version,
                              const std::vector<Digest>& digests) {
    v1::FindMissingBlobsRequest req;
    req.set_run(run);
    req.set_version(version);
    for (const Digest& d : digests) req.add_digests(std::string(d.AsBytes()));
    auto resp = repo_->FindMissingBlobs(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    std::vector<Digest> out;
    if (!resp.ok()) return out;
    for (const std::string& m : resp->missing()) {
      out.push_back(*DigestFromBytes(m));
    }
    return out;
  }

  absl::Status Upload(const std::string& run, uint64_t version,
                      const std::string& bytes) {
    Digest d = DigestOf(bytes.data(), bytes.size());
    auto up = repo_->StartBlobUpload(run, version, d, bytes.size(), 0);
    if (!up.ok()) return up.status();
    if (absl::Status st = (*up)->Append(0, bytes); !st.ok()) return st;
    return (*up)->Finish();
  }

  absl::StatusOr<v1::VersionInfo> Commit(
      const std::string& run, uint64_t version, const v1::ShardManifest& m,
      std::map<std::string, double> metrics = {}) {
    v1::CommitShardRequest req;
    req.set_run(run);
    req.set_version(version);
    *req.mutable_manifest() = m;
    for (const auto& [k, v] : metrics) (*req.mutable_metrics())[k] = v;
    return repo_->CommitShard(req, Actor{"trainer"});
  }

  // A save the way a client does it: FindMissingBlobs, upload what is
  // missing, commit. Returns the version and the bytes it uploaded.
  std::pair<uint64_t, uint64_t> Save(
      const std::string& run, int64_t step,
      const std::vector<std::pair<std::string, std::string>>& tensors,
      std::map<std::string, double> metrics = {}) {
    const uint64_t v = Begin(run, step);
    std::vector<Digest> digests;
    std::vector<std::pair<std::string, std::pair<Digest, uint64_t>>> entries;
    for (const auto& [key, bytes] : tensors) {
      Digest d = DigestOf(bytes.data(), bytes.size());
      digests.push_back(d);
      entries.push_back({key, {d, bytes.size()}});
    }
    uint64_t uploaded = 0;
    for (const Digest& d : Missing(run, v, digests)) {
      for (const auto& [key, bytes] : tensors) {
        if (DigestOf(bytes.data(), bytes.size()) != d) continue;
        EXPECT_TRUE(Upload(run, v, bytes).ok());
        uploaded += bytes.size();
        break;
      }
    }
    auto info = Commit(run, v, Tensors(entries), metrics);
    EXPECT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->state(), v1::COMMITTED);
    return {v, uploaded};
  }

  // Every byte of blob `d` as version (run, version) reads it.
  absl::StatusOr<std::string> Read(const std::string& run, uint64_t version,
                                   const Digest& d) {
    auto lease = repo_->LeaseForRead(run, version);
    if (!lease.ok()) return lease.status();
    if (absl::Status st = (*lease)->CheckIntact({d}); !st.ok()) return st;
    auto reader = (*lease)->Open(d);
    if (!reader.ok()) return reader.status();
    std::string out((*reader)->size(), '\0');
    if (absl::Status st = (*reader)->ReadAt(0, out.size(), out.data());
        !st.ok()) {
      return st;
    }
    return out;
  }

  absl::StatusOr<uint64_t> RefTarget(const std::string& run,
                                     const std::string& ref) {
    v1::GetVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    auto resp = repo_->GetVersion(req);
    if (!resp.ok()) return resp.status();
    return resp->info().version();
  }

  absl::StatusOr<v1::VerifyResponse> Verify(const std::string& run,
                                            const std::string& ref = "") {
    v1::VerifyRequest req;
    req.set_run(run);
    req.set_ref(ref);
    return repo_->Verify(req);
  }

  std::string dir_;
  std::unique_ptr<Repository> repo_;
};

// The case: a flipped byte, found by a read, then a re-save of the
// same state. The re-save uploads the bytes again, and afterwards the old
// version and the new one read back bit-identical.
TEST_F(IntegrityTest, FlippedByteFoundByAReadIsHealedByTheNextSave) {
  const std::string w = RandomBytes((2 << 20) + 77, 1);
  const std::string b = RandomBytes(1000, 2);
  const Digest dw = DigestOf(w.data(), w.size());
  const Digest db = DigestOf(b.data(), b.size());
  auto [v1, sent1] = Save("r", 1, {{"w", w}, {"b", b}});
  EXPECT_EQ(sent1, w.size() + b.size());

  FlipFileByte(BlobPath(dw), (1 << 20) + 5);
  absl::StatusOr<std::string> bad = Read("r", v1, dw);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_THAT(bad.status().message(), HasSubstr("r@1"));
  EXPECT_THAT(bad.status().message(), HasSubstr("tensor 'model.w'"));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr(dir_)));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("/blobs/")));
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 1u);
  // The undamaged tensor of the same version still reads.
  EXPECT_EQ(*Read("r", v1, db), b);
  // A second read fails before touching the file.
  EXPECT_EQ(Read("r", v1, dw).status().code(), absl::StatusCode::kDataLoss);

  // The same state again: the damaged blob counts as missing, so it is
  // uploaded; the intact one is deduplicated.
  auto [v2, sent2] = Save("r", 2, {{"w", w}, {"b", b}});
  EXPECT_EQ(sent2, w.size());
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  EXPECT_TRUE(*Read("r", v2, dw) == w);
  EXPECT_EQ(*Read("r", v2, db), b);
  // Healed for good: nothing is quarantined after a restart.
  Reopen();
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  auto [v3, sent3] = Save("r", 3, {{"w", w}, {"b", b}});
  EXPECT_EQ(sent3, 0u);
  (void)v3;
}

TEST_F(IntegrityTest, QuarantineIsMissingForEveryRunAndSurvivesARestart) {
  const std::string w = RandomBytes(5000, 3);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("a", 1, {{"w", w}});
  Save("b", 1, {{"w", w}});
  FlipFileByte(BlobPath(dw), 10);
  auto report = Verify("a");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_THAT(report->errors(), SizeIs(1));
  Reopen();
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 1u);
  // Missing to a pending version of either run (the blob is shared).
  for (const std::string run : {"a", "b"}) {
    const uint64_t v = Begin(run, 2);
    EXPECT_THAT(Missing(run, v, {dw}), ElementsAre(dw)) << run;
  }
  // Reads of both runs' versions fail, naming their own run@N.
  absl::Status st = Read("b", 1, dw).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("b@1"));
  (void)v1, (void)sent;
}

// A blob found present before it was found damaged: CommitShard then
// refuses it like a blob that was never uploaded, and the client's retry
// (upload again, commit again) heals it.
TEST_F(IntegrityTest, CommitOfAQuarantinedBlobIsBlobMissing) {
  const std::string w = RandomBytes(4096, 4);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}});
  const uint64_t v2 = Begin("r", 2);
  EXPECT_THAT(Missing("r", v2, {dw}), IsEmpty());  // granted: present
  FlipFileByte(BlobPath(dw), 100);
  EXPECT_EQ(Read("r", v1, dw).status().code(), absl::StatusCode::kDataLoss);
  auto commit = Commit("r", v2, Tensors({{"w", {dw, w.size()}}}));
  ASSERT_EQ(commit.status().code(), absl::StatusCode::kFailedPrecondition)
      << commit.status();
  EXPECT_EQ(ReasonOf(commit.status()), v1::BLOB_MISSING);
  EXPECT_THAT(commit.status().message(), HasSubstr("model.w"));
  ASSERT_TRUE(Upload("r", v2, w).ok());
  commit = Commit("r", v2, Tensors({{"w", {dw, w.size()}}}));
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  EXPECT_TRUE(*Read("r", v2, dw) == w);
  (void)sent;
}

TEST_F(IntegrityTest, VerifyListsTheDamagedVersionsAndTheirTensors) {
  v1::SetPolicyRequest policy;
  policy.set_run("r");
  policy.mutable_policy()->set_monitor("loss");
  policy.mutable_policy()->set_mode(v1::MIN);
  ASSERT_TRUE(repo_->SetPolicy(policy, Actor{}).ok());
  const std::string w = RandomBytes(3000, 5);
  const std::string other = RandomBytes(3000, 6);
  const Digest dw = DigestOf(w.data(), w.size());
  Save("r", 1, {{"w", w}}, {{"loss", 0.5}});
  Save("r", 2, {{"w", w}, {"x", other}}, {{"loss", 0.1}});
  Save("r", 3, {{"x", other}}, {{"loss", 0.9}});
  auto clean = Verify("r");
  ASSERT_TRUE(clean.ok()) << clean.status();
  EXPECT_EQ(clean->blobs_checked(), 2u);
  EXPECT_EQ(clean->bytes_checked(), 6000u);
  EXPECT_THAT(clean->errors(), IsEmpty());
  EXPECT_THAT(clean->damaged(), IsEmpty());

  FlipFileByte(BlobPath(dw), 2999);
  auto report = Verify("r");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_THAT(report->errors(), SizeIs(1));
  EXPECT_THAT(report->errors(0), HasSubstr(dw.Hex()));
  EXPECT_THAT(report->errors(0), Not(HasSubstr(dir_)));
  ASSERT_THAT(report->damaged(), SizeIs(2));
  EXPECT_EQ(report->damaged(0).version(), 1u);
  EXPECT_THAT(report->damaged(0).aliases(), IsEmpty());
  ASSERT_THAT(report->damaged(0).tensors(), SizeIs(1));
  EXPECT_EQ(report->damaged(0).tensors(0).key(), "model.w");
  EXPECT_EQ(report->damaged(0).tensors(0).blob_digest(),
            std::string(dw.AsBytes()));
  EXPECT_EQ(report->damaged(1).version(), 2u);
  EXPECT_THAT(report->damaged(1).aliases(), ElementsAre("best"));
  ASSERT_THAT(report->damaged(1).tensors(), SizeIs(1));
  EXPECT_EQ(report->damaged(1).tensors(0).key(), "model.w");
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 1u);
  // One version: only it.
  auto one = Verify("r", "best");
  ASSERT_TRUE(one.ok());
  ASSERT_THAT(one->damaged(), SizeIs(1));
  EXPECT_EQ(one->damaged(0).version(), 2u);
  auto fine = Verify("r", "3");
  ASSERT_TRUE(fine.ok());
  EXPECT_THAT(fine->damaged(), IsEmpty());
}

// A quarantine on a fault that went away (the bytes read intact again) is
// lifted by Verify; the record goes with it.
TEST_F(IntegrityTest, VerifyLiftsTheQuarantineOfABlobThatReadsIntact) {
  const std::string w = RandomBytes(2048, 7);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}});
  FlipFileByte(BlobPath(dw), 7);
  EXPECT_EQ(Read("r", v1, dw).status().code(), absl::StatusCode::kDataLoss);
  FlipFileByte(BlobPath(dw), 7);  // back as it was
  EXPECT_EQ(Read("r", v1, dw).status().code(), absl::StatusCode::kDataLoss)
      << "a quarantined blob is not read";
  auto report = Verify("r");
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->errors(), IsEmpty());
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  Reopen();
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  (void)sent;
}

TEST_F(IntegrityTest, ScrubPassFindsAFlippedByte) {
  const std::string w = RandomBytes((1 << 20) + 3, 8);
  const std::string b = RandomBytes(100, 9);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}, {"b", b}});
  auto clean = repo_->RunScrubPass();
  ASSERT_TRUE(clean.ok()) << clean.status();
  EXPECT_THAT(*clean, IsEmpty());
  ScrubStats stats = repo_->GetScrubStats();
  EXPECT_EQ(stats.passes_completed, 1u);
  EXPECT_EQ(stats.blobs_checked, 2u);
  EXPECT_EQ(stats.bytes_checked, w.size() + b.size());
  EXPECT_EQ(stats.corrupt_found, 0u);
  EXPECT_NE(stats.last_pass_end, absl::InfinitePast());

  FlipFileByte(BlobPath(dw), 1 << 20);  // in the second (short) chunk
  auto found = repo_->RunScrubPass();
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_THAT(*found, ElementsAre(dw));
  stats = repo_->GetScrubStats();
  EXPECT_EQ(stats.passes_completed, 2u);
  EXPECT_EQ(stats.corrupt_found, 1u);
  EXPECT_EQ(stats.quarantined_blobs, 1u);
  const uint64_t v2 = Begin("r", 2);
  EXPECT_THAT(Missing("r", v2, {dw}), ElementsAre(dw));
  // Found again by the next pass, but counted once.
  ASSERT_TRUE(repo_->RunScrubPass().ok());
  EXPECT_EQ(repo_->GetScrubStats().corrupt_found, 1u);
  (void)v1, (void)sent;
}

TEST_F(IntegrityTest, BackgroundScrubFindsAFlippedByte) {
  const std::string w = RandomBytes(10000, 10);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}});
  FlipFileByte(BlobPath(dw), 9999);
  RepositoryOptions options;
  options.scrub_interval = absl::Milliseconds(50);
  Reopen(options);
  const absl::Time deadline = absl::Now() + kPollDeadline;
  while (repo_->GetScrubStats().corrupt_found == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const ScrubStats stats = repo_->GetScrubStats();
  ASSERT_EQ(stats.corrupt_found, 1u) << "no scrub found the byte";
  EXPECT_EQ(stats.quarantined_blobs, 1u);
  absl::Status st = Read("r", v1, dw).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("r@1: tensor 'model.w'"));
  // Healed by the next save while the scrub keeps running.
  auto [v2, sent2] = Save("r", 2, {{"w", w}});
  EXPECT_EQ(sent2, w.size());
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  EXPECT_TRUE(*Read("r", v2, dw) == w);
  (void)sent;
}

// A blob file deleted behind the server's back: the scrub counts it
// missing (not corrupt), reads name the tensor, and the next save puts the
// file back.
TEST_F(IntegrityTest, ScrubFindsAMissingFile) {
  const std::string w = RandomBytes(4000, 14);
  const std::string x = RandomBytes(5000, 15);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}, {"x", x}});
  ASSERT_TRUE(std::filesystem::remove(BlobPath(dw)));
  auto found = repo_->RunScrubPass();
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_THAT(*found, ElementsAre(dw));
  const ScrubStats stats = repo_->GetScrubStats();
  EXPECT_EQ(stats.passes_completed, 1u);
  EXPECT_EQ(stats.blobs_checked, 2u);
  EXPECT_EQ(stats.bytes_checked, x.size());
  EXPECT_EQ(stats.missing_found, 1u);
  EXPECT_EQ(stats.corrupt_found, 0u);
  EXPECT_EQ(stats.quarantined_blobs, 1u);
  absl::Status st = Read("r", v1, dw).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("r@1: tensor 'model.w'"));
  auto [v2, sent2] = Save("r", 2, {{"w", w}, {"x", x}});
  EXPECT_EQ(sent2, w.size());
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  (void)sent, (void)v2;
}

TEST_F(IntegrityTest, BadScrubOptionsAreRefused) {
  repo_.reset();
  struct Case {
    const char* name;
    absl::Duration interval;
    uint64_t rate;
    const char* says;
  };
  const Case cases[] = {
      {"negative interval", absl::Seconds(-1), 1, "scrub interval is -1s"},
      {"zero rate", absl::Hours(1), 0, "set the scrub interval to 0"},
      {"zero rate, scrub off", absl::ZeroDuration(), 0, "must be positive"},
  };
  for (const Case& c : cases) {
    RepositoryOptions options;
    options.scrub_interval = c.interval;
    options.scrub_bytes_per_sec = c.rate;
    auto repo = Repository::OpenDataDir(dir_, options);
    EXPECT_EQ(repo.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    EXPECT_THAT(repo.status().message(), HasSubstr(c.says)) << c.name;
  }
}

// A reader that opened the corrupt file before the heal reports bad bytes,
// but must not quarantine the healed blob.
TEST_F(IntegrityTest, AVerdictOnTheReplacedFileIsIgnored) {
  const std::string w = RandomBytes(3000, 11);
  const Digest dw = DigestOf(w.data(), w.size());
  auto [v1, sent] = Save("r", 1, {{"w", w}});
  FlipFileByte(BlobPath(dw), 1);
  auto lease = repo_->LeaseForRead("r", v1);
  ASSERT_TRUE(lease.ok());
  auto stale = (*lease)->Open(dw);  // the corrupt file
  ASSERT_TRUE(stale.ok()) << stale.status();
  ASSERT_TRUE(Verify("r").ok());  // quarantines it
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 1u);
  auto [v2, sent2] = Save("r", 2, {{"w", w}});  // heals it
  EXPECT_EQ(sent2, w.size());
  std::string out(w.size(), '\0');
  EXPECT_EQ((*stale)->ReadAt(0, out.size(), out.data()).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  EXPECT_TRUE(*Read("r", v1, dw) == w);
  (void)sent, (void)v2;
}

// GC keeps a damaged blob while versions reference it (they are damaged,
// not gone) and deletes it, record and all, with the last of them.
TEST_F(IntegrityTest, QuarantinedBlobIsCollectedOnlyWithItsLastVersion) {
  const std::string w = RandomBytes(3000, 12);
  const std::string x = RandomBytes(3000, 13);
  const Digest dw = DigestOf(w.data(), w.size());
  Save("r", 1, {{"w", w}});
  Save("r", 2, {{"x", x}});
  FlipFileByte(BlobPath(dw), 1);
  ASSERT_TRUE(Verify("r").ok());
  ASSERT_TRUE(repo_->CollectGarbage().ok());
  EXPECT_TRUE(std::filesystem::exists(BlobPath(dw)));
  v1::DeleteVersionRequest del;
  del.set_run("r");
  del.set_ref("1");
  ASSERT_TRUE(repo_->DeleteVersion(del).ok());
  EXPECT_FALSE(std::filesystem::exists(BlobPath(dw)));
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  Reopen();
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  // The same bytes come back as a new, intact blob.
  auto [v3, sent] = Save("r", 3, {{"w", w}});
  EXPECT_EQ(sent, w.size());
  EXPECT_TRUE(*Read("r", v3, dw) == w);
}

// ---------------------------------------------------------------------------
// DeleteVersion --force

class ForceDeleteTest : public IntegrityTest {
 protected:
  void SetUp() override {
    IntegrityTest::SetUp();
    v1::SetPolicyRequest policy;
    policy.set_run("r");
    policy.mutable_policy()->set_monitor("loss");
    policy.mutable_policy()->set_mode(v1::MIN);
    ASSERT_TRUE(repo_->SetPolicy(policy, Actor{}).ok());
    // loss: v1 0.5, v2 0.2 (best), v3 0.3, v4 0.9 (last)
    const double losses[] = {0.5, 0.2, 0.3, 0.9};
    for (int i = 0; i < 4; ++i) {
      Save("r", i + 1, {{"w", RandomBytes(100, 20 + i)}},
           {{"loss", losses[i]}});
    }
  }
  absl::Status Delete(const std::string& ref, bool force) {
    v1::DeleteVersionRequest del;
    del.set_run("r");
    del.set_ref(ref);
    del.set_force(force);
    return repo_->DeleteVersion(del, Actor{"ops"});
  }
  std::vector<std::string> Moves(const std::string& alias) {
    v1::GetAliasHistoryRequest req;
    req.set_run("r");
    req.set_alias(alias);
    auto hist = repo_->GetAliasHistory(req);
    EXPECT_TRUE(hist.ok());
    std::vector<std::string> out;
    for (const auto& e : hist->events()) {
      out.push_back(
          absl::StrCat(e.from_version(), "->", e.to_version(), " ", e.actor()));
    }
    return out;
  }
};

TEST_F(ForceDeleteTest, LastAndBestMoveToWhatThePolicyPicks) {
  ASSERT_EQ(*RefTarget("r", "best"), 2u);
  ASSERT_EQ(*RefTarget("r", "last"), 4u);
  // Without --force: refused, and the message says how.
  absl::Status st = Delete("last", false);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("r@4 is the run's last"));
  EXPECT_THAT(st.message(), HasSubstr("--force"));
  st = Delete("best", false);
  EXPECT_THAT(st.message(), HasSubstr("r@2 is the run's best"));
  EXPECT_THAT(st.message(), HasSubstr("--force"));

  ASSERT_TRUE(Delete("last", true).ok());
  EXPECT_EQ(*RefTarget("r", "last"), 3u);
  EXPECT_EQ(*RefTarget("r", "best"), 2u);
  ASSERT_TRUE(Delete("best", true).ok());
  EXPECT_EQ(*RefTarget("r", "best"), 3u);  // 0.3 beats 0.5
  EXPECT_EQ(*RefTarget("r", "last"), 3u);
  // Both at once.
  ASSERT_TRUE(Delete("3", true).ok());
  EXPECT_EQ(*RefTarget("r", "best"), 1u);
  EXPECT_EQ(*RefTarget("r", "last"), 1u);
  // The last version: both aliases go away.
  ASSERT_TRUE(Delete("1", true).ok());
  EXPECT_EQ(RefTarget("r", "best").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RefTarget("r", "last").status().code(),
            absl::StatusCode::kNotFound);
  // Recorded as moves by the admin who forced them, after the publishes.
  EXPECT_THAT(Moves("last"),
              ElementsAre("0->1 trainer", "1->2 trainer", "2->3 trainer",
                          "3->4 trainer", "4->3 ops", "3->1 ops", "1->0 ops"));
  EXPECT_THAT(Moves("best"), ElementsAre("0->1 trainer", "1->2 trainer",
                                         "2->3 ops", "3->1 ops", "1->0 ops"));
  // And in the audit log.
  v1::GetAuditLogRequest audit;
  audit.set_run("r");
  auto log = repo_->GetAuditLog(audit);
  ASSERT_TRUE(log.ok());
  std::vector<std::string> deletions;
  for (const auto& e : log->events()) {
    if (e.action() == "delete_version") {
      deletions.push_back(
          absl::StrCat(e.version(), " ", e.identity(), " ", e.detail()));
    }
  }
  EXPECT_THAT(deletions,
              ElementsAre("4 ops step 4; forced, last: 4 -> 3",
                          "2 ops step 2; forced, best: 2 -> 3",
                          "3 ops step 3; forced, best: 3 -> 1, last: 3 -> 1",
                          "1 ops step 1; forced, best: 1 -> none, last: 1 -> "
                          "none"));
}

TEST_F(ForceDeleteTest, UserAliasesAndPinsStillRefuse) {
  v1::SetAliasRequest alias;
  alias.set_run("r");
  alias.set_name("prod");
  alias.set_ref("4");
  ASSERT_TRUE(repo_->SetAlias(alias, Actor{"ops"}).ok());
  absl::Status st = Delete("4", true);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("prod"));
  EXPECT_THAT(st.message(), HasSubstr("--force moves only last and best"));
  st = Delete("4", false);
  EXPECT_THAT(st.message(), HasSubstr("move or delete prod first"));
  EXPECT_EQ(*RefTarget("r", "last"), 4u);
  v1::PinRequest pin;
  pin.set_run("r");
  pin.set_ref("best");
  ASSERT_TRUE(repo_->SetPinned(pin, true).ok());
  st = Delete("best", true);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("pinned"));
  EXPECT_EQ(*RefTarget("r", "best"), 2u);
}

// The case from the issue: a damaged best is deleted, best moves on.
TEST_F(ForceDeleteTest, ADamagedBestCanBeDeleted) {
  auto lease = repo_->LeaseForRead("r", 2);
  ASSERT_TRUE(lease.ok());
  const Digest d = *(*lease)->digests().begin();
  lease->reset();
  FlipFileByte(BlobPath(d), 3);
  auto report = Verify("r", "best");
  ASSERT_TRUE(report.ok());
  ASSERT_THAT(report->damaged(), SizeIs(1));
  ASSERT_TRUE(Delete("best", true).ok());
  EXPECT_EQ(*RefTarget("r", "best"), 3u);
  EXPECT_FALSE(std::filesystem::exists(BlobPath(d)));
  EXPECT_EQ(repo_->GetScrubStats().quarantined_blobs, 0u);
  auto clean = Verify("r");
  ASSERT_TRUE(clean.ok());
  EXPECT_THAT(clean->damaged(), IsEmpty());
}

}  // namespace
}  // namespace ckptd::core
