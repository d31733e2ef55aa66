// MetadataStore: the RocksDB database that holds every run, version,
// manifest and alias. One database per data dir, opened by one process at a
// time (RocksDB's LOCK file; a second opener gets FAILED_PRECONDITION).
//
// Key schema (all keys are ASCII; run and alias names match
// [A-Za-z0-9][A-Za-z0-9._-]{0,127}, so '/' cannot occur inside a name;
// numbers are 16 lowercase hex digits so that keys sort numerically):
//
//   meta/schema                     "1"
//   run/<run>                       v1.RunInfo  (name, created_at, policy;
//                                   counters are derived, not stored)
//   seq/<run>                       last version number handed out (decimal)
//   ver/<run>/<version:016x>        v1.VersionInfo (aliases left empty)
//   man/<run>/<version:016x>/<rank:08x>
//                                   v1.ShardManifest of one committed shard
//   pend/<run>/<step>               pending version number for (run, step)
//   alias/<run>/<name>              v1.AliasInfo (also `last` and `best`)
//   ahist/<run>/<seq:016x>          v1.AliasEvent, the alias audit history
//   lease/<run>/<version:016x>/<digest hex>
//                                   "" : a blob a pending version uploaded
//                                   or was told exists; keeps GC off it.
//                                   Written without sync (a lease lost to
//                                   power failure only costs a re-upload),
//                                   deleted when the version publishes or
//                                   aborts.
//   quar/<digest hex>               v1.QuarantineRecord: a blob found
//                                   corrupt (server/core/blob_index.h);
//                                   deleted when an upload replaces it or
//                                   the blob is collected.
//   scrub/since                     unix nanos (decimal) when the scrub was
//                                   first enabled on this data dir
//   scrub/last_pass_end             unix nanos (decimal) of the end of the
//                                   last complete scrub pass
//   meta/record_seq                 seq (16 hex) of the last commit recorded
//                                   in the bucket (record_log.h), with S3
//   meta/rebuilding                 "1" while a rebuild from the bucket runs
//   meta/replica_of                 s3://BUCKET/PREFIX: this database is a
//                                   read replica's copy of that record
//                                   (meta/record_seq: the last applied)
//   rec/<seq:016x>                  a commit's record not yet written to the
//                                   bucket (its batch; deleted once written)
//
// Every change that publishes or moves something is one WriteBatch written
// with sync=true, so a crash leaves either all of it or none of it.
//
// Thread safety: all methods are safe to call concurrently; callers that do
// read-modify-write sequences serialise them themselves (server/core).
#ifndef CKPTD_SERVER_STORAGE_METADATA_STORE_H_
#define CKPTD_SERVER_STORAGE_METADATA_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/message_lite.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/write_batch.h"
#include "server/storage/record_log.h"

namespace ckptd::storage {

namespace keys {
std::string Run(absl::string_view run);
inline constexpr absl::string_view kRunPrefix = "run/";
std::string Seq(absl::string_view run);
std::string Version(absl::string_view run, uint64_t version);
std::string VersionPrefix(absl::string_view run);
std::string Manifest(absl::string_view run, uint64_t version, uint32_t rank);
std::string ManifestPrefix(absl::string_view run, uint64_t version);
inline constexpr absl::string_view kManifestPrefix = "man/";
std::string Pending(absl::string_view run, int64_t step);
std::string Alias(absl::string_view run, absl::string_view name);
std::string AliasPrefix(absl::string_view run);
std::string AliasEvent(absl::string_view run, uint64_t seq);
std::string AliasEventPrefix(absl::string_view run);
// Audit records of a run ("" for server-wide ones), in time order.
std::string Audit(absl::string_view run, int64_t at, uint64_t n);
std::string AuditPrefix(absl::string_view run);
std::string Lease(absl::string_view run, uint64_t version,
                  absl::string_view digest_hex);
std::string LeasePrefix(absl::string_view run, uint64_t version);
inline constexpr absl::string_view kLeasePrefix = "lease/";
inline constexpr absl::string_view kRecordSeq = "meta/record_seq";
inline constexpr absl::string_view kRebuilding = "meta/rebuilding";
inline constexpr absl::string_view kReplicaOf = "meta/replica_of";
inline constexpr absl::string_view kRecordPrefix = "rec/";
std::string Record(uint64_t seq);
std::string Quarantine(absl::string_view digest_hex);
inline constexpr absl::string_view kQuarantinePrefix = "quar/";
inline constexpr absl::string_view kScrubSince = "scrub/since";
inline constexpr absl::string_view kScrubLastPassEnd = "scrub/last_pass_end";
// Parses the version number out of a Version() key; nullopt if malformed.
std::optional<uint64_t> VersionFromKey(absl::string_view key);
std::string Hex16(uint64_t n);
}  // namespace keys

// A batch of puts and deletes applied atomically by MetadataStore::Commit.
class MetadataBatch {
 public:
  void Put(absl::string_view key, absl::string_view value);
  void Put(absl::string_view key, const google::protobuf::MessageLite& value);
  void Delete(absl::string_view key);
  bool empty() const { return batch_.Count() == 0; }

 private:
  friend class MetadataStore;
  rocksdb::WriteBatch batch_;
};

class MetadataStore {
 public:
  // Opens (creating) the database in `dir`. `env` (not owned; it must
  // outlive the store) replaces RocksDB's Env, for fault-injection tests;
  // nullptr: RocksDB's default.
  static absl::StatusOr<std::unique_ptr<MetadataStore>> Open(
      const std::string& dir, rocksdb::Env* env = nullptr);
  // Flushes and closes when that is safe (see ChooseCloseMode in the .cc).
  ~MetadataStore();

