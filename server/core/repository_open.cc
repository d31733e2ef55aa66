// Repository, part: opening and recovery.
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "proto/base/status.h"
#include "server/core/manifest.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {

Repository::Repository(RepositoryOptions options,
                       std::unique_ptr<storage::MetadataStore> meta,
                       std::shared_ptr<storage::BlobStore> blobs)
    : options_(std::move(options)),
      meta_(std::move(meta)),
      blobs_(std::move(blobs)),
      remote_blobs_(blobs_),
      uploads_(options_.max_suspended_uploads),
      store_calls_(std::make_unique<Executor>(kStoreCallThreads,
                                              /*max_queue=*/0)) {}

// The scrub stops first (it uses everything below); suspended writers go
// before the blob store they write into.
Repository::~Repository() {
  StopFollower();
  StopScrubber();
  uploads_.Clear();
}

absl::StatusOr<std::unique_ptr<Repository>> Repository::Open(
    const RepositoryOptions& options,
    std::shared_ptr<storage::BlobStore> blobs) {
  CKPTD_RETURN_IF_ERROR(internal::ValidateScrubOptions(options));
  CKPTD_ASSIGN_OR_RETURN(
      auto meta,
      storage::MetadataStore::Open(options.metadata_dir, options.metadata_env));
  std::unique_ptr<Repository> repo(
      new Repository(options, std::move(meta), std::move(blobs)));
  CKPTD_RETURN_IF_ERROR(repo->Recover());
  repo->StartScrubber();
  return repo;
}

absl::StatusOr<std::unique_ptr<Repository>> Repository::OpenDataDir(
    const std::string& data_dir, RepositoryOptions options) {
  CKPTD_RETURN_IF_ERROR(internal::ValidateScrubOptions(options));
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    return ErrnoToStatus(ec.value(),
                         absl::StrCat("create data dir ", data_dir));
  }
  options.metadata_dir = absl::StrCat(data_dir, "/meta");
  const bool had_index =
      std::filesystem::exists(absl::StrCat(options.metadata_dir, "/CURRENT"));
  if (options.replica_of.has_value()) {
    return OpenReplica(data_dir, had_index, std::move(options));
  }
  if (options.rebuild_index && !options.s3.has_value()) {
    return absl::InvalidArgumentError(
        "--rebuild_index rebuilds from an S3 bucket's record: give "
        "--blob_store s3://BUCKET[/PREFIX] too");
  }
  // Open RocksDB first: its LOCK keeps a second ckptd off the blobs too.
  CKPTD_ASSIGN_OR_RETURN(
      auto meta,
      storage::MetadataStore::Open(options.metadata_dir, options.metadata_env));
  CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> replica_of,
                         meta->Get(storage::keys::kReplicaOf));
  if (replica_of.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the data dir ", data_dir, " is a read replica's copy of ",
                     *replica_of, "; start it with --replica_of ", *replica_of,
                     ", or give a writer a data dir of its own"));
  }
  std::shared_ptr<storage::BlobStore> blobs;
  std::shared_ptr<storage::BlobStore> remote;  // behind the cache
  if (options.s3.has_value()) {
    CKPTD_ASSIGN_OR_RETURN(blobs, storage::OpenS3BlobStore(*options.s3));
    remote = blobs;
    CKPTD_ASSIGN_OR_RETURN(blobs, WithCache(std::move(blobs), options.cache));
    spdlog::info("blobs in s3://{}/{} at {}", options.s3->s3.bucket,
                 options.s3->prefix, options.s3->s3.endpoint);
    CKPTD_ASSIGN_OR_RETURN(
        std::unique_ptr<storage::RecordLog> record,
        storage::RecordLog::Open(options.s3->s3, options.s3->prefix));
    CKPTD_RETURN_IF_ERROR(
        RebuildIfAsked(*meta, *record, had_index, options.rebuild_index));
    CKPTD_RETURN_IF_ERROR(meta->AttachRecordLog(std::move(record)));
  } else {
    if (options.cache.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--cache_dir ", options.cache->dir,
          " caches blobs of an S3 store; the blobs of this data dir are "
          "local files already: drop --cache_dir, or give --blob_store "
          "s3://BUCKET[/PREFIX]"));
    }
    CKPTD_ASSIGN_OR_RETURN(blobs, storage::OpenFileBlobStore(data_dir));
  }
  std::unique_ptr<Repository> repo(
      new Repository(options, std::move(meta), std::move(blobs)));
  if (remote != nullptr) repo->remote_blobs_ = std::move(remote);
  repo->data_dir_ = data_dir;
  CKPTD_RETURN_IF_ERROR(repo->Recover());
  repo->StartScrubber();
  return repo;
}

absl::StatusOr<std::shared_ptr<storage::BlobStore>> Repository::WithCache(
    std::shared_ptr<storage::BlobStore> remote,
    const std::optional<storage::BlobCacheOptions>& cache) {
  if (!cache.has_value()) return remote;
  CKPTD_ASSIGN_OR_RETURN(
      std::unique_ptr<storage::BlobStore> cached,
      storage::OpenCachedBlobStore(std::move(remote), *cache));
  spdlog::info("read cache in {}, up to {} bytes", cache->dir,
               cache->max_bytes);
  return std::shared_ptr<storage::BlobStore>(std::move(cached));
}

