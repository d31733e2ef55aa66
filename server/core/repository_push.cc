// Repository, part: pushes — BeginVersion, FindMissingBlobs, uploads
// (BlobUpload), QueryUpload, CommitShard, AbortVersion and the pending
// sweep. Leases are decided under mu_ and recorded in RocksDB after it is
// released; presence comes from the BlobIndex, never from the blob store.
#include <algorithm>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"
#include "proto/base/limits.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/common/kill_point.h"
#include "server/core/manifest.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {
namespace {

using internal::CheckVersionNumber;
using internal::kBest;
using internal::kLast;
using internal::VersionName;

}  // namespace

// ---------------------------------------------------------------------------
// BlobUpload

BlobUpload::BlobUpload(Repository* repo, std::string run, uint64_t version,
                       Digest digest, uint64_t blob_size, uint64_t reserved,
                       std::unique_ptr<storage::BlobWriter> writer)
    : repo_(repo),
      run_(std::move(run)),
      version_(version),
      digest_(digest),
      blob_size_(blob_size),
      reserved_(reserved),
      writer_(std::move(writer)) {}

BlobUpload::~BlobUpload() {
  Suspend();
  repo_->uploads_.End({run_, version_, digest_});
  if (reserved_ > 0) repo_->ReleaseReservation(run_, version_, reserved_);
}

uint64_t BlobUpload::received() const {
  return writer_ ? writer_->size() : blob_size_;
}

absl::Status BlobUpload::Append(uint64_t offset, absl::string_view data) {
  if (writer_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob ", digest_.Hex(), " is already finished"));
  }
  if (offset != writer_->size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "blob ", digest_.Hex(), ": chunk at offset ", offset,
        " but the next expected offset is ", writer_->size(),
        "; send a blob's chunks in order (QueryUpload gives the resume "
        "offset)"));
  }
  if (data.size() > blob_size_ - writer_->size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob ", digest_.Hex(), ": chunk at offset ", offset, " of ",
        data.size(), " bytes runs past the declared blob_size ", blob_size_));
  }
  CKPTD_RETURN_IF_ERROR(
      writer_->Append(std::string_view(data.data(), data.size())));
  CKPTD_KILL_POINT("upload.chunk_appended");
  appended_this_stream_ += data.size();
  // A long upload keeps its pending version alive (--pending_timeout).
  if (appended_this_stream_ - reported_ >= kReportEveryBytes) {
    repo_->RecordProgress(run_, version_, TakeUnreported());
  }
  return absl::OkStatus();
}

absl::Status BlobUpload::Finish() {
  if (writer_ == nullptr || !complete()) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob ", digest_.Hex(), " is not complete"));
  }
  std::unique_ptr<storage::BlobWriter> writer = std::move(writer_);
  // A GC deleting this very digest finishes first, or Commit would find
  // the doomed copy present and discard ours.
  repo_->AwaitNotDeleting(digest_);
  // A quarantined (corrupt) blob is replaced by the verified upload; Commit
  // would keep the stored copy.
  const bool heal = repo_->IsQuarantined(digest_);
  absl::Status st =
      heal ? writer->CommitReplacing(digest_) : writer->Commit(digest_);
  if (!st.ok()) return st;
  CKPTD_KILL_POINT("upload.blob_committed");
  repo_->RecordUpload(run_, version_, digest_, blob_size_, TakeUnreported(),
                      std::exchange(reserved_, 0), heal);
  return absl::OkStatus();
}

uint64_t BlobUpload::TakeUnreported() {
  const uint64_t n = appended_this_stream_ - reported_;
  reported_ = appended_this_stream_;
  return n;
}

void BlobUpload::Suspend() {
  if (writer_ == nullptr) return;
  // The bytes of an interrupted stream travelled too: uploaded_bytes counts
  // them, whether the upload resumes or starts over.
  repo_->RecordProgress(run_, version_, TakeUnreported());
  repo_->SuspendUpload({run_, version_, digest_}, blob_size_,
                       std::move(writer_));
}

