#include "server/service/rpc_scope.h"

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/common/structured_log.h"
#include "server/service/status_mapping.h"

namespace ckptd::service {
namespace {

// Run names, refs and error messages in a log line: at most this much.
constexpr size_t kMaxLoggedField = 200;
constexpr size_t kMaxLoggedError = 512;

std::string NewRequestId() {
  thread_local absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

std::string Truncated(absl::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  return absl::StrCat(s.substr(0, max), "...");
}

}  // namespace

bool IsSaneRequestId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdLength) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == ':' || c == '/' || c == '-';
    if (!ok) return false;
  }
  return true;
}

RpcScope::RpcScope(grpc::CallbackServerContext* ctx, Method method,
                   Metrics* metrics)
    : ctx_(ctx), method_(method), metrics_(metrics), start_(absl::Now()) {
  const auto& md = ctx->client_metadata();
  if (auto it = md.find(kRequestIdKey); it != md.end()) {
    const absl::string_view sent(it->second.data(), it->second.size());
    if (IsSaneRequestId(sent)) request_id_ = std::string(sent);
  }
  if (request_id_.empty()) request_id_ = NewRequestId();
  ctx->AddInitialMetadata(kRequestIdKey, request_id_);
  peer_ = ctx->peer();
}

RpcScope::~RpcScope() { End(); }

absl::StatusOr<Principal> RpcScope::Authorize(const AccessPolicy& access,
                                              absl::string_view run) {
  absl::StatusOr<Principal> caller = access.Authorize(*ctx_, method_, run);
  if (caller.ok()) identity_ = caller->identity;
  return caller;
}

void RpcScope::SetRun(absl::string_view run) {
  run_ = Truncated(run, kMaxLoggedField);
}

void RpcScope::SetRef(absl::string_view ref) {
  ref_ = Truncated(ref, kMaxLoggedField);
}

void RpcScope::AddReceived(uint64_t bytes) {
  bytes_in_.fetch_add(bytes, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->AddReceivedBytes(bytes);
}

void RpcScope::AddSent(uint64_t bytes) {
  bytes_out_.fetch_add(bytes, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->AddSentBytes(bytes);
}

void RpcScope::SetStatus(const grpc::Status& status) {
  if (has_status_) return;  // the first Finish is the one gRPC sends
  has_status_ = true;
  code_ = status.error_code();
  if (!status.ok()) error_ = Truncated(status.error_message(), kMaxLoggedError);
}

void RpcScope::End() {
  if (ended_.exchange(true)) return;
  const absl::Duration elapsed = absl::Now() - start_;
  if (!has_status_) error_ = "the call ended without a status";
  if (metrics_ != nullptr) metrics_->RecordRpc(method_, code_, elapsed);
  // A client ending a watch or a stream cancels it: not a warning.
  spdlog::level::level_enum level = spdlog::level::info;
  if (code_ == grpc::StatusCode::INTERNAL ||
      code_ == grpc::StatusCode::DATA_LOSS ||
      code_ == grpc::StatusCode::UNKNOWN) {
    level = spdlog::level::err;
  } else if (code_ != grpc::StatusCode::OK &&
             code_ != grpc::StatusCode::CANCELLED) {
    level = spdlog::level::warn;
  }
  if (!spdlog::default_logger_raw()->should_log(level)) return;
  const std::string code_name(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(code_)));
  LogEvent line("rpc");
  line.Str("request_id", request_id_)
      .Str("method", RuleFor(method_).name)
      .Str("identity", identity_)
      .Str("peer", peer_)
      .Str("run", run_)
      .Str("ref", ref_)
      .Uint("bytes_in", bytes_in_.load(std::memory_order_relaxed))
      .Uint("bytes_out", bytes_out_.load(std::memory_order_relaxed))
      .Fixed3("duration_ms", absl::ToDoubleMilliseconds(elapsed))
      .Str("status", code_name);
  if (code_ != grpc::StatusCode::OK) line.Str("error", error_);
  line.Log(level);
}

}  // namespace ckptd::service
