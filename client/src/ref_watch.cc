#include "client/src/ref_watch.h"

#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace ckptd::internal {
namespace {

class StreamingRefWatch final : public RefWatch {
 public:
  StreamingRefWatch(Connection& connection, const std::string& run,
                    const std::string& ref) {
    v1::WatchRefRequest request;
    request.set_run(run);
    request.set_ref(ref);
    connection.Prepare(&ctx_, /*unary_deadline=*/false);
    reader_ = connection.NextStub()->WatchRef(&ctx_, request);
    thread_ = std::thread([this] { ReadAll(); });
  }

  ~StreamingRefWatch() override {
    Cancel();
    thread_.join();
  }

  absl::StatusOr<WatchResult> Next(absl::Duration timeout,
                                   VersionInfo* version) override {
    absl::MutexLock lock(&mu_);
    const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !queue_.empty() || finished_ || cancelled_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (cancelled_) return WatchResult::kEnded;
    if (!queue_.empty()) {
      *version = std::move(queue_.front());
      queue_.pop_front();
      return WatchResult::kMoved;
    }
    if (!finished_) return WatchResult::kTimedOut;
    if (!final_status_.ok()) return final_status_;
    return WatchResult::kEnded;
  }

  void Cancel() override {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return;
      cancelled_ = true;
    }
    ctx_.TryCancel();
  }

 private:
  void ReadAll() {
    v1::WatchRefEvent event;
    while (reader_->Read(&event)) {
      absl::MutexLock lock(&mu_);
      queue_.push_back(std::move(*event.mutable_version()));
    }
    absl::Status st = FromGrpcStatus(reader_->Finish());
    absl::MutexLock lock(&mu_);
    finished_ = true;
    final_status_ = std::move(st);
  }

  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::WatchRefEvent>> reader_;
  absl::Mutex mu_;
  std::deque<VersionInfo> queue_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: starts after everything it uses exists
};

}  // namespace

std::unique_ptr<RefWatch> StartRefWatch(Connection& connection,
                                        const std::string& run,
                                        const std::string& ref) {
  return std::make_unique<StreamingRefWatch>(connection, run, ref);
}

}  // namespace ckptd::internal
