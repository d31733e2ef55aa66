// Repository: the checkpoint engine — versions, shard commits, aliases,
// `best` selection, retention and GC over a MetadataStore (RocksDB) and a
// BlobStore. No gRPC here; server/service adapts it.
//
// The class is split across files by concern (as RocksDB splits DBImpl):
//   repository_open.cc     Open, Recover (temp files, leases, the index, GC)
//   repository_push.cc     BeginVersion .. CommitShard, AbortVersion, the
//                          pending sweep, BlobUpload
//   repository_query.cc    GetVersion, read leases, List*, histories, Verify
//   repository_aliases.cc  SetAlias, DeleteAlias, SetPolicy, pins,
//                          DeleteVersion, and the shared record helpers
//   repository_gc.cc       retention, garbage collection (two phases)
//   repository_backup.cc   online backup: snapshot, pins, link or copy
//   repository_integrity.cc  quarantine of corrupt blobs and healing,
//                          checked reads (ReadLease::Open), Verify, scrub
// and its parts with their own locks or none:
//   upload_tracker.h       suspended and active uploads (own mutex)
//   alias_watchers.h       WatchRef subscriptions (own mutex)
//   blob_index.h           presence, refs and pins per blob (under mu_)
//   retention_policy.h     which versions a policy keeps (pure)
//   best_selector.h        which version is `best` (pure)
//
// Publishing protocol (DESIGN.md invariants 1-4):
//  1. Blobs are uploaded into the BlobStore; BlobWriter::Commit makes each
//     durable before the upload is acknowledged. While a version is pending,
//     the blobs it uploads or is told it has (FindMissingBlobs) are leased to
//     it (pinned in the BlobIndex, and recorded unsynced in RocksDB), so GC
//     cannot remove them.
//  2. CommitShard validates the manifest, checks in the BlobIndex that every
//     blob it references is stored and long enough, and writes the shard
//     manifest. The shard that completes the version also flips it to
//     COMMITTED and moves `last` (and `best` when it improves) — all in one
//     synced WriteBatch.
//  3. Retention runs after the commit, in a separate step, and frees the
//     blobs only the dropped versions referenced at once. GC deletes only
//     blobs that no shard manifest references and that nothing pins
//     (pending leases, reads in progress).
//  4. Integrity: a blob found corrupt (a read, Verify, the scrub) is
//     quarantined in the BlobIndex and in RocksDB (quar/<digest>, so it
//     survives a restart): it counts as missing for every push, so the next
//     push of its bytes uploads them and the upload replaces the file
//     (BlobWriter::CommitReplacing), healing every version that references
//     it. Until then reads that need it fail with DATA_LOSS naming run@N and
//     the tensor. Messages to clients never carry server paths; the log
//     does.
//  Recovery on Open: partial blobs are removed; pending versions stay
//  pending (ranks may still commit; `pending_timeout` aborts them) with
//  their leases (persisted without sync: a lease lost to a power failure
//  only means the blob is collected and the rank re-uploads it after
//  CommitShard reports it missing); unreferenced blobs are deleted.
//
// Locking. `mu_` serialises metadata read-modify-write sequences and guards
// the BlobIndex and the pending leases. Nothing under `mu_` calls the blob
// store (no stat, read, write or delete: presence comes from the BlobIndex,
// and GC decides under `mu_` and deletes after releasing it, as LevelDB's
// RemoveObsoleteFiles and RocksDB's FindObsoleteFiles/PurgeObsoleteFiles
// do). Under `mu_` there are RocksDB reads and the synced WriteBatch of a
// publish or alias move: that commit is the serialisation point of the
// metadata. Long requests take `mu_` in bounded slices
// (kIndexSliceDigests digests at a time). Lock order: mu_, then the
// AliasWatchers' mutex (Notify runs under mu_ so moves reach watchers in
// commit order); the UploadTracker's mutex is never taken under mu_.
//
// Thread safety: all methods are safe to call concurrently.
#ifndef CKPTD_SERVER_CORE_REPOSITORY_H_
#define CKPTD_SERVER_CORE_REPOSITORY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/digest.h"
#include "server/common/executor.h"
#include "server/core/alias_watchers.h"
#include "server/core/best_selector.h"
#include "server/core/blob_index.h"
#include "server/core/limits.h"
#include "server/core/repository_stats.h"
#include "server/core/upload_tracker.h"
#include "server/storage/blob_store.h"
#include "server/storage/cached_blob_store.h"
#include "server/storage/metadata_store.h"
#include "server/storage/s3_blob_store.h"

