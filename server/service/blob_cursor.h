// BlobCursor: walks a list of blob byte ranges in fixed-size chunks, reading
// through the ReadLease of the version (its readers verify stored checksums;
// a damaged blob is quarantined and reported as DATA_LOSS naming the tensor,
// without server paths). Before the first chunk it checks that no slice
// needs a blob already known to be damaged, so such a read fails before it
// sends anything. Shared by the streaming read RPCs. Not thread-safe; one
// per call.
#ifndef CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_
#define CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/repository.h"
#include "server/core/safetensors_export.h"
#include "server/storage/blob_store.h"

namespace ckptd::service {

class BlobCursor {
 public:
  // `length` 0 in a slice means "to the end of the blob".
  // REQUIRES: `lease` (which holds every slice's blob) outlives the cursor.
  BlobCursor(core::ReadLease* lease, std::vector<core::BlobSlice> slices,
             uint64_t chunk_size);

  struct Chunk {
    size_t slice = 0;     // index into the slices
    uint64_t offset = 0;  // within the blob
  };
  // DATA_LOSS (naming the tensor) if a slice needs a blob already known to
  // be damaged; reads nothing. Next() does it before its first chunk; call
  // it earlier to fail before sending anything else (a prologue).
  absl::Status CheckIntact();
  // Fills `out` with the next chunk (at most chunk_size bytes) and returns
  // where it came from; nullopt when every slice is done. Empty slices yield
  // no chunk.
  absl::StatusOr<std::optional<Chunk>> Next(std::string* out);

 private:
  core::ReadLease* lease_;
  std::vector<core::BlobSlice> slices_;
  bool checked_ = false;
  uint64_t chunk_size_;
  size_t slice_ = 0;
  std::unique_ptr<storage::BlobReader> reader_;
  uint64_t offset_ = 0;
  uint64_t end_ = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_
