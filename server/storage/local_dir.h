// Local directory helpers for writing a backup (server/core/
// repository_backup.cc): checking and creating the target directory,
// fsyncing what was written into it, writing one small file durably, and
// removing a failed attempt. Every error names the path and what failed.
//
// Thread safety: plain functions over the filesystem; safe to call
// concurrently on distinct paths.
#ifndef CKPTD_SERVER_STORAGE_LOCAL_DIR_H_
#define CKPTD_SERVER_STORAGE_LOCAL_DIR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd::storage {

// `path` with symlinks of its existing part resolved (the rest appended), as
// std::filesystem::weakly_canonical.
absl::StatusOr<std::string> ResolvePath(const std::string& path);

// Makes `dir` an empty directory to write into: creates it when it does
// not exist (its parent must: FAILED_PRECONDITION otherwise), accepts it
// when it is an empty directory, refuses it (FAILED_PRECONDITION naming a
// few of its entries) when it is not empty or not a directory. `what`
// names the directory in messages ("backup dir"). Returns whether it was
// created.
absl::StatusOr<bool> PrepareEmptyDir(const std::string& dir,
                                     absl::string_view what);

// fsyncs every regular file and directory under `dir`, then `dir` itself
// and its parent (so that `dir`'s own entry is durable).
absl::Status SyncTree(const std::string& dir);

// fsyncs one directory.
absl::Status SyncDir(const std::string& dir);

// Writes `contents` to `path` durably: a temp file beside it, fsynced,
// renamed over `path`, the directory fsynced.
absl::Status WriteFileDurably(const std::string& path,
                              absl::string_view contents);

// Removes everything inside `dir`, then `dir` itself when `remove_dir`.
// Best effort (a failed attempt's leftovers); returns the first error.
absl::Status RemoveDirContents(const std::string& dir, bool remove_dir);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_LOCAL_DIR_H_
