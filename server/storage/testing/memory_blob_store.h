// MemoryBlobStore: a BlobStore held in memory that simulates durability, for
// tests of the layers above storage (the LevelDB MemEnv idea).
//
// It has the semantics of the file store: the digest is checked at Commit
// (INVALID_ARGUMENT, nothing visible), a second Commit of a stored digest
// succeeds and keeps one copy (CommitReplacing replaces it), reads verify
// per-chunk checksums (kBlobChecksumChunk) and answer DATA_LOSS naming the
// digest and offset.
//
// Durability model, mirroring files on a disk that loses its page cache:
//   - Commit and Delete are durable when they return.
//   - A writer's bytes are durable up to its last successful Sync(); its
//     partial blob behaves like a tmp file: SimulateCrash() cuts it back to
//     that point and leaves it behind (TemporaryCount()) until
//     RemoveTemporaries().
//   - SimulateCrash() also invalidates every live writer: its later calls
//     return ABORTED and it cannot publish anything. Readers of committed
//     blobs keep working (committed bytes survive a crash).
//
// Thread safety: all methods, including the testing hooks, are safe to call
// concurrently. A writer or reader is used by one thread at a time. Writers
// and readers stay valid (but inert) if they outlive the store.
#ifndef CKPTD_SERVER_STORAGE_TESTING_MEMORY_BLOB_STORE_H_
#define CKPTD_SERVER_STORAGE_TESTING_MEMORY_BLOB_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage::testing {

class MemoryBlobStore final : public BlobStore {
 public:
  MemoryBlobStore();
  ~MemoryBlobStore() override;
  MemoryBlobStore(const MemoryBlobStore&) = delete;
  MemoryBlobStore& operator=(const MemoryBlobStore&) = delete;

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) override;
  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override;
  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override;
  absl::Status Delete(const Digest& digest) override;
  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) override;
  // Removes the partial blobs a simulated crash left behind; live writers
  // are not touched (the interface requires there are none).
  absl::Status RemoveTemporaries() override;

  // Loses everything that is not durable (see above), as a power cut would.
  void SimulateCrash();
  // Flips every bit of the byte at `offset` of a committed blob, under its
  // stored checksum. NOT_FOUND / OUT_OF_RANGE when there is no such byte.
  absl::Status CorruptForTesting(const Digest& digest, uint64_t offset);
  // Partial blobs: those of live writers plus those a crash left behind.
  size_t TemporaryCount() const;
  // Total bytes of those partial blobs.
  uint64_t TemporaryBytes() const;

  struct State;  // shared with writers and readers

 private:
  std::shared_ptr<State> state_;
};

std::unique_ptr<MemoryBlobStore> NewMemoryBlobStore();

}  // namespace ckptd::storage::testing

#endif  // CKPTD_SERVER_STORAGE_TESTING_MEMORY_BLOB_STORE_H_
