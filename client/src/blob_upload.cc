#include "client/src/blob_upload.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/src/byte_stream.h"
#include "client/src/chunk_wire.h"
#include "client/src/cuda_staging.h"
#include "client/src/parallel_streams.h"
#include "proto/base/digest.h"
#include "proto/base/error_reason.h"

namespace ckptd::internal {
namespace {

struct PendingBlob {
  const PlannedBlob* blob;
  uint64_t offset = 0;  // where the next attempt starts
  uint64_t sent = 0;    // end of what the current attempt handed to gRPC
};

// One upload stream's blobs, sent in order, resumed after failures.
class UploadStream {
 public:
  UploadStream(Connection& connection, int index, const std::string& run,
               uint64_t version, const PushOptions& options,
               ProgressReporter* progress, std::atomic<bool>* stop)
      : connection_(connection),
        index_(index),
        run_(run),
        version_(version),
        options_(options),
        progress_(progress),
        stop_(stop),
        stagers_(options.chunk_size) {}

  void Add(const PlannedBlob* blob) { queue_.push_back(PendingBlob{blob}); }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const auto& p : queue_) n += p.blob->size;
    return n;
  }
  void SortByPlanOrder() {
    std::sort(queue_.begin(), queue_.end(),
              [](const PendingBlob& a, const PendingBlob& b) {
                return a.blob < b.blob;
              });
  }

  absl::Status Run() {
    Backoff backoff;
    bool refresh = false;
    bool trust_durable = true;
    size_t refresh_upto = 0;
    for (int attempt = 1;; ++attempt) {
      absl::Status st;
      if (refresh) st = Refresh(refresh_upto, trust_durable);
      if (st.ok()) {
        refresh = false;
        trust_durable = true;
        if (queue_.empty()) return absl::OkStatus();
        size_t failed_at = queue_.size();
        st = Attempt(&failed_at);
        if (st.ok()) {
          queue_.clear();
          return absl::OkStatus();
        }
        refresh = true;
        refresh_upto = std::min(failed_at, queue_.size() - 1);
        if (ReasonOf(st) == v1::RESUME_POINT_LOST) {
          // The server no longer holds the partial upload we resumed:
          // start those blobs over.
          trust_durable = false;
          refresh_upto = queue_.size() - 1;
          if (attempt < options_.max_attempts && !stop_->load()) {
            backoff.Wait(connection_.channel(index_).get());
            continue;
          }
        }
      }
      if (stop_->load()) {
        return absl::CancelledError("another upload stream failed");
      }
      if (stalled_ || !IsRetryableUploadError(st)) return st;
      if (attempt >= options_.max_attempts) return GaveUp(st, attempt);
      backoff.Wait(connection_.channel(index_).get());
    }
  }

  // Stream errors, and DATA_LOSS: a chunk damaged in transit is resent.
  static bool IsRetryableUploadError(const absl::Status& st) {
    return IsRetryableStreamError(st) ||
           st.code() == absl::StatusCode::kDataLoss;
  }

 private:
  // One UploadBlobs call over every queued blob. On a failed write,
  // `*failed_at` is the index of the blob in flight.
  absl::Status Attempt(size_t* failed_at) {
    grpc::ClientContext ctx;
    connection_.Prepare(&ctx, /*unary_deadline=*/false);
    // Watches the start of the call too: it waits for the connection.
    StallWatchdog watchdog(&ctx, connection_.stall_timeout(), [this] {
      return connection_.ServerAnswers(index_, run_);
    });
    watchdog_ = &watchdog;
    ByteStream stream(connection_.channel(index_), kUploadBlobsMethod, &ctx);
    bool first_chunk = true;
    absl::Status local;
    for (size_t i = 0; i < queue_.size(); ++i) {
      if (!SendBlob(stream, queue_[i], &first_chunk, &local)) {
        *failed_at = i;
        break;
      }
    }
    const bool stopped = stop_->load();
    if (!local.ok() || stopped) {
      ctx.TryCancel();
    } else if (*failed_at == queue_.size()) {
      stream.WritesDone();
    }
    watchdog.Progress();  // the server's reply may take a final fsync
    // The UploadBlobsResponse (none when the call failed) tells the client
    // nothing the status does not.
    grpc::ByteBuffer response;
    stream.Read(&response);
    absl::Status st = FromGrpcStatus(stream.Finish());
    watchdog_ = nullptr;
    if (!local.ok()) return local;
    if (stopped) return absl::CancelledError("another upload stream failed");
    if (!st.ok() && watchdog.fired()) {
      stalled_ = true;
      return watchdog.StalledError("UploadBlobs stream");
    }
    return st;
  }

