#include "client/src/tensor_read.h"

#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "client/src/byte_stream.h"
#include "client/src/chunk_wire.h"
#include "client/src/cuda_staging.h"
#include "client/src/parallel_streams.h"
#include "client/src/progress.h"
#include "client/src/push_plan.h"
#include "proto/base/digest.h"

namespace ckptd::internal {
namespace {

// Destinations in one blob closer than this are read as one range (the gap
// bytes are read and dropped: cheaper than another range).
constexpr uint64_t kMaxRangeGap = 1 << 20;
// Long ranges are split into pieces of this size range so every stream
// gets a share of a single large tensor.
constexpr uint64_t kMinRangePiece = 4 << 20;
constexpr uint64_t kMaxRangePiece = 64 << 20;
// Chunk size asked of the server, and the scratch / staging buffer size.
constexpr uint32_t kReadChunkBytes = 4 << 20;
constexpr size_t kScratchBytes = 4 << 20;

// Linux 5.14's MADV_POPULATE_WRITE, which older headers lack.
#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;
#endif

// Backs the whole pages of [p, p + n) with memory in one call, ahead of the
// copy that fills them: a tensor fresh from the allocator otherwise takes a
// page fault per 4 KiB as the copy reaches it, which on a VM costs more
// than the copy. Best effort: an older kernel (EINVAL) or memory that
// cannot be populated this way is left to fault as before.
void PopulateForWrite(char* p, size_t n) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo =
      (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (hi > lo) {
    ::madvise(reinterpret_cast<void*>(lo), hi - lo, kMadvPopulateWrite);
  }
}

// Where bytes [offset, offset + length) of a blob go.
struct Target {
  uint64_t offset;
  uint64_t length;
  char* data;
  Memory memory;
  uint64_t end() const { return offset + length; }
};

struct ReadRange {
  const std::string* digest;
  uint64_t offset;
  uint64_t length;
  std::vector<Target> targets;    // sorted by offset
  std::vector<uint64_t> max_end;  // max_end[k]: max end of targets[0..k]
  size_t cursor = 0;              // targets before it end before `received`
  uint64_t received = 0;          // bytes from `offset` already delivered
};

class ReadStream {
 public:
  ReadStream(Connection& connection, int index, const VersionInfo& info,
             const PullOptions& options, ProgressReporter* progress,
             std::atomic<bool>* stop)
      : connection_(connection),
        index_(index),
        info_(info),
        options_(options),
        progress_(progress),
        stop_(stop),
        stagers_(kScratchBytes),
        hash_(XXH3_createState()) {}
  ~ReadStream() { XXH3_freeState(hash_); }

  void Add(ReadRange* range) { ranges_.push_back(range); }

  absl::Status Run() {
    Backoff backoff;
    for (int attempt = 1;; ++attempt) {
      absl::Status st = Attempt();
      if (st.ok()) return st;
      if (stop_->load()) {
        return absl::CancelledError("another read stream failed");
      }
      if (stalled_ || !IsRetryableStreamError(st)) return st;
      if (attempt >= options_.max_attempts) return GaveUp(st, attempt);
      backoff.Wait(connection_.channel(index_).get());
    }
  }

