// Repository, part: online backup (the Backup RPC, `ckpt admin backup DIR`).
//
// On-disk result: DIR is a data dir — DIR/meta (RocksDB), DIR/blobs (the
// file blob store's layout), DIR/tmp — plus DIR/BACKUP, a short text summary
// written last. Restore is starting ckptd with --data_dir DIR (or on a copy
// of it: `cp -a` keeps the hard links).
//
// Protocol:
//  1. DIR is checked (absolute, no '.'/'..', not inside the data dir) and
//     made an empty directory. One backup runs at a time.
//  2. GC hold (HoldGc, under mu_): from here no garbage is taken.
//  3. Without mu_ (pushes go on): RocksDB's checkpoint into DIR/meta, one
//     instant of the metadata. It is opened as a database of its own and
//     its pending versions are aborted in it as AbortVersion does (state
//     ABORTED, their shard manifests, pend/ and lease/ records deleted), so
//     the backup holds committed versions only; then the digests its
//     manifests reference are collected, it is closed and fsynced.
//  4. Those digests are pinned in the BlobIndex (PinForBackup, in slices
//     of mu_; a read lease), then the hold ends and the garbage that waited
//     is collected.
//     Why nothing the snapshot references can be deleted before its pin: a
//     blob is deleted only after TakeGarbage marks it, which needs its refs
//     at zero, i.e. every manifest that references it deleted in a
//     committed batch. A manifest in the snapshot was not yet deleted at
//     the snapshot's instant, which is after the hold began; so the blob
//     was referenced from before the hold until after the snapshot, and
//     while the hold lasts nothing is marked at all.
//  5. Without mu_: each blob is hard-linked into DIR/blobs (LinkFrom) or,
//     across filesystems, copied: read (every chunk checked against its
//     stored checksum) and written through DIR's store, which re-computes
//     the digest, fdatasyncs and renames. The links' directories are
//     fsynced (SyncLinks).
//  6. DIR/BACKUP is written durably, the pins are released, and an audit
//     record `backup` is added (to the live server, not the backup).
// A failure or a cancellation removes what the backup wrote (and DIR, if
// it created it). A crash in between leaves DIR without BACKUP: an
// incomplete backup, to be deleted.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proto/base/status.h"
#include "server/common/pause_point.h"
#include "server/core/manifest.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "server/storage/local_dir.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {
namespace {

constexpr absl::string_view kWhat = "backup dir";
constexpr size_t kMaxPathBytes = 4095;
// Bytes of a path echoed in an error.
constexpr size_t kShownPath = 256;
// Buffer of a blob copy across filesystems.
constexpr uint64_t kCopyBuffer = 8 << 20;

std::string Shown(absl::string_view path) {
  return std::string(path.substr(0, kShownPath));
}

// The rules a backup path must follow before the filesystem is asked.
absl::Status ValidateBackupPath(absl::string_view dir) {
  if (dir.empty()) {
    return absl::InvalidArgumentError(
        "backup dir is empty: give an absolute path on the server's "
        "filesystem, e.g. /var/backups/ckptd-2024-06-01");
  }
  if (dir.size() > kMaxPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat("backup dir is ", dir.size(),
                                                   " bytes long; the limit is ",
                                                   kMaxPathBytes));
  }
  for (size_t i = 0; i < dir.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(dir[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("backup dir contains the control character 0x",
                       absl::Hex(c, absl::kZeroPad2), " at byte ", i,
                       "; give a plain absolute path"));
    }
  }
  if (dir[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "backup dir '", Shown(dir),
        "' is a relative path; give an absolute path on the server's "
        "filesystem (the daemon writes it, not the client), e.g. "
        "/var/backups/ckptd-2024-06-01"));
  }
  for (absl::string_view part : absl::StrSplit(dir, '/')) {
    if (part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("backup dir '", Shown(dir), "' has a '", part,
                       "' component; give the path without '.' or '..'"));
    }
  }
  if (dir.find_first_not_of('/') == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "backup dir '/' is the root directory; give a directory for the "
        "backup, e.g. /var/backups/ckptd-2024-06-01");
  }
  return absl::OkStatus();
}

