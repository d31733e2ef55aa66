// RetentionPolicy: which committed versions a run keeps, decided from the
// run's policy and its version and alias records alone. Pure: no storage, no
// locks; thread-safe (immutable after construction).
//
// A committed version is kept when any rule keeps it:
//  - it is pinned, or the target of any alias (`last`, `best`, user aliases);
//  - it is among the `keep_last` newest committed versions;
//  - it is among the `keep_best` best by the monitored metric (ties: the
//    earlier version ranks first; versions without the metric never rank);
//  - its step is a multiple of `keep_every_n_steps`.
// A policy with none of keep_last, keep_best, keep_every_n_steps keeps
// everything. Pending and aborted versions are never dropped by retention.
#ifndef CKPTD_SERVER_CORE_RETENTION_POLICY_H_
#define CKPTD_SERVER_CORE_RETENTION_POLICY_H_

#include <cstdint>
#include <vector>

#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd::core {

class RetentionPolicy {
 public:
  explicit RetentionPolicy(v1::Policy policy) : policy_(std::move(policy)) {}

  bool KeepsEverything() const;

  // The committed versions to drop, in ascending order. `versions` are the
  // run's version records (any order, any state); `aliases` its aliases.
  std::vector<uint64_t> VersionsToDrop(
      const std::vector<v1::VersionInfo>& versions,
      const std::vector<v1::AliasInfo>& aliases) const;

 private:
  v1::Policy policy_;
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_RETENTION_POLICY_H_
