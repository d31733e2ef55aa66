// Repository, part: integrity — quarantine of blobs found corrupt, healing
// uploads, checked reads (ReadLease::Open), Verify and the background scrub.
//
// Detection. Three things read stored bytes and can find them bad: a read
// (ReadBlobs, ExportSafetensors: the readers ReadLease::Open returns verify
// each chunk against its stored checksum), Verify (whole blobs against their
// digest) and the scrub (the same as Verify, over every stored blob, at most
// scrub_bytes_per_sec). DATA_LOSS from the store (a bad checksum, a damaged
// footer, EIO), a digest mismatch or a file gone missing quarantines the
// blob: the BlobIndex marks it, so it stops counting as stored, and
// quar/<digest> records it in RocksDB (synced, under mu_, so that it is
// ordered with the heal that deletes it): it stays quarantined across a
// restart. Other errors (EACCES, EMFILE, ...) say nothing about the bytes:
// they are reported, never quarantined.
//
// Healing. FindMissingBlobs reports a quarantined blob missing, to everyone,
// so the next push of the same bytes uploads them; BlobUpload::Finish then
// commits with CommitReplacing (the verified copy is renamed over the bad
// file) and RecordUpload lifts the quarantine: every version that references
// the digest reads again. A Verify or scrub that reads a quarantined blob
// intact after all (the fault was transient) lifts the quarantine too.
//
// Staleness. A verdict is about the file that was read. The BlobIndex gives
// each stored file a generation, read before the open; a verdict on an older
// generation (the blob was replaced or deleted meanwhile) is ignored, so a
// slow reader of the old corrupt file cannot quarantine the healed one.
//
// Messages. Client-facing errors name run@N, the tensor key paths and the
// blob digest, never a server path: the storage error (which names the file)
// goes to the log and to the quarantine record.
//
// The scrub runs on its own thread on real time (absl::Now, not
// options.now), one blob at a time, and never holds mu_ while reading.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "proto/base/dtype.h"
#include "proto/base/status.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {

using internal::VersionName;

namespace internal {

absl::Status ValidateScrubOptions(const RepositoryOptions& options) {
  if (options.scrub_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scrub interval is ", absl::FormatDuration(options.scrub_interval),
        "; it must be positive, or 0 to turn the scrub off"));
  }
  if (options.scrub_bytes_per_sec == 0) {
    return absl::InvalidArgumentError(
        "scrub rate is 0 bytes per second; it must be positive (to turn "
        "the scrub off, set the scrub interval to 0)");
  }
  return absl::OkStatus();
}

}  // namespace internal

namespace {

// Bytes read per call while checking a whole blob.
constexpr uint64_t kCheckChunk = 4 << 20;
// Tensors named in a read's DATA_LOSS message (the rest are counted).
constexpr size_t kTensorsNamed = 3;
// Tensors listed per damaged version in a Verify reply.
constexpr int kTensorsListed = 1000;

std::string TensorName(const v1::DamagedTensor& t) {
  return t.rank() == 0 ? absl::StrCat("'", t.key(), "'")
                       : absl::StrCat("'", t.key(), "' (rank ", t.rank(), ")");
}

}  // namespace

// A reader whose failures become Repository::ReadFailure: quarantine and a
// path-free DATA_LOSS naming the tensor.
class CheckedBlobReader final : public storage::BlobReader {
 public:
  CheckedBlobReader(Repository* repo, std::string run, uint64_t version,
                    Digest digest, uint64_t generation,
                    std::unique_ptr<storage::BlobReader> base)
      : repo_(repo),
        run_(std::move(run)),
        version_(version),
        digest_(digest),
        generation_(generation),
        base_(std::move(base)) {}

  uint64_t size() const override { return base_->size(); }

  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override {
    absl::Status st = base_->ReadAt(offset, length, out);
    // OUT_OF_RANGE is the caller's range, not the bytes (and has no path).
    if (st.ok() || absl::IsOutOfRange(st)) return st;
    return repo_->ReadFailure(run_, version_, digest_, generation_, st);
  }

 private:
  Repository* const repo_;
  const std::string run_;
  const uint64_t version_;
  const Digest digest_;
  const uint64_t generation_;
  const std::unique_ptr<storage::BlobReader> base_;
};

