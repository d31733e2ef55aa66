#include "server/core/blob_index.h"

namespace ckptd::core {

void BlobIndex::AddStored(const Digest& digest, uint64_t size, bool replaced) {
  Entry& e = entries_[digest];
  if (e.deleting) return;  // FinishDelete decides
  if (!e.stored || replaced) e.generation = next_generation_++;
  if (replaced && e.quarantined) {
    e.quarantined = false;
    --quarantined_count_;
  }
  if (!e.stored) {
    ++stored_count_;
    // Manifests counted before the blob was (Recover reads both).
    for (const auto& [run_id, n] : e.run_refs) run_bytes_[run_id] += size;
    stored_bytes_ += size;
  } else if (e.size != size) {
    // A damaged file may have been listed at its file size; its
    // replacement has the real one.
    for (const auto& [run_id, n] : e.run_refs) {
      run_bytes_[run_id] = run_bytes_[run_id] - e.size + size;
    }
    stored_bytes_ = stored_bytes_ - e.size + size;
  }
  e.stored = true;
  e.size = size;
  MaybeCandidate(digest, e);
}

std::optional<uint64_t> BlobIndex::StoredSize(const Digest& digest) const {
  auto it = entries_.find(digest);
  if (it == entries_.end() || !it->second.stored || it->second.deleting ||
      it->second.quarantined) {
    return std::nullopt;
  }
  return it->second.size;
}

std::optional<uint64_t> BlobIndex::Generation(const Digest& digest) const {
  auto it = entries_.find(digest);
  if (it == entries_.end() || !it->second.stored || it->second.deleting) {
    return std::nullopt;
  }
  return it->second.generation;
}

bool BlobIndex::Quarantine(const Digest& digest, uint64_t generation) {
  auto it = entries_.find(digest);
  if (it == entries_.end()) return false;
  Entry& e = it->second;
  if (!e.stored || e.deleting || e.quarantined || e.generation != generation) {
    return false;
  }
  e.quarantined = true;
  ++quarantined_count_;
  return true;
}

bool BlobIndex::Unquarantine(const Digest& digest, uint64_t generation) {
  auto it = entries_.find(digest);
  if (it == entries_.end()) return false;
  Entry& e = it->second;
  if (!e.stored || e.deleting || !e.quarantined || e.generation != generation) {
    return false;
  }
  e.quarantined = false;
  --quarantined_count_;
  return true;
}

bool BlobIndex::Quarantined(const Digest& digest) const {
  auto it = entries_.find(digest);
  return it != entries_.end() && it->second.quarantined;
}

std::vector<BlobIndex::StoredBlob> BlobIndex::StoredBlobs() const {
  std::vector<StoredBlob> out;
  out.reserve(stored_count_);
  for (const auto& [d, e] : entries_) {
    if (e.stored && !e.deleting) out.push_back({d, e.size});
  }
  return out;
}

bool BlobIndex::Deleting(const Digest& digest) const {
  auto it = entries_.find(digest);
  return it != entries_.end() && it->second.deleting;
}

uint32_t BlobIndex::RunId(absl::string_view run) {
  auto [it, inserted] =
      run_ids_.emplace(run, static_cast<uint32_t>(run_names_.size()));
  if (inserted) {
    run_names_.emplace_back(run);
    run_bytes_.push_back(0);
  }
  return it->second;
}

void BlobIndex::AddRef(const Digest& digest, absl::string_view run) {
  Entry& e = entries_[digest];
  ++e.refs;
  const uint32_t id = RunId(run);
  for (auto& [run_id, n] : e.run_refs) {
    if (run_id == id) {
      ++n;
      return;
    }
  }
  e.run_refs.push_back({id, 1});
  if (e.stored) run_bytes_[id] += e.size;
}

uint64_t BlobIndex::RunBytes(absl::string_view run) const {
  auto it = run_ids_.find(run);
  return it == run_ids_.end() ? 0 : run_bytes_[it->second];
}

void BlobIndex::ForEachRunBytes(
    absl::FunctionRef<void(absl::string_view run, uint64_t bytes)> fn) const {
  for (size_t i = 0; i < run_names_.size(); ++i) {
    if (run_bytes_[i] > 0) fn(run_names_[i], run_bytes_[i]);
  }
}

bool BlobIndex::ReferencedBy(
    const Digest& digest,
    absl::FunctionRef<bool(absl::string_view run)> may_use) const {
  auto it = entries_.find(digest);
  if (it == entries_.end()) return false;
  for (const auto& [run_id, n] : it->second.run_refs) {
    if (n > 0 && may_use(run_names_[run_id])) return true;
  }
  return false;
}

void BlobIndex::DropRef(const Digest& digest, absl::string_view run) {
  auto it = entries_.find(digest);
  if (it == entries_.end() || it->second.refs == 0) return;
  --it->second.refs;
  if (auto id = run_ids_.find(run); id != run_ids_.end()) {
    auto& runs = it->second.run_refs;
    for (size_t i = 0; i < runs.size(); ++i) {
      if (runs[i].first == id->second) {
        if (--runs[i].second == 0) {
          runs.erase(runs.begin() + i);
          if (it->second.stored) run_bytes_[id->second] -= it->second.size;
        }
        break;
      }
    }
  }
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
  stored_bytes_ -= e.size;
  return Garbage{digest, e.size, e.quarantined};
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
    it->second.stored = true;  // still quarantined if it was
    ++stored_count_;
    for (const auto& [run_id, n] : it->second.run_refs) {
      run_bytes_[run_id] += it->second.size;
    }
    stored_bytes_ += it->second.size;
  } else if (it->second.quarantined) {
    it->second.quarantined = false;
    --quarantined_count_;
  }
  MaybeErase(digest);
}

}  // namespace ckptd::core
