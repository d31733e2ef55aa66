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
  }
  // Not under mu_: the tracker's mutex is never taken under it.
  stats.active_uploads = uploads_.active_count();
  stats.suspended_uploads = uploads_.suspended_count();
  // stats.scrub stays empty until the background scrub reports here.
  return stats;
}

}  // namespace ckptd::core
