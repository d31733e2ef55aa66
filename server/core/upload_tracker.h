// UploadTracker: the blobs being received right now and the interrupted
// uploads kept for resume.
//
// An UploadBlobs stream that breaks inside a blob suspends it: its writer
// (bytes synced up to the durable offset) is kept here so that a new stream
// may continue at that offset (QueryUpload reports it). At most
// `max_suspended` are kept (the oldest goes first); ExpireOlderThan drops
// stale ones. Suspended writers live only in this process: after a restart
// their temp files are removed and the client starts those blobs over.
//
// Thread safety: all methods are safe to call concurrently; one internal
// mutex, never held while calling out. Callers must not hold the
// Repository's mutex when calling in (it is a leaf lock either way).
#ifndef CKPTD_SERVER_CORE_UPLOAD_TRACKER_H_
#define CKPTD_SERVER_CORE_UPLOAD_TRACKER_H_

#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"

namespace ckptd::core {

class UploadTracker {
 public:
  explicit UploadTracker(size_t max_suspended)
      : max_suspended_(max_suspended) {}

  // A stream starts receiving `digest` from byte 0.
  void BeginFresh(const Digest& digest);
  // A stream resumes `digest` at `offset`: hands over the suspended writer.
  // FAILED_PRECONDITION with reason RESUME_POINT_LOST when there is no
  // suspended upload of that size at that offset.
  absl::StatusOr<std::unique_ptr<storage::BlobWriter>> Resume(
      const Digest& digest, uint64_t blob_size, uint64_t offset);
  // The stream receiving `digest` ended (finished, failed or suspended).
  void End(const Digest& digest);
  // Keeps `writer` (synced to `durable` bytes) for a later resume.
  void Suspend(const Digest& digest, uint64_t blob_size, uint64_t durable,
               std::unique_ptr<storage::BlobWriter> writer, absl::Time at);
  // Forgets the suspended upload of `digest` (it completed elsewhere).
  void Drop(const Digest& digest);
  // Waits up to `timeout` until no stream is receiving `digest`.
  void AwaitIdle(const Digest& digest, absl::Duration timeout);
  // The durable offset of a suspended upload of `digest`; 0 if none.
  uint64_t DurableOffset(const Digest& digest);
  // Drops suspended uploads older than `cutoff`; returns how many.
  int ExpireOlderThan(absl::Time cutoff);
  // Drops every suspended upload (their temp files go with the writers).
  void Clear();
  // Digests being received right now, and suspended uploads (for metrics).
  size_t active_count();
  size_t suspended_count();

 private:
  struct Suspended {
    std::unique_ptr<storage::BlobWriter> writer;
    uint64_t blob_size = 0;
    uint64_t durable = 0;
    absl::Time at;
  };

  const size_t max_suspended_;
  absl::Mutex mu_;
  absl::flat_hash_map<Digest, Suspended> suspended_ ABSL_GUARDED_BY(mu_);
  // Streams receiving each digest right now.
  absl::flat_hash_map<Digest, int> active_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_UPLOAD_TRACKER_H_
