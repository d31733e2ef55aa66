// HealthListener: grpc.health.v1 alone, in plaintext and without
// credentials, on an address of its own (ckptd --health_listen), for probes
// that cannot do TLS or send a token — Kubernetes' gRPC probes, a container
// HEALTHCHECK running `ckpt health`. It serves nothing else (no Checkpoint
// service, no reflection), so opening it exposes no data.
//
// It answers for the server as a whole (service ""): main.cc starts it once
// the Server serves (SERVING), marks it NOT_SERVING when shutdown begins,
// and stops it after the Server has stopped, so a probe sees what the main
// port's health service reports.
//
// Thread safety: SetServing() and Shutdown() may be called from any thread.
#ifndef CKPTD_SERVER_SERVICE_HEALTH_LISTENER_H_
#define CKPTD_SERVER_SERVICE_HEALTH_LISTENER_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server.h"

namespace ckptd::service {

class HealthListener {
 public:
  // Listens on `listen` (HOST:PORT; port 0 picks a free one) and reports
  // SERVING. Errors name --health_listen and the address.
  static absl::StatusOr<std::unique_ptr<HealthListener>> Start(
      const std::string& listen);
  ~HealthListener();
  HealthListener(const HealthListener&) = delete;
  HealthListener& operator=(const HealthListener&) = delete;

  int port() const { return port_; }
  void SetServing(bool serving);
  // Stops at once (open Watch streams end); idempotent.
  void Shutdown();

 private:
  HealthListener(std::unique_ptr<grpc::Server> server, int port);

  const int port_;
  absl::Mutex mu_;
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_HEALTH_LISTENER_H_
