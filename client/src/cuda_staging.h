// CUDA staging for the client: device tensors travel through pinned,
// double-buffered host buffers on the client's own CUDA stream, so that the
// copy of one piece overlaps the hashing / network work on the previous one.
//
// Built without CKPTD_WITH_CUDA, every entry point answers
// FAILED_PRECONDITION "ckptd was built without CUDA". Built with it but run
// where no device is visible, they answer FAILED_PRECONDITION "no CUDA
// device ..." and the process prints one note to stderr (once).
//
// The runtime API is called from plain C++ (no kernels).
//
// Thread safety: the free functions are thread-safe. A CudaStager belongs to
// one thread at a time (each upload / read stream owns its own).
#ifndef CKPTD_CLIENT_SRC_CUDA_STAGING_H_
#define CKPTD_CLIENT_SRC_CUDA_STAGING_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ckptd/client.h"

namespace ckptd::internal {

// True when this build has CUDA and at least one device is visible.
bool CudaDevicePresent();

// OK for host memory; for kCuda memory, OK only when the build has CUDA, a
// device is present and `memory.device` names one of them.
absl::Status CheckMemoryUsable(const Memory& memory);

// Synchronous copy of `n` bytes from device memory into pageable host memory
// (small tensors that go into packs).
absl::Status CopyDeviceToHost(const Memory& memory, void* dst, const void* src,
                              size_t n);

// Synchronous copy of `n` bytes from host memory into device memory.
absl::Status CopyHostToDevice(const Memory& memory, void* dst, const void* src,
                              size_t n);

class CudaStager {
 public:
  // Two pinned buffers of `buffer_bytes` each and a non-blocking stream on
  // `device`.
  static absl::StatusOr<std::unique_ptr<CudaStager>> Create(
      int device, size_t buffer_bytes);
  ~CudaStager();
  CudaStager(const CudaStager&) = delete;
  CudaStager& operator=(const CudaStager&) = delete;

  int device() const { return device_; }
  size_t buffer_bytes() const { return buffer_bytes_; }

  // Device -> host: copies [src, src + length) piece by piece (at most
  // buffer_bytes() each) and calls `consume` with each piece in order, while
  // the next piece is already being copied.
  absl::Status ReadDevice(
      const void* src, uint64_t length,
      const std::function<absl::Status(const char*, size_t)>& consume);

  // Host -> device. NextHostBuffer() hands out a pinned buffer of
  // buffer_bytes() that is safe to fill (it waits for the copies queued from
  // it earlier); CopyToDevice() queues a copy out of that buffer.
  absl::StatusOr<char*> NextHostBuffer();
  // REQUIRES: `src` lies inside the buffer last returned by NextHostBuffer().
  absl::Status CopyToDevice(void* dst, const char* src, size_t n);
  // Waits for every queued copy.
  absl::Status Synchronize();

 private:
  CudaStager(int device, size_t buffer_bytes);

  int device_;
  size_t buffer_bytes_;
  void* stream_ = nullptr;      // cudaStream_t
  void* buffers_[2] = {};       // pinned host memory
  void* events_[2] = {};        // cudaEvent_t, one per buffer
  bool event_pending_[2] = {};  // a copy from/into buffers_[i] was queued
  int current_ = -1;            // buffer last handed out by NextHostBuffer
};

// The stagers of one thread, one per device, created on first use.
class CudaStagerCache {
 public:
  explicit CudaStagerCache(size_t buffer_bytes) : buffer_bytes_(buffer_bytes) {}
  absl::StatusOr<CudaStager*> Get(int device);
  // Waits for every queued copy of every stager.
  absl::Status SynchronizeAll();

 private:
  size_t buffer_bytes_;
  std::map<int, std::unique_ptr<CudaStager>> stagers_;
};

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_CUDA_STAGING_H_
