// MappedFile: a read-only, private memory mapping of a whole file, and the
// small POSIX helpers the CLI needs to read and write files with errors that
// name the operation and path ("open x.safetensors: No such file or
// directory").
//
// Thread safety: a MappedFile is immutable after Open and may be read from
// any number of threads.
#ifndef CKPTD_CLIENT_CLI_MAPPED_FILE_H_
#define CKPTD_CLIENT_CLI_MAPPED_FILE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd::cli {

class MappedFile {
 public:
  // An empty file maps to an empty view (mmap cannot map zero bytes).
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const char* data() const { return static_cast<const char*>(addr_); }
  uint64_t size() const { return size_; }
  absl::string_view view() const {
    return absl::string_view(data(), static_cast<size_t>(size_));
  }

 private:
  void Reset();

  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

// Writes a file atomically: the bytes go to `path + ".tmp"`, which is
// fsynced and renamed over `path` on Commit(), then the directory is fsynced.
// Destroying an uncommitted writer removes the temp file.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  absl::Status Append(absl::string_view bytes);
  uint64_t bytes_written() const { return written_; }
  const std::string& temp_path() const { return temp_path_; }
  // fsync, close, rename, fsync the directory.
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

}  // namespace ckptd::cli

#endif  // CKPTD_CLIENT_CLI_MAPPED_FILE_H_