// ---------------------------------------------------------------------------
// Push

absl::StatusOr<v1::BeginVersionResponse> Repository::BeginVersion(
    const v1::BeginVersionRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (BeginVersion)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(CheckEnvironment(req.env(), options_.limits));
  const uint32_t world_size = req.world_size() == 0 ? 1 : req.world_size();
  constexpr uint32_t kMaxWorldSize = 1 << 20;
  if (world_size > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world_size ", world_size, " exceeds the limit ", kMaxWorldSize));
  }
  absl::MutexLock lock(&mu_);
  v1::BeginVersionResponse resp;
  const std::string pend_key = storage::keys::Pending(req.run(), req.step());
  CKPTD_ASSIGN_OR_RETURN(auto pending, meta_->Get(pend_key));
  if (pending.has_value()) {
    uint64_t version = 0;
    if (!absl::SimpleAtoi(*pending, &version)) {
      return absl::DataLossError(absl::StrCat("malformed ", pend_key));
    }
    CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                           LoadVersion(req.run(), version));
    if (info.state() == v1::PENDING) {
      if (info.world_size() != world_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "world_size ", world_size, " does not match pending ",
            VersionName(req.run(), version), " begun with world_size ",
            info.world_size(), " at step ", req.step()));
      }
      resp.set_version(version);
      resp.set_created(false);
      resp.set_world_size(world_size);
      leases_[{req.run(), version}].last_activity = NowNanos();
      return resp;
    }
  }
  // A new version: refused while the run or the caller is at its quota.
  CKPTD_RETURN_IF_ERROR(CheckQuotaLocked(req.run(), actor, 0));
  storage::MetadataBatch batch;
  v1::RunInfo run_info;
  CKPTD_ASSIGN_OR_RETURN(
      bool run_found,
      meta_->GetProto(storage::keys::Run(req.run()), &run_info));
  if (!run_found) {
    run_info.set_name(req.run());
    run_info.set_created_at(NowNanos());
    batch.Put(storage::keys::Run(req.run()), run_info);
  }
  CKPTD_ASSIGN_OR_RETURN(auto seq, meta_->Get(storage::keys::Seq(req.run())));
  uint64_t last = 0;
  if (seq.has_value() && !absl::SimpleAtoi(*seq, &last)) {
    return absl::DataLossError(absl::StrCat("malformed seq for ", req.run()));
  }
  const uint64_t version = last + 1;
  v1::VersionInfo info;
  info.set_run(req.run());
  info.set_version(version);
  info.set_step(req.step());
  info.set_epoch(req.epoch());
  info.set_state(v1::PENDING);
  info.set_world_size(world_size);
  *info.mutable_env() = req.env();
  info.set_created_at(NowNanos());
  batch.Put(storage::keys::Seq(req.run()), absl::StrCat(version));
  batch.Put(storage::keys::Version(req.run(), version), info);
  batch.Put(pend_key, absl::StrCat(version));
  CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
  leases_[{req.run(), version}].last_activity = NowNanos();
  resp.set_version(version);
  resp.set_created(true);
  resp.set_world_size(world_size);
  return resp;
}

absl::Status Repository::CheckPending(const std::string& run,
                                      uint64_t version) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (UploadBlobs)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(run));
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(version));
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(run, version));
  if (info.state() == v1::PENDING) return absl::OkStatus();
  if (info.state() == v1::ABORTED) {
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          VersionName(run, version), " was aborted (",
                          info.abort_reason(), "); begin a new version")),
                      v1::VERSION_NOT_PENDING);
  }
  return WithReason(
      absl::FailedPreconditionError(absl::StrCat(
          VersionName(run, version), " is already committed and immutable")),
      v1::VERSION_NOT_PENDING);
}

