#include "server/service/chunk_buffer_pool.h"

#include <utility>

namespace ckptd::service {

std::string ChunkBufferPool::Take() {
  absl::MutexLock lock(&mu_);
  ++in_use_;
  if (kept_.empty()) return std::string();
  std::string buffer = std::move(kept_.back());
  kept_.pop_back();
  return buffer;
}

void ChunkBufferPool::Give(std::string buffer) {
  buffer.clear();  // keeps the capacity
  const bool keepable = buffer.capacity() >= kMinKeptCapacity &&
                        buffer.capacity() <= kMaxKeptCapacity;
  {
    absl::MutexLock lock(&mu_);
    if (in_use_ > 0) --in_use_;
    if (keepable && kept_.size() + in_use_ < max_buffers_) {
      kept_.push_back(std::move(buffer));
      return;
    }
  }
  // Not kept: `buffer` is freed here, outside the lock.
}

size_t ChunkBufferPool::kept() const {
  absl::MutexLock lock(&mu_);
  return kept_.size();
}

size_t ChunkBufferPool::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

}  // namespace ckptd::service
