#include "server/core/repository.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/base/error_reason.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/common/kill_point.h"
#include "server/core/manifest.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {
namespace {

constexpr absl::string_view kLast = "last";
constexpr absl::string_view kBest = "best";

std::string VersionName(absl::string_view run, uint64_t version) {
  return absl::StrCat(run, "@", version);
}

absl::Status CheckVersionNumber(uint64_t version) {
  if (version == 0) {
    return absl::InvalidArgumentError(
        "version is 0; versions start at 1 (use the number BeginVersion "
        "returned)");
  }
  return absl::OkStatus();
}

absl::Status ParseProto(absl::string_view key, absl::string_view bytes,
                        google::protobuf::MessageLite* out) {
  if (!out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(
        absl::StrCat("stored record ", key, " does not parse"));
  }
  return absl::OkStatus();
}

bool HasMetric(const v1::VersionInfo& v, const std::string& metric,
               double* value) {
  auto it = v.metrics().find(metric);
  if (it == v.metrics().end() || std::isnan(it->second)) return false;
  *value = it->second;
  return true;
}

absl::Status ValidateEnv(const v1::Environment& env) {
  for (const auto* s :
       {&env.torch_version(), &env.cuda_version(), &env.python_version(),
        &env.hostname(), &env.client_version()}) {
    if (s->size() > kMaxLabelLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment field is ", s->size(),
                       " bytes; the limit is ", kMaxLabelLength));
    }
  }
  for (const auto& [k, v] : env.labels()) {
    if (k.empty() || k.size() > kMaxMetricNameLength ||
        v.size() > kMaxLabelLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label '", k.substr(0, 64), "' must have a 1-", kMaxMetricNameLength,
          " character key and a value of at most ", kMaxLabelLength, " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool MetricImproves(v1::Mode mode, double candidate, double current) {
  if (std::isnan(candidate)) return false;
  if (std::isnan(current)) return true;
  return mode == v1::MAX ? candidate > current : candidate < current;
}

// ---------------------------------------------------------------------------
// BlobUpload

BlobUpload::BlobUpload(Repository* repo, std::string run, uint64_t version,
                       Digest digest, uint64_t blob_size,
                       std::unique_ptr<storage::BlobWriter> writer)
    : repo_(repo),
      run_(std::move(run)),
      version_(version),
      digest_(digest),
      blob_size_(blob_size),
      writer_(std::move(writer)) {}

BlobUpload::~BlobUpload() {
  Suspend();
  repo_->EndActiveUpload(digest_);
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
  absl::Status st = writer->Commit(digest_);
  if (!st.ok()) return st;
  CKPTD_KILL_POINT("upload.blob_committed");
  repo_->RecordUpload(run_, version_, digest_, TakeUnreported());
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
  repo_->SuspendUpload(digest_, blob_size_, std::move(writer_));
}

// ---------------------------------------------------------------------------
// Open / recovery

Repository::Repository(RepositoryOptions options,
                       std::unique_ptr<storage::MetadataStore> meta,
                       std::shared_ptr<storage::BlobStore> blobs)
    : options_(std::move(options)),
      meta_(std::move(meta)),
      blobs_(std::move(blobs)) {}

Repository::~Repository() {
  absl::MutexLock lock(&upload_mu_);
  suspended_.clear();
}

absl::StatusOr<std::unique_ptr<Repository>> Repository::Open(
    const RepositoryOptions& options,
    std::shared_ptr<storage::BlobStore> blobs) {
  CKPTD_ASSIGN_OR_RETURN(auto meta, storage::MetadataStore::Open(
                                  options.metadata_dir, options.metadata_env));
  std::unique_ptr<Repository> repo(
      new Repository(options, std::move(meta), std::move(blobs)));
  CKPTD_RETURN_IF_ERROR(repo->Recover());
  return repo;
}

absl::StatusOr<std::unique_ptr<Repository>> Repository::OpenDataDir(
    const std::string& data_dir, RepositoryOptions options) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    return ErrnoToStatus(ec.value(),
                         absl::StrCat("create data dir ", data_dir));
  }
  options.metadata_dir = absl::StrCat(data_dir, "/meta");
  // Open RocksDB first: its LOCK keeps a second ckptd off the blobs too.
  CKPTD_ASSIGN_OR_RETURN(auto meta, storage::MetadataStore::Open(
                                  options.metadata_dir, options.metadata_env));
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<storage::BlobStore> blobs,
                   storage::OpenFileBlobStore(data_dir));
  std::unique_ptr<Repository> repo(
      new Repository(options, std::move(meta), std::move(blobs)));
  CKPTD_RETURN_IF_ERROR(repo->Recover());
  return repo;
}

