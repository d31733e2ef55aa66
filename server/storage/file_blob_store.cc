// FileBlobStore: the BlobStore of local files.
//
// On-disk protocol
// ----------------
// Layout under the store directory <dir> (the server's --data-dir):
//
//   <dir>/blobs/<xx>/<32 hex digest>   committed blobs; <xx> is the first two
//                                      hex digits of the digest. All 256
//                                      fan-out directories are created (and
//                                      their parents fsynced) at open.
//   <dir>/tmp/blob-<pid>-<seq>-<nonce>.tmp
//                                      blobs being written (O_EXCL, unique).
//
// A blob file is the stored form of blob_format.h: the raw data bytes
// followed by a trailer of per-chunk checksums and a self-checking footer.
// A file whose footer fails its check (truncated, or damaged) reads as
// DATA_LOSS. Stat and ForEach
// report data_size, not the file size. Readers read whole chunks and verify
// each against its checksum before returning any of its bytes.
//
// Writing: data is write()n to the tmp file as it arrives; the writer keeps a
// streaming XXH3-128 of the whole blob and the per-chunk XXH3-64s in memory
// (8 bytes per MiB). Every kWritebackWindow (8 MiB) appended, writeback of
// the new range is started (sync_file_range WRITE, no wait), so the disk works
// while data still arrives and Commit's fdatasync finds little left; it is
// only a hint, durability comes from fdatasync alone. Sync() is fdatasync:
// the bytes so far are durable.
// Commit(expected):
//   1. digest != expected: INVALID_ARGUMENT, tmp file unlinked.
//   2. append the trailer, fdatasync, close.
//   3. renameat2(RENAME_NOREPLACE) into blobs/<xx>/. If the name is taken by
//      a valid blob (a concurrent or earlier upload of the same bytes), the
//      tmp file is unlinked instead; if it is taken by a file whose footer is
//      damaged, our verified copy replaces it (re-uploading repairs a
//      truncated blob).
//   4. fsync blobs/<xx>/ — also when the name was taken, because the writer
//      that took it may not have fsynced the directory yet, and we are about
//      to report the blob durable.
// CommitReplacing(expected) (healing a blob found corrupt) does 1 and 2,
// then rename(2)s over blobs/<xx>/<digest> whether or not it exists — an
// atomic replacement: a crash leaves the old file or the new one — and 4.
// Delete is unlink + fsync of the fan-out directory.
// LinkFrom (backups) hard-links a committed blob file of another store into
// this one's fan-out directory; committed files are never written again
// (a repair renames a new file over the name), so the link shares immutable
// bytes. SyncLinks fsyncs the fan-out directories that got links, then
// blobs/.
//
// What a crash leaves behind: files in tmp/ (partial, or complete but not
// renamed) — RemoveTemporaries() unlinks them on the next start. It only
// touches regular files named blob-*.tmp, so pointing --data-dir at a
// directory whose tmp/ holds other files (e.g. $HOME) loses nothing. A blob
// in blobs/ is complete: it was fdatasynced before its rename. The rename may
// be lost if the directory fsync did not happen, in which case Commit never
// returned OK.
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "proto/base/digest.h"
#include "proto/base/status.h"
#include "server/storage/blob_format.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage {
namespace {

constexpr int kFanOut = 256;
constexpr mode_t kDirMode = 0755;
constexpr mode_t kFileMode = 0644;
constexpr absl::string_view kTmpPrefix = "blob-";
constexpr absl::string_view kTmpSuffix = ".tmp";
constexpr int kTmpCreateAttempts = 16;
// Writeback of appended data is started every this many bytes, so the disk
// works while data still arrives and Commit's fdatasync has little left.
constexpr uint64_t kWritebackWindow = 8 << 20;

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Closes, reporting the error close() may carry (deferred write errors).
  absl::Status Close(absl::string_view context) {
    const int fd = std::exchange(fd_, -1);
    if (fd >= 0 && ::close(fd) != 0 && errno != EINTR) {
      return ckptd::ErrnoToStatus(errno, context);
    }
    return absl::OkStatus();
  }

 private:
  int fd_ = -1;
};

absl::StatusOr<Fd> OpenFile(const std::string& path, int flags,
                            absl::string_view what) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, kFileMode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ckptd::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
  return Fd(fd);
}

