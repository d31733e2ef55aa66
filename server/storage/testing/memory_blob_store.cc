#include "server/storage/testing/memory_blob_store.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/status.h"

namespace ckptd::storage::testing {

namespace {

struct StoredBlob {
  std::string data;
  std::vector<uint64_t> checksums;  // one per kBlobChecksumChunk
};

struct PartialBlob {
  std::string data;
  uint64_t durable = 0;  // bytes covered by the last Sync
  bool live = true;      // false once its writer was lost in a crash
};

}  // namespace

struct MemoryBlobStore::State {
  mutable absl::Mutex mu;
  absl::flat_hash_map<Digest, std::shared_ptr<StoredBlob>> blobs
      ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uint64_t, PartialBlob> partials ABSL_GUARDED_BY(mu);
  uint64_t next_partial_id ABSL_GUARDED_BY(mu) = 0;
  // Bumped by SimulateCrash; writers of an older epoch are dead.
  uint64_t epoch ABSL_GUARDED_BY(mu) = 0;
};

namespace {

using State = MemoryBlobStore::State;

class MemoryBlobWriter final : public BlobWriter {
 public:
  MemoryBlobWriter(std::shared_ptr<State> state, uint64_t id, uint64_t epoch)
      : state_(std::move(state)), id_(id), epoch_(epoch) {}
  ~MemoryBlobWriter() override { Abandon(); }

  absl::Status Append(std::string_view data) override {
    absl::MutexLock lock(&state_->mu);
    CKPTD_ASSIGN_OR_RETURN(PartialBlob * partial, Partial());
    partial->data.append(data);
    size_ = partial->data.size();
    return absl::OkStatus();
  }

  uint64_t size() const override { return size_; }

  absl::StatusOr<uint64_t> Sync() override {
    absl::MutexLock lock(&state_->mu);
    CKPTD_ASSIGN_OR_RETURN(PartialBlob * partial, Partial());
    partial->durable = partial->data.size();
    return partial->durable;
  }

  absl::Status Commit(const Digest& expected) override {
    return CommitImpl(expected, /*replace=*/false);
  }

  absl::Status CommitReplacing(const Digest& expected) override {
    return CommitImpl(expected, /*replace=*/true);
  }

  void Abandon() override;

 private:
  absl::Status CommitImpl(const Digest& expected, bool replace) {
    absl::MutexLock lock(&state_->mu);
    CKPTD_ASSIGN_OR_RETURN(PartialBlob * partial, Partial());
    finished_ = true;
    std::string data = std::move(partial->data);
    state_->partials.erase(id_);
    const Digest actual = DigestOf(data.data(), data.size());
    if (actual != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob digest mismatch: expected ", expected.Hex(),
                       " but the ", data.size(), " bytes received hash to ",
                       actual.Hex(), "; the blob was discarded"));
    }
    if (!replace && state_->blobs.contains(expected)) return absl::OkStatus();
    auto blob = std::make_shared<StoredBlob>();
    for (uint64_t off = 0; off < data.size(); off += kBlobChecksumChunk) {
      blob->checksums.push_back(ChunkChecksum(
          data.data() + off,
          std::min<uint64_t>(kBlobChecksumChunk, data.size() - off)));
    }
    blob->data = std::move(data);
    state_->blobs[expected] = std::move(blob);
    return absl::OkStatus();
  }

  absl::StatusOr<PartialBlob*> Partial()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (finished_) {
      return absl::FailedPreconditionError(
          "blob writer is finished (committed or abandoned)");
    }
    if (epoch_ != state_->epoch) {
      return absl::AbortedError(
          "blob writer was lost in a simulated crash of the blob store");
    }
    auto it = state_->partials.find(id_);
    if (it == state_->partials.end()) {
      return absl::InternalError("partial blob vanished");
    }
    return &it->second;
  }

  const std::shared_ptr<State> state_;
  const uint64_t id_;
  const uint64_t epoch_;
  bool finished_ = false;
  uint64_t size_ = 0;
};

void MemoryBlobWriter::Abandon() {
  absl::MutexLock lock(&state_->mu);
  if (finished_) return;
  finished_ = true;
  // A writer lost in a crash cannot clean up: its partial blob stays for
  // RemoveTemporaries, like a tmp file of a killed process.
  if (epoch_ == state_->epoch) state_->partials.erase(id_);
}

class MemoryBlobReader final : public BlobReader {
 public:
  MemoryBlobReader(std::shared_ptr<State> state, Digest digest,
                   std::shared_ptr<StoredBlob> blob, uint64_t size)
      : state_(std::move(state)),
        digest_(digest),
        blob_(std::move(blob)),
        size_(size) {}

