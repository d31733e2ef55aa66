#include "server/service/server.h"

#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/base/status.h"
#include "server/common/executor.h"
#include "server/service/checkpoint_service.h"
#include "server/service/reflection_v1_service.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

// Manifests of large states (100k+ entries) exceed gRPC's 4 MiB default.
constexpr int kMaxMessageBytes = 256 << 20;

}  // namespace

struct Server::Impl {
  ServerOptions options;
  std::unique_ptr<core::Repository> repo;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<CheckpointService> service;
  ReflectionV1Service reflection_v1{ReflectionV1Service::CkptdServices()};
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;
  absl::Notification shutdown_started;
  absl::Notification shutdown_done;
  std::thread maintenance;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (!impl_->shutdown_started.HasBeenNotified())
    Shutdown(absl::ZeroDuration());
  impl_->shutdown_done.WaitForNotification();
}

absl::Status ValidateListenAddress(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535 ||
      listen.substr(colon + 1).find_first_not_of("0123456789") !=
          absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen '", listen,
                     "' is not HOST:PORT with a port in 0-65535 (e.g. "
                     "127.0.0.1:50051; port 0 picks a free one)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  CKPTD_RETURN_IF_ERROR(ValidateListenAddress(options.listen));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  CKPTD_ASSIGN_OR_RETURN(impl->repo, core::Repository::OpenDataDir(
                                         options.data_dir, options.repository));
  impl->executor = std::make_unique<Executor>(options.io_threads,
                                              options.max_queued_requests);
  impl->service = std::make_unique<CheckpointService>(impl->repo.get(),
                                                      impl->executor.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &impl->port);
  builder.RegisterService(impl->service.get());
  builder.RegisterService(&impl->reflection_v1);
  // gRPC sets SO_REUSEPORT by default: a second ckptd could then share a
  // port in use, splitting clients between two data dirs.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients ping (keepalive) to notice stuck connections: allow it at any
  // rate while calls run, and ping back so dead clients' streams end.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen,
                     "': address in use or invalid (expected HOST:PORT, e.g. "
                     "127.0.0.1:50051)"));
  }
  impl->grpc_server->GetHealthCheckService()->SetServingStatus(true);
  Impl* raw = impl.get();
  impl->maintenance = std::thread([raw] {
    while (!raw->shutdown_started.WaitForNotificationWithTimeout(
        raw->options.maintenance_interval)) {
      auto aborted = raw->repo->AbortExpiredPending();
      if (!aborted.ok()) {
        spdlog::warn("pending-timeout sweep: {}", aborted.status().ToString());
      }
      if (int n = raw->repo->ExpireSuspendedUploads(); n > 0) {
        spdlog::info(
            "dropped {} interrupted uploads older than {}", n,
            absl::FormatDuration(raw->options.repository.pending_timeout));
      }
    }
  });
  spdlog::info("ckptd listening on {} (port {}), data dir {}", options.listen,
               impl->port, options.data_dir);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

void Server::Wait() { impl_->shutdown_done.WaitForNotification(); }

void Server::Shutdown(absl::Duration grace) {
  if (impl_->shutdown_started.HasBeenNotified()) return;
  impl_->shutdown_started.Notify();
  spdlog::info("shutting down: NOT_SERVING, refusing new pushes, {} grace",
               absl::FormatDuration(grace));
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  impl_->service->SetDraining(true);
  impl_->grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  impl_->executor->Shutdown();
  if (impl_->maintenance.joinable()) impl_->maintenance.join();
  impl_->grpc_server.reset();
  impl_->repo.reset();  // closes RocksDB cleanly
  spdlog::info("shutdown complete");
  impl_->shutdown_done.Notify();
}

}  // namespace ckptd::service