// What the snapshot holds, after its pending versions are aborted.
struct SnapshotSummary {
  uint64_t runs = 0;
  uint64_t versions = 0;  // committed
  uint64_t pending_left_out = 0;
  std::vector<Digest> digests;  // sorted, distinct
};

// Step 3 on the checkpoint in `meta_dir`: aborts its pending versions,
// drops its leases, collects the referenced digests, closes and syncs it.
absl::StatusOr<SnapshotSummary> PrepareSnapshot(const std::string& meta_dir,
                                                int64_t snapshot_at) {
  SnapshotSummary out;
  {
    CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<storage::MetadataStore> snap,
                           storage::MetadataStore::Open(meta_dir));
    storage::MetadataBatch batch;
    const std::string reason = absl::StrCat(
        "pending when a backup was taken (",
        absl::FormatTime(absl::RFC3339_sec, absl::FromUnixNanos(snapshot_at),
                         absl::UTCTimeZone()),
        "); not part of the backup");
    CKPTD_RETURN_IF_ERROR(snap->ScanProtos<v1::VersionInfo>(
        "ver/", "", [&](absl::string_view key, v1::VersionInfo&& v) {
          if (v.state() == v1::COMMITTED) ++out.versions;
          if (v.state() != v1::PENDING) return true;
          ++out.pending_left_out;
          for (const auto& shard : v.shards()) {
            batch.Delete(
                storage::keys::Manifest(v.run(), v.version(), shard.rank()));
          }
          batch.Delete(storage::keys::Pending(v.run(), v.step()));
          v.set_state(v1::ABORTED);
          v.set_abort_reason(reason);
          batch.Put(key, v);
          return true;
        }));
    CKPTD_RETURN_IF_ERROR(
        snap->Scan(storage::keys::kLeasePrefix, "",
                   [&](absl::string_view key, absl::string_view) {
                     batch.Delete(key);
                     return true;
                   }));
    CKPTD_RETURN_IF_ERROR(snap->Scan(storage::keys::kRunPrefix, "",
                                     [&](absl::string_view, absl::string_view) {
                                       ++out.runs;
                                       return true;
                                     }));
    if (!batch.empty()) CKPTD_RETURN_IF_ERROR(snap->Commit(batch));
    absl::flat_hash_set<Digest> digests;
    CKPTD_RETURN_IF_ERROR(snap->ScanProtos<v1::ShardManifest>(
        storage::keys::kManifestPrefix, "",
        [&](absl::string_view, v1::ShardManifest&& m) {
          for (const Digest& d : ManifestDigests(m)) digests.insert(d);
          return true;
        }));
    out.digests.assign(digests.begin(), digests.end());
    std::sort(out.digests.begin(), out.digests.end());
  }  // closed: flushed
  CKPTD_RETURN_IF_ERROR(storage::SyncTree(meta_dir));
  return out;
}

// Copies one blob across stores through a writer of `to` (which re-checks
// the digest and makes the copy durable). `buffer` is reused.
absl::Status CopyBlob(storage::BlobStore& from, storage::BlobStore& to,
                      const Digest& digest, std::string& buffer) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<storage::BlobReader> reader,
                         from.Open(digest));
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<storage::BlobWriter> writer,
                         to.NewWriter(digest));
  const uint64_t size = reader->size();
  for (uint64_t off = 0; off < size;) {
    const uint64_t n = std::min<uint64_t>(kCopyBuffer, size - off);
    buffer.resize(n);
    CKPTD_RETURN_IF_ERROR(reader->ReadAt(off, n, buffer.data()));
    CKPTD_RETURN_IF_ERROR(writer->Append(buffer));
    off += n;
  }
  return writer->Commit(digest);
}

std::string Summary(const v1::BackupResponse& r,
                    const std::string& source_dir) {
  auto time = [](int64_t nanos) {
    return absl::FormatTime(absl::RFC3339_full, absl::FromUnixNanos(nanos),
                            absl::UTCTimeZone());
  };
  return absl::StrCat("ckptd backup: complete (this file is written last)\n",
                      "snapshot_at: ", time(r.snapshot_at()), "\n",
                      "source_data_dir: ", source_dir, "\n", "runs: ", r.runs(),
                      "\n", "versions: ", r.versions(), "\n",
                      "pending_left_out: ", r.pending_left_out(), "\n",
                      "blobs: ", r.blobs(), "\n", "bytes: ", r.bytes(), "\n",
                      "blobs_linked: ", r.blobs_linked(), "\n",
                      "blobs_copied: ", r.blobs_copied(), "\n",
                      "bytes_copied: ", r.bytes_copied(), "\n",
                      "restore: ckptd --data_dir ", r.dir(), "\n");
}

