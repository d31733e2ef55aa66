#include "server/service/checkpoint_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/error_reason.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/service/blob_cursor.h"
#include "server/service/rpc_scope.h"
#include "server/service/status_mapping.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

absl::Status BusyError() {
  return WithReason(absl::ResourceExhaustedError(
                        "ckptd is busy: too many queued requests; retry "
                        "with backoff"),
                    v1::SERVER_BUSY);
}

// ---------------------------------------------------------------------------
// UploadBlobs: chunks of blobs, each blob's chunks in order. One chunk is in
// memory per stream, and only while the stream holds a slot of the in-flight
// budget: the write happens on the executor, then the chunk's memory and
// slot go back, and the next read is asked for once a slot is free again.
// Each blob's remaining bytes are reserved with the disk watermark before
// the first of them is written.
class UploadReactor final
    : public ScopedReactor<grpc::ServerReadReactor<v1::UploadChunk>> {
 public:
  UploadReactor(CheckpointService* service, grpc::CallbackServerContext* ctx,
                v1::UploadBlobsResponse* resp)
      : ScopedReactor(ctx, Method::kUploadBlobs, service->metrics()),
        service_(service),
        ctx_(ctx),
        resp_(resp),
        slot_(service->guards().budget, kStreamSlotBytes) {
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // End of the client's stream (or a cancelled call).
      slot_.Release();
      service_->executor()->Submit([this] { FinishStream(); });
      return;
    }
    service_->executor()->Submit([this] {
      absl::Status st = HandleChunk();
      std::string().swap(*chunk_.mutable_data());  // frees it, unlike clear()
      slot_.Release();
      if (!st.ok()) {
        if (upload_) upload_.reset();  // suspends: resumable
        reservation_.Reset();
        Finish(ToGrpcStatus(st));
        return;
      }
      ReadNext();
    });
  }

  void OnCancel() override {
    // While the stream waits for a slot no read is pending to end the call.
    if (slot_.CancelWait()) {
      service_->executor()->Submit([this] { FinishStream(); });
    }
  }

  void OnDone() override { delete this; }

 private:
  void ReadNext() {
    if (ctx_->IsCancelled()) {
      service_->executor()->Submit([this] { FinishStream(); });
      return;
    }
    slot_.Acquire([this] { StartRead(&chunk_); });
  }

  absl::Status HandleChunk() {
    scope().AddReceived(chunk_.ByteSizeLong());
    if (!started_) {
      scope().Describe(chunk_);
      if (service_->draining()) {
        return DrainingError();
      }
      run_ = chunk_.run();
      version_ = chunk_.version();
      CKPTD_ASSIGN_OR_RETURN(Principal caller,
                             scope().Authorize(service_->access(), run_));
      actor_ = service_->ActorOf(caller);
      CKPTD_RETURN_IF_ERROR(service_->repo()->CheckPending(run_, version_));
      started_ = true;
    } else if ((!chunk_.run().empty() && chunk_.run() != run_) ||
               (chunk_.version() != 0 && chunk_.version() != version_)) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk names ", chunk_.run(), "@", chunk_.version(),
                       " but this stream uploads for ", run_, "@", version_,
                       "; use one stream per version"));
    }
    CKPTD_ASSIGN_OR_RETURN(Digest digest, DigestFromBytes(chunk_.digest()));
    const std::string& data = chunk_.data();
    if (data.size() > core::kMaxUploadChunk) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk of ", data.size(), " bytes exceeds the limit of ",
                       core::kMaxUploadChunk, "; send 1-4 MiB chunks"));
    }
    if (ChunkChecksum(data.data(), data.size()) != chunk_.checksum()) {
      return absl::DataLossError(
          absl::StrCat("chunk checksum mismatch for blob ", digest.Hex(),
                       " at offset ", chunk_.offset(),
                       ": the bytes were damaged in transit; resend from "
                       "the offset QueryUpload reports"));
    }
    if (upload_ == nullptr || upload_->digest() != digest) {
      if (upload_ != nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "blob ", upload_->digest().Hex(), " ended at byte ",
            upload_->received(), " of ", upload_->blob_size(), " before blob ",
            digest.Hex(), " began; send each blob's chunks contiguously"));
      }
      CKPTD_ASSIGN_OR_RETURN(
          upload_, service_->repo()->StartBlobUpload(run_, version_, digest,
                                                     chunk_.blob_size(),
                                                     chunk_.offset(), actor_));
      if (DiskWatermark* disk = service_->guards().watermark) {
        // Refused before the blob's first byte is written (after the
        // checks of the blob itself, whose errors say more).
        const uint64_t left = chunk_.blob_size() > chunk_.offset()
                                  ? chunk_.blob_size() - chunk_.offset()
                                  : 0;
        CKPTD_ASSIGN_OR_RETURN(
            reservation_,
            disk->Reserve(
                left, absl::StrCat("the upload of blob ", digest.Hex(), " for ",
                                   run_, "@", version_)));
      }
    }
    CKPTD_RETURN_IF_ERROR(upload_->Append(chunk_.offset(), data));
    reservation_.Consume(data.size());
    resp_->set_bytes_received(resp_->bytes_received() + data.size());
    if (upload_->complete()) {
      reservation_.Reset();
      std::unique_ptr<core::BlobUpload> done = std::move(upload_);
      CKPTD_RETURN_IF_ERROR(done->Finish());
      v1::BlobInfo* info = resp_->add_blobs();
      info->set_digest(std::string(digest.AsBytes()));
      info->set_size(done->blob_size());
    }
    return absl::OkStatus();
  }

  void FinishStream() {
    if (upload_ != nullptr) {
      std::string message = absl::StrCat(
          "stream ended inside blob ", upload_->digest().Hex(), " at byte ",
          upload_->received(), " of ", upload_->blob_size(),
          "; the received bytes are kept: resume at the offset QueryUpload "
          "reports");
      upload_.reset();  // suspends for resume
      reservation_.Reset();
      Finish(grpc::Status(grpc::StatusCode::ABORTED, message));
      return;
    }
    scope().AddSent(resp_->ByteSizeLong());
    Finish(grpc::Status::OK);
  }

  CheckpointService* service_;
  grpc::CallbackServerContext* ctx_;
  v1::UploadBlobsResponse* resp_;
  v1::UploadChunk chunk_;
  bool started_ = false;
  std::string run_;
  core::Actor actor_;
  uint64_t version_ = 0;
  std::unique_ptr<core::BlobUpload> upload_;
  DiskWatermark::Reservation reservation_;  // upload_'s bytes yet to write
  BudgetSlot slot_;                         // held while chunk_ is in use
};