absl::Status WriteFull(int fd, const char* p, size_t n,
                       const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ckptd::ErrnoToStatus(errno,
                                  absl::StrCat("write blob tmp file ", path));
    }
    if (w == 0) {
      return ckptd::ErrnoToStatus(EIO,
                                  absl::StrCat("write blob tmp file ", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Reads up to `n` bytes at `offset`; fewer only at end of file.
absl::StatusOr<size_t> PreadFull(int fd, char* p, size_t n, uint64_t offset,
                                 const std::string& path) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r =
        ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ckptd::ErrnoToStatus(errno, absl::StrCat("read blob file ", path));
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

absl::Status FdataSync(int fd, absl::string_view context) {
  int rc;
  do {
    rc = ::fdatasync(fd);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return ckptd::ErrnoToStatus(errno, context);
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(
      Fd dir, OpenFile(path, O_RDONLY | O_DIRECTORY, "open blob directory"));
  int rc;
  do {
    rc = ::fsync(dir.get());
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    return ckptd::ErrnoToStatus(errno,
                                absl::StrCat("fsync blob directory ", path));
  }
  return absl::OkStatus();
}

absl::Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), kDirMode) != 0 && errno != EEXIST) {
    return ckptd::ErrnoToStatus(errno,
                                absl::StrCat("create blob directory ", path));
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return ckptd::ErrnoToStatus(errno,
                                absl::StrCat("stat blob directory ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob store path ", path, " is not a directory"));
  }
  return absl::OkStatus();
}

bool IsTemporaryName(absl::string_view name) {
  return name.size() > kTmpPrefix.size() + kTmpSuffix.size() &&
         absl::StartsWith(name, kTmpPrefix) && absl::EndsWith(name, kTmpSuffix);
}

// Reads and validates the footer of an open blob file.
absl::StatusOr<BlobFooter> ReadFooter(int fd, const std::string& path,
                                      const Digest& digest) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ckptd::ErrnoToStatus(errno, absl::StrCat("stat blob file ", path));
  }
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("blob ", digest.Hex(), " (file ",
                                            path, ", ", st.st_size,
                                            " bytes) is damaged: ", why));
  };
  if (!S_ISREG(st.st_mode)) return bad("not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kBlobFooterSize) return bad("too short for its footer");
  char buf[kBlobFooterSize];
  CKPTD_ASSIGN_OR_RETURN(
      size_t n,
      PreadFull(fd, buf, kBlobFooterSize, file_size - kBlobFooterSize, path));
  if (n != kBlobFooterSize) return bad("footer cut short");
  absl::StatusOr<BlobFooter> f =
      DecodeBlobFooter(absl::string_view(buf, n), file_size);
  if (!f.ok()) return bad(f.status().message());
  return f;
}

std::string FanOutDir(const std::string& blobs_dir, int index) {
  return absl::StrFormat("%s/%02x", blobs_dir, index);
}
std::string FanOutDir(const std::string& blobs_dir, const Digest& digest) {
  return FanOutDir(blobs_dir, digest.bytes[0]);
}
std::string BlobPath(const std::string& blobs_dir, const Digest& digest) {
  return absl::StrCat(FanOutDir(blobs_dir, digest), "/", digest.Hex());
}

class FileBlobWriter final : public BlobWriter {
 public:
  FileBlobWriter(std::string blobs_dir, std::string tmp_path, Fd fd)
      : blobs_dir_(std::move(blobs_dir)),
        tmp_path_(std::move(tmp_path)),
        fd_(std::move(fd)) {}
  ~FileBlobWriter() override { Abandon(); }

  absl::Status Append(std::string_view data) override;
  uint64_t size() const override { return size_; }
  absl::StatusOr<uint64_t> Sync() override;
  absl::Status Commit(const Digest& expected) override;
  absl::Status CommitReplacing(const Digest& expected) override;
  void Abandon() override;

 private:
  absl::Status CheckUsable() const;
  // `replace`: rename over a blob already stored (CommitReplacing).
  absl::Status CommitFile(const Digest& expected, bool replace);

  const std::string blobs_dir_;
  const std::string tmp_path_;
  Fd fd_;
  bool finished_ = false;
  bool tmp_exists_ = true;  // false once renamed or unlinked
  absl::Status error_;      // a failed write or sync poisons the writer
  uint64_t size_ = 0;
  uint64_t writeback_begin_ = 0;  // end of the range last sent to writeback
  BlobHasher hasher_;
};

class FileBlobReader final : public BlobReader {
 public:
  FileBlobReader(std::string path, Digest digest, Fd fd, BlobFooter footer,
                 std::vector<uint64_t> checksums)
      : path_(std::move(path)),
        digest_(digest),
        fd_(std::move(fd)),
        footer_(footer),
        checksums_(std::move(checksums)) {}

