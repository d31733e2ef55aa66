// Repository, part: read replicas (ckptd --replica_of s3://BUCKET/PREFIX).
//
// A replica serves the reads of a bucket prefix that another ckptd (the
// writer, --blob_store s3://BUCKET/PREFIX) writes. Its data dir holds its
// own copy of the index: built from the bucket's record the first time
// (MetadataStore::RebuildFrom), then kept up by applying each new record
// (storage/record_log.h) in seq order, every follow_interval. A record is
// one commit of the writer, so applying it is one atomic step here too,
// taken under mu_ so that a read sees the state after some record, never
// half of one. With it the in-memory state follows:
//  - the BlobIndex: a new shard manifest adds its blobs (stored: the writer
//    commits a manifest only over stored blobs) and refs; a deleted one
//    drops its refs. Blobs no manifest references any more are forgotten,
//    never deleted: the writer deletes the bytes. A read in progress pins
//    its blobs as on a writer, but the writer's GC does not know that pin,
//    so a read of a version the writer deleted meanwhile may fail.
//  - watchers: every alias the record moves is notified, in record order,
//    as the writer notified its own watchers.
//  - quarantine: the writer's quarantine records are applied to the index.
// Changes are refused (CheckWritable) with FAILED_PRECONDITION naming the
// writer's address, which the writer puts in PREFIX/writer
// (AnnounceWriter). Nothing of a replica writes to the bucket: its store is
// read-only. Several replicas may follow one prefix: they only read it.
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "proto/base/status.h"
#include "server/core/manifest.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {
namespace {

std::string LocationOf(const storage::S3BlobStoreOptions& o) {
  return o.prefix.empty() ? absl::StrCat("s3://", o.s3.bucket)
                          : absl::StrCat("s3://", o.s3.bucket, "/", o.prefix);
}

// The run of a key "<kind>/<run>/...", "" when it has no second segment.
absl::string_view RunOfKey(absl::string_view key) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(key, absl::MaxSplits('/', 2));
  return parts.size() >= 2 ? parts[1] : absl::string_view();
}

// The bytes of a blob its manifest entries reach: a lower bound of the
// blob's size (packed blobs hold more than one entry), which is what the
// index of a replica records; only stats read it there.
absl::flat_hash_map<Digest, uint64_t> ReachedBytes(const v1::ShardManifest& m) {
  absl::flat_hash_map<Digest, uint64_t> out;
  for (const v1::ManifestEntry& e : m.entries()) {
    if (!e.has_tensor()) continue;
    absl::StatusOr<Digest> d = DigestFromBytes(e.tensor().blob_digest());
    if (!d.ok()) continue;
    uint64_t& end = out[*d];
    end = std::max(end, e.tensor().blob_offset() + e.tensor().byte_length());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Repository>> Repository::OpenReplica(
    const std::string& data_dir, bool had_index, RepositoryOptions options) {
  storage::S3BlobStoreOptions s3 = *options.replica_of;
  const std::string location = LocationOf(s3);
  if (options.s3.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replica_of ", location, " and --blob_store ",
                     LocationOf(*options.s3),
                     " exclude each other: a replica reads the prefix a writer "
                     "(--blob_store s3://...) writes; give one of them"));
  }
  if (options.rebuild_index) {
    return absl::InvalidArgumentError(
        "--rebuild_index is for a writer; a replica builds and keeps its own "
        "copy of the index from the bucket by itself: drop --rebuild_index");
  }
  if (options.follow_interval < absl::Milliseconds(10) ||
      options.follow_interval > absl::Hours(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--follow_interval=", absl::FormatDuration(options.follow_interval),
        " is outside [10ms, 1h]"));
  }
  CKPTD_ASSIGN_OR_RETURN(
      auto meta,
      storage::MetadataStore::Open(options.metadata_dir, options.metadata_env));
  CKPTD_ASSIGN_OR_RETURN(std::optional<std::string> of,
                         meta->Get(storage::keys::kReplicaOf));
  // An index without the mark is a writer's, unless it holds nothing (a
  // first start of this replica that failed before it wrote the mark).
  bool writers = false;
  if (had_index && !of.has_value()) {
    CKPTD_RETURN_IF_ERROR(meta->Scan("", "", [&](absl::string_view key, auto) {
      writers = !absl::StartsWith(key, "meta/schema");
      return !writers;
    }));
  }
  if (writers) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--replica_of ", location, ": the data dir ", data_dir,
        " holds the index of a writing ckptd; a replica keeps its own copy "
        "of the bucket's index: give it a data dir of its own"));
  }
  if (of.has_value() && *of != location) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--replica_of ", location, ": the data dir ", data_dir,
        " is a replica of ", *of,
        ", not of this prefix; give another data dir (or remove this one: a "
        "replica's index is a copy of the bucket's)"));
  }
  if (!of.has_value()) {
    storage::MetadataBatch mark;
    mark.Put(storage::keys::kReplicaOf, location);
    CKPTD_RETURN_IF_ERROR(meta->Commit(mark));
  }
  s3.read_only = true;
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<storage::BlobStore> blobs,
                         storage::OpenS3BlobStore(s3));
  std::shared_ptr<storage::BlobStore> remote = blobs;
  CKPTD_ASSIGN_OR_RETURN(blobs, WithCache(std::move(blobs), options.cache));
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<storage::RecordLog> record,
                         storage::RecordLog::Open(s3.s3, s3.prefix));
  CKPTD_ASSIGN_OR_RETURN(uint64_t applied, meta->AppliedSeq());
  CKPTD_ASSIGN_OR_RETURN(bool interrupted, meta->RebuildInterrupted());
  if (applied == 0 || interrupted) {
    // A first copy: fetched many records at a time.
    const absl::Time start = absl::Now();
    CKPTD_ASSIGN_OR_RETURN(uint64_t n, meta->RebuildFrom(*record));
    spdlog::info("replica of {}: copied the index, {} records, in {}", location,
                 n, absl::FormatDuration(absl::Now() - start));
  }
  // No scrub: reading every blob is the writer's work, and what it finds
  // reaches the replica as quarantine records.
  options.scrub_interval = absl::ZeroDuration();
  std::unique_ptr<Repository> repo(
      new Repository(options, std::move(meta), std::move(blobs)));
  repo->data_dir_ = data_dir;
  repo->remote_blobs_ = std::move(remote);
  repo->follow_ = std::move(record);
  repo->replica_of_ = location;
  CKPTD_RETURN_IF_ERROR(repo->Recover());
  // Caught up before it serves.
  CKPTD_RETURN_IF_ERROR(repo->FollowOnce().status());
  repo->StartFollower();
  spdlog::info(
      "read replica of {} (record seq {}), following every {}; changes are "
      "refused",
      location, repo->GetFollowState().applied_seq,
      absl::FormatDuration(options.follow_interval));
  return repo;
}

