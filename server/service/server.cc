#include "server/service/server.h"

#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "proto/base/status.h"
#include "server/common/executor.h"
#include "server/service/access.h"
#include "server/service/auth.h"
#include "server/service/checkpoint_service.h"
#include "server/service/disk_watermark.h"
#include "server/service/inflight_budget.h"
#include "server/service/local_data_plane.h"
#include "server/service/local_socket.h"
#include "server/service/metrics.h"
#include "server/service/parse_error_interceptor.h"
#include "server/service/reflection_v1_service.h"
#include "server/service/status_mapping.h"
#include "server/service/web_view.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

// HTTP/2 window of each stream beyond the message it is reading: what a
// stream waiting for the in-flight budget may still buffer.
constexpr int kStreamWindowBytes = 64 << 10;
// glibc's allocator, set for buffers of blob bytes (4 MiB chunks, gRPC's
// 1 MiB slices, 8 MiB S3 parts), which are allocated and freed all the time
// by many threads. Below this size they come from the heap and are reused;
// a fresh mapping per buffer instead costs a page fault per 4 KiB, which
// on this kind of VM made ckptd spend 0.8 cores on faults to move 90 MB/s
// to or from radosgw (0.15-0.4 cores with reuse). 32 MiB is the largest
// value glibc takes.
constexpr int kMmapThresholdBytes = 32 << 20;
// Free memory at the top of a heap beyond this goes back to the OS at once;
// the rest is returned by the maintenance thread's malloc_trim once no
// bytes are in flight. The in-flight budget bounds what is in use; freed
// buffers kept for reuse add to the peak (inflight_memory_test: 64
// concurrent 32 MiB pushes peak at 407-431 MiB, 361 MiB with a mapping per
// buffer).
constexpr int kTrimThresholdBytes = 64 << 20;

absl::StatusOr<std::string> ReadPemFile(absl::string_view flag,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " ", path, ": cannot read: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string pem = text.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " ", path, " is not a PEM file (no -----BEGIN line)"));
  }
  return pem;
}

// Where clients reach this ckptd: --listen with the bound port, and this
// host's name for a wildcard host (0.0.0.0, [::]).
std::string AdvertisedAddress(absl::string_view listen, int port) {
  absl::string_view host = listen.substr(0, listen.rfind(':'));
  std::string name(host);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") {
    char buf[256] = {};
    name = ::gethostname(buf, sizeof(buf) - 1) == 0 ? buf : "localhost";
  }
  return absl::StrCat(name, ":", port);
}

}  // namespace

bool IsLoopbackListenAddress(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  absl::string_view host =
      colon == absl::string_view::npos ? listen : listen.substr(0, colon);
  if (absl::ConsumePrefix(&host, "[")) absl::ConsumeSuffix(&host, "]");
  if (host == "localhost" || host == "::1") return true;
  // 127.0.0.0/8, written as a dotted quad.
  if (!absl::ConsumePrefix(&host, "127.")) return false;
  int dots = 0;
  for (char c : host) {
    if (c == '.') {
      ++dots;
    } else if (c < '0' || c > '9') {
      return false;
    }
  }
  return dots == 2;
}