namespace ckptd::core {

inline constexpr uint64_t kMaxUploadChunk = 4 << 20;
// Digests looked up (and leased) per hold of the repository mutex.
inline constexpr size_t kIndexSliceDigests = 4096;

struct RepositoryOptions {
  // RocksDB lives here.
  std::string metadata_dir;
  // OpenDataDir: blobs in this S3 bucket instead of files under the data
  // dir (ckptd --blob_store s3://BUCKET/PREFIX).
  std::optional<storage::S3BlobStoreOptions> s3;
  // OpenDataDir with `s3`: rebuild the index from the bucket's record
  // (storage/record_log.h) into a data dir that has none (ckptd
  // --rebuild_index). Without it that is done when the data dir has no
  // index and the record is not empty.
  bool rebuild_index = false;
  // OpenDataDir: a read replica of the bucket prefix another ckptd writes
  // (ckptd --replica_of s3://BUCKET/PREFIX; repository_replica.cc). It
  // serves reads from the bucket and from its own copy of the index, which
  // follows the bucket's record every `follow_interval`; every change is
  // refused with FAILED_PRECONDITION. Excludes `s3` and `rebuild_index`.
  std::optional<storage::S3BlobStoreOptions> replica_of;
  absl::Duration follow_interval = absl::Seconds(2);
  // OpenDataDir with `s3` or `replica_of`: a local read cache of whole
  // blobs in front of the bucket (ckptd --cache_dir, --cache_bytes;
  // storage/cached_blob_store.h).
  std::optional<storage::BlobCacheOptions> cache;
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
  // Sizes one request may carry (limits.h).
  Limits limits;
  // Stored bytes a run, and all the runs one identity may write, may hold;
  // 0: no quota. Usage counts each blob a run's manifests reference once,
  // plus the verified uploads and the uploads in progress of its pending
  // versions. Over it, BeginVersion of a new version and uploads that
  // would cross it get RESOURCE_EXHAUSTED before anything is written.
  uint64_t run_quota_bytes = 0;
  uint64_t identity_quota_bytes = 0;
  // Clock, for tests.
  std::function<absl::Time()> now = [] { return absl::Now(); };
  // RocksDB's Env (not owned), for fault-injection tests; nullptr: default.
  rocksdb::Env* metadata_env = nullptr;
  // Called once per published version (the shard that completed it), with
  // its record, after the publish is durable and outside the repository's
  // locks (on the committing thread); for metrics. May be empty.
  std::function<void(const v1::VersionInfo&)> on_publish;
  // Background scrub: a pass re-reads every stored blob and checks it
  // against its digest, quarantining corrupt ones. A pass starts
  // `scrub_interval` after the end of the previous one (persisted, so
  // restarts do not postpone it; before the first pass, counted from when
  // scrubbing was first enabled on the data dir). Zero: no scrub.
  absl::Duration scrub_interval = absl::ZeroDuration();
  // Read rate of a scrub pass, at most. Must be positive.
  uint64_t scrub_bytes_per_sec = uint64_t{64} << 20;
};

// Counters of the scrub (since the process started, except last_pass_end,
// which is persisted) and the number of blobs quarantined now (found by
// anyone). A snapshot; cheap to take.
struct ScrubStats {
  uint64_t passes_completed = 0;
  uint64_t blobs_checked = 0;
  uint64_t bytes_checked = 0;
  // Blobs the scrub quarantined: bad bytes, or a file gone missing.
  uint64_t corrupt_found = 0;
  uint64_t missing_found = 0;
  bool pass_running = false;
  // End of the last complete pass; InfinitePast: none yet.
  absl::Time last_pass_end = absl::InfinitePast();
  uint64_t quarantined_blobs = 0;
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
             uint64_t blob_size, uint64_t reserved,
             std::unique_ptr<storage::BlobWriter> writer);
  // Appended bytes between progress reports to the pending version.
  static constexpr uint64_t kReportEveryBytes = 64 << 20;
  // The appended bytes not yet reported; marks them reported.
  uint64_t TakeUnreported();