absl::Status Repository::Recover() {
  CKPTD_RETURN_IF_ERROR(blobs_->RemoveTemporaries());
  absl::MutexLock lock(&mu_);
  // Leases of versions still pending come back; stale ones are dropped.
  storage::MetadataBatch stale;
  CKPTD_RETURN_IF_ERROR(meta_->Scan(
      storage::keys::kLeasePrefix, "",
      [&](absl::string_view key, absl::string_view) {
        std::vector<absl::string_view> parts = absl::StrSplit(key, '/');
        uint64_t version = 0;
        absl::StatusOr<Digest> digest = absl::InvalidArgumentError("");
        if (parts.size() == 4 && absl::SimpleHexAtoi(parts[2], &version)) {
          digest = DigestFromHex(parts[3]);
        }
        auto info = digest.ok()
                        ? LoadVersion(std::string(parts[1]), version)
                        : absl::StatusOr<v1::VersionInfo>(digest.status());
        if (info.ok() && info->state() == v1::PENDING) {
          leases_[{std::string(parts[1]), version}].digests.insert(*digest);
        } else {
          stale.Delete(key);
        }
        return true;
      }));
  if (!stale.empty()) CKPTD_RETURN_IF_ERROR(meta_->Commit(stale, /*sync=*/false));
  // Every pending version (also one that leased nothing yet) is open for
  // its ranks; the pending timeout counts from now, giving ranks that were
  // cut off by the restart a full timeout to come back.
  CKPTD_RETURN_IF_ERROR(meta_->Scan(
      "pend/", "", [&](absl::string_view key, absl::string_view value) {
        absl::string_view rest = key.substr(5);
        const size_t slash = rest.find('/');
        uint64_t version = 0;
        if (slash != absl::string_view::npos &&
            absl::SimpleAtoi(value, &version)) {
          leases_[{std::string(rest.substr(0, slash)), version}];
        }
        return true;
      }));
  for (auto& [key, leases] : leases_) leases.last_activity = NowNanos();
  v1::CollectGarbageResponse gc;
  CKPTD_RETURN_IF_ERROR(CollectGarbageLocked(&gc));
  if (gc.blobs_deleted() > 0) {
    spdlog::info("recovery: removed {} unreferenced blobs ({} bytes)",
                 gc.blobs_deleted(), gc.bytes_freed());
  }
  return absl::OkStatus();
}

int64_t Repository::NowNanos() const {
  return absl::ToUnixNanos(options_.now());
}

// ---------------------------------------------------------------------------
// Loading helpers

absl::StatusOr<v1::RunInfo> Repository::LoadRun(const std::string& run) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(run));
  v1::RunInfo info;
  CKPTD_ASSIGN_OR_RETURN(bool found, meta_->GetProto(storage::keys::Run(run), &info));
  if (!found) {
    return absl::NotFoundError(absl::StrCat("no run named '", run, "'"));
  }
  return info;
}

absl::StatusOr<v1::VersionInfo> Repository::LoadVersion(const std::string& run,
                                                        uint64_t version) {
  v1::VersionInfo info;
  CKPTD_ASSIGN_OR_RETURN(
      bool found, meta_->GetProto(storage::keys::Version(run, version), &info));
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("run '", run, "' has no version ", version));
  }
  return info;
}

absl::StatusOr<uint64_t> Repository::Resolve(const std::string& run,
                                             const std::string& ref) {
  CKPTD_ASSIGN_OR_RETURN(Ref parsed, ParseRef(ref));
  if (const uint64_t* v = std::get_if<uint64_t>(&parsed.value)) return *v;
  const std::string& alias = std::get<std::string>(parsed.value);
  v1::AliasInfo info;
  CKPTD_ASSIGN_OR_RETURN(bool found,
                   meta_->GetProto(storage::keys::Alias(run, alias), &info));
  if (!found) {
    std::string hint;
    if (alias == kBest) {
      hint =
          " (`best` needs a policy with a monitored metric and a version "
          "that reports it)";
    } else if (alias == kLast) {
      hint = " (no version has been committed yet)";
    }
    return absl::NotFoundError(
        absl::StrCat("run '", run, "' has no alias '", alias, "'", hint));
  }
  return info.version();
}

absl::StatusOr<uint64_t> Repository::AliasTargetOrZero(
    const std::string& run, const std::string& alias) {
  absl::StatusOr<uint64_t> v = Resolve(run, alias);
  if (absl::IsNotFound(v.status())) return 0;
  return v;
}

absl::StatusOr<v1::VersionInfo> Repository::LoadCommitted(
    const std::string& run, const std::string& ref) {
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run_info, LoadRun(run));
  CKPTD_ASSIGN_OR_RETURN(uint64_t version, Resolve(run, ref));
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(run, version));
  switch (info.state()) {
    case v1::COMMITTED:
      return info;
    case v1::PENDING:
      return absl::FailedPreconditionError(absl::StrCat(
          VersionName(run, version), " is pending (", info.shards_size(),
          " of ", info.world_size(), " shards committed)"));
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          VersionName(run, version), " was aborted: ", info.abort_reason()));
  }
}

absl::StatusOr<std::vector<v1::AliasInfo>> Repository::LoadAliases(
    const std::string& run) {
  std::vector<v1::AliasInfo> out;
  absl::Status parse_status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::AliasPrefix(run), "",
                  [&](absl::string_view key, absl::string_view value) {
                    v1::AliasInfo a;
                    parse_status = ParseProto(key, value, &a);
                    if (!parse_status.ok()) return false;
                    out.push_back(std::move(a));
                    return true;
                  }));
  CKPTD_RETURN_IF_ERROR(parse_status);
  return out;
}

absl::Status Repository::FillAliases(v1::VersionInfo* info) {
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(info->run()));
  info->clear_aliases();
  for (const auto& a : aliases) {
    if (a.version() == info->version()) info->add_aliases(a.name());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::VersionInfo>> Repository::LoadVersions(
    const std::string& run) {
  std::vector<v1::VersionInfo> out;
  absl::Status parse_status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::VersionPrefix(run), "",
                  [&](absl::string_view key, absl::string_view value) {
                    v1::VersionInfo v;
                    parse_status = ParseProto(key, value, &v);
                    if (!parse_status.ok()) return false;
                    out.push_back(std::move(v));
                    return true;
                  }));
  CKPTD_RETURN_IF_ERROR(parse_status);
  return out;
}

absl::StatusOr<uint64_t> Repository::NextEventSeq(const std::string& run) {
  CKPTD_ASSIGN_OR_RETURN(auto last,
                   meta_->Last(storage::keys::AliasEventPrefix(run)));
  if (!last.has_value()) return 1;
  auto seq = storage::keys::VersionFromKey(last->first);
  if (!seq.has_value()) {
    return absl::DataLossError(
        absl::StrCat("malformed alias history key ", last->first));
  }
  return *seq + 1;
}