absl::Status Repository::CheckWritable(absl::string_view what) {
  if (!is_replica()) return absl::OkStatus();
  std::string writer;
  {
    absl::MutexLock lock(&follow_state_mu_);
    writer = writer_address_;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "this ckptd is a read replica of ", replica_of_, " and takes no ", what,
      "; send changes to the ckptd that writes ", replica_of_,
      writer.empty() ? " (started with --blob_store " + replica_of_ +
                           "; it has not said where it serves)"
                     : absl::StrCat(", at ", writer)));
}

absl::Status Repository::AnnounceWriter(absl::string_view address) {
  storage::RecordLog* record = meta_->record_log();
  if (record == nullptr || is_replica()) return absl::OkStatus();
  return record->PutWriter(address);
}

Repository::FollowState Repository::GetFollowState() {
  absl::MutexLock lock(&follow_state_mu_);
  return follow_state_;
}

absl::StatusOr<uint64_t> Repository::FollowOnce() {
  if (!is_replica()) {
    return absl::FailedPreconditionError(
        "FollowOnce: this ckptd is not a read replica");
  }
  absl::MutexLock follow(&follow_mu_);
  // The writer's address, for CheckWritable's message: read again every
  // kWriterRereadEvery (a restarted writer may serve elsewhere).
  if (absl::Now() - writer_read_at_ >= kWriterRereadEvery) {
    absl::StatusOr<std::string> writer = follow_->GetWriter();
    if (absl::IsDataLoss(writer.status())) {
      spdlog::warn("replica of {}: ignoring the writer's address: {}",
                   replica_of_, writer.status().ToString());
      writer = std::string();
    }
    if (writer.ok()) {
      writer_read_at_ = absl::Now();
      absl::MutexLock lock(&follow_state_mu_);
      writer_address_ = *std::move(writer);
    }
  }
  CKPTD_ASSIGN_OR_RETURN(uint64_t from, meta_->AppliedSeq());
  uint64_t applied = 0;
  absl::StatusOr<uint64_t> last = follow_->Replay(
      from, /*fetch_threads=*/4, [&](uint64_t seq, absl::string_view batch) {
        CKPTD_RETURN_IF_ERROR(ApplyFollowed(seq, batch));
        ++applied;
        return absl::OkStatus();
      });
  absl::MutexLock lock(&follow_state_mu_);
  follow_state_.applied_seq = from + applied;
  if (!last.ok()) return last.status();
  follow_state_.last_success = absl::Now();
  return applied;
}