absl::StatusOr<v1::FindMissingBlobsResponse> Repository::FindMissingBlobs(
    const v1::FindMissingBlobsRequest& req, const RunFilter& may_use) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (FindMissingBlobs)"));
  if (static_cast<size_t>(req.digests_size()) >
      options_.limits.find_missing_digests) {
    return OverLimit(
        "FindMissingBlobs: the number of digests (split them into several "
        "requests)",
        req.digests_size(), "digests", options_.limits.find_missing_digests,
        "max_find_missing_digests");
  }
  CKPTD_RETURN_IF_ERROR(CheckPending(req.run(), req.version()));
  std::vector<Digest> digests;
  digests.reserve(req.digests_size());
  for (const std::string& d : req.digests()) {
    CKPTD_ASSIGN_OR_RETURN(Digest digest, DigestFromBytes(d));
    digests.push_back(digest);
  }
  v1::FindMissingBlobsResponse resp;
  std::vector<Digest> leased;
  // In slices, so one large request cannot hold mu_ for long. Each lookup
  // and its lease happen in one hold: GC cannot take a blob reported
  // present.
  for (size_t begin = 0; begin < digests.size(); begin += kIndexSliceDigests) {
    const size_t end = std::min(digests.size(), begin + kIndexSliceDigests);
    absl::MutexLock lock(&mu_);
    auto it = leases_.find({req.run(), req.version()});
    if (it == leases_.end()) {
      return WithReason(
          absl::FailedPreconditionError(
              absl::StrCat(VersionName(req.run(), req.version()),
                           " is not pending (committed or aborted meanwhile)")),
          v1::VERSION_NOT_PENDING);
    }
    it->second.last_activity = NowNanos();
    for (size_t i = begin; i < end; ++i) {
      const Digest& d = digests[i];
      // Present only to a caller who may see it: already part of this
      // version, or referenced by a run it may write (tenancy). Anything
      // else is "missing", and the upload proves the caller has the bytes.
      if (index_.StoredSize(d).has_value() &&
          (it->second.granted.contains(d) ||
           index_.ReferencedBy(d, [&](absl::string_view run) {
             return may_use == nullptr || may_use(run);
           }))) {
        it->second.granted.insert(d);
        if (LeaseTo(it->second, d)) leased.push_back(d);
      } else {
        resp.add_missing(std::string(d.AsBytes()));
      }
    }
  }
  PersistLeases(req.run(), req.version(), leased);
  return resp;
}

absl::StatusOr<std::unique_ptr<BlobUpload>> Repository::StartBlobUpload(
    const std::string& run, uint64_t version, const Digest& digest,
    uint64_t blob_size, uint64_t offset, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (UploadBlobs)"));
  if (blob_size > options_.max_blob_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "blob ", digest.Hex(), " of ", blob_size,
        " bytes exceeds the server's limit of ", options_.max_blob_size));
  }
  uint64_t reserved = 0;
  {
    // Lease first, so GC keeps the blob from the moment it lands.
    absl::MutexLock lock(&mu_);
    auto it = leases_.find({run, version});
    if (it == leases_.end()) {
      return WithReason(
          absl::FailedPreconditionError(
              absl::StrCat(VersionName(run, version),
                           " is not pending (committed or aborted meanwhile)")),
          v1::VERSION_NOT_PENDING);
    }
    if (offset > blob_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob ", digest.Hex(), ": offset ", offset,
                       " is past its blob_size ", blob_size));
    }
    reserved = blob_size - offset;
    CKPTD_RETURN_IF_ERROR(CheckQuotaLocked(run, actor, reserved));
    it->second.reserved_bytes += reserved;
    LeaseTo(it->second, digest);
    it->second.last_activity = NowNanos();
  }
  // From here the reservation is the BlobUpload's, or given back.
  auto unreserve =
      absl::MakeCleanup([&] { ReleaseReservation(run, version, reserved); });
  std::unique_ptr<storage::BlobWriter> writer;
  if (offset > 0) {
    CKPTD_ASSIGN_OR_RETURN(
        writer, uploads_.Resume({run, version, digest}, blob_size, offset));
  } else {
    CKPTD_ASSIGN_OR_RETURN(writer, blobs_->NewWriter(digest));
    uploads_.BeginFresh({run, version, digest});
  }
  std::move(unreserve).Cancel();
  return std::unique_ptr<BlobUpload>(new BlobUpload(
      this, run, version, digest, blob_size, reserved, std::move(writer)));
}

