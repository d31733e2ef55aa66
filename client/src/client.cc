// The Client implementation: Push / Pull orchestration over a Connection,
// and thin wrappers for the history calls.
//
// A failed Push leaves its pending version on the server (it is not
// aborted): calling Push again for the same (run, step) joins that version,
// and FindMissingBlobs skips what already arrived. Other ranks of a sharded
// save may still be using it; AbortVersion ends it explicitly. Except when
// the server's disk is full (reason DISK_FULL): the save cannot complete,
// and what it uploaded takes the space others need, so Push aborts the
// version (other ranks then fail with FAILED_PRECONDITION naming why).
#include "ckptd/client.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/src/blob_upload.h"
#include "client/src/connection.h"
#include "client/src/cuda_staging.h"
#include "client/src/local_plane.h"
#include "client/src/progress.h"
#include "client/src/push_plan.h"
#include "client/src/ref_watch.h"
#include "client/src/tensor_read.h"
#include "grpcpp/support/sync_stream.h"
#include "proto/base/dtype.h"
#include "proto/base/error_reason.h"
#include "proto/base/limits.h"

namespace ckptd {
namespace {

using internal::Connection;
using internal::FromGrpcStatus;

constexpr char kDefaultAddress[] = "127.0.0.1:50051";
constexpr char kClientVersion[] = "ckptd-cpp/0.1.0";
// Bounds of PushOptions::chunk_size (the server rejects chunks above 4 MiB).
constexpr uint64_t kMinChunkBytes = 64 << 10;
constexpr uint64_t kMaxChunkBytes = 4 << 20;

absl::Status ValidatePushOptions(const PushOptions& o) {
  if (o.chunk_size < kMinChunkBytes || o.chunk_size > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PushOptions::chunk_size is ", o.chunk_size, "; it must be between ",
        kMinChunkBytes, " and ", kMaxChunkBytes, " bytes"));
  }
  if (o.max_attempts < 1 || o.streams < 1) {
    return absl::InvalidArgumentError(
        "PushOptions::max_attempts and ::streams must be at least 1");
  }
  return absl::OkStatus();
}

bool IsMissingBlob(const absl::Status& st) {
  return ReasonOf(st) == v1::BLOB_MISSING;
}

v1::BeginVersionRequest BeginRequestOf(const PushRequest& request) {
  v1::BeginVersionRequest begin;
  begin.set_run(request.run);
  begin.set_step(request.step);
  begin.set_epoch(request.epoch);
  begin.set_world_size(request.world_size);
  *begin.mutable_env() = request.env;
  if (begin.env().client_version().empty()) {
    begin.mutable_env()->set_client_version(kClientVersion);
  }
  if (begin.env().hostname().empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) == 0) {
      begin.mutable_env()->set_hostname(host);
    }
  }
  return begin;
}

absl::Status NotColocated(absl::string_view what) {
  return absl::UnimplementedError(
      absl::StrCat(what,
                   " needs a co-located daemon: connect to unix:PATH (its "
                   "--local_socket)"));
}

class ClientImpl final : public Client {
 public:
  ClientImpl(std::unique_ptr<Connection> connection, std::string data_socket,
             std::string token)
      : connection_(std::move(connection)),
        data_socket_(std::move(data_socket)),
        token_(std::move(token)) {}

  // ---- Co-located ----

  absl::StatusOr<std::unique_ptr<StagedPush>> StagePush(
      const PushRequest& request) override {
    if (data_socket_.empty()) return NotColocated("StagePush");
    return internal::StageLocalPush(data_socket_, token_,
                                    BeginRequestOf(request), request);
  }

  absl::StatusOr<std::vector<std::shared_ptr<MappedBlob>>> MapBlobs(
      const std::string& run, uint64_t version,
      const std::vector<std::string>& digests) override {
    if (data_socket_.empty()) return NotColocated("MapBlobs");
    return internal::MapLocalBlobs(data_socket_, token_, run, version, digests);
  }

  // ---- Push ----

