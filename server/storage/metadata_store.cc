#include "server/storage/metadata_store.h"

#include <sys/statvfs.h>

#include <cstdarg>
#include <cstdio>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"
#include "rocksdb/convenience.h"
#include "rocksdb/options.h"
#include "rocksdb/utilities/checkpoint.h"
#include "server/storage/local_dir.h"
#include "spdlog/spdlog.h"

namespace ckptd::storage {

namespace keys {

std::string Hex16(uint64_t n) { return absl::StrFormat("%016x", n); }
std::string Run(absl::string_view run) { return absl::StrCat("run/", run); }
std::string Seq(absl::string_view run) { return absl::StrCat("seq/", run); }
std::string Version(absl::string_view run, uint64_t version) {
  return absl::StrCat("ver/", run, "/", Hex16(version));
}
std::string VersionPrefix(absl::string_view run) {
  return absl::StrCat("ver/", run, "/");
}
std::string Manifest(absl::string_view run, uint64_t version, uint32_t rank) {
  return absl::StrCat("man/", run, "/", Hex16(version), "/",
                      absl::StrFormat("%08x", rank));
}
std::string ManifestPrefix(absl::string_view run, uint64_t version) {
  return absl::StrCat("man/", run, "/", Hex16(version), "/");
}
std::string Pending(absl::string_view run, int64_t step) {
  return absl::StrCat("pend/", run, "/", step);
}
std::string Alias(absl::string_view run, absl::string_view name) {
  return absl::StrCat("alias/", run, "/", name);
}
std::string AliasPrefix(absl::string_view run) {
  return absl::StrCat("alias/", run, "/");
}
std::string AliasEvent(absl::string_view run, uint64_t seq) {
  return absl::StrCat("ahist/", run, "/", Hex16(seq));
}
std::string AliasEventPrefix(absl::string_view run) {
  return absl::StrCat("ahist/", run, "/");
}
std::string Audit(absl::string_view run, int64_t at, uint64_t n) {
  return absl::StrCat("audit/", run, "/", Hex16(static_cast<uint64_t>(at)),
                      Hex16(n));
}
std::string AuditPrefix(absl::string_view run) {
  return absl::StrCat("audit/", run, "/");
}
std::string Lease(absl::string_view run, uint64_t version,
                  absl::string_view digest_hex) {
  return absl::StrCat("lease/", run, "/", Hex16(version), "/", digest_hex);
}
std::string LeasePrefix(absl::string_view run, uint64_t version) {
  return absl::StrCat("lease/", run, "/", Hex16(version), "/");
}
std::string Record(uint64_t seq) {
  return absl::StrCat(kRecordPrefix, Hex16(seq));
}
std::string Quarantine(absl::string_view digest_hex) {
  return absl::StrCat(kQuarantinePrefix, digest_hex);
}
std::optional<uint64_t> VersionFromKey(absl::string_view key) {
  size_t slash = key.rfind('/');
  if (slash == absl::string_view::npos || key.size() - slash - 1 != 16) {
    return std::nullopt;
  }
  uint64_t v = 0;
  if (!absl::SimpleHexAtoi(key.substr(slash + 1), &v)) return std::nullopt;
  return v;
}

}  // namespace keys

namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(context, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) {
    return WithReason(absl::ResourceExhaustedError(msg), v1::DISK_FULL);
  }
  if (s.IsIOError()) return absl::UnavailableError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

}  // namespace

void MetadataBatch::Put(absl::string_view key, absl::string_view value) {
  batch_.Put(rocksdb::Slice(key.data(), key.size()),
             rocksdb::Slice(value.data(), value.size()));
}

void MetadataBatch::Put(absl::string_view key,
                        const google::protobuf::MessageLite& value) {
  Put(key, value.SerializeAsString());
}

void MetadataBatch::Delete(absl::string_view key) {
  batch_.Delete(rocksdb::Slice(key.data(), key.size()));
}

MetadataStore::MetadataStore(std::string dir, std::unique_ptr<rocksdb::DB> db)
    : dir_(std::move(dir)), db_(std::move(db)) {}