 private:
  // One ReadBlobs call for what is still missing of every range.
  absl::Status Attempt() {
    v1::ReadBlobsRequest req;
    req.set_run(info_.run());
    req.set_version(info_.version());
    req.set_chunk_size(kReadChunkBytes);
    std::vector<ReadRange*> sent;
    for (ReadRange* r : ranges_) {
      if (r->received == r->length) continue;
      v1::BlobRange* br = req.add_ranges();
      br->set_digest(*r->digest);
      br->set_offset(r->offset + r->received);
      br->set_length(r->length - r->received);
      sent.push_back(r);
    }
    if (sent.empty()) return absl::OkStatus();

    grpc::ClientContext ctx;
    connection_.Prepare(&ctx, /*unary_deadline=*/false);
    // Watches the start of the call too: it waits for the connection.
    StallWatchdog watchdog(&ctx, connection_.stall_timeout(), [this] {
      return connection_.ServerAnswers(index_, info_.run());
    });
    ByteStream stream(connection_.channel(index_), kReadBlobsMethod, &ctx);
    grpc::ByteBuffer buffer;
    absl::Status local;
    const bool requested = stream.WriteLast(SerializeToByteBuffer(req));
    while (requested && stream.Read(&buffer)) {
      watchdog.Progress();
      local = HandleChunk(&buffer, sent);
      if (!local.ok() || stop_->load()) {
        ctx.TryCancel();
        break;
      }
    }
    absl::Status st = FromGrpcStatus(stream.Finish());
    // Queued device copies must land before this returns, whatever happened.
    absl::Status sync = stagers_.SynchronizeAll();
    if (!local.ok()) return local;
    if (stop_->load())
      return absl::CancelledError("another read stream failed");
    if (!st.ok() && watchdog.fired()) {
      stalled_ = true;
      return watchdog.StalledError("ReadBlobs stream");
    }
    if (!st.ok()) return st;
    if (!sync.ok()) return sync;
    for (const ReadRange* r : sent) {
      if (r->received != r->length) {
        return absl::DataLossError(absl::StrCat(
            "ReadBlobs ended early: blob ", absl::BytesToHexString(*r->digest),
            " range at ", r->offset, " got ", r->received, " of ", r->length,
            " bytes"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status HandleChunk(grpc::ByteBuffer* buffer,
                           const std::vector<ReadRange*>& sent) {
    ReadChunkDecoder chunk(buffer);
    if (absl::Status st = chunk.Parse(); !st.ok()) return st;
    if (chunk.range_index() >= sent.size()) {
      return absl::InternalError(absl::StrCat(
          "ReadChunk names range ", chunk.range_index(), " of ", sent.size()));
    }
    ReadRange& r = *sent[chunk.range_index()];
    const uint64_t expected = r.offset + r.received;
    const uint64_t n = chunk.data_length();
    if (chunk.offset() != expected || n > r.length - r.received) {
      return absl::InternalError(absl::StrCat(
          "ReadChunk of blob ", absl::BytesToHexString(*r.digest), " carries [",
          chunk.offset(), ", ", chunk.offset() + n, "); expected bytes from ",
          expected, " up to ", r.offset + r.length, " in order"));
    }
    if (n == 0) return absl::OkStatus();
    if (absl::Status st = chunk.BeginData(); !st.ok()) return st;
    if (absl::Status st = CopyOut(r, chunk, expected, n); !st.ok()) return st;
    r.received += n;
    progress_->Add(static_cast<int64_t>(n));
    return absl::OkStatus();
  }

  // Copies the chunk's bytes [c0, c0 + n) of r's blob into the targets that
  // overlap them and verifies the chunk checksum.
  absl::Status CopyOut(ReadRange& r, ReadChunkDecoder& chunk, uint64_t c0,
                       uint64_t n) {
    const uint64_t c1 = c0 + n;
    while (r.cursor < r.targets.size() && r.max_end[r.cursor] <= c0) {
      ++r.cursor;
    }
    overlap_.clear();
    bool any_cuda = false;
    for (size_t k = r.cursor; k < r.targets.size() && r.targets[k].offset < c1;
         ++k) {
      const Target& t = r.targets[k];
      if (t.end() <= c0) continue;
      overlap_.push_back(&t);
      any_cuda |= t.memory.kind == MemoryKind::kCuda;
    }
    uint64_t sum = 0;
    if (overlap_.size() == 1 && !any_cuda && overlap_[0]->offset <= c0 &&
        overlap_[0]->end() >= c1) {
      // The common case for large tensors: straight into the destination.
      char* dst = overlap_[0]->data + (c0 - overlap_[0]->offset);
      PopulateForWrite(dst, n);
      if (absl::Status st = chunk.ReadData(dst, n); !st.ok()) return st;
      sum = ChunkChecksum(dst, n);
    } else {
      CudaStager* stager = nullptr;
      if (any_cuda) {
        for (const Target* t : overlap_) {
          if (t->memory.kind != MemoryKind::kCuda) continue;
          absl::StatusOr<CudaStager*> s = stagers_.Get(t->memory.device);
          if (!s.ok()) return s.status();
          stager = *s;
          break;
        }
      }
      if (stager == nullptr && scratch_.size() < kScratchBytes) {
        scratch_.resize(kScratchBytes);
      }
      const uint64_t piece =
          stager != nullptr ? stager->buffer_bytes() : scratch_.size();
      XXH3_64bits_reset(hash_);
      for (uint64_t pos = c0; pos < c1;) {
        const size_t m = static_cast<size_t>(std::min(piece, c1 - pos));
        char* buf = scratch_.data();
        if (stager != nullptr) {
          absl::StatusOr<char*> b = stager->NextHostBuffer();
          if (!b.ok()) return b.status();
          buf = *b;
        }
        if (absl::Status st = chunk.ReadData(buf, m); !st.ok()) return st;
        XXH3_64bits_update(hash_, buf, m);
        for (const Target* t : overlap_) {
          const uint64_t lo = std::max(pos, t->offset);
          const uint64_t hi = std::min<uint64_t>(pos + m, t->end());
          if (lo >= hi) continue;
          const char* src = buf + (lo - pos);
          char* dst = t->data + (lo - t->offset);
          absl::Status st;
          if (t->memory.kind == MemoryKind::kHost) {
            std::memcpy(dst, src, hi - lo);
          } else if (t->memory.device == stager->device()) {
            st = stager->CopyToDevice(dst, src, hi - lo);
          } else {
            st = CopyHostToDevice(t->memory, dst, src, hi - lo);
          }
          if (!st.ok()) return st;
        }
        pos += m;
      }
      sum = XXH3_64bits_digest(hash_);
    }
    if (sum != chunk.checksum()) {
      return absl::DataLossError(absl::StrCat(
          "checksum mismatch in blob ", absl::BytesToHexString(*r.digest),
          " bytes [", c0, ", ", c1, ") of ", info_.run(), "@", info_.version(),
          ": the bytes were damaged on the server's disk or in transit; "
          "run Verify on the server"));
    }
    return absl::OkStatus();
  }

  Connection& connection_;
  const int index_;
  const VersionInfo& info_;
  const PullOptions& options_;
  ProgressReporter* progress_;
  std::atomic<bool>* stop_;
  CudaStagerCache stagers_;
  // ChunkChecksum of a chunk that arrives in pieces (proto/base/digest.h
  // has no streaming form of it).
  XXH3_state_t* hash_;
  std::vector<char> scratch_;
  std::vector<const Target*> overlap_;
  std::vector<ReadRange*> ranges_;
  bool stalled_ = false;  // a stall is reported, not retried
};

std::string DestinationName(size_t i, const TensorDestination& d) {
  return absl::StrCat("destination ", i, " (shard ", d.shard, ", entry ",
                      d.entry, ")");
}

// Appends to `out` the ranges covering `targets` (one blob), split into
// pieces of at most `piece` bytes.
void PlanBlobRanges(const std::string* digest, std::vector<Target> targets,
                    uint64_t piece, std::deque<ReadRange>* out) {
  std::stable_sort(
      targets.begin(), targets.end(),
      [](const Target& a, const Target& b) { return a.offset < b.offset; });
  auto emit = [&](size_t first, size_t last, uint64_t lo, uint64_t hi) {
    for (uint64_t start = lo; start < hi; start += piece) {
      const uint64_t end = std::min(hi, start + piece);
      ReadRange r;
      r.digest = digest;
      r.offset = start;
      r.length = end - start;
      uint64_t max_end = 0;
      for (size_t k = first; k < last; ++k) {
        const Target& t = targets[k];
        if (t.offset >= end || t.end() <= start) continue;
        r.targets.push_back(t);
        max_end = std::max(max_end, t.end());
        r.max_end.push_back(max_end);
      }
      out->push_back(std::move(r));
    }
  };
  size_t first = 0;
  uint64_t lo = targets[0].offset, hi = targets[0].end();
  for (size_t k = 1; k < targets.size(); ++k) {
    const Target& t = targets[k];
    if (t.offset > hi + kMaxRangeGap) {
      emit(first, k, lo, hi);
      first = k;
      lo = t.offset;
      hi = t.end();
    } else {
      hi = std::max(hi, t.end());
    }
  }
  emit(first, targets.size(), lo, hi);
}

}  // namespace

absl::Status ReadTensorBytes(Connection& connection,
                             const VersionManifest& version,
                             absl::Span<const TensorDestination> dests,
                             const PullOptions& options) {
  const VersionInfo& info = version.info;
  // Group the destinations by blob, in order of first use.
  std::vector<std::string> digests;
  std::vector<std::vector<Target>> groups;
  absl::flat_hash_map<std::string, size_t> group_of;
  uint64_t total = 0;
  for (size_t i = 0; i < dests.size(); ++i) {
    const TensorDestination& d = dests[i];
    if (d.shard >= version.shards.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          DestinationName(i, d), " names shard ", d.shard, " but ", info.run(),
          "@", info.version(), " has ", version.shards.size(),
          " shard manifest(s); fetch the version with include_manifest"));
    }
    const ShardManifest& shard = version.shards[d.shard];
    if (d.entry >= static_cast<size_t>(shard.entries_size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(DestinationName(i, d), " names entry ", d.entry,
                       " but the shard has ", shard.entries_size()));
    }
    const ManifestEntry& e = shard.entries(static_cast<int>(d.entry));
    const std::string key = KeyPathString(e);
    if (e.kind_case() != ManifestEntry::kTensor) {
      return absl::InvalidArgumentError(absl::StrCat(
          DestinationName(i, d), " names '", key, "', which is not a tensor"));
    }
    const v1::TensorInfo& t = e.tensor();
    if (t.byte_length() == 0) continue;
    if (d.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(DestinationName(i, d), " for tensor '", key, "' of ",
                       t.byte_length(), " bytes has no buffer"));
    }
    if (t.blob_digest().size() != 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", key, "' has a ", t.blob_digest().size(),
                       "-byte blob digest; expected 16 (XXH3-128)"));
    }
    if (absl::Status st = CheckMemoryUsable(d.memory); !st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat(st.message(), " (tensor '", key, "')"));
    }
    auto [it, inserted] = group_of.try_emplace(t.blob_digest(), groups.size());
    if (inserted) {
      digests.push_back(t.blob_digest());
      groups.emplace_back();
    }
    groups[it->second].push_back(Target{t.blob_offset(), t.byte_length(),
                                        static_cast<char*>(d.data), d.memory});
    total += t.byte_length();
  }
  if (!dests.empty() && info.run().empty()) {
    return absl::InvalidArgumentError(
        "the VersionManifest names no run; use one returned by GetVersion");
  }