bool Repository::LeaseTo(PendingLeases& leases, const Digest& d) {
  if (!leases.digests.insert(d).second) return false;
  index_.Pin(d);
  return true;
}

void Repository::RecordUpload(const std::string& run, uint64_t version,
                              const Digest& digest, uint64_t size,
                              uint64_t bytes, uint64_t reserved,
                              bool replaced) {
  uploads_.Drop({run, version, digest});
  bool pending = false;
  {
    absl::MutexLock lock(&mu_);
    const bool healed = replaced && index_.Quarantined(digest);
    index_.AddStored(digest, size, replaced);
    if (healed) {
      DeleteQuarantineRecordLocked(digest);
      spdlog::info(
          "blob {} healed: an upload for {}@{} replaced the damaged "
          "copy",
          digest.Hex(), run, version);
    }
    auto it = leases_.find({run, version});
    if (it != leases_.end()) {
      pending = true;
      it->second.reserved_bytes -=
          std::min(reserved, it->second.reserved_bytes);
      // verified: the caller had it
      if (it->second.granted.insert(digest).second) {
        it->second.stored_bytes += size;
      }
      it->second.uploaded_bytes += bytes;
      it->second.last_activity = NowNanos();
    }
  }
  if (pending) {
    PersistLeases(run, version, {digest});
  } else {
    // The version committed or aborted meanwhile: nothing may need the blob.
    CollectNewGarbage("an upload for a version no longer pending");
  }
}

void Repository::RecordProgress(const std::string& run, uint64_t version,
                                uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find({run, version});
  if (it == leases_.end()) return;
  it->second.uploaded_bytes += bytes;
  it->second.last_activity = NowNanos();
}

void Repository::ReleaseReservation(const std::string& run, uint64_t version,
                                    uint64_t bytes) {
  if (bytes == 0) return;
  absl::MutexLock lock(&mu_);
  auto it = leases_.find({run, version});
  if (it == leases_.end()) return;
  it->second.reserved_bytes -= std::min(bytes, it->second.reserved_bytes);
}

uint64_t Repository::UsageLocked(absl::string_view run) const {
  uint64_t bytes = index_.RunBytes(run);
  for (const auto& [key, leases] : leases_) {
    if (key.first == run) bytes += leases.stored_bytes + leases.reserved_bytes;
  }
  return bytes;
}

uint64_t Repository::UsageLocked(const Actor::RunFilter& writes) const {
  uint64_t bytes = 0;
  index_.ForEachRunBytes([&](absl::string_view run, uint64_t n) {
    if (writes(run)) bytes += n;
  });
  for (const auto& [key, leases] : leases_) {
    if (writes(key.first)) bytes += leases.stored_bytes + leases.reserved_bytes;
  }
  return bytes;
}

absl::Status Repository::CheckQuotaLocked(absl::string_view run,
                                          const Actor& actor,
                                          uint64_t adding) const {
  auto over = [adding](uint64_t usage, uint64_t quota) {
    return quota > 0 &&
           (adding == 0 ? usage >= quota
                        : adding > quota || usage > quota - adding);
  };
  auto refuse = [&](std::string who, uint64_t usage, uint64_t quota,
                    absl::string_view flag) {
    return absl::ResourceExhaustedError(absl::StrCat(
        who, " stores ", usage, " bytes",
        adding > 0 ? absl::StrCat(" and this upload adds ", adding) : "",
        "; the quota is ", quota, " bytes (--", flag,
        "): delete versions (ckpt rm) or lower retention (ckpt policy), or "
        "ask the operator for a larger quota"));
  };
  if (options_.run_quota_bytes > 0) {
    const uint64_t usage = UsageLocked(run);
    if (over(usage, options_.run_quota_bytes)) {
      return refuse(absl::StrCat("run '", run, "'"), usage,
                    options_.run_quota_bytes, "run_quota_bytes");
    }
  }
  if (options_.identity_quota_bytes > 0 && actor.writes) {
    const uint64_t usage = UsageLocked(actor.writes);
    if (over(usage, options_.identity_quota_bytes)) {
      return refuse(absl::StrCat("identity '", actor.name,
                                 "' (over the runs it may write)"),
                    usage, options_.identity_quota_bytes,
                    "identity_quota_bytes");
    }
  }
  return absl::OkStatus();
}

