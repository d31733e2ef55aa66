#include "server/storage/testing/fault_injection_blob_store.h"

#include <cassert>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/status.h"

namespace ckptd::storage::testing {

struct FaultInjectionBlobStore::Injector {
  // Counts one mutating operation and returns the status to fail it with,
  // or OK to let it through.
  absl::Status BeginMutation() {
    absl::MutexLock lock(&mu);
    ++op_count;
    if (op_count == fail_at) {
      fail_at = 0;
      ++injected_failures;
      return std::exchange(fail_at_status, absl::OkStatus());
    }
    if (!fail_all_status.ok()) {
      ++injected_failures;
      return fail_all_status;
    }
    return absl::OkStatus();
  }

  absl::Mutex mu;
  uint64_t op_count ABSL_GUARDED_BY(mu) = 0;
  uint64_t injected_failures ABSL_GUARDED_BY(mu) = 0;
  uint64_t fail_at ABSL_GUARDED_BY(mu) = 0;  // 0: none
  absl::Status fail_at_status ABSL_GUARDED_BY(mu);
  absl::Status fail_all_status ABSL_GUARDED_BY(mu);  // OK: none
};

namespace {

using Injector = FaultInjectionBlobStore::Injector;

class FaultInjectionBlobWriter final : public BlobWriter {
 public:
  FaultInjectionBlobWriter(std::shared_ptr<Injector> injector,
                           std::unique_ptr<BlobWriter> base)
      : injector_(std::move(injector)), base_(std::move(base)) {}

  absl::Status Append(std::string_view data) override {
    CKPTD_RETURN_IF_ERROR(injector_->BeginMutation());
    return base_->Append(data);
  }
  uint64_t size() const override { return base_->size(); }
  absl::StatusOr<uint64_t> Sync() override {
    CKPTD_RETURN_IF_ERROR(injector_->BeginMutation());
    return base_->Sync();
  }
  absl::Status Commit(const Digest& expected) override {
    if (absl::Status injected = injector_->BeginMutation(); !injected.ok()) {
      base_->Abandon();
      return injected;
    }
    return base_->Commit(expected);
  }
  absl::Status CommitReplacing(const Digest& expected) override {
    if (absl::Status injected = injector_->BeginMutation(); !injected.ok()) {
      base_->Abandon();
      return injected;
    }
    return base_->CommitReplacing(expected);
  }
  void Abandon() override { base_->Abandon(); }

 private:
  const std::shared_ptr<Injector> injector_;
  const std::unique_ptr<BlobWriter> base_;
};

}  // namespace

FaultInjectionBlobStore::FaultInjectionBlobStore(BlobStore* base)
    : base_(base), injector_(std::make_shared<Injector>()) {}

void FaultInjectionBlobStore::FailAt(uint64_t n, absl::Status status) {
  assert(n >= 1 && !status.ok());
  absl::MutexLock lock(&injector_->mu);
  injector_->fail_at = injector_->op_count + n;
  injector_->fail_at_status = std::move(status);
}

void FaultInjectionBlobStore::FailAll(absl::Status status) {
  assert(!status.ok());
  absl::MutexLock lock(&injector_->mu);
  injector_->fail_all_status = std::move(status);
}

void FaultInjectionBlobStore::Heal() {
  absl::MutexLock lock(&injector_->mu);
  injector_->fail_at = 0;
  injector_->fail_at_status = absl::OkStatus();
  injector_->fail_all_status = absl::OkStatus();
}

uint64_t FaultInjectionBlobStore::op_count() const {
  absl::MutexLock lock(&injector_->mu);
  return injector_->op_count;
}

uint64_t FaultInjectionBlobStore::injected_failures() const {
  absl::MutexLock lock(&injector_->mu);
  return injector_->injected_failures;
}

absl::StatusOr<std::unique_ptr<BlobWriter>> FaultInjectionBlobStore::NewWriter(
    const Digest& expected) {
  CKPTD_RETURN_IF_ERROR(injector_->BeginMutation());
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<BlobWriter> base,
                         base_->NewWriter(expected));
  return std::make_unique<FaultInjectionBlobWriter>(injector_, std::move(base));
}

absl::StatusOr<std::optional<uint64_t>> FaultInjectionBlobStore::Stat(
    const Digest& digest) {
  return base_->Stat(digest);
}

absl::StatusOr<std::unique_ptr<BlobReader>> FaultInjectionBlobStore::Open(
    const Digest& digest) {
  return base_->Open(digest);
}

absl::Status FaultInjectionBlobStore::Delete(const Digest& digest) {
  CKPTD_RETURN_IF_ERROR(injector_->BeginMutation());
  return base_->Delete(digest);
}

absl::Status FaultInjectionBlobStore::ForEach(
    absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn) {
  return base_->ForEach(fn);
}

absl::Status FaultInjectionBlobStore::RemoveTemporaries() {
  CKPTD_RETURN_IF_ERROR(injector_->BeginMutation());
  return base_->RemoveTemporaries();
}

}  // namespace ckptd::storage::testing
