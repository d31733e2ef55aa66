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
// A blob file is the raw data bytes followed by a trailer:
//
//   data            data_size bytes
//   checksums       chunk_count x u64 LE: XXH3-64 of each chunk_size
//                   (kBlobChecksumChunk, 1 MiB) chunk of data; the last chunk
//                   may be short; an empty blob has no chunks
//   footer          24 bytes: magic "CKPTBLB1", data_size u64 LE,
//                   chunk_size u32 LE, chunk_count u32 LE
//
// The footer is self-checking: chunk_count == ceil(data_size / chunk_size)
// and file size == data_size + 8 * chunk_count + 24. A file that fails
// this (truncated, or a damaged footer) reads as DATA_LOSS. Stat and ForEach
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
#include <xxhash.h>

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
#include "server/storage/blob_store.h"

namespace ckptd::storage {
namespace {

constexpr char kFooterMagic[8] = {'C', 'K', 'P', 'T', 'B', 'L', 'B', '1'};
constexpr size_t kFooterSize = 24;
constexpr size_t kChecksumSize = 8;
// Refuse footers claiming chunks larger than this: a reader allocates one
// chunk of scratch space.
constexpr uint64_t kMaxChunkSize = 64 << 20;
constexpr int kFanOut = 256;
constexpr mode_t kDirMode = 0755;
constexpr mode_t kFileMode = 0644;
constexpr absl::string_view kTmpPrefix = "blob-";
constexpr absl::string_view kTmpSuffix = ".tmp";
// Appends are hashed twice (digest, chunk checksum) slice by slice so that
// the second pass reads from cache.
constexpr size_t kHashSlice = 256 << 10;
constexpr int kTmpCreateAttempts = 16;
// Writeback of appended data is started every this many bytes, so the disk
// works while data still arrives and Commit's fdatasync has little left.
constexpr uint64_t kWritebackWindow = 8 << 20;

void StoreLE64(uint64_t v, char* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
void StoreLE32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t LoadLE64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t LoadLE32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

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

struct Footer {
  uint64_t data_size = 0;
  uint32_t chunk_size = 0;
  uint32_t chunk_count = 0;
};

uint64_t ChunkCount(uint64_t data_size, uint64_t chunk_size) {
  return data_size / chunk_size + (data_size % chunk_size != 0 ? 1 : 0);
}

void EncodeFooter(const Footer& f, char* out) {
  std::memcpy(out, kFooterMagic, sizeof(kFooterMagic));
  StoreLE64(f.data_size, out + 8);
  StoreLE32(f.chunk_size, out + 16);
  StoreLE32(f.chunk_count, out + 20);
}

// Reads and validates the footer of an open blob file.
absl::StatusOr<Footer> ReadFooter(int fd, const std::string& path,
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
  if (file_size < kFooterSize) return bad("too short for its footer");
  char buf[kFooterSize];
  CKPTD_ASSIGN_OR_RETURN(
      size_t n, PreadFull(fd, buf, kFooterSize, file_size - kFooterSize, path));
  if (n != kFooterSize) return bad("footer cut short");
  if (std::memcmp(buf, kFooterMagic, sizeof(kFooterMagic)) != 0) {
    return bad("bad footer magic (truncated?)");
  }
  Footer f;
  f.data_size = LoadLE64(buf + 8);
  f.chunk_size = LoadLE32(buf + 16);
  f.chunk_count = LoadLE32(buf + 20);
  if (f.chunk_size == 0 || f.chunk_size > kMaxChunkSize ||
      f.chunk_count != ChunkCount(f.data_size, f.chunk_size) ||
      f.data_size > file_size ||
      file_size - f.data_size !=
          kChecksumSize * uint64_t{f.chunk_count} + kFooterSize) {
    return bad(absl::StrCat("inconsistent footer (data_size ", f.data_size,
                            ", chunk_size ", f.chunk_size, ", chunk_count ",
                            f.chunk_count, ")"));
  }
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
        fd_(std::move(fd)),
        chunk_state_(XXH3_createState()) {
    XXH3_64bits_reset(chunk_state_.get());
  }
  ~FileBlobWriter() override { Abandon(); }

  absl::Status Append(std::string_view data) override;
  uint64_t size() const override { return size_; }
  absl::StatusOr<uint64_t> Sync() override;
  absl::Status Commit(const Digest& expected) override;
  absl::Status CommitReplacing(const Digest& expected) override;
  void Abandon() override;

 private:
  struct XxhStateFree {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };

  absl::Status CheckUsable() const;
  void Hash(const char* p, size_t n);
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
  DigestBuilder digest_;
  std::unique_ptr<XXH3_state_t, XxhStateFree> chunk_state_;
  uint64_t chunk_fill_ = 0;          // bytes of the current, open chunk
  std::vector<uint64_t> checksums_;  // of the completed chunks
};

class FileBlobReader final : public BlobReader {
 public:
  FileBlobReader(std::string path, Digest digest, Fd fd, Footer footer,
                 std::vector<uint64_t> checksums)
      : path_(std::move(path)),
        digest_(digest),
        fd_(std::move(fd)),
        footer_(footer),
        checksums_(std::move(checksums)) {}

  uint64_t size() const override { return footer_.data_size; }
  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override;

 private:
  // Reads chunks [first, last] — whole, contiguous — into `dst` and verifies
  // them.
  absl::Status ReadChunks(uint64_t first, uint64_t last, char* dst);

  const std::string path_;
  const Digest digest_;
  Fd fd_;
  const Footer footer_;
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

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter() override;
  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override;
  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override;
  absl::Status Delete(const Digest& digest) override;
  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) override;
  absl::Status RemoveTemporaries() override;
  absl::StatusOr<bool> LinkFrom(BlobStore& source,
                                const Digest& digest) override;
  absl::Status SyncLinks() override;

 private:
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

void FileBlobWriter::Hash(const char* p, size_t n) {
  while (n > 0) {
    const size_t slice = static_cast<size_t>(
        std::min<uint64_t>({n, kHashSlice, kBlobChecksumChunk - chunk_fill_}));
    digest_.Update(p, slice);
    XXH3_64bits_update(chunk_state_.get(), p, slice);
    chunk_fill_ += slice;
    if (chunk_fill_ == kBlobChecksumChunk) {
      checksums_.push_back(XXH3_64bits_digest(chunk_state_.get()));
      XXH3_64bits_reset(chunk_state_.get());
      chunk_fill_ = 0;
    }
    p += slice;
    n -= slice;
  }
}

absl::Status FileBlobWriter::Append(std::string_view data) {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  if (data.empty()) return absl::OkStatus();
  // A failed write poisons the writer, so hashing first is safe.
  Hash(data.data(), data.size());
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
  const Digest actual = digest_.Finish();
  if (actual != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob digest mismatch: expected ", expected.Hex(), " but the ", size_,
        " bytes received hash to ", actual.Hex(), "; the blob was discarded"));
  }
  if (chunk_fill_ > 0) {
    checksums_.push_back(XXH3_64bits_digest(chunk_state_.get()));
    chunk_fill_ = 0;
  }
  std::string trailer(checksums_.size() * kChecksumSize + kFooterSize, '\0');
  for (size_t i = 0; i < checksums_.size(); ++i) {
    StoreLE64(checksums_[i], &trailer[i * kChecksumSize]);
  }
  EncodeFooter({.data_size = size_,
                .chunk_size = static_cast<uint32_t>(kBlobChecksumChunk),
                .chunk_count = static_cast<uint32_t>(checksums_.size())},
               &trailer[checksums_.size() * kChecksumSize]);
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
      absl::StatusOr<Footer> footer =
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
  for (uint64_t c = first; c <= last; ++c) {
    const uint64_t cb = c * chunk;
    const uint64_t ce = std::min(cb + chunk, footer_.data_size);
    if (XXH3_64bits(dst + (cb - begin), ce - cb) != checksums_[c]) {
      return absl::DataLossError(absl::StrCat(
          "blob ", digest_.Hex(), " is corrupt at offset ", cb, ": bytes [", cb,
          ", ", ce, ") do not match their stored checksum (file ", path_, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status FileBlobReader::ReadAt(uint64_t offset, uint64_t length,
                                    char* out) {
  const uint64_t size = footer_.data_size;
  if (offset > size || length > size - offset) {
    return absl::OutOfRangeError(absl::StrCat(
        "read of ", length, " bytes at offset ", offset, " is past the end of ",
        "blob ", digest_.Hex(), " (", size, " bytes)"));
  }
  if (length == 0) return absl::OkStatus();
  const uint64_t chunk = footer_.chunk_size;
  const uint64_t end = offset + length;
  const uint64_t first = offset / chunk;
  const uint64_t last = (end - 1) / chunk;
  auto covered = [&](uint64_t c) {
    return c * chunk >= offset && std::min((c + 1) * chunk, size) <= end;
  };
  // Partly requested chunks go through scratch space; the run of wholly
  // requested chunks between them is read straight into `out`.
  auto read_partial = [&](uint64_t c) -> absl::Status {
    if (scratch_ == nullptr) scratch_.reset(new char[chunk]);
    CKPTD_RETURN_IF_ERROR(ReadChunks(c, c, scratch_.get()));
    const uint64_t cb = c * chunk;
    const uint64_t from = std::max(cb, offset);
    const uint64_t to = std::min({cb + chunk, size, end});
    std::memcpy(out + (from - offset), scratch_.get() + (from - cb), to - from);
    return absl::OkStatus();
  };
  uint64_t whole_begin = first;  // [whole_begin, whole_end): chunk indexes
  uint64_t whole_end = last + 1;
  if (!covered(first)) {
    CKPTD_RETURN_IF_ERROR(read_partial(first));
    whole_begin = first + 1;
  }
  if (last >= whole_begin && !covered(last)) {
    CKPTD_RETURN_IF_ERROR(read_partial(last));
    whole_end = last;
  }
  if (whole_begin < whole_end) {
    CKPTD_RETURN_IF_ERROR(ReadChunks(whole_begin, whole_end - 1,
                                     out + (whole_begin * chunk - offset)));
  }
  return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<BlobWriter>> FileBlobStore::NewWriter() {
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
  CKPTD_ASSIGN_OR_RETURN(Footer footer, ReadFooter(fd->get(), path, digest));
  return footer.data_size;
}

absl::StatusOr<std::unique_ptr<BlobReader>> FileBlobStore::Open(
    const Digest& digest) {
  std::string path = BlobPath(blobs_dir_, digest);
  absl::StatusOr<Fd> fd = OpenFile(path, O_RDONLY, "open blob");
  if (!fd.ok()) {
    if (absl::IsNotFound(fd.status())) {
      return absl::NotFoundError(
          absl::StrCat("blob ", digest.Hex(), " is not stored"));
    }
    return fd.status();
  }
  CKPTD_ASSIGN_OR_RETURN(Footer footer, ReadFooter(fd->get(), path, digest));
  std::string raw(uint64_t{footer.chunk_count} * kChecksumSize, '\0');
  CKPTD_ASSIGN_OR_RETURN(size_t n, PreadFull(fd->get(), raw.data(), raw.size(),
                                             footer.data_size, path));
  if (n != raw.size()) {
    return absl::DataLossError(absl::StrCat("blob ", digest.Hex(), " (file ",
                                            path, ") checksums cut short"));
  }
  std::vector<uint64_t> checksums(footer.chunk_count);
  for (size_t i = 0; i < checksums.size(); ++i) {
    checksums[i] = LoadLE64(&raw[i * kChecksumSize]);
  }
  // Blobs are mostly streamed front to back: ask for aggressive readahead.
  ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::make_unique<FileBlobReader>(
      std::move(path), digest, *std::move(fd), footer, std::move(checksums));
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
      absl::StatusOr<Footer> footer = ReadFooter(fd->get(), path, d);
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

absl::StatusOr<std::unique_ptr<BlobStore>> OpenFileBlobStore(
    const std::string& dir) {
  auto store = std::make_unique<FileBlobStore>(dir);
  CKPTD_RETURN_IF_ERROR(store->Init());
  return store;
}

}  // namespace ckptd::storage
