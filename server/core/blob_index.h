// BlobIndex: what the Repository knows about every blob, in memory, so that
// presence checks (FindMissingBlobs, CommitShard, QueryUpload) and GC
// decisions never call the blob store under the repository lock.
//
// Why in memory rather than RocksDB records: Recover already lists the blob
// store once (to collect garbage after a crash), so building the index costs
// no extra I/O at open; lookups are hash probes (no RocksDB read, no stat);
// and it costs ~80 bytes per blob (1 M blobs: ~80 MiB). Reference counts
// are derived from the manifests at open, never stored, so they cannot
// drift from the records they count.
//
// Per run it keeps the bytes of the stored blobs the run references (for
// quotas), updated as refs come and go.
//
// Per digest it holds: whether the blob is stored (and its size); `refs`,
// the number of shard manifests (of committed or pending versions) that
// reference it, and which runs those manifests belong to; `pins`, the pending
// versions that lease it plus the reads in progress. A stored blob with no refs
// and no pins is garbage. Taking garbage marks it `deleting`: it no longer
// counts as stored (so a new push uploads it again), and an upload that
// completes the same digest waits (Repository) until the deletion has finished
// before it commits.
//
// Quarantine: a stored blob found corrupt (a read, Verify or the scrub) is
// marked `quarantined`. It then no longer counts as stored (StoredSize is
// empty, so FindMissingBlobs reports it missing and CommitShard refuses it,
// for everyone), but its refs and pins are kept and it is garbage only when
// nothing references it, as any other blob: the versions that reference it
// are damaged, not gone. An upload of its digest replaces the file and calls
// AddStored(..., replaced=true), which lifts the quarantine. Each time a
// digest becomes stored (or is replaced) it gets a new `generation`, so a
// verdict on bytes read from an older file (a reader that opened it before
// the replacement) is recognised as stale and ignored.
//
// Thread safety: none of its own. The Repository guards it with its mutex.
#ifndef CKPTD_SERVER_CORE_BLOB_INDEX_H_
#define CKPTD_SERVER_CORE_BLOB_INDEX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "proto/base/digest.h"

namespace ckptd::core {

class BlobIndex {
 public:
  struct Garbage {
    Digest digest;
    uint64_t size = 0;
    bool quarantined = false;  // its quarantine record goes with it
  };
  struct StoredBlob {
    Digest digest;
    uint64_t size = 0;
  };

  // A blob is durable in the store. `replaced`: its file was replaced by a
  // verified copy (CommitReplacing), which lifts a quarantine.
  void AddStored(const Digest& digest, uint64_t size, bool replaced = false);
  // The blob's size if it is stored, not being deleted and not quarantined.
  std::optional<uint64_t> StoredSize(const Digest& digest) const;
  bool Deleting(const Digest& digest) const;

  // The generation of a stored blob (quarantined or not) that is not being
  // deleted; nullopt otherwise. Read it before opening the blob.
  std::optional<uint64_t> Generation(const Digest& digest) const;
  // Marks the blob corrupt if it is still the `generation` that was read;
  // true if this newly quarantined it.
  bool Quarantine(const Digest& digest, uint64_t generation);
  // Lifts the quarantine of `generation` (its bytes verified after all);
  // true if it was quarantined.
  bool Unquarantine(const Digest& digest, uint64_t generation);
  bool Quarantined(const Digest& digest) const;
  size_t quarantined_count() const { return quarantined_count_; }
  // Every stored blob, quarantined ones included (for the scrub).
  std::vector<StoredBlob> StoredBlobs() const;

  // A shard manifest of `run` references the blob (or no longer does).
  void AddRef(const Digest& digest, absl::string_view run);
  void DropRef(const Digest& digest, absl::string_view run);
  // True when a manifest of a run for which may_use(run) holds references
  // the blob (tenancy: dedup only against runs the caller may write).
  bool ReferencedBy(
      const Digest& digest,
      absl::FunctionRef<bool(absl::string_view run)> may_use) const;
  void Pin(const Digest& digest);
  void Unpin(const Digest& digest);

  // Garbage among the blobs whose refs or pins dropped to zero (or that
  // were stored unreferenced) since the last call; marks it deleting.
  std::vector<Garbage> TakeNewGarbage();
  // All garbage (a full scan); marks it deleting.
  std::vector<Garbage> TakeAllGarbage();
  // Ends a deletion: `deleted` false puts the blob back as stored (it is
  // garbage again on the next full scan).
  void FinishDelete(const Digest& digest, bool deleted);

  size_t stored_count() const { return stored_count_; }
  // Bytes of the stored blobs that manifests of `run` reference, each blob
  // counted once per run (quotas).
  uint64_t RunBytes(absl::string_view run) const;
  // Calls fn(run, RunBytes(run)) for every run that references a blob.
  void ForEachRunBytes(
      absl::FunctionRef<void(absl::string_view run, uint64_t bytes)> fn) const;
  // Sum of the sizes of the stored blobs (not those being deleted).
  uint64_t stored_bytes() const { return stored_bytes_; }

 private:
  struct Entry {
    uint64_t size = 0;
    uint32_t refs = 0;
    // (run id, refs from that run's manifests); refs is their sum.
    absl::InlinedVector<std::pair<uint32_t, uint32_t>, 1> run_refs;
    uint32_t pins = 0;
    uint64_t generation = 0;
    bool stored = false;
    bool deleting = false;
    bool quarantined = false;  // only while stored or deleting
  };
  static bool IsGarbage(const Entry& e) {
    return e.stored && !e.deleting && e.refs == 0 && e.pins == 0;
  }
  void MaybeCandidate(const Digest& digest, const Entry& e);
  void MaybeErase(const Digest& digest);
  Garbage MarkDeleting(const Digest& digest, Entry& e);

  uint32_t RunId(absl::string_view run);

  absl::flat_hash_map<Digest, Entry> entries_;
  // Run names interned for run_refs (a few bytes per run, never dropped).
  absl::flat_hash_map<std::string, uint32_t> run_ids_;
  std::vector<std::string> run_names_;
  // By run id: bytes of the stored blobs the run's manifests reference.
  std::vector<uint64_t> run_bytes_;
  std::vector<Digest> candidates_;
  size_t stored_count_ = 0;
  uint64_t stored_bytes_ = 0;
  size_t quarantined_count_ = 0;
  uint64_t next_generation_ = 1;
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_BLOB_INDEX_H_
