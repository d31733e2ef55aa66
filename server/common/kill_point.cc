#include "server/common/kill_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"

namespace ckptd {
namespace {

struct KillSpec {
  std::string name;
  int64_t hit = 1;
};

// nullptr when CKPTD_KILL_AT is unset or empty.
const KillSpec* Spec() {
  static const KillSpec* spec = []() -> const KillSpec* {
    const char* env = std::getenv("CKPTD_KILL_AT");
    if (env == nullptr || *env == '\0') return nullptr;
    auto* s = new KillSpec;
    absl::string_view value(env);
    const size_t colon = value.rfind(':');
    int64_t hit = 0;
    if (colon != absl::string_view::npos &&
        absl::SimpleAtoi(value.substr(colon + 1), &hit) && hit > 0) {
      s->name = std::string(value.substr(0, colon));
      s->hit = hit;
    } else {
      s->name = std::string(value);
    }
    return s;
  }();
  return spec;
}

std::atomic<int64_t> hits{0};

}  // namespace

void KillPoint(absl::string_view name) {
  const KillSpec* spec = Spec();
  if (spec == nullptr || spec->name != name) return;
  if (hits.fetch_add(1) + 1 < spec->hit) return;
  // No cleanup, no flush: exactly what an unplanned death leaves behind.
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);
}

}  // namespace ckptd