  // Sends `p` from p.offset. False when the stream broke (Finish() says
  // why), when the push is stopping, or with `*error` set for a local error.
  bool SendBlob(ByteStream& stream, PendingBlob& p, bool* first_chunk,
                absl::Status* error) {
    const PlannedBlob& b = *p.blob;
    uint64_t offset = p.offset;
    p.sent = p.offset;
    auto send = [&](const char* data, size_t n) -> bool {
      v1::UploadChunk header;
      if (*first_chunk) {
        header.set_run(run_);
        header.set_version(version_);
        *first_chunk = false;
      }
      header.set_digest(b.digest);
      if (offset == p.offset) header.set_blob_size(b.size);
      header.set_offset(offset);
      header.set_checksum(ChunkChecksum(data, n));
      if (!stream.Write(EncodeUploadChunk(header, data, n))) return false;
      watchdog_->Progress();
      offset += n;
      p.sent = offset;
      progress_->Add(static_cast<int64_t>(n));
      return !stop_->load();
    };
    if (b.size == 0 || offset >= b.size) return send(b.data, 0);
    if (b.memory.kind == MemoryKind::kHost) {
      while (offset < b.size) {
        const size_t n = static_cast<size_t>(
            std::min<uint64_t>(options_.chunk_size, b.size - offset));
        if (!send(b.data + offset, n)) return false;
      }
      return true;
    }
    absl::StatusOr<CudaStager*> stager = stagers_.Get(b.memory.device);
    if (!stager.ok()) {
      *error = stager.status();
      return false;
    }
    bool broken = false;
    absl::Status st = (*stager)->ReadDevice(
        b.data + offset, b.size - offset, [&](const char* piece, size_t n) {
          if (send(piece, n)) return absl::OkStatus();
          broken = true;
          return absl::CancelledError("stream broke");
        });
    if (broken) return false;
    if (!st.ok()) {
      *error = st;
      return false;
    }
    return true;
  }

  // Asks the server how far blobs [0, upto] got: complete ones leave the
  // queue, others continue at the durable offset (or 0 when
  // `trust_durable` is false).
  absl::Status Refresh(size_t upto, bool trust_durable) {
    std::vector<PendingBlob> kept;
    for (size_t j = 0; j < queue_.size(); ++j) {
      PendingBlob& p = queue_[j];
      if (j > upto) {
        kept.push_back(p);
        continue;
      }
      v1::QueryUploadRequest req;
      req.set_run(run_);
      req.set_version(version_);
      req.set_digest(p.blob->digest);
      absl::StatusOr<v1::QueryUploadResponse> r =
          connection_.Unary(&v1::Checkpoint::Stub::QueryUpload, req);
      if (!r.ok()) {
        // Keep the unqueried rest as it was; a later Refresh covers it.
        for (size_t k = j; k < queue_.size(); ++k) kept.push_back(queue_[k]);
        queue_ = std::move(kept);
        return r.status();
      }
      if (r->complete()) {
        progress_->Add(static_cast<int64_t>(p.blob->size) -
                       static_cast<int64_t>(p.sent));
        continue;
      }
      uint64_t durable = trust_durable ? r->durable_offset() : 0;
      if (durable > p.blob->size) durable = 0;
      progress_->Add(static_cast<int64_t>(durable) -
                     static_cast<int64_t>(p.sent));
      p.offset = p.sent = durable;
      kept.push_back(p);
    }
    queue_ = std::move(kept);
    return absl::OkStatus();
  }

  Connection& connection_;
  const int index_;
  const std::string& run_;
  const uint64_t version_;
  const PushOptions& options_;
  ProgressReporter* progress_;
  std::atomic<bool>* stop_;
  CudaStagerCache stagers_;
  std::vector<PendingBlob> queue_;
  StallWatchdog* watchdog_ = nullptr;  // of the attempt under way
  bool stalled_ = false;               // a stall is reported, not retried
};

}  // namespace

absl::Status UploadBlobs(Connection& connection, const std::string& run,
                         uint64_t version,
                         const std::vector<const PlannedBlob*>& blobs,
                         const PushOptions& options,
                         ProgressReporter* progress) {
  if (blobs.empty()) return absl::OkStatus();
  const int stream_count = static_cast<int>(
      std::min<size_t>(std::max(1, options.streams), blobs.size()));
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<UploadStream>> streams;
  for (int i = 0; i < stream_count; ++i) {
    streams.push_back(std::make_unique<UploadStream>(
        connection, i, run, version, options, progress, &stop));
  }
  // Largest first, each to the least loaded stream.
  std::vector<const PlannedBlob*> by_size = blobs;
  std::stable_sort(by_size.begin(), by_size.end(),
                   [](const PlannedBlob* a, const PlannedBlob* b) {
                     return a->size > b->size;
                   });
  std::vector<uint64_t> load(stream_count, 0);
  for (const PlannedBlob* b : by_size) {
    const size_t s = std::min_element(load.begin(), load.end()) - load.begin();
    streams[s]->Add(b);
    load[s] += b->size;
  }
  for (auto& s : streams) s->SortByPlanOrder();

  return RunStreams(
      stream_count, [&](int i) { return streams[i]->Run(); }, &stop);
}

}  // namespace ckptd::internal
