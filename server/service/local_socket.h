// LocalSocket: the co-located way in. `ckptd --local_socket PATH` serves the
// same gRPC services as the TCP port on a Unix stream socket, for clients on
// this host (address `unix:PATH`).
//
// The socket file's protocol:
//   - PATH must fit sun_path (kMaxLocalSocketPathBytes); longer is refused.
//   - A socket file left at PATH by a ckptd that was killed (nothing accepts
//     on it: connect() is refused) is replaced. A socket something still
//     accepts on is refused ("in use"). A path that is not a socket (a file,
//     a directory) is refused and never deleted.
//   - gRPC binds it under a umask that leaves it 0600 (nobody but the owner
//     can connect while it is being set up); Publish() then makes it
//     kLocalSocketMode (0660: owner and group).
//   - Remove() deletes PATH if it is still the file this server bound (same
//     inode); a kill leaves it for the next start to replace.
//
// Identities: the listener uses local credentials (UDS) whenever the
// server authenticates, so the AuthMetadataProcessor (auth.h) runs on the
// socket exactly as on TCP: bearer tokens, the same roles, the same
// UNAUTHENTICATED/PERMISSION_DENIED refusals, reflection only with a
// credential. Client certificates are a TLS thing and do not apply here.
// Who may connect at all is the socket file's owner and group.
//
// Thread safety: one thread (server start-up and shutdown).
#ifndef CKPTD_SERVER_SERVICE_LOCAL_SOCKET_H_
#define CKPTD_SERVER_SERVICE_LOCAL_SOCKET_H_

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd::service {

// sizeof(sockaddr_un::sun_path) is 108 on Linux, with the terminating NUL.
inline constexpr size_t kMaxLocalSocketPathBytes = 107;
// The socket file's mode: owner and group may connect.
inline constexpr mode_t kLocalSocketMode = 0660;

// OK, or INVALID_ARGUMENT naming --local_socket, the path, its length and
// the fix, when `path` is empty or does not fit sun_path.
absl::Status CheckLocalSocketPath(absl::string_view path);

// Clears the way for binding `path`: OK when nothing is there or a stale
// socket was removed; FAILED_PRECONDITION for a socket in use or a path that
// is not a socket (left as it is).
absl::Status ClearLocalSocketPath(const std::string& path);

// Sets the umask that gRPC's bind() of the socket runs under, and restores
// the previous one when it goes out of scope.
class LocalSocketUmask {
 public:
  LocalSocketUmask();
  ~LocalSocketUmask();
  LocalSocketUmask(const LocalSocketUmask&) = delete;
  LocalSocketUmask& operator=(const LocalSocketUmask&) = delete;

 private:
  mode_t previous_;
};

// The bound socket file.
class LocalSocketFile {
 public:
  // After gRPC bound `path`: chmod to kLocalSocketMode, remember the inode.
  static absl::StatusOr<LocalSocketFile> Publish(std::string path);
  LocalSocketFile() = default;

  const std::string& path() const { return path_; }
  // Deletes the file if it is still the one Publish() saw.
  void Remove() const;

 private:
  LocalSocketFile(std::string path, ino_t inode)
      : path_(std::move(path)), inode_(inode) {}
  std::string path_;
  ino_t inode_ = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_LOCAL_SOCKET_H_
