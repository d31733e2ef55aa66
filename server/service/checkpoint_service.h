// CheckpointService: the gRPC adapter of ckptd.v1.Checkpoint over a
// core::Repository, on the callback API. No business rules live here: each
// handler validates nothing beyond the wire shape, asks the access table
// (access.h) whether the caller may make the call, hands the request to the
// repository on the blocking-work Executor, and maps the result with
// ToGrpcStatus. Streaming RPCs are one final reactor class each; reactions
// never block (disk and RocksDB work runs on the Executor, which resumes the
// reactor).
//
// Every call has an RpcScope (rpc_scope.h): its request id, one log line
// when it ends, and its metrics; the unary calls get theirs in Unary(), the
// streams in their reactor (ScopedReactor).
//
// Thread safety: gRPC calls handlers concurrently; the service is
// thread-safe. SetDraining(true) makes push calls answer UNAVAILABLE.
#ifndef CKPTD_SERVER_SERVICE_CHECKPOINT_SERVICE_H_
#define CKPTD_SERVER_SERVICE_CHECKPOINT_SERVICE_H_

#include <atomic>

#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "server/common/executor.h"
#include "server/core/repository.h"
#include "server/service/access.h"
#include "server/service/disk_watermark.h"
#include "server/service/inflight_budget.h"
#include "server/service/metrics.h"

namespace ckptd::service {

// Default bytes per ReadChunk.
inline constexpr uint32_t kDefaultReadChunk = 4 << 20;

// What bounds the server's memory and disk use (not owned; null: no bound):
// streams that move blob bytes take a slot of `budget` per message in
// memory; BeginVersion and each blob upload ask `watermark` first.
struct ResourceGuards {
  InflightBudget* budget = nullptr;
  DiskWatermark* watermark = nullptr;
};

// UNAVAILABLE with reason SERVER_DRAINING: what a push gets once shutdown
// has begun (also on the co-located data plane).
absl::Status DrainingError();

class CheckpointService final : public v1::Checkpoint::CallbackService {
 public:
  // `access` (not owned) decides who may call what; `metrics` (not owned;
  // may be null) counts the calls. Both must outlive the service.
  CheckpointService(core::Repository* repo, Executor* executor,
                    const AccessPolicy* access, ResourceGuards guards = {},
                    Metrics* metrics = nullptr);

  void SetDraining(bool draining) { draining_.store(draining); }
  bool draining() const { return draining_.load(); }
  core::Repository* repo() { return repo_; }
  Executor* executor() { return executor_; }
  const AccessPolicy& access() const { return *access_; }
  const ResourceGuards& guards() const { return guards_; }
  Metrics* metrics() { return metrics_; }