struct Server::Impl {
  ServerOptions options;
  // Before repo: the repository reports publishes to it.
  std::unique_ptr<Metrics> metrics = std::make_unique<Metrics>();
  std::unique_ptr<core::Repository> repo;
  std::unique_ptr<Executor> executor;
  std::shared_ptr<Authenticator> authenticator;  // null without --auth_file
  std::unique_ptr<AccessPolicy> access;
  std::unique_ptr<InflightBudget> budget;
  std::unique_ptr<DiskWatermark> watermark;
  std::unique_ptr<CheckpointService> service;
  ReflectionV1Service reflection_v1{ReflectionV1Service::CkptdServices()};
  std::unique_ptr<grpc::Server> grpc_server;
  LocalSocketFile local_socket;  // path() empty without one
  // Beside local_socket; null without one.
  std::unique_ptr<LocalDataPlane> data_plane;
  std::unique_ptr<WebView> web;  // null without http_listen
  int port = 0;
  absl::Notification shutdown_started;
  absl::Notification shutdown_done;
  std::thread maintenance;
  // Last: destroyed first, as it reads the repository and the authenticator.
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
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
  if (!options.local_socket.empty()) {
    if (absl::Status st = CheckLocalSocketPath(options.local_socket);
        !st.ok()) {
      if (!options.local_socket_is_default) return st;
      spdlog::warn(
          "serving TCP only: the default {} (set it with --local_socket PATH, "
          "or turn it off with --local_socket=)",
          std::string(st.message()));
      options.local_socket.clear();
    }
  }
  if (!options.local_socket.empty()) {
    // The data plane's socket sits beside it and must fit sun_path too.
    const std::string data = LocalDataSocketPath(options.local_socket);
    if (!CheckLocalSocketPath(data).ok()) {
      if (!options.local_socket_is_default) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--local_socket ", options.local_socket, " leaves no room for its ",
            "data socket ", data, " (", data.size(), " bytes; at most ",
            kMaxLocalSocketPathBytes, "): choose a path at least 5 bytes ",
            "shorter"));
      }
      spdlog::warn(
          "serving TCP only: the default --local_socket {} leaves no room "
          "for its data socket (at most {} bytes); set a shorter "
          "--local_socket PATH",
          options.local_socket, kMaxLocalSocketPathBytes);
      options.local_socket.clear();
    }
  }
  if (options.max_staged_bytes == 0) {
    return absl::InvalidArgumentError(
        "--max_staged_bytes must be positive (bytes of co-located saves "
        "staged at once)");
  }
  if (options.max_inflight_bytes < kMinInflightBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_inflight_bytes=", options.max_inflight_bytes,
                     " is below the minimum ", kMinInflightBytes,
                     " (two streams, each holding a 4 MiB chunk twice)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;

  // Transport and identity, checked before anything is opened.
  const bool loopback = IsLoopbackListenAddress(options.listen);
  const bool tls = !options.tls_cert.empty() || !options.tls_key.empty();
  if (tls && (options.tls_cert.empty() || options.tls_key.empty())) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls_cert and --tls_key (PEM files)");
  }
  if (!options.tls_client_ca.empty() && !tls) {
    return absl::InvalidArgumentError(
        "--tls_client_ca (mTLS) needs TLS: give --tls_cert and --tls_key too");
  }
  if (!options.auth_file.empty()) {
    CKPTD_ASSIGN_OR_RETURN(AuthTable table, AuthTable::Load(options.auth_file));
    impl->authenticator =
        std::make_shared<Authenticator>(options.auth_file, std::move(table));
    if (!tls && !loopback) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen '", options.listen, "'",
          " is not a loopback address: bearer tokens would cross the "
          "network in clear text; give --tls_cert and --tls_key"));
    }
  } else if (!loopback && !options.insecure_no_auth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen '", options.listen,
        "' is not a loopback address and there is no --auth_file: anyone who "
        "reaches the port could read and delete every checkpoint. Give "
        "--auth_file (see README, Security), or --insecure_no_auth to serve "
        "without authentication anyway"));
  }
  WebViewOptions web_options{options.http_listen, !options.auth_file.empty(),
                             options.insecure_no_auth};
  if (!options.http_listen.empty()) {
    CKPTD_RETURN_IF_ERROR(CheckWebViewOptions(web_options));
  }
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    CKPTD_ASSIGN_OR_RETURN(pair.cert_chain,
                           ReadPemFile("tls_cert", options.tls_cert));
    CKPTD_ASSIGN_OR_RETURN(pair.private_key,
                           ReadPemFile("tls_key", options.tls_key));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    if (!options.tls_client_ca.empty()) {
      CKPTD_ASSIGN_OR_RETURN(
          ssl.pem_root_certs,
          ReadPemFile("tls_client_ca", options.tls_client_ca));
      ssl.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  } else if (impl->authenticator != nullptr) {
    // Plaintext on loopback. Local credentials are wire-compatible with a
    // plaintext client and, unlike insecure ones, run the auth processor.
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  if (impl->authenticator != nullptr) {
    creds->SetAuthMetadataProcessor(impl->authenticator);
  }
  spdlog::info(
      "security: {}, {}{}", tls ? "TLS" : "plaintext",
      impl->authenticator != nullptr
          ? absl::StrCat("authentication on (", impl->authenticator->size(),
                         " credentials from ", options.auth_file, ")")
          : std::string(loopback ? "authentication off: serving loopback "
                                   "only (give --auth_file to serve others)"
                                 : "authentication OFF "
                                   "(--insecure_no_auth): every caller is "
                                   "admin"),
      options.tls_client_ca.empty() ? "" : ", client certificates required");
  impl->access = std::make_unique<AccessPolicy>(impl->authenticator.get());
  std::string metrics_listen;
  if (!options.metrics_listen.empty()) {
    CKPTD_ASSIGN_OR_RETURN(metrics_listen,
                           NormalizeMetricsListen(options.metrics_listen));
    // The same rule as --listen: metrics tell no secrets, but how busy the
    // server is and which calls fail is for the network it trusts.
    if (!IsLoopbackListenAddress(metrics_listen) &&
        impl->authenticator == nullptr && !options.insecure_no_auth) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics_listen '", options.metrics_listen,
          "' is not a loopback address and there is no --auth_file: serve "
          "metrics on 127.0.0.1, or give --auth_file (or --insecure_no_auth) "
          "to serve them to the network"));
    }
  }
  Metrics* metrics = impl->metrics.get();
  options.repository.on_publish = [metrics](const v1::VersionInfo& info) {
    metrics->RecordPublish(info);
  };

  // Clients never see where the data lives (the log does).
  RedactPathInReplies(options.data_dir);
  CKPTD_ASSIGN_OR_RETURN(impl->repo, core::Repository::OpenDataDir(
                                         options.data_dir, options.repository));
  impl->executor = std::make_unique<Executor>(options.io_threads,
                                              options.max_queued_requests);
  ::mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes);
  ::mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes);
  impl->budget = std::make_unique<InflightBudget>(options.max_inflight_bytes);
  impl->watermark =
      std::make_unique<DiskWatermark>(options.data_dir, options.min_free_disk);
  impl->service = std::make_unique<CheckpointService>(
      impl->repo.get(), impl->executor.get(), impl->access.get(),
      ResourceGuards{impl->budget.get(), impl->watermark.get()}, metrics);
  metrics->SetSources(
      {impl->repo.get(), impl->authenticator.get(), options.data_dir});
  if (!metrics_listen.empty()) {
    CKPTD_ASSIGN_OR_RETURN(impl->metrics_endpoint,
                           MetricsEndpoint::Start(metrics_listen, metrics));
  }

  if (!options.http_listen.empty()) {
    CKPTD_ASSIGN_OR_RETURN(
        impl->web,
        WebView::Start(web_options, impl->repo.get(), impl->access.get()));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &impl->port);
  if (!options.local_socket.empty()) {
    CKPTD_RETURN_IF_ERROR(ClearLocalSocketPath(options.local_socket));
    // Local credentials run the auth processor (tokens, roles) as on TCP.
    std::shared_ptr<grpc::ServerCredentials> local_creds =
        grpc::InsecureServerCredentials();
    if (impl->authenticator != nullptr) {
      local_creds = grpc::experimental::LocalServerCredentials(UDS);
      local_creds->SetAuthMetadataProcessor(impl->authenticator);
    }
    builder.AddListeningPort(absl::StrCat("unix:", options.local_socket),
                             local_creds);
  }
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
  // Memory (inflight_budget.h): a stream's HTTP/2 window does not grow (no
  // BDP probe), so a stream waiting for the budget buffers at most
  // kStreamWindowBytes. gRPC's own buffers count against a quota as a
  // backstop (for what the budget does not cover, such as large unary
  // messages); at the quota gRPC refuses new streams (RST_STREAM, seen by
  // clients as RESOURCE_EXHAUSTED), so it is twice the budget, which
  // uploads and reads do not reach.
  grpc::ResourceQuota quota("ckptd");
  quota.Resize(2 * options.max_inflight_bytes);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             kStreamWindowBytes);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<ParseErrorInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  {
    const LocalSocketUmask umask;  // the socket file starts 0600
    impl->grpc_server = builder.BuildAndStart();
  }
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on '", options.listen,
        "': address in use or invalid (expected HOST:PORT, e.g. "
        "127.0.0.1:50051)",
        options.local_socket.empty()
            ? ""
            : absl::StrCat(", or on --local_socket ", options.local_socket,
                           " (is its directory there and writable?)")));
  }
  if (!options.local_socket.empty()) {
    auto local = LocalSocketFile::Publish(options.local_socket);
    if (!local.ok()) {
      impl->grpc_server->Shutdown();
      impl->executor->Shutdown();
      return local.status();
    }
    impl->local_socket = *std::move(local);
    LocalDataPlaneOptions plane;
    plane.path = LocalDataSocketPath(options.local_socket);
    plane.max_staged_bytes = options.max_staged_bytes;
    auto data_plane = LocalDataPlane::Start(plane, impl->service.get(),
                                            impl->watermark.get());
    if (!data_plane.ok()) {
      impl->grpc_server->Shutdown();
      impl->executor->Shutdown();
      impl->local_socket.Remove();
      return data_plane.status();
    }
    impl->data_plane = *std::move(data_plane);
    spdlog::info(
        "also serving on the Unix socket {} (mode {:o}; clients: "
        "unix:{}), zero-copy data plane on {} (--max_staged_bytes={})",
        options.local_socket, kLocalSocketMode, options.local_socket,
        plane.path, options.max_staged_bytes);
  }
  grpc::HealthCheckServiceInterface* health =
      impl->grpc_server->GetHealthCheckService();
  health->SetServingStatus(true);
  if (impl->repo->is_replica()) {
    // A replica takes no pushes, ever.
    health->SetServingStatus(kPushHealthService, false);
  } else {
    // Pushes may be refused for disk space while reads are served.
    impl->watermark->SetListener([health](bool accepting) {
      health->SetServingStatus(kPushHealthService, accepting);
    });
    // Replicas of the bucket name this address when they refuse a change.
    if (absl::Status st = impl->repo->AnnounceWriter(
            AdvertisedAddress(options.listen, impl->port));
        !st.ok()) {
      spdlog::warn("could not write this ckptd's address to the bucket: {}",
                   st.ToString());
    }
  }
  Impl* raw = impl.get();
  impl->maintenance = std::thread([raw] {
    uint64_t trimmed_at_grants = 0;
    while (!raw->shutdown_started.WaitForNotificationWithTimeout(
        raw->options.maintenance_interval)) {
      auto aborted = raw->repo->AbortExpiredPending();
      if (!aborted.ok()) {
        spdlog::warn("pending-timeout sweep: {}", aborted.status().ToString());
      }
      raw->watermark->Refresh();
      // Buffers freed since the last sweep go back to the OS while no call
      // holds bytes in flight.
      if (const uint64_t grants = raw->budget->grants();
          grants != trimmed_at_grants && raw->budget->in_use() == 0) {
        ::malloc_trim(0);
        trimmed_at_grants = grants;
      }
      if (int n = raw->repo->ExpireSuspendedUploads(); n > 0) {
        spdlog::info(
            "dropped {} interrupted uploads older than {}", n,
            absl::FormatDuration(raw->options.repository.pending_timeout));
      }
    }
  });
  if (impl->metrics_endpoint != nullptr) {
    spdlog::info("metrics on http://{}:{}/metrics",
                 metrics_listen.substr(0, metrics_listen.rfind(':')),
                 impl->metrics_endpoint->port());
  }
  spdlog::info("ckptd listening on {} (port {}), data dir {}", options.listen,
               impl->port, options.data_dir);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

