#include "server/service/local_data_plane.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "proto/base/error_reason.h"
#include "proto/base/local_frame.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/common/pause_point.h"
#include "server/core/staged_commit.h"
#include "server/service/local_socket.h"
#include "server/storage/blob_format.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

// Digests one map request may name: their descriptors travel in one frame.
constexpr int kMaxMapDigests = static_cast<int>(kMaxLocalFrameFds);
// A reply the client does not read within this ends its connection, so no
// client holds a connection thread (or Stop()) longer.
constexpr absl::Duration kSendTimeout = absl::Seconds(10);
// From the staged memory's hand-over to the commit request: a client that
// does not commit within this loses the stage (and its share of
// --max_staged_bytes goes back).
constexpr absl::Duration kStageDeadline = absl::Minutes(2);
// After a co-located save commits, the daemon prepares memory of its size
// for the next one (a memfd with its pages allocated): the next save then
// only copies, instead of also allocating every page while the trainer
// waits. Unused for this long, it is freed.
constexpr absl::Duration kSpareIdle = absl::Minutes(10);

// SO_SNDTIMEO / SO_RCVTIMEO; zero: none.
void SetTimeout(int fd, int which, absl::Duration d) {
  const int64_t total = absl::ToInt64Microseconds(d);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(total / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(total % 1000000);
  (void)::setsockopt(fd, SOL_SOCKET, which, &tv, sizeof(tv));
}

v1::LocalReply ErrorReply(const absl::Status& st) {
  v1::LocalReply reply;
  *reply.mutable_status() = ToRpcStatus(st);
  return reply;
}

// The caller of `req` (its token, as gRPC's `authorization: Bearer`),
// allowed to call `method` on `run` (access.h).
absl::StatusOr<Principal> Authorize(const AccessPolicy& access,
                                    const v1::LocalRequest& req, Method method,
                                    absl::string_view run) {
  if (req.token().empty()) {
    return access.Authorize(std::nullopt, nullptr, method, run);
  }
  const std::string token_header = absl::StrCat("Bearer ", req.token());
  return access.Authorize(absl::string_view(token_header), nullptr, method,
                          run);
}

}  // namespace

std::string LocalDataSocketPath(absl::string_view local_socket) {
  return absl::StrCat(local_socket, ".data");
}

class LocalDataPlane::Impl {
 public:
  Impl(LocalDataPlaneOptions options, CheckpointService* service,
       DiskWatermark* watermark)
      : options_(std::move(options)),
        service_(service),
        watermark_(watermark) {}

  ~Impl() { Stop(); }

  absl::Status Bind();
  void Run() {
    acceptor_ = std::thread([this] { AcceptLoop(); });
    worker_ = std::thread([this] { WorkLoop(); });
  }
  void Stop();
  const std::string& path() const { return file_.path(); }
  uint64_t staged_bytes() const {
    absl::MutexLock lock(&mu_);
    return staged_;
  }

 private:
  // A memfd staged for one connection, with its share of the budget.
  struct Stage {
    UniqueFd memfd;
    uint64_t bytes = 0;
    bool from_spare = false;
  };
  // A memfd with its pages allocated, for the next stage of its size.
  struct Spare {
    UniqueFd memfd;
    uint64_t bytes = 0;
    absl::Time made;
  };

  void AcceptLoop();
  void Serve(int fd);
  // One request; false ends the connection.
  bool Handle(int fd, const v1::LocalRequest& req, std::optional<Stage>* stage);
  v1::LocalReply Map(const v1::LocalRequest& req, std::vector<UniqueFd>* fds);
  absl::StatusOr<Stage> TakeStage(const v1::LocalRequest& req);
  void ReleaseStage(Stage& stage);
  // Seals and commits `stage`; sends `staged` then the final reply on fd.
  void Commit(int fd, const v1::LocalRequest& req, Stage stage);
  void WorkLoop();
  // Queues the preparation of a spare of `bytes` (after a commit).
  void PrepareSpare(uint64_t bytes);
  // Takes the spare out of the accounting; the caller closes it outside
  // the lock.
  std::optional<Spare> TakeSpareLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a spare unused for kSpareIdle.
  void ExpireSpare();

