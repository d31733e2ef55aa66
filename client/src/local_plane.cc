#include "client/src/local_plane.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/src/push_plan.h"
#include "proto/base/digest.h"
#include "proto/base/limits.h"
#include "proto/base/local_frame.h"
#include "proto/base/status.h"

namespace ckptd {

MappedBlob::~MappedBlob() {
  if (data_ != nullptr && size_ > 0) ::munmap(data_, size_);
}

namespace internal {
namespace {

constexpr uint64_t kLargeAlignment = 4096;
// Descriptors one map reply carries (kMaxLocalFrameFds).
constexpr size_t kMapBatch = kMaxLocalFrameFds;
// Threads that copy into, or verify, mapped memory.
constexpr int kCopyThreads = 2;

// Linux 5.14's MADV_POPULATE_READ, which older headers lack.
#ifdef MADV_POPULATE_READ
constexpr int kMadvPopulateRead = MADV_POPULATE_READ;
#else
constexpr int kMadvPopulateRead = 22;
#endif

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

absl::StatusOr<UniqueFd> ConnectData(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoToStatus(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::UnimplementedError(absl::StrCat(
        "the data socket path ", path, " does not fit a Unix socket address"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return absl::UnimplementedError(
          absl::StrCat("no co-located data plane at ", path, " (",
                       std::strerror(errno), ")"));
    }
    return ErrnoToStatus(errno, absl::StrCat("connect to ", path));
  }
  return fd;
}

absl::StatusOr<v1::LocalReply> Exchange(int fd, const v1::LocalRequest& req,
                                        std::vector<UniqueFd>* fds) {
  CKPTD_RETURN_IF_ERROR(SendLocalFrame(fd, req));
  v1::LocalReply reply;
  CKPTD_RETURN_IF_ERROR(RecvLocalFrame(fd, &reply, fds));
  CKPTD_RETURN_IF_ERROR(FromRpcStatus(reply.status()));
  return reply;
}

// Runs fn(i) for i in [0, n) on up to kCopyThreads threads.
template <typename Fn>
void Parallel(size_t n, Fn fn) {
  const size_t threads = std::min<size_t>(kCopyThreads, n);
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t; i < n; i += threads) fn(i);
    });
  }
  for (std::thread& th : pool) th.join();
}

class StagedPushImpl final : public StagedPush {
 public:
  StagedPushImpl(UniqueFd socket, uint64_t version)
      : socket_(std::move(socket)), version_(version) {}
  uint64_t version() const override { return version_; }
  absl::StatusOr<VersionInfo> Wait() override {
    if (!socket_.valid()) {
      return absl::FailedPreconditionError("StagedPush::Wait called twice");
    }
    v1::LocalReply reply;
    std::vector<UniqueFd> fds;
    absl::Status st = RecvLocalFrame(socket_.get(), &reply, &fds);
    socket_.reset();
    if (absl::IsUnavailable(st)) {
      return absl::UnavailableError(absl::StrCat(
          "the daemon closed the co-located connection before it reported "
          "the commit of version ",
          version_,
          " (was it stopped?); the version may still be committed: check "
          "with ckpt log"));
    }
    CKPTD_RETURN_IF_ERROR(st);
    CKPTD_RETURN_IF_ERROR(FromRpcStatus(reply.status()));
    if (!reply.has_committed()) {
      return absl::InternalError("the daemon's last reply is not a commit");
    }
    return reply.committed();
  }

 private:
  UniqueFd socket_;
  uint64_t version_;
};

}  // namespace

std::string LocalDataSocketOf(const std::string& address) {
  if (!absl::StartsWith(address, "unix:")) return "";
  std::string path = address.substr(5);
  // gRPC also accepts unix:///abs/path.
  if (absl::StartsWith(path, "//")) path = path.substr(2);
  return absl::StrCat(path, ".data");
}