// ---------------------------------------------------------------------------
// Quarantine

absl::Status Repository::RecoverQuarantineLocked() {
  std::vector<std::string> keys;
  CKPTD_RETURN_IF_ERROR(meta_->Scan(storage::keys::kQuarantinePrefix, "",
                                    [&](absl::string_view key, auto) {
                                      keys.emplace_back(key);
                                      return true;
                                    }));
  storage::MetadataBatch stale;
  size_t quarantined = 0;
  for (const std::string& key : keys) {
    absl::StatusOr<Digest> d = DigestFromHex(
        absl::string_view(key).substr(storage::keys::kQuarantinePrefix.size()));
    std::optional<uint64_t> generation;
    if (d.ok()) generation = index_.Generation(*d);
    if (generation.has_value() && index_.Quarantine(*d, *generation)) {
      ++quarantined;
    } else {
      stale.Delete(key);  // the blob is gone (or the key is not ours)
    }
  }
  if (!stale.empty()) CKPTD_RETURN_IF_ERROR(meta_->Commit(stale));
  if (quarantined > 0) {
    spdlog::warn(
        "{} blob(s) are quarantined (found corrupt before the restart): "
        "pushes upload them again; reads that need them fail with "
        "DATA_LOSS until then (ckpt verify lists the damaged versions)",
        quarantined);
  }
  return absl::OkStatus();
}

bool Repository::QuarantineBlob(const Digest& digest, uint64_t generation,
                                absl::string_view found_by,
                                const absl::Status& cause) {
  v1::QuarantineRecord record;
  record.set_digest(std::string(digest.AsBytes()));
  record.set_detected_at(absl::ToUnixNanos(absl::Now()));
  record.set_found_by(std::string(found_by));
  record.set_detail(cause.ToString());
  {
    absl::MutexLock lock(&mu_);
    if (!index_.Quarantine(digest, generation)) return false;
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Quarantine(digest.Hex()), record);
    if (absl::Status st = meta_->Commit(batch); !st.ok()) {
      spdlog::error(
          "quarantine record of blob {} not written ({}): the quarantine "
          "holds until a restart, after which a read finds the damage again",
          digest.Hex(), st.ToString());
    }
  }
  spdlog::error(
      "blob {} is corrupt (found by {}): {}. Quarantined: the next push of "
      "these bytes uploads them and heals every version that uses them; "
      "reads of those versions fail with DATA_LOSS until then",
      digest.Hex(), std::string(found_by), cause.ToString());
  return true;
}

void Repository::DeleteQuarantineRecordLocked(const Digest& digest) {
  storage::MetadataBatch batch;
  batch.Delete(storage::keys::Quarantine(digest.Hex()));
  if (absl::Status st = meta_->Commit(batch); !st.ok()) {
    spdlog::error(
        "quarantine record of blob {} not deleted ({}): after a restart the "
        "blob is quarantined again until verified (ckpt verify)",
        digest.Hex(), st.ToString());
  }
}

bool Repository::IsQuarantined(const Digest& digest) {
  absl::ReaderMutexLock lock(&mu_);
  return index_.Quarantined(digest);
}