  const int max_streams = std::max(1, options.streams);
  const uint64_t piece =
      std::clamp<uint64_t>((total + 2 * max_streams - 1) / (2 * max_streams),
                           kMinRangePiece, kMaxRangePiece);
  std::deque<ReadRange> ranges;
  for (size_t g = 0; g < groups.size(); ++g) {
    PlanBlobRanges(&digests[g], std::move(groups[g]), piece, &ranges);
  }
  uint64_t range_bytes = 0;
  for (const ReadRange& r : ranges) range_bytes += r.length;
  ProgressReporter progress(options.progress, range_bytes);
  if (ranges.empty()) {
    progress.Finish();
    return absl::OkStatus();
  }

  const int stream_count =
      static_cast<int>(std::min<size_t>(max_streams, ranges.size()));
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<ReadStream>> streams;
  for (int i = 0; i < stream_count; ++i) {
    streams.push_back(std::make_unique<ReadStream>(connection, i, info, options,
                                                   &progress, &stop));
  }
  // Largest first, each to the least loaded stream; each stream then reads
  // its ranges in plan order.
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ranges[a].length > ranges[b].length;
  });
  std::vector<uint64_t> load(stream_count, 0);
  std::vector<std::vector<size_t>> assigned(stream_count);
  for (size_t i : order) {
    const size_t s = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[s].push_back(i);
    load[s] += ranges[i].length;
  }
  for (int s = 0; s < stream_count; ++s) {
    std::sort(assigned[s].begin(), assigned[s].end());
    for (size_t i : assigned[s]) streams[s]->Add(&ranges[i]);
  }

  return RunStreams(
      stream_count, [&](int i) { return streams[i]->Run(); }, &stop);
}

}  // namespace ckptd::internal
