// Executor: a fixed pool of threads for blocking work (disk, fsync,
// RocksDB) so that gRPC reactions never block.
//
// Submit() queues a task; TrySubmit() refuses once `max_queue` tasks wait,
// which callers turn into RESOURCE_EXHAUSTED. Shutdown() runs what is queued,
// then joins. Thread-safe.
#ifndef CKPTD_SERVER_COMMON_EXECUTOR_H_
#define CKPTD_SERVER_COMMON_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd {

class Executor {
 public:
  Executor(int threads, size_t max_queue);
  ~Executor();  // Shutdown()
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Always queues (for continuations of calls already admitted).
  void Submit(std::function<void()> task);
  // Queues unless `max_queue` tasks already wait.
  bool TrySubmit(std::function<void()> task);
  void Shutdown();

 private:
  void Loop();

  const size_t max_queue_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ckptd

#endif  // CKPTD_SERVER_COMMON_EXECUTOR_H_
