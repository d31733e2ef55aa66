// Repository, part: retention and garbage collection, in two phases.
//
// Phase one runs under mu_ and only decides: retention drops version
// records in one synced batch, and the BlobIndex yields the blobs that no
// manifest references and nothing pins, marked as being deleted (they stop
// counting as present at once). Phase two runs after mu_ is released and
// deletes those blobs from the store, then marks the deletions finished.
// An upload that completes a digest being deleted waits for the delete
// (AwaitNotDeleting) and stores it again, so no push ever loses a blob.
// A quarantined (corrupt) blob is collected like any other once nothing
// references or pins it, never before: the versions that reference it are
// damaged, not gone, and keep their records until healed or deleted.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "proto/base/status.h"
#include "server/common/kill_point.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "server/core/retention_policy.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {

absl::StatusOr<std::vector<uint64_t>> Repository::ApplyRetention(
    const std::string& run) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("retention (the writer applies it)"));
  std::vector<uint64_t> deleted;
  {
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(deleted, RetainLocked(run));
  }
  if (!deleted.empty()) CollectNewGarbage("retention");
  return deleted;
}

absl::StatusOr<std::vector<uint64_t>> Repository::RetainLocked(
    const std::string& run_name) {
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(run_name));
  const RetentionPolicy policy(run.policy());
  if (policy.KeepsEverything()) return std::vector<uint64_t>{};
  CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(run_name));
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(run_name));
  std::vector<uint64_t> drop = policy.VersionsToDrop(versions, aliases);
  if (drop.empty()) return drop;
  storage::MetadataBatch batch;
  std::vector<Digest> unreferenced;
  for (const v1::VersionInfo& v : versions) {
    if (!std::binary_search(drop.begin(), drop.end(), v.version())) continue;
    CKPTD_ASSIGN_OR_RETURN(std::vector<Digest> digests,
                           DeleteVersionRecords(batch, v));
    unreferenced.insert(unreferenced.end(), digests.begin(), digests.end());
  }
  CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
  DropRefs(run_name, unreferenced);
  spdlog::info("retention for run {} deleted versions {}", run_name,
               absl::StrJoin(drop, ","));
  return drop;
}

void Repository::DropRefs(const std::string& run,
                          const std::vector<Digest>& digests) {
  for (const Digest& d : digests) index_.DropRef(d, run);
}

absl::Status Repository::PurgeBlobs(
    const std::vector<BlobIndex::Garbage>& garbage,
    v1::CollectGarbageResponse* out) {
  if (garbage.empty()) return absl::OkStatus();
  if (is_replica()) {
    // The writer deletes the bytes; a replica only forgets them. (Only
    // Recover gets here on a replica, before the follower runs.)
    absl::MutexLock lock(&mu_);
    for (const BlobIndex::Garbage& g : garbage) FinishDeleteLocked(g, true);
    return absl::OkStatus();
  }
  // The deletes run on the store-call threads, a few at once (an object
  // store's DELETE is a round trip), never under mu_.
  std::vector<absl::Status> results(garbage.size());
  absl::BlockingCounter pending(static_cast<int>(garbage.size()));
  for (size_t i = 0; i < garbage.size(); ++i) {
    store_calls_->Submit([&, i] {
      CKPTD_KILL_POINT("gc.before_delete");
      results[i] = blobs_->Delete(garbage[i].digest);
      pending.DecrementCount();
    });
  }
  pending.Wait();
  absl::Status first_error;
  for (size_t i = 0; i < garbage.size(); ++i) {
    const absl::Status& st = results[i];
    if (!st.ok()) {
      spdlog::warn("GC: delete blob {}: {}", garbage[i].digest.Hex(),
                   st.ToString());
      if (first_error.ok()) first_error = st;
    } else if (out != nullptr) {
      out->set_blobs_deleted(out->blobs_deleted() + 1);
      out->set_bytes_freed(out->bytes_freed() + garbage[i].size);
    }
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < garbage.size(); ++i) {
    FinishDeleteLocked(garbage[i], results[i].ok());
  }
  return first_error;
}

void Repository::FinishDeleteLocked(const BlobIndex::Garbage& g, bool deleted) {
  index_.FinishDelete(g.digest, deleted);
  // A damaged blob nothing references any more is simply gone.
  if (deleted && g.quarantined) DeleteQuarantineRecordLocked(g.digest);
}

void Repository::CollectNewGarbage(absl::string_view why) {
  std::vector<BlobIndex::Garbage> garbage;
  {
    absl::MutexLock lock(&mu_);
    // A backup is choosing its blobs; ReleaseGc collects this garbage.
    if (gc_holds_ > 0) return;
    garbage = index_.TakeNewGarbage();
    if (is_replica()) {
      // Forgotten in this same hold of mu_: a record applied in between
      // may reference the digest again (ApplyFollowed).
      for (const BlobIndex::Garbage& g : garbage) FinishDeleteLocked(g, true);
      return;
    }
  }
  if (garbage.empty()) return;
  v1::CollectGarbageResponse freed;
  // A failed delete is logged and stays garbage for the next GC.
  PurgeBlobs(garbage, &freed).IgnoreError();
  spdlog::info("after {}: freed {} blobs ({} bytes)", std::string(why),
               freed.blobs_deleted(), freed.bytes_freed());
}

absl::StatusOr<v1::CollectGarbageResponse> Repository::CollectGarbage(
    const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("garbage collection (CollectGarbage)"));
  std::vector<BlobIndex::Garbage> garbage;
  {
    // Waits out a backup choosing its blobs (a snapshot and a pin pass).
    absl::MutexLock lock(&mu_, absl::Condition(this, &Repository::NoGcHold));
    garbage = index_.TakeAllGarbage();
  }
  v1::CollectGarbageResponse resp;
  absl::Status st = PurgeBlobs(garbage, &resp);
  RecordAudit(actor, "", "collect_garbage", 0,
              absl::StrCat(resp.blobs_deleted(), " blobs, ", resp.bytes_freed(),
                           " bytes freed"));
  if (!st.ok()) {
    return absl::Status(
        st.code(), absl::StrCat("GC deleted ", resp.blobs_deleted(), " of ",
                                garbage.size(),
                                " unreferenced blobs; first "
                                "failure: ",
                                st.message()));
  }
  return resp;
}

void Repository::ReleaseRead(const absl::flat_hash_set<Digest>& digests) {
  {
    absl::MutexLock lock(&mu_);
    for (const Digest& d : digests) index_.Unpin(d);
  }
  CollectNewGarbage("a read");
}

ReadLease::~ReadLease() { repo_->ReleaseRead(digests_); }

}  // namespace ckptd::core
