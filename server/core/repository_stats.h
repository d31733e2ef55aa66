// RepositoryStats: a snapshot of what the Repository holds right now, in
// plain numbers, for the service layer to export (Prometheus gauges read at
// scrape time, server/service/metrics.h). Core knows nothing of Prometheus.
//
// Events (a version published) reach the service through
// RepositoryOptions::on_publish instead; these are the levels.
#ifndef CKPTD_SERVER_CORE_REPOSITORY_STATS_H_
#define CKPTD_SERVER_CORE_REPOSITORY_STATS_H_

#include <cstdint>
#include <optional>

#include "server/storage/cached_blob_store.h"

namespace ckptd::core {

// Results of the background scrub (re-reading stored blobs against their
// checksums on a schedule, RepositoryOptions::scrub_interval).
struct ScrubCounters {
  uint64_t passes = 0;         // full passes over the store completed
  uint64_t blobs_checked = 0;  // blobs read and verified
  uint64_t bytes_checked = 0;
  uint64_t blobs_corrupt = 0;  // a checksum did not match (DATA_LOSS)
  uint64_t blobs_missing = 0;  // referenced but not in the store
  // Unix seconds when the last pass completed; 0: none yet.
  int64_t last_pass_completed = 0;
};

// The bucket's record (storage/record_log.h): on a writer with an S3 store,
// the last seq it wrote; on a read replica, the last it applied and when it
// last reached the bucket.
struct RecordCounters {
  bool replica = false;
  uint64_t seq = 0;
  // Replicas: unix seconds of the last follow that reached the bucket; 0:
  // none yet.
  int64_t last_follow = 0;
};

struct RepositoryStats {
  // Versions begun and not yet committed or aborted.
  uint64_t pending_versions = 0;
  // Blobs an UploadBlobs stream is receiving right now.
  uint64_t active_uploads = 0;
  // Interrupted uploads kept for resume (QueryUpload).
  uint64_t suspended_uploads = 0;
  // Blobs in the store, and their bytes (tensor bytes, no trailers).
  uint64_t stored_blobs = 0;
  uint64_t stored_bytes = 0;
  // Blobs quarantined now (found corrupt by a read, Verify or the scrub,
  // not yet healed); counted in stored_blobs too (their files stay
  // until healed or collected).
  uint64_t quarantined_blobs = 0;
  // Empty when the scrub is off (scrub_interval 0).
  std::optional<ScrubCounters> scrub;
  // Empty without a record (the file store).
  std::optional<RecordCounters> record;
  // Empty without a read cache (--cache_dir).
  std::optional<storage::BlobCacheStats> cache;
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_REPOSITORY_STATS_H_