absl::Status Repository::RebuildIfAsked(storage::MetadataStore& meta,
                                        storage::RecordLog& record,
                                        bool had_index, bool asked) {
  CKPTD_ASSIGN_OR_RETURN(bool interrupted, meta.RebuildInterrupted());
  if (asked && had_index && !interrupted) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--rebuild_index: ", meta.dir(),
        " already holds an index; a rebuild starts from none. Move it away "
        "(it is kept as it is), or start without --rebuild_index"));
  }
  bool rebuild = asked || interrupted;
  if (!rebuild && !had_index) {
    CKPTD_ASSIGN_OR_RETURN(uint64_t records, record.LastSeq());
    if (records > 0) {
      spdlog::info(
          "the data dir has no index and {} holds {} records: rebuilding "
          "the index from the bucket",
          record.Describe(), records);
      rebuild = true;
    }
  }
  if (!rebuild) return absl::OkStatus();
  if (interrupted) spdlog::info("resuming an interrupted rebuild");
  const absl::Time start = absl::Now();
  CKPTD_ASSIGN_OR_RETURN(uint64_t applied, meta.RebuildFrom(record));
  spdlog::info("rebuilt the index from {}: {} records in {}", record.Describe(),
               applied, absl::FormatDuration(absl::Now() - start));
  return absl::OkStatus();
}

absl::Status Repository::Recover() {
  CKPTD_RETURN_IF_ERROR(blobs_->RemoveTemporaries());
  // The BlobIndex: what is stored (one listing of the store, made before
  // taking mu_), then what references it.
  std::vector<std::pair<Digest, uint64_t>> stored;
  CKPTD_RETURN_IF_ERROR(blobs_->ForEach(
      [&](const Digest& d, uint64_t size) { stored.emplace_back(d, size); }));
  std::vector<BlobIndex::Garbage> garbage;
  {
    absl::MutexLock lock(&mu_);
    CKPTD_RETURN_IF_ERROR(RecoverLocked(stored));
    garbage = index_.TakeAllGarbage();
  }
  v1::CollectGarbageResponse gc;
  CKPTD_RETURN_IF_ERROR(PurgeBlobs(garbage, &gc));
  if (gc.blobs_deleted() > 0) {
    spdlog::info("recovery: removed {} unreferenced blobs ({} bytes)",
                 gc.blobs_deleted(), gc.bytes_freed());
  }
  return absl::OkStatus();
}

absl::Status Repository::RecoverLocked(
    const std::vector<std::pair<Digest, uint64_t>>& stored) {
  // Scan callbacks collect into locals; the guarded state is filled here
  // (where the lock analysis sees mu_ held).
  for (const auto& [d, size] : stored) index_.AddStored(d, size);
  CKPTD_RETURN_IF_ERROR(RecoverQuarantineLocked());
  // (digest, run) of every manifest's blobs; the run is in the key,
  // man/<run>/<version>/<rank>.
  std::vector<std::pair<Digest, std::string>> referenced;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::ShardManifest>(
      storage::keys::kManifestPrefix, "", [&](absl::string_view key, auto&& m) {
        absl::string_view rest =
            key.substr(storage::keys::kManifestPrefix.size());
        const std::string run(rest.substr(0, rest.find('/')));
        for (const Digest& d : ManifestDigests(m))
          referenced.push_back({d, run});
        return true;
      }));
  for (const auto& [d, run] : referenced) index_.AddRef(d, run);

  // Every pending version (also one that leased nothing yet) is open for
  // its ranks; the pending timeout counts from now, giving ranks that were
  // cut off by the restart a full timeout to come back.
  std::vector<PendingKey> pending;
  CKPTD_RETURN_IF_ERROR(meta_->Scan(
      "pend/", "", [&](absl::string_view key, absl::string_view value) {
        absl::string_view rest = key.substr(5);
        const size_t slash = rest.find('/');
        uint64_t version = 0;
        if (slash != absl::string_view::npos &&
            absl::SimpleAtoi(value, &version)) {
          pending.emplace_back(std::string(rest.substr(0, slash)), version);
        }
        return true;
      }));
  for (const PendingKey& key : pending) {
    leases_[key].last_activity = NowNanos();
  }

  // Leases of versions still pending come back; stale ones are dropped.
  struct LeaseRecord {
    std::string key;
    PendingKey version;
    absl::StatusOr<Digest> digest;
  };
  std::vector<LeaseRecord> records;
  CKPTD_RETURN_IF_ERROR(meta_->Scan(
      storage::keys::kLeasePrefix, "",
      [&](absl::string_view key, absl::string_view) {
        std::vector<absl::string_view> parts = absl::StrSplit(key, '/');
        LeaseRecord& r = records.emplace_back(
            LeaseRecord{std::string(key), {}, absl::InvalidArgumentError("")});
        uint64_t version = 0;
        if (parts.size() == 4 && absl::SimpleHexAtoi(parts[2], &version)) {
          r.version = {std::string(parts[1]), version};
          r.digest = DigestFromHex(parts[3]);
        }
        return true;
      }));
  storage::MetadataBatch stale;
  for (const LeaseRecord& r : records) {
    auto it = leases_.find(r.version);
    if (r.digest.ok() && it != leases_.end()) {
      LeaseTo(it->second, *r.digest);
      it->second.granted.insert(*r.digest);  // persisted leases are grants
    } else {
      stale.Delete(r.key);
    }
  }
  if (!stale.empty()) {
    CKPTD_RETURN_IF_ERROR(meta_->Commit(stale, /*sync=*/false));
  }
  return absl::OkStatus();
}

int64_t Repository::NowNanos() const {
  return absl::ToUnixNanos(options_.now());
}

}  // namespace ckptd::core
