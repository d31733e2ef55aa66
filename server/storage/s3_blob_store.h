// The BlobStore of an S3 bucket (Ceph radosgw, MinIO, AWS S3), selected by
// `ckptd --blob_store s3://BUCKET/PREFIX`. Layout and protocol are in
// s3_blob_store.cc.
#ifndef CKPTD_SERVER_STORAGE_S3_BLOB_STORE_H_
#define CKPTD_SERVER_STORAGE_S3_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/storage/blob_store.h"
#include "server/storage/s3_client.h"

namespace ckptd::storage {

// The smallest part S3 accepts (but the last); gateways may be configured
// lower (the tests' radosgw is), so the store only requires kMinS3PartSize.
inline constexpr uint64_t kS3RequiredPartSize = 5 << 20;
inline constexpr uint64_t kMinS3PartSize = 64 << 10;
inline constexpr uint64_t kMaxS3PartSize = uint64_t{5} << 30;

struct S3BlobStoreOptions {
  S3Options s3;
  // Keys start with PREFIX/ (no leading or trailing '/'); empty: the bucket's
  // root.
  std::string prefix;
  // Blobs larger than this go up as multipart uploads of parts this size,
  // each sent while the next one fills.
  uint64_t part_size = 8 << 20;
  // Threads that send parts for every writer of the store.
  int upload_threads = 4;
  // A read replica's view (ckptd --replica_of): NewWriter and Delete fail
  // with FAILED_PRECONDITION, RemoveTemporaries leaves the uploads in
  // progress (they are the writer's) alone.
  bool read_only = false;
};

// Parses "s3://BUCKET[/PREFIX]" into bucket and prefix (a trailing '/' is
// dropped); INVALID_ARGUMENT naming the value and the form otherwise. The
// prefix is '/'-separated segments of [A-Za-z0-9._-], none "." or "..".
absl::Status ParseS3Location(absl::string_view location, std::string& bucket,
                             std::string& prefix);

// Opens the store: checks the options and that the bucket answers (keys,
// endpoint, bucket name), so that a misconfiguration fails at start.
absl::StatusOr<std::unique_ptr<BlobStore>> OpenS3BlobStore(
    S3BlobStoreOptions options);

// For tests: the key under which blob `digest` is stored.
std::string S3BlobKey(absl::string_view prefix, const Digest& digest);
// For tests: writers of `store` (an S3 store) that hold bytes not yet in a
// multipart upload.
size_t S3BufferedWriterCount(BlobStore& store);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_S3_BLOB_STORE_H_
