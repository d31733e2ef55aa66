// ProgressReporter: forwards (bytes done, bytes total) to a user callback
// from many transfer threads, one call at a time.
//
// Thread safety: Add() may be called from any thread.
#ifndef CKPTD_CLIENT_SRC_PROGRESS_H_
#define CKPTD_CLIENT_SRC_PROGRESS_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::internal {

class ProgressReporter {
 public:
  ProgressReporter(std::function<void(uint64_t, uint64_t)> callback,
                   uint64_t total)
      : callback_(std::move(callback)), total_(total) {}

  // `delta` may be negative (bytes a resumed transfer moves again).
  void Add(int64_t delta) {
    if (!callback_) return;
    absl::MutexLock lock(&mu_);
    done_ = std::max<int64_t>(0, done_ + delta);
    callback_(std::min<uint64_t>(done_, total_), total_);
  }

  // Reports completion (also when nothing had to move).
  void Finish() {
    if (!callback_) return;
    absl::MutexLock lock(&mu_);
    done_ = static_cast<int64_t>(total_);
    callback_(total_, total_);
  }

 private:
  const std::function<void(uint64_t, uint64_t)> callback_;
  const uint64_t total_;
  absl::Mutex mu_;
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_PROGRESS_H_