absl::Status Repository::MoveAlias(storage::MetadataBatch& batch,
                                   const std::string& run,
                                   const std::string& alias, uint64_t to,
                                   const Actor& actor, uint64_t* event_seq) {
  v1::AliasInfo current;
  CKPTD_ASSIGN_OR_RETURN(bool found,
                   meta_->GetProto(storage::keys::Alias(run, alias), &current));
  const uint64_t from = found ? current.version() : 0;
  if (from == to) return absl::OkStatus();
  if (to == 0) {
    batch.Delete(storage::keys::Alias(run, alias));
  } else {
    v1::AliasInfo info;
    info.set_run(run);
    info.set_name(alias);
    info.set_version(to);
    info.set_updated_at(NowNanos());
    batch.Put(storage::keys::Alias(run, alias), info);
  }
  v1::AliasEvent event;
  event.set_run(run);
  event.set_alias(alias);
  event.set_from_version(from);
  event.set_to_version(to);
  event.set_at(NowNanos());
  event.set_actor(actor.name);
  batch.Put(storage::keys::AliasEvent(run, (*event_seq)++), event);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Repository::ComputeBest(const std::string& run,
                                                 const v1::Policy& policy) {
  if (policy.monitor().empty()) return 0;
  CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(run));
  uint64_t best = 0;
  double best_value = 0;
  for (const auto& v : versions) {
    double value;
    if (v.state() != v1::COMMITTED || !HasMetric(v, policy.monitor(), &value)) {
      continue;
    }
    if (best == 0 || MetricImproves(policy.mode(), value, best_value)) {
      best = v.version();
      best_value = value;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------
// Push

absl::StatusOr<v1::BeginVersionResponse> Repository::BeginVersion(
    const v1::BeginVersionRequest& req) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(ValidateEnv(req.env()));
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
    CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(req.run(), version));
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
  storage::MetadataBatch batch;
  v1::RunInfo run_info;
  CKPTD_ASSIGN_OR_RETURN(bool run_found,
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
  return WithReason(absl::FailedPreconditionError(
                        absl::StrCat(VersionName(run, version),
                                     " is already committed and immutable")),
                    v1::VERSION_NOT_PENDING);
}

absl::StatusOr<v1::FindMissingBlobsResponse> Repository::FindMissingBlobs(
    const v1::FindMissingBlobsRequest& req) {
  CKPTD_RETURN_IF_ERROR(CheckPending(req.run(), req.version()));
  std::vector<Digest> digests;
  digests.reserve(req.digests_size());
  for (const std::string& d : req.digests()) {
    CKPTD_ASSIGN_OR_RETURN(Digest digest, DigestFromBytes(d));
    digests.push_back(digest);
  }
  v1::FindMissingBlobsResponse resp;
  // Under mu_, so GC cannot delete a blob between "present" and the lease.
  absl::MutexLock lock(&mu_);
  std::vector<Digest> present;
  for (const Digest& d : digests) {
    CKPTD_ASSIGN_OR_RETURN(auto size, blobs_->Stat(d));
    if (size.has_value()) {
      present.push_back(d);
    } else {
      resp.add_missing(std::string(d.AsBytes()));
    }
  }
  CKPTD_RETURN_IF_ERROR(PersistLeases(req.run(), req.version(), present));
  return resp;
}

absl::StatusOr<std::unique_ptr<BlobUpload>> Repository::StartBlobUpload(
    const std::string& run, uint64_t version, const Digest& digest,
    uint64_t blob_size, uint64_t offset) {
  if (blob_size > options_.max_blob_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "blob ", digest.Hex(), " of ", blob_size,
        " bytes exceeds the server's limit of ", options_.max_blob_size));
  }
  {
    // Lease first, so GC keeps the blob from the moment it lands.
    absl::MutexLock lock(&mu_);
    auto it = leases_.find({run, version});
    if (it == leases_.end()) {
      return WithReason(absl::FailedPreconditionError(absl::StrCat(
                            VersionName(run, version),
                            " is not pending (committed or aborted meanwhile)")),
                        v1::VERSION_NOT_PENDING);
    }
    it->second.digests.insert(digest);
    it->second.last_activity = NowNanos();
  }
  std::unique_ptr<storage::BlobWriter> writer;
  if (offset > 0) {
    absl::MutexLock lock(&upload_mu_);
    auto it = suspended_.find(digest);
    if (it == suspended_.end() || it->second.blob_size != blob_size) {
      return WithReason(
          absl::FailedPreconditionError(absl::StrCat(
              "blob ", digest.Hex(),
              ": no interrupted upload to resume at offset ", offset,
              "; QueryUpload reports where to resume (0: start over)")),
          v1::RESUME_POINT_LOST);
    }
    if (it->second.durable != offset) {
      return WithReason(absl::FailedPreconditionError(absl::StrCat(
                            "blob ", digest.Hex(), ": resume offset ", offset,
                            " but the durable offset is ",
                            it->second.durable)),
                        v1::RESUME_POINT_LOST);
    }
    writer = std::move(it->second.writer);
    suspended_.erase(it);
    ++active_uploads_[digest];  // with the erase: QueryUpload sees one
  } else {
    CKPTD_ASSIGN_OR_RETURN(writer, blobs_->NewWriter());
    absl::MutexLock lock(&upload_mu_);
    ++active_uploads_[digest];
  }
  return std::unique_ptr<BlobUpload>(
      new BlobUpload(this, run, version, digest, blob_size, std::move(writer)));
}

