// AliasWatchers: the WatchRef subscriptions, by (run, alias).
//
// Thread safety: all methods are safe to call concurrently. The Repository
// calls Notify while holding its own mutex, so that watchers see moves in
// commit order; the internal mutex is therefore acquired after the
// Repository's, and callbacks must only queue work, never call back into
// the Repository or this object.
#ifndef CKPTD_SERVER_CORE_ALIAS_WATCHERS_H_
#define CKPTD_SERVER_CORE_ALIAS_WATCHERS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd::core {

// One committed move of an alias, with the version it now names.
struct AliasMove {
  std::string alias;
  v1::VersionInfo target;
};

class AliasWatchers {
 public:
  using Callback = std::function<void(const v1::VersionInfo&)>;

  // Returns an id for Remove.
  uint64_t Add(std::string run, std::string alias, Callback fn);
  void Remove(uint64_t id);
  // Calls every watcher of (run, move.alias) for each move, in order.
  void Notify(const std::string& run, const std::vector<AliasMove>& moves);

 private:
  struct Watcher {
    std::string run;
    std::string alias;
    Callback fn;
  };

  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_ALIAS_WATCHERS_H_
