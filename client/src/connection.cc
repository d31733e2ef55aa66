#include "client/src/connection.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "proto/base/error_reason.h"

namespace ckptd::internal {
namespace {

// A channel arg no other code reads: giving each channel a different value
// keeps gRPC from sharing one subchannel (one TCP connection) among them.
constexpr char kChannelIndexArg[] = "ckptd.client_channel_index";

// Keepalive ping interval (and ack timeout): half the RPC timeout, within
// these bounds.
constexpr int64_t kMinKeepaliveMs = 1000;
constexpr int64_t kMaxKeepaliveMs = 20000;

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numeric values; the
  // server's typed reason (if any) comes back as the same payload.
  return DecodeStatusDetails(
      absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                   status.error_message()),
      status.error_details());
}

bool IsRetryableStreamError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

absl::Status GaveUp(const absl::Status& status, int attempts) {
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), " (gave up after ",
                                   attempts, " attempts)"));
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const ClientOptions& options) {
  const std::string address =
      options.address.empty() ? DefaultServerAddress() : options.address;
  if (options.channels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::channels is ", options.channels,
                     "; it must be at least 1"));
  }
  if (!(options.rpc_timeout_seconds > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::rpc_timeout_seconds is ",
                     options.rpc_timeout_seconds, "; it must be positive"));
  }
  if (options.client_certificate.empty() != options.client_key.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key and the key its certificate: "
        "give both (client_certificate= and client_key=, or --tls_cert and "
        "--tls_key)");
  }
  const bool unix_socket = absl::StartsWith(address, "unix:");
  if (unix_socket && !options.client_certificate.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", address,
        "' is ckptd's local socket, which has no TLS: a client certificate "
        "does not identify you there; use a token, or a HOST:PORT address"));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (unix_socket || (options.root_certificates.empty() &&
                      options.client_certificate.empty())) {
    // The local socket is plaintext (the kernel carries the bytes); the
    // server's TLS settings apply to its TCP port only.
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.root_certificates;
    ssl.pem_cert_chain = options.client_certificate;
    ssl.pem_private_key = options.client_key;
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < options.channels; ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(kChannelIndexArg, i);
    // Reconnect on the same schedule as our retries, not gRPC's default
    // (1 s growing to 120 s): a restarted server is back within seconds.
    // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left alone: gRPC also uses it as
    // the connect timeout, and 100 ms cuts handshakes with a server that is
    // busy starting up ("tcp handshaker shutdown").
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                static_cast<int>(kInitialBackoff.count()));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                static_cast<int>(kMaxBackoff.count()));
    // Keepalive pings detect a silent connection (a black-holed path, a
    // peer whose socket stopped reading): the transport is closed and every
    // pending write fails, which cancelling a call cannot do for bytes
    // already handed to a stuck socket. The server allows these pings.
    const int keepalive_ms = static_cast<int>(std::clamp<int64_t>(
        static_cast<int64_t>(options.rpc_timeout_seconds * 500),
        kMinKeepaliveMs, kMaxKeepaliveMs));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_ms);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    auto channel = grpc::CreateCustomChannel(address, creds, args);
    if (channel == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot create a channel to '", address, "'"));
    }
    channels.push_back(std::move(channel));
  }
  return std::unique_ptr<Connection>(
      new Connection(options, std::move(channels)));
}

Connection::Connection(const ClientOptions& options,
                       std::vector<std::shared_ptr<grpc::Channel>> channels)
    : rpc_timeout_(static_cast<int64_t>(options.rpc_timeout_seconds * 1e6)),
      channels_(std::move(channels)) {
  if (!options.token.empty()) {
    authorization_ = absl::StrCat("Bearer ", options.token);
  }
  for (const auto& channel : channels_) {
    stubs_.push_back(v1::Checkpoint::NewStub(channel));
  }
}

StallWatchdog::StallWatchdog(grpc::ClientContext* ctx,
                             std::chrono::microseconds timeout,
                             std::function<bool()> answers)
    : ctx_(ctx),
      timeout_(timeout),
      answers_(std::move(answers)),
      last_progress_(Now()) {
  thread_ = std::thread([this] { Watch(); });
}

StallWatchdog::~StallWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  thread_.join();
}

void StallWatchdog::Watch() {
  // Checks a few times per timeout; a stall is noticed within 1.25x.
  const absl::Duration tick =
      std::min(absl::FromChrono(timeout_) / 4, absl::Seconds(1));
  int extensions = 0;
  int64_t extended_at = -1;  // the progress stamp the last extension set
  mu_.Lock();
  while (!mu_.AwaitWithTimeout(absl::Condition(&done_), tick)) {
    const int64_t last = last_progress_.load(std::memory_order_relaxed);
    if (Now() - last <= timeout_.count()) continue;
    if (last != extended_at) extensions = 0;  // it moved since
    bool alive = false;
    if (answers_ && extensions < kMaxStallExtensions) {
      // Not under mu_: the call may take a unary deadline.
      mu_.Unlock();
      alive = answers_();
      mu_.Lock();
      if (done_) break;
    }
    if (!alive) {
      fired_ = true;
      ctx_->TryCancel();
      break;
    }
    ++extensions;
    extended_at = Now();
    last_progress_.store(extended_at, std::memory_order_relaxed);
  }
  mu_.Unlock();
}

absl::Status StallWatchdog::StalledError(absl::string_view what) const {
  return absl::DeadlineExceededError(
      absl::StrCat(what, " made no progress for ",
                   absl::FormatDuration(absl::FromChrono(timeout_)),
                   " (the server or the network is stuck); cancelled"));
}

bool Connection::ServerAnswers(int index, const std::string& run) const {
  grpc::ClientContext ctx;
  Prepare(&ctx, /*unary_deadline=*/true);
  v1::GetVersionRequest req;
  req.set_run(run);
  req.set_ref("last");
  req.set_include_manifest(false);
  v1::GetVersionResponse resp;
  const grpc::Status st = stub(index)->GetVersion(&ctx, req, &resp);
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      return false;
    default:
      return true;  // also NOT_FOUND etc.: the server read and answered
  }
}

void Connection::Prepare(grpc::ClientContext* ctx, bool unary_deadline) const {
  if (!authorization_.empty()) {
    ctx->AddMetadata("authorization", authorization_);
  }
  if (unary_deadline) {
    ctx->set_deadline(std::chrono::system_clock::now() + rpc_timeout_);
  }
}

}  // namespace ckptd::internal
