// BlobStore: content-addressed storage of immutable blobs (tensor bytes).
//
// A blob is named by the XXH3-128 digest of its bytes (server/common/digest.h).
// Writers stream bytes in, the store computes the digest itself, and Commit
// publishes the blob under its digest only if it matches the caller's claim.
// A committed blob is durable when Commit returns: nothing outside this layer
// may assume a blob is a local file (an object-store implementation must fit
// behind the same interface).
//
// Reads verify stored per-chunk checksums and answer DATA_LOSS instead of
// returning bad bytes.
//
// Thread safety: BlobStore methods are safe to call concurrently. A
// BlobWriter or BlobReader is used by one thread at a time. Two writers may
// upload the same digest concurrently; the first Commit wins and the second
// finds the blob present and discards its copy.
#ifndef CKPTD_SERVER_STORAGE_BLOB_STORE_H_
#define CKPTD_SERVER_STORAGE_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/base/digest.h"
#include "proto/base/local_frame.h"

namespace ckptd::storage {

// Size of the units the stores checksum (and verify on read).
inline constexpr uint64_t kBlobChecksumChunk = 1 << 20;

class BlobWriter {
 public:
  virtual ~BlobWriter() = default;  // abandons an uncommitted blob

  // Appends at the current end.
  virtual absl::Status Append(std::string_view data) = 0;
  // Bytes appended so far.
  virtual uint64_t size() const = 0;
  // Makes every byte appended so far safe from the interruption of the
  // stream that brought them and returns that count: the offset an
  // interrupted upload may resume from, with this writer, in this process
  // (files: fdatasync; S3: bytes not yet sent as a part stay in the writer).
  // A restart drops partial blobs in every store (RemoveTemporaries).
  virtual absl::StatusOr<uint64_t> Sync() = 0;
  // Checks that the digest of the appended bytes equals `expected`
  // (INVALID_ARGUMENT naming both digests if not, and the partial blob is
  // discarded), then makes the blob durable and visible under `expected`:
  // for files, fsync, rename into place, fsync the directory. If the blob is
  // already present the copy is discarded and Commit succeeds. The writer
  // is finished afterwards, whatever the result.
  virtual absl::Status Commit(const Digest& expected) = 0;
  // As Commit, but a blob already stored under `expected` is replaced by
  // this verified copy, atomically: a reader sees the old blob or the new
  // one, never a mix (for files: rename over it, then fsync the directory;
  // a reader that opened the old file keeps reading the old bytes). This is
  // how a blob found corrupt is healed; Commit would keep the bad copy.
  virtual absl::Status CommitReplacing(const Digest& expected) = 0;
  // Discards the partial blob. The writer is finished afterwards.
  virtual void Abandon() = 0;
};

class BlobReader {
 public:
  virtual ~BlobReader() = default;
  virtual uint64_t size() const = 0;
  // Reads bytes [offset, offset + length) into `out`. OUT_OF_RANGE past the
  // end; DATA_LOSS (naming the digest and offset) if a stored checksum does
  // not match.
  virtual absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) = 0;
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  // A writer of the blob the caller means to commit as `expected`. A store
  // may place bytes by it while they arrive (S3: the multipart upload goes
  // to the blob's own key, so a committed upload is never copied); Commit
  // still checks the bytes against the digest it is given.
  virtual absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) = 0;
  // Size of the blob, or nullopt when it is not stored.
  virtual absl::StatusOr<std::optional<uint64_t>> Stat(
      const Digest& digest) = 0;
  // NOT_FOUND when the blob is not stored.
  virtual absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) = 0;
  // For the co-located pull (server/service/local_data_plane.h): a
  // read-only descriptor of the blob's stored form (blob_format.h: the data
  // first), or nullopt when this store keeps no file of it (S3): the caller
  // then reads through Open. NOT_FOUND when the blob is not stored. Nothing
  // is verified here: whoever maps the bytes checks them against the digest.
  virtual absl::StatusOr<std::optional<UniqueFd>> OpenStoredFile(
      const Digest& digest) {
    return std::optional<UniqueFd>();
  }
  // Removes a blob durably; OK when it is not stored.
  virtual absl::Status Delete(const Digest& digest) = 0;
  // Calls `fn` for every committed blob (order unspecified).
  virtual absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) = 0;
  // Removes partial blobs left behind by an earlier process. Call once after
  // opening, before any writer exists.
  virtual absl::Status RemoveTemporaries() = 0;

  // For backups: makes blob `digest` of `source` present in this store
  // without copying its bytes, where both stores share the storage (file
  // stores on one filesystem: a hard link). Returns false when they do not
  // (another filesystem, hard links refused, another kind of store): the
  // caller then copies the blob through NewWriter. A linked blob's name is
  // durable only after SyncLinks(). NOT_FOUND when `source` lacks the blob.
  virtual absl::StatusOr<bool> LinkFrom(BlobStore& source,
                                        const Digest& digest) {
    return false;
  }
  // Makes the names LinkFrom added durable.
  virtual absl::Status SyncLinks() { return absl::OkStatus(); }
};

// Opens (creating if needed) a store of files under `dir`. The layout is
// described in file_blob_store.cc.
absl::StatusOr<std::unique_ptr<BlobStore>> OpenFileBlobStore(
    const std::string& dir);
// Where the store of files under `dir` keeps committed blob `digest`.
std::string FileBlobPath(const std::string& dir, const Digest& digest);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_BLOB_STORE_H_
