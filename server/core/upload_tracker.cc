#include "server/core/upload_tracker.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"

namespace ckptd::core {

void UploadTracker::BeginFresh(const UploadKey& key) {
  absl::MutexLock lock(&mu_);
  ++active_[key];
}

absl::StatusOr<std::unique_ptr<storage::BlobWriter>> UploadTracker::Resume(
    const UploadKey& key, uint64_t blob_size, uint64_t offset) {
  const Digest& digest = key.digest;
  absl::MutexLock lock(&mu_);
  auto it = suspended_.find(key);
  if (it == suspended_.end() || it->second.blob_size != blob_size) {
    return WithReason(
        absl::FailedPreconditionError(absl::StrCat(
            "blob ", digest.Hex(),
            ": no interrupted upload to resume at offset ", offset,
            "; QueryUpload reports where to resume (0: start over)")),
        v1::RESUME_POINT_LOST);
  }
  if (it->second.durable != offset) {
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "blob ", digest.Hex(), ": resume offset ", offset,
                          " but the durable offset is ", it->second.durable)),
                      v1::RESUME_POINT_LOST);
  }
  std::unique_ptr<storage::BlobWriter> writer = std::move(it->second.writer);
  suspended_.erase(it);
  ++active_[key];  // with the erase: QueryUpload sees one or the other
  return writer;
}

void UploadTracker::End(const UploadKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(key);
  if (it != active_.end() && --it->second == 0) active_.erase(it);
}

void UploadTracker::Suspend(const UploadKey& key, uint64_t blob_size,
                            uint64_t durable,
                            std::unique_ptr<storage::BlobWriter> writer,
                            absl::Time at) {
  // Writers dropped here abandon their temp files: after the unlock.
  std::unique_ptr<storage::BlobWriter> evicted, replaced;
  absl::MutexLock lock(&mu_);
  if (suspended_.size() >= max_suspended_ && !suspended_.contains(key)) {
    auto oldest = suspended_.begin();
    for (auto it = suspended_.begin(); it != suspended_.end(); ++it) {
      if (it->second.at < oldest->second.at) oldest = it;
    }
    evicted = std::move(oldest->second.writer);
    suspended_.erase(oldest);
  }
  Suspended& s = suspended_[key];
  replaced = std::move(s.writer);
  s.writer = std::move(writer);
  s.blob_size = blob_size;
  s.durable = durable;
  s.at = at;
}

void UploadTracker::Drop(const UploadKey& key) {
  std::unique_ptr<storage::BlobWriter> dropped;
  absl::MutexLock lock(&mu_);
  auto it = suspended_.find(key);
  if (it == suspended_.end()) return;
  dropped = std::move(it->second.writer);
  suspended_.erase(it);
}

void UploadTracker::AwaitIdle(const UploadKey& key, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !active_.contains(key);
  };
  mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

uint64_t UploadTracker::DurableOffset(const UploadKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = suspended_.find(key);
  return it == suspended_.end() ? 0 : it->second.durable;
}

int UploadTracker::DropVersion(const std::string& run, uint64_t version) {
  std::vector<std::unique_ptr<storage::BlobWriter>> dropped;
  absl::MutexLock lock(&mu_);
  for (auto it = suspended_.begin(); it != suspended_.end();) {
    if (it->first.version == version && it->first.run == run) {
      dropped.push_back(std::move(it->second.writer));
      suspended_.erase(it++);
    } else {
      ++it;
    }
  }
  return static_cast<int>(dropped.size());
}

int UploadTracker::ExpireOlderThan(absl::Time cutoff) {
  std::vector<std::unique_ptr<storage::BlobWriter>> expired;
  absl::MutexLock lock(&mu_);
  for (auto it = suspended_.begin(); it != suspended_.end();) {
    if (it->second.at < cutoff) {
      expired.push_back(std::move(it->second.writer));
      suspended_.erase(it++);
    } else {
      ++it;
    }
  }
  return static_cast<int>(expired.size());
}

void UploadTracker::Clear() {
  absl::flat_hash_map<UploadKey, Suspended> cleared;
  absl::MutexLock lock(&mu_);
  cleared.swap(suspended_);
}

size_t UploadTracker::active_count() {
  absl::MutexLock lock(&mu_);
  return active_.size();
}

size_t UploadTracker::suspended_count() {
  absl::MutexLock lock(&mu_);
  return suspended_.size();
}

}  // namespace ckptd::core
