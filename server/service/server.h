// Server: the ckptd gRPC server — the Checkpoint service, the standard
// health service and reflection — over a core::Repository, optionally over
// TLS, with authentication (auth.h) and authorization (access.h).
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
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/core/repository.h"
#include "server/service/disk_watermark.h"

namespace ckptd::service {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";
  // TLS: PEM files of the server's certificate chain and key (both or
  // neither). With tls_client_ca, clients must present a certificate signed
  // by that CA (mTLS); its subject CN can be a credential in the auth file.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // The credential table (auth.h). Empty: no authentication, and the server
  // refuses to listen on a non-loopback address unless insecure_no_auth.
  std::string auth_file;
  bool insecure_no_auth = false;
  // The read-only web view (web_view.h) on HOST:PORT; empty: off. Same
  // identities as the gRPC port; loopback only (plain HTTP).
  std::string http_listen;
  std::string data_dir = "./ckptd-data";
  // Threads for disk and RocksDB work.
  int io_threads = 16;
  // Largest message received or sent (manifests of 100k+ entries exceed
  // gRPC's 4 MiB default).
  int max_message_bytes = 256 << 20;
  // Requests queued for those threads before new ones get RESOURCE_EXHAUSTED.
  size_t max_queued_requests = 4096;
  // How often expired pending versions are aborted.
  absl::Duration maintenance_interval = absl::Seconds(10);
  // Resources (README: Operations, Memory and disk). Blob bytes held in memory
  // at once, server-wide (inflight_budget.h; at least kMinInflightBytes), and
  // the free space of data_dir under which pushes are refused
  // (disk_watermark.h).
  uint64_t max_inflight_bytes = 256 << 20;
  MinFreeDisk min_free_disk = {.bytes = 256 << 20};
  // Prometheus metrics over HTTP (metrics.h) on IPV4:PORT; empty: none.
  // Loopback only unless auth_file or insecure_no_auth, as for `listen`.
  std::string metrics_listen;
  // The co-located Unix socket (local_socket.h), serving the same services
  // as `listen`; empty: off. A path too long for sun_path is refused, unless
  // local_socket_is_default: then the server warns and serves TCP only.
  // Why: the default (<data_dir>/ckptd.sock) is derived, not asked for, and
  // a ckptd whose data dir sits deep in the tree must still start as it did
  // before the socket existed; a path someone typed is one they asked for.
  std::string local_socket;
  bool local_socket_is_default = false;
  // Bytes of co-located saves staged at once (local_data_plane.h).
  uint64_t max_staged_bytes = uint64_t{4} << 30;
  core::RepositoryOptions repository;
};

// True for HOST:PORT whose host is 127.0.0.0/8, ::1 or localhost.
bool IsLoopbackListenAddress(absl::string_view listen);

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;
  // The port the metrics endpoint bound; 0 without metrics_listen.
  int metrics_port() const;
  // The web view's port; 0 when http_listen is empty.
  int http_port() const;
  // The Unix socket served on; empty when there is none.
  std::string local_socket_path() const;
  // Blocks until Shutdown() has completed.
  void Wait();
  void Shutdown(absl::Duration grace);
  // Re-reads --auth_file (SIGHUP). On error the old table stays in force and
  // the error names the file, line and reason. OK without an auth file.
  absl::Status ReloadAuth();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_SERVER_H_
