// RunCkptdToExit: runs the ckptd binary built by this tree in the
// foreground, for the tests of flags and start-up refusals.
#ifndef CKPTD_TESTS_INTEGRATION_SUPPORT_CKPTD_RUN_H_
#define CKPTD_TESTS_INTEGRATION_SUPPORT_CKPTD_RUN_H_

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ckptd::testing {

struct CkptdRun {
  int exit_code = -1;   // 128 + signal if killed
  std::string output;   // stdout and stderr, interleaved
  bool served = false;  // it started serving (and was killed)
};

// Runs `ckptd args...` (no flag added) and waits for it to exit. Every
// caller expects it to exit by itself (a refused flag, --help), so once it
// logs that it serves, or after `guard`, it is killed and `served` is set
// instead of waiting for it. `guard` only keeps a bug from hanging the
// test run; nothing asserts how fast ckptd exits.
CkptdRun RunCkptdToExit(const std::vector<std::string>& args,
                        absl::Duration guard = absl::Seconds(60));

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_INTEGRATION_SUPPORT_CKPTD_RUN_H_
