#include "server/common/pause_point.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace ckptd {
namespace {

struct PauseSpec {
  std::string name;
  std::string path;  // <path>.reached is created, <path>.resume awaited
};

// nullptr when CKPTD_PAUSE_AT is unset, empty or has no "=PATH".
const PauseSpec* Spec() {
  static const PauseSpec* spec = []() -> const PauseSpec* {
    const char* env = std::getenv("CKPTD_PAUSE_AT");
    if (env == nullptr || *env == '\0') return nullptr;
    const absl::string_view value(env);
    const size_t eq = value.find('=');
    if (eq == absl::string_view::npos || eq == 0 || eq + 1 == value.size()) {
      spdlog::warn("CKPTD_PAUSE_AT='{}' is not NAME=PATH; ignored",
                   std::string(value));
      return nullptr;
    }
    return new PauseSpec{std::string(value.substr(0, eq)),
                         std::string(value.substr(eq + 1))};
  }();
  return spec;
}

std::atomic<bool> paused_once{false};

}  // namespace

void PausePoint(absl::string_view name) {
  const PauseSpec* spec = Spec();
  if (spec == nullptr || spec->name != name) return;
  if (paused_once.exchange(true)) return;
  const std::string reached = spec->path + ".reached";
  const std::string resume = spec->path + ".resume";
  const int fd = ::open(reached.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  spdlog::info("pause point {}: waiting for {}", std::string(name), resume);
  while (::access(resume.c_str(), F_OK) != 0) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  spdlog::info("pause point {}: resumed", std::string(name));
}

}  // namespace ckptd
