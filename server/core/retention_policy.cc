#include "server/core/retention_policy.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "server/core/best_selector.h"

namespace ckptd::core {

bool RetentionPolicy::KeepsEverything() const {
  return !policy_.has_keep_last() && !policy_.has_keep_best() &&
         !policy_.has_keep_every_n_steps();
}

std::vector<uint64_t> RetentionPolicy::VersionsToDrop(
    const std::vector<v1::VersionInfo>& versions,
    const std::vector<v1::AliasInfo>& aliases) const {
  std::vector<uint64_t> drop;
  if (KeepsEverything()) return drop;
  const v1::Policy& p = policy_;
  std::vector<const v1::VersionInfo*> committed;
  for (const v1::VersionInfo& v : versions) {
    if (v.state() == v1::COMMITTED) committed.push_back(&v);
  }
  std::sort(committed.begin(), committed.end(),
            [](const v1::VersionInfo* a, const v1::VersionInfo* b) {
              return a->version() < b->version();
            });
  absl::flat_hash_set<uint64_t> keep;
  for (const v1::AliasInfo& a : aliases) keep.insert(a.version());
  for (const v1::VersionInfo* v : committed) {
    if (v->pinned()) keep.insert(v->version());
    if (p.has_keep_every_n_steps() && p.keep_every_n_steps() > 0 &&
        v->step() % p.keep_every_n_steps() == 0) {
      keep.insert(v->version());
    }
  }
  if (p.has_keep_last()) {
    const size_t n = std::min<size_t>(p.keep_last(), committed.size());
    for (size_t i = committed.size() - n; i < committed.size(); ++i) {
      keep.insert(committed[i]->version());
    }
  }
  if (p.has_keep_best() && !p.monitor().empty()) {
    std::vector<std::pair<double, uint64_t>> ranked;
    for (const v1::VersionInfo* v : committed) {
      double value;
      if (MonitoredValue(*v, p.monitor(), &value)) {
        ranked.emplace_back(value, v->version());
      }
    }
    // Better metric first; ties: the earlier version first.
    std::stable_sort(ranked.begin(), ranked.end(),
                     [&](const auto& a, const auto& b) {
                       return MetricImproves(p.mode(), a.first, b.first);
                     });
    for (size_t i = 0; i < ranked.size() && i < p.keep_best(); ++i) {
      keep.insert(ranked[i].second);
    }
  }
  for (const v1::VersionInfo* v : committed) {
    if (!keep.contains(v->version())) drop.push_back(v->version());
  }
  return drop;
}

}  // namespace ckptd::core
