// The read cache: a file store (file_blob_store.cc) under the cache dir
// holding whole copies of remote blobs, in the same verified format.
//
// Open(d) on a miss reads the blob from the remote store (its checksums
// checked as it is read), writes it into the local store and commits it
// there, which checks the bytes against `d` once more; then it serves the
// local copy (so the first read of a blob waits for all of it). While one
// reader fills a blob, other readers of it read the bucket directly. A blob
// that cannot be read whole (damaged in the bucket) is not cached: the remote
// reader is returned, whose reads fail only for the damaged chunks. One fill
// per digest at a time: a second reader of the same blob waits for the first. A
// cached copy found damaged while read (the local reader's checksums) is
// dropped and the read goes on from the remote store: a bad local disk never
// quarantines a good remote blob. Writes, deletes, listings and Stat go to the
// remote store (Delete also drops the local copy).
//
// Eviction: least recently opened first, once the cached bytes pass
// max_bytes. An evicted file that a reader still has open stays readable
// until it is closed (POSIX unlink). At open, what the dir already holds is
// taken back (it was verified when filled, and is verified again on every
// read), oldest by modification time first.
//
// Thread safety: all methods may be called concurrently.
#include "server/storage/cached_blob_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <list>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/status.h"
#include "spdlog/spdlog.h"

namespace ckptd::storage {
namespace {

// Bytes copied per read while a blob is fetched into the cache.
constexpr uint64_t kFillChunkBytes = 4 << 20;

class CachedBlobStore;

// A cached copy that falls back to the remote blob if it turns out damaged.
class CachedReader : public BlobReader {
 public:
  CachedReader(CachedBlobStore* store, Digest digest,
               std::unique_ptr<BlobReader> local)
      : store_(store), digest_(digest), reader_(std::move(local)) {}
  uint64_t size() const override { return reader_->size(); }
  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override;

 private:
  CachedBlobStore* store_;
  Digest digest_;
  std::unique_ptr<BlobReader> reader_;
  bool remote_ = false;
};

class CachedBlobStore : public BlobStore {
 public:
  CachedBlobStore(std::shared_ptr<BlobStore> remote,
                  std::unique_ptr<BlobStore> local, BlobCacheOptions options)
      : remote_(std::move(remote)),
        local_(std::move(local)),
        options_(std::move(options)) {}