StagedLayout LayOutStaged(const PushRequest& request) {
  StagedLayout layout;
  layout.offsets.assign(request.entries.size(), -1);
  uint64_t pos = 0;
  bool pack_open = false;
  uint64_t pack_start = 0;
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const PushEntry& e = request.entries[i];
    if (!e.entry.has_tensor()) continue;
    const uint64_t len = e.tensor.byte_length;
    if (len >= kStagedPackThreshold) continue;
    if (pack_open) {
      const uint64_t filled = pos - pack_start;
      const uint64_t at =
          len == 0 ? filled : AlignUp(filled, kStagedPackAlignment);
      if (at + len <= kStagedPackSize) {
        layout.offsets[i] = static_cast<int64_t>(pack_start + at);
        pos = pack_start + at + len;
        continue;
      }
    }
    pack_start = AlignUp(pos, kStagedPackAlignment);
    pack_open = true;
    layout.offsets[i] = static_cast<int64_t>(pack_start);
    pos = pack_start + len;
  }
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const PushEntry& e = request.entries[i];
    if (!e.entry.has_tensor() || e.tensor.byte_length < kStagedPackThreshold) {
      continue;
    }
    pos = AlignUp(pos, kLargeAlignment);
    layout.offsets[i] = static_cast<int64_t>(pos);
    pos += e.tensor.byte_length;
  }
  layout.bytes = pos;
  return layout;
}

absl::StatusOr<std::unique_ptr<StagedPush>> StageLocalPush(
    const std::string& socket_path, const std::string& token,
    const v1::BeginVersionRequest& begin, const PushRequest& request) {
  for (const PushEntry& e : request.entries) {
    if (!e.entry.has_tensor()) continue;
    CKPTD_RETURN_IF_ERROR(ValidatePushTensor(e));
    if (e.tensor.memory.kind != MemoryKind::kHost) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor '", KeyPathString(e.entry),
                       "' is in CUDA memory; a co-located save stages host "
                       "memory (copy it to the host first)"));
    }
  }
  const StagedLayout layout = LayOutStaged(request);
  CKPTD_ASSIGN_OR_RETURN(UniqueFd socket, ConnectData(socket_path));

  v1::LocalRequest stage;
  stage.set_token(token);
  stage.mutable_stage()->set_run(request.run);
  stage.mutable_stage()->set_bytes(layout.bytes);
  std::vector<UniqueFd> fds;
  CKPTD_ASSIGN_OR_RETURN(v1::LocalReply staged_memory,
                         Exchange(socket.get(), stage, &fds));
  if (fds.size() != 1 || !staged_memory.has_stage() ||
      staged_memory.stage().bytes() != layout.bytes) {
    return absl::InternalError(
        "the daemon's stage reply carries no memory of the asked size");
  }
  if (layout.bytes > 0) {
    struct stat st;
    if (::fstat(fds[0].get(), &st) != 0 ||
        static_cast<uint64_t>(st.st_size) < layout.bytes) {
      return absl::InternalError("the staged memory is smaller than asked");
    }
    // pwrite, not a mapping: the kernel copies straight into the memfd's
    // pages as it allocates them (a mapping would fault and zero each page
    // before the copy), and no writable mapping is left to stop the seal.
    struct Piece {
      const char* from;
      uint64_t to;
      uint64_t n;
    };
    std::vector<Piece> pieces;
    constexpr uint64_t kPiece = 16 << 20;
    for (size_t i = 0; i < request.entries.size(); ++i) {
      const PushEntry& e = request.entries[i];
      if (layout.offsets[i] < 0 || e.tensor.byte_length == 0) continue;
      const char* from = static_cast<const char*>(e.tensor.data);
      const uint64_t to = static_cast<uint64_t>(layout.offsets[i]);
      for (uint64_t at = 0; at < e.tensor.byte_length; at += kPiece) {
        pieces.push_back(Piece{from + at, to + at,
                               std::min(kPiece, e.tensor.byte_length - at)});
      }
    }
    std::vector<absl::Status> errors(pieces.size());
    const int memfd = fds[0].get();
    Parallel(pieces.size(), [&](size_t i) {
      const Piece& p = pieces[i];
      uint64_t done = 0;
      while (done < p.n) {
        const ssize_t w = ::pwrite(memfd, p.from + done, p.n - done,
                                   static_cast<off_t>(p.to + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          errors[i] = ErrnoToStatus(w < 0 ? errno : EIO,
                                    "writing into the staged memory");
          return;
        }
        done += static_cast<uint64_t>(w);
      }
    });
    for (const absl::Status& st : errors) CKPTD_RETURN_IF_ERROR(st);
  }
  fds.clear();

  v1::LocalRequest commit;
  commit.set_token(token);
  v1::LocalCommitRequest* c = commit.mutable_commit();
  *c->mutable_begin() = begin;
  v1::CommitShardRequest* shard = c->mutable_shard();
  shard->set_rank(request.rank);
  for (const auto& [name, value] : request.metrics) {
    (*shard->mutable_metrics())[name] = value;
  }
  v1::ShardManifest* manifest = shard->mutable_manifest();
  manifest->set_rank(request.rank);
  for (size_t i = 0; i < request.entries.size(); ++i) {
    v1::ManifestEntry* out = manifest->add_entries();
    *out = request.entries[i].entry;
    if (layout.offsets[i] >= 0) {
      out->mutable_tensor()->set_byte_length(
          request.entries[i].tensor.byte_length);
      out->mutable_tensor()->clear_blob_digest();
      out->mutable_tensor()->set_blob_offset(
          static_cast<uint64_t>(layout.offsets[i]));
    }
  }
  CKPTD_ASSIGN_OR_RETURN(v1::LocalReply sealed,
                         Exchange(socket.get(), commit, &fds));
  if (!sealed.has_staged()) {
    return absl::InternalError("the daemon's commit reply is not 'staged'");
  }
  return std::unique_ptr<StagedPush>(
      new StagedPushImpl(std::move(socket), sealed.staged().version()));
}

