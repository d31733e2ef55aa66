// LocalDataPlane: the co-located zero-copy data plane, on the Unix stream
// socket `<--local_socket>.data` beside the gRPC one (the protocol is in
// proto/ckptd/v1/checkpoint.proto, "Co-located data plane").
//
// - Pull: the daemon hands out read-only descriptors of blob files of one
//   committed version the caller may read (ReadBlobs' rule), while a read
//   lease holds them against GC. A mapping outlives a later delete (the file
//   is unlinked, its pages stay), so the lease ends with the reply. Stores
//   without local files (S3) answer UNIMPLEMENTED and clients read over gRPC.
// - Save: the daemon creates a memfd, the client fills and unmaps it, the
//   daemon seals it (F_SEAL_WRITE|SHRINK|GROW|SEAL, which fails while any
//   writable mapping exists) and begins the version. From then on the bytes
//   are the daemon's: nobody can change them, and the commit runs to its end
//   whether or not the client is still there. Commits run one at a time, in
//   the order they were staged (one worker), like one client's uploads.
// - Staged memory is bounded by max_staged_bytes across all connections: a
//   stage request waits until it fits (a single one larger than the bound is
//   refused, naming --max_staged_bytes).
// - Identities: every request carries the caller's bearer token and is
//   authorized by the same AccessPolicy as gRPC: pull as ReadBlobs, stage
//   as UploadBlobs, commit as CommitShard. Who may connect at all is the
//   socket file's owner and group (mode 0660); the peer's pid and uid
//   (SO_PEERCRED) are logged with each connection. A memfd is reachable only
//   through its descriptors, so nothing else on the host reads staged bytes.
// - Stop(): no new connections or requests; staged saves already
//   acknowledged (LocalReply{staged}) are committed before it returns.
//
// Thread safety: thread-safe. One thread per connection, one commit worker.
#ifndef CKPTD_SERVER_SERVICE_LOCAL_DATA_PLANE_H_
#define CKPTD_SERVER_SERVICE_LOCAL_DATA_PLANE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/service/checkpoint_service.h"
#include "server/service/disk_watermark.h"

namespace ckptd::service {

// The data socket of a --local_socket PATH.
std::string LocalDataSocketPath(absl::string_view local_socket);

inline constexpr uint64_t kDefaultMaxStagedBytes = uint64_t{4} << 30;

struct LocalDataPlaneOptions {
  std::string path;
  uint64_t max_staged_bytes = kDefaultMaxStagedBytes;
  // Connections served at once; more are closed at accept.
  int max_connections = 256;
};

class LocalDataPlane {
 public:
  // Binds `options.path` (stale sockets replaced, sockets in use and other
  // files refused, as for --local_socket; mode 0660) and serves it.
  // `service` (its repository, access policy, draining state and ActorOf)
  // and `watermark` (may be null) must outlive the plane.
  static absl::StatusOr<std::unique_ptr<LocalDataPlane>> Start(
      LocalDataPlaneOptions options, CheckpointService* service,
      DiskWatermark* watermark);
  ~LocalDataPlane();
  LocalDataPlane(const LocalDataPlane&) = delete;
  LocalDataPlane& operator=(const LocalDataPlane&) = delete;

  const std::string& path() const;
  // Bytes staged now (memfds created and not yet committed or dropped).
  uint64_t staged_bytes() const;
  // Idempotent; see the file comment. Removes the socket file.
  void Stop();

  class Impl;

 private:
  explicit LocalDataPlane(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_LOCAL_DATA_PLANE_H_