  const LocalDataPlaneOptions options_;
  CheckpointService* const service_;
  DiskWatermark* const watermark_;
  UniqueFd listener_;
  UniqueFd wake_read_, wake_write_;  // a pipe that ends poll() at Stop
  LocalSocketFile file_;
  std::thread acceptor_;
  std::thread worker_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t staged_ ABSL_GUARDED_BY(mu_) = 0;
  struct Connection {
    int fd;
    std::thread thread;
    bool done = false;
  };
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  // Memory prepared for the next save of the size last committed
  // (kSpareIdle): counted in staged_ and the metric like a stage.
  std::optional<Spare> spare_ ABSL_GUARDED_BY(mu_);
  bool worker_exit_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status LocalDataPlane::Impl::Bind() {
  CKPTD_RETURN_IF_ERROR(CheckLocalSocketPath(options_.path));
  CKPTD_RETURN_IF_ERROR(ClearLocalSocketPath(options_.path));
  listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener_.valid()) {
    return ErrnoToStatus(errno, "socket for the co-located data plane");
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, options_.path.data(), options_.path.size());
  {
    const LocalSocketUmask umask;  // 0600 until published
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr),
               sizeof(addr)) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("bind ", options_.path));
    }
  }
  if (::listen(listener_.get(), 64) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("listen on ", options_.path));
  }
  CKPTD_ASSIGN_OR_RETURN(file_, LocalSocketFile::Publish(options_.path));
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return ErrnoToStatus(errno, "pipe for the co-located data plane");
  }
  wake_read_.reset(pipe_fds[0]);
  wake_write_.reset(pipe_fds[1]);
  return absl::OkStatus();
}

void LocalDataPlane::Impl::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0},
                     {wake_read_.get(), POLLIN, 0}};
    ExpireSpare();
    const int ready = ::poll(fds, 2, 60 * 1000);
    if (ready == 0) continue;
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::error("co-located data plane: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      spdlog::warn("co-located data plane: accept: {}", std::strerror(errno));
      absl::SleepFor(absl::Milliseconds(50));  // EMFILE and the like
      continue;
    }
    absl::MutexLock lock(&mu_);
    // Join the connections that ended.
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (it->done) {
        it->thread.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_ ||
        connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      spdlog::warn(
          "co-located data plane: refusing a connection ({} open, the "
          "limit)",
          connections_.size());
      SetTimeout(fd, SO_SNDTIMEO, absl::Seconds(1));
      (void)SendLocalFrame(
          fd, ErrorReply(WithReason(
                  absl::ResourceExhaustedError(
                      "ckptd has too many co-located connections open; "
                      "retry with backoff"),
                  v1::SERVER_BUSY)));
      ::close(fd);
      continue;
    }
    connections_.push_back(Connection{fd, {}, false});
    Connection* c = &connections_.back();
    c->thread = std::thread([this, c] {
      Serve(c->fd);
      absl::MutexLock lock(&mu_);
      ::close(c->fd);
      c->fd = -1;
      c->done = true;
    });
  }
}

void LocalDataPlane::Impl::Serve(int fd) {
  ucred peer{};
  socklen_t len = sizeof(peer);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0) {
    spdlog::debug("co-located data plane: connection from pid {} uid {}",
                  peer.pid, peer.uid);
  }
  SetTimeout(fd, SO_SNDTIMEO, kSendTimeout);
  std::optional<Stage> stage;
  for (;;) {
    // Requests carry no descriptors: none are accepted (installed), so a
    // client cannot fill the daemon's descriptor table.
    SetTimeout(fd, SO_RCVTIMEO,
               stage.has_value() ? kStageDeadline : absl::ZeroDuration());
    v1::LocalRequest req;
    absl::Status st = RecvLocalFrame(fd, &req, nullptr);
    if (absl::IsDeadlineExceeded(st)) {
      spdlog::warn(
          "co-located data plane: staged memory handed out {} ago was not "
          "committed; dropping it",
          absl::FormatDuration(kStageDeadline));
      break;
    }
    if (!st.ok()) {
      if (!absl::IsUnavailable(st)) {
        (void)SendLocalFrame(fd, ErrorReply(st));
      }
      break;
    }
    if (!Handle(fd, req, &stage)) break;
  }
  if (stage.has_value()) ReleaseStage(*stage);
}

