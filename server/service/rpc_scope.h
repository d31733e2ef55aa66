// RpcScope: one Checkpoint call as the log and the metrics see it. Every
// handler makes one when the call arrives (CheckpointService::Unary for the
// unary calls, ScopedReactor for the streams); it
//  - takes the call's request id: the client's `x-request-id` metadata when
//    it is sane (1-64 characters of [A-Za-z0-9._:/-]), else a fresh one
//    (16 hex digits), and returns it to the client as `x-request-id` in
//    the initial metadata;
//  - learns what the call is about: the identity the access table found
//    (Authorize), the run and the ref or version of the request
//    (Describe), the bytes received and sent;
//  - at End(), just before the status is sent (once; the destructor ends a
//    scope not yet ended), writes the one log line of the call, "rpc" with
//    request_id, method, identity, peer, run, ref, bytes_in, bytes_out,
//    duration_ms, status and (on failure) error, and records the call in
//    the Metrics. Before, not after: a client that has its answer finds
//    the call in the log and in a scrape.
//
// Thread safety: the call's steps run one at a time (gRPC and the executor
// order them); the byte counts may be added from any thread. The context is
// used only until the call is finished: by the constructor and Authorize.
#ifndef CKPTD_SERVER_SERVICE_RPC_SCOPE_H_
#define CKPTD_SERVER_SERVICE_RPC_SCOPE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/service/access.h"
#include "server/service/metrics.h"

namespace ckptd::service {

// The metadata key of the request id, both ways.
inline constexpr char kRequestIdKey[] = "x-request-id";
inline constexpr size_t kMaxRequestIdLength = 64;

// True for a client request id ckptd adopts.
bool IsSaneRequestId(absl::string_view id);

class RpcScope {
 public:
  // `metrics` (not owned) may be null: the call is only logged.
  RpcScope(grpc::CallbackServerContext* ctx, Method method, Metrics* metrics);
  ~RpcScope();
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  const std::string& request_id() const { return request_id_; }
  Method method() const { return method_; }

  // The access table's answer for this call on `run` (access.h), with the
  // identity noted for the log. Only while the call is not finished.
  absl::StatusOr<Principal> Authorize(const AccessPolicy& access,
                                      absl::string_view run);

  // Notes the request's run and its ref (or version number) for the log.
  template <typename Request>
  void Describe(const Request& req) {
    if constexpr (requires { req.run(); }) SetRun(req.run());
    if constexpr (requires { req.ref(); }) {
      SetRef(req.ref());
    } else if constexpr (requires { req.version(); }) {
      if (req.version() != 0) SetRef(absl::StrCat(req.version()));
    }
  }

  void AddReceived(uint64_t bytes);
  void AddSent(uint64_t bytes);
  // The status the call finishes with (call before Finish).
  void SetStatus(const grpc::Status& status);
  // Logs the call and records it; later calls do nothing.
  void End();

 private:
  void SetRun(absl::string_view run);
  void SetRef(absl::string_view ref);

  grpc::CallbackServerContext* const ctx_;
  const Method method_;
  Metrics* const metrics_;
  const absl::Time start_;
  std::string request_id_;
  std::string peer_;
  std::string identity_;
  std::string run_;
  std::string ref_;
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  bool has_status_ = false;
  grpc::StatusCode code_ = grpc::StatusCode::UNKNOWN;
  std::string error_;
  std::atomic<bool> ended_{false};
};

// A streaming reactor (grpc::ServerReadReactor<...> or ServerWriteReactor
// <...>) whose call has an RpcScope, ended by the reactor's Finish().
template <typename Reactor>
class ScopedReactor : public Reactor {
 public:
  ScopedReactor(grpc::CallbackServerContext* ctx, Method method,
                Metrics* metrics)
      : scope_(ctx, method, metrics) {}

 protected:
  // Hides Reactor::Finish for the derived reactors, which call this one.
  void Finish(grpc::Status status) {
    scope_.SetStatus(status);
    scope_.End();
    Reactor::Finish(std::move(status));
  }
  RpcScope& scope() { return scope_; }

 private:
  RpcScope scope_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_RPC_SCOPE_H_