void Repository::AwaitNotDeleting(const Digest& digest) {
  absl::MutexLock lock(&mu_);
  auto done = [this, &digest]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !index_.Deleting(digest);
  };
  mu_.Await(absl::Condition(&done));
}

int Repository::ExpireSuspendedUploads() {
  if (is_replica()) return 0;
  return uploads_.ExpireOlderThan(options_.now() - options_.pending_timeout);
}

void Repository::PersistLeases(const std::string& run, uint64_t version,
                               const std::vector<Digest>& digests) {
  if (digests.empty()) return;
  storage::MetadataBatch batch;
  for (const Digest& d : digests) {
    batch.Put(storage::keys::Lease(run, version, d.Hex()), "");
  }
  // A lease record left by a version that published meanwhile is dropped
  // by the next Recover; a lost one only costs a re-upload after a crash.
  absl::Status st = meta_->Commit(batch, /*sync=*/false);
  if (!st.ok()) {
    // The in-memory lease still protects the blobs in this process.
    spdlog::warn("persist {} leases for {}@{}: {}", digests.size(), run,
                 version, st.ToString());
  }
}

absl::Status Repository::ReleasePending(storage::MetadataBatch& batch,
                                        const std::string& run,
                                        uint64_t version) {
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::LeasePrefix(run, version), "",
                  [&](absl::string_view key, absl::string_view) {
                    batch.Delete(key);
                    return true;
                  }));
  return absl::OkStatus();
}

void Repository::ForgetPending(const std::string& run, uint64_t version) {
  auto it = leases_.find({run, version});
  if (it == leases_.end()) return;
  for (const Digest& d : it->second.digests) index_.Unpin(d);
  leases_.erase(it);
}

void Repository::SuspendUpload(const UploadKey& key, uint64_t blob_size,
                               std::unique_ptr<storage::BlobWriter> writer) {
  const Digest& digest = key.digest;
  absl::StatusOr<uint64_t> durable = writer->Sync();
  if (!durable.ok()) {
    spdlog::warn("dropping interrupted upload of {}: {}", digest.Hex(),
                 durable.status().ToString());
    return;  // writer destructor abandons
  }
  uploads_.Suspend(key, blob_size, *durable, std::move(writer), options_.now());
  // Checked after suspending: an abort that ran before this check dropped
  // nothing of ours, one that runs after it finds the upload suspended.
  bool pending = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    pending = leases_.contains({key.run, key.version});
  }
  if (!pending) uploads_.Drop(key);
}

absl::StatusOr<v1::QueryUploadResponse> Repository::QueryUpload(
    const v1::QueryUploadRequest& req) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (QueryUpload)"));
  CKPTD_ASSIGN_OR_RETURN(Digest digest, DigestFromBytes(req.digest()));
  const UploadKey key{req.run(), req.version(), digest};
  // A client asks right after its stream broke; the server may not have
  // seen the break yet. Waiting for that stream to be suspended (or
  // finished) turns "start over at 0" into a resume.
  uploads_.AwaitIdle(key, options_.query_upload_wait);
  v1::QueryUploadResponse resp;
  {
    // The lookup and the lease in one hold of mu_ (as in FindMissingBlobs).
    absl::MutexLock lock(&mu_);
    std::optional<uint64_t> size = index_.StoredSize(digest);
    auto it = leases_.find({req.run(), req.version()});
    // Complete only for a blob of this version (uploaded into it or
    // reported present to it): QueryUpload is no existence oracle.
    if (size.has_value() && it != leases_.end() &&
        it->second.granted.contains(digest)) {
      resp.set_complete(true);
      resp.set_durable_offset(*size);
    }
  }
  if (resp.complete()) return resp;
  resp.set_durable_offset(uploads_.DurableOffset(key));
  return resp;
}

