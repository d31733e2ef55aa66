// UploadTracker: the blobs being received right now and the interrupted
// uploads kept for resume.
//
// An UploadBlobs stream that breaks inside a blob suspends it: its writer
// (bytes synced up to the durable offset) is kept here so that a new stream
// may continue at that offset (QueryUpload reports it). Uploads are keyed
// by (run, version, digest): only the pending version that received the
// bytes may see its offset or resume it, so neither reveals that another
// tenant is uploading the same bytes (DESIGN invariant 8). At most
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
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"

namespace ckptd::core {

// One blob of one pending version.
struct UploadKey {
  std::string run;
  uint64_t version = 0;
  Digest digest;

  friend bool operator==(const UploadKey& a, const UploadKey& b) {
    return a.version == b.version && a.digest == b.digest && a.run == b.run;
  }
  template <typename H>
  friend H AbslHashValue(H h, const UploadKey& k) {
    return H::combine(std::move(h), k.run, k.version, k.digest);
  }
};

class UploadTracker {
 public:
  explicit UploadTracker(size_t max_suspended)
      : max_suspended_(max_suspended) {}

  // A stream starts receiving `key` from byte 0.
  void BeginFresh(const UploadKey& key);
  // A stream resumes `key` at `offset`: hands over the suspended writer.
  // FAILED_PRECONDITION with reason RESUME_POINT_LOST when this version has
  // no suspended upload of that blob, of that size, at that offset.
  absl::StatusOr<std::unique_ptr<storage::BlobWriter>> Resume(
      const UploadKey& key, uint64_t blob_size, uint64_t offset);
  // The stream receiving `key` ended (finished, failed or suspended).
  void End(const UploadKey& key);
  // Keeps `writer` (synced to `durable` bytes) for a later resume.
  void Suspend(const UploadKey& key, uint64_t blob_size, uint64_t durable,
               std::unique_ptr<storage::BlobWriter> writer, absl::Time at);
  // Forgets the suspended upload of `key` (it completed on another stream).
  void Drop(const UploadKey& key);
  // Waits up to `timeout` until no stream is receiving `key`.
  void AwaitIdle(const UploadKey& key, absl::Duration timeout);
  // The durable offset of a suspended upload of `key`; 0 if none.
  uint64_t DurableOffset(const UploadKey& key);
  // Drops the suspended uploads of a version that ended (committed or
  // aborted); returns how many.
  int DropVersion(const std::string& run, uint64_t version);
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
  absl::flat_hash_map<UploadKey, Suspended> suspended_ ABSL_GUARDED_BY(mu_);
  // Streams receiving each blob right now.
  absl::flat_hash_map<UploadKey, int> active_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_UPLOAD_TRACKER_H_