absl::Status CancelledError(const std::string& dir) {
  return absl::CancelledError(absl::StrCat(
      "backup to ", dir,
      " cancelled (the client went away, its deadline passed or ckptd is "
      "shutting down); what it wrote was removed"));
}

}  // namespace

void Repository::HoldGc() {
  absl::MutexLock lock(&mu_);
  ++gc_holds_;
}

void Repository::ReleaseGc() {
  {
    absl::MutexLock lock(&mu_);
    --gc_holds_;
  }
  CollectNewGarbage("a backup's snapshot");
}

absl::StatusOr<std::unique_ptr<ReadLease>> Repository::PinForBackup(
    const std::vector<Digest>& digests, std::vector<uint64_t>* sizes) {
  sizes->assign(digests.size(), 0);
  absl::flat_hash_set<Digest> pinned;
  pinned.reserve(digests.size());
  std::optional<Digest> missing;
  for (size_t begin = 0; begin < digests.size() && !missing;
       begin += kIndexSliceDigests) {
    const size_t end = std::min(digests.size(), begin + kIndexSliceDigests);
    absl::MutexLock lock(&mu_);
    for (size_t i = begin; i < end; ++i) {
      std::optional<uint64_t> size = index_.StoredSize(digests[i]);
      if (!size.has_value()) {
        missing = digests[i];
        break;
      }
      index_.Pin(digests[i]);
      pinned.insert(digests[i]);
      (*sizes)[i] = *size;
    }
  }
  // The lease unpins what was pinned, also on the error below.
  std::unique_ptr<ReadLease> lease(
      new ReadLease(this, /*run=*/"", /*version=*/0, std::move(pinned)));
  if (missing.has_value()) {
    return absl::DataLossError(absl::StrCat(
        "blob ", missing->Hex(),
        " is referenced by a committed version but damaged (quarantined) or "
        "not stored; `ckpt verify "
        "RUN` names the damaged versions (delete or re-push them), then "
        "back up again"));
  }
  return lease;
}