  absl::StatusOr<VersionInfo> Push(const PushRequest& request,
                                   const PushOptions& options) override {
    if (absl::Status st = ValidatePushOptions(options); !st.ok()) return st;
    absl::StatusOr<std::unique_ptr<internal::PushPlan>> plan_or =
        internal::BuildPushPlan(request, options);
    if (!plan_or.ok()) return plan_or.status();
    const internal::PushPlan& plan = **plan_or;

    const v1::BeginVersionRequest begin = BeginRequestOf(request);
    auto begun =
        Unary(&v1::Checkpoint::Stub::BeginVersion, begin, options.max_attempts);
    if (!begun.ok()) return begun.status();
    const uint64_t version = begun->version();

    if (!data_socket_.empty()) {
      // Co-located: what the daemon is missing goes through its data
      // plane when there is enough of it; an unchanged state only commits.
      absl::StatusOr<std::optional<VersionInfo>> staged =
          PushStaged(request, begin, version, plan, options);
      if (!staged.ok())
        return AbortIfDiskFull(request, version, staged.status());
      if (staged->has_value()) return **staged;
    }
    if (absl::Status st = UploadMissing(request.run, version, plan, options);
        !st.ok()) {
      return AbortIfDiskFull(request, version, st);
    }

    v1::CommitShardRequest commit;
    commit.set_run(request.run);
    commit.set_version(version);
    commit.set_rank(request.rank);
    *commit.mutable_manifest() = plan.manifest;
    for (const auto& [name, value] : request.metrics) {
      (*commit.mutable_metrics())[name] = value;
    }
    auto committed =
        Unary(&v1::Checkpoint::Stub::CommitShard, commit, options.max_attempts);
    if (!committed.ok() && IsMissingBlob(committed.status())) {
      // A blob went away between FindMissingBlobs and the commit (e.g.
      // collected): upload again once.
      if (absl::Status st = UploadMissing(request.run, version, plan, options);
          !st.ok()) {
        return AbortIfDiskFull(request, version, st);
      }
      committed = Unary(&v1::Checkpoint::Stub::CommitShard, commit,
                        options.max_attempts);
    }
    if (!committed.ok()) {
      return AbortIfDiskFull(request, version, committed.status());
    }
    return committed->version();
  }

  // `failure`, after aborting `version` when it says the server's disk is
  // full, so that the server frees what the save uploaded.
  absl::Status AbortIfDiskFull(const PushRequest& request, uint64_t version,
                               const absl::Status& failure) {
    if (ReasonOf(failure) != v1::DISK_FULL) return failure;
    const std::string name = absl::StrCat(request.run, "@", version);
    absl::Status aborted =
        AbortVersion(request.run, version,
                     absl::StrCat("rank ", request.rank, ": ",
                                  failure.message().substr(0, 800)));
    return WithReason(
        absl::Status(
            failure.code(),
            absl::StrCat(
                failure.message(),
                aborted.ok()
                    ? absl::StrCat(" (aborted ", name, " to free its blobs)")
                    : absl::StrCat(" (could not abort ", name, ": ",
                                   aborted.message(), ")"))),
        v1::DISK_FULL);
  }

  absl::Status AbortVersion(const std::string& run, uint64_t version,
                            const std::string& reason) override {
    v1::AbortVersionRequest req;
    req.set_run(run);
    req.set_version(version);
    req.set_reason(reason);
    return Unary(&v1::Checkpoint::Stub::AbortVersion, req).status();
  }

  // ---- Pull ----

  absl::StatusOr<VersionManifest> GetVersion(
      const std::string& run, const std::string& ref,
      const GetVersionOptions& options) override {
    v1::GetVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    req.set_include_manifest(options.include_manifest);
    for (uint32_t r : options.ranks) req.add_ranks(r);
    auto resp = Unary(&v1::Checkpoint::Stub::GetVersion, req, kReadAttempts);
    if (!resp.ok()) return resp.status();
    VersionManifest out;
    out.info = std::move(*resp->mutable_info());
    out.shards.reserve(resp->shards_size());
    for (auto& shard : *resp->mutable_shards()) {
      out.shards.push_back(std::move(shard));
    }
    return out;
  }

  absl::Status ReadTensors(const VersionManifest& version,
                           absl::Span<const TensorDestination> dests,
                           const PullOptions& options) override {
    if (options.streams < 1 || options.max_attempts < 1) {
      return absl::InvalidArgumentError(
          "PullOptions::streams and ::max_attempts must be at least 1");
    }
    return internal::ReadTensorBytes(*connection_, version, dests, options);
  }

  absl::StatusOr<std::vector<OwnedTensor>> ReadAllTensors(
      const VersionManifest& version,
      const std::function<bool(size_t shard, size_t entry)>& select,
      const PullOptions& options) override {
    std::vector<OwnedTensor> out;
    for (size_t s = 0; s < version.shards.size(); ++s) {
      const ShardManifest& shard = version.shards[s];
      for (int e = 0; e < shard.entries_size(); ++e) {
        if (shard.entries(e).kind_case() != ManifestEntry::kTensor) continue;
        if (select && !select(s, static_cast<size_t>(e))) continue;
        OwnedTensor t;
        t.shard = s;
        t.entry = static_cast<size_t>(e);
        t.bytes.resize(shard.entries(e).tensor().byte_length());
        out.push_back(std::move(t));
      }
    }
    std::vector<TensorDestination> dests;
    dests.reserve(out.size());
    for (OwnedTensor& t : out) {
      TensorDestination d;
      d.shard = t.shard;
      d.entry = t.entry;
      d.data = t.bytes.data();
      dests.push_back(d);
    }
    if (absl::Status st = ReadTensors(version, dests, options); !st.ok()) {
      return st;
    }
    return out;
  }

