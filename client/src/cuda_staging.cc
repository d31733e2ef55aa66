#include "client/src/cuda_staging.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"

#if CKPTD_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ckptd::internal {
namespace {

#if CKPTD_WITH_CUDA

struct DeviceProbe {
  int count = 0;
  std::string reason;  // why there is no device, when count == 0
};

// cudaGetDeviceCount is asked once per process; with no device the note
// goes to stderr once (no logging library: the client has none).
const DeviceProbe& Probe() {
  static const DeviceProbe* probe = [] {
    auto* p = new DeviceProbe;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      p->reason = cudaGetErrorString(err);
      (void)cudaGetLastError();  // clear the sticky error
      count = 0;
    } else if (count == 0) {
      p->reason = "cudaGetDeviceCount found 0 devices";
    }
    p->count = count;
    if (count == 0) {
      std::fputs("ckptd: no CUDA device; host path only\n", stderr);
    }
    return p;
  }();
  return *probe;
}

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(
      absl::StrCat(what, " failed: ", cudaGetErrorString(err)));
}

#define CKPTD_CUDA_RETURN_IF_ERROR(expr)                    \
  do {                                                      \
    cudaError_t _err = (expr);                              \
    if (_err != cudaSuccess) return CudaError(_err, #expr); \
  } while (0)

cudaStream_t AsStream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t AsEvent(void* e) { return static_cast<cudaEvent_t>(e); }

#else

absl::Status BuiltWithoutCuda() {
  return absl::FailedPreconditionError(
      "ckptd was built without CUDA; move CUDA tensors to the host, or "
      "rebuild with -DCKPTD_WITH_CUDA=ON");
}

#endif

}  // namespace

bool CudaDevicePresent() {
#if CKPTD_WITH_CUDA
  return Probe().count > 0;
#else
  return false;
#endif
}

absl::Status CheckMemoryUsable(const Memory& memory) {
  if (memory.kind == MemoryKind::kHost) return absl::OkStatus();
#if CKPTD_WITH_CUDA
  const DeviceProbe& probe = Probe();
  if (probe.count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device is available (", probe.reason,
                     "); move CUDA tensors to the host first"));
  }
  if (memory.device < 0 || memory.device >= probe.count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", memory.device, " does not exist; ",
                     probe.count, " device(s) are visible"));
  }
  return absl::OkStatus();
#else
  return BuiltWithoutCuda();
#endif
}

absl::Status CopyDeviceToHost(const Memory& memory, void* dst, const void* src,
                              size_t n) {
  if (auto st = CheckMemoryUsable(memory); !st.ok()) return st;
#if CKPTD_WITH_CUDA
  if (n == 0) return absl::OkStatus();
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(memory.device));
  CKPTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
#else
  return BuiltWithoutCuda();
#endif
}

absl::Status CopyHostToDevice(const Memory& memory, void* dst, const void* src,
                              size_t n) {
  if (auto st = CheckMemoryUsable(memory); !st.ok()) return st;
#if CKPTD_WITH_CUDA
  if (n == 0) return absl::OkStatus();
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(memory.device));
  CKPTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
  return absl::OkStatus();
#else
  return BuiltWithoutCuda();
#endif
}

CudaStager::CudaStager(int device, size_t buffer_bytes)
    : device_(device), buffer_bytes_(buffer_bytes) {}

absl::StatusOr<std::unique_ptr<CudaStager>> CudaStager::Create(
    int device, size_t buffer_bytes) {
  Memory memory{MemoryKind::kCuda, device};
  if (auto st = CheckMemoryUsable(memory); !st.ok()) return st;
#if CKPTD_WITH_CUDA
  std::unique_ptr<CudaStager> s(
      new CudaStager(device, std::max<size_t>(buffer_bytes, 1)));
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  CKPTD_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  s->stream_ = stream;
  for (int i = 0; i < 2; ++i) {
    CKPTD_CUDA_RETURN_IF_ERROR(
        cudaHostAlloc(&s->buffers_[i], s->buffer_bytes_, cudaHostAllocDefault));
    cudaEvent_t event = nullptr;
    CKPTD_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    s->events_[i] = event;
  }
  return s;
#else
  return BuiltWithoutCuda();
#endif
}