std::optional<Digest> Repository::FirstDamaged(
    const std::vector<Digest>& digests) {
  absl::ReaderMutexLock lock(&mu_);
  for (const Digest& d : digests) {
    if (!index_.Generation(d).has_value() || index_.Quarantined(d)) return d;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<v1::DamagedTensor>> Repository::TensorsIn(
    const std::string& run, uint64_t version,
    const absl::flat_hash_set<Digest>& digests) {
  // A committed version's manifests are immutable: read without mu_.
  std::vector<v1::DamagedTensor> out;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::ShardManifest>(
      storage::keys::ManifestPrefix(run, version), "",
      [&](absl::string_view, v1::ShardManifest&& m) {
        for (const v1::ManifestEntry& e : m.entries()) {
          if (!e.has_tensor()) continue;
          absl::StatusOr<Digest> d = DigestFromBytes(e.tensor().blob_digest());
          if (!d.ok() || !digests.contains(*d)) continue;
          v1::DamagedTensor& t = out.emplace_back();
          t.set_rank(m.rank());
          t.set_key(DottedKeyPath(e.path()));
          t.set_blob_digest(e.tensor().blob_digest());
        }
        return true;
      }));
  return out;
}

absl::Status Repository::DamageError(const std::string& run, uint64_t version,
                                     const Digest& digest) {
  absl::StatusOr<std::vector<v1::DamagedTensor>> tensors =
      TensorsIn(run, version, {digest});
  std::string what = "its data";
  if (tensors.ok() && !tensors->empty()) {
    std::vector<std::string> names;
    for (size_t i = 0; i < tensors->size() && i < kTensorsNamed; ++i) {
      names.push_back(TensorName((*tensors)[i]));
    }
    what = absl::StrCat(tensors->size() == 1 ? "tensor " : "tensors ",
                        absl::StrJoin(names, ", "));
    if (tensors->size() > kTensorsNamed) {
      absl::StrAppend(&what, " and ", tensors->size() - kTensorsNamed, " more");
    }
  } else if (!tensors.ok()) {
    spdlog::warn("listing the tensors of {} in blob {}: {}",
                 VersionName(run, version), digest.Hex(),
                 tensors.status().ToString());
  }
  return absl::DataLossError(absl::StrCat(
      VersionName(run, version), ": ", what,
      tensors.ok() && tensors->size() > 1 ? " are" : " is",
      " damaged on the server (stored blob ", digest.Hex(),
      " is missing or fails verification). Save the same state again to "
      "repair it: that push uploads these bytes and heals every version "
      "that uses them. Or delete the version (ckpt rm --force, admin)"));
}

absl::Status Repository::ReadFailure(const std::string& run, uint64_t version,
                                     const Digest& digest, uint64_t generation,
                                     const absl::Status& st) {
  if (is_replica() && absl::IsNotFound(st)) {
    // Not damage: the writer collected it (the version was deleted, or
    // retention dropped it) before this replica followed that record.
    spdlog::info("replica: blob {} of {} is gone from the bucket: {}",
                 digest.Hex(), VersionName(run, version), st.ToString());
    return absl::NotFoundError(absl::StrCat(
        "blob ", digest.Hex(), " of ", VersionName(run, version),
        " is no longer in the bucket: the writer deleted the version (or "
        "its retention dropped it); this replica shows that once it follows "
        "the writer's record, within --follow_interval"));
  }
  if (absl::IsDataLoss(st) || absl::IsNotFound(st)) {
    QuarantineBlob(digest, generation, "read", st);  // logs the cause
    return DamageError(run, version, digest);
  }
  spdlog::error("reading blob {} for {}: {}", digest.Hex(),
                VersionName(run, version), st.ToString());
  return absl::Status(
      st.code(),
      absl::StrCat("reading blob ", digest.Hex(), " of ",
                   VersionName(run, version), " failed on the server (",
                   absl::StatusCodeToString(st.code()),
                   "); the server's log has the details"));
}

absl::StatusOr<uint64_t> Repository::ReadableGeneration(const std::string& run,
                                                        uint64_t version,
                                                        const Digest& digest) {
  std::optional<uint64_t> generation;
  bool quarantined = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    generation = index_.Generation(digest);
    quarantined = index_.Quarantined(digest);
  }
  if (!generation.has_value() || quarantined) {
    return DamageError(run, version, digest);
  }
  return *generation;
}

absl::StatusOr<std::unique_ptr<storage::BlobReader>> Repository::OpenForRead(
    const std::string& run, uint64_t version, const Digest& digest) {
  CKPTD_ASSIGN_OR_RETURN(uint64_t generation,
                         ReadableGeneration(run, version, digest));
  absl::StatusOr<std::unique_ptr<storage::BlobReader>> reader =
      blobs_->Open(digest);
  if (!reader.ok()) {
    return ReadFailure(run, version, digest, generation, reader.status());
  }
  return std::unique_ptr<storage::BlobReader>(new CheckedBlobReader(
      this, run, version, digest, generation, *std::move(reader)));
}

absl::StatusOr<std::unique_ptr<storage::BlobReader>> ReadLease::Open(
    const Digest& d) {
  return repo_->OpenForRead(run_, version_, d);
}

