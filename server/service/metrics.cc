#include "server/service/metrics.h"

#include <sys/statvfs.h>

#include <exception>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/service/http_listen.h"

namespace ckptd::service {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Seconds; a unary call is usually milliseconds, a stream up to minutes.
const prometheus::Histogram::BucketBoundaries& RpcBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
      0.5,    1,     2.5,    5,     10,   30,    60,   300};
  return *b;
}

// Seconds of a whole push or a pull stream: 10 ms to half an hour.
const prometheus::Histogram::BucketBoundaries& TransferBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.05, 0.1, 0.25, 0.5, 1,   2.5,  5,   10,
      30,   60,   120, 300,  600, 900, 1800, 3600};
  return *b;
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

ClientMetric Value(MetricType type, double value,
                   std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return m;
}

MetricFamily One(std::string name, std::string help, MetricType type,
                 double value) {
  MetricFamily f = Family(std::move(name), std::move(help), type);
  f.metric.push_back(Value(type, value));
  return f;
}

}  // namespace

// The levels, read from their owners at each scrape.
class Metrics::ScrapeCollector final : public prometheus::Collectable {
 public:
  explicit ScrapeCollector(const Metrics* metrics) : metrics_(metrics) {}

  void SetSources(Sources sources) {
    absl::MutexLock lock(&mu_);
    sources_ = std::move(sources);
  }