absl::Status Repository::ApplyFollowed(uint64_t seq, absl::string_view batch) {
  // What the record changes, read from its batch before taking mu_.
  std::vector<std::pair<std::string, v1::ShardManifest>> added;
  std::vector<std::string> removed;                        // manifest keys
  std::vector<std::pair<std::string, std::string>> moved;  // (run, alias)
  std::vector<std::pair<Digest, bool>> quarantine;         // (digest, set)
  absl::Status parse;
  CKPTD_RETURN_IF_ERROR(storage::MetadataStore::VisitRecord(
      batch,
      [&](absl::string_view key, std::optional<absl::string_view> value) {
        if (absl::StartsWith(key, storage::keys::kManifestPrefix)) {
          if (!value.has_value()) {
            removed.emplace_back(key);
            return;
          }
          v1::ShardManifest m;
          if (!m.ParseFromArray(value->data(),
                                static_cast<int>(value->size()))) {
            parse = absl::DataLossError(absl::StrCat(
                "record ", seq, ": manifest ", key, " does not parse"));
            return;
          }
          added.emplace_back(std::string(key), std::move(m));
        } else if (absl::StartsWith(key, "alias/") && value.has_value()) {
          std::vector<std::string> parts =
              absl::StrSplit(key, absl::MaxSplits('/', 2));
          if (parts.size() == 3) moved.emplace_back(parts[1], parts[2]);
        } else if (absl::StartsWith(key, storage::keys::kQuarantinePrefix)) {
          absl::StatusOr<Digest> d = DigestFromHex(
              key.substr(storage::keys::kQuarantinePrefix.size()));
          if (d.ok()) quarantine.emplace_back(*d, value.has_value());
        }
      }));
  CKPTD_RETURN_IF_ERROR(parse);

  absl::MutexLock lock(&mu_);
  // The refs the removed manifests held, read before they go.
  std::vector<std::pair<Digest, std::string>> dropped;
  for (const std::string& key : removed) {
    v1::ShardManifest m;
    CKPTD_ASSIGN_OR_RETURN(bool found, meta_->GetProto(key, &m));
    if (!found) continue;
    const std::string run(RunOfKey(key));
    for (const Digest& d : ManifestDigests(m)) dropped.emplace_back(d, run);
  }
  CKPTD_RETURN_IF_ERROR(meta_->ApplyRecord(seq, batch));
  for (const auto& [key, m] : added) {
    const absl::string_view run = RunOfKey(key);
    for (const auto& [d, bytes] : ReachedBytes(m)) {
      if (!index_.Generation(d).has_value()) index_.AddStored(d, bytes);
      index_.AddRef(d, run);
    }
  }
  for (const auto& [d, run] : dropped) index_.DropRef(d, run);
  for (const BlobIndex::Garbage& g : index_.TakeNewGarbage()) {
    FinishDeleteLocked(g, /*deleted=*/true);
  }
  for (const auto& [d, set] : quarantine) {
    const std::optional<uint64_t> generation = index_.Generation(d);
    if (!generation.has_value()) continue;
    if (set) {
      index_.Quarantine(d, *generation);
    } else {
      index_.Unquarantine(d, *generation);
    }
  }
  // Watchers, in the record's order, with the targets as they are now.
  for (const auto& [run, alias] : moved) {
    absl::StatusOr<uint64_t> target = AliasTargetOrZero(run, alias);
    if (!target.ok() || *target == 0) continue;
    absl::StatusOr<v1::VersionInfo> info = LoadVersion(run, *target);
    if (!info.ok()) continue;
    // The record is applied: a failure here costs a watcher's event only.
    if (absl::Status st = FillAliases(&*info); !st.ok()) {
      spdlog::warn("replica: aliases of {}@{}: {}", run, *target,
                   st.ToString());
    }
    watchers_.Notify(run, {{alias, *std::move(info)}});
  }
  return absl::OkStatus();
}

void Repository::StartFollower() {
  follow_thread_ = std::thread([this] {
    absl::Time warned = absl::InfinitePast();
    for (;;) {
      {
        absl::MutexLock lock(&follow_state_mu_);
        if (follow_state_mu_.AwaitWithTimeout(absl::Condition(&follow_stop_),
                                              options_.follow_interval)) {
          return;
        }
      }
      absl::StatusOr<uint64_t> n = FollowOnce();
      if (!n.ok()) {
        // Reads go on from what was applied; logged once a minute.
        if (absl::Now() - warned > absl::Minutes(1)) {
          spdlog::warn("replica of {}: following the record: {}", replica_of_,
                       n.status().ToString());
          warned = absl::Now();
        }
      } else if (*n > 0) {
        spdlog::debug("replica of {}: applied {} records", replica_of_, *n);
      }
    }
  });
}

void Repository::StopFollower() {
  {
    absl::MutexLock lock(&follow_state_mu_);
    follow_stop_ = true;
  }
  if (follow_thread_.joinable()) follow_thread_.join();
}

}  // namespace ckptd::core
