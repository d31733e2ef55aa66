// FaultInjectionBlobStore: wraps a BlobStore and makes chosen mutating
// operations fail, for crash and error-path tests (LevelDB's
// FaultInjectionTestEnv idea).
//
// Mutating operations are counted in call order, one count per call:
//   store:  NewWriter, Delete, RemoveTemporaries
//   writer: Append, Sync, Commit, CommitReplacing
// (Abandon cannot fail and is not counted; reads — Stat, Open, ReadAt,
// ForEach, size — pass through uncounted.) A failed operation returns the
// injected status and has no effect on the wrapped store: an Append stores
// nothing, a Sync syncs nothing, a Delete deletes nothing, and a Commit
// publishes nothing — it abandons the wrapped writer, because a writer is
// finished after Commit whatever the result.
//
// Typical loop: run a workload once to learn N = op_count(); then for every
// k in [1, N] run it on a fresh store with FailAt(k, error) and check the
// stored state is one a crash could leave.
//
// Thread safety: all methods are safe to call concurrently; with concurrent
// callers the order in which operations are counted is the order in which
// they reach the wrapper. Writers and readers are used by one thread at a
// time. REQUIRES: the wrapped store outlives this one and every writer and
// reader made through it (writers may outlive this wrapper).
#ifndef CKPTD_SERVER_STORAGE_TESTING_FAULT_INJECTION_BLOB_STORE_H_
#define CKPTD_SERVER_STORAGE_TESTING_FAULT_INJECTION_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/base/digest.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage::testing {

class FaultInjectionBlobStore final : public BlobStore {
 public:
  explicit FaultInjectionBlobStore(BlobStore* base);  // not owned
  FaultInjectionBlobStore(const FaultInjectionBlobStore&) = delete;
  FaultInjectionBlobStore& operator=(const FaultInjectionBlobStore&) = delete;

  // The n-th mutating operation from now fails with `status` (n = 1: the
  // next one); later ones succeed again. Replaces an earlier FailAt.
  // REQUIRES: n >= 1, !status.ok().
  void FailAt(uint64_t n, absl::Status status);
  // Every mutating operation fails with `status` until Heal().
  void FailAll(absl::Status status);
  // Cancels FailAt and FailAll.
  void Heal();
  // Mutating operations attempted since construction, failed ones included.
  uint64_t op_count() const;
  // How many operations were failed by injection.
  uint64_t injected_failures() const;

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) override;
  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override;
  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override;
  absl::Status Delete(const Digest& digest) override;
  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) override;
  absl::Status RemoveTemporaries() override;

  struct Injector;  // the failure plan, shared with writers

 private:
  BlobStore* const base_;
  const std::shared_ptr<Injector> injector_;
};

}  // namespace ckptd::storage::testing

#endif  // CKPTD_SERVER_STORAGE_TESTING_FAULT_INJECTION_BLOB_STORE_H_
