#include "server/storage/metadata_store.h"

#include <sys/statvfs.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"
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
bool MetadataStore::SafeToFlush() {
  if (write_failed_.load()) return false;
  uint64_t memtables = 0;
  if (!db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &memtables)) {
    return false;
  }
  struct statvfs st;
  if (::statvfs(dir_.c_str(), &st) != 0) return false;
  const uint64_t free = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  // The table file is at most about the memtable's size; twice that and a
  // margin leave room for the new WAL and MANIFEST records.
  constexpr uint64_t kFlushMargin = 8 << 20;
  return free >= 2 * memtables + kFlushMargin;
}

MetadataStore::~MetadataStore() {
  if (db_ == nullptr) return;
  if (SafeToFlush()) {
    rocksdb::Status s = db_->Flush(rocksdb::FlushOptions());
    if (!s.ok()) spdlog::warn("rocksdb flush on close: {}", s.ToString());
  } else {
    spdlog::warn(
        "rocksdb: no flush on close ({}): the WAL holds every acknowledged "
        "write and the next start replays it",
        write_failed_.load() ? "a write failed" : "the disk is nearly full");
  }
  rocksdb::Status s = db_->Close();
  if (!s.ok()) spdlog::warn("rocksdb close: {}", s.ToString());
}

absl::StatusOr<std::unique_ptr<MetadataStore>> MetadataStore::Open(
    const std::string& dir, rocksdb::Env* env) {
  rocksdb::Options options;
  if (env != nullptr) options.env = env;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.max_open_files = 256;
  options.keep_log_file_num = 4;
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

absl::Status MetadataStore::Commit(MetadataBatch& batch, bool sync) {
  rocksdb::WriteOptions options;
  options.sync = sync;
  rocksdb::Status s = db_->Write(options, &batch.batch_);
  if (!s.ok()) write_failed_.store(true);
  return FromRocks(s, "write metadata batch");
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
