// Metrics: ckptd's Prometheus metrics, and the HTTP endpoint that serves
// them (--metrics_listen). Every name, type and meaning is listed in the
// README (Operations, Metrics and logs); the list there and kMetricNames
// below are the same.
//
// Two kinds of values:
//  - events counted as they happen: RPCs by method and status code and
//    their latency, bytes received and sent (RpcScope, rpc_scope.h),
//    versions published with their push latency and dedup bytes
//    (RecordPublish, from core::RepositoryOptions::on_publish);
//  - levels read at scrape time from their owners: pending versions, active
//    and suspended uploads, stored blobs and bytes (core::Repository::
//    Stats), free disk space of the data dir (statvfs), authentication
//    failures (Authenticator), scrub results (once the scrub exists:
//    core::ScrubCounters).
// No metric has a per-run (or per-identity) label: label values come from
// fixed sets (method names, status codes, failure reasons), so the number
// of series is bounded whatever clients send.
//
// Thread safety: Metrics is thread-safe. SetSources() is called once before
// the endpoint serves; the sources must outlive the MetricsEndpoint.
#ifndef CKPTD_SERVER_SERVICE_METRICS_H_
#define CKPTD_SERVER_SERVICE_METRICS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "grpcpp/support/status.h"
#include "server/core/repository.h"
#include "server/service/access.h"
#include "server/service/auth.h"

namespace prometheus {
class Collectable;
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace ckptd::service {

// Every metric family ckptd exports (the scrub's only once it reports).
inline constexpr std::array<absl::string_view, 25> kMetricNames = {
    "ckptd_rpcs_total",
    "ckptd_rpc_duration_seconds",
    "ckptd_received_bytes_total",
    "ckptd_sent_bytes_total",
    "ckptd_versions_committed_total",
    "ckptd_staged_bytes",
    "ckptd_staged_saves_total",
    "ckptd_push_duration_seconds",
    "ckptd_pull_duration_seconds",
    "ckptd_dedup_offered_bytes_total",
    "ckptd_dedup_uploaded_bytes_total",
    "ckptd_dedup_ratio",
    "ckptd_pending_versions",
    "ckptd_active_uploads",
    "ckptd_suspended_uploads",
    "ckptd_stored_blobs",
    "ckptd_stored_bytes",
    "ckptd_disk_free_bytes",
    "ckptd_disk_total_bytes",
    "ckptd_auth_failures_total",
    "ckptd_scrub_passes_total",
    "ckptd_scrub_blobs_checked_total",
    "ckptd_scrub_bytes_checked_total",
    "ckptd_scrub_failures_total",
    "ckptd_scrub_last_pass_timestamp_seconds",
};

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  struct Sources {
    core::Repository* repo = nullptr;
    const Authenticator* auth = nullptr;  // null without --auth_file
    std::string data_dir;                 // for ckptd_disk_*_bytes
  };
  void SetSources(Sources sources);

  // One finished Checkpoint RPC (RpcScope).
  void RecordRpc(Method method, grpc::StatusCode code, absl::Duration elapsed);
  void AddReceivedBytes(uint64_t bytes);
  void AddSentBytes(uint64_t bytes);
  // A version was published (its record after the publish).
  void RecordPublish(const v1::VersionInfo& info);
  // Co-located saves (local_data_plane.h): staged memory taken (positive)
  // or given back (negative), and a staged save stored and committed.
  void AddStagedBytes(int64_t delta);
  void RecordStagedSave();

  // The Prometheus text exposition of every metric (what /metrics serves).
  std::string TextExposition() const;

 private:
  friend class MetricsEndpoint;
  class ScrapeCollector;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ScrapeCollector> scrape_;
  prometheus::Family<prometheus::Counter>* rpcs_;
  std::vector<prometheus::Histogram*> rpc_duration_;  // by Method
  prometheus::Counter* received_;
  prometheus::Counter* sent_;
  prometheus::Counter* committed_;
  prometheus::Histogram* push_duration_;
  prometheus::Histogram* pull_duration_;
  prometheus::Counter* offered_;
  prometheus::Counter* uploaded_;
  prometheus::Gauge* staged_bytes_;
  prometheus::Counter* staged_saves_;
};

// --metrics_listen checked and put the way the HTTP server takes it:
// "IPV4:PORT" with a port in 0-65535 (localhost becomes 127.0.0.1).
// INVALID_ARGUMENT naming the value otherwise (IPv6 is refused: the HTTP
// server of Debian's civetweb is built without it).
absl::StatusOr<std::string> NormalizeMetricsListen(absl::string_view listen);

// The HTTP server answering GET /metrics. Destroying it stops serving (and
// waits for scrapes in progress).
class MetricsEndpoint {
 public:
  // `listen` as NormalizeMetricsListen returns it. UNAVAILABLE when the
  // address cannot be bound (in use, not local).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, Metrics* metrics);
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // The port bound (the one picked, for port 0).
  int port() const { return port_; }

 private:
  MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer, int port);
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_METRICS_H_
