// A local read cache in front of a remote BlobStore (S3): ckptd --cache_dir
// DIR --cache_bytes N. Layout and protocol are in cached_blob_store.cc.
#ifndef CKPTD_SERVER_STORAGE_CACHED_BLOB_STORE_H_
#define CKPTD_SERVER_STORAGE_CACHED_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage {

struct BlobCacheOptions {
  // A directory of its own (created if needed), on a local disk.
  std::string dir;
  // Bytes of cached blobs kept, at most; the least recently read go first.
  // A blob larger than this is read from the remote store, never cached.
  uint64_t max_bytes = 0;
};

// What the cache did since it was opened, and what it holds.
struct BlobCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;  // blobs fetched whole into the cache
  uint64_t evictions = 0;
  uint64_t fallbacks = 0;    // cached copies found damaged, read remotely
  uint64_t passthrough = 0;  // opened while another reader filled the blob
  uint64_t blobs = 0;
  uint64_t bytes = 0;
};

// Wraps `remote`: every call goes to it, except Open, which serves the blob
// from a whole verified copy under options.dir, fetched on the first read.
// INVALID_ARGUMENT naming the option when dir is empty or max_bytes is 0;
// FAILED_PRECONDITION when another process uses the dir.
absl::StatusOr<std::unique_ptr<BlobStore>> OpenCachedBlobStore(
    std::shared_ptr<BlobStore> remote, BlobCacheOptions options);

// For tests and metrics; zeros for a store that is not a cache.
BlobCacheStats CachedBlobStoreStats(BlobStore& store);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_CACHED_BLOB_STORE_H_