// A flush at close only saves the next start replaying the WAL, which holds
// every acknowledged write either way. It is skipped when it could fail:
// RocksDB 7.8 (as Debian builds it, with assertions) aborts the process when
// a flush runs out of disk space, or writes to a WAL whose last write
// failed, with `Assertion sync_without_flush_called_ failed` instead of
// returning the error.
MetadataStore::CloseMode MetadataStore::ChooseCloseMode() {
  if (write_failed_.load()) return CloseMode::kCloseWithoutFlush;
  uint64_t memtables = 0;
  if (!db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &memtables)) {
    return CloseMode::kCloseWithoutFlush;
  }
  struct statvfs st;
  if (::statvfs(dir_.c_str(), &st) != 0) return CloseMode::kCloseWithoutFlush;
  const uint64_t free = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  // The table file is at most about the memtable's size; twice that and a
  // margin leave room for the new WAL and MANIFEST records.
  constexpr uint64_t kFlushMargin = 8 << 20;
  if (free >= 2 * memtables + kFlushMargin) return CloseMode::kFlushAndClose;
  // Close itself writes too (it trims the WAL's preallocated tail, finishes
  // the MANIFEST), and on a nearly full disk the same assertion was seen to
  // abort the process there: a close that cannot fail is none.
  return CloseMode::kLeaveOpen;
}

namespace {

// Databases left open at close (CloseMode::kLeaveOpen), reachable so that a
// leak checker sees them as kept, not lost.
absl::Mutex abandoned_mu(absl::kConstInit);
std::vector<std::unique_ptr<rocksdb::DB>>* abandoned
    ABSL_GUARDED_BY(abandoned_mu) = nullptr;

}  // namespace

MetadataStore::~MetadataStore() {
  if (db_ == nullptr) return;
  const CloseMode mode = ChooseCloseMode();
  if (mode == CloseMode::kFlushAndClose) {
    rocksdb::Status s = db_->Flush(rocksdb::FlushOptions());
    if (!s.ok()) spdlog::warn("rocksdb flush on close: {}", s.ToString());
  } else {
    spdlog::warn(
        "rocksdb: no flush on close ({}): the WAL holds every acknowledged "
        "write and the next start replays it",
        write_failed_.load() ? "a write failed" : "the disk is nearly full");
  }
  if (mode == CloseMode::kLeaveOpen) {
    // Every write already reached the WAL file (write(2) at each commit), so
    // leaving the database open loses nothing; the process exits soon and
    // the kernel releases the LOCK file. Background work is stopped first.
    spdlog::warn("rocksdb: not closed (the disk is nearly full)");
    rocksdb::CancelAllBackgroundWork(db_.get(), /*wait=*/true);
    absl::MutexLock lock(&abandoned_mu);
    if (abandoned == nullptr) {
      abandoned = new std::vector<std::unique_ptr<rocksdb::DB>>();
    }
    abandoned->push_back(std::move(db_));
    return;
  }
  rocksdb::Status s = db_->Close();
  if (!s.ok()) spdlog::warn("rocksdb close: {}", s.ToString());
}

namespace {

// RocksDB's own log, into ckptd's (warnings and errors only) instead of a
// LOG file in the database dir. A LOG file shares the data disk: once one
// of its writes failed (a full disk), RocksDB's next log line aborted the
// process in WritableFileWriter (assertion sync_without_flush_called_),
// e.g. the line CancelAllBackgroundWork writes at close.
class RocksLogToSpdlog final : public rocksdb::Logger {
 public:
  RocksLogToSpdlog() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format,
            va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      spdlog::error("rocksdb: {}", line);
    } else {
      spdlog::warn("rocksdb: {}", line);
    }
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetadataStore>> MetadataStore::Open(
    const std::string& dir, rocksdb::Env* env) {
  rocksdb::Options options;
  if (env != nullptr) options.env = env;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.max_open_files = 256;
  options.info_log = std::make_shared<RocksLogToSpdlog>();
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return absl::FailedPreconditionError(absl::StrCat(
          "metadata database ", dir,
          " is locked: another ckptd is using this data dir (", s.ToString(),
          "); stop it or choose another --data_dir"));
    }
    return FromRocks(s, absl::StrCat("open metadata database ", dir));
  }
  std::unique_ptr<MetadataStore> store(
      new MetadataStore(dir, std::unique_ptr<rocksdb::DB>(raw)));
  std::string schema;
  s = raw->Get(rocksdb::ReadOptions(), "meta/schema", &schema);
  if (s.IsNotFound()) {
    MetadataBatch batch;
    batch.Put("meta/schema", "1");
    if (auto st = store->Commit(batch); !st.ok()) return st;
  } else if (!s.ok()) {
    return FromRocks(s, "read meta/schema");
  } else if (schema != "1") {
    return absl::FailedPreconditionError(
        absl::StrCat("metadata database ", dir, " has schema '", schema,
                     "'; this ckptd understands schema 1"));
  }
  return store;
}