  uint64_t size() const override { return footer_.data_size; }
  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override;

 private:
  // Reads chunks [first, last] — whole, contiguous — into `dst`.
  absl::Status ReadChunks(uint64_t first, uint64_t last, char* dst);

  const std::string path_;
  const Digest digest_;
  Fd fd_;
  const BlobFooter footer_;
  const std::vector<uint64_t> checksums_;
  std::unique_ptr<char[]> scratch_;  // one chunk, for partly read chunks
};

class FileBlobStore final : public BlobStore {
 public:
  explicit FileBlobStore(std::string dir)
      : dir_(std::move(dir)),
        blobs_dir_(dir_ + "/blobs"),
        tmp_dir_(dir_ + "/tmp") {}

  absl::Status Init();

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) override;
  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override;
  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override;
  absl::StatusOr<std::optional<UniqueFd>> OpenStoredFile(
      const Digest& digest) override;
  absl::Status Delete(const Digest& digest) override;
  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) override;
  absl::Status RemoveTemporaries() override;
  absl::StatusOr<bool> LinkFrom(BlobStore& source,
                                const Digest& digest) override;
  absl::Status SyncLinks() override;

 private:
  // The committed blob's file at `path`, read-only; NOT_FOUND naming the
  // digest when it is not stored.
  static absl::StatusOr<Fd> OpenStored(const Digest& digest,
                                       const std::string& path);

  const std::string dir_;
  const std::string blobs_dir_;
  const std::string tmp_dir_;
  std::atomic<uint64_t> next_tmp_seq_{0};
  // Fan-out directories that LinkFrom added names to since SyncLinks.
  std::array<std::atomic<bool>, kFanOut> linked_into_{};
};

// ---------------------------------------------------------------------------
// FileBlobWriter

absl::Status FileBlobWriter::CheckUsable() const {
  if (finished_) {
    return absl::FailedPreconditionError(
        "blob writer is finished (committed or abandoned)");
  }
  return error_;
}

absl::Status FileBlobWriter::Append(std::string_view data) {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  if (data.empty()) return absl::OkStatus();
  // A failed write poisons the writer, so hashing first is safe.
  hasher_.Update(data.data(), data.size());
  if (absl::Status st =
          WriteFull(fd_.get(), data.data(), data.size(), tmp_path_);
      !st.ok()) {
    error_ = st;
    return st;
  }
  size_ += data.size();
  if (size_ - writeback_begin_ >= kWritebackWindow) {
    // Advisory: an I/O error here also fails the fdatasync that follows.
    ::sync_file_range(fd_.get(), static_cast<off_t>(writeback_begin_),
                      static_cast<off_t>(size_ - writeback_begin_),
                      SYNC_FILE_RANGE_WRITE);
    writeback_begin_ = size_;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FileBlobWriter::Sync() {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  // After a failed fdatasync the kernel may have dropped the dirty pages, so
  // nothing written so far can be trusted again.
  if (absl::Status st = FdataSync(
          fd_.get(), absl::StrCat("fdatasync blob tmp file ", tmp_path_));
      !st.ok()) {
    error_ = st;
    return st;
  }
  return size_;
}

absl::Status FileBlobWriter::Commit(const Digest& expected) {
  absl::Status st = CommitFile(expected, /*replace=*/false);
  Abandon();  // no-op after a successful rename
  return st;
}

absl::Status FileBlobWriter::CommitReplacing(const Digest& expected) {
  absl::Status st = CommitFile(expected, /*replace=*/true);
  Abandon();  // no-op after a successful rename
  return st;
}

absl::Status FileBlobWriter::CommitFile(const Digest& expected, bool replace) {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  const Digest actual = hasher_.digest();
  if (actual != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob digest mismatch: expected ", expected.Hex(), " but the ", size_,
        " bytes received hash to ", actual.Hex(), "; the blob was discarded"));
  }
  const std::string trailer = hasher_.Trailer();
  CKPTD_RETURN_IF_ERROR(
      WriteFull(fd_.get(), trailer.data(), trailer.size(), tmp_path_));
  CKPTD_RETURN_IF_ERROR(FdataSync(
      fd_.get(), absl::StrCat("fdatasync blob tmp file ", tmp_path_)));
  CKPTD_RETURN_IF_ERROR(
      fd_.Close(absl::StrCat("close blob tmp file ", tmp_path_)));

  const std::string target = BlobPath(blobs_dir_, expected);
  auto rename_error = [&] {
    return ckptd::ErrnoToStatus(errno, absl::StrCat("rename blob tmp file ",
                                                    tmp_path_, " to ", target));
  };
  if (replace) {
    // rename(2) replaces the target atomically: readers see the old file or
    // ours, and one that opened the old file keeps its bytes.
    if (::rename(tmp_path_.c_str(), target.c_str()) != 0) {
      return rename_error();
    }
    tmp_exists_ = false;
  }
  // Retried only when the existing blob vanishes (a concurrent Delete)
  // between the failed rename and our look at it.
  for (int attempt = 0; tmp_exists_; ++attempt) {
    if (::renameat2(AT_FDCWD, tmp_path_.c_str(), AT_FDCWD, target.c_str(),
                    RENAME_NOREPLACE) == 0) {
      tmp_exists_ = false;
    } else if (errno == EINVAL || errno == ENOSYS) {
      // The filesystem has no RENAME_NOREPLACE. Replacing an existing blob
      // with identical verified bytes is harmless.
      if (::rename(tmp_path_.c_str(), target.c_str()) != 0) {
        return rename_error();
      }
      tmp_exists_ = false;
    } else if (errno != EEXIST) {
      return rename_error();
    } else {
      // Keep the stored copy unless its footer is damaged; ours is verified.
      absl::StatusOr<Fd> existing = OpenFile(target, O_RDONLY, "open blob");
      if (!existing.ok()) {
        if (absl::IsNotFound(existing.status()) && attempt < 3) continue;
        return existing.status();
      }
      absl::StatusOr<BlobFooter> footer =
          ReadFooter(existing->get(), target, expected);
      if (footer.ok()) break;  // Abandon() unlinks our copy
      if (!absl::IsDataLoss(footer.status())) return footer.status();
      if (::rename(tmp_path_.c_str(), target.c_str()) != 0) {
        return rename_error();
      }
      tmp_exists_ = false;
    }
  }
  return FsyncDir(FanOutDir(blobs_dir_, expected));
}