absl::StatusOr<v1::VersionInfo> Repository::CommitShard(
    const v1::CommitShardRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (CommitShard)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(req.version()));
  CKPTD_RETURN_IF_ERROR(CheckMetrics(req.metrics(), options_.limits));
  CKPTD_ASSIGN_OR_RETURN(ManifestSummary summary,
                         ValidateManifest(req.manifest(), options_.limits));
  v1::ShardManifest manifest = req.manifest();
  manifest.set_rank(req.rank());

  std::vector<AliasMove> moves;
  bool published = false;
  v1::VersionInfo info;
  {
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run_info, LoadRun(req.run()));
    CKPTD_ASSIGN_OR_RETURN(info, LoadVersion(req.run(), req.version()));
    const std::string name = VersionName(req.run(), req.version());
    if (req.rank() >= info.world_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", req.rank(), " is out of range for ", name,
                       " with world_size ", info.world_size()));
    }
    if (info.state() == v1::ABORTED) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " was aborted (", info.abort_reason(),
                       "); begin a new version"));
    }
    // A retried shard with the same content succeeds idempotently.
    for (const auto& shard : info.shards()) {
      if (shard.rank() != req.rank()) continue;
      v1::ShardManifest stored;
      CKPTD_ASSIGN_OR_RETURN(
          bool found, meta_->GetProto(storage::keys::Manifest(
                                          req.run(), req.version(), req.rank()),
                                      &stored));
      if (found && stored.SerializeAsString() == manifest.SerializeAsString()) {
        CKPTD_RETURN_IF_ERROR(FillAliases(&info));
        return info;
      }
      return absl::FailedPreconditionError(
          absl::StrCat("rank ", req.rank(), " of ", name,
                       " is already committed with a different manifest"));
    }
    if (info.state() != v1::PENDING) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " is not pending"));
    }
    // Every referenced blob must be stored and long enough. Checked under
    // mu_, in the BlobIndex, so that GC cannot take one between this check
    // and the publish.
    auto granted = leases_.find({req.run(), req.version()});
    for (const BlobUse& use : summary.blobs) {
      std::optional<uint64_t> size = index_.StoredSize(use.digest);
      // Tenancy: only blobs uploaded into this version or reported present
      // to it count; a digest stored for another run is "missing" here.
      if (granted == leases_.end() ||
          !granted->second.granted.contains(use.digest)) {
        size.reset();
      }
      if (!size.has_value()) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "blob ", use.digest.Hex(), " for key '", use.key,
                "' is missing: it was never uploaded (or was collected, or "
                "found damaged); upload it and commit again")),
            v1::BLOB_MISSING);
      }
      if (*size < use.end) {
        return absl::InvalidArgumentError(absl::StrCat(
            "key '", use.key, "' reads blob ", use.digest.Hex(), " up to byte ",
            use.end, " but the blob has ", *size, " bytes"));
      }
    }
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Manifest(req.run(), req.version(), req.rank()),
              manifest);
    v1::ShardInfo* shard = info.add_shards();
    shard->set_rank(req.rank());
    shard->set_total_bytes(summary.total_bytes);
    shard->set_tensor_count(summary.tensor_count);
    shard->set_committed_at(NowNanos());
    shard->mutable_metrics()->insert(req.metrics().begin(),
                                     req.metrics().end());
    std::sort(info.mutable_shards()->begin(), info.mutable_shards()->end(),
              [](const v1::ShardInfo& a, const v1::ShardInfo& b) {
                return a.rank() < b.rank();
              });
    info.set_total_bytes(info.total_bytes() + summary.total_bytes);
    // Shards arrive in any order: each metric comes from the lowest rank
    // that reported it (shards are sorted by rank; the first one wins).
    info.clear_metrics();
    for (const auto& s : info.shards()) {
      for (const auto& [k, v] : s.metrics())
        info.mutable_metrics()->insert({k, v});
    }
    auto lease_it = leases_.find({req.run(), req.version()});
    if (lease_it != leases_.end()) {
      lease_it->second.last_activity = NowNanos();
      info.set_uploaded_bytes(info.uploaded_bytes() +
                              lease_it->second.uploaded_bytes);
      lease_it->second.uploaded_bytes = 0;
    }
    const bool publish =
        static_cast<uint32_t>(info.shards_size()) == info.world_size();
    published = publish;
    if (publish) {
      info.set_state(v1::COMMITTED);
      info.set_committed_at(NowNanos());
      batch.Delete(storage::keys::Pending(req.run(), info.step()));
      CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
      // `last` is the newest version: one begun earlier that completes
      // later (a slow rank) publishes without moving `last` back.
      CKPTD_ASSIGN_OR_RETURN(uint64_t current_last,
                             AliasTargetOrZero(req.run(), std::string(kLast)));
      if (req.version() > current_last) {
        CKPTD_RETURN_IF_ERROR(MoveAlias(batch, req.run(), std::string(kLast),
                                        req.version(), actor, &seq));
        moves.push_back({std::string(kLast), info});
      }
      const v1::Policy& policy = run_info.policy();
      CKPTD_ASSIGN_OR_RETURN(uint64_t current_best,
                             AliasTargetOrZero(req.run(), std::string(kBest)));
      std::optional<v1::VersionInfo> current;
      if (current_best != 0) {
        CKPTD_ASSIGN_OR_RETURN(current, LoadVersion(req.run(), current_best));
      }
      if (BecomesBest(info, current ? &*current : nullptr, policy)) {
        CKPTD_RETURN_IF_ERROR(MoveAlias(batch, req.run(), std::string(kBest),
                                        req.version(), actor, &seq));
        moves.push_back({std::string(kBest), info});
      }
    }
    batch.Put(storage::keys::Version(req.run(), req.version()), info);
    if (publish) {
      CKPTD_RETURN_IF_ERROR(ReleasePending(batch, req.run(), req.version()));
    }
    CKPTD_KILL_POINT(publish ? "commit.before_publish" : "commit.before_shard");
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    CKPTD_KILL_POINT(publish ? "commit.after_publish" : "commit.after_shard");
    // The manifest holds its blobs now; then the version's leases go. Refs
    // are counted with the same function that drops them (ManifestDigests).
    for (const Digest& d : ManifestDigests(manifest)) {
      index_.AddRef(d, req.run());
    }
    if (publish) ForgetPending(req.run(), req.version());
    CKPTD_RETURN_IF_ERROR(FillAliases(&info));
    // Under mu_: watchers see moves in commit order.
    for (auto& m : moves) m.target = info;
    watchers_.Notify(req.run(), moves);
  }
  if (published) {
    // Interrupted uploads of the version can no longer be resumed.
    uploads_.DropVersion(req.run(), req.version());
    if (options_.on_publish) options_.on_publish(info);
    // Retention is a separate step after the publish (invariant 4).
    auto deleted = ApplyRetention(req.run());
    if (!deleted.ok()) {
      spdlog::warn("retention for run {}: {}", req.run(),
                   deleted.status().ToString());
    }
  }
  return info;
}

