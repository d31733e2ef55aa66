#include "server/core/alias_watchers.h"

#include <utility>

namespace ckptd::core {

uint64_t AliasWatchers::Add(std::string run, std::string alias, Callback fn) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  watchers_[id] = Watcher{std::move(run), std::move(alias), std::move(fn)};
  return id;
}

void AliasWatchers::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(id);
}

void AliasWatchers::Notify(const std::string& run,
                           const std::vector<AliasMove>& moves) {
  if (moves.empty()) return;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, w] : watchers_) {
    if (w.run != run) continue;
    for (const AliasMove& m : moves) {
      if (m.alias == w.alias) w.fn(m.target);
    }
  }
}

}  // namespace ckptd::core
