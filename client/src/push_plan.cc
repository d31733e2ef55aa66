#include "client/src/push_plan.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/src/cuda_staging.h"
#include "proto/base/digest.h"

namespace ckptd::internal {
namespace {

// Below this many bytes to hash, threads cost more than they save.
constexpr uint64_t kParallelHashMinBytes = 16 << 20;
constexpr unsigned kMaxHashThreads = 8;
// Pinned staging per hashing thread for CUDA tensors (two buffers).
constexpr size_t kHashStagingBytes = 8 << 20;
// Packs reserve at most this much up front.
constexpr uint64_t kMaxPackReserve = 16 << 20;

// The 16-byte wire form, which is what manifests and requests carry.
std::string WireDigest(const Digest& digest) {
  return std::string(digest.AsBytes());
}

std::string DTypeName(DType dtype) {
  if (v1::DType_IsValid(dtype)) return v1::DType_Name(dtype);
  return absl::StrCat(static_cast<int>(dtype));
}

uint64_t AlignUp(uint64_t n) {
  return (n + kPackAlignment - 1) / kPackAlignment * kPackAlignment;
}

absl::Status ValidateTensor(const PushEntry& e, const std::string& key) {
  const v1::TensorInfo& t = e.entry.tensor();
  const uint64_t elem = DTypeSize(t.dtype());
  if (elem == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", key, "' has unknown dtype ", DTypeName(t.dtype())));
  }
  uint64_t bytes = elem;
  for (int64_t d : t.shape()) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", key, "' has negative dimension ", d,
                       " in shape [", absl::StrJoin(t.shape(), ", "), "]"));
    }
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() /
                              static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", key, "' has a shape whose size overflows"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  if (bytes != e.tensor.byte_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", key, "' has byte_length ", e.tensor.byte_length,
        " but shape [", absl::StrJoin(t.shape(), ", "), "] x ",
        DTypeName(t.dtype()), " (", elem, " bytes) needs ", bytes));
  }
  if (bytes > 0 && e.tensor.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", key, "' has ", bytes, " bytes but no data"));
  }
  if (absl::Status st = CheckMemoryUsable(e.tensor.memory); !st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat(st.message(), " (tensor '", key, "')"));
  }
  return absl::OkStatus();
}

struct HashJob {
  const char* data;
  uint64_t size;
  Memory memory;
  std::string* digest;  // out
};

absl::Status HashOne(const HashJob& job, CudaStagerCache* stagers) {
  if (job.memory.kind == MemoryKind::kHost) {
    *job.digest = WireDigest(DigestOf(job.data, job.size));
    return absl::OkStatus();
  }
  absl::StatusOr<CudaStager*> stager = stagers->Get(job.memory.device);
  if (!stager.ok()) return stager.status();
  DigestBuilder digest;
  absl::Status st = (*stager)->ReadDevice(
      job.data, job.size, [&digest](const char* piece, size_t n) {
        digest.Update(piece, n);
        return absl::OkStatus();
      });
  if (st.ok()) *job.digest = WireDigest(digest.Finish());
  return st;
}

// Hashes every job, in parallel when there is enough to hash.
absl::Status RunHashJobs(const std::vector<HashJob>& jobs) {
  uint64_t total = 0;
  for (const HashJob& j : jobs) total += j.size;
  unsigned threads =
      std::min<unsigned>({std::max(1u, std::thread::hardware_concurrency()),
                          kMaxHashThreads, static_cast<unsigned>(jobs.size())});
  if (total < kParallelHashMinBytes) threads = 1;
  std::atomic<size_t> next{0};
  std::mutex mu;
  absl::Status first_error;
  auto work = [&] {
    CudaStagerCache stagers(kHashStagingBytes);
    for (size_t i = next++; i < jobs.size(); i = next++) {
      absl::Status st = HashOne(jobs[i], &stagers);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = st;
        next = jobs.size();
      }
    }
  };
  if (threads <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work);
    for (auto& t : pool) t.join();
  }
  return first_error;
}

// Where one tensor entry's bytes end up.
struct Placement {
  int entry = -1;
  bool packed = false;
  size_t index = 0;  // pack index, or large-tensor slot
  uint64_t offset = 0;
};

}  // namespace

std::string KeyPathString(const v1::ManifestEntry& entry) {
  return DottedKeyPath(entry.path());
}

absl::Status ValidatePushTensor(const PushEntry& entry) {
  return ValidateTensor(entry, KeyPathString(entry.entry));
}

