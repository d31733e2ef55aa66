// BlobCursor: walks a list of blob byte ranges in fixed-size chunks, reading
// through BlobStore readers (which verify stored checksums). Shared by the
// streaming read RPCs. Not thread-safe; one per call.
#ifndef CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_
#define CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/safetensors_export.h"
#include "server/storage/blob_store.h"

namespace ckptd::service {

class BlobCursor {
 public:
  // `length` 0 in a slice means "to the end of the blob".
  BlobCursor(storage::BlobStore* blobs, std::vector<core::BlobSlice> slices,
             uint64_t chunk_size);

  struct Chunk {
    size_t slice = 0;     // index into the slices
    uint64_t offset = 0;  // within the blob
  };
  // Fills `out` with the next chunk (at most chunk_size bytes) and returns
  // where it came from; nullopt when every slice is done. Empty slices yield
  // no chunk.
  absl::StatusOr<std::optional<Chunk>> Next(std::string* out);

 private:
  storage::BlobStore* blobs_;
  std::vector<core::BlobSlice> slices_;
  uint64_t chunk_size_;
  size_t slice_ = 0;
  std::unique_ptr<storage::BlobReader> reader_;
  uint64_t offset_ = 0;
  uint64_t end_ = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_BLOB_CURSOR_H_