  absl::Status ExportSafetensors(
      const std::string& run, const std::string& ref, uint32_t rank,
      const std::vector<std::string>& keys,
      const std::function<absl::Status(std::string_view piece, uint64_t total)>&
          sink) override {
    v1::ExportSafetensorsRequest req;
    req.set_run(run);
    req.set_ref(ref);
    req.set_rank(rank);
    for (const auto& k : keys) req.add_keys(k);
    grpc::ClientContext ctx;
    connection_->Prepare(&ctx, /*unary_deadline=*/false);
    auto reader = connection_->NextStub()->ExportSafetensors(&ctx, req);
    v1::ExportChunk chunk;
    uint64_t total = 0;
    absl::Status sink_status;
    while (reader->Read(&chunk)) {
      if (chunk.total_size() != 0) total = chunk.total_size();
      sink_status = sink(chunk.data(), total);
      if (!sink_status.ok()) {
        ctx.TryCancel();
        break;
      }
    }
    absl::Status st = FromGrpcStatus(reader->Finish());
    return sink_status.ok() ? st : sink_status;
  }

  absl::Status WatchRef(
      const std::string& run, const std::string& ref,
      const std::function<bool(const VersionInfo&)>& on_move) override {
    v1::WatchRefRequest req;
    req.set_run(run);
    req.set_ref(ref);
    grpc::ClientContext ctx;
    connection_->Prepare(&ctx, /*unary_deadline=*/false);
    auto reader = connection_->NextStub()->WatchRef(&ctx, req);
    v1::WatchRefEvent event;
    bool stopped = false;
    while (reader->Read(&event)) {
      if (!on_move(event.version())) {
        stopped = true;
        ctx.TryCancel();
        break;
      }
    }
    absl::Status st = FromGrpcStatus(reader->Finish());
    return stopped ? absl::OkStatus() : st;
  }

  absl::StatusOr<std::unique_ptr<RefWatch>> OpenWatch(
      const std::string& run, const std::string& ref) override {
    return internal::StartRefWatch(*connection_, run, ref);
  }

  // ---- History ----