bool LocalDataPlane::Impl::Handle(int fd, const v1::LocalRequest& req,
                                  std::optional<Stage>* stage) {
  switch (req.op_case()) {
    case v1::LocalRequest::kMap: {
      std::vector<UniqueFd> fds;
      v1::LocalReply reply = Map(req, &fds);
      std::vector<int> raw;
      for (const UniqueFd& f : fds) raw.push_back(f.get());
      return SendLocalFrame(fd, reply, raw).ok();
    }
    case v1::LocalRequest::kStage: {
      if (stage->has_value()) {
        return SendLocalFrame(
                   fd, ErrorReply(absl::FailedPreconditionError(
                           "this connection already holds staged memory; "
                           "commit it (or close the connection) first")))
            .ok();
      }
      absl::StatusOr<Stage> s = TakeStage(req);
      if (!s.ok()) return SendLocalFrame(fd, ErrorReply(s.status())).ok();
      v1::LocalReply reply;
      reply.mutable_stage()->set_bytes(s->bytes);
      const int memfd = s->memfd.get();
      *stage = *std::move(s);
      return SendLocalFrame(fd, reply, {&memfd, 1}).ok();
    }
    case v1::LocalRequest::kCommit: {
      if (!stage->has_value()) {
        return SendLocalFrame(
                   fd, ErrorReply(absl::FailedPreconditionError(
                           "nothing is staged on this connection: send a "
                           "stage request (and fill its memory) first")))
            .ok();
      }
      Stage s = std::move(**stage);
      stage->reset();
      Commit(fd, req, std::move(s));
      return true;
    }
    default:
      (void)SendLocalFrame(fd, ErrorReply(absl::InvalidArgumentError(
                                   "a co-located request names no operation "
                                   "(map, stage or commit)")));
      return false;
  }
}

v1::LocalReply LocalDataPlane::Impl::Map(const v1::LocalRequest& req,
                                         std::vector<UniqueFd>* fds) {
  const v1::LocalMapRequest& m = req.map();
  absl::StatusOr<Principal> caller =
      Authorize(service_->access(), req, Method::kReadBlobs, m.run());
  if (!caller.ok()) return ErrorReply(caller.status());
  if (m.digests_size() > kMaxMapDigests) {
    return ErrorReply(absl::InvalidArgumentError(absl::StrCat(
        "a map request names ", m.digests_size(), " blobs; the limit is ",
        kMaxMapDigests, " (send several requests)")));
  }
  absl::StatusOr<std::unique_ptr<core::ReadLease>> lease =
      service_->repo()->LeaseForRead(m.run(), m.version());
  if (!lease.ok()) return ErrorReply(lease.status());
  v1::LocalReply reply;
  v1::LocalMapReply* out = reply.mutable_map();
  for (const std::string& raw : m.digests()) {
    absl::StatusOr<Digest> d = DigestFromBytes(raw);
    if (!d.ok()) return ErrorReply(d.status());
    if (!(*lease)->Contains(*d)) {
      return ErrorReply(absl::NotFoundError(absl::StrCat(
          "blob ", d->Hex(), " is not part of ", m.run(), "@", m.version())));
    }
    absl::StatusOr<std::optional<UniqueFd>> f = (*lease)->OpenStoredFile(*d);
    if (!f.ok()) return ErrorReply(f.status());
    if (!f->has_value()) {
      return ErrorReply(absl::UnimplementedError(
          "this ckptd keeps no blob files on this host (S3 store or read "
          "cache): read over gRPC instead"));
    }
    struct stat st;
    if (::fstat((*f)->get(), &st) != 0) {
      return ErrorReply(ErrnoToStatus(errno, "fstat of a blob"));
    }
    std::optional<uint64_t> data_size =
        storage::DataSizeOfStoredBlob(static_cast<uint64_t>(st.st_size));
    if (!data_size.has_value()) {
      // Cut short or grown: the checked read path quarantines and explains.
      return ErrorReply(absl::UnimplementedError(
          absl::StrCat("blob ", d->Hex(), " of ", m.run(), "@", m.version(),
                       " does not have the size of a stored blob; read it "
                       "over gRPC, which checks it")));
    }
    out->add_data_sizes(*data_size);
    fds->push_back(std::move(**f));
  }
  return reply;
}

