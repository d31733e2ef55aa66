// Connection: the gRPC channels a Client holds to one server, and the
// per-call settings every RPC shares (bearer token, unary deadline), the
// grpc::Status -> absl::Status mapping and the retry backoff.
//
// Each channel gets distinct channel args and a local subchannel pool, so
// the channels are separate TCP connections and parallel streams do not
// share one HTTP/2 connection's flow-control window.
//
// Thread safety: all methods are safe for concurrent use.
#ifndef CKPTD_CLIENT_SRC_CONNECTION_H_
#define CKPTD_CLIENT_SRC_CONNECTION_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace ckptd::internal {

// Manifests of large states are big; chunks are up to 4 MiB plus framing.
inline constexpr int kMaxMessageBytes = 64 << 20;

// Retry backoff: 100 ms, doubling, capped at 2 s.
inline constexpr std::chrono::milliseconds kInitialBackoff{100};
inline constexpr std::chrono::milliseconds kMaxBackoff{2000};

// Same code, the server's message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Codes after which a stream is resumed / an idempotent call repeated.
bool IsRetryableStreamError(const absl::Status& status);

// `status` with "(gave up after N attempts)" added to its message.
absl::Status GaveUp(const absl::Status& status, int attempts);

// Retry backoff. Wait(channel) returns as soon as `channel` is connected
// again, so a retry after a server restart goes out the moment the server
// is back instead of failing fast on a channel still in TRANSIENT_FAILURE.
class Backoff {
 public:
  // Sleeps for the current delay (or, with a channel that is not ready,
  // until it connects, at most the delay), then doubles the delay (up to
  // kMaxBackoff).
  void Wait(grpc::Channel* channel = nullptr) {
    if (channel == nullptr ||
        channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY) {
      std::this_thread::sleep_for(delay_);
    } else {
      channel->WaitForConnected(std::chrono::system_clock::now() + delay_);
    }
    delay_ = std::min(delay_ * 2, kMaxBackoff);
  }

 private:
  std::chrono::milliseconds delay_ = kInitialBackoff;
};

// Cancels a streaming call that makes no progress for `timeout`: a server
// that stops reading or sending, or a network that silently drops packets,
// would otherwise block the stream forever (streams have no deadline: a
// large upload may take hours). Call Progress() after every message.
//
// A busy server holds streams back on purpose (its --max_inflight_bytes
// budget: a stream waits its turn without moving a byte). So when the
// timeout elapses, `answers` (if given) asks whether the server still
// answers a call on the same connection; if it does, the stream waits
// another timeout instead of being cancelled, up to kMaxStallExtensions
// times in a row.
class StallWatchdog {
 public:
  static constexpr int kMaxStallExtensions = 10;
  StallWatchdog(grpc::ClientContext* ctx, std::chrono::microseconds timeout,
                std::function<bool()> answers = nullptr);
  ~StallWatchdog();
  StallWatchdog(const StallWatchdog&) = delete;
  StallWatchdog& operator=(const StallWatchdog&) = delete;

  void Progress() { last_progress_.store(Now(), std::memory_order_relaxed); }
  // True once the call was cancelled for a stall.
  bool fired() const { return fired_.load(); }
  // DEADLINE_EXCEEDED naming `what` and the timeout.
  absl::Status StalledError(absl::string_view what) const;

 private:
  static int64_t Now() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void Watch();

  grpc::ClientContext* ctx_;
  const std::chrono::microseconds timeout_;
  const std::function<bool()> answers_;
  std::atomic<int64_t> last_progress_;
  std::atomic<bool> fired_{false};
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class Connection {
 public:
  static absl::StatusOr<std::unique_ptr<Connection>> Open(
      const ClientOptions& options);

  int channel_count() const { return static_cast<int>(channels_.size()); }
  const std::shared_ptr<grpc::Channel>& channel(int i) const {
    return channels_[i % channels_.size()];
  }
  v1::Checkpoint::Stub* stub(int i) const {
    return stubs_[i % stubs_.size()].get();
  }
  // Spreads unary calls over the channels.
  v1::Checkpoint::Stub* NextStub() {
    return stub(
        static_cast<int>(next_.fetch_add(1, std::memory_order_relaxed)));
  }

  // Adds the bearer token; with `unary_deadline`, sets the deadline of a
  // unary call.
  void Prepare(grpc::ClientContext* ctx, bool unary_deadline) const;
  // Whether the server answers a small call about `run` on channel
  // `index` within the unary deadline (any reply, errors included: only a
  // transport failure or the deadline say no). For StallWatchdog.
  bool ServerAnswers(int index, const std::string& run) const;
  // The longest a stream may go without progress (ClientOptions::
  // rpc_timeout_seconds).
  std::chrono::microseconds stall_timeout() const { return rpc_timeout_; }

  // Runs one unary RPC. Repeats it (with backoff) on UNAVAILABLE up to
  // `max_attempts` times: use more than 1 only for idempotent calls.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      grpc::Status (v1::Checkpoint::Stub::*method)(grpc::ClientContext*,
                                                   const Request&, Response*),
      const Request& request, int max_attempts = 1) {
    Backoff backoff;
    const int index =
        static_cast<int>(next_.fetch_add(1, std::memory_order_relaxed));
    for (int attempt = 1;; ++attempt) {
      grpc::ClientContext ctx;
      Prepare(&ctx, /*unary_deadline=*/true);
      Response response;
      absl::Status st =
          FromGrpcStatus((stub(index)->*method)(&ctx, request, &response));
      if (st.ok()) return response;
      if (st.code() != absl::StatusCode::kUnavailable) return st;
      if (attempt >= max_attempts) {
        return max_attempts > 1 ? GaveUp(st, attempt) : st;
      }
      backoff.Wait(channel(index).get());
    }
  }

 private:
  Connection(const ClientOptions& options,
             std::vector<std::shared_ptr<grpc::Channel>> channels);

  std::string authorization_;  // "Bearer <token>" or empty
  std::chrono::microseconds rpc_timeout_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::Checkpoint::Stub>> stubs_;
  std::atomic<uint64_t> next_{0};
};

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_CONNECTION_H_