  grpc::ServerUnaryReactor* BeginVersion(
      grpc::CallbackServerContext* ctx, const v1::BeginVersionRequest* req,
      v1::BeginVersionResponse* resp) override;
  grpc::ServerUnaryReactor* FindMissingBlobs(
      grpc::CallbackServerContext* ctx, const v1::FindMissingBlobsRequest* req,
      v1::FindMissingBlobsResponse* resp) override;
  grpc::ServerReadReactor<v1::UploadChunk>* UploadBlobs(
      grpc::CallbackServerContext* ctx, v1::UploadBlobsResponse* resp) override;
  grpc::ServerUnaryReactor* QueryUpload(grpc::CallbackServerContext* ctx,
                                        const v1::QueryUploadRequest* req,
                                        v1::QueryUploadResponse* resp) override;
  grpc::ServerUnaryReactor* CommitShard(grpc::CallbackServerContext* ctx,
                                        const v1::CommitShardRequest* req,
                                        v1::CommitShardResponse* resp) override;
  grpc::ServerUnaryReactor* AbortVersion(
      grpc::CallbackServerContext* ctx, const v1::AbortVersionRequest* req,
      v1::AbortVersionResponse* resp) override;
  grpc::ServerUnaryReactor* GetVersion(grpc::CallbackServerContext* ctx,
                                       const v1::GetVersionRequest* req,
                                       v1::GetVersionResponse* resp) override;
  grpc::ServerWriteReactor<v1::ReadChunk>* ReadBlobs(
      grpc::CallbackServerContext* ctx,
      const v1::ReadBlobsRequest* req) override;
  grpc::ServerWriteReactor<v1::ExportChunk>* ExportSafetensors(
      grpc::CallbackServerContext* ctx,
      const v1::ExportSafetensorsRequest* req) override;
  grpc::ServerWriteReactor<v1::WatchRefEvent>* WatchRef(
      grpc::CallbackServerContext* ctx,
      const v1::WatchRefRequest* req) override;
  grpc::ServerUnaryReactor* ListRuns(grpc::CallbackServerContext* ctx,
                                     const v1::ListRunsRequest* req,
                                     v1::ListRunsResponse* resp) override;
  grpc::ServerUnaryReactor* ListVersions(
      grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
      v1::ListVersionsResponse* resp) override;
  grpc::ServerUnaryReactor* GetMetricHistory(
      grpc::CallbackServerContext* ctx, const v1::GetMetricHistoryRequest* req,
      v1::GetMetricHistoryResponse* resp) override;
  grpc::ServerUnaryReactor* SetAlias(grpc::CallbackServerContext* ctx,
                                     const v1::SetAliasRequest* req,
                                     v1::AliasInfo* resp) override;
  grpc::ServerUnaryReactor* DeleteAlias(grpc::CallbackServerContext* ctx,
                                        const v1::DeleteAliasRequest* req,
                                        v1::DeleteAliasResponse* resp) override;
  grpc::ServerUnaryReactor* GetAliasHistory(
      grpc::CallbackServerContext* ctx, const v1::GetAliasHistoryRequest* req,
      v1::GetAliasHistoryResponse* resp) override;
  grpc::ServerUnaryReactor* Pin(grpc::CallbackServerContext* ctx,
                                const v1::PinRequest* req,
                                v1::VersionInfo* resp) override;
  grpc::ServerUnaryReactor* Unpin(grpc::CallbackServerContext* ctx,
                                  const v1::PinRequest* req,
                                  v1::VersionInfo* resp) override;
  grpc::ServerUnaryReactor* DeleteVersion(
      grpc::CallbackServerContext* ctx, const v1::DeleteVersionRequest* req,
      v1::DeleteVersionResponse* resp) override;
  grpc::ServerUnaryReactor* SetPolicy(grpc::CallbackServerContext* ctx,
                                      const v1::SetPolicyRequest* req,
                                      v1::Policy* resp) override;
  grpc::ServerUnaryReactor* GetPolicy(grpc::CallbackServerContext* ctx,
                                      const v1::GetPolicyRequest* req,
                                      v1::Policy* resp) override;
  grpc::ServerUnaryReactor* CollectGarbage(
      grpc::CallbackServerContext* ctx, const v1::CollectGarbageRequest* req,
      v1::CollectGarbageResponse* resp) override;
  grpc::ServerUnaryReactor* Verify(grpc::CallbackServerContext* ctx,
                                   const v1::VerifyRequest* req,
                                   v1::VerifyResponse* resp) override;
  grpc::ServerUnaryReactor* GetAuditLog(grpc::CallbackServerContext* ctx,
                                        const v1::GetAuditLogRequest* req,
                                        v1::GetAuditLogResponse* resp) override;
  grpc::ServerUnaryReactor* Backup(grpc::CallbackServerContext* ctx,
                                   const v1::BackupRequest* req,
                                   v1::BackupResponse* resp) override;

  // The caller as core records it (audit) and counts it (quotas).
  core::Actor ActorOf(const Principal& caller) const;

 private:
  // Opens the call's RpcScope, authorizes the caller for `method` on `run`
  // (access.h), then runs fn(const Principal&) -> absl::Status on the
  // executor (fn fills *resp) and finishes the call with its status.
  template <typename Request, typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx,
                                  Method method, const Request& req,
                                  const google::protobuf::Message* resp,
                                  absl::string_view run, Fn fn);
  // Finishes a unary call at once with `why` (logged like any call).
  template <typename Request>
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx,
                                   Method method, const Request& req,
                                   const absl::Status& why);

  core::Repository* repo_;
  Executor* executor_;
  const AccessPolicy* access_;
  const ResourceGuards guards_;
  Metrics* metrics_;
  std::atomic<bool> draining_{false};
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_CHECKPOINT_SERVICE_H_
