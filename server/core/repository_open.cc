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
      uploads_(options_.max_suspended_uploads) {}

// Suspended writers go before the blob store they write into.
Repository::~Repository() { uploads_.Clear(); }

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
  for (const auto& [d, size] : stored) index_.AddStored(d, size);
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::ShardManifest>(
      storage::keys::kManifestPrefix, "", [&](absl::string_view, auto&& m) {
        for (const Digest& d : ManifestDigests(m)) index_.AddRef(d);
        return true;
      }));
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
          LeaseTo(leases_[{std::string(parts[1]), version}], *digest);
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
  return absl::OkStatus();
}

int64_t Repository::NowNanos() const {
  return absl::ToUnixNanos(options_.now());
}

}  // namespace ckptd::core