absl::StatusOr<LocalDataPlane::Impl::Stage> LocalDataPlane::Impl::TakeStage(
    const v1::LocalRequest& req) {
  const v1::LocalStageRequest& s = req.stage();
  CKPTD_RETURN_IF_ERROR(
      Authorize(service_->access(), req, Method::kUploadBlobs, s.run())
          .status());
  if (service_->draining()) return DrainingError();
  CKPTD_RETURN_IF_ERROR(ValidateRunName(s.run()));
  if (s.bytes() > options_.max_staged_bytes) {
    return WithReason(
        absl::ResourceExhaustedError(absl::StrCat(
            "a co-located save of ", s.bytes(), " bytes (",
            HumanBytes(s.bytes()),
            ") is larger than --max_staged_bytes=", options_.max_staged_bytes,
            " (", HumanBytes(options_.max_staged_bytes),
            "); raise it, or save over gRPC")),
        v1::STAGED_MEMORY_LIMIT);
  }
  std::optional<Spare> dropped;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t want = s.bytes();
    if (spare_.has_value() && spare_->bytes == want && want > 0) {
      // Already counted in staged_ and the metric.
      Stage stage;
      stage.bytes = want;
      stage.memfd = std::move(spare_->memfd);
      stage.from_spare = true;
      spare_.reset();
      return stage;
    }
    const uint64_t max = options_.max_staged_bytes;
    // A spare gives way to a save that needs its memory.
    auto fits = [this, want, max]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      const uint64_t spare = spare_.has_value() ? spare_->bytes : 0;
      return stopping_ || staged_ - spare + want <= max;
    };
    mu_.Await(absl::Condition(&fits));
    if (stopping_) return DrainingError();
    if (staged_ + want > max) dropped = TakeSpareLocked();
    staged_ += want;
  }
  dropped.reset();
  if (service_->metrics() != nullptr) {
    service_->metrics()->AddStagedBytes(static_cast<int64_t>(s.bytes()));
  }
  Stage stage;
  stage.bytes = s.bytes();
  stage.memfd.reset(
      ::memfd_create("ckptd-staged-save", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  absl::Status st;
  if (!stage.memfd.valid()) {
    st = ErrnoToStatus(errno, "memfd_create for a co-located save");
  } else if (::ftruncate(stage.memfd.get(), static_cast<off_t>(stage.bytes)) !=
             0) {
    st = ErrnoToStatus(errno, "sizing the staged memory");
  }
  if (!st.ok()) {
    ReleaseStage(stage);
    return st;
  }
  return stage;
}

void LocalDataPlane::Impl::ReleaseStage(Stage& stage) {
  stage.memfd.reset();
  if (service_->metrics() != nullptr && stage.bytes > 0) {
    service_->metrics()->AddStagedBytes(-static_cast<int64_t>(stage.bytes));
  }
  absl::MutexLock lock(&mu_);
  staged_ -= stage.bytes;
  stage.bytes = 0;
}

void LocalDataPlane::Impl::Commit(int fd, const v1::LocalRequest& req,
                                  Stage stage) {
  const v1::LocalCommitRequest& c = req.commit();
  const std::string& run = c.begin().run();
  auto fail = [&](const absl::Status& st) {
    ReleaseStage(stage);
    (void)SendLocalFrame(fd, ErrorReply(st));
  };
  absl::StatusOr<Principal> caller =
      Authorize(service_->access(), req, Method::kCommitShard, run);
  if (!caller.ok()) return fail(caller.status());
  if (service_->draining()) return fail(DrainingError());
  if (absl::Status st =
          core::CheckStagedLayout(c.shard().manifest(), stage.bytes);
      !st.ok()) {
    return fail(st);
  }
  // From here on nobody can change the bytes: the client unmapped them (a
  // writable mapping left anywhere makes F_SEAL_WRITE fail with EBUSY).
  if (::fcntl(stage.memfd.get(), F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    if (errno == EBUSY) {
      return fail(absl::FailedPreconditionError(
          "the staged memory is still mapped writable; unmap it before "
          "committing"));
    }
    return fail(ErrnoToStatus(errno, "sealing the staged memory"));
  }
  // The size cannot change any more; it must still be what was staged (a
  // client could have shrunk the memfd before the seal, and reading a
  // mapping past the end of the file would fault).
  struct stat st;
  if (::fstat(stage.memfd.get(), &st) != 0) {
    return fail(ErrnoToStatus(errno, "fstat of the staged memory"));
  }
  if (static_cast<uint64_t>(st.st_size) != stage.bytes) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("the staged memory was resized to ", st.st_size,
                     " bytes; it must "
                     "stay the ",
                     stage.bytes, " bytes staged")));
  }
  const char* data = nullptr;
  if (stage.bytes > 0) {
    void* p = ::mmap(nullptr, stage.bytes, PROT_READ, MAP_SHARED,
                     stage.memfd.get(), 0);
    if (p == MAP_FAILED) {
      return fail(ErrnoToStatus(errno, "mapping the staged memory"));
    }
    data = static_cast<const char*>(p);
  }
  auto unmap = [data, bytes = stage.bytes] {
    if (data != nullptr) ::munmap(const_cast<char*>(data), bytes);
  };
  const std::string what =
      absl::StrCat("co-located save of ", run, " step ", c.begin().step());
  std::optional<DiskWatermark::Reservation> reservation;
  if (watermark_ != nullptr) {
    absl::Status st = watermark_->CheckBegin(what);
    absl::StatusOr<DiskWatermark::Reservation> r =
        st.ok() ? watermark_->Reserve(stage.bytes, what)
                : absl::StatusOr<DiskWatermark::Reservation>(st);
    if (!r.ok()) {
      unmap();
      return fail(r.status());
    }
    reservation = *std::move(r);
  }
  const core::Actor actor = service_->ActorOf(*caller);
  absl::StatusOr<v1::BeginVersionResponse> begun =
      service_->repo()->BeginVersion(c.begin(), actor);
  if (!begun.ok()) {
    unmap();
    return fail(begun.status());
  }
  v1::CommitShardRequest shard = c.shard();
  shard.set_run(run);
  shard.set_version(begun->version());
  {
    v1::LocalReply staged;
    staged.mutable_staged()->set_version(begun->version());
    // The client may be gone already: the commit goes on regardless.
    (void)SendLocalFrame(fd, staged);
  }
  absl::Notification done;
  absl::StatusOr<v1::VersionInfo> result;
  const absl::Time start = absl::Now();
  auto job = [&] {
    CKPTD_PAUSE_POINT("staged.before_store");
    result = core::CommitStagedShard(
        *service_->repo(), absl::string_view(data, stage.bytes),
        std::move(shard), actor, [patterns = *caller](absl::string_view r) {
          return patterns.MayTouchRun(r);
        });
    done.Notify();
  };
  {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(job);
  }
  done.WaitForNotification();
  unmap();
  reservation.reset();
  const uint64_t staged_bytes = stage.bytes;
  ReleaseStage(stage);
  if (!result.ok()) {
    spdlog::warn("{}@{}: {} failed: {}", run, begun->version(), what,
                 result.status().ToString());
    if (begun->created() && begun->world_size() <= 1) {
      // Nobody else waits on this version: free what it holds now rather
      // than after --pending_timeout.
      v1::AbortVersionRequest abort;
      abort.set_run(run);
      abort.set_version(begun->version());
      abort.set_reason(
          absl::StrCat(what, " failed: ", result.status().message()));
      (void)service_->repo()->AbortVersion(abort, actor);
    }
    (void)SendLocalFrame(fd, ErrorReply(result.status()));
    return;
  }
  spdlog::info("{}@{}: {} ({} staged{}) stored in {}", run, begun->version(),
               what, HumanBytes(staged_bytes),
               stage.from_spare ? " into prepared memory" : "",
               absl::FormatDuration(absl::Now() - start));
  if (service_->metrics() != nullptr) service_->metrics()->RecordStagedSave();
  PrepareSpare(staged_bytes);
  v1::LocalReply reply;
  *reply.mutable_committed() = *std::move(result);
  (void)SendLocalFrame(fd, reply);
}