absl::StatusOr<v1::BackupResponse> Repository::Backup(
    const v1::BackupRequest& req, const Actor& actor,
    const std::function<bool()>& cancelled) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("backups (Backup; back up the writer)"));
  const absl::Time start = absl::Now();
  CKPTD_RETURN_IF_ERROR(ValidateBackupPath(req.dir()));
  absl::string_view requested = req.dir();
  while (requested.size() > 1 && requested.back() == '/') {
    requested.remove_suffix(1);  // "/x/" names /x
  }
  CKPTD_ASSIGN_OR_RETURN(const std::string dir,
                         storage::ResolvePath(std::string(requested)));
  if (!data_dir_.empty()) {
    CKPTD_ASSIGN_OR_RETURN(const std::string data,
                           storage::ResolvePath(data_dir_));
    if (dir == data || absl::StartsWith(dir, absl::StrCat(data, "/"))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "backup dir ", Shown(dir), " is inside the data dir ", data,
          "; choose a directory outside it (best on another disk)"));
    }
  }
  {
    absl::MutexLock lock(&backup_mu_);
    if (!backup_running_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("a backup (to ", backup_running_,
                       ") is already running; wait for it to finish"));
    }
    backup_running_ = dir;
  }
  struct Running {
    Repository* repo;
    ~Running() {
      absl::MutexLock lock(&repo->backup_mu_);
      repo->backup_running_.clear();
    }
  } running{this};

  CKPTD_ASSIGN_OR_RETURN(const bool created,
                         storage::PrepareEmptyDir(dir, kWhat));
  // From here a failure removes what was written.
  auto fail = [&](absl::Status st) {
    absl::Status removed = storage::RemoveDirContents(dir, created);
    spdlog::warn(
        "backup to {} failed: {}{}", dir, st.ToString(),
        removed.ok()
            ? std::string()
            : absl::StrCat(" (removing its files: ", removed.ToString(), ")"));
    return st;
  };
  auto is_cancelled = [&] { return cancelled != nullptr && cancelled(); };

  v1::BackupResponse resp;
  resp.set_dir(dir);
  const std::string meta_dir = absl::StrCat(dir, "/meta");
  absl::StatusOr<SnapshotSummary> snapshot;
  absl::StatusOr<std::unique_ptr<ReadLease>> lease;
  std::vector<uint64_t> sizes;
  HoldGc();
  CKPTD_PAUSE_POINT("backup.before_snapshot");
  {
    resp.set_snapshot_at(NowNanos());
    absl::Status st = meta_->Checkpoint(meta_dir);
    if (st.ok()) {
      snapshot = PrepareSnapshot(meta_dir, resp.snapshot_at());
      if (snapshot.ok()) lease = PinForBackup(snapshot->digests, &sizes);
    } else {
      snapshot = st;
    }
  }
  ReleaseGc();
  if (!snapshot.ok()) return fail(snapshot.status());
  if (!lease.ok()) return fail(lease.status());
  resp.set_runs(snapshot->runs);
  resp.set_versions(snapshot->versions);
  resp.set_pending_left_out(snapshot->pending_left_out);
  spdlog::info(
      "backup to {}: snapshot of {} versions in {} runs ({} pending left "
      "out), {} blobs to link or copy",
      dir, resp.versions(), resp.runs(), resp.pending_left_out(),
      snapshot->digests.size());
  CKPTD_PAUSE_POINT("backup.before_copy");

  absl::StatusOr<std::unique_ptr<storage::BlobStore>> dest =
      storage::OpenFileBlobStore(dir);
  if (!dest.ok()) return fail(dest.status());
  std::string buffer;
  for (size_t i = 0; i < snapshot->digests.size(); ++i) {
    if (is_cancelled()) return fail(CancelledError(dir));
    const Digest& d = snapshot->digests[i];
    absl::StatusOr<bool> linked = (*dest)->LinkFrom(*blobs_, d);
    if (!linked.ok()) return fail(linked.status());
    if (*linked) {
      resp.set_blobs_linked(resp.blobs_linked() + 1);
    } else {
      if (absl::Status st = CopyBlob(*blobs_, **dest, d, buffer); !st.ok()) {
        return fail(st);
      }
      resp.set_blobs_copied(resp.blobs_copied() + 1);
      resp.set_bytes_copied(resp.bytes_copied() + sizes[i]);
    }
    resp.set_blobs(resp.blobs() + 1);
    resp.set_bytes(resp.bytes() + sizes[i]);
  }
  if (absl::Status st = (*dest)->SyncLinks(); !st.ok()) return fail(st);
  dest->reset();
  if (is_cancelled()) return fail(CancelledError(dir));
  resp.set_elapsed_nanos(absl::ToInt64Nanoseconds(absl::Now() - start));
  if (absl::Status st = storage::WriteFileDurably(absl::StrCat(dir, "/BACKUP"),
                                                  Summary(resp, data_dir_));
      !st.ok()) {
    return fail(st);
  }
  // DIR's own entry in its parent (DIR and DIR/meta are synced already).
  const size_t slash = dir.rfind('/');
  if (absl::Status st =
          storage::SyncDir(slash == 0 ? "/" : dir.substr(0, slash));
      !st.ok()) {
    return fail(st);
  }
  lease->reset();  // unpins; frees what only the backup kept
  RecordAudit(
      actor, "", "backup", 0,
      absl::StrCat("to ", dir, ": ", resp.versions(), " versions, ",
                   resp.blobs(), " blobs (", resp.blobs_linked(), " linked, ",
                   resp.blobs_copied(), " copied), ", resp.bytes(), " bytes"));
  spdlog::info(
      "backup to {} done: {} versions, {} blobs ({} linked, {} "
      "copied), {} bytes in {}",
      dir, resp.versions(), resp.blobs(), resp.blobs_linked(),
      resp.blobs_copied(), resp.bytes(),
      absl::FormatDuration(absl::Now() - start));
  return resp;
}

}  // namespace ckptd::core