absl::StatusOr<std::optional<UniqueFd>> Repository::OpenStoredFileForRead(
    const std::string& run, uint64_t version, const Digest& digest) {
  CKPTD_ASSIGN_OR_RETURN(uint64_t generation,
                         ReadableGeneration(run, version, digest));
  absl::StatusOr<std::optional<UniqueFd>> fd = blobs_->OpenStoredFile(digest);
  if (!fd.ok()) {
    return ReadFailure(run, version, digest, generation, fd.status());
  }
  return fd;
}

absl::StatusOr<std::optional<UniqueFd>> ReadLease::OpenStoredFile(
    const Digest& d) {
  return repo_->OpenStoredFileForRead(run_, version_, d);
}

absl::Status ReadLease::CheckIntact(const std::vector<Digest>& digests) {
  std::optional<Digest> bad = repo_->FirstDamaged(digests);
  if (!bad.has_value()) return absl::OkStatus();
  return repo_->DamageError(run_, version_, *bad);
}

// ---------------------------------------------------------------------------
// Checking whole blobs: Verify and the scrub

Repository::BlobCheck Repository::CheckBlob(
    const Digest& digest, absl::string_view found_by,
    const std::function<bool(uint64_t)>& throttle) {
  BlobCheck out;
  std::optional<uint64_t> generation;
  bool was_quarantined = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    generation = index_.Generation(digest);
    was_quarantined = index_.Quarantined(digest);
  }
  if (!generation.has_value()) {
    out.verdict = Verdict::kMissing;
    out.problem = "is missing from the blob store";
    return out;
  }
  // The bucket's copy, not the read cache's: that is what a check is for.
  absl::StatusOr<std::unique_ptr<storage::BlobReader>> reader =
      remote_blobs_->Open(digest);
  absl::Status st = reader.status();
  if (st.ok()) {
    DigestBuilder builder;
    std::string buf;
    const uint64_t size = (*reader)->size();
    for (uint64_t off = 0; off < size; off += kCheckChunk) {
      const uint64_t n = std::min(kCheckChunk, size - off);
      buf.resize(n);
      st = (*reader)->ReadAt(off, n, buf.data());
      if (!st.ok()) break;
      builder.Update(buf.data(), n);
      out.bytes += n;
      if (throttle && !throttle(out.bytes)) {
        out.verdict = Verdict::kStopped;
        return out;
      }
    }
    if (st.ok() && builder.Finish() != digest) {
      st = absl::DataLossError(absl::StrCat(
          "blob ", digest.Hex(), ": its ", size,
          " bytes pass their chunk checksums but do not hash to its digest"));
    }
  }
  if (st.ok()) {
    if (was_quarantined) {
      absl::MutexLock lock(&mu_);
      if (index_.Unquarantine(digest, *generation)) {
        DeleteQuarantineRecordLocked(digest);
        spdlog::warn("blob {} reads intact ({}): quarantine lifted",
                     digest.Hex(), std::string(found_by));
      }
    }
    return out;
  }
  if (absl::IsDataLoss(st) || absl::IsNotFound(st)) {
    out.verdict = Verdict::kDamaged;
    out.file_missing = absl::IsNotFound(st);
    out.problem = out.file_missing
                      ? "is missing from the blob store"
                      : "is corrupt: its stored bytes fail verification";
    out.newly_quarantined = QuarantineBlob(digest, *generation, found_by, st);
    return out;
  }
  spdlog::warn("{}: reading blob {}: {}", std::string(found_by), digest.Hex(),
               st.ToString());
  out.verdict = Verdict::kUnreadable;
  out.problem =
      absl::StrCat("could not be read (", absl::StatusCodeToString(st.code()),
                   "; the server's log has the details)");
  return out;
}