absl::StatusOr<std::vector<std::shared_ptr<MappedBlob>>> MapLocalBlobs(
    const std::string& socket_path, const std::string& token,
    const std::string& run, uint64_t version,
    const std::vector<std::string>& digests) {
  std::vector<std::shared_ptr<MappedBlob>> out;
  out.reserve(digests.size());
  if (digests.empty()) return out;
  CKPTD_ASSIGN_OR_RETURN(UniqueFd socket, ConnectData(socket_path));
  for (size_t from = 0; from < digests.size(); from += kMapBatch) {
    const size_t n = std::min(kMapBatch, digests.size() - from);
    v1::LocalRequest req;
    req.set_token(token);
    v1::LocalMapRequest* m = req.mutable_map();
    m->set_run(run);
    m->set_version(version);
    for (size_t i = 0; i < n; ++i) m->add_digests(digests[from + i]);
    std::vector<UniqueFd> fds;
    CKPTD_ASSIGN_OR_RETURN(v1::LocalReply reply,
                           Exchange(socket.get(), req, &fds));
    if (fds.size() != n ||
        reply.map().data_sizes_size() != static_cast<int>(n)) {
      return absl::InternalError(absl::StrCat("the daemon's map reply carries ",
                                              fds.size(), " descriptors for ",
                                              n, " blobs"));
    }
    std::vector<std::shared_ptr<MappedBlob>> batch(n);
    std::vector<absl::Status> errors(n);
    Parallel(n, [&](size_t i) {
      const uint64_t size = reply.map().data_sizes(static_cast<int>(i));
      const std::string& digest = digests[from + i];
      char* data = nullptr;
      if (size > 0) {
        struct stat st;
        if (::fstat(fds[i].get(), &st) != 0 ||
            static_cast<uint64_t>(st.st_size) < size) {
          errors[i] = absl::DataLossError(absl::StrCat(
              "blob ", DigestFromBytes(digest).value_or(Digest{}).Hex(), " of ",
              run, "@", version, " is shorter than its data"));
          return;
        }
        // Private and writable, so that tensors over it may be changed
        // (copy-on-write, per page). Not MAP_POPULATE: on a private
        // writable mapping that prefaults for writing, i.e. copies every
        // page. MADV_POPULATE_READ maps the page cache's pages as they are.
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE,
                         fds[i].get(), 0);
        if (p == MAP_FAILED) {
          errors[i] = ErrnoToStatus(errno, "mapping a blob");
          return;
        }
        data = static_cast<char*>(p);
        // EINVAL: a kernel before 5.14 (pages then fault in as read). Any
        // other error (EIO, ENOMEM) would come back as SIGBUS on first
        // touch: report it instead.
        if (::madvise(p, size, kMadvPopulateRead) != 0 && errno != EINVAL) {
          errors[i] = ErrnoToStatus(errno, "reading a mapped blob");
          ::munmap(p, size);
          return;
        }
      }
      auto blob = std::make_shared<MappedBlob>(data, size);
      const Digest found = DigestOf(data, size);
      if (found.AsBytes() != digest) {
        errors[i] = absl::DataLossError(absl::StrCat(
            "blob ", DigestFromBytes(digest).value_or(Digest{}).Hex(), " of ",
            run, "@", version, " does not match its digest (found ",
            found.Hex(), ") in the daemon's file"));
        return;
      }
      batch[i] = std::move(blob);
    });
    for (size_t i = 0; i < n; ++i) {
      CKPTD_RETURN_IF_ERROR(errors[i]);
      out.push_back(std::move(batch[i]));
    }
  }
  return out;
}

}  // namespace internal
}  // namespace ckptd