void Repository::RecordUpload(const std::string& run, uint64_t version,
                              const Digest& digest, uint64_t bytes) {
  DropSuspendedUpload(digest);
  absl::MutexLock lock(&mu_);
  auto it = leases_.find({run, version});
  if (it == leases_.end()) return;  // no longer pending
  it->second.uploaded_bytes += bytes;
  absl::Status st = PersistLeases(run, version, {digest});
  if (!st.ok()) {
    // The in-memory lease still protects the blob in this process.
    spdlog::warn("persist lease of {} for {}@{}: {}", digest.Hex(), run,
                 version, st.ToString());
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

void Repository::DropSuspendedUpload(const Digest& digest) {
  absl::MutexLock lock(&upload_mu_);
  suspended_.erase(digest);  // its temp file is removed with the writer
}

int Repository::ExpireSuspendedUploads() {
  const absl::Time cutoff = options_.now() - options_.pending_timeout;
  absl::MutexLock lock(&upload_mu_);
  int n = 0;
  for (auto it = suspended_.begin(); it != suspended_.end();) {
    if (it->second.at < cutoff) {
      suspended_.erase(it++);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

absl::Status Repository::PersistLeases(const std::string& run, uint64_t version,
                                       const std::vector<Digest>& digests) {
  auto it = leases_.find({run, version});
  // Only pending versions hold leases; one that published or aborted
  // meanwhile needs none (its commit, if any, re-checks every blob).
  if (it == leases_.end()) return absl::OkStatus();
  PendingLeases& leases = it->second;
  leases.last_activity = NowNanos();
  storage::MetadataBatch batch;
  for (const Digest& d : digests) {
    leases.digests.insert(d);
    batch.Put(storage::keys::Lease(run, version, d.Hex()), "");
  }
  if (batch.empty()) return absl::OkStatus();
  return meta_->Commit(batch, /*sync=*/false);
}

absl::Status Repository::ReleasePending(storage::MetadataBatch& batch,
                                        const std::string& run,
                                        uint64_t version) {
  CKPTD_RETURN_IF_ERROR(meta_->Scan(storage::keys::LeasePrefix(run, version), "",
                              [&](absl::string_view key, absl::string_view) {
                                batch.Delete(key);
                                return true;
                              }));
  leases_.erase({run, version});
  return absl::OkStatus();
}

void Repository::SuspendUpload(const Digest& digest, uint64_t blob_size,
                               std::unique_ptr<storage::BlobWriter> writer) {
  absl::StatusOr<uint64_t> durable = writer->Sync();
  if (!durable.ok()) {
    spdlog::warn("dropping interrupted upload of {}: {}", digest.Hex(),
                 durable.status().ToString());
    return;  // writer destructor abandons
  }
  absl::MutexLock lock(&upload_mu_);
  if (suspended_.size() >= options_.max_suspended_uploads) {
    auto oldest = suspended_.begin();
    for (auto it = suspended_.begin(); it != suspended_.end(); ++it) {
      if (it->second.at < oldest->second.at) oldest = it;
    }
    suspended_.erase(oldest);
  }
  SuspendedUpload& s = suspended_[digest];
  s.writer = std::move(writer);
  s.blob_size = blob_size;
  s.durable = *durable;
  s.at = options_.now();
}

void Repository::EndActiveUpload(const Digest& digest) {
  absl::MutexLock lock(&upload_mu_);
  auto it = active_uploads_.find(digest);
  if (it != active_uploads_.end() && --it->second == 0) {
    active_uploads_.erase(it);
  }
}

absl::StatusOr<v1::QueryUploadResponse> Repository::QueryUpload(
    const v1::QueryUploadRequest& req) {
  CKPTD_ASSIGN_OR_RETURN(Digest digest, DigestFromBytes(req.digest()));
  {
    // A client asks right after its stream broke; the server may not have
    // seen the break yet. Waiting for that stream to be suspended (or
    // finished) turns "start over at 0" into a resume.
    absl::MutexLock lock(&upload_mu_);
    auto idle = [this, &digest]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu_) {
      return !active_uploads_.contains(digest);
    };
    upload_mu_.AwaitWithTimeout(absl::Condition(&idle),
                                options_.query_upload_wait);
  }
  v1::QueryUploadResponse resp;
  {
    // Under mu_, so GC cannot delete the blob between "complete" and the
    // lease (as in FindMissingBlobs).
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(auto size, blobs_->Stat(digest));
    if (size.has_value()) {
      resp.set_complete(true);
      resp.set_durable_offset(*size);
      auto it = leases_.find({req.run(), req.version()});
      if (it != leases_.end()) it->second.digests.insert(digest);
      return resp;
    }
  }
  absl::MutexLock lock(&upload_mu_);
  auto it = suspended_.find(digest);
  if (it != suspended_.end()) resp.set_durable_offset(it->second.durable);
  return resp;
}

absl::StatusOr<v1::VersionInfo> Repository::CommitShard(
    const v1::CommitShardRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(req.version()));
  for (const auto& [name, value] : req.metrics()) {
    CKPTD_RETURN_IF_ERROR(ValidateMetricName(name));
  }
  CKPTD_ASSIGN_OR_RETURN(ManifestSummary summary, ValidateManifest(req.manifest()));
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
    // mu_ so that GC cannot remove one between this check and the publish.
    for (const BlobUse& use : summary.blobs) {
      CKPTD_ASSIGN_OR_RETURN(auto size, blobs_->Stat(use.digest));
      if (!size.has_value()) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "blob ", use.digest.Hex(), " for key '", use.key,
                "' is missing: it was never uploaded (or was collected); "
                "upload it and commit again")),
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
      double value;
      if (!policy.monitor().empty() &&
          HasMetric(info, policy.monitor(), &value)) {
        bool improves = true;
        v1::AliasInfo best;
        CKPTD_ASSIGN_OR_RETURN(
            bool has_best,
            meta_->GetProto(storage::keys::Alias(req.run(), kBest), &best));
        if (has_best) {
          CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo current,
                           LoadVersion(req.run(), best.version()));
          double current_value;
          if (HasMetric(current, policy.monitor(), &current_value)) {
            improves = MetricImproves(policy.mode(), value, current_value);
          }
        }
        if (improves) {
          CKPTD_RETURN_IF_ERROR(MoveAlias(batch, req.run(), std::string(kBest),
                                    req.version(), actor, &seq));
          moves.push_back({std::string(kBest), info});
        }
      }
    }
    batch.Put(storage::keys::Version(req.run(), req.version()), info);
    if (publish) {
      CKPTD_RETURN_IF_ERROR(ReleasePending(batch, req.run(), req.version()));
    }
    CKPTD_KILL_POINT(publish ? "commit.before_publish" : "commit.before_shard");
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    CKPTD_KILL_POINT(publish ? "commit.after_publish" : "commit.after_shard");
    CKPTD_RETURN_IF_ERROR(FillAliases(&info));
    // Under mu_: watchers see moves in commit order.
    for (auto& m : moves) m.target = info;
    Notify(req.run(), moves);
  }
  if (published) {
    // Retention is a separate step after the publish (invariant 4).
    auto deleted = ApplyRetention(req.run());
    if (!deleted.ok()) {
      spdlog::warn("retention for run {}: {}", req.run(),
                   deleted.status().ToString());
    }
  }
  return info;
}

