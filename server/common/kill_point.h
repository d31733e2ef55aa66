// Kill points: named places in the server where a crash test may have the
// process die at once (SIGKILL, as a power cut or the OOM killer would),
// instead of killing it at a random instant after a sleep.
//
//   CKPTD_KILL_AT=commit.before_publish      die at the first hit
//   CKPTD_KILL_AT=upload.chunk_appended:40   die at the 40th hit
//
// The variable is read once, at the first kill point reached. Without it a
// kill point costs a check of a function-local static. Thread-safe.
#ifndef CKPTD_SERVER_COMMON_KILL_POINT_H_
#define CKPTD_SERVER_COMMON_KILL_POINT_H_

#include "absl/strings/string_view.h"

namespace ckptd {

// Dies (SIGKILL to itself) if `name` is the point CKPTD_KILL_AT names and
// this is its N-th hit.
void KillPoint(absl::string_view name);

}  // namespace ckptd

#define CKPTD_KILL_POINT(name) ::ckptd::KillPoint(name)

#endif  // CKPTD_SERVER_COMMON_KILL_POINT_H_