absl::StatusOr<std::optional<std::string>> MetadataStore::Get(
    absl::string_view key) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(),
                               rocksdb::Slice(key.data(), key.size()), &value);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocks(s, absl::StrCat("get ", key));
  return value;
}

absl::StatusOr<bool> MetadataStore::GetProto(
    absl::string_view key, google::protobuf::MessageLite* out) {
  auto value = Get(key);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return false;
  if (!out->ParseFromString(**value)) {
    return absl::DataLossError(
        absl::StrCat("stored record ", key, " does not parse"));
  }
  return true;
}

absl::Status MetadataStore::WriteRaw(rocksdb::WriteBatch& batch, bool sync) {
  rocksdb::WriteOptions options;
  options.sync = sync;
  rocksdb::Status s = db_->Write(options, &batch);
  if (!s.ok()) write_failed_.store(true);
  return FromRocks(s, "write metadata batch");
}

absl::Status MetadataStore::Commit(MetadataBatch& batch, bool sync) {
  if (!recording_.load()) return WriteRaw(batch.batch_, sync);
  if (!sync) return WriteRaw(batch.batch_, false);
  absl::MutexLock lock(&record_mu_);
  // Records go to the bucket in order: first any earlier one that could not
  // be written; while the bucket is unreachable nothing new is committed.
  CKPTD_RETURN_IF_ERROR(WriteUnrecordedLocked());
  const uint64_t seq = committed_seq_ + 1;
  const std::string record = batch.batch_.Data();
  batch.Put(keys::Record(seq), record);
  batch.Put(keys::kRecordSeq, keys::Hex16(seq));
  CKPTD_RETURN_IF_ERROR(WriteRaw(batch.batch_, true));
  committed_seq_ = seq;
  if (absl::Status put = record_->Put(seq, record); !put.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the change is committed on this node but its record ",
        record_->KeyOf(seq), " could not be written to the bucket (",
        put.message(),
        "); ckptd writes it before the next change, and refuses changes "
        "until the bucket takes it"));
  }
  recorded_seq_ = seq;
  rocksdb::WriteBatch done;
  done.Delete(keys::Record(seq));
  // Without sync: a rec/ key that outlives a crash is written again.
  WriteRaw(done, false).IgnoreError();
  return absl::OkStatus();
}

absl::Status MetadataStore::WriteUnrecordedLocked() {
  while (recorded_seq_ < committed_seq_) {
    const uint64_t seq = recorded_seq_ + 1;
    CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> record,
                           Get(keys::Record(seq)));
    if (!record.has_value()) {
      return absl::DataLossError(
          absl::StrCat("record ", seq, " (", keys::Record(seq),
                       ") is neither in the bucket nor in the local database"));
    }
    if (absl::Status put = record_->Put(seq, *record); !put.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "nothing was changed: record ", record_->KeyOf(seq),
          " of an earlier change is not yet in the bucket and still cannot "
          "be written (",
          put.message(), "); retry when the bucket is reachable"));
    }
    recorded_seq_ = seq;
    rocksdb::WriteBatch done;
    done.Delete(keys::Record(seq));
    WriteRaw(done, false).IgnoreError();
  }
  return absl::OkStatus();
}

RecordLog* MetadataStore::record_log() {
  absl::MutexLock lock(&record_mu_);
  return record_.get();
}

uint64_t MetadataStore::recorded_seq() {
  absl::MutexLock lock(&record_mu_);
  return recorded_seq_;
}

absl::StatusOr<uint64_t> MetadataStore::AppliedSeq() {
  CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> text,
                         Get(keys::kRecordSeq));
  uint64_t seq = 0;
  if (text.has_value() && !absl::SimpleHexAtoi(*text, &seq)) {
    return absl::DataLossError(absl::StrCat("stored ", keys::kRecordSeq, " '",
                                            text->substr(0, 32),
                                            "' is not a hex number"));
  }
  return seq;
}