  std::vector<MetricFamily> Collect() const override {
    Sources sources;
    {
      absl::MutexLock lock(&mu_);
      sources = sources_;
    }
    std::vector<MetricFamily> out;
    constexpr MetricType kGauge = MetricType::Gauge;
    constexpr MetricType kCounter = MetricType::Counter;

    const double offered = metrics_->offered_->Value();
    const double uploaded = metrics_->uploaded_->Value();
    out.push_back(One(
        "ckptd_dedup_ratio",
        "Share of the tensor bytes of versions published since start that "
        "did not travel (1 - uploaded / offered); 0 before the first publish",
        kGauge,
        offered > 0 && uploaded < offered ? 1 - uploaded / offered : 0));

    if (sources.repo != nullptr) {
      const core::RepositoryStats s = sources.repo->Stats();
      out.push_back(One("ckptd_pending_versions",
                        "Versions begun and not yet committed or aborted",
                        kGauge, static_cast<double>(s.pending_versions)));
      out.push_back(One("ckptd_active_uploads",
                        "Blobs an UploadBlobs stream is receiving right now",
                        kGauge, static_cast<double>(s.active_uploads)));
      out.push_back(One("ckptd_suspended_uploads",
                        "Interrupted blob uploads kept for resume", kGauge,
                        static_cast<double>(s.suspended_uploads)));
      out.push_back(One("ckptd_stored_blobs", "Blobs in the blob store", kGauge,
                        static_cast<double>(s.stored_blobs)));
      out.push_back(One("ckptd_stored_bytes",
                        "Tensor bytes of the blobs in the blob store (each "
                        "blob once, however many versions reference it)",
                        kGauge, static_cast<double>(s.stored_bytes)));
      out.push_back(One("ckptd_quarantined_blobs",
                        "Blobs found corrupt (by a read, verify or the scrub) "
                        "and not yet healed by a push of their bytes",
                        kGauge, static_cast<double>(s.quarantined_blobs)));
      if (s.scrub.has_value()) {
        const core::ScrubCounters& c = *s.scrub;
        out.push_back(One("ckptd_scrub_passes_total",
                          "Full scrub passes over the blob store completed",
                          kCounter, static_cast<double>(c.passes)));
        out.push_back(One("ckptd_scrub_blobs_checked_total",
                          "Blobs the scrub read and verified", kCounter,
                          static_cast<double>(c.blobs_checked)));
        out.push_back(One("ckptd_scrub_bytes_checked_total",
                          "Bytes the scrub read and verified", kCounter,
                          static_cast<double>(c.bytes_checked)));
        MetricFamily failures =
            Family("ckptd_scrub_failures_total",
                   "Blobs the scrub found corrupt (a checksum did not match) "
                   "or missing, by kind",
                   kCounter);
        failures.metric.push_back(Value(kCounter,
                                        static_cast<double>(c.blobs_corrupt),
                                        {{"kind", "corrupt"}}));
        failures.metric.push_back(Value(kCounter,
                                        static_cast<double>(c.blobs_missing),
                                        {{"kind", "missing"}}));
        out.push_back(std::move(failures));
        out.push_back(One("ckptd_scrub_last_pass_timestamp_seconds",
                          "Unix time the last scrub pass completed (0: none)",
                          kGauge, static_cast<double>(c.last_pass_completed)));
      }
      if (s.record.has_value()) {
        const core::RecordCounters& r = *s.record;
        out.push_back(
            One("ckptd_record_seq",
                r.replica ? "Seq of the last record of the bucket this read "
                            "replica applied (the writer's ckptd_record_seq "
                            "minus this is its lag, in commits)"
                          : "Seq of the last record this ckptd wrote to the "
                            "bucket",
                kGauge, static_cast<double>(r.seq)));
        if (r.replica) {
          out.push_back(One("ckptd_replica_last_follow_timestamp_seconds",
                            "Unix time this read replica last read the "
                            "bucket's record (0: not yet)",
                            kGauge, static_cast<double>(r.last_follow)));
        }
      }
      if (s.cache.has_value()) {
        const storage::BlobCacheStats& c = *s.cache;
        out.push_back(One("ckptd_read_cache_hits_total",
                          "Blob opens served from the read cache", kCounter,
                          static_cast<double>(c.hits)));
        out.push_back(One("ckptd_read_cache_misses_total",
                          "Blobs fetched whole into the read cache", kCounter,
                          static_cast<double>(c.misses)));
        out.push_back(One("ckptd_read_cache_evictions_total",
                          "Blobs evicted from the read cache", kCounter,
                          static_cast<double>(c.evictions)));
        out.push_back(One("ckptd_read_cache_fallbacks_total",
                          "Cached copies found damaged and read from the "
                          "bucket instead",
                          kCounter, static_cast<double>(c.fallbacks)));
        out.push_back(One("ckptd_read_cache_bytes",
                          "Bytes of the blobs in the read cache", kGauge,
                          static_cast<double>(c.bytes)));
      }
    }

    if (!sources.data_dir.empty()) {
      struct statvfs fs {};
      if (::statvfs(sources.data_dir.c_str(), &fs) == 0) {
        const double unit = static_cast<double>(fs.f_frsize);
        out.push_back(One("ckptd_disk_free_bytes",
                          "Bytes free for ckptd on the data dir's file system",
                          kGauge, static_cast<double>(fs.f_bavail) * unit));
        out.push_back(One("ckptd_disk_total_bytes",
                          "Size of the data dir's file system in bytes", kGauge,
                          static_cast<double>(fs.f_blocks) * unit));
      }
    }

    MetricFamily auth = Family(
        "ckptd_auth_failures_total",
        "Calls refused for who made them, by reason: bad_token (malformed or "
        "unknown bearer token), unknown_certificate, no_credential, "
        "permission_denied (known identity without the role or the run)",
        kCounter);
    for (size_t i = 0; i < kAuthFailureKinds; ++i) {
      const auto kind = static_cast<AuthFailure>(i);
      const double n = sources.auth == nullptr
                           ? 0
                           : static_cast<double>(sources.auth->failures(kind));
      auth.metric.push_back(
          Value(kCounter, n, {{"reason", std::string(AuthFailureName(kind))}}));
    }
    out.push_back(std::move(auth));
    return out;
  }