absl::Status Repository::AbortVersion(const v1::AbortVersionRequest& req) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(req.version()));
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(bool aborted, AbortLocked(req));
  if (aborted) CollectAfterAbort();
  return absl::OkStatus();
}

void Repository::CollectAfterAbort() {
  // Free what only aborted versions held (their leases are gone).
  v1::CollectGarbageResponse gc;
  absl::Status st = CollectGarbageLocked(&gc);
  if (!st.ok()) {
    spdlog::warn("GC after an abort: {}", st.ToString());
  } else if (gc.blobs_deleted() > 0) {
    spdlog::info("after an abort: freed {} blobs ({} bytes)",
                 gc.blobs_deleted(), gc.bytes_freed());
  }
}

absl::StatusOr<bool> Repository::AbortLocked(
    const v1::AbortVersionRequest& req) {
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(req.run(), req.version()));
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
  // did commit go, so GC can free their blobs. The record stays, so ranks
  // still arriving are told why.
  for (const auto& shard : info.shards()) {
    batch.Delete(
        storage::keys::Manifest(req.run(), req.version(), shard.rank()));
  }
  batch.Put(storage::keys::Version(req.run(), req.version()), info);
  batch.Delete(storage::keys::Pending(req.run(), info.step()));
  CKPTD_RETURN_IF_ERROR(ReleasePending(batch, req.run(), req.version()));
  CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
  return true;
}

absl::StatusOr<int> Repository::AbortExpiredPending() {
  const int64_t cutoff =
      NowNanos() - absl::ToInt64Nanoseconds(options_.pending_timeout);
  absl::MutexLock lock(&mu_);
  // leases_ has an entry for every pending version (BeginVersion, Recover).
  std::vector<std::pair<std::string, uint64_t>> expired;
  for (const auto& [key, leases] : leases_) {
    if (leases.last_activity < cutoff) expired.push_back(key);
  }
  int aborted = 0;
  for (const auto& [run, version] : expired) {
    v1::AbortVersionRequest req;
    req.set_run(run);
    req.set_version(version);
    req.set_reason(absl::StrCat("no rank made progress for ",
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
  if (aborted > 0) CollectAfterAbort();
  return aborted;
}

// ---------------------------------------------------------------------------
// Pull

absl::StatusOr<v1::GetVersionResponse> Repository::GetVersion(
    const v1::GetVersionRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  v1::GetVersionResponse resp;
  CKPTD_ASSIGN_OR_RETURN(*resp.mutable_info(), LoadCommitted(req.run(), req.ref()));
  CKPTD_RETURN_IF_ERROR(FillAliases(resp.mutable_info()));
  if (!req.include_manifest()) return resp;
  const v1::VersionInfo& info = resp.info();
  for (uint32_t rank : req.ranks()) {
    if (rank >= info.world_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank ", rank,
          " is out of range: ", VersionName(info.run(), info.version()),
          " has world_size ", info.world_size()));
    }
  }
  for (const auto& shard : info.shards()) {
    if (!req.ranks().empty() &&
        std::find(req.ranks().begin(), req.ranks().end(), shard.rank()) ==
            req.ranks().end()) {
      continue;
    }
    v1::ShardManifest* m = resp.add_shards();
    CKPTD_ASSIGN_OR_RETURN(
        bool found,
        meta_->GetProto(
            storage::keys::Manifest(info.run(), info.version(), shard.rank()),
            m));
    if (!found) {
      return absl::DataLossError(
          absl::StrCat("manifest of rank ", shard.rank(), " of ",
                       VersionName(info.run(), info.version()), " is missing"));
    }
  }
  return resp;
}

absl::StatusOr<absl::flat_hash_set<Digest>> Repository::VersionBlobs(
    const std::string& run, uint64_t version) {
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(version));
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                   LoadCommitted(run, absl::StrCat(version)));
  absl::flat_hash_set<Digest> out;
  absl::Status parse_status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::ManifestPrefix(run, version), "",
                  [&](absl::string_view key, absl::string_view value) {
                    v1::ShardManifest m;
                    parse_status = ParseProto(key, value, &m);
                    if (!parse_status.ok()) return false;
                    for (const auto& e : m.entries()) {
                      if (!e.has_tensor()) continue;
                      auto d = DigestFromBytes(e.tensor().blob_digest());
                      if (d.ok()) out.insert(*d);
                    }
                    return true;
                  }));
  CKPTD_RETURN_IF_ERROR(parse_status);
  return out;
}

// ---------------------------------------------------------------------------
// History

