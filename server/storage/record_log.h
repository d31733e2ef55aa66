// RecordLog: the bucket as the record of a data dir whose blobs are in S3.
//
// Every durable change of the metadata (a version begun, committed,
// aborted or deleted; an alias moved; a policy or label set; retention and
// GC) is one MetadataStore commit, and each such commit is also written to
// the bucket as one immutable object before the commit returns:
//
//   PREFIX/record/<16 hex seq>   seq = 1, 2, 3, ... in commit order
//
// An object holds the commit's RocksDB write batch (its serialized form,
// rocksdb::WriteBatch::Data()) in a frame (see Encode in the .cc): magic,
// seq, length, XXH3-64 of the batch. Applying records 1..N to an empty
// database gives the database as of commit N, so a data dir that is lost
// is rebuilt from the bucket (MetadataStore::Rebuild). Commits made with
// sync=false (lease hints, recovery clean-up: state that a restart
// recomputes) are not recorded.
//
// The ckptd that writes the record also says where it serves in
// PREFIX/writer (a line of text, e.g. "ckptd at host:50051"), so that read
// replicas, which follow the record (core/repository_replica.cc), can name
// where writes go.
//
// Only one ckptd writes a prefix's record. Records are written in order:
// the next commit starts only once the previous record is in the bucket
// (MetadataStore keeps a record it could not write and writes it first), so
// the bucket never holds record N+1 without N.
//
// Thread safety: all methods may be called concurrently.
#ifndef CKPTD_SERVER_STORAGE_RECORD_LOG_H_
#define CKPTD_SERVER_STORAGE_RECORD_LOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/storage/s3_client.h"

namespace ckptd::storage {

class RecordLog {
 public:
  // The record under `prefix` (no leading or trailing '/'; empty: the
  // bucket's root) of the bucket in `s3`. Checks the bucket.
  static absl::StatusOr<std::unique_ptr<RecordLog>> Open(S3Options s3,
                                                         std::string prefix);

  // PREFIX/record/<16 hex seq>.
  std::string KeyOf(uint64_t seq) const;
  // s3://BUCKET/PREFIX/record/, for messages.
  std::string Describe() const;

  // Writes record `seq` holding `batch` (a serialized RocksDB write batch).
  absl::Status Put(uint64_t seq, absl::string_view batch);

  // The highest seq in the bucket; 0 when it holds no record.
  absl::StatusOr<uint64_t> LastSeq();

  // PREFIX/writer: where the writing ckptd serves. GetWriter gives "" when
  // there is none, and DATA_LOSS when it is not one line of printable text
  // of at most kMaxWriterBytes.
  static constexpr uint64_t kMaxWriterBytes = 1024;
  absl::Status PutWriter(absl::string_view text);
  absl::StatusOr<std::string> GetWriter();

  // Reads records after `after`, in seq order, calling fn(seq, batch) for
  // each of the unbroken run after+1..N; a record after a missing seq is
  // not applied (and logged), as it cannot have been acknowledged.
  // `fetch_threads` GETs run at once. DATA_LOSS naming the key when a record
  // fails its checksum. Returns N (== after when there are none).
  absl::StatusOr<uint64_t> Replay(
      uint64_t after, int fetch_threads,
      absl::FunctionRef<absl::Status(uint64_t seq, absl::string_view batch)>
          fn);

 private:
  RecordLog(std::unique_ptr<S3Client> client, std::string prefix);

  // Every seq after `after` in the bucket, ascending.
  absl::StatusOr<std::vector<uint64_t>> ListSeqs(uint64_t after);

  std::unique_ptr<S3Client> client_;
  const std::string records_prefix_;  // PREFIX/record/
  const std::string writer_key_;      // PREFIX/writer
};

// The frame of one record; exposed for tests.
std::string EncodeRecord(uint64_t seq, absl::string_view batch);
// The batch of a record read from `key`; DATA_LOSS naming `key` when the
// frame is malformed, fails its checksum or holds another seq.
absl::StatusOr<absl::string_view> DecodeRecord(absl::string_view key,
                                               uint64_t seq,
                                               absl::string_view bytes);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_RECORD_LOG_H_