std::string Server::local_socket_path() const {
  return impl_->local_socket.path();
}

int Server::metrics_port() const {
  return impl_->metrics_endpoint == nullptr ? 0
                                            : impl_->metrics_endpoint->port();
}

int Server::http_port() const {
  return impl_->web != nullptr ? impl_->web->port() : 0;
}

absl::Status Server::ReloadAuth() {
  if (impl_->authenticator == nullptr) return absl::OkStatus();
  CKPTD_RETURN_IF_ERROR(impl_->authenticator->Reload());
  spdlog::info("reloaded {}: {} credentials", impl_->options.auth_file,
               impl_->authenticator->size());
  return absl::OkStatus();
}

void Server::Wait() { impl_->shutdown_done.WaitForNotification(); }

void Server::Shutdown(absl::Duration grace) {
  if (impl_->shutdown_started.HasBeenNotified()) return;
  impl_->shutdown_started.Notify();
  spdlog::info("shutting down: NOT_SERVING, refusing new pushes, {} grace",
               absl::FormatDuration(grace));
  impl_->watermark->SetListener(nullptr);
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  impl_->web.reset();  // waits for the requests it is answering
  impl_->service->SetDraining(true);
  // Co-located saves already acknowledged are committed first.
  if (impl_->data_plane != nullptr) impl_->data_plane->Stop();
  impl_->grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  impl_->local_socket.Remove();
  impl_->executor->Shutdown();
  if (impl_->maintenance.joinable()) impl_->maintenance.join();
  impl_->grpc_server.reset();
  impl_->metrics_endpoint.reset();  // scrapes read the repository
  impl_->repo.reset();              // closes RocksDB cleanly
  spdlog::info("in-flight blob bytes peaked at {} of --max_inflight_bytes={}",
               HumanBytes(impl_->budget->peak()),
               HumanBytes(impl_->budget->capacity()));
  spdlog::info("shutdown complete");
  impl_->shutdown_done.Notify();
}

}  // namespace ckptd::service