  Repository* repo_;
  std::string run_;
  uint64_t version_;
  Digest digest_;
  uint64_t blob_size_;
  uint64_t appended_this_stream_ = 0;
  uint64_t reported_ = 0;  // of appended_this_stream_
  uint64_t reserved_;      // quota reservation, released when it ends
  std::unique_ptr<storage::BlobWriter> writer_;
};

// The blobs of one committed version, pinned against GC while a read
// (ReadBlobs, ExportSafetensors) is in progress. Destroying it releases the
// pins and frees what only the read kept (blob store calls: destroy it off
// the gRPC reaction threads).
class ReadLease {
 public:
  ~ReadLease();
  ReadLease(const ReadLease&) = delete;
  ReadLease& operator=(const ReadLease&) = delete;
  bool Contains(const Digest& d) const { return digests_.contains(d); }
  const absl::flat_hash_set<Digest>& digests() const { return digests_; }
  const std::string& run() const { return run_; }
  uint64_t version() const { return version_; }

  // Opens a blob of this version for reading (REQUIRES: Contains(d)). Reads
  // verify the stored checksums. A blob that is quarantined, missing or
  // found corrupt by this read (which quarantines it) fails with DATA_LOSS
  // naming run@version and the tensor; no error carries a server path.
  absl::StatusOr<std::unique_ptr<storage::BlobReader>> Open(const Digest& d);
  // DATA_LOSS (as Open) for the first of `digests` known to be damaged
  // (quarantined or missing), without reading anything: lets a read fail
  // before it sends any bytes.
  absl::Status CheckIntact(const std::vector<Digest>& digests);
  // For the co-located pull: a read-only descriptor of blob `d`'s stored
  // form (REQUIRES: Contains(d)), unverified (the client that maps it
  // checks the digest), or nullopt when the store keeps no file of it
  // (S3, the read cache). A blob quarantined or gone fails as Open does.
  absl::StatusOr<std::optional<UniqueFd>> OpenStoredFile(const Digest& d);

 private:
  friend class Repository;
  ReadLease(Repository* repo, std::string run, uint64_t version,
            absl::flat_hash_set<Digest> digests)
      : repo_(repo),
        run_(std::move(run)),
        version_(version),
        digests_(std::move(digests)) {}
  Repository* repo_;
  std::string run_;
  uint64_t version_;
  absl::flat_hash_set<Digest> digests_;
};

// Who makes a change: recorded in alias and audit history. `admin` may
// make changes that delete versions (a SetPolicy that retention would
// apply by deleting versions that exist now). `writes`, the runs the
// identity may write, is what its quota (identity_quota_bytes) counts;
// null: no identity (no --auth_file), no identity quota.
struct Actor {
  std::string name = "anonymous";
  bool admin = true;
  using RunFilter = std::function<bool(absl::string_view run)>;
  RunFilter writes;
};

class Repository {
 public:
  // Opens RocksDB under options.metadata_dir over `blobs`, then recovers.
  static absl::StatusOr<std::unique_ptr<Repository>> Open(
      const RepositoryOptions& options,
      std::shared_ptr<storage::BlobStore> blobs);
  // RocksDB at <data_dir>/meta; blobs in options.s3's bucket when set, else
  // files under <data_dir> (blobs/, tmp/).
  static absl::StatusOr<std::unique_ptr<Repository>> OpenDataDir(
      const std::string& data_dir, RepositoryOptions options);
  ~Repository();