// ---------------------------------------------------------------------------
// Server-streaming of blob bytes: a prologue on the executor builds a
// BlobCursor, then each chunk is read on the executor and written; the next
// read starts when the write is done (one chunk in memory per call, and only
// while the call holds a slot of the in-flight budget).
template <typename Message>
class StreamingReadReactor
    : public ScopedReactor<grpc::ServerWriteReactor<Message>> {
 public:
  StreamingReadReactor(CheckpointService* service,
                       grpc::CallbackServerContext* ctx, Method method)
      : ScopedReactor<grpc::ServerWriteReactor<Message>>(ctx, method,
                                                         service->metrics()),
        service_(service),
        slot_(service->guards().budget, kStreamSlotBytes) {}

  void OnWriteDone(bool ok) override {
    std::string().swap(*message_.mutable_data());  // frees it, unlike Clear()
    slot_.Release();
    if (!ok) {
      this->Finish(
          grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    NextWhenSlotIsFree();
  }

  void OnCancel() override {
    // While the call waits for a slot nothing else would end it.
    if (slot_.CancelWait()) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
  }

  void OnDone() override {
    // Releasing the lease may delete blobs: not on a reaction thread.
    if (lease_ != nullptr) {
      std::shared_ptr<core::ReadLease> lease = std::move(lease_);
      service_->executor()->Submit([lease]() mutable { lease.reset(); });
    }
    delete this;
  }

 protected:
  // Runs Prepare() on the executor, then streams.
  void Begin() {
    service_->executor()->Submit([this] {
      absl::Status st = Prepare();
      if (!st.ok()) {
        this->Finish(ToGrpcStatus(st));
        return;
      }
      NextWhenSlotIsFree();
    });
  }
  // Sets cursor_ (and may queue a first message in message_ by returning
  // with has_prologue_ set).
  virtual absl::Status Prepare() = 0;
  // Moves the chunk's bytes into message_.
  virtual void Fill(const BlobCursor::Chunk& chunk, std::string bytes) = 0;

  CheckpointService* service_;
  // The version's blobs stay pinned against GC until the call is done.
  std::unique_ptr<core::ReadLease> lease_;
  std::unique_ptr<BlobCursor> cursor_;
  Message message_;
  bool has_prologue_ = false;
  BudgetSlot slot_;  // held while message_ holds bytes

 private:
  void NextWhenSlotIsFree() {
    slot_.Acquire([this] { service_->executor()->Submit([this] { Next(); }); });
  }

  void Next() {
    if (has_prologue_) {
      has_prologue_ = false;
      this->scope().AddSent(message_.ByteSizeLong());
      this->StartWrite(&message_);
      return;
    }
    std::string bytes;
    auto chunk = cursor_->Next(&bytes);
    if (!chunk.ok()) {
      this->Finish(ToGrpcStatus(chunk.status()));
      return;
    }
    if (!chunk->has_value()) {
      this->Finish(grpc::Status::OK);
      return;
    }
    message_.Clear();
    Fill(**chunk, std::move(bytes));
    this->scope().AddSent(message_.ByteSizeLong());
    this->StartWrite(&message_);
  }
};

// ReadBlobs: ranges of blobs that a committed version references.
class ReadReactor final : public StreamingReadReactor<v1::ReadChunk> {
 public:
  ReadReactor(CheckpointService* service, grpc::CallbackServerContext* ctx,
              const v1::ReadBlobsRequest* req)
      : StreamingReadReactor(service, ctx, Method::kReadBlobs), req_(req) {
    scope().Describe(*req);
    scope().AddReceived(req->ByteSizeLong());
    Begin();
  }

 private:
  absl::Status Prepare() override {
    CKPTD_RETURN_IF_ERROR(
        scope().Authorize(service_->access(), req_->run()).status());
    CKPTD_ASSIGN_OR_RETURN(
        lease_, service_->repo()->LeaseForRead(req_->run(), req_->version()));
    std::vector<core::BlobSlice> slices;
    for (const v1::BlobRange& r : req_->ranges()) {
      CKPTD_ASSIGN_OR_RETURN(Digest d, DigestFromBytes(r.digest()));
      if (!lease_->Contains(d)) {
        return absl::NotFoundError(absl::StrCat("blob ", d.Hex(),
                                                " is not part of ", req_->run(),
                                                "@", req_->version()));
      }
      slices.push_back({d, r.offset(), r.length()});
    }
    const uint64_t chunk_size =
        req_->chunk_size() == 0
            ? kDefaultReadChunk
            : std::min<uint64_t>(req_->chunk_size(), core::kMaxUploadChunk);
    cursor_ = std::make_unique<BlobCursor>(lease_.get(), std::move(slices),
                                           chunk_size);
    return absl::OkStatus();
  }

  void Fill(const BlobCursor::Chunk& chunk, std::string bytes) override {
    message_.set_range_index(static_cast<uint32_t>(chunk.slice));
    message_.set_offset(chunk.offset);
    message_.set_checksum(ChunkChecksum(bytes.data(), bytes.size()));
    *message_.mutable_data() = std::move(bytes);
  }

  const v1::ReadBlobsRequest* req_;
};

// ExportSafetensors: the header, then every selected tensor's bytes.
class ExportReactor final : public StreamingReadReactor<v1::ExportChunk> {
 public:
  ExportReactor(CheckpointService* service, grpc::CallbackServerContext* ctx,
                const v1::ExportSafetensorsRequest* req)
      : StreamingReadReactor(service, ctx, Method::kExportSafetensors),
        req_(req) {
    scope().Describe(*req);
    scope().AddReceived(req->ByteSizeLong());
    Begin();
  }

 private:
  absl::Status Prepare() override {
    CKPTD_RETURN_IF_ERROR(
        scope().Authorize(service_->access(), req_->run()).status());
    v1::GetVersionRequest get;
    get.set_run(req_->run());
    get.set_ref(req_->ref());
    get.set_include_manifest(true);
    get.add_ranks(req_->rank());
    CKPTD_ASSIGN_OR_RETURN(v1::GetVersionResponse version,
                           service_->repo()->GetVersion(get));
    if (version.shards_size() != 1) {
      return absl::NotFoundError(
          absl::StrCat(req_->run(), "@", version.info().version(),
                       " has no shard of rank ", req_->rank()));
    }
    CKPTD_ASSIGN_OR_RETURN(lease_, service_->repo()->LeaseForRead(
                                       req_->run(), version.info().version()));
    std::vector<std::string> keys(req_->keys().begin(), req_->keys().end());
    CKPTD_ASSIGN_OR_RETURN(
        core::SafetensorsPlan plan,
        core::PlanSafetensors(version.info(), version.shards(0), keys));
    message_.set_total_size(plan.total_size);
    *message_.mutable_data() = std::move(plan.header);
    has_prologue_ = true;
    cursor_ = std::make_unique<BlobCursor>(lease_.get(), std::move(plan.slices),
                                           kDefaultReadChunk);
    // A damaged tensor fails the export before its header is sent.
    return cursor_->CheckIntact();
  }

  void Fill(const BlobCursor::Chunk&, std::string bytes) override {
    *message_.mutable_data() = std::move(bytes);
  }

  const v1::ExportSafetensorsRequest* req_;
};

// ---------------------------------------------------------------------------
// WatchRef: the current target first, then one event per move.
class WatchReactor final
    : public ScopedReactor<grpc::ServerWriteReactor<v1::WatchRefEvent>> {
 public:
  WatchReactor(CheckpointService* service, grpc::CallbackServerContext* ctx,
               const v1::WatchRefRequest* req)
      : ScopedReactor(ctx, Method::kWatchRef, service->metrics()),
        service_(service),
        req_(req) {
    scope().Describe(*req);
    scope().AddReceived(req->ByteSizeLong());
    service_->executor()->Submit([this] { Begin(); });
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      Close(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    MaybeWrite();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    // Before Begin() has run, it closes the call itself: OnDone must not
    // delete the reactor under a running Begin().
    if (begun_) {
      Close(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
    }
  }

  void OnDone() override {
    if (watch_id_ != 0) service_->repo()->Unwatch(watch_id_);
    delete this;
  }

 private:
  void Begin() {
    auto ref = ParseRef(req_->ref());
    absl::Status st =
        scope().Authorize(service_->access(), req_->run()).status();
    if (st.ok()) st = ValidateRunName(req_->run());
    if (st.ok() && !ref.ok()) st = ref.status();
    if (st.ok() && std::holds_alternative<uint64_t>(ref->value)) {
      st = absl::InvalidArgumentError(
          "WatchRef needs an alias (last, best or a user alias), not a "
          "version number: versions never move");
    }
    if (!st.ok()) {
      absl::MutexLock lock(&mu_);
      begun_ = true;
      Close(ToGrpcStatus(st));
      return;
    }
    std::optional<v1::VersionInfo> current;
    absl::StatusOr<uint64_t> id = service_->repo()->Watch(
        req_->run(), req_->ref(),
        [this](const v1::VersionInfo& v) {
          absl::MutexLock lock(&mu_);
          if (closed_) return;
          v1::WatchRefEvent e;
          *e.mutable_version() = v;
          queue_.push_back(std::move(e));
          MaybeWrite();
        },
        &current);
    absl::MutexLock lock(&mu_);
    begun_ = true;
    if (!id.ok()) {
      Close(ToGrpcStatus(id.status()));
      return;
    }
    watch_id_ = *id;
    if (cancelled_) {
      Close(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      return;
    }
    // Moves notified since registration (queued, not yet written: see
    // MaybeWrite) are newer than `current`.
    if (current.has_value()) {
      v1::WatchRefEvent e;
      *e.mutable_version() = *std::move(current);
      queue_.push_front(std::move(e));
    }
    MaybeWrite();
  }

  void MaybeWrite() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!begun_ || writing_ || closed_ || queue_.empty()) return;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    scope().AddSent(current_.ByteSizeLong());
    StartWrite(&current_);
  }

  void Close(grpc::Status st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (closed_) return;
    closed_ = true;
    Finish(std::move(st));
  }

  CheckpointService* service_;
  const v1::WatchRefRequest* req_;
  absl::Mutex mu_;
  std::deque<v1::WatchRefEvent> queue_ ABSL_GUARDED_BY(mu_);
  v1::WatchRefEvent current_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool begun_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t watch_id_ = 0;
};

}  // namespace

CheckpointService::CheckpointService(core::Repository* repo, Executor* executor,
                                     const AccessPolicy* access,
                                     ResourceGuards guards, Metrics* metrics)
    : repo_(repo),
      executor_(executor),
      access_(access),
      guards_(guards),
      metrics_(metrics) {}

absl::Status DrainingError() {
  return WithReason(absl::UnavailableError("ckptd is shutting down; retry "
                                           "against the restarted server"),
                    v1::SERVER_DRAINING);
}

core::Actor CheckpointService::ActorOf(const Principal& caller) const {
  core::Actor actor;
  actor.name = caller.identity;
  actor.admin = caller.role == Role::kAdmin;
  if (access_->enabled()) {
    actor.writes = [patterns = caller](absl::string_view run) {
      return patterns.MayTouchRun(run);
    };
  }
  return actor;
}

template <typename Request, typename Fn>
grpc::ServerUnaryReactor* CheckpointService::Unary(
    grpc::CallbackServerContext* ctx, Method method, const Request& req,
    const google::protobuf::Message* resp, absl::string_view run, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto scope = std::make_shared<RpcScope>(ctx, method, metrics_);
  scope->Describe(req);
  scope->AddReceived(req.ByteSizeLong());
  // The call's end: log and count, then reply (ctx, req and resp are gone
  // after Finish).
  auto finish = [reactor, scope, resp](const absl::Status& result) {
    grpc::Status status = ToGrpcStatus(result);
    if (status.ok()) scope->AddSent(resp->ByteSizeLong());
    scope->SetStatus(status);
    scope->End();
    reactor->Finish(std::move(status));
  };
  absl::StatusOr<Principal> caller = scope->Authorize(*access_, run);
  if (!caller.ok()) {
    finish(caller.status());
    return reactor;
  }
  if (!executor_->TrySubmit(
          [finish, caller = *std::move(caller), fn = std::move(fn)]() mutable {
            finish(fn(caller));
          })) {
    finish(BusyError());
  }
  return reactor;
}

template <typename Request>
grpc::ServerUnaryReactor* CheckpointService::Refuse(
    grpc::CallbackServerContext* ctx, Method method, const Request& req,
    const absl::Status& why) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  RpcScope scope(ctx, method, metrics_);
  scope.Describe(req);
  scope.AddReceived(req.ByteSizeLong());
  grpc::Status status = ToGrpcStatus(why);
  scope.SetStatus(status);
  scope.End();
  reactor->Finish(std::move(status));
  return reactor;
}

// Runs `expr` (a StatusOr) and stores its value in *resp.
// `caller` (the authorized Principal) is in scope in `expr`.
#define CKPTD_UNARY(method, run, expr)                       \
  Unary(ctx, Method::method, *req, resp, run,                \
        [=, this](const Principal& caller) -> absl::Status { \
          (void)caller;                                      \
          auto result = (expr);                              \
          if (!result.ok()) return result.status();          \
          *resp = std::move(*result);                        \
          return absl::OkStatus();                           \
        })

grpc::ServerUnaryReactor* CheckpointService::BeginVersion(
    grpc::CallbackServerContext* ctx, const v1::BeginVersionRequest* req,
    v1::BeginVersionResponse* resp) {
  if (draining()) {
    return Refuse(ctx, Method::kBeginVersion, *req, DrainingError());
  }
  return Unary(
      ctx, Method::kBeginVersion, *req, resp, req->run(),
      [=, this](const Principal& caller) -> absl::Status {
        if (guards_.watermark != nullptr) {
          CKPTD_RETURN_IF_ERROR(guards_.watermark->CheckBegin(absl::StrCat(
              "BeginVersion of ", req->run(), " step ", req->step())));
        }
        CKPTD_ASSIGN_OR_RETURN(*resp,
                               repo_->BeginVersion(*req, ActorOf(caller)));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::FindMissingBlobs(
    grpc::CallbackServerContext* ctx, const v1::FindMissingBlobsRequest* req,
    v1::FindMissingBlobsResponse* resp) {
  // Dedup only against the runs the caller may write.
  return CKPTD_UNARY(
      kFindMissingBlobs, req->run(),
      repo_->FindMissingBlobs(*req, [caller](absl::string_view run) {
        return caller.MayTouchRun(run);
      }));
}

grpc::ServerReadReactor<v1::UploadChunk>* CheckpointService::UploadBlobs(
    grpc::CallbackServerContext* ctx, v1::UploadBlobsResponse* resp) {
  return new UploadReactor(this, ctx, resp);
}

grpc::ServerUnaryReactor* CheckpointService::QueryUpload(
    grpc::CallbackServerContext* ctx, const v1::QueryUploadRequest* req,
    v1::QueryUploadResponse* resp) {
  return CKPTD_UNARY(kQueryUpload, req->run(), repo_->QueryUpload(*req));
}

grpc::ServerUnaryReactor* CheckpointService::CommitShard(
    grpc::CallbackServerContext* ctx, const v1::CommitShardRequest* req,
    v1::CommitShardResponse* resp) {
  return Unary(ctx, Method::kCommitShard, *req, resp, req->run(),
               [=, this](const Principal& caller) -> absl::Status {
                 CKPTD_ASSIGN_OR_RETURN(
                     *resp->mutable_version(),
                     repo_->CommitShard(*req, ActorOf(caller)));
                 return absl::OkStatus();
               });
}

grpc::ServerUnaryReactor* CheckpointService::AbortVersion(
    grpc::CallbackServerContext* ctx, const v1::AbortVersionRequest* req,
    v1::AbortVersionResponse* resp) {
  return Unary(ctx, Method::kAbortVersion, *req, resp, req->run(),
               [=, this](const Principal& caller) {
                 return repo_->AbortVersion(*req, ActorOf(caller));
               });
}

grpc::ServerUnaryReactor* CheckpointService::GetVersion(
    grpc::CallbackServerContext* ctx, const v1::GetVersionRequest* req,
    v1::GetVersionResponse* resp) {
  return CKPTD_UNARY(kGetVersion, req->run(), repo_->GetVersion(*req));
}

grpc::ServerWriteReactor<v1::ReadChunk>* CheckpointService::ReadBlobs(
    grpc::CallbackServerContext* ctx, const v1::ReadBlobsRequest* req) {
  return new ReadReactor(this, ctx, req);
}

grpc::ServerWriteReactor<v1::ExportChunk>* CheckpointService::ExportSafetensors(
    grpc::CallbackServerContext* ctx, const v1::ExportSafetensorsRequest* req) {
  return new ExportReactor(this, ctx, req);
}

grpc::ServerWriteReactor<v1::WatchRefEvent>* CheckpointService::WatchRef(
    grpc::CallbackServerContext* ctx, const v1::WatchRefRequest* req) {
  return new WatchReactor(this, ctx, req);
}

grpc::ServerUnaryReactor* CheckpointService::ListRuns(
    grpc::CallbackServerContext* ctx, const v1::ListRunsRequest* req,
    v1::ListRunsResponse* resp) {
  return Unary(ctx, Method::kListRuns, *req, resp, "",
               [=, this](const Principal& caller) -> absl::Status {
                 CKPTD_ASSIGN_OR_RETURN(v1::ListRunsResponse all,
                                        repo_->ListRuns());
                 // Only the runs the caller may read.
                 for (v1::RunInfo& run : *all.mutable_runs()) {
                   if (caller.MayTouchRun(run.name())) {
                     *resp->add_runs() = std::move(run);
                   }
                 }
                 return absl::OkStatus();
               });
}

grpc::ServerUnaryReactor* CheckpointService::ListVersions(
    grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
    v1::ListVersionsResponse* resp) {
  return CKPTD_UNARY(kListVersions, req->run(), repo_->ListVersions(*req));
}

grpc::ServerUnaryReactor* CheckpointService::GetMetricHistory(
    grpc::CallbackServerContext* ctx, const v1::GetMetricHistoryRequest* req,
    v1::GetMetricHistoryResponse* resp) {
  return CKPTD_UNARY(kGetMetricHistory, req->run(),
                     repo_->GetMetricHistory(*req));
}

grpc::ServerUnaryReactor* CheckpointService::SetAlias(
    grpc::CallbackServerContext* ctx, const v1::SetAliasRequest* req,
    v1::AliasInfo* resp) {
  return CKPTD_UNARY(kSetAlias, req->run(),
                     repo_->SetAlias(*req, ActorOf(caller)));
}

grpc::ServerUnaryReactor* CheckpointService::DeleteAlias(
    grpc::CallbackServerContext* ctx, const v1::DeleteAliasRequest* req,
    v1::DeleteAliasResponse* resp) {
  return Unary(ctx, Method::kDeleteAlias, *req, resp, req->run(),
               [=, this](const Principal& caller) {
                 return repo_->DeleteAlias(*req, ActorOf(caller));
               });
}

grpc::ServerUnaryReactor* CheckpointService::GetAliasHistory(
    grpc::CallbackServerContext* ctx, const v1::GetAliasHistoryRequest* req,
    v1::GetAliasHistoryResponse* resp) {
  return CKPTD_UNARY(kGetAliasHistory, req->run(),
                     repo_->GetAliasHistory(*req));
}

grpc::ServerUnaryReactor* CheckpointService::Pin(
    grpc::CallbackServerContext* ctx, const v1::PinRequest* req,
    v1::VersionInfo* resp) {
  return CKPTD_UNARY(kPin, req->run(),
                     repo_->SetPinned(*req, true, ActorOf(caller)));
}

grpc::ServerUnaryReactor* CheckpointService::Unpin(
    grpc::CallbackServerContext* ctx, const v1::PinRequest* req,
    v1::VersionInfo* resp) {
  return CKPTD_UNARY(kUnpin, req->run(),
                     repo_->SetPinned(*req, false, ActorOf(caller)));
}

grpc::ServerUnaryReactor* CheckpointService::DeleteVersion(
    grpc::CallbackServerContext* ctx, const v1::DeleteVersionRequest* req,
    v1::DeleteVersionResponse* resp) {
  return Unary(ctx, Method::kDeleteVersion, *req, resp, req->run(),
               [=, this](const Principal& caller) {
                 return repo_->DeleteVersion(*req, ActorOf(caller));
               });
}

grpc::ServerUnaryReactor* CheckpointService::SetPolicy(
    grpc::CallbackServerContext* ctx, const v1::SetPolicyRequest* req,
    v1::Policy* resp) {
  return CKPTD_UNARY(kSetPolicy, req->run(),
                     repo_->SetPolicy(*req, ActorOf(caller)));
}

grpc::ServerUnaryReactor* CheckpointService::GetPolicy(
    grpc::CallbackServerContext* ctx, const v1::GetPolicyRequest* req,
    v1::Policy* resp) {
  return CKPTD_UNARY(kGetPolicy, req->run(), repo_->GetPolicy(*req));
}

grpc::ServerUnaryReactor* CheckpointService::CollectGarbage(
    grpc::CallbackServerContext* ctx, const v1::CollectGarbageRequest* req,
    v1::CollectGarbageResponse* resp) {
  return CKPTD_UNARY(kCollectGarbage, "",
                     repo_->CollectGarbage(ActorOf(caller)));
}

grpc::ServerUnaryReactor* CheckpointService::Verify(
    grpc::CallbackServerContext* ctx, const v1::VerifyRequest* req,
    v1::VerifyResponse* resp) {
  return CKPTD_UNARY(kVerify, req->run(), repo_->Verify(*req));
}

grpc::ServerUnaryReactor* CheckpointService::GetAuditLog(
    grpc::CallbackServerContext* ctx, const v1::GetAuditLogRequest* req,
    v1::GetAuditLogResponse* resp) {
  return CKPTD_UNARY(kGetAuditLog, req->run(), repo_->GetAuditLog(*req));
}

grpc::ServerUnaryReactor* CheckpointService::Backup(
    grpc::CallbackServerContext* ctx, const v1::BackupRequest* req,
    v1::BackupResponse* resp) {
  if (draining()) {
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(DrainingError()));
    return reactor;
  }
  // A client that goes away (or its deadline, or the shutdown grace
  // running out) stops the backup between blobs.
  return CKPTD_UNARY(kBackup, "", repo_->Backup(*req, ActorOf(caller), [ctx] {
    return ctx->IsCancelled();
  }));
}

#undef CKPTD_UNARY

}  // namespace ckptd::service