  absl::StatusOr<std::vector<RunInfo>> ListRuns() override {
    auto resp = Unary(&v1::Checkpoint::Stub::ListRuns, v1::ListRunsRequest(),
                      kReadAttempts);
    if (!resp.ok()) return resp.status();
    return std::vector<RunInfo>(resp->runs().begin(), resp->runs().end());
  }

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const ListVersionsRequest& request) override {
    std::vector<VersionInfo> out;
    ListVersionsRequest req = request;
    absl::flat_hash_set<std::string> seen_tokens;
    while (true) {
      auto resp =
          Unary(&v1::Checkpoint::Stub::ListVersions, req, kReadAttempts);
      if (!resp.ok()) return resp.status();
      for (auto& v : *resp->mutable_versions()) out.push_back(std::move(v));
      if (resp->next_page_token().empty()) return out;
      if (!seen_tokens.insert(resp->next_page_token()).second) {
        return absl::InternalError(
            "ListVersions: the server repeated a page token");
      }
      req.set_page_token(resp->next_page_token());
    }
  }

  absl::StatusOr<std::vector<MetricPoint>> GetMetricHistory(
      const std::string& run, const std::string& metric) override {
    v1::GetMetricHistoryRequest req;
    req.set_run(run);
    req.set_metric(metric);
    auto resp =
        Unary(&v1::Checkpoint::Stub::GetMetricHistory, req, kReadAttempts);
    if (!resp.ok()) return resp.status();
    return std::vector<MetricPoint>(resp->points().begin(),
                                    resp->points().end());
  }

  absl::StatusOr<AliasInfo> SetAlias(const std::string& run,
                                     const std::string& name,
                                     const std::string& ref) override {
    v1::SetAliasRequest req;
    req.set_run(run);
    req.set_name(name);
    req.set_ref(ref);
    return Unary(&v1::Checkpoint::Stub::SetAlias, req);
  }

  absl::Status DeleteAlias(const std::string& run,
                           const std::string& name) override {
    v1::DeleteAliasRequest req;
    req.set_run(run);
    req.set_name(name);
    return Unary(&v1::Checkpoint::Stub::DeleteAlias, req).status();
  }

  absl::StatusOr<std::vector<AliasEvent>> GetAliasHistory(
      const std::string& run, const std::string& alias) override {
    v1::GetAliasHistoryRequest req;
    req.set_run(run);
    req.set_alias(alias);
    auto resp =
        Unary(&v1::Checkpoint::Stub::GetAliasHistory, req, kReadAttempts);
    if (!resp.ok()) return resp.status();
    return std::vector<AliasEvent>(resp->events().begin(),
                                   resp->events().end());
  }

  absl::StatusOr<std::vector<AuditEvent>> GetAuditLog(const std::string& run,
                                                      uint32_t limit) override {
    v1::GetAuditLogRequest req;
    req.set_run(run);
    req.set_limit(limit);
    auto resp = Unary(&v1::Checkpoint::Stub::GetAuditLog, req, kReadAttempts);
    if (!resp.ok()) return resp.status();
    return std::vector<AuditEvent>(resp->events().begin(),
                                   resp->events().end());
  }

  absl::StatusOr<VersionInfo> Pin(const std::string& run,
                                  const std::string& ref) override {
    v1::PinRequest req;
    req.set_run(run);
    req.set_ref(ref);
    return Unary(&v1::Checkpoint::Stub::Pin, req);
  }

  absl::StatusOr<VersionInfo> Unpin(const std::string& run,
                                    const std::string& ref) override {
    v1::PinRequest req;
    req.set_run(run);
    req.set_ref(ref);
    return Unary(&v1::Checkpoint::Stub::Unpin, req);
  }

  using Client::DeleteVersion;
  absl::Status DeleteVersion(const std::string& run, const std::string& ref,
                             bool force) override {
    v1::DeleteVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    req.set_force(force);
    return Unary(&v1::Checkpoint::Stub::DeleteVersion, req).status();
  }

  absl::StatusOr<Policy> SetPolicy(const std::string& run,
                                   const Policy& policy) override {
    v1::SetPolicyRequest req;
    req.set_run(run);
    *req.mutable_policy() = policy;
    return Unary(&v1::Checkpoint::Stub::SetPolicy, req);
  }

  absl::StatusOr<Policy> GetPolicy(const std::string& run) override {
    v1::GetPolicyRequest req;
    req.set_run(run);
    return Unary(&v1::Checkpoint::Stub::GetPolicy, req, kReadAttempts);
  }

  absl::StatusOr<v1::CollectGarbageResponse> CollectGarbage() override {
    return Unary(&v1::Checkpoint::Stub::CollectGarbage,
                 v1::CollectGarbageRequest());
  }

  absl::StatusOr<v1::VerifyResponse> Verify(const std::string& run,
                                            const std::string& ref) override {
    v1::VerifyRequest req;
    req.set_run(run);
    req.set_ref(ref);
    return Unary(&v1::Checkpoint::Stub::Verify, req, kReadAttempts);
  }

  absl::StatusOr<v1::BackupResponse> Backup(const std::string& dir,
                                            absl::Duration timeout) override {
    if (timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("backup timeout ", absl::FormatDuration(timeout),
                       " is not positive; give a duration such as 2h, or "
                       "absl::InfiniteDuration() for no deadline"));
    }
    v1::BackupRequest req;
    req.set_dir(dir);
    // Its own deadline: a backup takes as long as the data takes to link
    // or copy, not the unary RPC timeout. Not retried: a cut call stops
    // the backup and the server removes it.
    grpc::ClientContext ctx;
    connection_->Prepare(&ctx, /*unary_deadline=*/false);
    if (timeout != absl::InfiniteDuration()) {
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
    v1::BackupResponse resp;
    absl::Status st =
        FromGrpcStatus(connection_->NextStub()->Backup(&ctx, req, &resp));
    if (!st.ok()) return st;
    return resp;
  }

 private:
  // Read-only calls are repeated on UNAVAILABLE (a restarting server).
  static constexpr int kReadAttempts = 3;

  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      grpc::Status (v1::Checkpoint::Stub::*method)(grpc::ClientContext*,
                                                   const Request&, Response*),
      const Request& request, int max_attempts = 1) {
    return connection_->Unary(method, request, max_attempts);
  }

  // The digests of `plan` the server does not have. Asks in batches of at
  // most kMaxFindMissingDigests (the server's limit); a server with a lower
  // limit says REQUEST_TOO_LARGE, and the batch is halved until it passes.
  absl::StatusOr<absl::flat_hash_set<std::string>> FindMissing(
      const std::string& run, uint64_t version, const internal::PushPlan& plan,
      const PushOptions& options) {
    absl::flat_hash_set<std::string> missing;
    size_t batch = kMaxFindMissingDigests;
    size_t first = 0;
    do {
      const size_t end = std::min(plan.blobs.size(), first + batch);
      v1::FindMissingBlobsRequest find;
      find.set_run(run);
      find.set_version(version);
      for (size_t i = first; i < end; ++i) {
        find.add_digests(plan.blobs[i].digest);
      }
      auto found = Unary(&v1::Checkpoint::Stub::FindMissingBlobs, find,
                         options.max_attempts);
      if (!found.ok()) {
        if (ReasonOf(found.status()) == v1::REQUEST_TOO_LARGE && batch > 1) {
          batch /= 2;
          continue;
        }
        return found.status();
      }
      missing.insert(found->missing().begin(), found->missing().end());
      first = end;
    } while (first < plan.blobs.size());
    return missing;
  }

  // FindMissingBlobs for every blob of the plan, then uploads those.
  // Push over the data plane once the daemon is missing at least
  // kStageFromBytes of host tensors: the version committed, or nullopt when
  // the caller is to upload over gRPC (too little to stage, CUDA tensors,
  // no data plane, or a state over the daemon's --max_staged_bytes).
  static constexpr uint64_t kStageFromBytes = 4 << 20;
  absl::StatusOr<std::optional<VersionInfo>> PushStaged(
      const PushRequest& request, const v1::BeginVersionRequest& begin,
      uint64_t version, const internal::PushPlan& plan,
      const PushOptions& options) {
    for (const PushEntry& e : request.entries) {
      if (e.entry.has_tensor() && e.tensor.memory.kind != MemoryKind::kHost) {
        return std::nullopt;
      }
    }
    absl::StatusOr<absl::flat_hash_set<std::string>> missing =
        FindMissing(request.run, version, plan, options);
    if (!missing.ok()) return missing.status();
    uint64_t missing_bytes = 0;
    for (const internal::PlannedBlob& b : plan.blobs) {
      if (missing->contains(b.digest)) missing_bytes += b.size;
    }
    if (missing_bytes < kStageFromBytes) return std::nullopt;
    internal::ProgressReporter progress(options.progress, missing_bytes);
    absl::StatusOr<std::unique_ptr<StagedPush>> staged =
        internal::StageLocalPush(data_socket_, token_, begin, request);
    if (!staged.ok()) {
      if (absl::IsUnimplemented(staged.status()) ||
          ReasonOf(staged.status()) == v1::STAGED_MEMORY_LIMIT) {
        return std::nullopt;
      }
      return staged.status();
    }
    absl::StatusOr<VersionInfo> info = (*staged)->Wait();
    if (!info.ok()) return info.status();
    progress.Finish();
    return std::optional<VersionInfo>(*std::move(info));
  }

  absl::Status UploadMissing(const std::string& run, uint64_t version,
                             const internal::PushPlan& plan,
                             const PushOptions& options) {
    absl::StatusOr<absl::flat_hash_set<std::string>> missing_or =
        FindMissing(run, version, plan, options);
    if (!missing_or.ok()) return missing_or.status();
    const absl::flat_hash_set<std::string>& missing = *missing_or;
    std::vector<const internal::PlannedBlob*> upload;
    uint64_t total = 0;
    for (const internal::PlannedBlob& b : plan.blobs) {
      if (missing.contains(b.digest)) {
        upload.push_back(&b);
        total += b.size;
      }
    }
    internal::ProgressReporter progress(options.progress, total);
    absl::Status st = internal::UploadBlobs(*connection_, run, version, upload,
                                            options, &progress);
    if (st.ok()) progress.Finish();
    return st;
  }

  std::unique_ptr<Connection> connection_;
  const std::string data_socket_;  // "" unless the address is unix:
  const std::string token_;
};

}  // namespace

std::string DefaultServerAddress() {
  if (const char* env = std::getenv("CKPTD_SERVER"); env != nullptr && *env) {
    return env;
  }
  return kDefaultAddress;
}

size_t DTypeSize(DType dtype) { return DTypeByteSize(dtype); }

bool CudaAvailable() { return internal::CudaDevicePresent(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<Connection>> connection =
      Connection::Open(options);
  if (!connection.ok()) return connection.status();
  const std::string address =
      options.address.empty() ? DefaultServerAddress() : options.address;
  return std::unique_ptr<Client>(
      new ClientImpl(*std::move(connection),
                     internal::LocalDataSocketOf(address), options.token));
}

}  // namespace ckptd
