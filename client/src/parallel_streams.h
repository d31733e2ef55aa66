// RunStreams: the parallel upload / read streams of one push or pull, each
// on its own thread, stopping together when one fails.
#ifndef CKPTD_CLIENT_SRC_PARALLEL_STREAMS_H_
#define CKPTD_CLIENT_SRC_PARALLEL_STREAMS_H_

#include <atomic>
#include <functional>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace ckptd::internal {

// Runs `run(i)` for i in [0, n) on n threads and joins them. The first
// failure sets `*stop` (streams poll it and wind down with CANCELLED).
// Returns the first real failure, not the cancellations it caused; OK when
// every stream succeeded.
inline absl::Status RunStreams(int n,
                               const std::function<absl::Status(int)>& run,
                               std::atomic<bool>* stop) {
  std::vector<absl::Status> results(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      results[i] = run(i);
      if (!results[i].ok()) *stop = true;
    });
  }
  for (auto& t : threads) t.join();
  absl::Status first;
  for (const absl::Status& st : results) {
    if (st.ok()) continue;
    if (first.ok() || (first.code() == absl::StatusCode::kCancelled &&
                       st.code() != absl::StatusCode::kCancelled)) {
      first = st;
    }
  }
  return first;
}

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_PARALLEL_STREAMS_H_
