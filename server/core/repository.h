// Repository: the checkpoint engine — versions, shard commits, aliases,
// `best` selection, retention and GC over a MetadataStore (RocksDB) and a
// BlobStore. No gRPC here; server/service adapts it.
//
// Publishing protocol (DESIGN.md invariants 1-4):
//  1. Blobs are uploaded into the BlobStore; BlobWriter::Commit makes each
//     durable before the upload is acknowledged. While a version is pending,
//     the blobs it uploads or is told it has (FindMissingBlobs) are leased to
//     it (in memory, and unsynced in RocksDB), so GC cannot remove them.
//  2. CommitShard validates the manifest, checks every blob it references is
//     stored and long enough, and writes the shard manifest. The shard that
//     completes the version also flips it to COMMITTED and moves `last` (and
//     `best` when it improves) — all in one synced WriteBatch.
//  3. Retention runs after the commit, in a separate step; GC deletes only
//     blobs that no committed or pending version references or leases.
//  Recovery on Open: partial blobs are removed; pending versions stay
//  pending (ranks may still commit; `pending_timeout` aborts them) with
//  their leases (persisted without sync: a lease lost to a power failure
//  only means the blob is collected and the rank re-uploads it after
//  CommitShard reports it missing); unreferenced blobs are deleted.
//
// Thread safety: all methods are safe to call concurrently. Metadata
// read-modify-write sequences are serialised by `mu_`; blob bytes move
// outside it.
#ifndef CKPTD_SERVER_CORE_REPOSITORY_H_
#define CKPTD_SERVER_CORE_REPOSITORY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"
#include "server/storage/metadata_store.h"

namespace ckptd::core {

inline constexpr uint64_t kMaxUploadChunk = 4 << 20;

struct RepositoryOptions {
  // RocksDB lives here.
  std::string metadata_dir;
  // Largest blob accepted.
  uint64_t max_blob_size = uint64_t{1} << 40;
  // Pending versions older than this are aborted by AbortExpiredPending().
  absl::Duration pending_timeout = absl::Hours(6);
  // Interrupted uploads kept for resume, at most.
  size_t max_suspended_uploads = 4096;
  // How long QueryUpload waits for a stream still receiving the same blob
  // to notice it was cut, before answering (it holds an executor thread:
  // keep it short; after the wait the answer may be "start over").
  absl::Duration query_upload_wait = absl::Milliseconds(500);
  // Clock, for tests.
  std::function<absl::Time()> now = [] { return absl::Now(); };
  // RocksDB's Env (not owned), for fault-injection tests; nullptr: default.
  rocksdb::Env* metadata_env = nullptr;
};

class Repository;

// One blob being received on an UploadBlobs stream. Used by one thread at a
// time. Destroying an unfinished upload suspends it for resume.
class BlobUpload {
 public:
  ~BlobUpload();
  const Digest& digest() const { return digest_; }
  uint64_t blob_size() const { return blob_size_; }
  uint64_t received() const;
  bool complete() const { return received() == blob_size_; }
  // Appends `data` at `offset`, which must equal received().
  absl::Status Append(uint64_t offset, absl::string_view data);
  // REQUIRES: complete(). Verifies the digest and makes the blob durable.
  absl::Status Finish();
  // Keeps the received bytes (synced) so that a new stream may resume.
  void Suspend();

 private:
  friend class Repository;
  BlobUpload(Repository* repo, std::string run, uint64_t version, Digest digest,
             uint64_t blob_size, std::unique_ptr<storage::BlobWriter> writer);
  Repository* repo_;
  std::string run_;
  uint64_t version_;
  Digest digest_;
  uint64_t blob_size_;
  // Appended bytes between progress reports to the pending version.
  static constexpr uint64_t kReportEveryBytes = 64 << 20;
  // The appended bytes not yet reported; marks them reported.
  uint64_t TakeUnreported();
  uint64_t appended_this_stream_ = 0;
  uint64_t reported_ = 0;  // of appended_this_stream_
  std::unique_ptr<storage::BlobWriter> writer_;
};

// Why a call is made, for the alias audit history.
struct Actor {
  std::string name = "anonymous";
};

class Repository {
 public:
  // Opens RocksDB under options.metadata_dir over `blobs`, then recovers.
  static absl::StatusOr<std::unique_ptr<Repository>> Open(
      const RepositoryOptions& options,
      std::shared_ptr<storage::BlobStore> blobs);
  // RocksDB at <data_dir>/meta, file blobs under <data_dir> (blobs/, tmp/).
  static absl::StatusOr<std::unique_ptr<Repository>> OpenDataDir(
      const std::string& data_dir, RepositoryOptions options);
  ~Repository();

