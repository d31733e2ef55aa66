#include "server/service/health_listener.h"

#include <chrono>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

absl::Status ValidateHealthListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  const std::string port =
      colon == std::string::npos ? "" : listen.substr(colon + 1);
  int n = -1;
  if (colon == std::string::npos || colon == 0 || port.empty() ||
      port.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port, &n) || n > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--health_listen '", listen,
        "' is not HOST:PORT with a port in 0-65535 (e.g. 0.0.0.0:50052)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HealthListener>> HealthListener::Start(
    const std::string& listen) {
  if (absl::Status st = ValidateHealthListen(listen); !st.ok()) return st;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  // As for --listen: no second process may share the port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --health_listen '", listen,
                     "': address in use or invalid (it must differ from "
                     "--listen)"));
  }
  // The default service starts SERVING; set it anyway, it is the contract.
  server->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("health probes (grpc.health.v1 only, plaintext) on {} (port {})",
               listen, port);
  return std::unique_ptr<HealthListener>(
      new HealthListener(std::move(server), port));
}

HealthListener::HealthListener(std::unique_ptr<grpc::Server> server, int port)
    : port_(port), server_(std::move(server)) {}

HealthListener::~HealthListener() { Shutdown(); }

void HealthListener::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(serving);
  }
}

void HealthListener::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (server_ == nullptr) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

}  // namespace ckptd::service
