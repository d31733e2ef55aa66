#include "server/service/local_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

// The umask gRPC's bind() runs under: the socket file starts as 0600.
constexpr mode_t kBindUmask = 0177;

// True when something accepts connections on the socket file at `path`.
bool SomeoneListens(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());  // checked: fits
  const bool connected = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr),
                                   sizeof(addr)) == 0;
  ::close(fd);
  return connected;
}

const char* FileKind(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  return "not a socket";
}

}  // namespace

absl::Status CheckLocalSocketPath(absl::string_view path) {
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "--local_socket is empty here; give a path, or --local_socket= on "
        "the command line to serve TCP only");
  }
  if (path.size() <= kMaxLocalSocketPathBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "--local_socket ", path, " is ", path.size(),
      " bytes long; a Unix socket path holds at most ",
      kMaxLocalSocketPathBytes,
      " (sun_path): give a shorter --local_socket (e.g. /run/ckptd/ckptd.sock) "
      "or --local_socket= to serve TCP only"));
}

absl::Status ClearLocalSocketPath(const std::string& path) {
  CKPTD_RETURN_IF_ERROR(CheckLocalSocketPath(path));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(errno, absl::StrCat("--local_socket ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--local_socket ", path, " exists and is ", FileKind(st.st_mode),
        ", not a socket; ckptd does not delete it: remove it yourself or "
        "give another --local_socket path (--local_socket= turns the socket "
        "off)"));
  }
  if (SomeoneListens(path)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--local_socket ", path,
        " is in use: another process (a ckptd?) accepts connections on it; "
        "stop it or give another --local_socket path"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno,
                         absl::StrCat("remove stale --local_socket ", path));
  }
  spdlog::warn(
      "replaced the stale socket {} (left by a ckptd that did not shut down "
      "cleanly)",
      path);
  return absl::OkStatus();
}

LocalSocketUmask::LocalSocketUmask() : previous_(::umask(kBindUmask)) {}
LocalSocketUmask::~LocalSocketUmask() { ::umask(previous_); }

absl::StatusOr<LocalSocketFile> LocalSocketFile::Publish(std::string path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("--local_socket ", path,
                                             ": not created by the listener"));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::InternalError(
        absl::StrCat("--local_socket ", path, " is not a socket after bind"));
  }
  if (::chmod(path.c_str(), kLocalSocketMode) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("chmod --local_socket ", path));
  }
  return LocalSocketFile(std::move(path), st.st_ino);
}

void LocalSocketFile::Remove() const {
  if (path_.empty()) return;
  // Only the file this server bound: a later ckptd may have replaced it.
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
      st.st_ino == inode_) {
    ::unlink(path_.c_str());
  }
}

}  // namespace ckptd::service