absl::StatusOr<v1::ListRunsResponse> Repository::ListRuns() {
  absl::ReaderMutexLock lock(&mu_);
  v1::ListRunsResponse resp;
  absl::Status parse_status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::kRunPrefix, "",
                  [&](absl::string_view key, absl::string_view value) {
                    parse_status = ParseProto(key, value, resp.add_runs());
                    return parse_status.ok();
                  }));
  CKPTD_RETURN_IF_ERROR(parse_status);
  for (v1::RunInfo& run : *resp.mutable_runs()) {
    CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(run.name()));
    for (const auto& v : versions) {
      if (v.state() != v1::COMMITTED) continue;
      run.set_version_count(run.version_count() + 1);
      run.set_total_bytes(run.total_bytes() + v.total_bytes());
      run.set_last_commit_at(std::max(run.last_commit_at(), v.committed_at()));
    }
    CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(run.name()));
    for (const auto& a : aliases) {
      if (a.name() == kLast) run.set_last_version(a.version());
      if (a.name() == kBest) run.set_best_version(a.version());
    }
  }
  return resp;
}

absl::StatusOr<v1::ListVersionsResponse> Repository::ListVersions(
    const v1::ListVersionsRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  std::string start;
  if (!req.page_token().empty()) {
    uint64_t from = 0;
    if (!absl::SimpleAtoi(req.page_token(), &from)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", req.page_token().substr(0, 64),
                       "' is not one this server returned"));
    }
    start = storage::keys::Version(req.run(), from);
  }
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(req.run()));
  v1::ListVersionsResponse resp;
  absl::Status status;
  CKPTD_RETURN_IF_ERROR(meta_->Scan(
      storage::keys::VersionPrefix(req.run()), start,
      [&](absl::string_view key, absl::string_view value) {
        v1::VersionInfo v;
        status = ParseProto(key, value, &v);
        if (!status.ok()) return false;
        if (v.state() == v1::PENDING) return true;
        if (v.state() == v1::ABORTED && !req.include_aborted()) return true;
        if (req.has_min_step() && v.step() < req.min_step()) return true;
        if (req.has_max_step() && v.step() > req.max_step()) return true;
        if (!req.metric_present().empty() &&
            !v.metrics().contains(req.metric_present())) {
          return true;
        }
        for (const auto& [k, want] : req.label_equals()) {
          auto it = v.env().labels().find(k);
          if (it == v.env().labels().end() || it->second != want) return true;
        }
        if (req.page_size() > 0 &&
            static_cast<uint32_t>(resp.versions_size()) >= req.page_size()) {
          resp.set_next_page_token(absl::StrCat(v.version()));
          return false;
        }
        for (const auto& a : aliases) {
          if (a.version() == v.version()) v.add_aliases(a.name());
        }
        *resp.add_versions() = std::move(v);
        return true;
      }));
  CKPTD_RETURN_IF_ERROR(status);
  return resp;
}

absl::StatusOr<v1::GetMetricHistoryResponse> Repository::GetMetricHistory(
    const v1::GetMetricHistoryRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(req.run()));
  v1::GetMetricHistoryResponse resp;
  for (const auto& v : versions) {
    if (v.state() != v1::COMMITTED) continue;
    std::vector<std::pair<std::string, double>> metrics(v.metrics().begin(),
                                                        v.metrics().end());
    std::sort(metrics.begin(), metrics.end());
    for (const auto& [name, value] : metrics) {
      if (!req.metric().empty() && name != req.metric()) continue;
      v1::MetricPoint* p = resp.add_points();
      p->set_version(v.version());
      p->set_step(v.step());
      p->set_metric(name);
      p->set_value(value);
      p->set_committed_at(v.committed_at());
    }
  }
  return resp;
}

absl::StatusOr<v1::Policy> Repository::SetPolicy(
    const v1::SetPolicyRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  const v1::Policy& p = req.policy();
  if (!p.monitor().empty()) {
    CKPTD_RETURN_IF_ERROR(ValidateMetricName(p.monitor()));
    if (p.mode() != v1::MIN && p.mode() != v1::MAX) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy for run '", req.run(), "' monitors '", p.monitor(),
          "' but mode is unset; use mode min or max"));
    }
  }
  if (p.has_keep_last() && p.keep_last() == 0) {
    return absl::InvalidArgumentError(
        "keep_last must be at least 1 (leave it unset to keep every version)");
  }
  if (p.has_keep_best() && p.keep_best() == 0) {
    return absl::InvalidArgumentError(
        "keep_best must be at least 1 (leave it unset to keep every version)");
  }
  if (p.has_keep_best() && p.monitor().empty()) {
    return absl::InvalidArgumentError(
        "keep_best needs a monitored metric (set monitor and mode)");
  }
  if (p.has_keep_every_n_steps() && p.keep_every_n_steps() == 0) {
    return absl::InvalidArgumentError(
        "keep_every_n_steps must be at least 1 (leave it unset to disable)");
  }
  std::vector<AliasMove> moves;
  {
    absl::MutexLock lock(&mu_);
    v1::RunInfo run;
    CKPTD_ASSIGN_OR_RETURN(bool found,
                     meta_->GetProto(storage::keys::Run(req.run()), &run));
    if (!found) {
      run.set_name(req.run());
      run.set_created_at(NowNanos());
    }
    const bool best_changes = !found || run.policy().monitor() != p.monitor() ||
                              run.policy().mode() != p.mode();
    *run.mutable_policy() = p;
    if (p.monitor().empty())
      run.mutable_policy()->set_mode(v1::MODE_UNSPECIFIED);
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Run(req.run()), run);
    if (best_changes && found) {
      CKPTD_ASSIGN_OR_RETURN(uint64_t best, ComputeBest(req.run(), run.policy()));
      CKPTD_ASSIGN_OR_RETURN(uint64_t current,
                       AliasTargetOrZero(req.run(), std::string(kBest)));
      CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
      CKPTD_RETURN_IF_ERROR(
          MoveAlias(batch, req.run(), std::string(kBest), best, actor, &seq));
      if (best != 0 && best != current) {
        CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo target, LoadVersion(req.run(), best));
        moves.push_back({std::string(kBest), target});
      }
    }
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    for (auto& m : moves) CKPTD_RETURN_IF_ERROR(FillAliases(&m.target));
    Notify(req.run(), moves);
  }
  // The policy is saved; retention failing is logged, as after a commit.
  auto deleted = ApplyRetention(req.run());
  if (!deleted.ok()) {
    spdlog::warn("retention for run {}: {}", req.run(),
                 deleted.status().ToString());
  }
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  return run.policy();
}