  // ---- Push ----
  absl::StatusOr<v1::BeginVersionResponse> BeginVersion(
      const v1::BeginVersionRequest& req);
  absl::StatusOr<v1::FindMissingBlobsResponse> FindMissingBlobs(
      const v1::FindMissingBlobsRequest& req);
  // Starts receiving blob `digest` for a pending version, at `offset` (0,
  // or a resume offset reported by QueryUpload).
  absl::StatusOr<std::unique_ptr<BlobUpload>> StartBlobUpload(
      const std::string& run, uint64_t version, const Digest& digest,
      uint64_t blob_size, uint64_t offset);
  // Validates that (run, version) names a pending version.
  absl::Status CheckPending(const std::string& run, uint64_t version);
  absl::StatusOr<v1::QueryUploadResponse> QueryUpload(
      const v1::QueryUploadRequest& req);
  absl::StatusOr<v1::VersionInfo> CommitShard(const v1::CommitShardRequest& req,
                                              const Actor& actor);
  absl::Status AbortVersion(const v1::AbortVersionRequest& req);
  // Aborts pending versions on which nothing happened (no rank began,
  // uploaded or committed) for options.pending_timeout; returns how many.
  absl::StatusOr<int> AbortExpiredPending();
  // Drops interrupted uploads older than options.pending_timeout (their
  // temp files go with them); returns how many.
  int ExpireSuspendedUploads();

  // ---- Pull ----
  absl::StatusOr<v1::GetVersionResponse> GetVersion(
      const v1::GetVersionRequest& req);
  // The digests a committed version references (ReadBlobs may read only
  // these).
  absl::StatusOr<absl::flat_hash_set<Digest>> VersionBlobs(
      const std::string& run, uint64_t version);
  storage::BlobStore& blobs() { return *blobs_; }

  // ---- History ----
  absl::StatusOr<v1::ListRunsResponse> ListRuns();
  absl::StatusOr<v1::ListVersionsResponse> ListVersions(
      const v1::ListVersionsRequest& req);
  absl::StatusOr<v1::GetMetricHistoryResponse> GetMetricHistory(
      const v1::GetMetricHistoryRequest& req);
  absl::StatusOr<v1::Policy> SetPolicy(const v1::SetPolicyRequest& req,
                                       const Actor& actor);
  absl::StatusOr<v1::Policy> GetPolicy(const v1::GetPolicyRequest& req);
  absl::StatusOr<v1::AliasInfo> SetAlias(const v1::SetAliasRequest& req,
                                         const Actor& actor);
  absl::Status DeleteAlias(const v1::DeleteAliasRequest& req,
                           const Actor& actor);
  absl::StatusOr<v1::GetAliasHistoryResponse> GetAliasHistory(
      const v1::GetAliasHistoryRequest& req);
  absl::StatusOr<v1::VersionInfo> SetPinned(const v1::PinRequest& req,
                                            bool pinned);
  absl::Status DeleteVersion(const v1::DeleteVersionRequest& req);
  // Deletes versions the run's retention policy no longer keeps; returns
  // the deleted version numbers. Runs after each publish.
  absl::StatusOr<std::vector<uint64_t>> ApplyRetention(const std::string& run);
  absl::StatusOr<v1::CollectGarbageResponse> CollectGarbage();
  absl::StatusOr<v1::VerifyResponse> Verify(const v1::VerifyRequest& req);

  // Calls `fn` after each committed move of `alias` in `run`, with the new
  // target, in commit order; sets `*current` to the target at the time of
  // registration (empty if the alias does not exist yet). `fn` runs under
  // the repository's locks: it must only queue work, never call back in.
  // Returns an id for Unwatch; NOT_FOUND if the run does not exist.
  absl::StatusOr<uint64_t> Watch(const std::string& run,
                                 const std::string& alias,
                                 std::function<void(const v1::VersionInfo&)> fn,
                                 std::optional<v1::VersionInfo>* current);
  void Unwatch(uint64_t id);