CudaStager::~CudaStager() {
#if CKPTD_WITH_CUDA
  (void)cudaSetDevice(device_);
  if (stream_ != nullptr) (void)cudaStreamSynchronize(AsStream(stream_));
  for (int i = 0; i < 2; ++i) {
    if (events_[i] != nullptr) (void)cudaEventDestroy(AsEvent(events_[i]));
    if (buffers_[i] != nullptr) (void)cudaFreeHost(buffers_[i]);
  }
  if (stream_ != nullptr) (void)cudaStreamDestroy(AsStream(stream_));
#endif
}

absl::Status CudaStager::ReadDevice(
    const void* src, uint64_t length,
    const std::function<absl::Status(const char*, size_t)>& consume) {
#if CKPTD_WITH_CUDA
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  // Leave no copy of ours in flight into buffers another call reuses.
  if (absl::Status st = Synchronize(); !st.ok()) return st;
  if (length == 0) return absl::OkStatus();
  const char* base = static_cast<const char*>(src);
  const uint64_t pieces = (length + buffer_bytes_ - 1) / buffer_bytes_;
  auto piece_size = [&](uint64_t k) {
    return static_cast<size_t>(
        std::min<uint64_t>(buffer_bytes_, length - k * buffer_bytes_));
  };
  auto issue = [&](uint64_t k) -> absl::Status {
    const int b = static_cast<int>(k % 2);
    CKPTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(buffers_[b], base + k * buffer_bytes_, piece_size(k),
                        cudaMemcpyDeviceToHost, AsStream(stream_)));
    CKPTD_CUDA_RETURN_IF_ERROR(
        cudaEventRecord(AsEvent(events_[b]), AsStream(stream_)));
    return absl::OkStatus();
  };
  absl::Status st = issue(0);
  for (uint64_t k = 0; st.ok() && k < pieces; ++k) {
    // Buffer (k+1)%2 held piece k-1, which `consume` finished with.
    if (k + 1 < pieces) {
      st = issue(k + 1);
      if (!st.ok()) break;
    }
    const int b = static_cast<int>(k % 2);
    cudaError_t err = cudaEventSynchronize(AsEvent(events_[b]));
    if (err != cudaSuccess) {
      st = CudaError(err, "cudaEventSynchronize");
      break;
    }
    st = consume(static_cast<const char*>(buffers_[b]), piece_size(k));
  }
  absl::Status sync = Synchronize();
  return st.ok() ? sync : st;
#else
  return BuiltWithoutCuda();
#endif
}

absl::StatusOr<char*> CudaStager::NextHostBuffer() {
#if CKPTD_WITH_CUDA
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (current_ >= 0) {
    CKPTD_CUDA_RETURN_IF_ERROR(
        cudaEventRecord(AsEvent(events_[current_]), AsStream(stream_)));
    event_pending_[current_] = true;
  }
  const int next = current_ < 0 ? 0 : current_ ^ 1;
  if (event_pending_[next]) {
    CKPTD_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(AsEvent(events_[next])));
    event_pending_[next] = false;
  }
  current_ = next;
  return static_cast<char*>(buffers_[next]);
#else
  return BuiltWithoutCuda();
#endif
}

absl::Status CudaStager::CopyToDevice(void* dst, const char* src, size_t n) {
#if CKPTD_WITH_CUDA
  if (n == 0) return absl::OkStatus();
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  CKPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, AsStream(stream_)));
  return absl::OkStatus();
#else
  return BuiltWithoutCuda();
#endif
}

absl::Status CudaStager::Synchronize() {
#if CKPTD_WITH_CUDA
  CKPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  CKPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(AsStream(stream_)));
  event_pending_[0] = event_pending_[1] = false;
  current_ = -1;
  return absl::OkStatus();
#else
  return BuiltWithoutCuda();
#endif
}

absl::StatusOr<CudaStager*> CudaStagerCache::Get(int device) {
  auto it = stagers_.find(device);
  if (it != stagers_.end()) return it->second.get();
  absl::StatusOr<std::unique_ptr<CudaStager>> s =
      CudaStager::Create(device, buffer_bytes_);
  if (!s.ok()) return s.status();
  CudaStager* raw = s->get();
  stagers_.emplace(device, *std::move(s));
  return raw;
}

absl::Status CudaStagerCache::SynchronizeAll() {
  for (auto& [device, stager] : stagers_) {
    if (auto st = stager->Synchronize(); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace ckptd::internal