absl::StatusOr<v1::Policy> Repository::GetPolicy(
    const v1::GetPolicyRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  return run.policy();
}

absl::StatusOr<v1::AliasInfo> Repository::SetAlias(
    const v1::SetAliasRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(ValidateUserAliasName(req.name()));
  v1::VersionInfo target;
  {
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(target, LoadCommitted(req.run(), req.ref()));
    storage::MetadataBatch batch;
    CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
    CKPTD_RETURN_IF_ERROR(
        MoveAlias(batch, req.run(), req.name(), target.version(), actor, &seq));
    if (!batch.empty()) {
      CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
      CKPTD_RETURN_IF_ERROR(FillAliases(&target));
      Notify(req.run(), {{req.name(), target}});
    }
  }
  absl::ReaderMutexLock lock(&mu_);
  v1::AliasInfo info;
  CKPTD_ASSIGN_OR_RETURN(
      bool found,
      meta_->GetProto(storage::keys::Alias(req.run(), req.name()), &info));
  if (!found) return absl::InternalError("alias vanished after SetAlias");
  return info;
}

absl::Status Repository::DeleteAlias(const v1::DeleteAliasRequest& req,
                                     const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(ValidateUserAliasName(req.name()));
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  CKPTD_ASSIGN_OR_RETURN(auto existing,
                   meta_->Get(storage::keys::Alias(req.run(), req.name())));
  if (!existing.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("run '", req.run(), "' has no alias '", req.name(), "'"));
  }
  storage::MetadataBatch batch;
  CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
  CKPTD_RETURN_IF_ERROR(MoveAlias(batch, req.run(), req.name(), 0, actor, &seq));
  return meta_->Commit(batch);
}

absl::StatusOr<v1::GetAliasHistoryResponse> Repository::GetAliasHistory(
    const v1::GetAliasHistoryRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  v1::GetAliasHistoryResponse resp;
  absl::Status status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::AliasEventPrefix(req.run()), "",
                  [&](absl::string_view key, absl::string_view value) {
                    v1::AliasEvent e;
                    status = ParseProto(key, value, &e);
                    if (!status.ok()) return false;
                    if (req.alias().empty() || e.alias() == req.alias()) {
                      *resp.add_events() = std::move(e);
                    }
                    return true;
                  }));
  CKPTD_RETURN_IF_ERROR(status);
  return resp;
}

absl::StatusOr<v1::VersionInfo> Repository::SetPinned(const v1::PinRequest& req,
                                                      bool pinned) {
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadCommitted(req.run(), req.ref()));
  if (info.pinned() != pinned) {
    info.set_pinned(pinned);
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Version(info.run(), info.version()), info);
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
  }
  CKPTD_RETURN_IF_ERROR(FillAliases(&info));
  return info;
}

absl::Status Repository::DeleteVersion(const v1::DeleteVersionRequest& req) {
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  CKPTD_ASSIGN_OR_RETURN(uint64_t version, Resolve(req.run(), req.ref()));
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(req.run(), version));
  const std::string name = VersionName(req.run(), version);
  if (info.state() == v1::PENDING) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is pending; abort it instead"));
  }
  if (info.pinned()) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is pinned; unpin it first"));
  }
  CKPTD_RETURN_IF_ERROR(FillAliases(&info));
  if (!info.aliases().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, " is the target of alias(es) ",
        absl::StrJoin(info.aliases(), ", "), "; move or delete them first"));
  }
  storage::MetadataBatch batch;
  batch.Delete(storage::keys::Version(req.run(), version));
  for (const auto& shard : info.shards()) {
    batch.Delete(storage::keys::Manifest(req.run(), version, shard.rank()));
  }
  return meta_->Commit(batch);
}

absl::StatusOr<std::vector<uint64_t>> Repository::ApplyRetention(
    const std::string& run_name) {
  std::vector<uint64_t> deleted;
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(run_name));
  const v1::Policy& p = run.policy();
  if (!p.has_keep_last() && !p.has_keep_best() && !p.has_keep_every_n_steps()) {
    return deleted;  // default: keep everything
  }
  CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(run_name));
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(run_name));
  absl::flat_hash_set<uint64_t> keep;
  for (const auto& a : aliases) keep.insert(a.version());
  std::vector<const v1::VersionInfo*> committed;
  for (const auto& v : versions) {
    if (v.state() != v1::COMMITTED) continue;
    committed.push_back(&v);
    if (v.pinned()) keep.insert(v.version());
    if (p.has_keep_every_n_steps() && v.step() % p.keep_every_n_steps() == 0) {
      keep.insert(v.version());
    }
  }
  if (p.has_keep_last()) {
    size_t n = std::min<size_t>(p.keep_last(), committed.size());
    for (size_t i = committed.size() - n; i < committed.size(); ++i) {
      keep.insert(committed[i]->version());
    }
  }
  if (p.has_keep_best() && !p.monitor().empty()) {
    std::vector<std::pair<double, uint64_t>> ranked;
    for (const auto* v : committed) {
      double value;
      if (HasMetric(*v, p.monitor(), &value)) {
        ranked.emplace_back(value, v->version());
      }
    }
    // Better metric first; ties: the earlier version first.
    std::stable_sort(ranked.begin(), ranked.end(),
                     [&](const auto& a, const auto& b) {
                       return MetricImproves(p.mode(), a.first, b.first);
                     });
    for (size_t i = 0; i < ranked.size() && i < p.keep_best(); ++i) {
      keep.insert(ranked[i].second);
    }
  }
  storage::MetadataBatch batch;
  for (const auto* v : committed) {
    if (keep.contains(v->version())) continue;
    batch.Delete(storage::keys::Version(run_name, v->version()));
    for (const auto& shard : v->shards()) {
      batch.Delete(
          storage::keys::Manifest(run_name, v->version(), shard.rank()));
    }
    deleted.push_back(v->version());
  }
  if (!deleted.empty()) {
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    spdlog::info("retention for run {} deleted versions {}", run_name,
                 absl::StrJoin(deleted, ","));
  }
  return deleted;
}