  absl::StatusOr<std::optional<std::string>> Get(absl::string_view key);
  // Parses the value at `key` into `out`; false when absent. DATA_LOSS when
  // the stored value does not parse.
  absl::StatusOr<bool> GetProto(absl::string_view key,
                                google::protobuf::MessageLite* out);
  // Applies `batch` atomically; durable on return when `sync`. With a
  // record log attached, a `sync` commit is also written to the bucket
  // before this returns (it adds its record keys to `batch`); when that
  // fails the commit stands here, the result is UNAVAILABLE saying so, and
  // the record is written before the next commit, which fails while it
  // cannot be.
  absl::Status Commit(MetadataBatch& batch, bool sync = true);

  // Makes `log` the bucket record of this database (record_log.h). Writes
  // the records a crash left unwritten. FAILED_PRECONDITION when the bucket
  // holds records this database has not seen (another ckptd writes the
  // prefix, or this data dir is older than the bucket), or fewer than it
  // wrote (another bucket or prefix). A database with history but no record
  // yet is recorded whole, as record 1.
  absl::Status AttachRecordLog(std::unique_ptr<RecordLog> log);
  // Fills this database, which must hold nothing but meta/ keys, from the
  // records in `log`: the state as of the last record. Resumable: an
  // interrupted rebuild leaves meta/rebuilding and starts over. Returns the
  // number of records applied.
  absl::StatusOr<uint64_t> RebuildFrom(RecordLog& log);
  // A read replica's copy of the record (core/repository_replica.cc): the
  // seq of the last record applied to this database (meta/record_seq; 0
  // when none), and the application of the next one, `seq`, holding
  // `batch` (as RecordLog::Replay gives it), atomically with its seq.
  // Written without sync: a replica's database is a copy that a restart
  // catches up from the bucket.
  absl::StatusOr<uint64_t> AppliedSeq();
  absl::Status ApplyRecord(uint64_t seq, absl::string_view batch);
  // The puts (value set) and deletes (value nullopt) of a record's batch,
  // in order. DATA_LOSS when `batch` is not a write batch.
  static absl::Status VisitRecord(
      absl::string_view batch,
      absl::FunctionRef<void(absl::string_view key,
                             std::optional<absl::string_view> value)>
          fn);
  // Whether a rebuild was interrupted (meta/rebuilding is set).
  absl::StatusOr<bool> RebuildInterrupted();
  // The attached record log; null when none. It lives as long as the store.
  RecordLog* record_log();
  // The last seq recorded in the bucket (0 without a record log).
  uint64_t recorded_seq();
  const std::string& dir() const { return dir_; }
  // Calls fn(key, value) for every key starting with `prefix`, in key
  // order, starting at `start` (>= prefix) if non-empty, until fn returns
  // false.
  absl::Status Scan(
      absl::string_view prefix, absl::string_view start,
      absl::FunctionRef<bool(absl::string_view key, absl::string_view value)>
          fn);
  // Scan over records of one message type: parses each value as `Message`
  // and calls fn(key, Message&&) until it returns false. DATA_LOSS naming
  // the key when a stored value does not parse.
  template <typename Message, typename Fn>
  absl::Status ScanProtos(absl::string_view prefix, absl::string_view start,
                          Fn fn);
  // The last key (and value) with this prefix, if any.
  absl::StatusOr<std::optional<std::pair<std::string, std::string>>> Last(
      absl::string_view prefix);
  // An openable copy of the database as of one instant, in `dir` (which
  // must not exist; its parent must): RocksDB's checkpoint (memtables
  // flushed first; table files hard-linked on one filesystem, else copied),
  // then every file in it fsynced. Writes may go on meanwhile. Backups
  // (server/core/repository_backup.cc) use it.
  absl::Status Checkpoint(const std::string& dir);

 private:
  MetadataStore(std::string dir, std::unique_ptr<rocksdb::DB> db);
  enum class CloseMode {
    kFlushAndClose,
    kCloseWithoutFlush,
    // No room even for the writes of a close: the database stays open
    // until the process exits.
    kLeaveOpen,
  };
  // How the destructor ends the database, given the free space and whether
  // a write failed.
  CloseMode ChooseCloseMode();

  // Writes the records committed here but not yet in the bucket.
  absl::Status WriteUnrecordedLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(record_mu_);
  absl::Status WriteRaw(rocksdb::WriteBatch& batch, bool sync);

  const std::string dir_;
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<bool> write_failed_{false};
  // Commits with a record are serialized: each is committed here, then
  // written to the bucket, before the next one starts.
  absl::Mutex record_mu_;
  std::atomic<bool> recording_{false};  // record_ is set
  std::unique_ptr<RecordLog> record_ ABSL_GUARDED_BY(record_mu_);
  // Last seq committed here / written to the bucket; the ones between have
  // rec/ keys.
  uint64_t committed_seq_ ABSL_GUARDED_BY(record_mu_) = 0;
  uint64_t recorded_seq_ ABSL_GUARDED_BY(record_mu_) = 0;
};

template <typename Message, typename Fn>
absl::Status MetadataStore::ScanProtos(absl::string_view prefix,
                                       absl::string_view start, Fn fn) {
  absl::Status parse_status;
  absl::Status st =
      Scan(prefix, start, [&](absl::string_view key, absl::string_view value) {
        Message m;
        if (!m.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          parse_status = absl::DataLossError(
              absl::StrCat("stored record ", key, " does not parse"));
          return false;
        }
        return fn(key, std::move(m));
      });
  return st.ok() ? parse_status : st;
}

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_METADATA_STORE_H_