 private:
  friend class BlobUpload;
  // One per pending version (and only while it is pending).
  struct PendingLeases {
    absl::flat_hash_set<Digest> digests;
    uint64_t uploaded_bytes = 0;  // not yet recorded in the version
    // Unix nanos of the last call that worked on the version; the pending
    // timeout counts from here.
    int64_t last_activity = 0;
  };
  struct SuspendedUpload {
    std::unique_ptr<storage::BlobWriter> writer;
    uint64_t blob_size = 0;
    uint64_t durable = 0;
    absl::Time at;
  };
  struct Watcher {
    std::string run;
    std::string alias;
    std::function<void(const v1::VersionInfo&)> fn;
  };
  struct AliasMove {
    std::string alias;
    v1::VersionInfo target;
  };

  Repository(RepositoryOptions options,
             std::unique_ptr<storage::MetadataStore> meta,
             std::shared_ptr<storage::BlobStore> blobs);
  absl::Status Recover();
  int64_t NowNanos() const;

  // REQUIRES: mu_ held for the read-modify-write helpers below.
  absl::StatusOr<v1::RunInfo> LoadRun(const std::string& run)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::VersionInfo> LoadVersion(const std::string& run,
                                              uint64_t version)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> Resolve(const std::string& run,
                                   const std::string& ref)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::VersionInfo> LoadCommitted(const std::string& run,
                                                const std::string& ref)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<v1::AliasInfo>> LoadAliases(const std::string& run)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status FillAliases(v1::VersionInfo* info)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Adds an alias move (record + audit event) to `batch`.
  absl::Status MoveAlias(storage::MetadataBatch& batch, const std::string& run,
                         const std::string& alias, uint64_t to,
                         const Actor& actor, uint64_t* event_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> NextEventSeq(const std::string& run)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The committed version that should be `best` under `policy`; 0 if none.
  absl::StatusOr<uint64_t> ComputeBest(const std::string& run,
                                       const v1::Policy& policy)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<v1::VersionInfo>> LoadVersions(
      const std::string& run) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status CollectGarbageLocked(v1::CollectGarbageResponse* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify(const std::string& run, const std::vector<AliasMove>& moves)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the leases of a version that published or aborted, in memory and
  // (through `batch`) on disk.
  absl::Status ReleasePending(storage::MetadataBatch& batch,
                              const std::string& run, uint64_t version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records leases durably enough (unsynced) to survive a process crash.
  absl::Status PersistLeases(const std::string& run, uint64_t version,
                             const std::vector<Digest>& digests)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordUpload(const std::string& run, uint64_t version,
                    const Digest& digest, uint64_t bytes);
  // A stream delivered `bytes` more for the pending version: they count
  // toward its uploaded_bytes, and its pending timeout starts over.
  void RecordProgress(const std::string& run, uint64_t version, uint64_t bytes);
  void EndActiveUpload(const Digest& digest);
  // Forgets an interrupted upload of `digest` (the blob is now complete).
  void DropSuspendedUpload(const Digest& digest);
  // Aborts a pending version; false if it was already aborted.
  absl::StatusOr<bool> AbortLocked(const v1::AbortVersionRequest& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CollectAfterAbort() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The version `alias` names; 0 when there is no such alias.
  absl::StatusOr<uint64_t> AliasTargetOrZero(const std::string& run,
                                             const std::string& alias)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void SuspendUpload(const Digest& digest, uint64_t blob_size,
                     std::unique_ptr<storage::BlobWriter> writer);

  const RepositoryOptions options_;
  std::unique_ptr<storage::MetadataStore> meta_;
  std::shared_ptr<storage::BlobStore> blobs_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<std::string, uint64_t>, PendingLeases> leases_
      ABSL_GUARDED_BY(mu_);

  absl::Mutex upload_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::flat_hash_map<Digest, SuspendedUpload> suspended_
      ABSL_GUARDED_BY(upload_mu_);
  // Streams receiving each digest right now.
  absl::flat_hash_map<Digest, int> active_uploads_ ABSL_GUARDED_BY(upload_mu_);

  absl::Mutex watch_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t next_watch_id_ ABSL_GUARDED_BY(watch_mu_) = 1;
  absl::flat_hash_map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(watch_mu_);
};

// Whether `candidate` beats `current` under `mode` (strictly: ties keep the
// earlier version). NaN never wins.
bool MetricImproves(v1::Mode mode, double candidate, double current);

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_REPOSITORY_H_