absl::Status MetadataStore::ApplyRecord(uint64_t seq, absl::string_view batch) {
  rocksdb::WriteBatch b{std::string(batch)};
  const std::string seq_text = keys::Hex16(seq);
  CKPTD_RETURN_IF_ERROR(
      FromRocks(b.Put(std::string(keys::kRecordSeq), seq_text),
                absl::StrCat("apply record ", seq)));
  return WriteRaw(b, false);
}

namespace {
// Collects a batch's puts and deletes (RocksDB's WriteBatch::Iterate).
class RecordVisitor : public rocksdb::WriteBatch::Handler {
 public:
  using Fn = absl::FunctionRef<void(absl::string_view,
                                    std::optional<absl::string_view>)>;
  explicit RecordVisitor(Fn fn) : fn_(fn) {}
  void Put(const rocksdb::Slice& key, const rocksdb::Slice& value) override {
    fn_(absl::string_view(key.data(), key.size()),
        absl::string_view(value.data(), value.size()));
  }
  void Delete(const rocksdb::Slice& key) override {
    fn_(absl::string_view(key.data(), key.size()), std::nullopt);
  }

 private:
  Fn fn_;
};
}  // namespace

absl::Status MetadataStore::VisitRecord(
    absl::string_view batch,
    absl::FunctionRef<void(absl::string_view, std::optional<absl::string_view>)>
        fn) {
  rocksdb::WriteBatch b{std::string(batch)};
  RecordVisitor visitor(fn);
  rocksdb::Status st = b.Iterate(&visitor);
  if (!st.ok()) {
    return absl::DataLossError(
        absl::StrCat("a record is not a write batch: ", st.ToString()));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> MetadataStore::RebuildInterrupted() {
  CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> v, Get(keys::kRebuilding));
  return v.has_value();
}

absl::Status MetadataStore::AttachRecordLog(std::unique_ptr<RecordLog> log) {
  absl::MutexLock lock(&record_mu_);
  CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> seq_text,
                         Get(keys::kRecordSeq));
  uint64_t committed = 0;
  if (seq_text.has_value() && !absl::SimpleHexAtoi(*seq_text, &committed)) {
    return absl::DataLossError(absl::StrCat("stored ", keys::kRecordSeq, " '",
                                            *seq_text, "' is not a number"));
  }
  // Records committed here but not yet written: rec/<seq> keys.
  std::optional<uint64_t> first_unrecorded;
  CKPTD_RETURN_IF_ERROR(
      Scan(keys::kRecordPrefix, "", [&](absl::string_view key, auto) {
        uint64_t seq = 0;
        if (absl::SimpleHexAtoi(key.substr(keys::kRecordPrefix.size()), &seq) &&
            seq <= committed) {
          if (!first_unrecorded.has_value()) first_unrecorded = seq;
        }
        return true;
      }));
  const uint64_t recorded =
      first_unrecorded.has_value() ? *first_unrecorded - 1 : committed;
  CKPTD_ASSIGN_OR_RETURN(uint64_t in_bucket, log->LastSeq());
  const std::string where = log->Describe();
  if (in_bucket > committed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the record in ", where, " holds ", in_bucket,
        " changes but this data dir's index only ", committed,
        ": another ckptd writes to this bucket prefix, or this data dir is "
        "older than the bucket. Give each ckptd its own prefix, or rebuild "
        "this node from the bucket: move ",
        dir_, " away and start with --rebuild_index"));
  }
  if (in_bucket < recorded) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the record in ", where, " holds ", in_bucket,
        " changes but this data dir recorded ", recorded,
        " there: is --blob_store the bucket and prefix this data dir was "
        "started with? Records were deleted from the bucket otherwise"));
  }
  committed_seq_ = committed;
  recorded_seq_ = recorded;
  record_ = std::move(log);
  recording_.store(true);
  // The part of unwritten records the bucket got before a crash is written
  // again (same bytes); then the rest.
  CKPTD_RETURN_IF_ERROR(WriteUnrecordedLocked());
  if (committed_seq_ > 0) return absl::OkStatus();
  // A database with history but no record yet (its first start with this
  // bucket): everything it holds becomes record 1.
  MetadataBatch all;
  bool history = false;
  CKPTD_RETURN_IF_ERROR(
      Scan("", "", [&](absl::string_view key, absl::string_view value) {
        if (absl::StartsWith(key, "meta/") ||
            absl::StartsWith(key, keys::kRecordPrefix) ||
            absl::StartsWith(key, keys::kLeasePrefix)) {
          return true;
        }
        history = true;
        all.Put(key, value);
        return true;
      }));
  if (!history) return absl::OkStatus();
  const uint64_t seq = 1;
  const std::string record = all.batch_.Data();
  all.Put(keys::Record(seq), record);
  all.Put(keys::kRecordSeq, keys::Hex16(seq));
  CKPTD_RETURN_IF_ERROR(WriteRaw(all.batch_, true));
  committed_seq_ = seq;
  spdlog::info("record: this data dir's index written to {} as record 1",
               where);
  return WriteUnrecordedLocked();
}

