#include "server/storage/local_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/base/status.h"

namespace ckptd::storage {
namespace {

namespace fs = std::filesystem;

// Entries shown when a directory is refused for not being empty.
constexpr size_t kShownEntries = 3;

absl::Status FsyncPath(const std::string& path, bool directory) {
  int fd;
  do {
    fd = ::open(path.c_str(),
                O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  int rc;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoToStatus(err, absl::StrCat("fsync ", path));
  return absl::OkStatus();
}

std::string ParentOf(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

absl::StatusOr<std::string> ResolvePath(const std::string& path) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(path, ec);
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("resolve ", path));
  return resolved.string();
}

absl::StatusOr<bool> PrepareEmptyDir(const std::string& dir,
                                     absl::string_view what) {
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, " ", dir,
                       " exists and is not a directory; give a new or an "
                       "empty directory"));
    }
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      return ErrnoToStatus(errno, absl::StrCat("open ", what, " ", dir));
    }
    std::vector<std::string> names;
    size_t count = 0;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (names.size() < kShownEntries) names.push_back("'" + name + "'");
      ++count;
    }
    ::closedir(d);
    if (count > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, " ", dir, " is not empty (it holds ",
          absl::StrJoin(names, ", "),
          count > names.size()
              ? absl::StrCat(" and ", count - names.size(), " more")
              : "",
          "); give a new or an empty directory: a backup never writes over "
          "files"));
    }
    return false;
  }
  if (errno != ENOENT) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", what, " ", dir));
  }
  const std::string parent = ParentOf(dir);
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the parent directory ", parent, " of ", what, " ", dir,
        " does not exist (or is not a directory); create it first: ckptd "
        "creates only the last component"));
  }
  if (::mkdir(dir.c_str(), 0755) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("create ", what, " ", dir));
  }
  return true;
}

absl::Status SyncDir(const std::string& dir) {
  return FsyncPath(dir, /*directory=*/true);
}

absl::Status SyncTree(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> dirs;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const fs::file_status status = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(status)) {
      dirs.push_back(it->path().string());
    } else if (fs::is_regular_file(status)) {
      CKPTD_RETURN_IF_ERROR(FsyncPath(it->path().string(), false));
    }
  }
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("list ", dir));
  // Deepest first, so that each directory is synced after its children.
  for (auto d = dirs.rbegin(); d != dirs.rend(); ++d) {
    CKPTD_RETURN_IF_ERROR(SyncDir(*d));
  }
  CKPTD_RETURN_IF_ERROR(SyncDir(dir));
  return SyncDir(ParentOf(dir));
}

absl::Status WriteFileDurably(const std::string& path,
                              absl::string_view contents) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  int fd;
  do {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("create ", tmp));
  absl::Status st;
  const char* p = contents.data();
  size_t left = contents.size();
  while (st.ok() && left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      st = ErrnoToStatus(w < 0 ? errno : EIO, absl::StrCat("write ", tmp));
      break;
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (st.ok() && ::fsync(fd) != 0) {
    st = ErrnoToStatus(errno, absl::StrCat("fsync ", tmp));
  }
  if (::close(fd) != 0 && st.ok() && errno != EINTR) {
    st = ErrnoToStatus(errno, absl::StrCat("close ", tmp));
  }
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncDir(ParentOf(path));
}

absl::Status RemoveDirContents(const std::string& dir, bool remove_dir) {
  absl::Status first;
  std::error_code ec;
  std::vector<fs::path> entries;
  for (auto it = fs::directory_iterator(dir, ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    entries.push_back(it->path());
  }
  if (ec) first = ErrnoToStatus(ec.value(), absl::StrCat("list ", dir));
  for (const fs::path& p : entries) {
    fs::remove_all(p, ec);
    if (ec && first.ok()) {
      first = ErrnoToStatus(ec.value(), absl::StrCat("remove ", p.string()));
    }
  }
  if (remove_dir) {
    fs::remove(dir, ec);
    if (ec && first.ok()) {
      first = ErrnoToStatus(ec.value(), absl::StrCat("remove ", dir));
    }
  }
  return first;
}

}  // namespace ckptd::storage