  ~CachedBlobStore() override {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  // Locks the dir (one process per cache dir), takes back what it holds
  // (oldest first), then trims to max_bytes.
  absl::Status Load() {
    const std::string lock = absl::StrCat(options_.dir, "/LOCK");
    lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ < 0) return ErrnoToStatus(errno, absl::StrCat("open ", lock));
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--cache_dir ", options_.dir,
          " is in use by another process (its LOCK is held); give each "
          "ckptd a cache dir of its own"));
    }
    CKPTD_RETURN_IF_ERROR(local_->RemoveTemporaries());
    std::vector<std::pair<Digest, uint64_t>> found;
    CKPTD_RETURN_IF_ERROR(local_->ForEach(
        [&](const Digest& d, uint64_t size) { found.emplace_back(d, size); }));
    std::vector<std::pair<int64_t, size_t>> by_age;
    for (size_t i = 0; i < found.size(); ++i) {
      struct stat st {};
      const std::string path = FileBlobPath(options_.dir, found[i].first);
      by_age.emplace_back(::stat(path.c_str(), &st) == 0 ? st.st_mtime : 0, i);
    }
    std::sort(by_age.begin(), by_age.end());
    std::vector<Digest> evicted;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [mtime, i] : by_age) {
        InsertLocked(found[i].first, found[i].second);
      }
      evicted = TrimLocked();
    }
    DropLocal(evicted);
    if (!found.empty()) {
      spdlog::info("read cache {}: {} blobs kept from before ({} evicted)",
                   options_.dir, found.size() - evicted.size(), evicted.size());
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) override {
    return remote_->NewWriter(expected);
  }
  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override {
    return remote_->Stat(digest);
  }
  absl::Status Delete(const Digest& digest) override {
    CKPTD_RETURN_IF_ERROR(remote_->Delete(digest));
    Forget(digest);
    return absl::OkStatus();
  }
  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn)
      override {
    return remote_->ForEach(fn);
  }
  absl::Status RemoveTemporaries() override {
    return remote_->RemoveTemporaries();
  }

  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override {
    for (;;) {
      bool cached = false;
      bool pass = false;
      {
        absl::MutexLock lock(&mu_);
        auto it = entries_.find(digest);
        if (it != entries_.end()) {
          lru_.splice(lru_.end(), lru_, it->second.position);
          ++stats_.hits;
          cached = true;
        } else if (filling_.contains(digest)) {
          // Another reader is fetching it: this one reads the bucket
          // rather than wait for the whole blob.
          ++stats_.passthrough;
          pass = true;
        } else {
          filling_.insert(digest);
        }
      }
      if (pass) return remote_->Open(digest);
      if (cached) {
        absl::StatusOr<std::unique_ptr<BlobReader>> local =
            local_->Open(digest);
        if (local.ok()) {
          return std::make_unique<CachedReader>(this, digest,
                                                *std::move(local));
        }
        // The file went (or cannot be read): fetch it again.
        spdlog::warn("read cache {}: cached blob {}: {}", options_.dir,
                     digest.Hex(), local.status().ToString());
        Forget(digest);
        continue;
      }
      absl::StatusOr<std::unique_ptr<BlobReader>> out = Fill(digest);
      absl::MutexLock lock(&mu_);
      filling_.erase(digest);
      return out;
    }
  }

  // The remote blob, for a cached copy found damaged.
  absl::StatusOr<std::unique_ptr<BlobReader>> Fallback(const Digest& digest) {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.fallbacks;
    }
    Forget(digest);
    return remote_->Open(digest);
  }

  BlobCacheStats stats() {
    absl::MutexLock lock(&mu_);
    BlobCacheStats s = stats_;
    s.blobs = entries_.size();
    s.bytes = bytes_;
    return s;
  }

 private:
  struct Entry {
    uint64_t size = 0;
    std::list<Digest>::iterator position;
  };

  // A miss: the remote blob, copied whole into the local store, then the
  // local copy. Falls back to the remote reader when the copy cannot be
  // made here (a full cache disk), or when the blob is larger than the
  // cache.
  absl::StatusOr<std::unique_ptr<BlobReader>> Fill(const Digest& digest) {
    CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> remote,
                           remote_->Open(digest));
    const uint64_t size = remote->size();
    if (size > options_.max_bytes) return remote;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.misses;
    }
    absl::StatusOr<std::unique_ptr<BlobWriter>> writer =
        local_->NewWriter(digest);
    absl::Status copied = writer.status();
    std::string buf;
    for (uint64_t off = 0; copied.ok() && off < size; off += buf.size()) {
      buf.resize(std::min(kFillChunkBytes, size - off));
      copied = remote->ReadAt(off, buf.size(), buf.data());
      if (!copied.ok()) {
        // Damaged (or unreachable) in the bucket: not cached; the caller's
        // reads of the remote blob say which bytes are bad.
        if (writer.ok()) (*writer)->Abandon();
        return remote;
      }
      copied = (*writer)->Append(buf);
    }
    if (copied.ok()) copied = (*writer)->Commit(digest);
    absl::StatusOr<std::unique_ptr<BlobReader>> local =
        copied.ok() ? local_->Open(digest) : copied;
    if (!local.ok()) {
      spdlog::warn(
          "read cache {}: could not keep blob {} ({}); reading it "
          "from the remote store",
          options_.dir, digest.Hex(), local.status().ToString());
      if (writer.ok()) (*writer)->Abandon();
      return remote;
    }
    std::vector<Digest> evicted;
    {
      absl::MutexLock lock(&mu_);
      InsertLocked(digest, size);
      evicted = TrimLocked();
    }
    DropLocal(evicted);
    return std::make_unique<CachedReader>(this, digest, *std::move(local));
  }

  void InsertLocked(const Digest& d, uint64_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (entries_.contains(d)) return;
    lru_.push_back(d);
    entries_[d] = Entry{size, std::prev(lru_.end())};
    bytes_ += size;
  }

  // The least recently opened blobs past max_bytes, removed from the index
  // (their files go in DropLocal, outside mu_).
  std::vector<Digest> TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Digest> out;
    while (bytes_ > options_.max_bytes && !lru_.empty()) {
      const Digest d = lru_.front();
      lru_.pop_front();
      bytes_ -= entries_[d].size;
      entries_.erase(d);
      out.push_back(d);
      ++stats_.evictions;
    }
    return out;
  }

  void Forget(const Digest& d) {
    {
      absl::MutexLock lock(&mu_);
      auto it = entries_.find(d);
      if (it == entries_.end()) return;
      bytes_ -= it->second.size;
      lru_.erase(it->second.position);
      entries_.erase(it);
    }
    DropLocal({d});
  }

  void DropLocal(const std::vector<Digest>& digests) {
    for (const Digest& d : digests) {
      if (absl::Status st = local_->Delete(d); !st.ok()) {
        spdlog::warn("read cache {}: remove blob {}: {}", options_.dir, d.Hex(),
                     st.ToString());
      }
    }
  }

  const std::shared_ptr<BlobStore> remote_;
  const std::unique_ptr<BlobStore> local_;
  const BlobCacheOptions options_;
  absl::Mutex mu_;
  std::list<Digest> lru_ ABSL_GUARDED_BY(mu_);  // least recent first
  absl::flat_hash_map<Digest, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Digest> filling_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  BlobCacheStats stats_ ABSL_GUARDED_BY(mu_);
  int lock_fd_ = -1;
};

absl::Status CachedReader::ReadAt(uint64_t offset, uint64_t length, char* out) {
  absl::Status st = reader_->ReadAt(offset, length, out);
  if (remote_ || st.code() != absl::StatusCode::kDataLoss) return st;
  spdlog::warn(
      "read cache: the cached copy of blob {} is damaged ({}); "
      "reading the remote blob",
      digest_.Hex(), st.ToString());
  CKPTD_ASSIGN_OR_RETURN(reader_, store_->Fallback(digest_));
  remote_ = true;
  return reader_->ReadAt(offset, length, out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlobStore>> OpenCachedBlobStore(
    std::shared_ptr<BlobStore> remote, BlobCacheOptions options) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError(
        "the read cache needs a directory (--cache_dir DIR)");
  }
  if (options.max_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cache_dir ", options.dir,
        " needs --cache_bytes: the bytes of blobs it may keep (e.g. "
        "--cache_bytes=10737418240 for 10 GiB)"));
  }
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<BlobStore> local,
                         OpenFileBlobStore(options.dir));
  auto store = std::make_unique<CachedBlobStore>(
      std::move(remote), std::move(local), std::move(options));
  CKPTD_RETURN_IF_ERROR(store->Load());
  return store;
}

BlobCacheStats CachedBlobStoreStats(BlobStore& store) {
  auto* cached = dynamic_cast<CachedBlobStore*>(&store);
  return cached == nullptr ? BlobCacheStats{} : cached->stats();
}

}  // namespace ckptd::storage