absl::StatusOr<v1::VerifyResponse> Repository::Verify(
    const v1::VerifyRequest& req) {
  std::vector<uint64_t> versions;
  {
    absl::ReaderMutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
    if (!req.ref().empty()) {
      CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo v,
                             LoadCommitted(req.run(), req.ref()));
      versions.push_back(v.version());
    } else {
      CKPTD_ASSIGN_OR_RETURN(auto all, LoadVersions(req.run()));
      for (const auto& v : all) {
        if (v.state() == v1::COMMITTED) versions.push_back(v.version());
      }
    }
  }
  // Leased while they are checked, so GC cannot pull them away mid-read.
  std::vector<std::unique_ptr<ReadLease>> leases;
  absl::flat_hash_set<Digest> digests;
  for (uint64_t v : versions) {
    CKPTD_ASSIGN_OR_RETURN(leases.emplace_back(), LeaseForRead(req.run(), v));
    digests.insert(leases.back()->digests().begin(),
                   leases.back()->digests().end());
  }
  std::vector<Digest> order(digests.begin(), digests.end());
  std::sort(order.begin(), order.end());
  v1::VerifyResponse resp;
  absl::flat_hash_set<Digest> damaged;
  for (const Digest& d : order) {
    BlobCheck check = CheckBlob(d, "verify", nullptr);
    resp.set_blobs_checked(resp.blobs_checked() + 1);
    resp.set_bytes_checked(resp.bytes_checked() + check.bytes);
    if (check.verdict == Verdict::kIntact) continue;
    resp.add_errors(absl::StrCat("blob ", d.Hex(), " ", check.problem));
    if (check.verdict == Verdict::kDamaged ||
        check.verdict == Verdict::kMissing) {
      damaged.insert(d);
    }
  }
  if (damaged.empty()) return resp;
  std::vector<v1::AliasInfo> aliases;
  {
    absl::ReaderMutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(aliases, LoadAliases(req.run()));
  }
  for (size_t i = 0; i < versions.size(); ++i) {
    absl::flat_hash_set<Digest> hit;
    for (const Digest& d : leases[i]->digests()) {
      if (damaged.contains(d)) hit.insert(d);
    }
    if (hit.empty()) continue;
    CKPTD_ASSIGN_OR_RETURN(std::vector<v1::DamagedTensor> tensors,
                           TensorsIn(req.run(), versions[i], hit));
    v1::DamagedVersion* dv = resp.add_damaged();
    dv->set_run(req.run());
    dv->set_version(versions[i]);
    for (const v1::AliasInfo& a : aliases) {
      if (a.version() == versions[i]) dv->add_aliases(a.name());
    }
    for (v1::DamagedTensor& t : tensors) {
      if (dv->tensors_size() >= kTensorsListed) break;
      *dv->add_tensors() = std::move(t);
    }
  }
  return resp;
}

// ---------------------------------------------------------------------------
// Scrub

int64_t Repository::ReadScrubTime(absl::string_view key) {
  absl::StatusOr<std::optional<std::string>> value = meta_->Get(key);
  int64_t nanos = 0;
  if (!value.ok() || !value->has_value() ||
      !absl::SimpleAtoi(**value, &nanos)) {
    return 0;
  }
  return nanos;
}

void Repository::StartScrubber() {
  if (const int64_t last = ReadScrubTime(storage::keys::kScrubLastPassEnd);
      last != 0) {
    absl::MutexLock lock(&scrub_mu_);
    scrub_stats_.last_pass_end = absl::FromUnixNanos(last);
  }
  if (options_.scrub_interval <= absl::ZeroDuration()) return;
  if (ReadScrubTime(storage::keys::kScrubSince) == 0) {
    // First enabled on this data dir: the first pass is one interval away.
    storage::MetadataBatch batch;
    batch.Put(storage::keys::kScrubSince,
              absl::StrCat(absl::ToUnixNanos(absl::Now())));
    if (absl::Status st = meta_->Commit(batch); !st.ok()) {
      spdlog::warn("scrub: recording its start: {}", st.ToString());
    }
  }
  scrub_thread_ = std::thread([this] { ScrubLoop(); });
}

void Repository::StopScrubber() {
  {
    absl::MutexLock lock(&scrub_mu_);
    scrub_stop_ = true;
  }
  if (scrub_thread_.joinable()) scrub_thread_.join();
}