absl::Status Repository::CollectGarbageLocked(v1::CollectGarbageResponse* out) {
  absl::flat_hash_set<Digest> referenced;
  for (const auto& [key, leases] : leases_) {
    referenced.insert(leases.digests.begin(), leases.digests.end());
  }
  absl::Status status;
  CKPTD_RETURN_IF_ERROR(
      meta_->Scan(storage::keys::kManifestPrefix, "",
                  [&](absl::string_view key, absl::string_view value) {
                    v1::ShardManifest m;
                    status = ParseProto(key, value, &m);
                    if (!status.ok()) return false;
                    for (const auto& e : m.entries()) {
                      if (!e.has_tensor()) continue;
                      auto d = DigestFromBytes(e.tensor().blob_digest());
                      if (d.ok()) referenced.insert(*d);
                    }
                    return true;
                  }));
  CKPTD_RETURN_IF_ERROR(status);
  std::vector<std::pair<Digest, uint64_t>> garbage;
  CKPTD_RETURN_IF_ERROR(blobs_->ForEach([&](const Digest& d, uint64_t size) {
    if (!referenced.contains(d)) garbage.emplace_back(d, size);
  }));
  for (const auto& [d, size] : garbage) {
    CKPTD_RETURN_IF_ERROR(blobs_->Delete(d));
    out->set_blobs_deleted(out->blobs_deleted() + 1);
    out->set_bytes_freed(out->bytes_freed() + size);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CollectGarbageResponse> Repository::CollectGarbage() {
  absl::MutexLock lock(&mu_);
  v1::CollectGarbageResponse resp;
  CKPTD_RETURN_IF_ERROR(CollectGarbageLocked(&resp));
  return resp;
}

absl::StatusOr<v1::VerifyResponse> Repository::Verify(
    const v1::VerifyRequest& req) {
  std::vector<uint64_t> versions;
  {
    absl::ReaderMutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
    if (!req.ref().empty()) {
      CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo v, LoadCommitted(req.run(), req.ref()));
      versions.push_back(v.version());
    } else {
      CKPTD_ASSIGN_OR_RETURN(auto all, LoadVersions(req.run()));
      for (const auto& v : all) {
        if (v.state() == v1::COMMITTED) versions.push_back(v.version());
      }
    }
  }
  absl::flat_hash_set<Digest> digests;
  for (uint64_t v : versions) {
    CKPTD_ASSIGN_OR_RETURN(auto blobs, VersionBlobs(req.run(), v));
    digests.insert(blobs.begin(), blobs.end());
  }
  v1::VerifyResponse resp;
  constexpr uint64_t kVerifyChunk = 8 << 20;
  std::string buf;
  for (const Digest& d : digests) {
    auto reader = blobs_->Open(d);
    if (!reader.ok()) {
      resp.add_errors(absl::StrCat(d.Hex(), ": ", reader.status().ToString()));
      continue;
    }
    DigestBuilder builder;
    absl::Status st;
    const uint64_t size = (*reader)->size();
    for (uint64_t off = 0; off < size && st.ok(); off += kVerifyChunk) {
      const uint64_t n = std::min(kVerifyChunk, size - off);
      buf.resize(n);
      st = (*reader)->ReadAt(off, n, buf.data());
      if (st.ok()) builder.Update(buf.data(), n);
    }
    if (st.ok() && builder.Finish() != d) {
      st = absl::DataLossError("content does not match its digest");
    }
    if (!st.ok()) {
      resp.add_errors(absl::StrCat(d.Hex(), ": ", st.ToString()));
    }
    resp.set_blobs_checked(resp.blobs_checked() + 1);
    resp.set_bytes_checked(resp.bytes_checked() + size);
  }
  return resp;
}

// ---------------------------------------------------------------------------
// Watches

absl::StatusOr<uint64_t> Repository::Watch(
    const std::string& run, const std::string& alias,
    std::function<void(const v1::VersionInfo&)> fn,
    std::optional<v1::VersionInfo>* current) {
  // Under mu_: no move can land between reading the target and
  // registering, and moves are notified under mu_ too.
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run_info, LoadRun(run));
  current->reset();
  absl::StatusOr<v1::VersionInfo> target = LoadCommitted(run, alias);
  if (target.ok()) {
    CKPTD_RETURN_IF_ERROR(FillAliases(&*target));
    *current = *std::move(target);
  } else if (!absl::IsNotFound(target.status())) {
    return target.status();
  }
  absl::MutexLock watch_lock(&watch_mu_);
  uint64_t id = next_watch_id_++;
  watchers_[id] = Watcher{run, alias, std::move(fn)};
  return id;
}

void Repository::Unwatch(uint64_t id) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(id);
}

void Repository::Notify(const std::string& run,
                        const std::vector<AliasMove>& moves) {
  if (moves.empty()) return;
  absl::MutexLock lock(&watch_mu_);
  for (const auto& [id, w] : watchers_) {
    if (w.run != run) continue;
    for (const auto& m : moves) {
      if (m.alias == w.alias) w.fn(m.target);
    }
  }
}

}  // namespace ckptd::core