  // ---- Push (repository_push.cc) ----
  absl::StatusOr<v1::BeginVersionResponse> BeginVersion(
      const v1::BeginVersionRequest& req, const Actor& actor = Actor());
  // Which runs a caller may deduplicate against (the runs it may write);
  // null: every run.
  using RunFilter = std::function<bool(absl::string_view run)>;
  // At most kMaxFindMissingDigests digests (proto/base/limits.h). A digest
  // is reported present only if it is already granted to this version or a
  // manifest of a run `may_use` accepts references it (tenancy); reporting
  // it present grants it to the version. CommitShard accepts only granted
  // digests: uploaded into this version, or reported present to it.
  absl::StatusOr<v1::FindMissingBlobsResponse> FindMissingBlobs(
      const v1::FindMissingBlobsRequest& req,
      const RunFilter& may_use = nullptr);
  // Starts receiving blob `digest` for a pending version, at `offset` (0,
  // or a resume offset reported by QueryUpload).
  absl::StatusOr<std::unique_ptr<BlobUpload>> StartBlobUpload(
      const std::string& run, uint64_t version, const Digest& digest,
      uint64_t blob_size, uint64_t offset, const Actor& actor = Actor());
  // Validates that (run, version) names a pending version.
  absl::Status CheckPending(const std::string& run, uint64_t version);
  absl::StatusOr<v1::QueryUploadResponse> QueryUpload(
      const v1::QueryUploadRequest& req);
  absl::StatusOr<v1::VersionInfo> CommitShard(const v1::CommitShardRequest& req,
                                              const Actor& actor);
  absl::Status AbortVersion(const v1::AbortVersionRequest& req,
                            const Actor& actor = Actor());
  // Aborts pending versions on which nothing happened (no rank began,
  // uploaded or committed) for options.pending_timeout; returns how many.
  absl::StatusOr<int> AbortExpiredPending();
  // Drops interrupted uploads older than options.pending_timeout (their
  // temp files go with them); returns how many.
  int ExpireSuspendedUploads();

  // ---- Pull (repository_query.cc) ----
  absl::StatusOr<v1::GetVersionResponse> GetVersion(
      const v1::GetVersionRequest& req);
  // Pins the blobs committed version (run, version) references until the
  // lease is destroyed; ReadBlobs may read only these.
  absl::StatusOr<std::unique_ptr<ReadLease>> LeaseForRead(
      const std::string& run, uint64_t version);
  storage::BlobStore& blobs() { return *blobs_; }

