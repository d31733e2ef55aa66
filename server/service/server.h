// Server: the ckptd gRPC server — the Checkpoint service, the standard
// health service and reflection — over a core::Repository.
//
// Shape: Start(Options) -> StatusOr<unique_ptr<Server>>, port(), Wait(),
// Shutdown(). Binding port 0 picks a free port (tests). Shutdown() marks
// health NOT_SERVING, refuses new pushes, gives in-flight calls `grace` to
// finish (then cancels them), drains blocking work, and closes RocksDB.
// Thread safety: Shutdown() may be called from any thread (once).
#ifndef CKPTD_SERVER_SERVICE_SERVER_H_
#define CKPTD_SERVER_SERVICE_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/repository.h"

namespace ckptd::service {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";
  std::string data_dir = "./ckptd-data";
  // Threads for disk and RocksDB work.
  int io_threads = 16;
  // Requests queued for those threads before new ones get RESOURCE_EXHAUSTED.
  size_t max_queued_requests = 4096;
  // How often expired pending versions are aborted.
  absl::Duration maintenance_interval = absl::Seconds(10);
  core::RepositoryOptions repository;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;
  // Blocks until Shutdown() has completed.
  void Wait();
  void Shutdown(absl::Duration grace);

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_SERVER_H_