  uint64_t size() const override { return size_; }

  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override {
    if (offset > size_ || length > size_ - offset) {
      return absl::OutOfRangeError(absl::StrCat(
          "read of ", length, " bytes at offset ", offset,
          " is past the end of blob ", digest_.Hex(), " (", size_, " bytes)"));
    }
    if (length == 0) return absl::OkStatus();
    absl::MutexLock lock(&state_->mu);  // CorruptForTesting writes in place
    const std::string& data = blob_->data;
    const uint64_t end = offset + length;
    for (uint64_t c = offset / kBlobChecksumChunk; c * kBlobChecksumChunk < end;
         ++c) {
      const uint64_t cb = c * kBlobChecksumChunk;
      const uint64_t ce = std::min(cb + kBlobChecksumChunk, size_);
      if (ChunkChecksum(data.data() + cb, ce - cb) != blob_->checksums[c]) {
        return absl::DataLossError(absl::StrCat(
            "blob ", digest_.Hex(), " is corrupt at offset ", cb, ": bytes [",
            cb, ", ", ce, ") do not match their stored checksum"));
      }
    }
    std::memcpy(out, data.data() + offset, length);
    return absl::OkStatus();
  }

 private:
  const std::shared_ptr<State> state_;
  const Digest digest_;
  const std::shared_ptr<StoredBlob> blob_;
  const uint64_t size_;
};

}  // namespace

MemoryBlobStore::MemoryBlobStore() : state_(std::make_shared<State>()) {}
MemoryBlobStore::~MemoryBlobStore() = default;

absl::StatusOr<std::unique_ptr<BlobWriter>> MemoryBlobStore::NewWriter(
    const Digest& /*expected*/) {
  absl::MutexLock lock(&state_->mu);
  const uint64_t id = state_->next_partial_id++;
  state_->partials[id] = PartialBlob{};
  return std::make_unique<MemoryBlobWriter>(state_, id, state_->epoch);
}

absl::StatusOr<std::optional<uint64_t>> MemoryBlobStore::Stat(
    const Digest& digest) {
  absl::MutexLock lock(&state_->mu);
  auto it = state_->blobs.find(digest);
  if (it == state_->blobs.end()) return std::nullopt;
  return it->second->data.size();
}

absl::StatusOr<std::unique_ptr<BlobReader>> MemoryBlobStore::Open(
    const Digest& digest) {
  absl::MutexLock lock(&state_->mu);
  auto it = state_->blobs.find(digest);
  if (it == state_->blobs.end()) {
    return absl::NotFoundError(
        absl::StrCat("blob ", digest.Hex(), " is not stored"));
  }
  return std::make_unique<MemoryBlobReader>(state_, digest, it->second,
                                            it->second->data.size());
}

absl::Status MemoryBlobStore::Delete(const Digest& digest) {
  absl::MutexLock lock(&state_->mu);
  state_->blobs.erase(digest);
  return absl::OkStatus();
}

absl::Status MemoryBlobStore::ForEach(
    absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) {
  std::vector<std::pair<Digest, uint64_t>> blobs;
  {
    absl::MutexLock lock(&state_->mu);
    blobs.reserve(state_->blobs.size());
    for (const auto& [digest, blob] : state_->blobs) {
      blobs.emplace_back(digest, blob->data.size());
    }
  }
  // Outside the lock: `fn` may call back into the store.
  for (const auto& [digest, size] : blobs) fn(digest, size);
  return absl::OkStatus();
}

absl::Status MemoryBlobStore::RemoveTemporaries() {
  absl::MutexLock lock(&state_->mu);
  absl::erase_if(state_->partials,
                 [](const auto& entry) { return !entry.second.live; });
  return absl::OkStatus();
}

void MemoryBlobStore::SimulateCrash() {
  absl::MutexLock lock(&state_->mu);
  ++state_->epoch;
  for (auto& [id, partial] : state_->partials) {
    partial.data.resize(partial.durable);
    partial.live = false;
  }
}

absl::Status MemoryBlobStore::CorruptForTesting(const Digest& digest,
                                                uint64_t offset) {
  absl::MutexLock lock(&state_->mu);
  auto it = state_->blobs.find(digest);
  if (it == state_->blobs.end()) {
    return absl::NotFoundError(
        absl::StrCat("blob ", digest.Hex(), " is not stored"));
  }
  std::string& data = it->second->data;
  if (offset >= data.size()) {
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " of blob ",
                                              digest.Hex(), " (", data.size(),
                                              " bytes) does not exist"));
  }
  data[offset] = static_cast<char>(~data[offset]);
  return absl::OkStatus();
}

size_t MemoryBlobStore::TemporaryCount() const {
  absl::MutexLock lock(&state_->mu);
  return state_->partials.size();
}

uint64_t MemoryBlobStore::TemporaryBytes() const {
  absl::MutexLock lock(&state_->mu);
  uint64_t total = 0;
  for (const auto& [id, partial] : state_->partials) {
    total += partial.data.size();
  }
  return total;
}

std::unique_ptr<MemoryBlobStore> NewMemoryBlobStore() {
  return std::make_unique<MemoryBlobStore>();
}

}  // namespace ckptd::storage::testing