absl::Status Repository::AbortVersion(const v1::AbortVersionRequest& req,
                                      const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pushes (AbortVersion)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(req.version()));
  absl::StatusOr<bool> aborted = false;
  {
    absl::MutexLock lock(&mu_);
    aborted = AbortLocked(req);
  }
  // Interrupted uploads of the version would keep their temp files; also
  // after a failed abort, which stops the version's uploads all the same.
  uploads_.DropVersion(req.run(), req.version());
  if (aborted.ok() && *aborted) {
    RecordAudit(actor, req.run(), "abort_version", req.version(),
                req.reason().substr(0, 200));
  }
  // Free what only the aborted version held (its leases are gone), also
  // when the abort could not be recorded.
  CollectNewGarbage("an abort");
  return aborted.status();
}

absl::StatusOr<bool> Repository::AbortLocked(
    const v1::AbortVersionRequest& req) {
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                         LoadVersion(req.run(), req.version()));
  if (info.state() == v1::ABORTED) return false;
  if (info.state() == v1::COMMITTED) {
    return absl::FailedPreconditionError(
        absl::StrCat(VersionName(req.run(), req.version()),
                     " is committed; delete it with DeleteVersion instead"));
  }
  info.set_state(v1::ABORTED);
  info.set_abort_reason(req.reason().empty() ? "aborted by a client"
                                             : req.reason().substr(0, 1024));
  storage::MetadataBatch batch;
  // An aborted version is never readable: the manifests of the shards that
  // did commit go, so their blobs can be freed. The record stays, so ranks
  // still arriving are told why.
  CKPTD_ASSIGN_OR_RETURN(auto shards,
                         LoadShardDigests(req.run(), req.version()));
  for (const auto& shard : info.shards()) {
    batch.Delete(
        storage::keys::Manifest(req.run(), req.version(), shard.rank()));
  }
  batch.Put(storage::keys::Version(req.run(), req.version()), info);
  batch.Delete(storage::keys::Pending(req.run(), info.step()));
  CKPTD_RETURN_IF_ERROR(ReleasePending(batch, req.run(), req.version()));
  if (absl::Status st = meta_->Commit(batch); !st.ok()) {
    // Most likely a full disk. The version never published, so its leases
    // protect nothing acknowledged: dropping them stops its uploads here
    // and frees the blobs only it held, which may be what makes room.
    ForgetPending(req.run(), req.version());
    return WithReason(
        absl::Status(
            st.code(),
            absl::StrCat("the abort of ", VersionName(req.run(), req.version()),
                         " was not recorded (", st.message(),
                         "); its uploads are stopped and the blobs "
                         "only it held are freed, but after a "
                         "restart it is pending again until "
                         "--pending_timeout aborts it")),
        ReasonOf(st));
  }
  for (const auto& digests : shards) {
    for (const Digest& d : digests) index_.DropRef(d, req.run());
  }
  ForgetPending(req.run(), req.version());
  return true;
}

