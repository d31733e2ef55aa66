// ChunkBufferPool: blob chunk buffers reused across streaming calls, so that
// receiving (UploadBlobs) and sending (ReadBlobs, exports) a chunk writes
// into memory that is already resident. A fresh 4 MiB buffer per chunk is a
// fresh mapping (server.cc sets the mmap threshold below a chunk), and
// faulting its pages in took 19-23% of the server's time in a profile of a
// 1 GiB push (tests/bench/README.md).
//
// Bounded by the in-flight budget (inflight_budget.h): a buffer is taken
// only while its call holds a budget slot, so at most max_buffers (the
// slots that fit in --max_inflight_bytes) are in use at once, and the pool
// keeps a returned buffer only while buffers in use plus buffers kept stay
// within max_buffers. What the pool holds is therefore part of the budget
// it already accounts for, never memory beside it.
//
// Thread safety: safe for concurrent use.
#ifndef CKPTD_SERVER_SERVICE_CHUNK_BUFFER_POOL_H_
#define CKPTD_SERVER_SERVICE_CHUNK_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::service {

class ChunkBufferPool {
 public:
  // Buffers outside these capacities are never kept: smaller ones (a
  // small chunk, a header) would have to grow for the next chunk anyway,
  // larger ones are more than a chunk and its framing.
  static constexpr size_t kMinKeptCapacity = 1 << 20;
  static constexpr size_t kMaxKeptCapacity = (4 << 20) + (64 << 10);

  explicit ChunkBufferPool(size_t max_buffers) : max_buffers_(max_buffers) {}
  ChunkBufferPool(const ChunkBufferPool&) = delete;
  ChunkBufferPool& operator=(const ChunkBufferPool&) = delete;

  // An empty string, with the capacity of a buffer used before if the pool
  // has one. Give it back with Give().
  std::string Take();
  // Returns a buffer taken with Take(): kept for the next Take() if within
  // the bound, freed otherwise.
  void Give(std::string buffer);

  size_t max_buffers() const { return max_buffers_; }
  // Buffers kept now / handed out now, for tests and metrics.
  size_t kept() const;
  size_t in_use() const;

 private:
  const size_t max_buffers_;
  mutable absl::Mutex mu_;
  std::vector<std::string> kept_ ABSL_GUARDED_BY(mu_);
  size_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_CHUNK_BUFFER_POOL_H_