void Repository::ScrubLoop() {
  // A failed pass is not retried before another interval has passed.
  absl::Time earliest = absl::InfinitePast();
  for (;;) {
    const int64_t since = ReadScrubTime(storage::keys::kScrubSince);
    const int64_t last = ReadScrubTime(storage::keys::kScrubLastPassEnd);
    const absl::Time due = std::max(
        absl::FromUnixNanos(std::max(since, last)) + options_.scrub_interval,
        earliest);
    {
      absl::MutexLock lock(&scrub_mu_);
      if (scrub_mu_.AwaitWithDeadline(absl::Condition(&scrub_stop_), due)) {
        return;
      }
    }
    absl::StatusOr<std::vector<Digest>> corrupt = RunScrubPass();
    if (absl::IsCancelled(corrupt.status())) return;
    if (!corrupt.ok()) {
      spdlog::warn("scrub pass: {}", corrupt.status().ToString());
    }
    earliest = absl::Now() + options_.scrub_interval;
  }
}

absl::StatusOr<std::vector<Digest>> Repository::RunScrubPass() {
  std::vector<BlobIndex::StoredBlob> blobs;
  {
    absl::ReaderMutexLock lock(&mu_);
    blobs = index_.StoredBlobs();
  }
  uint64_t total = 0;
  for (const auto& b : blobs) total += b.size;
  spdlog::info("scrub: checking {} blobs ({} bytes) at most {} bytes/s",
               blobs.size(), total, options_.scrub_bytes_per_sec);
  {
    absl::MutexLock lock(&scrub_mu_);
    scrub_stats_.pass_running = true;
  }
  const absl::Time start = absl::Now();
  const double rate = static_cast<double>(options_.scrub_bytes_per_sec);
  uint64_t pass_bytes = 0;  // of the blobs done
  // Waits until the bytes read so far are within the rate; false: stop.
  auto throttle = [&](uint64_t blob_bytes) {
    const absl::Time not_before =
        start +
        absl::Seconds(static_cast<double>(pass_bytes + blob_bytes) / rate);
    absl::MutexLock lock(&scrub_mu_);
    return !scrub_mu_.AwaitWithDeadline(absl::Condition(&scrub_stop_),
                                        not_before);
  };
  std::vector<Digest> corrupt;
  bool stopped = false;
  for (const BlobIndex::StoredBlob& b : blobs) {
    {
      absl::MutexLock lock(&scrub_mu_);
      stopped = scrub_stop_;
    }
    if (stopped) break;
    BlobCheck check = CheckBlob(b.digest, "scrub", throttle);
    pass_bytes += check.bytes;
    if (check.verdict == Verdict::kStopped) {
      stopped = true;
      break;
    }
    if (check.verdict == Verdict::kDamaged) corrupt.push_back(b.digest);
    absl::MutexLock lock(&scrub_mu_);
    if (check.verdict == Verdict::kMissing) continue;  // deleted meanwhile
    ++scrub_stats_.blobs_checked;
    scrub_stats_.bytes_checked += check.bytes;
    if (check.newly_quarantined) {
      ++(check.file_missing ? scrub_stats_.missing_found
                            : scrub_stats_.corrupt_found);
    }
  }
  if (stopped) {
    absl::MutexLock lock(&scrub_mu_);
    scrub_stats_.pass_running = false;
    return absl::CancelledError("the scrub pass stopped: ckptd is closing");
  }
  const absl::Time end = absl::Now();
  storage::MetadataBatch batch;
  batch.Put(storage::keys::kScrubLastPassEnd,
            absl::StrCat(absl::ToUnixNanos(end)));
  absl::Status persisted = meta_->Commit(batch);
  {
    absl::MutexLock lock(&scrub_mu_);
    scrub_stats_.pass_running = false;
    ++scrub_stats_.passes_completed;
    scrub_stats_.last_pass_end = end;
  }
  spdlog::info("scrub: pass done in {}: {} blobs, {} bytes, {} corrupt",
               absl::FormatDuration(end - start), blobs.size(), pass_bytes,
               corrupt.size());
  if (!persisted.ok()) {
    return absl::Status(persisted.code(),
                        absl::StrCat("recording the end of the scrub pass: ",
                                     persisted.message()));
  }
  return corrupt;
}

ScrubStats Repository::GetScrubStats() {
  ScrubStats out;
  {
    absl::MutexLock lock(&scrub_mu_);
    out = scrub_stats_;
  }
  absl::ReaderMutexLock lock(&mu_);
  out.quarantined_blobs = index_.quarantined_count();
  return out;
}

}  // namespace ckptd::core