 private:
  const Metrics* metrics_;
  mutable absl::Mutex mu_;
  Sources sources_ ABSL_GUARDED_BY(mu_);
};

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      scrape_(std::make_shared<ScrapeCollector>(this)) {
  rpcs_ = &prometheus::BuildCounter()
               .Name("ckptd_rpcs_total")
               .Help(
                   "Checkpoint RPCs finished, by method and gRPC status "
                   "code")
               .Register(*registry_);
  auto& durations =
      prometheus::BuildHistogram()
          .Name("ckptd_rpc_duration_seconds")
          .Help(
              "Time from the start of a Checkpoint RPC to its end, by "
              "method (streams: the whole stream)")
          .Register(*registry_);
  for (size_t i = 0; i < kMethodCount; ++i) {
    const MethodRule& rule = RuleFor(static_cast<Method>(i));
    rpc_duration_.push_back(
        &durations.Add({{"method", std::string(rule.name)}}, RpcBuckets()));
  }
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter()
                .Name(name)
                .Help(help)
                .Register(*registry_)
                .Add({});
  };
  auto histogram = [&](const char* name, const char* help) {
    return &prometheus::BuildHistogram()
                .Name(name)
                .Help(help)
                .Register(*registry_)
                .Add({}, TransferBuckets());
  };
  received_ = counter("ckptd_received_bytes_total",
                      "Bytes of Checkpoint request messages received "
                      "(tensor data and protobuf overhead; no HTTP/2 framing)");
  sent_ = counter("ckptd_sent_bytes_total",
                  "Bytes of Checkpoint response messages sent (tensor data "
                  "and protobuf overhead; no HTTP/2 framing)");
  committed_ = counter("ckptd_versions_committed_total",
                       "Versions published (all shards committed)");
  push_duration_ = histogram(
      "ckptd_push_duration_seconds",
      "Time from BeginVersion to the publish of each committed version");
  pull_duration_ = histogram(
      "ckptd_pull_duration_seconds",
      "Duration of each ReadBlobs or ExportSafetensors stream that sent all "
      "it was asked for (a pull spreads over several streams)");
  offered_ = counter("ckptd_dedup_offered_bytes_total",
                     "Tensor bytes of the versions published (what clients "
                     "offered, before dedup)");
  staged_bytes_ = &prometheus::BuildGauge()
                       .Name("ckptd_staged_bytes")
                       .Help(
                           "Bytes of co-located saves staged in the "
                           "daemon's memory now, waiting to be stored "
                           "(bounded by --max_staged_bytes)")
                       .Register(*registry_)
                       .Add({});
  staged_saves_ = counter("ckptd_staged_saves_total",
                          "Co-located saves (staged in daemon memory) "
                          "stored and committed");
  uploaded_ = counter("ckptd_dedup_uploaded_bytes_total",
                      "Bytes uploaded for the versions published (after "
                      "dedup; re-sent bytes of interrupted streams included)");
}

Metrics::~Metrics() = default;

void Metrics::SetSources(Sources sources) {
  scrape_->SetSources(std::move(sources));
}

void Metrics::RecordRpc(Method method, grpc::StatusCode code,
                        absl::Duration elapsed) {
  const std::string code_name(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(code)));
  const MethodRule& rule = RuleFor(method);
  rpcs_->Add({{"method", std::string(rule.name)}, {"code", code_name}})
      .Increment();
  const double seconds = absl::ToDoubleSeconds(elapsed);
  rpc_duration_[static_cast<size_t>(method)]->Observe(seconds);
  if (code == grpc::StatusCode::OK &&
      (method == Method::kReadBlobs || method == Method::kExportSafetensors)) {
    pull_duration_->Observe(seconds);
  }
}

void Metrics::AddReceivedBytes(uint64_t bytes) {
  received_->Increment(static_cast<double>(bytes));
}

void Metrics::AddStagedBytes(int64_t delta) {
  staged_bytes_->Increment(static_cast<double>(delta));
}

void Metrics::RecordStagedSave() { staged_saves_->Increment(); }

void Metrics::AddSentBytes(uint64_t bytes) {
  sent_->Increment(static_cast<double>(bytes));
}

void Metrics::RecordPublish(const v1::VersionInfo& info) {
  committed_->Increment();
  offered_->Increment(static_cast<double>(info.total_bytes()));
  uploaded_->Increment(static_cast<double>(info.uploaded_bytes()));
  if (info.committed_at() >= info.created_at() && info.created_at() > 0) {
    push_duration_->Observe(
        static_cast<double>(info.committed_at() - info.created_at()) / 1e9);
  }
}

std::string Metrics::TextExposition() const {
  std::vector<MetricFamily> families = registry_->Collect();
  std::vector<MetricFamily> levels = scrape_->Collect();
  families.insert(families.end(), std::make_move_iterator(levels.begin()),
                  std::make_move_iterator(levels.end()));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

absl::StatusOr<std::string> NormalizeMetricsListen(absl::string_view listen) {
  return ParseHttpListen("metrics_listen", listen, 9464);
}

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer,
                                 int port)
    : exposer_(std::move(exposer)), port_(port) {}

MetricsEndpoint::~MetricsEndpoint() = default;

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, Metrics* metrics) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // Two threads: scrapes are rare and cheap.
    exposer = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", listen, "num_threads", "2"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on --metrics_listen '", listen,
        "': the address is in use or not one of this host's (", e.what(), ")"));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.size() != 1 || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on --metrics_listen '", listen,
                     "': the HTTP server reports no listening port"));
  }
  exposer->RegisterCollectable(metrics->registry_);
  exposer->RegisterCollectable(metrics->scrape_);
  return std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(std::move(exposer), ports[0]));
}

}  // namespace ckptd::service