absl::StatusOr<std::unique_ptr<PushPlan>> BuildPushPlan(
    const PushRequest& request, const PushOptions& options) {
  if (options.pack_size == 0) {
    return absl::InvalidArgumentError("PushOptions::pack_size must be > 0");
  }
  auto plan = std::make_unique<PushPlan>();

  // Pass 1: validate everything before touching any bytes.
  for (const PushEntry& e : request.entries) {
    if (e.entry.kind_case() != v1::ManifestEntry::kTensor) continue;
    if (absl::Status st = ValidateTensor(e, KeyPathString(e.entry)); !st.ok()) {
      return st;
    }
    plan->tensor_bytes += e.tensor.byte_length;
  }

  // Pass 2: pack small tensors in entry order; queue large ones for hashing.
  std::vector<Placement> placements;
  std::vector<std::string> large_digests;
  std::vector<HashJob> large_jobs;
  absl::flat_hash_map<std::string, std::pair<size_t, uint64_t>> packed_at;
  std::unique_ptr<std::string> current;
  std::string device_copy;
  auto finish_pack = [&] {
    if (current != nullptr) plan->packs.push_back(std::move(current));
  };
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const PushEntry& e = request.entries[i];
    if (e.entry.kind_case() != v1::ManifestEntry::kTensor) continue;
    Placement p;
    p.entry = static_cast<int>(i);
    const uint64_t len = e.tensor.byte_length;
    if (len >= options.pack_threshold) {
      p.index = large_jobs.size();
      large_jobs.push_back(HashJob{static_cast<const char*>(e.tensor.data), len,
                                   e.tensor.memory, nullptr});
      placements.push_back(p);
      continue;
    }
    p.packed = true;
    const char* bytes = static_cast<const char*>(e.tensor.data);
    if (e.tensor.memory.kind == MemoryKind::kCuda && len > 0) {
      device_copy.resize(len);
      if (absl::Status st =
              CopyDeviceToHost(e.tensor.memory, device_copy.data(), bytes, len);
          !st.ok()) {
        return st;
      }
      bytes = device_copy.data();
    }
    std::string digest = WireDigest(DigestOf(bytes, len));
    if (auto it = packed_at.find(digest); it != packed_at.end()) {
      std::tie(p.index, p.offset) = it->second;
      placements.push_back(p);
      continue;
    }
    if (current != nullptr && len > 0 &&
        AlignUp(current->size()) + len > options.pack_size) {
      finish_pack();
    }
    if (current == nullptr) {
      current = std::make_unique<std::string>();
      current->reserve(std::min(options.pack_size, kMaxPackReserve));
    }
    p.index = plan->packs.size();
    p.offset = len == 0 ? current->size() : AlignUp(current->size());
    current->resize(p.offset);  // zero padding
    current->append(bytes, len);
    packed_at.emplace(std::move(digest), std::make_pair(p.index, p.offset));
    placements.push_back(p);
  }
  finish_pack();

  // Pass 3: hash packs and large tensors.
  std::vector<std::string> pack_digests(plan->packs.size());
  large_digests.resize(large_jobs.size());
  std::vector<HashJob> jobs;
  for (size_t i = 0; i < plan->packs.size(); ++i) {
    jobs.push_back(HashJob{plan->packs[i]->data(), plan->packs[i]->size(),
                           Memory{}, &pack_digests[i]});
  }
  for (size_t i = 0; i < large_jobs.size(); ++i) {
    large_jobs[i].digest = &large_digests[i];
    jobs.push_back(large_jobs[i]);
  }
  if (absl::Status st = RunHashJobs(jobs); !st.ok()) return st;

  // Pass 4: the manifest and the unique blobs, in order of first use.
  absl::flat_hash_map<std::string, size_t> blob_index;
  auto use_blob = [&](const std::string& digest, uint64_t size,
                      const char* data, Memory memory) {
    if (blob_index.emplace(digest, plan->blobs.size()).second) {
      plan->blobs.push_back(PlannedBlob{digest, size, data, memory});
    }
  };
  auto placement = placements.begin();
  plan->manifest.set_rank(request.rank);
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const PushEntry& e = request.entries[i];
    v1::ManifestEntry* out = plan->manifest.add_entries();
    *out = e.entry;
    if (e.entry.kind_case() != v1::ManifestEntry::kTensor) continue;
    const Placement& p = *placement++;
    v1::TensorInfo* t = out->mutable_tensor();
    t->set_byte_length(e.tensor.byte_length);
    t->set_blob_offset(p.offset);
    if (p.packed) {
      const std::string& pack = *plan->packs[p.index];
      t->set_blob_digest(pack_digests[p.index]);
      use_blob(pack_digests[p.index], pack.size(), pack.data(), Memory{});
    } else {
      const HashJob& job = large_jobs[p.index];
      t->set_blob_digest(large_digests[p.index]);
      use_blob(large_digests[p.index], job.size, job.data, job.memory);
    }
  }
  return plan;
}

}  // namespace ckptd::internal
