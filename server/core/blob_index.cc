#include "server/core/blob_index.h"

namespace ckptd::core {

void BlobIndex::AddStored(const Digest& digest, uint64_t size) {
  Entry& e = entries_[digest];
  if (e.deleting) return;  // FinishDelete decides
  if (!e.stored) ++stored_count_;
  e.stored = true;
  e.size = size;
  MaybeCandidate(digest, e);
}

std::optional<uint64_t> BlobIndex::StoredSize(const Digest& digest) const {
  auto it = entries_.find(digest);
  if (it == entries_.end() || !it->second.stored || it->second.deleting) {
    return std::nullopt;
  }
  return it->second.size;
}

bool BlobIndex::Deleting(const Digest& digest) const {
  auto it = entries_.find(digest);
  return it != entries_.end() && it->second.deleting;
}

void BlobIndex::AddRef(const Digest& digest) { ++entries_[digest].refs; }

void BlobIndex::DropRef(const Digest& digest) {
  auto it = entries_.find(digest);
  if (it == entries_.end() || it->second.refs == 0) return;
  --it->second.refs;
  MaybeCandidate(digest, it->second);
  MaybeErase(digest);
}

void BlobIndex::Pin(const Digest& digest) { ++entries_[digest].pins; }

void BlobIndex::Unpin(const Digest& digest) {
  auto it = entries_.find(digest);
  if (it == entries_.end() || it->second.pins == 0) return;
  --it->second.pins;
  MaybeCandidate(digest, it->second);
  MaybeErase(digest);
}

void BlobIndex::MaybeCandidate(const Digest& digest, const Entry& e) {
  if (IsGarbage(e)) candidates_.push_back(digest);
}

void BlobIndex::MaybeErase(const Digest& digest) {
  auto it = entries_.find(digest);
  if (it == entries_.end()) return;
  const Entry& e = it->second;
  if (!e.stored && !e.deleting && e.refs == 0 && e.pins == 0) {
    entries_.erase(it);
  }
}

BlobIndex::Garbage BlobIndex::MarkDeleting(const Digest& digest, Entry& e) {
  e.deleting = true;
  e.stored = false;
  --stored_count_;
  return Garbage{digest, e.size};
}

std::vector<BlobIndex::Garbage> BlobIndex::TakeNewGarbage() {
  std::vector<Garbage> out;
  std::vector<Digest> candidates;
  candidates.swap(candidates_);
  for (const Digest& d : candidates) {
    auto it = entries_.find(d);
    // Re-checked: a candidate may have been referenced or pinned again.
    if (it != entries_.end() && IsGarbage(it->second)) {
      out.push_back(MarkDeleting(d, it->second));
    }
  }
  return out;
}

std::vector<BlobIndex::Garbage> BlobIndex::TakeAllGarbage() {
  candidates_.clear();
  std::vector<Garbage> out;
  for (auto& [d, e] : entries_) {
    if (IsGarbage(e)) out.push_back(MarkDeleting(d, e));
  }
  return out;
}

void BlobIndex::FinishDelete(const Digest& digest, bool deleted) {
  auto it = entries_.find(digest);
  if (it == entries_.end() || !it->second.deleting) return;
  it->second.deleting = false;
  if (!deleted) {
    it->second.stored = true;
    ++stored_count_;
  }
  MaybeErase(digest);
}

}  // namespace ckptd::core
