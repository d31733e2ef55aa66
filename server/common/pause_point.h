// Pause points: named places where a test may hold the server still while
// it does something else, so that a race (a GC during a backup's copy) is
// reproduced exactly instead of hoped for after a sleep — as RocksDB's
// TEST_SYNC_POINT does in-process, across a process boundary.
//
//   CKPTD_PAUSE_AT=backup.before_copy=/tmp/t/pause
//
// Points: backup.before_snapshot (GC held, no snapshot yet), backup.
// before_copy (snapshot taken, its blobs pinned, none linked yet),
// staged.before_store (a co-located save acknowledged to its client as
// staged, nothing of it stored yet).
//
// At the first hit of the named point the server creates /tmp/t/pause.reached
// and waits until /tmp/t/pause.resume exists, then goes on; later hits pass.
// The variable is read once, at the first pause point reached. Without it a
// pause point costs a check of a function-local static. Thread-safe.
#ifndef CKPTD_SERVER_COMMON_PAUSE_POINT_H_
#define CKPTD_SERVER_COMMON_PAUSE_POINT_H_

#include "absl/strings/string_view.h"

namespace ckptd {

// Waits as described above if `name` is the point CKPTD_PAUSE_AT names.
void PausePoint(absl::string_view name);

}  // namespace ckptd

#define CKPTD_PAUSE_POINT(name) ::ckptd::PausePoint(name)

#endif  // CKPTD_SERVER_COMMON_PAUSE_POINT_H_
