// Repository::Stats: the levels the metrics endpoint reads at scrape time.
#include "server/core/repository_stats.h"

#include "server/core/repository.h"

namespace ckptd::core {

RepositoryStats Repository::Stats() {
  RepositoryStats stats;
  {
    absl::ReaderMutexLock lock(&mu_);
    stats.pending_versions = leases_.size();
    stats.stored_blobs = index_.stored_count();
    stats.stored_bytes = index_.stored_bytes();
    stats.quarantined_blobs = index_.quarantined_count();
  }
  // Not under mu_: the tracker's mutex is never taken under it.
  stats.active_uploads = uploads_.active_count();
  stats.suspended_uploads = uploads_.suspended_count();
  if (options_.scrub_interval > absl::ZeroDuration()) {
    const ScrubStats scrub = GetScrubStats();  // takes scrub_mu_, then mu_
    ScrubCounters& c = stats.scrub.emplace();
    c.passes = scrub.passes_completed;
    c.blobs_checked = scrub.blobs_checked;
    c.bytes_checked = scrub.bytes_checked;
    c.blobs_corrupt = scrub.corrupt_found;
    c.blobs_missing = scrub.missing_found;
    c.last_pass_completed = scrub.last_pass_end == absl::InfinitePast()
                                ? 0
                                : absl::ToUnixSeconds(scrub.last_pass_end);
  }
  if (is_replica()) {
    const FollowState follow = GetFollowState();
    stats.record = RecordCounters{
        .replica = true,
        .seq = follow.applied_seq,
        .last_follow = follow.last_success == absl::InfinitePast()
                           ? 0
                           : absl::ToUnixSeconds(follow.last_success)};
  } else if (meta_->record_log() != nullptr) {
    stats.record = RecordCounters{.seq = meta_->recorded_seq()};
  }
  if (options_.cache.has_value()) {
    stats.cache = storage::CachedBlobStoreStats(*blobs_);
  }
  return stats;
}

}  // namespace ckptd::core