absl::StatusOr<int> Repository::AbortExpiredPending() {
  // A replica's pending versions are the writer's to abort.
  if (is_replica()) return 0;
  const int64_t cutoff =
      NowNanos() - absl::ToInt64Nanoseconds(options_.pending_timeout);
  int aborted = 0;
  std::vector<PendingKey> expired;
  {
    absl::MutexLock lock(&mu_);
    // leases_ has an entry for every pending version (BeginVersion,
    // Recover).
    for (const auto& [key, leases] : leases_) {
      if (leases.last_activity < cutoff) expired.push_back(key);
    }
    for (const auto& [run, version] : expired) {
      v1::AbortVersionRequest req;
      req.set_run(run);
      req.set_version(version);
      req.set_reason(
          absl::StrCat("no rank made progress for ",
                       absl::FormatDuration(options_.pending_timeout),
                       " (--pending_timeout)"));
      absl::StatusOr<bool> done = AbortLocked(req);
      if (!done.ok()) {
        spdlog::warn("pending timeout of {}@{}: {}", run, version,
                     done.status().ToString());
      } else if (*done) {
        ++aborted;
        spdlog::info("aborted {}@{}: pending timeout", run, version);
      }
    }
  }
  // Also after a failed abort: its leases and uploads are dropped all the
  // same.
  for (const auto& [run, version] : expired) uploads_.DropVersion(run, version);
  CollectNewGarbage("the pending sweep");
  return aborted;
}

}  // namespace ckptd::core