void FileBlobWriter::Abandon() {
  if (finished_) return;
  finished_ = true;
  fd_.Reset();
  // A failed unlink leaves a temporary for RemoveTemporaries at next start.
  if (tmp_exists_) ::unlink(tmp_path_.c_str());
  tmp_exists_ = false;
}

// ---------------------------------------------------------------------------
// FileBlobReader

absl::Status FileBlobReader::ReadChunks(uint64_t first, uint64_t last,
                                        char* dst) {
  const uint64_t chunk = footer_.chunk_size;
  const uint64_t begin = first * chunk;
  const uint64_t end = std::min((last + 1) * chunk, footer_.data_size);
  CKPTD_ASSIGN_OR_RETURN(size_t n,
                         PreadFull(fd_.get(), dst, end - begin, begin, path_));
  if (n != end - begin) {
    return absl::DataLossError(absl::StrCat(
        "blob ", digest_.Hex(), " (file ", path_, ") ends at offset ",
        begin + n, ", inside its data of ", footer_.data_size, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status FileBlobReader::ReadAt(uint64_t offset, uint64_t length,
                                    char* out) {
  return ReadVerifiedBlobRange(
      digest_, absl::StrCat("file ", path_), footer_, checksums_, offset,
      length, out, scratch_, [this](uint64_t first, uint64_t last, char* dst) {
        return ReadChunks(first, last, dst);
      });
}

// ---------------------------------------------------------------------------
// FileBlobStore

absl::Status FileBlobStore::Init() {
  if (dir_.empty()) {
    return absl::InvalidArgumentError("blob store directory must not be empty");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    return ckptd::ErrnoToStatus(
        ec.value(), absl::StrCat("create blob store directory ", dir_));
  }
  CKPTD_RETURN_IF_ERROR(MakeDir(dir_));
  CKPTD_RETURN_IF_ERROR(MakeDir(blobs_dir_));
  CKPTD_RETURN_IF_ERROR(MakeDir(tmp_dir_));
  for (int i = 0; i < kFanOut; ++i)
    CKPTD_RETURN_IF_ERROR(MakeDir(FanOutDir(blobs_dir_, i)));
  // Always fsync: a crash in an earlier open may have left the directories
  // created but their entries not durable.
  CKPTD_RETURN_IF_ERROR(FsyncDir(blobs_dir_));
  return FsyncDir(dir_);
}

absl::StatusOr<std::unique_ptr<BlobWriter>> FileBlobStore::NewWriter(
    const Digest& /*expected*/) {
  for (int attempt = 0;; ++attempt) {
    const uint64_t seq = next_tmp_seq_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t nonce = static_cast<uint64_t>(absl::GetCurrentTimeNanos()) ^
                           (seq * 0x9e3779b97f4a7c15ULL);
    std::string path =
        absl::StrFormat("%s/%s%d-%d-%016x%s", tmp_dir_, kTmpPrefix, ::getpid(),
                        seq, nonce, kTmpSuffix);
    absl::StatusOr<Fd> fd =
        OpenFile(path, O_WRONLY | O_CREAT | O_EXCL, "open blob tmp file");
    if (fd.ok()) {
      return std::make_unique<FileBlobWriter>(blobs_dir_, std::move(path),
                                              *std::move(fd));
    }
    if (!absl::IsAlreadyExists(fd.status()) ||
        attempt + 1 == kTmpCreateAttempts) {
      return fd.status();
    }
  }
}

absl::StatusOr<std::optional<uint64_t>> FileBlobStore::Stat(
    const Digest& digest) {
  const std::string path = BlobPath(blobs_dir_, digest);
  absl::StatusOr<Fd> fd = OpenFile(path, O_RDONLY, "open blob");
  if (!fd.ok()) {
    if (absl::IsNotFound(fd.status())) return std::nullopt;
    return fd.status();
  }
  CKPTD_ASSIGN_OR_RETURN(BlobFooter footer,
                         ReadFooter(fd->get(), path, digest));
  return footer.data_size;
}

absl::StatusOr<Fd> FileBlobStore::OpenStored(const Digest& digest,
                                             const std::string& path) {
  absl::StatusOr<Fd> fd = OpenFile(path, O_RDONLY, "open blob");
  if (!fd.ok() && absl::IsNotFound(fd.status())) {
    return absl::NotFoundError(
        absl::StrCat("blob ", digest.Hex(), " is not stored"));
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<BlobReader>> FileBlobStore::Open(
    const Digest& digest) {
  std::string path = BlobPath(blobs_dir_, digest);
  CKPTD_ASSIGN_OR_RETURN(Fd fd, OpenStored(digest, path));
  CKPTD_ASSIGN_OR_RETURN(BlobFooter footer, ReadFooter(fd.get(), path, digest));
  std::string raw(uint64_t{footer.chunk_count} * kBlobChecksumSize, '\0');
  CKPTD_ASSIGN_OR_RETURN(size_t n, PreadFull(fd.get(), raw.data(), raw.size(),
                                             footer.data_size, path));
  if (n != raw.size()) {
    return absl::DataLossError(absl::StrCat("blob ", digest.Hex(), " (file ",
                                            path, ") checksums cut short"));
  }
  std::vector<uint64_t> checksums = DecodeBlobChecksums(raw);
  // Blobs are mostly streamed front to back: ask for aggressive readahead.
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::make_unique<FileBlobReader>(
      std::move(path), digest, std::move(fd), footer, std::move(checksums));
}

absl::StatusOr<std::optional<UniqueFd>> FileBlobStore::OpenStoredFile(
    const Digest& digest) {
  CKPTD_ASSIGN_OR_RETURN(Fd fd,
                         OpenStored(digest, BlobPath(blobs_dir_, digest)));
  return std::optional<UniqueFd>(UniqueFd(fd.Release()));
}

absl::Status FileBlobStore::Delete(const Digest& digest) {
  const std::string path = BlobPath(blobs_dir_, digest);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ckptd::ErrnoToStatus(errno, absl::StrCat("delete blob ", path));
  }
  // Also when absent: a concurrent Delete may not have fsynced yet.
  return FsyncDir(FanOutDir(blobs_dir_, digest));
}

absl::Status FileBlobStore::ForEach(
    absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) {
  std::vector<Digest> digests;
  for (int i = 0; i < kFanOut; ++i) {
    const std::string fan_out = FanOutDir(blobs_dir_, i);
    const std::string prefix = absl::StrFormat("%02x", i);
    digests.clear();
    {
      DIR* dir = ::opendir(fan_out.c_str());
      if (dir == nullptr) {
        return ckptd::ErrnoToStatus(
            errno, absl::StrCat("open blob directory ", fan_out));
      }
      errno = 0;
      while (const dirent* e = ::readdir(dir)) {
        if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN) continue;
        const absl::string_view name = e->d_name;
        absl::StatusOr<Digest> d = DigestFromHex(name);
        if (d.ok() && absl::StartsWith(name, prefix)) digests.push_back(*d);
      }
      const int err = errno;
      ::closedir(dir);
      if (err != 0) {
        return ckptd::ErrnoToStatus(
            err, absl::StrCat("read blob directory ", fan_out));
      }
    }
    for (const Digest& d : digests) {
      const std::string path = BlobPath(blobs_dir_, d);
      absl::StatusOr<Fd> fd = OpenFile(path, O_RDONLY, "open blob");
      if (!fd.ok()) {
        if (absl::IsNotFound(fd.status())) continue;  // deleted meanwhile
        return fd.status();
      }
      struct stat st;
      if (::fstat(fd->get(), &st) != 0) {
        return ckptd::ErrnoToStatus(errno,
                                    absl::StrCat("stat blob file ", path));
      }
      if (!S_ISREG(st.st_mode)) continue;
      // A blob with a damaged footer is still listed (so GC can remove it),
      // with its size on disk; reading it gives DATA_LOSS.
      absl::StatusOr<BlobFooter> footer = ReadFooter(fd->get(), path, d);
      if (!footer.ok() && !absl::IsDataLoss(footer.status())) {
        return footer.status();
      }
      fn(d,
         footer.ok() ? footer->data_size : static_cast<uint64_t>(st.st_size));
    }
  }
  return absl::OkStatus();
}

absl::Status FileBlobStore::RemoveTemporaries() {
  std::vector<std::string> names;
  {
    DIR* dir = ::opendir(tmp_dir_.c_str());
    if (dir == nullptr) {
      return ckptd::ErrnoToStatus(
          errno, absl::StrCat("open blob tmp directory ", tmp_dir_));
    }
    errno = 0;
    while (const dirent* e = ::readdir(dir)) {
      if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN) continue;
      if (IsTemporaryName(e->d_name)) names.emplace_back(e->d_name);
    }
    const int err = errno;
    ::closedir(dir);
    if (err != 0) {
      return ckptd::ErrnoToStatus(
          err, absl::StrCat("read blob tmp directory ", tmp_dir_));
    }
  }
  if (names.empty()) return absl::OkStatus();
  for (const std::string& name : names) {
    const std::string path = absl::StrCat(tmp_dir_, "/", name);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT && errno != EISDIR) {
      return ckptd::ErrnoToStatus(errno,
                                  absl::StrCat("delete blob tmp file ", path));
    }
  }
  return FsyncDir(tmp_dir_);
}

absl::StatusOr<bool> FileBlobStore::LinkFrom(BlobStore& source,
                                             const Digest& digest) {
  const auto* from_store = dynamic_cast<const FileBlobStore*>(&source);
  if (from_store == nullptr || from_store == this) return false;
  const std::string from = BlobPath(from_store->blobs_dir_, digest);
  const std::string to = BlobPath(blobs_dir_, digest);
  if (::link(from.c_str(), to.c_str()) != 0) {
    switch (errno) {
      case EEXIST:  // linked (or copied) before: the name is taken by it
        break;
      case EXDEV:  // another filesystem
      case EPERM:  // the filesystem has no hard links (or refuses them)
      case EMLINK:
      case EOPNOTSUPP:
        return false;
      case ENOENT:
        return absl::NotFoundError(absl::StrCat(
            "blob ", digest.Hex(), " is not stored (no file ", from, ")"));
      default:
        return ckptd::ErrnoToStatus(
            errno, absl::StrCat("hard-link blob file ", from, " to ", to));
    }
  }
  linked_into_[digest.bytes[0]].store(true, std::memory_order_relaxed);
  return true;
}

absl::Status FileBlobStore::SyncLinks() {
  bool any = false;
  for (int i = 0; i < kFanOut; ++i) {
    if (!linked_into_[i].exchange(false)) continue;
    any = true;
    CKPTD_RETURN_IF_ERROR(FsyncDir(FanOutDir(blobs_dir_, i)));
  }
  return any ? FsyncDir(blobs_dir_) : absl::OkStatus();
}

}  // namespace

std::string FileBlobPath(const std::string& dir, const Digest& digest) {
  return BlobPath(absl::StrCat(dir, "/blobs"), digest);
}

absl::StatusOr<std::unique_ptr<BlobStore>> OpenFileBlobStore(
    const std::string& dir) {
  auto store = std::make_unique<FileBlobStore>(dir);
  CKPTD_RETURN_IF_ERROR(store->Init());
  return store;
}

}  // namespace ckptd::storage