  // ---- History (repository_query.cc, repository_aliases.cc) ----
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
                                            bool pinned,
                                            const Actor& actor = Actor());
  // Deletes the version's records, then the blobs only it referenced. A
  // version `last` or `best` names needs req.force(): `last` moves to the
  // newest remaining committed version, `best` to the policy's pick among
  // the remaining ones (both recorded in the alias history).
  absl::Status DeleteVersion(const v1::DeleteVersionRequest& req,
                             const Actor& actor = Actor());
  // The run's alias moves and audit records (or every run's, for an empty
  // run), oldest first, at most req.limit() (default 1000) newest.
  absl::StatusOr<v1::GetAuditLogResponse> GetAuditLog(
      const v1::GetAuditLogRequest& req);

  // ---- Retention and GC (repository_gc.cc) ----
  // Deletes versions the run's retention policy no longer keeps, then the
  // blobs only they referenced; returns the deleted version numbers. Runs
  // after each publish.
  absl::StatusOr<std::vector<uint64_t>> ApplyRetention(const std::string& run);
  // Deletes every stored blob that nothing references or pins.
  absl::StatusOr<v1::CollectGarbageResponse> CollectGarbage(
      const Actor& actor = Actor());

  // ---- Integrity (repository_integrity.cc) ----
  // Re-reads every blob of the version(s) and checks it against its
  // digest; corrupt ones are quarantined (intact ones that were are
  // released). Lists the damaged versions and their tensors.
  absl::StatusOr<v1::VerifyResponse> Verify(const v1::VerifyRequest& req);
  // One scrub pass over every stored blob, now, at most
  // options.scrub_bytes_per_sec (the background scrub runs this). Returns
  // the blobs it found corrupt. CANCELLED if the repository is closing.
  absl::StatusOr<std::vector<Digest>> RunScrubPass();
  ScrubStats GetScrubStats();

  // ---- Backup (repository_backup.cc) ----
  // Writes a consistent backup of every committed version into req.dir()
  // while pushes go on: a metadata snapshot plus the blobs it references
  // (hard links where possible), all durable on return; DIR is then a data
  // dir (restore: ckptd --data_dir DIR). The protocol is described in
  // repository_backup.cc. `cancelled` is polled between blobs; when it
  // says so the backup stops and removes what it wrote. One at a time.
  absl::StatusOr<v1::BackupResponse> Backup(
      const v1::BackupRequest& req, const Actor& actor,
      const std::function<bool()>& cancelled = nullptr);

  // Calls `fn` after each committed move of `alias` in `run`, with the new
  // target, in commit order; sets `*current` to the target at the time of
  // registration (empty if the alias does not exist yet). `fn` runs under
  // the repository's locks: it must only queue work, never call back in.
  // Returns an id for Unwatch; NOT_FOUND if the run does not exist.
  absl::StatusOr<uint64_t> Watch(const std::string& run,
                                 const std::string& alias,
                                 AliasWatchers::Callback fn,
                                 std::optional<v1::VersionInfo>* current);
  void Unwatch(uint64_t id);

  // ---- Read replicas (repository_replica.cc) ----
  bool is_replica() const { return follow_ != nullptr; }
  // FAILED_PRECONDITION on a replica, naming `what` was refused and where
  // writes go; OK on a writer.
  absl::Status CheckWritable(absl::string_view what);
  // A replica: applies the records the writer added since the last call
  // (each one atomically, under mu_, moving watched aliases) and returns
  // how many. The follower thread calls it every follow_interval; tests
  // call it to catch up at once. FAILED_PRECONDITION on a writer.
  absl::StatusOr<uint64_t> FollowOnce();
  // A writer with an S3 store: writes `address` (where it serves) to the
  // bucket for the replicas' messages. OK and nothing done otherwise.
  absl::Status AnnounceWriter(absl::string_view address);
  // A replica's position: the last record applied, and when the last
  // follow that reached the bucket ended (InfinitePast: none yet).
  struct FollowState {
    uint64_t applied_seq = 0;
    absl::Time last_success = absl::InfinitePast();
  };
  FollowState GetFollowState();

  // What the repository holds now (repository_query.cc). Takes mu_ briefly,
  // does no I/O: cheap enough for every metrics scrape.
  RepositoryStats Stats();

 private:
  friend class BlobUpload;
  friend class ReadLease;
  friend class CheckedBlobReader;
  // One per pending version (and only while it is pending).
  struct PendingLeases {
    absl::flat_hash_set<Digest> digests;  // each pinned once in index_
    // The blobs this version may reference (tenancy): uploaded into it and
    // verified, or reported present to it. A subset of `digests` (an upload
    // in progress is pinned, not granted).
    absl::flat_hash_set<Digest> granted;
    uint64_t uploaded_bytes = 0;  // not yet recorded in the version
    // Quotas: bytes of the verified uploads granted to the version, and the
    // bytes still to come of the uploads in progress.
    uint64_t stored_bytes = 0;
    uint64_t reserved_bytes = 0;
    // Unix nanos of the last call that worked on the version; the pending
    // timeout counts from here.
    int64_t last_activity = 0;
  };
  using PendingKey = std::pair<std::string, uint64_t>;

  Repository(RepositoryOptions options,
             std::unique_ptr<storage::MetadataStore> meta,
             std::shared_ptr<storage::BlobStore> blobs);
  absl::Status Recover();
  // `remote` behind the read cache when `cache` is set.
  static absl::StatusOr<std::shared_ptr<storage::BlobStore>> WithCache(
      std::shared_ptr<storage::BlobStore> remote,
      const std::optional<storage::BlobCacheOptions>& cache);
  // OpenDataDir with S3: the rebuild of `meta` from `record` when asked
  // (--rebuild_index), when an earlier one was interrupted, or when the data
  // dir had no index and the record is not empty.
  static absl::Status RebuildIfAsked(storage::MetadataStore& meta,
                                     storage::RecordLog& record, bool had_index,
                                     bool asked);
  // Builds the BlobIndex (from the store's listing `stored` and the
  // manifests) and the pending leases.
  absl::Status RecoverLocked(
      const std::vector<std::pair<Digest, uint64_t>>& stored)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t NowNanos() const;
  // Adds an audit record of `action` by `actor` to `batch`.
  void AddAudit(storage::MetadataBatch& batch, const Actor& actor,
                const std::string& run, absl::string_view action,
                uint64_t version, std::string detail);
  // The same, committed on its own (after an operation that commits its
  // records elsewhere); a failure is logged, not returned.
  void RecordAudit(const Actor& actor, const std::string& run,
                   absl::string_view action, uint64_t version,
                   std::string detail);

  // ---- Record helpers (repository_aliases.cc) ----
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
  absl::StatusOr<std::vector<v1::VersionInfo>> LoadVersions(
      const std::string& run) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The distinct digests each stored shard manifest of (run, version)
  // references (one set per shard, as the BlobIndex counts them).
  absl::StatusOr<std::vector<absl::flat_hash_set<Digest>>> LoadShardDigests(
      const std::string& run, uint64_t version) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The version `alias` names; 0 when there is no such alias.
  absl::StatusOr<uint64_t> AliasTargetOrZero(const std::string& run,
                                             const std::string& alias)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Adds an alias move (record + audit event) to `batch`.
  absl::Status MoveAlias(storage::MetadataBatch& batch, const std::string& run,
                         const std::string& alias, uint64_t to,
                         const Actor& actor, uint64_t* event_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> NextEventSeq(const std::string& run)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Adds the deletion of committed or aborted version records (the version
  // and its shard manifests) to `batch`; returns the digests whose refs
  // drop once the batch is committed.
  absl::StatusOr<std::vector<Digest>> DeleteVersionRecords(
      storage::MetadataBatch& batch, const v1::VersionInfo& info)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // ---- Push helpers (repository_push.cc) ----
  // Adds the deletion of a publishing or aborting version's lease records
  // to `batch`.
  absl::Status ReleasePending(storage::MetadataBatch& batch,
                              const std::string& run, uint64_t version)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // After that batch is committed: drops the version's in-memory leases
  // (unpinning their blobs).
  void ForgetPending(const std::string& run, uint64_t version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `d` to the version's leases (pinning it once); false if new.
  bool LeaseTo(PendingLeases& leases, const Digest& d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records leases durably enough (unsynced) to survive a process crash.
  // Called without mu_: the in-memory lease already protects the blobs.
  void PersistLeases(const std::string& run, uint64_t version,
                     const std::vector<Digest>& digests)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A blob completed for (run, version). `reserved`: the upload's
  // reservation, released with it. `replaced`: its upload replaced the
  // stored file (healing a quarantined blob).
  void RecordUpload(const std::string& run, uint64_t version,
                    const Digest& digest, uint64_t size, uint64_t bytes,
                    uint64_t reserved, bool replaced) ABSL_LOCKS_EXCLUDED(mu_);
  // A stream delivered `bytes` more for the pending version: they count
  // toward its uploaded_bytes, and its pending timeout starts over.
  void RecordProgress(const std::string& run, uint64_t version, uint64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until no deletion of `digest` is in progress (an upload that
  // completes a digest being collected must commit after the delete).
  void AwaitNotDeleting(const Digest& digest) ABSL_LOCKS_EXCLUDED(mu_);
  // Quota usage of `run`, and of every run `writes` accepts.
  uint64_t UsageLocked(absl::string_view run) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t UsageLocked(const Actor::RunFilter& writes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED when `adding` more bytes would cross a quota (with
  // adding 0: when usage has reached it).
  absl::Status CheckQuotaLocked(absl::string_view run, const Actor& actor,
                                uint64_t adding) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An upload in progress ended: its unused reservation goes.
  void ReleaseReservation(const std::string& run, uint64_t version,
                          uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Keeps an interrupted upload for resume, unless its version is no
  // longer pending: then nothing may resume it, and its temp file goes.
  void SuspendUpload(const UploadKey& key, uint64_t blob_size,
                     std::unique_ptr<storage::BlobWriter> writer)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Aborts a pending version; false if it was already aborted. The caller
  // drops the version's suspended uploads after releasing mu_.
  absl::StatusOr<bool> AbortLocked(const v1::AbortVersionRequest& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- GC helpers (repository_gc.cc) ----
  // Decides, under mu_: the retention drop of `run` as a batch, committed
  // here; the refs drop. Returns the dropped versions.
  absl::StatusOr<std::vector<uint64_t>> RetainLocked(const std::string& run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops one ref of each digest (after the batch deleting the manifests
  // that held them is committed).
  void DropRefs(const std::string& run, const std::vector<Digest>& digests)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Phase two of GC: deletes `garbage` from the blob store, then marks the
  // deletions finished; returns the first failure (the others are logged).
  absl::Status PurgeBlobs(const std::vector<BlobIndex::Garbage>& garbage,
                          v1::CollectGarbageResponse* out)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the deletion of `g` (deleted: the store no longer has it, or on a
  // replica, the writer deleted it), with its quarantine record.
  void FinishDeleteLocked(const BlobIndex::Garbage& g, bool deleted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes the garbage the last changes made and purges it.
  void CollectNewGarbage(absl::string_view why) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseRead(const absl::flat_hash_set<Digest>& digests)
      ABSL_LOCKS_EXCLUDED(mu_);

  // ---- Backup helpers (repository_backup.cc) ----
  // Pins `digests` against GC (in slices of mu_) as a read lease does, and
  // fills `sizes`; DATA_LOSS naming the first digest the index lacks.
  absl::StatusOr<std::unique_ptr<ReadLease>> PinForBackup(
      const std::vector<Digest>& digests, std::vector<uint64_t>* sizes)
      ABSL_LOCKS_EXCLUDED(mu_);
  // While a backup takes its snapshot and pins its blobs, no garbage is
  // taken: CollectNewGarbage leaves it for later, CollectGarbage waits.
  void HoldGc() ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseGc() ABSL_LOCKS_EXCLUDED(mu_);  // and collects what waited
  bool NoGcHold() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return gc_holds_ == 0;
  }

  // ---- Integrity helpers (repository_integrity.cc) ----
  // Loads the quarantine records into the BlobIndex (dropping those of
  // blobs no longer stored).
  absl::Status RecoverQuarantineLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Quarantines `digest` if `generation` is still the stored one; logs
  // `cause` (which may name server paths) and persists the record. True if
  // newly quarantined.
  bool QuarantineBlob(const Digest& digest, uint64_t generation,
                      absl::string_view found_by, const absl::Status& cause)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Removes the quarantine record of `digest` (its quarantine was lifted
  // or the blob deleted). A failure is logged: the stale record only means
  // the blob is quarantined again after a restart until re-verified.
  void DeleteQuarantineRecordLocked(const Digest& digest)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsQuarantined(const Digest& digest) ABSL_LOCKS_EXCLUDED(mu_);
  // The tensors of (run, version) stored in any of `digests`.
  absl::StatusOr<std::vector<v1::DamagedTensor>> TensorsIn(
      const std::string& run, uint64_t version,
      const absl::flat_hash_set<Digest>& digests) ABSL_LOCKS_EXCLUDED(mu_);
  // DATA_LOSS for a read of (run, version) that needs damaged `digest`.
  absl::Status DamageError(const std::string& run, uint64_t version,
                           const Digest& digest) ABSL_LOCKS_EXCLUDED(mu_);
  // What a failed read of `digest` (generation `generation`) in (run,
  // version) tells the client: DATA_LOSS (and a quarantine) when the bytes
  // are bad or gone, else the code with a path-free message.
  absl::Status ReadFailure(const std::string& run, uint64_t version,
                           const Digest& digest, uint64_t generation,
                           const absl::Status& st) ABSL_LOCKS_EXCLUDED(mu_);
  // The blob's generation when it is stored and not quarantined; else the
  // DamageError naming run@version.
  absl::StatusOr<uint64_t> ReadableGeneration(const std::string& run,
                                              uint64_t version,
                                              const Digest& digest)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::unique_ptr<storage::BlobReader>> OpenForRead(
      const std::string& run, uint64_t version, const Digest& digest)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::optional<UniqueFd>> OpenStoredFileForRead(
      const std::string& run, uint64_t version, const Digest& digest)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The first of `digests` that is quarantined or not stored.
  std::optional<Digest> FirstDamaged(const std::vector<Digest>& digests)
      ABSL_LOCKS_EXCLUDED(mu_);
  // kMissing: not stored (never, or deleted meanwhile); kUnreadable: an
  // error that says nothing about the bytes (not quarantined); kStopped:
  // `throttle` said stop.
  enum class Verdict { kIntact, kDamaged, kMissing, kUnreadable, kStopped };
  struct BlobCheck {
    Verdict verdict = Verdict::kIntact;
    uint64_t bytes = 0;   // read
    std::string problem;  // path-free, for replies
    bool newly_quarantined = false;
    bool file_missing = false;  // kDamaged: the store has no such file
  };
  // Reads the whole blob and checks its digest; quarantines it when
  // damaged, releases it from quarantine when intact. `throttle` (may be
  // null) is called after each read with the bytes so far and returns
  // false to stop.
  BlobCheck CheckBlob(const Digest& digest, absl::string_view found_by,
                      const std::function<bool(uint64_t)>& throttle)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StartScrubber();
  void StopScrubber();
  void ScrubLoop();
  // The persisted scrub times (unix nanos; 0 when absent).
  int64_t ReadScrubTime(absl::string_view key);

  // ---- Replica helpers (repository_replica.cc) ----
  // OpenDataDir of a replica (options.metadata_dir set; `had_index`: it
  // held a database before).
  static absl::StatusOr<std::unique_ptr<Repository>> OpenReplica(
      const std::string& data_dir, bool had_index, RepositoryOptions options);
  // Applies record `seq` (its batch) and brings the BlobIndex and the
  // watchers along.
  absl::Status ApplyFollowed(uint64_t seq, absl::string_view batch)
      ABSL_LOCKS_EXCLUDED(mu_);
  void StartFollower();
  void StopFollower();

  const RepositoryOptions options_;
  // The data dir (OpenDataDir); empty when opened over a given blob store.
  std::string data_dir_;
  std::unique_ptr<storage::MetadataStore> meta_;
  std::shared_ptr<storage::BlobStore> blobs_;
  // The store behind the read cache (blobs_ itself without one): what the
  // scrub and Verify check.
  std::shared_ptr<storage::BlobStore> remote_blobs_;
  UploadTracker uploads_;
  AliasWatchers watchers_;
  // Blob store calls that may run side by side (GC's deletes), at most
  // kStoreCallThreads at once; never called under mu_.
  static constexpr int kStoreCallThreads = 8;
  std::unique_ptr<Executor> store_calls_;

  absl::Mutex mu_;
  absl::flat_hash_map<PendingKey, PendingLeases> leases_ ABSL_GUARDED_BY(mu_);
  BlobIndex index_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> audit_seq_{0};  // orders same-nanosecond records
  int gc_holds_ ABSL_GUARDED_BY(mu_) = 0;
  // The target of the backup in progress; empty when none runs.
  absl::Mutex backup_mu_;
  std::string backup_running_ ABSL_GUARDED_BY(backup_mu_);

  // The scrub's own state; never held together with mu_.
  absl::Mutex scrub_mu_;
  bool scrub_stop_ ABSL_GUARDED_BY(scrub_mu_) = false;
  ScrubStats scrub_stats_ ABSL_GUARDED_BY(scrub_mu_);
  std::thread scrub_thread_;

  // A replica's record (null on a writer), s3://BUCKET/PREFIX it follows,
  // and its follower. follow_mu_ serialises FollowOnce; taken before mu_.
  std::unique_ptr<storage::RecordLog> follow_;
  std::string replica_of_;
  static constexpr absl::Duration kWriterRereadEvery = absl::Seconds(30);
  absl::Mutex follow_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Time writer_read_at_ ABSL_GUARDED_BY(follow_mu_) = absl::InfinitePast();
  absl::Mutex follow_state_mu_;
  std::string writer_address_ ABSL_GUARDED_BY(follow_state_mu_);
  FollowState follow_state_ ABSL_GUARDED_BY(follow_state_mu_);
  bool follow_stop_ ABSL_GUARDED_BY(follow_state_mu_) = false;
  std::thread follow_thread_;
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_REPOSITORY_H_