std::optional<LocalDataPlane::Impl::Spare>
LocalDataPlane::Impl::TakeSpareLocked() {
  std::optional<Spare> out = std::move(spare_);
  spare_.reset();
  if (out.has_value()) {
    staged_ -= out->bytes;
    if (service_->metrics() != nullptr) {
      service_->metrics()->AddStagedBytes(-static_cast<int64_t>(out->bytes));
    }
  }
  return out;
}

void LocalDataPlane::Impl::PrepareSpare(uint64_t bytes) {
  if (bytes == 0) return;
  absl::MutexLock lock(&mu_);
  jobs_.push_back([this, bytes] {
    std::optional<Spare> old;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      if (spare_.has_value() && spare_->bytes == bytes) {
        spare_->made = absl::Now();
        return;
      }
      old = TakeSpareLocked();
      // Only from memory nobody is waiting for.
      if (staged_ + bytes > options_.max_staged_bytes) return;
      staged_ += bytes;
    }
    old.reset();
    if (service_->metrics() != nullptr) {
      service_->metrics()->AddStagedBytes(static_cast<int64_t>(bytes));
    }
    Spare spare;
    spare.bytes = bytes;
    spare.made = absl::Now();
    spare.memfd.reset(
        ::memfd_create("ckptd-staged-save", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    const bool ok =
        spare.memfd.valid() &&
        ::ftruncate(spare.memfd.get(), static_cast<off_t>(bytes)) == 0 &&
        ::fallocate(spare.memfd.get(), 0, 0, static_cast<off_t>(bytes)) == 0;
    absl::MutexLock lock(&mu_);
    if (ok && !stopping_ && !spare_.has_value()) {
      spare_ = std::move(spare);
      return;
    }
    staged_ -= bytes;
    if (service_->metrics() != nullptr) {
      service_->metrics()->AddStagedBytes(-static_cast<int64_t>(bytes));
    }
  });
}

void LocalDataPlane::Impl::ExpireSpare() {
  std::optional<Spare> old;
  absl::MutexLock lock(&mu_);
  if (spare_.has_value() && absl::Now() - spare_->made > kSpareIdle) {
    old = TakeSpareLocked();
  }
}

void LocalDataPlane::Impl::WorkLoop() {
  for (;;) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return worker_exit_ || !jobs_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (jobs_.empty()) return;  // worker_exit_, and nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void LocalDataPlane::Impl::Stop() {
  std::list<Connection> connections;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    // Ends the reads of idle connections; replies still go out, so a save
    // being committed gets its answer.
    for (Connection& c : connections_) {
      if (c.fd >= 0) ::shutdown(c.fd, SHUT_RD);
    }
  }
  if (wake_write_.valid()) {
    const char byte = 0;
    (void)!::write(wake_write_.get(), &byte, 1);
  }
  if (acceptor_.joinable()) acceptor_.join();
  {
    absl::MutexLock lock(&mu_);
    connections.splice(connections.end(), connections_);
  }
  for (Connection& c : connections) {
    if (c.thread.joinable()) c.thread.join();
  }
  {
    absl::MutexLock lock(&mu_);
    worker_exit_ = true;
  }
  if (worker_.joinable()) worker_.join();
  std::optional<Spare> spare;
  {
    absl::MutexLock lock(&mu_);
    spare = TakeSpareLocked();
  }
  listener_.reset();
  file_.Remove();
}

LocalDataPlane::LocalDataPlane(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

LocalDataPlane::~LocalDataPlane() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<LocalDataPlane>> LocalDataPlane::Start(
    LocalDataPlaneOptions options, CheckpointService* service,
    DiskWatermark* watermark) {
  if (options.max_staged_bytes == 0) {
    return absl::InvalidArgumentError(
        "--max_staged_bytes must be positive (bytes of co-located saves "
        "staged at once)");
  }
  auto impl = std::make_unique<Impl>(std::move(options), service, watermark);
  CKPTD_RETURN_IF_ERROR(impl->Bind());
  impl->Run();
  return std::unique_ptr<LocalDataPlane>(new LocalDataPlane(std::move(impl)));
}

const std::string& LocalDataPlane::path() const { return impl_->path(); }

uint64_t LocalDataPlane::staged_bytes() const { return impl_->staged_bytes(); }

void LocalDataPlane::Stop() { impl_->Stop(); }

}  // namespace ckptd::service