absl::StatusOr<uint64_t> MetadataStore::RebuildFrom(RecordLog& log) {
  bool has_content = false;
  CKPTD_RETURN_IF_ERROR(Scan("", "", [&](absl::string_view key, auto) {
    if (!absl::StartsWith(key, "meta/")) has_content = true;
    return !has_content;
  }));
  CKPTD_ASSIGN_OR_RETURN(bool resumed, RebuildInterrupted());
  if (has_content && !resumed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the index in ", dir_,
        " is not empty; a rebuild from the bucket starts from nothing: move ",
        dir_, " away (or start without --rebuild_index)"));
  }
  {
    MetadataBatch mark;
    mark.Put(keys::kRebuilding, "1");
    CKPTD_RETURN_IF_ERROR(WriteRaw(mark.batch_, true));
  }
  // Replaying from record 1 over what an interrupted rebuild applied gives
  // the same state: each key ends as the last record that touched it says.
  uint64_t applied = 0;
  CKPTD_ASSIGN_OR_RETURN(
      uint64_t last,
      log.Replay(0, /*fetch_threads=*/8,
                 [&](uint64_t, absl::string_view record) -> absl::Status {
                   rocksdb::WriteBatch batch{std::string(record)};
                   CKPTD_RETURN_IF_ERROR(WriteRaw(batch, false));
                   ++applied;
                   return absl::OkStatus();
                 }));
  MetadataBatch done;
  done.Put(keys::kRecordSeq, keys::Hex16(last));
  done.Delete(keys::kRebuilding);
  CKPTD_RETURN_IF_ERROR(WriteRaw(done.batch_, true));
  return applied;
}

absl::Status MetadataStore::Scan(
    absl::string_view prefix, absl::string_view start,
    absl::FunctionRef<bool(absl::string_view, absl::string_view)> fn) {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions()));
  absl::string_view from = start.empty() ? prefix : start;
  for (it->Seek(rocksdb::Slice(from.data(), from.size())); it->Valid();
       it->Next()) {
    absl::string_view key(it->key().data(), it->key().size());
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!fn(key, absl::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  return FromRocks(it->status(), absl::StrCat("scan ", prefix));
}

absl::StatusOr<std::optional<std::pair<std::string, std::string>>>
MetadataStore::Last(absl::string_view prefix) {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions()));
  // '/' + 1 == '0'-1 ... use 0xff as an upper bound past any ASCII key.
  std::string upper = absl::StrCat(prefix, "\xff");
  it->SeekForPrev(upper);
  if (it->Valid()) {
    absl::string_view key(it->key().data(), it->key().size());
    if (key.substr(0, prefix.size()) == prefix) {
      return std::make_pair(std::string(key), it->value().ToString());
    }
  }
  if (auto st = FromRocks(it->status(), absl::StrCat("seek ", prefix));
      !st.ok()) {
    return st;
  }
  return std::nullopt;
}

absl::Status MetadataStore::Checkpoint(const std::string& dir) {
  rocksdb::Checkpoint* raw = nullptr;
  CKPTD_RETURN_IF_ERROR(FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw),
                                  "prepare metadata checkpoint"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  CKPTD_RETURN_IF_ERROR(
      FromRocks(checkpoint->CreateCheckpoint(dir),
                absl::StrCat("metadata checkpoint into ", dir)));
  // RocksDB syncs what it copies; hard links and its own directory entries
  // are made durable here whatever the version does.
  return SyncTree(dir);
}

}  // namespace ckptd::storage
